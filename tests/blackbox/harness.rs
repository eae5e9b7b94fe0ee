//! Starts the real `portcullis` binary on 127.0.0.1:0 with a fresh data directory and talks to
//! it over real sockets.

use portcullis_client::Client;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::commands::log::QueryResult;
use portcullis_protocol::{Request, Response, Secret};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

/// Which store the servers under test use: `PORTCULLIS_TEST_STORE=postgres` runs the whole
/// suite against PostgreSQL (a throwaway cluster on loopback, a fresh database per server);
/// unset or `sled`, the embedded default. `scripts/test` runs the suite both ways.
pub fn database_for_test() -> Option<String> {
    match std::env::var("PORTCULLIS_TEST_STORE").as_deref() {
        Ok("postgres") => Some(portcullis_testdb::cluster().fresh_database()),
        Ok("sled") | Err(_) => None,
        Ok(other) => panic!("PORTCULLIS_TEST_STORE={other}: expected sled or postgres"),
    }
}

/// A running server process.
pub struct Server {
    child: Option<Child>,
    pub tcp: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    extra: Vec<String>,
    envs: Vec<(String, String)>,
    stderr_path: PathBuf,
    /// The PostgreSQL database of this server, when the suite runs on PostgreSQL.
    pub database_url: Option<String>,
    _tmp: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server on a fresh data directory with extra `serve` flags.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_env(extra, &[])
    }

    /// Starts a server with extra `serve` flags and environment variables.
    pub fn start_env(extra: &[&str], envs: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Server::start_in(tmp, extra, envs, database_for_test())
    }

    /// Starts a server whose settings come from a TOML config file with these contents (passed
    /// with `--config`; the file lives as long as the server, across restarts), plus extra flags.
    pub fn start_config(config_toml: &str, extra: &[&str]) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let path = tmp.path().join("config.toml");
        std::fs::write(&path, config_toml).expect("write config file");
        let mut flags = vec!["--config".to_owned(), path.to_string_lossy().into_owned()];
        flags.extend(extra.iter().map(|s| s.to_string()));
        Server::start_in(tmp, flags, &[], database_for_test())
    }

    /// Starts `n` nodes on one fresh PostgreSQL database, as an operator runs several nodes:
    /// the first creates the master key and operator token, the others start with copies of its
    /// files in their own data directories. Each node has its own ports and node id.
    // Used by the cluster suite (tests/cluster), which shares this harness.
    #[allow(dead_code)]
    pub fn cluster(n: usize, extra: &[&str]) -> Vec<Server> {
        Server::cluster_on(portcullis_testdb::cluster().fresh_database(), n, extra)
    }

    /// [`Server::cluster`] on the database at `url` (for example one of a test's own
    /// PostgreSQL cluster, `portcullis_testdb::Cluster::start_private`).
    #[allow(dead_code)]
    pub fn cluster_on(url: String, n: usize, extra: &[&str]) -> Vec<Server> {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let first = Server::start_in(
            tempfile::tempdir().expect("tempdir"),
            extra.clone(),
            &[],
            Some(url),
        );
        let mut nodes = vec![first];
        for _ in 1..n {
            let next = nodes[0].join(&extra);
            nodes.push(next);
        }
        nodes
    }

    /// Starts another node on this node's PostgreSQL database, with copies of its key files in
    /// a data directory of its own, and `extra` flags.
    #[allow(dead_code)]
    pub fn join(&self, extra: &[String]) -> Server {
        let url = self.database_url.clone().expect("a node on PostgreSQL");
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        for file in ["master.key", "operator.token"] {
            std::fs::copy(self.data_dir.join(file), data_dir.join(file))
                .expect("copy the first node's file");
        }
        Server::start_in(tmp, extra.to_vec(), &[], Some(url))
    }

    /// Starts a server on a fresh data directory that `prepare` fills first (key files copied
    /// from another deployment, an `admin import`), on sled (`None`) or this PostgreSQL database
    /// whatever `PORTCULLIS_TEST_STORE` says.
    // Used by the cluster suite (tests/cluster), which shares this harness.
    #[allow(dead_code)]
    pub fn start_prepared(database_url: Option<String>, prepare: impl FnOnce(&Path)) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).expect("data dir");
        prepare(&data_dir);
        Server::start_in(tmp, Vec::new(), &[], database_url)
    }

    fn start_in(
        tmp: tempfile::TempDir,
        mut extra: Vec<String>,
        envs: &[(&str, &str)],
        database_url: Option<String>,
    ) -> Server {
        let data_dir = tmp.path().join("data");
        if let Some(url) = &database_url {
            // The same database across restarts of this server.
            extra.extend(["--database-url".to_owned(), url.clone()]);
        }
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let stderr_path = tmp.path().join("stderr.log");
        let (child, tcp, http) = spawn(&data_dir, &extra, &envs, &stderr_path);
        Server {
            child: Some(child),
            tcp,
            http,
            data_dir,
            extra,
            envs,
            stderr_path,
            database_url,
            _tmp: Some(tmp),
        }
    }

    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// The operator token the server created in its data directory.
    pub fn operator_token(&self) -> Secret {
        let s = std::fs::read_to_string(self.data_dir.join("operator.token")).expect("token file");
        Secret::new(s.trim())
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.tcp).await.expect("connect")
    }

    pub async fn operator_client(&self) -> Client {
        let mut c = self.client().await;
        c.set_token(Some(self.operator_token()));
        c
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(&child, "TERM");
        wait_timeout(&mut child, Duration::from_secs(20)).expect("server did not stop on SIGTERM")
    }

    /// SIGKILL, no chance to flush.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same data directory (new ports).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        let (child, tcp, http) = spawn(&self.data_dir, &self.extra, &self.envs, &self.stderr_path);
        self.child = Some(child);
        self.tcp = tcp;
        self.http = http;
    }

    /// The process id of the running server.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Runs the CLI with arguments and returns (exit code, stdout, stderr); offline commands
    /// (`--data-dir`) find this server's database as an operator's would, through
    /// `PORTCULLIS_DATABASE_URL`.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let envs: Vec<(&str, &str)> = self
            .database_url
            .iter()
            .map(|u| ("PORTCULLIS_DATABASE_URL", u.as_str()))
            .collect();
        run_cli_env(args, &envs)
    }

    /// The environment an operator's offline CLI needs for this server's data: its database.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        self.database_url
            .iter()
            .map(|u| ("PORTCULLIS_DATABASE_URL".to_owned(), u.clone()))
            .collect()
    }

    /// Runs SQL against this server's PostgreSQL database (the suite must run on PostgreSQL).
    pub fn psql(&self, sql: &str) -> String {
        let url = self.database_url.as_ref().expect("a PostgreSQL server");
        let db = url.rsplit('/').next().expect("database name");
        portcullis_testdb::cluster().psql(db, sql)
    }

    /// A copy of this (stopped) server's PostgreSQL database, as a backup restored elsewhere
    /// would be: the copy's URL, or `None` on sled (where the data directory is the database).
    pub fn copy_database(&self) -> Option<String> {
        let url = self.database_url.as_ref()?;
        let (base, db) = url.rsplit_once('/').expect("database name");
        let copy = format!("{db}_copy");
        portcullis_testdb::cluster()
            .psql("postgres", &format!("CREATE DATABASE {copy} TEMPLATE {db}"));
        Some(format!("{base}/{copy}"))
    }

    /// Whether `needle` appears anywhere in what the server stored: sled's files, or every
    /// value, record and column of the PostgreSQL database.
    pub fn stored_contains(&self, needle: &str) -> bool {
        if self.database_url.is_some() {
            let tables = self.psql(
                "SELECT string_agg(table_name, ' ') FROM information_schema.tables \
                 WHERE table_schema = 'public'",
            );
            let quoted = needle.replace('\'', "''");
            return tables.split_whitespace().any(|t| {
                // Text and jsonb columns as the row's text; bytea columns byte for byte.
                let bytea = self.psql(&format!(
                    "SELECT coalesce(string_agg(column_name, ' '), '') FROM information_schema.columns \
                     WHERE table_name = '{t}' AND data_type = 'bytea'"
                ));
                let mut cond = format!("position('{quoted}' in r::text) > 0");
                for col in bytea.split_whitespace() {
                    cond.push_str(&format!(
                        " OR position(convert_to('{quoted}', 'UTF8') in r.{col}) > 0"
                    ));
                }
                let hits = self.psql(&format!("SELECT count(*) FROM {t} AS r WHERE {cond}"));
                hits != "0"
            }) || self.stored_bytes_contain(needle);
        }
        self.stored_bytes_contain(needle)
    }

    fn stored_bytes_contain(&self, needle: &str) -> bool {
        let Ok(files) = std::fs::read_dir(self.data_dir.join("db")) else {
            return false;
        };
        files.flatten().any(|f| {
            let bytes = std::fs::read(f.path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
    }

    /// Everything the server wrote to stderr (tracing at debug level) so far, across restarts.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    run_cli_env(args, &[])
}

/// [`run_cli`] with environment variables.
pub fn run_cli_env(args: &[&str], envs: &[(&str, &str)]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("PORTCULLIS_TOKEN")
        .env_remove("PORTCULLIS_ADDR")
        .env_remove("PORTCULLIS_DATABASE_URL")
        .envs(envs.iter().copied())
        .output()
        .expect("run cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_timeout(child: &mut Child, d: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + d;
    while Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

fn spawn(
    data_dir: &Path,
    extra: &[String],
    envs: &[(String, String)],
    stderr_path: &Path,
) -> (Child, SocketAddr, SocketAddr) {
    // Tracing at debug level goes to a file, so tests can search it for secrets.
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(stderr_path)
        .expect("stderr file");
    let mut child = Command::new(BIN)
        .env("RUST_LOG", "debug")
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(
            [("--tcp", "127.0.0.1:0"), ("--http", "127.0.0.1:0")]
                .iter()
                .filter(|(flag, _)| !extra.iter().any(|e| e == flag))
                .flat_map(|(flag, value)| [*flag, *value]),
        )
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn portcullis");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read listening line");
    let field = |name: &str| -> SocketAddr {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
            .parse()
            .expect("address")
    };
    let (tcp, http) = (field("tcp"), field("http"));
    (child, tcp, http)
}

/// A minimal HTTP/1.1 response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with `Connection: close` and reads the whole response.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    s.write_all(body).await.expect("write body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("http response in time")
        .expect("read");
    parse_http(&raw)
}

pub async fn execute_http(
    addr: SocketAddr,
    body: &serde_json::Value,
    token: Option<&str>,
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    http(
        addr,
        "POST",
        "/api/v1/execute",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

fn parse_http(raw: &[u8]) -> HttpResponse {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&b[start..start + size]);
        b = &b[start + size + 2..];
    }
    out
}

/// `AUTH.SIGNUP`, with a password or (None) passwordless; panics unless it succeeds.
/// The `kid` in an access token's header.
pub fn kid_of(t: &Secret) -> String {
    use base64::Engine;
    let h = t.expose().split('.').next().unwrap();
    let v: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(h)
            .unwrap(),
    )
    .unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

pub async fn signup(c: &mut Client, email: &str, password: Option<&str>) -> SessionTokens {
    let mut p = json!({"email": email});
    if let Some(pw) = password {
        p["password"] = json!(pw);
    }
    c.call_ok("AUTH.SIGNUP", p).await.expect("signup")
}

pub async fn login(c: &mut Client, email: &str, password: &str) -> Response {
    c.call("AUTH.LOGIN", json!({"email": email, "password": password}))
        .await
        .unwrap()
}

/// Runs a command with a bearer token.
pub async fn as_user(c: &mut Client, token: &Secret, command: &str, params: Value) -> Response {
    c.send(Request::new(command).params(params).token(token.clone()))
        .await
        .unwrap()
}

pub async fn refresh(c: &mut Client, token: &Secret) -> Response {
    c.call("AUTH.REFRESH", json!({"refresh_token": token.expose()}))
        .await
        .unwrap()
}

/// The session of a successful sign-in answer.
pub fn tokens(r: Response) -> SessionTokens {
    assert!(r.ok, "{r:?}");
    serde_json::from_value(r.data).unwrap()
}

/// Every event in the log, through `LOG.QUERY` pages, as JSON.
pub async fn all_events(server: &Server) -> Vec<Value> {
    let mut c = server.operator_client().await;
    let mut out = Vec::new();
    let mut from = 1;
    for _ in 0..10_000 {
        let page: QueryResult = c
            .call_ok("LOG.QUERY", json!({"from_seq": from, "limit": 1000}))
            .await
            .unwrap();
        out.extend(page.events.iter().map(|e| serde_json::to_value(e).unwrap()));
        match page.next_seq {
            Some(n) => from = n,
            None => return out,
        }
    }
    panic!("LOG.QUERY did not finish in 10000 pages");
}
