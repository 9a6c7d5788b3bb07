//! Incremental decoding on libtorch for every model family: the state as declared data (a
//! name → tensor map, one row per live hypothesis on axis 0), the [`StepModel`] trait a family
//! implements, and [`TorchDecoder`], the runtime's [`IncrementalDecoder`] on top of it.
//!
//! The trainer's validation decoding (`--eval-bleu`), its benches and the export check drive a
//! model only through [`TorchDecoder`], so a new family needs no edit there: it implements
//! [`StepModel`] and returns itself from [`Model::step_model`](crate::train::model::Model::step_model).
//! As in fairseq, every state tensor is reordered with its row (`index_select` on axis 0);
//! the state's names are the family's own (by convention those its exported step graph
//! declares, so the two can be compared tensor by tensor).

use std::collections::BTreeMap;

use seqforge_runtime::decoding::{
    IncrementalDecoder, LogProbs, SpecialTokens, lm_input, lm_positions_left,
};
use seqforge_schemas::arch::transformer_lm::state_names::PROMPT_SCORES;
use tch::{Device, Kind, Tensor};

use crate::models::{Error, Result};

/// A decoding state: named tensors whose axis 0 is the row (live hypothesis), plus the number
/// of target tokens fed so far.
#[derive(Debug, Default)]
pub struct TorchState {
    tensors: BTreeMap<String, Tensor>,
    /// Target tokens fed so far (the next token's index in the target).
    pub step: usize,
}

impl TorchState {
    /// An empty state at step 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces tensor `name` (axis 0 must be the row).
    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.tensors.insert(name.into(), tensor);
    }

    /// Tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| missing(name))
    }

    /// Removes and returns tensor `name` (to be put back with [`TorchState::insert`]).
    pub fn take(&mut self, name: &str) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| missing(name))
    }

    /// The tensors by name.
    pub fn tensors(&self) -> &BTreeMap<String, Tensor> {
        &self.tensors
    }

    /// Number of rows (axis 0 of the tensors; 0 for an empty state).
    pub fn rows(&self) -> usize {
        self.tensors.values().next().and_then(|t| t.size().first().copied()).unwrap_or(0) as usize
    }

    /// New row `i` becomes old row `index[i]` in every tensor (`index`: `Int64`; may repeat
    /// rows and be shorter: beam reordering, expansion and pruning are one operation).
    pub fn reorder(&mut self, index: &Tensor) -> Result<()> {
        for t in self.tensors.values_mut() {
            *t = t.f_index_select(0, index)?;
        }
        Ok(())
    }
}

fn missing(name: &str) -> Error {
    Error::Input(format!("the decoder state has no tensor `{name}`"))
}

/// The sizes and ids a decoder needs from its model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodingInfo {
    /// Source dictionary size.
    pub src_vocab_size: usize,
    /// Target dictionary size.
    pub tgt_vocab_size: usize,
    /// Padding index (both dictionaries).
    pub pad_index: usize,
    /// Longest source in tokens (EOS included).
    pub max_source_positions: usize,
    /// Longest target in tokens.
    pub max_target_positions: usize,
}

/// A model that decodes one target token at a time with explicit state: what a family
/// implements so that search, `--eval-bleu` and the export check can drive it.
///
/// Both methods run in eval mode (no dropout); callers hold a `no_grad` guard.
///
/// **Decoder-only models** (language models, e.g.
/// [`TransformerLm`](crate::models::transformer_lm::TransformerLm)) follow this convention:
/// `start` receives the *prompt* as the model's input (`Int64 [batch, len]`, `len ≥ 1`, EOS
/// first as fairseq's LM generation starts, no padding), runs the decoder over all its
/// positions at once ("prefill"), fills the caches with them and stores the fp32
/// log-probabilities `[batch, vocab]` of the token after the prompt in the state under
/// `prefill.log_probs`. `step` first looks for `prefill.log_probs`: when present it removes it
/// from the state and returns it, ignoring the fed tokens (the search feeds EOS at its step 0);
/// otherwise it feeds the tokens at position = the current cache length. Rows are reordered as
/// usual in between (`prefill.log_probs` is a per-row tensor like the others).
pub trait StepModel {
    /// Sizes and ids.
    fn decoding_info(&self) -> DecodingInfo;

