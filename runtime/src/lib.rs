//! seqforge's runtime: executes exported models and searches over their outputs.
//!
//! - [`decoding`]: the [`decoding::IncrementalDecoder`] contract between search and models,
//!   implemented by the trainer's libtorch models and by the ONNX backend.
//! - [`search`]: beam, diverse beam, diverse siblings, sampling and greedy search over any
//!   [`decoding::IncrementalDecoder`], with fairseq 0.12.2's semantics; needs no ONNX Runtime.
//! - [`score`]: BLEU, chrF and chrF++ exactly as sacreBLEU 2.6.0 computes and prints them
//!   (the trainer's `--eval-bleu`, `seqforge score`); needs no ONNX Runtime.
//! - [`lm`]: language-model evaluation (fairseq-eval-lm's blocks, context window and
//!   token- or word-level perplexity) over any scorer; needs no ONNX Runtime.
//! - [`onnx`] (feature `onnx`, on by default): the ONNX Runtime backend — locating and loading
//!   the ONNX Runtime shared library, and building sessions from exported graphs.
//! - [`text`]: raw text lines → source ids and hypothesis ids → text, exactly as the trainer's
//!   `preprocess --tokenizer` turned the corpus into dictionary symbols.
//! - [`pool`] (feature `onnx`): a thread-safe translator (raw texts → n-best detokenized
//!   hypotheses) with a fixed number of workers over one shared model, under the C ABI and the
//!   HTTP server.
//! - `capi` (feature `capi`): the C ABI (`seqforge_*` functions, `include/seqforge.h`) over
//!   [`pool`], built into `libseqforge.so` / `libseqforge.a` by the `seqforge-capi` crate.
//! - [`cli`] (feature `onnx`): the `seqforge generate` and `seqforge interactive` commands.
//! - [`serve`] (feature `serve`, on by default): `seqforge serve`, an HTTP server (tokio +
//!   axum) with dynamic batching, a bounded queue, limits and Prometheus metrics.
//!
//! The crate builds without the `onnx` feature (the trainer uses it that way), so code that
//! does not need ONNX Runtime never links or loads it.

#[cfg(feature = "capi")]
pub mod capi;
#[cfg(feature = "onnx")]
pub mod cli;
pub mod decoding;
mod error;
pub mod indexed;
pub mod lm;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "onnx")]
pub mod pool;
pub mod score;
pub mod search;
#[cfg(feature = "serve")]
pub mod serve;
pub mod text;

pub use error::{Error, Result};
