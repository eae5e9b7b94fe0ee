//! Sessions and their tokens: the one place every sign-in mints tokens, refresh-token rotation
//! with reuse detection, revocation, and the in-memory liveness cache every authenticated
//! command consults.

use crate::base::crypto::{random_id, random_token, sha256};
use crate::base::error::CommandError;
use crate::identity::accounts::UserRecord;
use crate::identity::tokens::AccessClaims;
use crate::infra::records::{Records, ResealError, Resealer, TableOwner};
use crate::{App, Ctx};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{Record, Store, StoreError, Table};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::RwLock;

/// Prefix of refresh tokens.
pub const REFRESH_PREFIX: &str = "prt_";
/// Entries the liveness cache holds before it starts over.
const CACHE_LIMIT: usize = 200_000;

/// One session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub id: String,
    /// Owner.
    pub user_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last sign-in or refresh.
    pub last_used_at: i64,
    /// No refresh after this, whatever happens (Unix seconds).
    pub absolute_expires_at: i64,
    /// Assurance level.
    pub aal: u8,
    /// Authentication methods (RFC 8176).
    pub amr: Vec<String>,
    /// Client address at creation.
    pub client: Option<String>,
    /// User agent at creation.
    pub user_agent: Option<String>,
    /// When the user last proved a factor in this session (sign-in or step-up), Unix seconds.
    #[serde(default)]
    pub authenticated_at: i64,
    /// Opened only so the user can enrol a second factor (policy `mfa_policy = "required"`).
    #[serde(default)]
    pub enrolment_only: bool,
    /// Raised by every step-up. Access tokens carry the generation they were issued in
    /// (`sgen`); one of an older generation no longer passes the step-up gate.
    #[serde(default)]
    pub generation: u64,
    /// Set when revoked (Unix seconds).
    pub revoked_at: Option<i64>,
    /// Why it was revoked.
    pub revoke_reason: Option<String>,
}

impl Record for SessionRecord {
    const VERSION: u8 = 1;
}

impl SessionRecord {
    /// Whether the session is past its absolute limit, or idle for `idle_s` (no refresh), at
    /// `now`. Its last access token may still be within its own lifetime.
    pub fn expired_at(&self, now: i64, idle_s: i64) -> bool {
        now >= self.absolute_expires_at || now >= self.last_used_at + idle_s
    }

    /// Whether the session is neither revoked nor expired at `now`.
    pub fn live_at(&self, now: i64, idle_s: i64) -> bool {
        self.revoked_at.is_none() && !self.expired_at(now, idle_s)
    }
}

/// The state of one refresh token. Transitions: `Active → Rotated` (by exactly one compare-and-
/// swap); nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RefreshState {
    /// Not used yet.
    Active,
    /// Used once at `at`; `successor` is the pair issued for it, sealed with the master key, so
    /// a retry within the grace window gets the same pair.
    Rotated {
        /// Unix seconds.
        at: i64,
        /// Sealed JSON of the successor pair (base64url).
        successor: String,
    },
}

/// A refresh token, stored under the SHA-256 of the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// Its session.
    pub session_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    /// Active or rotated.
    #[serde(flatten)]
    pub state: RefreshState,
}

impl Record for RefreshRecord {
    const VERSION: u8 = 1;
}

/// What the cache knows of one session. Both facts only ever move one way (a session is never
/// un-revoked, its generation never goes down), so entries are merged, never overwritten: a
/// read that started before a revocation or a step-up cannot undo it in the cache.
#[derive(Clone, Debug, PartialEq)]
struct Live {
    user_id: String,
    revoked: bool,
    /// The session's generation (see [`SessionRecord::generation`]).
    generation: u64,
}

impl Live {
    fn of(s: &SessionRecord) -> Live {
        Live {
            user_id: s.user_id.clone(),
            revoked: s.revoked_at.is_some(),
            generation: s.generation,
        }
    }

    fn merge(&mut self, other: &Live) {
        self.revoked |= other.revoked;
        self.generation = self.generation.max(other.generation);
    }
}

#[derive(Default)]
struct CacheMap {
    entries: HashMap<String, Live>,
    /// Counts the times the cache started over, so a read begun before a start-over does not
    /// write back what it read (a revocation recorded meanwhile was forgotten with the rest).
    epoch: u64,
}

