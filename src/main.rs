//! `portcullis`: the server and its operator tools.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use portcullis_client::{Client, TailItem};
use portcullis_core::{App, Config, SystemClock};
use portcullis_protocol::commands::log::{
    Checkpoint, PruneParams, PruneResult, TailParams, VerifyParams, VerifyReport,
};
use portcullis_protocol::{Event, Request, Secret};
use portcullis_store::{verify_events, ChainVerifier, LogEntry, SledStore};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// The request path allocates many small, short-lived buffers from several threads at once;
/// mimalloc serves them from per-thread heaps (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_ADDR: &str = "127.0.0.1:7420";
const DEFAULT_DATA_DIR: &str = "portcullis-data";

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Passwordless-authentication server"
)]
struct Cli {
    /// Tracing output format (stderr).
    #[arg(
        long,
        global = true,
        env = "PORTCULLIS_LOG_FORMAT",
        default_value = "pretty"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (embedded defaults: ./portcullis-data, TCP 127.0.0.1:7420, HTTP 127.0.0.1:7421).
    Serve(Box<ServeArgs>),
    /// Send one command and print its envelope; exits 1 when `ok` is false.
    Exec(ExecArgs),
    /// Read the event log.
    Log {
        #[command(subcommand)]
        cmd: LogCmd,
    },
    /// Measure throughput and latency of a workload (see docs/performance.md).
    Bench(Box<portcullis_bench::BenchArgs>),
    /// Administration.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Create the first superadmin and print a one-time sign-in link (also mailed). Refuses
    /// once an administrator exists. Offline on a stopped server's data directory
    /// (`--data-dir`, with `--config` for its mail settings), or online (`--addr`).
    Bootstrap(BootstrapArgs),
    /// Rotate the master key of a stopped server's data directory: every secret sealed at rest
    /// is re-encrypted; the old key is kept as master.key.previous. Email codes in flight stop
    /// working. Rerun it to finish an interrupted rotation.
    RotateMasterKey {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The deployment's PostgreSQL database, when it uses one.
        #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true)]
        database_url: Option<portcullis_core::base::config::SecretSetting>,
    },
    /// Apply the PostgreSQL schema migrations this database lacks (servers also do it at start)
    /// and print the schema version before and after. Refuses a database newer than this build.
    Migrate(MigrateArgs),
    /// Write a stopped deployment (every table and the event log) to one file, to move it to
    /// another store with `admin import`. Every node must be stopped. The file is as sensitive
    /// as the database (see docs/operations.md, "Moving between sled and PostgreSQL").
    Export(ExportArgs),
    /// Load a file written by `admin export` into an empty store: a new data directory (sled)
    /// or an empty database (`--database-url`). Copy master.key and operator.token from the
    /// source's data directory into `--data-dir` first. Refused if the target holds anything
    /// or the file is damaged; on failure the target is left empty.
    Import(ImportArgs),
}

#[derive(Args)]
struct MigrateArgs {
    /// The deployment's PostgreSQL database (password: in the URL or PORTCULLIS_DATABASE_PASSWORD).
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true)]
    database_url: portcullis_core::base::config::SecretSetting,
    /// TLS to the database: disable, require or verify-full (as `serve`).
    #[arg(long, env = "PORTCULLIS_DATABASE_TLS")]
    database_tls: Option<portcullis_store::PgTls>,
    /// CA certificates (PEM) for verify-full.
    #[arg(long, env = "PORTCULLIS_DATABASE_CA_FILE")]
    database_ca_file: Option<PathBuf>,
}

/// How `admin migrate`, `export` and `import` reach the database: its URL, TLS settings, and
/// the password from `PORTCULLIS_DATABASE_PASSWORD` when set.
fn database_options(
    url: &portcullis_core::base::config::SecretSetting,
    tls: Option<portcullis_store::PgTls>,
    ca_file: Option<PathBuf>,
) -> portcullis_store::PgOptions {
    let mut options = portcullis_store::PgOptions::new(url.expose());
    options.tls = tls;
    options.ca_file = ca_file;
    if let Ok(p) = std::env::var("PORTCULLIS_DATABASE_PASSWORD") {
        options.set_password(p);
    }
    options
}

