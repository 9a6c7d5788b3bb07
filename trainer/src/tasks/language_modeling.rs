//! The `language_modeling` task (fairseq's `LanguageModelingTask` with `MonolingualDataset`
//! over a `TokenBlockDataset`, `targets = ["future"]`).
//!
//! Data: a folder made by `seqforge-train preprocess --only-source --trainpref … --validpref …`
//! (no `--source-lang`): `dict.txt` and `{split}.bin/.idx`, one item per line, an empty line (a
//! lone EOS) separating documents. Each split is cut into blocks
//! ([`TokenBlocks`], `--tokens-per-sample`, `--sample-break-mode`); a block is a sample whose
//! target is the block and whose input is the block shifted right by one (EOS first at an item
//! start). With `--add-bos-token` the input gets `<s>` in front and the target a padding
//! token. With `--output-dictionary-size N` the model predicts only the first `N` symbols
//! (fairseq's `TruncatedDictionary`): target ids beyond are `<unk>`.
//!
//! Batches (fairseq's `monolingual_dataset.collate`) hold the input right-padded as
//! `src_tokens` and as `prev_output_tokens` (what a decoder-only model reads), the target
//! right-padded, `ntokens` = input tokens. Batching follows fairseq: blocks sorted by size with
//! shuffled ties, then grouped by `--max-tokens` / `--batch-size`, blocks longer than the
//! model's positions dropped in training.

use std::path::{Path, PathBuf};

use seqforge_runtime::lm::{BreakMode, TokenBlocks};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Task, TaskConfig, TaskContext, TaskDataset, ValidationDecoder};
use crate::batching::{Batch, BatchConfig, BatchPlan, collate_tokens, plan_batches};
use crate::checkpoint::DictionaryIdentity;
use crate::data::{Dictionary, IndexedDataset};
use crate::train::{Error, ModelContext, Result, TrainArgs};

/// The dictionary of a monolingual data folder.
pub const DICT_FILE: &str = "dict.txt";

/// fairseq's `language_modeling` flags.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LanguageModelingConfig {
    /// Maximum tokens per sample (the block size; also the language model's default maximum
    /// positions).
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub tokens_per_sample: usize,
    /// How the token stream is cut into samples: `none` (fixed-size blocks across sentences),
    /// `complete` (whole sentences up to the block size), `complete_doc` (whole sentences, not
    /// across documents) or `eos` (one sentence per sample).
    #[arg(long, value_enum, default_value_t = BreakMode::None)]
    pub sample_break_mode: BreakMode,
    /// Prepend `<s>` to every sample's input (and a padding target).
    #[arg(long)]
    pub add_bos_token: bool,
    /// Predict only the first N symbols of the dictionary (-1: all); the others become
    /// `<unk>` in targets.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true, value_name = "N")]
    pub output_dictionary_size: i64,
}

impl Default for LanguageModelingConfig {
    fn default() -> Self {
        Self {
            tokens_per_sample: 1024,
            sample_break_mode: BreakMode::None,
            add_bos_token: false,
            output_dictionary_size: -1,
        }
    }
}

impl TaskConfig for LanguageModelingConfig {
    const NAME: &'static str = "language_modeling";

    fn build(&self, ctx: &TaskContext<'_>) -> Result<Box<dyn Task>> {
        let a = ctx.args;
        if a.source_lang.is_some() || a.target_lang.is_some() {
            return Err(Error::Config(
                "--task language_modeling reads DATA/dict.txt and DATA/{split}: \
                 --source-lang/--target-lang are translation flags"
                    .into(),
            ));
        }
        Ok(Box::new(LanguageModeling::open(&a.data, self.clone())?))
    }

    /// A language model's `tokens_per_sample` (its default maximum positions) is the task's.
    fn configure_model(&self, model: &mut Value) {
        if let Some(v) = model.get_mut("tokens_per_sample") {
            *v = Value::from(self.tokens_per_sample);
        }
    }
}

/// The `language_modeling` task over one data folder.
#[derive(Debug)]
pub struct LanguageModeling {
    data: PathBuf,
    config: LanguageModelingConfig,
    dictionary: DictionaryIdentity,
    specials: Specials,
    vocab: usize,
    output_vocab: usize,
}

/// The special ids a language-model batch uses.
#[derive(Debug, Clone, Copy)]
struct Specials {
    bos: u32,
    pad: u32,
    eos: u32,
    unk: u32,
}

