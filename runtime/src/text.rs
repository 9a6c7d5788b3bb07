//! Raw text ↔ model ids, exactly as the trainer's `preprocess` made the training data.
//!
//! Source side ([`TextPipeline::encode_line`]): a raw line goes through the model's
//! `tokenizer.json` when it has one (the HuggingFace `tokenizers` crate with the trainer's
//! features; the tokenizer's own normalizer applies, NFC for seqforge's byte-level BPE, so
//! nothing is normalized twice), and each token string is split on Python whitespace, as
//! `preprocess --tokenizer` does; without a tokenizer the line's whitespace-separated words are
//! the symbols (fairseq's `tokenize_line`). Symbols map to source-dictionary ids (unknown →
//! `<unk>`), then EOS is appended.
//!
//! Target side: hypothesis ids → target-dictionary symbols (EOS and BOS left out, as fairseq's
//! `string()` does) → [`TextPipeline::hypothesis_symbols`] (fairseq's `H-` text, symbols joined
//! by spaces) and [`TextPipeline::detokenize`] (the `D-` text: the tokenizer's decoder, e.g.
//! byte-level BPE back to UTF-8; symbols joined by spaces without a tokenizer).
//!
//! Policies:
//! - lines end at `\n`, `\r\n` or a lone `\r` ([`split_lines`]), as the trainer reads corpora;
//! - a line without symbols (an empty line; a whitespace-only line when the model has no
//!   tokenizer, since byte-level BPE keeps spaces as symbols, as `preprocess` did) is translated
//!   to the empty string without running the model ([`SourceLine::is_empty`]);
//! - a line that is not UTF-8 (or holds a NUL byte) is [`Error::InvalidUtf8`] with its line
//!   number; callers may skip it instead (`--skip-invalid`);
//! - a line longer than `max_source_positions` tokens (EOS included) is
//!   [`Error::SourceTooLong`] with its line number, or is cut to `max_source_positions - 1`
//!   symbols plus EOS with [`Overlong::Truncate`] (fairseq's `--truncate-source`).

use std::path::{Path, PathBuf};

use seqforge_schemas::contract::{SpecialIds, Vocabulary};
use tokenizers::Decoder;

use crate::{Error, Result};

/// Whether `c` is whitespace for Python's `str.split()` (what fairseq and the trainer split on).
pub fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// The non-empty pieces of `line` between runs of Python whitespace.
pub fn symbols(line: &str) -> impl Iterator<Item = &str> {
    line.split(is_py_whitespace).filter(|s| !s.is_empty())
}

/// Splits raw bytes into lines at `\n`, `\r\n` or a lone `\r`; a final line terminator does not
/// start another line.
pub fn split_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                out.push(&rest[..i]);
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
                rest = &rest[i + skip..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out
}

/// A line as UTF-8 text, or `None` when it is not valid UTF-8 or holds a NUL byte.
pub fn check_line(raw: &[u8]) -> Option<&str> {
    if raw.contains(&0) {
        return None;
    }
    std::str::from_utf8(raw).ok()
}

/// What to do with a source longer than the model takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlong {
    /// Fail with [`Error::SourceTooLong`].
    #[default]
    Error,
    /// Keep the first `max_source_positions - 1` symbols and EOS (`--truncate-source`); a
    /// language model's prompt keeps its *last* symbols instead (what it continues).
    Truncate,
}

/// One encoded source line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLine {
    /// Source-dictionary ids, ending with EOS.
    pub ids: Vec<u32>,
    /// Whether the line was cut to the model's maximum source length.
    pub truncated: bool,
    /// Symbols mapped to `<unk>` (a literal `<unk>` not counted).
    pub unknown: usize,
}

impl SourceLine {
    /// Whether the line has no symbols (only EOS): it is translated to the empty string
    /// without running the model.
    pub fn is_empty(&self) -> bool {
        self.ids.len() <= 1
    }
}

/// Text ↔ ids for one model (see the module documentation).
#[derive(Debug, Clone)]
pub struct TextPipeline {
    src: Vocabulary,
    tgt: Vocabulary,
    tokenizer: Option<(PathBuf, tokenizers::Tokenizer)>,
    special: SpecialIds,
    max_source_positions: usize,
    /// Whether truncation keeps a line's end (language-model prompts).
    keep_end: bool,
}

/// Reads `tokenizer.json`. The file is parsed as JSON first and handed to `tokenizers` as a
/// value: `tokenizers` 0.22 panics (`expect("Helper")` in its decoder deserializer) on some
/// syntactically broken `decoder` fields instead of returning an error (found by `cargo xtask
/// fuzz`, target `tokenizer`); from a valid JSON value that path cannot fail.
fn read_tokenizer(path: &Path) -> std::result::Result<tokenizers::Tokenizer, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    serde_json::from_value(value).map_err(|e| e.to_string())
}

