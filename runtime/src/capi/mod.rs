//! The C ABI (feature `capi`): translate with an exported model, or continue prompts with an
//! exported language model, from C, C++ or any language with a C FFI. The `seqforge-capi`
//! crate of the workspace builds it into `libseqforge.so` and `libseqforge.a`; the header is
//! `runtime/include/seqforge.h`, generated from this module by cbindgen (the `capi_header` test
//! keeps it current).
//!
//! # Model
//!
//! - `seqforge_options_default` fills a [`SeqforgeOptions`] (device, threads, workers, batch
//!   limits, truncation, default search options as JSON); `seqforge_translator_create` opens a
//!   model directory into an opaque [`SeqforgeTranslator`]; `seqforge_translator_free` frees it.
//! - `seqforge_translate` translates `n` UTF-8 texts in one call (batched by length inside)
//!   into an opaque [`SeqforgeResult`]: per text, up to `nbest` hypotheses, best first, each
//!   with its detokenized text, target token ids (ending with EOS), score and per-token scores
//!   ([`SeqforgeHypothesis`]). `seqforge_result_translations` exposes them as plain structs
//!   that live until `seqforge_result_free`.
//! - A language model's directory (contract task `language_modeling`: `prefill.onnx` and
//!   `decoder.onnx`) opens into the same [`SeqforgeTranslator`]; `seqforge_translator_task`
//!   tells the two apart ([`SeqforgeTask`]). `seqforge_complete` continues `n` prompts into the
//!   same [`SeqforgeResult`]: per prompt, up to `nbest` continuations (the prompt not
//!   repeated; an empty prompt is unconditional generation), read and freed as translations
//!   are. Both calls share one body; each refuses a model of the other task with
//!   `SEQFORGE_STATUS_WRONG_TASK`, naming the model's task.
//! - Search options are a JSON object of fairseq's generation options (`{"beam": 4, "nbest":
//!   2, "lenpen": 0.6}`, see [`crate::search::GenerationOptions`]), given once in the options
//!   (over fairseq's defaults) and per call (over the translator's).
//!
//! # Errors
//!
//! Every function that can fail returns a [`SeqforgeStatus`]; after a failure,
//! `seqforge_last_error()` returns a message (naming the file, field or text at fault) valid
//! until the next `seqforge_*` call on the same thread. NULL pointers, invalid UTF-8, and
//! freed, foreign or wrong-kind handles are reported as statuses, never undefined behaviour
//! (handles are looked up in a registry of live handles before use; only a freed handle whose
//! address a new handle of the same kind has since reused cannot be told apart). No Rust panic
//! crosses the boundary: one becomes `SEQFORGE_STATUS_PANIC`.
//!
//! # Threads
//!
//! A translator is thread-safe: any number of threads may call `seqforge_translate` (or
//! `seqforge_complete`, on a language model) and `seqforge_translator_task` on the same
//! translator at once. `workers` calls run in parallel (each worker has its own ONNX
//! Runtime sessions, over one shared copy of the model's metadata); further calls wait for a
//! free worker. Results belong to the caller and may be read from any thread.

mod handles;
mod status;

use std::ffi::{CStr, c_char};
use std::path::PathBuf;
use std::sync::Arc;

pub use status::SeqforgeStatus;
use status::{Failure, guard};

use seqforge_schemas::contract::Task;

use crate::onnx::{Device, RuntimeOptions};
use crate::pool::{PoolConfig, Translation, TranslatorPool, parse_options};
use crate::search::GenerationOptions;

