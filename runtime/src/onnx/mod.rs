//! The ONNX Runtime backend: locating and loading the library ([`library`]) and building
//! sessions from model files ([`session`]).

pub mod library;
pub mod session;

pub use library::{LibraryOrigin, ORT_VERSION, environment, init, locate};
pub use session::{SessionConfig, load_session, load_session_from_memory};
