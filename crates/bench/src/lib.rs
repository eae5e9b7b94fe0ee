//! `portcullis bench`: throughput and latency of named workloads against a Portcullis server,
//! with a reference measurement (an *anchor*) taken in the same run so results read as ratios
//! to what the machine does at all. See docs/performance.md.
//!
//! Without `--addr` the bench starts its own server in this process (its own runtime, a
//! temporary data directory, rate limits off): on sled, or with `--database-url` on
//! PostgreSQL, as one node or `--nodes N` on the one database (connections round-robin over
//! them). A database given to the bench must be empty; the bench drops what it created there
//! at the end (see [`pg`]). A server given with `--addr` must have
//! `rate_limits.enabled = false`, or the run counts `RATE_LIMITED` errors.

#![warn(missing_docs)]

pub mod anchors;
pub mod conn;
pub mod pg;
pub mod server;
pub mod stats;
pub mod workloads;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use portcullis_core::base::config::SecretSetting;
use serde::Serialize;
use stats::{fmt_count, fmt_ms, measure, Cpu, Display, Interval, Latency, Measured, Recorder};
use stats::{ServerProc, Window, CLIENT_THREAD};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use workloads::{drive, Fixed, Prepared, Setup};

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// `SYS.PING` (no log event, no disk).
    Ping,
    /// `USER.ME` with a bearer token: signature check, session check, account read, log append.
    Me,
    /// One durable single-use consumption per request (`AUTH.REFRESH`; `--pipeline` chains per
    /// connection).
    Consume,
    /// `AUTH.LOGIN` with a password (argon2id).
    Login,
    /// `AUTH.REFRESH` chains, one per connection.
    Refresh,
    /// Logins saturating the CPU, with a `SYS.PING` probe whose latency is reported.
    Mixed,
    /// `LOG.VERIFY` over a log of `--events` events.
    LogVerify,
    /// `LOG.TAIL` replay from seq 1 to the end of a log of `--events` events.
    LogReplay,
}

impl Workload {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Ping => "ping",
            Workload::Me => "me",
            Workload::Consume => "consume",
            Workload::Login => "login",
            Workload::Refresh => "refresh",
            Workload::Mixed => "mixed",
            Workload::LogVerify => "log-verify",
            Workload::LogReplay => "log-replay",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Workload::Ping => "SYS.PING",
            Workload::Me => "USER.ME",
            Workload::Consume => "AUTH.REFRESH (consume)",
            Workload::Login => "AUTH.LOGIN",
            Workload::Refresh => "AUTH.REFRESH chains",
            Workload::Mixed => "AUTH.LOGIN + SYS.PING probe",
            Workload::LogVerify => "LOG.VERIFY",
            Workload::LogReplay => "LOG.TAIL replay",
        }
    }

    /// The anchor used when `--anchor` is not given, on sled.
    pub fn default_anchor(self) -> Anchor {
        match self {
            Workload::Ping | Workload::Me => Anchor::Redis,
            Workload::Login | Workload::Mixed => Anchor::Argon2,
            Workload::Consume | Workload::Refresh => Anchor::Sled,
            Workload::LogVerify | Workload::LogReplay => Anchor::None,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Workload::Login | Workload::Mixed => "logins/s",
            Workload::LogVerify | Workload::LogReplay => "events/s",
            _ => "req/s",
        }
    }
}

/// The reference measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Anchor {
    /// redis-server `PING`, same connections and pipeline depth.
    Redis,
    /// Raw argon2id hashes with the server's parameters, one thread per core.
    Argon2,
    /// Raw durable inserts through the group commit, same concurrency.
    Sled,
    /// PostgreSQL's `pgbench`, builtin simple-update, same concurrency, on the bench's
    /// database (needs `--database-url`).
    Pgbench,
    /// None.
    None,
}

impl Anchor {
    fn name(self) -> &'static str {
        match self {
            Anchor::Redis => "redis",
            Anchor::Argon2 => "argon2",
            Anchor::Sled => "sled",
            Anchor::Pgbench => "pgbench",
            Anchor::None => "none",
        }
    }
}

