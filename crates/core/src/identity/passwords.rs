//! Passwords: policy, and argon2id hashing on a bounded pool.
//!
//! Hashing is CPU- and memory-heavy by design (19 MiB, 2 passes). It runs on a pool of dedicated
//! threads, one per permitted concurrent hash (by default one per core). Each thread owns one
//! argon2 memory block and reuses it, so memory stays at threads × m_cost no matter how many
//! sign-ins arrive, and no hash pays for allocating and faulting in a fresh block. The threads
//! run at a lower scheduling priority than the async workers ([`HASH_NICE`]): a burst of sign-ins
//! uses every idle cycle, yet cheap commands still get a core when they need one. Requests wait
//! for a free thread asynchronously, in arrival order. No store lock or transaction is held while
//! hashing.

use crate::base::error::CommandError;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use portcullis_protocol::{ErrorCode, Secret};
use rand::rngs::OsRng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use tokio::sync::{oneshot, Semaphore};
use zeroize::Zeroize;

/// RFC 8176 `amr` of a password sign-in.
pub const AMR_PASSWORD: &str = "pwd";

/// Niceness of the hashing threads (Linux; 0 is the default, 19 the lowest priority).
pub const HASH_NICE: i64 = 10;

/// Accounts read at start to learn the costs of the stored hashes.
pub const COST_SAMPLE: usize = 10_000;

/// Shortest accepted password, in characters.
pub const MIN_LEN: usize = 8;
/// Longest accepted password, in characters.
pub const MAX_LEN: usize = 256;

/// The bundled list of common passwords (see `data/update-common-passwords.sh` for its source).
const COMMON: &str = include_str!("../../data/common-passwords.txt");

/// Shortest context word (product name, a part of the user's address or name) that a password
/// may not contain; shorter ones (`bob`, `org`) would refuse too many good passwords.
pub const CONTEXT_MIN_LEN: usize = 4;

/// The product's own name, refused in passwords whatever `product_name` is configured to.
const PRODUCT: &str = "portcullis";

fn common() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_lowercase)
            .collect()
    })
}

/// How many passwords the bundled common-password list holds.
pub fn common_password_count() -> usize {
    common().len()
}

/// What a password must not contain besides the common list (ASVS 6.1.2 / 6.2.11): the words
/// of the service and of the account it is for.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyContext<'a> {
    /// The configured product name (the built-in `portcullis` is always refused too).
    pub product_name: &'a str,
    /// The account's address.
    pub email: Option<&'a str>,
    /// The account's display name.
    pub display_name: Option<&'a str>,
}

impl PolicyContext<'_> {
    /// The context words, lower-cased, each at least [`CONTEXT_MIN_LEN`] characters: the
    /// product name and its words; the address's local part and its words (split at anything
    /// not a letter or digit: `jane.doe+x` gives `jane.doe+x`, `jane`, `doe`); each label of
    /// its domain but the last (`mail.acme.com` gives `mail`, `acme`); the display name and its
    /// words.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut add_with_parts = |s: &str| {
            let s = s.trim().to_lowercase();
            out.extend(
                s.split(|c: char| !c.is_alphanumeric())
                    .map(str::to_owned)
                    .chain([s.clone()]),
            );
        };
        add_with_parts(PRODUCT);
        add_with_parts(self.product_name);
        if let Some(email) = self.email {
            let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
            add_with_parts(local);
            let labels: Vec<&str> = domain.split('.').collect();
            for label in labels.iter().take(labels.len().saturating_sub(1)) {
                add_with_parts(label);
            }
        }
        if let Some(name) = self.display_name {
            add_with_parts(name);
        }
        out.retain(|w| w.chars().count() >= CONTEXT_MIN_LEN);
        out.sort();
        out.dedup();
        out
    }
}

