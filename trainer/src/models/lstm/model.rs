//! The encoder-decoder [`Lstm`] (fairseq's `LSTMModel`): construction under fairseq's names,
//! the teacher-forced forward pass and the explicit-state incremental step.

use std::cell::RefCell;

use tch::{Device, Tensor, nn};

use super::decoder::{Decoder, DecoderSpec, DecoderState};
use super::encoder::{Encoder, EncoderOut, EncoderSpec};
use super::nn::{Entry, Scope, to_i64, tokens_2d};
use crate::models::{Error, Result};
use seqforge_schemas::arch::lstm::LstmConfig;

/// fairseq's `LSTMModel` with its parameter names, initialisation and maths; see the
/// [module documentation](super).
pub struct Lstm {
    config: LstmConfig,
    encoder: Encoder,
    decoder: Decoder,
    entries: Vec<Entry>,
    device: Device,
}

impl std::fmt::Debug for Lstm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lstm")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Lstm {
    /// Creates the model's variables under `vs` (fairseq names, e.g.
    /// `encoder.lstm.weight_ih_l0_reverse`, `decoder.layers.1.weight_hh`) initialised as
    /// fairseq does (uniform in ±0.1, padding embeddings zero), on the var store's device and
    /// kind.
    pub fn new(vs: &nn::Path<'_>, config: &LstmConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let pad = to_i64(c.pad_index, "pad_index")?;
        let entries = RefCell::new(Vec::new());
        let root = Scope::root(vs, &entries);
        let (enc_in, enc_out) = c.encoder_dropouts();
        let (dec_in, dec_out) = c.decoder_dropouts();

        let enc = root.sub("encoder");
        let encoder = Encoder::new(
            &enc,
            &EncoderSpec {
                vocab: to_i64(c.src_vocab_size, "src_vocab_size")?,
                embed_dim: to_i64(c.encoder_embed_dim, "encoder_embed_dim")?,
                hidden: to_i64(c.encoder_hidden(), "encoder_hidden_size")?,
                layers: to_i64(c.encoder_layers, "encoder_layers")?,
                bidirectional: c.encoder_bidirectional,
                dropout_in: enc_in,
                dropout_out: enc_out,
                pad,
            },
            vs.device(),
        )?;
        let canonical = enc.sub("embed_tokens").name_of("weight");
        let decoder = Decoder::new(
            &root.sub("decoder"),
            &DecoderSpec {
                vocab: to_i64(c.tgt_vocab_size, "tgt_vocab_size")?,
                embed_dim: to_i64(c.decoder_embed_dim, "decoder_embed_dim")?,
                hidden: to_i64(c.decoder_hidden(), "decoder_hidden_size")?,
                out_embed_dim: to_i64(c.decoder_out_embed_dim, "decoder_out_embed_dim")?,
                layers: to_i64(c.decoder_layers, "decoder_layers")?,
                attention: c.decoder_attention,
                encoder_output_units: to_i64(c.encoder_output_units(), "encoder_output_units")?,
                dropout_in: dec_in,
                dropout_out: dec_out,
                share_input_output_embed: c.shares_decoder_output(),
                pad,
            },
            c.share_all_embeddings.then_some((&encoder.embed_tokens, canonical.as_str())),
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
    pub fn config(&self) -> &LstmConfig {
        &self.config
    }

    /// The device of the model's variables.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether the decoder attends over the encoder outputs (`--decoder-attention`).
    pub fn has_attention(&self) -> bool {
        self.decoder.has_attention()
    }

    /// The model's parameters under their fairseq names, in fairseq's order; a tied parameter
    /// appears once, under its first name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::parameters(&self.entries)
    }

    /// The `(alias, parameter)` names of tied weights: with `share_all_embeddings`,
    /// `decoder.embed_tokens.weight` → `encoder.embed_tokens.weight`. (A decoder sharing its
    /// input and output embeddings has no `fc_out` at all, so nothing to alias.)
    pub fn tied_parameters(&self) -> Vec<(String, String)> {
        crate::models::nn::tied_parameters(&self.entries)
    }

    /// The model as fairseq 0.12.2's `model.state_dict()` lists it, in its order (tied
    /// aliases included, the same tensor under each name; the LSTM model has no buffers).
    pub fn fairseq_state_dict(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::state_dict(&self.entries)
    }

    /// Runs the encoder on `src_tokens` (`[batch, src_len]`, left-padded as fairseq batches
    /// them); the output is right-padded, as fairseq's.
    pub fn encode(&self, src_tokens: &Tensor, train: bool) -> Result<EncoderOut> {
        let len = src_tokens.size().get(1).copied().unwrap_or(0);
        if len > to_i64(self.config.max_source_positions, "max_source_positions")? {
            return Err(Error::Input(format!(
                "a source of {len} positions is longer than the model's maximum of {}",
                self.config.max_source_positions
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
        if len > to_i64(self.config.max_target_positions, "max_target_positions")? {
            return Err(Error::Input(format!(
                "a target of {len} positions is longer than the model's maximum of {}",
                self.config.max_target_positions
            )));
        }
        let x = self.decoder.embed(&tokens, train)?;
        let mut state = self.decoder.init_state(encoder_out)?;
        let outs = (0..len)
            .map(|t| self.decoder.step(&x.f_select(1, t)?, &mut state, train))
            .collect::<Result<Vec<_>>>()?;
        let x = if outs.is_empty() {
            let rows = tokens.size()[0];
            Tensor::f_zeros([rows, 0, self.decoder_hidden()?], (x.kind(), self.device))?
        } else {
            Tensor::f_stack(&outs, 1)?
        };
        self.decoder.output_layer(&x, train)
    }

    fn decoder_hidden(&self) -> Result<i64> {
        to_i64(self.config.decoder_hidden(), "decoder_hidden_size")
    }

    /// The full model (fairseq's `model(src_tokens, src_lengths, prev_output_tokens)`): logits
    /// `[batch, tgt_len, tgt_vocab]`. Dropout is active only when `train` is true.
    ///
    /// `src_lengths` (`[batch]`) is checked for shape only: the lengths fairseq packs with are
    /// read off the tokens (they are the same for fairseq's batches).
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
    /// of each row; EOS at step 0), advances `state` and returns the logits `[rows,
    /// tgt_vocab]` of the next token. Same maths as [`Lstm::decode`] on the whole prefix.
    pub fn decode_step(&self, tokens: &Tensor, state: &mut DecoderState) -> Result<Tensor> {
        let rows = state.rows() as i64;
        if tokens.size() != [rows] {
            return Err(Error::Input(format!(
                "decode_step needs one token per state row ({rows}), got shape {:?}",
                tokens.size()
            )));
        }
        let tokens = tokens_2d(&tokens.f_reshape([rows, 1])?, self.device, "tokens")?;
        let x = self.decoder.embed(&tokens, false)?.f_squeeze_dim(1)?;
        let out = self.decoder.step(&x, state, false)?;
        self.decoder.output_layer(&out, false)
    }

    /// Number of decoder layers (the `hidden.{l}`/`cell.{l}` state entries).
    pub fn decoder_layers(&self) -> usize {
        self.decoder.num_layers()
    }
}
