//! Administration: `ADMIN.*` (accounts and sessions, emergency recovery, bootstrap),
//! `APIKEY.*` (keys for application backends) and `KEYS.*` (token signing keys).
//!
//! Callers: the operator token, a superadmin user (a sign-in or step-up within the step-up
//! window, at any level), or an API key holding the command's scope. Every decision is logged
//! with the operator's identity as the event's actor.

use crate::account::deletion::delete_account;
use crate::base::caller::{RateClass, Requirement, Scope};
use crate::base::clock::rfc3339_ms;
use crate::base::crypto::{random_id, random_token};
use crate::factors::email::link::send_link;
use crate::factors::email::{new_flow, FlowKind};
use crate::identity::accounts::{
    by_address, find_by_email, get_user, normalize_email, superadmin_claim, superadmin_claimed,
    Email, UserRecord,
};
use crate::identity::apikeys::{self, ApiKeyRecord, PREFIX};
use crate::identity::sessions::{list_live, revoke_all};
use crate::{Caller, CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{
    self, AdminUser, ApiKeyCreateParams, ApiKeyInfo, ApiKeyList, ApiKeyRef, BootstrapParams,
    Bootstrapped, Changed, ListParams, RecoverParams, SigningKeyInfo, SigningKeys, UserPage,
    UserRef,
};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::Applied;
use time::OffsetDateTime;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    use Requirement::{Admin, Operator};
    use Scope::*;
    vec![
        CommandSpec::new(admin::BOOTSTRAP, Operator, RateClass::Operator, bootstrap),
        CommandSpec::new(
            admin::USER_GET,
            Admin(UsersRead),
            RateClass::Operator,
            user_get,
        )
        .reads_only(),
        CommandSpec::new(
            admin::USER_LIST,
            Admin(UsersRead),
            RateClass::Operator,
            user_list,
        )
        .reads_only(),
        CommandSpec::new(
            admin::USER_DISABLE,
            Admin(UsersWrite),
            RateClass::Operator,
            user_disable,
        ),
        CommandSpec::new(
            admin::USER_ENABLE,
            Admin(UsersWrite),
            RateClass::Operator,
            user_enable,
        ),
        CommandSpec::new(
            admin::USER_DELETE,
            Admin(UsersWrite),
            RateClass::Operator,
            user_delete,
        ),
        CommandSpec::new(
            admin::USER_RECOVER,
            Admin(UsersWrite),
            RateClass::Operator,
            user_recover,
        ),
        CommandSpec::new(
            admin::SESSION_REVOKE_ALL,
            Admin(SessionsWrite),
            RateClass::Operator,
            session_revoke_all,
        ),
        CommandSpec::new(
            admin::APIKEY_CREATE,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_create,
        ),
        CommandSpec::new(
            admin::APIKEY_LIST,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_list,
        )
        .reads_only(),
        CommandSpec::new(
            admin::APIKEY_REVOKE,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_revoke,
        ),
        CommandSpec::new(
            admin::KEYS_ROTATE,
            Admin(KeysWrite),
            RateClass::Operator,
            keys_rotate,
        ),
        CommandSpec::new(
            admin::KEYS_LIST,
            Admin(KeysWrite),
            RateClass::Operator,
            keys_list,
        )
        .reads_only(),
    ]
}

