//! Meters and log output: fairseq's `train_inner` / `train` / `valid` statistics, printed on the
//! terminal (simple or JSON) around an `indicatif` progress bar, and written as JSON lines to
//! the log file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Named statistics in fairseq's order.
pub(crate) type Stats = Vec<(String, Value)>;

use super::args::LogFormat;
use super::{Error, Result};
use crate::criterions::{LoggingOutput, safe_round};

/// What a [`Meter`] has summed, for checkpoints (fairseq keeps its meters in
/// `extra_state["metrics"]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct MeterState {
    pub logging: LoggingOutput,
    pub updates: u64,
    #[serde(with = "crate::fp16::exact_f64")]
    pub gnorm_sum: f64,
    pub clipped: u64,
    #[serde(with = "crate::fp16::exact_f64")]
    pub train_wall: f64,
}

/// Sums over a span of updates (an interval, an epoch).
#[derive(Debug, Clone)]
pub(crate) struct Meter {
    pub logging: LoggingOutput,
    pub updates: u64,
    pub gnorm_sum: f64,
    pub clipped: u64,
    pub train_wall: f64,
    pub start: Instant,
}

impl Meter {
    pub fn new() -> Self {
        Self {
            logging: LoggingOutput::default(),
            updates: 0,
            gnorm_sum: 0.0,
            clipped: 0,
            train_wall: 0.0,
            start: Instant::now(),
        }
    }

    /// A meter that goes on from a saved state (its rates restart from now).
    pub fn from_state(state: &MeterState) -> Self {
        Self {
            logging: state.logging,
            updates: state.updates,
            gnorm_sum: state.gnorm_sum,
            clipped: state.clipped,
            train_wall: state.train_wall,
            start: Instant::now(),
        }
    }

    /// The sums, for a checkpoint.
    pub fn state(&self) -> MeterState {
        MeterState {
            logging: self.logging,
            updates: self.updates,
            gnorm_sum: self.gnorm_sum,
            clipped: self.clipped,
            train_wall: self.train_wall,
        }
    }

    /// Adds one update.
    pub fn add(&mut self, logging: &LoggingOutput, gnorm: f64, clipped: bool, secs: f64) {
        self.logging += *logging;
        self.updates += 1;
        self.gnorm_sum += gnorm;
        self.clipped += u64::from(clipped);
        self.train_wall += secs;
    }

    /// fairseq's training statistics for this span (rounded as fairseq logs them);
    /// `loss_scale` is the fp16 loss scale now in force, logged after `clip`.
    pub fn train_stats(
        &self,
        num_updates: u64,
        lr: f64,
        loss_scale: Option<f64>,
        wall: f64,
    ) -> Stats {
        let m = self.logging.metrics().rounded();
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-9);
        let per_update = |x: u64| x as f64 / self.updates.max(1) as f64;
        let mut s = Stats::new();
        s.push(("loss".into(), json!(m.loss)));
        s.push(("nll_loss".into(), json!(m.nll_loss)));
        s.push(("ppl".into(), json!(m.ppl)));
        if let Some(acc) = m.accuracy {
            s.push(("accuracy".into(), json!(acc)));
        }
        s.push(("wps".into(), json!(safe_round(self.logging.ntokens as f64 / elapsed, 0))));
        s.push(("ups".into(), json!(safe_round(self.updates as f64 / elapsed, 2))));
        s.push(("wpb".into(), json!(safe_round(per_update(self.logging.ntokens), 1))));
        s.push(("bsz".into(), json!(safe_round(per_update(self.logging.nsentences), 1))));
        s.push(("num_updates".into(), json!(num_updates)));
        s.push(("lr".into(), json!(lr)));
        s.push(("gnorm".into(), json!(safe_round(self.gnorm_sum / self.updates.max(1) as f64, 3))));
        s.push((
            "clip".into(),
            json!(safe_round(100.0 * self.clipped as f64 / self.updates.max(1) as f64, 1)),
        ));
        if let Some(scale) = loss_scale {
            s.push(("loss_scale".into(), json!(safe_round(scale, 4))));
        }
        s.push(("train_wall".into(), json!(safe_round(self.train_wall, 0))));
        s.push(("wall".into(), json!(safe_round(wall, 0))));
        s
    }
}

