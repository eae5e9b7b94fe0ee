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
//! One node keeps both in memory. Both tables are then bounded: when one is full, entries nobody
//! is working on and whose delay is over (and, for escalated delays, whose last failure is older
//! than [`MAX_DELAY_S`]) are forgotten; entries with a running delay, a reservation in flight or
//! a recent escalation are never dropped. If the table is still full, an attempt against a new
//! key is refused `RATE_LIMITED` rather than tracked without a limit.
//!
//! Nodes sharing a store keep both in it instead (the `attempts` table, keyed by kind and
//! SHA-256 of the address, changed by compare-and-swap), so an attacker spreading guesses over
//! the nodes meets one delay and one cap. A reservation there lapses after [`RESERVATION_S`],
//! so one held by a node that died frees itself; housekeeping removes entries with nothing left
//! to remember. The per-address rate classes stay per node (see docs/operations.md).

use crate::base::caller::RateClass;
use crate::base::config::RateLimits;
use crate::base::crypto::sha256;
use crate::base::error::CommandError;
use crate::infra::records::{Edit, Records, TableOwner};
use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use portcullis_protocol::ErrorCode;
use portcullis_store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Consecutive failures allowed before delays start.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay, seconds.
pub const MAX_DELAY_S: i64 = 15 * 60;
/// Accounts tracked for failure delays before old entries are dropped.
const FAILURE_TABLE_LIMIT: usize = 100_000;
/// The window of the per-address cap on failed email codes, seconds.
pub const CODE_WINDOW_S: i64 = 3600;
/// How long an unresolved reservation holds, seconds: far longer than any check takes, so only
/// a reservation whose node died lapses.
pub const RESERVATION_S: i64 = 120;

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

/// An attempt reserved and not resolved yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Reservation {
    /// Random: names the reservation when it is resolved.
    id: u64,
    /// Lapses at this time (Unix seconds).
    until: i64,
}

/// Reservations still holding at `now`.
fn holding(in_flight: &mut Vec<Reservation>, now: i64) -> u32 {
    in_flight.retain(|r| r.until > now);
    u32::try_from(in_flight.len()).unwrap_or(u32::MAX)
}

/// Adds reservation `id`, holding for [`RESERVATION_S`] from `now`.
fn hold(in_flight: &mut Vec<Reservation>, id: u64, now: i64) {
    in_flight.push(Reservation {
        id,
        until: now + RESERVATION_S,
    });
}

/// Removes reservation `id`; whether it was there.
fn release(in_flight: &mut Vec<Reservation>, id: u64) -> bool {
    let before = in_flight.len();
    in_flight.retain(|r| r.id != id);
    in_flight.len() < before
}

/// Failures against one key (an address), and attempts in flight.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct FailureEntry {
    /// Consecutive failures.
    failures: u32,
    /// No attempt before this (Unix seconds).
    next_at: i64,
    /// When the last failure was recorded (Unix seconds).
    last_failure_at: i64,
    /// Attempts reserved and not yet resolved.
    in_flight: Vec<Reservation>,
}

impl Record for FailureEntry {
    const VERSION: u8 = 1;
}

impl FailureEntry {
    /// Reserves attempt `id`, or the seconds to wait: while the delay runs, or when the
    /// attempts in flight, all failing, would start one (the first attempt after a delay is
    /// always let through).
    fn reserve(&mut self, id: u64, now: i64) -> Result<(), i64> {
        let in_flight = holding(&mut self.in_flight, now);
        let wait = if now < self.next_at {
            self.next_at - now
        } else if in_flight > 0 {
            failure_delay(self.failures.saturating_add(in_flight))
        } else {
            0
        };
        if wait > 0 {
            return Err(wait);
        }
        hold(&mut self.in_flight, id, now);
        Ok(())
    }

    /// Resolves reservation `id`; the consecutive failures after it.
    fn resolve(&mut self, id: u64, outcome: Resolution) -> u32 {
        if !release(&mut self.in_flight, id) {
            // Lapsed (or never made): a late failure still counts, nothing else changes.
            if !matches!(outcome, Resolution::Failed(_)) {
                return self.failures;
            }
        }
        match outcome {
            Resolution::Failed(now) => {
                self.failures = self.failures.saturating_add(1);
                self.next_at = now + failure_delay(self.failures);
                self.last_failure_at = now;
            }
            Resolution::Succeeded => {
                self.failures = 0;
                self.next_at = 0;
            }
            Resolution::Released => {}
        }
        self.failures
    }

