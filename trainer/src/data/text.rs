//! Reading text corpora the way fairseq does.
//!
//! fairseq opens text files in Python's text mode with universal newlines, so a line ends at
//! `\n`, `\r\n` or a lone `\r`, and splits lines into symbols with `str.split()` semantics
//! (any run of Python whitespace: Unicode `White_Space` plus the ASCII separators
//! `\x1c`–`\x1f`). This module reproduces both on byte slices, checks each line for invalid
//! UTF-8 and NUL bytes, and splits a memory-mapped file into line-aligned chunks that worker
//! threads process independently.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{Result, io_err};

/// Whether `c` is whitespace for Python's `str.split()` and `re`'s `\s` (what fairseq's
/// `tokenize_line` splits on).
pub fn is_py_whitespace(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// ASCII bytes that are Python whitespace.
const fn ascii_ws_table() -> [bool; 128] {
    let mut t = [false; 128];
    let ws: [u8; 10] = [b'\t', b'\n', 0x0b, 0x0c, b'\r', 0x1c, 0x1d, 0x1e, 0x1f, b' '];
    let mut i = 0;
    while i < ws.len() {
        t[ws[i] as usize] = true;
        i += 1;
    }
    t
}
static ASCII_WS: [bool; 128] = ascii_ws_table();

/// The symbols of `line` as fairseq's `tokenize_line` returns them: the non-empty pieces
/// between runs of Python whitespace.
pub fn symbols(line: &str) -> Symbols<'_> {
    Symbols { rest: line }
}

/// Iterator over the whitespace-separated symbols of a line; see [`symbols`].
#[derive(Debug, Clone)]
pub struct Symbols<'a> {
    rest: &'a str,
}

impl<'a> Symbols<'a> {
    /// Length in bytes of the leading run of whitespace (`ws = true`) or non-whitespace.
    fn run_len(s: &str, ws: bool) -> usize {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            let (is_ws, width) = if b < 0x80 {
                (ASCII_WS[b as usize], 1)
            } else {
                match s[i..].chars().next() {
                    Some(c) => (is_py_whitespace(c), c.len_utf8()),
                    None => break,
                }
            };
            if is_ws != ws {
                break;
            }
            i += width;
        }
        i
    }
}

impl<'a> Iterator for Symbols<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let skip = Self::run_len(self.rest, true);
        let rest = &self.rest[skip..];
        if rest.is_empty() {
            self.rest = rest;
            return None;
        }
        let len = Self::run_len(rest, false);
        let (sym, tail) = rest.split_at(len);
        self.rest = tail;
        Some(sym)
    }
}

/// Iterator over the lines of a byte slice with Python's universal newlines: each item is a
/// line without its terminator (`\n`, `\r\n` or `\r`); a last line without a terminator is
/// included, an empty input has no lines.
#[derive(Debug, Clone)]
pub struct Lines<'a> {
    data: &'a [u8],
}

/// The lines of `data`; see [`Lines`].
pub fn lines(data: &[u8]) -> Lines<'_> {
    Lines { data }
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        match memchr::memchr2(b'\n', b'\r', self.data) {
            Some(i) => {
                let line = &self.data[..i];
                let skip = if self.data[i] == b'\r' && self.data.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                self.data = &self.data[i + skip..];
                Some(line)
            }
            None => {
                let line = self.data;
                self.data = &[];
                Some(line)
            }
        }
    }
}

/// The 1-based line number (universal newlines) of the byte at `offset` in `data`.
pub fn line_number_at(data: &[u8], offset: usize) -> u64 {
    let prefix = &data[..offset.min(data.len())];
    let mut n = 1;
    let mut i = 0;
    while let Some(j) = memchr::memchr2(b'\n', b'\r', &prefix[i..]) {
        let at = i + j;
        // A `\r` directly followed by `\n` ends its line at the `\n`.
        if !(prefix[at] == b'\r' && data.get(at + 1) == Some(&b'\n')) {
            n += 1;
        }
        i = at + 1;
    }
    n
}

/// Why a line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not valid UTF-8.
    Utf8,
    /// Contains a NUL byte.
    Nul,
}

/// Checks one line (without terminator): valid UTF-8 and no NUL byte.
pub fn check_line(line: &[u8]) -> std::result::Result<&str, Invalid> {
    if memchr::memchr(0, line).is_some() {
        return Err(Invalid::Nul);
    }
    std::str::from_utf8(line).map_err(|_| Invalid::Utf8)
}

/// A whole text file, memory-mapped (or empty).
#[derive(Debug)]
pub struct TextFile {
    path: PathBuf,
    map: Option<memmap2::Mmap>,
}

