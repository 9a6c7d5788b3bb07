//! Ordering, size filtering and grouping of indices into batches (fairseq's
//! `ordered_indices`, `filter_indices_by_size` and `batch_by_size`), and the seeded shuffle.

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

use super::{Error, Result};

/// The ChaCha stream used to permute indices before sorting (epoch shuffles use another).
pub(crate) const STREAM_ORDERED_INDICES: u64 = 1;
/// The ChaCha stream used to shuffle batches each epoch.
pub(crate) const STREAM_EPOCH_SHUFFLE: u64 = 2;

/// A uniform integer in `0..bound` (`bound > 0`), by rejection (no modulo bias).
fn below(rng: &mut ChaCha8Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX - bound + 1) % bound;
    loop {
        let r = rng.next_u64();
        if r <= zone {
            return r % bound;
        }
    }
}

/// Shuffles `items` in place with Fisher–Yates driven by ChaCha8 seeded with `seed` on
/// `stream`. Depends only on (`seed`, `stream`, `items.len()`), never on a crate version.
pub fn seeded_shuffle<T>(items: &mut [T], seed: u64, stream: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    for i in (1..items.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        items.swap(i, j);
    }
}

/// fairseq's `LanguagePairDataset.ordered_indices`: a permutation (seeded when
/// `shuffle_seed` is given, else `0..n`), then stable-sorted by target size and then by
/// source size. The result is ordered by source size, ties by target size, remaining ties
/// in permutation order.
pub fn ordered_indices(
    src_sizes: &[usize],
    tgt_sizes: Option<&[usize]>,
    shuffle_seed: Option<u64>,
) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..src_sizes.len()).collect();
    if let Some(seed) = shuffle_seed {
        seeded_shuffle(&mut indices, seed, STREAM_ORDERED_INDICES);
    }
    let tgt = |i: usize| tgt_sizes.and_then(|t| t.get(i).copied()).unwrap_or(0);
    let src = |i: usize| src_sizes.get(i).copied().unwrap_or(0);
    // One stable sort on (src, tgt) equals a stable sort by tgt followed by one by src.
    indices.sort_by_key(|&i| (src(i), tgt(i)));
    indices
}

/// Splits `indices` into those within the maximum positions and those beyond (either side
/// longer than its limit; `None` = no limit), keeping order. fairseq's
/// `filter_paired_dataset_indices_by_size`.
pub fn filter_by_size(
    indices: &[usize],
    src_sizes: &[usize],
    tgt_sizes: Option<&[usize]>,
    max_source_positions: Option<usize>,
    max_target_positions: Option<usize>,
) -> (Vec<usize>, Vec<usize>) {
    let too_long = |size: usize, max: Option<usize>| max.is_some_and(|m| size > m);
    let mut kept = Vec::with_capacity(indices.len());
    let mut ignored = Vec::new();
    for &i in indices {
        let s = src_sizes.get(i).copied().unwrap_or(0);
        let t = tgt_sizes.and_then(|t| t.get(i).copied()).unwrap_or(0);
        if too_long(s, max_source_positions)
            || (tgt_sizes.is_some() && too_long(t, max_target_positions))
        {
            ignored.push(i);
        } else {
            kept.push(i);
        }
    }
    (kept, ignored)
}

