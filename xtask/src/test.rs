//! `cargo xtask test`: setup, then every Rust test in the workspace, then the Python-side checks.
//!
//! Tests that skip themselves (`seqforge_testkit::skip!`) append a record to the file named by
//! `SEQFORGE_SKIP_LOG`, which this sets for every stage: nextest hides the output of passing
//! tests, so the records are how a skip reaches the summary. The summary lists every skipped
//! test with its reason, and the run fails when a test skipped for want of something setup
//! provides (see [`allowed`]).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use seqforge_testkit::{SKIP_LOG_ENV, Skip, SkipKind};

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

/// Runs the whole test suite; fails when a stage fails or a test skipped for a reason setup
/// should have removed.
pub fn run(root: &Path, args: &TestArgs) -> Result<()> {
    let start = Instant::now();
    let deps = setup::run(root, &args.setup)?;
    println!(
        "xtask test: libtorch {}, onnxruntime {}, deps in {}",
        deps.libtorch.display(),
        deps.onnxruntime.display(),
        deps.root.display()
    );
    if let Err(missing) = &deps.valgrind {
        bail!("{missing}");
    }
    let skip_log = SkipLog::create()?;
    let stages = run_stages(root, args, &skip_log.path);
    let report = skip_log.read().map(|skips| SkipReport::new(&skips, &args.setup));
    match &report {
        Ok(report) => print!("{}", report.render()),
        Err(e) => println!("skipped tests: the skip log is unreadable: {e:#}"),
    }
    let totals = stages?;
    let report = report?;
    if !report.refused.is_empty() {
        bail!(
            "{} test(s) skipped for want of something `cargo xtask setup` provides (listed \
             above as NOT ALLOWED); run setup without --no-corpus, or fix what it installs",
            report.refused.len()
        );
    }
    println!("xtask test: all stages passed in {:.0}s", start.elapsed().as_secs_f64());
    println!(
        "tests: {} passed, {} failed, {} skipped themselves",
        totals.passed,
        totals.failed,
        report.lines.len()
    );
    Ok(())
}

/// The doctests (with nextest) and the test runner, each test seeing the skip log.
fn run_stages(root: &Path, args: &TestArgs, skip_log: &Path) -> Result<Counts> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let nextest = !args.no_nextest
        && Command::new(&cargo)
            .args(["nextest", "--version"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    let mut totals = Counts::default();
    let command = |args: &[&str]| {
        let mut cmd = Command::new(&cargo);
        cmd.args(args).env(SKIP_LOG_ENV, skip_log);
        cmd
    };
    if nextest {
        // Doctests first (nextest does not run them), so the runner's summary closes the log.
        if args.rest.is_empty() {
            totals += run_step(root, &mut command(&["test", "--workspace", "--doc"]))?;
        }
        totals += run_step(
            root,
            command(&["nextest", "run", "--workspace", "--no-fail-fast"]).args(&args.rest),
        )?;
    } else {
        totals +=
            run_step(root, command(&["test", "--workspace", "--no-fail-fast"]).args(&args.rest))?;
    }
    Ok(totals)
}

/// The file tests append their skips to: created empty for this run, removed afterwards.
struct SkipLog {
    path: PathBuf,
}

impl SkipLog {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("seqforge-skips-{}.tsv", std::process::id()));
        fs::write(&path, "")
            .with_context(|| format!("creating the skip log {}", path.display()))?;
        Ok(Self { path })
    }

    /// Every skip recorded (each once, in order).
    fn read(&self) -> Result<Vec<Skip>> {
        let text = fs::read_to_string(&self.path)
            .with_context(|| format!("reading the skip log {}", self.path.display()))?;
        let mut skips = seqforge_testkit::parse_log(&text)
            .with_context(|| format!("reading the skip log {}", self.path.display()))?;
        let mut seen = std::collections::HashSet::new();
        skips.retain(|s| seen.insert(s.to_line()));
        Ok(skips)
    }
}

