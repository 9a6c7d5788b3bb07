//! fairseq's `transformer_lm` (a Transformer decoder without encoder attention, with optional
//! adaptive input and adaptive softmax) compiled to the two graphs of a decoder-only model
//! directory ([`seqforge_schemas::contract`]): the prompt graph (`prefill`: a whole prompt at
//! once, log-probabilities at every position and the self-attention caches) and the incremental
//! step graph.
//!
//! The maths follow the trainer's `models::transformer_lm` (itself fairseq 0.12.2's
//! `TransformerDecoder` with `no_encoder_attn`): token embeddings (one table, or fairseq's
//! `AdaptiveInput`: per frequency band a narrower table and a projection up to the model width)
//! × `sqrt(dim)` (unless `no_scale_embedding`), `project_in_dim` when the input width differs,
//! positions numbered from `pad + 1` skipping padding (right padding in the prefill leaves the
//! real positions as they are), optional `layernorm_embedding`, post- or pre-norm layers with
//! causal self-attention, the final layer norm, `project_out_dim`, and the output: a (tied)
//! projection, or fairseq's `AdaptiveSoftmax` evaluated for the whole vocabulary (the head's
//! log-softmax over the first band and one entry per tail band; each tail band's log-softmax
//! plus its head entry), as `AdaptiveSoftmax.get_log_prob` does without a target. The final
//! log-softmax runs in fp32.
//!
//! The step graph shares the Transformer step's self-attention (in place, fused or plain; see
//! [`crate::transformer`]). The prefill attends causally with an additive mask in fp32.

use seqforge_schemas::arch::transformer::{KvCache, state_names};
use seqforge_schemas::arch::transformer_lm::TransformerLmConfig;
use seqforge_schemas::contract::names;

use crate::error::{Error, Result};
use crate::graph::{DType, Dim, Value};
use crate::net::{Net, i};
use crate::transformer::{BuildOptions, Side, kv_cache_for};
use crate::weights::Weights;

/// The additive bias of masked attention scores (fp32), as in [`crate::transformer`].
const MASKED_SCORE: f32 = -1e9;

/// The self-attention cache of an export (see [`crate::transformer::kv_cache`]).
pub fn kv_cache(c: &TransformerLmConfig, options: BuildOptions) -> Result<KvCache> {
    kv_cache_for(c.head_dim(), options)
}

