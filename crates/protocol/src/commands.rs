//! Params and result types of every command, one module per command family.
//!
//! Params types deny unknown fields: a misspelt member is `INVALID_PARAMS`, never silently
//! ignored. Result types are what the `data` member of a successful response holds.

/// `SYS.*`: liveness, server facts, the command registry.
pub mod sys {
    use serde::{Deserialize, Serialize};

    /// `SYS.PING`
    pub const PING: &str = "SYS.PING";
    /// `SYS.INFO`
    pub const INFO: &str = "SYS.INFO";
    /// `SYS.COMMANDS`
    pub const COMMANDS: &str = "SYS.COMMANDS";

    /// Params of commands that take none: `{}` or absent.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct NoParams {}

    /// `SYS.PING` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Pong {
        /// Always `true`.
        pub pong: bool,
    }

    /// `SYS.INFO` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Info {
        /// `"portcullis"`.
        pub name: String,
        /// Server version (semver).
        pub version: String,
        /// Wire protocol version.
        pub protocol: u32,
        /// Stable id of this node's data directory.
        pub node_id: String,
        /// When the process started (RFC 3339 UTC).
        pub started_at: String,
        /// Seconds since the process started.
        pub uptime_s: u64,
        /// Sequence number of the newest event in the log (0 when empty).
        pub log_head_seq: u64,
    }

    /// One registry entry, as listed by `SYS.COMMANDS`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct CommandInfo {
        /// Command name.
        pub name: String,
        /// Who may call it (`anyone`, `operator`, …).
        pub caller: String,
        /// Which rate limiter guards it.
        pub rate_class: String,
        /// Whether its outcomes are appended to the event log.
        pub logged: bool,
    }

    /// `SYS.COMMANDS` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Commands {
        /// Every command, sorted by name.
        pub commands: Vec<CommandInfo>,
    }
}

/// `LOG.*`: the hash-chained event log.
pub mod log {
    use crate::Event;
    use serde::{Deserialize, Serialize};

    /// `LOG.TAIL`
    pub const TAIL: &str = "LOG.TAIL";
    /// `LOG.QUERY`
    pub const QUERY: &str = "LOG.QUERY";
    /// `LOG.VERIFY`
    pub const VERIFY: &str = "LOG.VERIFY";

    /// Largest page `LOG.QUERY` returns.
    pub const MAX_QUERY_LIMIT: usize = 1000;
    /// Page size when `limit` is absent.
    pub const DEFAULT_QUERY_LIMIT: usize = 100;

    /// `LOG.TAIL` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct TailParams {
        /// First sequence number to send (default: the next event to be written, i.e. only new
        /// events when following, nothing when not).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Keep streaming new events after the replay, until the client disconnects.
        #[serde(default)]
        pub follow: bool,
    }

    /// The `data` of one `LOG.TAIL` stream line. A tail answers with many lines that all carry
    /// the request's id: one per event, a `caught_up` marker when the replay reaches the head
    /// (then live events follow when following), or an `end` marker when not following.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(untagged)]
    pub enum TailFrame {
        /// One event.
        Event {
            /// The event.
            event: Box<Event>,
        },
        /// The replay is complete; `next_seq` is the first sequence number not yet sent.
        CaughtUp {
            /// Always `true`.
            caught_up: bool,
            /// First seq not yet sent.
            next_seq: u64,
        },
        /// The stream ends here (`follow` was false).
        End {
            /// Always `true`.
            end: bool,
            /// First seq not sent; pass it as `from_seq` to resume.
            next_seq: u64,
        },
    }

    /// `LOG.QUERY` params. Filters combine with AND.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct QueryParams {
        /// First seq to consider (default 1).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Last seq to consider, inclusive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to_seq: Option<u64>,
        /// Only events at or after this time (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub since: Option<String>,
        /// Only events strictly before this time (RFC 3339).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub until: Option<String>,
        /// Only this command.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub command: Option<String>,
        /// Only this outcome (`ok` or an error code).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub outcome: Option<String>,
        /// Only this actor (`anonymous`, `operator`, `user:<id>`, `apikey:<id>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub actor: Option<String>,
        /// Page size, 1..=1000 (default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub limit: Option<usize>,
    }

    /// `LOG.QUERY` result.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct QueryResult {
        /// Matching events in ascending seq order.
        pub events: Vec<Event>,
        /// Pass as `from_seq` to get the next page; `null` when the range is exhausted.
        pub next_seq: Option<u64>,
    }

    /// `LOG.VERIFY` params.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct VerifyParams {
        /// First seq to check (default 1). Its `prev` is checked against the event before it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub from_seq: Option<u64>,
        /// Last seq to check (default: the head).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub to_seq: Option<u64>,
    }

    /// `LOG.VERIFY` result (also the offline `portcullis log verify` report).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct VerifyReport {
        /// Whether every checked event is intact and chained.
        pub valid: bool,
        /// How many events were checked.
        pub checked: u64,
        /// The newest seq in the log.
        pub head_seq: u64,
        /// The first seq at which the chain breaks, when it does.
        pub first_broken_seq: Option<u64>,
        /// Why it breaks there (`hash_mismatch`, `prev_mismatch`, `seq_gap`, `unreadable`).
        pub reason: Option<String>,
    }
}