impl Drop for SkipLog {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Whether CI may accept a skip of this kind after this setup. A missing CUDA device always
/// (CI machines have none); missing SWORD modules only when setup was told not to fetch them
/// (`--no-corpus`). Anything else a test could want is setup's to install.
fn allowed(kind: SkipKind, setup: &SetupArgs) -> bool {
    match kind {
        SkipKind::NoCuda => true,
        SkipKind::SwordModules => setup.no_corpus,
    }
}

/// The skipped tests, judged.
#[derive(Debug)]
struct SkipReport {
    /// One line per skip.
    lines: Vec<String>,
    /// The tests that skipped for a reason [`allowed`] refuses.
    refused: Vec<String>,
}

impl SkipReport {
    fn new(skips: &[Skip], setup: &SetupArgs) -> Self {
        let mut lines = Vec::new();
        let mut refused = Vec::new();
        for skip in skips {
            let verdict = if allowed(skip.kind, setup) {
                "allowed"
            } else {
                refused.push(skip.test.clone());
                "NOT ALLOWED: setup provides it"
            };
            lines.push(format!(
                "  {} ({}; {verdict})\n      {}",
                skip.test,
                skip.kind.describe(),
                skip.reason
            ));
        }
        Self { lines, refused }
    }

    fn render(&self) -> String {
        if self.lines.is_empty() {
            return "skipped tests: none\n".to_string();
        }
        format!("skipped tests ({}):\n{}\n", self.lines.len(), self.lines.join("\n"))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(kind: SkipKind, test: &str) -> Skip {
        Skip { kind, test: test.to_string(), reason: format!("why {test}") }
    }

    #[test]
    fn only_a_missing_gpu_is_allowed_after_a_full_setup() {
        let full = SetupArgs::default();
        let no_corpus = SetupArgs { no_corpus: true, ..SetupArgs::default() };
        assert!(allowed(SkipKind::NoCuda, &full) && allowed(SkipKind::NoCuda, &no_corpus));
        assert!(!allowed(SkipKind::SwordModules, &full));
        assert!(allowed(SkipKind::SwordModules, &no_corpus));
    }

    #[test]
    fn the_summary_lists_every_skip_with_its_reason_and_verdict() -> Result<()> {
        // The records as tests write them, read back as xtask reads the log.
        let written = [
            skip(SkipKind::NoCuda, "seqforge-tests::cuda gpu"),
            skip(SkipKind::SwordModules, "seqforge-trainer corpus::bible::tests::real_modules"),
        ];
        let log: String = written.iter().map(|s| format!("{}\n", s.to_line())).collect();
        let skips = seqforge_testkit::parse_log(&log)?;
        assert_eq!(skips, written);
        let report = SkipReport::new(&skips, &SetupArgs::default());
        assert_eq!(report.refused, ["seqforge-trainer corpus::bible::tests::real_modules"]);
        let text = report.render();
        assert!(text.starts_with("skipped tests (2):\n"), "{text}");
        assert!(text.contains("seqforge-tests::cuda gpu (no CUDA device; allowed)"), "{text}");
        assert!(text.contains("why seqforge-tests::cuda gpu"), "{text}");
        assert!(
            text.contains(
                "corpus::bible::tests::real_modules (SWORD modules missing from .deps/sword; NOT \
                 ALLOWED: setup provides it)"
            ),
            "{text}"
        );
        let none = SkipReport::new(&[], &SetupArgs::default());
        assert_eq!((none.render().as_str(), none.refused.len()), ("skipped tests: none\n", 0));
        Ok(())
    }

    #[test]
    fn the_log_is_read_once_per_skip_and_removed() -> Result<()> {
        let log = SkipLog::create()?;
        let path = log.path.clone();
        let line = format!("{}\n", skip(SkipKind::NoCuda, "p t").to_line());
        fs::write(&path, format!("{line}{line}"))?;
        assert_eq!(log.read()?.len(), 1);
        fs::write(&path, "cuda-missing\tp t\twhy\n")?;
        let e = log.read().err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(e.contains("unknown kind") && e.contains("skip log"), "{e}");
        drop(log);
        assert!(!path.exists());
        Ok(())
    }
}
