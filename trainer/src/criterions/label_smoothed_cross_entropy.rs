//! `label_smoothed_cross_entropy`: fairseq 0.12.2's `LabelSmoothedCrossEntropyCriterion`
//! (Szegedy et al. 2016, "Rethinking the Inception Architecture for Computer Vision").
//!
//! With `eps = --label-smoothing`, `V` the vocabulary size and `eps_i = eps / (V - 1)`, summed
//! over non-padding positions: `nll = -lprobs[target]`, `smooth = -sum_v lprobs[v]`, and
//! `loss = (1 - eps - eps_i) * nll + eps_i * smooth` (fairseq's `label_smoothed_nll_loss`; the
//! target class gets weight `1 - eps`, every other class `eps_i`).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{Criterion, CriterionConfig, CriterionContext, CriterionOutput, Error};

const NAME: &str = "label_smoothed_cross_entropy";

/// Flags and JSON config of `label_smoothed_cross_entropy` (fairseq's
/// `LabelSmoothedCrossEntropyCriterionConfig`; `--sentence-avg` comes from the
/// [`CriterionContext`]).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelSmoothedCrossEntropyConfig {
    /// Epsilon for label smoothing, 0 means no label smoothing.
    #[arg(long = "label-smoothing", default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Report the accuracy metric.
    #[arg(long = "report-accuracy")]
    pub report_accuracy: bool,
    /// Ignore the first N target tokens of each sentence.
    #[arg(long = "ignore-prefix-size", default_value_t = 0)]
    pub ignore_prefix_size: u64,
}

impl CriterionConfig for LabelSmoothedCrossEntropyConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error> {
        Ok(Box::new(LabelSmoothedCrossEntropy::new(self.clone(), ctx)?))
    }
}

/// fairseq's `label_smoothed_nll_loss(lprobs, target, epsilon, ignore_index, reduce=True)` on
/// `lprobs` `[N, V]` and `target` `[N]`: returns (loss, nll_loss), both 0-dim sums.
pub fn label_smoothed_nll_loss(
    lprobs: &Tensor,
    target: &Tensor,
    epsilon: f64,
    ignore_index: i64,
) -> Result<(Tensor, Tensor), Error> {
    let v = lprobs.size().last().copied().unwrap_or(0);
    if v < 2 {
        return Err(Error::Shape {
            component: NAME,
            message: format!("label smoothing needs a vocabulary of 2 or more, got {v}"),
        });
    }
    let target = target.f_unsqueeze(-1)?;
    let nll_loss = lprobs.f_gather(-1, &target, false)?.f_neg()?;
    let smooth_loss = lprobs.f_sum_dim_intlist([-1i64].as_slice(), true, None::<Kind>)?.f_neg()?;
    let pad_mask = target.f_eq(ignore_index)?;
    let nll_loss = nll_loss.f_masked_fill(&pad_mask, 0.0)?.f_sum(None::<Kind>)?;
    let smooth_loss = smooth_loss.f_masked_fill(&pad_mask, 0.0)?.f_sum(None::<Kind>)?;
    let eps_i = epsilon / (v - 1) as f64;
    let loss =
        nll_loss.f_mul_scalar(1.0 - epsilon - eps_i)?.f_add(&smooth_loss.f_mul_scalar(eps_i)?)?;
    Ok((loss, nll_loss))
}

/// Cross entropy against targets smoothed towards the uniform distribution.
#[derive(Debug, Clone)]
pub struct LabelSmoothedCrossEntropy {
    cfg: LabelSmoothedCrossEntropyConfig,
    ctx: CriterionContext,
}

impl LabelSmoothedCrossEntropy {
    /// The criterion; `label_smoothing` must be in [0, 1).
    pub fn new(
        cfg: LabelSmoothedCrossEntropyConfig,
        ctx: &CriterionContext,
    ) -> Result<Self, Error> {
        if !(0.0..1.0).contains(&cfg.label_smoothing) {
            return Err(Error::Config {
                component: NAME,
                message: format!(
                    "--label-smoothing must be in [0, 1), got {}",
                    cfg.label_smoothing
                ),
            });
        }
        Ok(Self { cfg, ctx: ctx.clone() })
    }
}

impl Criterion for LabelSmoothedCrossEntropy {
    fn name(&self) -> &'static str {
        NAME
    }

    fn compute(
        &self,
        lprobs: &Tensor,
        target: &Tensor,
        pad: i64,
    ) -> Result<CriterionOutput, Error> {
        let (v, lprobs) = super::check_inputs(NAME, lprobs, target)?;
        // fairseq's sample["ntokens"] counts the whole target.
        let (ntokens, nsentences, sample_size) = super::counts(target, pad, &self.ctx)?;
        let (lprobs, target) = match i64::try_from(self.cfg.ignore_prefix_size) {
            Ok(0) => (lprobs, target.shallow_clone()),
            Ok(p) if target.dim() >= 2 => (
                lprobs.f_slice(1, p, None::<i64>, 1)?.f_contiguous()?,
                target.f_slice(1, p, None::<i64>, 1)?.f_contiguous()?,
            ),
            _ => {
                return Err(Error::Shape {
                    component: NAME,
                    message: format!(
                        "--ignore-prefix-size {} needs target [B, T], got {:?}",
                        self.cfg.ignore_prefix_size,
                        target.size()
                    ),
                });
            }
        };
        let lprobs = lprobs.f_reshape([-1, v])?;
        let target = target.f_reshape([-1])?;
        let (loss, nll) = label_smoothed_nll_loss(&lprobs, &target, self.cfg.label_smoothing, pad)?;
        let nll_loss = nll.f_detach()?.f_double_value(&[])?;
        let (n_correct, total) = if self.cfg.report_accuracy {
            let mask = target.f_ne(pad)?;
            let n_correct = lprobs
                .f_argmax(1, false)?
                .f_masked_select(&mask)?
                .f_eq_tensor(&target.f_masked_select(&mask)?)?
                .f_sum(Kind::Int64)?
                .f_int64_value(&[])?;
            let total = mask.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            (u64::try_from(n_correct).ok(), u64::try_from(total).ok())
        } else {
            (None, None)
        };
        Ok(CriterionOutput { loss, nll_loss, ntokens, nsentences, sample_size, n_correct, total })
    }
}
