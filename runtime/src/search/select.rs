//! Partial selection of the best scored entries, without sorting a whole vocabulary.
//!
//! Every search ranks `(score, index)` pairs the same way: higher score first, ties to the lower
//! index, NaN as `-inf`, `-0.0` equal to `0.0`. A total order, so results never depend on the
//! selection algorithm (nor on how sentences are batched).

use std::cmp::Ordering;

/// Up to this many entries are kept with an insertion scan; more use `select_nth_unstable`.
const SCAN_MAX_K: usize = 32;

#[inline]
fn rank_key(v: f32) -> f32 {
    // `+ 0.0` turns -0.0 into +0.0, so that `total_cmp` treats them as equal.
    if v.is_nan() { f32::NEG_INFINITY } else { v + 0.0 }
}

/// Orders two `(score, index)` pairs best first.
#[inline]
pub(crate) fn best_first(a: (f32, u32), b: (f32, u32)) -> Ordering {
    rank_key(b.0).total_cmp(&rank_key(a.0)).then(a.1.cmp(&b.1))
}

/// Appends to `out`, best first, the `k` best of `value(0) .. value(n - 1)`, each paired with
/// `base + its position`. `scratch` is a reusable buffer.
///
/// Small `k` (a beam's candidates) scans once, keeping a sorted window of `k` entries: one
/// comparison per entry for almost all of the vocabulary. Large `k` uses `select_nth_unstable`
/// and sorts only the selected entries.
pub(crate) fn top_k_by(
    n: usize,
    k: usize,
    base: u32,
    value: impl Fn(usize) -> f32,
    out: &mut Vec<(f32, u32)>,
    scratch: &mut Vec<u32>,
) {
    let k = k.min(n);
    if k == 0 {
        return;
    }
    if k <= SCAN_MAX_K {
        let start = out.len();
        // Once the window is full, anything strictly below its worst score is out: one float
        // comparison for almost every entry (NaN and equal scores take the exact path).
        let mut threshold = f32::NEG_INFINITY;
        for t in 0..n {
            let v = value(t);
            if v < threshold {
                continue;
            }
            let cand = (v, base + t as u32);
            if out.len() - start == k {
                match out.last() {
                    Some(&worst) if best_first(cand, worst) == Ordering::Less => {
                        out.pop();
                    }
                    _ => continue,
                }
            }
            let pos =
                start + out[start..].partition_point(|&x| best_first(x, cand) == Ordering::Less);
            out.insert(pos, cand);
            if out.len() - start == k {
                threshold = out.last().map_or(f32::NEG_INFINITY, |w| rank_key(w.0));
            }
        }
    } else {
        scratch.clear();
        scratch.extend(0..n as u32);
        let cmp = |a: &u32, b: &u32| best_first((value(*a as usize), *a), (value(*b as usize), *b));
        if k < n {
            scratch.select_nth_unstable_by(k - 1, cmp);
            scratch.truncate(k);
        }
        scratch.sort_unstable_by(cmp);
        out.extend(scratch.iter().map(|&t| (value(t as usize), base + t)));
    }
}

/// Keeps the `k` best entries of `pool`, sorted best first.
pub(crate) fn keep_best(pool: &mut Vec<(f32, u32)>, k: usize) {
    if k < pool.len() {
        if k == 0 {
            pool.clear();
            return;
        }
        pool.select_nth_unstable_by(k - 1, |a, b| best_first(*a, *b));
        pool.truncate(k);
    }
    pool.sort_unstable_by(|a, b| best_first(*a, *b));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(values: &[f32], k: usize, base: u32) -> Vec<(f32, u32)> {
        let mut all: Vec<(f32, u32)> =
            values.iter().enumerate().map(|(i, &v)| (v, base + i as u32)).collect();
        all.sort_by(|a, b| best_first(*a, *b));
        all.truncate(k);
        all
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                match i % 11 {
                    // ties, infinities, NaN and signed zeros on purpose
                    0 => -1.5,
                    1 => f32::NEG_INFINITY,
                    2 if i % 3 == 0 => f32::NAN,
                    3 => -0.0,
                    4 => 0.0,
                    _ => -((x % 10_000) as f32) / 100.0,
                }
            })
            .collect()
    }

    #[test]
    fn search_select_matches_a_full_sort_on_both_paths() {
        for seed in 0..20 {
            let values = pseudo_random(500, seed);
            for k in [1, 2, 7, 32, 33, 100, 499, 500, 600] {
                let mut out = vec![(9.0, 9)]; // appends after existing entries
                let mut scratch = Vec::new();
                top_k_by(values.len(), k, 1000, |t| values[t], &mut out, &mut scratch);
                let want = reference(&values, k, 1000);
                assert_eq!(out.len(), want.len() + 1);
                for (got, want) in out[1..].iter().zip(&want) {
                    assert_eq!(got.1, want.1, "seed {seed} k {k}");
                    assert!(got.0.to_bits() == want.0.to_bits() || got.0 == want.0);
                }
            }
        }
    }

    #[test]
    fn search_select_keep_best_sorts_and_truncates() {
        let values = pseudo_random(300, 3);
        let mut pool: Vec<(f32, u32)> =
            values.iter().enumerate().map(|(i, &v)| (v, i as u32)).collect();
        keep_best(&mut pool, 10);
        let want = reference(&values, 10, 0);
        assert_eq!(
            pool.iter().map(|p| p.1).collect::<Vec<_>>(),
            want.iter().map(|p| p.1).collect::<Vec<_>>()
        );
    }
}
