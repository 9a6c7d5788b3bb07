//! The training loop end to end on a toy task (reverse a sentence and map each word to its
//! "translation") made in the test and binarized with the real `preprocess`: the loss falls,
//! runs are deterministic, `--update-freq` counts updates as fairseq does, unknown component
//! names list the known ones, and the binary writes its log and config.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::{Path, PathBuf};

use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, StopReason, TrainConfig, Trainer};

/// The reversal task over a 20-word vocabulary, preprocessed into `dir/bin`.
fn toy_data(dir: &Path) -> PathBuf {
    common::toy_data(dir, &common::REVERSAL)
}

fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
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
        "--no-save".into(),
        "--max-tokens".into(),
        "400".into(),
        "--lr".into(),
        "0.003".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::from_args(args, &Registry::with_builtins().unwrap()).unwrap()
}

#[test]
fn valid_loss_falls_well_below_its_initial_value() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("run");
    let cfg = config(
        &bin,
        &save,
        &["--max-update", "300", "--validate-interval-updates", "100", "--clip-norm", "1.0"],
    );
    assert_eq!(cfg.args.source_lang, None, "the pair is inferred from the file names");
    let registry = Registry::with_builtins().unwrap();
    let trainer = Trainer::new(&cfg, &registry).unwrap();
    assert_eq!(trainer.task().name(), "translation");
    assert_eq!(trainer.task().describe(), "de-en");
    let (initial, _, _) = trainer.validate().unwrap().unwrap();
    let summary = trainer.train().unwrap();
    assert_eq!(summary.num_updates, 300);
    assert_eq!(summary.stop_reason, StopReason::MaxUpdate);
    let losses: Vec<f64> = summary.validations.iter().map(|v| v.metrics.loss).collect();
    assert!(losses.len() >= 3, "validations at 100, 200, 300 and epoch ends: {losses:?}");
    let last = *losses.last().unwrap();
    // A random model is near log2(|V|) ≈ 5 bits; the task is learnable.
    assert!(initial.loss > 4.0, "initial loss {}", initial.loss);
    assert!(last < initial.loss - 2.0, "valid loss {} → {last} ({losses:?})", initial.loss);
    assert_eq!(summary.best_valid_loss, losses.iter().copied().reduce(f64::min));
    let first_epoch = &summary.epochs[0];
    let final_epoch = summary.epochs.last().unwrap();
    assert!(final_epoch.train.loss < first_epoch.train.loss);
    assert!(summary.words_per_sec > 0.0);
    // The log file holds JSON lines for train_inner, train and valid records.
    let log = std::fs::read_to_string(save.join("train_log.jsonl")).unwrap();
    let tags: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["tag"].to_string())
        .collect();
    for tag in ["\"train_inner\"", "\"train\"", "\"valid\""] {
        assert!(tags.iter().any(|t| t == tag), "{tag} missing from {tags:?}");
    }
    let config_json: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(save.join("config.json")).unwrap()).unwrap();
    assert_eq!(config_json, cfg);
}

#[test]
fn same_seed_gives_bit_identical_runs() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let registry = Registry::with_builtins().unwrap();
    let run = |seed: &str, save: &str| {
        let cfg = config(
            &bin,
            &dir.path().join(save),
            &["--max-update", "30", "--seed", seed, "--validate-interval-updates", "15"],
        );
        train::run(&cfg, &registry).unwrap()
    };
    let a = run("7", "a");
    let b = run("7", "b");
    let c = run("8", "c");
    assert_eq!(a.params_digest, b.params_digest);
    let losses = |s: &train::TrainSummary| {
        s.validations.iter().map(|v| v.metrics.loss.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(losses(&a), losses(&b));
    assert_eq!(a.epochs.last().unwrap().train, b.epochs.last().unwrap().train);
    assert_ne!(a.params_digest, c.params_digest);
}

#[test]
fn update_freq_groups_batches_into_updates() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let registry = Registry::with_builtins().unwrap();
    let one = train::run(
        &config(&bin, &dir.path().join("uf1"), &["--max-epoch", "1", "--update-freq", "1"]),
        &registry,
    )
    .unwrap();
    let two = train::run(
        &config(&bin, &dir.path().join("uf2"), &["--max-epoch", "1", "--update-freq", "2"]),
        &registry,
    )
    .unwrap();
    let batches = one.num_updates;
    assert!(batches >= 4, "{batches} batches");
    assert_eq!(two.num_updates, batches.div_ceil(2));
    assert_eq!(one.stop_reason, StopReason::MaxEpoch);
    // Every batch of the epoch was trained on in both runs.
    assert_eq!(one.words, two.words);
    assert_eq!(one.epochs.len(), 1);
    assert_eq!(two.epochs.len(), 1);
    // --max-update counts updates, not batches.
    let capped = train::run(
        &config(&bin, &dir.path().join("uf3"), &["--max-update", "3", "--update-freq", "2"]),
        &registry,
    )
    .unwrap();
    assert_eq!(capped.num_updates, 3);
    assert_eq!(capped.stop_reason, StopReason::MaxUpdate);
}

