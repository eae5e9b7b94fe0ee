//! The PostgreSQL database a bench run is given (`--database-url`), and the `pgbench` anchor.
//!
//! The database must be empty: the bench refuses one that holds any table, so it can never run
//! over (or clean up) a deployment's data. The bench's nodes create their tables in it; the
//! `pgbench` anchor initialises its own tables in a schema of their own (`pcbench_<run>`, so
//! the nodes' tables are untouched); at the end the bench drops that schema and every table in
//! the database's default schema, leaving the database empty again for the next run. The URL
//! (which may hold a password) is never printed: `pgbench` gets the connection through the
//! `PG*` environment variables, not its command line.

use crate::stats::{new_hist, Measured};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// A connection to the database given to the bench.
pub struct BenchDatabase {
    config: Config,
    client: Client,
    connection: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for BenchDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("BenchDatabase").finish_non_exhaustive()
    }
}

/// Parses the URL as the server does (its password from `PORTCULLIS_DATABASE_PASSWORD` when
/// the URL has none). Errors never repeat the URL.
fn parse(url: &str) -> Result<Config> {
    let mut config: Config = url
        .parse()
        .map_err(|_| anyhow!("--database-url does not parse as a PostgreSQL URL"))?;
    if config.get_password().is_none() {
        if let Ok(p) = std::env::var("PORTCULLIS_DATABASE_PASSWORD") {
            config.password(p);
        }
    }
    config.application_name("portcullis-bench");
    config.connect_timeout(Duration::from_secs(10));
    Ok(config)
}

impl BenchDatabase {
    /// Connects and checks that the database holds no table.
    pub async fn open(url: &str) -> Result<BenchDatabase> {
        let config = parse(url)?;
        let (client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| anyhow!("connecting to the --database-url database: {e}"))?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let db = BenchDatabase {
            config,
            client,
            connection,
        };
        let tables: Vec<String> = db
            .client
            .query(
                "SELECT schemaname || '.' || tablename FROM pg_tables
                 WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
                 ORDER BY 1 LIMIT 5",
                &[],
            )
            .await
            .context("listing the database's tables")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if !tables.is_empty() {
            bail!(
                "the --database-url database is not empty (it holds {}{}): the bench creates its \
                 tables there and drops them afterwards, so it needs an empty database of its own \
                 (CREATE DATABASE …)",
                tables.join(", "),
                if tables.len() == 5 { ", …" } else { "" }
            );
        }
        Ok(db)
    }

    /// Drops everything the run created: the `pgbench` schemas and every table of the default
    /// schema (the database was empty when the run started). Call after the nodes stopped.
    pub async fn clean_up(self) -> Result<()> {
        let schemas: Vec<String> = self
            .client
            .query(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'pcbench\\_%'",
                &[],
            )
            .await
            .context("listing the bench's schemas")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let tables: Vec<String> = self
            .client
            .query(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()",
                &[],
            )
            .await
            .context("listing the bench's tables")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut sql = String::new();
        for s in &schemas {
            sql.push_str(&format!("DROP SCHEMA IF EXISTS {} CASCADE;", ident(s)));
        }
        if !tables.is_empty() {
            let list: Vec<String> = tables.iter().map(|t| ident(t)).collect();
            sql.push_str(&format!(
                "DROP TABLE IF EXISTS {} CASCADE;",
                list.join(", ")
            ));
        }
        if !sql.is_empty() {
            self.client
                .batch_execute(&sql)
                .await
                .context("dropping the bench's tables")?;
        }
        drop(self.client);
        let _ = self.connection.await;
        Ok(())
    }

    /// `CREATE SCHEMA` for the `pgbench` tables of run `run`.
    async fn create_schema(&self, schema: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("CREATE SCHEMA {}", ident(schema)))
            .await
            .context("creating the pgbench schema")
    }

    async fn drop_schema(&self, schema: &str) -> Result<()> {
        self.client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", ident(schema)))
            .await
            .context("dropping the pgbench schema")
    }

    /// The `PG*` variables that point libpq (pgbench) at this database with `search_path` set
    /// to `schema`.
    fn libpq_env(&self, schema: &str) -> Vec<(&'static str, String)> {
        Self::env_of(&self.config, schema)
    }

    fn env_of(c: &Config, schema: &str) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGOPTIONS", format!("-c search_path={schema}"))];
        match c.get_hosts().first() {
            Some(Host::Tcp(h)) => env.push(("PGHOST", h.clone())),
            Some(Host::Unix(p)) => env.push(("PGHOST", p.to_string_lossy().into_owned())),
            None => {}
        }
        if let Some(p) = c.get_ports().first() {
            env.push(("PGPORT", p.to_string()));
        }
        if let Some(u) = c.get_user() {
            env.push(("PGUSER", u.to_owned()));
        }
        if let Some(d) = c.get_dbname() {
            env.push(("PGDATABASE", d.to_owned()));
        }
        if let Some(p) = c.get_password() {
            env.push(("PGPASSWORD", String::from_utf8_lossy(p).into_owned()));
        }
        env
    }
}