/// Which sessions are live, cached in memory in front of the store. Every session enters it
/// when it starts; revocations and step-ups go through here, so they take effect on the very
/// next command.
///
/// On a store shared with other nodes, a revocation or step-up may be made by another node, so
/// only what cannot change back is trusted from the cache (a revoked session is revoked for
/// good); a session the cache knows as live is read again from the store on every use.
#[derive(Default)]
pub struct SessionCache {
    map: RwLock<CacheMap>,
    shared: bool,
}

impl SessionCache {
    /// A cache in front of a store that other nodes write (`shared`) or of this node's own.
    pub fn new(shared: bool) -> Self {
        SessionCache {
            map: RwLock::default(),
            shared,
        }
    }

    /// What the cache may answer for `sid` without reading the store.
    fn trusted(&self, sid: &str) -> Option<Live> {
        self.get(sid).filter(|l| l.revoked || !self.shared)
    }

    fn get(&self, sid: &str) -> Option<Live> {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .entries
            .get(sid)
            .cloned()
    }

    /// Records that `sid` (of `user_id`) is revoked, after its revocation is committed.
    pub(crate) fn mark_revoked(&self, sid: &str, user_id: &str) {
        self.record(
            sid,
            Live {
                user_id: user_id.to_owned(),
                revoked: true,
                // Merged by maximum: the generation already cached, if any, stays.
                generation: 0,
            },
        );
    }

    fn epoch(&self) -> u64 {
        self.map.read().unwrap_or_else(|p| p.into_inner()).epoch
    }

    /// Forgets every entry, as after a restart or when the cache starts over.
    #[cfg(test)]
    pub(crate) fn forget_all(&self) {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        m.entries.clear();
        m.epoch += 1;
    }

    /// Records what a writer knows (a new session, a revocation, a step-up), merged with any
    /// entry already there, and returns the merged entry.
    fn record(&self, sid: &str, live: Live) -> Live {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        Self::merge_into(&mut m, sid, live)
    }

    /// Records what a read of the store found, unless the cache started over since
    /// `epoch` (then the read is answered as read, uncached). Returns the merged entry: if a
    /// revocation landed while the read was in flight, it wins.
    fn record_read(&self, sid: &str, live: Live, epoch: u64) -> Live {
        let mut m = self.map.write().unwrap_or_else(|p| p.into_inner());
        if m.epoch != epoch {
            return live;
        }
        Self::merge_into(&mut m, sid, live)
    }

    fn merge_into(m: &mut CacheMap, sid: &str, live: Live) -> Live {
        if let Some(e) = m.entries.get_mut(sid) {
            e.merge(&live);
            return e.clone();
        }
        if m.entries.len() >= CACHE_LIMIT {
            m.entries.clear();
            m.epoch += 1;
        }
        m.entries.insert(sid.to_owned(), live.clone());
        live
    }
}

/// Sessions by session id (the identity domain's: `evict` plans their revocation).
pub(in crate::identity) const SESSIONS: Records<SessionRecord> = Records::new(Table::Sessions);
/// Refresh tokens by SHA-256 of the token.
const REFRESH_TOKENS: Records<RefreshRecord> = Records::new(Table::RefreshTokens);

/// Loads a session record.
pub async fn get_session(
    store: &dyn Store,
    sid: &str,
) -> Result<Option<SessionRecord>, CommandError> {
    Ok(SESSIONS.get(store, sid.as_bytes()).await?)
}

/// Changes a session record atomically (see [`crate::identity::accounts::update_user`]): a revocation
/// racing a refresh or a step-up is never undone. `f` may refuse with an error.
pub async fn update_session(
    store: &dyn Store,
    sid: &str,
    f: impl FnMut(&mut SessionRecord) -> Result<bool, CommandError>,
) -> Result<Option<SessionRecord>, CommandError> {
    SESSIONS.update(store, sid.as_bytes(), f).await
}

fn index_key(user_id: &str, sid: &str) -> Vec<u8> {
    format!("{user_id}/{sid}").into_bytes()
}

