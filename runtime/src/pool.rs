//! A thread-safe translator over one model: raw texts in, detokenized n-best hypotheses out.
//!
//! [`TranslatorPool`] holds one shared, immutable [`ModelDir`] (behind an `Arc`), one shared
//! [`TextPipeline`] and a fixed number of workers, each an [`OnnxDecoder`] with its own ONNX
//! Runtime sessions (sessions need `&mut` to run, so a worker serves one call at a time). A call
//! to [`TranslatorPool::translate`] borrows a free worker — waiting on a condition variable
//! while all are busy — and runs the search on the calling thread, so as many calls run at
//! once as there are workers; the pool is `Send + Sync` and is shared by reference or `Arc`.
//! The C ABI and the HTTP server both sit on it; the `seqforge generate` / `interactive`
//! commands share its building blocks ([`open_model`], [`translate_sources`], [`make_batches`]).
//!
//! Per call, texts are encoded (tokenizer, dictionary, EOS), grouped into batches by length
//! ([`make_batches`] with the pool's `max_sentences` / `max_tokens`), searched with the given
//! [`GenerationOptions`], and returned in input order: one [`Translation`] per text with up to
//! `nbest` hypotheses, best first. Texts of one source length get the same hypotheses and
//! scores whatever they are batched with; a text batched with longer ones is padded, which can
//! change the last bits of its scores (the padded matrix products round differently), so
//! callers that promise results identical to translating alone (the server) batch texts of one
//! length together. An empty text (no symbols) gets an empty hypotheses list
//! without running the model. A text longer than the model's `max_source_positions` is an
//! [`Error::TextTooLong`] naming its index, unless the pool truncates sources.
//!
//! A language model's directory ([`Task::LanguageModeling`]) answers
//! [`TranslatorPool::complete`] instead: each text is a prompt, each hypothesis its
//! continuation (the prompt not repeated); an empty text is unconditional generation, batches
//! hold prompts of one length ([`Inputs::Prompts`]), and a prompt too long to continue is
//! [`Error::TextTooLong`] unless the pool truncates (then it keeps the prompt's last tokens).
//! Asking a model for what its task does not do is [`Error::TaskMismatch`].
//!
//! Search options are fairseq's ([`GenerationOptions`], defaults: beam 5, nbest 1, max length
//! 200 …); [`parse_options`] reads them from a JSON object, e.g. `{"beam": 4, "nbest": 2}`,
//! overriding a base. Forced target prefixes (`prefix_size`) need references and are refused.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};

use serde::Serialize;

use seqforge_schemas::contract::Task;

use crate::decoding::IncrementalDecoder;
use crate::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use crate::search::{self, GenerationOptions, Hypothesis, generate, generate_with_prefixes};
use crate::text::{Overlong, SourceLine, TextPipeline};
use crate::{Error, Result};

/// How to open a [`TranslatorPool`].
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// The exported model directory.
    pub model_dir: PathBuf,
    /// Device, threads per session, checks, ONNX Runtime library.
    pub runtime: RuntimeOptions,
    /// Workers (decoders with their own sessions), i.e. translations that run at once; at
    /// least 1.
    pub workers: usize,
    /// Sentences per batch at most (`None`: no limit).
    pub max_sentences: Option<usize>,
    /// Padded source tokens per batch at most, longest source × sentences (`None`: no limit).
    pub max_tokens: Option<usize>,
    /// Cut texts longer than the model's `max_source_positions` instead of failing.
    pub truncate_source: bool,
}

impl PoolConfig {
    /// One worker, batches of at most 4096 padded source tokens (as `seqforge generate`), no
    /// truncation, default runtime options.
    pub fn new(model_dir: impl Into<PathBuf>) -> Self {
        Self {
            model_dir: model_dir.into(),
            runtime: RuntimeOptions::default(),
            workers: 1,
            max_sentences: None,
            max_tokens: Some(4096),
            truncate_source: false,
        }
    }
}

/// What the texts of a call are, which decides batching and what an empty one means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inputs {
    /// Translation sources: an empty source gets no hypotheses without running the model, and
    /// a batch pads its sources to the longest.
    #[default]
    Sources,
    /// Language-model prompts: an empty prompt is unconditional generation, and a batch holds
    /// prompts of one length (the step graph has one `position` for all rows).
    Prompts,
}

impl Inputs {
    /// What the texts of a model of `task` are.
    pub fn of(task: Task) -> Self {
        match task {
            Task::Translation => Inputs::Sources,
            Task::LanguageModeling => Inputs::Prompts,
        }
    }
}

