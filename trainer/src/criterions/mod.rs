//! Training criteria with fairseq 0.12.2's maths (`fairseq/criterions/`):
//! [`CrossEntropy`] (`cross_entropy`), [`LabelSmoothedCrossEntropy`]
//! (`label_smoothed_cross_entropy`) and [`AdaptiveLoss`] (`adaptive_loss`).
//!
//! A criterion takes the model's fp32 log-probabilities `[B, T, V]` and the targets `[B, T]`
//! ([`Criterion::compute`]; or the model and its raw output, [`Criterion::compute_for`], which
//! `adaptive_loss` needs to score features cluster by cluster) and returns the summed loss over non-padding tokens (natural log, differentiable) with the
//! counts fairseq logs ([`CriterionOutput`]). Gradients are taken on the sum; the trainer divides
//! them by `sample_size` (fairseq's `optimizer.multiply_grads(1 / sample_size)`).
//!
//! For logging, per-batch [`LoggingOutput`]s add up (over batches, accumulation steps and
//! workers) and [`LoggingOutput::metrics`] reports what fairseq prints: `loss` and `nll_loss`
//! per token in base 2 (`sum / sample_size / ln 2`, `nll_sum / ntokens / ln 2`) and
//! `ppl = 2^nll_loss`.

mod adaptive_loss;
mod cross_entropy;
mod label_smoothed_cross_entropy;

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::{Kind, Tensor};

use crate::train::model::Model;

pub use adaptive_loss::{AdaptiveLoss, AdaptiveLossConfig};
pub use cross_entropy::{CrossEntropy, CrossEntropyConfig};
pub use label_smoothed_cross_entropy::{
    LabelSmoothedCrossEntropy, LabelSmoothedCrossEntropyConfig, label_smoothed_nll_loss,
};

/// Errors of criteria.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range.
    #[error("{component}: {message}")]
    Config {
        /// The criterion, e.g. `"label_smoothed_cross_entropy"`.
        component: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The log-probabilities and targets do not fit together.
    #[error("{component}: {message}")]
    Shape {
        /// The criterion.
        component: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A config could not be (de)serialized as JSON.
    #[error("{component}: JSON: {source}")]
    Json {
        /// The criterion.
        component: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Command-line flags could not be turned into a config.
    #[error("{component}: {source}")]
    Args {
        /// The criterion.
        component: &'static str,
        /// The cause.
        #[source]
        source: clap::Error,
    },
    /// A tensor operation failed in libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The model failed to turn its output into what the criterion scores.
    #[error(transparent)]
    Model(#[from] crate::models::Error),
}

/// What a criterion computes for one batch.
#[derive(Debug)]
pub struct CriterionOutput {
    /// The loss summed over non-padding tokens, in nats: a 0-dim fp32 tensor to call
    /// `backward` on.
    pub loss: Tensor,
    /// The negative log-likelihood of the targets summed over non-padding tokens, in nats
    /// (equal to the loss without label smoothing).
    pub nll_loss: f64,
    /// Non-padding target tokens (fairseq's `sample["ntokens"]`; counted before any
    /// `--ignore-prefix-size` cut, as fairseq's collater counts them).
    pub ntokens: u64,
    /// Sentences in the batch (`target.size(0)`).
    pub nsentences: u64,
    /// The gradient denominator: `nsentences` with `--sentence-avg`, else `ntokens`.
    pub sample_size: u64,
    /// With `--report-accuracy`: targets that are the argmax of their distribution.
    pub n_correct: Option<u64>,
    /// With `--report-accuracy`: targets counted for accuracy (non-padding, after the prefix
    /// cut).
    pub total: Option<u64>,
}

impl CriterionOutput {
    /// The numbers to log for this batch (reads the loss value off the tensor).
    pub fn logging_output(&self) -> Result<LoggingOutput, Error> {
        Ok(LoggingOutput {
            loss: self.loss.f_detach()?.f_to_kind(Kind::Double)?.f_double_value(&[])?,
            nll_loss: self.nll_loss,
            ntokens: self.ntokens,
            nsentences: self.nsentences,
            sample_size: self.sample_size,
            n_correct: self.n_correct.unwrap_or(0),
            total: self.total.unwrap_or(0),
        })
    }
}

/// Summable logging numbers (fairseq's `logging_output`): add them up over batches, update-freq
/// steps and workers, then call [`LoggingOutput::metrics`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct LoggingOutput {
    /// Summed loss, nats.
    pub loss: f64,
    /// Summed negative log-likelihood, nats.
    pub nll_loss: f64,
    /// Non-padding target tokens.
    pub ntokens: u64,
    /// Sentences.
    pub nsentences: u64,
    /// Gradient denominators.
    pub sample_size: u64,
    /// Correct argmax predictions (0 without `--report-accuracy`).
    pub n_correct: u64,
    /// Tokens counted for accuracy (0 without `--report-accuracy`).
    pub total: u64,
}

impl AddAssign for LoggingOutput {
    fn add_assign(&mut self, o: Self) {
        self.loss += o.loss;
        self.nll_loss += o.nll_loss;
        self.ntokens += o.ntokens;
        self.nsentences += o.nsentences;
        self.sample_size += o.sample_size;
        self.n_correct += o.n_correct;
        self.total += o.total;
    }
}

impl Add for LoggingOutput {
    type Output = Self;

    fn add(mut self, o: Self) -> Self {
        self += o;
        self
    }
}

impl std::iter::Sum for LoggingOutput {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), Add::add)
    }
}

