//! seqforge's exporter: compiles checkpoints into ONNX graphs without libtorch.
//!
//! - [`graph`]: a small ONNX graph builder over the `seqforge-schemas` protobuf types — one
//!   method per operator, dtypes and shapes checked as nodes are added, readable node names.
//! - [`config`]: the checkpoint's `config.json` (architecture and family, hyper-parameters,
//!   languages, dictionary identities).
//! - [`families`]: which graph builder compiles which model family, and its declared state.
//! - [`weights`]: the checkpoint's `model.safetensors`, every tensor checked by name and shape.
//! - [`fairseq`]: a fairseq checkpoint (`.pt`) taken directly, through `seqforge-fairseq`.
//! - [`transformer`]: fairseq's Transformer as the contract's encoder and decoder-step graphs
//!   (fp32, or fp16 with fp32 layer norms and softmaxes).
//! - [`lstm`]: fairseq's LSTM encoder-decoder as the same two graphs (attention, input feeding).
//! - [`fconv`]: fairseq's convolutional model (ConvS2S) as the same two graphs (weight
//!   normalisation folded, `LinearizedConvolution` windows as declared state).
//! - [`transformer_lm`]: fairseq's `transformer_lm` (adaptive input and softmax included) as a
//!   decoder-only model's prefill and step graphs.
//! - [`mod@export`]: the model directory (graphs, dictionaries, tokenizer, manifest), written
//!   atomically. The `seqforge-export` binary is a thin command line over [`export::export`].
//! - [`testing`]: helpers to write small random checkpoints for tests and benches; not part of
//!   the stable API.

pub mod config;
pub mod export;
pub mod fairseq;
pub mod families;
pub mod fconv;
pub mod graph;
pub mod lstm;
pub mod testing;
pub mod transformer;
pub mod transformer_lm;
pub mod weights;

mod error;
mod net;

pub use error::{Error, Result};
pub use export::{ExportOptions, ExportSummary, compile, export};
pub use transformer::BuildOptions;
