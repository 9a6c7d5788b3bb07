//! Subword tokenization: learning and applying a byte-pair encoding (BPE) with the
//! `tokenizers` crate, stored as a standard `tokenizer.json`.
//!
//! # The pipeline and why it round-trips
//!
//! A [`Bpe`] is a `tokenizers` tokenizer made of:
//! - normalizer: Unicode **NFC** (so "e" + combining acute and "é" become the same pieces);
//! - pre-tokenizer: **ByteLevel** (GPT-2 style regex split, every byte mapped to a visible
//!   character) with `add_prefix_space = false`;
//! - model: BPE, learned here; its initial alphabet is all 256 byte characters, so no input
//!   can ever be unknown (there is no `<unk>` piece);
//! - decoder: **ByteLevel**, which maps the byte characters back to bytes.
//!
//! Byte-level BPE is lossless, so `decode(encode(line)) == line` holds exactly for every line
//! that is already in NFC (for other lines the result is the NFC form of the line): spaces,
//! runs of spaces, tabs, leading/trailing whitespace and any script survive. The prefix space
//! is off because with it on, `"x"` and `" x"` would encode alike and decoding could not tell
//! them apart.
//!
//! Pieces never contain whitespace (a space is written `Ġ`, a tab `ĉ`, a newline `Ċ`), so a
//! line's pieces joined by single spaces is a valid input for fairseq-style preprocessing
//! (`dict.txt` + binarization), and [`Bpe::decode_pieces`] inverts that.
//!
//! The BPE's own ids ([`Bpe::encode_ids`]) index the tokenizer's vocabulary, not a fairseq
//! dictionary; no special tokens are added to the vocabulary (fairseq's dictionary supplies
//! `<s>`, `<pad>`, `</s>`, `<unk>` itself).
//!
//! [`LearnBpeArgs`] + [`run`] are the `learn-bpe` command of `seqforge-train`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{Decoder, Model, Tokenizer};

/// A boxed error from the `tokenizers` crate.
pub type TokenizersError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of this module.
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
    /// A training file is not valid UTF-8.
    #[error("{path}:{line}: not valid UTF-8")]
    InvalidUtf8 {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
    },
    /// Learning the BPE failed.
    #[error("learning BPE on {files}: {source}")]
    Train {
        /// The training files, comma-separated.
        files: String,
        /// The cause.
        #[source]
        source: TokenizersError,
    },
    /// A `tokenizer.json` could not be read or parsed.
    #[error("{path}: cannot load tokenizer: {source}")]
    Load {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: TokenizersError,
    },
    /// The tokenizer could not be serialized.
    #[error("{path}: cannot serialize tokenizer: {source}")]
    Save {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: TokenizersError,
    },
    /// Encoding a line failed.
    #[error("encoding {line:?}: {source}")]
    Encode {
        /// The line (truncated to 80 characters).
        line: String,
        /// The cause.
        #[source]
        source: TokenizersError,
    },
    /// Decoding ids or pieces failed.
    #[error("decoding: {source}")]
    Decode {
        /// The cause.
        #[source]
        source: TokenizersError,
    },
    /// An id outside the vocabulary was given to [`Bpe::decode`].
    #[error("id {id} is outside the BPE vocabulary of size {vocab_size}")]
    UnknownId {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// Invalid arguments (no input files, vocabulary too small, ...).
    #[error("invalid BPE arguments: {0}")]
    InvalidArgument(String),
}

/// This module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A byte-level BPE tokenizer (see the module docs for the pipeline).
#[derive(Debug, Clone)]
pub struct Bpe {
    tokenizer: Tokenizer,
}

/// The number of byte characters every byte-level BPE vocabulary starts with.
pub const BYTE_ALPHABET_SIZE: usize = 256;

fn truncate(line: &str) -> String {
    line.chars().take(80).collect()
}

