//! fairseq's "mmap" binarized datasets: `{prefix}.bin` + `{prefix}.idx`.
//!
//! Layout, from fairseq 0.12.2 `fairseq/data/indexed_dataset.py` (`MMapIndexedDataset`):
//!
//! - `.idx`: the 9-byte magic `MMIDIDX\x00\x00`; version, u64 little-endian, = 1; the element
//!   type code, u8 (see [`DType`]); the item count `n`, u64; `n` sizes (elements per item),
//!   i32; `n` pointers (byte offsets of the items in `.bin`), i64. Nothing follows in files
//!   fairseq writes; a Megatron-style trailer (u64 `doc_count` + i64 `doc_idx[doc_count]`) is
//!   accepted and ignored.
//! - `.bin`: the items' elements, little-endian, back to back.
//!
//! fairseq picks the element type from the vocabulary size (`best_fitting_int_dtype`):
//! `uint16` below 65500, `uint32` below 4294967295, else `int64` ([`DType::best_fitting`]).
//!
//! [`IndexedDataset::open`] validates everything up front (magic, version, type, lengths,
//! pointers within `.bin`, monotonic and non-overlapping), so reading an item afterwards can
//! never go out of bounds. [`IndexedDatasetBuilder`] writes both files under temporary names
//! and renames them into place in [`IndexedDatasetBuilder::finalize`].

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{Error, Result, io_err, temp_path};

/// The format's header definitions live with the runtime's read-only reader (one definition
/// for both crates): the 9-byte magic, the version, the header length and the element types.
pub use seqforge_runtime::indexed::{DType, HEADER_LEN, MAGIC, VERSION};
/// fairseq's legacy ("lazy"/"cached") index magic, recognised to give a better error.
const LEGACY_MAGIC: &[u8; 8] = b"TNTIDX\x00\x00";

/// `{prefix}.idx`.
pub fn index_file_path(prefix: impl AsRef<Path>) -> PathBuf {
    with_suffix(prefix.as_ref(), ".idx")
}

/// `{prefix}.bin`.
pub fn data_file_path(prefix: impl AsRef<Path>) -> PathBuf {
    with_suffix(prefix.as_ref(), ".bin")
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    i32::from_le_bytes(w)
}

/// A memory-mapped, validated fairseq mmap dataset.
#[derive(Debug)]
pub struct IndexedDataset {
    idx_path: PathBuf,
    bin_path: PathBuf,
    dtype: DType,
    sizes: Vec<u32>,
    pointers: Vec<u64>,
    bin: Option<memmap2::Mmap>,
}

impl IndexedDataset {
    /// Opens `{prefix}.idx` and `{prefix}.bin` and validates them; every later read is in
    /// bounds.
    pub fn open(prefix: impl AsRef<Path>) -> Result<Self> {
        let idx_path = index_file_path(&prefix);
        let bin_path = data_file_path(&prefix);
        let idx = std::fs::read(&idx_path).map_err(io_err(&idx_path))?;
        let bad = |message: String| Error::Index { path: idx_path.clone(), message };

        if idx.len() >= LEGACY_MAGIC.len() && idx[..8] == LEGACY_MAGIC[..] {
            return Err(bad("fairseq's legacy 'lazy'/'cached' index format is not supported; \
                 binarize with --dataset-impl mmap"
                .into()));
        }
        if idx.len() < MAGIC.len() || idx[..MAGIC.len()] != MAGIC[..] {
            return Err(bad("not a fairseq mmap index (wrong magic, expected MMIDIDX)".into()));
        }
        if idx.len() < HEADER_LEN {
            return Err(bad(format!(
                "truncated header: {} bytes, expected at least {HEADER_LEN}",
                idx.len()
            )));
        }
        let version = read_u64(&idx, 9);
        if version != VERSION {
            return Err(bad(format!("unsupported version {version} (expected {VERSION})")));
        }
        let code = idx[17];
        let dtype = DType::from_code(code).ok_or_else(|| {
            bad(format!("unsupported element type code {code} (integer types only)"))
        })?;
        let count = read_u64(&idx, 18);
        let body = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(12))
            .and_then(|b| b.checked_add(HEADER_LEN))
            .ok_or_else(|| bad(format!("implausible item count {count}")))?;
        if idx.len() < body {
            return Err(bad(format!(
                "truncated: {count} items need {body} bytes but the file has {}",
                idx.len()
            )));
        }
        let extra = idx.len() - body;
        if extra != 0 {
            // Accept a Megatron-style document index: u64 doc_count + i64 doc_idx[doc_count].
            let doc_ok = extra >= 8
                && (extra - 8) % 8 == 0
                && read_u64(&idx, body) == ((extra - 8) / 8) as u64;
            if !doc_ok {
                return Err(bad(format!("{extra} unexpected bytes after the item pointers")));
            }
        }
        let n = count as usize;

