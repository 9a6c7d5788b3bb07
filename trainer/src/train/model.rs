//! What the trainer needs from a model ([`Model`]), how a registry builds one by name
//! ([`ModelFactory`], [`Architecture`]), and the built-in models' entries: their flags
//! ([`TransformerArgs`], [`LstmArgs`], fairseq's names) and one architecture per preset.

use std::fmt;

use serde_json::Value;
use tch::{Tensor, nn};

use crate::models::lstm::{Lstm, LstmConfig};
use crate::models::transformer::{Activation, Transformer, TransformerConfig};
use crate::models::{Error, StepModel};

/// A sequence-to-sequence model the trainer can train: teacher-forced forward pass, normalized
/// probabilities and named parameters.
pub trait Model: Send {
    /// Logits `[batch, tgt_len, vocab]` for `prev_output_tokens`, given the (left-padded)
    /// source; dropout only when `train`.
    fn forward(
        &self,
        src_tokens: &Tensor,
        src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor, Error>;

    /// (Log-)probabilities over the vocabulary in fp32 (fairseq's `get_normalized_probs`).
    fn get_normalized_probs(&self, logits: &Tensor, log_probs: bool) -> Result<Tensor, Error>;

    /// Trainable parameters under their (fairseq) names, each once.
    fn parameters(&self) -> Vec<(String, Tensor)>;

    /// `(max source positions, max target positions)` in tokens, EOS included.
    fn max_positions(&self) -> (usize, usize);

    /// What a checkpoint stores: named tensors (by default the parameters; the Transformer
    /// gives fairseq's full state dict, tied aliases and buffers included).
    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.parameters()
    }

    /// `(alias, parameter)` names of tied weights listed in [`Model::state_dict`] under more
    /// than one name (none by default; see
    /// [`Transformer::tied_parameters`](crate::models::transformer::Transformer::tied_parameters)).
    fn tied_parameters(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// The model as a [`StepModel`], which [`TorchDecoder`](crate::models::TorchDecoder)
    /// decodes incrementally (what `--eval-bleu` needs); `None` for a model that cannot.
    fn step_model(&self) -> Option<&dyn StepModel> {
        None
    }
}

/// What a model needs besides its own config: the dictionaries' sizes and padding index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelContext {
    /// Source dictionary size.
    pub src_vocab_size: usize,
    /// Target dictionary size.
    pub tgt_vocab_size: usize,
    /// Padding index of both dictionaries.
    pub pad_index: usize,
}

/// Builds a model from its JSON config under a var-store path.
pub type BuildModel = fn(&nn::Path<'_>, &Value, &ModelContext) -> Result<Box<dyn Model>, Error>;

/// How a registry builds one kind of model by name.
///
/// The flow: the architecture chosen with `--arch` gives the model's name and a preset config
/// (JSON); `augment_args` adds the model's flags to the command; `apply_args` overrides the
/// preset with the flags that were given; `build` makes the model from the resulting JSON.
#[derive(Clone, Copy)]
pub struct ModelFactory {
    /// Adds this model's flags (e.g. `--encoder-layers`) to a `clap::Command`.
    pub augment_args: fn(clap::Command) -> clap::Command,
    /// The preset config (JSON) with the flags given on the command line applied.
    pub apply_args: fn(&clap::ArgMatches, Value) -> Result<Value, Error>,
    /// Builds the model.
    pub build: BuildModel,
}

impl fmt::Debug for ModelFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelFactory").finish_non_exhaustive()
    }
}

/// A named architecture: which model, and its preset config (JSON) before flag overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Architecture {
    /// The model's registry name, e.g. `"transformer"`.
    pub model: String,
    /// The preset config, e.g. `transformer_tiny`'s dimensions.
    pub config: Value,
}

/// The models built into seqforge: `transformer` and `lstm`.
pub fn builtin_models() -> Vec<(&'static str, ModelFactory)> {
    vec![
        (
            "transformer",
            ModelFactory {
                augment_args: <TransformerArgs as clap::Args>::augment_args,
                apply_args: transformer_apply_args,
                build: build_transformer,
            },
        ),
        (
            "lstm",
            ModelFactory {
                augment_args: <LstmArgs as clap::Args>::augment_args,
                apply_args: lstm_apply_args,
                build: build_lstm,
            },
        ),
    ]
}

