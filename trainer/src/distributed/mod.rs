//! Data-parallel training on PyTorch's own c10d (the engine fairseq and PyTorch DDP use),
//! reached through a small C++ shim (`csrc/c10d_shim.cpp`) over libtorch's `TCPStore` and
//! `ProcessGroupGloo`.
//!
//! - [`DistributedArgs`]: fairseq's flags (`--distributed-world-size`, `--distributed-rank`,
//!   `--distributed-init-method`, `--distributed-port`, `--distributed-backend`,
//!   `--ddp-backend`, `--bucket-cap-mb`) plus `--ddp-timeout`.
//! - [`Launch::resolve`]: where this process stands: torchrun / plain environment variables
//!   (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), SLURM's
//!   (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`), fairseq's `--distributed-*` flags, or
//!   `--distributed-world-size N` alone, which makes this process a launcher of N local workers
//!   ([`launch`]).
//! - [`ProcessGroup`]: rendezvous (with checks that every rank agrees on the world size and
//!   that no rank is started twice), all-reduce, broadcast, all-gather and barrier on tch
//!   tensors, each bounded by `--ddp-timeout`; c10d's exceptions come back as
//!   [`Error::Collective`] with c10d's message.
//! - [`GradReducer`]: DDP's gradient synchronization — parameters in name order, gradients
//!   flattened into buckets of at most `--bucket-cap-mb`, each bucket's all-reduce started
//!   from an autograd hook as soon as its gradients are accumulated (so communication
//!   overlaps the rest of backward; `--ddp-backend legacy_ddp` starts them after backward
//!   instead), no communication on the accumulation steps of `--update-freq`, gradients
//!   reduced in their own dtype (fp16 in fp16).
//!
//! NCCL: `--distributed-backend nccl` runs c10d's `ProcessGroupNCCL` when the trainer was built
//! against a CUDA libtorch (e.g. `cargo xtask setup --libtorch-from-python` on a GPU machine;
//! `trainer/build.rs` finds the CUDA and NCCL headers next to it); each rank then uses CUDA
//! device `LOCAL_RANK`, and tensors on another device are staged through it. On the CPU
//! libtorch this project assembles the shim has no NCCL and the flag is refused with the
//! reason ([`nccl_built`]).

mod ffi;
pub mod launch;

