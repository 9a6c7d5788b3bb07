//! The server's errors: [`Error`] for starting and running the server (bad flags, a port in
//! use, a model that does not open), [`ApiError`] for one HTTP request (each maps to a status
//! code and a JSON body).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Why the server could not start or stopped with a failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A command-line flag has a value the server cannot work with.
    #[error("--{flag}: {message}")]
    InvalidArgument {
        /// The flag, without the dashes.
        flag: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The model directory is not there.
    #[error("{0}: no such model directory")]
    ModelDirMissing(std::path::PathBuf),
    /// The listening socket could not be bound (address in use, no permission, bad host).
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// `host:port` as given.
        address: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The model could not be opened (missing or corrupt files, no ONNX Runtime, ...).
    #[error("opening the model: {0}")]
    Model(#[source] crate::Error),
    /// The async runtime could not be started, or serving failed on the socket.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The thread opening the model panicked or was cancelled.
    #[error("opening the model: the loading task failed: {0}")]
    Task(String),
}

/// Why one request failed: each variant has an HTTP status ([`ApiError::status`]) and a
/// stable machine-readable code ([`ApiError::code`]); the response body is
/// `{"error": {"code": …, "message": …, "index": …}}` (`index` only where a text is at fault).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The body is not JSON, or not a request object of the right shape and types.
    #[error("invalid request body: {0}")]
    InvalidJson(String),
    /// The `options` object has an unknown field, a wrong type or an invalid combination.
    #[error("invalid options: {0}")]
    InvalidOptions(String),
    /// More texts than `--max-texts-per-request`.
    #[error("{count} texts in one request; at most {max} are allowed (--max-texts-per-request)")]
    TooManyTexts {
        /// Texts in the request.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A text longer than `--max-chars-per-text` characters.
    #[error(
        "texts[{index}] has {chars} characters; at most {max} are allowed (--max-chars-per-text)"
    )]
    TextTooLong {
        /// 0-based index of the text in `texts`.
        index: usize,
        /// Its length in characters (Unicode scalar values).
        chars: usize,
        /// The limit.
        max: usize,
    },
    /// A text the model cannot take (too many source tokens without `--truncate-source`, or
    /// the tokenizer failed on it).
    #[error("texts[{index}]: {message}")]
    InvalidText {
        /// 0-based index of the text in `texts`.
        index: usize,
        /// What the model's text pipeline said.
        message: String,
    },
    /// The body is larger than the server accepts (derived from the two limits above).
    #[error("request body too large: {0}")]
    BodyTooLarge(String),
    /// The queue is full: retry after `retry_after_s` seconds.
    #[error(
        "server overloaded: the queue holds {queued} of at most {max} texts (--max-queue); \
         retry later"
    )]
    Overloaded {
        /// Texts waiting when the request arrived.
        queued: usize,
        /// The queue's capacity in texts.
        max: usize,
        /// The `Retry-After` value in seconds.
        retry_after_s: u64,
    },
    /// Too many `/v1/translate` requests are being received or processed at once: retry
    /// after `retry_after_s` seconds.
    #[error(
        "server overloaded: {max} translate requests are in progress \
         (--max-concurrent-requests); retry later"
    )]
    TooManyRequests {
        /// The limit.
        max: usize,
        /// The `Retry-After` value in seconds.
        retry_after_s: u64,
    },
    /// The request did not finish within `--request-timeout-ms`.
    #[error("the request did not finish within {ms} ms (--request-timeout-ms)")]
    Timeout {
        /// The limit in milliseconds.
        ms: u64,
    },
    /// A route the model's task does not serve (`/v1/translate` on a language model,
    /// `/v1/complete` on a translation model).
    #[error("{route} needs a {needed} model, but this server's model is a {task} model")]
    WrongTask {
        /// The route asked.
        route: &'static str,
        /// The task it needs.
        needed: seqforge_schemas::contract::Task,
        /// The model's task.
        task: seqforge_schemas::contract::Task,
    },
    /// Translation failed inside the model.
    #[error("translation failed: {0}")]
    Translation(String),
    /// The server is shutting down or lost the request (a worker panicked).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson(_)
            | Self::InvalidOptions(_)
            | Self::InvalidText { .. }
            | Self::WrongTask { .. } => StatusCode::BAD_REQUEST,
            Self::TooManyTexts { .. } | Self::TextTooLong { .. } | Self::BodyTooLarge(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Overloaded { .. } | Self::TooManyRequests { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Translation(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name of the error (`error.code` in the body).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidOptions(_) => "invalid_options",
            Self::TooManyTexts { .. } => "too_many_texts",
            Self::TextTooLong { .. } => "text_too_long",
            Self::InvalidText { .. } => "invalid_text",
            Self::BodyTooLarge(_) => "body_too_large",
            Self::Overloaded { .. } | Self::TooManyRequests { .. } => "overloaded",
            Self::Timeout { .. } => "timeout",
            Self::WrongTask { .. } => "wrong_task",
            Self::Translation(_) => "translation_failed",
            Self::Internal(_) => "internal",
        }
    }

    /// The index of the text at fault, where one is.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::TextTooLong { index, .. } | Self::InvalidText { index, .. } => Some(*index),
            _ => None,
        }
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code(), "message": self.to_string()});
        if let (Some(index), Some(map)) = (self.index(), error.as_object_mut()) {
            map.insert("index".into(), index.into());
        }
        serde_json::json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = super::http::json_response(self.status(), &self.body());
        if let Self::Overloaded { retry_after_s, .. }
        | Self::TooManyRequests { retry_after_s, .. } = self
        {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        response
    }
}
