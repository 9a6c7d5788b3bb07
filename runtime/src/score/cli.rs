//! `seqforge score`: scores a system output against reference files and prints what
//! sacreBLEU 2.6.0's CLI prints (`sacrebleu REF… -i HYP -m bleu chrf -f text`, or `-f json`
//! with `--json`).
//!
//! Files are read as sacreBLEU reads them: UTF-8 (a byte-order mark is kept, as Python's
//! `utf-8` codec keeps it), lines split on `\n`, each line right-stripped of Python whitespace.
//! Standard input is read with universal newlines (`\r\n` and `\r` end lines too), as sacreBLEU
//! reads it. BLEU's options are sacreBLEU's (`--tokenize`, `--lowercase`, `--smooth-method`,
//! `--smooth-value`); chrF's are the `--chrf-*` ones. `--metrics chrf++` is sacreBLEU's
//! `-m chrf --chrf-word-order 2`. `--sentence-level` prints one score per line as sacreBLEU's
//! `--sentence-level` does.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use super::bleu::{Bleu, BleuConfig, Smoothing};
use super::chrf::{Chrf, ChrfConfig};
use super::text::rstrip;
use super::{Error, Result, Tokenizer, check_lengths};

/// A metric `seqforge score` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Metric {
    /// BLEU.
    Bleu,
    /// chrF (character n-grams only).
    Chrf,
    /// chrF++ (character and word n-grams).
    #[value(name = "chrf++")]
    ChrfPlusPlus,
}

/// The arguments of `seqforge score`.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// A reference file, one segment per line; repeat for several references.
    #[arg(long = "ref", short = 'r', value_name = "FILE", required = true)]
    pub refs: Vec<PathBuf>,
    /// The system output, one segment per line (default: standard input).
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// The metrics, comma-separated: bleu, chrf, chrf++.
    #[arg(long, short = 'm', value_enum, value_delimiter = ',', default_value = "bleu")]
    pub metrics: Vec<Metric>,
    /// BLEU's tokenizer: 13a, intl, none, zh, char.
    #[arg(long, default_value = "13a", value_parser = parse_tokenizer)]
    pub tokenize: Tokenizer,
    /// Lowercase before computing BLEU (sacreBLEU's `--lowercase`, BLEU only).
    #[arg(long)]
    pub lowercase: bool,
    /// BLEU's smoothing method.
    #[arg(long, default_value = "exp", value_parser = ["exp", "floor", "add-k", "none"])]
    pub smooth_method: String,
    /// The smoothing value of `floor` (default 0.1) and `add-k` (default 1).
    #[arg(long, allow_negative_numbers = true)]
    pub smooth_value: Option<f64>,
    /// Lowercase before computing chrF.
    #[arg(long)]
    pub chrf_lowercase: bool,
    /// Keep whitespace in chrF's character n-grams.
    #[arg(long)]
    pub chrf_whitespace: bool,
    /// chrF's epsilon smoothing instead of effective-order averaging.
    #[arg(long)]
    pub chrf_eps_smoothing: bool,
    /// Print sacreBLEU's JSON format instead of its text format.
    #[arg(long)]
    pub json: bool,
    /// Digits after the decimal point of the score.
    #[arg(long, short = 'w', default_value_t = 1)]
    pub width: usize,
    /// Print only the score.
    #[arg(long, short = 'b')]
    pub score_only: bool,
    /// Score every line on its own, one line each (sacreBLEU's `--sentence-level`: one metric
    /// only, BLEU with effective order, always the text format).
    #[arg(long)]
    pub sentence_level: bool,
}

fn parse_tokenizer(s: &str) -> Result<Tokenizer> {
    s.parse()
}

