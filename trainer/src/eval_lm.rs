//! `seqforge-train eval-lm`: fairseq-eval-lm on libtorch — the perplexity of a trained
//! language model on a split of a language-modeling data folder.
//!
//! The split's items (`{DATA}/{split}.bin/.idx`) are cut, given context and batched by the
//! runtime's [`seqforge_runtime::lm`] (the same code `seqforge eval-lm` runs on the exported
//! graphs, so both count alike): blocks of `--tokens-per-sample − --context-window` tokens
//! with the checkpoint's `--sample-break-mode` (or the flags'), each scored with up to
//! `--context-window` tokens of preceding context; with `--remove-bpe` the perplexity is per
//! word. The model runs without dropout on the CPU (or CUDA unless `--cpu`), log-probabilities
//! in fp32 (fairseq's `get_normalized_probs`, adaptive softmax included).

use std::path::{Path, PathBuf};
use std::time::Instant;

use seqforge_runtime::lm::{
    BreakMode, EvalLmOptions, EvalLmReport, LmScorer, WordPieces, evaluate, samples_of_items,
};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, DictionaryIdentity};
use crate::data::{Dictionary, IndexedDataset};
use crate::registry::Registry;
use crate::tasks::language_modeling::{DICT_FILE, LanguageModelingConfig};
use crate::train::model::{Model, ModelContext, load_checkpoint_model};
use crate::train::{Error, Result};

/// fairseq-eval-lm's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalLmArgs {
    /// The language-modeling data folder (`dict.txt`, `{split}.bin/.idx`).
    #[arg(value_name = "DATA")]
    pub data: PathBuf,
    /// The checkpoint directory (e.g. `checkpoints/checkpoint_best`).
    #[arg(long, value_name = "CKPT")]
    pub path: PathBuf,
    /// The split to evaluate.
    #[arg(long, default_value = "test", value_name = "SPLIT")]
    pub gen_subset: String,
    /// Tokens of preceding context each block is scored with (0: none).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub context_window: usize,
    /// The longest input, context included (default: the checkpoint's --tokens-per-sample).
    #[arg(long, value_name = "N")]
    pub tokens_per_sample: Option<usize>,
    /// How the split is cut (default: the checkpoint's --sample-break-mode).
    #[arg(long, value_enum)]
    pub sample_break_mode: Option<BreakMode>,
    /// Samples per batch.
    #[arg(long, visible_alias = "max-sentences", value_name = "N")]
    pub batch_size: Option<usize>,
    /// Padded tokens per batch.
    #[arg(long, default_value_t = 36_000, value_name = "N")]
    pub max_tokens: usize,
    /// Word-level perplexity: merge subword pieces into words (`@@ ` / subword_nmt,
    /// `byte_level` for seqforge's learn-bpe pieces, `sentencepiece`); without a value, `@@ `.
    #[arg(long, visible_alias = "post-process", value_name = "BPE", num_args = 0..=1,
          default_missing_value = "@@ ")]
    pub remove_bpe: Option<String>,
    /// Print each sample's words with their log-probabilities.
    #[arg(long)]
    pub output_word_probs: bool,
    /// Print per-word statistics (word, count, log-prob sum, is_bpe, next-word log-prob sum,
    /// next-word count), most frequent first.
    #[arg(long)]
    pub output_word_stats: bool,
    /// Run on the CPU even when CUDA is available.
    #[arg(long)]
    pub cpu: bool,
    /// libtorch intra-op threads.
    #[arg(long)]
    pub threads: Option<usize>,
}

/// What `eval-lm` measured, with the timing.
#[derive(Debug, Clone, Serialize)]
pub struct EvalLmSummary {
    /// The perplexity and its counts.
    #[serde(flatten)]
    pub report: EvalLmReport,
    /// Seconds spent scoring.
    pub seconds: f64,
    /// Tokens scored per second.
    pub tokens_per_second: f64,
}

/// fairseq-eval-lm's scorer on a libtorch model: teacher-forced forward pass, fp32
/// log-probabilities, the targets' values gathered (rows right-padded).
pub(crate) struct TorchScorer<'m> {
    pub(crate) model: &'m dyn Model,
    pub(crate) device: Device,
    pub(crate) pad: u32,
}

impl LmScorer for TorchScorer<'_> {
    type Error = Error;

    fn target_log_probs(&mut self, inputs: &[&[u32]], targets: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let width = inputs.iter().map(|r| r.len()).max().unwrap_or(0);
        let pad2d = |rows: &[&[u32]], fill: i64| -> Result<Tensor> {
            let mut data = vec![fill; rows.len() * width];
            for (r, row) in rows.iter().enumerate() {
                for (c, &t) in row.iter().enumerate() {
                    data[r * width + c] = i64::from(t);
                }
            }
            Ok(Tensor::f_from_slice(&data)?
                .f_reshape([rows.len() as i64, width as i64])?
                .f_to_device(self.device)?)
        };
        let tokens = pad2d(inputs, i64::from(self.pad))?;
        // Padding targets gather any id; their values are not read.
        let target = pad2d(targets, 0)?;
        let target = target.f_masked_fill(&target.f_eq(i64::from(self.pad))?, 0)?;
        let lengths: Vec<i64> = inputs.iter().map(|r| r.len() as i64).collect();
        let lengths = Tensor::f_from_slice(&lengths)?.f_to_device(self.device)?;
        let out = self.model.forward(&tokens, &lengths, &tokens, false)?;
        let lprobs = self.model.get_normalized_probs(&out, true)?.f_to_kind(Kind::Float)?;
        let picked = lprobs.f_gather(2, &target.f_unsqueeze(-1)?, false)?.f_squeeze_dim(-1)?;
        let picked = picked.f_to_device(Device::Cpu)?.f_contiguous()?;
        let flat: Vec<f32> = Vec::<f32>::try_from(&picked.f_flatten(0, -1)?)?;
        Ok(inputs
            .iter()
            .enumerate()
            .map(|(r, row)| flat[r * width..r * width + row.len()].to_vec())
            .collect())
    }
}

