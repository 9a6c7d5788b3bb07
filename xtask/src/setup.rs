//! `cargo xtask setup`: assembles the native dependencies in `.deps/` from PyPI wheels.
//!
//! - `.deps/libtorch`: a CPU libtorch 2.11.0 for `tch` 0.24 built from the `torch==2.11.0` wheel's
//!   `include/` and `lib/{libtorch_cpu,libc10,libgomp}`, plus `libcudart`/`libcupti` (which
//!   `libtorch_cpu.so` needs even on CPU) from the `nvidia-cuda-runtime`/`nvidia-cuda-cupti` wheels,
//!   plus an empty `libtorch.so` stub standing in for the CUDA part. With
//!   `--libtorch-from-python` it is a symlink to an installed (CUDA) torch 2.11 instead.
//! - `.deps/onnxruntime/lib`: `libonnxruntime.so.1.31.1` from `onnxruntime==1.31.1` (or
//!   `onnxruntime-gpu==1.31.1` with `--gpu`, which adds the CUDA and TensorRT providers).
//!
//! - `.deps/sword/<package>/usr/share/sword`: the public-domain SWORD modules the corpus
//!   recipes read (`sword-text-sparv`, `sword-text-kjv` for `corpus bible`; also
//!   `sword-text-web`, `sword-comm-mhcc`, `sword-comm-scofield`, `sword-comm-tdavid` for
//!   `corpus english`), unpacked from Debian packages with `apt-get download` +
//!   `dpkg-deb -x` (no system install). `--no-corpus` skips them.
//! - `.deps/gloo/libgloo-dev/usr/include/gloo`: the gloo headers the trainer's c10d shim
//!   (distributed training) compiles against, from Debian's `libgloo-dev`, unpacked the same way.
//! - `.deps/python`: the Python packages the export checks use (`onnx` for
//!   `onnx.checker.check_model`, `onnxruntime` to run the graphs, `numpy`), installed with
//!   `pip install --target`; tests run them with `PYTHONPATH=.deps/python`. `--no-python` skips
//!   them (the Python export check then fails, saying to run setup).
//! - valgrind (a system tool, not in `.deps/`): the C ABI tests run the C example under it. When
//!   it is not on `PATH`, setup installs Debian's `valgrind` package (`apt-get install -y`) if
//!   it runs as root with apt-get; otherwise it says what to install, and `cargo xtask test`
//!   stops there.
//!
//! Every component is installed into a staging folder, verified (version and a `dlopen`) and
//! renamed into place, and a stamp records what was installed, so a second run only verifies.

use std::ffi::{CStr, c_char};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

/// The libtorch version `tch` 0.24 is built against.
pub const TORCH_VERSION: &str = "2.11.0";
/// The ONNX Runtime version `ort` 2.0.0-rc.15 (`api-31`) expects.
pub const ORT_VERSION: &str = "1.31.1";
/// The CUDA runtime wheel pinned by torch 2.11.0's `cuda-toolkit==13.0.2` requirement.
const CUDA_RUNTIME: &str = "nvidia-cuda-runtime==13.0.96";
/// The CUPTI wheel pinned the same way.
const CUDA_CUPTI: &str = "nvidia-cuda-cupti==13.0.85";
/// CUDA's host-compiler headers (`crt/`) and CCCL (`nv/target`, libcu++): c10d's
/// `ProcessGroupNCCL.hpp` includes `cuda_runtime.h` and `cuda_fp16.h`, which need them, and the
/// torch wheel's own dependencies do not ship them. Same CUDA 13.0 as the runtime above.
const CUDA_HEADERS: [(&str, &str); 2] = [
    ("nvidia-cuda-crt==13.0.88", "nvidia_cuda_crt-"),
    ("nvidia-cuda-cccl==13.0.85", "nvidia_cuda_cccl-"),
];
/// The Python packages of the export check (`tests/python/check_export.py`): onnx 1.23.2 checks
/// IR 10 / opset 17 models, onnxruntime 1.31.1 is the version the runtime links.
const PYTHON_PACKAGES: [&str; 3] = ["onnx==1.23.2", "onnxruntime==1.31.1", "numpy"];
/// Platform tags of the wheels above (the NVIDIA ones are tagged manylinux2014/2_17/2_25).
const PLATFORMS: [&str; 4] = [
    "manylinux_2_28_x86_64",
    "manylinux_2_25_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
];

