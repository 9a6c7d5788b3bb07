//! The generator: fairseq 0.12.2's `SequenceGenerator._generate` over an [`IncrementalDecoder`].
//!
//! All sentences are decoded together. Each step:
//! 1. the decoder scores the next token of every live hypothesis;
//! 2. the log-probabilities are adjusted: temperature (sampling), NaN → `-inf`, `<pad>` and
//!    `<s>` forbidden, `unkpen` subtracted from `<unk>`, only EOS allowed at the sentence's
//!    maximum length, forced prefix tokens, EOS forbidden before `min_len`, repeated n-grams
//!    forbidden;
//! 3. the strategy proposes candidates (`2 × beam` for beam search);
//! 4. EOS candidates among each sentence's first `beam` candidates are finalized (score
//!    `sum(logprob) / len^lenpen`, a language model's prompt counted in both); a sentence is
//!    finished once it has `beam` finalized hypotheses, or at its maximum length;
//! 5. finished sentences are pruned (a shorter [`IncrementalDecoder::reorder`] index) and each
//!    remaining sentence continues with its first `beam` non-EOS candidates.
//!
//! Where this differs from fairseq is listed in the [`search`](super) module documentation.

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::ngram::block_repeated_ngrams;
use super::options::{GenerationOptions, Strategy};
use super::select::best_first;
use super::strategies::{
    BeamSearch, Candidates, DiverseBeamSearch, DiverseSiblingsSearch, Sampling, Search, StepShape,
};
use crate::decoding::{IncrementalDecoder, SpecialTokens};

/// One finished hypothesis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hypothesis {
    /// The generated tokens, ending with EOS (a forced prefix included).
    pub tokens: Vec<u32>,
    /// `sum(positional_scores) / len^lenpen` (just the sum with `normalize_scores = false`;
    /// `-inf` for a hypothesis longer than its source under `match_source_len`). For a
    /// language model the prompt counts as in fairseq: `(prompt + sum(positional_scores)) /
    /// (prompt tokens + len)^lenpen`, the prompt's summed log-probability and its tokens added
    /// (the tokens and positional scores are the continuation's).
    pub score: f32,
    /// Log-probability of each token (after penalties), one per entry of `tokens`.
    pub positional_scores: Vec<f32>,
}

/// Generates up to `options.nbest` hypotheses for each source sentence (each a list of token
/// ids ending with EOS), best first.
pub fn generate<D: IncrementalDecoder>(
    decoder: &mut D,
    sources: &[Vec<u32>],
    options: &GenerationOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    run(decoder, sources, None, options)
}

/// Like [`generate`], forcing each output to begin with the sentence's prefix (its first
/// `options.prefix_size` tokens, or all of it when `prefix_size` is 0), as fairseq's
/// `--prefix-size` does with the reference targets. An empty prefix forces nothing.
pub fn generate_with_prefixes<D: IncrementalDecoder>(
    decoder: &mut D,
    sources: &[Vec<u32>],
    prefixes: &[Vec<u32>],
    options: &GenerationOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    if prefixes.len() != sources.len() {
        return Err(Error::PrefixCount { sources: sources.len(), prefixes: prefixes.len() });
    }
    run(decoder, sources, Some(prefixes), options)
}

/// A stable 64-bit key of a source sentence (FNV-1a over its tokens): the sampling stream.
fn sentence_key(source: &[u32]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &token in source {
        for byte in token.to_le_bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// What is fixed per sentence for a whole run.
struct Plan {
    max_len: usize,
    /// A language model's prompt: its tokens' summed log-probability and count (see
    /// [`IncrementalDecoder::prompt_scores`]); zero otherwise.
    prompt_score: f32,
    prompt_len: usize,
    /// Source length without EOS and padding (for `match_source_len`).
    src_len: usize,
    prefix: Vec<u32>,
}

fn plan_sentences(
    sources: &[Vec<u32>],
    prefixes: Option<&[Vec<u32>]>,
    options: &GenerationOptions,
    special: SpecialTokens,
    vocab: usize,
    max_positions: &dyn Fn(&[u32]) -> usize,
) -> Result<Vec<Plan>> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let cap = max_positions(source).saturating_sub(1);
            let src_len = source.iter().filter(|&&t| t != special.eos && t != special.pad).count();
            let max_len = if options.match_source_len {
                src_len.min(cap)
            } else {
                // fairseq: int(max_len_a * src_len + max_len_b), src_len counting EOS.
                let len = options.max_len_a * source.len() as f64 + options.max_len_b as f64;
                (len as usize).min(cap)
            };
            if options.min_len > max_len {
                return Err(Error::MinLenExceedsMaxLen {
                    sentence: i,
                    min_len: options.min_len,
                    max_len,
                });
            }
            let prefix = match prefixes {
                Some(prefixes) => {
                    let given = &prefixes[i];
                    let take = if options.prefix_size > 0 {
                        options.prefix_size.min(given.len())
                    } else {
                        given.len()
                    };
                    let prefix = &given[..take];
                    if let Some(&token) = prefix.iter().find(|&&t| t as usize >= vocab) {
                        return Err(Error::PrefixTokenOutOfVocabulary {
                            sentence: i,
                            token,
                            vocab,
                        });
                    }
                    prefix.to_vec()
                }
                None => Vec::new(),
            };
            Ok(Plan { max_len, src_len, prefix, prompt_score: 0.0, prompt_len: 0 })
        })
        .collect()
}

