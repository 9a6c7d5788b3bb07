//! fairseq's `LSTMDecoder` and `AttentionLayer`: input feeding, stacked `LSTMCell`s, attention
//! over the encoder outputs, the optional projections and the output layer, one target
//! position at a time with its state passed explicitly.

use tch::{Kind, Tensor};

use super::encoder::EncoderOut;
use super::nn::{Linear, Scope, dropout, embed, embedding_weight, uniform};
use crate::models::{Error, Result};

/// Everything the decoder carries from one target position to the next, one row per
/// hypothesis (fairseq's `cached_state` plus the encoder output it attends to). Reordering
/// rows is one `index_select` on axis 0 of every tensor.
#[derive(Debug)]
pub struct DecoderState {
    /// Encoder outputs `[rows, src_len, encoder_output_units]` (right-padded); `None` for a
    /// decoder without attention, which never reads them.
    pub encoder_out: Option<Tensor>,
    /// `[rows, src_len]`, `true` at source padding; `None` without attention.
    pub encoder_padding_mask: Option<Tensor>,
    /// Per decoder layer, the hidden state `[rows, decoder_hidden_size]`.
    pub hidden: Vec<Tensor>,
    /// Per decoder layer, the cell state `[rows, decoder_hidden_size]`.
    pub cell: Vec<Tensor>,
    /// The previous position's output (attention context, or top hidden state without
    /// attention) fed back with the next token: `[rows, decoder_hidden_size]`, zeros at first.
    pub input_feed: Tensor,
}

impl DecoderState {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.input_feed.size().first().map_or(0, |&r| r as usize)
    }

    /// New row `i` becomes old row `index[i]` in every tensor (`index`: `Int64`; may repeat
    /// rows and be shorter: beam reordering and pruning are one operation).
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        let select = |t: &Tensor| t.f_index_select(0, index);
        for t in self.hidden.iter_mut().chain(self.cell.iter_mut()) {
            *t = select(t)?;
        }
        self.input_feed = select(&self.input_feed)?;
        if let Some(t) = &mut self.encoder_out {
            *t = select(t)?;
        }
        if let Some(t) = &mut self.encoder_padding_mask {
            *t = select(t)?;
        }
        Ok(())
    }
}

/// fairseq's `AttentionLayer` (bias-free projections, dot-product scores, softmax over the
/// source, `tanh(output_proj([context; input]))`).
struct Attention {
    input_proj: Linear,
    output_proj: Linear,
}

impl Attention {
    /// `input`: `[rows, hidden]`, `source`: `[rows, src_len, units]`, `padding_mask`:
    /// `[rows, src_len]` → `[rows, hidden]`.
    fn forward(&self, input: &Tensor, source: &Tensor, padding_mask: &Tensor) -> Result<Tensor> {
        let x = self.input_proj.forward(input)?;
        let scores = source.f_bmm(&x.f_unsqueeze(2)?)?.f_squeeze_dim(2)?;
        // fairseq: masked in fp32 and cast back (fp16 support).
        let kind = scores.kind();
        let scores = scores
            .f_to_kind(Kind::Float)?
            .f_masked_fill(padding_mask, f64::NEG_INFINITY)?
            .f_to_kind(kind)?;
        let weights = scores.f_softmax(1, kind)?;
        let context = weights.f_unsqueeze(1)?.f_bmm(source)?.f_squeeze_dim(1)?;
        Ok(self.output_proj.forward(&Tensor::f_cat(&[&context, input], 1)?)?.f_tanh()?)
    }
}

/// One `nn.LSTMCell`: `weight_ih [4H, in]`, `weight_hh [4H, H]`, `bias_ih`, `bias_hh` (gates
/// in PyTorch's order i, f, g, o).
struct Cell {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
}

impl Cell {
    fn new(scope: &Scope<'_, '_>, input: i64, hidden: i64) -> Result<Self> {
        Ok(Self {
            weight_ih: uniform(scope, "weight_ih", &[4 * hidden, input])?,
            weight_hh: uniform(scope, "weight_hh", &[4 * hidden, hidden])?,
            bias_ih: uniform(scope, "bias_ih", &[4 * hidden])?,
            bias_hh: uniform(scope, "bias_hh", &[4 * hidden])?,
        })
    }

