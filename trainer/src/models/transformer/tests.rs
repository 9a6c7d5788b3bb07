//! Tests of the Transformer.
