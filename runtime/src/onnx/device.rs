//! Where a model runs: the execution provider (`--device cpu|cuda|tensorrt`) and the memory
//! the decoder's cache lives in.
//!
//! A provider that is asked for explicitly must work: registration uses ort's
//! `error_on_failure`, so asking for CUDA from a CPU-only ONNX Runtime build is an
//! [`Error::ExecutionProvider`] naming the provider and listing what the loaded library offers,
//! never a silent CPU fallback.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ort::ep::{self, ExecutionProvider};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::SessionBuilder;

use crate::{Error, Result};

/// The execution provider sessions are built for.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Device {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// The CUDA provider on GPU `device_id`.
    Cuda {
        /// CUDA device ordinal.
        device_id: i32,
    },
    /// The TensorRT provider on GPU `device_id` (CUDA runs the nodes TensorRT does not take).
    TensorRt {
        /// CUDA device ordinal.
        device_id: i32,
        /// Let TensorRT build FP16 kernels (`trt_fp16_enable`), also for an FP32 export.
        fp16: bool,
        /// Folder where built engines are cached between runs (`trt_engine_cache_path`);
        /// `None` rebuilds engines at every start.
        engine_cache: Option<PathBuf>,
    },
}

impl Device {
    /// `cpu`, `cuda` or `tensorrt`.
    pub fn name(&self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda { .. } => "cuda",
            Device::TensorRt { .. } => "tensorrt",
        }
    }

    /// Whether the decoder's cache lives in GPU memory.
    pub fn is_gpu(&self) -> bool {
        !matches!(self, Device::Cpu)
    }

    /// The memory the decoder's cache (`present_*`) and the row-ordered cross-attention inputs
    /// are kept in: the GPU for CUDA and TensorRT, else host memory.
    pub fn cache_memory(&self) -> Result<MemoryInfo<'static>> {
        let info = match self {
            Device::Cpu => MemoryInfo::new(
                AllocationDevice::CPU,
                0,
                AllocatorType::Device,
                MemoryType::Default,
            )?,
            Device::Cuda { device_id } | Device::TensorRt { device_id, .. } => MemoryInfo::new(
                AllocationDevice::CUDA,
                *device_id,
                AllocatorType::Device,
                MemoryType::Default,
            )?,
        };
        Ok(info)
    }

    /// Host memory (where `log_probs` are read).
    pub fn host_memory() -> Result<MemoryInfo<'static>> {
        Ok(MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)?)
    }

    /// Registers this device's providers on `builder`, failing (not falling back) when one
    /// cannot be registered.
    pub(crate) fn register(&self, builder: SessionBuilder) -> Result<SessionBuilder> {
        let providers = match self {
            Device::Cpu => return Ok(builder),
            Device::Cuda { device_id } => {
                vec![ep::CUDA::default().with_device_id(*device_id).build().error_on_failure()]
            }
            Device::TensorRt { device_id, fp16, engine_cache } => {
                let mut trt = ep::TensorRT::default().with_device_id(*device_id).with_fp16(*fp16);
                if let Some(dir) = engine_cache {
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(dir.display())
                        .with_timing_cache(true)
                        .with_timing_cache_path(dir.display());
                }
                vec![
                    trt.build().error_on_failure(),
                    ep::CUDA::default().with_device_id(*device_id).build().error_on_failure(),
                ]
            }
        };
        builder.with_execution_providers(providers).map_err(|e| Error::ExecutionProvider {
            provider: self.name(),
            message: e.message().to_string(),
            available: available_providers(),
        })
    }
}

/// The providers the loaded ONNX Runtime library was built with, for error messages.
pub fn available_providers() -> String {
    let mut out = vec!["CPUExecutionProvider"];
    if ep::CUDA::is_available().unwrap_or(false) {
        out.push("CUDAExecutionProvider");
    }
    if ep::TensorRT::is_available().unwrap_or(false) {
        out.push("TensorrtExecutionProvider");
    }
    out.join(", ")
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda { device_id } => write!(f, "cuda:{device_id}"),
            Device::TensorRt { device_id, fp16, .. } => {
                write!(f, "tensorrt:{device_id}{}", if *fp16 { " (fp16)" } else { "" })
            }
        }
    }
}

/// Parses `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N` (TensorRT options are set on the
/// returned value by the caller).
impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, id) = match s.split_once(':') {
            Some((name, id)) => {
                let id: i32 = id
                    .parse()
                    .map_err(|_| format!("device `{s}`: `{id}` is not a device number"))?;
                (name, id)
            }
            None => (s, 0),
        };
        match name {
            "cpu" if id == 0 => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda { device_id: id }),
            "tensorrt" | "trt" => {
                Ok(Device::TensorRt { device_id: id, fp16: false, engine_cache: None })
            }
            _ => Err(format!("unknown device `{s}` (expected cpu, cuda[:N] or tensorrt[:N])")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert_eq!("cuda:1".parse::<Device>(), Ok(Device::Cuda { device_id: 1 }));
        assert!(matches!("tensorrt".parse::<Device>(), Ok(Device::TensorRt { device_id: 0, .. })));
        assert!("tpu".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
    }
}
