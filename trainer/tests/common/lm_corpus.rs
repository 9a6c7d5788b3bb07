//! A toy language-modeling corpus shared by the trainer's LM tests and the cross-crate ones
//! (`tests/tests/language_models.rs` includes this file by path).

use std::path::{Path, PathBuf};

use seqforge_trainer::data::PreprocessArgs;

/// Documents of counting runs (`c3 c4 c5 …`, wrapping at 12) over lines of 3–8 words, an empty
/// line between documents (60 in `train`, 8 in `valid`, following the same law from other
/// starting points drawn with xorshift from `seed`), binarized with the real `preprocess
/// --only-source` into `dir/bin`, which it returns.
pub fn counting_lm_data(dir: &Path, seed: u64) -> anyhow::Result<PathBuf> {
    let mut state = seed;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for (split, docs) in [("train", 60), ("valid", 8)] {
        let mut text = String::new();
        for _ in 0..docs {
            let mut w = next(12);
            for _ in 0..(2 + next(3)) {
                let words: Vec<String> = (0..3 + next(6))
                    .map(|_| {
                        w = (w + 1) % 12;
                        format!("c{w}")
                    })
                    .collect();
                text += &(words.join(" ") + "\n");
            }
            text += "\n";
        }
        std::fs::write(dir.join(split), text)?;
    }
    let bin = dir.join("bin");
    let prefix = |s: &str| Some(dir.join(s).to_string_lossy().into_owned());
    seqforge_trainer::data::preprocess::run(&PreprocessArgs {
        only_source: true,
        trainpref: prefix("train"),
        validpref: prefix("valid"),
        destdir: bin.clone(),
        ..PreprocessArgs::default()
    })?;
    Ok(bin)
}
