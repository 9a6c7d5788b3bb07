//! The bounded request queue and the dynamic batcher.
//!
//! Requests enter a FIFO [`Queue`] of at most `max_queue` texts (a request that does not fit is
//! refused at once, so memory stays bounded under any load). One batcher task forms model
//! batches: it first waits for a free worker (one of as many slots as the translator pool has
//! workers), then takes the oldest queued text's options and source length and collects queued
//! texts with *identical* options and the same length (any length with `mixed_lengths`), in
//! arrival order, until their source tokens (EOS included) would exceed `max_batch_tokens` (a
//! single longer text still gets a batch of its own). "Length" is the length a source is
//! encoded with: its tokens rounded up to `--pad-source-to-multiple` (1 by default: the exact
//! length), so with a multiple of 8 sources of 9 to 16 tokens share batches. It dispatches as soon as the batch is
//! full, when the oldest request has waited `max_wait`, or when the server is shutting down.
//! A request's texts may be spread over several batches; its answer is sent when all are done.
//! Batches run on tokio's blocking threads. Batches of one encoded length pad every source as
//! translating it alone does, and ONNX Runtime's results do not depend on the number of
//! sentences in a batch, so every request gets exactly what translating it alone gives. Requests whose client has gone (timed
//! out) are dropped from the queue without being translated.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, Semaphore, oneshot};

use super::error::ApiError;
use super::metrics::Metrics;
use seqforge_schemas::contract::Task;

use crate::pool::{Translation, TranslatorPool};
use crate::search::GenerationOptions;
use crate::text::SourceLine;

/// What the batcher runs batches on: the [`TranslatorPool`] in the server, anything with the
/// same contract elsewhere.
pub trait Engine: Send + Sync + 'static {
    /// Encodes `text` once (what the request handler does before queueing it): its source ids,
    /// or an error when the text cannot be translated (too long, …).
    fn encode(&self, text: &str) -> crate::Result<SourceLine>;
    /// The length `source` is encoded with: its tokens (EOS included), rounded up as the engine
    /// pads sources. Sources with equal lengths get the same results in any batch.
    fn padded_tokens(&self, source: &SourceLine) -> usize;
    /// Translates already encoded `sources` with `options` (blocking), one result per source
    /// in input order; the results must not depend on which other sources are in the batch.
    fn translate(
        &self,
        sources: &[&SourceLine],
        options: &GenerationOptions,
    ) -> crate::Result<Vec<Translation>>;
    /// The options a request without `options` gets, and the base its options are merged on.
    fn default_options(&self) -> &GenerationOptions;
    /// How many batches may run at once.
    fn workers(&self) -> usize;
    /// The model's task: `/v1/translate` serves translation models, `/v1/complete` language
    /// models.
    fn task(&self) -> Task {
        Task::Translation
    }
}

impl Engine for TranslatorPool {
    fn encode(&self, text: &str) -> crate::Result<SourceLine> {
        TranslatorPool::encode_text(self, text)
    }

    fn padded_tokens(&self, source: &SourceLine) -> usize {
        TranslatorPool::padded_len(self, source)
    }

    fn translate(
        &self,
        sources: &[&SourceLine],
        options: &GenerationOptions,
    ) -> crate::Result<Vec<Translation>> {
        TranslatorPool::translate_encoded(self, sources, options)
    }

    fn default_options(&self) -> &GenerationOptions {
        TranslatorPool::default_options(self)
    }

    fn workers(&self) -> usize {
        TranslatorPool::workers(self)
    }

    fn task(&self) -> Task {
        TranslatorPool::task(self)
    }
}

/// The batcher's limits.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Source tokens (EOS included) per model batch at most.
    pub max_batch_tokens: usize,
    /// How long the oldest queued request may wait for others to join its batch.
    pub max_wait: Duration,
    /// Texts the queue holds at most.
    pub max_queue: usize,
    /// The `Retry-After` seconds of a refused request.
    pub retry_after_s: u64,
    /// Also batch sources of different lengths together (padded batches: larger batches,
    /// but scores may differ from translating alone in their last bits); by default a batch
    /// holds sources of one length only.
    pub mixed_lengths: bool,
}

