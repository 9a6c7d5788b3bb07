//! fairseq's vocabulary: `dict.txt` reading and writing, building from counts.
//!
//! The format (fairseq 0.12.2, `fairseq/data/dictionary.py`): one `<symbol> <count>` per line,
//! the count after the *last* space, optionally followed by ` #fairseq:overwrite`, which lets a
//! line redefine a symbol seen earlier. The four specials are implicit and come first:
//! `<s>` = 0, `<pad>` = 1, `</s>` = 2, `<unk>` = 3; file line `k` (1-based) is id `3 + k`.
//!
//! Building from counts follows `Dictionary.finalize`: the non-special symbols are sorted by
//! count, descending, ties in ascending code point order of the symbol; at most
//! `nwords - 4` of them are kept (all when `nwords <= 0`), stopping at the first whose count is
//! below `threshold`; then the size is padded to a multiple of `padding_factor` with
//! `madeupword0000`, `madeupword0001`, … (count 0).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::Path;

use super::text::{self, is_py_whitespace};
use super::{Error, Result, io_err, write_atomic};

/// Id of the beginning-of-sentence symbol `<s>`.
pub const BOS: u32 = 0;
/// Id of the padding symbol `<pad>`.
pub const PAD: u32 = 1;
/// Id of the end-of-sentence symbol `</s>`.
pub const EOS: u32 = 2;
/// Id of the unknown-word symbol `<unk>`.
pub const UNK: u32 = 3;
/// The special symbols, in id order.
pub const SPECIALS: [&str; 4] = ["<s>", "<pad>", "</s>", "<unk>"];
/// The flag that lets a `dict.txt` line redefine an earlier symbol.
pub const OVERWRITE_FLAG: &str = "#fairseq:overwrite";

/// FxHash (as in rustc), the hasher of [`SymbolCounts`]: symbol lookups are the hot loop of binarization, and the input is
/// the user's own corpus, so a fast non-keyed hash is appropriate.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_u8(&mut self, i: u8) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ u64::from(i)).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A `HashMap` with [`FxHasher`].
pub type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Symbol counts gathered from a corpus, the input of [`Dictionary::add_counts`]. Count one
/// `</s>` per line, as fairseq does.
pub type SymbolCounts = HashMap<String, u64, BuildHasherDefault<FxHasher>>;

/// A fairseq vocabulary: symbols with ids and counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Dictionary {
    symbols: Vec<String>,
    counts: Vec<i64>,
    indices: FxMap<String, u32>,
    nspecial: usize,
}

impl Default for Dictionary {
    fn default() -> Self {
        Self::new()
    }
}

impl Dictionary {
    /// A dictionary holding only the four specials.
    pub fn new() -> Self {
        let mut d = Self {
            symbols: Vec::new(),
            counts: Vec::new(),
            indices: FxMap::default(),
            nspecial: 0,
        };
        for s in SPECIALS {
            d.add_symbol(s, 1, false);
        }
        d.nspecial = d.symbols.len();
        d
    }

