//! Mixed precision in the training loop (`--fp16`, `--bf16`, `--memory-efficient-fp16`): the
//! tiny model on the toy task ends near the fp32 run's losses; an injected inf/NaN gradient is
//! skipped with the loss scale halved and the weights untouched; the scale doubles after
//! `--fp16-scale-window` clean updates; reaching `--min-loss-scale` stops the run with
//! fairseq's message and a `checkpoint_last` that resumes with its loss scale.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use seqforge_trainer::batching::Batch;
use seqforge_trainer::checkpoint;
use seqforge_trainer::criterions::{
    Criterion, CriterionConfig, CriterionContext, CriterionFactory, CriterionOutput, Error,
};
use seqforge_trainer::fp16::Precision;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig, TrainSummary, Trainer};
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// Training-time calls of the injecting criterion (validation calls are not counted).
static TRAIN_CALLS: AtomicU64 = AtomicU64::new(0);

/// A test criterion: cross entropy whose loss is multiplied by +inf on the training calls
/// `inf_from_call ..= inf_to_call` (1-based), which makes every gradient inf/NaN.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct InfAtConfig {
    /// First training call that returns an infinite loss (0: never).
    #[arg(long = "inf-from-call", default_value_t = 0)]
    inf_from_call: u64,
    /// Last such call.
    #[arg(long = "inf-to-call", default_value_t = u64::MAX)]
    inf_to_call: u64,
}

impl Default for InfAtConfig {
    fn default() -> Self {
        Self { inf_from_call: 0, inf_to_call: u64::MAX }
    }
}

impl CriterionConfig for InfAtConfig {
    const NAME: &'static str = "inf_at";

    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error> {
        Ok(Box::new(InfAt { cfg: self.clone(), ctx: ctx.clone() }))
    }
}

struct InfAt {
    cfg: InfAtConfig,
    ctx: CriterionContext,
}

impl Criterion for InfAt {
    fn name(&self) -> &'static str {
        InfAtConfig::NAME
    }

    fn compute(
        &self,
        lprobs: &Tensor,
        target: &Tensor,
        pad: i64,
    ) -> Result<CriterionOutput, Error> {
        let mut factor = 1.0;
        if lprobs.requires_grad() {
            let call = TRAIN_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
            if self.cfg.inf_from_call > 0
                && (self.cfg.inf_from_call..=self.cfg.inf_to_call).contains(&call)
            {
                factor = f64::INFINITY;
            }
        }
        let v = *lprobs.size().last().unwrap();
        let nll = lprobs.f_reshape([-1, v])?.f_nll_loss(
            &target.f_reshape([-1])?,
            None::<Tensor>,
            Reduction::Sum,
            pad,
        )?;
        let nll_loss = nll.f_detach()?.f_double_value(&[])?;
        let ntokens = target.f_ne(pad)?.f_sum(Kind::Int64)?.f_int64_value(&[])? as u64;
        let nsentences = target.size()[0] as u64;
        Ok(CriterionOutput {
            loss: nll.f_mul_scalar(factor)?,
            nll_loss,
            ntokens,
            nsentences,
            sample_size: if self.ctx.sentence_avg { nsentences } else { ntokens },
            n_correct: None,
            total: None,
        })
    }
}

fn registry() -> Registry {
    let mut r = Registry::with_builtins().unwrap();
    r.criterions.register(InfAtConfig::NAME, CriterionFactory::of::<InfAtConfig>()).unwrap();
    r
}

fn toy_data(dir: &Path) -> PathBuf {
    common::toy_data(dir, &common::REVERSAL)
}

fn args(bin: &Path, save: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![bin.to_string_lossy().into_owned()];
    args.extend(
        [
            "--arch",
            "transformer_tiny",
            "--cpu",
            "--threads",
            "1",
            "--no-progress-bar",
            "--max-tokens",
            "400",
            "--lr",
            "0.003",
            "--log-interval",
            "1",
            "--save-dir",
        ]
        .map(String::from),
    );
    args.push(save.to_string_lossy().into_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
    TrainConfig::from_args(args(bin, save, extra), &registry()).unwrap()
}

fn run(bin: &Path, save: &Path, extra: &[&str]) -> TrainSummary {
    train::run(&config(bin, save, extra), &registry()).unwrap()
}

/// Deep copies of named tensors.
fn snapshot(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect()
}

fn same(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((n, x), (m, y))| n == m && x.kind() == y.kind() && x.equal(y))
}

