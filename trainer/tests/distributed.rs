//! Data-parallel training on c10d/Gloo with real processes on 127.0.0.1 (two ranks on this
//! 2-core machine): the `seqforge-train` binary is started through its own launcher
//! (`--distributed-world-size 2`) or as two ranks with torchrun's environment variables.
//!
//! - 2 ranks end with identical weights, equal (bit for bit: same digest) to one process with
//!   `--update-freq 2` over the same batches — dropout, both DDP modes and fp16 included;
//! - a 2-rank run stopped and resumed from its checkpoint ends where an uninterrupted one does;
//! - killing one rank makes the other (and the launcher) fail with a clear message instead of
//!   hanging; a port in use, mismatched world sizes and an unavailable backend are errors
//!   that say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_seqforge-train");

fn data(dir: &Path) -> PathBuf {
    common::toy_data(dir, &common::REVERSAL)
}

/// The flags of every run: the tiny transformer with dropout, one libtorch thread per rank.
fn args(data: &Path, save: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "train",
        data.to_str().unwrap(),
        "--arch",
        "transformer_tiny",
        "--dropout",
        "0.1",
        "--optimizer",
        "adam",
        "--lr",
        "0.003",
        "--lr-scheduler",
        "inverse_sqrt",
        "--warmup-updates",
        "3",
        "--max-tokens",
        "120",
        "--seed",
        "7",
        "--cpu",
        "--threads",
        "1",
        "--no-progress-bar",
        "--log-interval",
        "1",
        "--save-dir",
        save.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// Runs the binary to completion (stdout, stderr).
fn run(args: &[String], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_remove("RANK").env_remove("WORLD_SIZE").env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The training summaries a run printed, by rank (`[rank R] {json}` from the launcher, or a
/// bare line from a single process).
fn summaries(stdout: &str) -> Vec<(usize, Value)> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        let (rank, json) = match line.strip_prefix("[rank ") {
            Some(rest) => {
                let (r, j) = rest.split_once("] ").unwrap();
                (r.parse().unwrap(), j)
            }
            None => (0, line),
        };
        if let Ok(v @ Value::Object(_)) = serde_json::from_str::<Value>(json) {
            out.push((rank, v));
        }
    }
    out.sort_by_key(|(r, _)| *r);
    out
}

fn digest(v: &Value) -> String {
    v["params_digest"].as_str().unwrap().to_string()
}

/// Trains with the launcher on 2 ranks and returns both summaries (asserting success).
fn two_ranks(data: &Path, save: &Path, extra: &[&str]) -> Vec<Value> {
    let mut a = args(data, save, extra);
    a.extend(["--distributed-world-size", "2", "--ddp-timeout", "60"].map(String::from));
    let o = run(&a, &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "2-rank run failed:\n{stderr}");
    assert!(stderr.contains("weights identical on all 2 ranks"), "{stderr}");
    let s = summaries(&stdout);
    assert_eq!(s.iter().map(|(r, _)| *r).collect::<Vec<_>>(), [0, 1], "{stdout}");
    for (r, v) in &s {
        assert_eq!(v["world_size"], 2);
        assert_eq!(v["rank"].as_u64(), Some(*r as u64));
    }
    s.into_iter().map(|(_, v)| v).collect()
}

fn one_process(data: &Path, save: &Path, extra: &[&str]) -> Value {
    let o = run(&args(data, save, extra), &[]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "single run failed:\n{stderr}");
    summaries(&stdout).pop().unwrap().1
}

#[test]
fn two_ranks_reproduce_one_process_with_update_freq_2() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    for (tag, flags) in [
        ("c10d", &["--max-update", "8"][..]),
        ("legacy_ddp", &["--max-update", "8", "--ddp-backend", "legacy_ddp"][..]),
        ("small buckets", &["--max-update", "8", "--bucket-cap-mb", "0.01"][..]),
        ("fp16", &["--max-update", "6", "--fp16"][..]),
    ] {
        let save1 = tmp.path().join(format!("single-{tag}"));
        let mut single_flags = flags.to_vec();
        single_flags.extend(["--update-freq", "2"]);
        // The DDP flags are ignored by a single process.
        let single = one_process(&data, &save1, &single_flags);
        let save2 = tmp.path().join(format!("ddp-{tag}"));
        let ranks = two_ranks(&data, &save2, flags);
        assert_eq!(digest(&ranks[0]), digest(&ranks[1]), "{tag}: ranks differ");
        // fp32: bit for bit. fp16: the gradients are divided by the world size in fp16 before
        // they are summed (as DDP does), which can round tiny (subnormal) values differently
        // from one process summing them: within fp16's resolution.
        let fp16 = tag == "fp16";
        let tolerance = if fp16 { 1e-5 } else { 1e-6 };
        if !fp16 {
            assert_eq!(
                digest(&ranks[0]),
                digest(&single),
                "{tag}: 2 ranks differ from one process with --update-freq 2"
            );
        }
        assert_eq!(ranks[0]["num_updates"], single["num_updates"]);
        assert_eq!(ranks[0]["words"], single["words"], "{tag}: words are summed over ranks");
        let loss = |v: &Value| v["epochs"][0]["train"]["loss"].as_f64().unwrap();
        assert!((loss(&ranks[0]) - loss(&single)).abs() < tolerance, "{tag}: logged loss");
        // Rank 0 alone wrote the checkpoint and the log; its weights are the single run's.
        let a = seqforge_trainer::checkpoint::load(save1.join("checkpoint_last")).unwrap();
        let b = seqforge_trainer::checkpoint::load(save2.join("checkpoint_last")).unwrap();
        assert_eq!(a.model.len(), b.model.len());
        let mut worst = 0f64;
        for (na, ta) in &a.model {
            let (_, tb) = b.model.iter().find(|(nb, _)| nb == na).unwrap();
            let diff = (ta - tb).abs().max().double_value(&[]);
            assert!(diff <= tolerance, "{tag}: {na} differs by {diff}");
            worst = worst.max(diff);
        }
        println!("{tag}: max |weight difference| 2 ranks vs 1 process = {worst:e}");
    }
}