/// The architectures built into seqforge: every preset of every family in
/// [`seqforge_schemas::arch`] (fairseq's names and defaults, shared with the exporter).
pub fn builtin_architectures() -> Vec<(String, Architecture)> {
    seqforge_schemas::arch::architectures()
        .filter_map(|(name, family)| {
            let config = (family.preset)(name)?;
            Some((name.to_string(), Architecture { model: family.name.into(), config }))
        })
        .collect()
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
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
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

fn transformer_config(value: &Value) -> Result<TransformerConfig, Error> {
    serde_json::from_value(value.clone())
        .map_err(|e| Error::Config(format!("transformer config: {e}")))
}

fn transformer_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    let args = <TransformerArgs as clap::FromArgMatches>::from_arg_matches(matches)
        .map_err(|e| Error::Config(e.to_string()))?;
    let config = args.apply(transformer_config(&preset)?)?;
    serde_json::to_value(config).map_err(|e| Error::Config(format!("transformer config: {e}")))
}

fn build_transformer(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    let mut config = transformer_config(config)?.with_vocab(ctx.src_vocab_size, ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(Transformer::new(vs, &config)?))
}

impl Model for Transformer {
    fn forward(
        &self,
        src_tokens: &Tensor,
        src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor, Error> {
        Transformer::forward(self, src_tokens, src_lengths, prev_output_tokens, train)
    }

    fn get_normalized_probs(&self, logits: &Tensor, log_probs: bool) -> Result<Tensor, Error> {
        Transformer::get_normalized_probs(self, logits, log_probs)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        Transformer::parameters(self)
    }

    fn max_positions(&self) -> (usize, usize) {
        (self.config().max_source_positions, self.config().max_target_positions)
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.fairseq_state_dict()
    }

    fn tied_parameters(&self) -> Vec<(String, String)> {
        Transformer::tied_parameters(self)
    }

    fn step_model(&self) -> Option<&dyn StepModel> {
        Some(self)
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
        fn set<T: Copy>(dst: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *dst = v;
            }
        }
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

fn lstm_config(value: &Value) -> Result<LstmConfig, Error> {
    serde_json::from_value(value.clone()).map_err(|e| Error::Config(format!("lstm config: {e}")))
}

fn lstm_apply_args(matches: &clap::ArgMatches, preset: Value) -> Result<Value, Error> {
    let args = <LstmArgs as clap::FromArgMatches>::from_arg_matches(matches)
        .map_err(|e| Error::Config(e.to_string()))?;
    let config = args.apply(lstm_config(&preset)?);
    serde_json::to_value(config).map_err(|e| Error::Config(format!("lstm config: {e}")))
}

fn build_lstm(
    vs: &nn::Path<'_>,
    config: &Value,
    ctx: &ModelContext,
) -> Result<Box<dyn Model>, Error> {
    let mut config = lstm_config(config)?.with_vocab(ctx.src_vocab_size, ctx.tgt_vocab_size);
    config.pad_index = ctx.pad_index;
    Ok(Box::new(Lstm::new(vs, &config)?))
}

impl Model for Lstm {
    fn forward(
        &self,
        src_tokens: &Tensor,
        src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor, Error> {
        Lstm::forward(self, src_tokens, src_lengths, prev_output_tokens, train)
    }

    fn get_normalized_probs(&self, logits: &Tensor, log_probs: bool) -> Result<Tensor, Error> {
        Lstm::get_normalized_probs(self, logits, log_probs)
    }

    fn parameters(&self) -> Vec<(String, Tensor)> {
        Lstm::parameters(self)
    }

    fn max_positions(&self) -> (usize, usize) {
        (self.config().max_source_positions, self.config().max_target_positions)
    }

    fn state_dict(&self) -> Vec<(String, Tensor)> {
        self.fairseq_state_dict()
    }

    fn tied_parameters(&self) -> Vec<(String, String)> {
        Lstm::tied_parameters(self)
    }

    fn step_model(&self) -> Option<&dyn StepModel> {
        Some(self)
    }
}
