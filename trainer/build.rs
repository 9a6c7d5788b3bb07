//! The trainer's build script: libtorch's link settings (see `link.rs`, shared with `tests/`
//! and `benches/`) and the c10d shim (`csrc/c10d_shim.cpp`, distributed training), compiled
//! with `cc` against libtorch's headers and the gloo headers that `cargo xtask setup` unpacks
//! into `.deps/gloo` (Debian's `libgloo-dev`; `SEQFORGE_GLOO_INCLUDE` overrides the folder).

#[path = "link.rs"]
mod link;

use std::path::PathBuf;

fn main() {
    link::main();
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=SEQFORGE_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=SEQFORGE_DEPS");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch folder (DEP_TCH_LIBTORCH_LIB)");
    };
    let libtorch = PathBuf::from(lib).join("..");
    let include = libtorch.join("include");
    let gloo = match std::env::var_os("SEQFORGE_GLOO_INCLUDE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let deps = std::env::var_os("SEQFORGE_DEPS")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.deps"));
            deps.join("gloo/libgloo-dev/usr/include")
        }
    };
    if !gloo.join("gloo/algorithm.h").is_file() {
        panic!(
            "the gloo headers are missing from {} (the c10d shim for distributed training \
             needs them): run `cargo xtask setup`, which unpacks Debian's libgloo-dev there, or \
             point SEQFORGE_GLOO_INCLUDE at a folder holding gloo/",
            gloo.display()
        );
    }
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-DUSE_C10D_GLOO")
        .flag("-DUSE_DISTRIBUTED")
        .file("csrc/c10d_shim.cpp")
        .compile("seqforge_c10d");
}
