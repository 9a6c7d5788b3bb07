//! Helpers to write small random checkpoints for tests and benches; not part of the stable API.
//!
//! A checkpoint here is what the trainer writes, produced without libtorch: fairseq state-dict
//! names in `model.safetensors` (a post-norm, sinusoidal, unshared Transformer with
//! deterministic pseudo-random weights) and a `config.json` holding the model config and the
//! identities of the dictionaries found in the data directory. Crates that cannot link the
//! trainer (the exporter's and runtime's tests, the ONNX benches) share these helpers instead
//! of each writing the format by hand.

use std::path::{Path, PathBuf};

use safetensors::tensor::TensorView;
use seqforge_schemas::contract::{
    DECODER_FILE, Dtype, FORMAT_VERSION, FileEntry, GraphKind, LM_DICT_FILE, MANIFEST_FILE,
    Manifest, ModelContract, ModelFiles, PREFILL_FILE, SpecialIds, StateDtype, StatePolicy,
    StateSpec, StateTensor, TOKENIZER_FILE, Task, Vocabulary, names,
};
use seqforge_schemas::onnx::{ModelProto, StringStringEntryProto};

use crate::error::{Error, Result};
use crate::graph::{DType, Dim, GraphBuilder};

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
                Ok((
                    name.clone(),
                    TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map_err(bad)?,
                ))
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

/// Writes a language model's directory under the v4 contract from its two graphs: `prefill.onnx`,
/// `decoder.onnx` (both given the contract's metadata here), `dict.txt`, an optional
/// `tokenizer.json` and the manifest with every file's SHA-256. `contract.task` must be
/// [`Task::LanguageModeling`](seqforge_schemas::contract::Task). Tests of any decoder-only
/// family (the tiny model of [`TinyCausalLm`], the real `transformer_lm` graphs) share it.
pub fn write_lm_dir(
    dir: &Path,
    contract: &ModelContract,
    mut prefill: ModelProto,
    mut decoder: ModelProto,
    dict: &str,
    tokenizer: Option<&[u8]>,
) -> Result<Manifest> {
    use prost::Message;
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let write = |name: &str, bytes: &[u8]| -> Result<FileEntry> {
        let path = dir.join(name);
        std::fs::write(&path, bytes).map_err(|source| Error::Io { path, source })?;
        Ok(FileEntry { name: name.to_string(), sha256: crate::weights::sha256_hex(bytes) })
    };
    let metadata = |kind: GraphKind| {
        contract
            .to_metadata(kind)
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key: Some(key), value: Some(value) })
            .collect::<Vec<_>>()
    };
    prefill.metadata_props = metadata(GraphKind::Prefill);
    decoder.metadata_props = metadata(GraphKind::Decoder);
    let dict = write(LM_DICT_FILE, dict.as_bytes())?;
    let manifest = Manifest {
        contract: contract.clone(),
        files: ModelFiles {
            encoder: None,
            prefill: Some(write(PREFILL_FILE, &prefill.encode_to_vec())?),
            decoder: write(DECODER_FILE, &decoder.encode_to_vec())?,
            src_dict: dict.clone(),
            tgt_dict: dict,
            tokenizer: tokenizer.map(|t| write(TOKENIZER_FILE, t)).transpose()?,
        },
        source_lang: None,
        target_lang: None,
        producer: format!("seqforge-exporter {} (testing)", env!("CARGO_PKG_VERSION")),
        checkpoint: "synthetic".into(),
        num_updates: 0,
    };
    write(MANIFEST_FILE, manifest.to_json().as_bytes())?;
    Ok(manifest)
}

/// A tiny deterministic causal language model, real ONNX graphs under the v4 contract: the
/// next-token logits at position `t` are `(mean(E[x₀..=xₜ]) + P[t]) · W` (token embeddings `E`
/// `[V, D]`, learned positions `P` `[positions, D]`, output `W` `[D, V]`, pseudo-random
/// weights). Its state is one `Append` tensor `keys` `[rows, past, dim]` (the embeddings so
/// far); the prefill computes every position with a cumulative sum, the step graph from the
/// cache, so the two agree to rounding. The step graph takes `position`.
#[derive(Debug, Clone, PartialEq)]
pub struct TinyCausalLm {
    /// Vocabulary size (the 4 specials included).
    pub vocab: usize,
    /// Embedding width.
    pub dim: usize,
    /// Positions (`max_target_positions`, the leading EOS included).
    pub positions: usize,
    /// Weights are `((i·37 + j·11) mod 23 − 11) / weight_divisor` for tensor `i`, element `j`.
    pub weight_divisor: f32,
}

impl TinyCausalLm {
    /// Vocabulary 24, width 8, 32 positions.
    pub fn new() -> Self {
        Self { vocab: 24, dim: 8, positions: 32, weight_divisor: 8.0 }
    }

