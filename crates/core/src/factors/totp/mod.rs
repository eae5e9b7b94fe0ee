//! The authenticator-app factor: TOTP (RFC 6238 via totp-rs), its pending enrolments and its
//! records. Recovery codes, which stand in for the app, are [`crate::factors::recovery`].
//!
//! TOTP: SHA-1, 6 digits, 30 s steps, ±1 step of skew — the parameters every authenticator app
//! supports. The secret is 160 bits from the CSPRNG, sealed with the master key at rest. A
//! step accepted once is never accepted again: the last accepted step is advanced by
//! compare-and-swap, so of two concurrent requests with one valid code exactly one succeeds.
//! After 5 consecutive failures each further attempt must wait, 2 s doubling up to 15 min — a
//! delay, never a lockout an attacker could use to deny service. Success resets the count.

pub mod commands;

use crate::base::error::CommandError;
use crate::infra::records::{
    sweep_expired, Edit, Records, ResealError, Resealer, TableOwner, SWEEP_BATCH,
};
use crate::Ctx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{Batch, Expect, Record, Table};
use portcullis_store::{Store, StoreError};
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Totp};
use zeroize::Zeroizing;

/// Consecutive failures allowed before attempts are delayed.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay between attempts, seconds.
pub const MAX_DELAY_S: i64 = 15 * 60;
/// Lifetime of a pending TOTP enrolment, seconds.
pub const ENROLMENT_S: i64 = 10 * 60;

/// RFC 8176 `amr` for a TOTP code.
pub const AMR_OTP: &str = "otp";

/// A confirmed TOTP factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpRecord {
    /// The 20-byte secret sealed under `totp:<user_id>`, base64url.
    pub sealed_secret: String,
    /// Unix seconds.
    pub confirmed_at: i64,
    /// The newest time step accepted (never accepted again, nor any older one).
    pub last_step: u64,
    /// Consecutive failures.
    pub failures: u32,
    /// No attempt is evaluated before this (Unix seconds).
    pub next_attempt_at: i64,
}

impl Record for TotpRecord {
    const VERSION: u8 = 1;
}

/// A TOTP enrolment waiting for its first code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingEnrolment {
    /// Owner.
    pub user_id: String,
    /// The secret sealed under `totp-enrolment:<id>`, base64url.
    pub sealed_secret: String,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Record for PendingEnrolment {
    const VERSION: u8 = 1;
}

/// Confirmed factors by user id.
const FACTORS: Records<TotpRecord> = Records::new(Table::Totp);
/// Pending enrolments by enrolment id.
const PENDING: Records<PendingEnrolment> = Records::new(Table::TotpEnrollments);

/// The TOTP generator for a secret, with the pinned parameters.
pub fn totp(secret: &[u8], issuer: &str, account: &str) -> Result<Totp, CommandError> {
    totp_rs::Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(6)
        .with_step_duration(30)
        .with_skew(1)
        .with_secret(secret.to_vec())
        .with_issuer(Some(issuer.replace(':', "")))
        .with_account_name(account.replace(':', ""))
        .build()
        .map_err(|e| {
            tracing::error!(error = %e, "building a TOTP generator failed");
            CommandError::internal()
        })
}

/// AAD of a confirmed TOTP secret.
pub(crate) fn aad_confirmed(user_id: &str) -> Vec<u8> {
    format!("totp:{user_id}").into_bytes()
}

/// AAD of a pending enrolment's sealed secret.
pub fn aad_enrolment(id: &str) -> Vec<u8> {
    format!("totp-enrolment:{id}").into_bytes()
}

/// Seals a secret for storage.
pub fn seal(ctx: &Ctx, aad: &[u8], secret: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(ctx.app.sealer.seal(ctx.app.rng.as_ref(), aad, secret))
}

/// Opens a sealed secret.
pub fn unseal(ctx: &Ctx, aad: &[u8], sealed: &str) -> Result<Zeroizing<Vec<u8>>, CommandError> {
    let raw = URL_SAFE_NO_PAD
        .decode(sealed)
        .map_err(|_| CommandError::internal())?;
    ctx.app.sealer.open(aad, &raw).map_err(|e| {
        tracing::error!(error = %e, "a TOTP secret does not unseal");
        CommandError::internal()
    })
}

/// The batch creating the confirmed factor for `user_id` with `secret`, counting `step` as
/// used, if the user has none.
pub fn confirmation(ctx: &Ctx, user_id: &str, secret: &[u8], step: u64) -> Batch {
    FACTORS.inserting(
        user_id,
        &TotpRecord {
            sealed_secret: seal(ctx, &aad_confirmed(user_id), secret),
            confirmed_at: ctx.now().unix_timestamp(),
            last_step: step,
            failures: 0,
            next_attempt_at: 0,
        },
    )
}

/// A batch check that the user has a confirmed TOTP factor (what recovery codes stand in for).
pub fn held(user_id: &str) -> Batch {
    Batch::new().check(FACTORS.table(), user_id, Expect::Present)
}