/// Options of `cargo xtask setup` (also taken by `cargo xtask test`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct SetupArgs {
    /// Take ONNX Runtime from `onnxruntime-gpu==1.31.1` (CUDA and TensorRT execution
    /// providers; needs CUDA 13 at run time) instead of the CPU `onnxruntime` wheel.
    #[arg(long)]
    pub gpu: bool,
    /// Point `.deps/libtorch` at the torch 2.11 installed for the Python interpreter (e.g. a
    /// CUDA build on a GPU machine) instead of assembling a CPU libtorch from wheels.
    #[arg(long)]
    pub libtorch_from_python: bool,
    /// A folder that already holds the wheels (offline installs); by default they are
    /// downloaded with `pip download` from the configured Python package index.
    #[arg(long, value_name = "DIR")]
    pub wheel_dir: Option<PathBuf>,
    /// Reinstall every component even when the installed one verifies.
    #[arg(long)]
    pub force: bool,
    /// Do not fetch the SWORD packages (tests that need the Bible or English corpus then skip).
    #[arg(long)]
    pub no_corpus: bool,
    /// Do not install the Python export-check packages into `.deps/python` (the Python export
    /// check then fails with a message saying to run setup).
    #[arg(long)]
    pub no_python: bool,
    /// The Python interpreter whose pip fetches wheels (and whose torch
    /// `--libtorch-from-python` uses).
    #[arg(long, default_value = "python3", value_name = "PYTHON")]
    pub python: String,
}

/// Where setup put things.
#[derive(Debug, Clone)]
pub struct Deps {
    /// `.deps/` itself.
    pub root: PathBuf,
    /// The libtorch folder (`include/`, `lib/`).
    pub libtorch: PathBuf,
    /// The ONNX Runtime shared library.
    pub onnxruntime: PathBuf,
    /// valgrind, or why it is missing (what to install).
    pub valgrind: Result<PathBuf, String>,
}

/// Runs the whole bootstrap and returns the installed locations.
pub fn run(workspace: &Path, args: &SetupArgs) -> Result<Deps> {
    let start = Instant::now();
    let root = workspace.join(".deps");
    fs::create_dir_all(root.join("stamps"))
        .with_context(|| format!("creating {}", root.join("stamps").display()))?;
    let libtorch = ensure_libtorch(&root, args)?;
    ensure_cuda_headers(&root, &libtorch, args)?;
    let onnxruntime = ensure_onnxruntime(&root, args)?;
    ensure_gloo(&root, args.force)?;
    if args.no_corpus {
        println!("sword: skipped (--no-corpus)");
    } else {
        ensure_sword(&root, args.force)?;
    }
    if args.no_python {
        println!("python: skipped (--no-python)");
    } else {
        ensure_python(&root, args)?;
    }
    let valgrind = ensure_valgrind()?;
    println!(
        "setup: ready in {:.1}s ({} used by {})",
        start.elapsed().as_secs_f64(),
        human_size(dir_size(&root)),
        root.display()
    );
    Ok(Deps { root, libtorch, onnxruntime, valgrind })
}

// ---------------------------------------------------------------------------------------------
// libtorch

