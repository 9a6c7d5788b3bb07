//! The [`TransformerLm`] as a [`StepModel`], with the decoder-only convention of
//! [`crate::models::decoding`]: `start` takes the prompt and prefills the self-attention caches
//! (`self_key.{l}`, `self_value.{l}`, the names its exported step graph declares), leaving the
//! log-probabilities of the token after the prompt under [`state_names::PREFILL_LOG_PROBS`] for
//! the first `step` to return, and each row's prompt score under
//! [`state_names::PROMPT_SCORES`] for the decoder to take.

use tch::{Device, Tensor};

use super::model::{LmCache, TransformerLm};
use crate::models::Result;
use crate::models::decoding::{DecodingInfo, StepModel, TorchState};
use crate::models::transformer::KeyValue;

pub use seqforge_schemas::arch::transformer_lm::state_names;

impl LmCache {
    /// The cache as named tensors.
    pub fn into_state(self) -> TorchState {
        let mut state = TorchState::new();
        for (l, kv) in self.self_attn.into_iter().enumerate() {
            state.insert(state_names::self_key(l), kv.key);
            state.insert(state_names::self_value(l), kv.value);
        }
        state
    }

    /// Takes a `layers`-layer cache out of `state` (put it back with [`LmCache::into_state`]).
    pub fn from_state(state: &mut TorchState, layers: usize) -> Result<Self> {
        let self_attn = (0..layers)
            .map(|l| {
                Ok(KeyValue {
                    key: state.take(&state_names::self_key(l))?,
                    value: state.take(&state_names::self_value(l))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { self_attn })
    }
}

impl StepModel for TransformerLm {
    fn decoding_info(&self) -> DecodingInfo {
        let c = self.config();
        DecodingInfo {
            src_vocab_size: c.vocab_size,
            tgt_vocab_size: c.vocab_size,
            pad_index: c.pad_index,
            max_source_positions: c.max_positions(),
            max_target_positions: c.max_positions(),
        }
    }

    fn device(&self) -> Device {
        TransformerLm::device(self)
    }

    fn decoder_only(&self) -> bool {
        true
    }

    /// Prefills the caches with the prompt `tokens` (`[rows, len]`, EOS first, no padding).
    fn start(&self, tokens: &Tensor) -> Result<TorchState> {
        let (lprobs, cache) = self.prefill(tokens)?;
        let mut state = cache.into_state();
        // The prompt tokens' log-probabilities: position j predicts token j + 1 (an empty
        // prompt, `[eos]` alone, sums nothing: 0).
        let next = tokens.size().get(1).copied().unwrap_or(1).saturating_sub(1);
        let prompt_scores = lprobs
            .f_narrow(1, 0, next)?
            .f_gather(2, &tokens.f_narrow(1, 1, next)?.f_unsqueeze(2)?, false)?
            .f_squeeze_dim(2)?
            .f_sum_dim_intlist(1, false, tch::Kind::Float)?;
        state.insert(state_names::PROMPT_SCORES, prompt_scores);
        state.insert(state_names::PREFILL_LOG_PROBS, lprobs.f_select(1, -1)?);
        Ok(state)
    }

    /// Returns the prefilled log-probabilities on the first call (the fed tokens, EOS from the
    /// search, are then ignored); afterwards one incremental step at the cache's length.
    fn step(&self, prev_tokens: &Tensor, state: &mut TorchState) -> Result<Tensor> {
        if state.tensors().contains_key(state_names::PREFILL_LOG_PROBS) {
            return state.take(state_names::PREFILL_LOG_PROBS);
        }
        let step = state.step;
        let mut cache = LmCache::from_state(state, self.config().decoder_layers)?;
        let lprobs = self.decode_step(prev_tokens, &mut cache);
        *state = cache.into_state();
        state.step = step;
        lprobs
    }
}
