//! `seqforge-train preprocess`: build vocabularies and binarize text, like `fairseq-preprocess`.
//!
//! Given `--trainpref corpus/train --source-lang en --target-lang de`, it reads
//! `corpus/train.en` and `corpus/train.de` (and likewise each `--validpref` / `--testpref`),
//! builds `dict.en.txt` and `dict.de.txt` (or one joined dictionary) from the training files,
//! and writes `{split}.en-de.{lang}.bin/.idx` plus `preprocess.log` into `--destdir`. With the
//! same input and flags the dictionaries and datasets are byte-identical to fairseq 0.12.2's.
//!
//! Differences from fairseq, all on input fairseq mishandles: invalid UTF-8 or a NUL byte is
//! an error naming file and line (fairseq crashes or keeps the NUL), or with `--skip-invalid`
//! the line pair is dropped and counted; source and target files with different line counts
//! are an error (fairseq writes misaligned datasets). `--tokenizer tokenizer.json` applies a
//! HuggingFace tokenizer on the fly: the token strings of each line are the symbols, as if
//! fairseq were given the tokenized text joined by spaces; the file is copied into `--destdir`
//! as `tokenizer.json`, so the data directory carries everything an export ships.
//!
//! Work is split into line-aligned chunks processed by `--workers` threads; results are
//! written in input order, so the output does not depend on the number of workers.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::dictionary::{Dictionary, SymbolCounts};
use super::indexed::{DType, IndexedDatasetBuilder, encode_ids};
use super::text::{self, Invalid, TextFile};
use super::{Error, Result, io_err, write_atomic};

/// The binarized dataset format. Only fairseq's default, `mmap`, is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DatasetImpl {
    /// fairseq's memory-mapped `.bin` + `.idx` format.
    #[default]
    Mmap,
}

/// Build vocabularies and binarize text into fairseq-compatible datasets
/// (the flags of `fairseq-preprocess`).
#[derive(Debug, Clone, clap::Args)]
pub struct PreprocessArgs {
    /// Source language: the file suffix, e.g. `en` reads `{trainpref}.en`.
    #[arg(short = 's', long, value_name = "SRC")]
    pub source_lang: Option<String>,
    /// Target language: the file suffix, e.g. `de` reads `{trainpref}.de`.
    #[arg(short = 't', long, value_name = "TARGET")]
    pub target_lang: Option<String>,
    /// Training files prefix (also builds the dictionaries).
    #[arg(long, value_name = "FP")]
    pub trainpref: Option<String>,
    /// Comma-separated validation file prefixes (written as valid, valid1, …).
    #[arg(long, value_name = "FP")]
    pub validpref: Option<String>,
    /// Comma-separated test file prefixes (written as test, test1, …).
    #[arg(long, value_name = "FP")]
    pub testpref: Option<String>,
    /// Destination folder.
    #[arg(long, value_name = "DIR", default_value = "data-bin")]
    pub destdir: PathBuf,
    /// Map target words appearing fewer than this many times to `<unk>`.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub thresholdtgt: i64,
    /// Map source words appearing fewer than this many times to `<unk>`.
    #[arg(long, value_name = "N", default_value_t = 0, allow_negative_numbers = true)]
    pub thresholdsrc: i64,
    /// Reuse a given target dictionary.
    #[arg(long, value_name = "FP")]
    pub tgtdict: Option<PathBuf>,
    /// Reuse a given source dictionary.
    #[arg(long, value_name = "FP")]
    pub srcdict: Option<PathBuf>,
    /// Number of target words to retain, specials included (-1: all).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub nwordstgt: i64,
    /// Number of source words to retain, specials included (-1: all).
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub nwordssrc: i64,
    /// Generate one dictionary for both languages (uses --thresholdsrc / --nwordssrc).
    #[arg(long)]
    pub joined_dictionary: bool,
    /// Only process the source language.
    #[arg(long)]
    pub only_source: bool,
    /// Pad the dictionary size to a multiple of N.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub padding_factor: usize,
    /// Number of worker threads.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub workers: usize,
    /// Only build the dictionaries, then exit.
    #[arg(long)]
    pub dict_only: bool,
    /// Output dataset format (only mmap).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = DatasetImpl::Mmap)]
    pub dataset_impl: DatasetImpl,
    /// A HuggingFace tokenizer.json to apply to each raw line; its token strings become the
    /// symbols (as if the tokenized text, joined by spaces, had been given).
    #[arg(long, value_name = "PATH")]
    pub tokenizer: Option<PathBuf>,
    /// Skip (and count) lines with invalid UTF-8 or NUL bytes instead of failing; in parallel
    /// data the whole line pair is skipped.
    #[arg(long)]
    pub skip_invalid: bool,
}

