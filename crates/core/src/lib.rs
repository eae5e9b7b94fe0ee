//! The Portcullis core: the command registry, the one dispatcher every transport calls, and the
//! command handlers, in layered folders (bottom-up): [`base`] → [`infra`] → [`identity`] →
//! [`factors`] → [`signin`] → [`account`], [`admin`], [`ops`] → [`dispatch`]. A module imports
//! only from its own layer and those below (`tests/layering.rs` checks it); this root composes
//! [`App`] and [`Ctx`].
//!
//! Request path: a transport hands a frame to [`Dispatcher::execute_frame`]; the dispatcher
//! parses the envelope, finds the command, verifies the caller, runs the handler with a [`Ctx`],
//! appends the outcome to the event log (for every command but `SYS.PING`) and returns a
//! [`Reply`] whose answer may be sent once the group commit has made it durable.

#![warn(missing_docs)]

pub mod account;
pub mod admin;
pub mod base;
pub mod dispatch;
pub mod factors;
pub mod identity;
pub mod infra;
pub mod ops;
pub mod signin;

#[cfg(test)]
mod testkit;

pub use base::audit::Audit;
pub use base::caller::{Caller, RateClass, Requirement, Scope};
pub use base::clock::{Clock, ManualClock, SystemClock};
pub use base::config::Config;
pub use base::error::CommandError;
pub use base::random::{OsRandom, SecureRandom};
pub use dispatch::dispatcher::{ConnInfo, Dispatcher, Pending, Reply, Transport};
pub use infra::registry::{CommandSpec, Registry};

use base::{caller, crypto};
use factors::{passkey, recovery};
use identity::{passwords, sessions, tokens};
use infra::{internal_event, limits, mail, node, telemetry};
use portcullis_store::{EventLog, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// The server's shared state: configuration, persistence, clock, node facts and the registry.
pub struct App {
    /// Configuration in force.
    pub config: Config,
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// The event log.
    pub log: Arc<dyn EventLog>,
    /// Events the server records on its own behalf (background work).
    pub events: internal_event::InternalEvents,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness for ids, tokens and codes.
    pub rng: Arc<dyn SecureRandom>,
    /// Stable id of the data directory.
    pub node_id: String,
    /// When the process started.
    pub started_at: OffsetDateTime,
    started: Instant,
    operator_token_hash: [u8; 32],
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// Every command.
    pub registry: Registry,
    /// Token signing and verification.
    pub tokens: tokens::Tokens,
    /// Password hashing.
    pub passwords: passwords::Passwords,
    /// Encryption of secrets at rest.
    pub sealer: crypto::Sealer,
    /// Which sessions are live.
    pub session_cache: sessions::SessionCache,
    /// Mail templates.
    pub templates: mail::Templates,
    /// Outgoing mail.
    pub mailer: mail::Mailer,
    /// Key of the HMAC that stores email codes.
    pub code_key: zeroize::Zeroizing<[u8; 32]>,
    /// Key of the HMAC that stores recovery codes (stored sealed; survives master-key
    /// rotation).
    pub recovery_code_key: zeroize::Zeroizing<[u8; 32]>,
    /// Rate limiters and failure delays.
    pub limits: limits::Limits,
    /// The WebAuthn relying party.
    pub webauthn: webauthn_rs::prelude::Webauthn,
    /// This app's metrics (`GET /metrics`).
    pub metrics: telemetry::Metrics,
}

/// Checks a configuration completely: its plain values ([`Config::validate`]) and what is built
/// from them (the rate limiters, the WebAuthn relying party), as [`App::open`] would.
pub fn check_config(config: &Config) -> Result<(), String> {
    config.validate()?;
    limits::Limits::new(&config.rate_limits)?;
    passkey::relying_party(config)?;
    Ok(())
}

/// How to reach the PostgreSQL database named by `url`: the password from
/// `PORTCULLIS_DATABASE_PASSWORD` or `database_password_file` when the URL has none.
fn database_options(config: &Config, url: &str) -> Result<portcullis_store::PgOptions, OpenError> {
    let mut options = portcullis_store::PgOptions::new(url);
    options.pool_size = config.database_pool_size;
    options.statement_timeout = std::time::Duration::from_millis(config.database_timeout_ms);
    options.connect_timeout = options.statement_timeout;
    options.tls = config.database_tls;
    options.ca_file.clone_from(&config.database_ca_file);
    options.listen = config.database_listen;
    options.password = match (
        std::env::var("PORTCULLIS_DATABASE_PASSWORD").ok(),
        &config.database_password_file,
    ) {
        (Some(p), _) => Some(zeroize::Zeroizing::new(p)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| OpenError::Config(format!("reading {}: {e}", path.display())))?;
            Some(zeroize::Zeroizing::new(
                text.lines().next().unwrap_or_default().to_owned(),
            ))
        }
        (None, None) => None,
    };
    Ok(options)
}

/// A failure to start the app.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The data directory.
    #[error(transparent)]
    Node(#[from] node::NodeError),
    /// The store.
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
    /// The configuration.
    #[error("{0}")]
    Config(String),
}

