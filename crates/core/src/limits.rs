//! Abuse limits: a rate limiter per client address for each rate class of the registry, and
//! capped progressive delays after repeated failures against one account.
//!
//! Limits are GCRA (governor) buckets: `N/s`, `N/min` or `N/h`, with a burst of `N`. A refused
//! request gets `RATE_LIMITED` with `retry_after_ms`. Failure delays grow 2 s, 4 s, 8 s … after
//! five consecutive failures, capped at 15 minutes, and reset on success: a delay, never a
//! lockout an attacker could use to deny service.

use crate::caller::RateClass;
use crate::config::RateLimits;
use crate::error::CommandError;
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
    failures: Mutex<HashMap<String, (u32, i64)>>,
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

    /// Refuses an attempt against `key` while its failure delay runs.
    pub fn check_failures(&self, key: &str, now: i64) -> Result<(), CommandError> {
        if !self.enabled {
            return Ok(());
        }
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(key) {
            Some(&(_, next_at)) if now < next_at => {
                self.count_refusal(None);
                let ms = u64::try_from(next_at - now).unwrap_or(1) * 1000;
                Err(CommandError::new(
                    ErrorCode::RateLimited,
                    "too many failed attempts; wait before trying again",
                )
                .with_retry_after_ms(ms))
            }
            _ => Ok(()),
        }
    }

    /// Records a failure against `key`; returns the consecutive count.
    pub fn record_failure(&self, key: &str, now: i64) -> u32 {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= FAILURE_TABLE_LIMIT {
            // Keep the accounts that are being delayed; forget the quiet ones.
            map.retain(|_, (_, next_at)| *next_at > now);
        }
        let entry = map.entry(key.to_owned()).or_insert((0, 0));
        entry.0 += 1;
        entry.1 = now + failure_delay(entry.0);
        entry.0
    }

    /// Clears the failures of `key`.
    pub fn record_success(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
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

    /// Drops idle limiter state (called periodically).
    pub fn housekeeping(&self) {
        for l in self.per_class.values() {
            l.retain_recent();
            l.shrink_to_fit();
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
            assert!(l.check_failures("k", 100).is_ok());
            assert_eq!(l.record_failure("k", 100), i);
        }
        let e = l.check_failures("k", 100).unwrap_err();
        assert_eq!(e.body().retry_after_ms, Some(2000));
        assert!(l.refusals().contains(&(FAILURE_DELAY_CLASS, 1)));
        assert!(l.check_failures("k", 102).is_ok());
        for _ in 0..30 {
            l.record_failure("k", 102);
        }
        assert_eq!(
            l.check_failures("k", 102)
                .unwrap_err()
                .body()
                .retry_after_ms,
            Some(900_000)
        );
        l.record_success("k");
        assert!(l.check_failures("k", 102).is_ok());
    }
}
