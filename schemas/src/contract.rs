//! The exported model contract: what the exporter writes and the runtime reads.
//!
//! A *model directory* holds, for a translation model ([`Task::Translation`]):
//!
//! | file | what |
//! |---|---|
//! | [`ENCODER_FILE`] | source tokens → the per-sentence tensors the decoder reads |
//! | [`DECODER_FILE`] | one incremental decoder step over a declared state |
//! | [`MANIFEST_FILE`] | [`Manifest`]: the [`ModelContract`] plus file names and SHA-256 hashes |
//! | `tokenizer.json` | the HuggingFace tokenizer the data was preprocessed with (optional) |
//! | `dict.{lang}.txt` | the fairseq dictionaries (ids ↔ symbols) |
//!
//! A decoder-only language model ([`Task::LanguageModeling`], fairseq's `transformer_lm` and any
//! other decoder-only family) has [`PREFILL_FILE`] instead of the encoder, the same
//! [`DECODER_FILE`] step graph, one dictionary [`LM_DICT_FILE`] (the manifest's source and
//! target dictionary entries both name it) and the optional tokenizer. [`ModelFiles`] lists
//! exactly the first graph its task needs ([`ModelFiles::first_graph`]).
//!
//! The ONNX files also carry the [`ModelContract`] in their `metadata_props` (keys
//! `seqforge.*`, see [`ModelContract::to_metadata`]), so a graph is self-describing even when it
//! travels without its manifest; the runtime checks that both agree.
//!
//! ## The decoder state is declared data
//!
//! Nothing here names an architecture. A model family declares its decoder state as a
//! [`StateSpec`]: a list of [`StateTensor`]s, each with a name, an element type
//! ([`StateDtype`]), a shape of *named* dimensions and a [`StatePolicy`]:
//!
//! - [`StatePolicy::PerSentence`]: made once per sentence by the encoder (its output of the
//!   same name, `[B, …]`) and fed to every step in row order (`[R, …]`); the runtime gathers it
//!   again only when rows change sentence (expansion to the beam, pruning). Example: the
//!   Transformer's cross-attention keys/values, an LSTM's encoder outputs, the padding mask.
//! - [`StatePolicy::Recurrent`]: follows its row. The step takes `past.{name}` (the previous
//!   step's rows, gathered by `reorder` inside the graph) and returns `present.{name}` of the same
//!   shape for this step's rows; it starts as zeros or as an encoder output
//!   ([`StateInit`]). Example: an LSTM's `h`/`c`, a convolution's window of past inputs.
//! - [`StatePolicy::Append`]: like `Recurrent`, but grows by one position per step along a named
//!   axis and starts empty (length 0). Example: a self-attention key/value cache.
//! - [`StatePolicy::InPlace`]: a buffer of fixed capacity along a named axis that the step
//!   updates in place: it writes position `position` (the steps taken so far) and reads
//!   positions `0..=position`; what lies beyond is ignored. The step takes `past.{name}` *already
//!   in this step's row order* (the graph does not apply `reorder` to it) and returns
//!   `present.{name}` of the same shape, which a runtime binds to the same memory so nothing is
//!   copied (it may also be a fresh tensor holding the same values). The runtime reorders rows
//!   and grows the capacity on the host, copying positions `0..position` only. Example: a
//!   self-attention key/value cache run by ONNX Runtime's `GroupQueryAttention`, whose CPU kernel
//!   writes into a shared past/present buffer.
//!
//! Dimension names: [`dims::ROWS`] (axis 0 of every state tensor: decoder rows, or sentences in
//! an encoder output), [`dims::SOURCE`] (the padded source length of the batch), the axis of an
//! `Append` tensor (its length is the number of steps taken), the axis of an `InPlace` tensor
//! (its capacity: at least the steps taken plus one), and constants listed in
//! [`StateSpec::dims`] (e.g. `heads = 4`). Anything else is an error naming the tensor.
//!
//! ## Graph inputs and outputs
//!
//! `T` of a tensor is its [`StateDtype`] (`model` = the export dtype, `float` or `float16`).
//!
//! Encoder ([`ENCODER_FILE`]):
//! - in `src_tokens` int64 `[B, S]`, right-padded with `pad` (what the runtime feeds; recurrent
//!   encoders rely on it, the Transformer's graph also accepts left padding);
//! - out every `PerSentence` tensor and every `Recurrent` tensor's [`StateInit::Encoder`] source,
//!   `[B, …]` (other outputs are allowed and ignored).
//!
//! Decoder step ([`DECODER_FILE`]):
//! - in `prev_tokens` int64 `[R, 1]` (the last token of each row; the first step feeds `eos`,
//!   as fairseq does);
//! - in `reorder` int64 `[R]`: row `r` of this step continues row `reorder[r]` of the past
//!   (gathered inside the graph, so a beam reorder never moves the state through the host; pass
//!   `0..R` when nothing moved);
//! - in every `PerSentence` tensor by its name, `[R, …]`, already in row order;
//! - in `past.{name}` for every `Recurrent`/`Append` tensor, `[R', …]` (`R'` = rows of the
//!   previous step; an `Append` axis has the length of the steps taken so far, 0 at first;
//!   an `InPlace` tensor has this step's rows `[R, …]` and any capacity above the steps taken);
//! - in `position` int64 `[1]`, when the graph declares it: the steps taken so far (the
//!   position this step writes; 0 at first);
//! - out `log_probs` float32 `[R, V]` (log-softmax in the graph, in fp32 for every dtype) and
//!   `present.{name}` `[R, …]` for every `Recurrent`/`Append` tensor (an `Append` axis one longer).
//!
//! A graph that needs the step index declares the `position` input, reads it from an `Append`
//! tensor's length or keeps it as a `Recurrent` int64 tensor.
//!
//! ## Language models: prefill, then steps
//!
//! A language model's state has no `PerSentence` tensors (there is no encoder;
//! [`StateSpec::validate_for`] says so), and its `Recurrent` tensors start from zeros. Its
//! sequence starts with `eos` (fairseq's language-model generation and evaluation do), so a
//! prompt `p₁ … pₙ` is fed as `[eos, p₁, …, pₙ]` (`T = n + 1` tokens).
//!
//! Prefill ([`PREFILL_FILE`], metadata `seqforge.graph = prefill`):
//! - in `tokens` int64 `[B, T]` (`T ≥ 1`), rows right-padded with `pad`: attention is causal, so
//!   a real position does not depend on the padding after it (scoring batches rows of different
//!   lengths; generation only feeds rows of one length, unpadded);
//! - out `log_probs` float32 `[B, T, V]`: at position `t` the next-token distribution after
//!   `tokens[..=t]` (log-softmax in fp32, for every dtype);
//! - out `present.{name}` for every row-following tensor, `[B, …]`: the state after consuming the
//!   `T` tokens, in the step graph's `past.{name}` form: an `Append` axis of length `T`, an
//!   `InPlace` axis of length `T` (positions `0..T` written; the runtime copies them into a
//!   buffer with spare capacity), a `Recurrent` tensor's value after the last position (for a
//!   padded row, after its last real position only when the family says so; generation never
//!   pads).
//!
//! The step graph ([`DECODER_FILE`]) then continues exactly as for a translation model, with
//! `position` = the tokens consumed so far (`T` at the first step after the prefill) and the
//! `past.{name}` of the prefill's `present.{name}`. Its `log_probs` at position `P - 1`
//! (`P` = [`ModelContract::max_target_positions`], which counts the leading `eos`) are the last a
//! model computes, so a prompt of `T` tokens leaves room for `P - T + 1` generated tokens, the
//! last of which a search forces to be EOS. For a language model `max_source_positions` is the longest prompt (leading `eos`
//! included) and `src_vocab_size == tgt_vocab_size`.
//!
//! ## Versions
//!
//! Format version 4 added [`ModelContract::task`] (`seqforge.task`) and language models;
//! versions 2 and 3 are read as translation models. Format version 3 added `InPlace` and
//! `position`; version 2 directories (which use neither) are read as they are. Version 1 (before the state was declared) is refused with a message
//! to re-export.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The model-directory format version this crate writes (and the newest it reads).
pub const FORMAT_VERSION: u32 = 4;
/// The first format version that records [`ModelContract::task`] (older ones are translation
/// models).
pub const TASK_VERSION: u32 = 4;
/// The oldest model-directory format version this crate reads.
pub const OLDEST_READABLE_VERSION: u32 = 2;