/// The graphs' view of a (validated) `transformer_lm` config: which checkpoint tensors make
/// the input embedding and the output layer, tied weights included (fairseq's
/// `TiedHeadModule` and `TiedLinear` read the adaptive input's tables and projections).
pub fn spec(c: &TransformerLmConfig) -> Result<LmSpec> {
    let bounds = |bands: &[seqforge_schemas::arch::transformer_lm::Band]| {
        std::iter::once(0).chain(bands.iter().map(|b| b.end)).collect::<Vec<_>>()
    };
    let input_bands = c.input_bands();
    let input = match &input_bands {
        Some(b) => InputSpec::Adaptive {
            bounds: bounds(b),
            dims: b.iter().map(|b| b.dim).collect(),
            out: c.input_dim(),
        },
        None => InputSpec::Table { dim: c.input_dim() },
    };
    let output = match c.softmax_bands() {
        None => OutputSpec::Projection {
            table: if c.shares_output_projection() {
                "decoder.embed_tokens.weight".into()
            } else {
                "decoder.output_projection.weight".into()
            },
        },
        Some(sb) => {
            let tied = match (&input_bands, c.tie_adaptive_weights) {
                (Some(ib), true) => Some(ib),
                (None, true) => {
                    return Err(Error::Usage(
                        "tie_adaptive_weights without adaptive_input: nothing to tie to".into(),
                    ));
                }
                (_, false) => None,
            };
            let t = |b: usize, k: usize| format!("decoder.embed_tokens.embeddings.{b}.{k}.weight");
            let own = |i: usize, k: usize| format!("decoder.adaptive_softmax.tail.{i}.{k}.weight");
            let head = match tied {
                Some(ib) => HeadSpec::Tied { table: t(0, 0), emb_dim: ib[0].dim },
                None => HeadSpec::Untied,
            };
            let tails = (1..sb.len())
                .map(|b| match tied {
                    Some(ib) => TailSpec {
                        dim: ib[b].dim,
                        proj: if c.tie_adaptive_proj {
                            (t(b, 1), true)
                        } else {
                            (own(b - 1, 0), false)
                        },
                        out: t(b, 0),
                    },
                    None => TailSpec {
                        dim: sb[b].dim,
                        proj: (own(b - 1, 0), false),
                        out: own(b - 1, 2),
                    },
                })
                .collect();
            OutputSpec::Adaptive(AdaptiveSoftmaxSpec { bounds: bounds(&sb), head, tails })
        }
    };
    Ok(LmSpec {
        vocab: c.vocab_size,
        pad: c.pad_index,
        side: Side {
            dim: c.decoder_embed_dim,
            ffn: c.decoder_ffn_embed_dim,
            heads: c.decoder_attention_heads,
            normalize_before: c.decoder_normalize_before,
            activation: c.activation_fn,
        },
        layers: c.decoder_layers,
        input,
        embed_scale: (!c.no_scale_embedding).then(|| (c.decoder_embed_dim as f64).sqrt() as f32),
        project_in: c.has_project_in(),
        positions: (!c.no_token_positional_embeddings)
            .then(|| (c.decoder_learned_pos, c.max_positions())),
        layernorm_embedding: c.layernorm_embedding,
        final_norm: c.decoder_normalize_before && !c.no_decoder_final_norm,
        project_out: c.has_project_out().then(|| c.output_dim()),
        output,
    })
}

/// Names in the checkpoint that the graphs do not read but that are legitimately there:
/// fairseq's buffers and the aliases of tied weights (the graphs read the tables they alias).
pub fn ignorable_tensor(c: &TransformerLmConfig, name: &str) -> bool {
    let tied_softmax = c.tie_adaptive_weights && c.has_adaptive_softmax();
    matches!(name, "decoder.version" | "decoder.adaptive_softmax.version")
        || name.ends_with("._float_tensor")
        || (c.shares_output_projection() && name == "decoder.output_projection.weight")
        || (tied_softmax
            && (name == "decoder.adaptive_softmax.head.word_proj.weight"
                || name == "decoder.adaptive_softmax.head.word_proj.1.weight"
                || (name.starts_with("decoder.adaptive_softmax.tail.")
                    && (name.ends_with(".2.weight")
                        || (c.tie_adaptive_proj && name.ends_with(".0.weight"))))))
}

/// How token ids become vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum InputSpec {
    /// One table `decoder.embed_tokens.weight` `[V, dim]`.
    Table {
        /// Its width (fairseq's `decoder_input_dim`).
        dim: usize,
    },
    /// fairseq's `AdaptiveInput`: band `b` covers ids `bounds[b]..bounds[b+1]` with a table
    /// `decoder.embed_tokens.embeddings.{b}.0.weight` `[size, dims[b]]` and a projection
    /// `decoder.embed_tokens.embeddings.{b}.1.weight` `[out, dims[b]]`.
    Adaptive {
        /// Band boundaries: `0`, the cutoffs, the vocabulary size.
        bounds: Vec<usize>,
        /// Each band's table width.
        dims: Vec<usize>,
        /// The projections' output width (fairseq's `decoder_input_dim`).
        out: usize,
    },
}

/// How the last features become scores over the vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputSpec {
    /// A projection `[V, dim]`: `table` names the weight (`decoder.output_projection.weight`,
    /// or `decoder.embed_tokens.weight` when tied).
    Projection {
        /// The checkpoint tensor.
        table: String,
    },
    /// fairseq's `AdaptiveSoftmax`.
    Adaptive(AdaptiveSoftmaxSpec),
}

