//! `cargo xtask fuzz`: coverage-guided fuzzing of every loader with AFL++ on stable Rust.
//!
//! The targets are `seqforge-fuzz`'s (`fuzz/src/targets.rs`); the harness is `fuzz/afl`, a
//! crate outside the workspace built with `cargo afl build --release` into `target/afl`. Each
//! target runs `--minutes` under `afl-fuzz` (`--jobs` at a time, niced), starting from
//! `fuzz/corpus/<target>/` or resuming its queue in `target/fuzz/<target>/`. Afterwards every
//! crash and hang is copied to `fuzz/regressions/<target>/`, which `seqforge-fuzz`'s tests
//! replay, and the run fails if there was any.
//!
//! Tools: `cargo-afl` (`cargo install cargo-afl --locked`, from crates.io), whose
//! `cargo afl config --build` compiles the AFL++ it bundles; both are done here when missing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};

use crate::pipeline;
use crate::setup;

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug)]
pub struct FuzzArgs {
    /// Minutes per target.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Only these targets (repeatable; default: all).
    #[arg(long = "target", value_name = "NAME")]
    targets: Vec<String>,
    /// Targets fuzzed at the same time (one afl-fuzz process, one core, each).
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Milliseconds before an input counts as a hang.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
    /// Start from the seeds again instead of resuming each target's queue.
    #[arg(long)]
    fresh: bool,
    /// Only build the harness.
    #[arg(long)]
    build_only: bool,
}

/// One target's `fuzzer_stats`, what the summary prints.
#[derive(Debug, Default)]
struct Stats {
    seconds: u64,
    execs: u64,
    corpus: u64,
    crashes: u64,
    hangs: u64,
}

