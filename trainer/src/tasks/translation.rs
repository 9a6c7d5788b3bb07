//! The `translation` task (fairseq's `TranslationTask`): a preprocessed parallel data folder
//! read as fairseq reads it — the language pair (`--source-lang`/`--target-lang`, or inferred
//! from the file names), `dict.{lang}.txt`, the split datasets `{split}.{src}-{tgt}.{lang}`
//! (or the reverse direction's files) — and `--eval-bleu` at validation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Task, TaskConfig, TaskContext, TaskDataset, ValidationDecoder};
use crate::batching::{Batch, BatchConfig, BatchPlan, CollateConfig, LanguagePairDataset};
use crate::checkpoint::DictionaryIdentity;
use crate::data::{Dictionary, IndexedDataset};
use crate::models::StepModel;
use crate::train::eval_bleu::{BleuEval, BleuEvaluator};
use crate::train::{Error, ModelContext, Result, TrainArgs};

/// A pair of binarized datasets, source and target.
pub type PairDataset = LanguagePairDataset<IndexedDataset, IndexedDataset>;

/// The source and target languages of a data folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LanguagePair {
    /// Source language (file suffix).
    pub src: String,
    /// Target language.
    pub tgt: String,
}

/// The language pairs named by `{split}.{a}-{b}.{lang}.idx` files in `dir`.
fn pairs_in(dir: &Path) -> Result<BTreeSet<(String, String)>> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut pairs = BTreeSet::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('.').collect();
        if let [_, pair, _, "idx"] = parts.as_slice()
            && let Some((a, b)) = pair.split_once('-')
            && !a.is_empty()
            && !b.is_empty()
            && !b.contains('-')
        {
            pairs.insert((a.to_string(), b.to_string()));
        }
    }
    Ok(pairs)
}

/// The source and target languages: those given, or, when one or both are missing, the only
/// pair named by the dataset files in `dir` (fairseq's `infer_language_pair`, which takes the
/// first file it lists; here more than one candidate is an error naming them).
pub fn infer_language_pair(
    dir: &Path,
    src: Option<&str>,
    tgt: Option<&str>,
) -> Result<LanguagePair> {
    if let (Some(s), Some(t)) = (src, tgt) {
        return Ok(LanguagePair { src: s.to_string(), tgt: t.to_string() });
    }
    let candidates: Vec<(String, String)> = pairs_in(dir)?
        .into_iter()
        .filter(|(a, b)| src.is_none_or(|s| s == a) && tgt.is_none_or(|t| t == b))
        .collect();
    match candidates.as_slice() {
        [(a, b)] => Ok(LanguagePair { src: a.clone(), tgt: b.clone() }),
        [] => Err(Error::Data {
            path: dir.to_path_buf(),
            message: "no {split}.{src}-{tgt}.{lang}.idx files to infer the language pair from; \
                      give --source-lang and --target-lang"
                .into(),
        }),
        many => Err(Error::Data {
            path: dir.to_path_buf(),
            message: format!(
                "several language pairs ({}); give --source-lang and --target-lang",
                many.iter().map(|(a, b)| format!("{a}-{b}")).collect::<Vec<_>>().join(", ")
            ),
        }),
    }
}

/// `dict.{lang}.txt` in `dir`.
pub(crate) fn load_dictionary(dir: &Path, lang: &str) -> Result<Dictionary> {
    Ok(Dictionary::load(dir.join(format!("dict.{lang}.txt")))?)
}

/// Opens `{split}.{src}-{tgt}.{lang}` (or the reverse direction's files, as fairseq does)
/// as a source/target pair dataset with fairseq's default collation.
pub fn load_split(dir: &Path, split: &str, pair: &LanguagePair) -> Result<PairDataset> {
    let (s, t) = (&pair.src, &pair.tgt);
    let exists = |stem: &str| dir.join(format!("{stem}.idx")).is_file();
    let direction = [format!("{split}.{s}-{t}"), format!("{split}.{t}-{s}")]
        .into_iter()
        .find(|base| exists(&format!("{base}.{s}")) && exists(&format!("{base}.{t}")))
        .ok_or_else(|| Error::Data {
            path: dir.to_path_buf(),
            message: format!("no {split}.{s}-{t}.{{{s},{t}}}.idx datasets (nor {t}-{s})"),
        })?;
    let src = IndexedDataset::open(dir.join(format!("{direction}.{s}")))?;
    let tgt = IndexedDataset::open(dir.join(format!("{direction}.{t}")))?;
    Ok(LanguagePairDataset::new(src, Some(tgt), CollateConfig::default())?)
}