/// How to open a translator. Fill it with `seqforge_options_default`, then change fields;
/// strings are borrowed only during `seqforge_translator_create`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SeqforgeOptions {
    /// Execution provider: `"cpu"`, `"cuda"`, `"cuda:N"`, `"tensorrt"` or `"tensorrt:N"`; NULL
    /// means CPU. A provider that is not available is an error (no silent CPU fallback).
    pub device: *const c_char,
    /// Intra-op threads per ONNX Runtime session; 0 lets ONNX Runtime choose (one per
    /// physical core). With several workers, keep `workers × threads` within the cores.
    pub threads: usize,
    /// Translations that run at once (each worker holds its own sessions); at least 1.
    /// Default 1.
    pub workers: usize,
    /// Sentences per batch at most; 0 means no limit. Default 0.
    pub max_batch_sentences: usize,
    /// Padded source tokens per batch at most (longest source × sentences); 0 means no limit.
    /// Default 4096.
    pub max_batch_tokens: usize,
    /// Cut texts longer than the model's maximum source positions instead of failing with
    /// `SEQFORGE_STATUS_TEXT_TOO_LONG` (a language model's prompts keep their last tokens).
    /// Default false.
    pub truncate_source: bool,
    /// Also check both graphs' SHA-256 against the manifest (dictionaries and tokenizer are
    /// always checked). Default false.
    pub verify: bool,
    /// The ONNX Runtime shared library to load; NULL means `ORT_DYLIB_PATH`, then the one
    /// seqforge was built against (`cargo xtask setup`).
    pub ort_library: *const c_char,
    /// The translator's default search options, a JSON object over fairseq's defaults (beam 5,
    /// nbest 1, max_len_b 200, ...); NULL means fairseq's defaults.
    pub search_json: *const c_char,
}

impl Default for SeqforgeOptions {
    fn default() -> Self {
        Self {
            device: std::ptr::null(),
            threads: 0,
            workers: 1,
            max_batch_sentences: 0,
            max_batch_tokens: 4096,
            truncate_source: false,
            verify: false,
            ort_library: std::ptr::null(),
            search_json: std::ptr::null(),
        }
    }
}

/// An opened model, translation or language model (see `seqforge_translator_task`), shared by
/// any number of threads (opaque to C).
pub struct SeqforgeTranslator {
    magic: u64,
}

/// What a translator's calls share: the pool and the default search options. It lives in the
/// handle registry; the C handle itself only carries a magic number, so a translation never
/// dereferences the C pointer.
pub(crate) struct TranslatorShared {
    pool: TranslatorPool,
    defaults: GenerationOptions,
}

/// What a model does, which decides the call that searches with it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqforgeTask {
    /// An encoder-decoder model: `seqforge_translate` turns source texts into translations.
    Translation = 0,
    /// A decoder-only language model: `seqforge_complete` continues prompts.
    LanguageModeling = 1,
}

impl From<Task> for SeqforgeTask {
    fn from(task: Task) -> Self {
        match task {
            Task::Translation => SeqforgeTask::Translation,
            Task::LanguageModeling => SeqforgeTask::LanguageModeling,
        }
    }
}

/// One hypothesis (a translation, or a prompt's continuation). Every pointer stays valid until
/// the result is freed.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SeqforgeHypothesis {
    /// The detokenized text, UTF-8, NUL-terminated (`text_len` bytes before the NUL).
    pub text: *const c_char,
    /// Bytes of `text`, the terminating NUL excluded.
    pub text_len: usize,
    /// Target-dictionary token ids, ending with EOS (`tokens_len` entries).
    pub tokens: *const u32,
    /// Entries of `tokens` and of `positional_scores`.
    pub tokens_len: usize,
    /// The hypothesis score (natural log, divided by `len^lenpen` unless `normalize_scores` is
    /// false).
    pub score: f32,
    /// Log-probability of each token (`tokens_len` entries).
    pub positional_scores: *const f32,
}

/// The hypotheses of one input text, best first (none for an empty text to translate; an empty
/// prompt is continued).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SeqforgeTranslation {
    /// `hypotheses_len` hypotheses (NULL when there are none).
    pub hypotheses: *const SeqforgeHypothesis,
    /// Number of hypotheses (at most the search's `nbest`).
    pub hypotheses_len: usize,
}

/// The result of one `seqforge_translate` or `seqforge_complete` call (opaque to C): one
/// translation (or completion) per input text.
pub struct SeqforgeResult {
    magic: u64,
    translations: Vec<SeqforgeTranslation>,
    /// Owns what the pointers in `translations` point into (heap buffers do not move when
    /// the vectors holding them do).
    _storage: Storage,
}

#[derive(Default)]
struct Storage {
    hypotheses: Vec<Vec<SeqforgeHypothesis>>,
    texts: Vec<Vec<u8>>,
    tokens: Vec<Vec<u32>>,
    scores: Vec<Vec<f32>>,
}