fn join_paths(files: &[PathBuf]) -> String {
    files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Streams the lines of several files (line endings removed), stopping at the first error,
/// which it leaves in `error`.
struct LineStream {
    files: std::vec::IntoIter<PathBuf>,
    current: Option<(PathBuf, BufReader<File>, usize)>,
    error: Arc<Mutex<Option<Error>>>,
    buf: Vec<u8>,
}

impl LineStream {
    fn new(files: Vec<PathBuf>, error: Arc<Mutex<Option<Error>>>) -> Self {
        Self { files: files.into_iter(), current: None, error, buf: Vec::new() }
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        let mut slot = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(e);
        }
        self.current = None;
        self.files = Vec::new().into_iter();
        None
    }
}

impl Iterator for LineStream {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        loop {
            if self.current.is_none() {
                let path = self.files.next()?;
                match File::open(&path) {
                    Ok(f) => self.current = Some((path, BufReader::new(f), 0)),
                    Err(source) => return self.fail(Error::Io { path, source }),
                }
            }
            let Some((path, reader, line_no)) = self.current.as_mut() else {
                continue;
            };
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.current = None;
                }
                Ok(_) => {
                    *line_no += 1;
                    if self.buf.last() == Some(&b'\n') {
                        self.buf.pop();
                        if self.buf.last() == Some(&b'\r') {
                            self.buf.pop();
                        }
                    }
                    let bytes = std::mem::take(&mut self.buf);
                    match String::from_utf8(bytes) {
                        Ok(s) => return Some(s),
                        Err(_) => {
                            let e = Error::InvalidUtf8 { path: path.clone(), line: *line_no };
                            return self.fail(e);
                        }
                    }
                }
                Err(source) => {
                    let path = path.clone();
                    return self.fail(Error::Io { path, source });
                }
            }
        }
    }
}

impl Bpe {
    /// The untrained pipeline: NFC, ByteLevel (no prefix space), BPE, ByteLevel decoder.
    fn pipeline() -> Tokenizer {
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_normalizer(Some(NormalizerWrapper::from(NFC)));
        tokenizer
            .with_pre_tokenizer(Some(PreTokenizerWrapper::from(ByteLevel::new(false, true, true))));
        tokenizer.with_decoder(Some(DecoderWrapper::from(ByteLevel::new(false, true, true))));
        tokenizer
    }

