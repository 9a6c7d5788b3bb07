//! `seqforge interactive MODEL_DIR`: translate standard input as it arrives.
//!
//! Lines are read from stdin (`\n`-terminated, a trailing `\r` dropped), collected up to
//! `--buffer-size` lines (default 1: each line is answered as soon as it is read), translated
//! together (batched by `--batch-size` / `--max-tokens`) and written to stdout, which is
//! flushed after every buffer. `--output-format plain` (the default) writes one translation per
//! input line; `fairseq` writes `S-`/`H-`/`D-`/`P-` lines numbered from 0 across the whole
//! session. Empty lines give empty translations; invalid UTF-8 fails (or, with
//! `--skip-invalid`, is reported on stderr and answered with an empty line in plain output).
//! The summary line goes to stderr at end of input.

use std::io::{BufRead, Write};
use std::time::Instant;

use clap::Args;

use super::generate::{GenerateSummary, write_fairseq};
use super::{
    BatchArgs, InputArgs, ModelArgs, OutputFormat, SearchArgs, Translator, init_logging,
    invalid_line,
};
use crate::text::{SourceLine, check_line};

/// `seqforge interactive`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Reads stdin line by line and writes one translation per line to stdout, flushed after every
--buffer-size lines (default 1). End input with Ctrl-D; the summary goes to stderr.

Example:
  echo 'En el principio creó Dios los cielos y la tierra.' | seqforge interactive models/tiny")]
pub struct InteractiveArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Lines to collect before translating them together (1: answer every line at once).
    #[arg(long, default_value_t = 1)]
    pub buffer_size: usize,
    /// plain (one translation per input line) or fairseq (S-/H-/D-/P- lines).
    #[arg(long, value_enum, default_value = "plain")]
    pub output_format: OutputFormat,
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

/// Runs `seqforge interactive` over `input`, writing to `out`.
pub fn run(
    args: &InteractiveArgs,
    mut input: impl BufRead,
    out: &mut impl Write,
) -> anyhow::Result<GenerateSummary> {
    init_logging();
    if args.buffer_size == 0 {
        anyhow::bail!("--buffer-size must be at least 1");
    }
    let options = args.search.options().map_err(anyhow::Error::msg)?;
    if options.prefix_size > 0 {
        anyhow::bail!("--prefix-size needs references: use `seqforge generate --ref`");
    }
    let limits = args.batch.limits().map_err(anyhow::Error::msg)?;
    let mut translator =
        Translator::open(&args.model, options, limits, args.batch.workers(&args.model))?;
    let overlong = args.input_args.overlong();
    let name = "<stdin>";
    let mut summary = GenerateSummary { sentences: 0, tokens: 0, seconds: 0.0, skipped: 0 };
    let mut line_no = 0usize;
    let mut raw = Vec::new();
    let mut eof = false;
    while !eof {
        // (0-based id, source or None for a skipped line)
        let mut buffer: Vec<(usize, Option<SourceLine>)> = Vec::with_capacity(args.buffer_size);
        while buffer.len() < args.buffer_size {
            raw.clear();
            if input.read_until(b'\n', &mut raw)? == 0 {
                eof = true;
                break;
            }
            if raw.last() == Some(&b'\n') {
                raw.pop();
            }
            if raw.last() == Some(&b'\r') {
                raw.pop();
            }
            line_no += 1;
            let source = match check_line(&raw) {
                Some(line) => {
                    let source = translator.text().encode_line(line, name, line_no, overlong)?;
                    if source.truncated {
                        eprintln!(
                            "{name}:{line_no}: truncated to the model's max_source_positions"
                        );
                    }
                    Some(source)
                }
                None => {
                    invalid_line(name, line_no, args.input_args.skip_invalid)?;
                    summary.skipped += 1;
                    None
                }
            };
            buffer.push((line_no - 1, source));
        }
        if buffer.is_empty() {
            break;
        }
        let inputs: Vec<&SourceLine> = buffer.iter().filter_map(|(_, s)| s.as_ref()).collect();
        let start = Instant::now();
        let results = translator.translate(&inputs, None, |_| {})?;
        summary.seconds += start.elapsed().as_secs_f64();
        let mut results = results.into_iter();
        for (id, source) in &buffer {
            let Some(source) = source else {
                if args.output_format == OutputFormat::Plain {
                    writeln!(out)?;
                }
                continue;
            };
            let hyps = results.next().unwrap_or_default();
            if !source.is_empty() || !hyps.is_empty() {
                summary.sentences += 1;
            }
            if let Some(best) = hyps.first() {
                summary.tokens += best.tokens.len();
            }
            match args.output_format {
                OutputFormat::Plain => {
                    let best = match hyps.first() {
                        Some(h) => translator.text().detokenize(&h.tokens)?,
                        None => String::new(),
                    };
                    writeln!(out, "{best}")?;
                }
                OutputFormat::Fairseq => write_fairseq(out, &translator, *id, source, None, &hyps)?,
            }
        }
        out.flush()?;
    }
    eprintln!("{}", summary.line());
    Ok(summary)
}
