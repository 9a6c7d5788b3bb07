//! The language model's registration: its flags ([`TransformerLmArgs`], fairseq's names), how
//! they override a preset, and the [`Model`] the trainer trains.

use serde_json::Value;
use tch::nn;

use super::{TransformerLm, TransformerLmConfig};
use crate::models::Error;
use crate::models::transformer::Activation;
use crate::train::model::{Model, ModelContext, ModelFactory, apply_flags, parse_config, set};
use seqforge_schemas::arch::transformer_lm::parse_cutoff;

/// The registry entry of the `transformer_lm` model.
pub fn factory() -> ModelFactory {
    ModelFactory {
        augment_args: <TransformerLmArgs as clap::Args>::augment_args,
        apply_args: transformer_lm_apply_args,
        build: build_transformer_lm,
        decoder_only: true,
    }
}

/// The language model's flags (fairseq's names): each one given overrides the architecture's
/// preset; boolean flags can only turn an option on, as in fairseq.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TransformerLmArgs {
    /// Feed-forward activation: relu, gelu, gelu_accurate, tanh, linear.
    #[arg(long)]
    pub activation_fn: Option<String>,
    /// Dropout probability.
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Dropout probability on attention weights.
    #[arg(long)]
    pub attention_dropout: Option<f64>,
    /// Dropout probability after the feed-forward activation.
    #[arg(long)]
    pub activation_dropout: Option<f64>,
    /// Old name of --activation-dropout (used when that is 0).
    #[arg(long)]
    pub relu_dropout: Option<f64>,
    /// Decoder embedding (model) dimension.
    #[arg(long)]
    pub decoder_embed_dim: Option<usize>,
    /// Decoder output dimension.
    #[arg(long)]
    pub decoder_output_dim: Option<usize>,
    /// Decoder input dimension.
    #[arg(long)]
    pub decoder_input_dim: Option<usize>,
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
    /// No final layer norm after the last (pre-norm) layer.
    #[arg(long)]
    pub no_decoder_final_norm: bool,
    /// Comma-separated adaptive softmax cutoffs, e.g. 20000,60000 (use with --criterion
    /// adaptive_loss).
    #[arg(long)]
    pub adaptive_softmax_cutoff: Option<String>,
    /// Dropout inside the adaptive softmax tails.
    #[arg(long)]
    pub adaptive_softmax_dropout: Option<f64>,
    /// Adaptive softmax factor.
    #[arg(long)]
    pub adaptive_softmax_factor: Option<f64>,
    /// No positional embeddings.
    #[arg(long)]
    pub no_token_positional_embeddings: bool,
    /// Tie the output projection to the input embedding.
    #[arg(long)]
    pub share_decoder_input_output_embed: bool,
    /// Character embeddings (not supported: refused).
    #[arg(long)]
    pub character_embeddings: bool,
    /// Adaptive input embeddings.
    #[arg(long)]
    pub adaptive_input: bool,
    /// Adaptive input factor.
    #[arg(long)]
    pub adaptive_input_factor: Option<f64>,
    /// Comma-separated adaptive input cutoffs.
    #[arg(long)]
    pub adaptive_input_cutoff: Option<String>,
    /// Tie the adaptive softmax's weights to the adaptive input's.
    #[arg(long)]
    pub tie_adaptive_weights: bool,
    /// Also tie the adaptive softmax's tail projections to the adaptive input's.
    #[arg(long)]
    pub tie_adaptive_proj: bool,
    /// Learned positions.
    #[arg(long)]
    pub decoder_learned_pos: bool,
    /// Layer norm on the embeddings.
    #[arg(long)]
    pub layernorm_embedding: bool,
    /// Do not scale embeddings by sqrt(dim).
    #[arg(long)]
    pub no_scale_embedding: bool,
    /// Longest input in tokens (default: the task's --tokens-per-sample, which the
    /// `language_modeling` task sets in the model's config).
    #[arg(long)]
    pub max_target_positions: Option<usize>,
}

impl TransformerLmArgs {
    /// `config` with every flag that was given applied.
    pub fn apply(&self, mut c: TransformerLmConfig) -> Result<TransformerLmConfig, Error> {
        set(&mut c.dropout, self.dropout);
        set(&mut c.attention_dropout, self.attention_dropout);
        set(&mut c.activation_dropout, self.activation_dropout);
        set(&mut c.relu_dropout, self.relu_dropout);
        set(&mut c.decoder_embed_dim, self.decoder_embed_dim);
        set(&mut c.decoder_ffn_embed_dim, self.decoder_ffn_embed_dim);
        set(&mut c.decoder_layers, self.decoder_layers);
        set(&mut c.decoder_attention_heads, self.decoder_attention_heads);
        set(&mut c.adaptive_softmax_dropout, self.adaptive_softmax_dropout);
        set(&mut c.adaptive_softmax_factor, self.adaptive_softmax_factor);
        set(&mut c.adaptive_input_factor, self.adaptive_input_factor);
        if self.decoder_output_dim.is_some() {
            c.decoder_output_dim = self.decoder_output_dim;
        }
        if self.decoder_input_dim.is_some() {
            c.decoder_input_dim = self.decoder_input_dim;
        }
        if self.max_target_positions.is_some() {
            c.max_target_positions = self.max_target_positions;
        }
        let cutoff = |flag: &str, v: &Option<String>| -> Result<Option<Vec<usize>>, Error> {
            v.as_deref()
                .map(|s| parse_cutoff(s).map_err(|e| Error::Config(format!("--{flag}: {e}"))))
                .transpose()
        };
        if let Some(v) = cutoff("adaptive-softmax-cutoff", &self.adaptive_softmax_cutoff)? {
            c.adaptive_softmax_cutoff = Some(v);
        }
        if let Some(v) = cutoff("adaptive-input-cutoff", &self.adaptive_input_cutoff)? {
            c.adaptive_input_cutoff = Some(v);
        }
        c.decoder_normalize_before |= self.decoder_normalize_before;
        c.no_decoder_final_norm |= self.no_decoder_final_norm;
        c.no_token_positional_embeddings |= self.no_token_positional_embeddings;
        c.share_decoder_input_output_embed |= self.share_decoder_input_output_embed;
        c.character_embeddings |= self.character_embeddings;
        c.adaptive_input |= self.adaptive_input;
        c.tie_adaptive_weights |= self.tie_adaptive_weights;
        c.tie_adaptive_proj |= self.tie_adaptive_proj;
        c.decoder_learned_pos |= self.decoder_learned_pos;
        c.layernorm_embedding |= self.layernorm_embedding;
        c.no_scale_embedding |= self.no_scale_embedding;
        if let Some(name) = &self.activation_fn {
            c.activation_fn = serde_json::from_value::<Activation>(Value::String(name.clone()))
                .map_err(|e| Error::Config(format!("--activation-fn {name:?}: {e}")))?;
        }
        Ok(c)
    }
}

fn transformer_lm_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    apply_flags("transformer_lm", matches, &preset, TransformerLmArgs::apply)
}

fn build_transformer_lm(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    if ctx.src_vocab_size != ctx.tgt_vocab_size {
        return Err(Error::Config(format!(
            "a language model reads and predicts one dictionary, but the source dictionary has \
             {} entries and the target dictionary {}",
            ctx.src_vocab_size, ctx.tgt_vocab_size
        )));
    }
    let mut config = parse_config::<TransformerLmConfig>("transformer_lm", config)?
        .with_vocab(ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(TransformerLm::new(vs, &config)?))
}

crate::train::model::impl_family_model!(TransformerLm, adaptive_softmax);
