//! Reference measurements taken in the same run as a workload, so a figure can be read as a
//! ratio to what this machine does at all:
//!
//! - `redis`: redis-server answering `PING` over the same connections and pipeline depth, with
//!   the same client code ([`crate::conn::LineConn`]);
//! - `argon2`: raw argon2id hashes with the server's parameters on one thread per core;
//! - `sled`: raw durable inserts through the store's group commit (`SledStore` put + sync) at
//!   the same concurrency.

use crate::conn::LineConn;
use crate::stats::{measure, Display, Measured, Recorder, ServerProc, Window};
use crate::workloads::{drive, micros, redis_check, Fixed};
use anyhow::{anyhow, bail, Context, Result};
use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use portcullis_store::{SledStore, Store, Table};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A redis-server started for the anchor; killed on drop.
struct RedisChild {
    child: Child,
    addr: String,
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

async fn start_redis() -> Result<RedisChild> {
    let Some(bin) = find_in_path("redis-server") else {
        bail!(
            "the redis anchor needs redis-server, which is not installed \
             (Debian: apt-get install redis-server), or pass --anchor none"
        );
    };
    let port = free_port()?;
    let child = Command::new(&bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut redis = RedisChild {
        child,
        addr: format!("127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = LineConn::connect(&redis.addr).await {
            if let Ok(l) = c.call(b"PING\r\n").await {
                if l == b"+PONG" {
                    return Ok(redis);
                }
            }
        }
        if let Ok(Some(status)) = redis.child.try_wait() {
            bail!("redis-server exited at start ({status})");
        }
        if Instant::now() > deadline {
            bail!("redis-server did not answer PING within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis `PING` over `connections` connections, `depth` deep.
pub async fn redis(
    connections: usize,
    depth: usize,
    warmup: Duration,
    duration: Duration,
    display: &Display,
) -> Result<Measured> {
    let redis = start_redis().await?;
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(LineConn::connect(&redis.addr).await?);
    }
    let recorder = Recorder::default();
    let window = Window::new(warmup, duration);
    let workers = conns
        .into_iter()
        .map(|c| {
            let d = Box::new(Fixed::new(b"PING\r\n".to_vec(), depth, redis_check));
            tokio::spawn(drive(c, d, recorder.shard(), window, None))
        })
        .collect();
    let pid = redis.child.id();
    let m = measure(&recorder, window, display, ServerProc::Pid(pid), workers).await;
    drop(redis);
    m
}

/// The argon2id parameters the server hashes with by default.
pub fn server_argon2() -> (u32, u32, u32) {
    let c = portcullis_core::Config::default();
    (c.argon2_m_kib, c.argon2_t, c.argon2_p)
}

/// Raw argon2id hashes (PHC strings, as the server makes them) on one thread per core.
pub async fn argon2(warmup: Duration, duration: Duration, display: &Display) -> Result<Measured> {
    let (m, t, p) = server_argon2();
    let params = Params::new(m, t, p, None).map_err(|e| anyhow!("argon2 parameters: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let recorder = Recorder::default();
    let window = Window::new(warmup, duration);
    let mut workers = Vec::with_capacity(threads);
    for i in 0..threads {
        let shard = recorder.shard();
        let params = params.clone();
        let h = std::thread::Builder::new()
            .name(format!("pcb-argon2-{i}"))
            .spawn(move || {
                let a = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let pw = b"bench-anchor-password";
                while !window.over() {
                    let salt = SaltString::generate(&mut rand::rngs::OsRng);
                    let t0 = Instant::now();
                    let r = a.hash_password(pw, &salt).map(|h| h.to_string().len());
                    let t = Instant::now();
                    if !window.contains(t) {
                        continue;
                    }
                    match r {
                        Ok(_) => shard.commit(&[micros(t - t0)], &[]),
                        Err(e) => shard.error(&format!("argon2: {e}")),
                    }
                }
            })
            .context("starting an argon2 thread")?;
        workers.push(tokio::task::spawn_blocking(move || {
            h.join().map_err(|_| anyhow!("an argon2 thread panicked"))
        }));
    }
    measure(&recorder, window, display, ServerProc::InProcess, workers).await
}

/// Raw durable inserts: `concurrency` tasks, each `put` then `sync` (the group commit) in a
/// loop, on a fresh `SledStore` in a temporary directory.
pub async fn sled(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    display: &Display,
) -> Result<Measured> {
    let dir = tempfile::Builder::new()
        .prefix("portcullis-bench-sled-")
        .tempdir()
        .context("creating a temporary directory")?;
    let store = Arc::new(SledStore::open(dir.path()).map_err(|e| anyhow!("opening sled: {e}"))?);
    let recorder = Recorder::default();
    let window = Window::new(warmup, duration);
    let workers = (0..concurrency)
        .map(|w| {
            let store = Arc::clone(&store);
            let shard = recorder.shard();
            tokio::spawn(async move {
                let mut n = 0u64;
                while !window.over() {
                    n += 1;
                    let key = format!("bench/{w}/{n}");
                    let t0 = Instant::now();
                    store
                        .put(Table::Challenges, key.as_bytes(), vec![0x5a; 96])
                        .await
                        .map_err(|e| anyhow!("sled put: {e}"))?;
                    store.sync().await.map_err(|e| anyhow!("sled sync: {e}"))?;
                    let t = Instant::now();
                    if window.contains(t) {
                        shard.commit(&[micros(t - t0)], &[]);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let m = measure(&recorder, window, display, ServerProc::InProcess, workers).await;
    store.close();
    drop(store);
    drop(dir);
    m
}