fn build_search(strategy: &Strategy) -> Box<dyn Search> {
    match *strategy {
        Strategy::Beam | Strategy::Greedy => Box::new(BeamSearch::new()),
        Strategy::DiverseBeam { groups, strength } => {
            Box::new(DiverseBeamSearch::new(groups, strength))
        }
        Strategy::DiverseSiblings { rate } => Box::new(DiverseSiblingsSearch::new(rate)),
        Strategy::Sampling { top_k, top_p, seed, .. } => {
            Box::new(Sampling::new(top_k, top_p, seed))
        }
    }
}

/// `log_softmax(row / temperature)`: for log-probabilities this equals fairseq's
/// `log_softmax(logits / temperature)`.
fn apply_temperature(row: &mut [f32], temperature: f32) {
    let mut max = f32::NEG_INFINITY;
    for v in row.iter_mut() {
        *v /= temperature;
        if *v > max {
            max = *v;
        }
    }
    if !max.is_finite() {
        return;
    }
    let sum: f64 = row.iter().map(|&v| f64::from((v - max).exp())).sum();
    let log_z = max + sum.ln() as f32;
    for v in row.iter_mut() {
        *v -= log_z;
    }
}

/// Fixed settings of the per-row adjustments.
struct Adjust {
    special: SpecialTokens,
    temperature: Option<f32>,
    unkpen: f32,
    min_len: usize,
}

impl Adjust {
    /// fairseq's order: temperature (in the model), NaN, pad, unk, max length, prefix or min_len.
    fn row(&self, row: &mut [f32], step: usize, plan: &Plan) {
        let SpecialTokens { bos, pad, eos, unk } = self.special;
        if let Some(t) = self.temperature {
            apply_temperature(row, t);
        }
        for v in row.iter_mut() {
            if v.is_nan() {
                *v = f32::NEG_INFINITY;
            }
        }
        row[pad as usize] = f32::NEG_INFINITY;
        row[bos as usize] = f32::NEG_INFINITY;
        if self.unkpen != 0.0 {
            row[unk as usize] -= self.unkpen;
        }
        if step >= plan.max_len {
            keep_only(row, eos as usize);
        }
        if step < plan.prefix.len() && step < plan.max_len {
            let forced = plan.prefix[step];
            if forced != pad {
                keep_only(row, forced as usize);
            }
        } else if step < self.min_len {
            row[eos as usize] = f32::NEG_INFINITY;
        }
    }
}

impl Adjust {
    /// [`Adjust::row`] for one entry, on steps where no sentence is at its maximum length or
    /// in its forced prefix, and without temperature.
    fn token(&self, token: u32, lp: f32, step: usize) -> f32 {
        let SpecialTokens { bos, pad, eos, unk } = self.special;
        if lp.is_nan() || token == pad || token == bos || (token == eos && step < self.min_len) {
            return f32::NEG_INFINITY;
        }
        if token == unk && self.unkpen != 0.0 { lp - self.unkpen } else { lp }
    }
}

fn keep_only(row: &mut [f32], token: usize) {
    let kept = row[token];
    row.fill(f32::NEG_INFINITY);
    row[token] = kept;
}

/// Host-side hypotheses: tokens (`width` = longest max length + 2, column 0 = EOS) and
/// cumulative scores per position, one row per live hypothesis, double-buffered.
struct Beams {
    tw: usize,
    sw: usize,
    tokens: Vec<u32>,
    scores: Vec<f32>,
    ignore: Vec<bool>,
    next_tokens: Vec<u32>,
    next_scores: Vec<f32>,
    next_ignore: Vec<bool>,
}