use std::ffi::{CString, c_void};
use std::net::{IpAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tch::Tensor;

pub use launch::spawn_workers;

/// Errors of distributed training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Inconsistent flags or environment variables.
    #[error("distributed: {0}")]
    Config(String),
    /// Rendezvous failed (store, world size, duplicate ranks).
    #[error("distributed rendezvous (rank {rank}, {addr}): {message}")]
    Rendezvous {
        /// This rank.
        rank: usize,
        /// `MASTER_ADDR:MASTER_PORT`.
        addr: String,
        /// What went wrong.
        message: String,
    },
    /// A collective failed or timed out (c10d's message).
    #[error(
        "distributed: {what} failed on rank {rank} of {world_size} (another rank may have \
         died, or it took longer than --ddp-timeout {timeout_s}s): {message}"
    )]
    Collective {
        /// The operation.
        what: String,
        /// This rank.
        rank: usize,
        /// Ranks in all.
        world_size: usize,
        /// `--ddp-timeout`.
        timeout_s: u64,
        /// c10d's message.
        message: String,
    },
    /// Launching local workers failed, or one of them failed.
    #[error("distributed launcher: {0}")]
    Launch(String),
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `--distributed-backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Gloo: CPU tensors (and the only backend of a CPU libtorch).
    #[default]
    Gloo,
    /// NCCL: CUDA tensors (needs a CUDA libtorch).
    Nccl,
}

/// `--ddp-backend` (fairseq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DdpBackend {
    /// DDP's way: bucket all-reduces start from gradient hooks during backward.
    #[default]
    C10d,
    /// fairseq's legacy DDP: the same buckets, all-reduced after backward.
    #[value(name = "legacy_ddp")]
    LegacyDdp,
}

/// Distributed training flags (fairseq's names; `train --help` lists them).
#[derive(Debug, Clone, PartialEq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct DistributedArgs {
    /// Total number of ranks. Without RANK/WORLD_SIZE in the environment, N > 1 starts N
    /// local worker processes on 127.0.0.1 (one rank each); under torchrun or SLURM it must
    /// agree with WORLD_SIZE / SLURM_NTASKS.
    #[arg(long, value_name = "N")]
    pub distributed_world_size: Option<usize>,
    /// This process's rank (default: RANK, or SLURM_PROCID).
    #[arg(long, value_name = "RANK")]
    pub distributed_rank: Option<usize>,
    /// Rendezvous address `tcp://HOST:PORT` (default: MASTER_ADDR and MASTER_PORT).
    #[arg(long, value_name = "URL")]
    pub distributed_init_method: Option<String>,
    /// Rendezvous port when MASTER_PORT is not set (the local launcher picks a free one
    /// without it).
    #[arg(long, value_name = "PORT")]
    pub distributed_port: Option<u16>,
    /// Collective backend: gloo (CPU) or nccl (CUDA; needs a CUDA libtorch).
    #[arg(long, value_enum, default_value = "gloo")]
    pub distributed_backend: Backend,
    /// c10d: bucket all-reduces overlap backward (gradient hooks); legacy_ddp: they start
    /// after backward.
    #[arg(long, value_enum, default_value = "c10d")]
    pub ddp_backend: DdpBackend,
    /// Largest gradient bucket in MiB.
    #[arg(long, default_value_t = 25.0, value_name = "MB")]
    pub bucket_cap_mb: f64,
    /// Seconds a collective may wait for the other ranks before this rank fails with an error
    /// (PyTorch's default is 30 minutes); the rendezvous at start-up waits at least 5 minutes
    /// for every rank to join.
    #[arg(long, default_value_t = 1800, value_name = "SECONDS")]
    pub ddp_timeout: u64,
}

impl Default for DistributedArgs {
    fn default() -> Self {
        Self {
            distributed_world_size: None,
            distributed_rank: None,
            distributed_init_method: None,
            distributed_port: None,
            distributed_backend: Backend::Gloo,
            ddp_backend: DdpBackend::C10d,
            bucket_cap_mb: 25.0,
            ddp_timeout: 1800,
        }
    }
}

/// Where a rank finds the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendezvous {
    /// This rank (0-based).
    pub rank: usize,
    /// Ranks in all.
    pub world_size: usize,
    /// Rank on this machine (CUDA device index).
    pub local_rank: usize,
    /// Rank 0's host (`MASTER_ADDR`).
    pub master_addr: String,
    /// Rank 0's store port (`MASTER_PORT`).
    pub master_port: u16,
}

/// What this process does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// Train alone.
    Single,
    /// Start this many local workers and wait for them.
    Spawn {
        /// Ranks to start.
        world_size: usize,
        /// `--distributed-port` (a free port is picked without it).
        port: Option<u16>,
    },
    /// Be one rank.
    Worker(Rendezvous),
}

/// Reads a variable: `None` when unset or empty.
fn env_var(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn parse_env<T: std::str::FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>> {
    match env_var(env, name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Error::Config(format!("environment variable {name}={v:?} is not a valid number"))
        }),
    }
}

impl Launch {
    /// Decides from the flags and the process environment (see the module docs).
    pub fn resolve(args: &DistributedArgs) -> Result<Self> {
        Self::resolve_with(args, &|name| std::env::var(name).ok())
    }