/// Checks a new password against the policy: 8–256 characters; not in the bundled list of
/// common passwords; not containing (case-insensitively) any context word of `context` (see
/// [`PolicyContext::words`]). The message never repeats the password nor says which word
/// matched.
pub fn check_policy(pw: &Secret, context: &PolicyContext<'_>) -> Result<(), CommandError> {
    let n = pw.expose().chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(CommandError::invalid_params(format!(
            "the password must be {MIN_LEN} to {MAX_LEN} characters"
        )));
    }
    let lower = zeroize::Zeroizing::new(pw.expose().to_lowercase());
    if common().contains(lower.as_str()) {
        return Err(CommandError::invalid_params(
            "this password is too common; choose another",
        ));
    }
    if context.words().iter().any(|w| lower.contains(w.as_str())) {
        return Err(CommandError::invalid_params(
            "the password must not contain the service's name, your address or your name",
        ));
    }
    Ok(())
}

/// Outcome of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// The password matched.
    pub ok: bool,
    /// It matched a hash made with other parameters: store a new hash.
    pub needs_rehash: bool,
}

/// The cost parameters of an argon2 hash: memory (KiB), passes, lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cost {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Cost {
    fn of(params: &Params) -> Self {
        Cost {
            m_kib: params.m_cost(),
            t: params.t_cost(),
            p: params.p_cost(),
        }
    }

    /// The cost of a stored PHC string; `None` when it is not an argon2 hash.
    pub fn of_phc(phc: &str) -> Option<Self> {
        let parsed = PasswordHash::new(phc).ok()?;
        Params::try_from(&parsed).ok().map(|p| Cost::of(&p))
    }

    /// Relative work: argon2 fills `m` KiB `t` times (lanes run on one thread here).
    fn work(&self) -> u64 {
        u64::from(self.m_kib) * u64::from(self.t)
    }
}

/// What the server knows of the costs of the stored password hashes, and a decoy hash per
/// cost, so that an unknown address is checked at the cost of the median stored hash.
#[derive(Default)]
struct Decoys {
    /// Stored hashes per cost: a sample of the accounts read at start, then every hash made
    /// since (+1) and every hash replaced by a rehash (−1).
    stored: HashMap<Cost, u64>,
    /// A hash of a random password per cost, made on first need.
    dummies: HashMap<Cost, String>,
}

impl Decoys {
    /// The cost of the median stored hash (ordered by work, then by parameters); `None` when
    /// nothing is known.
    fn median(&self) -> Option<Cost> {
        let mut costs: Vec<(Cost, u64)> = self
            .stored
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(c, n)| (*c, *n))
            .collect();
        costs.sort_by_key(|(c, _)| (c.work(), *c));
        let total: u64 = costs.iter().map(|(_, n)| n).sum();
        let mut seen = 0;
        for (c, n) in costs {
            seen += n;
            if seen * 2 >= total {
                return Some(c);
            }
        }
        None
    }
}

/// Hashes and verifies passwords.
pub struct Passwords {
    params: Params,
    pool: HashPool,
    /// Decoy hashes for unknown and passwordless accounts, at the cost of the median stored
    /// hash (see [`Passwords::verify`]). Starts with a hash of a random password at the
    /// current parameters.
    decoys: Arc<Mutex<Decoys>>,
    /// argon2 computations done (hashes and verifications), for tests and metrics.
    work: Arc<AtomicU64>,
}

impl Passwords {
    /// Argon2id with `m_kib` KiB of memory, `t` passes, `p` lanes; at most `concurrency` hashes
    /// at once, on that many threads.
    pub fn new(m_kib: u32, t: u32, p: u32, concurrency: usize) -> Result<Self, String> {
        let params =
            Params::new(m_kib, t, p, None).map_err(|e| format!("argon2 parameters: {e}"))?;
        let mut blocks = Vec::new();
        let dummy = random_hash(&params, &mut blocks).map_err(|e| format!("argon2: {e}"))?;
        let pool = HashPool::start(concurrency.max(1), params.block_count())
            .map_err(|e| format!("starting the hashing threads: {e}"))?;
        let mut decoys = Decoys::default();
        decoys.dummies.insert(Cost::of(&params), dummy);
        Ok(Passwords {
            params,
            pool,
            decoys: Arc::new(Mutex::new(decoys)),
            work: Arc::new(AtomicU64::new(0)),
        })
    }