impl Beams {
    fn tokens(&self, row: usize, len: usize) -> &[u32] {
        &self.tokens[row * self.tw..row * self.tw + len]
    }

    fn scores(&self, row: usize, len: usize) -> &[f32] {
        &self.scores[row * self.sw..row * self.sw + len]
    }

    /// fairseq's `replicate_first_beam` for the rows `first .. first + beam`.
    fn replicate_first(&mut self, first: usize, beam: usize) {
        for r in first + 1..first + beam {
            self.tokens.copy_within(first * self.tw..(first + 1) * self.tw, r * self.tw);
            self.scores.copy_within(first * self.sw..(first + 1) * self.sw, r * self.sw);
        }
    }

    /// New row `dst` = old row `src` (up to `step`) extended with `token` scored `score`.
    fn extend(
        &mut self,
        dst: usize,
        src: usize,
        step: usize,
        token: u32,
        score: f32,
        ignore: bool,
    ) {
        let (tw, sw) = (self.tw, self.sw);
        self.next_tokens[dst * tw..dst * tw + step + 1]
            .copy_from_slice(&self.tokens[src * tw..src * tw + step + 1]);
        self.next_tokens[dst * tw + step + 1] = token;
        self.next_scores[dst * sw..dst * sw + step]
            .copy_from_slice(&self.scores[src * sw..src * sw + step]);
        self.next_scores[dst * sw + step] = score;
        self.next_ignore[dst] = ignore;
    }

    fn swap(&mut self) {
        std::mem::swap(&mut self.tokens, &mut self.next_tokens);
        std::mem::swap(&mut self.scores, &mut self.next_scores);
        std::mem::swap(&mut self.ignore, &mut self.next_ignore);
    }
}

/// Settings of finalization.
struct Finalize {
    eos: u32,
    normalize: bool,
    lenpen: f64,
    match_source_len: bool,
}

impl Finalize {
    /// fairseq's `finalize_hypos` for one hypothesis: row `row` ends with EOS at `step`.
    fn hypothesis(
        &self,
        beams: &Beams,
        row: usize,
        step: usize,
        eos_score: f32,
        plan: &Plan,
    ) -> Hypothesis {
        let mut tokens = Vec::with_capacity(step + 1);
        tokens.extend_from_slice(&beams.tokens(row, step + 1)[1..]);
        tokens.push(self.eos);
        // Cumulative scores to per-position scores (the first position is its own).
        let mut positional_scores = Vec::with_capacity(step + 1);
        let mut previous = None;
        for &cum in beams.scores(row, step).iter().chain(std::iter::once(&eos_score)) {
            positional_scores.push(match previous {
                Some(previous) => cum - previous,
                None => cum,
            });
            previous = Some(cum);
        }
        // A language model's prompt is part of the hypothesis for its score and length, as in
        // fairseq (zero for a translation model).
        let mut score = eos_score + plan.prompt_score;
        if self.normalize {
            score /= ((step + 1 + plan.prompt_len) as f64).powf(self.lenpen) as f32;
        }
        if self.match_source_len && step > plan.src_len {
            score = f32::NEG_INFINITY;
        }
        Hypothesis { tokens, score, positional_scores }
    }
}

