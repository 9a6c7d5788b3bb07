//! fairseq's `LSTMEncoder`: embeddings, a (bidirectional) multi-layer `nn.LSTM` over the
//! packed, right-padded sources, and the final states the decoder starts from.

use tch::{Device, Kind, Tensor};

use super::nn::{Scope, dropout, embed, embedding_weight, tokens_2d, uniform};
use crate::models::{Error, Result};

/// The encoder's output for a batch of sources, batch-first.
///
/// As in fairseq, the sources are right-padded here whatever their padding on input: row `b`'s
/// real tokens are positions `0..len_b`, and `out` holds `pad_index` (as a float) at padding.
#[derive(Debug)]
pub struct EncoderOut {
    /// Top-layer outputs `[batch, src_len, encoder_output_units]` (both directions
    /// concatenated when bidirectional), after `dropout_out`.
    pub out: Tensor,
    /// Final hidden states per layer `[layers, batch, encoder_output_units]` (directions
    /// concatenated: fairseq's `combine_bidir`).
    pub final_hiddens: Tensor,
    /// Final cell states, laid out as `final_hiddens`.
    pub final_cells: Tensor,
    /// `[batch, src_len]`, `true` at (right) padding.
    pub padding_mask: Tensor,
}

/// fairseq's `LSTMEncoder`.
pub(super) struct Encoder {
    /// `[src_vocab, embed_dim]`; the decoder's too with `share_all_embeddings`.
    pub(super) embed_tokens: Tensor,
    /// `nn.LSTM`'s weights in its order: per layer, per direction `w_ih, w_hh, b_ih, b_hh`.
    lstm_params: Vec<Tensor>,
    layers: i64,
    hidden: i64,
    bidirectional: bool,
    dropout_in: f64,
    dropout_out: f64,
    pad: i64,
    device: Device,
}

/// Names of `nn.LSTM`'s parameters of layer `l` in direction `reverse`, in its order.
fn lstm_param_names(l: i64, reverse: bool) -> [String; 4] {
    let suffix = if reverse { "_reverse" } else { "" };
    ["weight_ih", "weight_hh", "bias_ih", "bias_hh"].map(|w| format!("{w}_l{l}{suffix}"))
}

/// Settings of the encoder, from the config.
pub(super) struct EncoderSpec {
    pub(super) vocab: i64,
    pub(super) embed_dim: i64,
    pub(super) hidden: i64,
    pub(super) layers: i64,
    pub(super) bidirectional: bool,
    pub(super) dropout_in: f64,
    pub(super) dropout_out: f64,
    pub(super) pad: i64,
}

impl Encoder {
    /// Creates `encoder.embed_tokens.weight` and `encoder.lstm.*` under `scope`.
    pub(super) fn new(scope: &Scope<'_, '_>, spec: &EncoderSpec, device: Device) -> Result<Self> {
        let embed_tokens =
            embedding_weight(&scope.sub("embed_tokens"), spec.vocab, spec.embed_dim, spec.pad)?;
        let lstm = scope.sub("lstm");
        let directions: &[bool] = if spec.bidirectional { &[false, true] } else { &[false] };
        let mut lstm_params = Vec::new();
        for l in 0..spec.layers {
            let input = if l == 0 { spec.embed_dim } else { spec.hidden * directions.len() as i64 };
            for &reverse in directions {
                let [w_ih, w_hh, b_ih, b_hh] = lstm_param_names(l, reverse);
                lstm_params.push(uniform(&lstm, &w_ih, &[4 * spec.hidden, input])?);
                lstm_params.push(uniform(&lstm, &w_hh, &[4 * spec.hidden, spec.hidden])?);
                lstm_params.push(uniform(&lstm, &b_ih, &[4 * spec.hidden])?);
                lstm_params.push(uniform(&lstm, &b_hh, &[4 * spec.hidden])?);
            }
        }
        Ok(Self {
            embed_tokens,
            lstm_params,
            layers: spec.layers,
            hidden: spec.hidden,
            bidirectional: spec.bidirectional,
            dropout_in: spec.dropout_in,
            dropout_out: spec.dropout_out,
            pad: spec.pad,
            device,
        })
    }

    fn directions(&self) -> i64 {
        if self.bidirectional { 2 } else { 1 }
    }

