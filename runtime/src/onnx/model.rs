//! Exported model directories on ONNX Runtime: [`ModelDir`] (open and check once, share with
//! `Arc`) and [`OnnxDecoder`] (one per worker), the [`IncrementalDecoder`] the search drives.
//!
//! # Opening
//!
//! [`ModelDir::open`] reads `manifest.json` (a newer format version is an error naming the
//! file), checks that every listed file exists, hashes the small files (dictionaries,
//! tokenizer: a swapped dictionary would silently garble every output, and hashing them costs
//! microseconds) and, with [`RuntimeOptions::verify`], the two graphs too (SHA-256 runs at
//! roughly 0.5 GB/s, so this costs a fraction of a second for a base-size model; off by default
//! because a corrupt graph already fails to load or fails the metadata checks). It then builds
//! both sessions, reads their `metadata_props`, checks them against the manifest
//! ([`ModelContract::check_same`]) and checks every graph input and output the contract names
//! by name, element type and rank.
//!
//! # Sharing
//!
//! A [`ModelDir`] is immutable and `Sync`: put it in an `Arc` and create one [`OnnxDecoder`]
//! per worker thread with [`OnnxDecoder::new`] (ONNX Runtime sessions run with `&mut self`).
//! The first decoder takes the sessions [`ModelDir::open`] built for its checks; later ones
//! build their own from the same files (a session build, once per worker).
//!
//! # State
//!
//! The runtime names no architecture: it drives the state the model directory declares
//! ([`StateSpec`], see [`seqforge_schemas::contract`]).
//! - [`OnnxDecoder::encode`] pads the batch on the right with `pad`, runs the encoder once and
//!   keeps the outputs the declared state needs (per-sentence tensors and the sources of
//!   encoder-initialised recurrent tensors) *per sentence* on the host ([`Encoded`]), each
//!   checked against its declared shape.
//! - [`DecoderState`] keeps, per live row, the sentence it belongs to; every row-following
//!   tensor (`Recurrent`, `Append`) as the ONNX Runtime value the last step returned
//!   (`present.{name}`, owned by ONNX Runtime and fed back as the next step's `past.{name}` by
//!   reference, never copied: on CPU a plain run, whose outputs ONNX Runtime allocates in host
//!   memory; on CUDA/TensorRT an [`IoBinding`] whose state outputs are bound to the GPU, so the
//!   state stays there and only `log_probs` come to the host); and the row-ordered
//!   per-sentence inputs, also ONNX Runtime values (uploaded once per rebuild on GPU).
//! - [`OnnxDecoder::step_top`] (on the CPU, when the graph has the optional `top_k` input)
//!   runs the step fetching every output but `log_probs`: each row's best log-probabilities
//!   and ids from the graph's `TopK`, so a beam search does not copy the `[R, V]` matrix.
//! - Every step's `present.{name}` is checked against its declared shape (an `Append` axis one
//!   longer than before), so a graph that disagrees with its declaration fails naming the
//!   tensor instead of decoding garbage.
//! - [`OnnxDecoder::reorder`] only records the gather index: the next step feeds it as the
//!   graph's `reorder` input, so the state is gathered inside the graph and never copied
//!   through the host or `ndarray`. Several reorders between two steps compose.
//! - `InPlace` tensors are host buffers of some capacity along their declared axis, bound
//!   (with an [`IoBinding`]) as both `past.{name}` and `present.{name}`, so the step writes its
//!   position into them and copies nothing. Before a step whose rows moved (a beam reorder,
//!   pruning) or whose position reached the capacity, the runtime gathers the rows' first
//!   `position` positions into a second buffer (grown by half when full; the two buffers
//!   alternate), so a reorder costs one copy of the valid positions instead of the graph's
//!   gather plus its concatenation. The `position` input carries the step index.
//! - The row-ordered per-sentence inputs depend only on which sentence each row belongs to.
//!   Beam reordering keeps every row inside its sentence's block, so they are rebuilt (a host
//!   gather from the per-sentence copies, then one upload on GPU) only when that mapping
//!   changes: once when step 0's one row per sentence expands to the beam, and when finished
//!   sentences are pruned.
//!
//! # Language models
//!
//! On a decoder-only model ([`Task::LanguageModeling`]) the same [`IncrementalDecoder`] runs
//! prompts, with no family-specific code (see the contract's language-model section):
//! - [`OnnxDecoder::encode`] takes each source (a prompt's ids, then EOS) as `[eos] + prompt`
//!   ([`lm_input`]), requires one length for the whole batch ([`Error::PromptLengths`]: the step
//!   graph has one `position` for all rows) and runs the prefill graph once, keeping each
//!   sentence's `present.{name}` and its last position's log-probabilities on the host.
//! - `init_state` copies every sentence's state to its rows (an `InPlace` tensor into a buffer
//!   with spare capacity), at position `T`; the first `step` returns the kept log-probabilities
//!   in row order without running the step graph (`step_top` declines it), later steps run
//!   the step graph as for a translation model.
//! - [`IncrementalDecoder::max_target_positions_for`] is what the prompt leaves of the model's
//!   positions, so the search stops in time; a step past the positions is an error.
//! - [`OnnxDecoder`] is also the [`LmScorer`] of `seqforge eval-lm`: one prefill run per batch
//!   (rows right-padded), each row's target log-probabilities gathered from `[B, T, V]`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use half::f16;
use ort::memory::Allocator;
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::builder::PrepackedWeights;
use ort::session::{HasSelectedOutputs, IoBinding, OutputSelector, RunOptions, Session};
use ort::value::{DynTensor, DynValue, Outlet, Tensor, TensorElementType, ValueType};
use seqforge_schemas::contract::{
    self, DimKind, Dtype, GraphKind, Manifest, ModelContract, StateDtype, StateInit, StatePolicy,
    StateSpec, StateTensor, TOKENIZER_FILE, Task, Vocabulary, names,
};
use sha2::{Digest, Sha256};

use super::device::Device;
use super::session::{SessionConfig, load_session_on};
use crate::decoding::{
    IncrementalDecoder, LogProbs, SpecialTokens, TopLogProbs, lm_input, lm_positions_left,
};
use crate::lm::LmScorer;
use crate::{Error, Result};

/// How to open and run a model directory.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Execution provider (`--device`).
    pub device: Device,
    /// Intra-op threads per session (`--threads`); 0 lets ONNX Runtime choose.
    pub threads: usize,
    /// Also check the graphs' SHA-256 against the manifest (`--verify`); the dictionaries and
    /// the tokenizer are always checked.
    pub verify: bool,
    /// Apply ONNX Runtime's graph optimizations (default true).
    pub optimize: bool,
    /// An explicit ONNX Runtime library (else `ORT_DYLIB_PATH`, else the build-time path).
    pub ort_library: Option<PathBuf>,
    /// Run decoder steps through an I/O binding even on CPU (always done on a GPU); the results
    /// are the same, this exists so that the GPU code path is tested on CPU machines.
    pub io_binding: bool,
    /// Pad every encoded batch's source length up to a multiple of this (capped at the model's
    /// `max_source_positions`; 0 and 1: no extra padding, `--pad-source-to-multiple`). A
    /// sentence's results depend on the padded length of its batch in their last bits, so with
    /// a multiple M every sentence whose length rounds up to the same multiple gets the same
    /// bits in any batch: a server can batch sources of different lengths and still answer
    /// exactly what translating each alone answers.
    pub pad_source_to_multiple: usize,
}

impl RuntimeOptions {
    /// The source length a batch whose longest source has `len` tokens is encoded with.
    pub fn padded_source_len(&self, len: usize, max_source_positions: usize) -> usize {
        let m = self.pad_source_to_multiple.max(1);
        len.div_ceil(m).saturating_mul(m).min(max_source_positions.max(len))
    }
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            threads: 0,
            verify: false,
            optimize: true,
            ort_library: None,
            io_binding: false,
            pad_source_to_multiple: 1,
        }
    }
}

/// The two sessions of one worker.
struct Sessions {
    encoder: Session,
    decoder: Session,
}

