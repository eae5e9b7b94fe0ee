//! Prometheus metrics of one app, served by the HTTP gateway at `GET /metrics`.
//!
//! Every [`App`] owns its own recorder rather than a process-wide one, so several apps in one
//! process (tests, benchmarks) keep separate counts. Metrics of the request path (commands,
//! TCP connections) are recorded as they happen through the `metrics` facade with this
//! recorder as the local recorder. Values that other parts of the server already count (the
//! event log head, group commit, the mail queue, rate-limit refusals) are read when the
//! endpoint is scraped and written after the recorder's output, so they cost nothing between
//! scrapes.
//!
//! Label values are bounded: `command` is a registered command name, `unknown` for a name the
//! registry does not know, or `-` for a frame that is not a request; `outcome` is `ok` or an
//! error code; `class` is a rate class.

use crate::base::config::Config;
use crate::infra::registry::Registry;
use crate::App;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Commands handled, by command and outcome (counter).
pub const COMMANDS_TOTAL: &str = "portcullis_commands_total";
/// Time from reading a request to its answer being ready, by command (histogram).
pub const COMMAND_DURATION: &str = "portcullis_command_duration_seconds";
/// Open TCP connections (gauge).
pub const TCP_CONNECTIONS: &str = "portcullis_tcp_connections";
/// TCP connections refused at a connection cap, total or per address (counter).
pub const TCP_REFUSED: &str = "portcullis_tcp_connections_refused_total";

/// Upper bounds of the command-duration buckets, seconds.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets between scrapes.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The recorder of one app.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    tcp_open: Gauge,
    tcp_refused: Counter,
    /// Handles already registered, so the request path does not look them up (and allocate
    /// their keys) on every command. Keys are `&'static str`s from the registry and the closed
    /// error set, so the maps stay bounded.
    counters: RwLock<HashMap<(&'static str, &'static str), Counter>>,
    durations: RwLock<HashMap<&'static str, Histogram>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh recorder with every metric described.
    pub fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = match builder
            .set_buckets_for_metric(Matcher::Full(COMMAND_DURATION.into()), DURATION_BUCKETS)
        {
            Ok(b) => b,
            // Only an empty bucket list is refused; fall back to a summary.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let (tcp_open, tcp_refused) = metrics::with_local_recorder(&recorder, || {
            describe_counter!(
                COMMANDS_TOTAL,
                "Commands handled, by command and outcome (ok or the error code)."
            );
            describe_histogram!(
                COMMAND_DURATION,
                Unit::Seconds,
                "Time from reading a request to its answer being ready, by command."
            );
            describe_gauge!(TCP_CONNECTIONS, "Open TCP connections.");
            describe_counter!(
                TCP_REFUSED,
                "TCP connections refused at a connection cap (total or per client address)."
            );
            let open = gauge!(TCP_CONNECTIONS);
            open.set(0.0);
            let refused = counter!(TCP_REFUSED);
            refused.absolute(0);
            (open, refused)
        });
        Metrics {
            recorder,
            handle,
            tcp_open,
            tcp_refused,
            counters: RwLock::default(),
            durations: RwLock::default(),
        }
    }

    /// Records one handled command. `command` is a label from [`command_label`]; `outcome` is
    /// `ok` or an error code.
    pub fn command(&self, command: &'static str, outcome: &'static str, took: Duration) {
        self.with_handle(
            &self.counters,
            (command, outcome),
            || counter!(COMMANDS_TOTAL, "command" => command, "outcome" => outcome),
            |c| c.increment(1),
        );
        let secs = took.as_secs_f64();
        self.with_handle(
            &self.durations,
            command,
            || histogram!(COMMAND_DURATION, "command" => command),
            |h| h.record(secs),
        );
    }

    /// Applies `f` to the handle cached under `key`, registering it with this app's recorder
    /// (`register`) the first time.
    fn with_handle<K: Eq + Hash, H>(
        &self,
        cache: &RwLock<HashMap<K, H>>,
        key: K,
        register: impl FnOnce() -> H,
        f: impl FnOnce(&H),
    ) {
        if let Some(h) = cache.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
            f(h);
            return;
        }
        let h = metrics::with_local_recorder(&self.recorder, register);
        f(&h);
        cache
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h);
    }

    /// Counts an open TCP connection until the returned guard is dropped.
    pub fn tcp_connection(&self) -> OpenConnection {
        self.tcp_open.increment(1.0);
        OpenConnection {
            gauge: self.tcp_open.clone(),
        }
    }

    /// Counts a TCP connection refused at the cap.
    pub fn tcp_refused(&self) {
        self.tcp_refused.increment(1);
    }

    /// Folds histogram samples into their buckets (bounded memory between scrapes).
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// The Prometheus text exposition of `app`: the recorder's metrics, then the values read
    /// now from the log, the store, the mailer and the limiters.
    pub fn render(&self, app: &App) -> String {
        let mut out = self.handle.render();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        family(
            &mut out,
            "portcullis_log_head_seq",
            "gauge",
            "Sequence number of the newest event in the log.",
            &[single(app.log.head_seq())],
        );
        if let Some(s) = app.store.commit_stats() {
            let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
            family(
                &mut out,
                "portcullis_group_commit_flushes_total",
                "counter",
                "Disk flushes made by the group commit.",
                &[single(load(&s.flushes))],
            );
            family(
                &mut out,
                "portcullis_group_commit_waiters_total",
                "counter",
                "Durability waiters answered by the group commit (sum of batch sizes).",
                &[single(load(&s.waiters))],
            );
            family(
                &mut out,
                "portcullis_group_commit_max_batch",
                "gauge",
                "Largest number of waiters answered by one flush.",
                &[single(load(&s.max_batch))],
            );
            // Microseconds to seconds; f64 is exact for any realistic total.
            #[allow(clippy::cast_precision_loss)]
            let seconds = load(&s.flush_us) as f64 / 1e6;
            family(
                &mut out,
                "portcullis_group_commit_flush_seconds_total",
                "counter",
                "Time spent flushing, seconds.",
                &[single(seconds)],
            );
        }
        let mail = &app.mailer.stats;
        family(
            &mut out,
            "portcullis_mail_queue_depth",
            "gauge",
            "Mails queued or being delivered.",
            &[single(mail.depth.load(Ordering::Relaxed))],
        );
        family(
            &mut out,
            "portcullis_mail_sent_total",
            "counter",
            "Mails delivered.",
            &[single(mail.sent.load(Ordering::Relaxed))],
        );
        family(
            &mut out,
            "portcullis_mail_failed_total",
            "counter",
            "Mails given up on, after retries or because the queue was full.",
            &[single(mail.failed.load(Ordering::Relaxed))],
        );
        let refusals: Vec<(String, String)> = app
            .limits
            .refusals()
            .into_iter()
            .map(|(class, n)| (format!("class=\"{class}\""), n.to_string()))
            .collect();
        family(
            &mut out,
            "portcullis_rate_limited_total",
            "counter",
            "Requests refused RATE_LIMITED by a per-address limiter (class: its rate class) \
             or by a failure delay (class: failure_delay).",
            &refusals,
        );
        out
    }
}

