//! `serve_soak`: `seqforge serve` under a bounded mixed loopback load for a fixed time.
//!
//! `serve_soak [MODEL_DIR] [--seqforge PATH] [--seconds 600] [--idle-timeout-ms 2000]`
//! starts `seqforge serve` (`--port 0`, a small queue, `--idle-timeout-ms`) on MODEL_DIR or a
//! synthetic demo-sized model, records each sample text's translation alone, then runs at once
//! until `--seconds` have passed:
//!
//! - **valid** clients (`--valid-clients`): 1–3 texts per request, back to back; every 200 must
//!   equal the texts' translations alone (hypotheses, tokens and scores), 503 (queue full) is
//!   counted, anything else is a failure;
//! - a **malformed** client: bad JSON, wrong types, unknown fields, invalid options, invalid
//!   UTF-8, a wrong route, raw bytes that are not HTTP; each must get its 4xx (or, for the raw
//!   bytes, a 400 or a closed connection), never a 5xx;
//! - an **oversized** client: too many texts, too long a text, a body announced at 1 GB; each
//!   must get 413 at once;
//! - a **slow** client: keeps opening connections that send nothing, that dribble a header byte
//!   every 300 ms (slowloris), and kept-alive ones idle after a request; the server must close
//!   each within `--idle-timeout-ms` (plus 1.5 s of slack) of its last complete request;
//! - a **disconnecting** client: sends half a body and hangs up, or a whole request and hangs
//!   up without reading the answer.
//!
//! Meanwhile it samples the server's resident memory (VmRSS) and open connections every
//! `--sample-seconds`. At the end the server must still answer `/healthz`, hold no client
//! connection beyond the one asking `/metrics` once the idle timeout has passed, and its RSS
//! must be flat: the median of the last quarter of samples at most 20% + 16 MiB above the
//! median of the first quarter after a warm-up tenth. It prints the RSS curve, one line per
//! client kind and a JSON line, and fails on any violation.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::{Value, json};

use seqforge_benches::serving::{Server, generated_texts, http, synthetic_model};

#[derive(Parser, Debug)]
#[command(about = "Soak of seqforge serve: mixed valid, malformed, oversized, slow and \
                   disconnecting clients; answers, idle timeouts and RSS checked")]
struct Args {
    /// An exported translation model directory (with tokenizer.json); default: a synthetic
    /// demo-sized model.
    model_dir: Option<PathBuf>,
    /// The seqforge binary (default: `seqforge` next to this program).
    #[arg(long)]
    seqforge: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, default_value_t = 600.0)]
    seconds: f64,
    /// The server's --idle-timeout-ms.
    #[arg(long, default_value_t = 2000)]
    idle_timeout_ms: u64,
    /// Clients sending valid requests.
    #[arg(long, default_value_t = 4)]
    valid_clients: usize,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10.0)]
    sample_seconds: f64,
    /// Also write the JSON line here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// What one client kind saw.
#[derive(Debug, Default)]
struct Tally {
    /// Requests (or connections, for the slow client) made.
    sent: u64,
    /// Answered as required.
    ok: u64,
    /// 503 refusals (valid clients only).
    refused: u64,
    /// Violations, with a description of the first few.
    failures: u64,
    examples: Vec<String>,
    /// Slow client: seconds from the last complete request (or the connect) to the close.
    close_after_s: Vec<f64>,
}

impl Tally {
    fn fail(&mut self, what: String) {
        self.failures += 1;
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }
}

type Shared = Arc<Mutex<Tally>>;

fn tally() -> Shared {
    Arc::new(Mutex::new(Tally::default()))
}

fn with<T>(t: &Shared, f: impl FnOnce(&mut Tally) -> T) -> T {
    f(&mut t.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Sends `raw` on a new connection and reads to the end: the status, when an HTTP answer came.
fn raw_exchange(addr: &str, raw: &[u8], close_write: bool) -> Result<Option<u16>> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(raw)?;
    if close_write {
        stream.shutdown(std::net::Shutdown::Write)?;
    }
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => {}
        // A reset after the answer (or instead of one) is the server hanging up.
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => return Err(e.into()),
    }
    let text = String::from_utf8_lossy(&answer);
    Ok(text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)).and_then(|s| s.parse().ok()))
}

