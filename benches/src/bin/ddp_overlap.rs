//! Data-parallel training time split into computation and communication (run by
//! `cargo xtask bench-ddp`): the same transformer, data and global batches trained by
//!
//! 1. one process with `--update-freq 2` (no communication),
//! 2. two ranks with `--ddp-backend legacy_ddp` (bucket all-reduces after backward),
//! 3. two ranks with `--ddp-backend c10d` (all-reduces started from gradient hooks during
//!    backward),
//!
//! each through the real `seqforge-train` binary on 127.0.0.1 with Gloo. Per update it prints
//! the step time, the time spent waiting for all-reduces after backward (communication not
//! hidden), the time inside gradient hooks, and compute = step − wait. Nothing is asserted:
//! this is a measurement. On a 2-core machine the two ranks (one libtorch thread each) and
//! Gloo's threads share the cores, so it shows overlap, not scaling.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::Value;

/// Options.
#[derive(Parser, Debug)]
struct Args {
    /// Updates per configuration.
    #[arg(long, default_value_t = 30)]
    updates: u64,
    /// Model width (embeddings; FFN is 4×).
    #[arg(long, default_value_t = 256)]
    dim: usize,
    /// Encoder and decoder layers.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Tokens per batch (per rank).
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    /// Gradient bucket size in MiB.
    #[arg(long, default_value_t = 4.0)]
    bucket_cap_mb: f64,
    /// Work folder (data and checkpoints); a temporary one by default.
    #[arg(long)]
    work: Option<PathBuf>,
}

/// Random sentences over 200 words, target = source reversed, binarized by `preprocess`.
fn make_data(dir: &Path) -> Result<PathBuf> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for (split, lines) in [("train", 4000), ("valid", 50)] {
        let (mut src, mut tgt) = (String::new(), String::new());
        for _ in 0..lines {
            let len = 8 + next(24);
            let words: Vec<u64> = (0..len).map(|_| next(200)).collect();
            let s: Vec<String> = words.iter().map(|w| format!("w{w}")).collect();
            let t: Vec<String> = words.iter().rev().map(|w| format!("v{w}")).collect();
            src += &(s.join(" ") + "\n");
            tgt += &(t.join(" ") + "\n");
        }
        std::fs::write(dir.join(format!("{split}.de")), src)?;
        std::fs::write(dir.join(format!("{split}.en")), tgt)?;
    }
    let bin = dir.join("bin");
    let prefix = |s: &str| Some(dir.join(s).to_string_lossy().into_owned());
    seqforge_trainer::data::preprocess::run(&seqforge_trainer::data::PreprocessArgs {
        source_lang: Some("de".into()),
        target_lang: Some("en".into()),
        trainpref: prefix("train"),
        validpref: prefix("valid"),
        destdir: bin.clone(),
        ..Default::default()
    })?;
    Ok(bin)
}