/// The generation of session `sid` if it is live for `user_id` (`None`: revoked, unknown, or
/// another user's). Cached (on a shared store, only revocations), else read from the store; a
/// revocation recorded in the cache while the read was in flight wins over what the read found.
pub async fn live_generation(
    app: &App,
    sid: &str,
    user_id: &str,
) -> Result<Option<u64>, CommandError> {
    let live = match app.session_cache.trusted(sid) {
        Some(l) => l,
        None => {
            let epoch = app.session_cache.epoch();
            let Some(s) = get_session(app.store.as_ref(), sid).await? else {
                return Ok(None);
            };
            app.session_cache.record_read(sid, Live::of(&s), epoch)
        }
    };
    Ok((!live.revoked && live.user_id == user_id).then_some(live.generation))
}

#[derive(Serialize, Deserialize)]
struct SealedPair {
    access_token: String,
    refresh_token: String,
    expires_in: u64,
}

/// AAD of a refresh token's sealed successor pair.
pub(crate) fn successor_aad(old_hash: &[u8; 32]) -> Vec<u8> {
    format!("refresh-successor:{}", hex::encode(old_hash)).into_bytes()
}

/// Signs an access token for a session (with the active key as the store has it now).
async fn access_token(
    ctx: &Ctx,
    s: &SessionRecord,
    now: i64,
) -> Result<(Secret, u64), CommandError> {
    let tokens = &ctx.app.tokens;
    let claims = AccessClaims {
        iss: tokens.issuer().to_owned(),
        aud: tokens.audience().to_owned(),
        sub: s.user_id.clone(),
        sid: s.id.clone(),
        aal: s.aal,
        amr: s.amr.clone(),
        auth_time: s.authenticated_at,
        scope: s.enrolment_only.then(|| SCOPE_ENROLMENT.to_owned()),
        sgen: s.generation,
        iat: now,
        exp: now + tokens.ttl_s(),
        jti: random_id(ctx.app.rng.as_ref()),
    };
    let t = tokens
        .sign_current(ctx.app.store.as_ref(), &ctx.app.sealer, &claims)
        .await?;
    Ok((
        Secret::new(t.as_str()),
        u64::try_from(tokens.ttl_s()).unwrap_or(0),
    ))
}

/// A fresh refresh token for a session, with its store key and record (not yet stored).
fn refresh_token_for(ctx: &Ctx, sid: &str, now: i64) -> (Secret, [u8; 32], RefreshRecord) {
    let token = random_token(ctx.app.rng.as_ref(), REFRESH_PREFIX);
    let rec = RefreshRecord {
        session_id: sid.to_owned(),
        issued_at: now,
        state: RefreshState::Active,
    };
    let key = sha256(token.as_bytes());
    (Secret::new(token.as_str()), key, rec)
}

/// Rounds of a session start against concurrent changes of the account record.
const OPEN_ATTEMPTS: usize = 32;

/// `scope` claim of a session that may only enrol a second factor.
pub const SCOPE_ENROLMENT: &str = "mfa_enrolment";
/// Lifetime of an enrolment-only session, seconds.
const ENROLMENT_SESSION_S: i64 = 30 * 60;

/// Starts a session for `user` after a successful sign-in and returns its tokens. Every sign-in
/// path (password, link, code, passkey, MFA) ends here, through [`crate::signin::login`].
pub async fn start_session(
    ctx: &Ctx,
    user: &UserRecord,
    aal: u8,
    amr: Vec<String>,
) -> Result<SessionTokens, CommandError> {
    open_session(ctx, user, aal, amr, false).await
}

/// Starts a short session that may only enrol a second factor.
pub async fn start_enrolment_session(
    ctx: &Ctx,
    user: &UserRecord,
    amr: Vec<String>,
) -> Result<SessionTokens, CommandError> {
    open_session(ctx, user, 1, amr, true).await
}