/// Parses `500ms`, `10s`, `2m`, `1h` or a plain number of seconds (fractions allowed).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 500ms, 10s, 2m or 1h"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: the unit must be ms, s, m or h")),
    };
    if !secs.is_finite() || !(0.0..=7.0 * 24.0 * 3600.0).contains(&secs) {
        return Err(format!("{s:?}: out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `portcullis bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Workload to run.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Server TCP address; without it the bench starts its own server (rate limits off) on a
    /// temporary data directory. A target given here must run with rate_limits.enabled = false.
    #[arg(long, conflicts_with_all = ["database_url", "nodes"])]
    pub addr: Option<String>,
    /// Run the bench's own server on this PostgreSQL database instead of sled. It must be an
    /// empty database of the bench's own: the run creates its tables there (and pgbench's, for
    /// the pgbench anchor) and drops them at the end. The password may come from
    /// PORTCULLIS_DATABASE_PASSWORD.
    #[arg(long, env = "PORTCULLIS_BENCH_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretSetting>,
    /// Nodes of the bench's own server, each with its own data directory, all on the
    /// --database-url database; connections are spread round-robin over them.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Requests written per batch on each connection before the answers are read.
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// How long to measure (500ms, 10s, 2m, 10m …).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring starts, not counted.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Reference measured in the same run (default: redis for ping/me, argon2 for login/mixed,
    /// sled for consume/refresh — pgbench with --database-url —, none for log-*).
    #[arg(long, value_enum)]
    pub anchor: Option<Anchor>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print throughput, p99 and server RSS every --interval (on by itself from 1m).
    #[arg(long)]
    pub soak: bool,
    /// Reporting interval.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Events in the log for log-verify and log-replay (built first with SYS.INFO if fewer).
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Operator token for log-* against --addr.
    #[arg(long, env = "PORTCULLIS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Speak TLS to the --addr server (implied by --ca-file).
    #[arg(long, requires = "addr")]
    pub tls: bool,
    /// CA certificates (PEM) that issued the --addr server's certificate (default: the Mozilla
    /// roots).
    #[arg(long, value_name = "FILE", requires = "addr")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for a server that requires one; with --client-key.
    #[arg(long, value_name = "FILE", requires_all = ["addr", "client_key"])]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --addr).
    #[arg(long, value_name = "NAME", requires = "addr")]
    pub tls_server_name: Option<String>,
    /// PID of the --addr server, for its RSS and CPU figures.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Pause between the SYS.PING probes of `mixed`.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Defaults for `workload`, as the command line gives them.
    pub fn new(workload: Workload) -> BenchArgs {
        BenchArgs {
            workload,
            addr: None,
            database_url: None,
            nodes: 1,
            connections: 16,
            pipeline: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            anchor: None,
            json: false,
            soak: false,
            interval: Duration::from_secs(10),
            events: 200_000,
            token: None,
            server_pid: None,
            tls: false,
            ca_file: None,
            client_cert: None,
            client_key: None,
            tls_server_name: None,
            probe_interval: Duration::from_millis(1),
            quiet: false,
        }
    }

    /// The TLS connector `--tls`, `--ca-file` and `--client-cert` ask for.
    fn tls_connector(&self) -> Result<Option<portcullis_client::TlsConnector>> {
        let options = portcullis_client::TlsOptions {
            ca_file: self.ca_file.clone(),
            client_cert: self.client_cert.clone(),
            client_key: self.client_key.clone(),
            server_name: self.tls_server_name.clone(),
        };
        Ok(options.connector_if_asked(self.tls)?)
    }

    fn anchor(&self) -> Anchor {
        self.anchor.unwrap_or(match self.workload.default_anchor() {
            Anchor::Sled if self.database_url.is_some() => Anchor::Pgbench,
            a => a,
        })
    }
}

/// The reference measurement of a report.
#[derive(Debug, Clone, Serialize)]
pub struct AnchorReport {
    /// `redis`, `argon2`, `sled` or `pgbench`.
    pub name: String,
    /// What was measured.
    pub what: String,
    /// Operations per second.
    pub throughput: f64,
    /// Latency per operation.
    pub latency_us: Latency,
    /// Failures.
    pub errors: u64,
    /// CPU used (client = load generator, server = the reference system).
    pub cpu: Option<Cpu>,
    /// The workload's throughput divided by the anchor's.
    pub ratio: f64,
}

/// The `SYS.PING` probe of `mixed`.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// The probe's command.
    pub command: String,
    /// Probes answered.
    pub requests: u64,
    /// Probes failed.
    pub errors: u64,
    /// Probe latency.
    pub latency_us: Latency,
}

/// Log figures of log-verify and log-replay.
#[derive(Debug, Clone, Serialize)]
pub struct LogReport {
    /// Events in the log.
    pub events: u64,
    /// Events appended to build it in this run.
    pub built: u64,
    /// Events appended per second while building (pipelined SYS.INFO), if any were.
    pub build_events_per_s: Option<f64>,
    /// Verifications or replays completed.
    pub runs: u64,
}

/// Everything a run measured. `--json` prints this.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: Workload,
    /// What its requests are.
    pub command: String,
    /// `in-process` or `external`.
    pub server: String,
    /// The in-process server's store: `sled` or `postgresql` (`null` for an external server).
    pub store: Option<String>,
    /// Nodes of the in-process server (1 for an external server).
    pub nodes: usize,
    /// Server address (the first node's).
    pub addr: String,
    /// Every node's address; connections go round-robin over them.
    pub addrs: Vec<String>,
    /// Connections.
    pub connections: usize,
    /// Pipeline depth.
    pub pipeline: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Successful answers plus failures.
    pub requests: u64,
    /// Failures (error answers and connection failures).
    pub errors: u64,
    /// Failures by code.
    pub error_codes: BTreeMap<String, u64>,
    /// Unit of `throughput`.
    pub unit: String,
    /// Successful operations per second (events per second for log-*).
    pub throughput: f64,
    /// Latency per request (per verification or replay for log-*).
    pub latency_us: Latency,
    /// CPU used while measuring.
    pub cpu: Option<Cpu>,
    /// Server RSS at the end, KiB (the bench's own process for an in-process server).
    pub rss_kib: Option<u64>,
    /// Per-interval figures.
    pub intervals: Vec<Interval>,
    /// `mixed`: the ping probe.
    pub probe: Option<ProbeReport>,
    /// log-*: log figures.
    pub log: Option<LogReport>,
    /// The reference measurement.
    pub anchor: Option<AnchorReport>,
    /// The machine the run was taken on.
    pub machine: Machine,
}

