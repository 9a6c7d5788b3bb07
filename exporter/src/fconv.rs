//! fairseq's convolutional sequence-to-sequence model (`fairseq/models/fconv.py`) compiled to
//! the contract's two graphs, with the state [`FConvConfig::decoder_state`] declares.
//!
//! Weight normalisation is folded at export time (`g · v / ‖v‖`, norms in f64).
//!
//! Encoder: token and learned position embeddings (positions numbered past padding, as
//! `make_positions`), `fc1`, then each layer in `[B, C, S]` layout: padding zeroed, an ONNX
//! `Conv` (fairseq's `ConvTBC` weight `[k, in, 2·out]` as `[2·out, in, k]`, padded `k/2` on both
//! ends for odd widths and `((k−1)/2, k/2)` for even ones), GLU, the residual (through its
//! projection) scaled by √½; `fc2` with padding zeroed gives `encoder_a`, `(encoder_a + input
//! embedding) · √½` gives `encoder_b`. The encoder accepts left or right padding.
//!
//! Decoder step: the token embedding plus the learned position `pad + 1 + position` (fairseq's
//! incremental `LearnedPositionalEmbedding`), `fc1`, then per layer: the window of the last
//! `k − 1` inputs (`past.conv_window.{l}`, gathered by `reorder`) with the current input
//! appended runs through the convolution as one `MatMul` (`LinearizedConvolution`'s weight
//! `[2·out, k·in]`), GLU, multi-step attention where the layer attends (scores in fp32, masked
//! softmax over the source, the context scaled by `s · rsqrt(s)` with `s` the unpadded source
//! length), the residual; the window minus its oldest input is `present.conv_window.{l}`. Then
//! `fc2`, `fc3` (or the tied embedding with `fc3.bias`) and log-softmax in fp32.
//!
//! In fp16 the encoder's convolutions run in fp32 (ONNX Runtime's CPU `Conv` kernel is
//! fp32-only) with fp32 weights, as do the attention softmax and the log-softmax; in INT8
//! exports the linear layers (the decoder's linearized convolutions included) and embeddings
//! are quantized and the encoder's convolutions stay fp32.

use seqforge_schemas::arch::fconv::{ConvBlock, FConvConfig, conv_blocks, state_names};
use seqforge_schemas::contract::names;
use seqforge_schemas::onnx::ModelProto;

use crate::error::{Error, Result};
use crate::graph::{DType, Dim, Value};
use crate::net::{Linear, Net, i};
use crate::transformer::BuildOptions;
use crate::weights::Weights;

/// The value masked attention scores are replaced with (fp32; `exp` of it is exactly 0).
const MASKED_SCORE: f32 = -1e9;

/// `√½`, fairseq's scale of residual sums and of the attention query.
const SQRT_HALF: f32 = std::f32::consts::FRAC_1_SQRT_2;

fn config_error(message: String) -> Error {
    Error::Config { path: "config.json".into(), message }
}

/// The parsed layer stacks and attention flags of a config.
struct Layout {
    encoder: Vec<ConvBlock>,
    decoder: Vec<ConvBlock>,
    attention: Vec<bool>,
}

fn layout(c: &FConvConfig) -> Result<Layout> {
    let fail = |e: seqforge_schemas::arch::Error| config_error(e.to_string());
    c.validate().map_err(fail)?;
    Ok(Layout {
        encoder: conv_blocks(&c.encoder_convolutions().map_err(fail)?),
        decoder: conv_blocks(&c.decoder_convolutions().map_err(fail)?),
        attention: c.attention_layers().map_err(fail)?,
    })
}

/// The decoder state of `c` (see [`FConvConfig::decoder_state`]).
pub fn decoder_state(c: &FConvConfig) -> Result<seqforge_schemas::contract::StateSpec> {
    c.decoder_state().map_err(|e| config_error(e.to_string()))
}

