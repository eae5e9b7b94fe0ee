//! TLS on both listeners: rustls with the ring provider (the one the PostgreSQL client already
//! uses; no OpenSSL), TLS 1.2 and 1.3 with rustls' safe default suites.
//!
//! - `tls_cert` / `tls_key` (both or neither) switch the HTTP gateway to HTTPS and the TCP
//!   listener to TLS. `tls_client_ca` makes the TCP listener require a client certificate
//!   issued by one of those CAs (mutual TLS for backends); the HTTP gateway never asks for one.
//! - Reload without a restart: on SIGHUP, and when the modification time or size of one of the
//!   files changes (polled every [`POLL`]), the files are read again. A set that does not load
//!   (unreadable, not PEM, a key that does not match the certificate) leaves the previous one
//!   in force and is logged with the reason; the key's bytes never appear in a message.
//!   Connections already open keep the certificate they were set up with; new connections get
//!   the new one.
//! - A handshake must finish within `frame_timeout_s` (a client that opens a connection and
//!   sends nothing holds its slot no longer than one that stalls mid-request).

use portcullis_core::Config;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often the certificate files are checked for changes.
pub const POLL: Duration = Duration::from_secs(2);

/// The files TLS is configured from.
#[derive(Debug, Clone)]
struct Files {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

/// What the files looked like when they were last read: modification time and length of each
/// (`None`: could not be read).
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The rustls configurations in force.
struct Configs {
    tcp: Arc<ServerConfig>,
    http: Arc<ServerConfig>,
}

/// TLS for both listeners, reloadable.
pub struct Tls {
    files: Files,
    current: RwLock<Arc<Configs>>,
    seen: Mutex<Stamp>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

impl Tls {
    /// TLS as configured: `None` when `tls_cert` / `tls_key` are unset; an error (naming the
    /// file and what is wrong with it) when they do not load.
    pub fn from_config(c: &Config) -> Result<Option<Arc<Tls>>, String> {
        let (cert, key) = match (&c.tls_cert, &c.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            (None, None) if c.tls_client_ca.is_none() => return Ok(None),
            _ => {
                return Err("tls_cert and tls_key go together, and tls_client_ca needs them".into())
            }
        };
        let files = Files {
            cert,
            key,
            client_ca: c.tls_client_ca.clone(),
        };
        let seen = files.stamp();
        let configs = files.load()?;
        Ok(Some(Arc::new(Tls {
            files,
            current: RwLock::new(Arc::new(configs)),
            seen: Mutex::new(seen),
        })))
    }

    /// Whether the TCP listener requires client certificates.
    pub fn requires_client_certs(&self) -> bool {
        self.files.client_ca.is_some()
    }

    fn current(&self) -> Arc<Configs> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The acceptor for the next TCP connection.
    pub fn tcp(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current().tcp))
    }