/// An opened, checked model directory; share it with `Arc` (see the module documentation).
pub struct ModelDir {
    dir: PathBuf,
    manifest: Manifest,
    src_vocab: Vocabulary,
    tgt_vocab: Vocabulary,
    tokenizer: Option<PathBuf>,
    options: RuntimeOptions,
    encoder_path: PathBuf,
    decoder_path: PathBuf,
    spare: Mutex<Option<Sessions>>,
    /// The pre-packed GEMM weights shared by every session of this model.
    prepacked: PrepackedWeights,
}

impl std::fmt::Debug for ModelDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelDir")
            .field("dir", &self.dir)
            .field("contract", &self.manifest.contract)
            .field("device", &self.options.device)
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl ModelDir {
    /// Opens and checks a model directory (see the module documentation for what is checked).
    pub fn open(dir: &Path, options: &RuntimeOptions) -> Result<Self> {
        super::init(options.ort_library.as_deref())?;
        let manifest = Manifest::load(dir)?;
        let files = &manifest.files;
        let task = manifest.contract.task;
        let first = files.first_graph(task, &dir.join(contract::MANIFEST_FILE))?;
        for (entry, role) in files.entries() {
            let path = dir.join(&entry.name);
            if !path.is_file() {
                return Err(Error::ModelFileMissing { path, role });
            }
            let graph = matches!(role, "encoder" | "prefill" | "decoder");
            if !graph || options.verify {
                let found = sha256_file(&path)?;
                if !found.eq_ignore_ascii_case(&entry.sha256) {
                    return Err(Error::ChecksumMismatch {
                        path,
                        expected: entry.sha256.clone(),
                        found,
                    });
                }
            }
        }
        let c = &manifest.contract;
        let src_path = dir.join(&files.src_dict.name);
        let tgt_path = dir.join(&files.tgt_dict.name);
        let src_vocab = Vocabulary::load(&src_path)?;
        let tgt_vocab = Vocabulary::load(&tgt_path)?;
        for (path, vocab, field, expected) in [
            (&src_path, &src_vocab, "src_vocab_size", c.src_vocab_size),
            (&tgt_path, &tgt_vocab, "tgt_vocab_size", c.tgt_vocab_size),
        ] {
            if vocab.len() != expected {
                return Err(contract::Error::Mismatch {
                    what: path.display().to_string(),
                    field: format!("{field} (symbols in the dictionary)"),
                    expected: expected.to_string(),
                    found: vocab.len().to_string(),
                }
                .into());
            }
        }
        let tokenizer = files.tokenizer.as_ref().map(|t| dir.join(&t.name));
        if let Some(t) = &files.tokenizer
            && t.name != TOKENIZER_FILE
        {
            tracing::debug!(name = %t.name, "tokenizer file with a non-standard name");
        }
        let model = Self {
            dir: dir.to_path_buf(),
            encoder_path: dir.join(&first.name),
            decoder_path: dir.join(&files.decoder.name),
            manifest,
            src_vocab,
            tgt_vocab,
            tokenizer,
            options: options.clone(),
            spare: Mutex::new(None),
            prepacked: PrepackedWeights::new(),
        };
        let sessions = model.build_sessions()?;
        *model.spare.lock().unwrap_or_else(|p| p.into_inner()) = Some(sessions);
        tracing::info!(
            dir = %dir.display(),
            arch = %model.contract().arch,
            dtype = %model.contract().dtype,
            device = %options.device,
            "opened model"
        );
        Ok(model)
    }

    /// The model directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The model contract (from the manifest, checked against both graphs).
    pub fn contract(&self) -> &ModelContract {
        &self.manifest.contract
    }

    /// What the model does (translation or language modeling).
    pub fn task(&self) -> Task {
        self.contract().task
    }

    /// [`Error::TaskMismatch`] naming `what` unless the model's task is `needed`.
    pub fn require_task(&self, needed: Task, what: &str) -> Result<()> {
        if self.task() == needed {
            Ok(())
        } else {
            Err(Error::TaskMismatch {
                dir: self.dir.clone(),
                task: self.task(),
                what: what.to_string(),
                needed,
            })
        }
    }

    /// The source dictionary.
    pub fn src_vocab(&self) -> &Vocabulary {
        &self.src_vocab
    }

    /// The target dictionary.
    pub fn tgt_vocab(&self) -> &Vocabulary {
        &self.tgt_vocab
    }

    /// The `tokenizer.json` the data was preprocessed with, if any.
    pub fn tokenizer_path(&self) -> Option<&Path> {
        self.tokenizer.as_deref()
    }

    /// The options the model was opened with.
    pub fn options(&self) -> &RuntimeOptions {
        &self.options
    }

    /// Special ids of the model.
    pub fn special_tokens(&self) -> SpecialTokens {
        let s = self.contract().special;
        SpecialTokens { bos: s.bos, pad: s.pad, eos: s.eos, unk: s.unk }
    }

    fn build_sessions(&self) -> Result<Sessions> {
        let config = SessionConfig {
            intra_threads: self.options.threads,
            optimize: self.options.optimize,
            prepacked: Some(self.prepacked.clone()),
        };
        let encoder = load_session_on(&self.encoder_path, &config, &self.options.device)?;
        self.check_graph(&self.encoder_path, self.contract().task.first_graph(), &encoder)?;
        let decoder = load_session_on(&self.decoder_path, &config, &self.options.device)?;
        self.check_graph(&self.decoder_path, GraphKind::Decoder, &decoder)?;
        Ok(Sessions { encoder, decoder })
    }

    /// Checks a session's metadata against the manifest and its inputs/outputs against the
    /// contract.
    fn check_graph(&self, path: &Path, kind: GraphKind, session: &Session) -> Result<()> {
        let what = path.display().to_string();
        let metadata = session.metadata()?;
        let mut props = BTreeMap::new();
        for key in metadata.custom_keys()? {
            if let Some(value) = metadata.custom(&key) {
                props.insert(key, value);
            }
        }
        let found = ModelContract::from_metadata(&what, kind, &props)?;
        self.contract().check_same(&what, &found)?;

        let c = self.contract();
        let spec = &c.state;
        // Each expected input/output: name, element type, and per axis the declared constant
        // (`None` for rows, source and growing axes).
        let expect = |name: String, t: &StateTensor| -> Expected {
            let dims = spec
                .dim_kinds(t)
                .unwrap_or_default()
                .into_iter()
                .map(|k| match k {
                    DimKind::Fixed(v) => Some(v as i64),
                    _ => None,
                })
                .collect();
            (name, element_type(c.dtype, t.dtype), dims)
        };
        let plain =
            |name: &str, ty, rank: usize| -> Expected { (name.to_string(), ty, vec![None; rank]) };
        let (inputs, outputs): (Vec<Expected>, Vec<Expected>) = match kind {
            GraphKind::Encoder => {
                let outs = spec
                    .encoder_outputs()
                    .into_iter()
                    .map(|(name, t)| expect(name.to_string(), t))
                    .collect();
                (vec![plain(names::SRC_TOKENS, TensorElementType::Int64, 2)], outs)
            }
            GraphKind::Prefill => {
                let mut outs = vec![plain(names::LOG_PROBS, TensorElementType::Float32, 3)];
                outs.extend(
                    spec.tensors
                        .iter()
                        .filter(|t| t.policy.follows_row())
                        .map(|t| expect(names::present(&t.name), t)),
                );
                (vec![plain(names::TOKENS, TensorElementType::Int64, 2)], outs)
            }
            GraphKind::Decoder => {
                let mut ins = vec![
                    plain(names::PREV_TOKENS, TensorElementType::Int64, 2),
                    plain(names::REORDER, TensorElementType::Int64, 1),
                ];
                let mut outs = vec![plain(names::LOG_PROBS, TensorElementType::Float32, 2)];
                // The step index: required with in-place tensors, optional otherwise.
                if spec.tensors.iter().any(|t| t.policy.in_place())
                    || session.inputs().iter().any(|i| i.name() == names::POSITION)
                {
                    ins.push(plain(names::POSITION, TensorElementType::Int64, 1));
                }
                // Optional: each row's best log-probabilities (exports of this version on have
                // them; earlier ones decode through `log_probs` alone).
                if session.inputs().iter().any(|i| i.name() == names::TOP_K) {
                    ins.push(plain(names::TOP_K, TensorElementType::Int64, 1));
                    outs.push(plain(names::TOP_LOG_PROBS, TensorElementType::Float32, 2));
                    outs.push(plain(names::TOP_IDS, TensorElementType::Int64, 2));
                }
                for t in &spec.tensors {
                    if t.policy.follows_row() {
                        ins.push(expect(names::past(&t.name), t));
                        outs.push(expect(names::present(&t.name), t));
                    } else {
                        ins.push(expect(t.name.clone(), t));
                    }
                }
                (ins, outs)
            }
        };
        check_outlets(path, "input", session.inputs(), &inputs)?;
        check_outlets(path, "output", session.outputs(), &outputs)?;
        // Every input of the graph must be one we feed.
        if let Some(extra) =
            session.inputs().iter().find(|o| !inputs.iter().any(|(n, _, _)| n == o.name()))
        {
            return Err(contract::Error::State {
                what: path.display().to_string(),
                tensor: extra.name().to_string(),
                message: format!(
                    "the graph takes this input but the declared state has no such tensor \
                     (declared: {})",
                    spec.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
            .into());
        }
        Ok(())
    }

    /// Takes the sessions built by [`ModelDir::open`], or builds a new set.
    fn sessions(&self) -> Result<Sessions> {
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).take();
        match spare {
            Some(s) => Ok(s),
            None => self.build_sessions(),
        }
    }
}

/// An expected graph input or output: name, element type, and per axis the declared size
/// (`None` where any size is legal).
type Expected = (String, TensorElementType, Vec<Option<i64>>);

fn check_outlets(
    path: &Path,
    direction: &str,
    outlets: &[Outlet],
    expected: &[Expected],
) -> Result<()> {
    for (name, ty, dims) in expected {
        let bad = |message: String| Error::GraphInterface { path: path.to_path_buf(), message };
        let outlet = outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
            bad(format!(
                "missing {direction} `{name}` (has: {})",
                outlets.iter().map(Outlet::name).collect::<Vec<_>>().join(", ")
            ))
        })?;
        match outlet.dtype() {
            ValueType::Tensor { ty: found, shape, .. } => {
                if found != ty {
                    return Err(bad(format!("{direction} `{name}` is {found:?}, expected {ty:?}")));
                }
                if shape.len() != dims.len() {
                    return Err(bad(format!(
                        "{direction} `{name}` has rank {}, the declared state has {}",
                        shape.len(),
                        dims.len()
                    )));
                }
                for (axis, (&found, want)) in shape.iter().zip(dims).enumerate() {
                    if let Some(want) = *want
                        && found >= 0
                        && found != want
                    {
                        return Err(bad(format!(
                            "{direction} `{name}` has size {found} on axis {axis}, the declared \
                             state says {want}"
                        )));
                    }
                }
            }
            other => return Err(bad(format!("{direction} `{name}` is {other:?}, not a tensor"))),
        }
    }
    Ok(())
}