    fn weights(&self, i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| (((i * 37 + j * 11) % 23) as f32 - 11.0) / self.weight_divisor).collect()
    }

    /// The contract: task `language_modeling`, family `tiny_causal_lm`, fp32, one dictionary.
    pub fn contract(&self) -> ModelContract {
        ModelContract {
            format_version: FORMAT_VERSION,
            task: Task::LanguageModeling,
            family: "tiny_causal_lm".into(),
            arch: "tiny_causal_lm".into(),
            src_vocab_size: self.vocab,
            tgt_vocab_size: self.vocab,
            special: SpecialIds::default(),
            max_source_positions: self.positions,
            max_target_positions: self.positions,
            dtype: Dtype::Fp32,
            checkpoint_sha256: "00".repeat(32),
            state: StateSpec {
                dims: [("dim".to_string(), self.dim)].into(),
                tensors: vec![StateTensor {
                    name: "keys".into(),
                    dtype: StateDtype::Model,
                    shape: vec!["rows".into(), "past".into(), "dim".into()],
                    policy: StatePolicy::Append { axis: "past".into() },
                }],
            },
        }
    }

    fn parameters(&self, g: &mut GraphBuilder) -> Result<[crate::graph::Value; 3]> {
        let (v, d, p) = (self.vocab, self.dim, self.positions);
        Ok([
            g.initializer_f32(
                "embed_tokens.weight",
                &[v as i64, d as i64],
                &self.weights(0, v * d),
            )?,
            g.initializer_f32(
                "embed_positions.weight",
                &[p as i64, d as i64],
                &self.weights(1, p * d),
            )?,
            g.initializer_f32(
                "output_projection.weight",
                &[d as i64, v as i64],
                &self.weights(2, d * v),
            )?,
        ])
    }

    /// The prefill graph (`tokens` → `log_probs` `[B, T, V]`, `present.keys` `[B, T, D]`).
    pub fn prefill(&self) -> Result<ModelProto> {
        let mut g = GraphBuilder::new("tiny_causal_lm.prefill");
        let tokens =
            g.input(names::TOKENS, DType::I64, vec![Dim::named("batch"), Dim::named("tokens")])?;
        let [embed, positions, out] = self.parameters(&mut g)?;
        let x = g.gather("embed", &embed, &tokens, 0)?;
        let keys = g.identity(&names::present("keys"), &x)?;
        let sum = g.cumsum("sum", &x, 1)?;
        let same = g.equal("same", &tokens, &tokens)?;
        let ones = g.cast("ones", &same, DType::I64)?;
        let count = g.cumsum("count", &ones, 1)?;
        let one = g.initializer_i64("one", &[], &[1])?;
        let position = g.sub("position", &count, &one)?;
        let count = g.cast("count_f", &count, DType::F32)?;
        let count = g.unsqueeze("count_3d", &count, &[2])?;
        let mean = g.div("mean", &sum, &count)?;
        let pos = g.gather("embed_positions", &positions, &position, 0)?;
        let h = g.add("hidden", &mean, &pos)?;
        let logits = g.matmul("logits", &h, &out)?;
        let lp = g.log_softmax(names::LOG_PROBS, &logits, -1)?;
        g.output(&lp);
        g.output(&keys);
        Ok(g.finish(&[]))
    }

    /// The step graph (`prev_tokens`, `reorder`, `position`, `past.keys` → `log_probs` `[R, V]`,
    /// `present.keys`).
    pub fn step(&self) -> Result<ModelProto> {
        let mut g = GraphBuilder::new("tiny_causal_lm.step");
        let rows = || Dim::named("rows");
        let prev = g.input(names::PREV_TOKENS, DType::I64, vec![rows(), Dim::Fixed(1)])?;
        let reorder = g.input(names::REORDER, DType::I64, vec![rows()])?;
        let position = g.input(names::POSITION, DType::I64, vec![Dim::Fixed(1)])?;
        let past = g.input(
            &names::past("keys"),
            DType::F32,
            vec![Dim::named("past_rows"), Dim::named("past"), Dim::Fixed(self.dim as i64)],
        )?;
        let [embed, positions, out] = self.parameters(&mut g)?;
        let x = g.gather("embed", &embed, &prev, 0)?;
        let past = g.gather("past_keys", &past, &reorder, 0)?;
        let keys = g.concat(&names::present("keys"), &[&past, &x], 1)?;
        let sum = g.reduce_sum("sum", &keys, 1)?;
        let count = g.cast("count", &position, DType::F32)?;
        let one = g.scalar("one", DType::F32, 1.0)?;
        let count = g.add("count_1", &count, &one)?;
        let mean = g.div("mean", &sum, &count)?;
        let pos = g.gather("embed_positions", &positions, &position, 0)?;
        let h = g.add("hidden", &mean, &pos)?;
        let logits = g.matmul("logits", &h, &out)?;
        let lp = g.log_softmax(names::LOG_PROBS, &logits, -1)?;
        g.output(&lp);
        g.output(&keys);
        Ok(g.finish(&[]))
    }

    /// The log-probabilities the model gives after each prefix of `tokens` (computed on the
    /// host in f64, independent of the graphs): row `t` is the distribution after
    /// `tokens[..=t]`.
    pub fn reference_log_probs(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let (v, d) = (self.vocab, self.dim);
        let (e, p, w) =
            (self.weights(0, v * d), self.weights(1, self.positions * d), self.weights(2, d * v));
        let mut sum = vec![0f64; d];
        let mut out = Vec::with_capacity(tokens.len());
        for (t, &tok) in tokens.iter().enumerate() {
            let mut h = vec![0f64; d];
            for k in 0..d {
                sum[k] += f64::from(e[tok as usize * d + k]);
                h[k] = sum[k] / (t + 1) as f64 + f64::from(p[t * d + k]);
            }
            let logits: Vec<f64> = (0..v)
                .map(|j| (0..d).map(|k| h[k] * f64::from(w[k * v + j])).sum::<f64>())
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let z = max + logits.iter().map(|l| (l - max).exp()).sum::<f64>().ln();
            out.push(logits.iter().map(|l| l - z).collect());
        }
        out
    }

    /// Writes the model directory (graphs, `dict.txt` of the words `w4 … w{V-1}`, manifest).
    pub fn write(&self, dir: &Path) -> Result<Manifest> {
        let dict = numbered_dictionary(self.vocab, "w");
        write_lm_dir(dir, &self.contract(), self.prefill()?, self.step()?, &dict, None)
    }
}

impl Default for TinyCausalLm {
    fn default() -> Self {
        Self::new()
    }
}
