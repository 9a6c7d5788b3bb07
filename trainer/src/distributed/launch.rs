//! The local launcher behind `--distributed-world-size N` (without RANK/WORLD_SIZE in the
//! environment): starts N copies of this program with torchrun's environment variables
//! (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, `MASTER_ADDR=127.0.0.1`, `MASTER_PORT`), prefixes each
//! worker's output lines with `[rank R]`, and waits. When a worker fails, the others are
//! stopped (SIGTERM, then SIGKILL after a grace period) and the launcher fails naming the first
//! rank that failed and its exit status — no rank is left waiting for a dead peer.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::{Error, Result};

/// How long stopped workers get to exit after SIGTERM before they are killed.
const GRACE: Duration = Duration::from_secs(5);

/// Copies `reader`'s lines to stdout or stderr with `prefix`.
fn pump(
    reader: impl Read + Send + 'static,
    prefix: String,
    to_stderr: bool,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let mut out: Vec<u8> = prefix.as_bytes().to_vec();
                    out.extend_from_slice(&line);
                    if !out.ends_with(b"\n") {
                        out.push(b'\n');
                    }
                    // Output errors (a closed pipe) only lose log lines.
                    let _ = if to_stderr {
                        std::io::stderr().lock().write_all(&out)
                    } else {
                        std::io::stdout().lock().write_all(&out)
                    };
                }
            }
        }
    })
}

/// A free TCP port on 127.0.0.1 (bound, then released for rank 0's store).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::Launch(format!("finding a free port on 127.0.0.1: {e}")))
}

fn terminate(child: &mut Child) {
    // SAFETY: kill(2) on our own child's pid.
    let pid = child.id() as i32;
    unsafe {
        libc_kill(pid, 15);
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Starts `world_size` workers running `program args…` and waits for all of them. `args` are
/// this process's arguments (the workers see the same flags; the environment makes each one a
/// rank). Returns when every worker exited successfully; otherwise stops the others and
/// returns an error naming the first failure.
pub fn spawn_workers(
    program: &std::path::Path,
    args: &[OsString],
    world_size: usize,
    port: Option<u16>,
) -> Result<()> {
    let port = match port {
        Some(p) => p,
        None => free_port()?,
    };
    tracing::info!(
        target: "seqforge::distributed",
        "starting {world_size} local workers (MASTER_ADDR=127.0.0.1 MASTER_PORT={port})"
    );
    let mut children: Vec<Option<Child>> = Vec::with_capacity(world_size);
    let mut pumps = Vec::new();
    for rank in 0..world_size {
        let spawned = Command::new(program)
            .args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", world_size.to_string())
            .env("LOCAL_WORLD_SIZE", world_size.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                for mut c in children.into_iter().flatten() {
                    terminate(&mut c);
                    let _ = c.wait();
                }
                return Err(Error::Launch(format!(
                    "starting worker {rank} ({}): {e}",
                    program.display()
                )));
            }
        };
        let prefix = format!("[rank {rank}] ");
        if let Some(out) = child.stdout.take() {
            pumps.push(pump(out, prefix.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(pump(err, prefix, true));
        }
        children.push(Some(child));
    }
    // Poll the children (try_wait) so a failure is noticed while the others still run.
    let mut first_failure: Option<(usize, String)> = None;
    let mut remaining = world_size;
    let mut stop_deadline: Option<Instant> = None;
    while remaining > 0 {
        let mut exited: Vec<(usize, std::io::Result<ExitStatus>)> = Vec::new();
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    exited.push((rank, Ok(status)));
                    *slot = None;
                }
                Err(e) => {
                    exited.push((rank, Err(e)));
                    *slot = None;
                }
            }
        }
        for (rank, status) in exited {
            remaining -= 1;
            let failed = match status {
                Ok(s) if s.success() => None,
                Ok(s) => Some(describe(s)),
                Err(e) => Some(format!("could not be waited for: {e}")),
            };
            if let Some(why) = failed
                && first_failure.is_none()
            {
                tracing::error!(
                    target: "seqforge::distributed",
                    "worker {rank} {why}; stopping the other workers"
                );
                first_failure = Some((rank, why));
                for c in children.iter_mut().flatten() {
                    terminate(c);
                }
                stop_deadline = Some(Instant::now() + GRACE);
            }
        }
        if let Some(deadline) = stop_deadline
            && Instant::now() > deadline
        {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
        }
        if remaining > 0 {
            thread::sleep(Duration::from_millis(50));
        }
    }
    for p in pumps {
        let _ = p.join();
    }
    match first_failure {
        None => Ok(()),
        Some((rank, why)) => Err(Error::Launch(format!(
            "worker {rank} of {world_size} {why}; the other workers were stopped"
        ))),
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended with {status}"),
    }
}
