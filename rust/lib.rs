//! hashsync's core: parallel hashing (and later scanning and diffing) in pure Rust.
//!
//! Nothing here knows about Python; [`python`] (behind the `python` feature) is the only module
//! that converts types and errors and releases the GIL.

pub mod engine;
pub mod error;
pub mod etag;
pub mod hash;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
pub use hash::{Algorithm, Hasher, PartRule};
