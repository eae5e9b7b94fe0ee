//! TLS to a server (rustls, ring provider; no OpenSSL): the server's certificate is checked
//! against a CA file or, without one, the Mozilla roots, and against the host name (or IP
//! address) the client connects to. For a server that requires client certificates (mTLS),
//! give a certificate and its key.

use crate::ClientError;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How to speak TLS to a server.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) that issued the server's certificate; `None`: the Mozilla roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate chain (PEM), for servers that require one.
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// The name the server's certificate must carry; `None`: the host of the address.
    pub server_name: Option<String>,
}

/// A TLS client configuration, ready to open connections.
#[derive(Clone)]
pub struct TlsConnector {
    connector: tokio_rustls::TlsConnector,
    server_name: Option<String>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

fn tls_err(what: impl std::fmt::Display) -> ClientError {
    ClientError::Tls(what.to_string())
}

impl TlsOptions {
    /// The connector a command line asks for: `None` (plain TCP) unless `tls` is set or a CA
    /// file or a client certificate is given, which imply TLS.
    pub fn connector_if_asked(&self, tls: bool) -> Result<Option<TlsConnector>, ClientError> {
        if !tls && self.ca_file.is_none() && self.client_cert.is_none() {
            return Ok(None);
        }
        self.connector().map(Some)
    }

    /// Reads the files and builds the client configuration (TLS 1.2 and 1.3, rustls' safe
    /// defaults).
    pub fn connector(&self) -> Result<TlsConnector, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_file {
            Some(path) => {
                for c in certificates(path)? {
                    roots
                        .add(c)
                        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_root_certificates(roots);
        let config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(cert), Some(key)) => builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|e| tls_err(format!("client certificate and key: {e}")))?,
            _ => {
                return Err(tls_err(
                    "a client certificate and its key go together: give both or neither",
                ))
            }
        };
        Ok(TlsConnector {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name: self.server_name.clone(),
        })
    }
}

impl TlsConnector {
    /// Connects to `addr` (`host:port`) and completes the handshake.
    pub async fn connect(&self, addr: &str) -> Result<Stream, ClientError> {
        let name = match &self.server_name {
            Some(n) => n.clone(),
            None => host_of(addr).to_owned(),
        };
        let name = ServerName::try_from(name)
            .map_err(|e| tls_err(format!("server name of {addr}: {e}")))?;
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let s = self.connector.connect(name, sock).await?;
        Ok(Stream::Tls(Box::new(s)))
    }
}

/// `host` of `host:port` or `[v6]:port`.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let fail = |e: pem::Error| tls_err(format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(fail)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(fail)?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Never quotes the file in its error: a decoding message could carry part of the key.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ClientError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let why = match e {
            pem::Error::Io(e) => e.to_string(),
            pem::Error::NoItemsFound => "no private key in the file".into(),
            _ => "not a PEM private key".into(),
        };
        tls_err(format!("{}: {why}", path.display()))
    })
}

/// A connection to a server: plain TCP or TLS.
pub enum Stream {
    /// Plain text.
    Plain(TcpStream),
    /// TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Connects to `addr`, with TLS when `tls` is given.
    pub async fn connect(addr: &str, tls: Option<&TlsConnector>) -> Result<Stream, ClientError> {
        match tls {
            Some(t) => t.connect(addr).await,
            None => {
                let sock = TcpStream::connect(addr).await?;
                sock.set_nodelay(true)?;
                Ok(Stream::Plain(sock))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_taken_from_the_address() {
        assert_eq!(host_of("localhost:7420"), "localhost");
        assert_eq!(host_of("127.0.0.1:7420"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7420"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let half = TlsOptions {
            client_cert: Some("c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(half.connector(), Err(ClientError::Tls(_))));
    }
}
