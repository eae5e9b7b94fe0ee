//! Access tokens: compact JWS (JWT) signed with Ed25519.
//!
//! The algorithm is pinned, never negotiated: a token verifies only if its header is exactly
//! `{"alg":"EdDSA","kid":…,"typ":"at+jwt"}` (RFC 9068) with a `kid` of the key ring that still
//! verifies, its signature verifies strictly (`verify_strict`: no small-order keys, no
//! malleable signatures) under that key, its issuer and audience are ours, its lifetime
//! (`exp - iat`) is at most the configured one, it has not expired, and it was not issued more
//! than the allowed skew in the future. `alg: none`, HMAC "keyed with the public key", unknown
//! `kid`s and anything else are refused before any claim is read.

use crate::base::clock::Clock;
use crate::base::crypto::{sha256, Sealer};
use crate::base::random::SecureRandom;
use crate::infra::records::{Records, ResealError, Resealer, TableOwner};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use portcullis_store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;
use zeroize::Zeroizing;

/// Longest token the verifier looks at.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Tokens whose signature is remembered as verified, at most.
const VERIFIED_CACHE: usize = 65_536;
/// How far in the future `iat` may be (clock skew between issuers).
pub const MAX_FUTURE_SKEW_S: i64 = 60;

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessClaims {
    /// Issuer (the configured `issuer`).
    pub iss: String,
    /// Audience (the configured `audience`).
    pub aud: String,
    /// User id.
    pub sub: String,
    /// Session id.
    pub sid: String,
    /// Authenticator assurance level: 0 (nothing proven: a passwordless sign-up), 1 or 2.
    pub aal: u8,
    /// Authentication methods (RFC 8176 values).
    pub amr: Vec<String>,
    /// When the user last proved a factor in this session (Unix seconds; OpenID Connect).
    pub auth_time: i64,
    /// `mfa_enrolment` for a session that may only enrol a second factor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The session generation the token was issued in; a step-up starts a new one.
    pub sgen: u64,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// Expires at (Unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

/// Why a token was refused (never shown to clients in detail: they get `UNAUTHENTICATED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not three base64url parts of JSON, too long, or extra header members.
    Malformed,
    /// `alg` is not `EdDSA`.
    Algorithm,
    /// `kid` is not in the key ring.
    UnknownKey,
    /// The signature does not verify.
    Signature,
    /// The issuer is not ours.
    Issuer,
    /// The audience is not ours.
    Audience,
    /// `exp - iat` is longer than the configured access-token lifetime.
    Lifetime,
    /// Expired.
    Expired,
    /// Issued too far in the future.
    NotYetValid,
}

impl TokenError {
    /// Short name for audit summaries.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::Algorithm => "algorithm",
            TokenError::UnknownKey => "unknown_kid",
            TokenError::Signature => "bad_signature",
            TokenError::Issuer => "issuer",
            TokenError::Audience => "audience",
            TokenError::Lifetime => "lifetime",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
        }
    }
}

/// A stored signing key: the private half sealed with the master key.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub(crate) kid: String,
    created_at: i64,
    /// Tokens signed by a retired key stop verifying after this time (Unix seconds).
    verify_until: Option<i64>,
    active: bool,
    public_key: String,
    pub(crate) sealed_private_key: String,
}

impl Record for KeyRecord {
    const VERSION: u8 = 1;
}

struct Ring {
    active_kid: String,
    signer: SigningKey,
    verifiers: Vec<(String, VerifyingKey, Option<i64>)>,
    /// What the ring was built from: each key's `kid`, whether active, and `verify_until`.
    built_from: Vec<(String, bool, Option<i64>)>,
}

/// The key ring and the token codec.
pub struct Tokens {
    ring: RwLock<Arc<Ring>>,
    /// Serialises rotations (each reads every key record and writes several).
    rotating: tokio::sync::Mutex<()>,
    /// Other nodes share the store: they may create or rotate keys (see [`Tokens::reload`]).
    shared: bool,
    /// Serialises reloads of the ring.
    reloading: tokio::sync::Mutex<()>,
    /// Signing `kid` and claims of tokens whose signature verified, by SHA-256 of the token.
    verified: RwLock<std::collections::HashMap<[u8; 32], (String, AccessClaims)>>,
    issuer: String,
    audience: String,
    ttl_s: i64,
}