    /// Reads a `dict.txt` (fairseq's `Dictionary.load`).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(io_err(path))?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads `dict.txt` bytes (UTF-8 checked, as [`Self::load`] does); `path` only names the
    /// source in errors.
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::str::from_utf8(bytes).map_err(|e| Error::InvalidUtf8 {
            path: path.to_path_buf(),
            line: text::line_number_at(bytes, e.valid_up_to()),
        })?;
        let mut d = Self::new();
        d.add_from_str(text, path)?;
        Ok(d)
    }

    /// Parses `dict.txt` content; `path` only names the source in errors.
    pub fn parse(text: &str, path: impl AsRef<Path>) -> Result<Self> {
        let mut d = Self::new();
        d.add_from_str(text, path.as_ref())?;
        Ok(d)
    }

    /// Adds the entries of `dict.txt` content to this dictionary (fairseq's `add_from_file`).
    pub fn add_from_str(&mut self, text: &str, path: &Path) -> Result<()> {
        for (i, raw) in text::lines(text.as_bytes()).enumerate() {
            let lineno = i as u64 + 1;
            let format_err =
                |message: String| Error::Format { path: path.to_path_buf(), line: lineno, message };
            // Lines split at ASCII bytes of a valid str, so they are valid str too.
            let line = std::str::from_utf8(raw).map_err(|_| format_err("invalid UTF-8".into()))?;
            let expected = || format!("expected '<token> <count> [flags]', got {line:?}");
            let trimmed = line.trim_end_matches(is_py_whitespace);
            let (mut word, mut field) =
                trimmed.rsplit_once(' ').ok_or_else(|| format_err(expected()))?;
            let overwrite = field == OVERWRITE_FLAG;
            if overwrite {
                (word, field) = word.rsplit_once(' ').ok_or_else(|| format_err(expected()))?;
            }
            let count = parse_py_int(field).ok_or_else(|| format_err(expected()))?;
            if !overwrite && self.indices.contains_key(word) {
                return Err(Error::DuplicateSymbol {
                    path: path.to_path_buf(),
                    line: lineno,
                    symbol: word.to_string(),
                });
            }
            self.add_symbol(word, count, overwrite);
        }
        Ok(())
    }

    /// The `dict.txt` text of this dictionary (fairseq's `save`): the non-special symbols with
    /// their counts. A symbol that occurs a second time (possible only after loading a file
    /// with `#fairseq:overwrite`) is written with that flag, so the output loads again.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut seen: FxMap<&str, ()> = SPECIALS.iter().map(|s| (*s, ())).collect();
        for (sym, count) in self.symbols.iter().zip(&self.counts).skip(self.nspecial) {
            out.push_str(sym);
            out.push(' ');
            out.push_str(&count.to_string());
            if seen.insert(sym, ()).is_some() {
                out.push(' ');
                out.push_str(OVERWRITE_FLAG);
            }
            out.push('\n');
        }
        out
    }

    /// Writes [`Self::to_text`] to `path` atomically (temporary file + rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), self.to_text().as_bytes())
    }

    /// Adds `n` occurrences of `word` and returns its id (fairseq's `add_symbol`): an existing
    /// symbol's count grows, unless `overwrite`, which appends a new entry that takes over the
    /// symbol's lookup.
    pub fn add_symbol(&mut self, word: &str, n: i64, overwrite: bool) -> u32 {
        if !overwrite && let Some(&idx) = self.indices.get(word) {
            self.counts[idx as usize] += n;
            return idx;
        }
        let idx = self.symbols.len() as u32;
        self.indices.insert(word.to_string(), idx);
        self.symbols.push(word.to_string());
        self.counts.push(n);
        idx
    }

    /// Adds corpus counts the way fairseq merges a worker's `Counter`: symbols in ascending
    /// order, each with [`Self::add_symbol`]. Follow with [`Self::finalize`].
    pub fn add_counts(&mut self, counts: &SymbolCounts) {
        let mut items: Vec<(&String, &u64)> = counts.iter().collect();
        items.sort_unstable();
        for (word, &n) in items {
            self.add_symbol(word, i64::try_from(n).unwrap_or(i64::MAX), false);
        }
    }

    /// Sorts the non-special symbols by count (fairseq's `finalize`); see the module doc.
    /// `threshold`: minimum count; `nwords`: total size including the specials (`<= 0`: all);
    /// `padding_factor`: pad the size to a multiple of this (`<= 1`: no padding).
    pub fn finalize(&mut self, threshold: i64, nwords: i64, padding_factor: usize) {
        let nwords = if nwords <= 0 { self.len() as i64 } else { nwords };
        let mut rest: Vec<(String, i64)> =
            self.symbols.drain(self.nspecial..).zip(self.counts.drain(self.nspecial..)).collect();
        // Python: Counter(dict(sorted(zip(symbols, counts)))): sorted by (symbol, count), and
        // for a repeated symbol the last (largest) count wins.
        rest.sort();
        rest.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                earlier.1 = later.1;
                true
            } else {
                false
            }
        });
        // Counter.most_common(n) == sorted(items, key=count, reverse=True)[:n] (stable).
        rest.sort_by_key(|a| std::cmp::Reverse(a.1));
        let keep = usize::try_from(nwords - self.nspecial as i64).unwrap_or(0);
        self.indices.clear();
        for (i, s) in self.symbols.iter().enumerate() {
            self.indices.insert(s.clone(), i as u32);
        }
        for (sym, count) in rest.into_iter().take(keep) {
            if count < threshold {
                break;
            }
            self.indices.insert(sym.clone(), self.symbols.len() as u32);
            self.symbols.push(sym);
            self.counts.push(count);
        }
        self.pad_to_multiple(padding_factor);
    }

    /// Pads the size to a multiple of `padding_factor` with `madeupword{i:04}` (count 0).
    pub fn pad_to_multiple(&mut self, padding_factor: usize) {
        if padding_factor > 1 {
            let mut i = 0;
            while !self.len().is_multiple_of(padding_factor) {
                self.add_symbol(&format!("madeupword{i:04}"), 0, false);
                i += 1;
            }
        }
    }

    /// Number of entries, specials included.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether there are no entries (never true: the specials are always there).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Number of special symbols at the start (4).
    pub fn nspecial(&self) -> usize {
        self.nspecial
    }

    /// The id of `sym`, or [`UNK`] if it is not in the dictionary.
    pub fn index(&self, sym: &str) -> u32 {
        self.get(sym).unwrap_or(UNK)
    }

    /// The id of `sym`, if present.
    pub fn get(&self, sym: &str) -> Option<u32> {
        self.indices.get(sym).copied()
    }

    /// Whether `sym` is in the dictionary.
    pub fn contains(&self, sym: &str) -> bool {
        self.indices.contains_key(sym)
    }

    /// The symbol of `id`; `<unk>` for an id past the end (like fairseq's `__getitem__`).
    pub fn symbol(&self, id: u32) -> &str {
        self.symbols.get(id as usize).map_or(SPECIALS[UNK as usize], String::as_str)
    }

    /// The count of `id`, if in range.
    pub fn count(&self, id: u32) -> Option<i64> {
        self.counts.get(id as usize).copied()
    }

    /// All symbols in id order, specials included.
    pub fn symbols(&self) -> &[String] {
        &self.symbols
    }

    /// All counts in id order, specials included.
    pub fn counts(&self) -> &[i64] {
        &self.counts
    }

    /// Id of `<s>`.
    pub fn bos(&self) -> u32 {
        BOS
    }

    /// Id of `<pad>`.
    pub fn pad(&self) -> u32 {
        PAD
    }

    /// Id of `</s>`.
    pub fn eos(&self) -> u32 {
        EOS
    }

    /// Id of `<unk>`.
    pub fn unk(&self) -> u32 {
        UNK
    }

    /// Encodes a line like fairseq's `encode_line(line, add_if_not_exist=False)`: split on
    /// whitespace, look each symbol up (unknown → `<unk>`), append `</s>`.
    pub fn encode_line(&self, line: &str) -> Vec<u32> {
        let mut out = Vec::new();
        self.encode_symbols_into(text::symbols(line), &mut out);
        out
    }

    /// Appends the ids of `symbols` and then `</s>` to `out`; returns how many symbols were
    /// replaced by `<unk>` (fairseq's "replaced" count: unknown symbols other than `<unk>`).
    pub fn encode_symbols_into<'a>(
        &self,
        symbols: impl IntoIterator<Item = &'a str>,
        out: &mut Vec<u32>,
    ) -> u64 {
        let mut replaced = 0;
        for sym in symbols {
            match self.indices.get(sym) {
                Some(&id) => out.push(id),
                None => {
                    out.push(UNK);
                    if sym != SPECIALS[UNK as usize] {
                        replaced += 1;
                    }
                }
            }
        }
        out.push(EOS);
        replaced
    }

    /// The text of `ids` like fairseq's `string(ids)`: symbols joined by spaces, `</s>` and
    /// `<s>` left out, unknown ids as `<unk>`.
    pub fn string(&self, ids: &[u32]) -> String {
        let mut out = String::new();
        for &id in ids.iter().filter(|&&id| id != EOS && id != BOS) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(self.symbol(id));
        }
        out
    }
}

