//! How each model family is imported: one [`FamilyImport`] per row of [`families`], naming
//! the seqforge family (in [`seqforge_schemas::arch`]), the defaults fairseq's architecture
//! functions derive from other arguments, the options seqforge does not implement, and the
//! family's state-dict upgrades, its vocabulary sizes and its task. Adding a family adds one
//! row.
//!
//! **Configs.** fairseq's architecture functions (`ARCH_CONFIG_REGISTRY[arch](args)`) set every
//! argument the checkpoint lacks to the architecture's default and keep those it has. The
//! presets of [`seqforge_schemas::arch`] are those defaults, under the same names, so a config
//! is the preset of the checkpoint's `--arch` with every argument the checkpoint records put in
//! its place ([`map_config`]); the few defaults fairseq computes from other arguments
//! (`decoder_embed_dim = encoder_embed_dim` in `base_architecture`) are [`Derived`] rows.
//!
//! **State dicts.** The upgrades are those of fairseq 0.12.2's `upgrade_state_dict_named`
//! (see [`upgrade_transformer`], [`upgrade_fconv`]); buffers seqforge's models rebuild
//! themselves (`version`, the sinusoidal `_float_tensor`) are dropped.

use std::path::Path;

use seqforge_schemas::arch::{self, Family};
use serde_json::Value as Json;

use crate::checkpoint::{Args, StateDict};
use crate::error::{Error, Result};
use crate::pickle::Value;

/// A default fairseq's architecture function derives from another argument.
#[derive(Debug, Clone, Copy)]
pub struct Derived {
    /// The architectures whose function derives it.
    pub archs: &'static [&'static str],
    /// The argument set when missing.
    pub field: &'static str,
    /// The argument it is copied from.
    pub from: &'static str,
}