/// Facts about the machine, for reading the figures.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Cores available to the bench.
    pub cores: usize,
    /// 1-minute load average when the run started.
    pub load_1m_at_start: Option<f64>,
}

impl Machine {
    fn now() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(2, |n| n.get()),
            load_1m_at_start: std::fs::read_to_string("/proc/loadavg")
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok()),
        }
    }
}

/// Runs `portcullis bench` and prints the report; exits 1 when any request failed.
pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    let json = args.json;
    let report = tokio::task::spawn_blocking(move || execute(&args))
        .await
        .map_err(|e| anyhow!("the bench failed: {e}"))??;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs the bench on a runtime of its own (threads named `pcb-client`) and returns the report.
/// Blocks; call it outside any async runtime.
pub fn execute(args: &BenchArgs) -> Result<Report> {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .context("starting the load generator's runtime")?;
    let args = args.clone();
    rt.block_on(async move {
        tokio::spawn(bench(args))
            .await
            .map_err(|e| anyhow!("the bench task failed: {e}"))?
    })
}

struct Target {
    addrs: Vec<String>,
    /// TLS to `addrs` (`--tls` / `--ca-file` with `--addr`).
    tls: Option<portcullis_client::TlsConnector>,
    proc: ServerProc,
    token: Option<String>,
    local: Option<server::LocalServer>,
    db: Option<pg::BenchDatabase>,
}

impl Target {
    fn addr(&self) -> &str {
        self.addrs.first().map_or("", String::as_str)
    }
}

