//! The Portcullis wire protocol.
//!
//! This crate is the only definition of the request and response envelopes, the closed set of
//! error codes, the audit event and the params/result types of every command. The server, the
//! Rust client, the CLI and the tests all import it, so they cannot drift apart. The
//! language-neutral description of the same protocol lives in `protocol/` at the top of the
//! repository; a test keeps the two in agreement.

#![warn(missing_docs)]

pub mod codec;
pub mod commands;
mod envelope;
mod error;
mod event;
mod schema;
mod secret;

pub use envelope::{ForwardedClient, Request, RequestId, Response};
pub use error::{ErrorBody, ErrorCode};
pub use event::{canonical_json, hash_value, Actor, Event, GENESIS_HASH};
pub use secret::Secret;

/// Default upper bound on one frame (one NDJSON line or one HTTP body), in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 64 * 1024;

/// Version of the wire protocol described by this crate and by `protocol/`.
pub const PROTOCOL_VERSION: u32 = 1;
