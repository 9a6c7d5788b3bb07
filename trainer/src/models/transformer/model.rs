//! The encoder-decoder [`Transformer`] (fairseq's `TransformerModel`), its encoder output and
//! the explicit decoder cache used for incremental decoding.

use std::cell::RefCell;

use tch::{Device, Kind, Tensor, nn};

use super::config::TransformerConfig;
use super::layers::{CrossInput, DecoderLayer, EncoderLayer, LayerSpec, SelfAttention};
use super::nn::{Entry, LayerNorm, Scope, dropout, embed, embedding_weight};
use super::positions::{PositionalEmbedding, make_positions};
use crate::models::adaptive::AdaptiveInput;
use crate::models::{Error, Result};

/// The encoder's output for a batch of sources.
#[derive(Debug)]
pub struct EncoderOut {
    /// Final encoder states `[batch, src_len, encoder_embed_dim]` (fairseq's `encoder_out`,
    /// batch-first).
    pub out: Tensor,
    /// `[batch, src_len]`, `true` at padding (fairseq's `encoder_padding_mask`).
    pub padding_mask: Tensor,
}

impl EncoderOut {
    /// The rows `index` (an `Int64` tensor) of the batch, in that order (fairseq's
    /// `reorder_encoder_out`).
    pub fn index_select(&self, index: &Tensor) -> Result<Self> {
        Ok(Self {
            out: self.out.f_index_select(0, index)?,
            padding_mask: self.padding_mask.f_index_select(0, index)?,
        })
    }

    /// Number of sentences.
    pub fn batch_size(&self) -> usize {
        self.out.size().first().map_or(0, |&b| b as usize)
    }
}

/// The keys and values of one attention layer, `[rows, heads, len, head_dim]` each.
#[derive(Debug)]
pub struct KeyValue {
    /// Keys.
    pub key: Tensor,
    /// Values.
    pub value: Tensor,
}

impl KeyValue {
    fn index_select(&self, index: &Tensor) -> Result<Self> {
        Ok(Self {
            key: self.key.f_index_select(0, index)?,
            value: self.value.f_index_select(0, index)?,
        })
    }
}

/// Everything incremental decoding needs, one row per live hypothesis. Nothing is hidden in
/// the model: reordering rows (beam search) is [`DecoderCache::reorder`].
#[derive(Debug)]
pub struct DecoderCache {
    /// Per decoder layer: self-attention keys and values of the tokens fed so far,
    /// `[rows, heads, step, head_dim]`.
    pub self_attn: Vec<KeyValue>,
    /// Per decoder layer: encoder-attention keys and values, computed once from the encoder
    /// output, `[rows, heads, src_len, head_dim]`.
    pub cross_attn: Vec<KeyValue>,
    /// `[rows, src_len]`, `true` at source padding.
    pub encoder_padding_mask: Tensor,
    /// Number of tokens fed so far (the next token's position is `padding_idx + step + 1`).
    pub step: usize,
}

impl DecoderCache {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.encoder_padding_mask.size().first().map_or(0, |&r| r as usize)
    }

    /// New row `i` becomes old row `index[i]` in every tensor (`index`: `Int64`, may repeat rows
    /// and be shorter: beam reordering and pruning are the same operation).
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        for kv in self.self_attn.iter_mut().chain(self.cross_attn.iter_mut()) {
            *kv = kv.index_select(index)?;
        }
        self.encoder_padding_mask = self.encoder_padding_mask.f_index_select(0, index)?;
        Ok(())
    }
}

/// How tokens become vectors: an embedding table, or fairseq's `AdaptiveInput`.
pub(crate) enum TokenEmbedding {
    /// `[vocab, dim]`; the decoder's may be the encoder's tensor (`share_all_embeddings`).
    Table(Tensor),
    /// Bands of narrower embeddings projected to a common width (language models).
    Adaptive(AdaptiveInput),
}

/// Token embedding, scale, input projection, positions, optional layer norm, dropout:
/// fairseq's `forward_embedding` (shared by encoder, decoder and the language model).
pub(crate) struct Embeddings {
    pub(crate) tokens: TokenEmbedding,
    pub(crate) scale: f64,
    /// fairseq's `project_in_dim` (`[embed_dim, input_dim]`, no bias) when the token
    /// embeddings are narrower or wider than the model.
    pub(crate) project_in_dim: Option<Tensor>,
    pub(crate) positions: Option<PositionalEmbedding>,
    pub(crate) layernorm_embedding: Option<LayerNorm>,
    pub(crate) padding_idx: i64,
    pub(crate) max_positions: i64,
    pub(crate) dropout: f64,
}

