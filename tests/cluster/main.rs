//! Several `portcullis serve` nodes on one PostgreSQL database, over real sockets: what one node
//! does, every other node sees on the very next command.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The harness is shared with the black-box suite; this suite uses part of it.
#![allow(dead_code)]

#[path = "../blackbox/harness.rs"]
mod harness;
#[path = "../blackbox/mail.rs"]
mod inbox;

mod failures;
mod log;
mod mail;
mod sessions;
mod single_use;
mod transfer;
