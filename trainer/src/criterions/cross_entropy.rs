//! `cross_entropy`: fairseq 0.12.2's `CrossEntropyCriterion`, i.e.
//! `F.nll_loss(lprobs.view(-1, V), target.view(-1), ignore_index=pad, reduction="sum")`.

use serde::{Deserialize, Serialize};
use tch::{Reduction, Tensor};

use super::{Criterion, CriterionConfig, CriterionContext, CriterionOutput, Error};

const NAME: &str = "cross_entropy";

/// Flags and JSON config of `cross_entropy` (it has none of its own; `--sentence-avg` comes
/// from the [`CriterionContext`]).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CrossEntropyConfig {}

impl CriterionConfig for CrossEntropyConfig {
    const NAME: &'static str = NAME;

    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error> {
        Ok(Box::new(CrossEntropy::new(ctx)))
    }
}

/// The negative log-likelihood of the targets, summed over non-padding tokens.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    ctx: CriterionContext,
}

impl CrossEntropy {
    /// The criterion with the given training options.
    pub fn new(ctx: &CriterionContext) -> Self {
        Self { ctx: ctx.clone() }
    }
}

impl Criterion for CrossEntropy {
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
        let (ntokens, nsentences, sample_size) = super::counts(target, pad, &self.ctx)?;
        let loss = lprobs.f_reshape([-1, v])?.f_nll_loss(
            &target.f_reshape([-1])?,
            None::<Tensor>,
            Reduction::Sum,
            pad,
        )?;
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