/// Where log lines go.
pub(crate) struct Logger {
    format: LogFormat,
    // `None` on ranks other than 0 of a distributed run, which log nothing.
    file: Option<BufWriter<File>>,
    path: PathBuf,
    bar: ProgressBar,
    show_bar: bool,
    valid_subset: String,
}

impl Logger {
    /// Logs to `path` (truncated, or appended to when `append`: a resumed run).
    pub fn new(
        format: LogFormat,
        path: &Path,
        append: bool,
        show_bar: bool,
        valid_subset: &str,
    ) -> Result<Self> {
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .map_err(io)?;
        let file = BufWriter::new(file);
        Ok(Self {
            format,
            file: Some(file),
            path: path.to_path_buf(),
            bar: ProgressBar::hidden(),
            show_bar,
            valid_subset: valid_subset.to_string(),
        })
    }

    /// A logger for ranks other than 0 of a distributed run: no file, no progress bar, no lines
    /// (rank 0 logs the all-reduced statistics of every update).
    pub fn silent(format: LogFormat, valid_subset: &str) -> Self {
        Self {
            format,
            file: None,
            path: PathBuf::new(),
            bar: ProgressBar::hidden(),
            show_bar: false,
            valid_subset: valid_subset.to_string(),
        }
    }

    /// Starts the progress bar of an epoch of `len` updates.
    pub fn begin_epoch(&mut self, epoch: u64, len: u64) {
        self.bar.finish_and_clear();
        self.bar = if self.show_bar {
            let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
            if let Ok(style) = ProgressStyle::with_template(
                "epoch {msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("{epoch:03}"));
            bar
        } else {
            ProgressBar::hidden()
        };
    }

    /// Advances the progress bar by one update.
    pub fn tick(&self) {
        self.bar.inc(1);
    }

    /// Ends the epoch's progress bar.
    pub fn end_epoch(&mut self) {
        self.bar.finish_and_clear();
    }

    /// Logs one record: `tag` is `train_inner`, `train` or `valid`; `stats` are fairseq's
    /// statistics (valid ones get a `valid_` prefix in JSON, as in fairseq).
    pub fn log(
        &mut self,
        tag: &str,
        epoch: u64,
        position: Option<(usize, usize)>,
        stats: &[(String, Value)],
    ) -> Result<()> {
        let Some(file) = &mut self.file else {
            return Ok(());
        };
        let prefix = if tag == "valid" { "valid_" } else { "" };
        let mut record = Map::new();
        record.insert("tag".into(), json!(tag));
        record.insert("epoch".into(), json!(epoch));
        for (k, v) in stats {
            record.insert(format!("{prefix}{k}"), v.clone());
        }
        let record = Value::Object(record);
        writeln!(file, "{record}")
            .and_then(|()| file.flush())
            .map_err(|source| Error::Io { path: self.path.clone(), source })?;
        let line = match self.format {
            LogFormat::Json => record.to_string(),
            LogFormat::Simple => {
                let fields = |sep: &str, eq: &str| {
                    stats.iter().map(|(k, v)| format!("{k}{eq}{v}")).collect::<Vec<_>>().join(sep)
                };
                match (tag, position) {
                    ("train_inner", Some((i, n))) => {
                        format!("epoch {epoch:03}: {i:>6} / {n} {}", fields(", ", "="))
                    }
                    ("valid", _) => {
                        format!(
                            "epoch {epoch:03} | valid on '{}' subset | {}",
                            self.valid_subset,
                            fields(" | ", " ")
                        )
                    }
                    _ => format!("epoch {epoch:03} | {}", fields(" | ", " ")),
                }
            }
        };
        self.bar.suspend(|| tracing::info!(target: "seqforge::train", "{line}"));
        Ok(())
    }
}
