//! `MAGIC.SEND`, `MAGIC.VERIFY`, `MAGIC.APPROVE`, `MAGIC.POLL`: sign-in links by mail.
//!
//! The link opens the HTTP gateway's landing page, which never consumes it (mail scanners and
//! previews fetch links and even run their scripts); only `MAGIC.VERIFY` or `MAGIC.APPROVE`
//! do. A link sent with a PKCE `code_challenge` is bound to the device that asked: verifying it
//! needs the `code_verifier`, and from another device it can only *approve* the sign-in, which
//! the asking device then collects with `MAGIC.POLL`.

use crate::base::caller::{RateClass, Requirement};
use crate::base::crypto::sha256;
use crate::factors::email::link::send_link;
use crate::factors::email::{
    account_for, check_challenge, check_flow_id, check_redirect, count_send, is_superseded, load,
    locale, new_flow, save_new, swap, unusable, verifier_matches, FlowKind, FlowRecord, FlowState,
    Loaded, AMR_EMAIL,
};
use crate::identity::accounts::normalize_email;
use crate::signin::login::finish_first_factor;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::magic::{
    self, ApproveParams, Approved, FlowStarted, PollParams, PollResult, SendParams, Verified,
    VerifyParams,
};
use portcullis_protocol::{ErrorCode, Secret};

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(magic::SEND, Requirement::Anyone, RateClass::Send, send),
        CommandSpec::new(
            magic::VERIFY,
            Requirement::Anyone,
            RateClass::Credential,
            verify,
        ),
        CommandSpec::new(
            magic::APPROVE,
            Requirement::Anyone,
            RateClass::Credential,
            approve,
        ),
        // Polling is frequent, and proven by a verifier nobody can guess.
        CommandSpec::new(magic::POLL, Requirement::Anyone, RateClass::Account, poll),
    ]
}

fn expires_in(flow: &FlowRecord) -> u64 {
    u64::try_from(flow.expires_at - flow.created_at).unwrap_or(0)
}

/// `MAGIC.SEND` — anyone. Mails a sign-in link. Answers `{flow_id, expires_in}` whether or not
/// the address has an account (no mail goes to an unknown address unless `create_user`). Send
/// limits apply either way (`RATE_LIMITED` with `retry_after_ms`). A new link voids older ones.
async fn send(ctx: Ctx, p: SendParams) -> Result<FlowStarted, CommandError> {
    let email = normalize_email(&p.email)?;
    let redirect_url = p
        .redirect_url
        .as_deref()
        .map(|r| check_redirect(&ctx, r))
        .transpose()?;
    if let Some(c) = &p.code_challenge {
        check_challenge(c)?;
    }
    let locale = locale(&ctx, p.locale)?;
    ctx.audit
        .note("email_sha256", hex::encode(sha256(email.key.as_bytes())));
    count_send(&ctx, &email).await?;
    let mut flow = new_flow(
        &ctx,
        FlowKind::Magic,
        &email,
        p.create_user,
        ctx.app.config.magic_link_ttl_s,
    )
    .await?;
    flow.redirect_url = redirect_url;
    flow.code_challenge = p.code_challenge;
    ctx.audit.note("flow_id", flow.id.clone());
    if !flow.phantom {
        send_link(&ctx, &flow, &locale).await?;
    }
    save_new(&ctx, &flow).await?;
    ctx.audit.event("magic.sent");
    ctx.audit.note("mailed", !flow.phantom);
    ctx.audit
        .note("device_bound", flow.code_challenge.is_some());
    Ok(FlowStarted {
        expires_in: expires_in(&flow),
        flow_id: flow.id,
    })
}

fn invalid_link() -> CommandError {
    CommandError::new(ErrorCode::InvalidCredentials, "this link is not valid")
}

fn rejected(ctx: &Ctx, reason: &'static str, err: CommandError) -> CommandError {
    ctx.audit.event("magic.rejected");
    ctx.audit.note("reason", reason);
    err
}

/// The flow a link token belongs to, usable now (not used, not expired, not superseded).
async fn usable_flow(ctx: &Ctx, token: &Secret) -> Result<Loaded, CommandError> {
    let flow_id = crate::factors::email::link::flow_of(ctx, token)
        .await?
        .ok_or_else(|| rejected(ctx, "unknown", invalid_link()))?;
    let loaded = load(ctx, &flow_id)
        .await?
        .ok_or_else(|| rejected(ctx, "unknown", invalid_link()))?;
    ctx.audit.note("flow_id", loaded.record.id.clone());
    let superseded = is_superseded(ctx, &loaded.record).await?;
    if let Some((err, reason)) = unusable(ctx, &loaded.record, superseded) {
        return Err(rejected(ctx, reason, err));
    }
    Ok(loaded)
}

