//! The `lstm` model family in the training loop, on the toy reversal task of the training
//! tests: `--arch lstm_wiseman_iwslt_de_en` with fairseq's model flags trains (the validation
//! loss falls), `--eval-bleu` decodes it through its `StepModel`, `checkpoint_last` resumes,
//! and fp16/bf16 runs end near the fp32 run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::Path;

use seqforge_schemas::arch::lstm::LstmConfig;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, TrainConfig, Trainer};
use serde_json::Value;

/// The Wiseman preset shrunk for the toy task with fairseq's flags.
fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
    let mut args: Vec<String> = [
        bin.to_str().unwrap(),
        "--arch",
        "lstm_wiseman_iwslt_de_en",
        "--encoder-embed-dim",
        "32",
        "--encoder-hidden-size",
        "24",
        "--encoder-bidirectional",
        "--decoder-embed-dim",
        "32",
        "--decoder-out-embed-dim",
        "32",
        "--dropout",
        "0.1",
        "--save-dir",
        save.to_str().unwrap(),
        "--cpu",
        "--threads",
        "1",
        "--no-progress-bar",
        "--max-tokens",
        "400",
        "--optimizer",
        "adam",
        "--lr",
        "0.005",
        "--clip-norm",
        "1.0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_args(args, &Registry::with_builtins().unwrap()).unwrap()
}

#[test]
fn flags_override_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), &["--decoder-attention", "False"]);
    assert_eq!(cfg.model, "lstm");
    let c: LstmConfig = serde_json::from_value(cfg.model_config.clone()).unwrap();
    assert_eq!((c.encoder_embed_dim, c.encoder_hidden(), c.encoder_output_units()), (32, 24, 48));
    assert_eq!((c.decoder_embed_dim, c.decoder_hidden(), c.decoder_out_embed_dim), (32, 32, 32));
    assert!(c.encoder_bidirectional && !c.decoder_attention);
    // The preset's own dropouts stay; the others follow --dropout.
    assert_eq!(c.encoder_dropouts(), (0.0, 0.0));
    assert_eq!(c.decoder_dropouts(), (0.0, 0.1));
    let plain = TrainConfig::from_args(
        [dir.path().to_str().unwrap(), "--arch", "lstm_luong_wmt_en_de"],
        &Registry::with_builtins().unwrap(),
    )
    .unwrap();
    assert_eq!(plain.model_config["encoder_layers"], Value::from(4));
    let bad = TrainConfig::from_args(
        [dir.path().to_str().unwrap(), "--arch", "lstm", "--decoder-attention", "maybe"],
        &Registry::with_builtins().unwrap(),
    );
    assert!(bad.is_err());
}

#[test]
fn lstm_trains_evaluates_bleu_and_resumes() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = common::toy_data(dir.path(), &common::REVERSAL);
    let save = dir.path().join("run");
    let flags = [
        "--decoder-attention",
        "1",
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
    let cfg = config(&bin, &save, &flags);
    let registry = Registry::with_builtins().unwrap();
    let trainer = Trainer::new(&cfg, &registry).unwrap();
    let (initial, _, _) = trainer.validate().unwrap().unwrap();
    let untrained = trainer.eval_bleu().unwrap().unwrap();
    assert_eq!(untrained.hypotheses.len(), 40);
    let summary = trainer.train().unwrap();
    assert_eq!(summary.num_updates, 150);
    let losses: Vec<f64> = summary.validations.iter().map(|v| v.metrics.loss).collect();
    let bleus: Vec<Option<f64>> = summary.validations.iter().map(|v| v.bleu).collect();
    println!("lstm toy run: valid loss {} → {losses:?}, BLEU {bleus:?}", initial.loss);
    let last = *losses.last().unwrap();
    assert!(last < initial.loss - 1.0, "valid loss {} → {last}", initial.loss);
    assert!(bleus.iter().all(Option::is_some), "{bleus:?}");

    // checkpoint_last holds fairseq's names and resumes at the same update.
    let resumed = Trainer::new(&cfg, &registry).unwrap();
    assert_eq!(resumed.num_updates(), 150);
    let names: Vec<String> = resumed.model().state_dict().into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"encoder.lstm.weight_ih_l0_reverse".to_string()), "{names:?}");
    assert!(names.contains(&"decoder.encoder_hidden_proj.weight".to_string()), "{names:?}");
    let (again, _, _) = resumed.validate().unwrap().unwrap();
    assert_eq!(again.loss, last);
}

#[test]
fn lstm_trains_in_fp16_and_bf16() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = common::toy_data(dir.path(), &common::REVERSAL);
    let run = |name: &str, flag: Option<&str>| {
        let mut flags = vec!["--max-update", "30", "--no-save", "--validate-interval", "1000"];
        flags.extend(flag);
        let summary = train::run(
            &config(&bin, &dir.path().join(name), &flags),
            &Registry::with_builtins().unwrap(),
        )
        .unwrap();
        assert_eq!(summary.num_updates, 30, "{name}");
        summary.epochs.last().unwrap().train.loss
    };
    let fp32 = run("fp32", None);
    for (name, flag) in [("fp16", "--fp16"), ("bf16", "--bf16")] {
        let loss = run(name, Some(flag));
        println!("lstm train loss after 30 updates: fp32 {fp32}, {name} {loss}");
        assert!(loss.is_finite() && (loss - fp32).abs() < 0.5, "{name}: {loss} vs fp32 {fp32}");
    }
}