/// Whether the user has a confirmed TOTP factor.
pub async fn has_totp(ctx: &Ctx, user_id: &str) -> Result<bool, CommandError> {
    Ok(FACTORS
        .read(ctx.app.store.as_ref(), user_id.as_bytes())
        .await?
        .is_some())
}

fn delay_after(failures: u32) -> i64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    let exp = (failures - FREE_FAILURES + 1).min(20);
    (1i64 << exp).min(MAX_DELAY_S)
}

/// Checks a TOTP code for `user_id` at the current time. Exactly-once per time step; delays
/// after repeated failures (`TOO_MANY_ATTEMPTS` with `retry_after_ms`).
pub async fn verify_totp(ctx: &Ctx, user_id: &str, code: &Secret) -> Result<(), CommandError> {
    let invalid = || CommandError::new(ErrorCode::InvalidCredentials, "the code is not valid");
    let now = ctx.now().unix_timestamp();
    // Judged against the stored record; a concurrent attempt that moved it first makes this
    // one judge again against the newer record.
    let judged = FACTORS
        .edit(ctx.app.store.as_ref(), user_id.as_bytes(), |rec| {
            if now < rec.next_attempt_at {
                let wait = u64::try_from(rec.next_attempt_at - now).unwrap_or(1) * 1000;
                ctx.audit.event("totp.failed");
                ctx.audit.note("reason", "delayed");
                return Err(CommandError::new(
                    ErrorCode::TooManyAttempts,
                    "too many wrong codes; wait before trying again",
                )
                .with_retry_after_ms(wait));
            }
            let secret = unseal(ctx, &aad_confirmed(user_id), &rec.sealed_secret)?;
            let generator = totp(&secret, "p", "u")?;
            let matched = generator.check(code.expose(), u64::try_from(now).unwrap_or(0));
            Ok(Edit::Write(match matched {
                Some(step) if step > rec.last_step => {
                    rec.last_step = step;
                    rec.failures = 0;
                    rec.next_attempt_at = 0;
                    Ok(())
                }
                Some(_) => {
                    ctx.audit.event("totp.replay_refused");
                    rec.failures += 1;
                    rec.next_attempt_at = now + delay_after(rec.failures);
                    Err(rec.failures)
                }
                None => {
                    ctx.audit.event("totp.failed");
                    rec.failures += 1;
                    rec.next_attempt_at = now + delay_after(rec.failures);
                    Err(rec.failures)
                }
            }))
        })
        .await?
        .ok_or_else(invalid)?;
    judged.map_err(|failures| {
        ctx.audit.note("failures", u64::from(failures));
        invalid()
    })
}

/// The removal of the user's TOTP factor, checked against the record as read (or its absence),
/// and whether there was one.
pub async fn removal(ctx: &Ctx, user_id: &str) -> Result<(Batch, bool), CommandError> {
    let key = user_id.as_bytes();
    Ok(match FACTORS.read(ctx.app.store.as_ref(), key).await? {
        Some(old) => (FACTORS.replacing(key, &old, None), true),
        None => (
            Batch::new().check(FACTORS.table(), key, Expect::Absent),
            false,
        ),
    })
}

/// The authenticator app's tables: secrets sealed (confirmed and pending), enrolments expire.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Totp, Table::TotpEnrollments]
    }

    async fn reseal(
        &self,
        store: &dyn Store,
        r: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        let confirmed = r
            .each(store, &FACTORS, |r, k, f| {
                let user_id = String::from_utf8_lossy(k);
                r.reseal(&aad_confirmed(&user_id), &mut f.sealed_secret)
            })
            .await?;
        let pending = r
            .each(store, &PENDING, |r, k, e| {
                let id = String::from_utf8_lossy(k);
                r.reseal(&aad_enrolment(&id), &mut e.sealed_secret)
            })
            .await?;
        Ok(vec![("TOTP secrets", confirmed + pending)])
    }

    async fn sweep(&self, store: &dyn Store, before: i64) -> Result<u64, StoreError> {
        sweep_expired(store, &PENDING, before, SWEEP_BATCH, |e| e.expires_at).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1, through the same generator the server uses (8-digit vectors
    /// reduced to the 6 digits the server pins).
    #[test]
    fn rfc_6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        let g = totp(secret, "Portcullis", "a@example.org").unwrap();
        for (t, eight) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            let six = &eight[2..];
            assert_eq!(g.generate(t).to_string(), six, "t={t}");
            assert_eq!(g.check(six, t), Some(t / 30));
            // ±1 step accepted, ±2 refused.
            assert_eq!(g.check(six, t + 30), Some(t / 30));
            assert_eq!(
                g.check(six, t.saturating_sub(30)),
                Some(t / 30).filter(|_| t >= 30)
            );
            assert_eq!(g.check(six, t + 60), None);
        }
    }

    #[test]
    fn delays_grow_after_five_failures_and_are_capped() {
        assert_eq!((0..5).map(delay_after).collect::<Vec<_>>(), vec![0; 5]);
        assert_eq!(delay_after(5), 2);
        assert_eq!(delay_after(6), 4);
        assert_eq!(delay_after(9), 32);
        assert_eq!(delay_after(40), MAX_DELAY_S);
    }
}