        let bin_file = File::open(&bin_path).map_err(io_err(&bin_path))?;
        let bin_len = bin_file.metadata().map_err(io_err(&bin_path))?.len();
        let el = dtype.size() as u64;
        let mut sizes = Vec::with_capacity(n);
        let mut pointers = Vec::with_capacity(n);
        let ptr_base = HEADER_LEN + 4 * n;
        let mut prev_end = 0u64;
        for i in 0..n {
            let size = read_i32(&idx, HEADER_LEN + 4 * i);
            let size = u32::try_from(size)
                .map_err(|_| bad(format!("item {i} has a negative size {size}")))?;
            let ptr = read_u64(&idx, ptr_base + 8 * i) as i64;
            let ptr = u64::try_from(ptr)
                .map_err(|_| bad(format!("item {i} has a negative pointer {ptr}")))?;
            if ptr % el != 0 {
                return Err(bad(format!(
                    "item {i}: pointer {ptr} is not a multiple of the element size {el}"
                )));
            }
            if ptr < prev_end {
                return Err(bad(format!(
                    "item {i}: pointer {ptr} goes back before the end of item {} ({prev_end}); \
                     pointers must be increasing",
                    i.saturating_sub(1)
                )));
            }
            let end = ptr + u64::from(size) * el;
            if end > bin_len {
                return Err(Error::Index {
                    path: bin_path.clone(),
                    message: format!(
                        "shorter than the index says: item {i} ends at byte {end} but the file \
                         has {bin_len} bytes"
                    ),
                });
            }
            prev_end = end;
            sizes.push(size);
            pointers.push(ptr);
        }
        if prev_end < bin_len {
            tracing::debug!(
                "{}: {} bytes after the last item are not referenced by the index",
                bin_path.display(),
                bin_len - prev_end
            );
        }
        let bin = if bin_len == 0 {
            None
        } else {
            // SAFETY: a read-only private map; like fairseq's numpy memmap we rely on the file
            // not being truncated while it is open. Every range read from it was checked
            // against its length above.
            Some(unsafe { memmap2::Mmap::map(&bin_file) }.map_err(io_err(&bin_path))?)
        };
        Ok(Self { idx_path, bin_path, dtype, sizes, pointers, bin })
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Elements per item (sequence lengths, `</s>` included for text datasets).
    pub fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    /// The byte offsets of the items in `.bin`.
    pub fn pointers(&self) -> &[u64] {
        &self.pointers
    }

    /// The number of elements of item `i`.
    pub fn size(&self, i: usize) -> Result<usize> {
        self.check(i)?;
        Ok(self.sizes[i] as usize)
    }

    /// Total number of elements over all items.
    pub fn total_tokens(&self) -> u64 {
        self.sizes.iter().map(|&s| u64::from(s)).sum()
    }

    /// The `.idx` path.
    pub fn index_path(&self) -> &Path {
        &self.idx_path
    }

    /// The `.bin` path.
    pub fn data_path(&self) -> &Path {
        &self.bin_path
    }

    fn check(&self, i: usize) -> Result<()> {
        if i < self.len() {
            Ok(())
        } else {
            Err(Error::OutOfRange { path: self.idx_path.clone(), index: i, len: self.len() })
        }
    }

