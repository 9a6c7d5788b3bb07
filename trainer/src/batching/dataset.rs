//! [`LanguagePairDataset`] and fairseq's `collate`: samples into a padded [`Batch`].

use super::{BatchConfig, BatchPlan, EOS, Error, PAD, Result, TokenDataset, plan_batches};

/// Which side of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The source.
    Source,
    /// The target.
    Target,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Target => "target",
        })
    }
}

/// How samples are collated (fairseq's `LanguagePairDataset` options).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollateConfig {
    /// Padding index (fairseq: 1).
    pub pad: u32,
    /// End-of-sentence index (fairseq: 2).
    pub eos: u32,
    /// Pad sources on the left (fairseq default: true).
    pub left_pad_source: bool,
    /// Pad targets on the left (fairseq default: false).
    pub left_pad_target: bool,
    /// Build `prev_output_tokens` (teacher forcing input; fairseq default: true).
    pub input_feeding: bool,
    /// Round padded lengths up to a multiple of this (fairseq `pad_to_multiple`; 1 = off).
    pub pad_to_multiple: usize,
}

impl Default for CollateConfig {
    fn default() -> Self {
        Self {
            pad: PAD,
            eos: EOS,
            left_pad_source: true,
            left_pad_target: false,
            input_feeding: true,
            pad_to_multiple: 1,
        }
    }
}

/// One item of a [`LanguagePairDataset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The index in the dataset.
    pub id: usize,
    /// Source tokens (ending with EOS).
    pub source: Vec<u32>,
    /// Target tokens (ending with EOS), if the dataset has a target side.
    pub target: Option<Vec<u32>>,
}

/// A padded 2-D array of token ids, row-major.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tokens2d {
    /// `rows × cols` values, row after row.
    pub data: Vec<i64>,
    /// Number of rows (the batch size).
    pub rows: usize,
    /// Number of columns (the padded length).
    pub cols: usize,
}

impl Tokens2d {
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Row `r`, if it exists.
    pub fn row(&self, r: usize) -> Option<&[i64]> {
        if r < self.rows { self.data.get(r * self.cols..(r + 1) * self.cols) } else { None }
    }
}

/// A collated batch (fairseq's sample dict), as plain arrays.
///
/// Rows are sorted by descending source length (stable), as in fairseq; `id` gives each
/// row's dataset index.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    /// Dataset index of each row.
    pub id: Vec<i64>,
    /// Number of sentences (rows).
    pub nsentences: usize,
    /// Number of target tokens including EOS (source tokens when there is no target).
    pub ntokens: usize,
    /// `[bsz, src_len]` source tokens, padded on the left by default.
    pub src_tokens: Tokens2d,
    /// Unpadded source lengths (including EOS).
    pub src_lengths: Vec<i64>,
    /// `[bsz, tgt_len]` decoder input: EOS, then the target without its final EOS.
    pub prev_output_tokens: Option<Tokens2d>,
    /// `[bsz, tgt_len]` target tokens, padded on the right by default.
    pub target: Option<Tokens2d>,
}

impl Batch {
    /// Whether the batch has no rows (the padding batch of a short data-parallel shard: the
    /// rank must still take part in the step, contributing nothing).
    pub fn is_empty(&self) -> bool {
        self.nsentences == 0
    }
}

fn padded_len(max_len: usize, pad_to_multiple: usize) -> usize {
    if pad_to_multiple > 1 && !max_len.is_multiple_of(pad_to_multiple) {
        (max_len / pad_to_multiple + 1) * pad_to_multiple
    } else {
        max_len
    }
}

/// Pads token sequences into a 2-D array (fairseq's `collate_tokens`).
///
/// With `move_eos_to_beginning`, each row becomes `[eos] + v[..len-1]` (the last token, which
/// is EOS by convention, is dropped): the teacher-forcing input.
pub fn collate_tokens(
    values: &[&[u32]],
    pad: u32,
    eos: u32,
    left_pad: bool,
    move_eos_to_beginning: bool,
    pad_to_multiple: usize,
) -> Tokens2d {
    let max_len = values.iter().map(|v| v.len()).max().unwrap_or(0);
    let cols = padded_len(max_len, pad_to_multiple);
    let rows = values.len();
    let mut data = vec![i64::from(pad); rows * cols];
    for (row, v) in data.chunks_mut(cols.max(1)).zip(values) {
        let start = if left_pad { cols - v.len() } else { 0 };
        let dst = &mut row[start..start + v.len()];
        if move_eos_to_beginning && !v.is_empty() {
            dst[0] = i64::from(eos);
            for (d, &s) in dst[1..].iter_mut().zip(&v[..v.len() - 1]) {
                *d = i64::from(s);
            }
        } else {
            for (d, &s) in dst.iter_mut().zip(v.iter()) {
                *d = i64::from(s);
            }
        }
    }
    Tokens2d { data, rows, cols }
}

