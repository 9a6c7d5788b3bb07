//! Our search against fairseq 0.12.2 itself: `testdata/fairseq_oracle.json` holds what fairseq's
//! `SequenceGenerator` generated (beam, diverse beam, diverse siblings; lenpen, min/max length,
//! unkpen, no-repeat n-grams, prefixes, match-source-len, model max positions) on pseudo-random
//! scripted models, written by `testdata/fairseq_oracle.py`. Tokens must match exactly, scores
//! within 1e-5. fairseq ran each sentence alone; we run them as one batch.

use serde::Deserialize;

use super::scripted::{ScriptedDecoder, random_script_with};
use crate::search::{GenerationOptions, generate, generate_with_prefixes};

const VOCAB: usize = 16;

#[derive(Deserialize)]
struct Oracle {
    fairseq: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    seed: u64,
    max_positions: usize,
    options: GenerationOptions,
    sources: Vec<Vec<u32>>,
    prefixes: Option<Vec<Vec<u32>>>,
    expected: Vec<Vec<Expected>>,
}

#[derive(Deserialize)]
struct Expected {
    tokens: Vec<u32>,
    score: f32,
    positional_scores: Vec<f32>,
}

#[test]
fn search_matches_fairseq_0_12_2_on_random_scripted_models() {
    let oracle: Oracle =
        serde_json::from_str(include_str!("../testdata/fairseq_oracle.json")).unwrap();
    assert_eq!(oracle.fairseq, "0.12.2");
    assert!(oracle.cases.len() >= 20);
    // Each case twice: with whole rows, and with each row's best entries where the search can
    // use them (beam search without n-gram blocking, beam ≤ 6 here), as ONNX exports run.
    let mut sparse_cases = 0;
    for (case, top) in oracle.cases.iter().flat_map(|c| [(c, false), (c, true)]) {
        let what = format!("{} (seed {}, top {top})", case.name, case.seed);
        let mut decoder = ScriptedDecoder::new(VOCAB, random_script_with(VOCAB, case.seed, true));
        decoder.max_positions = case.max_positions;
        decoder.top = top;
        let sparse = top
            && matches!(case.options.strategy, crate::search::Strategy::Beam)
            && case.options.no_repeat_ngram_size == 0
            && 2 * case.options.beam + 4 <= VOCAB;
        sparse_cases += usize::from(sparse);
        let got = match &case.prefixes {
            Some(prefixes) => {
                generate_with_prefixes(&mut decoder, &case.sources, prefixes, &case.options)
            }
            None => generate(&mut decoder, &case.sources, &case.options),
        }
        .unwrap();
        let top_steps = decoder.log.top_steps;
        assert!(!sparse || top_steps > 0, "{what}: the top-k path was not taken");
        assert!(top || top_steps == 0, "{what}");
        assert_eq!(got.len(), case.expected.len(), "{what}");
        for (s, (got, want)) in got.iter().zip(&case.expected).enumerate() {
            let got_tokens: Vec<&[u32]> = got.iter().map(|h| h.tokens.as_slice()).collect();
            let want_tokens: Vec<&[u32]> = want.iter().map(|h| h.tokens.as_slice()).collect();
            assert_eq!(got_tokens, want_tokens, "{what}, sentence {s}");
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g.score - w.score).abs() <= 1e-5,
                    "{what}, sentence {s}: {g:?} vs {}",
                    w.score
                );
                assert_eq!(g.positional_scores.len(), w.positional_scores.len());
                for (a, b) in g.positional_scores.iter().zip(&w.positional_scores) {
                    assert!((a - b).abs() <= 1e-5, "{what}, sentence {s}: {g:?}");
                }
            }
        }
    }
    assert!(sparse_cases >= 5, "only {sparse_cases} cases took the top-k path");
}
