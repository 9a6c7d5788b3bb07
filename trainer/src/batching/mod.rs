//! Language-pair batching with fairseq's semantics: collating samples into padded batches,
//! ordering and filtering by size, grouping into batches by a token budget, and a resumable,
//! shardable epoch iterator.
//!
//! The pieces, in the order a trainer uses them:
//! 1. a [`TokenDataset`] per side (in memory: `Vec<Vec<u32>>`; on disk: the binarized mmap
//!    dataset). **Convention (fairseq's):** every item already ends with EOS (`</s>` = 2),
//!    because preprocessing appends EOS to every line when binarizing; sizes count that EOS.
//! 2. a [`LanguagePairDataset`] over a source and an optional target dataset;
//! 3. [`plan_batches`] / [`LanguagePairDataset::plan_batches`]: ordered indices (a seeded
//!    permutation, then a stable sort by target size and then by source size, so the final
//!    order is by source size with ties broken by target size, exactly as fairseq's
//!    `ordered_indices`), filtering by `max_source_positions` / `max_target_positions`, and
//!    [`batch_by_size`] (fairseq's `batch_by_size_vec`: a batch's cost is
//!    `max(num_tokens) × n_sentences ≤ max_tokens`, `n_sentences ≤ max_sentences`, sizes a
//!    multiple of `required_batch_size_multiple` where possible);
//! 4. an [`EpochBatchIterator`] over those (frozen) batches: shuffled each epoch with
//!    `seed + epoch`, sharded across data-parallel ranks (rank `r` of `w` takes batches
//!    `r, r + w, r + 2w, …`; shorter shards are padded with empty batches so that every rank
//!    runs the same number of steps), with a serializable position ([`EpochState`]);
//! 5. [`LanguagePairDataset::batch`] collates one batch of indices into a [`Batch`] of flat
//!    `i64` arrays (source left-padded, target right-padded, `prev_output_tokens` = target with
//!    EOS moved to the front).
//!
//! Shuffles use ChaCha8 with a Fisher–Yates written here, so an epoch's order depends only on
//! (seed, epoch) and not on a `rand` version; they are not numpy's, so the order of batches
//! differs from fairseq's for the same seed (the batches themselves are the same when the
//! indices are not shuffled before sorting).

mod dataset;
mod iterator;
mod sampler;

pub use dataset::{
    Batch, CollateConfig, LanguagePairDataset, Sample, Side, Tokens2d, collate, collate_tokens,
};
pub use iterator::{EpochBatchIterator, EpochState, IteratorConfig, shard_batches};
pub use sampler::{
    BatchConfig, BatchPlan, batch_by_size, filter_by_size, ordered_indices, plan_batches,
    seeded_shuffle,
};

/// fairseq's padding index (`<pad>`).
pub const PAD: u32 = 1;
/// fairseq's end-of-sentence index (`</s>`).
pub const EOS: u32 = 2;

