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
use seqforge_trainer::train::TrainConfig;
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
    let mut flags = vec!["--decoder-attention", "1"];
    flags.extend(common::EVAL_BLEU_RUN);
    let cfg = config(&bin, &dir.path().join("run"), &flags);
    let names = ["encoder.lstm.weight_ih_l0_reverse", "decoder.encoder_hidden_proj.weight"];
    common::check_trains_evaluates_bleu_and_resumes("lstm", &cfg, &names);
}

#[test]
fn lstm_trains_in_fp16_and_bf16() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = common::toy_data(dir.path(), &common::REVERSAL);
    let config = |save: &Path, flags: &[&str]| config(&bin, save, flags);
    let precisions = [("fp16", "--fp16"), ("bf16", "--bf16")];
    common::check_half_precision_near_fp32("lstm", dir.path(), &config, &precisions);
}