/// What fairseq reports for summed logging outputs (`reduce_metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Loss per `sample_size` unit, base 2: `loss / sample_size / ln 2`.
    pub loss: f64,
    /// Negative log-likelihood per token, base 2: `nll_loss / ntokens / ln 2`.
    pub nll_loss: f64,
    /// Perplexity, `2^nll_loss`.
    pub ppl: f64,
    /// Accuracy in percent, `100 * n_correct / total`, when accuracy was counted.
    pub accuracy: Option<f64>,
}

impl LoggingOutput {
    /// fairseq's `reduce_metrics` over these sums (unrounded; see [`Metrics::rounded`]).
    ///
    /// For `cross_entropy` fairseq logs `nll_loss` only when `sample_size != ntokens`, and
    /// otherwise takes the perplexity from `loss`; the numbers are the same as here.
    pub fn metrics(&self) -> Metrics {
        let ln2 = std::f64::consts::LN_2;
        let nll_loss = self.nll_loss / self.ntokens as f64 / ln2;
        Metrics {
            loss: self.loss / self.sample_size as f64 / ln2,
            nll_loss,
            ppl: perplexity(nll_loss),
            accuracy: (self.total > 0).then(|| self.n_correct as f64 * 100.0 / self.total as f64),
        }
    }
}

/// fairseq's `get_perplexity` before rounding: `2^loss` (infinite on overflow).
pub fn perplexity(loss_base2: f64) -> f64 {
    2f64.powf(loss_base2)
}

/// Python's `round(x, digits)` (correctly rounded, ties to even), as fairseq's `safe_round`.
pub fn safe_round(x: f64, digits: usize) -> f64 {
    if !x.is_finite() {
        return x;
    }
    format!("{x:.digits$}").parse().unwrap_or(x)
}

impl Metrics {
    /// Rounded as fairseq prints them: loss, nll_loss and accuracy to 3 decimals, ppl to 2.
    pub fn rounded(&self) -> Self {
        Self {
            loss: safe_round(self.loss, 3),
            nll_loss: safe_round(self.nll_loss, 3),
            ppl: safe_round(self.ppl, 2),
            accuracy: self.accuracy.map(|a| safe_round(a, 3)),
        }
    }
}

/// A training criterion over log-probabilities and targets.
pub trait Criterion: Send {
    /// The registry name, e.g. `"cross_entropy"`.
    fn name(&self) -> &'static str;

    /// The loss of `lprobs` (`[B, T, V]` log-probabilities, fp32; fp16/bf16 are upcast) for
    /// `target` (`[B, T]` int64 indices), ignoring positions where the target is `pad`.
    fn compute(&self, lprobs: &Tensor, target: &Tensor, pad: i64)
    -> Result<CriterionOutput, Error>;

    /// The loss of `model`'s output `net_output` (what [`Model::forward`] returned, computed
    /// with dropout iff `train`) for `target`: what the trainer calls. By default the model's
    /// fp32 log-probabilities go to [`Criterion::compute`]; `adaptive_loss` overrides it.
    fn compute_for(
        &self,
        model: &dyn Model,
        net_output: &Tensor,
        target: &Tensor,
        pad: i64,
        train: bool,
    ) -> Result<CriterionOutput, Error> {
        let _ = train;
        self.compute(&model.get_normalized_probs(net_output, true)?, target, pad)
    }
}

/// The training options a criterion reads besides its own flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CriterionContext {
    /// `--sentence-avg`: normalize gradients per sentence (`sample_size = nsentences`) instead
    /// of per token.
    pub sentence_avg: bool,
}

/// A config that builds one kind of [`Criterion`]: its flags (`clap::Args`, fairseq's names
/// and defaults) and its JSON form (serde).
pub trait CriterionConfig:
    clap::Args + Serialize + DeserializeOwned + Default + fmt::Debug + 'static
{
    /// The registry name, e.g. `"label_smoothed_cross_entropy"`.
    const NAME: &'static str;

    /// Checks the values and builds the criterion.
    fn build(&self, ctx: &CriterionContext) -> Result<Box<dyn Criterion>, Error>;
}

