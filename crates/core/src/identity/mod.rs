//! Who someone is and how long they stay signed in: accounts, passwords, sessions and refresh
//! rotation, access tokens and the signing-key ring, API keys, and the all-at-once changes of an
//! account with the records that depend on it.

pub mod accounts;
pub mod apikeys;
pub mod evict;
pub mod passwords;
pub mod sessions;
pub mod tokens;
