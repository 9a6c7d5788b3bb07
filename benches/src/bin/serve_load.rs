//! Load test of `seqforge serve`: dynamic batching against batch-of-one serving, and memory
//! under sustained overload.
//!
//! `serve_load [MODEL_DIR] [--seqforge PATH] [--seconds 5] [--clients 1,8,64] [--threads 1]
//! [--workers 1] [--options JSON] [--overload-seconds 15] [--overload-clients 256]`:
//!
//! 1. takes MODEL_DIR (an exported model with a tokenizer) or, without one, exports a
//!    synthetic demo-sized model into a temporary folder (3+3 layers, width 128, FFN 512,
//!    4 heads, a byte-level tokenizer without merges, deterministic weights);
//! 2. for each serving mode — batch of one (`--max-batch-tokens 1 --max-wait-ms 0`), dynamic
//!    batching of same-length sources (results bit-identical to batch of one) with
//!    `--max-wait-ms 0` (a free worker takes whatever is queued) and 5, the same with sources
//!    padded to a multiple of 8 (`--pad-source-to-multiple 8`: lengths 9–16 share batches,
//!    still bit-identical to translating alone with that padding), and dynamic batching with
//!    `--mixed-length-batches` (padded) — starts the `seqforge serve` binary
//!    (`--port 0`), and for each client count runs that many closed-loop clients (one text
//!    per request, new connection per request) for `--seconds`, measuring requests/s, p50 and
//!    p99 latency and the mean model batch size (from `/metrics`);
//! 3. runs `--overload-clients` clients without pause for `--overload-seconds` against a
//!    server with a small queue (`--max-queue 64`), counting 200s and 503s and sampling the
//!    server's resident memory (VmRSS in /proc/PID/status) every 250 ms;
//! 4. prints one table per phase and a JSON line with everything.
//!
//! Nothing is asserted: it is a measurement. Build the server first:
//! `cargo build --release -p seqforge-runtime --bin seqforge && cargo run --release -p
//! seqforge-benches --bin serve_load`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};

use seqforge_benches::serving::{Server, generated_texts, http, synthetic_model};

#[derive(Parser, Debug)]
#[command(
    about = "Load test of seqforge serve: dynamic batching vs batch of one, RSS under overload"
)]
struct Args {
    /// An exported model directory (with tokenizer.json); default: a synthetic demo-sized model.
    model_dir: Option<PathBuf>,
    /// The seqforge binary (default: `seqforge` next to this program).
    #[arg(long)]
    seqforge: Option<PathBuf>,
    /// Source sentences, one per line (default: generated Spanish-like sentences).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Client counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// ONNX Runtime intra-op threads per worker.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Server workers (model batches at once).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Search options of every request.
    #[arg(long, default_value = r#"{"beam": 4, "max_len_a": 0, "max_len_b": 16}"#)]
    options: String,
    /// Seconds of the overload phase (0: skip it).
    #[arg(long, default_value_t = 15.0)]
    overload_seconds: f64,
    /// Clients of the overload phase.
    #[arg(long, default_value_t = 256)]
    overload_clients: usize,
}

/// What a closed-loop run measured.
#[derive(Debug, Default)]
struct Run {
    ok: usize,
    refused: usize,
    other: usize,
    seconds: f64,
    /// Latencies of the answered (200) requests, sorted, in milliseconds.
    latencies_ms: Vec<f64>,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        if self.latencies_ms.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms[i.min(self.latencies_ms.len() - 1)]
    }
}

