//! fairseq-compatible data formats and preprocessing.
//!
//! - [`dictionary`]: fairseq's `dict.txt` vocabulary ([`Dictionary`]).
//! - [`indexed`]: fairseq's "mmap" binarized datasets (`.bin` + `.idx`): a memory-mapped reader
//!   ([`IndexedDataset`]) and a writer ([`IndexedDatasetBuilder`]).
//! - [`text`]: reading text corpora line by line the way fairseq does (universal newlines,
//!   Python's whitespace), with UTF-8 / NUL validation.
//! - [`preprocess`]: `seqforge-train preprocess`, the counterpart of `fairseq-preprocess`.
//!
//! Every file written here is written to a temporary name in the destination folder and
//! renamed into place, so an interrupted run never leaves a half-written file under the final
//! name.

pub mod dictionary;
pub mod indexed;
pub mod preprocess;
pub mod text;

#[cfg(test)]
mod fairseq_fixture;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use dictionary::Dictionary;
pub use indexed::{DType, IndexedDataset, IndexedDatasetBuilder};
pub use preprocess::PreprocessArgs;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A malformed line in a text file (for example a `dict.txt` line without a count).
    #[error("{path}:{line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// A symbol listed twice in a `dict.txt` without the `#fairseq:overwrite` flag.
    #[error(
        "{path}:{line}: duplicate symbol {symbol:?} (add ' #fairseq:overwrite' to the line to \
         overwrite the earlier entry)"
    )]
    DuplicateSymbol {
        /// The file.
        path: PathBuf,
        /// 1-based line number of the second occurrence.
        line: u64,
        /// The symbol.
        symbol: String,
    },
    /// A line of a text file is not valid UTF-8.
    #[error("{path}:{line}: invalid UTF-8 (use --skip-invalid to skip such lines)")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
    },
    /// A line of a text file contains a NUL byte.
    #[error("{path}:{line}: NUL byte in text (use --skip-invalid to skip such lines)")]
    NulByte {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
    },
    /// Source and target files of a parallel corpus have different numbers of lines.
    #[error("line counts differ: {src_path} has {src_lines} lines but {tgt_path} has {tgt_lines}")]
    LineCountMismatch {
        /// The source-language file.
        src_path: PathBuf,
        /// Its number of lines.
        src_lines: u64,
        /// The target-language file.
        tgt_path: PathBuf,
        /// Its number of lines.
        tgt_lines: u64,
    },
    /// A binarized dataset (`.idx` / `.bin`) is malformed or unsupported.
    #[error("{path}: {message}")]
    Index {
        /// The offending file (`.idx` or `.bin`).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An item index past the end of a dataset.
    #[error("{path}: item {index} out of range (the dataset has {len} items)")]
    OutOfRange {
        /// The dataset's `.idx` file.
        path: PathBuf,
        /// The requested index.
        index: usize,
        /// The number of items.
        len: usize,
    },
    /// A token id that does not fit the dataset's element type.
    #[error("{path}: token id {id} does not fit the dataset's element type {dtype}")]
    IdOutOfRange {
        /// The dataset file.
        path: PathBuf,
        /// The id.
        id: u64,
        /// The element type.
        dtype: DType,
    },
    /// A HuggingFace tokenizer could not be loaded or failed to encode.
    #[error("tokenizer {path}: {message}")]
    Tokenizer {
        /// The `tokenizer.json`.
        path: PathBuf,
        /// The tokenizer library's message.
        message: String,
    },
    /// Invalid options or an output that would be overwritten.
    #[error("{0}")]
    Config(String),
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] for `path`.
pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io { path: path.to_path_buf(), source }
}

/// A path next to `path` for writing before the final rename: `{path}.tmp-{pid}-{n}`.
pub(crate) fn temp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".tmp-{}-{n}", std::process::id()));
    PathBuf::from(name)
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, then a rename.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io_err(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
