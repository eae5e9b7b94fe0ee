//! Recording latencies (HdrHistogram, microseconds), counting errors, reporting per interval,
//! and reading the process facts (RSS, CPU time) that go with a measurement.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Highest latency the histograms track (one hour, in microseconds); longer ones are clamped.
const MAX_US: u64 = 3_600_000_000;

/// A fresh latency histogram (1 µs to 1 h, 3 significant digits).
#[allow(clippy::expect_used)]
pub fn new_hist() -> Histogram<u64> {
    // Constant bounds that `new_with_bounds` always accepts.
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// When responses count: those completing in `[start, end)`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// End of the warm-up.
    pub start: Instant,
    /// End of the measurement.
    pub end: Instant,
}

impl Window {
    /// A window that opens after `warmup` and lasts `duration`.
    pub fn new(warmup: Duration, duration: Duration) -> Window {
        let start = Instant::now() + warmup;
        Window {
            start,
            end: start + duration,
        }
    }

    /// Whether an answer at `t` counts.
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.start && t < self.end
    }

    /// Whether the measurement is over.
    pub fn over(&self) -> bool {
        Instant::now() >= self.end
    }
}

struct Inner {
    hist: Histogram<u64>,
    codes: BTreeMap<String, u64>,
}

/// The counters of one worker (one connection, thread or task).
pub struct Shard {
    ok: AtomicU64,
    errors: AtomicU64,
    inner: Mutex<Inner>,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            inner: Mutex::new(Inner {
                hist: new_hist(),
                codes: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a batch of successful latencies (µs) and failures.
    pub fn commit(&self, latencies_us: &[u64], errors: &[String]) {
        if latencies_us.is_empty() && errors.is_empty() {
            return;
        }
        let mut g = self.lock();
        for &l in latencies_us {
            g.hist.saturating_record(l.clamp(1, MAX_US));
        }
        for e in errors {
            *g.codes.entry(e.clone()).or_insert(0) += 1;
        }
        drop(g);
        self.ok
            .fetch_add(latencies_us.len() as u64, Ordering::Relaxed);
        self.errors
            .fetch_add(errors.len() as u64, Ordering::Relaxed);
    }

    /// Records one failure.
    pub fn error(&self, code: &str) {
        self.commit(&[], &[code.to_owned()]);
    }
}

/// One shard per worker.
#[derive(Clone, Default)]
pub struct Recorder {
    shards: Arc<Mutex<Vec<Arc<Shard>>>>,
}

impl Recorder {
    /// A new shard for a worker.
    pub fn shard(&self) -> Arc<Shard> {
        let s = Arc::new(Shard::new());
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::clone(&s));
        s
    }

    fn all(&self) -> Vec<Arc<Shard>> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Successful answers and failures so far.
    pub fn counts(&self) -> (u64, u64) {
        self.all().iter().fold((0, 0), |(o, e), s| {
            (
                o + s.ok.load(Ordering::Relaxed),
                e + s.errors.load(Ordering::Relaxed),
            )
        })
    }

    /// Takes the latencies recorded since the last drain, and the failure codes.
    pub fn take(&self) -> (Histogram<u64>, BTreeMap<String, u64>) {
        self.drain()
    }

    fn drain(&self) -> (Histogram<u64>, BTreeMap<String, u64>) {
        let mut hist = new_hist();
        let mut codes = BTreeMap::new();
        for s in self.all() {
            let mut g = s.lock();
            let _ = hist.add(&g.hist);
            g.hist.reset();
            for (k, v) in std::mem::take(&mut g.codes) {
                *codes.entry(k).or_insert(0) += v;
            }
        }
        (hist, codes)
    }
}

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Summarises a histogram.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// One reporting interval of a measurement.
#[derive(Debug, Clone, Serialize)]
pub struct Interval {
    /// Seconds since the measurement started, at the end of this interval.
    pub t_s: f64,
    /// Successful answers in this interval.
    pub ok: u64,
    /// Failures in this interval.
    pub errors: u64,
    /// Successful answers per second in this interval.
    pub throughput: f64,
    /// 99th percentile latency in this interval, µs.
    pub p99_us: u64,
    /// Largest latency in this interval, µs.
    pub max_us: u64,
    /// Resident memory of the server process at the end of the interval, KiB.
    pub rss_kib: Option<u64>,
}

/// CPU used during a measurement, in cores (CPU seconds per wall second).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Cpu {
    /// The load generator's threads.
    pub client_cores: f64,
    /// The server (or the reference system) measured.
    pub server_cores: Option<f64>,
    /// Everything else on the machine (other processes): the noise the figure was taken in.
    pub other_cores: Option<f64>,
}

