//! Abuse limits: a rate limiter per client address for each rate class of the registry, and
//! capped progressive delays after repeated failures against one account.
//!
//! Limits are GCRA (governor) buckets: `N/s`, `N/min` or `N/h`, with a burst of `N`. A refused
//! request gets `RATE_LIMITED` with `retry_after_ms`. Failure delays grow 2 s, 4 s, 8 s … after
//! five consecutive failures, capped at 15 minutes, and reset on success: a delay, never a
//! lockout an attacker could use to deny service.
//!
//! A password attempt is *reserved* before its hash is computed ([`Limits::reserve_attempt`]):
//! the reservation counts as a failure in flight, and no attempt is let through that would
//! exceed the free failures if every attempt already in flight failed. However many requests
//! race, at most [`FREE_FAILURES`] passwords are checked against one address before its delay
//! starts. Email codes have a second, per-address cap on failed codes in a rolling hour
//! ([`Limits::reserve_code_attempt`]), reserved the same way.
//!
//! Both tables are bounded. When one is full, entries nobody is working on and whose delay is
//! over (and, for escalated delays, whose last failure is older than [`MAX_DELAY_S`]) are
//! forgotten; entries with a running delay, a reservation in flight or a recent escalation are
//! never dropped. If the table is still full, an attempt against a new key is refused
//! `RATE_LIMITED` rather than tracked without a limit.

use crate::base::caller::RateClass;
use crate::base::config::RateLimits;
use crate::base::error::CommandError;
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use portcullis_protocol::ErrorCode;
use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Consecutive failures allowed before delays start.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay, seconds.
pub const MAX_DELAY_S: i64 = 15 * 60;
/// Accounts tracked for failure delays before old entries are dropped.
const FAILURE_TABLE_LIMIT: usize = 100_000;
/// The window of the per-address cap on failed email codes, seconds.
pub const CODE_WINDOW_S: i64 = 3600;

/// Failures against one key (an address), and attempts in flight.
#[derive(Debug, Default, Clone)]
struct FailureEntry {
    /// Consecutive failures.
    failures: u32,
    /// No attempt before this (Unix seconds).
    next_at: i64,
    /// When the last failure was recorded (Unix seconds).
    last_failure_at: i64,
    /// Attempts reserved and not yet resolved.
    in_flight: u32,
}

impl FailureEntry {
    /// Whether forgetting this entry would weaken a limit: a delay runs, an attempt is in
    /// flight, or the key has escalated past its free failures recently.
    fn protected(&self, now: i64) -> bool {
        self.in_flight > 0
            || now < self.next_at
            || (self.failures >= FREE_FAILURES && now < self.last_failure_at + MAX_DELAY_S)
    }
}

/// Failed email codes of one address in the last [`CODE_WINDOW_S`], and attempts in flight.
#[derive(Debug, Default, Clone)]
struct CodeEntry {
    /// Times of the failures still in the window, oldest first.
    failures: std::collections::VecDeque<i64>,
    /// Attempts reserved and not yet resolved.
    in_flight: u32,
}

impl CodeEntry {
    /// Drops the failures that left the window; whether the entry still matters (a failure
    /// in the window or an attempt in flight).
    fn still_counts(&mut self, now: i64) -> bool {
        self.expire(now);
        self.in_flight > 0 || !self.failures.is_empty()
    }

    fn expire(&mut self, now: i64) {
        while self
            .failures
            .front()
            .is_some_and(|t| *t + CODE_WINDOW_S <= now)
        {
            self.failures.pop_front();
        }
    }
}

/// Parses `N/s`, `N/min` or `N/h` into a quota with a burst of `N`.
pub fn parse_quota(spec: &str) -> Result<Quota, String> {
    let bad = || format!("rate limit {spec:?}: expected N/s, N/min or N/h");
    let (n, unit) = spec.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let n = NonZeroU32::new(n).ok_or_else(bad)?;
    let period = match unit.trim() {
        "s" => Duration::from_secs(1),
        "min" => Duration::from_secs(60),
        "h" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    Quota::with_period(period / n.get())
        .map(|q| q.allow_burst(n))
        .ok_or_else(bad)
}

fn failure_delay(failures: u32) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    (1i64 << (failures - FREE_FAILURES + 1).min(20)).min(MAX_DELAY_S)
}