#[test]
fn a_resumed_two_rank_run_matches_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let straight = two_ranks(&data, &tmp.path().join("straight"), &["--max-update", "8"]);
    let save = tmp.path().join("resumed");
    // 3 updates stop mid-epoch (5 updates per epoch on each rank's shard).
    let first = two_ranks(&data, &save, &["--max-update", "3"]);
    assert_eq!(first[0]["num_updates"], 3);
    let resumed = two_ranks(&data, &save, &["--max-update", "8"]);
    for r in &resumed {
        assert_eq!(r["start_num_updates"], 3, "each rank resumed from update 3");
        assert!(r["restored_from"].as_str().unwrap().ends_with("checkpoint_last"));
    }
    assert_eq!(digest(&resumed[0]), digest(&straight[0]), "resumed != uninterrupted");
}

/// Starts one rank with torchrun's variables; stderr lines arrive on the returned channel.
fn start_rank(
    a: &[String],
    rank: usize,
    world: usize,
    port: u16,
) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(BIN)
        .args(a)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line containing `needle` (the hang guard is generous: this is not a timing test).
fn wait_for_line(rx: &mpsc::Receiver<String>, needle: &str, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(needle);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// Waits for `child` to exit (None if it is still running after the guard).
fn wait_exit(child: &mut Child, guard: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + guard;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn killing_a_rank_fails_the_other_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let a =
        args(&data, &tmp.path().join("save"), &["--max-update", "1000000", "--ddp-timeout", "30"]);
    let port = free_port();
    let (mut r0, rx0) = start_rank(&a, 0, 2, port);
    let (mut r1, _rx1) = start_rank(&a, 1, 2, port);
    let mut seen = Vec::new();
    assert!(
        wait_for_line(&rx0, "num_updates=3", &mut seen),
        "training did not start:\n{}",
        seen.join("\n")
    );
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed_at = Instant::now();
    let status =
        wait_exit(&mut r0, Duration::from_secs(120)).expect("rank 0 hung after rank 1 died");
    let took = killed_at.elapsed();
    let rest: Vec<String> = rx0.try_iter().collect();
    let stderr = rest.join("\n");
    assert!(!status.success(), "rank 0 succeeded after its peer died");
    assert!(
        stderr.contains("failed on rank 0 of 2") && stderr.contains("another rank may have died"),
        "{stderr}"
    );
    println!(
        "rank 0 exited {status} {:.2} s after rank 1 was killed: {}",
        took.as_secs_f64(),
        stderr.lines().find(|l| l.contains("failed on rank")).unwrap_or("")
    );
}

/// Pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn the_launcher_stops_the_others_when_a_worker_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let mut a = args(&data, &tmp.path().join("save"), &["--max-update", "1000000"]);
    a.extend(["--distributed-world-size".to_string(), "2".to_string()]);
    let mut launcher = Command::new(BIN)
        .args(&a)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .env("RUST_BACKTRACE", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = launcher.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    assert!(wait_for_line(&rx, "num_updates=2", &mut seen), "{}", seen.join("\n"));
    let mut workers = children(launcher.id());
    workers.sort_unstable();
    assert_eq!(workers.len(), 2, "expected 2 workers, found {workers:?}");
    // The second worker started is rank 1.
    Command::new("kill").args(["-9", &workers[1].to_string()]).status().unwrap();
    let status = wait_exit(&mut launcher, Duration::from_secs(120)).expect("launcher hung");
    let stderr: Vec<String> = seen.into_iter().chain(rx.try_iter()).collect();
    let stderr = stderr.join("\n");
    assert!(!status.success());
    assert!(
        stderr.contains("worker 1 of 2 was killed by signal 9; the other workers were stopped")
            || stderr.contains("worker 0 of 2 exited with status"),
        "{stderr}"
    );
    assert!(children(launcher.id()).is_empty());
}

#[test]
fn port_in_use_mismatched_world_sizes_and_backend_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    let a = args(&data, &tmp.path().join("save"), &["--max-update", "2", "--ddp-timeout", "20"]);

    // Rank 0 cannot open its store on a port another program listens on.
    let busy = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let env = |rank: usize, world: usize, port: u16| {
        vec![
            ("RANK", rank.to_string()),
            ("WORLD_SIZE", world.to_string()),
            ("MASTER_ADDR", "127.0.0.1".to_string()),
            ("MASTER_PORT", port.to_string()),
        ]
    };
    let o = run(&a, &env(0, 2, port));
    let (_, stderr) = text(&o);
    assert!(!o.status.success());
    assert!(stderr.contains(&format!("is port {port} in use?")), "{stderr}");
    drop(busy);

    // Ranks that disagree on the world size both fail, naming the mismatch.
    let port = free_port();
    let (mut r0, rx0) = start_rank(&a, 0, 2, port);
    let (mut r1, rx1) = start_rank(&a, 1, 3, port);
    let s0 = wait_exit(&mut r0, Duration::from_secs(90)).expect("rank 0 hung");
    let s1 = wait_exit(&mut r1, Duration::from_secs(90)).expect("rank 1 hung");
    let (e0, e1): (Vec<String>, Vec<String>) = (rx0.try_iter().collect(), rx1.try_iter().collect());
    assert!(!s0.success() && !s1.success());
    let want =
        "mismatched world sizes: rank 1 was started with WORLD_SIZE=3, rank 0 with WORLD_SIZE=2";
    assert!(e1.join("\n").contains(want), "{}", e1.join("\n"));
    assert!(e0.join("\n").contains(want), "{}", e0.join("\n"));

    // A rank outside the world, and NCCL on a CPU libtorch.
    let o = run(&a, &env(2, 2, free_port()));
    assert!(!o.status.success());
    assert!(text(&o).1.contains("rank 2 is outside the world of 2 ranks"), "{}", text(&o).1);
    // With --cpu, NCCL is refused whatever the build; without it, a CPU libtorch refuses it
    // naming the build (a CUDA build with no device names the missing device).
    let mut nccl = a.clone();
    nccl.extend(["--distributed-backend".to_string(), "nccl".to_string()]);
    let o = run(&nccl, &env(0, 2, free_port()));
    assert!(!o.status.success());
    assert!(text(&o).1.contains("--cpu and --distributed-backend nccl"), "{}", text(&o).1);
    nccl.retain(|arg| arg != "--cpu");
    let o = run(&nccl, &env(0, 2, free_port()));
    assert!(!o.status.success());
    let stderr = text(&o).1;
    if seqforge_trainer::distributed::nccl_built() {
        assert!(stderr.contains("CUDA device"), "{stderr}");
    } else {
        assert!(stderr.contains("nccl needs a CUDA libtorch"), "{stderr}");
    }
}

