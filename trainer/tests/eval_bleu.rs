//! `--eval-bleu` end to end on the toy reversal task of the training tests (space
//! detokenization: the toy data has no tokenizer): the valid log line carries `valid_bleu`;
//! BLEU is near 0 for an untrained model and high once the task is learnt; it equals sacreBLEU's
//! corpus BLEU (the runtime's `corpus_bleu`) of hypotheses decoded independently with the
//! runtime's `generate` against the raw reference text; training with `--eval-bleu` makes
//! bit-identical updates; `--best-checkpoint-metric bleu --maximize-best-checkpoint-metric`
//! makes `checkpoint_best` the best-BLEU checkpoint; bad flags are clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::{Path, PathBuf};

use seqforge_runtime::score::{BleuConfig, corpus_bleu};
use seqforge_runtime::search::{GenerationOptions, generate};
use seqforge_schemas::contract::Vocabulary;
use seqforge_trainer::models::TorchDecoder;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig, Trainer};
use serde_json::Value;

/// The reversal task of `train_loop.rs` (240 training and 40 validation sentences of 3 to 8
/// words over a 20-word vocabulary), preprocessed into `dir/bin`.
fn toy_data(dir: &Path) -> PathBuf {
    common::toy_data(dir, &common::REVERSAL)
}