/// The limiters of a running server.
pub struct Limits {
    enabled: bool,
    per_class: HashMap<RateClass, DefaultKeyedRateLimiter<IpAddr>>,
    failures: Mutex<HashMap<String, FailureEntry>>,
    code_failures: Mutex<HashMap<String, CodeEntry>>,
    /// Failed email codes allowed per address in a rolling hour.
    code_cap: u32,
    clock: DefaultClock,
    /// Requests refused, per rate class (in [`REFUSAL_CLASSES`] order) and by failure delays.
    refused: [AtomicU64; REFUSAL_CLASSES.len() + 1],
}

/// The rate classes in the order [`Limits::refusals`] reports them.
const REFUSAL_CLASSES: [RateClass; 5] = [
    RateClass::Cheap,
    RateClass::Operator,
    RateClass::Account,
    RateClass::Credential,
    RateClass::Send,
];

/// The `class` under which [`Limits::refusals`] reports failure-delay refusals.
pub const FAILURE_DELAY_CLASS: &str = "failure_delay";

impl Limits {
    /// Builds the limiters from the configuration.
    pub fn new(cfg: &RateLimits) -> Result<Self, String> {
        if cfg.otp_failures_per_address_per_hour == 0 {
            return Err("rate_limits.otp_failures_per_address_per_hour must be at least 1".into());
        }
        let mut per_class = HashMap::new();
        for (class, spec) in [
            (RateClass::Cheap, &cfg.cheap),
            (RateClass::Operator, &cfg.operator),
            (RateClass::Account, &cfg.account),
            (RateClass::Credential, &cfg.credential),
            (RateClass::Send, &cfg.send),
        ] {
            per_class.insert(class, DefaultKeyedRateLimiter::keyed(parse_quota(spec)?));
        }
        Ok(Limits {
            enabled: cfg.enabled,
            per_class,
            failures: Mutex::new(HashMap::new()),
            code_failures: Mutex::new(HashMap::new()),
            code_cap: cfg.otp_failures_per_address_per_hour,
            clock: DefaultClock::default(),
            refused: Default::default(),
        })
    }