fn post(addr: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

/// The translations of a 200 body, one JSON value per text.
fn translations(body: &str) -> Result<Vec<Value>> {
    let v: Value = serde_json::from_str(body)?;
    v["translations"].as_array().cloned().context("no translations array")
}

/// A tiny xorshift generator per client.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn valid_client(
    addr: &str,
    texts: &[String],
    expected: &HashMap<String, Value>,
    seed: u64,
    stop: &AtomicBool,
    t: &Shared,
) {
    let mut rng = Rng(seed);
    while !stop.load(Ordering::Relaxed) {
        let n = 1 + rng.below(3);
        let chosen: Vec<&String> = (0..n).map(|_| &texts[rng.below(texts.len())]).collect();
        let body = json!({ "texts": chosen }).to_string();
        with(t, |t| t.sent += 1);
        match http(addr, "POST", "/v1/translate", &body) {
            Ok((200, answer)) => match translations(&answer) {
                Ok(got)
                    if got.len() == n
                        && chosen.iter().zip(&got).all(|(s, g)| expected[*s] == *g) =>
                {
                    with(t, |t| t.ok += 1)
                }
                _ => with(t, |t| t.fail(format!("a wrong answer to {body}: {answer}"))),
            },
            Ok((503, _)) => with(t, |t| t.refused += 1),
            Ok((status, answer)) => with(t, |t| t.fail(format!("{status} to {body}: {answer}"))),
            Err(e) => with(t, |t| t.fail(format!("{body}: {e:#}"))),
        }
    }
}

