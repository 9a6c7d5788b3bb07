//! seqforge next to CTranslate2 on the same weights, the same token ids, the same beam and
//! lengths and the same number of CPU threads (`cargo xtask bench-peers` runs it for the demo
//! and the base model).
//!
//! `vs_ctranslate2 --checkpoint CKPT_DIR --data DATA_BIN --peer benches/python/ct2_peer.py`:
//!
//! 1. exports CKPT_DIR with the exporter library (FP32, and INT8 unless `--no-int8`) and
//!    converts it to a CTranslate2 model with `ct2_peer.py convert` (CTranslate2's Python spec
//!    API, float32 weights; CTranslate2's int8 is its `compute_type="int8"` at load time);
//! 2. takes the first `--sentences` source sentences of DATA_BIN's test split as binarized (both
//!    engines get these ids; CTranslate2 is given them without the final EOS, which its model
//!    config adds back);
//! 3. for each thread count and batching (`--max-tokens` token-budget batches, sentences sorted
//!    by length, and batch 1), runs `--rounds` rounds; a round runs every engine once, in turn:
//!    seqforge FP32, CTranslate2 float32, seqforge INT8, CTranslate2 int8. seqforge runs as
//!    `seqforge generate` does (`translate_sources_on`, one worker per thread, each with one
//!    intra-op thread). CTranslate2 runs every configuration of the same thread count
//!    (`intra_threads` × `inter_threads` = threads; at batch 1 only `inter_threads`, since
//!    `intra_threads` 2 was 20× slower there) and is credited with its best. Both engines
//!    get the same batches; model loading and a warm-up of a few sentences are not timed;
//! 4. prints one table row per (threads, batching) with median sentences/s (and the spread
//!    over the rounds), the ratios seqforge / CTranslate2, and the share of sentences whose
//!    best hypothesis is the same token sequence in both engines; then one JSON line with
//!    everything.
//!
//! Nothing is asserted: it is a measurement.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};

use seqforge_exporter::{ExportOptions, export};
use seqforge_runtime::indexed::{IndexedDataset, split_prefix};
use seqforge_runtime::onnx::{ModelDir, OnnxDecoder, RuntimeOptions};
use seqforge_runtime::pool::{make_batches, translate_sources_on};
use seqforge_runtime::search::{GenerationOptions, Hypothesis, generate};
use seqforge_runtime::text::SourceLine;
use seqforge_schemas::contract::Dtype;

#[derive(Parser, Debug)]
#[command(about = "seqforge vs CTranslate2: same weights, ids, beam, lengths and threads")]
struct Cli {
    /// Trainer checkpoint directory (`model.safetensors` + `config.json`).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Binarized data folder (dictionaries and the test split).
    #[arg(long)]
    data: PathBuf,
    /// A name for the model in the table (e.g. `demo`, `base`).
    #[arg(long, default_value = "model")]
    name: String,
    /// The python interpreter that has `ctranslate2` and `numpy`.
    #[arg(long, default_value = "python3")]
    python: String,
    /// `benches/python/ct2_peer.py`.
    #[arg(long)]
    peer: PathBuf,
    /// Sentences for the token-budget batching (the first N of the split).
    #[arg(long, default_value_t = 1000)]
    sentences: usize,
    /// Sentences for batch 1 (the first N; 0 skips batch 1).
    #[arg(long, default_value_t = 200)]
    batch1_sentences: usize,
    /// Token budget of a batch (padded source tokens, longest × sentences).
    #[arg(long, default_value_t = 4096)]
    max_tokens: usize,
    /// Thread counts to compare.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
    /// Beam size.
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// Force every output to N tokens (so that the work does not depend on the weights);
    /// default: fairseq's lengths (at most 200 tokens).
    #[arg(long)]
    force_len: Option<usize>,
    /// Rounds (every engine once per round, in turn); medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Untimed warm-up sentences before each timed run.
    #[arg(long, default_value_t = 4)]
    warmup: usize,
    /// Leave out the INT8 columns on seqforge's side.
    #[arg(long)]
    no_int8: bool,
    /// Work folder for the exports and the CTranslate2 model (default: a temporary folder).
    #[arg(long)]
    work: Option<PathBuf>,
}

