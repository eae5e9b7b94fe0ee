//! `USER.ME`, `USER.UPDATE`, `USER.SET_PASSWORD`.

use crate::base::caller::{RateClass, Requirement};
use crate::base::clock::rfc3339_ms;
use crate::identity::accounts::{check_display_name, get_user, update_user, UserRecord};
use crate::identity::passwords::{check_policy, PolicyContext};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::commands::user::{
    self, ChangeEmailParams, ChangeStarted, Deleted, Me, PasswordSet, SetPasswordParams,
    UpdateParams,
};
use portcullis_protocol::ErrorCode;
use time::OffsetDateTime;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(user::ME, Requirement::User, RateClass::Account, me)
            .enrolment_allowed()
            .reads_only(),
        CommandSpec::new(user::UPDATE, Requirement::User, RateClass::Account, update),
        CommandSpec::new(
            user::SET_PASSWORD,
            Requirement::UserStepUp,
            RateClass::Credential,
            set_password,
        ),
        CommandSpec::new(
            user::DELETE,
            Requirement::UserStepUp,
            RateClass::Account,
            delete,
        ),
        CommandSpec::new(
            user::CHANGE_EMAIL,
            Requirement::UserStepUp,
            RateClass::Send,
            change_email,
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

/// `USER.SET_PASSWORD` — user after step-up (a sign-in or step-up within the step-up window, at
/// any level), at AAL1 or more (`FORBIDDEN` for the unproven session of a
/// passwordless sign-up). Needs `current_password` when the account has one
/// (`INVALID_CREDENTIALS` if wrong). Revokes every other session.
async fn set_password(ctx: Ctx, p: SetPasswordParams) -> Result<PasswordSet, CommandError> {
    let u = load(&ctx).await?;
    // A forgotten password is reset by signing in without it (link, code or passkey, and the
    // second factor when the account has one) and then setting a new one: a session whose
    // proofs include no password may omit `current_password` (ASVS 6.4.3; the step-up gate
    // has already required that proof to be recent). A given `current_password` is always
    // checked.
    let proved_without_password = !ctx
        .user()?
        .amr
        .iter()
        .any(|a| a == crate::identity::passwords::AMR_PASSWORD);
    if let Some(stored) = u.password_hash.as_deref() {
        match &p.current_password {
            Some(current) => {
                if !ctx.app.passwords.verify(current, Some(stored)).await?.ok {
                    ctx.audit.event("password.change_refused");
                    return Err(CommandError::new(
                        ErrorCode::InvalidCredentials,
                        "the current password is wrong",
                    ));
                }
            }
            None if proved_without_password => ctx.audit.note("password.reset", true),
            None => return Err(CommandError::invalid_params("current_password is required")),
        }
    }
    let context = PolicyContext {
        product_name: &ctx.app.config.product_name,
        email: Some(&u.email),
        display_name: u.display_name.as_deref(),
    };
    check_policy(&p.new_password, &context)?;
    let new_hash = Some(ctx.app.passwords.hash(&p.new_password).await?);
    let now = ctx.now().unix_timestamp();
    // Only over the password that was just checked: a change racing this one is refused. The
    // new hash and the revocation of every other session land in one batch, which also checks
    // that the calling session is still live: no crash leaves the old sessions alive beside
    // the new password.
    let keep = ctx.user()?.session_id.clone();
    let changed = || {
        CommandError::new(
            ErrorCode::Conflict,
            "the password changed meanwhile; try again",
        )
    };
    let (_, planned) = crate::identity::evict::change_user(
        &ctx,
        &u.id,
        |cur| {
            if cur.password_hash != u.password_hash {
                return Err(changed());
            }
            cur.password_hash = new_hash.clone();
            cur.updated_at = now;
            Ok(true)
        },
        |_, _| {
            let (ctx, id, keep) = (&ctx, &u.id, &keep);
            async move {
                let mut planned =
                    crate::identity::evict::revocation(ctx, id, Some(keep), "password_changed")
                        .await?;
                planned.batch = std::mem::take(&mut planned.batch)
                    .merge(crate::identity::evict::caller_session_check(ctx).await?);
                Ok(planned)
            }
        },
    )
    .await?
    .ok_or_else(|| CommandError::unauthenticated("the account no longer exists"))?;
    let sessions_revoked = planned.evicted.sessions;
    ctx.audit.event("password.changed");
    ctx.audit.note("sessions_revoked", sessions_revoked);
    Ok(PasswordSet {
        password_set: true,
        sessions_revoked,
    })
}

/// `USER.DELETE` — user after step-up. Deletes the caller's own account: every session ends,
/// factors and passkeys are removed, the address is freed. The event log keeps the record.
async fn delete(ctx: Ctx, _p: NoParams) -> Result<Deleted, CommandError> {
    let u = load(&ctx).await?;
    crate::account::deletion::delete_account(&ctx, &u).await?;
    ctx.audit.event("user.deleted");
    Ok(Deleted {
        user_id: u.id,
        deleted: true,
    })
}

/// `USER.CHANGE_EMAIL {new_email}` — user after step-up. Mails a confirmation link to the new
/// address (send limits apply to it); the address changes only when that link is used
/// (`MAGIC.VERIFY`), and the old address is then told. The send limits are applied first and an
/// address that already has an account is answered exactly like a free one (no `CONFLICT`), so
/// the command cannot test whether an address is taken; nothing is mailed to it and nothing is
/// stored (the taken address's own pending links are not touched).
async fn change_email(ctx: Ctx, p: ChangeEmailParams) -> Result<ChangeStarted, CommandError> {
    let u = load(&ctx).await?;
    let email = crate::identity::accounts::normalize_email(&p.new_email)?;
    crate::factors::email::count_send(&ctx, &email).await?;
    let mut flow = crate::factors::email::new_flow(
        &ctx,
        crate::factors::email::FlowKind::Magic,
        &email,
        false,
        ctx.app.config.magic_link_ttl_s,
    )
    .await?;
    let store = ctx.app.store.as_ref();
    let taken = crate::identity::accounts::find_by_email(store, &email)
        .await?
        .is_some();
    if !taken {
        flow.phantom = false;
        flow.change_email_for = Some(u.id.clone());
        crate::factors::email::link::send_link(&ctx, &flow, &ctx.app.config.default_locale).await?;
        crate::factors::email::save_new(&ctx, &flow).await?;
    }
    ctx.audit.event("email.change_requested");
    ctx.audit.note("flow_id", flow.id.clone());
    ctx.audit.note("mailed", !taken);
    Ok(ChangeStarted {
        expires_in: u64::try_from(flow.expires_at - flow.created_at).unwrap_or(0),
        flow_id: flow.id,
    })
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::json;

    const PW: &str = "correct horse battery staple";

    #[tokio::test]
    async fn an_address_changes_only_through_a_link_sent_to_the_new_address() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "old@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        b.ok("AUTH.SIGNUP", json!({"email": "taken@example.org"}), None)
            .await;
        b.ok(
            "USER.CHANGE_EMAIL",
            json!({"new_email": "taken@example.org"}),
            Some(&access),
        )
        .await;
        b.advance(31);
        b.ok(
            "USER.CHANGE_EMAIL",
            json!({"new_email": "New@Example.org"}),
            Some(&access),
        )
        .await;
        // Nothing changed yet.
        assert_eq!(
            b.ok("USER.ME", json!({}), Some(&access)).await["email"],
            "old@example.org"
        );
        let token = b.link_token(1).await;
        let v = b.ok("MAGIC.VERIFY", json!({"token": token}), None).await;
        let me = b.ok("USER.ME", json!({}), v["access_token"].as_str()).await;
        assert_eq!(me["email"], "New@example.org");
        assert_eq!(me["email_verified"], true);
        assert!(
            b.call(
                "AUTH.LOGIN",
                json!({"email": "new@example.org", "password": PW}),
                None
            )
            .await
            .ok
        );
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "old@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
        // The old address is told.
        let notice = b.mail_text(2).await;
        assert!(notice.contains("New@example.org"), "{notice}");
    }

    /// Defect 10: `USER.CHANGE_EMAIL` must not tell whether an address has an account. The send
    /// limits apply first, and a taken address gets the same answer as a free one, with no mail
    /// to it and its own pending sign-in link left valid.
    #[tokio::test]
    async fn changing_to_a_taken_address_answers_like_a_free_one_after_the_send_limits() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "me@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        b.ok("AUTH.SIGNUP", json!({"email": "taken@example.org"}), None)
            .await;
        // The owner of the taken address has a pending sign-in link (mail 1).
        b.ok("MAGIC.SEND", json!({"email": "taken@example.org"}), None)
            .await;
        let owners_link = b.link_token(1).await;
        b.advance(31);
        let taken = b
            .call(
                "USER.CHANGE_EMAIL",
                json!({"new_email": "taken@example.org"}),
                Some(&access),
            )
            .await;
        let free = b
            .call(
                "USER.CHANGE_EMAIL",
                json!({"new_email": "free@example.org"}),
                Some(&access),
            )
            .await;
        assert!(taken.ok, "{taken:?}");
        assert!(free.ok, "{free:?}");
        let keys = |v: &serde_json::Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(keys(&taken.data), keys(&free.data));
        assert_eq!(taken.data["expires_in"], free.data["expires_in"]);
        // At once again: both refused by the send cooldown, not by the address being taken.
        for addr in ["taken@example.org", "free@example.org"] {
            let r = b
                .call(
                    "USER.CHANGE_EMAIL",
                    json!({"new_email": addr}),
                    Some(&access),
                )
                .await;
            assert_eq!(r.error_code(), Some(ErrorCode::RateLimited), "{addr}");
        }
        // Only the free address got a mail; the mail queue is first in, first out, so once the
        // free address's mail is out, one to the taken address (asked for before) would be too.
        let to = |addr: &str| {
            let outbox = b.app.config.data_dir.join("outbox");
            std::fs::read_dir(&outbox)
                .unwrap()
                .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .filter(|m| m.lines().any(|l| l.starts_with("To:") && l.contains(addr)))
                .count()
        };
        b.mail_text(2).await;
        assert_eq!(to("free@example.org"), 1);
        assert_eq!(to("taken@example.org"), 1, "only the owner's own link");
        b.ok("MAGIC.VERIFY", json!({"token": owners_link}), None)
            .await;
    }

    /// ASVS 6.1.2 / 6.2.11 at both places a password is chosen: sign-up and password change
    /// refuse the product name, the address's parts and the display name.
    #[tokio::test]
    async fn sign_up_and_password_change_refuse_context_words() {
        let b = Bench::new(|_| {}).await;
        for (pw, name) in [
            ("Zaphod1234!", None),
            ("my-beeblebrox-pw", Some("Zaphod Beeblebrox")),
            ("heartofgold-22", None),
            ("portcullis!2026", None),
        ] {
            let r = b
                .call(
                    "AUTH.SIGNUP",
                    json!({"email": "zaphod@heartofgold.example", "password": pw,
                           "display_name": name}),
                    None,
                )
                .await;
            assert_eq!(r.error_code(), Some(ErrorCode::InvalidParams), "{pw}");
        }
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "zaphod@heartofgold.example", "password": PW,
                       "display_name": "Trillian Astra"}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        for bad in ["trillian-forever", "ASTRA astra 42", "ZAPHOD-new-pass"] {
            let r = b
                .call(
                    "USER.SET_PASSWORD",
                    json!({"current_password": PW, "new_password": bad}),
                    Some(&access),
                )
                .await;
            assert_eq!(r.error_code(), Some(ErrorCode::InvalidParams), "{bad}");
        }
        b.ok(
            "USER.SET_PASSWORD",
            json!({"current_password": PW, "new_password": "a wholly unrelated phrase"}),
            Some(&access),
        )
        .await;
    }

    #[tokio::test]
    async fn deleting_and_changing_the_address_need_a_step_up() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "bye@example.org", "password": PW}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        b.advance(11 * 60);
        for (cmd, params) in [
            ("USER.DELETE", json!({})),
            ("USER.CHANGE_EMAIL", json!({"new_email": "x@example.org"})),
        ] {
            let r = b.call(cmd, params, Some(&access)).await;
            assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{cmd}");
            assert_eq!(
                r.error.unwrap().details.unwrap()["reason"],
                "step_up_required"
            );
        }
        let fresh = b
            .ok(
                "AUTH.LOGIN",
                json!({"email": "bye@example.org", "password": PW}),
                None,
            )
            .await;
        let d = b
            .ok("USER.DELETE", json!({}), fresh["access_token"].as_str())
            .await;
        assert_eq!(d["deleted"], true);
        assert_eq!(
            b.code("USER.ME", json!({}), fresh["access_token"].as_str())
                .await,
            Some(ErrorCode::Unauthenticated)
        );
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "bye@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
        assert!(
            b.call("AUTH.SIGNUP", json!({"email": "bye@example.org"}), None)
                .await
                .ok,
            "the address is free again"
        );
    }

    /// A forgotten password: the owner signs in by link (with the second factor when the
    /// account has one) and sets a new password without the old one. A password session still
    /// needs the current password. Before, no session could replace a forgotten password.
    #[tokio::test]
    async fn a_forgotten_password_is_reset_from_an_email_sign_in() {
        let b = Bench::new(|_| {}).await;
        let email = "forgot@example.org";
        b.ok("AUTH.SIGNUP", json!({"email": email}), None).await;
        b.ok("MAGIC.SEND", json!({"email": email}), None).await;
        let first = b
            .ok(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        b.ok(
            "USER.SET_PASSWORD",
            json!({"new_password": PW}),
            first["access_token"].as_str(),
        )
        .await;
        let by_password = b
            .ok("AUTH.LOGIN", json!({"email": email, "password": PW}), None)
            .await;
        let new_pw = "a brand new passphrase";
        assert_eq!(
            b.code(
                "USER.SET_PASSWORD",
                json!({"new_password": new_pw}),
                by_password["access_token"].as_str()
            )
            .await,
            Some(ErrorCode::InvalidParams),
            "a password session must give the current password"
        );

        b.advance(61);
        b.ok("MAGIC.SEND", json!({"email": email}), None).await;
        let by_link = b
            .ok(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(2).await}),
                None,
            )
            .await;
        b.ok(
            "USER.SET_PASSWORD",
            json!({"new_password": new_pw}),
            by_link["access_token"].as_str(),
        )
        .await;
        b.ok(
            "AUTH.LOGIN",
            json!({"email": email, "password": new_pw}),
            None,
        )
        .await;
        assert_eq!(
            b.code("AUTH.LOGIN", json!({"email": email, "password": PW}), None)
                .await,
            Some(ErrorCode::InvalidCredentials)
        );
    }
}