impl LanguageModeling {
    /// Reads `data/dict.txt` and checks the options.
    pub fn open(data: &Path, config: LanguageModelingConfig) -> Result<Self> {
        let path = data.join(DICT_FILE);
        if !path.is_file() {
            return Err(Error::Data {
                path,
                message: "missing: a language-modeling data folder has dict.txt and \
                          {split}.bin/.idx (seqforge-train preprocess --only-source without \
                          --source-lang makes them)"
                    .into(),
            });
        }
        let dict = Dictionary::load(&path)?;
        if config.tokens_per_sample == 0 {
            return Err(Error::Config("--tokens-per-sample must be at least 1".into()));
        }
        let output_vocab = match config.output_dictionary_size {
            n if n < 0 => dict.len(),
            n => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n <= dict.unk() as usize || n > dict.len() {
                    return Err(Error::Config(format!(
                        "--output-dictionary-size {n}: must keep the special symbols (more than \
                         {}) and be at most the dictionary's {} symbols",
                        dict.unk(),
                        dict.len()
                    )));
                }
                n
            }
        };
        Ok(Self {
            data: data.to_path_buf(),
            dictionary: DictionaryIdentity::of(DICT_FILE, &dict),
            specials: Specials {
                bos: dict.bos(),
                pad: dict.pad(),
                eos: dict.eos(),
                unk: dict.unk(),
            },
            vocab: dict.len(),
            output_vocab,
            config,
        })
    }

    /// The task's options.
    pub fn config(&self) -> &LanguageModelingConfig {
        &self.config
    }

    /// Opens split `split` as blocks.
    pub fn open_split(&self, split: &str) -> Result<LmDataset> {
        self.open_split_with(split, self.config.tokens_per_sample, self.config.sample_break_mode)
    }

    /// Opens split `split` cut into blocks of `block_size` with `mode` (eval-lm's context
    /// window uses smaller blocks than training).
    pub fn open_split_with(
        &self,
        split: &str,
        block_size: usize,
        mode: BreakMode,
    ) -> Result<LmDataset> {
        let prefix = self.data.join(split);
        if !self.data.join(format!("{split}.idx")).is_file() {
            return Err(Error::Data {
                path: self.data.clone(),
                message: format!("no {split}.idx/{split}.bin dataset (language modeling)"),
            });
        }
        let data = IndexedDataset::open(&prefix)?;
        let blocks = TokenBlocks::new(data.sizes(), block_size, mode)
            .map_err(|e| Error::Config(e.to_string()))?;
        let extra = usize::from(self.config.add_bos_token);
        let sizes = blocks.sizes().into_iter().map(|s| s + extra).collect();
        Ok(LmDataset {
            data,
            blocks,
            sizes,
            specials: self.specials,
            add_bos: self.config.add_bos_token,
            output_vocab: u32::try_from(self.output_vocab).unwrap_or(u32::MAX),
        })
    }
}

impl Task for LanguageModeling {
    fn name(&self) -> &'static str {
        LanguageModelingConfig::NAME
    }

    fn describe(&self) -> String {
        format!(
            "language model ({} symbols{}, blocks of {} tokens, break mode {})",
            self.vocab,
            if self.output_vocab < self.vocab {
                format!(", {} predicted", self.output_vocab)
            } else {
                String::new()
            },
            self.config.tokens_per_sample,
            self.config.sample_break_mode
        )
    }

    fn model_context(&self) -> ModelContext {
        ModelContext {
            src_vocab_size: self.vocab,
            tgt_vocab_size: self.output_vocab,
            pad_index: self.specials.pad as usize,
        }
    }

    fn pad(&self) -> u32 {
        self.specials.pad
    }

    fn dictionaries(&self) -> Vec<DictionaryIdentity> {
        vec![self.dictionary.clone()]
    }

    fn checkpoint_config(&self) -> Value {
        serde_json::to_value(&self.config).unwrap_or(Value::Null)
    }

    fn load_dataset(&self, split: &str) -> Result<Box<dyn TaskDataset>> {
        Ok(Box::new(self.open_split(split)?))
    }

    fn max_positions(&self, model: (usize, usize)) -> (usize, usize) {
        (model.1, model.1)
    }

    fn decoder_only(&self) -> bool {
        true
    }

    fn validation_decoder(
        &self,
        args: &TrainArgs,
        _split: &str,
        _indices: Vec<usize>,
    ) -> Result<Option<Box<dyn ValidationDecoder>>> {
        if args.eval_bleu.eval_bleu {
            return Err(Error::Config(
                "--eval-bleu is a translation flag; a language model is validated by its loss \
                 and perplexity"
                    .into(),
            ));
        }
        Ok(None)
    }
}

/// One split of a language-modeling data folder, cut into blocks.
#[derive(Debug)]
pub struct LmDataset {
    data: IndexedDataset,
    blocks: TokenBlocks,
    sizes: Vec<usize>,
    specials: Specials,
    add_bos: bool,
    output_vocab: u32,
}

impl LmDataset {
    /// Sample `i` as `(input, target)` (same length).
    pub fn get(&self, i: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        let sp = self.specials;
        let (mut source, mut target) =
            self.blocks.source_target(i, sp.eos, |k, out| -> Result<()> {
                Ok(self.data.get_into(k, out)?)
            })?;
        for t in &mut target {
            if *t >= self.output_vocab {
                *t = sp.unk;
            }
        }
        if self.add_bos {
            source.insert(0, sp.bos);
            target.insert(0, sp.pad);
        }
        Ok((source, target))
    }

