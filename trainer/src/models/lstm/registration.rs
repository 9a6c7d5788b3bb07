//! The LSTM's registration: its flags ([`LstmArgs`], fairseq's names), how they override a
//! preset, and the [`Model`] the trainer trains.

use serde_json::Value;
use tch::nn;

use super::{Lstm, LstmConfig};
use crate::models::Error;
use crate::train::model::{Model, ModelContext, ModelFactory, apply_flags, parse_config, set};

/// The registry entry of the `lstm` model.
pub fn factory() -> ModelFactory {
    ModelFactory {
        augment_args: <LstmArgs as clap::Args>::augment_args,
        apply_args: lstm_apply_args,
        build: build_lstm,
        decoder_only: false,
    }
}

/// The LSTM's flags (fairseq's names): each one given overrides the architecture's preset;
/// boolean switches can only turn an option on, as in fairseq.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LstmArgs {
    /// Dropout probability (the default of the per-side dropouts).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Encoder embedding dimension.
    #[arg(long)]
    pub encoder_embed_dim: Option<usize>,
    /// Encoder hidden size (default: the encoder embedding dimension).
    #[arg(long)]
    pub encoder_hidden_size: Option<usize>,
    /// Number of encoder layers (must equal the decoder's).
    #[arg(long)]
    pub encoder_layers: Option<usize>,
    /// Bidirectional encoder.
    #[arg(long)]
    pub encoder_bidirectional: bool,
    /// Dropout on the encoder's input embeddings.
    #[arg(long)]
    pub encoder_dropout_in: Option<f64>,
    /// Dropout on the encoder's outputs (and between its layers).
    #[arg(long)]
    pub encoder_dropout_out: Option<f64>,
    /// Decoder embedding dimension.
    #[arg(long)]
    pub decoder_embed_dim: Option<usize>,
    /// Decoder hidden size (default: the decoder embedding dimension).
    #[arg(long)]
    pub decoder_hidden_size: Option<usize>,
    /// Number of decoder layers (must equal the encoder's).
    #[arg(long)]
    pub decoder_layers: Option<usize>,
    /// Decoder output embedding dimension.
    #[arg(long)]
    pub decoder_out_embed_dim: Option<usize>,
    /// Decoder attention: 1/0 or true/false (fairseq's `--decoder-attention BOOL`).
    #[arg(long, value_name = "BOOL", value_parser = parse_fairseq_bool)]
    pub decoder_attention: Option<bool>,
    /// Dropout on the decoder's input embeddings.
    #[arg(long)]
    pub decoder_dropout_in: Option<f64>,
    /// Dropout on the decoder's outputs.
    #[arg(long)]
    pub decoder_dropout_out: Option<f64>,
    /// Tie the decoder's input and output embeddings.
    #[arg(long)]
    pub share_decoder_input_output_embed: bool,
    /// One embedding matrix for encoder, decoder and output (needs a joined dictionary).
    #[arg(long)]
    pub share_all_embeddings: bool,
    /// Longest source in tokens.
    #[arg(long)]
    pub max_source_positions: Option<usize>,
    /// Longest target in tokens.
    #[arg(long)]
    pub max_target_positions: Option<usize>,
}

/// fairseq's `eval_bool` for the values it is given in practice: `1`/`0`, `True`/`False`.
fn parse_fairseq_bool(value: &str) -> Result<bool, String> {
    match value.trim() {
        "1" | "True" | "true" => Ok(true),
        "0" | "False" | "false" => Ok(false),
        other => Err(format!("expected 1/0 or True/False, got {other:?}")),
    }
}

impl LstmArgs {
    /// `config` with every flag that was given applied (a hidden size or per-side dropout
    /// left unset keeps following its embedding dimension or `--dropout`, as in fairseq).
    pub fn apply(&self, mut c: LstmConfig) -> LstmConfig {
        fn set_opt<T: Copy>(dst: &mut Option<T>, v: Option<T>) {
            if v.is_some() {
                *dst = v;
            }
        }
        set(&mut c.dropout, self.dropout);
        set(&mut c.encoder_embed_dim, self.encoder_embed_dim);
        set_opt(&mut c.encoder_hidden_size, self.encoder_hidden_size);
        set(&mut c.encoder_layers, self.encoder_layers);
        set_opt(&mut c.encoder_dropout_in, self.encoder_dropout_in);
        set_opt(&mut c.encoder_dropout_out, self.encoder_dropout_out);
        set(&mut c.decoder_embed_dim, self.decoder_embed_dim);
        set_opt(&mut c.decoder_hidden_size, self.decoder_hidden_size);
        set(&mut c.decoder_layers, self.decoder_layers);
        set(&mut c.decoder_out_embed_dim, self.decoder_out_embed_dim);
        set(&mut c.decoder_attention, self.decoder_attention);
        set_opt(&mut c.decoder_dropout_in, self.decoder_dropout_in);
        set_opt(&mut c.decoder_dropout_out, self.decoder_dropout_out);
        set(&mut c.max_source_positions, self.max_source_positions);
        set(&mut c.max_target_positions, self.max_target_positions);
        c.encoder_bidirectional |= self.encoder_bidirectional;
        c.share_decoder_input_output_embed |= self.share_decoder_input_output_embed;
        c.share_all_embeddings |= self.share_all_embeddings;
        c
    }
}

fn lstm_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    apply_flags("lstm", matches, &preset, |args: &LstmArgs, c| Ok(args.apply(c)))
}

fn build_lstm(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    let mut config = parse_config::<LstmConfig>("lstm", config)?
        .with_vocab(ctx.src_vocab_size, ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(Lstm::new(vs, &config)?))
}

crate::train::model::impl_family_model!(Lstm);
