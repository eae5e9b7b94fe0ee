//! Second factors: TOTP (RFC 6238 via totp-rs) and recovery codes, and the single-use tickets
//! that carry a sign-in from its first factor to its second.
//!
//! TOTP: SHA-1, 6 digits, 30 s steps, ±1 step of skew — the parameters every authenticator app
//! supports. The secret is 160 bits from the CSPRNG, sealed with the master key at rest. A
//! step accepted once is never accepted again: the last accepted step is advanced by
//! compare-and-swap, so of two concurrent requests with one valid code exactly one succeeds.
//! After 5 consecutive failures each further attempt must wait, 2 s doubling up to 15 min — a
//! delay, never a lockout an attacker could use to deny service. Success resets the count.

pub mod commands;

use crate::base::crypto::{hmac_sha256, random_token, sha256};
use crate::base::error::CommandError;
use crate::Ctx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{
    decode_record, encode_record, Applied, Batch, Cas, Consumed, Expect, Record, StoreError, Table,
};
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, Totp};
use zeroize::Zeroizing;

/// Consecutive failures allowed before attempts are delayed.
pub const FREE_FAILURES: u32 = 5;
/// Longest delay between attempts, seconds.
pub const MAX_DELAY_S: i64 = 15 * 60;
/// Recovery codes in a set.
pub const RECOVERY_CODES: usize = 10;
/// Prefix of `mfa_token`s.
pub const MFA_TOKEN_PREFIX: &str = "pmt_";
/// Lifetime of an `mfa_token`, seconds.
pub const MFA_TICKET_S: i64 = 5 * 60;
/// Lifetime of a pending TOTP enrolment, seconds.
pub const ENROLMENT_S: i64 = 10 * 60;

/// RFC 8176 `amr` for a TOTP code.
pub const AMR_OTP: &str = "otp";
/// RFC 8176 `amr` for multiple factors.
pub const AMR_MFA: &str = "mfa";
/// `amr` marker of a sign-in completed with a recovery code.
pub const AMR_RECOVERY: &str = "recovery";

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

/// One stored recovery code (the key holds its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for RecoveryRecord {
    const VERSION: u8 = 1;
}

/// A sign-in whose first factor verified and whose second is awaited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaTicket {
    /// The account.
    pub user_id: String,
    /// `amr` of the first factor.
    pub first_amr: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Consumed by a successful `MFA.VERIFY`.
    pub used: bool,
}

impl Record for MfaTicket {
    const VERSION: u8 = 1;
}

fn store_err(e: portcullis_store::RecordError) -> CommandError {
    CommandError::from(StoreError::from(e))
}

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

/// The confirmed factor for `user_id` with `secret`, counting `step` as used, ready to store.
pub fn confirmed_record(ctx: &Ctx, user_id: &str, secret: &[u8], step: u64) -> Vec<u8> {
    encode_record(&TotpRecord {
        sealed_secret: seal(ctx, &aad_confirmed(user_id), secret),
        confirmed_at: ctx.now().unix_timestamp(),
        last_step: step,
        failures: 0,
        next_attempt_at: 0,
    })
}

/// Whether the user has a confirmed TOTP factor.
pub async fn has_totp(ctx: &Ctx, user_id: &str) -> Result<bool, CommandError> {
    Ok(ctx
        .app
        .store
        .get(Table::Totp, user_id.as_bytes())
        .await?
        .is_some())
}

