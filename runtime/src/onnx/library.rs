//! Finds and loads the ONNX Runtime shared library (`ort` with `load-dynamic`).
//!
//! Order of precedence: an explicit path (e.g. a `--ort-library` option), then the
//! `ORT_DYLIB_PATH` environment variable, then the path recorded at build time from the
//! workspace's `.deps/` (filled by `cargo xtask setup`). Nothing panics when the library is
//! missing or of the wrong version: every failure is an [`Error`] saying what to do.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::{Error, Result};

/// The ONNX Runtime version this crate is built for (`ort` 2.0.0-rc.15, API 31).
pub const ORT_VERSION: &str = "1.31.1";

/// The `.deps` folder of the workspace this crate was built in (set by `.cargo/config.toml`).
const BUILD_TIME_DEPS: Option<&str> = option_env!("SEQFORGE_DEPS");

/// Which setting named the library file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibraryOrigin {
    /// Passed by the caller.
    Explicit,
    /// The `ORT_DYLIB_PATH` environment variable.
    EnvVar,
    /// Recorded at build time from the workspace's `.deps/`.
    BuildTime,
}

impl LibraryOrigin {
    fn describe(self) -> &'static str {
        match self {
            Self::Explicit => "an explicit path",
            Self::EnvVar => "ORT_DYLIB_PATH",
            Self::BuildTime => "the path recorded at build time",
        }
    }
}

/// Picks the library file to load and checks that it exists.
pub fn locate(explicit: Option<&Path>) -> Result<(PathBuf, LibraryOrigin)> {
    let env = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty());
    let (path, origin) = if let Some(path) = explicit {
        (path.to_path_buf(), LibraryOrigin::Explicit)
    } else if let Some(path) = env {
        (PathBuf::from(path), LibraryOrigin::EnvVar)
    } else if let Some(deps) = BUILD_TIME_DEPS {
        let file = Path::new(deps).join(format!("onnxruntime/lib/libonnxruntime.so.{ORT_VERSION}"));
        (file, LibraryOrigin::BuildTime)
    } else {
        return Err(Error::OrtLibraryUnconfigured);
    };
    if !path.is_file() {
        return Err(Error::OrtLibraryMissing {
            path,
            origin: origin.describe(),
            wanted: ORT_VERSION,
        });
    }
    Ok((path, origin))
}

/// The loaded library and its environment; set once per process.
static LOADED: Mutex<Option<PathBuf>> = Mutex::new(None);
static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Loads ONNX Runtime (once per process) and returns the library path in use.
///
/// Calling it again is cheap; asking for a different explicit file after one was loaded is an
/// [`Error::OrtAlreadyLoaded`].
pub fn init(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut loaded = LOADED.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(current) = loaded.as_ref() {
        if let Some(requested) = explicit
            && requested != current
        {
            return Err(Error::OrtAlreadyLoaded {
                loaded: current.clone(),
                requested: requested.to_path_buf(),
            });
        }
        return Ok(current.clone());
    }
    let (path, origin) = locate(explicit)?;
    let builder = ort::init_from(&path)
        .map_err(|e| Error::OrtLibraryLoad { path: path.clone(), message: e.to_string() })?;
    let environment = builder
        .with_name("seqforge")
        .build()
        .map_err(|e| Error::OrtLibraryLoad { path: path.clone(), message: e.to_string() })?;
    // Only this function sets it, under the lock, so it is empty here.
    let _ = ENVIRONMENT.set(environment);
    tracing::debug!(path = %path.display(), origin = origin.describe(), "loaded ONNX Runtime");
    *loaded = Some(path.clone());
    Ok(path)
}

/// The process's ONNX Runtime environment, loading the library first if needed.
pub fn environment() -> Result<&'static ort::environment::Environment> {
    init(None)?;
    ENVIRONMENT.get().ok_or(Error::OrtLibraryUnconfigured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_missing_file_says_to_run_setup() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.contains("/nonexistent/libonnxruntime.so"), "{text}");
        assert!(text.contains("cargo xtask setup"), "{text}");
    }

    #[test]
    fn a_file_that_is_not_onnxruntime_is_an_error_not_a_panic()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("seqforge-ort-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let fake = dir.join("libonnxruntime.so");
        std::fs::write(&fake, b"not a shared library")?;
        // Loading must fail cleanly. This test never succeeds in loading, so it cannot
        // disturb other tests of this process.
        let result = init(Some(&fake));
        std::fs::remove_dir_all(&dir)?;
        match result {
            Err(Error::OrtLibraryLoad { path, .. }) => assert_eq!(path, fake),
            // Another test of this process loaded the real library first.
            Err(Error::OrtAlreadyLoaded { .. }) => {}
            other => panic!("expected a load error, got {other:?}"),
        }
        Ok(())
    }
}