    /// argon2 computations done so far.
    pub fn work_done(&self) -> u64 {
        self.work.load(Ordering::Relaxed)
    }

    /// Counts a stored hash (read from the store at start): unknown addresses are checked at
    /// the cost of the median one.
    pub fn observe_stored(&self, phc: &str) {
        if let Some(c) = Cost::of_phc(phc) {
            let mut d = self.decoys.lock().unwrap_or_else(|p| p.into_inner());
            *d.stored.entry(c).or_default() += 1;
        }
    }

    /// Reads the costs of up to [`COST_SAMPLE`] stored password hashes (accounts are keyed by
    /// random ids, so the first ones are a random sample).
    pub async fn sample_stored(
        &self,
        store: &dyn portcullis_store::Store,
    ) -> Result<(), portcullis_store::StoreError> {
        for (_, raw) in store
            .scan_prefix(portcullis_store::Table::Users, b"", COST_SAMPLE)
            .await?
        {
            let user = crate::identity::accounts::USERS.decode(raw);
            if let Some(h) = user.ok().and_then(|u| u.record.password_hash) {
                self.observe_stored(&h);
            }
        }
        Ok(())
    }

    /// A stored hash was replaced by one made now (a rehash at sign-in).
    pub fn observe_replaced(&self, old_phc: &str) {
        if let Some(c) = Cost::of_phc(old_phc) {
            let mut d = self.decoys.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = d.stored.get_mut(&c) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// The cost at which an unknown address is checked: the median stored hash's, or the
    /// current parameters' when no hash is known.
    pub fn decoy_cost(&self) -> Cost {
        self.decoys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .median()
            .unwrap_or_else(|| Cost::of(&self.params))
    }

    /// Hashes a password (PHC string) with the current parameters.
    pub async fn hash(&self, pw: &Secret) -> Result<String, CommandError> {
        let params = self.params.clone();
        let pw = pw.clone();
        let work = Arc::clone(&self.work);
        let h = self
            .pool
            .run(move |blocks| {
                let h = hash_with(&params, pw.expose().as_bytes(), blocks);
                work.fetch_add(1, Ordering::Relaxed);
                h
            })
            .await?
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                CommandError::internal()
            })?;
        self.observe_stored(&h);
        Ok(h)
    }

    /// Verifies `pw` against `stored`, or, when there is none (an unknown address, a
    /// passwordless or disabled account), against a decoy hash at the cost of the median
    /// stored hash: the same work as for a typical account, always false. The first decoy
    /// check at a new cost makes the decoy (one hash at that cost: the same work again).
    pub async fn verify(
        &self,
        pw: &Secret,
        stored: Option<&str>,
    ) -> Result<Verified, CommandError> {
        let real = stored.is_some();
        let decoy_cost = self.decoy_cost();
        let phc = match stored {
            Some(s) => Some(s.to_owned()),
            None => self
                .decoys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dummies
                .get(&decoy_cost)
                .cloned(),
        };
        let params = self.params.clone();
        let pw = pw.clone();
        let work = Arc::clone(&self.work);
        let decoys = Arc::clone(&self.decoys);
        self.pool
            .run(move |blocks| {
                let refused = Verified {
                    ok: false,
                    needs_rehash: false,
                };
                let Some(phc) = phc else {
                    // No decoy at this cost yet: making one is the same work as checking it.
                    let made = Params::new(decoy_cost.m_kib, decoy_cost.t, decoy_cost.p, None)
                        .map_err(|e| e.to_string())
                        .and_then(|p| random_hash(&p, blocks).map_err(|e| e.to_string()));
                    work.fetch_add(1, Ordering::Relaxed);
                    match made {
                        Ok(h) => {
                            decoys
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .dummies
                                .insert(decoy_cost, h);
                        }
                        Err(e) => tracing::error!(error = %e, "making a decoy hash failed"),
                    }
                    return refused;
                };
                let Ok(parsed) = PasswordHash::new(&phc) else {
                    return refused;
                };
                // Always do the work, then decide: the decoy must cost the same as a real one.
                let matched = verify_with(&parsed, pw.expose().as_bytes(), blocks);
                work.fetch_add(1, Ordering::Relaxed);
                let ok = real && matched;
                let current = Params::try_from(&parsed).ok();
                // Anything but argon2id v1.3 at today's parameters is upgraded.
                let needs_rehash = ok
                    && (parsed.algorithm.as_str() != "argon2id"
                        || parsed.version != Some(Version::V0x13.into())
                        || current.is_none_or(|c| Cost::of(&c) != Cost::of(&params)));
                Verified { ok, needs_rehash }
            })
            .await
    }
}

