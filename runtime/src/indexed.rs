//! A read-only reader of fairseq's "mmap" binarized datasets (`{prefix}.idx` + `{prefix}.bin`),
//! for `seqforge generate --data DIR`; no libtorch and no dependency on the trainer.
//!
//! Layout (fairseq 0.12.2 `fairseq/data/indexed_dataset.py`, `MMapIndexedDataset.Index`):
//! - `.idx`: the 9-byte magic `MMIDIDX\x00\x00`; the version, u64 little-endian, = 1; the
//!   element type code, u8 (fairseq's `_code_to_dtype`: 1 uint8, 2 int8, 3 int16, 4 int32,
//!   5 int64, 8 uint16, 9 uint32, 10 uint64); the item count `n`, u64; `n` sizes (elements per
//!   item), i32; `n` pointers (byte offsets of the items in `.bin`), i64. A Megatron-style
//!   trailer (u64 `doc_count` + i64 `doc_idx[doc_count]`) is accepted and ignored.
//! - `.bin`: the items' elements, little-endian, back to back. fairseq's binarizer writes each
//!   sentence's dictionary ids with EOS appended.
//!
//! [`IndexedDataset::open`] validates everything before returning (magic, version, type,
//! lengths, every item inside `.bin`), so reading an item can never go out of bounds; every
//! error is [`Error::IndexedData`] naming the file and the field.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The 9-byte magic at the start of an mmap `.idx` file.
pub const MAGIC: &[u8; 9] = b"MMIDIDX\x00\x00";
/// The only format version.
pub const VERSION: u64 = 1;
/// Bytes before the sizes: magic, version, dtype code, count.
pub const HEADER_LEN: usize = 9 + 8 + 1 + 8;

/// The element type of a dataset, with fairseq's header codes (`_code_to_dtype`). Codes 6 and 7
/// (float64) exist in fairseq but hold no token ids and are not supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// `uint8`, code 1.
    U8,
    /// `int8`, code 2.
    I8,
    /// `int16`, code 3.
    I16,
    /// `int32`, code 4.
    I32,
    /// `int64`, code 5.
    I64,
    /// `uint16`, code 8.
    U16,
    /// `uint32`, code 9.
    U32,
    /// `uint64`, code 10.
    U64,
}

impl DType {
    /// The header code.
    pub fn code(self) -> u8 {
        match self {
            DType::U8 => 1,
            DType::I8 => 2,
            DType::I16 => 3,
            DType::I32 => 4,
            DType::I64 => 5,
            DType::U16 => 8,
            DType::U32 => 9,
            DType::U64 => 10,
        }
    }

    /// The type of a header code, if supported.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => DType::U8,
            2 => DType::I8,
            3 => DType::I16,
            4 => DType::I32,
            5 => DType::I64,
            8 => DType::U16,
            9 => DType::U32,
            10 => DType::U64,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::I16 | DType::U16 => 2,
            DType::I32 | DType::U32 => 4,
            DType::I64 | DType::U64 => 8,
        }
    }

    /// The largest token id the type can hold.
    pub fn max_id(self) -> u64 {
        match self {
            DType::U8 => u8::MAX.into(),
            DType::I8 => 127,
            DType::I16 => 32767,
            DType::U16 => u16::MAX.into(),
            DType::I32 => 2_147_483_647,
            DType::U32 => u32::MAX.into(),
            DType::I64 => 9_223_372_036_854_775_807,
            DType::U64 => u64::MAX,
        }
    }

    /// fairseq's `best_fitting_int_dtype(vocab_size)`: `uint16` below 65500, `uint32` below
    /// 4294967295, else `int64`.
    pub fn best_fitting(vocab_size: usize) -> Self {
        if vocab_size < 65500 {
            DType::U16
        } else if (vocab_size as u64) < 4_294_967_295 {
            DType::U32
        } else {
            DType::I64
        }
    }

    /// Decodes one little-endian element (`bytes.len() == self.size()`) as a wide integer.
    fn decode(self, b: &[u8]) -> i128 {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        let u = u64::from_le_bytes(w);
        match self {
            DType::U8 | DType::U16 | DType::U32 | DType::U64 => i128::from(u),
            DType::I8 => i128::from(u as u8 as i8),
            DType::I16 => i128::from(u as u16 as i16),
            DType::I32 => i128::from(u as u32 as i32),
            DType::I64 => i128::from(u as i64),
        }
    }

    /// Appends `id` in this type, little-endian (the caller checked `id <= max_id()`).
    pub fn encode(self, id: u64, out: &mut Vec<u8>) {
        match self.size() {
            1 => out.push(id as u8),
            2 => out.extend_from_slice(&(id as u16).to_le_bytes()),
            4 => out.extend_from_slice(&(id as u32).to_le_bytes()),
            _ => out.extend_from_slice(&id.to_le_bytes()),
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
        })
    }
}

