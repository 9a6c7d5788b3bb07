//! Building blocks of the LSTM model: a parameter scope that records fairseq's state-dict names
//! (and the aliases of tied weights), fairseq's `uniform(-0.1, 0.1)` initialisation and the
//! few layers the encoder and decoder share.

use std::cell::RefCell;

use tch::nn::{self, Init};
use tch::{Kind, Tensor};

use crate::models::{Error, Result};

/// fairseq's `lstm.py` initialises every weight and bias uniformly in `±INIT_BOUND`.
pub(super) const INIT_BOUND: f64 = 0.1;

const UNIFORM: Init = Init::Uniform { lo: -INIT_BOUND, up: INIT_BOUND };

/// One entry of the model's fairseq state dict, in fairseq's order.
pub(super) enum Entry {
    /// A variable of the var store, under its fairseq name.
    Param(String, Tensor),
    /// A name fairseq's state dict also lists for a tied parameter: (alias, canonical).
    Alias(String, String),
}

/// A var-store path plus the fairseq name it stands for, recording every variable created
/// (tch joins path components with `.`, so the var store's names are fairseq's).
pub(super) struct Scope<'a, 'r> {
    path: nn::Path<'a>,
    name: String,
    entries: &'r RefCell<Vec<Entry>>,
}

impl<'a, 'r> Scope<'a, 'r> {
    /// The root scope: fairseq names are relative to `path`.
    pub(super) fn root(path: &nn::Path<'a>, entries: &'r RefCell<Vec<Entry>>) -> Self {
        Self { path: path.clone(), name: String::new(), entries }
    }

    /// The scope of a sub-module.
    pub(super) fn sub(&self, component: impl ToString) -> Scope<'a, 'r> {
        let component = component.to_string();
        let name = if self.name.is_empty() {
            component.clone()
        } else {
            format!("{}.{component}", self.name)
        };
        Scope { path: &self.path / component, name, entries: self.entries }
    }

    /// The fairseq name of `leaf` in this scope.
    pub(super) fn name_of(&self, leaf: &str) -> String {
        if self.name.is_empty() { leaf.to_string() } else { format!("{}.{leaf}", self.name) }
    }

    /// Creates a trainable variable `leaf` initialised uniformly in `±0.1` and records it.
    pub(super) fn uniform(&self, leaf: &str, dims: &[i64]) -> Result<Tensor> {
        if self.path.get(leaf).is_some() {
            return Err(Error::DuplicateVariable(self.path.path(leaf)));
        }
        let tensor = self.path.f_var(leaf, dims, UNIFORM)?;
        self.entries.borrow_mut().push(Entry::Param(self.name_of(leaf), tensor.shallow_clone()));
        Ok(tensor)
    }

    /// Records that fairseq's state dict also lists `leaf` (in this scope) for `canonical`.
    pub(super) fn alias(&self, leaf: &str, canonical: &str) {
        self.entries.borrow_mut().push(Entry::Alias(self.name_of(leaf), canonical.to_string()));
    }
}

/// fairseq's `Linear` of `lstm.py`: `nn.Linear` with weight (and bias) uniform in `±0.1`.
pub(super) struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A linear layer `scope.{weight,bias}` from `in_dim` to `out_dim`.
    pub(super) fn new(
        scope: &Scope<'_, '_>,
        in_dim: i64,
        out_dim: i64,
        bias: bool,
    ) -> Result<Self> {
        let weight = scope.uniform("weight", &[out_dim, in_dim])?;
        let bias = if bias { Some(scope.uniform("bias", &[out_dim])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `x @ weight.T + bias`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.f_linear(&self.weight, self.bias.as_ref())?)
    }
}

/// fairseq's `Embedding` of `lstm.py`: `[num, dim]` uniform in `±0.1`, the padding row zero.
pub(super) fn embedding_weight(
    scope: &Scope<'_, '_>,
    num: i64,
    dim: i64,
    pad: i64,
) -> Result<Tensor> {
    let weight = scope.uniform("weight", &[num, dim])?;
    let _guard = tch::no_grad_guard();
    let _ = weight.f_select(0, pad)?.f_fill_(0.0)?;
    Ok(weight)
}

/// Looks `tokens` up in `weight`; the padding row gets no gradient (as `nn.Embedding`).
pub(super) fn embed(weight: &Tensor, tokens: &Tensor, pad: i64) -> Result<Tensor> {
    Ok(Tensor::f_embedding(weight, tokens, pad, false, false)?)
}

/// Dropout that is the identity outside training or at `p == 0` (fairseq's `FairseqDropout`).
pub(super) fn dropout(x: Tensor, p: f64, train: bool) -> Result<Tensor> {
    if train && p > 0.0 { Ok(x.f_dropout(p, true)?) } else { Ok(x) }
}

/// `value` as `i64`, or a configuration error naming `what`.
pub(super) fn to_i64(value: usize, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| Error::Config(format!("{what} ({value}) is too large")))
}

/// Moves `tokens` to `device` as a 2-D `Int64` tensor, or says why it cannot.
pub(super) fn tokens_2d(tokens: &Tensor, device: tch::Device, what: &str) -> Result<Tensor> {
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
