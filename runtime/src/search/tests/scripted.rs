//! A scripted [`IncrementalDecoder`]: the next-token distribution is a fixed function of
//! (source sentence, prefix generated so far), so expected hypotheses and scores can be worked
//! out by hand — the counterpart of fairseq's `tests/utils.py::TestIncrementalDecoder`, keyed by
//! prefix rather than by beam row so that it also holds when rows are reordered or pruned.

use crate::decoding::{IncrementalDecoder, LogProbs, SpecialTokens, TopLogProbs};

pub const BOS: u32 = 0;
pub const PAD: u32 = 1;
pub const EOS: u32 = 2;
pub const UNK: u32 = 3;
pub const W1: u32 = 4;
pub const W2: u32 = 5;

/// fairseq's test dictionary layout: `<s> <pad> </s> <unk> w1 w2`; the tables give the
/// probabilities of `eos, unk, w1, w2` (bos and pad get 0, as in fairseq's tests).
pub fn p(eos: f32, unk: f32, w1: f32, w2: f32) -> Vec<f32> {
    vec![0.0, 0.0, eos, unk, w1, w2]
}

/// `(source, prefix) -> probabilities over the vocabulary`.
pub type Script = Box<dyn Fn(&[u32], &[u32]) -> Vec<f32>>;

/// What the decoder saw.
#[derive(Debug, Default, Clone)]
pub struct Log {
    /// Rows fed at each step.
    pub rows: Vec<usize>,
    /// Every reorder index.
    pub reorders: Vec<Vec<usize>>,
    /// Steps answered with each row's best entries.
    pub top_steps: usize,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// `step` returns an error at this step.
    ErrorAt(usize),
    /// `step` returns rows one entry too narrow at this step.
    NarrowAt(usize),
}

#[derive(Debug, thiserror::Error)]
#[error("scripted decoder: {0}")]
pub struct ScriptError(pub String);

pub struct ScriptedDecoder {
    pub vocab: usize,
    pub max_positions: usize,
    pub script: Script,
    pub log: Log,
    pub fault: Option<Fault>,
    /// Answer [`IncrementalDecoder::step_top`] (each row's best entries of the same
    /// distribution, ties to the smaller id), as exported graphs do.
    pub top: bool,
}

impl ScriptedDecoder {
    pub fn new(vocab: usize, script: impl Fn(&[u32], &[u32]) -> Vec<f32> + 'static) -> Self {
        Self {
            vocab,
            max_positions: 100,
            script: Box::new(script),
            log: Log::default(),
            fault: None,
            top: false,
        }
    }
}

#[derive(Clone)]
struct Row {
    sentence: usize,
    prefix: Vec<u32>,
    started: bool,
}

pub struct State {
    sources: Vec<Vec<u32>>,
    rows: Vec<Row>,
    step: usize,
}

