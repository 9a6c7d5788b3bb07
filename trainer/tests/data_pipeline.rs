//! The data pipeline end to end through the real `seqforge-train` binary: learn a BPE, binarize
//! with it, read the binarized datasets back, decode them to the original text, and batch them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use seqforge_trainer::batching::{
    BatchConfig, CollateConfig, EpochBatchIterator, IteratorConfig, LanguagePairDataset,
    TokenDataset,
};
use seqforge_trainer::bpe::Bpe;
use seqforge_trainer::data::dictionary::Dictionary;
use seqforge_trainer::data::indexed::IndexedDataset;

fn raw() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/fairseq/raw")
}

fn seqforge_train(args: &[&str]) -> Result<std::process::Output> {
    Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("running seqforge-train")
}

fn ok(args: &[&str]) -> Result<String> {
    let out = seqforge_train(args)?;
    ensure!(
        out.status.success(),
        "seqforge-train {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn bpe_preprocess_read_back_and_batch() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let tokenizer = dir.path().join("tokenizer.json");
    let bin = dir.path().join("bin");
    let (train_en, train_de) = (raw().join("train.en"), raw().join("train.de"));
    let printed = ok(&[
        "learn-bpe",
        "--input",
        &train_en.to_string_lossy(),
        &train_de.to_string_lossy(),
        "--vocab-size",
        "400",
        "--min-frequency",
        "1",
        "--check-round-trip",
        "--out",
        &tokenizer.to_string_lossy(),
    ])?;
    ensure!(printed.contains("round trip exact"), "learn-bpe printed {printed:?}");
    ok(&[
        "preprocess",
        "--source-lang",
        "en",
        "--target-lang",
        "de",
        "--trainpref",
        &raw().join("train").to_string_lossy(),
        "--validpref",
        &raw().join("valid").to_string_lossy(),
        "--destdir",
        &bin.to_string_lossy(),
        "--joined-dictionary",
        "--tokenizer",
        &tokenizer.to_string_lossy(),
        "--workers",
        "2",
    ])?;

    // Every binarized line decodes back to the raw text: dictionary ids → BPE pieces → text.
    let bpe = Bpe::load(&tokenizer)?;
    let dict = Dictionary::load(bin.join("dict.en.txt"))?;
    let mut datasets = Vec::new();
    for lang in ["en", "de"] {
        let dataset = IndexedDataset::open(bin.join(format!("train.en-de.{lang}")))?;
        let text = std::fs::read_to_string(raw().join(format!("train.{lang}")))?;
        let lines: Vec<&str> = text.lines().collect();
        ensure!(
            dataset.len() == lines.len(),
            "{lang}: {} items, {} lines",
            dataset.len(),
            lines.len()
        );
        for (i, line) in lines.iter().enumerate() {
            let ids = TokenDataset::get(&dataset, i)?;
            ensure!(ids.last() == Some(&2), "{lang} item {i} does not end with EOS");
            let decoded = bpe.decode_line(&dict.string(&ids))?;
            ensure!(decoded == *line, "{lang} line {i}: {decoded:?} != {line:?}");
        }
        datasets.push(dataset);
    }

    // Batches over the real datasets: within budget, every sentence exactly once per epoch.
    let tgt = datasets.pop().context("no target")?;
    let src = datasets.pop().context("no source")?;
    let n = TokenDataset::len(&src);
    let pairs = LanguagePairDataset::new(src, Some(tgt), CollateConfig::default())?;
    let config = BatchConfig { max_tokens: Some(256), ..Default::default() };
    let plan = pairs.plan_batches(&config)?;
    ensure!(plan.skipped.is_empty(), "skipped {:?}", plan.skipped);
    let mut iterator = EpochBatchIterator::new(
        plan.batches,
        IteratorConfig { seed: 3, num_shards: 1, shard_id: 0, shuffle: true, epoch: 1 },
    )?;
    iterator.next_epoch_itr();
    let mut seen = vec![0usize; n];
    while let Some(indices) = iterator.next_batch() {
        let indices = indices.to_vec();
        let batch = pairs.batch(&indices)?;
        let cost = batch.src_tokens.cols.max(batch.target.as_ref().map_or(0, |t| t.cols))
            * batch.nsentences;
        ensure!(cost <= 256, "batch of {} sentences costs {cost} tokens", batch.nsentences);
        for i in indices {
            seen[i] += 1;
        }
    }
    ensure!(seen.iter().all(|&c| c == 1), "sentences not seen exactly once: {seen:?}");
    Ok(())
}

#[test]
fn mismatched_line_counts_fail_naming_both_files() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("train.en"), "a b\nc d\n")?;
    std::fs::write(dir.path().join("train.de"), "x y\n")?;
    let out = seqforge_train(&[
        "preprocess",
        "--source-lang",
        "en",
        "--target-lang",
        "de",
        "--trainpref",
        &dir.path().join("train").to_string_lossy(),
        "--destdir",
        &dir.path().join("bin").to_string_lossy(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "preprocess accepted mismatched files");
    ensure!(stderr.contains("train.en") && stderr.contains("train.de"), "stderr: {stderr}");
    ensure!(!stderr.contains("panicked"), "stderr: {stderr}");
    Ok(())
}
