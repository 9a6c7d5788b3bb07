//! `gpu_check`: everything a GPU machine can tell us, in one go (`cargo xtask gpu-check` builds
//! and runs it; `cargo xtask gpu-check --bundle DIR` prepares it for a GPU machine without a Rust
//! toolchain).
//!
//! 1. **Training throughput** (the paper's Table 1 analogue): the same Transformer trained for
//!    `--updates` updates on the same synthetic parallel corpus in fp32, fp16 (dynamic loss
//!    scaling) and bf16; target words/s of each and the ratios to fp32.
//! 2. **NCCL**: whether this build has c10d's `ProcessGroupNCCL`; with a CUDA device, a one-rank
//!    NCCL group all-reduces, broadcasts and all-gathers CUDA tensors and CPU values (staged
//!    through the GPU) and passes a barrier; with two or more devices, `seqforge-train
//!    --distributed-world-size 2 --distributed-backend nccl` is compared with one process and
//!    `--update-freq 2` (same updates, same data: valid losses must agree to 1e-3). Without a
//!    build with NCCL, it checks that `--distributed-backend nccl` is refused with the reason.
//! 3. **FP16 inference** (the paper's +54%): beam search through the trainer's libtorch decoder
//!    over the fp32 checkpoint of step 1, in fp32 and with the weights cast to fp16, on the same
//!    validation sentences; sentences/s, the ratio, and how many hypotheses are identical.
//!
//! It prints one table per step and a final JSON line; `--json FILE` also writes that line.
//! `--device cpu` runs the same steps on the CPU (tiny sizes by default), which is how CI keeps
//! this script working; the numbers that matter come from `--device cuda`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use seqforge_runtime::search::{GenerationOptions, generate};
use seqforge_trainer::checkpoint;
use seqforge_trainer::distributed::{self, Backend, ProcessGroup, ReduceOp, Rendezvous};
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, ModelContext, TrainConfig, infer_language_pair, load_split};
use tch::{Device, Kind, Tensor};

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    /// The first CUDA device (an error when there is none).
    Cuda,
    /// The CPU, with tiny sizes unless given: a check that the script works, not a measurement.
    Cpu,
}

#[derive(Parser, Debug)]
#[command(about = "GPU checks: fp32/fp16/bf16 training speed, NCCL, fp16 vs fp32 beam search")]
struct Cli {
    /// Where to run the checks.
    #[arg(long, value_enum, default_value = "cuda")]
    device: Target,
    /// Work folder (synthetic corpus, checkpoints); default: a temporary folder.
    #[arg(long)]
    work: Option<PathBuf>,
    /// Training updates per precision.
    #[arg(long)]
    updates: Option<u64>,
    /// Architecture trained (default transformer_wmt_en_de on CUDA, transformer_tiny on CPU).
    #[arg(long)]
    arch: Option<String>,
    /// Token budget per batch.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Sentence pairs of the synthetic training corpus.
    #[arg(long)]
    train_sentences: Option<usize>,
    /// Validation sentences decoded by the beam-search step.
    #[arg(long)]
    sentences: Option<usize>,
    /// Beam size of the inference step.
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// Sentences decoded together.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// `seqforge-train` for the two-rank NCCL run (default: next to this binary).
    #[arg(long)]
    train_bin: Option<PathBuf>,
    /// Also write the final JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Sizes of one run.
struct Plan {
    device: Device,
    arch: String,
    updates: u64,
    max_tokens: u64,
    train_sentences: usize,
    sentences: usize,
}

impl Plan {
    fn new(cli: &Cli) -> Result<Self> {
        let device = match cli.device {
            Target::Cuda => {
                ensure!(
                    tch::Cuda::is_available(),
                    "--device cuda: libtorch sees no CUDA device (is this a CUDA libtorch? \
                     LD_LIBRARY_PATH must reach the torch 2.11 CUDA build's lib/ folder); use \
                     --device cpu to check the script itself"
                );
                Device::Cuda(0)
            }
            Target::Cpu => Device::Cpu,
        };
        let cuda = device != Device::Cpu;
        Ok(Self {
            device,
            arch: cli.arch.clone().unwrap_or_else(|| {
                if cuda { "transformer_wmt_en_de" } else { "transformer_tiny" }.to_string()
            }),
            updates: cli.updates.unwrap_or(if cuda { 200 } else { 6 }),
            max_tokens: cli.max_tokens.unwrap_or(if cuda { 8192 } else { 600 }),
            train_sentences: cli.train_sentences.unwrap_or(if cuda { 60_000 } else { 400 }),
            sentences: cli.sentences.unwrap_or(if cuda { 500 } else { 8 }),
        })
    }