impl Default for PreprocessArgs {
    fn default() -> Self {
        Self {
            source_lang: None,
            target_lang: None,
            trainpref: None,
            validpref: None,
            testpref: None,
            destdir: PathBuf::from("data-bin"),
            thresholdtgt: 0,
            thresholdsrc: 0,
            tgtdict: None,
            srcdict: None,
            nwordstgt: -1,
            nwordssrc: -1,
            joined_dictionary: false,
            only_source: false,
            padding_factor: 8,
            workers: 1,
            dict_only: false,
            dataset_impl: DatasetImpl::Mmap,
            tokenizer: None,
            skip_invalid: false,
        }
    }
}

/// What was written for one input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSummary {
    /// Language (`None` for a monolingual corpus without `--source-lang`).
    pub lang: Option<String>,
    /// The input file, as fairseq names it (`{prefix}.{lang}`).
    pub input: String,
    /// The output prefix (`.bin` / `.idx` appended).
    pub output: PathBuf,
    /// Sequences written.
    pub sentences: u64,
    /// Tokens written, `</s>` included.
    pub tokens: u64,
    /// Symbols replaced by `<unk>` (literal `<unk>` not counted).
    pub replaced: u64,
    /// Lines skipped (`--skip-invalid`).
    pub skipped: u64,
}

impl FileSummary {
    /// fairseq's summary: `{n} sents, {t} tokens, {p}% replaced` with Python's `{:.3}` format.
    pub fn fairseq_line(&self) -> String {
        let pct =
            if self.tokens == 0 { 0.0 } else { 100.0 * self.replaced as f64 / self.tokens as f64 };
        format!("{} sents, {} tokens, {}% replaced", self.sentences, self.tokens, py_format_3(pct))
    }
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Written dictionary files.
    pub dictionaries: Vec<PathBuf>,
    /// One entry per binarized file, in the order written.
    pub files: Vec<FileSummary>,
    /// The log lines (also appended to `preprocess.log`).
    pub log: Vec<String>,
}

/// One input file after the validation pass.
struct Scanned {
    text: TextFile,
    /// fairseq's name for it.
    name: String,
    offsets: Vec<usize>,
    /// Global 0-based index of the first line of each chunk.
    first_line: Vec<u64>,
    lines: u64,
}

/// One split (train, valid, valid1, …): its files and the line pairs to skip.
struct Split {
    out_prefix: String,
    src: Scanned,
    tgt: Option<Scanned>,
    /// Sorted global 0-based line indices to skip.
    skip: Arc<Vec<u64>>,
}

/// Symbolizer: whitespace splitting, optionally after a HuggingFace tokenizer.
struct Symbolizer {
    tokenizer: Option<(PathBuf, tokenizers::Tokenizer)>,
}

impl Symbolizer {
    fn new(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else { return Ok(Self { tokenizer: None }) };
        let err = |message: String| Error::Tokenizer { path: path.to_path_buf(), message };
        let mut tok = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        tok.with_truncation(None).map_err(|e| err(e.to_string()))?;
        tok.with_padding(None);
        Ok(Self { tokenizer: Some((path.to_path_buf(), tok)) })
    }

    /// Calls `f` with each symbol of `line`.
    fn for_each_symbol(&self, line: &str, mut f: impl FnMut(&str)) -> Result<()> {
        match &self.tokenizer {
            None => text::symbols(line).for_each(f),
            Some((path, tok)) => {
                let enc = tok
                    .encode(line, false)
                    .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() })?;
                for t in enc.get_tokens() {
                    text::symbols(t).for_each(&mut f);
                }
            }
        }
        Ok(())
    }
}

/// Splits per file into chunks of at most this many bytes (more chunks than workers keeps
/// threads busy; bounded chunks bound memory).
const CHUNK_BYTES: usize = 8 << 20;
/// Smallest chunk worth a thread.
const MIN_CHUNK_BYTES: usize = 64 << 10;

fn chunk_count(len: usize, workers: usize) -> usize {
    let by_size = len.div_ceil(CHUNK_BYTES);
    let wanted = by_size.max(workers * 4);
    wanted.min(len / MIN_CHUNK_BYTES).max(1)
}

/// fairseq's `{prefix}.{lang}` (or `{prefix}` without a language).
fn input_name(prefix: &str, lang: Option<&str>) -> String {
    match lang {
        Some(l) => format!("{prefix}.{l}"),
        None => prefix.to_string(),
    }
}