/// The second-factor methods a user can complete a sign-in with.
pub async fn methods(ctx: &Ctx, user_id: &str) -> Result<Vec<&'static str>, CommandError> {
    let mut m = Vec::new();
    if has_totp(ctx, user_id).await? {
        m.push("totp");
        if recovery_codes_left(ctx, user_id).await? > 0 {
            m.push("recovery_code");
        }
    }
    if !crate::factors::passkey::list(ctx, user_id)
        .await?
        .is_empty()
    {
        m.push("passkey");
    }
    Ok(m)
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
    let store = ctx.app.store.as_ref();
    let invalid = || CommandError::new(ErrorCode::InvalidCredentials, "the code is not valid");
    for _ in 0..16 {
        let Some(raw) = store.get(Table::Totp, user_id.as_bytes()).await? else {
            return Err(invalid());
        };
        let rec: TotpRecord = decode_record(&raw).map_err(store_err)?;
        let now = ctx.now().unix_timestamp();
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
        let mut next = rec.clone();
        let outcome = match matched {
            Some(step) if step > rec.last_step => {
                next.last_step = step;
                next.failures = 0;
                next.next_attempt_at = 0;
                Ok(())
            }
            Some(_) => {
                ctx.audit.event("totp.replay_refused");
                next.failures += 1;
                next.next_attempt_at = now + delay_after(next.failures);
                Err(invalid())
            }
            None => {
                ctx.audit.event("totp.failed");
                next.failures += 1;
                next.next_attempt_at = now + delay_after(next.failures);
                Err(invalid())
            }
        };
        match store
            .compare_and_swap(
                Table::Totp,
                user_id.as_bytes(),
                Some(&raw),
                Some(encode_record(&next)),
            )
            .await?
        {
            Cas::Swapped => {
                if outcome.is_err() {
                    ctx.audit.note("failures", u64::from(next.failures));
                }
                return outcome;
            }
            // Someone else moved the record (a concurrent attempt): judge again against it.
            Cas::Conflict { .. } => continue,
        }
    }
    Err(CommandError::new(ErrorCode::Unavailable, "too busy; retry"))
}

/// Removes the TOTP factor and every recovery code of a user, in one batch; whether there was
/// a factor.
pub async fn remove_totp(ctx: &Ctx, user_id: &str) -> Result<bool, CommandError> {
    let store = ctx.app.store.as_ref();
    for _ in 0..RECOVERY_ATTEMPTS {
        let factor = store.get(Table::Totp, user_id.as_bytes()).await?;
        let batch = match &factor {
            Some(raw) => Batch::new().swap(Table::Totp, user_id.as_bytes(), Some(raw), None),
            None => Batch::new().check(Table::Totp, user_id.as_bytes(), Expect::Absent),
        };
        let (codes, _) = recovery_code_removals(ctx, user_id).await?;
        if store.apply(batch.merge(codes)).await?.committed() {
            return Ok(factor.is_some());
        }
    }
    Err(StoreError::Busy.into())
}

fn normalize_recovery(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The store key of a recovery code as stored before codes were keyed: SHA-256 of the
/// normalised code. Still looked up, so codes handed out then keep working.
fn legacy_recovery_key(user_id: &str, code: &str) -> Vec<u8> {
    format!(
        "{user_id}/{}",
        hex::encode(sha256(normalize_recovery(code).as_bytes()))
    )
    .into_bytes()
}

/// The store key of a recovery code: HMAC-SHA-256 of `user_id/code` (normalised) under the
/// server's recovery-code key ([`load_or_create_recovery_key`]), behind `m:` so it never
/// collides with a legacy SHA-256 key. Without the key (sealed under the master key) a copy of
/// the database does not allow checking guesses offline.
fn recovery_key(key: &[u8; 32], user_id: &str, code: &str) -> Vec<u8> {
    let mac = hmac_sha256(
        key,
        format!("{user_id}/{}", normalize_recovery(code)).as_bytes(),
    );
    format!("{user_id}/m:{}", hex::encode(mac)).into_bytes()
}

/// Where the sealed recovery-code key lives in `Meta`.
pub const META_RECOVERY_KEY: &[u8] = b"recovery_code_key";
/// AAD of the sealed recovery-code key.
pub const RECOVERY_KEY_AAD: &[u8] = b"recovery-code-key";

/// The key under which recovery codes are stored (HMAC): 256 random bits made on first start,
/// kept in the store sealed under the master key. It is not derived from the master key, so a
/// master-key rotation re-seals it ([`crate::ops::rekey`]) and stored codes keep working.
pub async fn load_or_create_recovery_key(
    store: &dyn portcullis_store::Store,
    sealer: &crate::base::crypto::Sealer,
    rng: &dyn crate::base::random::SecureRandom,
) -> Result<Zeroizing<[u8; 32]>, crate::infra::node::NodeError> {
    use crate::infra::node::NodeError;
    for _ in 0..2 {
        if let Some(raw) = store.get(Table::Meta, META_RECOVERY_KEY).await? {
            let sealed = URL_SAFE_NO_PAD
                .decode(&raw)
                .map_err(|_| NodeError::Invalid("the recovery-code key is corrupt".into()))?;
            let plain = sealer.open(RECOVERY_KEY_AAD, &sealed).map_err(|_| {
                NodeError::Invalid(
                    "the recovery-code key does not unseal with the master key".into(),
                )
            })?;
            let key: [u8; 32] = plain
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::Invalid("the recovery-code key is corrupt".into()))?;
            return Ok(Zeroizing::new(key));
        }
        let mut fresh = Zeroizing::new([0u8; 32]);
        rng.fill(fresh.as_mut());
        let sealed = URL_SAFE_NO_PAD.encode(sealer.seal(rng, RECOVERY_KEY_AAD, fresh.as_ref()));
        // Insert-if-absent: of two racing starts, both end up with the stored key.
        store
            .compare_and_swap(
                Table::Meta,
                META_RECOVERY_KEY,
                None,
                Some(sealed.into_bytes()),
            )
            .await?;
    }
    Err(NodeError::Invalid(
        "the recovery-code key could not be stored".into(),
    ))
}