impl TextFile {
    /// Opens and maps `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let map = if len == 0 {
            None
        } else {
            // SAFETY: the map is read-only and private to this process; like every reader of
            // memory-mapped input we rely on the file not being truncated while it is open.
            Some(unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?)
        };
        Ok(Self { path: path.to_path_buf(), map })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Splits `data` into at most `n` chunks that start at line starts: the returned offsets are
/// increasing, start with 0 and end with `data.len()`. Boundaries are placed just after a `\n`,
/// which always ends a line (alone or as part of `\r\n`).
pub fn chunk_offsets(data: &[u8], n: usize) -> Vec<usize> {
    let n = n.max(1);
    let mut offsets = vec![0];
    for i in 1..n {
        let target = data.len() * i / n;
        let last = offsets.last().copied().unwrap_or(0);
        let from = target.max(last);
        let boundary = match memchr::memchr(b'\n', &data[from.min(data.len())..]) {
            Some(j) => from + j + 1,
            None => data.len(),
        };
        if boundary > last && boundary < data.len() {
            offsets.push(boundary);
        }
    }
    offsets.push(data.len());
    offsets
}

/// Runs `f(chunk_index, chunk_bytes)` on every chunk between consecutive `offsets`, on up to
/// `workers` threads, and returns the results in chunk order.
pub(crate) fn map_chunks<R, F>(data: &[u8], offsets: &[usize], workers: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, &[u8]) -> R + Sync,
{
    let n = offsets.len().saturating_sub(1);
    let chunk = |k: usize| &data[offsets[k]..offsets[k + 1]];
    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        return (0..n).map(|k| f(k, chunk(k))).collect();
    }
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= n {
                        break;
                    }
                    let r = f(k, chunk(k));
                    if let Ok(mut slot) = slots[k].lock() {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    slots.into_iter().filter_map(|m| m.into_inner().ok().flatten()).collect()
}