/// A pointer to a vector's elements, NULL for an empty one.
fn ptr_or_null<T>(v: &[T]) -> *const T {
    if v.is_empty() { std::ptr::null() } else { v.as_ptr() }
}

impl SeqforgeResult {
    fn new(translations: Vec<Translation>) -> Self {
        let mut storage = Storage::default();
        let mut out = Vec::with_capacity(translations.len());
        for t in translations {
            let mut hyps = Vec::with_capacity(t.hypotheses.len());
            for h in t.hypotheses {
                let mut text = h.text.into_bytes();
                let text_len = text.len();
                text.push(0);
                hyps.push(SeqforgeHypothesis {
                    text: text.as_ptr().cast(),
                    text_len,
                    tokens: ptr_or_null(&h.tokens),
                    tokens_len: h.tokens.len(),
                    score: h.score,
                    positional_scores: ptr_or_null(&h.positional_scores),
                });
                storage.texts.push(text);
                storage.tokens.push(h.tokens);
                storage.scores.push(h.positional_scores);
            }
            out.push(SeqforgeTranslation {
                hypotheses: ptr_or_null(&hyps),
                hypotheses_len: hyps.len(),
            });
            storage.hypotheses.push(hyps);
        }
        Self { magic: handles::RESULT_MAGIC, translations: out, _storage: storage }
    }
}

/// A required pointer argument.
fn non_null<T>(ptr: *const T, name: &str) -> Result<*const T, Failure> {
    if ptr.is_null() {
        Err(Failure::new(SeqforgeStatus::NullArgument, format!("`{name}` is NULL")))
    } else {
        Ok(ptr)
    }
}

/// A C string argument as UTF-8 text.
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string.
unsafe fn utf8<'a>(ptr: *const c_char, name: &str) -> Result<&'a str, Failure> {
    let ptr = non_null(ptr, name)?;
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes).map_err(|e| {
        Failure::new(
            SeqforgeStatus::InvalidUtf8,
            format!("`{name}` is not valid UTF-8 (invalid byte at offset {})", e.valid_up_to()),
        )
    })
}

/// A C string argument as a path (any bytes on Unix).
///
/// # Safety
/// `ptr` must be NULL or point to a NUL-terminated string.
unsafe fn path(ptr: *const c_char, name: &str) -> Result<PathBuf, Failure> {
    let ptr = non_null(ptr, name)?;
    // SAFETY: non-NULL and NUL-terminated per the caller's contract.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
    }
    #[cfg(not(unix))]
    {
        std::str::from_utf8(bytes).map(PathBuf::from).map_err(|_| {
            Failure::new(SeqforgeStatus::InvalidUtf8, format!("`{name}` is not valid UTF-8"))
        })
    }
}

fn invalid_options(field: &str, message: impl std::fmt::Display) -> Failure {
    Failure::new(
        SeqforgeStatus::InvalidOptions,
        format!("invalid translator options: `{field}`: {message}"),
    )
}

/// The version of seqforge, e.g. `"0.1.0"` (a static string; never NULL, never freed).
#[unsafe(no_mangle)]
pub extern "C" fn seqforge_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed `seqforge_*` call on this thread (empty after a success).
/// Never NULL; valid until the next `seqforge_*` call on this thread; not to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn seqforge_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// Fills `*options` with the defaults: CPU, ONNX Runtime's thread count, one worker, batches
/// of at most 4096 padded source tokens, no truncation, fairseq's default search options.
///
/// # Safety
/// `options` must be NULL or point to writable memory for one `SeqforgeOptions`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_options_default(options: *mut SeqforgeOptions) -> SeqforgeStatus {
    guard(|| {
        let options = non_null(options, "options")?.cast_mut();
        // SAFETY: non-NULL and writable per the caller's contract; `write` does not read the
        // (possibly uninitialized) old value.
        unsafe { options.write(SeqforgeOptions::default()) };
        Ok(())
    })
}