/// What a measurement found.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Successful answers.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
    /// Failures by code.
    pub codes: BTreeMap<String, u64>,
    /// Every successful latency.
    pub hist: Histogram<u64>,
    /// Measured seconds.
    pub secs: f64,
    /// Per-interval figures.
    pub intervals: Vec<Interval>,
    /// CPU used.
    pub cpu: Option<Cpu>,
}

impl Measured {
    /// Successful answers per second.
    pub fn throughput(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }
}

/// Where the server side runs, for RSS and CPU figures.
#[derive(Debug, Clone, Copy)]
pub enum ServerProc {
    /// In this process: every thread that is not the load generator's.
    InProcess,
    /// Another local process.
    Pid(u32),
    /// Unknown (a remote `--addr` without `--server-pid`).
    Unknown,
}

impl ServerProc {
    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        match self {
            ServerProc::InProcess => rss_kib("self"),
            ServerProc::Pid(p) => rss_kib(&p.to_string()),
            ServerProc::Unknown => None,
        }
    }
}

/// How to show progress and intervals.
pub struct Display {
    /// Label of the progress bar.
    pub label: String,
    /// Draw a progress bar (on a terminal only).
    pub progress: bool,
    /// Reporting interval.
    pub interval: Duration,
    /// Print one line per interval.
    pub print_intervals: bool,
}

/// Thread-name prefix of the load generator's runtime; CPU of all other threads of this process
/// is the in-process server's.
pub const CLIENT_THREAD: &str = "pcb-client";

/// Linux clock ticks per second (`USER_HZ`, 100 on every Linux architecture Rust targets).
const TICKS_PER_S: f64 = 100.0;

fn ticks_of_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    // Fields after the comm start at field 3 (state); utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (client ticks, all other ticks) of this process. The client's threads live for the whole
/// run, so summing them is exact; everything else comes from the process total, which keeps
/// the time of threads that have already exited (argon2 threads, Tokio's blocking pool).
fn self_ticks() -> (u64, u64) {
    let mut client = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for entry in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some((comm, t)) = ticks_of_stat(&stat) {
                if comm.starts_with(CLIENT_THREAD) {
                    client += t;
                }
            }
        }
    }
    let total = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks_of_stat(&s))
        .map_or(client, |(_, t)| t);
    (client, total.saturating_sub(client))
}

fn pid_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_of_stat(&stat).map(|(_, t)| t)
}

/// Busy ticks of the whole machine (`/proc/stat`: user, nice, system, irq, softirq, steal).
fn machine_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7).unwrap_or(&0))
}

#[derive(Clone, Copy)]
struct CpuSample {
    at: Instant,
    client: u64,
    server: Option<u64>,
    /// This process plus the external server, if any.
    ours: Option<u64>,
    machine: Option<u64>,
}

fn cpu_sample(server: ServerProc) -> CpuSample {
    let (client, other) = self_ticks();
    let (server, ours) = match server {
        ServerProc::InProcess => (Some(other), Some(client + other)),
        ServerProc::Pid(p) => {
            let t = pid_ticks(p);
            (t, t.map(|t| t + client + other))
        }
        ServerProc::Unknown => (None, None),
    };
    CpuSample {
        at: Instant::now(),
        client,
        server,
        ours,
        machine: machine_ticks(),
    }
}

fn cpu_between(a: CpuSample, b: CpuSample) -> Option<Cpu> {
    let secs = b.at.duration_since(a.at).as_secs_f64();
    if secs <= 0.0 {
        return None;
    }
    let cores = |d: u64| ((d as f64 / TICKS_PER_S / secs) * 100.0).round() / 100.0;
    let delta = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(y.saturating_sub(x)),
        _ => None,
    };
    let ours = delta(a.ours, b.ours);
    let machine = delta(a.machine, b.machine);
    Some(Cpu {
        client_cores: cores(b.client.saturating_sub(a.client)),
        server_cores: delta(a.server, b.server).map(cores),
        other_cores: match (machine, ours) {
            (Some(m), Some(o)) => Some(cores(m.saturating_sub(o))),
            _ => None,
        },
    })
}

/// `VmRSS` of `/proc/<pid>/status`, KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn progress_bar(d: &Display, window: &Window) -> ProgressBar {
    if !d.progress {
        return ProgressBar::hidden();
    }
    let total = window.end.saturating_duration_since(Instant::now());
    let pb = ProgressBar::new(total.as_millis() as u64);
    let style = ProgressStyle::with_template("{prefix:>14} [{bar:30}] {elapsed:>4} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    pb.set_style(style);
    pb.set_prefix(d.label.clone());
    pb
}

