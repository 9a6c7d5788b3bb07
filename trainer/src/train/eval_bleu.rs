//! `--eval-bleu`: BLEU on the validation set at every validation, as fairseq 0.12.2's
//! translation task (`fairseq/tasks/translation.py`, `_inference_with_bleu`) computes it.
//!
//! The validation sentences (the first `--eval-bleu-max-sentences` of the split, in index
//! order; those too long for the model are left out as the loss validation leaves them out)
//! are decoded with the runtime's shared search ([`seqforge_runtime::search::generate`])
//! through [`TorchDecoder`] — the same code deployment runs — in batches of
//! `--eval-bleu-batch-size` sentences of similar length, with the options of
//! `--eval-bleu-args` (fairseq's generation argument names, see [`generation_options`]). The
//! best hypothesis of each sentence and its reference (the validation target ids) go through
//! the same detokenizer (`--eval-bleu-detok`): `space` joins the target-dictionary symbols with
//! spaces (then `--eval-bleu-remove-bpe` removes `@@ ` or sentencepiece's `▁` markers),
//! `tokenizer` decodes them with the data folder's `tokenizer.json` (through
//! [`TextPipeline`]). As in fairseq, `<unk>` becomes `UNKNOWNTOKENINHYP` in hypotheses and
//! `UNKNOWNTOKENINREF` in references, so unknown words never match. Corpus BLEU is sacreBLEU's
//! ([`seqforge_runtime::score`]) with the `13a` tokenizer, or `none` with
//! `--eval-tokenized-bleu`.
//!
//! Decoding needs no randomness from libtorch (beam search is deterministic; sampling draws
//! from its own seeded stream) and runs without dropout or gradients, so training with
//! `--eval-bleu` makes the same updates as without it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use seqforge_runtime::score::{Bleu, BleuConfig, BleuScore, Tokenizer};
use seqforge_runtime::search::{GenerationOptions, Strategy, generate};
use seqforge_runtime::text::TextPipeline;
use seqforge_schemas::contract::{SpecialIds, Vocabulary};
use serde::{Deserialize, Serialize};

use super::{Error, Result};
use crate::models::{StepModel, TorchDecoder};
use crate::tasks::translation::PairDataset;

/// How hypotheses and references are turned into text before scoring (`--eval-bleu-detok`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detok {
    /// Target-dictionary symbols joined by spaces (fairseq's `space`).
    Space,
    /// Decoded through the data folder's `tokenizer.json`.
    Tokenizer,
}

/// fairseq's `--eval-bleu*` flags of the translation task, and seqforge's own
/// `--eval-bleu-max-sentences` and `--eval-bleu-batch-size`.
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct EvalBleuArgs {
    /// Compute BLEU on the validation set at every validation (logged as `bleu`).
    #[arg(long)]
    pub eval_bleu: bool,
    /// Generation options for --eval-bleu as JSON, with fairseq's names: beam, max_len_a,
    /// max_len_b, min_len, lenpen, unkpen, unnormalized, no_repeat_ngram_size,
    /// match_source_len, sampling, sampling_topk, sampling_topp, temperature,
    /// diverse_beam_groups, diverse_beam_strength, diversity_rate (missing ones take
    /// fairseq-generate's defaults: beam 5, max_len_a 0, max_len_b 200, lenpen 1).
    #[arg(long, value_name = "JSON", default_value = "{}")]
    pub eval_bleu_args: String,
    /// How hypotheses and references become text: `space` (symbols joined by spaces) or
    /// `tokenizer` (DATA/tokenizer.json's decoder). Default: `tokenizer` when
    /// DATA/tokenizer.json exists, else `space`.
    #[arg(long, value_enum)]
    pub eval_bleu_detok: Option<Detok>,
    /// Remove BPE markers before scoring (`@@ ` by default, or `subword_nmt`,
    /// `sentencepiece`); implied by `--eval-bleu-detok tokenizer`.
    #[arg(long, value_name = "BPE", num_args = 0..=1, default_missing_value = "@@ ")]
    pub eval_bleu_remove_bpe: Option<String>,
    /// Score the detokenized text as it is (sacreBLEU's `none` tokenizer) instead of `13a`.
    #[arg(long)]
    pub eval_tokenized_bleu: bool,
    /// Log one hypothesis and its reference at every validation.
    #[arg(long)]
    pub eval_bleu_print_samples: bool,
    /// Decode only the first N validation sentences (default: all).
    #[arg(long, value_name = "N")]
    pub eval_bleu_max_sentences: Option<usize>,
    /// Sentences per search batch for --eval-bleu.
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub eval_bleu_batch_size: usize,
}