/// `g · v / ‖v‖` of the weight-normalised `{prefix}.weight_{g,v}`: `v` of `shape`, `g` and the
/// norm over every axis but `dim` (`torch._weight_norm`), computed in f64.
fn weight_norm(w: &Weights, prefix: &str, shape: &[usize], dim: usize) -> Result<Vec<f32>> {
    let v = w.get(&format!("{prefix}.weight_v"), shape)?;
    let n = shape[dim];
    let g_shape: Vec<usize> = (0..shape.len()).map(|d| if d == dim { n } else { 1 }).collect();
    let g = w.get(&format!("{prefix}.weight_g"), &g_shape)?;
    let inner: usize = shape[dim + 1..].iter().product();
    let index = |k: usize| (k / inner) % n;
    let mut sums = vec![0f64; n];
    for (k, &x) in v.iter().enumerate() {
        sums[index(k)] += f64::from(x) * f64::from(x);
    }
    let factors: Vec<f64> = sums.iter().zip(g).map(|(s, &g)| f64::from(g) / s.sqrt()).collect();
    Ok(v.iter().enumerate().map(|(k, &x)| (f64::from(x) * factors[index(k)]) as f32).collect())
}

impl Net<'_> {
    /// fairseq's weight-normalised `Linear` `prefix` (`[out, in]`) with its bias.
    fn wn_linear(&mut self, prefix: &str, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let data = weight_norm(self.w, prefix, &[out_dim, in_dim], 0)?;
        self.linear_from_data(prefix, &data, (out_dim, in_dim), Some(&format!("{prefix}.bias")))
    }

    /// The weight-normalised `ConvTBC` `prefix` of `block`: the folded weight `[k, in, 2·out]`.
    fn conv_weight(&mut self, prefix: &str, block: &ConvBlock) -> Result<Vec<f32>> {
        let (k, c_in) = (block.layer.kernel_size, block.in_channels);
        weight_norm(self.w, prefix, &[k, c_in, 2 * block.layer.out_channels], 2)
    }

    /// `(x + y) · √½` in the model dtype.
    fn scaled_sum(&mut self, out: &str, x: &Value, y: &Value) -> Result<Value> {
        let sum = self.g.add(&format!("{out}.sum"), x, y)?;
        let half = self.g.scalar(&format!("{out}.sqrt_half"), self.t, SQRT_HALF)?;
        self.g.mul(out, &sum, &half)
    }

    /// GLU along `axis` in fp32: the first half times the sigmoid of the second (the caller
    /// casts back to the model dtype).
    fn glu(&mut self, out: &str, x: &Value, axis: i64, half: usize) -> Result<Value> {
        let h = i(half);
        let parts = self.g.split(&[&format!("{out}.a"), &format!("{out}.b")], x, axis, &[h, h])?;
        let a = self.up(&format!("{out}.a_fp32"), &parts[0])?;
        let b = self.up(&format!("{out}.b_fp32"), &parts[1])?;
        let gate = self.g.sigmoid(&format!("{out}.gate"), &b)?;
        self.g.mul(out, &a, &gate)
    }
}

