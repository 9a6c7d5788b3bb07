//! `kill_resume_soak`: training survives SIGKILL with nothing lost.
//!
//! 1. A reference run trains a Transformer (dropout on, label smoothing, Adam, inverse_sqrt,
//!    `--update-freq 2`, a checkpoint every `--save-every` updates) for `--updates` updates
//!    without interruption.
//! 2. Soak rounds train the same run in fresh save folders. Each attempt starts the trainer (as
//!    `seqforge-train train` does, in a child process that resumes from `checkpoint_last/`) and
//!    SIGKILLs it, alternately at a random moment of the run and **inside a checkpoint save**
//!    (the moment a `*.tmp-<pid>` or `*.old-<pid>` folder shows in the save folder, plus a
//!    random 0–30 ms). After every kill, every checkpoint folder in the save folder must load
//!    (the atomic-save claim: a crash never leaves a torn `checkpoint_*/`). When a round
//!    reaches `--updates`, its `checkpoint_last/` must equal the reference's bit for bit: every
//!    model and optimizer tensor, and the trainer state (but its wall-clock times).
//!    Rounds repeat until `--kills` kills.
//!
//! It prints one line per kill (when, where, what was on disk), a summary and a JSON line, and
//! fails on the first unreadable checkpoint or differing tensor.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use seqforge_trainer::checkpoint::{self, Checkpoint};
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig};
use serde_json::json;

/// The hidden first argument that makes this binary the trainer of one attempt.
const CHILD: &str = "__train";

#[derive(Parser, Debug)]
#[command(about = "SIGKILL training at random moments and inside checkpoint saves, resume, and \
                   compare with an uninterrupted run bit for bit")]
struct Cli {
    /// Kills in all (rounds repeat until this many).
    #[arg(long, default_value_t = 24)]
    kills: usize,
    /// Updates per run.
    #[arg(long, default_value_t = 40)]
    updates: u64,
    /// A checkpoint every this many updates (`--save-interval-updates`).
    #[arg(long, default_value_t = 2)]
    save_every: u64,
    /// Sentences in the synthetic training corpus.
    #[arg(long, default_value_t = 400)]
    train_sentences: usize,
    /// Seed of the kill schedule (the training seed is fixed).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Work folder (corpus, save folders, logs); default: a temporary folder.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Also write the final JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Where a kill landed, judged from the save folder right after it.
#[derive(Debug, Default, Clone, Copy)]
struct Landing {
    /// A `*.tmp-<pid>` folder was left: the kill interrupted writing a checkpoint.
    in_write: bool,
    /// A `*.old-<pid>` folder was left: the kill fell between a save's two renames.
    between_renames: bool,
}

/// The xorshift64 generator of the kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The trainer's flags for `save` (identical for the reference and every attempt).
fn train_args(cli: &Cli, data: &Path, save: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![data.to_string_lossy().into_owned()];
    args.extend(
        [
            "--arch",
            "transformer_tiny",
            "--dropout",
            "0.2",
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            "0.1",
            "--optimizer",
            "adam",
            "--lr",
            "0.001",
            "--lr-scheduler",
            "inverse_sqrt",
            "--warmup-updates",
            "8",
            "--update-freq",
            "2",
            "--max-tokens",
            "400",
            "--cpu",
            "--threads",
            "1",
            "--no-progress-bar",
            "--no-epoch-checkpoints",
            "--keep-interval-updates",
            "2",
            "--seed",
            "3",
        ]
        .map(String::from),
    );
    args.extend([
        "--save-interval-updates".into(),
        cli.save_every.to_string(),
        "--max-update".into(),
        cli.updates.to_string(),
        "--save-dir".into(),
        save.to_string_lossy().into_owned(),
    ]);
    args
}

/// Starts one attempt: this binary as the trainer, its output appended to `log`.
fn spawn(args: &[String], log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(std::env::current_exe().context("finding this program")?)
        .arg(CHILD)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .context("starting a training attempt")
}

/// Runs an attempt to its end; an error (with the log's tail) unless it succeeded.
fn finish(mut child: Child, log: &Path) -> Result<()> {
    let status = child.wait()?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!("a training attempt failed ({status}); {}:\n{}", log.display(), tail.join("\n"));
    }
    Ok(())
}

