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
use seqforge_trainer::train::{self, TrainConfig, Trainer};

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
    let save = dir.path().join("run");
    let flags = [
        "--force-anneal",
        "100",
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
    let summary = trainer.train().unwrap();
    assert_eq!(summary.num_updates, 150);
    let losses: Vec<f64> = summary.validations.iter().map(|v| v.metrics.loss).collect();
    let bleus: Vec<Option<f64>> = summary.validations.iter().map(|v| v.bleu).collect();
    println!("fconv toy run: valid loss {} → {losses:?}, BLEU {bleus:?}", initial.loss);
    let last = *losses.last().unwrap();
    assert!(last < initial.loss - 1.0, "valid loss {} → {last}", initial.loss);
    assert!(bleus.iter().all(Option::is_some), "{bleus:?}");

    let resumed = Trainer::new(&cfg, &registry).unwrap();
    assert_eq!(resumed.num_updates(), 150);
    let names: Vec<String> = resumed.model().state_dict().into_iter().map(|(n, _)| n).collect();
    for name in ["encoder.convolutions.1.weight_g", "decoder.attention.1.in_projection.weight_v"] {
        assert!(names.contains(&name.to_string()), "{name} not in {names:?}");
    }
    let (again, _, _) = resumed.validate().unwrap().unwrap();
    assert_eq!(again.loss, last);
}

#[test]
fn fconv_trains_in_fp16() {
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
    let fp16 = run("fp16", Some("--fp16"));
    println!("fconv train loss after 30 updates: fp32 {fp32}, fp16 {fp16}");
    assert!(fp16.is_finite() && (fp16 - fp32).abs() < 0.5, "fp16: {fp16} vs fp32 {fp32}");
}