/// A hash of 256 random bits with `params`.
fn random_hash(
    params: &Params,
    blocks: &mut Vec<Block>,
) -> Result<String, argon2::password_hash::Error> {
    let mut random = zeroize::Zeroizing::new([0u8; 32]);
    rand::RngCore::fill_bytes(&mut OsRng, random.as_mut());
    hash_with(params, hex::encode(random.as_ref()).as_bytes(), blocks)
}

/// Hashes `pw` with `params` and a fresh salt into a PHC string, in `blocks`.
fn hash_with(
    params: &Params,
    pw: &[u8],
    blocks: &mut Vec<Block>,
) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let output = compute(
        &argon,
        pw,
        salt.as_salt(),
        Params::DEFAULT_OUTPUT_LEN,
        blocks,
    )?;
    Ok(PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params)?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    }
    .to_string())
}

/// Whether `pw` matches `stored`, recomputed with the stored algorithm, version and parameters
/// (any argon2 variant), compared in constant time.
fn verify_with(stored: &PasswordHash<'_>, pw: &[u8], blocks: &mut Vec<Block>) -> bool {
    let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
        return false;
    };
    let argon = match (
        Algorithm::try_from(stored.algorithm),
        stored
            .version
            .map_or(Ok(Version::default()), Version::try_from),
        Params::try_from(stored),
    ) {
        (Ok(a), Ok(v), Ok(p)) => Argon2::new(a, v, p),
        _ => return false,
    };
    // `Output`'s equality is constant-time.
    compute(&argon, pw, salt, expected.len(), blocks).is_ok_and(|computed| computed == expected)
}

/// One argon2 computation in `blocks` (grown when the parameters need more memory than it has),
/// which is wiped afterwards: the memory of a hash is derived from the password.
fn compute(
    argon: &Argon2<'_>,
    pw: &[u8],
    salt: argon2::password_hash::Salt<'_>,
    output_len: usize,
    blocks: &mut Vec<Block>,
) -> Result<Output, argon2::password_hash::Error> {
    let mut salt_buf = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_buf)?;
    let needed = argon.params().block_count();
    if blocks.len() < needed {
        blocks.resize(needed, Block::default());
    }
    let result = Output::init_with(output_len, |out| {
        argon
            .hash_password_into_with_memory(pw, salt, out, &mut blocks[..needed])
            .map_err(argon2::password_hash::Error::from)
    });
    for b in blocks[..needed].iter_mut() {
        AsMut::<[u64]>::as_mut(b).zeroize();
    }
    result
}

type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// Dedicated hashing threads, each with its own reusable argon2 memory.
struct HashPool {
    permits: Arc<Semaphore>,
    jobs: Mutex<Option<mpsc::SyncSender<Job>>>,
}

impl HashPool {
    fn start(threads: usize, blocks: usize) -> std::io::Result<Self> {
        // A permit is taken before a job is queued, so the queue never holds more than this.
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("portcullis-hash-{i}"))
                .spawn(move || {
                    lower_priority();
                    // Allocated at the first hash (then kept), so a server that never sees a
                    // password never holds the memory.
                    let mut memory = Vec::with_capacity(blocks);
                    loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        match job {
                            Ok(job) => job(&mut memory),
                            // The pool was dropped.
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(HashPool {
            permits: Arc::new(Semaphore::new(threads)),
            jobs: Mutex::new(Some(tx)),
        })
    }

    /// Runs `f` on a hashing thread once one is free.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, CommandError> {
        let unavailable = || CommandError::new(ErrorCode::Unavailable, "server is shutting down");
        let _permit = self.permits.acquire().await.map_err(|_| unavailable())?;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = tx.send(f(memory));
        });
        let queued = self
            .jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|q| q.try_send(job));
        match queued {
            Some(Ok(())) => {}
            _ => return Err(unavailable()),
        }
        rx.await.map_err(|_| {
            tracing::error!("a password hashing thread failed");
            CommandError::internal()
        })
    }
}