fn time_of(unix: i64) -> String {
    rfc3339_ms(OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

fn not_found() -> CommandError {
    CommandError::new(ErrorCode::NotFound, "no such account")
}

async fn user(ctx: &Ctx, id: &str) -> Result<UserRecord, CommandError> {
    let u = get_user(ctx.app.store.as_ref(), id)
        .await?
        .ok_or_else(not_found)?;
    ctx.audit.subject(&u.id);
    Ok(u)
}

/// Creates the first superadmin (passwordless) and a one-time sign-in link for it. Refuses
/// (`CONFLICT`) once a superadmin exists. The claim (an insert-if-absent of the marker) lands in
/// one atomic batch with the account it names, so a racing sign-up or a crash never leaves a
/// marker naming no account.
///
/// An existing account whose address was never proven may belong to whoever signed up with the
/// address first: everything set up on it (password, sessions, factors, passkeys, API keys) is
/// evicted in the same batch, and it cannot administer until the link proves the mailbox.
async fn bootstrap_admin(ctx: &Ctx, email: &str) -> Result<Bootstrapped, CommandError> {
    let email = normalize_email(email)?;
    let store = ctx.app.store.as_ref();
    let now = ctx.now().unix_timestamp();
    let taken = || CommandError::new(ErrorCode::Conflict, "an administrator already exists");
    let mut claimed = None;
    for _ in 0..BOOTSTRAP_ATTEMPTS {
        if superadmin_claimed(store).await? {
            return Err(taken());
        }
        match find_by_email(store, &email).await? {
            Some(existing) => {
                let id = existing.id;
                let claim_id = id.clone();
                let mut cleared = false;
                let done = crate::identity::evict::change_user(
                    ctx,
                    &id,
                    |u| {
                        u.superadmin = true;
                        cleared = !u.email_verified && crate::factors::forget_all(u);
                        u.updated_at = now;
                        Ok(true)
                    },
                    |_, u| {
                        let claim_id = claim_id.clone();
                        async move {
                            // Re-read on every attempt: a concurrent bootstrap answers CONFLICT.
                            if superadmin_claimed(store).await? {
                                return Err(taken());
                            }
                            let mut planned = if u.email_verified {
                                crate::identity::evict::Planned::default()
                            } else {
                                crate::factors::eviction(ctx, &u.id, None, "admin_bootstrap")
                                    .await?
                            };
                            planned.batch = std::mem::take(&mut planned.batch)
                                .merge(superadmin_claim(&claim_id));
                            Ok(planned)
                        }
                    },
                )
                .await?;
                if let Some((u, planned)) = done {
                    let e = planned.evicted;
                    ctx.audit
                        .note("unverified_account_evicted", cleared || e.anything());
                    ctx.audit.note("unverified_password_cleared", cleared);
                    ctx.audit.note("unverified_sessions_revoked", e.sessions);
                    ctx.audit.note("unverified_api_keys_revoked", e.api_keys);
                    claimed = Some(u.id);
                    break;
                }
                // The account vanished meanwhile: try again as a new one.
            }
            None => {
                let u = UserRecord {
                    id: random_id(ctx.app.rng.as_ref()),
                    email: email.display.clone(),
                    display_name: None,
                    email_verified: false,
                    password_hash: None,
                    created_at: now,
                    updated_at: now,
                    disabled: false,
                    superadmin: true,
                    session_epoch: 0,
                };
                let batch =
                    superadmin_claim(&u.id).merge(crate::identity::accounts::creation(&u, &email));
                match store.apply(batch).await? {
                    Applied::Committed => {
                        ctx.audit.note("user.created", true);
                        claimed = Some(u.id);
                        break;
                    }
                    Applied::Refused { check: 0, .. } => return Err(taken()),
                    // Someone signed up with the address meanwhile: promote that account.
                    Applied::Refused { .. } => continue,
                }
            }
        }
    }
    let id = claimed.ok_or_else(|| CommandError::from(portcullis_store::StoreError::Busy))?;
    ctx.audit.subject(&id);
    ctx.audit.event("admin.bootstrapped");
    let (flow, link) = issue_link(ctx, &email, false).await?;
    Ok(Bootstrapped {
        user_id: id,
        link,
        expires_in: u64::try_from(flow).unwrap_or(0),
    })
}

/// Rounds of [`bootstrap_admin`] against concurrent sign-ups before it gives up.
const BOOTSTRAP_ATTEMPTS: usize = 8;

async fn issue_link(
    ctx: &Ctx,
    email: &Email,
    recovery: bool,
) -> Result<(i64, Secret), CommandError> {
    let mut flow = new_flow(
        ctx,
        FlowKind::Magic,
        email,
        false,
        ctx.app.config.magic_link_ttl_s,
    )
    .await?;
    flow.recovery = recovery;
    let ttl = flow.expires_at - flow.created_at;
    let link = send_link(ctx, &flow, &ctx.app.config.default_locale).await?;
    crate::factors::email::save_new(ctx, &flow).await?;
    ctx.audit.note("flow_id", flow.id.clone());
    Ok((ttl, link))
}

/// `ADMIN.BOOTSTRAP {email}` — operator. See [`bootstrap_admin`].
async fn bootstrap(ctx: Ctx, p: BootstrapParams) -> Result<Bootstrapped, CommandError> {
    bootstrap_admin(&ctx, &p.email).await
}

async fn view(ctx: &Ctx, u: &UserRecord) -> Result<AdminUser, CommandError> {
    Ok(AdminUser {
        user_id: u.id.clone(),
        email: u.email.clone(),
        display_name: u.display_name.clone(),
        email_verified: u.email_verified,
        created_at: time_of(u.created_at),
        disabled: u.disabled,
        superadmin: u.superadmin,
        has_password: u.password_hash.is_some(),
        has_totp: crate::factors::enrolled(ctx, u, crate::factors::Factor::Totp).await?,
        passkeys: u64::try_from(crate::factors::passkey::list(ctx, &u.id).await?.len())
            .unwrap_or(0),
        sessions: u64::try_from(list_live(ctx, &u.id).await?.len()).unwrap_or(0),
    })
}

/// `ADMIN.USER.GET {user_id}` — `users:read`. The account, its factors and live sessions (no
/// secret or hash). `NOT_FOUND`.
async fn user_get(ctx: Ctx, p: UserRef) -> Result<AdminUser, CommandError> {
    let u = user(&ctx, &p.user_id).await?;
    view(&ctx, &u).await
}

/// `ADMIN.USER.LIST {email_prefix?, cursor?, limit?}` — `users:read`. Accounts in address
/// order, paginated.
async fn user_list(ctx: Ctx, p: ListParams) -> Result<UserPage, CommandError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(CommandError::invalid_params(
            "limit must be between 1 and 500",
        ));
    }
    let prefix = p
        .email_prefix
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let store = ctx.app.store.as_ref();
    let mut users = Vec::new();
    let mut next_cursor = None;
    for (key, id) in by_address(store, &prefix).await? {
        if p.cursor
            .as_ref()
            .is_some_and(|c| key.as_str() <= c.as_str())
        {
            continue;
        }
        if users.len() == limit {
            next_cursor = users
                .last()
                .map(|u: &AdminUser| u.email.to_ascii_lowercase());
            break;
        }
        if let Some(u) = get_user(store, &id).await? {
            users.push(view(&ctx, &u).await?);
        }
    }
    ctx.audit
        .note("returned", u64::try_from(users.len()).unwrap_or(0));
    Ok(UserPage { users, next_cursor })
}

