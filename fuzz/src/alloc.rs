//! A global allocator that refuses what no fuzz input justifies: a single allocation above a
//! cap, or live Rust allocations above a total. A refusal prints what was asked and makes the
//! allocation fail, which aborts the process (Rust's allocation-error handler): AFL records a
//! crash, a test binary dies naming the size. Inputs are at most a few MB (AFL's limit is
//! 1 MB), so a loader that asks for more than the cap sized something from a length field.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The system allocator with caps (install with `#[global_allocator]`).
#[derive(Debug)]
pub struct CappedAlloc {
    max_single: usize,
    max_live: usize,
    live: AtomicUsize,
    reporting: AtomicBool,
}

impl CappedAlloc {
    /// Refuses one allocation above `max_single` bytes, or live allocations above `max_live`.
    pub const fn new(max_single: usize, max_live: usize) -> Self {
        Self { max_single, max_live, live: AtomicUsize::new(0), reporting: AtomicBool::new(false) }
    }

    /// Bytes of Rust allocations live now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    fn admit(&self, size: usize) -> bool {
        if size > self.max_single {
            self.report("a single allocation of", size, self.max_single);
            return false;
        }
        let live = self.live.fetch_add(size, Ordering::Relaxed).saturating_add(size);
        if live > self.max_live {
            self.live.fetch_sub(size, Ordering::Relaxed);
            self.report("live allocations reaching", live, self.max_live);
            return false;
        }
        true
    }

    /// Says why an allocation is refused (once: the message must not recurse into us).
    fn report(&self, what: &str, size: usize, cap: usize) {
        if !self.reporting.swap(true, Ordering::Relaxed) {
            let _ = writeln!(
                std::io::stderr(),
                "seqforge-fuzz: refused {what} {size} bytes (cap {cap} bytes): a loader sized \
                 memory beyond what its input justifies"
            );
            self.reporting.store(false, Ordering::Relaxed);
        }
    }
}

// SAFETY: every call is forwarded to `System` unchanged, or refused with a null pointer, which
// `GlobalAlloc` allows; the counter only tracks sizes.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.live.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !self.admit(new_size - old) {
            return std::ptr::null_mut();
        }
        if new_size > self.max_single {
            self.live.fetch_sub(new_size.saturating_sub(old), Ordering::Relaxed);
            self.report("a single allocation of", new_size, self.max_single);
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded with the caller's pointer, layout and size.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            self.live.fetch_sub(new_size.saturating_sub(old), Ordering::Relaxed);
        } else if new_size < old {
            self.live.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}
