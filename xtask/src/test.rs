//! `cargo xtask test`: setup, then every Rust test in the workspace, then the Python-side checks.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::setup::{self, SetupArgs};

/// Options of `cargo xtask test`.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    #[command(flatten)]
    setup: SetupArgs,
    /// Use `cargo test` even when cargo-nextest is installed.
    #[arg(long)]
    no_nextest: bool,
    /// Extra arguments for the test runner (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    rest: Vec<String>,
}

/// Runs the whole test suite; fails on the first failing stage.
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let start = Instant::now();
    let deps = setup::run(root, &args.setup)?;
    println!(
        "xtask test: libtorch {}, onnxruntime {}, deps in {}",
        deps.libtorch.display(),
        deps.onnxruntime.display(),
        deps.root.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let nextest = !args.no_nextest
        && Command::new(&cargo)
            .args(["nextest", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    let mut totals = Counts::default();
    if nextest {
        // Doctests first (nextest does not run them), so the runner's summary closes the log.
        if args.rest.is_empty() {
            totals += run_step(root, Command::new(&cargo).args(["test", "--workspace", "--doc"]))?;
        }
        totals += run_step(
            root,
            Command::new(&cargo)
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .args(&args.rest),
        )?;
    } else {
        totals += run_step(
            root,
            Command::new(&cargo).args(["test", "--workspace", "--no-fail-fast"]).args(&args.rest),
        )?;
    }
    println!("xtask test: all stages passed in {:.0}s", start.elapsed().as_secs_f64());
    println!("tests: {} passed, {} failed", totals.passed, totals.failed);
    Ok(())
}

/// Tests counted from a runner's summary lines.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: u64,
    failed: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

impl Counts {
    /// Reads `test result: ok. 3 passed; 0 failed; …` (cargo test) and
    /// `Summary [...] 16 tests run: 16 passed, 0 skipped` (nextest).
    fn parse(line: &str) -> Option<Self> {
        let line = line.trim_start();
        if !(line.starts_with("test result:") || line.starts_with("Summary")) {
            return None;
        }
        let words: Vec<&str> = line.split([' ', ';', ',']).filter(|w| !w.is_empty()).collect();
        let before = |label: &str| -> u64 {
            words.windows(2).find(|w| w[1] == label).and_then(|w| w[0].parse().ok()).unwrap_or(0)
        };
        Some(Self { passed: before("passed"), failed: before("failed") })
    }
}

/// Runs one stage, echoing its output live and counting tests from its summary lines.
fn run_step(root: &Path, cmd: &mut Command) -> Result<Counts> {
    cmd.current_dir(root).stdout(Stdio::piped()).stderr(Stdio::piped());
    println!("xtask test: running {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let counts = Arc::new(Mutex::new(Counts::default()));
    let mut readers = Vec::new();
    let streams: [(Option<Box<dyn std::io::Read + Send>>, bool); 2] = [
        (child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), false),
        (child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), true),
    ];
    for (stream, is_err) in streams {
        let Some(stream) = stream else { continue };
        let counts = Arc::clone(&counts);
        readers.push(thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if let Some(c) = Counts::parse(&line) {
                    *counts.lock().unwrap_or_else(|p| p.into_inner()) += c;
                }
                if is_err {
                    let _ = writeln!(std::io::stderr(), "{line}");
                } else {
                    let _ = writeln!(std::io::stdout(), "{line}");
                }
            }
        }));
    }
    let status = child.wait().with_context(|| format!("waiting for {cmd:?}"))?;
    for reader in readers {
        let _ = reader.join();
    }
    ensure!(status.success(), "{cmd:?} failed ({status})");
    let counts = *counts.lock().unwrap_or_else(|p| p.into_inner());
    Ok(counts)
}
