//! `adaptive_loss`: fairseq 0.12.2's `AdaptiveLoss` (`fairseq/criterions/adaptive_loss.py`), the
//! loss of a model that ends in an adaptive softmax: the summed cross-entropy of the head over
//! band-0 words and cluster ids plus each tail's over its own words, every part with
//! `ignore_index = pad` (see [`AdaptiveSoftmax::loss`](crate::models::adaptive::AdaptiveSoftmax::loss)).
//! As fairseq logs it, `nll_loss` is the loss.
//!
//! fairseq refuses it with the PyTorch DDP backends (`c10d`/`pytorch_ddp`: unused tail
//! parameters); seqforge's gradient all-reduce sums every parameter's gradient, present or
//! not, so no such restriction applies here.

use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{Criterion, CriterionConfig, CriterionContext, CriterionOutput, Error};
use crate::train::model::Model;

const NAME: &str = "adaptive_loss";

/// Flags and JSON config of `adaptive_loss` (none of its own; `--sentence-avg` comes from the
/// [`CriterionContext`]).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveLossConfig {}

impl CriterionConfig for AdaptiveLossConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error> {
        Ok(Box::new(AdaptiveLoss { ctx: ctx.clone() }))
    }
}

/// The adaptive softmax's loss; needs a model with an adaptive softmax
/// ([`Criterion::compute_for`]).
#[derive(Debug, Clone)]
pub struct AdaptiveLoss {
    ctx: CriterionContext,
}

impl AdaptiveLoss {
    /// The criterion with the given training options.
    pub fn new(ctx: &CriterionContext) -> Self {
        Self { ctx: ctx.clone() }
    }
}

fn needs_model() -> Error {
    Error::Config {
        component: NAME,
        message: "adaptive_loss scores decoder features through the model's adaptive softmax; \
                  it cannot work on log-probabilities alone"
            .into(),
    }
}

impl Criterion for AdaptiveLoss {
    fn name(&self) -> &'static str {
        NAME
    }

    fn compute(
        &self,
        _lprobs: &Tensor,
        _target: &Tensor,
        _pad: i64,
    ) -> Result<CriterionOutput, Error> {
        Err(needs_model())
    }

    fn compute_for(
        &self,
        model: &dyn Model,
        net_output: &Tensor,
        target: &Tensor,
        pad: i64,
        train: bool,
    ) -> Result<CriterionOutput, Error> {
        let adaptive = model.adaptive_softmax().ok_or_else(|| Error::Config {
            component: NAME,
            message: "the model has no adaptive softmax (set --adaptive-softmax-cutoff, or use \
                      --criterion cross_entropy)"
                .into(),
        })?;
        if target.kind() != tch::Kind::Int64 {
            return Err(Error::Shape {
                component: NAME,
                message: format!("target must be int64, got {:?}", target.kind()),
            });
        }
        let (ntokens, nsentences, sample_size) = super::counts(target, pad, &self.ctx)?;
        let loss = adaptive.loss(net_output, target, pad, train)?;
        let nll_loss = loss.f_detach()?.f_double_value(&[])?;
        Ok(CriterionOutput {
            loss,
            nll_loss,
            ntokens,
            nsentences,
            sample_size,
            n_correct: None,
            total: None,
        })
    }
}