/// `{prefix}{suffix}` (the prefix keeps its dots: `test.es-en.es` + `.idx`).
fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// fairseq's prefix of one side of a language-pair split: `DIR/{split}.{src}-{tgt}.{lang}`.
pub fn split_prefix(dir: &Path, split: &str, src: &str, tgt: &str, lang: &str) -> PathBuf {
    dir.join(format!("{split}.{src}-{tgt}.{lang}"))
}

/// `{prefix}.idx`.
pub fn index_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".idx")
}

/// `{prefix}.bin`.
pub fn data_path(prefix: &Path) -> PathBuf {
    with_suffix(prefix, ".bin")
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    i32::from_le_bytes(w)
}

/// A validated fairseq mmap dataset, read into memory.
#[derive(Debug, Clone)]
pub struct IndexedDataset {
    idx_path: PathBuf,
    bin_path: PathBuf,
    dtype: DType,
    /// Elements per item.
    sizes: Vec<usize>,
    /// Byte offset of each item in `bin`.
    pointers: Vec<usize>,
    bin: Vec<u8>,
}

impl IndexedDataset {
    /// Reads `{prefix}.idx` and `{prefix}.bin` and validates them (see the module
    /// documentation); errors name the file and the field.
    pub fn open(prefix: &Path) -> Result<Self> {
        let idx_path = index_path(prefix);
        let bin_path = data_path(prefix);
        let idx = std::fs::read(&idx_path)
            .map_err(|source| Error::Io { path: idx_path.clone(), source })?;
        let bad = |field: &'static str, message: String| Error::IndexedData {
            path: idx_path.clone(),
            field,
            message,
        };
        if idx.len() < MAGIC.len() || idx[..MAGIC.len()] != MAGIC[..] {
            return Err(bad(
                "magic",
                "not a fairseq mmap index (expected MMIDIDX\\x00\\x00)".into(),
            ));
        }
        if idx.len() < HEADER_LEN {
            return Err(bad(
                "header",
                format!("truncated: {} bytes, a header needs {HEADER_LEN}", idx.len()),
            ));
        }
        let version = u64_at(&idx, 9);
        if version != VERSION {
            return Err(bad("version", format!("{version}, expected {VERSION}")));
        }
        let code = idx[17];
        let dtype = DType::from_code(code)
            .ok_or_else(|| bad("dtype", format!("code {code} is not an integer type")))?;
        let count = u64_at(&idx, 18);
        let body = usize::try_from(count)
            .ok()
            .and_then(|n| n.checked_mul(12))
            .and_then(|b| b.checked_add(HEADER_LEN))
            .ok_or_else(|| bad("count", format!("implausible item count {count}")))?;
        if idx.len() < body {
            return Err(bad(
                "count",
                format!("{count} items need {body} bytes but the file has {}", idx.len()),
            ));
        }
        let extra = idx.len() - body;
        if extra != 0 {
            let doc_ok = extra >= 8
                && (extra - 8) % 8 == 0
                && u64_at(&idx, body) == ((extra - 8) / 8) as u64;
            if !doc_ok {
                return Err(bad(
                    "doc_idx",
                    format!("{extra} bytes after the pointers are not a document index"),
                ));
            }
        }
        let n = body.saturating_sub(HEADER_LEN) / 12;