/// Builds the encoder graph (see the module documentation).
pub fn build_encoder(
    w: &Weights,
    c: &FConvConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let layout = layout(c)?;
    let mut n = Net::new("seqforge_fconv_encoder", w, options);
    let embed = c.encoder_embed_dim;
    let tokens =
        n.g.input(names::SRC_TOKENS, DType::I64, vec![Dim::named("B"), Dim::named("S")])?;
    let pad = n.g.initializer_i64("pad_index", &[], &[i(c.pad_index)])?;
    let mask = n.g.equal(state_names::ENCODER_PADDING_MASK, &tokens, &pad)?;
    let keep = n.g.not("encoder.non_padding", &mask)?;
    let keep_i64 = n.g.cast("encoder.non_padding_i64", &keep, DType::I64)?;
    let numbered = n.g.cumsum("encoder.numbered", &keep_i64, 1)?;
    let numbered = n.g.mul("encoder.numbered_tokens", &numbered, &keep_i64)?;
    let positions = n.g.add("encoder.positions", &numbered, &pad)?;
    let x = n.embedding(
        "encoder.embed_tokens",
        "encoder.embed_tokens.weight",
        c.src_vocab_size,
        embed,
        &tokens,
    )?;
    let p = n.embedding(
        "encoder.embed_positions",
        "encoder.embed_positions.weight",
        c.max_source_positions,
        embed,
        &positions,
    )?;
    let input_embedding = n.g.add("encoder.input_embedding", &x, &p)?;
    let first = layout.encoder.first().map_or(embed, |b| b.in_channels);
    let fc1 = n.wn_linear("encoder.fc1", embed, first)?;
    let x = n.apply("encoder.fc1", &input_embedding, &fc1)?;
    let keep_t = n.g.cast("encoder.keep", &keep, n.t)?;
    let keep_cs = n.g.unsqueeze("encoder.keep_channels_first", &keep_t, &[1])?;
    let mut x = n.g.transpose("encoder.channels_first", &x, &[0, 2, 1])?;
    let mut residuals = vec![x.clone()];
    for (l, block) in layout.encoder.iter().enumerate() {
        let p = format!("encoder.convolutions.{l}");
        let residual = residual(&mut n, "encoder", l, block, &residuals)?;
        let masked = n.g.mul(&format!("{p}.masked"), &x, &keep_cs)?;
        let masked = n.up(&format!("{p}.input_fp32"), &masked)?;
        let (k, c_in, out) = (block.layer.kernel_size, block.in_channels, block.layer.out_channels);
        let folded = n.conv_weight(&p, block)?;
        // [k, in, 2·out] → ONNX's [2·out, in, k].
        let mut onnx = vec![0f32; folded.len()];
        for t in 0..k {
            for ci in 0..c_in {
                for o in 0..2 * out {
                    onnx[(o * c_in + ci) * k + t] = folded[(t * c_in + ci) * 2 * out + o];
                }
            }
        }
        let weight =
            n.g.initializer_f32(&format!("{p}.weight"), &[i(2 * out), i(c_in), i(k)], &onnx)?;
        let bias = w.get(&format!("{p}.bias"), &[2 * out])?;
        let bias = n.g.initializer_f32(&format!("{p}.bias_fp32"), &[i(2 * out)], bias)?;
        let pads = if k % 2 == 1 { (i(k / 2), i(k / 2)) } else { (i((k - 1) / 2), i(k / 2)) };
        let y = n.g.conv1d(&format!("{p}.conv"), &masked, &weight, &bias, pads)?;
        let y = n.glu(&format!("{p}.glu_fp32"), &y, 1, out)?;
        x = n.down(&format!("{p}.glu"), &y)?;
        if let Some(r) = residual {
            x = n.scaled_sum(&format!("{p}.out"), &x, &r)?;
        }
        residuals.push(x.clone());
    }
    let x = n.g.transpose("encoder.channels_last", &x, &[0, 2, 1])?;
    let last = layout.encoder.last().map_or(first, |b| b.layer.out_channels);
    let fc2 = n.wn_linear("encoder.fc2", last, embed)?;
    let x = n.apply("encoder.fc2", &x, &fc2)?;
    let keep_cl = n.g.unsqueeze("encoder.keep_channels_last", &keep_t, &[2])?;
    let a = n.g.mul("encoder.a_masked", &x, &keep_cl)?;
    let a = n.g.identity(state_names::ENCODER_A, &a)?;
    let b = n.scaled_sum("encoder.b_scaled", &a, &input_embedding)?;
    let b = n.g.identity(state_names::ENCODER_B, &b)?;
    n.g.output(&a);
    n.g.output(&b);
    n.g.output(&mask);
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

/// The residual of layer `l` (`side` = `encoder`/`decoder`): the output `residual` layers back,
/// through `projections.{l}` when the widths differ. Encoder values are `[B, C, S]` (the
/// projection runs channels-last), decoder values `[R, C]`.
fn residual(
    n: &mut Net<'_>,
    side: &str,
    l: usize,
    block: &ConvBlock,
    residuals: &[Value],
) -> Result<Option<Value>> {
    let Some(dim) = block.residual_dim else { return Ok(None) };
    let r = residuals[residuals.len() - block.layer.residual].clone();
    if !block.has_projection() {
        return Ok(Some(r));
    }
    let p = format!("{side}.projections.{l}");
    let proj = n.wn_linear(&p, dim, block.layer.out_channels)?;
    if side == "encoder" {
        let t = n.g.transpose(&format!("{p}.channels_last"), &r, &[0, 2, 1])?;
        let y = n.apply(&p, &t, &proj)?;
        Ok(Some(n.g.transpose(&format!("{p}.channels_first"), &y, &[0, 2, 1])?))
    } else {
        Ok(Some(n.apply(&p, &r, &proj)?))
    }
}

/// Builds the decoder-step graph (see the module documentation).
pub fn build_decoder(
    w: &Weights,
    c: &FConvConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let layout = layout(c)?;
    let mut n = Net::new("seqforge_fconv_decoder_step", w, options);
    let embed = c.decoder_embed_dim;
    let rows = || Dim::named("R");
    let prev = n.g.input(names::PREV_TOKENS, DType::I64, vec![rows(), Dim::Fixed(1)])?;
    let reorder = n.g.input(names::REORDER, DType::I64, vec![rows()])?;
    let enc_shape = || vec![rows(), Dim::named("S"), Dim::Fixed(i(c.encoder_embed_dim))];
    let enc_a = n.g.input(state_names::ENCODER_A, n.t, enc_shape())?;
    let enc_b = n.g.input(state_names::ENCODER_B, n.t, enc_shape())?;
    let mask =
        n.g.input(state_names::ENCODER_PADDING_MASK, DType::Bool, vec![rows(), Dim::named("S")])?;
    let mut windows = Vec::new();
    for (l, block) in layout.decoder.iter().enumerate() {
        let k = block.layer.kernel_size;
        if k < 2 {
            windows.push(None);
            continue;
        }
        let name = state_names::window(l);
        let shape =
            vec![Dim::named("R_past"), Dim::Fixed(i(k - 1)), Dim::Fixed(i(block.in_channels))];
        let past = n.g.input(&names::past(&name), n.t, shape)?;
        windows.push(Some(n.g.gather(&format!("{name}.reordered"), &past, &reorder, 0)?));
    }
    let position = n.g.input(names::POSITION, DType::I64, vec![Dim::Fixed(1)])?;

    // fairseq's incremental positions: padding_idx + prefix length = pad + 1 + position.
    let offset = n.g.initializer_i64("decoder.position_offset", &[1], &[i(c.pad_index + 1)])?;
    let index = n.g.add("decoder.position_index", &position, &offset)?;
    let tokens = n.g.reshape("decoder.tokens", &prev, &[-1])?;
    let table = "decoder.embed_tokens.weight";
    let x = n.embedding("decoder.embed_tokens", table, c.tgt_vocab_size, embed, &tokens)?;
    let p = n.embedding(
        "decoder.embed_positions",
        "decoder.embed_positions.weight",
        c.max_target_positions,
        embed,
        &index,
    )?;
    let target_embedding = n.g.add("decoder.target_embedding", &x, &p)?;
    let first = layout.decoder.first().map_or(embed, |b| b.in_channels);
    let fc1 = n.wn_linear("decoder.fc1", embed, first)?;
    let mut x = n.apply("decoder.fc1", &target_embedding, &fc1)?;

    // The attention's context scale s · rsqrt(s), s = unpadded source length, [R, 1].
    let keep = n.g.not("decoder.source_kept", &mask)?;
    let keep = n.g.cast("decoder.source_kept_f32", &keep, DType::F32)?;
    let s = n.g.reduce_sum("decoder.source_length", &keep, 1)?;
    let s = n.g.unsqueeze("decoder.source_length_column", &s, &[1])?;
    let root = n.g.sqrt("decoder.source_length_sqrt", &s)?;
    let rsqrt = n.g.reciprocal("decoder.source_length_rsqrt", &root)?;
    let scale = n.g.mul("decoder.context_scale_f32", &s, &rsqrt)?;
    let scale = n.down("decoder.context_scale", &scale)?;
    let masked = n.g.scalar("decoder.masked_score", DType::F32, MASKED_SCORE)?;
    let enc_a_t = n.g.transpose("decoder.encoder_a_t", &enc_a, &[0, 2, 1])?;

    let mut residuals = vec![x.clone()];
    let mut presents = Vec::new();
    for (l, block) in layout.decoder.iter().enumerate() {
        let p = format!("decoder.convolutions.{l}");
        let residual = residual(&mut n, "decoder", l, block, &residuals)?;
        let (k, c_in, out) = (block.layer.kernel_size, block.in_channels, block.layer.out_channels);
        let flat = match &windows[l] {
            Some(window) => {
                let current = n.g.unsqueeze(&format!("{p}.current"), &x, &[1])?;
                let full = n.g.concat(&format!("{p}.window_full"), &[window, &current], 1)?;
                let present =
                    n.g.slice_axis(&names::present(&state_names::window(l)), &full, 1, 1, i(k))?;
                presents.push(present);
                n.g.reshape(&format!("{p}.window_flat"), &full, &[0, i(k * c_in)])?
            }
            None => x.clone(),
        };
        // LinearizedConvolution's weight: [k, in, 2·out] → [2·out, k·in].
        let folded = n.conv_weight(&p, block)?;
        let mut linear = vec![0f32; folded.len()];
        for t in 0..k {
            for ci in 0..c_in {
                for o in 0..2 * out {
                    linear[o * k * c_in + t * c_in + ci] = folded[(t * c_in + ci) * 2 * out + o];
                }
            }
        }
        let conv =
            n.linear_from_data(&p, &linear, (2 * out, k * c_in), Some(&format!("{p}.bias")))?;
        let y = n.apply(&format!("{p}.linearized"), &flat, &conv)?;
        let y = n.glu(&format!("{p}.glu_fp32"), &y, 1, out)?;
        x = n.down(&format!("{p}.glu"), &y)?;
        if layout.attention[l] {
            let a = format!("decoder.attention.{l}");
            let inp = n.wn_linear(&format!("{a}.in_projection"), out, embed)?;
            let q = n.apply(&format!("{a}.in_projection"), &x, &inp)?;
            let q = n.scaled_sum(&format!("{a}.query"), &q, &target_embedding)?;
            let q = n.g.unsqueeze(&format!("{a}.query_row"), &q, &[1])?;
            let scores = n.g.matmul(&format!("{a}.scores_row"), &q, &enc_a_t)?;
            let scores = n.g.reshape(&format!("{a}.scores"), &scores, &[0, -1])?;
            let scores = n.up(&format!("{a}.scores_fp32"), &scores)?;
            let scores = n.g.where_(&format!("{a}.masked_scores"), &mask, &masked, &scores)?;
            let probs = n.g.softmax(&format!("{a}.probs_fp32"), &scores, -1)?;
            let probs = n.down(&format!("{a}.probs"), &probs)?;
            let probs = n.g.unsqueeze(&format!("{a}.probs_row"), &probs, &[1])?;
            let context = n.g.matmul(&format!("{a}.context_row"), &probs, &enc_b)?;
            let context = n.g.reshape(&format!("{a}.context"), &context, &[0, i(embed)])?;
            let context = n.g.mul(&format!("{a}.context_scaled"), &context, &scale)?;
            let outp = n.wn_linear(&format!("{a}.out_projection"), embed, out)?;
            let y = n.apply(&format!("{a}.out_projection"), &context, &outp)?;
            x = n.scaled_sum(&format!("{a}.out"), &y, &x)?;
        }
        if let Some(r) = residual {
            x = n.scaled_sum(&format!("decoder.layers.{l}.out"), &x, &r)?;
        }
        residuals.push(x.clone());
    }
    let last = layout.decoder.last().map_or(first, |b| b.layer.out_channels);
    let fc2 = n.wn_linear("decoder.fc2", last, c.decoder_out_embed_dim)?;
    let features = n.apply("decoder.fc2", &x, &fc2)?;
    let shape = (c.tgt_vocab_size, c.decoder_out_embed_dim);
    let logits = if c.share_input_output_embed {
        n.projection("decoder.fc3", &features, table, shape, Some("decoder.fc3.bias"))?
    } else {
        let fc3 = n.wn_linear("decoder.fc3", c.decoder_out_embed_dim, c.tgt_vocab_size)?;
        n.apply("decoder.fc3", &features, &fc3)?
    };
    let logits = n.up("decoder.logits_fp32", &logits)?;
    let log_probs = n.g.log_softmax(names::LOG_PROBS, &logits, -1)?;
    n.output_log_probs(&log_probs)?;
    for p in &presents {
        n.g.output(p);
    }
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

/// Checkpoint tensors the graphs do not read: the decoder's `version` buffer and the tied
/// alias `decoder.fc3.weight`.
pub fn ignorable_tensor(c: &FConvConfig, name: &str) -> bool {
    name.ends_with(".version") || (c.share_input_output_embed && name == "decoder.fc3.weight")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_norm_scales_each_output_to_its_gain()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        // v [k=2, in=1, out=2] with dim 2: output 0 is (3, 4) → norm 5, output 1 is (0, 2).
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let (v, g) = (bytes(&[3.0, 0.0, 4.0, 2.0]), bytes(&[10.0, 1.0]));
        let views = vec![
            (
                "c.weight_v",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1, 2], &v)?,
            ),
            (
                "c.weight_g",
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 1, 2], &g)?,
            ),
        ];
        let file = safetensors::serialize(views, None)?;
        let w =
            Weights::from_bytes(std::path::Path::new("test.safetensors"), &file, String::new())?;
        assert_eq!(weight_norm(&w, "c", &[2, 1, 2], 2)?, vec![6.0, 0.0, 8.0, 1.0]);
        Ok(())
    }
}