const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Characters of a recovery code (5 bits each: 120 bits, above ASVS 6.5.2's 112).
pub const RECOVERY_CODE_CHARS: usize = 24;
const _: () = assert!(RECOVERY_CODE_CHARS * 5 >= 112);

/// A recovery code: 24 base32 characters (120 bits), `xxxx-xxxx-xxxx-xxxx-xxxx-xxxx`.
fn recovery_code(ctx: &Ctx) -> Zeroizing<String> {
    let bytes = Zeroizing::new(ctx.random_bytes::<RECOVERY_CODE_CHARS>());
    let mut out = Zeroizing::new(String::with_capacity(RECOVERY_CODE_CHARS + 5));
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        // 256 is a multiple of 32: every character is uniform.
        out.push(char::from(BASE32_LOWER[usize::from(b & 31)]));
    }
    out
}

/// The writes removing every recovery code of a user, and whether there was any.
pub async fn recovery_code_removals(
    ctx: &Ctx,
    user_id: &str,
) -> Result<(Batch, bool), CommandError> {
    let prefix = format!("{user_id}/").into_bytes();
    let mut batch = Batch::new();
    let mut any = false;
    for (k, _) in ctx
        .app
        .store
        .scan_prefix(Table::RecoveryCodes, &prefix, usize::MAX)
        .await?
    {
        batch = batch.remove(Table::RecoveryCodes, k);
        any = true;
    }
    Ok((batch, any))
}

/// The writes that replace a user's recovery codes with a fresh set of ten, and the codes
/// (shown once). Applied in one batch, no interleaving leaves two sets or a partial one.
pub async fn recovery_code_writes(
    ctx: &Ctx,
    user_id: &str,
) -> Result<(Batch, Vec<Secret>), CommandError> {
    let (mut batch, _) = recovery_code_removals(ctx, user_id).await?;
    let rec = encode_record(&RecoveryRecord {
        created_at: ctx.now().unix_timestamp(),
    });
    let mut out = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let code = recovery_code(ctx);
        batch = batch.put(
            Table::RecoveryCodes,
            recovery_key(&ctx.app.recovery_code_key, user_id, &code),
            rec.clone(),
        );
        out.push(Secret::new(code.as_str()));
    }
    Ok((batch, out))
}