/// Whether this crate reads model directories of format `version`.
pub fn reads_version(version: u32) -> bool {
    (OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version)
}
/// The encoder graph's file name.
pub const ENCODER_FILE: &str = "encoder.onnx";
/// The decoder-step graph's file name.
pub const DECODER_FILE: &str = "decoder.onnx";
/// A language model's prefill graph's file name (instead of [`ENCODER_FILE`]).
pub const PREFILL_FILE: &str = "prefill.onnx";
/// A language model's dictionary file name (fairseq's `dict.txt`).
pub const LM_DICT_FILE: &str = "dict.txt";
/// The manifest's file name.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The tokenizer's file name (when the model has one).
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The prefix of every `metadata_props` key the exporter writes.
pub const METADATA_PREFIX: &str = "seqforge.";

/// Input and output names of the two graphs that do not depend on the family.
pub mod names {
    /// Encoder input: source tokens.
    pub const SRC_TOKENS: &str = "src_tokens";
    /// Prefill input (language models): `[eos] + prompt` tokens, int64 `[B, T]`.
    pub const TOKENS: &str = "tokens";
    /// Decoder input: last tokens.
    pub const PREV_TOKENS: &str = "prev_tokens";
    /// Decoder input: gather index into the past's rows.
    pub const REORDER: &str = "reorder";
    /// Decoder output: log-probabilities over the target vocabulary.
    pub const LOG_PROBS: &str = "log_probs";
    /// Optional decoder input (int64 `[1]`), present together with [`TOP_LOG_PROBS`] and
    /// [`TOP_IDS`]: how many of each row's best log-probabilities to return.
    pub const TOP_K: &str = "top_k";
    /// Optional decoder output: each row's `top_k` best log-probabilities `[R, K]` (f32), best
    /// first (ties: the smaller id first), so that a beam search can skip copying and scanning
    /// the whole `[R, V]` distribution.
    pub const TOP_LOG_PROBS: &str = "top_log_probs";
    /// Optional decoder output: the ids (int64 `[R, K]`) of [`TOP_LOG_PROBS`].
    pub const TOP_IDS: &str = "top_ids";
    /// Optional decoder input (int64 `[1]`): the steps taken so far, i.e. the position this
    /// step writes (required by graphs with [`super::StatePolicy::InPlace`] tensors, whose
    /// capacity does not tell it).
    pub const POSITION: &str = "position";

    /// The step input of state tensor `name`: `past.{name}`.
    pub fn past(name: &str) -> String {
        format!("past.{name}")
    }
    /// The step output of state tensor `name`: `present.{name}`.
    pub fn present(name: &str) -> String {
        format!("present.{name}")
    }

    /// The naming pattern recorded in the metadata (`seqforge.io_names`), so a runtime can tell
    /// a future renaming from a corrupt file.
    pub const PATTERN: &str =
        "src_tokens;{per_sentence};prev_tokens;reorder;past.{state};log_probs;present.{state}";

    /// The naming pattern of a language model's graphs (prefill, then steps).
    pub const LM_PATTERN: &str =
        "tokens;log_probs;present.{state};prev_tokens;reorder;past.{state};position";

    /// The naming pattern of the graphs of a model of `task`.
    pub fn pattern(task: super::Task) -> &'static str {
        match task {
            super::Task::Translation => PATTERN,
            super::Task::LanguageModeling => LM_PATTERN,
        }
    }
}