impl Embeddings {
    /// `tokens`: `[batch, len]`, `positions`: `[batch, len]` → `[batch, len, dim]`.
    pub(crate) fn forward(
        &self,
        tokens: &Tensor,
        positions: &Tensor,
        train: bool,
    ) -> Result<Tensor> {
        let x = match &self.tokens {
            TokenEmbedding::Table(weight) => embed(weight, tokens, self.padding_idx)?,
            TokenEmbedding::Adaptive(adaptive) => adaptive.forward(tokens)?,
        };
        let mut x = x.f_mul_scalar(self.scale)?;
        if let Some(proj) = &self.project_in_dim {
            x = x.f_linear(proj, None::<&Tensor>)?;
        }
        if let Some(pos) = &self.positions {
            x = x.f_add(&pos.forward(positions)?)?;
        }
        if let Some(norm) = &self.layernorm_embedding {
            x = norm.forward(&x)?;
        }
        dropout(x, self.dropout, train)
    }

    /// An error when `len` positions exceed the model's maximum (with positional embeddings).
    pub(crate) fn check_len(&self, len: i64, side: &str) -> Result<()> {
        if self.positions.is_some() && len > self.max_positions {
            return Err(Error::Input(format!(
                "{side} of {len} positions is longer than the model's maximum of {}",
                self.max_positions
            )));
        }
        Ok(())
    }
}

struct Encoder {
    embeddings: Embeddings,
    layers: Vec<EncoderLayer>,
    layer_norm: Option<LayerNorm>,
}

struct Decoder {
    embeddings: Embeddings,
    layers: Vec<DecoderLayer>,
    layer_norm: Option<LayerNorm>,
    /// `[vocab, dim]`: `decoder.output_projection.weight`, or the decoder's embedding.
    output_projection: Tensor,
}