    /// The raw little-endian bytes of item `i` (a view into the map).
    pub fn item_bytes(&self, i: usize) -> Result<&[u8]> {
        self.check(i)?;
        let start = self.pointers[i] as usize;
        let len = self.sizes[i] as usize * self.dtype.size();
        let data = self.bin.as_deref().unwrap_or(&[]);
        // Checked at open: start + len <= the file's length.
        Ok(&data[start..start + len])
    }

    /// Item `i` as token ids.
    pub fn get(&self, i: usize) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        self.get_into(i, &mut out)?;
        Ok(out)
    }

    /// Replaces the contents of `out` with item `i`'s token ids. Fails for a value that is
    /// not a valid id (negative or above `u32::MAX`, possible only in signed or 64-bit files).
    pub fn get_into(&self, i: usize, out: &mut Vec<u32>) -> Result<()> {
        let bytes = self.item_bytes(i)?;
        out.clear();
        out.reserve(self.sizes[i] as usize);
        let not_id = |v: i128| Error::Index {
            path: self.bin_path.clone(),
            message: format!("item {i} holds {v}, which is not a token id"),
        };
        match self.dtype {
            DType::U8 => out.extend(bytes.iter().map(|&b| u32::from(b))),
            DType::U16 => out
                .extend(bytes.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]])))),
            DType::U32 => out.extend(
                bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            ),
            DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U64 => {
                let el = self.dtype.size();
                for c in bytes.chunks_exact(el) {
                    let v: i128 = match self.dtype {
                        DType::I8 => i128::from(c[0] as i8),
                        DType::I16 => i128::from(i16::from_le_bytes([c[0], c[1]])),
                        DType::I32 => i128::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                        DType::I64 => i128::from(read_u64(c, 0) as i64),
                        _ => i128::from(read_u64(c, 0)),
                    };
                    out.push(u32::try_from(v).map_err(|_| not_id(v))?);
                }
            }
        }
        Ok(())
    }

    /// Iterates over all items as token ids.
    pub fn iter(&self) -> impl Iterator<Item = Result<Vec<u32>>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }
}

/// Writes a fairseq mmap dataset: items go to a temporary `.bin`; [`Self::finalize`] writes
/// the `.idx` and renames both into place. Dropped without `finalize`, it removes its
/// temporary files.
#[derive(Debug)]
pub struct IndexedDatasetBuilder {
    bin_path: PathBuf,
    idx_path: PathBuf,
    bin_tmp: PathBuf,
    bin: Option<BufWriter<File>>,
    dtype: DType,
    sizes: Vec<u32>,
    bytes: u64,
    buf: Vec<u8>,
}

impl IndexedDatasetBuilder {
    /// Starts `{prefix}.bin` / `{prefix}.idx` with elements of type `dtype`.
    pub fn create(prefix: impl AsRef<Path>, dtype: DType) -> Result<Self> {
        let bin_path = data_file_path(&prefix);
        let idx_path = index_file_path(&prefix);
        let bin_tmp = temp_path(&bin_path);
        let file = File::create(&bin_tmp).map_err(io_err(&bin_tmp))?;
        Ok(Self {
            bin_path,
            idx_path,
            bin_tmp,
            bin: Some(BufWriter::with_capacity(1 << 20, file)),
            dtype,
            sizes: Vec::new(),
            bytes: 0,
            buf: Vec::new(),
        })
    }

