//! The Spanish–English Bible corpus: RV1909 (SWORD module `spaRV1909eb`, Debian
//! `sword-text-sparv`) as source, KJV (`engKJV2006eb`, Debian `sword-text-kjv`) as target.
//!
//! Both modules use the KJV versification, so their entries align by index. The recipe:
//!
//! 1. **Read** every entry of both modules (32,361 each) and skip the 1,259 heading entries
//!    (see [`super::versification`]); clean the OSIS markup of the 31,102 verses
//!    ([`super::osis`]).
//! 2. **Drop caps** (source only): RV1909 writes the first word of each chapter in capitals
//!    (`EN el principio`, `Y FUÉ …`, `Y JEHOVÁ habló …`). In verse 1 of each chapter, a leading
//!    all-capitals word (alone or after a one-letter word such as `Y`; also after a Psalm
//!    superscription) is re-cased: first word → capitalised (`En`), second word → lower case
//!    if the word occurs in lower case anywhere in the module, else capitalised (`fué`, but
//!    `Jehová`); see [`fix_dropcap`].
//! 3. **Chapter shifts**: where RV1909 starts a chapter `k` verses earlier than the KJV, the
//!    module leaves the last `k` verses of the previous chapter empty, shifts the chapter by
//!    `k` and merges the overflow into the chapter's last slot. When a chapter ends in `k`
//!    empty source verses *and* the next chapter's length profile fits a shift of `k` clearly
//!    better than no shift (mean |log length ratio − median| below
//!    [`SHIFT_GAIN`] × the unshifted one), the next chapter is re-paired: KJV `c:n−k+1..n` ↔
//!    RV `c+1:1..k`, KJV `c+1:v` ↔ RV `c+1:v+k`, and the last RV slot ↔ the last `k+1` KJV
//!    verses joined. On these modules this finds Num 13, Num 30, 1 Sam 24, Job 39, Hos 12
//!    and Jonah 2.
//! 4. **Filter**: pairs with an empty side are skipped; pairs whose character length ratio
//!    `len(es) / len(en)` is outside `[--min-ratio, --max-ratio]` (default `[0.55, 1.8]`;
//!    the median is about 0.92) are dropped as misaligned.
//! 5. **Split** (deterministic): a pair whose source text or target text occurs more than
//!    once among the usable pairs (the Bible repeats verses) always goes to train. The other
//!    pairs are ordered by the 64-bit FNV-1a hash of `"<seed as 8 LE bytes>seqforge-bible:<ref>"`
//!    (ref = KJV OSIS reference such as `Gen.1.1` or `Num.13.32-33`); the first
//!    `--valid-size` go to valid, the next `--test-size` to test, everything else to train.
//!    So no source or target line of valid/test occurs anywhere else in the corpus. Each
//!    split is written in Bible order.
//! 6. **Write** `train.es`, `train.en`, `valid.es`, `valid.en`, `test.es`, `test.en` (one
//!    verse per line) to temporary files in the output folder, then rename them into place.
//!
//! With the Debian bookworm packages (sword-text-sparv 2.60-1, sword-text-kjv 14.3-1) this
//! gives: 31,102 verses, 1,186 drop caps re-cased, 6 shifted chapters (125 links re-paired),
//! 31,094 pairs, 10 with an empty Spanish side, 67 dropped by the ratio filter, 31,017
//! usable pairs of which 442 have a duplicated side; train 29,017, valid 1,000, test 1,000.
//! Known leftovers: RV1909 keeps the Pauline subscriptions (`Escrita de Roma …`) that the
//! KJV text lacks, and a few chapters with other numbering differences (1 Kgs 22, 1 Chr 21,
//! Job 40–41, …) keep some neighbour-shifted pairs of similar length.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::fetch::{Fetcher, SwordPackage, default_cache_dir};
use super::osis;
use super::sword::{ZVerseModule, find_conf};
use super::versification::{Chapter, EntryKind, Versification};
use super::{Error, Result};

/// The source side: Reina-Valera 1909 (Spanish).
pub const SOURCE: SwordPackage =
    SwordPackage { package: "sword-text-sparv", module: "spaRV1909eb" };
/// The target side: King James Version (English).
pub const TARGET: SwordPackage = SwordPackage { package: "sword-text-kjv", module: "engKJV2006eb" };
/// File suffix of the source side.
pub const SOURCE_LANG: &str = "es";
/// File suffix of the target side.
pub const TARGET_LANG: &str = "en";
/// A chapter shift is accepted when its score is below this fraction of the unshifted score.
pub const SHIFT_GAIN: f64 = 0.7;

