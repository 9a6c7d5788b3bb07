//! A criterion defined outside the core crate is registered in a `Registry` and trained with,
//! with its own flag, through the same command line as the built-in ones: plugins need no
//! change to the core.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use seqforge_trainer::criterions::{
    Criterion, CriterionConfig, CriterionContext, CriterionFactory, CriterionOutput, Error,
};
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig};
use serde::{Deserialize, Serialize};
use tch::{Kind, Reduction, Tensor};

/// How many batches the plugin saw.
static CALLS: AtomicUsize = AtomicUsize::new(0);

/// Config of the plugin: cross entropy times a constant factor.
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScaledCrossEntropyConfig {
    /// The factor applied to the summed negative log-likelihood.
    #[arg(long = "loss-factor", default_value_t = 1.0)]
    loss_factor: f64,
}

impl Default for ScaledCrossEntropyConfig {
    fn default() -> Self {
        Self { loss_factor: 1.0 }
    }
}

impl CriterionConfig for ScaledCrossEntropyConfig {
    const NAME: &'static str = "scaled_cross_entropy";

    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error> {
        Ok(Box::new(ScaledCrossEntropy { factor: self.loss_factor, ctx: ctx.clone() }))
    }
}

struct ScaledCrossEntropy {
    factor: f64,
    ctx: CriterionContext,
}

impl Criterion for ScaledCrossEntropy {
    fn name(&self) -> &'static str {
        ScaledCrossEntropyConfig::NAME
    }

    fn compute(
        &self,
        lprobs: &Tensor,
        target: &Tensor,
        pad: i64,
    ) -> Result<CriterionOutput, Error> {
        CALLS.fetch_add(1, Ordering::SeqCst);
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
            loss: nll.f_mul_scalar(self.factor)?,
            nll_loss,
            ntokens,
            nsentences,
            sample_size: if self.ctx.sentence_avg { nsentences } else { ntokens },
            n_correct: None,
            total: None,
        })
    }
}

/// A small reversal task, binarized with the real `preprocess`.
fn toy_data(dir: &Path) -> PathBuf {
    common::toy_data(
        dir,
        &common::ToyTask {
            seed: 0x9e37_79b9_7f4a_7c15,
            langs: ("xx", "yy"),
            lines: (200, 30),
            extra_len: 5,
        },
    )
}

#[test]
fn a_plugin_criterion_trains_through_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let mut registry = Registry::with_builtins().unwrap();
    // Unknown until registered…
    let args = |save: &str| {
        vec![
            bin.to_string_lossy().into_owned(),
            "--arch=transformer_tiny".into(),
            "--criterion".into(),
            "scaled_cross_entropy".into(),
            "--loss-factor".into(),
            "3".into(),
            "--save-dir".into(),
            dir.path().join(save).to_string_lossy().into_owned(),
            "--cpu".into(),
            "--threads".into(),
            "1".into(),
            "--no-progress-bar".into(),
            "--no-save".into(),
            "--max-tokens".into(),
            "300".into(),
            "--lr".into(),
            "0.003".into(),
            "--max-update".into(),
            "120".into(),
            "--validate-interval-updates".into(),
            "40".into(),
        ]
    };
    let e = TrainConfig::from_args(args("a"), &registry).unwrap_err().to_string();
    assert!(e.contains("unknown criterion \"scaled_cross_entropy\""), "{e}");
    // …then usable, with its flag, without touching the core crate.
    registry
        .criterions
        .register(
            ScaledCrossEntropyConfig::NAME,
            CriterionFactory::of::<ScaledCrossEntropyConfig>(),
        )
        .unwrap();
    let cfg = TrainConfig::from_args(args("b"), &registry).unwrap();
    assert_eq!(cfg.criterion_config["loss_factor"], 3.0);
    let summary = train::run(&cfg, &registry).unwrap();
    assert!(CALLS.load(Ordering::SeqCst) >= 120);
    assert_eq!(summary.num_updates, 120);
    // The logged loss is the plugin's: 3 × the negative log-likelihood.
    let last = summary.validations.last().unwrap();
    assert!((last.logging.loss - 3.0 * last.logging.nll_loss).abs() < 1e-6 * last.logging.loss);
    let first = &summary.validations[0];
    assert!(last.metrics.nll_loss < first.metrics.nll_loss, "{summary:?}");
}
