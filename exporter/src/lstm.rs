//! fairseq's LSTM encoder-decoder (`fairseq/models/lstm.py`) compiled to the contract's two
//! graphs, with the state [`LstmConfig::decoder_state`] declares.
//!
//! Encoder: embeddings, then each layer an ONNX `LSTM` (fp32, PyTorch's `ifgo` gate rows
//! reordered to ONNX's `iofc`, both directions when bidirectional) with `sequence_lens` from
//! the padding, so every row stops at its own length exactly as fairseq's packed sequences do.
//! The runtime pads sources on the right, which is what `sequence_lens` expects. Outputs: the
//! last layer's outputs `encoder_out` `[B, S, U]` and the padding mask (with attention), and
//! each decoder layer's initial `final_hidden.{l}`/`final_cell.{l}`: encoder layer `l`'s final
//! states, directions concatenated (fairseq's `combine_bidir`), through `encoder_hidden_proj` /
//! `encoder_cell_proj` when the sizes differ.
//!
//! Decoder step: input feeding (`[embedding; input_feed]`), one `LSTMCell` per layer (gates in
//! fp32), Luong attention over the encoder outputs (`input_proj`, masked softmax, `tanh` of
//! `output_proj([context; h])`), `additional_fc` when `decoder_out_embed_dim` differs from the
//! hidden size, `fc_out` or the tied embedding, log-softmax in fp32. Every state input is
//! gathered by `reorder` first.
//!
//! In fp16, weights and activations are fp16 while the encoder's `LSTM` op (ONNX Runtime's CPU
//! kernel is fp32-only), the cell's gate non-linearities and state update, the attention
//! softmax and the log-softmax run in fp32.

use seqforge_schemas::arch::lstm::{LstmConfig, state_names};
use seqforge_schemas::contract::names;
use seqforge_schemas::onnx::ModelProto;

use crate::error::Result;
use crate::graph::{DType, Dim, Value};
use crate::net::{Net, i};
use crate::transformer::BuildOptions;
use crate::weights::{Weights, transpose};

/// The value masked attention scores are replaced with (fp32; `exp` of it is exactly 0).
const MASKED_SCORE: f32 = -1e9;

/// PyTorch's gate blocks `i, f, g, o` (rows of `[4H, …]`) in ONNX's order `i, o, f, c`.
fn onnx_gate_order(m: &[f32], hidden: usize) -> Vec<f32> {
    let block = m.len() / 4;
    debug_assert_eq!(block % hidden.max(1), 0);
    [0, 3, 1, 2].iter().flat_map(|&k| m[k * block..(k + 1) * block].iter().copied()).collect()
}

/// The embedding table of the decoder (the encoder's when all embeddings are shared).
fn decoder_embedding_name(c: &LstmConfig) -> &'static str {
    if c.share_all_embeddings {
        "encoder.embed_tokens.weight"
    } else {
        "decoder.embed_tokens.weight"
    }
}