/// Arguments of `seqforge-train corpus bible`.
#[derive(Debug, Clone, clap::Args)]
pub struct BibleArgs {
    /// Output folder; receives train.{es,en}, valid.{es,en} and test.{es,en} (one verse per
    /// line; es = RV1909 source, en = KJV target).
    #[arg(long)]
    pub out: PathBuf,
    /// Use SWORD modules already on disk: a folder holding mods.d/*.conf and
    /// modules/texts/ztext/... with spaRV1909eb and engKJV2006eb (no download).
    #[arg(long)]
    pub sword_dir: Option<PathBuf>,
    /// Where to download and unpack the Debian packages sword-text-sparv and sword-text-kjv
    /// (`apt-get download` + `dpkg-deb -x`, no system install; runs `apt-get update` once if
    /// apt does not know them). Default: $XDG_CACHE_HOME/seqforge/sword, else
    /// ~/.cache/seqforge/sword.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Number of pairs for the validation set.
    #[arg(long, default_value_t = 1000)]
    pub valid_size: usize,
    /// Number of pairs for the test set.
    #[arg(long, default_value_t = 1000)]
    pub test_size: usize,
    /// Drop pairs whose character length ratio es/en is below this (misalignment filter).
    #[arg(long, default_value_t = 0.55)]
    pub min_ratio: f64,
    /// Drop pairs whose character length ratio es/en is above this (misalignment filter).
    #[arg(long, default_value_t = 1.8)]
    pub max_ratio: f64,
    /// Seed mixed into the hash that picks valid/test pairs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl BibleArgs {
    /// Arguments with the defaults and this output folder.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            sword_dir: None,
            cache_dir: None,
            valid_size: 1000,
            test_size: 1000,
            min_ratio: 0.55,
            max_ratio: 1.8,
            seed: 0,
        }
    }
}

/// One sentence pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pair {
    /// KJV OSIS reference of the target side, e.g. `Gen.1.1` or `Num.13.32-33`.
    pub reference: String,
    /// Source (Spanish) text.
    pub src: String,
    /// Target (English) text.
    pub tgt: String,
}

/// A pairing of target entries with one source entry (global entry indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Target entries (consecutive verses of one chapter; usually one).
    pub tgt: Range<usize>,
    /// The source entry.
    pub src: usize,
}

/// A chapter re-paired because the source starts it earlier.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChapterShift {
    /// OSIS chapter reference, e.g. `Num.13`.
    pub chapter: String,
    /// Shift in verses.
    pub shift: usize,
    /// Mean |log ratio − median| without the shift.
    pub score_unshifted: f64,
    /// The same with the shift.
    pub score_shifted: f64,
}

/// The result of [`align`].
#[derive(Debug, Clone, Default)]
pub struct Alignment {
    /// All links in target order.
    pub links: Vec<Link>,
    /// Re-paired chapters.
    pub shifts: Vec<ChapterShift>,
    /// Links that differ from index alignment.
    pub realigned_links: usize,
}

/// Train/valid/test pairs.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Training pairs (Bible order).
    pub train: Vec<Pair>,
    /// Validation pairs (Bible order).
    pub valid: Vec<Pair>,
    /// Test pairs (Bible order).
    pub test: Vec<Pair>,
    /// Pairs with a source or target text that occurs more than once (kept in train).
    pub duplicate_pairs: usize,
}

/// What [`run`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BibleReport {
    /// Output folder.
    pub out: PathBuf,
    /// Where the modules were read from (library roots).
    pub module_roots: Vec<PathBuf>,
    /// Whether a package was downloaded in this run.
    pub downloaded: bool,
    /// Entries read per module (OT + NT).
    pub entries_per_module: usize,
    /// Heading entries skipped per module.
    pub headings_per_module: usize,
    /// Verse entries per module.
    pub verses: usize,
    /// Source verses whose chapter-initial capitals were re-cased.
    pub dropcaps_fixed: usize,
    /// Re-paired chapters.
    pub shifts: Vec<ChapterShift>,
    /// Links that differ from index alignment.
    pub realigned_links: usize,
    /// Links (pairs before filtering).
    pub links: usize,
    /// Pairs skipped because the source side is empty.
    pub empty_source: usize,
    /// Pairs skipped because the target side is empty.
    pub empty_target: usize,
    /// Pairs dropped by the length-ratio filter.
    pub misaligned_dropped: usize,
    /// The ratio bounds used.
    pub ratio_bounds: (f64, f64),
    /// Usable pairs (after filtering).
    pub pairs: usize,
    /// Pairs with a duplicated side: never in valid/test.
    pub duplicate_pairs: usize,
    /// Pairs written to train.
    pub train: usize,
    /// Pairs written to valid.
    pub valid: usize,
    /// Pairs written to test.
    pub test: usize,
    /// Wall time in seconds.
    pub elapsed_secs: f64,
}