    /// Whether forgetting this entry would weaken a limit: a delay runs, an attempt is in
    /// flight, or the key has escalated past its free failures recently.
    fn protected(&mut self, now: i64) -> bool {
        holding(&mut self.in_flight, now) > 0
            || now < self.next_at
            || (self.failures >= FREE_FAILURES && now < self.last_failure_at + MAX_DELAY_S)
    }
}

/// Failed email codes of one address in the last [`CODE_WINDOW_S`], and attempts in flight.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct CodeEntry {
    /// Times of the failures still in the window, oldest first.
    failures: VecDeque<i64>,
    /// Attempts reserved and not yet resolved.
    in_flight: Vec<Reservation>,
}

impl Record for CodeEntry {
    const VERSION: u8 = 1;
}

impl CodeEntry {
    /// Reserves attempt `id` under the cap, or the seconds to wait: the oldest failure leaves
    /// the window first; with only attempts in flight, a second tells the client to look again
    /// soon.
    fn reserve(&mut self, id: u64, now: i64, cap: u32) -> Result<(), i64> {
        self.expire(now);
        let used = u32::try_from(self.failures.len())
            .unwrap_or(u32::MAX)
            .saturating_add(holding(&mut self.in_flight, now));
        if used >= cap {
            return Err(self
                .failures
                .front()
                .map_or(1, |t| (*t + CODE_WINDOW_S - now).max(1)));
        }
        hold(&mut self.in_flight, id, now);
        Ok(())
    }

    /// Resolves reservation `id`: a failure at `failed_at` counts against the cap.
    fn resolve(&mut self, id: u64, failed_at: Option<i64>, cap: u32) {
        release(&mut self.in_flight, id);
        if let Some(now) = failed_at {
            self.failures.push_back(now);
            // Only the newest `cap` matter: keep each entry bounded.
            while self.failures.len() > usize::try_from(cap).unwrap_or(usize::MAX) {
                self.failures.pop_front();
            }
        }
    }

