//! The exporter's error type.

/// Everything that can go wrong while exporting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node's inputs do not fit the operator (dtype or shape).
    #[error("graph node {node}: {message}")]
    Node {
        /// The node (its output name).
        node: String,
        /// What does not fit.
        message: String,
    },
    /// Two values were given the same name.
    #[error("graph: the name {0:?} is used twice")]
    DuplicateName(String),
    /// An initializer's data does not match its declared shape.
    #[error("initializer {name}: shape {dims:?} needs {expected} values, got {got}")]
    InitializerSize {
        /// The initializer.
        name: String,
        /// Its declared shape.
        dims: Vec<i64>,
        /// Values the shape needs.
        expected: usize,
        /// Values given.
        got: usize,
    },
}

/// The exporter's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
