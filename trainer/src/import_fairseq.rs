//! `seqforge-train import-fairseq CHECKPOINT.pt --data DATA_BIN --out CKPT_DIR`: a model
//! trained with fairseq becomes a seqforge checkpoint directory (the format of
//! [`crate::checkpoint`]) that `seqforge-export`, `seqforge-train export` and evaluation take
//! as they take the trainer's own.
//!
//! The fairseq file is read by [`seqforge_fairseq`] (no Python, no code run from the pickle):
//! the architecture's config from `args`/`cfg`, fairseq's state-dict upgrades, fp16/fp32
//! weights (stored fp32 here), the EMA weights with `--use-ema`. Then, before anything is
//! written:
//! - `DATA_BIN/dict.{src}.txt` and `dict.{tgt}.txt` (languages from the checkpoint's task, the
//!   flags, or the data's file names), or a language model's `dict.txt`, must have as many
//!   symbols as the embeddings have rows, and their identities are recorded as the trainer
//!   records them; a language model's task options (`--tokens-per-sample`,
//!   `--sample-break-mode`, `--add-bos-token`, `--output-dictionary-size`) come along;
//! - the model is built by the registry for the architecture, and every tensor it has must be
//!   in the state dict with its shape, and nothing else.
//!
//! The checkpoint is written atomically by [`crate::checkpoint::save`] (temporary directory,
//! then rename): an error leaves nothing behind. It holds no optimizer state (fairseq's is not
//! converted), so training from it starts a fresh optimizer.

use std::path::{Path, PathBuf};
use std::time::Instant;

use seqforge_fairseq::{ImportTask, Imported, Weights};
use serde_json::json;
use tch::{Device, Kind, Tensor, nn};

use crate::checkpoint::{
    self, Checkpoint, CheckpointConfig, ComponentConfig, DictionaryIdentity, TrainerState,
};
use crate::data::Dictionary;
use crate::fp16::Precision;
use crate::registry::Registry;
use crate::train::ModelContext;

