//! skerry-aws-json: the AWS JSON 1.1 protocol as the hub serves it and its clients (the
//! `skerry` CLI, the load generator, tests) send it. Small on purpose: the CLI depends on it
//! instead of on the hub.
//!
//! # Layout
//! - `target`: the services (`X-Amz-Target` prefixes and SigV4 signing names) and the
//!   content type.
//! - `error`: the error shape (`__type` and `message`), written and read.
//! - `sigv4`: AWS Signature Version 4: signing (`authorization`) and verification
//!   (`verify`) of the `Authorization` header form.

pub mod error;
pub mod sigv4;
pub mod target;

pub use error::ApiError;
pub use target::{parse_target, Service, CONTENT_TYPE};
