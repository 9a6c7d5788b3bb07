//! Search strategies: one step of fairseq's `search.py`, `step(step, lprobs, scores)` → candidates.
//!
//! Each strategy looks at the (already adjusted) log-probabilities of every live hypothesis and
//! proposes, per sentence, a ranked list of candidate continuations: a cumulative score, a token
//! and the hypothesis (beam) it extends. The generator owns everything else (finalization,
//! length normalization, pruning). Strategies keep their scratch buffers between steps, so a
//! step allocates nothing once warmed up.
//!
//! - [`BeamSearch`]: the best `2 × beam` continuations over the whole beam (so that finished EOS
//!   hypotheses do not starve the beam).
//! - [`DiverseBeamSearch`]: splits the beam into groups, each searched by a [`BeamSearch`], with a
//!   penalty on tokens already picked by earlier groups at this step (composition, as fairseq).
//! - [`DiverseSiblingsSearch`]: penalizes the r-th best continuation of each hypothesis by
//!   `r × rate` before choosing across the beam.
//! - [`Sampling`]: one sample per hypothesis (top-k, nucleus or full distribution) from a
//!   seeded ChaCha20 generator, one stream per sentence.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::error::{Error, Result};
use super::select::{best_first, keep_best, top_k_by};
use crate::decoding::TopLogProbs;

/// The shape of a search step's input: `sentences × beam` rows of `vocab` log-probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepShape {
    /// Live sentences.
    pub sentences: usize,
    /// Hypotheses per sentence (rows per sentence).
    pub beam: usize,
    /// Vocabulary size (row width).
    pub vocab: usize,
}

impl StepShape {
    fn check(&self, step: usize, lprobs: &[f32], prev_scores: &[f32]) -> Result<()> {
        let rows = self.sentences * self.beam;
        if lprobs.len() != rows * self.vocab {
            return Err(Error::ShapeMismatch {
                what: "lprobs",
                expected: rows * self.vocab,
                actual: lprobs.len(),
            });
        }
        if step > 0 && prev_scores.len() != rows {
            return Err(Error::ShapeMismatch {
                what: "prev_scores",
                expected: rows,
                actual: prev_scores.len(),
            });
        }
        Ok(())
    }
}

/// Candidates of one step, `sentences × width`, best first within each sentence (fairseq's
/// `(cand_scores, cand_indices, cand_beams)`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Candidates {
    /// Number of sentences.
    pub sentences: usize,
    /// Candidates per sentence.
    pub width: usize,
    /// Cumulative scores (the hypothesis's score so far plus this token's), `sentences × width`.
    pub scores: Vec<f32>,
    /// Candidate tokens, `sentences × width`.
    pub tokens: Vec<u32>,
    /// The hypothesis each candidate extends, in `0..beam` within its sentence.
    pub beams: Vec<usize>,
}

impl Candidates {
    fn reset(&mut self, sentences: usize, width: usize) {
        self.sentences = sentences;
        self.width = width;
        self.scores.clear();
        self.tokens.clear();
        self.beams.clear();
    }

    fn push(&mut self, score: f32, token: u32, beam: usize) {
        self.scores.push(score);
        self.tokens.push(token);
        self.beams.push(beam);
    }
}

/// One search strategy (fairseq's `Search`).
pub trait Search {
    /// Called once before the first step with a key per sentence (a hash of its source), so that
    /// randomized strategies give each sentence its own stream, whatever the batch.
    fn start(&mut self, _sentence_keys: &[u64]) {}

    /// One step: `lprobs` holds `shape.sentences × shape.beam` rows of `shape.vocab`
    /// log-probabilities; `prev_scores` the cumulative score of each row at the previous step
    /// (unused at step 0, when all rows of a sentence are the same empty hypothesis). Writes the
    /// candidates to `out`.
    fn step(
        &mut self,
        step: usize,
        shape: StepShape,
        lprobs: &[f32],
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()>;

    /// Sentences were removed from the batch: keep the state of sentences `keep` (ascending
    /// indices into the previous batch).
    fn prune_sentences(&mut self, _keep: &[usize]) {}
}

/// Beam search: the best `min(2 × beam, candidates - 1)` continuations of each sentence.
#[derive(Debug, Clone, Default)]
pub struct BeamSearch {
    pool: Vec<(f32, u32)>,
    scratch: Vec<u32>,
}

impl BeamSearch {
    /// A beam search.
    pub fn new() -> Self {
        Self::default()
    }