/// Replaces a user's recovery codes with a fresh set of ten and returns them (shown once). The
/// old set goes and the new one arrives in one batch, which also checks that the factor they
/// belong to is still there and the calling session still live.
pub async fn new_recovery_codes(ctx: &Ctx, user_id: &str) -> Result<Vec<Secret>, CommandError> {
    for _ in 0..RECOVERY_ATTEMPTS {
        let (writes, codes) = recovery_code_writes(ctx, user_id).await?;
        let batch = Batch::new()
            .check(Table::Totp, user_id.as_bytes(), Expect::Present)
            .merge(crate::identity::evict::caller_adds_factor(ctx).await?)
            .merge(writes);
        match ctx.app.store.apply(batch).await? {
            Applied::Committed => return Ok(codes),
            Applied::Refused { check: 0, .. } => {
                return Err(CommandError::new(
                    ErrorCode::NotFound,
                    "no authenticator app is enrolled",
                ))
            }
            // The session record moved (a refresh) or a concurrent regeneration: plan again.
            Applied::Refused { .. } => continue,
        }
    }
    Err(StoreError::Busy.into())
}

/// Rounds of [`new_recovery_codes`] against concurrent writers before it gives up.
const RECOVERY_ATTEMPTS: usize = 8;

/// How many unused recovery codes a user has.
pub async fn recovery_codes_left(ctx: &Ctx, user_id: &str) -> Result<u64, CommandError> {
    let prefix = format!("{user_id}/").into_bytes();
    let n = ctx
        .app
        .store
        .scan_prefix(Table::RecoveryCodes, &prefix, usize::MAX)
        .await?
        .len();
    Ok(u64::try_from(n).unwrap_or(u64::MAX))
}

/// Uses a recovery code (single use: consumed by compare-and-swap, durable). Returns how many
/// are left.
pub async fn use_recovery_code(
    ctx: &Ctx,
    user_id: &str,
    code: &Secret,
) -> Result<u64, CommandError> {
    let invalid = || CommandError::new(ErrorCode::InvalidCredentials, "the code is not valid");
    let store = ctx.app.store.as_ref();
    // The keyed form first, then the SHA-256 form of codes issued before it.
    let mut found = None;
    for key in [
        recovery_key(&ctx.app.recovery_code_key, user_id, code.expose()),
        legacy_recovery_key(user_id, code.expose()),
    ] {
        if let Some(current) = store.get(Table::RecoveryCodes, &key).await? {
            found = Some((key, current));
            break;
        }
    }
    let Some((key, current)) = found else {
        ctx.audit.event("recovery.failed");
        return Err(invalid());
    };
    match store.consume(Table::RecoveryCodes, &key, &current).await? {
        Consumed::Won => {
            let left = recovery_codes_left(ctx, user_id).await?;
            ctx.audit.event("recovery.used");
            ctx.audit.note("recovery_codes_left", left);
            Ok(left)
        }
        Consumed::Lost => {
            ctx.audit.event("recovery.failed");
            Err(invalid())
        }
    }
}

/// Opens a ticket for the second factor of a sign-in and returns its `mfa_token`.
pub async fn issue_ticket(
    ctx: &Ctx,
    user_id: &str,
    first_amr: &[String],
) -> Result<Secret, CommandError> {
    let token = random_token(ctx.app.rng.as_ref(), MFA_TOKEN_PREFIX);
    let ticket = MfaTicket {
        user_id: user_id.to_owned(),
        first_amr: first_amr.to_vec(),
        expires_at: ctx.now().unix_timestamp() + MFA_TICKET_S,
        used: false,
    };
    ctx.app
        .store
        .put(
            Table::MfaTickets,
            &sha256(token.as_bytes()),
            encode_record(&ticket),
        )
        .await?;
    Ok(Secret::new(token.as_str()))
}

/// A live ticket and its stored bytes.
pub struct LiveTicket {
    /// The ticket.
    pub ticket: MfaTicket,
    raw: Vec<u8>,
    key: [u8; 32],
}

impl LiveTicket {
    /// SHA-256 of the `mfa_token` (the ticket's store key).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }
}