impl Default for EvalBleuArgs {
    fn default() -> Self {
        Self {
            eval_bleu: false,
            eval_bleu_args: "{}".into(),
            eval_bleu_detok: None,
            eval_bleu_remove_bpe: None,
            eval_tokenized_bleu: false,
            eval_bleu_print_samples: false,
            eval_bleu_max_sentences: None,
            eval_bleu_batch_size: 32,
        }
    }
}

/// The generation arguments fairseq's `build_generator` reads from `--eval-bleu-args`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FairseqGenerationArgs {
    beam: Option<usize>,
    max_len_a: Option<f64>,
    max_len_b: Option<usize>,
    min_len: Option<usize>,
    lenpen: Option<f64>,
    unkpen: Option<f64>,
    unnormalized: Option<bool>,
    no_repeat_ngram_size: Option<usize>,
    match_source_len: Option<bool>,
    sampling: Option<bool>,
    sampling_topk: Option<i64>,
    sampling_topp: Option<f64>,
    temperature: Option<f64>,
    diverse_beam_groups: Option<i64>,
    diverse_beam_strength: Option<f64>,
    diversity_rate: Option<f64>,
}

/// Maps `--eval-bleu-args` (a JSON object with fairseq's generation argument names) onto the
/// runtime's [`GenerationOptions`]; what is not given keeps fairseq-generate's default (fairseq's
/// own default for the flag is `{}`, so `beam` 5, `max_len_a` 0, `max_len_b` 200, `lenpen` 1).
/// `sampling` (with `sampling_topk` / `sampling_topp` / `temperature`, seeded with `seed`),
/// `diverse_beam_groups` (with `diverse_beam_strength`) and `diversity_rate` pick the search
/// strategy as fairseq's `build_generator` does; `temperature` other than 1 needs `sampling`.
/// Unknown names, wrong types and invalid values are [`Error::Config`] errors naming the flag.
pub fn generation_options(json: &str, seed: u64) -> Result<GenerationOptions> {
    let bad = |message: String| Error::Config(format!("--eval-bleu-args {json}: {message}"));
    let args: FairseqGenerationArgs =
        serde_json::from_str(json).map_err(|e| bad(format!("not a valid JSON object: {e}")))?;
    let defaults = GenerationOptions::default();
    let strategy = if args.sampling.unwrap_or(false) {
        Strategy::Sampling {
            top_k: args.sampling_topk.filter(|&k| k > 0).map(|k| k.unsigned_abs() as usize),
            top_p: args.sampling_topp.filter(|&p| p > 0.0),
            temperature: args.temperature.unwrap_or(1.0),
            seed,
        }
    } else {
        if let Some(t) = args.temperature.filter(|&t| t != 1.0) {
            return Err(bad(format!("temperature {t} is only supported with \"sampling\": true")));
        }
        match (
            args.diverse_beam_groups.filter(|&g| g > 0),
            args.diversity_rate.filter(|&r| r > 0.0),
        ) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    "diverse_beam_groups and diversity_rate exclude each other".to_string()
                ));
            }
            (Some(groups), None) => Strategy::DiverseBeam {
                groups: groups.unsigned_abs() as usize,
                strength: args.diverse_beam_strength.unwrap_or(0.5),
            },
            (None, Some(rate)) => Strategy::DiverseSiblings { rate },
            (None, None) => Strategy::Beam,
        }
    };
    let options = GenerationOptions {
        beam: args.beam.unwrap_or(defaults.beam),
        nbest: 1,
        max_len_a: args.max_len_a.unwrap_or(defaults.max_len_a),
        max_len_b: args.max_len_b.unwrap_or(defaults.max_len_b),
        min_len: args.min_len.unwrap_or(defaults.min_len),
        lenpen: args.lenpen.unwrap_or(defaults.lenpen),
        unkpen: args.unkpen.unwrap_or(defaults.unkpen),
        normalize_scores: !args.unnormalized.unwrap_or(false),
        no_repeat_ngram_size: args.no_repeat_ngram_size.unwrap_or(0),
        prefix_size: 0,
        match_source_len: args.match_source_len.unwrap_or(false),
        strategy,
    };
    options.validate().map_err(|e| bad(e.to_string()))?;
    Ok(options)
}

/// `--eval-bleu-remove-bpe`'s post-processing (fairseq's `post_process`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoveBpe {
    /// `@@ ` continuation markers (subword-nmt).
    SubwordNmt,
    /// sentencepiece's `▁` word markers.
    SentencePiece,
}

impl RemoveBpe {
    fn parse(value: &str) -> Result<Self> {
        match value {
            "@@ " | "@@" | "subword_nmt" => Ok(Self::SubwordNmt),
            "sentencepiece" | "\u{2581}" => Ok(Self::SentencePiece),
            other => Err(Error::Config(format!(
                "--eval-bleu-remove-bpe {other:?}: expected \"@@ \", subword_nmt or sentencepiece"
            ))),
        }
    }