/// One hypothesis of a translated text (or of a completed prompt: its continuation).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TranslatedHypothesis {
    /// The detokenized text (what `seqforge generate` prints on `D-` lines).
    pub text: String,
    /// Target-dictionary ids, ending with EOS.
    pub tokens: Vec<u32>,
    /// Score (natural log, length-normalized unless `normalize_scores` is off).
    pub score: f32,
    /// Log-probability of each token, one per entry of `tokens`.
    pub positional_scores: Vec<f32>,
}

/// The hypotheses of one text, best first (empty for an empty text).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Translation {
    /// Up to `nbest` hypotheses.
    pub hypotheses: Vec<TranslatedHypothesis>,
}

/// Opens a model directory and the text pipeline of its dictionaries and tokenizer.
pub fn open_model(
    model_dir: &Path,
    runtime: &RuntimeOptions,
) -> Result<(Arc<ModelDir>, TextPipeline)> {
    let dir = Arc::new(ModelDir::open(model_dir, runtime)?);
    let c = dir.contract();
    // A prompt with its EOS takes the positions of `[eos] + prompt`: one must stay free.
    let max_source = match c.task {
        Task::Translation => c.max_source_positions,
        Task::LanguageModeling => c.max_target_positions.saturating_sub(1),
    };
    let text = TextPipeline::new(
        dir.src_vocab().clone(),
        dir.tgt_vocab().clone(),
        dir.tokenizer_path(),
        c.special,
        max_source,
    )?;
    let text = match c.task {
        Task::Translation => text,
        Task::LanguageModeling => text.for_prompts(),
    };
    Ok((dir, text))
}