    /// Tokens per sample (input length).
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The blocks.
    pub fn blocks(&self) -> &TokenBlocks {
        &self.blocks
    }
}

impl TaskDataset for LmDataset {
    fn len(&self) -> usize {
        self.sizes.len()
    }

    fn plan_batches(&self, cfg: &BatchConfig) -> Result<BatchPlan> {
        Ok(plan_batches(&self.sizes, None, cfg)?)
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        if indices.is_empty() {
            return Ok(Batch::default());
        }
        let samples = indices.iter().map(|&i| self.get(i)).collect::<Result<Vec<_>>>()?;
        let sp = self.specials;
        let sources: Vec<&[u32]> = samples.iter().map(|(s, _)| s.as_slice()).collect();
        let targets: Vec<&[u32]> = samples.iter().map(|(_, t)| t.as_slice()).collect();
        let src_tokens = collate_tokens(&sources, sp.pad, sp.eos, false, false, 1);
        let target = collate_tokens(&targets, sp.pad, sp.eos, false, false, 1);
        Ok(Batch {
            id: indices.iter().map(|&i| i as i64).collect(),
            nsentences: samples.len(),
            ntokens: sources.iter().map(|s| s.len()).sum(),
            src_lengths: sources.iter().map(|s| s.len() as i64).collect(),
            prev_output_tokens: Some(src_tokens.clone()),
            src_tokens,
            target: Some(target),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::data::preprocess::{PreprocessArgs, run};

    fn corpus(dir: &Path) -> PathBuf {
        std::fs::write(dir.join("train"), "a b c\nb c\n\nc a a b\nd\n").unwrap();
        std::fs::write(dir.join("valid"), "a b\n").unwrap();
        let dest = dir.join("bin");
        run(&PreprocessArgs {
            only_source: true,
            trainpref: Some(dir.join("train").to_string_lossy().into_owned()),
            validpref: Some(dir.join("valid").to_string_lossy().into_owned()),
            destdir: dest.clone(),
            ..Default::default()
        })
        .unwrap();
        dest
    }

    #[test]
    fn blocks_batches_and_options() {
        let dir = tempfile::tempdir().unwrap();
        let data = corpus(dir.path());
        let dict = Dictionary::load(data.join(DICT_FILE)).unwrap();
        let id = |s: &str| i64::from(dict.index(s));
        let task = LanguageModeling::open(
            &data,
            LanguageModelingConfig { tokens_per_sample: 4, ..Default::default() },
        )
        .unwrap();
        let train = task.open_split("train").unwrap();
        // Stream: a b c </s> b c </s> </s> c a a b </s> d </s> = 15 tokens → 4 blocks.
        assert_eq!(train.sizes(), &[4, 4, 4, 3]);
        let b = train.batch(&[3, 0]).unwrap();
        let (eos, pad) = (2, 1);
        assert_eq!(b.src_tokens.row(0).unwrap(), &[id("b"), eos, id("d"), pad]);
        assert_eq!(b.target.as_ref().unwrap().row(0).unwrap(), &[eos, id("d"), eos, pad]);
        assert_eq!(b.src_tokens.row(1).unwrap(), &[eos, id("a"), id("b"), id("c")]);
        assert_eq!(b.prev_output_tokens.as_ref().unwrap(), &b.src_tokens);
        assert_eq!(b.ntokens, 7);
        assert_eq!(b.id, vec![3, 0]);

        let doc = LanguageModeling::open(
            &data,
            LanguageModelingConfig {
                tokens_per_sample: 100,
                sample_break_mode: BreakMode::CompleteDoc,
                add_bos_token: true,
                output_dictionary_size: 6,
            },
        )
        .unwrap();
        let train = doc.open_split("train").unwrap();
        assert_eq!(train.len(), 2);
        let (src, tgt) = train.get(0).unwrap();
        assert_eq!(src[0], 0);
        assert_eq!(tgt[0], 1);
        assert_eq!(src.len(), 8);
        // Symbols beyond the output dictionary are <unk> in targets, not in inputs.
        assert!(dict.len() > 6);
        assert!(tgt.iter().all(|&t| t < 6));
        assert_eq!(doc.model_context().tgt_vocab_size, 6);
        assert_eq!(doc.model_context().src_vocab_size, dict.len());
    }

    #[test]
    fn bad_folders_and_options_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = LanguageModeling::open(dir.path(), LanguageModelingConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("dict.txt"), "{err}");
        let data = corpus(dir.path());
        let task = LanguageModeling::open(&data, LanguageModelingConfig::default()).unwrap();
        let err = task.open_split("test").unwrap_err().to_string();
        assert!(err.contains("test.idx"), "{err}");
        let err = LanguageModeling::open(
            &data,
            LanguageModelingConfig { output_dictionary_size: 2, ..Default::default() },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("--output-dictionary-size"), "{err}");
    }
}
