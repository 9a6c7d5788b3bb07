//! A monolingual English corpus for language modeling, from public-domain SWORD modules in
//! Debian packages: two Bibles and three commentaries on them.
//!
//! | package               | module         | `ModDrv` | versification | what                      |
//! |-----------------------|----------------|----------|---------------|---------------------------|
//! | `sword-text-kjv`      | `engKJV2006eb` | zText    | KJV           | King James Version        |
//! | `sword-text-web`      | `engWEB2015eb` | zText    | NRSVA         | World English Bible (+DC) |
//! | `sword-comm-mhcc`     | `MHCC`         | zCom4¹   | KJV           | Matthew Henry Concise     |
//! | `sword-comm-scofield` | `Scofield`     | zCom     | KJV           | Scofield Reference Notes  |
//! | `sword-comm-tdavid`   | `TDavid`       | zCom4    | KJV           | Spurgeon, Treasury of David (Psalms only) |
//!
//! ¹ declared; its verse index really has zCom's 10-byte records (see [`super::sword`]).
//! All five declare `SourceType=OSIS` (checked: the recipe refuses any other markup rather
//! than guess), so [`super::osis`] in paragraph mode cleans them all.
//!
//! # Recipe
//!
//! 1. **Read** each module entry by entry in its versification ([`Versification::by_name`]
//!    of its `Versification=`). Entries linked to the previous one (a commentary's note on a
//!    verse range, stored once) are read once. Module and testament heading entries are
//!    skipped; a book heading entry (book introductions, Spurgeon's preface) belongs to the
//!    book's first chapter, a chapter heading entry to its chapter.
//! 2. **Clean** each entry's OSIS with [`CleanOptions::paragraphs`]: notes and titles dropped,
//!    paragraphs (`<div type="x-p">`, `<lb type="x-p"/>`, `<lg>`, list items, table rows,
//!    the KJV's `¶`, …) kept as line breaks. The entries of a chapter are joined and split
//!    into paragraph lines; whitespace is collapsed; lines that are only a verse label
//!    (`Verses 1-2`, MHCC's section heads) are dropped.
//! 3. **Documents**: one document per chapter and source (its paragraph lines, in order).
//! 4. **Split by book** (deterministic, leak-free by construction): every document of a book
//!    in [`VALID_BOOKS`] goes to valid, of a book in [`TEST_BOOKS`] to test, everything else
//!    to train — in every source, so neither the Bible text of a held-out book nor any
//!    commentary on it is in train. (Commentaries on train books do quote verses of other
//!    books now and then; the report counts held-out lines that occur verbatim in train.)
//!    The Psalms — and so all of the Treasury of David, the biggest source — are in train.
//! 5. **Write** `train.txt`, `valid.txt`, `test.txt`: one paragraph per line, an empty line
//!    between documents (fairseq's `--sample-break-mode complete_doc` / `eos` read this
//!    layout), sources in the table's order and chapters in Bible order; each file goes to a
//!    temporary name first and all three are renamed into place at the end.
//!
//! Binarize for fairseq's `language_modeling` task (with `--only-source` and no
//! `--source-lang`, the prefixes are file names and the outputs are `dict.txt` and
//! `{train,valid,test}.{bin,idx}`):
//!
//! ```sh
//! seqforge-train corpus english --out data/english --cache-dir .deps/sword
//! seqforge-train preprocess --only-source --workers 2 \
//!     --trainpref data/english/train.txt --validpref data/english/valid.txt \
//!     --testpref data/english/test.txt --destdir data/english-bin
//! ```
//!
//! # Numbers
//!
//! With the Debian bookworm packages (sword-text-kjv 14.3-1, sword-text-web 426.0-1,
//! sword-comm-mhcc 2.0-1, sword-comm-scofield 2.1-1, sword-comm-tdavid 2.1-1), words counted
//! as whitespace-separated tokens:
//!
//! | source       | train docs / lines / words | valid docs / lines / words | test docs / lines / words |
//! |--------------|----------------------------|----------------------------|---------------------------|
//! | engKJV2006eb | 1,084 / 4,683 / 724,704    | 53 / 199 / 31,603          | 52 / 239 / 34,406         |
//! | engWEB2015eb | 1,284 / 10,444 / 848,238   | 53 / 336 / 30,199          | 52 / 447 / 32,570         |
//! | MHCC         | 1,084 / 6,834 / 639,220    | 53 / 335 / 33,608          | 52 / 330 / 29,843         |
//! | Scofield     | 865 / 5,969 / 117,086      | 36 / 238 / 4,168           | 47 / 290 / 5,009          |
//! | TDavid       | 150 / 27,938 / 2,142,604   | 0                          | 0                         |
//! | **total**    | 4,467 / 55,868 / 4,471,852 | 195 / 1,108 / 99,578       | 203 / 1,306 / 101,828     |
//!
//! Word shares: train 95.7 %, valid 2.1 %, test 2.2 %. Files (documents separated by empty
//! lines): `train.txt` 60,334 lines / 24.4 MB, `valid.txt` 1,302 / 0.54 MB, `test.txt` 1,508 /
//! 0.55 MB. Other counts: MHCC 24,671 linked entries read once and 3,362 verse labels dropped,
//! TDavid 758 labels; WEB's Hosea heading (Greek Daniel) dropped. Held-out lines of 40+
//! characters that also occur in train: 10, all Scofield cross-reference boilerplate
//! (`(See Scofield "Isaiah 59:20").`). About 13 s (debug build, one core); `preprocess` as
//! above: about 6 s, a 133,452-word `dict.txt`.

