//! `SESSION.LIST`, `SESSION.REVOKE`, `SESSION.REVOKE_ALL`, and the operator's
//! `ADMIN.SESSION.REVOKE_EVERYONE`.

use crate::base::caller::{RateClass, Requirement};
use crate::base::clock::rfc3339_ms;
use crate::identity::sessions::{get_session, list_live, revoke, revoke_all, revoke_everyone};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{self, EveryoneRevoked};
use portcullis_protocol::commands::session::{
    self, RevokeAllParams, RevokeParams, Revoked, SessionInfo, SessionList,
};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::ErrorCode;
use time::OffsetDateTime;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(session::LIST, Requirement::User, RateClass::Account, list).reads_only(),
        // Ending sessions is sensitive (ASVS 7.5.2): a stolen session must not sign the owner
        // out of theirs. One session or all of them needs a recent proof; signing out the
        // calling session alone is AUTH.LOGOUT.
        CommandSpec::new(
            session::REVOKE,
            Requirement::UserStepUp,
            RateClass::Account,
            revoke_one,
        ),
        CommandSpec::new(
            session::REVOKE_ALL,
            Requirement::UserStepUp,
            RateClass::Account,
            revoke_every,
        ),
        CommandSpec::new(
            admin::SESSION_REVOKE_EVERYONE,
            Requirement::Superadmin,
            RateClass::Operator,
            revoke_everyone_cmd,
        ),
    ]
}

fn time_of(unix: i64) -> String {
    rfc3339_ms(OffsetDateTime::from_unix_timestamp(unix).unwrap_or(OffsetDateTime::UNIX_EPOCH))
}

/// `SESSION.LIST` — user. The caller's live sessions, newest first.
async fn list(ctx: Ctx, _p: NoParams) -> Result<SessionList, CommandError> {
    let me = ctx.user()?.clone();
    let sessions = list_live(&ctx, &me.user_id)
        .await?
        .into_iter()
        .map(|s| SessionInfo {
            current: s.id == me.session_id,
            session_id: s.id,
            created_at: time_of(s.created_at),
            last_used_at: time_of(s.last_used_at),
            client: s.client,
            user_agent: s.user_agent,
            aal: s.aal,
            amr: s.amr,
        })
        .collect();
    Ok(SessionList { sessions })
}

/// `SESSION.REVOKE` — user after step-up (ASVS 7.5.2). Revokes one of the caller's sessions
/// (`NOT_FOUND` for any other id).
async fn revoke_one(ctx: Ctx, p: RevokeParams) -> Result<Revoked, CommandError> {
    let me = ctx.user()?.clone();
    let owned = get_session(ctx.app.store.as_ref(), &p.session_id)
        .await?
        .is_some_and(|s| s.user_id == me.user_id);
    if !owned {
        return Err(CommandError::new(ErrorCode::NotFound, "no such session"));
    }
    let n = u64::from(revoke(&ctx, &p.session_id, "user_revoked").await?);
    ctx.audit.session(&p.session_id);
    ctx.audit.event("session.revoked");
    Ok(Revoked { revoked: n })
}

/// `SESSION.REVOKE_ALL` — user after step-up (a factor proven within `step_up_window_s`, at
/// any level). Revokes all the caller's sessions, the current one too unless
/// `keep_current`.
async fn revoke_every(ctx: Ctx, p: RevokeAllParams) -> Result<Revoked, CommandError> {
    let me = ctx.user()?.clone();
    let keep = p.keep_current.then_some(me.session_id.as_str());
    let n = revoke_all(&ctx, &me.user_id, keep, "user_revoked_all").await?;
    ctx.audit.event("session.revoked");
    ctx.audit.note("revoked", n);
    Ok(Revoked { revoked: n })
}

/// `ADMIN.SESSION.REVOKE_EVERYONE` — the operator token, or a superadmin after step-up (no API
/// key). Revokes every session of every account, the caller's own included (reason
/// `admin_revoked_everyone`), for example after a signing key or the database may have leaked.
/// The event records how many. Accounts, factors and keys are unchanged: everyone signs in
/// again.
async fn revoke_everyone_cmd(ctx: Ctx, _p: NoParams) -> Result<EveryoneRevoked, CommandError> {
    let sessions_revoked = revoke_everyone(&ctx, "admin_revoked_everyone").await?;
    ctx.audit.event("session.revoked_everyone");
    ctx.audit.note("sessions_revoked", sessions_revoked);
    tracing::warn!(
        sessions_revoked,
        "every session of every account was revoked"
    );
    Ok(EveryoneRevoked { sessions_revoked })
}

#[cfg(test)]
mod tests {
    use crate::identity::sessions::get_session;
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::{json, Value};

    const PW: &str = "correct horse battery staple";

    async fn login(b: &Bench, email: &str) -> Value {
        b.ok("AUTH.LOGIN", json!({"email": email, "password": PW}), None)
            .await
    }

    async fn events(b: &Bench) -> Vec<portcullis_protocol::Event> {
        b.app
            .log
            .read(1, u64::MAX, 100_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event.unwrap())
            .collect()
    }

    fn access(v: &Value) -> Option<&str> {
        v["access_token"].as_str()
    }