/// The ONNX element type of a state tensor of `dtype` in a model of `model`.
fn element_type(model: Dtype, dtype: StateDtype) -> TensorElementType {
    match dtype {
        StateDtype::Model => match model {
            Dtype::Fp32 | Dtype::Int8 => TensorElementType::Float32,
            Dtype::Fp16 => TensorElementType::Float16,
        },
        StateDtype::Float32 => TensorElementType::Float32,
        StateDtype::Bool => TensorElementType::Bool,
        StateDtype::Int64 => TensorElementType::Int64,
    }
}

/// Host copy of a per-sentence tensor (`[B, …]`, row-major).
#[derive(Debug, Clone)]
enum HostData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bool(Vec<bool>),
    I64(Vec<i64>),
}

/// One encoder output kept on the host, `[B, …]`.
#[derive(Debug)]
struct HostTensor {
    /// The full shape, sentences first.
    shape: Vec<usize>,
    data: HostData,
}

impl HostTensor {
    /// Rows `rows` (sentence indices) of the tensor, as a value of `[rows.len(), …]` on the
    /// decoder's device.
    fn gather(&self, decoder: &OnnxDecoder, rows: &[usize]) -> Result<DynValue> {
        let block: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = rows.len();
        match &self.data {
            HostData::F32(v) => decoder.upload(shape, gather_rows(v, block, rows)),
            HostData::F16(v) => decoder.upload(shape, gather_rows(v, block, rows)),
            HostData::Bool(v) => decoder.upload(shape, gather_rows(v, block, rows)),
            HostData::I64(v) => decoder.upload(shape, gather_rows(v, block, rows)),
        }
    }
}

/// Per-sentence encoder results kept on the host.
#[derive(Debug)]
struct EncodedBatch {
    sentences: usize,
    src_len: usize,
    /// [`StateSpec::encoder_outputs`] in that order; for a language model, the prefill's
    /// `present.{name}` in [`Names::past`] order.
    outputs: Vec<HostTensor>,
    /// A language model's prefill results.
    prefill: Option<Prefilled>,
}

/// What a language model's prefill left for the steps.
#[derive(Debug)]
struct Prefilled {
    /// Tokens consumed per sentence (`[eos] + prompt`): the first step's position.
    len: usize,
    /// Each sentence's next-token log-probabilities after its last token, `[B, V]`.
    last: Vec<f32>,
    /// Each sentence's summed log-probability of its prompt tokens (each given those before).
    prompt_scores: Vec<f32>,
}

/// The encoder's output for a batch (cheap to clone).
#[derive(Debug, Clone)]
pub struct Encoded(Arc<EncodedBatch>);

impl Encoded {
    /// Number of sentences.
    pub fn sentences(&self) -> usize {
        self.0.sentences
    }

    /// Padded source length (0 for a language model).
    pub fn src_len(&self) -> usize {
        self.0.src_len
    }

    /// A language model's prompt length, the leading EOS included (`None` for a translation
    /// model).
    pub fn prompt_len(&self) -> Option<usize> {
        self.0.prefill.as_ref().map(|p| p.len)
    }
}

/// The decoding state of one batch (see the module documentation).
pub struct DecoderState {
    encoded: Arc<EncodedBatch>,
    /// Sentence of each current row.
    rows: Vec<usize>,
    /// Gather index (into the past's rows) for the next step; `None` = identity.
    pending: Option<Vec<i64>>,
    /// The row-following tensors (`past.{name}`), in [`Names::past`] order.
    past: Vec<DynValue>,
    /// Rows of `past`.
    past_rows: usize,
    /// The row → sentence mapping `per_sentence` is laid out for.
    per_sentence_rows: Vec<usize>,
    /// Row-ordered per-sentence inputs, in [`Names::per_sentence`] order.
    per_sentence: Vec<DynValue>,
    /// Decoder steps taken (the length of every `Append` axis).
    position: usize,
    /// Times the per-sentence inputs were rebuilt.
    regathers: usize,
    /// The capacity of the `InPlace` buffers in `past` (0 without any).
    capacity: usize,
    /// Per row-following tensor, the other buffer of an `InPlace` tensor (reused by the next
    /// gather when its shape fits).
    spare: Vec<Option<DynValue>>,
    /// Whether the prefill's last log-probabilities are still to be returned by the first step.
    prefilled: bool,
}

impl DecoderState {
    /// Target positions decoded so far (the length of growing state axes).
    pub fn position(&self) -> usize {
        self.position
    }

    /// How many times the row-ordered per-sentence inputs were rebuilt (expansion to the beam
    /// and pruning of finished sentences; never for a plain beam reorder).
    pub fn regathers(&self) -> usize {
        self.regathers
    }

