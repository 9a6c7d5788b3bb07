//! `seqforge generate MODEL_DIR --input FILE [--ref FILE]`: translate a raw text file;
//! `seqforge generate MODEL_DIR --data DIR [--gen-subset test]`: translate a fairseq binarized
//! split, as fairseq-generate does.
//!
//! With `--data`, the sources are the ids of `DIR/{split}.{src}-{tgt}.{src}.idx/.bin` as the
//! binarizer wrote them (EOS included); the languages are the manifest's `source_lang` /
//! `target_lang`, or else read from the file names. When the target side
//! (`{split}.{src}-{tgt}.{tgt}.idx/.bin`) exists, its sentences, detokenized through the model's
//! tokenizer, are the `T-` lines and the BLEU/chrF references (and the forced prefixes of
//! `--prefix-size`). `DIR/dict.{src}.txt` and `DIR/dict.{tgt}.txt` must be the model's
//! dictionaries (same identity hash), else the ids would mean other words. N is then the
//! sentence's index in the split; everything else is as with `--input`.
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

use clap::ArgGroup;
use seqforge_schemas::contract::{Manifest, Task, Vocabulary};

use super::{
    BatchArgs, InputArgs, ModelArgs, OutputFormat, SearchArgs, Translator, init_logging,
    invalid_line, progress_bar, py_float, thousands,
};
use crate::indexed::{IndexedDataset, index_path, split_prefix};
use crate::score::{BleuConfig, ChrfConfig, corpus_bleu, corpus_chrf};
use crate::search::Hypothesis;
use crate::text::{Overlong, SourceLine, check_line, split_lines};