    fn device_flags(&self) -> Vec<String> {
        if self.device == Device::Cpu {
            vec!["--cpu".into(), "--threads".into(), "2".into()]
        } else {
            Vec::new()
        }
    }
}

/// The flags every training run shares.
fn train_args(plan: &Plan, bin: &Path, save: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        bin.to_string_lossy().into_owned(),
        "--arch".into(),
        plan.arch.clone(),
        "--save-dir".into(),
        save.to_string_lossy().into_owned(),
        "--max-tokens".into(),
        plan.max_tokens.to_string(),
        "--max-update".into(),
        plan.updates.to_string(),
        "--optimizer".into(),
        "adam".into(),
        "--lr".into(),
        "0.0005".into(),
        "--lr-scheduler".into(),
        "inverse_sqrt".into(),
        "--warmup-updates".into(),
        "50".into(),
        "--criterion".into(),
        "label_smoothed_cross_entropy".into(),
        "--label-smoothing".into(),
        "0.1".into(),
        "--no-progress-bar".into(),
        "--no-epoch-checkpoints".into(),
        "--seed".into(),
        "1".into(),
    ];
    args.extend(plan.device_flags());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Step 1: words/s in fp32, fp16 and bf16; returns the JSON and the fp32 checkpoint folder.
fn training_speed(plan: &Plan, bin: &Path, work: &Path, registry: &Registry) -> Result<Value> {
    println!("== training throughput: {} for {} updates per precision ==", plan.arch, plan.updates);
    let mut rows = Vec::new();
    let mut fp32_wps = None;
    for (name, flags) in [("fp32", &[][..]), ("fp16", &["--fp16"][..]), ("bf16", &["--bf16"][..])] {
        let save = work.join(format!("ckpt-{name}"));
        let config = TrainConfig::from_args(train_args(plan, bin, &save, flags), registry)?;
        let start = Instant::now();
        let summary =
            train::run(&config, registry).with_context(|| format!("training in {name}"))?;
        let wall = start.elapsed().as_secs_f64();
        let wps = summary.words_per_sec;
        let base = *fp32_wps.get_or_insert(wps);
        let loss = summary.validations.last().map(|v| v.metrics.loss);
        println!(
            "{name:>5}: {wps:>10.0} target words/s ({:.2}× fp32), {} updates, {} overflow(s), \
             valid loss {}, {wall:.1}s",
            wps / base,
            summary.num_updates,
            summary.overflows,
            loss.map_or("-".into(), |l| format!("{l:.3}"))
        );
        rows.push(json!({
            "precision": name, "words_per_sec": wps, "ratio_to_fp32": wps / base,
            "updates": summary.num_updates, "overflows": summary.overflows,
            "valid_loss": loss, "wall_s": wall,
        }));
    }
    Ok(Value::Array(rows))
}

/// Step 2: NCCL.
fn nccl(plan: &Plan, bin: &Path, work: &Path, cli: &Cli) -> Result<Value> {
    println!("== NCCL ==");
    if !distributed::nccl_built() {
        // The refusal must name the reason, not fail later or hang.
        let rv = one_rank()?;
        let refused = ProcessGroup::init(&rv, Backend::Nccl, Duration::from_secs(60))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        ensure!(
            refused.contains("has no NCCL"),
            "a build without NCCL must refuse --distributed-backend nccl with its reason; got \
             {refused:?}"
        );
        println!("not built: {refused}");
        return Ok(json!({"built": false, "refusal": refused}));
    }
    if plan.device == Device::Cpu {
        println!("built with NCCL; --device cpu: no CUDA collectives run");
        return Ok(json!({"built": true, "ran": false}));
    }
    // One rank: CUDA tensors, CPU values staged through the GPU, a barrier.
    let rv = one_rank()?;
    let group = ProcessGroup::init(&rv, Backend::Nccl, Duration::from_secs(120))?;
    let t = Tensor::f_ones([1024], (Kind::Float, plan.device))?;
    group.all_reduce(&[&t], ReduceOp::Sum)?;
    let sum = t.f_sum(Kind::Double)?.f_double_value(&[])?;
    ensure!(sum == 1024.0, "one-rank NCCL all-reduce changed the values (sum {sum})");
    let mut values = [1.5, -2.0];
    group.all_reduce_f64(&mut values)?;
    ensure!(values == [1.5, -2.0], "staged CPU all-reduce gave {values:?}");
    ensure!(group.broadcast_f64(3.25)? == 3.25, "one-rank broadcast");
    ensure!(group.all_gather_f64(7.0)? == vec![7.0], "one-rank all-gather");
    group.barrier()?;
    drop(group);
    println!(
        "one-rank group: all-reduce, broadcast, all-gather (CUDA and staged CPU), barrier: ok"
    );
    let devices = tch::Cuda::device_count();
    if devices < 2 {
        println!(
            "two ranks: not run ({devices} CUDA device visible; NCCL puts each rank on its own \
             GPU)"
        );
        return Ok(json!({"built": true, "one_rank": "ok", "two_ranks": Value::Null}));
    }
    let train_bin = match &cli.train_bin {
        Some(p) => p.clone(),
        None => {
            std::env::current_exe()?.parent().context("the binary's folder")?.join("seqforge-train")
        }
    };
    ensure!(train_bin.is_file(), "{} not found (--train-bin)", train_bin.display());
    let run = |name: &str, extra: &[&str]| -> Result<f64> {
        let save = work.join(name);
        let mut args = train_args(plan, bin, &save, extra);
        args.extend(["--max-update".into(), "30".into()]);
        let status = Command::new(&train_bin)
            .arg("train")
            .args(&args)
            .status()
            .with_context(|| format!("running {}", train_bin.display()))?;
        ensure!(status.success(), "{name}: seqforge-train failed ({status})");
        last_valid_loss(&save.join("train_log.jsonl"))
    };
    let two =
        run("ckpt-nccl-2", &["--distributed-world-size", "2", "--distributed-backend", "nccl"])?;
    let one = run("ckpt-update-freq-2", &["--update-freq", "2"])?;
    println!("two NCCL ranks: valid loss {two:.5}; one process, --update-freq 2: {one:.5}");
    ensure!((two - one).abs() <= 1e-3 * one.abs().max(1.0), "2 ranks and --update-freq 2 differ");
    Ok(json!({"built": true, "one_rank": "ok", "two_ranks": two, "update_freq_2": one}))
}

/// A one-process rendezvous on a free loopback port.
fn one_rank() -> Result<Rendezvous> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok(Rendezvous {
        rank: 0,
        world_size: 1,
        local_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: port,
    })
}

