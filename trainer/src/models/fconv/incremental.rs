//! The [`FConv`] as a [`StepModel`]: its [`DecoderState`] laid out as a [`TorchState`] under
//! the names its exported step graph declares (`encoder_a`, `encoder_b`,
//! `encoder_padding_mask`, `conv_window.{L}`), so search, `--eval-bleu` and the export check
//! drive it like any family.

use tch::{Device, Tensor};

use super::decoder::DecoderState;
use super::model::FConv;
use crate::models::Result;
use crate::models::decoding::{DecodingInfo, StepModel, TorchState};

pub use seqforge_schemas::arch::fconv::state_names;

impl DecoderState {
    /// The state as named tensors (see [`state_names`]), at step `step`.
    pub fn into_torch_state(self, step: usize) -> TorchState {
        let mut state = TorchState::new();
        state.step = step;
        state.insert(state_names::ENCODER_A, self.encoder_a);
        state.insert(state_names::ENCODER_B, self.encoder_b);
        state.insert(state_names::ENCODER_PADDING_MASK, self.encoder_padding_mask);
        for (l, w) in self.windows.into_iter().enumerate() {
            if let Some(w) = w {
                state.insert(state_names::window(l), w);
            }
        }
        state
    }

    /// Takes the state of a decoder whose layer `l` has a window when `has_window[l]` back out
    /// of `state` (put it back with [`DecoderState::into_torch_state`]).
    pub fn from_torch_state(state: &mut TorchState, has_window: &[bool]) -> Result<Self> {
        let encoder_a = state.take(state_names::ENCODER_A)?;
        let encoder_b = state.take(state_names::ENCODER_B)?;
        let encoder_padding_mask = state.take(state_names::ENCODER_PADDING_MASK)?;
        let windows = has_window
            .iter()
            .enumerate()
            .map(
                |(l, &has)| {
                    if has { state.take(&state_names::window(l)).map(Some) } else { Ok(None) }
                },
            )
            .collect::<Result<_>>()?;
        Ok(Self { encoder_a, encoder_b, encoder_padding_mask, windows })
    }
}

impl StepModel for FConv {
    fn decoding_info(&self) -> DecodingInfo {
        let c = self.config();
        DecodingInfo {
            src_vocab_size: c.src_vocab_size,
            tgt_vocab_size: c.tgt_vocab_size,
            pad_index: c.pad_index,
            max_source_positions: c.max_source_len(),
            max_target_positions: c.max_target_len(),
        }
    }

    fn device(&self) -> Device {
        FConv::device(self)
    }

    fn start(&self, src_tokens: &Tensor) -> Result<TorchState> {
        let encoded = self.encode(src_tokens, false)?;
        Ok(self.init_state(&encoded)?.into_torch_state(0))
    }

    fn step(&self, prev_tokens: &Tensor, state: &mut TorchState) -> Result<Tensor> {
        let has_window = self.window_layers();
        let mut decoder_state = DecoderState::from_torch_state(state, &has_window)?;
        // The tensors go back into `state` even when the step fails (the search then discards
        // it); a missing tensor fails above, before anything is updated.
        let step = state.step;
        let logits = self.decode_step(prev_tokens, step, &mut decoder_state);
        *state = decoder_state.into_torch_state(step);
        self.get_normalized_probs(&logits?, true)
    }
}

impl FConv {
    /// Per decoder layer, whether it carries a convolution window (kernel width > 1).
    pub fn window_layers(&self) -> Vec<bool> {
        self.config()
            .decoder_convolutions()
            .map(|layers| layers.iter().map(|l| l.kernel_size > 1).collect())
            .unwrap_or_default()
    }
}
