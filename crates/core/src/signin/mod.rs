//! Signing in: the login state machine, the commands that complete a first factor (password,
//! magic link, email code) and the second (`MFA.VERIFY`).

pub mod auth;
pub mod login;
pub mod magic;
pub mod mfa;
pub mod otp;
pub mod passkey;
pub mod ticket;