/// What an option must be for seqforge to implement the model.
#[derive(Debug, Clone, Copy)]
pub enum Supported {
    /// Unset, `None`, false, 0 or empty.
    Off,
    /// Unset, `None` or equal to another argument (`decoder_output_dim` = `decoder_embed_dim`).
    Equals(&'static str),
    /// Anything but this string value.
    Not(&'static str),
}

/// An option seqforge does not implement, unless it has its neutral value.
#[derive(Debug, Clone, Copy)]
pub struct Unsupported {
    /// fairseq's argument name.
    pub option: &'static str,
    /// The values that are fine.
    pub supported: Supported,
    /// What the option does that seqforge lacks.
    pub reason: &'static str,
}

/// A family's state-dict upgrade: the file (for errors), the `version` buffers, the mapped
/// config (which an upgrade may adjust) and the state dict.
pub type UpgradeFn = fn(&Path, &Versions, &mut Json, &mut StateDict) -> Result<()>;

/// The vocabulary sizes a family's config records (`src_vocab_size`, `vocab_size`, …), read
/// from the upgraded state dict; an error names a missing tensor.
pub type VocabFn = fn(&Path, &StateDict) -> Result<Vec<(&'static str, usize)>>;

/// The seqforge task a family's models serve (what the imported checkpoint's `task` is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportTask {
    /// `translation`: two dictionaries, `dict.{src}.txt` and `dict.{tgt}.txt`.
    Translation,
    /// `language_modeling`: one dictionary, `dict.txt`.
    LanguageModeling,
}

impl ImportTask {
    /// The seqforge task's name.
    pub fn name(self) -> &'static str {
        match self {
            ImportTask::Translation => "translation",
            ImportTask::LanguageModeling => "language_modeling",
        }
    }
}

/// One importable family.
#[derive(Debug, Clone, Copy)]
pub struct FamilyImport {
    /// The seqforge family ([`Family::name`]).
    pub family: &'static str,
    /// Defaults derived from other arguments.
    pub derived: &'static [Derived],
    /// Options seqforge does not implement.
    pub unsupported: &'static [Unsupported],
    /// The family's state-dict upgrades (may adjust the config, e.g. a missing final norm).
    pub upgrade: UpgradeFn,
    /// The config's vocabulary sizes.
    pub vocab_sizes: VocabFn,
    /// The task its models serve.
    pub task: ImportTask,
}

/// The rows of tensor `name`, or [`Error::MissingTensor`].
fn rows(path: &Path, sd: &StateDict, name: &str) -> Result<usize> {
    sd.get(name)
        .map(|t| t.shape.first().copied().unwrap_or(0))
        .ok_or_else(|| Error::MissingTensor { path: path.to_path_buf(), name: name.into() })
}

/// The vocabulary sizes of an encoder-decoder: the rows of its two input embeddings.
fn encoder_decoder_vocabs(path: &Path, sd: &StateDict) -> Result<Vec<(&'static str, usize)>> {
    Ok(vec![
        ("src_vocab_size", rows(path, sd, "encoder.embed_tokens.weight")?),
        ("tgt_vocab_size", rows(path, sd, "decoder.embed_tokens.weight")?),
    ])
}

/// A language model's dictionary size: the rows of `decoder.embed_tokens.weight`, or with
/// adaptive input the rows of its bands together (`decoder.embed_tokens.embeddings.{i}.0`).
fn language_model_vocab(path: &Path, sd: &StateDict) -> Result<Vec<(&'static str, usize)>> {
    if sd.contains_key("decoder.embed_tokens.weight") {
        return Ok(vec![("vocab_size", rows(path, sd, "decoder.embed_tokens.weight")?)]);
    }
    let band = |i: usize| format!("decoder.embed_tokens.embeddings.{i}.0.weight");
    let mut total = rows(path, sd, &band(0)).map_err(|_| Error::MissingTensor {
        path: path.to_path_buf(),
        name: "decoder.embed_tokens.weight (or adaptive input's \
               decoder.embed_tokens.embeddings.0.0.weight)"
            .into(),
    })?;
    let mut i = 1;
    while sd.contains_key(&band(i)) {
        total += rows(path, sd, &band(i))?;
        i += 1;
    }
    Ok(vec![("vocab_size", total)])
}

/// The families fairseq checkpoints can be imported into.
pub fn families() -> &'static [FamilyImport] {
    const OFF: Supported = Supported::Off;
    const FAMILIES: &[FamilyImport] = &[
        FamilyImport {
            family: "transformer",
            derived: &[
                Derived {
                    archs: &["transformer", "transformer_wmt_en_de"],
                    field: "decoder_embed_dim",
                    from: "encoder_embed_dim",
                },
                Derived {
                    archs: &["transformer", "transformer_wmt_en_de"],
                    field: "decoder_ffn_embed_dim",
                    from: "encoder_ffn_embed_dim",
                },
            ],
            unsupported: &[
                Unsupported {
                    option: "adaptive_softmax_cutoff",
                    supported: OFF,
                    reason: "no adaptive softmax",
                },
                Unsupported {
                    option: "adaptive_input",
                    supported: OFF,
                    reason: "no adaptive input",
                },
                Unsupported {
                    option: "tie_adaptive_weights",
                    supported: OFF,
                    reason: "no adaptive input",
                },
                Unsupported {
                    option: "no_cross_attention",
                    supported: OFF,
                    reason: "decoders always attend to the encoder",
                },
                Unsupported {
                    option: "cross_self_attention",
                    supported: OFF,
                    reason: "no cross+self attention",
                },
                Unsupported {
                    option: "encoder_layers_to_keep",
                    supported: OFF,
                    reason: "no layer pruning",
                },
                Unsupported {
                    option: "decoder_layers_to_keep",
                    supported: OFF,
                    reason: "no layer pruning",
                },
                Unsupported {
                    option: "char_inputs",
                    supported: OFF,
                    reason: "no character inputs",
                },
                Unsupported { option: "base_layers", supported: OFF, reason: "no BASE layers" },
                Unsupported {
                    option: "decoder_output_dim",
                    supported: Supported::Equals("decoder_embed_dim"),
                    reason: "no projection after the decoder",
                },
                Unsupported {
                    option: "decoder_input_dim",
                    supported: Supported::Equals("decoder_embed_dim"),
                    reason: "no projection of the decoder's input",
                },
            ],
            upgrade: upgrade_transformer,
            vocab_sizes: encoder_decoder_vocabs,
            task: ImportTask::Translation,
        },
        FamilyImport {
            family: "lstm",
            derived: &[],
            unsupported: &[
                Unsupported {
                    option: "criterion",
                    supported: Supported::Not("adaptive_loss"),
                    reason: "no adaptive softmax",
                },
                Unsupported {
                    option: "residuals",
                    supported: OFF,
                    reason: "no residual LSTM layers",
                },
            ],
            upgrade: |_, _, _, sd| {
                drop_buffers(sd);
                Ok(())
            },
            vocab_sizes: encoder_decoder_vocabs,
            task: ImportTask::Translation,
        },
        FamilyImport {
            family: "fconv",
            derived: &[],
            unsupported: &[],
            upgrade: upgrade_fconv,
            vocab_sizes: encoder_decoder_vocabs,
            task: ImportTask::Translation,
        },
        FamilyImport {
            family: "transformer_lm",
            derived: &[],
            unsupported: &[
                Unsupported {
                    option: "character_embeddings",
                    supported: OFF,
                    reason: "no character-CNN inputs",
                },
                Unsupported {
                    option: "decoder_layers_to_keep",
                    supported: OFF,
                    reason: "no layer pruning",
                },
                Unsupported { option: "base_layers", supported: OFF, reason: "no BASE layers" },
                Unsupported {
                    option: "quant_noise_pq",
                    supported: OFF,
                    reason: "no quantization noise",
                },
                Unsupported { option: "scale_fc", supported: OFF, reason: "no NormFormer" },
                Unsupported { option: "scale_attn", supported: OFF, reason: "no NormFormer" },
                Unsupported { option: "scale_heads", supported: OFF, reason: "no NormFormer" },
                Unsupported { option: "scale_resids", supported: OFF, reason: "no NormFormer" },
                Unsupported {
                    option: "decoder_xformers_att_config",
                    supported: OFF,
                    reason: "no xFormers attention",
                },
            ],
            upgrade: upgrade_transformer_lm,
            vocab_sizes: language_model_vocab,
            task: ImportTask::LanguageModeling,
        },
    ];
    FAMILIES
}