/// The save folder's entries that are a save in progress (`.tmp-`) or between renames (`.old-`).
fn landing(save: &Path) -> Result<Landing> {
    let mut landing = Landing::default();
    let Ok(entries) = std::fs::read_dir(save) else { return Ok(landing) };
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        landing.in_write |= name.contains(".tmp-");
        landing.between_renames |= name.contains(".old-");
    }
    Ok(landing)
}

/// Loads every finished checkpoint folder (`checkpoint*`, no `.tmp-`/`.old-`); how many.
fn check_readable(save: &Path) -> Result<usize> {
    let mut n = 0;
    let Ok(entries) = std::fs::read_dir(save) else { return Ok(0) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("checkpoint") && !name.contains(".tmp-") && !name.contains(".old-") {
            checkpoint::load(entry.path())
                .with_context(|| format!("UNREADABLE checkpoint after a kill: {name}"))?;
            n += 1;
        }
    }
    Ok(n)
}

/// Waits until a save is in progress in `save` (or the attempt ends, or `limit` passes).
fn wait_for_save(child: &mut Child, save: &Path, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        let l = landing(save)?;
        if l.in_write || l.between_renames {
            return Ok(true);
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    Ok(false)
}

/// Every tensor of `a` and `b` equal bit for bit (same names, kinds, shapes, bytes).
fn same_tensors(
    what: &str,
    a: &[(String, tch::Tensor)],
    b: &[(String, tch::Tensor)],
) -> Result<()> {
    ensure!(a.len() == b.len(), "{what}: {} tensors against {}", a.len(), b.len());
    let b: std::collections::HashMap<&str, &tch::Tensor> =
        b.iter().map(|(n, t)| (n.as_str(), t)).collect();
    for (name, ta) in a {
        let tb = b.get(name.as_str()).with_context(|| format!("{what}: {name} missing"))?;
        ensure!(
            ta.kind() == tb.kind() && ta.size() == tb.size(),
            "{what}: {name} differs in kind or shape"
        );
        // Bitwise: compare the raw bytes (NaN-safe, -0.0 ≠ 0.0).
        let bytes = |t: &tch::Tensor| -> Result<Vec<u8>> {
            let t = t.contiguous();
            let n = t.numel() * t.kind().elt_size_in_bytes();
            let mut v = vec![0u8; n];
            t.f_copy_data_u8(&mut v, t.numel())?;
            Ok(v)
        };
        ensure!(bytes(ta)? == bytes(tb)?, "{what}: {name} is not bit-identical");
    }
    Ok(())
}

/// `checkpoint_last` of a soak round against the reference's.
fn compare(reference: &Checkpoint, resumed: &Checkpoint) -> Result<()> {
    same_tensors("model", &reference.model, &resumed.model)?;
    same_tensors("optimizer", &reference.optimizer, &resumed.optimizer)?;
    // Everything but wall-clock times (fairseq's `previous_training_time`, the epoch meter's
    // `train_wall`), which no two runs share.
    fn drop_walls(v: &mut serde_json::Value) {
        if let Some(map) = v.as_object_mut() {
            map.remove("previous_training_time");
            map.remove("train_wall");
            map.values_mut().for_each(drop_walls);
        }
    }
    let timeless = |c: &Checkpoint| {
        let mut state = c.state.clone();
        drop_walls(&mut state.extra);
        state
    };
    let (a, b) = (timeless(reference), timeless(resumed));
    ensure!(a == b, "trainer_state.json differs: {a:?} against {b:?}");
    Ok(())
}

fn child_main(args: Vec<String>) -> Result<()> {
    let registry = Registry::with_builtins()?;
    let config = TrainConfig::from_args(args, &registry)?;
    let summary = train::run(&config, &registry)?;
    println!("{}", summary.to_json());
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    ensure!(cli.kills >= 1 && cli.updates >= 2 && cli.save_every >= 1, "nothing to soak");
    let tmp;
    let work = match &cli.work {
        Some(w) => w.clone(),
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&work)?;
    let data = seqforge_benches::synthetic_corpus(&work, cli.train_sentences)?;

    println!("== reference: {} updates without interruption ==", cli.updates);
    let ref_save = work.join("reference");
    let _ = std::fs::remove_dir_all(&ref_save);
    let ref_log = work.join("reference.log");
    let t0 = Instant::now();
    finish(spawn(&train_args(cli, &data, &ref_save), &ref_log)?, &ref_log)?;
    let run_s = t0.elapsed().as_secs_f64();
    let reference = checkpoint::load(ref_save.join("checkpoint_last"))?;
    println!("reference: {run_s:.1}s");

    let mut rng = Rng(cli.seed.max(1));
    let (mut kills, mut rounds, mut in_write, mut between, mut loaded) = (0, 0, 0, 0, 0usize);
    let mut attempts = 0;
    while kills < cli.kills {
        rounds += 1;
        let save = work.join(format!("round{rounds}"));
        let _ = std::fs::remove_dir_all(&save);
        let log = work.join(format!("round{rounds}.log"));
        let args = train_args(cli, &data, &save);
        println!("== round {rounds} ==");
        loop {
            attempts += 1;
            let mut child = spawn(&args, &log)?;
            if kills >= cli.kills {
                finish(child, &log)?;
                break;
            }
            let at_save = kills % 2 == 1;
            let started = Instant::now();
            let ready = if at_save {
                wait_for_save(&mut child, &save, Duration::from_secs_f64(run_s * 3.0 + 10.0))?
            } else {
                std::thread::sleep(Duration::from_secs_f64(rng.unit() * run_s));
                child.try_wait()?.is_none()
            };
            if !ready {
                // It finished before the kill: the round is done.
                finish(child, &log)?;
                break;
            }
            if at_save {
                std::thread::sleep(Duration::from_secs_f64(rng.unit() * 0.03));
            }
            child.kill()?;
            let status = child.wait()?;
            kills += 1;
            let l = landing(&save)?;
            in_write += usize::from(l.in_write);
            between += usize::from(l.between_renames);
            let n = check_readable(&save)?;
            loaded += n;
            let last = checkpoint::load(save.join("checkpoint_last"))
                .map(|c| format!("checkpoint_last at update {}", c.state.num_updates))
                .unwrap_or_else(|_| "no checkpoint_last yet".into());
            println!(
                "kill {kills:>3} ({}) after {:.2}s: {status}; {}{}{n} checkpoint(s) readable, {last}",
                if at_save { "in a save" } else { "at random" },
                started.elapsed().as_secs_f64(),
                if l.in_write { "unfinished save left (.tmp-), " } else { "" },
                if l.between_renames { "between renames (.old-), " } else { "" },
            );
        }
        let resumed = checkpoint::load(save.join("checkpoint_last"))?;
        compare(&reference, &resumed)
            .with_context(|| format!("round {rounds} against the reference"))?;
        println!(
            "round {rounds}: checkpoint_last bit-identical to the reference ({} tensors)",
            resumed.model.len() + resumed.optimizer.len()
        );
    }
    println!(
        "kill-and-resume soak: {kills} SIGKILLs over {rounds} round(s) ({attempts} attempts): \
         {in_write} left an unfinished save, {between} fell between a save's renames; \
         {loaded} checkpoint loads after kills, none unreadable; every round bit-identical to \
         the uninterrupted run"
    );
    let line = json!({
        "kills": kills, "rounds": rounds, "attempts": attempts, "updates": cli.updates,
        "kills_in_unfinished_save": in_write, "kills_between_renames": between,
        "checkpoint_loads_after_kills": loaded, "unreadable": 0, "bit_identical": true,
    });
    println!("{line}");
    if let Some(path) = &cli.json {
        std::fs::write(path, format!("{line}\n"))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(CHILD) {
        args.drain(..2);
        return seqforge_cli_support::finish(child_main(args));
    }
    let cli = Cli::parse();
    seqforge_cli_support::finish(run(&cli))
}