/// A boxed error from a dataset implementation.
pub type DatasetError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A dataset implementation failed to produce an item.
    #[error("reading item {index}: {source}")]
    Dataset {
        /// The item.
        index: usize,
        /// The cause.
        #[source]
        source: DatasetError,
    },
    /// An index past the end of a dataset.
    #[error("index {index} is out of range for a dataset of {len} items")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// The dataset's length.
        len: usize,
    },
    /// Source and target datasets differ in length.
    #[error("source has {src} items but target has {tgt}")]
    LengthMismatch {
        /// Source items.
        src: usize,
        /// Target items.
        tgt: usize,
    },
    /// An empty item (items end with EOS, so are never empty).
    #[error("{side} item {index} is empty (items must end with EOS)")]
    EmptyItem {
        /// Which side.
        side: Side,
        /// The item.
        index: usize,
    },
    /// A target item that does not end with EOS, so cannot be shifted into
    /// `prev_output_tokens`.
    #[error("target item {index} ends with {last}, not EOS {eos}")]
    MissingEos {
        /// The item.
        index: usize,
        /// Its last token.
        last: u32,
        /// The expected EOS.
        eos: u32,
    },
    /// A sample longer than the maximum positions (and skipping was not asked for).
    #[error(
        "sample #{index} has invalid size (source {src_size}, target {tgt_size}) since \
         max positions are (source {max_source_positions:?}, target {max_target_positions:?}); \
         {count} samples in all: skip them with --skip-invalid-size-inputs-valid-test"
    )]
    InvalidSize {
        /// The first offending sample, in batching order.
        index: usize,
        /// Its source size.
        src_size: usize,
        /// Its target size (0 without a target).
        tgt_size: usize,
        /// The source limit.
        max_source_positions: Option<usize>,
        /// The target limit.
        max_target_positions: Option<usize>,
        /// How many samples are too long.
        count: usize,
    },
    /// A sample with more tokens than a whole batch may hold.
    #[error("sample #{index} has {num_tokens} tokens, more than max_tokens={max_tokens}")]
    ExceedsMaxTokens {
        /// The sample.
        index: usize,
        /// Its `max(source, target)` size.
        num_tokens: usize,
        /// The budget.
        max_tokens: usize,
    },
    /// Inconsistent batching or iterator options.
    #[error("invalid batching configuration: {0}")]
    InvalidConfig(String),
    /// An iterator state that cannot be restored onto these batches.
    #[error("cannot restore iterator state: {0}")]
    StateMismatch(String),
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A source of tokenized items (sentences as token ids), indexed `0..len()`.
///
/// Items follow fairseq's convention: each ends with EOS ([`EOS`]), and [`size`](Self::size)
/// counts it. Implementations: `Vec<Vec<u32>>` (in memory), the binarized mmap dataset.
pub trait TokenDataset {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The number of tokens of item `i` (including its EOS); `i < len()`.
    fn size(&self, i: usize) -> usize;
    /// The tokens of item `i`.
    fn get(&self, i: usize) -> Result<Vec<u32>>;
    /// All sizes, in index order.
    fn sizes(&self) -> Vec<usize> {
        (0..self.len()).map(|i| self.size(i)).collect()
    }
}

impl TokenDataset for Vec<Vec<u32>> {
    fn len(&self) -> usize {
        <[Vec<u32>]>::len(self)
    }
    fn size(&self, i: usize) -> usize {
        self.as_slice().get(i).map_or(0, Vec::len)
    }
    fn get(&self, i: usize) -> Result<Vec<u32>> {
        self.as_slice()
            .get(i)
            .cloned()
            .ok_or(Error::IndexOutOfRange { index: i, len: <[Vec<u32>]>::len(self) })
    }
}

/// fairseq's binarized datasets: items already end with EOS (preprocess appends it).
impl TokenDataset for crate::data::indexed::IndexedDataset {
    fn len(&self) -> usize {
        crate::data::indexed::IndexedDataset::len(self)
    }
    fn size(&self, i: usize) -> usize {
        self.sizes().get(i).map_or(0, |&s| s as usize)
    }
    fn get(&self, i: usize) -> Result<Vec<u32>> {
        crate::data::indexed::IndexedDataset::get(self, i)
            .map_err(|e| Error::Dataset { index: i, source: Box::new(e) })
    }
    fn sizes(&self) -> Vec<usize> {
        crate::data::indexed::IndexedDataset::sizes(self).iter().map(|&s| s as usize).collect()
    }
}

impl<T: TokenDataset + ?Sized> TokenDataset for &T {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn size(&self, i: usize) -> usize {
        (**self).size(i)
    }
    fn get(&self, i: usize) -> Result<Vec<u32>> {
        (**self).get(i)
    }
    fn sizes(&self) -> Vec<usize> {
        (**self).sizes()
    }
}

impl<T: TokenDataset + ?Sized> TokenDataset for std::sync::Arc<T> {
    fn len(&self) -> usize {
        (**self).len()
    }
    fn size(&self, i: usize) -> usize {
        (**self).size(i)
    }
    fn get(&self, i: usize) -> Result<Vec<u32>> {
        (**self).get(i)
    }
    fn sizes(&self) -> Vec<usize> {
        (**self).sizes()
    }
}

#[cfg(test)]
mod tests;