async fn open_session(
    ctx: &Ctx,
    user: &UserRecord,
    aal: u8,
    amr: Vec<String>,
    enrolment_only: bool,
) -> Result<SessionTokens, CommandError> {
    let app = &ctx.app;
    let now = ctx.now().unix_timestamp();
    let lifetime = if enrolment_only {
        ENROLMENT_SESSION_S
    } else {
        app.config.refresh_absolute_s
    };
    let s = SessionRecord {
        id: random_id(app.rng.as_ref()),
        user_id: user.id.clone(),
        created_at: now,
        last_used_at: now,
        absolute_expires_at: now + lifetime,
        aal,
        amr,
        client: ctx.client.map(|a| a.to_string()),
        user_agent: ctx.user_agent.clone(),
        authenticated_at: now,
        enrolment_only,
        generation: 0,
        revoked_at: None,
        revoke_reason: None,
    };
    let (refresh_token, refresh_key, refresh_rec) = refresh_token_for(ctx, &s.id, now);
    // One batch: the session, its index entry and its refresh token, on the condition that the
    // account is still as read here and usable, and a bump of the account's session epoch. A
    // disable (or deletion, or first proof of the address) that commits first refuses it, so no
    // sign-in racing a disable leaves a session behind; one that commits later finds the epoch
    // moved and plans its revocations again, this session included; a crash leaves all of it
    // or none.
    let unusable =
        || CommandError::new(ErrorCode::InvalidCredentials, "this account cannot sign in");
    let mut started = false;
    for _ in 0..OPEN_ATTEMPTS {
        let current = crate::identity::accounts::read_user(ctx, &user.id)
            .await?
            .ok_or_else(unusable)?;
        if current.record.disabled {
            return Err(unusable());
        }
        let batch = crate::identity::accounts::bump_session_epoch(current)
            .merge(SESSIONS.inserting(s.id.as_bytes(), &s))
            .put(Table::UserSessions, index_key(&user.id, &s.id), Vec::new())
            .merge(REFRESH_TOKENS.inserting(refresh_key.as_slice(), &refresh_rec));
        if app.store.apply(batch).await?.committed() {
            started = true;
            break;
        }
    }
    if !started {
        return Err(StoreError::Busy.into());
    }
    app.session_cache.record(&s.id, Live::of(&s));
    let evicted = enforce_session_limit(ctx, &user.id, &s.id).await?;
    let (access_token, expires_in) = access_token(ctx, &s, now).await?;
    ctx.audit.subject(&user.id);
    ctx.audit.session(&s.id);
    ctx.audit.event("session.created");
    ctx.audit.note("aal", u64::from(aal));
    ctx.audit.note("amr", s.amr.join(" "));
    if evicted > 0 {
        ctx.audit.note("sessions_evicted", evicted);
    }
    Ok(SessionTokens {
        user_id: user.id.clone(),
        session_id: s.id,
        access_token,
        refresh_token,
        token_type: "Bearer".into(),
        expires_in,
    })
}

/// Keeps the account at `max_sessions_per_user` live sessions: when `new_sid` takes it over the
/// cap, the oldest live sessions are revoked (reason `session_limit`). Returns how many were.
/// Cheap in the common case: one scan of the account's index, whose entries are the sessions
/// not revoked yet; records are read only when the index holds more than the cap.
async fn enforce_session_limit(
    ctx: &Ctx,
    user_id: &str,
    new_sid: &str,
) -> Result<u64, CommandError> {
    let cap = usize::try_from(ctx.app.config.max_sessions_per_user).unwrap_or(usize::MAX);
    let store = ctx.app.store.as_ref();
    let prefix = format!("{user_id}/").into_bytes();
    let indexed = store
        .scan_prefix(Table::UserSessions, &prefix, usize::MAX)
        .await?;
    if indexed.len() <= cap {
        return Ok(0);
    }
    let now = ctx.now().unix_timestamp();
    let mut others = Vec::new();
    for (k, _) in indexed {
        let sid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if sid == new_sid {
            continue;
        }
        if let Some(s) = get_session(store, &sid).await? {
            if s.live_at(now, ctx.app.config.refresh_idle_s) {
                others.push(s);
            }
        }
    }
    // The new session counts as one; the others keep the newest `cap - 1`.
    let keep = cap.saturating_sub(1);
    if others.len() <= keep {
        return Ok(0);
    }
    others.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    let excess = others.len() - keep;
    let mut n = 0;
    for s in others.into_iter().take(excess) {
        if revoke(ctx, &s.id, "session_limit").await? {
            n += 1;
        }
    }
    if n > 0 {
        tracing::info!(user = %user_id, revoked = n, "session limit reached; oldest sessions revoked");
    }
    Ok(n)
}