async fn bench(args: BenchArgs) -> Result<Report> {
    if args.connections == 0 || args.connections > 4096 {
        bail!("--connections must be between 1 and 4096");
    }
    if args.pipeline == 0 || args.pipeline > 1024 {
        bail!("--pipeline must be between 1 and 1024");
    }
    if args.workload == Workload::Refresh && args.pipeline != 1 {
        bail!("refresh runs one chain per connection, one request at a time: use consume for pipelined chains");
    }
    if args.duration.is_zero() {
        bail!("--duration must be more than 0");
    }
    if args.nodes == 0 || args.nodes > 16 {
        bail!("--nodes must be between 1 and 16");
    }
    if args.nodes > 1 && args.database_url.is_none() {
        bail!(
            "--nodes {} needs --database-url: several nodes share one PostgreSQL database",
            args.nodes
        );
    }
    if args.anchor() == Anchor::Pgbench && args.database_url.is_none() {
        bail!("the pgbench anchor runs on the bench's PostgreSQL database: pass --database-url");
    }
    let target = match &args.addr {
        Some(addr) => Target {
            addrs: vec![addr.clone()],
            tls: args.tls_connector()?,
            proc: args.server_pid.map_or(ServerProc::Unknown, ServerProc::Pid),
            token: args.token.clone(),
            local: None,
            db: None,
        },
        None => {
            let db = match &args.database_url {
                Some(url) => Some(pg::BenchDatabase::open(url.expose()).await?),
                None => None,
            };
            let url = args.database_url.clone();
            let nodes = args.nodes;
            let started = tokio::task::spawn_blocking(move || {
                server::LocalServer::start_nodes(url.as_ref().map(|u| u.expose()), nodes)
            })
            .await
            .map_err(|e| anyhow!("starting the server: {e}"));
            let local = match started.and_then(|r| r) {
                Ok(local) => local,
                Err(e) => {
                    if let Some(db) = db {
                        let _ = db.clean_up().await;
                    }
                    return Err(e);
                }
            };
            Target {
                addrs: local.addrs.iter().map(ToString::to_string).collect(),
                tls: None,
                proc: ServerProc::InProcess,
                token: local.operator_token(),
                local: Some(local),
                db,
            }
        }
    };
    let result = bench_on(&args, &target).await;
    let Target { local, db, .. } = target;
    if let Some(local) = local {
        let _ = tokio::task::spawn_blocking(move || drop(local)).await;
    }
    // After the nodes stopped: nothing holds the tables any more.
    let cleaned = match db {
        Some(db) => db.clean_up().await,
        None => Ok(()),
    };
    let report = result?;
    cleaned.context("the run finished, but cleaning up its database failed")?;
    Ok(report)
}

fn display(args: &BenchArgs, label: &str) -> Display {
    Display {
        label: label.to_owned(),
        progress: !args.quiet,
        interval: args.interval,
        print_intervals: args.soak || args.duration >= Duration::from_secs(60),
    }
}

async fn bench_on(args: &BenchArgs, target: &Target) -> Result<Report> {
    let run_id = format!("{:08x}", rand::random::<u32>());
    let mut pgbench_what = String::new();
    let machine = Machine::now();
    let w = args.workload;
    let mut report = match w {
        Workload::LogVerify | Workload::LogReplay => log_workload(args, target).await?,
        _ => load_workload(args, target, &run_id).await?,
    };
    report.rss_kib = target.proc.rss_kib();
    report.machine = machine;
    let anchor = args.anchor();
    let concurrency = args.connections * args.pipeline;
    let measured = match anchor {
        Anchor::None => None,
        Anchor::Redis => Some(
            anchors::redis(
                args.connections,
                args.pipeline,
                args.warmup,
                args.duration,
                &display(args, "redis PING"),
            )
            .await?,
        ),
        Anchor::Argon2 => {
            Some(anchors::argon2(args.warmup, args.duration, &display(args, "argon2id")).await?)
        }
        Anchor::Sled => Some(
            anchors::sled(
                concurrency,
                args.warmup,
                args.duration,
                &display(args, "sled put+sync"),
            )
            .await?,
        ),
        Anchor::Pgbench => {
            let db = target.db.as_ref().ok_or_else(|| {
                anyhow!("the pgbench anchor runs on the bench's PostgreSQL database: pass --database-url")
            })?;
            let (m, what) =
                pg::pgbench(db, &run_id, concurrency, args.warmup, args.duration).await?;
            pgbench_what = what;
            Some(m)
        }
    };
    report.anchor = measured.map(|m| {
        let (mk, t, p) = anchors::server_argon2();
        let what = match anchor {
            Anchor::Redis => format!(
                "redis-server PING, {} connections, pipeline {}",
                args.connections, args.pipeline
            ),
            Anchor::Argon2 => format!(
                "argon2id m={mk} KiB t={t} p={p}, {} threads",
                std::thread::available_parallelism().map_or(2, |n| n.get())
            ),
            Anchor::Sled => format!("SledStore put + sync (group commit), {concurrency} writers"),
            Anchor::Pgbench => pgbench_what.clone(),
            Anchor::None => String::new(),
        };
        // Rounded as reported, and the ratio from the two reported figures, so a reader who
        // divides them gets the ratio shown (at a few operations per second the rounding
        // matters).
        let throughput = m.throughput().round();
        AnchorReport {
            name: anchor.name().to_owned(),
            what,
            throughput,
            latency_us: Latency::of(&m.hist),
            errors: m.errors,
            cpu: m.cpu,
            ratio: if throughput > 0.0 {
                (report.throughput / throughput * 1000.0).round() / 1000.0
            } else {
                0.0
            },
        }
    });
    Ok(report)
}