/// Reserved dimension names of state shapes.
pub mod dims {
    /// Axis 0 of every state tensor: decoder rows (sentences in an encoder output).
    pub const ROWS: &str = "rows";
    /// The padded source length of the batch.
    pub const SOURCE: &str = "source";
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
        "{what}: model format version {found}, this seqforge reads versions \
         {OLDEST_READABLE_VERSION} to {supported}; re-export the model with this seqforge version"
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
    /// A declared state tensor that is malformed, or that a graph does not match.
    #[error("{what}: state tensor `{tensor}`: {message}")]
    State {
        /// The file or graph.
        what: String,
        /// The state tensor (or graph input/output) at fault.
        tensor: String,
        /// What is wrong.
        message: String,
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
    /// 8-bit integer weights in the linear layers, the embeddings and the output projection
    /// (symmetric, one fp32 scale per output row), fp32 activations quantized per call by
    /// ONNX Runtime's dynamic-quantization matmul; the state tensors are fp32.
    Int8,
}

impl Dtype {
    /// `fp32`, `fp16` or `int8`.
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Fp16 => "fp16",
            Dtype::Int8 => "int8",
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
            "int8" => Ok(Dtype::Int8),
            other => Err(format!("unknown dtype `{other}` (expected fp32, fp16 or int8)")),
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
    /// [`PREFILL_FILE`] (language models).
    Prefill,
}

impl GraphKind {
    /// `encoder`, `decoder` or `prefill`.
    pub fn as_str(self) -> &'static str {
        match self {
            GraphKind::Encoder => "encoder",
            GraphKind::Decoder => "decoder",
            GraphKind::Prefill => "prefill",
        }
    }

    /// The graph's file name in a model directory.
    pub fn file_name(self) -> &'static str {
        match self {
            GraphKind::Encoder => ENCODER_FILE,
            GraphKind::Decoder => DECODER_FILE,
            GraphKind::Prefill => PREFILL_FILE,
        }
    }
}

/// What a model does, which decides its first graph and how the runtime drives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// An encoder-decoder model: source sentence → target sentence ([`ENCODER_FILE`]).
    #[default]
    Translation,
    /// A decoder-only language model: prompt → continuation, and scoring ([`PREFILL_FILE`]).
    LanguageModeling,
}

impl Task {
    /// `translation` or `language_modeling` (the serde and metadata spelling).
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Translation => "translation",
            Task::LanguageModeling => "language_modeling",
        }
    }

    /// The graph that runs before the decoder steps: the encoder or the prefill.
    pub fn first_graph(self) -> GraphKind {
        match self {
            Task::Translation => GraphKind::Encoder,
            Task::LanguageModeling => GraphKind::Prefill,
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "translation" => Ok(Task::Translation),
            "language_modeling" => Ok(Task::LanguageModeling),
            other => {
                Err(format!("unknown task `{other}` (expected translation or language_modeling)"))
            }
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

/// Element type of a state tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateDtype {
    /// The export dtype ([`ModelContract::dtype`]: float or float16).
    Model,
    /// Always float32 (e.g. statistics kept in fp32 in an fp16 model).
    Float32,
    /// Booleans (e.g. a padding mask, true = padding).
    Bool,
    /// 64-bit integers (e.g. a step counter).
    Int64,
}

/// How a recurrent state tensor starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateInit {
    /// All zeros (false for bool).
    Zeros,
    /// The encoder output of this name (`[B, …]`, same dtype and trailing shape), one copy per
    /// row of the sentence.
    Encoder(String),
}

/// How a state tensor lives across decoder steps (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StatePolicy {
    /// Made once per sentence by the encoder; fed to every step in row order, never returned.
    PerSentence,
    /// Follows its row, same shape at every step: `past.{name}` in, `present.{name}` out.
    Recurrent {
        /// The first step's value.
        init: StateInit,
    },
    /// Follows its row and grows by one position per step along `axis`; starts empty.
    Append {
        /// The dimension name that grows (must occur once in the shape).
        axis: String,
    },
    /// Follows its row in a buffer of some capacity along `axis`, updated in place: the step
    /// writes position `position` and reads `0..=position`; fed already in row order.
    InPlace {
        /// The capacity dimension (must occur once in the shape).
        axis: String,
    },
}

impl StatePolicy {
    /// Whether the step graph takes `past.{name}` and returns `present.{name}`.
    pub fn follows_row(&self) -> bool {
        !matches!(self, StatePolicy::PerSentence)
    }

    /// The growing (`Append`) or capacity (`InPlace`) axis, if any.
    pub fn position_axis(&self) -> Option<&str> {
        match self {
            StatePolicy::Append { axis } | StatePolicy::InPlace { axis } => Some(axis),
            StatePolicy::PerSentence | StatePolicy::Recurrent { .. } => None,
        }
    }

    /// Whether the graph updates it in place (see [`StatePolicy::InPlace`]).
    pub fn in_place(&self) -> bool {
        matches!(self, StatePolicy::InPlace { .. })
    }
}

/// One declared state tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateTensor {
    /// Its name (graph names derive from it: see [`names::past`], [`names::present`]).
    pub name: String,
    /// Element type.
    pub dtype: StateDtype,
    /// Dimension names, [`dims::ROWS`] first.
    pub shape: Vec<String>,
    /// How it lives across steps.
    pub policy: StatePolicy,
}

/// A family's declared decoder state: every tensor the step graph carries between steps or
/// reads per sentence, and the sizes of the named constant dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    /// Named constant dimensions (e.g. `heads`, `head_dim`, `hidden`).
    pub dims: BTreeMap<String, usize>,
    /// The tensors, in the order the graphs list them.
    pub tensors: Vec<StateTensor>,
}

/// One dimension of a state shape, resolved against a [`StateSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DimKind {
    /// Axis 0: rows (or sentences).
    Rows,
    /// The padded source length.
    Source,
    /// The growing axis of an `Append` tensor, or the capacity axis of an `InPlace` one.
    Grows,
    /// A constant.
    Fixed(usize),
}