fn dict_path(destdir: &Path, lang: Option<&str>) -> PathBuf {
    match lang {
        Some(l) => destdir.join(format!("dict.{l}.txt")),
        None => destdir.join("dict.txt"),
    }
}

/// Runs the whole preprocessing; see the module doc.
pub fn run(args: &PreprocessArgs) -> Result<Summary> {
    if args.workers == 0 {
        return Err(Error::Config("--workers must be at least 1".into()));
    }
    let target = !args.only_source;
    let src_lang = args.source_lang.as_deref();
    let tgt_lang = if target {
        Some(args.target_lang.as_deref().ok_or_else(|| {
            Error::Config("--target-lang is required (or use --only-source)".into())
        })?)
    } else {
        // fairseq names monolingual datasets with the (absent) target as "None".
        args.target_lang.as_deref().or(Some("None")).filter(|_| src_lang.is_some())
    };
    if target && src_lang.is_none() {
        return Err(Error::Config("--source-lang is required (or use --only-source)".into()));
    }
    if args.joined_dictionary && args.srcdict.is_some() && args.tgtdict.is_some() {
        return Err(Error::Config(
            "cannot use both --srcdict and --tgtdict with --joined-dictionary".into(),
        ));
    }
    let needs_train_src =
        args.srcdict.is_none() && !(args.joined_dictionary && args.tgtdict.is_some());
    let needs_train_tgt = target && !args.joined_dictionary && args.tgtdict.is_none();
    if (needs_train_src || needs_train_tgt) && args.trainpref.is_none() {
        return Err(Error::Config(
            "--trainpref must be set if --srcdict/--tgtdict are not given".into(),
        ));
    }

    std::fs::create_dir_all(&args.destdir).map_err(io_err(&args.destdir))?;
    let src_dict_path = dict_path(&args.destdir, src_lang);
    let tgt_dict_path = tgt_lang.filter(|_| target).map(|l| dict_path(&args.destdir, Some(l)));
    if args.srcdict.is_none() && src_dict_path.exists() {
        return Err(Error::Config(format!(
            "{} already exists (fairseq refuses to overwrite it too); remove it or pass --srcdict",
            src_dict_path.display()
        )));
    }
    if let Some(p) = &tgt_dict_path
        && args.tgtdict.is_none()
        && p.exists()
    {
        return Err(Error::Config(format!(
            "{} already exists (fairseq refuses to overwrite it too); remove it or pass --tgtdict",
            p.display()
        )));
    }

    let mut log = vec![format!("{args:?}")];
    tracing::info!("{}", log[0]);
    let symbolizer = Symbolizer::new(args.tokenizer.as_deref())?;

    // 1. Validate every input up front: line counts, UTF-8, NUL.
    let mut splits: Vec<Split> = Vec::new();
    let mut prefixes: Vec<(String, String)> = Vec::new();
    if let Some(p) = &args.trainpref {
        prefixes.push((p.clone(), "train".into()));
    }
    for (name, list) in [("valid", &args.validpref), ("test", &args.testpref)] {
        if let Some(list) = list {
            for (k, p) in list.split(',').enumerate() {
                let out = if k > 0 { format!("{name}{k}") } else { name.to_string() };
                prefixes.push((p.to_string(), out));
            }
        }
    }
    let dict_only_train = args.dict_only;
    for (in_prefix, out_prefix) in prefixes {
        if dict_only_train && out_prefix != "train" {
            continue;
        }
        splits.push(scan_split(
            args,
            &in_prefix,
            out_prefix,
            src_lang,
            tgt_lang.filter(|_| target),
        )?);
    }

    // 2. Dictionaries.
    let train = splits.iter().find(|s| s.out_prefix == "train");
    let build = |files: &[&Scanned], threshold: i64, nwords: i64| -> Result<Dictionary> {
        let skip = train.map(|s| s.skip.clone()).unwrap_or_default();
        let mut counts = SymbolCounts::default();
        for f in files {
            count_file(f, &skip, &symbolizer, args.workers, &mut counts)?;
        }
        let mut d = Dictionary::new();
        d.add_counts(&counts);
        d.finalize(threshold, nwords, args.padding_factor);
        Ok(d)
    };
    let train_files = |want_tgt: bool| -> Result<Vec<&Scanned>> {
        let t = train.ok_or_else(|| Error::Config("--trainpref is required".into()))?;
        let mut v = vec![&t.src];
        if want_tgt && let Some(tg) = &t.tgt {
            v.push(tg);
        }
        Ok(v)
    };
    let (src_dict, tgt_dict) = if args.joined_dictionary {
        let d = if let Some(p) = &args.srcdict {
            Dictionary::load(p)?
        } else if let Some(p) = &args.tgtdict {
            Dictionary::load(p)?
        } else {
            build(&train_files(true)?, args.thresholdsrc, args.nwordssrc)?
        };
        (d.clone(), target.then_some(d))
    } else {
        let s = match &args.srcdict {
            Some(p) => Dictionary::load(p)?,
            None => build(&train_files(false)?, args.thresholdsrc, args.nwordssrc)?,
        };
        let t = if target {
            Some(match &args.tgtdict {
                Some(p) => Dictionary::load(p)?,
                None => {
                    let t = train.and_then(|t| t.tgt.as_ref()).ok_or_else(|| {
                        Error::Config(
                            "--trainpref is required to build the target dictionary".into(),
                        )
                    })?;
                    build(&[t], args.thresholdtgt, args.nwordstgt)?
                }
            })
        } else {
            None
        };
        (s, t)
    };
    let mut summary = Summary::default();
    src_dict.save(&src_dict_path)?;
    summary.dictionaries.push(src_dict_path);
    if let (Some(d), Some(p)) = (&tgt_dict, &tgt_dict_path) {
        d.save(p)?;
        summary.dictionaries.push(p.clone());
    }

    // 3. Binarize: every split of the source language, then of the target language.
    if !args.dict_only {
        let mut jobs: Vec<(Option<&str>, &Dictionary, bool)> = vec![(src_lang, &src_dict, false)];
        if let Some(d) = &tgt_dict {
            jobs.push((tgt_lang, d, true));
        }
        for (lang, dict, is_tgt) in jobs {
            for split in &splits {
                let file = if is_tgt { split.tgt.as_ref() } else { Some(&split.src) };
                let Some(file) = file else { continue };
                let line = format!("[{}] Dictionary: {} types", lang.unwrap_or("None"), dict.len());
                tracing::info!("{line}");
                log.push(line);
                let out =
                    dataset_prefix(&args.destdir, &split.out_prefix, src_lang, tgt_lang, lang);
                let fs = binarize_file(file, &split.skip, dict, &symbolizer, &out, args.workers)?;
                let line = format!(
                    "[{}] {}: {} (by <unk>)",
                    lang.unwrap_or("None"),
                    file.name,
                    fs.fairseq_line()
                );
                tracing::info!("{line}");
                log.push(line);
                if fs.skipped > 0 {
                    let line = format!(
                        "[{}] {}: skipped {} invalid lines (--skip-invalid)",
                        lang.unwrap_or("None"),
                        file.name,
                        fs.skipped
                    );
                    tracing::warn!("{line}");
                    log.push(line);
                }
                summary.files.push(FileSummary { lang: lang.map(str::to_string), ..fs });
            }
        }
        let line = format!("Wrote preprocessed data to {}", args.destdir.display());
        tracing::info!("{line}");
        log.push(line);
    }

    // The tokenizer travels with the dictionaries (the exporter ships DATA/tokenizer.json).
    if let Some(tokenizer) = &args.tokenizer {
        let dest = args.destdir.join("tokenizer.json");
        let same = match (tokenizer.canonicalize(), dest.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if !same {
            let bytes = std::fs::read(tokenizer).map_err(io_err(tokenizer))?;
            write_atomic(&dest, &bytes)?;
        }
    }

    // 4. preprocess.log: appended to, like fairseq's logging.FileHandler.
    let log_path = args.destdir.join("preprocess.log");
    let mut content = match std::fs::read(&log_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::Io { path: log_path, source: e }),
    };
    for l in &log {
        content.extend_from_slice(l.as_bytes());
        content.push(b'\n');
    }
    write_atomic(&log_path, &content)?;
    summary.log = log;
    Ok(summary)
}