fn ensure_libtorch(root: &Path, args: &SetupArgs) -> Result<PathBuf> {
    let dest = root.join("libtorch");
    let stamp = root.join("stamps/libtorch");
    let (wanted, python_torch) = if args.libtorch_from_python {
        let (version, dir) = python_torch(&args.python)?;
        (format!("python torch {version} at {}", dir.display()), Some(dir))
    } else {
        (format!("wheels torch=={TORCH_VERSION} {CUDA_RUNTIME} {CUDA_CUPTI}"), None)
    };
    // A libtorch linked from Python by an earlier `--libtorch-from-python` is kept by a plain
    // setup (e.g. the one `cargo xtask test` runs); `--force` goes back to the CPU wheels.
    let installed = read_stamp(&stamp);
    let keep_python = !args.force
        && !args.libtorch_from_python
        && installed.as_deref().is_some_and(|s| s.starts_with("python torch"));
    let wanted = if keep_python { installed.clone().unwrap_or(wanted) } else { wanted };
    if !args.force && installed.as_deref() == Some(wanted.as_str()) {
        match verify_libtorch(&dest) {
            Ok(detail) => {
                println!("libtorch: present, {detail} ({})", dest.display());
                return Ok(dest);
            }
            Err(e) if keep_python => bail!(
                "libtorch linked from Python ({wanted}) no longer verifies: {e:#}\nRe-run with \
                 --libtorch-from-python, or with --force to go back to the CPU wheels"
            ),
            Err(e) => {
                println!("libtorch: installed copy failed verification ({e:#}); reinstalling")
            }
        }
    }
    remove_stamp(&stamp)?;
    let start = Instant::now();
    if let Some(dir) = python_torch {
        remove_path(&dest)?;
        std::os::unix::fs::symlink(&dir, &dest)
            .with_context(|| format!("linking {} -> {}", dest.display(), dir.display()))?;
    } else {
        let staging = root.join("libtorch.partial");
        remove_path(&staging)?;
        let fetched = Fetcher::new(root, args)?;
        let torch = fetched.wheel(&format!("torch=={TORCH_VERSION}"), "torch-")?;
        let cudart = fetched.wheel(CUDA_RUNTIME, "nvidia_cuda_runtime-")?;
        let cupti = fetched.wheel(CUDA_CUPTI, "nvidia_cuda_cupti-")?;
        println!("libtorch: unpacking {}", torch.display());
        extract(
            &torch,
            &staging,
            &[
                Pick::Tree("torch/include/", "include"),
                Pick::File("torch/lib/libtorch_cpu.so", "lib"),
                Pick::File("torch/lib/libc10.so", "lib"),
                Pick::File("torch/lib/libgomp.so.1", "lib"),
            ],
        )?;
        extract(&cudart, &staging, &[Pick::File("nvidia/cu13/lib/libcudart.so.13", "lib")])?;
        extract(&cupti, &staging, &[Pick::File("nvidia/cu13/lib/libcupti.so.13", "lib")])?;
        build_stub_libtorch(&staging.join("lib/libtorch.so"))?;
        // torch-sys compares this file with the version it was written for.
        fs::write(staging.join("build-version"), format!("{TORCH_VERSION}+cpu.seqforge\n"))?;
        verify_libtorch(&staging).context("verifying the freshly assembled libtorch")?;
        remove_path(&dest)?;
        fs::rename(&staging, &dest)
            .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
        fetched.cleanup();
    }
    let detail = verify_libtorch(&dest)?;
    write_stamp(&stamp, &wanted)?;
    println!(
        "libtorch: installed in {:.1}s, {detail} ({})",
        start.elapsed().as_secs_f64(),
        dest.display()
    );
    Ok(dest)
}

/// With a CUDA libtorch, unpacks the CUDA headers the trainer's NCCL backend needs besides the
/// ones pip installs with torch into `.deps/cuda/include` (which `trainer/build.rs` searches);
/// with the CPU libtorch there is nothing to do.
pub fn ensure_cuda_headers(root: &Path, libtorch: &Path, args: &SetupArgs) -> Result<()> {
    let dest = root.join("cuda");
    if !libtorch.join("lib/libtorch_cuda.so").exists() {
        println!(
            "cuda headers: not needed (CPU libtorch; the trainer's NCCL backend is not built)"
        );
        return Ok(());
    }
    let stamp = root.join("stamps/cuda-headers");
    let wanted = CUDA_HEADERS.map(|(spec, _)| spec).join(" ");
    let include = dest.join("include");
    if !args.force
        && read_stamp(&stamp).as_deref() == Some(wanted.as_str())
        && include.join("crt/host_config.h").is_file()
        && include.join("nv/target").is_file()
    {
        println!("cuda headers: present ({})", include.display());
        return Ok(());
    }
    remove_stamp(&stamp)?;
    let start = Instant::now();
    let staging = root.join("cuda.partial");
    remove_path(&staging)?;
    let fetched = Fetcher::new(root, args)?;
    for (spec, prefix) in CUDA_HEADERS {
        let wheel = fetched.wheel(spec, prefix)?;
        extract(&wheel, &staging, &[Pick::Tree("nvidia/cu13/include/", "include")])?;
    }
    ensure!(
        staging.join("include/crt/host_config.h").is_file()
            && staging.join("include/nv/target").is_file(),
        "the CUDA header wheels ({wanted}) lack crt/host_config.h or nv/target"
    );
    remove_path(&dest)?;
    fs::rename(&staging, &dest)
        .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
    fetched.cleanup();
    write_stamp(&stamp, &wanted)?;
    println!(
        "cuda headers: installed in {:.1}s ({wanted}) in {}",
        start.elapsed().as_secs_f64(),
        include.display()
    );
    Ok(())
}

