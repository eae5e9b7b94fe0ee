//! Observability through the real binary: `GET /metrics` in the Prometheus text format and its
//! counters moving with traffic, the metrics token, and `log tail` filters and colour.

use crate::harness::{http, HttpResponse, Server, BIN};
use portcullis_client::Client;
use portcullis_protocol::{Event, Request};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

/// One sample line: `name{labels} value`.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug)]
struct Exposition {
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Like [`Exposition::get`], 0 when the series does not exist yet.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    fn series(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }

    fn type_of(&self, name: &str) -> Option<&str> {
        self.types.get(name).map(String::as_str)
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("not a float: {s:?}")),
    }
}

/// Reads `key="value",...}` and returns the labels and the rest after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let (key, rest) = s.split_once("=\"").ok_or(format!("bad label in {s:?}"))?;
        if !is_label_name(key) {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(key.to_owned(), value).is_some() {
            return Err(format!("label {key} repeated"));
        }
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

/// Parses the text exposition strictly: HELP and TYPE lines well formed, each TYPE once and
/// before its samples, every other non-empty line `name{labels} value` with a float value.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            let name = name.filter(|n| is_metric_name(n));
            match (kind, name, rest) {
                (Some("HELP"), Some(_), Some(help)) if !help.is_empty() => {}
                (Some("TYPE"), Some(name), Some(t)) if TYPES.contains(&t) => {
                    if types.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("TYPE given twice".into()));
                    }
                }
                _ => return Err(at("malformed comment".into())),
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or(at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = match line[name_end..].strip_prefix('{') {
            Some(rest) => parse_labels(rest).map_err(at)?,
            None => (BTreeMap::new(), &line[name_end..]),
        };
        let value = rest
            .strip_prefix(' ')
            .ok_or(at("no space before the value".into()))?;
        if value.contains(' ') {
            return Err(at("more than a value after the labels".into()));
        }
        let value = parse_value(value).map_err(at)?;
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|sfx| name.strip_suffix(sfx))
            .find(|base| types.contains_key(*base))
            .unwrap_or(name);
        if !types.contains_key(family) {
            return Err(at("sample before its TYPE".into()));
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(Exposition { types, samples })
}

async fn get_metrics(server: &Server, token: Option<&str>) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http(server.http, "GET", "/metrics", &headers, b"").await
}

async fn scrape(server: &Server) -> Exposition {
    scrape_with(server, None).await
}

