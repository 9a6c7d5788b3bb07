//! Search over an [`IncrementalDecoder`](crate::decoding::IncrementalDecoder), independent of
//! ONNX Runtime, with fairseq 0.12.2's semantics (`fairseq/sequence_generator.py`,
//! `fairseq/search.py`, `fairseq/ngram_repeat_block.py`).
//!
//! - [`generate`] / [`generate_with_prefixes`]: decode a batch of sentences into ranked
//!   [`Hypothesis`] lists, pruning finished sentences from the decoder state as they finish.
//! - [`GenerationOptions`]: fairseq's generation flags (beam, nbest, max/min length, lenpen,
//!   unkpen, no-repeat n-gram, prefix, match-source-len) and the [`Strategy`]: beam, diverse beam,
//!   diverse siblings, sampling (top-k / top-p / temperature, seeded) or greedy.
//! - [`Search`] and its implementations [`BeamSearch`], [`DiverseBeamSearch`],
//!   [`DiverseSiblingsSearch`], [`Sampling`]: one step of fairseq's `search.step(step, lprobs,
//!   scores)`, callable on its own (e.g. from a benchmark).
//! - [`block_repeated_ngrams`]: the no-repeat n-gram rule.
//!
//! # Semantics
//!
//! Each step, the decoder scores the next token of every live hypothesis; the log-probabilities
//! are adjusted (temperature, NaN → `-inf`, `<pad>` and `<s>` forbidden, `unkpen`, only EOS at
//! the maximum length, forced prefix tokens, no EOS before `min_len`, no repeated n-grams); the
//! strategy proposes candidates (`2 × beam` for beam search, so that EOS candidates do not starve
//! the beam); EOS candidates among a sentence's first `beam` are finalized with score
//! `sum(logprob) / len^lenpen`; a sentence is done once it has `beam` finalized hypotheses (or
//! at its maximum length, `min(max_len_a × src_len + max_len_b, max_target_positions - 1)`) and
//! is pruned from the decoder state; the others continue with their first `beam` non-EOS
//! candidates. `testdata/fairseq_oracle.json` holds fairseq 0.12.2's own outputs on scripted
//! models, which the tests reproduce exactly.
//!
//! Deliberate differences from fairseq 0.12.2, all so that a sentence's hypotheses never depend
//! on the other sentences of its batch (fairseq #427/#3078):
//! - the maximum length uses the sentence's own source length (fairseq: the padded batch
//!   width); `match_source_len` uses the sentence's own length (fairseq: the batch maximum);
//! - a sentence whose forced prefix is used up gets the `min_len` rule at once (fairseq waits
//!   until the longest prefix of the batch is used up);
//! - sampling draws from one ChaCha20 stream per sentence, keyed by its source tokens.
//!
//! And a few more:
//! - `<s>` is never generated (fairseq only forbids `<pad>`);
//! - no-repeat n-gram blocking follows fairseq's CUDA kernel; its 0.12.2 CPU fallback blocks
//!   nothing (fairseq #4709);
//! - a sentence reaching its maximum length without a finite EOS candidate ends with the
//!   hypotheses it has, possibly none (fairseq fails an assertion);
//! - step 0 runs the decoder on one row per sentence (all of a sentence's hypotheses are the
//!   same empty prefix there) and the first reorder expands it to `beam` rows;
//! - temperature belongs to [`Strategy::Sampling`] (fairseq's `--temperature` applies to any
//!   search); `match_source_len` is also capped by the model's maximum target positions.
//!
//! ```
//! use seqforge_runtime::search::{GenerationOptions, Strategy};
//!
//! let options = GenerationOptions { beam: 4, nbest: 2, lenpen: 0.6, ..Default::default() };
//! options.validate()?;
//! let sampling = GenerationOptions {
//!     beam: 3,
//!     strategy: Strategy::Sampling { top_k: None, top_p: Some(0.9), temperature: 0.7, seed: 1 },
//!     ..Default::default()
//! };
//! sampling.validate()?;
//! # Ok::<(), seqforge_runtime::search::Error>(())
//! ```

mod error;
mod generator;
mod ngram;
mod options;
mod select;
mod strategies;
#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use generator::{Hypothesis, generate, generate_with_prefixes};
pub use ngram::block_repeated_ngrams;
pub use options::{GenerationOptions, SearchConfig, Strategy};
pub use strategies::{
    BeamSearch, Candidates, DiverseBeamSearch, DiverseSiblingsSearch, Sampling, Search, StepShape,
};