#[test]
fn a_frozen_rank_makes_the_other_fail_after_the_ddp_timeout() {
    let tmp = tempfile::tempdir().unwrap();
    let data = data(tmp.path());
    // 10 s: long enough that a busy CI machine never stalls a healthy step that long.
    let a =
        args(&data, &tmp.path().join("save"), &["--max-update", "1000000", "--ddp-timeout", "10"]);
    let port = free_port();
    let (mut r0, rx0) = start_rank(&a, 0, 2, port);
    let (mut r1, _rx1) = start_rank(&a, 1, 2, port);
    let mut seen = Vec::new();
    assert!(wait_for_line(&rx0, "num_updates=3", &mut seen), "{}", seen.join("\n"));
    // SIGSTOP: the peer is alive (its sockets stay open) but never answers.
    Command::new("kill").args(["-STOP", &r1.id().to_string()]).status().unwrap();
    let frozen_at = Instant::now();
    let status = wait_exit(&mut r0, Duration::from_secs(120));
    let took = frozen_at.elapsed();
    r1.kill().unwrap();
    let _ = r1.wait();
    let status = status.expect("rank 0 hung on a frozen peer");
    let stderr: Vec<String> = rx0.try_iter().collect();
    let stderr = stderr.join("\n");
    assert!(!status.success());
    assert!(stderr.contains("--ddp-timeout 10s"), "{stderr}");
    println!(
        "rank 0 failed {:.1} s after its peer froze: {}",
        took.as_secs_f64(),
        stderr.lines().find(|l| l.contains("failed on rank")).unwrap_or("")
    );
}