/// fairseq's `dataset_dest_prefix`: `{destdir}/{split}.{src}-{tgt}.{lang}`, or
/// `{destdir}/{split}` for a monolingual corpus without languages.
fn dataset_prefix(
    destdir: &Path,
    split: &str,
    src: Option<&str>,
    tgt: Option<&str>,
    lang: Option<&str>,
) -> PathBuf {
    match lang {
        Some(l) => {
            destdir.join(format!("{split}.{}-{}.{l}", src.unwrap_or("None"), tgt.unwrap_or("None")))
        }
        None => destdir.join(split),
    }
}

fn scan_split(
    args: &PreprocessArgs,
    in_prefix: &str,
    out_prefix: String,
    src_lang: Option<&str>,
    tgt_lang: Option<&str>,
) -> Result<Split> {
    let (src, src_bad) = scan_file(&input_name(in_prefix, src_lang), args)?;
    let (tgt, tgt_bad) = match tgt_lang {
        Some(l) => {
            let (t, b) = scan_file(&input_name(in_prefix, Some(l)), args)?;
            (Some(t), b)
        }
        None => (None, Vec::new()),
    };
    if let Some(t) = &tgt
        && t.lines != src.lines
    {
        return Err(Error::LineCountMismatch {
            src_path: src.text.path().to_path_buf(),
            src_lines: src.lines,
            tgt_path: t.text.path().to_path_buf(),
            tgt_lines: t.lines,
        });
    }
    let mut skip = src_bad;
    skip.extend(tgt_bad);
    skip.sort_unstable();
    skip.dedup();
    Ok(Split { out_prefix, src, tgt, skip: Arc::new(skip) })
}