impl fmt::Display for BibleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shifts: Vec<String> =
            self.shifts.iter().map(|s| format!("{} +{}", s.chapter, s.shift)).collect();
        writeln!(
            f,
            "Bible corpus {} ({SOURCE_LANG}) -> {} ({TARGET_LANG}) written to {}",
            SOURCE.module,
            TARGET.module,
            self.out.display()
        )?;
        for r in &self.module_roots {
            writeln!(f, "  modules from:           {}", r.display())?;
        }
        writeln!(f, "  entries read:           {} per module", self.entries_per_module)?;
        writeln!(f, "  headings skipped:       {} per module", self.headings_per_module)?;
        writeln!(f, "  verses:                 {}", self.verses)?;
        writeln!(f, "  drop caps re-cased:     {} ({SOURCE_LANG})", self.dropcaps_fixed)?;
        writeln!(
            f,
            "  shifted chapters:       {} [{}], {} links re-paired",
            self.shifts.len(),
            shifts.join(", "),
            self.realigned_links
        )?;
        writeln!(f, "  pairs before filtering: {}", self.links)?;
        writeln!(
            f,
            "  empty/missing skipped:  {} ({} empty {SOURCE_LANG}, {} empty {TARGET_LANG})",
            self.empty_source + self.empty_target,
            self.empty_source,
            self.empty_target
        )?;
        writeln!(
            f,
            "  misaligned dropped:     {} (length ratio {SOURCE_LANG}/{TARGET_LANG} outside \
             [{}, {}])",
            self.misaligned_dropped, self.ratio_bounds.0, self.ratio_bounds.1
        )?;
        writeln!(f, "  usable pairs:           {}", self.pairs)?;
        writeln!(
            f,
            "  duplicate-side pairs:   {} (kept in train, never in valid/test)",
            self.duplicate_pairs
        )?;
        writeln!(
            f,
            "  written:                train {}, valid {}, test {}",
            self.train, self.valid, self.test
        )?;
        write!(f, "  elapsed:                {:.2} s", self.elapsed_secs)
    }
}

/// Builds the corpus (see the module docs).
pub fn run(args: &BibleArgs) -> Result<BibleReport> {
    let start = Instant::now();
    if !(args.min_ratio > 0.0 && args.min_ratio < args.max_ratio) {
        return Err(Error::Args(format!(
            "need 0 < --min-ratio < --max-ratio, got {} and {}",
            args.min_ratio, args.max_ratio
        )));
    }
    let mut report = BibleReport {
        out: args.out.clone(),
        ratio_bounds: (args.min_ratio, args.max_ratio),
        ..Default::default()
    };

    // 1. Locate the modules.
    let (src_conf, tgt_conf) = match &args.sword_dir {
        Some(dir) => {
            tracing::info!(dir = %dir.display(), "reading SWORD modules from --sword-dir");
            report.module_roots.push(dir.clone());
            (find_conf(dir, SOURCE.module)?, find_conf(dir, TARGET.module)?)
        }
        None => {
            let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
            let mut fetcher = Fetcher::new(cache);
            let (src_root, d1) = fetcher.ensure(SOURCE)?;
            let (tgt_root, d2) = fetcher.ensure(TARGET)?;
            report.downloaded = d1 || d2;
            report.module_roots = vec![src_root.clone(), tgt_root.clone()];
            (find_conf(&src_root, SOURCE.module)?, find_conf(&tgt_root, TARGET.module)?)
        }
    };
    let mut src_mod = ZVerseModule::open(&src_conf)?;
    let mut tgt_mod = ZVerseModule::open(&tgt_conf)?;
    let vers = Versification::kjv();
    src_mod.check_layout(&vers)?;
    tgt_mod.check_layout(&vers)?;
    report.entries_per_module = vers.len();
    report.headings_per_module = vers.heading_count();
    report.verses = vers.verse_count();

    // 2. Read and clean.
    let bar = ProgressBar::new(2 * vers.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>14} [{bar:40}] {pos}/{len} entries")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut src = read_verses(&mut src_mod, &vers, &bar)?;
    let tgt = read_verses(&mut tgt_mod, &vers, &bar)?;
    bar.finish_and_clear();
    tracing::info!(entries = vers.len(), headings = vers.heading_count(), "read both modules");
    report.dropcaps_fixed = fix_dropcaps(&mut src, vers.chapters());

    // 3. Align, 4. filter.
    let alignment = align(&vers, &src, &tgt);
    report.links = alignment.links.len();
    report.realigned_links = alignment.realigned_links;
    report.shifts = alignment.shifts.clone();
    for s in &alignment.shifts {
        tracing::info!(
            chapter = %s.chapter,
            shift = s.shift,
            "re-paired a shifted chapter (score {:.3} -> {:.3})",
            s.score_unshifted,
            s.score_shifted
        );
    }
    let mut pairs = Vec::with_capacity(alignment.links.len());
    for link in &alignment.links {
        let pair = make_pair(&vers, &src, &tgt, link);
        if pair.src.is_empty() {
            report.empty_source += 1;
            continue;
        }
        if pair.tgt.is_empty() {
            report.empty_target += 1;
            continue;
        }
        let ratio = length_ratio(&pair.src, &pair.tgt);
        if ratio < args.min_ratio || ratio > args.max_ratio {
            report.misaligned_dropped += 1;
            tracing::debug!(reference = %pair.reference, ratio, "dropped as misaligned");
            continue;
        }
        pairs.push(pair);
    }
    report.pairs = pairs.len();

    // 5. Split, 6. write.
    let split = split_pairs(pairs, args.valid_size, args.test_size, args.seed);
    if split.valid.len() < args.valid_size || split.test.len() < args.test_size {
        tracing::warn!(
            valid = split.valid.len(),
            test = split.test.len(),
            "not enough pairs without duplicates for the requested valid/test sizes"
        );
    }
    report.duplicate_pairs = split.duplicate_pairs;
    report.train = split.train.len();
    report.valid = split.valid.len();
    report.test = split.test.len();
    write_splits(&args.out, &split)?;
    report.elapsed_secs = start.elapsed().as_secs_f64();
    tracing::info!(
        train = report.train,
        valid = report.valid,
        test = report.test,
        secs = report.elapsed_secs,
        "wrote the Bible corpus"
    );
    Ok(report)
}