/// Opens the exported model directory `model_dir` (manifest.json, encoder.onnx,
/// decoder.onnx, dictionaries, tokenizer.json; a language model's has prefill.onnx and
/// decoder.onnx, dict.txt and maybe tokenizer.json) and stores a new translator in `*out`
/// (NULL on failure); `seqforge_translator_task` tells which kind of model it holds. `options`
/// NULL means the defaults. Free the translator with `seqforge_translator_free`.
///
/// # Safety
/// `model_dir` must be NULL or a NUL-terminated string; `options` NULL or a valid
/// `SeqforgeOptions` whose string fields are NULL or NUL-terminated; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_translator_create(
    model_dir: *const c_char,
    options: *const SeqforgeOptions,
    out: *mut *mut SeqforgeTranslator,
) -> SeqforgeStatus {
    guard(|| {
        let out = non_null(out, "out")?.cast_mut();
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { out.write(std::ptr::null_mut()) };
        // SAFETY: the caller's contract.
        let model_dir = unsafe { path(model_dir, "model_dir") }?;
        let options = if options.is_null() {
            SeqforgeOptions::default()
        } else {
            // SAFETY: non-NULL and valid per the caller's contract.
            unsafe { options.read() }
        };
        let device = if options.device.is_null() {
            Device::Cpu
        } else {
            // SAFETY: NUL-terminated per the caller's contract.
            let name = unsafe { utf8(options.device, "options.device") }?;
            name.parse::<Device>().map_err(|e| invalid_options("device", e))?
        };
        let ort_library = if options.ort_library.is_null() {
            None
        } else {
            // SAFETY: NUL-terminated per the caller's contract.
            Some(unsafe { path(options.ort_library, "options.ort_library") }?)
        };
        let defaults = GenerationOptions::default();
        let defaults = if options.search_json.is_null() {
            defaults
        } else {
            // SAFETY: NUL-terminated per the caller's contract.
            let json = unsafe { utf8(options.search_json, "options.search_json") }?;
            parse_options(json, &defaults)
                .map_err(|e| Failure::from_error(&e, SeqforgeStatus::InvalidOptions))?
        };
        if options.workers == 0 {
            return Err(invalid_options("workers", "must be at least 1"));
        }
        let limit = |n: usize| (n > 0).then_some(n);
        let config = PoolConfig {
            model_dir,
            runtime: RuntimeOptions {
                device,
                threads: options.threads,
                verify: options.verify,
                ort_library,
                ..RuntimeOptions::default()
            },
            workers: options.workers,
            max_sentences: limit(options.max_batch_sentences),
            max_tokens: limit(options.max_batch_tokens),
            truncate_source: options.truncate_source,
        };
        let pool = TranslatorPool::open(config)
            .map_err(|e| Failure::from_error(&e, SeqforgeStatus::ModelLoad))?;
        let handle = handles::register_translator(Arc::new(TranslatorShared { pool, defaults }));
        // SAFETY: checked above.
        unsafe { out.write(handle) };
        Ok(())
    })
}

/// Frees a translator. Calls still running on it in other threads finish normally. NULL is
/// `SEQFORGE_STATUS_NULL_ARGUMENT`; a handle that is not a live translator (freed twice,
/// foreign) is `SEQFORGE_STATUS_INVALID_HANDLE` and nothing is freed.
///
/// # Safety
/// Any pointer value may be passed: it is looked up before use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_translator_free(
    translator: *mut SeqforgeTranslator,
) -> SeqforgeStatus {
    guard(|| {
        let translator = non_null(translator, "translator")?.cast_mut();
        if handles::free_translator(translator) {
            Ok(())
        } else {
            Err(Failure::new(
                SeqforgeStatus::InvalidHandle,
                format!("{translator:p} is not a live translator (freed already, or not one)"),
            ))
        }
    })
}

/// The shared state of the live translator `translator`, or `SEQFORGE_STATUS_INVALID_HANDLE`.
fn live_translator(
    translator: *const SeqforgeTranslator,
) -> Result<Arc<TranslatorShared>, Failure> {
    handles::translator(translator).ok_or_else(|| {
        Failure::new(
            SeqforgeStatus::InvalidHandle,
            format!("{translator:p} is not a live translator (freed already, or not one)"),
        )
    })
}

