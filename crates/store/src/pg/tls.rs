//! TLS to the database: rustls only (no OpenSSL), three modes.
//!
//! - `disable`: plain TCP.
//! - `require`: encrypted, the server's certificate not checked (protects against a passive
//!   listener only, as libpq's `sslmode=require`).
//! - `verify-full`: encrypted, the certificate chained to a trusted CA (the `database_ca_file`,
//!   else the Mozilla roots of `webpki-roots`) and valid for the host name or IP address
//!   connected to.
//!
//! The mode comes from [`PgOptions::tls`], else the URL's `sslmode`, else the hosts: all on
//! loopback (or Unix sockets) → `disable`, any other → `verify-full`. libpq's `prefer` and
//! `allow` (which fall back to plaintext) and `verify-ca` (no host check) are refused, as are
//! client certificates (`sslcert`, `sslkey`); `sslrootcert` in the URL names the CA file.

use super::PgOptions;
use crate::StoreError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How a node's connections to the database are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PgTls {
    /// No TLS.
    Disable,
    /// TLS without checking the server's certificate.
    Require,
    /// TLS with the server's certificate checked against the CA and the host name.
    VerifyFull,
}

impl PgTls {
    /// The setting's spelling (libpq's `sslmode` values).
    pub fn as_str(self) -> &'static str {
        match self {
            PgTls::Disable => "disable",
            PgTls::Require => "require",
            PgTls::VerifyFull => "verify-full",
        }
    }

    /// Parses `disable`, `require` or `verify-full`; other libpq modes are refused with the
    /// reason.
    pub fn parse(s: &str) -> Result<PgTls, String> {
        match s {
            "disable" => Ok(PgTls::Disable),
            "require" => Ok(PgTls::Require),
            "verify-full" => Ok(PgTls::VerifyFull),
            "prefer" | "allow" => Err(format!(
                "TLS mode {s} would fall back to an unencrypted connection; use disable, \
                 require or verify-full"
            )),
            "verify-ca" => {
                Err("TLS mode verify-ca does not check the host name; use verify-full".to_owned())
            }
            _ => Err(format!(
                "unknown TLS mode {s:?}; use disable, require or verify-full"
            )),
        }
    }
}

impl std::str::FromStr for PgTls {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PgTls::parse(s)
    }
}

impl std::fmt::Display for PgTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What opens a connection: plain or rustls.
#[derive(Clone)]
pub(crate) enum Connector {
    Plain,
    Rustls(MakeRustlsConnect),
}

/// The URL without its TLS parameters, and those parameters.
struct UrlTls {
    rest: String,
    mode: Option<PgTls>,
    root_cert: Option<PathBuf>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`postgres://…?k=v&…`) or a key-value