/// Builds a criterion from its JSON config and the training options.
pub type BuildCriterion =
    fn(&serde_json::Value, &CriterionContext) -> Result<Box<dyn Criterion>, Error>;

/// How a registry builds one criterion by name. Made by [`CriterionFactory::of`].
///
/// The intended flow: `augment_args` adds the flags of the criterion chosen with `--criterion`,
/// `config_from_matches` turns the parsed flags into JSON (store it with the checkpoint), and
/// `build` makes the criterion from that JSON (missing fields take fairseq's defaults; unknown
/// fields are an error).
#[derive(Clone, Copy)]
pub struct CriterionFactory {
    /// Adds this criterion's flags to a `clap::Command` (`clap::Args::augment_args`).
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// Reads this criterion's config from parsed flags, as JSON.
    pub config_from_matches: fn(&clap::ArgMatches) -> Result<serde_json::Value, Error>,
    /// The default config (fairseq's defaults), as JSON.
    pub default_config: fn() -> Result<serde_json::Value, Error>,
    /// Builds the criterion from a JSON config and the training options.
    pub build: BuildCriterion,
}

impl fmt::Debug for CriterionFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CriterionFactory").finish_non_exhaustive()
    }
}

impl CriterionFactory {
    /// The factory of the criterion configured by `C`.
    pub fn of<C: CriterionConfig>() -> Self {
        Self {
            augment_args: <C as clap::Args>::augment_args,
            config_from_matches: |m| {
                let cfg = C::from_arg_matches(m)
                    .map_err(|source| Error::Args { component: C::NAME, source })?;
                to_json(C::NAME, &cfg)
            },
            default_config: || to_json(C::NAME, &C::default()),
            build: |value, ctx| {
                C::deserialize(value)
                    .map_err(|source| Error::Json { component: C::NAME, source })?
                    .build(ctx)
            },
        }
    }
}

fn to_json<T: Serialize>(component: &'static str, value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|source| Error::Json { component, source })
}

/// The criteria built into seqforge, by fairseq name: `cross_entropy`,
/// `label_smoothed_cross_entropy`, `adaptive_loss`.
pub fn builtin_criterions() -> Vec<(&'static str, CriterionFactory)> {
    vec![
        (CrossEntropyConfig::NAME, CriterionFactory::of::<CrossEntropyConfig>()),
        (
            LabelSmoothedCrossEntropyConfig::NAME,
            CriterionFactory::of::<LabelSmoothedCrossEntropyConfig>(),
        ),
        (AdaptiveLossConfig::NAME, CriterionFactory::of::<AdaptiveLossConfig>()),
    ]
}

/// Checks that `lprobs` is `[..., V]` over `target`'s `[...]` (int64), returns `V` and
/// `lprobs` as fp32 (fairseq's `get_normalized_probs` returns fp32).
pub(crate) fn check_inputs(
    component: &'static str,
    lprobs: &Tensor,
    target: &Tensor,
) -> Result<(i64, Tensor), Error> {
    let shape_error = |message: String| Error::Shape { component, message };
    let (ls, ts) = (lprobs.size(), target.size());
    if ls.len() != ts.len() + 1 || ls[..ts.len()] != ts[..] || ts.is_empty() {
        return Err(shape_error(format!(
            "lprobs {ls:?} must be target {ts:?} plus a vocabulary dim (target [B, T])"
        )));
    }
    if target.kind() != Kind::Int64 {
        return Err(shape_error(format!("target must be int64, got {:?}", target.kind())));
    }
    let lprobs = match lprobs.kind() {
        Kind::Float => lprobs.shallow_clone(),
        Kind::Half | Kind::BFloat16 | Kind::Double => lprobs.f_to_kind(Kind::Float)?,
        other => return Err(shape_error(format!("lprobs must be floating point, got {other:?}"))),
    };
    Ok((ls[ls.len() - 1], lprobs))
}

/// (ntokens, nsentences, sample_size) of a batch, as fairseq's collater and criteria count them.
pub(crate) fn counts(
    target: &Tensor,
    pad: i64,
    ctx: &CriterionContext,
) -> Result<(u64, u64, u64), Error> {
    let ntokens = target.f_ne(pad)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let ntokens = u64::try_from(ntokens).unwrap_or(0);
    let nsentences = u64::try_from(target.size()[0]).unwrap_or(0);
    let sample_size = if ctx.sentence_avg { nsentences } else { ntokens };
    Ok((ntokens, nsentences, sample_size))
}

#[cfg(test)]
mod tests;
