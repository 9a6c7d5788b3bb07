//! The exporter's error type: one enum, each variant naming the file, tensor, field or graph
//! node at fault.

use std::path::PathBuf;

/// Everything that can go wrong while exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node's inputs do not fit the operator (dtype or shape).
    #[error("graph node {node}: {message}")]
    Node {
        /// The node (its output name).
        node: String,
        /// What does not fit.
        message: String,
    },
    /// Two values were given the same name.
    #[error("graph: the name {0:?} is used twice")]
    DuplicateName(String),
    /// An initializer's data does not match its declared shape.
    #[error("initializer {name}: shape {dims:?} needs {expected} values, got {got}")]
    InitializerSize {
        /// The initializer.
        name: String,
        /// Its declared shape.
        dims: Vec<i64>,
        /// Values the shape needs.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// An I/O error on a named file or directory.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A required file is missing.
    #[error("{path}: no such file{hint}")]
    MissingFile {
        /// The file.
        path: PathBuf,
        /// What to do about it (may be empty).
        hint: String,
    },
    /// A JSON file that does not parse or lacks a field.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A `model.safetensors` that does not parse.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// The checkpoint's architecture is not one the exporter knows.
    #[error("{path}: unknown architecture `{arch}` (the exporter knows: {known})")]
    UnknownArch {
        /// The checkpoint's `config.json`.
        path: PathBuf,
        /// The architecture found.
        arch: String,
        /// The known names, comma-separated.
        known: String,
    },
    /// The checkpoint's model configuration is not exportable.
    #[error("{path}: model config: {message}")]
    Config {
        /// The checkpoint's `config.json`.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A tensor the configuration needs is not in the checkpoint.
    #[error("{path}: tensor `{tensor}` is missing (the model config needs it)")]
    MissingTensor {
        /// The checkpoint's `model.safetensors`.
        path: PathBuf,
        /// The fairseq name.
        tensor: String,
    },
    /// A tensor of the checkpoint has the wrong shape or dtype.
    #[error("{path}: tensor `{tensor}`: {message}")]
    BadTensor {
        /// The checkpoint's `model.safetensors`.
        path: PathBuf,
        /// The fairseq name.
        tensor: String,
        /// What is wrong (found vs expected).
        message: String,
    },
    /// Tensors the configuration does not explain (the config does not describe the weights).
    #[error("{path}: unexpected tensors {tensors:?} (the model config does not use them)")]
    UnexpectedTensors {
        /// The checkpoint's `model.safetensors`.
        path: PathBuf,
        /// Their names.
        tensors: Vec<String>,
    },
    /// A dictionary file that does not parse.
    #[error(transparent)]
    Dictionary(#[from] seqforge_schemas::contract::Error),
    /// A dictionary differs from the one the checkpoint was trained with.
    #[error(
        "{path}: this dictionary ({found}) is not the one the checkpoint was trained with \
         ({expected}); pass the data directory the model was trained on"
    )]
    DictionaryMismatch {
        /// The dictionary file.
        path: PathBuf,
        /// The checkpoint's recorded identity (size and hash).
        expected: String,
        /// The file's identity.
        found: String,
    },
    /// A file of a model directory does not match the manifest's SHA-256.
    #[error("{path}: SHA-256 {found} differs from the manifest's {expected}")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        found: String,
    },
    /// The output directory exists and `--force` was not given.
    #[error("{path}: already exists (pass --force to replace it)")]
    OutputExists {
        /// The model directory.
        path: PathBuf,
    },
    /// A fairseq checkpoint (`.pt`) could not be read or mapped.
    #[error(transparent)]
    Fairseq(#[from] seqforge_fairseq::Error),
    /// Options that do not go together.
    #[error("{0}")]
    Usage(String),
}

/// The exporter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An [`Error::Io`] builder for `map_err`.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// Reads a file of a checkpoint directory; a missing file is [`Error::MissingFile`] with a hint
/// that the directory may not be a checkpoint.
pub(crate) fn read_checkpoint_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            Error::MissingFile {
                path: path.to_path_buf(),
                hint: " (is this a seqforge checkpoint directory?)".into(),
            }
        } else {
            Error::Io { path: path.to_path_buf(), source }
        }
    })
}
