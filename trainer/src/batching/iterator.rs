//! [`EpochBatchIterator`]: per-epoch shuffling and data-parallel sharding of frozen batches,
//! with a position that can be saved in a checkpoint and restored exactly (fairseq's
//! `EpochBatchIterator` + `ShardedIterator`).

use std::sync::Arc;

use super::sampler::{STREAM_EPOCH_SHUFFLE, seeded_shuffle};
use super::{Error, Result};

/// Options of an [`EpochBatchIterator`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IteratorConfig {
    /// Seed; epoch `e` shuffles batches with `seed + e`.
    pub seed: u64,
    /// Number of data-parallel ranks.
    pub num_shards: usize,
    /// This rank.
    pub shard_id: usize,
    /// Shuffle batches each epoch (fairseq: true for training).
    pub shuffle: bool,
    /// The first epoch (fairseq: 1).
    pub epoch: u64,
}

impl Default for IteratorConfig {
    fn default() -> Self {
        Self { seed: 1, num_shards: 1, shard_id: 0, shuffle: true, epoch: 1 }
    }
}

/// The serializable position of an [`EpochBatchIterator`] (fairseq's `state_dict`, version
/// 2, plus fields that let a mid-epoch restore check it is replaying the same batches).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EpochState {
    /// Format version (2).
    pub version: u32,
    /// The epoch to resume (the next one when the last epoch was finished).
    pub epoch: u64,
    /// Batches of that epoch already consumed by this rank (0 = start of the epoch).
    pub iterations_in_epoch: usize,
    /// Whether the epoch's batches are shuffled.
    pub shuffle: bool,
    /// Total number of (unsharded) batches when saved.
    #[serde(default)]
    pub num_batches: Option<usize>,
    /// Number of shards when saved.
    #[serde(default)]
    pub num_shards: Option<usize>,
    /// FNV-1a 64 fingerprint of the batches when saved, as hex.
    #[serde(default)]
    pub batches_fingerprint: Option<String>,
}

/// FNV-1a 64 over the batch structure and indices.
fn fingerprint(batches: &[Vec<usize>]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(batches.len() as u64);
    for b in batches {
        eat(b.len() as u64);
        for &i in b {
            eat(i as u64);
        }
    }
    format!("{h:016x}")
}

/// Rank `shard_id`'s batches out of `batches` (fairseq's `ShardedIterator` with an empty
/// fill value): batches `shard_id, shard_id + num_shards, …`, padded at the end with empty
/// batches to `ceil(len / num_shards)`, so that every rank runs the same number of steps.
pub fn shard_batches(
    batches: &[Vec<usize>],
    num_shards: usize,
    shard_id: usize,
) -> Result<Vec<Vec<usize>>> {
    if num_shards == 0 || shard_id >= num_shards {
        return Err(Error::InvalidConfig(format!(
            "shard_id {shard_id} must be in 0..{num_shards}"
        )));
    }
    let len = batches.len().div_ceil(num_shards);
    let mut out: Vec<Vec<usize>> =
        batches.iter().skip(shard_id).step_by(num_shards).cloned().collect();
    out.resize(len, Vec::new());
    Ok(out)
}

/// One epoch's batches for this rank and how many were consumed.
#[derive(Debug, Clone)]
struct Cursor {
    batches: Vec<Vec<usize>>,
    pos: usize,
}

/// Iterates epochs of frozen batches: shuffled per epoch with `seed + epoch` (the same on
/// every rank), then sharded ([`shard_batches`]); saves and restores its position.
///
/// ```ignore
/// let mut itr = EpochBatchIterator::new(plan.batches, IteratorConfig::default())?;
/// while itr.next_epoch_idx() <= max_epoch {
///     let epoch = itr.next_epoch_itr();
///     while let Some(indices) = itr.next_batch() {
///         let batch = dataset.batch(indices)?; // may be empty on a padded shard
///         // ... train; checkpoint with itr.state_dict()
///     }
/// }
/// ```
#[derive(Debug, Clone)]
pub struct EpochBatchIterator {
    batches: Arc<Vec<Vec<usize>>>,
    fingerprint: String,
    cfg: IteratorConfig,
    epoch: u64,
    cur: Option<Cursor>,
    next: Option<Cursor>,
}

