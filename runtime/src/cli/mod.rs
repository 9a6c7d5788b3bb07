//! The translation commands of the `seqforge` binary: `generate` ([`generate`](mod@generate)) over a raw text
//! file and `interactive` ([`interactive`](mod@interactive)) over standard input.
//!
//! Both share the model options ([`ModelArgs`]: `--device`, `--threads`, TensorRT options,
//! `--verify`), fairseq's search flags ([`SearchArgs`], mapped onto
//! [`GenerationOptions`]), input handling ([`InputArgs`]: `--truncate-source`,
//! `--skip-invalid`) and batching ([`BatchArgs`]: `--batch-size`, `--max-tokens`; sentences are
//! sorted by length, batched, and results put back in input order), through a [`Translator`],
//! which is built from the same pieces as the thread-safe [`crate::pool::TranslatorPool`].

pub mod eval_lm;
pub mod generate;
pub mod interactive;

use std::path::PathBuf;

use clap::Args;

use std::sync::Arc;

use crate::onnx::{Device, ModelDir, OnnxDecoder, RuntimeOptions};
pub use crate::pool::make_batches;
use crate::pool::{Inputs, open_model, translate_sources_on};
use crate::search::{GenerationOptions, Hypothesis, Strategy};
use crate::text::{Overlong, SourceLine, TextPipeline};
use crate::{Error, Result};

/// Which model, on which device.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The exported model directory (manifest.json, encoder.onnx, decoder.onnx, dictionaries,
    /// tokenizer.json), as written by `seqforge-export`.
    pub model_dir: PathBuf,
    /// Execution provider: cpu, cuda, cuda:N, tensorrt or tensorrt:N. A provider that is asked for but not
    /// available is an error (no silent CPU fallback).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// CPU threads in all (0: every CPU this process may use), shared equally by the workers
    /// (each worker's ONNX Runtime sessions get threads / workers intra-op threads, at least 1).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// TensorRT: also build FP16 kernels (faster, slightly different numbers).
    #[arg(long)]
    pub trt_fp16: bool,
    /// TensorRT: cache built engines in this folder, so later starts skip the engine build.
    #[arg(long, value_name = "DIR")]
    pub trt_engine_cache: Option<PathBuf>,
    /// Also check the SHA-256 of both graphs against manifest.json (the dictionaries and the
    /// tokenizer are always checked).
    #[arg(long)]
    pub verify: bool,
    /// The ONNX Runtime shared library to load (default: ORT_DYLIB_PATH, then the one
    /// `cargo xtask setup` installed).
    #[arg(long, value_name = "FILE")]
    pub ort_library: Option<PathBuf>,
    /// Pad each batch's sources to a multiple of N tokens (e.g. 8). Results then depend only on
    /// a source's length rounded up to N, not on what it is batched with; `serve` can batch
    /// sources of different lengths without changing a bit. 1: no padding beyond the batch.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub pad_source_to_multiple: usize,
}

impl ModelArgs {
    /// CPU threads in all: `--threads`, or every CPU this process may use when it is 0.
    pub fn total_threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }
    }

    /// The runtime options these flags ask for, for `workers` decoders that run at once: each
    /// worker's sessions get an equal share of [`ModelArgs::total_threads`] (at least 1).
    pub fn runtime_options(&self, workers: usize) -> std::result::Result<RuntimeOptions, String> {
        let mut device = self.device.clone();
        match &mut device {
            Device::TensorRt { fp16, engine_cache, .. } => {
                *fp16 = self.trt_fp16;
                engine_cache.clone_from(&self.trt_engine_cache);
            }
            _ if self.trt_fp16 || self.trt_engine_cache.is_some() => {
                return Err("--trt-fp16 and --trt-engine-cache need --device tensorrt".into());
            }
            _ => {}
        }
        Ok(RuntimeOptions {
            device,
            threads: (self.total_threads() / workers.max(1)).max(1),
            verify: self.verify,
            optimize: true,
            ort_library: self.ort_library.clone(),
            io_binding: false,
            pad_source_to_multiple: self.pad_source_to_multiple,
        })
    }
}