/// Merges samples into a batch (fairseq's `language_pair_dataset.collate`). An empty list
/// gives an empty batch. Samples are expected to be valid (non-empty, targets ending with
/// EOS): [`LanguagePairDataset::get`] checks that.
pub fn collate(samples: &[Sample], cfg: &CollateConfig) -> Batch {
    if samples.is_empty() {
        return Batch::default();
    }
    // Stable sort by descending source length.
    let mut order: Vec<usize> = (0..samples.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(samples[i].source.len()));
    let sorted: Vec<&Sample> = order.iter().map(|&i| &samples[i]).collect();

    let id = sorted.iter().map(|s| s.id as i64).collect();
    let sources: Vec<&[u32]> = sorted.iter().map(|s| s.source.as_slice()).collect();
    let src_tokens =
        collate_tokens(&sources, cfg.pad, cfg.eos, cfg.left_pad_source, false, cfg.pad_to_multiple);
    let src_lengths = sources.iter().map(|s| s.len() as i64).collect();
    let targets: Option<Vec<&[u32]>> =
        sorted.iter().map(|s| s.target.as_deref()).collect::<Option<Vec<_>>>();
    let (target, prev_output_tokens, ntokens) = match targets {
        Some(targets) => {
            let merge = |move_eos| {
                collate_tokens(
                    &targets,
                    cfg.pad,
                    cfg.eos,
                    cfg.left_pad_target,
                    move_eos,
                    cfg.pad_to_multiple,
                )
            };
            let ntokens = targets.iter().map(|t| t.len()).sum();
            let prev = cfg.input_feeding.then(|| merge(true));
            (Some(merge(false)), prev, ntokens)
        }
        None => (None, None, sources.iter().map(|s| s.len()).sum()),
    };
    Batch {
        id,
        nsentences: samples.len(),
        ntokens,
        src_tokens,
        src_lengths,
        prev_output_tokens,
        target,
    }
}

/// A source dataset and an optional aligned target dataset (fairseq's
/// `LanguagePairDataset`). Sizes are read once, at construction.
#[derive(Debug, Clone)]
pub struct LanguagePairDataset<S, T = Vec<Vec<u32>>> {
    src: S,
    tgt: Option<T>,
    src_sizes: Vec<usize>,
    tgt_sizes: Option<Vec<usize>>,
    cfg: CollateConfig,
}

impl<S: TokenDataset, T: TokenDataset> LanguagePairDataset<S, T> {
    /// Pairs `src` with `tgt` (same length), collating with `cfg`.
    pub fn new(src: S, tgt: Option<T>, cfg: CollateConfig) -> Result<Self> {
        if let Some(t) = &tgt
            && t.len() != src.len()
        {
            return Err(Error::LengthMismatch { src: src.len(), tgt: t.len() });
        }
        if cfg.pad_to_multiple == 0 {
            return Err(Error::InvalidConfig("pad_to_multiple must be at least 1".into()));
        }
        let src_sizes = src.sizes();
        let tgt_sizes = tgt.as_ref().map(|t| t.sizes());
        Ok(Self { src, tgt, src_sizes, tgt_sizes, cfg })
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.src_sizes.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.src_sizes.is_empty()
    }

    /// Source sizes (tokens incl. EOS).
    pub fn src_sizes(&self) -> &[usize] {
        &self.src_sizes
    }

    /// Target sizes, if there is a target side.
    pub fn tgt_sizes(&self) -> Option<&[usize]> {
        self.tgt_sizes.as_deref()
    }

    /// The collate options.
    pub fn collate_config(&self) -> &CollateConfig {
        &self.cfg
    }

    /// `max(source size, target size)`: what `max_tokens` budgets.
    pub fn num_tokens(&self, i: usize) -> usize {
        let s = self.src_sizes.get(i).copied().unwrap_or(0);
        let t = self.tgt_sizes.as_ref().and_then(|t| t.get(i).copied()).unwrap_or(0);
        s.max(t)
    }

    /// `(source size, target size)` (target 0 without a target side).
    pub fn size(&self, i: usize) -> (usize, usize) {
        (
            self.src_sizes.get(i).copied().unwrap_or(0),
            self.tgt_sizes.as_ref().and_then(|t| t.get(i).copied()).unwrap_or(0),
        )
    }

    /// Reads pair `i`, checking it: items are non-empty and, when `input_feeding` is on,
    /// targets end with EOS.
    pub fn get(&self, i: usize) -> Result<Sample> {
        if i >= self.len() {
            return Err(Error::IndexOutOfRange { index: i, len: self.len() });
        }
        let source = self.src.get(i)?;
        if source.is_empty() {
            return Err(Error::EmptyItem { side: Side::Source, index: i });
        }
        let target = match &self.tgt {
            Some(t) => {
                let target = t.get(i)?;
                match target.last() {
                    None => {
                        return Err(Error::EmptyItem { side: Side::Target, index: i });
                    }
                    Some(&last) if self.cfg.input_feeding && last != self.cfg.eos => {
                        return Err(Error::MissingEos { index: i, last, eos: self.cfg.eos });
                    }
                    Some(_) => Some(target),
                }
            }
            None => None,
        };
        Ok(Sample { id: i, source, target })
    }