fn invalid_refresh() -> CommandError {
    CommandError::new(
        ErrorCode::InvalidCredentials,
        "the refresh token is not valid",
    )
}

/// Rounds of [`refresh`] against concurrent writers of the same session.
const REFRESH_ATTEMPTS: usize = 8;

/// Exchanges a refresh token for a new pair.
///
/// The old token is consumed by one compare-and-swap (`Active → Rotated`), durable before the
/// answer (the dispatcher waits for the group commit). Of concurrent uses, exactly one rotates;
/// the others, and any retry within `refresh_grace_s`, get the same successor pair back. A use
/// after the grace means the token was copied: the whole session is revoked.
pub async fn refresh(ctx: &Ctx, token: &Secret) -> Result<SessionTokens, CommandError> {
    let app = &ctx.app;
    let store = app.store.as_ref();
    let hash = sha256(token.expose().as_bytes());
    let now = ctx.now().unix_timestamp();
    // A lost race re-reads the records: the token is then `Rotated`, or the session moved on.
    for _ in 0..REFRESH_ATTEMPTS {
        let Some(stored) = REFRESH_TOKENS.read(store, &hash).await? else {
            ctx.audit.note("reason", "unknown_refresh_token");
            return Err(invalid_refresh());
        };
        let rec = stored.record.clone();
        let Some(session) = get_session(store, &rec.session_id).await? else {
            return Err(invalid_refresh());
        };
        ctx.audit.subject(&session.user_id);
        ctx.audit.session(&session.id);
        if session.revoked_at.is_some() {
            ctx.audit.note("reason", "session_revoked");
            return Err(invalid_refresh());
        }
        let usable = crate::identity::accounts::get_user(store, &session.user_id)
            .await?
            .is_some_and(|u| !u.disabled);
        if !usable {
            ctx.audit.note("reason", "account_unusable");
            return Err(invalid_refresh());
        }
        if session.expired_at(now, app.config.refresh_idle_s) {
            ctx.audit.note("reason", "session_expired");
            return Err(CommandError::new(
                ErrorCode::Expired,
                "the session has expired; sign in again",
            ));
        }
        match rec.state {
            RefreshState::Active => {
                let (new_refresh_token, new_key, new_rec) =
                    refresh_token_for(ctx, &session.id, now);
                let (access_token, expires_in) = access_token(ctx, &session, now).await?;
                let pair = SealedPair {
                    access_token: access_token.expose().to_owned(),
                    refresh_token: new_refresh_token.expose().to_owned(),
                    expires_in,
                };
                let plain = zeroize::Zeroizing::new(serde_json::to_vec(&pair).unwrap_or_default());
                let sealed = app
                    .sealer
                    .seal(app.rng.as_ref(), &successor_aad(&hash), &plain);
                let rotated = RefreshRecord {
                    state: RefreshState::Rotated {
                        at: now,
                        successor: URL_SAFE_NO_PAD.encode(sealed),
                    },
                    ..rec
                };
                // Ordered single-key writes, not one batch: a sled transaction here halves the
                // refresh throughput (docs/performance.md, "The atomic batch"), and the order
                // gives the same guarantees. The successor is stored first; then the old token
                // turns `Rotated` by one compare-and-swap, the commit point (exactly one of
                // concurrent uses wins). sled recovers a prefix of its log, so a rotation that
                // survives a crash has its successor; a crash before the swap leaves the old
                // token active and an unreachable successor record. Both are durable before
                // the answer (the dispatcher waits for the group commit).
                REFRESH_TOKENS.put(store, &new_key, &new_rec).await?;
                match REFRESH_TOKENS
                    .swap(store, &hash, Some(&stored), Some(&rotated))
                    .await?
                {
                    true => {
                        // A revocation that landed meanwhile wins: the pair is never handed out.
                        let touched = update_session(store, &session.id, |s| {
                            if s.revoked_at.is_some() {
                                return Err(invalid_refresh());
                            }
                            s.last_used_at = now;
                            Ok(true)
                        })
                        .await?;
                        if touched.is_none() {
                            return Err(invalid_refresh());
                        }
                        ctx.audit.event("token.refreshed");
                        return Ok(SessionTokens {
                            user_id: session.user_id,
                            session_id: session.id,
                            access_token,
                            refresh_token: new_refresh_token,
                            token_type: "Bearer".into(),
                            expires_in,
                        });
                    }
                    false => {
                        // Someone else rotated it first: drop the pair we made, read theirs.
                        store.remove(Table::RefreshTokens, &new_key).await?;
                        continue;
                    }
                }
            }
            RefreshState::Rotated { at, successor } => {
                if now - at <= app.config.refresh_grace_s {
                    let sealed = URL_SAFE_NO_PAD
                        .decode(successor)
                        .map_err(|_| CommandError::internal())?;
                    let plain = app
                        .sealer
                        .open(&successor_aad(&hash), &sealed)
                        .map_err(|e| {
                            tracing::error!(error = %e, "refresh successor does not unseal");
                            CommandError::internal()
                        })?;
                    let pair: SealedPair =
                        serde_json::from_slice(&plain).map_err(|_| CommandError::internal())?;
                    ctx.audit.event("token.refreshed");
                    ctx.audit.note("replayed_within_grace", true);
                    return Ok(SessionTokens {
                        user_id: session.user_id,
                        session_id: session.id,
                        access_token: Secret::new(pair.access_token),
                        refresh_token: Secret::new(pair.refresh_token),
                        token_type: "Bearer".into(),
                        expires_in: pair.expires_in,
                    });
                }
                revoke(ctx, &session.id, "refresh_reuse").await?;
                ctx.audit.event("refresh.reuse_detected");
                tracing::warn!(session = %session.id, "refresh token reused after rotation; session revoked");
                return Err(invalid_refresh());
            }
        }
    }
    Err(CommandError::internal())
}

