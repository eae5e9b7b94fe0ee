//! `USER.ME`, `USER.UPDATE`, `USER.SET_PASSWORD`.

use crate::accounts::{check_display_name, get_user, update_user, UserRecord};
use crate::caller::{RateClass, Requirement};
use crate::clock::rfc3339_ms;
use crate::passwords::check_policy;
use crate::sessions::revoke_all;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::commands::user::{self, Me, PasswordSet, SetPasswordParams, UpdateParams};
use portcullis_protocol::ErrorCode;
use time::OffsetDateTime;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(user::ME, Requirement::User, RateClass::Account, me).enrolment_allowed(),
        CommandSpec::new(user::UPDATE, Requirement::User, RateClass::Account, update),
        CommandSpec::new(
            user::SET_PASSWORD,
            Requirement::UserStepUp,
            RateClass::Credential,
            set_password,
        ),
    ]
}

async fn load(ctx: &Ctx) -> Result<UserRecord, CommandError> {
    let id = &ctx.user()?.user_id;
    get_user(ctx.app.store.as_ref(), id)
        .await?
        .ok_or_else(|| CommandError::unauthenticated("the account no longer exists"))
}

fn me_of(ctx: &Ctx, u: UserRecord) -> Result<Me, CommandError> {
    let caller = ctx.user()?;
    Ok(Me {
        user_id: u.id,
        email: u.email,
        display_name: u.display_name,
        email_verified: u.email_verified,
        created_at: rfc3339_ms(
            OffsetDateTime::from_unix_timestamp(u.created_at).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        ),
        aal: caller.aal,
        amr: caller.amr.clone(),
        session_id: caller.session_id.clone(),
    })
}

/// `USER.ME` — user. The account and the current session's assurance.
async fn me(ctx: Ctx, _p: NoParams) -> Result<Me, CommandError> {
    let u = load(&ctx).await?;
    me_of(&ctx, u)
}

/// `USER.UPDATE` — user. Changes the display name (`""` clears it); answers like `USER.ME`.
async fn update(ctx: Ctx, p: UpdateParams) -> Result<Me, CommandError> {
    let mut u = load(&ctx).await?;
    if p.display_name.is_some() {
        let name = check_display_name(p.display_name)?;
        let now = ctx.now().unix_timestamp();
        u = update_user(ctx.app.store.as_ref(), &u.id, |u| {
            u.display_name = name.clone();
            u.updated_at = now;
            true
        })
        .await?
        .ok_or_else(|| CommandError::unauthenticated("the account no longer exists"))?;
        ctx.audit.event("user.updated");
    }
    me_of(&ctx, u)
}

/// `USER.SET_PASSWORD` — user after step-up (AAL2 or a sign-in within the step-up window), at
/// AAL1 or more (`FORBIDDEN` for the unproven session of a
/// passwordless sign-up). Needs `current_password` when the account has one
/// (`INVALID_CREDENTIALS` if wrong). Revokes every other session.
async fn set_password(ctx: Ctx, p: SetPasswordParams) -> Result<PasswordSet, CommandError> {
    let u = load(&ctx).await?;
    if let Some(stored) = u.password_hash.as_deref() {
        let Some(current) = &p.current_password else {
            return Err(CommandError::invalid_params("current_password is required"));
        };
        if !ctx.app.passwords.verify(current, Some(stored)).await?.ok {
            ctx.audit.event("password.change_refused");
            return Err(CommandError::new(
                ErrorCode::InvalidCredentials,
                "the current password is wrong",
            ));
        }
    }
    check_policy(&p.new_password)?;
    let new_hash = Some(ctx.app.passwords.hash(&p.new_password).await?);
    let now = ctx.now().unix_timestamp();
    // Only over the password that was just checked: a change racing this one is refused.
    let mut replaced = false;
    update_user(ctx.app.store.as_ref(), &u.id, |cur| {
        replaced = cur.password_hash == u.password_hash;
        if replaced {
            cur.password_hash = new_hash.clone();
            cur.updated_at = now;
        }
        replaced
    })
    .await?;
    if !replaced {
        return Err(CommandError::new(
            ErrorCode::Conflict,
            "the password changed meanwhile; try again",
        ));
    }
    let keep = ctx.user()?.session_id.clone();
    let sessions_revoked = revoke_all(&ctx, &u.id, Some(&keep), "password_changed").await?;
    ctx.audit.event("password.changed");
    ctx.audit.note("sessions_revoked", sessions_revoked);
    Ok(PasswordSet {
        password_set: true,
        sessions_revoked,
    })
}