fn run<D: IncrementalDecoder>(
    decoder: &mut D,
    sources: &[Vec<u32>],
    prefixes: Option<&[Vec<u32>]>,
    options: &GenerationOptions,
) -> Result<Vec<Vec<Hypothesis>>> {
    options.validate()?;
    let n = sources.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let vocab = decoder.vocab_size();
    let special = decoder.special_tokens();
    let SpecialTokens { bos, pad, eos, unk } = special;
    if vocab < 2 || [bos, pad, eos, unk].iter().any(|&t| t as usize >= vocab) {
        return Err(Error::InvalidVocabulary { vocab, special });
    }
    let beam = options.effective_beam(vocab);
    if let Strategy::DiverseBeam { groups, .. } = options.strategy
        && !beam.is_multiple_of(groups)
    {
        return Err(Error::BeamNotDivisibleByGroups { beam, groups });
    }
    let max_positions = |source: &[u32]| decoder.max_target_positions_for(source);
    let mut plans = plan_sentences(sources, prefixes, options, special, vocab, &max_positions)?;
    let adjust = Adjust {
        special,
        temperature: match options.strategy {
            Strategy::Sampling { temperature, .. } if temperature != 1.0 => {
                Some(temperature as f32)
            }
            _ => None,
        },
        unkpen: options.unkpen as f32,
        min_len: options.min_len,
    };
    let finalize = Finalize {
        eos,
        normalize: options.normalize_scores,
        lenpen: options.lenpen,
        match_source_len: options.match_source_len,
    };

    let longest = plans.iter().map(|p| p.max_len).max().unwrap_or(0);
    let (tw, sw) = (longest + 2, longest + 1);
    let mut tokens = vec![pad; n * beam * tw];
    for r in 0..n * beam {
        tokens[r * tw] = eos;
    }
    let mut beams = Beams {
        tw,
        sw,
        next_tokens: tokens.clone(),
        tokens,
        scores: vec![0.0; n * beam * sw],
        next_scores: vec![0.0; n * beam * sw],
        ignore: vec![false; n * beam],
        next_ignore: vec![false; n * beam],
    };

    let mut search = build_search(&options.strategy);
    let keys: Vec<u64> = sources.iter().map(|s| sentence_key(s)).collect();
    search.start(&keys);

    let encoded = decoder.encode(sources).map_err(|e| Error::decoder("encode", e))?;
    if let Some(prompts) = decoder.prompt_scores(&encoded) {
        for (plan, (score, len)) in plans.iter_mut().zip(prompts) {
            (plan.prompt_score, plan.prompt_len) = (score, len);
        }
    }
    // One row per sentence at step 0: all of a sentence's hypotheses are the same there.
    let mut state = decoder.init_state(&encoded, 1).map_err(|e| Error::decoder("init_state", e))?;
    drop(encoded);

    let mut finalized: Vec<Vec<Hypothesis>> = (0..n).map(|_| Vec::with_capacity(beam)).collect();
    let mut finished = vec![false; n];
    let mut live: Vec<usize> = (0..n).collect();
    let mut bsz = n;
    let mut feed = vec![eos; n];
    let mut order: Vec<usize> = Vec::with_capacity(n * beam);
    let mut reorder_pending = false;
    let mut lprobs: Vec<f32> = Vec::new();
    let mut prev_scores: Vec<f32> = Vec::with_capacity(n * beam);
    let mut cands = Candidates::default();
    let mut eos_mask: Vec<bool> = Vec::new();
    let mut keep: Vec<usize> = Vec::with_capacity(n);
    // Beam search without n-gram blocking reads only each row's best 2 × beam log-probabilities
    // (after the adjustments, which remove or lower at most `<pad>`, `<s>`, EOS and `<unk>`).
    let sparse_search = matches!(options.strategy, Strategy::Beam | Strategy::Greedy)
        && options.no_repeat_ngram_size == 0
        && adjust.temperature.is_none();
    let top_k = 2 * beam + 4;
    let sparse_search = sparse_search && top_k <= vocab;
    let mut top_search = BeamSearch::new();

    for step in 0..=longest {
        if reorder_pending {
            decoder.reorder(&mut state, &order).map_err(|e| Error::decoder("reorder", e))?;
        }
        // Each row's best log-probabilities suffice (and save copying and scanning whole
        // rows) when only the beam search reads them and no processor needs a whole row.
        let sparse = sparse_search
            && live.iter().all(|&o| step < plans[o].max_len && step >= plans[o].prefix.len());
        let top = if sparse {
            decoder.step_top(&feed, &mut state, top_k).map_err(|e| Error::decoder("step", e))?
        } else {
            None
        };
        let rows = bsz * beam;
        if let Some(top) = top {
            prev_scores.clear();
            if step > 0 {
                prev_scores.extend((0..rows).map(|r| beams.scores[r * sw + step - 1]));
            }
            let shape = StepShape { sentences: bsz, beam, vocab };
            let adjust = |token: u32, lp: f32| adjust.token(token, lp, step);
            top_search.step_top(step, shape, &top, adjust, &prev_scores, &mut cands)?;
        } else {
            let out = decoder.step(&feed, &mut state).map_err(|e| Error::decoder("step", e))?;
            let decoder_rows = if step == 0 { bsz } else { bsz * beam };
            if out.rows != decoder_rows
                || out.vocab != vocab
                || out.data.len() != decoder_rows * vocab
            {
                return Err(Error::DecoderOutput {
                    step,
                    expected_rows: decoder_rows,
                    rows: out.rows,
                    expected_vocab: vocab,
                    vocab: out.vocab,
                    len: out.data.len(),
                });
            }
            if step == 0 {
                lprobs.clear();
                for s in 0..bsz {
                    for _ in 0..beam {
                        lprobs.extend_from_slice(&out.data[s * vocab..(s + 1) * vocab]);
                    }
                }
            } else {
                lprobs = out.data;
            }

            for (b, &orig) in live.iter().enumerate() {
                let plan = &plans[orig];
                for r in b * beam..(b + 1) * beam {
                    adjust.row(&mut lprobs[r * vocab..(r + 1) * vocab], step, plan);
                }
                // A forced EOS: make all of the sentence's hypotheses the first one.
                let forced_eos =
                    step < plan.prefix.len() && step < plan.max_len && plan.prefix[step] == eos;
                if forced_eos && beam > 1 {
                    let first = b * beam;
                    for r in first + 1..first + beam {
                        lprobs.copy_within(first * vocab..(first + 1) * vocab, r * vocab);
                    }
                    beams.replicate_first(first, beam);
                }
            }
            if options.no_repeat_ngram_size > 0 {
                for r in 0..rows {
                    block_repeated_ngrams(
                        options.no_repeat_ngram_size,
                        beams.tokens(r, step + 1),
                        &mut lprobs[r * vocab..(r + 1) * vocab],
                    );
                }
            }

            prev_scores.clear();
            if step > 0 {
                prev_scores.extend((0..rows).map(|r| beams.scores[r * sw + step - 1]));
            }
            let shape = StepShape { sentences: bsz, beam, vocab };
            search.step(step, shape, &lprobs, &prev_scores, &mut cands)?;
        }
        let width = cands.width;
        if width < beam || cands.sentences != bsz || cands.tokens.len() != bsz * width {
            return Err(Error::TooFewCandidates { width, beam });
        }

        // EOS candidates with a finite score, except at positions to ignore.
        eos_mask.clear();
        for b in 0..bsz {
            for j in 0..width {
                let c = b * width + j;
                let ignored = j < beam && beams.ignore[b * beam + j];
                eos_mask.push(
                    !ignored && cands.tokens[c] == eos && cands.scores[c] != f32::NEG_INFINITY,
                );
            }
        }

        // Finalize EOS candidates among the first `beam` of each sentence.
        for (b, &orig) in live.iter().enumerate() {
            let plan = &plans[orig];
            let mut any = false;
            for j in 0..beam {
                let c = b * width + j;
                if eos_mask[c] {
                    any = true;
                    if finalized[orig].len() < beam {
                        let row = b * beam + cands.beams[c];
                        let hypo = finalize.hypothesis(&beams, row, step, cands.scores[c], plan);
                        finalized[orig].push(hypo);
                    }
                }
            }
            if (any && finalized[orig].len() >= beam) || step >= plan.max_len {
                finished[orig] = true;
            }
        }

        keep.clear();
        keep.extend((0..bsz).filter(|&b| !finished[live[b]]));
        if keep.is_empty() {
            break;
        }
        if keep.len() < bsz {
            search.prune_sentences(&keep);
        }

        // Continue each remaining sentence with its first `beam` active candidates (not EOS,
        // not ignored), then, if there are too few, with inactive ones (to be ignored).
        order.clear();
        feed.clear();
        for (nb, &ob) in keep.iter().enumerate() {
            let mut chosen = 0;
            for take_inactive in [false, true] {
                for j in 0..width {
                    if chosen == beam {
                        break;
                    }
                    let c = ob * width + j;
                    let inactive = eos_mask[c] || (j < beam && beams.ignore[ob * beam + j]);
                    if inactive != take_inactive {
                        continue;
                    }
                    let src = ob * beam + cands.beams[c];
                    let dst = nb * beam + chosen;
                    beams.extend(dst, src, step, cands.tokens[c], cands.scores[c], inactive);
                    order.push(if step == 0 { ob } else { src });
                    feed.push(cands.tokens[c]);
                    chosen += 1;
                }
            }
        }
        beams.swap();
        for (nb, &ob) in keep.iter().enumerate() {
            live[nb] = live[ob];
        }
        live.truncate(keep.len());
        bsz = keep.len();
        reorder_pending = true;
    }

    for hypos in &mut finalized {
        // Stable: equal scores keep their finalization order.
        hypos.sort_by(|a, b| best_first((a.score, 0), (b.score, 0)));
        hypos.truncate(options.nbest);
    }
    Ok(finalized)
}