impl StateSpec {
    /// Checks the declaration: unique non-empty names, `rows` first, every dimension known,
    /// `Append`/`InPlace` axes present once and not constants, per-sentence tensors without a growing
    /// axis, encoder-initialised tensors naming a per-sentence-shaped source. `what` names the
    /// file in errors.
    pub fn validate(&self, what: &str) -> Result<()> {
        let bad = |tensor: &str, message: String| Error::State {
            what: what.to_string(),
            tensor: tensor.to_string(),
            message,
        };
        if self.tensors.is_empty() {
            return Err(bad("-", "the decoder state declares no tensor".into()));
        }
        let mut seen = BTreeSet::new();
        let reserved = [
            names::SRC_TOKENS,
            names::TOKENS,
            names::PREV_TOKENS,
            names::REORDER,
            names::LOG_PROBS,
            names::POSITION,
        ];
        for (d, &v) in &self.dims {
            if d == dims::ROWS || d == dims::SOURCE {
                return Err(bad(
                    "-",
                    format!("dimension `{d}` is reserved and cannot be a constant"),
                ));
            }
            if v == 0 {
                return Err(bad("-", format!("constant dimension `{d}` is 0")));
            }
        }
        for t in &self.tensors {
            if t.name.is_empty() || t.name.contains(char::is_whitespace) {
                return Err(bad(&t.name, "names must be non-empty without spaces".into()));
            }
            if reserved.contains(&t.name.as_str()) || !seen.insert(t.name.as_str()) {
                return Err(bad(&t.name, "the name is reserved or declared twice".into()));
            }
            if t.shape.first().map(String::as_str) != Some(dims::ROWS) {
                return Err(bad(&t.name, format!("the shape must start with `{}`", dims::ROWS)));
            }
            match &t.policy {
                StatePolicy::Append { axis } | StatePolicy::InPlace { axis } => {
                    if t.shape.iter().filter(|d| *d == axis).count() != 1 {
                        return Err(bad(
                            &t.name,
                            format!(
                                "the growing axis `{axis}` must occur exactly once in the shape"
                            ),
                        ));
                    }
                }
                StatePolicy::Recurrent { init: StateInit::Encoder(source) } => {
                    if source.is_empty() || reserved.contains(&source.as_str()) {
                        return Err(bad(&t.name, format!("bad encoder output name `{source}`")));
                    }
                    if t.shape.iter().any(|d| d == dims::SOURCE) {
                        return Err(bad(
                            &t.name,
                            "a recurrent tensor cannot depend on the source length".into(),
                        ));
                    }
                }
                StatePolicy::Recurrent { init: StateInit::Zeros } | StatePolicy::PerSentence => {}
            }
            self.dim_kinds(t).map_err(|m| bad(&t.name, m))?;
        }
        Ok(())
    }

    /// [`StateSpec::validate`], plus what `task` needs: a language model's state has no
    /// `PerSentence` tensor, no `source` dimension and no encoder-initialised tensor (it has no
    /// encoder; the prefill returns every row-following tensor).
    pub fn validate_for(&self, task: Task, what: &str) -> Result<()> {
        self.validate(what)?;
        if task == Task::LanguageModeling {
            for t in &self.tensors {
                let bad = |message: &str| {
                    Err(Error::State {
                        what: what.to_string(),
                        tensor: t.name.clone(),
                        message: format!("{message} (a language model has no encoder)"),
                    })
                };
                match &t.policy {
                    StatePolicy::PerSentence => {
                        return bad("a language model's state has no per-sentence tensors");
                    }
                    StatePolicy::Recurrent { init: StateInit::Encoder(_) } => {
                        return bad("a language model's recurrent state starts from zeros");
                    }
                    _ => {}
                }
                if t.shape.iter().any(|d| d == dims::SOURCE) {
                    return bad("a language model's state has no `source` dimension");
                }
            }
        }
        Ok(())
    }

    /// The kind of each dimension of `t`, or a message naming the unknown one.
    pub fn dim_kinds(&self, t: &StateTensor) -> std::result::Result<Vec<DimKind>, String> {
        let grows = t.policy.position_axis();
        t.shape
            .iter()
            .enumerate()
            .map(|(i, d)| match d.as_str() {
                dims::ROWS if i == 0 => Ok(DimKind::Rows),
                dims::ROWS => Err(format!("`{}` may only be axis 0", dims::ROWS)),
                dims::SOURCE => Ok(DimKind::Source),
                d if Some(d) == grows => {
                    if self.dims.contains_key(d) {
                        Err(format!("growing axis `{d}` is also declared a constant"))
                    } else {
                        Ok(DimKind::Grows)
                    }
                }
                d => self.dims.get(d).map(|&v| DimKind::Fixed(v)).ok_or_else(|| {
                    format!(
                        "unknown dimension `{d}` (known: {}, {}{}{})",
                        dims::ROWS,
                        dims::SOURCE,
                        grows.map(|g| format!(", {g}")).unwrap_or_default(),
                        self.dims.keys().map(|k| format!(", {k}")).collect::<String>()
                    )
                }),
            })
            .collect()
    }

    /// The concrete shape of `t` for `rows` rows, a source of `source` tokens and `grown`
    /// positions on its growing (or capacity) axis. The spec must have passed [`StateSpec::validate`].
    pub fn shape_of(
        &self,
        t: &StateTensor,
        rows: usize,
        source: usize,
        grown: usize,
    ) -> Vec<usize> {
        self.dim_kinds(t)
            .unwrap_or_default()
            .into_iter()
            .map(|k| match k {
                DimKind::Rows => rows,
                DimKind::Source => source,
                DimKind::Grows => grown,
                DimKind::Fixed(v) => v,
            })
            .collect()
    }

