//! [`TorchDecoder`]: the libtorch [`Transformer`] behind the runtime's
//! [`IncrementalDecoder`] contract, so that validation decoding in the trainer runs the same
//! search code as deployment.

use seqforge_runtime::decoding::{IncrementalDecoder, LogProbs, SpecialTokens};
use tch::{Kind, Tensor};

use super::model::{DecoderCache, EncoderOut, Transformer};
use crate::models::{Error, Result};

/// Incremental decoding with a [`Transformer`] in eval mode (no dropout, no gradients).
///
/// `Encoded` is the encoder output of one call to `encode` (sources left-padded into one
/// batch); `State` is the explicit [`DecoderCache`].
#[derive(Debug)]
pub struct TorchDecoder<'m> {
    model: &'m Transformer,
    special: SpecialTokens,
}

impl<'m> TorchDecoder<'m> {
    /// Decodes with `model`; special tokens are fairseq's defaults with the model's
    /// `pad_index`.
    pub fn new(model: &'m Transformer) -> Self {
        let pad = u32::try_from(model.config().pad_index).unwrap_or(u32::MAX);
        Self { model, special: SpecialTokens { pad, ..SpecialTokens::default() } }
    }

    /// Uses other special token ids (the padding id must stay the model's `pad_index`).
    pub fn with_special_tokens(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// The model.
    pub fn model(&self) -> &'m Transformer {
        self.model
    }

    fn index_tensor(&self, order: &[usize]) -> Result<Tensor> {
        let index = order
            .iter()
            .map(|&i| {
                i64::try_from(i).map_err(|_| Error::Input(format!("row index {i} is too large")))
            })
            .collect::<Result<Vec<i64>>>()?;
        Ok(Tensor::f_from_slice(&index)?.f_to_device(self.model.device())?)
    }
}

fn check_ids(ids: &[u32], vocab: usize, what: &str) -> Result<()> {
    match ids.iter().find(|&&id| id as usize >= vocab) {
        Some(id) => {
            Err(Error::Input(format!("{what}: token id {id} is outside the vocabulary of {vocab}")))
        }
        None => Ok(()),
    }
}

impl IncrementalDecoder for TorchDecoder<'_> {
    type Encoded = EncoderOut;
    type State = DecoderCache;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.model.config().tgt_vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn max_target_positions(&self) -> usize {
        self.model.config().max_target_positions
    }

    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<EncoderOut> {
        let config = self.model.config();
        let max_len = sources.iter().map(Vec::len).max().unwrap_or(0);
        for (i, source) in sources.iter().enumerate() {
            if source.is_empty() {
                return Err(Error::Input(format!(
                    "source {i} is empty (expected at least the EOS token)"
                )));
            }
            check_ids(source, config.src_vocab_size, &format!("source {i}"))?;
        }
        if max_len > config.max_source_positions {
            return Err(Error::Input(format!(
                "a source of {max_len} tokens is longer than max_source_positions ({})",
                config.max_source_positions
            )));
        }
        // fairseq's default: left-pad the sources.
        let pad = config.pad_index as i64;
        let mut batch = Vec::with_capacity(sources.len() * max_len);
        for source in sources {
            batch.extend(std::iter::repeat_n(pad, max_len - source.len()));
            batch.extend(source.iter().map(|&t| i64::from(t)));
        }
        let tokens =
            Tensor::f_from_slice(&batch)?.f_reshape([sources.len() as i64, max_len as i64])?;
        let _guard = tch::no_grad_guard();
        self.model.encode(&tokens, false)
    }

    fn init_state(
        &mut self,
        encoded: &EncoderOut,
        rows_per_sentence: usize,
    ) -> Result<DecoderCache> {
        let _guard = tch::no_grad_guard();
        let mut cache = self.model.init_cache(encoded)?;
        let order: Vec<usize> = (0..encoded.batch_size())
            .flat_map(|s| std::iter::repeat_n(s, rows_per_sentence))
            .collect();
        cache.reorder(&self.index_tensor(&order)?)?;
        Ok(cache)
    }

    fn step(&mut self, tokens: &[u32], state: &mut DecoderCache) -> Result<LogProbs> {
        let rows = state.rows();
        if tokens.len() != rows {
            return Err(Error::Input(format!("step got {} tokens for {rows} rows", tokens.len())));
        }
        check_ids(tokens, self.vocab_size(), "step")?;
        if state.step >= self.max_target_positions() {
            return Err(Error::Input(format!(
                "cannot decode past max_target_positions ({})",
                self.max_target_positions()
            )));
        }
        let ids: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let tokens = Tensor::f_from_slice(&ids)?.f_to_device(self.model.device())?;
        let _guard = tch::no_grad_guard();
        let logits = self.model.decode_step(&tokens, state)?;
        let lprobs = self
            .model
            .get_normalized_probs(&logits, true)?
            .f_to_device(tch::Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let vocab = self.vocab_size();
        let mut data = vec![0f32; rows * vocab];
        lprobs.f_copy_data(&mut data, rows * vocab)?;
        Ok(LogProbs { rows, vocab, data })
    }

    fn reorder(&mut self, state: &mut DecoderCache, order: &[usize]) -> Result<()> {
        let rows = state.rows();
        if let Some(&bad) = order.iter().find(|&&i| i >= rows) {
            return Err(Error::Input(format!("reorder: row {bad} does not exist ({rows} rows)")));
        }
        let _guard = tch::no_grad_guard();
        state.reorder(&self.index_tensor(order)?)
    }

    fn rows(&self, state: &DecoderCache) -> usize {
        state.rows()
    }
}
