//! The HTTP API: routes, request checks, the JSON wire format and the metrics middleware.
//!
//! - `POST /v1/translate` with `{"texts": [...], "options": {...}}` (`options` optional: the
//!   fields of [`GenerationOptions`], merged over the server's defaults; unknown fields are
//!   errors) answers `{"translations": [{"hypotheses": [{"text", "tokens", "score",
//!   "positional_scores"}]}], "options": {...}}` with one translation per text, in order.
//! - `POST /v1/complete` with `{"prompts": [...], "options": {...}}` on a language model
//!   answers `{"completions": [{"hypotheses": [...]}], "options": {...}}`: per prompt its
//!   continuations (the prompt not repeated; an empty prompt is unconditional generation),
//!   through the same limits, queue, batching and metrics as `/v1/translate`. Each route on a
//!   model of the other task is a 400 `wrong_task` naming the model's task.
//! - `GET /healthz` answers `{"status": "ok", ...}` while the server runs.
//! - `GET /metrics` answers the Prometheus text exposition of [`Metrics`].
//!
//! Errors are JSON (see [`ApiError`]): 400 malformed body, wrong types, invalid options or a
//! text the model cannot take; 413 too many texts, too long a text (with its `index`) or too
//! large a body; 503 with `Retry-After` when the queue is full or `--max-concurrent-requests`
//! are in progress (then before the body is read, which bounds the bodies held in memory);
//! 504 after `--request-timeout-ms` (counted from admission, so a body sent too slowly is one);
//! 500 when the model fails.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::batcher::{Engine, Queue};
use super::error::ApiError;
use super::metrics::Metrics;
use crate::pool::{TranslatedHypothesis, check_options, parse_options};
use crate::search::GenerationOptions;
use seqforge_schemas::contract::Task;

/// Request limits checked before a request is queued.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Texts per request at most.
    pub max_texts: usize,
    /// Characters per text at most.
    pub max_chars: usize,
    /// How long a request may take in all.
    pub timeout: Duration,
    /// `/v1/translate` requests in progress at most.
    pub max_concurrent: usize,
}

impl Limits {
    /// The largest body accepted: every text at its longest in escaped UTF-8, plus room for
    /// the options.
    pub fn max_body_bytes(&self) -> usize {
        self.max_texts
            .saturating_mul(self.max_chars.saturating_mul(12).saturating_add(8))
            .saturating_add(64 * 1024)
    }
}

/// Everything the handlers share.
pub struct App {
    /// The translator.
    pub engine: Arc<dyn Engine>,
    /// The request queue the batcher drains.
    pub queue: Arc<Queue>,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Limits,
    /// One permit per `/v1/translate` request being received or processed
    /// (`--max-concurrent-requests`): bounds the request bodies in memory.
    pub admission: Arc<Semaphore>,
    /// The `Retry-After` seconds of a refused request.
    pub retry_after_s: u64,
}

/// The body of `POST /v1/translate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TranslateRequest {
    texts: Vec<String>,
    #[serde(default)]
    options: Option<serde_json::Value>,
}

/// The body of `POST /v1/complete`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompleteRequest {
    prompts: Vec<String>,
    #[serde(default)]
    options: Option<serde_json::Value>,
}

/// A text route's request body as read: the texts (`texts` of `/v1/translate`, `prompts` of
/// `/v1/complete`) and the options as given.
#[derive(Debug, Clone, PartialEq)]
pub struct TextsRequest {
    /// The texts or prompts, in order.
    pub texts: Vec<String>,
    /// The `options` object, when given (not yet checked).
    pub options: Option<serde_json::Value>,
}

impl TextsRequest {
    /// Reads the body of the route for `task` (`/v1/translate` for translation,
    /// `/v1/complete` for a language model); unknown fields are errors.
    pub fn parse(task: Task, body: &[u8]) -> Result<Self, ApiError> {
        let invalid = |e: serde_json::Error| ApiError::InvalidJson(e.to_string());
        Ok(match task {
            Task::Translation => {
                let r: TranslateRequest = serde_json::from_slice(body).map_err(invalid)?;
                Self { texts: r.texts, options: r.options }
            }
            Task::LanguageModeling => {
                let r: CompleteRequest = serde_json::from_slice(body).map_err(invalid)?;
                Self { texts: r.prompts, options: r.options }
            }
        })
    }