/// Errors of [`run`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The fairseq checkpoint could not be read or mapped.
    #[error(transparent)]
    Fairseq(#[from] seqforge_fairseq::Error),
    /// A dictionary of the data directory does not fit the checkpoint.
    #[error("{path}: {message}", path = path.display())]
    Dictionary {
        /// The dictionary file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The language pair is unknown.
    #[error("{0}")]
    Languages(String),
    /// The output exists and `--force` was not given.
    #[error("{path}: already exists (give --force to replace it)", path = path.display())]
    OutputExists {
        /// The output directory.
        path: PathBuf,
    },
    /// Reading a dictionary.
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    /// Writing the checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::Error),
    /// Finding the architecture's model.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// Building the model.
    #[error(transparent)]
    Model(#[from] crate::models::Error),
    /// A libtorch operation.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `seqforge-train import-fairseq`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportFairseqArgs {
    /// The fairseq checkpoint (`checkpoint_best.pt`, …; zip or legacy torch.save format).
    pub checkpoint: PathBuf,
    /// The fairseq data directory the model was trained on (`dict.{src}.txt`,
    /// `dict.{tgt}.txt`): what `seqforge-export --data` and `seqforge generate --data` read.
    #[arg(long)]
    pub data: PathBuf,
    /// The seqforge checkpoint directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Import the exponential moving average of the weights (`--store-ema`'s
    /// `extra_state["ema"]`) instead of the model's weights.
    #[arg(long)]
    pub use_ema: bool,
    /// Source language, when the checkpoint does not record it.
    #[arg(long, short = 's')]
    pub source_lang: Option<String>,
    /// Target language, when the checkpoint does not record it.
    #[arg(long, short = 't')]
    pub target_lang: Option<String>,
    /// Replace an existing output directory (atomically).
    #[arg(long)]
    pub force: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    /// The architecture.
    pub arch: String,
    /// Its family.
    pub family: String,
    /// Tensors written (tied aliases and buffers included).
    pub tensors: usize,
    /// Parameters (each tied parameter once).
    pub parameters: usize,
    /// fairseq's update count.
    pub num_updates: u64,
    /// Whether fairseq trained in fp16/bf16.
    pub half_precision: bool,
    /// The directory written.
    pub out: PathBuf,
    /// Wall time.
    pub seconds: f64,
}

impl ImportReport {
    /// One line for the command's output.
    pub fn render(&self) -> String {
        format!(
            "import-fairseq: {} ({}), {} parameters in {} tensors, {} updates{} → {} in {:.1}s",
            self.arch,
            self.family,
            self.parameters,
            self.tensors,
            self.num_updates,
            if self.half_precision { ", trained in fp16 (stored fp32)" } else { "" },
            self.out.display(),
            self.seconds
        )
    }
}

/// Checks `data/name` against the rows of `embedding` and returns its identity.
fn check_dictionary(
    data: &Path,
    name: &str,
    rows: usize,
    embedding: &str,
    pad: usize,
) -> Result<DictionaryIdentity> {
    let path = data.join(name);
    let dict = Dictionary::load(&path)?;
    if dict.len() != rows {
        return Err(Error::Dictionary {
            path,
            message: format!(
                "{} symbols (specials included), but the checkpoint's {embedding} has {rows} \
                 rows: not the dictionary this model was trained with",
                dict.len()
            ),
        });
    }
    if dict.pad() as usize != pad {
        return Err(Error::Dictionary {
            path,
            message: format!("<pad> is {}, the model's padding index is {pad}", dict.pad()),
        });
    }
    Ok(DictionaryIdentity::of(name.to_string(), &dict))
}

fn is_buffer(name: &str) -> bool {
    name.ends_with(".version") || name.ends_with("._float_tensor")
}

/// A translation model's task, dictionaries (`dict.{src}.txt`, `dict.{tgt}.txt`, checked
/// against the embeddings) and model context.
fn translation_task(
    args: &ImportFairseqArgs,
    imported: &Imported,
    pad: usize,
) -> Result<(ComponentConfig, Vec<DictionaryIdentity>, ModelContext)> {
    let pick = |flag: &Option<String>, recorded: &Option<String>| flag.clone().or(recorded.clone());
    let (src, tgt) = match (
        pick(&args.source_lang, &imported.source_lang),
        pick(&args.target_lang, &imported.target_lang),
    ) {
        (Some(s), Some(t)) => (s, t),
        (s, t) => {
            let pair = crate::tasks::translation::infer_language_pair(
                &args.data,
                s.as_deref(),
                t.as_deref(),
            )
            .map_err(|e| {
                Error::Languages(format!("the checkpoint records no language pair: {e}"))
            })?;
            (pair.src, pair.tgt)
        }
    };
    let (src_rows, tgt_rows) = imported.vocab_sizes();
    let dictionaries = vec![
        check_dictionary(
            &args.data,
            &format!("dict.{src}.txt"),
            src_rows,
            "encoder.embed_tokens.weight",
            pad,
        )?,
        check_dictionary(
            &args.data,
            &format!("dict.{tgt}.txt"),
            tgt_rows,
            "decoder.embed_tokens.weight",
            pad,
        )?,
    ];
    let task =
        ComponentConfig::new("translation", json!({ "source_lang": src, "target_lang": tgt }));
    let ctx = ModelContext { src_vocab_size: src_rows, tgt_vocab_size: tgt_rows, pad_index: pad };
    Ok((task, dictionaries, ctx))
}

/// A language model's task (fairseq's `tokens_per_sample`, `sample_break_mode`,
/// `add_bos_token`, `output_dictionary_size`), dictionary (`dict.txt`, checked against the
/// input embeddings) and model context.
fn language_modeling_task(
    args: &ImportFairseqArgs,
    imported: &Imported,
    pad: usize,
) -> Result<(ComponentConfig, Vec<DictionaryIdentity>, ModelContext)> {
    let rows = imported.config.get("vocab_size").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let dictionary = check_dictionary(
        &args.data,
        crate::tasks::language_modeling::DICT_FILE,
        rows,
        "decoder's input embeddings",
        pad,
    )?;
    let config = imported.language_modeling_config();
    let output = config["output_dictionary_size"].as_i64().unwrap_or(-1);
    let output_vocab = if output < 0 { rows } else { output as usize };
    let task = ComponentConfig::new("language_modeling", config);
    let ctx = ModelContext { src_vocab_size: rows, tgt_vocab_size: output_vocab, pad_index: pad };
    Ok((task, vec![dictionary], ctx))
}

/// Imports `args.checkpoint` into `args.out` (see the module docs).
pub fn run(args: &ImportFairseqArgs) -> Result<ImportReport> {
    let start = Instant::now();
    if args.out.exists() && !args.force {
        return Err(Error::OutputExists { path: args.out.clone() });
    }
    let weights = if args.use_ema { Weights::Ema } else { Weights::Model };
    let mut imported = Imported::open(&args.checkpoint, weights)?;

    let pad = imported.config.get("pad_index").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
    let (task, dictionaries, ctx) = match imported.task {
        ImportTask::Translation => translation_task(args, &imported, pad)?,
        ImportTask::LanguageModeling => language_modeling_task(args, &imported, pad)?,
    };
    let registry = Registry::with_builtins()?;
    let architecture = registry.architectures.get(&imported.arch)?;
    let factory = registry.models.get(&architecture.model)?;
    let vs = nn::VarStore::new(Device::Cpu);
    let model = (factory.build)(&vs.root(), &imported.config, &ctx)?;
    let state_dict = model.state_dict();
    imported.check_against(
        state_dict
            .iter()
            .filter(|(n, _)| !is_buffer(n))
            .map(|(n, t)| (n.as_str(), t.size().iter().map(|&d| d as usize).collect())),
    )?;
    tch::no_grad(|| -> Result<()> {
        for (name, t) in &state_dict {
            if is_buffer(name) {
                continue;
            }
            let values = imported.read(name)?;
            let src = Tensor::f_from_slice(&values)?.f_view(t.size().as_slice())?;
            t.shallow_clone().f_copy_(&src.f_to_kind(Kind::Float)?)?;
        }
        Ok(())
    })?;

    // Saved as the trainer saves it: the architecture's config with vocabulary sizes 0 (the
    // dictionaries' identities give them).
    let mut config = imported.config.clone();
    for key in ["src_vocab_size", "tgt_vocab_size", "vocab_size"] {
        if config.get(key).is_some() {
            config[key] = 0.into();
        }
    }
    let seed = 1;
    let mut state = TrainerState::fresh(seed, imported.num_updates);
    state.extra = json!({
        "imported_from": args.checkpoint.display().to_string(),
        "weights": if args.use_ema { "ema" } else { "model" },
        "fairseq_half_precision": imported.half_precision,
    });
    let ckpt = Checkpoint {
        config: CheckpointConfig {
            format_version: checkpoint::FORMAT_VERSION,
            arch: imported.arch.clone(),
            model: config,
            task,
            // fairseq's training components are not converted: defaults for a resume.
            criterion: ComponentConfig::new("cross_entropy", json!({})),
            optimizer: ComponentConfig::new("adam", json!({})),
            lr_scheduler: ComponentConfig::new("fixed", json!({})),
            precision: Precision::Fp32,
            dictionaries,
        },
        state,
        model: state_dict,
        optimizer: Vec::new(),
    };
    checkpoint::save(&args.out, &ckpt)?;
    Ok(ImportReport {
        arch: imported.arch.clone(),
        family: imported.family.to_string(),
        tensors: ckpt.model.len(),
        parameters: model.parameters().iter().map(|(_, t)| t.numel()).sum(),
        num_updates: imported.num_updates,
        half_precision: imported.half_precision,
        out: args.out.clone(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    fn args(pt: &str, data: &str, out: &Path) -> ImportFairseqArgs {
        ImportFairseqArgs {
            checkpoint: repo().join("fairseq_import").join(pt),
            data: repo().join("fairseq").join(data),
            out: out.to_path_buf(),
            use_ema: false,
            source_lang: None,
            target_lang: None,
            force: false,
        }
    }

    #[test]
    fn imports_a_loadable_checkpoint() -> TestResult {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("ckpt");
        let report = run(&args("noscale_tied.pt", "separate", &out))?;
        assert_eq!((report.arch.as_str(), report.num_updates), ("transformer", 250));
        let ckpt = checkpoint::load(&out)?;
        assert_eq!(ckpt.config.dictionaries[0].name, "dict.en.txt");
        assert_eq!(ckpt.config.dictionaries[1].size, 32);
        // The trainer's loader takes it: same tensors as the model it builds.
        let registry = Registry::with_builtins()?;
        let ctx = ModelContext { src_vocab_size: 56, tgt_vocab_size: 32, pad_index: 1 };
        let (_vs, model) =
            crate::train::model::load_checkpoint_model(&ckpt, &registry, &ctx, Device::Cpu)?;
        assert_eq!(model.state_dict().len(), ckpt.model.len());
        // A second import refuses to overwrite without --force, and replaces with it.
        let e = run(&args("noscale_tied.pt", "separate", &out));
        assert!(matches!(e, Err(Error::OutputExists { .. })), "{e:?}");
        run(&ImportFairseqArgs { force: true, ..args("noscale_tied.pt", "separate", &out) })?;
        Ok(())
    }

    #[test]
    fn a_dictionary_of_another_size_is_refused_and_nothing_is_written() -> TestResult {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("ckpt");
        // Trained on the joined dictionary (96 symbols), given the separate ones (56/32).
        let e = run(&args("postnorm_shared.pt", "separate", &out)).err().ok_or("accepted")?;
        let text = e.to_string();
        assert!(matches!(e, Error::Dictionary { .. }), "{text}");
        assert!(
            text.contains("dict.en.txt") && text.contains("encoder.embed_tokens.weight"),
            "{text}"
        );
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(dir.path())?.count(), 0, "left something behind");
        // An unreadable checkpoint: nothing either.
        let bad = dir.path().join("bad.pt");
        std::fs::write(&bad, b"PK\x03\x04 not really")?;
        let e = run(&ImportFairseqArgs { checkpoint: bad.clone(), ..args("x", "separate", &out) });
        assert!(matches!(&e, Err(Error::Fairseq(_))), "{e:?}");
        assert!(e.err().map(|e| e.to_string()).unwrap_or_default().contains("bad.pt"));
        assert!(!out.exists());
        // A language model given a translation data directory: its dict.txt is named.
        let e = run(&args("lm_adaptive.pt", "separate", &out)).err().ok_or("accepted")?;
        assert!(e.to_string().contains("dict.txt"), "{e}");
        assert!(!out.exists());
        Ok(())
    }

    #[test]
    fn imports_a_language_model_with_its_task() -> TestResult {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("ckpt");
        let lm_data = repo().join("fairseq_import").join("lm-data");
        let report =
            run(&ImportFairseqArgs { data: lm_data, ..args("lm_adaptive.pt", "x", &out) })?;
        assert_eq!((report.family.as_str(), report.num_updates), ("transformer_lm", 150));
        let ckpt = checkpoint::load(&out)?;
        assert_eq!(ckpt.config.task.name, "language_modeling");
        assert_eq!(ckpt.config.task.config["tokens_per_sample"], 32);
        assert_eq!(ckpt.config.task.config["sample_break_mode"], "eos");
        assert_eq!(ckpt.config.dictionaries[0].name, "dict.txt");
        Ok(())
    }
}
