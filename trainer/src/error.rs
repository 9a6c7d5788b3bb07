//! The trainer's error type: one enum wrapping each module's own errors.

/// Everything that can go wrong in the trainer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building or reading a corpus.
    #[error(transparent)]
    Corpus(#[from] crate::corpus::Error),
    /// Dictionaries, binarized datasets, preprocessing.
    #[error(transparent)]
    Data(#[from] crate::data::Error),
    /// Subword tokenization.
    #[error(transparent)]
    Bpe(#[from] crate::bpe::Error),
    /// Batching and epoch iteration.
    #[error(transparent)]
    Batching(#[from] crate::batching::Error),
    /// Building or running a model.
    #[error(transparent)]
    Model(#[from] crate::models::Error),
    /// Optimizers and learning-rate schedulers.
    #[error(transparent)]
    Optim(#[from] crate::optim::Error),
    /// Computing a loss.
    #[error(transparent)]
    Criterion(#[from] crate::criterions::Error),
    /// Saving or loading a checkpoint.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::Error),
    /// Mixed precision: loss scaling and master weights.
    #[error(transparent)]
    Fp16(#[from] crate::fp16::Error),
    /// Looking up or registering a named component.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// Importing a fairseq checkpoint.
    #[error(transparent)]
    ImportFairseq(#[from] crate::import_fairseq::Error),
    /// An operation in libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The trainer's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
