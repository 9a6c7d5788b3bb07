//! fairseq's Transformer compiled to the two graphs of the model contract
//! ([`seqforge_schemas::contract`]): the encoder and one incremental decoder step.
//!
//! The maths follow the trainer's `models::transformer` (itself fairseq 0.12.2): token
//! embeddings × `sqrt(dim)` (unless `no_scale_embedding`), positions numbered from `pad + 1`
//! skipping padding (`cumsum(non-pad) · non-pad + pad`, so left padding works), sinusoidal
//! tables computed as fairseq does or learned tables, optional `layernorm_embedding`, the
//! encoder output zeroed at padding, post- or pre-norm layers, attention with `q_proj(x) ·
//! head_dim^-0.5`, key-padding masks, final layer norms, and the output projection (tied or
//! not). Node and value names follow the fairseq parameter names
//! (`decoder.layers.3.encoder_attn.q_proj`, …). Linear weights are stored transposed
//! (`….weight_t`, `[in, out]`) for `MatMul`; the output projection keeps fairseq's `[V, E]`
//! layout and runs as a `Gemm` with `transB`, so a tied embedding is stored once per graph.
//!
//! In fp16, weights and activations are fp16, while layer norms (cast up, normalise, cast
//! down), attention softmaxes, GELU and the final log-softmax run in fp32. Masked attention
//! scores get a large negative bias (-1e9) in fp32 rather than `-inf`: the same probabilities
//! as fairseq wherever a row has a real key (sources always end with EOS), and never a NaN.

use crate::error::{Error, Result};
use crate::graph::{DType, Dim, Value};
use crate::net::Net;
use crate::net::i;
use crate::weights::Weights;
use seqforge_schemas::arch::transformer::{Activation, KvCache, TransformerConfig, state_names};
use seqforge_schemas::contract::{Dtype, names};

/// fairseq's `LayerNorm` epsilon.
const LAYER_NORM_EPS: f32 = 1e-5;
/// The additive bias of masked attention scores (fp32).
const MASKED_SCORE: f32 = -1e9;
/// An extra encoder output (the last encoder layer's states `[B, S, E]`), which the decoder
/// does not read; kept for inspection and tests.
pub const ENCODER_OUT: &str = "encoder_out";

/// How the graphs are numerically built (also the export commands' `--dtype` and
/// `--kv-cache` options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::Args)]
pub struct BuildOptions {
    /// Weights and activations dtype: fp32, fp16 (layer norms and softmaxes stay fp32) or int8
    /// (8-bit weights, one scale per output row, fp32 activations; ONNX Runtime integer
    /// kernels).
    #[arg(long, default_value = "fp32")]
    pub dtype: Dtype,
    /// How the decoder step keeps self-attention keys and values: `in-place` (a buffer the
    /// step writes into; the default for fp32/int8 when the head size is a multiple of 8) or
    /// `append` (a new, longer tensor each step; the default for fp16).
    #[arg(long)]
    pub kv_cache: Option<KvCache>,
}

/// The self-attention cache of an export: in place (ONNX Runtime's `GroupQueryAttention` over
/// a shared past/present buffer) for FP32 and INT8 exports whose decoder head size is a
/// multiple of 8, which the CPU kernel needs; appended (`MultiHeadAttention` with past and
/// present, or plain ops in FP16) otherwise. Asking for `in-place` where it cannot run is an
/// error.
pub fn kv_cache(c: &TransformerConfig, options: BuildOptions) -> Result<KvCache> {
    kv_cache_for(c.decoder_head_dim(), options)
}

/// [`kv_cache`] for a decoder whose attention heads are `head_dim` wide (every Transformer
/// decoder, decoder-only ones included).
pub fn kv_cache_for(head_dim: usize, options: BuildOptions) -> Result<KvCache> {
    let why_not = if options.dtype == Dtype::Fp16 {
        Some("an FP16 export keeps an appended cache (the in-place kernel runs FP32 activations)")
    } else if !head_dim.is_multiple_of(8) {
        Some("the decoder head size must be a multiple of 8")
    } else {
        None
    };
    match (options.kv_cache, why_not) {
        (Some(KvCache::InPlace), Some(why)) => Err(Error::Usage(format!(
            "--kv-cache in-place: {why} (dtype {}, decoder head size {head_dim})",
            options.dtype
        ))),
        (Some(cache), _) => Ok(cache),
        (None, Some(_)) => Ok(KvCache::Append),
        (None, None) => Ok(KvCache::InPlace),
    }
}

/// The most elements of a sinusoidal position table the exporter computes (256 MiB of f32:
/// 65,536 positions of width 1,024); the table comes from the config alone, so this bounds
/// what a `max_*_positions` field can make the exporter allocate.
pub const MAX_SINUSOIDAL_ELEMENTS: usize = 1 << 26;