/// fairseq's `AdaptiveSoftmax` (`fairseq/modules/adaptive_softmax.py`) as the exporter reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveSoftmaxSpec {
    /// Band boundaries: `0`, the cutoffs, the vocabulary size.
    pub bounds: Vec<usize>,
    /// The head: untied `decoder.adaptive_softmax.head.weight` `[c0 + tails, dim]`, or tied to
    /// the adaptive input's first band (`word_proj` through `TiedHeadModule`, optionally after a
    /// `[emb, dim]` linear, plus `class_proj` `[tails, dim]`).
    pub head: HeadSpec,
    /// Each tail band's two layers: a projection to its width and the output layer.
    pub tails: Vec<TailSpec>,
}

/// The head of an adaptive softmax.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadSpec {
    /// `decoder.adaptive_softmax.head.weight`.
    Untied,
    /// `TiedHeadModule`: the first input band's table `table` (`[c0, emb_dim]`), preceded by
    /// `decoder.adaptive_softmax.head.word_proj.0.weight` (`[emb_dim, dim]`) when `emb_dim`
    /// differs from the features' width, and `decoder.adaptive_softmax.head.class_proj.weight`.
    Tied {
        /// The tied embedding table.
        table: String,
        /// Its width.
        emb_dim: usize,
    },
}

/// One tail band of an adaptive softmax: `x → proj → out`.
#[derive(Debug, Clone, PartialEq)]
pub struct TailSpec {
    /// The band's projection width.
    pub dim: usize,
    /// The projection: a weight `[dim, in]` used as `x · Wᵀ` (`transposed = false`), or a
    /// tied adaptive-input projection `[in, dim]` used as `x · W` (`transposed = true`).
    pub proj: (String, bool),
    /// The output layer `[band size, dim]` used as `x · Wᵀ` (its own, or the tied input table).
    pub out: String,
}

/// Everything the two graphs need to know about a `transformer_lm`.
#[derive(Debug, Clone, PartialEq)]
pub struct LmSpec {
    /// Vocabulary size (input and output).
    pub vocab: usize,
    /// Padding id.
    pub pad: usize,
    /// The layers' width, feed-forward width, heads, norm placement and activation.
    pub side: Side,
    /// Number of layers.
    pub layers: usize,
    /// The input embedding.
    pub input: InputSpec,
    /// `sqrt(dim)` unless `no_scale_embedding`.
    pub embed_scale: Option<f32>,
    /// `decoder.project_in_dim.weight` `[dim, input width]` when the input width differs.
    pub project_in: bool,
    /// Positions: `None` (no positional embeddings), or learned/sinusoidal with the maximum.
    pub positions: Option<(bool, usize)>,
    /// `decoder.layernorm_embedding`.
    pub layernorm_embedding: bool,
    /// `decoder.layer_norm` at the end (pre-norm without `no_decoder_final_norm`).
    pub final_norm: bool,
    /// `decoder.project_out_dim.weight` `[output width, dim]` when the output width differs.
    pub project_out: Option<usize>,
    /// The output layer.
    pub output: OutputSpec,
}

impl LmSpec {
    /// The width of the features the output layer reads.
    fn output_dim(&self) -> usize {
        self.project_out.unwrap_or(self.side.dim)
    }

    fn input_dim(&self) -> usize {
        match &self.input {
            InputSpec::Table { dim } => *dim,
            InputSpec::Adaptive { out, .. } => *out,
        }
    }
}