    /// The capacity of the in-place state buffers (0 when the model declares none).
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// The capacity of new in-place buffers.
const INITIAL_CAPACITY: usize = 16;

/// The capacity to grow full in-place buffers to, for `need` positions: half as much again,
/// rounded up to a multiple of 16.
fn grown_capacity(need: usize) -> usize {
    (need + need / 2).next_multiple_of(16)
}

/// One row-following tensor of the declared state, resolved.
struct PastTensor {
    /// The declaration.
    decl: StateTensor,
    /// `past.{name}`.
    past: String,
    /// `present.{name}`.
    present: String,
    /// For an `InPlace` tensor, the index of its capacity axis.
    in_place: Option<usize>,
}

/// The declared state, resolved once per decoder: graph names and where each comes from.
struct Names {
    /// Per-sentence inputs: (name, index into [`EncodedBatch::outputs`]).
    per_sentence: Vec<(String, usize)>,
    /// Row-following tensors.
    past: Vec<PastTensor>,
    /// Encoder outputs to keep: (name, declaring tensor).
    encoder: Vec<(String, StateTensor)>,
}

impl Names {
    fn new(spec: &StateSpec) -> Self {
        let encoder: Vec<(String, StateTensor)> =
            spec.encoder_outputs().into_iter().map(|(n, t)| (n.to_string(), t.clone())).collect();
        let index = |name: &str| encoder.iter().position(|(n, _)| n == name).unwrap_or(0);
        let per_sentence = spec
            .tensors
            .iter()
            .filter(|t| !t.policy.follows_row())
            .map(|t| (t.name.clone(), index(&t.name)))
            .collect();
        let past = spec
            .tensors
            .iter()
            .filter(|t| t.policy.follows_row())
            .map(|t| PastTensor {
                decl: t.clone(),
                past: names::past(&t.name),
                present: names::present(&t.name),
                in_place: match &t.policy {
                    StatePolicy::InPlace { axis } => t.shape.iter().position(|d| d == axis),
                    _ => None,
                },
            })
            .collect();
        Self { per_sentence, past, encoder }
    }

    fn encoder_index(&self, name: &str) -> Option<usize> {
        self.encoder.iter().position(|(n, _)| n == name)
    }
}

/// One worker's ONNX Runtime sessions of a shared [`ModelDir`], implementing
/// [`IncrementalDecoder`].
pub struct OnnxDecoder {
    model: Arc<ModelDir>,
    encoder: Session,
    decoder: Session,
    binding: IoBinding,
    /// Where `present_*` are allocated.
    cache: MemoryInfo<'static>,
    /// Where `log_probs` are allocated.
    host: MemoryInfo<'static>,
    names: Names,
    special: SpecialTokens,
    gpu: Option<i32>,
    /// Whether steps run through `binding`.
    bind: bool,
    /// Whether the step graph returns each row's best log-probabilities (`top_k` input).
    has_top: bool,
    /// Whether the step graph takes the `position` input.
    has_position: bool,
    /// Whether the state has `InPlace` tensors (steps then run through `binding`).
    in_place: bool,
    /// Whether the model is a language model (`encoder` is then the prefill graph).
    lm: bool,
    /// Run options that fetch every output but `log_probs` (steps of [`OnnxDecoder::step_top`]).
    top_only: RunOptions<HasSelectedOutputs>,
}

impl std::fmt::Debug for OnnxDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxDecoder").field("model", &self.model).finish_non_exhaustive()
    }
}

impl OnnxDecoder {
    /// A decoder over `model` (see the module documentation on sharing).
    pub fn new(model: Arc<ModelDir>) -> Result<Self> {
        let Sessions { encoder, decoder } = model.sessions()?;
        let names = Names::new(&model.contract().state);
        let binding = decoder.create_binding()?;
        let cache = model.options.device.cache_memory()?;
        let host = Device::host_memory()?;
        let gpu = match model.options.device {
            Device::Cpu => None,
            Device::Cuda { device_id } | Device::TensorRt { device_id, .. } => Some(device_id),
        };
        let special = model.special_tokens();
        let in_place = names.past.iter().any(|p| p.in_place.is_some());
        let bind = gpu.is_some() || model.options.io_binding || in_place;
        let has_top = decoder.inputs().iter().any(|i| i.name() == names::TOP_K);
        let has_position = decoder.inputs().iter().any(|i| i.name() == names::POSITION);
        let top_only =
            RunOptions::new()?.with_outputs(OutputSelector::default().without(names::LOG_PROBS));
        let lm = model.task() == Task::LanguageModeling;
        Ok(Self {
            lm,
            model,
            encoder,
            decoder,
            binding,
            cache,
            host,
            names,
            special,
            gpu,
            bind,
            has_top,
            has_position,
            in_place,
            top_only,
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<ModelDir> {
        &self.model
    }

    fn contract(&self) -> &ModelContract {
        self.model.contract()
    }

    /// A host tensor as an ONNX Runtime value, on the cache device.
    fn upload<T>(&self, shape: Vec<usize>, data: Vec<T>) -> Result<DynValue>
    where
        T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static,
    {
        let tensor = Tensor::from_array((shape, data))?;
        Ok(match self.gpu {
            Some(id) => tensor.to(AllocationDevice::CUDA, id)?.into_dyn(),
            None => tensor.into_dyn(),
        })
    }

    /// Builds the row-ordered per-sentence inputs for `state.rows`.
    fn regather(&self, state: &mut DecoderState) -> Result<()> {
        let mut values = Vec::with_capacity(self.names.per_sentence.len());
        for (_, index) in &self.names.per_sentence {
            values.push(state.encoded.outputs[*index].gather(self, &state.rows)?);
        }
        state.per_sentence = values;
        state.per_sentence_rows = state.rows.clone();
        state.regathers += 1;
        Ok(())
    }

    /// The first step's value of every row-following tensor for `rows` (sentence of each row):
    /// empty along `Append` axes, zeros, or the rows' encoder outputs.
    fn initial_past(&self, encoded: &EncodedBatch, rows: &[usize]) -> Result<Vec<DynValue>> {
        let spec = &self.contract().state;
        let dtype = self.contract().dtype;
        let mut past = Vec::with_capacity(self.names.past.len());
        for p in &self.names.past {
            let t = &p.decl;
            if p.in_place.is_some() {
                let shape = spec.shape_of(t, rows.len(), encoded.src_len, INITIAL_CAPACITY);
                past.push(in_place_buffer(element_type(dtype, t.dtype), &shape, true)?);
                continue;
            }
            let shape = spec.shape_of(t, rows.len(), encoded.src_len, 0);
            let value = match &t.policy {
                StatePolicy::Recurrent { init: StateInit::Encoder(source) } => {
                    let index = self.names.encoder_index(source).ok_or_else(|| {
                        Error::DecoderState(format!("no encoder output `{source}` kept"))
                    })?;
                    encoded.outputs[index].gather(self, rows)?
                }
                _ => {
                    let n: usize = shape.iter().product();
                    match element_type(dtype, t.dtype) {
                        TensorElementType::Float16 => self.upload(shape, vec![f16::ZERO; n])?,
                        TensorElementType::Bool => self.upload(shape, vec![false; n])?,
                        TensorElementType::Int64 => self.upload(shape, vec![0i64; n])?,
                        _ => self.upload(shape, vec![0f32; n])?,
                    }
                }
            };
            past.push(value);
        }
        Ok(past)
    }
}

impl OnnxDecoder {
    /// The first step's value of every row-following tensor of a language model for `rows`
    /// (sentence of each row): the prefill's `present.{name}` of the row's sentence; an
    /// `InPlace` tensor in a buffer of `capacity` positions. See the module documentation.
    fn prefilled_past(
        &self,
        encoded: &EncodedBatch,
        rows: &[usize],
        len: usize,
        capacity: usize,
    ) -> Result<Vec<DynValue>> {
        let c = self.contract();
        let mut past = Vec::with_capacity(self.names.past.len());
        for (p, host) in self.names.past.iter().zip(&encoded.outputs) {
            let Some(axis) = p.in_place else {
                past.push(host.gather(self, rows)?);
                continue;
            };
            let shape = c.state.shape_of(&p.decl, rows.len(), 0, capacity);
            let mut to = in_place_buffer(element_type(c.dtype, p.decl.dtype), &shape, true)?;
            let (src, dst) = (BufferLayout::of(&host.shape, axis), BufferLayout::of(&shape, axis));
            match &host.data {
                HostData::F32(v) => gather_into(v, src, &mut to, dst, rows, len)?,
                HostData::F16(v) => gather_into(v, src, &mut to, dst, rows, len)?,
                HostData::Bool(v) => gather_into(v, src, &mut to, dst, rows, len)?,
                HostData::I64(v) => gather_into(v, src, &mut to, dst, rows, len)?,
            }
            past.push(to);
        }
        Ok(past)
    }

    /// A language model's batch: each source (a prompt ending with EOS) as `[eos] + prompt`,
    /// all of one length, through the prefill graph (see the module documentation).
    fn prefill(&mut self, sources: &[Vec<u32>]) -> Result<Encoded> {
        let model = Arc::clone(&self.model);
        let c = model.contract();
        let eos = self.special.eos;
        let rows: Vec<Vec<u32>> = sources.iter().map(|s| lm_input(s, eos)).collect();
        let len = rows.first().map_or(0, Vec::len);
        if let Some(other) = rows.iter().find(|r| r.len() != len) {
            return Err(Error::PromptLengths { first: len - 1, other: other.len() - 1 });
        }
        if len > c.max_target_positions {
            return Err(Error::PromptTooLong {
                index: 0,
                tokens: len,
                max: c.max_target_positions,
            });
        }
        let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
        let (b, v) = (rows.len(), c.tgt_vocab_size);
        let outputs = run_prefill(&mut self.encoder, &refs, self.special.pad)?;
        let lp = prefill_log_probs(&outputs, [b, len, v])?;
        let mut last = Vec::with_capacity(b * v);
        let mut prompt_scores = Vec::with_capacity(b);
        for (i, row) in rows.iter().enumerate() {
            last.extend_from_slice(&lp[(i * len + len - 1) * v..(i * len + len) * v]);
            // Position j predicts token j + 1 of `[eos] + prompt`; summed in order, in f32.
            let mut sum = 0f32;
            for (j, &next) in row.iter().enumerate().skip(1) {
                sum += lp[(i * len + j - 1) * v + next as usize];
            }
            prompt_scores.push(sum);
        }
        let mut kept = Vec::with_capacity(self.names.past.len());
        for p in &self.names.past {
            let value = outputs.get(p.present.as_str()).ok_or_else(|| Error::GraphOutput {
                graph: contract::PREFILL_FILE,
                output: p.present.clone(),
                message: "not returned".into(),
            })?;
            let shape = c.state.shape_of(&p.decl, b, 0, len);
            let ty = element_type(c.dtype, p.decl.dtype);
            kept.push(host_copy(value, ty, &shape, &p.present, contract::PREFILL_FILE)?);
        }
        let prefill = Some(Prefilled { len, last, prompt_scores });
        Ok(Encoded(Arc::new(EncodedBatch { sentences: b, src_len: 0, outputs: kept, prefill })))
    }

    /// The prefill's last log-probabilities in row order, once, before the first step runs the
    /// step graph; `None` when the first step has been taken (or for a translation model).
    fn take_prefilled(&self, tokens: &[u32], state: &mut DecoderState) -> Result<Option<LogProbs>> {
        let Some(p) = state.encoded.prefill.as_ref().filter(|_| state.prefilled) else {
            return Ok(None);
        };
        let r = state.rows.len();
        if tokens.len() != r {
            return Err(Error::DecoderState(format!("step: {} tokens for {r} rows", tokens.len())));
        }
        let v = self.contract().tgt_vocab_size;
        let mut data = Vec::with_capacity(r * v);
        for &s in &state.rows {
            data.extend_from_slice(&p.last[s * v..(s + 1) * v]);
        }
        state.prefilled = false;
        Ok(Some(LogProbs { rows: r, vocab: v, data }))
    }
}

/// Runs a prefill graph on `rows`, right-padded with `pad` to the longest.
fn run_prefill<'s>(
    session: &'s mut Session,
    rows: &[&[u32]],
    pad: u32,
) -> Result<ort::session::SessionOutputs<'s>> {
    let b = rows.len();
    let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    if b == 0 || t == 0 {
        return Err(Error::DecoderState("prefill: no tokens".into()));
    }
    let mut tokens = vec![i64::from(pad); b * t];
    for (i, row) in rows.iter().enumerate() {
        for (j, &tok) in row.iter().enumerate() {
            tokens[i * t + j] = i64::from(tok);
        }
    }
    let input = Tensor::from_array((vec![b, t], tokens))?;
    Ok(session.run(ort::inputs![names::TOKENS => input])?)
}

/// The prefill's `log_probs`, checked to be `[B, T, V]`.
fn prefill_log_probs<'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    [b, t, v]: [usize; 3],
) -> Result<&'a [f32]> {
    let bad = |message: String| Error::GraphOutput {
        graph: contract::PREFILL_FILE,
        output: names::LOG_PROBS.into(),
        message,
    };
    let value = outputs.get(names::LOG_PROBS).ok_or_else(|| bad("not returned".into()))?;
    let (shape, data) = value.try_extract_tensor::<f32>().map_err(|e| bad(e.to_string()))?;
    if **shape != [b as i64, t as i64, v as i64] {
        return Err(bad(format!("shape {:?}, expected [{b}, {t}, {v}]", &**shape)));
    }
    Ok(data)
}