/// fairseq's search flags (fairseq 0.12.2 names and defaults).
#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    /// Beam size (for sampling: samples per sentence).
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    /// Hypotheses to output per sentence (at most --beam).
    #[arg(long, default_value_t = 1)]
    pub nbest: usize,
    /// Maximum output length is max_len_a * source length + max_len_b.
    #[arg(long, default_value_t = 0.0)]
    pub max_len_a: f64,
    /// See --max-len-a.
    #[arg(long, default_value_t = 200)]
    pub max_len_b: usize,
    /// Minimum output length (EOS excluded).
    #[arg(long, default_value_t = 1)]
    pub min_len: usize,
    /// Length penalty: <1 favours shorter, >1 longer outputs.
    #[arg(long, default_value_t = 1.0)]
    pub lenpen: f64,
    /// Unknown-word penalty (subtracted from the unknown word's log-probability).
    #[arg(long, default_value_t = 0.0)]
    pub unkpen: f64,
    /// Do not normalize scores by length.
    #[arg(long)]
    pub unnormalized: bool,
    /// Forbid repeating n-grams of this size (0: off).
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// Force the first N tokens of the reference (--ref) as the output prefix.
    #[arg(long, default_value_t = 0)]
    pub prefix_size: usize,
    /// Limit outputs to their source's length.
    #[arg(long)]
    pub match_source_len: bool,
    /// Greedy search (beam 1).
    #[arg(long)]
    pub greedy: bool,
    /// Diverse beam search with this many groups (--beam must be divisible by it).
    #[arg(long)]
    pub diverse_beam_groups: Option<usize>,
    /// Diverse beam search: penalty per earlier group choosing the same token.
    #[arg(long, default_value_t = 0.5)]
    pub diverse_beam_strength: f64,
    /// Diverse siblings search: penalty per sibling rank.
    #[arg(long)]
    pub diversity_rate: Option<f64>,
    /// Sample instead of searching.
    #[arg(long)]
    pub sampling: bool,
    /// Sampling: only among the K most likely tokens.
    #[arg(long, value_name = "K")]
    pub sampling_topk: Option<usize>,
    /// Sampling: only among the smallest set of tokens with probability mass above P.
    #[arg(long, value_name = "P")]
    pub sampling_topp: Option<f64>,
    /// Sampling temperature (>1 flatter, <1 sharper).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Random seed of sampling.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl SearchArgs {
    /// The generation options these flags ask for (checked).
    pub fn options(&self) -> std::result::Result<GenerationOptions, String> {
        let chosen = [
            self.greedy,
            self.sampling,
            self.diverse_beam_groups.is_some(),
            self.diversity_rate.is_some(),
        ];
        if chosen.iter().filter(|&&c| c).count() > 1 {
            return Err("choose at most one of --greedy, --sampling, --diverse-beam-groups, \
                        --diversity-rate"
                .into());
        }
        if !self.sampling
            && (self.sampling_topk.is_some()
                || self.sampling_topp.is_some()
                || self.temperature != 1.0)
        {
            return Err("--sampling-topk, --sampling-topp and --temperature need --sampling".into());
        }
        let strategy = if self.greedy {
            Strategy::Greedy
        } else if self.sampling {
            Strategy::Sampling {
                top_k: self.sampling_topk,
                top_p: self.sampling_topp,
                temperature: self.temperature,
                seed: self.seed,
            }
        } else if let Some(groups) = self.diverse_beam_groups {
            Strategy::DiverseBeam { groups, strength: self.diverse_beam_strength }
        } else if let Some(rate) = self.diversity_rate {
            Strategy::DiverseSiblings { rate }
        } else {
            Strategy::Beam
        };
        let options = GenerationOptions {
            beam: if self.greedy { 1 } else { self.beam },
            nbest: self.nbest,
            max_len_a: self.max_len_a,
            max_len_b: self.max_len_b,
            min_len: self.min_len,
            lenpen: self.lenpen,
            unkpen: self.unkpen,
            normalize_scores: !self.unnormalized,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            prefix_size: self.prefix_size,
            match_source_len: self.match_source_len,
            strategy,
        };
        options.validate().map_err(|e| e.to_string())?;
        Ok(options)
    }
}

