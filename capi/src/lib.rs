//! `libseqforge.so` / `libseqforge.a`: seqforge's C ABI, built from the runtime's `capi`
//! module (see `seqforge_runtime::capi` for the functions and `runtime/include/seqforge.h`
//! for the header). This crate only re-exports the symbols so that the linker keeps them.
//!
//! ```sh
//! cargo build --release -p seqforge-capi   # target/release/libseqforge.{so,a}
//! cc app.c -Iruntime/include -Ltarget/release -lseqforge -Wl,-rpath,$PWD/target/release
//! ```

pub use seqforge_runtime::capi::*;