impl LmScorer for OnnxDecoder {
    type Error = Error;

    /// Runs the prefill graph over the batch (right-padded) and gathers each row's target
    /// log-probabilities.
    fn target_log_probs(&mut self, inputs: &[&[u32]], targets: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.model.require_task(Task::LanguageModeling, "language-model scoring")?;
        if inputs.len() != targets.len() {
            return Err(Error::DecoderState(format!(
                "scoring: {} inputs for {} targets",
                inputs.len(),
                targets.len()
            )));
        }
        let c = self.model.contract();
        let (v, max) = (c.tgt_vocab_size, c.max_target_positions);
        let t = inputs.iter().map(|r| r.len()).max().unwrap_or(0);
        if t > max {
            return Err(Error::PromptTooLong { index: 0, tokens: t, max });
        }
        let outputs = run_prefill(&mut self.encoder, inputs, self.special.pad)?;
        let lp = prefill_log_probs(&outputs, [inputs.len(), t, v])?;
        targets
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(i, (target, input))| {
                target
                    .iter()
                    .take(input.len())
                    .enumerate()
                    .map(|(j, &tok)| {
                        let k = tok as usize;
                        if k >= v {
                            return Err(Error::DecoderState(format!(
                                "scoring: target id {tok} outside the vocabulary of {v}"
                            )));
                        }
                        Ok(lp[(i * t + j) * v + k])
                    })
                    .collect()
            })
            .collect()
    }
}

fn gather_rows<T: Copy>(data: &[T], block: usize, rows: &[usize]) -> Vec<T> {
    let mut out = Vec::with_capacity(rows.len() * block);
    for &r in rows {
        out.extend_from_slice(&data[r * block..(r + 1) * block]);
    }
    out
}

/// A host buffer for an `InPlace` tensor (allocated by ONNX Runtime, so that it can be bound
/// as an output), zero-filled when `zeroed`.
fn in_place_buffer(ty: TensorElementType, shape: &[usize], zeroed: bool) -> Result<DynValue> {
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let mut value = DynTensor::new(&Allocator::default(), ty, dims)?.into_dyn();
    if zeroed {
        match ty {
            TensorElementType::Float16 => value.try_extract_tensor_mut::<f16>()?.1.fill(f16::ZERO),
            TensorElementType::Float32 => value.try_extract_tensor_mut::<f32>()?.1.fill(0.0),
            TensorElementType::Int64 => value.try_extract_tensor_mut::<i64>()?.1.fill(0),
            TensorElementType::Bool => value.try_extract_tensor_mut::<bool>()?.1.fill(false),
            other => {
                return Err(Error::DecoderState(format!(
                    "in-place state of element type {other:?} is not supported"
                )));
            }
        }
    }
    Ok(value)
}

/// The layout of an in-place buffer around its capacity axis: rows, the product of the
/// dimensions between rows and the axis, the capacity, the product of those after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BufferLayout {
    rows: usize,
    outer: usize,
    capacity: usize,
    inner: usize,
}

impl BufferLayout {
    fn of(shape: &[usize], axis: usize) -> Self {
        Self {
            rows: shape[0],
            outer: shape[1..axis].iter().product(),
            capacity: shape[axis],
            inner: shape[axis + 1..].iter().product(),
        }
    }

    fn len(&self) -> usize {
        self.rows * self.outer * self.capacity * self.inner
    }
}

/// Row `r` of `to` ← row `order[r]` of `from`, positions `0..valid` along the capacity axis.
fn gather_positions<T: Copy>(
    from: &[T],
    src: BufferLayout,
    to: &mut [T],
    dst: BufferLayout,
    order: &[usize],
    valid: usize,
) {
    let span = valid * src.inner;
    for (r, &o) in order.iter().enumerate() {
        for j in 0..src.outer {
            let a = ((o * src.outer + j) * src.capacity) * src.inner;
            let b = ((r * dst.outer + j) * dst.capacity) * dst.inner;
            to[b..b + span].copy_from_slice(&from[a..a + span]);
        }
    }
}