use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::fetch::{Fetcher, SwordPackage, default_cache_dir};
use super::osis::{self, CleanOptions};
use super::sword::{ZVerseModule, find_conf};
use super::versification::{EntryKind, Versification};
use super::{Error, Result};

/// The sources, in output order.
pub const SOURCES: [SwordPackage; 5] = [
    SwordPackage { package: "sword-text-kjv", module: "engKJV2006eb" },
    SwordPackage { package: "sword-text-web", module: "engWEB2015eb" },
    SwordPackage { package: "sword-comm-mhcc", module: "MHCC" },
    SwordPackage { package: "sword-comm-scofield", module: "Scofield" },
    SwordPackage { package: "sword-comm-tdavid", module: "TDavid" },
];

/// Books (OSIS ids) whose documents, in every source, form the validation set.
pub const VALID_BOOKS: &[&str] = &["Josh", "Hos", "Gal", "Phil", "Jas"];
/// Books (OSIS ids) whose documents, in every source, form the test set.
pub const TEST_BOOKS: &[&str] = &["Judg", "Ruth", "Amos", "Mic", "Eph", "1Pet"];

/// Output file names.
pub const FILES: [(Part, &str); 3] =
    [(Part::Train, "train.txt"), (Part::Valid, "valid.txt"), (Part::Test, "test.txt")];

/// One of the three splits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Part {
    /// Training data.
    Train,
    /// Validation data.
    Valid,
    /// Test data.
    Test,
}

impl Part {
    /// The split of a book (see the module docs, step 4).
    pub fn of_book(osis: &str) -> Part {
        if VALID_BOOKS.contains(&osis) {
            Part::Valid
        } else if TEST_BOOKS.contains(&osis) {
            Part::Test
        } else {
            Part::Train
        }
    }

    fn index(self) -> usize {
        match self {
            Part::Train => 0,
            Part::Valid => 1,
            Part::Test => 2,
        }
    }
}