/// Groups sentence indices into batches: sorted by length (ties by index), each batch at most
/// `max_sentences` sentences and `longest × sentences ≤ max_tokens` (a longer single sentence
/// gets a batch of its own).
pub fn make_batches(
    lengths: &[usize],
    max_sentences: Option<usize>,
    max_tokens: Option<usize>,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut longest = 0;
    for i in order {
        let len = lengths[i].max(1);
        let new_longest = longest.max(len);
        let full_sentences = max_sentences.is_some_and(|m| current.len() + 1 > m);
        let full_tokens = max_tokens.is_some_and(|m| new_longest * (current.len() + 1) > m);
        if !current.is_empty() && (full_sentences || full_tokens) {
            batches.push(std::mem::take(&mut current));
            longest = 0;
        }
        longest = longest.max(len);
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// Groups into batches as [`make_batches`] does, then splits every batch where the length
/// changes, so that each holds inputs of one length (language-model prompts).
pub fn make_batches_of_one_length(
    lengths: &[usize],
    max_sentences: Option<usize>,
    max_tokens: Option<usize>,
) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    for batch in make_batches(lengths, max_sentences, max_tokens) {
        // Sorted by length: equal lengths are adjacent.
        for group in batch.chunk_by(|&a, &b| lengths[a] == lengths[b]) {
            out.push(group.to_vec());
        }
    }
    out
}

/// Searches `sources` (with optional forced target prefixes, one per source) on `decoder`,
/// batched by [`make_batches`] (of one length each for [`Inputs::Prompts`]); results come back
/// in input order, and empty translation sources get no hypotheses without running the model.
/// Calls `progress(n)` after each batch of `n` sentences.
pub fn translate_sources<D: IncrementalDecoder>(
    decoder: &mut D,
    sources: &[&SourceLine],
    prefixes: Option<&[Vec<u32>]>,
    inputs: Inputs,
    options: &GenerationOptions,
    limits: (Option<usize>, Option<usize>),
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<Hypothesis>>> {
    Plan::new(sources, prefixes, inputs, limits).search_all(decoder, options, &mut progress)
}

/// [`translate_sources`] with the batches spread over up to `workers` decoders, each on a
/// thread of its own (CTranslate2's `inter_threads`): a worker takes the next batch as soon as
/// it is free, and results still come back in input order. Every batch is searched exactly as
/// [`translate_sources`] searches it, so the hypotheses do not depend on the number of workers.
///
/// `decoders` keeps the decoders between calls; when fewer than the workers needed are there
/// (at most one per batch), each missing one is built by `make` on its worker's thread, so the
/// first batches start while the others are still being built. `progress(n)` is called on the
/// calling thread after each finished batch of `n` sentences. The first error stops the other
/// workers after their current batch and is returned.
#[allow(clippy::too_many_arguments, reason = "translate_sources' arguments plus the workers")]
pub fn translate_sources_on<D: IncrementalDecoder + Send>(
    decoders: &mut Vec<D>,
    workers: usize,
    make: &(dyn Fn() -> Result<D> + Sync),
    sources: &[&SourceLine],
    prefixes: Option<&[Vec<u32>]>,
    inputs: Inputs,
    options: &GenerationOptions,
    limits: (Option<usize>, Option<usize>),
    mut progress: impl FnMut(usize),
) -> Result<Vec<Vec<Hypothesis>>> {
    let plan = Plan::new(sources, prefixes, inputs, limits);
    let needed = workers.clamp(1, plan.batches.len().max(1));
    if needed == 1 {
        if decoders.is_empty() {
            decoders.push(make()?);
        }
        if let Some(decoder) = decoders.first_mut() {
            return plan.search_all(decoder, options, &mut progress);
        }
    }
    let mut slots: Vec<Option<D>> = std::mem::take(decoders).into_iter().map(Some).collect();
    while slots.len() < needed {
        slots.push(None);
    }
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let mut results: Vec<Vec<Hypothesis>> = vec![Vec::new(); sources.len()];
    let mut first_error = None;
    std::thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel::<(usize, Result<Vec<Vec<Hypothesis>>>)>();
        for slot in slots.iter_mut().take(needed) {
            let (sender, plan, next, failed) = (sender.clone(), &plan, &next, &failed);
            scope.spawn(move || {
                if slot.is_none() {
                    match make() {
                        Ok(decoder) => *slot = Some(decoder),
                        Err(e) => {
                            failed.store(true, Ordering::SeqCst);
                            let _ = sender.send((usize::MAX, Err(e)));
                            return;
                        }
                    }
                }
                let Some(decoder) = slot.as_mut() else { return };
                while !failed.load(Ordering::SeqCst) {
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    let Some(batch) = plan.batches.get(b) else { break };
                    let result = plan.search(decoder, batch, options);
                    if result.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if sender.send((b, result)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(sender);
        for (b, result) in receiver {
            match (result, plan.batches.get(b)) {
                (Ok(hyps), Some(batch)) => {
                    plan.place(batch, hyps, &mut results);
                    progress(batch.len());
                }
                (Ok(_), None) => {}
                (Err(e), _) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    });
    *decoders = slots.into_iter().flatten().collect();
    match first_error {
        Some(e) => Err(e),
        None => Ok(results),
    }
}

/// The batches of one translation call: indices into the non-empty sources, grouped by
/// [`make_batches`].
struct Plan<'a> {
    sources: &'a [&'a SourceLine],
    prefixes: Option<&'a [Vec<u32>]>,
    /// Indices (into `sources`) of the sources that are not empty.
    todo: Vec<usize>,
    /// Batches of indices into `todo`.
    batches: Vec<Vec<usize>>,
}

impl<'a> Plan<'a> {
    fn new(
        sources: &'a [&'a SourceLine],
        prefixes: Option<&'a [Vec<u32>]>,
        inputs: Inputs,
        limits: (Option<usize>, Option<usize>),
    ) -> Self {
        let todo: Vec<usize> = (0..sources.len())
            .filter(|&i| inputs == Inputs::Prompts || !sources[i].is_empty())
            .collect();
        let lengths: Vec<usize> = todo.iter().map(|&i| sources[i].ids.len()).collect();
        let batches = match inputs {
            Inputs::Sources => make_batches(&lengths, limits.0, limits.1),
            Inputs::Prompts => make_batches_of_one_length(&lengths, limits.0, limits.1),
        };
        Self { sources, prefixes, todo, batches }
    }

    /// The hypotheses of one batch, in batch order.
    fn search<D: IncrementalDecoder>(
        &self,
        decoder: &mut D,
        batch: &[usize],
        options: &GenerationOptions,
    ) -> Result<Vec<Vec<Hypothesis>>> {
        let ids: Vec<Vec<u32>> =
            batch.iter().map(|&k| self.sources[self.todo[k]].ids.clone()).collect();
        Ok(match self.prefixes {
            Some(p) => {
                let p: Vec<Vec<u32>> = batch.iter().map(|&k| p[self.todo[k]].clone()).collect();
                generate_with_prefixes(decoder, &ids, &p, options)?
            }
            None => generate(decoder, &ids, options)?,
        })
    }

    /// Every batch in turn on `decoder`, results in input order.
    fn search_all<D: IncrementalDecoder>(
        &self,
        decoder: &mut D,
        options: &GenerationOptions,
        progress: &mut impl FnMut(usize),
    ) -> Result<Vec<Vec<Hypothesis>>> {
        let mut results: Vec<Vec<Hypothesis>> = vec![Vec::new(); self.sources.len()];
        for batch in &self.batches {
            let hyps = self.search(decoder, batch, options)?;
            self.place(batch, hyps, &mut results);
            progress(batch.len());
        }
        Ok(results)
    }

    /// Puts one batch's hypotheses at their sources' places.
    fn place(&self, batch: &[usize], hyps: Vec<Vec<Hypothesis>>, out: &mut [Vec<Hypothesis>]) {
        for (&k, h) in batch.iter().zip(hyps) {
            out[self.todo[k]] = h;
        }
    }
}

/// Reads search options from a JSON object of [`GenerationOptions`] fields, each overriding
/// the one of `base`, and checks them (as [`TranslatorPool::translate`] would). Errors are
/// [`Error::InvalidOptions`] naming the field at fault.
///
/// ```
/// use seqforge_runtime::pool::parse_options;
/// use seqforge_runtime::search::GenerationOptions;
///
/// let base = GenerationOptions::default();
/// let o = parse_options(r#"{"beam": 4, "nbest": 2, "lenpen": 0.6}"#, &base)?;
/// assert_eq!((o.beam, o.nbest, o.max_len_b), (4, 2, 200));
/// let err = parse_options(r#"{"beam": "wide"}"#, &base).unwrap_err().to_string();
/// assert!(err.contains("`beam`"), "{err}");
/// # Ok::<(), seqforge_runtime::Error>(())
/// ```
pub fn parse_options(json: &str, base: &GenerationOptions) -> Result<GenerationOptions> {
    let invalid = |field: Option<&str>, message: String| Error::InvalidOptions {
        field: field.map(str::to_owned),
        message,
    };
    let given: serde_json::Value =
        serde_json::from_str(json).map_err(|e| invalid(None, format!("not valid JSON: {e}")))?;
    let serde_json::Value::Object(given) = given else {
        return Err(invalid(None, format!("expected a JSON object, got {json:?}")));
    };
    let base_value = serde_json::to_value(base)
        .map_err(|e| invalid(None, format!("serializing the base options: {e}")))?;
    let serde_json::Value::Object(mut merged) = base_value else {
        return Err(invalid(None, "the base options are not a JSON object".into()));
    };
    let known: Vec<String> = merged.keys().cloned().collect();
    for (field, value) in given {
        if !merged.contains_key(&field) {
            return Err(invalid(
                Some(&field),
                format!("unknown search option (known: {})", known.join(", ")),
            ));
        }
        // Try the field on its own first, so that a bad value is reported with its name.
        let mut alone = merged.clone();
        alone.insert(field.clone(), value.clone());
        serde_json::from_value::<GenerationOptions>(serde_json::Value::Object(alone))
            .map_err(|e| invalid(Some(&field), e.to_string()))?;
        merged.insert(field, value);
    }
    let options: GenerationOptions = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| invalid(None, e.to_string()))?;
    check_options(&options)?;
    Ok(options)
}

/// Checks options for [`TranslatorPool::translate`]: [`GenerationOptions::validate`], and no
/// forced prefixes (they need references).
pub fn check_options(options: &GenerationOptions) -> Result<()> {
    if options.prefix_size > 0 {
        return Err(Error::InvalidOptions {
            field: Some("prefix_size".into()),
            message: "forced target prefixes need references, which translating raw texts \
                      does not have; leave it 0"
                .into(),
        });
    }
    options.validate().map_err(|e| {
        let field = match &e {
            search::Error::InvalidOption { option, .. } => Some((*option).to_owned()),
            search::Error::NbestExceedsBeam { .. } => Some("nbest".to_owned()),
            search::Error::BeamNotDivisibleByGroups { .. } => Some("strategy.groups".to_owned()),
            _ => None,
        };
        Error::InvalidOptions { field, message: e.to_string() }
    })
}

/// Free workers and the condition variable signalled when one is returned.
struct Workers {
    free: Mutex<Vec<OnnxDecoder>>,
    returned: Condvar,
}

/// A worker borrowed from the pool; goes back (and wakes a waiter) when dropped, also when the
/// search fails or panics.
struct Borrowed<'a> {
    workers: &'a Workers,
    decoder: Option<OnnxDecoder>,
}

impl Drop for Borrowed<'_> {
    fn drop(&mut self) {
        if let Some(decoder) = self.decoder.take() {
            lock(&self.workers.free).push(decoder);
            self.workers.returned.notify_one();
        }
    }
}

/// Locks a mutex, taking over a poisoned one (the data is a list of decoders, which a panic
/// elsewhere cannot leave half-updated).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A model with a fixed number of decoders that many threads translate with at once (see the
/// module documentation).
pub struct TranslatorPool {
    model: Arc<ModelDir>,
    text: TextPipeline,
    workers: Workers,
    count: usize,
    limits: (Option<usize>, Option<usize>),
    overlong: Overlong,
    defaults: GenerationOptions,
}

impl std::fmt::Debug for TranslatorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranslatorPool")
            .field("model", &self.model)
            .field("workers", &self.count)
            .field("limits", &self.limits)
            .field("overlong", &self.overlong)
            .finish_non_exhaustive()
    }
}

