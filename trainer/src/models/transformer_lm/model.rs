//! The [`TransformerLm`] (fairseq's `TransformerLanguageModel`) and its self-attention cache.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor, nn};

use super::TransformerLmConfig;
use crate::models::adaptive::{AdaptiveInput, AdaptiveSoftmax};
use crate::models::nn::{Entry, Scope, normalized_probs, to_i64, tokens_2d, xavier_weight};
use crate::models::transformer::KeyValue;
use crate::models::transformer::layers::{DecoderLayer, LayerSpec, SelfAttention};
use crate::models::transformer::model::{Embeddings, TokenEmbedding};
use crate::models::transformer::nn::{LayerNorm, embedding_weight};
use crate::models::transformer::positions::{PositionalEmbedding, make_positions};
use crate::models::{Error, Result};

/// The self-attention keys and values of every layer, `[rows, heads, len, head_dim]`, for the
/// `len` tokens fed so far.
#[derive(Debug)]
pub struct LmCache {
    /// Per layer.
    pub self_attn: Vec<KeyValue>,
}

impl LmCache {
    /// Number of positions cached (the next token's index).
    pub fn len(&self) -> i64 {
        self.self_attn.first().map_or(0, |kv| kv.key.size().get(2).copied().unwrap_or(0))
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How features become scores.
enum Output {
    /// `decoder.output_projection.weight` `[vocab, output_dim]` (or the token embedding).
    Projection(Tensor),
    /// `decoder.adaptive_softmax.*`.
    Adaptive(AdaptiveSoftmax),
}

/// fairseq's decoder-only Transformer language model with fairseq's parameter names,
/// initialisation and maths; see the [module documentation](super).
pub struct TransformerLm {
    config: TransformerLmConfig,
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    layer_norm: Option<LayerNorm>,
    /// `decoder.project_out_dim.weight` `[output_dim, embed_dim]`.
    project_out_dim: Option<Tensor>,
    output: Output,
    entries: Vec<Entry>,
    device: Device,
    kind: Kind,
}

impl std::fmt::Debug for TransformerLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransformerLm")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl TransformerLm {
    /// Creates the model's variables under `vs` with fairseq's names (`decoder.embed_tokens.*`,
    /// `decoder.layers.{i}.*`, `decoder.adaptive_softmax.*`, …), in fairseq's order and with
    /// its initialisation, on the var store's device and kind.
    pub fn new(vs: &nn::Path<'_>, config: &TransformerLmConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let pad = to_i64(c.pad_index, "pad_index")?;
        let entries = RefCell::new(Vec::new());
        let root = Scope::root(vs, &entries);
        let dec = root.sub("decoder");
        dec.buffer("version", Tensor::f_from_slice(&[3f32])?.f_to_device(vs.device())?);
        let embed_dim = to_i64(c.decoder_embed_dim, "decoder_embed_dim")?;
        let input_dim = to_i64(c.input_dim(), "decoder_input_dim")?;
        let output_dim = to_i64(c.output_dim(), "decoder_output_dim")?;
        let vocab = to_i64(c.vocab_size, "vocab_size")?;

        let embed_scope = dec.sub("embed_tokens");
        let tokens = match c.input_bands() {
            Some(bands) => {
                TokenEmbedding::Adaptive(AdaptiveInput::new(&embed_scope, &bands, pad, input_dim)?)
            }
            None => {
                TokenEmbedding::Table(embedding_weight(&embed_scope, vocab, input_dim, Some(pad))?)
            }
        };
        let project_in_dim = if c.has_project_in() {
            Some(xavier_weight(&dec.sub("project_in_dim"), input_dim, embed_dim)?)
        } else {
            None
        };
        let max_positions = to_i64(c.max_positions(), "max_target_positions")?;
        let positions = if c.no_token_positional_embeddings {
            None
        } else {
            Some(PositionalEmbedding::new(
                &dec.sub("embed_positions"),
                max_positions,
                embed_dim,
                pad,
                c.decoder_learned_pos,
            )?)
        };
        let layernorm_embedding = if c.layernorm_embedding {
            Some(LayerNorm::new(&dec.sub("layernorm_embedding"), embed_dim)?)
        } else {
            None
        };
        let spec = LayerSpec {
            embed_dim,
            ffn_embed_dim: to_i64(c.decoder_ffn_embed_dim, "decoder_ffn_embed_dim")?,
            heads: to_i64(c.decoder_attention_heads, "decoder_attention_heads")?,
            normalize_before: c.decoder_normalize_before,
            dropout: c.dropout,
            attention_dropout: c.attention_dropout,
            activation_dropout: c.activation_dropout_p(),
            activation: c.activation_fn,
        };
        let layer_scope = dec.sub("layers");
        let layers = (0..c.decoder_layers)
            .map(|i| DecoderLayer::new(&layer_scope.sub(i), spec, None))
            .collect::<Result<Vec<_>>>()?;
        let layer_norm = if c.decoder_normalize_before && !c.no_decoder_final_norm {
            Some(LayerNorm::new(&dec.sub("layer_norm"), embed_dim)?)
        } else {
            None
        };
        let project_out_dim = if c.has_project_out() {
            Some(xavier_weight(&dec.sub("project_out_dim"), embed_dim, output_dim)?)
        } else {
            None
        };
        let output = match (c.softmax_bands(), &tokens) {
            (Some(bands), tokens) => {
                let tied = match tokens {
                    TokenEmbedding::Adaptive(input) if c.tie_adaptive_weights => Some(input),
                    _ => None,
                };
                Output::Adaptive(AdaptiveSoftmax::new(
                    &dec.sub("adaptive_softmax"),
                    &bands,
                    output_dim,
                    c.adaptive_softmax_dropout,
                    tied,
                    c.tie_adaptive_proj,
                )?)
            }
            (None, TokenEmbedding::Table(weight)) if c.shares_output_projection() => {
                dec.sub("output_projection").alias("weight", &embed_scope.name_of("weight"));
                Output::Projection(weight.shallow_clone())
            }
            // fairseq: normal(0, output_dim^-0.5), no padding row.
            (None, _) => Output::Projection(embedding_weight(
                &dec.sub("output_projection"),
                vocab,
                output_dim,
                None,
            )?),
        };
        let embeddings = Embeddings {
            tokens,
            scale: if c.no_scale_embedding { 1.0 } else { (embed_dim as f64).sqrt() },
            project_in_dim,
            positions,
            layernorm_embedding,
            padding_idx: pad,
            max_positions,
            dropout: c.dropout,
        };
        Ok(Self {
            config: config.clone(),
            embeddings,
            layers,
            layer_norm,
            project_out_dim,
            output,
            entries: entries.into_inner(),
            device: vs.device(),
            kind: vs.kind(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerLmConfig {
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

    /// The `(alias, parameter)` names of tied weights: `decoder.output_projection.weight` with
    /// `share_decoder_input_output_embed`; the adaptive softmax's `head.word_proj.weight`,
    /// `tail.{i}.2.weight` (and `tail.{i}.0.weight` with `tie_adaptive_proj`) with
    /// `tie_adaptive_weights`.
    pub fn tied_parameters(&self) -> Vec<(String, String)> {
        crate::models::nn::tied_parameters(&self.entries)
    }

    /// The model as fairseq 0.12.2's `model.state_dict()` lists it, in its order: parameters,
    /// tied aliases and the buffers (`decoder.version`, `decoder.embed_tokens._float_tensor`,
    /// `decoder.embed_positions._float_tensor`, `decoder.adaptive_softmax.version`,
    /// `decoder.adaptive_softmax.head._float_tensor`, as the model has them).
    pub fn fairseq_state_dict(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::state_dict(&self.entries)
    }

    /// The adaptive softmax, when the model ends in one.
    pub fn adaptive_softmax(&self) -> Option<&AdaptiveSoftmax> {
        match &self.output {
            Output::Adaptive(a) => Some(a),
            Output::Projection(_) => None,
        }
    }

    /// The final layer norm and `project_out_dim`.
    fn finish(&self, mut x: Tensor) -> Result<Tensor> {
        if let Some(norm) = &self.layer_norm {
            x = norm.forward(&x)?;
        }
        if let Some(proj) = &self.project_out_dim {
            x = x.f_linear(proj, None::<&Tensor>)?;
        }
        Ok(x)
    }

    /// The decoder's features `[batch, len, output_dim]` for `tokens` (`[batch, len]`, EOS
    /// first, right-padded with `pad_index`), teacher-forced.
    pub fn features(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        let tokens = tokens_2d(tokens, self.device, "prev_output_tokens")?;
        let emb = &self.embeddings;
        let len = tokens.size()[1];
        emb.check_len(len, "an input")?;
        let positions = make_positions(&tokens, emb.padding_idx)?;
        let mut x = emb.forward(&tokens, &positions, train)?;
        let padding_mask = tokens.f_eq(emb.padding_idx)?;
        let causal_mask = causal_mask(len, 0, x.kind(), self.device)?;
        for layer in &self.layers {
            x = layer.forward(
                &x,
                SelfAttention::Full { causal_mask: &causal_mask, padding_mask: &padding_mask },
                None,
                train,
            )?;
        }
        self.finish(x)
    }

    /// Scores of `features`: logits `[…, vocab]` of the output projection, or the features
    /// themselves with an adaptive softmax (fairseq's `output_layer`).
    fn output_layer(&self, features: Tensor) -> Result<Tensor> {
        match &self.output {
            Output::Projection(w) => Ok(features.f_linear(w, None::<&Tensor>)?),
            Output::Adaptive(_) => Ok(features),
        }
    }

    /// fairseq's `model(src_tokens)` for a language model, with the trainer's signature: the LM
    /// input is `prev_output_tokens` (`[batch, len]`, EOS first, right-padded, as fairseq's
    /// `language_modeling` task batches it); `src_tokens` and `src_lengths` are ignored.
    /// Returns logits `[batch, len, vocab]`, or the decoder features `[batch, len,
    /// output_dim]` when the model ends in an adaptive softmax (pass them to
    /// [`TransformerLm::get_normalized_probs`] or the `adaptive_loss` criterion).
    pub fn forward(
        &self,
        _src_tokens: &Tensor,
        _src_lengths: &Tensor,
        prev_output_tokens: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        self.output_layer(self.features(prev_output_tokens, train)?)
    }

    /// fairseq's `get_normalized_probs` of what [`TransformerLm::forward`] returned: fp32
    /// (log-)probabilities over the whole vocabulary, through the adaptive softmax's
    /// `get_log_prob` when the model has one.
    pub fn get_normalized_probs(&self, net_output: &Tensor, log_probs: bool) -> Result<Tensor> {
        match &self.output {
            Output::Projection(_) => normalized_probs(net_output, log_probs),
            Output::Adaptive(a) => {
                let lp = a.log_prob(net_output)?;
                if log_probs { Ok(lp) } else { Ok(lp.f_exp()?) }
            }
        }
    }

    /// An empty cache for `rows` rows.
    pub fn empty_cache(&self, rows: i64) -> Result<LmCache> {
        let like = Tensor::f_zeros([1], (self.kind, self.device))?;
        let self_attn =
            self.layers.iter().map(|l| l.empty_cache(rows, &like)).collect::<Result<Vec<_>>>()?;
        Ok(LmCache { self_attn })
    }

    /// Feeds `tokens` (`[rows, new]`, no padding) after what `cache` holds, appends their keys
    /// and values and returns the features `[rows, new, output_dim]` (eval mode).
    fn extend(&self, tokens: &Tensor, cache: &mut LmCache) -> Result<Tensor> {
        let tokens = tokens_2d(tokens, self.device, "tokens")?;
        let size = tokens.size();
        let (rows, new) = (size[0], size[1]);
        if cache.self_attn.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "the cache has {} layers, the model {}",
                cache.self_attn.len(),
                self.layers.len()
            )));
        }
        if cache.self_attn.first().is_some_and(|kv| kv.key.size()[0] != rows) {
            return Err(Error::Input(format!(
                "{rows} rows of tokens for a cache of {} rows",
                cache.self_attn.first().map_or(0, |kv| kv.key.size()[0])
            )));
        }
        let emb = &self.embeddings;
        if tokens.f_eq(emb.padding_idx)?.f_any()?.f_int64_value(&[])? != 0 {
            return Err(Error::Input(
                "incremental decoding takes no padding (a prompt must not be padded)".into(),
            ));
        }
        let past = cache.len();
        emb.check_len(past + new, "an input")?;
        // fairseq: position of the i-th token fed is padding_idx + 1 + i.
        let positions = Tensor::f_arange_start(past, past + new, (Kind::Int64, self.device))?
            .f_add_scalar(emb.padding_idx + 1)?
            .f_unsqueeze(0)?
            .f_expand([rows, new], false)?;
        let mut x = emb.forward(&tokens, &positions, false)?;
        let mask =
            if new > 1 { Some(causal_mask(new, past, x.kind(), self.device)?) } else { None };
        for (layer, kv) in self.layers.iter().zip(cache.self_attn.iter_mut()) {
            x = layer.forward(
                &x,
                SelfAttention::Cached { cache: kv, attn_mask: mask.as_ref() },
                None,
                false,
            )?;
        }
        self.finish(x)
    }

    /// Runs `prompt` (`[rows, len]`, len ≥ 1, EOS first as fairseq's LM generation starts, no
    /// padding) through the decoder at once: fp32 log-probabilities `[rows, len, vocab]` of the
    /// token after each position, and the cache holding the `len` positions.
    pub fn prefill(&self, prompt: &Tensor) -> Result<(Tensor, LmCache)> {
        let size = prompt.size();
        if size.len() != 2 || size[1] < 1 {
            return Err(Error::Input(format!(
                "a prompt must be [rows, len] with len ≥ 1, got {size:?}"
            )));
        }
        let mut cache = self.empty_cache(size[0])?;
        let features = self.extend(prompt, &mut cache)?;
        let lprobs = self.get_normalized_probs(&self.output_layer(features)?, true)?;
        Ok((lprobs, cache))
    }

    /// One incremental step (no dropout): feeds `tokens` (`[rows]`) at position
    /// `cache.len()`, appends to the cache and returns fp32 log-probabilities `[rows, vocab]` of
    /// the next token. Same maths as the full forward pass on the whole prefix.
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut LmCache) -> Result<Tensor> {
        let rows = tokens.size().first().copied().unwrap_or(0);
        if tokens.size() != [rows] {
            return Err(Error::Input(format!(
                "decode_step needs one token per row, got shape {:?}",
                tokens.size()
            )));
        }
        let features = self.extend(&tokens.f_reshape([rows, 1])?, cache)?;
        let lprobs = self.get_normalized_probs(&self.output_layer(features)?, true)?;
        Ok(lprobs.f_squeeze_dim(1)?)
    }
}

/// fairseq's `buffered_future_mask` for `new` queries after `past` cached keys: `[new, past +
/// new]`, 0 where a query may look, `-inf` at later positions.
fn causal_mask(new: i64, past: i64, kind: Kind, device: Device) -> Result<Tensor> {
    Ok(Tensor::f_full([new, past + new], f64::NEG_INFINITY, (kind, device))?.f_triu(1 + past)?)
}