/// Builds the encoder graph (see the module documentation).
pub fn build_encoder(
    w: &Weights,
    c: &LstmConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let mut n = Net::new("seqforge_lstm_encoder", w, options);
    let hidden = c.encoder_hidden();
    let dirs = if c.encoder_bidirectional { 2 } else { 1 };
    let tokens =
        n.g.input(names::SRC_TOKENS, DType::I64, vec![Dim::named("B"), Dim::named("S")])?;
    let pad = n.g.initializer_i64("pad_index", &[], &[i(c.pad_index)])?;
    let mask = n.g.equal(state_names::ENCODER_PADDING_MASK, &tokens, &pad)?;
    let keep = n.g.not("encoder.non_padding", &mask)?;
    let keep = n.g.cast("encoder.non_padding_i64", &keep, DType::I64)?;
    let lengths = n.g.reduce_sum("encoder.lengths_i64", &keep, 1)?;
    let lengths = n.g.cast("encoder.lengths", &lengths, DType::I32)?;

    let table = "encoder.embed_tokens.weight";
    let x =
        n.embedding("encoder.embed_tokens", table, c.src_vocab_size, c.encoder_embed_dim, &tokens)?;
    let x = n.up("encoder.embed_fp32", &x)?;
    let mut x = n.g.transpose("encoder.time_major", &x, &[1, 0, 2])?;
    let mut finals = Vec::new();
    for layer in 0..c.encoder_layers {
        let in_dim = if layer == 0 { c.encoder_embed_dim } else { c.encoder_output_units() };
        let suffixes: &[&str] = if c.encoder_bidirectional { &["", "_reverse"] } else { &[""] };
        let (mut wd, mut rd, mut bd) = (Vec::new(), Vec::new(), Vec::new());
        for s in suffixes {
            let p = |k: &str| format!("encoder.lstm.{k}_l{layer}{s}");
            wd.extend(onnx_gate_order(w.get(&p("weight_ih"), &[4 * hidden, in_dim])?, hidden));
            rd.extend(onnx_gate_order(w.get(&p("weight_hh"), &[4 * hidden, hidden])?, hidden));
            bd.extend(onnx_gate_order(w.get(&p("bias_ih"), &[4 * hidden])?, hidden));
            bd.extend(onnx_gate_order(w.get(&p("bias_hh"), &[4 * hidden])?, hidden));
        }
        let p = format!("encoder.lstm.l{layer}");
        let (d, h4) = (i(dirs), i(4 * hidden));
        let wv = n.g.initializer_f32(&format!("{p}.W"), &[d, h4, i(in_dim)], &wd)?;
        let rv = n.g.initializer_f32(&format!("{p}.R"), &[d, h4, i(hidden)], &rd)?;
        let bv = n.g.initializer_f32(&format!("{p}.B"), &[d, 2 * h4], &bd)?;
        let (y, y_h, y_c) =
            n.g.lstm(&p, &x, &wv, &rv, &bv, &lengths, hidden, c.encoder_bidirectional)?;
        // [S, dirs, B, H] → [S, B, dirs·H] (forward then backward, as PyTorch concatenates).
        let y = n.g.transpose(&format!("{p}.y_t"), &y, &[0, 2, 1, 3])?;
        x = n.g.reshape(&format!("{p}.out"), &y, &[0, 0, i(dirs * hidden)])?;
        let mut state = |v: &Value, what: &str| -> Result<Value> {
            let t = n.g.transpose(&format!("{p}.{what}_t"), v, &[1, 0, 2])?;
            n.g.reshape(&format!("{p}.{what}_combined"), &t, &[0, i(dirs * hidden)])
        };
        let fh = state(&y_h, "final_hidden")?;
        let fc = state(&y_c, "final_cell")?;
        finals.push((fh, fc));
    }
    let units = c.encoder_output_units();
    let dec_hidden = c.decoder_hidden();
    if c.decoder_attention {
        let out = n.g.transpose("encoder.batch_major", &x, &[1, 0, 2])?;
        let out = n.down("encoder.out_model_dtype", &out)?;
        let out = n.g.identity(state_names::ENCODER_OUT, &out)?;
        n.g.output(&out);
        n.g.output(&mask);
    }
    let project = units != dec_hidden;
    let projections = if project {
        Some((
            n.linear_weights("decoder.encoder_hidden_proj", units, dec_hidden, true)?,
            n.linear_weights("decoder.encoder_cell_proj", units, dec_hidden, true)?,
        ))
    } else {
        None
    };
    for (l, (fh, fc)) in finals.iter().take(c.decoder_layers).enumerate() {
        let fh = n.down(&format!("encoder.final_hidden_{l}_model_dtype"), fh)?;
        let fc = n.down(&format!("encoder.final_cell_{l}_model_dtype"), fc)?;
        let (h, cell) = match &projections {
            Some((hp, cp)) => (
                n.apply(&state_names::final_hidden(l), &fh, hp)?,
                n.apply(&state_names::final_cell(l), &fc, cp)?,
            ),
            None => (
                n.g.identity(&state_names::final_hidden(l), &fh)?,
                n.g.identity(&state_names::final_cell(l), &fc)?,
            ),
        };
        n.g.output(&h);
        n.g.output(&cell);
    }
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

/// Builds the decoder-step graph (see the module documentation).
pub fn build_decoder(
    w: &Weights,
    c: &LstmConfig,
    options: BuildOptions,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let mut n = Net::new("seqforge_lstm_decoder_step", w, options);
    let hidden = c.decoder_hidden();
    let units = c.encoder_output_units();
    let rows = || Dim::named("R");
    let prev = n.g.input(names::PREV_TOKENS, DType::I64, vec![rows(), Dim::Fixed(1)])?;
    let reorder = n.g.input(names::REORDER, DType::I64, vec![rows()])?;
    let attention_inputs = if c.decoder_attention {
        let enc = n.g.input(
            state_names::ENCODER_OUT,
            n.t,
            vec![rows(), Dim::named("S"), Dim::Fixed(i(units))],
        )?;
        let mask = n.g.input(
            state_names::ENCODER_PADDING_MASK,
            DType::Bool,
            vec![rows(), Dim::named("S")],
        )?;
        Some((enc, mask))
    } else {
        None
    };
    let past = |n: &mut Net<'_>, name: &str| -> Result<Value> {
        let v =
            n.g.input(&names::past(name), n.t, vec![Dim::named("R_past"), Dim::Fixed(i(hidden))])?;
        n.g.gather(&format!("{name}.reordered"), &v, &reorder, 0)
    };
    let mut states = Vec::new();
    for l in 0..c.decoder_layers {
        let h = past(&mut n, &state_names::hidden(l))?;
        let cell = past(&mut n, &state_names::cell(l))?;
        states.push((h, cell));
    }
    let feed = past(&mut n, state_names::INPUT_FEED)?;

    let embedding = decoder_embedding_name(c);
    let x = n.embedding(
        "decoder.embed_tokens",
        embedding,
        c.tgt_vocab_size,
        c.decoder_embed_dim,
        &prev,
    )?;
    let x = n.g.reshape("decoder.embedded", &x, &[0, i(c.decoder_embed_dim)])?;
    let mut input = n.g.concat("decoder.input_fed", &[&x, &feed], 1)?;
    let mut presents = Vec::new();
    for (l, (h, cell)) in states.iter().enumerate() {
        let p = format!("decoder.layers.{l}");
        let in_dim = if l == 0 { c.decoder_embed_dim + hidden } else { hidden };
        let ih = n.cell_weights(&p, in_dim, hidden)?;
        let a = n.g.matmul(&format!("{p}.ih"), &input, &ih.0)?;
        let b = n.g.matmul(&format!("{p}.hh"), h, &ih.1)?;
        let gates = n.g.add(&format!("{p}.gates_no_bias"), &a, &b)?;
        let gates = n.g.add(&format!("{p}.gates"), &gates, &ih.2)?;
        let gates = n.up(&format!("{p}.gates_fp32"), &gates)?;
        let hd = i(hidden);
        let gi = n.g.slice_last(&format!("{p}.i_pre"), &gates, 0, hd)?;
        let gf = n.g.slice_last(&format!("{p}.f_pre"), &gates, hd, 2 * hd)?;
        let gg = n.g.slice_last(&format!("{p}.g_pre"), &gates, 2 * hd, 3 * hd)?;
        let go = n.g.slice_last(&format!("{p}.o_pre"), &gates, 3 * hd, 4 * hd)?;
        let gi = n.g.sigmoid(&format!("{p}.i"), &gi)?;
        let gf = n.g.sigmoid(&format!("{p}.f"), &gf)?;
        let gg = n.g.tanh(&format!("{p}.g"), &gg)?;
        let go = n.g.sigmoid(&format!("{p}.o"), &go)?;
        let c32 = n.up(&format!("{p}.cell_fp32"), cell)?;
        let fc = n.g.mul(&format!("{p}.f_c"), &gf, &c32)?;
        let ig = n.g.mul(&format!("{p}.i_g"), &gi, &gg)?;
        let new_c = n.g.add(&format!("{p}.cell_fp32_new"), &fc, &ig)?;
        let tc = n.g.tanh(&format!("{p}.tanh_cell"), &new_c)?;
        let new_h = n.g.mul(&format!("{p}.hidden_fp32_new"), &go, &tc)?;
        let new_c = n.down(&format!("{p}.cell_new"), &new_c)?;
        let new_h = n.down(&format!("{p}.hidden_new"), &new_h)?;
        let present_h = n.g.identity(&names::present(&state_names::hidden(l)), &new_h)?;
        let present_c = n.g.identity(&names::present(&state_names::cell(l)), &new_c)?;
        presents.push(present_h.clone());
        presents.push(present_c);
        input = present_h;
    }
    let h = input;
    let out = match &attention_inputs {
        Some((enc, mask)) => {
            let a = "decoder.attention";
            let ip = n.linear_weights(&format!("{a}.input_proj"), hidden, units, false)?;
            let q = n.apply(&format!("{a}.query"), &h, &ip)?;
            let q = n.g.unsqueeze(&format!("{a}.query_column"), &q, &[2])?;
            let scores = n.g.matmul(&format!("{a}.scores_column"), enc, &q)?;
            let scores = n.g.reshape(&format!("{a}.scores"), &scores, &[0, -1])?;
            let scores = n.up(&format!("{a}.scores_fp32"), &scores)?;
            let masked = n.g.scalar(&format!("{a}.masked"), DType::F32, MASKED_SCORE)?;
            let scores = n.g.where_(&format!("{a}.masked_scores"), mask, &masked, &scores)?;
            let probs = n.g.softmax(&format!("{a}.probs_fp32"), &scores, -1)?;
            let probs = n.down(&format!("{a}.probs"), &probs)?;
            let probs = n.g.unsqueeze(&format!("{a}.probs_row"), &probs, &[1])?;
            let ctx = n.g.matmul(&format!("{a}.context_row"), &probs, enc)?;
            let ctx = n.g.reshape(&format!("{a}.context"), &ctx, &[0, i(units)])?;
            let cat = n.g.concat(&format!("{a}.context_and_hidden"), &[&ctx, &h], 1)?;
            let op =
                n.linear_weights(&format!("{a}.output_proj"), units + hidden, hidden, false)?;
            let o = n.apply(&format!("{a}.output"), &cat, &op)?;
            let o = n.up(&format!("{a}.output_fp32"), &o)?;
            let o = n.g.tanh(&format!("{a}.output_tanh_fp32"), &o)?;
            n.down(&format!("{a}.output_tanh"), &o)?
        }
        None => h,
    };
    let feed_out = n.g.identity(&names::present(state_names::INPUT_FEED), &out)?;
    let mut features = feed_out.clone();
    if hidden != c.decoder_out_embed_dim {
        let fc =
            n.linear_weights("decoder.additional_fc", hidden, c.decoder_out_embed_dim, true)?;
        features = n.apply("decoder.additional_fc", &features, &fc)?;
    }
    let shape = (c.tgt_vocab_size, c.decoder_out_embed_dim);
    let logits = if c.shares_decoder_output() {
        n.projection("decoder.output_projection", &features, embedding, shape, None)?
    } else {
        let bias = Some("decoder.fc_out.bias");
        n.projection("decoder.fc_out", &features, "decoder.fc_out.weight", shape, bias)?
    };
    let logits = n.up("decoder.logits_fp32", &logits)?;
    let log_probs = n.g.log_softmax(names::LOG_PROBS, &logits, -1)?;
    n.output_log_probs(&log_probs)?;
    for p in &presents {
        n.g.output(p);
    }
    n.g.output(&feed_out);
    let metadata: Vec<(&str, &str)> =
        metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Ok(n.g.finish(&metadata))
}