    /// The request's options merged over `defaults` and checked (the defaults when it gives
    /// none).
    pub fn options(&self, defaults: &GenerationOptions) -> Result<GenerationOptions, ApiError> {
        let options = match &self.options {
            None => defaults.clone(),
            Some(value) => parse_options(&value.to_string(), defaults)
                .map_err(|e| ApiError::InvalidOptions(e.to_string()))?,
        };
        check_options(&options).map_err(|e| ApiError::InvalidOptions(e.to_string()))?;
        Ok(options)
    }
}

#[derive(Serialize)]
struct WireTranslation {
    hypotheses: Vec<TranslatedHypothesis>,
}

/// The answer of either text route: `translations` or `completions` (serialized from the
/// typed values, so scores print as the f32 they are).
#[derive(Serialize)]
struct TextsResponse<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    translations: Option<Vec<WireTranslation>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    completions: Option<Vec<WireTranslation>>,
    options: &'a crate::search::GenerationOptions,
}

/// The two text routes: what each needs.
#[derive(Debug, Clone, Copy)]
struct TextRoute {
    path: &'static str,
    task: Task,
}

const TRANSLATE: TextRoute = TextRoute { path: "/v1/translate", task: Task::Translation };
const COMPLETE: TextRoute = TextRoute { path: "/v1/complete", task: Task::LanguageModeling };

/// The router of the server's three routes, with the metrics middleware.
pub fn router(app: Arc<App>) -> Router {
    let body_limit = app.limits.max_body_bytes();
    Router::new()
        .route(
            TRANSLATE.path,
            post(translate).layer(middleware::from_fn_with_state(Arc::clone(&app), admit)),
        )
        .route(
            COMPLETE.path,
            post(complete).layer(middleware::from_fn_with_state(Arc::clone(&app), admit)),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), track))
        .with_state(app)
}

/// A JSON response with `status`.
pub(crate) fn json_response(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (status, body).into_response();
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("serializing the answer: {e}"))
            .into_response(),
    }
}

/// Refuses a translate request before its body is read when it announces a body beyond the
/// limit (413) or when `--max-concurrent-requests` are already in progress (503), and bounds the time of an admitted one
/// by `--request-timeout-ms` from here, receiving its body included (504): a client that
/// announces a body and sends it slowly, or not at all, cannot hold a permit longer.
async fn admit(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    // A body announced beyond the limit is refused at once, not read until the limit is hit
    // (a client announcing 1 GB and sending slowly would otherwise hold a permit).
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let max = app.limits.max_body_bytes();
    if announced.is_some_and(|n| n > max as u64) {
        return ApiError::BodyTooLarge(format!(
            "the request announces {} bytes; at most {max} bytes are accepted with these limits",
            announced.unwrap_or_default()
        ))
        .into_response();
    }
    match Arc::clone(&app.admission).try_acquire_owned() {
        Ok(_permit) => match tokio::time::timeout(app.limits.timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => {
                // Texts already queued are dropped by the batcher now rather than later.
                app.queue.wake();
                ApiError::Timeout { ms: app.limits.timeout.as_millis() as u64 }.into_response()
            }
        },
        Err(_) => ApiError::TooManyRequests {
            max: app.limits.max_concurrent,
            retry_after_s: app.retry_after_s,
        }
        .into_response(),
    }
}

