//! The model families the exporter compiles, by the family names of
//! [`seqforge_schemas::arch`]: one [`FamilyExporter`] each (its declared decoder state, its two
//! graphs, the checkpoint tensors its graphs may leave unread). Adding a family adds its graph
//! module and one entry in [`exporters`]; the export, the manifest and the runtime stay as they
//! are.

use seqforge_schemas::arch::fconv::FConvConfig;
use seqforge_schemas::arch::lstm::LstmConfig;
use seqforge_schemas::arch::transformer::TransformerConfig;
use seqforge_schemas::arch::transformer_lm::TransformerLmConfig;
use seqforge_schemas::contract::{GraphKind, ModelContract, StateSpec};
use seqforge_schemas::onnx::ModelProto;
use serde_json::Value;

use crate::config::parse_model;
use crate::error::Result;
use crate::transformer::{self, BuildOptions};
use crate::weights::Weights;
use crate::{fconv, lstm, transformer_lm};

/// The two graphs of one export.
#[derive(Debug, Clone)]
pub struct Graphs {
    /// The graph that runs first: the encoder
    /// ([`seqforge_schemas::contract::ENCODER_FILE`]) of a translation model, the prefill
    /// ([`seqforge_schemas::contract::PREFILL_FILE`]) of a language model.
    pub first: ModelProto,
    /// [`seqforge_schemas::contract::DECODER_FILE`].
    pub decoder: ModelProto,
}

/// How the exporter compiles one family.
#[derive(Clone, Copy)]
pub struct FamilyExporter {
    /// The family name ([`seqforge_schemas::arch::Family::name`]).
    pub family: &'static str,
    /// The decoder state the graphs carry, for a (validated) config and the build options.
    pub state: fn(&Value, BuildOptions) -> Result<StateSpec>,
    /// Builds both graphs; each carries `contract.to_metadata(kind)`.
    pub build: fn(&Weights, &Value, BuildOptions, &ModelContract) -> Result<Graphs>,
    /// Checkpoint tensors the graphs legitimately do not read (buffers, tied aliases).
    pub ignorable: fn(&Value, &str) -> bool,
}

impl std::fmt::Debug for FamilyExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FamilyExporter").field("family", &self.family).finish_non_exhaustive()
    }
}

fn metadata(contract: &ModelContract, kind: GraphKind) -> Vec<(String, String)> {
    contract.to_metadata(kind)
}

/// The families this exporter compiles.
pub fn exporters() -> &'static [FamilyExporter] {
    const EXPORTERS: &[FamilyExporter] = &[
        FamilyExporter {
            family: "transformer",
            state: |v, options| {
                let c: TransformerConfig = parse_model(v)?;
                Ok(c.decoder_state(transformer::kv_cache(&c, options)?))
            },
            build: |w, v, options, contract| {
                let c: TransformerConfig = parse_model(v)?;
                Ok(Graphs {
                    first: transformer::build_encoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Encoder),
                    )?,
                    decoder: transformer::build_decoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Decoder),
                    )?,
                })
            },
            ignorable: |v, name| {
                parse_model::<TransformerConfig>(v)
                    .is_ok_and(|c| transformer::ignorable_tensor(&c, name))
            },
        },
        FamilyExporter {
            family: "lstm",
            state: |v, _| Ok(parse_model::<LstmConfig>(v)?.decoder_state()),
            build: |w, v, options, contract| {
                let c: LstmConfig = parse_model(v)?;
                Ok(Graphs {
                    first: lstm::build_encoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Encoder),
                    )?,
                    decoder: lstm::build_decoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Decoder),
                    )?,
                })
            },
            ignorable: |v, name| {
                parse_model::<LstmConfig>(v).is_ok_and(|c| lstm::ignorable_tensor(&c, name))
            },
        },
        FamilyExporter {
            family: "fconv",
            state: |v, _| fconv::decoder_state(&parse_model::<FConvConfig>(v)?),
            build: |w, v, options, contract| {
                let c: FConvConfig = parse_model(v)?;
                Ok(Graphs {
                    first: fconv::build_encoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Encoder),
                    )?,
                    decoder: fconv::build_decoder(
                        w,
                        &c,
                        options,
                        &metadata(contract, GraphKind::Decoder),
                    )?,
                })
            },
            ignorable: |v, name| {
                parse_model::<FConvConfig>(v).is_ok_and(|c| fconv::ignorable_tensor(&c, name))
            },
        },
        FamilyExporter {
            family: "transformer_lm",
            state: |v, options| {
                let c: TransformerLmConfig = parse_model(v)?;
                Ok(c.decoder_state(transformer_lm::kv_cache(&c, options)?))
            },
            build: |w, v, options, contract| {
                let c: TransformerLmConfig = parse_model(v)?;
                let spec = transformer_lm::spec(&c)?;
                let in_place = transformer_lm::kv_cache(&c, options)?
                    == seqforge_schemas::arch::transformer::KvCache::InPlace;
                Ok(Graphs {
                    first: transformer_lm::build_prefill(
                        w,
                        &spec,
                        options,
                        &metadata(contract, GraphKind::Prefill),
                    )?,
                    decoder: transformer_lm::build_step(
                        w,
                        &spec,
                        options,
                        in_place,
                        &metadata(contract, GraphKind::Decoder),
                    )?,
                })
            },
            ignorable: |v, name| {
                parse_model::<TransformerLmConfig>(v)
                    .is_ok_and(|c| transformer_lm::ignorable_tensor(&c, name))
            },
        },
    ];
    EXPORTERS
}

/// The exporter of `family`, if this build has one.
pub fn exporter_for(family: &str) -> Option<&'static FamilyExporter> {
    exporters().iter().find(|e| e.family == family)
}
