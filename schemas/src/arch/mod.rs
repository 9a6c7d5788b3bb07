//! Model families' hyper-parameters and fairseq's named architectures, in one place without
//! libtorch: the trainer builds models from these configs, the exporter compiles graphs from
//! the same structs, and both resolve `--arch` names through [`family_of`].
//!
//! Each family has a module with its config (fairseq's flat argument names and defaults, serde
//! with unknown fields refused: a field a reader does not know may change the maths), its
//! presets and its `validate`. Adding a family adds a module here and its rows to
//! [`families`].

use serde_json::Value;

pub mod fconv;
pub mod lstm;
pub mod transformer;
pub mod transformer_lm;

/// Errors of configs and architecture names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config a model cannot be built from.
    #[error("invalid model configuration: {0}")]
    Config(String),
    /// An architecture (or family) name that does not exist.
    #[error("unknown architecture {0:?}; known: {known}", known = architecture_names().join(", "))]
    UnknownArch(String),
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A model family: its registry name, its architecture presets and how to read its config.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// The model's registry name (`transformer`, `lstm`): what `config.json`'s architecture
    /// resolves to and what the exporter dispatches on.
    pub name: &'static str,
    /// The `--arch` names of this family, in registration order.
    pub architectures: &'static [&'static str],
    /// The preset config of one of [`Family::architectures`] as JSON.
    pub preset: fn(&str) -> Option<Value>,
    /// Checks a JSON config of this family (unknown fields, values the maths rely on).
    pub validate: fn(&Value) -> Result<()>,
}

fn to_json<T: serde::Serialize>(v: Option<T>) -> Option<Value> {
    serde_json::to_value(v?).ok()
}

fn parse_then<T: serde::de::DeserializeOwned>(
    family: &str,
    v: &Value,
    check: impl FnOnce(&T) -> Result<()>,
) -> Result<()> {
    let config: T = serde_json::from_value(v.clone())
        .map_err(|e| Error::Config(format!("{family} config: {e}")))?;
    check(&config)
}

/// The families built into seqforge.
pub fn families() -> &'static [Family] {
    const FAMILIES: &[Family] = &[
        Family {
            name: "transformer",
            architectures: transformer::PRESETS,
            preset: |a| to_json(transformer::preset(a)),
            validate: |v| {
                parse_then::<transformer::TransformerConfig>("transformer", v, |c| c.validate())
            },
        },
        Family {
            name: "lstm",
            architectures: lstm::PRESETS,
            preset: |a| to_json(lstm::preset(a)),
            validate: |v| parse_then::<lstm::LstmConfig>("lstm", v, |c| c.validate()),
        },
        Family {
            name: "fconv",
            architectures: fconv::PRESETS,
            preset: |a| to_json(fconv::preset(a)),
            validate: |v| parse_then::<fconv::FConvConfig>("fconv", v, |c| c.validate()),
        },
        Family {
            name: "transformer_lm",
            architectures: transformer_lm::PRESETS,
            preset: |a| to_json(transformer_lm::preset(a)),
            validate: |v| {
                parse_then::<transformer_lm::TransformerLmConfig>("transformer_lm", v, |c| {
                    c.validate()
                })
            },
        },
    ];
    FAMILIES
}

/// Every `(architecture, family)` pair, in registration order.
pub fn architectures() -> impl Iterator<Item = (&'static str, &'static Family)> {
    families().iter().flat_map(|f| f.architectures.iter().map(move |&a| (a, f)))
}

/// All architecture names.
pub fn architecture_names() -> Vec<&'static str> {
    architectures().map(|(a, _)| a).collect()
}

/// The family of architecture `arch`, or [`Error::UnknownArch`] listing the known ones.
pub fn family_of(arch: &str) -> Result<&'static Family> {
    architectures()
        .find(|(a, _)| *a == arch)
        .map(|(_, f)| f)
        .ok_or_else(|| Error::UnknownArch(arch.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_resolves_and_validates_with_vocabularies() {
        for (arch, family) in architectures() {
            let mut v = (family.preset)(arch).unwrap_or_default();
            // Large enough for the adaptive softmax cutoffs of the LM presets.
            for key in ["src_vocab_size", "tgt_vocab_size", "vocab_size"] {
                if v.get(key).is_some() {
                    v[key] = 100_000.into();
                }
            }
            assert_eq!((family.validate)(&v), Ok(()), "{arch}");
            assert_eq!(family_of(arch).map(|f| f.name), Ok(family.name));
        }
        let e = family_of("lstm_nope").map(|f| f.name);
        assert!(matches!(&e, Err(Error::UnknownArch(_))), "{e:?}");
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("transformer_tiny") && msg.contains("lstm"), "{msg}");
    }

    #[test]
    fn architecture_names_are_unique() {
        let mut names = architecture_names();
        let n = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n);
    }
}
