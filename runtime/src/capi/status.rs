//! Status codes, the thread-local last error message and the guard every entry point runs in.

use std::cell::RefCell;
use std::ffi::{CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use seqforge_cli_support::error_chain;

use crate::Error;

/// What a `seqforge_*` function returns: `SEQFORGE_STATUS_OK` or why it failed. After a
/// failure, `seqforge_last_error()` returns a message with the details.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqforgeStatus {
    /// Success.
    Ok = 0,
    /// A pointer argument that must not be NULL was NULL.
    NullArgument = 1,
    /// A text (or another string argument) is not valid UTF-8.
    InvalidUtf8 = 2,
    /// A handle is not NULL but not live: already freed, never created by this library, or a
    /// handle of the other kind (a result passed as a translator).
    InvalidHandle = 3,
    /// The options struct or the search options JSON is malformed or out of range (the message
    /// names the field).
    InvalidOptions = 4,
    /// The ONNX Runtime shared library could not be found or loaded.
    RuntimeLibrary = 5,
    /// The model directory could not be opened (missing or corrupt files, a newer format, an
    /// unavailable device; the message names the file).
    ModelLoad = 6,
    /// A text is longer than the model's maximum source positions, or a prompt leaves no
    /// position of a language model to continue in (and truncation is off; the message names
    /// the text's index).
    TextTooLong = 7,
    /// Translation or completion failed (tokenizer or ONNX Runtime error during search).
    Translate = 8,
    /// A bug in seqforge: a Rust panic was caught at the C boundary. The handle stays usable.
    Panic = 9,
    /// The model's task does not do what was asked: `seqforge_translate` on a language model,
    /// or `seqforge_complete` on a translation model (the message names the model's task and
    /// the call to use instead). The translator stays usable.
    WrongTask = 10,
}

/// A failed call: its status and the message `seqforge_last_error` returns.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: SeqforgeStatus,
    pub(crate) message: String,
}

impl Failure {
    /// A failure with a message.
    pub(crate) fn new(status: SeqforgeStatus, message: impl Into<String>) -> Self {
        Self { status, message: message.into() }
    }

    /// A runtime error, classified; `otherwise` is the status of errors that are neither
    /// options, the ONNX Runtime library, over-long texts nor a model of the wrong task.
    pub(crate) fn from_error(error: &Error, otherwise: SeqforgeStatus) -> Self {
        let status = match error {
            Error::InvalidOptions { .. } => SeqforgeStatus::InvalidOptions,
            Error::TextTooLong { .. } => SeqforgeStatus::TextTooLong,
            Error::TaskMismatch { .. } => SeqforgeStatus::WrongTask,
            Error::OrtLibraryMissing { .. }
            | Error::OrtLibraryUnconfigured
            | Error::OrtLibraryLoad { .. }
            | Error::OrtAlreadyLoaded { .. } => SeqforgeStatus::RuntimeLibrary,
            _ => otherwise,
        };
        Self { status, message: error_chain(error) }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Stores this thread's last error message (empty after a success).
fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // `try_with`: during thread teardown the slot may be gone; then there is nobody to read it.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// A pointer to this thread's last error message; valid until the next `seqforge_*` call on
/// this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"seqforge: the thread's error slot is gone (thread exiting)".as_ptr())
}

/// Runs an entry point's body: no panic crosses the C boundary, the last error message is set
/// (cleared on success) and the status returned.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> SeqforgeStatus {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => {
            set_last_error("");
            SeqforgeStatus::Ok
        }
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            failure.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_owned());
            set_last_error(&format!("internal error (a bug in seqforge, please report): {what}"));
            SeqforgeStatus::Panic
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    fn last_error() -> String {
        // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
        unsafe { CStr::from_ptr(last_error_ptr()) }.to_string_lossy().into_owned()
    }

    #[test]
    fn panics_become_a_status_and_messages_are_kept_per_call() {
        let status = guard(|| panic!("boom {}", 42));
        assert_eq!(status, SeqforgeStatus::Panic);
        assert!(last_error().contains("boom 42"), "{}", last_error());
        let status = guard(|| Err(Failure::new(SeqforgeStatus::Translate, "a\0b")));
        assert_eq!(status, SeqforgeStatus::Translate);
        assert_eq!(last_error(), "a\\0b", "a NUL in a message is escaped, not truncated");
        assert_eq!(guard(|| Ok(())), SeqforgeStatus::Ok);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn error_chains_skip_causes_already_in_the_message() {
        let io = std::io::Error::other("disk on fire");
        let wrapped = Error::Io { path: "/m/encoder.onnx".into(), source: io };
        assert_eq!(error_chain(&wrapped), "/m/encoder.onnx: disk on fire");
        let failure = Failure::from_error(&wrapped, SeqforgeStatus::ModelLoad);
        assert_eq!(failure.status, SeqforgeStatus::ModelLoad);
        let options = Error::InvalidOptions { field: Some("beam".into()), message: "x".into() };
        let failure = Failure::from_error(&options, SeqforgeStatus::Translate);
        assert_eq!(failure.status, SeqforgeStatus::InvalidOptions);
        let mismatch = Error::TaskMismatch {
            dir: "/m".into(),
            task: seqforge_schemas::contract::Task::LanguageModeling,
            what: "`seqforge_translate`".into(),
            needed: seqforge_schemas::contract::Task::Translation,
        };
        let failure = Failure::from_error(&mismatch, SeqforgeStatus::Translate);
        assert_eq!(failure.status, SeqforgeStatus::WrongTask);
        assert!(failure.message.contains("a language_modeling model"), "{}", failure.message);
    }
}