/// Arguments of `seqforge-train corpus english`.
#[derive(Debug, Clone, clap::Args)]
pub struct EnglishArgs {
    /// Output folder; receives train.txt, valid.txt and test.txt (one paragraph per line, an
    /// empty line between documents).
    #[arg(long)]
    pub out: PathBuf,
    /// Use SWORD modules already on disk: a folder holding mods.d/*.conf and modules/ with
    /// all five modules (no download).
    #[arg(long)]
    pub sword_dir: Option<PathBuf>,
    /// Where to download and unpack the Debian packages (`apt-get download` + `dpkg-deb -x`,
    /// no system install); `.deps/sword` after `cargo xtask setup` has them all. Default:
    /// $XDG_CACHE_HOME/seqforge/sword, else ~/.cache/seqforge/sword.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

impl EnglishArgs {
    /// Arguments with the defaults and this output folder.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self { out: out.into(), sword_dir: None, cache_dir: None }
    }
}

/// One chapter of one source: its paragraph lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Index into [`SOURCES`].
    pub source: usize,
    /// OSIS book id, e.g. `Gen`.
    pub book: &'static str,
    /// Chapter number.
    pub chapter: u16,
    /// Paragraphs, one line each (non-empty, single-spaced).
    pub lines: Vec<String>,
}

impl Document {
    /// Number of whitespace-separated words.
    pub fn words(&self) -> usize {
        self.lines.iter().map(|l| l.split_whitespace().count()).sum()
    }
}

/// Counts of one source in one split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Documents (chapters).
    pub documents: usize,
    /// Paragraph lines.
    pub lines: usize,
    /// Words.
    pub words: usize,
}

impl Counts {
    fn add(&mut self, doc: &Document) {
        self.documents += 1;
        self.lines += doc.lines.len();
        self.words += doc.words();
    }

    fn sum<'a>(it: impl Iterator<Item = &'a Counts>) -> Counts {
        it.fold(Counts::default(), |a, c| Counts {
            documents: a.documents + c.documents,
            lines: a.lines + c.lines,
            words: a.words + c.words,
        })
    }
}

/// What one module gave.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SourceReport {
    /// Module name.
    pub module: String,
    /// Where it was read from (library root).
    pub root: PathBuf,
    /// Versification used.
    pub versification: String,
    /// Non-empty entries read.
    pub entries: usize,
    /// Entries skipped as links to the previous entry.
    pub linked: usize,
    /// Lines dropped as bare verse labels.
    pub labels_dropped: usize,
    /// Heading entries dropped because they hold another book's text (see
    /// [`foreign_osis_id`]).
    pub foreign_headings: Vec<String>,
    /// `(declared, used)` verse-record sizes when the files contradict `ModDrv=`.
    pub record_size_mismatch: Option<(usize, usize)>,
    /// Counts per split: train, valid, test.
    pub splits: [Counts; 3],
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnglishReport {
    /// Output folder.
    pub out: PathBuf,
    /// Whether a package was downloaded in this run.
    pub downloaded: bool,
    /// Per source.
    pub sources: Vec<SourceReport>,
    /// Held-out lines of 40+ characters that also occur verbatim in train.
    pub heldout_lines_in_train: usize,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

impl EnglishReport {
    /// Totals per split: train, valid, test.
    pub fn totals(&self) -> [Counts; 3] {
        [0, 1, 2].map(|i| Counts::sum(self.sources.iter().map(|s| &s.splits[i])))
    }
}

impl fmt::Display for EnglishReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "English LM corpus written to {}", self.out.display())?;
        writeln!(
            f,
            "  split by book: valid {} / test {} (every source), the rest train",
            VALID_BOOKS.join(" "),
            TEST_BOOKS.join(" ")
        )?;
        let totals = self.totals();
        let all_words: usize = totals.iter().map(|c| c.words).sum::<usize>().max(1);
        writeln!(
            f,
            "  {:<14} {:>22} {:>22} {:>22}",
            "source", "train docs/lines/words", "valid docs/lines/words", "test docs/lines/words"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, c: &[Counts; 3]| {
            write!(f, "  {name:<14}")?;
            for x in c {
                write!(f, " {:>22}", format!("{}/{}/{}", x.documents, x.lines, x.words))?;
            }
            writeln!(f)
        };
        for s in &self.sources {
            row(f, &s.module, &s.splits)?;
        }
        row(f, "total", &totals)?;
        writeln!(
            f,
            "  word shares:   train {:.1}%, valid {:.1}%, test {:.1}%",
            100.0 * totals[0].words as f64 / all_words as f64,
            100.0 * totals[1].words as f64 / all_words as f64,
            100.0 * totals[2].words as f64 / all_words as f64
        )?;
        for s in &self.sources {
            write!(
                f,
                "  {:<14} {} ({}), {} entries, {} linked, {} verse labels dropped",
                s.module,
                s.root.display(),
                s.versification,
                s.entries,
                s.linked,
                s.labels_dropped
            )?;
            if !s.foreign_headings.is_empty() {
                write!(f, ", dropped [{}]", s.foreign_headings.join("; "))?;
            }
            if let Some((declared, used)) = s.record_size_mismatch {
                write!(f, ", ModDrv says {declared}-byte verse records, files have {used}")?;
            }
            writeln!(f)?;
        }
        writeln!(f, "  held-out lines (40+ chars) also in train: {}", self.heldout_lines_in_train)?;
        write!(f, "  elapsed: {:.2} s", self.elapsed_secs)
    }
}