/// Writes one metric family: HELP, TYPE and a sample per label set (`""` for none).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    out.push('\n');
}

/// One sample without labels.
fn single(value: impl std::fmt::Display) -> (String, String) {
    (String::new(), value.to_string())
}

/// Keeps the TCP connection gauge up while a connection is open.
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
    }
}

/// The `command` label of a request: its name when registered, `unknown` otherwise, `-` for a
/// frame that was not a request.
pub fn command_label(registry: &Registry, command: Option<&str>) -> &'static str {
    match command {
        None => "-",
        Some(c) => registry.get(c).map_or("unknown", |spec| spec.name),
    }
}

/// Whether a scrape presenting `bearer` may read the metrics: always when no `metrics_token`
/// is configured, otherwise only with that token (compared in constant time).
pub fn scrape_allowed(config: &Config, bearer: Option<&str>) -> bool {
    let Some(expected) = config
        .metrics_token
        .as_ref()
        .map(crate::base::config::SecretSetting::expose)
    else {
        return true;
    };
    let Some(presented) = bearer else {
        return false;
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(presented.as_bytes());
    bool::from(a.ct_eq(&b))
}

/// Folds histogram samples periodically until the app shuts down.
pub async fn run_upkeep(app: Arc<App>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = app.shutdown.cancelled() => return,
            _ = tick.tick() => app.metrics.upkeep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_counted_per_recorder() {
        let a = Metrics::new();
        let b = Metrics::new();
        a.command("SYS.INFO", "ok", Duration::from_millis(2));
        a.command("SYS.INFO", "ok", Duration::from_millis(3));
        a.command("unknown", "UNKNOWN_COMMAND", Duration::from_millis(1));
        let text = a.handle.render();
        assert!(
            text.contains(r#"portcullis_commands_total{command="SYS.INFO",outcome="ok"} 2"#),
            "{text}"
        );
        assert!(text.contains(
            r#"portcullis_command_duration_seconds_bucket{command="SYS.INFO",le="0.0025"} 1"#
        ));
        assert!(text.contains("# TYPE portcullis_command_duration_seconds histogram"));
        assert!(!b.handle.render().contains(COMMANDS_TOTAL), "separate apps");
    }

    #[test]
    fn the_connection_gauge_follows_its_guards() {
        let m = Metrics::new();
        let g1 = m.tcp_connection();
        let g2 = m.tcp_connection();
        assert!(m.handle.render().contains("portcullis_tcp_connections 2"));
        drop(g1);
        drop(g2);
        m.tcp_refused();
        let text = m.handle.render();
        assert!(text.contains("portcullis_tcp_connections 0"), "{text}");
        assert!(text.contains("portcullis_tcp_connections_refused_total 1"));
    }

    #[test]
    fn a_metrics_token_is_required_when_configured() {
        let mut c = Config::default();
        assert!(scrape_allowed(&c, None));
        c.metrics_token = Some("s3cret".into());
        assert!(!scrape_allowed(&c, None));
        assert!(!scrape_allowed(&c, Some("s3cre")));
        assert!(scrape_allowed(&c, Some("s3cret")));
    }
}