    /// [`Launch::resolve`] with the environment given as a function (for tests).
    pub fn resolve_with(
        args: &DistributedArgs,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let (env_rank, env_world, env_local, source) = if env_var(env, "WORLD_SIZE").is_some() {
            (
                parse_env::<usize>(env, "RANK")?,
                parse_env::<usize>(env, "WORLD_SIZE")?,
                parse_env::<usize>(env, "LOCAL_RANK")?,
                "WORLD_SIZE",
            )
        } else if env_var(env, "SLURM_NTASKS").is_some() && env_var(env, "MASTER_ADDR").is_some() {
            (
                parse_env::<usize>(env, "SLURM_PROCID")?,
                parse_env::<usize>(env, "SLURM_NTASKS")?,
                parse_env::<usize>(env, "SLURM_LOCALID")?,
                "SLURM_NTASKS",
            )
        } else {
            (None, None, None, "")
        };
        let world_size = match (env_world, args.distributed_world_size) {
            (Some(e), Some(f)) if e != f => {
                return Err(Error::Config(format!(
                    "--distributed-world-size {f} disagrees with {source}={e}"
                )));
            }
            (Some(e), _) => e,
            (None, Some(f)) => f,
            (None, None) => 1,
        };
        if world_size == 0 {
            return Err(Error::Config("the world size must be at least 1".into()));
        }
        if args.bucket_cap_mb <= 0.0 || !args.bucket_cap_mb.is_finite() {
            return Err(Error::Config(format!(
                "--bucket-cap-mb must be positive, got {}",
                args.bucket_cap_mb
            )));
        }
        if args.ddp_timeout == 0 {
            return Err(Error::Config("--ddp-timeout must be at least 1 second".into()));
        }
        let rank = args.distributed_rank.or(env_rank);
        let Some(rank) = rank else {
            return Ok(if world_size > 1 {
                Launch::Spawn { world_size, port: args.distributed_port }
            } else {
                Launch::Single
            });
        };
        if rank >= world_size {
            return Err(Error::Config(format!(
                "rank {rank} is outside the world of {world_size} ranks (0..{world_size})"
            )));
        }
        if world_size == 1 {
            return Ok(Launch::Single);
        }
        let (master_addr, master_port) = match &args.distributed_init_method {
            Some(url) => parse_init_method(url)?,
            None => {
                let addr = env_var(env, "MASTER_ADDR").ok_or_else(|| {
                    Error::Config(format!(
                        "rank {rank} of {world_size}: MASTER_ADDR is not set (or pass \
                         --distributed-init-method tcp://HOST:PORT)"
                    ))
                })?;
                let port = match parse_env::<u16>(env, "MASTER_PORT")? {
                    Some(p) => p,
                    None => args.distributed_port.ok_or_else(|| {
                        Error::Config(format!(
                            "rank {rank} of {world_size}: MASTER_PORT is not set (or pass \
                             --distributed-port)"
                        ))
                    })?,
                };
                (addr, port)
            }
        };
        let local_rank = env_local.unwrap_or(rank);
        Ok(Launch::Worker(Rendezvous { rank, world_size, local_rank, master_addr, master_port }))
    }
}

/// `tcp://HOST:PORT` → (host, port).
fn parse_init_method(url: &str) -> Result<(String, u16)> {
    let bad = || {
        Error::Config(format!(
            "--distributed-init-method {url:?}: expected tcp://HOST:PORT (env:// is the default: \
             leave the flag out to use MASTER_ADDR/MASTER_PORT)"
        ))
    };
    let rest = url.strip_prefix("tcp://").ok_or_else(bad)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port.parse().map_err(|_| bad())?))
}

/// The least time the rendezvous waits for all ranks to join.
pub const RENDEZVOUS_MIN: Duration = Duration::from_secs(300);

/// A c10d process group (Gloo) with its rendezvous store.
pub struct ProcessGroup {
    store: *mut c_void,
    group: *mut c_void,
    rank: usize,
    world_size: usize,
    timeout: Duration,
    /// The CUDA device of an NCCL group; `None` for Gloo.
    cuda_device: Option<usize>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish_non_exhaustive()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: both were created by the shim and are freed once.
        unsafe {
            ffi::sf_group_free(self.group);
            ffi::sf_store_free(self.store);
        }
    }
}