/// Builds the corpus (see the module docs).
pub fn run(args: &EnglishArgs) -> Result<EnglishReport> {
    let start = Instant::now();
    let mut report = EnglishReport { out: args.out.clone(), ..Default::default() };

    // Locate the modules.
    let mut confs = Vec::with_capacity(SOURCES.len());
    match &args.sword_dir {
        Some(dir) => {
            for s in SOURCES {
                confs.push((dir.clone(), find_conf(dir, s.module)?));
            }
        }
        None => {
            let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let mut fetcher = Fetcher::new(cache);
            for s in SOURCES {
                let (root, downloaded) = fetcher.ensure(s)?;
                report.downloaded |= downloaded;
                confs.push((root.clone(), find_conf(&root, s.module)?));
            }
        }
    }
    let mut modules = Vec::with_capacity(confs.len());
    for (root, conf) in &confs {
        let module = ZVerseModule::open(conf)?;
        let vers = versification_of(&module)?;
        module.check_layout(&vers)?;
        modules.push((root.clone(), module, vers));
    }

    // Read, clean, split.
    let total: usize = modules.iter().map(|(_, m, _)| m.len()).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} entries")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut parts: [Vec<Document>; 3] = Default::default();
    for (source, (root, module, vers)) in modules.iter_mut().enumerate() {
        bar.set_message(module.name().to_string());
        let (docs, mut sr) = read_documents(source, module, vers, &bar)?;
        sr.root = root.clone();
        for doc in docs {
            let part = Part::of_book(doc.book).index();
            sr.splits[part].add(&doc);
            parts[part].push(doc);
        }
        tracing::info!(module = %sr.module, entries = sr.entries, "read module");
        report.sources.push(sr);
    }
    bar.finish_and_clear();
    report.heldout_lines_in_train = heldout_lines_in_train(&parts);
    write_parts(&args.out, &parts)?;
    report.elapsed_secs = start.elapsed().as_secs_f64();
    Ok(report)
}

/// The versification a module declares, if this reader has it.
pub fn versification_of(module: &ZVerseModule) -> Result<Versification> {
    let name = module.conf().versification();
    Versification::by_name(name).ok_or_else(|| Error::Layout {
        module: module.name().to_string(),
        message: format!("Versification={name} is not supported (KJV and NRSVA are)"),
    })
}