/// Reads every entry, cleans verses, and leaves headings empty.
fn read_verses(
    module: &mut ZVerseModule,
    vers: &Versification,
    bar: &ProgressBar,
) -> Result<Vec<String>> {
    bar.set_message(module.name().to_string());
    let mut out = Vec::with_capacity(vers.len());
    for (i, kind) in vers.entries().iter().enumerate() {
        let raw = module.verse(i)?;
        out.push(if kind.is_heading() { String::new() } else { osis::clean(&raw) });
        if i % 1024 == 0 {
            bar.inc(1024.min(vers.len() - i) as u64);
        }
    }
    Ok(out)
}

/// Character length ratio `src / tgt` (both non-empty).
pub fn length_ratio(src: &str, tgt: &str) -> f64 {
    src.chars().count() as f64 / tgt.chars().count().max(1) as f64
}

fn is_caps_word(w: &str) -> bool {
    w.chars().count() >= 2
        && w.chars().all(|c| !c.is_lowercase())
        && w.chars().any(char::is_uppercase)
}

fn capitalize(w: &str) -> String {
    let mut chars = w.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// Spans of the alphabetic words of a text.
fn word_spans(text: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, c) in text.char_indices() {
        match (c.is_alphabetic(), start) {
            (true, None) => start = Some(i),
            (false, Some(s)) => {
                spans.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        spans.push(s..text.len());
    }
    spans
}

/// Re-cases a chapter-initial capitals word (see the module docs); `None` if nothing to do.
/// `lower` holds the words that occur in lower case somewhere in the module.
///
/// Only the first all-capitals word of the text is considered, and only when it starts a
/// clause (the text start, or after `.` `:` `;` `!` `?`, as after a Psalm superscription),
/// possibly after a one-letter word (`Y JEHOVÁ`), and is not followed by another
/// all-capitals word (inscriptions such as `SANTIDAD Á JEHOVÁ` are left alone).
pub fn fix_dropcap(text: &str, lower: &HashSet<String>) -> Option<String> {
    let spans = word_spans(text);
    let word = |i: usize| spans.get(i).map(|r| &text[r.clone()]);
    let first_caps = spans.iter().position(|r| is_caps_word(&text[r.clone()]))?;
    let clause = (0..=first_caps).rev().find(|&j| {
        j == 0
            || spans
                .get(j - 1)
                .zip(spans.get(j))
                .is_some_and(|(a, b)| text[a.end..b.start].contains(['.', ':', ';', '!', '?']))
    })?;
    let all_upper = |w: &str| w.chars().all(|c| !c.is_lowercase());
    if word(first_caps + 1).is_some_and(all_upper) {
        // Two capitals words opening the verse (`DE SIETE años`): re-case both.
        let (Some(w0), Some(w1)) = (word(0), word(1)) else { return None };
        if first_caps != 0 || !is_caps_word(w1) || word(2).is_none_or(all_upper) {
            return None;
        }
        let (r0, r1) = (spans.first()?.clone(), spans.get(1)?.clone());
        let low = w1.to_lowercase();
        let second = if lower.contains(&low) { low } else { capitalize(w1) };
        return Some(format!(
            "{}{}{}{}{}",
            &text[..r0.start],
            capitalize(w0),
            &text[r0.end..r1.start],
            second,
            &text[r1.end..]
        ));
    }
    let w = word(first_caps)?;
    let replacement = if first_caps == clause {
        capitalize(w)
    } else if first_caps == clause + 1
        && word(clause)
            .is_some_and(|w0| w0.chars().count() == 1 && w0.chars().all(char::is_uppercase))
    {
        let low = w.to_lowercase();
        if lower.contains(&low) { low } else { capitalize(w) }
    } else {
        return None;
    };
    let r = spans.get(first_caps)?.clone();
    Some(format!("{}{}{}", &text[..r.start], replacement, &text[r.end..]))
}

/// Applies [`fix_dropcap`] to verse 1 of every chapter; returns how many verses changed.
pub fn fix_dropcaps(src: &mut [String], chapters: &[Chapter]) -> usize {
    let mut lower = HashSet::new();
    for text in src.iter() {
        for r in word_spans(text) {
            let w = &text[r];
            if w.chars().all(char::is_lowercase) {
                lower.insert(w.to_string());
            }
        }
    }
    let mut fixed = 0;
    for ch in chapters {
        if let Some(text) = src.get_mut(ch.first_verse)
            && let Some(new) = fix_dropcap(text, &lower)
        {
            *text = new;
            fixed += 1;
        }
    }
    fixed
}

/// Median of `ln(len(src)/len(tgt))` over index-aligned verse pairs with both sides
/// non-empty (0 if there are none).
fn median_log_ratio(vers: &Versification, src: &[String], tgt: &[String]) -> f64 {
    let mut logs: Vec<f64> = vers
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, k)| matches!(k, EntryKind::Verse(_)))
        .filter_map(|(i, _)| {
            let (s, t) = (src.get(i)?, tgt.get(i)?);
            (!s.is_empty() && !t.is_empty()).then(|| length_ratio(s, t).ln())
        })
        .collect();
    if logs.is_empty() {
        return 0.0;
    }
    logs.sort_by(f64::total_cmp);
    logs[logs.len() / 2]
}