impl EpochBatchIterator {
    /// Iterates over `batches` (from [`super::plan_batches`]; the same on every rank).
    pub fn new(batches: Vec<Vec<usize>>, cfg: IteratorConfig) -> Result<Self> {
        if cfg.num_shards == 0 || cfg.shard_id >= cfg.num_shards {
            return Err(Error::InvalidConfig(format!(
                "shard_id {} must be in 0..{}",
                cfg.shard_id, cfg.num_shards
            )));
        }
        Ok(Self {
            fingerprint: fingerprint(&batches),
            batches: Arc::new(batches),
            epoch: cfg.epoch.max(1),
            cfg,
            cur: None,
            next: None,
        })
    }

    fn cursor(&self, epoch: u64, offset: usize) -> Result<Cursor> {
        let mut all = self.batches.as_ref().clone();
        if self.cfg.shuffle {
            seeded_shuffle(&mut all, self.cfg.seed.wrapping_add(epoch), STREAM_EPOCH_SHUFFLE);
        }
        let batches = shard_batches(&all, self.cfg.num_shards, self.cfg.shard_id)?;
        Ok(Cursor { batches, pos: offset })
    }

    /// The frozen batches (unshuffled, unsharded).
    pub fn frozen_batches(&self) -> &[Vec<usize>] {
        &self.batches
    }

    /// The current epoch (the one being iterated, or the next to start before the first
    /// [`next_epoch_itr`](Self::next_epoch_itr)).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch the next [`next_epoch_itr`](Self::next_epoch_itr) will start or resume.
    pub fn next_epoch_idx(&self) -> u64 {
        if self.next.is_some() {
            self.epoch
        } else if self.cur.is_some() && self.end_of_epoch() {
            self.epoch + 1
        } else {
            self.epoch
        }
    }

    /// Starts the next epoch (or resumes the restored one) and returns its number.
    ///
    /// Calling it again before the current epoch is finished restarts the same epoch from
    /// its beginning (as fairseq does).
    pub fn next_epoch_itr(&mut self) -> u64 {
        self.epoch = self.next_epoch_idx();
        if let Some(next) = self.next.take() {
            self.cur = Some(next);
        } else {
            // Shard parameters were validated in `new`.
            self.cur =
                Some(self.cursor(self.epoch, 0).unwrap_or(Cursor { batches: Vec::new(), pos: 0 }));
        }
        self.epoch
    }

    /// The next batch of this epoch (dataset indices; empty on a padding step of a short
    /// shard), or `None` at the end of the epoch or before the first epoch starts.
    pub fn next_batch(&mut self) -> Option<&[usize]> {
        let cur = self.cur.as_mut()?;
        let b = cur.batches.get(cur.pos)?;
        cur.pos += 1;
        Some(b)
    }

    /// The batches this epoch still has for this rank.
    pub fn remaining(&self) -> &[Vec<usize>] {
        self.cur.as_ref().and_then(|c| c.batches.get(c.pos..)).unwrap_or(&[])
    }

    /// Whether the current epoch has more batches.
    pub fn has_next(&self) -> bool {
        !self.remaining().is_empty()
    }

    /// Whether the current epoch is finished (false before the first epoch starts).
    pub fn end_of_epoch(&self) -> bool {
        self.cur.as_ref().is_some_and(|c| c.pos >= c.batches.len())
    }

    /// Batches of the current epoch consumed by this rank.
    pub fn iterations_in_epoch(&self) -> usize {
        self.cur.as_ref().map_or(0, |c| c.pos)
    }

    /// Steps per epoch for this rank: `ceil(batches / num_shards)`.
    pub fn len(&self) -> usize {
        self.batches.len().div_ceil(self.cfg.num_shards)
    }

    /// Whether there are no batches at all.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// The position to save: the current epoch and batches consumed, or the next epoch at 0
    /// when the current one is finished.
    pub fn state_dict(&self) -> EpochState {
        let (epoch, iterations_in_epoch) = if self.end_of_epoch() {
            (self.epoch + 1, 0)
        } else {
            (self.epoch, self.iterations_in_epoch())
        };
        EpochState {
            version: 2,
            epoch,
            iterations_in_epoch,
            shuffle: self.cfg.shuffle,
            num_batches: Some(self.batches.len()),
            num_shards: Some(self.cfg.num_shards),
            batches_fingerprint: Some(self.fingerprint.clone()),
        }
    }

