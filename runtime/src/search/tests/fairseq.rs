//! fairseq 0.12.2's `tests/test_sequence_generator.py` cases, with its exact probabilities,
//! expected tokens and scores (`assertHypoTokens`, `assertHypoScore`: positional scores within
//! 1e-4, the sentence score within 1e-6).
//!
//! fairseq's `TestIncrementalDecoder` indexes its tables by beam row; the row → prefix mapping
//! is written in the tables' comments, which is what [`setup_script`] encodes. The two sentences
//! of fairseq's batch share one source there; here they get different sources so the script can
//! tell them apart (the lengths, hence the maximum length, are the same).

use super::scripted::{EOS, PAD, ScriptedDecoder, UNK, W1, W2, p};
use crate::search::{GenerationOptions, Hypothesis, Strategy, generate, generate_with_prefixes};

pub const S1: [u32; 3] = [W1, W2, EOS];
pub const S2: [u32; 3] = [W2, W1, EOS];

/// `tests/utils.py::sequence_generator_setup`'s `beam_probs`, keyed by prefix as its comments say.
pub fn setup_script(source: &[u32], prefix: &[u32]) -> Vec<f32> {
    let first = source.first() == Some(&W1);
    match (first, prefix) {
        (true, []) => p(0.0, 0.0, 0.9, 0.1),
        (true, [W1]) => p(1.0, 0.0, 0.0, 0.0),
        (true, [W2]) => p(0.0, 0.0, 0.9, 0.1),
        (true, [W2, W1]) => p(0.0, 0.0, 0.1, 0.9),
        (true, [W2, W2]) => p(0.6, 0.0, 0.2, 0.2),
        (true, [W2, W1, W2]) | (true, [W2, W1, W1]) => p(1.0, 0.0, 0.0, 0.0),
        (false, []) => p(0.0, 0.0, 0.7, 0.3),
        (false, [W1]) => p(0.25, 0.0, 0.35, 0.4),
        (false, [W2]) => p(0.0, 0.0, 0.1, 0.9),
        (false, [W1, W2]) => p(0.6, 0.0, 0.4, 0.0),
        (false, [W2, W2]) => p(0.01, 0.0, 0.0, 0.99),
        (false, [W2, W2, W2]) => p(0.1, 0.0, 0.5, 0.4),
        (false, [W1, W2, W1]) => p(1.0, 0.0, 0.0, 0.0),
        // past the table, fairseq's test decoder puts all mass on EOS
        _ => p(1.0, 0.0, 0.0, 0.0),
    }
}

/// `TestDiverseBeamSearch.setUp`'s `beam_probs`: the same for every row of a sentence.
fn diverse_script(source: &[u32], prefix: &[u32]) -> Vec<f32> {
    let first = source.first() == Some(&W1);
    match (first, prefix.len()) {
        (true, 0) => p(0.0, 0.0, 0.9, 0.1),
        (true, 1) => p(0.0, 0.0, 0.6, 0.4),
        (true, 2) => p(1.0, 0.0, 0.0, 0.0),
        (false, 0) => p(0.0, 0.0, 0.7, 0.3),
        (false, 1) => p(0.25, 0.0, 0.35, 0.4),
        (false, 2) => p(0.9, 0.0, 0.1, 0.0),
        _ => p(1.0, 0.0, 0.0, 0.0),
    }
}

/// `TestTopPSamplingSearch.setUp`'s `beam_probs` (min top-1 prob 0.4, min top-2 prob 0.75).
fn topp_script(_source: &[u32], prefix: &[u32]) -> Vec<f32> {
    match prefix.len() {
        0 => p(0.0, 0.0, 1.0, 0.0),
        1 => p(1.0 - 0.75, 0.0, 0.4, 0.75 - 0.4),
        _ => p(1.0, 0.0, 0.0, 0.0),
    }
}

pub fn sources() -> Vec<Vec<u32>> {
    vec![S1.to_vec(), S2.to_vec()]
}

pub fn beam2() -> GenerationOptions {
    GenerationOptions { beam: 2, nbest: 2, ..Default::default() }
}

