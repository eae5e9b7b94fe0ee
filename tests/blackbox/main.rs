//! Black-box tests: the real `portcullis` binary over real sockets on 127.0.0.1.

mod accounts;
mod cli;
mod harness;
mod log;
mod spec;
mod transport;
