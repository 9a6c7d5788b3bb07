//! `seqforge eval-lm MODEL_DIR --input FILE`: fairseq-eval-lm on an exported language model.
//!
//! Each input line is tokenized as the model's text pipeline tokenizes prompts (tokenizer,
//! dictionary) and ends with EOS; an empty line is an item of EOS alone (a document
//! separator). The items are cut into samples and scored exactly as fairseq-eval-lm does
//! ([`crate::lm::samples_of_items`], [`crate::lm::evaluate`]: `--tokens-per-sample`,
//! `--context-window`, `--sample-break-mode`, batching by `--max-sentences` and
//! `--max-tokens`, word-level perplexity with `--remove-bpe`), with the model's prefill graph
//! as the scorer ([`OnnxDecoder`]'s [`crate::lm::LmScorer`]).
//!
//! Output: with `--output-word-probs` one line per sample (`ID word [logprob]\t…`, base 2 as
//! fairseq prints them), with `--output-word-stats` one line per word (`word count logprob
//! is_bpe next_word_prob next_word_count`), then fairseq's `Evaluated N tokens in Xs (… tokens/s)`
//! and `Loss (base 2): …, Perplexity: …`; with `--json` one JSON object instead. A progress bar
//! goes to stderr on terminals.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use seqforge_schemas::contract::Task;

use super::{ModelArgs, init_logging, progress_bar};
use crate::Error;
use crate::lm::{BreakMode, EvalLmOptions, EvalLmReport, WordPieces, evaluate, samples_of_items};
use crate::onnx::OnnxDecoder;
use crate::pool::open_model;
use crate::text::{check_line, split_lines};

/// `seqforge eval-lm`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  seqforge eval-lm models/lm --input test.txt --context-window 256 --remove-bpe byte_level")]
pub struct EvalLmArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw text, one sentence per line; an empty line separates documents.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// Tokens of context before each scored block (fairseq's `--context-window`).
    #[arg(long, default_value_t = 0)]
    pub context_window: usize,
    /// The longest sample, context included [default: the model's positions].
    #[arg(long)]
    pub tokens_per_sample: Option<usize>,
    /// How the token stream is cut: none, complete, complete_doc or eos.
    #[arg(long, default_value = "none")]
    pub sample_break_mode: BreakMode,
    /// Samples per batch at most.
    #[arg(long, alias = "batch-size")]
    pub max_sentences: Option<usize>,
    /// Padded tokens per batch at most.
    #[arg(long, default_value_t = 36_000)]
    pub max_tokens: usize,
    /// Word-level perplexity: merge subword pieces (`@@ `, byte_level, sentencepiece).
    #[arg(long, num_args = 0..=1, default_missing_value = "@@ ", value_name = "SCHEME")]
    pub remove_bpe: Option<WordPieces>,
    /// Print each sample's words with their log-probabilities.
    #[arg(long)]
    pub output_word_probs: bool,
    /// Print per-word statistics.
    #[arg(long)]
    pub output_word_stats: bool,
    /// Print one JSON object (the report, tokens and seconds) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `seqforge eval-lm`, writing the results to `out`.
pub fn run(args: &EvalLmArgs, out: &mut impl Write) -> anyhow::Result<EvalLmReport> {
    init_logging();
    let runtime = args.model.runtime_options(1).map_err(anyhow::Error::msg)?;
    let (model, text) = open_model(&args.model.model_dir, &runtime)?;
    model.require_task(Task::LanguageModeling, "`seqforge eval-lm`")?;
    let c = model.contract();
    let (eos, pad) = (c.special.eos, c.special.pad);
    let options = EvalLmOptions {
        tokens_per_sample: args.tokens_per_sample.unwrap_or(c.max_target_positions),
        context_window: args.context_window,
        break_mode: args.sample_break_mode,
        max_sentences: args.max_sentences,
        max_tokens: args.max_tokens,
        word_pieces: args.remove_bpe.unwrap_or_default(),
        output_word_probs: args.output_word_probs,
        output_word_stats: args.output_word_stats,
    };
    if options.tokens_per_sample > c.max_target_positions {
        anyhow::bail!(
            "--tokens-per-sample {} exceeds the model's {} positions",
            options.tokens_per_sample,
            c.max_target_positions
        );
    }
    let name = args.input.display().to_string();
    let data = std::fs::read(&args.input).with_context(|| format!("reading {name}"))?;
    let mut items = Vec::new();
    for (i, raw) in split_lines(&data).iter().enumerate() {
        let line = check_line(raw)
            .ok_or_else(|| Error::InvalidUtf8 { input: name.clone(), line: i + 1 })?;
        let mut ids = text.encode_ids(line)?.0;
        ids.push(eos);
        items.push(ids);
    }
    let samples = samples_of_items(&items, &options, eos, pad)?;
    let mut scorer = OnnxDecoder::new(Arc::clone(&model))?;
    let vocab = model.tgt_vocab();
    let symbol = |t: u32| vocab.symbol(t).unwrap_or("<unk>").to_string();
    let bar = progress_bar(samples.len() as u64);
    let start = Instant::now();
    let report =
        evaluate(&mut scorer, &samples, &options, pad, &symbol, |n| bar.set_position(n as u64))?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let tokens_per_second = report.tokens as f64 / seconds.max(1e-9);
    if args.json {
        let json = serde_json::json!({
            "report": report, "seconds": seconds, "tokens_per_second": tokens_per_second
        });
        writeln!(out, "{json}")?;
        return Ok(report);
    }
    let ln2 = std::f64::consts::LN_2;
    for (id, words) in &report.word_probs {
        let words: Vec<String> =
            words.iter().map(|(w, p)| format!("{w} [{:.2}]", f64::from(*p) / ln2)).collect();
        writeln!(out, "{id} {}", words.join("\t"))?;
    }
    for stat in &report.word_stats {
        writeln!(out, "{stat}")?;
    }
    writeln!(
        out,
        "Evaluated {} tokens in {seconds:.1}s ({tokens_per_second:.2} tokens/s)",
        super::thousands(report.tokens)
    )?;
    writeln!(out, "{}", report.summary())?;
    Ok(report)
}
