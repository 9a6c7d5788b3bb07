//! The exported model contract: what the exporter writes and the runtime reads.
//!
//! A *model directory* holds:
//!
//! | file | what |
//! |---|---|
//! | [`ENCODER_FILE`] | source tokens → encoder output, padding mask, per-layer cross-attention K/V |
//! | [`DECODER_FILE`] | one incremental decoder step (an empty past is legal: one graph for every step) |
//! | [`MANIFEST_FILE`] | [`Manifest`]: the [`ModelContract`] plus file names and SHA-256 hashes |
//! | `tokenizer.json` | the HuggingFace tokenizer the data was preprocessed with (optional) |
//! | `dict.{lang}.txt` | the fairseq dictionaries (ids ↔ symbols) |
//!
//! Both ONNX files also carry the [`ModelContract`] in their `metadata_props` (keys
//! `seqforge.*`, see [`ModelContract::to_metadata`]), so a graph is self-describing even when it
//! travels without its manifest; the runtime checks that both agree.
//!
//! ## Graph inputs and outputs
//!
//! Shapes use `B` (sentences), `R` (live hypotheses = decoder rows), `S` (source length), `P`
//! (past length), `H` (heads), `D` (head dim), `E` (model dim), `V` (target vocabulary), `L`
//! (layer index). `T` is the model dtype (`float` or `float16`).
//!
//! Encoder ([`ENCODER_FILE`]):
//! - in `src_tokens` int64 `[B, S]` (right- or left-padded with `pad`; padding is masked);
//! - out `encoder_out` T `[B, S, E]`, `encoder_padding_mask` bool `[B, S]` (true = padding),
//!   `cross_key.{L}` / `cross_value.{L}` T `[B, H, S, D]` (decoder layer `L`'s encoder-attention
//!   keys and values, projected once per sentence).
//!
//! Decoder step ([`DECODER_FILE`]):
//! - in `prev_tokens` int64 `[R, 1]` (the last token of each row; the first step feeds `eos`,
//!   as fairseq does);
//! - in `reorder` int64 `[R]`: row `r` of this step continues row `reorder[r]` of the past
//!   (a `Gather` on the batch axis inside the graph, so a beam reorder never moves the cache
//!   through the host; pass `0..R` when nothing moved);
//! - in `encoder_padding_mask` bool `[R, S]`, `cross_key.{L}` / `cross_value.{L}` T `[R, H, S, D]`
//!   (already in row order);
//! - in `past_key.{L}` / `past_value.{L}` T `[R', H, P, D]` (`R'` = rows of the previous step;
//!   `P` = 0 on the first step);
//! - out `log_probs` float32 `[R, V]` (log-softmax computed in the graph, in fp32 for every
//!   dtype), `present_key.{L}` / `present_value.{L}` T `[R, H, P + 1, D]`.
//!
//! The step index is not an input: it is `P`, read from the past's shape inside the graph, so
//! the position can never disagree with the cache. Target positions are `pad + 1 + P` (fairseq's
//! positions skip the padding index).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The model-directory format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The encoder graph's file name.
pub const ENCODER_FILE: &str = "encoder.onnx";
/// The decoder-step graph's file name.
pub const DECODER_FILE: &str = "decoder.onnx";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The tokenizer's file name (when the model has one).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The prefix of every `metadata_props` key the exporter writes.
pub const METADATA_PREFIX: &str = "seqforge.";

/// Input and output names of the two graphs.
pub mod names {
    /// Encoder input: source tokens.
    pub const SRC_TOKENS: &str = "src_tokens";
    /// Encoder output: the last encoder layer's states.
    pub const ENCODER_OUT: &str = "encoder_out";
    /// Encoder output and decoder input: the source padding mask.
    pub const ENCODER_PADDING_MASK: &str = "encoder_padding_mask";
    /// Decoder input: last tokens.
    pub const PREV_TOKENS: &str = "prev_tokens";
    /// Decoder input: gather index into the past's rows.
    pub const REORDER: &str = "reorder";
    /// Decoder output: log-probabilities over the target vocabulary.
    pub const LOG_PROBS: &str = "log_probs";

