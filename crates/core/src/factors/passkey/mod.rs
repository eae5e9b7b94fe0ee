//! Passkeys (WebAuthn, via webauthn-rs): the relying party, stored credentials and ceremonies.
//!
//! Ceremony state lives in the store, not in process memory, expires after 5 minutes and is
//! consumed by one compare-and-swap, so a replayed FINISH gets `ALREADY_USED` and any node
//! could finish a ceremony another began. User verification is required for every passkey.
//!
//! `amr` of a passkey sign-in (RFC 8176): `hwk` for a device-bound credential (not backup
//! eligible: the key cannot leave the authenticator), `swk` for a synced one (backup eligible),
//! then `user` (the user was present) and, since user verification (PIN or biometric) is
//! required, `mfa`: possession plus knowledge or inherence, AAL2.

pub mod commands;

use crate::base::config::Config;
use crate::base::crypto::{hmac_sha256, random_id};
use crate::base::error::CommandError;
use crate::infra::records::{sweep_expired, Records, TableOwner, SWEEP_BATCH};
use crate::Ctx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::ErrorCode;
use portcullis_store::{Applied, Batch, Record, Table};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use webauthn_rs::fake::{FakePasskeyDistribution, WebauthnFakeCredentialGenerator};
use webauthn_rs::prelude::{
    AuthenticationResult, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Uuid, Webauthn,
    WebauthnBuilder,
};

/// Lifetime of a ceremony, seconds.
pub const CEREMONY_S: i64 = 5 * 60;

/// Builds the relying party from the configuration (`rp_id`, `rp_origins`, `product_name`).
pub fn relying_party(cfg: &Config) -> Result<Webauthn, String> {
    let mut origins = cfg
        .rp_origins
        .iter()
        .map(|o| Url::parse(o).map_err(|e| format!("rp_origins {o:?}: {e}")));
    let first = origins
        .next()
        .ok_or("rp_origins must name at least one origin")??;
    let mut b = WebauthnBuilder::new(&cfg.rp_id, &first)
        .map_err(|e| format!("rp_id {:?} does not fit {first}: {e:?}", cfg.rp_id))?
        .rp_name(&cfg.product_name);
    for o in origins {
        b = b.append_allowed_origin(&o?);
    }
    b.build().map_err(|e| format!("relying party: {e:?}"))
}

/// One stored passkey.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasskeyRecord {
    /// The credential (public key, counter, flags) as webauthn-rs keeps it.
    pub passkey: Passkey,
    /// The user's name for it.
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub last_used_at: Option<i64>,
    /// May be synced.
    pub backup_eligible: bool,
    /// Is synced.
    pub backup_state: bool,
}

impl Record for PasskeyRecord {
    const VERSION: u8 = 1;
}

/// What a ceremony is for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CeremonyKind {
    /// Adding a passkey to `user_id`.
    Register {
        /// Owner.
        user_id: String,
        /// Name for the new passkey.
        name: String,
        /// webauthn-rs state.
        state: PasskeyRegistration,
    },
    /// Signing in to `user_id` with one of its passkeys (or, with `mfa_ticket`, completing a
    /// sign-in with one as second factor).
    Login {
        /// The account.
        user_id: String,
        /// Hex SHA-256 of the `mfa_token` this ceremony serves, if any.
        mfa_ticket: Option<String>,
        /// webauthn-rs state.
        state: PasskeyAuthentication,
    },
    /// Usernameless sign-in with a discoverable credential.
    Discoverable {
        /// webauthn-rs state.
        state: DiscoverableAuthentication,
    },
    /// The answer to an address without passkeys: looks like `Login`, never succeeds.
    Decoy,
}

/// A stored ceremony.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CeremonyRecord {
    /// What for.
    pub kind: CeremonyKind,
    /// Unix seconds.
    pub expires_at: i64,
    /// Consumed by its FINISH.
    pub used: bool,
}

impl Record for CeremonyRecord {
    const VERSION: u8 = 1;
}

/// Passkeys by `user_id/credential_id`.
const PASSKEYS: Records<PasskeyRecord> = Records::new(Table::Passkeys);
/// Ceremonies by ceremony id.
const CEREMONIES: Records<CeremonyRecord> = Records::new(Table::Ceremonies);

/// The WebAuthn user handle of an account: its 128-bit id.
pub fn user_handle(user_id: &str) -> Result<Uuid, CommandError> {
    hex::decode(user_id)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(CommandError::internal)
}

