//! End-to-end tests of the batching module: dataset → plan → epochs → collated batches.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use super::*;

/// `n` synthetic pairs of realistic lengths (mean ≈ 30 tokens incl. EOS, long tail), each
/// ending with EOS.
fn synthetic_pairs(n: usize, seed: u64) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let mut src = Vec::with_capacity(n);
    let mut tgt = Vec::with_capacity(n);
    for _ in 0..n {
        let base = 2 + (0..4).map(|_| next() % 15).sum::<u32>();
        let base = if next() % 50 == 0 { base * 4 } else { base };
        let t_len = (base * (80 + next() % 41) / 100).max(1);
        let mut s: Vec<u32> = (0..base).map(|_| 4 + next() % 8000).collect();
        s.push(EOS);
        let mut t: Vec<u32> = (0..t_len).map(|_| 4 + next() % 8000).collect();
        t.push(EOS);
        src.push(s);
        tgt.push(t);
    }
    (src, tgt)
}

fn dataset(n: usize) -> LanguagePairDataset<Vec<Vec<u32>>> {
    let (src, tgt) = synthetic_pairs(n, 3);
    LanguagePairDataset::new(src, Some(tgt), CollateConfig::default()).unwrap()
}

fn drain(itr: &mut EpochBatchIterator) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    while let Some(b) = itr.next_batch() {
        out.push(b.to_vec());
    }
    out
}

#[test]
fn batches_respect_budgets_and_cover_every_index_once() {
    let ds = dataset(3000);
    let cfg = BatchConfig {
        max_tokens: Some(1024),
        max_source_positions: Some(100),
        max_target_positions: Some(100),
        skip_invalid_size_inputs: true,
        ..BatchConfig::default()
    };
    let plan = ds.plan_batches(&cfg).unwrap();
    assert!(!plan.skipped.is_empty(), "the long tail exceeds 100 positions");
    for &i in &plan.skipped {
        let (s, t) = ds.size(i);
        assert!(s > 100 || t > 100);
    }
    assert_eq!(plan.num_samples() + plan.skipped.len(), ds.len());
    let mut itr = EpochBatchIterator::new(plan.batches.clone(), IteratorConfig::default()).unwrap();
    for epoch in 1..=2 {
        assert_eq!(itr.next_epoch_itr(), epoch);
        let mut seen = HashSet::new();
        while let Some(indices) = itr.next_batch() {
            let batch = ds.batch(indices).unwrap();
            let max_len = indices.iter().map(|&i| ds.num_tokens(i)).max().unwrap();
            assert!(max_len * indices.len() <= 1024);
            assert!(batch.src_tokens.rows * batch.src_tokens.cols <= 1024);
            let target = batch.target.as_ref().unwrap();
            assert!(target.rows * target.cols <= 1024);
            // Sizes are multiples of 8 unless a budget cut them short.
            for &i in indices {
                assert!(seen.insert(i), "index {i} twice in epoch {epoch}");
            }
        }
        let expected: HashSet<usize> =
            (0..ds.len()).filter(|i| !plan.skipped.contains(i)).collect();
        assert_eq!(seen, expected);
    }
    // Most batches are a multiple of 8 sentences.
    let multiples = plan.batches.iter().filter(|b| b.len() % 8 == 0).count();
    assert!(multiples * 10 >= plan.batches.len() * 8, "{multiples}/{}", plan.batches.len());
}

#[test]
fn shards_partition_each_epoch() {
    let ds = dataset(2000);
    let plan = ds
        .plan_batches(&BatchConfig {
            max_tokens: Some(2048),
            skip_invalid_size_inputs: true,
            ..BatchConfig::default()
        })
        .unwrap();
    let n = plan.batches.len();
    // Uneven shards, so that some ranks get a padding batch.
    let world = [3, 4, 5, 7].into_iter().find(|w| !n.is_multiple_of(*w)).unwrap();
    let mut single =
        EpochBatchIterator::new(plan.batches.clone(), IteratorConfig::default()).unwrap();
    for epoch in 1..=2u64 {
        single.next_epoch_itr();
        let all = drain(&mut single);
        let mut per_rank = Vec::new();
        for rank in 0..world {
            let mut itr = EpochBatchIterator::new(
                plan.batches.clone(),
                IteratorConfig {
                    num_shards: world,
                    shard_id: rank,
                    epoch,
                    ..IteratorConfig::default()
                },
            )
            .unwrap();
            assert_eq!(itr.next_epoch_itr(), epoch);
            let got = drain(&mut itr);
            assert_eq!(got.len(), n.div_ceil(world), "every rank runs the same steps");
            per_rank.push(got);
        }
        // Step k of rank r is batch k*world + r of the unsharded epoch; padding is empty.
        for (r, got) in per_rank.iter().enumerate() {
            for (k, b) in got.iter().enumerate() {
                match all.get(k * world + r) {
                    Some(expected) => assert_eq!(b, expected),
                    None => assert!(b.is_empty()),
                }
            }
        }
        let mut union: Vec<Vec<usize>> =
            per_rank.into_iter().flatten().filter(|b| !b.is_empty()).collect();
        union.sort();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(union, sorted);
        // The padding batch collates to an empty batch.
        assert!(ds.batch(&[]).unwrap().is_empty());
    }
}

