//! The `fconv` (ConvS2S) family in the training loop, on the toy reversal task of the training
//! tests, with fairseq's recipe (`--optimizer nag --lr 0.25 --clip-norm 0.1 --lr-scheduler
//! fixed --force-anneal`): flags and layer specs override the preset (a malformed spec is an
//! error quoting it), the validation loss falls, `--eval-bleu` decodes through the family's
//! `StepModel`, `checkpoint_last` resumes with fairseq's names, and an fp16 run ends near the
//! fp32 run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::Path;

use seqforge_schemas::arch::fconv::FConvConfig;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::TrainConfig;

/// `fconv_iwslt_de_en` shrunk for the toy task, with fairseq's ConvS2S optimisation recipe.
fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
    let mut args: Vec<String> = [
        bin.to_str().unwrap(),
        "--arch",
        "fconv_iwslt_de_en",
        "--encoder-embed-dim",
        "32",
        "--decoder-embed-dim",
        "32",
        "--decoder-out-embed-dim",
        "32",
        "--encoder-layers",
        "[(48, 3)] * 2",
        "--decoder-layers",
        "[(48, 3)] * 2",
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
        "nag",
        "--lr",
        "0.25",
        "--clip-norm",
        "0.1",
        "--lr-scheduler",
        "fixed",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_args(args, &Registry::with_builtins().unwrap()).unwrap()
}

#[test]
fn flags_and_layer_specs_override_the_preset() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), dir.path(), &["--decoder-attention", "[True, False]"]);
    assert_eq!(cfg.model, "fconv");
    let c: FConvConfig = serde_json::from_value(cfg.model_config.clone()).unwrap();
    assert_eq!((c.encoder_embed_dim, c.decoder_out_embed_dim, c.dropout), (32, 32, 0.1));
    assert_eq!(c.encoder_convolutions().unwrap().len(), 2);
    assert_eq!(c.attention_layers().unwrap(), [true, false]);
    let bad = TrainConfig::from_args(
        [dir.path().to_str().unwrap(), "--arch", "fconv", "--encoder-layers", "[(512,)] * 20"],
        &Registry::with_builtins().unwrap(),
    );
    let message = bad.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("[(512,)] * 20") && message.contains("expected"), "{message}");
}

#[test]
fn fconv_trains_with_fairseqs_recipe_evaluates_bleu_and_resumes() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = common::toy_data(dir.path(), &common::REVERSAL);
    let mut flags = vec!["--force-anneal", "100"];
    flags.extend(common::EVAL_BLEU_RUN);
    let cfg = config(&bin, &dir.path().join("run"), &flags);
    let names = ["encoder.convolutions.1.weight_g", "decoder.attention.1.in_projection.weight_v"];
    common::check_trains_evaluates_bleu_and_resumes("fconv", &cfg, &names);
}

#[test]
fn fconv_trains_in_fp16() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = common::toy_data(dir.path(), &common::REVERSAL);
    let config = |save: &Path, flags: &[&str]| config(&bin, save, flags);
    common::check_half_precision_near_fp32("fconv", dir.path(), &config, &[("fp16", "--fp16")]);
}