    /// `cross_key.{layer}`.
    pub fn cross_key(layer: usize) -> String {
        format!("cross_key.{layer}")
    }
    /// `cross_value.{layer}`.
    pub fn cross_value(layer: usize) -> String {
        format!("cross_value.{layer}")
    }
    /// `past_key.{layer}`.
    pub fn past_key(layer: usize) -> String {
        format!("past_key.{layer}")
    }
    /// `past_value.{layer}`.
    pub fn past_value(layer: usize) -> String {
        format!("past_value.{layer}")
    }
    /// `present_key.{layer}`.
    pub fn present_key(layer: usize) -> String {
        format!("present_key.{layer}")
    }
    /// `present_value.{layer}`.
    pub fn present_value(layer: usize) -> String {
        format!("present_value.{layer}")
    }

    /// The naming pattern recorded in the metadata (`seqforge.io_names`), so a runtime can tell
    /// a future renaming from a corrupt file.
    pub const PATTERN: &str = "src_tokens;encoder_out;encoder_padding_mask;cross_{key,value}.{L};\
                               prev_tokens;reorder;past_{key,value}.{L};log_probs;present_{key,value}.{L}";
}

/// Errors of reading or checking a contract. Each names the file or key at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A manifest that is not valid JSON for [`Manifest`].
    #[error("{path}: not a valid seqforge manifest: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said.
        message: String,
    },
    /// A format version this build does not read.
    #[error(
        "{what}: model format version {found}, this seqforge reads version {supported}; \
         re-export the model with this seqforge version"
    )]
    UnsupportedVersion {
        /// The file or graph.
        what: String,
        /// The version found.
        found: u32,
        /// [`FORMAT_VERSION`].
        supported: u32,
    },
    /// A metadata key that is missing or does not parse.
    #[error("{what}: metadata `{key}`: {message}")]
    Metadata {
        /// The file or graph.
        what: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// Two descriptions of the same model disagree (manifest vs graph metadata).
    #[error("{what}: `{field}` is {found} but the manifest says {expected}")]
    Mismatch {
        /// The file or graph.
        what: String,
        /// The field.
        field: String,
        /// The manifest's value.
        expected: String,
        /// The other value.
        found: String,
    },
    /// A malformed `dict.txt` line.
    #[error("{path}:{line}: {message}")]
    Dictionary {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The numeric format of an exported model's weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit floats.
    #[default]
    Fp32,
    /// 16-bit floats, with layer-norm statistics, softmax and log-softmax in fp32.
    Fp16,
}

impl Dtype {
    /// `fp32` or `fp16`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fp32" | "float32" | "float" => Ok(Dtype::Fp32),
            "fp16" | "float16" | "half" => Ok(Dtype::Fp16),
            other => Err(format!("unknown dtype `{other}` (expected fp32 or fp16)")),
        }
    }
}

/// Which graph a set of `metadata_props` belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    /// [`ENCODER_FILE`].
    Encoder,
    /// [`DECODER_FILE`].
    Decoder,
}

impl GraphKind {
    /// `encoder` or `decoder`.
    pub fn as_str(self) -> &'static str {
        match self {
            GraphKind::Encoder => "encoder",
            GraphKind::Decoder => "decoder",
        }
    }
}

/// Special token ids (fairseq's defaults: `<s>`=0, `<pad>`=1, `</s>`=2, `<unk>`=3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialIds {
    /// Beginning of sentence.
    pub bos: u32,
    /// Padding.
    pub pad: u32,
    /// End of sentence (also the first decoder input).
    pub eos: u32,
    /// Unknown word.
    pub unk: u32,
}

impl Default for SpecialIds {
    fn default() -> Self {
        Self { bos: 0, pad: 1, eos: 2, unk: 3 }
    }
}

