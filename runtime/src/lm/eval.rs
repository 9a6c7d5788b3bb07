//! fairseq-eval-lm (`fairseq_cli/eval_lm.py`, `LMContextWindowDataset`, `SequenceScorer`)
//! over any [`LmScorer`].
//!
//! 1. The token stream is cut into blocks of `tokens_per_sample − context_window` tokens
//!    ([`TokenBlocks`]); each block is a sample whose target is the block and whose input is
//!    the block shifted right.
//! 2. With a context window, each sample's input gets the last `context_window` input tokens
//!    before it in front (fewer at the start, and trimmed so that no input exceeds
//!    `tokens_per_sample`), whose targets are padding: only the block's own tokens are
//!    scored, but with more context ([`context_samples`]).
//! 3. Samples are scored in order, in batches of at most `max_sentences` rows and
//!    `max_tokens` padded tokens.
//! 4. Per sample, the scored tokens' log-probabilities are summed; with subword merging
//!    ([`WordPieces`]) the score of a piece that does not end its word moves to the next piece
//!    and the piece is not counted (fairseq's `--remove-bpe`), so the perplexity is per word.
//!    Tokens scored −∞ are left out (fairseq logs and skips them).
//!
//! Loss (base 2) = −Σ log p / count / ln 2, perplexity = 2^loss, as fairseq prints
//! "Loss (base 2): …, Perplexity: …".

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::blocks::{BreakMode, TokenBlocks};
use super::{Error, Result};

/// How subword pieces make words, for word-level perplexity (`--remove-bpe`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WordPieces {
    /// Every token is a word (fairseq without `--post-process`).
    #[default]
    None,
    /// subword-nmt: a piece ending in `@@` continues into the next (fairseq's `@@ `).
    SubwordNmt,
    /// Byte-level BPE (seqforge's `learn-bpe`, GPT-2): a piece starting with `Ġ` (an encoded
    /// space) or another whitespace byte (`Ċ` newline, `ĉ` tab) starts a word.
    ByteLevel,
    /// SentencePiece: a piece starting with `▁` starts a word.
    SentencePiece,
}

impl FromStr for WordPieces {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(WordPieces::None),
            "@@ " | "@@" | "subword_nmt" => Ok(WordPieces::SubwordNmt),
            "byte_level" | "bytelevel" => Ok(WordPieces::ByteLevel),
            "sentencepiece" | "▁" => Ok(WordPieces::SentencePiece),
            other => Err(format!(
                "unknown subword scheme `{other}` (expected `@@ ` / subword_nmt, byte_level, \
                 sentencepiece or none)"
            )),
        }
    }
}

impl WordPieces {
    /// Whether `piece` is the last piece of its word when `next` follows it (`None`: the end of
    /// the sample). End-of-sentence and special symbols (`<…>`) are words of their own.
    fn ends_word(self, piece: &str, next: Option<&str>) -> bool {
        let special = |s: &str| s.starts_with('<') && s.ends_with('>') && s.len() > 2;
        match self {
            WordPieces::None => true,
            WordPieces::SubwordNmt => !piece.ends_with("@@"),
            WordPieces::ByteLevel | WordPieces::SentencePiece => match next {
                None => true,
                Some(n) if special(piece) || special(n) => true,
                Some(n) => self.starts_word(n),
            },
        }
    }

    fn starts_word(self, piece: &str) -> bool {
        match self {
            WordPieces::ByteLevel => piece.starts_with(['Ġ', 'Ċ', 'ĉ', 'č']),
            WordPieces::SentencePiece => piece.starts_with('▁'),
            WordPieces::None | WordPieces::SubwordNmt => true,
        }
    }

    /// The piece as it appears inside a word (markers removed).
    fn surface(self, piece: &str) -> &str {
        match self {
            WordPieces::None => piece,
            WordPieces::SubwordNmt => piece.strip_suffix("@@").unwrap_or(piece),
            WordPieces::ByteLevel => piece.strip_prefix('Ġ').unwrap_or(piece),
            WordPieces::SentencePiece => piece.strip_prefix('▁').unwrap_or(piece),
        }
    }
}