async fn set_disabled(ctx: &Ctx, user_id: &str, disabled: bool) -> Result<Changed, CommandError> {
    user(ctx, user_id).await?;
    // The flag and the revocation of every session land together: a crash in between cannot
    // leave a disabled account with live sessions.
    let (_, planned) = crate::identity::evict::change_user(
        ctx,
        user_id,
        |u| {
            let change = u.disabled != disabled;
            u.disabled = disabled;
            Ok(change || disabled)
        },
        |_, _| async move {
            if disabled {
                crate::identity::evict::revocation(ctx, user_id, None, "account_disabled").await
            } else {
                Ok(crate::identity::evict::Planned::default())
            }
        },
    )
    .await?
    .ok_or_else(not_found)?;
    Ok(Changed {
        user_id: user_id.to_owned(),
        sessions_revoked: planned.evicted.sessions,
    })
}

/// `ADMIN.USER.DISABLE {user_id}` — `users:write`. The account can no longer sign in, and every
/// session is revoked at once.
async fn user_disable(ctx: Ctx, p: UserRef) -> Result<Changed, CommandError> {
    let r = set_disabled(&ctx, &p.user_id, true).await?;
    ctx.audit.event("user.disabled");
    ctx.audit.note("sessions_revoked", r.sessions_revoked);
    Ok(r)
}

/// `ADMIN.USER.ENABLE {user_id}` — `users:write`.
async fn user_enable(ctx: Ctx, p: UserRef) -> Result<Changed, CommandError> {
    let r = set_disabled(&ctx, &p.user_id, false).await?;
    ctx.audit.event("user.enabled");
    Ok(r)
}

/// `ADMIN.USER.DELETE {user_id}` — `users:write`. Revokes every session and removes the
/// account, its address, its factors and passkeys. The event log keeps what happened.
async fn user_delete(ctx: Ctx, p: UserRef) -> Result<Changed, CommandError> {
    let u = user(&ctx, &p.user_id).await?;
    let sessions_revoked = delete_account(&ctx, &u).await?;
    ctx.audit.event("user.deleted");
    Ok(Changed {
        user_id: u.id,
        sessions_revoked,
    })
}

