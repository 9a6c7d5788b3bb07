//! chrF (Popović, 2015) and chrF++ (Popović, 2017) exactly as sacreBLEU 2.6.0's
//! `sacrebleu/metrics/chrf.py`.
//!
//! Character n-grams (orders 1 to `char_order`, whitespace removed unless `whitespace`) and,
//! for chrF++, word n-grams (orders 1 to `word_order`, punctuation split off word ends) are
//! matched per segment against the reference with the best segment-level F-score; the corpus
//! score is the F-beta of the summed statistics, averaged over orders with effective-order
//! smoothing (the default) or epsilon smoothing.
//!
//! ```
//! use seqforge_runtime::score::{ChrfConfig, corpus_chrf};
//!
//! let refs = vec![vec!["The cat sat on the mat.".to_string()]];
//! let score = corpus_chrf(&["The cat sat on a mat."], &refs, &ChrfConfig::chrf_plus_plus())?;
//! assert_eq!(score.signature(), "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0");
//! assert!(score.to_string().starts_with("chrF2++ = "));
//! # Ok::<(), seqforge_runtime::score::Error>(())
//! ```

use std::fmt;

use super::format::format_score;
use super::ngram::{Interner, Runs, all_order_runs, clipped_matches, fits, runs, total};
use super::text::{is_space, lower, split_whitespace};
use super::{Error, Result, SACREBLEU_VERSION, check_streams};

/// chrF's options, as sacreBLEU's `CHRF(...)` constructor takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChrfConfig {
    /// Character n-gram order (default 6).
    pub char_order: usize,
    /// Word n-gram order: 0 for chrF (default), 2 for chrF++.
    pub word_order: usize,
    /// Weight of recall relative to precision (default 2).
    pub beta: u32,
    /// Lowercase first (signature `case:lc`).
    pub lowercase: bool,
    /// Keep whitespace inside character n-grams (signature `space:yes`).
    pub whitespace: bool,
    /// Epsilon smoothing as chrF++.py, Moses and NLTK (signature `eff:no`) instead of
    /// effective-order averaging (the default, `eff:yes`).
    pub eps_smoothing: bool,
}

impl Default for ChrfConfig {
    fn default() -> Self {
        Self {
            char_order: 6,
            word_order: 0,
            beta: 2,
            lowercase: false,
            whitespace: false,
            eps_smoothing: false,
        }
    }
}

impl ChrfConfig {
    /// chrF++: the defaults with word order 2.
    pub fn chrf_plus_plus() -> Self {
        Self { word_order: 2, ..Self::default() }
    }

    /// The metric's name: `chrF2`, `chrF2++`, …
    pub fn name(&self) -> String {
        format!("chrF{}{}", self.beta, "+".repeat(self.word_order))
    }

    /// The signature for `nrefs` references.
    pub fn signature(&self, nrefs: usize) -> String {
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|nc:{}|nw:{}|space:{}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.eps_smoothing { "no" } else { "yes" },
            self.char_order,
            self.word_order,
            if self.whitespace { "yes" } else { "no" },
        )
    }
}

/// A chrF scorer for one configuration.
#[derive(Debug, Clone)]
pub struct Chrf {
    config: ChrfConfig,
}

/// `string.punctuation`, which chrF++ splits off word ends.
fn is_ascii_punct(c: char) -> bool {
    c.is_ascii_punctuation()
}

/// The n-gram counts of one order, keyed by packed symbols or, for long n-grams, slices.
enum OrderRuns<'a> {
    Packed(Runs<u128>),
    Slices(Runs<&'a [u32]>),
}

/// The counts of every order `1..=max_n` of `symbols`, packed when they fit.
fn order_runs(symbols: &[u32], max_n: usize, bits: u32) -> Vec<(OrderRuns<'_>, u64)> {
    if fits(max_n, bits) {
        all_order_runs(symbols, max_n, bits)
            .into_iter()
            .map(|r| {
                let t = total(&r);
                (OrderRuns::Packed(r), t)
            })
            .collect()
    } else {
        (1..=max_n)
            .map(|n| {
                let r = runs(symbols.windows(n).collect());
                let t = total(&r);
                (OrderRuns::Slices(r), t)
            })
            .collect()
    }
}

/// `_get_match_statistics`: `[hyp count (0 without reference n-grams), ref count, matches]`.
fn match_stats(hyp: &(OrderRuns<'_>, u64), reference: &(OrderRuns<'_>, u64), out: &mut Vec<u64>) {
    let matches = match (&hyp.0, &reference.0) {
        (OrderRuns::Packed(h), OrderRuns::Packed(r)) => clipped_matches(h, r),
        (OrderRuns::Slices(h), OrderRuns::Slices(r)) => clipped_matches(h, r),
        // Both sides of an order are built with the same order and symbol width.
        _ => unreachable!("hypothesis and reference n-grams of one order have the same key kind"),
    };
    let ref_count = reference.1;
    out.push(if ref_count == 0 { 0 } else { hyp.1 });
    out.push(ref_count);
    out.push(matches);
}