/// Mean |ln(len(src[v+shift]) / len(tgt[v])) − mu| over a chapter, leaving out the last source
/// slot; `None` with fewer than 3 usable pairs.
fn shift_score(ch: &Chapter, shift: usize, src: &[String], tgt: &[String], mu: f64) -> Option<f64> {
    let n = ch.verses.checked_sub(shift + 1)?;
    let mut sum = 0.0;
    let mut count = 0usize;
    for v in 0..n {
        let (Some(t), Some(s)) = (tgt.get(ch.first_verse + v), src.get(ch.first_verse + v + shift))
        else {
            continue;
        };
        if !s.is_empty() && !t.is_empty() {
            sum += (length_ratio(s, t).ln() - mu).abs();
            count += 1;
        }
    }
    (count >= 3).then(|| sum / count as f64)
}

/// Pairs target verses with source verses: by index, except in chapters the source starts
/// early (see the module docs, step 3).
pub fn align(vers: &Versification, src: &[String], tgt: &[String]) -> Alignment {
    let chapters = vers.chapters();
    let mu = median_log_ratio(vers, src, tgt);
    let mut shift: Vec<Option<usize>> = vec![None; chapters.len()];
    let mut shifts = Vec::new();
    for i in 1..chapters.len() {
        let (prev, ch) = (&chapters[i - 1], &chapters[i]);
        if prev.book != ch.book || shift[i - 1].is_some() {
            continue;
        }
        let k = (0..prev.verses)
            .rev()
            .take_while(|&v| src.get(prev.first_verse + v).is_none_or(String::is_empty))
            .count();
        if k == 0 || k + 3 > ch.verses || k >= prev.verses {
            continue;
        }
        let (Some(s0), Some(sk)) =
            (shift_score(ch, 0, src, tgt, mu), shift_score(ch, k, src, tgt, mu))
        else {
            continue;
        };
        if sk < SHIFT_GAIN * s0 {
            shift[i] = Some(k);
            let book =
                super::versification::KJV_BOOKS.get(usize::from(ch.book)).map_or("?", |b| b.osis);
            shifts.push(ChapterShift {
                chapter: format!("{book}.{}", ch.chapter),
                shift: k,
                score_unshifted: s0,
                score_shifted: sk,
            });
        }
    }
    let mut links = Vec::with_capacity(vers.verse_count());
    let mut realigned = 0;
    for (i, ch) in chapters.iter().enumerate() {
        let next_shift = shift.get(i + 1).copied().flatten();
        let n = ch.verses;
        for v in 0..n {
            let idx = ch.first_verse + v;
            let link = if let (Some(k), Some(next)) = (next_shift, chapters.get(i + 1))
                && v >= n - k
            {
                Link { tgt: idx..idx + 1, src: next.first_verse + v - (n - k) }
            } else if let Some(k) = shift[i] {
                if v + k + 1 < n {
                    Link { tgt: idx..idx + 1, src: idx + k }
                } else if v + k + 1 == n {
                    Link { tgt: idx..ch.first_verse + n, src: ch.first_verse + n - 1 }
                } else {
                    continue;
                }
            } else {
                Link { tgt: idx..idx + 1, src: idx }
            };
            if link.src != idx || link.tgt.len() != 1 {
                realigned += 1;
            }
            links.push(link);
        }
    }
    Alignment { links, shifts, realigned_links: realigned }
}

/// Builds the pair of a link (target verses joined with a space).
fn make_pair(vers: &Versification, src: &[String], tgt: &[String], link: &Link) -> Pair {
    let reference = match (vers.kind(link.tgt.start), vers.kind(link.tgt.end.saturating_sub(1))) {
        (Some(EntryKind::Verse(a)), Some(EntryKind::Verse(b))) if a != b => {
            format!("{a}-{}", b.verse)
        }
        (Some(EntryKind::Verse(a)), _) => a.to_string(),
        _ => format!("entry{}", link.tgt.start),
    };
    let tgt_text = link
        .tgt
        .clone()
        .filter_map(|i| tgt.get(i))
        .filter(|s| !s.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ");
    Pair { reference, src: src.get(link.src).cloned().unwrap_or_default(), tgt: tgt_text }
}

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The hash that orders pairs for valid/test selection.
pub fn selection_key(reference: &str, seed: u64) -> u64 {
    let mut bytes = seed.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"seqforge-bible:");
    bytes.extend_from_slice(reference.as_bytes());
    fnv1a64(&bytes)
}

