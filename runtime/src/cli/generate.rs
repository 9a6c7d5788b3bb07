//! `seqforge generate MODEL_DIR --input FILE [--ref FILE]`: translate a raw text file.
//!
//! Output (`--output-format fairseq`, the default) follows fairseq 0.12.2's `generate.py`, in
//! input order, with `N` the 0-based line number:
//! - `S-N\t<source>`: the source as the model saw it (detokenized dictionary symbols, so
//!   unknown words show as `<unk>`);
//! - `T-N\t<reference line>` with `--ref`;
//! - per hypothesis (`--nbest`): `H-N\t<score>\t<symbols>` (dictionary symbols joined by
//!   spaces), `D-N\t<score>\t<detokenized text>`, `P-N\t<positional scores>`; scores are in
//!   base 2 as fairseq prints them.
//!
//! `--output-format plain` prints exactly one line per input line: the best hypothesis,
//! detokenized (an empty line for empty and skipped lines).
//!
//! At the end, fairseq's summary goes to stderr (`Translated N sentences (T tokens) in Xs
//! (… sentences/s, … tokens/s)`, time spent encoding and searching, tokens = generated tokens of
//! the best hypotheses, EOS included), and with `--ref` corpus BLEU and chrF (sacreBLEU's
//! defaults, through [`crate::score`]) of the detokenized best hypotheses against the reference
//! lines: to stdout after the fairseq lines, to stderr with plain output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;

use super::{
    BatchArgs, InputArgs, ModelArgs, OutputFormat, SearchArgs, Translator, init_logging,
    invalid_line, progress_bar, py_float, thousands,
};
use crate::score::{BleuConfig, ChrfConfig, corpus_bleu, corpus_chrf};
use crate::search::Hypothesis;
use crate::text::{SourceLine, check_line, split_lines};

/// `seqforge generate`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Output (fairseq 0.12.2's generate.py, in input order, N = 0-based line number):
  S-N  the source as the model saw it      T-N  the reference line (--ref)
  H-N  score (base 2) and target symbols   D-N  score and the detokenized translation
  P-N  per-token scores (base 2)
With --output-format plain: one translation per input line (empty lines stay empty).
stderr: a progress bar on terminals, then `Translated N sentences (T tokens) in Xs (...)`.
With --ref: `Generate FILE with beam=B: BLEU = ... | chrF2 = ...` (sacreBLEU 2.6.0 defaults).

Examples:
  seqforge generate models/tiny --input test.es --ref test.en --beam 5 --max-tokens 4096
  seqforge generate models/tiny -i test.es --output-format plain --device cuda > test.hyp")]
pub struct GenerateArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw text to translate, one sentence per line.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: PathBuf,
    /// Reference translations, one per input line: printed as T- lines, scored with BLEU and
    /// chrF at the end, and the source of forced prefixes with --prefix-size.
    #[arg(long = "ref", value_name = "FILE")]
    pub reference: Option<PathBuf>,
    /// fairseq (S-/T-/H-/D-/P- lines) or plain (one translation per input line).
    #[arg(long, value_enum, default_value = "fairseq")]
    pub output_format: OutputFormat,
    /// Print only the summary (and scores).
    #[arg(long)]
    pub quiet: bool,
    /// Search options.
    #[command(flatten, next_help_heading = "Search")]
    pub search: SearchArgs,
    /// Input checks.
    #[command(flatten, next_help_heading = "Input")]
    pub input_args: InputArgs,
    /// Batching.
    #[command(flatten, next_help_heading = "Batching")]
    pub batch: BatchArgs,
}

/// What a run did (also printed as fairseq's summary line).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateSummary {
    /// Sentences translated (empty and skipped lines not counted).
    pub sentences: usize,
    /// Generated tokens of the best hypotheses (EOS included).
    pub tokens: usize,
    /// Seconds spent encoding and searching.
    pub seconds: f64,
    /// Lines skipped as invalid UTF-8.
    pub skipped: usize,
}

