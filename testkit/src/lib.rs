//! What seqforge's tests share: visible test skips, and the check of a command line's answer
//! to a user error ([`check_user_error`]).
//!
//! ## Skips
//!
//! A test that cannot run here returns early through [`skip!`], naming a [`SkipKind`] and the
//! reason. The skip is never silent:
//!
//! - `SKIPPED <test>: <reason>` goes straight to the process's stderr (not through `eprintln!`,
//!   which the test harness captures), so a plain `cargo test` shows it;
//! - when [`SKIP_LOG_ENV`] names a file, one line `<kind>\t<test>\t<reason>` is appended to it
//!   ([`Skip::to_line`]). `cargo xtask test` sets it, because nextest hides the output of
//!   passing tests, then lists every skip at the end and fails on a kind its setup should have
//!   made impossible (the policy is in `xtask/src/test.rs`).
//!
//! The kinds are a closed enum: a new reason to skip is a new variant, and the compiler then
//! asks the xtask policy whether CI may accept it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The environment variable naming the file that skips are appended to.
pub const SKIP_LOG_ENV: &str = "SEQFORGE_SKIP_LOG";

/// Errors of recording and reading skips.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The skip log could not be appended to.
    #[error("recording a test skip in {path} (named by {SKIP_LOG_ENV}): {source}")]
    Write {
        /// The skip log.
        path: PathBuf,
        /// What the file system said.
        #[source]
        source: io::Error,
    },
    /// A line of the skip log is not a skip record.
    #[error("skip log line {line}: {message}: {text:?}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
        /// What is wrong with it.
        message: String,
    },
    /// A command line answered a user error otherwise than [`check_user_error`] asks.
    #[error("{0}")]
    UserError(String),
}

/// This crate's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a test skipped itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipKind {
    /// No CUDA device is visible (every CPU machine, CI included).
    NoCuda,
    /// The SWORD modules `cargo xtask setup` unpacks into `.deps/sword` are not there (setup
    /// ran with `--no-corpus`, or not at all).
    SwordModules,
}

impl SkipKind {
    /// Every kind.
    pub const ALL: [SkipKind; 2] = [SkipKind::NoCuda, SkipKind::SwordModules];

    /// The kind's name in the skip log.
    pub fn tag(self) -> &'static str {
        match self {
            SkipKind::NoCuda => "no-cuda",
            SkipKind::SwordModules => "sword-modules",
        }
    }

    /// The kind named `tag` in the skip log.
    pub fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.tag() == tag)
    }

    /// What is missing, in words.
    pub fn describe(self) -> &'static str {
        match self {
            SkipKind::NoCuda => "no CUDA device",
            SkipKind::SwordModules => "SWORD modules missing from .deps/sword",
        }
    }
}

/// One skipped test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skip {
    /// Why, as a kind.
    pub kind: SkipKind,
    /// The test, as nextest names it: `package[::binary] path::to::test`.
    pub test: String,
    /// Why, in words (what to do about it).
    pub reason: String,
}

impl Skip {
    /// The skip-log line (without the newline); tabs and line breaks in the fields become
    /// spaces.
    pub fn to_line(&self) -> String {
        format!("{}\t{}\t{}", self.kind.tag(), one_field(&self.test), one_field(&self.reason))
    }

    /// Reads a line written by [`Skip::to_line`]; `line_no` (1-based) goes into the error.
    pub fn parse_line(text: &str, line_no: usize) -> Result<Self> {
        let fail = |message: &str| Error::Parse {
            line: line_no,
            text: text.to_string(),
            message: message.to_string(),
        };
        let mut fields = text.splitn(3, '\t');
        let (Some(tag), Some(test), Some(reason)) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(fail("expected three tab-separated fields (kind, test, reason)"));
        };
        let kind = SkipKind::from_tag(tag).ok_or_else(|| fail("unknown kind"))?;
        if test.trim().is_empty() {
            return Err(fail("no test name"));
        }
        Ok(Self { kind, test: test.to_string(), reason: reason.to_string() })
    }
}

/// Every skip in a skip log's text (blank lines ignored).
pub fn parse_log(text: &str) -> Result<Vec<Skip>> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| Skip::parse_line(line, i + 1))
        .collect()
}

