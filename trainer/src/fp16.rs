//! Mixed-precision training as fairseq 0.12.2 does it (`fairseq/optim/dynamic_loss_scaler.py`,
//! `fairseq/optim/fp16_optimizer.py`, `fairseq.utils.clip_grad_norm_`).
//!
//! - [`DynamicLossScaler`]: the loss is multiplied by a scale (initially 2^7,
//!   `--fp16-init-scale`) before `backward`; an inf/NaN gradient norm halves the scale and skips
//!   the update ([`GradCheck::Overflow`]); after `scale_window` overflow-free updates the scale
//!   doubles; a scale at or below `--min-loss-scale` stops training with
//!   [`Error::MinLossScaleReached`]. Its whole state is serde ([`LossScalerState`]) so a
//!   checkpoint resumes it exactly (fairseq keeps only `loss_scale`).
//! - [`MasterWeights`]: fp32 copies of fp16/bf16 model parameters. The optimizer updates the
//!   copies; gradients are copied fp16 → fp32 and **unscaled (×1/scale) before clipping and
//!   before the norm is computed**, so the norm that is logged and compared with `--clip-norm`
//!   is the true one (fairseq issue #4555); after the optimizer step the copies are written
//!   back to the model.
//! - [`unscale_clip_and_check_in_place`]: the same for `--memory-efficient-fp16`/`-bf16`
//!   (fairseq's `MemoryEfficientFP16Optimizer`): no master copy; the norm is measured on the
//!   16-bit gradients and the unscaling and clipping factors are applied to them in place, once.
//! - [`clip_grad_norm`]: fairseq's `clip_grad_norm_` (returns the norm before clipping;
//!   `max_norm == 0` only measures).
//!
//! One fp16 update, in fairseq's order:
//!
//! ```text
//! master.zero_grad()?;                          // model grads and fp32 grads to zero
//! let loss = scaler.scale(&loss)?; loss.backward();
//! match master.unscale_clip_and_check(Some(&mut scaler), clip_norm, 1.0 / sample_size)? {
//!     // (may also fail: Error::MinLossScaleReached)
//!     GradCheck::Overflow { .. } => { /* skip: no optimizer step, scale already halved */ }
//!     GradCheck::Finite { grad_norm } => {
//!         optimizer.step(master.params(), lr)?;
//!         master.finish_step(Some(&mut scaler))?;   // scaler.update() + fp32 → fp16 copy
//!     }
//! }
//! ```
//!
//! With `--bf16` the same calls are made with no scaler (`None`): bf16 has fp32's range, so
//! fairseq disables loss scaling; a non-finite gradient norm is then an error
//! ([`Error::NonFiniteGradients`], fairseq's "gradients are Nan/Inf").

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Errors of mixed-precision training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The loss scale fell to `--min-loss-scale`: training cannot go on (fairseq raises
    /// `FloatingPointError` with this message).
    #[error(
        "Minimum loss scale reached ({min_loss_scale}). Your loss is probably exploding. Try \
         lowering the learning rate, using gradient clipping or increasing the batch size."
    )]
    MinLossScaleReached {
        /// `--min-loss-scale`.
        min_loss_scale: f64,
        /// The scale kept (the one before the overflow that would have crossed the minimum).
        loss_scale: f64,
    },
    /// The gradient norm is inf or NaN and there is no loss scaler to absorb it (fp32 or bf16
    /// training; fairseq: "gradients are Nan/Inf").
    #[error("gradients are Nan/Inf (gradient norm {grad_norm})")]
    NonFiniteGradients {
        /// The norm found.
        grad_norm: f64,
    },
    /// A loss-scaler option is out of range.
    #[error("loss scaler: {0}")]
    Config(String),
    /// The model parameters given do not match the master weights.
    #[error("master weights: {0}")]
    Mismatch(String),
    /// A tensor operation failed in libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exact `f64` serde (shared with the optimizers' and schedulers' states).
pub(crate) use crate::optim::util::exact_f64;

/// The numeric format of training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// fp32 everywhere: no master copy, no scaler.
    #[default]
    Fp32,
    /// `--fp16`: fp16 model, fp32 master weights, dynamic loss scaling.
    Fp16,
    /// `--bf16`: bf16 model, fp32 master weights, no loss scaling.
    Bf16,
}

impl Precision {
    /// From fairseq's flags (`--bf16` implies fp16 in fairseq; here either flag picks its
    /// format, `--bf16` winning).
    pub fn from_flags(fp16: bool, bf16: bool) -> Self {
        match (fp16, bf16) {
            (_, true) => Self::Bf16,
            (true, false) => Self::Fp16,
            (false, false) => Self::Fp32,
        }
    }

    /// The model's parameter kind.
    pub fn kind(self) -> Kind {
        match self {
            Self::Fp32 => Kind::Float,
            Self::Fp16 => Kind::Half,
            Self::Bf16 => Kind::BFloat16,
        }
    }