impl GenerateSummary {
    /// fairseq's line: `Translated 1,000 sentences (25,000 tokens) in 10.0s (100.00
    /// sentences/s, 2500.00 tokens/s)`.
    pub fn line(&self) -> String {
        let t = self.seconds.max(1e-9);
        format!(
            "Translated {} sentences ({} tokens) in {:.1}s ({:.2} sentences/s, {:.2} tokens/s)",
            thousands(self.sentences as u64),
            thousands(self.tokens as u64),
            self.seconds,
            self.sentences as f64 / t,
            self.tokens as f64 / t
        )
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes one sentence's fairseq lines.
pub(crate) fn write_fairseq(
    out: &mut impl Write,
    translator: &Translator,
    id: usize,
    source: &SourceLine,
    reference: Option<&str>,
    hypotheses: &[Hypothesis],
) -> anyhow::Result<()> {
    let text = translator.text();
    writeln!(out, "S-{id}\t{}", text.source_text(&source.ids)?)?;
    if let Some(r) = reference {
        writeln!(out, "T-{id}\t{r}")?;
    }
    let ln2 = std::f32::consts::LN_2;
    if source.is_empty() {
        // The empty line's translation is the empty string, with probability 1.
        writeln!(out, "H-{id}\t0.0\t")?;
        writeln!(out, "D-{id}\t0.0\t")?;
        writeln!(out, "P-{id}\t")?;
        return Ok(());
    }
    for h in hypotheses {
        let score = py_float(f64::from(h.score / ln2));
        writeln!(out, "H-{id}\t{score}\t{}", text.hypothesis_symbols(&h.tokens))?;
        writeln!(out, "D-{id}\t{score}\t{}", text.detokenize(&h.tokens)?)?;
        let p: Vec<String> =
            h.positional_scores.iter().map(|&s| format!("{:.4}", s / ln2)).collect();
        writeln!(out, "P-{id}\t{}", p.join(" "))?;
    }
    Ok(())
}

/// Runs `seqforge generate`, writing translations to `out`.
pub fn run(args: &GenerateArgs, out: &mut impl Write) -> anyhow::Result<GenerateSummary> {
    init_logging();
    let options = args.search.options().map_err(anyhow::Error::msg)?;
    let limits = args.batch.limits().map_err(anyhow::Error::msg)?;
    let input_name = args.input.display().to_string();
    let data = read(&args.input)?;
    let lines = split_lines(&data);

    let references: Option<Vec<String>> = match &args.reference {
        None => None,
        Some(path) => {
            let data = read(path)?;
            let refs = split_lines(&data);
            if refs.len() != lines.len() {
                bail!(
                    "{} has {} lines but {} has {}: one reference per input line",
                    path.display(),
                    refs.len(),
                    input_name,
                    lines.len()
                );
            }
            let mut out = Vec::with_capacity(refs.len());
            for (i, r) in refs.iter().enumerate() {
                let text = check_line(r).with_context(|| {
                    format!("{}:{}: not valid UTF-8 text", path.display(), i + 1)
                })?;
                out.push(text.to_string());
            }
            Some(out)
        }
    };
    if options.prefix_size > 0 && references.is_none() {
        bail!("--prefix-size forces the reference's first tokens: it needs --ref");
    }

    let mut translator = Translator::open(&args.model, options, limits)?;
    let overlong = args.input_args.overlong();
    // `None` = skipped invalid line.
    let mut sources: Vec<Option<SourceLine>> = Vec::with_capacity(lines.len());
    for (i, raw) in lines.iter().enumerate() {
        match check_line(raw) {
            Some(line) => sources.push(Some(translator.text().encode_line(
                line,
                &input_name,
                i + 1,
                overlong,
            )?)),
            None => {
                invalid_line(&input_name, i + 1, args.input_args.skip_invalid)?;
                sources.push(None);
            }
        }
    }
    let kept: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].is_some()).collect();
    let inputs: Vec<&SourceLine> = kept.iter().filter_map(|&i| sources[i].as_ref()).collect();
    let prefixes: Option<Vec<Vec<u32>>> = match (&references, translator.options().prefix_size) {
        (Some(refs), p) if p > 0 => {
            let mut v = Vec::with_capacity(kept.len());
            for &i in &kept {
                v.push(translator.text().encode_target(&refs[i])?);
            }
            Some(v)
        }
        _ => None,
    };
    let truncated = inputs.iter().filter(|s| s.truncated).count();
    if truncated > 0 {
        eprintln!(
            "{input_name}: {truncated} sources truncated to the model's max_source_positions"
        );
    }

    let pb = progress_bar(inputs.len() as u64);
    let start = Instant::now();
    let results = translator.translate(&inputs, prefixes.as_deref(), |n| pb.inc(n as u64))?;
    let seconds = start.elapsed().as_secs_f64();
    pb.finish_and_clear();

    let mut hyps_by_line: Vec<Option<&Vec<Hypothesis>>> = vec![None; sources.len()];
    for (&i, h) in kept.iter().zip(&results) {
        hyps_by_line[i] = Some(h);
    }
    let mut best_texts: Vec<String> = Vec::with_capacity(sources.len());
    let mut tokens = 0;
    for (i, source) in sources.iter().enumerate() {
        let hyps = hyps_by_line[i].map(Vec::as_slice).unwrap_or(&[]);
        let best = match hyps.first() {
            Some(h) => {
                tokens += h.tokens.len();
                translator.text().detokenize(&h.tokens)?
            }
            None => String::new(),
        };
        if !args.quiet {
            match (args.output_format, source) {
                (OutputFormat::Plain, _) => writeln!(out, "{best}")?,
                (OutputFormat::Fairseq, Some(source)) => {
                    let r = references.as_ref().map(|r| r[i].as_str());
                    write_fairseq(out, &translator, i, source, r, hyps)?;
                }
                (OutputFormat::Fairseq, None) => {}
            }
        }
        best_texts.push(best);
    }
    let summary = GenerateSummary {
        sentences: inputs.iter().filter(|s| !s.is_empty()).count(),
        tokens,
        seconds,
        skipped: sources.len() - kept.len(),
    };
    eprintln!("{}", summary.line());
    if summary.skipped > 0 {
        eprintln!("{input_name}: {} lines skipped (not valid UTF-8)", summary.skipped);
    }
    if let Some(refs) = &references {
        let scores = score_lines(&best_texts, refs)?;
        let beam = translator.options().beam;
        let line = format!("Generate {input_name} with beam={beam}: {scores}");
        match args.output_format {
            OutputFormat::Fairseq => writeln!(out, "{line}")?,
            OutputFormat::Plain => eprintln!("{line}"),
        }
    }
    out.flush()?;
    Ok(summary)
}

/// Corpus BLEU and chrF (sacreBLEU 2.6.0 defaults) of `hypotheses` against `references`:
/// `BLEU = … | chrF2 = …`.
pub fn score_lines(hypotheses: &[String], references: &[String]) -> anyhow::Result<String> {
    let refs = [references];
    let bleu = corpus_bleu(hypotheses, &refs, &BleuConfig::default())?;
    let chrf = corpus_chrf(hypotheses, &refs, &ChrfConfig::default())?;
    Ok(format!("{bleu} | {chrf}"))
}
