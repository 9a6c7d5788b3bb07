//! Building ONNX Runtime sessions from model files, with errors that name the file.

use std::path::Path;

use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};

use crate::{Error, Result};

/// How to build a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Intra-op threads; 0 lets ONNX Runtime choose (one per physical core).
    pub intra_threads: usize,
    /// Apply all graph optimizations (default) or none (useful when debugging a graph).
    pub optimize: bool,
    /// A container for the weights ONNX Runtime pre-packs for its GEMM kernels, shared by
    /// every session built with it (the workers' sessions of one model keep one packed copy
    /// of each weight instead of one each).
    pub prepacked: Option<PrepackedWeights>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self { intra_threads: 0, optimize: true, prepacked: None }
    }
}

/// Loads a model file into a CPU session.
pub fn load_session(path: &Path, config: &SessionConfig) -> Result<Session> {
    let bytes =
        std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    load_session_from_memory(&bytes, path, config)
}

/// Loads a serialized model held in memory; `name` is used in error messages.
pub fn load_session_from_memory(
    bytes: &[u8],
    name: &Path,
    config: &SessionConfig,
) -> Result<Session> {
    build_session(Source::Memory(bytes), name, config, None)
}

/// Loads a model file into a session on `device`'s execution providers (an explicitly
/// requested provider that cannot be registered is an error, see [`super::device`]).
pub fn load_session_on(
    path: &Path,
    config: &SessionConfig,
    device: &super::device::Device,
) -> Result<Session> {
    // ONNX Runtime reads the file itself (no second copy of the graph in memory while the
    // session is built); a missing file is still named as an I/O error.
    std::fs::metadata(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    build_session(Source::File(path), path, config, Some(device))
}

/// Where a session's graph comes from.
enum Source<'a> {
    Memory(&'a [u8]),
    File(&'a Path),
}

/// The one session builder: threads and optimization level from `config`, then `device`'s
/// execution providers when given (ONNX Runtime's default CPU provider otherwise).
fn build_session(
    source: Source<'_>,
    name: &Path,
    config: &SessionConfig,
    device: Option<&super::device::Device>,
) -> Result<Session> {
    let environment = super::environment()?;
    let mut builder = Session::builder(environment)?;
    if config.intra_threads > 0 {
        builder = builder.with_intra_threads(config.intra_threads).map_err(ort::Error::from)?;
    }
    let level =
        if config.optimize { GraphOptimizationLevel::All } else { GraphOptimizationLevel::Disable };
    builder = builder.with_optimization_level(level).map_err(ort::Error::from)?;
    if let Some(prepacked) = &config.prepacked {
        builder = builder.with_prepacked_weights(prepacked).map_err(ort::Error::from)?;
    }
    if let Some(device) = device {
        builder = device.register(builder)?;
    }
    match source {
        Source::Memory(bytes) => builder.commit_from_memory(bytes),
        Source::File(path) => builder.commit_from_file(path),
    }
    .map_err(|e| Error::InvalidModel { path: name.to_path_buf(), message: e.to_string() })
}
