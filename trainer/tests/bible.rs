//! The real corpus end to end: `seqforge-train corpus bible` on the SWORD modules that
//! `cargo xtask setup` unpacked into `.deps/sword`, then a joint BPE whose encode/decode round
//! trip is checked on every line of every split.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use seqforge_testkit::{SkipKind, skip};
use seqforge_trainer::bpe::Bpe;
use seqforge_trainer::corpus::bible::{SOURCE, TARGET};
use seqforge_trainer::corpus::fetch::is_cached;
use unicode_normalization::UnicodeNormalization;

/// The SWORD cache `cargo xtask setup` fills, when it holds both Bibles.
fn sword_cache() -> Option<PathBuf> {
    seqforge_testkit::sword_dir().filter(|dir| is_cached(dir, SOURCE) && is_cached(dir, TARGET))
}

fn run(args: &[&str]) -> Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .context("running seqforge-train")?;
    ensure!(
        out.status.success(),
        "seqforge-train {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn lines(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().map(str::to_string).collect())
}

#[test]
fn bible_corpus_splits_and_bpe_round_trip() -> Result<()> {
    let Some(cache) = sword_cache() else {
        skip!(
            SkipKind::SwordModules,
            "the Bibles are not in .deps/sword (run `cargo xtask setup` without --no-corpus)"
        );
    };
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("corpus");
    let report = run(&[
        "corpus",
        "bible",
        "--out",
        &out.to_string_lossy(),
        "--cache-dir",
        &cache.to_string_lossy(),
    ])?;
    ensure!(report.contains("train 29017, valid 1000, test 1000"), "report: {report}");

    let mut splits = Vec::new();
    for split in ["train", "valid", "test"] {
        let (es, en) =
            (lines(&out.join(format!("{split}.es")))?, lines(&out.join(format!("{split}.en")))?);
        ensure!(es.len() == en.len(), "{split}: {} es lines, {} en lines", es.len(), en.len());
        ensure!(es.iter().chain(&en).all(|l| !l.trim().is_empty()), "{split} has an empty line");
        splits.push((split, es, en));
    }
    // Valid and test share no sentence with train (the Bible repeats verses).
    let train: std::collections::HashSet<&String> =
        splits[0].1.iter().chain(&splits[0].2).collect();
    for (split, es, en) in &splits[1..] {
        let leaked = es.iter().chain(en).filter(|l| train.contains(l)).count();
        ensure!(leaked == 0, "{leaked} {split} lines also occur in train");
    }
    // Spot-check the alignment: Genesis 1:1 is in the corpus as a pair.
    let genesis = splits.iter().find_map(|(_, es, en)| {
        en.iter().position(|l| l.starts_with("In the beginning God created")).map(|i| es[i].clone())
    });
    ensure!(
        genesis.as_deref().is_some_and(|es| es.starts_with("En el principio crió Dios")),
        "Genesis 1:1 is not paired: {genesis:?}"
    );

    let tokenizer = dir.path().join("tokenizer.json");
    run(&[
        "learn-bpe",
        "--input",
        &out.join("train.es").to_string_lossy(),
        &out.join("train.en").to_string_lossy(),
        "--vocab-size",
        "8000",
        "--out",
        &tokenizer.to_string_lossy(),
    ])?;
    let bpe = Bpe::load(&tokenizer)?;
    let mut checked = 0;
    for (split, es, en) in &splits {
        for (i, line) in es.iter().chain(en).enumerate() {
            let ids = bpe.encode_ids(line)?;
            let nfc: String = line.nfc().collect();
            ensure!(bpe.decode(&ids)? == nfc, "{split} line {i} does not round-trip: {line:?}");
            checked += 1;
        }
    }
    ensure!(checked == 2 * 31_017, "checked {checked} lines");
    Ok(())
}

/// A user error is its message only, even with `RUST_BACKTRACE=1` (common on developers'
/// machines), and the log lines before it, written to a pipe, carry no colour codes.
#[test]
fn user_errors_are_messages_and_piped_logs_are_plain() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .args(["corpus", "bible", "--out"])
        .arg(dir.path().join("corpus"))
        .arg("--sword-dir")
        .arg(dir.path().join("no-modules-here"))
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(stderr.contains("--sword-dir"), "no log line to check: {stderr}");
    seqforge_testkit::check_user_error(&out, "no-modules-here")?;
    Ok(())
}