/// Bits of a packed character: every code point is below `2^21 - 1`.
const CHAR_BITS: u32 = 21;

impl Chrf {
    /// A scorer for `config`; rejects a total order of zero and a zero beta.
    pub fn new(config: ChrfConfig) -> Result<Self> {
        if config.char_order + config.word_order == 0 {
            return Err(Error::InvalidOption {
                option: "char_order",
                reason: "char_order + word_order must be at least 1".into(),
            });
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &ChrfConfig {
        &self.config
    }

    /// The text n-grams are extracted from (`_preprocess_segment`).
    fn preprocess(&self, line: &str) -> String {
        if self.config.lowercase { lower(line) } else { line.to_owned() }
    }

    /// The characters n-grams are taken from (whitespace removed unless kept).
    fn char_symbols(&self, line: &str) -> Vec<u32> {
        if self.config.whitespace {
            line.chars().map(u32::from).collect()
        } else {
            line.chars().filter(|&c| !is_space(c)).map(u32::from).collect()
        }
    }

    /// The n-gram counts of every order: character orders, then word orders.
    fn all_runs<'a>(
        &self,
        chars: &'a [u32],
        words: &'a [u32],
        word_bits: u32,
    ) -> Vec<(OrderRuns<'a>, u64)> {
        let mut all = order_runs(chars, self.config.char_order, CHAR_BITS);
        if self.config.word_order > 0 {
            all.extend(order_runs(words, self.config.word_order, word_bits));
        }
        all
    }

    /// `_compute_f_score` over flattened `[hyp, ref, match]` triples.
    fn f_score(&self, stats: &[u64]) -> f64 {
        let eps = 1e-16;
        let factor = f64::from(self.config.beta * self.config.beta);
        let order = self.config.char_order + self.config.word_order;
        let (mut score, mut avg_prec, mut avg_rec) = (0.0, 0.0, 0.0);
        let mut effective_order = 0usize;
        for i in 0..order {
            let (n_hyp, n_ref, n_match) = (stats[3 * i], stats[3 * i + 1], stats[3 * i + 2]);
            let prec = if n_hyp > 0 { n_match as f64 / n_hyp as f64 } else { eps };
            let rec = if n_ref > 0 { n_match as f64 / n_ref as f64 } else { eps };
            let denom = factor * prec + rec;
            score += if denom > 0.0 { (1.0 + factor) * prec * rec / denom } else { eps };
            if n_hyp > 0 && n_ref > 0 {
                avg_prec += prec;
                avg_rec += rec;
                effective_order += 1;
            }
        }
        if self.config.eps_smoothing {
            return 100.0 * score / order as f64;
        }
        if effective_order == 0 {
            avg_prec = 0.0;
            avg_rec = 0.0;
        } else {
            avg_prec /= effective_order as f64;
            avg_rec /= effective_order as f64;
        }
        if avg_prec + avg_rec != 0.0 {
            let mut score = (1.0 + factor) * avg_prec * avg_rec;
            score /= factor * avg_prec + avg_rec;
            100.0 * score
        } else {
            0.0
        }
    }

    /// The best-matching reference's statistics for one hypothesis.
    fn segment<S: AsRef<str>>(&self, hyp: &str, refs: impl Iterator<Item = S>) -> Vec<u64> {
        let hyp = self.preprocess(hyp);
        let refs: Vec<String> = refs.map(|r| self.preprocess(r.as_ref())).collect();
        let hyp_chars = self.char_symbols(&hyp);
        let ref_chars: Vec<Vec<u32>> = refs.iter().map(|r| self.char_symbols(r)).collect();
        let mut interner = Interner::new();
        let (hyp_words, ref_words): (Vec<u32>, Vec<Vec<u32>>) = if self.config.word_order > 0 {
            let hyp_words = interner.ids(&remove_punctuation(&hyp));
            let ref_words = refs.iter().map(|r| interner.ids(&remove_punctuation(r))).collect();
            (hyp_words, ref_words)
        } else {
            (Vec::new(), vec![Vec::new(); refs.len()])
        };
        let word_bits = interner.bits();
        let hyp_runs = self.all_runs(&hyp_chars, &hyp_words, word_bits);
        let order = self.config.char_order + self.config.word_order;
        let mut best: Vec<u64> = Vec::new();
        let mut best_f = -1.0;
        for (chars, words) in ref_chars.iter().zip(&ref_words) {
            let ref_runs = self.all_runs(chars, words, word_bits);
            let mut stats = Vec::with_capacity(3 * order);
            for (h, r) in hyp_runs.iter().zip(&ref_runs) {
                match_stats(h, r, &mut stats);
            }
            let f = self.f_score(&stats);
            if f > best_f {
                best_f = f;
                best = stats;
            }
        }
        best
    }

    /// Corpus chrF of `hyps` against reference streams `refs` (one `Vec` per stream), as
    /// sacreBLEU's `CHRF.corpus_score`.
    pub fn corpus_score<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<ChrfScore>
    where
        H: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        check_streams(hyps.len(), refs)?;
        let order = self.config.char_order + self.config.word_order;
        let mut sum = vec![0u64; 3 * order];
        for (i, hyp) in hyps.iter().enumerate() {
            let s = self.segment(hyp.as_ref(), refs.iter().map(|r| r.as_ref()[i].as_ref()));
            for (acc, v) in sum.iter_mut().zip(s) {
                *acc += v;
            }
        }
        Ok(self.score(&sum, refs.len()))
    }