/// The account of a user handle.
pub fn user_of_handle(handle: &Uuid) -> String {
    hex::encode(handle.as_bytes())
}

/// Credential ids as they appear in commands: base64url without padding.
pub fn credential_id_text(id: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

fn passkey_key(user_id: &str, cred: &str) -> Vec<u8> {
    format!("{user_id}/{cred}").into_bytes()
}

/// A user's passkeys with their store keys.
pub async fn list(ctx: &Ctx, user_id: &str) -> Result<Vec<PasskeyRecord>, CommandError> {
    let prefix = format!("{user_id}/").into_bytes();
    let mut out: Vec<PasskeyRecord> = PASSKEYS
        .scan(ctx.app.store.as_ref(), &prefix, usize::MAX)
        .await?
        .into_iter()
        .map(|(_, s)| s.record)
        .collect();
    out.sort_by_key(|p| p.created_at);
    Ok(out)
}

/// One passkey of a user by credential id text.
pub async fn get(
    ctx: &Ctx,
    user_id: &str,
    cred: &str,
) -> Result<Option<PasskeyRecord>, CommandError> {
    Ok(PASSKEYS
        .get(ctx.app.store.as_ref(), &passkey_key(user_id, cred))
        .await?)
}

/// Writes a passkey.
pub async fn put(ctx: &Ctx, user_id: &str, rec: &PasskeyRecord) -> Result<(), CommandError> {
    let cred = credential_id_text(rec.passkey.cred_id());
    PASSKEYS
        .put(ctx.app.store.as_ref(), &passkey_key(user_id, &cred), rec)
        .await?;
    Ok(())
}

/// Stores a newly registered passkey, claiming its credential id across all accounts
/// (`CONFLICT` if another account already has it). The claim, the passkey and a check that the
/// registering session is still live are one batch: a crash never leaves a claim without its
/// passkey, and a passkey never outlives the eviction or revocation of the session that added
/// it.
pub async fn add(ctx: &Ctx, user_id: &str, rec: &PasskeyRecord) -> Result<(), CommandError> {
    let cred = credential_id_text(rec.passkey.cred_id());
    for _ in 0..ADD_ATTEMPTS {
        let batch = Batch::new()
            .swap(
                Table::PasskeyIndex,
                cred.as_bytes(),
                None,
                Some(user_id.as_bytes().to_vec()),
            )
            .merge(PASSKEYS.writing(passkey_key(user_id, &cred), rec))
            .merge(crate::identity::evict::caller_adds_factor(ctx).await?);
        match ctx.app.store.apply(batch).await? {
            Applied::Committed => return Ok(()),
            Applied::Refused { check: 0, .. } => {
                return Err(CommandError::new(
                    ErrorCode::Conflict,
                    "this passkey is already registered",
                ))
            }
            // The session record moved (a refresh): check it again.
            Applied::Refused { .. } => continue,
        }
    }
    Err(portcullis_store::StoreError::Busy.into())
}

/// Rounds of [`add`] against concurrent writers before it gives up.
const ADD_ATTEMPTS: usize = 8;

/// Removes a passkey and its claim in the credential index, in one batch; whether it existed.
pub async fn remove(ctx: &Ctx, user_id: &str, cred: &str) -> Result<bool, CommandError> {
    let store = ctx.app.store.as_ref();
    let key = passkey_key(user_id, cred);
    for _ in 0..ADD_ATTEMPTS {
        let Some(old) = PASSKEYS.read(store, &key).await? else {
            return Ok(false);
        };
        let batch = PASSKEYS.replacing(key.clone(), &old, None).merge(
            crate::infra::records::release_claim(
                ctx.app.store.as_ref(),
                Table::PasskeyIndex,
                cred.as_bytes(),
                user_id,
            )
            .await?,
        );
        if store.apply(batch).await?.committed() {
            return Ok(true);
        }
    }
    Err(portcullis_store::StoreError::Busy.into())
}

/// The removal of every passkey of `user_id` with its claim in the credential index, each
/// checked against the record as read, and whether there was any.
pub async fn removals(ctx: &Ctx, user_id: &str) -> Result<(Batch, bool), CommandError> {
    let prefix = format!("{user_id}/").into_bytes();
    let mut batch = Batch::new();
    let mut any = false;
    for (k, raw) in ctx
        .app
        .store
        .scan_prefix(Table::Passkeys, &prefix, usize::MAX)
        .await?
    {
        let cred = k[prefix.len()..].to_vec();
        batch = batch.swap(Table::Passkeys, k, Some(&raw), None).merge(
            crate::infra::records::release_claim(
                ctx.app.store.as_ref(),
                Table::PasskeyIndex,
                cred,
                user_id,
            )
            .await?,
        );
        any = true;
    }
    Ok((batch, any))
}

/// The answer to a ceremony's begin: its id, the options for the browser, its lifetime.
pub fn ceremony(id: String, options: Value) -> portcullis_protocol::commands::passkey::Ceremony {
    portcullis_protocol::commands::passkey::Ceremony {
        ceremony_id: id,
        options,
        expires_in: u64::try_from(CEREMONY_S).unwrap_or(0),
    }
}

/// Stores a ceremony and returns its id.
pub async fn begin(ctx: &Ctx, kind: CeremonyKind) -> Result<String, CommandError> {
    let id = random_id(ctx.app.rng.as_ref());
    let rec = CeremonyRecord {
        kind,
        expires_at: ctx.now().unix_timestamp() + CEREMONY_S,
        used: false,
    };
    CEREMONIES
        .put(ctx.app.store.as_ref(), id.as_bytes(), &rec)
        .await?;
    Ok(id)
}

/// Consumes a ceremony: `INVALID_CREDENTIALS` unknown, `ALREADY_USED`, `EXPIRED`.
pub async fn take(ctx: &Ctx, id: &str) -> Result<CeremonyKind, CommandError> {
    let store = ctx.app.store.as_ref();
    let stored = CEREMONIES
        .read(store, id.as_bytes())
        .await?
        .ok_or_else(|| CommandError::new(ErrorCode::InvalidCredentials, "unknown ceremony"))?;
    let rec = &stored.record;
    if rec.used {
        ctx.audit.note("reason", "ceremony_replayed");
        return Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this ceremony has already been finished",
        ));
    }
    if ctx.now().unix_timestamp() >= rec.expires_at {
        ctx.audit.note("reason", "ceremony_expired");
        return Err(CommandError::new(
            ErrorCode::Expired,
            "the ceremony expired; begin again",
        ));
    }
    let used = CeremonyRecord {
        used: true,
        ..rec.clone()
    };
    if CEREMONIES
        .swap(store, id.as_bytes(), Some(&stored), Some(&used))
        .await?
    {
        Ok(used.kind)
    } else {
        Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this ceremony has already been finished",
        ))
    }
}

