//! Administration: `ADMIN.*` (accounts and sessions, emergency recovery, bootstrap),
//! `APIKEY.*` (keys for application backends) and `KEYS.*` (token signing keys).
//!
//! Callers: the operator token, a superadmin user (a sign-in or step-up within the step-up
//! window, at any level), or an API key holding the command's scope. Every decision is logged
//! with the operator's identity as the event's actor.

pub mod apikeys;
pub mod bootstrap;
pub mod keys;
pub mod users;

use crate::base::clock::rfc3339_ms;
use crate::factors::email::link::send_link;
use crate::factors::email::{new_flow, FlowKind};
use crate::identity::accounts::{get_user, Email, UserRecord};
use crate::{CommandError, Ctx};
use portcullis_protocol::{ErrorCode, Secret};
use time::OffsetDateTime;

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