fn base_report(args: &BenchArgs, target: &Target, m: &Measured) -> Report {
    Report {
        workload: args.workload,
        command: args.workload.what().to_owned(),
        server: if target.local.is_some() {
            "in-process".into()
        } else {
            "external".into()
        },
        store: target.local.as_ref().map(|_| {
            if args.database_url.is_some() {
                "postgresql".to_owned()
            } else {
                "sled".to_owned()
            }
        }),
        nodes: target.addrs.len(),
        addr: target.addr().to_owned(),
        addrs: target.addrs.clone(),
        connections: args.connections,
        pipeline: args.pipeline,
        duration_s: (m.secs * 1000.0).round() / 1000.0,
        warmup_s: args.warmup.as_secs_f64(),
        requests: m.ok + m.errors,
        errors: m.errors,
        error_codes: m.codes.clone(),
        unit: args.workload.unit().to_owned(),
        throughput: m.throughput().round(),
        latency_us: Latency::of(&m.hist),
        cpu: m.cpu,
        rss_kib: None,
        intervals: m.intervals.clone(),
        probe: None,
        log: None,
        anchor: None,
        machine: Machine::now(),
    }
}

async fn load_workload(args: &BenchArgs, target: &Target, run: &str) -> Result<Report> {
    use workloads as wl;
    let w = args.workload;
    let (setup, make): (Setup, wl::MakeDriver) = match w {
        Workload::Ping => (Setup::None, wl::ping_driver),
        Workload::Me => (Setup::Session, wl::me_driver),
        Workload::Consume => (Setup::Sessions, wl::chain_driver),
        Workload::Refresh => (Setup::Session, wl::chain_driver),
        Workload::Login | Workload::Mixed => (Setup::Password, wl::login_driver),
        Workload::LogVerify | Workload::LogReplay => bail!("not a load workload"),
    };
    let prepared = wl::prepare(
        &target.addrs,
        target.tls.clone(),
        args.connections,
        args.pipeline,
        run,
        setup,
        make,
    )
    .await?;
    let probe_conn = if w == Workload::Mixed {
        Some(conn::LineConn::connect_with(target.addr(), target.tls.as_ref()).await?)
    } else {
        None
    };
    let recorder = Recorder::default();
    let probe_recorder = Recorder::default();
    let window = Window::new(args.warmup, args.duration);
    let mut workers: Vec<_> = prepared
        .into_iter()
        .map(|Prepared { conn, driver }| {
            tokio::spawn(drive(conn, driver, recorder.shard(), window, None))
        })
        .collect();
    if let Some(c) = probe_conn {
        let d = Box::new(Fixed::new(wl::ping_line(), 1, wl::judge));
        workers.push(tokio::spawn(drive(
            c,
            d,
            probe_recorder.shard(),
            window,
            Some(args.probe_interval),
        )));
    }
    let m = measure(
        &recorder,
        window,
        &display(args, w.name()),
        target.proc,
        workers,
    )
    .await?;
    let mut report = base_report(args, target, &m);
    if w == Workload::Mixed {
        let (hist, codes) = probe_recorder.take();
        let errors: u64 = codes.values().sum();
        report.probe = Some(ProbeReport {
            command: "SYS.PING".into(),
            requests: hist.len() + errors,
            errors,
            latency_us: Latency::of(&hist),
        });
        report.errors += errors;
        for (k, v) in codes {
            *report.error_codes.entry(format!("probe {k}")).or_insert(0) += v;
        }
    }
    Ok(report)
}

