//! The bench's own server: `App::open` + `Server::start` on 127.0.0.1:0 over a temporary data
//! directory, on a runtime of its own (threads named `pcb-server`), with rate limits off.

use anyhow::{anyhow, Context, Result};
use portcullis_core::{App, Config, SystemClock};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use tempfile::TempDir;

/// A running in-process server. Dropping it shuts the server down and deletes its data.
pub struct LocalServer {
    /// Its TCP address.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
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
    /// Starts the server and waits until it listens.
    pub fn start() -> Result<LocalServer> {
        let dir = tempfile::Builder::new()
            .prefix("portcullis-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let data_dir = dir.path().join("data");
        let config = bench_config(data_dir.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("pcb-server-main".into())
            .spawn(move || serve(config, ready_tx, stop_rx))
            .context("starting the server thread")?;
        let addr = ready_rx
            .recv()
            .map_err(|_| anyhow!("the in-process server stopped while starting"))??;
        Ok(LocalServer {
            addr,
            data_dir,
            stop: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The operator token of its data directory.
    pub fn operator_token(&self) -> Option<String> {
        portcullis_core::infra::node::read_operator_token(&self.data_dir)
            .map(|s| s.expose().to_owned())
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
            Err(e) => {
                let _ = ready.send(Err(anyhow!("opening the bench data directory: {e}")));
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

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