    /// Whether the model keeps fp32 master weights ([`MasterWeights`]).
    pub fn uses_master_weights(self) -> bool {
        !matches!(self, Self::Fp32)
    }

    /// Whether the loss is scaled ([`DynamicLossScaler`]): fp16 only.
    pub fn uses_loss_scaler(self) -> bool {
        matches!(self, Self::Fp16)
    }
}

/// Options of the [`DynamicLossScaler`]: fairseq's flags and defaults (JSON via serde).
#[derive(Debug, Clone, PartialEq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossScalerConfig {
    /// Initial loss scale.
    #[arg(long = "fp16-init-scale", default_value_t = 128.0)]
    #[serde(with = "exact_f64")]
    pub fp16_init_scale: f64,
    /// Overflow-free updates before the scale grows (default: 2^14 / (world size × update
    /// freq), see [`LossScalerConfig::scale_window`]).
    #[arg(long = "fp16-scale-window")]
    pub fp16_scale_window: Option<u64>,
    /// Fraction of overflowing updates since the last rescale tolerated before the scale is
    /// lowered (0: every overflow lowers it).
    #[arg(long = "fp16-scale-tolerance", default_value_t = 0.0)]
    #[serde(with = "exact_f64")]
    pub fp16_scale_tolerance: f64,
    /// Minimum loss scale: training stops with an error when the scale would reach it.
    #[arg(long = "min-loss-scale", default_value_t = 1e-4)]
    #[serde(with = "exact_f64")]
    pub min_loss_scale: f64,
    /// Floor the scale at this value when lowering it.
    #[arg(long = "threshold-loss-scale")]
    #[serde(with = "exact_f64::option")]
    pub threshold_loss_scale: Option<f64>,
}

impl Default for LossScalerConfig {
    fn default() -> Self {
        Self {
            fp16_init_scale: 128.0,
            fp16_scale_window: None,
            fp16_scale_tolerance: 0.0,
            min_loss_scale: 1e-4,
            threshold_loss_scale: None,
        }
    }
}

impl LossScalerConfig {
    /// The scale window: `--fp16-scale-window` when given, else fairseq's
    /// `int(2**14 / data_parallel_size / update_freq)`.
    pub fn scale_window(&self, world_size: usize, update_freq: usize) -> Result<u64> {
        if let Some(w) = self.fp16_scale_window {
            return Ok(w);
        }
        if world_size == 0 || update_freq == 0 {
            return Err(Error::Config(format!(
                "world size ({world_size}) and update freq ({update_freq}) must be positive"
            )));
        }
        // Python's int(float) truncates, as u64 division does.
        Ok((1u64 << 14) / world_size as u64 / update_freq as u64)
    }
}

/// What [`DynamicLossScaler::check_overflow`] and [`MasterWeights::unscale_clip_and_check`]
/// decide about one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum GradCheck {
    /// The gradients are finite: take the optimizer step.
    Finite {
        /// The gradient norm (unscaled, before clipping).
        grad_norm: f64,
    },
    /// inf/NaN gradients: skip this update (the scale has been lowered; fairseq's
    /// `OverflowError("setting loss scale to: …")`).
    Overflow {
        /// The norm found (inf or NaN).
        grad_norm: f64,
        /// The loss scale now in force.
        new_scale: f64,
    },
}

impl GradCheck {
    /// Whether the update must be skipped.
    pub fn is_overflow(&self) -> bool {
        matches!(self, Self::Overflow { .. })
    }

    /// The gradient norm found.
    pub fn grad_norm(&self) -> f64 {
        match *self {
            Self::Finite { grad_norm } | Self::Overflow { grad_norm, .. } => grad_norm,
        }
    }
}

/// Everything in a [`DynamicLossScaler`] that changes while training (fairseq's attribute
/// names), for checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScalerState {
    /// The current scale.
    #[serde(with = "exact_f64")]
    pub loss_scale: f64,
    /// Updates and overflows seen (`_iter`).
    pub iter: i64,
    /// `_iter` at the last overflow (-1: none).
    pub last_overflow_iter: i64,
    /// `_iter` at the last change of scale (-1: none).
    pub last_rescale_iter: i64,
    /// Overflows since that change.
    pub overflows_since_rescale: u64,
}

/// fairseq's `DynamicLossScaler` (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct DynamicLossScaler {
    scale_factor: f64,
    scale_window: u64,
    tolerance: f64,
    threshold: Option<f64>,
    min_loss_scale: f64,
    state: LossScalerState,
}

impl DynamicLossScaler {
    /// A scaler with fairseq's semantics; `world_size` and `update_freq` give the default
    /// scale window. The scale factor is 2, as in fairseq (not a flag there).
    pub fn new(config: &LossScalerConfig, world_size: usize, update_freq: usize) -> Result<Self> {
        let window = config.scale_window(world_size, update_freq)?;
        Self::with_options(
            config.fp16_init_scale,
            2.0,
            window,
            config.fp16_scale_tolerance,
            config.threshold_loss_scale,
            config.min_loss_scale,
        )
    }