/// `typ` of access tokens (RFC 9068). `application/at+jwt` is accepted too, case-insensitively.
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

fn is_access_token_typ(typ: &str) -> bool {
    typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// RFC 7638 thumbprint of an Ed25519 public key, the key's `kid`.
fn thumbprint(public: &VerifyingKey) -> String {
    let x = URL_SAFE_NO_PAD.encode(public.as_bytes());
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(sha256(canonical.as_bytes()))
}

/// AAD of a signing key's sealed private half.
pub(crate) fn aad(kid: &str) -> Vec<u8> {
    format!("signing-key:{kid}").into_bytes()
}

impl Tokens {
    /// Loads the key ring from the store, creating the first signing key on first start. Of
    /// several nodes starting at once on an empty shared store, one creates the key and every
    /// node loads it.
    pub async fn load_or_create(
        store: &dyn Store,
        sealer: &Sealer,
        rng: &dyn SecureRandom,
        clock: &dyn Clock,
        issuer: String,
        audience: String,
        ttl_s: i64,
    ) -> Result<Tokens, StoreError> {
        let mut records = load_records(store).await?;
        if !records.iter().any(|r| r.active) {
            let rec = new_key_record(sealer, rng, clock.now().unix_timestamp());
            // The first key and a marker that a first key exists, together: a second node
            // racing this one finds the marker taken and loads the winner's key instead.
            let first = portcullis_store::Batch::new()
                .swap(
                    Table::Meta,
                    META_FIRST_SIGNING_KEY,
                    None,
                    Some(rec.kid.clone().into_bytes()),
                )
                .merge(SIGNING_KEYS.inserting(rec.kid.as_bytes(), &rec));
            if store.apply(first).await?.committed() {
                tracing::info!(kid = %rec.kid, "created a signing key");
            }
            records = load_records(store).await?;
        }
        let ring = build_ring(&records, sealer)?;
        Ok(Tokens {
            ring: RwLock::new(Arc::new(ring)),
            rotating: tokio::sync::Mutex::new(()),
            shared: store.shared(),
            reloading: tokio::sync::Mutex::new(()),
            verified: RwLock::new(std::collections::HashMap::new()),
            issuer,
            audience,
            ttl_s,
        })
    }

    fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.ring.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// On a shared store, reads the key records again and rebuilds the ring if another node
    /// created, rotated or retired a key since; whether the ring changed. Does nothing (and
    /// reads nothing) on a store of this node's own, where every change goes through here.
    pub async fn reload(&self, store: &dyn Store, sealer: &Sealer) -> Result<bool, StoreError> {
        if !self.shared {
            return Ok(false);
        }
        let _one_at_a_time = self.reloading.lock().await;
        let records = load_records(store).await?;
        if fingerprint(&records) == self.ring().built_from {
            return Ok(false);
        }
        let ring = build_ring(&records, sealer)?;
        tracing::debug!(active = %ring.active_kid, "reloaded the signing keys");
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        Ok(true)
    }

    /// [`Tokens::sign`] with the active key as the store has it now: on a shared store, a
    /// rotation made by another node is followed before this node signs again.
    pub async fn sign_current(
        &self,
        store: &dyn Store,
        sealer: &Sealer,
        claims: &AccessClaims,
    ) -> Result<Zeroizing<String>, StoreError> {
        self.reload(store, sealer).await?;
        Ok(self.sign(claims))
    }

    /// [`Tokens::verify`], and on a shared store, when the token names a key this node does not
    /// know (created by another node), once more after reloading the ring.
    pub async fn verify_current(
        &self,
        token: &str,
        now: OffsetDateTime,
        store: &dyn Store,
        sealer: &Sealer,
    ) -> Result<Result<AccessClaims, TokenError>, StoreError> {
        match self.verify(token, now) {
            Err(TokenError::UnknownKey) if self.reload(store, sealer).await? => {
                Ok(self.verify(token, now))
            }
            verified => Ok(verified),
        }
    }

    /// Access token lifetime in seconds.
    pub fn ttl_s(&self) -> i64 {
        self.ttl_s
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The audience.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// Signs claims with the active key.
    pub fn sign(&self, claims: &AccessClaims) -> Zeroizing<String> {
        let ring = self.ring();
        let header = format!(
            r#"{{"alg":"EdDSA","kid":"{}","typ":"{ACCESS_TOKEN_TYP}"}}"#,
            ring.active_kid
        );
        let payload = serde_json::to_vec(claims).unwrap_or_default();
        let mut out = Zeroizing::new(String::with_capacity(512));
        out.push_str(&URL_SAFE_NO_PAD.encode(header.as_bytes()));
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(&payload));
        let sig: Signature = ring.signer.sign(out.as_bytes());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
        out
    }

    /// Verifies a token and returns its claims.
    ///
    /// A token whose signature has verified once is remembered (by its SHA-256, in a bounded
    /// cache, with the `kid` that signed it), so later uses skip the Ed25519 verification. The
    /// checks that can change with time or with the key ring run on every use, cached or not:
    /// the signing key still verifies (not retired, not past its `verify_until`), the token's
    /// lifetime is within the configured one, `exp`, and `iat`. Revocation is the session
    /// check's job, made on every command.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<AccessClaims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let digest = sha256(token.as_bytes());
        let cached = self
            .verified
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
            .cloned();
        let now_s = now.unix_timestamp();
        let claims = match cached {
            Some((kid, claims)) => {
                // A cache hit skipped the signature check, not the key's retirement.
                self.key_still_verifies(&kid, now_s)?;
                claims
            }
            None => {
                let c = self.verify_signature(token, now_s)?;
                let mut cache = self.verified.write().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= VERIFIED_CACHE {
                    cache.clear();
                }
                cache.insert(digest, c.clone());
                c.1
            }
        };
        if claims.exp - claims.iat > self.ttl_s {
            return Err(TokenError::Lifetime);
        }
        if now_s >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now_s + MAX_FUTURE_SKEW_S {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    /// The verifying key `kid`, if the ring holds it and it has not retired by `now_s`.
    fn key_still_verifies(&self, kid: &str, now_s: i64) -> Result<VerifyingKey, TokenError> {
        let ring = self.ring();
        let (_, key, verify_until) = ring
            .verifiers
            .iter()
            .find(|(k, _, _)| k == kid)
            .ok_or(TokenError::UnknownKey)?;
        if verify_until.is_some_and(|u| now_s > u) {
            return Err(TokenError::UnknownKey);
        }
        Ok(*key)
    }

    /// Everything but the checks made on every use: shape, pinned algorithm and type, key ring,
    /// signature, issuer, audience. Returns the signing `kid` with the claims.
    fn verify_signature(
        &self,
        token: &str,
        now_s: i64,
    ) -> Result<(String, AccessClaims), TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let b64 = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| TokenError::Malformed);
        let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| TokenError::Malformed)?;
        if header.alg != "EdDSA" {
            return Err(TokenError::Algorithm);
        }
        if !header.typ.as_deref().is_some_and(is_access_token_typ) {
            return Err(TokenError::Malformed);
        }
        let key = self.key_still_verifies(&header.kid, now_s)?;
        let sig_bytes: [u8; 64] = b64(s)?.try_into().map_err(|_| TokenError::Malformed)?;
        let signed = &token[..h.len() + 1 + p.len()];
        key.verify_strict(signed.as_bytes(), &Signature::from_bytes(&sig_bytes))
            .map_err(|_| TokenError::Signature)?;
        let claims: AccessClaims =
            serde_json::from_slice(&b64(p)?).map_err(|_| TokenError::Malformed)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer);
        }
        if claims.aud != self.audience {
            return Err(TokenError::Audience);
        }
        Ok((header.kid, claims))
    }

    /// Makes a new signing key active. The previous keys keep verifying the tokens they signed
    /// until those have expired (now + the access-token lifetime), then retire.
    pub async fn rotate(
        &self,
        store: &dyn Store,
        sealer: &Sealer,
        rng: &dyn SecureRandom,
        now: i64,
    ) -> Result<String, StoreError> {
        let _one_at_a_time = self.rotating.lock().await;
        let stored = SIGNING_KEYS.scan(store, b"", usize::MAX).await?;
        // One batch: every active key is replaced and the new one becomes active together, so a
        // crash leaves the old key active or the rotation done, never no active key.
        let mut batch = portcullis_store::Batch::new();
        let mut records = Vec::with_capacity(stored.len() + 1);
        for (_, old) in &stored {
            let mut r = old.record.clone();
            if r.active {
                r.active = false;
                r.verify_until = Some(now + self.ttl_s);
                batch = batch.merge(SIGNING_KEYS.replacing(r.kid.as_bytes(), old, Some(&r)));
            }
            records.push(r);
        }
        let fresh = new_key_record(sealer, rng, now);
        batch = batch.merge(SIGNING_KEYS.inserting(fresh.kid.as_bytes(), &fresh));
        if !store.apply(batch).await?.committed() {
            // Rotations are serialised here; only another process could have changed the keys.
            return Err(StoreError::Busy);
        }
        let kid = fresh.kid.clone();
        records.push(fresh);
        let ring = build_ring(&records, sealer)?;
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ring);
        tracing::info!(%kid, "rotated the signing key");
        Ok(kid)
    }

    /// Every key: (kid, created_at, active, verify_until), the active one first, then newest
    /// first.
    pub async fn list(
        &self,
        store: &dyn Store,
    ) -> Result<Vec<(String, i64, bool, Option<i64>)>, StoreError> {
        let mut out: Vec<_> = load_records(store)
            .await?
            .into_iter()
            .map(|r| (r.kid, r.created_at, r.active, r.verify_until))
            .collect();
        // The active key first, then newest first (keys made in the same second keep that order).
        out.sort_by_key(|k| (std::cmp::Reverse(k.2), std::cmp::Reverse(k.1)));
        Ok(out)
    }

    /// The public keys that verify tokens now, as a JWK Set (retired keys leave it once the
    /// last token they signed has expired).
    pub fn jwks_at(&self, now: i64) -> Value {
        let ring = self.ring();
        let keys: Vec<Value> = ring
            .verifiers
            .iter()
            .filter(|(_, _, until)| until.is_none_or(|u| now <= u))
            .map(|(kid, key, _)| {
                json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(key.as_bytes()),
                    "kid": kid,
                    "use": "sig",
                    "alg": "EdDSA",
                })
            })
            .collect();
        json!({ "keys": keys })
    }
}