    /// fairseq's `LSTMEncoder.forward` on `src_tokens` (`[batch, src_len]`, left-padded as
    /// fairseq batches them; right-padded sources are taken as they are).
    ///
    /// Like fairseq, the sources are moved to right padding, sorted by length, packed and run
    /// through libtorch's LSTM (the kernel `nn.LSTM` calls, with its dropout between layers in
    /// training), so padding never reaches the recurrence; outputs are unpacked with
    /// `pad_index` as the padding value.
    pub(super) fn forward(&self, src_tokens: &Tensor, train: bool) -> Result<EncoderOut> {
        let tokens = tokens_2d(src_tokens, self.device, "src_tokens")?;
        let (batch, len) = (tokens.size()[0], tokens.size()[1]);
        let kind = self.embed_tokens.kind();
        let units = self.hidden * self.directions();
        if batch == 0 || len == 0 {
            let (layers, opts) = (self.layers, (kind, self.device));
            return Ok(EncoderOut {
                out: Tensor::f_zeros([batch, len, units], opts)?,
                final_hiddens: Tensor::f_zeros([layers, batch, units], opts)?,
                final_cells: Tensor::f_zeros([layers, batch, units], opts)?,
                padding_mask: Tensor::f_zeros([batch, len], (Kind::Bool, self.device))?,
            });
        }
        let pad_mask = tokens.f_eq(self.pad)?;
        let num_pads = pad_mask.f_sum_dim_intlist(1, false, Kind::Int64)?;
        let lengths = num_pads.f_neg()?.f_add_scalar(len)?;
        if lengths.f_min()?.f_int64_value(&[])? < 1 {
            return Err(Error::Input("a source is only padding (expected at least EOS)".into()));
        }
        // fairseq's `convert_padding_direction(left_to_right=True)`: a no-op unless some row
        // starts with padding.
        let left_padded = pad_mask.f_select(1, 0)?.f_any()?.f_int64_value(&[])? != 0;
        let tokens = if left_padded {
            let index = Tensor::f_arange(len, (Kind::Int64, self.device))?
                .f_unsqueeze(0)?
                .f_add(&num_pads.f_unsqueeze(1)?)?
                .f_remainder(len)?;
            tokens.f_gather(1, &index, false)?
        } else {
            tokens
        };
        let x = embed(&self.embed_tokens, &tokens, self.pad)?;
        let x = dropout(x, self.dropout_in, train)?.f_transpose(0, 1)?; // [len, batch, dim]

        // Pack: sort by decreasing length (fairseq's batches already are), then unsort.
        let (sorted_lengths, order) = lengths.f_sort(0, true)?;
        let unorder = order.f_argsort(0, false)?;
        let x = x.f_index_select(1, &order)?;
        let (data, batch_sizes) =
            x.f_internal_pack_padded_sequence(&sorted_lengths.f_to_device(Device::Cpu)?, false)?;
        let state = Tensor::f_zeros(
            [self.layers * self.directions(), batch, self.hidden],
            (kind, self.device),
        )?;
        let between_layers = if self.layers > 1 { self.dropout_out } else { 0.0 };
        let (out, hiddens, cells) = Tensor::f_lstm_data(
            &data,
            &batch_sizes,
            &[state.shallow_clone(), state],
            &self.lstm_params,
            true,
            self.layers,
            between_layers,
            train,
            self.bidirectional,
        )?;
        let (out, _) = Tensor::f_internal_pad_packed_sequence(
            &out,
            &batch_sizes,
            false,
            self.pad as f64,
            len,
        )?;
        let out = out.f_index_select(1, &unorder)?;
        let out = dropout(out, self.dropout_out, train)?.f_transpose(0, 1)?;
        let hiddens = self.combine_bidir(&hiddens.f_index_select(1, &unorder)?, batch)?;
        let cells = self.combine_bidir(&cells.f_index_select(1, &unorder)?, batch)?;
        Ok(EncoderOut {
            out,
            final_hiddens: hiddens,
            final_cells: cells,
            padding_mask: tokens.f_eq(self.pad)?,
        })
    }

    /// `[layers × directions, batch, hidden]` → `[layers, batch, directions × hidden]`, the
    /// forward direction first (fairseq's `combine_bidir`).
    fn combine_bidir(&self, states: &Tensor, batch: i64) -> Result<Tensor> {
        if !self.bidirectional {
            return Ok(states.shallow_clone());
        }
        Ok(states
            .f_view([self.layers, 2, batch, self.hidden])?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([self.layers, batch, 2 * self.hidden])?)
    }
}