/// `portcullis admin migrate`.
async fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    let options = database_options(&a.database_url, a.database_tls, a.database_ca_file);
    let (before, after) = portcullis_store::PgStore::migrate_database(&options)
        .await
        .context("migrating the database")?;
    if before == after {
        println!("schema version {after}: up to date, nothing to do");
    } else {
        println!(
            "schema version {before} -> {after}: applied {} migration(s)",
            after - before
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Where `admin export` reads or `admin import` writes a deployment.
#[derive(Args)]
struct Deployment {
    /// The data directory: sled's database and the key files, or with --database-url a node's
    /// key files.
    #[arg(long)]
    data_dir: PathBuf,
    /// The deployment's PostgreSQL database, when it uses one (password: in the URL or
    /// PORTCULLIS_DATABASE_PASSWORD).
    #[arg(long, env = "PORTCULLIS_DATABASE_URL", hide_env_values = true)]
    database_url: Option<portcullis_core::base::config::SecretSetting>,
    /// TLS to the database: disable, require or verify-full (as `serve`).
    #[arg(long, env = "PORTCULLIS_DATABASE_TLS", requires = "database_url")]
    database_tls: Option<portcullis_store::PgTls>,
    /// CA certificates (PEM) for verify-full.
    #[arg(long, env = "PORTCULLIS_DATABASE_CA_FILE", requires = "database_url")]
    database_ca_file: Option<PathBuf>,
}

#[derive(Args)]
struct ExportArgs {
    #[command(flatten)]
    from: Deployment,
    /// The file to write (must not exist; written as FILE.partial, then renamed).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct ImportArgs {
    #[command(flatten)]
    to: Deployment,
    /// The file `admin export` wrote.
    #[arg(long = "in", value_name = "FILE")]
    input: PathBuf,
}

impl Deployment {
    fn location(&self) -> portcullis_core::ops::transfer::Location {
        use portcullis_core::ops::transfer::Location;
        match &self.database_url {
            Some(url) => Location::Postgres {
                dir: self.data_dir.clone(),
                options: database_options(url, self.database_tls, self.database_ca_file.clone()),
            },
            None => Location::Sled(self.data_dir.clone()),
        }
    }

    fn kind(&self) -> &'static str {
        if self.database_url.is_some() {
            "PostgreSQL"
        } else {
            "sled"
        }
    }
}

#[derive(Args)]
struct BootstrapArgs {
    /// The administrator's address.
    #[arg(long)]
    email: String,
    /// The server's configuration file (offline mode: mail settings, public_url).
    #[arg(long, conflicts_with = "addr")]
    config: Option<PathBuf>,
    #[command(flatten)]
    source: LogSource,
}

/// The `serve` settings that have a flag and an environment variable, listed once: the macro
/// makes the clap fields and copies each given value over the same-named [`Config`] field (a
/// name or type that does not match `Config` does not compile).
macro_rules! serve_settings {
    (
        $( $(#[doc = $doc:literal])* $field:ident: $ty:ty = $env:literal, )*
        @optional {
            $( $(#[doc = $odoc:literal])* $ofield:ident: $oty:ty = $oenv:literal, )*
        }
    ) => {
        #[derive(Args)]
        struct ServeArgs {
            /// TOML file with any of the settings below (flags and env vars take precedence).
            #[arg(long, env = "PORTCULLIS_CONFIG")]
            config: Option<PathBuf>,
            $( $(#[doc = $doc])* #[arg(long, env = $env)] $field: Option<$ty>, )*
            // A URL may hold a password: `--help` never prints these variables' values.
            $( $(#[doc = $odoc])* #[arg(long, env = $oenv, hide_env_values = true)] $ofield: Option<$oty>, )*
        }

        impl ServeArgs {
            /// Copies every setting given as a flag or variable over `c`.
            fn overlay(&self, c: &mut Config) {
                $( if let Some(v) = &self.$field { c.$field = v.clone(); } )*
                $( if let Some(v) = &self.$ofield { c.$ofield = Some(v.clone()); } )*
            }
        }
    };
}

serve_settings! {
    /// Data directory (database, master key, operator token).
    data_dir: PathBuf = "PORTCULLIS_DATA_DIR",
    /// NDJSON-over-TCP listen address (port 0 picks a free port).
    tcp: SocketAddr = "PORTCULLIS_TCP",
    /// HTTP gateway listen address (port 0 picks a free port).
    http: SocketAddr = "PORTCULLIS_HTTP",
    /// Longest request line or HTTP body, in bytes.
    max_frame_bytes: usize = "PORTCULLIS_MAX_FRAME_BYTES",
    /// Most connections served at once, on each transport.
    max_connections: usize = "PORTCULLIS_MAX_CONNECTIONS",
    /// Most connections served at once from one client address (IPv4 address or IPv6 /64).
    max_connections_per_ip: usize = "PORTCULLIS_MAX_CONNECTIONS_PER_IP",
    /// Seconds an idle TCP connection is kept (and a write waits for a client that does not read).
    idle_timeout_s: u64 = "PORTCULLIS_IDLE_TIMEOUT_S",
    /// Seconds a started request (TCP line, HTTP body) may take to arrive.
    frame_timeout_s: u64 = "PORTCULLIS_FRAME_TIMEOUT_S",
    /// Seconds an HTTP connection may take to send a request's headers (also its keep-alive idle limit).
    http_header_timeout_s: u64 = "PORTCULLIS_HTTP_HEADER_TIMEOUT_S",
    /// Events a LOG.TAIL follower may lag before it is disconnected.
    tail_max_lag: u64 = "PORTCULLIS_TAIL_MAX_LAG",
    /// Seconds in-flight work gets to finish on shutdown.
    shutdown_grace_s: u64 = "PORTCULLIS_SHUTDOWN_GRACE_S",
    /// `iss` of access tokens.
    issuer: String = "PORTCULLIS_ISSUER",
    /// `aud` of access tokens (default `portcullis`).
    audience: String = "PORTCULLIS_AUDIENCE",
    /// Access token lifetime, seconds.
    access_token_ttl_s: i64 = "PORTCULLIS_ACCESS_TOKEN_TTL_S",
    /// Sessions not refreshed for this long expire, seconds.
    refresh_idle_s: i64 = "PORTCULLIS_REFRESH_IDLE_S",
    /// Sessions expire this long after sign-in, seconds.
    refresh_absolute_s: i64 = "PORTCULLIS_REFRESH_ABSOLUTE_S",
    /// A reused refresh token within this many seconds gets the same pair back.
    refresh_grace_s: i64 = "PORTCULLIS_REFRESH_GRACE_S",
    /// argon2id memory, KiB.
    argon2_m_kib: u32 = "PORTCULLIS_ARGON2_M_KIB",
    /// argon2id passes.
    argon2_t: u32 = "PORTCULLIS_ARGON2_T",
    /// argon2id lanes.
    argon2_p: u32 = "PORTCULLIS_ARGON2_P",
    /// Password hashes computed at once (0: one per core).
    hash_concurrency: usize = "PORTCULLIS_HASH_CONCURRENCY",
    /// The store's page cache, MiB.
    store_cache_mb: u64 = "PORTCULLIS_STORE_CACHE_MB",
    /// End every group commit with an fdatasync of the database file (true/false).
    store_fsync: bool = "PORTCULLIS_STORE_FSYNC",
    /// Database connections per node (with --database-url).
    database_pool_size: usize = "PORTCULLIS_DATABASE_POOL_SIZE",
    /// Longest a database statement may run, milliseconds (with --database-url).
    database_timeout_ms: u64 = "PORTCULLIS_DATABASE_TIMEOUT_MS",
    /// LISTEN/NOTIFY between nodes (false for databases without it, e.g. CockroachDB).
    database_listen: bool = "PORTCULLIS_DATABASE_LISTEN",
    @optional {
        /// PostgreSQL instead of the embedded database: postgres://user@host:port/database.
        database_url: portcullis_core::base::config::SecretSetting = "PORTCULLIS_DATABASE_URL",
        /// File holding the database password.
        database_password_file: PathBuf = "PORTCULLIS_DATABASE_PASSWORD_FILE",
        /// TLS to the database: disable, require or verify-full (default: the URL's sslmode, else disable on loopback and verify-full elsewhere).
        database_tls: portcullis_store::PgTls = "PORTCULLIS_DATABASE_TLS",
        /// CA certificates (PEM) for database_tls = verify-full (default: the Mozilla roots).
        database_ca_file: PathBuf = "PORTCULLIS_DATABASE_CA_FILE",
        /// Certificate chain (PEM) for TLS on both listeners (with --tls-key); reloaded on SIGHUP or change.
        tls_cert: PathBuf = "PORTCULLIS_TLS_CERT",
        /// Private key (PEM) of --tls-cert.
        tls_key: PathBuf = "PORTCULLIS_TLS_KEY",
        /// CA certificates (PEM): the TCP listener then requires a client certificate issued by one of them (mTLS).
        tls_client_ca: PathBuf = "PORTCULLIS_TLS_CLIENT_CA",
    }
}

impl ServeArgs {
    fn config(&self) -> Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => Config::default(),
        };
        self.overlay(&mut c);
        portcullis_core::check_config(&c).map_err(anyhow::Error::msg)?;
        Ok(c)
    }
}

/// How to reach a running server.
#[derive(Args)]
struct Remote {
    /// Server TCP address.
    #[arg(long, env = "PORTCULLIS_ADDR")]
    addr: Option<String>,
    /// Bearer token (access token, API key or operator token).
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: ClientTls,
}

/// TLS to a server whose listeners have `tls_cert` set.
#[derive(Args)]
pub struct ClientTls {
    /// Speak TLS (implied by --ca-file and --client-cert).
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) that issued the server's certificate (default: the Mozilla roots).
    #[arg(long, env = "PORTCULLIS_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires one (tls_client_ca); with --client-key.
    #[arg(
        long,
        env = "PORTCULLIS_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "PORTCULLIS_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientTls {
    /// The TLS connector these flags ask for, or `None` for plain TCP.
    pub fn connector(&self) -> Result<Option<portcullis_client::TlsConnector>> {
        let options = portcullis_client::TlsOptions {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        Ok(options.connector_if_asked(self.tls)?)
    }
}

#[derive(Args)]
struct ExecArgs {
    /// Command name, e.g. SYS.PING.
    command: String,
    /// Params as a JSON object.
    params: Option<String>,
    #[command(flatten)]
    remote: Remote,
    /// Print the envelope on one line.
    #[arg(long)]
    raw: bool,
}

#[derive(Subcommand)]
enum LogCmd {
    /// Print events: online through LOG.TAIL (`--addr`), or offline from a stopped server's
    /// data directory (`--data-dir`).
    Tail(TailArgs),
    /// Check the hash chain; exits 1 when it is broken.
    Verify(VerifyArgs),
    /// Remove the oldest events through a seq (LOG.PRUNE; the operator token). Archive them
    /// first: `log tail --from 1 --json > archive.ndjson`, then `log verify --file`.
    Prune(PruneArgs),
}

/// Where the log is: a running server, or a data directory.
#[derive(Args)]
struct LogSource {
    #[command(flatten)]
    remote: Remote,
    /// Read a stopped server's data directory instead of asking a running server.
    #[arg(long, conflicts_with = "addr")]
    data_dir: Option<PathBuf>,
    /// With --data-dir: the deployment's PostgreSQL database (its data lives there, the data
    /// directory keeps the node's keys).
    #[arg(
        long,
        env = "PORTCULLIS_DATABASE_URL",
        requires = "data_dir",
        hide_env_values = true
    )]
    database_url: Option<portcullis_core::base::config::SecretSetting>,
}

#[derive(Args)]
struct TailArgs {
    /// Keep printing new events (online only).
    #[arg(short = 'f', long)]
    follow: bool,
    /// First seq to print (default: 1 offline; only new events online).
    #[arg(long = "from")]
    from_seq: Option<u64>,
    /// One JSON event per line.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    filter: EventFilter,
    #[command(flatten)]
    source: LogSource,
}

/// Which events `log tail` prints. Online, the server streams every event and the filter is
/// applied here.
#[derive(Args)]
struct EventFilter {
    /// Only events of this command (e.g. SYS.INFO; case-insensitive).
    #[arg(long, value_name = "NAME")]
    command: Option<String>,
    /// Only events of this actor: anonymous, operator, system, user:ID, apikey:ID, or a kind
    /// alone (user, apikey) for all of that kind.
    #[arg(long, value_name = "ACTOR")]
    actor: Option<String>,
    /// Only events with this outcome: ok or an error code (e.g. RATE_LIMITED; case-insensitive).
    #[arg(long, value_name = "OUTCOME")]
    outcome: Option<String>,
}

impl EventFilter {
    fn matches(&self, e: &Event) -> bool {
        let command = self.command.as_deref().is_none_or(|want| {
            e.command
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(want))
        });
        let actor = self.actor.as_deref().is_none_or(|want| {
            let actor = e.actor.to_string();
            actor == want
                || actor
                    .strip_prefix(want)
                    .is_some_and(|rest| rest.starts_with(':'))
        });
        let outcome = self
            .outcome
            .as_deref()
            .is_none_or(|want| e.outcome.eq_ignore_ascii_case(want));
        command && actor && outcome
    }
}

#[derive(Args)]
struct VerifyArgs {
    #[command(flatten)]
    source: LogSource,
    /// Check an archive instead: events as `log tail --json` prints them, one per line. The
    /// report names its last event, which must be the checkpoint `LOG.PRUNE` left.
    #[arg(long, conflicts_with_all = ["addr", "data_dir"])]
    file: Option<PathBuf>,
}

#[derive(Args)]
struct PruneArgs {
    /// Remove every event with seq ≤ this one.
    #[arg(long)]
    through: u64,
    #[command(flatten)]
    remote: Remote,
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(cli.cmd)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Serve(args) => serve(args.config()?).await,
        Cmd::Exec(args) => exec(args).await,
        Cmd::Log {
            cmd: LogCmd::Tail(a),
        } => tail(a).await,
        Cmd::Log {
            cmd: LogCmd::Verify(a),
        } => verify(a).await,
        Cmd::Log {
            cmd: LogCmd::Prune(a),
        } => prune(a).await,
        Cmd::Bench(a) => portcullis_bench::run(*a).await,
        Cmd::Admin {
            cmd: AdminCmd::Bootstrap(a),
        } => bootstrap(a).await,
        Cmd::Admin {
            cmd: AdminCmd::Migrate(a),
        } => migrate(a).await,
        Cmd::Admin {
            cmd: AdminCmd::Export(a),
        } => export(a).await,
        Cmd::Admin {
            cmd: AdminCmd::Import(a),
        } => import(a).await,
        Cmd::Admin {
            cmd:
                AdminCmd::RotateMasterKey {
                    data_dir,
                    database_url,
                },
        } => {
            let database = database_url
                .as_ref()
                .map(|u| portcullis_store::PgOptions::new(u.expose()));
            if database.is_none() && !data_dir.join("db").exists() {
                bail!("{} holds no Portcullis database", data_dir.display());
            }
            let r = portcullis_core::ops::rekey::rotate_master_key(&data_dir, database.as_ref())
                .await
                .with_context(|| {
                    format!(
                        "rotating the master key of {} (is a server running on it?)",
                        data_dir.display()
                    )
                })?;
            println!(
                "master key rotated: {} re-sealed; the old key is in {}",
                r.summary(),
                data_dir
                    .join(portcullis_core::infra::node::PREVIOUS_KEY_FILE)
                    .display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `admin export`.
async fn export(a: ExportArgs) -> Result<ExitCode> {
    let from = &a.from;
    let m = portcullis_core::ops::transfer::export(&from.location(), &a.out)
        .await
        .with_context(|| {
            format!(
                "exporting the {} deployment of {} (is a node running on it?)",
                from.kind(),
                from.data_dir.display()
            )
        })?;
    println!(
        "exported {} rows and {} events (seq {}..={}) from {} to {}; the file is as sensitive \
         as the database",
        m.rows,
        m.events,
        m.first_seq,
        m.head_seq,
        from.kind(),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `admin import`.
async fn import(a: ImportArgs) -> Result<ExitCode> {
    let to = &a.to;
    let m = portcullis_core::ops::transfer::import(&a.input, &to.location())
        .await
        .with_context(|| {
            format!(
                "importing {} into {} ({})",
                a.input.display(),
                to.kind(),
                to.data_dir.display()
            )
        })?;
    println!(
        "imported {} rows and {} events (seq {}..={}) into {}; start the node on it",
        m.rows,
        m.events,
        m.first_seq,
        m.head_seq,
        to.kind()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(config: Config) -> Result<ExitCode> {
    // Signal handlers first: a SIGTERM that arrives the moment the ports are announced must
    // still shut down gracefully, not kill the process.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let data_dir = config.data_dir.clone();
    let app = App::open(config, Arc::new(SystemClock))
        .await
        .with_context(|| format!("opening data directory {}", data_dir.display()))?;
    let server = portcullis_server::Server::start(Arc::clone(&app))
        .await
        .context("starting the listeners (addresses, TLS files)")?;
    // One machine-readable line on stdout, so scripts and tests can find the bound ports.
    // With TLS it says so (`tls=on`, and `client_certs=required` for mTLS on TCP) before
    // `data_dir`, which stays last.
    let tls = match (server.tls, server.client_certs) {
        (false, _) => "",
        (true, false) => " tls=on",
        (true, true) => " tls=on client_certs=required",
    };
    println!(
        "portcullis listening tcp={} http={}{tls} data_dir={}",
        server.tcp_addr,
        server.http_addr,
        data_dir.display()
    );
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
    let drained = server.shutdown().await;
    app.close();
    tracing::info!(drained, "stopped");
    Ok(ExitCode::SUCCESS)
}

impl Remote {
    fn addr(&self) -> &str {
        self.addr.as_deref().unwrap_or(DEFAULT_ADDR)
    }

    /// `--token`, else `PORTCULLIS_TOKEN`, else the operator token of the default data directory.
    fn token(&self, fallback_dir: &Path) -> Option<Secret> {
        match &self.token {
            Some(t) => Some(Secret::new(t.clone())),
            None => portcullis_core::infra::node::read_operator_token(fallback_dir),
        }
    }

    async fn connect(&self, operator_fallback: bool) -> Result<Client> {
        let stream = match self.tls.connector()? {
            Some(tls) => tls.connect(self.addr()).await,
            None => portcullis_client::Stream::connect(self.addr(), None).await,
        };
        let mut c = Client::over(stream.with_context(|| format!("connecting to {}", self.addr()))?);
        let token = if operator_fallback {
            self.token(Path::new(DEFAULT_DATA_DIR))
        } else {
            self.token.clone().map(Secret::new)
        };
        c.set_token(token);
        Ok(c)
    }
}

async fn exec(a: ExecArgs) -> Result<ExitCode> {
    let params = match &a.params {
        Some(p) => serde_json::from_str(p).context("params must be JSON")?,
        None => serde_json::json!({}),
    };
    let mut c = a.remote.connect(false).await?;
    let r = c.send(Request::new(&a.command).params(params)).await?;
    let text = if a.raw {
        serde_json::to_string(&r)?
    } else {
        serde_json::to_string_pretty(&r)?
    };
    println!("{text}");
    Ok(if r.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The event log of a stopped server: its sled database, or the deployment's PostgreSQL
/// database when `database_url` is given.
async fn open_offline_log(
    dir: &Path,
    database_url: Option<&portcullis_core::base::config::SecretSetting>,
) -> Result<Arc<dyn portcullis_store::EventLog>> {
    Ok(match database_url {
        Some(url) => Arc::new(
            portcullis_store::PgStore::connect(&portcullis_store::PgOptions::new(url.expose()))
                .await
                .context("connecting to the database")?,
        ),
        None => Arc::new(open_offline(dir)?),
    })
}

fn open_offline(dir: &Path) -> Result<SledStore> {
    if !dir.join("db").exists() {
        bail!("{} holds no Portcullis database", dir.display());
    }
    SledStore::open(dir).with_context(|| {
        format!(
            "opening {} (if a server is running on it, use --addr instead)",
            dir.display()
        )
    })
}

/// Prints events: JSON lines, or one readable line each, coloured on a terminal (never when
/// stdout is not a terminal or `NO_COLOR` is set).
struct EventPrinter {
    json: bool,
    out: anstream::AutoStream<std::io::Stdout>,
}

impl EventPrinter {
    fn new(json: bool) -> Self {
        use std::io::IsTerminal;
        let stdout = std::io::stdout();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let choice = if json || no_color || !stdout.is_terminal() {
            anstream::ColorChoice::Never
        } else {
            anstream::AutoStream::choice(&stdout)
        };
        EventPrinter {
            json,
            out: anstream::AutoStream::new(stdout, choice),
        }
    }

    fn print(&mut self, e: &Event) -> Result<()> {
        use anstyle::{AnsiColor, Style};
        use std::io::Write;
        if self.json {
            writeln!(self.out, "{}", serde_json::to_string(e)?)?;
            return Ok(());
        }
        let dim = Style::new().dimmed();
        let what = Style::new().bold();
        let outcome = match e.outcome.as_str() {
            "ok" => AnsiColor::Green.on_default(),
            "RATE_LIMITED" | "UNAUTHENTICATED" | "FORBIDDEN" => AnsiColor::Yellow.on_default(),
            _ => AnsiColor::Red.on_default().bold(),
        };
        let who = match &e.actor {
            portcullis_protocol::Actor::User(_) | portcullis_protocol::Actor::ApiKey(_) => {
                AnsiColor::Cyan.on_default()
            }
            portcullis_protocol::Actor::Operator => AnsiColor::Magenta.on_default(),
            _ => dim,
        };
        let from = format!("{} {}", e.client.as_deref().unwrap_or("-"), e.transport);
        write!(
            self.out,
            "{dim}#{:<6} {}{dim:#} {what}{:<20}{what:#} {outcome}{:<18}{outcome:#} \
             {who}{:<24}{who:#} {dim}{:<26}{dim:#} {:>7}us",
            e.seq,
            e.time,
            e.command.as_deref().unwrap_or("-"),
            e.outcome,
            e.actor.to_string(),
            from,
            e.duration_us,
        )?;
        if e.summary.is_empty() {
            writeln!(self.out)?;
        } else {
            writeln!(self.out, " {}", serde_json::to_string(&e.summary)?)?;
        }
        Ok(())
    }
}

/// Whether printing failed because the reader went away (`log tail | head`): a normal end.
fn reader_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn tail(a: TailArgs) -> Result<ExitCode> {
    match tail_events(&a).await {
        Err(e) if reader_gone(&e) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

async fn tail_events(a: &TailArgs) -> Result<ExitCode> {
    let mut printer = EventPrinter::new(a.json);
    let mut print = |e: &Event| -> Result<()> {
        if a.filter.matches(e) {
            printer.print(e)?;
        }
        Ok(())
    };
    if let Some(dir) = &a.source.data_dir {
        if a.follow {
            bail!("--follow needs a running server: use --addr");
        }
        let store = open_offline_log(dir, a.source.database_url.as_ref()).await?;
        let mut next = a.from_seq.unwrap_or(1).max(1);
        let head = store.head_seq();
        while next <= head {
            let page = store.read(next, head, 4096).await?;
            let Some(last) = page.last() else { break };
            next = last.seq + 1;
            for entry in page {
                match entry.event {
                    Ok(e) => print(&e)?,
                    Err(err) => eprintln!("#{}: unreadable event: {err}", entry.seq),
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let client = a.source.remote.connect(true).await?;
    let mut t = client
        .tail(TailParams {
            from_seq: a.from_seq,
            follow: a.follow,
        })
        .await?;
    while let Some(item) = t.next().await? {
        match item {
            TailItem::Event(e) => print(&e)?,
            TailItem::CaughtUp { .. } => {}
            TailItem::End { .. } => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bootstrap(a: BootstrapArgs) -> Result<ExitCode> {
    let params = serde_json::json!({ "email": a.email });
    let response = match &a.source.data_dir {
        Some(dir) => {
            let mut config = match &a.config {
                Some(path) => toml::from_str(&std::fs::read_to_string(path)?)
                    .with_context(|| format!("parsing {}", path.display()))?,
                None => Config::default(),
            };
            config.data_dir = dir.clone();
            config.database_url.clone_from(&a.source.database_url);
            if config.database_url.is_none() && !dir.join("db").exists() {
                bail!("{} holds no Portcullis database", dir.display());
            }
            let app = App::open(config, Arc::new(SystemClock))
                .await
                .with_context(|| {
                    format!(
                        "opening {} (if a server is running on it, use --addr)",
                        dir.display()
                    )
                })?;
            // Through the dispatcher, as the operator, so the bootstrap is audited like any command.
            let token = portcullis_core::infra::node::read_operator_token(dir)
                .context("no operator.token in the data directory")?;
            let d = portcullis_core::Dispatcher::new(Arc::clone(&app));
            let conn = portcullis_core::ConnInfo {
                transport: portcullis_core::Transport::Internal,
                client: None,
                user_agent: Some("portcullis admin bootstrap".into()),
            };
            let req = Request::new("ADMIN.BOOTSTRAP").params(params).token(token);
            let r = d.execute(req, &conn).await.into_response().await;
            // Let the mail reach the outbox or the SMTP server before the process ends.
            for _ in 0..100 {
                if app
                    .mailer
                    .stats
                    .depth
                    .load(std::sync::atomic::Ordering::Relaxed)
                    == 0
                {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            app.close();
            r.context("no answer")?
        }
        None => {
            let mut c = a.source.remote.connect(true).await?;
            c.send(Request::new("ADMIN.BOOTSTRAP").params(params))
                .await?
        }
    };
    if !response.ok {
        let e = response
            .error
            .clone()
            .map(|e| format!("{}: {}", e.code, e.message))
            .unwrap_or_default();
        eprintln!("error: {e}");
        return Ok(ExitCode::from(1));
    }
    println!(
        "superadmin: {}",
        response.data["user_id"].as_str().unwrap_or("")
    );
    println!(
        "one-time sign-in link (expires in {} s):",
        response.data["expires_in"]
    );
    println!("{}", response.data["link"].as_str().unwrap_or(""));
    Ok(ExitCode::SUCCESS)
}

async fn verify(a: VerifyArgs) -> Result<ExitCode> {
    if let Some(file) = &a.file {
        return verify_archive(file);
    }
    let report: VerifyReport = match &a.source.data_dir {
        Some(dir) => {
            let store = open_offline_log(dir, a.source.database_url.as_ref()).await?;
            verify_events(store.as_ref(), 1, None).await?
        }
        None => {
            let mut c = a.source.remote.connect(true).await?;
            let params = serde_json::to_value(VerifyParams::default())?;
            c.call_ok("LOG.VERIFY", params).await?
        }
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `log verify --file`: the chain of an archive, from its first event (whose `prev` is checked
/// only at seq 1) to its last, which the report names.
fn verify_archive(path: &Path) -> Result<ExitCode> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut verifier: Option<ChainVerifier> = None;
    let mut last: Option<Checkpoint> = None;
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str::<Event>(&line)
            .map_err(|e| portcullis_store::RecordError::Body(format!("line {}: {e}", n + 1)));
        let seq = match &event {
            Ok(e) => e.seq,
            Err(_) => last.as_ref().map_or(1, |l| l.seq + 1),
        };
        let v = verifier.get_or_insert_with(|| match seq {
            1 => ChainVerifier::from_genesis(),
            _ => ChainVerifier::new(seq, None),
        });
        if let Ok(e) = &event {
            last = Some(Checkpoint {
                seq: e.seq,
                hash: e.hash.clone(),
            });
        }
        if !v.feed(&LogEntry { seq, event }) {
            break;
        }
    }
    let report = verifier.map(|v| v.report(last.as_ref().map_or(0, |l| l.seq)));
    let valid = report.as_ref().is_none_or(|r| r.valid);
    let out = serde_json::json!({
        "valid": valid,
        "checked": report.as_ref().map_or(0, |r| r.checked),
        "first_broken_seq": report.as_ref().and_then(|r| r.first_broken_seq),
        "reason": report.as_ref().and_then(|r| r.reason.clone()),
        "last": last,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn prune(a: PruneArgs) -> Result<ExitCode> {
    let mut c = a.remote.connect(true).await?;
    let params = serde_json::to_value(PruneParams {
        through_seq: a.through,
    })?;
    let r: PruneResult = c.call_ok("LOG.PRUNE", params).await?;
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}