/// The sinusoidal position table of fairseq's `SinusoidalPositionalEmbedding.get_embedding`,
/// `[rows, dim]` row-major: sines in the first half of a row, cosines in the second (a zero
/// column for odd `dim`), row `pad` zero. Computed in f32 step by step as PyTorch does.
pub fn sinusoidal_table(rows: usize, dim: usize, pad: usize) -> Vec<f32> {
    let half = dim / 2;
    let scale = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freq: Vec<f32> = (0..half).map(|i| (i as f32 * -scale).exp()).collect();
    let mut table = vec![0f32; rows * dim];
    for r in 0..rows {
        if r == pad {
            continue;
        }
        let row = &mut table[r * dim..(r + 1) * dim];
        for (i, &f) in freq.iter().enumerate() {
            let arg = r as f32 * f;
            row[i] = arg.sin();
            row[half + i] = arg.cos();
        }
    }
    table
}

/// One side's shape of layers (encoder or decoder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    /// Model width.
    pub dim: usize,
    /// Feed-forward inner width.
    pub ffn: usize,
    /// Attention heads.
    pub heads: usize,
    /// Pre-norm layers.
    pub normalize_before: bool,
    /// The feed-forward activation.
    pub activation: Activation,
}

impl Side {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.dim / self.heads
    }
}