/// fairseq-eval-lm's options.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalLmOptions {
    /// The longest input a sample may have, context included (`--tokens-per-sample`).
    pub tokens_per_sample: usize,
    /// Tokens of context before each block (`--context-window`; 0 = none).
    pub context_window: usize,
    /// How the stream is cut (`--sample-break-mode`).
    pub break_mode: BreakMode,
    /// Rows per batch (`--max-sentences`/`--batch-size`).
    pub max_sentences: Option<usize>,
    /// Padded tokens per batch (`--max-tokens`; fairseq-eval-lm's default is 36,000).
    pub max_tokens: usize,
    /// Subword merging for word-level perplexity.
    pub word_pieces: WordPieces,
    /// Keep each sample's words with their log-probabilities (`--output-word-probs`).
    pub output_word_probs: bool,
    /// Keep per-word statistics (`--output-word-stats`).
    pub output_word_stats: bool,
}

impl Default for EvalLmOptions {
    fn default() -> Self {
        Self {
            tokens_per_sample: 1024,
            context_window: 0,
            break_mode: BreakMode::None,
            max_sentences: None,
            max_tokens: 36_000,
            word_pieces: WordPieces::None,
            output_word_probs: false,
            output_word_stats: false,
        }
    }
}

impl EvalLmOptions {
    /// The block size: `tokens_per_sample − context_window` (an error unless positive).
    pub fn block_size(&self) -> Result<usize> {
        if self.context_window >= self.tokens_per_sample && self.break_mode != BreakMode::Eos {
            return Err(Error::Options(format!(
                "--context-window {} must be smaller than --tokens-per-sample {}",
                self.context_window, self.tokens_per_sample
            )));
        }
        Ok(self.tokens_per_sample - self.context_window.min(self.tokens_per_sample))
    }
}

/// One sample to score: `input` and `target` have the same length; target positions equal to
/// padding are not scored (the context, and padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LmSample {
    /// Index of the block it scores.
    pub id: usize,
    /// The model's input tokens.
    pub input: Vec<u32>,
    /// The tokens to predict at each position (padding: not scored).
    pub target: Vec<u32>,
}

/// fairseq's `LMContextWindowDataset`: the blocks `(input, target)` in order, each with up to
/// `context_window` of the preceding input tokens in front (their targets padding), trimmed so
/// that no input is longer than `block + context_window` tokens.
pub fn context_samples(
    blocks: impl IntoIterator<Item = (Vec<u32>, Vec<u32>)>,
    context_window: usize,
    block_size: usize,
    pad: u32,
) -> Vec<LmSample> {
    let max_len = block_size + context_window;
    let mut prev: Vec<u32> = Vec::new();
    let mut out = Vec::new();
    for (id, (input, target)) in blocks.into_iter().enumerate() {
        if context_window == 0 {
            out.push(LmSample { id, input, target });
            continue;
        }
        let len = input.iter().filter(|&&t| t != pad).count();
        let extra = (prev.len() + len).saturating_sub(max_len);
        if extra > 0 {
            prev.drain(..extra.min(prev.len()));
        }
        let mut new_input = prev.clone();
        new_input.extend_from_slice(&input);
        let mut new_target = vec![pad; prev.len()];
        new_target.extend_from_slice(&target);
        let kept: Vec<u32> = new_input.iter().copied().filter(|&t| t != pad).collect();
        prev = kept[kept.len().saturating_sub(context_window)..].to_vec();
        out.push(LmSample { id, input: new_input, target: new_target });
    }
    out
}

/// A model that scores targets: for each row, the log-probability (natural log) of `target[t]`
/// at every position `t` given `input[..=t]`. Rows are right-padded to a common length by the
/// scorer as it needs; values at padding positions are ignored.
pub trait LmScorer {
    /// The backend's error.
    type Error: From<Error>;

    /// Scores one batch.
    fn target_log_probs(
        &mut self,
        inputs: &[&[u32]],
        targets: &[&[u32]],
    ) -> std::result::Result<Vec<Vec<f32>>, Self::Error>;
}

