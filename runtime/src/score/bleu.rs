//! BLEU (Papineni et al., 2002) exactly as sacreBLEU 2.6.0's `sacrebleu/metrics/bleu.py`.
//!
//! Each segment is lowercased (optionally), right-stripped and tokenized, its n-grams (1 to
//! `max_ngram_order`) are clipped by the maximum count over its references, and the reference
//! length is the closest to the hypothesis length (the shorter on ties). The corpus score sums
//! these statistics over segments; sentence BLEU is the corpus score of one segment.
//!
//! ```
//! use seqforge_runtime::score::{BleuConfig, corpus_bleu};
//!
//! let hyps = ["The cat sat on the mat."];
//! let refs = vec![vec!["The cat sat on the mat.".to_string()]];
//! let score = corpus_bleu(&hyps, &refs, &BleuConfig::default())?;
//! assert_eq!(score.to_string(), "BLEU = 100.00 100.0/100.0/100.0/100.0 (BP = 1.000 ratio = 1.000 hyp_len = 7 ref_len = 7)");
//! assert_eq!(score.signature(), "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0");
//! # Ok::<(), seqforge_runtime::score::Error>(())
//! ```

use std::fmt;
use std::str::FromStr;

use super::format::{format_score, py_fixed};
use super::ngram::{
    Interner, Runs, all_order_runs, clipped_matches, fits, max_runs, runs, total as ngram_total,
};
use super::text::{lower, rstrip, split_whitespace};
use super::{Error, Result, SACREBLEU_VERSION, Tokenizer, check_streams};

/// sacreBLEU's default maximum n-gram order.
pub const MAX_NGRAM_ORDER: usize = 4;

/// A smoothing method (Chen & Cherry, 2014), as sacreBLEU's `smooth_method` / `smooth_value`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Smoothing {
    /// `exp`: NIST's geometric decay for orders without matches (mteval-v13a; the default).
    #[default]
    Exp,
    /// `floor`: orders without matches get `value` matches (default 0.1).
    Floor(Option<f64>),
    /// `add-k`: `k` is added to the matches and totals of orders above 1 (default 1).
    AddK(Option<f64>),
    /// `none`: no smoothing.
    None,
}

impl Smoothing {
    /// The method's name (`exp`, `floor`, `add-k`, `none`).
    pub fn method(self) -> &'static str {
        match self {
            Smoothing::Exp => "exp",
            Smoothing::Floor(_) => "floor",
            Smoothing::AddK(_) => "add-k",
            Smoothing::None => "none",
        }
    }

    /// Builds a method from its name and optional value (sacreBLEU's `--smooth-method`,
    /// `--smooth-value`); the value is ignored by `exp` and `none`, as in sacreBLEU.
    pub fn from_method(method: &str, value: Option<f64>) -> Result<Self> {
        if let Some(v) = value
            && !v.is_finite()
        {
            return Err(Error::InvalidOption {
                option: "smooth-value",
                reason: format!("{v} is not a finite number"),
            });
        }
        match method {
            "exp" => Ok(Smoothing::Exp),
            "floor" => Ok(Smoothing::Floor(value)),
            "add-k" => Ok(Smoothing::AddK(value)),
            "none" => Ok(Smoothing::None),
            other => Err(Error::InvalidOption {
                option: "smooth-method",
                reason: format!("unknown method `{other}` (known: exp, floor, add-k, none)"),
            }),
        }
    }

    /// The value in effect: the given one or sacreBLEU's default (`floor` 0.1, `add-k` 1).
    pub fn value(self) -> Option<f64> {
        match self {
            Smoothing::Floor(v) => Some(v.unwrap_or(0.1)),
            Smoothing::AddK(v) => Some(v.unwrap_or(1.0)),
            Smoothing::Exp | Smoothing::None => None,
        }
    }

    /// The signature's `smooth` field: `exp`, `none`, `floor[0.10]`, `add-k[1.00]`.
    pub fn signature(self) -> String {
        match self.value() {
            Some(v) => format!("{}[{}]", self.method(), py_fixed(v, 2)),
            None => self.method().to_owned(),
        }
    }
}

impl FromStr for Smoothing {
    type Err = Error;

    /// Parses a method name with its default value.
    fn from_str(s: &str) -> Result<Self> {
        Smoothing::from_method(s, None)
    }
}

