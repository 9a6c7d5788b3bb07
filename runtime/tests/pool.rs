//! `runtime::pool::TranslatorPool` on the test fixture's model: input order, empty texts,
//! token counts, option checks, and many threads sharing fewer workers.
#![cfg(feature = "onnx")]

mod common;

use anyhow::{Result, bail, ensure};
use seqforge_runtime::Error;
use seqforge_runtime::onnx::RuntimeOptions;
use seqforge_runtime::pool::{PoolConfig, Translation, TranslatorPool, parse_options};
use seqforge_runtime::search::GenerationOptions;

fn config(model: &std::path::Path) -> PoolConfig {
    PoolConfig {
        runtime: RuntimeOptions { threads: 1, ..RuntimeOptions::default() },
        ..PoolConfig::new(model)
    }
}

fn fast() -> GenerationOptions {
    GenerationOptions { beam: 3, max_len_b: 8, ..GenerationOptions::default() }
}

#[test]
fn translations_come_back_in_input_order_with_empty_texts_empty() -> Result<()> {
    let f = common::fixture()?;
    let pool = TranslatorPool::open(config(&f.model))?;
    ensure!(pool.workers() == 1 && pool.default_options() == &GenerationOptions::default(), "");
    ensure!(pool.source_tokens("hola")? == 5, "4 byte-level symbols + EOS");
    ensure!(pool.source_tokens("")? == 1, "EOS only");
    let long = "a".repeat(70);
    match pool.source_tokens(&long) {
        Err(Error::TextTooLong { index: 0, tokens: 71, max: 64 }) => {}
        other => bail!("expected TextTooLong, got {other:?}"),
    }

    let texts = ["hola mundo", "", "el gato negro", "adios"];
    let forward = pool.translate(&texts, &fast())?;
    ensure!(forward.len() == 4 && forward[1].hypotheses.is_empty(), "{forward:?}");
    for t in [&forward[0], &forward[2], &forward[3]] {
        ensure!(t.hypotheses.len() == 1, "nbest 1: {t:?}");
        let h = &t.hypotheses[0];
        ensure!(
            h.tokens.len() == h.positional_scores.len() && h.tokens.last() == Some(&2),
            "{h:?}"
        );
    }
    // Reversed input: the same batches (sorted by length), so the same results, reversed.
    let reversed: Vec<&str> = texts.iter().rev().copied().collect();
    let mut backward = pool.translate(&reversed, &fast())?;
    backward.reverse();
    ensure!(backward == forward, "{backward:?} vs {forward:?}");
    ensure!(pool.translate(&[], &fast())?.is_empty(), "no texts");

    // What the server sends: the serde form of a translation.
    let json = serde_json::to_value(&forward[0])?;
    let h = &json["hypotheses"][0];
    ensure!(h["text"].is_string() && h["tokens"].is_array() && h["score"].is_number(), "{json}");
    ensure!(
        h["positional_scores"].as_array().map(Vec::len)
            == Some(forward[0].hypotheses[0].tokens.len()),
        "{json}"
    );

    // Over-long texts name their index; bad options are refused before any work.
    match pool.translate(&["ok", &long], &fast()) {
        Err(e @ Error::TextTooLong { index: 1, .. }) => {
            ensure!(e.to_string().contains("text 1"), "{e}")
        }
        other => bail!("expected TextTooLong, got {other:?}"),
    }
    let nbest = GenerationOptions { nbest: 4, ..fast() };
    match pool.translate(&["ok"], &nbest) {
        Err(Error::InvalidOptions { field: Some(f), .. }) if f == "nbest" => {}
        other => bail!("expected InvalidOptions(nbest), got {other:?}"),
    }
    let prefix = parse_options(r#"{"prefix_size": 2}"#, &fast());
    ensure!(matches!(prefix, Err(Error::InvalidOptions { .. })), "{prefix:?}");

    let truncating =
        TranslatorPool::open(PoolConfig { truncate_source: true, ..config(&f.model) })?;
    ensure!(truncating.source_tokens(&long)? == 64, "cut to max_source_positions");
    ensure!(truncating.translate(&[&long], &fast())?[0].hypotheses.len() == 1, "");
    match TranslatorPool::open(PoolConfig { workers: 0, ..config(&f.model) }) {
        Err(Error::InvalidOptions { field: Some(f), .. }) if f == "workers" => {}
        other => bail!("expected InvalidOptions(workers), got {other:?}"),
    }
    Ok(())
}

#[test]
fn six_threads_share_two_workers() -> Result<()> {
    let f = common::fixture()?;
    let pool = TranslatorPool::open(PoolConfig {
        workers: 2,
        max_sentences: Some(2),
        ..config(&f.model)
    })?;
    let texts = ["hola mundo", "el gato negro", "", "buenas noches", "adios amigos"];
    let serial = pool.translate(&texts, &fast())?;
    let results: Vec<Vec<Translation>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6).map(|_| s.spawn(|| pool.translate(&texts, &fast()))).collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?.map_err(Into::into)
            })
            .collect::<Result<_>>()
    })?;
    for r in &results {
        ensure!(r == &serial, "{r:?} vs {serial:?}");
    }
    Ok(())
}

/// With `pad_source_to_multiple`, texts whose lengths round up to the same multiple get the
/// same bits batched together as translated alone (each alone is padded the same way), and
/// lengths are reported rounded up and capped at the model's maximum. (Without the padding
/// this batch does change text 0's scores in their last bits: the test fails with 1.)
#[test]
fn sources_padded_to_a_multiple_batch_without_changing_a_bit() -> Result<()> {
    let f = common::fixture()?;
    let mut cfg = config(&f.model);
    cfg.runtime.pad_source_to_multiple = 8;
    let pool = TranslatorPool::open(cfg)?;
    // 9 to 16 tokens with EOS: one bucket of 16.
    let texts = ["abcdefgh", "ab cd ef gh i", "hola mundo", "adios!!!!!!!!!!"];
    for t in texts {
        ensure!(pool.padded_source_tokens(t)? == 16, "{t}: {}", pool.padded_source_tokens(t)?);
    }
    ensure!(pool.padded_source_tokens("abc")? == 8 && pool.source_tokens("abc")? == 4, "");
    ensure!(pool.padded_source_tokens(&"a".repeat(60))? == 64, "capped at max 64");
    let options = GenerationOptions { beam: 3, nbest: 2, max_len_b: 8, ..Default::default() };
    let together = pool.translate(&texts, &options)?;
    for (i, t) in texts.iter().enumerate() {
        let alone = pool.translate(&[t], &options)?;
        ensure!(alone[0] == together[i], "text {i} differs batched vs alone");
    }
    Ok(())
}