/// Reads a module into one document per chapter (steps 1–3 of the module docs).
pub fn read_documents(
    source: usize,
    module: &mut ZVerseModule,
    vers: &Versification,
    bar: &ProgressBar,
) -> Result<(Vec<Document>, SourceReport)> {
    let source_type = module.conf().source_type().to_string();
    if !source_type.eq_ignore_ascii_case("OSIS") {
        return Err(Error::Layout {
            module: module.name().to_string(),
            message: format!("SourceType={source_type}; this recipe cleans OSIS only"),
        });
    }
    let mut report = SourceReport {
        module: module.name().to_string(),
        versification: vers.name().to_string(),
        record_size_mismatch: module.record_size_mismatch(),
        ..Default::default()
    };
    let options = CleanOptions::paragraphs();
    let mut docs = Vec::new();
    let mut text = String::new();
    let mut current: Option<(u8, u16)> = None;
    let flush = |text: &mut String, at: Option<(u8, u16)>, docs: &mut Vec<Document>| -> usize {
        let (lines, dropped) = paragraph_lines(text);
        text.clear();
        if let Some((book, chapter)) = at
            && !lines.is_empty()
        {
            docs.push(Document { source, book: vers.book_osis(book), chapter, lines });
        }
        dropped
    };
    for (i, kind) in vers.entries().iter().enumerate() {
        if i % 1024 == 0 {
            bar.inc(1024.min(vers.len() - i) as u64);
        }
        let at = match *kind {
            EntryKind::ModuleHeading(_) | EntryKind::TestamentHeading(_) => None,
            // A book heading belongs to the book's first chapter.
            EntryKind::BookHeading(b) => Some((b, 1)),
            EntryKind::ChapterHeading(b, c) => Some((b, c)),
            EntryKind::Verse(r) => Some((r.book, r.chapter)),
        };
        if at != current {
            report.labels_dropped += flush(&mut text, current, &mut docs);
            current = at;
        }
        if module.entry(i)?.size == 0 {
            continue;
        }
        if module.is_linked(i) {
            report.linked += 1;
            continue;
        }
        report.entries += 1;
        let Some((book, _)) = at else { continue };
        let raw = module.verse(i)?;
        if kind.is_heading()
            && let Some(id) = foreign_osis_id(&raw, vers.book_osis(book))
        {
            tracing::warn!(
                module = %report.module,
                entry = i,
                id,
                "heading entry holds another book's text: dropped"
            );
            report.foreign_headings.push(format!("{} heading: {id}", vers.book_osis(book)));
            continue;
        }
        text.push_str(&osis::clean_with(&raw, options));
        text.push(' ');
    }
    report.labels_dropped += flush(&mut text, current, &mut docs);
    Ok((docs, report))
}

/// The first `osisID="…"` in an entry that names another book than `book`, if any.
///
/// `osis2mod` puts text it cannot place in the versification into the next entry: in
/// `engWEB2015eb` the Greek Daniel (`DanGr.1`–`DanGr.6`, not an NRSVA book) sits in Hosea's
/// book heading entry. Such an entry is dropped rather than filed under the wrong book.
pub fn foreign_osis_id(raw: &str, book: &str) -> Option<String> {
    raw.split("osisID=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .find(|id| id.split_whitespace().any(|one| one.split('.').next() != Some(book)))
        .map(str::to_string)
}

/// Splits cleaned paragraph-mode text into single-spaced non-empty lines, dropping bare
/// verse labels; returns the lines and how many labels were dropped.
pub fn paragraph_lines(text: &str) -> (Vec<String>, usize) {
    let mut dropped = 0;
    let lines = text
        .split('\n')
        .map(|l| strip_stray_tags(l).split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let label = is_verse_label(l);
            dropped += usize::from(label);
            !label
        })
        .collect();
    (lines, dropped)
}

