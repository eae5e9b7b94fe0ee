//! Portcullis transports. They only frame bytes: every request goes to the one
//! [`portcullis_core::Dispatcher`].
//!
//! - [`tcp`]: NDJSON over TCP, pipelined, answers in request order.
//! - [`http`]: the HTTP gateway (`POST /api/v1/execute`, `GET /healthz`, `GET /metrics`).
//!
//! [`Server::start`] binds both, [`Server::shutdown`] stops accepting, lets in-flight commands
//! finish within the grace period and returns; the caller then closes the store.

#![warn(missing_docs)]

mod cors;
mod discovery;
pub mod http;
mod limit;
mod pages;
mod stall;
pub mod tcp;

use portcullis_core::{App, Dispatcher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

/// Both listeners, running.
pub struct Server {
    /// Bound TCP address.
    pub tcp_addr: SocketAddr,
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    app: Arc<App>,
    tasks: TaskTracker,
}

impl Server {
    /// Binds the TCP and HTTP listeners named in the app's config (port 0 picks a free port)
    /// and starts serving.
    pub async fn start(app: Arc<App>) -> io::Result<Server> {
        let tcp = TcpListener::bind(app.config.tcp).await?;
        let http = TcpListener::bind(app.config.http).await?;
        let tcp_addr = tcp.local_addr()?;
        let http_addr = http.local_addr()?;
        let dispatcher = Dispatcher::new(Arc::clone(&app));
        let tasks = TaskTracker::new();
        tasks.spawn(tcp::serve(tcp, dispatcher.clone(), tasks.clone()));
        tasks.spawn(http::serve(http, dispatcher, tasks.clone()));
        tasks.spawn(portcullis_core::ops::housekeeping::run(
            Arc::clone(&app),
            Duration::from_secs(300),
        ));
        tasks.spawn(portcullis_core::ops::retention::run(
            Arc::clone(&app),
            Duration::from_secs(300),
        ));
        tasks.spawn(portcullis_core::infra::telemetry::run_upkeep(Arc::clone(
            &app,
        )));
        tracing::info!(%tcp_addr, %http_addr, "listening");
        Ok(Server {
            tcp_addr,
            http_addr,
            app,
            tasks,
        })
    }

    /// Stops accepting, waits up to the configured grace for in-flight commands and streams to
    /// finish, and returns whether everything finished in time.
    pub async fn shutdown(self) -> bool {
        self.app.shutdown.cancel();
        self.tasks.close();
        let grace = Duration::from_secs(self.app.config.shutdown_grace_s);
        let drained = tokio::time::timeout(grace, self.tasks.wait()).await.is_ok();
        if !drained {
            tracing::warn!("shutdown grace elapsed with work still in flight");
        }
        drained
    }
}

/// The next connection on `listener`, or `None` once the server shuts down. A failed accept
/// (out of file descriptors and the like) backs off instead of spinning.
pub(crate) async fn accept(
    app: &App,
    listener: &TcpListener,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            _ = app.shutdown.cancelled() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(a) => return Some(a),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