/// Looks up a ticket: `INVALID_CREDENTIALS` if unknown, `EXPIRED`, `ALREADY_USED`.
pub async fn ticket(ctx: &Ctx, token: &Secret) -> Result<LiveTicket, CommandError> {
    let key = sha256(token.expose().as_bytes());
    let raw = ctx
        .app
        .store
        .get(Table::MfaTickets, &key)
        .await?
        .ok_or_else(|| {
            CommandError::new(ErrorCode::InvalidCredentials, "the mfa_token is not valid")
        })?;
    let ticket: MfaTicket = decode_record(&raw).map_err(store_err)?;
    if ticket.used {
        return Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this sign-in has already been completed",
        ));
    }
    if ctx.now().unix_timestamp() >= ticket.expires_at {
        return Err(CommandError::new(
            ErrorCode::Expired,
            "the sign-in took too long; start again",
        ));
    }
    Ok(LiveTicket { ticket, raw, key })
}

/// Marks a ticket used (compare-and-swap; the loser of a race gets `ALREADY_USED`).
pub async fn consume_ticket(ctx: &Ctx, live: &LiveTicket) -> Result<(), CommandError> {
    let used = MfaTicket {
        used: true,
        ..live.ticket.clone()
    };
    match ctx
        .app
        .store
        .compare_and_swap(
            Table::MfaTickets,
            &live.key,
            Some(&live.raw),
            Some(encode_record(&used)),
        )
        .await?
    {
        Cas::Swapped => Ok(()),
        Cas::Conflict { .. } => Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this sign-in has already been completed",
        )),
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

    #[test]
    fn recovery_codes_normalise() {
        assert_eq!(
            normalize_recovery("ABCDE-fghij -KLMNO-pqrs"),
            "abcdefghijklmnopqrs"
        );
        let k = [7u8; 32];
        assert_eq!(
            recovery_key(&k, "u", "ABCDE-FGHIJ"),
            recovery_key(&k, "u", "abcdefghij")
        );
        assert_ne!(
            recovery_key(&k, "u", "abcde"),
            recovery_key(&k, "v", "abcde")
        );
        assert_ne!(
            recovery_key(&k, "u", "abcde"),
            recovery_key(&[8u8; 32], "u", "abcde")
        );
        assert_eq!(
            legacy_recovery_key("u", "ABCDE-FGHIJ"),
            legacy_recovery_key("u", "abcdefghij")
        );
    }
}

#[cfg(test)]
mod recovery_tests {
    use super::*;
    use crate::testkit::Bench;
    use portcullis_store::Store as _;
    use serde_json::json;

    const PW: &str = "correct horse battery staple";