impl TextPipeline {
    /// A pipeline over the two dictionaries and, when the model has one, its `tokenizer.json`.
    pub fn new(
        src: Vocabulary,
        tgt: Vocabulary,
        tokenizer: Option<&Path>,
        special: SpecialIds,
        max_source_positions: usize,
    ) -> Result<Self> {
        let tokenizer = match tokenizer {
            None => None,
            Some(path) => {
                let err = |message: String| Error::Tokenizer { path: path.to_path_buf(), message };
                let mut tok = read_tokenizer(path).map_err(err)?;
                tok.with_truncation(None).map_err(|e| err(e.to_string()))?;
                tok.with_padding(None);
                Some((path.to_path_buf(), tok))
            }
        };
        Ok(Self { src, tgt, tokenizer, special, max_source_positions, keep_end: false })
    }

    /// This pipeline for a language model's prompts: [`Overlong::Truncate`] keeps a prompt's
    /// last symbols.
    pub fn for_prompts(mut self) -> Self {
        self.keep_end = true;
        self
    }

    /// The source symbols of a line (before the dictionary).
    pub fn symbols(&self, line: &str) -> Result<Vec<String>> {
        match &self.tokenizer {
            None => Ok(symbols(line).map(str::to_owned).collect()),
            Some((path, tok)) => {
                let enc = tok
                    .encode(line, false)
                    .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() })?;
                let mut out = Vec::with_capacity(enc.get_tokens().len());
                for t in enc.get_tokens() {
                    out.extend(symbols(t).map(str::to_owned));
                }
                Ok(out)
            }
        }
    }

    /// The source-dictionary ids of a line's symbols, without EOS and without a length limit,
    /// with how many symbols were unknown (a literal `<unk>` not counted).
    pub fn encode_ids(&self, line: &str) -> Result<(Vec<u32>, usize)> {
        let syms = self.symbols(line)?;
        let mut ids = Vec::with_capacity(syms.len() + 1);
        let mut unknown = 0;
        for s in &syms {
            match self.src.id(s) {
                Some(id) => ids.push(id),
                None => {
                    ids.push(self.special.unk);
                    unknown += 1;
                }
            }
        }
        Ok((ids, unknown))
    }

    /// Encodes line `line_no` (1-based) of `input` (a name for errors).
    pub fn encode_line(
        &self,
        line: &str,
        input: &str,
        line_no: usize,
        overlong: Overlong,
    ) -> Result<SourceLine> {
        let (mut ids, unknown) = self.encode_ids(line)?;
        let mut truncated = false;
        if ids.len() + 1 > self.max_source_positions {
            match overlong {
                Overlong::Error => {
                    return Err(Error::SourceTooLong {
                        input: input.to_string(),
                        line: line_no,
                        tokens: ids.len() + 1,
                        max: self.max_source_positions,
                    });
                }
                Overlong::Truncate => {
                    let keep = self.max_source_positions.saturating_sub(1);
                    if self.keep_end {
                        ids.drain(..ids.len() - keep);
                    } else {
                        ids.truncate(keep);
                    }
                    truncated = true;
                }
            }
        }
        ids.push(self.special.eos);
        Ok(SourceLine { ids, truncated, unknown })
    }

    /// Encodes a target-side line (e.g. a reference) into target-dictionary ids, without EOS
    /// (what fairseq's `--prefix-size` forces).
    pub fn encode_target(&self, line: &str) -> Result<Vec<u32>> {
        Ok(self.symbols(line)?.iter().map(|s| self.tgt.id(s).unwrap_or(self.special.unk)).collect())
    }

    fn strip<'a>(&self, vocab: &'a Vocabulary, ids: &'a [u32]) -> impl Iterator<Item = &'a str> {
        let (eos, bos) = (self.special.eos, self.special.bos);
        ids.iter()
            .filter(move |&&id| id != eos && id != bos)
            .map(|&id| vocab.symbol(id).unwrap_or("<unk>"))
    }

    /// Target ids as dictionary symbols joined by spaces (fairseq's `H-` text).
    pub fn hypothesis_symbols(&self, ids: &[u32]) -> String {
        self.strip(&self.tgt, ids).collect::<Vec<_>>().join(" ")
    }

    /// Source ids as dictionary symbols joined by spaces.
    pub fn source_symbols(&self, ids: &[u32]) -> String {
        self.strip(&self.src, ids).collect::<Vec<_>>().join(" ")
    }

    /// Target ids as text (fairseq's `D-` text): the tokenizer's decoder over the symbols, or
    /// the symbols joined by spaces without a tokenizer.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        let pieces: Vec<String> = self.strip(&self.tgt, ids).map(str::to_owned).collect();
        self.decode_pieces(pieces)
    }

    /// Source ids as text (what the model saw, `<unk>` included: fairseq's `S-` text).
    pub fn source_text(&self, ids: &[u32]) -> Result<String> {
        let pieces: Vec<String> = self.strip(&self.src, ids).map(str::to_owned).collect();
        self.decode_pieces(pieces)
    }

    fn decode_pieces(&self, pieces: Vec<String>) -> Result<String> {
        match &self.tokenizer {
            Some((path, tok)) => match tok.get_decoder() {
                Some(decoder) => decoder
                    .decode(pieces)
                    .map_err(|e| Error::Tokenizer { path: path.clone(), message: e.to_string() }),
                None => Ok(pieces.join(" ")),
            },
            None => Ok(pieces.join(" ")),
        }
    }

    /// The model's maximum source length in tokens (EOS included).
    pub fn max_source_positions(&self) -> usize {
        self.max_source_positions
    }

    /// Whether the model has a tokenizer.
    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broken_tokenizer_json_is_an_error_not_a_panic() -> std::result::Result<(), String> {
        // The shape of the inputs `cargo xtask fuzz` found (fuzz/regressions/tokenizer/).
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("tokenizer.json");
        std::fs::write(
            &path,
            b"{\n  \"decoder\": {\n    \"add_prefix\"decoder_cp   \"F\": 3ns\": {],\n\"",
        )
        .map_err(|e| e.to_string())?;
        let e = read_tokenizer(&path).err().ok_or("accepted")?;
        assert!(e.contains("not valid JSON"), "{e}");
        Ok(())
    }

    fn vocab(words: &[&str]) -> Vocabulary {
        let mut text = String::new();
        for w in words {
            text.push_str(&format!("{w} 1\n"));
        }
        Vocabulary::parse(Path::new("dict.txt"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pipeline(max: usize) -> TextPipeline {
        let v = vocab(&["hello", "world", "."]);
        TextPipeline::new(v.clone(), v, None, SpecialIds::default(), max)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn lines_split_like_the_trainer() {
        assert_eq!(split_lines(b"a\nb\r\nc\rd\n"), vec![&b"a"[..], b"b", b"c", b"d"]);
        assert_eq!(split_lines(b"a\n\nb"), vec![&b"a"[..], b"", b"b"]);
        assert!(split_lines(b"").is_empty());
        assert_eq!(check_line(b"ok"), Some("ok"));
        assert_eq!(check_line(b"\xff"), None);
        assert_eq!(check_line(b"a\0b"), None);
    }

    #[test]
    fn whitespace_is_pythons() {
        let syms: Vec<&str> = symbols(" a\x1fb\u{a0}c\t").collect();
        assert_eq!(syms, ["a", "b", "c"]);
    }

    #[test]
    fn words_map_to_ids_with_unk_and_eos() -> Result<()> {
        let p = pipeline(10);
        let line = p.encode_line("hello  new world", "in", 1, Overlong::Error)?;
        assert_eq!(line.ids, vec![4, 3, 5, 2]);
        assert_eq!(line.unknown, 1);
        assert!(p.encode_line("  ", "in", 2, Overlong::Error)?.is_empty());
        assert_eq!(p.hypothesis_symbols(&[4, 6, 2]), "hello .");
        assert_eq!(p.detokenize(&[5, 3, 2])?, "world <unk>");
        Ok(())
    }

    #[test]
    fn overlong_lines_error_or_truncate() -> Result<()> {
        let p = pipeline(3);
        let Err(e) = p.encode_line("hello world hello", "in.txt", 7, Overlong::Error) else {
            panic!("an over-long line was accepted")
        };
        let text = e.to_string();
        assert!(text.contains("in.txt:7") && text.contains("4 source tokens"), "{text}");
        let cut = p.encode_line("hello world hello", "in.txt", 7, Overlong::Truncate)?;
        assert_eq!(cut.ids, vec![4, 5, 2]);
        assert!(cut.truncated);
        // Exactly at the limit is fine.
        assert!(!p.encode_line("hello world", "in.txt", 1, Overlong::Error)?.truncated);
        Ok(())
    }

    #[test]
    fn a_missing_tokenizer_names_the_file() {
        let v = vocab(&["a"]);
        let Err(e) = TextPipeline::new(
            v.clone(),
            v,
            Some(Path::new("/nonexistent/tokenizer.json")),
            SpecialIds::default(),
            8,
        ) else {
            panic!("a missing tokenizer was accepted")
        };
        assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
