//! `seqforge serve MODEL_DIR`: an HTTP translation server with dynamic batching.
//!
//! The server (tokio + axum) answers `POST /v1/translate`, `GET /healthz` and `GET /metrics`
//! (see [`http`] for the wire format and status codes). Requests go through a bounded queue
//! to a batcher ([`batcher`]) that merges queued texts with identical options (and, unless
//! `--mixed-length-batches`, the same source length) into model batches of at most
//! `--max-batch-tokens` source tokens, waiting at most `--max-wait-ms` for a batch to fill,
//! and runs up to `--workers` batches at once on a shared [`TranslatorPool`]. Every request
//! gets exactly the translations it would get alone: ONNX Runtime's numbers do not depend on
//! how many sentences share a batch, but padding a shorter source changes the last bits of its
//! scores, so batches hold sources of one length by default.
//!
//! Overload is refused, never buffered: a request whose texts do not fit in `--max-queue`,
//! or that arrives while `--max-concurrent-requests` are in progress, gets 503 with
//! `Retry-After`. `--max-texts-per-request` and `--max-chars-per-text` bound
//! each request (413), `--request-timeout-ms` bounds its time, receiving the body included
//! (504). A connection that sends no complete request head within `--idle-timeout-ms` (a new
//! one that sends nothing or dribbles its headers, or a kept-alive one between requests) is
//! closed. SIGTERM or Ctrl-C stops accepting connections, finishes the requests in flight,
//! and exits 0.
//!
//! With `--port 0` the system picks a free port; the first line on stdout is always
//! `listening on HOST:PORT` with the bound address. Logs go to stderr (`RUST_LOG`, default
//! `info` for the server, `warn` otherwise).

pub mod batcher;
pub mod error;
pub mod http;
pub mod metrics;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

pub use error::{ApiError, Error};

use crate::cli::ModelArgs;
use crate::pool::{PoolConfig, TranslatorPool};
use batcher::{BatchConfig, Engine, Queue};
use http::{App, Limits};
use metrics::Metrics;

/// `seqforge serve`.
#[derive(Debug, Clone, Args)]
#[command(after_help = "\
Example:
  seqforge serve models/tiny --port 8080 --workers 2
  curl -s localhost:8080/v1/translate -d '{\"texts\": [\"Hola.\"], \"options\": {\"beam\": 4}}'")]
pub struct ServeArgs {
    /// Model and device.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port; the bound address is the first stdout line).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Model batches that run at once (translator replicas, each with --threads threads).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Source tokens (EOS included) per model batch at most; 1 serves each text alone.
    #[arg(long, default_value_t = 2048)]
    pub max_batch_tokens: usize,
    /// How long the oldest queued request may wait for others to fill its batch while a
    /// worker is free (0: a free worker takes at once what is queued; under load batches
    /// still fill while the workers are busy).
    #[arg(long, default_value_t = 0)]
    pub max_wait_ms: u64,
    /// Texts waiting for a batch at most; a request that does not fit gets 503.
    #[arg(long, default_value_t = 1024)]
    pub max_queue: usize,
    /// Translate requests being received or processed at once at most; more get 503 before
    /// their body is read (this bounds the request bodies held in memory).
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// Texts per request at most (more: 413).
    #[arg(long, default_value_t = 64)]
    pub max_texts_per_request: usize,
    /// Characters per text at most (more: 413 naming the text's index).
    #[arg(long, default_value_t = 2000)]
    pub max_chars_per_text: usize,
    /// Time a request may take in all, queueing included (more: 504).
    #[arg(long, default_value_t = 30_000)]
    pub request_timeout_ms: u64,
    /// A connection is closed when it has sent no complete request head for this long: a new
    /// connection that sends nothing (or its headers too slowly), or a kept-alive one between
    /// requests.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
    /// The Retry-After seconds sent with 503.
    #[arg(long, default_value_t = 1)]
    pub retry_after_s: u64,
    /// Cut texts longer than the model's max_source_positions instead of refusing them (400).
    #[arg(long)]
    pub truncate_source: bool,
    /// Batch sources of different lengths together (padded batches: fewer, larger batches,
    /// but scores may then differ from translating alone in their last bits). By default a
    /// model batch holds sources of one length, so every answer is exactly what translating
    /// the text alone gives.
    #[arg(long)]
    pub mixed_length_batches: bool,
}

impl ServeArgs {
    fn check(&self) -> Result<(), Error> {
        let positive = [
            ("workers", self.workers),
            ("max-batch-tokens", self.max_batch_tokens),
            ("max-queue", self.max_queue),
            ("max-concurrent-requests", self.max_concurrent_requests),
            ("max-texts-per-request", self.max_texts_per_request),
            ("max-chars-per-text", self.max_chars_per_text),
        ];
        for (flag, value) in positive {
            if value == 0 {
                return Err(Error::InvalidArgument { flag, message: "must be at least 1".into() });
            }
        }
        for (flag, value) in [
            ("request-timeout-ms", self.request_timeout_ms),
            ("idle-timeout-ms", self.idle_timeout_ms),
        ] {
            if value == 0 {
                return Err(Error::InvalidArgument { flag, message: "must be at least 1".into() });
            }
        }
        if self.max_queue < self.max_texts_per_request {
            return Err(Error::InvalidArgument {
                flag: "max-queue",
                message: format!(
                    "{} is below --max-texts-per-request {}: a full request could never be queued",
                    self.max_queue, self.max_texts_per_request
                ),
            });
        }
        if !self.model.model_dir.is_dir() {
            return Err(Error::ModelDirMissing(self.model.model_dir.clone()));
        }
        Ok(())
    }
}