/// Splits pairs into train/valid/test (see the module docs, step 5).
pub fn split_pairs(pairs: Vec<Pair>, valid_size: usize, test_size: usize, seed: u64) -> Split {
    let mut src_count: HashMap<&str, usize> = HashMap::new();
    let mut tgt_count: HashMap<&str, usize> = HashMap::new();
    for p in &pairs {
        *src_count.entry(p.src.as_str()).or_default() += 1;
        *tgt_count.entry(p.tgt.as_str()).or_default() += 1;
    }
    let unique: Vec<bool> = pairs
        .iter()
        .map(|p| src_count[p.src.as_str()] == 1 && tgt_count[p.tgt.as_str()] == 1)
        .collect();
    let duplicate_pairs = unique.iter().filter(|u| !**u).count();
    let mut order: Vec<(u64, usize)> = pairs
        .iter()
        .enumerate()
        .filter(|(i, _)| unique[*i])
        .map(|(i, p)| (selection_key(&p.reference, seed), i))
        .collect();
    order.sort_unstable();
    // 0 = train, 1 = valid, 2 = test.
    let mut dest = vec![0u8; pairs.len()];
    for (rank, &(_, i)) in order.iter().enumerate() {
        if rank < valid_size {
            dest[i] = 1;
        } else if rank < valid_size + test_size {
            dest[i] = 2;
        } else {
            break;
        }
    }
    let mut split = Split { duplicate_pairs, ..Default::default() };
    for (p, d) in pairs.into_iter().zip(dest) {
        match d {
            1 => split.valid.push(p),
            2 => split.test.push(p),
            _ => split.train.push(p),
        }
    }
    split
}

/// Temporary files that are removed unless committed.
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

fn write_lines(path: &Path, lines: impl Iterator<Item = String>) -> Result<()> {
    let io = |e| Error::io(path, e);
    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::new(file);
    for line in lines {
        // Cleaned text has no newlines; make sure a line is one line.
        let line = if line.contains(['\n', '\r']) { line.replace(['\n', '\r'], " ") } else { line };
        w.write_all(line.as_bytes()).map_err(io)?;
        w.write_all(b"\n").map_err(io)?;
    }
    let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(io)
}