/// What a request's sender receives.
pub type Reply = Result<Vec<Translation>, ApiError>;

/// One request's answer slots, shared by the batches its texts run in.
struct JobResults {
    slots: Vec<Option<Translation>>,
    remaining: usize,
    reply: Option<oneshot::Sender<Reply>>,
}

type Shared = Arc<Mutex<JobResults>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl JobResults {
    fn abandoned(&self) -> bool {
        self.reply.as_ref().is_none_or(oneshot::Sender::is_closed)
    }

    fn fail(&mut self, error: ApiError) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// A queued request.
struct Job {
    key: String,
    options: Arc<GenerationOptions>,
    /// The encoded texts; `None` once taken into a batch.
    texts: Vec<Option<SourceLine>>,
    tokens: Vec<usize>,
    /// Texts not yet taken into a batch.
    waiting: usize,
    enqueued: Instant,
    shared: Shared,
}

impl Job {
    /// Indices of the texts not yet taken into a batch.
    fn waiting_texts(&self) -> impl Iterator<Item = usize> + '_ {
        self.texts.iter().enumerate().filter(|(_, t)| t.is_some()).map(|(i, _)| i)
    }
}

/// A model batch: texts with identical options and where each answer goes.
struct Batch {
    options: Arc<GenerationOptions>,
    texts: Vec<SourceLine>,
    tokens: usize,
    targets: Vec<(Shared, usize)>,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    texts: usize,
    closing: bool,
}

/// The bounded request queue, shared by the HTTP handlers and the batcher task.
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
    config: BatchConfig,
    metrics: Arc<Metrics>,
}

enum Next {
    Take(Batch),
    Wait(Option<Instant>),
}

impl Queue {
    /// An empty queue.
    pub fn new(config: BatchConfig, metrics: Arc<Metrics>) -> Self {
        Self { state: Mutex::new(QueueState::default()), notify: Notify::new(), config, metrics }
    }

    /// The limits.
    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    /// Texts waiting now.
    pub fn queued_texts(&self) -> usize {
        lock(&self.state).texts
    }

    /// Queues one request's texts (with their source token counts), or refuses it with
    /// [`ApiError::Overloaded`] when they do not fit. The receiver gets the translations in
    /// input order, or the error that stopped them.
    pub fn submit(
        &self,
        options: GenerationOptions,
        texts: Vec<SourceLine>,
        tokens: Vec<usize>,
    ) -> Result<oneshot::Receiver<Reply>, ApiError> {
        let (tx, rx) = oneshot::channel();
        if texts.is_empty() {
            let _ = tx.send(Ok(Vec::new()));
            return Ok(rx);
        }
        let key = serde_json::to_string(&options)
            .map_err(|e| ApiError::Internal(format!("options do not serialize: {e}")))?;
        let n = texts.len();
        {
            let mut state = lock(&self.state);
            if state.texts + n > self.config.max_queue {
                return Err(ApiError::Overloaded {
                    queued: state.texts,
                    max: self.config.max_queue,
                    retry_after_s: self.config.retry_after_s,
                });
            }
            let shared = Arc::new(Mutex::new(JobResults {
                slots: (0..n).map(|_| None).collect(),
                remaining: n,
                reply: Some(tx),
            }));
            state.jobs.push_back(Job {
                key,
                options: Arc::new(options),
                texts: texts.into_iter().map(Some).collect(),
                tokens,
                waiting: n,
                enqueued: Instant::now(),
                shared,
            });
            state.texts += n;
            self.publish(&state);
        }
        self.notify.notify_one();
        Ok(rx)
    }

    /// From now on, batches are dispatched without waiting for more requests.
    pub fn close(&self) {
        lock(&self.state).closing = true;
        self.notify.notify_one();
    }

    /// Makes the batcher look at the queue again (e.g. to drop a request whose client left).
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    fn publish(&self, state: &QueueState) {
        self.metrics.queued_texts.store(state.texts as u64, Ordering::Relaxed);
        self.metrics.queued_requests.store(state.jobs.len() as u64, Ordering::Relaxed);
    }