/// Moves a usable flow to `state`; the loser of a race gets `ALREADY_USED`.
async fn transition(
    ctx: &Ctx,
    loaded: &Loaded,
    state: FlowState,
) -> Result<FlowRecord, CommandError> {
    let next = FlowRecord {
        state,
        ..loaded.record.clone()
    };
    if swap(ctx, loaded, &next).await? {
        Ok(next)
    } else {
        Err(rejected(
            ctx,
            "already_used",
            CommandError::new(ErrorCode::AlreadyUsed, "this link has already been used"),
        ))
    }
}

/// `MAGIC.VERIFY` — anyone holding the link. Consumes it (one compare-and-swap; concurrent or
/// repeated uses get `ALREADY_USED`) and starts a session (`amr ["email"]`, AAL1), marking the
/// address verified. A device-bound link needs the matching `code_verifier`
/// (`INVALID_CREDENTIALS` otherwise, and the link stays usable).
async fn verify(ctx: Ctx, p: VerifyParams) -> Result<Verified, CommandError> {
    let loaded = usable_flow(&ctx, &p.token).await?;
    if let Some(challenge) = &loaded.record.code_challenge {
        let ok = p
            .code_verifier
            .as_ref()
            .is_some_and(|v| verifier_matches(challenge, v.expose()));
        if !ok {
            return Err(rejected(&ctx, "code_verifier_mismatch", invalid_link()));
        }
    }
    let now = ctx.now().unix_timestamp();
    let flow = transition(&ctx, &loaded, FlowState::Consumed { at: now }).await?;
    if let Some(user_id) = &flow.change_email_for {
        // Confirming a new address: the account moves to it, and the link then signs in like
        // any other email sign-in: an account with a second factor answers `MFA_REQUIRED`
        // (the move stands), so this pathway is no weaker than the others (ASVS 6.3.4).
        let user = crate::factors::email::complete_email_change(&ctx, user_id, &flow).await?;
        ctx.audit.event("magic.verified");
        let tokens = finish_first_factor(&ctx, &user, vec![AMR_EMAIL.to_owned()]).await?;
        return Ok(Verified {
            tokens,
            redirect_url: flow.redirect_url,
        });
    }
    let user = account_for(&ctx, &flow).await?;
    ctx.audit.event("magic.verified");
    let tokens = if flow.recovery {
        // An operator-initiated recovery: the mailbox is the only proof left, by design and on
        // the record. The session is marked so the application can ask the user to enrol again.
        ctx.audit.event("recovery.completed");
        crate::identity::sessions::start_session(
            &ctx,
            &user,
            1,
            vec![AMR_EMAIL.to_owned(), "operator_recovery".to_owned()],
        )
        .await?
    } else {
        finish_first_factor(&ctx, &user, vec![AMR_EMAIL.to_owned()]).await?
    };
    Ok(Verified {
        tokens,
        redirect_url: flow.redirect_url,
    })
}

/// `MAGIC.APPROVE` — anyone holding a device-bound link. Consumes the link and lets the device
/// that asked collect its session with `MAGIC.POLL`. `INVALID_PARAMS` for a link that is not
/// device-bound (it signs in directly with `MAGIC.VERIFY`).
async fn approve(ctx: Ctx, p: ApproveParams) -> Result<Approved, CommandError> {
    let loaded = usable_flow(&ctx, &p.token).await?;
    if loaded.record.code_challenge.is_none() {
        return Err(CommandError::invalid_params(
            "this link is not bound to a device; sign in with MAGIC.VERIFY",
        ));
    }
    let now = ctx.now().unix_timestamp();
    let flow = transition(&ctx, &loaded, FlowState::Approved { at: now }).await?;
    ctx.audit.event("magic.approved");
    Ok(Approved {
        flow_id: flow.id,
        approved: true,
    })
}