/// BLEU's options, as sacreBLEU's `BLEU(...)` constructor takes them.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuConfig {
    /// The tokenizer (default `13a`).
    pub tokenizer: Tokenizer,
    /// Lowercase hypotheses and references first (signature `case:lc`).
    pub lowercase: bool,
    /// The smoothing method.
    pub smoothing: Smoothing,
    /// Stop at the highest n-gram order the hypotheses have (signature `eff:yes`); sacreBLEU's
    /// corpus BLEU leaves it off, its sentence BLEU turns it on.
    pub effective_order: bool,
    /// The highest n-gram order (default 4).
    pub max_ngram_order: usize,
}

impl Default for BleuConfig {
    fn default() -> Self {
        Self {
            tokenizer: Tokenizer::default(),
            lowercase: false,
            smoothing: Smoothing::default(),
            effective_order: false,
            max_ngram_order: MAX_NGRAM_ORDER,
        }
    }
}

impl BleuConfig {
    /// sacreBLEU's `sentence_bleu` defaults: as [`Default`] but with effective order on.
    pub fn sentence() -> Self {
        Self { effective_order: true, ..Self::default() }
    }

    /// The signature for `nrefs` references.
    pub fn signature(&self, nrefs: usize) -> String {
        format!(
            "nrefs:{nrefs}|case:{}|eff:{}|tok:{}|smooth:{}|version:{SACREBLEU_VERSION}",
            if self.lowercase { "lc" } else { "mixed" },
            if self.effective_order { "yes" } else { "no" },
            self.tokenizer.name(),
            self.smoothing.signature(),
        )
    }
}

/// A BLEU scorer for one configuration.
#[derive(Debug, Clone)]
pub struct Bleu {
    config: BleuConfig,
}

/// BLEU's sufficient statistics (sacreBLEU's `[sys_len, ref_len, correct…, total…]`) of a
/// segment or a corpus: they add up over segments (and over batches or workers, as fairseq's
/// `--eval-bleu` sums them), and [`Bleu::score_stats`] turns a sum into a score.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BleuStats {
    /// Hypothesis length in tokens.
    pub hyp_len: u64,
    /// Closest reference length in tokens.
    pub ref_len: u64,
    /// Clipped n-gram matches per order (1 to `max_ngram_order`).
    pub correct: Vec<u64>,
    /// Hypothesis n-grams per order.
    pub total: Vec<u64>,
}

impl BleuStats {
    /// Zero statistics for n-gram orders 1 to `max_ngram_order`.
    pub fn zeros(max_ngram_order: usize) -> Self {
        Self {
            hyp_len: 0,
            ref_len: 0,
            correct: vec![0; max_ngram_order],
            total: vec![0; max_ngram_order],
        }
    }

    /// Adds `other` (of the same n-gram order) to these statistics.
    pub fn add(&mut self, other: &BleuStats) {
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
        for (a, b) in self.correct.iter_mut().zip(&other.correct) {
            *a += b;
        }
        for (a, b) in self.total.iter_mut().zip(&other.total) {
            *a += b;
        }
    }
}

impl Bleu {
    /// A scorer for `config`; rejects a zero n-gram order.
    pub fn new(config: BleuConfig) -> Result<Self> {
        if config.max_ngram_order == 0 {
            return Err(Error::InvalidOption {
                option: "max_ngram_order",
                reason: "must be at least 1".into(),
            });
        }
        if let Some(v) = config.smoothing.value()
            && !v.is_finite()
        {
            return Err(Error::InvalidOption {
                option: "smooth-value",
                reason: format!("{v} is not a finite number"),
            });
        }
        Ok(Self { config })
    }

    /// The configuration.
    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// `_preprocess_segment`: lowercase, right-strip, tokenize.
    fn preprocess(&self, line: &str) -> String {
        if self.config.lowercase {
            self.config.tokenizer.tokenize(rstrip(&lower(line)))
        } else {
            self.config.tokenizer.tokenize(rstrip(line))
        }
    }

    /// The statistics of one hypothesis against its references (sacreBLEU's
    /// `_compute_segment_statistics`).
    pub fn segment_stats<S: AsRef<str>>(&self, hyp: &str, refs: &[S]) -> BleuStats {
        self.segment(hyp, refs.iter().map(|r| r.as_ref()))
    }

