//! What magic links and email codes share: the flow record and its state machine, send limits,
//! who a verified address belongs to, redirect allow-listing and PKCE.
//!
//! A flow is `Pending` until its link or code is used. Transitions, each by one compare-and-
//! swap on the stored record (so exactly one concurrent caller wins) and durable before the
//! answer (the dispatcher waits for the group commit):
//!
//! ```text
//! Pending ──verify──▶ Consumed                  (link opened / code entered on this device)
//! Pending ──approve─▶ Approved ──poll──▶ Completed   (link approved for the device that asked)
//! ```
//!
//! A flow whose address has no account (and no `create_user`) is a *phantom*: stored like the
//! others, answered the same, but no mail goes out and it can never succeed.

pub mod link;

use crate::base::crypto::{random_id, sha256};
use crate::base::error::CommandError;
use crate::identity::accounts::{
    address_move, address_taken, create_user, find_by_email, Email, UserRecord,
};
use crate::infra::mail::{mail_time, Vars};
use crate::infra::records::{sweep_expired, Edit, Records, Stored, TableOwner, SWEEP_BATCH};
use crate::Ctx;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::ErrorCode;
use portcullis_store::{Record, Table};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// What kind of flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowKind {
    /// Magic link.
    Magic,
    /// Email one-time code.
    Otp,
}

impl FlowKind {
    /// Key of the newest flow of this kind for an address in `LatestFlows`.
    pub fn latest_key(self, email_key: &str) -> Vec<u8> {
        let k = match self {
            FlowKind::Magic => "magic",
            FlowKind::Otp => "otp",
        };
        format!("{k}:{email_key}").into_bytes()
    }
}

/// Where a flow is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum FlowState {
    /// Waiting for its link or code.
    Pending,
    /// Used on the device that opened it; a session was issued there.
    Consumed {
        /// Unix seconds.
        at: i64,
    },
    /// Approved from the link for the device that asked; that device may now poll.
    Approved {
        /// Unix seconds.
        at: i64,
    },
    /// The asking device collected its session.
    Completed {
        /// Unix seconds.
        at: i64,
    },
}

/// One flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRecord {
    /// Flow id (random, 128 bits).
    pub id: String,
    /// Link or code.
    pub kind: FlowKind,
    /// Lower-cased address (index key).
    pub email_key: String,
    /// Address as normalised for display.
    pub email: String,
    /// Whether an unknown address may get an account on success.
    pub create_user: bool,
    /// No account and no `create_user`: never succeeds, no mail was sent.
    pub phantom: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Address of the client that asked.
    pub client: Option<String>,
    /// User agent of the client that asked.
    pub user_agent: Option<String>,
    /// Where to send the browser after a link sign-in (allow-listed).
    pub redirect_url: Option<String>,
    /// PKCE S256 challenge binding the flow to the device that asked.
    pub code_challenge: Option<String>,
    /// Email codes: HMAC-SHA-256 of `flow_id:code` under the server's code key, hex.
    pub code_mac: Option<String>,
    /// Email codes: attempts used (each reserved before its code is compared).
    pub attempts: u32,
    /// An operator-initiated recovery link (`ADMIN.USER.RECOVER`): signs in without the
    /// second factor.
    #[serde(default)]
    pub recovery: bool,
    /// A `USER.CHANGE_EMAIL` confirmation: the account whose address becomes `email` when the
    /// link is used.
    #[serde(default)]
    pub change_email_for: Option<String>,
    /// Life-cycle state.
    #[serde(flatten)]
    pub state: FlowState,
}

impl Record for FlowRecord {
    const VERSION: u8 = 1;
}

/// Flows by flow id.
const FLOWS: Records<FlowRecord> = Records::new(Table::Flows);
/// Send counters by `addr:<email>` / `client:<ip>`.
const COUNTERS: Records<SendCounter> = Records::new(Table::SendCounters);

/// A stored flow and the exact bytes read, for compare-and-swap.
pub type Loaded = Stored<FlowRecord>;

