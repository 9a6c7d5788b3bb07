//! The trainer's build script: libtorch's link settings (see `link.rs`, shared with `tests/`
//! and `benches/`) and the c10d shim (`csrc/c10d_shim.cpp`, distributed training), compiled
//! with `cc` against libtorch's headers and the gloo headers that `cargo xtask setup` unpacks
//! into `.deps/gloo` (Debian's `libgloo-dev`; `SEQFORGE_GLOO_INCLUDE` overrides the folder).
//!
//! NCCL: when the libtorch is a CUDA one (`lib/libtorch_cuda.so` and c10d's
//! `ProcessGroupNCCL.hpp`) and the CUDA and NCCL headers are found — `SEQFORGE_CUDA_INCLUDE`
//! (folders separated by `:`), else the `nvidia/*/include` folders of the Python environment
//! that holds the torch package (where pip puts them) plus `.deps/cuda/include` (CUDA's `crt/`
//! and CCCL headers, which setup adds for a CUDA libtorch), else `/usr/local/cuda/include` — the
//! shim is also compiled with `ProcessGroupNCCL` and linked with `libtorch_cuda` and
//! `libc10_cuda`. Either way
//! `SEQFORGE_NCCL_NOTE` records why, for the trainer's messages.

#[path = "link.rs"]
mod link;

use std::path::{Path, PathBuf};

fn main() {
    link::main();
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-env-changed=SEQFORGE_GLOO_INCLUDE");
    println!("cargo:rerun-if-env-changed=SEQFORGE_CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=SEQFORGE_DEPS");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("torch-sys did not report its libtorch folder (DEP_TCH_LIBTORCH_LIB)");
    };
    let lib = PathBuf::from(lib);
    let libtorch = lib.parent().map_or_else(|| lib.join(".."), Path::to_path_buf);
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
    let mut build = cc::Build::new();
    build
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
        .file("csrc/c10d_shim.cpp");
    match nccl_headers(&libtorch) {
        Ok(dirs) => {
            for dir in &dirs {
                build.include(dir);
            }
            build.flag("-DUSE_C10D_NCCL").flag("-DUSE_CUDA").flag("-DSEQFORGE_NCCL");
            // As link-lib (not link-arg) so that every binary linking the trainer gets them.
            println!("cargo:rustc-link-lib=dylib=torch_cuda");
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
            println!(
                "cargo:rustc-env=SEQFORGE_NCCL_NOTE=built with ProcessGroupNCCL, CUDA/NCCL \
                 headers from {}",
                shown.join(":")
            );
        }
        Err(why) => println!("cargo:rustc-env=SEQFORGE_NCCL_NOTE={why}"),
    }
    build.compile("seqforge_c10d");
}

/// The include folders that hold `cuda_runtime_api.h` and `nccl.h` for a CUDA libtorch, or why
/// the NCCL backend is not built.
fn nccl_headers(libtorch: &Path) -> Result<Vec<PathBuf>, String> {
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        return Err(format!("{} is a CPU libtorch (no lib/libtorch_cuda.so)", libtorch.display()));
    }
    let pg = libtorch.join("include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp");
    if !pg.is_file() {
        return Err(format!("{} lacks {}", libtorch.display(), pg.display()));
    }
    let candidates: Vec<PathBuf> = match std::env::var_os("SEQFORGE_CUDA_INCLUDE") {
        Some(dirs) => std::env::split_paths(&dirs).collect(),
        None => {
            // pip's layout: site-packages/torch next to site-packages/nvidia/<package>/include.
            let mut found = Vec::new();
            if let Ok(torch) = libtorch.canonicalize()
                && let Some(site) = torch.parent()
                && let Ok(entries) = std::fs::read_dir(site.join("nvidia"))
            {
                let mut dirs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path().join("include")))
                    .filter(|d| d.is_dir())
                    .collect();
                dirs.sort();
                found.extend(dirs);
            }
            // `cargo xtask setup` puts CUDA's crt/ and CCCL headers here for a CUDA libtorch.
            if let Some(deps) = std::env::var_os("SEQFORGE_DEPS") {
                found.push(PathBuf::from(deps).join("cuda/include"));
            }
            found.push(PathBuf::from("/usr/local/cuda/include"));
            found
        }
    };
    let holding = |header: &str| candidates.iter().find(|d| d.join(header).is_file()).cloned();
    match (holding("cuda_runtime_api.h"), holding("nccl.h")) {
        (Some(cuda), Some(nccl)) => {
            let mut dirs = vec![cuda];
            if !dirs.contains(&nccl) {
                dirs.push(nccl);
            }
            // Every candidate folder: CUDAContext.h also wants cuBLAS, cuSPARSE and cuSOLVER.
            for d in &candidates {
                if d.is_dir() && !dirs.contains(d) {
                    dirs.push(d.clone());
                }
            }
            Ok(dirs)
        }
        _ => {
            let shown: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
            println!(
                "cargo:warning=CUDA libtorch at {} but cuda_runtime_api.h / nccl.h not found in \
                 {}: building without NCCL (set SEQFORGE_CUDA_INCLUDE)",
                libtorch.display(),
                shown.join(":")
            );
            Err(format!(
                "CUDA libtorch, but no cuda_runtime_api.h and nccl.h in {} (set \
                 SEQFORGE_CUDA_INCLUDE when building)",
                shown.join(":")
            ))
        }
    }
}