    /// Drops the failures that left the window; whether the entry still matters (a failure
    /// in the window or an attempt in flight).
    fn still_counts(&mut self, now: i64) -> bool {
        self.expire(now);
        holding(&mut self.in_flight, now) > 0 || !self.failures.is_empty()
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

/// What the limits remember per key: failure delays or the code cap.
trait Entry: Record + Default + Clone + Send + Sync + 'static {
    /// Its records in the shared store (`kind:` + SHA-256 of the key).
    const RECORDS: Records<Self>;
    const KIND: &'static [u8];
    /// Its table in memory.
    fn memory(m: &Memory) -> &Mutex<HashMap<String, Self>>;
    /// Whether forgetting it would weaken a limit (a full memory table keeps these).
    fn protected(&mut self, now: i64) -> bool;
    /// Whether nothing is left worth remembering.
    fn idle(&mut self, now: i64) -> bool;
    /// Releases reservation `id`, counting nothing.
    fn release(&mut self, id: u64);
}

impl Entry for FailureEntry {
    const RECORDS: Records<Self> = Records::new(Table::Attempts);
    const KIND: &'static [u8] = b"login:";
    fn memory(m: &Memory) -> &Mutex<HashMap<String, Self>> {
        &m.failures
    }
    fn protected(&mut self, now: i64) -> bool {
        FailureEntry::protected(self, now)
    }
    fn idle(&mut self, now: i64) -> bool {
        self.failures == 0 && holding(&mut self.in_flight, now) == 0
    }
    fn release(&mut self, id: u64) {
        self.resolve(id, Resolution::Released);
    }
}

impl Entry for CodeEntry {
    const RECORDS: Records<Self> = Records::new(Table::Attempts);
    const KIND: &'static [u8] = b"code:";
    fn memory(m: &Memory) -> &Mutex<HashMap<String, Self>> {
        &m.codes
    }
    fn protected(&mut self, now: i64) -> bool {
        self.still_counts(now)
    }
    fn idle(&mut self, now: i64) -> bool {
        !self.still_counts(now)
    }
    fn release(&mut self, id: u64) {
        release(&mut self.in_flight, id);
    }
}

/// Store key of `key`'s entry of kind `E`: the kind, then SHA-256 of the key (no address is
/// stored).
fn stored_key<E: Entry>(key: &str) -> Vec<u8> {
    let mut k = E::KIND.to_vec();
    k.extend_from_slice(&sha256(key.as_bytes()));
    k
}

/// The tables of one node.
#[derive(Default)]
struct Memory {
    failures: Mutex<HashMap<String, FailureEntry>>,
    codes: Mutex<HashMap<String, CodeEntry>>,
}

/// Where failure delays and code caps are kept.
enum Book {
    /// In this node's memory (a store of its own).
    Memory(Memory),
    /// In the store, shared by every node.
    Shared(Arc<dyn Store>),
}

/// [`Limits::change`] on this node's memory.
fn change_in_memory<E: Entry, T>(
    m: &Memory,
    key: &str,
    now: i64,
    mut f: impl FnMut(&mut E) -> T,
) -> Result<T, ()> {
    let mut map = E::memory(m).lock().unwrap_or_else(|p| p.into_inner());
    if !map.contains_key(key) && map.len() >= FAILURE_TABLE_LIMIT {
        map.retain(|_, e| e.protected(now));
        if map.len() >= FAILURE_TABLE_LIMIT {
            return Err(());
        }
    }
    let entry = map.entry(key.to_owned()).or_default();
    let answer = f(entry);
    if entry.idle(now) {
        map.remove(key);
    }
    Ok(answer)
}

/// [`Limits::change`] on the shared store.
async fn change_stored<E: Entry, T>(
    store: &dyn Store,
    key: &str,
    now: i64,
    mut f: impl FnMut(&mut E) -> T,
) -> Result<T, StoreError> {
    E::RECORDS
        .edit_or_default(store, &stored_key::<E>(key), |e| {
            let answer = f(e);
            Ok(if e.idle(now) {
                Edit::Remove(answer)
            } else {
                Edit::Write(answer)
            })
        })
        .await
}

/// The limiters of a running server.
pub struct Limits {
    enabled: bool,
    per_class: HashMap<RateClass, DefaultKeyedRateLimiter<IpAddr>>,
    /// What each API key may forward (`rate_limits.forward`), by key id.
    forward: DefaultKeyedRateLimiter<String>,
    book: Book,
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
    /// Builds the limiters from the configuration, keeping failure delays and code caps in
    /// memory.
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
            forward: DefaultKeyedRateLimiter::keyed(parse_quota(&cfg.forward)?),
            book: Book::Memory(Memory::default()),
            code_cap: cfg.otp_failures_per_address_per_hour,
            clock: DefaultClock::default(),
            refused: Default::default(),
        })
    }

    /// Keeps failure delays and code caps in `store` when other nodes share it (see the module
    /// documentation); otherwise in memory, as built.
    pub fn kept_in(mut self, store: &Arc<dyn Store>) -> Self {
        if store.shared() {
            self.book = Book::Shared(Arc::clone(store));
        }
        self
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

    /// Counts one request that API key `key_id` sends on behalf of an end user;
    /// `RATE_LIMITED` when the key's forwarding budget is spent.
    pub fn check_forward(&self, key_id: &str) -> Result<(), CommandError> {
        if !self.enabled {
            return Ok(());
        }
        self.forward
            .check_key(&key_id.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                CommandError::new(
                    ErrorCode::RateLimited,
                    "this API key forwards too many requests; slow down",
                )
                .with_retry_after_ms(ms)
            })
    }

    /// Changes `key`'s entry of kind `E` with `f` (from the default when there is none) and
    /// forgets it when nothing is left worth remembering. In memory, a full table first
    /// forgets entries that are not protected; `Err(())` when it is still full for a new key.
    async fn change<E: Entry, T>(
        &self,
        key: &str,
        now: i64,
        f: impl FnMut(&mut E) -> T,
    ) -> Result<Result<T, ()>, StoreError> {
        match &self.book {
            Book::Memory(m) => Ok(change_in_memory(m, key, now, f)),
            Book::Shared(store) => change_stored(store.as_ref(), key, now, f).await.map(Ok),
        }
    }

    /// A fresh reservation id.
    fn reservation_id() -> u64 {
        use crate::base::random::SecureRandom as _;
        let mut b = [0u8; 8];
        crate::base::random::OsRandom.fill(&mut b);
        u64::from_le_bytes(b)
    }

    /// Reserves an attempt against `key` (a password check), before the work is done: refused
    /// `RATE_LIMITED` while its failure delay runs, or when the attempts already in flight
    /// would, if they all failed, start a delay (so concurrent requests cannot all slip in
    /// before the first failure is recorded). The returned [`Attempt`] must be resolved with
    /// [`Attempt::failed`] or [`Attempt::succeeded`]; dropped unresolved (an error, a
    /// cancelled request) it just releases the reservation.
    pub async fn reserve_attempt(&self, key: &str, now: i64) -> Result<Attempt<'_>, CommandError> {
        if !self.enabled {
            // Switched off with the rate limits (benchmarks): nothing is counted.
            return Ok(Attempt(Reserved::none(self)));
        }
        let id = Self::reservation_id();
        match self
            .change(key, now, |e: &mut FailureEntry| e.reserve(id, now))
            .await?
        {
            Ok(Ok(())) => Ok(Attempt(Reserved::new(self, key, id))),
            Ok(Err(wait)) => {
                self.count_refusal(None);
                Err(Self::delayed(wait))
            }
            Err(()) => {
                self.count_refusal(None);
                tracing::warn!("the failure-delay table is full; refusing attempts on new keys");
                Err(Self::delayed(1))
            }
        }
    }

    fn delayed(wait_s: i64) -> CommandError {
        let ms = u64::try_from(wait_s).unwrap_or(1).max(1) * 1000;
        CommandError::new(
            ErrorCode::RateLimited,
            "too many failed attempts; wait before trying again",
        )
        .with_retry_after_ms(ms)
    }

    /// Reserves an attempt at an email code for the address `key`: refused
    /// `TOO_MANY_ATTEMPTS` (with `retry_after_ms`) when the failed codes of the last hour plus
    /// the attempts in flight reach `rate_limits.otp_failures_per_address_per_hour`. Resolve
    /// the returned [`CodeAttempt`]; only a failure counts against the cap.
    pub async fn reserve_code_attempt(
        &self,
        key: &str,
        now: i64,
    ) -> Result<CodeAttempt<'_>, CommandError> {
        if !self.enabled {
            return Ok(CodeAttempt(Reserved::none(self)));
        }
        let id = Self::reservation_id();
        let cap = self.code_cap;
        match self
            .change(key, now, |e: &mut CodeEntry| e.reserve(id, now, cap))
            .await?
        {
            Ok(Ok(())) => Ok(CodeAttempt(Reserved::new(self, key, id))),
            Ok(Err(wait)) => {
                self.count_refusal(None);
                Err(CommandError::new(
                    ErrorCode::TooManyAttempts,
                    "too many wrong codes for this address; wait before trying again",
                )
                .with_retry_after_ms(u64::try_from(wait).unwrap_or(1) * 1000))
            }
            Err(()) => {
                self.count_refusal(None);
                tracing::warn!("the email-code failure table is full; refusing new addresses");
                Err(Self::delayed(1))
            }
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

    /// Entries in memory: failure delays, code caps.
    #[cfg(test)]
    fn in_memory(&self) -> (usize, usize) {
        match &self.book {
            Book::Memory(m) => (
                m.failures.lock().unwrap_or_else(|p| p.into_inner()).len(),
                m.codes.lock().unwrap_or_else(|p| p.into_inner()).len(),
            ),
            Book::Shared(_) => (0, 0),
        }
    }

    /// Drops idle limiter state of this node (called periodically; `now` in Unix seconds).
    /// Entries in a shared store are swept by housekeeping ([`Tables`]).
    pub fn housekeeping(&self, now: i64) {
        if let Book::Memory(m) = &self.book {
            m.codes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|_, e| e.still_counts(now));
        }
        for l in self.per_class.values() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        self.forward.retain_recent();
        self.forward.shrink_to_fit();
    }
}