impl Net<'_> {
    /// The token embedding of `ids` (any shape `S`) → `S + [input width]`, scaled, projected
    /// in, with positions `positions` (same shape as `ids`) added and the embedding layer norm.
    fn lm_embed(&mut self, s: &LmSpec, ids: &Value, positions: Option<&Value>) -> Result<Value> {
        let mut x = match &s.input {
            InputSpec::Table { dim } => self.embedding(
                "decoder.embed_tokens",
                "decoder.embed_tokens.weight",
                s.vocab,
                *dim,
                ids,
            )?,
            InputSpec::Adaptive { bounds, dims, out } => {
                self.adaptive_input(ids, bounds, dims, *out)?
            }
        };
        if let Some(scale) = s.embed_scale {
            let c = self.g.scalar("decoder.embed_scale", self.t, scale)?;
            x = self.g.mul("decoder.embed_scaled", &x, &c)?;
        }
        if s.project_in {
            let w =
                self.linear_weights("decoder.project_in_dim", s.input_dim(), s.side.dim, false)?;
            x = self.apply("decoder.project_in_dim", &x, &w)?;
        }
        if let (Some((learned, max)), Some(positions)) = (s.positions, positions) {
            let table = self.position_table("decoder", learned, max, s.side.dim, s.pad)?;
            let pe = self.g.gather("decoder.embed_positions", &table, positions, 0)?;
            x = self.g.add("decoder.embed_with_positions", &x, &pe)?;
        }
        if s.layernorm_embedding {
            x = self.layer_norm("decoder.layernorm_embedding", &x, s.side.dim)?;
        }
        Ok(x)
    }

    /// fairseq's `AdaptiveInput.forward`: each id is looked up in its band's table (ids
    /// shifted to the band) and projected to `out`; the bands are summed under their masks.
    fn adaptive_input(
        &mut self,
        ids: &Value,
        bounds: &[usize],
        dims: &[usize],
        out: usize,
    ) -> Result<Value> {
        let mut acc: Option<Value> = None;
        let zero_id = self.g.initializer_i64("decoder.embed_tokens.zero_id", &[], &[0])?;
        for (b, &dim) in dims.iter().enumerate() {
            let (lo, hi) = (bounds[b], bounds[b + 1]);
            let p = format!("decoder.embed_tokens.embeddings.{b}");
            let lo_c = self.g.initializer_i64(&format!("{p}.lo"), &[], &[i(lo)])?;
            let hi_c = self.g.initializer_i64(&format!("{p}.hi"), &[], &[i(hi)])?;
            let below_hi = self.g.less(&format!("{p}.below_hi"), ids, &hi_c)?;
            let below_lo = self.g.less(&format!("{p}.below_lo"), ids, &lo_c)?;
            let at_or_above_lo = self.g.not(&format!("{p}.at_or_above_lo"), &below_lo)?;
            let mask = self.g.and(&format!("{p}.mask"), &below_hi, &at_or_above_lo)?;
            let shifted = self.g.sub(&format!("{p}.shifted"), ids, &lo_c)?;
            let local = self.g.where_(&format!("{p}.local_ids"), &mask, &shifted, &zero_id)?;
            let e =
                self.embedding(&format!("{p}.0"), &format!("{p}.0.weight"), hi - lo, dim, &local)?;
            let w = self.linear_weights(&format!("{p}.1"), dim, out, false)?;
            let e = self.apply(&format!("{p}.1"), &e, &w)?;
            let mask = self.g.unsqueeze(&format!("{p}.mask_column"), &mask, &[-1])?;
            acc = Some(match acc {
                None => {
                    let zero = self.g.scalar(&format!("{p}.zero"), self.t, 0.0)?;
                    self.g.where_(&format!("{p}.band"), &mask, &e, &zero)?
                }
                Some(prev) => self.g.where_(&format!("{p}.band"), &mask, &e, &prev)?,
            });
        }
        acc.ok_or_else(|| Error::Usage("adaptive input without bands".into()))
    }

    /// `x` `[N, in]` times a `[rows, in]` checkpoint table transposed (`transposed = false`) or
    /// a `[in, rows]` one as it is (`transposed = true`): `[N, rows]` in the model dtype.
    fn lm_matmul(
        &mut self,
        name: &str,
        x: &Value,
        table: &str,
        (rows, in_dim): (usize, usize),
        transposed: bool,
    ) -> Result<Value> {
        if transposed {
            let t = self.param(table, &[in_dim, rows])?;
            self.g.matmul(name, x, &t)
        } else {
            self.projection(name, x, table, (rows, in_dim), None)
        }
    }

    /// fp32 log-probabilities `[N, V]` of the features `x` `[N, dim]`.
    fn lm_log_probs(&mut self, s: &LmSpec, x: &Value, out_name: &str) -> Result<Value> {
        let dim = s.output_dim();
        match &s.output {
            OutputSpec::Projection { table } => {
                let logits =
                    self.projection("decoder.output_projection", x, table, (s.vocab, dim), None)?;
                let logits = self.up("decoder.logits_fp32", &logits)?;
                self.g.log_softmax(out_name, &logits, -1)
            }
            OutputSpec::Adaptive(a) => {
                let c0 = a.bounds[1];
                let n_tails = a.tails.len();
                let h = "decoder.adaptive_softmax.head";
                let head = match &a.head {
                    HeadSpec::Untied => {
                        self.lm_matmul(h, x, &format!("{h}.weight"), (c0 + n_tails, dim), false)?
                    }
                    HeadSpec::Tied { table, emb_dim } => {
                        let words_in = if *emb_dim == dim {
                            x.clone()
                        } else {
                            let w = self.linear_weights(
                                &format!("{h}.word_proj.0"),
                                dim,
                                *emb_dim,
                                false,
                            )?;
                            self.apply(&format!("{h}.word_proj.0"), x, &w)?
                        };
                        let words = self.lm_matmul(
                            &format!("{h}.word_proj"),
                            &words_in,
                            table,
                            (c0, *emb_dim),
                            false,
                        )?;
                        let classes = self.lm_matmul(
                            &format!("{h}.class_proj"),
                            x,
                            &format!("{h}.class_proj.weight"),
                            (n_tails, dim),
                            false,
                        )?;
                        self.g.concat(&format!("{h}.out"), &[&words, &classes], -1)?
                    }
                };
                let head = self.up(&format!("{h}.out_fp32"), &head)?;
                let head_lp = self.g.log_softmax(&format!("{h}.log_probs"), &head, -1)?;
                let mut parts =
                    vec![self.g.slice_last(&format!("{h}.words"), &head_lp, 0, i(c0))?];
                for (t, tail) in a.tails.iter().enumerate() {
                    let p = format!("decoder.adaptive_softmax.tail.{t}");
                    let size = a.bounds[t + 2] - a.bounds[t + 1];
                    let (proj, transposed) = &tail.proj;
                    let z =
                        self.lm_matmul(&format!("{p}.0"), x, proj, (tail.dim, dim), *transposed)?;
                    let z =
                        self.lm_matmul(&format!("{p}.2"), &z, &tail.out, (size, tail.dim), false)?;
                    let z = self.up(&format!("{p}.out_fp32"), &z)?;
                    let lp = self.g.log_softmax(&format!("{p}.log_probs"), &z, -1)?;
                    let k = i(c0 + t);
                    let prior = self.g.slice_last(&format!("{p}.prior"), &head_lp, k, k + 1)?;
                    parts.push(self.g.add(&format!("{p}.with_prior"), &lp, &prior)?);
                }
                let refs: Vec<&Value> = parts.iter().collect();
                self.g.concat(out_name, &refs, -1)
            }
        }
    }

    /// The last layer norm and `project_out_dim`.
    fn lm_final(&mut self, s: &LmSpec, mut x: Value) -> Result<Value> {
        if s.final_norm {
            x = self.layer_norm("decoder.layer_norm", &x, s.side.dim)?;
        }
        if let Some(out) = s.project_out {
            let w = self.linear_weights("decoder.project_out_dim", s.side.dim, out, false)?;
            x = self.apply("decoder.project_out_dim", &x, &w)?;
        }
        Ok(x)
    }
}

