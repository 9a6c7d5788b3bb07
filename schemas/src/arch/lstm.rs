//! fairseq's LSTM encoder-decoder (`fairseq/models/lstm.py`, Luong/Wiseman-style attention with
//! input feeding) hyper-parameters and its named architectures.
//!
//! Field names are fairseq's argument names. Values fairseq derives from others (hidden sizes
//! from embedding dims, per-side dropouts from `dropout`) are `Option`s resolved by the
//! accessor methods, so overriding `--encoder-embed-dim` alone also changes the hidden size, as
//! in fairseq.

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// fairseq's `DEFAULT_MAX_SOURCE_POSITIONS` / `DEFAULT_MAX_TARGET_POSITIONS` for LSTMs.
pub const DEFAULT_MAX_POSITIONS: usize = 100_000;

/// All hyper-parameters of fairseq's `lstm` model, plus the dictionary sizes and padding index.
///
/// [`Default`] is fairseq's `lstm` base architecture with empty vocabularies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LstmConfig {
    /// Dropout probability (the default of the four per-side dropouts).
    pub dropout: f64,
    /// Encoder embedding dimension.
    pub encoder_embed_dim: usize,
    /// Encoder hidden size (default: `encoder_embed_dim`).
    pub encoder_hidden_size: Option<usize>,
    /// Encoder LSTM layers.
    pub encoder_layers: usize,
    /// Bidirectional encoder (the two directions are concatenated: `2 × hidden` outputs).
    pub encoder_bidirectional: bool,
    /// Dropout on the encoder's embeddings (default: `dropout`).
    pub encoder_dropout_in: Option<f64>,
    /// Dropout on the encoder's outputs and between its layers (default: `dropout`).
    pub encoder_dropout_out: Option<f64>,
    /// Decoder embedding dimension.
    pub decoder_embed_dim: usize,
    /// Decoder hidden size (default: `decoder_embed_dim`).
    pub decoder_hidden_size: Option<usize>,
    /// Decoder LSTM layers.
    pub decoder_layers: usize,
    /// Decoder output embedding dimension (an extra projection when it differs from the
    /// hidden size).
    pub decoder_out_embed_dim: usize,
    /// Attention over the encoder outputs (fairseq's `--decoder-attention`, "1"/"0").
    pub decoder_attention: bool,
    /// Dropout on the decoder's embeddings (default: `dropout`).
    pub decoder_dropout_in: Option<f64>,
    /// Dropout on the decoder's outputs (default: `dropout`).
    pub decoder_dropout_out: Option<f64>,
    /// Tie the decoder's input embedding and output projection.
    pub share_decoder_input_output_embed: bool,
    /// One embedding matrix for encoder, decoder and output (needs a joined dictionary).
    pub share_all_embeddings: bool,
    /// Longest source in tokens.
    pub max_source_positions: usize,
    /// Longest target in tokens.
    pub max_target_positions: usize,
    /// Source dictionary size (set from the data).
    pub src_vocab_size: usize,
    /// Target dictionary size (set from the data).
    pub tgt_vocab_size: usize,
    /// Padding index of both dictionaries.
    pub pad_index: usize,
}

impl Default for LstmConfig {
    /// fairseq's `lstm` `base_architecture`.
    fn default() -> Self {
        Self {
            dropout: 0.1,
            encoder_embed_dim: 512,
            encoder_hidden_size: None,
            encoder_layers: 1,
            encoder_bidirectional: false,
            encoder_dropout_in: None,
            encoder_dropout_out: None,
            decoder_embed_dim: 512,
            decoder_hidden_size: None,
            decoder_layers: 1,
            decoder_out_embed_dim: 512,
            decoder_attention: true,
            decoder_dropout_in: None,
            decoder_dropout_out: None,
            share_decoder_input_output_embed: false,
            share_all_embeddings: false,
            max_source_positions: DEFAULT_MAX_POSITIONS,
            max_target_positions: DEFAULT_MAX_POSITIONS,
            src_vocab_size: 0,
            tgt_vocab_size: 0,
            pad_index: 1,
        }
    }
}

/// The LSTM architectures fairseq 0.12.2 registers.
pub const PRESETS: &[&str] = &["lstm", "lstm_wiseman_iwslt_de_en", "lstm_luong_wmt_en_de"];

/// The config of a named architecture (fairseq's `register_model_architecture` functions).
pub fn preset(name: &str) -> Option<LstmConfig> {
    let base = LstmConfig::default();
    Some(match name {
        "lstm" => base,
        "lstm_wiseman_iwslt_de_en" => LstmConfig {
            encoder_embed_dim: 256,
            encoder_dropout_in: Some(0.0),
            encoder_dropout_out: Some(0.0),
            decoder_embed_dim: 256,
            decoder_out_embed_dim: 256,
            decoder_dropout_in: Some(0.0),
            ..base
        },
        "lstm_luong_wmt_en_de" => LstmConfig {
            encoder_embed_dim: 1000,
            encoder_layers: 4,
            encoder_dropout_out: Some(0.0),
            decoder_embed_dim: 1000,
            decoder_layers: 4,
            decoder_out_embed_dim: 1000,
            decoder_dropout_out: Some(0.0),
            ..base
        },
        _ => return None,
    })
}