/// Asks the Python interpreter for its torch version and folder; torch must be 2.11.0.
fn python_torch(python: &str) -> Result<(String, PathBuf)> {
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.dirname(torch.__file__))",
        ])
        .output()
        .with_context(|| format!("running `{python}` to locate torch (--libtorch-from-python)"))?;
    ensure!(
        out.status.success(),
        "--libtorch-from-python: `{python} -c 'import torch'` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let (Some(version), Some(dir)) = (lines.next(), lines.next()) else {
        bail!("--libtorch-from-python: unexpected answer from {python}: {text:?}");
    };
    ensure!(
        version.split('+').next() == Some(TORCH_VERSION),
        "--libtorch-from-python: {python} has torch {version}, but tch 0.24 needs {TORCH_VERSION}"
    );
    Ok((version.to_string(), PathBuf::from(dir)))
}

/// Checks the header version and that `libtorch_cpu.so` loads with everything it needs.
fn verify_libtorch(dir: &Path) -> Result<String> {
    let header = dir.join("include/torch/headeronly/version.h");
    let text = fs::read_to_string(&header)
        .with_context(|| format!("reading {} (is libtorch complete?)", header.display()))?;
    let version = text
        .split("#define TORCH_VERSION ")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .with_context(|| format!("{}: no TORCH_VERSION string", header.display()))?;
    ensure!(
        version == TORCH_VERSION,
        "{} says libtorch {version}, expected {TORCH_VERSION}",
        header.display()
    );
    let lib = dir.join("lib/libtorch_cpu.so");
    // SAFETY: loading libtorch runs its static initialisers, which have no preconditions.
    unsafe { libloading::Library::new(&lib) }
        .with_context(|| format!("loading {}", lib.display()))?;
    let cuda = dir.join("lib/libtorch_cuda.so").exists();
    Ok(format!("libtorch {version} ({})", if cuda { "CUDA" } else { "CPU" }))
}