/// Splits a file's bytes into lines as Python's text mode with `newline="\n"` does, decodes
/// each as UTF-8 and right-strips it.
fn split_lines(name: &str, bytes: &[u8]) -> Result<Vec<String>> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, line)| match std::str::from_utf8(line) {
            Ok(s) => Ok(rstrip(s).to_owned()),
            Err(e) => Err(Error::InvalidUtf8 {
                name: name.to_owned(),
                line: i + 1,
                column: e.valid_up_to() + 1,
            }),
        })
        .collect()
}

fn read_file(path: &Path) -> Result<Vec<String>> {
    let bytes = fs::read(path).map_err(|source| Error::Io { path: path.to_owned(), source })?;
    split_lines(&path.display().to_string(), &bytes)
}

fn read_stdin(mut stdin: impl Read) -> Result<Vec<String>> {
    let mut bytes = Vec::new();
    stdin
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io { path: PathBuf::from("stdin"), source })?;
    // Universal newlines: "\r\n" and a lone "\r" end a line.
    let mut unified = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\r' {
            unified.push(b'\n');
            if bytes.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
        } else {
            unified.push(bytes[i]);
        }
        i += 1;
    }
    let lines = split_lines("stdin", &unified)?;
    if let Some(k) = lines.iter().position(|l| l.contains('\t')) {
        return Err(Error::TabOnStdin { line: k + 1 });
    }
    Ok(lines)
}

/// BLEU's configuration from the arguments.
fn bleu_config(args: &ScoreArgs, effective_order: bool) -> Result<BleuConfig> {
    Ok(BleuConfig {
        tokenizer: args.tokenize,
        lowercase: args.lowercase,
        smoothing: Smoothing::from_method(&args.smooth_method, args.smooth_value)?,
        effective_order,
        ..BleuConfig::default()
    })
}

/// chrF's (word order 0) or chrF++'s (word order 2) configuration from the arguments.
fn chrf_config(args: &ScoreArgs, metric: Metric) -> ChrfConfig {
    ChrfConfig {
        word_order: if metric == Metric::ChrfPlusPlus { 2 } else { 0 },
        lowercase: args.chrf_lowercase,
        whitespace: args.chrf_whitespace,
        eps_smoothing: args.chrf_eps_smoothing,
        ..ChrfConfig::default()
    }
}

/// The requested metrics in sacreBLEU's order (sorted by name), without repeats.
fn metrics(args: &ScoreArgs) -> Vec<Metric> {
    let mut metrics = args.metrics.clone();
    metrics.sort();
    metrics.dedup();
    metrics
}

/// The score lines of the requested metrics, in sacreBLEU's order (sorted by metric name).
pub fn score_lines(args: &ScoreArgs, hyps: &[String], refs: &[Vec<String>]) -> Result<Vec<String>> {
    let (w, only, json) = (args.width, args.score_only, args.json);
    let mut out = Vec::new();
    for metric in metrics(args) {
        out.push(match metric {
            Metric::Bleu => Bleu::new(bleu_config(args, false)?)?
                .corpus_score(hyps, refs)?
                .format(w, only, true, json),
            Metric::Chrf | Metric::ChrfPlusPlus => Chrf::new(chrf_config(args, metric))?
                .corpus_score(hyps, refs)?
                .format(w, only, true, json),
        });
    }
    Ok(out)
}

/// One score line per segment (`--sentence-level`), as sacreBLEU prints them.
pub fn sentence_lines(
    args: &ScoreArgs,
    hyps: &[String],
    refs: &[Vec<String>],
) -> Result<Vec<String>> {
    let metrics = metrics(args);
    let [metric] = metrics[..] else {
        return Err(Error::InvalidOption {
            option: "sentence-level",
            reason: format!("one metric at a time ({} given)", metrics.len()),
        });
    };
    let (w, only) = (args.width, args.score_only);
    let segment_refs = |i: usize| -> Vec<&str> { refs.iter().map(|r| r[i].as_str()).collect() };
    match metric {
        Metric::Bleu => {
            let bleu = Bleu::new(bleu_config(args, true)?)?;
            hyps.iter()
                .enumerate()
                .map(|(i, h)| {
                    Ok(bleu.sentence_score(h, &segment_refs(i))?.format(w, only, true, false))
                })
                .collect()
        }
        Metric::Chrf | Metric::ChrfPlusPlus => {
            let chrf = Chrf::new(chrf_config(args, metric))?;
            hyps.iter()
                .enumerate()
                .map(|(i, h)| {
                    Ok(chrf.sentence_score(h, &segment_refs(i))?.format(w, only, true, false))
                })
                .collect()
        }
    }
}

