//! The ways to prove who you are, one folder each: TOTP (with recovery codes), passkeys, and
//! email (links and codes). Each owns its records and the commands that manage it.

pub mod email;
pub mod passkey;
pub mod totp;
