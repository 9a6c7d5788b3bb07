//! The [`Lstm`] as a [`StepModel`]: its [`DecoderState`] laid out as a [`TorchState`] under
//! the names its exported step graph declares (`encoder_out`, `encoder_padding_mask`,
//! `hidden.{L}`, `cell.{L}`, `input_feed`), so search, `--eval-bleu` and the export check
//! drive it like any family.

use tch::{Device, Tensor};

use super::decoder::DecoderState;
use super::model::Lstm;
use crate::models::Result;
use crate::models::decoding::{DecodingInfo, StepModel, TorchState};

pub use seqforge_schemas::arch::lstm::state_names;

impl DecoderState {
    /// The state as named tensors (see [`state_names`]), at step `step`.
    pub fn into_torch_state(self, step: usize) -> TorchState {
        let mut state = TorchState::new();
        state.step = step;
        if let Some(t) = self.encoder_out {
            state.insert(state_names::ENCODER_OUT, t);
        }
        if let Some(t) = self.encoder_padding_mask {
            state.insert(state_names::ENCODER_PADDING_MASK, t);
        }
        for (l, (h, c)) in self.hidden.into_iter().zip(self.cell).enumerate() {
            state.insert(state_names::hidden(l), h);
            state.insert(state_names::cell(l), c);
        }
        state.insert(state_names::INPUT_FEED, self.input_feed);
        state
    }

    /// Takes the state of a `layers`-layer decoder (with or without `attention`) back out of
    /// `state` (put it back with [`DecoderState::into_torch_state`]).
    pub fn from_torch_state(
        state: &mut TorchState,
        layers: usize,
        attention: bool,
    ) -> Result<Self> {
        let (encoder_out, encoder_padding_mask) = if attention {
            (
                Some(state.take(state_names::ENCODER_OUT)?),
                Some(state.take(state_names::ENCODER_PADDING_MASK)?),
            )
        } else {
            (None, None)
        };
        let hidden =
            (0..layers).map(|l| state.take(&state_names::hidden(l))).collect::<Result<_>>()?;
        let cell = (0..layers).map(|l| state.take(&state_names::cell(l))).collect::<Result<_>>()?;
        let input_feed = state.take(state_names::INPUT_FEED)?;
        Ok(Self { encoder_out, encoder_padding_mask, hidden, cell, input_feed })
    }
}

impl StepModel for Lstm {
    fn decoding_info(&self) -> DecodingInfo {
        let c = self.config();
        DecodingInfo {
            src_vocab_size: c.src_vocab_size,
            tgt_vocab_size: c.tgt_vocab_size,
            pad_index: c.pad_index,
            max_source_positions: c.max_source_positions,
            max_target_positions: c.max_target_positions,
        }
    }

    fn device(&self) -> Device {
        Lstm::device(self)
    }

    fn start(&self, src_tokens: &Tensor) -> Result<TorchState> {
        let encoded = self.encode(src_tokens, false)?;
        Ok(self.init_state(&encoded)?.into_torch_state(0))
    }

    fn step(&self, prev_tokens: &Tensor, state: &mut TorchState) -> Result<Tensor> {
        let mut decoder_state =
            DecoderState::from_torch_state(state, self.decoder_layers(), self.has_attention())?;
        // The tensors go back into `state` even when the step fails (the search then discards
        // it); a missing tensor fails above, before anything is updated.
        let logits = self.decode_step(prev_tokens, &mut decoder_state);
        let step = state.step;
        *state = decoder_state.into_torch_state(step);
        self.get_normalized_probs(&logits?, true)
    }
}
