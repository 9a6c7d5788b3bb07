//! Shared by the training tests: a small reversal task binarized with the real `preprocess`.

// Each test binary compiles this module and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use seqforge_trainer::data::PreprocessArgs;

/// libtorch's random generator, thread count (and the fp16 tests' call counters) are
/// process-wide: tests that train take turns.
static TORCH: Mutex<()> = Mutex::new(());

/// Takes the training turn (a panicked holder does not poison it for the others).
pub fn torch_lock() -> MutexGuard<'static, ()> {
    TORCH.lock().unwrap_or_else(|e| e.into_inner())
}

/// The reversal task of most training tests: 240 training and 40 validation sentences of 3 to 8
/// words over a 20-word vocabulary, `de` → `en`.
pub const REVERSAL: ToyTask =
    ToyTask { seed: 0x2545_f491_4f6c_dd1d, langs: ("de", "en"), lines: (240, 40), extra_len: 6 };

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
