//! Passwords: policy, and argon2id hashing on a bounded pool.
//!
//! Hashing is CPU- and memory-heavy by design (19 MiB, 2 passes). It runs on Tokio's blocking
//! threads behind a semaphore sized to the cores, so at most that many hashes run at once, cheap
//! commands keep the async workers, and memory stays bounded. No store lock or transaction is
//! held while hashing.

use crate::error::CommandError;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use portcullis_protocol::{ErrorCode, Secret};
use rand::rngs::OsRng;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::Semaphore;

/// Shortest accepted password, in characters.
pub const MIN_LEN: usize = 8;
/// Longest accepted password, in characters.
pub const MAX_LEN: usize = 256;

const COMMON: &str = include_str!("../data/common-passwords.txt");

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

/// Checks a new password against the policy: 8–256 characters, not in the bundled list of
/// common passwords. The message never repeats the password.
pub fn check_policy(pw: &Secret) -> Result<(), CommandError> {
    let n = pw.expose().chars().count();
    if !(MIN_LEN..=MAX_LEN).contains(&n) {
        return Err(CommandError::invalid_params(format!(
            "the password must be {MIN_LEN} to {MAX_LEN} characters"
        )));
    }
    if common().contains(&pw.expose().to_lowercase()) {
        return Err(CommandError::invalid_params(
            "this password is too common; choose another",
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

/// Hashes and verifies passwords.
pub struct Passwords {
    params: Params,
    permits: Arc<Semaphore>,
    /// A hash of a random password with the current parameters: unknown accounts and
    /// passwordless accounts are "verified" against it, so every failed login costs the same.
    dummy: String,
    /// argon2 computations done (hashes and verifications), for tests and metrics.
    work: Arc<AtomicU64>,
}

impl Passwords {
    /// Argon2id with `m_kib` KiB of memory, `t` passes, `p` lanes; at most `concurrency` hashes
    /// at once.
    pub fn new(m_kib: u32, t: u32, p: u32, concurrency: usize) -> Result<Self, String> {
        let params =
            Params::new(m_kib, t, p, None).map_err(|e| format!("argon2 parameters: {e}"))?;
        let mut random = [0u8; 32];
        rand::RngCore::fill_bytes(&mut OsRng, &mut random);
        let dummy = hash_with(&params, &hex::encode(random)).map_err(|e| format!("argon2: {e}"))?;
        Ok(Passwords {
            params,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy,
            work: Arc::new(AtomicU64::new(0)),
        })
    }

    /// argon2 computations done so far.
    pub fn work_done(&self) -> u64 {
        self.work.load(Ordering::Relaxed)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CommandError> {
        let _permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| CommandError::new(ErrorCode::Unavailable, "server is shutting down"))?;
        tokio::task::spawn_blocking(f).await.map_err(|e| {
            tracing::error!(error = %e, "password hashing task failed");
            CommandError::internal()
        })
    }

    /// Hashes a password (PHC string).
    pub async fn hash(&self, pw: &Secret) -> Result<String, CommandError> {
        let params = self.params.clone();
        let pw = pw.clone();
        let work = Arc::clone(&self.work);
        self.blocking(move || {
            let h = hash_with(&params, pw.expose());
            work.fetch_add(1, Ordering::Relaxed);
            h
        })
        .await?
        .map_err(|e| {
            tracing::error!(error = %e, "password hashing failed");
            CommandError::internal()
        })
    }

    /// Verifies `pw` against `stored`, or against the dummy hash when there is none (same work,
    /// always false).
    pub async fn verify(
        &self,
        pw: &Secret,
        stored: Option<&str>,
    ) -> Result<Verified, CommandError> {
        let real = stored.is_some();
        let phc = stored.unwrap_or(&self.dummy).to_owned();
        let params = self.params.clone();
        let pw = pw.clone();
        let work = Arc::clone(&self.work);
        self.blocking(move || {
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return Verified {
                    ok: false,
                    needs_rehash: false,
                };
            };
            // Always do the work, then decide: the dummy hash must cost the same as a real one.
            let matched = Argon2::default()
                .verify_password(pw.expose().as_bytes(), &parsed)
                .is_ok();
            work.fetch_add(1, Ordering::Relaxed);
            let ok = real && matched;
            let current = Params::try_from(&parsed).ok();
            let needs_rehash = ok
                && (parsed.algorithm.as_str() != "argon2id"
                    || current.is_none_or(|c| {
                        c.m_cost() != params.m_cost()
                            || c.t_cost() != params.t_cost()
                            || c.p_cost() != params.p_cost()
                    }));
            Verified { ok, needs_rehash }
        })
        .await
    }
}

fn hash_with(params: &Params, pw: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(pw.as_bytes(), &salt)
        .map(|h| h.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_short_long_and_common_passwords_without_echoing_them() {
        for bad in ["short", "Password123", "qwertyuiop", &"x".repeat(257)] {
            let e = check_policy(&Secret::new(bad)).unwrap_err();
            assert_eq!(e.code(), ErrorCode::InvalidParams);
            assert!(!e.body().message.contains(bad), "{}", e.body().message);
        }
        assert!(check_policy(&Secret::new("correct horse battery staple")).is_ok());
        assert!(
            check_policy(&Secret::new("ÄÖÜäöü€ß")).is_ok(),
            "length counts characters"
        );
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
}