    /// [`Search::step`] from each decoder row's best log-probabilities instead of whole rows
    /// (one row per sentence at step 0, `beam` after). `adjust(token, logprob)` applies the
    /// generator's per-token adjustments. With at least `2 × beam` entries per row left
    /// unchanged or lowered by `adjust`, the candidates equal those of [`Search::step`] on the
    /// full, adjusted rows: any token outside a row's list scores no better than every entry of
    /// it, so the best `2 × beam` of a sentence are among its rows' lists.
    pub(crate) fn step_top(
        &mut self,
        step: usize,
        shape: StepShape,
        top: &TopLogProbs,
        adjust: impl Fn(u32, f32) -> f32,
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()> {
        let StepShape { sentences, beam, vocab } = shape;
        let rows_used = if step == 0 { 1 } else { beam };
        let rows = if step == 0 { sentences } else { sentences * beam };
        if top.rows != rows || top.values.len() != rows * top.k || top.ids.len() != rows * top.k {
            return Err(Error::ShapeMismatch {
                what: "top log-probabilities",
                expected: rows * top.k,
                actual: top.values.len(),
            });
        }
        if step > 0 && prev_scores.len() != rows {
            return Err(Error::ShapeMismatch {
                what: "prev_scores",
                expected: rows,
                actual: prev_scores.len(),
            });
        }
        let k = (2 * beam).min((rows_used * vocab).saturating_sub(1));
        out.reset(sentences, k);
        for s in 0..sentences {
            self.pool.clear();
            for i in 0..rows_used {
                let r = if step == 0 { s } else { s * beam + i };
                let entries = r * top.k..(r + 1) * top.k;
                for (&v, &token) in top.values[entries.clone()].iter().zip(&top.ids[entries]) {
                    let v = adjust(token, v);
                    let score = if step == 0 { v } else { v + prev_scores[s * beam + i] };
                    self.pool.push((score, (i * vocab) as u32 + token));
                }
            }
            keep_best(&mut self.pool, k);
            for &(score, flat) in &self.pool {
                let flat = flat as usize;
                out.push(score, (flat % vocab) as u32, flat / vocab);
            }
        }
        Ok(())
    }
}

impl Search for BeamSearch {
    fn step(
        &mut self,
        step: usize,
        shape: StepShape,
        lprobs: &[f32],
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()> {
        shape.check(step, lprobs, prev_scores)?;
        let StepShape { sentences, beam, vocab } = shape;
        // At the first step all hypotheses are equally likely: use only the first.
        let rows_used = if step == 0 { 1 } else { beam };
        // The best 2 × beam; -1 so that padding is never selected.
        let k = (2 * beam).min((rows_used * vocab).saturating_sub(1));
        out.reset(sentences, k);
        for s in 0..sentences {
            self.pool.clear();
            for i in 0..rows_used {
                let r = s * beam + i;
                let row = &lprobs[r * vocab..(r + 1) * vocab];
                let base = (i * vocab) as u32;
                if step == 0 {
                    top_k_by(vocab, k, base, |t| row[t], &mut self.pool, &mut self.scratch);
                } else {
                    let prev = prev_scores[r];
                    top_k_by(vocab, k, base, |t| row[t] + prev, &mut self.pool, &mut self.scratch);
                }
            }
            keep_best(&mut self.pool, k);
            for &(score, flat) in &self.pool {
                let flat = flat as usize;
                out.push(score, (flat % vocab) as u32, flat / vocab);
            }
        }
        Ok(())
    }
}

/// Diverse beam search (Vijayakumar et al., 2016) with the Hamming diversity penalty, as
/// fairseq 0.12.2: the beam is split into `groups` groups of `beam / groups` rows (group `g` owns
/// rows `g, g + groups, …`), each searched by an inner [`BeamSearch`] after subtracting
/// `strength × (times the token is among earlier groups' candidates at this step)`. Candidates
/// of the groups are interleaved; their scores include the penalties.
#[derive(Debug, Clone)]
pub struct DiverseBeamSearch {
    groups: usize,
    strength: f32,
    inner: BeamSearch,
    group_lprobs: Vec<f32>,
    group_prev: Vec<f32>,
    group_out: Candidates,
    counts: Vec<f32>,
    touched: Vec<usize>,
}

impl DiverseBeamSearch {
    /// A diverse beam search with `groups` groups and penalty `strength`.
    pub fn new(groups: usize, strength: f64) -> Self {
        Self {
            groups,
            strength: strength as f32,
            inner: BeamSearch::new(),
            group_lprobs: Vec::new(),
            group_prev: Vec::new(),
            group_out: Candidates::default(),
            counts: Vec::new(),
            touched: Vec::new(),
        }
    }
}

impl Search for DiverseBeamSearch {
    fn step(
        &mut self,
        step: usize,
        shape: StepShape,
        lprobs: &[f32],
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()> {
        shape.check(step, lprobs, prev_scores)?;
        let StepShape { sentences, beam, vocab } = shape;
        let groups = self.groups;
        if groups == 0 || !beam.is_multiple_of(groups) {
            return Err(Error::BeamNotDivisibleByGroups { beam, groups });
        }
        let sub = beam / groups;
        let alpha = -self.strength;
        for &c in &self.touched {
            self.counts[c] = 0.0;
        }
        self.touched.clear();
        self.counts.resize(sentences * vocab, 0.0);
        let mut width = 0;
        for g in 0..groups {
            self.group_lprobs.clear();
            self.group_prev.clear();
            for s in 0..sentences {
                for i in 0..sub {
                    let r = s * beam + g + i * groups;
                    let row = &lprobs[r * vocab..(r + 1) * vocab];
                    if g > 0 {
                        let counts = &self.counts[s * vocab..(s + 1) * vocab];
                        self.group_lprobs
                            .extend(row.iter().zip(counts).map(|(&lp, &c)| lp + alpha * c));
                    } else {
                        self.group_lprobs.extend_from_slice(row);
                    }
                    if step > 0 {
                        self.group_prev.push(prev_scores[r]);
                    }
                }
            }
            let group_shape = StepShape { sentences, beam: sub, vocab };
            self.inner.step(
                step,
                group_shape,
                &self.group_lprobs,
                &self.group_prev,
                &mut self.group_out,
            )?;
            let gw = self.group_out.width;
            if g == 0 {
                width = gw * groups;
                out.reset(sentences, width);
                out.scores.resize(sentences * width, 0.0);
                out.tokens.resize(sentences * width, 0);
                out.beams.resize(sentences * width, 0);
            }
            for s in 0..sentences {
                for j in 0..gw {
                    let src = s * gw + j;
                    let dst = s * width + j * groups + g;
                    let token = self.group_out.tokens[src];
                    out.scores[dst] = self.group_out.scores[src];
                    out.tokens[dst] = token;
                    out.beams[dst] = self.group_out.beams[src] * groups + g;
                    let c = s * vocab + token as usize;
                    if self.counts[c] == 0.0 {
                        self.touched.push(c);
                    }
                    self.counts[c] += 1.0;
                }
            }
        }
        Ok(())
    }
}

/// Beam search with diverse siblings (Li et al., 2016, "A Simple, Fast Diverse Decoding
/// Algorithm for Neural Generation"), as fairseq's `DiverseSiblingsSearch`: each hypothesis's
/// `k` best continuations are penalized by `rank × rate` (rank from 1), then the best `k` over
/// the beam are kept. `rate = 0` is beam search. The first step is plain beam search.
#[derive(Debug, Clone)]
pub struct DiverseSiblingsSearch {
    rate: f32,
    beam_search: BeamSearch,
    pool: Vec<(f32, u32)>,
    row_best: Vec<(f32, u32)>,
    tokens: Vec<u32>,
    scratch: Vec<u32>,
}

impl DiverseSiblingsSearch {
    /// A diverse-siblings search with penalty `rate` per sibling rank.
    pub fn new(rate: f64) -> Self {
        Self {
            rate: rate as f32,
            beam_search: BeamSearch::new(),
            pool: Vec::new(),
            row_best: Vec::new(),
            tokens: Vec::new(),
            scratch: Vec::new(),
        }
    }
}

impl Search for DiverseSiblingsSearch {
    fn step(
        &mut self,
        step: usize,
        shape: StepShape,
        lprobs: &[f32],
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()> {
        if step == 0 {
            return self.beam_search.step(step, shape, lprobs, prev_scores, out);
        }
        shape.check(step, lprobs, prev_scores)?;
        let StepShape { sentences, beam, vocab } = shape;
        let k = (2 * beam).min((beam * vocab).saturating_sub(1));
        // fairseq takes topk(k) of each row; a row has only `vocab` entries.
        let per_row = k.min(vocab);
        out.reset(sentences, k);
        for s in 0..sentences {
            self.pool.clear();
            self.tokens.clear();
            for i in 0..beam {
                let r = s * beam + i;
                let row = &lprobs[r * vocab..(r + 1) * vocab];
                let prev = prev_scores[r];
                self.row_best.clear();
                top_k_by(
                    vocab,
                    per_row,
                    0,
                    |t| row[t] + prev,
                    &mut self.row_best,
                    &mut self.scratch,
                );
                for (j, &(score, token)) in self.row_best.iter().enumerate() {
                    let sibling = (j + 1) as f32 * self.rate;
                    self.pool.push((score - sibling, (i * per_row + j) as u32));
                    self.tokens.push(token);
                }
            }
            keep_best(&mut self.pool, k);
            for &(score, flat) in &self.pool {
                let flat = flat as usize;
                out.push(score, self.tokens[flat], flat / per_row);
            }
        }
        Ok(())
    }
}

/// Sampling, as fairseq's `Sampling`: at step 0 `beam` samples (with replacement) from each
/// sentence's first row, then one sample per row. With `top_k`, only the `k` most likely tokens
/// are drawn; with `top_p`, only the smallest set of most likely tokens whose cumulative
/// probability reaches `top_p` (fairseq's `_sample_topp`: the tokens whose running sum stays
/// below `p`, plus one). Probabilities are not renormalized for the scores: a candidate's score
/// is its log-probability (plus the hypothesis's score). Temperature is applied by the generator
/// to the log-probabilities before they get here, as fairseq applies it in the model.
///
/// Each sentence draws from its own ChaCha20 stream (seed `seed`, stream = the sentence key
/// from [`Search::start`]), so samples do not depend on batch composition.
#[derive(Debug, Clone)]
pub struct Sampling {
    top_k: Option<usize>,
    top_p: Option<f32>,
    seed: u64,
    rngs: Vec<ChaCha20Rng>,
    dist: Vec<(f32, u32)>,
    scratch: Vec<u32>,
}

impl Sampling {
    /// A sampler; `top_k` and `top_p` are exclusive (`top_p` wins if both are given).
    pub fn new(top_k: Option<usize>, top_p: Option<f64>, seed: u64) -> Self {
        Self {
            top_k,
            top_p: top_p.map(|p| p as f32),
            seed,
            rngs: Vec::new(),
            dist: Vec::new(),
            scratch: Vec::new(),
        }
    }