    fn segment<S: AsRef<str>>(&self, hyp: &str, refs: impl Iterator<Item = S>) -> BleuStats {
        let max_n = self.config.max_ngram_order;
        let ref_strings: Vec<String> = refs.map(|r| self.preprocess(r.as_ref())).collect();
        let hyp_string = self.preprocess(hyp);
        let mut interner = Interner::new();
        let ref_ids: Vec<Vec<u32>> = ref_strings
            .iter()
            .map(|r| interner.ids(&split_whitespace(r).collect::<Vec<_>>()))
            .collect();
        let hyp_ids = interner.ids(&split_whitespace(&hyp_string).collect::<Vec<_>>());
        let bits = interner.bits();
        let hyp_len = hyp_ids.len() as u64;
        // _get_closest_ref_len: the closest length, the shorter one on ties.
        let mut closest: Option<(u64, u64)> = None;
        for ids in &ref_ids {
            let len = ids.len() as u64;
            let diff = hyp_len.abs_diff(len);
            closest = match closest {
                None => Some((diff, len)),
                Some((d, l)) if diff < d || (diff == d && len < l) => Some((diff, len)),
                keep => keep,
            };
        }
        let ref_len = closest.map_or(0, |(_, l)| l);
        let mut correct = vec![0; max_n];
        let mut total = vec![0; max_n];
        if fits(max_n, bits) {
            let h = all_order_runs(&hyp_ids, max_n, bits);
            let mut r: Vec<Vec<Runs<u128>>> =
                ref_ids.iter().map(|ids| all_order_runs(ids, max_n, bits)).collect();
            for n in 0..max_n {
                let merged =
                    max_runs(r.iter_mut().map(|orders| std::mem::take(&mut orders[n])).collect());
                correct[n] = clipped_matches(&h[n], &merged);
                total[n] = ngram_total(&h[n]);
            }
        } else {
            for n in 1..=max_n {
                let h = runs(hyp_ids.windows(n).collect());
                let r =
                    max_runs(ref_ids.iter().map(|ids| runs(ids.windows(n).collect())).collect());
                correct[n - 1] = clipped_matches(&h, &r);
                total[n - 1] = ngram_total(&h);
            }
        }
        BleuStats { hyp_len, ref_len, correct, total }
    }

    /// The summed statistics of `hyps` against reference streams `refs` (one `Vec` per
    /// reference stream, each with one line per hypothesis).
    pub fn corpus_stats<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<BleuStats>
    where
        H: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        check_streams(hyps.len(), refs)?;
        let mut sum = BleuStats::zeros(self.config.max_ngram_order);
        for (i, hyp) in hyps.iter().enumerate() {
            sum.add(&self.segment(hyp.as_ref(), refs.iter().map(|r| r.as_ref()[i].as_ref())));
        }
        Ok(sum)
    }

    /// Corpus BLEU of `hyps` against reference streams `refs` (one `Vec` per reference
    /// stream, each with one line per hypothesis), as sacreBLEU's `BLEU.corpus_score`.
    pub fn corpus_score<H, R, S>(&self, hyps: &[H], refs: &[R]) -> Result<BleuScore>
    where
        H: AsRef<str>,
        R: AsRef<[S]>,
        S: AsRef<str>,
    {
        let stats = self.corpus_stats(hyps, refs)?;
        Ok(self.compute(&stats, refs.len()))
    }

    /// The score of summed statistics (sacreBLEU's `_compute_score_from_stats`); `nrefs` is
    /// the number of references per segment, for the signature.
    pub fn score_stats(&self, stats: &BleuStats, nrefs: usize) -> Result<BleuScore> {
        let max_n = self.config.max_ngram_order;
        if stats.correct.len() != max_n || stats.total.len() != max_n {
            return Err(Error::InvalidOption {
                option: "stats",
                reason: format!(
                    "{} matches and {} totals for n-gram order {max_n}",
                    stats.correct.len(),
                    stats.total.len()
                ),
            });
        }
        Ok(self.compute(stats, nrefs))
    }

    /// Sentence BLEU of one hypothesis against its references, as sacreBLEU's
    /// `BLEU.sentence_score` (use [`BleuConfig::sentence`] for `sentence_bleu`'s defaults).
    pub fn sentence_score<S: AsRef<str>>(&self, hyp: &str, refs: &[S]) -> Result<BleuScore> {
        if refs.is_empty() {
            return Err(Error::NoReferences);
        }
        let stats = self.segment(hyp, refs.iter().map(|r| r.as_ref()));
        Ok(self.compute(&stats, refs.len()))
    }

    /// `BLEU.compute_bleu`, in sacreBLEU's order of floating-point operations.
    fn compute(&self, stats: &BleuStats, nrefs: usize) -> BleuScore {
        let max_n = self.config.max_ngram_order;
        let (sys_len, ref_len) = (stats.hyp_len, stats.ref_len);
        let mut bp = 1.0;
        if sys_len < ref_len {
            bp = if sys_len > 0 { (1.0 - ref_len as f64 / sys_len as f64).exp() } else { 0.0 };
        }
        let mut precisions = vec![0.0; max_n];
        let mut score = 0.0;
        if stats.correct.iter().any(|&c| c != 0) {
            let smoothing = self.config.smoothing;
            let smooth_value = smoothing.value().unwrap_or(0.0);
            let mut correct: Vec<f64> = stats.correct.iter().map(|&c| c as f64).collect();
            let mut total: Vec<f64> = stats.total.iter().map(|&c| c as f64).collect();
            let mut smooth_mteval = 1.0;
            let mut eff_order = max_n;
            for n in 1..=max_n {
                if matches!(smoothing, Smoothing::AddK(_)) && n > 1 {
                    correct[n - 1] += smooth_value;
                    total[n - 1] += smooth_value;
                }
                if total[n - 1] == 0.0 {
                    break;
                }
                if self.config.effective_order {
                    eff_order = n;
                }
                if correct[n - 1] == 0.0 {
                    match smoothing {
                        Smoothing::Exp => {
                            smooth_mteval *= 2.0;
                            precisions[n - 1] = 100.0 / (smooth_mteval * total[n - 1]);
                        }
                        Smoothing::Floor(_) => {
                            precisions[n - 1] = 100.0 * smooth_value / total[n - 1];
                        }
                        Smoothing::AddK(_) | Smoothing::None => {}
                    }
                } else {
                    precisions[n - 1] = 100.0 * correct[n - 1] / total[n - 1];
                }
            }
            let mut log_sum = 0.0;
            for &p in &precisions[..eff_order] {
                log_sum += my_log(p);
            }
            score = bp * (log_sum / eff_order as f64).exp();
        }
        let ratio = if ref_len > 0 { sys_len as f64 / ref_len as f64 } else { 0.0 };
        BleuScore {
            score,
            counts: stats.correct.clone(),
            totals: stats.total.clone(),
            precisions,
            bp,
            ratio,
            sys_len,
            ref_len,
            nrefs,
            config: self.config.clone(),
        }
    }
}