/// `seqforge generate`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("sentences").required(true).args(["input", "data"])))]
#[command(after_help = "\
Output (fairseq 0.12.2's generate.py, in input order, N = 0-based line number):
  S-N  the source as the model saw it      T-N  the reference line (--ref)
  H-N  score (base 2) and target symbols   D-N  score and the detokenized translation
  P-N  per-token scores (base 2)
With --output-format plain: one translation per input line (empty lines stay empty).
stderr: a progress bar on terminals, then `Translated N sentences (T tokens) in Xs (...)`.
With --data DIR: the binarized split DIR/{split}.{src}-{tgt}.{src}.idx/.bin (--gen-subset,
  default test); its target side, when present, gives the T- lines and the references.
With --ref: `Generate FILE with beam=B: BLEU = ... | chrF2 = ...` (sacreBLEU 2.6.0 defaults).

Examples:
  seqforge generate models/tiny --input test.es --ref test.en --beam 5 --max-tokens 4096
  seqforge generate models/tiny -i test.es --output-format plain --device cuda > test.hyp
  seqforge generate models/tiny --data data-bin/bible --gen-subset test --beam 5")]
pub struct GenerateArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Raw text to translate, one sentence per line.
    #[arg(long, short = 'i', value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// A fairseq binarized data directory (`preprocess`'s output, with the model's
    /// dictionaries) to translate a split of instead of --input.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The split of --data to translate (`{split}.{src}-{tgt}.{lang}.idx/.bin`) [default: test].
    #[arg(long, value_name = "SPLIT", conflicts_with = "input")]
    pub gen_subset: Option<String>,
    /// Reference translations, one per input line: printed as T- lines, scored with BLEU and
    /// chrF at the end, and the source of forced prefixes with --prefix-size. With --data the
    /// references are the split's target side.
    #[arg(long = "ref", value_name = "FILE", conflicts_with = "data")]
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
    if source.is_empty() && hypotheses.is_empty() {
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

/// The sentences of a run, encoded, with their references.
struct Loaded {
    /// The name in messages (`--input`'s path, or the split's source `.idx`).
    input_name: String,
    /// The name on the score line (`--input`'s path, or the split as fairseq prints it).
    label: String,
    /// One per line or item; `None` = skipped invalid line.
    sources: Vec<Option<SourceLine>>,
    /// One per line or item, when there are references.
    references: Option<Vec<String>>,
    /// Target ids of the references (no EOS), with --prefix-size.
    prefixes: Option<Vec<Vec<u32>>>,
}

/// Runs `seqforge generate`, writing translations to `out`.
pub fn run(args: &GenerateArgs, out: &mut impl Write) -> anyhow::Result<GenerateSummary> {
    init_logging();
    let options = args.search.options().map_err(anyhow::Error::msg)?;
    let limits = args.batch.limits().map_err(anyhow::Error::msg)?;
    let prefix_size = options.prefix_size;
    match (&args.input, &args.data) {
        (Some(input), None) => {
            let text = read_text(input, args.reference.as_deref(), prefix_size)?;
            let mut translator =
                Translator::open(&args.model, options, limits, args.batch.workers(&args.model))?;
            let loaded = encode_text(args, &translator, input, text)?;
            generate(args, &mut translator, loaded, out)
        }
        (None, Some(dir)) => {
            let split = read_split(
                &args.model.model_dir,
                dir,
                args.gen_subset.as_deref().unwrap_or("test"),
            )?;
            if prefix_size > 0 && split.target.is_none() {
                bail!(
                    "--prefix-size forces the reference's first tokens: it needs the target side \
                     of the split ({} is missing)",
                    split.target_idx.display()
                );
            }
            let mut translator =
                Translator::open(&args.model, options, limits, args.batch.workers(&args.model))?;
            translator.model().require_task(Task::Translation, "`seqforge generate --data`")?;
            let loaded = encode_split(args, &translator, split)?;
            generate(args, &mut translator, loaded, out)
        }
        _ => bail!("give exactly one of --input FILE and --data DIR"),
    }
}

/// `--input` and `--ref`, read and checked.
struct RawText {
    data: Vec<u8>,
    references: Option<Vec<String>>,
}

fn read_text(
    input: &Path,
    reference: Option<&Path>,
    prefix_size: usize,
) -> anyhow::Result<RawText> {
    let data = read(input)?;
    let n_lines = split_lines(&data).len();
    let references: Option<Vec<String>> = match reference {
        None => None,
        Some(path) => {
            let data = read(path)?;
            let refs = split_lines(&data);
            if refs.len() != n_lines {
                bail!(
                    "{} has {} lines but {} has {}: one reference per input line",
                    path.display(),
                    refs.len(),
                    input.display(),
                    n_lines
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
    if prefix_size > 0 && references.is_none() {
        bail!("--prefix-size forces the reference's first tokens: it needs --ref");
    }
    Ok(RawText { data, references })
}

fn encode_text(
    args: &GenerateArgs,
    translator: &Translator,
    input: &Path,
    raw: RawText,
) -> anyhow::Result<Loaded> {
    let input_name = input.display().to_string();
    let lines = split_lines(&raw.data);
    let overlong = args.input_args.overlong();
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
    let prefixes = match (&raw.references, translator.options().prefix_size) {
        (Some(refs), p) if p > 0 => {
            let mut v = Vec::with_capacity(refs.len());
            for r in refs {
                v.push(translator.text().encode_target(r)?);
            }
            Some(v)
        }
        _ => None,
    };
    Ok(Loaded {
        label: input_name.clone(),
        input_name,
        sources,
        references: raw.references,
        prefixes,
    })
}

/// A binarized split, read and checked against the model's dictionaries.
struct Split {
    source: IndexedDataset,
    target: Option<IndexedDataset>,
    /// The target side's `.idx` (whether or not it exists).
    target_idx: PathBuf,
    split: String,
    src_vocab_len: usize,
    /// The EOS id (the manifest's).
    eos: u32,
}

/// The split's languages: the manifest's, or the only `{split}.{a}-{b}.{a}.idx` in `dir`.
fn split_languages(
    manifest: &Manifest,
    dir: &Path,
    split: &str,
) -> anyhow::Result<(String, String)> {
    if let (Some(s), Some(t)) = (&manifest.source_lang, &manifest.target_lang) {
        return Ok((s.clone(), t.clone()));
    }
    let mut pairs = Vec::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let name = entry.with_context(|| format!("reading {}", dir.display()))?.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&format!("{split}."))) else {
            continue;
        };
        let Some(rest) = rest.strip_suffix(".idx") else { continue };
        let Some((pair, lang)) = rest.rsplit_once('.') else { continue };
        let Some((a, b)) = pair.split_once('-') else { continue };
        if lang == a {
            pairs.push((a.to_string(), b.to_string()));
        }
    }
    pairs.sort();
    pairs.dedup();
    match pairs.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "{}: no {split}.SRC-TGT.SRC.idx (and the model's manifest names no languages)",
            dir.display()
        ),
        _ => bail!(
            "{}: several language pairs for split {split} ({pairs:?}) and the model's manifest \
             names no languages",
            dir.display()
        ),
    }
}

/// Checks `data_dir/dict.{lang}.txt` against the model's dictionary file `model_file`.
fn check_dictionary(data_dict: &Path, model_file: &Path) -> anyhow::Result<Vocabulary> {
    let model = Vocabulary::load(model_file)?;
    let data = Vocabulary::load(data_dict).with_context(|| {
        format!("{}: --data needs the dictionaries it was binarized with", data_dict.display())
    })?;
    let (expected, found) = (model.identity_hash(), data.identity_hash());
    if expected != found {
        return Err(crate::Error::DictionaryMismatch {
            path: data_dict.to_path_buf(),
            model_file: model_file.to_path_buf(),
            expected,
            found,
        }
        .into());
    }
    Ok(model)
}

fn read_split(model_dir: &Path, dir: &Path, split: &str) -> anyhow::Result<Split> {
    let manifest = Manifest::load(model_dir)?;
    let (src, tgt) = split_languages(&manifest, dir, split)?;
    let src_vocab = check_dictionary(
        &dir.join(format!("dict.{src}.txt")),
        &model_dir.join(&manifest.files.src_dict.name),
    )?;
    check_dictionary(
        &dir.join(format!("dict.{tgt}.txt")),
        &model_dir.join(&manifest.files.tgt_dict.name),
    )?;
    let source = IndexedDataset::open(&split_prefix(dir, split, &src, &tgt, &src))?;
    let target_prefix = split_prefix(dir, split, &src, &tgt, &tgt);
    let target_idx = index_path(&target_prefix);
    let target = if target_idx.exists() {
        let target = IndexedDataset::open(&target_prefix)?;
        if target.len() != source.len() {
            bail!(
                "{} has {} sentences but {} has {}: one target per source",
                target.index_path().display(),
                target.len(),
                source.index_path().display(),
                source.len()
            );
        }
        Some(target)
    } else {
        None
    };
    Ok(Split {
        source,
        target,
        target_idx,
        split: split.to_string(),
        src_vocab_len: src_vocab.len(),
        eos: manifest.contract.special.eos,
    })
}

fn encode_split(
    args: &GenerateArgs,
    translator: &Translator,
    split: Split,
) -> anyhow::Result<Loaded> {
    let input_name = split.source.index_path().display().to_string();
    let text = translator.text();
    let max = text.max_source_positions();
    let overlong = args.input_args.overlong();
    let ids = split.source.read_all()?;
    let mut sources = Vec::with_capacity(ids.len());
    for (i, mut ids) in ids.into_iter().enumerate() {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= split.src_vocab_len) {
            return Err(crate::Error::IndexedData {
                path: split.source.data_path().to_path_buf(),
                field: "ids",
                message: format!(
                    "sentence {i} holds id {bad}, outside the source dictionary ({} symbols)",
                    split.src_vocab_len
                ),
            }
            .into());
        }
        let mut truncated = false;
        if ids.len() > max {
            match overlong {
                Overlong::Error => {
                    return Err(crate::Error::SourceTooLong {
                        input: input_name.clone(),
                        line: i + 1,
                        tokens: ids.len(),
                        max,
                    }
                    .into());
                }
                Overlong::Truncate => {
                    let eos = ids.last().copied();
                    ids.truncate(max.saturating_sub(1));
                    ids.extend(eos);
                    truncated = true;
                }
            }
        }
        sources.push(Some(SourceLine { ids, truncated, unknown: 0 }));
    }
    let (references, prefixes) = match &split.target {
        None => (None, None),
        Some(target) => {
            let ids = target.read_all()?;
            let mut refs = Vec::with_capacity(ids.len());
            for t in &ids {
                refs.push(text.detokenize(t)?);
            }
            let prefixes = (translator.options().prefix_size > 0).then(|| {
                let eos = split.eos;
                ids.into_iter()
                    .map(|mut t| {
                        if t.last() == Some(&eos) {
                            t.pop();
                        }
                        t
                    })
                    .collect()
            });
            (Some(refs), prefixes)
        }
    };
    Ok(Loaded { input_name, label: split.split, sources, references, prefixes })
}

/// Translates `loaded` and writes the lines, the summary and the scores.
fn generate(
    args: &GenerateArgs,
    translator: &mut Translator,
    loaded: Loaded,
    out: &mut impl Write,
) -> anyhow::Result<GenerateSummary> {
    let Loaded { input_name, label, sources, references, prefixes } = loaded;
    let kept: Vec<usize> = (0..sources.len()).filter(|&i| sources[i].is_some()).collect();
    let inputs: Vec<&SourceLine> = kept.iter().filter_map(|&i| sources[i].as_ref()).collect();
    let prefixes: Option<Vec<Vec<u32>>> =
        prefixes.map(|p| kept.iter().filter_map(|&i| p.get(i).cloned()).collect());
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
                    write_fairseq(out, translator, i, source, r, hyps)?;
                }
                (OutputFormat::Fairseq, None) => {}
            }
        }
        best_texts.push(best);
    }
    let summary = GenerateSummary {
        sentences: match translator.model().task() {
            Task::Translation => inputs.iter().filter(|s| !s.is_empty()).count(),
            Task::LanguageModeling => inputs.len(),
        },
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
        let line = format!("Generate {label} with beam={beam}: {scores}");
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