/// Builds the harness and fuzzes the targets; fails when any crash or hang was found.
pub fn run(root: &Path, args: &FuzzArgs) -> Result<()> {
    ensure!(args.jobs >= 1, "--jobs must be at least 1");
    ensure!(args.minutes > 0.0, "--minutes must be positive");
    ensure_tools()?;
    let deps =
        setup::run(root, &setup::SetupArgs { python: "python3".into(), ..Default::default() })?;
    let harness = build(root, &deps)?;
    let known = list_targets(&harness)?;
    if args.build_only {
        println!("fuzz: harness built: {} (targets: {})", harness.display(), known.join(", "));
        return Ok(());
    }
    let targets: Vec<&str> = if args.targets.is_empty() {
        known.iter().map(String::as_str).collect()
    } else {
        for t in &args.targets {
            ensure!(known.contains(t), "unknown fuzz target `{t}` (known: {})", known.join(", "));
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let out = root.join("target/fuzz");
    let seconds = (args.minutes * 60.0).round().max(1.0) as u64;
    let mut results = BTreeMap::new();
    for batch in targets.chunks(args.jobs) {
        println!("fuzz: {} for {seconds}s", batch.join(", "));
        let mut running = Vec::new();
        for &target in batch {
            running.push((target, start(root, &harness, &out, target, seconds, args)?));
        }
        for (target, mut child) in running {
            let status = child.wait().with_context(|| format!("waiting for afl-fuzz {target}"))?;
            let dir = out.join(target).join("default");
            let stats = read_stats(&dir.join("fuzzer_stats")).with_context(|| {
                format!(
                    "afl-fuzz {target} ({status}) left no stats; see {}",
                    out.join(format!("{target}.log")).display()
                )
            })?;
            let copied = keep_failures(root, &dir, target)?;
            if copied > 0 {
                println!("fuzz: {target}: {copied} new inputs in fuzz/regressions/{target}/");
            }
            results.insert(target, stats);
        }
    }
    println!(
        "\n| target | minutes | execs | corpus | crashes | hangs |\n|---|---|---|---|---|---|"
    );
    for (target, s) in &results {
        println!(
            "| {target} | {:.1} | {} | {} | {} | {} |",
            s.seconds as f64 / 60.0,
            s.execs,
            s.corpus,
            s.crashes,
            s.hangs
        );
    }
    let bad: Vec<&str> =
        results.iter().filter(|(_, s)| s.crashes + s.hangs > 0).map(|(t, _)| *t).collect();
    if !bad.is_empty() {
        bail!(
            "crashes or hangs in {}: replay them with `cargo test -p seqforge-fuzz` (they are in \
             fuzz/regressions/), fix the loader, keep the input as a regression",
            bad.join(", ")
        );
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string())
}

/// Installs cargo-afl and builds its AFL++ when missing.
fn ensure_tools() -> Result<()> {
    let version = Command::new(cargo()).args(["afl", "--version"]).output();
    if !version.as_ref().is_ok_and(|o| o.status.success()) {
        println!("fuzz: cargo-afl is missing; installing it (cargo install cargo-afl --locked)");
        pipeline::run(
            Command::new(cargo()).args(["install", "cargo-afl", "--locked"]),
            "cargo install cargo-afl",
        )?;
    }
    // `afl-fuzz -h` exits 0 and names its version once AFL++ is built.
    let built = Command::new(cargo())
        .args(["afl", "fuzz", "-h"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("afl-fuzz"));
    if !built {
        println!("fuzz: building AFL++ (cargo afl config --build)");
        pipeline::run(
            Command::new(cargo()).args(["afl", "config", "--build"]),
            "cargo afl config --build",
        )?;
    }
    let version = Command::new(cargo()).args(["afl", "--version"]).output()?;
    println!("fuzz: {}", String::from_utf8_lossy(&version.stdout).trim());
    Ok(())
}

/// `cargo afl build --release` of `fuzz/afl` into `target/afl`; the harness binary.
fn build(root: &Path, deps: &setup::Deps) -> Result<PathBuf> {
    let target = root.join("target/afl");
    let t0 = Instant::now();
    println!("fuzz: building the harness (cargo afl build --release) in {}", target.display());
    pipeline::run(
        Command::new(cargo())
            .current_dir(root.join("fuzz/afl"))
            .env("CARGO_TARGET_DIR", &target)
            .env("LIBTORCH", &deps.libtorch)
            .env("SEQFORGE_DEPS", &deps.root)
            .args(["afl", "build", "--release", "--quiet"]),
        "cargo afl build",
    )?;
    println!("fuzz: built in {:.0}s", t0.elapsed().as_secs_f64());
    Ok(target.join("release/seqforge-afl"))
}

/// The harness's targets (`seqforge-afl --list`), in the order they run.
fn list_targets(harness: &Path) -> Result<Vec<String>> {
    let out = Command::new(harness)
        .arg("--list")
        .output()
        .with_context(|| format!("running {} --list", harness.display()))?;
    ensure!(out.status.success(), "{} --list failed ({})", harness.display(), out.status);
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect())
}

/// Starts `afl-fuzz` on `target` (niced, no UI, output in `out/<target>/`, log beside it).
fn start(
    root: &Path,
    harness: &Path,
    out: &Path,
    target: &str,
    seconds: u64,
    args: &FuzzArgs,
) -> Result<Child> {
    let dir = out.join(target);
    if args.fresh && dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let log = out.join(format!("{target}.log"));
    let log = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let corpus = root.join("fuzz/corpus").join(target);
    let mut cmd = Command::new("nice");
    cmd.args(["-n", "10"])
        .arg(cargo())
        .args(["afl", "fuzz"])
        .arg("-i")
        .arg(&corpus)
        .arg("-o")
        .arg(&dir)
        .args(["-V", &seconds.to_string(), "-t", &args.timeout_ms.to_string()])
        .arg("--")
        .arg(harness)
        .arg(target)
        .env("AFL_NO_UI", "1")
        .env("AFL_SKIP_CPUFREQ", "1")
        .env("AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES", "1")
        // Shared machines: do not pin to a core another process may be using.
        .env("AFL_NO_AFFINITY", "1")
        // Resume the queue of an earlier run when there is one.
        .env("AFL_AUTORESUME", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    cmd.spawn().with_context(|| format!("starting afl-fuzz for {target}"))
}

/// The fields of an AFL++ `fuzzer_stats` file the summary needs.
fn read_stats(path: &Path) -> Result<Stats> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut s = Stats::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else { continue };
        let value: u64 = value.trim().parse().unwrap_or(0);
        match key.trim() {
            "run_time" => s.seconds = value,
            "execs_done" => s.execs = value,
            "corpus_count" => s.corpus = value,
            "saved_crashes" => s.crashes = value,
            "saved_hangs" => s.hangs = value,
            _ => {}
        }
    }
    Ok(s)
}

/// Copies the crashes and hangs of one run into `fuzz/regressions/<target>/` (named by
/// content, so a rerun adds nothing twice); answers how many were new.
fn keep_failures(root: &Path, dir: &Path, target: &str) -> Result<usize> {
    let dest = root.join("fuzz/regressions").join(target);
    let mut copied = 0;
    for kind in ["crashes", "hangs"] {
        let Ok(entries) = fs::read_dir(dir.join(kind)) else { continue };
        for entry in entries {
            let path = entry?.path();
            if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("id:")) {
                continue;
            }
            let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = format!("{}-{:016x}", kind.trim_end_matches('s'), fnv1a(&bytes));
            let to = dest.join(name);
            if !to.exists() {
                fs::create_dir_all(&dest)
                    .with_context(|| format!("creating {}", dest.display()))?;
                fs::write(&to, &bytes).with_context(|| format!("writing {}", to.display()))?;
                copied += 1;
            }
        }
    }
    Ok(copied)
}

/// FNV-1a 64 (names regression files by content).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