impl Drop for HashPool {
    fn drop(&mut self) {
        // Closing the queue ends the threads once they finish their current job.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Lowers the calling thread's scheduling priority to [`HASH_NICE`]. Best effort: without it
/// hashing still works, only at the same priority as everything else.
fn lower_priority() {
    // thread-priority maps its cross-platform 0..=99 onto Linux niceness 19..=-20; 22 is nice
    // 10 (the test below reads the niceness back).
    let lower = thread_priority::ThreadPriorityValue::try_from(22u8)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            thread_priority::set_current_thread_priority(
                thread_priority::ThreadPriority::Crossplatform(v),
            )
            .map_err(|e| e.to_string())
        });
    if let Err(e) = lower {
        tracing::debug!(error = %e, "could not lower the hashing threads' priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_CONTEXT: PolicyContext<'static> = PolicyContext {
        product_name: "",
        email: None,
        display_name: None,
    };

    #[test]
    fn policy_refuses_short_long_and_common_passwords_without_echoing_them() {
        for bad in ["short", "Password123", "qwertyuiop", &"x".repeat(257)] {
            let e = check_policy(&Secret::new(bad), &NO_CONTEXT).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParams);
            assert!(!e.body().message.contains(bad), "{}", e.body().message);
        }
        assert!(check_policy(&Secret::new("correct horse battery staple"), &NO_CONTEXT).is_ok());
        assert!(
            check_policy(&Secret::new("ÄÖÜäöü€ß"), &NO_CONTEXT).is_ok(),
            "length counts characters"
        );
    }