/// How input lines are checked.
#[derive(Debug, Clone, Args)]
pub struct InputArgs {
    /// Cut sources longer than the model's max_source_positions instead of failing.
    #[arg(long)]
    pub truncate_source: bool,
    /// Skip lines that are not valid UTF-8 (reported on stderr; plain output keeps an empty
    /// line in their place) instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

impl InputArgs {
    /// The over-long policy.
    pub fn overlong(&self) -> Overlong {
        if self.truncate_source { Overlong::Truncate } else { Overlong::Error }
    }
}

/// How sentences are grouped into batches.
#[derive(Debug, Clone, Args)]
pub struct BatchArgs {
    /// Sentences per batch at most.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Padded source tokens per batch at most (longest source × sentences); default 4096 when
    /// neither this nor --batch-size is given.
    #[arg(long)]
    pub max_tokens: Option<usize>,
    /// Batches decoded at once, each by a worker with its own ONNX Runtime sessions and its
    /// share of --threads (CTranslate2's inter_threads). 0 (default): one worker per thread on
    /// the CPU, where independent batches scale better than one batch's operators split over
    /// threads; 1 on a GPU. The hypotheses do not depend on it.
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
}

impl BatchArgs {
    /// The number of workers for `model`'s device and threads (see `--workers`).
    pub fn workers(&self, model: &ModelArgs) -> usize {
        match (self.workers, &model.device) {
            (0, Device::Cpu) => model.total_threads(),
            (0, _) => 1,
            (given, _) => given,
        }
    }

    /// `(max sentences, max tokens)`.
    pub fn limits(&self) -> std::result::Result<(Option<usize>, Option<usize>), String> {
        if self.batch_size == Some(0) || self.max_tokens == Some(0) {
            return Err("--batch-size and --max-tokens must be at least 1".into());
        }
        Ok(match (self.batch_size, self.max_tokens) {
            (None, None) => (None, Some(4096)),
            other => other,
        })
    }
}

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// fairseq's `S-`/`T-`/`H-`/`D-`/`P-` lines (scores in base 2).
    Fairseq,
    /// One translation (the best hypothesis, detokenized) per input line, in input order.
    Plain,
}

/// A model, its text pipeline and the search options: translates encoded lines.
pub struct Translator {
    model: Arc<ModelDir>,
    /// The workers' decoders (the first is built when opening, the others by their first
    /// multi-batch call).
    decoders: Vec<OnnxDecoder>,
    workers: usize,
    text: TextPipeline,
    options: GenerationOptions,
    limits: (Option<usize>, Option<usize>),
}

impl Translator {
    /// Opens `model_dir` and prepares a translator whose calls spread their batches over up to
    /// `workers` decoders (each with its share of the threads).
    pub fn open(
        model: &ModelArgs,
        options: GenerationOptions,
        limits: (Option<usize>, Option<usize>),
        workers: usize,
    ) -> anyhow::Result<Self> {
        if workers == 0 {
            anyhow::bail!("--workers must be at least 1 (or 0 for one per thread)");
        }
        let runtime = model.runtime_options(workers).map_err(anyhow::Error::msg)?;
        let (dir, text) = open_model(&model.model_dir, &runtime)?;
        let decoders = vec![OnnxDecoder::new(Arc::clone(&dir))?];
        Ok(Self { model: dir, decoders, workers, text, options, limits })
    }

    /// The text pipeline.
    pub fn text(&self) -> &TextPipeline {
        &self.text
    }

    /// The search options.
    pub fn options(&self) -> &GenerationOptions {
        &self.options
    }

    /// The opened model.
    pub fn model(&self) -> &Arc<ModelDir> {
        &self.model
    }