    fn apply(self, text: &str) -> String {
        match self {
            Self::SubwordNmt => format!("{text} ").replace("@@ ", "").trim_end().to_string(),
            Self::SentencePiece => {
                text.replace(' ', "").replace('\u{2581}', " ").trim().to_string()
            }
        }
    }
}

/// One BLEU evaluation of the validation set.
#[derive(Debug, Clone)]
pub struct BleuEval {
    /// Corpus BLEU of the hypotheses against the references.
    pub score: BleuScore,
    /// The detokenized best hypothesis of each decoded sentence, in validation-set order.
    pub hypotheses: Vec<String>,
    /// The detokenized references, aligned with `hypotheses`.
    pub references: Vec<String>,
    /// The validation-set indices of the decoded sentences.
    pub indices: Vec<usize>,
    /// Seconds spent decoding, detokenizing and scoring.
    pub secs: f64,
}

/// Decodes the validation set and scores it (see the [module docs](self)).
#[derive(Debug)]
pub struct BleuEvaluator {
    options: GenerationOptions,
    hypothesis_text: TextPipeline,
    reference_text: TextPipeline,
    remove_bpe: Option<RemoveBpe>,
    bleu: Bleu,
    detok: Detok,
    indices: Vec<usize>,
    batch_size: usize,
    print_samples: bool,
}

/// A target-side text pipeline whose `<unk>` prints as `unk`.
fn pipeline(
    tgt_dict: &Path,
    tokenizer: Option<&Path>,
    unk: &str,
    special: SpecialIds,
) -> Result<TextPipeline> {
    let vocab = Vocabulary::load(tgt_dict).map_err(|e| Error::Data {
        path: tgt_dict.to_path_buf(),
        message: format!("--eval-bleu: {e}"),
    })?;
    let unk_id = special.unk as usize;
    let symbols = vocab
        .symbols()
        .iter()
        .enumerate()
        .map(|(i, s)| if i == unk_id { unk.to_string() } else { s.clone() });
    let vocab = Vocabulary::from_symbols(symbols);
    Ok(TextPipeline::new(vocab.clone(), vocab, tokenizer, special, usize::MAX)?)
}

impl BleuEvaluator {
    /// An evaluator for `args` over the validation sentences `valid_indices` (those the loss
    /// validation keeps) of the data folder `data`, whose target dictionary is `tgt_lang`'s;
    /// `seed` seeds sampling. Fails on bad `--eval-bleu-args`, an unknown
    /// `--eval-bleu-remove-bpe`, `--eval-bleu-detok tokenizer` without `DATA/tokenizer.json`, or
    /// a zero `--eval-bleu-batch-size`.
    pub fn new(
        args: &EvalBleuArgs,
        data: &Path,
        tgt_lang: &str,
        mut valid_indices: Vec<usize>,
        seed: u64,
    ) -> Result<Self> {
        let options = generation_options(&args.eval_bleu_args, seed)?;
        if args.eval_bleu_batch_size == 0 {
            return Err(Error::Config("--eval-bleu-batch-size must be at least 1".into()));
        }
        let tokenizer_path: PathBuf = data.join("tokenizer.json");
        let detok = args.eval_bleu_detok.unwrap_or(if tokenizer_path.is_file() {
            Detok::Tokenizer
        } else {
            Detok::Space
        });
        let tokenizer = match detok {
            Detok::Space => None,
            Detok::Tokenizer if tokenizer_path.is_file() => Some(tokenizer_path.as_path()),
            Detok::Tokenizer => {
                return Err(Error::Data {
                    path: tokenizer_path.clone(),
                    message: "--eval-bleu-detok tokenizer needs the data folder's tokenizer.json"
                        .into(),
                });
            }
        };
        let remove_bpe = match (&args.eval_bleu_remove_bpe, detok) {
            (Some(v), Detok::Space) => Some(RemoveBpe::parse(v)?),
            // The tokenizer's decoder undoes its own pieces.
            (Some(v), Detok::Tokenizer) => {
                RemoveBpe::parse(v)?;
                None
            }
            (None, _) => None,
        };
        let dict = data.join(format!("dict.{tgt_lang}.txt"));
        let special = SpecialIds::default();
        let hypothesis_text = pipeline(&dict, tokenizer, "UNKNOWNTOKENINHYP", special)?;
        let reference_text = pipeline(&dict, tokenizer, "UNKNOWNTOKENINREF", special)?;
        let bleu = Bleu::new(BleuConfig {
            tokenizer: if args.eval_tokenized_bleu {
                Tokenizer::None
            } else {
                Tokenizer::Mteval13a
            },
            ..BleuConfig::default()
        })?;
        valid_indices.sort_unstable();
        valid_indices.dedup();
        if let Some(n) = args.eval_bleu_max_sentences {
            valid_indices.truncate(n);
        }
        if valid_indices.is_empty() {
            return Err(Error::Config("--eval-bleu: no validation sentences to decode".into()));
        }
        Ok(Self {
            options,
            hypothesis_text,
            reference_text,
            remove_bpe,
            bleu,
            detok,
            indices: valid_indices,
            batch_size: args.eval_bleu_batch_size,
            print_samples: args.eval_bleu_print_samples,
        })
    }