/// Groups ordered `indices` into consecutive batches (fairseq's `batch_by_size_vec`).
///
/// `num_tokens[k]` is the size of `indices[k]` (for pairs: `max(src, tgt)`). A batch's cost
/// is `max(num_tokens in batch) × n_sentences` (padding included), kept `≤ max_tokens`;
/// `n_sentences ≤ max_sentences`; batches grow in steps of `required_batch_size_multiple`
/// (a batch is a multiple of it or smaller than it), except where a budget forces a cut.
/// `None` means no limit. A sample bigger than `max_tokens` on its own is an error.
pub fn batch_by_size(
    indices: &[usize],
    num_tokens: &[usize],
    max_tokens: Option<usize>,
    max_sentences: Option<usize>,
    required_batch_size_multiple: usize,
) -> Result<Vec<Vec<usize>>> {
    if indices.len() != num_tokens.len() {
        return Err(Error::InvalidConfig(format!(
            "{} indices but {} sizes",
            indices.len(),
            num_tokens.len()
        )));
    }
    if required_batch_size_multiple == 0 {
        return Err(Error::InvalidConfig("required_batch_size_multiple must be at least 1".into()));
    }
    if max_tokens == Some(0) || max_sentences == Some(0) {
        return Err(Error::InvalidConfig(
            "max_tokens and max_sentences must be positive when given".into(),
        ));
    }
    if let Some(max) = max_tokens
        && let Some(k) = num_tokens.iter().position(|&n| n > max)
    {
        return Err(Error::ExceedsMaxTokens {
            index: indices[k],
            num_tokens: num_tokens[k],
            max_tokens: max,
        });
    }
    let n = indices.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let max_tokens = max_tokens.unwrap_or(usize::MAX);
    let max_sentences = max_sentences.unwrap_or(usize::MAX);
    let mult = required_batch_size_multiple;

    // `ends[..=count]`: ends of the finished batches, then of the batch being grown
    // (`[batch_start, ends[count])`). The tail `[ends[count], pos]` holds samples that wait
    // until the grown batch's size is again a multiple of `mult`.
    let mut ends = vec![0usize; n + 1];
    let mut count = 0usize;
    let mut batch_start = 0usize;
    let mut batch_max = 0usize;
    let mut tail_max = 0usize;
    for (pos, &pos_tokens) in num_tokens.iter().enumerate() {
        tail_max = tail_max.max(pos_tokens);
        let new_end = pos + 1;
        let mut new_max = batch_max.max(tail_max);
        let sentences = new_end - batch_start;
        let overflow = sentences > max_sentences || sentences.saturating_mul(new_max) > max_tokens;
        let size_ok = sentences < mult || sentences.is_multiple_of(mult);
        if overflow {
            // Close the grown batch; the tail (with `pos`) starts the next one. If the tail
            // alone is over budget, it becomes a batch of its own without `pos`.
            let tail_sentences = new_end - ends[count];
            if tail_max.saturating_mul(tail_sentences) > max_tokens {
                count += 1;
                ends[count] = pos;
                tail_max = pos_tokens;
            }
            batch_start = ends[count];
            count += 1;
            new_max = tail_max;
        }
        if overflow || size_ok {
            ends[count] = new_end;
            batch_max = new_max;
            tail_max = 0;
        }
    }
    if ends[count] != n {
        count += 1;
        ends[count] = n;
    }
    let mut batches = Vec::with_capacity(count + 1);
    let mut start = 0;
    for &end in &ends[..=count] {
        if end > start {
            batches.push(indices[start..end].to_vec());
        }
        start = end;
    }
    Ok(batches)
}

/// How to turn a dataset into batches (fairseq's `--max-tokens`, `--batch-size`,
/// `--required-batch-size-multiple`, `--max-source-positions`, `--max-target-positions`,
/// `--skip-invalid-size-inputs-valid-test`, `--seed`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BatchConfig {
    /// Token budget per batch: `max(len) × sentences` (padding included).
    pub max_tokens: Option<usize>,
    /// Maximum sentences per batch (`--batch-size`).
    pub max_sentences: Option<usize>,
    /// Batch sizes are a multiple of this where possible (fairseq default: 8).
    pub required_batch_size_multiple: usize,
    /// Longest source allowed, tokens incl. EOS (fairseq default: 1024).
    pub max_source_positions: Option<usize>,
    /// Longest target allowed, tokens incl. EOS (fairseq default: 1024).
    pub max_target_positions: Option<usize>,
    /// Drop and count too-long samples instead of failing.
    pub skip_invalid_size_inputs: bool,
    /// Permute indices (seeded by `seed`) before the stable sort by size, so that samples of
    /// equal sizes are not in file order (fairseq: true except for the test split).
    pub shuffle: bool,
    /// The seed (fairseq default: 1).
    pub seed: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_tokens: Some(4096),
            max_sentences: None,
            required_batch_size_multiple: 8,
            max_source_positions: Some(1024),
            max_target_positions: Some(1024),
            skip_invalid_size_inputs: false,
            shuffle: true,
            seed: 1,
        }
    }
}