/// A refusal by webauthn-rs: `INVALID_CREDENTIALS`, with the reason in the audit record.
pub fn refused(ctx: &Ctx, e: webauthn_rs::prelude::WebauthnError) -> CommandError {
    let reason = format!("{e:?}");
    tracing::info!(%reason, "passkey refused");
    ctx.audit.event("passkey.refused");
    ctx.audit.note("reason", reason);
    CommandError::new(
        ErrorCode::InvalidCredentials,
        "the passkey could not be verified",
    )
}

/// Parses a browser credential for registration.
pub fn parse_registration(v: Value) -> Result<RegisterPublicKeyCredential, CommandError> {
    serde_json::from_value(v).map_err(|_| {
        CommandError::invalid_params("credential is not a WebAuthn registration response")
    })
}

/// Parses a browser credential for authentication.
pub fn parse_assertion(v: Value) -> Result<PublicKeyCredential, CommandError> {
    serde_json::from_value(v)
        .map_err(|_| CommandError::invalid_params("credential is not a WebAuthn assertion"))
}

/// After a verified assertion: updates the counter, backup flags and last use (by compare-and-
/// swap: a concurrent use never lowers the stored counter, and a passkey removed meanwhile is
/// not brought back — the sign-in is refused); records a backup-state change. Returns the `amr`
/// values of the passkey.
pub async fn after_assertion(
    ctx: &Ctx,
    user_id: &str,
    rec: PasskeyRecord,
    res: &AuthenticationResult,
) -> Result<Vec<String>, CommandError> {
    let store = ctx.app.store.as_ref();
    let key = passkey_key(user_id, &credential_id_text(rec.passkey.cred_id()));
    let gone = || {
        CommandError::new(
            ErrorCode::InvalidCredentials,
            "the passkey could not be verified",
        )
    };
    let now = ctx.now().unix_timestamp();
    let rec = PASSKEYS
        .update(store, &key, |cur: &mut PasskeyRecord| {
            cur.passkey.update_credential(res);
            if res.backup_state() != cur.backup_state {
                ctx.audit.event("passkey.backup_state_changed");
                ctx.audit.note("backup_state", res.backup_state());
            }
            cur.backup_state = res.backup_state();
            cur.backup_eligible = cur.backup_eligible || res.backup_eligible();
            cur.last_used_at = Some(now);
            Ok::<_, CommandError>(true)
        })
        .await?
        .ok_or_else(gone)?;
    ctx.audit
        .note("credential_id", credential_id_text(res.cred_id()));
    let mut amr = vec![
        if rec.backup_eligible { "swk" } else { "hwk" }.to_owned(),
        "user".to_owned(),
    ];
    if res.user_verified() {
        amr.push("mfa".to_owned());
    }
    Ok(amr)
}

