//! Declarations of `csrc/c10d_shim.cpp` (compiled by the build script). Every function
//! returns NULL on success or a `malloc`'d error message that [`take_error`] turns into a
//! `String`.

use std::ffi::{CStr, c_char, c_void};

unsafe extern "C" {
    pub fn sf_free_string(s: *mut c_char);
    pub fn sf_free_bytes(data: *mut u8);
    pub fn sf_store_new(
        host: *const c_char,
        port: u16,
        world_size: i64,
        is_server: bool,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn sf_store_free(store: *mut c_void);
    pub fn sf_store_set(
        store: *mut c_void,
        key: *const c_char,
        data: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub fn sf_store_get(
        store: *mut c_void,
        key: *const c_char,
        data: *mut *mut u8,
        len: *mut usize,
    ) -> *mut c_char;
    pub fn sf_store_add(
        store: *mut c_void,
        key: *const c_char,
        value: i64,
        out: *mut i64,
    ) -> *mut c_char;
    pub fn sf_store_check(store: *mut c_void, key: *const c_char, out: *mut bool) -> *mut c_char;
    pub fn sf_gloo_new(
        store: *mut c_void,
        rank: i64,
        size: i64,
        hostname: *const c_char,
        timeout_ms: i64,
        threads: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn sf_has_nccl() -> bool;
    pub fn sf_nccl_new(
        store: *mut c_void,
        rank: i64,
        size: i64,
        device: i64,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn sf_group_free(group: *mut c_void);
    pub fn sf_all_reduce(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        op: i64,
    ) -> *mut c_char;
    pub fn sf_broadcast(
        group: *mut c_void,
        tensors: *const *mut c_void,
        n: usize,
        root: i64,
    ) -> *mut c_char;
    pub fn sf_all_gather(
        group: *mut c_void,
        input: *mut c_void,
        outputs: *const *mut c_void,
        n: usize,
    ) -> *mut c_char;
    pub fn sf_barrier(group: *mut c_void) -> *mut c_char;
    pub fn sf_reducer_new(
        group: *mut c_void,
        params: *const *mut c_void,
        n: usize,
        cap_bytes: i64,
        overlap: bool,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn sf_reducer_free(reducer: *mut c_void);
    pub fn sf_reducer_buckets(reducer: *mut c_void) -> usize;
    pub fn sf_reducer_params(reducer: *mut c_void) -> usize;
    pub fn sf_reducer_prepare(reducer: *mut c_void, sync: bool, predivide: f64) -> *mut c_char;
    pub fn sf_reducer_finish(
        reducer: *mut c_void,
        waited_seconds: *mut f64,
        hook_seconds: *mut f64,
    ) -> *mut c_char;
}

/// `Err(message)` when `err` is an error message from the shim (which is freed).
pub fn take_error(err: *mut c_char) -> Result<(), String> {
    if err.is_null() {
        return Ok(());
    }
    // SAFETY: the shim returns NUL-terminated strings from malloc, freed exactly once here.
    let message = unsafe { CStr::from_ptr(err) }.to_string_lossy().into_owned();
    unsafe { sf_free_string(err) };
    Err(message)
}
