//! Language-model evaluation shared by the trainer (`seqforge-train eval-lm`, libtorch) and the
//! runtime (`seqforge eval-lm`, ONNX Runtime), so both cut, batch and count exactly alike:
//!
//! - [`blocks`]: fairseq's `TokenBlockDataset` — a token stream cut into samples
//!   ([`TokenBlocks`], [`BreakMode`]); the trainer's `language_modeling` task uses it too.
//! - [`eval`]: fairseq-eval-lm — samples with a context window (`LMContextWindowDataset`),
//!   batches, and the perplexity of a [`LmScorer`]'s target log-probabilities, token-level or
//!   word-level with subword pieces merged (`--remove-bpe`), with fairseq's word
//!   probabilities and word statistics.
//!
//! Needs no ONNX Runtime and no libtorch.

pub mod blocks;
pub mod eval;

pub use blocks::{BreakMode, TokenBlocks};
pub use eval::{
    EvalLmOptions, EvalLmReport, LmSample, LmScorer, WordPieces, WordStat, context_samples,
    evaluate, samples_of_items,
};

/// Errors of language-model evaluation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Options that do not fit together (the flag is named).
    #[error("{0}")]
    Options(String),
    /// Data that does not fit the options (e.g. a block out of range).
    #[error("{0}")]
    Data(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