fn cstring(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::Config(format!("{s:?} contains a NUL byte")))
}

/// Reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum = 0,
    /// Maximum.
    Max = 1,
    /// Minimum.
    Min = 2,
}

/// Whether this build's c10d shim has the NCCL backend: it is compiled in when the libtorch
/// the trainer is built against is a CUDA one with `ProcessGroupNCCL` and the CUDA and NCCL
/// headers are found (see `trainer/build.rs`).
pub fn nccl_built() -> bool {
    // SAFETY: a constant query without arguments.
    unsafe { ffi::sf_has_nccl() }
}

/// The CUDA device a rank uses: its local rank, wrapped around the visible devices.
pub fn cuda_device_index(local_rank: usize) -> usize {
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0).max(1);
    local_rank % count
}

/// Checks that `--distributed-backend nccl` can run here, or says why not.
fn nccl_usable(local_rank: usize) -> Result<()> {
    if !nccl_built() {
        return Err(Error::Config(format!(
            "--distributed-backend nccl needs a CUDA libtorch with ProcessGroupNCCL; this build's \
             c10d shim has no NCCL ({}); use gloo",
            NCCL_BUILD_NOTE
        )));
    }
    if !tch::Cuda::is_available() {
        return Err(Error::Config(
            "--distributed-backend nccl: no CUDA device is visible to libtorch (drop --cpu, check \
             CUDA_VISIBLE_DEVICES, or use gloo)"
                .into(),
        ));
    }
    let count = usize::try_from(tch::Cuda::device_count()).unwrap_or(0);
    if local_rank >= count {
        tracing::warn!(
            target: "seqforge::distributed",
            "local rank {local_rank} but only {count} CUDA device(s): ranks share GPUs"
        );
    }
    Ok(())
}

/// Why the shim was built with or without NCCL (set by `trainer/build.rs`).
const NCCL_BUILD_NOTE: &str = env!("SEQFORGE_NCCL_NOTE");

impl ProcessGroup {
    /// Joins the group described by `rv`: rank 0 opens the `TCPStore` on `MASTER_PORT`, the
    /// others connect to it (retrying until `timeout`, at least [`RENDEZVOUS_MIN`]); every
    /// rank checks that all agree on the
    /// world size and that its rank is not taken, then the Gloo group connects all pairs.
    pub fn init(rv: &Rendezvous, backend: Backend, timeout: Duration) -> Result<Self> {
        let addr = format!("{}:{}", rv.master_addr, rv.master_port);
        let fail =
            |message: String| Error::Rendezvous { rank: rv.rank, addr: addr.clone(), message };
        if backend == Backend::Nccl {
            nccl_usable(rv.local_rank)?;
        }
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        // Ranks start at different times (loading libtorch from a cold disk takes seconds):
        // the rendezvous waits at least RENDEZVOUS_MIN for everyone, whatever --ddp-timeout
        // says about collectives. A rank that fails to join still fails everyone at once.
        let rendezvous = timeout.max(RENDEZVOUS_MIN);
        let rendezvous_ms = i64::try_from(rendezvous.as_millis()).unwrap_or(i64::MAX);
        let host = cstring(&rv.master_addr)?;
        let mut store = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointer; the shim catches every C++ exception.
        ffi::take_error(unsafe {
            ffi::sf_store_new(
                host.as_ptr(),
                rv.master_port,
                rv.world_size as i64,
                rv.rank == 0,
                rendezvous_ms,
                &mut store,
            )
        })
        .map_err(|e| {
            fail(if rv.rank == 0 {
                format!(
                    "could not open the rendezvous store (is port {} in use?): {e}",
                    rv.master_port
                )
            } else {
                format!("could not reach rank 0's rendezvous store: {e}")
            })
        })?;
        let mut pg = Self {
            store,
            group: std::ptr::null_mut(),
            rank: rv.rank,
            world_size: rv.world_size,
            timeout,
            cuda_device: (backend == Backend::Nccl).then(|| cuda_device_index(rv.local_rank)),
        };
        pg.check_membership(rv, rendezvous).map_err(fail)?;
        // The address other ranks reach this one on: the interface that routes to rank 0.
        let own = own_address(&rv.master_addr, rv.master_port);
        let own = cstring(&own)?;
        let threads = 2;
        let mut group = std::ptr::null_mut();
        let (name, made) = match backend {
            // SAFETY: `store` is live; valid out-pointer.
            Backend::Gloo => ("Gloo", unsafe {
                ffi::sf_gloo_new(
                    pg.store,
                    rv.rank as i64,
                    rv.world_size as i64,
                    own.as_ptr(),
                    timeout_ms,
                    threads,
                    &mut group,
                )
            }),
            // SAFETY: as above; `nccl_usable` checked the device index.
            Backend::Nccl => ("NCCL", unsafe {
                ffi::sf_nccl_new(
                    pg.store,
                    rv.rank as i64,
                    rv.world_size as i64,
                    cuda_device_index(rv.local_rank) as i64,
                    timeout_ms,
                    &mut group,
                )
            }),
        };
        ffi::take_error(made).map_err(|e| fail(format!("connecting the {name} group: {e}")))?;
        pg.group = group;
        tracing::info!(
            target: "seqforge::distributed",
            "distributed init (rank {} of {}): {name} on {addr}",
            rv.rank,
            rv.world_size
        );
        Ok(pg)
    }