fn config(bin: &Path, save: &Path, extra: &[&str]) -> Result<TrainConfig, train::Error> {
    let mut args: Vec<String> = vec![
        bin.to_string_lossy().into_owned(),
        "--arch".into(),
        "transformer_tiny".into(),
        "--save-dir".into(),
        save.to_string_lossy().into_owned(),
        "--cpu".into(),
        "--threads".into(),
        "1".into(),
        "--no-progress-bar".into(),
        "--max-tokens".into(),
        "400".into(),
        "--lr".into(),
        "0.003".into(),
        "--clip-norm".into(),
        "1.0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_args(args, &Registry::with_builtins().unwrap())
}

/// The `valid` records of a run's JSON log.
fn valid_records(save: &Path) -> Vec<Value> {
    std::fs::read_to_string(save.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["tag"] == "valid")
        .collect()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

/// BLEU of `trainer`'s model on the toy validation set, computed without the trainer's BLEU
/// code: sources from the raw `valid.de` text through `dict.de.txt`, one `generate` call with
/// fairseq's default options, hypotheses as `dict.en.txt` symbols joined by spaces, references
/// the raw `valid.en` lines, scored by `corpus_bleu` (13a).
fn independent_bleu(trainer: &Trainer, raw: &Path, bin: &Path) -> f64 {
    let src = Vocabulary::load(&bin.join("dict.de.txt")).unwrap();
    let tgt = Vocabulary::load(&bin.join("dict.en.txt")).unwrap();
    let sources: Vec<Vec<u32>> = lines(&raw.join("valid.de"))
        .iter()
        .map(|l| {
            let mut ids: Vec<u32> = l.split_whitespace().map(|w| src.id(w).unwrap()).collect();
            ids.push(2);
            ids
        })
        .collect();
    let references = lines(&raw.join("valid.en"));
    let model = trainer.model().step_model().unwrap();
    let results =
        generate(&mut TorchDecoder::new(model), &sources, &GenerationOptions::default()).unwrap();
    let hypotheses: Vec<String> = results
        .iter()
        .map(|h| {
            let tokens = h.first().map(|h| h.tokens.as_slice()).unwrap_or(&[]);
            tokens
                .iter()
                .filter(|&&t| t != 2)
                .map(|&t| tgt.symbol(t).unwrap().to_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    corpus_bleu(&hypotheses, &[&references], &BleuConfig::default()).unwrap().score
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[test]
fn bleu_is_low_untrained_high_trained_and_matches_independent_decoding() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("run");
    let registry = Registry::with_builtins().unwrap();
    // Validations every 100 updates only (an epoch here is ~5 updates).
    let flags = [
        "--eval-bleu",
        "--max-update",
        "500",
        "--validate-interval",
        "1000",
        "--validate-interval-updates",
        "100",
        "--no-epoch-checkpoints",
    ];
    let cfg = config(&bin, &save, &flags).unwrap();
    let trainer = Trainer::new(&cfg, &registry).unwrap();
    let initial = trainer.eval_bleu().unwrap().unwrap();
    assert_eq!(initial.hypotheses.len(), 40, "all validation sentences are decoded");
    assert_eq!(initial.references, lines(&dir.path().join("valid.en")), "space detok");
    let summary = trainer.train().unwrap();
    let records = valid_records(&save);
    assert!(records.len() >= 3, "{records:?}");
    for (r, v) in records.iter().zip(&summary.validations) {
        assert_eq!(r["valid_bleu"].as_f64(), v.bleu.map(round2), "{r}");
    }
    let last = summary.validations.last().unwrap().bleu.unwrap();
    println!(
        "toy BLEU: untrained {:.2}, per validation {:?}",
        initial.score.score,
        summary.validations.iter().map(|v| (v.num_updates, v.bleu)).collect::<Vec<_>>()
    );
    // Measured (CPU, 1 thread): 0.04 untrained; 30, 31, 40, 56, 66 after 100 … 500 updates.
    // An untrained model emits unrelated words (no 4-gram matches); 50 is well above the
    // 300-update level and leaves a margin below the measured 66 for other CPUs' arithmetic.
    assert!(initial.score.score < 5.0, "untrained BLEU {}", initial.score);
    assert!(last > 50.0, "BLEU after 500 updates: {last}");

    // The final model (checkpoint_last, saved right after the last validation) decoded and
    // scored independently gives the same BLEU.
    let resumed = Trainer::new(&cfg, &registry).unwrap();
    assert_eq!(resumed.num_updates(), summary.num_updates);
    let expected = independent_bleu(&resumed, dir.path(), &bin);
    assert_eq!(last, expected);
    assert_eq!(resumed.eval_bleu().unwrap().unwrap().score.score, expected);
}

#[test]
fn eval_bleu_leaves_training_bit_identical() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let registry = Registry::with_builtins().unwrap();
    let run = |save: &str, extra: &[&str]| {
        let mut flags =
            vec!["--max-update", "40", "--validate-interval-updates", "10", "--no-save"];
        flags.extend_from_slice(extra);
        let save = dir.path().join(save);
        let summary = train::run(&config(&bin, &save, &flags).unwrap(), &registry).unwrap();
        (summary, valid_records(&save))
    };
    let (plain, plain_log) = run("plain", &[]);
    let (bleu, bleu_log) = run("bleu", &["--eval-bleu", "--eval-bleu-args", r#"{"beam": 3}"#]);
    assert_eq!(plain.params_digest, bleu.params_digest);
    let losses = |s: &train::TrainSummary| {
        s.validations.iter().map(|v| v.metrics.loss.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(losses(&plain), losses(&bleu));
    assert!(plain_log.iter().all(|r| r.get("valid_bleu").is_none()));
    assert_eq!(bleu_log.len(), plain_log.len());
    assert!(bleu_log.iter().all(|r| r["valid_bleu"].is_number()), "{bleu_log:?}");
}

#[test]
fn best_checkpoint_follows_bleu_when_maximized() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("run");
    let flags = [
        "--eval-bleu",
        "--eval-bleu-args",
        r#"{"beam": 1}"#,
        "--best-checkpoint-metric",
        "bleu",
        "--maximize-best-checkpoint-metric",
        "--max-update",
        "200",
        "--save-interval-updates",
        "25",
        "--no-epoch-checkpoints",
    ];
    let summary =
        train::run(&config(&bin, &save, &flags).unwrap(), &Registry::with_builtins().unwrap())
            .unwrap();
    let bleus: Vec<(u64, f64)> =
        summary.validations.iter().map(|v| (v.num_updates, v.bleu.unwrap())).collect();
    let max = bleus.iter().map(|b| b.1).fold(f64::NEG_INFINITY, f64::max);
    // Every validation here is followed by a save; a tie with the best re-saves checkpoint_best
    // (fairseq's `>=`), so it holds the last validation that reached the maximum.
    let at = bleus.iter().rev().find(|b| b.1 == max).unwrap().0;
    let best = seqforge_trainer::checkpoint::load(save.join("checkpoint_best")).unwrap();
    assert_eq!(best.state.num_updates, at, "BLEU per validation: {bleus:?}");
    assert_eq!(best.state.best, Some(max));
    assert_eq!(best.state.val_loss, Some(max), "the checkpoint's score is its BLEU");
    assert_eq!(summary.best_metric, Some(max));
    let records = valid_records(&save);
    let logged_best = records.last().unwrap()["valid_best_bleu"].as_f64();
    assert_eq!(logged_best, Some(round2(max)));
    let lowest = summary.validations.iter().map(|v| v.metrics.loss).fold(f64::INFINITY, f64::min);
    assert_eq!(summary.best_valid_loss, Some(lowest));
}

#[test]
fn bad_flags_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("run");
    let registry = Registry::with_builtins().unwrap();
    let error = |extra: &[&str]| -> String {
        match config(&bin, &save, extra) {
            Err(e) => e.to_string(),
            Ok(cfg) => {
                Trainer::new(&cfg, &registry).err().map(|e| e.to_string()).unwrap_or_default()
            }
        }
    };
    for bad in [r#"{"beem": 5}"#, r#"{"beam": "five"}"#, r#"{"beam": 5"#, r#"{"beam": 0}"#] {
        let e = error(&["--eval-bleu", "--eval-bleu-args", bad]);
        assert!(e.starts_with("--eval-bleu-args "), "{bad}: {e}");
    }
    let e = error(&["--best-checkpoint-metric", "bleu"]);
    assert!(e.contains("needs --eval-bleu"), "{e}");
    let e = error(&["--best-checkpoint-metric", "blue"]);
    assert!(e.contains("--best-checkpoint-metric blue"), "{e}");
    let e = error(&["--eval-bleu", "--eval-bleu-detok", "tokenizer"]);
    assert!(e.contains("tokenizer.json"), "{e}");
    let e = error(&["--eval-bleu", "--eval-bleu-remove-bpe", "gpt2"]);
    assert!(e.contains("--eval-bleu-remove-bpe"), "{e}");
}