#[derive(Clone, Copy)]
enum Resolution {
    Failed(i64),
    Succeeded,
    Released,
}

/// A reservation of kind `E` in flight: resolved once, released if dropped unresolved.
struct Reserved<'a, E: Entry> {
    limits: &'a Limits,
    /// `None` once resolved, or when nothing was reserved (limits switched off).
    key: Option<(String, u64)>,
    kind: std::marker::PhantomData<E>,
}

impl<'a, E: Entry> Reserved<'a, E> {
    fn none(limits: &'a Limits) -> Self {
        Reserved {
            limits,
            key: None,
            kind: std::marker::PhantomData,
        }
    }

    fn new(limits: &'a Limits, key: &str, id: u64) -> Self {
        Reserved {
            limits,
            key: Some((key.to_owned(), id)),
            kind: std::marker::PhantomData,
        }
    }

    /// Applies `f` to the entry, once; `None` if there was nothing to resolve. A store that
    /// fails here leaves the reservation to lapse (logged).
    async fn resolve<T>(&mut self, now: i64, f: impl FnMut(&mut E, u64) -> T) -> Option<T> {
        let (key, id) = self.key.take()?;
        let mut f = f;
        match self.limits.change(&key, now, |e| f(e, id)).await {
            Ok(Ok(answer)) => Some(answer),
            Ok(Err(())) => None,
            Err(e) => {
                tracing::warn!(error = %e, "an attempt could not be recorded; its reservation lapses");
                None
            }
        }
    }
}