/// Reports while workers run (progress bar, intervals), then waits for them and returns the
/// figures. Workers stop by themselves at `window.end`.
pub async fn measure(
    recorder: &Recorder,
    window: Window,
    display: &Display,
    server: ServerProc,
    workers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<Measured> {
    let pb = progress_bar(display, &window);
    let origin = Instant::now();
    let total_ms = window.end.saturating_duration_since(origin).as_millis() as u64;
    let tick = Duration::from_millis(200);
    // Warm-up: discard what is recorded (workers record nothing before `start` anyway).
    while Instant::now() < window.start {
        tokio::time::sleep(tick.min(window.start.saturating_duration_since(Instant::now()))).await;
        pb.set_position(origin.elapsed().as_millis() as u64);
        pb.set_message("warming up");
    }
    let _ = recorder.drain();
    let cpu0 = cpu_sample(server);
    let mut total = new_hist();
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    let mut intervals = Vec::new();
    let mut next_interval = window.start + display.interval;
    let mut last_counts = recorder.counts();
    let mut last_tick = Instant::now();
    let mut interval_base = last_counts;
    loop {
        let now = Instant::now();
        let stop = now >= window.end;
        let wake = next_interval.min(window.end).min(now + tick);
        if !stop {
            tokio::time::sleep(wake.saturating_duration_since(now)).await;
        }
        let now = Instant::now();
        let counts = recorder.counts();
        let dt = now.duration_since(last_tick).as_secs_f64();
        if dt > 0.0 {
            let rate = (counts.0 - last_counts.0) as f64 / dt;
            pb.set_message(format!("{:>10} ok/s  errors {}", fmt_count(rate), counts.1));
        }
        pb.set_position((origin.elapsed().as_millis() as u64).min(total_ms));
        last_counts = counts;
        last_tick = now;
        let at_end = now >= window.end;
        if now >= next_interval || at_end {
            let (h, c) = recorder.drain();
            let t_s = now
                .min(window.end)
                .duration_since(window.start)
                .as_secs_f64();
            let span = (t_s - intervals.last().map_or(0.0, |i: &Interval| i.t_s)).max(1e-9);
            let ok = counts.0 - interval_base.0;
            let iv = Interval {
                t_s: (t_s * 1000.0).round() / 1000.0,
                ok,
                errors: counts.1 - interval_base.1,
                throughput: (ok as f64 / span).round(),
                p99_us: if h.is_empty() {
                    0
                } else {
                    h.value_at_quantile(0.99)
                },
                max_us: h.max(),
                rss_kib: server.rss_kib(),
            };
            interval_base = counts;
            if display.print_intervals && span > 0.05 {
                // On stderr, bar or no bar (a hidden bar would swallow `println`), so `--json`
                // output on stdout stays clean.
                let line = format!(
                    "[{:>7.1}s] {:>10} ok/s  p99 {:>9}  max {:>9}  errors {:>5}  rss {}",
                    iv.t_s,
                    fmt_count(iv.throughput),
                    fmt_ms(iv.p99_us),
                    fmt_ms(iv.max_us),
                    iv.errors,
                    iv.rss_kib
                        .map_or("-".to_owned(), |k| format!("{} KiB", fmt_count(k as f64)))
                );
                pb.suspend(|| eprintln!("{line}"));
            }
            let _ = total.add(&h);
            for (k, v) in c {
                *codes.entry(k).or_insert(0) += v;
            }
            if span > 0.05 || intervals.is_empty() {
                intervals.push(iv);
            }
            next_interval += display.interval;
        }
        if at_end {
            break;
        }
    }
    let cpu1 = cpu_sample(server);
    pb.finish_and_clear();
    let secs = window.end.duration_since(window.start).as_secs_f64();
    let mut first_err = None;
    for w in workers {
        match w.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(anyhow::anyhow!("a worker failed: {e}"));
            }
        }
    }
    // Late answers completed before `end` but committed after the last drain.
    let (h, c) = recorder.drain();
    let _ = total.add(&h);
    for (k, v) in c {
        *codes.entry(k).or_insert(0) += v;
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    let ok = total.len();
    let errors = codes.values().sum();
    Ok(Measured {
        ok,
        errors,
        codes,
        hist: total,
        secs,
        intervals,
        cpu: cpu_between(cpu0, cpu1),
    })
}

/// `12,345` style.
pub fn fmt_count(x: f64) -> String {
    let n = x.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds as milliseconds for people.
pub fn fmt_ms(us: u64) -> String {
    if us >= 100_000 {
        format!("{:.0} ms", us as f64 / 1000.0)
    } else {
        format!("{:.3} ms", us as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_spaces_in_the_name() {
        let stat = "123 (pcb-client w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0";
        assert_eq!(ticks_of_stat(stat), Some(("pcb-client w".to_owned(), 300)));
    }

    #[test]
    fn counts_print_with_separators() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(12.0), "12");
        assert_eq!(fmt_ms(1234), "1.234 ms");
    }
}
