//! N-gram counting without hashing n-grams: the n-grams of one order become sortable keys
//! (packed into a `u128` when they fit, else slices), sorted and run-length counted; matches
//! are counted by merging two sorted count lists. Counts are the same as Python's `Counter`s.

use std::cmp::Ordering;
use std::collections::HashMap;

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

/// Keys of the n-grams of order `n` of `symbols` packed `bits` bits per symbol (the caller
/// checks `n * bits <= 128`).
pub(crate) fn packed_keys(symbols: &[u32], n: usize, bits: u32) -> Vec<u128> {
    if symbols.len() < n {
        return Vec::new();
    }
    symbols
        .windows(n)
        .map(|w| w.iter().fold(0u128, |key, &s| (key << bits) | u128::from(s)))
        .collect()
}

/// Interns `tokens` as small integers, returning the ids and the bits one id needs.
pub(crate) struct Interner<'a> {
    ids: HashMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    /// An empty interner.
    pub(crate) fn new() -> Self {
        Self { ids: HashMap::new() }
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

    /// Bits needed for every id allocated so far (at least 1).
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
    fn packed_keys_distinguish_ngrams() {
        let mut interner = Interner::new();
        let ids = interner.ids(&["a", "b", "a", "c"]);
        assert_eq!(ids, [0, 1, 0, 2]);
        assert_eq!(interner.bits(), 2);
        let keys = packed_keys(&ids, 2, interner.bits());
        assert_eq!(keys, [0b0001, 0b0100, 0b0010]);
        assert!(packed_keys(&ids, 5, 2).is_empty());
    }
}