    /// A scaler with every option given (fairseq's constructor arguments).
    pub fn with_options(
        init_scale: f64,
        scale_factor: f64,
        scale_window: u64,
        tolerance: f64,
        threshold: Option<f64>,
        min_loss_scale: f64,
    ) -> Result<Self> {
        let bad = |m: String| Err(Error::Config(m));
        if !(init_scale.is_finite() && init_scale > 0.0) {
            return bad(format!("initial scale must be positive and finite, got {init_scale}"));
        }
        if !(scale_factor.is_finite() && scale_factor > 1.0) {
            return bad(format!("scale factor must be > 1, got {scale_factor}"));
        }
        if scale_window == 0 {
            return bad(
                "scale window must be positive (2^14 / (world size × update freq) is 0: give \
                 --fp16-scale-window)"
                    .to_owned(),
            );
        }
        if tolerance.is_nan() || min_loss_scale.is_nan() {
            return bad("tolerance and min loss scale must be numbers".to_owned());
        }
        Ok(Self {
            scale_factor,
            scale_window,
            tolerance,
            threshold,
            min_loss_scale,
            state: LossScalerState {
                loss_scale: init_scale,
                iter: 0,
                last_overflow_iter: -1,
                last_rescale_iter: -1,
                overflows_since_rescale: 0,
            },
        })
    }

    /// The current loss scale.
    pub fn loss_scale(&self) -> f64 {
        self.state.loss_scale
    }

    /// The scale window in use.
    pub fn scale_window(&self) -> u64 {
        self.scale_window
    }

    /// `loss × scale` (call `backward` on this).
    pub fn scale(&self, loss: &Tensor) -> Result<Tensor> {
        Ok(loss.f_mul_scalar(self.state.loss_scale)?)
    }

    /// After a successful optimizer step: counts the update and multiplies the scale by the
    /// factor when `scale_window` updates have passed since the last overflow.
    pub fn update(&mut self) {
        let s = &mut self.state;
        let since = s.iter - s.last_overflow_iter;
        // `since` is >= 1; the window fits i64 for any sensible value.
        if since.rem_euclid(i64::try_from(self.scale_window).unwrap_or(i64::MAX)) == 0 {
            s.loss_scale *= self.scale_factor;
            s.last_rescale_iter = s.iter;
        }
        s.iter += 1;
    }

    fn decrease_loss_scale(&mut self) {
        self.state.loss_scale /= self.scale_factor;
        if let Some(t) = self.threshold {
            self.state.loss_scale = self.state.loss_scale.max(t);
        }
    }

    /// Looks at the (unscaled) gradient norm of an update: finite → [`GradCheck::Finite`]; inf
    /// or NaN → the scale is lowered (subject to the tolerance) and [`GradCheck::Overflow`]
    /// says to skip the update, or [`Error::MinLossScaleReached`] when the new scale would be
    /// at or below the minimum (the scale is then left as it was, as in fairseq).
    pub fn check_overflow(&mut self, grad_norm: f64) -> Result<GradCheck> {
        if grad_norm.is_finite() {
            return Ok(GradCheck::Finite { grad_norm });
        }
        let prev_scale = self.state.loss_scale;
        let since_rescale = self.state.iter - self.state.last_rescale_iter;
        self.state.last_overflow_iter = self.state.iter;
        self.state.overflows_since_rescale += 1;
        let pct = self.state.overflows_since_rescale as f64 / since_rescale.max(1) as f64;
        if pct >= self.tolerance {
            self.decrease_loss_scale();
            self.state.last_rescale_iter = self.state.iter;
            self.state.overflows_since_rescale = 0;
        }
        if self.state.loss_scale <= self.min_loss_scale {
            self.state.loss_scale = prev_scale;
            return Err(Error::MinLossScaleReached {
                min_loss_scale: self.min_loss_scale,
                loss_scale: prev_scale,
            });
        }
        self.state.iter += 1;
        Ok(GradCheck::Overflow { grad_norm, new_scale: self.state.loss_scale })
    }

    /// The state to save in a checkpoint.
    pub fn state(&self) -> LossScalerState {
        self.state.clone()
    }

    /// Restores a state returned by [`DynamicLossScaler::state`].
    pub fn load_state(&mut self, state: &LossScalerState) -> Result<()> {
        if !(state.loss_scale.is_finite() && state.loss_scale > 0.0) {
            return Err(Error::Config(format!(
                "saved loss scale {} is not a positive number",
                state.loss_scale
            )));
        }
        self.state = state.clone();
        Ok(())
    }
}

