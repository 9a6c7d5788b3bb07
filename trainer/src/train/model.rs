//! What the trainer needs from a model ([`Model`]), how a registry builds one by name
//! ([`ModelFactory`], [`Architecture`]), and the list of built-in models (each family's
//! `factory()`, which lives in its own folder under `models/`) and of their architectures.

use std::fmt;

use serde_json::Value;
use tch::{Tensor, nn};

use crate::models::adaptive::AdaptiveSoftmax;
use crate::models::{Error, StepModel};

/// A sequence-to-sequence model the trainer can train: teacher-forced forward pass, normalized
/// probabilities and named parameters.
pub trait Model: Send {
    /// The network output for `prev_output_tokens`, given the (left-padded) source (a language
    /// model ignores the source and reads `prev_output_tokens` as its input): logits
    /// `[batch, tgt_len, vocab]`, or the decoder features when the model ends in an
    /// [`AdaptiveSoftmax`] (see [`Model::adaptive_softmax`]). Dropout only when `train`.
    fn forward(
        &self,
        src_tokens: &Tensor,
        src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor, Error>;

    /// (Log-)probabilities over the vocabulary in fp32 of what [`Model::forward`] returned
    /// (fairseq's `get_normalized_probs`).
    fn get_normalized_probs(&self, logits: &Tensor, log_probs: bool) -> Result<Tensor, Error>;

    /// Trainable parameters under their (fairseq) names, each once.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// `(max source positions, max target positions)` in tokens, EOS included.
    fn max_positions(&self) -> (usize, usize);

    /// What a checkpoint stores: named tensors (by default the parameters; the Transformer
    /// gives fairseq's full state dict, tied aliases and buffers included).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.parameters()
    }

    /// `(alias, parameter)` names of tied weights listed in [`Model::state_dict`] under more
    /// than one name (none by default; see
    /// [`Transformer::tied_parameters`](crate::models::transformer::Transformer::tied_parameters)).
    fn tied_parameters(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The model as a [`StepModel`], which [`TorchDecoder`](crate::models::TorchDecoder)
    /// decodes incrementally (what `--eval-bleu` needs); `None` for a model that cannot.
    fn step_model(&self) -> Option<&dyn StepModel> {
        None
    }

    /// The adaptive softmax the model ends in, if any: then [`Model::forward`] returns decoder
    /// features, which the `adaptive_loss` criterion scores cluster by cluster.
    fn adaptive_softmax(&self) -> Option<&AdaptiveSoftmax> {
        None
    }
}

/// Implements [`Model`] for a model family's type from its inherent methods of the same names
/// (`forward`, `get_normalized_probs`, `parameters`, `tied_parameters`; `fairseq_state_dict` for
/// [`Model::state_dict`]) and its [`StepModel`] implementation, whose
/// [`DecodingInfo`](crate::models::DecodingInfo) gives [`Model::max_positions`]: the one place
/// for the delegation every family shares. `impl_family_model!(Family, adaptive_softmax)` also
/// delegates [`Model::adaptive_softmax`].
macro_rules! impl_family_model {
    ($family:ty) => {
        $crate::train::model::impl_family_model!(@impl $family, {});
    };
    ($family:ty, adaptive_softmax) => {
        $crate::train::model::impl_family_model!(@impl $family, {
            fn adaptive_softmax(&self) -> Option<&$crate::models::adaptive::AdaptiveSoftmax> {
                <$family>::adaptive_softmax(self)
            }
        });
    };
    (@impl $family:ty, { $($extra:tt)* }) => {
        impl $crate::train::model::Model for $family {
            fn forward(
                &self,
                src_tokens: &tch::Tensor,
                src_lengths: &tch::Tensor,
                prev_output_tokens: &tch::Tensor,
                train: bool,
            ) -> Result<tch::Tensor, $crate::models::Error> {
                <$family>::forward(self, src_tokens, src_lengths, prev_output_tokens, train)
            }

            fn get_normalized_probs(
                &self,
                logits: &tch::Tensor,
                log_probs: bool,
            ) -> Result<tch::Tensor, $crate::models::Error> {
                <$family>::get_normalized_probs(self, logits, log_probs)
            }

            fn parameters(&self) -> Vec<(String, tch::Tensor)> {
                <$family>::parameters(self)
            }

            fn max_positions(&self) -> (usize, usize) {
                let info = $crate::models::StepModel::decoding_info(self);
                (info.max_source_positions, info.max_target_positions)
            }

            fn state_dict(&self) -> Vec<(String, tch::Tensor)> {
                self.fairseq_state_dict()
            }

            fn tied_parameters(&self) -> Vec<(String, String)> {
                <$family>::tied_parameters(self)
            }

            fn step_model(&self) -> Option<&dyn $crate::models::StepModel> {
                Some(self)
            }

            $($extra)*
        }
    };
}
pub(crate) use impl_family_model;

/// What a model needs besides its own config: the dictionaries' sizes and padding index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelContext {
    /// Source dictionary size.
    pub src_vocab_size: usize,
    /// Target dictionary size.
    pub tgt_vocab_size: usize,
    /// Padding index of both dictionaries.
    pub pad_index: usize,
}