    fn store_set(&self, key: &str, value: &str) -> std::result::Result<(), String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        // SAFETY: live store, valid pointers.
        ffi::take_error(unsafe {
            ffi::sf_store_set(self.store, k.as_ptr(), value.as_ptr(), value.len())
        })
    }

    fn store_get(&self, key: &str) -> std::result::Result<String, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: live store, valid out-pointers; `data` is freed below.
        ffi::take_error(unsafe { ffi::sf_store_get(self.store, k.as_ptr(), &mut data, &mut len) })?;
        // SAFETY: the shim returned `len` bytes at `data`.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) }.to_vec();
        unsafe { ffi::sf_free_bytes(data) };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn store_check(&self, key: &str) -> std::result::Result<bool, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let mut out = false;
        // SAFETY: live store, valid out-pointer.
        ffi::take_error(unsafe { ffi::sf_store_check(self.store, k.as_ptr(), &mut out) })?;
        Ok(out)
    }

    fn store_add(&self, key: &str, value: i64) -> std::result::Result<i64, String> {
        let k = CString::new(key).map_err(|e| e.to_string())?;
        let mut out = 0;
        // SAFETY: live store, valid out-pointer.
        ffi::take_error(unsafe { ffi::sf_store_add(self.store, k.as_ptr(), value, &mut out) })?;
        Ok(out)
    }

    /// Every rank registers itself; rank 0 publishes its world size, the others compare theirs
    /// with it; anyone who finds a problem publishes it so that every rank fails with it
    /// instead of waiting for the timeout.
    fn check_membership(
        &self,
        rv: &Rendezvous,
        timeout: Duration,
    ) -> std::result::Result<(), String> {
        const ERROR_KEY: &str = "seqforge/error";
        let mine = rv.world_size.to_string();
        let taken = self.store_add(&format!("seqforge/rank/{}", rv.rank), 1)?;
        let fail = |message: String| {
            let _ = self.store_set(ERROR_KEY, &message);
            Err(message)
        };
        if taken > 1 {
            return fail(format!("rank {} was started twice", rv.rank));
        }
        if rv.rank == 0 {
            self.store_set("seqforge/world_size", &mine)?;
        } else {
            let theirs = self.store_get("seqforge/world_size")?;
            if theirs != mine {
                return fail(format!(
                    "mismatched world sizes: rank {} was started with WORLD_SIZE={mine}, rank 0 \
                     with WORLD_SIZE={theirs}",
                    rv.rank
                ));
            }
        }
        self.store_set(&format!("seqforge/joined/{}", rv.rank), &mine)?;
        // Wait until every rank has joined, or someone reported a problem.
        let start = Instant::now();
        loop {
            if self.store_check(ERROR_KEY)? {
                return Err(format!("another rank failed to join: {}", self.store_get(ERROR_KEY)?));
            }
            let mut missing = Vec::new();
            for r in 0..rv.world_size {
                if !self.store_check(&format!("seqforge/joined/{r}"))? {
                    missing.push(r);
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "ranks {missing:?} did not join within {}s",
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in all.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// The CUDA device this rank's collectives run on (NCCL), `None` for Gloo.
    pub fn cuda_device(&self) -> Option<usize> {
        self.cuda_device
    }

    /// Whether this is rank 0.
    pub fn is_master(&self) -> bool {
        self.rank == 0
    }

    fn collective(&self, what: &str, err: *mut std::ffi::c_char) -> Result<()> {
        ffi::take_error(err).map_err(|message| Error::Collective {
            what: what.to_string(),
            rank: self.rank,
            world_size: self.world_size,
            timeout_s: self.timeout.as_secs(),
            message,
        })
    }

    fn handles(tensors: &[&Tensor]) -> Vec<*mut c_void> {
        tensors.iter().map(|t| t.as_ptr() as *mut c_void).collect()
    }

    /// Reduces `tensors` in place across ranks (each tensor separately).
    pub fn all_reduce(&self, tensors: &[&Tensor], op: ReduceOp) -> Result<()> {
        let h = Self::handles(tensors);
        // SAFETY: live group; tch tensor handles valid for the call.
        self.collective("all-reduce", unsafe {
            ffi::sf_all_reduce(self.group, h.as_ptr(), h.len(), op as i64)
        })
    }

    /// Copies `tensors` from `root` to every rank, in place.
    pub fn broadcast(&self, tensors: &[&Tensor], root: usize) -> Result<()> {
        let h = Self::handles(tensors);
        // SAFETY: as in `all_reduce`.
        self.collective("broadcast", unsafe {
            ffi::sf_broadcast(self.group, h.as_ptr(), h.len(), root as i64)
        })
    }

    /// Every rank's `input`, in rank order.
    pub fn all_gather(&self, input: &Tensor) -> Result<Vec<Tensor>> {
        let outputs: Vec<Tensor> = (0..self.world_size)
            .map(|_| input.f_empty_like())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.tensor_error("all-gather", e))?;
        let refs: Vec<&Tensor> = outputs.iter().collect();
        let h = Self::handles(&refs);
        // SAFETY: as in `all_reduce`.
        self.collective("all-gather", unsafe {
            ffi::sf_all_gather(self.group, input.as_ptr() as *mut c_void, h.as_ptr(), h.len())
        })?;
        Ok(outputs)
    }

    /// Waits until every rank has reached the same barrier.
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: live group.
        self.collective("barrier", unsafe { ffi::sf_barrier(self.group) })
    }

    /// Sums `values` across ranks (in f64).
    pub fn all_reduce_f64(&self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::f_from_slice(values).map_err(|e| self.tensor_error("all-reduce", e))?;
        self.all_reduce(&[&t], ReduceOp::Sum)?;
        let out = Vec::<f64>::try_from(&t).map_err(|e| self.tensor_error("all-reduce", e))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// Rank 0's `value` on every rank.
    pub fn broadcast_f64(&self, value: f64) -> Result<f64> {
        let t = Tensor::f_from_slice(&[value]).map_err(|e| self.tensor_error("broadcast", e))?;
        self.broadcast(&[&t], 0)?;
        t.f_double_value(&[0]).map_err(|e| self.tensor_error("broadcast", e))
    }

    /// Every rank's `value` (as f64), in rank order.
    pub fn all_gather_f64(&self, value: f64) -> Result<Vec<f64>> {
        let t = Tensor::f_from_slice(&[value]).map_err(|e| self.tensor_error("all-gather", e))?;
        self.all_gather(&t)?
            .iter()
            .map(|x| x.f_double_value(&[0]))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.tensor_error("all-gather", e))
    }

    fn tensor_error(&self, what: &str, e: tch::TchError) -> Error {
        Error::Collective {
            what: what.to_string(),
            rank: self.rank,
            world_size: self.world_size,
            timeout_s: self.timeout.as_secs(),
            message: e.to_string(),
        }
    }
}

/// The local address that routes to `host:port` (what other ranks connect to), or
/// `127.0.0.1` for a loopback master.
fn own_address(host: &str, port: u16) -> String {
    let target = (host, port).to_socket_addrs().ok().and_then(|mut a| a.next());
    match target {
        Some(t) if t.ip().is_loopback() => t.ip().to_string(),
        Some(t) => {
            let bind: IpAddr =
                if t.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
            std::net::UdpSocket::bind((bind, 0))
                .and_then(|s| s.connect(t).and_then(|()| s.local_addr()))
                .map_or_else(|_| host.to_string(), |a| a.ip().to_string())
        }
        None => host.to_string(),
    }
}

/// Communication time of one synchronized update.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommStats {
    /// Seconds spent waiting for bucket all-reduces after backward (communication not hidden
    /// behind computation).
    pub wait_seconds: f64,
    /// Seconds spent inside gradient hooks copying gradients into buckets and starting
    /// all-reduces (part of backward's time).
    pub hook_seconds: f64,
}