/// Stores the task of a translator's model in `*task`: `SEQFORGE_TASK_TRANSLATION` (call
/// `seqforge_translate`) or `SEQFORGE_TASK_LANGUAGE_MODELING` (call `seqforge_complete`).
/// Thread-safe.
///
/// # Safety
/// `translator`: any value (looked up before use); `task` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_translator_task(
    translator: *const SeqforgeTranslator,
    task: *mut SeqforgeTask,
) -> SeqforgeStatus {
    guard(|| {
        let task = non_null(task, "task")?.cast_mut();
        let translator = non_null(translator, "translator")?;
        let shared = live_translator(translator)?;
        // SAFETY: non-NULL and writable per the caller's contract.
        unsafe { task.write(shared.pool.task().into()) };
        Ok(())
    })
}

/// The two searching calls, which differ only in the task they serve.
#[derive(Debug, Clone, Copy)]
enum Call {
    /// `seqforge_translate`: source texts of a translation model.
    Translate,
    /// `seqforge_complete`: prompts of a language model.
    Complete,
}

impl Call {
    /// The C function's name.
    fn name(self) -> &'static str {
        match self {
            Call::Translate => "seqforge_translate",
            Call::Complete => "seqforge_complete",
        }
    }

    /// The name of its texts argument.
    fn texts(self) -> &'static str {
        match self {
            Call::Translate => "texts",
            Call::Complete => "prompts",
        }
    }

    /// The task of the models it serves.
    fn task(self) -> Task {
        match self {
            Call::Translate => Task::Translation,
            Call::Complete => Task::LanguageModeling,
        }
    }

    /// The call that serves a model of the other task.
    fn other(self) -> Call {
        match self {
            Call::Translate => Call::Complete,
            Call::Complete => Call::Translate,
        }
    }
}

/// The body of `seqforge_translate` and `seqforge_complete`: checks the arguments and the
/// model's task (before reading the texts, so that a wrong call is told so first), reads the
/// texts and the per-call options, searches, and hands the result to C.
///
/// # Safety
/// As `seqforge_translate`'s contract.
unsafe fn search(
    call: Call,
    translator: *const SeqforgeTranslator,
    texts: *const *const c_char,
    n: usize,
    search_json: *const c_char,
    out: *mut *mut SeqforgeResult,
) -> Result<(), Failure> {
    let out = non_null(out, "out")?.cast_mut();
    // SAFETY: non-NULL and writable per the caller's contract.
    unsafe { out.write(std::ptr::null_mut()) };
    let translator = non_null(translator, "translator")?;
    let shared = live_translator(translator)?;
    shared.pool.model().require_task(call.task(), &format!("`{}`", call.name())).map_err(|e| {
        let mut failure = Failure::from_error(&e, SeqforgeStatus::WrongTask);
        failure.message.push_str(&format!("; call `{}` on it", call.other().name()));
        failure
    })?;
    let options = if search_json.is_null() {
        shared.defaults.clone()
    } else {
        // SAFETY: NUL-terminated per the caller's contract.
        let json = unsafe { utf8(search_json, "search_json") }?;
        parse_options(json, &shared.defaults)
            .map_err(|e| Failure::from_error(&e, SeqforgeStatus::InvalidOptions))?
    };
    let mut strings = Vec::with_capacity(n);
    if n > 0 {
        let texts = non_null(texts, call.texts())?;
        // SAFETY: `n` readable pointers per the caller's contract.
        let pointers = unsafe { std::slice::from_raw_parts(texts, n) };
        for (i, &p) in pointers.iter().enumerate() {
            // SAFETY: NULL or NUL-terminated per the caller's contract.
            strings.push(unsafe { utf8(p, &format!("{}[{i}]", call.texts())) }?);
        }
    }
    let results = match call {
        Call::Translate => shared.pool.translate(&strings, &options),
        Call::Complete => shared.pool.complete(&strings, &options),
    }
    .map_err(|e| Failure::from_error(&e, SeqforgeStatus::Translate))?;
    let handle = handles::register_result(SeqforgeResult::new(results));
    // SAFETY: checked above.
    unsafe { out.write(handle) };
    Ok(())
}

