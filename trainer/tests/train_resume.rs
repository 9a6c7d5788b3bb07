//! Resuming `seqforge-train train` from a checkpoint (fairseq's `--restore-file`, `--reset-*`,
//! `--finetune-from-model`): a run stopped mid-epoch or at an epoch boundary and resumed ends
//! bit-identical to an uninterrupted one; a run killed with SIGKILL resumes from its last
//! checkpoint; the reset flags reset what they name; checkpoints that do not fit are refused
//! with the dictionary or tensor named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::torch_lock;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seqforge_trainer::checkpoint::{self, Checkpoint};
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::{self, StopReason, TrainConfig, TrainSummary, Trainer};
use tch::Tensor;

fn toy_data(dir: &Path, seed: u64) -> PathBuf {
    common::toy_data(
        dir,
        &common::ToyTask { seed, langs: ("de", "en"), lines: (160, 24), extra_len: 6 },
    )
}

/// The flags of every run here: dropout on, label smoothing, inverse_sqrt warmup,
/// `--update-freq 2`, checkpoints saved.
fn base_args(bin: &Path, save: &Path) -> Vec<String> {
    let mut args: Vec<String> = vec![bin.to_string_lossy().into_owned()];
    args.extend(
        [
            "--arch",
            "transformer_tiny",
            "--dropout",
            "0.2",
            "--attention-dropout",
            "0.1",
            "--criterion",
            "label_smoothed_cross_entropy",
            "--label-smoothing",
            "0.1",
            "--optimizer",
            "adam",
            "--lr",
            "0.003",
            "--lr-scheduler",
            "inverse_sqrt",
            "--warmup-updates",
            "4",
            "--update-freq",
            "2",
            "--max-tokens",
            "120",
            "--cpu",
            "--threads",
            "1",
            "--no-progress-bar",
            "--log-interval",
            "1",
            "--save-dir",
        ]
        .map(String::from),
    );
    args.push(save.to_string_lossy().into_owned());
    args
}

/// [`base_args`] with `extra`: a flag already there gets the new value, others are added.
fn with_extra(bin: &Path, save: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = base_args(bin, save);
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let value = extra.get(i + 1).filter(|v| !v.starts_with("--"));
        match (args.iter().position(|a| a == flag), value) {
            (Some(at), Some(v)) => {
                args[at + 1] = v.to_string();
                i += 2;
            }
            _ => {
                args.push(flag.to_string());
                i += 1;
            }
        }
    }
    args
}

fn config(bin: &Path, save: &Path, extra: &[&str]) -> TrainConfig {
    TrainConfig::from_args(with_extra(bin, save, extra), &Registry::with_builtins().unwrap())
        .unwrap()
}

fn run(bin: &Path, save: &Path, extra: &[&str]) -> TrainSummary {
    train::run(&config(bin, save, extra), &Registry::with_builtins().unwrap()).unwrap()
}

/// Exact equality of two named tensor lists (same names, kinds, shapes and bits).
fn assert_same_tensors(what: &str, a: &[(String, Tensor)], b: &[(String, Tensor)]) {
    let mut names_a: Vec<&String> = a.iter().map(|(n, _)| n).collect();
    let mut names_b: Vec<&String> = b.iter().map(|(n, _)| n).collect();
    names_a.sort();
    names_b.sort();
    assert_eq!(names_a, names_b, "{what}: names");
    assert!(!a.is_empty(), "{what}: nothing to compare");
    for (name, t) in a {
        let (_, u) = b.iter().find(|(n, _)| n == name).unwrap();
        assert_eq!(t.kind(), u.kind(), "{what}: {name} kind");
        assert_eq!(t.size(), u.size(), "{what}: {name} shape");
        // `equal` on the raw bits: NaN-safe and exact.
        let bits = |x: &Tensor| x.view_dtype(tch::Kind::Uint8);
        let (ta, tb) = (t.contiguous(), u.contiguous());
        let exact = if t.dim() == 0 { ta.equal(&tb) } else { bits(&ta).equal(&bits(&tb)) };
        assert!(exact, "{what}: {name} differs");
    }
}

