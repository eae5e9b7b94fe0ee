//! `portcullis bench` through the real binary: every workload runs briefly against the bench's
//! own server and reports what it measured, the anchors run in the same run (a real
//! `redis-server`, raw argon2, raw group commit), and a server started separately is loaded over
//! its address, and the bench's own server runs on PostgreSQL as one or several nodes against
//! `pgbench` measured in the same run. Short runs: these check that the measurements are made,
//! not how fast they are.

use crate::harness::{run_cli, run_cli_env, Server};
use serde_json::Value;

/// Runs `portcullis bench ARGS` briefly with a JSON report and returns the report.
fn bench(args: &[&str]) -> Value {
    bench_for(args, "300ms")
}

/// `bench` measuring for `duration`: long enough for at least one whole operation of the
/// workload (and its anchor) to fall inside the window even on a loaded machine.
fn bench_for(args: &[&str], duration: &str) -> Value {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--duration",
        duration,
        "--warmup",
        "0s",
        "--connections",
        "2",
        "--json",
        "--quiet",
    ]);
    let (code, out, err) = run_cli(&all);
    assert_eq!(code, 0, "bench {args:?} failed: {err}\n{out}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("bench {args:?}: {e}: {out}"))
}

#[track_caller]
fn assert_measured(r: &Value, workload: &str) {
    assert_eq!(r["workload"], workload, "{r}");
    assert!(r["requests"].as_u64().unwrap() > 0, "nothing measured: {r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    let lat = &r["latency_us"];
    assert!(lat["p50_us"].as_u64().unwrap() > 0, "{r}");
    assert!(lat["p50_us"].as_u64() <= lat["p99_us"].as_u64(), "{r}");
    assert!(lat["p99_us"].as_u64() <= lat["max_us"].as_u64(), "{r}");
    assert!(r["rss_kib"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn every_request_workload_runs_against_its_own_server() {
    for w in ["ping", "me", "consume", "refresh", "login"] {
        // One argon2 sign-in can take most of 300 ms on a busy machine (see below).
        let duration = if w == "login" { "2s" } else { "300ms" };
        let r = bench_for(&[w, "--anchor", "none"], duration);
        assert_measured(&r, w);
        assert_eq!(r["server"], "in-process", "{r}");
        assert!(r["anchor"].is_null(), "{r}");
    }
    let r = bench(&["consume", "--pipeline", "4", "--anchor", "none"]);
    assert_measured(&r, "consume");
    assert_eq!(r["pipeline"], 4);

    let r = bench(&["mixed", "--anchor", "none"]);
    assert_measured(&r, "mixed");
    let probe = &r["probe"];
    assert_eq!(probe["command"], "SYS.PING", "{r}");
    assert!(probe["requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(probe["errors"], 0, "{r}");
}

#[test]
fn log_workloads_build_the_log_then_verify_and_replay_it() {
    for w in ["log-verify", "log-replay"] {
        let r = bench(&[w, "--events", "500"]);
        assert_eq!(r["workload"], w);
        assert_eq!(r["errors"], 0, "{r}");
        let log = &r["log"];
        assert!(log["events"].as_u64().unwrap() >= 500, "{r}");
        assert!(log["runs"].as_u64().unwrap() >= 1, "{r}");
        assert!(r["throughput"].as_f64().unwrap() > 0.0, "{r}");
    }
}

#[test]
fn anchors_are_measured_in_the_same_run() {
    // An argon2 hash can take most of 300 ms on a busy machine, and one that ends after the
    // window is not counted: give the login workload and its anchor a longer window.
    for (w, anchor, duration) in [
        ("ping", "redis", "300ms"),
        ("consume", "sled", "300ms"),
        ("login", "argon2", "2s"),
    ] {
        let r = bench_for(&[w], duration);
        assert_measured(&r, w);
        let a = &r["anchor"];
        assert_eq!(a["name"], anchor, "default anchor of {w}: {r}");
        assert_eq!(a["errors"], 0, "{r}");
        let (ours, theirs) = (
            r["throughput"].as_f64().unwrap(),
            a["throughput"].as_f64().unwrap(),
        );
        assert!(theirs > 0.0, "{r}");
        let ratio = a["ratio"].as_f64().unwrap();
        assert!(
            (ratio - ours / theirs).abs() <= 0.001 + ours / theirs * 0.01,
            "ratio {ratio} is not {ours} / {theirs}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_is_loaded_over_its_address() {
    let server = Server::start_config("[rate_limits]\nenabled = false\n", &[]);
    let addr = server.tcp.to_string();
    let pid = server.pid().to_string();
    let r = bench(&[
        "ping",
        "--addr",
        &addr,
        "--server-pid",
        &pid,
        "--anchor",
        "none",
    ]);
    assert_measured(&r, "ping");
    assert_eq!(r["server"], "external", "{r}");
    assert_eq!(r["addr"], addr.as_str());
    assert!(
        r["cpu"]["server_cores"].as_f64().is_some_and(|c| c > 0.0),
        "{r}"
    );

    // Without `--server-pid` the server's CPU and memory are unknown, and said so.
    let r = bench(&["me", "--addr", &addr, "--anchor", "none"]);
    assert_eq!(r["workload"], "me");
    assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
    assert!(r["rss_kib"].is_null(), "{r}");

    let token = server.operator_token();
    let r = bench(&[
        "log-verify",
        "--addr",
        &addr,
        "--token",
        token.expose(),
        "--events",
        "300",
    ]);
    assert!(r["log"]["events"].as_u64().unwrap() >= 300, "{r}");
    assert_eq!(r["errors"], 0, "{r}");
}

#[test]
fn impossible_runs_are_refused_before_they_start() {
    let (code, _, err) = run_cli(&["bench", "refresh", "--pipeline", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("pipeline"), "{err}");
    let (code, _, err) = run_cli(&["bench", "nope"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run_cli(&["bench", "ping", "--connections", "0"]);
    assert_eq!(code, 2, "{err}");
}

/// Tables and bench schemas left in database `db` of the test cluster.
fn leftovers(db: &str) -> String {
    portcullis_testdb::cluster().psql(
        db,
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    ) + "/"
        + &portcullis_testdb::cluster().psql(
            db,
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pcbench%'",
        )
}

#[test]
fn consume_runs_on_three_postgresql_nodes_against_pgbench_and_leaves_the_database_empty() {
    let url = portcullis_testdb::cluster().fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    // The URL through the environment, as an operator keeps a password off the command line.
    let (code, out, err) = run_cli_env(
        &[
            "bench",
            "consume",
            "--nodes",
            "3",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--connections",
            "3",
            "--json",
            "--quiet",
        ],
        &[("PORTCULLIS_BENCH_DATABASE_URL", url.as_str())],
    );
    assert_eq!(code, 0, "bench failed: {err}\n{out}");
    let r: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_measured(&r, "consume");
    assert_eq!(r["store"], "postgresql", "{r}");
    assert_eq!(r["nodes"], 3, "{r}");
    let addrs: std::collections::BTreeSet<&str> = r["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(addrs.len(), 3, "three nodes, three addresses: {r}");
    let a = &r["anchor"];
    assert_eq!(
        a["name"], "pgbench",
        "the default anchor on PostgreSQL: {r}"
    );
    assert_eq!(a["errors"], 0, "{r}");
    let (ours, theirs) = (
        r["throughput"].as_f64().unwrap(),
        a["throughput"].as_f64().unwrap(),
    );
    assert!(theirs > 0.0, "{r}");
    let ratio = a["ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.0 && (ratio - ours / theirs).abs() <= 0.001 + ours / theirs * 0.01,
        "ratio {ratio} is not {ours} / {theirs}"
    );
    assert!(a["latency_us"]["p50_us"].as_u64().unwrap() > 0, "{r}");
    assert!(a["what"].as_str().unwrap().contains("simple-update"), "{r}");
    assert_eq!(leftovers(&db), "0/0", "the run must drop what it created");
}

#[test]
fn a_database_that_is_not_empty_is_refused_and_left_alone() {
    let url = portcullis_testdb::cluster().fresh_database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let cluster = portcullis_testdb::cluster();
    cluster.psql(
        &db,
        "CREATE TABLE precious (v text); INSERT INTO precious VALUES ('kept')",
    );
    let (code, _, err) = run_cli(&[
        "bench",
        "me",
        "--database-url",
        &url,
        "--duration",
        "300ms",
        "--anchor",
        "none",
        "--quiet",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not empty") && err.contains("precious"),
        "{err}"
    );
    assert_eq!(cluster.psql(&db, "SELECT v FROM precious"), "kept");
    assert_eq!(leftovers(&db), "1/0");

    // A password in the URL is never repeated, whatever fails.
    let (code, out, err) = run_cli(&[
        "bench",
        "me",
        "--database-url",
        "postgres://bench:hunter2-secret@127.0.0.1:1/nowhere",
        "--quiet",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        !err.contains("hunter2") && !out.contains("hunter2"),
        "{err}{out}"
    );

    // Several nodes need the shared database; pgbench needs a database to run on.
    let (code, _, err) = run_cli(&["bench", "consume", "--nodes", "3", "--quiet"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--database-url"), "{err}");
    let (code, _, err) = run_cli(&["bench", "consume", "--anchor", "pgbench", "--quiet"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--database-url"), "{err}");
}
