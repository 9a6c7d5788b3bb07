//! Shared by the training tests: a small reversal task binarized with the real `preprocess`.

use std::path::{Path, PathBuf};

use seqforge_trainer::data::PreprocessArgs;

/// How to make the toy task.
pub struct ToyTask {
    /// xorshift seed for the word choices.
    pub seed: u64,
    /// Source and target language suffixes.
    pub langs: (&'static str, &'static str),
    /// Sentences in `train` and `valid`.
    pub lines: (usize, usize),
    /// Sentence lengths are `3 + next(extra_len)` words.
    pub extra_len: u64,
}

/// Writes `{split}.{src}` / `{split}.{tgt}` (target = source reversed, over a 20-word
/// vocabulary) and preprocesses them into `dir/bin`, which it returns.
pub fn toy_data(dir: &Path, task: &ToyTask) -> PathBuf {
    let mut state = task.seed;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let (src_lang, tgt_lang) = task.langs;
    for (split, lines) in [("train", task.lines.0), ("valid", task.lines.1)] {
        let (mut src, mut tgt) = (String::new(), String::new());
        for _ in 0..lines {
            let len = 3 + next(task.extra_len);
            let words: Vec<u64> = (0..len).map(|_| next(20)).collect();
            let s: Vec<String> = words.iter().map(|w| format!("w{w}")).collect();
            let t: Vec<String> = words.iter().rev().map(|w| format!("v{w}")).collect();
            src += &(s.join(" ") + "\n");
            tgt += &(t.join(" ") + "\n");
        }
        std::fs::write(dir.join(format!("{split}.{src_lang}")), src).unwrap();
        std::fs::write(dir.join(format!("{split}.{tgt_lang}")), tgt).unwrap();
    }
    let bin = dir.join("bin");
    let prefix = |s: &str| Some(dir.join(s).to_string_lossy().into_owned());
    seqforge_trainer::data::preprocess::run(&PreprocessArgs {
        source_lang: Some(src_lang.into()),
        target_lang: Some(tgt_lang.into()),
        trainpref: prefix("train"),
        validpref: prefix("valid"),
        destdir: bin.clone(),
        ..PreprocessArgs::default()
    })
    .unwrap();
    bin
}