fn load_last(save: &Path) -> Checkpoint {
    checkpoint::load(save.join("checkpoint_last")).unwrap()
}

/// Trains `total` updates straight, and `first` + resume to `total` (with `flags`);
/// everything must agree.
fn check_resume(bin: &Path, dir: &Path, tag: &str, first: u64, total: u64, flags: &[&str]) {
    let with_max = |n: u64| {
        let mut v: Vec<String> = vec!["--max-update".into(), n.to_string()];
        v.extend(flags.iter().map(|f| f.to_string()));
        v
    };
    fn refs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let straight = dir.join(format!("{tag}-straight"));
    let a = run(bin, &straight, &refs(&with_max(total)));
    let split = dir.join(format!("{tag}-split"));
    let b1 = run(bin, &split, &refs(&with_max(first)));
    assert_eq!(b1.num_updates, first);
    let b2 = run(bin, &split, &refs(&with_max(total)));
    assert_eq!(b2.restored_from, Some(split.join("checkpoint_last")), "{tag}");
    assert_eq!(b2.start_num_updates, first, "{tag}");
    assert_eq!((a.num_updates, b2.num_updates), (total, total));
    assert_eq!(a.stop_reason, StopReason::MaxUpdate);
    assert_eq!(b2.params_digest, a.params_digest, "{tag}: weights differ");
    let (ca, cb) = (load_last(&straight), load_last(&split));
    assert_same_tensors(&format!("{tag} model"), &ca.model, &cb.model);
    assert_same_tensors(&format!("{tag} optimizer"), &ca.optimizer, &cb.optimizer);
    assert_eq!(ca.state.lr_scheduler, cb.state.lr_scheduler, "{tag}");
    assert_eq!(ca.state.loss_scaler, cb.state.loss_scaler, "{tag}");
    assert_eq!(a.loss_scale, b2.loss_scale, "{tag}");
    assert_eq!(ca.state.iterator, cb.state.iterator, "{tag}");
    assert_eq!(ca.state.num_updates, total);
    // The last validation sees the same weights, so the same loss.
    let last_valid = |s: &TrainSummary| s.validations.last().unwrap().metrics.loss.to_bits();
    assert_eq!(last_valid(&a), last_valid(&b2), "{tag}");
    // The epoch statistics of a resumed epoch cover the part trained before the stop too
    // (the meters are restored), so they match the uninterrupted epoch's.
    let first_epoch_b2 = b2.epochs.first().unwrap();
    let same_epoch_a = a.epochs.iter().find(|e| e.epoch == first_epoch_b2.epoch).unwrap();
    if same_epoch_a.num_updates == first_epoch_b2.num_updates {
        let (x, y) = (same_epoch_a.train.loss, first_epoch_b2.train.loss);
        assert!((x - y).abs() <= 1e-9 * x.abs(), "{tag}: epoch train loss {x} vs {y}");
        assert_eq!(same_epoch_a.words, first_epoch_b2.words, "{tag}");
    }
}

#[test]
fn resumed_runs_are_bit_identical_to_uninterrupted_ones() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path(), 0x2545_f491_4f6c_dd1d);
    // Updates in one epoch.
    let epoch = run(&bin, &dir.path().join("epoch"), &["--max-epoch", "1", "--no-save"]);
    let e = epoch.num_updates;
    assert!(e >= 4, "{e} updates per epoch");
    // Stopped mid-epoch (with an odd batch count consumed by update_freq 2 at most once per
    // epoch), resumed across the epoch boundary.
    check_resume(&bin, dir.path(), "mid", e - 1, e + 3, &[]);
    // Stopped exactly at the end of epoch 1.
    check_resume(&bin, dir.path(), "boundary", e, e + 3, &[]);
    // fp16: the fp32 master weights, the optimizer and the loss scaler (which doubles every
    // 3 updates here, so it changes on both sides of the stop) come back exactly.
    check_resume(&bin, dir.path(), "fp16", e - 1, e + 3, &["--fp16", "--fp16-scale-window", "3"]);
}

