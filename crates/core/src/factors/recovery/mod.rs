//! Recovery codes: ten single-use codes handed out with an authenticator app, standing in for
//! it when it is lost. Each is 120 bits, stored only as an HMAC under a server key that is itself
//! sealed under the master key; using one consumes it by compare-and-swap.

pub mod commands;

use crate::base::crypto::{hmac_sha256, sha256};
use crate::base::error::CommandError;
use crate::infra::records::{Records, ResealError, Resealer, TableOwner};
use crate::Ctx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{Applied, Batch, Consumed, Record, StoreError, Table};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Recovery codes in a set.
pub const RECOVERY_CODES: usize = 10;
/// `amr` marker of a sign-in completed with a recovery code.
pub const AMR_RECOVERY: &str = "recovery";

/// One stored recovery code (the key holds its hash).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryRecord {
    /// Unix seconds.
    pub created_at: i64,
}

impl Record for RecoveryRecord {
    const VERSION: u8 = 1;
}

/// Recovery codes by `user_id/` and the code's HMAC (or, for codes issued before they were
/// keyed, its SHA-256).
const CODES: Records<RecoveryRecord> = Records::new(Table::RecoveryCodes);

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
    let rec = RecoveryRecord {
        created_at: ctx.now().unix_timestamp(),
    };
    let mut out = Vec::with_capacity(RECOVERY_CODES);
    for _ in 0..RECOVERY_CODES {
        let code = recovery_code(ctx);
        batch = batch.merge(CODES.writing(
            recovery_key(&ctx.app.recovery_code_key, user_id, &code),
            &rec,
        ));
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
            .merge(crate::factors::totp::held(user_id))
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

/// Recovery codes, and the server key they are stored under (sealed in `Meta`, not derived,
/// so the stored codes stay valid across a master-key rotation).
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::RecoveryCodes]
    }

    async fn reseal(
        &self,
        store: &dyn portcullis_store::Store,
        r: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        if let Some(raw) = store.get(Table::Meta, META_RECOVERY_KEY).await? {
            let mut sealed = String::from_utf8(raw)
                .map_err(|_| ResealError::Invalid("the recovery-code key is corrupt".into()))?;
            if r.reseal(RECOVERY_KEY_AAD, &mut sealed)? {
                store
                    .put(Table::Meta, META_RECOVERY_KEY, sealed.into_bytes())
                    .await?;
            }
        }
        // Not counted in the rotation's report, which lists what operators keep an eye on.
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
mod flow_tests {
    use super::*;
    use crate::testkit::Bench;
    use portcullis_store::encode_record;
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
        crate::ops::rekey::rotate_master_key(&d, None)
            .await
            .unwrap();
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