#[test]
fn fp16_and_bf16_train_as_well_as_fp32() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let common = ["--max-epoch", "6", "--clip-norm", "1.0", "--no-save"];
    let mut results = Vec::new();
    for (name, flag) in [
        ("fp32", None),
        ("fp16", Some("--fp16")),
        ("bf16", Some("--bf16")),
        ("memory-efficient fp16", Some("--memory-efficient-fp16")),
    ] {
        let mut extra = common.to_vec();
        extra.extend(flag);
        let s = run(&bin, &dir.path().join(name.replace(' ', "-")), &extra);
        assert_eq!(s.epochs.len(), 6, "{name}");
        let valid = s.validations.last().unwrap().metrics.loss;
        let train = s.epochs.last().unwrap().train.loss;
        println!(
            "{name:>22}: final train loss {train:.4}, valid loss {valid:.4} (base 2), \
             {:.0} words/s, loss scale {:?}, {} overflows",
            s.words_per_sec, s.loss_scale, s.overflows
        );
        results.push((name, s.precision, valid, train, s.loss_scale));
    }
    let (_, _, valid32, train32, _) = results[0];
    // In 6 epochs the loss falls from ~5 bits to ~2.8. fp16/bf16 round every weight and
    // activation, so the runs differ, but must agree to within 2% of the fp32 losses
    // (measured: within 0.5%).
    for &(name, precision, valid, train, scale) in &results[1..] {
        assert!((valid - valid32).abs() <= 0.02 * valid32, "{name}: valid {valid} vs {valid32}");
        assert!((train - train32).abs() <= 0.02 * train32, "{name}: train {train} vs {train32}");
        assert_eq!(scale.is_some(), precision == Precision::Fp16, "{name}");
    }
    assert_eq!(results[2].1, Precision::Bf16);
    assert!(valid32 < 3.2, "the task is being learned: {valid32}");
}

/// A batch of the first `n` training sentences.
fn batch(trainer: &Trainer, n: usize) -> Batch {
    let data = trainer.task().load_dataset("train").unwrap();
    data.batch(&(0..n).collect::<Vec<_>>()).unwrap()
}

#[test]
fn an_overflowing_update_is_skipped_and_halves_the_scale() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    for flag in ["--fp16", "--memory-efficient-fp16"] {
        TRAIN_CALLS.store(0, Ordering::SeqCst);
        let cfg = config(
            &bin,
            &dir.path().join(flag.trim_start_matches('-')),
            &[flag, "--criterion", "inf_at", "--inf-from-call", "2", "--inf-to-call", "2"],
        );
        let mut t = Trainer::new(&cfg, &registry()).unwrap();
        let b = [batch(&t, 8)];
        assert_eq!(t.loss_scale(), Some(128.0));
        let first = t.train_step(&b).unwrap();
        assert!(!first.overflow && first.gnorm.is_finite());
        assert_eq!(t.num_updates(), 1);
        let (weights, model, optimizer) = (
            snapshot(t.fp32_parameters()),
            snapshot(t.parameters()),
            snapshot(&t.optimizer_state()),
        );
        // Update 2: the criterion returns an infinite loss.
        let skipped = t.train_step(&b).unwrap();
        assert!(skipped.overflow, "{flag}: {skipped:?}");
        assert!(!skipped.gnorm.is_finite());
        assert_eq!(t.loss_scale(), Some(64.0), "{flag}");
        assert_eq!(t.num_updates(), 1, "{flag}: a skipped update is not counted");
        assert!(same(t.fp32_parameters(), &weights), "{flag}: the fp32 weights changed");
        assert!(same(t.parameters(), &model), "{flag}: the fp16 weights changed");
        assert!(same(&t.optimizer_state(), &optimizer), "{flag}: the optimizer state changed");
        assert_eq!(t.parameters()[0].1.kind(), Kind::Half);
        // The next update goes ahead with the lowered scale.
        let next = t.train_step(&b).unwrap();
        assert!(!next.overflow && next.gnorm.is_finite());
        assert_eq!(t.num_updates(), 2);
        assert!(!same(t.fp32_parameters(), &weights));
        assert_eq!(t.loss_scale(), Some(64.0));
    }
}

