//! The Transformer's registration: its flags ([`TransformerArgs`], fairseq's names), how they
//! override a preset, and the [`Model`] the trainer trains.

use serde_json::Value;
use tch::nn;

use super::{Activation, Transformer, TransformerConfig};
use crate::models::Error;
use crate::train::model::{Model, ModelContext, ModelFactory, apply_flags, parse_config, set};

/// The registry entry of the `transformer` model.
pub fn factory() -> ModelFactory {
    ModelFactory {
        augment_args: <TransformerArgs as clap::Args>::augment_args,
        apply_args: transformer_apply_args,
        build: build_transformer,
        decoder_only: false,
    }
}

/// The Transformer's flags (fairseq's names): each one given overrides the architecture's
/// preset; boolean flags can only turn an option on, as in fairseq.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TransformerArgs {
    /// Encoder embedding dimension.
    #[arg(long)]
    pub encoder_embed_dim: Option<usize>,
    /// Encoder feed-forward inner dimension.
    #[arg(long)]
    pub encoder_ffn_embed_dim: Option<usize>,
    /// Number of encoder layers.
    #[arg(long)]
    pub encoder_layers: Option<usize>,
    /// Number of encoder attention heads.
    #[arg(long)]
    pub encoder_attention_heads: Option<usize>,
    /// Pre-norm encoder.
    #[arg(long)]
    pub encoder_normalize_before: bool,
    /// Learned encoder positions.
    #[arg(long)]
    pub encoder_learned_pos: bool,
    /// Decoder embedding dimension.
    #[arg(long)]
    pub decoder_embed_dim: Option<usize>,
    /// Decoder feed-forward inner dimension.
    #[arg(long)]
    pub decoder_ffn_embed_dim: Option<usize>,
    /// Number of decoder layers.
    #[arg(long)]
    pub decoder_layers: Option<usize>,
    /// Number of decoder attention heads.
    #[arg(long)]
    pub decoder_attention_heads: Option<usize>,
    /// Pre-norm decoder.
    #[arg(long)]
    pub decoder_normalize_before: bool,
    /// Learned decoder positions.
    #[arg(long)]
    pub decoder_learned_pos: bool,
    /// Tie the decoder's input and output embeddings.
    #[arg(long)]
    pub share_decoder_input_output_embed: bool,
    /// One embedding matrix for encoder, decoder and output (needs a joined dictionary).
    #[arg(long)]
    pub share_all_embeddings: bool,
    /// Dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Dropout probability on attention weights.
    #[arg(long)]
    pub attention_dropout: Option<f64>,
    /// Dropout probability after the feed-forward activation.
    #[arg(long, visible_alias = "relu-dropout")]
    pub activation_dropout: Option<f64>,
    /// Feed-forward activation: relu, gelu, gelu_accurate, tanh, linear.
    #[arg(long)]
    pub activation_fn: Option<String>,
    /// Longest source in tokens.
    #[arg(long)]
    pub max_source_positions: Option<usize>,
    /// Longest target in tokens.
    #[arg(long)]
    pub max_target_positions: Option<usize>,
    /// Do not scale embeddings by sqrt(dim).
    #[arg(long)]
    pub no_scale_embedding: bool,
    /// Layer norm on the embeddings.
    #[arg(long)]
    pub layernorm_embedding: bool,
    /// No positional embeddings.
    #[arg(long)]
    pub no_token_positional_embeddings: bool,
    /// No final decoder layer norm (pre-norm decoders).
    #[arg(long)]
    pub no_decoder_final_norm: bool,
}

impl TransformerArgs {
    /// `config` with every flag that was given applied.
    pub fn apply(&self, mut c: TransformerConfig) -> Result<TransformerConfig, Error> {
        set(&mut c.encoder_embed_dim, self.encoder_embed_dim);
        set(&mut c.encoder_ffn_embed_dim, self.encoder_ffn_embed_dim);
        set(&mut c.encoder_layers, self.encoder_layers);
        set(&mut c.encoder_attention_heads, self.encoder_attention_heads);
        set(&mut c.decoder_embed_dim, self.decoder_embed_dim);
        set(&mut c.decoder_ffn_embed_dim, self.decoder_ffn_embed_dim);
        set(&mut c.decoder_layers, self.decoder_layers);
        set(&mut c.decoder_attention_heads, self.decoder_attention_heads);
        set(&mut c.dropout, self.dropout);
        set(&mut c.attention_dropout, self.attention_dropout);
        set(&mut c.activation_dropout, self.activation_dropout);
        set(&mut c.max_source_positions, self.max_source_positions);
        set(&mut c.max_target_positions, self.max_target_positions);
        c.encoder_normalize_before |= self.encoder_normalize_before;
        c.encoder_learned_pos |= self.encoder_learned_pos;
        c.decoder_normalize_before |= self.decoder_normalize_before;
        c.decoder_learned_pos |= self.decoder_learned_pos;
        c.share_decoder_input_output_embed |= self.share_decoder_input_output_embed;
        c.share_all_embeddings |= self.share_all_embeddings;
        c.no_scale_embedding |= self.no_scale_embedding;
        c.layernorm_embedding |= self.layernorm_embedding;
        c.no_token_positional_embeddings |= self.no_token_positional_embeddings;
        c.no_decoder_final_norm |= self.no_decoder_final_norm;
        if let Some(name) = &self.activation_fn {
            c.activation_fn = serde_json::from_value::<Activation>(Value::String(name.clone()))
                .map_err(|e| Error::Config(format!("--activation-fn {name:?}: {e}")))?;
        }
        Ok(c)
    }
}

fn transformer_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    apply_flags("transformer", matches, &preset, TransformerArgs::apply)
}

fn build_transformer(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    let mut config = parse_config::<TransformerConfig>("transformer", config)?
        .with_vocab(ctx.src_vocab_size, ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(Transformer::new(vs, &config)?))
}

crate::train::model::impl_family_model!(Transformer);