/// A quoted SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where `pgbench` is: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn pgbench_bin() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.join("pgbench").is_file() {
            return Ok(dir.join("pgbench"));
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin").join("pgbench");
            bin.is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b).ok_or_else(|| {
        anyhow!(
            "the pgbench anchor needs PostgreSQL's pgbench (Debian: apt-get install postgresql), \
             or pass --anchor none"
        )
    })
}

/// What one `pgbench` run printed.
#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchOutput {
    /// `tps = …` (without initial connection time, when both are printed).
    pub tps: f64,
    /// `number of transactions actually processed: …`.
    pub transactions: u64,
    /// `number of failed transactions: …` (0 when not printed).
    pub failed: u64,
}

/// Reads the summary `pgbench` prints on stdout.
pub fn parse_pgbench(out: &str) -> Result<PgbenchOutput> {
    let mut tps = None;
    let mut transactions = None;
    let mut failed = 0;
    for line in out.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("tps = ") {
            let n = rest.split_whitespace().next().and_then(|n| n.parse().ok());
            // Older versions print two lines, including and excluding connection time; the
            // second is the one without.
            if tps.is_none() || line.contains("without") || line.contains("excluding") {
                tps = n;
            }
        } else if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            transactions = rest
                .split(['/', ' '])
                .find(|s| !s.is_empty())
                .and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    match (tps, transactions) {
        (Some(tps), Some(transactions)) => Ok(PgbenchOutput {
            tps,
            transactions,
            failed,
        }),
        _ => bail!("pgbench printed no tps line"),
    }
}

/// The largest thread count at most `cores` that divides `clients` (pgbench spreads clients
/// evenly over its threads).
fn pgbench_threads(clients: usize, cores: usize) -> usize {
    (1..=cores.min(clients).max(1))
        .rev()
        .find(|j| clients.is_multiple_of(*j))
        .unwrap_or(1)
}

/// Whole seconds for `-T` (at least 1).
fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs_f64().ceil();
    if secs < 1.0 {
        1
    } else {
        // A duration is at most a week (`parse_duration`): no truncation.
        #[allow(clippy::as_conversions, clippy::cast_possible_truncation)]
        let s = secs as u64;
        s
    }
}

fn run_pgbench(
    bin: &Path,
    env: &[(&'static str, String)],
    args: &[String],
    cwd: &Path,
) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "pgbench {} failed ({}): {}",
            args.first().map_or("", String::as_str),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(stdout)
}

/// Reads `pgbench -l` transaction logs (`client transaction latency_us script epoch us …`, the
/// latency `failed` or `skipped` for a transaction that did not complete): the latencies of the
/// completed ones, and how many did not.
pub fn read_pgbench_logs(dir: &Path, prefix: &str) -> Result<(hdrhistogram::Histogram<u64>, u64)> {
    let mut hist = new_hist();
    let mut failed = 0u64;
    for entry in std::fs::read_dir(dir).context("reading pgbench's logs")? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).context("reading a pgbench log")?;
        for line in text.lines() {
            match line.split_whitespace().nth(2) {
                Some(t) => match t.parse::<u64>() {
                    Ok(us) => {
                        let _ = hist.record(us.max(1));
                    }
                    Err(_) => failed += 1,
                },
                None => continue,
            }
        }
    }
    Ok((hist, failed))
}