impl<E: Entry> Drop for Reserved<'_, E> {
    fn drop(&mut self) {
        let Some((key, id)) = self.key.take() else {
            return;
        };
        // Without a clock here: an entry is forgotten only if nothing at all is left.
        let release = move |e: &mut E| e.release(id);
        match &self.limits.book {
            Book::Memory(m) => {
                // A full table refuses only new keys; a reservation's key is there.
                let _ = change_in_memory(m, &key, i64::MIN, release);
            }
            Book::Shared(store) => {
                // Released in the background; without a runtime, the reservation lapses.
                let store = Arc::clone(store);
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        let released = change_stored(store.as_ref(), &key, i64::MIN, release).await;
                        if let Err(e) = released {
                            tracing::warn!(error = %e, "a reservation could not be released; it lapses");
                        }
                    });
                }
            }
        }
    }
}

/// A reserved password attempt (see [`Limits::reserve_attempt`]).
#[must_use = "resolve the attempt with failed() or succeeded()"]
pub struct Attempt<'a>(Reserved<'a, FailureEntry>);

impl Attempt<'_> {
    /// The attempt failed at `now`: the delay grows. Returns the consecutive failures.
    pub async fn failed(mut self, now: i64) -> u32 {
        self.0
            .resolve(now, |e, id| e.resolve(id, Resolution::Failed(now)))
            .await
            .unwrap_or(0)
    }

    /// The attempt succeeded: the failures are cleared.
    pub async fn succeeded(mut self, now: i64) {
        self.0
            .resolve(now, |e, id| e.resolve(id, Resolution::Succeeded))
            .await;
    }
}

/// A reserved email-code attempt (see [`Limits::reserve_code_attempt`]).
#[must_use = "resolve the attempt with failed() or succeeded()"]
pub struct CodeAttempt<'a>(Reserved<'a, CodeEntry>);

impl CodeAttempt<'_> {
    /// The code was wrong at `now`: it counts against the address's hourly cap.
    pub async fn failed(mut self, now: i64) {
        let cap = self.0.limits.code_cap;
        self.0
            .resolve(now, |e, id| e.resolve(id, Some(now), cap))
            .await;
    }

    /// The code was right (or the attempt ended without a comparison): nothing is counted.
    pub async fn succeeded(mut self, now: i64) {
        let cap = self.0.limits.code_cap;
        self.0.resolve(now, |e, id| e.resolve(id, None, cap)).await;
    }
}

/// The attempts table's part in housekeeping (only nodes sharing a store write it).
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Attempts]
    }

    async fn sweep(&self, store: &dyn Store, before: i64) -> Result<u64, StoreError> {
        Ok(sweep_idle::<FailureEntry>(store, before).await?
            + sweep_idle::<CodeEntry>(store, before).await?)
    }
}