/// Newest `checkpoint_{epoch}_{updates}` update count in `save`, ignoring unfinished saves.
fn newest_update_checkpoint(save: &Path) -> Option<u64> {
    std::fs::read_dir(save)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let rest = name.strip_prefix("checkpoint_")?;
            let (epoch, updates) = rest.split_once('_')?;
            epoch.parse::<u64>().ok()?;
            updates.parse::<u64>().ok()
        })
        .max()
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path(), 0x9e37_79b9_7f4a_7c15);
    let save = dir.path().join("killed");
    let interval = 3u64;
    let max_update = 40u64;
    let command = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_seqforge-train"));
        c.arg("train")
            .args(base_args(&bin, &save))
            .args(["--save-interval-updates", &interval.to_string()])
            .args(["--max-update", &max_update.to_string(), "--log-format", "json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let mut child = command().spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        if let Some(u) = newest_update_checkpoint(&save) {
            break u;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before any checkpoint_*_* appeared");
        }
        assert!(Instant::now() < deadline, "no checkpoint_*_* within 120 s");
        std::thread::sleep(Duration::from_millis(10));
    };
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before the end: {status}");
    let reached = newest_update_checkpoint(&save).unwrap();
    assert!(reached < max_update, "the run finished before the kill ({reached} updates)");

    let out = command().output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let restart = summary["start_num_updates"].as_u64().unwrap();
    assert_eq!(summary["restored_from"], save.join("checkpoint_last").to_string_lossy().as_ref());
    // It goes on from a saved checkpoint: at least the one seen before the kill, and the
    // newest the killed run wrote (checkpoint_last is written first, then copied to
    // checkpoint_{epoch}_{updates}: a kill in between leaves it one interval ahead).
    assert!(restart >= seen, "restarted at {restart}, a checkpoint at {seen} existed");
    assert!(restart == reached || restart == reached + interval, "{restart} vs {reached}");
    assert!(restart.is_multiple_of(interval), "{restart}");
    assert_eq!(summary["num_updates"], max_update);
    assert_eq!(summary["stop_reason"], "max_update");
    let last = load_last(&save);
    assert_eq!(last.state.num_updates, max_update);
    // No unfinished save is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(&save)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-") || n.contains(".old-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The log goes on in the same file.
    let log = std::fs::read_to_string(save.join("train_log.jsonl")).unwrap();
    let updates: Vec<u64> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["tag"] == "train_inner")
        .map(|r| r["num_updates"].as_u64().unwrap())
        .collect();
    assert_eq!(updates.first(), Some(&1));
    assert_eq!(updates.last(), Some(&max_update));
}

fn trainer(bin: &Path, save: &Path, extra: &[&str]) -> train::Result<Trainer> {
    let registry = Registry::with_builtins().unwrap();
    Trainer::new(&TrainConfig::from_args(with_extra(bin, save, extra), &registry)?, &registry)
}

/// The trainer's weights are exactly `ckpt`'s.
fn assert_weights_of(t: &Trainer, ckpt: &Checkpoint) {
    let ours: Vec<(String, Tensor)> =
        t.fp32_parameters().iter().map(|(n, p)| (n.clone(), p.shallow_clone())).collect();
    let saved: Vec<(String, Tensor)> = ckpt
        .model
        .iter()
        .filter(|(n, _)| ours.iter().any(|(m, _)| m == n))
        .map(|(n, p)| (n.clone(), p.shallow_clone()))
        .collect();
    assert_same_tensors("restored weights", &ours, &saved);
}