    /// The encoder outputs the runtime needs: per-sentence tensors, then encoder-initialised
    /// recurrent tensors' sources (with the tensor that declares each).
    pub fn encoder_outputs(&self) -> Vec<(&str, &StateTensor)> {
        let mut out: Vec<(&str, &StateTensor)> = self
            .tensors
            .iter()
            .filter(|t| t.policy == StatePolicy::PerSentence)
            .map(|t| (t.name.as_str(), t))
            .collect();
        for t in &self.tensors {
            if let StatePolicy::Recurrent { init: StateInit::Encoder(src) } = &t.policy
                && !out.iter().any(|(n, _)| *n == src.as_str())
            {
                out.push((src.as_str(), t));
            }
        }
        out
    }
}

/// Everything a runtime needs to drive the two graphs without guessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelContract {
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// What the model does (absent before version 4: translation).
    #[serde(default)]
    pub task: Task,
    /// The model family (`transformer`, `lstm`, …; informational for the runtime).
    pub family: String,
    /// The trainer's architecture name (e.g. `transformer_iwslt_de_en`).
    pub arch: String,
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
    /// The decoder state the graphs carry.
    pub state: StateSpec,
}

macro_rules! contract_fields {
    ($m:ident) => {
        $m!(
            format_version,
            task,
            family,
            arch,
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
    /// The `metadata_props` of graph `kind`: every scalar field under `seqforge.{field}`, the
    /// special ids as `seqforge.{bos,pad,eos,unk}`, the state as JSON under `seqforge.state`,
    /// plus `seqforge.graph` and `seqforge.io_names`.
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
        // Serializing plain structs of strings and integers cannot fail.
        put("state", serde_json::to_string(&self.state).unwrap_or_default());
        put("graph", kind.as_str().to_string());
        put("io_names", names::pattern(self.task).to_string());
        out
    }

    /// Reads a contract back from a graph's `metadata_props` (`what` names the graph in
    /// errors). Checks the format version first, then the task (`seqforge.task`, required from
    /// version 4 on, translation before), then `seqforge.graph` against `kind` and the task,
    /// then the declared state.
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
        if !reads_version(format_version) {
            return Err(Error::UnsupportedVersion {
                what: what.to_string(),
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        let task: Task = if format_version >= TASK_VERSION {
            parse(what, "task", get("task")?)?
        } else {
            Task::Translation
        };
        let graph = get("graph")?;
        if graph != kind.as_str() {
            return Err(Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}graph"),
                message: format!("`{graph}`, expected `{}`", kind.as_str()),
            });
        }
        if kind != GraphKind::Decoder && kind != task.first_graph() {
            return Err(Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}task"),
                message: format!("a {task} model has no {} graph", kind.as_str()),
            });
        }
        let io = get("io_names")?;
        if io != names::pattern(task) {
            return Err(Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}io_names"),
                message: format!("`{io}`, expected `{}`", names::pattern(task)),
            });
        }
        let state: StateSpec =
            serde_json::from_str(get("state")?).map_err(|e| Error::Metadata {
                what: what.to_string(),
                key: format!("{METADATA_PREFIX}state"),
                message: e.to_string(),
            })?;
        state.validate_for(task, what)?;
        let field = |key: &str| -> Result<usize> { parse(what, key, get(key)?) };
        Ok(Self {
            format_version,
            task,
            family: get("family")?.clone(),
            arch: get("arch")?.clone(),
            src_vocab_size: field("src_vocab_size")?,
            tgt_vocab_size: field("tgt_vocab_size")?,
            special: SpecialIds {
                bos: parse(what, "bos", get("bos")?)?,
                pad: parse(what, "pad", get("pad")?)?,
                eos: parse(what, "eos", get("eos")?)?,
                unk: parse(what, "unk", get("unk")?)?,
            },
            max_source_positions: field("max_source_positions")?,
            max_target_positions: field("max_target_positions")?,
            dtype: parse(what, "dtype", get("dtype")?)?,
            checkpoint_sha256: get("checkpoint_sha256")?.clone(),
            state,
        })
    }

    /// Checks that `other` (e.g. read from a graph) describes the same model as `self` (the
    /// manifest), naming the first field that differs.
    pub fn check_same(&self, what: &str, other: &ModelContract) -> Result<()> {
        let mismatch = |field: &str, expected: String, found: String| Error::Mismatch {
            what: what.to_string(),
            field: field.to_string(),
            expected,
            found,
        };
        macro_rules! cmp {
            ($($f:ident),*) => { $(
                if self.$f != other.$f {
                    return Err(mismatch(
                        stringify!($f),
                        self.$f.to_string(),
                        other.$f.to_string(),
                    ));
                }
            )* };
        }
        contract_fields!(cmp);
        if self.special != other.special {
            return Err(mismatch(
                "special",
                format!("{:?}", self.special),
                format!("{:?}", other.special),
            ));
        }
        if self.state != other.state {
            return Err(mismatch(
                "state",
                serde_json::to_string(&self.state).unwrap_or_default(),
                serde_json::to_string(&other.state).unwrap_or_default(),
            ));
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
    /// [`ENCODER_FILE`]: present exactly for translation models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoder: Option<FileEntry>,
    /// [`PREFILL_FILE`]: present exactly for language models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<FileEntry>,
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

impl ModelFiles {
    /// The first graph (encoder or prefill) of a model of `task`, checking that the manifest
    /// lists exactly that one, and, for a language model, one dictionary for both sides
    /// (`path` names the manifest in errors).
    pub fn first_graph(&self, task: Task, path: &Path) -> Result<&FileEntry> {
        let bad = |message: String| Error::Manifest { path: path.to_path_buf(), message };
        let (wanted, other, wanted_field, other_field) = match task {
            Task::Translation => (&self.encoder, &self.prefill, "encoder", "prefill"),
            Task::LanguageModeling => (&self.prefill, &self.encoder, "prefill", "encoder"),
        };
        if other.is_some() {
            return Err(bad(format!("files.{other_field} is listed, but a {task} model has none")));
        }
        let entry = wanted.as_ref().ok_or_else(|| {
            bad(format!(
                "files.{wanted_field} ({}) is missing: a {task} model needs it",
                task.first_graph().file_name()
            ))
        })?;
        if task == Task::LanguageModeling && self.src_dict != self.tgt_dict {
            return Err(bad(format!(
                "files.src_dict ({}) and files.tgt_dict ({}) differ: a language model has one \
                 dictionary",
                self.src_dict.name, self.tgt_dict.name
            )));
        }
        Ok(entry)
    }

    /// The entries of the two graphs and of every other listed file, with what each is.
    pub fn entries(&self) -> Vec<(&FileEntry, &'static str)> {
        let mut out = Vec::with_capacity(6);
        if let Some(e) = &self.encoder {
            out.push((e, "encoder"));
        }
        if let Some(p) = &self.prefill {
            out.push((p, "prefill"));
        }
        out.push((&self.decoder, "decoder"));
        out.push((&self.src_dict, "source dictionary"));
        out.push((&self.tgt_dict, "target dictionary"));
        if let Some(t) = &self.tokenizer {
            out.push((t, "tokenizer"));
        }
        out
    }
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
        let bytes =
            std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        Self::parse(&path, &bytes)
    }

    /// Parses and checks `manifest.json` bytes as [`Manifest::load`] does; `path` only names
    /// the file in errors.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self> {
        let path = path.to_path_buf();
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Manifest { path: path.clone(), message: e.to_string() })?;
        let version = value
            .get("contract")
            .and_then(|c| c.get("format_version"))
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| Error::Manifest {
                path: path.clone(),
                message: "missing contract.format_version".into(),
            })?;
        if !u32::try_from(version).is_ok_and(reads_version) {
            return Err(Error::UnsupportedVersion {
                what: path.display().to_string(),
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        if version >= u64::from(TASK_VERSION)
            && value.get("contract").and_then(|c| c.get("task")).is_none()
        {
            return Err(Error::Manifest {
                path: path.clone(),
                message: format!(
                    "missing contract.task (required from format version {TASK_VERSION})"
                ),
            });
        }
        let manifest: Self = serde_json::from_value(value)
            .map_err(|e| Error::Manifest { path: path.clone(), message: e.to_string() })?;
        let c = &manifest.contract;
        c.state.validate_for(c.task, &path.display().to_string())?;
        manifest.files.first_graph(c.task, &path)?;
        if c.task == Task::LanguageModeling && c.src_vocab_size != c.tgt_vocab_size {
            return Err(Error::Mismatch {
                what: path.display().to_string(),
                field: "src_vocab_size (a language model has one vocabulary)".into(),
                expected: c.tgt_vocab_size.to_string(),
                found: c.src_vocab_size.to_string(),
            });
        }
        Ok(manifest)
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

    /// A Transformer-like state: a mask and cross keys per sentence, a growing self cache.
    pub(crate) fn state() -> StateSpec {
        let t = |name: &str, dtype, shape: &[&str], policy| StateTensor {
            name: name.into(),
            dtype,
            shape: shape.iter().map(|s| s.to_string()).collect(),
            policy,
        };
        StateSpec {
            dims: [("heads".to_string(), 4), ("head_dim".to_string(), 16), ("hidden".into(), 8)]
                .into(),
            tensors: vec![
                t("mask", StateDtype::Bool, &["rows", "source"], StatePolicy::PerSentence),
                t(
                    "cross_key.0",
                    StateDtype::Model,
                    &["rows", "heads", "source", "head_dim"],
                    StatePolicy::PerSentence,
                ),
                t(
                    "self_key.0",
                    StateDtype::Model,
                    &["rows", "heads", "past", "head_dim"],
                    StatePolicy::Append { axis: "past".into() },
                ),
                t(
                    "hidden.0",
                    StateDtype::Model,
                    &["rows", "hidden"],
                    StatePolicy::Recurrent { init: StateInit::Encoder("final_hidden.0".into()) },
                ),
                t(
                    "step",
                    StateDtype::Int64,
                    &["rows"],
                    StatePolicy::Recurrent { init: StateInit::Zeros },
                ),
            ],
        }
    }

    fn contract() -> ModelContract {
        ModelContract {
            format_version: FORMAT_VERSION,
            task: Task::Translation,
            family: "transformer".into(),
            arch: "transformer_tiny".into(),
            src_vocab_size: 1000,
            tgt_vocab_size: 1008,
            special: SpecialIds::default(),
            max_source_positions: 1024,
            max_target_positions: 512,
            dtype: Dtype::Fp16,
            checkpoint_sha256: "ab".repeat(32),
            state: state(),
        }
    }

    #[test]
    fn state_spec_resolves_shapes_and_lists_encoder_outputs() -> Result<()> {
        let s = state();
        s.validate("m")?;
        assert_eq!(s.shape_of(&s.tensors[1], 10, 7, 0), [10, 4, 7, 16]);
        assert_eq!(s.shape_of(&s.tensors[2], 10, 7, 3), [10, 4, 3, 16]);
        let outs: Vec<&str> = s.encoder_outputs().iter().map(|(n, _)| *n).collect();
        assert_eq!(outs, ["mask", "cross_key.0", "final_hidden.0"]);
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(json.contains(r#""policy":{"kind":"append","axis":"past"}"#), "{json}");
        assert!(json.contains(r#""init":{"encoder":"final_hidden.0"}"#), "{json}");
        assert!(json.contains(r#""init":"zeros""#), "{json}");

        // An in-place cache: the capacity axis resolves like a growing one.
        let mut s = state();
        s.tensors[2].policy = StatePolicy::InPlace { axis: "past".into() };
        s.validate("m")?;
        assert!(s.tensors[2].policy.in_place() && s.tensors[2].policy.follows_row());
        assert_eq!(s.tensors[2].policy.position_axis(), Some("past"));
        assert_eq!(s.shape_of(&s.tensors[2], 10, 7, 32), [10, 4, 32, 16]);
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(json.contains(r#""policy":{"kind":"in_place","axis":"past"}"#), "{json}");
        Ok(())
    }

    #[test]
    fn bad_state_declarations_name_the_tensor() {
        let check = |f: &dyn Fn(&mut StateSpec), want: &[&str]| {
            let mut s = state();
            f(&mut s);
            let e = err(s.validate("decoder.onnx")).to_string();
            for w in want {
                assert!(e.contains(w), "{e} lacks {w}");
            }
        };
        check(
            &|s| s.tensors[1].shape[1] = "hedas".into(),
            &["cross_key.0", "unknown dimension `hedas`"],
        );
        check(&|s| s.tensors[2].shape.swap(0, 1), &["self_key.0", "must start with `rows`"]);
        check(
            &|s| s.tensors[2].policy = StatePolicy::Append { axis: "time".into() },
            &["self_key.0", "`time` must occur exactly once"],
        );
        check(&|s| s.tensors[4].name = "mask".into(), &["`mask`", "declared twice"]);
        check(&|s| s.tensors[4].name = "log_probs".into(), &["log_probs", "reserved"]);
        check(&|s| s.tensors[4].name = "position".into(), &["position", "reserved"]);
        check(
            &|s| s.tensors[2].policy = StatePolicy::InPlace { axis: "capacity".into() },
            &["self_key.0", "`capacity` must occur exactly once"],
        );
        check(
            &|s| {
                s.dims.insert("past".into(), 3);
            },
            &["self_key.0", "also declared a constant"],
        );
        check(
            &|s| {
                s.dims.insert("source".into(), 3);
            },
            &["reserved"],
        );
        check(&|s| s.tensors.clear(), &["declares no tensor"]);
        // An unknown policy is a parse error naming the variant.
        let json = r#"{"dims":{},"tensors":[{"name":"a","dtype":"model","shape":["rows"],"policy":{"kind":"ring"}}]}"#;
        let e = serde_json::from_str::<StateSpec>(json)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ring"), "{e}");
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
        p.insert("seqforge.format_version".into(), (FORMAT_VERSION + 1).to_string());
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(
            matches!(e, Error::UnsupportedVersion { found, .. } if found == FORMAT_VERSION + 1),
            "{e}"
        );

        // Version 2 (no in-place tensors, no `position`) is still read.
        let mut p = props(GraphKind::Encoder, &c);
        p.insert("seqforge.format_version".into(), "2".into());
        assert!(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p).is_ok());

        let mut p = props(GraphKind::Encoder, &c);
        p.remove("seqforge.max_target_positions");
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(e.to_string().contains("seqforge.max_target_positions"), "{e}");

        let mut p = props(GraphKind::Encoder, &c);
        p.insert("seqforge.state".into(), r#"{"dims":{},"tensors":[]}"#.into());
        let e = err(ModelContract::from_metadata("x.onnx", GraphKind::Encoder, &p));
        assert!(e.to_string().contains("declares no tensor"), "{e}");

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
        let mut b = contract();
        b.state.dims.insert("heads".into(), 8);
        let e = err(a.check_same("decoder.onnx", &b));
        assert!(e.to_string().contains("`state`"), "{e}");
    }

    #[test]
    fn manifest_round_trips_and_rejects_newer_versions() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("seqforge-contract-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let f = |n: &str| FileEntry { name: n.into(), sha256: "00".repeat(32) };
        let m = Manifest {
            contract: contract(),
            files: ModelFiles {
                encoder: Some(f(ENCODER_FILE)),
                prefill: None,
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

        let current = format!("\"format_version\": {FORMAT_VERSION}");
        let newer = m.to_json().replace(&current, "\"format_version\": 9");
        std::fs::write(&path, newer).map_err(|source| Error::Io { path: path.clone(), source })?;
        let e = err(Manifest::load(&dir));
        assert!(matches!(e, Error::UnsupportedVersion { found: 9, .. }), "{e}");

        let v2 = m.to_json().replace(&current, "\"format_version\": 2");
        std::fs::write(&path, v2).map_err(|source| Error::Io { path: path.clone(), source })?;
        assert_eq!(Manifest::load(&dir)?.contract.format_version, 2);

        let v1 = m.to_json().replace(&current, "\"format_version\": 1");
        std::fs::write(&path, v1).map_err(|source| Error::Io { path: path.clone(), source })?;
        let e = err(Manifest::load(&dir));
        assert!(e.to_string().contains("re-export"), "{e}");

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

    /// A decoder-only state: a self-attention cache that grows, one that is updated in place,
    /// and a recurrent summary.
    fn lm_state() -> StateSpec {
        let t = |name: &str, shape: &[&str], policy| StateTensor {
            name: name.into(),
            dtype: StateDtype::Model,
            shape: shape.iter().map(|s| s.to_string()).collect(),
            policy,
        };
        StateSpec {
            dims: [("heads".to_string(), 2), ("head_dim".to_string(), 4)].into(),
            tensors: vec![
                t(
                    "self_key.0",
                    &["rows", "heads", "past", "head_dim"],
                    StatePolicy::Append { axis: "past".into() },
                ),
                t(
                    "self_value.0",
                    &["rows", "heads", "capacity", "head_dim"],
                    StatePolicy::InPlace { axis: "capacity".into() },
                ),
                t("sum", &["rows", "head_dim"], StatePolicy::Recurrent { init: StateInit::Zeros }),
            ],
        }
    }

    fn lm_contract() -> ModelContract {
        ModelContract {
            task: Task::LanguageModeling,
            arch: "transformer_lm_tiny".into(),
            src_vocab_size: 1008,
            max_source_positions: 512,
            state: lm_state(),
            ..contract()
        }
    }

    #[test]
    fn task_is_in_the_metadata_and_checked() -> Result<()> {
        let c = lm_contract();
        let p = props(GraphKind::Prefill, &c);
        assert_eq!(p.get("seqforge.task").map(String::as_str), Some("language_modeling"));
        assert_eq!(p.get("seqforge.graph").map(String::as_str), Some("prefill"));
        assert_eq!(p.get("seqforge.io_names").map(String::as_str), Some(names::LM_PATTERN));
        let back = ModelContract::from_metadata("p", GraphKind::Prefill, &p)?;
        assert_eq!(back, c);
        let d = props(GraphKind::Decoder, &c);
        assert_eq!(ModelContract::from_metadata("d", GraphKind::Decoder, &d)?, c);

        // A translation model has no prefill graph, a language model no encoder.
        let e = err(ModelContract::from_metadata("e", GraphKind::Encoder, &p));
        assert!(e.to_string().contains("seqforge.graph"), "{e}");
        let mut q = props(GraphKind::Encoder, &c);
        q.insert("seqforge.graph".into(), "encoder".into());
        let e = err(ModelContract::from_metadata("e.onnx", GraphKind::Encoder, &q));
        assert!(e.to_string().contains("a language_modeling model has no encoder graph"), "{e}");

        // check_same names the task.
        let e = err(contract().check_same("decoder.onnx", &ModelContract { ..c.clone() }));
        assert!(e.to_string().contains("`task`"), "{e}");

        // Version 4 requires the task; versions 2 and 3 are translation models without it.
        let mut q = props(GraphKind::Decoder, &contract());
        q.remove("seqforge.task");
        let e = err(ModelContract::from_metadata("d", GraphKind::Decoder, &q));
        assert!(e.to_string().contains("seqforge.task"), "{e}");
        q.insert("seqforge.format_version".into(), "3".into());
        let old = ModelContract::from_metadata("d", GraphKind::Decoder, &q)?;
        assert_eq!((old.task, old.format_version), (Task::Translation, 3));
        let mut q = props(GraphKind::Decoder, &c);
        q.insert("seqforge.task".into(), "summarization".into());
        let e = err(ModelContract::from_metadata("d", GraphKind::Decoder, &q));
        assert!(e.to_string().contains("summarization"), "{e}");
        Ok(())
    }

    #[test]
    fn language_model_state_has_no_encoder_parts() {
        assert!(lm_state().validate_for(Task::LanguageModeling, "m").is_ok());
        // The translation state (per-sentence tensors, encoder-initialised hidden) is not one.
        let e = err(state().validate_for(Task::LanguageModeling, "prefill.onnx")).to_string();
        assert!(e.contains("mask") && e.contains("per-sentence"), "{e}");
        let mut s = lm_state();
        s.tensors[2].policy = StatePolicy::Recurrent { init: StateInit::Encoder("h".into()) };
        let e = err(s.validate_for(Task::LanguageModeling, "m")).to_string();
        assert!(e.contains("`sum`") && e.contains("starts from zeros"), "{e}");
        let mut s = lm_state();
        s.tensors[2].shape.push("source".into());
        let e = err(s.validate_for(Task::LanguageModeling, "m")).to_string();
        assert!(e.contains("`source`"), "{e}");
        let mut s = lm_state();
        s.tensors[2].name = "tokens".into();
        let e = err(s.validate_for(Task::LanguageModeling, "m")).to_string();
        assert!(e.contains("reserved"), "{e}");
        assert_eq!(
            serde_json::to_string(&Task::LanguageModeling).ok().as_deref(),
            Some("\"language_modeling\"")
        );
    }

    #[test]
    fn manifest_lists_the_graph_its_task_needs() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("seqforge-contract-lm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        let f = |n: &str| FileEntry { name: n.into(), sha256: "00".repeat(32) };
        let m = Manifest {
            contract: lm_contract(),
            files: ModelFiles {
                encoder: None,
                prefill: Some(f(PREFILL_FILE)),
                decoder: f(DECODER_FILE),
                src_dict: f(LM_DICT_FILE),
                tgt_dict: f(LM_DICT_FILE),
                tokenizer: None,
            },
            source_lang: None,
            target_lang: None,
            producer: "test".into(),
            checkpoint: "ckpt".into(),
            num_updates: 0,
        };
        let path = dir.join(MANIFEST_FILE);
        let write = |m: &str| {
            std::fs::write(&path, m).map_err(|source| Error::Io { path: path.clone(), source })
        };
        write(&m.to_json())?;
        assert_eq!(Manifest::load(&dir)?, m);
        assert!(!m.to_json().contains("\"encoder\""), "{}", m.to_json());

        let check = |bad: Manifest, want: &[&str]| -> Result<()> {
            write(&bad.to_json())?;
            let e = err(Manifest::load(&dir)).to_string();
            for w in want {
                assert!(e.contains(w) && e.contains(MANIFEST_FILE), "{e} lacks {w}");
            }
            Ok(())
        };
        let mut b = m.clone();
        b.files.prefill = None;
        check(b, &["files.prefill (prefill.onnx) is missing", "language_modeling"])?;
        let mut b = m.clone();
        b.files.encoder = Some(f(ENCODER_FILE));
        check(b, &["files.encoder is listed"])?;
        let mut b = m.clone();
        b.files.tgt_dict = f("dict.en.txt");
        check(b, &["one dictionary"])?;
        let mut b = m.clone();
        b.contract.src_vocab_size = 7;
        check(b, &["src_vocab_size"])?;
        let mut b = m.clone();
        b.contract.task = Task::Translation;
        check(b, &["files.prefill is listed, but a translation model has none"])?;
        let mut b = m.clone();
        b.contract.task = Task::Translation;
        b.files.prefill = None;
        check(b, &["files.encoder (encoder.onnx) is missing"])?;
        // Version 4 needs the task in the manifest; version 3 is a translation model.
        let no_task = m.to_json().replace("\"task\": \"language_modeling\",", "");
        write(&no_task)?;
        let e = err(Manifest::load(&dir)).to_string();
        assert!(e.contains("contract.task"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
