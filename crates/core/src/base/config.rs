//! Server configuration: embedded defaults, overridable by a TOML file; the settings the CLI
//! names also by `PORTCULLIS_*` environment variables and flags (in increasing precedence).

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
    /// Most connections served at once, on each transport; more are refused (`UNAVAILABLE`).
    pub max_connections: usize,
    /// Most connections served at once from one client address (an IPv4 address or an IPv6
    /// /64), on each transport; more are refused (`RATE_LIMITED`). Loopback is not exempt; HTTP
    /// connections from `trusted_proxies` are.
    pub max_connections_per_ip: usize,
    /// Seconds a TCP connection may sit with no partial request before it is closed; also how
    /// long a write may wait for a client (TCP or HTTP) that reads nothing.
    pub idle_timeout_s: u64,
    /// Seconds a started request may take to arrive in full (a TCP line from its first byte, an
    /// HTTP request body from the end of its headers) before the connection is closed.
    pub frame_timeout_s: u64,
    /// Seconds an HTTP connection may take to deliver a request's headers, counted from when it
    /// is ready for the next request (so also the longest a keep-alive connection may idle).
    pub http_header_timeout_s: u64,
    /// How far (in events) a `LOG.TAIL` follower may fall behind before it is disconnected.
    pub tail_max_lag: u64,
    /// Seconds in-flight work gets to finish on shutdown.
    pub shutdown_grace_s: u64,
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens: the name resource servers check to know a token is meant for
    /// them.
    pub audience: String,
    /// Access token lifetime, seconds.
    pub access_token_ttl_s: i64,
    /// A session not refreshed for this long expires, seconds.
    pub refresh_idle_s: i64,
    /// A session expires this long after sign-in whatever happens, seconds.
    pub refresh_absolute_s: i64,
    /// A refresh token used again within this many seconds returns the pair already issued.
    pub refresh_grace_s: i64,
    /// argon2id memory, KiB.
    pub argon2_m_kib: u32,
    /// argon2id passes.
    pub argon2_t: u32,
    /// argon2id lanes.
    pub argon2_p: u32,
    /// Password hashes computed at once (0: one per core).
    pub hash_concurrency: usize,
    /// The store's page cache, MiB.
    pub store_cache_mb: u64,
    /// End every group commit with an `fdatasync` of the database file, so acknowledged writes
    /// survive a power cut, not only a crash of the process. On by default.
    pub store_fsync: bool,
    /// Product name shown in mails and pages.
    pub product_name: String,
    /// The HTTP gateway's address as users reach it; links in mails point here.
    pub public_url: String,
    /// Where sign-in flows may send the browser afterwards: each entry is an origin plus a path
    /// prefix (`https://app.example.com/auth/`). Empty: no `redirect_url` is accepted.
    pub redirect_allowlist: Vec<String>,
    /// Sender of mails.
    pub mail_from: String,
    /// SMTP server; unset: mails are written as `.eml` files to `<data_dir>/outbox/`.
    pub smtp_host: Option<String>,
    /// SMTP port (default by `smtp_tls`: 25, 587 or 465).
    pub smtp_port: Option<u16>,
    /// `none`, `starttls` or `tls`.
    pub smtp_tls: SmtpTls,
    /// SMTP user name; the password comes from `PORTCULLIS_SMTP_PASSWORD` or `smtp_password_file`.
    pub smtp_username: Option<String>,
    /// File holding the SMTP password.
    pub smtp_password_file: Option<PathBuf>,
    /// Directory of operator templates (`<locale>/<name>.<subject|txt|html>`).
    pub templates_dir: Option<PathBuf>,
    /// Locale of mails when a request names none.
    pub default_locale: String,
    /// Magic-link lifetime, seconds.
    pub magic_link_ttl_s: i64,
    /// Email-code lifetime, seconds.
    pub otp_ttl_s: i64,
    /// Attempts a code allows, the right one included; after them the code is dead.
    pub otp_max_attempts: u32,
    /// Seconds between two mails to one address.
    pub send_cooldown_s: i64,
    /// Mails per address per hour.
    pub sends_per_address_per_hour: u32,
    /// Mails requested per client address per hour.
    pub sends_per_client_per_hour: u32,
    /// `optional` (users choose) or `required` (every user must have a second factor).
    pub mfa_policy: MfaPolicy,
    /// Seconds after a sign-in or step-up during which sensitive commands need no step-up.
    pub step_up_window_s: i64,
    /// Most live sessions one account may have; a sign-in beyond it revokes the oldest.
    pub max_sessions_per_user: u32,
    /// Requests per client address for each rate class.
    pub rate_limits: RateLimits,
    /// Proxies whose `X-Forwarded-For` the HTTP gateway believes (addresses or CIDR ranges).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Origins of browser applications that may call `POST /api/v1/execute` from their pages
    /// (CORS), each exactly as a browser sends it in `Origin` (`https://app.example.com`, no
    /// path, no trailing slash). Empty (the default): no `Access-Control-*` header is ever sent.
    /// No wildcard: `*` is refused at start.
    pub cors_allowed_origins: Vec<String>,
    /// WebAuthn relying-party id: the domain passkeys are bound to.
    pub rp_id: String,
    /// Origins allowed to use passkeys (scheme, host and port of the pages that call WebAuthn).
    pub rp_origins: Vec<String>,
    /// When set, `GET /metrics` requires `Authorization: Bearer <this>`; open when unset.
    pub metrics_token: Option<SecretSetting>,
    /// Automatic log retention: keep about this many of the newest events, archiving older ones
    /// to `log_archive_dir` before removing them. 0 (the default): the log is never shortened
    /// by the server itself.
    pub log_retain_events: u64,
    /// Where automatic retention writes its archives (required when `log_retain_events` is set).
    pub log_archive_dir: Option<PathBuf>,
    /// PostgreSQL instead of the embedded sled database: `postgres://user@host:port/database`.
    /// Every node of a deployment points here; the data directory then keeps only this node's
    /// keys and id. A password in the URL works, but `database_password_file` (or
    /// `PORTCULLIS_DATABASE_PASSWORD`) keeps it out of the configuration.
    pub database_url: Option<SecretSetting>,
    /// A file holding the database password (its first line).
    pub database_password_file: Option<PathBuf>,
    /// Database connections per node.
    pub database_pool_size: usize,
    /// Longest a database statement may run, milliseconds (also how long a command waits for a
    /// connection before it answers `UNAVAILABLE`).
    pub database_timeout_ms: u64,
    /// TLS to the database: `disable`, `require` (encrypted, certificate not checked) or
    /// `verify-full` (certificate checked against `database_ca_file`, else the Mozilla roots,
    /// and the host name). Unset: the URL's `sslmode`, else `disable` when every host in the
    /// URL is loopback (or a Unix socket) and `verify-full` otherwise.
    pub database_tls: Option<portcullis_store::PgTls>,
    /// CA certificates (PEM) that `verify-full` trusts instead of the Mozilla roots.
    pub database_ca_file: Option<PathBuf>,
    /// LISTEN/NOTIFY between nodes (set false for databases without it, such as CockroachDB:
    /// nodes then poll the log's head while a `LOG.TAIL` follows).
    pub database_listen: bool,
    /// Certificate chain (PEM, leaf first) that both listeners present: set with `tls_key`, the
    /// HTTP gateway serves HTTPS and the TCP listener TLS (1.2 and 1.3, rustls' safe defaults).
    /// Re-read without a restart on SIGHUP or when the file changes.
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): when set, the TCP listener accepts only clients that present a
    /// certificate issued by one of them (mutual TLS for backends). Needs `tls_cert`.
    pub tls_client_ca: Option<PathBuf>,
}

