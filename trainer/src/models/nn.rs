//! Building blocks every family on libtorch shares: a parameter [`Scope`] that records
//! fairseq's state-dict names (variables, tied aliases, buffers) as it creates variables, and
//! the small tensor helpers (embedding lookup, dropout, token checks) that the families' layers
//! use alike.

use std::cell::RefCell;

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::models::{Error, Result};

/// One entry of the model's fairseq state dict, in fairseq's order.
pub(crate) enum Entry {
    /// A variable of the var store, under its fairseq name.
    Param(String, Tensor),
    /// A name that fairseq's state dict also lists for a tied parameter: (alias, canonical).
    Alias(String, String),
    /// A buffer fairseq keeps in its state dict (`version`, `_float_tensor`); not a variable.
    Buffer(String, Tensor),
}

/// A var-store path plus the fairseq name it stands for, recording every variable created.
pub(crate) struct Scope<'a, 'r> {
    path: nn::Path<'a>,
    name: String,
    entries: &'r RefCell<Vec<Entry>>,
}

impl<'a, 'r> Scope<'a, 'r> {
    /// The root scope: fairseq names are relative to `path`.
    pub(crate) fn root(path: &nn::Path<'a>, entries: &'r RefCell<Vec<Entry>>) -> Self {
        Self { path: path.clone(), name: String::new(), entries }
    }

    /// The scope of a sub-module.
    pub(crate) fn sub(&self, component: impl ToString) -> Scope<'a, 'r> {
        let component = component.to_string();
        let name = if self.name.is_empty() {
            component.clone()
        } else {
            format!("{}.{component}", self.name)
        };
        Scope { path: &self.path / component, name, entries: self.entries }
    }

    /// The fairseq name of `leaf` in this scope.
    pub(crate) fn name_of(&self, leaf: &str) -> String {
        if self.name.is_empty() { leaf.to_string() } else { format!("{}.{leaf}", self.name) }
    }

    /// The device variables are created on.
    pub(crate) fn device(&self) -> tch::Device {
        self.path.device()
    }

    /// The float kind variables are created with.
    pub(crate) fn kind(&self) -> Kind {
        self.path.kind()
    }

    /// Creates a trainable variable `leaf` and records it.
    pub(crate) fn var(&self, leaf: &str, dims: &[i64], init: Init) -> Result<Tensor> {
        if self.path.get(leaf).is_some() {
            return Err(Error::DuplicateVariable(self.path.path(leaf)));
        }
        let tensor = self.path.f_var(leaf, dims, init)?;
        self.entries.borrow_mut().push(Entry::Param(self.name_of(leaf), tensor.shallow_clone()));
        Ok(tensor)
    }

    /// Records that fairseq's state dict also lists `leaf` (in this scope) for `canonical`.
    pub(crate) fn alias(&self, leaf: &str, canonical: &str) {
        self.entries.borrow_mut().push(Entry::Alias(self.name_of(leaf), canonical.to_string()));
    }

    /// Records a fairseq buffer `leaf` (not a variable of the var store).
    pub(crate) fn buffer(&self, leaf: &str, tensor: Tensor) {
        self.entries.borrow_mut().push(Entry::Buffer(self.name_of(leaf), tensor));
    }
}

/// Looks `tokens` up in `weight`; the padding row gets no gradient (as `nn.Embedding`).
pub(crate) fn embed(weight: &Tensor, tokens: &Tensor, padding_idx: i64) -> Result<Tensor> {
    Ok(Tensor::f_embedding(weight, tokens, padding_idx, false, false)?)
}

/// Dropout that is the identity outside training or at `p == 0` (fairseq's `FairseqDropout`).
pub(crate) fn dropout(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 { Ok(x.f_dropout(p, true)?) } else { Ok(x) }
}

/// fairseq's `utils.make_positions`: non-padding tokens are numbered `padding_idx + 1, …` along
/// dim 1, padding tokens get `padding_idx`. `tokens` is `[batch, len]`; the result is `Int64`.
pub fn make_positions(tokens: &Tensor, padding_idx: i64) -> Result<Tensor> {
    let mask = tokens.f_ne(padding_idx)?.f_to_kind(Kind::Int)?;
    let numbered = mask.f_cumsum(1, Kind::Int)?.f_mul(&mask)?;
    Ok(numbered.f_to_kind(Kind::Int64)? + padding_idx)
}

