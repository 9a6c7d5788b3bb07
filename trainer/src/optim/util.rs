//! Helpers shared by the optimizers and schedulers: JSON configs, state-entry names, scalar
//! state tensors, exact `f64` serialization and the fp32 view of a parameter.

use serde::Serialize;
use serde::de::DeserializeOwned;
use tch::{Device, Kind, Tensor};

use super::Error;

/// Reads a `clap::Args` config from parsed flags and returns it as JSON.
pub(crate) fn config_from_matches<C>(
    component: &'static str,
    matches: &clap::ArgMatches,
) -> Result<serde_json::Value, Error>
where
    C: clap::FromArgMatches + Serialize,
{
    let cfg = C::from_arg_matches(matches).map_err(|source| Error::Args { component, source })?;
    to_json(component, &cfg)
}

/// Serializes a config or state as JSON.
pub(crate) fn to_json<T: Serialize>(
    component: &'static str,
    value: &T,
) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|source| Error::Json { component, source })
}

/// Deserializes a config or state from JSON.
pub(crate) fn from_json<T: DeserializeOwned>(
    component: &'static str,
    value: &serde_json::Value,
) -> Result<T, Error> {
    T::deserialize(value).map_err(|source| Error::Json { component, source })
}

/// `x >= min`, false for NaN.
pub(crate) fn at_least(x: f64, min: f64) -> bool {
    x >= min
}

/// `x > min`, false for NaN.
pub(crate) fn above(x: f64, min: f64) -> bool {
    x > min
}

/// A configuration error.
pub(crate) fn config_error(component: &'static str, message: impl Into<String>) -> Error {
    Error::Config { component, message: message.into() }
}

/// A state error.
pub(crate) fn state_error(
    component: &'static str,
    key: impl Into<String>,
    message: impl Into<String>,
) -> Error {
    Error::State { component, key: key.into(), message: message.into() }
}

/// The name of a per-parameter state entry: `"<optimizer>.<field>.<parameter>"`.
pub(crate) fn param_key(optimizer: &str, field: &str, param: &str) -> String {
    format!("{optimizer}.{field}.{param}")
}

/// Splits `"<optimizer>.<field>.<parameter>"` into (field, parameter); `None` when `key` does not
/// start with `"<optimizer>."` or has no parameter part.
pub(crate) fn split_param_key<'a>(optimizer: &str, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(optimizer)?.strip_prefix('.')?;
    let (field, param) = rest.split_once('.')?;
    if field.is_empty() || param.is_empty() {
        return None;
    }
    Some((field, param))
}

/// A 0-dim int64 CPU tensor holding a step counter.
pub(crate) fn step_tensor(step: u64) -> Tensor {
    // Step counts stay far below 2^63.
    Tensor::from(i64::try_from(step).unwrap_or(i64::MAX))
}

/// Reads a step counter saved by [`step_tensor`].
pub(crate) fn read_step(component: &'static str, key: &str, t: &Tensor) -> Result<u64, Error> {
    if t.numel() != 1 {
        return Err(state_error(
            component,
            key,
            format!("expected one value, found shape {:?}", t.size()),
        ));
    }
    let v = t.f_reshape([1])?.f_int64_value(&[0])?;
    u64::try_from(v).map_err(|_| state_error(component, key, format!("negative step {v}")))
}

/// A 0-dim float64 CPU tensor holding an optimizer-wide value.
pub(crate) fn f64_tensor(v: f64) -> Tensor {
    Tensor::from(v)
}

/// Reads a value saved by [`f64_tensor`].
pub(crate) fn read_f64(component: &'static str, key: &str, t: &Tensor) -> Result<f64, Error> {
    if t.numel() != 1 || t.kind() != Kind::Double {
        return Err(state_error(
            component,
            key,
            format!("expected one float64 value, found {:?} of shape {:?}", t.kind(), t.size()),
        ));
    }
    Ok(t.f_reshape([1])?.f_double_value(&[0])?)
}

/// A private copy of a loaded state tensor (detached, contiguous, same device and dtype).
pub(crate) fn copy_state(t: &Tensor) -> Result<Tensor, Error> {
    Ok(t.f_detach()?.f_detach_copy()?.f_contiguous()?)
}

/// Moves a state tensor to `device`/`kind` when it is elsewhere (fairseq's `state.to(p)`), and
/// checks its shape.
pub(crate) fn align_state(
    component: &'static str,
    key: impl FnOnce() -> String,
    t: &mut Tensor,
    shape: &[i64],
    device: Device,
    kind: Kind,
) -> Result<(), Error> {
    if t.size() != shape {
        return Err(state_error(
            component,
            key(),
            format!("saved shape {:?} does not match the parameter's {:?}", t.size(), shape),
        ));
    }
    if t.device() != device || t.kind() != kind {
        *t = t.f_to_device_(device, kind, false, false)?;
    }
    Ok(())
}

/// Whether `kind` is a 16-bit float that fairseq updates through an fp32 copy.
fn is_half(kind: Kind) -> bool {
    matches!(kind, Kind::Half | Kind::BFloat16)
}

/// The fp32 gradient of a parameter (`None` when it has none), as fairseq's
/// `grad.float() if grad.dtype in {fp16, bf16}`.
pub(crate) fn fp32_grad(p: &Tensor) -> Result<Option<Tensor>, Error> {
    let g = p.f_grad()?;
    if !g.defined() {
        return Ok(None);
    }
    if is_half(g.kind()) { Ok(Some(g.f_to_kind(Kind::Float)?)) } else { Ok(Some(g)) }
}

/// Runs `update` on the fp32 data of `p` (`p` itself, or an fp32 copy that is written back for
/// fp16/bf16 parameters), as fairseq's `p_data_fp32`.
pub(crate) fn with_fp32_data(
    p: &Tensor,
    update: impl FnOnce(&mut Tensor) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut data = p.f_detach()?;
    if is_half(data.kind()) {
        let mut p32 = data.f_to_kind(Kind::Float)?;
        update(&mut p32)?;
        data.f_copy_(&p32)?;
    } else {
        update(&mut data)?;
    }
    Ok(())
}

/// Serde for `f64` that round-trips exactly (and allows `inf`/`NaN`): written as the shortest
/// decimal string that parses back to the same bits; numbers are accepted when reading.
///
/// serde_json's default float parser may be off by one ulp, which would break bit-exact resume.
pub(crate) mod exact_f64 {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `v` as a string.
    pub(crate) fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{v:?}"))
    }

    /// Reads a string (exact) or a number.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Text(String),
            Number(f64),
        }
        match Repr::deserialize(d)? {
            Repr::Text(t) => t.trim().parse::<f64>().map_err(serde::de::Error::custom),
            Repr::Number(v) => Ok(v),
        }
    }

    /// The same for `Option<f64>` (`null` is `None`).
    pub(crate) mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some(v)` as a string, `None` as `null`.
        pub(crate) fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        /// Reads `null`, a string or a number.
        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<f64>, D::Error> {
            #[derive(Deserialize)]
            struct Wrap(#[serde(with = "super")] f64);
            Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
        }
    }
}