/// Loads a flow.
pub async fn load(ctx: &Ctx, flow_id: &str) -> Result<Option<Loaded>, CommandError> {
    Ok(FLOWS
        .read(ctx.app.store.as_ref(), flow_id.as_bytes())
        .await?)
}

/// Stores a new flow and makes it the newest of its kind for its address.
pub async fn save_new(ctx: &Ctx, flow: &FlowRecord) -> Result<(), CommandError> {
    let store = ctx.app.store.as_ref();
    FLOWS.put(store, flow.id.as_bytes(), flow).await?;
    store
        .put(
            Table::LatestFlows,
            &flow.kind.latest_key(&flow.email_key),
            flow.id.clone().into_bytes(),
        )
        .await?;
    Ok(())
}

/// Replaces `loaded` with `next` if nobody changed it meanwhile. `Ok(false)`: someone did.
pub async fn swap(ctx: &Ctx, loaded: &Loaded, next: &FlowRecord) -> Result<bool, CommandError> {
    let key = loaded.record.id.as_bytes();
    Ok(FLOWS
        .swap(ctx.app.store.as_ref(), key, Some(loaded), Some(next))
        .await?)
}

/// Replaces `loaded` with `next` if nobody changed it meanwhile: `next` as stored, or `None`
/// when someone did.
pub async fn advance(
    ctx: &Ctx,
    loaded: &Loaded,
    next: FlowRecord,
) -> Result<Option<Loaded>, CommandError> {
    let key = loaded.record.id.clone();
    Ok(FLOWS
        .advance(ctx.app.store.as_ref(), key.as_bytes(), loaded, next)
        .await?)
}

/// Why a flow cannot be used now.
pub fn unusable(
    ctx: &Ctx,
    flow: &FlowRecord,
    superseded: bool,
) -> Option<(CommandError, &'static str)> {
    let now = ctx.now().unix_timestamp();
    match flow.state {
        FlowState::Pending => {}
        _ => {
            return Some((
                CommandError::new(
                    ErrorCode::AlreadyUsed,
                    "this link or code has already been used",
                ),
                "already_used",
            ))
        }
    }
    if now >= flow.expires_at {
        return Some((
            CommandError::new(
                ErrorCode::Expired,
                "this link or code has expired; ask for a new one",
            ),
            "expired",
        ));
    }
    if superseded {
        return Some((
            CommandError::new(
                ErrorCode::Expired,
                "a newer link or code replaced this one; use the newest",
            ),
            "superseded",
        ));
    }
    None
}

/// Refuses flow ids that cannot be ours (they are 32 hex characters), so client-chosen junk
/// never reaches the store or the log.
pub fn check_flow_id(id: &str) -> Result<(), CommandError> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(CommandError::invalid_params("flow_id is not a flow id"))
    }
}

/// Whether a newer flow of the same kind replaced this one.
pub async fn is_superseded(ctx: &Ctx, flow: &FlowRecord) -> Result<bool, CommandError> {
    let latest = ctx
        .app
        .store
        .get(Table::LatestFlows, &flow.kind.latest_key(&flow.email_key))
        .await?;
    Ok(latest.is_some_and(|id| id != flow.id.as_bytes()))
}