/// fairseq's encoder-decoder Transformer with fairseq's parameter names, initialisation and
/// maths; see the [module documentation](super).
pub struct Transformer {
    config: TransformerConfig,
    encoder: Encoder,
    decoder: Decoder,
    entries: Vec<Entry>,
    device: Device,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

use crate::models::nn::{to_i64 as usize_to_i64, tokens_2d};

impl Transformer {
    /// Creates the model's variables under `vs` (fairseq names, e.g.
    /// `encoder.layers.0.self_attn.q_proj.weight`) initialised as fairseq does, on the var
    /// store's device and kind.
    pub fn new(vs: &nn::Path<'_>, config: &TransformerConfig) -> Result<Self> {
        config.validate()?;
        let c = config;
        let pad = usize_to_i64(c.pad_index, "pad_index")?;
        let entries = RefCell::new(Vec::new());
        let root = Scope::root(vs, &entries);
        let int = |v: usize, what: &str| usize_to_i64(v, what);

        // Encoder.
        let enc = root.sub("encoder");
        enc.buffer("version", Tensor::f_from_slice(&[3f32])?.f_to_device(vs.device())?);
        let enc_dim = int(c.encoder_embed_dim, "encoder_embed_dim")?;
        let enc_tokens = embedding_weight(
            &enc.sub("embed_tokens"),
            int(c.src_vocab_size, "src_vocab_size")?,
            enc_dim,
            Some(pad),
        )?;
        let enc_max = int(c.max_source_positions, "max_source_positions")?;
        let encoder_embeddings = Embeddings {
            tokens: TokenEmbedding::Table(enc_tokens.shallow_clone()),
            project_in_dim: None,
            scale: if c.no_scale_embedding { 1.0 } else { (enc_dim as f64).sqrt() },
            positions: if c.no_token_positional_embeddings {
                None
            } else {
                Some(PositionalEmbedding::new(
                    &enc.sub("embed_positions"),
                    enc_max,
                    enc_dim,
                    pad,
                    c.encoder_learned_pos,
                )?)
            },
            layernorm_embedding: if c.layernorm_embedding {
                Some(LayerNorm::new(&enc.sub("layernorm_embedding"), enc_dim)?)
            } else {
                None
            },
            padding_idx: pad,
            max_positions: enc_max,
            dropout: c.dropout,
        };
        let enc_spec = LayerSpec {
            embed_dim: enc_dim,
            ffn_embed_dim: int(c.encoder_ffn_embed_dim, "encoder_ffn_embed_dim")?,
            heads: int(c.encoder_attention_heads, "encoder_attention_heads")?,
            normalize_before: c.encoder_normalize_before,
            dropout: c.dropout,
            attention_dropout: c.attention_dropout,
            activation_dropout: c.activation_dropout,
            activation: c.activation_fn,
        };
        let enc_layers = enc.sub("layers");
        let encoder_layers = (0..c.encoder_layers)
            .map(|i| EncoderLayer::new(&enc_layers.sub(i), enc_spec))
            .collect::<Result<Vec<_>>>()?;
        let encoder_layer_norm = if c.encoder_normalize_before {
            Some(LayerNorm::new(&enc.sub("layer_norm"), enc_dim)?)
        } else {
            None
        };

        // Decoder.
        let dec = root.sub("decoder");
        dec.buffer("version", Tensor::f_from_slice(&[3f32])?.f_to_device(vs.device())?);
        let dec_dim = int(c.decoder_embed_dim, "decoder_embed_dim")?;
        let tgt_vocab = int(c.tgt_vocab_size, "tgt_vocab_size")?;
        let dec_tokens = if c.share_all_embeddings {
            dec.sub("embed_tokens").alias("weight", &enc.sub("embed_tokens").name_of("weight"));
            enc_tokens.shallow_clone()
        } else {
            embedding_weight(&dec.sub("embed_tokens"), tgt_vocab, dec_dim, Some(pad))?
        };
        let dec_max = int(c.max_target_positions, "max_target_positions")?;
        let decoder_embeddings = Embeddings {
            tokens: TokenEmbedding::Table(dec_tokens.shallow_clone()),
            project_in_dim: None,
            scale: if c.no_scale_embedding { 1.0 } else { (dec_dim as f64).sqrt() },
            positions: if c.no_token_positional_embeddings {
                None
            } else {
                Some(PositionalEmbedding::new(
                    &dec.sub("embed_positions"),
                    dec_max,
                    dec_dim,
                    pad,
                    c.decoder_learned_pos,
                )?)
            },
            layernorm_embedding: if c.layernorm_embedding {
                Some(LayerNorm::new(&dec.sub("layernorm_embedding"), dec_dim)?)
            } else {
                None
            },
            padding_idx: pad,
            max_positions: dec_max,
            dropout: c.dropout,
        };
        let dec_spec = LayerSpec {
            embed_dim: dec_dim,
            ffn_embed_dim: int(c.decoder_ffn_embed_dim, "decoder_ffn_embed_dim")?,
            heads: int(c.decoder_attention_heads, "decoder_attention_heads")?,
            normalize_before: c.decoder_normalize_before,
            ..enc_spec
        };
        let dec_layers = dec.sub("layers");
        let decoder_layers = (0..c.decoder_layers)
            .map(|i| DecoderLayer::new(&dec_layers.sub(i), dec_spec, Some(enc_dim)))
            .collect::<Result<Vec<_>>>()?;
        let decoder_layer_norm = if c.decoder_normalize_before && !c.no_decoder_final_norm {
            Some(LayerNorm::new(&dec.sub("layer_norm"), dec_dim)?)
        } else {
            None
        };
        let output_projection = if c.shares_decoder_output() {
            // Name the var-store variable: the encoder's embedding when all are shared.
            let canonical = if c.share_all_embeddings {
                enc.sub("embed_tokens").name_of("weight")
            } else {
                dec.sub("embed_tokens").name_of("weight")
            };
            dec.sub("output_projection").alias("weight", &canonical);
            dec_tokens.shallow_clone()
        } else {
            // fairseq: normal(0, output_embed_dim^-0.5), no padding row.
            embedding_weight(&dec.sub("output_projection"), tgt_vocab, dec_dim, None)?
        };

        Ok(Self {
            config: config.clone(),
            encoder: Encoder {
                embeddings: encoder_embeddings,
                layers: encoder_layers,
                layer_norm: encoder_layer_norm,
            },
            decoder: Decoder {
                embeddings: decoder_embeddings,
                layers: decoder_layers,
                layer_norm: decoder_layer_norm,
                output_projection,
            },
            entries: entries.into_inner(),
            device: vs.device(),
        })
    }

