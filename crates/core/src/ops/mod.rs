//! Operating the server: system commands, the event log's commands and retention, periodic
//! housekeeping, and the offline master-key rotation.

pub mod housekeeping;
pub mod log;
pub mod rekey;
pub mod retention;
pub mod sys;