/// Counters of one word over the evaluated text (fairseq's `WordStat`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WordStat {
    /// The word.
    pub word: String,
    /// Occurrences.
    pub count: u64,
    /// Summed log-probability (natural log).
    pub log_prob: f64,
    /// Whether its last occurrence was made of several pieces.
    pub is_bpe: bool,
    /// Summed log-probability of the word after it.
    pub next_word_prob: f64,
    /// Occurrences followed by a scored word.
    pub next_word_count: u64,
}

impl fmt::Display for WordStat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}\t{}",
            self.word,
            self.count,
            self.log_prob,
            if self.is_bpe { "True" } else { "False" },
            self.next_word_prob,
            self.next_word_count
        )
    }
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalLmReport {
    /// Summed log-probability of the counted units (natural log).
    pub score_sum: f64,
    /// Units counted (tokens, or words with subword merging).
    pub count: u64,
    /// Tokens scored (before merging).
    pub tokens: u64,
    /// Samples scored.
    pub samples: usize,
    /// Tokens left out for a −∞ score.
    pub infinite: u64,
    /// Loss per unit, base 2.
    pub loss: f64,
    /// `2^loss`.
    pub perplexity: f64,
    /// With `output_word_probs`: per sample, `(id, [(word, log-prob)])`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub word_probs: Vec<(usize, Vec<(String, f32)>)>,
    /// With `output_word_stats`: words by descending count.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub word_stats: Vec<WordStat>,
}

impl EvalLmReport {
    /// fairseq's summary line: `Loss (base 2): 4.1234, Perplexity: 17.50`.
    pub fn summary(&self) -> String {
        format!("Loss (base 2): {:.4}, Perplexity: {:.2}", self.loss, self.perplexity)
    }
}

/// Groups samples, in order, into batches of at most `max_sentences` rows and `max_tokens`
/// padded tokens (a sample longer than `max_tokens` is a batch of its own).
fn batches(
    samples: &[LmSample],
    max_sentences: Option<usize>,
    max_tokens: usize,
) -> Vec<&[LmSample]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut longest = 0;
    for (i, s) in samples.iter().enumerate() {
        let rows = i - start + 1;
        let width = longest.max(s.input.len());
        let full = max_sentences.is_some_and(|m| rows > m) || rows * width > max_tokens;
        if full && i > start {
            out.push(&samples[start..i]);
            start = i;
            longest = s.input.len();
        } else {
            longest = width;
        }
    }
    if start < samples.len() {
        out.push(&samples[start..]);
    }
    out
}