    /// Sentence chrF of one hypothesis against its references (`CHRF.sentence_score`).
    pub fn sentence_score<S: AsRef<str>>(&self, hyp: &str, refs: &[S]) -> Result<ChrfScore> {
        if refs.is_empty() {
            return Err(Error::NoReferences);
        }
        let stats = self.segment(hyp, refs.iter().map(|r| r.as_ref()));
        Ok(self.score(&stats, refs.len()))
    }

    fn score(&self, stats: &[u64], nrefs: usize) -> ChrfScore {
        ChrfScore {
            score: self.f_score(stats),
            stats: stats.to_vec(),
            nrefs,
            config: self.config.clone(),
        }
    }
}

/// `_remove_punctuation`: words, with one ASCII punctuation character split off the end of a
/// word (else off its start).
fn remove_punctuation(sent: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for w in split_whitespace(sent) {
        let mut chars = w.chars();
        let first = chars.next();
        let last = chars.next_back();
        match (first, last) {
            (Some(_), None) | (None, _) => out.push(w),
            (Some(f), Some(l)) => {
                if is_ascii_punct(l) {
                    let cut = w.len() - l.len_utf8();
                    out.extend([&w[..cut], &w[cut..]]);
                } else if is_ascii_punct(f) {
                    let cut = f.len_utf8();
                    out.extend([&w[..cut], &w[cut..]]);
                } else {
                    out.push(w);
                }
            }
        }
    }
    out
}

/// A chrF / chrF++ score, printed as sacreBLEU's `CHRFScore`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChrfScore {
    /// The score, between 0 and 100.
    pub score: f64,
    /// The summed `[hyp, ref, match]` counts per order (character orders, then word orders).
    pub stats: Vec<u64>,
    nrefs: usize,
    config: ChrfConfig,
}

impl ChrfScore {
    /// The metric's name: `chrF2` or `chrF2++`.
    pub fn name(&self) -> String {
        self.config.name()
    }

    /// The number of references per segment.
    pub fn nrefs(&self) -> usize {
        self.nrefs
    }

    /// The configuration that produced the score.
    pub fn config(&self) -> &ChrfConfig {
        &self.config
    }

    /// The reproducibility signature, e.g.
    /// `nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0`.
    pub fn signature(&self) -> String {
        self.config.signature(self.nrefs)
    }

    /// sacreBLEU's `Score.format(width, score_only, signature, is_json)`; `with_signature`
    /// passes this score's signature (as the CLI does).
    pub fn format(
        &self,
        width: usize,
        score_only: bool,
        with_signature: bool,
        json: bool,
    ) -> String {
        let sig = if with_signature { self.signature() } else { String::new() };
        format_score(&self.name(), self.score, "", width, score_only, &sig, json)
    }

    /// The JSON object `sacrebleu REF -i HYP -m chrf -f json` prints (width 1).
    pub fn to_json(&self) -> String {
        self.format(1, false, true, true)
    }
}

impl fmt::Display for ChrfScore {
    /// `str(CHRFScore)`: `chrF2 = 59.73`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(2, false, false, false))
    }
}

/// Corpus chrF (sacreBLEU's `corpus_chrf`): `refs` holds one `Vec` per reference stream.
pub fn corpus_chrf<H, R, S>(hyps: &[H], refs: &[R], config: &ChrfConfig) -> Result<ChrfScore>
where
    H: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Chrf::new(config.clone())?.corpus_score(hyps, refs)
}

/// Sentence chrF (sacreBLEU's `sentence_chrf`).
pub fn sentence_chrf<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    config: &ChrfConfig,
) -> Result<ChrfScore> {
    Chrf::new(config.clone())?.sentence_score(hyp, refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_orders_beyond_packed_keys_count_the_same() {
        // 8 orders of 21-bit characters do not fit 128 bits: slice keys.
        let config = ChrfConfig { char_order: 8, ..ChrfConfig::default() };
        let chrf = Chrf::new(config).unwrap_or_else(|e| panic!("{e}"));
        let stats = chrf.segment("abcabcab", ["abcab"].into_iter());
        // sacreBLEU's CHRF(char_order=8)._compute_segment_statistics for "abcabcab" vs "abcab":
        // orders without reference n-grams count no hypothesis n-grams either.
        let expected = [8, 5, 5, 7, 4, 4, 6, 3, 3, 5, 2, 2, 4, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(stats, expected);
    }

    #[test]
    fn punctuation_is_split_off_one_end() {
        // sacreBLEU: CHRF()._remove_punctuation("(hi) a, ,b x")
        assert_eq!(
            remove_punctuation("(hi) a, ,b x ."),
            ["(hi", ")", "a", ",", ",", "b", "x", "."]
        );
    }
}