/// The batches of a dataset and what was filtered out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlan {
    /// Batches of dataset indices, in size order (the iterator shuffles them).
    pub batches: Vec<Vec<usize>>,
    /// Samples dropped for exceeding the maximum positions (in batching order).
    pub skipped: Vec<usize>,
}

impl BatchPlan {
    /// Number of samples in the batches.
    pub fn num_samples(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }
}

/// Orders, filters and batches a (pair) dataset given its sizes: [`ordered_indices`], then
/// [`filter_by_size`] (an [`Error::InvalidSize`] naming the first offender unless
/// `skip_invalid_size_inputs`), then [`batch_by_size`] on `max(src, tgt)`.
pub fn plan_batches(
    src_sizes: &[usize],
    tgt_sizes: Option<&[usize]>,
    cfg: &BatchConfig,
) -> Result<BatchPlan> {
    if cfg.max_tokens.is_none() && cfg.max_sentences.is_none() {
        return Err(Error::InvalidConfig(
            "give max_tokens (--max-tokens) or max_sentences (--batch-size)".into(),
        ));
    }
    if let Some(t) = tgt_sizes
        && t.len() != src_sizes.len()
    {
        return Err(Error::LengthMismatch { src: src_sizes.len(), tgt: t.len() });
    }
    let indices = ordered_indices(src_sizes, tgt_sizes, cfg.shuffle.then_some(cfg.seed));
    let (kept, skipped) = filter_by_size(
        &indices,
        src_sizes,
        tgt_sizes,
        cfg.max_source_positions,
        cfg.max_target_positions,
    );
    if let Some(&first) = skipped.first()
        && !cfg.skip_invalid_size_inputs
    {
        return Err(Error::InvalidSize {
            index: first,
            src_size: src_sizes.get(first).copied().unwrap_or(0),
            tgt_size: tgt_sizes.and_then(|t| t.get(first).copied()).unwrap_or(0),
            max_source_positions: cfg.max_source_positions,
            max_target_positions: cfg.max_target_positions,
            count: skipped.len(),
        });
    }
    let num_tokens: Vec<usize> = kept
        .iter()
        .map(|&i| {
            let s = src_sizes.get(i).copied().unwrap_or(0);
            let t = tgt_sizes.and_then(|t| t.get(i).copied()).unwrap_or(0);
            s.max(t)
        })
        .collect();
    let batches = batch_by_size(
        &kept,
        &num_tokens,
        cfg.max_tokens,
        cfg.max_sentences,
        cfg.required_batch_size_multiple,
    )?;
    Ok(BatchPlan { batches, skipped })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Expected batch ends computed by a line-by-line Python transliteration of fairseq
    /// 0.12.2's `batch_by_size_vec` (data_utils_fast.pyx) on the same inputs, indices `0..n`.
    #[rustfmt::skip]
    #[allow(clippy::type_complexity)]
    const FAIRSEQ_CASES: &[(&[usize], Option<usize>, Option<usize>, usize, &[usize])] = &[
(&[15, 7, 19, 4, 15, 17, 10, 11, 7, 6, 5, 11, 3, 15, 9, 10, 11, 20, 10, 5, 10, 9, 15, 16, 1, 18, 7, 3, 13, 6, 15, 7, 9, 9, 7, 13, 14, 11, 18, 14, 15, 15, 6, 12, 12, 6, 18, 8, 3, 20, 7, 8, 6, 16, 14, 4, 14, 4, 1, 9], Some(50), None, 1, &[2, 4, 6, 10, 13, 16, 18, 22, 25, 27, 30, 33, 36, 38, 40, 43, 46, 48, 50, 53, 56, 59, 60]),
(&[16, 16, 2, 19, 10, 16, 12, 5, 13, 2, 8, 17, 9, 18, 17, 1, 17, 15, 4, 7, 11, 19, 16, 20, 9, 2, 2, 14, 15, 15, 15, 19, 16, 16, 5, 15, 1, 9, 19, 14, 14, 18, 17, 5, 5, 12, 16, 6, 15, 16, 5, 19, 18, 10, 7, 19, 17, 1, 15, 14], Some(50), None, 4, &[3, 5, 8, 11, 13, 15, 17, 20, 22, 24, 27, 30, 32, 35, 38, 40, 42, 44, 47, 50, 52, 54, 56, 58, 60]),
(&[15, 5, 13, 2, 8, 15, 4, 13, 20, 11, 10, 6, 8, 18, 6, 11, 15, 3, 9, 5, 14, 14, 4, 19, 16, 6, 3, 1, 11, 7, 20, 18, 13, 2, 12, 8, 5, 5, 10, 4, 14, 1, 5, 5, 12, 15, 8, 17, 19, 19, 17, 16, 1, 7, 18, 6, 10, 18, 16, 11], Some(64), Some(6), 4, &[4, 8, 11, 14, 18, 22, 25, 29, 32, 36, 40, 44, 47, 50, 53, 56, 59, 60]),
(&[9, 12, 19, 10, 6, 4, 4, 9, 10, 19, 1, 6, 1, 9, 5, 13, 3, 10, 18, 14, 5, 13, 18, 1, 16, 1, 20, 2, 9, 2, 9, 11, 3, 5, 12, 10, 8, 10, 8, 13, 2, 17, 5, 18, 5, 10, 11, 6, 16, 17, 1, 7, 12, 10, 8, 2, 11, 7, 4, 13, 10, 17, 5, 5, 17, 16, 14, 6, 8, 14, 20, 8, 8, 6, 7, 2, 7, 19, 1, 11], None, Some(5), 2, &[4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64, 68, 72, 76, 80]),
(&[4, 12, 1, 16, 18, 12, 12, 19, 15, 6, 13, 11, 7, 3, 15, 2, 5, 14, 2, 10, 17, 14, 2, 17, 18, 9, 6, 11, 16, 7, 14, 17, 2, 17, 19, 4, 16, 19, 2, 9, 9, 14, 10, 18, 9, 2, 5, 9, 16, 13, 16, 2, 17, 7, 5, 6, 15, 3, 6, 9], Some(40), Some(10), 8, &[3, 5, 7, 9, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 41, 43, 45, 48, 50, 52, 54, 56, 58, 60]),
(&[1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 5, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9, 10, 10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 15, 15, 15, 15, 15, 15, 16, 16, 16, 16, 16, 16, 17, 17, 17, 17, 17, 17, 18, 18, 18, 18, 18, 18, 19, 19, 19, 19, 19, 20, 20, 20, 20, 20, 20, 20, 20], Some(120), None, 8, &[16, 24, 32, 40, 48, 56, 64, 71, 78, 84, 90, 96, 100]),
    ];

    #[test]
    fn batch_by_size_matches_fairseq() {
        for (k, &(sizes, max_tokens, max_sentences, mult, ends)) in FAIRSEQ_CASES.iter().enumerate()
        {
            let indices: Vec<usize> = (0..sizes.len()).collect();
            let batches = batch_by_size(&indices, sizes, max_tokens, max_sentences, mult).unwrap();
            let mut got = Vec::new();
            let mut acc = 0;
            for b in &batches {
                acc += b.len();
                got.push(acc);
                let max_len = b.iter().map(|&i| sizes[i]).max().unwrap();
                if let Some(mt) = max_tokens {
                    assert!(max_len * b.len() <= mt, "case {k}");
                }
                if let Some(ms) = max_sentences {
                    assert!(b.len() <= ms, "case {k}");
                }
            }
            assert_eq!(got, ends, "case {k}");
        }
    }

    #[test]
    fn batch_by_size_errors() {
        assert!(matches!(
            batch_by_size(&[4, 5], &[3, 9], Some(8), None, 1),
            Err(Error::ExceedsMaxTokens { index: 5, num_tokens: 9, max_tokens: 8 })
        ));
        assert!(batch_by_size(&[1], &[1], Some(8), None, 0).is_err());
        assert!(batch_by_size(&[1], &[1, 2], Some(8), None, 1).is_err());
        assert_eq!(batch_by_size(&[], &[], Some(8), None, 1).unwrap(), Vec::<Vec<usize>>::new());
        // No limits: one batch.
        assert_eq!(
            batch_by_size(&[3, 1, 2], &[5, 5, 5], None, None, 1).unwrap(),
            vec![vec![3, 1, 2]]
        );
    }

    #[test]
    fn ordered_indices_sort_by_source_then_target() {
        let src = [3, 1, 3, 2, 3, 1];
        let tgt = [5, 4, 2, 9, 2, 4];
        let plain = ordered_indices(&src, Some(&tgt), None);
        assert_eq!(plain, vec![1, 5, 3, 2, 4, 0]);
        // Seeded: ties (1,5) and (2,4) may swap, sizes stay ordered, deterministic.
        let a = ordered_indices(&src, Some(&tgt), Some(9));
        assert_eq!(a, ordered_indices(&src, Some(&tgt), Some(9)));
        let keys: Vec<_> = a.iter().map(|&i| (src[i], tgt[i])).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(ordered_indices(&src, None, None), vec![1, 5, 3, 0, 2, 4]);
    }

    #[test]
    fn seeded_shuffle_is_a_deterministic_permutation() {
        let mut a: Vec<u32> = (0..1000).collect();
        let mut b = a.clone();
        seeded_shuffle(&mut a, 5, 0);
        seeded_shuffle(&mut b, 5, 0);
        assert_eq!(a, b);
        let mut c: Vec<u32> = (0..1000).collect();
        seeded_shuffle(&mut c, 6, 0);
        assert_ne!(a, c);
        let mut d: Vec<u32> = (0..1000).collect();
        seeded_shuffle(&mut d, 5, 1);
        assert_ne!(a, d);
        a.sort();
        assert_eq!(a, (0..1000).collect::<Vec<_>>());
        // Pinned: the shuffle must never change (checkpoints replay it).
        let mut e: Vec<u32> = (0..10).collect();
        seeded_shuffle(&mut e, 1, STREAM_EPOCH_SHUFFLE);
        assert_eq!(e, PINNED);
    }

    const PINNED: [u32; 10] = [6, 8, 3, 9, 1, 4, 5, 7, 2, 0];

    #[test]
    fn filtering_and_plan() {
        let src = vec![5, 30, 4, 6, 2];
        let tgt = vec![5, 4, 31, 6, 2];
        let cfg = BatchConfig {
            max_tokens: Some(64),
            max_source_positions: Some(20),
            max_target_positions: Some(20),
            required_batch_size_multiple: 1,
            ..BatchConfig::default()
        };
        let err = plan_batches(&src, Some(&tgt), &cfg).unwrap_err();
        assert!(matches!(err, Error::InvalidSize { count: 2, .. }), "{err}");
        assert!(err.to_string().contains("--skip-invalid-size-inputs-valid-test"));
        let plan = plan_batches(
            &src,
            Some(&tgt),
            &BatchConfig { skip_invalid_size_inputs: true, ..cfg.clone() },
        )
        .unwrap();
        let mut skipped = plan.skipped.clone();
        skipped.sort();
        assert_eq!(skipped, vec![1, 2]);
        assert_eq!(plan.num_samples(), 3);
        assert!(
            plan_batches(
                &src,
                Some(&tgt),
                &BatchConfig { max_tokens: None, max_sentences: None, ..cfg.clone() }
            )
            .is_err()
        );
        // Source-only: targets not checked.
        let plan = plan_batches(&src, None, &BatchConfig { skip_invalid_size_inputs: true, ..cfg })
            .unwrap();
        assert_eq!(plan.skipped, vec![1]);
    }
}
