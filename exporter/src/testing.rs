//! Helpers to write small random checkpoints for tests and benches; not part of the stable API.
//!
//! A checkpoint here is what the trainer writes, produced without libtorch: fairseq state-dict
//! names in `model.safetensors` (a post-norm, sinusoidal, unshared Transformer with
//! deterministic pseudo-random weights) and a `config.json` holding the model config and the
//! identities of the dictionaries found in the data directory. Crates that cannot link the
//! trainer (the exporter's and runtime's tests, the ONNX benches) share these helpers instead
//! of each writing the format by hand.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, tensor::TensorView};
use seqforge_schemas::contract::Vocabulary;

use crate::error::{Error, Result};

/// A synthetic checkpoint's shape and `config.json` fields. Start from [`Self::tiny`] and
/// change fields with struct-update syntax.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticCheckpoint {
    /// The architecture recorded in `config.json`.
    pub arch: String,
    /// Model width (encoder and decoder).
    pub embed_dim: usize,
    /// Feed-forward width (encoder and decoder).
    pub ffn_dim: usize,
    /// Layers of the encoder and of the decoder.
    pub layers: usize,
    /// Attention heads (encoder and decoder).
    pub heads: usize,
    /// `max_source_positions` and `max_target_positions`.
    pub max_positions: usize,
    /// Rows of the encoder embedding.
    pub src_vocab: usize,
    /// Rows of the decoder embedding and output projection.
    pub tgt_vocab: usize,
    /// Record the vocabulary sizes in the model config; `false` writes 0, as the trainer does
    /// when the sizes come from the dictionaries.
    pub record_vocab_sizes: bool,
    /// Also write fairseq's non-parameter entries (`{encoder,decoder}.version`,
    /// `*.embed_positions._float_tensor`), which the exporter must ignore.
    pub fairseq_buffers: bool,
    /// Weights are `((i·31 + j·17) mod 29 − 14) / weight_divisor` for tensor `i`, element `j`.
    pub weight_divisor: f32,
    /// The task's `source_lang` (the data directory holds `dict.{source_lang}.txt`).
    pub source_lang: String,
    /// The task's `target_lang` (the data directory holds `dict.{target_lang}.txt`).
    pub target_lang: String,
}

impl SyntheticCheckpoint {
    /// A `transformer_tiny`: width 16, FFN 24, 2+2 layers, 2 heads, 64 positions, de → en,
    /// vocabulary sizes recorded, no fairseq buffers, weights within ±0.7.
    pub fn tiny(src_vocab: usize, tgt_vocab: usize) -> Self {
        Self {
            arch: "transformer_tiny".into(),
            embed_dim: 16,
            ffn_dim: 24,
            layers: 2,
            heads: 2,
            max_positions: 64,
            src_vocab,
            tgt_vocab,
            record_vocab_sizes: true,
            fairseq_buffers: false,
            weight_divisor: 20.0,
            source_lang: "de".into(),
            target_lang: "en".into(),
        }
    }