impl TranslatorPool {
    /// Opens the model directory and builds `config.workers` decoders.
    pub fn open(config: PoolConfig) -> Result<Self> {
        if config.workers == 0 {
            return Err(Error::InvalidOptions {
                field: Some("workers".into()),
                message: "must be at least 1".into(),
            });
        }
        for (field, limit) in
            [("max_sentences", config.max_sentences), ("max_tokens", config.max_tokens)]
        {
            if limit == Some(0) {
                return Err(Error::InvalidOptions {
                    field: Some(field.into()),
                    message: "must be at least 1 (or no limit)".into(),
                });
            }
        }
        let (model, text) = open_model(&config.model_dir, &config.runtime)?;
        let decoders = (0..config.workers)
            .map(|_| OnnxDecoder::new(Arc::clone(&model)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            model,
            text,
            workers: Workers { free: Mutex::new(decoders), returned: Condvar::new() },
            count: config.workers,
            limits: (config.max_sentences, config.max_tokens),
            overlong: if config.truncate_source { Overlong::Truncate } else { Overlong::Error },
            defaults: GenerationOptions::default(),
        })
    }

    /// fairseq's default search options (beam 5, nbest 1, max length 200, lenpen 1 …).
    pub fn default_options(&self) -> &GenerationOptions {
        &self.defaults
    }

