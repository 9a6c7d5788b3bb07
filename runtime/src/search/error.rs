//! The search's error type.

use crate::decoding::SpecialTokens;

/// Everything that can go wrong while searching.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An option is out of range (e.g. `beam = 0`, `top_p = 1.5`, a non-finite `lenpen`).
    #[error("invalid generation option `{option}`: {reason}")]
    InvalidOption {
        /// The option's name, as in [`GenerationOptions`](super::GenerationOptions).
        option: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// Diverse beam search splits the beam into equal groups.
    #[error("diverse beam search needs `beam` ({beam}) to be divisible by `groups` ({groups})")]
    BeamNotDivisibleByGroups {
        /// The beam size.
        beam: usize,
        /// The number of groups.
        groups: usize,
    },
    /// More hypotheses asked for than the search keeps.
    #[error("`nbest` ({nbest}) cannot exceed the beam size ({beam})")]
    NbestExceedsBeam {
        /// Hypotheses asked for per sentence.
        nbest: usize,
        /// The beam size in effect (1 for greedy search).
        beam: usize,
    },
    /// `min_len` is larger than a sentence's maximum length (fairseq asserts the same).
    #[error(
        "sentence {sentence}: min_len ({min_len}) is larger than its max length ({max_len}); \
         raise max_len_a/max_len_b (or the model's max target positions) or lower min_len"
    )]
    MinLenExceedsMaxLen {
        /// Index of the sentence in the batch.
        sentence: usize,
        /// The minimum length asked for.
        min_len: usize,
        /// The sentence's maximum length.
        max_len: usize,
    },
    /// `generate_with_prefixes` got a different number of prefixes than sources.
    #[error("{prefixes} target prefixes given for {sources} source sentences")]
    PrefixCount {
        /// Number of source sentences.
        sources: usize,
        /// Number of prefixes.
        prefixes: usize,
    },
    /// A forced prefix token is not in the target vocabulary.
    #[error(
        "sentence {sentence}: prefix token {token} is outside the target vocabulary of {vocab}"
    )]
    PrefixTokenOutOfVocabulary {
        /// Index of the sentence in the batch.
        sentence: usize,
        /// The token.
        token: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The decoder's vocabulary cannot be searched (fewer than 2 entries, or special ids outside it).
    #[error("cannot search a vocabulary of {vocab} entries with special tokens {special:?}")]
    InvalidVocabulary {
        /// The decoder's vocabulary size.
        vocab: usize,
        /// The decoder's special token ids.
        special: SpecialTokens,
    },
    /// The decoder returned log-probabilities of the wrong shape.
    #[error(
        "step {step}: the decoder returned {rows} rows x {vocab} ({len} values), \
         expected {expected_rows} rows x {expected_vocab}"
    )]
    DecoderOutput {
        /// The search step.
        step: usize,
        /// Rows expected (live hypotheses).
        expected_rows: usize,
        /// Rows returned.
        rows: usize,
        /// The decoder's declared vocabulary size.
        expected_vocab: usize,
        /// Vocabulary width returned.
        vocab: usize,
        /// Number of values returned.
        len: usize,
    },
    /// A search step got inputs whose sizes do not match its [`StepShape`](super::StepShape).
    #[error("search step input `{what}` has {actual} values, expected {expected}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// Expected number of values.
        expected: usize,
        /// Actual number of values.
        actual: usize,
    },
    /// A search strategy returned fewer candidates per sentence than the beam needs.
    #[error("the search returned {width} candidates per sentence, fewer than the beam size {beam}")]
    TooFewCandidates {
        /// Candidates per sentence returned.
        width: usize,
        /// The beam size.
        beam: usize,
    },
    /// The decoder (model backend) failed.
    #[error("decoder {stage} failed")]
    Decoder {
        /// Which call failed: `encode`, `init_state`, `step` or `reorder`.
        stage: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

impl Error {
    pub(crate) fn decoder<E>(stage: &'static str, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Self::Decoder { stage, source: Box::new(source) }
    }

    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidOption { option, reason: reason.into() }
    }
}

/// The search's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