    /// The next batch if one is due at `now`, else how long to wait for one.
    fn next_batch(&self, now: Instant) -> Next {
        let mut state = lock(&self.state);
        let before = state.jobs.len();
        state.jobs.retain(|job| !lock(&job.shared).abandoned());
        if state.jobs.len() != before {
            state.texts = state.jobs.iter().map(|j| j.waiting).sum();
            self.publish(&state);
        }
        let Some(head) = state.jobs.front() else { return Next::Wait(None) };
        let Some(first) = head.waiting_texts().next() else { return Next::Wait(None) };
        let key = head.key.clone();
        // Exact batches take only sources of the head text's length: no padding, so each
        // result is bit for bit what translating the text alone gives.
        let length = (!self.config.mixed_lengths).then(|| head.tokens[first]);
        let options = Arc::clone(&head.options);
        let deadline = head.enqueued + self.config.max_wait;
        let max_tokens = self.config.max_batch_tokens;
        let fits = |job: &Job, i: usize| length.is_none_or(|l| job.tokens[i] == l);
        let mut available = 0usize;
        'count: for job in state.jobs.iter().filter(|j| j.key == key) {
            for i in job.waiting_texts().filter(|&i| fits(job, i)) {
                available += job.tokens[i];
                if available >= max_tokens {
                    break 'count;
                }
            }
        }
        if available < max_tokens && now < deadline && !state.closing {
            return Next::Wait(Some(deadline));
        }
        let mut batch = Batch { options, texts: Vec::new(), tokens: 0, targets: Vec::new() };
        'jobs: for job in state.jobs.iter_mut().filter(|j| j.key == key) {
            let chosen: Vec<usize> = job.waiting_texts().filter(|&i| fits(job, i)).collect();
            for i in chosen {
                let t = job.tokens[i];
                if !batch.texts.is_empty() && batch.tokens + t > max_tokens {
                    break 'jobs;
                }
                let Some(text) = job.texts[i].take() else { continue };
                batch.texts.push(text);
                batch.tokens += t;
                batch.targets.push((Arc::clone(&job.shared), i));
                job.waiting -= 1;
            }
        }
        state.jobs.retain(|job| job.waiting > 0);
        state.texts -= batch.texts.len();
        self.publish(&state);
        Next::Take(batch)
    }

    /// The batcher: forms batches and runs them on `engine`, at most `engine.workers()` at a
    /// time, forever (the task ends with the runtime).
    pub async fn run(self: Arc<Self>, engine: Arc<dyn Engine>) {
        let slots = Arc::new(Semaphore::new(engine.workers().max(1)));
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
            let batch = loop {
                match self.next_batch(Instant::now()) {
                    Next::Take(batch) => break batch,
                    Next::Wait(None) => self.notify.notified().await,
                    Next::Wait(Some(deadline)) => {
                        tokio::select! {
                            () = self.notify.notified() => {}
                            () = tokio::time::sleep_until(deadline.into()) => {}
                        }
                    }
                }
            };
            let engine = Arc::clone(&engine);
            let metrics = Arc::clone(&self.metrics);
            tokio::spawn(async move {
                metrics.running_batches.fetch_add(1, Ordering::Relaxed);
                metrics.batch_sentences.observe(batch.texts.len() as f64);
                let Batch { options, texts, tokens, targets } = batch;
                let n = texts.len();
                let result = tokio::task::spawn_blocking(move || {
                    let refs: Vec<&SourceLine> = texts.iter().collect();
                    engine.translate(&refs, &options)
                })
                .await;
                drop(permit);
                metrics.running_batches.fetch_sub(1, Ordering::Relaxed);
                let result = match result {
                    Ok(Ok(t)) if t.len() == n => Ok(t),
                    Ok(Ok(t)) => Err(ApiError::Internal(format!(
                        "the translator returned {} results for {n} texts",
                        t.len()
                    ))),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, sentences = n, "a model batch failed");
                        Err(ApiError::Translation(e.to_string()))
                    }
                    Err(e) => Err(ApiError::Internal(format!("the batch's worker failed: {e}"))),
                };
                if result.is_ok() {
                    metrics.sentences.fetch_add(n as u64, Ordering::Relaxed);
                    metrics.source_tokens.fetch_add(tokens as u64, Ordering::Relaxed);
                }
                deliver(&metrics, targets, result);
            });
        }
    }
}