impl Net<'_> {
    /// `prefix` = `x @ prefix.weight.T + prefix.bias`, weight `[out, in]` in the checkpoint.
    pub(crate) fn linear(
        &mut self,
        prefix: &str,
        x: &Value,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Value> {
        let layer = self.linear_weights(prefix, in_dim, out_dim, true)?;
        self.apply(prefix, x, &layer)
    }

    /// fairseq's `LayerNorm` `prefix` over the last axis (statistics in fp32).
    pub(crate) fn layer_norm(&mut self, prefix: &str, x: &Value, dim: usize) -> Result<Value> {
        let wname = format!("{prefix}.weight");
        let bname = format!("{prefix}.bias");
        let weight = self.w.get(&wname, &[dim])?;
        let scale = self.g.initializer_f32(&wname, &[i(dim)], weight)?;
        let bias = self.w.get(&bname, &[dim])?;
        let bias = self.g.initializer_f32(&bname, &[i(dim)], bias)?;
        let h = self.up(&format!("{prefix}.to_fp32"), x)?;
        let out_name =
            if self.t == DType::F32 { prefix.to_string() } else { format!("{prefix}.fp32") };
        let y = self.g.layer_norm(&out_name, &h, &scale, &bias, LAYER_NORM_EPS)?;
        self.down(prefix, &y)
    }

    /// `[N, L, H·D]` → `[N, H, L, D]`.
    pub(crate) fn split_heads(
        &mut self,
        name: &str,
        x: &Value,
        heads: usize,
        head_dim: usize,
    ) -> Result<Value> {
        let r = self.g.reshape(&format!("{name}.heads"), x, &[0, 0, i(heads), i(head_dim)])?;
        self.g.transpose(name, &r, &[0, 2, 1, 3])
    }

    /// `softmax(q·kᵀ + bias) · v` in fp32 for the softmax, heads merged back: `[N, L, H·D]`.
    pub(crate) fn attend(
        &mut self,
        prefix: &str,
        q: &Value,
        k: &Value,
        v: &Value,
        bias: Option<&Value>,
        dim: usize,
    ) -> Result<Value> {
        let kt = self.g.transpose(&format!("{prefix}.key_t"), k, &[0, 1, 3, 2])?;
        let scores = self.g.matmul(&format!("{prefix}.scores"), q, &kt)?;
        let scores = self.up(&format!("{prefix}.scores_fp32"), &scores)?;
        let scores = match bias {
            Some(b) => self.g.add(&format!("{prefix}.masked_scores"), &scores, b)?,
            None => scores,
        };
        let probs = self.g.softmax(&format!("{prefix}.probs_fp32"), &scores, -1)?;
        let probs = self.down(&format!("{prefix}.probs"), &probs)?;
        let ctx = self.g.matmul(&format!("{prefix}.context"), &probs, v)?;
        let ctx = self.g.transpose(&format!("{prefix}.context_t"), &ctx, &[0, 2, 1, 3])?;
        self.g.reshape(&format!("{prefix}.context_merged"), &ctx, &[0, 0, i(dim)])
    }

    /// Scaled queries `[N, H, L, D]`: `q_proj(x) · head_dim^-0.5` split into heads.
    pub(crate) fn query(&mut self, prefix: &str, x: &Value, side: Side) -> Result<Value> {
        let q = self.scaled_query(prefix, x, side)?;
        self.split_heads(&format!("{prefix}.q"), &q, side.heads, side.head_dim())
    }

    /// `q_proj(x) · head_dim^-0.5`, heads not split: `[N, L, H·D]`.
    pub(crate) fn scaled_query(&mut self, prefix: &str, x: &Value, side: Side) -> Result<Value> {
        let q = self.linear(&format!("{prefix}.q_proj"), x, side.dim, side.dim)?;
        let scaling = (side.head_dim() as f64).powf(-0.5) as f32;
        let s = self.g.scalar(&format!("{prefix}.scaling"), self.t, scaling)?;
        self.g.mul(&format!("{prefix}.q_scaled"), &q, &s)
    }

    /// Keys or values `[N, H, L, D]` of `x` (`[N, L, kv_dim]`) through `prefix.{k,v}_proj`.
    pub(crate) fn key_or_value(
        &mut self,
        proj: &str,
        name: &str,
        x: &Value,
        kv_dim: usize,
        side: Side,
    ) -> Result<Value> {
        let h = self.linear(proj, x, kv_dim, side.dim)?;
        self.split_heads(name, &h, side.heads, side.head_dim())
    }

    /// The feed-forward block of layer `prefix` with its residual and layer norm.
    pub(crate) fn feed_forward(&mut self, prefix: &str, x: &Value, side: Side) -> Result<Value> {
        let norm = format!("{prefix}.final_layer_norm");
        let h =
            if side.normalize_before { self.layer_norm(&norm, x, side.dim)? } else { x.clone() };
        let h = self.linear(&format!("{prefix}.fc1"), &h, side.dim, side.ffn)?;
        let h = self.activation(side.activation, &format!("{prefix}.activation"), &h)?;
        let h = self.linear(&format!("{prefix}.fc2"), &h, side.ffn, side.dim)?;
        self.residual(&format!("{prefix}.ffn_residual"), &norm, x, &h, side)
    }

    /// `x + out`, then the layer norm `norm` in post-norm layers.
    pub(crate) fn residual(
        &mut self,
        name: &str,
        norm: &str,
        x: &Value,
        out: &Value,
        side: Side,
    ) -> Result<Value> {
        if side.normalize_before {
            return self.g.add(name, x, out);
        }
        let sum = self.g.add(name, x, out)?;
        self.layer_norm(norm, &sum, side.dim)
    }

    pub(crate) fn activation(
        &mut self,
        activation: Activation,
        name: &str,
        x: &Value,
    ) -> Result<Value> {
        match activation {
            Activation::Relu => self.g.relu(name, x),
            Activation::Tanh => self.g.tanh(name, x),
            Activation::Linear => self.g.identity(name, x),
            Activation::Gelu => {
                // 0.5·x·(1 + erf(x/√2)) in fp32, as fairseq's gelu.
                let h = self.up(&format!("{name}.to_fp32"), x)?;
                let g = &mut self.g;
                let inv_sqrt2 = g.scalar(
                    &format!("{name}.inv_sqrt2"),
                    DType::F32,
                    std::f32::consts::FRAC_1_SQRT_2,
                )?;
                let one = g.scalar(&format!("{name}.one"), DType::F32, 1.0)?;
                let half = g.scalar(&format!("{name}.half"), DType::F32, 0.5)?;
                let a = g.mul(&format!("{name}.scaled"), &h, &inv_sqrt2)?;
                let e = g.erf(&format!("{name}.erf"), &a)?;
                let e1 = g.add(&format!("{name}.erf_plus_one"), &e, &one)?;
                let xh = g.mul(&format!("{name}.half_x"), &h, &half)?;
                let out_name =
                    if self.t == DType::F32 { name.to_string() } else { format!("{name}.fp32") };
                let y = self.g.mul(&out_name, &xh, &e1)?;
                self.down(name, &y)
            }
            Activation::GeluAccurate => {
                // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))) in fp32.
                let h = self.up(&format!("{name}.to_fp32"), x)?;
                let g = &mut self.g;
                let c = g.scalar(
                    &format!("{name}.sqrt_2_over_pi"),
                    DType::F32,
                    (2.0 / std::f64::consts::PI).sqrt() as f32,
                )?;
                let k = g.scalar(&format!("{name}.coeff"), DType::F32, 0.044715)?;
                let one = g.scalar(&format!("{name}.one"), DType::F32, 1.0)?;
                let half = g.scalar(&format!("{name}.half"), DType::F32, 0.5)?;
                let x2 = g.mul(&format!("{name}.x2"), &h, &h)?;
                let x3 = g.mul(&format!("{name}.x3"), &x2, &h)?;
                let kx3 = g.mul(&format!("{name}.kx3"), &x3, &k)?;
                let inner = g.add(&format!("{name}.inner"), &h, &kx3)?;
                let inner = g.mul(&format!("{name}.inner_scaled"), &inner, &c)?;
                let th = g.tanh(&format!("{name}.tanh"), &inner)?;
                let t1 = g.add(&format!("{name}.tanh_plus_one"), &th, &one)?;
                let xh = g.mul(&format!("{name}.half_x"), &h, &half)?;
                let out_name =
                    if self.t == DType::F32 { name.to_string() } else { format!("{name}.fp32") };
                let y = self.g.mul(&out_name, &xh, &t1)?;
                self.down(name, &y)
            }
        }
    }

    /// The position table of `side` (`encoder`/`decoder`): `[max + pad + 1, dim]`. A
    /// sinusoidal one is computed here, so its size comes from the config alone: more than
    /// [`MAX_SINUSOIDAL_ELEMENTS`] is refused rather than allocated.
    pub(crate) fn position_table(
        &mut self,
        side: &str,
        learned: bool,
        max_positions: usize,
        dim: usize,
        pad: usize,
    ) -> Result<Value> {
        let too_large = || Error::Config {
            path: "config.json".into(),
            message: format!(
                "{side}: {max_positions} positions of width {dim} need a position table beyond \
                 {MAX_SINUSOIDAL_ELEMENTS} elements"
            ),
        };
        let rows =
            max_positions.checked_add(pad).and_then(|r| r.checked_add(1)).ok_or_else(too_large)?;
        if learned {
            self.param(&format!("{side}.embed_positions.weight"), &[rows, dim])
        } else {
            if rows.checked_mul(dim).is_none_or(|n| n > MAX_SINUSOIDAL_ELEMENTS) {
                return Err(too_large());
            }
            let table = sinusoidal_table(rows, dim, pad);
            self.g.initializer_float(
                &format!("{side}.embed_positions.table"),
                self.t,
                &[i(rows), i(dim)],
                &table,
            )
        }
    }

    /// `Where(mask, -1e9, 0)` as fp32 `[N, 1, 1, S]` from a bool `[N, S]` padding mask.
    pub(crate) fn attention_bias(&mut self, name: &str, mask: &Value) -> Result<Value> {
        let m = self.g.unsqueeze(&format!("{name}.mask"), mask, &[1, 2])?;
        let neg = self.g.scalar(&format!("{name}.masked"), DType::F32, MASKED_SCORE)?;
        let zero = self.g.scalar(&format!("{name}.open"), DType::F32, 0.0)?;
        self.g.where_(name, &m, &neg, &zero)
    }
}