/// Raises the calling session to AAL2 after a second factor (step-up): adds `amr` values,
/// records the time, starts a new generation of the session, and returns a fresh access token
/// of that generation (the refresh token stays the same; later refreshes carry the new
/// assurance). Access tokens issued before no longer pass the step-up gate.
pub async fn elevate(
    ctx: &Ctx,
    sid: &str,
    add_amr: &[&str],
) -> Result<(SessionRecord, Secret, u64), CommandError> {
    let store = ctx.app.store.as_ref();
    let now = ctx.now().unix_timestamp();
    let ended = || CommandError::unauthenticated("the session has ended");
    let s = update_session(store, sid, |s| {
        if s.revoked_at.is_some() || now >= s.absolute_expires_at {
            return Err(ended());
        }
        s.aal = 2;
        for a in add_amr {
            if !s.amr.iter().any(|x| x == a) {
                s.amr.push((*a).to_owned());
            }
        }
        s.authenticated_at = now;
        s.generation += 1;
        Ok(true)
    })
    .await?
    .ok_or_else(ended)?;
    // Tokens of the earlier generation stop passing the step-up gate from the next request on.
    ctx.app.session_cache.record(&s.id, Live::of(&s));
    let (access, expires_in) = access_token(ctx, &s, now).await?;
    Ok((s, access, expires_in))
}

/// Revokes a session (idempotent). Effective on the next command: the cache is updated before
/// this returns. Returns whether this call revoked it.
pub async fn revoke(ctx: &Ctx, sid: &str, reason: &str) -> Result<bool, CommandError> {
    let app = &ctx.app;
    let now = ctx.now().unix_timestamp();
    let mut newly = false;
    let Some(s) = update_session(app.store.as_ref(), sid, |s| {
        newly = s.revoked_at.is_none();
        if newly {
            s.revoked_at = Some(now);
            s.revoke_reason = Some(reason.to_owned());
        }
        Ok(newly)
    })
    .await?
    else {
        return Ok(false);
    };
    // The per-user index lists sessions that may still be live.
    app.store
        .remove(Table::UserSessions, &index_key(&s.user_id, sid))
        .await?;
    app.session_cache.record(
        sid,
        Live {
            revoked: true,
            ..Live::of(&s)
        },
    );
    Ok(newly)
}