/// The architectures that can be imported, in registration order.
pub fn supported_architectures() -> Vec<&'static str> {
    arch::architectures()
        .filter(|(_, f)| families().iter().any(|i| i.family == f.name))
        .map(|(a, _)| a)
        .collect()
}

/// The family of `arch` and its import row, or [`Error::UnsupportedArch`].
pub fn family_of(path: &Path, arch: &str) -> Result<(&'static Family, &'static FamilyImport)> {
    arch::family_of(arch)
        .ok()
        .and_then(|f| Some((f, families().iter().find(|i| i.family == f.name)?)))
        .ok_or_else(|| Error::UnsupportedArch {
            path: path.to_path_buf(),
            arch: arch.to_string(),
            supported: supported_architectures().join(", "),
        })
}

fn is_off(v: &Value) -> bool {
    match v {
        Value::None => true,
        Value::Bool(b) => !b,
        Value::Int(i) => *i == 0,
        Value::Float(f) => *f == 0.0,
        Value::Str(s) => s.is_empty(),
        Value::List(l) | Value::Tuple(l) => l.is_empty(),
        _ => false,
    }
}

/// A short rendering of a value for messages.
fn show(v: &Value) -> String {
    match v {
        Value::None => "None".into(),
        Value::Bool(b) => if *b { "True" } else { "False" }.into(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Str(s) => format!("{s:?}"),
        other => format!("<{}>", other.kind()),
    }
}

/// fairseq's `utils.eval_bool` on the strings argparse stored (`"1"`, `"True"`, …).
fn eval_bool(s: &str) -> Option<bool> {
    match s.trim() {
        "True" | "true" | "1" => Some(true),
        "False" | "false" | "0" | "" => Some(false),
        _ => None,
    }
}

/// `v` as JSON of the same type as `slot` (the preset's value for the field), or `None` when it
/// cannot be.
fn coerce(v: &Value, slot: &Json) -> Option<Json> {
    Some(match (slot, v) {
        (Json::Bool(_), Value::Bool(b)) => Json::Bool(*b),
        (Json::Bool(_), Value::Int(i)) => Json::Bool(*i != 0),
        (Json::Bool(_), Value::Str(s)) => Json::Bool(eval_bool(s)?),
        (Json::String(_), Value::Str(s)) => Json::String(s.clone()),
        (Json::String(_), Value::Bool(b)) => Json::String(show(&Value::Bool(*b))),
        (Json::Number(n), Value::Int(i)) if n.is_u64() || n.is_i64() => Json::from(*i),
        (Json::Number(n), Value::Float(f)) if n.is_u64() || n.is_i64() => {
            if f.fract() != 0.0 {
                return None;
            }
            Json::from(*f as i64)
        }
        (Json::Number(_), Value::Int(i)) => Json::from(*i as f64),
        (Json::Number(_), Value::Float(f)) => serde_json::Number::from_f64(*f).map(Json::Number)?,
        // An optional field (null in the preset): take the value as it is.
        (Json::Null, Value::Int(i)) => Json::from(*i),
        (Json::Null, Value::Float(f)) => serde_json::Number::from_f64(*f).map(Json::Number)?,
        (Json::Null, Value::Bool(b)) => Json::Bool(*b),
        (Json::Null, Value::Str(s)) => Json::String(s.clone()),
        _ => return None,
    })
}

/// The seqforge config of `arch` from the checkpoint's arguments (see the module docs), the
/// vocabulary sizes and padding index left for the caller. Refuses the options of
/// `import.unsupported` that are not neutral, naming them.
pub fn map_config(
    path: &Path,
    arch: &str,
    family: &Family,
    import: &FamilyImport,
    args: &Args,
) -> Result<Json> {
    let unsupported = |option: &str, value: &Value, reason: &str| Error::UnsupportedOption {
        path: path.to_path_buf(),
        option: option.to_string(),
        value: show(value),
        reason: reason.to_string(),
    };
    let mut args = args.clone();
    for d in import.derived {
        if d.archs.contains(&arch)
            && args.get(d.field).is_none_or(|v| *v == Value::None)
            && let Some(v) = args.get(d.from).cloned()
        {
            args.insert(d.field.to_string(), v);
        }
    }
    for u in import.unsupported {
        let Some(v) = args.get(u.option) else { continue };
        let fine = match u.supported {
            Supported::Off => is_off(v),
            Supported::Equals(other) => {
                *v == Value::None
                    || args
                        .get(other)
                        .is_some_and(|o| o.as_int().is_some() && o.as_int() == v.as_int())
            }
            Supported::Not(bad) => v.as_str() != Some(bad),
        };
        if !fine {
            return Err(unsupported(u.option, v, u.reason));
        }
    }
    let mut config = (family.preset)(arch).ok_or_else(|| Error::UnsupportedArch {
        path: path.to_path_buf(),
        arch: arch.to_string(),
        supported: supported_architectures().join(", "),
    })?;
    let Some(fields) = config.as_object_mut() else {
        return Err(Error::Config {
            path: path.to_path_buf(),
            message: "preset is not an object".into(),
        });
    };
    for (key, slot) in fields.iter_mut() {
        if matches!(key.as_str(), "src_vocab_size" | "tgt_vocab_size" | "pad_index") {
            continue;
        }
        match args.get(key) {
            None | Some(Value::None) => {}
            Some(v) => {
                *slot = coerce(v, slot).ok_or_else(|| {
                    unsupported(key, v, "a value seqforge's config cannot represent")
                })?;
            }
        }
    }
    Ok(config)
}

/// Drops the buffers seqforge's models make themselves: `*.version` and `*._float_tensor`.
fn drop_buffers(sd: &mut StateDict) {
    sd.retain(|k, _| !k.ends_with(".version") && !k.ends_with("._float_tensor"));
}

/// The `version` buffers of a state dict: name → value (fairseq reads 1 when one is absent).
pub type Versions = std::collections::BTreeMap<String, f32>;

fn version(versions: &Versions, key: &str) -> f32 {
    versions.get(key).copied().unwrap_or(1.0)
}

/// Renames `{prefix}.{old}.{weight,bias}` to `{prefix}.{new}.{weight,bias}`.
fn rename_pair(sd: &mut StateDict, prefix: &str, old: &str, new: &str) {
    for m in ["weight", "bias"] {
        if let Some(t) = sd.remove(&format!("{prefix}.{old}.{m}")) {
            sd.insert(format!("{prefix}.{new}.{m}"), t);
        }
    }
}

/// Splits fused `{prefix}.in_proj_weight` / `in_proj_bias` into `q_proj`, `k_proj`, `v_proj`
/// (fairseq's `MultiheadAttention.upgrade_state_dict_named`).
fn split_in_proj(path: &Path, sd: &mut StateDict, prefix: &str) -> Result<()> {
    for (fused, m) in [("in_proj_weight", "weight"), ("in_proj_bias", "bias")] {
        let key = format!("{prefix}.{fused}");
        let Some(t) = sd.remove(&key) else { continue };
        let rows = t.shape.first().copied().unwrap_or(0);
        let dim = rows / 3;
        let bad = || Error::ShapeMismatch {
            path: path.to_path_buf(),
            name: key.clone(),
            expected: vec![dim * 3],
            found: t.shape.clone(),
        };
        if !rows.is_multiple_of(3) {
            return Err(bad());
        }
        for (i, p) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
            let part = t.rows(i * dim, dim).ok_or_else(bad)?;
            sd.insert(format!("{prefix}.{p}.{m}"), part);
        }
    }
    Ok(())
}