    #[tokio::test]
    async fn signing_out_everywhere_needs_a_recent_proof() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "all@example.org", "password": PW}),
                None,
            )
            .await;
        let other = login(&b, "all@example.org").await;
        b.advance(11 * 60);
        let r = b
            .call(
                "SESSION.REVOKE_ALL",
                json!({"keep_current": true}),
                access(&s),
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "step_up_required"
        );
        // Nor one session: a stolen session must not sign the owner out (ASVS 7.5.2).
        let r = b
            .call(
                "SESSION.REVOKE",
                json!({"session_id": other["session_id"]}),
                access(&s),
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{r:?}");
        assert!(
            b.call("USER.ME", json!({}), access(&other)).await.ok,
            "nothing revoked"
        );
        // Signing in again is the proof.
        let fresh = login(&b, "all@example.org").await;
        let r = b
            .ok(
                "SESSION.REVOKE_ALL",
                json!({"keep_current": true}),
                access(&fresh),
            )
            .await;
        assert_eq!(r["revoked"], 2);
        assert_eq!(
            b.code("USER.ME", json!({}), access(&other)).await,
            Some(ErrorCode::Unauthenticated)
        );
        assert!(b.call("USER.ME", json!({}), access(&fresh)).await.ok);
    }

    #[tokio::test]
    async fn a_sign_in_beyond_the_session_cap_revokes_the_oldest_sessions() {
        let b = Bench::new(|c| c.max_sessions_per_user = 3).await;
        let first = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "cap@example.org", "password": PW}),
                None,
            )
            .await;
        let mut sessions = vec![first];
        for _ in 0..3 {
            b.advance(1);
            sessions.push(login(&b, "cap@example.org").await);
        }
        // Another account is not affected by this one's cap.
        let bystander = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "other@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(
            b.code("USER.ME", json!({}), access(&sessions[0])).await,
            Some(ErrorCode::Unauthenticated),
            "the oldest session was revoked by the fourth sign-in"
        );
        for s in &sessions[1..] {
            assert!(b.call("USER.ME", json!({}), access(s)).await.ok);
        }
        assert!(b.call("USER.ME", json!({}), access(&bystander)).await.ok);
        let oldest = get_session(
            b.app.store.as_ref(),
            sessions[0]["session_id"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(oldest.revoke_reason.as_deref(), Some("session_limit"));
        let listed = b.ok("SESSION.LIST", json!({}), access(&sessions[3])).await;
        assert_eq!(listed["sessions"].as_array().unwrap().len(), 3);
        // The login that evicted records it in its event.
        let evicting = events(&b)
            .await
            .into_iter()
            .filter(|e| e.summary.get("sessions_evicted").is_some())
            .collect::<Vec<_>>();
        assert_eq!(evicting.len(), 1);
        assert_eq!(evicting[0].summary["sessions_evicted"], 1);
        // Two more sign-ins: the cap holds, oldest first.
        b.advance(1);
        sessions.push(login(&b, "cap@example.org").await);
        assert_eq!(
            b.code("USER.ME", json!({}), access(&sessions[1])).await,
            Some(ErrorCode::Unauthenticated)
        );
        assert!(b.call("USER.ME", json!({}), access(&sessions[2])).await.ok);
    }

    #[tokio::test]
    async fn the_operator_revokes_every_session_of_every_account_in_pages() {
        let b = Bench::new(|_| {}).await;
        let mut tokens = Vec::new();
        for u in 0..3 {
            let email = format!("u{u}@example.org");
            tokens.push(
                b.ok("AUTH.SIGNUP", json!({"email": email, "password": PW}), None)
                    .await,
            );
            for _ in 0..5 {
                tokens.push(login(&b, &email).await);
            }
        }
        // One already revoked: not counted again.
        b.ok("AUTH.LOGOUT", json!({}), access(&tokens[0])).await;
        let operator = crate::infra::node::read_operator_token(&b.app.config.data_dir).unwrap();
        let operator = operator.expose();

        // Not for plain users, nor for API keys, whatever their scopes.
        assert_eq!(
            b.code(
                "ADMIN.SESSION.REVOKE_EVERYONE",
                json!({}),
                access(&tokens[1])
            )
            .await,
            Some(ErrorCode::Forbidden)
        );
        let key = b
            .ok(
                "APIKEY.CREATE",
                json!({"name": "ops", "scopes": ["sessions:write", "users:write"]}),
                Some(operator),
            )
            .await;
        assert_eq!(
            b.code(
                "ADMIN.SESSION.REVOKE_EVERYONE",
                json!({}),
                key["key"].as_str()
            )
            .await,
            Some(ErrorCode::Forbidden)
        );
        assert!(b.call("USER.ME", json!({}), access(&tokens[1])).await.ok);

        let r = b
            .ok("ADMIN.SESSION.REVOKE_EVERYONE", json!({}), Some(operator))
            .await;
        assert_eq!(r["sessions_revoked"], 17);
        for t in &tokens {
            assert_eq!(
                b.code("USER.ME", json!({}), access(t)).await,
                Some(ErrorCode::Unauthenticated)
            );
            assert_eq!(
                b.code(
                    "AUTH.REFRESH",
                    json!({"refresh_token": t["refresh_token"]}),
                    None
                )
                .await,
                Some(ErrorCode::InvalidCredentials)
            );
        }
        let last = events(&b)
            .await
            .into_iter()
            .rev()
            .find(|e| e.command.as_deref() == Some("ADMIN.SESSION.REVOKE_EVERYONE"))
            .unwrap();
        assert_eq!(last.outcome, "ok");
        assert_eq!(last.summary["sessions_revoked"], 17);
        // Nothing is left to revoke; accounts still sign in.
        let r = b
            .ok("ADMIN.SESSION.REVOKE_EVERYONE", json!({}), Some(operator))
            .await;
        assert_eq!(r["sessions_revoked"], 0);
        let again = login(&b, "u1@example.org").await;
        assert!(b.call("USER.ME", json!({}), access(&again)).await.ok);
    }
}