/// sacreBLEU's `my_log`: `log`, with `log(0)` floored to `-9999999999`.
fn my_log(x: f64) -> f64 {
    if x == 0.0 { -9_999_999_999.0 } else { x.ln() }
}

/// A BLEU score with its statistics, printed as sacreBLEU's `BLEUScore`.
#[derive(Debug, Clone, PartialEq)]
pub struct BleuScore {
    /// The score, between 0 and 100.
    pub score: f64,
    /// Matched n-grams per order (before `add-k` smoothing adds to them).
    pub counts: Vec<u64>,
    /// Hypothesis n-grams per order (before `add-k` smoothing adds to them).
    pub totals: Vec<u64>,
    /// The n-gram precisions in percent, after smoothing.
    pub precisions: Vec<f64>,
    /// The brevity penalty.
    pub bp: f64,
    /// Hypothesis length over reference length (0 when the reference length is 0).
    pub ratio: f64,
    /// The hypotheses' length in tokens.
    pub sys_len: u64,
    /// The effective reference length in tokens.
    pub ref_len: u64,
    nrefs: usize,
    config: BleuConfig,
}

impl BleuScore {
    /// The metric's name, `BLEU`.
    pub fn name(&self) -> &'static str {
        "BLEU"
    }

    /// The number of references per segment.
    pub fn nrefs(&self) -> usize {
        self.nrefs
    }

    /// The configuration that produced the score.
    pub fn config(&self) -> &BleuConfig {
        &self.config
    }

    /// The reproducibility signature, e.g.
    /// `nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0`.
    pub fn signature(&self) -> String {
        self.config.signature(self.nrefs)
    }

    /// sacreBLEU's verbose part: `60.8/35.1/22.6/15.1 (BP = 1.000 ratio = 1.027 hyp_len = … ref_len = …)`.
    pub fn verbose(&self) -> String {
        let precisions: Vec<String> = self.precisions.iter().map(|&p| py_fixed(p, 1)).collect();
        format!(
            "{} (BP = {} ratio = {} hyp_len = {} ref_len = {})",
            precisions.join("/"),
            py_fixed(self.bp, 3),
            py_fixed(self.ratio, 3),
            self.sys_len,
            self.ref_len
        )
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
        format_score(self.name(), self.score, &self.verbose(), width, score_only, &sig, json)
    }

    /// The JSON object `sacrebleu REF -i HYP -m bleu -f json` prints (width 1, with the
    /// signature's fields).
    pub fn to_json(&self) -> String {
        self.format(1, false, true, true)
    }
}

