//! Language models in the training loop (`--task language_modeling`): a toy monolingual corpus
//! with structure to learn (counting sequences) binarized with `preprocess --only-source`,
//! `transformer_lm_tiny` trained with `cross_entropy` and with adaptive input/softmax and
//! `adaptive_loss`; the validation loss falls, `eval-lm` on the validation split reproduces the
//! trainer's validation loss, a killed run resumes from `checkpoint_last` bit-identically, and
//! the task refuses encoder-decoder architectures and translation flags.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::torch_lock;
use seqforge_trainer::eval_lm::{EvalLmArgs, run as eval_lm};
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig};

#[path = "common/lm_corpus.rs"]
mod lm_corpus;

/// The shared counting corpus ([`lm_corpus::counting_lm_data`]).
fn lm_data(dir: &Path) -> PathBuf {
    lm_corpus::counting_lm_data(dir, 0x9e37_79b9_7f4a_7c15).unwrap()
}

fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
    let mut args: Vec<String> = [
        bin.to_str().unwrap(),
        "--task",
        "language_modeling",
        "--tokens-per-sample",
        "32",
        "--sample-break-mode",
        "none",
        "--arch",
        "transformer_lm_tiny",
        "--decoder-embed-dim",
        "32",
        "--decoder-attention-heads",
        "4",
        "--dropout",
        "0.1",
        "--save-dir",
        save.to_str().unwrap(),
        "--cpu",
        "--threads",
        "1",
        "--no-progress-bar",
        "--max-tokens",
        "256",
        "--optimizer",
        "adam",
        "--lr",
        "0.005",
        "--seed",
        "2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_args(args, &Registry::with_builtins().unwrap()).unwrap()
}

/// Adaptive input and softmax over the 16 symbols: bands 0–6, 6–10, 10–16, tied.
const ADAPTIVE: &[&str] = &[
    "--adaptive-input",
    "--adaptive-input-cutoff",
    "6,10",
    "--adaptive-input-factor",
    "2",
    "--adaptive-softmax-cutoff",
    "6,10",
    "--adaptive-softmax-factor",
    "2",
    "--tie-adaptive-weights",
    "--tie-adaptive-proj",
    "--criterion",
    "adaptive_loss",
];

fn eval_args(bin: &Path, ckpt: &Path) -> EvalLmArgs {
    EvalLmArgs {
        data: bin.to_path_buf(),
        path: ckpt.to_path_buf(),
        gen_subset: "valid".into(),
        context_window: 0,
        tokens_per_sample: None,
        sample_break_mode: None,
        batch_size: None,
        max_tokens: 36_000,
        remove_bpe: None,
        output_word_probs: false,
        output_word_stats: false,
        cpu: true,
        threads: Some(1),
    }
}

