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
pub mod tls;

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
    /// Whether both listeners speak TLS (`tls_cert` / `tls_key`).
    pub tls: bool,
    /// Whether the TCP listener requires client certificates (`tls_client_ca`).
    pub client_certs: bool,
    app: Arc<App>,
    tasks: TaskTracker,
}

impl Server {
    /// Binds the TCP and HTTP listeners named in the app's config (port 0 picks a free port)
    /// and starts serving.
    ///
    /// With `tls_cert` / `tls_key`, both listeners speak TLS; files that do not load fail the
    /// start (`InvalidInput`, naming the file and the reason).
    pub async fn start(app: Arc<App>) -> io::Result<Server> {
        let tls = tls::Tls::from_config(&app.config)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tcp = TcpListener::bind(app.config.tcp).await?;
        let http = TcpListener::bind(app.config.http).await?;
        let tcp_addr = tcp.local_addr()?;
        let http_addr = http.local_addr()?;
        let dispatcher = Dispatcher::new(Arc::clone(&app));
        let tasks = TaskTracker::new();
        if let Some(t) = &tls {
            t.watch(app.shutdown.clone(), &tasks)?;
            warn_of_plain_urls(&app.config);
        }
        tasks.spawn(tcp::serve(
            tcp,
            dispatcher.clone(),
            tasks.clone(),
            tls.clone(),
        ));
        tasks.spawn(http::serve(http, dispatcher, tasks.clone(), tls.clone()));
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
        let client_certs = tls.as_ref().is_some_and(|t| t.requires_client_certs());
        tracing::info!(%tcp_addr, %http_addr, tls = tls.is_some(), client_certs, "listening");
        Ok(Server {
            tcp_addr,
            http_addr,
            tls: tls.is_some(),
            client_certs,
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

/// With TLS on, links (`public_url`) and tokens (`issuer`) that still name `http://` send
/// people and verifiers to an address the server no longer answers in plain text: say so at
/// start. Only the setting's name is logged.
fn warn_of_plain_urls(config: &portcullis_core::Config) {
    for (setting, value) in [
        ("public_url", &config.public_url),
        ("issuer", &config.issuer),
    ] {
        if value.starts_with("http://") {
            tracing::warn!(
                setting,
                "TLS is on but {setting} starts with http://: set it to the https:// address"
            );
        }
    }
}