/// Joins score lines as sacreBLEU's `print_single_results` prints them: a JSON list, or text
/// lines right-aligned on their `=`.
pub fn render(results: &[String], json: bool) -> String {
    let mut out = String::new();
    if results.is_empty() {
        return out;
    }
    if json {
        if results.len() > 1 {
            out.push_str("[\n");
            out.push_str(&results.join(",\n"));
            out.push_str("\n]\n");
        } else {
            out.push_str(&results[0]);
            out.push('\n');
        }
        return out;
    }
    if results.len() == 1 {
        out.push_str(&results[0]);
        out.push('\n');
        return out;
    }
    let mut lens = Vec::new();
    for line in results {
        match line.chars().position(|c| c == '=') {
            Some(k) => lens.push(k.saturating_sub(1)),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(&w) = lens.iter().max() {
        for (&len, line) in lens.iter().zip(results) {
            let left: String = line.chars().take(len).collect();
            let right: String = line.chars().skip(len).collect();
            let pad = w.saturating_sub(left.chars().count());
            out.push_str(&" ".repeat(pad));
            out.push_str(&left);
            out.push_str(&right);
            out.push('\n');
        }
    }
    out
}

/// Runs `seqforge score`: reads the references and the system output (`--input` or `stdin`),
/// checks that they have the same number of lines, and writes the scores to `stdout`.
pub fn run(args: &ScoreArgs, stdin: impl Read, mut stdout: impl Write) -> Result<()> {
    let mut refs = Vec::with_capacity(args.refs.len());
    for path in &args.refs {
        refs.push(read_file(path)?);
    }
    let (hyp_name, hyps) = match &args.input {
        Some(path) => (path.display().to_string(), read_file(path)?),
        None => ("stdin".to_owned(), read_stdin(stdin)?),
    };
    let lengths: Vec<(String, usize)> =
        args.refs.iter().zip(&refs).map(|(p, r)| (p.display().to_string(), r.len())).collect();
    check_lengths((&hyp_name, hyps.len()), &lengths)?;
    let text = if args.sentence_level {
        sentence_lines(args, &hyps, &refs)?.iter().map(|l| format!("{l}\n")).collect()
    } else {
        render(&score_lines(args, &hyps, &refs)?, args.json)
    };
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|source| Error::Io { path: PathBuf::from("stdout"), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_like_python_text_mode() {
        let lines = split_lines("f", b"a \r\n\nb\rc\t\n\xef\xbb\xbfd").unwrap_or_default();
        assert_eq!(lines, ["a", "", "b\rc", "\u{feff}d"]);
        assert!(split_lines("f", b"").unwrap_or_default().is_empty());
        let Err(err) = split_lines("f", b"ok\nbad \xff\n") else {
            panic!("invalid UTF-8 accepted")
        };
        assert_eq!(err.to_string(), "f: line 2 is not valid UTF-8 (invalid byte at column 5)");
    }

    #[test]
    fn stdin_uses_universal_newlines_and_rejects_tabs() {
        let lines = read_stdin(&b"a\rb\r\nc"[..]).unwrap_or_default();
        assert_eq!(lines, ["a", "b", "c"]);
        let Err(err) = read_stdin(&b"a\nb\tc\n"[..]) else { panic!("a tab on stdin accepted") };
        assert!(matches!(err, Error::TabOnStdin { line: 2 }), "{err}");
    }
}