/// Builds a model from its JSON config under a var-store path.
pub type BuildModel = fn(&nn::Path<'_>, &Value, &ModelContext) -> Result<Box<dyn Model>, Error>;

/// How a registry builds one kind of model by name.
///
/// The flow: the architecture chosen with `--arch` gives the model's name and a preset config
/// (JSON); `augment_args` adds the model's flags to the command; `apply_args` overrides the
/// preset with the flags that were given; `build` makes the model from the resulting JSON.
#[derive(Clone, Copy)]
pub struct ModelFactory {
    /// Adds this model's flags (e.g. `--encoder-layers`) to a `clap::Command`.
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// The preset config (JSON) with the flags given on the command line applied.
    pub apply_args: fn(&clap::ArgMatches, Value) -> Result<Value, Error>,
    /// Builds the model.
    pub build: BuildModel,
    /// A decoder-only (language) model, trained by the `language_modeling` task; otherwise an
    /// encoder-decoder trained by `translation`.
    pub decoder_only: bool,
}

impl fmt::Debug for ModelFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFactory").finish_non_exhaustive()
    }
}

/// A named architecture: which model, and its preset config (JSON) before flag overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// The model's registry name, e.g. `"transformer"`.
    pub model: String,
    /// The preset config, e.g. `transformer_tiny`'s dimensions.
    pub config: Value,
}

/// The models built into seqforge: `transformer`, `lstm`, `fconv` and `transformer_lm`.
pub fn builtin_models() -> Vec<(&'static str, ModelFactory)> {
    vec![
        ("transformer", crate::models::transformer::factory()),
        ("lstm", crate::models::lstm::factory()),
        ("fconv", crate::models::fconv::factory()),
        ("transformer_lm", crate::models::transformer_lm::factory()),
    ]
}

/// The architectures built into seqforge: every preset of every family in
/// [`seqforge_schemas::arch`] (fairseq's names and defaults, shared with the exporter).
pub fn builtin_architectures() -> Vec<(String, Architecture)> {
    seqforge_schemas::arch::architectures()
        .filter_map(|(name, family)| {
            let config = (family.preset)(name)?;
            Some((name.to_string(), Architecture { model: family.name.into(), config }))
        })
        .collect()
}

/// A family's config parsed from its JSON; errors name the family.
pub fn parse_config<T: serde::de::DeserializeOwned>(
    family: &str,
    value: &Value,
) -> Result<T, Error> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::Config(format!("{family} config: {e}")))
}

/// A family's [`ModelFactory::apply_args`]: its flags `A` read from `matches` and applied to the
/// `preset` (config `C`) by `apply`, back to JSON.
pub fn apply_flags<A, C>(
    family: &str,
    matches: &clap::ArgMatches,
    preset: &Value,
    apply: impl FnOnce(&A, C) -> Result<C, Error>,
) -> Result<Value, Error>
where
    A: clap::FromArgMatches,
    C: serde::de::DeserializeOwned + serde::Serialize,
{
    let args = A::from_arg_matches(matches).map_err(|e| Error::Config(e.to_string()))?;
    let config = apply(&args, parse_config(family, preset)?)?;
    serde_json::to_value(config).map_err(|e| Error::Config(format!("{family} config: {e}")))
}

/// `*dst = v` when a flag gave `v` (how every family's flags override a preset).
pub fn set<T: Copy>(dst: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *dst = v;
    }
}

/// The libtorch model of a loaded checkpoint: built by `registry` for the checkpoint's
/// architecture with `ctx`'s dictionary sizes on `device`, its weights loaded (a missing,
/// unexpected or differently shaped tensor is an error naming it). The var store owns the
/// weights: keep it alive with the model.
pub fn load_checkpoint_model(
    ckpt: &crate::checkpoint::Checkpoint,
    registry: &crate::registry::Registry,
    ctx: &ModelContext,
    device: tch::Device,
) -> crate::Result<(nn::VarStore, Box<dyn Model>)> {
    load_checkpoint_model_as(ckpt, registry, ctx, device, tch::Kind::Float)
}

/// [`load_checkpoint_model`] with the model built in `kind` (`Half`/`BFloat16` for 16-bit
/// inference, as fairseq's `model.half()`: parameters, buffers and position tables all in
/// that kind); the checkpoint's weights are rounded into it.
pub fn load_checkpoint_model_as(
    ckpt: &crate::checkpoint::Checkpoint,
    registry: &crate::registry::Registry,
    ctx: &ModelContext,
    device: tch::Device,
    kind: tch::Kind,
) -> crate::Result<(nn::VarStore, Box<dyn Model>)> {
    let arch = registry.architectures.get(&ckpt.config.arch)?;
    let factory = registry.models.get(&arch.model)?;
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let model = (factory.build)(&vs.root(), &ckpt.config.model, ctx)?;
    ckpt.load_model_into(&model.state_dict())?;
    Ok((vs, model))
}