/// The live sessions of a user, newest first.
pub async fn list_live(ctx: &Ctx, user_id: &str) -> Result<Vec<SessionRecord>, CommandError> {
    let store = ctx.app.store.as_ref();
    let now = ctx.now().unix_timestamp();
    let prefix = format!("{user_id}/").into_bytes();
    let mut out = Vec::new();
    for (k, _) in store
        .scan_prefix(Table::UserSessions, &prefix, 10_000)
        .await?
    {
        let sid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if let Some(s) = get_session(store, &sid).await? {
            if s.live_at(now, ctx.app.config.refresh_idle_s) {
                out.push(s);
            }
        }
    }
    out.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(out)
}

/// Revokes every live session of a user except `keep`. Returns how many were revoked.
pub async fn revoke_all(
    ctx: &Ctx,
    user_id: &str,
    keep: Option<&str>,
    reason: &str,
) -> Result<u64, CommandError> {
    // Every indexed session, expired ones included: an expired session's last access token
    // may still be within its lifetime.
    let prefix = format!("{user_id}/").into_bytes();
    let mut n = 0;
    for (k, _) in ctx
        .app
        .store
        .scan_prefix(Table::UserSessions, &prefix, usize::MAX)
        .await?
    {
        let sid = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
        if Some(sid.as_str()) != keep && revoke(ctx, &sid, reason).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// Index entries read per page by [`revoke_everyone`] (small in tests, so they cross pages).
const REVOKE_PAGE: usize = if cfg!(test) { 4 } else { 1_000 };

/// Revokes every session of every account (`reason` recorded on each). Walks the session index
/// a page at a time; each entry leaves the index as its session is revoked (or, with no record
/// behind it, as it is dropped), so every page makes progress and memory stays bounded however
/// many sessions there are. Returns how many sessions this call revoked.
pub async fn revoke_everyone(ctx: &Ctx, reason: &str) -> Result<u64, CommandError> {
    let store = ctx.app.store.as_ref();
    let mut n = 0;
    loop {
        let page = store
            .scan_prefix(Table::UserSessions, b"", REVOKE_PAGE)
            .await?;
        if page.is_empty() {
            return Ok(n);
        }
        for (k, _) in page {
            let sid = k
                .iter()
                .position(|&b| b == b'/')
                .map(|at| String::from_utf8_lossy(&k[at + 1..]).into_owned());
            if let Some(sid) = sid {
                if revoke(ctx, &sid, reason).await? {
                    n += 1;
                }
            }
            // Revocation removed it already; an entry naming no session goes too.
            store.remove(Table::UserSessions, &k).await?;
        }
    }
}

/// Sessions, their index and refresh tokens: a rotated token's successor pair is sealed.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Sessions, Table::UserSessions, Table::RefreshTokens]
    }

    async fn reseal(
        &self,
        store: &dyn Store,
        r: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        let n = r
            .each(store, &REFRESH_TOKENS, |r, k, t| {
                let RefreshState::Rotated { successor, .. } = &mut t.state else {
                    return Ok(false);
                };
                let hash: [u8; 32] = k
                    .try_into()
                    .map_err(|_| ResealError::Invalid("refresh key".into()))?;
                r.reseal(&successor_aad(&hash), successor)
            })
            .await?;
        Ok(vec![("refresh successors", n)])
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use portcullis_store::Table;
    use serde_json::json;
    use std::sync::Arc;

    const PW: &str = "correct horse battery staple";

    /// A liveness read that began before a logout must not put "live" back into the cache
    /// after the logout has answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_read_racing_a_logout_never_revives_the_session() {
        let (b, held) = Bench::faulty().await;
        let b = Arc::new(b);
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "race@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        // As after a restart, or when the cache has started over: the next check reads the store.
        b.app.session_cache.forget_all();
        held.hold_next_read(Table::Sessions);
        let me = {
            let (b, access) = (Arc::clone(&b), access.clone());
            tokio::spawn(async move { b.call("USER.ME", json!({}), Some(&access)).await })
        };
        held.read_held().await;
        // The read has returned what the store held (live); now the session is revoked.
        b.ok("AUTH.LOGOUT", json!({}), Some(&access)).await;
        held.release();
        let raced = me.await.unwrap();
        assert_eq!(
            raced.error_code(),
            Some(ErrorCode::Unauthenticated),
            "a check completing after the logout answered sees it"
        );
        assert_eq!(
            b.code("USER.ME", json!({}), Some(&access)).await,
            Some(ErrorCode::Unauthenticated),
            "the stale read did not put the session back"
        );
    }

    /// On a store other nodes write, a revocation made by another node is refused on this
    /// node's very next command, though this node has served the session as live.
    #[tokio::test]
    async fn on_a_shared_store_a_revocation_by_another_node_takes_effect_at_once() {
        let (b, shared) = Bench::shared().await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "nodes@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap();
        b.ok("USER.ME", json!({}), Some(access)).await;
        // Another node revokes the session, writing the store directly.
        let sid = s["session_id"].as_str().unwrap();
        super::update_session(shared.inner().as_ref(), sid, |r| {
            r.revoked_at = Some(r.created_at);
            Ok::<_, crate::CommandError>(true)
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            b.code("USER.ME", json!({}), Some(access)).await,
            Some(ErrorCode::Unauthenticated)
        );
    }

    /// A new session is cached when it starts: its first request reads no session record.
    #[tokio::test]
    async fn a_new_session_is_live_in_the_cache_from_its_first_request() {
        let (b, held) = Bench::faulty().await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "warm@example.org", "password": PW}),
                None,
            )
            .await;
        let before = held.reads(Table::Sessions);
        b.ok("USER.ME", json!({}), s["access_token"].as_str()).await;
        assert_eq!(held.reads(Table::Sessions), before);
    }

    #[tokio::test]
    async fn access_tokens_expire_and_refresh_respects_grace_idle_and_absolute_limits() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "a@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        b.advance(15 * 60 - 1);
        assert!(b.call("USER.ME", json!({}), Some(&access)).await.ok);
        b.advance(1);
        assert_eq!(
            b.code("USER.ME", json!({}), Some(&access)).await,
            Some(ErrorCode::Unauthenticated)
        );

        // Grace: a retry 10 s later gets the same pair; 11 s later it is theft.
        let r1 = b
            .ok(
                "AUTH.REFRESH",
                json!({"refresh_token": s["refresh_token"]}),
                None,
            )
            .await;
        b.advance(10);
        let r2 = b
            .ok(
                "AUTH.REFRESH",
                json!({"refresh_token": s["refresh_token"]}),
                None,
            )
            .await;
        assert_eq!(r1, r2);
        b.advance(1);
        assert_eq!(
            b.code(
                "AUTH.REFRESH",
                json!({"refresh_token": s["refresh_token"]}),
                None
            )
            .await,
            Some(ErrorCode::InvalidCredentials)
        );
        assert_eq!(
            b.code(
                "AUTH.REFRESH",
                json!({"refresh_token": r1["refresh_token"]}),
                None
            )
            .await,
            Some(ErrorCode::InvalidCredentials),
            "reuse revoked the whole session"
        );

        // Idle: a session unused for 7 days cannot be refreshed.
        let s = b
            .ok(
                "AUTH.LOGIN",
                json!({"email": "a@example.org", "password": PW}),
                None,
            )
            .await;
        b.advance(7 * 24 * 3600);
        assert_eq!(
            b.code(
                "AUTH.REFRESH",
                json!({"refresh_token": s["refresh_token"]}),
                None
            )
            .await,
            Some(ErrorCode::Expired)
        );

        // Absolute: refreshing every 6 days keeps it alive until day 30, not after.
        let mut s = b
            .ok(
                "AUTH.LOGIN",
                json!({"email": "a@example.org", "password": PW}),
                None,
            )
            .await;
        for _ in 0..4 {
            b.advance(6 * 24 * 3600);
            s = b
                .ok(
                    "AUTH.REFRESH",
                    json!({"refresh_token": s["refresh_token"]}),
                    None,
                )
                .await;
        }
        b.advance(6 * 24 * 3600);
        assert_eq!(
            b.code(
                "AUTH.REFRESH",
                json!({"refresh_token": s["refresh_token"]}),
                None
            )
            .await,
            Some(ErrorCode::Expired)
        );
    }
}