/// Puts a batch's results (or its error) into the requests they belong to, answering each
/// request whose last text this was.
fn deliver(
    metrics: &Metrics,
    targets: Vec<(Shared, usize)>,
    result: Result<Vec<Translation>, ApiError>,
) {
    match result {
        Ok(translations) => {
            for ((shared, slot), translation) in targets.into_iter().zip(translations) {
                let generated: usize = translation.hypotheses.iter().map(|h| h.tokens.len()).sum();
                metrics.generated_tokens.fetch_add(generated as u64, Ordering::Relaxed);
                let mut job = lock(&shared);
                if let Some(s) = job.slots.get_mut(slot) {
                    *s = Some(translation);
                }
                job.remaining = job.remaining.saturating_sub(1);
                if job.remaining == 0
                    && let Some(reply) = job.reply.take()
                {
                    let all: Option<Vec<Translation>> =
                        job.slots.iter_mut().map(Option::take).collect();
                    let answer =
                        all.ok_or_else(|| ApiError::Internal("a translation is missing".into()));
                    let _ = reply.send(answer);
                }
            }
        }
        Err(error) => {
            for (shared, _) in targets {
                lock(&shared).fail(error.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::TranslatedHypothesis;

    /// Translates a text to its upper case and records each batch (beam, texts); a text
    /// `fail` fails its batch. Source tokens are the text's bytes.
    #[derive(Default)]
    struct Recorder {
        batches: Mutex<Vec<(usize, Vec<String>)>>,
        defaults: GenerationOptions,
    }

    /// The Recorder's "encoding": one id per byte (so tokens are the text's bytes).
    fn decode(source: &SourceLine) -> String {
        source.ids.iter().map(|&b| char::from(b as u8)).collect()
    }

    impl Engine for Recorder {
        fn encode(&self, text: &str) -> crate::Result<SourceLine> {
            Ok(SourceLine {
                ids: text.bytes().map(u32::from).collect(),
                truncated: false,
                unknown: 0,
            })
        }

        fn padded_tokens(&self, source: &SourceLine) -> usize {
            source.ids.len()
        }

        fn translate(
            &self,
            sources: &[&SourceLine],
            options: &GenerationOptions,
        ) -> crate::Result<Vec<Translation>> {
            let texts: Vec<String> = sources.iter().map(|s| decode(s)).collect();
            lock(&self.batches).push((options.beam, texts.clone()));
            if texts.iter().any(|t| t == "fail") {
                return Err(crate::Error::DecoderState("scripted failure".into()));
            }
            Ok(texts
                .iter()
                .map(|t| Translation {
                    hypotheses: vec![TranslatedHypothesis {
                        text: t.to_uppercase(),
                        tokens: vec![1; t.len()],
                        score: 0.0,
                        positional_scores: Vec::new(),
                    }],
                })
                .collect())
        }

        fn default_options(&self) -> &GenerationOptions {
            &self.defaults
        }

        fn workers(&self) -> usize {
            1
        }
    }

    fn queue(max_batch_tokens: usize, max_queue: usize, mixed_lengths: bool) -> Arc<Queue> {
        let config = BatchConfig {
            max_batch_tokens,
            max_wait: Duration::from_secs(3600),
            max_queue,
            retry_after_s: 2,
            mixed_lengths,
        };
        Arc::new(Queue::new(config, Arc::new(Metrics::default())))
    }

    fn submit(queue: &Queue, beam: usize, texts: &[&str]) -> oneshot::Receiver<Reply> {
        let options = GenerationOptions { beam, ..Default::default() };
        let engine = Recorder::default();
        let sources: Vec<SourceLine> =
            texts.iter().map(|t| engine.encode(t).unwrap_or_else(|e| panic!("{e}"))).collect();
        let tokens = sources.iter().map(|s| engine.padded_tokens(s)).collect();
        queue.submit(options, sources, tokens).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn texts(reply: oneshot::Receiver<Reply>) -> Vec<String> {
        match reply.await {
            Ok(Ok(translations)) => {
                translations.into_iter().map(|t| t.hypotheses[0].text.clone()).collect()
            }
            other => panic!("expected translations, got {other:?}"),
        }
    }

    /// Queues three requests, lets the batcher run them one batch at a time (the queue is
    /// closing, so nothing waits) and returns the batches and the answers.
    async fn three_requests(mixed_lengths: bool) -> (Vec<(usize, Vec<String>)>, Vec<Vec<String>>) {
        let q = queue(10, 100, mixed_lengths);
        let a = submit(&q, 5, &["aaa", "bbb", "cccc"]);
        let b = submit(&q, 2, &["ddd"]);
        let c = submit(&q, 5, &["eee", "fff", "ggg"]);
        assert_eq!(q.queued_texts(), 7);
        q.close();
        let engine = Arc::new(Recorder::default());
        tokio::spawn(Arc::clone(&q).run(Arc::clone(&engine) as Arc<dyn Engine>));
        let answers = vec![texts(a).await, texts(b).await, texts(c).await];
        assert_eq!(q.queued_texts(), 0);
        let batches = lock(&engine.batches).clone();
        (batches, answers)
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| t.to_string()).collect()
    }

    #[tokio::test]
    async fn batches_group_identical_options_and_one_length_within_the_token_bound() {
        let (batches, answers) = three_requests(false).await;
        assert_eq!(
            batches,
            vec![
                (5, strings(&["aaa", "bbb", "eee"])),
                (5, strings(&["cccc"])),
                (2, strings(&["ddd"])),
                (5, strings(&["fff", "ggg"])),
            ]
        );
        assert_eq!(answers[0], strings(&["AAA", "BBB", "CCCC"]));
        assert_eq!(answers[1], strings(&["DDD"]));
        assert_eq!(answers[2], strings(&["EEE", "FFF", "GGG"]));
    }

    #[tokio::test]
    async fn mixed_length_batches_fill_up_to_the_token_bound() {
        let (batches, answers) = three_requests(true).await;
        assert_eq!(
            batches,
            vec![
                (5, strings(&["aaa", "bbb", "cccc"])),
                (2, strings(&["ddd"])),
                (5, strings(&["eee", "fff", "ggg"])),
            ]
        );
        assert_eq!(answers[0], strings(&["AAA", "BBB", "CCCC"]));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_abandoned_requests_are_not_translated() {
        let q = queue(100, 4, false);
        let kept = submit(&q, 5, &["aa", "bb"]);
        let dropped = submit(&q, 5, &["cc"]);
        let engine_for_ids = Recorder::default();
        let sources = ["dd", "ee"]
            .iter()
            .map(|t| engine_for_ids.encode(t).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        let refused = q.submit(GenerationOptions::default(), sources, vec![2, 2]);
        assert!(
            matches!(refused, Err(ApiError::Overloaded { queued: 3, max: 4, retry_after_s: 2 })),
            "{refused:?}"
        );
        drop(dropped);
        q.close();
        let engine = Arc::new(Recorder::default());
        tokio::spawn(Arc::clone(&q).run(Arc::clone(&engine) as Arc<dyn Engine>));
        assert_eq!(texts(kept).await, strings(&["AA", "BB"]));
        assert_eq!(lock(&engine.batches).clone(), vec![(5, strings(&["aa", "bb"]))]);
    }

    #[tokio::test]
    async fn a_failed_batch_answers_each_of_its_requests_with_the_error() {
        let q = queue(100, 100, false);
        let a = submit(&q, 5, &["fail", "ok"]);
        let b = submit(&q, 5, &["ab", "cd"]);
        q.close();
        let engine = Arc::new(Recorder::default());
        tokio::spawn(Arc::clone(&q).run(Arc::clone(&engine) as Arc<dyn Engine>));
        assert!(matches!(a.await, Ok(Err(ApiError::Translation(m))) if m.contains("scripted")));
        assert_eq!(texts(b).await, strings(&["AB", "CD"]));
    }
}
