//! What seqforge's programs share at their edge:
//!
//! - [`error_chain`]: an error and its causes as one line, `outer: inner: …` (the command lines
//!   print it, the C ABI keeps it as the last error message);
//! - [`finish`]: the end of a command line's `main`. A user error prints `error: <chain>` and
//!   exits with status 1. Returning `anyhow::Result` from `main` instead prints the error's
//!   `Debug` form, which with `RUST_BACKTRACE=1` (common on developers' machines) adds a stack
//!   backtrace under every user error. Panics are left to the panic hook: they are bugs;
//! - `init_logging` (feature `logging`): `tracing` on stderr, filtered by `RUST_LOG`, with
//!   ANSI colours only when stderr is a terminal (never in a file or a pipe) and `NO_COLOR` is
//!   unset.

use std::error::Error;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

/// An error and its causes, `outer: inner: …`, leaving out a cause whose text the message so
/// far already holds (many errors print their source in their own message).
pub fn error_chain(error: &dyn Error) -> String {
    let mut message = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message
}

/// Ends a command line's `main`: success is status 0; an error prints `error: <chain>` on
/// stderr (see [`error_chain`]) and is status 1.
///
/// ```no_run
/// fn run() -> anyhow::Result<()> {
///     anyhow::bail!("no such file: model/encoder.onnx")
/// }
///
/// fn main() -> std::process::ExitCode {
///     seqforge_cli_support::finish(run())
/// }
/// ```
pub fn finish<E: Into<Box<dyn Error + Send + Sync>>>(result: Result<(), E>) -> ExitCode {
    finish_to(&mut std::io::stderr(), result)
}

fn finish_to<E: Into<Box<dyn Error + Send + Sync>>>(
    out: &mut dyn Write,
    result: Result<(), E>,
) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn Error + Send + Sync> = e.into();
            let _ = writeln!(out, "error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}

/// Whether output to stderr may carry ANSI colour codes: only on a terminal, and not when
/// `NO_COLOR` is set (to anything but the empty string).
pub fn stderr_colour() -> bool {
    colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Sets up `tracing` once for the process: events on stderr, filtered by `RUST_LOG` (else
/// `default_filter`, e.g. `"warn"`), coloured when [`stderr_colour`] says so. A second call
/// keeps the first subscriber.
#[cfg(feature = "logging")]
pub fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colour())
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn chains_leave_out_causes_already_told() {
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(inner).context("reading model/encoder.onnx");
        assert_eq!(error_chain(e.as_ref()), "reading model/encoder.onnx: disk on fire");
        let e = e.context("loading model: disk on fire");
        assert_eq!(
            error_chain(e.as_ref()),
            "loading model: disk on fire: reading model/encoder.onnx"
        );
        let boxed: Box<dyn Error + Send + Sync> = e.into();
        assert_eq!(error_chain(&*boxed), "loading model: disk on fire: reading model/encoder.onnx");
    }

    #[test]
    fn finish_prints_the_chain_and_fails() -> anyhow::Result<()> {
        let mut out = Vec::new();
        assert_eq!(finish_to(&mut out, Ok::<(), anyhow::Error>(())), ExitCode::SUCCESS);
        assert!(out.is_empty());
        let e = anyhow::Error::new(std::io::Error::other("not found")).context("opening a.txt");
        assert_eq!(finish_to(&mut out, Err(e)), ExitCode::FAILURE);
        assert_eq!(finish_to(&mut out, Err(std::io::Error::other("b"))), ExitCode::FAILURE);
        assert_eq!(String::from_utf8(out)?, "error: opening a.txt: not found\nerror: b\n");
        Ok(())
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsStr::new(""))));
        assert!(!colour(true, Some(OsStr::new("1"))));
        assert!(!colour(false, None));
    }
}