    /// Like fairseq's `make_builder(vocab_size=...)`: the element type is
    /// [`DType::best_fitting`] for the vocabulary size.
    pub fn for_vocab_size(prefix: impl AsRef<Path>, vocab_size: usize) -> Result<Self> {
        Self::create(prefix, DType::best_fitting(vocab_size))
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of items added so far.
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    /// Whether no item was added yet.
    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    /// Appends one item.
    pub fn add_item(&mut self, ids: &[u32]) -> Result<()> {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let max = self.dtype.max_id();
        for &id in ids {
            if u64::from(id) > max {
                return Err(Error::IdOutOfRange {
                    path: self.bin_path.clone(),
                    id: id.into(),
                    dtype: self.dtype,
                });
            }
            self.dtype.encode(id.into(), &mut buf);
        }
        let r = self.add_raw(&buf, ids.len());
        self.buf = buf;
        r
    }

    /// Appends one item given as raw little-endian bytes of `len` elements of this builder's
    /// type (as produced by [`encode_ids`]).
    pub fn add_raw(&mut self, bytes: &[u8], len: usize) -> Result<()> {
        if bytes.len() != len * self.dtype.size() {
            return Err(Error::Config(format!(
                "{}: {} bytes do not hold {len} elements of {}",
                self.bin_path.display(),
                bytes.len(),
                self.dtype
            )));
        }
        let size = u32::try_from(len)
            .ok()
            .filter(|&s| s <= i32::MAX as u32)
            .ok_or_else(|| Error::Config(format!("item of {len} elements is too long")))?;
        let w =
            self.bin.as_mut().ok_or_else(|| Error::Config("builder already finalized".into()))?;
        w.write_all(bytes).map_err(io_err(&self.bin_tmp))?;
        self.sizes.push(size);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends many items at once: `bytes` holds their elements back to back, `sizes` their
    /// lengths.
    pub fn add_raw_items(&mut self, bytes: &[u8], sizes: &[u32]) -> Result<()> {
        let total: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        if total * self.dtype.size() as u64 != bytes.len() as u64
            || sizes.iter().any(|&s| s > i32::MAX as u32)
        {
            return Err(Error::Config(format!(
                "{}: {} bytes do not hold items of sizes summing to {total}",
                self.bin_path.display(),
                bytes.len()
            )));
        }
        let w =
            self.bin.as_mut().ok_or_else(|| Error::Config("builder already finalized".into()))?;
        w.write_all(bytes).map_err(io_err(&self.bin_tmp))?;
        self.sizes.extend_from_slice(sizes);
        self.bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends every item of the dataset at `prefix` (fairseq's `merge_file_`); its element
    /// type must equal this builder's.
    pub fn merge_file(&mut self, prefix: impl AsRef<Path>) -> Result<()> {
        let other = IndexedDataset::open(prefix)?;
        if other.dtype() != self.dtype {
            return Err(Error::Index {
                path: other.idx_path.clone(),
                message: format!("element type {} differs from {}", other.dtype(), self.dtype),
            });
        }
        for i in 0..other.len() {
            let bytes = other.item_bytes(i)?;
            self.add_raw(bytes, other.sizes[i] as usize)?;
        }
        Ok(())
    }

    /// Writes the `.idx` and moves both files into place.
    pub fn finalize(mut self) -> Result<()> {
        let w = self.bin.take().ok_or_else(|| Error::Config("builder already finalized".into()))?;
        let file = w
            .into_inner()
            .map_err(|e| Error::Io { path: self.bin_tmp.clone(), source: e.into_error() })?;
        file.sync_all().map_err(io_err(&self.bin_tmp))?;
        drop(file);
        if self.bytes > i64::MAX as u64 {
            return Err(Error::Config(format!("{}: too large", self.bin_path.display())));
        }
        let idx = index_bytes(self.dtype, &self.sizes);
        let idx_tmp = temp_path(&self.idx_path);
        let r = (|| {
            let mut f = File::create(&idx_tmp).map_err(io_err(&idx_tmp))?;
            f.write_all(&idx).map_err(io_err(&idx_tmp))?;
            f.sync_all().map_err(io_err(&idx_tmp))?;
            drop(f);
            std::fs::rename(&self.bin_tmp, &self.bin_path).map_err(io_err(&self.bin_path))?;
            std::fs::rename(&idx_tmp, &self.idx_path).map_err(io_err(&self.idx_path))
        })();
        if r.is_err() {
            let _ = std::fs::remove_file(&idx_tmp);
        }
        r
    }
}

impl Drop for IndexedDatasetBuilder {
    fn drop(&mut self) {
        if self.bin.take().is_some() {
            let _ = std::fs::remove_file(&self.bin_tmp);
        }
    }
}

/// The `.idx` bytes for items of `sizes` elements of `dtype`, stored back to back.
pub fn index_bytes(dtype: DType, sizes: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + 12 * sizes.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.push(dtype.code());
    out.extend_from_slice(&(sizes.len() as u64).to_le_bytes());
    for &s in sizes {
        out.extend_from_slice(&(s as i32).to_le_bytes());
    }
    let el = dtype.size() as i64;
    let mut ptr = 0i64;
    for &s in sizes {
        out.extend_from_slice(&ptr.to_le_bytes());
        ptr += i64::from(s) * el;
    }
    out
}

/// Appends `ids` to `out` as little-endian elements of `dtype`; returns the first id that does
/// not fit, if any (nothing is appended for it or after it).
pub fn encode_ids(dtype: DType, ids: &[u32], out: &mut Vec<u8>) -> std::result::Result<(), u32> {
    let max = dtype.max_id();
    if dtype == DType::U16 {
        out.reserve(ids.len() * 2);
        for &id in ids {
            let v = u16::try_from(id).map_err(|_| id)?;
            out.extend_from_slice(&v.to_le_bytes());
        }
        return Ok(());
    }
    for &id in ids {
        if u64::from(id) > max {
            return Err(id);
        }
        dtype.encode(id.into(), out);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn write(prefix: &Path, dtype: DType, items: &[Vec<u32>]) {
        let mut b = IndexedDatasetBuilder::create(prefix, dtype).unwrap();
        for it in items {
            b.add_item(it).unwrap();
        }
        b.finalize().unwrap();
    }

    fn items() -> Vec<Vec<u32>> {
        vec![vec![4, 5, 2], vec![], vec![2], (0..300).collect()]
    }

    #[test]
    fn round_trip_all_types() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in [DType::U16, DType::U32, DType::I32, DType::I64, DType::U64, DType::I16] {
            let p = dir.path().join(format!("d.{dtype}"));
            write(&p, dtype, &items());
            let ds = IndexedDataset::open(&p).unwrap();
            assert_eq!(ds.dtype(), dtype);
            assert_eq!(ds.len(), 4);
            assert_eq!(ds.sizes(), &[3, 0, 1, 300]);
            assert_eq!(ds.total_tokens(), 304);
            let got: Vec<Vec<u32>> = ds.iter().collect::<Result<_>>().unwrap();
            assert_eq!(got, items());
            assert!(matches!(ds.get(4), Err(Error::OutOfRange { index: 4, len: 4, .. })));
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }

    #[test]
    fn header_layout() {
        let idx = index_bytes(DType::U16, &[3, 1]);
        assert_eq!(&idx[..9], b"MMIDIDX\x00\x00");
        assert_eq!(&idx[9..17], &1u64.to_le_bytes());
        assert_eq!(idx[17], 8);
        assert_eq!(&idx[18..26], &2u64.to_le_bytes());
        assert_eq!(&idx[26..34], &[3, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&idx[34..42], &0i64.to_le_bytes());
        assert_eq!(&idx[42..50], &6i64.to_le_bytes());
        assert_eq!(idx.len(), 50);
    }

    #[test]
    fn best_fitting() {
        assert_eq!(DType::best_fitting(8), DType::U16);
        assert_eq!(DType::best_fitting(65499), DType::U16);
        assert_eq!(DType::best_fitting(65500), DType::U32);
        assert_eq!(DType::best_fitting(4_294_967_294), DType::U32);
        assert_eq!(DType::best_fitting(4_294_967_295), DType::I64);
        for c in 0..=255u8 {
            if let Some(d) = DType::from_code(c) {
                assert_eq!(d.code(), c);
            }
        }
    }

    #[test]
    fn rejects_ids_that_do_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let mut b = IndexedDatasetBuilder::create(&p, DType::U16).unwrap();
        assert!(matches!(b.add_item(&[1, 70000]), Err(Error::IdOutOfRange { id: 70000, .. })));
        drop(b);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "temp .bin removed");
    }

    #[test]
    fn merge() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let m = dir.path().join("m");
        write(&a, DType::U16, &items());
        let mut b = IndexedDatasetBuilder::create(&m, DType::U16).unwrap();
        b.add_item(&[9]).unwrap();
        b.merge_file(&a).unwrap();
        b.finalize().unwrap();
        let ds = IndexedDataset::open(&m).unwrap();
        assert_eq!(ds.len(), 5);
        assert_eq!(ds.get(4).unwrap(), items()[3]);
        let mut b = IndexedDatasetBuilder::create(&m, DType::U32).unwrap();
        assert!(b.merge_file(&a).is_err());
    }

    /// Writes a valid dataset, lets `corrupt` edit its bytes, and returns the open error.
    fn open_corrupted(corrupt: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>)) -> String {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c");
        write(&p, DType::U16, &items());
        let mut idx = std::fs::read(index_file_path(&p)).unwrap();
        let mut bin = std::fs::read(data_file_path(&p)).unwrap();
        corrupt(&mut idx, &mut bin);
        std::fs::write(index_file_path(&p), idx).unwrap();
        std::fs::write(data_file_path(&p), bin).unwrap();
        match IndexedDataset::open(&p) {
            Ok(_) => "opened".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn validation_errors_name_the_file() {
        type Corrupt = Box<dyn FnOnce(&mut Vec<u8>, &mut Vec<u8>)>;
        let cases: Vec<(Corrupt, &str, &str)> = vec![
            (Box::new(|i, _| i[0] = b'X'), "c.idx", "wrong magic"),
            (Box::new(|i, _| i.truncate(20)), "c.idx", "truncated header"),
            (Box::new(|i, _| i.truncate(i.len() - 1)), "c.idx", "truncated: 4 items"),
            (Box::new(|i, _| i[9] = 2), "c.idx", "unsupported version 2"),
            (Box::new(|i, _| i[17] = 6), "c.idx", "unsupported element type code 6"),
            (
                Box::new(|i, _| i[18..26].copy_from_slice(&u64::MAX.to_le_bytes())),
                "c.idx",
                "implausible",
            ),
            (Box::new(|_, b| b.truncate(b.len() - 2)), "c.bin", "shorter than the index says"),
            (Box::new(|i, _| i.extend_from_slice(&[1, 2, 3])), "c.idx", "3 unexpected bytes"),
            (
                Box::new(|i, _| i[26..30].copy_from_slice(&(-1i32).to_le_bytes())),
                "c.idx",
                "negative size",
            ),
            // item 2's pointer (offset 26 + 16 + 2*8) moved back into item 0.
            (
                Box::new(|i, _| i[58..66].copy_from_slice(&2i64.to_le_bytes())),
                "c.idx",
                "pointers must be increasing",
            ),
            (
                Box::new(|i, _| i[58..66].copy_from_slice(&7i64.to_le_bytes())),
                "c.idx",
                "not a multiple",
            ),
            (Box::new(|i, _| i[..8].copy_from_slice(b"TNTIDX\0\0")), "c.idx", "legacy"),
        ];
        for (corrupt, file, msg) in cases {
            let e = open_corrupted(corrupt);
            assert!(e.contains(file) && e.contains(msg), "expected {file} / {msg}: {e}");
        }
        // A Megatron-style doc_idx trailer is accepted.
        let e = open_corrupted(|i, _| {
            i.extend_from_slice(&2u64.to_le_bytes());
            i.extend_from_slice(&0i64.to_le_bytes());
            i.extend_from_slice(&4i64.to_le_bytes());
        });
        assert_eq!(e, "opened");
    }

    #[test]
    fn signed_values_that_are_not_ids() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(data_file_path(&p), (-5i32).to_le_bytes()).unwrap();
        std::fs::write(index_file_path(&p), {
            let mut i = index_bytes(DType::I32, &[1]);
            i[17] = DType::I32.code();
            i
        })
        .unwrap();
        let ds = IndexedDataset::open(&p).unwrap();
        let e = ds.get(0).unwrap_err().to_string();
        assert!(e.contains("s.bin") && e.contains("-5"), "{e}");
    }
}