    /// Where the model's tensors live.
    fn device(&self) -> Device;

    /// Encodes `src_tokens` (`Int64 [batch, src_len]`, left-padded with `pad_index` as fairseq
    /// batches them) into a fresh state with one row per sentence.
    fn start(&self, src_tokens: &Tensor) -> Result<TorchState>;

    /// Whether this is a decoder-only model (a language model; see the convention above):
    /// [`TorchDecoder`] then feeds it `[eos] + prompt` for each source.
    fn decoder_only(&self) -> bool {
        false
    }

    /// Feeds `prev_tokens` (`Int64 [rows]`: the previous output of each row, EOS at step 0),
    /// updates the state (not `state.step`: the caller counts) and returns the fp32
    /// log-probabilities `[rows, tgt_vocab]` of the next token.
    fn step(&self, prev_tokens: &Tensor, state: &mut TorchState) -> Result<Tensor>;
}

/// Incremental decoding with any [`StepModel`] behind the runtime's [`IncrementalDecoder`].
pub struct TorchDecoder<'m> {
    model: &'m dyn StepModel,
    info: DecodingInfo,
    special: SpecialTokens,
    /// A decoder-only model's prompt scores and lengths from the last `encode`.
    prompts: Option<Vec<(f32, usize)>>,
}

impl std::fmt::Debug for TorchDecoder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorchDecoder").field("info", &self.info).finish_non_exhaustive()
    }
}

impl<'m> TorchDecoder<'m> {
    /// Decodes with `model`; special tokens are fairseq's defaults with the model's padding id.
    pub fn new(model: &'m dyn StepModel) -> Self {
        let info = model.decoding_info();
        let pad = u32::try_from(info.pad_index).unwrap_or(u32::MAX);
        Self {
            model,
            info,
            special: SpecialTokens { pad, ..SpecialTokens::default() },
            prompts: None,
        }
    }

    /// Uses other special token ids (the padding id must stay the model's `pad_index`).
    pub fn with_special_tokens(mut self, special: SpecialTokens) -> Self {
        self.special = special;
        self
    }