    /// The acceptor for the next HTTP connection.
    pub fn http(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current().http))
    }

    /// Reads the files again. On success new connections use them; otherwise the previous
    /// set stays in force and the reason is logged. Returns whether the new set was taken.
    pub fn reload(&self, trigger: &'static str) -> bool {
        let stamp = self.files.stamp();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = stamp;
        match self.files.load() {
            Ok(configs) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(configs);
                tracing::info!(trigger, cert = %self.files.cert.display(), "TLS certificate reloaded");
                true
            }
            Err(error) => {
                tracing::warn!(
                    trigger,
                    %error,
                    "TLS files not reloaded; the certificate already in use stays in force"
                );
                false
            }
        }
    }

    /// Whether a file changed since it was last read.
    fn changed(&self) -> bool {
        let now = self.files.stamp();
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }

    /// Reloads on SIGHUP and on file changes until `shutdown`. The signal handler is installed
    /// before this returns, so a SIGHUP sent once the server has announced itself never
    /// terminates it.
    pub fn watch(
        self: &Arc<Self>,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> io::Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let tls = Arc::clone(self);
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = hup.recv() => {
                        tls.reload("SIGHUP");
                    }
                    _ = tick.tick() => {
                        if tls.changed() {
                            tls.reload("file change");
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

impl Files {
    fn paths(&self) -> impl Iterator<Item = &Path> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path)
    }

    fn stamp(&self) -> Stamp {
        self.paths()
            .map(|p| {
                let m = std::fs::metadata(p).ok()?;
                Some((m.modified().ok()?, m.len()))
            })
            .collect()
    }

    fn load(&self) -> Result<Configs, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(&self.cert, "tls_cert")?;
        let key = private_key(&self.key)?;
        let builder = || {
            ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))
        };
        let mismatch = |e: rustls::Error| {
            format!(
                "tls_cert {} and tls_key {}: {e}",
                self.cert.display(),
                self.key.display()
            )
        };
        let mut http = builder()?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        // The gateway speaks HTTP/1.1 only.
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = match &self.client_ca {
            None => builder()?.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certificates(ca, "tls_client_ca")? {
                    roots
                        .add(c)
                        .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| format!("tls_client_ca {}: {e}", ca.display()))?;
                builder()?.with_client_cert_verifier(verifier)
            }
        }
        .with_single_cert(chain, key)
        .map_err(mismatch)?;
        Ok(Configs {
            tcp: Arc::new(tcp),
            http: Arc::new(http),
        })
    }
}

/// Every certificate in a PEM file (at least one).
fn certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let fail = |e: pem::Error| format!("{setting} {}: {e}", path.display());
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    if certs.is_empty() {
        return Err(format!(
            "{setting} {}: no certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// The private key of a PEM file. Messages say what is wrong but never quote the file: a
/// decoding error could otherwise carry part of the key into the log.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            pem::Error::Io(e) => e.to_string(),
            pem::Error::NoItemsFound => "no private key in the file".into(),
            _ => "not a PEM private key (PKCS#8, PKCS#1 or SEC1)".into(),
        };
        format!("tls_key {}: {why}", path.display())
    })
}

/// Completes a server handshake within `within`, or gives up (timeout, shutdown, a client that
/// does not speak TLS or whose certificate is refused: logged at debug level only, since any
/// client can cause it).
pub(crate) async fn handshake<T>(
    acceptor: TlsAcceptor,
    io: T,
    within: Duration,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<TlsStream<T>>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let r = tokio::select! {
        _ = shutdown.cancelled() => return None,
        r = tokio::time::timeout(within, acceptor.accept(io)) => r,
    };
    match r {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// A server connection, in plain text (`Left`) or TLS (`Right`); tokio-util's `Either` reads and
/// writes through whichever it holds.
pub(crate) type MaybeTls<T> = tokio_util::either::Either<T, Box<TlsStream<T>>>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file that is not a usable key is refused with a message that names the file but
    /// quotes none of its contents.
    #[test]
    fn a_bad_key_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        for text in [
            "-----BEGIN PRIVATE KEY-----\nS3cretKeyMaterial!!*&\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nS3cretKeyMaterial\n",
            "S3cretKeyMaterial\n",
        ] {
            std::fs::write(&path, text).unwrap();
            let e = private_key(&path).unwrap_err();
            assert!(e.contains("server.key"), "{e}");
            assert!(!e.contains("S3cret"), "{e}");
        }
        let e = private_key(&dir.path().join("missing.key")).unwrap_err();
        assert!(e.contains("missing.key"), "{e}");
    }

    /// TLS is off without files; half a pair is an error.
    #[test]
    fn tls_needs_both_halves_of_the_pair() {
        assert!(Tls::from_config(&Config::default()).unwrap().is_none());
        let half = Config {
            tls_cert: Some("c.pem".into()),
            ..Config::default()
        };
        assert!(Tls::from_config(&half).is_err());
    }
}