    /// ASVS 6.2.4: the list holds thousands of entries from a maintained source, and every one
    /// of them is refused, in any letter case.
    #[test]
    fn every_entry_of_the_common_password_list_is_refused() {
        let entries: Vec<&str> = COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        assert!(entries.len() >= 3_000, "only {} entries", entries.len());
        assert_eq!(common_password_count(), entries.len(), "no duplicates");
        for pw in &entries {
            let e = check_policy(&Secret::new(*pw), &NO_CONTEXT).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParams, "{pw}");
            let upper = pw.to_uppercase();
            assert!(
                check_policy(&Secret::new(upper.as_str()), &NO_CONTEXT).is_err(),
                "{upper}"
            );
        }
        // Samples from different ranks of the source list.
        for sample in [
            "12345678",
            "password1",
            "iloveyou",
            "sunshine",
            "football",
            "trustno1",
        ] {
            assert!(entries.contains(&sample), "{sample}");
        }
    }

    /// ASVS 6.1.2 / 6.2.11: the product name, the parts of the address and the display name are
    /// refused as substrings, whatever their case; shorter parts are not.
    #[test]
    fn context_words_are_refused_in_passwords() {
        let ctx = PolicyContext {
            product_name: "Acme Login",
            email: Some("Jane.Doe+work@mail.Wonderland.example.org"),
            display_name: Some("Zaphod Beeblebrox"),
        };
        for bad in [
            "myPortcullis2024!",
            "acme login rocks",
            "xxLOGINxxxxx",
            "jane.doe+work 42",
            "secretjane!!",
            "doe is fine", // `doe` alone is shorter than CONTEXT_MIN_LEN: only with `work` below
            "wonderland1234",
            "example-universe",
            "zaphod-was-here",
            "BEEBLEBROX 9000",
        ] {
            let r = check_policy(&Secret::new(bad), &ctx);
            if bad == "doe is fine" {
                assert!(r.is_ok(), "short parts are allowed: {bad}");
                continue;
            }
            let e = r.unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParams, "{bad}");
            assert!(!e.body().message.contains(bad));
        }
        for good in [
            "correct horse battery staple",
            "an org chart view",
            "a doe and a fawn",
        ] {
            assert!(check_policy(&Secret::new(good), &ctx).is_ok(), "{good}");
        }
        assert!(
            check_policy(&Secret::new("secretjane!!"), &NO_CONTEXT).is_ok(),
            "without the context the same password passes"
        );
        assert!(check_policy(&Secret::new("portcullis-door"), &NO_CONTEXT).is_err());
    }

    #[tokio::test]
    async fn hashes_verify_and_parameter_changes_ask_for_a_rehash() {
        let weak = Passwords::new(8, 1, 1, 2).unwrap();
        let pw = Secret::new("correct horse battery staple");
        let h = weak.hash(&pw).await.unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{h}");
        assert!(!h.contains("correct"));
        let v = weak.verify(&pw, Some(&h)).await.unwrap();
        assert_eq!(
            v,
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(
            !weak
                .verify(&Secret::new("wrong password"), Some(&h))
                .await
                .unwrap()
                .ok
        );
        let before = weak.work_done();
        assert!(
            !weak.verify(&pw, None).await.unwrap().ok,
            "no account never verifies"
        );
        assert_eq!(
            weak.work_done(),
            before + 1,
            "the dummy verification does the argon2 work"
        );
        let stronger = Passwords::new(16, 2, 1, 2).unwrap();
        assert_eq!(
            stronger.verify(&pw, Some(&h)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }

    /// A hash made with argon2id v1.0 (or argon2i, argon2d) at today's parameters still asks
    /// for a rehash: only argon2id v1.3 at the current parameters is left alone.
    #[tokio::test]
    async fn an_older_argon2_version_or_variant_asks_for_a_rehash() {
        use argon2::password_hash::PasswordHasher;
        let pool = Passwords::new(8, 1, 1, 2).unwrap();
        let pw = Secret::new("correct horse battery staple");
        let params = Params::new(8, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut OsRng);
        for (alg, version) in [
            (Algorithm::Argon2id, Version::V0x10),
            (Algorithm::Argon2i, Version::V0x13),
            (Algorithm::Argon2d, Version::V0x13),
        ] {
            let h = Argon2::new(alg, version, params.clone())
                .hash_password(pw.expose().as_bytes(), &salt)
                .unwrap()
                .to_string();
            assert_eq!(
                pool.verify(&pw, Some(&h)).await.unwrap(),
                Verified {
                    ok: true,
                    needs_rehash: true
                },
                "{h}"
            );
        }
    }

    /// Defect 10: after a parameter change most stored hashes still have the old cost; an
    /// unknown address must be checked at that cost (the median stored hash's), not today's,
    /// or the time of a wrong answer tells a stored account from an unknown address.
    #[tokio::test]
    async fn unknown_addresses_are_checked_at_the_cost_of_the_median_stored_hash() {
        let old = Passwords::new(16, 2, 1, 2).unwrap();
        let pw = Secret::new("correct horse battery staple");
        let mut stored = Vec::new();
        for _ in 0..3 {
            stored.push(old.hash(&pw).await.unwrap());
        }
        let today = Passwords::new(8, 1, 1, 2).unwrap();
        let old_cost = Cost {
            m_kib: 16,
            t: 2,
            p: 1,
        };
        let new_cost = Cost {
            m_kib: 8,
            t: 1,
            p: 1,
        };
        assert_eq!(today.decoy_cost(), new_cost, "nothing stored is known yet");
        for h in &stored {
            today.observe_stored(h);
        }
        // Two accounts get new hashes: 3 old vs 2 new, the median is still old.
        let newer = [
            today.hash(&pw).await.unwrap(),
            today.hash(&pw).await.unwrap(),
        ];
        assert_eq!(today.decoy_cost(), old_cost);
        let decoy_phc = |p: &Passwords, c: Cost| p.decoys.lock().unwrap().dummies.get(&c).cloned();
        assert!(decoy_phc(&today, old_cost).is_none());
        for _ in 0..2 {
            let before = today.work_done();
            assert!(!today.verify(&pw, None).await.unwrap().ok);
            assert_eq!(
                today.work_done(),
                before + 1,
                "one argon2 computation, like a real check"
            );
        }
        let decoy = decoy_phc(&today, old_cost).expect("a decoy at the old cost");
        assert_eq!(Cost::of_phc(&decoy), Some(old_cost));
        assert!(decoy.starts_with("$argon2id$v=19$m=16,t=2,p=1$"), "{decoy}");
        // Once most hashes are upgraded (rehash at sign-in), the median follows.
        today.observe_replaced(&stored[0]);
        today.observe_replaced(&stored[1]);
        let _ = newer;
        today.hash(&pw).await.unwrap();
        today.hash(&pw).await.unwrap();
        assert_eq!(today.decoy_cost(), new_cost);
    }

    /// Hashes made here verify with the stock argon2 API and the other way round (the reused
    /// memory changes nothing in the result), including hashes with other parameters.
    #[tokio::test]
    async fn pooled_hashes_agree_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let pw = Secret::new("correct horse battery staple");
        let pool = Passwords::new(64, 1, 1, 2).unwrap();
        let ours = pool.hash(&pw).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(pw.expose().as_bytes(), &parsed)
            .is_ok());
        for params in [(64, 1, 1), (128, 3, 2), (32, 2, 1)] {
            let p = Params::new(params.0, params.1, params.2, None).unwrap();
            let salt = SaltString::generate(&mut OsRng);
            let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, p)
                .hash_password(pw.expose().as_bytes(), &salt)
                .unwrap()
                .to_string();
            assert!(
                pool.verify(&pw, Some(&theirs)).await.unwrap().ok,
                "{theirs}"
            );
            assert!(
                !pool
                    .verify(&Secret::new("wrong password"), Some(&theirs))
                    .await
                    .unwrap()
                    .ok
            );
        }
        // An argon2i hash still verifies (and asks for a rehash).
        let salt = SaltString::generate(&mut OsRng);
        let argon2i = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(pw.expose().as_bytes(), &salt)
        .unwrap()
        .to_string();
        assert_eq!(
            pool.verify(&pw, Some(&argon2i)).await.unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
        // Garbage never verifies and never panics.
        for junk in [
            "",
            "$argon2id$",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdA$",
            "plain",
        ] {
            assert!(!pool.verify(&pw, Some(junk)).await.unwrap().ok, "{junk}");
        }
    }

    /// The pool runs at most `concurrency` hashes at once, on its own lower-priority threads,
    /// and every request is answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_is_bounded_and_runs_below_normal_priority() {
        let passwords = Arc::new(Passwords::new(64, 1, 1, 2).unwrap());
        let running = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (p, running, peak) = (
                    Arc::clone(&passwords),
                    Arc::clone(&running),
                    Arc::clone(&peak),
                );
                tokio::spawn(async move {
                    p.pool
                        .run(move |_| {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(5));
                            running.fetch_sub(1, Ordering::SeqCst);
                            let name = std::thread::current().name().map(str::to_owned);
                            (name, own_niceness())
                        })
                        .await
                        .unwrap()
                })
            })
            .collect();
        for t in tasks {
            let (name, nice) = t.await.unwrap();
            assert!(
                name.as_deref()
                    .is_some_and(|n| n.starts_with("portcullis-hash-")),
                "{name:?}"
            );
            assert_eq!(nice, Some(HASH_NICE));
        }
        assert!(peak.load(Ordering::SeqCst) <= 2, "{peak:?}");
    }

    /// The calling thread's niceness, from `/proc/thread-self/stat` (field 19).
    fn own_niceness() -> Option<i64> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        // The command name (field 2) may contain spaces; fields after it follow its `)`.
        let rest = &stat[stat.rfind(')')? + 2..];
        rest.split(' ').nth(16)?.parse().ok()
    }
}