/// `ADMIN.SESSION.REVOKE_ALL {user_id}` — `sessions:write`.
async fn session_revoke_all(ctx: Ctx, p: UserRef) -> Result<Changed, CommandError> {
    let u = user(&ctx, &p.user_id).await?;
    let sessions_revoked = revoke_all(&ctx, &u.id, None, "admin_revoked").await?;
    ctx.audit.event("session.revoked");
    ctx.audit.note("sessions_revoked", sessions_revoked);
    Ok(Changed {
        user_id: u.id,
        sessions_revoked,
    })
}

/// `ADMIN.USER.RECOVER {user_id, reason}` — `users:write`. For a user who lost every factor:
/// revokes every session and mails a single-use recovery link to the account's verified
/// address; using it signs in without the second factor (`amr` includes `operator_recovery`) so
/// the user can enrol again. Removes nothing. Never returns a session or the link: only the mailbox
/// owner can finish. `CONFLICT` when the address was never verified.
async fn user_recover(ctx: Ctx, p: RecoverParams) -> Result<Changed, CommandError> {
    let reason = p.reason.trim();
    if !(3..=500).contains(&reason.chars().count()) || reason.chars().any(char::is_control) {
        return Err(CommandError::invalid_params(
            "reason must be 3 to 500 characters",
        ));
    }
    let u = user(&ctx, &p.user_id).await?;
    if u.disabled {
        return Err(CommandError::new(
            ErrorCode::Conflict,
            "the account is disabled; enable it first",
        ));
    }
    if !u.email_verified {
        return Err(CommandError::new(
            ErrorCode::Conflict,
            "the account's address was never verified; recovery by mail would not prove anything",
        ));
    }
    let sessions_revoked = revoke_all(&ctx, &u.id, None, "operator_recovery").await?;
    let email = normalize_email(&u.email)?;
    issue_link(&ctx, &email, true).await?;
    ctx.audit.event("recovery.operator_initiated");
    ctx.audit.note("reason", reason.to_owned());
    ctx.audit.note("sessions_revoked", sessions_revoked);
    Ok(Changed {
        user_id: u.id,
        sessions_revoked,
    })
}

fn key_info(r: &ApiKeyRecord, key: Option<Secret>) -> ApiKeyInfo {
    ApiKeyInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        scopes: r.scopes.clone(),
        created_at: time_of(r.created_at),
        expires_at: r.expires_at.map(time_of),
        revoked_at: r.revoked_at.map(time_of),
        key,
    }
}

/// `APIKEY.CREATE {name, scopes, expires_in?}` — `apikeys:write`. Returns the key once
/// (`pk_live_…`, 256 bits); the server keeps only its SHA-256.
async fn apikey_create(ctx: Ctx, p: ApiKeyCreateParams) -> Result<ApiKeyInfo, CommandError> {
    let name = p.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(CommandError::invalid_params(
            "name must be 1 to 64 characters",
        ));
    }
    const MAX_LIFETIME_S: u64 = 10 * 366 * 24 * 3600;
    if p.expires_in.is_some_and(|s| s == 0 || s > MAX_LIFETIME_S) {
        return Err(CommandError::invalid_params(
            "expires_in must be between 1 second and 10 years",
        ));
    }
    if p.scopes.is_empty() || p.scopes.iter().any(|s| Scope::parse(s).is_none()) {
        return Err(CommandError::invalid_params(
            "scopes must be a non-empty list of users:read, users:write, sessions:write, log:read, keys:write, apikeys:write",
        ));
    }
    // An API key cannot mint a key with scopes it does not hold itself.
    if let Caller::ApiKey(k) = &ctx.caller {
        if p.scopes.iter().any(|s| !k.scopes.contains(s)) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "a key cannot grant scopes it lacks",
            ));
        }
    }
    let now = ctx.now().unix_timestamp();
    let token = random_token(ctx.app.rng.as_ref(), PREFIX);
    let rec = ApiKeyRecord {
        id: random_id(ctx.app.rng.as_ref())[..16].to_owned(),
        name,
        scopes: p.scopes,
        created_at: now,
        expires_at: p
            .expires_in
            .map(|s| now + i64::try_from(s).unwrap_or(i64::MAX / 2)),
        revoked_at: None,
        created_by: ctx.caller.actor().to_string(),
    };
    apikeys::insert(&ctx.app, &token, &rec).await?;
    ctx.audit.event("apikey.created");
    ctx.audit.note("apikey_id", rec.id.clone());
    ctx.audit.note("scopes", rec.scopes.join(" "));
    Ok(key_info(&rec, Some(Secret::new(token.as_str()))))
}

