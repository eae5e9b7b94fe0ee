//! The bench's own server: `App::open` + `Server::start` on 127.0.0.1:0 over a temporary data
//! directory, on a runtime of its own (threads named `pcb-server`), with rate limits off.
//!
//! On PostgreSQL (`--database-url`) it may be several nodes (`--nodes`), as an operator runs
//! them: each its own `App` and `Server` on a runtime and a data directory of its own, all on
//! the one database. The first node creates the master key and the operator token; the others
//! start with copies of its files.

use anyhow::{anyhow, bail, Context, Result};
use portcullis_core::base::config::SecretSetting;
use portcullis_core::infra::node::{MASTER_KEY_FILE, OPERATOR_TOKEN_FILE};
use portcullis_core::{App, Config, SystemClock};
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use tempfile::TempDir;

/// The running in-process server: one node, or several on one PostgreSQL database. Dropping it
/// shuts every node down and deletes their data directories (not the database's rows: see
/// [`crate::pg::BenchDatabase`]).
pub struct LocalServer {
    /// Each node's TCP address, the first node's first.
    pub addrs: Vec<SocketAddr>,
    /// The first node's data directory.
    pub data_dir: PathBuf,
    /// Nodes in start order; stopped in reverse.
    nodes: Vec<Node>,
    _dir: TempDir,
}

/// One node: its runtime's thread and how to stop it.
struct Node {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// The configuration the bench's own server runs with: defaults, rate limits off, no
/// per-address connection cap (all load comes from loopback), loopback ports picked by the
/// kernel, and the longest access-token lifetime (so long runs need no token renewal).
pub fn bench_config(data_dir: PathBuf) -> Config {
    let mut c = Config {
        data_dir,
        tcp: SocketAddr::from(([127, 0, 0, 1], 0)),
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        access_token_ttl_s: 24 * 3600,
        ..Config::default()
    };
    c.rate_limits.enabled = false;
    // Every bench connection comes from loopback: only the total cap applies.
    c.max_connections_per_ip = c.max_connections;
    c
}

impl LocalServer {
    /// Starts one node on sled and waits until it listens.
    pub fn start() -> Result<LocalServer> {
        LocalServer::start_nodes(None, 1)
    }

    /// Starts `nodes` nodes, on PostgreSQL at `database_url` when given (required for more
    /// than one node), else on sled; returns once every node listens.
    pub fn start_nodes(database_url: Option<&str>, nodes: usize) -> Result<LocalServer> {
        if nodes == 0 {
            bail!("at least one node");
        }
        if nodes > 1 && database_url.is_none() {
            bail!("several nodes need a shared database: pass --database-url");
        }
        let dir = tempfile::Builder::new()
            .prefix("portcullis-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let mut server = LocalServer {
            addrs: Vec::with_capacity(nodes),
            data_dir: dir.path().join("node-1"),
            nodes: Vec::with_capacity(nodes),
            _dir: dir,
        };
        for i in 1..=nodes {
            let data_dir = server._dir.path().join(format!("node-{i}"));
            if i > 1 {
                // As an operator adds a node: the first node's key and token, copied before
                // the node opens its directory.
                join_dir(&server.data_dir, &data_dir)?;
            }
            let mut config = bench_config(data_dir);
            config.database_url = database_url.map(SecretSetting::new);
            let (addr, node) =
                start_node(config, i).with_context(|| format!("starting node {i}"))?;
            server.addrs.push(addr);
            server.nodes.push(node);
        }
        Ok(server)
    }

    /// The first node's TCP address.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// The operator token of the deployment (the first node's data directory).
    pub fn operator_token(&self) -> Option<String> {
        portcullis_core::infra::node::read_operator_token(&self.data_dir)
            .map(|s| s.expose().to_owned())
    }
}

/// Makes `to` (mode 0700) with copies of `from`'s master key and operator token.
fn join_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .with_context(|| format!("creating {}", to.display()))?;
    for file in [MASTER_KEY_FILE, OPERATOR_TOKEN_FILE] {
        // `fs::copy` keeps the source's mode (0600).
        std::fs::copy(from.join(file), to.join(file))
            .with_context(|| format!("copying the first node's {file}"))?;
    }
    Ok(())
}

fn start_node(config: Config, n: usize) -> Result<(SocketAddr, Node)> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("pcb-server-main-{n}"))
        .spawn(move || serve(config, ready_tx, stop_rx))
        .context("starting the server thread")?;
    let mut node = Node {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(addr)) => Ok((addr, node)),
        Ok(Err(e)) => {
            node.stop();
            Err(e)
        }
        Err(_) => {
            node.stop();
            Err(anyhow!("the in-process server stopped while starting"))
        }
    }
}

fn serve(
    config: Config,
    ready: std::sync::mpsc::Sender<Result<SocketAddr>>,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .thread_name("pcb-server")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("starting the server runtime: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let app = match App::open(config, Arc::new(SystemClock)).await {
            Ok(app) => app,
            // The error names neither the database URL nor its password (the store's errors
            // never carry them).
            Err(e) => {
                let _ = ready.send(Err(anyhow!("opening the bench's data: {e}")));
                return;
            }
        };
        let server = match portcullis_server::Server::start(Arc::clone(&app)).await {
            Ok(s) => s,
            Err(e) => {
                let _ = ready.send(Err(anyhow!("binding the bench server: {e}")));
                app.close();
                return;
            }
        };
        let _ = ready.send(Ok(server.tcp_addr));
        let _ = stop.await;
        server.shutdown().await;
        app.close();
    });
}

impl Node {
    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        while let Some(mut node) = self.nodes.pop() {
            node.stop();
        }
    }
}