/// Removes HTML tags that survive as text (entity-escaped in the module, e.g. Scofield's
/// `&lt;/ol&gt;` after Rev 3 Jn and Rev 19): `<` `/`? 1–10 ASCII letters or digits `>`.
pub fn strip_stray_tags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let tail = &rest[lt + 1..];
        let name = tail.strip_prefix('/').unwrap_or(tail);
        let len = name.bytes().take_while(u8::is_ascii_alphanumeric).count();
        if (1..=10).contains(&len) && name.as_bytes().get(len) == Some(&b'>') {
            out.push(' ');
            rest = &name[len + 1..];
        } else {
            out.push('<');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Whether a line is only a verse label: `Verse 1.`, `Verses 3-5`, `VERSES 1, 2.`.
pub fn is_verse_label(line: &str) -> bool {
    let lower = line.to_ascii_lowercase();
    let Some(rest) = lower.strip_prefix("verses").or_else(|| lower.strip_prefix("verse")) else {
        return false;
    };
    let rest = rest.trim();
    rest.chars().next().is_some_and(|c| c.is_ascii_digit())
        && rest.chars().all(|c| c.is_ascii_digit() || " ,.-–—:;".contains(c))
}

/// Held-out lines of 40 or more characters that also occur in train.
pub fn heldout_lines_in_train(parts: &[Vec<Document>; 3]) -> usize {
    let train: HashSet<&str> = parts[0].iter().flat_map(|d| &d.lines).map(String::as_str).collect();
    parts[1..]
        .iter()
        .flatten()
        .flat_map(|d| &d.lines)
        .filter(|l| l.len() >= 40 && train.contains(l.as_str()))
        .count()
}

/// Removes temporary files unless committed.
struct TempFiles {
    files: Vec<(PathBuf, PathBuf)>,
    committed: bool,
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        if !self.committed {
            for (tmp, _) in &self.files {
                let _ = fs::remove_file(tmp);
            }
        }
    }
}