impl Net<'_> {
    /// An `LSTMCell`'s `weight_ih` and `weight_hh` transposed for `MatMul`, and
    /// `bias_ih + bias_hh` as one bias (PyTorch's gate order kept).
    fn cell_weights(
        &mut self,
        prefix: &str,
        in_dim: usize,
        hidden: usize,
    ) -> Result<(Value, Value, Value)> {
        let wih = self.w.get(&format!("{prefix}.weight_ih"), &[4 * hidden, in_dim])?;
        let wih = transpose(wih, 4 * hidden, in_dim);
        let wih = self.g.initializer_float(
            &format!("{prefix}.weight_ih_t"),
            self.t,
            &[i(in_dim), i(4 * hidden)],
            &wih,
        )?;
        let whh = self.w.get(&format!("{prefix}.weight_hh"), &[4 * hidden, hidden])?;
        let whh = transpose(whh, 4 * hidden, hidden);
        let whh = self.g.initializer_float(
            &format!("{prefix}.weight_hh_t"),
            self.t,
            &[i(hidden), i(4 * hidden)],
            &whh,
        )?;
        let bih = self.w.get(&format!("{prefix}.bias_ih"), &[4 * hidden])?;
        let bhh = self.w.get(&format!("{prefix}.bias_hh"), &[4 * hidden])?;
        let bias: Vec<f32> = bih.iter().zip(bhh).map(|(a, b)| a + b).collect();
        let bias =
            self.g.initializer_float(&format!("{prefix}.bias"), self.t, &[i(4 * hidden)], &bias)?;
        Ok((wih, whh, bias))
    }
}

/// Checkpoint tensors the graphs do not read: the decoder's alias of a shared embedding and
/// the encoder's padding-value buffer, if any.
pub fn ignorable_tensor(c: &LstmConfig, name: &str) -> bool {
    (c.share_all_embeddings && name == "decoder.embed_tokens.weight")
        || (c.shares_decoder_output() && name == "decoder.fc_out.weight")
        || name.ends_with(".version")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_blocks_move_from_pytorch_to_onnx_order() {
        // Blocks i, f, g, o of one row each → i, o, f, g.
        let m = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(onnx_gate_order(&m, 1), [1.0, 4.0, 2.0, 3.0]);
    }
}