struct Row {
    name: &'static str,
    ranks: usize,
    step: f64,
    wait: f64,
    hooks: f64,
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let exe = std::env::current_exe()?;
    let trainer = exe.with_file_name("seqforge-train");
    ensure!(
        trainer.is_file(),
        "{} is missing: build it first (cargo build --release -p seqforge-trainer --bins)",
        trainer.display()
    );
    let tmp = tempfile::tempdir()?;
    let work = args.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    let data = make_data(&work)?;
    let save_dir = work.join("checkpoints");
    let dim = args.dim.to_string();
    let ffn = (4 * args.dim).to_string();
    let layers = args.layers.to_string();
    let base: Vec<String> = [
        "train",
        data.to_str().context("data path")?,
        "--arch",
        "transformer",
        "--encoder-embed-dim",
        &dim,
        "--decoder-embed-dim",
        &dim,
        "--encoder-ffn-embed-dim",
        &ffn,
        "--decoder-ffn-embed-dim",
        &ffn,
        "--encoder-layers",
        &layers,
        "--decoder-layers",
        &layers,
        "--encoder-attention-heads",
        "4",
        "--decoder-attention-heads",
        "4",
        "--dropout",
        "0.1",
        "--optimizer",
        "adam",
        "--lr",
        "0.0005",
        "--max-tokens",
        &args.max_tokens.to_string(),
        "--max-update",
        &args.updates.to_string(),
        "--cpu",
        "--threads",
        "1",
        "--no-progress-bar",
        "--disable-validation",
        "--no-save",
        "--save-dir",
        save_dir.to_str().context("save path")?,
        "--seed",
        "1",
        "--bucket-cap-mb",
        &args.bucket_cap_mb.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let configs: [(&str, usize, &[&str]); 3] = [
        ("1 process, --update-freq 2", 1, &["--update-freq", "2"]),
        ("2 ranks, legacy_ddp (after backward)", 2, &["--ddp-backend", "legacy_ddp"]),
        ("2 ranks, c10d (overlapped)", 2, &["--ddp-backend", "c10d"]),
    ];
    let mut rows = Vec::new();
    let mut digests = Vec::new();
    for (name, ranks, extra) in configs {
        let mut a = base.clone();
        a.extend(extra.iter().map(|s| s.to_string()));
        if ranks > 1 {
            a.extend(["--distributed-world-size".to_string(), ranks.to_string()]);
        }
        eprintln!("running: {name}");
        let out = Command::new(&trainer).args(&a).env("RUST_LOG", "warn").output()?;
        if !out.status.success() {
            bail!("{name} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summaries: Vec<Value> = stdout
            .lines()
            .filter_map(|l| {
                let json = l.split_once("] ").map_or(l, |(_, j)| j);
                serde_json::from_str::<Value>(json).ok().filter(Value::is_object)
            })
            .collect();
        ensure!(summaries.len() == ranks, "{name}: expected {ranks} summaries:\n{stdout}");
        let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
        let updates = f(&summaries[0], "num_updates").max(1.0);
        // The slowest rank sets the pace; average the ranks' numbers.
        let n = summaries.len() as f64;
        let mean = |k: &str| summaries.iter().map(|v| f(v, k)).sum::<f64>() / n / updates;
        rows.push(Row {
            name,
            ranks,
            step: mean("train_wall"),
            wait: mean("comm_wait_seconds"),
            hooks: mean("comm_hook_seconds"),
        });
        digests.push(summaries[0]["params_digest"].as_str().unwrap_or("").to_string());
    }
    let params = {
        let d = args.dim as f64;
        let l = args.layers as f64;
        (l * (4.0 * d * d + 8.0 * d * d) + l * (8.0 * d * d + 8.0 * d * d)) / 1e6
    };
    println!(
        "\nDDP on Gloo, 127.0.0.1: transformer {}x{} layers, width {} (~{params:.1}M weights in \
         layers), {} tokens per batch per rank, {} updates, --bucket-cap-mb {}",
        args.layers, args.layers, args.dim, args.max_tokens, args.updates, args.bucket_cap_mb
    );
    println!(
        "{:<38} {:>5} {:>12} {:>14} {:>12} {:>12}",
        "configuration", "ranks", "step ms/upd", "comm wait ms", "hooks ms", "compute ms"
    );
    for r in &rows {
        println!(
            "{:<38} {:>5} {:>12.1} {:>14.1} {:>12.1} {:>12.1}",
            r.name,
            r.ranks,
            r.step * 1e3,
            r.wait * 1e3,
            r.hooks * 1e3,
            (r.step - r.wait) * 1e3
        );
    }
    if let [single, legacy, overlap] = &rows[..] {
        println!(
            "\nupdate time: 2 ranks c10d / 1 process = {:.2}x; c10d / legacy_ddp = {:.2}x; \
             communication left after backward: legacy {:.1} ms → c10d {:.1} ms per update",
            overlap.step / single.step,
            overlap.step / legacy.step,
            legacy.wait * 1e3,
            overlap.wait * 1e3
        );
    }
    let same = digests.windows(2).all(|w| w[0] == w[1]);
    println!("final weights identical across the three configurations: {same}");
    Ok(())
}