        let bin = std::fs::read(&bin_path)
            .map_err(|source| Error::Io { path: bin_path.clone(), source })?;
        let el = dtype.size();
        let ptr_base = HEADER_LEN + 4 * n;
        let mut sizes = Vec::with_capacity(n);
        let mut pointers = Vec::with_capacity(n);
        for i in 0..n {
            let size = i32_at(&idx, HEADER_LEN + 4 * i);
            let size = usize::try_from(size)
                .map_err(|_| bad("sizes", format!("item {i} has a negative size {size}")))?;
            let ptr = u64_at(&idx, ptr_base + 8 * i) as i64;
            let ptr = usize::try_from(ptr)
                .map_err(|_| bad("pointers", format!("item {i} has a negative pointer {ptr}")))?;
            if ptr % el != 0 {
                return Err(bad(
                    "pointers",
                    format!("item {i}: {ptr} is not a multiple of the element size {el}"),
                ));
            }
            let end = size.checked_mul(el).and_then(|b| b.checked_add(ptr));
            match end {
                Some(end) if end <= bin.len() => {}
                _ => {
                    return Err(Error::IndexedData {
                        path: bin_path.clone(),
                        field: "length",
                        message: format!(
                            "item {i} (pointer {ptr}, {size} elements of {el} bytes) ends past \
                             the file's {} bytes: truncated, or not this index's data",
                            bin.len()
                        ),
                    });
                }
            }
            sizes.push(size);
            pointers.push(ptr);
        }
        Ok(Self { idx_path, bin_path, dtype, sizes, pointers, bin })
    }

    /// Number of items (sentences).
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

    /// Elements per item (EOS included for fairseq's text datasets).
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The `.idx` path.
    pub fn index_path(&self) -> &Path {
        &self.idx_path
    }

    /// The `.bin` path.
    pub fn data_path(&self) -> &Path {
        &self.bin_path
    }

    /// Item `i`'s ids; `None` past the end. Fails for a value that is not a token id
    /// (negative or above `u32::MAX`, possible only in signed or 64-bit files).
    pub fn get(&self, i: usize) -> Option<Result<Vec<u32>>> {
        let (&size, &start) = (self.sizes.get(i)?, self.pointers.get(i)?);
        let el = self.dtype.size();
        // In bounds: checked in `open`.
        let bytes = &self.bin[start..start + size * el];
        Some(
            bytes
                .chunks_exact(el)
                .map(|c| {
                    let v = self.dtype.decode(c);
                    u32::try_from(v).map_err(|_| Error::IndexedData {
                        path: self.bin_path.clone(),
                        field: "ids",
                        message: format!("item {i} holds {v}, which is not a token id"),
                    })
                })
                .collect(),
        )
    }

    /// All items' ids, in order.
    pub fn read_all(&self) -> Result<Vec<Vec<u32>>> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a dataset in fairseq's layout (uint16 ids) and returns its prefix.
    fn write(dir: &Path, items: &[&[u16]]) -> std::io::Result<PathBuf> {
        let prefix = dir.join("test.a-b.a");
        let mut idx = MAGIC.to_vec();
        idx.extend_from_slice(&VERSION.to_le_bytes());
        idx.push(DType::U16.code());
        idx.extend_from_slice(&(items.len() as u64).to_le_bytes());
        let mut bin = Vec::new();
        let mut ptrs = Vec::new();
        for item in items {
            idx.extend_from_slice(&(item.len() as i32).to_le_bytes());
            ptrs.push(bin.len() as i64);
            for id in *item {
                bin.extend_from_slice(&id.to_le_bytes());
            }
        }
        for p in ptrs {
            idx.extend_from_slice(&p.to_le_bytes());
        }
        std::fs::write(index_path(&prefix), idx)?;
        std::fs::write(data_path(&prefix), bin)?;
        Ok(prefix)
    }

    #[test]
    fn reads_back_what_was_written_and_rejects_damage()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let prefix = write(tmp.path(), &[&[4, 5, 2], &[2], &[70, 2]])?;
        let d = IndexedDataset::open(&prefix)?;
        assert_eq!(d.read_all()?, vec![vec![4, 5, 2], vec![2], vec![70, 2]]);
        assert_eq!(d.sizes(), &[3, 1, 2]);

        let bin = std::fs::read(data_path(&prefix))?;
        std::fs::write(data_path(&prefix), &bin[..bin.len() - 1])?;
        let e = IndexedDataset::open(&prefix).err().ok_or("truncated .bin accepted")?;
        assert!(
            e.to_string().contains("test.a-b.a.bin") && e.to_string().contains("length"),
            "{e}"
        );
        std::fs::write(data_path(&prefix), &bin)?;

        let idx = std::fs::read(index_path(&prefix))?;
        let mut v = idx.clone();
        v[9] = 2;
        std::fs::write(index_path(&prefix), &v)?;
        let e = IndexedDataset::open(&prefix).err().ok_or("version 2 accepted")?;
        assert!(e.to_string().contains("version"), "{e}");
        let mut v = idx.clone();
        v[17] = 6;
        std::fs::write(index_path(&prefix), &v)?;
        let e = IndexedDataset::open(&prefix).err().ok_or("float dtype accepted")?;
        assert!(e.to_string().contains("dtype"), "{e}");
        std::fs::write(index_path(&prefix), &idx[..idx.len() - 3])?;
        let e = IndexedDataset::open(&prefix).err().ok_or("short .idx accepted")?;
        assert!(e.to_string().contains("test.a-b.a.idx") && e.to_string().contains("count"), "{e}");
        Ok(())
    }
}