/// Sets up `tracing` on stderr (`RUST_LOG`; default: `info` for the server, `warn` for the
/// rest; colours only on a terminal), once.
fn init_logging() {
    seqforge_cli_support::init_logging("warn,seqforge_runtime::serve=info");
}

/// Runs `seqforge serve` until SIGTERM or Ctrl-C, then finishes the requests in flight.
pub fn run(args: &ServeArgs) -> Result<(), Error> {
    init_logging();
    args.check()?;
    let runtime_options = args
        .model
        .runtime_options(args.workers)
        .map_err(|message| Error::InvalidArgument { flag: "device", message })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("seqforge-serve")
        .enable_all()
        .build()
        .map_err(|source| Error::Io { context: "starting the async runtime", source })?;
    let result = runtime.block_on(serve(args, runtime_options));
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

async fn serve(
    args: &ServeArgs,
    runtime_options: crate::onnx::RuntimeOptions,
) -> Result<(), Error> {
    let address = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| Error::Bind { address: address.clone(), source })?;
    let config = PoolConfig {
        model_dir: args.model.model_dir.clone(),
        runtime: runtime_options,
        workers: args.workers,
        max_sentences: None,
        max_tokens: None,
        truncate_source: args.truncate_source,
    };
    let pool = tokio::task::spawn_blocking(move || TranslatorPool::open(config))
        .await
        .map_err(|e| Error::Task(e.to_string()))?
        .map_err(Error::Model)?;
    let engine: Arc<dyn Engine> = Arc::new(pool);
    let metrics = Arc::new(Metrics::default());
    let metrics_for_connections = Arc::clone(&metrics);
    let queue = Arc::new(Queue::new(
        BatchConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_wait: Duration::from_millis(args.max_wait_ms),
            max_queue: args.max_queue,
            retry_after_s: args.retry_after_s,
            mixed_lengths: args.mixed_length_batches,
        },
        Arc::clone(&metrics),
    ));
    tokio::spawn(Arc::clone(&queue).run(Arc::clone(&engine)));
    let app = Arc::new(App {
        engine,
        queue: Arc::clone(&queue),
        metrics: Arc::clone(&metrics),
        limits: Limits {
            max_texts: args.max_texts_per_request,
            max_chars: args.max_chars_per_text,
            timeout: Duration::from_millis(args.request_timeout_ms),
            max_concurrent: args.max_concurrent_requests,
        },
        admission: Arc::new(tokio::sync::Semaphore::new(args.max_concurrent_requests)),
        retry_after_s: args.retry_after_s,
    });
    let shutdown = shutdown_signal()?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Io { context: "reading the bound address", source })?;
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "listening on {bound}");
        let _ = stdout.flush();
    }
    tracing::info!(
        address = %bound,
        model = %args.model.model_dir.display(),
        workers = args.workers,
        max_batch_tokens = args.max_batch_tokens,
        max_wait_ms = args.max_wait_ms,
        max_queue = args.max_queue,
        "serving"
    );
    let closing = Arc::clone(&queue);
    let idle = Duration::from_millis(args.idle_timeout_ms);
    accept_loop(listener, http::router(app), metrics_for_connections, idle, shutdown, move || {
        // Queued texts are run now, without waiting for their batches to fill.
        closing.close()
    })
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Serves HTTP/1.1 connections from `listener` with `router` until `shutdown` completes, then
/// stops accepting, calls `on_shutdown`, lets the requests in flight finish (idle connections
/// close at once) and returns. Each connection is closed after `idle` without a complete request head (hyper's
/// header-read timer, which runs from the connection's start and again after each response).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    metrics: Arc<Metrics>,
    idle: Duration,
    shutdown: impl std::future::Future<Output = ()>,
    on_shutdown: impl FnOnce(),
) {
    use std::sync::atomic::Ordering;

    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle).keep_alive(true);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        metrics.connections.fetch_add(1, Ordering::Relaxed);
        metrics.open_connections.fetch_add(1, Ordering::Relaxed);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                // Timeouts, resets and malformed heads end here: the client's doing.
                tracing::debug!(%peer, error = %e, "connection closed");
            }
            metrics.open_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing the requests in flight");
    on_shutdown();
    graceful.shutdown().await;
}

/// A future that completes on SIGTERM or Ctrl-C (SIGINT); on Unix the handlers are installed
/// now, so a signal that arrives before the future is polled is not lost.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind, context: &'static str| {
        signal(kind).map_err(|source| Error::Io { context, source })
    };
    let mut term = install(SignalKind::terminate(), "installing the SIGTERM handler")?;
    let mut int = install(SignalKind::interrupt(), "installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Error> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