    /// Counts one request of `class` from `ip`; `RATE_LIMITED` when over the limit.
    pub fn check(&self, class: RateClass, ip: IpAddr) -> Result<(), CommandError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(limiter) = self.per_class.get(&class) else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            self.count_refusal(REFUSAL_CLASSES.iter().position(|c| *c == class));
            let wait = not_until.wait_time_from(self.clock.now());
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            CommandError::new(ErrorCode::RateLimited, "too many requests; slow down")
                .with_retry_after_ms(ms)
        })
    }

    /// Reserves an attempt against `key` (a password check), before the work is done: refused
    /// `RATE_LIMITED` while its failure delay runs, or when the attempts already in flight
    /// would, if they all failed, start a delay (so concurrent requests cannot all slip in
    /// before the first failure is recorded). The returned [`Attempt`] must be resolved with
    /// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped unresolved (an error, a
    /// cancelled request) it just releases the reservation.
    pub fn reserve_attempt(&self, key: &str, now: i64) -> Result<Attempt<'_>, CommandError> {
        if !self.enabled {
            // Switched off with the rate limits (benchmarks): nothing is counted.
            return Ok(Attempt {
                limits: self,
                key: None,
            });
        }
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= FAILURE_TABLE_LIMIT {
            map.retain(|_, e| e.protected(now));
            if map.len() >= FAILURE_TABLE_LIMIT {
                self.count_refusal(None);
                tracing::warn!("the failure-delay table is full; refusing attempts on new keys");
                return Err(Self::delayed(1));
            }
        }
        let entry = map.entry(key.to_owned()).or_default();
        {
            // Refused while the delay runs, or when the attempts in flight, all failing, would
            // start one (the first attempt after a delay is always let through).
            let wait = if now < entry.next_at {
                entry.next_at - now
            } else if entry.in_flight > 0 {
                failure_delay(entry.failures.saturating_add(entry.in_flight))
            } else {
                0
            };
            if wait > 0 {
                if entry.failures == 0 && entry.in_flight == 0 {
                    map.remove(key);
                }
                self.count_refusal(None);
                return Err(Self::delayed(wait));
            }
        }
        entry.in_flight += 1;
        Ok(Attempt {
            limits: self,
            key: Some(key.to_owned()),
        })
    }

    fn delayed(wait_s: i64) -> CommandError {
        let ms = u64::try_from(wait_s).unwrap_or(1).max(1) * 1000;
        CommandError::new(
            ErrorCode::RateLimited,
            "too many failed attempts; wait before trying again",
        )
        .with_retry_after_ms(ms)
    }

    /// Resolves a reservation of `key`: `Some(now)` records a failure (returns the
    /// consecutive count), `None` a success (clears the failures) or a release.
    fn resolve(&self, key: &str, outcome: Resolution) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get_mut(key) else {
            return 0;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        match outcome {
            Resolution::Failed(now) => {
                entry.failures = entry.failures.saturating_add(1);
                entry.next_at = now + failure_delay(entry.failures);
                entry.last_failure_at = now;
                entry.failures
            }
            Resolution::Succeeded => {
                entry.failures = 0;
                entry.next_at = 0;
                if entry.in_flight == 0 {
                    map.remove(key);
                }
                0
            }
            Resolution::Released => {
                let n = entry.failures;
                if n == 0 && entry.in_flight == 0 {
                    map.remove(key);
                }
                n
            }
        }
    }

    /// Reserves an attempt at an email code for the address `key`: refused
    /// `TOO_MANY_ATTEMPTS` (with `retry_after_ms`) when the failed codes of the last hour plus
    /// the attempts in flight reach `rate_limits.otp_failures_per_address_per_hour`. Resolve
    /// the returned [`CodeAttempt`]; only a failure counts against the cap.
    pub fn reserve_code_attempt(
        &self,
        key: &str,
        now: i64,
    ) -> Result<CodeAttempt<'_>, CommandError> {
        if !self.enabled {
            return Ok(CodeAttempt {
                limits: self,
                key: None,
            });
        }
        let mut map = self.code_failures.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(key) && map.len() >= FAILURE_TABLE_LIMIT {
            map.retain(|_, e| e.still_counts(now));
            if map.len() >= FAILURE_TABLE_LIMIT {
                self.count_refusal(None);
                tracing::warn!("the email-code failure table is full; refusing new addresses");
                return Err(Self::delayed(1));
            }
        }
        let entry = map.entry(key.to_owned()).or_default();
        entry.expire(now);
        let used = u32::try_from(entry.failures.len())
            .unwrap_or(u32::MAX)
            .saturating_add(entry.in_flight);
        if used >= self.code_cap {
            // The oldest failure leaves the window first; with only attempts in flight, a
            // second tells the client to look again soon.
            let wait = entry
                .failures
                .front()
                .map_or(1, |t| (*t + CODE_WINDOW_S - now).max(1));
            if entry.failures.is_empty() && entry.in_flight == 0 {
                map.remove(key);
            }
            self.count_refusal(None);
            return Err(CommandError::new(
                ErrorCode::TooManyAttempts,
                "too many wrong codes for this address; wait before trying again",
            )
            .with_retry_after_ms(u64::try_from(wait).unwrap_or(1) * 1000));
        }
        entry.in_flight += 1;
        Ok(CodeAttempt {
            limits: self,
            key: Some(key.to_owned()),
        })
    }

    fn resolve_code(&self, key: &str, failed_at: Option<i64>) {
        let mut map = self.code_failures.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = map.get_mut(key) else {
            return;
        };
        entry.in_flight = entry.in_flight.saturating_sub(1);
        if let Some(now) = failed_at {
            entry.failures.push_back(now);
            // Only the newest `code_cap` matter for the cap: keep each entry bounded.
            while entry.failures.len() > usize::try_from(self.code_cap).unwrap_or(usize::MAX) {
                entry.failures.pop_front();
            }
        } else if entry.failures.is_empty() && entry.in_flight == 0 {
            map.remove(key);
        }
    }

    /// Requests refused `RATE_LIMITED` so far: one entry per rate class (by its name), then
    /// [`FAILURE_DELAY_CLASS`].
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        REFUSAL_CLASSES
            .iter()
            .map(|c| c.name())
            .chain([FAILURE_DELAY_CLASS])
            .zip(&self.refused)
            .map(|(name, n)| (name, n.load(Ordering::Relaxed)))
            .collect()
    }

    /// Counts a refusal of the class at `index` in [`REFUSAL_CLASSES`] (`None`: a failure
    /// delay).
    fn count_refusal(&self, index: Option<usize>) {
        let i = index.unwrap_or(REFUSAL_CLASSES.len());
        if let Some(n) = self.refused.get(i) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops idle limiter state (called periodically; `now` in Unix seconds).
    pub fn housekeeping(&self, now: i64) {
        self.code_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| e.still_counts(now));
        for l in self.per_class.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

enum Resolution {
    Failed(i64),
    Succeeded,
    Released,
}

/// A reserved password attempt (see [`Limits::reserve_attempt`]).
#[must_use = "resolve the attempt with failed() or succeeded()"]
pub struct Attempt<'a> {
    limits: &'a Limits,
    key: Option<String>,
}

