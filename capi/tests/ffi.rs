//! The C functions called as C calls them (raw pointers, C strings), on the runtime's test
//! fixture model: every failure is a status with a message naming its cause (NULL arguments,
//! invalid UTF-8, bad options JSON, a missing model directory, an over-long text, freed or
//! foreign handles), an empty batch is a success, and one translator shared by 8 threads gives
//! exactly the serial results. On the exporter's tiny causal language model,
//! `seqforge_complete` gives exactly `TranslatorPool::complete`'s continuations, and each task's
//! call on a model of the other task is `SEQFORGE_STATUS_WRONG_TASK` naming the model's task.
//! The C example end to end (and under valgrind) is tested in `runtime/tests/capi.rs`.

#[path = "../../runtime/tests/common/mod.rs"]
mod common;

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::ptr;

use anyhow::{Context, Result, bail, ensure};
use seqforge_exporter::testing::TinyCausalLm;
use seqforge_runtime::capi::*;
use seqforge_runtime::onnx::RuntimeOptions;
use seqforge_runtime::pool::{PoolConfig, TranslatorPool, parse_options};

/// This thread's last error message.
fn last_error() -> String {
    // SAFETY: never NULL, NUL-terminated, valid until the next call on this thread.
    unsafe { CStr::from_ptr(seqforge_last_error()) }.to_string_lossy().into_owned()
}

/// `status` must be `expected` and the message must contain every needle.
fn expect(status: SeqforgeStatus, expected: SeqforgeStatus, needles: &[&str]) -> Result<()> {
    let message = last_error();
    ensure!(status == expected, "expected {expected:?}, got {status:?}: {message}");
    for n in needles {
        ensure!(message.contains(n), "{expected:?}: message does not mention {n:?}: {message}");
    }
    Ok(())
}

fn cstring(s: &str) -> Result<CString> {
    Ok(CString::new(s)?)
}

/// One hypothesis, copied out of a result.
#[derive(Debug, Clone, PartialEq)]
struct Hyp {
    text: String,
    tokens: Vec<u32>,
    score: f32,
    positional: Vec<f32>,
}

/// `seqforge_translate` or `seqforge_complete`.
type SearchFn = unsafe extern "C" fn(
    *const SeqforgeTranslator,
    *const *const c_char,
    usize,
    *const c_char,
    *mut *mut SeqforgeResult,
) -> SeqforgeStatus;

/// A translator over the fixture's model, freed on drop.
struct Translator(*mut SeqforgeTranslator);

// SAFETY: the C ABI documents translators as usable from any thread at once.
unsafe impl Send for Translator {}
// SAFETY: as above.
unsafe impl Sync for Translator {}

