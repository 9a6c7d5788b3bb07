//! Optimizers and learning-rate schedulers with fairseq 0.12.2's semantics, written over `tch`
//! tensors so that their whole state can be saved and restored bit for bit.
//!
//! Optimizers ([`Optimizer`]): [`Adam`] (fairseq's `FairseqAdam`, decoupled weight decay),
//! [`Nag`] (fairseq's `NAG`), [`Sgd`] (`torch.optim.SGD` as fairseq's `sgd` builds it) and
//! [`Adafactor`] (fairseq's `Adafactor`). Each updates fp32 (master) parameters in place under
//! `no_grad` from the gradients attached to them; parameters without a gradient are skipped, as
//! fairseq does. The learning rate is passed to every [`Optimizer::step`]: it lives in the
//! scheduler ([`lr_scheduler`]), not in the optimizer.
//!
//! State is a list of named tensors (see [`Optimizer::state`]): per-parameter moments named
//! `"<optimizer>.<field>.<parameter name>"` (e.g. `adam.exp_avg.encoder.layers.0.fc1.weight`),
//! per-parameter step counters as 0-dim int64 tensors (`adam.step.<parameter name>`) and
//! optimizer-wide values as 0-dim float64 tensors (`nag.lr_old`). Loading it into a fresh
//! optimizer of the same configuration and stepping on gives the same bits as never stopping.
//!
//! Every optimizer, scheduler and criterion comes with a config struct that is both a
//! `clap::Args` (fairseq's flag names and defaults) and a serde type (the JSON stored with a
//! checkpoint), and a factory ([`OptimizerFactory`], [`LrSchedulerFactory`]) that a registry can
//! hold by name: [`builtin_optimizers`], [`builtin_lr_schedulers`].

mod adafactor;
mod adam;
pub mod lr_scheduler;
mod nag;
mod sgd;
pub(crate) mod util;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::Tensor;

pub use adafactor::{Adafactor, AdafactorConfig};
pub use adam::{Adam, AdamConfig};
pub use lr_scheduler::{
    LrScheduler, LrSchedulerConfig, LrSchedulerFactory, ScheduleContext, builtin_lr_schedulers,
};
pub use nag::{Nag, NagConfig};
pub use sgd::{Sgd, SgdConfig};