/// Signing keys by `kid`, private halves sealed with the master key.
const SIGNING_KEYS: Records<KeyRecord> = Records::new(Table::SigningKeys);

/// Meta key claimed, with the first signing key, by the one start that creates it.
const META_FIRST_SIGNING_KEY: &[u8] = b"first_signing_key";

/// What a ring is built from, in a stable order (see [`Ring::built_from`]).
fn fingerprint(records: &[KeyRecord]) -> Vec<(String, bool, Option<i64>)> {
    let mut f: Vec<_> = records
        .iter()
        .map(|r| (r.kid.clone(), r.active, r.verify_until))
        .collect();
    f.sort();
    f
}

async fn load_records(store: &dyn Store) -> Result<Vec<KeyRecord>, StoreError> {
    Ok(SIGNING_KEYS
        .scan(store, b"", usize::MAX)
        .await?
        .into_iter()
        .map(|(_, s)| s.record)
        .collect())
}

fn new_key_record(sealer: &Sealer, rng: &dyn SecureRandom, now: i64) -> KeyRecord {
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill(seed.as_mut());
    let key = SigningKey::from_bytes(&seed);
    let kid = thumbprint(&key.verifying_key());
    KeyRecord {
        sealed_private_key: URL_SAFE_NO_PAD.encode(sealer.seal(rng, &aad(&kid), seed.as_ref())),
        public_key: URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes()),
        kid,
        created_at: now,
        verify_until: None,
        active: true,
    }
}