impl LstmConfig {
    /// The preset `name`, or [`Error::UnknownArch`].
    pub fn from_preset(name: &str) -> Result<Self> {
        preset(name).ok_or_else(|| Error::UnknownArch(name.to_string()))
    }

    /// The config with these dictionary sizes.
    pub fn with_vocab(mut self, src_vocab_size: usize, tgt_vocab_size: usize) -> Self {
        self.src_vocab_size = src_vocab_size;
        self.tgt_vocab_size = tgt_vocab_size;
        self
    }

    /// Encoder hidden size.
    pub fn encoder_hidden(&self) -> usize {
        self.encoder_hidden_size.unwrap_or(self.encoder_embed_dim)
    }

    /// Decoder hidden size.
    pub fn decoder_hidden(&self) -> usize {
        self.decoder_hidden_size.unwrap_or(self.decoder_embed_dim)
    }

    /// Width of the encoder's outputs (`2 × hidden` when bidirectional): fairseq's
    /// `encoder_output_units`.
    pub fn encoder_output_units(&self) -> usize {
        self.encoder_hidden() * if self.encoder_bidirectional { 2 } else { 1 }
    }

    /// `(dropout_in, dropout_out)` of the encoder.
    pub fn encoder_dropouts(&self) -> (f64, f64) {
        (
            self.encoder_dropout_in.unwrap_or(self.dropout),
            self.encoder_dropout_out.unwrap_or(self.dropout),
        )
    }

    /// `(dropout_in, dropout_out)` of the decoder.
    pub fn decoder_dropouts(&self) -> (f64, f64) {
        (
            self.decoder_dropout_in.unwrap_or(self.dropout),
            self.decoder_dropout_out.unwrap_or(self.dropout),
        )
    }

    /// Whether the output projection is the decoder's input embedding.
    pub fn shares_decoder_output(&self) -> bool {
        self.share_decoder_input_output_embed || self.share_all_embeddings
    }

    /// Checks what the model and its graphs rely on.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        for (name, v) in [
            ("encoder_embed_dim", self.encoder_embed_dim),
            ("encoder_hidden_size", self.encoder_hidden()),
            ("encoder_layers", self.encoder_layers),
            ("decoder_embed_dim", self.decoder_embed_dim),
            ("decoder_hidden_size", self.decoder_hidden()),
            ("decoder_layers", self.decoder_layers),
            ("decoder_out_embed_dim", self.decoder_out_embed_dim),
            ("max_source_positions", self.max_source_positions),
            ("max_target_positions", self.max_target_positions),
        ] {
            if v == 0 {
                return fail(format!("{name} must be positive"));
            }
        }
        let (ei, eo) = self.encoder_dropouts();
        let (di, dout) = self.decoder_dropouts();
        for (name, p) in [
            ("dropout", self.dropout),
            ("encoder_dropout_in", ei),
            ("encoder_dropout_out", eo),
            ("decoder_dropout_in", di),
            ("decoder_dropout_out", dout),
        ] {
            if !(0.0..1.0).contains(&p) {
                return fail(format!("{name} ({p}) must be in [0, 1)"));
            }
        }
        for (name, vocab) in [("src", self.src_vocab_size), ("tgt", self.tgt_vocab_size)] {
            if vocab <= self.pad_index {
                return fail(format!(
                    "{name}_vocab_size ({vocab}) must be larger than pad_index ({})",
                    self.pad_index
                ));
            }
        }
        // fairseq's `LSTMModel.build_model`: each decoder layer starts from the final states of
        // the encoder layer with the same index.
        if self.encoder_layers != self.decoder_layers {
            return fail(format!(
                "--encoder-layers ({}) must match --decoder-layers ({})",
                self.encoder_layers, self.decoder_layers
            ));
        }
        if self.shares_decoder_output() && self.decoder_out_embed_dim != self.decoder_embed_dim {
            return fail(format!(
                "--share-decoder-input-output-embed requires decoder_embed_dim ({}) == \
                 decoder_out_embed_dim ({})",
                self.decoder_embed_dim, self.decoder_out_embed_dim
            ));
        }
        if self.share_all_embeddings
            && (self.src_vocab_size != self.tgt_vocab_size
                || self.encoder_embed_dim != self.decoder_embed_dim)
        {
            return fail(format!(
                "share_all_embeddings needs a joined dictionary (src {} vs tgt {}) and \
                 encoder_embed_dim ({}) == decoder_embed_dim ({})",
                self.src_vocab_size,
                self.tgt_vocab_size,
                self.encoder_embed_dim,
                self.decoder_embed_dim
            ));
        }
        Ok(())
    }
}