/// PostgreSQL's own `pgbench`, builtin `simple-update` (an `UPDATE`, a `SELECT` and an
/// `INSERT` per transaction, each commit durable as the server is configured), `clients`
/// clients, scale 1, in a schema of its own in the bench's database; the schema is dropped
/// afterwards. A warm-up run of `warmup` (whole seconds) comes first when it is at least a
/// second. Throughput is pgbench's `tps` (without connection time), latency from its
/// per-transaction log.
pub async fn pgbench(
    db: &BenchDatabase,
    run: &str,
    clients: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(Measured, String)> {
    let bin = pgbench_bin()?;
    let schema = format!("pcbench_{run}");
    db.create_schema(&schema).await?;
    let env = db.libpq_env(&schema);
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads = pgbench_threads(clients, cores);
    let secs = whole_seconds(duration);
    let what = format!(
        "pgbench simple-update (builtin), scale 1, {clients} clients, {threads} threads, -T {secs}"
    );
    let result = {
        let bin = bin.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || -> Result<Measured> {
            let logs = tempfile::Builder::new()
                .prefix("portcullis-bench-pgbench-")
                .tempdir()
                .context("creating a directory for pgbench's logs")?;
            let cwd = logs.path();
            let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
            run_pgbench(&bin, &env, &s(&["-i", "-q", "-s", "1"]), cwd)?;
            let load = |t: u64| {
                let mut a = s(&["-n", "-b", "simple-update"]);
                a.extend([
                    "-c".to_owned(),
                    clients.to_string(),
                    "-j".to_owned(),
                    threads.to_string(),
                    "-T".to_owned(),
                    t.to_string(),
                ]);
                a
            };
            if warmup >= Duration::from_secs(1) {
                run_pgbench(&bin, &env, &load(whole_seconds(warmup)), cwd)?;
            }
            let mut args = load(secs);
            args.extend(s(&["-l", "--log-prefix=pgbench_log"]));
            let out = run_pgbench(&bin, &env, &args, cwd)?;
            let summary = parse_pgbench(&out)?;
            let (hist, failed_in_log) = read_pgbench_logs(cwd, "pgbench_log")?;
            let failed = summary.failed.max(failed_in_log);
            let mut codes = BTreeMap::new();
            if failed > 0 {
                codes.insert("pgbench: failed transactions".to_owned(), failed);
            }
            Ok(Measured {
                ok: summary.transactions,
                errors: failed,
                codes,
                hist,
                // So that `throughput()` is pgbench's own tps figure.
                secs: if summary.tps > 0.0 {
                    summary.transactions as f64 / summary.tps
                } else {
                    0.0
                },
                intervals: Vec::new(),
                cpu: None,
            })
        })
        .await
        .map_err(|e| anyhow!("the pgbench task failed: {e}"))
        .and_then(|r| r)
    };
    let dropped = db.drop_schema(&schema).await;
    let m = result?;
    dropped?;
    Ok((m, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbench_summaries_parse() {
        let pg15 = "pgbench (15.10 (Debian 15.10-0+deb12u1))
transaction type: <builtin: simple update>
scaling factor: 1
query mode: simple
number of clients: 16
number of threads: 2
maximum number of tries: 1
duration: 10 s
number of transactions actually processed: 12345
number of failed transactions: 0 (0.000%)
latency average = 12.960 ms
initial connection time = 20.151 ms
tps = 1234.567890 (without initial connection time)
";
        assert_eq!(
            parse_pgbench(pg15).unwrap(),
            PgbenchOutput {
                tps: 1234.56789,
                transactions: 12345,
                failed: 0
            }
        );
        let pg12 = "number of transactions actually processed: 500/500
tps = 49.1 (including connections establishing)
tps = 50.2 (excluding connections establishing)
";
        let o = parse_pgbench(pg12).unwrap();
        assert_eq!((o.tps, o.transactions), (50.2, 500));
        assert!(parse_pgbench("pgbench: error: connection failed").is_err());
    }

    #[test]
    fn pgbench_threads_divide_the_clients() {
        assert_eq!(pgbench_threads(16, 2), 2);
        assert_eq!(pgbench_threads(3, 2), 1);
        assert_eq!(pgbench_threads(1, 8), 1);
        assert_eq!(pgbench_threads(12, 8), 6);
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(10)), 10);
    }

    #[test]
    fn pgbench_logs_give_latencies_and_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pgbench_log.123"),
            "0 1 1500 0 1700000000 1\n0 2 2500 0 1700000000 2\n1 1 failed 0 1700000000 3\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("pgbench_log.123.1"),
            "2 1 500 0 1700000000 4\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("other"), "9 9 9 9 9 9\n").unwrap();
        let (h, failed) = read_pgbench_logs(dir.path(), "pgbench_log").unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(failed, 1);
        assert!(h.max() >= 2500 && h.min() <= 500);
    }

    #[test]
    fn urls_are_never_repeated_in_errors() {
        let e = parse("postgres://u:hunter2@[bad").unwrap_err().to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let c = parse("postgres://u:hunter2@127.0.0.1:5999/db").unwrap();
        let env = BenchDatabase::env_of(&c, "pcbench_x");
        assert!(env.contains(&("PGPASSWORD", "hunter2".to_owned())));
        assert!(env.contains(&("PGDATABASE", "db".to_owned())));
        assert!(env.contains(&("PGPORT", "5999".to_owned())));
        assert!(env.contains(&("PGOPTIONS", "-c search_path=pcbench_x".to_owned())));
    }
}