/// string (`host=… sslmode=…`); refuses client-certificate parameters.
fn split_url(url: &str) -> Result<UrlTls, StoreError> {
    let mut mode = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, StoreError> {
        match key {
            "sslmode" => {
                mode = Some(PgTls::parse(value).map_err(|e| {
                    StoreError::Backend(format!("the database URL's sslmode: {e}"))
                })?);
                Ok(true)
            }
            "sslrootcert" => {
                root_cert = Some(PathBuf::from(value));
                Ok(true)
            }
            "sslcert" | "sslkey" | "sslpassword" | "sslcrl" | "sslcrldir" => {
                Err(StoreError::Backend(format!(
                    "the database URL's {key}: client certificates are not supported"
                )))
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k.trim(), v.trim_matches('\''))? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    Ok(UrlTls {
        rest,
        mode,
        root_cert,
    })
}

fn is_local(host: &Host) -> bool {
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
    }
}

/// Parses the options' URL and settles the TLS mode: the connection configuration and its
/// connector. Errors name the setting at fault, never the URL (it may hold a password).
pub(crate) fn configure(
    options: &PgOptions,
) -> Result<(tokio_postgres::Config, Connector, PgTls), StoreError> {
    let url = split_url(&options.url)?;
    let mut config: tokio_postgres::Config = url
        .rest
        .parse()
        .map_err(|_| StoreError::Backend("the database URL does not parse".into()))?;
    let mode = match (options.tls, url.mode) {
        (Some(set), Some(in_url)) if set != in_url => {
            return Err(StoreError::Backend(format!(
                "database_tls is {} but the database URL says sslmode={}: make them agree",
                set.as_str(),
                in_url.as_str()
            )))
        }
        (Some(m), _) | (None, Some(m)) => m,
        (None, None) => {
            if config.get_hosts().iter().all(is_local) {
                PgTls::Disable
            } else {
                PgTls::VerifyFull
            }
        }
    };
    let ca_file = match (&options.ca_file, url.root_cert) {
        (Some(a), Some(b)) if *a != b => {
            return Err(StoreError::Backend(
                "database_ca_file and the database URL's sslrootcert name different files".into(),
            ))
        }
        (Some(a), _) => Some(a.clone()),
        (None, b) => b,
    };
    if ca_file.is_some() && mode != PgTls::VerifyFull {
        return Err(StoreError::Backend(format!(
            "a CA file is only used with database_tls = verify-full (it is {})",
            mode.as_str()
        )));
    }
    let connector = match mode {
        PgTls::Disable => {
            config.ssl_mode(SslMode::Disable);
            Connector::Plain
        }
        PgTls::Require => {
            config.ssl_mode(SslMode::Require);
            Connector::Rustls(MakeRustlsConnect::new(unverified()?))
        }
        PgTls::VerifyFull => {
            config.ssl_mode(SslMode::Require);
            Connector::Rustls(MakeRustlsConnect::new(verified(ca_file)?))
        }
    };
    Ok((config, connector, mode))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: rustls::Error) -> StoreError {
    StoreError::Backend(format!("database TLS: {e}"))
}

/// Checks the chain against `ca_file` (PEM), else the Mozilla roots, and the host name.
fn verified(ca_file: Option<PathBuf>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let shown = path.display().to_string();
            let certs = CertificateDer::pem_file_iter(&path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| StoreError::Backend(format!("database CA file {shown}: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Backend(format!(
                    "database CA file {shown}: no usable certificate in it"
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Encrypts without checking who answers (`require`).
fn unverified() -> Result<rustls::ClientConfig, StoreError> {
    let provider = provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    )
}

/// `require`: any certificate is accepted, but the handshake's signatures are still checked
/// (against the key in the certificate presented).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(url: &str, set: Option<PgTls>) -> Result<PgTls, StoreError> {
        let mut o = PgOptions::new(url);
        o.tls = set;
        configure(&o).map(|(_, _, m)| m)
    }

    #[test]
    fn the_mode_comes_from_the_setting_the_url_or_the_host() {
        assert_eq!(
            mode("postgres://u@127.0.0.1/db", None).unwrap(),
            PgTls::Disable
        );
        assert_eq!(
            mode("postgres://u@localhost:5432/db", None).unwrap(),
            PgTls::Disable
        );
        assert_eq!(
            mode("postgres://u@db.example.org/db", None).unwrap(),
            PgTls::VerifyFull
        );
        assert_eq!(
            mode("postgres://u@db.example.org/db?sslmode=require", None).unwrap(),
            PgTls::Require
        );
        assert_eq!(
            mode(
                "host=db.example.org user=u sslmode=disable",
                Some(PgTls::Disable)
            )
            .unwrap(),
            PgTls::Disable
        );
        assert_eq!(
            mode("postgres://u@127.0.0.1/db", Some(PgTls::Require)).unwrap(),
            PgTls::Require
        );
    }

    #[test]
    fn unsafe_or_contradictory_modes_are_refused_without_the_url() {
        for (url, set, says) in [
            (
                "postgres://u:hunter2@h/db?sslmode=prefer",
                None,
                "fall back",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=verify-ca",
                None,
                "host name",
            ),
            (
                "postgres://u:hunter2@h/db?sslmode=require",
                Some(PgTls::VerifyFull),
                "make them agree",
            ),
            (
                "postgres://u:hunter2@h/db?sslcert=/c.pem",
                None,
                "not supported",
            ),
            (
                "postgres://u:hunter2@h/db?sslrootcert=/ca.pem&sslmode=require",
                None,
                "only used with",
            ),
        ] {
            let e = mode(url, set).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn other_url_parameters_are_kept() {
        let u = split_url("postgres://u@h/db?sslmode=disable&application_name=x").unwrap();
        assert_eq!(u.rest, "postgres://u@h/db?application_name=x");
        assert_eq!(u.mode, Some(PgTls::Disable));
    }
}