fn data_error(path: &Path, message: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), message: message.into() }
}

/// Runs eval-lm (see the module documentation); `progress(done, total)` after each batch.
pub fn run(args: &EvalLmArgs, mut progress: impl FnMut(usize, usize)) -> Result<EvalLmSummary> {
    if let Some(n) = args.threads {
        tch::set_num_threads(i32::try_from(n.max(1)).unwrap_or(i32::MAX));
    }
    let ckpt = checkpoint::load(&args.path)?;
    let config_path = args.path.join(checkpoint::CONFIG_FILE);
    if ckpt.config.task.name != "language_modeling" {
        return Err(data_error(
            &config_path,
            format!(
                "a `{}` checkpoint: eval-lm evaluates language models (trained with --task \
                 language_modeling)",
                ckpt.config.task.name
            ),
        ));
    }
    let task: LanguageModelingConfig = serde_json::from_value(ckpt.config.task.config.clone())
        .map_err(|e| data_error(&config_path, format!("task config: {e}")))?;
    let dict_path = args.data.join(DICT_FILE);
    let dict = Dictionary::load(&dict_path)?;
    checkpoint::check_dictionaries(
        &ckpt.config.dictionaries,
        &[DictionaryIdentity::of(DICT_FILE, &dict)],
    )?;
    let output_vocab = match task.output_dictionary_size {
        n if n < 0 => dict.len(),
        n => usize::try_from(n).unwrap_or(dict.len()).min(dict.len()),
    };
    let word_pieces = match &args.remove_bpe {
        None => WordPieces::None,
        Some(s) => {
            s.parse::<WordPieces>().map_err(|e| Error::Config(format!("--remove-bpe: {e}")))?
        }
    };
    let options = EvalLmOptions {
        tokens_per_sample: args.tokens_per_sample.unwrap_or(task.tokens_per_sample),
        context_window: args.context_window,
        break_mode: args.sample_break_mode.unwrap_or(task.sample_break_mode),
        max_sentences: args.batch_size,
        max_tokens: args.max_tokens,
        word_pieces,
        output_word_probs: args.output_word_probs,
        output_word_stats: args.output_word_stats,
    };
    if task.add_bos_token {
        return Err(Error::Config(
            "eval-lm of a model trained with --add-bos-token is not supported (fairseq scores \
             such samples with a misaligned target); retrain without it"
                .into(),
        ));
    }

    let prefix = args.data.join(&args.gen_subset);
    let items_ds = IndexedDataset::open(&prefix)?;
    let items = items_ds.iter().collect::<std::result::Result<Vec<_>, _>>()?;
    let mut samples = samples_of_items(&items, &options, dict.eos(), dict.pad())?;
    // Inputs keep every symbol; targets beyond the output dictionary are <unk> (fairseq's
    // `MonolingualDataset._filter_vocab`).
    for t in samples.iter_mut().flat_map(|s| s.target.iter_mut()) {
        if *t as usize >= output_vocab {
            *t = dict.unk();
        }
    }

    let registry = Registry::with_builtins()?;
    let device = if args.cpu { Device::Cpu } else { Device::cuda_if_available() };
    let ctx = ModelContext {
        src_vocab_size: dict.len(),
        tgt_vocab_size: output_vocab,
        pad_index: dict.pad() as usize,
    };
    let (_vs, model) = load_checkpoint_model(&ckpt, &registry, &ctx, device)?;
    let max_positions = model.max_positions().1;
    if let Some(s) = samples.iter().find(|s| s.input.len() > max_positions) {
        return Err(Error::Config(format!(
            "sample {} has {} tokens but the model has {max_positions} positions: lower \
             --tokens-per-sample",
            s.id,
            s.input.len()
        )));
    }
    let _guard = tch::no_grad_guard();
    let mut scorer = TorchScorer { model: model.as_ref(), device, pad: dict.pad() };
    let symbol = |t: u32| dict.symbol(t).to_string();
    let total = samples.len();
    let start = Instant::now();
    let report = evaluate(&mut scorer, &samples, &options, dict.pad(), &symbol, |done| {
        progress(done, total)
    })?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(EvalLmSummary {
        tokens_per_second: report.tokens as f64 / seconds.max(1e-9),
        report,
        seconds,
    })
}