/// Scores `samples` with `scorer` (see the module documentation); `symbol(id)` names the
/// dictionary's symbols (for subword merging and the word outputs), `pad` is padding.
/// `progress(done)` is called after each batch with the samples scored so far.
pub fn evaluate<S: LmScorer>(
    scorer: &mut S,
    samples: &[LmSample],
    options: &EvalLmOptions,
    pad: u32,
    symbol: &dyn Fn(u32) -> String,
    mut progress: impl FnMut(usize),
) -> std::result::Result<EvalLmReport, S::Error> {
    let mut report = EvalLmReport {
        score_sum: 0.0,
        count: 0,
        tokens: 0,
        samples: samples.len(),
        infinite: 0,
        loss: 0.0,
        perplexity: 1.0,
        word_probs: Vec::new(),
        word_stats: Vec::new(),
    };
    let mut stats: HashMap<String, WordStat> = HashMap::new();
    let mut done = 0;
    let wp = options.word_pieces;
    for batch in batches(samples, options.max_sentences, options.max_tokens.max(1)) {
        let inputs: Vec<&[u32]> = batch.iter().map(|s| s.input.as_slice()).collect();
        let targets: Vec<&[u32]> = batch.iter().map(|s| s.target.as_slice()).collect();
        let scores = scorer.target_log_probs(&inputs, &targets)?;
        if scores.len() != batch.len() {
            return Err(Error::Data(format!(
                "the scorer returned {} rows for a batch of {}",
                scores.len(),
                batch.len()
            ))
            .into());
        }
        for (sample, row) in batch.iter().zip(&scores) {
            let mut tokens = Vec::new();
            let mut pos = Vec::new();
            for (t, &tok) in sample.target.iter().enumerate() {
                if tok != pad {
                    tokens.push(tok);
                    pos.push(f64::from(row.get(t).copied().unwrap_or(f32::NEG_INFINITY)));
                }
            }
            report.tokens += tokens.len() as u64;
            let symbols: Vec<String> = tokens.iter().map(|&t| symbol(t)).collect();
            // fairseq: a piece that continues its word hands its score to the next piece.
            let mut continued = vec![false; tokens.len()];
            let mut skipped = 0u64;
            for i in 0..tokens.len().saturating_sub(1) {
                if !wp.ends_word(&symbols[i], symbols.get(i + 1).map(String::as_str)) {
                    continued[i] = true;
                    skipped += 1;
                    pos[i + 1] += pos[i];
                    pos[i] = 0.0;
                }
            }
            let mut counted = 0u64;
            for &p in &pos {
                if p.is_infinite() {
                    report.infinite += 1;
                } else {
                    report.score_sum += p;
                    counted += 1;
                }
            }
            report.count += counted.saturating_sub(skipped);
            if options.output_word_probs || options.output_word_stats {
                let mut words = Vec::new();
                let mut w = String::new();
                let mut is_bpe = false;
                for i in 0..tokens.len() {
                    w.push_str(wp.surface(&symbols[i]));
                    if continued[i] {
                        is_bpe = true;
                        continue;
                    }
                    words.push((w.clone(), pos[i] as f32));
                    let next = pos[i + 1..].iter().copied().find(|&p| p != 0.0);
                    let st = stats.entry(w.clone()).or_insert_with(|| WordStat {
                        word: w.clone(),
                        count: 0,
                        log_prob: 0.0,
                        is_bpe,
                        next_word_prob: 0.0,
                        next_word_count: 0,
                    });
                    st.is_bpe = is_bpe;
                    st.count += 1;
                    st.log_prob += pos[i];
                    if let Some(n) = next {
                        st.next_word_prob += n;
                        st.next_word_count += 1;
                    }
                    is_bpe = false;
                    w.clear();
                }
                if options.output_word_probs {
                    report.word_probs.push((sample.id, words));
                }
            }
        }
        done += batch.len();
        progress(done);
    }
    if report.count > 0 {
        report.loss = -report.score_sum / report.count as f64 / std::f64::consts::LN_2;
        report.perplexity = 2f64.powf(report.loss);
    }
    if options.output_word_stats {
        let mut v: Vec<WordStat> = stats.into_values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.word.cmp(&b.word)));
        report.word_stats = v;
    }
    Ok(report)
}

