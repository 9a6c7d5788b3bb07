//! seqforge's trainer: corpora, data formats, models, criterions, optimizers and the training
//! loop, on libtorch through `tch`.
//!
//! Modules:
//! - [`corpus`]: recipes that make real parallel corpora from registry packages (SWORD Bibles).
//! - [`data`]: fairseq-compatible dictionaries, binarized (mmap indexed) datasets, preprocess.
//! - [`bpe`]: subword tokenization (learning and applying BPE with `tokenizers`).
//! - [`batching`]: language-pair batches by token budget and a resumable epoch iterator.

pub mod batching;
pub mod bpe;
pub mod corpus;
pub mod data;
mod error;

pub use error::{Error, Result};