    /// The configuration the model was built from.
    pub fn config(&self) -> &TransformerConfig {
        &self.config
    }

    /// The device of the model's variables.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The model's parameters under their fairseq names, in fairseq's order; a tied
    /// parameter appears once, under its first name (see [`Transformer::tied_parameters`]).
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::parameters(&self.entries)
    }

    /// The `(alias, parameter)` names of tied weights, the parameter being the var-store
    /// variable: with `share_all_embeddings`, `decoder.embed_tokens.weight` and
    /// `decoder.output_projection.weight` → `encoder.embed_tokens.weight`; with
    /// `share_decoder_input_output_embed` only, `decoder.output_projection.weight` →
    /// `decoder.embed_tokens.weight`.
    pub fn tied_parameters(&self) -> Vec<(String, String)> {
        crate::models::nn::tied_parameters(&self.entries)
    }

    /// The model as fairseq 0.12.2's `model.state_dict()` lists it, in its order: parameters,
    /// tied aliases (the same tensor under each name), the `encoder.version` and
    /// `decoder.version` buffers (3) and, with sinusoidal positions,
    /// `{encoder,decoder}.embed_positions._float_tensor`.
    ///
    /// Not included: the fast-path copies fairseq 0.12.2 keeps in each encoder layer
    /// (`encoder.layers.{i}.in_proj_weight`, `in_proj_bias`, `out_proj_weight`,
    /// `out_proj_bias`, `fc1_weight`, `fc1_bias`, `fc2_weight`, `fc2_bias`): fairseq rebuilds
    /// them from `self_attn.*` and `fc1`/`fc2` whenever it loads a state dict.
    pub fn fairseq_state_dict(&self) -> Vec<(String, Tensor)> {
        crate::models::nn::state_dict(&self.entries)
    }

    /// Moves `tokens` to the model's device as a 2-D `Int64` tensor.
    fn tokens_2d(&self, tokens: &Tensor, what: &str) -> Result<Tensor> {
        tokens_2d(tokens, self.device, what)
    }

    /// Runs the encoder on `src_tokens` (`[batch, src_len]`, padded with `pad_index`, left or
    /// right: positions skip padding, so either gives the same states for real tokens).
    pub fn encode(&self, src_tokens: &Tensor, train: bool) -> Result<EncoderOut> {
        let tokens = self.tokens_2d(src_tokens, "src_tokens")?;
        let emb = &self.encoder.embeddings;
        emb.check_len(tokens.size()[1], "a source")?;
        let padding_mask = tokens.f_eq(emb.padding_idx)?;
        let positions = make_positions(&tokens, emb.padding_idx)?;
        let x = emb.forward(&tokens, &positions, train)?;
        // fairseq: x * (1 - encoder_padding_mask)
        let keep = padding_mask.f_logical_not()?.f_unsqueeze(-1)?.f_to_kind(x.kind())?;
        let mut x = x.f_mul(&keep)?;
        for layer in &self.encoder.layers {
            x = layer.forward(&x, &padding_mask, train)?;
        }
        if let Some(norm) = &self.encoder.layer_norm {
            x = norm.forward(&x)?;
        }
        Ok(EncoderOut { out: x, padding_mask })
    }

    /// Decoder features before the output projection.
    fn decoder_features(
        &self,
        prev_output_tokens: &Tensor,
        encoder_out: &EncoderOut,
        train: bool,
    ) -> Result<Tensor> {
        let tokens = self.tokens_2d(prev_output_tokens, "prev_output_tokens")?;
        let emb = &self.decoder.embeddings;
        let len = tokens.size()[1];
        emb.check_len(len, "a target")?;
        let positions = make_positions(&tokens, emb.padding_idx)?;
        let mut x = emb.forward(&tokens, &positions, train)?;
        let padding_mask = tokens.f_eq(emb.padding_idx)?;
        // fairseq's buffered_future_mask: 0 on and below the diagonal, -inf above.
        let causal_mask =
            Tensor::f_full([len, len], f64::NEG_INFINITY, (x.kind(), self.device))?.f_triu(1)?;
        for layer in &self.decoder.layers {
            let kv = layer.cross_key_value(&encoder_out.out)?;
            x = layer.forward(
                &x,
                SelfAttention::Full { causal_mask: &causal_mask, padding_mask: &padding_mask },
                Some(CrossInput { kv: &kv, padding_mask: &encoder_out.padding_mask }),
                train,
            )?;
        }
        if let Some(norm) = &self.decoder.layer_norm {
            x = norm.forward(&x)?;
        }
        Ok(x)
    }

