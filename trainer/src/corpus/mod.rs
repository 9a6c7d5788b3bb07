//! Corpus recipes: real corpora built from registry packages.
//!
//! - [`bible`]: the Spanish–English Bible corpus (`seqforge-train corpus bible`).
//! - [`english`]: a monolingual English language-modeling corpus from two Bibles and three
//!   commentaries (`seqforge-train corpus english`).
//! - [`fetch`]: obtaining SWORD modules from Debian packages (`apt-get download` +
//!   `dpkg-deb -x`, no system install).
//! - [`sword`]: a reader for SWORD zText/zCom modules (`.conf`, `*.bzs`, `*.bzv`, `*.bzz`).
//! - [`osis`]: OSIS markup → clean text (optionally one line per paragraph).
//! - [`versification`]: the KJV and NRSVA versifications and the verse index layout.

use std::path::PathBuf;

pub mod bible;
pub mod english;
pub mod fetch;
pub mod osis;
pub mod sword;
pub mod versification;

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
    /// A module `.conf` file is malformed or asks for something this reader does not support.
    #[error("{path}: {message}")]
    Conf {
        /// The `.conf` file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A module data file is truncated or inconsistent.
    #[error("{path}: corrupt at byte offset {offset}: {message}")]
    Corrupt {
        /// The data file (`.bzs`, `.bzv` or `.bzz`).
        path: PathBuf,
        /// Byte offset in that file of the offending record or block.
        offset: u64,
        /// What is wrong.
        message: String,
    },
    /// An entry index past the end of the module.
    #[error("{module}: entry {index} out of range (the module has {len} entries)")]
    EntryOutOfRange {
        /// Module name.
        module: String,
        /// The requested entry.
        index: usize,
        /// Number of entries.
        len: usize,
    },
    /// A module does not have the layout a recipe expects.
    #[error("{module}: {message}")]
    Layout {
        /// Module name.
        module: String,
        /// What differs.
        message: String,
    },
    /// A module could not be found in a SWORD folder.
    #[error("module {module} not found under {dir} (expected {dir}/mods.d/<name>.conf); {hint}")]
    ModuleNotFound {
        /// Module name.
        module: String,
        /// The folder searched.
        dir: PathBuf,
        /// What to try.
        hint: String,
    },
    /// An external tool (apt-get, dpkg-deb) is missing or failed.
    #[error("{action}: {message}; {hint}")]
    Tool {
        /// What was being done, e.g. `fetching sword-text-kjv with apt-get download`.
        action: String,
        /// What happened (exit status, stderr tail).
        message: String,
        /// What to try.
        hint: String,
    },
    /// Invalid arguments.
    #[error("invalid argument: {0}")]
    Args(String),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// `seqforge-train corpus …` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CorpusCommand {
    /// Spanish–English Bible (RV1909 → KJV) from the SWORD modules of Debian packages
    /// `sword-text-sparv` and `sword-text-kjv`: writes train/valid/test.{es,en}.
    Bible(bible::BibleArgs),
    /// English language-modeling corpus (KJV, World English Bible, and the Matthew Henry,
    /// Scofield and Spurgeon commentaries) split by Bible book: writes
    /// train.txt/valid.txt/test.txt.
    English(english::EnglishArgs),
}

impl CorpusCommand {
    /// Runs the subcommand and prints its report on stdout.
    pub fn execute(&self) -> Result<()> {
        match self {
            CorpusCommand::Bible(args) => {
                let report = bible::run(args)?;
                println!("{report}");
                Ok(())
            }
            CorpusCommand::English(args) => {
                let report = english::run(args)?;
                println!("{report}");
                Ok(())
            }
        }
    }
}