#[test]
fn language_models_train_evaluate_and_resume() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = lm_data(dir.path());
    for (name, extra) in
        [("plain", &["--share-decoder-input-output-embed"][..]), ("adaptive", ADAPTIVE)]
    {
        let save = dir.path().join(format!("ckpt-{name}"));
        let mut flags = extra.to_vec();
        flags.extend(["--max-update", "120", "--validate-interval-updates", "40"]);
        let cfg = config(&bin, &save, &flags);
        assert_eq!(
            cfg.model_config["tokens_per_sample"], 32,
            "the task sets the model's positions"
        );
        let summary = train::run(&cfg, &Registry::with_builtins().unwrap()).unwrap();
        let losses: Vec<f64> = summary.validations.iter().map(|v| v.metrics.loss).collect();
        eprintln!("{name}: valid losses {losses:?}");
        assert!(losses.len() >= 3, "{losses:?}");
        assert!(losses[losses.len() - 1] < losses[0] * 0.7, "{name} learns: {losses:?}");

        // eval-lm over the same blocks counts the same tokens as the validation, and with a
        // full softmax its loss is the validation's. fairseq's adaptive_loss (reproduced for
        // parity) ignores the in-band id equal to <pad> in every tail, so its loss leaves out
        // those words (here 2 of the 12, which the model then never learns): eval-lm scores
        // every token and so is higher.
        let last = summary.validations.last().unwrap();
        let report = eval_lm(&eval_args(&bin, &save.join("checkpoint_last")), |_, _| {}).unwrap();
        let valid_nll = last.metrics.nll_loss;
        assert_eq!(report.report.count, last.logging.ntokens, "{name}");
        if name == "plain" {
            assert!(
                (report.report.loss - valid_nll).abs() <= 1e-5 * valid_nll.max(1.0),
                "{name}: eval-lm {} vs valid {valid_nll}",
                report.report.loss
            );
        } else {
            assert!(
                report.report.loss >= valid_nll,
                "{name}: {} < {valid_nll}",
                report.report.loss
            );
            assert!(report.report.loss < 16f64.log2(), "{name} beats a uniform guess");
        }
        // A context window scores the same tokens with more context: no worse here.
        let mut wide = eval_args(&bin, &save.join("checkpoint_last"));
        wide.context_window = 16;
        let with_context = eval_lm(&wide, |_, _| {}).unwrap();
        assert_eq!(with_context.report.count, report.report.count);
        eprintln!(
            "{name}: eval-lm loss {:.4} (context 16: {:.4})",
            report.report.loss, with_context.report.loss
        );
    }

    // Resuming a run stopped at 60 updates ends where an uninterrupted 120-update run ends.
    let whole = dir.path().join("whole");
    let full = train::run(
        &config(&bin, &whole, &["--max-update", "120", "--save-interval-updates", "60"]),
        &Registry::with_builtins().unwrap(),
    )
    .unwrap();
    let split = dir.path().join("split");
    train::run(&config(&bin, &split, &["--max-update", "60"]), &Registry::with_builtins().unwrap())
        .unwrap();
    let resumed = train::run(
        &config(&bin, &split, &["--max-update", "120"]),
        &Registry::with_builtins().unwrap(),
    )
    .unwrap();
    assert_eq!(resumed.start_num_updates, 60);
    assert_eq!(resumed.params_digest, full.params_digest, "bit-identical after the resume");
}

#[test]
fn the_task_refuses_what_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let bin = lm_data(dir.path());
    let registry = Registry::with_builtins().unwrap();
    let translation_arch = TrainConfig::from_args(
        [bin.to_str().unwrap(), "--task", "language_modeling", "--arch", "transformer_tiny"],
        &registry,
    )
    .unwrap();
    let e = train::Trainer::new(&translation_arch, &registry).err().unwrap().to_string();
    assert!(e.contains("decoder-only") && e.contains("transformer_tiny"), "{e}");
    let langs = TrainConfig::from_args(
        [
            bin.to_str().unwrap(),
            "--task",
            "language_modeling",
            "--arch",
            "transformer_lm_tiny",
            "-s",
            "de",
        ],
        &registry,
    )
    .unwrap();
    let e = train::Trainer::new(&langs, &registry).err().unwrap().to_string();
    assert!(e.contains("--source-lang"), "{e}");
    // A translation task over a monolingual folder names what it looked for.
    let lm_arch =
        TrainConfig::from_args([bin.to_str().unwrap(), "--arch", "transformer_lm_tiny"], &registry)
            .unwrap();
    let e = train::Trainer::new(&lm_arch, &registry).err().unwrap().to_string();
    assert!(e.contains("idx") || e.contains("language pair"), "{e}");
    // eval-lm on a translation checkpoint is refused.
    let unknown = TrainConfig::from_args(
        [bin.to_str().unwrap(), "--task", "summarization", "--arch", "transformer_lm_tiny"],
        &registry,
    );
    let e = unknown.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(e.contains("unknown task") && e.contains("language_modeling"), "{e}");
}