    /// Reads and collates the pairs `indices` (one batch from the iterator). An empty list
    /// gives an empty batch.
    pub fn batch(&self, indices: &[usize]) -> Result<Batch> {
        let samples = indices.iter().map(|&i| self.get(i)).collect::<Result<Vec<_>>>()?;
        Ok(collate(&samples, &self.cfg))
    }

    /// Orders, filters and groups this dataset's indices into batches (see [`plan_batches`]).
    pub fn plan_batches(&self, cfg: &BatchConfig) -> Result<BatchPlan> {
        plan_batches(&self.src_sizes, self.tgt_sizes.as_deref(), cfg)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn collate_hand_made_example() {
        // ids 0..3; sources of lengths 2, 4, 3; targets of lengths 3, 2, 4.
        let src = vec![vec![10, 2], vec![11, 12, 13, 2], vec![14, 15, 2]];
        let tgt = vec![vec![20, 21, 2], vec![22, 2], vec![23, 24, 25, 2]];
        let ds = LanguagePairDataset::new(src, Some(tgt), CollateConfig::default()).unwrap();
        let b = ds.batch(&[0, 1, 2]).unwrap();
        // Sorted by descending source length: ids 1, 2, 0.
        assert_eq!(b.id, vec![1, 2, 0]);
        assert_eq!(b.nsentences, 3);
        assert_eq!(b.ntokens, 3 + 2 + 4);
        assert_eq!(b.src_lengths, vec![4, 3, 2]);
        assert_eq!(b.src_tokens.shape(), [3, 4]);
        #[rustfmt::skip]
        assert_eq!(b.src_tokens.data, vec![
            11, 12, 13, 2,
            1, 14, 15, 2,
            1, 1, 10, 2,
        ]);
        let target = b.target.unwrap();
        assert_eq!(target.shape(), [3, 4]);
        #[rustfmt::skip]
        assert_eq!(target.data, vec![
            22, 2, 1, 1,
            23, 24, 25, 2,
            20, 21, 2, 1,
        ]);
        let prev = b.prev_output_tokens.unwrap();
        #[rustfmt::skip]
        assert_eq!(prev.data, vec![
            2, 22, 1, 1,
            2, 23, 24, 25,
            2, 20, 21, 1,
        ]);
    }

    #[test]
    fn collate_options() {
        let src = vec![vec![10, 2], vec![11, 12, 2]];
        let tgt = vec![vec![20, 2], vec![21, 22, 23, 2]];
        let cfg = CollateConfig {
            left_pad_source: false,
            left_pad_target: true,
            pad_to_multiple: 8,
            ..CollateConfig::default()
        };
        let ds = LanguagePairDataset::new(src.clone(), Some(tgt), cfg).unwrap();
        let b = ds.batch(&[0, 1]).unwrap();
        assert_eq!(b.id, vec![1, 0]);
        assert_eq!(b.src_tokens.shape(), [2, 8]);
        assert_eq!(b.src_tokens.row(1).unwrap(), &[10, 2, 1, 1, 1, 1, 1, 1]);
        let t = b.target.unwrap();
        assert_eq!(t.row(0).unwrap(), &[1, 1, 1, 1, 21, 22, 23, 2]);
        assert_eq!(b.prev_output_tokens.unwrap().row(1).unwrap(), &[1, 1, 1, 1, 1, 1, 2, 20]);
        // Without a target: ntokens counts source tokens.
        let ds = LanguagePairDataset::<_, Vec<Vec<u32>>>::new(src, None, CollateConfig::default())
            .unwrap();
        let b = ds.batch(&[0, 1]).unwrap();
        assert!(b.target.is_none() && b.prev_output_tokens.is_none());
        assert_eq!(b.ntokens, 5);
        // An empty batch.
        let e = ds.batch(&[]).unwrap();
        assert!(e.is_empty());
        assert_eq!(e.src_tokens.shape(), [0, 0]);
    }

    #[test]
    fn invalid_items_are_reported() {
        let ds = LanguagePairDataset::new(
            vec![vec![5, 2], vec![], vec![6, 2]],
            Some(vec![vec![7, 2], vec![8, 2], vec![9]]),
            CollateConfig::default(),
        )
        .unwrap();
        assert!(matches!(ds.batch(&[1]), Err(Error::EmptyItem { side: Side::Source, index: 1 })));
        assert!(matches!(ds.batch(&[0, 2]), Err(Error::MissingEos { index: 2, last: 9, .. })));
        assert!(matches!(ds.batch(&[3]), Err(Error::IndexOutOfRange { index: 3, len: 3 })));
        assert!(matches!(
            LanguagePairDataset::new(vec![vec![2u32]], Some(vec![]), CollateConfig::default()),
            Err(Error::LengthMismatch { src: 1, tgt: 0 })
        ));
    }
}
