//! Tests of the search: fairseq's scripted-probability cases, ported exactly, and properties.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod behaviour;
mod fairseq;
mod oracle;
mod scripted;
