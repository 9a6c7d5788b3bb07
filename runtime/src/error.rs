//! The runtime's error type.

use std::path::PathBuf;

/// Everything that can go wrong in the runtime.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The ONNX Runtime shared library is not where it was looked for.
    #[error(
        "the ONNX Runtime library {path} (from {origin}) does not exist: run `cargo xtask setup` \
         in the seqforge workspace, or set ORT_DYLIB_PATH to a libonnxruntime.so of version {wanted}"
    )]
    OrtLibraryMissing {
        /// Where it was looked for.
        path: PathBuf,
        /// Which setting named that path.
        origin: &'static str,
        /// The version the runtime is built for.
        wanted: &'static str,
    },
    /// No setting names an ONNX Runtime library at all.
    #[error(
        "no ONNX Runtime library configured: pass its path explicitly, set ORT_DYLIB_PATH, or \
         build inside the seqforge workspace after `cargo xtask setup`"
    )]
    OrtLibraryUnconfigured,
    /// The library exists but could not be loaded (wrong file, wrong version, missing deps).
    #[error("loading the ONNX Runtime library {path}: {message}")]
    OrtLibraryLoad {
        /// The library file.
        path: PathBuf,
        /// What the loader said.
        message: String,
    },
    /// ONNX Runtime is already loaded from another file in this process.
    #[error(
        "ONNX Runtime is already loaded from {loaded}; cannot switch to {requested} in the same process"
    )]
    OrtAlreadyLoaded {
        /// The library in use.
        loaded: PathBuf,
        /// The one asked for now.
        requested: PathBuf,
    },
    /// A model file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// ONNX Runtime rejected a model (corrupt file, unsupported IR or opset, invalid graph).
    #[error("{path}: not a model ONNX Runtime can load: {message}")]
    InvalidModel {
        /// The model file (or a name for an in-memory model).
        path: PathBuf,
        /// What ONNX Runtime said.
        message: String,
    },
    /// A model directory's manifest, metadata or dictionary is missing, newer or inconsistent.
    #[error(transparent)]
    Contract(#[from] seqforge_schemas::contract::Error),
    /// A file the manifest lists is not in the model directory.
    #[error("{path}: missing from the model directory (listed in its manifest.json as the {role})")]
    ModelFileMissing {
        /// The missing file.
        path: PathBuf,
        /// What the manifest lists it as (`encoder`, `decoder`, `source dictionary`, ...).
        role: &'static str,
    },
    /// A model file's SHA-256 differs from the manifest's (`--verify`).
    #[error(
        "{path}: SHA-256 is {found} but manifest.json says {expected} (corrupt or replaced file)"
    )]
    ChecksumMismatch {
        /// The file.
        path: PathBuf,
        /// The manifest's hash.
        expected: String,
        /// The file's hash.
        found: String,
    },
    /// A graph's inputs or outputs do not follow the model contract.
    #[error("{path}: {message}")]
    GraphInterface {
        /// The graph file.
        path: PathBuf,
        /// Which input or output is missing or has the wrong type or rank.
        message: String,
    },
    /// An execution provider that was asked for explicitly could not be registered.
    #[error(
        "execution provider {provider} was requested but is not usable: {message} \
         (this ONNX Runtime library offers: {available}); no CPU fallback is made"
    )]
    ExecutionProvider {
        /// `cuda` or `tensorrt`.
        provider: &'static str,
        /// What ONNX Runtime said.
        message: String,
        /// The providers the loaded library reports.
        available: String,
    },
    /// A decoder step or encoder run produced an output of an unexpected shape or type.
    #[error("{graph}: output `{output}`: {message}")]
    GraphOutput {
        /// `encoder.onnx` or `decoder.onnx`.
        graph: &'static str,
        /// The output's name.
        output: String,
        /// What is wrong.
        message: String,
    },
    /// A decoder state was used with an input it cannot take (wrong number of tokens, bad
    /// reorder index, empty batch).
    #[error("decoder state: {0}")]
    DecoderState(String),
    /// The model's tokenizer could not be loaded or failed on a line.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// What the tokenizers library said.
        message: String,
    },
    /// An input line is not valid UTF-8 (or holds a NUL byte).
    #[error("{input}:{line}: not valid UTF-8 text (use --skip-invalid to skip such lines)")]
    InvalidUtf8 {
        /// The input's name (a file path or `<stdin>`).
        input: String,
        /// 1-based line number.
        line: usize,
    },
    /// An input line is longer than the model's maximum source positions.
    #[error(
        "{input}:{line}: {tokens} source tokens (EOS included) exceed the model's \
         max_source_positions {max} (use --truncate-source to cut such lines)"
    )]
    SourceTooLong {
        /// The input's name.
        input: String,
        /// 1-based line number.
        line: usize,
        /// Tokens of the line, EOS included.
        tokens: usize,
        /// The model's limit.
        max: usize,
    },
    /// Search options given as data (JSON, a C options struct) are malformed or out of range.
    #[error(
        "invalid search options: {}{message}",
        field.as_ref().map(|f| format!("`{f}`: ")).unwrap_or_default()
    )]
    InvalidOptions {
        /// The option at fault, when one is (`beam`, `strategy.top_p`, ...).
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A text given to a translator (not read from a file) is longer than the model takes.
    #[error(
        "text {index} (0-based): {tokens} source tokens (EOS included) exceed the model's \
         max_source_positions {max} (enable truncate_source to cut such texts)"
    )]
    TextTooLong {
        /// Index of the text in the call's list.
        index: usize,
        /// Tokens of the text, EOS included.
        tokens: usize,
        /// The model's limit.
        max: usize,
    },
    /// Generation failed (invalid options, or the decoder failed during search).
    #[error(transparent)]
    Search(#[from] crate::search::Error),
    /// Scoring failed (BLEU / chrF: unreadable or mismatched inputs, invalid options).
    #[error(transparent)]
    Score(#[from] crate::score::Error),
    /// A fairseq binarized dataset (`.idx`/`.bin`) is malformed or does not match its index.
    #[error("{path}: {field}: {message}")]
    IndexedData {
        /// The `.idx` or `.bin` file.
        path: PathBuf,
        /// The field at fault (`magic`, `version`, `dtype`, `count`, `sizes`, `pointers`,
        /// `length`, `ids`, ...).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A data directory's dictionary is not the model's (different symbols or order).
    #[error(
        "{path}: not the model's dictionary (identity hash {found}, the model's {model_file} has \
         {expected}): the data was binarized with other dictionaries"
    )]
    DictionaryMismatch {
        /// The data directory's `dict.{lang}.txt`.
        path: PathBuf,
        /// The model's dictionary file.
        model_file: PathBuf,
        /// The model dictionary's identity hash.
        expected: String,
        /// The data dictionary's identity hash.
        found: String,
    },
    /// A model used for what its task does not do (a translation call on a language model, or
    /// the reverse).
    #[error("{dir}: a {task} model, but {what} needs a {needed} model")]
    TaskMismatch {
        /// The model directory.
        dir: PathBuf,
        /// The model's task.
        task: seqforge_schemas::contract::Task,
        /// What was asked (`seqforge eval-lm`, `/v1/translate`, …).
        what: String,
        /// The task it needs.
        needed: seqforge_schemas::contract::Task,
    },
    /// Language-model prompts of different lengths in one batch (the step graph has one
    /// `position` for all rows).
    #[error(
        "language-model prompts in one batch must have the same length ({first} and {other} \
         tokens): batch prompts by length"
    )]
    PromptLengths {
        /// Tokens of the first prompt.
        first: usize,
        /// Tokens of another prompt.
        other: usize,
    },
    /// A language-model prompt that leaves no room to generate.
    #[error(
        "text {index} (0-based): a prompt of {tokens} tokens (the leading EOS included) leaves \
         no room in the model's {max} positions (truncate it to its last tokens to continue it)"
    )]
    PromptTooLong {
        /// Index of the text in the call's list (0 when not from a list).
        index: usize,
        /// Tokens of the model input (`[eos] + prompt`).
        tokens: usize,
        /// The model's positions.
        max: usize,
    },
    /// Language-model evaluation failed (options that do not fit together, bad data).
    #[error(transparent)]
    Lm(#[from] crate::lm::Error),
    /// Any other ONNX Runtime failure.
    #[cfg(feature = "onnx")]
    #[error("ONNX Runtime: {0}")]
    Ort(#[from] ort::Error),
}

/// The runtime's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
