//! `ADMIN.USER.*` and `ADMIN.SESSION.REVOKE_ALL`: accounts and their sessions, and the
//! emergency recovery of an account that lost every factor.

use super::{issue_link, not_found, time_of, user};
use crate::account::deletion::delete_account;
use crate::base::caller::{RateClass, Requirement, Scope};
use crate::identity::accounts::{by_address, get_user, normalize_email, UserRecord};
use crate::identity::sessions::{list_live, revoke_all};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{
    self, AdminUser, Changed, ListParams, RecoverParams, UserPage, UserRef,
};
use portcullis_protocol::ErrorCode;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    use Requirement::Admin;
    use Scope::*;
    vec![
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
    ]
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
