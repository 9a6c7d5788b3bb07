//! The test fixture shared by the runtime's integration tests: a tiny checkpoint written in the
//! trainer's format (fairseq state-dict names, deterministic weights) and exported with the
//! exporter library together with a byte-level BPE `tokenizer.json`.
//!
//! Include it with `mod common;` from a test file of the runtime crate.
#![allow(dead_code, reason = "each test file uses its own part of the shared fixture")]

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use seqforge_exporter::testing::SyntheticCheckpoint;

/// The byte-level alphabet (what a byte-level BPE without merges produces), sorted.
pub fn alphabet() -> Vec<String> {
    let mut chars: Vec<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    chars.sort_unstable();
    chars.into_iter().map(String::from).collect()
}

/// A byte-level BPE tokenizer.json (NFC, ByteLevel pre-tokenizer and decoder, no merges), as
/// the trainer's `learn-bpe` writes them.
pub fn tokenizer_json(symbols: &[String]) -> serde_json::Value {
    let vocab: BTreeMap<&str, usize> =
        symbols.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
                          "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
                    "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": []}
    })
}

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
    std::fs::create_dir_all(&data)?;
    let symbols = alphabet();
    let dict: String = symbols.iter().map(|s| format!("{s} 1\n")).collect();
    std::fs::write(data.join("dict.es.txt"), &dict)?;
    std::fs::write(data.join("dict.en.txt"), &dict)?;
    std::fs::write(data.join("tokenizer.json"), tokenizer_json(&symbols).to_string())?;
    let vocab = symbols.len() + 4;
    SyntheticCheckpoint { source_lang: "es".into(), ..SyntheticCheckpoint::tiny(vocab, vocab) }
        .write(&ckpt, &data)?;
    let model = root.join("model");
    seqforge_exporter::export(&seqforge_exporter::ExportOptions::new(&ckpt, &data, &model))?;
    Ok(Fixture { _tmp: tmp, root, model })
}
