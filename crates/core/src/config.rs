//! Server configuration: embedded defaults, overridable by a TOML file, `PORTCULLIS_*`
//! environment variables and command-line flags (in increasing precedence; the CLI merges them).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Every setting of a running server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, the master key and the operator token live.
    pub data_dir: PathBuf,
    /// NDJSON-over-TCP listen address.
    pub tcp: SocketAddr,
    /// HTTP gateway listen address.
    pub http: SocketAddr,
    /// Longest accepted frame (TCP line or HTTP body), in bytes.
    pub max_frame_bytes: usize,
    /// Most TCP connections served at once; more are answered `UNAVAILABLE` and closed.
    pub max_connections: usize,
    /// Seconds a TCP connection may sit with no partial request before it is closed.
    pub idle_timeout_s: u64,
    /// Seconds a started request line may take to complete before the connection is closed.
    pub frame_timeout_s: u64,
    /// How far (in events) a `LOG.TAIL` follower may fall behind before it is disconnected.
    pub tail_max_lag: u64,
    /// Seconds in-flight work gets to finish on shutdown.
    pub shutdown_grace_s: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("portcullis-data"),
            tcp: SocketAddr::from(([127, 0, 0, 1], 7420)),
            http: SocketAddr::from(([127, 0, 0, 1], 7421)),
            max_frame_bytes: portcullis_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            idle_timeout_s: 300,
            frame_timeout_s: 10,
            tail_max_lag: 100_000,
            shutdown_grace_s: 10,
        }
    }
}

impl Config {
    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 16 * 1024 * 1024 {
            return Err("max_frame_bytes must be between 1024 and 16777216".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if self.idle_timeout_s == 0 || self.frame_timeout_s == 0 {
            return Err("idle_timeout_s and frame_timeout_s must be at least 1".into());
        }
        if self.tail_max_lag == 0 {
            return Err("tail_max_lag must be at least 1".into());
        }
        Ok(())
    }
}
