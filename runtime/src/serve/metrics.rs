//! The server's metrics and their Prometheus text exposition (format 0.0.4), written by hand:
//! requests by route and status code, a request-latency histogram, a histogram of sentences
//! per model batch, queue-depth and running-batch gauges, and sentence / token counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Latency buckets in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// Sentences-per-batch buckets.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    /// Observations per bucket (not cumulative); one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        let state = HistogramState { counts: vec![0; bounds.len() + 1], sum: 0.0, count: 0 };
        Self { bounds, state: Mutex::new(state) }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let bucket = self.bounds.iter().position(|&b| value <= b).unwrap_or(self.bounds.len());
        let mut s = lock(&self.state);
        if let Some(c) = s.counts.get_mut(bucket) {
            *c += 1;
        }
        s.sum += value;
        s.count += 1;
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        lock(&self.state).count
    }

    /// The sum of all observations.
    pub fn sum(&self) -> f64 {
        lock(&self.state).sum
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let s = lock(&self.state).clone();
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&s.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", s.count);
        let _ = writeln!(out, "{name}_sum {}", s.sum);
        let _ = writeln!(out, "{name}_count {}", s.count);
    }
}

/// Everything `/metrics` reports.
#[derive(Debug)]
pub struct Metrics {
    /// `(route, status code)` → requests answered.
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Seconds from receiving a `/v1/translate` request to answering it (any status).
    pub latency: Histogram,
    /// Sentences per model batch.
    pub batch_sentences: Histogram,
    /// Texts waiting in the queue (not yet in a model batch).
    pub queued_texts: AtomicU64,
    /// Requests with texts waiting in the queue.
    pub queued_requests: AtomicU64,
    /// Model batches running now.
    pub running_batches: AtomicU64,
    /// Client connections open now (each closed by the client, by `--idle-timeout-ms`, or at
    /// shutdown).
    pub open_connections: AtomicU64,
    /// Connections accepted since the start.
    pub connections: AtomicU64,
    /// Sentences translated (texts answered with hypotheses).
    pub sentences: AtomicU64,
    /// Source tokens (EOS included, padding to `--pad-source-to-multiple` included) of the
    /// translated sentences.
    pub source_tokens: AtomicU64,
    /// Target tokens of every returned hypothesis (EOS included).
    pub generated_tokens: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            latency: Histogram::new(&LATENCY_BUCKETS),
            batch_sentences: Histogram::new(&BATCH_BUCKETS),
            queued_texts: AtomicU64::new(0),
            queued_requests: AtomicU64::new(0),
            running_batches: AtomicU64::new(0),
            open_connections: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            sentences: AtomicU64::new(0),
            source_tokens: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one answered request.
    pub fn count_request(&self, route: &'static str, status: u16) {
        *lock(&self.requests).entry((route, status)).or_insert(0) += 1;
    }

    /// Requests answered on `route` with `status` so far.
    pub fn requests(&self, route: &'static str, status: u16) -> u64 {
        lock(&self.requests).get(&(route, status)).copied().unwrap_or(0)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP seqforge_http_requests_total HTTP requests answered, by route and status code.\n\
             # TYPE seqforge_http_requests_total counter\n",
        );
        for ((route, code), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "seqforge_http_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        self.latency.write(
            &mut out,
            "seqforge_request_duration_seconds",
            "Time from receiving a /v1/translate request to answering it, any status.",
        );
        self.batch_sentences.write(
            &mut out,
            "seqforge_batch_sentences",
            "Sentences per model batch (the dynamic batcher's batch sizes).",
        );
        let gauges = [
            ("seqforge_queue_texts", "Texts waiting for a model batch.", &self.queued_texts),
            (
                "seqforge_queue_requests",
                "Requests with texts waiting for a model batch.",
                &self.queued_requests,
            ),
            ("seqforge_running_batches", "Model batches running now.", &self.running_batches),
            ("seqforge_open_connections", "Client connections open now.", &self.open_connections),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        let counters = [
            ("seqforge_connections_total", "Client connections accepted.", &self.connections),
            ("seqforge_translated_sentences_total", "Sentences translated.", &self.sentences),
            (
                "seqforge_source_tokens_total",
                "Source tokens (EOS and padding to --pad-source-to-multiple included) of the \
                 translated sentences.",
                &self.source_tokens,
            ),
            (
                "seqforge_generated_tokens_total",
                "Target tokens of all returned hypotheses (EOS included).",
                &self.generated_tokens,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_cumulative_buckets_and_labelled_counters() {
        let m = Metrics::default();
        m.count_request("/v1/translate", 200);
        m.count_request("/v1/translate", 200);
        m.count_request("/v1/translate", 503);
        m.batch_sentences.observe(1.0);
        m.batch_sentences.observe(3.0);
        m.batch_sentences.observe(1000.0);
        m.generated_tokens.fetch_add(17, Ordering::Relaxed);
        let text = m.render();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(has("seqforge_http_requests_total{route=\"/v1/translate\",code=\"200\"} 2"));
        assert!(has("seqforge_http_requests_total{route=\"/v1/translate\",code=\"503\"} 1"));
        assert!(has("seqforge_batch_sentences_bucket{le=\"1\"} 1"));
        assert!(has("seqforge_batch_sentences_bucket{le=\"2\"} 1"));
        assert!(has("seqforge_batch_sentences_bucket{le=\"4\"} 2"));
        assert!(has("seqforge_batch_sentences_bucket{le=\"512\"} 2"));
        assert!(has("seqforge_batch_sentences_bucket{le=\"+Inf\"} 3"));
        assert!(has("seqforge_batch_sentences_sum 1004"));
        assert!(has("seqforge_batch_sentences_count 3"));
        assert!(has("seqforge_generated_tokens_total 17"));
        assert!(has("# TYPE seqforge_queue_texts gauge"));
        assert_eq!(m.requests("/v1/translate", 200), 2);
    }
}