    /// The generation options in use.
    pub fn options(&self) -> &GenerationOptions {
        &self.options
    }

    /// The detokenizer in use (after the default was resolved).
    pub fn detok(&self) -> Detok {
        self.detok
    }

    /// The validation-set indices that are decoded, in order.
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }

    fn text(&self, pipeline: &TextPipeline, ids: &[u32]) -> Result<String> {
        let text = pipeline.detokenize(ids)?;
        Ok(match self.remove_bpe {
            Some(r) => r.apply(&text),
            None => text,
        })
    }

    /// Decodes the sentences of `data` with `model` (no dropout, no gradients, on the model's
    /// device and in its precision), detokenizes hypotheses and references and scores them.
    pub fn evaluate(&self, model: &dyn StepModel, data: &PairDataset) -> Result<BleuEval> {
        let start = Instant::now();
        let _guard = tch::no_grad_guard();
        let mut sources = Vec::with_capacity(self.indices.len());
        let mut targets = Vec::with_capacity(self.indices.len());
        for &i in &self.indices {
            let sample = data.get(i)?;
            let target = sample.target.ok_or_else(|| {
                Error::Config(format!("--eval-bleu: validation sentence {i} has no target"))
            })?;
            sources.push(sample.source);
            targets.push(target);
        }
        // Batches of similar source lengths (less padding); a sentence's hypotheses do not
        // depend on the rest of its batch.
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by_key(|&k| (sources[k].len(), k));
        let mut best: Vec<Vec<u32>> = vec![Vec::new(); sources.len()];
        let mut decoder = TorchDecoder::new(model);
        for chunk in order.chunks(self.batch_size) {
            let batch: Vec<Vec<u32>> = chunk.iter().map(|&k| sources[k].clone()).collect();
            let results = generate(&mut decoder, &batch, &self.options)?;
            for (&k, hypotheses) in chunk.iter().zip(results) {
                // A sentence may end without a hypothesis (no finite EOS by its maximum
                // length): it scores as empty output.
                if let Some(h) = hypotheses.into_iter().next() {
                    best[k] = h.tokens;
                }
            }
        }
        let hypotheses = best
            .iter()
            .map(|ids| self.text(&self.hypothesis_text, ids))
            .collect::<Result<Vec<_>>>()?;
        let references = targets
            .iter()
            .map(|ids| self.text(&self.reference_text, ids))
            .collect::<Result<Vec<_>>>()?;
        if self.print_samples
            && let (Some(h), Some(r)) = (hypotheses.first(), references.first())
        {
            tracing::info!(target: "seqforge::train", "example hypothesis: {h}");
            tracing::info!(target: "seqforge::train", "example reference: {r}");
        }
        let score = self.bleu.corpus_score(&hypotheses, &[&references])?;
        Ok(BleuEval {
            score,
            hypotheses,
            references,
            indices: self.indices.clone(),
            secs: start.elapsed().as_secs_f64(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_args_take_fairseq_names_and_defaults() -> Result<()> {
        assert_eq!(generation_options("{}", 1)?, GenerationOptions::default());
        let o = generation_options(r#"{"beam": 4, "max_len_a": 1.2, "max_len_b": 10}"#, 1)?;
        assert_eq!((o.beam, o.max_len_a, o.max_len_b), (4, 1.2, 10));
        let o = generation_options(r#"{"sampling": true, "sampling_topk": 3}"#, 9)?;
        assert_eq!(
            o.strategy,
            Strategy::Sampling { top_k: Some(3), top_p: None, temperature: 1.0, seed: 9 }
        );
        let o = generation_options(r#"{"beam": 4, "diverse_beam_groups": 2}"#, 1)?;
        assert_eq!(o.strategy, Strategy::DiverseBeam { groups: 2, strength: 0.5 });
        for bad in [r#"{"beem": 4}"#, r#"{"beam": "x"}"#, "{", r#"{"beam": 0}"#, "[1]"] {
            let e = generation_options(bad, 1).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.starts_with("--eval-bleu-args"), "{bad}: {e}");
        }
        Ok(())
    }

    #[test]
    fn remove_bpe_follows_fairseq_post_process() -> Result<()> {
        assert_eq!(RemoveBpe::parse("@@ ")?.apply("a@@ b c@@"), "ab c");
        assert_eq!(RemoveBpe::parse("sentencepiece")?.apply("\u{2581}a b \u{2581}c"), "ab c");
        assert!(RemoveBpe::parse("gpt2").is_err());
        Ok(())
    }
}
