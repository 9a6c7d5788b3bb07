//! The contract between search and models: an incremental decoder with explicit state.
//!
//! The trainer's libtorch Transformer and the runtime's ONNX Runtime backend both implement
//! [`IncrementalDecoder`]; the search (beam, diverse beam, sampling, greedy) only sees this
//! trait, so the trainer's validation decoding and deployment run the same search code.
//!
//! State is explicit (never hidden in modules): [`IncrementalDecoder::State`] holds everything
//! one decoding run needs (self-attention caches, cross-attention keys/values, the step
//! index), one *row* per live hypothesis. Search keeps rows in sync with its hypotheses by
//! calling [`IncrementalDecoder::reorder`] with a gather index after every step: beam
//! reordering, expansion and pruning of finished sentences are all the same operation.

/// Special token ids of a vocabulary (fairseq's defaults: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Beginning of sentence.
    pub bos: u32,
    /// Padding.
    pub pad: u32,
    /// End of sentence (also the first decoder input, as in fairseq).
    pub eos: u32,
    /// Unknown word.
    pub unk: u32,
}

impl Default for SpecialTokens {
    fn default() -> Self {
        Self { bos: 0, pad: 1, eos: 2, unk: 3 }
    }
}

/// Log-probabilities for each row after one step, row-major `[rows, vocab]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogProbs {
    /// Number of rows (live hypotheses).
    pub rows: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `rows × vocab` values, natural-log probabilities.
    pub data: Vec<f32>,
}

impl LogProbs {
    /// The log-probabilities of one row.
    pub fn row(&self, row: usize) -> &[f32] {
        &self.data[row * self.vocab..(row + 1) * self.vocab]
    }
}

/// Each row's `k` best log-probabilities, best first (ties: the smaller id first): what a beam
/// search needs when nothing else reads the whole distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogProbs {
    /// Number of rows (live hypotheses).
    pub rows: usize,
    /// Entries per row.
    pub k: usize,
    /// `rows × k` log-probabilities.
    pub values: Vec<f32>,
    /// `rows × k` token ids of `values`.
    pub ids: Vec<u32>,
}

/// A model that decodes one target position at a time with a cache.
pub trait IncrementalDecoder {
    /// The encoder's output for a batch of source sentences.
    type Encoded;
    /// The decoding state: one row per live hypothesis.
    type State;
    /// The backend's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Target vocabulary size (the width of [`LogProbs`]).
    fn vocab_size(&self) -> usize;

    /// Special token ids of the target dictionary.
    fn special_tokens(&self) -> SpecialTokens;

    /// The longest target the model can decode (its maximum target positions).
    fn max_target_positions(&self) -> usize;

    /// The maximum target positions left for the output of `source` (the search decodes at
    /// most this minus one tokens before EOS): [`IncrementalDecoder::max_target_positions`] for
    /// an encoder-decoder model; a decoder-only model, whose prompt (`source`) takes positions
    /// of the same sequence, returns what the prompt leaves.
    fn max_target_positions_for(&self, source: &[u32]) -> usize {
        let _ = source;
        self.max_target_positions()
    }

    /// A decoder-only model's prompts after [`IncrementalDecoder::encode`]: per sentence, the
    /// summed log-probability of its prompt tokens (each given the leading EOS and the tokens
    /// before it) and their count. fairseq's language-model generation decodes the prompt as a
    /// forced prefix of every hypothesis, so a hypothesis's score and length count it; the
    /// search adds both. `None` (the default) for an encoder-decoder model.
    fn prompt_scores(&self, encoded: &Self::Encoded) -> Option<Vec<(f32, usize)>> {
        let _ = encoded;
        None
    }

    /// Encodes a batch of source sentences, each a list of token ids ending with EOS.
    /// Padding is the backend's business: results must not depend on how sentences are batched.
    /// For a decoder-only model a source is a prompt (its ids, then EOS) and encoding consumes
    /// it (the prefill); the first step then returns the prompt's next-token distribution.
    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<Self::Encoded, Self::Error>;

    /// A fresh state with `rows_per_sentence` rows for each encoded sentence (row
    /// `s * rows_per_sentence + k` belongs to sentence `s`), with an empty cache.
    fn init_state(
        &mut self,
        encoded: &Self::Encoded,
        rows_per_sentence: usize,
    ) -> Result<Self::State, Self::Error>;

    /// Feeds one token per row (the previous output; EOS at step 0) and returns the
    /// log-probabilities of the next token for every row. Appends to the cache.
    fn step(&mut self, tokens: &[u32], state: &mut Self::State) -> Result<LogProbs, Self::Error>;

    /// Like [`IncrementalDecoder::step`], but returns only each row's `k` best
    /// log-probabilities (computed by the backend, e.g. inside the graph). A backend that
    /// cannot returns `Ok(None)` without stepping (the default), and the caller then calls
    /// [`IncrementalDecoder::step`].
    fn step_top(
        &mut self,
        tokens: &[u32],
        state: &mut Self::State,
        k: usize,
    ) -> Result<Option<TopLogProbs>, Self::Error> {
        let _ = (tokens, state, k);
        Ok(None)
    }

    /// Rebuilds the state so that new row `i` is old row `order[i]` (`order` may repeat rows and
    /// be shorter than before: this is both beam reordering and pruning of finished rows).
    fn reorder(&mut self, state: &mut Self::State, order: &[usize]) -> Result<(), Self::Error>;

    /// Number of rows in a state.
    fn rows(&self, state: &Self::State) -> usize;
}

/// A decoder-only model's input for a source (a prompt, normally ending with EOS, as the text
/// pipeline makes every source): `[eos] + prompt`, as fairseq's language-model generation
/// starts from EOS. Every backend of a language model (ONNX Runtime, the trainer's libtorch)
/// feeds this.
pub fn lm_input(source: &[u32], eos: u32) -> Vec<u32> {
    let prompt = source.strip_suffix(&[eos]).unwrap_or(source);
    let mut row = Vec::with_capacity(prompt.len() + 1);
    row.push(eos);
    row.extend_from_slice(prompt);
    row
}

/// What a prompt (`source`) leaves of a decoder-only model's `positions` for the search:
/// `positions − T + 1` for the `T` tokens of [`lm_input`], so that the search's last step
/// runs at position `positions − 1` (its
/// [`IncrementalDecoder::max_target_positions_for`]).
pub fn lm_positions_left(positions: usize, source: &[u32], eos: u32) -> usize {
    (positions + 1).saturating_sub(lm_input(source, eos).len())
}
