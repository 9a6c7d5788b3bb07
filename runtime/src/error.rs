//! The runtime's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ONNX Runtime shared library is not where it was looked for.
    #[error(
        "the ONNX Runtime library {path} (from {origin}) does not exist: run `cargo xtask setup` \
         in the seqforge workspace, or set ORT_DYLIB_PATH to a libonnxruntime.so of version {wanted}"
    )]
    OrtLibraryMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// Which setting named that path.
        origin: &'static str,
        /// The version the runtime is built for.
        wanted: &'static str,
    },
    /// No setting names an ONNX Runtime library at all.
    #[error(
        "no ONNX Runtime library configured: pass its path explicitly, set ORT_DYLIB_PATH, or \
         build inside the seqforge workspace after `cargo xtask setup`"
    )]
    OrtLibraryUnconfigured,
    /// The library exists but could not be loaded (wrong file, wrong version, missing deps).
    #[error("loading the ONNX Runtime library {path}: {message}")]
    OrtLibraryLoad {
        /// The library file.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    /// ONNX Runtime is already loaded from another file in this process.
    #[error(
        "ONNX Runtime is already loaded from {loaded}; cannot switch to {requested} in the same process"
    )]
    OrtAlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The one asked for now.
        requested: PathBuf,
    },
    /// A model file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime rejected a model (corrupt file, unsupported IR or opset, invalid graph).
    #[error("{path}: not a model ONNX Runtime can load: {message}")]
    InvalidModel {
        /// The model file (or a name for an in-memory model).
        path: PathBuf,
        /// What ONNX Runtime said.
        message: String,
    },
    /// Generation failed (invalid options, or the decoder failed during search).
    #[error(transparent)]
    Search(#[from] crate::search::Error),
    /// Scoring failed (BLEU / chrF: unreadable or mismatched inputs, invalid options).
    #[error(transparent)]
    Score(#[from] crate::score::Error),
    /// Any other ONNX Runtime failure.
    #[cfg(feature = "onnx")]
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