/// Everything a runtime needs to drive the two graphs without guessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelContract {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The trainer's architecture name (e.g. `transformer_iwslt_de_en`).
    pub arch: String,
    /// Encoder layers.
    pub encoder_layers: usize,
    /// Decoder layers (the number of `past_key.{L}` inputs).
    pub decoder_layers: usize,
    /// Encoder attention heads.
    pub encoder_attention_heads: usize,
    /// Decoder attention heads (`H` of the caches).
    pub decoder_attention_heads: usize,
    /// Decoder head dimension (`D` of the caches).
    pub decoder_head_dim: usize,
    /// Encoder model dimension.
    pub encoder_embed_dim: usize,
    /// Decoder model dimension.
    pub decoder_embed_dim: usize,
    /// Source vocabulary size.
    pub src_vocab_size: usize,
    /// Target vocabulary size (`V`).
    pub tgt_vocab_size: usize,
    /// Special ids (same in both dictionaries).
    pub special: SpecialIds,
    /// Longest source in tokens (EOS included).
    pub max_source_positions: usize,
    /// Longest target in tokens (the leading EOS included).
    pub max_target_positions: usize,
    /// Weights and activations dtype.
    pub dtype: Dtype,
    /// SHA-256 (hex) of the checkpoint's `model.safetensors` the graphs were exported from.
    pub checkpoint_sha256: String,
}

macro_rules! contract_fields {
    ($m:ident) => {
        $m!(
            format_version,
            arch,
            encoder_layers,
            decoder_layers,
            encoder_attention_heads,
            decoder_attention_heads,
            decoder_head_dim,
            encoder_embed_dim,
            decoder_embed_dim,
            src_vocab_size,
            tgt_vocab_size,
            max_source_positions,
            max_target_positions,
            dtype,
            checkpoint_sha256
        )
    };
}

impl ModelContract {
    /// The `metadata_props` of graph `kind`: every field under `seqforge.{field}`, plus
    /// `seqforge.graph`, `seqforge.io_names` and the special ids as `seqforge.{bos,pad,eos,unk}`.
    pub fn to_metadata(&self, kind: GraphKind) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut put = |k: &str, v: String| out.push((format!("{METADATA_PREFIX}{k}"), v));
        macro_rules! emit {
            ($($f:ident),*) => { $( put(stringify!($f), self.$f.to_string()); )* };
        }
        contract_fields!(emit);
        put("bos", self.special.bos.to_string());
        put("pad", self.special.pad.to_string());
        put("eos", self.special.eos.to_string());
        put("unk", self.special.unk.to_string());
        put("graph", kind.as_str().to_string());
        put("io_names", names::PATTERN.to_string());
        out
    }

    /// Reads a contract back from a graph's `metadata_props` (`what` names the graph in
    /// errors). Checks the format version first, then `seqforge.graph` against `kind`.
    pub fn from_metadata(
        what: &str,
        kind: GraphKind,
        props: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let get = |key: &str| -> Result<&String> {
            props.get(&format!("{METADATA_PREFIX}{key}")).ok_or_else(|| Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}{key}"),
                message: "missing (not a seqforge export?)".into(),
            })
        };
        fn parse<T: std::str::FromStr>(what: &str, key: &str, v: &str) -> Result<T>
        where
            T::Err: fmt::Display,
        {
            v.parse::<T>().map_err(|e| Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}{key}"),
                message: format!("`{v}`: {e}"),
            })
        }
        let format_version: u32 = parse(what, "format_version", get("format_version")?)?;
        if format_version != FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: what.to_string(),
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        let graph = get("graph")?;
        if graph != kind.as_str() {
            return Err(Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}graph"),
                message: format!("`{graph}`, expected `{}`", kind.as_str()),
            });
        }
        let io = get("io_names")?;
        if io != names::PATTERN {
            return Err(Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}io_names"),
                message: format!("`{io}`, expected `{}`", names::PATTERN),
            });
        }
        Ok(Self {
            format_version,
            arch: get("arch")?.clone(),
            encoder_layers: parse(what, "encoder_layers", get("encoder_layers")?)?,
            decoder_layers: parse(what, "decoder_layers", get("decoder_layers")?)?,
            encoder_attention_heads: parse(
                what,
                "encoder_attention_heads",
                get("encoder_attention_heads")?,
            )?,
            decoder_attention_heads: parse(
                what,
                "decoder_attention_heads",
                get("decoder_attention_heads")?,
            )?,
            decoder_head_dim: parse(what, "decoder_head_dim", get("decoder_head_dim")?)?,
            encoder_embed_dim: parse(what, "encoder_embed_dim", get("encoder_embed_dim")?)?,
            decoder_embed_dim: parse(what, "decoder_embed_dim", get("decoder_embed_dim")?)?,
            src_vocab_size: parse(what, "src_vocab_size", get("src_vocab_size")?)?,
            tgt_vocab_size: parse(what, "tgt_vocab_size", get("tgt_vocab_size")?)?,
            special: SpecialIds {
                bos: parse(what, "bos", get("bos")?)?,
                pad: parse(what, "pad", get("pad")?)?,
                eos: parse(what, "eos", get("eos")?)?,
                unk: parse(what, "unk", get("unk")?)?,
            },
            max_source_positions: parse(
                what,
                "max_source_positions",
                get("max_source_positions")?,
            )?,
            max_target_positions: parse(
                what,
                "max_target_positions",
                get("max_target_positions")?,
            )?,
            dtype: parse(what, "dtype", get("dtype")?)?,
            checkpoint_sha256: get("checkpoint_sha256")?.clone(),
        })
    }

    /// Checks that `other` (e.g. read from a graph) describes the same model as `self` (the
    /// manifest), naming the first field that differs.
    pub fn check_same(&self, what: &str, other: &ModelContract) -> Result<()> {
        macro_rules! cmp {
            ($($f:ident),*) => { $(
                if self.$f != other.$f {
                    return Err(Error::Mismatch {
                        what: what.to_string(),
                        field: stringify!($f).to_string(),
                        expected: self.$f.to_string(),
                        found: other.$f.to_string(),
                    });
                }
            )* };
        }
        contract_fields!(cmp);
        if self.special != other.special {
            return Err(Error::Mismatch {
                what: what.to_string(),
                field: "special".into(),
                expected: format!("{:?}", self.special),
                found: format!("{:?}", other.special),
            });
        }
        Ok(())
    }
}