/// `value` as `i64`, or a configuration error naming `what`.
pub(crate) fn to_i64(value: usize, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Config(format!("{what} ({value}) is too large")))
}

/// Moves `tokens` to `device` as a 2-D `Int64` tensor, or says why it cannot.
pub(crate) fn tokens_2d(tokens: &Tensor, device: tch::Device, what: &str) -> Result<Tensor> {
    if tokens.dim() != 2 {
        return Err(Error::Input(format!(
            "{what} must be [batch, len], got shape {:?}",
            tokens.size()
        )));
    }
    if !matches!(tokens.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8) {
        return Err(Error::Input(format!(
            "{what} must hold integer token ids, got {:?}",
            tokens.kind()
        )));
    }
    Ok(tokens.f_to_device(device)?.f_to_kind(Kind::Int64)?)
}

/// The parameters among `entries` under their fairseq names, in order; a tied parameter
/// appears once, under its first name.
pub(crate) fn parameters(entries: &[Entry]) -> Vec<(String, Tensor)> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Param(name, t) => Some((name.clone(), t.shallow_clone())),
            _ => None,
        })
        .collect()
}

/// The `(alias, parameter)` names of the tied weights among `entries`.
pub(crate) fn tied_parameters(entries: &[Entry]) -> Vec<(String, String)> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Alias(alias, canonical) => Some((alias.clone(), canonical.clone())),
            _ => None,
        })
        .collect()
}

/// `entries` as fairseq's `state_dict()` lists them, in order: parameters and buffers, and each
/// tied alias with the tensor of its parameter.
pub(crate) fn state_dict(entries: &[Entry]) -> Vec<(String, Tensor)> {
    let find = |name: &str| {
        entries.iter().find_map(|e| match e {
            Entry::Param(n, t) if n == name => Some(t.shallow_clone()),
            _ => None,
        })
    };
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Param(name, t) | Entry::Buffer(name, t) => {
                Some((name.clone(), t.shallow_clone()))
            }
            Entry::Alias(alias, canonical) => find(canonical).map(|t| (alias.clone(), t)),
        })
        .collect()
}

/// The shape checks of a teacher-forced forward pass (fairseq's `model(src_tokens,
/// src_lengths, prev_output_tokens)`): `src_lengths` is `[batch]` and `prev_output_tokens` has
/// the same batch as `src_tokens`.
pub(crate) fn check_forward_inputs(
    src_tokens: &Tensor,
    src_lengths: &Tensor,
    prev_output_tokens: &Tensor,
) -> Result<()> {
    let batch = src_tokens.size().first().copied().unwrap_or(0);
    if src_lengths.size() != [batch] {
        return Err(Error::Input(format!(
            "src_lengths must be [{batch}], got {:?}",
            src_lengths.size()
        )));
    }
    if prev_output_tokens.size().first().copied() != Some(batch) {
        return Err(Error::Input(format!(
            "prev_output_tokens has shape {:?}, expected a batch of {batch}",
            prev_output_tokens.size()
        )));
    }
    Ok(())
}

/// fairseq's `get_normalized_probs`: (log-)softmax over the last axis, in fp32.
pub(crate) fn normalized_probs(logits: &Tensor, log_probs: bool) -> Result<Tensor> {
    Ok(if log_probs {
        logits.f_log_softmax(-1, Kind::Float)?
    } else {
        logits.f_softmax(-1, Kind::Float)?
    })
}

/// A bias-free linear weight `scope.weight` of shape `[out_dim, in_dim]`, xavier-uniform
/// (fairseq's `Linear(…, bias=False)` helpers, `AdaptiveInput`'s and `AdaptiveSoftmax`'s
/// projections).
pub(crate) fn xavier_weight(scope: &Scope<'_, '_>, in_dim: i64, out_dim: i64) -> Result<Tensor> {
    let bound = (6.0 / (in_dim + out_dim) as f64).sqrt();
    scope.var("weight", &[out_dim, in_dim], Init::Uniform { lo: -bound, up: bound })
}