    /// Signs up with a password and an authenticator app; returns the user id and the codes.
    async fn enrolled(b: &Bench, email: &str) -> (String, Vec<String>) {
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": email, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        let (confirm, _) = b.pending_totp(&access).await;
        let c = b.ok("TOTP.CONFIRM", confirm, Some(&access)).await;
        let codes = c["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        (s["user_id"].as_str().unwrap().to_owned(), codes)
    }

    async fn sign_in_with(b: &Bench, email: &str, code: &str) -> Option<ErrorCode> {
        let r = b
            .call("AUTH.LOGIN", json!({"email": email, "password": PW}), None)
            .await;
        let d = r.error.unwrap().details.unwrap();
        b.call(
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "recovery_code", "code": code}),
            None,
        )
        .await
        .error_code()
    }

    async fn stored_keys(b: &Bench, user_id: &str) -> Vec<String> {
        b.app
            .store
            .scan_prefix(
                Table::RecoveryCodes,
                format!("{user_id}/").as_bytes(),
                usize::MAX,
            )
            .await
            .unwrap()
            .into_iter()
            .map(|(k, _)| String::from_utf8(k).unwrap())
            .collect()
    }

    /// ASVS 6.5.2: 24 characters of a 32-letter alphabet (120 bits), stored as an HMAC under a
    /// server key, not as a plain SHA-256 of the code.
    #[tokio::test]
    async fn new_recovery_codes_have_120_bits_and_are_stored_keyed() {
        let b = Bench::new(|_| {}).await;
        let (user_id, codes) = enrolled(&b, "rc@example.org").await;
        assert_eq!(codes.len(), RECOVERY_CODES);
        for c in &codes {
            let groups: Vec<&str> = c.split('-').collect();
            assert_eq!(groups.len(), 6, "{c}");
            assert!(groups.iter().all(|g| g.len() == 4), "{c}");
            let chars: String = groups.concat();
            assert!(chars.bytes().all(|x| BASE32_LOWER.contains(&x)), "{c}");
            assert_eq!(chars.len(), RECOVERY_CODE_CHARS);
            // 5 bits a character: at least ASVS 6.5.2's 112.
            assert!(chars.len() * 5 >= 112, "{c}");
        }
        let keys = stored_keys(&b, &user_id).await;
        assert_eq!(keys.len(), RECOVERY_CODES);
        for c in &codes {
            let plain = hex::encode(sha256(normalize_recovery(c).as_bytes()));
            let with_user = hex::encode(sha256(
                format!("{user_id}/{}", normalize_recovery(c)).as_bytes(),
            ));
            assert!(
                keys.iter()
                    .all(|k| !k.contains(&plain) && !k.contains(&with_user)),
                "a plain SHA-256 of the code is stored"
            );
            let keyed =
                String::from_utf8(recovery_key(&b.app.recovery_code_key, &user_id, c)).unwrap();
            assert!(keys.contains(&keyed));
        }
        assert!(keys.iter().all(|k| k.starts_with(&format!("{user_id}/m:"))));
        assert_eq!(sign_in_with(&b, "rc@example.org", &codes[0]).await, None);
        assert_eq!(
            sign_in_with(&b, "rc@example.org", &codes[0]).await,
            Some(ErrorCode::InvalidCredentials),
            "single use"
        );
    }

    /// A code issued before keyed storage (stored as SHA-256 of the code) still signs in, once.
    #[tokio::test]
    async fn a_code_stored_in_the_old_sha256_form_still_works_once() {
        let b = Bench::new(|_| {}).await;
        let (user_id, _) = enrolled(&b, "old@example.org").await;
        let old_code = "abcde-fghij-klmno-pqrs";
        b.app
            .store
            .put(
                Table::RecoveryCodes,
                &legacy_recovery_key(&user_id, old_code),
                encode_record(&RecoveryRecord { created_at: 0 }),
            )
            .await
            .unwrap();
        assert_eq!(
            sign_in_with(&b, "old@example.org", "ABCDE FGHIJ KLMNO PQRS").await,
            None
        );
        assert_eq!(
            sign_in_with(&b, "old@example.org", old_code).await,
            Some(ErrorCode::InvalidCredentials)
        );
        assert_eq!(stored_keys(&b, &user_id).await.len(), RECOVERY_CODES);
    }

    /// The recovery-code key is stored sealed, not derived from the master key: a master-key
    /// rotation re-seals it and it stays the same, so stored codes keep verifying.
    #[tokio::test]
    async fn the_recovery_code_key_survives_a_master_key_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        let (before, master_before) = {
            let n = crate::infra::node::Node::open(&d).await.unwrap();
            let sealer = crate::base::crypto::Sealer::new(&n.master_key);
            let k = load_or_create_recovery_key(n.store.as_ref(), &sealer, &crate::OsRandom)
                .await
                .unwrap();
            let again = load_or_create_recovery_key(n.store.as_ref(), &sealer, &crate::OsRandom)
                .await
                .unwrap();
            assert_eq!(*k, *again, "made once");
            n.store.close();
            (*k, *n.master_key.expose())
        };
        crate::ops::rekey::rotate_master_key(&d).await.unwrap();
        let n = crate::infra::node::Node::open(&d).await.unwrap();
        assert_ne!(*n.master_key.expose(), master_before);
        let sealer = crate::base::crypto::Sealer::new(&n.master_key);
        let after = load_or_create_recovery_key(n.store.as_ref(), &sealer, &crate::OsRandom)
            .await
            .unwrap();
        assert_eq!(*after, before);
        n.store.close();
    }
}