/// A setting that is a secret (a bearer token): serialised as the plain string, but its `Debug`
/// is redacted, so printing a [`Config`] cannot leak it. Read it through [`SecretSetting::expose`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretSetting(String);

impl SecretSetting {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        SecretSetting(s.into())
    }

    /// The secret itself. Call sites of this are the places to audit.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for SecretSetting {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecretSetting::new(s))
    }
}

impl From<&str> for SecretSetting {
    fn from(s: &str) -> Self {
        SecretSetting::new(s)
    }
}

impl From<String> for SecretSetting {
    fn from(s: String) -> Self {
        SecretSetting::new(s)
    }
}

/// Per-client-address limits of each rate class: `N/s`, `N/min` or `N/h` (burst `N`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Off switch (for benchmarks); on by default.
    pub enabled: bool,
    /// Liveness and cheap reads.
    pub cheap: String,
    /// Operator tooling.
    pub operator: String,
    /// Signed-in account and session management, token refresh.
    pub account: String,
    /// Guessable secrets: passwords, codes, links, second factors.
    pub credential: String,
    /// Requests that send mail.
    pub send: String,
    /// Requests one API key may send on behalf of end users (with the envelope's `client`),
    /// whatever the command and the end user's address.
    pub forward: String,
    /// Wrong email codes (`OTP.VERIFY`) accepted per address in a rolling hour, across all its
    /// codes; then `TOO_MANY_ATTEMPTS` until the oldest failure is an hour old.
    pub otp_failures_per_address_per_hour: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            enabled: true,
            cheap: "2000/s".into(),
            operator: "200/s".into(),
            account: "200/s".into(),
            credential: "120/min".into(),
            send: "30/min".into(),
            forward: "1000/s".into(),
            otp_failures_per_address_per_hour: 10,
        }
    }
}

