//! The [`Transformer`] as a [`StepModel`]: its [`DecoderCache`] laid out as a [`TorchState`]
//! under the names its exported step graph declares (`encoder_padding_mask`,
//! `cross_{key,value}.{L}`, `self_{key,value}.{L}`), so search, `--eval-bleu` and the export
//! check drive it like any family.

use tch::{Device, Tensor};

use super::model::{DecoderCache, KeyValue, Transformer};
use crate::models::Result;
use crate::models::decoding::{DecodingInfo, StepModel, TorchState};

pub use seqforge_schemas::arch::transformer::state_names;

impl DecoderCache {
    /// The cache as named tensors.
    pub fn into_state(self) -> TorchState {
        let mut state = TorchState::new();
        state.step = self.step;
        state.insert(state_names::ENCODER_PADDING_MASK, self.encoder_padding_mask);
        for (l, kv) in self.self_attn.into_iter().enumerate() {
            state.insert(state_names::self_key(l), kv.key);
            state.insert(state_names::self_value(l), kv.value);
        }
        for (l, kv) in self.cross_attn.into_iter().enumerate() {
            state.insert(state_names::cross_key(l), kv.key);
            state.insert(state_names::cross_value(l), kv.value);
        }
        state
    }

    /// Takes a `layers`-layer cache back out of `state` (put it back with
    /// [`DecoderCache::into_state`]).
    pub fn from_state(state: &mut TorchState, layers: usize) -> Result<Self> {
        let mut take_kv = |k: String, v: String| -> Result<KeyValue> {
            Ok(KeyValue { key: state.take(&k)?, value: state.take(&v)? })
        };
        let self_attn = (0..layers)
            .map(|l| take_kv(state_names::self_key(l), state_names::self_value(l)))
            .collect::<Result<Vec<_>>>()?;
        let cross_attn = (0..layers)
            .map(|l| take_kv(state_names::cross_key(l), state_names::cross_value(l)))
            .collect::<Result<Vec<_>>>()?;
        let encoder_padding_mask = state.take(state_names::ENCODER_PADDING_MASK)?;
        Ok(Self { self_attn, cross_attn, encoder_padding_mask, step: state.step })
    }
}

impl StepModel for Transformer {
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
        Transformer::device(self)
    }

    fn start(&self, src_tokens: &Tensor) -> Result<TorchState> {
        let encoded = self.encode(src_tokens, false)?;
        Ok(self.init_cache(&encoded)?.into_state())
    }

    fn step(&self, prev_tokens: &Tensor, state: &mut TorchState) -> Result<Tensor> {
        let mut cache = DecoderCache::from_state(state, self.config().decoder_layers)?;
        let logits = self.decode_step(prev_tokens, &mut cache);
        let step = state.step;
        *state = cache.into_state();
        state.step = step;
        self.get_normalized_probs(&logits?, true)
    }
}