#[test]
fn reset_flags_reset_what_they_name() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path(), 0x2545_f491_4f6c_dd1d);
    let save = dir.path().join("base");
    let e = run(&bin, &dir.path().join("epoch"), &["--max-epoch", "1", "--no-save"]).num_updates;
    // A checkpoint in epoch 2, with a validation (best loss) behind it.
    let base = run(&bin, &save, &["--max-update", &(e + 1).to_string()]);
    let ckpt = load_last(&save);
    assert_eq!(ckpt.state.iterator.epoch, 2);
    assert!(ckpt.state.best.is_some());

    // Everything restored.
    let t = trainer(&bin, &save, &[]).unwrap();
    assert_eq!(t.num_updates(), e + 1);
    assert_weights_of(&t, &ckpt);
    assert_same_tensors("optimizer", &t.optimizer_state(), &ckpt.optimizer);
    drop(t);

    // --reset-optimizer: fresh moments (none until the first step) and, as in fairseq, the
    // update count from 0; the weights are still restored.
    let t = trainer(&bin, &save, &["--reset-optimizer"]).unwrap();
    assert!(t.optimizer_state().is_empty());
    assert_eq!(t.num_updates(), 0);
    assert_weights_of(&t, &ckpt);
    drop(t);

    // --reset-dataloader: epoch 1 again; without it the run goes on in epoch 2.
    let go_on = |save_as: &str, extra: &[&str]| {
        let copy = dir.path().join(save_as);
        checkpoint::copy_checkpoint(save.join("checkpoint_last"), copy.join("checkpoint_last"))
            .unwrap();
        let max = (e + 2).to_string();
        let mut args = vec!["--max-update", max.as_str(), "--disable-validation"];
        args.extend_from_slice(extra);
        run(&bin, &copy, &args)
    };
    let on = go_on("on", &[]);
    assert_eq!(on.epochs[0].epoch, 2);
    assert_eq!(on.num_updates, e + 2);
    let reset = go_on("reset-dl", &["--reset-dataloader"]);
    assert_eq!(reset.epochs[0].epoch, 1);
    assert_eq!(reset.start_num_updates, e + 1);

    // --reset-meters: the best validation loss is forgotten.
    assert_eq!(on.best_valid_loss, base.best_valid_loss);
    assert_eq!(on.best_valid_loss, ckpt.state.best);
    let reset = go_on("reset-meters", &["--reset-meters"]);
    assert_eq!(reset.best_valid_loss, None);

    // --reset-lr-scheduler: another scheduler is refused without it, taken with it.
    let e1 = trainer(&bin, &save, &["--lr-scheduler", "fixed"]).unwrap_err().to_string();
    assert!(e1.contains("--reset-lr-scheduler") && e1.contains("inverse_sqrt"), "{e1}");
    let t = trainer(&bin, &save, &["--lr-scheduler", "fixed", "--reset-lr-scheduler"]).unwrap();
    assert_eq!(t.lr(), 0.003);
    assert_eq!(t.num_updates(), e + 1);
    drop(t);
    // Another optimizer needs --reset-optimizer (fairseq's message).
    let e2 = trainer(&bin, &save, &["--optimizer", "nag"]).unwrap_err().to_string();
    assert!(e2.contains("Optimizer does not match; please reset the optimizer"), "{e2}");
    assert!(trainer(&bin, &save, &["--optimizer", "nag", "--reset-optimizer"]).is_ok());
}