/// fairseq's `clip_grad_norm_`: the L2 norm over all gradients of `params` (each gradient's
/// norm in fp32, then the norm of those), returned as it was **before** clipping; when
/// `max_norm > 0` every gradient is multiplied by `min(max_norm / (norm + 1e-6), 1)`.
///
/// Parameters without a gradient are ignored (no gradient at all: 0). An inf/NaN norm is
/// returned as is and the gradients are then left alone (the caller skips or fails the
/// update; fairseq would multiply them by NaN).
pub fn clip_grad_norm(params: &[(String, Tensor)], max_norm: f64) -> Result<f64> {
    clip_with(params, max_norm, ClipRule::Eps)
}

/// How the clip coefficient is computed.
#[derive(Clone, Copy)]
enum ClipRule {
    /// `utils.clip_grad_norm_`: `min(max_norm / (norm + 1e-6), 1)`.
    Eps,
    /// `FP16Optimizer.clip_grad_norm` with a scaler: `max_norm / norm` when `norm > max_norm`.
    Exact,
}

fn clip_with(params: &[(String, Tensor)], max_norm: f64, rule: ClipRule) -> Result<f64> {
    let mut norms = Vec::new();
    let mut grads = Vec::new();
    for (_, p) in params {
        let g = p.f_grad()?;
        if g.defined() {
            // torch.norm(g, p=2, dtype=torch.float32)
            norms.push(g.f_to_kind(Kind::Float)?.f_norm()?);
            grads.push(g);
        }
    }
    let total = match norms.len() {
        0 => return Ok(0.0),
        1 => norms.swap_remove(0),
        _ => Tensor::f_stack(&norms, 0)?.f_norm()?,
    };
    let total = total.f_double_value(&[])?;
    if max_norm > 0.0 && total.is_finite() {
        let coef = match rule {
            ClipRule::Eps => (max_norm / (total + 1e-6)).min(1.0),
            ClipRule::Exact if total > max_norm => max_norm / total,
            ClipRule::Exact => 1.0,
        };
        if coef != 1.0 {
            let _guard = tch::no_grad_guard();
            for mut g in grads {
                let _ = g.f_mul_scalar_(coef)?;
            }
        }
    }
    Ok(total)
}

/// fp32 master copies of a model's fp16/bf16 parameters (fairseq's `FP16Optimizer` without
/// flattening); see the module docs for the order of calls.
///
/// The copies are leaf tensors with a gradient always defined, so [`MasterWeights::params`]
/// can go straight to [`crate::optim::Optimizer::step`] and to a checkpoint.
#[derive(Debug)]
pub struct MasterWeights {
    model: Vec<(String, Tensor)>,
    master: Vec<(String, Tensor)>,
}

impl MasterWeights {
    /// fp32 copies of `model_params` (name, parameter) — the model's own tensors, e.g.
    /// [`crate::models::transformer::Transformer::parameters`] of a half-precision var store, which are kept
    /// (shallow clones) to copy gradients from and weights back to. Parameters that do not
    /// require a gradient (frozen) are left out, as fairseq only optimizes trainable ones.
    ///
    /// Must not be called inside `no_grad` (each copy gets a zero gradient through a backward).
    pub fn new(model_params: &[(String, Tensor)]) -> Result<Self> {
        let model_params: Vec<&(String, Tensor)> =
            model_params.iter().filter(|(_, p)| p.requires_grad()).collect();
        let mut master = Vec::with_capacity(model_params.len());
        for (name, p) in &model_params {
            let m = tch::no_grad(|| p.f_detach()?.f_to_dtype(Kind::Float, false, true))?;
            let m = m.set_requires_grad(true);
            // Give the copy a (zero) gradient so later copies can write into it in place.
            m.f_sum(Kind::Float)?.f_mul_scalar(0.0)?.f_backward()?;
            master.push((name.clone(), m));
        }
        let model = model_params.iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect();
        Ok(Self { model, master })
    }

    /// The fp32 parameters (with their gradients), for the optimizer and checkpoints.
    pub fn params(&self) -> &[(String, Tensor)] {
        &self.master
    }

    /// Zeroes the model's gradients and the fp32 ones (call before each forward/backward).
    pub fn zero_grad(&mut self) {
        for (_, p) in self.model.iter_mut().chain(self.master.iter_mut()) {
            p.zero_grad();
        }
    }

