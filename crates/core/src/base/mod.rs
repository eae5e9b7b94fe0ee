//! The bottom layer: what every other module may use and which uses nothing above it — time,
//! randomness, errors, the audit sink, the caller, cryptographic primitives and the master key,
//! and the configuration as plain data.

pub mod audit;
pub mod caller;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod random;