/// The step graph's self-attention inputs besides the past caches: the `reorder` index, the
/// `position` input (in-place caches) and `GroupQueryAttention`'s lengths, and whether the
/// activations are fp32 (ONNX Runtime's fused attention kernels).
pub(crate) struct StepInputs {
    reorder: Value,
    position: Option<Value>,
    lengths: Option<(Value, Value)>,
    fused: bool,
}

impl StepInputs {
    /// Whether the step runs ONNX Runtime's fused attention on `[R, E]` states (fp32
    /// activations) rather than plain ops on `[R, 1, E]`.
    pub(crate) fn fused(&self) -> bool {
        self.fused
    }

    /// The steps taken so far (`int64 [1]`): the `position` input with an in-place cache, else
    /// the past's length (made only when `no_positions` is false or the cache needs it).
    pub(crate) fn step(
        &self,
        past: &[(Value, Value)],
        no_positions: bool,
        n: &mut Net<'_>,
    ) -> Result<Option<Value>> {
        match (&self.position, past.first()) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some((k, _))) if !no_positions => {
                Ok(Some(n.g.shape("decoder.step", k, 2, 3)?))
            }
            _ => Ok(None),
        }
    }
}

impl Net<'_> {
    /// The step graph's `past.self_{key,value}.{l}` inputs of `layers` layers (`[R', H, P, D]`
    /// appended caches, or `[R, H, C, D]` in-place buffers with the `position` input and
    /// `GroupQueryAttention`'s lengths).
    pub(crate) fn self_attention_step_inputs(
        &mut self,
        layers: usize,
        dec: Side,
        in_place: bool,
        reorder: &Value,
    ) -> Result<(Vec<(Value, Value)>, StepInputs)> {
        let n = self;
        let (heads, head_dim) = (i(dec.heads), i(dec.head_dim()));
        let rows = || Dim::named("R");
        let kv_shape =
            |len: &str, r: Dim| vec![r, Dim::Fixed(heads), Dim::named(len), Dim::Fixed(head_dim)];
        let mut past = Vec::new();
        for l in 0..layers {
            // An in-place buffer comes in this step's row order, with some capacity `C`.
            let past_shape = || {
                if in_place { kv_shape("C", rows()) } else { kv_shape("P", Dim::named("R_past")) }
            };
            let k = n.g.input(&names::past(&state_names::self_key(l)), n.t, past_shape())?;
            let v = n.g.input(&names::past(&state_names::self_value(l)), n.t, past_shape())?;
            past.push((k, v));
        }
        let position = if in_place {
            Some(n.g.input(names::POSITION, DType::I64, vec![Dim::Fixed(1)])?)
        } else {
            None
        };
        // GroupQueryAttention's lengths: every row's position (int32 `[R]`) and position + 1.
        let lengths = if let Some(step) = &position {
            let rows_shape = n.g.shape("decoder.rows", reorder, 0, 1)?;
            let one = n.g.initializer_i64("decoder.one", &[1], &[1])?;
            let total = n.g.add("decoder.total_length_i64", step, &one)?;
            let total = n.g.cast("decoder.total_length", &total, DType::I32)?;
            let step32 = n.g.cast("decoder.position_i32", step, DType::I32)?;
            let seqlens = n.g.expand("decoder.seqlens_k", &step32, &rows_shape, vec![rows()])?;
            Some((seqlens, total))
        } else {
            None
        };
        let fused = n.t == DType::F32;
        Ok((past, StepInputs { reorder: reorder.clone(), position, lengths, fused }))
    }

    /// Layer `l`'s self-attention `a` for one step of `h` (`[R, E]` when fused, else
    /// `[R, 1, E]`) over its past: the merged context (before `out_proj`) and the present
    /// key/value.
    pub(crate) fn self_attention_step(
        &mut self,
        a: &str,
        l: usize,
        h: &Value,
        (past_k, past_v): &(Value, Value),
        inputs: &StepInputs,
        dec: Side,
    ) -> Result<(Value, (Value, Value))> {
        let n = self;
        let reorder = &inputs.reorder;
        let (present_k, present_v) = (
            names::present(&state_names::self_key(l)),
            names::present(&state_names::self_value(l)),
        );
        if let Some((seqlens, total)) = &inputs.lengths {
            // One GEMM for the query, key and value projections, attention over the buffer.
            let names3 = ["q_proj", "k_proj", "v_proj"].map(|p| format!("{a}.{p}"));
            let prefixes = names3.each_ref().map(String::as_str);
            let qkv =
                n.fused_linear_weights(&format!("{a}.qkv_proj"), &prefixes, dec.dim, dec.dim)?;
            let qkv = n.apply(&format!("{a}.qkv_proj"), h, &qkv)?;
            let d = i(dec.dim);
            let qkv = n.g.reshape(&format!("{a}.qkv_3d"), &qkv, &[0, 1, 3 * d])?;
            let (ctx, present) = n.g.group_query_attention(
                &format!("{a}.context_3d"),
                &qkv,
                (past_k, past_v),
                (seqlens, total),
                (&present_k, &present_v),
                dec.heads,
            )?;
            let ctx = n.g.reshape(&format!("{a}.context_merged"), &ctx, &[0, d])?;
            Ok((ctx, present))
        } else if inputs.fused {
            let pk = n.g.gather(&format!("{a}.past_key_reordered"), past_k, reorder, 0)?;
            let pv = n.g.gather(&format!("{a}.past_value_reordered"), past_v, reorder, 0)?;
            // One GEMM for the query, key and value projections of the 2-D `[R, E]` states.
            let names3 = ["q_proj", "k_proj", "v_proj"].map(|p| format!("{a}.{p}"));
            let prefixes = names3.each_ref().map(String::as_str);
            let qkv =
                n.fused_linear_weights(&format!("{a}.qkv_proj"), &prefixes, dec.dim, dec.dim)?;
            let qkv = n.apply(&format!("{a}.qkv_proj"), h, &qkv)?;
            let split = names3.each_ref().map(|p| format!("{p}.out"));
            let split = split.each_ref().map(String::as_str);
            let d = i(dec.dim);
            let parts = n.g.split(&split, &qkv, -1, &[d, d, d])?;
            let scaling = (dec.head_dim() as f64).powf(-0.5) as f32;
            let s = n.g.scalar(&format!("{a}.scaling"), n.t, scaling)?;
            let q = n.g.mul(&format!("{a}.q_scaled"), &parts[0], &s)?;
            let q = n.g.reshape(&format!("{a}.q_3d"), &q, &[0, 1, d])?;
            let k = n.g.reshape(&format!("{a}.k_3d"), &parts[1], &[0, 1, d])?;
            let v = n.g.reshape(&format!("{a}.v_3d"), &parts[2], &[0, 1, d])?;
            let (ctx, present) = n.g.multi_head_attention(
                &format!("{a}.context_3d"),
                (&q, &k, &v),
                None,
                Some((&pk, &pv)),
                Some((&present_k, &present_v)),
                dec.heads,
            )?;
            let present = present.ok_or_else(|| Error::Node {
                node: a.to_string(),
                message: "self-attention returned no present key/value".into(),
            })?;
            let ctx = n.g.reshape(&format!("{a}.context_merged"), &ctx, &[0, d])?;
            Ok((ctx, present))
        } else {
            let pk = n.g.gather(&format!("{a}.past_key_reordered"), past_k, reorder, 0)?;
            let pv = n.g.gather(&format!("{a}.past_value_reordered"), past_v, reorder, 0)?;
            let q = n.query(a, h, dec)?;
            let k = n.key_or_value(&format!("{a}.k_proj"), &format!("{a}.k"), h, dec.dim, dec)?;
            let v = n.key_or_value(&format!("{a}.v_proj"), &format!("{a}.v"), h, dec.dim, dec)?;
            let k = n.g.concat(&present_k, &[&pk, &k], 2)?;
            let v = n.g.concat(&present_v, &[&pv, &v], 2)?;
            let ctx = n.attend(a, &q, &k, &v, None, dec.dim)?;
            Ok((ctx, (k, v)))
        }
    }
}