/// fairseq's `assertHypoTokens` + `assertHypoScore` (with a per-position offset, for
/// `TestDiverseSiblingsSearch`'s sibling penalties).
#[track_caller]
pub fn assert_hypo_with(
    hypo: &Hypothesis,
    tokens: &[u32],
    probs: &[f32],
    offsets: &[f32],
    normalized: bool,
    lenpen: f64,
) {
    assert_eq!(hypo.tokens, tokens, "tokens of {hypo:?}");
    let expected: Vec<f32> = probs
        .iter()
        .zip(offsets.iter().chain(std::iter::repeat(&0.0)))
        .map(|(p, o)| p.ln() - o)
        .collect();
    assert_eq!(hypo.positional_scores.len(), expected.len(), "{hypo:?}");
    for (got, want) in hypo.positional_scores.iter().zip(&expected) {
        assert!(
            (got - want).abs() < 1e-4,
            "positional scores {:?} != {expected:?}",
            hypo.positional_scores
        );
    }
    let mut score: f32 = expected.iter().sum();
    if normalized {
        score /= (expected.len() as f64).powf(lenpen) as f32;
    }
    assert!((score - hypo.score).abs() < 1e-6, "score {} != {score}", hypo.score);
}

#[track_caller]
pub fn assert_hypo(hypo: &Hypothesis, tokens: &[u32], probs: &[f32]) {
    assert_hypo_with(hypo, tokens, probs, &[], true, 1.0);
}