/// Writes `{train,valid,test}.{es,en}` into `out`: all six to temporary files first, then
/// renamed into place, so an interrupted run leaves either the old files or the new ones
/// (each file is always complete).
pub fn write_splits(out: &Path, split: &Split) -> Result<()> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let pid = std::process::id();
    let mut temps = TempFiles { files: Vec::new(), committed: false };
    for (name, pairs) in [("train", &split.train), ("valid", &split.valid), ("test", &split.test)] {
        for (lang, is_src) in [(SOURCE_LANG, true), (TARGET_LANG, false)] {
            let file = format!("{name}.{lang}");
            let tmp = out.join(format!(".{file}.tmp-{pid}"));
            temps.files.push((tmp.clone(), out.join(&file)));
            write_lines(
                &tmp,
                pairs.iter().map(|p| if is_src { p.src.clone() } else { p.tgt.clone() }),
            )?;
        }
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

    fn lower(words: &[&str]) -> HashSet<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn dropcaps() {
        let l = lower(&["fué", "en", "el"]);
        assert_eq!(
            fix_dropcap("EN el principio crió Dios", &l).as_deref(),
            Some("En el principio crió Dios")
        );
        assert_eq!(fix_dropcap("Y FUÉ á los", &l).as_deref(), Some("Y fué á los"));
        assert_eq!(fix_dropcap("Y JEHOVÁ habló", &l).as_deref(), Some("Y Jehová habló"));
        assert_eq!(
            fix_dropcap("¿SACARÁS tú al leviathán", &l).as_deref(),
            Some("¿Sacarás tú al leviathán")
        );
        assert_eq!(fix_dropcap("Y EN el año", &l).as_deref(), Some("Y en el año"));
        assert_eq!(fix_dropcap("En el principio", &l), None);
        assert_eq!(fix_dropcap("Y dijo", &l), None);
        assert_eq!(fix_dropcap("ESTE ES JESÚS", &l), None);
        let l2 = lower(&["siete", "de"]);
        assert_eq!(
            fix_dropcap("DE SIETE años era Joas", &l2).as_deref(),
            Some("De siete años era Joas")
        );
        assert_eq!(fix_dropcap("Y JEHOVÁ DIJO", &l2), None);
        assert_eq!(fix_dropcap("", &l), None);
        assert_eq!(fix_dropcap("A", &l), None);
        // After a Psalm superscription.
        assert_eq!(
            fix_dropcap("Salmo de David. ¡OH Jehová, cuánto", &l).as_deref(),
            Some("Salmo de David. ¡Oh Jehová, cuánto")
        );
        assert_eq!(
            fix_dropcap("Al Músico principal: Salmo de David. JEHOVÁ, no me", &l).as_deref(),
            Some("Al Músico principal: Salmo de David. Jehová, no me")
        );
        // Mid-clause capitals and inscriptions stay.
        assert_eq!(fix_dropcap("Yo soy JEHOVÁ; di á Faraón", &l), None);
        assert_eq!(fix_dropcap("grabadura de sello, SANTIDAD Á JEHOVÁ.", &l), None);
        assert_eq!(fix_dropcap("Y dijo: SANTIDAD Á JEHOVÁ.", &l), None);
    }

    /// A tiny versification-shaped corpus: builds src/tgt arrays of the real KJV size with
    /// texts only in the chapters given.
    fn fill(
        vers: &Versification,
        f: impl Fn(usize, &Chapter, usize) -> (String, String),
    ) -> (Vec<String>, Vec<String>) {
        let mut src = vec![String::new(); vers.len()];
        let mut tgt = vec![String::new(); vers.len()];
        for (ci, ch) in vers.chapters().iter().enumerate() {
            for v in 0..ch.verses {
                let (s, t) = f(ci, ch, v);
                src[ch.first_verse + v] = s;
                tgt[ch.first_verse + v] = t;
            }
        }
        (src, tgt)
    }

    #[test]
    fn index_alignment_by_default() {
        let vers = Versification::kjv();
        let (src, tgt) = fill(&vers, |_, ch, v| {
            (format!("s{}", ch.first_verse + v), format!("t{}", ch.first_verse + v))
        });
        let a = align(&vers, &src, &tgt);
        assert_eq!(a.links.len(), 31_102);
        assert!(a.shifts.is_empty());
        assert_eq!(a.realigned_links, 0);
        assert!(a.links.iter().all(|l| l.tgt.len() == 1 && l.src == l.tgt.start));
    }

    #[test]
    fn detects_and_repairs_a_shifted_chapter() {
        let vers = Versification::kjv();
        // "Verse" i has a length that varies a lot between verses; src = tgt text in the
        // same language so the ideal ratio is 1.
        let text = |i: usize| "x".repeat(10 + (i * 7919) % 90);
        // Num 12 (16 verses) and Num 13 (33 verses): book index 3, chapters 12 and 13.
        let chs = vers.chapters();
        let Some(c12) = chs.iter().position(|c| c.book == 3 && c.chapter == 12) else {
            panic!("Num 12 not found");
        };
        let (n12, n13) = (chs[c12], chs[c12 + 1]);
        let (mut src, tgt) =
            fill(&vers, |_, ch, v| (text(ch.first_verse + v), text(ch.first_verse + v)));
        // Source: Num 12:16 empty; Num 13 shifted by one; the overflow merged into 13:33.
        let last12 = n12.first_verse + n12.verses - 1;
        src[last12] = String::new();
        let f = n13.first_verse;
        src[f] = text(last12);
        for v in 1..n13.verses {
            src[f + v] = text(f + v - 1);
        }
        src[f + n13.verses - 1] =
            format!("{} {}", text(f + n13.verses - 2), text(f + n13.verses - 1));
        let a = align(&vers, &src, &tgt);
        assert_eq!(a.shifts.len(), 1, "{:?}", a.shifts);
        assert_eq!(a.shifts[0].chapter, "Num.13");
        assert_eq!(a.shifts[0].shift, 1);
        let pairs: Vec<Pair> = a.links.iter().map(|l| make_pair(&vers, &src, &tgt, l)).collect();
        // Every pair now has identical sides.
        assert!(pairs.iter().all(|p| p.src == p.tgt), "misaligned pair left");
        assert!(pairs.iter().any(|p| p.reference == "Num.13.32-33"));
        assert_eq!(pairs.len(), 31_102 - 1);
        assert_eq!(a.realigned_links, 1 + 32);
    }

    fn pair(r: &str, s: &str, t: &str) -> Pair {
        Pair { reference: r.into(), src: s.into(), tgt: t.into() }
    }

    #[test]
    fn split_is_deterministic_and_keeps_duplicates_out_of_heldout() {
        let mut pairs: Vec<Pair> = (0..200)
            .map(|i| pair(&format!("Gen.1.{i}"), &format!("s{i}"), &format!("t{i}")))
            .collect();
        // Duplicated source text and duplicated target text.
        pairs.push(pair("Ps.1.1", "same", "a"));
        pairs.push(pair("Ps.1.2", "same", "b"));
        pairs.push(pair("Ps.1.3", "c", "twice"));
        pairs.push(pair("Ps.1.4", "d", "twice"));
        let a = split_pairs(pairs.clone(), 50, 50, 0);
        let b = split_pairs(pairs.clone(), 50, 50, 0);
        assert_eq!(a.valid, b.valid);
        assert_eq!(a.test, b.test);
        assert_eq!(a.duplicate_pairs, 4);
        assert_eq!((a.train.len(), a.valid.len(), a.test.len()), (104, 50, 50));
        let heldout: Vec<&Pair> = a.valid.iter().chain(&a.test).collect();
        assert!(heldout.iter().all(|p| !p.reference.starts_with("Ps.")));
        for p in &heldout {
            assert!(a.train.iter().all(|q| q.src != p.src && q.tgt != p.tgt));
        }
        // Bible order is kept inside a split.
        let idx = |p: &Pair| pairs.iter().position(|q| q == p);
        assert!(a.valid.windows(2).all(|w| idx(&w[0]) < idx(&w[1])));
        // Another seed picks other pairs.
        let c = split_pairs(pairs, 50, 50, 1);
        assert_ne!(a.valid, c.valid);
        // Known FNV-1a value.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn atomic_write() -> TestResult {
        let tmp = tempfile::tempdir()?;
        let split = Split {
            train: vec![pair("Gen.1.1", "En el principio", "In the beginning")],
            valid: vec![pair("Gen.1.2", "Y la tierra", "And the earth")],
            test: vec![],
            duplicate_pairs: 0,
        };
        write_splits(tmp.path(), &split)?;
        assert_eq!(fs::read_to_string(tmp.path().join("train.es"))?, "En el principio\n");
        assert_eq!(fs::read_to_string(tmp.path().join("valid.en"))?, "And the earth\n");
        assert_eq!(fs::read_to_string(tmp.path().join("test.en"))?, "");
        let names: Vec<String> = fs::read_dir(tmp.path())?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert_eq!(names.len(), 6, "temporary files left: {names:?}");
        // A folder that cannot be created is an error naming it.
        let blocker = tmp.path().join("file");
        fs::write(&blocker, "")?;
        let e = write_splits(&blocker.join("sub"), &split)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("file/sub"), "{e}");
        Ok(())
    }

    #[test]
    fn bad_ratio_args() {
        let mut args = BibleArgs::new("/nonexistent-seqforge-out");
        args.min_ratio = 2.0;
        assert!(matches!(run(&args), Err(Error::Args(_))));
    }

    /// The real modules, from the SWORD folder `cargo xtask setup` fills (`.deps/sword`).
    #[test]
    fn real_modules() -> TestResult {
        let cache = seqforge_testkit::sword_dir()
            .filter(|dir| [SOURCE, TARGET].iter().all(|p| super::super::fetch::is_cached(dir, *p)));
        let Some(cache) = cache else {
            seqforge_testkit::skip!(
                seqforge_testkit::SkipKind::SwordModules,
                "{} and {} are not in .deps/sword (run `cargo xtask setup` without --no-corpus)",
                SOURCE.package,
                TARGET.package
            );
        };
        let root = |p: SwordPackage| super::super::fetch::cached_root(&cache, p.package);
        let src_conf = find_conf(&root(SOURCE), SOURCE.module)?;
        let tgt_conf = find_conf(&root(TARGET), TARGET.module)?;
        let vers = Versification::kjv();
        let mut tgt_mod = ZVerseModule::open(&tgt_conf)?;
        let mut src_mod = ZVerseModule::open(&src_conf)?;
        assert_eq!(tgt_mod.len(), 32_361);
        assert_eq!(src_mod.len(), 32_361);
        tgt_mod.check_layout(&vers)?;
        src_mod.check_layout(&vers)?;
        // The computed heading entries really are headings: every chapter heading of the KJV
        // module carries its <chapter osisID="Book.N"> tag, every book heading its book div.
        for (i, kind) in vers.entries().iter().enumerate() {
            let raw = tgt_mod.verse(i)?;
            match kind {
                EntryKind::ChapterHeading(b, c) => {
                    let id = format!(
                        "osisID=\"{}.{c}\"",
                        super::super::versification::KJV_BOOKS[usize::from(*b)].osis
                    );
                    assert!(raw.contains(&id), "entry {i}: {raw}");
                }
                EntryKind::BookHeading(b) => {
                    let id = format!(
                        "osisID=\"{}\"",
                        super::super::versification::KJV_BOOKS[usize::from(*b)].osis
                    );
                    assert!(raw.contains(&id), "entry {i}: {raw}");
                }
                EntryKind::Verse(_) => {
                    assert!(!raw.contains("<chapter n="), "entry {i}: {raw}")
                }
                _ => {}
            }
        }
        assert_eq!(
            osis::clean(&tgt_mod.verse(4)?),
            "In the beginning God created the heaven and the earth."
        );
        assert_eq!(
            osis::clean(&src_mod.verse(4)?),
            "EN el principio crió Dios los cielos y la tierra."
        );

        let tmp = tempfile::tempdir()?;
        let mut args = BibleArgs::new(tmp.path().join("bible"));
        args.cache_dir = Some(cache.clone());
        let report = run(&args)?;
        println!("{report}");
        assert!(!report.downloaded, "setup's modules were downloaded again");
        assert_eq!(report.module_roots, vec![root(SOURCE), root(TARGET)]);
        assert_eq!(report.entries_per_module, 32_361);
        assert_eq!(report.headings_per_module, 1_259);
        assert_eq!(report.empty_source + report.empty_target, 10);
        assert!((30_900..=31_100).contains(&report.pairs), "{} pairs", report.pairs);
        assert_eq!((report.valid, report.test), (1000, 1000));
        assert_eq!(report.train + report.valid + report.test, report.pairs);
        let lines = |f: &str| fs::read_to_string(args.out.join(f)).map(|s| s.lines().count());
        assert_eq!(lines("train.es")?, report.train);
        assert_eq!(lines("train.en")?, report.train);
        assert_eq!(lines("test.en")?, 1000);
        let train_en = fs::read_to_string(args.out.join("train.en"))?;
        assert!(!train_en.contains('<') && !train_en.contains("\\nd") && !train_en.contains('¶'));
        Ok(())
    }
}
