//! The encoder-decoder [`FConv`] (fairseq's `FConvModel`): construction under fairseq's
//! names, the teacher-forced forward pass and the explicit-state incremental step.

use std::cell::RefCell;

use tch::{Device, Tensor, nn};

use super::decoder::{Decoder, DecoderSpec, DecoderState};
use super::encoder::{Encoder, EncoderOut, EncoderSpec};
use super::nn::{Entry, Scope, to_i64, tokens_2d};
use crate::models::{Error, Result};
use seqforge_schemas::arch::fconv::{FConvConfig, conv_blocks};

/// fairseq's `FConvModel` with its parameter names, initialisation and maths; see the
/// [module documentation](super).
pub struct FConv {
    config: FConvConfig,
    encoder: Encoder,
    decoder: Decoder,
    entries: Vec<Entry>,
    device: Device,
}

impl std::fmt::Debug for FConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FConv")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl FConv {
    /// Creates the model's variables under `vs` (fairseq names, e.g.
    /// `encoder.convolutions.3.weight_v`, `decoder.attention.0.in_projection.weight_g`)
    /// initialised as fairseq does, on the var store's device and kind.
    pub fn new(vs: &nn::Path<'_>, config: &FConvConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let pad = to_i64(c.pad_index, "pad_index")?;
        let entries = RefCell::new(Vec::new());
        let root = Scope::root(vs, &entries);
        let encoder_blocks = conv_blocks(&c.encoder_convolutions()?);
        let decoder_blocks = conv_blocks(&c.decoder_convolutions()?);
        let attention = c.attention_layers()?;
        let encoder = Encoder::new(
            &root.sub("encoder"),
            &EncoderSpec {
                vocab: to_i64(c.src_vocab_size, "src_vocab_size")?,
                embed_dim: to_i64(c.encoder_embed_dim, "encoder_embed_dim")?,
                max_positions: to_i64(c.max_source_positions, "max_source_positions")?,
                blocks: &encoder_blocks,
                dropout: c.dropout,
                attention_layers: attention.iter().filter(|&&a| a).count(),
                pad,
            },
        )?;
        let decoder = Decoder::new(
            &root.sub("decoder"),
            &DecoderSpec {
                vocab: to_i64(c.tgt_vocab_size, "tgt_vocab_size")?,
                embed_dim: to_i64(c.decoder_embed_dim, "decoder_embed_dim")?,
                out_embed_dim: to_i64(c.decoder_out_embed_dim, "decoder_out_embed_dim")?,
                max_positions: to_i64(c.max_target_positions, "max_target_positions")?,
                blocks: &decoder_blocks,
                attention: &attention,
                dropout: c.dropout,
                share_embed: c.share_input_output_embed,
                pad,
            },
        )?;
        Ok(Self {
            config: config.clone(),
            encoder,
            decoder,
            entries: entries.into_inner(),
            device: vs.device(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &FConvConfig {
        &self.config
    }

    /// The device of the model's variables.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The model's parameters under their fairseq names, in fairseq's order; a tied parameter
    /// appears once, under its first name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::parameters(&self.entries)
    }

    /// The `(alias, parameter)` names of tied weights: with `--share-input-output-embed`,
    /// `decoder.fc3.weight` → `decoder.embed_tokens.weight`.
    pub fn tied_parameters(&self) -> Vec<(String, String)> {
        crate::models::nn::tied_parameters(&self.entries)
    }

    /// The model as fairseq 0.12.2's `model.state_dict()` lists it, in its order (the
    /// decoder's `version` buffer and tied aliases included).
    pub fn fairseq_state_dict(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::state_dict(&self.entries)
    }

    /// Runs the encoder on `src_tokens` (`[batch, src_len]`, padded on either side).
    pub fn encode(&self, src_tokens: &Tensor, train: bool) -> Result<EncoderOut> {
        let len = src_tokens.size().get(1).copied().unwrap_or(0);
        if len > to_i64(self.config.max_source_len(), "max_source_positions")? {
            return Err(Error::Input(format!(
                "a source of {len} positions is longer than the model's maximum of {}",
                self.config.max_source_len()
            )));
        }
        self.encoder.forward(src_tokens, train)
    }

    /// The decoder state before the first target token for the sentences of `encoder_out`,
    /// one row each (expand or reorder rows with [`DecoderState::reorder`]).
    pub fn init_state(&self, encoder_out: &EncoderOut) -> Result<DecoderState> {
        self.decoder.init_state(encoder_out)
    }

    /// Teacher-forced decoder: logits `[batch, tgt_len, tgt_vocab]` for every position of
    /// `prev_output_tokens` (`[batch, tgt_len]`, EOS first, right-padded with `pad_index`).
    pub fn decode(
        &self,
        prev_output_tokens: &Tensor,
        encoder_out: &EncoderOut,
        train: bool,
    ) -> Result<Tensor> {
        let tokens = tokens_2d(prev_output_tokens, self.device, "prev_output_tokens")?;
        let len = tokens.size()[1];
        if len > to_i64(self.config.max_target_len(), "max_target_positions")? {
            return Err(Error::Input(format!(
                "a target of {len} positions is longer than the model's maximum of {}",
                self.config.max_target_len()
            )));
        }
        self.decoder.forward(&tokens, encoder_out, train)
    }

    /// The full model (fairseq's `model(src_tokens, src_lengths, prev_output_tokens)`): logits
    /// `[batch, tgt_len, tgt_vocab]`. Dropout is active only when `train` is true.
    pub fn forward(
        &self,
        src_tokens: &Tensor,
        src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        crate::models::nn::check_forward_inputs(src_tokens, src_lengths, prev_output_tokens)?;
        let encoder_out = self.encode(src_tokens, train)?;
        self.decode(prev_output_tokens, &encoder_out, train)
    }

    /// fairseq's `get_normalized_probs`: (log-)softmax over the vocabulary, in fp32.
    pub fn get_normalized_probs(&self, logits: &Tensor, log_probs: bool) -> Result<Tensor> {
        crate::models::nn::normalized_probs(logits, log_probs)
    }

    /// One incremental decoder step (no dropout): feeds `tokens` (`[rows]`, the previous output
    /// of each row; EOS at step 0) at target position `step`, advances `state` and returns the
    /// logits `[rows, tgt_vocab]` of the next token. Same maths as [`FConv::decode`] on the
    /// whole prefix.
    pub fn decode_step(
        &self,
        tokens: &Tensor,
        step: usize,
        state: &mut DecoderState,
    ) -> Result<Tensor> {
        let rows = state.rows() as i64;
        if tokens.size() != [rows] {
            return Err(Error::Input(format!(
                "decode_step needs one token per state row ({rows}), got shape {:?}",
                tokens.size()
            )));
        }
        let tokens = tokens_2d(&tokens.f_reshape([rows, 1])?, self.device, "tokens")?;
        self.decoder.step(&tokens, step, state)
    }

    /// Number of decoder layers.
    pub fn decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }
}