    fn output_layer(&self, features: &Tensor) -> Result<Tensor> {
        Ok(features.f_linear(&self.decoder.output_projection, None::<&Tensor>)?)
    }

    /// Teacher-forced decoder: logits `[batch, tgt_len, tgt_vocab]` for every position of
    /// `prev_output_tokens` (`[batch, tgt_len]`, EOS first, right-padded with `pad_index`).
    pub fn decode(
        &self,
        prev_output_tokens: &Tensor,
        encoder_out: &EncoderOut,
        train: bool,
    ) -> Result<Tensor> {
        let features = self.decoder_features(prev_output_tokens, encoder_out, train)?;
        self.output_layer(&features)
    }

    /// The full model (fairseq's `model(src_tokens, src_lengths, prev_output_tokens)`): logits
    /// `[batch, tgt_len, tgt_vocab]`. Dropout is active only when `train` is true.
    ///
    /// `src_lengths` (`[batch]`) is checked for shape only: as in fairseq, padding is read off
    /// the tokens.
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

    /// An empty decoder cache for the sentences of `encoder_out`, one row each (expand or
    /// reorder rows with [`DecoderCache::reorder`]). Encoder-attention keys and values are
    /// computed here, once.
    pub fn init_cache(&self, encoder_out: &EncoderOut) -> Result<DecoderCache> {
        let rows = encoder_out.out.size().first().copied().unwrap_or(0);
        let mut self_attn = Vec::with_capacity(self.decoder.layers.len());
        let mut cross_attn = Vec::with_capacity(self.decoder.layers.len());
        for layer in &self.decoder.layers {
            self_attn.push(layer.empty_cache(rows, &encoder_out.out)?);
            cross_attn.push(layer.cross_key_value(&encoder_out.out)?);
        }
        Ok(DecoderCache {
            self_attn,
            cross_attn,
            encoder_padding_mask: encoder_out.padding_mask.f_to_kind(Kind::Bool)?,
            step: 0,
        })
    }

    /// One incremental decoder step (no dropout): feeds `tokens` (`[rows]`, the previous output
    /// of each row; EOS at step 0), appends to the cache and returns the logits `[rows,
    /// tgt_vocab]` of the next token. Same maths as [`Transformer::decode`] on the whole prefix.
    pub fn decode_step(&self, tokens: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let rows = cache.rows() as i64;
        if tokens.size() != [rows] {
            return Err(Error::Input(format!(
                "decode_step needs one token per cache row ({rows}), got shape {:?}",
                tokens.size()
            )));
        }
        let tokens = self.tokens_2d(&tokens.f_reshape([rows, 1])?, "tokens")?;
        let emb = &self.decoder.embeddings;
        let step = usize_to_i64(cache.step, "step")?;
        emb.check_len(step + 1, "a target")?;
        // fairseq (incremental): every row's position is padding_idx + (number of tokens fed).
        let positions =
            Tensor::f_full([rows, 1], emb.padding_idx + step + 1, (Kind::Int64, self.device))?;
        let mut x = emb.forward(&tokens, &positions, false)?;
        for (i, layer) in self.decoder.layers.iter().enumerate() {
            let (Some(kv), Some(cross)) = (cache.self_attn.get_mut(i), cache.cross_attn.get(i))
            else {
                return Err(Error::Input(format!(
                    "the cache has {} layers, the decoder {}",
                    cache.self_attn.len().min(cache.cross_attn.len()),
                    self.decoder.layers.len()
                )));
            };
            x = layer.forward(
                &x,
                SelfAttention::Cached { cache: kv, attn_mask: None },
                Some(CrossInput { kv: cross, padding_mask: &cache.encoder_padding_mask }),
                false,
            )?;
        }
        cache.step += 1;
        if let Some(norm) = &self.decoder.layer_norm {
            x = norm.forward(&x)?;
        }
        Ok(self.output_layer(&x)?.f_squeeze_dim(1)?)
    }
}
