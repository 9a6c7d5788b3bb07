//! The ConvS2S registration: its flags ([`FConvArgs`], fairseq's names), how they override a
//! preset, and the [`Model`] the trainer trains.

use serde_json::Value;
use tch::nn;

use super::{FConv, FConvConfig};
use crate::models::Error;
use crate::train::model::{Model, ModelContext, ModelFactory, apply_flags, parse_config, set};

/// The registry entry of the `fconv` model.
pub fn factory() -> ModelFactory {
    ModelFactory {
        augment_args: <FConvArgs as clap::Args>::augment_args,
        apply_args: fconv_apply_args,
        build: build_fconv,
        decoder_only: false,
    }
}

/// The ConvS2S flags (fairseq's names): each one given overrides the architecture's preset.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FConvArgs {
    /// Dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Encoder embedding dimension.
    #[arg(long)]
    pub encoder_embed_dim: Option<usize>,
    /// Encoder layers as fairseq writes them: `[(out_channels, kernel_size[, residual]), …]`,
    /// e.g. `'[(512, 3)] * 20'`.
    #[arg(long, value_name = "EXPR")]
    pub encoder_layers: Option<String>,
    /// Decoder embedding dimension.
    #[arg(long)]
    pub decoder_embed_dim: Option<usize>,
    /// Decoder layers, same form as `--encoder-layers`.
    #[arg(long, value_name = "EXPR")]
    pub decoder_layers: Option<String>,
    /// Decoder output embedding dimension (`fc2`'s width).
    #[arg(long)]
    pub decoder_out_embed_dim: Option<usize>,
    /// Decoder attention: `True`, `False` or a list with one boolean per decoder layer.
    #[arg(long, value_name = "EXPR")]
    pub decoder_attention: Option<String>,
    /// Share the decoder's input and output embeddings (needs `--decoder-out-embed-dim` equal
    /// to `--decoder-embed-dim`).
    #[arg(long)]
    pub share_input_output_embed: bool,
    /// Rows of the encoder's position table (the longest source is 2 fewer).
    #[arg(long)]
    pub max_source_positions: Option<usize>,
    /// Rows of the decoder's position table.
    #[arg(long)]
    pub max_target_positions: Option<usize>,
}

impl FConvArgs {
    /// `config` with every flag that was given applied.
    pub fn apply(&self, mut c: FConvConfig) -> FConvConfig {
        fn set_string(dst: &mut String, v: &Option<String>) {
            if let Some(v) = v {
                dst.clone_from(v);
            }
        }
        set(&mut c.dropout, self.dropout);
        set(&mut c.encoder_embed_dim, self.encoder_embed_dim);
        set_string(&mut c.encoder_layers, &self.encoder_layers);
        set(&mut c.decoder_embed_dim, self.decoder_embed_dim);
        set_string(&mut c.decoder_layers, &self.decoder_layers);
        set(&mut c.decoder_out_embed_dim, self.decoder_out_embed_dim);
        set_string(&mut c.decoder_attention, &self.decoder_attention);
        set(&mut c.max_source_positions, self.max_source_positions);
        set(&mut c.max_target_positions, self.max_target_positions);
        c.share_input_output_embed |= self.share_input_output_embed;
        c
    }
}

fn fconv_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    apply_flags("fconv", matches, &preset, |args: &FConvArgs, c| {
        let c = args.apply(c);
        // Malformed layer specs fail here, before any data is read, quoting the spec.
        c.encoder_convolutions()?;
        c.attention_layers()?;
        Ok(c)
    })
}

fn build_fconv(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    let mut config = parse_config::<FConvConfig>("fconv", config)?
        .with_vocab(ctx.src_vocab_size, ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(FConv::new(vs, &config)?))
}

crate::train::model::impl_family_model!(FConv);
