//! Files written by `torch.save`, read without libtorch or Python: the zip format (torch ≥ 1.6:
//! `<archive>/data.pkl`, `<archive>/byteorder`, one `<archive>/data/<key>` entry per storage)
//! and the legacy format before it (a magic number, a protocol version and a `sys_info`
//! pickle, then the object's pickle, the list of storage keys, and each storage as a u64
//! element count followed by its bytes).
//!
//! The object's pickle is read by the safe [`crate::pickle`] reader; tensors come out as
//! [`TensorRef`]s (a storage key, element type, offset, shape and strides) and no storage is
//! read until [`TorchFile::read_f32`] asks for it, so the optimizer state a checkpoint also
//! holds costs nothing. Every offset, shape and stride is checked against the storage's size,
//! and the storage's size against the bytes the file holds, before anything is allocated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};

use crate::error::{Error, Result};
use crate::pickle::{DType, Global, PickleError, Unpickler, Value};

/// A tensor of the file: a strided view of a storage, not yet read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The storage's key (its zip entry `data/<key>`, or its legacy key).
    pub storage: String,
    /// The element type.
    pub dtype: DType,
    /// Offset of the first element in the storage, in elements.
    pub offset: usize,
    /// The shape.
    pub shape: Vec<usize>,
    /// The strides, in elements.
    pub stride: Vec<usize>,
}

impl TensorRef {
    /// Number of elements (saturating; a [`TorchFile::tensor`] never overflows).
    pub fn numel(&self) -> usize {
        self.shape.iter().fold(1usize, |n, &d| n.saturating_mul(d))
    }

    /// Rows `start..start + len` of the first dimension (a view of the same storage).
    pub fn rows(&self, start: usize, len: usize) -> Option<TensorRef> {
        let (&rows, &stride) = (self.shape.first()?, self.stride.first()?);
        if start.checked_add(len)? > rows {
            return None;
        }
        let mut t = self.clone();
        t.offset = self.offset.checked_add(start.checked_mul(stride)?)?;
        t.shape[0] = len;
        Some(t)
    }

    /// Whether the view is row-major contiguous (dimensions of size 1 may have any stride).
    pub fn is_contiguous(&self) -> bool {
        let mut expected = 1usize;
        for (&n, &s) in self.shape.iter().zip(&self.stride).rev() {
            if n != 1 && s != expected {
                return false;
            }
            expected = expected.saturating_mul(n);
        }
        true
    }

    /// One past the largest element index the view touches (0 for an empty tensor), or `None`
    /// on overflow.
    fn span(&self) -> Option<usize> {
        if self.numel() == 0 {
            return Some(0);
        }
        let mut last = self.offset;
        for (&n, &s) in self.shape.iter().zip(&self.stride) {
            last = last.checked_add((n - 1).checked_mul(s)?)?;
        }
        last.checked_add(1)
    }
}

/// Where a storage's bytes are.
#[derive(Debug, Clone)]
struct StorageInfo {
    dtype: DType,
    /// Elements.
    numel: usize,
    /// Legacy format: byte offset of the data in the file.
    file_offset: Option<u64>,
}

#[derive(Debug)]
enum Container {
    Zip { archive: zip::ZipArchive<File>, prefix: String },
    Legacy { file: File },
}

/// A `torch.save` file: its object as a [`Value`] tree and its storages, read on demand.
#[derive(Debug)]
pub struct TorchFile {
    path: PathBuf,
    container: Container,
    root: Value,
    storages: HashMap<String, StorageInfo>,
    file_len: u64,
}

/// The magic number torch's legacy format starts with (a pickled int).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