#[test]
fn resume_mid_epoch_gives_identical_batches() {
    let ds = dataset(1500);
    let plan = ds
        .plan_batches(&BatchConfig {
            max_tokens: Some(1500),
            skip_invalid_size_inputs: true,
            seed: 11,
            ..BatchConfig::default()
        })
        .unwrap();
    let cfg = IteratorConfig { seed: 11, ..IteratorConfig::default() };
    let mut a = EpochBatchIterator::new(plan.batches.clone(), cfg.clone()).unwrap();
    a.next_epoch_itr();
    drain(&mut a);
    a.next_epoch_itr();
    let half = a.len() / 2;
    for _ in 0..half {
        a.next_batch();
    }
    let saved = serde_json::to_string(&a.state_dict()).unwrap();
    let rest: Vec<Batch> = drain(&mut a).iter().map(|b| ds.batch(b).unwrap()).collect();

    // A new process: same data and options, plan again, restore.
    let plan2 = ds
        .plan_batches(&BatchConfig {
            max_tokens: Some(1500),
            skip_invalid_size_inputs: true,
            seed: 11,
            ..BatchConfig::default()
        })
        .unwrap();
    let mut b = EpochBatchIterator::new(plan2.batches, cfg).unwrap();
    b.load_state_dict(&serde_json::from_str(&saved).unwrap()).unwrap();
    assert_eq!(b.next_epoch_itr(), 2);
    let rest2: Vec<Batch> = drain(&mut b).iter().map(|x| ds.batch(x).unwrap()).collect();
    assert_eq!(rest, rest2);
}

/// Throughput of planning and of collating one epoch for ~30k pairs at max_tokens 4096.
/// Run with `cargo test --release -p seqforge-trainer --lib batching::tests::throughput -- --ignored --nocapture`.
#[test]
#[ignore = "timing; run explicitly, preferably with --release"]
fn throughput() {
    let n = 30_000;
    let ds = dataset(n);
    let cfg = BatchConfig {
        max_tokens: Some(4096),
        skip_invalid_size_inputs: true,
        ..BatchConfig::default()
    };
    let t0 = std::time::Instant::now();
    let reps = 20;
    let mut plan = ds.plan_batches(&cfg).unwrap();
    for _ in 1..reps {
        plan = ds.plan_batches(&cfg).unwrap();
    }
    let plan_s = t0.elapsed().as_secs_f64() / reps as f64;
    let nb = plan.batches.len();
    let mut itr = EpochBatchIterator::new(plan.batches.clone(), IteratorConfig::default()).unwrap();
    let t1 = std::time::Instant::now();
    let mut batches = 0usize;
    let mut tokens = 0usize;
    let mut padded = 0usize;
    for _ in 0..3 {
        itr.next_epoch_itr();
        while let Some(indices) = itr.next_batch() {
            let b = ds.batch(indices).unwrap();
            batches += 1;
            tokens += b.ntokens;
            padded += b.target.as_ref().map_or(0, |t| t.rows * t.cols);
        }
    }
    let collate_s = t1.elapsed().as_secs_f64();
    println!(
        "{n} pairs, {} skipped, {nb} batches (mean {:.1} sentences): plan {:.1} ms \
         ({:.0} batches/s planned); collate {:.0} batches/s, {:.2} M target tokens/s; \
         target padding {:.1}%",
        plan.skipped.len(),
        plan.num_samples() as f64 / nb as f64,
        plan_s * 1e3,
        nb as f64 / plan_s,
        batches as f64 / collate_s,
        tokens as f64 / collate_s / 1e6,
        100.0 * (padded - tokens) as f64 / padded as f64
    );
}
