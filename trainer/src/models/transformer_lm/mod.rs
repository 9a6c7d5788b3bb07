//! fairseq's decoder-only Transformer language model (`fairseq/models/transformer_lm.py`,
//! `--arch transformer_lm*`) on libtorch: a [`TransformerDecoder`] without encoder attention
//! (`no_encoder_attn=True`), with fairseq 0.12.2's parameter names and maths.
//!
//! - [`TransformerLmConfig`]: fairseq's hyper-parameters and named architectures (shared with the
//!   exporter, in `seqforge_schemas`).
//! - [`TransformerLm`]: the model. Token embeddings are a table or an
//!   [`AdaptiveInput`](crate::models::adaptive::AdaptiveInput); the output is a projection
//!   (optionally the input embedding) or an
//!   [`AdaptiveSoftmax`](crate::models::adaptive::AdaptiveSoftmax). As in fairseq, with an
//!   adaptive softmax [`TransformerLm::forward`] returns the decoder *features* and
//!   [`TransformerLm::get_normalized_probs`] turns them into full-vocabulary log-probabilities;
//!   the `adaptive_loss` criterion reads the features directly.
//! - Incremental decoding ([`TransformerLm`] implements
//!   [`StepModel`](crate::models::StepModel)): `start` runs the prompt through the decoder at
//!   once ("prefill"), fills the self-attention caches and leaves the next token's
//!   log-probabilities in the state (`prefill.log_probs`) for the first `step` to return.
//!   [`TransformerLm::prefill`] gives the log-probabilities of every prompt position.
//!
//! The layers, embeddings and positions are the Transformer's
//! ([`crate::models::transformer`]). Not supported: character embeddings, layer drop,
//! quantisation noise, NormFormer scales, BASE layers.
//!
//! [`TransformerDecoder`]: crate::models::transformer

mod incremental;
mod model;
mod registration;

#[cfg(test)]
mod tests;

pub use incremental::state_names;
pub use model::{LmCache, TransformerLm};
pub use registration::{TransformerLmArgs, factory};
pub use seqforge_schemas::arch::transformer_lm::{PRESETS, TransformerLmConfig, preset};