impl TorchFile {
    /// Opens and parses `path` (zip or legacy format); storages are read later.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file = File::open(&path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut head = [0u8; 4];
        let n = file.read(&mut head).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        if n == 4 && head == *b"PK\x03\x04" {
            Self::open_zip(path, file, file_len)
        } else if n >= 2 && head[0] == 0x80 {
            Self::open_legacy(path, file, file_len)
        } else {
            Err(Error::NotACheckpoint {
                path,
                message: "neither a zip archive nor a legacy torch.save file (is it a \
                          checkpoint written by torch.save?)"
                    .into(),
            })
        }
    }

    fn open_zip(path: PathBuf, file: File, file_len: u64) -> Result<Self> {
        let zip_err = |e: zip::result::ZipError| Error::NotACheckpoint {
            path: path.clone(),
            message: format!("unreadable zip archive (truncated?): {e}"),
        };
        let mut archive = zip::ZipArchive::new(file).map_err(zip_err)?;
        let pkl = archive
            .file_names()
            .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(str::to_string)
            .ok_or_else(|| Error::NotACheckpoint {
                path: path.clone(),
                message: "a zip archive without data.pkl: not written by torch.save".into(),
            })?;
        let prefix = pkl.strip_suffix("data.pkl").unwrap_or_default().to_string();
        let byteorder = match archive.by_name(&format!("{prefix}byteorder")) {
            Ok(mut f) => {
                let mut s = String::new();
                f.by_ref()
                    .take(16)
                    .read_to_string(&mut s)
                    .map_err(|source| Error::Io { path: path.clone(), source })?;
                s
            }
            Err(_) => "little".into(),
        };
        if byteorder.trim() != "little" {
            return Err(Error::NotACheckpoint {
                path,
                message: format!("byte order {byteorder:?}: only little-endian files are read"),
            });
        }
        let bytes = read_entry(&mut archive, &pkl, &path, file_len)?;
        let (root, _) = Unpickler::load(&bytes).map_err(|e| pickle_err(&path, &pkl, e))?;
        let mut t = TorchFile {
            path,
            container: Container::Zip { archive, prefix },
            root: Value::None,
            storages: HashMap::new(),
            file_len,
        };
        t.root = t.collect_storages(root, false)?;
        Ok(t)
    }

    fn open_legacy(path: PathBuf, mut file: File, file_len: u64) -> Result<Self> {
        // Read a growing prefix until the five pickles parse (they precede the storages).
        let io = |source| Error::Io { path: path.clone(), source };
        let mut want: u64 = 1 << 20;
        loop {
            let len = want.min(file_len);
            let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.seek(SeekFrom::Start(0)).map_err(io)?;
            file.by_ref().take(len).read_to_end(&mut buf).map_err(io)?;
            match Self::parse_legacy_pickles(&path, &buf) {
                Ok((root, keys, end)) => {
                    let mut t = TorchFile {
                        path,
                        container: Container::Legacy { file },
                        root: Value::None,
                        storages: HashMap::new(),
                        file_len,
                    };
                    t.root = t.collect_storages(root, true)?;
                    t.locate_legacy_storages(&keys, end as u64)?;
                    return Ok(t);
                }
                Err(Error::Pickle { source: PickleError::Truncated { .. }, .. })
                    if len < file_len =>
                {
                    want = want.saturating_mul(4);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The legacy header: magic, protocol 1001, sys_info, the object, the storage keys.
    fn parse_legacy_pickles(path: &Path, buf: &[u8]) -> Result<(Value, Vec<String>, usize)> {
        let what = "the legacy header";
        let mut at = 0;
        let next = |at: &mut usize| -> Result<Value> {
            let (v, n) = Unpickler::load(&buf[*at..]).map_err(|e| pickle_err(path, what, e))?;
            *at += n;
            Ok(v)
        };
        let magic = next(&mut at)?;
        if magic != Value::BigInt(LEGACY_MAGIC.to_vec()) {
            return Err(Error::NotACheckpoint {
                path: path.to_path_buf(),
                message: "a pickle without torch's magic number: not written by torch.save".into(),
            });
        }
        let protocol = next(&mut at)?;
        if protocol.as_int() != Some(1001) {
            return Err(Error::NotACheckpoint {
                path: path.to_path_buf(),
                message: format!("legacy torch.save protocol {protocol:?} (this reads 1001)"),
            });
        }
        let sys_info = next(&mut at)?;
        if sys_info.get("little_endian") == Some(&Value::Bool(false)) {
            return Err(Error::NotACheckpoint {
                path: path.to_path_buf(),
                message: "a big-endian legacy file: only little-endian files are read".into(),
            });
        }
        let root = next(&mut at)?;
        let keys = match next(&mut at)? {
            Value::List(keys) => {
                keys.iter().map(|k| k.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()
            }
            _ => None,
        }
        .ok_or_else(|| Error::NotACheckpoint {
            path: path.to_path_buf(),
            message: "the legacy storage key list is not a list of strings".into(),
        })?;
        Ok((root, keys, at))
    }

    fn locate_legacy_storages(&mut self, keys: &[String], mut at: u64) -> Result<()> {
        let Container::Legacy { file } = &mut self.container else { return Ok(()) };
        for key in keys {
            let storage_err = |message: String| Error::Storage {
                path: self.path.clone(),
                key: key.clone(),
                message,
            };
            let info = self
                .storages
                .get_mut(key)
                .ok_or_else(|| storage_err("listed but never referred to".into()))?;
            let mut n = [0u8; 8];
            file.seek(SeekFrom::Start(at)).and_then(|_| file.read_exact(&mut n)).map_err(|_| {
                storage_err("the file ends before this storage (truncated?)".into())
            })?;
            let numel = u64::from_le_bytes(n);
            let bytes = numel
                .checked_mul(info.dtype.size() as u64)
                .filter(|&b| at + 8 + b <= self.file_len)
                .ok_or_else(|| storage_err(format!("{numel} elements do not fit in the file")))?;
            if numel < info.numel as u64 {
                return Err(storage_err(format!(
                    "{numel} elements stored, {} referred to",
                    info.numel
                )));
            }
            info.file_offset = Some(at + 8);
            at += 8 + bytes;
        }
        if let Some((key, _)) = self.storages.iter().find(|(_, s)| s.file_offset.is_none()) {
            return Err(Error::Storage {
                path: self.path.clone(),
                key: key.clone(),
                message: "referred to but not stored".into(),
            });
        }
        Ok(())
    }

    /// Replaces the persistent ids in `v` with storage objects and records each storage.
    fn collect_storages(&mut self, v: Value, legacy: bool) -> Result<Value> {
        Ok(match v {
            Value::PersistentId(pid) => {
                let bad = |m: &str| Error::Format {
                    path: self.path.clone(),
                    message: format!("a storage reference {m}: {pid:?}"),
                };
                let Value::Tuple(parts) = pid.as_ref() else { return Err(bad("not a tuple")) };
                if parts.first().and_then(Value::as_str) != Some("storage") || parts.len() < 5 {
                    return Err(bad("of an unknown kind"));
                }
                let Value::Global(Global::Storage(dtype)) = parts[1] else {
                    return Err(bad("without a storage type"));
                };
                let key = parts[2].as_str().ok_or_else(|| bad("without a key"))?.to_string();
                let mut numel = to_usize(&parts[4]).ok_or_else(|| bad("with a bad size"))?;
                let mut offset = 0;
                if legacy {
                    // (view_key, offset, size) when the tensor's storage was a view.
                    if let Some(Value::Tuple(view)) = parts.get(5) {
                        offset = view.get(1).and_then(to_usize).ok_or_else(|| bad("view"))?;
                        let size = view.get(2).and_then(to_usize).ok_or_else(|| bad("view"))?;
                        numel = numel.max(offset.checked_add(size).ok_or_else(|| bad("view"))?);
                    }
                }
                let info = self.storages.entry(key.clone()).or_insert(StorageInfo {
                    dtype,
                    numel,
                    file_offset: None,
                });
                if info.dtype != dtype {
                    return Err(bad("of two element types"));
                }
                info.numel = info.numel.max(numel);
                Value::Tuple(vec![
                    Value::Str("storage".into()),
                    Value::Str(key),
                    Value::Int(i64::try_from(offset).unwrap_or(i64::MAX)),
                ])
            }
            Value::List(items) => Value::List(self.collect_all(items, legacy)?),
            Value::Tuple(items) => Value::Tuple(self.collect_all(items, legacy)?),
            Value::Dict(entries) => Value::Dict(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((k, self.collect_storages(v, legacy)?)))
                    .collect::<Result<_>>()?,
            ),
            Value::Object { class, args, state } => Value::Object {
                class,
                args: self.collect_all(args, legacy)?,
                state: match state {
                    Some(s) => Some(Box::new(self.collect_storages(*s, legacy)?)),
                    None => None,
                },
            },
            other => other,
        })
    }

    fn collect_all(&mut self, items: Vec<Value>, legacy: bool) -> Result<Vec<Value>> {
        items.into_iter().map(|v| self.collect_storages(v, legacy)).collect()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved object (storages appear as `("storage", key, offset)` tuples inside tensor
    /// objects; use [`TorchFile::tensor`]).
    pub fn root(&self) -> &Value {
        &self.root
    }

    /// The tensor `v` (a `torch._utils._rebuild_tensor_v2` object), checked against its
    /// storage; `name` names it in errors.
    pub fn tensor(&self, name: &str, v: &Value) -> Result<TensorRef> {
        let bad = |message: String| Error::Format {
            path: self.path.clone(),
            message: format!("{name}: {message}"),
        };
        let Value::Object { class: Global::RebuildTensor, args, .. } = v else {
            return Err(bad(format!("not a tensor but {}", v.kind())));
        };
        let (Some(Value::Tuple(storage)), Some(offset), Some(Value::Tuple(shape)), Some(stride)) =
            (args.first(), args.get(1).and_then(to_usize), args.get(2), args.get(3))
        else {
            return Err(bad("a tensor rebuilt from unexpected arguments".into()));
        };
        let (Some(key), Some(view_offset)) =
            (storage.get(1).and_then(Value::as_str), storage.get(2).and_then(to_usize))
        else {
            return Err(bad("a tensor without a storage".into()));
        };
        let info = self.storages.get(key).ok_or_else(|| bad(format!("unknown storage {key}")))?;
        let ints = |v: &[Value]| v.iter().map(to_usize).collect::<Option<Vec<_>>>();
        let stride = match stride {
            Value::Tuple(s) => ints(s),
            _ => None,
        };
        let (Some(shape), Some(stride)) = (ints(shape), stride) else {
            return Err(bad("a shape or stride that is not a tuple of sizes".into()));
        };
        if shape.len() != stride.len() {
            return Err(bad(format!("shape {shape:?} and stride {stride:?} differ in rank")));
        }
        let t = TensorRef {
            storage: key.to_string(),
            dtype: info.dtype,
            offset: offset
                .checked_add(view_offset)
                .ok_or_else(|| bad("offset overflows".into()))?,
            shape,
            stride,
        };
        match t.span() {
            // A view never has more elements than its storage (no stride-0 expansions): what
            // reading it allocates is bounded by the file's size.
            Some(span) if span <= info.numel && t.numel() <= info.numel => Ok(t),
            _ => Err(bad(format!(
                "shape {:?} stride {:?} offset {} reaches past its storage of {} elements",
                t.shape, t.stride, t.offset, info.numel
            ))),
        }
    }

    /// Reads the storage bytes `[offset, offset + span)` elements of `t`'s storage.
    fn read_span(&mut self, t: &TensorRef, span: usize) -> Result<Vec<u8>> {
        let size = t.dtype.size();
        let storage_err = |message: String| Error::Storage {
            path: self.path.clone(),
            key: t.storage.clone(),
            message,
        };
        let info = self.storages.get(&t.storage).ok_or_else(|| storage_err("unknown".into()))?;
        let need =
            info.numel.checked_mul(size).ok_or_else(|| storage_err("size overflows".into()))?;
        match &mut self.container {
            Container::Zip { archive, prefix } => {
                let name = format!("{prefix}data/{}", t.storage);
                let mut bytes = read_entry(archive, &name, &self.path, self.file_len)?;
                if bytes.len() < need {
                    return Err(storage_err(format!(
                        "{} bytes stored, {need} needed (truncated?)",
                        bytes.len()
                    )));
                }
                let (start, end) = (t.offset * size, span * size);
                bytes.truncate(end);
                bytes.drain(..start.min(end));
                Ok(bytes)
            }
            Container::Legacy { file } => {
                let base = info.file_offset.ok_or_else(|| storage_err("not located".into()))?;
                let start = base + (t.offset * size) as u64;
                let len = (span - t.offset.min(span)) * size;
                let mut buf = Vec::with_capacity(len);
                file.seek(SeekFrom::Start(start))
                    .and_then(|_| file.by_ref().take(len as u64).read_to_end(&mut buf))
                    .map_err(|source| Error::Io { path: self.path.clone(), source })?;
                if buf.len() != len {
                    return Err(storage_err("the file ends inside this storage".into()));
                }
                Ok(buf)
            }
        }
    }

    /// The values of floating tensor `t` as f32 (f16, bf16 and f64 converted), in row-major
    /// order.
    pub fn read_f32(&mut self, name: &str, t: &TensorRef) -> Result<Vec<f32>> {
        if !t.dtype.is_float() {
            return Err(Error::Format {
                path: self.path.clone(),
                message: format!("{name}: a {:?} tensor where a floating one is expected", t.dtype),
            });
        }
        let span = t.span().unwrap_or(0);
        let bytes = self.read_span(t, span)?;
        let size = t.dtype.size();
        let value = |i: usize| -> f32 {
            let b = &bytes[i * size..(i + 1) * size];
            match t.dtype {
                DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                DType::F64 => {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_le_bytes(a) as f32
                }
                _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            }
        };
        let n = t.numel();
        if t.is_contiguous() {
            return Ok(match t.dtype {
                DType::F32 => bytes
                    .chunks_exact(4)
                    .take(n)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
                _ => (0..n).map(value).collect(),
            });
        }
        // Element indices relative to the span's start, in row-major order of the view.
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let rank = t.shape.len();
        let mut index = vec![0usize; rank];
        let mut at = 0usize;
        for _ in 0..n {
            out.push(value(at));
            for d in (0..rank).rev() {
                index[d] += 1;
                at += t.stride[d];
                if index[d] < t.shape[d] {
                    break;
                }
                at -= t.stride[d] * t.shape[d];
                index[d] = 0;
            }
        }
        Ok(out)
    }
}

fn to_usize(v: &Value) -> Option<usize> {
    v.as_int().and_then(|i| usize::try_from(i).ok())
}

fn pickle_err(path: &Path, what: &str, source: PickleError) -> Error {
    Error::Pickle { path: path.to_path_buf(), entry: what.to_string(), source }
}

/// The bytes of zip entry `name`: stored (uncompressed) entries only, as torch writes them,
/// so that no entry can expand beyond the file's size.
fn read_entry(
    archive: &mut zip::ZipArchive<File>,
    name: &str,
    path: &Path,
    file_len: u64,
) -> Result<Vec<u8>> {
    let not = |message: String| Error::NotACheckpoint { path: path.to_path_buf(), message };
    let mut entry =
        archive.by_name(name).map_err(|e| not(format!("zip entry {name}: {e} (truncated?)")))?;
    if entry.compression() != zip::CompressionMethod::Stored {
        return Err(not(format!(
            "zip entry {name} is compressed ({}); torch.save stores entries uncompressed",
            entry.compression()
        )));
    }
    let size = entry.size();
    if size > file_len {
        return Err(not(format!("zip entry {name} claims {size} bytes, more than the file")));
    }
    let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .by_ref()
        .take(size)
        .read_to_end(&mut buf)
        .map_err(|e| not(format!("zip entry {name}: {e} (truncated?)")))?;
    Ok(buf)
}
