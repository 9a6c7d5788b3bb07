//! The Transformer's hyper-parameters and presets live in `seqforge_schemas::arch::transformer`
//! (shared with the exporter, no libtorch); re-exported here for the model's code.

pub use seqforge_schemas::arch::transformer::{Activation, PRESETS, TransformerConfig, preset};