/// DDP-style gradient synchronization over a [`ProcessGroup`] (see the module docs).
pub struct GradReducer {
    ptr: *mut c_void,
    world_size: usize,
    rank: usize,
    timeout_s: u64,
}

impl std::fmt::Debug for GradReducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GradReducer").field("buckets", &self.buckets()).finish_non_exhaustive()
    }
}

impl Drop for GradReducer {
    fn drop(&mut self) {
        // SAFETY: created by the shim, freed once (its hooks are removed first).
        unsafe { ffi::sf_reducer_free(self.ptr) }
    }
}

impl GradReducer {
    /// Buckets `params` (give them sorted by name: every rank must list them in the same
    /// order) into buckets of at most `bucket_cap_mb` MiB and hooks their gradient
    /// accumulators. `overlap` starts each bucket's all-reduce from the hooks.
    pub fn new(
        pg: &ProcessGroup,
        params: &[&Tensor],
        bucket_cap_mb: f64,
        overlap: bool,
    ) -> Result<Self> {
        let h = ProcessGroup::handles(params);
        let cap = (bucket_cap_mb * 1024.0 * 1024.0) as i64;
        let mut ptr = std::ptr::null_mut();
        // SAFETY: live group (it must outlive the reducer: the trainer drops the reducer
        // first), valid tensor handles, out-pointer.
        pg.collective("creating the gradient reducer", unsafe {
            ffi::sf_reducer_new(pg.group, h.as_ptr(), h.len(), cap, overlap, &mut ptr)
        })?;
        Ok(Self { ptr, world_size: pg.world_size, rank: pg.rank, timeout_s: pg.timeout.as_secs() })
    }