/// A new flow for `email`, pending, expiring after `ttl_s`.
pub async fn new_flow(
    ctx: &Ctx,
    kind: FlowKind,
    email: &Email,
    create_user: bool,
    ttl_s: i64,
) -> Result<FlowRecord, CommandError> {
    let existing = find_by_email(ctx.app.store.as_ref(), email).await?;
    // A disabled account gets nothing, even with `create_user`.
    let disabled = existing.as_ref().is_some_and(|u| u.disabled);
    let exists = existing.is_some() && !disabled;
    let now = ctx.now().unix_timestamp();
    Ok(FlowRecord {
        id: random_id(ctx.app.rng.as_ref()),
        kind,
        email_key: email.key.clone(),
        email: email.display.clone(),
        create_user,
        phantom: disabled || (!exists && !create_user),
        created_at: now,
        expires_at: now + ttl_s,
        client: ctx.client.map(|a| a.ip().to_string()),
        user_agent: ctx.user_agent.clone(),
        redirect_url: None,
        code_challenge: None,
        code_mac: None,
        attempts: 0,
        recovery: false,
        change_email_for: None,
        state: FlowState::Pending,
    })
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct SendCounter {
    window_start: i64,
    count: u32,
    last_at: i64,
}

impl Record for SendCounter {
    const VERSION: u8 = 1;
}

const HOUR: i64 = 3600;

/// Counts one send against `key` if the limits allow it: at most `per_hour` per hour and, when
/// `cooldown_s > 0`, one per `cooldown_s`. Otherwise `RATE_LIMITED` with `retry_after_ms`.
async fn count(ctx: &Ctx, key: &str, per_hour: u32, cooldown_s: i64) -> Result<(), CommandError> {
    let now = ctx.now().unix_timestamp();
    COUNTERS
        .edit_or_default(ctx.app.store.as_ref(), key.as_bytes(), |c| {
            if now - c.window_start >= HOUR {
                c.window_start = now;
                c.count = 0;
            }
            let wait = if c.last_at > 0 && now - c.last_at < cooldown_s {
                Some(cooldown_s - (now - c.last_at))
            } else if c.count >= per_hour {
                Some(HOUR - (now - c.window_start))
            } else {
                None
            };
            if let Some(w) = wait {
                let ms = u64::try_from(w.max(1)).unwrap_or(1) * 1000;
                return Err(CommandError::new(
                    ErrorCode::RateLimited,
                    "too many messages requested; wait before asking again",
                )
                .with_retry_after_ms(ms));
            }
            c.count += 1;
            c.last_at = now;
            Ok(Edit::Write(()))
        })
        .await
}

/// Applies the send limits of a mail to `email` requested by this client, the same whether or
/// not the address has an account.
pub async fn count_send(ctx: &Ctx, email: &Email) -> Result<(), CommandError> {
    let cfg = &ctx.app.config;
    if let Some(ip) = ctx.client.map(|a| a.ip()) {
        if let Err(e) = count(
            ctx,
            &format!("client:{ip}"),
            cfg.sends_per_client_per_hour,
            0,
        )
        .await
        {
            ctx.audit.note("limit", "client");
            return Err(e);
        }
    }
    let r = count(
        ctx,
        &format!("addr:{}", email.key),
        cfg.sends_per_address_per_hour,
        cfg.send_cooldown_s,
    )
    .await;
    if r.is_err() {
        ctx.audit.note("limit", "address");
    }
    r
}

/// Checks `redirect_url` against the allow-list: same scheme, host and port as an entry, and a
/// path starting with the entry's path. No user info, no fragment.
pub fn check_redirect(ctx: &Ctx, redirect: &str) -> Result<String, CommandError> {
    let refused = || CommandError::invalid_params("redirect_url is not on the allow-list");
    let u = url::Url::parse(redirect).map_err(|_| refused())?;
    if !u.username().is_empty() || u.password().is_some() || u.fragment().is_some() {
        return Err(refused());
    }
    let allowed = ctx.app.config.redirect_allowlist.iter().any(|entry| {
        url::Url::parse(entry).is_ok_and(|e| {
            e.scheme() == u.scheme()
                && e.host_str() == u.host_str()
                && e.port_or_known_default() == u.port_or_known_default()
                && path_within(u.path(), e.path())
        })
    });
    if allowed {
        Ok(u.to_string())
    } else {
        Err(refused())
    }
}

/// Whether `path` is `prefix` or lies under it segment by segment (`/auth` admits `/auth` and
/// `/auth/x`, not `/authority`).
fn path_within(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

/// Validates a PKCE S256 challenge: 43 base64url characters (a SHA-256).
pub fn check_challenge(challenge: &str) -> Result<(), CommandError> {
    let ok = challenge.len() == 43
        && URL_SAFE_NO_PAD
            .decode(challenge)
            .is_ok_and(|b| b.len() == 32);
    if ok {
        Ok(())
    } else {
        Err(CommandError::invalid_params(
            "code_challenge must be BASE64URL(SHA-256(code_verifier)) without padding (S256)",
        ))
    }
}

/// Whether `verifier` (RFC 7636: 43–128 characters) matches the S256 `challenge`, in constant time.
pub fn verifier_matches(challenge: &str, verifier: &str) -> bool {
    if !(43..=128).contains(&verifier.len()) {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(sha256(verifier.as_bytes()));
    bool::from(computed.as_bytes().ct_eq(challenge.as_bytes()))
}

/// The account a verified address signs in to: the existing one, or (with `create_user`) a new
/// passwordless one. The address counts as verified from now on. `INVALID_CREDENTIALS` for a
/// phantom flow or a disabled account.
pub async fn account_for(ctx: &Ctx, flow: &FlowRecord) -> Result<UserRecord, CommandError> {
    let store = ctx.app.store.as_ref();
    let email = Email {
        display: flow.email.clone(),
        key: flow.email_key.clone(),
    };
    let refused = || {
        CommandError::new(
            ErrorCode::InvalidCredentials,
            "this link or code is not valid",
        )
    };
    let mut user = match find_by_email(store, &email).await? {
        Some(u) => u,
        None if flow.create_user => {
            let now = ctx.now().unix_timestamp();
            let u = UserRecord {
                id: random_id(ctx.app.rng.as_ref()),
                email: email.display.clone(),
                display_name: None,
                email_verified: true,
                password_hash: None,
                created_at: now,
                updated_at: now,
                disabled: false,
                superadmin: false,
                session_epoch: 0,
            };
            match create_user(store, &u, &email).await {
                Ok(()) => {
                    ctx.audit.note("user.created", true);
                    u
                }
                // Created concurrently by another flow: use that account.
                Err(e) if e.code() == ErrorCode::Conflict => {
                    find_by_email(store, &email).await?.ok_or_else(refused)?
                }
                Err(e) => return Err(e),
            }
        }
        None => return Err(refused()),
    };
    if user.disabled {
        return Err(refused());
    }
    if !user.email_verified {
        // First proof that this mailbox belongs to the account. Anything set up before it, by
        // whoever signed up with the address, is not trusted (account pre-hijacking): a
        // password chosen then is cleared, and the sessions, second factors, passkeys and API
        // keys set up then go. All of it and the flag land in one atomic batch, so a crash or
        // a failed write leaves the address unproven and the next proof evicts again.
        let now = ctx.now().unix_timestamp();
        let mut cleared = false;
        let (updated, planned) = crate::identity::evict::change_user(
            ctx,
            &user.id,
            |u| {
                if u.email_verified {
                    return Ok(false);
                }
                u.email_verified = true;
                cleared = crate::factors::forget_all(u);
                u.updated_at = now;
                Ok(true)
            },
            |_, u| async move {
                crate::factors::eviction(ctx, &u.id, None, "email_verified").await
            },
        )
        .await?
        .ok_or_else(refused)?;
        user = updated;
        let evicted = planned.evicted;
        let factor_cleared = evicted.factors || evicted.api_keys > 0;
        let revoked = evicted.sessions;
        ctx.audit.note("unverified_factor_cleared", factor_cleared);
        ctx.audit
            .note("unverified_api_keys_revoked", evicted.api_keys);
        if cleared || factor_cleared {
            crate::identity::accounts::notify(
                ctx,
                &user.id,
                "Your address was confirmed",
                "Sign-in methods set up before the address was confirmed were removed, since anyone could have set them. Set a password or an authenticator app again if you want one.",
            )
            .await?;
        }
        ctx.audit.event("email.verified");
        ctx.audit.note("unverified_password_cleared", cleared);
        ctx.audit.note("unverified_sessions_revoked", revoked);
    }
    Ok(user)
}

/// Completes an address change in one atomic batch: the new address is claimed in the index by
/// insert-if-absent (`CONFLICT` if someone took it meanwhile), the account record moves to it
/// (verified), and the old address's entry is removed. A crash leaves the old address or the
/// new one attached, never both. The old address is told.
pub async fn complete_email_change(
    ctx: &Ctx,
    user_id: &str,
    flow: &FlowRecord,
) -> Result<UserRecord, CommandError> {
    let store = ctx.app.store.as_ref();
    let new_key = flow.email_key.as_str();
    let invalid = || CommandError::new(ErrorCode::InvalidCredentials, "this link is not valid");
    let taken = || {
        CommandError::new(
            ErrorCode::Conflict,
            "that address belongs to another account now",
        )
    };
    let now = ctx.now().unix_timestamp();
    // The address the account had when the change committed (the plan runs on every attempt).
    let mut old = String::new();
    let (user, _) = crate::identity::evict::change_user(
        ctx,
        user_id,
        |u| {
            if u.disabled {
                return Err(invalid());
            }
            u.email = flow.email.clone();
            u.email_verified = true;
            u.updated_at = now;
            Ok(true)
        },
        |before, _| {
            old.clone_from(&before.email);
            async move {
                if address_taken(store, new_key).await? {
                    return Err(taken());
                }
                let batch = address_move(ctx, &before, new_key).await?;
                Ok(crate::identity::evict::Planned {
                    batch,
                    ..Default::default()
                })
            }
        },
    )
    .await?
    .ok_or_else(invalid)?;
    ctx.audit.subject(user_id);
    ctx.audit.event("email.changed");
    crate::infra::notice::notify_address(
        ctx,
        &old,
        "Your sign-in address was changed",
        &format!("This account now signs in as {}. If you did not ask for this, contact your administrator at once.", flow.email),
    )
    .await;
    Ok(user)
}

/// RFC 8176-style `amr` of a sign-in proven by the mailbox.
pub const AMR_EMAIL: &str = "email";

/// Checks a locale tag (`en`, `pt-BR`), defaulting to the server's.
pub fn locale(ctx: &Ctx, requested: Option<String>) -> Result<String, CommandError> {
    let l = requested.unwrap_or_else(|| ctx.app.config.default_locale.clone());
    if crate::base::config::is_language_tag(&l) {
        Ok(l)
    } else {
        Err(CommandError::invalid_params(
            "locale must be a language tag such as en or pt-BR",
        ))
    }
}

/// Template values every mail shares: product, address, expiry, who asked.
pub fn common_vars(ctx: &Ctx, flow: &FlowRecord) -> Vars {
    let minutes = (flow.expires_at - flow.created_at) / 60;
    Vars::new()
        .set("product", ctx.app.config.product_name.clone())
        .set("email", flow.email.clone())
        .set("expires_minutes", minutes.to_string())
        .set("time", mail_time(ctx.now()))
        .set(
            "client",
            flow.client
                .clone()
                .unwrap_or_else(|| "an unknown address".into()),
        )
        .set(
            "agent",
            flow.user_agent
                .as_deref()
                .map(crate::infra::mail::sanitize_client_text)
                .unwrap_or_else(|| "unknown client".into()),
        )
}

/// Email flows, their link tokens, the newest flow per address and the send counters. Flows
/// expire (swept a day later), and so do the link tokens of flows that are gone.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[
            Table::Flows,
            Table::MagicLinks,
            Table::LatestFlows,
            Table::SendCounters,
        ]
    }

    async fn sweep(
        &self,
        store: &dyn portcullis_store::Store,
        before: i64,
    ) -> Result<u64, portcullis_store::StoreError> {
        let mut removed =
            sweep_expired(store, &FLOWS, before, SWEEP_BATCH, |f| f.expires_at).await?;
        // Link tokens whose flow is gone.
        for (k, flow_id) in store
            .scan_prefix(Table::MagicLinks, b"", SWEEP_BATCH)
            .await?
        {
            if store.get(Table::Flows, &flow_id).await?.is_none() {
                store.remove(Table::MagicLinks, &k).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
