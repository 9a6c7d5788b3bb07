//! A `seqforge serve` under test: a synthetic model, sample texts, a minimal HTTP/1.1 client
//! and the server process (used by `serve_load` and `serve_soak`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use seqforge_exporter::testing::{SyntheticCheckpoint, write_byte_level_data};
use seqforge_exporter::{ExportOptions, export};

/// Exports the synthetic model into `root/model`.
pub fn synthetic_model(root: &Path) -> Result<PathBuf> {
    let (ckpt, data, model) = (root.join("checkpoint"), root.join("data"), root.join("model"));
    let n = write_byte_level_data(&data, "es", "en")?;
    SyntheticCheckpoint {
        embed_dim: 128,
        ffn_dim: 512,
        layers: 3,
        heads: 4,
        max_positions: 256,
        source_lang: "es".into(),
        target_lang: "en".into(),
        ..SyntheticCheckpoint::tiny(n, n)
    }
    .write(&ckpt, &data)?;
    export(&ExportOptions::new(&ckpt, &data, &model))?;
    Ok(model)
}

/// 500 Spanish-like sentences of 3 to 12 words (a fixed pseudo-random sequence).
pub fn generated_texts() -> Vec<String> {
    const WORDS: [&str; 24] = [
        "el", "la", "de", "y", "en", "Dios", "tierra", "cielos", "luz", "dijo", "sobre", "hijos",
        "pueblo", "casa", "rey", "palabra", "camino", "agua", "día", "noche", "todos", "grande",
        "mano", "corazón",
    ];
    let mut state: u64 = 0x5eed;
    let mut next = |m: usize| {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 33) % m as u64) as usize
    };
    (0..500)
        .map(|_| {
            let words = 3 + next(10);
            let mut s: Vec<&str> = (0..words).map(|_| WORDS[next(WORDS.len())]).collect();
            s.push(".");
            s.join(" ")
        })
        .collect()
}

/// One HTTP/1.1 exchange on a new connection: (status, body).
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok((status, rest.to_string()))
}

/// A running server, killed when dropped.
pub struct Server {
    /// The server process.
    pub child: Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl Server {
    /// Starts `binary serve model --port 0 --threads T --workers W extra…` and waits for its
    /// `listening on` line.
    pub fn start(
        binary: &Path,
        model: &Path,
        threads: usize,
        workers: usize,
        extra: &[&str],
    ) -> Result<Self> {
        let mut child = Command::new(binary)
            .arg("serve")
            .arg(model)
            .args([
                "--port",
                "0",
                "--threads",
                &threads.to_string(),
                "--workers",
                &workers.to_string(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        match line.trim().strip_prefix("listening on ") {
            Some(addr) => Ok(Self { addr: addr.to_string(), child }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} serve did not start: {line:?}", binary.display())
            }
        }
    }

    /// A metric's value from /metrics (0 when absent).
    pub fn metric(&self, series: &str) -> Result<f64> {
        let (_, body) = http(&self.addr, "GET", "/metrics", "")?;
        Ok(body
            .lines()
            .find(|l| l.split(' ').next() == Some(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