    /// `(hidden, cell)` after one step (libtorch's `lstm_cell`, which `nn.LSTMCell` calls).
    fn forward(&self, input: &Tensor, hidden: &Tensor, cell: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(input.f_lstm_cell(
            &[hidden, cell],
            &self.weight_ih,
            &self.weight_hh,
            Some(&self.bias_ih),
            Some(&self.bias_hh),
        )?)
    }
}

/// Settings of the decoder, from the config.
pub(super) struct DecoderSpec {
    pub(super) vocab: i64,
    pub(super) embed_dim: i64,
    pub(super) hidden: i64,
    pub(super) out_embed_dim: i64,
    pub(super) layers: i64,
    pub(super) attention: bool,
    pub(super) encoder_output_units: i64,
    pub(super) dropout_in: f64,
    pub(super) dropout_out: f64,
    pub(super) share_input_output_embed: bool,
    pub(super) pad: i64,
}

/// fairseq's `LSTMDecoder` (no adaptive softmax, no residuals: what `LSTMModel` builds).
pub(super) struct Decoder {
    embed_tokens: Tensor,
    encoder_hidden_proj: Option<Linear>,
    encoder_cell_proj: Option<Linear>,
    layers: Vec<Cell>,
    attention: Option<Attention>,
    additional_fc: Option<Linear>,
    /// `fc_out`, or `None` when the output layer is `embed_tokens` (shared).
    fc_out: Option<Linear>,
    hidden: i64,
    dropout_in: f64,
    dropout_out: f64,
    pad: i64,
}

impl Decoder {
    /// Creates `decoder.*` under `scope`, in fairseq's order; `shared_embed` is the
    /// encoder's embedding when all embeddings are shared (recorded as an alias).
    pub(super) fn new(
        scope: &Scope<'_, '_>,
        spec: &DecoderSpec,
        shared_embed: Option<(&Tensor, &str)>,
    ) -> Result<Self> {
        let embed_tokens = match shared_embed {
            Some((weight, canonical)) => {
                scope.sub("embed_tokens").alias("weight", canonical);
                weight.shallow_clone()
            }
            None => {
                embedding_weight(&scope.sub("embed_tokens"), spec.vocab, spec.embed_dim, spec.pad)?
            }
        };
        let (units, hidden) = (spec.encoder_output_units, spec.hidden);
        let (encoder_hidden_proj, encoder_cell_proj) = if units != hidden {
            (
                Some(Linear::new(&scope.sub("encoder_hidden_proj"), units, hidden, true)?),
                Some(Linear::new(&scope.sub("encoder_cell_proj"), units, hidden, true)?),
            )
        } else {
            (None, None)
        };
        let cells = scope.sub("layers");
        let layers = (0..spec.layers)
            .map(|l| {
                let input = if l == 0 { hidden + spec.embed_dim } else { hidden };
                Cell::new(&cells.sub(l), input, hidden)
            })
            .collect::<Result<Vec<_>>>()?;
        let attention = if spec.attention {
            let a = scope.sub("attention");
            Some(Attention {
                input_proj: Linear::new(&a.sub("input_proj"), hidden, units, false)?,
                output_proj: Linear::new(&a.sub("output_proj"), hidden + units, hidden, false)?,
            })
        } else {
            None
        };
        let additional_fc = if hidden != spec.out_embed_dim {
            Some(Linear::new(&scope.sub("additional_fc"), hidden, spec.out_embed_dim, true)?)
        } else {
            None
        };
        let fc_out = if spec.share_input_output_embed {
            None
        } else {
            Some(Linear::new(&scope.sub("fc_out"), spec.out_embed_dim, spec.vocab, true)?)
        };
        Ok(Self {
            embed_tokens,
            encoder_hidden_proj,
            encoder_cell_proj,
            layers,
            attention,
            additional_fc,
            fc_out,
            hidden,
            dropout_in: spec.dropout_in,
            dropout_out: spec.dropout_out,
            pad: spec.pad,
        })
    }

    /// Whether the decoder attends over the encoder outputs.
    pub(super) fn has_attention(&self) -> bool {
        self.attention.is_some()
    }

