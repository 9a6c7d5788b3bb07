//! Properties of the generator beyond fairseq's cases: batch independence, pruning, sorting,
//! greedy = beam 1, sampling determinism and support, option validation, error propagation.

use super::fairseq::{beam2, setup_script, sources};
use super::scripted::{BOS, EOS, Fault, PAD, ScriptedDecoder, W1, W2, p, random_script};
use crate::search::{
    BeamSearch, Candidates, Error, GenerationOptions, Hypothesis, Search, StepShape, Strategy,
    generate,
};

const VOCAB: usize = 16;

fn corpus() -> Vec<Vec<u32>> {
    vec![
        vec![4, 5, 6, EOS],
        vec![7, EOS],
        vec![8, 9, 10, 11, 12, 13, EOS],
        vec![5, 5, EOS],
        vec![14, 15, 4, 6, 8, EOS],
        vec![EOS],
    ]
}

fn strategies() -> Vec<(&'static str, GenerationOptions)> {
    let base = GenerationOptions {
        beam: 4,
        nbest: 4,
        max_len_a: 1.0,
        max_len_b: 3,
        min_len: 2,
        lenpen: 1.3,
        unkpen: 0.5,
        no_repeat_ngram_size: 2,
        ..Default::default()
    };
    vec![
        ("beam", base.clone()),
        (
            "beam, unnormalized, no ngram",
            GenerationOptions { normalize_scores: false, no_repeat_ngram_size: 0, ..base.clone() },
        ),
        (
            "match source len",
            GenerationOptions { match_source_len: true, min_len: 0, ..base.clone() },
        ),
        (
            "diverse beam",
            GenerationOptions {
                strategy: Strategy::DiverseBeam { groups: 2, strength: 0.7 },
                ..base.clone()
            },
        ),
        (
            "diverse siblings",
            GenerationOptions { strategy: Strategy::DiverseSiblings { rate: 0.4 }, ..base.clone() },
        ),
        (
            "sampling top-k",
            GenerationOptions {
                strategy: Strategy::Sampling {
                    top_k: Some(5),
                    top_p: None,
                    temperature: 0.8,
                    seed: 7,
                },
                ..base.clone()
            },
        ),
        (
            "sampling top-p",
            GenerationOptions {
                strategy: Strategy::Sampling {
                    top_k: None,
                    top_p: Some(0.8),
                    temperature: 1.0,
                    seed: 9,
                },
                ..base.clone()
            },
        ),
        (
            "sampling full",
            GenerationOptions {
                strategy: Strategy::Sampling {
                    top_k: None,
                    top_p: None,
                    temperature: 1.5,
                    seed: 1,
                },
                ..base.clone()
            },
        ),
        ("greedy", GenerationOptions { strategy: Strategy::Greedy, nbest: 1, ..base }),
    ]
}

fn run(options: &GenerationOptions, sources: &[Vec<u32>], seed: u64) -> Vec<Vec<Hypothesis>> {
    let mut decoder = ScriptedDecoder::new(VOCAB, random_script(VOCAB, seed));
    generate(&mut decoder, sources, options).unwrap()
}

#[test]
fn search_results_do_not_depend_on_batch_composition() {
    let sources = corpus();
    for (name, options) in strategies() {
        for seed in 0..3 {
            let batch = run(&options, &sources, seed);
            assert_eq!(batch.len(), sources.len());
            for (i, source) in sources.iter().enumerate() {
                let alone = run(&options, std::slice::from_ref(source), seed);
                assert_eq!(alone[0], batch[i], "{name}, seed {seed}, sentence {i}: alone vs batch");
            }
            // reversed order, and a batch with a duplicate
            let mut reversed = sources.clone();
            reversed.reverse();
            let back = run(&options, &reversed, seed);
            for (i, hypos) in back.iter().rev().enumerate() {
                assert_eq!(*hypos, batch[i], "{name}, seed {seed}, sentence {i}: reversed batch");
            }
            let pair =
                run(&options, &[sources[2].clone(), sources[0].clone(), sources[2].clone()], seed);
            assert_eq!(pair[0], batch[2], "{name}");
            assert_eq!(pair[1], batch[0], "{name}");
            assert_eq!(pair[2], batch[2], "{name}");
        }
    }
}