impl Attempt<'_> {
    /// The attempt failed at `now`: the delay grows. Returns the consecutive failures.
    pub fn failed(mut self, now: i64) -> u32 {
        self.key
            .take()
            .map_or(0, |k| self.limits.resolve(&k, Resolution::Failed(now)))
    }

    /// The attempt succeeded: the failures are cleared.
    pub fn succeeded(mut self) {
        if let Some(k) = self.key.take() {
            self.limits.resolve(&k, Resolution::Succeeded);
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.limits.resolve(&k, Resolution::Released);
        }
    }
}

/// A reserved email-code attempt (see [`Limits::reserve_code_attempt`]).
#[must_use = "resolve the attempt with failed() or succeeded()"]
pub struct CodeAttempt<'a> {
    limits: &'a Limits,
    key: Option<String>,
}

impl CodeAttempt<'_> {
    /// The code was wrong at `now`: it counts against the address's hourly cap.
    pub fn failed(mut self, now: i64) {
        if let Some(k) = self.key.take() {
            self.limits.resolve_code(&k, Some(now));
        }
    }

    /// The code was right (or the attempt ended without a comparison): nothing is counted.
    pub fn succeeded(mut self) {
        if let Some(k) = self.key.take() {
            self.limits.resolve_code(&k, None);
        }
    }
}