    /// Learns a BPE of (at most) `vocab_size` pieces jointly over the lines of `files`
    /// (one BPE for several languages when given several languages' files; call it once per
    /// language for separate BPEs). Pairs seen fewer than `min_frequency` times are not
    /// merged. The vocabulary starts with the 256 byte characters, so `vocab_size` must be at
    /// least [`BYTE_ALPHABET_SIZE`]; it can end smaller than asked when the text runs out of
    /// pairs.
    pub fn train(files: &[PathBuf], vocab_size: usize, min_frequency: u64) -> Result<Self> {
        if files.is_empty() {
            return Err(Error::InvalidArgument("no training files".into()));
        }
        if vocab_size < BYTE_ALPHABET_SIZE {
            return Err(Error::InvalidArgument(format!(
                "vocabulary size {vocab_size} is below the {BYTE_ALPHABET_SIZE} byte characters \
                 of a byte-level BPE"
            )));
        }
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .initial_alphabet(alphabet)
            .build();
        let mut trainer = TrainerWrapper::from(trainer);
        let mut tokenizer = Self::pipeline();
        let error = Arc::new(Mutex::new(None));
        let lines = LineStream::new(files.to_vec(), Arc::clone(&error));
        let trained = tokenizer.train(&mut trainer, lines).map(|_| ());
        if let Some(e) = error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(e);
        }
        trained.map_err(|source| Error::Train { files: join_paths(files), source })?;
        Ok(Self { tokenizer })
    }

    /// Wraps an existing `tokenizers` tokenizer. Round-trip exactness is only guaranteed for
    /// the pipeline [`Bpe::train`] builds.
    pub fn from_tokenizer(tokenizer: Tokenizer) -> Self {
        Self { tokenizer }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Loads a `tokenizer.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let tokenizer: Tokenizer =
            text.parse().map_err(|source| Error::Load { path: path.to_path_buf(), source })?;
        Ok(Self { tokenizer })
    }

    /// Saves as a `tokenizer.json` (pretty-printed) atomically: written to a temporary file in
    /// the same directory, synced, then renamed over `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|source| Error::Save { path: path.to_path_buf(), source })?;
        let file_name =
            path.file_name().map(|n| n.to_string_lossy().into_owned()).ok_or_else(|| {
                Error::InvalidArgument(format!("{}: not a file path", path.display()))
            })?;
        let tmp = path.with_file_name(format!(".{file_name}.tmp.{}", std::process::id()));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| Error::Io { path: p, source }
        };
        let write = || -> Result<()> {
            let mut f = File::create(&tmp).map_err(io(&tmp))?;
            f.write_all(json.as_bytes()).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, path).map_err(io(path))
        };
        let result = write();
        if result.is_err() {
            // Best effort: the temporary file is garbage now.
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The vocabulary size (number of pieces). Costs O(vocabulary): `tokenizers` builds the
    /// vocabulary map to count it.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// The id of a piece, if it is in the vocabulary.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.tokenizer.token_to_id(piece)
    }

    /// The piece of an id, if it is in the vocabulary.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    /// Encodes with piece strings (`fast`: ids only, no piece strings, no offsets).
    fn encoding(&self, line: &str, fast: bool) -> Result<tokenizers::Encoding> {
        let encoding = if fast {
            self.tokenizer.encode_fast(line, false)
        } else {
            self.tokenizer.encode(line, false)
        };
        encoding.map_err(|source| Error::Encode { line: truncate(line), source })
    }

    /// Encodes a line into pieces (none contains whitespace).
    pub fn encode_pieces(&self, line: &str) -> Result<Vec<String>> {
        Ok(self.encoding(line, false)?.get_tokens().to_vec())
    }

    /// Encodes a line into vocabulary ids.
    pub fn encode_ids(&self, line: &str) -> Result<Vec<u32>> {
        Ok(self.encoding(line, true)?.get_ids().to_vec())
    }

    /// Encodes a line into pieces joined by single spaces: the form fairseq-style
    /// preprocessing reads.
    pub fn encode_line(&self, line: &str) -> Result<String> {
        Ok(self.encode_pieces(line)?.join(" "))
    }

    /// Decodes vocabulary ids back into text. An id outside the vocabulary is an error
    /// (`tokenizers` itself would silently drop it).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut pieces = Vec::with_capacity(ids.len());
        for &id in ids {
            // The vocabulary size only on error: computing it builds the whole vocabulary.
            let piece = self
                .tokenizer
                .id_to_token(id)
                .ok_or_else(|| Error::UnknownId { id, vocab_size: self.vocab_size() })?;
            pieces.push(piece);
        }
        self.decode_owned_pieces(pieces)
    }

    /// Decodes pieces back into text (pieces need not be in the vocabulary, but must be
    /// byte-level characters).
    pub fn decode_pieces(&self, pieces: &[String]) -> Result<String> {
        self.decode_owned_pieces(pieces.to_vec())
    }

    /// Decodes a line of space-separated pieces (the inverse of [`Bpe::encode_line`]).
    pub fn decode_line(&self, line: &str) -> Result<String> {
        self.decode_owned_pieces(line.split_whitespace().map(str::to_owned).collect())
    }

    fn decode_owned_pieces(&self, pieces: Vec<String>) -> Result<String> {
        match self.tokenizer.get_decoder() {
            Some(decoder) => decoder.decode(pieces).map_err(|source| Error::Decode { source }),
            None => Ok(pieces.join(" ")),
        }
    }

    /// The model's vocabulary size as the BPE model reports it (without added tokens).
    pub fn model_vocab_size(&self) -> usize {
        self.tokenizer.get_model().get_vocab_size()
    }
}

/// Arguments of `seqforge-train learn-bpe`: learn a byte-level BPE and save `tokenizer.json`.
#[derive(Debug, Clone, clap::Args)]
pub struct LearnBpeArgs {
    /// Training text files, one sentence per line; several files give one joint BPE.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// Target vocabulary size (at least 256: the byte alphabet).
    #[arg(long, default_value_t = 8000)]
    pub vocab_size: usize,
    /// Minimum count of a pair to be merged.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Where to write the tokenizer.
    #[arg(long, default_value = "tokenizer.json")]
    pub out: PathBuf,
    /// After training, check that every input line decodes back to itself (NFC).
    #[arg(long)]
    pub check_round_trip: bool,
}

