//! Protobuf types shared by the seqforge crates, generated with prost at build time.
//!
//! - [`onnx`]: the ONNX IR (`ModelProto`, `GraphProto`, `NodeProto`, `TensorProto`, …), used by
//!   the exporter to write graphs and by tests to inspect them.
//! - [`arch`]: model families' hyper-parameters and fairseq's named architectures (no libtorch),
//!   read by the trainer and the exporter alike.
//! - [`contract`]: the exported model directory (file names, graph input/output names, the
//!   `metadata_props` keys, `manifest.json`, fairseq dictionaries) shared by exporter and runtime.

pub mod arch;
pub mod contract;

/// The ONNX IR, generated from `proto/onnx.proto` (onnx 1.23.2).
#[allow(missing_docs, clippy::all)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));

    /// The newest IR version ONNX Runtime 1.31 loads (the proto file itself says 14).
    pub const SUPPORTED_IR_VERSION: i64 = 10;
}

#[cfg(test)]
mod tests {
    use super::onnx::{ModelProto, TensorProto, tensor_proto::DataType};
    use prost::Message;

    #[test]
    fn model_round_trips_through_bytes() -> Result<(), prost::DecodeError> {
        let model = ModelProto {
            ir_version: Some(super::onnx::SUPPORTED_IR_VERSION),
            producer_name: Some("seqforge".into()),
            ..Default::default()
        };
        let bytes = model.encode_to_vec();
        assert_eq!(ModelProto::decode(bytes.as_slice())?, model);
        Ok(())
    }

    #[test]
    fn data_type_codes_match_the_onnx_spec() {
        // The numeric codes are part of the file format; a wrong one breaks every model.
        assert_eq!(DataType::Float as i32, 1);
        assert_eq!(DataType::Int64 as i32, 7);
        assert_eq!(DataType::Float16 as i32, 10);
        assert_eq!(DataType::Bfloat16 as i32, 16);
        let _ = TensorProto::default();
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let garbage = [0xffu8, 0xff, 0xff, 0xff, 0x0f, 0x01];
        assert!(ModelProto::decode(&garbage[..]).is_err());
    }
}
