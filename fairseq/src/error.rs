//! The crate's error type: every variant names the file and the thing at fault.

use std::path::PathBuf;

use crate::pickle::PickleError;

/// Errors of reading and converting a fairseq checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}", path = path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not a file `torch.save` wrote (or a truncated one).
    #[error("{path}: not a PyTorch checkpoint: {message}", path = path.display())]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The pickle inside could not be read (a forbidden global, bad bytes).
    #[error("{path}: {entry}: {source}", path = path.display())]
    Pickle {
        /// The file.
        path: PathBuf,
        /// The pickle within the file (`archive/data.pkl`, the legacy header).
        entry: String,
        /// The cause.
        #[source]
        source: PickleError,
    },
    /// A storage is missing, truncated or inconsistent.
    #[error("{path}: storage {key}: {message}", path = path.display())]
    Storage {
        /// The file.
        path: PathBuf,
        /// The storage's key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// The checkpoint's structure is not a fairseq checkpoint's.
    #[error("{path}: {message}", path = path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An architecture seqforge cannot import.
    #[error(
        "{path}: architecture {arch:?} is not supported; supported: {supported}",
        path = path.display()
    )]
    UnsupportedArch {
        /// The file.
        path: PathBuf,
        /// The checkpoint's `--arch`.
        arch: String,
        /// The architectures that can be imported, comma-separated.
        supported: String,
    },
    /// A model option seqforge does not implement.
    #[error(
        "{path}: option {option} = {value} is not supported by seqforge ({reason})",
        path = path.display()
    )]
    UnsupportedOption {
        /// The file.
        path: PathBuf,
        /// fairseq's option name (`adaptive_softmax_cutoff`, …).
        option: String,
        /// Its value in the checkpoint.
        value: String,
        /// What seqforge supports instead.
        reason: String,
    },
    /// The model configuration is invalid once mapped.
    #[error("{path}: model configuration: {message}", path = path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the model needs is not in the state dict.
    #[error("{path}: the state dict has no tensor {name}", path = path.display())]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name (after fairseq's upgrades).
        name: String,
    },
    /// A tensor has another shape than the configuration implies.
    #[error(
        "{path}: tensor {name} has shape {found:?}, the model expects {expected:?}",
        path = path.display()
    )]
    ShapeMismatch {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the checkpoint.
        found: Vec<usize>,
    },
    /// The state dict holds a tensor the model does not have.
    #[error("{path}: unexpected tensor {name} (not in the model)", path = path.display())]
    UnexpectedTensor {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