/// `MAGIC.POLL` — the device that asked, proving it with its `code_verifier`. `pending` until
/// the link is approved, then the session, once (`ALREADY_USED` afterwards).
async fn poll(ctx: Ctx, p: PollParams) -> Result<PollResult, CommandError> {
    let invalid = || {
        CommandError::new(
            ErrorCode::InvalidCredentials,
            "unknown flow or wrong code_verifier",
        )
    };
    check_flow_id(&p.flow_id)?;
    let Some(loaded) = load(&ctx, &p.flow_id).await? else {
        return Err(rejected(&ctx, "unknown", invalid()));
    };
    let flow = &loaded.record;
    ctx.audit.note("flow_id", flow.id.clone());
    let bound = flow
        .code_challenge
        .as_ref()
        .is_some_and(|c| verifier_matches(c, p.code_verifier.expose()));
    if flow.kind != FlowKind::Magic || !bound {
        return Err(rejected(&ctx, "code_verifier_mismatch", invalid()));
    }
    let now = ctx.now().unix_timestamp();
    match flow.state {
        FlowState::Pending => {
            let superseded = is_superseded(&ctx, flow).await?;
            if let Some((err, reason)) = unusable(&ctx, flow, superseded) {
                return Err(rejected(&ctx, reason, err));
            }
            Ok(PollResult {
                status: "pending".into(),
                tokens: None,
            })
        }
        FlowState::Approved { .. } => {
            if now >= flow.expires_at {
                return Err(rejected(
                    &ctx,
                    "expired",
                    CommandError::new(ErrorCode::Expired, "the sign-in expired; start again"),
                ));
            }
            let done = transition(&ctx, &loaded, FlowState::Completed { at: now }).await?;
            let user = account_for(&ctx, &done).await?;
            ctx.audit.event("magic.verified");
            let tokens = finish_first_factor(&ctx, &user, vec![AMR_EMAIL.to_owned()]).await?;
            Ok(PollResult {
                status: "complete".into(),
                tokens: Some(tokens),
            })
        }
        FlowState::Consumed { .. } | FlowState::Completed { .. } => Err(rejected(
            &ctx,
            "already_used",
            CommandError::new(
                ErrorCode::AlreadyUsed,
                "this sign-in has already been completed",
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::json;

    #[tokio::test]
    async fn a_link_works_until_it_expires_and_then_never() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        b.ok("MAGIC.SEND", json!({"email": "a@example.org"}), None)
            .await;
        let token = b.link_token(1).await;
        b.advance(10 * 60 - 1);
        assert!(
            crate::factors::email::link::landing(&b.app, &token)
                .await
                .is_some(),
            "still live one second before expiry"
        );
        b.advance(1);
        assert!(crate::factors::email::link::landing(&b.app, &token)
            .await
            .is_none());
        assert_eq!(
            b.code("MAGIC.VERIFY", json!({"token": token}), None).await,
            Some(ErrorCode::Expired)
        );
        // A refusal consumes nothing: expiry is a pure function of the clock, so one second
        // before the boundary the same link still signs in.
        b.advance(-2);
        let r = b.ok("MAGIC.VERIFY", json!({"token": token}), None).await;
        assert_eq!(r["token_type"], "Bearer");
    }

    #[tokio::test]
    async fn an_approved_cross_device_flow_expires_if_never_collected() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        let verifier = "v".repeat(64);
        let challenge = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(crate::base::crypto::sha256(verifier.as_bytes()))
        };
        let flow = b
            .ok(
                "MAGIC.SEND",
                json!({"email": "a@example.org", "code_challenge": challenge}),
                None,
            )
            .await;
        let token = b.link_token(1).await;
        b.ok("MAGIC.APPROVE", json!({"token": token}), None).await;
        b.advance(10 * 60);
        let poll = json!({"flow_id": flow["flow_id"], "code_verifier": verifier});
        assert_eq!(
            b.code("MAGIC.POLL", poll, None).await,
            Some(ErrorCode::Expired)
        );
    }

    #[tokio::test]
    async fn the_resend_cooldown_and_the_hourly_cap_follow_the_clock() {
        let b = Bench::new(|c| c.sends_per_address_per_hour = 3).await;
        let send = || b.call("MAGIC.SEND", json!({"email": "nobody@example.org"}), None);
        assert!(send().await.ok);
        b.advance(29);
        let r = send().await;
        assert_eq!(r.error_code(), Some(ErrorCode::RateLimited));
        assert_eq!(r.error.unwrap().retry_after_ms, Some(1000));
        b.advance(1);
        assert!(send().await.ok);
        b.advance(30);
        assert!(send().await.ok);
        b.advance(30);
        let r = send().await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::RateLimited),
            "the fourth in an hour"
        );
        b.advance(3600);
        assert!(send().await.ok, "a new hour");
    }

    /// The link that confirms a new address signs in like every email sign-in: an account
    /// with a second factor must present it (the move itself stands). Before, the link gave
    /// a session without the factor.
    #[tokio::test]
    async fn an_address_change_link_asks_for_the_second_factor() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "old@example.org", "password": "a long enough passphrase"}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap();
        let secret = b.enrol_totp(access).await;
        b.ok(
            "USER.CHANGE_EMAIL",
            json!({"new_email": "new@example.org"}),
            Some(access),
        )
        .await;
        let r = b
            .call(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired), "{r:?}");
        let d = r.error.unwrap().details.unwrap();
        let v = b
            .ok(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "totp", "code": b.totp_code(&secret)}),
                None,
            )
            .await;
        let me = b.ok("USER.ME", json!({}), v["access_token"].as_str()).await;
        assert_eq!(me["email"], "new@example.org");
    }
}