/// The CTranslate2 side: `ct2_peer.py serve` on pipes.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start(cli: &Cli, model: &Path) -> Result<Self> {
        let mut child = Command::new(&cli.python)
            .arg(&cli.peer)
            .arg("serve")
            .arg("--model")
            .arg(model)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}", cli.python, cli.peer.display()))?;
        let stdin = child.stdin.take().context("peer stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("peer stdout")?);
        Ok(Self { child, stdin, stdout })
    }

    fn ask(&mut self, request: &Value) -> Result<Value> {
        writeln!(self.stdin, "{request}")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        ensure!(!line.is_empty(), "the CTranslate2 peer exited (see its message above)");
        let reply: Value = serde_json::from_str(&line).context("the peer's answer")?;
        if let Some(error) = reply.get("error") {
            bail!("CTranslate2 peer: {error}");
        }
        Ok(reply)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A batching: its name, its (max sentences, max tokens) limits and the sentences it decodes.
type Batching = (String, (Option<usize>, Option<usize>), usize);

/// One timed run: seconds and, per sentence, the best hypothesis' tokens (EOS excluded).
struct Timed {
    secs: f64,
    best: Vec<Vec<u32>>,
}

/// An engine configuration of one row.
#[derive(Clone, Debug)]
enum Engine {
    Seqforge { int8: bool },
    Ct2 { int8: bool, intra: usize, inter: usize },
}

impl Engine {
    fn label(&self) -> String {
        match self {
            Engine::Seqforge { int8 } => {
                format!("seqforge {}", if *int8 { "int8" } else { "fp32" })
            }
            Engine::Ct2 { int8, intra, inter } => format!(
                "ct2 {} (intra {intra}, inter {inter})",
                if *int8 { "int8" } else { "fp32" }
            ),
        }
    }
}

/// The median (the mean of the middle two for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn loadavg() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// seqforge's side: decoders (one per worker, one intra-op thread each) over one model.
struct Ours {
    model: Arc<ModelDir>,
    decoders: Vec<OnnxDecoder>,
}

impl Ours {
    fn open(dir: &Path, threads: usize) -> Result<Self> {
        let options = RuntimeOptions { threads: 1, ..RuntimeOptions::default() };
        let model = Arc::new(ModelDir::open(dir, &options)?);
        let decoders =
            (0..threads).map(|_| OnnxDecoder::new(Arc::clone(&model))).collect::<Result<_, _>>()?;
        Ok(Self { model, decoders })
    }

    fn run(
        &mut self,
        sources: &[SourceLine],
        limits: (Option<usize>, Option<usize>),
        options: &GenerationOptions,
        warmup: usize,
    ) -> Result<Timed> {
        for decoder in &mut self.decoders {
            let w: Vec<Vec<u32>> = sources.iter().take(warmup).map(|s| s.ids.clone()).collect();
            generate(decoder, &w, options)?;
        }
        let refs: Vec<&SourceLine> = sources.iter().collect();
        let workers = self.decoders.len();
        let model = Arc::clone(&self.model);
        let start = Instant::now();
        let hyps = translate_sources_on(
            &mut self.decoders,
            workers,
            &move || OnnxDecoder::new(Arc::clone(&model)),
            &refs,
            None,
            seqforge_runtime::pool::Inputs::Sources,
            options,
            limits,
            |_| {},
        )?;
        let secs = start.elapsed().as_secs_f64();
        Ok(Timed { secs, best: hyps.iter().map(|h| best_tokens(h)).collect() })
    }
}

fn best_tokens(hyps: &[Hypothesis]) -> Vec<u32> {
    let mut t = hyps.first().map(|h| h.tokens.clone()).unwrap_or_default();
    if !t.is_empty() {
        t.pop(); // EOS
    }
    t
}

/// The CTranslate2 run of the same batches.
fn run_ct2(
    peer: &mut Peer,
    sources: &[SourceLine],
    batches: &[Vec<usize>],
    engine: &Engine,
    options: (&GenerationOptions, usize),
) -> Result<Timed> {
    let Engine::Ct2 { int8, intra, inter } = engine else { bail!("not a CTranslate2 engine") };
    let (options, warmup) = options;
    peer.ask(&json!({
        "cmd": "load",
        "compute_type": if *int8 { "int8" } else { "float32" },
        "intra_threads": intra,
        "inter_threads": inter,
    }))?;
    let strip = |s: &SourceLine| s.ids[..s.ids.len().saturating_sub(1)].to_vec();
    let batch_ids: Vec<Vec<Vec<u32>>> =
        batches.iter().map(|b| b.iter().map(|&i| strip(&sources[i])).collect()).collect();
    let warm: Vec<Vec<u32>> = sources.iter().take(warmup).map(strip).collect();
    let reply = peer.ask(&json!({
        "cmd": "translate",
        "batches": batch_ids,
        "warmup": warm,
        "beam": options.beam,
        "min_len": options.min_len,
        "max_len": options.max_len_b,
    }))?;
    let secs = reply["secs"].as_f64().context("secs")?;
    let mut best = vec![Vec::new(); sources.len()];
    let answered = reply["hypotheses"].as_array().context("hypotheses")?;
    for (batch, hyps) in batches.iter().zip(answered) {
        for (&i, h) in batch.iter().zip(hyps.as_array().context("batch")?) {
            best[i] = h["tokens"]
                .as_array()
                .context("tokens")?
                .iter()
                .map(|t| t.as_u64().map(|t| t as u32).context("token id"))
                .collect::<Result<_>>()?;
        }
    }
    Ok(Timed { secs, best })
}

/// Share of sentences with the same best tokens.
fn agreement(a: &[Vec<u32>], b: &[Vec<u32>]) -> f64 {
    let same = a.iter().zip(b).filter(|(x, y)| x == y).count();
    100.0 * same as f64 / a.len().max(1) as f64
}

fn sources(cli: &Cli, model: &ModelDir) -> Result<Vec<SourceLine>> {
    let manifest = model.manifest();
    let lang = |l: &Option<String>, side: &str| {
        l.clone().with_context(|| format!("the model's manifest has no {side} language"))
    };
    let (src, tgt) =
        (lang(&manifest.source_lang, "source")?, lang(&manifest.target_lang, "target")?);
    let prefix = split_prefix(&cli.data, "test", &src, &tgt, &src);
    let data = IndexedDataset::open(&prefix)?;
    let max = model.contract().max_source_positions;
    let eos = model.contract().special.eos;
    let n = cli.sentences.max(cli.batch1_sentences).min(data.len());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut ids = data.get(i).context("sentence index")??;
        if ids.len() > max {
            ids.truncate(max - 1);
            ids.push(eos);
        }
        out.push(SourceLine { ids, truncated: false, unknown: 0 });
    }
    Ok(out)
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    ensure!(cli.rounds > 0 && cli.beam > 0 && !cli.threads.is_empty(), "counts must be positive");
    let tmp = tempfile::tempdir()?;
    let work = cli.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;

    let mut dirs: Vec<(bool, PathBuf)> = vec![(false, work.join("seqforge-fp32"))];
    if !cli.no_int8 {
        dirs.push((true, work.join("seqforge-int8")));
    }
    for (int8, dir) in &dirs {
        let start = Instant::now();
        let dtype = if *int8 { Dtype::Int8 } else { Dtype::Fp32 };
        let mut options = ExportOptions::new(&cli.checkpoint, &cli.data, dir).with_dtype(dtype);
        options.force = true;
        export(&options)
            .with_context(|| format!("exporting {} as {dtype:?}", cli.checkpoint.display()))?;
        println!("exported {} in {:.1} s", dir.display(), start.elapsed().as_secs_f64());
    }
    let ct2_dir = work.join("ctranslate2");
    let start = Instant::now();
    let status = Command::new(&cli.python)
        .arg(&cli.peer)
        .args(["convert", "--checkpoint"])
        .arg(&cli.checkpoint)
        .arg("--data")
        .arg(&cli.data)
        .arg("--out")
        .arg(&ct2_dir)
        .status()
        .with_context(|| format!("starting {}", cli.python))?;
    ensure!(status.success(), "converting to CTranslate2 failed ({status})");
    println!("converted to CTranslate2 in {:.1} s", start.elapsed().as_secs_f64());
    let mut peer = Peer::start(&cli, &ct2_dir)?;

    let probe = ModelDir::open(&dirs[0].1, &RuntimeOptions { threads: 1, ..Default::default() })?;
    let c = probe.contract().clone();
    let sources = sources(&cli, &probe)?;
    drop(probe);
    let mut options = GenerationOptions { beam: cli.beam, ..GenerationOptions::default() };
    if let Some(len) = cli.force_len {
        options = options.with_forced_length(len);
    }
    options.validate()?;
    println!(
        "vs_ctranslate2: {} ({}, vocab {}), {} test sentences, beam {}, lengths {}, {} rounds, \
         load average {}",
        cli.name,
        c.arch,
        c.tgt_vocab_size,
        sources.len(),
        cli.beam,
        cli.force_len.map_or("fairseq's (≤ 200)".to_string(), |n| format!("forced to {n}")),
        cli.rounds,
        loadavg()
    );

    let mut batchings: Vec<Batching> = vec![(
        format!("max-tokens {}", cli.max_tokens),
        (None, Some(cli.max_tokens)),
        cli.sentences,
    )];
    if cli.batch1_sentences > 0 {
        batchings.push(("batch 1".into(), (Some(1), None), cli.batch1_sentences));
    }
    let mut rows: Vec<Value> = Vec::new();
    for &threads in &cli.threads {
        let mut ours: BTreeMap<bool, Ours> = BTreeMap::new();
        for (int8, dir) in &dirs {
            ours.insert(*int8, Ours::open(dir, threads)?);
        }
        for (batching, limits, count) in &batchings {
            let sources = &sources[..(*count).min(sources.len())];
            let lengths: Vec<usize> = sources.iter().map(|s| s.ids.len()).collect();
            let batches = make_batches(&lengths, limits.0, limits.1);
            let mut engines: Vec<Engine> = Vec::new();
            for int8 in [false, true] {
                if ours.contains_key(&int8) {
                    engines.push(Engine::Seqforge { int8 });
                }
                // Every intra × inter layout of the threads; at batch 1 only inter_threads, as
                // intra_threads 2 ran 20× slower than 1 there (115 s vs 5.3 s for 300 sentences).
                for intra in (1..=threads).filter(|i| threads % i == 0).rev() {
                    if limits.0 == Some(1) && intra > 1 {
                        continue;
                    }
                    engines.push(Engine::Ct2 { int8, intra, inter: threads / intra });
                }
            }
            let mut secs: Vec<Vec<f64>> = vec![Vec::new(); engines.len()];
            let mut best: Vec<Vec<Vec<u32>>> = vec![Vec::new(); engines.len()];
            for round in 0..cli.rounds {
                for (k, engine) in engines.iter().enumerate() {
                    let timed = match engine {
                        Engine::Seqforge { int8 } => {
                            let o = ours.get_mut(int8).context("seqforge engine")?;
                            o.run(sources, *limits, &options, cli.warmup)?
                        }
                        Engine::Ct2 { .. } => {
                            run_ct2(&mut peer, sources, &batches, engine, (&options, cli.warmup))?
                        }
                    };
                    println!(
                        "  {threads} threads, {batching}, round {}: {:<32} {:>7.2} s {:>8.2} sentences/s",
                        round + 1,
                        engine.label(),
                        timed.secs,
                        sources.len() as f64 / timed.secs
                    );
                    secs[k].push(timed.secs);
                    best[k] = timed.best;
                }
            }
            let rate = |k: usize| sources.len() as f64 / median(secs[k].clone());
            let spread = |k: usize| {
                let r: Vec<f64> = secs[k].iter().map(|s| sources.len() as f64 / s).collect();
                (
                    r.iter().copied().fold(f64::INFINITY, f64::min),
                    r.iter().copied().fold(0.0, f64::max),
                )
            };
            let pick = |int8: bool, ct2: bool| -> Option<usize> {
                let candidates = engines.iter().enumerate().filter(|(_, e)| match e {
                    Engine::Seqforge { int8: i } => !ct2 && *i == int8,
                    Engine::Ct2 { int8: i, .. } => ct2 && *i == int8,
                });
                candidates.map(|(k, _)| k).max_by(|&a, &b| rate(a).total_cmp(&rate(b)))
            };
            let mut row = json!({
                "model": cli.name, "threads": threads, "batching": batching,
                "sentences": sources.len(), "batches": batches.len(),
            });
            for (int8, tag) in [(false, "fp32"), (true, "int8")] {
                let (Some(ct2), ours_k) = (pick(int8, true), pick(int8, false)) else { continue };
                row[format!("ct2_{tag}")] = json!({
                    "engine": engines[ct2].label(), "sentences_per_s": rate(ct2),
                    "min": spread(ct2).0, "max": spread(ct2).1,
                });
                if let Some(o) = ours_k {
                    row[format!("seqforge_{tag}")] = json!({
                        "sentences_per_s": rate(o), "min": spread(o).0, "max": spread(o).1,
                    });
                    row[format!("ratio_{tag}")] = json!(rate(o) / rate(ct2));
                    row[format!("identical_{tag}_pct")] = json!(agreement(&best[o], &best[ct2]));
                }
            }
            if let (Some(a), Some(b)) = (pick(false, false), pick(true, false)) {
                row["seqforge_int8_vs_fp32_identical_pct"] = json!(agreement(&best[a], &best[b]));
            }
            rows.push(row);
        }
    }

    let cell = |v: &Value| -> String {
        match v.get("sentences_per_s").and_then(Value::as_f64) {
            Some(r) => format!(
                "{r:.1} ({:.1}–{:.1})",
                v["min"].as_f64().unwrap_or(f64::NAN),
                v["max"].as_f64().unwrap_or(f64::NAN)
            ),
            None => "—".into(),
        }
    };
    let num = |v: &Value, digits: usize| -> String {
        v.as_f64().map_or("—".into(), |x| format!("{x:.digits$}"))
    };
    println!();
    println!(
        "| model, batching | threads | seqforge fp32 | CT2 fp32 | ratio | same hyps | seqforge int8 | CT2 int8 | ratio | same hyps |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {}, {} ({} sentences) | {} | {} | {} | {}× | {}% | {} | {} | {}× | {}% |",
            r["model"].as_str().unwrap_or_default(),
            r["batching"].as_str().unwrap_or_default(),
            r["sentences"],
            r["threads"],
            cell(&r["seqforge_fp32"]),
            cell(&r["ct2_fp32"]),
            num(&r["ratio_fp32"], 2),
            num(&r["identical_fp32_pct"], 1),
            cell(&r["seqforge_int8"]),
            cell(&r["ct2_int8"]),
            num(&r["ratio_int8"], 2),
            num(&r["identical_int8_pct"], 1),
        );
    }
    println!("CT2 columns: its best thread layout (intra × inter) of each row; the runs show all.");
    println!("load average at the end: {}", loadavg());
    println!(
        "{}",
        json!({
            "bench": "vs_ctranslate2", "model": cli.name, "checkpoint": cli.checkpoint.display().to_string(),
            "arch": c.arch, "beam": cli.beam, "force_len": cli.force_len, "rounds": cli.rounds,
            "max_tokens": cli.max_tokens, "rows": rows, "loadavg_end": loadavg(),
        })
    );
    Ok(())
}
