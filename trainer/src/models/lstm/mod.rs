//! The LSTM encoder-decoder with attention and input feeding (Luong et al., 2015, "Effective
//! Approaches to Attention-based Neural Machine Translation"; Wiseman & Rush, 2016) as fairseq
//! 0.12.2 builds it (`fairseq/models/lstm.py`, `LSTMModel`), on libtorch.
//!
//! - [`LstmConfig`]: fairseq's hyper-parameters and its three named architectures (`lstm`,
//!   `lstm_wiseman_iwslt_de_en`, `lstm_luong_wmt_en_de`), from [`seqforge_schemas::arch::lstm`].
//! - [`Lstm`]: the model. Variables live in a `tch` var store under fairseq's state-dict names
//!   (`encoder.embed_tokens.weight`, `encoder.lstm.weight_ih_l0_reverse`,
//!   `decoder.encoder_hidden_proj.weight`, `decoder.layers.0.weight_hh`,
//!   `decoder.attention.input_proj.weight`, `decoder.additional_fc.bias`,
//!   `decoder.fc_out.weight`, …), initialised as fairseq does (every weight and bias uniform in
//!   ±0.1, padding embeddings zero).
//! - The encoder converts fairseq's left-padded sources to right padding, packs them and runs
//!   libtorch's LSTM kernel (the one `nn.LSTM` calls, with its dropout between layers), so a
//!   sentence's states do not depend on the padding of its batch; bidirectional final states
//!   are concatenated per layer (`combine_bidir`).
//! - The decoder is fairseq's loop of `LSTMCell`s with input feeding: each layer starts from
//!   the encoder's final states of the same layer (projected by
//!   `encoder_{hidden,cell}_proj` when the widths differ), attention (bias-free `input_proj`
//!   and `output_proj`, masked softmax over the source) follows the top layer, then the
//!   optional `additional_fc` and `fc_out` (or the shared embedding). Dropout sits where
//!   fairseq puts it: on both sides' embeddings (`dropout_in`), between and after the
//!   encoder's layers, after every decoder layer, after attention and after
//!   `additional_fc` (`dropout_out`).
//! - [`DecoderState`] and [`Lstm::decode_step`]: incremental decoding with explicit state
//!   (per layer hidden and cell, the input feed and, with attention, the encoder output and
//!   mask), reordered with one `index_select` per tensor. [`Lstm`] implements
//!   [`StepModel`](crate::models::decoding::StepModel) with those tensors named as in
//!   [`state_names`].
//!
//! Not supported (outside `LSTMModel`'s defaults): pretrained or frozen embeddings
//! (`--encoder-embed-path`, `--*-freeze-embed`) and the adaptive softmax (fairseq builds it
//! only with the `adaptive_loss` criterion).

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
pub use model::Lstm;
pub use registration::{LstmArgs, factory};
pub use seqforge_schemas::arch::lstm::{LstmConfig, PRESETS, preset};