/// The indices `i` of `{prefix}.layers.{i}.…` in the state dict.
fn layer_indices(sd: &StateDict, prefix: &str) -> Vec<usize> {
    let lead = format!("{prefix}.layers.");
    let mut ids: Vec<usize> =
        sd.keys().filter_map(|k| k.strip_prefix(&lead)?.split('.').next()?.parse().ok()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// fairseq 0.12.2's Transformer upgrades (`TransformerEncoderBase` / `TransformerDecoderBase`
/// / layers / `MultiheadAttention` `upgrade_state_dict_named`):
/// - `layers.{i}.layer_norms.{0,1}` → `self_attn_layer_norm`, `final_layer_norm` (encoder),
///   `layer_norms.{0,1,2}` → `self_attn_layer_norm`, `encoder_attn_layer_norm`,
///   `final_layer_norm` (decoder);
/// - fused `in_proj_weight`/`in_proj_bias` → `q_proj`, `k_proj`, `v_proj`;
/// - `decoder.output_projection.weight` from `decoder.embed_out` (old untied checkpoints) or
///   `decoder.embed_tokens.weight` (tied);
/// - the sinusoidal tables (`embed_positions.weights`), the fast-path copies fairseq 0.12.2
///   keeps in each encoder layer (`in_proj_weight`, `fc1_weight`, … directly under
///   `encoder.layers.{i}`) and the buffers are dropped;
/// - a stack saved before fairseq normalized after it (`version` < 2 for the encoder, ≤ 2 for
///   the decoder) has no final layer norm: `no_decoder_final_norm` for the decoder; a pre-norm
///   encoder of that age is refused.
pub fn upgrade_transformer(
    path: &Path,
    versions: &Versions,
    config: &mut Json,
    sd: &mut StateDict,
) -> Result<()> {
    let flag = |c: &Json, key: &str| c.get(key).and_then(Json::as_bool) == Some(true);
    let encoder_version = version(versions, "encoder.version");
    if encoder_version < 2.0 && flag(config, "encoder_normalize_before") {
        return Err(Error::UnsupportedOption {
            path: path.to_path_buf(),
            option: "encoder.version".into(),
            value: encoder_version.to_string(),
            reason: "a pre-norm encoder saved before fairseq added its final layer norm".into(),
        });
    }
    if version(versions, "decoder.version") <= 2.0 && flag(config, "decoder_normalize_before") {
        // fairseq drops the decoder's final layer norm for such checkpoints.
        config["no_decoder_final_norm"] = Json::Bool(true);
    }
    for side in ["encoder", "decoder"] {
        sd.remove(&format!("{side}.embed_positions.weights"));
        for i in layer_indices(sd, side) {
            let layer = format!("{side}.layers.{i}");
            let norms: &[(&str, &str)] = if side == "encoder" {
                &[("0", "self_attn_layer_norm"), ("1", "final_layer_norm")]
            } else {
                &[
                    ("0", "self_attn_layer_norm"),
                    ("1", "encoder_attn_layer_norm"),
                    ("2", "final_layer_norm"),
                ]
            };
            for (old, new) in norms {
                rename_pair(sd, &layer, &format!("layer_norms.{old}"), new);
            }
            for attn in ["self_attn", "encoder_attn"] {
                split_in_proj(path, sd, &format!("{layer}.{attn}"))?;
            }
            for fast in [
                "in_proj_weight",
                "in_proj_bias",
                "out_proj_weight",
                "out_proj_bias",
                "fc1_weight",
                "fc1_bias",
                "fc2_weight",
                "fc2_bias",
            ] {
                sd.remove(&format!("{layer}.{fast}"));
            }
        }
    }
    let shared =
        flag(config, "share_decoder_input_output_embed") || flag(config, "share_all_embeddings");
    if !sd.contains_key("decoder.output_projection.weight") {
        let from = if shared { "decoder.embed_tokens.weight" } else { "decoder.embed_out" };
        if let Some(t) = sd.get(from).cloned() {
            if !shared {
                sd.remove(from);
            }
            sd.insert("decoder.output_projection.weight".into(), t);
        }
    }
    if shared
        && !sd.contains_key("decoder.embed_tokens.weight")
        && let Some(t) = sd.get("encoder.embed_tokens.weight").cloned()
    {
        sd.insert("decoder.embed_tokens.weight".into(), t);
    }
    drop_buffers(sd);
    Ok(())
}

/// fairseq's `transformer_lm` upgrades: the decoder's of [`upgrade_transformer`], except that
/// a model ending in an adaptive softmax has no output projection (fairseq ignores
/// `share_decoder_input_output_embed` then).
pub fn upgrade_transformer_lm(
    path: &Path,
    versions: &Versions,
    config: &mut Json,
    sd: &mut StateDict,
) -> Result<()> {
    let adaptive_softmax = config.get("adaptive_softmax_cutoff").is_some_and(|c| !c.is_null());
    let had_projection = sd.contains_key("decoder.output_projection.weight");
    upgrade_transformer(path, versions, config, sd)?;
    if adaptive_softmax && !had_projection {
        sd.remove("decoder.output_projection.weight");
    }
    Ok(())
}

/// fairseq's fconv upgrade: a `decoder.version` below 2 used another weight-norm dimension,
/// which seqforge does not implement; otherwise only the buffers go.
pub fn upgrade_fconv(
    path: &Path,
    versions: &Versions,
    _config: &mut Json,
    sd: &mut StateDict,
) -> Result<()> {
    let v = version(versions, "decoder.version");
    if v < 2.0 {
        return Err(Error::UnsupportedOption {
            path: path.to_path_buf(),
            option: "decoder.version".into(),
            value: v.to_string(),
            reason: "fconv checkpoints before fairseq's version 2 normalize weights along \
                     another dimension"
                .into(),
        });
    }
    drop_buffers(sd);
    Ok(())
}

/// Turns `family`'s refusal (`message`) of a mapped `config` into an error naming the argument
/// at fault: the first argument of `args` whose preset value makes the config valid again is
/// reported as an [`Error::UnsupportedOption`]; otherwise [`Error::Config`] with the message.
pub fn blame(
    path: &Path,
    arch: &str,
    family: &Family,
    config: &Json,
    args: &Args,
    message: String,
) -> Error {
    let preset = (family.preset)(arch).unwrap_or(Json::Null);
    if let Some(fields) = config.as_object() {
        for (key, value) in fields {
            let (Some(arg), Some(default)) = (args.get(key), preset.get(key)) else { continue };
            if value == default {
                continue;
            }
            let mut reverted = config.clone();
            reverted[key] = default.clone();
            if (family.validate)(&reverted).is_ok() {
                return Error::UnsupportedOption {
                    path: path.to_path_buf(),
                    option: key.clone(),
                    value: show(arg),
                    reason: message,
                };
            }
        }
    }
    Error::Config { path: path.to_path_buf(), message }
}