#[test]
fn restore_file_and_finetune_follow_fairseq() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let bin = toy_data(dir.path(), 0x2545_f491_4f6c_dd1d);
    let save = dir.path().join("pre");
    run(&bin, &save, &["--max-update", "3", "--save-interval-updates", "2"]);
    let at2 = checkpoint::load(save.join("checkpoint_1_2")).unwrap();
    let at3 = load_last(&save);

    // A bare name is looked up in the save dir; a path is used as is.
    let t = trainer(&bin, &save, &["--restore-file", "checkpoint_1_2"]).unwrap();
    assert_eq!(t.num_updates(), 2);
    assert_weights_of(&t, &at2);
    drop(t);
    let other = dir.path().join("other");
    let path = save.join("checkpoint_1_2").to_string_lossy().into_owned();
    let t = trainer(&bin, &other, &["--restore-file", &path]).unwrap();
    assert_eq!(t.num_updates(), 2);
    drop(t);
    // A named checkpoint that does not exist is an error (the default is optional).
    let e = trainer(&bin, &save, &["--restore-file", "checkpoint9"]).unwrap_err().to_string();
    assert!(e.contains("--restore-file checkpoint9") && e.contains("no checkpoint"), "{e}");
    let fresh = trainer(&bin, &dir.path().join("fresh"), &[]).unwrap();
    assert_eq!(fresh.num_updates(), 0);
    drop(fresh);

    // --finetune-from-model: the weights only, in a save dir without checkpoint_last.
    let last = save.join("checkpoint_last").to_string_lossy().into_owned();
    let ft_dir = dir.path().join("ft");
    let t = trainer(&bin, &ft_dir, &["--finetune-from-model", &last]).unwrap();
    assert_eq!(t.num_updates(), 0);
    assert!(t.optimizer_state().is_empty());
    assert_weights_of(&t, &at3);
    drop(t);
    // Once the save dir has a checkpoint_last, that is resumed instead (fairseq).
    checkpoint::copy_checkpoint(save.join("checkpoint_1_2"), ft_dir.join("checkpoint_last"))
        .unwrap();
    let t = trainer(&bin, &ft_dir, &["--finetune-from-model", &last]).unwrap();
    assert_eq!(t.num_updates(), 2);
    drop(t);
    // With a non-default --restore-file, or a model that does not exist: errors.
    let e = trainer(&bin, &ft_dir, &["--finetune-from-model", &last, "--restore-file", &path])
        .unwrap_err()
        .to_string();
    assert!(e.contains("can not be specified together"), "{e}");
    let missing = dir.path().join("nope").to_string_lossy().into_owned();
    let e = trainer(&bin, &dir.path().join("ft2"), &["--finetune-from-model", &missing])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
}

#[test]
fn checkpoints_that_do_not_fit_are_refused_by_name() {
    let _torch = torch_lock();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("a");
    std::fs::create_dir_all(&data_dir).unwrap();
    let bin = toy_data(&data_dir, 0x2545_f491_4f6c_dd1d);
    let save = dir.path().join("run");
    run(&bin, &save, &["--max-update", "2"]);

    // Another vocabulary: the same words, other frequencies, so another id order.
    let other_dir = dir.path().join("b");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other_bin = toy_data(&other_dir, 0x1234_5678_9abc_def1);
    assert_ne!(
        std::fs::read(bin.join("dict.de.txt")).unwrap(),
        std::fs::read(other_bin.join("dict.de.txt")).unwrap()
    );
    let e = trainer(&other_bin, &save, &[]).unwrap_err().to_string();
    assert!(e.contains("dictionary dict.de.txt") && e.contains("different vocabulary"), "{e}");

    // Another shape: the error names the tensor.
    let e = trainer(&bin, &save, &["--encoder-ffn-embed-dim", "48"]).unwrap_err().to_string();
    assert!(e.contains("model.safetensors: tensor encoder.layers.0.fc1.") && e.contains("shape"));

    // A missing tensor.
    let mut ckpt = load_last(&save);
    ckpt.model.retain(|(n, _)| n != "decoder.layers.0.fc1.weight");
    checkpoint::save(save.join("checkpoint_cut"), &ckpt).unwrap();
    let e = trainer(&bin, &save, &["--restore-file", "checkpoint_cut"]).unwrap_err().to_string();
    assert!(e.contains("missing tensor decoder.layers.0.fc1.weight"), "{e}");

    // A damaged file: named.
    std::fs::write(save.join("checkpoint_last").join("trainer_state.json"), "{").unwrap();
    let e = trainer(&bin, &save, &[]).unwrap_err().to_string();
    assert!(e.contains("trainer_state.json"), "{e}");
}