/// Whether a second factor is mandatory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MfaPolicy {
    /// Users with a second factor must use it; others sign in with one factor.
    Optional,
    /// Users without a second factor get an enrolment-only session until they add one.
    Required,
}

/// How to talk to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text (loopback relays only).
    None,
    /// Upgrade with STARTTLS.
    Starttls,
    /// TLS from the first byte.
    Tls,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("portcullis-data"),
            tcp: SocketAddr::from(([127, 0, 0, 1], 7420)),
            http: SocketAddr::from(([127, 0, 0, 1], 7421)),
            max_frame_bytes: portcullis_protocol::DEFAULT_MAX_FRAME_BYTES,
            max_connections: 1024,
            max_connections_per_ip: 64,
            idle_timeout_s: 300,
            frame_timeout_s: 10,
            http_header_timeout_s: 30,
            tail_max_lag: 100_000,
            shutdown_grace_s: 10,
            issuer: "http://localhost:7421".into(),
            audience: "portcullis".into(),
            access_token_ttl_s: 15 * 60,
            refresh_idle_s: 7 * 24 * 3600,
            refresh_absolute_s: 30 * 24 * 3600,
            refresh_grace_s: 10,
            argon2_m_kib: 19 * 1024,
            argon2_t: 2,
            argon2_p: 1,
            hash_concurrency: 0,
            store_cache_mb: 256,
            store_fsync: true,
            product_name: "Portcullis".into(),
            public_url: "http://localhost:7421".into(),
            redirect_allowlist: Vec::new(),
            mail_from: "Portcullis <no-reply@localhost>".into(),
            smtp_host: None,
            smtp_port: None,
            smtp_tls: SmtpTls::Starttls,
            smtp_username: None,
            smtp_password_file: None,
            templates_dir: None,
            default_locale: "en".into(),
            magic_link_ttl_s: 10 * 60,
            otp_ttl_s: 10 * 60,
            otp_max_attempts: 5,
            send_cooldown_s: 30,
            sends_per_address_per_hour: 5,
            sends_per_client_per_hour: 20,
            mfa_policy: MfaPolicy::Optional,
            step_up_window_s: 10 * 60,
            max_sessions_per_user: 100,
            rate_limits: RateLimits::default(),
            trusted_proxies: Vec::new(),
            cors_allowed_origins: Vec::new(),
            rp_id: "localhost".into(),
            rp_origins: vec!["http://localhost:7421".into()],
            metrics_token: None,
            log_retain_events: 0,
            log_archive_dir: None,
            database_url: None,
            database_password_file: None,
            database_pool_size: 16,
            database_timeout_ms: 5_000,
            database_tls: None,
            database_ca_file: None,
            database_listen: true,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