/// Removes entries of kind `E` with nothing left to remember at `now`, each only if unchanged
/// since read; how many.
async fn sweep_idle<E: Entry>(store: &dyn Store, now: i64) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (k, stored) in E::RECORDS
        .scan(store, E::KIND, crate::infra::records::SWEEP_BATCH)
        .await?
    {
        let mut e = stored.record.clone();
        if !e.protected(now) && E::RECORDS.swap(store, &k, Some(&stored), None).await? {
            removed += 1;
        }
    }
    Ok(removed)
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
    fn each_key_has_its_own_forwarding_budget_and_the_default_is_at_least_1000_per_second() {
        assert!(
            parse_quota(&RateLimits::default().forward).is_ok_and(|q| q.burst_size().get() >= 1000
                && q.replenish_interval() <= Duration::from_millis(1)),
            "{}",
            RateLimits::default().forward
        );
        let cfg = RateLimits {
            forward: "2/min".into(),
            ..RateLimits::default()
        };
        let l = Limits::new(&cfg).unwrap();
        assert!(l.check_forward("key-a").is_ok());
        assert!(l.check_forward("key-a").is_ok());
        let e = l.check_forward("key-a").unwrap_err();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert!(e.body().retry_after_ms.is_some_and(|ms| ms > 0));
        assert!(
            l.check_forward("key-b").is_ok(),
            "another key has its own budget"
        );
        // The forwarding budget is apart from the per-address classes.
        assert!(l
            .check(RateClass::Credential, "192.0.2.1".parse().unwrap())
            .is_ok());
        let off = Limits::new(&RateLimits {
            enabled: false,
            ..cfg
        })
        .unwrap();
        for _ in 0..10 {
            assert!(
                off.check_forward("key-a").is_ok(),
                "switched off with the rate limits"
            );
        }
        assert!(Limits::new(&RateLimits {
            forward: "1000/day".into(),
            ..RateLimits::default()
        })
        .is_err());
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

    #[tokio::test]
    async fn failure_delays_grow_are_capped_and_reset() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        for i in 1..=5 {
            assert_eq!(
                l.reserve_attempt("k", 100).await.unwrap().failed(100).await,
                i
            );
        }
        let e = l.reserve_attempt("k", 100).await.err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(e.body().retry_after_ms, Some(2000));
        assert!(l.refusals().contains(&(FAILURE_DELAY_CLASS, 1)));
        assert!(l.reserve_attempt("k", 102).await.is_ok());
        for _ in 0..30 {
            l.reserve_attempt("k", 2_000_000)
                .await
                .unwrap()
                .failed(102)
                .await;
        }
        assert_eq!(
            l.reserve_attempt("k", 102)
                .await
                .err()
                .unwrap()
                .body()
                .retry_after_ms,
            Some(900_000)
        );
        l.reserve_attempt("k", 2_000_000)
            .await
            .unwrap()
            .succeeded(0)
            .await;
        assert!(l.reserve_attempt("k", 102).await.is_ok());
    }

    /// Attempts in flight count: with five reserved and unresolved, a sixth is refused before
    /// any of them has failed; a reservation dropped unresolved is released.
    #[tokio::test]
    async fn reservations_in_flight_hold_back_further_attempts() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(l.reserve_attempt("k", 100).await.unwrap());
        }
        let e = l.reserve_attempt("k", 100).await.err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert!(e.body().retry_after_ms.is_some_and(|ms| ms >= 1000));
        assert!(l.reserve_attempt("other", 100).await.is_ok(), "per key");
        let mut held = held.into_iter();
        drop(held.next());
        let sixth = l.reserve_attempt("k", 100).await.unwrap();
        for a in held {
            a.failed(100).await;
        }
        assert_eq!(sixth.failed(100).await, 5);
        assert!(l.reserve_attempt("k", 100).await.is_err(), "the delay runs");
    }

    /// A full table forgets quiet keys but never a running delay, an attempt in flight or a
    /// recent escalation; when only such entries remain, new keys are refused, not tracked
    /// beyond the bound.
    #[tokio::test]
    async fn a_full_table_keeps_live_delays_and_reservations_and_stays_bounded() {
        let l = Limits::new(&RateLimits::default()).unwrap();
        let now = 1_000;
        for _ in 0..5 {
            l.reserve_attempt("delayed", now)
                .await
                .unwrap()
                .failed(now)
                .await;
        }
        let in_flight = l.reserve_attempt("in-flight", now).await.unwrap();
        for _ in 0..4 {
            l.reserve_attempt("in-flight", now)
                .await
                .unwrap()
                .failed(now)
                .await;
        }
        for i in 0..FAILURE_TABLE_LIMIT - 2 {
            l.reserve_attempt(&format!("quiet{i}"), now)
                .await
                .unwrap()
                .failed(now)
                .await;
        }
        let len = || l.in_memory().0;
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        // A new key makes room by forgetting the quiet keys only.
        l.reserve_attempt("new", now + 1)
            .await
            .unwrap()
            .failed(now + 1)
            .await;
        assert_eq!(len(), 3);
        assert!(l.reserve_attempt("delayed", now + 1).await.is_err());
        assert!(
            l.reserve_attempt("in-flight", now + 1).await.is_err(),
            "4 failures + 1 in flight: no fifth attempt yet"
        );
        drop(in_flight);
        // `in-flight` (4 failures, nothing in flight now) and `new` are quiet; `delayed` is not.
        let mut held = Vec::new();
        for i in 0..FAILURE_TABLE_LIMIT - 3 {
            held.push(l.reserve_attempt(&format!("busy{i}"), now).await.unwrap());
        }
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        held.push(l.reserve_attempt("another", now + 2).await.unwrap());
        assert_eq!(len(), FAILURE_TABLE_LIMIT - 1, "the two quiet keys went");
        held.push(l.reserve_attempt("last", now + 2).await.unwrap());
        // Every entry is protected now: a new key is refused rather than tracked.
        let e = l
            .reserve_attempt("one-too-many", now + 2)
            .await
            .err()
            .unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(len(), FAILURE_TABLE_LIMIT);
        assert!(
            l.reserve_attempt("delayed", now + 1).await.is_err(),
            "still delayed"
        );
        drop(held);
        assert!(l.reserve_attempt("one-too-many", now + 2).await.is_ok());
    }

    #[tokio::test]
    async fn switched_off_limits_count_nothing() {
        let l = Limits::new(&RateLimits {
            enabled: false,
            ..RateLimits::default()
        })
        .unwrap();
        for _ in 0..20 {
            l.reserve_attempt("k", 0).await.unwrap().failed(0).await;
            l.reserve_code_attempt("k", 0)
                .await
                .unwrap()
                .failed(0)
                .await;
        }
        assert_eq!(l.in_memory(), (0, 0));
    }

    #[tokio::test]
    async fn wrong_codes_are_capped_per_address_per_hour() {
        let cfg = RateLimits {
            otp_failures_per_address_per_hour: 3,
            ..RateLimits::default()
        };
        let l = Limits::new(&cfg).unwrap();
        l.reserve_code_attempt("a", 0)
            .await
            .unwrap()
            .succeeded(0)
            .await;
        let first = l.reserve_code_attempt("a", 0).await.unwrap();
        let second = l.reserve_code_attempt("a", 10).await.unwrap();
        let third = l.reserve_code_attempt("a", 10).await.unwrap();
        // Three in flight: a fourth is refused before any has failed.
        let e = l.reserve_code_attempt("a", 10).await.err().unwrap();
        assert_eq!(e.code(), ErrorCode::TooManyAttempts);
        first.failed(0).await;
        second.failed(10).await;
        third.failed(20).await;
        assert!(l.reserve_code_attempt("b", 20).await.is_ok(), "per address");
        let e = l.reserve_code_attempt("a", 30).await.err().unwrap();
        assert_eq!(e.body().retry_after_ms, Some(3_570_000));
        // A right code does not count, and an hour after the first failure one slot frees.
        assert!(l
            .reserve_code_attempt("a", CODE_WINDOW_S - 1)
            .await
            .is_err());
        l.reserve_code_attempt("a", CODE_WINDOW_S)
            .await
            .unwrap()
            .failed(CODE_WINDOW_S)
            .await;
        assert!(l.reserve_code_attempt("a", CODE_WINDOW_S).await.is_err());
        l.housekeeping(10 * CODE_WINDOW_S);
        assert_eq!(l.in_memory().1, 0);
        assert!(Limits::new(&RateLimits {
            otp_failures_per_address_per_hour: 0,
            ..RateLimits::default()
        })
        .is_err());
    }

    /// Two nodes' limits on one shared store.
    fn two_nodes(cfg: &RateLimits) -> (Limits, Limits, Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = crate::testkit::Faults::wrap_shared(Arc::new(
            portcullis_store::SledStore::open(dir.path()).unwrap(),
        ));
        let a = Limits::new(cfg).unwrap().kept_in(&store);
        let b = Limits::new(cfg).unwrap().kept_in(&store);
        (a, b, store, dir)
    }

    /// Guesses spread over the nodes meet one delay: the sixth, on another node, waits.
    #[tokio::test]
    async fn on_a_shared_store_failure_delays_hold_across_nodes() {
        let (a, b, store, _dir) = two_nodes(&RateLimits::default());
        let key = "login:victim@example.org";
        for i in 0..FREE_FAILURES {
            let node = if i % 2 == 0 { &a } else { &b };
            node.reserve_attempt(key, 100)
                .await
                .unwrap()
                .failed(100)
                .await;
        }
        let e = b.reserve_attempt(key, 100).await.err().unwrap();
        assert_eq!(e.code(), ErrorCode::RateLimited);
        assert_eq!(e.body().retry_after_ms, Some(2000));
        // Reservations count across nodes too: four failures and one attempt in flight on A
        // hold back B.
        let other = "login:other@example.org";
        for _ in 0..FREE_FAILURES - 1 {
            a.reserve_attempt(other, 100)
                .await
                .unwrap()
                .failed(100)
                .await;
        }
        let held = a.reserve_attempt(other, 100).await.unwrap();
        assert!(b.reserve_attempt(other, 100).await.is_err());
        held.succeeded(100).await;
        b.reserve_attempt(other, 100)
            .await
            .unwrap()
            .succeeded(100)
            .await;
        // Nothing stored names the address.
        for (k, v) in store
            .scan_prefix(Table::Attempts, b"", usize::MAX)
            .await
            .unwrap()
        {
            for text in [&k, &v] {
                assert!(!String::from_utf8_lossy(text).contains("example.org"));
            }
        }
        // A success leaves nothing to remember: the entry is gone.
        assert_eq!(
            store
                .scan_prefix(Table::Attempts, b"login:", usize::MAX)
                .await
                .unwrap()
                .len(),
            1,
            "only the delayed address is remembered"
        );
    }

    /// The per-address cap on wrong codes counts every node's failures.
    #[tokio::test]
    async fn on_a_shared_store_the_code_cap_holds_across_nodes() {
        let cfg = RateLimits {
            otp_failures_per_address_per_hour: 3,
            ..RateLimits::default()
        };
        let (a, b, _store, _dir) = two_nodes(&cfg);
        a.reserve_code_attempt("x", 0)
            .await
            .unwrap()
            .failed(0)
            .await;
        b.reserve_code_attempt("x", 1)
            .await
            .unwrap()
            .failed(1)
            .await;
        let third = a.reserve_code_attempt("x", 2).await.unwrap();
        let e = b.reserve_code_attempt("x", 2).await.err().unwrap();
        assert_eq!(e.code(), ErrorCode::TooManyAttempts);
        third.succeeded(2).await;
        b.reserve_code_attempt("x", 3)
            .await
            .unwrap()
            .failed(3)
            .await;
        let e = a.reserve_code_attempt("x", 4).await.err().unwrap();
        assert_eq!(
            e.body().retry_after_ms,
            Some((CODE_WINDOW_S - 4) as u64 * 1000)
        );
    }

    /// A reservation whose node died (never resolved, never released) lapses; sweeping removes
    /// what is idle and keeps a running delay.
    #[tokio::test]
    async fn on_a_shared_store_a_dead_nodes_reservations_lapse_and_idle_entries_are_swept() {
        let (a, b, store, _dir) = two_nodes(&RateLimits::default());
        let key = "login:k";
        for _ in 0..FREE_FAILURES - 1 {
            a.reserve_attempt(key, 100).await.unwrap().failed(100).await;
        }
        // A reserves and dies: the reservation is never resolved nor released.
        std::mem::forget(a.reserve_attempt(key, 100).await.unwrap());
        assert!(b.reserve_attempt(key, 100).await.is_err());
        let late = b.reserve_attempt(key, 100 + RESERVATION_S).await;
        assert!(late.is_ok(), "the dead node's reservation lapsed");
        late.unwrap().failed(100 + RESERVATION_S).await;
        for _ in 0..FREE_FAILURES {
            b.reserve_attempt("login:delayed", 100)
                .await
                .unwrap()
                .failed(100)
                .await;
        }
        b.reserve_code_attempt("quiet", 100)
            .await
            .unwrap()
            .failed(100)
            .await;
        let count = || async {
            store
                .scan_prefix(Table::Attempts, b"", usize::MAX)
                .await
                .unwrap()
                .len()
        };
        assert_eq!(count().await, 3);
        // An escalated delay is kept until it is old, a wrong code until it leaves its window.
        let sweep = |at: i64| {
            let store = Arc::clone(&store);
            async move { Tables.sweep(store.as_ref(), at).await.unwrap() }
        };
        assert_eq!(sweep(100).await, 0, "all three protected");
        assert_eq!(sweep(100 + RESERVATION_S + MAX_DELAY_S).await, 2);
        assert_eq!(count().await, 1);
        assert_eq!(sweep(100 + CODE_WINDOW_S).await, 1);
        assert_eq!(count().await, 0);
    }
}