/// Errors of optimizers and learning-rate schedulers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent (fairseq would assert or raise).
    #[error("{component}: {message}")]
    Config {
        /// The optimizer or scheduler, e.g. `"adam"`.
        component: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A value such as `--adam-betas "(0.9, 0.98)"` could not be parsed.
    #[error("cannot parse {what} from {input:?}: {message}")]
    Parse {
        /// What was expected, e.g. "a pair of floats".
        what: &'static str,
        /// The text given.
        input: String,
        /// Why it failed.
        message: String,
    },
    /// A saved state entry does not fit this optimizer or scheduler.
    #[error("{component} state: {key}: {message}")]
    State {
        /// The optimizer or scheduler, e.g. `"adam"`.
        component: &'static str,
        /// The state entry (tensor name or JSON field).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A config or scheduler state could not be (de)serialized as JSON.
    #[error("{component}: JSON: {source}")]
    Json {
        /// The optimizer or scheduler, e.g. `"cosine"`.
        component: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Command-line flags could not be turned into a config.
    #[error("{component}: {source}")]
    Args {
        /// The optimizer or scheduler, e.g. `"nag"`.
        component: &'static str,
        /// The cause.
        #[source]
        source: clap::Error,
    },
    /// A tensor operation failed in libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// An optimizer over named fp32 parameters with fairseq's update rule.
///
/// Implementations keep per-parameter state keyed by parameter name, created on the first step
/// that sees a gradient for that parameter (like `torch.optim`).
pub trait Optimizer: Send {
    /// The registry name, e.g. `"adam"`.
    fn name(&self) -> &'static str;

    /// Updates every parameter that has a gradient, in place and without recording autograd
    /// history, with learning rate `lr` (the scheduler's current value).
    ///
    /// `params` are (name, tensor) pairs; the tensors are the fp32 master weights with
    /// `.grad()` set (fp16/bf16 gradients are upcast; fp16/bf16 parameters are updated through an
    /// fp32 copy, as fairseq does). Parameters whose gradient is undefined are skipped.
    fn step(&mut self, params: &[(String, Tensor)], lr: f64) -> Result<(), Error>;

    /// The whole state as named tensors, ready to be written into a checkpoint.
    ///
    /// The tensors alias the live state (no copy is made): write them out before the next
    /// [`Optimizer::step`], or deep-copy them to keep a snapshot.
    fn state(&self) -> Vec<(String, Tensor)>;

    /// Replaces the whole state by `named` (as returned by [`Optimizer::state`]). The tensors
    /// are copied; they are moved to each parameter's device and dtype on the next step.
    fn load_state(&mut self, named: &[(String, Tensor)]) -> Result<(), Error>;
}

/// A config that builds one kind of [`Optimizer`]: its flags (`clap::Args`, fairseq's names
/// and defaults) and its JSON form (serde, stored with a checkpoint).
pub trait OptimizerConfig:
    clap::Args + Serialize + DeserializeOwned + Default + fmt::Debug + 'static
{
    /// The registry name, e.g. `"adam"`.
    const NAME: &'static str;

    /// Checks the values and builds the optimizer.
    fn build(&self) -> Result<Box<dyn Optimizer>, Error>;
}

/// How a registry builds one optimizer by name. Made by [`OptimizerFactory::of`].
///
/// The intended flow: `augment_args` adds the flags of the optimizer chosen with `--optimizer`
/// to the command, `config_from_matches` turns the parsed flags into JSON (store it with the
/// checkpoint), and `build` makes the optimizer from that JSON (missing fields take fairseq's
/// defaults; unknown fields are an error).
#[derive(Clone, Copy)]
pub struct OptimizerFactory {
    /// Adds this optimizer's flags to a `clap::Command` (`clap::Args::augment_args`).
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// Reads this optimizer's config from parsed flags, as JSON.
    pub config_from_matches: fn(&clap::ArgMatches) -> Result<serde_json::Value, Error>,
    /// The default config (fairseq's defaults), as JSON.
    pub default_config: fn() -> Result<serde_json::Value, Error>,
    /// Builds the optimizer from a JSON config.
    pub build: fn(&serde_json::Value) -> Result<Box<dyn Optimizer>, Error>,
}

impl fmt::Debug for OptimizerFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OptimizerFactory").finish_non_exhaustive()
    }
}

impl OptimizerFactory {
    /// The factory of the optimizer configured by `C`.
    pub fn of<C: OptimizerConfig>() -> Self {
        Self {
            augment_args: <C as clap::Args>::augment_args,
            config_from_matches: |m| util::config_from_matches::<C>(C::NAME, m),
            default_config: || util::to_json(C::NAME, &C::default()),
            build: |value| util::from_json::<C>(C::NAME, value)?.build(),
        }
    }
}

/// The optimizers built into seqforge, by fairseq name: `adam`, `nag`, `sgd`, `adafactor`.
pub fn builtin_optimizers() -> Vec<(&'static str, OptimizerFactory)> {
    vec![
        (AdamConfig::NAME, OptimizerFactory::of::<AdamConfig>()),
        (NagConfig::NAME, OptimizerFactory::of::<NagConfig>()),
        (SgdConfig::NAME, OptimizerFactory::of::<SgdConfig>()),
        (AdafactorConfig::NAME, OptimizerFactory::of::<AdafactorConfig>()),
    ]
}

/// A pair of floats written the way fairseq's flags take them (`--adam-betas "(0.9, 0.98)"`,
/// `--adafactor-eps "(1e-30, 1e-3)"`), which fairseq `eval`s as a Python tuple.
///
/// Parsing accepts `(a, b)`, `[a, b]` and `a, b`; the JSON form is the string `"(a, b)"`, and an
/// array `[a, b]` is accepted too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FloatPair(pub f64, pub f64);

impl FromStr for FloatPair {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let fail = |message: String| Error::Parse {
            what: "a pair of floats like \"(0.9, 0.98)\"",
            input: s.to_owned(),
            message,
        };
        let t = s.trim();
        let t = match (t.chars().next(), t.chars().last()) {
            (Some('('), Some(')')) | (Some('['), Some(']')) => &t[1..t.len() - 1],
            _ => t,
        };
        let parts: Vec<&str> = t.split(',').map(str::trim).collect();
        let parts: Vec<&str> = match parts.as_slice() {
            // A trailing comma is fine in Python: "(0.9, 0.98,)".
            [a, b, ""] => vec![a, b],
            _ => parts,
        };
        match parts.as_slice() {
            [a, b] => {
                let a = a.parse::<f64>().map_err(|e| fail(format!("{a:?}: {e}")))?;
                let b = b.parse::<f64>().map_err(|e| fail(format!("{b:?}: {e}")))?;
                Ok(Self(a, b))
            }
            _ => Err(fail(format!("expected 2 values, found {}", parts.len()))),
        }
    }
}

impl fmt::Display for FloatPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "({:?}, {:?})", self.0, self.1)
    }
}

impl Serialize for FloatPair {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for FloatPair {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Array(f64, f64),
        }
        match Repr::deserialize(deserializer)? {
            Repr::Text(s) => s.parse().map_err(serde::de::Error::custom),
            Repr::Array(a, b) => Ok(Self(a, b)),
        }
    }
}

#[cfg(test)]
mod tests;