    /// Restores a position saved by [`state_dict`](Self::state_dict): the next
    /// [`next_epoch_itr`](Self::next_epoch_itr) resumes `state.epoch` after
    /// `state.iterations_in_epoch` batches, yielding exactly the batches that remained.
    ///
    /// Mid-epoch, the batches (fingerprint) and the number of shards must be those saved,
    /// and the offset must lie inside the epoch; at an epoch boundary, data and world size
    /// may change. The shuffle flag of the state is adopted.
    pub fn load_state_dict(&mut self, state: &EpochState) -> Result<()> {
        let offset = state.iterations_in_epoch;
        if offset > 0 {
            if let Some(fp) = &state.batches_fingerprint
                && *fp != self.fingerprint
            {
                return Err(Error::StateMismatch(format!(
                    "saved mid-epoch over batches {fp} ({} batches) but these are {} ({} \
                     batches): the data or batching options changed",
                    state.num_batches.map_or_else(|| "?".to_string(), |n| n.to_string()),
                    self.fingerprint,
                    self.batches.len()
                )));
            }
            if let Some(w) = state.num_shards
                && w != self.cfg.num_shards
            {
                return Err(Error::StateMismatch(format!(
                    "saved mid-epoch with {w} shards, now {}",
                    self.cfg.num_shards
                )));
            }
        }
        self.cfg.shuffle = state.shuffle;
        self.epoch = state.epoch.max(1);
        self.cur = None;
        self.next = None;
        if offset > 0 {
            let cursor = self.cursor(self.epoch, offset)?;
            if offset >= cursor.batches.len() {
                return Err(Error::StateMismatch(format!(
                    "epoch {} has {} batches for this rank, cannot resume after {offset}",
                    self.epoch,
                    cursor.batches.len()
                )));
            }
            self.next = Some(cursor);
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn batches(n: usize) -> Vec<Vec<usize>> {
        (0..n).map(|i| vec![2 * i, 2 * i + 1]).collect()
    }

    fn epoch(itr: &mut EpochBatchIterator) -> Vec<Vec<usize>> {
        let mut out = Vec::new();
        while let Some(b) = itr.next_batch() {
            out.push(b.to_vec());
        }
        out
    }

    #[test]
    fn sharding_pads_with_empty_batches() {
        let b = batches(7);
        let shards: Vec<_> = (0..3).map(|r| shard_batches(&b, 3, r).unwrap()).collect();
        assert_eq!(shards[0], vec![b[0].clone(), b[3].clone(), b[6].clone()]);
        assert_eq!(shards[1], vec![b[1].clone(), b[4].clone(), vec![]]);
        assert_eq!(shards[2], vec![b[2].clone(), b[5].clone(), vec![]]);
        assert!(shard_batches(&b, 3, 3).is_err());
        assert_eq!(shard_batches(&b[..1], 2, 1).unwrap(), vec![Vec::<usize>::new()]);
    }

    #[test]
    fn epochs_shuffle_deterministically() {
        let mut a = EpochBatchIterator::new(batches(50), IteratorConfig::default()).unwrap();
        let mut b = EpochBatchIterator::new(batches(50), IteratorConfig::default()).unwrap();
        assert_eq!(a.next_epoch_idx(), 1);
        assert_eq!(a.next_epoch_itr(), 1);
        assert_eq!(b.next_epoch_itr(), 1);
        let e1 = epoch(&mut a);
        assert_eq!(e1, epoch(&mut b));
        assert!(a.end_of_epoch());
        assert_eq!(a.next_epoch_idx(), 2);
        assert_eq!(a.next_epoch_itr(), 2);
        let e2 = epoch(&mut a);
        assert_ne!(e1, e2);
        let mut sorted = e2.clone();
        sorted.sort();
        assert_eq!(sorted, batches(50));
        // Another seed, another order.
        let mut c = EpochBatchIterator::new(
            batches(50),
            IteratorConfig { seed: 2, ..IteratorConfig::default() },
        )
        .unwrap();
        c.next_epoch_itr();
        assert_ne!(epoch(&mut c), e1);
        // No shuffle: frozen order.
        let mut d = EpochBatchIterator::new(
            batches(5),
            IteratorConfig { shuffle: false, ..IteratorConfig::default() },
        )
        .unwrap();
        d.next_epoch_itr();
        assert_eq!(epoch(&mut d), batches(5));
    }

    #[test]
    fn resume_mid_epoch_replays_the_rest() {
        for (num_shards, shard_id) in [(1, 0), (3, 1), (3, 2)] {
            let cfg = IteratorConfig { seed: 7, num_shards, shard_id, ..IteratorConfig::default() };
            let mut a = EpochBatchIterator::new(batches(41), cfg.clone()).unwrap();
            a.next_epoch_itr();
            epoch(&mut a);
            a.next_epoch_itr(); // epoch 2
            for _ in 0..5 {
                a.next_batch();
            }
            let state = a.state_dict();
            assert_eq!((state.epoch, state.iterations_in_epoch), (2, 5));
            let json = serde_json::to_string(&state).unwrap();
            let rest = epoch(&mut a);
            assert_eq!(rest.len(), 41usize.div_ceil(num_shards) - 5);

            let mut b = EpochBatchIterator::new(batches(41), cfg.clone()).unwrap();
            b.load_state_dict(&serde_json::from_str(&json).unwrap()).unwrap();
            assert_eq!(b.next_epoch_idx(), 2);
            assert_eq!(b.next_epoch_itr(), 2);
            assert_eq!(b.iterations_in_epoch(), 5);
            assert_eq!(epoch(&mut b), rest);
            // Then both continue identically.
            assert_eq!(a.next_epoch_itr(), 3);
            assert_eq!(b.next_epoch_itr(), 3);
            assert_eq!(epoch(&mut a), epoch(&mut b));
            // At the end of an epoch the state points at the next epoch's start.
            let s = b.state_dict();
            assert_eq!((s.epoch, s.iterations_in_epoch), (4, 0));
        }
    }

    #[test]
    fn resume_rejects_other_batches() {
        let mut a = EpochBatchIterator::new(batches(10), IteratorConfig::default()).unwrap();
        a.next_epoch_itr();
        a.next_batch();
        let state = a.state_dict();
        let mut other = EpochBatchIterator::new(batches(11), IteratorConfig::default()).unwrap();
        assert!(matches!(other.load_state_dict(&state), Err(Error::StateMismatch(_))));
        let mut sharded = EpochBatchIterator::new(
            batches(10),
            IteratorConfig { num_shards: 2, ..IteratorConfig::default() },
        )
        .unwrap();
        assert!(matches!(sharded.load_state_dict(&state), Err(Error::StateMismatch(_))));
        // Past the end of the epoch.
        let mut bad = state.clone();
        bad.iterations_in_epoch = 10;
        assert!(a.load_state_dict(&bad).is_err());
        // A fairseq-style state without the extra fields still loads.
        let plain: EpochState = serde_json::from_str(
            r#"{"version":2,"epoch":3,"iterations_in_epoch":4,"shuffle":true}"#,
        )
        .unwrap();
        let mut c = EpochBatchIterator::new(batches(10), IteratorConfig::default()).unwrap();
        c.load_state_dict(&plain).unwrap();
        assert_eq!(c.next_epoch_itr(), 3);
        assert_eq!(epoch(&mut c).len(), 6);
    }

    #[test]
    fn state_before_start_and_empty() {
        let a = EpochBatchIterator::new(batches(3), IteratorConfig::default()).unwrap();
        let s = a.state_dict();
        assert_eq!((s.epoch, s.iterations_in_epoch), (1, 0));
        let mut e = EpochBatchIterator::new(Vec::new(), IteratorConfig::default()).unwrap();
        assert_eq!(e.next_epoch_itr(), 1);
        assert!(e.next_batch().is_none());
        assert_eq!(e.next_epoch_itr(), 2);
        assert!(
            EpochBatchIterator::new(
                batches(3),
                IteratorConfig { num_shards: 2, shard_id: 2, ..IteratorConfig::default() }
            )
            .is_err()
        );
    }
}
