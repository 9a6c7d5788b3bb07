//! The ONNX Runtime backend: locating and loading the library ([`library`]) and building
//! sessions from model files ([`session`]) on an execution provider ([`device`]), and running
//! exported model directories ([`model`]: [`ModelDir`] and the [`OnnxDecoder`] the search drives).

pub mod device;
pub mod library;
pub mod model;
pub mod session;

pub use crate::decoding::lm_input;
pub use device::Device;
pub use library::{LibraryOrigin, ORT_VERSION, environment, init, locate};
pub use model::{ModelDir, OnnxDecoder, RuntimeOptions};
pub use session::load_session_on;
pub use session::{SessionConfig, load_session, load_session_from_memory};
