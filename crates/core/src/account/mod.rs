//! What a signed-in user does with their own account and sessions.

pub mod deletion;
pub mod session;
pub mod user;