/// Writes one split: documents' lines, an empty line between documents.
fn write_documents(path: &Path, docs: &[Document]) -> Result<()> {
    let io = |e| Error::io(path, e);
    let mut w = BufWriter::new(File::create(path).map_err(io)?);
    for (k, doc) in docs.iter().enumerate() {
        if k > 0 {
            w.write_all(b"\n").map_err(io)?;
        }
        for line in &doc.lines {
            w.write_all(line.as_bytes()).map_err(io)?;
            w.write_all(b"\n").map_err(io)?;
        }
    }
    let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Writes `train.txt`, `valid.txt`, `test.txt` into `out` (temporary files, then renamed).
pub fn write_parts(out: &Path, parts: &[Vec<Document>; 3]) -> Result<()> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let pid = std::process::id();
    let mut temps = TempFiles { files: Vec::new(), committed: false };
    for (part, name) in FILES {
        let tmp = out.join(format!(".{name}.tmp-{pid}"));
        temps.files.push((tmp.clone(), out.join(name)));
        write_documents(&tmp, &parts[part.index()])?;
    }
    for (tmp, dst) in &temps.files {
        fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    }
    temps.committed = true;
    if let Ok(dir) = File::open(out) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn verse_labels() {
        for l in ["Verses 1-2", "Verse 1.", "VERSES 3, 4.", "Verses 20–25", "Verse 9:"] {
            assert!(is_verse_label(l), "{l}");
        }
        for l in ["Verse 1. \"BLESSED\" —see how", "Verses", "Versed 1", "Ver 1", "1-2"] {
            assert!(!is_verse_label(l), "{l}");
        }
        let (lines, dropped) =
            paragraph_lines("\nVerses 1-2\n  The  first verse \n\n of the Bible ");
        assert_eq!(lines, vec!["The first verse", "of the Bible"]);
        assert_eq!(dropped, 1);
    }

    #[test]
    fn stray_tags() {
        // Scofield on 3 John 9 (a list item whose escaped `</ol>` survived as text).
        let (lines, _) = paragraph_lines("The good Demetrius, vs. 9-14 </ol>\nRe20:4-6.</ol>");
        assert_eq!(lines, vec!["The good Demetrius, vs. 9-14", "Re20:4-6."]);
        assert_eq!(strip_stray_tags("a < b, c<d> e <x-1> <>"), "a < b, c  e <x-1> <>");
    }

    #[test]
    fn foreign_text_in_a_heading() {
        // engWEB2015eb, Hosea's book heading entry (shortened): the Greek Daniel.
        let raw = "<div osisID=\"DanGr\" type=\"book\"/> <chapter osisID=\"DanGr.1\" sID=\"x\"/> \
                   In the third year <chapter osisID=\"DanGr.2\"/>";
        assert_eq!(foreign_osis_id(raw, "Hos").as_deref(), Some("DanGr"));
        // Spurgeon's preface in the Psalms book heading is the book's own.
        let raw = "<div canonical=\"true\" osisID=\"Ps\" sID=\"gen2\" type=\"book\"/> Preface";
        assert_eq!(foreign_osis_id(raw, "Ps"), None);
        assert_eq!(foreign_osis_id("<chapter osisID=\"Hos.1\"/>", "Hos"), None);
        assert_eq!(
            foreign_osis_id("<x osisID=\"Hos.1 Joel.1\"/>", "Hos").as_deref(),
            Some("Hos.1 Joel.1")
        );
    }

    #[test]
    fn held_out_books_are_fixed_and_disjoint() {
        let kjv = Versification::kjv();
        let known: HashSet<&str> = kjv.books().iter().map(|b| b.osis).collect();
        for b in VALID_BOOKS.iter().chain(TEST_BOOKS) {
            assert!(known.contains(b), "{b} is not a KJV book id");
        }
        assert!(VALID_BOOKS.iter().all(|b| !TEST_BOOKS.contains(b)));
        assert!(!VALID_BOOKS.contains(&"Ps") && !TEST_BOOKS.contains(&"Ps"));
        assert_eq!(Part::of_book("Josh"), Part::Valid);
        assert_eq!(Part::of_book("Eph"), Part::Test);
        assert_eq!(Part::of_book("Gen"), Part::Train);
        assert_eq!(Part::of_book("Tob"), Part::Train);
    }

    fn doc(source: usize, book: &'static str, lines: &[&str]) -> Document {
        Document { source, book, chapter: 1, lines: lines.iter().map(|l| l.to_string()).collect() }
    }

    #[test]
    fn writes_documents_atomically() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let parts = [
            vec![doc(0, "Gen", &["a b", "c"]), doc(2, "Gen", &["d"])],
            vec![doc(0, "Josh", &["e"])],
            vec![],
        ];
        write_parts(tmp.path(), &parts)?;
        assert_eq!(fs::read_to_string(tmp.path().join("train.txt"))?, "a b\nc\n\nd\n");
        assert_eq!(fs::read_to_string(tmp.path().join("valid.txt"))?, "e\n");
        assert_eq!(fs::read_to_string(tmp.path().join("test.txt"))?, "");
        assert_eq!(fs::read_dir(tmp.path())?.count(), 3, "temporary files left");
        assert_eq!(parts[0][0].words(), 3);
        let mut c = Counts::default();
        c.add(&parts[0][0]);
        assert_eq!(c, Counts { documents: 1, lines: 2, words: 3 });
        Ok(())
    }

    #[test]
    fn real_modules() -> TestResult {
        let cache = seqforge_testkit::sword_dir()
            .filter(|dir| SOURCES.iter().all(|s| super::super::fetch::is_cached(dir, *s)));
        let Some(cache) = cache else {
            seqforge_testkit::skip!(
                seqforge_testkit::SkipKind::SwordModules,
                "the five SWORD modules are not all in .deps/sword (run `cargo xtask setup` \
                 without --no-corpus)"
            );
        };
        let root = |i: usize| super::super::fetch::cached_root(&cache, SOURCES[i].package);
        let open = |i: usize| ZVerseModule::open(&find_conf(&root(i), SOURCES[i].module)?);

        // zCom reading on the real commentaries.
        let mut mhcc = open(2)?;
        let kjv = Versification::kjv();
        mhcc.check_layout(&kjv)?;
        assert_eq!(mhcc.record_size_mismatch(), Some((12, 10)));
        // Gen 1:1 (entry 4) and 1:2 share one note; 1:3-5 another.
        assert!(mhcc.is_linked(5) && !mhcc.is_linked(6) && mhcc.is_linked(7));
        let genesis = osis::clean_with(&mhcc.verse(4)?, CleanOptions::paragraphs());
        assert!(genesis.contains("\nGenesis is a name taken from the Greek"), "{genesis:.300}");
        let mut tdavid = open(4)?;
        tdavid.check_layout(&kjv)?;
        assert_eq!(tdavid.record_size_mismatch(), None);
        // Its notes need zCom4's u32 sizes: the longest (a whole Psalm) is over 64 KiB.
        let mut longest = (0, 0);
        for i in 0..tdavid.len() {
            longest = longest.max((tdavid.entry(i)?.size, i));
        }
        assert!(longest.0 > u32::from(u16::MAX), "longest note {} bytes", longest.0);
        assert_eq!(tdavid.verse(longest.1)?.len(), longest.0 as usize);
        let mut scofield = open(3)?;
        scofield.check_layout(&kjv)?;
        assert!(osis::clean(&scofield.verse(5)?).starts_with("without form and void"));
        let web = open(1)?;
        web.check_layout(&Versification::nrsva())?;

        // The recipe, twice: identical bytes; held-out books only in valid/test.
        let tmp = tempfile::tempdir()?;
        let mut reports = Vec::new();
        for k in 0..2 {
            let mut args = EnglishArgs::new(tmp.path().join(format!("run{k}")));
            args.cache_dir = Some(cache.clone());
            reports.push(run(&args)?);
        }
        let report = &reports[0];
        println!("{report}");
        for (_, name) in FILES {
            let a = fs::read(tmp.path().join("run0").join(name))?;
            assert!(a == fs::read(tmp.path().join("run1").join(name))?, "{name} differs");
        }
        let totals = report.totals();
        let all: usize = totals.iter().map(|c| c.words).sum();
        for (part, c) in totals.iter().enumerate().skip(1) {
            let share = c.words as f64 / all as f64;
            assert!(
                (0.015..0.045).contains(&share),
                "split {part}: {:.2}% of words",
                share * 100.0
            );
        }
        assert!(all > 4_000_000, "{all} words");
        // Every source has text in train; TDavid (Psalms) only there.
        assert!(report.sources.iter().all(|s| s.splits[0].words > 100_000));
        assert_eq!(report.sources[4].splits[1].words + report.sources[4].splits[2].words, 0);
        assert_eq!(report.sources[1].foreign_headings, vec!["Hos heading: DanGr".to_string()]);

        // Leak check on the files: each held-out document opens with a line found only there,
        // and Joshua 1:1 / Ephesians 1:1 (KJV, WEB) are in valid / test, not train.
        let read = |n: &str| fs::read_to_string(tmp.path().join("run0").join(n));
        let (train, valid, test) = (read("train.txt")?, read("valid.txt")?, read("test.txt")?);
        for (text, needle) in [
            (&valid, "Now after the death of Moses the servant of the LORD"),
            (&valid, "Now after the death of Moses the servant of Yahweh"),
            (&test, "to the saints which are at Ephesus, and to the faithful in Christ Jesus"),
        ] {
            assert!(text.contains(needle) && !train.contains(needle), "{needle}");
        }
        assert!(train.contains("In the beginning God created the heaven and the earth."));
        assert!(!train.contains('<') && !train.contains('\u{1}') && !train.contains('¶'));
        assert!(!train.starts_with('\n') && !train.contains("\n\n\n"));
        assert!(report.heldout_lines_in_train < 100, "{}", report.heldout_lines_in_train);
        Ok(())
    }
}