/// Writes an empty shared library named `libtorch.so`: binaries link it with `--no-as-needed`,
/// so that a real libtorch (which pulls in libtorch_cuda) found at run time keeps CUDA.
fn build_stub_libtorch(path: &Path) -> Result<()> {
    let status = Command::new("cc")
        .args(["-shared", "-Wl,-soname,libtorch.so", "-x", "c", "/dev/null", "-o"])
        .arg(path)
        .status()
        .context("running `cc` to build the libtorch.so stub (install gcc)")?;
    ensure!(status.success(), "`cc` failed to build {}", path.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ONNX Runtime

fn ensure_onnxruntime(root: &Path, args: &SetupArgs) -> Result<PathBuf> {
    let dest = root.join("onnxruntime");
    let lib = dest.join(format!("lib/libonnxruntime.so.{ORT_VERSION}"));
    let stamp = root.join("stamps/onnxruntime");
    let package = if args.gpu { "onnxruntime-gpu" } else { "onnxruntime" };
    let installed = read_stamp(&stamp);
    // The GPU build also runs on CPU: a plain setup keeps it; `--force` goes back to the CPU one.
    let gpu_installed = installed.as_deref() == Some(&*format!("onnxruntime-gpu=={ORT_VERSION}"));
    let package = if gpu_installed && !args.force { "onnxruntime-gpu" } else { package };
    let wanted = format!("{package}=={ORT_VERSION}");
    if !args.force && installed.as_deref() == Some(wanted.as_str()) {
        match onnxruntime_version(&lib) {
            Ok(v) if v == ORT_VERSION => {
                println!("onnxruntime: present, {wanted} ({})", lib.display());
                return Ok(lib);
            }
            Ok(v) => println!("onnxruntime: installed copy is {v}; reinstalling"),
            Err(e) => {
                println!("onnxruntime: installed copy failed verification ({e:#}); reinstalling")
            }
        }
    }
    remove_stamp(&stamp)?;
    let start = Instant::now();
    let staging = root.join("onnxruntime.partial");
    remove_path(&staging)?;
    let fetched = Fetcher::new(root, args)?;
    let wheel = fetched.wheel(&wanted, &format!("{}-{ORT_VERSION}-", package.replace('-', "_")))?;
    let main = format!("onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
    let mut picks = vec![
        Pick::File(&main, "lib"),
        Pick::File("onnxruntime/capi/libonnxruntime_providers_shared.so", "lib"),
    ];
    if package == "onnxruntime-gpu" {
        picks.push(Pick::File("onnxruntime/capi/libonnxruntime_providers_cuda.so", "lib"));
        picks.push(Pick::File("onnxruntime/capi/libonnxruntime_providers_tensorrt.so", "lib"));
    }
    extract(&wheel, &staging, &picks)?;
    std::os::unix::fs::symlink(
        format!("libonnxruntime.so.{ORT_VERSION}"),
        staging.join("lib/libonnxruntime.so"),
    )?;
    let staged = staging.join(format!("lib/libonnxruntime.so.{ORT_VERSION}"));
    let version = onnxruntime_version(&staged)?;
    ensure!(
        version == ORT_VERSION,
        "{} reports {version}, expected {ORT_VERSION}",
        staged.display()
    );
    remove_path(&dest)?;
    fs::rename(&staging, &dest)
        .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
    fetched.cleanup();
    write_stamp(&stamp, &wanted)?;
    println!(
        "onnxruntime: installed {wanted} in {:.1}s ({})",
        start.elapsed().as_secs_f64(),
        lib.display()
    );
    Ok(lib)
}

/// The C struct `OrtApiBase`: two function pointers.
#[repr(C)]
struct OrtApiBase {
    #[allow(dead_code)]
    get_api: unsafe extern "C" fn(u32) -> *const std::ffi::c_void,
    get_version_string: unsafe extern "C" fn() -> *const c_char,
}

/// Loads the library and asks it for its version string.
fn onnxruntime_version(lib: &Path) -> Result<String> {
    // SAFETY: loading ONNX Runtime runs no code with preconditions; the symbol has the
    // documented C signature `const OrtApiBase* OrtGetApiBase(void)`.
    unsafe {
        let library =
            libloading::Library::new(lib).with_context(|| format!("loading {}", lib.display()))?;
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> = library
            .get(b"OrtGetApiBase\0")
            .with_context(|| format!("{} has no OrtGetApiBase", lib.display()))?;
        let base = get_base();
        ensure!(!base.is_null(), "{}: OrtGetApiBase returned null", lib.display());
        let version = ((*base).get_version_string)();
        ensure!(!version.is_null(), "{}: no version string", lib.display());
        Ok(CStr::from_ptr(version).to_string_lossy().into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// Python packages of the export check

/// `import onnx, onnxruntime, numpy` with `PYTHONPATH=dir`; returns their versions.
fn verify_python(python: &str, dir: &Path) -> Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import onnx, onnxruntime, numpy; \
             print(f'onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, \
             numpy {numpy.__version__}')",
        ])
        .env("PYTHONPATH", dir)
        .output()
        .with_context(|| format!("running `{python}` to import onnx and onnxruntime"))?;
    ensure!(
        out.status.success(),
        "importing onnx/onnxruntime from {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn ensure_python(root: &Path, args: &SetupArgs) -> Result<()> {
    let dest = root.join("python");
    let stamp = root.join("stamps/python");
    let wanted = PYTHON_PACKAGES.join(" ");
    if !args.force && read_stamp(&stamp).as_deref() == Some(wanted.as_str()) {
        match verify_python(&args.python, &dest) {
            Ok(detail) => {
                println!("python: present, {detail} ({})", dest.display());
                return Ok(());
            }
            Err(e) => println!("python: installed copy failed verification ({e:#}); reinstalling"),
        }
    }
    remove_stamp(&stamp)?;
    let start = Instant::now();
    let staging = root.join("python.partial");
    remove_path(&staging)?;
    println!("python: installing {wanted} (pip install --target)");
    let mut cmd = Command::new(&args.python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--only-binary=:all:",
        "--no-warn-script-location",
    ]);
    if let Some(dir) = &args.wheel_dir {
        cmd.arg("--no-index").arg("--find-links").arg(dir);
    }
    cmd.arg("--target").arg(&staging).args(PYTHON_PACKAGES);
    let out = cmd.output().with_context(|| {
        format!("running `{} -m pip install`: is Python 3 with pip installed?", args.python)
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        let _ = remove_path(&staging);
        bail!(
            "could not install {wanted} with `{} -m pip install --target` ({}).\npip said:\n{}\n\
             What to try: check that the package index is reachable, pass --wheel-dir with the \
             wheels, or --no-python to skip the Python export check.",
            args.python,
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        );
    }
    let detail = verify_python(&args.python, &staging)
        .context("verifying the freshly installed Python packages")?;
    remove_path(&dest)?;
    fs::rename(&staging, &dest)
        .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
    write_stamp(&stamp, &wanted)?;
    println!(
        "python: installed {detail} in {:.1}s ({})",
        start.elapsed().as_secs_f64(),
        dest.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Debian packages: the SWORD Bible modules and the gloo headers

/// The Debian packages holding the corpus recipes' modules, with a file each must contain:
/// the Bible recipe's two Bibles, then the English LM recipe's other Bible and commentaries.
const SWORD_PACKAGES: [(&str, &str); 6] = [
    ("sword-text-sparv", "usr/share/sword/mods.d/spaRV1909eb.conf"),
    ("sword-text-kjv", "usr/share/sword/mods.d/engKJV2006eb.conf"),
    ("sword-text-web", "usr/share/sword/mods.d/engWEB2015eb.conf"),
    ("sword-comm-mhcc", "usr/share/sword/mods.d/mhcc.conf"),
    ("sword-comm-scofield", "usr/share/sword/mods.d/scofield.conf"),
    ("sword-comm-tdavid", "usr/share/sword/mods.d/tdavid.conf"),
];

/// The gloo headers the trainer's c10d shim compiles against (`ProcessGroupGloo.hpp` includes
/// them; libtorch's wheel ships c10d's headers but not gloo's), with a file it must contain.
const GLOO_PACKAGES: [(&str, &str); 1] = [("libgloo-dev", "usr/include/gloo/algorithm.h")];

fn ensure_sword(root: &Path, force: bool) -> Result<()> {
    ensure_debs(&root.join("sword"), "sword", &SWORD_PACKAGES, force, "pass --no-corpus to skip")
}

/// Unpacks `libgloo-dev` into `.deps/gloo/libgloo-dev` (the trainer's build script looks there).
fn ensure_gloo(root: &Path, force: bool) -> Result<()> {
    ensure_debs(
        &root.join("gloo"),
        "gloo",
        &GLOO_PACKAGES,
        force,
        "the trainer cannot build without them",
    )
}

/// Fetches each `(package, marker)` with `apt-get download` and unpacks it with `dpkg-deb -x`
/// into `dir/<package>` (no system install), unless `marker` is already there.
fn ensure_debs(
    dir: &Path,
    what: &str,
    packages: &[(&str, &str)],
    force: bool,
    hint: &str,
) -> Result<()> {
    let start = Instant::now();
    let mut updated = false;
    for &(package, marker) in packages {
        let dest = dir.join(package);
        if !force && dest.join(marker).is_file() {
            println!("{what}: present, {package} ({})", dest.display());
            continue;
        }
        let debs = dir.join("debs");
        fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
        let deb = loop {
            println!("fetching {package} from the Debian archive (apt-get download)");
            let out = Command::new("apt-get")
                .args(["download", package])
                .current_dir(&debs)
                .output()
                .with_context(|| {
                    format!("running `apt-get download {package}` (is this Debian/Ubuntu? {hint})")
                })?;
            if out.status.success() {
                break find_prefixed(&debs, &format!("{package}_"), ".deb")?.with_context(
                    || {
                        format!(
                            "apt-get reported success but no {package}_*.deb is in {}",
                            debs.display()
                        )
                    },
                )?;
            }
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            if !updated {
                apt_get_update(what, package)?;
                updated = true;
                continue;
            }
            bail!(
                "could not fetch {package} with `apt-get download`: {}\nWhat to try: \
                   check that the Debian archive is reachable ({hint})",
                stderr.trim()
            );
        };
        let staging = dir.join(format!("{package}.partial"));
        remove_path(&staging)?;
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&staging)
            .status()
            .context("running `dpkg-deb -x`")?;
        ensure!(status.success(), "`dpkg-deb -x {}` failed ({status})", deb.display());
        ensure!(staging.join(marker).is_file(), "{} has no {marker}", deb.display());
        remove_path(&dest)?;
        fs::rename(&staging, &dest)
            .with_context(|| format!("renaming {} to {}", staging.display(), dest.display()))?;
        remove_path(&deb)?;
        println!(
            "{what}: installed {package} in {:.1}s ({})",
            start.elapsed().as_secs_f64(),
            dest.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// valgrind

/// Finds valgrind on `PATH`, or installs Debian's package when this runs as root with apt-get.
/// `Ok(Err(what to do))` when it is missing and cannot be installed here (the demo does not
/// need it; `cargo xtask test` stops on it); `Err` when the installation failed.
fn ensure_valgrind() -> Result<Result<PathBuf, String>> {
    if let Some((path, version)) = valgrind() {
        println!("valgrind: present, {version} ({})", path.display());
        return Ok(Ok(path));
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root || on_path("apt-get").is_none() {
        let missing = format!(
            "valgrind is not installed, and setup can install it only as root with apt-get (it \
             runs {}); the C ABI tests run the C example under it. Install it (Debian/Ubuntu: \
             `sudo apt-get install valgrind`) and rerun",
            if root { "as root without apt-get" } else { "as a user" }
        );
        println!("valgrind: MISSING. {missing}");
        return Ok(Err(missing));
    }
    let start = Instant::now();
    println!("valgrind: installing Debian's valgrind (apt-get install -y valgrind)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "valgrind"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("running `apt-get install valgrind`")
    };
    let mut out = install()?;
    if !out.status.success() {
        apt_get_update("valgrind", "valgrind")?;
        out = install()?;
    }
    ensure!(
        out.status.success(),
        "could not install valgrind with `apt-get install -y valgrind` ({}): {}\nWhat to try: \
         check that the Debian archive is reachable, or install valgrind yourself",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let (path, version) =
        valgrind().context("apt-get installed valgrind, but `valgrind --version` does not run")?;
    println!(
        "valgrind: installed {version} in {:.1}s ({})",
        start.elapsed().as_secs_f64(),
        path.display()
    );
    Ok(Ok(path))
}

/// `apt-get update`, for a `package` apt-get does not know yet (a fresh machine has empty
/// package lists); `what` names the component in the line printed.
fn apt_get_update(what: &str, package: &str) -> Result<()> {
    println!("{what}: apt-get does not know {package} yet; running apt-get update");
    let status = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running `apt-get update`")?;
    ensure!(
        status.success(),
        "`apt-get update` failed ({status}); is the Debian archive reachable?"
    );
    Ok(())
}

/// valgrind's path on `PATH` and its `--version`, when it runs.
fn valgrind() -> Option<(PathBuf, String)> {
    let path = on_path("valgrind")?;
    let out = Command::new(&path).arg("--version").output().ok()?;
    out.status.success().then(|| (path, String::from_utf8_lossy(&out.stdout).trim().to_string()))
}

/// The first `program` in the `PATH` folders.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

// ---------------------------------------------------------------------------------------------
// Wheels

/// Finds wheels in `--wheel-dir` or downloads them with pip into `.deps/wheels`.
struct Fetcher<'a> {
    dir: PathBuf,
    /// Whether `dir` is ours (and emptied after a successful install).
    owned: bool,
    args: &'a SetupArgs,
}

impl<'a> Fetcher<'a> {
    fn new(root: &Path, args: &'a SetupArgs) -> Result<Self> {
        match &args.wheel_dir {
            Some(dir) => Ok(Self { dir: dir.clone(), owned: false, args }),
            None => {
                let dir = root.join("wheels");
                fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                Ok(Self { dir, owned: true, args })
            }
        }
    }

    /// Returns the wheel for `spec` (`name==version`) whose file name starts with `prefix`.
    fn wheel(&self, spec: &str, prefix: &str) -> Result<PathBuf> {
        if let Some(found) = self.find(prefix)? {
            return Ok(found);
        }
        if !self.owned {
            bail!(
                "no wheel for {spec} (a file named {prefix}*.whl) in --wheel-dir {}",
                self.dir.display()
            );
        }
        println!("fetching {spec} from the Python package index (pip download)");
        let mut cmd = Command::new(&self.args.python);
        cmd.args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]);
        for platform in PLATFORMS {
            cmd.args(["--platform", platform]);
        }
        cmd.arg("--dest").arg(&self.dir).arg(spec);
        let out = cmd.output().with_context(|| {
            format!(
                "running `{} -m pip` to fetch {spec}: is Python 3 with pip installed?",
                self.args.python
            )
        })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
            bail!(
                "could not fetch {spec} from the Python package index with `{} -m pip download` \
                 ({}).\npip said:\n{}\nWhat to try: check that the package index is reachable \
                 (`{} -m pip config list` shows the configured index), or download the wheel on \
                 another machine and pass its folder with --wheel-dir.",
                self.args.python,
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                self.args.python,
            );
        }
        self.find(prefix)?.with_context(|| {
            format!("pip reported success but no {prefix}*.whl is in {}", self.dir.display())
        })
    }

    fn find(&self, prefix: &str) -> Result<Option<PathBuf>> {
        find_prefixed(&self.dir, prefix, ".whl")
    }

    /// Deletes downloaded wheels once their contents are installed (they are large).
    fn cleanup(&self) {
        if self.owned {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// What to take out of a wheel.
enum Pick<'a> {
    /// Every file under a folder prefix (ending in `/`), keeping relative paths, into a folder.
    Tree(&'a str, &'a str),
    /// One file, which must exist, into a folder.
    File(&'a str, &'a str),
}

fn extract(wheel: &Path, dest: &Path, picks: &[Pick<'_>]) -> Result<()> {
    let file = fs::File::open(wheel).with_context(|| format!("opening {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .with_context(|| format!("{} is not a readable wheel (zip)", wheel.display()))?;
    let mut found = vec![false; picks.len()];
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name().to_string();
        if entry.is_dir() {
            continue;
        }
        let target = picks.iter().enumerate().find_map(|(i, pick)| match pick {
            Pick::Tree(prefix, to) => {
                name.strip_prefix(prefix).map(|rest| (i, dest.join(to).join(rest)))
            }
            Pick::File(path, to) => (name == *path).then(|| {
                let base = Path::new(path).file_name().unwrap_or_default();
                (i, dest.join(to).join(base))
            }),
        });
        let Some((i, target)) = target else { continue };
        ensure!(
            !name.contains("..") && entry.enclosed_name().is_some(),
            "{}: unsafe path {name:?} in archive",
            wheel.display()
        );
        found[i] = true;
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out =
            fs::File::create(&target).with_context(|| format!("creating {}", target.display()))?;
        io::copy(&mut entry, &mut out)
            .with_context(|| format!("unpacking {name} from {}", wheel.display()))?;
    }
    for (pick, found) in picks.iter().zip(found) {
        let (Pick::Tree(what, _) | Pick::File(what, _)) = pick;
        ensure!(found, "{} has no {what}: is it the right wheel?", wheel.display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The first file in `dir` named `{prefix}…{suffix}`; a missing folder holds none.
fn find_prefixed(dir: &Path, prefix: &str, suffix: &str) -> Result<Option<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            return Ok(Some(dir.join(&*name)));
        }
    }
    Ok(None)
}

fn read_stamp(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn write_stamp(path: &Path, value: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{value}\n")).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn remove_stamp(path: &Path) -> Result<()> {
    remove_path(path)
}

/// Removes a file, symlink or folder; a missing path is fine.
fn remove_path(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.with_context(|| format!("removing {}", path.display()))
}

/// Bytes used under a folder (symlinks not followed).
pub fn dir_size(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| dir_size(&e.path())).sum())
        .unwrap_or(0)
}

/// `1.2 GB`-style sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