impl App {
    /// Opens the data directory named in `config` and builds the app with every command.
    pub async fn open(config: Config, clock: Arc<dyn Clock>) -> Result<Arc<App>, OpenError> {
        Self::open_layered(config, clock, |store| store).await
    }

    /// Like [`App::open`], with the store the commands use wrapped by `layer` (the event log
    /// and the node's own records stay on the store underneath). Tests use it to inject
    /// failures and hold reads at chosen points.
    pub async fn open_layered(
        config: Config,
        clock: Arc<dyn Clock>,
        layer: impl FnOnce(Arc<dyn Store>) -> Arc<dyn Store>,
    ) -> Result<Arc<App>, OpenError> {
        check_config(&config).map_err(OpenError::Config)?;
        let node = match &config.database_url {
            None => {
                node::Node::open_with(
                    &config.data_dir,
                    portcullis_store::StoreOptions {
                        cache_bytes: config.store_cache_mb.saturating_mul(1024 * 1024),
                        fsync: config.store_fsync,
                    },
                )
                .await?
            }
            Some(url) => {
                let options = database_options(&config, url.expose())?;
                let shared = Arc::new(portcullis_store::PgStore::connect(&options).await?);
                node::Node::open_shared(&config.data_dir, shared).await?
            }
        };
        let rng: Arc<dyn SecureRandom> = Arc::new(OsRandom);
        let sealer = crypto::Sealer::new(&node.master_key);
        let tokens = tokens::Tokens::load_or_create(
            node.store.as_ref(),
            &sealer,
            rng.as_ref(),
            clock.as_ref(),
            config.issuer.clone(),
            config.audience.clone(),
            config.access_token_ttl_s,
        )
        .await?;
        let passwords = passwords::Passwords::new(
            config.argon2_m_kib,
            config.argon2_t,
            config.argon2_p,
            config.hash_permits(),
        )
        .map_err(OpenError::Config)?;
        // Unknown addresses are checked at the cost of the median stored hash.
        passwords.sample_stored(node.store.as_ref()).await?;
        let store: Arc<dyn Store> = layer(node.store.clone());
        // Other nodes write this store too: cache only what cannot change back.
        let shared = store.shared();
        let limits = limits::Limits::new(&config.rate_limits)
            .map_err(OpenError::Config)?
            .kept_in(&store);
        let log: Arc<dyn EventLog> = node.log.clone();
        let events = internal_event::InternalEvents::new(
            Arc::clone(&log),
            Arc::clone(&store),
            Arc::clone(&clock),
        );
        let mailer = mail::Mailer::start(
            &config,
            events.clone(),
            Arc::clone(&store),
            Arc::new(crypto::Sealer::new(&node.master_key)),
            Arc::clone(&rng),
            node.node_id.clone(),
        )
        .await
        .map_err(OpenError::Config)?;
        let code_key = crypto::derive_key(&node.master_key, "email-code-mac");
        let recovery_code_key =
            recovery::load_or_create_recovery_key(node.store.as_ref(), &sealer, rng.as_ref())
                .await?;
        if node.operator_token_created {
            tracing::info!(
                path = %config.data_dir.join(node::OPERATOR_TOKEN_FILE).display(),
                "created the operator token"
            );
        }
        let started_at = clock.now();
        Ok(Arc::new(App {
            store,
            log,
            clock,
            rng,
            node_id: node.node_id,
            started_at,
            started: Instant::now(),
            operator_token_hash: node.operator_token_hash,
            shutdown: CancellationToken::new(),
            registry: dispatch::registry(),
            tokens,
            passwords,
            sealer,
            session_cache: sessions::SessionCache::new(shared),
            templates: mail::Templates::new(config.templates_dir.clone()),
            mailer,
            events,
            code_key,
            recovery_code_key,
            limits,
            webauthn: passkey::relying_party(&config).map_err(OpenError::Config)?,
            metrics: telemetry::Metrics::new(),
            config,
        }))
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Flushes and closes persistence. Call once, after the transports have drained.
    pub fn close(&self) {
        self.store.close();
    }
}

/// What a handler gets: the app, the verified caller, where the request came from, and the
/// audit record the dispatcher will write.
#[derive(Clone)]
pub struct Ctx {
    /// Shared state.
    pub app: Arc<App>,
    /// The verified caller.
    pub caller: Caller,
    /// The client's address, when known.
    pub client: Option<SocketAddr>,
    /// The client's user agent (HTTP), when known.
    pub user_agent: Option<String>,
    /// The request's correlation id.
    pub request_id: Option<portcullis_protocol::RequestId>,
    /// What to record about this command.
    pub audit: Arc<Audit>,
}

impl Ctx {
    /// Now, from the app's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.app.clock.now()
    }

    /// The signed-in user; `UNAUTHENTICATED` otherwise (the registry normally guarantees one).
    pub fn user(&self) -> Result<&caller::UserCaller, CommandError> {
        self.caller
            .user()
            .ok_or_else(|| CommandError::unauthenticated("sign in first"))
    }

    /// `N` random bytes from the app's CSPRNG.
    pub fn random_bytes<const N: usize>(&self) -> [u8; N] {
        let mut b = [0u8; N];
        self.app.rng.fill(&mut b);
        b
    }
}
