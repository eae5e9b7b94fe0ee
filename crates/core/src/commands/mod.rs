//! Command handlers, one module per command family. Each module exposes `specs()`, the registry
//! entries of its commands.

pub mod admin;
pub mod auth;
pub mod log;
pub mod magic;
pub mod mfa;
pub mod otp;
pub mod passkey;
pub mod session;
pub mod sys;
pub mod totp;
pub mod user;

use crate::Registry;

/// The registry of every command this build serves.
pub fn registry() -> Registry {
    Registry::default()
        .with(sys::specs())
        .with(log::specs())
        .with(auth::specs())
        .with(user::specs())
        .with(session::specs())
        .with(magic::specs())
        .with(otp::specs())
        .with(totp::specs())
        .with(mfa::specs())
        .with(passkey::specs())
        .with(admin::specs())
}