/// What [`run`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LearnBpeReport {
    /// The file written.
    pub out: PathBuf,
    /// The learned vocabulary size.
    pub vocab_size: usize,
    /// Lines checked for round trip (0 unless asked for).
    pub lines_checked: usize,
    /// Pieces over the checked lines.
    pub pieces: usize,
}

/// Runs `learn-bpe`: trains, optionally checks the round trip on the inputs, saves.
pub fn run(args: &LearnBpeArgs) -> Result<LearnBpeReport> {
    let bpe = Bpe::train(&args.input, args.vocab_size, args.min_frequency)?;
    let mut lines_checked = 0;
    let mut pieces = 0;
    if args.check_round_trip {
        use unicode_normalization::UnicodeNormalization;
        let error = Arc::new(Mutex::new(None));
        let lines = LineStream::new(args.input.clone(), Arc::clone(&error));
        for line in lines {
            let ids = bpe.encode_ids(&line)?;
            pieces += ids.len();
            let back = bpe.decode(&ids)?;
            let nfc: String = line.nfc().collect();
            if back != nfc {
                return Err(Error::InvalidArgument(format!(
                    "round trip failed on line {}: {:?} decoded as {:?}",
                    lines_checked + 1,
                    truncate(&line),
                    truncate(&back)
                )));
            }
            lines_checked += 1;
        }
        if let Some(e) = error.lock().unwrap_or_else(PoisonError::into_inner).take() {
            return Err(e);
        }
    }
    bpe.save(&args.out)?;
    Ok(LearnBpeReport {
        out: args.out.clone(),
        vocab_size: bpe.vocab_size(),
        lines_checked,
        pieces,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use unicode_normalization::UnicodeNormalization;

    /// A few hundred varied lines: license texts found on the machine plus generated
    /// multilingual lines with awkward whitespace.
    fn sample_lines() -> Vec<String> {
        let mut lines = Vec::new();
        for name in ["GPL-3", "Apache-2.0", "Artistic", "MPL-2.0"] {
            if let Ok(t) =
                std::fs::read_to_string(Path::new("/usr/share/common-licenses").join(name))
            {
                lines.extend(t.lines().take(300).map(str::to_owned));
            }
        }
        let words = [
            "the",
            "beginning",
            "God",
            "created",
            "heaven",
            "earth",
            "Dios",
            "creó",
            "cielos",
            "tierra",
            "niño",
            "año",
            "Ärger",
            "über",
            "naïve",
            "façade",
            "日本語",
            "Привет",
            "ελληνικά",
            "emoji🙂",
            "tab\there",
            "x",
            "'quoted'",
            "\"double\"",
            "—",
            "...",
            "3.14",
            "$100",
        ];
        let mut state: u64 = 12345;
        for i in 0..300 {
            let mut line = String::new();
            let n = 3 + i % 17;
            for j in 0..n {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let w = words[(state >> 33) as usize % words.len()];
                if j > 0 {
                    line.push_str(if (state >> 20).is_multiple_of(13) { "  " } else { " " });
                }
                line.push_str(w);
            }
            if i % 10 == 0 {
                line.insert(0, ' ');
            }
            if i % 15 == 0 {
                line.push(' ');
            }
            lines.push(line);
        }
        lines.push(String::new());
        lines.push("   ".into());
        lines.push("e\u{301} decomposed".into()); // not NFC: round trips to its NFC form
        lines
    }

    fn write_lines(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    }

    fn check_round_trip(bpe: &Bpe, line: &str) {
        let nfc: String = line.nfc().collect();
        let ids = bpe.encode_ids(line).unwrap();
        assert_eq!(bpe.decode(&ids).unwrap(), nfc, "ids of {line:?}");
        let pieces = bpe.encode_pieces(line).unwrap();
        let piece_ids: Vec<u32> = pieces.iter().map(|p| bpe.piece_to_id(p).unwrap()).collect();
        assert_eq!(piece_ids, ids, "pieces and ids of {line:?} agree");
        for p in &pieces {
            assert!(!p.is_empty() && !p.chars().any(char::is_whitespace), "piece {p:?}");
        }
        assert_eq!(bpe.decode_pieces(&pieces).unwrap(), nfc, "pieces of {line:?}");
        let joined = bpe.encode_line(line).unwrap();
        assert_eq!(bpe.decode_line(&joined).unwrap(), nfc, "line of {line:?}");
    }

    #[test]
    fn train_save_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let lines = sample_lines();
        let (a, b) = lines.split_at(lines.len() / 2);
        let files = vec![write_lines(dir.path(), "a.txt", a), write_lines(dir.path(), "b.txt", b)];
        let bpe = Bpe::train(&files, 600, 2).unwrap();
        assert!(bpe.vocab_size() > BYTE_ALPHABET_SIZE && bpe.vocab_size() <= 600);
        for line in &lines {
            check_round_trip(&bpe, line);
        }
        // Merges happened: common words are single pieces.
        assert_eq!(bpe.encode_pieces("the").unwrap().len(), 1);
        let out = dir.path().join("tokenizer.json");
        bpe.save(&out).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let loaded = Bpe::load(&out).unwrap();
        assert_eq!(loaded.vocab_size(), bpe.vocab_size());
        for line in &lines {
            assert_eq!(loaded.encode_ids(line).unwrap(), bpe.encode_ids(line).unwrap());
            check_round_trip(&loaded, line);
        }
        // Text never seen in training still round-trips (byte fallback).
        check_round_trip(&loaded, "Zürich 東京 \u{10FFFF} \r\n mixed\u{0}nul");
    }

    #[test]
    fn training_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![write_lines(dir.path(), "a.txt", &sample_lines())];
        let a = Bpe::train(&files, 500, 2).unwrap();
        let b = Bpe::train(&files, 500, 2).unwrap();
        assert_eq!(
            a.tokenizer().to_string(false).unwrap(),
            b.tokenizer().to_string(false).unwrap()
        );
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.txt");
        let err = Bpe::train(std::slice::from_ref(&missing), 300, 2).unwrap_err();
        assert!(err.to_string().contains("missing.txt"), "{err}");

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"fine\nnot \xff utf8\n").unwrap();
        let err = Bpe::train(std::slice::from_ref(&bad), 300, 2).unwrap_err();
        assert!(matches!(err, Error::InvalidUtf8 { line: 2, .. }), "{err}");
        assert!(err.to_string().contains("bad.txt:2"), "{err}");

        let err = Bpe::load(&missing).unwrap_err();
        assert!(err.to_string().contains("missing.txt"), "{err}");
        let junk = dir.path().join("junk.json");
        std::fs::write(&junk, "{not json").unwrap();
        let err = Bpe::load(&junk).unwrap_err();
        assert!(matches!(err, Error::Load { .. }) && err.to_string().contains("junk.json"));

        let ok = write_lines(dir.path(), "ok.txt", &sample_lines());
        assert!(matches!(Bpe::train(&[ok], 100, 2), Err(Error::InvalidArgument(_))));
        assert!(matches!(Bpe::train(&[], 1000, 2), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn decode_rejects_unknown_ids() {
        let dir = tempfile::tempdir().unwrap();
        let files = vec![write_lines(dir.path(), "a.txt", &sample_lines())];
        let bpe = Bpe::train(&files, 400, 2).unwrap();
        let err = bpe.decode(&[u32::MAX]).unwrap_err();
        assert!(matches!(err, Error::UnknownId { .. }), "{err}");
    }

    #[test]
    fn learn_bpe_command() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: LearnBpeArgs,
        }
        let dir = tempfile::tempdir().unwrap();
        let input = write_lines(dir.path(), "train.txt", &sample_lines());
        let out = dir.path().join("tok.json");
        let cli = Cli::try_parse_from([
            "learn-bpe".as_ref(),
            "--input".as_ref(),
            input.as_os_str(),
            "--vocab-size".as_ref(),
            "500".as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
            "--check-round-trip".as_ref(),
        ])
        .unwrap();
        let report = run(&cli.args).unwrap();
        assert_eq!(report.out, out);
        assert!(report.lines_checked >= 300);
        assert!(Bpe::load(&out).is_ok());
    }
}
