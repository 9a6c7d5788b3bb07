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
//! A sentence's hypotheses never depend on the other sentences of its batch: lengths, prefixes
//! and random streams are per sentence (see [`generate`]'s module notes for where this differs
//! from fairseq).
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