fn malformed_client(addr: &str, stop: &AtomicBool, t: &Shared) {
    let long_text = "a".repeat(60);
    let cases: Vec<(Vec<u8>, &[u16])> = vec![
        (post(addr, "/v1/translate", br#"{"texts": "hola"}"#), &[400]),
        (post(addr, "/v1/translate", br#"{"texts": [1, 2]}"#), &[400]),
        (post(addr, "/v1/translate", br#"{"texts": ["hola"], "extra": 1}"#), &[400]),
        (post(addr, "/v1/translate", br#"{"texts": ["hola"], "options": {"beam": 0}}"#), &[400]),
        (post(addr, "/v1/translate", br#"{"texts": ["hola"], "options": {"nope": 1}}"#), &[400]),
        (post(addr, "/v1/translate", b"not json at all"), &[400]),
        (post(addr, "/v1/translate", br#"{"texts": ["ho"#), &[400]),
        (post(addr, "/v1/translate", b"{\"texts\": [\"ca\xff\xfee\"]}"), &[400]),
        (post(addr, "/v1/translate", br#"{"prompts": ["hola"]}"#), &[400]),
        (post(addr, "/v1/complete", br#"{"prompts": ["hola"]}"#), &[400]),
        (post(addr, "/nope", b"{}"), &[404]),
        (format!("GET /v1/translate?{long_text} HTTP/1.1\r\nHost: x\r\n\r\n").into_bytes(), &[405]),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage not http\r\n\r\n".to_vec(),
            &[400, 0],
        ),
        (b"POST /v1/translate HTTP/1.1\r\nContent-Length: nope\r\n\r\n{}".to_vec(), &[400, 0]),
    ];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let (raw, allowed) = &cases[i % cases.len()];
        i += 1;
        with(t, |t| t.sent += 1);
        match raw_exchange(addr, raw, false) {
            Ok(status) if allowed.contains(&status.unwrap_or(0)) => with(t, |t| t.ok += 1),
            Ok(status) => with(t, |t| {
                t.fail(format!(
                    "case {}: {status:?}, expected {allowed:?}: {:?}",
                    (i - 1) % cases.len(),
                    String::from_utf8_lossy(&raw[..raw.len().min(80)])
                ))
            }),
            Err(e) => with(t, |t| t.fail(format!("case {}: {e:#}", (i - 1) % cases.len()))),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn oversized_client(addr: &str, stop: &AtomicBool, t: &Shared) {
    let many = json!({ "texts": vec!["hola"; 65] }).to_string().into_bytes();
    let long = json!({ "texts": ["a ".repeat(1500)] }).to_string().into_bytes();
    let mut huge = format!(
        "POST /v1/translate HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000000\r\n\r\n"
    )
    .into_bytes();
    huge.extend_from_slice(&[b'{'; 4096]);
    let cases = [post(addr, "/v1/translate", &many), post(addr, "/v1/translate", &long), huge];
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let raw = &cases[i % cases.len()];
        i += 1;
        with(t, |t| t.sent += 1);
        let start = Instant::now();
        match raw_exchange(addr, raw, false) {
            Ok(Some(413)) if start.elapsed() < Duration::from_secs(5) => with(t, |t| t.ok += 1),
            other => with(t, |t| {
                t.fail(format!(
                    "oversized case {}: {other:?} after {:.1}s",
                    (i - 1) % cases.len(),
                    start.elapsed().as_secs_f64()
                ))
            }),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One slow connection being watched.
struct Slow {
    stream: TcpStream,
    /// From when the server's idle timer runs (connect, or the end of the last answer).
    since: Instant,
    /// Dribbles a header byte every 300 ms.
    dribble: Option<(Vec<u8>, usize, Instant)>,
}

/// Reads an answer with a Content-Length to its end (a kept-alive exchange).
fn read_answer(stream: &mut TcpStream) -> Result<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf)?;
        ensure!(n > 0, "closed before the answer ended");
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .context("no content-length")?;
            if body.len() >= length {
                return head.get(9..12).and_then(|s| s.parse().ok()).context("bad status line");
            }
        }
    }
}

fn slow_client(addr: &str, idle: Duration, stop: &AtomicBool, t: &Shared) {
    let slack = Duration::from_millis(1500);
    let mut open: Vec<Slow> = Vec::new();
    let mut next_batch = Instant::now();
    let mut kind = 0usize;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if !stopping && Instant::now() >= next_batch && open.len() < 60 {
            next_batch = Instant::now() + Duration::from_millis(500);
            kind += 1;
            let made = (|| -> Result<Slow> {
                let mut stream = TcpStream::connect(addr)?;
                let mut since = Instant::now();
                let mut dribble = None;
                match kind % 3 {
                    0 => {} // sends nothing
                    1 => {
                        let head = b"POST /v1/translate HTTP/1.1\r\nHost: slow\r\nX-Pad: ".to_vec();
                        dribble = Some((head, 0, Instant::now()));
                    }
                    _ => {
                        write!(stream, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
                        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                        let status = read_answer(&mut stream)?;
                        ensure!(status == 200, "kept-alive /healthz answered {status}");
                        since = Instant::now();
                    }
                }
                stream.set_nonblocking(true)?;
                Ok(Slow { stream, since, dribble })
            })();
            with(t, |t| t.sent += 1);
            match made {
                Ok(s) => open.push(s),
                Err(e) => with(t, |t| t.fail(format!("opening a slow connection: {e:#}"))),
            }
        }
        let mut still = Vec::with_capacity(open.len());
        for mut s in open.drain(..) {
            if let Some((head, sent, last)) = &mut s.dribble
                && last.elapsed() >= Duration::from_millis(300)
            {
                let byte = if *sent < head.len() { head[*sent] } else { b'x' };
                // A failed write means the server closed it: the read below tells.
                let _ = s.stream.write(&[byte]);
                *sent += 1;
                *last = Instant::now();
            }
            let mut buf = [0u8; 1024];
            let closed = match s.stream.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false, // a 408/400 answer before the close
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let after = s.since.elapsed();
            if closed {
                with(t, |t| {
                    t.close_after_s.push(after.as_secs_f64());
                    if after + Duration::from_millis(50) < idle {
                        t.fail(format!("closed after {after:?}, before the idle timeout"));
                    } else if after > idle + slack {
                        t.fail(format!("closed only after {after:?}"));
                    } else {
                        t.ok += 1;
                    }
                });
            } else if after > idle * 3 + slack {
                with(t, |t| t.fail(format!("still open after {after:?}")));
            } else {
                still.push(s);
            }
        }
        open = still;
        if stopping && open.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn disconnecting_client(addr: &str, texts: &[String], stop: &AtomicBool, t: &Shared) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let body = json!({ "texts": [texts[i % texts.len()]] }).to_string().into_bytes();
        let raw = post(addr, "/v1/translate", &body);
        with(t, |t| t.sent += 1);
        let result = (|| -> Result<()> {
            let mut stream = TcpStream::connect(addr)?;
            if i.is_multiple_of(2) {
                // Headers and half the body, then hang up.
                let cut = raw.len() - body.len() / 2;
                stream.write_all(&raw[..cut])?;
            } else {
                // The whole request, then hang up without reading the answer.
                stream.write_all(&raw)?;
            }
            drop(stream);
            Ok(())
        })();
        match result {
            Ok(()) => with(t, |t| t.ok += 1),
            Err(e) => with(t, |t| t.fail(format!("{e:#}"))),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn median(v: &[u64]) -> u64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() -> std::process::ExitCode {
    seqforge_cli_support::finish(run())
}

fn run() -> Result<()> {
    let args = Args::parse();
    ensure!(args.seconds > 0.0 && args.sample_seconds > 0.0, "--seconds must be positive");
    let tmp = tempfile::tempdir()?;
    let model = match &args.model_dir {
        Some(m) => m.clone(),
        None => synthetic_model(tmp.path())?,
    };
    let binary = match &args.seqforge {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("seqforge"),
    };
    ensure!(
        binary.is_file(),
        "{} not found: build it first (cargo build --release -p seqforge-runtime --bin seqforge) \
         or give --seqforge",
        binary.display()
    );
    let idle = Duration::from_millis(args.idle_timeout_ms);
    let server = Server::start(
        &binary,
        &model,
        1,
        1,
        &[
            "--max-queue",
            "64",
            "--request-timeout-ms",
            "20000",
            "--idle-timeout-ms",
            &args.idle_timeout_ms.to_string(),
        ],
    )?;
    let addr = server.addr.clone();

    // Each sample text alone: what every valid answer must equal.
    let texts: Vec<String> = generated_texts().into_iter().take(40).collect();
    let mut expected = HashMap::new();
    for text in &texts {
        let (status, body) =
            http(&addr, "POST", "/v1/translate", &json!({ "texts": [text] }).to_string())?;
        ensure!(status == 200, "translating {text:?} alone: {status} {body}");
        let mut got = translations(&body)?;
        expected.insert(text.clone(), got.pop().context("no translation")?);
    }
    println!(
        "serve soak: {} for {:.0}s, idle timeout {} ms, {} valid clients, model {}",
        binary.display(),
        args.seconds,
        args.idle_timeout_ms,
        args.valid_clients,
        model.display()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (valid, malformed, oversized, slow, disconnecting) =
        (tally(), tally(), tally(), tally(), tally());
    let samples: Arc<Mutex<Vec<(f64, u64, f64)>>> = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        for c in 0..args.valid_clients {
            let (addr, texts, expected, stop, t) = (&addr, &texts, &expected, &stop, &valid);
            scope.spawn(move || valid_client(addr, texts, expected, 0x9e37 + c as u64, stop, t));
        }
        scope.spawn(|| malformed_client(&addr, &stop, &malformed));
        scope.spawn(|| oversized_client(&addr, &stop, &oversized));
        scope.spawn(|| slow_client(&addr, idle, &stop, &slow));
        scope.spawn(|| disconnecting_client(&addr, &texts, &stop, &disconnecting));
        let every = Duration::from_secs_f64(args.sample_seconds);
        let mut next = start;
        let outcome = (|| -> Result<()> {
            while start.elapsed().as_secs_f64() < args.seconds {
                if Instant::now() >= next {
                    next += every;
                    let rss = server.rss_kib().context("the server is gone")?;
                    let conns = server.metric("seqforge_open_connections").unwrap_or(f64::NAN);
                    let s = start.elapsed().as_secs_f64();
                    with_samples(&samples, |v| v.push((s, rss, conns)));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        outcome
    })?;
    let load_s = start.elapsed().as_secs_f64();

    // After the load: still alive, and every client connection closed by the idle timeout.
    let mut server = server;
    if let Some(status) = server.child.try_wait()? {
        bail!("the server exited during the soak: {status}");
    }
    let (status, _) = http(&addr, "GET", "/healthz", "")?;
    ensure!(status == 200, "/healthz answered {status} after the soak");
    std::thread::sleep(idle + Duration::from_millis(1500));
    let left_open = server.metric("seqforge_open_connections")?;
    let accepted = server.metric("seqforge_connections_total")?;

    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    println!("RSS curve (s, MiB, open connections):");
    for (s, rss, conns) in &samples {
        println!("  {s:>7.1}  {:>7.1}  {conns:>4}", *rss as f64 / 1024.0);
    }
    let rss: Vec<u64> = samples.iter().map(|s| s.1).collect();
    let warm = rss.len() / 10;
    let quarter = ((rss.len() - warm) / 4).max(1);
    let first = median(&rss[warm..(warm + quarter).min(rss.len())]);
    let last = median(&rss[rss.len().saturating_sub(quarter)..]);
    let flat = (last as f64) <= first as f64 * 1.2 + 16.0 * 1024.0;
    let peak = rss.iter().copied().max().unwrap_or(0);

    let mut failures = Vec::new();
    let mut report = serde_json::Map::new();
    for (name, t) in [
        ("valid", &valid),
        ("malformed", &malformed),
        ("oversized", &oversized),
        ("slow", &slow),
        ("disconnecting", &disconnecting),
    ] {
        let t = t.lock().unwrap_or_else(|p| p.into_inner());
        let mut closes = t.close_after_s.clone();
        closes.sort_by(f64::total_cmp);
        let close_note = if closes.is_empty() {
            String::new()
        } else {
            format!(
                ", closed after median {:.2}s / max {:.2}s",
                closes[closes.len() / 2],
                closes[closes.len() - 1]
            )
        };
        println!(
            "{name:>13}: {} sent, {} as required, {} refused (503), {} failures{close_note}",
            t.sent, t.ok, t.refused, t.failures
        );
        for e in &t.examples {
            println!("               e.g. {e}");
        }
        if t.failures > 0 || t.ok == 0 {
            failures.push(format!("{name}: {} failures, {} as required", t.failures, t.ok));
        }
        report.insert(
            name.into(),
            json!({ "sent": t.sent, "ok": t.ok, "refused": t.refused, "failures": t.failures,
                    "close_after_s_max": closes.last() }),
        );
    }
    println!(
        "RSS: first quarter median {:.1} MiB, last quarter {:.1} MiB, peak {:.1} MiB ({}); \
         {accepted} connections accepted, {left_open} open after the idle timeout",
        first as f64 / 1024.0,
        last as f64 / 1024.0,
        peak as f64 / 1024.0,
        if flat { "flat" } else { "GROWING" }
    );
    if !flat {
        failures.push("RSS grew".into());
    }
    // The /metrics request that reads the gauge is itself an open connection.
    if left_open > 1.0 {
        failures.push(format!("{left_open} connections still open after the idle timeout"));
    }
    report.insert("seconds".into(), json!(load_s));
    report.insert("idle_timeout_ms".into(), json!(args.idle_timeout_ms));
    report.insert("connections_accepted".into(), json!(accepted));
    report.insert("open_after_idle".into(), json!(left_open));
    report.insert(
        "rss_mib".into(),
        json!({ "first_quarter": first as f64 / 1024.0, "last_quarter": last as f64 / 1024.0,
                "peak": peak as f64 / 1024.0, "flat": flat,
                "curve": samples.iter().map(|s| [s.0, s.1 as f64 / 1024.0]).collect::<Vec<_>>() }),
    );
    report.insert("passed".into(), json!(failures.is_empty()));
    let line = Value::Object(report);
    println!("{line}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{line}\n"))?;
    }
    ensure!(failures.is_empty(), "the soak failed: {}", failures.join("; "));
    Ok(())
}

fn with_samples(s: &Mutex<Vec<(f64, u64, f64)>>, f: impl FnOnce(&mut Vec<(f64, u64, f64)>)) {
    f(&mut s.lock().unwrap_or_else(|p| p.into_inner()));
}