    /// Translates `sources` (with optional forced target prefixes), batching by length, the
    /// batches spread over the workers; empty sources get no hypotheses. Calls `progress(n)`
    /// after each batch of `n` sentences.
    pub fn translate(
        &mut self,
        sources: &[&SourceLine],
        prefixes: Option<&[Vec<u32>]>,
        progress: impl FnMut(usize),
    ) -> Result<Vec<Vec<Hypothesis>>> {
        let model = Arc::clone(&self.model);
        translate_sources_on(
            &mut self.decoders,
            self.workers,
            &move || OnnxDecoder::new(Arc::clone(&model)),
            sources,
            prefixes,
            Inputs::of(self.model.task()),
            &self.options,
            self.limits,
            progress,
        )
    }

    /// Target vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.model.contract().tgt_vocab_size
    }
}

/// A float as Python's `repr` prints it (shortest round-trip digits; exponent form below 1e-4
/// and from 1e16), which fairseq uses for `H-`/`D-` scores.
pub fn py_float(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let a = x.abs();
    if x != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{x:e}");
        if let Some((mantissa, exp)) = s.split_once('e') {
            let (sign, digits) = match exp.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', exp),
            };
            return format!("{mantissa}e{sign}{digits:0>2}");
        }
        return s;
    }
    let s = format!("{x}");
    if s.contains('.') { s } else { format!("{s}.0") }
}

/// An integer with thousands separators (Python's `{:,}`).
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Sets up `tracing` on stderr (`RUST_LOG`, default `warn`; colours only on a terminal), once.
pub fn init_logging() {
    seqforge_cli_support::init_logging("warn");
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(total: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:40}] {pos}/{len} sentences ({per_sec}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// A line that is not UTF-8: reported on stderr and `Ok` when `skip`, else
/// [`Error::InvalidUtf8`].
pub(crate) fn invalid_line(input: &str, line: usize, skip: bool) -> Result<()> {
    if skip {
        eprintln!("{input}:{line}: skipped: not valid UTF-8 text");
        tracing::warn!(input, line, "skipped a line that is not valid UTF-8");
        Ok(())
    } else {
        Err(Error::InvalidUtf8 { input: input.to_string(), line })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_respect_both_limits_and_sort_by_length() {
        let lengths = [5, 2, 9, 2, 3];
        let b = make_batches(&lengths, Some(2), None);
        assert_eq!(b, vec![vec![1, 3], vec![4, 0], vec![2]]);
        let b = make_batches(&lengths, None, Some(10));
        // 2,2,3 → 3×3=9 ≤ 10; then 5 alone (5×2=10 fits with 9? 9×2 = 18 > 10).
        assert_eq!(b, vec![vec![1, 3, 4], vec![0], vec![2]]);
        let b = make_batches(&[50], None, Some(10));
        assert_eq!(b, vec![vec![0]]);
        assert!(make_batches(&[], Some(3), None).is_empty());
    }

    #[test]
    fn python_number_formats() {
        assert_eq!(py_float(-0.5), "-0.5");
        assert_eq!(py_float(-2.0), "-2.0");
        assert_eq!(py_float(1.5e-5), "1.5e-05");
        assert_eq!(py_float(f64::NEG_INFINITY), "-inf");
        let x = f64::from(-0.3017454f32);
        assert_eq!(py_float(x).parse::<f64>(), Ok(x));
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn search_flags_map_to_options() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            s: SearchArgs,
        }
        let parse = |args: &[&str]| {
            T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
                .map_err(|e| e.to_string())
                .and_then(|t| t.s.options())
        };
        let o =
            parse(&["--beam", "4", "--diverse-beam-groups", "2"]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(o.strategy, Strategy::DiverseBeam { groups: 2, .. }));
        let o =
            parse(&["--sampling", "--sampling-topk", "10", "--temperature", "0.7", "--beam", "2"])
                .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(o.strategy, Strategy::Sampling { top_k: Some(10), .. }));
        assert!(parse(&["--temperature", "0.5"]).is_err());
        assert!(parse(&["--greedy", "--sampling"]).is_err());
        assert!(parse(&["--beam", "3", "--diverse-beam-groups", "2"]).is_err());
        assert_eq!(parse(&["--greedy"]).map(|o| o.beam), Ok(1));
    }
}