/// Names of the LSTM's decoder state tensors, shared by the trainer's libtorch decoder and the
/// exported step graph.
pub mod state_names {
    /// The encoder's outputs `[rows, source, encoder_units]`, per sentence (attention only).
    pub const ENCODER_OUT: &str = "encoder_out";
    /// The source padding mask `[rows, source]` (true = padding), per sentence (attention only).
    pub const ENCODER_PADDING_MASK: &str = "encoder_padding_mask";
    /// The attentional output of the previous step `[rows, hidden]` (input feeding).
    pub const INPUT_FEED: &str = "input_feed";
    /// Decoder layer `l`'s hidden state `[rows, hidden]`.
    pub fn hidden(l: usize) -> String {
        format!("hidden.{l}")
    }
    /// Decoder layer `l`'s cell state `[rows, hidden]`.
    pub fn cell(l: usize) -> String {
        format!("cell.{l}")
    }
    /// The encoder output that initialises `hidden.{l}`: the final state of encoder layer `l`
    /// (directions concatenated, through `encoder_hidden_proj` when sizes differ).
    pub fn final_hidden(l: usize) -> String {
        format!("final_hidden.{l}")
    }
    /// The encoder output that initialises `cell.{l}`.
    pub fn final_cell(l: usize) -> String {
        format!("final_cell.{l}")
    }
}

impl LstmConfig {
    /// The decoder state as the contract declares it: the encoder outputs and padding mask per
    /// sentence (with attention), each layer's `hidden`/`cell` starting from the encoder's final
    /// states, and the input feed starting at zeros.
    pub fn decoder_state(&self) -> crate::contract::StateSpec {
        use crate::contract::{StateDtype, StateInit, StatePolicy, StateSpec, StateTensor, dims};
        let t = |name: String, shape: &[&str], policy: StatePolicy, dtype| StateTensor {
            name,
            dtype,
            shape: shape.iter().map(|s| s.to_string()).collect(),
            policy,
        };
        let mut tensors = Vec::new();
        if self.decoder_attention {
            tensors.push(t(
                state_names::ENCODER_OUT.into(),
                &[dims::ROWS, dims::SOURCE, "encoder_units"],
                StatePolicy::PerSentence,
                StateDtype::Model,
            ));
            tensors.push(t(
                state_names::ENCODER_PADDING_MASK.into(),
                &[dims::ROWS, dims::SOURCE],
                StatePolicy::PerSentence,
                StateDtype::Bool,
            ));
        }
        let from = |s: String| StatePolicy::Recurrent { init: StateInit::Encoder(s) };
        for l in 0..self.decoder_layers {
            let hidden = [dims::ROWS, "hidden"];
            tensors.push(t(
                state_names::hidden(l),
                &hidden,
                from(state_names::final_hidden(l)),
                StateDtype::Model,
            ));
            tensors.push(t(
                state_names::cell(l),
                &hidden,
                from(state_names::final_cell(l)),
                StateDtype::Model,
            ));
        }
        tensors.push(t(
            state_names::INPUT_FEED.into(),
            &[dims::ROWS, "hidden"],
            StatePolicy::Recurrent { init: StateInit::Zeros },
            StateDtype::Model,
        ));
        StateSpec {
            dims: [
                ("hidden".to_string(), self.decoder_hidden()),
                ("encoder_units".to_string(), self.encoder_output_units()),
            ]
            .into(),
            tensors,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_follow_fairseq() {
        let w = preset("lstm_wiseman_iwslt_de_en").unwrap_or_default();
        assert_eq!(w.encoder_hidden(), 256);
        assert_eq!(w.decoder_dropouts(), (0.0, 0.1));
        assert_eq!(w.encoder_dropouts(), (0.0, 0.0));
        let l = preset("lstm_luong_wmt_en_de").unwrap_or_default();
        assert_eq!((l.encoder_layers, l.decoder_hidden()), (4, 1000));
        assert_eq!(l.encoder_dropouts(), (0.1, 0.0));
        let mut c = LstmConfig { encoder_bidirectional: true, ..LstmConfig::default() };
        assert_eq!(c.encoder_output_units(), 1024);
        c.encoder_embed_dim = 128;
        assert_eq!(c.encoder_hidden(), 128, "hidden size follows the embedding dim");
        assert!(serde_json::from_str::<LstmConfig>(r#"{"residuals": true}"#).is_err());
        let c = LstmConfig { decoder_layers: 2, ..LstmConfig::default().with_vocab(40, 40) };
        assert!(c.validate().is_err(), "fairseq: --encoder-layers must match --decoder-layers");
    }
}