impl Drop for CodeAttempt<'_> {
    fn drop(&mut self) {
        if let Some(k) = self.key.take() {
            self.limits.resolve_code(&k, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_parse_and_refuse_nonsense() {
        assert!(parse_quota("10/s").is_ok());
        assert!(parse_quota("120/min").is_ok());
        assert!(parse_quota("5/h").is_ok());
        for bad in ["0/s", "ten/s", "10/day", "10", ""] {
            assert!(parse_quota(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_burst_passes_then_the_class_is_limited_per_address() {
        let cfg = RateLimits {
            credential: "3/min".into(),
            ..RateLimits::default()
        };
        let l = Limits::new(&cfg).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.check(RateClass::Credential, a).is_ok());
        }
        let e = l.check(RateClass::Credential, a).unwrap_err();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert!(e
            .body()
            .retry_after_ms
            .is_some_and(|ms| ms > 0 && ms <= 20_000));
        assert!(
            l.check(RateClass::Credential, b).is_ok(),
            "another address has its own bucket"
        );
        assert!(
            l.check(RateClass::Cheap, a).is_ok(),
            "another class has its own bucket"
        );
        let refused: HashMap<_, _> = l.refusals().into_iter().collect();
        assert_eq!(refused["credential"], 1);
        assert_eq!(refused["cheap"], 0);
        assert_eq!(refused[FAILURE_DELAY_CLASS], 0);
    }

    #[test]
    fn failure_delays_grow_are_capped_and_reset() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        for i in 1..=5 {
            assert_eq!(l.reserve_attempt("k", 100).unwrap().failed(100), i);
        }
        let e = l.reserve_attempt("k", 100).err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(e.body().retry_after_ms, Some(2000));
        assert!(l.refusals().contains(&(FAILURE_DELAY_CLASS, 1)));
        assert!(l.reserve_attempt("k", 102).is_ok());
        for _ in 0..30 {
            l.reserve_attempt("k", 2_000_000).unwrap().failed(102);
        }
        assert_eq!(
            l.reserve_attempt("k", 102)
                .err()
                .unwrap()
                .body()
                .retry_after_ms,
            Some(900_000)
        );
        l.reserve_attempt("k", 2_000_000).unwrap().succeeded();
        assert!(l.reserve_attempt("k", 102).is_ok());
    }

    /// Attempts in flight count: with five reserved and unresolved, a sixth is refused before
    /// any of them has failed; a reservation dropped unresolved is released.
    #[test]
    fn reservations_in_flight_hold_back_further_attempts() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        let held: Vec<_> = (0..5)
            .map(|_| l.reserve_attempt("k", 100).unwrap())
            .collect();
        let e = l.reserve_attempt("k", 100).err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert!(e.body().retry_after_ms.is_some_and(|ms| ms >= 1000));
        assert!(l.reserve_attempt("other", 100).is_ok(), "per key");
        let mut held = held.into_iter();
        drop(held.next());
        let sixth = l.reserve_attempt("k", 100).unwrap();
        for a in held {
            a.failed(100);
        }
        assert_eq!(sixth.failed(100), 5);
        assert!(l.reserve_attempt("k", 100).is_err(), "the delay runs");
    }

    /// A full table forgets quiet keys but never a running delay, an attempt in flight or a
    /// recent escalation; when only such entries remain, new keys are refused, not tracked
    /// beyond the bound.
    #[test]
    fn a_full_table_keeps_live_delays_and_reservations_and_stays_bounded() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        let now = 1_000;
        for _ in 0..5 {
            l.reserve_attempt("delayed", now).unwrap().failed(now);
        }
        let in_flight = l.reserve_attempt("in-flight", now).unwrap();
        for _ in 0..4 {
            l.reserve_attempt("in-flight", now).unwrap().failed(now);
        }
        for i in 0..FAILURE_TABLE_LIMIT - 2 {
            l.reserve_attempt(&format!("quiet{i}"), now)
                .unwrap()
                .failed(now);
        }
        let len = || l.failures.lock().unwrap().len();
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        // A new key makes room by forgetting the quiet keys only.
        l.reserve_attempt("new", now + 1).unwrap().failed(now + 1);
        assert_eq!(len(), 3);
        assert!(l.reserve_attempt("delayed", now + 1).is_err());
        assert!(
            l.reserve_attempt("in-flight", now + 1).is_err(),
            "4 failures + 1 in flight: no fifth attempt yet"
        );
        drop(in_flight);
        // `in-flight` (4 failures, nothing in flight now) and `new` are quiet; `delayed` is not.
        let mut held = Vec::new();
        for i in 0..FAILURE_TABLE_LIMIT - 3 {
            held.push(l.reserve_attempt(&format!("busy{i}"), now).unwrap());
        }
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        held.push(l.reserve_attempt("another", now + 2).unwrap());
        assert_eq!(len(), FAILURE_TABLE_LIMIT - 1, "the two quiet keys went");
        held.push(l.reserve_attempt("last", now + 2).unwrap());
        // Every entry is protected now: a new key is refused rather than tracked.
        let e = l.reserve_attempt("one-too-many", now + 2).err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        assert!(
            l.reserve_attempt("delayed", now + 1).is_err(),
            "still delayed"
        );
        drop(held);
        assert!(l.reserve_attempt("one-too-many", now + 2).is_ok());
    }

    #[test]
    fn switched_off_limits_count_nothing() {
        let l = Limits::new(&RateLimits {
            enabled: false,
            ..RateLimits::default()
        })
        .unwrap();
        for _ in 0..20 {
            l.reserve_attempt("k", 0).unwrap().failed(0);
            l.reserve_code_attempt("k", 0).unwrap().failed(0);
        }
        assert!(l.failures.lock().unwrap().is_empty());
        assert!(l.code_failures.lock().unwrap().is_empty());
    }

    #[test]
    fn wrong_codes_are_capped_per_address_per_hour() {
        let cfg = RateLimits {
            otp_failures_per_address_per_hour: 3,
            ..RateLimits::default()
        };
        let l = Limits::new(&cfg).unwrap();
        l.reserve_code_attempt("a", 0).unwrap().succeeded();
        let first = l.reserve_code_attempt("a", 0).unwrap();
        let second = l.reserve_code_attempt("a", 10).unwrap();
        let third = l.reserve_code_attempt("a", 10).unwrap();
        // Three in flight: a fourth is refused before any has failed.
        let e = l.reserve_code_attempt("a", 10).err().unwrap();
        assert_eq!(e.code(), ErrorCode::TooManyAttempts);
        first.failed(0);
        second.failed(10);
        third.failed(20);
        assert!(l.reserve_code_attempt("b", 20).is_ok(), "per address");
        let e = l.reserve_code_attempt("a", 30).err().unwrap();
        assert_eq!(e.body().retry_after_ms, Some(3_570_000));
        // A right code does not count, and an hour after the first failure one slot frees.
        assert!(l.reserve_code_attempt("a", CODE_WINDOW_S - 1).is_err());
        l.reserve_code_attempt("a", CODE_WINDOW_S)
            .unwrap()
            .failed(CODE_WINDOW_S);
        assert!(l.reserve_code_attempt("a", CODE_WINDOW_S).is_err());
        l.housekeeping(10 * CODE_WINDOW_S);
        assert!(l.code_failures.lock().unwrap().is_empty());
        assert!(Limits::new(&RateLimits {
            otp_failures_per_address_per_hour: 0,
            ..RateLimits::default()
        })
        .is_err());
    }
}
