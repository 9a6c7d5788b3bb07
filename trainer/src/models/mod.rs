//! Models on libtorch (`tch`), with fairseq's parameter names and maths.
//!
//! - [`transformer`]: the encoder-decoder Transformer (Vaswani et al., 2017, "Attention Is All
//!   You Need") as fairseq 0.12.2 builds it, with named architecture presets and an
//!   incremental decoder for search.
//! - [`lstm`]: the LSTM encoder-decoder with attention and input feeding (Luong et al., 2015)
//!   as fairseq 0.12.2 builds it (`fairseq/models/lstm.py`), with its three named
//!   architectures and an incremental decoder for search.
//! - [`fconv`]: the convolutional sequence-to-sequence model (Gehring et al., 2017) as
//!   fairseq 0.12.2 builds it (`fairseq/models/fconv.py`), with its five named architectures
//!   and an incremental decoder (`LinearizedConvolution` windows) for search.
//! - [`transformer_lm`]: fairseq's decoder-only Transformer language model
//!   (`fairseq/models/transformer_lm.py`) with adaptive input and adaptive softmax
//!   ([`adaptive`]), its named architectures and a prefilling incremental decoder.
//! - [`decoding`]: what every family implements to be decoded incrementally ([`StepModel`]),
//!   its state as named tensors ([`TorchState`]) and the search adapter ([`TorchDecoder`]).

pub mod adaptive;
pub mod decoding;
pub mod fconv;
pub mod lstm;
pub(crate) mod nn;
#[cfg(test)]
pub(crate) mod testing;
pub mod transformer;
pub mod transformer_lm;

pub use decoding::{DecodingInfo, StepModel, TorchDecoder, TorchState};

/// Errors of the models.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration a model cannot be built from.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// A config rejected by its family, or an unknown architecture name.
    #[error(transparent)]
    Arch(#[from] seqforge_schemas::arch::Error),
    /// Inputs a model cannot run on (wrong shape, token out of the vocabulary, too long, …).
    #[error("invalid model input: {0}")]
    Input(String),
    /// A variable the model wants to create already exists in the var store.
    #[error("variable {0:?} already exists in the var store (two models on one path?)")]
    DuplicateVariable(String),
    /// An operation in libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The models' result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