/// Maps the file, counts its lines and finds invalid ones (an error unless `--skip-invalid`);
/// returns the file and the global 0-based indices of invalid lines.
fn scan_file(name: &str, args: &PreprocessArgs) -> Result<(Scanned, Vec<u64>)> {
    let path = PathBuf::from(name);
    let text = TextFile::open(&path)?;
    let data = text.bytes();
    let offsets = text::chunk_offsets(data, chunk_count(data.len(), args.workers));
    let results = text::map_chunks(data, &offsets, args.workers, |_, chunk| {
        let mut lines = 0u64;
        let mut bad: Vec<(u64, Invalid)> = Vec::new();
        for line in text::lines(chunk) {
            if let Err(kind) = text::check_line(line) {
                bad.push((lines, kind));
                if !args.skip_invalid {
                    break;
                }
            }
            lines += 1;
        }
        (lines, bad)
    });
    let mut first_line = Vec::with_capacity(results.len());
    let mut total = 0u64;
    let mut invalid = Vec::new();
    for (lines, bad) in results {
        first_line.push(total);
        if let Some(&(local, kind)) = bad.first()
            && !args.skip_invalid
        {
            let line = total + local + 1;
            return Err(match kind {
                Invalid::Utf8 => Error::InvalidUtf8 { path, line },
                Invalid::Nul => Error::NulByte { path, line },
            });
        }
        invalid.extend(bad.iter().map(|(l, _)| total + l));
        total += lines;
    }
    Ok((Scanned { text, name: name.to_string(), offsets, first_line, lines: total }, invalid))
}

/// Calls `f(line)` for every line of chunk `k` of `file` that is not in `skip`.
fn for_each_line(
    file: &Scanned,
    k: usize,
    skip: &[u64],
    mut f: impl FnMut(&str) -> Result<()>,
) -> Result<u64> {
    let chunk = &file.text.bytes()[file.offsets[k]..file.offsets[k + 1]];
    let first = file.first_line[k];
    let mut s = skip.partition_point(|&x| x < first);
    let mut skipped = 0;
    for (i, raw) in text::lines(chunk).enumerate() {
        let g = first + i as u64;
        if s < skip.len() && skip[s] == g {
            s += 1;
            skipped += 1;
            continue;
        }
        let line = text::check_line(raw).map_err(|kind| {
            let (path, line) = (file.text.path().to_path_buf(), g + 1);
            match kind {
                Invalid::Utf8 => Error::InvalidUtf8 { path, line },
                Invalid::Nul => Error::NulByte { path, line },
            }
        })?;
        f(line)?;
    }
    Ok(skipped)
}

