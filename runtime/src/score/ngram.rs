//! N-gram counting without hashing n-grams: the n-grams of one order become sortable keys
//! (packed into a `u128` when they fit, else slices), sorted and run-length counted; matches
//! are counted by merging two sorted count lists. Counts are the same as Python's `Counter`s.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The Fx hash (rustc's): fast for short keys; tokens are not attacker-chosen hash-flooding
/// input here, and a collision only costs time.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

impl FxHasher {
    const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(Self::SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.hash
    }
}

/// Sorted `(n-gram, count)` runs of one n-gram order.
pub(crate) type Runs<K> = Vec<(K, u64)>;

/// Sorts `keys` and counts equal neighbours.
pub(crate) fn runs<K: Ord + Copy>(mut keys: Vec<K>) -> Runs<K> {
    keys.sort_unstable();
    let mut out: Runs<K> = Vec::with_capacity(keys.len());
    for k in keys {
        match out.last_mut() {
            Some((last, count)) if *last == k => *count += 1,
            _ => out.push((k, 1)),
        }
    }
    out
}

/// `sum(min(hyp[g], reference[g]))` over the n-grams both have.
pub(crate) fn clipped_matches<K: Ord>(hyp: &[(K, u64)], reference: &[(K, u64)]) -> u64 {
    let (mut i, mut j, mut matches) = (0, 0, 0);
    while i < hyp.len() && j < reference.len() {
        match hyp[i].0.cmp(&reference[j].0) {
            Ordering::Less => i += 1,
            Ordering::Greater => j += 1,
            Ordering::Equal => {
                matches += hyp[i].1.min(reference[j].1);
                i += 1;
                j += 1;
            }
        }
    }
    matches
}

/// The element-wise maximum of several references' runs (sacreBLEU's merge of reference
/// n-gram counts).
pub(crate) fn max_runs<K: Ord + Copy>(all: Vec<Runs<K>>) -> Runs<K> {
    let mut iter = all.into_iter();
    let Some(first) = iter.next() else { return Vec::new() };
    let mut merged: Runs<K> = first;
    for next in iter {
        merged.extend(next);
        merged.sort_unstable_by_key(|r| r.0);
        let mut out: Runs<K> = Vec::with_capacity(merged.len());
        for (k, c) in merged {
            match out.last_mut() {
                Some((last, count)) if *last == k => *count = (*count).max(c),
                _ => out.push((k, c)),
            }
        }
        merged = out;
    }
    merged
}

/// The total count of runs.
pub(crate) fn total<K>(runs: &[(K, u64)]) -> u64 {
    runs.iter().map(|r| r.1).sum()
}

/// The runs of every order `1..=max_n` of `symbols`, from a single sort: each position's
/// window of `max_n` symbols is packed `bits` bits per symbol (padded past the end with the
/// all-ones symbol), so the sorted windows list every shorter n-gram sorted too, as the
/// windows' prefixes. Needs `max_n * bits <= 128` and every symbol below `2^bits - 1`.
pub(crate) fn all_order_runs(symbols: &[u32], max_n: usize, bits: u32) -> Vec<Runs<u128>> {
    let pad = (1u128 << bits) - 1;
    let mut keys: Vec<u128> = Vec::with_capacity(symbols.len());
    for i in 0..symbols.len() {
        let mut key = 0u128;
        for j in i..i + max_n {
            key = (key << bits) | symbols.get(j).map_or(pad, |&s| u128::from(s));
        }
        keys.push(key);
    }
    keys.sort_unstable();
    (1..=max_n)
        .map(|n| {
            let shift = bits as usize * (max_n - n);
            let mut out: Runs<u128> = Vec::with_capacity(keys.len());
            for &key in &keys {
                let prefix = key >> shift;
                if prefix & pad == pad {
                    continue; // the window is shorter than n
                }
                match out.last_mut() {
                    Some((last, count)) if *last == prefix => *count += 1,
                    _ => out.push((prefix, 1)),
                }
            }
            out
        })
        .collect()
}

/// Whether [`all_order_runs`] can pack orders up to `max_n` with `bits` bits per symbol.
pub(crate) fn fits(max_n: usize, bits: u32) -> bool {
    max_n as u128 * u128::from(bits) <= 128
}

/// Interns `tokens` as small integers, returning the ids and the bits one id needs.
pub(crate) struct Interner<'a> {
    ids: HashMap<&'a str, u32, BuildHasherDefault<FxHasher>>,
}

impl<'a> Interner<'a> {
    /// An empty interner.
    pub(crate) fn new() -> Self {
        Self { ids: HashMap::default() }
    }

    /// The ids of `tokens`, allocating new ids for unseen tokens.
    pub(crate) fn ids(&mut self, tokens: &[&'a str]) -> Vec<u32> {
        tokens
            .iter()
            .map(|t| {
                let next = self.ids.len() as u32;
                *self.ids.entry(*t).or_insert(next)
            })
            .collect()
    }

    /// Bits for every id allocated so far with the all-ones value left free (at least 1).
    pub(crate) fn bits(&self) -> u32 {
        (u32::BITS - (self.ids.len() as u32).leading_zeros()).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_count_and_merge_like_counters() {
        let h = runs(vec![3u128, 1, 3, 2, 3]);
        let r = runs(vec![3u128, 3, 4, 1, 1]);
        assert_eq!(h, [(1, 1), (2, 1), (3, 3)]);
        assert_eq!(clipped_matches(&h, &r), 1 + 2);
        assert_eq!(max_runs(vec![h.clone(), r.clone()]), [(1, 2), (2, 1), (3, 3), (4, 1)]);
        assert_eq!(total(&h), 5);
    }

    #[test]
    fn all_orders_from_one_sort_equal_per_order_counts() {
        let mut interner = Interner::new();
        let ids = interner.ids(&["a", "b", "a", "c", "a", "b", "a"]);
        assert_eq!(ids, [0, 1, 0, 2, 0, 1, 0]);
        let bits = interner.bits();
        assert_eq!(bits, 2);
        let all = all_order_runs(&ids, 4, bits);
        for (n, got) in (1..=4).zip(&all) {
            let expected = runs(ids.windows(n).collect::<Vec<_>>());
            let got_counts: Vec<u64> = got.iter().map(|r| r.1).collect();
            let expected_counts: Vec<u64> = expected.iter().map(|r| r.1).collect();
            assert_eq!(got_counts, expected_counts, "order {n}");
        }
        assert_eq!(all[1], [(0b0001, 2), (0b0010, 1), (0b0100, 2), (0b1000, 1)]);
        assert!(all_order_runs(&ids[..2], 4, bits)[2].is_empty());
    }
}