/// The `.deps/` folder `cargo xtask setup` fills, as `.cargo/config.toml` told the compiler
/// (`SEQFORGE_DEPS`); `None` when this was built outside the workspace's cargo configuration.
pub fn deps_dir() -> Option<PathBuf> {
    option_env!("SEQFORGE_DEPS").filter(|d| !d.is_empty()).map(PathBuf::from)
}

/// `.deps/sword`, where `cargo xtask setup` unpacks the SWORD packages (one folder each).
pub fn sword_dir() -> Option<PathBuf> {
    deps_dir().map(|d| d.join("sword"))
}

/// Records a skip of the test running on this thread: to stderr, and to the skip log when
/// [`SKIP_LOG_ENV`] names one. `package` and `module` are the caller's `CARGO_PKG_NAME` and
/// `module_path!()` ([`skip!`] passes them). Returns the record.
pub fn record(package: &str, module: &str, kind: SkipKind, reason: &str) -> Result<Skip> {
    let skip = Skip { kind, test: test_id(package, module), reason: reason.to_string() };
    let log = std::env::var_os(SKIP_LOG_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    record_to(&mut io::stderr(), log.as_deref(), &skip)?;
    Ok(skip)
}

/// Tells `skip` to `out` (stderr, written to directly: `eprintln!` would be captured by the
/// test harness) and appends it to `log`, if any.
fn record_to(out: &mut dyn Write, log: Option<&Path>, skip: &Skip) -> Result<()> {
    let _ = writeln!(out, "SKIPPED {}: {} ({})", skip.test, skip.reason, skip.kind.tag());
    if let Some(path) = log {
        let write = |path: &Path| -> io::Result<()> {
            let mut file = OpenOptions::new().create(true).append(true).open(path)?;
            // One write per record: appends from parallel test processes do not interleave.
            file.write_all(format!("{}\n", skip.to_line()).as_bytes())
        };
        write(path).map_err(|source| Error::Write { path: path.to_path_buf(), source })?;
    }
    Ok(())
}

/// The running test's name as nextest prints it: `package path::to::test` for a library's unit
/// tests, `package::binary name` for an integration test binary. libtest names each test's
/// thread after the test; elsewhere the module path stands in.
fn test_id(package: &str, module: &str) -> String {
    let binary = module.split("::").next().unwrap_or(module);
    let current = std::thread::current();
    let name = current.name().filter(|n| *n != "main").unwrap_or(module);
    if binary == package.replace('-', "_") {
        format!("{package} {name}")
    } else {
        format!("{package}::{binary} {name}")
    }
}

/// Checks a command line's answer to a user error: a non-zero exit status, a last stderr line
/// `error: …` that contains `names` (e.g. the file at fault), no stack backtrace (run it with
/// `RUST_BACKTRACE=1` to make this count) and no ANSI escape codes (its stderr was a pipe).
pub fn check_user_error(out: &std::process::Output, names: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("it exited successfully".to_string());
    }
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    if !(last.starts_with("error: ") && last.contains(names)) {
        problems.push(format!("its last line is not `error: …` naming {names:?}"));
    }
    if stderr.to_lowercase().contains("stack backtrace") {
        problems.push("it printed a stack backtrace".to_string());
    }
    if stderr.contains('\x1b') {
        problems.push("its stderr (a pipe) has ANSI escape codes".to_string());
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::UserError(format!(
        "a user error answered badly ({}): {}; stderr:\n{stderr}",
        out.status,
        problems.join("; ")
    )))
}