/// The collectives on tch tensors, two ranks as two threads of this process.
#[test]
fn collectives_on_two_ranks_in_threads() {
    use seqforge_trainer::distributed::{Backend, ProcessGroup, ReduceOp, Rendezvous};
    use tch::{Kind, Tensor};
    let port = free_port();
    let rank_main = move |rank: usize| -> Vec<String> {
        let rv = Rendezvous {
            rank,
            world_size: 2,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        };
        let pg = ProcessGroup::init(&rv, Backend::Gloo, Duration::from_secs(60)).unwrap();
        assert_eq!((pg.rank(), pg.world_size(), pg.is_master()), (rank, 2, rank == 0));
        let mut log = Vec::new();
        // Sum, max and min of [r+1, 10(r+1)] and a second tensor of another shape and dtype.
        let a = Tensor::from_slice(&[rank as f32 + 1.0, 10.0 * (rank as f32 + 1.0)]);
        let b = Tensor::from_slice(&[rank as i64; 3]);
        pg.all_reduce(&[&a, &b], ReduceOp::Sum).unwrap();
        log.push(format!(
            "sum {:?} {:?}",
            Vec::<f32>::try_from(&a).unwrap(),
            Vec::<i64>::try_from(&b).unwrap()
        ));
        let m = Tensor::from_slice(&[rank as f64, 5.0 - rank as f64]);
        pg.all_reduce(&[&m], ReduceOp::Max).unwrap();
        let n = Tensor::from_slice(&[rank as f64]);
        pg.all_reduce(&[&n], ReduceOp::Min).unwrap();
        log.push(format!(
            "max {:?} min {:?}",
            Vec::<f64>::try_from(&m).unwrap(),
            Vec::<f64>::try_from(&n).unwrap()
        ));
        // Broadcast from rank 1 of a 2-D tensor.
        let c = Tensor::full([2, 2], rank as f64 + 5.0, (Kind::Float, tch::Device::Cpu));
        pg.broadcast(&[&c], 1).unwrap();
        log.push(format!("bcast {:?}", Vec::<f32>::try_from(&c.reshape([-1])).unwrap()));
        // All-gather, and the f64 helpers.
        let g = pg.all_gather(&Tensor::from_slice(&[rank as i64 * 7])).unwrap();
        let g: Vec<i64> = g.iter().map(|t| t.int64_value(&[0])).collect();
        log.push(format!("gather {g:?} {:?}", pg.all_gather_f64(rank as f64 + 0.5).unwrap()));
        let mut v = [1.0, rank as f64];
        pg.all_reduce_f64(&mut v).unwrap();
        log.push(format!("f64 {v:?} bcast {}", pg.broadcast_f64(rank as f64 + 3.0).unwrap()));
        pg.barrier().unwrap();
        log
    };
    let t0 = std::thread::spawn(move || rank_main(0));
    let t1 = std::thread::spawn(move || rank_main(1));
    let (l0, l1) = (t0.join().unwrap(), t1.join().unwrap());
    assert_eq!(l0, l1, "both ranks see the same results");
    assert_eq!(
        l0,
        [
            "sum [3.0, 30.0] [1, 1, 1]",
            "max [1.0, 5.0] min [0.0]",
            "bcast [6.0, 6.0, 6.0, 6.0]",
            "gather [0, 7] [0.5, 1.5]",
            "f64 [2.0, 1.0] bcast 3",
        ]
    );
}