/// Verifies an assertion against a `Login` ceremony for `user_id`; returns the `amr` values.
pub async fn verify_login(
    ctx: &Ctx,
    user_id: &str,
    state: &PasskeyAuthentication,
    credential: &PublicKeyCredential,
) -> Result<Vec<String>, CommandError> {
    let res = ctx
        .app
        .webauthn
        .finish_passkey_authentication(credential, state)
        .map_err(|e| refused(ctx, e))?;
    let rec = get(ctx, user_id, &credential_id_text(res.cred_id()))
        .await?
        .ok_or_else(|| {
            CommandError::new(
                ErrorCode::InvalidCredentials,
                "the passkey could not be verified",
            )
        })?;
    after_assertion(ctx, user_id, rec, &res).await
}

/// The allow-list of a decoy answer, for an address without an account or without passkeys:
/// stable per address (repeated requests look alike), unlinkable to anything real, and shaped
/// like a real one.
///
/// The ids come from webauthn-rs' fake credential generator (ChaCha8 seeded with an HMAC of the
/// address under a key derived from the master key), whose [`FakePasskeyDistribution`] draws
/// the number of ids and each id's length from the authenticators users actually have (Android
/// and Apple keychains, Windows Hello, security keys, password managers). An allow-list is
/// never empty (an account with passkeys lists at least one), so an empty draw is drawn again
/// under the next input. Each entry gets the transports a browser reports for an authenticator
/// of that kind, see [`decoy_transports`].
pub fn decoy_allow_credentials(ctx: &Ctx, email_key: &str) -> Value {
    let key = hmac_sha256(&ctx.app.code_key, b"passkey-decoy");
    let ids = WebauthnFakeCredentialGenerator::<FakePasskeyDistribution>::new(&key)
        .ok()
        .and_then(|generator| {
            (0u8..64)
                .filter_map(|round| {
                    generator
                        .generate(format!("{email_key}\0{round}").as_bytes())
                        .ok()
                })
                .find(|ids| !ids.is_empty())
        })
        .unwrap_or_default();
    Value::Array(
        ids.iter()
            .map(|id| {
                let mut entry = serde_json::Map::new();
                entry.insert("type".into(), "public-key".into());
                entry.insert("id".into(), URL_SAFE_NO_PAD.encode(id).into());
                if let Some(t) = decoy_transports(id.len()) {
                    entry.insert("transports".into(), t.into());
                }
                Value::Object(entry)
            })
            .collect(),
    )
}

/// The transports browsers report at registration for the authenticator kinds whose id lengths
/// webauthn-rs' generator uses (lexicographic order, as `getTransports()` returns them).
pub fn decoy_transports(id_len: usize) -> Option<Vec<&'static str>> {
    use webauthn_rs::fake::{
        APPLE_CRED_LEN, BITWARDEN_CRED_LEN, G_PIXEL_CRED_LEN, TPM_CRED_LEN, YUBIKEY_CRED_LEN,
    };
    match id_len {
        APPLE_CRED_LEN | G_PIXEL_CRED_LEN | BITWARDEN_CRED_LEN => Some(vec!["hybrid", "internal"]),
        TPM_CRED_LEN => Some(vec!["internal"]),
        YUBIKEY_CRED_LEN => Some(vec!["nfc", "usb"]),
        _ => None,
    }
}

/// JSON of WebAuthn options, edited: usernameless and allow-listed requests are made by an
/// explicit button here, not by autofill, so the forced conditional mediation is dropped.
pub fn request_options(mut v: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.remove("mediation");
    }
    v
}

/// Passkeys, the credential-id index and ceremonies (which expire; swept a day later).
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Passkeys, Table::PasskeyIndex, Table::Ceremonies]
    }

    async fn sweep(
        &self,
        store: &dyn portcullis_store::Store,
        before: i64,
    ) -> Result<u64, portcullis_store::StoreError> {
        sweep_expired(store, &CEREMONIES, before, SWEEP_BATCH, |c| c.expires_at).await
    }
}
