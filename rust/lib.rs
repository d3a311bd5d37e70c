//! hashsync's core: parallel hashing scanning with a hash state cache, and diffing in pure Rust.
//!
//! Nothing here knows about Python; [`python`] (behind the `python` feature) is the only module
//! that converts types and errors and releases the GIL.

pub mod beneath;
pub mod diff;
pub mod engine;
pub mod error;
pub mod etag;
pub mod filter;
pub mod hash;
pub mod listing;
pub mod md5x;
pub mod s3;
pub mod scan;
pub mod state;

#[cfg(feature = "python")]
mod python;
#[cfg(feature = "python")]
mod python_s3;

pub use error::{Error, Result};
pub use hash::{Algorithm, Hasher, PartRule};
