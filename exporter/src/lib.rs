//! seqforge's exporter: compiles checkpoints into ONNX graphs without libtorch.
//!
//! - [`graph`]: a small ONNX graph builder over the `seqforge-schemas` protobuf types — one
//!   method per operator, dtypes and shapes checked as nodes are added, readable node names.

pub mod graph;

mod error;

pub use error::{Error, Result};
