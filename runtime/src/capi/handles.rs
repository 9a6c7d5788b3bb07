//! The registry of live handles: every pointer handed to C is recorded here with its kind, and
//! every pointer received is looked up before it is used, so a freed, foreign or wrong-kind
//! pointer is `SEQFORGE_STATUS_INVALID_HANDLE` instead of undefined behaviour.
//!
//! A translator is looked up and its shared state cloned (an `Arc`) under the registry lock, and
//! the C pointer itself is never dereferenced by a translation: freeing a translator while
//! another thread still translates with it is safe (the running call finishes on its clone).
//! Handles also start with a magic number, checked when one is freed.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};

use super::{SeqforgeResult, SeqforgeTranslator, TranslatorShared};

/// Magic number at the start of every translator handle.
pub(crate) const TRANSLATOR_MAGIC: u64 = 0x5346_5452_414e_534c; // "SFTRANSL"
/// Magic number at the start of every result handle.
pub(crate) const RESULT_MAGIC: u64 = 0x5346_5245_5355_4c54; // "SFRESULT"

/// What a live address is.
enum Entry {
    Translator(Arc<TranslatorShared>),
    Result,
}

static LIVE: LazyLock<Mutex<HashMap<usize, Entry>>> = LazyLock::new(Mutex::default);

fn live() -> MutexGuard<'static, HashMap<usize, Entry>> {
    // A panic while the lock is held cannot leave the map half-updated (single inserts and
    // removes), so a poisoned lock is taken over.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hands a translator to C: boxed, registered, returned as a raw pointer.
pub(crate) fn register_translator(shared: Arc<TranslatorShared>) -> *mut SeqforgeTranslator {
    let ptr = Box::into_raw(Box::new(SeqforgeTranslator { magic: TRANSLATOR_MAGIC }));
    live().insert(ptr as usize, Entry::Translator(shared));
    ptr
}

/// The shared state of a live translator, or `None` for anything else.
pub(crate) fn translator(ptr: *const SeqforgeTranslator) -> Option<Arc<TranslatorShared>> {
    match live().get(&(ptr as usize)) {
        Some(Entry::Translator(shared)) => Some(Arc::clone(shared)),
        _ => None,
    }
}

/// Unregisters and frees a translator; `false` when `ptr` is not a live translator.
pub(crate) fn free_translator(ptr: *mut SeqforgeTranslator) -> bool {
    let mut map = live();
    if !matches!(map.get(&(ptr as usize)), Some(Entry::Translator(_))) {
        return false;
    }
    map.remove(&(ptr as usize));
    drop(map);
    // SAFETY: the registry held `ptr` as a live translator, so it came from `Box::into_raw` in
    // `register_translator` and has not been freed (it is removed from the registry, under the
    // lock, exactly once, here).
    let boxed = unsafe { Box::from_raw(ptr) };
    debug_assert_eq!(boxed.magic, TRANSLATOR_MAGIC);
    drop(boxed);
    true
}

/// Hands a result to C.
pub(crate) fn register_result(result: SeqforgeResult) -> *mut SeqforgeResult {
    let ptr = Box::into_raw(Box::new(result));
    live().insert(ptr as usize, Entry::Result);
    ptr
}

/// Runs `f` on a live result (under the registry lock, so that no other thread frees it
/// meanwhile); `None` when `ptr` is not a live result.
pub(crate) fn with_result<T>(
    ptr: *const SeqforgeResult,
    f: impl FnOnce(&SeqforgeResult) -> T,
) -> Option<T> {
    let map = live();
    match map.get(&(ptr as usize)) {
        // SAFETY: registered by `register_result` from a `Box` and not yet freed (freeing
        // removes it from the registry first, under this lock, which we hold).
        Some(Entry::Result) => Some(f(unsafe { &*ptr })),
        _ => None,
    }
}

/// Unregisters and frees a result; `false` when `ptr` is not a live result.
pub(crate) fn free_result(ptr: *mut SeqforgeResult) -> bool {
    let mut map = live();
    if !matches!(map.get(&(ptr as usize)), Some(Entry::Result)) {
        return false;
    }
    map.remove(&(ptr as usize));
    drop(map);
    // SAFETY: as in `free_translator`.
    let boxed = unsafe { Box::from_raw(ptr) };
    debug_assert_eq!(boxed.magic, RESULT_MAGIC);
    drop(boxed);
    true
}
