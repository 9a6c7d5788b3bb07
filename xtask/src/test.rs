//! `cargo xtask test`: setup, then every Rust test in the workspace, then the Python-side checks.

use std::path::Path;
use std::process::Command;
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
    if nextest {
        run_step(
            root,
            Command::new(&cargo)
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .args(&args.rest),
        )?;
        // nextest does not run doctests.
        if args.rest.is_empty() {
            run_step(root, Command::new(&cargo).args(["test", "--workspace", "--doc"]))?;
        }
    } else {
        run_step(
            root,
            Command::new(&cargo).args(["test", "--workspace", "--no-fail-fast"]).args(&args.rest),
        )?;
    }
    println!("xtask test: all stages passed in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn run_step(root: &Path, cmd: &mut Command) -> Result<()> {
    cmd.current_dir(root);
    println!("xtask test: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    ensure!(status.success(), "{cmd:?} failed ({status})");
    Ok(())
}
