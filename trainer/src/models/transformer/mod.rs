//! The Transformer encoder-decoder of Vaswani et al. (2017), "Attention Is All You Need", as
//! fairseq 0.12.2 builds it (`fairseq/models/transformer/`), on libtorch.
//!
//! - [`TransformerConfig`]: fairseq's hyper-parameters (JSON via serde) and its named
//!   architectures ([`preset`], [`PRESETS`]).
//! - [`Transformer`]: the model. Variables are created in a `tch` var store under fairseq's
//!   state-dict names (tch joins path components with `.`, so the var store's names *are*
//!   fairseq's: `encoder.layers.0.self_attn.q_proj.weight`, `decoder.output_projection.weight`,
//!   …). Initialisation, embedding scale, sinusoidal positions (first half sines, second half
//!   cosines, positions from `padding_idx + 1`, padding at a zero vector), post-/pre-norm
//!   layers, padding masks and the fp32 softmax follow fairseq's code.
//! - [`DecoderCache`] and [`Transformer::decode_step`]: incremental decoding with explicit state
//!   (self-attention keys/values per layer, encoder-attention keys/values computed once, the
//!   source padding mask, the step), reordered with one `index_select` per tensor.
//! - [`Transformer`] implements [`StepModel`](crate::models::decoding::StepModel) (its cache as
//!   named tensors, [`state_names`]), so [`TorchDecoder`](crate::models::TorchDecoder) drives it.
//!
//! The layers, embeddings and positions are shared with the decoder-only
//! [`transformer_lm`](crate::models::transformer_lm).
//!
//! Not supported (fairseq options outside the scope): adaptive input/softmax (see
//! `transformer_lm`), `decoder_input_dim`/`decoder_output_dim` different from
//! `decoder_embed_dim`, cross-self-attention, layer drop, quantisation noise, alignment heads.

mod attention;
mod config;
mod incremental;
pub(crate) mod layers;
pub(crate) mod model;
pub(crate) mod nn;
pub(crate) mod positions;
mod registration;

#[cfg(test)]
mod tests;

pub use config::{Activation, PRESETS, TransformerConfig, preset};
pub use incremental::state_names;
pub use model::{DecoderCache, EncoderOut, KeyValue, Transformer};
pub use positions::{make_positions, sinusoidal_table};
pub use registration::{TransformerArgs, factory};
