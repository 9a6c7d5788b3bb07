//! seqforge's trainer: corpora, data formats, models, criterions, optimizers and the training
//! loop, on libtorch through `tch`.
//!
//! Modules:
//! - [`corpus`]: recipes that make real parallel corpora from registry packages (SWORD Bibles).
//! - [`data`]: fairseq-compatible dictionaries, binarized (mmap indexed) datasets, preprocess.
//! - [`bpe`]: subword tokenization (learning and applying BPE with `tokenizers`).
//! - [`batching`]: language-pair batches by token budget and a resumable epoch iterator.
//! - [`models`]: the Transformer (fairseq names and maths) with incremental decoding.
//! - [`criterions`]: cross entropy and label-smoothed cross entropy.
//! - [`checkpoint`]: checkpoint directories (safetensors + JSON), atomic saves, retention.
//! - [`fp16`]: the dynamic loss scaler, fp32 master weights, gradient clipping.
//! - [`registry`]: named components (models, criterions, optimizers, schedulers) and plugins.
//! - [`optim`]: optimizers (adam, nag, sgd, adafactor) and learning-rate schedulers.
//! - [`distributed`]: data-parallel training on c10d (TCPStore, ProcessGroupGloo) through a
//!   C++ shim, DDP-style bucketed gradient all-reduce overlapped with backward, the launcher.
//! - [`tasks`]: what a run trains on and how it is validated (`translation`,
//!   `language_modeling`), chosen with `--task`.
//! - [`eval_lm`]: `seqforge-train eval-lm`, fairseq-eval-lm's perplexity of a language model.
//! - [`import_fairseq`]: `seqforge-train import-fairseq`, a fairseq checkpoint (`.pt`) as a
//!   seqforge checkpoint directory.
//! - [`train`]: the training loop (`seqforge-train train`, fairseq-train's flags), logging.

pub mod batching;
pub mod bpe;
pub mod checkpoint;
pub mod corpus;
pub mod criterions;
pub mod data;
pub mod distributed;
mod error;
pub mod eval_lm;
pub mod export_check;
pub mod fp16;
pub mod import_fairseq;
pub mod models;
pub mod optim;
pub mod registry;
pub mod tasks;
pub mod train;

pub use error::{Error, Result};
