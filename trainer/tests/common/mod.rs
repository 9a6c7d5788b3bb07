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

/// The flags of a 150-update run validating every 50 updates with `--eval-bleu` (beam 2).
pub const EVAL_BLEU_RUN: &[&str] = &[
    "--eval-bleu",
    "--eval-bleu-args",
    r#"{"beam": 2}"#,
    "--max-update",
    "150",
    "--validate-interval",
    "1000",
    "--validate-interval-updates",
    "50",
    "--no-epoch-checkpoints",
];

/// Trains `cfg` (an [`EVAL_BLEU_RUN`]): the validation loss falls by more than 1, every
/// validation has a BLEU, and `checkpoint_last` resumes at update 150 with each of `names` in
/// the state dict and the same validation loss.
pub fn check_trains_evaluates_bleu_and_resumes(
    family: &str,
    cfg: &seqforge_trainer::train::TrainConfig,
    names: &[&str],
) {
    use seqforge_trainer::registry::Registry;
    use seqforge_trainer::train::Trainer;
    let registry = Registry::with_builtins().unwrap();
    let trainer = Trainer::new(cfg, &registry).unwrap();
    let (initial, _, _) = trainer.validate().unwrap().unwrap();
    let untrained = trainer.eval_bleu().unwrap().unwrap();
    assert_eq!(untrained.hypotheses.len(), 40);
    let summary = trainer.train().unwrap();
    assert_eq!(summary.num_updates, 150);
    let losses: Vec<f64> = summary.validations.iter().map(|v| v.metrics.loss).collect();
    let bleus: Vec<Option<f64>> = summary.validations.iter().map(|v| v.bleu).collect();
    println!("{family} toy run: valid loss {} → {losses:?}, BLEU {bleus:?}", initial.loss);
    let last = *losses.last().unwrap();
    assert!(last < initial.loss - 1.0, "valid loss {} → {last}", initial.loss);
    assert!(bleus.iter().all(Option::is_some), "{bleus:?}");

    // checkpoint_last holds fairseq's names and resumes at the same update.
    let resumed = Trainer::new(cfg, &registry).unwrap();
    assert_eq!(resumed.num_updates(), 150);
    let have: Vec<String> = resumed.model().state_dict().into_iter().map(|(n, _)| n).collect();
    for name in names {
        assert!(have.iter().any(|n| n == name), "{name} not in {have:?}");
    }
    let (again, _, _) = resumed.validate().unwrap().unwrap();
    assert_eq!(again.loss, last);
}

/// 30 updates of `config(save_dir, extra flags)` in fp32 and with each of `precisions`
/// (`(name, flag)`): the final training losses within 0.5 of fp32's.
pub fn check_half_precision_near_fp32(
    family: &str,
    dir: &Path,
    config: &dyn Fn(&Path, &[&str]) -> seqforge_trainer::train::TrainConfig,
    precisions: &[(&str, &str)],
) {
    use seqforge_trainer::registry::Registry;
    let run = |name: &str, flag: Option<&str>| {
        let mut flags = vec!["--max-update", "30", "--no-save", "--validate-interval", "1000"];
        flags.extend(flag);
        let summary = seqforge_trainer::train::run(
            &config(&dir.join(name), &flags),
            &Registry::with_builtins().unwrap(),
        )
        .unwrap();
        assert_eq!(summary.num_updates, 30, "{name}");
        summary.epochs.last().unwrap().train.loss
    };
    let fp32 = run("fp32", None);
    for (name, flag) in precisions {
        let loss = run(name, Some(flag));
        println!("{family} train loss after 30 updates: fp32 {fp32}, {name} {loss}");
        assert!(loss.is_finite() && (loss - fp32).abs() < 0.5, "{name}: {loss} vs fp32 {fp32}");
    }
}