/// Runs `work(k)` for `k` in `0..n` on up to `workers` threads and hands each result to
/// `sink(k, result)` on the calling thread in order `0, 1, 2, …`. At most `max_ahead` results
/// wait for the sink at any time, which bounds memory. The first error from `sink` stops the
/// run and is returned; a panicking worker is reported as an error too.
pub(crate) fn ordered_map<R, W, S, E>(
    n: usize,
    workers: usize,
    max_ahead: usize,
    work: W,
    mut sink: S,
) -> std::result::Result<(), E>
where
    R: Send,
    W: Fn(usize) -> R + Sync,
    S: FnMut(usize, R) -> std::result::Result<(), E>,
    E: From<super::Error>,
{
    use std::collections::BTreeMap;
    use std::sync::Condvar;

    let workers = workers.clamp(1, n.max(1));
    if workers == 1 {
        for k in 0..n {
            sink(k, work(k))?;
        }
        return Ok(());
    }
    struct State<R> {
        next_claim: usize,
        next_write: usize,
        ready: BTreeMap<usize, R>,
        stop: bool,
        panicked: bool,
    }
    let state = Mutex::new(State {
        next_claim: 0,
        next_write: 0,
        ready: BTreeMap::new(),
        stop: false,
        panicked: false,
    });
    let cv = Condvar::new();
    let max_ahead = max_ahead.max(workers);

    /// Marks the run as failed if a worker unwinds.
    struct PanicGuard<'a, R> {
        state: &'a Mutex<State<R>>,
        cv: &'a Condvar,
    }
    impl<R> Drop for PanicGuard<'_, R> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut st = match self.state.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                st.panicked = true;
                st.stop = true;
                self.cv.notify_all();
            }
        }
    }

    let lock = || match state.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                let _guard = PanicGuard { state: &state, cv: &cv };
                loop {
                    let k = {
                        let mut st = lock();
                        while !st.stop
                            && st.next_claim < n
                            && st.next_claim >= st.next_write + max_ahead
                        {
                            st = match cv.wait(st) {
                                Ok(g) => g,
                                Err(p) => p.into_inner(),
                            };
                        }
                        if st.stop || st.next_claim >= n {
                            return;
                        }
                        st.next_claim += 1;
                        st.next_claim - 1
                    };
                    let r = work(k);
                    let mut st = lock();
                    st.ready.insert(k, r);
                    cv.notify_all();
                }
            });
        }
        for k in 0..n {
            let r = {
                let mut st = lock();
                loop {
                    if st.panicked {
                        return Err(E::from(super::Error::Config(
                            "a worker thread panicked".into(),
                        )));
                    }
                    if let Some(r) = st.ready.remove(&k) {
                        break r;
                    }
                    st = match cv.wait(st) {
                        Ok(g) => g,
                        Err(p) => p.into_inner(),
                    };
                }
            };
            if let Err(e) = sink(k, r) {
                let mut st = lock();
                st.stop = true;
                cv.notify_all();
                return Err(e);
            }
            let mut st = lock();
            st.next_write = k + 1;
            cv.notify_all();
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn syms(s: &str) -> Vec<&str> {
        symbols(s).collect()
    }

    #[test]
    fn splits_like_python_str_split() {
        assert_eq!(syms(""), Vec::<&str>::new());
        assert_eq!(syms("  \t "), Vec::<&str>::new());
        assert_eq!(syms(" a  b\tc\n"), vec!["a", "b", "c"]);
        // NBSP, ideographic space, \x1c-\x1f and \x0b/\x0c are whitespace for Python.
        assert_eq!(
            syms("a\u{a0}b\u{3000}c\x1cd\x1fe\x0bf\x0cg"),
            vec!["a", "b", "c", "d", "e", "f", "g"]
        );
        // Zero-width space and BOM are not.
        assert_eq!(syms("a\u{200b}b \u{feff}c"), vec!["a\u{200b}b", "\u{feff}c"]);
        assert_eq!(syms("Zürich größer"), vec!["Zürich", "größer"]);
    }

    #[test]
    fn universal_newlines() {
        let got: Vec<&[u8]> = lines(b"a\nb\r\nc\rd").collect();
        assert_eq!(got, vec![&b"a"[..], b"b", b"c", b"d"]);
        let got: Vec<&[u8]> = lines(b"a\n\n").collect();
        assert_eq!(got, vec![&b"a"[..], b""]);
        assert_eq!(lines(b"").count(), 0);
        assert_eq!(lines(b"\r\n").count(), 1);
        assert_eq!(lines(b"\r\r\n").count(), 2);
    }

    #[test]
    fn line_numbers() {
        let data = b"a\nb\r\nc\rd";
        assert_eq!(line_number_at(data, 0), 1);
        assert_eq!(line_number_at(data, 2), 2);
        assert_eq!(line_number_at(data, 3), 2);
        assert_eq!(line_number_at(data, 4), 2);
        assert_eq!(line_number_at(data, 5), 3);
        assert_eq!(line_number_at(data, 7), 4);
    }

    #[test]
    fn check_lines() {
        assert_eq!(check_line(b"ok"), Ok("ok"));
        assert_eq!(check_line(b"a\0b"), Err(Invalid::Nul));
        assert_eq!(check_line(b"a\xffb"), Err(Invalid::Utf8));
    }

    #[test]
    fn chunks_are_line_aligned_and_cover_everything() {
        let data = b"one\ntwo\r\nthree\rfour\nfive\n\nsix";
        for n in 1..12 {
            let offs = chunk_offsets(data, n);
            assert_eq!(offs[0], 0);
            assert_eq!(*offs.last().unwrap(), data.len());
            assert!(offs.windows(2).all(|w| w[0] < w[1]), "{offs:?}");
            for &o in &offs[1..offs.len() - 1] {
                assert_eq!(data[o - 1], b'\n');
            }
            let all: Vec<&[u8]> = offs
                .windows(2)
                .flat_map(|w| lines(&data[w[0]..w[1]]).collect::<Vec<_>>())
                .collect();
            assert_eq!(all, lines(data).collect::<Vec<_>>());
        }
        assert_eq!(chunk_offsets(b"", 4), vec![0, 0]);
    }

    #[test]
    fn ordered_map_is_ordered_and_stops_on_error() {
        for workers in [1, 2, 5] {
            let mut seen = Vec::new();
            let r: std::result::Result<(), crate::data::Error> = ordered_map(
                50,
                workers,
                3,
                |k| k * 2,
                |k, v| {
                    assert_eq!(v, k * 2);
                    seen.push(k);
                    Ok(())
                },
            );
            assert!(r.is_ok());
            assert_eq!(seen, (0..50).collect::<Vec<_>>());
            let r: std::result::Result<(), crate::data::Error> = ordered_map(
                50,
                workers,
                3,
                |k| k,
                |k, _| if k == 7 { Err(crate::data::Error::Config("stop".into())) } else { Ok(()) },
            );
            assert!(r.is_err());
        }
    }

    #[test]
    fn map_chunks_keeps_order() {
        let data: Vec<u8> = (0..1000).flat_map(|i| format!("{i}\n").into_bytes()).collect();
        let offs = chunk_offsets(&data, 7);
        let single = map_chunks(&data, &offs, 1, |_, c| lines(c).count());
        let multi = map_chunks(&data, &offs, 4, |_, c| lines(c).count());
        assert_eq!(single, multi);
        assert_eq!(single.iter().sum::<usize>(), 1000);
    }
}
