//! The convolutional sequence-to-sequence model (Gehring et al., 2017, "Convolutional
//! Sequence to Sequence Learning") as fairseq 0.12.2 builds it (`fairseq/models/fconv.py`,
//! `FConvModel`), on libtorch.
//!
//! - [`FConvConfig`]: fairseq's hyper-parameters, layer spec strings and its five named
//!   architectures (`fconv`, `fconv_iwslt_de_en`, `fconv_wmt_en_ro`, `fconv_wmt_en_de`,
//!   `fconv_wmt_en_fr`), from [`seqforge_schemas::arch::fconv`].
//! - [`FConv`]: the model. Variables live in a `tch` var store under fairseq's state-dict names
//!   (`encoder.embed_positions.weight`, `encoder.fc1.weight_g`,
//!   `encoder.projections.3.weight_v`, `encoder.convolutions.0.bias`,
//!   `decoder.attention.1.in_projection.weight_v`, `decoder.fc3.bias`, …; the decoder's
//!   `version` buffer), initialised as fairseq does: normal embeddings (σ 0.1, padding rows
//!   zero), weight-normalised linears and convolutions whose σ depends on the dropout before
//!   them (`√((1−p)/in)`, `√(4(1−p)/(k·in))`), `weight_g = ‖weight_v‖`, biases zero.
//! - The encoder zeroes padding before every convolution and numbers positions past padding,
//!   so it reads left- and right-padded sources alike; its gradient is scaled by
//!   `1 / (2 × attention layers)` (fairseq's `GradMultiply`, forward unchanged).
//! - The decoder's convolutions are causal (padded by `k − 1`, future outputs dropped); each
//!   attending layer runs fairseq's multi-step attention (`in_projection` plus the target
//!   embedding, scaled by √½, masked softmax over the source, the context scaled by
//!   `s · rsqrt(s)` with `s` the unpadded source length, `out_projection` plus the residual,
//!   scaled by √½); `fc2`, dropout and `fc3` (or the tied embedding with `fc3`'s own bias).
//! - [`DecoderState`] and [`FConv::decode_step`]: incremental decoding as fairseq's
//!   `LinearizedConvolution` does it — a window of the last `k − 1` inputs per layer and the
//!   convolution applied as one linear layer — with the windows and the encoder outputs
//!   reordered by one `index_select` per tensor. [`FConv`] implements
//!   [`StepModel`](crate::models::decoding::StepModel) with those tensors named as in
//!   [`state_names`].
//!
//! Not supported: pretrained embeddings (`--encoder-embed-path`, `--decoder-embed-path`) and
//! the decoder's adaptive softmax, which `FConvModel` never builds.

mod decoder;
mod encoder;
mod incremental;
mod model;
mod nn;
mod registration;

#[cfg(test)]
mod tests;

pub use decoder::DecoderState;
pub use encoder::EncoderOut;
pub use incremental::state_names;
pub use model::FConv;
pub use registration::{FConvArgs, factory};
pub use seqforge_schemas::arch::fconv::{FConvConfig, PRESETS, preset};
