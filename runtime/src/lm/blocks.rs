//! fairseq's `TokenBlockDataset` (`fairseq/data/token_block_dataset.py` with
//! `token_block_utils_fast.pyx`): the trainer's `language_modeling` task cuts its data with it,
//! and eval-lm (trainer and runtime) cuts what it scores with it: the token stream of a monolingual dataset (every item ends with
//! EOS; an empty line is an item of EOS alone, the document separator) cut into blocks.
//!
//! Break modes (`--sample-break-mode`):
//! - `none`: the concatenated stream in blocks of exactly `--tokens-per-sample` tokens (the
//!   last one shorter), crossing sentence and document boundaries;
//! - `complete`: whole sentences, as many as fit in `--tokens-per-sample` (a longer sentence is
//!   a block of its own);
//! - `complete_doc`: like `complete`, but a block never crosses a document separator, the
//!   separators belong to no block, and blocks of one token are dropped;
//! - `eos`: one sentence per block.
//!
//! A block `stream[s..e]` is the *target*; its *source* (the model's input) is the stream
//! shifted right by one, `stream[s-1..e-1]`, with EOS in front when the block starts an item
//! (fairseq: `torch.cat([eos], buffer[0:e-1])` when `s == 0`). With `--add-bos-token` the source
//! gets BOS in front and the target a padding token, so both grow by one.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

/// How a token stream is cut into blocks (fairseq's `--sample-break-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum BreakMode {
    /// Fixed-size blocks over the whole stream (fairseq's default).
    #[default]
    None,
    /// Whole sentences up to the block size.
    Complete,
    /// Whole sentences up to the block size, never across a document separator.
    CompleteDoc,
    /// One sentence per block.
    Eos,
}

impl BreakMode {
    /// fairseq's name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakMode::None => "none",
            BreakMode::Complete => "complete",
            BreakMode::CompleteDoc => "complete_doc",
            BreakMode::Eos => "eos",
        }
    }
}

impl fmt::Display for BreakMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BreakMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(BreakMode::None),
            "complete" => Ok(BreakMode::Complete),
            "complete_doc" => Ok(BreakMode::CompleteDoc),
            "eos" => Ok(BreakMode::Eos),
            other => Err(format!(
                "unknown sample break mode `{other}` (expected none, complete, complete_doc or eos)"
            )),
        }
    }
}

/// The blocks of a token stream: `(start, end)` offsets into the concatenation of the items
/// (fairseq's `slice_indices`), computed from the item sizes alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBlocks {
    /// `(start, end)` of each block in stream offsets.
    slices: Vec<(u64, u64)>,
    /// Stream offset of each item's first token, plus the total at the end.
    offsets: Vec<u64>,
}

impl TokenBlocks {
    /// Cuts items of `sizes` tokens into blocks of at most `block_size` tokens with `mode`
    /// (`block_size` is ignored by [`BreakMode::Eos`]). A document separator is an item of
    /// one token (EOS alone). `block_size` 0 is an error for the other modes.
    pub fn new(sizes: &[u32], block_size: usize, mode: BreakMode) -> Result<Self> {
        if block_size == 0 && mode != BreakMode::Eos {
            return Err(Error::Options(format!(
                "--tokens-per-sample must be at least 1 with --sample-break-mode {mode}"
            )));
        }
        let mut offsets = Vec::with_capacity(sizes.len() + 1);
        let mut total = 0u64;
        for &s in sizes {
            offsets.push(total);
            total += u64::from(s);
        }
        offsets.push(total);
        let bs = block_size as u64;
        let mut slices = Vec::new();
        match mode {
            BreakMode::None => {
                let mut start = 0;
                while start < total {
                    slices.push((start, (start + bs).min(total)));
                    start += bs;
                }
            }
            BreakMode::Eos => {
                for w in offsets.windows(2) {
                    slices.push((w[0], w[1]));
                }
            }
            BreakMode::Complete => {
                let (mut tok, mut cur) = (0u64, 0u64);
                for &s in sizes {
                    let s = u64::from(s);
                    if cur + s > bs && cur > 0 {
                        slices.push((tok, tok + cur));
                        tok += cur;
                        cur = 0;
                    }
                    cur += s;
                }
                if cur > 0 {
                    slices.push((tok, tok + cur));
                }
            }
            BreakMode::CompleteDoc => {
                // fairseq's loop, with the separator (an item of one token) closing a block.
                let (mut tok, mut cur) = (0u64, 0u64);
                let mut i = 0;
                while i < sizes.len() {
                    let s = u64::from(sizes[i]);
                    if (cur + s <= bs || cur == 0) && s != 1 {
                        cur += s;
                        i += 1;
                    } else {
                        if cur > 1 {
                            slices.push((tok, tok + cur));
                        }
                        tok += cur;
                        cur = 0;
                        if s == 1 {
                            tok += s;
                            i += 1;
                        }
                    }
                }
                if cur > 1 {
                    slices.push((tok, tok + cur));
                }
            }
        }
        Ok(Self { slices, offsets })
    }