impl IncrementalDecoder for ScriptedDecoder {
    type Encoded = Vec<Vec<u32>>;
    type State = State;
    type Error = ScriptError;

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens { bos: BOS, pad: PAD, eos: EOS, unk: UNK }
    }

    fn max_target_positions(&self) -> usize {
        self.max_positions
    }

    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<Self::Encoded, Self::Error> {
        for source in sources {
            if source.last() != Some(&EOS) {
                return Err(ScriptError(format!("source {source:?} does not end with EOS")));
            }
        }
        Ok(sources.to_vec())
    }

    fn init_state(
        &mut self,
        encoded: &Self::Encoded,
        rows_per_sentence: usize,
    ) -> Result<Self::State, Self::Error> {
        let rows = (0..encoded.len())
            .flat_map(|sentence| {
                (0..rows_per_sentence).map(move |_| Row {
                    sentence,
                    prefix: Vec::new(),
                    started: false,
                })
            })
            .collect();
        Ok(State { sources: encoded.clone(), rows, step: 0 })
    }

    fn step_top(
        &mut self,
        tokens: &[u32],
        state: &mut Self::State,
        k: usize,
    ) -> Result<Option<TopLogProbs>, Self::Error> {
        if !self.top {
            return Ok(None);
        }
        let lp = self.step(tokens, state)?;
        self.log.top_steps += 1;
        let (mut values, mut ids) = (Vec::new(), Vec::new());
        for r in 0..lp.rows {
            let row = lp.row(r);
            let mut order: Vec<usize> = (0..lp.vocab).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            for &t in order.iter().take(k) {
                values.push(row[t]);
                ids.push(t as u32);
            }
        }
        Ok(Some(TopLogProbs { rows: lp.rows, k, values, ids }))
    }

    fn step(&mut self, tokens: &[u32], state: &mut Self::State) -> Result<LogProbs, Self::Error> {
        let step = state.step;
        state.step += 1;
        if self.fault == Some(Fault::ErrorAt(step)) {
            return Err(ScriptError(format!("injected failure at step {step}")));
        }
        if tokens.len() != state.rows.len() {
            return Err(ScriptError(format!(
                "{} tokens fed for {} rows",
                tokens.len(),
                state.rows.len()
            )));
        }
        self.log.rows.push(tokens.len());
        let narrow = self.fault == Some(Fault::NarrowAt(step));
        let width = if narrow { self.vocab - 1 } else { self.vocab };
        let mut data = Vec::with_capacity(tokens.len() * width);
        for (row, &token) in state.rows.iter_mut().zip(tokens) {
            if row.started {
                row.prefix.push(token);
            } else if token != EOS {
                return Err(ScriptError(format!("first input {token} is not EOS")));
            } else {
                row.started = true;
            }
            let probs = (self.script)(&state.sources[row.sentence], &row.prefix);
            if probs.len() != self.vocab {
                return Err(ScriptError(format!("script gave {} probabilities", probs.len())));
            }
            data.extend(probs[..width].iter().map(|p| p.ln()));
        }
        Ok(LogProbs { rows: tokens.len(), vocab: width, data })
    }

    fn reorder(&mut self, state: &mut Self::State, order: &[usize]) -> Result<(), Self::Error> {
        self.log.reorders.push(order.to_vec());
        let mut rows = Vec::with_capacity(order.len());
        for &i in order {
            let row = state.rows.get(i).ok_or_else(|| {
                ScriptError(format!("reorder index {i} of {} rows", state.rows.len()))
            })?;
            rows.push(row.clone());
        }
        state.rows = rows;
        Ok(())
    }

    fn rows(&self, state: &Self::State) -> usize {
        state.rows.len()
    }
}

/// A deterministic pseudo-random script over `vocab` tokens: peaky distributions whose EOS
/// probability grows with the prefix length (so sentences end at different steps); bos, pad
/// and unk get some mass too, to exercise the bans and the unk penalty.
pub fn random_script(vocab: usize, seed: u64) -> impl Fn(&[u32], &[u32]) -> Vec<f32> + 'static {
    random_script_with(vocab, seed, false)
}

/// [`random_script`], optionally without any mass on `<s>` (fairseq does not forbid `<s>`, so
/// the fairseq oracle's twin of this script, `testdata/fairseq_oracle.py`, zeroes it).
pub fn random_script_with(
    vocab: usize,
    seed: u64,
    zero_bos: bool,
) -> impl Fn(&[u32], &[u32]) -> Vec<f32> + 'static {
    move |source: &[u32], prefix: &[u32]| {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for &t in source.iter().chain([u32::MAX].iter()).chain(prefix) {
            h ^= u64::from(t);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut weights: Vec<f64> = (0..vocab)
            .map(|_| {
                h ^= h << 13;
                h ^= h >> 7;
                h ^= h << 17;
                let x = ((h >> 11) as f64) / ((1u64 << 53) as f64);
                x * x * x
            })
            .collect();
        let grow = (prefix.len() as f64 + 1.0).powi(2) * 0.02;
        weights[EOS as usize] *= grow;
        if zero_bos {
            weights[BOS as usize] = 0.0;
        }
        let total: f64 = weights.iter().sum();
        weights.iter().map(|w| (w / total) as f32).collect()
    }
}