/// `clients` threads sending one text per request, back to back, for `seconds`.
fn closed_loop(
    addr: &str,
    texts: &Arc<Vec<String>>,
    options: &Value,
    clients: usize,
    seconds: f64,
) -> Run {
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let results = Arc::new(Mutex::new(Run::default()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, texts, options) = (addr.to_string(), Arc::clone(texts), options.clone());
            let (next, stop, results) =
                (Arc::clone(&next), Arc::clone(&stop), Arc::clone(&results));
            std::thread::spawn(move || {
                let mut local = Run::default();
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let text = &texts[next.fetch_add(1, Ordering::Relaxed) % texts.len()];
                    let body = json!({"texts": [text], "options": options}).to_string();
                    let sent = Instant::now();
                    match http(&addr, "POST", "/v1/translate", &body) {
                        Ok((200, _)) => {
                            local.ok += 1;
                            local.latencies_ms.push(sent.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok((503, _)) => local.refused += 1,
                        _ => local.other += 1,
                    }
                }
                if let Ok(mut all) = results.lock() {
                    all.ok += local.ok;
                    all.refused += local.refused;
                    all.other += local.other;
                    all.latencies_ms.extend(local.latencies_ms);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    stop.store(true, Ordering::Relaxed);
    let mut run = results.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
    run.seconds = start.elapsed().as_secs_f64();
    run.latencies_ms.sort_by(f64::total_cmp);
    run
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    let binary = match &args.seqforge {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("seqforge"),
    };
    if !binary.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release -p seqforge-runtime --bin \
             seqforge) or pass --seqforge",
            binary.display()
        );
    }
    let tmp = tempfile::tempdir()?;
    let model = match &args.model_dir {
        Some(dir) => dir.clone(),
        None => synthetic_model(tmp.path())?,
    };
    let texts: Vec<String> = match &args.texts {
        Some(path) => std::fs::read_to_string(path)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
        None => generated_texts(),
    };
    let texts = Arc::new(texts);
    let options: Value = serde_json::from_str(&args.options).context("--options")?;
    println!(
        "model {} | {} texts | options {options} | {} worker(s) × {} thread(s) | {:.0} s per point",
        if args.model_dir.is_some() {
            model.display().to_string()
        } else {
            "synthetic 3+3×128".into()
        },
        texts.len(),
        args.workers,
        args.threads,
        args.seconds
    );
    let modes: [(&str, Vec<&str>); 5] = [
        ("batch of one", vec!["--max-batch-tokens", "1", "--max-wait-ms", "0"]),
        ("dynamic, wait 0 ms", vec!["--max-batch-tokens", "2048", "--max-wait-ms", "0"]),
        (
            "dynamic, pad to 8",
            vec![
                "--max-batch-tokens",
                "2048",
                "--max-wait-ms",
                "0",
                "--pad-source-to-multiple",
                "8",
            ],
        ),
        ("dynamic, wait 5 ms", vec!["--max-batch-tokens", "2048", "--max-wait-ms", "5"]),
        (
            "dynamic, mixed lengths",
            vec!["--max-batch-tokens", "2048", "--max-wait-ms", "0", "--mixed-length-batches"],
        ),
    ];
    let mut report = Vec::new();
    println!(
        "\n{:<24} {:>7} {:>9} {:>9} {:>9} {:>10} {:>7}",
        "mode", "clients", "req/s", "p50 ms", "p99 ms", "sent/batch", "errors"
    );
    for (name, flags) in &modes {
        let mut flags = flags.clone();
        flags.extend_from_slice(&["--max-queue", "100000", "--request-timeout-ms", "600000"]);
        let server = Server::start(&binary, &model, args.threads, args.workers, &flags)?;
        closed_loop(&server.addr, &texts, &options, 2, 1.0); // warm-up
        for &clients in &args.clients {
            let (batches0, sentences0) = (
                server.metric("seqforge_batch_sentences_count")?,
                server.metric("seqforge_batch_sentences_sum")?,
            );
            let run = closed_loop(&server.addr, &texts, &options, clients, args.seconds);
            let batches = server.metric("seqforge_batch_sentences_count")? - batches0;
            let sentences = server.metric("seqforge_batch_sentences_sum")? - sentences0;
            let per_batch = if batches > 0.0 { sentences / batches } else { 0.0 };
            let rps = run.ok as f64 / run.seconds;
            let (p50, p99) = (run.percentile(0.5), run.percentile(0.99));
            println!(
                "{name:<24} {clients:>7} {rps:>9.1} {p50:>9.1} {p99:>9.1} {per_batch:>10.2} {:>7}",
                run.refused + run.other
            );
            report.push(json!({"mode": name, "clients": clients, "requests_per_s": rps,
                "p50_ms": p50, "p99_ms": p99, "sentences_per_batch": per_batch,
                "ok": run.ok, "errors": run.refused + run.other}));
        }
    }
    let mut overload = Value::Null;
    if args.overload_seconds > 0.0 {
        let flags = ["--max-batch-tokens", "2048", "--max-wait-ms", "0", "--max-queue", "64"];
        let server = Server::start(&binary, &model, args.threads, args.workers, &flags)?;
        closed_loop(&server.addr, &texts, &options, 2, 1.0);
        let idle_kib = server.rss_kib()?;
        let done = Arc::new(AtomicBool::new(false));
        let sampler = {
            let (done, pid) = (Arc::clone(&done), server.child.id());
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !done.load(Ordering::Relaxed) {
                    let rss =
                        std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
                            s.lines()
                                .find_map(|l| l.strip_prefix("VmRSS:"))
                                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                        });
                    if let Some(kib) = rss {
                        samples.push(kib);
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                samples
            })
        };
        let run = closed_loop(
            &server.addr,
            &texts,
            &options,
            args.overload_clients,
            args.overload_seconds,
        );
        done.store(true, Ordering::Relaxed);
        let samples: Vec<u64> = sampler.join().unwrap_or_default();
        let third = (samples.len() / 3).max(1);
        let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64 / 1024.0;
        let first = mean(&samples[..third.min(samples.len())]);
        let last = mean(&samples[samples.len().saturating_sub(third)..]);
        let max = samples.iter().copied().max().unwrap_or(0) as f64 / 1024.0;
        // Ten evenly spaced samples, to show whether memory levels off.
        let series: Vec<String> = (0..10)
            .filter_map(|k| samples.get(k * samples.len() / 10))
            .map(|kib| format!("{:.1}", *kib as f64 / 1024.0))
            .collect();
        let healthy =
            http(&server.addr, "GET", "/healthz", "").map(|(s, _)| s == 200).unwrap_or(false);
        println!(
            "\noverload: {} clients for {:.0} s, --max-queue 64: {} answered ({:.1} req/s, p50 \
             {:.0} ms, p99 {:.0} ms), {} refused with 503, {} other errors",
            args.overload_clients,
            run.seconds,
            run.ok,
            run.ok as f64 / run.seconds,
            run.percentile(0.5),
            run.percentile(0.99),
            run.refused,
            run.other
        );
        println!(
            "server RSS: {:.1} MiB after warm-up; during overload mean {first:.1} MiB in the first \
             third, {last:.1} MiB in the last third, max {max:.1} MiB ({} samples); /healthz \
             afterwards: {}",
            idle_kib as f64 / 1024.0,
            samples.len(),
            if healthy { "200" } else { "failed" }
        );
        println!("server RSS over the overload, MiB: {}", series.join(" "));
        overload = json!({"clients": args.overload_clients, "seconds": run.seconds, "ok": run.ok,
            "refused": run.refused, "other": run.other, "p50_ms": run.percentile(0.5),
            "p99_ms": run.percentile(0.99), "rss_idle_mib": idle_kib as f64 / 1024.0,
            "rss_first_third_mib": first, "rss_last_third_mib": last, "rss_max_mib": max, "rss_series_mib": series,
            "healthy_after": healthy});
    }
    println!("{}", json!({"serve_load": report, "overload": overload}));
    Ok(())
}