    /// The opened model.
    pub fn model(&self) -> &Arc<ModelDir> {
        &self.model
    }

    /// The number of workers (translations that run at once).
    pub fn workers(&self) -> usize {
        self.count
    }

    /// `text` encoded as the pool translates it (truncated when the pool truncates); a text too
    /// long for the model is [`Error::TextTooLong`] (index 0) when the pool does not truncate.
    pub fn encode_text(&self, text: &str) -> Result<SourceLine> {
        self.encode(0, text)
    }

    /// Source tokens of `text`, EOS included, after truncation when the pool truncates (what
    /// batching by tokens counts). A text too long for the model is [`Error::TextTooLong`]
    /// (index 0) when the pool does not truncate.
    pub fn source_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.encode(0, text)?.ids.len())
    }

    /// The source length `source` is encoded with (its tokens rounded up to the runtime's
    /// `pad_source_to_multiple`): sources with the same value get the same results in any batch.
    pub fn padded_len(&self, source: &SourceLine) -> usize {
        let max = self.model().contract().max_source_positions;
        self.model().options().padded_source_len(source.ids.len(), max)
    }

    /// The source length `text` is encoded with (see [`TranslatorPool::padded_len`]).
    pub fn padded_source_tokens(&self, text: &str) -> Result<usize> {
        Ok(self.padded_len(&self.encode(0, text)?))
    }

    fn encode(&self, index: usize, text: &str) -> Result<SourceLine> {
        self.text.encode_line(text, "text", index + 1, self.overlong).map_err(|e| match e {
            Error::SourceTooLong { tokens, max, .. } => Error::TextTooLong { index, tokens, max },
            other => other,
        })
    }

    /// The model's task: [`TranslatorPool::translate`] serves translation models,
    /// [`TranslatorPool::complete`] language models.
    pub fn task(&self) -> Task {
        self.model.task()
    }

    /// Translates `texts` with `options`, blocking until a worker is free; one
    /// [`Translation`] per text, in input order (see the module documentation).
    pub fn translate(
        &self,
        texts: &[&str],
        options: &GenerationOptions,
    ) -> Result<Vec<Translation>> {
        self.model.require_task(Task::Translation, "translation")?;
        self.search_texts(texts, options)
    }

    /// Continues each prompt of `texts` with `options` on a language model, blocking until a
    /// worker is free; per text, up to `nbest` continuations (the prompt not repeated), best
    /// first, in input order. An empty text is unconditional generation.
    pub fn complete(
        &self,
        texts: &[&str],
        options: &GenerationOptions,
    ) -> Result<Vec<Translation>> {
        self.model.require_task(Task::LanguageModeling, "completion")?;
        self.search_texts(texts, options)
    }

    fn search_texts(
        &self,
        texts: &[&str],
        options: &GenerationOptions,
    ) -> Result<Vec<Translation>> {
        check_options(options)?;
        let sources =
            texts.iter().enumerate().map(|(i, t)| self.encode(i, t)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&SourceLine> = sources.iter().collect();
        self.translate_encoded(&refs, options)
    }

    /// Translates sources (or completes prompts, on a language model) already encoded with
    /// [`TranslatorPool::encode_text`] (the server tokenizes each text once, when the request
    /// arrives); otherwise as [`TranslatorPool::translate`] / [`TranslatorPool::complete`].
    pub fn translate_encoded(
        &self,
        sources: &[&SourceLine],
        options: &GenerationOptions,
    ) -> Result<Vec<Translation>> {
        check_options(options)?;
        let inputs = Inputs::of(self.task());
        if inputs == Inputs::Sources && sources.iter().all(|s| s.is_empty()) {
            return Ok(vec![Translation { hypotheses: Vec::new() }; sources.len()]);
        }
        let results = {
            let mut worker = self.borrow();
            let decoder = worker
                .decoder
                .as_mut()
                .ok_or_else(|| Error::DecoderState("a borrowed worker has no decoder".into()))?;
            translate_sources(decoder, sources, None, inputs, options, self.limits, |_| {})?
        };
        results
            .into_iter()
            .map(|hyps| {
                let hypotheses = hyps
                    .into_iter()
                    .map(|h| {
                        Ok(TranslatedHypothesis {
                            text: self.text.detokenize(&h.tokens)?,
                            tokens: h.tokens,
                            score: h.score,
                            positional_scores: h.positional_scores,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Translation { hypotheses })
            })
            .collect()
    }

    /// Takes a free worker, waiting until one is returned.
    fn borrow(&self) -> Borrowed<'_> {
        let mut free = lock(&self.workers.free);
        loop {
            if let Some(decoder) = free.pop() {
                return Borrowed { workers: &self.workers, decoder: Some(decoder) };
            }
            free = self.workers.returned.wait(free).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_override_the_base_and_errors_name_the_field() {
        let base = GenerationOptions { beam: 3, max_len_b: 8, ..Default::default() };
        let o = parse_options(r#"{"nbest": 2}"#, &base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((o.beam, o.nbest, o.max_len_b), (3, 2, 8));
        let o = parse_options("{}", &base).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o, base);
        let o = parse_options(r#"{"strategy": {"kind": "greedy"}, "beam": 1}"#, &base)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(o.strategy, search::Strategy::Greedy);
        let err = |json: &str| match parse_options(json, &base) {
            Err(Error::InvalidOptions { field, message }) => (field, message),
            other => panic!("{json}: expected invalid options, got {other:?}"),
        };
        assert_eq!(err(r#"{"beam": "wide"}"#).0.as_deref(), Some("beam"));
        assert_eq!(err(r#"{"beamz": 2}"#).0.as_deref(), Some("beamz"));
        assert_eq!(err(r#"{"nbest": 4}"#).0.as_deref(), Some("nbest"));
        assert_eq!(err(r#"{"prefix_size": 1}"#).0.as_deref(), Some("prefix_size"));
        assert_eq!(err(r#"{"lenpen": -1e999}"#).0, None, "out of f64 range: a JSON error");
        assert_eq!(
            err(r#"{"strategy": {"kind": "sampling", "top_p": 2.0}}"#).0.as_deref(),
            Some("strategy.top_p")
        );
        let (field, message) = err("[1, 2]");
        assert!(field.is_none() && message.contains("JSON object"), "{message}");
        let (field, message) = err("{\"beam\": ");
        assert!(field.is_none() && message.contains("JSON"), "{message}");
        let shown = Error::InvalidOptions { field: Some("beam".into()), message: "m".into() };
        assert_eq!(shown.to_string(), "invalid search options: `beam`: m");
    }
}