/// The rows an in-place permutation must copy for `order` (same row count): the rows that
/// change, and the changed rows that are also read by another (they must be staged first).
fn permutation_plan(order: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let changed: Vec<usize> = (0..order.len()).filter(|&r| order[r] != r).collect();
    let mut staged: Vec<usize> = Vec::new();
    for &r in &changed {
        let s = order[r];
        if order[s] != s && !staged.contains(&s) {
            staged.push(s);
        }
    }
    (changed, staged)
}

/// Row `r` of `data` ← row `order[r]`, positions `0..valid`, in place: the rows that do not
/// move are not touched; sources that are overwritten are staged in a scratch buffer first.
fn permute_positions<T: Copy>(data: &mut [T], l: BufferLayout, order: &[usize], valid: usize) {
    let (changed, staged) = permutation_plan(order);
    let span = valid * l.inner;
    let block = |r: usize, j: usize| ((r * l.outer + j) * l.capacity) * l.inner;
    let mut scratch = Vec::with_capacity(staged.len() * l.outer * span);
    for &s in &staged {
        for j in 0..l.outer {
            scratch.extend_from_slice(&data[block(s, j)..block(s, j) + span]);
        }
    }
    for &r in &changed {
        let s = order[r];
        for j in 0..l.outer {
            let to = block(r, j);
            match staged.iter().position(|&x| x == s) {
                Some(k) => {
                    let from = (k * l.outer + j) * span;
                    data[to..to + span].copy_from_slice(&scratch[from..from + span]);
                }
                None => data.copy_within(block(s, j)..block(s, j) + span, to),
            }
        }
    }
}

/// [`permute_positions`] on an ONNX Runtime host tensor of element type `T`.
fn permute_value<T: ort::value::PrimitiveTensorElementType + Copy>(
    value: &mut DynValue,
    l: BufferLayout,
    order: &[usize],
    valid: usize,
) -> Result<()> {
    let (_, data) = value.try_extract_tensor_mut::<T>()?;
    if data.len() != l.len() {
        return Err(Error::DecoderState(format!(
            "in-place state buffer of {} elements, expected {}",
            data.len(),
            l.len()
        )));
    }
    permute_positions(data, l, order, valid);
    Ok(())
}

/// [`gather_positions`] between two ONNX Runtime host tensors of element type `T`.
fn gather_values<T: ort::value::PrimitiveTensorElementType + Copy>(
    from: &DynValue,
    src: BufferLayout,
    to: &mut DynValue,
    dst: BufferLayout,
    order: &[usize],
    valid: usize,
) -> Result<()> {
    let (_, a) = from.try_extract_tensor::<T>()?;
    gather_into(a, src, to, dst, order, valid)
}

/// [`gather_positions`] from host data into an ONNX Runtime host tensor of element type `T`.
fn gather_into<T: ort::value::PrimitiveTensorElementType + Copy>(
    a: &[T],
    src: BufferLayout,
    to: &mut DynValue,
    dst: BufferLayout,
    order: &[usize],
    valid: usize,
) -> Result<()> {
    let (_, b) = to.try_extract_tensor_mut::<T>()?;
    if a.len() != src.len() || b.len() != dst.len() {
        return Err(Error::DecoderState(format!(
            "in-place state buffers of {} and {} elements, expected {} and {}",
            a.len(),
            b.len(),
            src.len(),
            dst.len()
        )));
    }
    gather_positions(a, src, b, dst, order, valid);
    Ok(())
}

/// Copies an encoder (or prefill) output to the host, checking its element type and shape.
fn host_copy(
    value: &DynValue,
    ty: TensorElementType,
    shape: &[usize],
    name: &str,
    graph: &'static str,
) -> Result<HostTensor> {
    let bad = |message: String| Error::GraphOutput { graph, output: name.to_string(), message };
    fn take<T: ort::value::PrimitiveTensorElementType + Clone>(
        value: &DynValue,
        shape: &[usize],
        bad: &dyn Fn(String) -> Error,
    ) -> Result<Vec<T>> {
        let (found, data) = value.try_extract_tensor::<T>().map_err(|e| bad(e.to_string()))?;
        if found.len() != shape.len() || found.iter().zip(shape).any(|(&a, &b)| a as usize != b) {
            return Err(bad(format!("shape {:?}, declared {shape:?}", &**found)));
        }
        Ok(data.to_vec())
    }
    let data = match ty {
        TensorElementType::Float16 => HostData::F16(take(value, shape, &bad)?),
        TensorElementType::Bool => HostData::Bool(take(value, shape, &bad)?),
        TensorElementType::Int64 => HostData::I64(take(value, shape, &bad)?),
        _ => HostData::F32(take(value, shape, &bad)?),
    };
    Ok(HostTensor { shape: shape.to_vec(), data })
}

/// The shape of an ONNX Runtime value (empty for a non-tensor).
fn value_shape(value: &DynValue) -> Vec<i64> {
    match value.dtype() {
        ValueType::Tensor { shape, .. } => shape.to_vec(),
        _ => Vec::new(),
    }
}

/// Whether two tensors share their data.
fn same_data(a: &DynValue, b: &DynValue) -> bool {
    use ort::value::DynTensorValueType as T;
    match (a.view().downcast::<T>(), b.view().downcast::<T>()) {
        (Ok(a), Ok(b)) => a.data_ptr() == b.data_ptr(),
        _ => false,
    }
}

/// What one step returned.
enum StepOut {
    Full(LogProbs),
    Top(TopLogProbs),
}

/// The output `name` of a step, checked to be `[rows, k]`.
fn top_output<'a, T: ort::value::PrimitiveTensorElementType + 'a>(
    outputs: &'a ort::session::SessionOutputs<'_>,
    name: &str,
    [rows, k]: [usize; 2],
) -> Result<&'a [T]> {
    let bad = |message: String| Error::GraphOutput {
        graph: contract::DECODER_FILE,
        output: name.to_string(),
        message,
    };
    let value = outputs.get(name).ok_or_else(|| bad("not returned".into()))?;
    let (shape, data) = value.try_extract_tensor::<T>().map_err(|e| bad(e.to_string()))?;
    if **shape != [rows as i64, k as i64] {
        return Err(bad(format!("shape {:?}, expected [{rows}, {k}]", &**shape)));
    }
    Ok(data)
}

impl OnnxDecoder {
    /// Makes the `InPlace` buffers ready for a step with gather index `order`: rows in this
    /// step's order and room for one more position (see the module documentation).
    fn prepare_in_place(&self, state: &mut DecoderState, order: &[i64]) -> Result<()> {
        let need = state.position + 1;
        let identity =
            order.len() == state.past_rows && order.iter().enumerate().all(|(i, &o)| o == i as i64);
        if identity && state.capacity >= need {
            return Ok(());
        }
        let capacity = if state.capacity >= need { state.capacity } else { grown_capacity(need) };
        let order: Vec<usize> = order.iter().map(|&o| o as usize).collect();
        let c = self.contract();
        let src_len = state.encoded.src_len;
        // Same rows and room left: permute in place when that copies fewer rows than a gather
        // into the other buffer (rows that keep their place are not copied).
        if order.len() == state.past_rows && capacity == state.capacity {
            let (changed, staged) = permutation_plan(&order);
            if changed.len() + staged.len() < order.len() {
                for (i, p) in self.names.past.iter().enumerate() {
                    let Some(axis) = p.in_place else { continue };
                    let shape = c.state.shape_of(&p.decl, order.len(), src_len, capacity);
                    let l = BufferLayout::of(&shape, axis);
                    let value = &mut state.past[i];
                    let valid = state.position;
                    match element_type(c.dtype, p.decl.dtype) {
                        TensorElementType::Float16 => {
                            permute_value::<f16>(value, l, &order, valid)?
                        }
                        TensorElementType::Int64 => permute_value::<i64>(value, l, &order, valid)?,
                        TensorElementType::Bool => permute_value::<bool>(value, l, &order, valid)?,
                        _ => permute_value::<f32>(value, l, &order, valid)?,
                    }
                }
                return Ok(());
            }
        }
        if state.spare.len() != state.past.len() {
            state.spare = (0..state.past.len()).map(|_| None).collect();
        }
        for (i, p) in self.names.past.iter().enumerate() {
            let Some(axis) = p.in_place else { continue };
            let ty = element_type(c.dtype, p.decl.dtype);
            let from_shape = c.state.shape_of(&p.decl, state.past_rows, src_len, state.capacity);
            let to_shape = c.state.shape_of(&p.decl, order.len(), src_len, capacity);
            let want: Vec<i64> = to_shape.iter().map(|&d| d as i64).collect();
            let mut to = match state.spare[i].take() {
                Some(v) if value_shape(&v) == want => v,
                _ => in_place_buffer(ty, &to_shape, true)?,
            };
            let (src, dst) =
                (BufferLayout::of(&from_shape, axis), BufferLayout::of(&to_shape, axis));
            let from = &state.past[i];
            let valid = state.position;
            match ty {
                TensorElementType::Float16 => {
                    gather_values::<f16>(from, src, &mut to, dst, &order, valid)?
                }
                TensorElementType::Int64 => {
                    gather_values::<i64>(from, src, &mut to, dst, &order, valid)?
                }
                TensorElementType::Bool => {
                    gather_values::<bool>(from, src, &mut to, dst, &order, valid)?
                }
                _ => gather_values::<f32>(from, src, &mut to, dst, &order, valid)?,
            }
            state.spare[i] = Some(std::mem::replace(&mut state.past[i], to));
        }
        state.capacity = capacity;
        Ok(())
    }