#[test]
fn unknown_component_names_list_the_known_ones() {
    let registry = Registry::with_builtins().unwrap();
    let err = |flag: &str, value: &str| {
        TrainConfig::from_args(["data", flag, value], &registry).unwrap_err().to_string()
    };
    let e = err("--arch", "transformer_huge");
    assert!(e.contains("unknown architecture \"transformer_huge\""), "{e}");
    // The list names every registered preset, sorted (language models included).
    let known = e.split("known: ").nth(1).unwrap_or_default();
    let names: Vec<&str> = known.split(", ").collect();
    for name in [
        "transformer",
        "transformer_iwslt_de_en",
        "transformer_tiny",
        "lstm",
        "fconv",
        "transformer_lm_gpt",
    ] {
        assert!(names.contains(&name), "{name} missing from {e}");
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "{e}");
    let e = err("--optimizer", "lamb");
    assert!(e.contains("unknown optimizer \"lamb\"; known: adafactor, adam, nag, sgd"), "{e}");
    let e = err("--lr-scheduler", "step");
    assert!(e.contains("cosine, fixed, inverse_sqrt"), "{e}");
    let e = err("--criterion", "ctc");
    assert!(e.contains("cross_entropy, label_smoothed_cross_entropy"), "{e}");
    // A flag of an optimizer that was not chosen is not accepted.
    let e = TrainConfig::from_args(["data", "--optimizer", "adam", "--momentum", "0.9"], &registry)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--momentum"), "{e}");
    // …but is once that optimizer is chosen, and model flags override the preset.
    let cfg = TrainConfig::from_args(
        [
            "data",
            "--optimizer=nag",
            "--momentum",
            "0.9",
            "--arch",
            "transformer_tiny",
            "--encoder-layers",
            "3",
            "--dropout",
            "0.2",
            "--share-decoder-input-output-embed",
            "--lr",
            "0.1,0.05",
        ],
        &registry,
    )
    .unwrap();
    assert_eq!(cfg.optimizer_config["momentum"], 0.9);
    assert_eq!(cfg.model_config["encoder_layers"], 3);
    assert_eq!(cfg.model_config["decoder_layers"], 2);
    assert_eq!(cfg.model_config["dropout"], 0.2);
    assert_eq!(cfg.model_config["share_decoder_input_output_embed"], true);
    assert_eq!(cfg.args.lr, vec![0.1, 0.05]);
}