fn progress_bar(total: u64, what: &str) -> indicatif::ProgressBar {
    if total < (32 << 20) {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(what.to_string());
    pb
}

/// Adds the symbol counts of `file` (one `</s>` per line, like fairseq) to `counts`.
fn count_file(
    file: &Scanned,
    skip: &[u64],
    symbolizer: &Symbolizer,
    workers: usize,
    counts: &mut SymbolCounts,
) -> Result<()> {
    let n = file.offsets.len() - 1;
    let pb = progress_bar(file.text.bytes().len() as u64, &format!("counting {}", file.name));
    ordered_map_result(
        n,
        workers,
        |k| {
            let mut local = SymbolCounts::default();
            let mut eos = 0u64;
            for_each_line(file, k, skip, |line| {
                eos += 1;
                symbolizer.for_each_symbol(line, |sym| match local.get_mut(sym) {
                    Some(c) => *c += 1,
                    None => {
                        local.insert(sym.to_string(), 1);
                    }
                })
            })?;
            if eos > 0 {
                *local.entry("</s>".to_string()).or_insert(0) += eos;
            }
            Ok(local)
        },
        |k, local: SymbolCounts| {
            pb.inc((file.offsets[k + 1] - file.offsets[k]) as u64);
            if counts.is_empty() {
                *counts = local;
            } else {
                for (w, c) in local {
                    *counts.entry(w).or_insert(0) += c;
                }
            }
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    Ok(())
}

/// One binarized chunk.
struct Chunk {
    bytes: Vec<u8>,
    sizes: Vec<u32>,
    tokens: u64,
    replaced: u64,
    skipped: u64,
}

fn binarize_file(
    file: &Scanned,
    skip: &[u64],
    dict: &Dictionary,
    symbolizer: &Symbolizer,
    out: &Path,
    workers: usize,
) -> Result<FileSummary> {
    let dtype = DType::best_fitting(dict.len());
    let mut builder = IndexedDatasetBuilder::create(out, dtype)?;
    let n = file.offsets.len() - 1;
    let pb = progress_bar(file.text.bytes().len() as u64, &format!("binarizing {}", file.name));
    let mut fs = FileSummary {
        lang: None,
        input: file.name.clone(),
        output: out.to_path_buf(),
        sentences: 0,
        tokens: 0,
        replaced: 0,
        skipped: 0,
    };
    ordered_map_result(
        n,
        workers,
        |k| {
            let mut c =
                Chunk { bytes: Vec::new(), sizes: Vec::new(), tokens: 0, replaced: 0, skipped: 0 };
            let mut ids: Vec<u32> = Vec::new();
            let mut syms: Vec<String> = Vec::new();
            c.skipped = for_each_line(file, k, skip, |line| {
                ids.clear();
                if symbolizer.tokenizer.is_some() {
                    syms.clear();
                    symbolizer.for_each_symbol(line, |s| syms.push(s.to_string()))?;
                    c.replaced +=
                        dict.encode_symbols_into(syms.iter().map(String::as_str), &mut ids);
                } else {
                    c.replaced += dict.encode_symbols_into(text::symbols(line), &mut ids);
                }
                encode_ids(dtype, &ids, &mut c.bytes).map_err(|id| Error::IdOutOfRange {
                    path: out.to_path_buf(),
                    id: id.into(),
                    dtype,
                })?;
                c.sizes.push(ids.len() as u32);
                c.tokens += ids.len() as u64;
                Ok(())
            })?;
            Ok(c)
        },
        |k, c: Chunk| {
            pb.inc((file.offsets[k + 1] - file.offsets[k]) as u64);
            builder.add_raw_items(&c.bytes, &c.sizes)?;
            fs.sentences += c.sizes.len() as u64;
            fs.tokens += c.tokens;
            fs.replaced += c.replaced;
            fs.skipped += c.skipped;
            Ok(())
        },
    )?;
    pb.finish_and_clear();
    builder.finalize()?;
    Ok(fs)
}

/// [`text::ordered_map`] for fallible work: the first error (in chunk order) wins.
fn ordered_map_result<R: Send>(
    n: usize,
    workers: usize,
    work: impl Fn(usize) -> Result<R> + Sync,
    mut sink: impl FnMut(usize, R) -> Result<()>,
) -> Result<()> {
    text::ordered_map(n, workers, workers * 2, work, |k, r: Result<R>| sink(k, r?))
}

/// Python's `format(x, ".3")`: 3 significant digits, `g`-style, but fixed notation keeps at
/// least one digit after the point (`0.0`, `21.1`, `2.94`, `1e+02`, `1.5e-05`).
pub fn py_format_3(x: f64) -> String {
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let sci = format!("{x:.2e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..2).contains(&exp) {
        let mant = if mant.contains('.') {
            mant.trim_end_matches('0').trim_end_matches('.')
        } else {
            mant
        };
        let mut s = String::new();
        let _ = write!(s, "{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
        return s;
    }
    let decimals = (2 - exp) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        let t = s.trim_end_matches('0');
        if t.ends_with('.') { format!("{t}0") } else { t.to_string() }
    } else {
        format!("{s}.0")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::data::IndexedDataset;

    #[test]
    fn python_float_format() {
        for (x, want) in [
            (0.0, "0.0"),
            (2.9411764705882355, "2.94"),
            (21.14, "21.1"),
            (100.0, "1e+02"),
            (0.012345, "0.0123"),
            (1.5e-5, "1.5e-05"),
            (99.96, "1e+02"),
            (9.999, "10.0"),
            (5.0, "5.0"),
            (44.23, "44.2"),
            (10.0, "10.0"),
            (99.0, "99.0"),
            (123.4, "1.23e+02"),
            (0.0001234, "0.000123"),
            (1.234e-05, "1.23e-05"),
            (1.0, "1.0"),
        ] {
            assert_eq!(py_format_3(x), want, "{x}");
        }
    }

    fn args(dir: &Path, dest: &str) -> PreprocessArgs {
        PreprocessArgs {
            source_lang: Some("en".into()),
            target_lang: Some("de".into()),
            trainpref: Some(dir.join("train").to_string_lossy().into_owned()),
            destdir: dir.join(dest),
            ..Default::default()
        }
    }

    fn read_all(prefix: &Path) -> Vec<Vec<u32>> {
        IndexedDataset::open(prefix).unwrap().iter().collect::<Result<_>>().unwrap()
    }

    #[test]
    fn small_parallel_corpus() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.en"), "a b a\n\nc a\n").unwrap();
        std::fs::write(dir.path().join("train.de"), "x y\r\nz\r\n\r\n").unwrap();
        let s = run(&args(dir.path(), "out")).unwrap();
        let out = dir.path().join("out");
        assert_eq!(
            std::fs::read_to_string(out.join("dict.en.txt")).unwrap(),
            "a 3\nb 1\nc 1\nmadeupword0000 0\n"
        );
        assert_eq!(
            read_all(&out.join("train.en-de.en")),
            vec![vec![4, 5, 4, 2], vec![2], vec![6, 4, 2]]
        );
        assert_eq!(read_all(&out.join("train.en-de.de")), vec![vec![4, 5, 2], vec![6, 2], vec![2]]);
        assert_eq!(s.files[0].fairseq_line(), "3 sents, 8 tokens, 0.0% replaced");
        let log = std::fs::read_to_string(out.join("preprocess.log")).unwrap();
        assert!(log.contains("[en] Dictionary: 8 types\n"), "{log}");
        assert!(log.contains("train.en: 3 sents, 8 tokens, 0.0% replaced (by <unk>)\n"), "{log}");
        // A second run refuses to overwrite the dictionaries, like fairseq.
        let e = run(&args(dir.path(), "out")).unwrap_err().to_string();
        assert!(e.contains("dict.en.txt already exists"), "{e}");
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn line_count_mismatch_names_both_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.en"), "a\nb\nc\n").unwrap();
        std::fs::write(dir.path().join("train.de"), "a\nb\n").unwrap();
        let e = run(&args(dir.path(), "out")).unwrap_err();
        assert!(matches!(&e, Error::LineCountMismatch { src_lines: 3, tgt_lines: 2, .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("train.en has 3 lines") && msg.contains("train.de has 2"), "{msg}");
    }

    #[test]
    fn invalid_lines_error_or_skip_pairs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train.en"), b"a\nb \xff\nc\nd\n").unwrap();
        std::fs::write(dir.path().join("train.de"), b"w\nx\ny\0\nz\n").unwrap();
        let e = run(&args(dir.path(), "o1")).unwrap_err();
        assert!(matches!(&e, Error::InvalidUtf8 { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("train.en:2:"), "{e}");
        std::fs::write(dir.path().join("train.en"), b"a\nb\nc\nd\n").unwrap();
        let e = run(&args(dir.path(), "o2")).unwrap_err();
        assert!(matches!(&e, Error::NulByte { line: 3, .. }), "{e}");
        assert!(e.to_string().contains("train.de:3:"), "{e}");

        std::fs::write(dir.path().join("train.en"), b"a\nb \xff\nc\nd\n").unwrap();
        let mut a = args(dir.path(), "o3");
        a.skip_invalid = true;
        let s = run(&a).unwrap();
        let out = dir.path().join("o3");
        let en = Dictionary::load(out.join("dict.en.txt")).unwrap();
        let de = Dictionary::load(out.join("dict.de.txt")).unwrap();
        let en_items: Vec<String> =
            read_all(&out.join("train.en-de.en")).iter().map(|i| en.string(i)).collect();
        let de_items: Vec<String> =
            read_all(&out.join("train.en-de.de")).iter().map(|i| de.string(i)).collect();
        assert_eq!(en_items, ["a", "d"]);
        assert_eq!(de_items, ["w", "z"]);
        assert_eq!(s.files[0].skipped, 2);
        assert!(s.log.iter().any(|l| l.contains("skipped 2 invalid lines")), "{:?}", s.log);
    }

    #[test]
    fn output_does_not_depend_on_workers() {
        let dir = tempfile::tempdir().unwrap();
        let mut en = String::new();
        let mut de = String::new();
        for i in 0..40_000u32 {
            let _ = writeln!(
                en,
                "w{} w{} common {}",
                i % 97,
                i % 1013,
                if i % 7 == 0 { "" } else { "x" }
            );
            let _ = writeln!(de, "v{} v{}", i % 89, (i * 7) % 5003);
        }
        std::fs::write(dir.path().join("train.en"), en).unwrap();
        std::fs::write(dir.path().join("train.de"), de).unwrap();
        let mut outputs = Vec::new();
        for workers in [1, 3, 8] {
            let mut a = args(dir.path(), &format!("w{workers}"));
            a.workers = workers;
            a.nwordstgt = 3000;
            let dest = a.destdir.clone();
            run(&a).unwrap();
            let files: Vec<Vec<u8>> = [
                "dict.en.txt",
                "dict.de.txt",
                "train.en-de.en.bin",
                "train.en-de.en.idx",
                "train.en-de.de.bin",
                "train.en-de.de.idx",
            ]
            .iter()
            .map(|f| std::fs::read(dest.join(f)).unwrap())
            .collect();
            outputs.push(files);
        }
        assert!(
            chunk_count(std::fs::metadata(dir.path().join("train.en")).unwrap().len() as usize, 8)
                > 1
        );
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);
    }

    #[test]
    fn only_source_and_srcdict() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("train"), "a b\nb\n").unwrap();
        let a = PreprocessArgs {
            only_source: true,
            trainpref: Some(dir.path().join("train").to_string_lossy().into_owned()),
            destdir: dir.path().join("lm"),
            ..Default::default()
        };
        run(&a).unwrap();
        assert!(dir.path().join("lm/dict.txt").exists());
        assert_eq!(read_all(&dir.path().join("lm/train")), vec![vec![5, 4, 2], vec![4, 2]]);

        std::fs::write(dir.path().join("valid.en"), "b zzz\n").unwrap();
        let a = PreprocessArgs {
            source_lang: Some("en".into()),
            only_source: true,
            srcdict: Some(dir.path().join("lm/dict.txt")),
            validpref: Some(dir.path().join("valid").to_string_lossy().into_owned()),
            destdir: dir.path().join("lm2"),
            ..Default::default()
        };
        let s = run(&a).unwrap();
        assert_eq!(read_all(&dir.path().join("lm2/valid.en-None.en")), vec![vec![4, 3, 2]]);
        assert_eq!(s.files[0].fairseq_line(), "1 sents, 3 tokens, 33.3% replaced");
    }

    #[test]
    fn tokenizer_symbols() {
        let dir = tempfile::tempdir().unwrap();
        // A WordLevel tokenizer that splits on whitespace and punctuation.
        let tok = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
          "normalizer": {"type": "Lowercase"},
          "pre_tokenizer": {"type": "BertPreTokenizer"},
          "post_processor": null, "decoder": null,
          "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2, ",": 3}, "unk_token": "[UNK]"}
        }"#;
        std::fs::write(dir.path().join("tok.json"), tok).unwrap();
        std::fs::write(dir.path().join("train.en"), "Hello, world\nHELLO there\n").unwrap();
        std::fs::write(dir.path().join("train.de"), "x\ny\n").unwrap();
        let mut a = args(dir.path(), "out");
        a.tokenizer = Some(dir.path().join("tok.json"));
        run(&a).unwrap();
        let d = std::fs::read_to_string(dir.path().join("out/dict.en.txt")).unwrap();
        assert_eq!(d.lines().take(4).collect::<Vec<_>>(), ["hello 2", ", 1", "[UNK] 1", "world 1"]);
        let copied = std::fs::read_to_string(dir.path().join("out/tokenizer.json")).unwrap();
        assert_eq!(copied, tok, "the tokenizer is copied into --destdir");
        // A --tokenizer that already is DESTDIR/tokenizer.json stays intact.
        std::fs::create_dir_all(dir.path().join("out3")).unwrap();
        std::fs::write(dir.path().join("out3/tokenizer.json"), tok).unwrap();
        let mut again = args(dir.path(), "out3");
        again.tokenizer = Some(dir.path().join("out3/tokenizer.json"));
        run(&again).unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("out3/tokenizer.json")).unwrap(), tok);
        let e = {
            let mut a = args(dir.path(), "out2");
            a.tokenizer = Some(dir.path().join("missing.json"));
            run(&a).unwrap_err().to_string()
        };
        assert!(e.contains("missing.json"), "{e}");
    }
}