    fn rng_for(seed: u64, key: u64) -> ChaCha20Rng {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        rng.set_stream(key);
        rng
    }

    /// Fills `self.dist` with the `(probability, token)` pairs a row may be sampled from.
    fn build_distribution(&mut self, row: &[f32]) {
        let vocab = row.len();
        self.dist.clear();
        if let Some(p) = self.top_p {
            // Grow a sorted prefix until the running sum reaches p (usually a handful of tokens).
            // Selected by log-probability (exp is monotone), then ordered by probability.
            let mut m = vocab.min(32);
            loop {
                self.dist.clear();
                top_k_by(vocab, m, 0, |t| row[t], &mut self.dist, &mut self.scratch);
                for entry in &mut self.dist {
                    entry.0 = entry.0.exp();
                }
                self.dist.sort_by(|a, b| best_first(*a, *b));
                let mut cum = 0.0f64;
                let mut below = 0;
                for &(prob, _) in &self.dist {
                    cum += f64::from(prob);
                    if (cum as f32) < p {
                        below += 1;
                    } else {
                        break;
                    }
                }
                if below < m || m == vocab {
                    self.dist.truncate((below + 1).min(vocab));
                    return;
                }
                m = (2 * m).min(vocab);
            }
        } else if let Some(k) = self.top_k {
            top_k_by(vocab, k, 0, |t| row[t], &mut self.dist, &mut self.scratch);
            for entry in &mut self.dist {
                entry.0 = entry.0.exp();
            }
        } else {
            self.dist.extend(row.iter().enumerate().map(|(t, &lp)| (lp.exp(), t as u32)));
        }
    }