impl fmt::Display for BleuScore {
    /// `str(BLEUScore)`: `BLEU = 29.44 60.8/35.1/22.6/15.1 (BP = … ref_len = …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.format(2, false, false, false))
    }
}

/// Corpus BLEU (sacreBLEU's `corpus_bleu`): `refs` holds one `Vec` per reference stream.
pub fn corpus_bleu<H, R, S>(hyps: &[H], refs: &[R], config: &BleuConfig) -> Result<BleuScore>
where
    H: AsRef<str>,
    R: AsRef<[S]>,
    S: AsRef<str>,
{
    Bleu::new(config.clone())?.corpus_score(hyps, refs)
}

/// Sentence BLEU (sacreBLEU's `sentence_bleu` with `config`; [`BleuConfig::sentence`] gives
/// its defaults).
pub fn sentence_bleu<S: AsRef<str>>(
    hyp: &str,
    refs: &[S],
    config: &BleuConfig,
) -> Result<BleuScore> {
    Bleu::new(config.clone())?.sentence_score(hyp, refs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_reference_length_prefers_the_shorter_on_ties() {
        let bleu = Bleu::new(BleuConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let s = bleu.segment("a b c", ["a b", "a b c d", "x"].into_iter());
        assert_eq!((s.hyp_len, s.ref_len), (3, 2));
        assert_eq!((s.correct, s.total), (vec![3, 2, 1, 0], vec![3, 2, 1, 0]));
    }

    #[test]
    fn orders_beyond_packed_keys_count_the_same() {
        // 40 distinct tokens need 6 bits: 25 orders do not fit 128 bits and use slice keys.
        let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
        let hyp = words.join(" ");
        let reference = words[..30].join(" ");
        let config =
            BleuConfig { max_ngram_order: 25, tokenizer: Tokenizer::None, ..BleuConfig::default() };
        let bleu = Bleu::new(config).unwrap_or_else(|e| panic!("{e}"));
        let s = bleu.segment(&hyp, [reference.as_str()].into_iter());
        let expect_total: Vec<u64> = (1..=25).map(|n| 41 - n).collect();
        let expect_correct: Vec<u64> = (1..=25).map(|n| 31 - n).collect();
        assert_eq!((s.total, s.correct), (expect_total, expect_correct));
    }

    #[test]
    fn summed_segment_stats_score_as_the_corpus() {
        let bleu = Bleu::new(BleuConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        let hyps = ["the cat sat on the mat", "a dog barked loudly today"];
        let refs = [["the cat is on the mat"], ["the dog barked loudly"]];
        let mut sum = BleuStats::zeros(MAX_NGRAM_ORDER);
        for (h, r) in hyps.iter().zip(&refs) {
            sum.add(&bleu.segment_stats(h, r));
        }
        let streams = vec![vec![refs[0][0], refs[1][0]]];
        let corpus = bleu.corpus_score(&hyps, &streams).unwrap_or_else(|e| panic!("{e}"));
        let from_stats = bleu.score_stats(&sum, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(from_stats, corpus);
        assert_eq!((sum.hyp_len, sum.ref_len, sum.correct[0]), (11, 10, 8));
        assert!(bleu.score_stats(&BleuStats::zeros(3), 1).is_err());
    }

    #[test]
    fn mismatched_streams_are_named() {
        let err = corpus_bleu(&["a", "b"], &[vec!["a".to_string()]], &BleuConfig::default());
        let msg = err.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
        assert!(msg.contains("hypotheses has 2 lines but reference stream 1 has 1"), "{msg}");
    }

    #[test]
    fn smoothing_signatures() {
        assert_eq!(Smoothing::Floor(None).signature(), "floor[0.10]");
        assert_eq!(Smoothing::AddK(None).signature(), "add-k[1.00]");
        assert_eq!(Smoothing::Floor(Some(0.25)).signature(), "floor[0.25]");
        assert_eq!(Smoothing::Exp.signature(), "exp");
    }
}