    /// Copies the model's gradients into the fp32 gradients (zeros where the model has none)
    /// and multiplies them by `multiplier` (`1 / loss_scale`), in fp32.
    pub fn sync_grads(&mut self, multiplier: f64) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((name, p), (_, m)) in self.model.iter().zip(&self.master) {
            let mut mg = m.f_grad()?;
            if !mg.defined() {
                return Err(Error::Mismatch(format!("{name}: the fp32 copy lost its gradient")));
            }
            let g = p.f_grad()?;
            if g.defined() {
                mg.f_copy_(&g)?;
                if multiplier != 1.0 {
                    let _ = mg.f_mul_scalar_(multiplier)?;
                }
            } else {
                let _ = mg.f_zero_()?;
            }
        }
        Ok(())
    }

    /// fairseq's `multiply_grads` + `clip_grad_norm` + overflow check: copies the gradients to
    /// fp32, multiplies them by `grad_multiplier / scale` (`grad_multiplier` is the trainer's
    /// `1 / sample_size`; `scale` is 1 without a `scaler`), **then** computes the norm and clips
    /// to `max_norm` (0: no clipping); the norm returned is the true (unscaled) one, before
    /// clipping. With a scaler, a non-finite norm lowers the scale and returns
    /// [`GradCheck::Overflow`] (or fails with [`Error::MinLossScaleReached`]); without one it
    /// fails with [`Error::NonFiniteGradients`].
    pub fn unscale_clip_and_check(
        &mut self,
        scaler: Option<&mut DynamicLossScaler>,
        max_norm: f64,
        grad_multiplier: f64,
    ) -> Result<GradCheck> {
        let multiplier = grad_multiplier * scaler.as_ref().map_or(1.0, |s| 1.0 / s.loss_scale());
        self.sync_grads(multiplier)?;
        match scaler {
            Some(scaler) => {
                let norm = clip_with(&self.master, max_norm, ClipRule::Exact)?;
                scaler.check_overflow(norm)
            }
            None => {
                let norm = clip_with(&self.master, max_norm, ClipRule::Eps)?;
                if norm.is_finite() {
                    Ok(GradCheck::Finite { grad_norm: norm })
                } else {
                    Err(Error::NonFiniteGradients { grad_norm: norm })
                }
            }
        }
    }

    /// Copies the fp32 parameters back into the model (rounding to its kind).
    pub fn copy_to_model(&mut self) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for ((_, p), (_, m)) in self.model.iter_mut().zip(&self.master) {
            p.f_copy_(m)?;
        }
        Ok(())
    }

    /// After the optimizer step: `scaler.update()` (when given), then
    /// [`MasterWeights::copy_to_model`] (fairseq's `FP16Optimizer.step` tail).
    pub fn finish_step(&mut self, scaler: Option<&mut DynamicLossScaler>) -> Result<()> {
        if let Some(s) = scaler {
            s.update();
        }
        self.copy_to_model()
    }

    /// Overwrites the fp32 copies (e.g. from a checkpoint's fp32 model tensors, matched by
    /// name; shapes must agree) and writes them to the model.
    pub fn load_fp32(&mut self, named: &[(String, Tensor)]) -> Result<()> {
        let _guard = tch::no_grad_guard();
        for (name, m) in &mut self.master {
            let Some((_, src)) = named.iter().find(|(n, _)| n == name) else {
                return Err(Error::Mismatch(format!("no tensor named {name}")));
            };
            if src.size() != m.size() {
                return Err(Error::Mismatch(format!(
                    "{name}: shape {:?}, expected {:?}",
                    src.size(),
                    m.size()
                )));
            }
            m.f_copy_(src)?;
        }
        self.copy_to_model()
    }
}

