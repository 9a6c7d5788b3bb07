//! A checkpoint's `model.safetensors`, read without libtorch: every tensor under its fairseq
//! name, converted to f32, checked for shape as the graph builder asks for it, and a final
//! check that no tensor was left unexplained by the configuration.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One tensor of the file.
#[derive(Debug, Clone)]
enum Tensor {
    /// A floating tensor: its shape and its values in f32.
    Float { shape: Vec<usize>, data: Vec<f32> },
    /// A tensor of another dtype (never a model weight).
    Other { dtype: Dtype },
}

/// The tensors of a `model.safetensors`.
#[derive(Debug)]
pub struct Weights {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
    used: RefCell<BTreeSet<String>>,
    sha256: String,
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Weights {
    /// Reads `path`; floating tensors (f32, f16, bf16, f64) become f32, others are kept out of
    /// reach (asking for one is a dtype error naming it).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::error::read_checkpoint_file(path)?;
        let sha256 = sha256_hex(&bytes);
        Self::from_bytes(path, &bytes, sha256)
    }

    /// Parses safetensors `bytes`; `path` names the file in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8], sha256: String) -> Result<Self> {
        let parsed = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Safetensors { path: path.to_path_buf(), message: e.to_string() })?;
        let mut tensors = HashMap::new();
        for (name, view) in parsed.tensors() {
            let raw = view.data();
            let data: Option<Vec<f32>> = match view.dtype() {
                Dtype::F32 => Some(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                Dtype::F16 => Some(
                    raw.chunks_exact(2)
                        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::BF16 => Some(
                    raw.chunks_exact(2)
                        .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                        .collect(),
                ),
                Dtype::F64 => Some(
                    raw.chunks_exact(8)
                        .map(|c| {
                            let mut b = [0u8; 8];
                            b.copy_from_slice(c);
                            f64::from_le_bytes(b) as f32
                        })
                        .collect(),
                ),
                _ => None,
            };
            let tensor = match data {
                Some(data) => Tensor::Float { shape: view.shape().to_vec(), data },
                None => Tensor::Other { dtype: view.dtype() },
            };
            tensors.insert(name, tensor);
        }
        Ok(Self { path: path.to_path_buf(), tensors, used: RefCell::new(BTreeSet::new()), sha256 })
    }

    /// Tensors already in memory as `(name, shape, f32 values)` (a fairseq checkpoint read by
    /// [`seqforge_fairseq`]); `path` names their source in errors, `sha256` identifies them.
    pub fn from_f32(
        path: &Path,
        tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
        sha256: String,
    ) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(name, shape, data)| (name, Tensor::Float { shape, data }))
            .collect();
        Self { path: path.to_path_buf(), tensors, used: RefCell::new(BTreeSet::new()), sha256 }
    }

    /// The file's SHA-256 (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file holds `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The values of tensor `name`, which must have exactly `shape` and a float dtype.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<&[f32]> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let (found, data) = match t {
            Tensor::Float { shape, data } => (shape, data),
            Tensor::Other { dtype } => {
                return Err(Error::BadTensor {
                    path: self.path.clone(),
                    tensor: name.to_string(),
                    message: format!("has dtype {dtype:?}, expected f32 (or f16/bf16/f64)"),
                });
            }
        };
        if found != shape {
            return Err(Error::BadTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
                message: format!("has shape {found:?}, the model config needs {shape:?}"),
            });
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(data)
    }

    /// Fails with every tensor that was never asked for and that `ignorable` does not accept
    /// (buffers such as `encoder.version`).
    pub fn check_all_used(&self, ignorable: impl Fn(&str) -> bool) -> Result<()> {
        let used = self.used.borrow();
        let mut unused: Vec<String> =
            self.tensors.keys().filter(|n| !used.contains(*n) && !ignorable(n)).cloned().collect();
        if unused.is_empty() {
            return Ok(());
        }
        unused.sort();
        Err(Error::UnexpectedTensors { path: self.path.clone(), tensors: unused })
    }
}

/// A row-major `[rows, cols]` matrix transposed to `[cols, rows]` (PyTorch's `[out, in]`
/// linear weights become `[in, out]` for `MatMul`).
pub fn transpose<T: Copy + Default>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = vec![T::default(); m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;

    #[test]
    fn float_dtypes_convert_and_others_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let f16s: Vec<u8> =
            [1.5f32, -2.0].iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect();
        let bf16s: Vec<u8> =
            [0.25f32].iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect();
        let ints: Vec<u8> = [7i64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let views = vec![
            ("a", TensorView::new(Dtype::F16, vec![2], &f16s)?),
            ("b", TensorView::new(Dtype::BF16, vec![1, 1], &bf16s)?),
            ("steps", TensorView::new(Dtype::I64, vec![1], &ints)?),
        ];
        let bytes = safetensors::serialize(views, None)?;
        let w = Weights::from_bytes(Path::new("m.safetensors"), &bytes, sha256_hex(&bytes))?;
        assert_eq!(w.get("a", &[2])?, &[1.5, -2.0]);
        assert_eq!(w.get("b", &[1, 1])?, &[0.25]);
        let e = w.get("b", &[1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("`b`") && e.contains("[1, 1]") && e.contains("m.safetensors"), "{e}");
        let e = w.get("steps", &[1]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("`steps`") && e.contains("I64"), "{e}");
        let e = w.check_all_used(|n| n == "steps").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.is_empty(), "{e}");
        let e = w.check_all_used(|_| false).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("steps"), "{e}");
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        Ok(())
    }
}