impl Config {
    /// Concurrent password hashes in force.
    pub fn hash_permits(&self) -> usize {
        match self.hash_concurrency {
            0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
            n => n,
        }
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_frame_bytes < 1024 || self.max_frame_bytes > 16 * 1024 * 1024 {
            return Err("max_frame_bytes must be between 1024 and 16777216".into());
        }
        if !(1..=1024).contains(&self.database_pool_size) {
            return Err("database_pool_size must be between 1 and 1024".into());
        }
        if !(100..=600_000).contains(&self.database_timeout_ms) {
            return Err("database_timeout_ms must be between 100 and 600000".into());
        }
        if !(16..=65536).contains(&self.store_cache_mb) {
            return Err("store_cache_mb must be between 16 and 65536".into());
        }
        if self.max_connections == 0 || self.max_connections_per_ip == 0 {
            return Err("max_connections and max_connections_per_ip must be at least 1".into());
        }
        if self.log_retain_events != 0 {
            if self.log_retain_events < 100 {
                return Err("log_retain_events must be 0 (off) or at least 100".into());
            }
            if self.log_archive_dir.is_none() {
                return Err(
                    "log_retain_events needs log_archive_dir: events are archived before they are removed"
                        .into(),
                );
            }
        }
        if self.idle_timeout_s == 0 || self.frame_timeout_s == 0 || self.http_header_timeout_s == 0
        {
            return Err(
                "idle_timeout_s, frame_timeout_s and http_header_timeout_s must be at least 1"
                    .into(),
            );
        }
        if self.tail_max_lag == 0 {
            return Err("tail_max_lag must be at least 1".into());
        }
        if self.issuer.is_empty() {
            return Err("issuer must not be empty".into());
        }
        if self.audience.is_empty() || self.audience.chars().any(char::is_control) {
            return Err("audience must be a non-empty string without control characters".into());
        }
        if !(1..=10_000).contains(&self.max_sessions_per_user) {
            return Err("max_sessions_per_user must be between 1 and 10000".into());
        }
        if !(60..=24 * 3600).contains(&self.access_token_ttl_s) {
            return Err("access_token_ttl_s must be between 60 and 86400".into());
        }
        if self.refresh_idle_s < self.access_token_ttl_s
            || self.refresh_absolute_s < self.refresh_idle_s
        {
            return Err(
                "refresh_idle_s must be at least access_token_ttl_s, and refresh_absolute_s at least refresh_idle_s"
                    .into(),
            );
        }
        if !(0..=300).contains(&self.refresh_grace_s) {
            return Err("refresh_grace_s must be between 0 and 300".into());
        }
        if self.argon2_m_kib < 8 * self.argon2_p || self.argon2_t == 0 || self.argon2_p == 0 {
            return Err("argon2 parameters are out of range".into());
        }
        let public = url::Url::parse(&self.public_url).map_err(|e| format!("public_url: {e}"))?;
        if !matches!(public.scheme(), "http" | "https") {
            return Err("public_url must be http or https".into());
        }
        for entry in &self.redirect_allowlist {
            let u = url::Url::parse(entry)
                .map_err(|e| format!("redirect_allowlist entry {entry:?}: {e}"))?;
            if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
                return Err(format!(
                    "redirect_allowlist entry {entry:?} must be an http(s) URL"
                ));
            }
        }
        for origin in &self.cors_allowed_origins {
            check_cors_origin(origin)?;
        }
        if !(60..=24 * 3600).contains(&self.magic_link_ttl_s)
            || !(60..=24 * 3600).contains(&self.otp_ttl_s)
        {
            return Err("magic_link_ttl_s and otp_ttl_s must be between 60 and 86400".into());
        }
        // A step-up is proof of who holds the session *now*: an hour at most.
        if !(0..=3600).contains(&self.step_up_window_s) {
            return Err("step_up_window_s must be between 0 and 3600".into());
        }
        if self.otp_max_attempts == 0
            || self.sends_per_address_per_hour == 0
            || self.sends_per_client_per_hour == 0
        {
            return Err("otp_max_attempts and the hourly send limits must be at least 1".into());
        }
        if !is_language_tag(&self.default_locale) {
            return Err("default_locale must be a language tag such as en or pt-BR".into());
        }
        if self.send_cooldown_s < 0 {
            return Err("send_cooldown_s must not be negative".into());
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(
                    "tls_cert and tls_key go together: set both (TLS on both listeners) or neither"
                        .into(),
                )
            }
            (None, None) if self.tls_client_ca.is_some() => {
                return Err(
                    "tls_client_ca needs tls_cert and tls_key: client certificates are checked only over TLS"
                        .into(),
                )
            }
            _ => {}
        }
        Ok(())
    }
}

/// Checks one `cors_allowed_origins` entry: an http(s) origin written exactly as browsers send
/// it in the `Origin` header (the header is compared byte for byte), never a wildcard.
fn check_cors_origin(entry: &str) -> Result<(), String> {
    if entry.contains('*') {
        return Err(format!(
            "cors_allowed_origins entry {entry:?}: wildcards are not supported; list each origin \
             exactly (e.g. \"https://app.example.com\")"
        ));
    }
    let u = url::Url::parse(entry)
        .map_err(|e| format!("cors_allowed_origins entry {entry:?} is not an origin: {e}"))?;
    let origin = u.origin();
    if !matches!(u.scheme(), "http" | "https") || !origin.is_tuple() {
        return Err(format!(
            "cors_allowed_origins entry {entry:?} must be an http or https origin"
        ));
    }
    let exact = origin.ascii_serialization();
    if exact != entry {
        return Err(format!(
            "cors_allowed_origins entry {entry:?} must be an origin exactly as browsers send it \
             (scheme, host and port only, lowercase, no default port, no path or trailing \
             slash): {exact:?}"
        ));
    }
    Ok(())
}