/// The samples fairseq-eval-lm scores on a token stream given as items (sentences ending with
/// EOS; an item of EOS alone separates documents): blocks of [`EvalLmOptions::block_size`]
/// with [`EvalLmOptions::break_mode`], then [`context_samples`].
pub fn samples_of_items(
    items: &[Vec<u32>],
    options: &EvalLmOptions,
    eos: u32,
    pad: u32,
) -> Result<Vec<LmSample>> {
    let block = options.block_size()?;
    let sizes: Vec<u32> = items
        .iter()
        .map(|i| u32::try_from(i.len()).map_err(|_| Error::Data("an item is too long".into())))
        .collect::<Result<_>>()?;
    let blocks = TokenBlocks::new(&sizes, block, options.break_mode)?;
    let pairs = (0..blocks.len())
        .map(|i| {
            blocks.source_target(i, eos, |k, out: &mut Vec<u32>| {
                out.extend_from_slice(&items[k]);
                Ok::<(), Error>(())
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(context_samples(pairs, options.context_window, block, pad))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PAD: u32 = 1;
    const EOS: u32 = 2;

    /// A scorer whose log-probability of token `t` is `-(t as f32) / 10`.
    struct Fixed(usize);

    impl LmScorer for Fixed {
        type Error = Error;
        fn target_log_probs(
            &mut self,
            inputs: &[&[u32]],
            targets: &[&[u32]],
        ) -> Result<Vec<Vec<f32>>> {
            self.0 += 1;
            assert_eq!(inputs.len(), targets.len());
            Ok(targets.iter().map(|t| t.iter().map(|&x| -(x as f32) / 10.0).collect()).collect())
        }
    }

    #[test]
    fn context_window_matches_fairseq() {
        // Blocks of 2 with a context of 2: (from fairseq's LMContextWindowDataset collater).
        let blocks = vec![
            (vec![2, 10], vec![10, 11]),
            (vec![11, 12], vec![12, 13]),
            (vec![13, 14], vec![14, 2]),
        ];
        let s = context_samples(blocks, 2, 2, PAD);
        assert_eq!(s[0].input, vec![2, 10]);
        assert_eq!(s[1].input, vec![2, 10, 11, 12]);
        assert_eq!(s[1].target, vec![PAD, PAD, 12, 13]);
        assert_eq!(s[2].input, vec![11, 12, 13, 14]);
        assert_eq!(s[2].target, vec![PAD, PAD, 14, 2]);
    }

    #[test]
    fn perplexity_and_word_merging() {
        let items = vec![vec![10, 11, 12, EOS], vec![13, EOS]];
        let opts =
            EvalLmOptions { tokens_per_sample: 3, max_sentences: Some(1), ..Default::default() };
        let samples = samples_of_items(&items, &opts, EOS, PAD).unwrap();
        assert_eq!(samples.len(), 2);
        let symbol = |t: u32| match t {
            10 => "he@@".to_string(),
            2 => "</s>".to_string(),
            t => format!("w{t}"),
        };
        let mut scorer = Fixed(0);
        let r = evaluate(&mut scorer, &samples, &opts, PAD, &symbol, |_| {}).unwrap();
        assert_eq!(scorer.0, 2, "one batch per sample");
        let total: f64 = [10, 11, 12, 2, 13, 2].iter().map(|&t| -f64::from(t as f32 / 10.0)).sum();
        assert!((r.score_sum - total).abs() < 1e-6);
        assert_eq!(r.count, 6);
        assert!((r.perplexity - 2f64.powf(r.loss)).abs() < 1e-12);
        let opts = EvalLmOptions {
            word_pieces: WordPieces::SubwordNmt,
            output_word_probs: true,
            output_word_stats: true,
            ..opts
        };
        let r2 = evaluate(&mut Fixed(0), &samples, &opts, PAD, &symbol, |_| {}).unwrap();
        assert!((r2.score_sum - total).abs() < 1e-6, "merging moves scores, never drops them");
        assert_eq!(r2.count, 5, "he@@ w11 is one word");
        assert_eq!(r2.word_probs[0].1[0].0, "hew11");
        assert!((r2.word_probs[0].1[0].1 - (-2.1)).abs() < 1e-6);
        let he = r2.word_stats.iter().find(|w| w.word == "hew11").unwrap();
        assert!(he.is_bpe);
        assert_eq!(he.next_word_count, 1);
    }

    #[test]
    fn byte_level_and_sentencepiece_words() {
        let b = WordPieces::ByteLevel;
        assert!(!b.ends_word("Hel", Some("lo")));
        assert!(b.ends_word("lo", Some("Ġworld")));
        assert!(b.ends_word("lo", Some("</s>")));
        assert!(b.ends_word("</s>", Some("The")));
        let sp = WordPieces::SentencePiece;
        assert!(!sp.ends_word("▁Hel", Some("lo")));
        assert!(sp.ends_word("lo", Some("▁x")));
        assert_eq!("@@ ".parse::<WordPieces>().unwrap(), WordPieces::SubwordNmt);
        assert!("bpe".parse::<WordPieces>().is_err());
    }

    #[test]
    fn batches_respect_both_budgets() {
        let s = |n: usize| LmSample { id: 0, input: vec![5; n], target: vec![5; n] };
        let samples = vec![s(4), s(4), s(4), s(10), s(1)];
        let b = batches(&samples, Some(2), 100);
        assert_eq!(b.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
        let b = batches(&samples, None, 12);
        assert_eq!(b.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![3, 1, 1]);
    }

    #[test]
    fn context_must_leave_room() {
        let o = EvalLmOptions { tokens_per_sample: 4, context_window: 4, ..Default::default() };
        assert!(o.block_size().unwrap_err().to_string().contains("--context-window"));
    }
}