async fn log_workload(args: &BenchArgs, target: &Target) -> Result<Report> {
    let token = target.token.clone().ok_or_else(|| {
        anyhow!(
            "log-verify and log-replay need the operator token: pass --token (or PORTCULLIS_TOKEN)"
        )
    })?;
    let (built, build_secs) = workloads::build_log(
        target.addr(),
        target.tls.clone(),
        args.events,
        args.connections,
    )
    .await
    .context("building the log")?;
    let mut conn = conn::LineConn::connect_with(target.addr(), target.tls.as_ref()).await?;
    let head = workloads::log_head(&mut conn).await?;
    let recorder = Recorder::default();
    let shard = recorder.shard();
    // Each run is long; no warm-up, at least one run, repeated until the duration is spent.
    let window = Window::new(Duration::ZERO, args.duration);
    let w = args.workload;
    let worker = tokio::spawn(async move {
        let mut events = 0u64;
        let mut busy = Duration::ZERO;
        let mut runs = 0u64;
        loop {
            let t0 = Instant::now();
            let n = match w {
                Workload::LogVerify => {
                    let (checked, valid) = workloads::verify_once(&mut conn, &token).await?;
                    if !valid {
                        shard.error("log_invalid");
                    }
                    checked
                }
                _ => workloads::replay_once(&mut conn, &token).await?,
            };
            let took = t0.elapsed();
            shard.commit(&[workloads::micros(took)], &[]);
            events += n;
            busy += took;
            runs += 1;
            if window.over() {
                return Ok::<_, anyhow::Error>((events, busy, runs));
            }
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    let waiter = tokio::spawn(async move {
        let r = worker
            .await
            .map_err(|e| anyhow!("the log worker failed: {e}"))?;
        let _ = tx.send(r?);
        Ok(())
    });
    let m = measure(
        &recorder,
        window,
        &display(args, w.name()),
        target.proc,
        vec![waiter],
    )
    .await?;
    let (events, busy, runs) = rx
        .await
        .map_err(|_| anyhow!("the log worker ended without a result"))?;
    let mut report = base_report(args, target, &m);
    report.warmup_s = 0.0;
    report.connections = 1;
    report.pipeline = 1;
    report.duration_s = (busy.as_secs_f64() * 1000.0).round() / 1000.0;
    report.throughput = if busy.is_zero() {
        0.0
    } else {
        (events as f64 / busy.as_secs_f64()).round()
    };
    report.log = Some(LogReport {
        events: head,
        built,
        build_events_per_s: (built > 0 && build_secs > 0.0)
            .then(|| (built as f64 / build_secs).round()),
        runs,
    });
    Ok(report)
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let server = if r.server == "in-process" {
        let store = r.store.as_deref().unwrap_or("?");
        if r.nodes > 1 {
            format!(
                "in-process server, {} nodes on {store} at {}",
                r.nodes,
                r.addrs.join(", ")
            )
        } else {
            format!("in-process server on {store} at {}", r.addr)
        }
    } else {
        format!("server at {}", r.addr)
    };
    s.push_str(&format!(
        "portcullis bench {} — {}, {} connection(s), pipeline {}, {:.1} s measured (+{:.1} s warm-up)\n",
        r.workload_name(),
        server,
        r.connections,
        r.pipeline,
        r.duration_s,
        r.warmup_s
    ));
    s.push_str(&format!(
        "machine: {} cores, 1-min load {} at start; cpu columns are cores used by the load generator / server / other processes\n\n",
        r.machine.cores,
        r.machine
            .load_1m_at_start
            .map_or("?".to_owned(), |l| format!("{l:.2}"))
    ));
    s.push_str(&format!(
        "{:<34} {:>18} {:>10} {:>10} {:>10} {:>10} {:>8} {:>18}\n",
        "", "throughput", "p50", "p90", "p99", "max", "errors", "cpu cli/srv/other"
    ));
    let row = |name: &str, tput: f64, unit: &str, l: &Latency, errors: u64, cpu: Option<Cpu>| {
        format!(
            "{:<34} {:>18} {:>10} {:>10} {:>10} {:>10} {:>8} {:>18}\n",
            name,
            format!("{} {}", fmt_count(tput), unit),
            fmt_ms(l.p50_us),
            fmt_ms(l.p90_us),
            fmt_ms(l.p99_us),
            fmt_ms(l.max_us),
            errors,
            cpu.map_or("-".to_owned(), |c| {
                let opt = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.2}"));
                format!(
                    "{:.2}/{}/{}",
                    c.client_cores,
                    opt(c.server_cores),
                    opt(c.other_cores)
                )
            })
        )
    };
    s.push_str(&row(
        &format!("{} ({})", r.workload_name(), r.command),
        r.throughput,
        &r.unit,
        &r.latency_us,
        r.errors,
        r.cpu,
    ));
    if let Some(p) = &r.probe {
        s.push_str(&row(
            &format!("  probe {} (1 conn, paced)", p.command),
            p.requests as f64 / r.duration_s.max(1e-9),
            "req/s",
            &p.latency_us,
            p.errors,
            None,
        ));
    }
    if let Some(a) = &r.anchor {
        s.push_str(&row(
            &format!("anchor {}", a.name),
            a.throughput,
            "op/s",
            &a.latency_us,
            a.errors,
            a.cpu,
        ));
        s.push_str(&format!(
            "\nratio to {}: {:.3}×   ({})\n",
            a.name, a.ratio, a.what
        ));
    }
    if let Some(l) = &r.log {
        s.push_str(&format!(
            "\nlog: {} events, {} run(s){}\n",
            fmt_count(l.events as f64),
            l.runs,
            l.build_events_per_s.map_or(String::new(), |b| format!(
                "; built {} events at {} events/s",
                fmt_count(l.built as f64),
                fmt_count(b)
            ))
        ));
    }
    if !r.error_codes.is_empty() {
        let list: Vec<String> = r
            .error_codes
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        s.push_str(&format!("\nerrors: {}\n", list.join(", ")));
        if r.error_codes.keys().any(|k| k.contains("RATE_LIMITED")) {
            s.push_str(
                "the server's rate limits are on: set rate_limits.enabled = false on the target\n",
            );
        }
    }
    if let Some(k) = r.rss_kib {
        s.push_str(&format!(
            "server RSS at the end: {} KiB\n",
            fmt_count(k as f64)
        ));
    }
    s
}

impl Report {
    fn workload_name(&self) -> &'static str {
        self.workload.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("").is_err());
    }

    /// The smoke test: a short `ping` run against the in-process server.
    #[test]
    fn ping_smoke_run_counts_requests_and_reports_the_documented_keys() {
        let mut args = BenchArgs::new(Workload::Ping);
        args.connections = 2;
        args.duration = Duration::from_millis(300);
        args.warmup = Duration::ZERO;
        args.anchor = Some(Anchor::None);
        args.quiet = true;
        let report = execute(&args).expect("the bench runs");
        assert!(report.requests > 0, "no request completed: {report:?}");
        assert_eq!(report.errors, 0, "errors: {:?}", report.error_codes);
        assert!(report.throughput > 0.0);
        assert!(report.latency_us.p50_us > 0);
        let json = serde_json::to_value(&report).expect("serialises");
        for key in [
            "workload",
            "connections",
            "pipeline",
            "duration_s",
            "requests",
            "errors",
            "error_codes",
            "unit",
            "throughput",
            "latency_us",
            "cpu",
            "rss_kib",
            "intervals",
            "anchor",
            "machine",
        ] {
            assert!(json.get(key).is_some(), "missing key {key}: {json}");
        }
        for key in ["p50_us", "p90_us", "p99_us", "max_us", "mean_us"] {
            assert!(
                json["latency_us"].get(key).is_some(),
                "missing latency_us.{key}"
            );
        }
        assert_eq!(json["workload"], "ping");
        assert!(!render(&report).is_empty());
    }
}