/// Whether `s` has the shape of a language tag (`en`, `pt-BR`): at most 16 characters,
/// alphanumeric subtags of 1 to 8 characters separated by `-`.
pub fn is_language_tag(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 16
        && s.split('-')
            .all(|p| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database TLS settings read from a configuration file with libpq's spellings; other
    /// modes are refused.
    #[test]
    fn database_tls_settings_parse() {
        let c: Config = serde_json::from_value(serde_json::json!({
            "database_tls": "verify-full",
            "database_ca_file": "/etc/ca.pem",
            "database_listen": false,
        }))
        .unwrap();
        assert_eq!(c.database_tls, Some(portcullis_store::PgTls::VerifyFull));
        assert_eq!(c.database_ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert!(!c.database_listen);
        assert!(Config::default().database_listen);
        for refused in ["prefer", "verify-ca", "off"] {
            assert!(
                serde_json::from_value::<Config>(serde_json::json!({ "database_tls": refused }))
                    .is_err(),
                "{refused}"
            );
        }
    }

    #[test]
    fn config_debug_never_shows_the_metrics_token() {
        let c = Config {
            metrics_token: Some("scrape-secret-7f3a9c".into()),
            ..Config::default()
        };
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("scrape-secret-7f3a9c"), "{shown}");
        assert!(shown.contains("metrics_token"), "{shown}");
        // Everything else is still shown.
        assert!(shown.contains("max_frame_bytes: 65536"), "{shown}");
    }

    #[test]
    fn connection_limits_and_timeouts_must_be_positive() {
        assert_eq!(Config::default().validate(), Ok(()));
        let zero_cap = Config {
            max_connections_per_ip: 0,
            ..Config::default()
        };
        assert!(zero_cap.validate().is_err());
        let zero_header_timeout = Config {
            http_header_timeout_s: 0,
            ..Config::default()
        };
        assert!(zero_header_timeout.validate().is_err());
    }

    /// TLS needs both halves of the pair; client-certificate checking needs TLS.
    #[test]
    fn tls_settings_come_as_a_pair() {
        let with = |cert: Option<&str>, key: Option<&str>, ca: Option<&str>| Config {
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            tls_client_ca: ca.map(PathBuf::from),
            ..Config::default()
        };
        assert_eq!(with(Some("c.pem"), Some("k.pem"), None).validate(), Ok(()));
        assert_eq!(
            with(Some("c.pem"), Some("k.pem"), Some("ca.pem")).validate(),
            Ok(())
        );
        for half in [
            with(Some("c.pem"), None, None),
            with(None, Some("k.pem"), None),
        ] {
            let e = half.validate().unwrap_err();
            assert!(e.contains("tls_cert and tls_key"), "{e}");
        }
        let e = with(None, None, Some("ca.pem")).validate().unwrap_err();
        assert!(e.contains("tls_client_ca"), "{e}");
        let parsed: Config = serde_json::from_value(serde_json::json!({
            "tls_cert": "/etc/c.pem",
            "tls_key": "/etc/k.pem",
        }))
        .unwrap();
        assert_eq!(parsed.tls_cert, Some(PathBuf::from("/etc/c.pem")));
    }

    #[test]
    fn cors_origins_must_be_exact_origins_and_never_a_wildcard() {
        let check = |entries: &[&str]| {
            Config {
                cors_allowed_origins: entries.iter().map(|e| (*e).to_owned()).collect(),
                ..Config::default()
            }
            .validate()
        };
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(
            check(&[
                "https://app.example.com",
                "http://localhost:5173",
                "http://127.0.0.1:8080",
                "https://[2001:db8::1]:8443",
            ]),
            Ok(())
        );
        let wildcard = check(&["*"]).unwrap_err();
        assert!(
            wildcard.contains("wildcards are not supported"),
            "{wildcard}"
        );
        assert!(check(&["https://*.example.com"]).is_err());
        for refused in [
            "null",
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/auth",
            "https://App.Example.com",
            "https://app.example.com:443",
            "https://user@app.example.com",
            "https://app.example.com?x=1",
            "file:///tmp/page.html",
            "ftp://app.example.com",
            "",
        ] {
            assert!(check(&[refused]).is_err(), "{refused}");
        }
        // The message names the form to write instead.
        let msg = check(&["https://App.example.com/"]).unwrap_err();
        assert!(msg.contains("\"https://app.example.com\""), "{msg}");
    }

    #[test]
    fn the_step_up_window_is_at_most_an_hour() {
        for (w, ok) in [
            (-1, false),
            (0, true),
            (600, true),
            (3600, true),
            (3601, false),
        ] {
            let c = Config {
                step_up_window_s: w,
                ..Config::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "{w}");
        }
    }
}
