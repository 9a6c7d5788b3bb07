//! Benchmarks live in `benches/`: criterion benches in `benches/benches/`, bench commands that
//! print ratios in `src/bin/`. This library holds what several of them share.

pub mod serving;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use seqforge_trainer::data::PreprocessArgs;

/// A synthetic translation task with a Zipf-like vocabulary of 8,000 words per side: each target
/// is its source reversed, word `sN` becoming `tN`. Returns the binarized folder (`work/bin`, made
/// anew).
pub fn synthetic_corpus(work: &Path, train_sentences: usize) -> Result<PathBuf> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let vocab = 8000u64;
    for (split, lines) in [("train", train_sentences), ("valid", 1000.min(train_sentences))] {
        let (mut src, mut tgt) = (String::new(), String::new());
        for _ in 0..lines {
            let len = 8 + next() % 40;
            // Zipf-like: the square of a uniform draw favours small ids.
            let words: Vec<u64> = (0..len)
                .map(|_| {
                    let u = (next() % 10_000) as f64 / 10_000.0;
                    (u * u * vocab as f64) as u64
                })
                .collect();
            let s: Vec<String> = words.iter().map(|w| format!("s{w}")).collect();
            let t: Vec<String> = words.iter().rev().map(|w| format!("t{w}")).collect();
            src += &(s.join(" ") + "\n");
            tgt += &(t.join(" ") + "\n");
        }
        std::fs::write(work.join(format!("{split}.src")), src)?;
        std::fs::write(work.join(format!("{split}.tgt")), tgt)?;
    }
    let bin = work.join("bin");
    // This function's own output: remade each time (preprocessing refuses to overwrite).
    if bin.exists() {
        std::fs::remove_dir_all(&bin).with_context(|| format!("removing {}", bin.display()))?;
    }
    let prefix = |s: &str| Some(work.join(s).to_string_lossy().into_owned());
    seqforge_trainer::data::preprocess::run(&PreprocessArgs {
        source_lang: Some("src".into()),
        target_lang: Some("tgt".into()),
        trainpref: prefix("train"),
        validpref: prefix("valid"),
        destdir: bin.clone(),
        ..PreprocessArgs::default()
    })
    .context("preprocessing the synthetic corpus")?;
    Ok(bin)
}