/// Counts every answer by route and status, and times `/v1/translate`.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let route = match request.uri().path() {
        "/v1/translate" => "/v1/translate",
        "/v1/complete" => "/v1/complete",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    app.metrics.count_request(route, status.as_u16());
    if route == TRANSLATE.path || route == COMPLETE.path {
        let seconds = start.elapsed().as_secs_f64();
        app.metrics.latency.observe(seconds);
        // Refusals under overload (503) are expected and counted in the metrics: not logged
        // one by one.
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::warn!(status = status.as_u16(), seconds, "translate request failed");
        } else {
            tracing::debug!(status = status.as_u16(), seconds, "translate request");
        }
    }
    response
}

async fn translate(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&app, body)?;
    let request = TextsRequest::parse(TRANSLATE.task, &body)?;
    drop(body);
    serve_texts(&app, TRANSLATE, request).await
}

async fn complete(
    State(app): State<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = read_body(&app, body)?;
    let request = TextsRequest::parse(COMPLETE.task, &body)?;
    drop(body);
    serve_texts(&app, COMPLETE, request).await
}

/// The request body, or the error of one too large or unreadable.
fn read_body(app: &App, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(format!(
                "at most {} bytes are accepted with these limits",
                app.limits.max_body_bytes()
            ))
        } else {
            ApiError::InvalidJson(e.body_text())
        }
    })
}

/// Checks, queues and answers the texts of a `/v1/translate` or `/v1/complete` request.
async fn serve_texts(
    app: &App,
    route: TextRoute,
    request: TextsRequest,
) -> Result<Response, ApiError> {
    let task = app.engine.task();
    if task != route.task {
        return Err(ApiError::WrongTask { route: route.path, needed: route.task, task });
    }
    let limits = &app.limits;
    let texts = &request.texts;
    if texts.len() > limits.max_texts {
        return Err(ApiError::TooManyTexts { count: texts.len(), max: limits.max_texts });
    }
    for (index, text) in texts.iter().enumerate() {
        let chars = text.chars().count();
        if chars > limits.max_chars {
            return Err(ApiError::TextTooLong { index, chars, max: limits.max_chars });
        }
    }
    let options = request.options(app.engine.default_options())?;
    // Each text is tokenized once, here: the queue and the model take these ids.
    let mut sources = Vec::with_capacity(texts.len());
    let mut tokens = Vec::with_capacity(texts.len());
    for (index, text) in texts.iter().enumerate() {
        let source = app
            .engine
            .encode(text)
            .map_err(|e| ApiError::InvalidText { index, message: text_error(e) })?;
        tokens.push(app.engine.padded_tokens(&source));
        sources.push(source);
    }
    let receiver = app.queue.submit(options.clone(), sources, tokens)?;
    let Ok(reply) = tokio::time::timeout(limits.timeout, receiver).await else {
        // Let the batcher drop the abandoned texts now rather than at its next batch.
        app.queue.wake();
        return Err(ApiError::Timeout { ms: limits.timeout.as_millis() as u64 });
    };
    let reply =
        reply.map_err(|_| ApiError::Internal("the request was dropped by the batcher".into()))?;
    let answers: Vec<WireTranslation> =
        reply?.into_iter().map(|t| WireTranslation { hypotheses: t.hypotheses }).collect();
    let body = match route.task {
        Task::Translation => {
            TextsResponse { translations: Some(answers), completions: None, options: &options }
        }
        Task::LanguageModeling => {
            TextsResponse { translations: None, completions: Some(answers), options: &options }
        }
    };
    Ok(json_response(StatusCode::OK, &body))
}

/// What is wrong with a text the model cannot take, without the pool's index (the caller
/// names the request's own).
fn text_error(error: crate::Error) -> String {
    match error {
        crate::Error::TextTooLong { tokens, max, .. } => format!(
            "{tokens} source tokens (EOS included) exceed the model's max_source_positions \
             {max} (the server cuts such texts only with --truncate-source)"
        ),
        other => other.to_string(),
    }
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::json!({
        "status": "ok",
        "workers": app.engine.workers(),
        "queued_texts": app.queue.queued_texts(),
        "running_batches": app.metrics.running_batches.load(Ordering::Relaxed),
    });
    json_response(StatusCode::OK, &body)
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut response = Body::from(app.metrics.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
