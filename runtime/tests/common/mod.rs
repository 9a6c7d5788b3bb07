//! The test fixture shared by the runtime's integration tests: a tiny checkpoint written in the
//! trainer's format (fairseq state-dict names, deterministic weights) and exported with the
//! exporter library together with a byte-level BPE `tokenizer.json`.
//!
//! Include it with `mod common;` from a test file of the runtime crate.
#![allow(dead_code, reason = "each test file uses its own part of the shared fixture")]

use std::path::PathBuf;

use anyhow::Result;
use seqforge_exporter::testing::{SyntheticCheckpoint, write_byte_level_data};

/// An exported model directory (and the temporary folder holding it).
pub struct Fixture {
    /// Keeps the temporary folder alive; deleted on drop.
    _tmp: tempfile::TempDir,
    /// The temporary folder (checkpoint, data and model live below it); tests may write here.
    pub root: PathBuf,
    /// The exported model directory.
    pub model: PathBuf,
}

/// Writes the tiny checkpoint (source `es`, target `en`, the byte-level alphabet as both
/// dictionaries, max 64 source positions) and exports it to `root/model`.
pub fn fixture() -> Result<Fixture> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().to_path_buf();
    let ckpt = root.join("checkpoint_last");
    let data = root.join("data");
    std::fs::create_dir_all(&ckpt)?;
    let vocab = write_byte_level_data(&data, "es", "en")?;
    SyntheticCheckpoint { source_lang: "es".into(), ..SyntheticCheckpoint::tiny(vocab, vocab) }
        .write(&ckpt, &data)?;
    let model = root.join("model");
    seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&ckpt, &data, &model))?;
    Ok(Fixture { _tmp: tmp, root, model })
}
