//! Services the domains share: the data directory (`node`), rate limits and failure delays,
//! metrics, the event tail, the command registry, events the server records on its own behalf,
//! and the mail queue with its templates.

pub mod internal_event;
pub mod limits;
pub mod mail;
pub mod node;
pub mod notice;
pub mod records;
pub mod registry;
pub mod tail;
pub mod telemetry;