#[test]
fn the_scale_doubles_after_the_window_and_is_logged() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("window");
    let s =
        run(&bin, &save, &["--fp16", "--fp16-scale-window", "2", "--max-update", "5", "--no-save"]);
    assert_eq!(s.overflows, 0);
    assert_eq!(s.loss_scale, Some(512.0));
    let scales: Vec<f64> = std::fs::read_to_string(save.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["tag"] == "train_inner")
        .map(|r| r["loss_scale"].as_f64().unwrap())
        .collect();
    // fairseq's DynamicLossScaler: ×2 at every 2nd overflow-free update.
    assert_eq!(scales, [128.0, 256.0, 256.0, 512.0, 512.0]);
    // The default window is 2^14 / update_freq.
    let cfg = config(&bin, &save, &["--fp16", "--update-freq", "4"]);
    assert_eq!(cfg.args.loss_scaler.scale_window(1, cfg.args.update_freq).unwrap(), 4096);
    // No scaler in bf16 or fp32: no loss_scale field.
    let s = run(&bin, &dir.path().join("bf16"), &["--bf16", "--max-update", "2", "--no-save"]);
    assert_eq!(s.loss_scale, None);
}

#[test]
fn min_loss_scale_stops_with_a_usable_checkpoint() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("min");
    TRAIN_CALLS.store(0, Ordering::SeqCst);
    // Updates 1-3 are fine; from the 4th training call on every loss is infinite: the scale
    // goes 4 → 2 → 1, and the next halving would reach --min-loss-scale 0.5.
    let flags = [
        "--fp16",
        "--fp16-init-scale",
        "4",
        "--min-loss-scale",
        "0.5",
        "--criterion",
        "inf_at",
        "--inf-from-call",
        "4",
        "--max-update",
        "50",
    ];
    let err = train::run(&config(&bin, &save, &flags), &registry()).unwrap_err();
    let msg = err.to_string();
    println!("{msg}");
    assert!(
        msg.contains(
            "Minimum loss scale reached (0.5). Your loss is probably exploding. Try lowering \
             the learning rate, using gradient clipping or increasing the batch size."
        ),
        "{msg}"
    );
    let last = save.join("checkpoint_last");
    assert!(msg.contains(&last.display().to_string()), "{msg}");
    assert!(matches!(err, train::Error::MinLossScale { update: 4, .. }), "{err:?}");
    let ckpt = checkpoint::load(&last).unwrap();
    assert_eq!(ckpt.state.num_updates, 3);
    assert_eq!(ckpt.config.precision, Precision::Fp16);
    assert_eq!(ckpt.state.loss_scaler.as_ref().unwrap().loss_scale, 1.0);
    assert!(ckpt.model.iter().all(|(_, t)| !t.is_floating_point() || t.kind() == Kind::Float));
    // It resumes: weights (fp32 masters bit for bit, the fp16 model rounded from them), update
    // count and loss scale.
    TRAIN_CALLS.store(0, Ordering::SeqCst);
    let t = Trainer::new(&config(&bin, &save, &flags[..flags.len() - 4]), &registry()).unwrap();
    assert_eq!(t.num_updates(), 3);
    assert_eq!(t.loss_scale(), Some(1.0));
    for (name, p) in t.fp32_parameters() {
        let (_, saved) = ckpt.model.iter().find(|(n, _)| n == name).unwrap();
        assert!(p.equal(saved), "{name}");
    }
    for (name, p) in t.parameters() {
        let (_, saved) = ckpt.model.iter().find(|(n, _)| n == name).unwrap();
        assert!(p.equal(&saved.to_kind(Kind::Half)), "{name}");
    }
}

#[test]
fn the_binary_stops_at_min_loss_scale_with_a_nonzero_status() {
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("bin");
    // A loss scale of 1e12 overflows fp16 gradients on every update: the scale halves down to
    // the minimum without a single update.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .arg("train")
        .args(args(
            &bin,
            &save,
            &["--fp16", "--fp16-init-scale", "1e12", "--min-loss-scale", "1e9"],
        ))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Minimum loss scale reached (1000000000)"), "{stderr}");
    assert!(
        stderr.contains("gradient overflow detected, ignoring gradient, setting loss scale to:"),
        "{stderr}"
    );
    let ckpt = checkpoint::load(save.join("checkpoint_last")).unwrap();
    assert_eq!(ckpt.state.num_updates, 0);
    let scale = ckpt.state.loss_scaler.unwrap().loss_scale;
    assert!(scale > 1e9 && scale <= 2e9, "{scale}");
}