    /// The model.
    pub fn model(&self) -> &'m dyn StepModel {
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

impl TorchDecoder<'_> {
    /// A decoder-only model's prompts as `[eos] + prompt` rows of one length (the steps share
    /// one position), run at once; the state stands after the prompt (`step` = its length − 1,
    /// the first step returning the prompt's next-token distribution).
    fn prefill(&mut self, sources: &[Vec<u32>]) -> Result<TorchState> {
        let eos = self.special.eos;
        let rows: Vec<Vec<u32>> = sources.iter().map(|s| lm_input(s, eos)).collect();
        let t = rows.first().map_or(0, Vec::len);
        if let Some(r) = rows.iter().find(|r| r.len() != t) {
            return Err(Error::Input(format!(
                "language-model prompts decoded together must have one length (got {t} and {} \
                 tokens with the leading EOS)",
                r.len()
            )));
        }
        let max = self.info.max_target_positions;
        if t == 0 || t > max {
            return Err(Error::Input(format!(
                "a prompt of {t} tokens (with the leading EOS) does not fit the model's {max} \
                 positions"
            )));
        }
        for (i, r) in rows.iter().enumerate() {
            check_ids(r, self.info.src_vocab_size, &format!("prompt {i}"))?;
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&x| i64::from(x)).collect();
        let tokens = Tensor::f_from_slice(&flat)?
            .f_reshape([rows.len() as i64, t as i64])?
            .f_to_device(self.model.device())?;
        let _guard = tch::no_grad_guard();
        let mut state = self.model.start(&tokens)?;
        state.step = t - 1;
        self.prompts = None;
        if state.tensors().contains_key(PROMPT_SCORES) {
            let scores = state.take(PROMPT_SCORES)?.f_to_device(Device::Cpu)?;
            let mut values = vec![0f32; rows.len()];
            scores.f_copy_data(&mut values, rows.len())?;
            self.prompts = Some(values.into_iter().map(|s| (s, t - 1)).collect());
        }
        Ok(state)
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

/// Left-pads `sources` with `pad` into an `Int64 [batch, longest]` tensor (fairseq's default
/// batching), checking ids against `vocab` and lengths against `max_len`.
pub fn left_padded_batch(
    sources: &[Vec<u32>],
    pad: usize,
    vocab: usize,
    max_len: usize,
) -> Result<Tensor> {
    let longest = sources.iter().map(Vec::len).max().unwrap_or(0);
    for (i, source) in sources.iter().enumerate() {
        if source.is_empty() {
            return Err(Error::Input(format!(
                "source {i} is empty (expected at least the EOS token)"
            )));
        }
        check_ids(source, vocab, &format!("source {i}"))?;
    }
    if longest > max_len {
        return Err(Error::Input(format!(
            "a source of {longest} tokens is longer than max_source_positions ({max_len})"
        )));
    }
    let pad = pad as i64;
    let mut batch = Vec::with_capacity(sources.len() * longest);
    for source in sources {
        batch.extend(std::iter::repeat_n(pad, longest - source.len()));
        batch.extend(source.iter().map(|&t| i64::from(t)));
    }
    Ok(Tensor::f_from_slice(&batch)?.f_reshape([sources.len() as i64, longest as i64])?)
}

impl IncrementalDecoder for TorchDecoder<'_> {
    type Encoded = TorchState;
    type State = TorchState;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.info.tgt_vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn max_target_positions(&self) -> usize {
        self.info.max_target_positions
    }

    fn max_target_positions_for(&self, source: &[u32]) -> usize {
        if self.model.decoder_only() {
            lm_positions_left(self.info.max_target_positions, source, self.special.eos)
        } else {
            self.info.max_target_positions
        }
    }

    fn prompt_scores(&self, _encoded: &TorchState) -> Option<Vec<(f32, usize)>> {
        if self.model.decoder_only() { self.prompts.clone() } else { None }
    }

    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<TorchState> {
        if self.model.decoder_only() {
            return self.prefill(sources);
        }
        let tokens = left_padded_batch(
            sources,
            self.info.pad_index,
            self.info.src_vocab_size,
            self.info.max_source_positions,
        )?
        .f_to_device(self.model.device())?;
        let _guard = tch::no_grad_guard();
        self.model.start(&tokens)
    }

    fn init_state(&mut self, encoded: &TorchState, rows_per_sentence: usize) -> Result<TorchState> {
        let _guard = tch::no_grad_guard();
        let order: Vec<usize> =
            (0..encoded.rows()).flat_map(|s| std::iter::repeat_n(s, rows_per_sentence)).collect();
        let index = self.index_tensor(&order)?;
        let mut state = TorchState { tensors: BTreeMap::new(), step: encoded.step };
        for (name, t) in &encoded.tensors {
            state.insert(name.clone(), t.f_index_select(0, &index)?);
        }
        Ok(state)
    }

    fn step(&mut self, tokens: &[u32], state: &mut TorchState) -> Result<LogProbs> {
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
        let lprobs = self.model.step(&tokens, state)?;
        state.step += 1;
        let lprobs = lprobs.f_to_device(Device::Cpu)?.f_to_kind(Kind::Float)?.f_contiguous()?;
        let vocab = self.vocab_size();
        if lprobs.size() != [rows as i64, vocab as i64] {
            return Err(Error::Input(format!(
                "the model's step returned {:?}, expected [{rows}, {vocab}]",
                lprobs.size()
            )));
        }
        let mut data = vec![0f32; rows * vocab];
        lprobs.f_copy_data(&mut data, rows * vocab)?;
        Ok(LogProbs { rows, vocab, data })
    }

    fn reorder(&mut self, state: &mut TorchState, order: &[usize]) -> Result<()> {
        let rows = state.rows();
        if let Some(&bad) = order.iter().find(|&&i| i >= rows) {
            return Err(Error::Input(format!("reorder: row {bad} does not exist ({rows} rows)")));
        }
        let _guard = tch::no_grad_guard();
        state.reorder(&self.index_tensor(order)?)
    }

    fn rows(&self, state: &TorchState) -> usize {
        state.rows()
    }
}