/// `APIKEY.LIST` — `apikeys:write`.
async fn apikey_list(ctx: Ctx, _p: NoParams) -> Result<ApiKeyList, CommandError> {
    let keys = apikeys::all(&ctx.app)
        .await?
        .iter()
        .map(|(_, r)| key_info(r, None))
        .collect();
    Ok(ApiKeyList { keys })
}

/// `APIKEY.REVOKE {id}` — `apikeys:write`. Effective on the key's next request. `NOT_FOUND`.
async fn apikey_revoke(ctx: Ctx, p: ApiKeyRef) -> Result<ApiKeyInfo, CommandError> {
    let now = ctx.now().unix_timestamp();
    let rec = apikeys::revoke(&ctx.app, &p.id, now)
        .await?
        .ok_or_else(|| CommandError::new(ErrorCode::NotFound, "no such API key"))?;
    ctx.audit.event("apikey.revoked");
    ctx.audit.note("apikey_id", rec.id.clone());
    Ok(key_info(&rec, None))
}

async fn key_list(ctx: &Ctx) -> Result<SigningKeys, CommandError> {
    let now = ctx.now().unix_timestamp();
    let keys = ctx
        .app
        .tokens
        .list(ctx.app.store.as_ref())
        .await?
        .into_iter()
        .map(|(kid, created, active, until)| SigningKeyInfo {
            kid,
            created_at: time_of(created),
            state: match (active, until) {
                (true, _) => "active",
                (false, Some(u)) if now <= u => "verifying",
                _ => "retired",
            }
            .to_owned(),
            verify_until: until.map(time_of),
        })
        .collect();
    Ok(SigningKeys { keys })
}

/// `KEYS.ROTATE` — `keys:write`. A new Ed25519 signing key becomes active; the old one keeps
/// verifying until the last token it signed has expired, then retires (and leaves the JWKS).
async fn keys_rotate(ctx: Ctx, _p: NoParams) -> Result<SigningKeys, CommandError> {
    let app = &ctx.app;
    let kid = app
        .tokens
        .rotate(
            app.store.as_ref(),
            &app.sealer,
            app.rng.as_ref(),
            ctx.now().unix_timestamp(),
        )
        .await?;
    ctx.audit.event("keys.rotated");
    ctx.audit.note("kid", kid);
    key_list(&ctx).await
}

/// `KEYS.LIST` — `keys:write`. Ids, creation times and states.
async fn keys_list(ctx: Ctx, _p: NoParams) -> Result<SigningKeys, CommandError> {
    key_list(&ctx).await
}

#[cfg(test)]
mod tests {
    use crate::identity::accounts::update_user;
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::json;

    /// A superadmin whose address was never proven may be whoever signed up with it first: it
    /// cannot administer (an account promoted before bootstrap evicted squatters is the case).
    #[tokio::test]
    async fn an_unproven_superadmin_cannot_administer() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "root@example.org", "password": "a long enough passphrase"}),
                None,
            )
            .await;
        let id = s["user_id"].as_str().unwrap();
        let access = s["access_token"].as_str().unwrap();
        update_user(b.app.store.as_ref(), id, |u| {
            u.superadmin = true;
            true
        })
        .await
        .unwrap();
        let create = json!({"name": "ci", "scopes": ["users:read", "apikeys:write"]});
        assert_eq!(
            b.code("APIKEY.CREATE", create.clone(), Some(access)).await,
            Some(ErrorCode::Forbidden)
        );
        update_user(b.app.store.as_ref(), id, |u| {
            u.email_verified = true;
            true
        })
        .await
        .unwrap();
        b.ok("APIKEY.CREATE", create, Some(access)).await;
    }
}
