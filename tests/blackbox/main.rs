//! Black-box tests: the real `portcullis` binary over real sockets on 127.0.0.1.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounts;
mod admin;
mod bench;
mod browser;
mod cli;
mod cors;
mod crash;
mod discovery;
mod edges;
mod email;
mod forward;
mod fuzz;
mod harness;
mod log;
mod mail;
mod mfa;
mod observability;
mod slow_client;
mod spec;
mod tls;
mod transport;
