//! TLS on both listeners, mTLS on the TCP listener, and certificate reload, against the real
//! binary with certificates made here (rcgen).

use crate::harness::{run_cli, Server, BIN};
use portcullis_client::{Client, ClientError, Stream, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate authority made for one test.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A leaf certificate and its key, as PEM, plus the certificate's DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 with this serial and common name.
    fn server_leaf(&self, serial: u64, cn: &str) -> Leaf {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params.serial_number = Some(SerialNumber::from(serial));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate (for mTLS).
    fn client_leaf(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Files of one test: the server's pair, the CA that issued it, client pairs.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Writes `leaf` as `<prefix>.crt` / `<prefix>.key`; returns their paths.
    fn pair(&self, prefix: &str, leaf: &Leaf) -> (String, String) {
        (
            self.write(&format!("{prefix}.crt"), &leaf.cert_pem),
            self.write(&format!("{prefix}.key"), &leaf.key_pem),
        )
    }
}

fn tls_options(ca_file: &Path) -> TlsOptions {
    TlsOptions {
        ca_file: Some(ca_file.to_path_buf()),
        ..TlsOptions::default()
    }
}

fn localhost(addr: std::net::SocketAddr) -> String {
    format!("localhost:{}", addr.port())
}

/// The certificate the listener at `addr` presents to a new connection, and the connection.
async fn served_certificate(addr: &str, options: &TlsOptions) -> (Vec<u8>, Stream) {
    let stream = options.connector().unwrap().connect(addr).await.unwrap();
    let der = match &stream {
        Stream::Tls(s) => s.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        Stream::Plain(_) => unreachable!(),
    };
    (der, stream)
}

/// One HTTPS request with `Connection: close`; returns the response head (the status line and
/// the headers) and the body.
async fn https_execute(addr: &str, options: &TlsOptions, body: &Value) -> (String, Value) {
    let (_, mut s) = served_certificate(addr, options).await;
    let body = body.to_string();
    let req = format!(
        "POST /api/v1/execute HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    let mut raw = Vec::new();
    // The server ends with close_notify; tolerate a bare close after the response too.
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    (
        head.to_owned(),
        serde_json::from_str(body).expect("a JSON body"),
    )
}

/// Waits (bounded) until `cond` holds; panics with `what` otherwise.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first line the server prints (the listening line), then the process is killed.
fn listening_line(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(data.path().join("data"))
        .args(["--tcp", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    line
}

fn sighup(server: &Server) {
    let ok = Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// The protocol version a client limited to `versions` negotiates with `addr`, or `None` when
/// the handshake fails.
async fn negotiated(
    addr: &str,
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Option<rustls::ProtocolVersion> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let s = connector.connect(name, sock).await.ok()?;
    s.get_ref().1.protocol_version()
}

/// HTTPS execute, TLS NDJSON (Rust client, `exec`, `log tail`), both presenting the configured
/// certificate, and the listening line says TLS.
#[tokio::test]
async fn https_and_tls_ndjson_serve_the_configured_certificate() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let leaf = ca.server_leaf(1, "portcullis one");
    let (cert, key) = files.pair("server", &leaf);
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let options = tls_options(Path::new(&ca_file));
    let tcp = localhost(server.tcp);
    let http = localhost(server.http);

    // NDJSON over TLS through the Rust client.
    let mut c = Client::connect_tls(&tcp, &options.connector().unwrap())
        .await
        .unwrap();
    let r = c.call("SYS.PING", json!({})).await.unwrap();
    assert!(r.ok, "{r:?}");
    // Pipelined requests come back in order over TLS too.
    let many: Vec<_> = (0..50)
        .map(|_| portcullis_protocol::Request::new("SYS.PING"))
        .collect();
    let answers = c.pipeline(many).await.unwrap();
    assert_eq!(answers.len(), 50);
    assert!(answers.iter().all(|r| r.ok));
    assert_eq!(served_certificate(&tcp, &options).await.0, leaf.der);

    // HTTPS execute.
    let (head, v) = https_execute(&http, &options, &json!({"command": "SYS.PING"})).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["data"]["pong"], true, "{v}");
    // Browsers are told to come back over HTTPS only.
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nstrict-transport-security: max-age=31536000"),
        "{head}"
    );
    assert_eq!(served_certificate(&http, &options).await.0, leaf.der);

    // TLS 1.3 is preferred, TLS 1.2 still served, on both listeners.
    for addr in [&tcp, &http] {
        assert_eq!(
            negotiated(addr, &ca.pem, rustls::ALL_VERSIONS).await,
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            negotiated(addr, &ca.pem, &[&rustls::version::TLS12]).await,
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
    }

    // The CLI over TLS: exec and log tail.
    let (code, out, err) = run_cli(&["exec", "SYS.PING", "--addr", &tcp, "--ca-file", &ca_file]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["data"]["pong"],
        true
    );
    // SYS.INFO is logged (SYS.PING is not): the tail below must show it.
    let (code, out, err) = run_cli(&["exec", "SYS.INFO", "--addr", &tcp, "--ca-file", &ca_file]);
    assert_eq!(code, 0, "{out}{err}");
    let token = server.operator_token();
    let (code, out, err) = run_cli(&[
        "log",
        "tail",
        "--from",
        "1",
        "--json",
        "--addr",
        &tcp,
        "--ca-file",
        &ca_file,
        "--token",
        token.expose(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SYS.INFO"), "{out}");
    // Without the CA the certificate is not trusted: the CLI fails instead of going on.
    let (code, _, err) = run_cli(&["exec", "SYS.PING", "--addr", &tcp, "--tls"]);
    assert_ne!(code, 0);
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let line = listening_line(&["--tls-cert", &cert, "--tls-key", &key]);
    assert!(line.contains(" tls=on "), "{line}");
    assert!(line.contains(" data_dir="), "{line}");
    assert!(!line.contains("client_certs"), "{line}");
}

/// A client that speaks plain text to a TLS listener gets no answer and the connection ends;
/// the server goes on serving TLS clients.
#[tokio::test]
async fn a_plain_text_client_to_a_tls_listener_fails_cleanly() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca.server_leaf(7, "plain"));
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);

    let mut plain = Client::connect(server.tcp).await.unwrap();
    match plain.call("SYS.PING", json!({})).await {
        Err(ClientError::Closed | ClientError::Io(_) | ClientError::Frame(_)) => {}
        Err(ClientError::Protocol(_)) => {}
        other => panic!("a plain-text request got {other:?}"),
    }
    let mut s = tokio::net::TcpStream::connect(server.http).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw)).await;
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP was answered: {raw:?}"
    );

    let options = tls_options(Path::new(&ca_file));
    let mut c = Client::connect_tls(&localhost(server.tcp), &options.connector().unwrap())
        .await
        .unwrap();
    assert!(c.call("SYS.PING", json!({})).await.unwrap().ok);
    let (status, _) = https_execute(
        &localhost(server.http),
        &options,
        &json!({"command": "SYS.PING"}),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status}");
}

/// Whether a TLS client with `options` can run SYS.PING on `addr` (a refused client
/// certificate surfaces at the handshake or, with TLS 1.3, at the first read).
async fn ping_over_tls(addr: &str, options: &TlsOptions) -> bool {
    let Ok(mut c) = Client::connect_tls(addr, &options.connector().unwrap()).await else {
        return false;
    };
    matches!(c.call("SYS.PING", json!({})).await, Ok(r) if r.ok)
}

/// With `tls_client_ca`, the TCP listener serves only clients with a certificate from that CA;
/// the HTTP gateway still serves browsers without one.
#[tokio::test]
async fn mtls_admits_only_clients_with_a_certificate_from_the_client_ca() {
    let server_ca = Ca::new("Server CA");
    let client_ca = Ca::new("Backends CA");
    let other_ca = Ca::new("Someone else's CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &server_ca.server_leaf(3, "mtls"));
    let ca_file = files.write("ca.pem", &server_ca.pem);
    let client_ca_file = files.write("clients-ca.pem", &client_ca.pem);
    let (good_cert, good_key) = files.pair("backend", &client_ca.client_leaf("backend"));
    let (bad_cert, bad_key) = files.pair("stranger", &other_ca.client_leaf("backend"));
    let flags = [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--tls-client-ca",
        &client_ca_file,
    ];
    let server = Server::start_with(&flags);
    let tcp = localhost(server.tcp);
    let anonymous = tls_options(Path::new(&ca_file));
    let with = |c: &str, k: &str| TlsOptions {
        client_cert: Some(c.into()),
        client_key: Some(k.into()),
        ..anonymous.clone()
    };

    assert!(
        !ping_over_tls(&tcp, &anonymous).await,
        "served without a client certificate"
    );
    assert!(
        !ping_over_tls(&tcp, &with(&bad_cert, &bad_key)).await,
        "served with a certificate from another CA"
    );
    assert!(
        ping_over_tls(&tcp, &with(&good_cert, &good_key)).await,
        "refused a certificate from the client CA"
    );
    // The CLI with a client certificate, and without one.
    let (code, out, err) = run_cli(&[
        "exec",
        "SYS.PING",
        "--addr",
        &tcp,
        "--ca-file",
        &ca_file,
        "--client-cert",
        &good_cert,
        "--client-key",
        &good_key,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = run_cli(&["exec", "SYS.PING", "--addr", &tcp, "--ca-file", &ca_file]);
    assert_ne!(code, 0);
    // The gateway asks no client certificate.
    let (status, v) = https_execute(
        &localhost(server.http),
        &anonymous,
        &json!({"command": "SYS.PING"}),
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200 "), "{status} {v}");

    let line = listening_line(&flags);
    assert!(line.contains(" tls=on client_certs=required "), "{line}");
}

/// New connections get a new certificate after SIGHUP and after the files change; a broken
/// new file (or a key that does not match) keeps the certificate in force, and says why in
/// the log without quoting the key.
#[tokio::test]
async fn certificates_reload_on_sighup_and_on_change_and_a_bad_file_keeps_the_old_one() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let ca_file = files.write("ca.pem", &ca.pem);
    let options = tls_options(Path::new(&ca_file));
    // Every version of the pair is padded to one size and written with the first version's
    // modification time, so that only SIGHUP can reveal the change.
    const PAD: usize = 4096;
    let padded = |s: &str| format!("{s}{}", "\n".repeat(PAD - s.len()));
    let first = ca.server_leaf(100, "first");
    let cert = files.write("server.crt", &padded(&first.cert_pem));
    let key = files.write("server.key", &padded(&first.key_pem));
    let server = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let tcp = localhost(server.tcp);
    let http = localhost(server.http);
    assert_eq!(served_certificate(&tcp, &options).await.0, first.der);
    // A connection opened now keeps its certificate across the reloads.
    let mut kept = Client::connect_tls(&tcp, &options.connector().unwrap())
        .await
        .unwrap();
    let stamp = |p: &str| std::fs::metadata(p).unwrap().modified().unwrap();
    let (cert_time, key_time) = (stamp(&cert), stamp(&key));

    // SIGHUP: same sizes, same times; only the signal says the files are new.
    let second = ca.server_leaf(200, "second");
    for (path, text, time) in [
        (&cert, &second.cert_pem, cert_time),
        (&key, &second.key_pem, key_time),
    ] {
        std::fs::write(path, padded(text)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }
    sighup(&server);
    eventually("the certificate changes on SIGHUP", async || {
        served_certificate(&tcp, &options).await.0 == second.der
    })
    .await;
    assert!(server.stderr_text().contains("SIGHUP"));
    assert_eq!(served_certificate(&http, &options).await.0, second.der);

    // A file change, no signal.
    let third = ca.server_leaf(300, "third");
    files.pair("server", &third);
    eventually("the certificate changes with its files", async || {
        served_certificate(&tcp, &options).await.0 == third.der
            && served_certificate(&http, &options).await.0 == third.der
    })
    .await;

    // A broken certificate file: the third pair stays, and the log says why.
    let refusals = |s: &Server| s.stderr_text().matches("TLS files not reloaded").count();
    let before = refusals(&server);
    files.write("server.crt", "-----BEGIN CERTIFICATE-----\nbroken\n");
    eventually("the broken file is refused", async || {
        refusals(&server) > before
    })
    .await;
    assert_eq!(served_certificate(&tcp, &options).await.0, third.der);
    assert_eq!(served_certificate(&http, &options).await.0, third.der);

    // A certificate whose key is not the one beside it: refused too.
    let fourth = ca.server_leaf(400, "fourth");
    let before = refusals(&server);
    files.write("server.crt", &fourth.cert_pem);
    eventually("the mismatched pair is refused", async || {
        refusals(&server) > before
    })
    .await;
    assert_eq!(served_certificate(&tcp, &options).await.0, third.der);
    let log = server.stderr_text();
    for leaf in [&first, &second, &third, &fourth] {
        let body: String = leaf.key_pem.lines().nth(1).unwrap().to_owned();
        assert!(!log.contains(&body), "a private key reached the log");
    }

    // The connection opened at the start still works, with its first certificate.
    assert!(kept.call("SYS.PING", json!({})).await.unwrap().ok);
}

/// With TLS on, a `public_url` or `issuer` still naming `http://` is warned about at start (by
/// setting name); with `https://` addresses nothing is said.
#[test]
fn plain_http_urls_under_tls_are_warned_about_at_start() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let leaf = ca.server_leaf(7, "portcullis urls");
    let (cert, key) = files.pair("server", &leaf);
    let warning = |setting: &str| format!("TLS is on but {setting} starts with http://");

    // The defaults name http://.
    let plain = Server::start_with(&["--tls-cert", &cert, "--tls-key", &key]);
    let log = plain.stderr_text();
    for setting in ["public_url", "issuer"] {
        assert!(
            log.contains(&warning(setting)),
            "no warning for {setting}:\n{log}"
        );
    }

    let https = Server::start_config(
        &format!(
            "tls_cert = {cert:?}\ntls_key = {key:?}\npublic_url = \"https://auth.example.test\"\nissuer = \"https://auth.example.test\"\n"
        ),
        &[],
    );
    let log = https.stderr_text();
    for setting in ["public_url", "issuer"] {
        assert!(
            !log.contains(&warning(setting)),
            "{setting} warned about:\n{log}"
        );
    }
}

/// One half of the pair, or files that do not load, refuse to start with a clear message.
#[test]
fn tls_settings_that_cannot_work_refuse_to_start() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let leaf = ca.server_leaf(9, "start");
    let (cert, key) = files.pair("server", &leaf);
    let other_key = files.write("other.key", &ca.server_leaf(10, "other").key_pem);
    let garbage = files.write("garbage.pem", "this is no certificate\n");
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().join("data");
    let data_dir = data_dir.to_string_lossy();
    let serve = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--data-dir",
            &data_dir,
            "--tcp",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    let (code, _, err) = serve(&["--tls-cert", &cert]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_cert and tls_key"), "{err}");
    let (code, _, err) = serve(&["--tls-key", &key]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_cert and tls_key"), "{err}");
    let (code, _, err) = serve(&["--tls-client-ca", &cert]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_client_ca"), "{err}");
    let (code, _, err) = serve(&["--tls-cert", &garbage, "--tls-key", &key]);
    assert_ne!(code, 0);
    assert!(err.contains("garbage.pem"), "{err}");
    let (code, _, err) = serve(&["--tls-cert", &cert, "--tls-key", &other_key]);
    assert_ne!(code, 0);
    assert!(err.contains("tls_key"), "{err}");
    let body = leaf.key_pem.lines().nth(1).unwrap();
    assert!(!err.contains(body));
}

/// `portcullis bench --addr` loads a TLS server through `--ca-file`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_loads_a_tls_server() {
    let ca = Ca::new("Test CA");
    let files = Files::new();
    let (cert, key) = files.pair("server", &ca.server_leaf(11, "bench"));
    let ca_file = files.write("ca.pem", &ca.pem);
    let server = Server::start_config(
        &format!("tls_cert = {cert:?}\ntls_key = {key:?}\n[rate_limits]\nenabled = false\n"),
        &[],
    );
    let addr = localhost(server.tcp);
    for workload in ["ping", "me"] {
        let (code, out, err) = run_cli(&[
            "bench",
            workload,
            "--addr",
            &addr,
            "--ca-file",
            &ca_file,
            "--anchor",
            "none",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--connections",
            "2",
            "--json",
            "--quiet",
        ]);
        assert_eq!(code, 0, "{err}\n{out}");
        let r: Value = serde_json::from_str(&out).unwrap();
        assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
    }
}