fn finish(n: Net<'_>, metadata: &[(String, String)]) -> seqforge_schemas::onnx::ModelProto {
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    n.g.finish(&metadata)
}

/// Builds the prefill graph: `tokens` int64 `[B, T]` (right-padded) → `log_probs` f32
/// `[B, T, V]` and `present.self_{key,value}.{l}` `[B, heads, T, head_dim]`.
pub fn build_prefill(
    w: &Weights,
    s: &LmSpec,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<seqforge_schemas::onnx::ModelProto> {
    let mut n = Net::new("seqforge_prefill", w, options);
    let dec = s.side;
    let (b, t) = (Dim::named("B"), Dim::named("T"));
    let tokens = n.g.input(names::TOKENS, DType::I64, vec![b.clone(), t.clone()])?;
    let pad_c = n.g.initializer_i64("pad_index", &[], &[i(s.pad)])?;
    let is_pad = n.g.equal("decoder.padding", &tokens, &pad_c)?;
    let keep = n.g.not("decoder.non_padding", &is_pad)?;
    let keep = n.g.cast("decoder.non_padding_i64", &keep, DType::I64)?;
    // fairseq's make_positions: cumsum(non-pad) · non-pad + pad.
    let positions = if s.positions.is_some() {
        let cs = n.g.cumsum("decoder.embed_positions.cumsum", &keep, 1)?;
        let numbered = n.g.mul("decoder.embed_positions.numbered", &cs, &keep)?;
        Some(n.g.add("decoder.embed_positions.positions", &numbered, &pad_c)?)
    } else {
        None
    };
    let mut x = n.lm_embed(s, &tokens, positions.as_ref())?;

    // Causal mask: key k is hidden from query q when k > q (indices 1..T from a cumsum of ones).
    let all = n.g.equal("decoder.all_true", &tokens, &tokens)?;
    let ones = n.g.cast("decoder.ones", &all, DType::I64)?;
    let idx = n.g.cumsum("decoder.index_2d", &ones, 1)?;
    let row0 = n.g.initializer_i64("decoder.first_row", &[], &[0])?;
    let idx = n.g.gather("decoder.index", &idx, &row0, 0)?;
    let q_idx = n.g.unsqueeze("decoder.query_index", &idx, &[1])?;
    let k_idx = n.g.unsqueeze("decoder.key_index", &idx, &[0])?;
    let future = n.g.less("decoder.future", &q_idx, &k_idx)?;
    let neg = n.g.scalar("decoder.masked", DType::F32, MASKED_SCORE)?;
    let zero = n.g.scalar("decoder.open", DType::F32, 0.0)?;
    let bias = n.g.where_("decoder.causal_bias_2d", &future, &neg, &zero)?;
    let bias = n.g.unsqueeze("decoder.causal_bias", &bias, &[0, 1])?;

    let mut presents = Vec::new();
    for l in 0..s.layers {
        let p = format!("decoder.layers.{l}");
        let norm = format!("{p}.self_attn_layer_norm");
        let h = if dec.normalize_before { n.layer_norm(&norm, &x, dec.dim)? } else { x.clone() };
        let a = format!("{p}.self_attn");
        let q = n.query(&a, &h, dec)?;
        let k = n.key_or_value(
            &format!("{a}.k_proj"),
            &names::present(&state_names::self_key(l)),
            &h,
            dec.dim,
            dec,
        )?;
        let v = n.key_or_value(
            &format!("{a}.v_proj"),
            &names::present(&state_names::self_value(l)),
            &h,
            dec.dim,
            dec,
        )?;
        let ctx = n.attend(&a, &q, &k, &v, Some(&bias), dec.dim)?;
        let out = n.linear(&format!("{a}.out_proj"), &ctx, dec.dim, dec.dim)?;
        x = n.residual(&format!("{p}.self_attn_residual"), &norm, &x, &out, dec)?;
        x = n.feed_forward(&p, &x, dec)?;
        presents.push((k, v));
    }
    let x = n.lm_final(s, x)?;
    let out_dim = s.output_dim();
    let flat = n.g.reshape("decoder.features", &x, &[-1, i(out_dim)])?;
    let lp = n.lm_log_probs(s, &flat, "decoder.log_probs_2d")?;
    let bt = n.g.shape("decoder.batch_time", &tokens, 0, 2)?;
    let v = n.g.initializer_i64("decoder.vocab", &[1], &[i(s.vocab)])?;
    let shape = n.g.concat("decoder.log_probs_shape", &[&bt, &v], 0)?;
    let lp = n.g.reshape_to(names::LOG_PROBS, &lp, &shape, vec![b, t, Dim::Fixed(i(s.vocab))])?;
    n.g.output(&lp);
    for (k, v) in &presents {
        n.g.output(k);
        n.g.output(v);
    }
    Ok(finish(n, metadata))
}

/// Builds the step graph (see the contract): `prev_tokens`, `reorder`,
/// `past.self_{key,value}.{l}` (and `position` with an in-place cache) → `log_probs` (and the
/// optional `top_k` outputs), `present.self_{key,value}.{l}`.
pub fn build_step(
    w: &Weights,
    s: &LmSpec,
    options: BuildOptions,
    in_place: bool,
    metadata: &[(String, String)],
) -> Result<seqforge_schemas::onnx::ModelProto> {
    let mut n = Net::new("seqforge_decoder_step", w, options);
    let dec = s.side;
    let rows = || Dim::named("R");
    let prev = n.g.input(names::PREV_TOKENS, DType::I64, vec![rows(), Dim::Fixed(1)])?;
    let reorder = n.g.input(names::REORDER, DType::I64, vec![rows()])?;
    let (past, inputs) = n.self_attention_step_inputs(s.layers, dec, in_place, &reorder)?;
    let step = inputs.step(&past, s.positions.is_none(), &mut n)?;
    let position = match (&step, s.positions) {
        (Some(step), Some(_)) => {
            // Step P reads position pad + 1 + P for every row.
            let offset = n.g.initializer_i64("decoder.first_position", &[1], &[i(s.pad) + 1])?;
            let p = n.g.add("decoder.embed_positions.position", step, &offset)?;
            Some(n.g.unsqueeze("decoder.embed_positions.position_2d", &p, &[0])?)
        }
        _ => None,
    };
    let mut x = n.lm_embed(s, &prev, position.as_ref())?;
    if inputs.fused() {
        // One query position per row: the layers work on `[R, E]`.
        x = n.g.reshape("decoder.embedded_2d", &x, &[-1, i(dec.dim)])?;
    }
    let mut presents = Vec::new();
    for (l, past_l) in past.iter().enumerate() {
        let p = format!("decoder.layers.{l}");
        let norm = format!("{p}.self_attn_layer_norm");
        let h = if dec.normalize_before { n.layer_norm(&norm, &x, dec.dim)? } else { x.clone() };
        let a = format!("{p}.self_attn");
        let (ctx, present) = n.self_attention_step(&a, l, &h, past_l, &inputs, dec)?;
        presents.push(present);
        let out = n.linear(&format!("{a}.out_proj"), &ctx, dec.dim, dec.dim)?;
        x = n.residual(&format!("{p}.self_attn_residual"), &norm, &x, &out, dec)?;
        x = n.feed_forward(&p, &x, dec)?;
    }
    let x = n.lm_final(s, x)?;
    let features = n.g.reshape("decoder.features", &x, &[-1, i(s.output_dim())])?;
    let log_probs = n.lm_log_probs(s, &features, names::LOG_PROBS)?;
    n.output_log_probs(&log_probs)?;
    for (k, v) in &presents {
        n.g.output(k);
        n.g.output(v);
    }
    Ok(finish(n, metadata))
}