    /// Gradient buckets (they are rebuilt in readiness order after the first synchronized
    /// backward).
    pub fn buckets(&self) -> usize {
        // SAFETY: live reducer.
        unsafe { ffi::sf_reducer_buckets(self.ptr) }
    }

    /// Distinct parameters reduced.
    pub fn params(&self) -> usize {
        // SAFETY: live reducer.
        unsafe { ffi::sf_reducer_params(self.ptr) }
    }

    fn check(&self, what: &str, err: *mut std::ffi::c_char) -> Result<()> {
        ffi::take_error(err).map_err(|message| Error::Collective {
            what: what.to_string(),
            rank: self.rank,
            world_size: self.world_size,
            timeout_s: self.timeout_s,
            message,
        })
    }

    /// Call before each backward: `sync` on the last batch of an update (the hooks then fill
    /// buckets and start their all-reduces), not on the accumulation steps before it.
    /// Gradients are divided by the world size before they are summed, as DDP does.
    pub fn prepare(&self, sync: bool) -> Result<()> {
        // SAFETY: live reducer.
        self.check("gradient synchronization", unsafe {
            ffi::sf_reducer_prepare(self.ptr, sync, self.world_size as f64)
        })
    }

    /// After the synchronized backward: starts the buckets backward did not (all of them with
    /// `legacy_ddp`; unused parameters count as zero), waits for every all-reduce and writes
    /// the averaged gradients to `.grad`.
    pub fn finish(&self) -> Result<CommStats> {
        let (mut wait, mut hook) = (0.0, 0.0);
        // SAFETY: live reducer, out-pointers.
        self.check("gradient all-reduce", unsafe {
            ffi::sf_reducer_finish(self.ptr, &mut wait, &mut hook)
        })?;
        Ok(CommStats { wait_seconds: wait, hook_seconds: hook })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn torchrun_environment_makes_a_worker() {
        let e = env(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
        ]);
        let got = Launch::resolve_with(&DistributedArgs::default(), &e).unwrap();
        assert_eq!(
            got,
            Launch::Worker(Rendezvous {
                rank: 1,
                world_size: 2,
                local_rank: 1,
                master_addr: "10.0.0.1".into(),
                master_port: 29500
            })
        );
    }