    /// Number of layers.
    pub(super) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The state before the first target token: each layer starts from the encoder's final
    /// states of the same layer (through `encoder_{hidden,cell}_proj` when the widths differ),
    /// the input feed from zeros.
    pub(super) fn init_state(&self, encoder_out: &EncoderOut) -> Result<DecoderState> {
        let layers = self.layers.len() as i64;
        let available = encoder_out.final_hiddens.size().first().copied().unwrap_or(0);
        if available < layers {
            return Err(Error::Input(format!(
                "the decoder has {layers} layers but the encoder output only {available}"
            )));
        }
        let project = |states: &Tensor, proj: &Option<Linear>| -> Result<Vec<Tensor>> {
            (0..layers)
                .map(|l| {
                    let s = states.f_select(0, l)?;
                    match proj {
                        Some(p) => p.forward(&s),
                        None => Ok(s),
                    }
                })
                .collect()
        };
        let hidden = project(&encoder_out.final_hiddens, &self.encoder_hidden_proj)?;
        let cell = project(&encoder_out.final_cells, &self.encoder_cell_proj)?;
        let rows = encoder_out.out.size().first().copied().unwrap_or(0);
        let input_feed = Tensor::f_zeros(
            [rows, self.hidden],
            (encoder_out.out.kind(), encoder_out.out.device()),
        )?;
        let (encoder_out, encoder_padding_mask) = if self.has_attention() {
            (
                Some(encoder_out.out.shallow_clone()),
                Some(encoder_out.padding_mask.f_to_kind(Kind::Bool)?),
            )
        } else {
            (None, None)
        };
        Ok(DecoderState { encoder_out, encoder_padding_mask, hidden, cell, input_feed })
    }

    /// Embeds target tokens (`[rows, len]` → `[rows, len, embed_dim]`) with `dropout_in`.
    pub(super) fn embed(&self, tokens: &Tensor, train: bool) -> Result<Tensor> {
        dropout(embed(&self.embed_tokens, tokens, self.pad)?, self.dropout_in, train)
    }

    /// One target position: `x` (`[rows, embed_dim]`, embedded) → the position's output
    /// `[rows, hidden]` (after `dropout_out`), advancing `state` (fairseq's loop body of
    /// `extract_features`).
    pub(super) fn step(&self, x: &Tensor, state: &mut DecoderState, train: bool) -> Result<Tensor> {
        if state.hidden.len() != self.layers.len() || state.cell.len() != self.layers.len() {
            return Err(Error::Input(format!(
                "the decoder state has {} hidden and {} cell states for {} layers",
                state.hidden.len(),
                state.cell.len(),
                self.layers.len()
            )));
        }
        let mut input = Tensor::f_cat(&[x, &state.input_feed], 1)?;
        let mut top = None;
        for (l, cell) in self.layers.iter().enumerate() {
            let (h, c) = cell.forward(&input, &state.hidden[l], &state.cell[l])?;
            input = dropout(h.shallow_clone(), self.dropout_out, train)?;
            state.cell[l] = c;
            top = Some(h.shallow_clone());
            state.hidden[l] = h;
        }
        let top = top.ok_or_else(|| Error::Config("the decoder has no layers".into()))?;
        let out = match (&self.attention, &state.encoder_out, &state.encoder_padding_mask) {
            (Some(attention), Some(source), Some(mask)) => attention.forward(&top, source, mask)?,
            (Some(_), _, _) => {
                return Err(Error::Input(
                    "the decoder state has no encoder output to attend to".into(),
                ));
            }
            (None, _, _) => top,
        };
        let out = dropout(out, self.dropout_out, train)?;
        state.input_feed = out.shallow_clone();
        Ok(out)
    }

    /// Outputs of [`Decoder::step`] (`[..., hidden]`) → logits `[..., vocab]`: `additional_fc`
    /// and dropout when present, then `fc_out` or the shared embedding.
    pub(super) fn output_layer(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let x = match &self.additional_fc {
            Some(fc) => dropout(fc.forward(x)?, self.dropout_out, train)?,
            None => x.shallow_clone(),
        };
        match &self.fc_out {
            Some(fc) => fc.forward(&x),
            None => Ok(x.f_linear(&self.embed_tokens, None::<&Tensor>)?),
        }
    }
}
