//! Fuzz targets over seqforge's loaders: one function per input format, each calling the real
//! loader on arbitrary bytes. A loader may answer `Ok` or `Err`; a panic, an abort, a hang or
//! an allocation its input cannot justify is a bug in the loader (fixed there, with a
//! regression test beside it).
//!
//! | target | loader |
//! |---|---|
//! | `dict` | `dict.txt`: [`seqforge_schemas::contract::Vocabulary`] and the trainer's `Dictionary` |
//! | `indexed` | `.idx`/`.bin` pairs: the runtime's and the trainer's `IndexedDataset` |
//! | `checkpoint` | `config.json` + `model.safetensors`: [`seqforge_exporter::compile`] |
//! | `manifest` | `manifest.json`: [`seqforge_schemas::contract::Manifest`] |
//! | `onnx_metadata` | an ONNX model's `metadata_props`: `ModelContract::from_metadata` |
//! | `tokenizer` | `tokenizer.json`: the runtime's `TextPipeline` |
//! | `options` | search options JSON of the C ABI and bodies of the HTTP text routes |
//! | `sword` | a SWORD zText/zCom module (`.conf` and six data files) |
//! | `osis` | OSIS markup of one SWORD entry |
//! | `pickle` | fairseq's safe unpickler |
//! | `fairseq_pt` | a fairseq `.pt` checkpoint through the exporter |
//!
//! Inputs of loaders that read several files are the files joined with [`SEPARATOR`] (see
//! [`split`] and [`join`]); loaders that only take a path get the bytes written to a per-thread
//! scratch folder first.
//!
//! Who drives them:
//! - `fuzz/afl` (outside the workspace, built with `cargo afl`) is the coverage-guided harness;
//!   `cargo xtask fuzz` builds and runs it.
//! - This crate's test replays every file of `fuzz/corpus/<target>/` (the seeds, made from real
//!   files) and `fuzz/regressions/<target>/` (inputs that once failed) under [`CappedAlloc`],
//!   so CI checks them without AFL.

mod alloc;
mod targets;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

pub use alloc::CappedAlloc;

/// Errors of the harness itself (never of a loader: those are the expected outcome).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The scratch folder or a file in it could not be made or written.
    #[error("fuzz scratch file {path}: {source}")]
    Scratch {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No target has this name.
    #[error("no fuzz target `{name}` (known: {known})")]
    UnknownTarget {
        /// The name asked for.
        name: String,
        /// The known names.
        known: String,
    },
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// One fuzz target.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// Its name (the folder name of its corpus and regressions).
    pub name: &'static str,
    /// What it feeds the bytes to.
    pub about: &'static str,
    run: fn(&[u8]) -> Result<bool>,
}

impl Target {
    /// Feeds `data` to the target's loaders and answers whether they accepted it. Loader
    /// errors are an answer (`Ok(false)`); `Err` means the harness could not set the input up
    /// (its scratch files).
    pub fn run(&self, data: &[u8]) -> Result<bool> {
        (self.run)(data)
    }
}

/// Every target, in the order `cargo xtask fuzz` runs them.
pub fn targets() -> &'static [Target] {
    targets::ALL
}

/// The target called `name`.
pub fn target(name: &str) -> Result<&'static Target> {
    targets().iter().find(|t| t.name == name).ok_or_else(|| Error::UnknownTarget {
        name: name.to_string(),
        known: targets().iter().map(|t| t.name).collect::<Vec<_>>().join(", "),
    })
}

/// What separates the files of a multi-file input (unlikely inside real files, and easy for a
/// fuzzer to keep or drop whole).
pub const SEPARATOR: &[u8] = b"\n\x00=*=FILE=*=\x00\n";

/// The first `n` files of a joined input; missing ones are empty, and the last one takes
/// everything after the `n - 1`-th separator.
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match find(rest, SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    while parts.len() < n {
        parts.push(&[]);
    }
    parts
}

/// Files joined into one input (the inverse of [`split`]).
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(SEPARATOR);
        }
        out.extend_from_slice(part);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

thread_local! {
    static SCRATCH: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
}

/// This thread's scratch folder (made on first use, removed when the thread ends).
fn scratch() -> Result<PathBuf> {
    SCRATCH.with(|cell| {
        let mut slot = cell.borrow_mut();
        if let Some(dir) = slot.as_ref() {
            return Ok(dir.path().to_path_buf());
        }
        let dir = tempfile::Builder::new()
            .prefix("seqforge-fuzz-")
            .tempdir()
            .map_err(|source| Error::Scratch { path: std::env::temp_dir(), source })?;
        let path = dir.path().to_path_buf();
        *slot = Some(dir);
        Ok(path)
    })
}

/// Writes `bytes` to `path`, making its folder.
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let scratch = |source| Error::Scratch { path: path.to_path_buf(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(scratch)?;
    }
    std::fs::write(path, bytes).map_err(scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_inverts_join_and_pads_missing_files() {
        let joined = join(&[b"a", b"", b"c\nd"]);
        assert_eq!(split(&joined, 3), vec![&b"a"[..], b"", b"c\nd"]);
        assert_eq!(split(&joined, 2), vec![&b"a"[..], &joined[1 + SEPARATOR.len()..]]);
        assert_eq!(split(b"x", 3), vec![&b"x"[..], b"", b""]);
    }

    #[test]
    fn unknown_target_names_the_known_ones() {
        let err = target("nope").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("dict") && err.contains("fairseq_pt"), "{err}");
        assert_eq!(target("sword").map(|t| t.name).ok(), Some("sword"));
    }
}