impl TaskDataset for PairDataset {
    fn len(&self) -> usize {
        LanguagePairDataset::len(self)
    }

    fn plan_batches(&self, cfg: &BatchConfig) -> Result<BatchPlan> {
        Ok(LanguagePairDataset::plan_batches(self, cfg)?)
    }

    fn batch(&self, indices: &[usize]) -> Result<Batch> {
        Ok(LanguagePairDataset::batch(self, indices)?)
    }
}

/// The `translation` task's own flags: none beyond the training flags it reads
/// (`--source-lang`, `--target-lang`, `--eval-bleu*`), which stay where fairseq users look for
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslationConfig {}

impl TaskConfig for TranslationConfig {
    const NAME: &'static str = "translation";

    fn build(&self, ctx: &TaskContext<'_>) -> Result<Box<dyn Task>> {
        let a = ctx.args;
        let pair =
            infer_language_pair(&a.data, a.source_lang.as_deref(), a.target_lang.as_deref())?;
        let src_dict = load_dictionary(&a.data, &pair.src)?;
        let tgt_dict = load_dictionary(&a.data, &pair.tgt)?;
        if src_dict.pad() != tgt_dict.pad() {
            return Err(Error::Config("source and target dictionaries differ in <pad>".into()));
        }
        Ok(Box::new(Translation {
            data: a.data.clone(),
            dictionaries: vec![
                DictionaryIdentity::of(format!("dict.{}.txt", pair.src), &src_dict),
                DictionaryIdentity::of(format!("dict.{}.txt", pair.tgt), &tgt_dict),
            ],
            context: ModelContext {
                src_vocab_size: src_dict.len(),
                tgt_vocab_size: tgt_dict.len(),
                pad_index: src_dict.pad() as usize,
            },
            pad: src_dict.pad(),
            pair,
        }))
    }
}

/// The `translation` task over one data folder and language pair.
#[derive(Debug)]
pub struct Translation {
    data: PathBuf,
    pair: LanguagePair,
    dictionaries: Vec<DictionaryIdentity>,
    context: ModelContext,
    pad: u32,
}

impl Translation {
    /// The language pair.
    pub fn language_pair(&self) -> &LanguagePair {
        &self.pair
    }
}

/// `--eval-bleu`: the evaluator with the validation split it decodes.
struct BleuDecoder {
    evaluator: BleuEvaluator,
    data: PairDataset,
}

impl ValidationDecoder for BleuDecoder {
    fn evaluate(&self, model: &dyn StepModel) -> Result<BleuEval> {
        self.evaluator.evaluate(model, &self.data)
    }
}

impl Task for Translation {
    fn name(&self) -> &'static str {
        TranslationConfig::NAME
    }

    fn describe(&self) -> String {
        format!("{}-{}", self.pair.src, self.pair.tgt)
    }

    fn model_context(&self) -> ModelContext {
        self.context
    }

    fn pad(&self) -> u32 {
        self.pad
    }

    fn dictionaries(&self) -> Vec<DictionaryIdentity> {
        self.dictionaries.clone()
    }

    fn checkpoint_config(&self) -> Value {
        json!({ "source_lang": self.pair.src, "target_lang": self.pair.tgt })
    }

    fn load_dataset(&self, split: &str) -> Result<Box<dyn TaskDataset>> {
        Ok(Box::new(load_split(&self.data, split, &self.pair)?))
    }

    fn validation_decoder(
        &self,
        args: &TrainArgs,
        split: &str,
        indices: Vec<usize>,
    ) -> Result<Option<Box<dyn ValidationDecoder>>> {
        if !args.eval_bleu.eval_bleu {
            return Ok(None);
        }
        let evaluator =
            BleuEvaluator::new(&args.eval_bleu, &self.data, &self.pair.tgt, indices, args.seed)?;
        let data = load_split(&self.data, split, &self.pair)?;
        Ok(Some(Box::new(BleuDecoder { evaluator, data })))
    }
}