#[test]
fn binary_trains_and_writes_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("cli");
    let log = dir.path().join("log.jsonl");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .arg("train")
        .arg(&bin)
        .args(["--arch", "transformer_tiny", "--max-update", "4", "--max-tokens", "400"])
        .args(["--log-interval", "2", "--log-format", "json", "--cpu", "--threads", "1"])
        .args(["--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "0.001"])
        .args(["--lr-scheduler", "inverse_sqrt", "--warmup-updates", "2"])
        .args(["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"])
        .arg("--save-dir")
        .arg(&save)
        .arg("--log-file")
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["num_updates"], 4);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let inner: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["tag"] == "train_inner").collect();
    assert_eq!(inner.len(), 2);
    for key in ["loss", "nll_loss", "ppl", "wps", "ups", "wpb", "bsz", "gnorm", "lr", "wall"] {
        assert!(inner[0].get(key).is_some(), "{key} missing from {}", inner[0]);
    }
    // The lr logged is the one for the next update (fairseq's get_lr after step_update):
    // inverse_sqrt has warmed up linearly to --lr after --warmup-updates 2.
    assert!((inner[0]["lr"].as_f64().unwrap() - 0.001).abs() < 1e-12, "{}", inner[0]);
    let valid = records.iter().find(|r| r["tag"] == "valid").unwrap();
    assert!(valid["valid_loss"].as_f64().unwrap() > 0.0);
    assert!(save.join("config.json").is_file());
    // --help shows the chosen components' flags.
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_seqforge-train"))
        .args(["train", "--optimizer", "nag", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--momentum") && !help.contains("--adam-betas"), "{help}");
}

#[test]
fn patience_stops_when_the_valid_loss_stops_improving() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let registry = Registry::with_builtins().unwrap();
    // With --lr 0 the weights never change, so the valid loss never beats its first value.
    let mut cfg = config(
        &bin,
        &dir.path().join("p"),
        &["--max-update", "100", "--validate-interval-updates", "2", "--patience", "2"],
    );
    cfg.args.lr = vec![0.0];
    let summary = train::run(&cfg, &registry).unwrap();
    assert_eq!(summary.stop_reason, StopReason::Patience);
    // The first validation sets the best loss; the next two (every 2 updates, or at the end
    // of an epoch) do not improve on it.
    assert_eq!(summary.validations.len(), 3);
    assert!(summary.num_updates <= 6, "{}", summary.num_updates);
    let first = summary.validations[0].metrics.loss;
    assert!(summary.validations.iter().all(|v| v.metrics.loss == first));
}

#[test]
fn checkpoints_are_saved_under_fairseq_names() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("ckpt");
    let mut cfg = config(&bin, &save, &["--max-epoch", "2", "--keep-last-epochs", "1"]);
    cfg.args.no_save = false;
    let summary = train::run(&cfg, &Registry::with_builtins().unwrap()).unwrap();
    assert_eq!(summary.epochs.len(), 2);
    assert!(!save.join("checkpoint1").exists(), "pruned by --keep-last-epochs 1");
    for name in ["checkpoint2", "checkpoint_best", "checkpoint_last"] {
        assert!(
            save.join(name).join("model.safetensors").is_file(),
            "{name}: {:?}",
            std::fs::read_dir(&save).unwrap().map(|e| e.unwrap().file_name()).collect::<Vec<_>>()
        );
    }
    let last = seqforge_trainer::checkpoint::load(save.join("checkpoint_last")).unwrap();
    assert_eq!(last.state.num_updates, summary.num_updates);
    assert_eq!(last.state.epoch, 2);
    assert!(last.state.end_of_epoch);
    assert_eq!(last.state.iterator.epoch, 3, "resumes at the next epoch");
    assert_eq!(last.config.arch, "transformer_tiny");
    assert_eq!(last.state.best, summary.best_valid_loss);
    assert!(last.model.iter().any(|(n, _)| n == "encoder.layers.0.fc1.weight"));
    assert!(last.optimizer.iter().any(|(n, _)| n.starts_with("adam.exp_avg.")));
}

#[test]
fn stop_time_hours_stops_and_saves_and_counts_earlier_runs() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path());
    let save = dir.path().join("time");
    let registry = Registry::with_builtins().unwrap();
    // 0.36 ms: any update takes longer, so the run stops after its first.
    let mut cfg = config(&bin, &save, &["--stop-time-hours", "0.0000001", "--max-update", "50"]);
    cfg.args.no_save = false;
    let summary = train::run(&cfg, &registry).unwrap();
    assert_eq!(summary.stop_reason, StopReason::StopTime);
    assert_eq!(summary.num_updates, 1);
    assert_eq!(summary.validations.len(), 1, "it validates before stopping");
    let last = seqforge_trainer::checkpoint::load(save.join("checkpoint_last")).unwrap();
    assert_eq!(last.state.num_updates, 1);
    // The time of the first run counts: the resumed run has no time left.
    let again = train::run(&cfg, &registry).unwrap();
    assert_eq!(again.stop_reason, StopReason::StopTime);
    assert_eq!((again.start_num_updates, again.num_updates), (1, 1));
}