    /// Names and shapes of the state dict, in the order weights are drawn.
    pub fn state_dict(&self) -> Vec<(String, Vec<usize>)> {
        let (dim, ffn) = (self.embed_dim, self.ffn_dim);
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let attn = |t: &mut Vec<(String, Vec<usize>)>, p: &str| {
            for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                t.push((format!("{p}.{proj}.weight"), vec![dim, dim]));
                t.push((format!("{p}.{proj}.bias"), vec![dim]));
            }
        };
        let norm = |t: &mut Vec<(String, Vec<usize>)>, p: &str| {
            t.push((format!("{p}.weight"), vec![dim]));
            t.push((format!("{p}.bias"), vec![dim]));
        };
        let ffn = |t: &mut Vec<(String, Vec<usize>)>, p: &str| {
            t.push((format!("{p}.fc1.weight"), vec![ffn, dim]));
            t.push((format!("{p}.fc1.bias"), vec![ffn]));
            t.push((format!("{p}.fc2.weight"), vec![dim, ffn]));
            t.push((format!("{p}.fc2.bias"), vec![dim]));
        };
        for (side, vocab) in [("encoder", self.src_vocab), ("decoder", self.tgt_vocab)] {
            if self.fairseq_buffers {
                t.push((format!("{side}.version"), vec![1]));
            }
            t.push((format!("{side}.embed_tokens.weight"), vec![vocab, dim]));
            if self.fairseq_buffers {
                t.push((format!("{side}.embed_positions._float_tensor"), vec![1]));
            }
            for l in 0..self.layers {
                let p = format!("{side}.layers.{l}");
                attn(&mut t, &format!("{p}.self_attn"));
                norm(&mut t, &format!("{p}.self_attn_layer_norm"));
                if side == "decoder" {
                    attn(&mut t, &format!("{p}.encoder_attn"));
                    norm(&mut t, &format!("{p}.encoder_attn_layer_norm"));
                }
                ffn(&mut t, &p);
                norm(&mut t, &format!("{p}.final_layer_norm"));
            }
        }
        t.push(("decoder.output_projection.weight".into(), vec![self.tgt_vocab, dim]));
        t
    }

    /// Writes `model.safetensors` ([`Self::state_dict`]) and `config.json` into `checkpoint`
    /// (created if needed); the dictionaries must already be in `data`.
    pub fn write(&self, checkpoint: &Path, data: &Path) -> Result<()> {
        std::fs::create_dir_all(checkpoint)
            .map_err(|source| Error::Io { path: checkpoint.to_path_buf(), source })?;
        self.write_weights(&checkpoint.join("model.safetensors"), &self.state_dict())?;
        self.write_config(checkpoint, data)
    }

    /// Writes `tensors` (names and shapes, e.g. an altered [`Self::state_dict`]) to `path` as
    /// f32 safetensors with this checkpoint's weight pattern.
    pub fn write_weights(&self, path: &Path, tensors: &[(String, Vec<usize>)]) -> Result<()> {
        let data: Vec<Vec<u8>> = tensors
            .iter()
            .enumerate()
            .map(|(i, (_, shape))| {
                let n: usize = shape.iter().product();
                (0..n)
                    .flat_map(|j| {
                        ((((i * 31 + j * 17) % 29) as f32 - 14.0) / self.weight_divisor)
                            .to_le_bytes()
                    })
                    .collect()
            })
            .collect();
        let bad = |e: safetensors::SafeTensorError| Error::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let views = tensors
            .iter()
            .zip(&data)
            .map(|((name, shape), bytes)| {
                Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(bad)?))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize_to_file(views, None, path).map_err(bad)
    }

    /// Writes `config.json` into `checkpoint`, with the identities of `data`'s
    /// `dict.{source_lang}.txt` and `dict.{target_lang}.txt`.
    pub fn write_config(&self, checkpoint: &Path, data: &Path) -> Result<()> {
        let (src_vocab, tgt_vocab) =
            if self.record_vocab_sizes { (self.src_vocab, self.tgt_vocab) } else { (0, 0) };
        let dict = |lang: &str| data.join(format!("dict.{lang}.txt"));
        let config = serde_json::json!({
            "format_version": 1,
            "arch": self.arch,
            "model": {
                "encoder_embed_dim": self.embed_dim, "encoder_ffn_embed_dim": self.ffn_dim,
                "encoder_layers": self.layers, "encoder_attention_heads": self.heads,
                "decoder_embed_dim": self.embed_dim, "decoder_ffn_embed_dim": self.ffn_dim,
                "decoder_layers": self.layers, "decoder_attention_heads": self.heads,
                "max_source_positions": self.max_positions,
                "max_target_positions": self.max_positions,
                "src_vocab_size": src_vocab, "tgt_vocab_size": tgt_vocab, "pad_index": 1
            },
            "task": {"name": "translation", "config": {
                "source_lang": self.source_lang, "target_lang": self.target_lang
            }},
            "criterion": {"name": "cross_entropy", "config": {}},
            "optimizer": {"name": "adam", "config": {}},
            "lr_scheduler": {"name": "fixed", "config": {}},
            "precision": "fp32",
            "dictionaries": [
                dictionary_identity(&dict(&self.source_lang))?,
                dictionary_identity(&dict(&self.target_lang))?,
            ]
        });
        let path: PathBuf = checkpoint.join("config.json");
        let text = serde_json::to_string_pretty(&config)
            .map_err(|e| Error::Json { path: path.clone(), message: e.to_string() })?;
        std::fs::write(&path, text).map_err(|source| Error::Io { path, source })
    }
}

/// The `config.json` entry of the dictionary file at `path`: its file name, size and identity
/// hash, as the trainer records it.
pub fn dictionary_identity(path: &Path) -> Result<serde_json::Value> {
    let vocab = Vocabulary::load(path)?;
    let name = path
        .file_name()
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
    Ok(serde_json::json!({"name": name, "size": vocab.len(), "hash": vocab.identity_hash()}))
}

/// A fairseq `dict.txt` whose vocabulary has `size` symbols: the 4 specials (implicit) and the
/// words `{tag}4` … `{tag}{size-1}`, each with count 1.
pub fn numbered_dictionary(size: usize, tag: &str) -> String {
    (4..size).map(|i| format!("{tag}{i} 1\n")).collect()
}

/// The 256 symbols of a byte-level BPE without merges (GPT-2's byte → character map:
/// printable Latin-1 bytes stand for themselves, the others for U+0100 onwards), sorted.
pub fn byte_level_alphabet() -> Vec<String> {
    let printable = |b: u32| (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut extra = 0;
    let mut chars: Vec<char> = (0u32..256)
        .filter_map(|b| {
            let code = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(code)
        })
        .collect();
    chars.sort_unstable();
    chars.into_iter().map(String::from).collect()
}

/// A byte-level BPE `tokenizer.json` over `symbols` (NFC, ByteLevel pre-tokenizer and decoder,
/// no merges), as the trainer's `learn-bpe` writes them.
pub fn byte_level_tokenizer_json(symbols: &[String]) -> serde_json::Value {
    let vocab: std::collections::BTreeMap<&str, usize> =
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

/// Writes a data directory for a model that translates raw text: `dict.{src}.txt` and
/// `dict.{tgt}.txt` holding [`byte_level_alphabet`], and the matching `tokenizer.json`.
/// Returns the vocabulary size with fairseq's 4 special symbols.
pub fn write_byte_level_data(data: &Path, src: &str, tgt: &str) -> Result<usize> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    std::fs::create_dir_all(data).map_err(io(data.to_path_buf()))?;
    let symbols = byte_level_alphabet();
    let dict: String = symbols.iter().map(|s| format!("{s} 1\n")).collect();
    for lang in [src, tgt] {
        let path = data.join(format!("dict.{lang}.txt"));
        std::fs::write(&path, &dict).map_err(io(path.clone()))?;
    }
    let path = data.join("tokenizer.json");
    std::fs::write(&path, byte_level_tokenizer_json(&symbols).to_string())
        .map_err(io(path.clone()))?;
    Ok(symbols.len() + 4)
}