#[test]
fn search_hypotheses_are_sorted_valid_and_at_most_nbest() {
    let sources = corpus();
    for (name, options) in strategies() {
        for seed in 0..3 {
            for (i, hypos) in run(&options, &sources, seed).iter().enumerate() {
                assert!(!hypos.is_empty(), "{name}: sentence {i} has no hypothesis");
                assert!(hypos.len() <= options.nbest, "{name}");
                for pair in hypos.windows(2) {
                    assert!(pair[0].score >= pair[1].score, "{name}: not sorted: {hypos:?}");
                }
                let max_len = if options.match_source_len {
                    sources[i].iter().filter(|&&t| t != EOS && t != PAD).count()
                } else {
                    (options.max_len_a * sources[i].len() as f64) as usize + options.max_len_b
                };
                for hypo in hypos {
                    assert_eq!(hypo.tokens.last(), Some(&EOS), "{name}");
                    assert_eq!(hypo.tokens.len(), hypo.positional_scores.len());
                    assert!(hypo.tokens.len() <= max_len + 1, "{name}: too long");
                    assert!(hypo.tokens.len() > options.min_len, "{name}: shorter than min_len");
                    assert!(!hypo.tokens.contains(&PAD) && !hypo.tokens.contains(&BOS), "{name}");
                    assert!(hypo.score.is_finite() || options.match_source_len, "{name}");
                    let n = options.no_repeat_ngram_size;
                    if n > 0 {
                        // no n-gram occurs twice in EOS + tokens
                        let seq: Vec<u32> =
                            std::iter::once(EOS).chain(hypo.tokens.iter().copied()).collect();
                        let grams: Vec<&[u32]> = seq.windows(n).collect();
                        for (a, ga) in grams.iter().enumerate() {
                            for gb in &grams[a + 1..] {
                                assert_ne!(
                                    ga, gb,
                                    "{name}: repeated {n}-gram in {:?}",
                                    hypo.tokens
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn search_beam_of_one_is_greedy() {
    let sources = corpus();
    for seed in 0..5 {
        let beam1 = GenerationOptions { beam: 1, nbest: 1, ..Default::default() };
        let greedy = GenerationOptions { strategy: Strategy::Greedy, ..Default::default() };
        assert_eq!(run(&beam1, &sources, seed), run(&greedy, &sources, seed), "seed {seed}");
        // and greedy really is the argmax at each step (no EOS before min_len 1 at step 0)
        let script = random_script(VOCAB, seed);
        for (source, hypos) in sources.iter().zip(run(&greedy, &sources, seed)) {
            let hypo = &hypos[0];
            for (i, &token) in hypo.tokens.iter().enumerate() {
                let probs = script(source, &hypo.tokens[..i]);
                let best = (0..VOCAB as u32)
                    .filter(|&t| t != PAD && t != BOS && (i > 0 || t != EOS))
                    .max_by(|&a, &b| probs[a as usize].total_cmp(&probs[b as usize]))
                    .unwrap();
                if i < 200 {
                    assert_eq!(token, best, "seed {seed}: {:?}", hypo.tokens);
                }
            }
        }
    }
}

/// Sentences finishing at different steps are pruned: the decoder sees fewer rows.
#[test]
fn search_finished_sentences_are_pruned_from_the_decoder() {
    // sentence i ends (all mass on EOS) once its prefix has as many tokens as its source
    let script = |source: &[u32], prefix: &[u32]| {
        if prefix.len() + 1 >= source.len() { p(1.0, 0.0, 0.0, 0.0) } else { p(0.0, 0.0, 0.6, 0.4) }
    };
    let sources = vec![vec![W1, EOS], vec![W1, W1, W1, EOS], vec![W1, W1, W1, W1, W1, EOS]];
    let mut decoder = ScriptedDecoder::new(6, script);
    let hypos = generate(&mut decoder, &sources, &beam2()).unwrap();
    // step 0: one row per sentence; then 2 per live sentence
    assert_eq!(decoder.log.rows, [3, 6, 4, 4, 2, 2]);
    let lens: Vec<usize> = decoder.log.reorders.iter().map(Vec::len).collect();
    assert_eq!(lens, [6, 4, 4, 2, 2]);
    assert!(decoder.log.reorders[0].iter().all(|&r| r < 3), "expansion indexes step-0 rows");
    // pruning keeps the surviving sentences' rows: the last reorders index the last sentence
    assert!(decoder.log.reorders[3].iter().all(|r| (2..4).contains(r)));
    assert_eq!(hypos[0][0].tokens, [W1, EOS]);
    assert_eq!(hypos[0][1].tokens, [W2, EOS]);
    assert_eq!(hypos[1][0].tokens, [W1, W1, W1, EOS]);
    assert_eq!(hypos[2][0].tokens, [W1, W1, W1, W1, W1, EOS]);
    assert_eq!(hypos[2][1].tokens.len(), 6);
}

fn sampling(
    top_k: Option<usize>,
    top_p: Option<f64>,
    temperature: f64,
    seed: u64,
) -> GenerationOptions {
    GenerationOptions {
        beam: 4,
        nbest: 4,
        min_len: 2,
        max_len_b: 12,
        strategy: Strategy::Sampling { top_k, top_p, temperature, seed },
        ..Default::default()
    }
}

#[test]
fn search_sampling_is_deterministic_per_seed() {
    let sources = corpus();
    for (top_k, top_p) in [(Some(4), None), (None, Some(0.9)), (None, None)] {
        let a = run(&sampling(top_k, top_p, 1.0, 11), &sources, 0);
        let b = run(&sampling(top_k, top_p, 1.0, 11), &sources, 0);
        assert_eq!(a, b);
        let c = run(&sampling(top_k, top_p, 1.0, 12), &sources, 0);
        assert_ne!(a, c, "another seed gives other samples");
    }
}

/// Probabilities after the generator's bans (bos, pad; EOS before min_len), as fairseq sees them.
fn allowed_probs(
    script: &impl Fn(&[u32], &[u32]) -> Vec<f32>,
    source: &[u32],
    prefix: &[u32],
    min_len: usize,
) -> Vec<f64> {
    let mut probs: Vec<f64> = script(source, prefix).iter().map(|&x| f64::from(x)).collect();
    probs[BOS as usize] = 0.0;
    probs[PAD as usize] = 0.0;
    if prefix.len() < min_len {
        probs[EOS as usize] = 0.0;
    }
    probs
}

#[test]
fn search_sampling_only_samples_allowed_tokens() {
    let sources = corpus();
    for seed in 0..4 {
        let script = random_script(VOCAB, seed);
        for top_k in [1, 3] {
            let options = sampling(Some(top_k), None, 0.7, seed);
            for (source, hypos) in sources.iter().zip(run(&options, &sources, seed)) {
                let max_len = 12;
                for hypo in &hypos {
                    for (i, &token) in hypo.tokens.iter().enumerate() {
                        if i == max_len {
                            assert_eq!(token, EOS);
                            continue;
                        }
                        let probs = allowed_probs(&script, source, &hypo.tokens[..i], 2);
                        let mut order: Vec<usize> = (0..VOCAB).collect();
                        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                        assert!(probs[token as usize] > 0.0);
                        assert!(
                            order[..top_k].contains(&(token as usize)),
                            "top-{top_k}: {token} at {i}"
                        );
                    }
                }
            }
        }
        for top_p in [0.3, 0.8] {
            let options = sampling(None, Some(top_p), 1.0, seed);
            for (source, hypos) in sources.iter().zip(run(&options, &sources, seed)) {
                for hypo in &hypos {
                    for (i, &token) in hypo.tokens.iter().enumerate() {
                        if i == 12 {
                            continue;
                        }
                        let probs = allowed_probs(&script, source, &hypo.tokens[..i], 2);
                        let mut order: Vec<usize> = (0..VOCAB).collect();
                        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
                        let mut cum = 0.0;
                        let below = order.iter().take_while(|&&t| {
                            cum += probs[t];
                            cum < top_p
                        });
                        let nucleus = (below.count() + 1).min(VOCAB);
                        assert!(probs[token as usize] > 0.0);
                        assert!(
                            order[..nucleus].contains(&(token as usize)),
                            "top-p {top_p}: {token} at {i}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn search_nbest_truncates_the_finalized_hypotheses() {
    let options = GenerationOptions { nbest: 1, ..beam2() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let one = generate(&mut decoder, &sources(), &options).unwrap();
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let two = generate(&mut decoder, &sources(), &beam2()).unwrap();
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.len(), 1);
        assert_eq!(a[0], b[0]);
    }
}

#[test]
fn search_beam_step_is_callable_on_its_own() {
    // one sentence, beam 2, vocab 4, step 1: cumulative scores are lprob + previous score
    let lprobs = [-1.0, -2.0, -0.5, -3.0, /* row 1 */ -0.1, -4.0, -4.0, -0.2];
    let prev = [-1.0, -2.0];
    let mut search = BeamSearch::new();
    let mut out = Candidates::default();
    let shape = StepShape { sentences: 1, beam: 2, vocab: 4 };
    search.step(1, shape, &lprobs, &prev, &mut out).unwrap();
    assert_eq!(out.width, 4);
    assert_eq!(out.scores, [-1.5, -2.0, -2.1, -2.2]);
    assert_eq!(out.tokens, [2, 0, 0, 3]);
    assert_eq!(out.beams, [0, 0, 1, 1]);
    // at step 0 only the first row counts
    search.step(0, shape, &lprobs, &[], &mut out).unwrap();
    assert_eq!(out.tokens, [2, 0, 1]);
    assert_eq!(out.width, 3, "at most vocab - 1 candidates");
    // wrong sizes are errors, not panics
    let err = search.step(1, shape, &lprobs[..7], &prev, &mut out).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { what: "lprobs", .. }), "{err}");
}

#[test]
fn search_options_are_validated() {
    let bad = |options: GenerationOptions| options.validate().unwrap_err().to_string();
    let ok = GenerationOptions::default();
    ok.validate().unwrap();
    assert!(bad(GenerationOptions { beam: 0, ..ok.clone() }).contains("beam"));
    assert!(bad(GenerationOptions { nbest: 6, ..ok.clone() }).contains("nbest"));
    assert!(bad(GenerationOptions { nbest: 0, ..ok.clone() }).contains("nbest"));
    assert!(bad(GenerationOptions { lenpen: f64::NAN, ..ok.clone() }).contains("lenpen"));
    assert!(bad(GenerationOptions { max_len_a: -1.0, ..ok.clone() }).contains("max_len_a"));
    let diverse = |groups| GenerationOptions {
        beam: 6,
        strategy: Strategy::DiverseBeam { groups, strength: 0.5 },
        ..ok.clone()
    };
    assert!(bad(diverse(4)).contains("divisible"));
    assert!(bad(diverse(0)).contains("groups"));
    diverse(3).validate().unwrap();
    let sample = |top_k, top_p, temperature| GenerationOptions {
        strategy: Strategy::Sampling { top_k, top_p, temperature, seed: 0 },
        ..ok.clone()
    };
    assert!(bad(sample(Some(0), None, 1.0)).contains("top_k"));
    assert!(bad(sample(None, Some(1.5), 1.0)).contains("top_p"));
    assert!(bad(sample(None, Some(0.0), 1.0)).contains("top_p"));
    assert!(bad(sample(Some(3), Some(0.5), 1.0)).contains("exclusive"));
    assert!(bad(sample(None, None, 0.0)).contains("temperature"));
    // greedy ignores beam but wants nbest 1
    GenerationOptions { beam: 0, strategy: Strategy::Greedy, ..ok.clone() }.validate().unwrap();
    assert!(
        bad(GenerationOptions { nbest: 2, strategy: Strategy::Greedy, ..ok }).contains("nbest")
    );
}

#[test]
fn search_options_round_trip_through_serde() {
    let options = GenerationOptions {
        beam: 3,
        strategy: Strategy::Sampling { top_k: Some(10), top_p: None, temperature: 0.7, seed: 5 },
        ..Default::default()
    };
    let json = serde_json::to_string(&options).unwrap();
    assert_eq!(serde_json::from_str::<GenerationOptions>(&json).unwrap(), options);
    // partial configs take fairseq's defaults
    let partial: GenerationOptions =
        serde_json::from_str(r#"{"beam": 4, "strategy": {"kind": "diverse_beam", "groups": 2}}"#)
            .unwrap();
    assert_eq!(partial.strategy, Strategy::DiverseBeam { groups: 2, strength: 0.5 });
    assert_eq!(partial.max_len_b, 200);
    assert_eq!(partial.min_len, 1);
    let sampling: Strategy = serde_json::from_str(r#"{"kind": "sampling", "top_p": 0.9}"#).unwrap();
    assert_eq!(
        sampling,
        Strategy::Sampling { top_k: None, top_p: Some(0.9), temperature: 1.0, seed: 0 }
    );
    assert!(
        serde_json::from_str::<GenerationOptions>(r#"{"bean": 4}"#).is_err(),
        "typos are errors"
    );
}

#[test]
fn search_errors_are_reported_not_panics() {
    // the decoder's own error, with its cause
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    decoder.fault = Some(Fault::ErrorAt(2));
    let err = generate(&mut decoder, &sources(), &beam2()).unwrap_err();
    assert!(matches!(err, Error::Decoder { stage: "step", .. }), "{err}");
    let cause = std::error::Error::source(&err).map(ToString::to_string).unwrap_or_default();
    assert!(cause.contains("injected failure at step 2"), "{cause}");
    // a decoder returning the wrong width
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    decoder.fault = Some(Fault::NarrowAt(1));
    let err = generate(&mut decoder, &sources(), &beam2()).unwrap_err();
    assert!(matches!(err, Error::DecoderOutput { step: 1, vocab: 5, .. }), "{err}");
    // min_len above a sentence's max length
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let options = GenerationOptions { max_len_b: 2, min_len: 3, ..beam2() };
    let err = generate(&mut decoder, &sources(), &options).unwrap_err();
    assert!(
        matches!(err, Error::MinLenExceedsMaxLen { sentence: 0, min_len: 3, max_len: 2 }),
        "{err}"
    );
    // prefixes: wrong count, token outside the vocabulary
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let err = crate::search::generate_with_prefixes(&mut decoder, &sources(), &[vec![]], &beam2())
        .unwrap_err();
    assert!(matches!(err, Error::PrefixCount { sources: 2, prefixes: 1 }), "{err}");
    let err = crate::search::generate_with_prefixes(
        &mut decoder,
        &sources(),
        &[vec![9], vec![]],
        &beam2(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::PrefixTokenOutOfVocabulary { sentence: 0, token: 9, .. }),
        "{err}"
    );
    // nothing to do
    assert!(generate(&mut decoder, &[], &beam2()).unwrap().is_empty());
}

#[test]
fn search_beam_is_capped_by_the_vocabulary() {
    // 6 tokens: at most 5 hypotheses per sentence, as fairseq's min(beam, vocab - 1)
    let options = GenerationOptions { beam: 8, nbest: 8, ..Default::default() };
    let mut decoder = ScriptedDecoder::new(6, setup_script);
    let hypos = generate(&mut decoder, &sources(), &options).unwrap();
    assert!(hypos.iter().all(|h| !h.is_empty() && h.len() <= 5));
}