/// Translates the `n` UTF-8 texts `texts[0..n]` in one call and stores the result in `*out`
/// (NULL on failure); free it with `seqforge_result_free`. `search_json` is a JSON object of
/// search options over the translator's defaults, or NULL for those defaults. `n == 0` is a
/// success with an empty result (`texts` may then be NULL). A language model is
/// `SEQFORGE_STATUS_WRONG_TASK` (use `seqforge_complete`). Thread-safe: see the header's
/// introduction.
///
/// # Safety
/// `translator`: any value (looked up before use); `texts` NULL or `n` readable pointers, each
/// NULL or NUL-terminated; `search_json` NULL or NUL-terminated; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_translate(
    translator: *const SeqforgeTranslator,
    texts: *const *const c_char,
    n: usize,
    search_json: *const c_char,
    out: *mut *mut SeqforgeResult,
) -> SeqforgeStatus {
    // SAFETY: this function's contract is `search`'s.
    guard(|| unsafe { search(Call::Translate, translator, texts, n, search_json, out) })
}

/// Continues the `n` UTF-8 prompts `prompts[0..n]` with a language model in one call and
/// stores the result in `*out` (NULL on failure); free it with `seqforge_result_free`. Per
/// prompt, up to `nbest` continuations, best first, each ending with EOS and without the
/// prompt; an empty prompt is unconditional generation. Prompts are batched by length, and a
/// prompt that leaves no position to continue in is `SEQFORGE_STATUS_TEXT_TOO_LONG` (or keeps
/// its last tokens with `truncate_source`). `search_json` is as for `seqforge_translate`
/// (beam or `{"strategy": {"kind": "sampling", "top_k": .., "top_p": .., "temperature": ..,
/// "seed": ..}}`, `min_len`, `max_len_b`, `no_repeat_ngram_size`, ...; the same seed gives
/// the same samples). `n == 0` is a success with an empty result (`prompts` may then be
/// NULL). A translation model is `SEQFORGE_STATUS_WRONG_TASK` (use `seqforge_translate`).
/// Read the result with `seqforge_result_translations`. Thread-safe: see the header's
/// introduction.
///
/// # Safety
/// `translator`: any value (looked up before use); `prompts` NULL or `n` readable pointers,
/// each NULL or NUL-terminated; `search_json` NULL or NUL-terminated; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_complete(
    translator: *const SeqforgeTranslator,
    prompts: *const *const c_char,
    n: usize,
    search_json: *const c_char,
    out: *mut *mut SeqforgeResult,
) -> SeqforgeStatus {
    // SAFETY: this function's contract is `search`'s.
    guard(|| unsafe { search(Call::Complete, translator, prompts, n, search_json, out) })
}

/// The translations (or completions) of a result, one per input text in input order: stores a
/// pointer to the array in `*translations` (NULL when there are none) and its length in
/// `*len`. Everything reachable from it stays valid until `seqforge_result_free`.
///
/// # Safety
/// `result`: any value (looked up before use); `translations` and `len` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_result_translations(
    result: *const SeqforgeResult,
    translations: *mut *const SeqforgeTranslation,
    len: *mut usize,
) -> SeqforgeStatus {
    guard(|| {
        let translations = non_null(translations, "translations")?.cast_mut();
        let len = non_null(len, "len")?.cast_mut();
        let result = non_null(result, "result")?;
        let (ptr, n) = handles::with_result(result, |r| {
            debug_assert_eq!(r.magic, handles::RESULT_MAGIC);
            (ptr_or_null(&r.translations), r.translations.len())
        })
        .ok_or_else(|| {
            Failure::new(
                SeqforgeStatus::InvalidHandle,
                format!("{result:p} is not a live result (freed already, or not one)"),
            )
        })?;
        // SAFETY: both non-NULL and writable per the caller's contract.
        unsafe {
            translations.write(ptr);
            len.write(n);
        }
        Ok(())
    })
}

/// Frees a result and everything its translations point to. NULL is
/// `SEQFORGE_STATUS_NULL_ARGUMENT`; a handle that is not a live result is
/// `SEQFORGE_STATUS_INVALID_HANDLE` and nothing is freed.
///
/// # Safety
/// Any pointer value may be passed: it is looked up before use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn seqforge_result_free(result: *mut SeqforgeResult) -> SeqforgeStatus {
    guard(|| {
        let result = non_null(result, "result")?.cast_mut();
        if handles::free_result(result) {
            Ok(())
        } else {
            Err(Failure::new(
                SeqforgeStatus::InvalidHandle,
                format!("{result:p} is not a live result (freed already, or not one)"),
            ))
        }
    })
}