fn one_field(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

/// Skips the running test: records `kind` and the reason (`format!` arguments) with
/// [`record`], then returns `Ok(())` from the test, which must return a `Result` whose error
/// converts from [`Error`].
///
/// ```no_run
/// use seqforge_testkit::{SkipKind, skip};
///
/// fn needs_a_gpu(visible: bool) -> Result<(), Box<dyn std::error::Error>> {
///     if !visible {
///         skip!(SkipKind::NoCuda, "no CUDA device visible to libtorch");
///     }
///     unreachable!("runs only with a GPU")
/// }
/// needs_a_gpu(false)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[macro_export]
macro_rules! skip {
    ($kind:expr, $($reason:tt)+) => {{
        $crate::record(env!("CARGO_PKG_NAME"), module_path!(), $kind, &format!($($reason)+))?;
        return Ok(());
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn lines_round_trip_and_fields_stay_on_one_line() -> TestResult {
        for kind in SkipKind::ALL {
            assert_eq!(SkipKind::from_tag(kind.tag()), Some(kind));
            let skip = Skip {
                kind,
                test: "seqforge-tests::cuda gpu\tmatmul".into(),
                reason: "no device\n(run setup)".into(),
            };
            let line = skip.to_line();
            assert_eq!(line.lines().count(), 1, "{line:?}");
            let back = Skip::parse_line(&line, 1)?;
            assert_eq!(back.kind, kind);
            assert_eq!(back.test, "seqforge-tests::cuda gpu matmul");
            assert_eq!(back.reason, "no device (run setup)");
        }
        Ok(())
    }

    #[test]
    fn bad_lines_are_errors_naming_the_line() {
        let text = "no-cuda\tt1\twhy\n\nvalgrind\tt2\twhy\n";
        let e = parse_log(text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("line 3") && e.contains("unknown kind"), "{e}");
        let e = parse_log("no-cuda only-two").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("line 1") && e.contains("three"), "{e}");
        let e = parse_log("no-cuda\t \twhy").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("no test name"), "{e}");
    }

    #[test]
    fn records_are_appended_and_read_back() -> TestResult {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("skips.tsv");
        let first = Skip { kind: SkipKind::NoCuda, test: "p a".into(), reason: "r1".into() };
        let second = Skip { kind: SkipKind::SwordModules, test: "p b".into(), reason: "r2".into() };
        let mut told = Vec::new();
        record_to(&mut told, Some(&log), &first)?;
        record_to(&mut told, Some(&log), &second)?;
        record_to(&mut told, None, &first)?;
        assert_eq!(parse_log(&std::fs::read_to_string(&log)?)?, vec![first.clone(), second]);
        assert_eq!(
            String::from_utf8(told)?,
            "SKIPPED p a: r1 (no-cuda)\nSKIPPED p b: r2 (sword-modules)\nSKIPPED p a: r1 (no-cuda)\n"
        );
        // An unwritable log is an error naming it (the test then fails instead of skipping).
        let missing = dir.path().join("no/such/dir/skips.tsv");
        let e = record_to(&mut Vec::new(), Some(&missing), &first)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no/such/dir/skips.tsv") && e.contains(SKIP_LOG_ENV), "{e}");
        Ok(())
    }

    #[test]
    fn user_errors_are_one_message_without_backtrace_or_colour() {
        use std::os::unix::process::ExitStatusExt;
        let answer = |code: i32, stderr: &str| std::process::Output {
            status: std::process::ExitStatus::from_raw(code << 8),
            stdout: Vec::new(),
            stderr: stderr.as_bytes().to_vec(),
        };
        let good = "2026-01-01T00:00:00Z  INFO x: reading a.txt\nerror: a.txt: not found\n";
        assert!(check_user_error(&answer(1, good), "a.txt").is_ok());
        for (code, stderr, complaint) in [
            (0, good, "exited successfully"),
            (1, "error: b.txt: not found\n", "naming \"a.txt\""),
            (1, "Error: a.txt: not found\n\nStack backtrace:\n   0: main\n", "naming"),
            (1, "error: a.txt\nstack backtrace:\n", "a stack backtrace"),
            (1, "\x1b[32m INFO\x1b[0m x\nerror: a.txt: not found\n", "ANSI"),
        ] {
            let e = check_user_error(&answer(code, stderr), "a.txt")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(complaint), "{stderr:?}: {e}");
        }
    }

    #[test]
    fn test_ids_follow_nextest() {
        // libtest names this thread after the test.
        let id = test_id("seqforge-testkit", module_path!());
        assert_eq!(id, "seqforge-testkit tests::test_ids_follow_nextest");
        let id = test_id("seqforge-trainer", "bible");
        assert_eq!(id, "seqforge-trainer::bible tests::test_ids_follow_nextest");
    }
}
