//! The top layer: the one dispatcher every transport calls, and the one list of every command
//! this build serves (each handler module exposes `specs()`, the registry entries of its
//! commands).

pub mod dispatcher;
#[cfg(test)]
mod protocol_spec;

use crate::{account, admin, factors, ops, signin, Registry};

/// The registry of every command this build serves.
pub fn registry() -> Registry {
    Registry::default()
        .with(ops::sys::specs())
        .with(ops::log::specs())
        .with(signin::auth::specs())
        .with(account::user::specs())
        .with(account::session::specs())
        .with(signin::magic::specs())
        .with(signin::otp::specs())
        .with(factors::totp::commands::specs())
        .with(signin::mfa::specs())
        .with(factors::recovery::commands::specs())
        .with(factors::passkey::commands::specs())
        .with(signin::passkey::specs())
        .with(admin::bootstrap::specs())
        .with(admin::users::specs())
        .with(admin::apikeys::specs())
        .with(admin::keys::specs())
}