fn sides(c: &TransformerConfig) -> (Side, Side) {
    (
        Side {
            dim: c.encoder_embed_dim,
            ffn: c.encoder_ffn_embed_dim,
            heads: c.encoder_attention_heads,
            normalize_before: c.encoder_normalize_before,
            activation: c.activation_fn,
        },
        Side {
            dim: c.decoder_embed_dim,
            ffn: c.decoder_ffn_embed_dim,
            heads: c.decoder_attention_heads,
            normalize_before: c.decoder_normalize_before,
            activation: c.activation_fn,
        },
    )
}

fn embed_scale(c: &TransformerConfig, dim: usize) -> Option<f32> {
    if c.no_scale_embedding { None } else { Some((dim as f64).sqrt() as f32) }
}

/// Builds the encoder graph (see the contract): `src_tokens` → [`ENCODER_OUT`] and the
/// per-sentence state (`encoder_padding_mask`, `cross_key.{L}`, `cross_value.{L}`).
pub fn build_encoder(
    w: &Weights,
    c: &TransformerConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<seqforge_schemas::onnx::ModelProto> {
    let mut n = Net::new("seqforge_encoder", w, options);
    let (enc, dec) = sides(c);
    let pad = c.pad_index;
    let batch = Dim::named("B");
    let src = Dim::named("S");
    let tokens = n.g.input(names::SRC_TOKENS, DType::I64, vec![batch, src])?;
    let pad_c = n.g.initializer_i64("pad_index", &[], &[i(pad)])?;
    let mask = n.g.equal(state_names::ENCODER_PADDING_MASK, &tokens, &pad_c)?;
    let keep = n.g.not("encoder.non_padding", &mask)?;

    let table = "encoder.embed_tokens.weight";
    let mut x = n.embedding("encoder.embed_tokens", table, c.src_vocab_size, enc.dim, &tokens)?;
    if let Some(scale) = embed_scale(c, enc.dim) {
        let s = n.g.scalar("encoder.embed_scale", n.t, scale)?;
        x = n.g.mul("encoder.embed_scaled", &x, &s)?;
    }
    if !c.no_token_positional_embeddings {
        // fairseq's make_positions: cumsum(non-pad) · non-pad + pad.
        let m = n.g.cast("encoder.embed_positions.non_padding", &keep, DType::I64)?;
        let cs = n.g.cumsum("encoder.embed_positions.cumsum", &m, 1)?;
        let numbered = n.g.mul("encoder.embed_positions.numbered", &cs, &m)?;
        let positions = n.g.add("encoder.embed_positions.positions", &numbered, &pad_c)?;
        let ptable = n.position_table(
            "encoder",
            c.encoder_learned_pos,
            c.max_source_positions,
            enc.dim,
            pad,
        )?;
        let pe = n.g.gather("encoder.embed_positions", &ptable, &positions, 0)?;
        x = n.g.add("encoder.embed_with_positions", &x, &pe)?;
    }
    if c.layernorm_embedding {
        x = n.layer_norm("encoder.layernorm_embedding", &x, enc.dim)?;
    }
    // fairseq: x * (1 - encoder_padding_mask).
    let keep3 = n.g.unsqueeze("encoder.non_padding_3d", &keep, &[2])?;
    let keep3 = n.g.cast("encoder.non_padding_factor", &keep3, n.t)?;
    x = n.g.mul("encoder.embedded", &x, &keep3)?;
    let bias = n.attention_bias("encoder.attention_bias", &mask)?;

    for l in 0..c.encoder_layers {
        let p = format!("encoder.layers.{l}");
        let norm = format!("{p}.self_attn_layer_norm");
        let h = if enc.normalize_before { n.layer_norm(&norm, &x, enc.dim)? } else { x.clone() };
        let a = format!("{p}.self_attn");
        let q = n.query(&a, &h, enc)?;
        let k = n.key_or_value(&format!("{a}.k_proj"), &format!("{a}.k"), &h, enc.dim, enc)?;
        let v = n.key_or_value(&format!("{a}.v_proj"), &format!("{a}.v"), &h, enc.dim, enc)?;
        let ctx = n.attend(&a, &q, &k, &v, Some(&bias), enc.dim)?;
        let out = n.linear(&format!("{a}.out_proj"), &ctx, enc.dim, enc.dim)?;
        x = n.g.add(&format!("{p}.self_attn_residual"), &x, &out)?;
        if !enc.normalize_before {
            x = n.layer_norm(&norm, &x, enc.dim)?;
        }
        x = n.feed_forward(&p, &x, enc)?;
    }
    if enc.normalize_before {
        x = n.layer_norm("encoder.layer_norm", &x, enc.dim)?;
    }
    let out = n.g.identity(ENCODER_OUT, &x)?;
    n.g.output(&out);
    n.g.output(&mask);
    for l in 0..c.decoder_layers {
        let a = format!("decoder.layers.{l}.encoder_attn");
        let k =
            n.key_or_value(&format!("{a}.k_proj"), &state_names::cross_key(l), &out, enc.dim, dec)?;
        let v = n.key_or_value(
            &format!("{a}.v_proj"),
            &state_names::cross_value(l),
            &out,
            enc.dim,
            dec,
        )?;
        n.g.output(&k);
        n.g.output(&v);
    }
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

/// Builds the decoder-step graph (see the contract): `prev_tokens`, `reorder`,
/// `encoder_padding_mask`, `cross_{key,value}.{L}`, `past.self_{key,value}.{L}` → `log_probs`,
/// `present.self_{key,value}.{L}`.
pub fn build_decoder(
    w: &Weights,
    c: &TransformerConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<seqforge_schemas::onnx::ModelProto> {
    let in_place = kv_cache(c, options)? == KvCache::InPlace;
    let mut n = Net::new("seqforge_decoder_step", w, options);
    let (_, dec) = sides(c);
    // fp32 activations (FP32 and INT8 exports): ONNX Runtime's fused attention kernels.
    let fused = n.t == DType::F32;
    let pad = c.pad_index;
    let (heads, head_dim) = (i(dec.heads), i(dec.head_dim()));
    let rows = || Dim::named("R");
    let prev = n.g.input(names::PREV_TOKENS, DType::I64, vec![rows(), Dim::Fixed(1)])?;
    let reorder = n.g.input(names::REORDER, DType::I64, vec![rows()])?;
    let mask =
        n.g.input(state_names::ENCODER_PADDING_MASK, DType::Bool, vec![rows(), Dim::named("S")])?;
    let kv_shape =
        |len: &str, r: Dim| vec![r, Dim::Fixed(heads), Dim::named(len), Dim::Fixed(head_dim)];
    let mut cross = Vec::new();
    for l in 0..c.decoder_layers {
        let k = n.g.input(&state_names::cross_key(l), n.t, kv_shape("S", rows()))?;
        let v = n.g.input(&state_names::cross_value(l), n.t, kv_shape("S", rows()))?;
        cross.push((k, v));
    }
    let (past, step_inputs) =
        n.self_attention_step_inputs(c.decoder_layers, dec, in_place, &reorder)?;
    let step = step_inputs.step(&past, c.no_token_positional_embeddings, &mut n)?;
    let shares_all = c.share_all_embeddings;
    let embed_name =
        if shares_all { "encoder.embed_tokens.weight" } else { "decoder.embed_tokens.weight" };
    let mut x =
        n.embedding("decoder.embed_tokens", embed_name, c.tgt_vocab_size, dec.dim, &prev)?;
    if let Some(scale) = embed_scale(c, dec.dim) {
        let s = n.g.scalar("decoder.embed_scale", n.t, scale)?;
        x = n.g.mul("decoder.embed_scaled", &x, &s)?;
    }
    if let (false, Some(step)) = (c.no_token_positional_embeddings, &step) {
        // Step P: position pad + 1 + P for every row.
        let offset = n.g.initializer_i64("decoder.first_position", &[1], &[i(pad) + 1])?;
        let position = n.g.add("decoder.embed_positions.position", step, &offset)?;
        let ptable = n.position_table(
            "decoder",
            c.decoder_learned_pos,
            c.max_target_positions,
            dec.dim,
            pad,
        )?;
        let pe = n.g.gather("decoder.embed_positions", &ptable, &position, 0)?;
        x = n.g.add("decoder.embed_with_positions", &x, &pe)?;
    }
    if c.layernorm_embedding {
        x = n.layer_norm("decoder.layernorm_embedding", &x, dec.dim)?;
    }
    if fused {
        // One query position per row: the layers work on `[R, E]`, so that ONNX Runtime fuses
        // each linear layer's MatMul and bias into one GEMM.
        x = n.g.reshape("decoder.embedded_2d", &x, &[-1, i(dec.dim)])?;
    }
    let bias = n.attention_bias("decoder.encoder_attention_bias", &mask)?;

    let mut presents: Vec<(Value, Value)> = Vec::new();
    for l in 0..c.decoder_layers {
        let p = format!("decoder.layers.{l}");
        // Self-attention over the reordered past plus this step.
        let norm = format!("{p}.self_attn_layer_norm");
        let h = if dec.normalize_before { n.layer_norm(&norm, &x, dec.dim)? } else { x.clone() };
        let a = format!("{p}.self_attn");
        let (ctx, present) = n.self_attention_step(&a, l, &h, &past[l], &step_inputs, dec)?;
        presents.push(present);
        let out = n.linear(&format!("{a}.out_proj"), &ctx, dec.dim, dec.dim)?;
        x = n.residual(&format!("{p}.self_attn_residual"), &norm, &x, &out, dec)?;

        // Encoder attention over the precomputed keys and values.
        let norm = format!("{p}.encoder_attn_layer_norm");
        let h = if dec.normalize_before { n.layer_norm(&norm, &x, dec.dim)? } else { x.clone() };
        let a = format!("{p}.encoder_attn");
        let (ck, cv) = &cross[l];
        let ctx = if fused {
            let d = i(dec.dim);
            let q = n.scaled_query(&a, &h, dec)?;
            let q = n.g.reshape(&format!("{a}.q_3d"), &q, &[0, 1, d])?;
            let name = format!("{a}.context_3d");
            let ctx =
                n.g.multi_head_attention(&name, (&q, ck, cv), Some(&bias), None, None, dec.heads)?
                    .0;
            n.g.reshape(&format!("{a}.context_merged"), &ctx, &[0, d])?
        } else {
            let q = n.query(&a, &h, dec)?;
            n.attend(&a, &q, ck, cv, Some(&bias), dec.dim)?
        };
        let out = n.linear(&format!("{a}.out_proj"), &ctx, dec.dim, dec.dim)?;
        x = n.residual(&format!("{p}.encoder_attn_residual"), &norm, &x, &out, dec)?;
        x = n.feed_forward(&p, &x, dec)?;
    }
    if dec.normalize_before && !c.no_decoder_final_norm {
        x = n.layer_norm("decoder.layer_norm", &x, dec.dim)?;
    }
    let features = n.g.reshape("decoder.features", &x, &[0, i(dec.dim)])?;
    let projection =
        if c.shares_decoder_output() { embed_name } else { "decoder.output_projection.weight" };
    let logits = n.projection(
        "decoder.output_projection",
        &features,
        projection,
        (c.tgt_vocab_size, dec.dim),
        None,
    )?;
    let log_probs = if n.t == DType::F32 {
        n.g.log_softmax(names::LOG_PROBS, &logits, -1)?
    } else {
        let l32 = n.g.cast("decoder.logits_fp32", &logits, DType::F32)?;
        n.g.log_softmax(names::LOG_PROBS, &l32, -1)?
    };
    n.output_log_probs(&log_probs)?;
    for (k, v) in &presents {
        n.g.output(k);
        n.g.output(v);
    }
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

/// Names in the checkpoint that the graphs do not read but that are legitimately there:
/// fairseq's buffers and the aliases of tied weights.
pub fn ignorable_tensor(c: &TransformerConfig, name: &str) -> bool {
    matches!(name, "encoder.version" | "decoder.version")
        || name.ends_with(".embed_positions._float_tensor")
        || (c.share_all_embeddings && name == "decoder.embed_tokens.weight")
        || (c.shares_decoder_output() && name == "decoder.output_projection.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config claiming huge `max_*_positions` must fail at once, naming the table, instead
    /// of allocating it (found by `cargo xtask fuzz`, target `checkpoint`).
    #[test]
    fn huge_max_positions_are_refused_not_allocated()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let data = tmp.path().join("data");
        std::fs::create_dir_all(&data)?;
        for lang in ["de", "en"] {
            let dict = crate::testing::numbered_dictionary(8, lang);
            std::fs::write(data.join(format!("dict.{lang}.txt")), dict)?;
        }
        for max_positions in [1 << 40, usize::MAX - 1] {
            let ckpt = tmp.path().join(format!("ckpt-{max_positions}"));
            let synthetic = crate::testing::SyntheticCheckpoint {
                max_positions,
                ..crate::testing::SyntheticCheckpoint::tiny(8, 8)
            };
            synthetic.write(&ckpt, &data)?;
            let err = crate::compile(&ckpt, None, BuildOptions::default())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("position table beyond"), "{max_positions}: {err}");
        }
        Ok(())
    }

    #[test]
    fn sinusoidal_table_matches_fairseq_layout() {
        // fairseq: half_dim = 4, emb = exp(arange(4) * -(ln(10000)/3)); row r = [sin(r·emb), cos(r·emb)].
        let t = sinusoidal_table(5, 8, 1);
        assert!(t[8..16].iter().all(|&v| v == 0.0), "padding row must be zero");
        let r = 3f32;
        let freqs = [1.0f32, 0.046_415_89, 0.002_154_435, 0.000_1];
        for (k, f) in freqs.iter().enumerate() {
            assert!((t[3 * 8 + k] - (r * f).sin()).abs() < 1e-6);
            assert!((t[3 * 8 + 4 + k] - (r * f).cos()).abs() < 1e-6);
        }
        assert_eq!(t[0], 0.0); // sin(0)
        assert_eq!(t[4], 1.0); // cos(0)
    }
}