    /// One decoder step: full log-probabilities, or with `top` each row's `top` best.
    fn run_step(
        &mut self,
        tokens: &[u32],
        state: &mut DecoderState,
        top: Option<usize>,
    ) -> Result<StepOut> {
        let r = state.rows.len();
        if tokens.len() != r {
            return Err(Error::DecoderState(format!("step: {} tokens for {r} rows", tokens.len())));
        }
        if r == 0 {
            return Err(Error::DecoderState("step: no rows left".into()));
        }
        let positions = self.contract().max_target_positions;
        if self.lm && state.position >= positions {
            return Err(Error::DecoderState(format!(
                "step: position {} is past the model's {positions} positions",
                state.position
            )));
        }
        if state.per_sentence_rows != state.rows {
            self.regather(state)?;
        }
        let order: Vec<i64> = match state.pending.take() {
            Some(order) => order,
            None => (0..r as i64).collect(),
        };
        if let Some(bad) = order.iter().find(|&&i| i < 0 || i as usize >= state.past_rows) {
            return Err(Error::DecoderState(format!(
                "step: reorder index {bad} outside the {} rows of the cache",
                state.past_rows
            )));
        }
        if self.in_place {
            self.prepare_in_place(state, &order)?;
        }
        // On a binding, outputs are bound before the inputs borrow the state: an in-place
        // tensor's buffer is both `past.{name}` and `present.{name}`.
        if self.bind {
            let binding = &mut self.binding;
            binding.clear_outputs();
            for (p, value) in self.names.past.iter().zip(state.past.iter_mut()) {
                if p.in_place.is_some() {
                    binding.bind_output(p.present.as_str(), value)?;
                } else {
                    // On a GPU, ONNX Runtime allocates `present_*` of this step's shape in GPU
                    // memory, where the next step reads them.
                    binding.bind_output_to_device(p.present.as_str(), &self.cache)?;
                }
            }
            match top {
                None => binding.bind_output_to_device(names::LOG_PROBS, &self.host)?,
                Some(_) => {
                    binding.bind_output_to_device(names::TOP_LOG_PROBS, &self.host)?;
                    binding.bind_output_to_device(names::TOP_IDS, &self.host)?;
                }
            }
        }
        let prev: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
        let prev = Tensor::from_array((vec![r, 1], prev))?.into_dyn();
        let order = Tensor::from_array((vec![r], order))?.into_dyn();
        let position = Tensor::from_array((vec![1usize], vec![state.position as i64]))?.into_dyn();
        let mut inputs: Vec<(&str, &DynValue)> =
            Vec::with_capacity(4 + self.names.per_sentence.len() + self.names.past.len());
        inputs.push((names::PREV_TOKENS, &prev));
        inputs.push((names::REORDER, &order));
        if self.has_position {
            inputs.push((names::POSITION, &position));
        }
        for ((name, _), value) in self.names.per_sentence.iter().zip(&state.per_sentence) {
            inputs.push((name.as_str(), value));
        }
        for (p, value) in self.names.past.iter().zip(&state.past) {
            inputs.push((p.past.as_str(), value));
        }
        let top_k = Tensor::from_array((vec![1usize], vec![top.unwrap_or(1) as i64]))?.into_dyn();
        if self.has_top {
            inputs.push((names::TOP_K, &top_k));
        }
        let vocab = self.model.contract().tgt_vocab_size;
        let (out, present) = {
            let mut outputs = if !self.bind {
                // On CPU, ONNX Runtime allocates the outputs in host memory and takes the
                // previous outputs as inputs without copying them.
                match top {
                    None => self.decoder.run(inputs)?,
                    Some(_) => self.decoder.run_with_options(inputs, &self.top_only)?,
                }
            } else {
                for (name, value) in inputs {
                    self.binding.bind_input(name, value)?;
                }
                self.decoder.run_binding(&self.binding)?
            };
            let missing = |name: &str| Error::GraphOutput {
                graph: contract::DECODER_FILE,
                output: name.to_string(),
                message: "not returned".into(),
            };
            let out = match top {
                None => {
                    let lp =
                        outputs.get(names::LOG_PROBS).ok_or_else(|| missing(names::LOG_PROBS))?;
                    let (shape, values) =
                        lp.try_extract_tensor::<f32>().map_err(|e| Error::GraphOutput {
                            graph: contract::DECODER_FILE,
                            output: names::LOG_PROBS.into(),
                            message: e.to_string(),
                        })?;
                    if **shape != [r as i64, vocab as i64] {
                        return Err(Error::GraphOutput {
                            graph: contract::DECODER_FILE,
                            output: names::LOG_PROBS.into(),
                            message: format!("shape {:?}, expected [{r}, {vocab}]", &**shape),
                        });
                    }
                    StepOut::Full(LogProbs { rows: r, vocab, data: values.to_vec() })
                }
                Some(k) => {
                    let values = top_output::<f32>(&outputs, names::TOP_LOG_PROBS, [r, k])?;
                    let ids = top_output::<i64>(&outputs, names::TOP_IDS, [r, k])?;
                    let ids = ids.iter().map(|&i| i as u32).collect();
                    StepOut::Top(TopLogProbs { rows: r, k, values: values.to_vec(), ids })
                }
            };
            let mut present = Vec::with_capacity(self.names.past.len());
            for p in &self.names.past {
                present
                    .push(outputs.remove(p.present.as_str()).ok_or_else(|| missing(&p.present))?);
            }
            (out, present)
        };
        // Drop the binding's references to the old past; the state owns the new one.
        if self.bind {
            self.binding.clear_inputs();
        }
        let spec = &self.model.contract().state;
        for (p, value) in self.names.past.iter().zip(&present) {
            let grown = if p.in_place.is_some() { state.capacity } else { state.position + 1 };
            let want: Vec<i64> = spec
                .shape_of(&p.decl, r, state.encoded.src_len, grown)
                .into_iter()
                .map(|d| d as i64)
                .collect();
            let found = value_shape(value);
            if found != want {
                return Err(Error::GraphOutput {
                    graph: contract::DECODER_FILE,
                    output: p.present.clone(),
                    message: format!(
                        "shape {found:?}, but state tensor `{}` declares {want:?} ({:?})",
                        p.decl.name, p.decl.shape
                    ),
                });
            }
        }
        for ((p, slot), value) in self.names.past.iter().zip(state.past.iter_mut()).zip(present) {
            // An in-place present is the buffer itself; should ONNX Runtime ever have written
            // elsewhere, the returned tensor holds the values and becomes the buffer.
            if p.in_place.is_none() || !same_data(slot, &value) {
                *slot = value;
            }
        }
        state.past_rows = r;
        state.position += 1;
        Ok(out)
    }
}