async fn scrape_with(server: &Server, token: Option<&str>) -> Exposition {
    let r = get_metrics(server, token).await;
    let text = String::from_utf8(r.body.clone()).expect("metrics are UTF-8");
    assert_eq!(r.status, 200, "{text}");
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const COMMANDS: &str = "portcullis_commands_total";

async fn log_head_seq(c: &mut Client) -> f64 {
    let info: Value = c.call_ok("SYS.INFO", json!({})).await.unwrap();
    info["log_head_seq"].as_f64().expect("log_head_seq")
}

#[test]
fn the_parser_accepts_the_format_and_refuses_malformed_text() {
    let good = "# HELP a_total Things.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n\n\
                # TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(e.get("a_total", &[("x", "1"), ("y", "q\"")]), Some(3.0));
    assert_eq!(e.get("h_bucket", &[("le", "+Inf")]), Some(2.0));
    for bad in [
        "# TYPE a counter\na 1 2 3\n",
        "# TYPE a counter\na{x=1} 1\n",
        "# TYPE a counter\na one\n",
        "a 1\n",
        "# TYPE a countr\na 1\n",
        "# HELP\n",
        "# TYPE a counter\n# TYPE a counter\n",
        "# TYPE a counter\na{x=\"1\" 1\n",
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_with_traffic() {
    let server = Server::start();
    let before = scrape(&server).await;
    for (name, kind) in [
        ("portcullis_tcp_connections", "gauge"),
        ("portcullis_tcp_connections_refused_total", "counter"),
        ("portcullis_log_head_seq", "gauge"),
        ("portcullis_mail_queue_depth", "gauge"),
        ("portcullis_mail_sent_total", "counter"),
        ("portcullis_mail_failed_total", "counter"),
        ("portcullis_rate_limited_total", "counter"),
    ] {
        assert_eq!(before.type_of(name), Some(kind), "{name}");
    }
    // The group commit is sled's: a PostgreSQL node commits every statement and has none.
    for (name, kind) in [
        ("portcullis_group_commit_flushes_total", "counter"),
        ("portcullis_group_commit_waiters_total", "counter"),
        ("portcullis_group_commit_max_batch", "gauge"),
        ("portcullis_group_commit_flush_seconds_total", "counter"),
    ] {
        let want = server.database_url.is_none().then_some(kind);
        assert_eq!(before.type_of(name), want, "{name}");
    }
    for class in [
        "cheap",
        "operator",
        "account",
        "credential",
        "send",
        "failure_delay",
    ] {
        assert_eq!(
            before.get("portcullis_rate_limited_total", &[("class", class)]),
            Some(0.0),
            "{class}"
        );
    }
    let info_ok = [("command", "SYS.INFO"), ("outcome", "ok")];
    let unknown = [("command", "unknown"), ("outcome", "UNKNOWN_COMMAND")];
    let unreadable = [("command", "-"), ("outcome", "BAD_REQUEST")];

    // Traffic: SYS.INFO over TCP (pipelined) and HTTP, unknown commands, unreadable frames.
    let mut c = server.client().await;
    let tcp_infos = 7;
    let reqs = (0..tcp_infos).map(|_| Request::new("SYS.INFO")).collect();
    let answers = c.pipeline(reqs).await.unwrap();
    assert!(answers.iter().all(|r| r.ok), "{answers:?}");
    let http_infos = 2;
    for _ in 0..http_infos {
        let r =
            crate::harness::execute_http(server.http, &json!({"command": "SYS.INFO"}), None).await;
        assert_eq!(r.status, 200);
    }
    for name in ["NO.SUCH", "NO.SUCH", "ANOTHER.ONE"] {
        let r = c.call(name, json!({})).await.unwrap();
        assert!(!r.ok);
    }
    c.send_raw(b"{nope\n").await.unwrap();
    assert!(!c.read_response().await.unwrap().ok);

    let after = scrape(&server).await;
    assert_eq!(
        after.value(COMMANDS, &info_ok) - before.value(COMMANDS, &info_ok),
        f64::from(tcp_infos + http_infos),
        "SYS.INFO ok counts each call exactly once"
    );
    assert_eq!(
        after.value(COMMANDS, &unknown) - before.value(COMMANDS, &unknown),
        3.0
    );
    assert_eq!(
        after.value(COMMANDS, &unreadable) - before.value(COMMANDS, &unreadable),
        1.0
    );
    assert!(
        after
            .series(COMMANDS)
            .iter()
            .all(|s| !s.labels["command"].contains("NO.SUCH")
                && !s.labels["command"].contains("ANOTHER")),
        "unknown names never become labels"
    );
    assert_eq!(after.type_of(COMMANDS), Some("counter"));

    // The histogram: cumulative buckets ending in +Inf, equal to the count.
    let h = "portcullis_command_duration_seconds";
    assert_eq!(after.type_of(h), Some("histogram"));
    let count = after
        .get(&format!("{h}_count"), &[("command", "SYS.INFO")])
        .unwrap();
    assert!(count >= f64::from(tcp_infos + http_infos), "{count}");
    let inf = after
        .get(
            &format!("{h}_bucket"),
            &[("command", "SYS.INFO"), ("le", "+Inf")],
        )
        .unwrap();
    assert_eq!(inf, count);
    let mut buckets: Vec<(f64, f64)> = after
        .series(&format!("{h}_bucket"))
        .iter()
        .filter(|s| s.labels["command"] == "SYS.INFO")
        .map(|s| (s.labels["le"].parse::<f64>().unwrap(), s.value))
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(buckets.len() > 2);
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    assert!(after.get(&format!("{h}_sum"), &[("command", "SYS.INFO")]) > Some(0.0));

    // Group commit made the logged outcomes durable: the unknown commands waited for it (the
    // read-only SYS.INFO did not; their events went out with any flush).
    if server.database_url.is_none() {
        let flushes = after.value("portcullis_group_commit_flushes_total", &[]);
        let waiters = after.value("portcullis_group_commit_waiters_total", &[]);
        assert!(flushes >= 1.0 && waiters >= 1.0, "{flushes} {waiters}");
        assert!(after.value("portcullis_group_commit_max_batch", &[]) >= 1.0);
    }

    // The log head is read at scrape time: it equals what SYS.INFO reports (which reads the
    // head before its own event is appended).
    let first = log_head_seq(&mut c).await;
    let scraped = scrape(&server)
        .await
        .get("portcullis_log_head_seq", &[])
        .unwrap();
    let second = log_head_seq(&mut c).await;
    assert_eq!(scraped, second);
    assert_eq!(
        second,
        first + 1.0,
        "nothing but SYS.INFO was logged between"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tcp_connection_gauge_follows_open_connections() {
    let server = Server::start();
    let open = |e: &Exposition| e.value("portcullis_tcp_connections", &[]);
    assert_eq!(open(&scrape(&server).await), 0.0);
    let mut a = server.client().await;
    let mut b = server.client().await;
    // A round trip on each, so both have been accepted.
    a.call("SYS.PING", json!({})).await.unwrap();
    b.call("SYS.PING", json!({})).await.unwrap();
    assert_eq!(open(&scrape(&server).await), 2.0);
    drop(a);
    drop(b);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = open(&scrape(&server).await);
        if now == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still {now} open");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_refusals_are_counted_by_class() {
    let server = Server::start_config("[rate_limits]\ncredential = \"2/min\"\n", &[]);
    let mut c = server.client().await;
    let mut refused = 0;
    for _ in 0..4 {
        let r = c
            .call("AUTH.REFRESH", json!({"refresh_token": "not-a-token"}))
            .await
            .unwrap();
        assert!(!r.ok);
        if r.error_code() == Some(portcullis_protocol::ErrorCode::RateLimited) {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "a burst of 2, then refusals");
    let m = scrape(&server).await;
    assert_eq!(
        m.get("portcullis_rate_limited_total", &[("class", "credential")]),
        Some(2.0)
    );
    assert_eq!(
        m.get("portcullis_rate_limited_total", &[("class", "cheap")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            COMMANDS,
            &[("command", "AUTH.REFRESH"), ("outcome", "RATE_LIMITED")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_token_protects_the_endpoint() {
    let server = Server::start_config("metrics_token = \"scrape-me-7f3a\"\n", &[]);
    let r = get_metrics(&server, None).await;
    assert_eq!(r.status, 401);
    assert!(!String::from_utf8_lossy(&r.body).contains("portcullis_"));
    assert_eq!(
        get_metrics(&server, Some("scrape-me-7f3")).await.status,
        401
    );
    assert_eq!(
        get_metrics(&server, Some(server.operator_token().expose()))
            .await
            .status,
        401,
        "the operator token is not the metrics token"
    );
    let m = scrape_with(&server, Some("scrape-me-7f3a")).await;
    assert!(m.type_of("portcullis_log_head_seq").is_some());
    // Without a token configured, the endpoint is open.
    let open = Server::start();
    assert_eq!(get_metrics(&open, None).await.status, 200);
}

fn events(out: &str) -> Vec<Event> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Runs the CLI with a pseudo-terminal as stdout (through `script`), returning what it wrote.
fn run_on_tty(args: &[&str], envs: &[(&str, &str)]) -> String {
    let quoted: Vec<String> = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect();
    let out = Command::new("script")
        .args(["-qefc", &quoted.join(" "), "/dev/null"])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm-256color")
        .envs(envs.iter().copied())
        .output()
        .expect("run script(1)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_tail_filters_by_command_outcome_and_actor() {
    let mut server = Server::start();
    let mut c = server.client().await;
    for _ in 0..3 {
        c.call_ok::<Value>("SYS.INFO", json!({})).await.unwrap();
    }
    for _ in 0..2 {
        assert!(!c.call("NO.SUCH", json!({})).await.unwrap().ok);
    }
    let mut op = server.operator_client().await;
    op.call_ok::<Value>("LOG.VERIFY", json!({})).await.unwrap();

    // Online: the server streams everything; the CLI keeps what matches.
    let addr = server.tcp.to_string();
    let token = server.operator_token();
    let online = |filter: &[&str]| {
        let mut args = vec![
            "log",
            "tail",
            "--addr",
            &addr,
            "--token",
            token.expose(),
            "--from",
            "1",
            "--json",
        ];
        args.extend_from_slice(filter);
        let (code, out, err) = server.cli(&args);
        assert_eq!(code, 0, "{err}");
        events(&out)
    };
    let infos = online(&["--command", "SYS.INFO"]);
    assert_eq!(infos.len(), 3, "{infos:?}");
    assert!(infos
        .iter()
        .all(|e| e.command.as_deref() == Some("SYS.INFO")));
    let by_operator = online(&["--actor", "operator"]);
    assert!(by_operator
        .iter()
        .any(|e| e.command.as_deref() == Some("LOG.VERIFY")));
    assert!(by_operator
        .iter()
        .all(|e| e.actor.to_string() == "operator"));
    drop((c, op));
    assert!(server.stop().success());

    // Offline, on the stopped server's directory.
    let dir = server.data_dir.to_string_lossy().into_owned();
    let offline = |filter: &[&str]| {
        let mut args = vec!["log", "tail", "--data-dir", &dir, "--json"];
        args.extend_from_slice(filter);
        let (code, out, err) = server.cli(&args);
        assert_eq!(code, 0, "{err}");
        events(&out)
    };
    let all = offline(&[]);
    let infos = offline(&["--command", "SYS.INFO"]);
    assert_eq!(infos.len(), 3, "{infos:?}");
    assert!(infos
        .iter()
        .all(|e| e.command.as_deref() == Some("SYS.INFO") && e.outcome == "ok"));
    let unknown = offline(&["--outcome", "UNKNOWN_COMMAND"]);
    assert_eq!(unknown.len(), 2, "{unknown:?}");
    assert!(unknown
        .iter()
        .all(|e| e.outcome == "UNKNOWN_COMMAND" && e.command.as_deref() == Some("NO.SUCH")));
    assert!(offline(&["--command", "SYS.INFO", "--outcome", "UNKNOWN_COMMAND"]).is_empty());
    assert_eq!(
        offline(&["--actor", "anonymous"]).len(),
        all.iter()
            .filter(|e| e.actor.to_string() == "anonymous")
            .count()
    );

    // Readable lines: who, what, outcome and from where, with no escapes when not a terminal,
    // even when colour is otherwise forced.
    let mut cmd = Command::new(BIN);
    cmd.args(["log", "tail", "--data-dir", &dir, "--command", "SYS.INFO"])
        .envs(server.cli_env())
        .env("CLICOLOR_FORCE", "1")
        .env("TERM", "xterm-256color")
        .env_remove("NO_COLOR");
    let out = cmd.output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains('\x1b'),
        "escape codes in piped output: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    for l in &lines {
        for part in ["SYS.INFO", "ok", "anonymous", "127.0.0.1:", "tcp"] {
            assert!(l.contains(part), "{part} missing from {l:?}");
        }
    }

    // On a terminal the same lines are coloured, unless NO_COLOR is set.
    let args = ["log", "tail", "--data-dir", &dir, "--command", "SYS.INFO"];
    let db = server.cli_env();
    let db: Vec<(&str, &str)> = db.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let coloured = run_on_tty(&args, &db);
    assert!(
        coloured.contains("\x1b["),
        "no colour on a terminal: {coloured:?}"
    );
    assert_eq!(coloured.matches("SYS.INFO").count(), 3);
    let plain = run_on_tty(&args, &[db.as_slice(), &[("NO_COLOR", "1")]].concat());
    assert!(
        !plain.contains('\x1b'),
        "colour despite NO_COLOR: {plain:?}"
    );
    assert_eq!(plain.matches("SYS.INFO").count(), 3);
    // --json never colours, even on a terminal.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let json_out = run_on_tty(&json_args, &db);
    assert!(!json_out.contains('\x1b'), "{json_out:?}");
}