/// The last validation loss in a `train_log.jsonl`.
fn last_valid_loss(log: &Path) -> Result<f64> {
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("tag").and_then(Value::as_str) == Some("valid"))
        .find_map(|v| v.get("valid_loss").and_then(Value::as_f64))
        .with_context(|| format!("{} has no validation", log.display()))
}

/// Step 3: beam search in fp32 and fp16 over the fp32 checkpoint of step 1.
fn fp16_inference(
    plan: &Plan,
    bin: &Path,
    work: &Path,
    cli: &Cli,
    registry: &Registry,
) -> Result<Value> {
    println!("== beam {} through the trainer's libtorch decoder: fp32 vs fp16 ==", cli.beam);
    let ckpt_dir = work.join("ckpt-fp32/checkpoint_last");
    let ckpt = checkpoint::load(&ckpt_dir)?;
    let pair = infer_language_pair(bin, Some("src"), Some("tgt"))?;
    let valid = load_split(bin, "valid", &pair)?;
    let n = plan.sentences.min(valid.len());
    let mut sources = Vec::with_capacity(n);
    for i in 0..n {
        sources.push(valid.get(i)?.source);
    }
    let src_dict = seqforge_trainer::data::Dictionary::load(bin.join("dict.src.txt"))?;
    let tgt_dict = seqforge_trainer::data::Dictionary::load(bin.join("dict.tgt.txt"))?;
    let ctx = ModelContext {
        src_vocab_size: src_dict.len(),
        tgt_vocab_size: tgt_dict.len(),
        pad_index: src_dict.pad() as usize,
    };
    let options = GenerationOptions { beam: cli.beam, ..GenerationOptions::default() };
    let mut results = Vec::new();
    let mut outputs: Vec<Vec<Vec<u32>>> = Vec::new();
    for (name, kind) in [("fp32", Kind::Float), ("fp16", Kind::Half)] {
        let (_vs, model) = seqforge_trainer::train::model::load_checkpoint_model_as(
            &ckpt,
            registry,
            &ctx,
            plan.device,
            kind,
        )?;
        let step = model.step_model().context("the checkpoint's model cannot decode")?;
        let _no_grad = tch::no_grad_guard();
        let mut decoder = TorchDecoder::new(step);
        // Warm-up (CUDA kernels, allocator) on the first batch, untimed.
        generate(&mut decoder, &sources[..cli.batch.min(n)], &options)?;
        if plan.device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        let start = Instant::now();
        let mut best = Vec::with_capacity(n);
        let mut tokens = 0usize;
        for chunk in sources.chunks(cli.batch.max(1)) {
            for hyps in generate(&mut decoder, chunk, &options)? {
                let top = hyps.into_iter().next().map(|h| h.tokens).unwrap_or_default();
                tokens += top.len();
                best.push(top);
            }
        }
        if plan.device != Device::Cpu {
            tch::Cuda::synchronize(0);
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {n} sentences in {secs:.2}s: {:.1} sentences/s, {:.0} target tokens/s",
            n as f64 / secs,
            tokens as f64 / secs
        );
        results.push((name, secs, tokens));
        outputs.push(best);
    }
    let same = outputs[0].iter().zip(&outputs[1]).filter(|(a, b)| a == b).count();
    let speedup = results[0].1 / results[1].1;
    println!("fp16 / fp32 speed: {speedup:.2}×; identical best hypotheses: {same} of {n}");
    Ok(json!({
        "sentences": n, "beam": cli.beam, "batch": cli.batch,
        "fp32_s": results[0].1, "fp16_s": results[1].1, "fp16_speedup": speedup,
        "identical": same,
    }))
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let plan = Plan::new(&cli)?;
    let tmp;
    let work = match &cli.work {
        Some(w) => {
            std::fs::create_dir_all(w).with_context(|| format!("creating {}", w.display()))?;
            w.clone()
        }
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    if plan.device != Device::Cpu {
        println!(
            "gpu_check: {} CUDA device(s), cuDNN {}",
            tch::Cuda::device_count(),
            if tch::Cuda::cudnn_is_available() { "available" } else { "absent" }
        );
    } else {
        println!("gpu_check: --device cpu (checks the script; the numbers are not the point)");
    }
    println!("NCCL in this build: {}", distributed::nccl_built());
    let registry = Registry::with_builtins()?;
    let start = Instant::now();
    let bin = seqforge_benches::synthetic_corpus(&work, plan.train_sentences)?;
    let training = training_speed(&plan, &bin, &work, &registry)?;
    let nccl = nccl(&plan, &bin, &work, &cli)?;
    let inference = fp16_inference(&plan, &bin, &work, &cli, &registry)?;
    let line = json!({
        "device": format!("{:?}", plan.device), "arch": plan.arch, "training": training,
        "nccl": nccl, "inference": inference, "wall_s": start.elapsed().as_secs_f64(),
    })
    .to_string();
    println!("{line}");
    if let Some(path) = &cli.json {
        std::fs::write(path, format!("{line}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