impl IncrementalDecoder for OnnxDecoder {
    type Encoded = Encoded;
    type State = DecoderState;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.contract().tgt_vocab_size
    }

    fn special_tokens(&self) -> SpecialTokens {
        self.special
    }

    fn max_target_positions(&self) -> usize {
        self.contract().max_target_positions
    }

    /// For a language model, the positions the prompt leaves: `P - T + 1` for `T` input tokens
    /// (`[eos] + prompt`), so that the search's last step runs at position `P - 1`.
    fn max_target_positions_for(&self, source: &[u32]) -> usize {
        let p = self.contract().max_target_positions;
        if self.lm { lm_positions_left(p, source, self.special.eos) } else { p }
    }

    fn prompt_scores(&self, encoded: &Encoded) -> Option<Vec<(f32, usize)>> {
        let p = encoded.0.prefill.as_ref()?;
        Some(p.prompt_scores.iter().map(|&s| (s, p.len - 1)).collect())
    }

    fn encode(&mut self, sources: &[Vec<u32>]) -> Result<Encoded> {
        let b = sources.len();
        if b == 0 {
            return Err(Error::DecoderState("encode: no source sentences".into()));
        }
        if self.lm {
            return self.prefill(sources);
        }
        let s = sources.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let max = self.contract().max_source_positions;
        if s > max {
            return Err(Error::DecoderState(format!(
                "encode: a source of {s} tokens exceeds max_source_positions {max}"
            )));
        }
        let s = self.model.options().padded_source_len(s, max);
        let pad = i64::from(self.special.pad);
        let mut tokens = vec![pad; b * s];
        for (i, src) in sources.iter().enumerate() {
            for (j, &t) in src.iter().enumerate() {
                tokens[i * s + j] = i64::from(t);
            }
        }
        let input = Tensor::from_array((vec![b, s], tokens))?;
        let outputs = self.encoder.run(ort::inputs![names::SRC_TOKENS => input])?;
        let c = self.model.contract();
        let mut kept = Vec::with_capacity(self.names.encoder.len());
        for (name, t) in &self.names.encoder {
            let value = outputs.get(name.as_str()).ok_or_else(|| Error::GraphOutput {
                graph: contract::ENCODER_FILE,
                output: name.clone(),
                message: "not returned".into(),
            })?;
            let shape = c.state.shape_of(t, b, s, 0);
            kept.push(host_copy(
                value,
                element_type(c.dtype, t.dtype),
                &shape,
                name,
                contract::ENCODER_FILE,
            )?);
        }
        Ok(Encoded(Arc::new(EncodedBatch {
            sentences: b,
            src_len: s,
            outputs: kept,
            prefill: None,
        })))
    }

    fn init_state(&mut self, encoded: &Encoded, rows_per_sentence: usize) -> Result<DecoderState> {
        if rows_per_sentence == 0 {
            return Err(Error::DecoderState("init_state: rows_per_sentence is 0".into()));
        }
        let rows: Vec<usize> = (0..encoded.0.sentences)
            .flat_map(|s| std::iter::repeat_n(s, rows_per_sentence))
            .collect();
        let (past, position, capacity) = match &encoded.0.prefill {
            Some(p) => {
                let capacity =
                    if self.in_place { grown_capacity(p.len + 1).max(INITIAL_CAPACITY) } else { 0 };
                (self.prefilled_past(&encoded.0, &rows, p.len, capacity)?, p.len, capacity)
            }
            None => {
                let capacity = if self.in_place { INITIAL_CAPACITY } else { 0 };
                (self.initial_past(&encoded.0, &rows)?, 0, capacity)
            }
        };
        let mut state = DecoderState {
            encoded: Arc::clone(&encoded.0),
            past_rows: rows.len(),
            rows,
            pending: None,
            past,
            per_sentence_rows: Vec::new(),
            per_sentence: Vec::new(),
            position,
            regathers: 0,
            capacity,
            spare: Vec::new(),
            prefilled: encoded.0.prefill.is_some(),
        };
        self.regather(&mut state)?;
        Ok(state)
    }

    fn step(&mut self, tokens: &[u32], state: &mut DecoderState) -> Result<LogProbs> {
        if let Some(first) = self.take_prefilled(tokens, state)? {
            return Ok(first);
        }
        match self.run_step(tokens, state, None)? {
            StepOut::Full(lp) => Ok(lp),
            StepOut::Top(_) => Err(Error::DecoderState("step: got top-k for a full step".into())),
        }
    }

    fn step_top(
        &mut self,
        tokens: &[u32],
        state: &mut DecoderState,
        k: usize,
    ) -> Result<Option<TopLogProbs>> {
        // The first step after a prefill returns the prefill's log-probabilities in `step`.
        if !self.has_top || k == 0 || k > self.contract().tgt_vocab_size || state.prefilled {
            return Ok(None);
        }
        match self.run_step(tokens, state, Some(k))? {
            StepOut::Top(top) => Ok(Some(top)),
            StepOut::Full(_) => Err(Error::DecoderState("step_top: got a full step".into())),
        }
    }

    fn reorder(&mut self, state: &mut DecoderState, order: &[usize]) -> Result<()> {
        let r = state.rows.len();
        if let Some(&bad) = order.iter().find(|&&i| i >= r) {
            return Err(Error::DecoderState(format!("reorder: row {bad} of {r}")));
        }
        state.pending = Some(match state.pending.take() {
            Some(p) => order.iter().map(|&i| p[i]).collect(),
            None => order.iter().map(|&i| i as i64).collect(),
        });
        state.rows = order.iter().map(|&i| state.rows[i]).collect();
        Ok(())
    }

    fn rows(&self, state: &DecoderState) -> usize {
        state.rows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_place_gather_moves_rows_and_valid_positions_only() {
        // [rows 3, heads 2, capacity 4, dim 2]; element = row·100 + head·10 + position.
        let src = BufferLayout::of(&[3, 2, 4, 2], 2);
        let from: Vec<f32> = (0..src.len())
            .map(|i| {
                let (r, h, p) = (i / 16, i / 8 % 2, i / 2 % 4);
                (r * 100 + h * 10 + p) as f32
            })
            .collect();
        // Two rows (rows 2 and 0, as a prune keeps them), the capacity grown to 6.
        let dst = BufferLayout::of(&[2, 2, 6, 2], 2);
        let mut to = vec![-1f32; dst.len()];
        gather_positions(&from, src, &mut to, dst, &[2, 0], 3);
        for r in 0..2 {
            for h in 0..2 {
                for p in 0..6 {
                    for d in 0..2 {
                        let got = to[((r * 2 + h) * 6 + p) * 2 + d];
                        let want = if p < 3 { ([2, 0][r] * 100 + h * 10 + p) as f32 } else { -1.0 };
                        assert_eq!(got, want, "row {r} head {h} position {p}");
                    }
                }
            }
        }
    }

    #[test]
    fn in_place_permutation_copies_only_moved_rows_and_stages_overwritten_sources() {
        // Every order on 4 rows with a permutation plan: the result equals a gather.
        let l = BufferLayout::of(&[4, 3, 5, 2], 2);
        let base: Vec<u32> = (0..l.len() as u32).collect();
        let mut checked = 0;
        for code in 0..256usize {
            let order: Vec<usize> = (0..4).map(|r| code >> (2 * r) & 3).collect();
            let mut want = base.clone();
            gather_positions(&base, l, &mut want, l, &order, 4);
            let mut got = base.clone();
            permute_positions(&mut got, l, &order, 4);
            assert_eq!(got, want, "order {order:?}");
            checked += 1;
        }
        assert_eq!(checked, 256);
        // [0, 0, 1, 3]: rows 1 and 2 change; row 1 is read by row 2 after being overwritten.
        assert_eq!(permutation_plan(&[0, 0, 1, 3]), (vec![1, 2], vec![1]));
        assert_eq!(permutation_plan(&[0, 1, 2, 3]), (vec![], vec![]));
    }

    #[test]
    fn capacity_grows_by_half_in_multiples_of_16() {
        assert_eq!(grown_capacity(17), 32);
        assert_eq!(grown_capacity(32), 48);
        assert_eq!(grown_capacity(100), 160);
        assert!((1..500).all(|n| grown_capacity(n) >= n && grown_capacity(n).is_multiple_of(16)));
    }
}