/// fairseq's `MemoryEfficientFP16Optimizer` gradient handling, for 16-bit parameters updated
/// in place (no fp32 master copy; the optimizer upcasts each parameter and gradient to fp32
/// for its step and keeps its state in fp32):
///
/// the gradient norm is measured on the (scaled) 16-bit gradients, each in fp32, and multiplied
/// by `grad_multiplier / scale`; with a `scaler` a norm above `max_norm > 0` folds
/// `max_norm / norm` into the multiplier and a non-finite norm is an overflow (see
/// [`DynamicLossScaler::check_overflow`]); without one a non-finite norm is
/// [`Error::NonFiniteGradients`] and clipping uses `min(max_norm / (norm + 1e-6), 1)`. When the
/// update goes ahead, the gradients are multiplied once, in place and in their own kind, by
/// the combined factor (fairseq's `_unscale_grads`). Returns the true norm before clipping.
pub fn unscale_clip_and_check_in_place(
    params: &[(String, Tensor)],
    scaler: Option<&mut DynamicLossScaler>,
    max_norm: f64,
    grad_multiplier: f64,
) -> Result<GradCheck> {
    let mut factor = grad_multiplier * scaler.as_ref().map_or(1.0, |s| 1.0 / s.loss_scale());
    let grad_norm = factor * clip_with(params, 0.0, ClipRule::Eps)?;
    match scaler {
        Some(scaler) => {
            if max_norm > 0.0 && grad_norm > max_norm {
                factor *= max_norm / grad_norm;
            }
            let check = scaler.check_overflow(grad_norm)?;
            if check.is_overflow() {
                return Ok(check);
            }
        }
        None => {
            if !grad_norm.is_finite() {
                return Err(Error::NonFiniteGradients { grad_norm });
            }
            if max_norm > 0.0 {
                factor *= (max_norm / (grad_norm + 1e-6)).min(1.0);
            }
        }
    }
    if factor != 1.0 {
        let _guard = tch::no_grad_guard();
        for (_, p) in params {
            let mut g = p.f_grad()?;
            if g.defined() {
                let _ = g.f_mul_scalar_(factor)?;
            }
        }
    }
    Ok(GradCheck::Finite { grad_norm })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn scaler(window: u64) -> Result<DynamicLossScaler> {
        let cfg = LossScalerConfig { fp16_scale_window: Some(window), ..Default::default() };
        DynamicLossScaler::new(&cfg, 1, 1)
    }

    /// A parameter of `kind` with gradient exactly `g` (backward of `sum(p * g)`).
    fn param_with_grad(values: &[f32], g: &[f32], kind: Kind) -> Result<Tensor> {
        let p = Tensor::f_from_slice(values)?.f_to_kind(kind)?.set_requires_grad(true);
        let gt = Tensor::f_from_slice(g)?.f_to_kind(kind)?;
        p.f_mul(&gt)?.f_sum(kind)?.f_backward()?;
        Ok(p)
    }

    fn values(t: &Tensor) -> Result<Vec<f32>> {
        Ok(Vec::<f32>::try_from(t.f_to_kind(Kind::Float)?.f_flatten(0, -1)?)?)
    }

    #[test]
    fn defaults_are_fairseqs() -> TestResult {
        let cfg = LossScalerConfig::default();
        assert_eq!(cfg.scale_window(1, 1)?, 16384);
        assert_eq!(cfg.scale_window(8, 2)?, 1024);
        assert_eq!(cfg.scale_window(3, 1)?, 5461);
        let s = DynamicLossScaler::new(&cfg, 1, 1)?;
        assert_eq!(s.loss_scale(), 128.0);
        assert!(matches!(scaler(0), Err(Error::Config(_))));
        let json = serde_json::to_value(&cfg)?;
        assert_eq!(serde_json::from_value::<LossScalerConfig>(json)?, cfg);
        Ok(())
    }

    #[test]
    fn flags_are_fairseqs() -> TestResult {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            scaler: LossScalerConfig,
        }
        let cli = <Cli as clap::Parser>::try_parse_from(["x"])?;
        assert_eq!(cli.scaler, LossScalerConfig::default());
        let cli = <Cli as clap::Parser>::try_parse_from([
            "x",
            "--fp16-init-scale",
            "4",
            "--fp16-scale-window",
            "10",
            "--fp16-scale-tolerance",
            "0.25",
            "--min-loss-scale",
            "0.5",
            "--threshold-loss-scale",
            "1",
        ])?;
        let s = DynamicLossScaler::new(&cli.scaler, 8, 8)?;
        assert_eq!((s.loss_scale(), s.scale_window()), (4.0, 10));
        assert_eq!(cli.scaler.threshold_loss_scale, Some(1.0));
        assert_eq!(cli.scaler.min_loss_scale, 0.5);
        Ok(())
    }

    #[test]
    fn overflow_halves_and_skips() -> TestResult {
        let mut s = scaler(4)?;
        assert_eq!(s.check_overflow(3.0)?, GradCheck::Finite { grad_norm: 3.0 });
        s.update();
        let c = s.check_overflow(f64::INFINITY)?;
        assert!(c.is_overflow());
        assert_eq!(c, GradCheck::Overflow { grad_norm: f64::INFINITY, new_scale: 64.0 });
        assert!(s.check_overflow(f64::NAN)?.is_overflow());
        assert_eq!(s.loss_scale(), 32.0);
        Ok(())
    }

    #[test]
    fn scale_doubles_after_window() -> TestResult {
        let mut s = scaler(3)?;
        // Fresh: the scale grows at the 3rd clean update.
        for _ in 0..2 {
            s.update();
        }
        assert_eq!(s.loss_scale(), 128.0);
        s.update();
        assert_eq!(s.loss_scale(), 256.0);
        // After an overflow, again 3 clean updates are needed.
        s.check_overflow(f64::INFINITY)?;
        assert_eq!(s.loss_scale(), 128.0);
        s.update();
        s.update();
        assert_eq!(s.loss_scale(), 128.0);
        s.update();
        assert_eq!(s.loss_scale(), 256.0);
        Ok(())
    }

    #[test]
    fn tolerance_and_threshold() -> TestResult {
        let mut s = DynamicLossScaler::with_options(128.0, 2.0, 100, 0.5, Some(100.0), 1e-4)?;
        for _ in 0..3 {
            s.update();
        }
        // 1 overflow in 4 iterations since the start (-1): 25% < 50%, scale kept.
        assert!(s.check_overflow(f64::NAN)?.is_overflow());
        assert_eq!(s.loss_scale(), 128.0);
        // 2 in 5: still < 50%; 3 in 6: 50% → lowered, floored at the threshold.
        s.check_overflow(f64::NAN)?;
        assert_eq!(s.loss_scale(), 128.0);
        s.check_overflow(f64::NAN)?;
        assert_eq!(s.loss_scale(), 100.0);
        Ok(())
    }

    #[test]
    fn min_scale_reached_is_an_error() -> TestResult {
        let mut s = DynamicLossScaler::with_options(1.0, 2.0, 10, 0.0, None, 0.25)?;
        assert!(s.check_overflow(f64::INFINITY)?.is_overflow());
        assert_eq!(s.loss_scale(), 0.5);
        let err = s.check_overflow(f64::INFINITY);
        let Err(e @ Error::MinLossScaleReached { .. }) = err else {
            return Err(format!("expected MinLossScaleReached, got {err:?}").into());
        };
        assert!(e.to_string().starts_with("Minimum loss scale reached (0.25). Your loss is"));
        assert_eq!(s.loss_scale(), 0.5, "fairseq restores the previous scale");
        Ok(())
    }

    #[test]
    fn state_round_trips_through_json() -> TestResult {
        let mut s = scaler(5)?;
        s.update();
        s.check_overflow(f64::NAN)?;
        s.update();
        let json = serde_json::to_string(&s.state())?;
        let mut t = scaler(5)?;
        t.load_state(&serde_json::from_str(&json)?)?;
        assert_eq!(s, t);
        for _ in 0..7 {
            s.update();
            t.update();
        }
        assert_eq!(s, t);
        Ok(())
    }

    #[test]
    fn clip_grad_norm_fairseq_semantics() -> TestResult {
        let a = param_with_grad(&[1.0, 1.0], &[3.0, 0.0], Kind::Float)?;
        let b = param_with_grad(&[1.0], &[4.0], Kind::Float)?;
        let none = Tensor::f_from_slice(&[1f32])?;
        let params = vec![("a".into(), a), ("b".into(), b), ("none".into(), none)];
        // max_norm 0: measure only.
        assert_eq!(clip_grad_norm(&params, 0.0)?, 5.0);
        assert_eq!(values(&params[1].1.f_grad()?)?, vec![4.0]);
        // Returns the norm before clipping; clips to max_norm (up to the 1e-6).
        assert_eq!(clip_grad_norm(&params, 1.0)?, 5.0);
        let after = clip_grad_norm(&params, 0.0)?;
        assert!((after - 1.0).abs() < 1e-6, "{after}");
        // A norm under max_norm is left alone.
        assert!((clip_grad_norm(&params, 10.0)? - after).abs() < 1e-12);
        assert_eq!(clip_grad_norm(&[], 1.0)?, 0.0);
        // inf detected, grads untouched.
        let c = param_with_grad(&[1.0], &[f32::INFINITY], Kind::Float)?;
        assert_eq!(clip_grad_norm(&[("c".into(), c)], 1.0)?, f64::INFINITY);
        Ok(())
    }

    #[test]
    fn master_copy_round_trip_is_exact() -> TestResult {
        let vals = [0.1f32, -2.5, 3.0e-5, 65000.0, 1.0 / 3.0];
        for kind in [Kind::Half, Kind::BFloat16] {
            let p = Tensor::f_from_slice(&vals)?.f_to_kind(kind)?.set_requires_grad(true);
            let before = values(&p)?;
            let mut mw = MasterWeights::new(&[("w".to_owned(), p.shallow_clone())])?;
            assert_eq!(mw.params()[0].1.kind(), Kind::Float);
            // Every half value is exactly representable in fp32.
            assert_eq!(values(&mw.params()[0].1)?, before);
            mw.copy_to_model()?;
            assert_eq!(values(&p)?, before);
            // fp32 → model rounds to the model kind, exactly as to_kind does.
            let new = Tensor::f_from_slice(&[1.0001f32, 2.0, 3.0, 4.0, 5.0])?;
            mw.load_fp32(&[("w".to_owned(), new.shallow_clone())])?;
            assert_eq!(values(&p)?, values(&new.f_to_kind(kind)?)?);
            assert!(mw.load_fp32(&[("x".to_owned(), new)]).is_err());
        }
        Ok(())
    }

    #[test]
    fn unscale_happens_before_clip_and_norm() -> TestResult {
        // True gradient (3, 4): norm 5. The loss was scaled by 128, so the fp16 grads are
        // (384, 512); the reported norm must be 5, not 640, and clipping acts on 5.
        let mut s = scaler(100)?;
        let p = param_with_grad(&[0.0, 0.0], &[384.0, 512.0], Kind::Half)?;
        let mut mw = MasterWeights::new(&[("w".to_owned(), p.shallow_clone())])?;
        let check = mw.unscale_clip_and_check(Some(&mut s), 1.0, 1.0)?;
        assert_eq!(check, GradCheck::Finite { grad_norm: 5.0 });
        let g = values(&mw.params()[0].1.f_grad()?)?;
        assert!((g[0] - 0.6).abs() < 1e-6 && (g[1] - 0.8).abs() < 1e-6, "{g:?}");
        // Without clipping the unscaled grads are exact.
        let mut mw = MasterWeights::new(&[("w".to_owned(), p.shallow_clone())])?;
        assert_eq!(mw.unscale_clip_and_check(Some(&mut s), 0.0, 1.0)?.grad_norm(), 5.0);
        assert_eq!(values(&mw.params()[0].1.f_grad()?)?, vec![3.0, 4.0]);
        Ok(())
    }

    #[test]
    fn injected_inf_or_nan_skips_the_step() -> TestResult {
        for bad in [f32::INFINITY, f32::NAN] {
            let mut s = scaler(100)?;
            let p = param_with_grad(&[1.0, 2.0], &[1.0, bad], Kind::Half)?;
            let before = values(&p)?;
            let mut mw = MasterWeights::new(&[("w".to_owned(), p.shallow_clone())])?;
            let check = mw.unscale_clip_and_check(Some(&mut s), 0.1, 1.0)?;
            assert!(check.is_overflow(), "{check:?}");
            assert_eq!(s.loss_scale(), 64.0);
            // The caller skips the optimizer step: nothing changes in the model.
            assert_eq!(values(&p)?, before);
            // bf16/fp32 path (no scaler): an error.
            let q = param_with_grad(&[1.0], &[bad], Kind::BFloat16)?;
            let mut mw = MasterWeights::new(&[("w".to_owned(), q)])?;
            assert!(matches!(
                mw.unscale_clip_and_check(None, 0.0, 1.0),
                Err(Error::NonFiniteGradients { .. })
            ));
        }
        Ok(())
    }

    #[test]
    fn in_place_unscale_clip_and_check() -> TestResult {
        // Scaled by 128 and summed over 2 tokens: fp16 grads (768, 1024) → true norm 5.
        let mut s = scaler(100)?;
        let p = param_with_grad(&[0.0, 0.0], &[768.0, 1024.0], Kind::Half)?;
        let params = [("w".to_owned(), p.shallow_clone())];
        let check = unscale_clip_and_check_in_place(&params, Some(&mut s), 0.0, 0.5)?;
        assert_eq!(check, GradCheck::Finite { grad_norm: 5.0 });
        assert_eq!(values(&p.f_grad()?)?, vec![3.0, 4.0]);
        // Clipping to 1 folds 1/5 into the same multiplication.
        let p = param_with_grad(&[0.0, 0.0], &[768.0, 1024.0], Kind::Half)?;
        let params = [("w".to_owned(), p.shallow_clone())];
        assert_eq!(
            unscale_clip_and_check_in_place(&params, Some(&mut s), 1.0, 0.5)?.grad_norm(),
            5.0
        );
        let g = values(&p.f_grad()?)?;
        assert!((g[0] - 0.6).abs() < 1e-3 && (g[1] - 0.8).abs() < 1e-3, "{g:?}");
        // Overflow: the scale halves and the gradients are left alone.
        let p = param_with_grad(&[0.0, 0.0], &[1.0, f32::INFINITY], Kind::Half)?;
        let params = [("w".to_owned(), p.shallow_clone())];
        assert!(unscale_clip_and_check_in_place(&params, Some(&mut s), 0.0, 1.0)?.is_overflow());
        assert_eq!(s.loss_scale(), 64.0);
        assert_eq!(values(&p.f_grad()?)?[0], 1.0);
        // No scaler (bf16): an error.
        assert!(matches!(
            unscale_clip_and_check_in_place(&params, None, 0.0, 1.0),
            Err(Error::NonFiniteGradients { .. })
        ));
        Ok(())
    }

    #[test]
    fn full_fp16_update_with_an_optimizer() -> TestResult {
        use crate::optim::{Optimizer, Sgd, SgdConfig};
        let p = Tensor::f_from_slice(&[1.0f32, 2.0])?.f_to_kind(Kind::Half)?;
        let p = p.set_requires_grad(true);
        let mut mw = MasterWeights::new(&[("w".to_owned(), p.shallow_clone())])?;
        let mut s = scaler(2)?;
        let mut sgd: Box<dyn Optimizer> = Box::new(Sgd::new(SgdConfig::default())?);
        for _ in 0..2 {
            mw.zero_grad();
            // loss = sum(p * (1, 1)): gradient (1, 1), scaled by the loss scale.
            let loss = p.f_sum(Kind::Float)?;
            s.scale(&loss)?.f_backward()?;
            let check = mw.unscale_clip_and_check(Some(&mut s), 0.0, 1.0)?;
            assert_eq!(check.grad_norm(), 2f64.sqrt() as f32 as f64);
            sgd.step(mw.params(), 0.5)?;
            mw.finish_step(Some(&mut s))?;
        }
        assert_eq!(values(&p)?, vec![0.0, 1.0]);
        assert_eq!(s.loss_scale(), 256.0);
        Ok(())
    }
}