fn build_ring(records: &[KeyRecord], sealer: &Sealer) -> Result<Ring, StoreError> {
    let corrupt = |what: &str| StoreError::Backend(format!("signing key record: {what}"));
    let active = records
        .iter()
        .filter(|r| r.active)
        .max_by_key(|r| r.created_at)
        .ok_or_else(|| corrupt("no active key"))?;
    let sealed = URL_SAFE_NO_PAD
        .decode(&active.sealed_private_key)
        .map_err(|_| corrupt("not base64"))?;
    let seed = sealer
        .open(&aad(&active.kid), &sealed)
        .map_err(|_| corrupt("does not decrypt with this master key"))?;
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| corrupt("bad length"))?;
    let signer = SigningKey::from_bytes(&seed);
    if thumbprint(&signer.verifying_key()) != active.kid {
        return Err(corrupt("kid does not match the key"));
    }
    let mut verifiers = Vec::new();
    for r in records {
        let raw: [u8; 32] = URL_SAFE_NO_PAD
            .decode(&r.public_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| corrupt("public key"))?;
        let key = VerifyingKey::from_bytes(&raw).map_err(|_| corrupt("public key"))?;
        verifiers.push((r.kid.clone(), key, r.verify_until));
    }
    Ok(Ring {
        active_kid: active.kid.clone(),
        signer,
        verifiers,
        built_from: fingerprint(records),
    })
}

