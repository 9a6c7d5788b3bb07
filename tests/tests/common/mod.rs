//! What the libtorch-linked export tests share: dictionaries, models of any family built by
//! the trainer's registry, and trainer checkpoints written with the trainer's own
//! `checkpoint::save` so that the exporter reads exactly what training produces.

use std::path::Path;

use anyhow::Result;
use seqforge_trainer::checkpoint::{
    self, Checkpoint, CheckpointConfig, ComponentConfig, DictionaryIdentity, TrainerState,
};
use seqforge_trainer::fp16::Precision;
use seqforge_trainer::models::transformer::Transformer;
use seqforge_trainer::registry::Registry;
use seqforge_trainer::train::model::{Model, ModelContext};
use tch::nn;

/// Writes a fairseq `dict.txt` at `path` with `size` symbols: the 4 specials (implicit) and the
/// words `{tag}4` … `{tag}{size-1}` with counts `count(i)`.
#[allow(dead_code)]
pub fn write_dict(path: &Path, size: usize, tag: &str, count: fn(usize) -> usize) -> Result<()> {
    let text: String = (4..size).map(|i| format!("{tag}{i} {}\n", count(i))).collect();
    std::fs::write(path, text)?;
    Ok(())
}

/// Saves `model` as a de → en `arch` checkpoint at `dir` (trained with `seed` for
/// `num_updates` updates, no optimizer state), recording the identities of `data`'s
/// `dict.de.txt` and `dict.en.txt`.
#[allow(dead_code)]
pub fn save_checkpoint(
    dir: &Path,
    model: &Transformer,
    arch: &str,
    data: &Path,
    seed: u64,
    num_updates: u64,
) -> Result<()> {
    let config = serde_json::to_value(model.config())?;
    save_model(dir, model, config, arch, data, seed, num_updates)
}

/// A model of architecture `arch` as training builds it (the registry's preset with
/// `overrides` applied, both vocabularies of `vocab` symbols, padding 1); returns its var store,
/// the model and its config.
#[allow(dead_code)]
pub fn registry_model(
    arch: &str,
    overrides: serde_json::Value,
    vocab: usize,
) -> Result<(nn::VarStore, Box<dyn Model>, serde_json::Value)> {
    let registry = Registry::with_builtins()?;
    let architecture = registry.architectures.get(arch)?;
    let mut config = architecture.config.clone();
    if let Some(fields) = overrides.as_object() {
        for (k, v) in fields {
            config[k] = v.clone();
        }
    }
    let ctx = ModelContext { src_vocab_size: vocab, tgt_vocab_size: vocab, pad_index: 1 };
    let vs = nn::VarStore::new(tch::Device::Cpu);
    let model = (registry.models.get(&architecture.model)?.build)(&vs.root(), &config, &ctx)?;
    Ok((vs, model, config))
}

/// Saves any `model` (its `state_dict`) with `config` as a de → en `arch` checkpoint at `dir`
/// (see [`save_checkpoint`]).
pub fn save_model(
    dir: &Path,
    model: &dyn Model,
    config: serde_json::Value,
    arch: &str,
    data: &Path,
    seed: u64,
    num_updates: u64,
) -> Result<()> {
    let ckpt = Checkpoint {
        config: CheckpointConfig {
            format_version: checkpoint::FORMAT_VERSION,
            arch: arch.into(),
            model: config,
            task: ComponentConfig::new(
                "translation",
                serde_json::json!({"source_lang": "de", "target_lang": "en"}),
            ),
            criterion: ComponentConfig::new("cross_entropy", serde_json::json!({})),
            optimizer: ComponentConfig::new("adam", serde_json::json!({})),
            lr_scheduler: ComponentConfig::new("fixed", serde_json::json!({})),
            precision: Precision::Fp32,
            dictionaries: vec![
                DictionaryIdentity::of_file(data.join("dict.de.txt"))?,
                DictionaryIdentity::of_file(data.join("dict.en.txt"))?,
            ],
        },
        state: TrainerState::fresh(seed, num_updates),
        model: model.state_dict(),
        optimizer: vec![],
    };
    checkpoint::save(dir, &ckpt)?;
    Ok(())
}

/// Sources of lengths 2 to 10 (EOS included), some with repeated words, for vocabularies of at
/// least 32 symbols.
#[allow(dead_code)]
pub fn sources() -> Vec<Vec<u32>> {
    vec![
        vec![5, 9, 7, 11, 2],
        vec![13, 6, 2],
        vec![8, 8, 19, 4, 17, 10, 2],
        vec![20, 2],
        vec![4, 30, 12, 12, 25, 7, 9, 22, 16, 2],
        vec![31, 14, 27, 5, 2],
    ]
}

/// Same tokens, scores and positional scores within `tol`; returns the largest difference.
#[allow(dead_code)]
pub fn same_hypotheses(
    what: &str,
    a: &[Vec<seqforge_runtime::search::Hypothesis>],
    b: &[Vec<seqforge_runtime::search::Hypothesis>],
    tol: f32,
) -> Result<f32> {
    anyhow::ensure!(a.len() == b.len(), "{what}: {} vs {} sentences", a.len(), b.len());
    let mut worst = 0f32;
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        anyhow::ensure!(
            x.len() == y.len(),
            "{what} sentence {i}: {} vs {} hypotheses",
            x.len(),
            y.len()
        );
        for (j, (h, g)) in x.iter().zip(y).enumerate() {
            anyhow::ensure!(
                h.tokens == g.tokens,
                "{what} {i}/{j}: {:?} vs {:?}",
                h.tokens,
                g.tokens
            );
            worst = worst.max((h.score - g.score).abs());
            for (p, q) in h.positional_scores.iter().zip(&g.positional_scores) {
                worst = worst.max((p - q).abs());
            }
        }
    }
    anyhow::ensure!(worst <= tol, "{what}: scores differ by {worst:e} > {tol:e}");
    Ok(worst)
}

/// Teacher-forced Adam updates (learning rate `lr`) on a copy task over a vocabulary of
/// `vocab`, so that the model's distributions are peaked (no near-ties that 1e-6 rounding
/// differences could flip).
#[allow(dead_code)]
pub fn train_copy_task(
    vs: &nn::VarStore,
    model: &dyn Model,
    updates: usize,
    lr: f64,
    vocab: usize,
) -> Result<()> {
    use tch::nn::OptimizerConfig;
    use tch::{Device, Kind, Tensor};
    let mut opt = nn::Adam::default().build(vs, lr)?;
    for _ in 0..updates {
        let words = Tensor::randint_low(4, vocab as i64, [8, 6], (Kind::Int64, Device::Cpu));
        let eos = Tensor::full([8, 1], 2, (Kind::Int64, Device::Cpu));
        let src = Tensor::f_cat(&[&words, &eos], 1)?;
        let prev = Tensor::f_cat(&[&eos, &words], 1)?;
        let lengths = Tensor::from_slice(&[7i64; 8]);
        let logits = model.forward(&src, &lengths, &prev, true)?;
        let lprobs = model.get_normalized_probs(&logits, true)?;
        let loss = lprobs.f_view([-1, vocab as i64])?.f_nll_loss(
            &src.f_view([-1])?,
            None::<Tensor>,
            tch::Reduction::Mean,
            -100,
        )?;
        opt.backward_step(&loss);
    }
    Ok(())
}