    /// Number of blocks.
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    /// Whether there are no blocks.
    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Tokens in each block (fairseq's `sizes`).
    pub fn sizes(&self) -> Vec<usize> {
        self.slices.iter().map(|&(s, e)| (e - s) as usize).collect()
    }

    /// `(start, end)` of block `i` in stream offsets.
    pub fn slice(&self, i: usize) -> Option<(u64, u64)> {
        self.slices.get(i).copied()
    }

    /// Total tokens in the stream.
    pub fn total_tokens(&self) -> u64 {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// Block `i` as `(source, target)`: the target is the stream's `[s, e)`, the source is
    /// `[s-1, e-1)` with `eos` in place of the token before an item's start (see the module
    /// documentation); `item(k)` reads item `k`'s tokens.
    pub fn source_target<F, E>(
        &self,
        i: usize,
        eos: u32,
        mut item: F,
    ) -> std::result::Result<(Vec<u32>, Vec<u32>), E>
    where
        F: FnMut(usize, &mut Vec<u32>) -> std::result::Result<(), E>,
        E: From<Error>,
    {
        let (s, e) = self.slice(i).ok_or_else(|| {
            Error::Data(format!("block {i} out of range ({} blocks)", self.len()))
        })?;
        // Items covering [s, e): the last item starting at or before s, up to the one holding
        // e - 1.
        let first = self.offsets.partition_point(|&o| o <= s).saturating_sub(1);
        let mut buffer = Vec::with_capacity((e - s) as usize + 1);
        let mut k = first;
        let mut tmp = Vec::new();
        while k + 1 < self.offsets.len() && self.offsets[k] < e {
            tmp.clear();
            item(k, &mut tmp)?;
            buffer.extend_from_slice(&tmp);
            k += 1;
        }
        let base = self.offsets[first];
        let (a, b) = ((s - base) as usize, (e - base) as usize);
        let target = buffer.get(a..b).map(<[u32]>::to_vec).ok_or_else(|| {
            Error::Data(format!("block {i}: items shorter than their recorded sizes"))
        })?;
        let source = if a == 0 {
            std::iter::once(eos).chain(buffer[..b - 1].iter().copied()).collect()
        } else {
            buffer[a - 1..b - 1].to_vec()
        };
        Ok((source, target))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EOS: u32 = 2;

    fn items() -> Vec<Vec<u32>> {
        // Two documents separated by an empty line: sentences of 3, 2, 4 and 3 tokens.
        vec![vec![10, 11, 2], vec![12, 2], vec![2], vec![13, 14, 15, 2], vec![16, 17, 2]]
    }

    fn sizes(items: &[Vec<u32>]) -> Vec<u32> {
        items.iter().map(|v| v.len() as u32).collect()
    }

    fn read(items: &[Vec<u32>]) -> impl FnMut(usize, &mut Vec<u32>) -> Result<()> + '_ {
        move |k, out| {
            out.extend_from_slice(&items[k]);
            Ok(())
        }
    }

    #[test]
    fn break_modes_cut_as_fairseq() {
        let it = items();
        let s = sizes(&it);
        // Stream offsets: 0,3,5,6,10,13.
        let none = TokenBlocks::new(&s, 4, BreakMode::None).unwrap();
        assert_eq!(none.slices, vec![(0, 4), (4, 8), (8, 12), (12, 13)]);
        let complete = TokenBlocks::new(&s, 5, BreakMode::Complete).unwrap();
        // 3+2 = 5 fits; then 1 (separator) + 4 = 5; then 3.
        assert_eq!(complete.slices, vec![(0, 5), (5, 10), (10, 13)]);
        let doc = TokenBlocks::new(&s, 5, BreakMode::CompleteDoc).unwrap();
        // The separator closes the first document and belongs to no block.
        assert_eq!(doc.slices, vec![(0, 5), (6, 10), (10, 13)]);
        let doc_big = TokenBlocks::new(&s, 100, BreakMode::CompleteDoc).unwrap();
        assert_eq!(doc_big.slices, vec![(0, 5), (6, 13)]);
        let eos = TokenBlocks::new(&s, 0, BreakMode::Eos).unwrap();
        assert_eq!(eos.sizes(), vec![3, 2, 1, 4, 3]);
        // A sentence longer than the block is a block of its own.
        let long = TokenBlocks::new(&[2, 7, 2], 4, BreakMode::Complete).unwrap();
        assert_eq!(long.slices, vec![(0, 2), (2, 9), (9, 11)]);
        assert!(TokenBlocks::new(&s, 0, BreakMode::None).is_err());
    }

    #[test]
    fn sources_are_targets_shifted_right() {
        let it = items();
        let blocks = TokenBlocks::new(&sizes(&it), 4, BreakMode::None).unwrap();
        let stream: Vec<u32> = it.concat();
        for i in 0..blocks.len() {
            let (src, tgt) = blocks.source_target(i, EOS, read(&it)).unwrap();
            let (s, e) = blocks.slice(i).unwrap();
            assert_eq!(tgt, stream[s as usize..e as usize]);
            assert_eq!(src.len(), tgt.len());
            assert_eq!(&src[1..], &tgt[..tgt.len() - 1]);
        }
        // Block 0 starts the first item: EOS in front. Block 1 ([12? no: stream[4..8]) starts
        // inside item 1 (offset 3..5), so its source starts with the stream's token 3.
        assert_eq!(blocks.source_target(0, EOS, read(&it)).unwrap().0, vec![2, 10, 11, 2]);
        assert_eq!(
            blocks.source_target(1, EOS, read(&it)).unwrap(),
            (vec![12, 2, 2, 13], vec![2, 2, 13, 14])
        );
        let doc = TokenBlocks::new(&sizes(&it), 100, BreakMode::CompleteDoc).unwrap();
        assert_eq!(
            doc.source_target(1, EOS, read(&it)).unwrap(),
            (vec![2, 13, 14, 15, 2, 16, 17], vec![13, 14, 15, 2, 16, 17, 2])
        );
    }

    #[test]
    fn break_mode_names() {
        for m in [BreakMode::None, BreakMode::Complete, BreakMode::CompleteDoc, BreakMode::Eos] {
            assert_eq!(m.as_str().parse::<BreakMode>().unwrap(), m);
        }
        assert!("sentence".parse::<BreakMode>().unwrap_err().contains("complete_doc"));
    }
}
