//! Talking to S3-compatible stores: the SigV4 signer and the HTTP transport.

pub mod sigv4;
pub mod transport;
