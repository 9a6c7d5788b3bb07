//! Batching throughput: planning fairseq-style token-budget batches and collating them, over a
//! synthetic corpus shaped like the Bible data (≈30k pairs, ≈33 BPE tokens per side).
//!
//! Run: `cargo bench -p seqforge-benches --bench batching`. Criterion prints time per
//! iteration; batches/s = batches planned (printed once) / time.

use criterion::{Criterion, criterion_main};
use seqforge_trainer::batching::{BatchConfig, CollateConfig, LanguagePairDataset};

/// Deterministic pseudo-random lengths in 4..=96 with a mean near 33, and token ids ending in EOS.
fn corpus(n: usize, salt: u64) -> Vec<Vec<u32>> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ salt;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = 4
                + (next() % 30 + next() % 30 + next() % 30) as usize / 3 * 2
                + (next() % 8) as usize;
            let mut ids: Vec<u32> = (0..len).map(|_| 4 + (next() % 7996) as u32).collect();
            ids.push(2);
            ids
        })
        .collect()
}

fn batching(c: &mut Criterion) {
    let pairs = LanguagePairDataset::new(
        corpus(30_000, 1),
        Some(corpus(30_000, 2)),
        CollateConfig::default(),
    );
    let Ok(pairs) = pairs else {
        eprintln!("could not build the dataset");
        return;
    };
    let config = BatchConfig { max_tokens: Some(4096), ..Default::default() };
    let Ok(plan) = pairs.plan_batches(&config) else {
        eprintln!("could not plan batches");
        return;
    };
    println!("max_tokens 4096: {} batches over 30000 pairs", plan.batches.len());
    c.bench_function("plan_batches_30k_max_tokens_4096", |b| {
        b.iter(|| pairs.plan_batches(&config).map(|p| p.batches.len()))
    });
    c.bench_function("collate_all_batches_30k_max_tokens_4096", |b| {
        b.iter(|| {
            plan.batches
                .iter()
                .map(|idx| pairs.batch(idx).map(|b| b.ntokens))
                .sum::<Result<usize, _>>()
        })
    });
}

// The macro defines an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::batching);
}
use group::benches;
criterion_main!(benches);