    /// Draws from `self.dist`: `(token, log-probability)`. A distribution without mass (every
    /// token forbidden) yields its first token with score `-inf`, a dead hypothesis.
    fn draw(dist: &[(f32, u32)], rng: &mut ChaCha20Rng) -> (u32, f32) {
        let total: f64 = dist.iter().map(|&(p, _)| f64::from(p)).sum();
        let Some(&(_, first)) = dist.first() else {
            return (0, f32::NEG_INFINITY);
        };
        if !(total > 0.0 && total.is_finite()) {
            return (first, f32::NEG_INFINITY);
        }
        let unit = (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let target = unit * total;
        let mut cum = 0.0f64;
        let mut last = (first, 0.0f32);
        for &(p, token) in dist {
            if p > 0.0 {
                cum += f64::from(p);
                last = (token, p);
                if cum > target {
                    return (token, p.ln());
                }
            }
        }
        (last.0, last.1.ln())
    }
}

impl Search for Sampling {
    fn start(&mut self, sentence_keys: &[u64]) {
        let seed = self.seed;
        self.rngs = sentence_keys.iter().map(|&key| Self::rng_for(seed, key)).collect();
    }

    fn step(
        &mut self,
        step: usize,
        shape: StepShape,
        lprobs: &[f32],
        prev_scores: &[f32],
        out: &mut Candidates,
    ) -> Result<()> {
        shape.check(step, lprobs, prev_scores)?;
        let StepShape { sentences, beam, vocab } = shape;
        if self.rngs.is_empty() {
            // Not started (a bare step, e.g. in a benchmark): stream = sentence index.
            let seed = self.seed;
            self.rngs = (0..sentences as u64).map(|s| Self::rng_for(seed, s)).collect();
        }
        if self.rngs.len() != sentences {
            return Err(Error::ShapeMismatch {
                what: "sampling streams (sentences)",
                expected: sentences,
                actual: self.rngs.len(),
            });
        }
        out.reset(sentences, beam);
        for s in 0..sentences {
            if step == 0 {
                let r = s * beam;
                self.build_distribution(&lprobs[r * vocab..(r + 1) * vocab]);
                for _ in 0..beam {
                    let (token, score) = Self::draw(&self.dist, &mut self.rngs[s]);
                    out.push(score, token, 0);
                }
            } else {
                for i in 0..beam {
                    let r = s * beam + i;
                    self.build_distribution(&lprobs[r * vocab..(r + 1) * vocab]);
                    let (token, score) = Self::draw(&self.dist, &mut self.rngs[s]);
                    out.push(score + prev_scores[r], token, i);
                }
            }
        }
        Ok(())
    }

    fn prune_sentences(&mut self, keep: &[usize]) {
        for (new, &old) in keep.iter().enumerate() {
            self.rngs.swap(new, old);
        }
        self.rngs.truncate(keep.len());
    }
}