/// A file of the model directory with its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// File name, relative to the model directory.
    pub name: String,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// The files of a model directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFiles {
    /// [`ENCODER_FILE`].
    pub encoder: FileEntry,
    /// [`DECODER_FILE`].
    pub decoder: FileEntry,
    /// The source dictionary (`dict.{src}.txt`).
    pub src_dict: FileEntry,
    /// The target dictionary (`dict.{tgt}.txt`; the same file as `src_dict` when joined).
    pub tgt_dict: FileEntry,
    /// [`TOKENIZER_FILE`], when the data was preprocessed with `--tokenizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<FileEntry>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The model.
    pub contract: ModelContract,
    /// The files.
    pub files: ModelFiles,
    /// Source language code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lang: Option<String>,
    /// Target language code, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lang: Option<String>,
    /// What wrote it (`seqforge-exporter {version}`).
    pub producer: String,
    /// The checkpoint directory exported (as given on the command line; informational).
    pub checkpoint: String,
    /// Updates the checkpoint had been trained for.
    #[serde(default)]
    pub num_updates: u64,
}

impl Manifest {
    /// Reads and checks `dir/manifest.json` (format version first, so a newer export gives
    /// [`Error::UnsupportedVersion`] rather than a parse error).
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Manifest { path: path.clone(), message: e.to_string() })?;
        let version = value
            .get("contract")
            .and_then(|c| c.get("format_version"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::Manifest {
                path: path.clone(),
                message: "missing contract.format_version".into(),
            })?;
        if version != u64::from(FORMAT_VERSION) {
            return Err(Error::UnsupportedVersion {
                what: path.display().to_string(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        serde_json::from_value(value)
            .map_err(|e| Error::Manifest { path: path.clone(), message: e.to_string() })
    }

    /// The manifest as pretty JSON (what [`Manifest::load`] reads).
    pub fn to_json(&self) -> String {
        // Serializing plain structs of strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The symbols of a fairseq `dict.txt`, in id order (specials first), as the runtime and the
/// exporter need them: no counts, no building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    symbols: Vec<String>,
    index: std::collections::HashMap<String, u32>,
}

/// fairseq's implicit specials, in id order.
pub const SPECIAL_SYMBOLS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];

impl Vocabulary {
    /// Reads a fairseq `dict.txt` (`<symbol> <count>[ #fairseq:overwrite]` per line; the four
    /// specials are implicit and come first).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    /// Parses `dict.txt` text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let mut v = Self::from_symbols(SPECIAL_SYMBOLS.iter().map(|s| s.to_string()));
        for (i, line) in text.lines().enumerate() {
            let bad = |message: String| Error::Dictionary {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let line = line.trim_end_matches('\r');
            let (rest, overwrite) = match line.strip_suffix(" #fairseq:overwrite") {
                Some(r) => (r, true),
                None => (line, false),
            };
            let (sym, count) = rest
                .rsplit_once(' ')
                .ok_or_else(|| bad("expected `<symbol> <count>` (no space found)".to_string()))?;
            if count.parse::<i64>().is_err() {
                return Err(bad(format!("count `{count}` is not an integer")));
            }
            if v.index.contains_key(sym) {
                if overwrite {
                    continue;
                }
                return Err(bad(format!(
                    "duplicate symbol `{sym}` (add #fairseq:overwrite to redefine it)"
                )));
            }
            v.push(sym.to_string());
        }
        Ok(v)
    }

    /// A vocabulary of exactly these symbols, in this order.
    pub fn from_symbols(symbols: impl IntoIterator<Item = String>) -> Self {
        let mut v = Self { symbols: Vec::new(), index: Default::default() };
        for s in symbols {
            v.push(s);
        }
        v
    }

    fn push(&mut self, sym: String) {
        let id = self.symbols.len() as u32;
        self.index.entry(sym.clone()).or_insert(id);
        self.symbols.push(sym);
    }

    /// Number of symbols (`len(dict)`).
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether there are no symbols (never true for a loaded dictionary).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// The symbols in id order.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// The symbol of `id`.
    pub fn symbol(&self, id: u32) -> Option<&str> {
        self.symbols.get(id as usize).map(String::as_str)
    }

    /// The id of `symbol`.
    pub fn id(&self, symbol: &str) -> Option<u32> {
        self.index.get(symbol).copied()
    }

    /// The identity hash the trainer records in checkpoints: FNV-1a 64 over the symbols in id
    /// order, each followed by a 0 byte, as 16 hex digits (see [`symbols_hash`]).
    pub fn identity_hash(&self) -> String {
        symbols_hash(self.symbols.iter().map(String::as_str))
    }
}

/// FNV-1a 64 over `symbols` in order, each followed by a 0 byte, as 16 lowercase hex digits:
/// the dictionary identity stored in checkpoints and manifests.
pub fn symbols_hash<'a>(symbols: impl IntoIterator<Item = &'a str>) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for sym in symbols {
        for &b in sym.as_bytes().iter().chain(std::iter::once(&0u8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> ModelContract {
        ModelContract {
            format_version: FORMAT_VERSION,
            arch: "transformer_tiny".into(),
            encoder_layers: 2,
            decoder_layers: 3,
            encoder_attention_heads: 2,
            decoder_attention_heads: 4,
            decoder_head_dim: 16,
            encoder_embed_dim: 64,
            decoder_embed_dim: 64,
            src_vocab_size: 1000,
            tgt_vocab_size: 1008,
            special: SpecialIds::default(),
            max_source_positions: 1024,
            max_target_positions: 512,
            dtype: Dtype::Fp16,
            checkpoint_sha256: "ab".repeat(32),
        }
    }

    /// The error of a result that must have failed.
    fn err<T: std::fmt::Debug>(r: Result<T>) -> Error {
        match r {
            Err(e) => e,
            Ok(v) => panic!("expected an error, got {v:?}"),
        }
    }

    fn props(kind: GraphKind, c: &ModelContract) -> BTreeMap<String, String> {
        c.to_metadata(kind).into_iter().collect()
    }

    #[test]
    fn metadata_round_trips() -> Result<()> {
        let c = contract();
        let back =
            ModelContract::from_metadata("d", GraphKind::Decoder, &props(GraphKind::Decoder, &c))?;
        assert_eq!(back, c);
        c.check_same("d", &back)
    }

    #[test]
    fn wrong_graph_newer_version_and_missing_keys_are_named() {
        let c = contract();
        let p = props(GraphKind::Encoder, &c);
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Decoder, &p));
        assert!(e.to_string().contains("seqforge.graph"), "{e}");

        let mut p = props(GraphKind::Encoder, &c);
        p.insert("seqforge.format_version".into(), "2".into());
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(matches!(e, Error::UnsupportedVersion { found: 2, .. }), "{e}");

        let mut p = props(GraphKind::Encoder, &c);
        p.remove("seqforge.decoder_head_dim");
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(e.to_string().contains("seqforge.decoder_head_dim"), "{e}");

        let mut p = props(GraphKind::Encoder, &c);
        p.insert("seqforge.dtype".into(), "int4".into());
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(e.to_string().contains("int4"), "{e}");
    }

    #[test]
    fn check_same_names_the_field() {
        let a = contract();
        let mut b = contract();
        b.tgt_vocab_size = 8;
        let e = err(a.check_same("decoder.onnx", &b));
        assert!(e.to_string().contains("tgt_vocab_size"), "{e}");
    }

    #[test]
    fn manifest_round_trips_and_rejects_newer_versions() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("seqforge-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let f = |n: &str| FileEntry { name: n.into(), sha256: "00".repeat(32) };
        let m = Manifest {
            contract: contract(),
            files: ModelFiles {
                encoder: f(ENCODER_FILE),
                decoder: f(DECODER_FILE),
                src_dict: f("dict.es.txt"),
                tgt_dict: f("dict.en.txt"),
                tokenizer: None,
            },
            source_lang: Some("es".into()),
            target_lang: Some("en".into()),
            producer: "test".into(),
            checkpoint: "ckpt".into(),
            num_updates: 7,
        };
        let path = dir.join(MANIFEST_FILE);
        std::fs::write(&path, m.to_json())
            .map_err(|source| Error::Io { path: path.clone(), source })?;
        assert_eq!(Manifest::load(&dir)?, m);

        let newer = m.to_json().replace("\"format_version\": 1", "\"format_version\": 9");
        std::fs::write(&path, newer).map_err(|source| Error::Io { path: path.clone(), source })?;
        let e = err(Manifest::load(&dir));
        assert!(matches!(e, Error::UnsupportedVersion { found: 9, .. }), "{e}");

        std::fs::write(&path, "{").map_err(|source| Error::Io { path: path.clone(), source })?;
        assert!(matches!(Manifest::load(&dir), Err(Error::Manifest { .. })));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn vocabulary_reads_fairseq_dicts() -> Result<()> {
        let p = Path::new("dict.en.txt");
        let v = Vocabulary::parse(p, "the 10\nof 5\nthe 3 #fairseq:overwrite\nmadeupword0000 0\n")?;
        assert_eq!(v.len(), 7);
        assert_eq!(v.symbol(4), Some("the"));
        assert_eq!(v.id("of"), Some(5));
        assert_eq!(v.id("<pad>"), Some(1));
        assert_eq!(v.symbol(7), None);
        // Same hash as the trainer's DictionaryIdentity (FNV-1a 64 over symbol + NUL).
        assert_eq!(symbols_hash([]), "cbf29ce484222325");
        assert_eq!(v.identity_hash(), symbols_hash(v.symbols().iter().map(String::as_str)));

        let e = err(Vocabulary::parse(p, "a 1\na 2\n"));
        assert!(
            e.to_string().contains("dict.en.txt:2") && e.to_string().contains("duplicate"),
            "{e}"
        );
        let e = err(Vocabulary::parse(p, "a 1\nnocount\n"));
        assert!(e.to_string().contains("dict.en.txt:2"), "{e}");
        let e = err(Vocabulary::parse(p, "a x\n"));
        assert!(e.to_string().contains("`x`"), "{e}");
        Ok(())
    }
}