/// The signing keys' part in rotation: their private halves are sealed.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::SigningKeys]
    }

    async fn reseal(
        &self,
        store: &dyn Store,
        r: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        let n = r
            .each(store, &SIGNING_KEYS, |r, _, k| {
                r.reseal(&aad(&k.kid), &mut k.sealed_private_key)
            })
            .await?;
        Ok(vec![("signing keys", n)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::clock::ManualClock;
    use crate::base::crypto::MasterKey;
    use crate::base::random::OsRandom;
    use portcullis_store::SledStore;
    use time::macros::datetime;

    async fn tokens(dir: &std::path::Path, clock: &ManualClock) -> Tokens {
        node(&SledStore::open(dir).unwrap(), clock).await
    }

    /// A node's key ring on `store` (shared or not).
    async fn node(store: &dyn Store, clock: &ManualClock) -> Tokens {
        Tokens::load_or_create(
            store,
            &Sealer::new(&MasterKey::from_bytes([1u8; 32])),
            &OsRandom,
            clock,
            "https://issuer.test".into(),
            "api.test".into(),
            900,
        )
        .await
        .unwrap()
    }

    fn kid_of(token: &str) -> String {
        let header = token.split('.').next().unwrap();
        let h: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        h.kid
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_starting_at_once_on_an_empty_shared_store_create_one_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let faults =
            crate::testkit::Faults::wrap_shared(Arc::new(SledStore::open(dir.path()).unwrap()));
        // Every start reads the (empty) keys before any of them writes one.
        faults.meet_on_read(Table::SigningKeys, 8);
        let store: Arc<dyn Store> = faults;
        let clock = ManualClock::new(datetime!(2026-12-04 12:00 UTC));
        let starts: Vec<_> = (0..8)
            .map(|_| {
                let (store, clock) = (Arc::clone(&store), clock.clone());
                tokio::spawn(
                    async move { node(store.as_ref(), &clock).await.ring().active_kid.clone() },
                )
            })
            .collect();
        let mut kids = Vec::new();
        for s in starts {
            kids.push(s.await.unwrap());
        }
        kids.dedup();
        assert_eq!(kids.len(), 1, "every node signs with the same key");
        assert_eq!(load_records(store.as_ref()).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn on_a_shared_store_a_key_made_by_another_node_verifies_and_signs_here() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            crate::testkit::Faults::wrap_shared(Arc::new(SledStore::open(dir.path()).unwrap()));
        let sealer = Sealer::new(&MasterKey::from_bytes([1u8; 32]));
        let clock = ManualClock::new(datetime!(2026-12-04 12:00 UTC));
        let now = clock.now().unix_timestamp();
        let (a, b) = (
            node(store.as_ref(), &clock).await,
            node(store.as_ref(), &clock).await,
        );
        let rotated = a
            .rotate(store.as_ref(), &sealer, &OsRandom, now)
            .await
            .unwrap();
        let from_a = a.sign(&claims(now));
        assert_eq!(kid_of(&from_a), rotated);
        assert_eq!(
            b.verify_current(&from_a, clock.now(), store.as_ref(), &sealer)
                .await
                .unwrap(),
            Ok(claims(now)),
            "B reloads its ring for a kid it does not know"
        );
        let from_b = b
            .sign_current(store.as_ref(), &sealer, &claims(now))
            .await
            .unwrap();
        assert_eq!(
            kid_of(&from_b),
            rotated,
            "B signs with the key A made active"
        );
    }

    fn claims(now: i64) -> AccessClaims {
        AccessClaims {
            iss: "https://issuer.test".into(),
            aud: "api.test".into(),
            sub: "u1".into(),
            sid: "s1".into(),
            aal: 1,
            amr: vec!["pwd".into()],
            auth_time: now,
            scope: None,
            sgen: 0,
            iat: now,
            exp: now + 900,
            jti: "j1".into(),
        }
    }

    fn b64(v: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[tokio::test]
    async fn round_trip_and_every_forgery_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let t = tokens(dir.path(), &clock).await;
        let now = clock.now().unix_timestamp();
        let tok = t.sign(&claims(now));
        assert_eq!(t.verify(&tok, clock.now()).unwrap(), claims(now));
        let parts: Vec<&str> = tok.split('.').collect();
        let kid = t.ring().active_kid.clone();

        // alg: none, with and without a signature.
        let none = b64(format!(r#"{{"alg":"none","kid":"{kid}","typ":"at+jwt"}}"#).as_bytes());
        assert_eq!(
            t.verify(&format!("{none}.{}.", parts[1]), clock.now()),
            Err(TokenError::Algorithm)
        );
        assert_eq!(
            t.verify(&format!("{none}.{}.{}", parts[1], parts[2]), clock.now()),
            Err(TokenError::Algorithm)
        );
        // HS256 "keyed with the public key": refused on the header alone.
        let hs = b64(format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"at+jwt"}}"#).as_bytes());
        assert_eq!(
            t.verify(&format!("{hs}.{}.{}", parts[1], parts[2]), clock.now()),
            Err(TokenError::Algorithm)
        );
        // Unknown kid.
        let other = b64(br#"{"alg":"EdDSA","kid":"nope","typ":"at+jwt"}"#);
        assert_eq!(
            t.verify(&format!("{other}.{}.{}", parts[1], parts[2]), clock.now()),
            Err(TokenError::UnknownKey)
        );
        // Edited claims keep the old signature.
        let mut c = claims(now);
        c.aal = 2;
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(t.verify(&forged, clock.now()), Err(TokenError::Signature));
        // Extra header members are refused.
        let extra =
            b64(format!(r#"{{"alg":"EdDSA","kid":"{kid}","typ":"at+jwt","jku":"x"}}"#).as_bytes());
        assert_eq!(
            t.verify(&format!("{extra}.{}.{}", parts[1], parts[2]), clock.now()),
            Err(TokenError::Malformed)
        );
        // Expired, and not yet valid beyond the skew.
        clock.advance(time::Duration::seconds(900));
        assert_eq!(t.verify(&tok, clock.now()), Err(TokenError::Expired));
        let future = t.sign(&AccessClaims {
            iat: now + 600,
            exp: now + 1500,
            ..claims(now)
        });
        clock.advance(time::Duration::seconds(-900));
        assert_eq!(t.verify(&future, clock.now()), Err(TokenError::NotYetValid));
        let slightly = t.sign(&AccessClaims {
            iat: now + 30,
            ..claims(now)
        });
        assert!(
            t.verify(&slightly, clock.now()).is_ok(),
            "within the 60 s skew"
        );
        // Garbage.
        for g in [
            "",
            "a.b",
            "a.b.c.d",
            "!!.!!.!!",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(t.verify(g, clock.now()).is_err(), "{g}");
        }
    }

    /// Signs `claims` with the active key under `header` (for tokens the server would not make).
    fn sign_with_header(t: &Tokens, header: &str, claims: &AccessClaims) -> String {
        let ring = t.ring();
        let header = header.replace("KID", &ring.active_kid);
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(&serde_json::to_vec(claims).unwrap())
        );
        let sig = ring.signer.sign(input.as_bytes());
        format!("{input}.{}", b64(&sig.to_bytes()))
    }

    #[tokio::test]
    async fn access_tokens_are_typed_at_jwt_and_carry_our_audience() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let t = tokens(dir.path(), &clock).await;
        let now = clock.now().unix_timestamp();
        let tok = t.sign(&claims(now));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(tok.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(header["typ"], "at+jwt");
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(tok.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["aud"], "api.test");

        // Correctly signed by our key, but not typed as an access token: refused.
        for header in [
            r#"{"alg":"EdDSA","kid":"KID","typ":"JWT"}"#,
            r#"{"alg":"EdDSA","kid":"KID"}"#,
            r#"{"alg":"EdDSA","kid":"KID","typ":null}"#,
            r#"{"alg":"EdDSA","kid":"KID","typ":"id_token+jwt"}"#,
        ] {
            let other = sign_with_header(&t, header, &claims(now));
            assert_eq!(
                t.verify(&other, clock.now()),
                Err(TokenError::Malformed),
                "{header}"
            );
        }
        let media = sign_with_header(
            &t,
            r#"{"alg":"EdDSA","kid":"KID","typ":"application/at+jwt"}"#,
            &claims(now),
        );
        assert!(
            t.verify(&media, clock.now()).is_ok(),
            "RFC 9068 allows the media type"
        );
        // Signed by our key for another audience: refused.
        let elsewhere = t.sign(&AccessClaims {
            aud: "another-api".into(),
            ..claims(now)
        });
        assert_eq!(t.verify(&elsewhere, clock.now()), Err(TokenError::Audience));
    }

    #[tokio::test]
    async fn a_cached_token_is_refused_once_its_key_retires() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let store = SledStore::open(dir.path()).unwrap();
        let sealer = Sealer::new(&MasterKey::from_bytes([1u8; 32]));
        let t = Tokens::load_or_create(
            &store,
            &sealer,
            &OsRandom,
            &clock,
            "https://issuer.test".into(),
            "api.test".into(),
            900,
        )
        .await
        .unwrap();
        let now = clock.now().unix_timestamp();
        let tok = t.sign(&claims(now));
        assert!(
            t.verify(&tok, clock.now()).is_ok(),
            "verified once: now cached"
        );
        // A rotation whose retirement time falls before the token's `exp` (as when the key
        // ring is reloaded with an earlier `verify_until`): past it, the token is refused,
        // cached or not.
        t.rotate(&store, &sealer, &OsRandom, now - 600)
            .await
            .unwrap();
        clock.advance(time::Duration::seconds(301));
        assert_eq!(t.verify(&tok, clock.now()), Err(TokenError::UnknownKey));
    }

    #[tokio::test]
    async fn a_token_living_longer_than_the_configured_lifetime_is_refused_cached_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let t = tokens(dir.path(), &clock).await;
        let now = clock.now().unix_timestamp();
        let exact = t.sign(&claims(now));
        assert!(t.verify(&exact, clock.now()).is_ok(), "exp - iat = ttl");
        let long = t.sign(&AccessClaims {
            exp: now + 901,
            ..claims(now)
        });
        assert_eq!(t.verify(&long, clock.now()), Err(TokenError::Lifetime));
        assert_eq!(t.verify(&long, clock.now()), Err(TokenError::Lifetime));
    }

    #[tokio::test]
    async fn the_key_survives_restarts_and_jwks_publishes_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(datetime!(2026-11-26 12:00 UTC));
        let tok = {
            let t = tokens(dir.path(), &clock).await;
            t.sign(&claims(clock.now().unix_timestamp()))
        };
        let t = tokens(dir.path(), &clock).await;
        assert!(t.verify(&tok, clock.now()).is_ok());
        let jwks = t.jwks_at(clock.now().unix_timestamp());
        assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
        assert_eq!(jwks["keys"][0]["kid"], t.ring().active_kid.as_str());
        assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    }
}