#[test]
fn search_fairseq_with_normalization() {
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &beam2()).unwrap();
    // sentence 1, beam 1 and 2
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    assert_hypo(&hypos[0][1], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    // sentence 2, beam 1 and 2
    assert_hypo(&hypos[1][0], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
    assert_hypo(&hypos[1][1], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
}

#[test]
fn search_fairseq_without_normalization() {
    // Sentence 1: unchanged from the normalized case. Sentence 2: beams swap order.
    let options = GenerationOptions { normalize_scores: false, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    let un = |h: &Hypothesis, t: &[u32], p: &[f32]| assert_hypo_with(h, t, p, &[], false, 1.0);
    un(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    un(&hypos[0][1], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    un(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
    un(&hypos[1][1], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
}

#[test]
fn search_fairseq_with_lenpen_favoring_short_hypos() {
    let lenpen = 0.6;
    let options = GenerationOptions { lenpen, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    let lp = |h: &Hypothesis, t: &[u32], p: &[f32]| assert_hypo_with(h, t, p, &[], true, lenpen);
    lp(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    lp(&hypos[0][1], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    lp(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
    lp(&hypos[1][1], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
}

#[test]
fn search_fairseq_with_lenpen_favoring_long_hypos() {
    let lenpen = 5.0;
    let options = GenerationOptions { lenpen, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    let lp = |h: &Hypothesis, t: &[u32], p: &[f32]| assert_hypo_with(h, t, p, &[], true, lenpen);
    lp(&hypos[0][0], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    lp(&hypos[0][1], &[W1, EOS], &[0.9, 1.0]);
    lp(&hypos[1][0], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
    lp(&hypos[1][1], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
}

#[test]
fn search_fairseq_maxlen() {
    let options = GenerationOptions { max_len_b: 2, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    assert_hypo(&hypos[0][1], &[W2, W2, EOS], &[0.1, 0.1, 0.6]);
    assert_hypo(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
    assert_hypo(&hypos[1][1], &[W2, W2, EOS], &[0.3, 0.9, 0.01]);
}

/// `test_generation_with_additional_input`'s assertion (the extra model input is irrelevant
/// here): the first hypothesis of sentence 1.
#[test]
fn search_fairseq_generation_first_hypothesis() {
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &beam2()).unwrap();
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
}

#[test]
fn search_fairseq_diverse_beam_search() {
    let options = GenerationOptions {
        strategy: Strategy::DiverseBeam { groups: 2, strength: 0.0 },
        ..beam2()
    };
    let mut decoder = ScriptedDecoder::new(6, diverse_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    assert_hypo(&hypos[0][0], &[W1, W1, EOS], &[0.9, 0.6, 1.0]);
    assert_hypo(&hypos[0][1], &[W1, W1, EOS], &[0.9, 0.6, 1.0]);
    assert_hypo(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.9]);
    assert_hypo(&hypos[1][1], &[W1, W2, EOS], &[0.7, 0.4, 0.9]);
}

#[test]
fn search_fairseq_diverse_siblings_search() {
    let rate = 0.5;
    let options = GenerationOptions { strategy: Strategy::DiverseSiblings { rate }, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, diverse_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    let sib = |h: &Hypothesis, t: &[u32], p: &[f32], ranks: [f32; 3]| {
        let offsets: Vec<f32> = ranks.iter().map(|r| r * rate as f32).collect();
        assert_hypo_with(h, t, p, &offsets, true, 1.0)
    };
    sib(&hypos[0][0], &[W1, W1, EOS], &[0.9, 0.6, 1.0], [0.0, 1.0, 1.0]);
    sib(&hypos[0][1], &[W1, W2, EOS], &[0.9, 0.4, 1.0], [0.0, 2.0, 1.0]);
    sib(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.9], [0.0, 1.0, 1.0]);
    sib(&hypos[1][1], &[W1, W1, EOS], &[0.7, 0.35, 0.9], [0.0, 2.0, 1.0]);
}

fn topp(top_p: f64, seed: u64) -> GenerationOptions {
    GenerationOptions {
        strategy: Strategy::Sampling { top_k: None, top_p: Some(top_p), temperature: 1.0, seed },
        ..beam2()
    }
}

#[test]
fn search_fairseq_topp_sampling_search_low_prob() {
    // A p low enough that only the top token is ever in the nucleus: always the same output.
    for seed in 0..10 {
        let mut decoder = ScriptedDecoder::new(6, topp_script);
        let hypos = generate(&mut decoder, &sources(), &topp(0.4 / 2.0, seed)).unwrap();
        for sentence in &hypos {
            assert_eq!(sentence.len(), 2);
            for hypo in sentence {
                assert_hypo(hypo, &[W1, W1, EOS], &[1.0, 0.4, 1.0]);
            }
        }
    }
}

#[test]
fn search_fairseq_topp_sampling_search_high_prob() {
    // A p high enough that either of the top 2 tokens can be sampled.
    let mut seen = [false; 2];
    for seed in 0..20 {
        let mut decoder = ScriptedDecoder::new(6, topp_script);
        let hypos = generate(&mut decoder, &sources(), &topp((0.4 + 0.75) / 2.0, seed)).unwrap();
        for sentence in &hypos {
            assert_eq!(sentence.len(), 2);
            for hypo in sentence {
                if hypo.tokens == [W1, W1, EOS] {
                    assert_hypo(hypo, &[W1, W1, EOS], &[1.0, 0.4, 1.0]);
                    seen[0] = true;
                } else {
                    assert_hypo(hypo, &[W1, W2, EOS], &[1.0, 0.35, 1.0]);
                    seen[1] = true;
                }
            }
        }
    }
    assert_eq!(seen, [true, true], "both continuations are sampled for some seed");
}

// ---- Further hand-worked cases on fairseq's tables ----

/// `min_len = 2` forbids sentence 1's `w1 </s>` at step 1; worked out by hand on the table.
#[test]
fn search_min_len_forbids_early_eos() {
    let options = GenerationOptions { min_len: 2, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    assert_hypo(&hypos[0][0], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    assert_hypo(&hypos[0][1], &[W2, W1, W1, EOS], &[0.1, 0.9, 0.1, 1.0]);
    // sentence 2 never wanted EOS before step 2: unchanged
    assert_hypo(&hypos[1][0], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
    assert_hypo(&hypos[1][1], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
}

/// A model that cannot decode past 3 positions caps the maximum length at 2, like `max_len_b = 2`.
#[test]
fn search_max_target_positions_caps_the_length() {
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    decoder.max_positions = 3;
    let hypos = generate(&mut decoder, &sources(), &beam2()).unwrap();
    assert_hypo(&hypos[0][1], &[W2, W2, EOS], &[0.1, 0.1, 0.6]);
    assert_hypo(&hypos[1][1], &[W2, W2, EOS], &[0.3, 0.9, 0.01]);
}

/// Forcing sentence 1 to start with `w2` (sentence 2 has no prefix and is unchanged).
#[test]
fn search_prefix_tokens_are_forced_per_sentence() {
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let prefixes = vec![vec![W2], vec![]];
    let hypos = generate_with_prefixes(&mut decoder, &sources(), &prefixes, &beam2()).unwrap();
    assert_hypo(&hypos[0][0], &[W2, W1, W2, EOS], &[0.1, 0.9, 0.9, 1.0]);
    assert_hypo(&hypos[0][1], &[W2, W1, W1, EOS], &[0.1, 0.9, 0.1, 1.0]);
    assert_hypo(&hypos[1][0], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
    assert_hypo(&hypos[1][1], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);

    // prefix_size takes the first tokens of longer prefixes (fairseq's --prefix-size)
    let options = GenerationOptions { prefix_size: 1, ..beam2() };
    let long = vec![vec![W2, W2, W2], vec![]];
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let again = generate_with_prefixes(&mut decoder, &sources(), &long, &options).unwrap();
    assert_eq!(again, hypos);
}

/// A prefix ending in EOS finishes the sentence with copies of the forced hypothesis
/// (fairseq's `replicate_first_beam`).
#[test]
fn search_prefix_with_eos_replicates_the_first_beam() {
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let prefixes = vec![vec![W1, EOS], vec![]];
    let hypos = generate_with_prefixes(&mut decoder, &sources(), &prefixes, &beam2()).unwrap();
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    assert_hypo(&hypos[0][1], &[W1, EOS], &[0.9, 1.0]);
    assert_hypo(&hypos[1][0], &[W1, W2, W1, EOS], &[0.7, 0.4, 0.4, 1.0]);
}

/// `match_source_len`: a 1-token source allows 1 token; at that length only EOS is allowed and
/// `w2 </s>` has probability 0, so the sentence finishes with a single hypothesis.
#[test]
fn search_match_source_len() {
    let script = |source: &[u32], prefix: &[u32]| match (source.len(), prefix) {
        (2, []) => p(0.0, 0.0, 0.9, 0.1),
        (2, [W1]) => p(1.0, 0.0, 0.0, 0.0),
        (2, [W2]) => p(0.0, 0.0, 0.9, 0.1),
        _ => setup_script(source, prefix),
    };
    let options = GenerationOptions { match_source_len: true, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, script);
    let sources = vec![vec![W1, EOS], S2.to_vec()];
    let hypos = generate(&mut decoder, &sources, &options).unwrap();
    assert_eq!(hypos[0].len(), 1);
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.9, 1.0]);
    // sentence 2 (source length 2) behaves as with max_len_b = 2
    assert_hypo(&hypos[1][0], &[W1, W2, EOS], &[0.7, 0.4, 0.6]);
    assert_hypo(&hypos[1][1], &[W2, W2, EOS], &[0.3, 0.9, 0.01]);
}

/// `unkpen` is subtracted from `<unk>`'s log-probability (and shows in its positional score).
#[test]
fn search_unk_penalty() {
    let script = |_: &[u32], prefix: &[u32]| match prefix.len() {
        0 => p(0.0, 0.5, 0.3, 0.2),
        _ => p(1.0, 0.0, 0.0, 0.0),
    };
    let greedy = GenerationOptions { beam: 1, nbest: 1, ..Default::default() };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &greedy).unwrap();
    assert_hypo(&hypos[0][0], &[UNK, EOS], &[0.5, 1.0]);

    let penalized = GenerationOptions { unkpen: 1.0, ..greedy.clone() };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &penalized).unwrap();
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.3, 1.0]);

    // with the penalty small enough, unk still wins, scored with the penalty
    let small = GenerationOptions { unkpen: 0.2, nbest: 2, beam: 2, ..greedy };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &small).unwrap();
    assert_hypo_with(&hypos[0][0], &[UNK, EOS], &[0.5, 1.0], &[0.2], true, 1.0);
    assert_hypo(&hypos[0][1], &[W1, EOS], &[0.3, 1.0]);
}

/// `no_repeat_ngram_size = 2`, greedy: `w1 w2 w1` may not continue with `w2` (the bigram
/// `w1 w2` occurred), so the second-best `w1` is taken.
#[test]
fn search_no_repeat_ngram_blocks_repeated_bigrams() {
    let script = |_: &[u32], prefix: &[u32]| match (prefix.len(), prefix.last()) {
        (0, _) => p(0.1, 0.0, 0.6, 0.3),
        (4.., _) => p(1.0, 0.0, 0.0, 0.0),
        (_, Some(&W1)) => p(0.1, 0.0, 0.3, 0.6),
        _ => p(0.1, 0.0, 0.6, 0.3),
    };
    let greedy = GenerationOptions { strategy: Strategy::Greedy, ..Default::default() };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &greedy).unwrap();
    assert_hypo(&hypos[0][0], &[W1, W2, W1, W2, EOS], &[0.6, 0.6, 0.6, 0.6, 1.0]);

    let blocked = GenerationOptions { no_repeat_ngram_size: 2, ..greedy };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &blocked).unwrap();
    assert_hypo(&hypos[0][0], &[W1, W2, W1, W1, EOS], &[0.6, 0.6, 0.6, 0.3, 1.0]);
}

/// Padding is never generated, even when the model puts mass on it.
#[test]
fn search_never_generates_pad_or_bos() {
    let script = |_: &[u32], prefix: &[u32]| {
        let mut probs = match prefix.len() {
            0 => p(0.0, 0.0, 0.2, 0.1),
            _ => p(0.2, 0.0, 0.0, 0.0),
        };
        probs[PAD as usize] = 0.4;
        probs[0] = 0.3;
        probs
    };
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &[S1.to_vec()], &beam2()).unwrap();
    assert_hypo(&hypos[0][0], &[W1, EOS], &[0.2, 0.2]);
    assert_hypo(&hypos[0][1], &[W2, EOS], &[0.1, 0.2]);
}