    #[test]
    fn slurm_environment_and_init_method() {
        let e = env(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4"), ("MASTER_ADDR", "h")]);
        let args = DistributedArgs {
            distributed_init_method: Some("tcp://node7:1234".into()),
            ..DistributedArgs::default()
        };
        let Launch::Worker(rv) = Launch::resolve_with(&args, &e).unwrap() else { panic!() };
        assert_eq!(
            (rv.rank, rv.world_size, rv.master_addr.as_str(), rv.master_port),
            (3, 4, "node7", 1234)
        );
    }

    #[test]
    fn world_size_alone_spawns_and_one_is_single() {
        let none = env(&[]);
        let args = DistributedArgs { distributed_world_size: Some(2), ..Default::default() };
        assert_eq!(
            Launch::resolve_with(&args, &none).unwrap(),
            Launch::Spawn { world_size: 2, port: None }
        );
        assert_eq!(
            Launch::resolve_with(&DistributedArgs::default(), &none).unwrap(),
            Launch::Single
        );
    }

    #[test]
    fn inconsistent_settings_are_errors_that_say_why() {
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")]);
        let msg = Launch::resolve_with(&DistributedArgs::default(), &e).unwrap_err().to_string();
        assert!(msg.contains("MASTER_PORT"), "{msg}");
        let args = DistributedArgs { distributed_world_size: Some(3), ..Default::default() };
        let msg = Launch::resolve_with(&args, &e).unwrap_err().to_string();
        assert!(msg.contains("--distributed-world-size 3 disagrees with WORLD_SIZE=2"), "{msg}");
        let e =
            env(&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "x"), ("MASTER_PORT", "1")]);
        let msg = Launch::resolve_with(&DistributedArgs::default(), &e).unwrap_err().to_string();
        assert!(msg.contains("rank 2 is outside the world of 2"), "{msg}");
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]);
        let msg = Launch::resolve_with(&DistributedArgs::default(), &e).unwrap_err().to_string();
        assert!(msg.contains("RANK=\"x\""), "{msg}");
        let bad = DistributedArgs {
            distributed_init_method: Some("env://".into()),
            distributed_rank: Some(0),
            distributed_world_size: Some(2),
            ..Default::default()
        };
        let msg = Launch::resolve_with(&bad, &env(&[])).unwrap_err().to_string();
        assert!(msg.contains("tcp://HOST:PORT"), "{msg}");
    }
}