/// Parses an integer like Python's `int(str)`: surrounding whitespace, an optional sign, ASCII
/// digits with single underscores between them.
fn parse_py_int(s: &str) -> Option<i64> {
    let s = s.trim_matches(is_py_whitespace);
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || digits.starts_with('_')
        || digits.ends_with('_')
        || digits.contains("__")
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut v: i64 = 0;
    for b in digits.bytes().filter(|b| *b != b'_') {
        v = v.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> SymbolCounts {
        pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
    }

    #[test]
    fn specials_come_first() {
        let d = Dictionary::new();
        assert_eq!(d.symbols(), &["<s>", "<pad>", "</s>", "<unk>"]);
        assert_eq!((d.bos(), d.pad(), d.eos(), d.unk()), (0, 1, 2, 3));
        assert_eq!(d.to_text(), "");
    }

    #[test]
    fn finalize_orders_by_count_then_symbol_and_pads() {
        let mut d = Dictionary::new();
        d.add_counts(&counts(&[("b", 3), ("a", 3), ("c", 5), ("B", 3), ("é", 1), ("</s>", 9)]));
        d.finalize(-1, -1, 8);
        let made: Vec<String> = (0..7).map(|i| format!("madeupword{i:04}")).collect();
        let mut want = vec!["c", "B", "a", "b", "é"];
        want.extend(made.iter().map(String::as_str));
        assert_eq!(d.symbols()[4..], want);
        assert!(d.to_text().starts_with("c 5\nB 3\na 3\nb 3\né 1\nmadeupword0000 0\n"));
        assert_eq!(d.count(EOS), Some(10));
        assert_eq!(d.len() % 8, 0);
    }

    #[test]
    fn threshold_and_nwords() {
        let c = counts(&[("a", 5), ("b", 4), ("c", 2), ("d", 1)]);
        let mut d = Dictionary::new();
        d.add_counts(&c);
        d.finalize(2, -1, 1);
        assert_eq!(d.symbols()[4..], ["a", "b", "c"]);
        let mut d = Dictionary::new();
        d.add_counts(&c);
        d.finalize(0, 6, 1);
        assert_eq!(d.symbols()[4..], ["a", "b"]);
        let mut d = Dictionary::new();
        d.add_counts(&c);
        d.finalize(0, 2, 1);
        assert_eq!(d.len(), 4);
        assert_eq!(d.index("a"), UNK);
    }

    #[test]
    fn padding_skips_existing_madeupwords() {
        let mut d = Dictionary::new();
        d.add_counts(&counts(&[("madeupword0000", 2)]));
        d.finalize(0, -1, 8);
        assert_eq!(
            d.symbols()[4..],
            ["madeupword0000", "madeupword0001", "madeupword0002", "madeupword0003"]
        );
    }

    #[test]
    fn parse_and_write_round_trip() {
        let text = "hello 12\nworld 3\nx y 7\n";
        let d = Dictionary::parse(text, "dict.txt").unwrap();
        assert_eq!(d.index("hello"), 4);
        assert_eq!(d.index("x y"), 6);
        assert_eq!(d.index("nope"), UNK);
        assert_eq!(d.to_text(), text);
    }

    #[test]
    fn parse_like_python() {
        // CRLF, trailing whitespace, underscores and a sign in the count, no final newline.
        let d = Dictionary::parse("a 1\r\nb 2_000  \nc +3\nd -4", "d.txt").unwrap();
        assert_eq!(d.counts()[4..], [1, 2000, 3, -4]);
    }

    #[test]
    fn overwrite_flag() {
        let d = Dictionary::parse("a 1\nb 2\na 5 #fairseq:overwrite\n", "d.txt").unwrap();
        assert_eq!(d.len(), 7);
        assert_eq!(d.index("a"), 6);
        assert_eq!(d.to_text(), "a 1\nb 2\na 5 #fairseq:overwrite\n");
        let again = Dictionary::parse(&d.to_text(), "d.txt").unwrap();
        assert_eq!(again, d);
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = Dictionary::parse("a 1\nb 2\na 3\n", "x/dict.en.txt").unwrap_err();
        assert_eq!(
            e.to_string().split(':').take(3).collect::<Vec<_>>(),
            ["x/dict.en.txt", "3", " duplicate symbol \"a\" (add ' #fairseq"]
        );
        for bad in [
            "a 1\nnocount\n",
            "a 1\n\n",
            "a 1\nb x\n",
            "a 1\nb 1_\n",
            "a 1\nb #fairseq:overwrite\n",
        ] {
            let e = Dictionary::parse(bad, "d.txt").unwrap_err();
            assert!(matches!(e, Error::Format { line: 2, .. }), "{bad:?}: {e}");
            assert!(e.to_string().starts_with("d.txt:2: expected"), "{e}");
        }
    }

    #[test]
    fn load_reports_invalid_utf8_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dict.txt");
        std::fs::write(&p, b"a 1\nb 2\n\xff 3\n").unwrap();
        let e = Dictionary::load(&p).unwrap_err();
        assert!(matches!(e, Error::InvalidUtf8 { line: 3, .. }), "{e}");
        let e = Dictionary::load(dir.path().join("missing.txt")).unwrap_err();
        assert!(e.to_string().contains("missing.txt"), "{e}");
    }

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dict.txt");
        let mut d = Dictionary::new();
        d.add_counts(&counts(&[("x", 2), ("y", 1)]));
        d.finalize(0, -1, 8);
        d.save(&p).unwrap();
        assert_eq!(Dictionary::load(&p).unwrap(), d);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp files left");
    }

    #[test]
    fn encode_and_string() {
        let d = Dictionary::parse("the 3\ncat 2\n", "d").unwrap();
        assert_eq!(d.encode_line(" the\tcat  dog \n"), vec![4, 5, UNK, EOS]);
        assert_eq!(d.encode_line(""), vec![EOS]);
        let mut out = Vec::new();
        assert_eq!(d.encode_symbols_into(["the", "<unk>", "zzz"], &mut out), 1);
        assert_eq!(d.string(&[BOS, 4, 5, UNK, 99, EOS]), "the cat <unk> <unk>");
    }

    #[test]
    fn py_int() {
        assert_eq!(parse_py_int(" 42 "), Some(42));
        assert_eq!(parse_py_int("1_0"), Some(10));
        assert_eq!(parse_py_int("-0"), Some(0));
        for bad in ["", "-", "1__0", "_1", "1_", "1.0", "0x10", "99999999999999999999"] {
            assert_eq!(parse_py_int(bad), None, "{bad}");
        }
    }
}
