//! Link settings for every package that links libtorch (shared by `tests/` and `benches/`
//! through `build = "../trainer/link.rs"`; the trainer's `build.rs` calls it too).
//!
//! torch-sys's own rpath does not reach downstream binaries, so this adds
//! `-Wl,-rpath,<libtorch>/lib`, and links `libtorch.so` with `--no-as-needed`: with a CUDA
//! libtorch that library is what pulls in `libtorch_cuda.so`, which the linker would otherwise
//! drop (no symbol of it is referenced directly), and CUDA would silently disappear.

/// Prints the link arguments (also called by the trainer's own build script).
pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) => {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-ltorch");
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
        Err(_) => println!(
            "cargo:warning=torch-sys did not report its libtorch folder: is torch-sys a direct \
             dependency of this package? Binaries may not find libtorch at run time."
        ),
    }
}