impl Translator {
    fn open(model: &std::path::Path, edit: impl FnOnce(&mut SeqforgeOptions)) -> Result<Self> {
        let mut options = SeqforgeOptions::default();
        // SAFETY: a valid, writable struct.
        expect(unsafe { seqforge_options_default(&mut options) }, SeqforgeStatus::Ok, &[])?;
        options.threads = 1;
        let search = cstring(r#"{"beam": 3, "max_len_b": 8}"#)?;
        options.search_json = search.as_ptr();
        edit(&mut options);
        let dir = cstring(model.to_str().context("non-UTF-8 path")?)?;
        let mut out = ptr::null_mut();
        // SAFETY: valid strings and struct, writable `out`.
        let status = unsafe { seqforge_translator_create(dir.as_ptr(), &options, &mut out) };
        expect(status, SeqforgeStatus::Ok, &[])?;
        ensure!(!out.is_null(), "no translator");
        Ok(Self(out))
    }

    /// Translates `texts`, returning the copied hypotheses (an error with the status and the
    /// message on failure).
    fn translate(&self, texts: &[&[u8]], search: Option<&str>) -> Result<Vec<Vec<Hyp>>> {
        self.search(seqforge_translate, texts, search)
    }

    /// Continues the prompts `texts` with `seqforge_complete`, as [`Translator::translate`].
    fn complete(&self, texts: &[&[u8]], search: Option<&str>) -> Result<Vec<Vec<Hyp>>> {
        self.search(seqforge_complete, texts, search)
    }

    /// The model's task.
    fn task(&self) -> Result<SeqforgeTask> {
        let mut task = SeqforgeTask::Translation;
        // SAFETY: a live translator, a writable `task`.
        let status = unsafe { seqforge_translator_task(self.0, &mut task) };
        expect(status, SeqforgeStatus::Ok, &[])?;
        Ok(task)
    }

    fn search(&self, f: SearchFn, texts: &[&[u8]], search: Option<&str>) -> Result<Vec<Vec<Hyp>>> {
        let owned: Vec<CString> =
            texts.iter().map(|t| CString::new(*t)).collect::<Result<_, _>>()?;
        let pointers: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        let search = search.map(cstring).transpose()?;
        let mut result = ptr::null_mut();
        // SAFETY: live translator, `n` valid strings, valid JSON string or NULL, writable out.
        let status = unsafe {
            f(
                self.0,
                pointers.as_ptr(),
                pointers.len(),
                search.as_ref().map_or(ptr::null(), |s| s.as_ptr()),
                &mut result,
            )
        };
        if status != SeqforgeStatus::Ok {
            ensure!(result.is_null(), "a failed call left a result");
            bail!("{status:?}: {}", last_error());
        }
        let copied = read_result(result);
        // SAFETY: a live result, freed once.
        let freed = unsafe { seqforge_result_free(result) };
        expect(freed, SeqforgeStatus::Ok, &[])?;
        copied
    }
}

impl Drop for Translator {
    fn drop(&mut self) {
        // SAFETY: created by `open`, freed once here.
        let status = unsafe { seqforge_translator_free(self.0) };
        assert_eq!(status, SeqforgeStatus::Ok, "{}", last_error());
    }
}

/// Copies a result's translations out.
fn read_result(result: *const SeqforgeResult) -> Result<Vec<Vec<Hyp>>> {
    let mut translations = ptr::null();
    let mut len = usize::MAX;
    // SAFETY: writable outputs; the result is looked up before use.
    let status = unsafe { seqforge_result_translations(result, &mut translations, &mut len) };
    expect(status, SeqforgeStatus::Ok, &[])?;
    if len == 0 {
        ensure!(translations.is_null(), "an empty result with a non-NULL array");
        return Ok(Vec::new());
    }
    // SAFETY: the documented layout: `len` translations, each `hypotheses_len` hypotheses with
    // `tokens_len` tokens and scores and a NUL-terminated text of `text_len` bytes.
    unsafe {
        let translations = std::slice::from_raw_parts(translations, len);
        translations
            .iter()
            .map(|t| {
                if t.hypotheses_len == 0 {
                    ensure!(t.hypotheses.is_null(), "no hypotheses but a non-NULL array");
                    return Ok(Vec::new());
                }
                std::slice::from_raw_parts(t.hypotheses, t.hypotheses_len)
                    .iter()
                    .map(|h| {
                        let text = CStr::from_ptr(h.text);
                        ensure!(text.to_bytes().len() == h.text_len, "text_len");
                        Ok(Hyp {
                            text: text.to_str()?.to_owned(),
                            tokens: std::slice::from_raw_parts(h.tokens, h.tokens_len).to_vec(),
                            score: h.score,
                            positional: std::slice::from_raw_parts(
                                h.positional_scores,
                                h.tokens_len,
                            )
                            .to_vec(),
                        })
                    })
                    .collect()
            })
            .collect()
    }
}

#[test]
fn version_and_defaults() -> Result<()> {
    // SAFETY: a static NUL-terminated string.
    let version = unsafe { CStr::from_ptr(seqforge_version()) }.to_str()?;
    ensure!(version == env!("CARGO_PKG_VERSION"), "{version}");
    let mut options = SeqforgeOptions {
        device: ptr::null(),
        threads: 7,
        workers: 0,
        max_batch_sentences: 3,
        max_batch_tokens: 0,
        truncate_source: true,
        verify: true,
        ort_library: ptr::null(),
        search_json: ptr::null(),
    };
    // SAFETY: a valid, writable struct.
    expect(unsafe { seqforge_options_default(&mut options) }, SeqforgeStatus::Ok, &[])?;
    ensure!(options.threads == 0 && options.workers == 1, "{options:?}");
    ensure!(options.max_batch_sentences == 0 && options.max_batch_tokens == 4096, "{options:?}");
    ensure!(!options.truncate_source && !options.verify && options.device.is_null(), "{options:?}");
    ensure!(last_error().is_empty(), "a success leaves no message");
    Ok(())
}

#[test]
fn null_arguments_are_statuses_naming_the_argument() -> Result<()> {
    let f = common::fixture()?;
    let t = Translator::open(&f.model, |_| {})?;
    let null = SeqforgeStatus::NullArgument;
    // SAFETY (whole block): NULL is what is being tested; every other pointer is valid.
    unsafe {
        expect(seqforge_options_default(ptr::null_mut()), null, &["options"])?;
        let mut out = ptr::null_mut();
        expect(
            seqforge_translator_create(ptr::null(), ptr::null(), &mut out),
            null,
            &["model_dir"],
        )?;
        ensure!(out.is_null(), "out set on failure");
        let dir = cstring(f.model.to_str().context("path")?)?;
        expect(
            seqforge_translator_create(dir.as_ptr(), ptr::null(), ptr::null_mut()),
            null,
            &["out"],
        )?;

        let hola = cstring("hola")?;
        let texts = [hola.as_ptr()];
        let mut result = ptr::null_mut();
        let s = seqforge_translate(ptr::null(), texts.as_ptr(), 1, ptr::null(), &mut result);
        expect(s, null, &["translator"])?;
        let s = seqforge_translate(t.0, ptr::null(), 1, ptr::null(), &mut result);
        expect(s, null, &["texts"])?;
        let with_null = [hola.as_ptr(), ptr::null()];
        let s = seqforge_translate(t.0, with_null.as_ptr(), 2, ptr::null(), &mut result);
        expect(s, null, &["texts[1]"])?;
        let s = seqforge_translate(t.0, texts.as_ptr(), 1, ptr::null(), ptr::null_mut());
        expect(s, null, &["out"])?;
        ensure!(result.is_null(), "result set on failure");

        let mut translations = ptr::null();
        let mut len = 0;
        let s = seqforge_result_translations(ptr::null(), &mut translations, &mut len);
        expect(s, null, &["result"])?;
        expect(seqforge_result_free(ptr::null_mut()), null, &["result"])?;
        expect(seqforge_translator_free(ptr::null_mut()), null, &["translator"])?;
    }
    Ok(())
}

#[test]
fn bad_texts_and_options_fail_naming_the_culprit() -> Result<()> {
    let f = common::fixture()?;
    let t = Translator::open(&f.model, |_| {})?;
    let fails = |texts: &[&[u8]], search: Option<&str>, needles: &[&str]| -> Result<()> {
        match t.translate(texts, search) {
            Ok(r) => bail!("{texts:?} {search:?} succeeded: {r:?}"),
            Err(e) => {
                let e = e.to_string();
                for n in needles {
                    ensure!(e.contains(n), "{texts:?} {search:?}: {e} does not mention {n:?}");
                }
                Ok(())
            }
        }
    };
    // Invalid UTF-8 in the second text.
    fails(&[b"hola", b"ca\xffe"], None, &["InvalidUtf8", "texts[1]", "UTF-8"])?;
    // Search options: malformed JSON, a wrong type, an unknown field, inconsistent values,
    // forced prefixes.
    fails(&[b"hola"], Some("{\"beam\": "), &["InvalidOptions", "JSON"])?;
    fails(&[b"hola"], Some(r#"{"beam": "wide"}"#), &["InvalidOptions", "`beam`"])?;
    fails(&[b"hola"], Some(r#"{"beem": 2}"#), &["InvalidOptions", "`beem`", "unknown"])?;
    fails(&[b"hola"], Some(r#"{"nbest": 4}"#), &["InvalidOptions", "`nbest`", "beam size (3)"])?;
    fails(&[b"hola"], Some(r#"{"prefix_size": 1}"#), &["InvalidOptions", "`prefix_size`"])?;
    fails(
        &[b"hola"],
        Some(r#"{"strategy": {"kind": "sampling", "temperature": 0}}"#),
        &["InvalidOptions", "`strategy.temperature`"],
    )?;
    // 70 byte-level symbols + EOS > the fixture's 64 source positions, as the third text.
    let long = "a".repeat(70);
    fails(&[b"hola", b"", long.as_bytes()], None, &["TextTooLong", "text 2", "71", "64"])?;
    // The translator still works after all that, and the per-call options apply.
    let ok = t.translate(&[b"hola", b"", long.as_bytes().get(..10).context("slice")?], None)?;
    ensure!(ok.len() == 3 && ok[0].len() == 1 && ok[1].is_empty(), "{ok:?}");
    let two = t.translate(&[b"hola"], Some(r#"{"nbest": 2}"#))?;
    // (Batch composition changes the last bits of the scores, so compare with `ok` loosely.)
    ensure!(two[0].len() == 2 && (two[0][0].score - ok[0][0].score).abs() < 1e-3, "{two:?}");
    for h in &two[0] {
        ensure!(h.tokens.len() == h.positional.len() && !h.tokens.is_empty(), "{h:?}");
    }
    ensure!(two[0][0].score >= two[0][1].score, "best first: {two:?}");

    // Truncation on: the long text is cut instead.
    let cut = Translator::open(&f.model, |o| o.truncate_source = true)?;
    let r = cut.translate(&[long.as_bytes()], None)?;
    ensure!(r.len() == 1 && r[0].len() == 1, "{r:?}");
    Ok(())
}

#[test]
fn bad_translator_options_and_model_dirs_fail_naming_them() -> Result<()> {
    let f = common::fixture()?;
    let create = |dir: &str, edit: &dyn Fn(&mut SeqforgeOptions)| -> Result<SeqforgeStatus> {
        let mut options = SeqforgeOptions { threads: 1, ..SeqforgeOptions::default() };
        edit(&mut options);
        let dir = cstring(dir)?;
        let mut out = ptr::null_mut();
        // SAFETY: valid strings and struct, writable out.
        let status = unsafe { seqforge_translator_create(dir.as_ptr(), &options, &mut out) };
        ensure!(out.is_null(), "a failed create left a translator");
        Ok(status)
    };
    let model = f.model.to_str().context("path")?;
    let missing = f.root.join("no-such-model");
    let missing = missing.to_str().context("path")?;
    expect(create(missing, &|_| {})?, SeqforgeStatus::ModelLoad, &[missing])?;

    let tpu = cstring("tpu")?;
    let s = create(model, &|o| o.device = tpu.as_ptr())?;
    expect(s, SeqforgeStatus::InvalidOptions, &["`device`", "tpu"])?;
    let cuda = cstring("cuda:0")?;
    let s = create(model, &|o| o.device = cuda.as_ptr())?;
    expect(s, SeqforgeStatus::ModelLoad, &["cuda", "no CPU fallback"])?;
    let s = create(model, &|o| o.workers = 0)?;
    expect(s, SeqforgeStatus::InvalidOptions, &["`workers`"])?;
    let json = cstring(r#"{"lenpen": "long"}"#)?;
    let s = create(model, &|o| o.search_json = json.as_ptr())?;
    expect(s, SeqforgeStatus::InvalidOptions, &["`lenpen`"])?;
    let latin1 = CString::new(b"caf\xe9".to_vec())?;
    let s = create(model, &|o| o.device = latin1.as_ptr())?;
    expect(s, SeqforgeStatus::InvalidUtf8, &["options.device"])?;
    Ok(())
}

#[test]
fn freed_foreign_and_wrong_kind_handles_are_invalid_handle() -> Result<()> {
    let f = common::fixture()?;
    let t = Translator::open(&f.model, |_| {})?;
    let invalid = SeqforgeStatus::InvalidHandle;
    let hola = cstring("hola")?;
    let texts = [hola.as_ptr()];
    // SAFETY (whole block): invalid handles are what is being tested; the library looks every
    // handle up in its registry before touching it.
    unsafe {
        let mut result = ptr::null_mut();
        expect(
            seqforge_translate(t.0, texts.as_ptr(), 1, ptr::null(), &mut result),
            SeqforgeStatus::Ok,
            &[],
        )?;
        // A result is not a translator, a translator is not a result.
        expect(seqforge_translator_free(result.cast()), invalid, &["not a live translator"])?;
        expect(seqforge_result_free(t.0.cast()), invalid, &["not a live result"])?;
        let s =
            seqforge_translate(result.cast(), texts.as_ptr(), 1, ptr::null(), &mut ptr::null_mut());
        expect(s, invalid, &["not a live translator"])?;
        // The result survived the wrong-kind frees.
        ensure!(read_result(result)?.len() == 1, "result");
        expect(seqforge_result_free(result), SeqforgeStatus::Ok, &[])?;
        // Double free, and reads after free.
        expect(seqforge_result_free(result), invalid, &["not a live result"])?;
        let (mut translations, mut len) = (ptr::null(), 0);
        let s = seqforge_result_translations(result, &mut translations, &mut len);
        expect(s, invalid, &["not a live result"])?;
        // Foreign pointers: a stack address, a heap allocation, a small integer.
        let mut local = 0u64;
        let foreign: *mut SeqforgeTranslator = (&raw mut local).cast();
        expect(seqforge_translator_free(foreign), invalid, &[])?;
        let boxed = Box::into_raw(Box::new([0u64; 4]));
        expect(seqforge_result_free(boxed.cast()), invalid, &[])?;
        drop(Box::from_raw(boxed));
        expect(seqforge_translator_free(ptr::without_provenance_mut(64)), invalid, &[])?;

        // A translator freed twice, and used after free.
        let other = Translator::open(&f.model, |_| {})?;
        let raw = other.0;
        std::mem::forget(other);
        expect(seqforge_translator_free(raw), SeqforgeStatus::Ok, &[])?;
        expect(seqforge_translator_free(raw), invalid, &["not a live translator"])?;
        let s = seqforge_translate(raw, texts.as_ptr(), 1, ptr::null(), &mut ptr::null_mut());
        expect(s, invalid, &["not a live translator"])?;
    }
    Ok(())
}

#[test]
fn zero_texts_is_an_empty_result_and_errors_are_per_thread() -> Result<()> {
    let f = common::fixture()?;
    let t = Translator::open(&f.model, |_| {})?;
    ensure!(t.translate(&[], None)?.is_empty(), "zero texts");
    // texts may be NULL when n is 0.
    let mut result = ptr::null_mut();
    // SAFETY: NULL texts with n = 0 is allowed; writable out.
    let s = unsafe { seqforge_translate(t.0, ptr::null(), 0, ptr::null(), &mut result) };
    expect(s, SeqforgeStatus::Ok, &[])?;
    ensure!(read_result(result)?.is_empty(), "empty");
    // SAFETY: a live result.
    expect(unsafe { seqforge_result_free(result) }, SeqforgeStatus::Ok, &[])?;
    // Only empty texts: empty hypothesis lists, no model run.
    let empty = t.translate(&[b"", b""], None)?;
    ensure!(empty == vec![Vec::new(), Vec::new()], "{empty:?}");

    // An error on this thread is not visible on another one.
    // SAFETY: NULL is being tested.
    let s = unsafe { seqforge_options_default(ptr::null_mut()) };
    expect(s, SeqforgeStatus::NullArgument, &["options"])?;
    let other = std::thread::spawn(last_error).join().map_err(|_| anyhow::anyhow!("panicked"))?;
    ensure!(other.is_empty(), "another thread sees {other:?}");
    ensure!(last_error().contains("options"), "{}", last_error());
    Ok(())
}

#[test]
fn eight_threads_on_one_translator_match_serial_results() -> Result<()> {
    let f = common::fixture()?;
    let t = Translator::open(&f.model, |o| {
        o.workers = 3;
        o.max_batch_sentences = 2;
    })?;
    let lines: [&[u8]; 6] = [
        b"hola mundo",
        b"el gato negro",
        b"",
        "e\u{301}l ñandú".as_bytes(),
        b"adios amigos",
        b"buenas noches a todos",
    ];
    let search = Some(r#"{"nbest": 2}"#);
    // Each thread translates every rotation of the lines; the serial baseline is the same calls
    // made one after another. (Results are compared exactly: a batch of the same texts in the
    // same order runs the same computations; another batch composition may change the last
    // bits of the scores, since padding changes the shapes.)
    let rotation =
        |r: usize| -> Vec<usize> { (0..lines.len()).map(|i| (i + r) % lines.len()).collect() };
    let texts_of = |order: &[usize]| -> Vec<&[u8]> { order.iter().map(|&i| lines[i]).collect() };
    let serial: Vec<Vec<Vec<Hyp>>> = (0..lines.len())
        .map(|r| t.translate(&texts_of(&rotation(r)), search))
        .collect::<Result<_>>()?;
    ensure!(
        serial
            .iter()
            .all(|r| r.len() == lines.len() && r.iter().filter(|h| h.is_empty()).count() == 1),
        "{serial:?}"
    );
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..8)
            .map(|k| {
                let (t, serial, rotation, texts_of) = (&t, &serial, &rotation, &texts_of);
                s.spawn(move || -> Result<()> {
                    for round in 0..lines.len() {
                        let r = (k + round) % lines.len();
                        let got = t.translate(&texts_of(&rotation(r)), search)?;
                        ensure!(
                            got == serial[r],
                            "thread {k}, rotation {r}: {got:?} vs {:?}",
                            serial[r]
                        );
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("a translating thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(())
}

/// The tiny causal language model's directory under `root` (no tokenizer: prompts are
/// dictionary words, `w5 w9`).
fn lm_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("lm");
    TinyCausalLm::new().write(&dir)?;
    Ok(dir)
}

#[test]
fn a_language_model_completes_prompts_as_the_pool_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let lm = lm_dir(tmp.path())?;
    let t = Translator::open(&lm, |_| {})?;
    ensure!(t.task()? == SeqforgeTask::LanguageModeling, "task");
    let pool = TranslatorPool::open(PoolConfig {
        runtime: RuntimeOptions { threads: 1, ..RuntimeOptions::default() },
        ..PoolConfig::new(&lm)
    })?;
    // Three lengths and an unconditional prompt in one call.
    let prompts = ["w5 w9", "", "w12 w13 w14", "w6 w7"];
    let bytes: Vec<&[u8]> = prompts.iter().map(|p| p.as_bytes()).collect();
    let pooled = |search: &str| -> Result<Vec<Vec<Hyp>>> {
        // The C translator's defaults are `{"beam": 3, "max_len_b": 8}` (see `open`).
        let base = parse_options(r#"{"beam": 3, "max_len_b": 8}"#, pool.default_options())?;
        let options = parse_options(search, &base)?;
        Ok(pool
            .complete(&prompts, &options)?
            .into_iter()
            .map(|t| {
                t.hypotheses
                    .into_iter()
                    .map(|h| Hyp {
                        text: h.text,
                        tokens: h.tokens,
                        score: h.score,
                        positional: h.positional_scores,
                    })
                    .collect()
            })
            .collect())
    };

    let greedy = r#"{"strategy": {"kind": "greedy"}, "beam": 1, "max_len_b": 5}"#;
    let got = t.complete(&bytes, Some(greedy))?;
    ensure!(got == pooled(greedy)?, "C: {got:?}\npool: {:?}", pooled(greedy)?);
    ensure!(got.iter().all(|h| h.len() == 1 && !h[0].text.is_empty()), "{got:?}");
    // The translator's defaults (beam 3), and seeded sampling: the same samples twice.
    ensure!(t.complete(&bytes, None)? == pooled("{}")?, "defaults");
    let sampling = r#"{"nbest": 2, "min_len": 2, "no_repeat_ngram_size": 2, "strategy":
        {"kind": "sampling", "top_p": 0.9, "temperature": 0.8, "seed": 11}}"#;
    let first = t.complete(&bytes, Some(sampling))?;
    ensure!(first == t.complete(&bytes, Some(sampling))?, "one seed, two samples");
    ensure!(first == pooled(sampling)?, "C: {first:?}\npool: {:?}", pooled(sampling)?);
    ensure!(first.iter().all(|h| h.len() == 2), "{first:?}");

    // Zero prompts (NULL allowed), NULL and invalid prompts, too long a prompt.
    ensure!(t.complete(&[], None)?.is_empty(), "zero prompts");
    // SAFETY (whole block): NULL is what is being tested; every other pointer is valid.
    unsafe {
        let mut result = ptr::null_mut();
        let s = seqforge_complete(t.0, ptr::null(), 0, ptr::null(), &mut result);
        expect(s, SeqforgeStatus::Ok, &[])?;
        ensure!(read_result(result)?.is_empty(), "empty");
        expect(seqforge_result_free(result), SeqforgeStatus::Ok, &[])?;
        let s = seqforge_complete(t.0, ptr::null(), 1, ptr::null(), &mut result);
        expect(s, SeqforgeStatus::NullArgument, &["`prompts`"])?;
        ensure!(result.is_null(), "result set on failure");
    }
    let e = t.complete(&[b"w5", b"w\xff"], None).err().context("invalid UTF-8")?.to_string();
    ensure!(e.contains("InvalidUtf8") && e.contains("prompts[1]"), "{e}");
    let long = vec!["w5"; 40].join(" ");
    let e = t.complete(&[b"w5", long.as_bytes()], None).err().context("too long")?.to_string();
    ensure!(e.contains("TextTooLong"), "{e}");
    Ok(())
}

#[test]
fn each_tasks_call_on_the_other_tasks_model_is_wrong_task() -> Result<()> {
    let f = common::fixture()?;
    let lm = lm_dir(&f.root)?;
    let translation = Translator::open(&f.model, |_| {})?;
    let language_model = Translator::open(&lm, |_| {})?;
    ensure!(translation.task()? == SeqforgeTask::Translation, "task");
    let hola = cstring("hola")?;
    let texts = [hola.as_ptr()];
    let wrong = SeqforgeStatus::WrongTask;
    // SAFETY (whole block): live translators, valid strings, writable outputs; NULL, freed and
    // foreign handles are looked up before use.
    unsafe {
        let mut result = ptr::null_mut();
        let s = seqforge_translate(language_model.0, texts.as_ptr(), 1, ptr::null(), &mut result);
        let needles = ["a language_modeling model", "`seqforge_translate`", "`seqforge_complete`"];
        expect(s, wrong, &needles)?;
        ensure!(result.is_null(), "result set on failure");
        // The task is checked before the texts and the options are read.
        let bad = cstring("{\"beam\": ")?;
        let s = seqforge_complete(translation.0, ptr::null(), 1, bad.as_ptr(), &mut result);
        let needles = ["a translation model", "`seqforge_complete`", "`seqforge_translate`"];
        expect(s, wrong, &needles)?;
        ensure!(result.is_null(), "result set on failure");

        let mut task = SeqforgeTask::LanguageModeling;
        let s = seqforge_translator_task(translation.0, ptr::null_mut());
        expect(s, SeqforgeStatus::NullArgument, &["`task`"])?;
        let s = seqforge_translator_task(ptr::null(), &mut task);
        expect(s, SeqforgeStatus::NullArgument, &["`translator`"])?;
        let mut local = 0u64;
        let s = seqforge_translator_task((&raw mut local).cast(), &mut task);
        expect(s, SeqforgeStatus::InvalidHandle, &["not a live translator"])?;
        ensure!(task == SeqforgeTask::LanguageModeling, "written on failure");
    }
    // Both still work with their own call.
    ensure!(translation.translate(&[b"hola"], None)?[0].len() == 1, "translation");
    ensure!(language_model.complete(&[b"w5"], None)?[0].len() == 1, "completion");
    Ok(())
}
