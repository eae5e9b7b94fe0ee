//! `MFA.VERIFY`: the second factor of a sign-in, or a step-up of the current session.

use crate::base::caller::{RateClass, Requirement};
use crate::factors::passkey;
use crate::factors::recovery::{use_recovery_code, AMR_RECOVERY};
use crate::factors::totp::{verify_totp, AMR_OTP};
use crate::factors::AMR_MFA;
use crate::identity::accounts::get_user;
use crate::identity::accounts::notify;
use crate::identity::sessions::{elevate, start_session};
use crate::signin::ticket::{consume_ticket, ticket};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::mfa::{self, Method, Verified, VerifyParams};
use portcullis_protocol::ErrorCode;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![CommandSpec::new(
        mfa::VERIFY,
        Requirement::Anyone,
        RateClass::Credential,
        verify,
    )]
}

fn code(p: &VerifyParams) -> Result<&portcullis_protocol::Secret, CommandError> {
    p.code
        .as_ref()
        .ok_or_else(|| CommandError::invalid_params("code is required for this method"))
}

/// Checks the second factor for `user_id`; returns the `amr` values it adds. `ticket` is the
/// hex SHA-256 of the `mfa_token` a passkey ceremony must have been begun for.
async fn second_factor(
    ctx: &Ctx,
    user_id: &str,
    p: &VerifyParams,
    ticket: Option<&str>,
) -> Result<Vec<String>, CommandError> {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    match p.method {
        Method::Totp => {
            verify_totp(ctx, user_id, code(p)?).await?;
            Ok(owned(&[AMR_OTP, AMR_MFA]))
        }
        Method::RecoveryCode => {
            let left = use_recovery_code(ctx, user_id, code(p)?).await?;
            notify(
                ctx,
                user_id,
                "A recovery code was used",
                &format!("{left} recovery codes are left. Enrol your authenticator app again if you lost it."),
            )
            .await?;
            Ok(owned(&[AMR_RECOVERY, AMR_MFA]))
        }
        Method::Passkey => {
            let (Some(ceremony_id), Some(credential)) = (&p.ceremony_id, &p.credential) else {
                return Err(CommandError::invalid_params(
                    "ceremony_id and credential are required for passkey",
                ));
            };
            let credential = passkey::parse_assertion(credential.clone())?;
            let kind = passkey::take(ctx, ceremony_id).await?;
            let passkey::CeremonyKind::Login {
                user_id: owner,
                mfa_ticket,
                state,
            } = kind
            else {
                return Err(CommandError::new(
                    ErrorCode::InvalidCredentials,
                    "this ceremony is not for a second factor",
                ));
            };
            if owner != user_id || mfa_ticket.as_deref() != ticket {
                return Err(CommandError::new(
                    ErrorCode::InvalidCredentials,
                    "this ceremony belongs to another sign-in",
                ));
            }
            let mut amr = passkey::verify_login(ctx, user_id, &state, &credential).await?;
            if !amr.iter().any(|a| a == AMR_MFA) {
                amr.push(AMR_MFA.to_owned());
            }
            Ok(amr)
        }
    }
}

/// `MFA.VERIFY` — with `mfa_token` (anyone holding it): completes the sign-in it stands for with
/// a second factor, consuming the ticket, and starts an AAL2 session whose `amr` lists both
/// factors and `mfa`. Without `mfa_token`, with a bearer token: steps the current session up to
/// AAL2 and returns a fresh access token.
async fn verify(ctx: Ctx, p: VerifyParams) -> Result<Verified, CommandError> {
    if let Some(token) = &p.mfa_token {
        let live = ticket(&ctx, token).await?;
        let user_id = live.ticket().user_id.clone();
        ctx.audit.subject(&user_id);
        let added = second_factor(&ctx, &user_id, &p, Some(&hex::encode(live.key()))).await?;
        consume_ticket(&ctx, &live).await?;
        let user = get_user(ctx.app.store.as_ref(), &user_id)
            .await?
            .filter(|u| !u.disabled)
            .ok_or_else(|| {
                CommandError::new(ErrorCode::InvalidCredentials, "the account cannot sign in")
            })?;
        let mut amr = live.ticket().first_amr.clone();
        amr.extend(added);
        let t = start_session(&ctx, &user, 2, amr.clone()).await?;
        ctx.audit.event("mfa.verified");
        return Ok(Verified {
            user_id: t.user_id,
            session_id: t.session_id,
            access_token: t.access_token,
            refresh_token: Some(t.refresh_token),
            token_type: t.token_type,
            expires_in: t.expires_in,
            aal: 2,
            amr,
        });
    }
    let Some(me) = ctx.caller.user().cloned() else {
        return Err(CommandError::unauthenticated(
            "give an mfa_token, or a bearer token to step up",
        ));
    };
    let added = second_factor(&ctx, &me.user_id, &p, None).await?;
    let added: Vec<&str> = added.iter().map(String::as_str).collect();
    let (session, access_token, expires_in) = elevate(&ctx, &me.session_id, &added).await?;
    ctx.audit.event("step_up.completed");
    Ok(Verified {
        user_id: session.user_id,
        session_id: session.id,
        access_token,
        refresh_token: None,
        token_type: "Bearer".into(),
        expires_in,
        aal: session.aal,
        amr: session.amr,
    })
}

#[cfg(test)]
mod tests {
    use crate::factors::totp::totp;
    use crate::testkit::Bench;
    use base64::Engine;
    use portcullis_protocol::ErrorCode;
    use serde_json::{json, Value};

    const PW: &str = "correct horse battery staple";

    struct Enrolled {
        secret: Vec<u8>,
        access: String,
        recovery: Vec<String>,
    }

    fn code_at(b: &Bench, secret: &[u8], offset_s: i64) -> String {
        let t = u64::try_from(b.clock_now() + offset_s).unwrap();
        totp(secret, "p", "u").unwrap().generate(t).to_string()
    }

    impl Bench {
        fn clock_now(&self) -> i64 {
            use crate::Clock;
            self.clock.now().unix_timestamp()
        }
    }

    async fn enrolled(b: &Bench, email: &str) -> Enrolled {
        let s = b
            .ok("AUTH.SIGNUP", json!({"email": email, "password": PW}), None)
            .await;
        let access = s["access_token"].as_str().unwrap().to_owned();
        let e = b.ok("TOTP.ENROLL", json!({}), Some(&access)).await;
        let secret = totp_rs::Secret::try_from_base32(e["secret"].as_str().unwrap())
            .unwrap()
            .as_ref()
            .to_vec();
        let c = b
            .ok(
                "TOTP.CONFIRM",
                json!({"enrollment_id": e["enrollment_id"], "code": code_at(b, &secret, 0)}),
                Some(&access),
            )
            .await;
        let recovery = c["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        b.advance(30);
        Enrolled {
            secret,
            access,
            recovery,
        }
    }

    /// A passwordless account proven by a link (the first mail), then an authenticator app.
    async fn proven_with_totp(b: &Bench, email: &str) -> (String, Vec<u8>) {
        b.ok("AUTH.SIGNUP", json!({"email": email}), None).await;
        b.ok("MAGIC.SEND", json!({"email": email}), None).await;
        let first = b
            .ok(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        let access = first["access_token"].as_str().unwrap().to_owned();
        let e = b.ok("TOTP.ENROLL", json!({}), Some(&access)).await;
        let secret = totp_rs::Secret::try_from_base32(e["secret"].as_str().unwrap())
            .unwrap()
            .as_ref()
            .to_vec();
        let confirm = json!({"enrollment_id": e["enrollment_id"], "code": code_at(b, &secret, 0)});
        b.ok("TOTP.CONFIRM", confirm, Some(&access)).await;
        (access, secret)
    }

    async fn mfa_token(b: &Bench, email: &str) -> Value {
        let r = b
            .call("AUTH.LOGIN", json!({"email": email, "password": PW}), None)
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired), "{r:?}");
        r.error.unwrap().details.unwrap()
    }

    #[tokio::test]
    async fn enrolment_qr_code_encodes_the_otpauth_uri() {
        let b = Bench::new(|_| {}).await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "qr@example.org", "password": PW}),
                None,
            )
            .await;
        let e = b
            .ok("TOTP.ENROLL", json!({}), s["access_token"].as_str())
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(e["qr_png"].as_str().unwrap())
            .unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let img = image::load_from_memory(&png).unwrap().to_luma8();
        let mut prepared = rqrr::PreparedImage::prepare(img);
        let grids = prepared.detect_grids();
        assert_eq!(grids.len(), 1);
        let (_, content) = grids[0].decode().unwrap();
        assert_eq!(content, e["otpauth_uri"].as_str().unwrap());
        assert!(
            content.starts_with("otpauth://totp/Portcullis:qr%40example.org?"),
            "{content}"
        );
        assert!(content.contains(&format!("secret={}", e["secret"].as_str().unwrap())));
        assert_eq!(
            e["secret"].as_str().unwrap().len(),
            32,
            "160 bits in base32"
        );
    }

    #[tokio::test]
    async fn an_unknown_method_is_invalid_params_and_its_value_is_not_echoed() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "method@example.org").await;
        let d = mfa_token(&b, "method@example.org").await;
        for method in [json!("271828"), json!("password"), json!(7)] {
            let r = b
                .call(
                    "MFA.VERIFY",
                    json!({"mfa_token": d["mfa_token"], "method": method, "code": code_at(&b, &e.secret, 0)}),
                    None,
                )
                .await;
            assert_eq!(r.error_code(), Some(ErrorCode::InvalidParams), "{method}");
            let message = r.error.map(|e| e.message).unwrap_or_default();
            assert!(!message.contains("271828"), "{message}");
        }
        // The ticket is still good: a refused method used nothing up.
        b.ok(
            "MFA.VERIFY",
            json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code_at(&b, &e.secret, 0)}),
            None,
        )
        .await;
    }

    #[tokio::test]
    async fn a_login_with_totp_needs_the_second_factor_and_each_step_counts_once() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "two@example.org").await;
        let d = mfa_token(&b, "two@example.org").await;
        assert_eq!(d["methods"], json!(["totp", "recovery_code"]));
        assert_eq!(d["expires_in"], 300);
        let code = code_at(&b, &e.secret, 0);
        let v = b
            .ok(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
                None,
            )
            .await;
        assert_eq!(v["aal"], 2);
        assert_eq!(v["amr"], json!(["pwd", "otp", "mfa"]));
        let me = b.ok("USER.ME", json!({}), v["access_token"].as_str()).await;
        assert_eq!(me["aal"], 2);
        // The ticket is single use, and so is the time step.
        let again = json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code});
        let r = b.call("MFA.VERIFY", again, None).await;
        assert_eq!(r.error_code(), Some(ErrorCode::AlreadyUsed));
        let d2 = mfa_token(&b, "two@example.org").await;
        let r = b
            .call(
                "MFA.VERIFY",
                json!({"mfa_token": d2["mfa_token"], "method": "totp", "code": code}),
                None,
            )
            .await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::InvalidCredentials),
            "a used step is refused"
        );
        // ±1 step accepted, ±2 refused.
        b.advance(60);
        for (offset, ok) in [(-60, false), (60, false), (-30, true), (30, true)] {
            b.advance(30);
            let d = mfa_token(&b, "two@example.org").await;
            let code = code_at(&b, &e.secret, offset);
            let r = b
                .call(
                    "MFA.VERIFY",
                    json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
                    None,
                )
                .await;
            assert_eq!(r.ok, ok, "offset {offset}: {r:?}");
        }
    }

    #[tokio::test]
    async fn concurrent_submissions_of_one_code_have_one_winner() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "race@example.org").await;
        let code = code_at(&b, &e.secret, 0);
        let mut tickets = Vec::new();
        for _ in 0..8 {
            tickets.push(mfa_token(&b, "race@example.org").await["mfa_token"].clone());
        }
        let calls = tickets.iter().map(|t| {
            b.call(
                "MFA.VERIFY",
                json!({"mfa_token": t, "method": "totp", "code": code}),
                None,
            )
        });
        let results = futures::future::join_all(calls).await;
        assert_eq!(results.iter().filter(|r| r.ok).count(), 1);
    }

    #[tokio::test]
    async fn recovery_codes_are_single_use_and_marked_in_amr() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "rec@example.org").await;
        assert_eq!(e.recovery.len(), 10);
        assert!(e
            .recovery
            .iter()
            .all(|c| c.len() == 29 && c.matches('-').count() == 5));
        let d = mfa_token(&b, "rec@example.org").await;
        let code = e.recovery[3].to_uppercase();
        let v = b
            .ok(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "recovery_code", "code": code}),
                None,
            )
            .await;
        assert_eq!(v["amr"], json!(["pwd", "recovery", "mfa"]));
        let d = mfa_token(&b, "rec@example.org").await;
        let r = b
            .call(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "recovery_code", "code": code}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
        // Regenerating needs a step-up once the sign-in is old, and replaces the whole set.
        b.advance(11 * 60);
        let r = b
            .call("RECOVERY.REGENERATE", json!({}), Some(&e.access))
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "step_up_required"
        );
        // An AAL2 session as old as this one needs the step-up too (ASVS 7.5.1).
        let r = b
            .call("RECOVERY.REGENERATE", json!({}), v["access_token"].as_str())
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{r:?}");
        let up = b
            .ok(
                "MFA.VERIFY",
                json!({"method": "totp", "code": code_at(&b, &e.secret, 0)}),
                v["access_token"].as_str(),
            )
            .await;
        let fresh = b
            .ok(
                "RECOVERY.REGENERATE",
                json!({}),
                up["access_token"].as_str(),
            )
            .await;
        let fresh: Vec<String> = fresh["recovery_codes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        let d = mfa_token(&b, "rec@example.org").await;
        let r = b.call("MFA.VERIFY", json!({"mfa_token": d["mfa_token"], "method": "recovery_code", "code": e.recovery[0]}), None).await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::InvalidCredentials),
            "old set is gone"
        );
        let r = b
            .call(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "recovery_code", "code": fresh[0]}),
                None,
            )
            .await;
        assert!(r.ok);
    }

    #[tokio::test]
    async fn step_up_gates_sensitive_commands_and_mfa_verify_lifts_it() {
        let b = Bench::new(|_| {}).await;
        // A passwordless account proven by a link, then an authenticator app.
        let (access, secret) = proven_with_totp(&b, "up@example.org").await;
        // Within ten minutes of the link sign-in, a sensitive command runs; after, it needs a step-up.
        let set = json!({"new_password": "another long passphrase"});
        b.advance(11 * 60);
        let r = b
            .call("USER.SET_PASSWORD", set.clone(), Some(&access))
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "step_up_required"
        );
        // A new link sign-in needs the factor too, and lands at AAL2 with both methods.
        b.advance(31);
        b.ok("MAGIC.SEND", json!({"email": "up@example.org"}), None)
            .await;
        let r = b
            .call(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(2).await}),
                None,
            )
            .await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::MfaRequired),
            "a TOTP user needs the factor after a link too"
        );
        let d = r.error.unwrap().details.unwrap();
        let v = b
            .ok("MFA.VERIFY", json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code_at(&b, &secret, 0)}), None)
            .await;
        assert_eq!(v["amr"], json!(["email", "otp", "mfa"]));
        assert!(
            b.call("USER.SET_PASSWORD", set.clone(), v["access_token"].as_str())
                .await
                .ok,
            "a fresh AAL2 sign-in passes the gate"
        );
        // An AAL2 sign-in older than the window does not (ASVS 7.5.1): it steps up again.
        b.advance(11 * 60);
        let r = b
            .call(
                "USER.SET_PASSWORD",
                json!({"current_password": "another long passphrase", "new_password": "a third long passphrase"}),
                v["access_token"].as_str(),
            )
            .await;
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "step_up_required"
        );
    }

    #[tokio::test]
    async fn an_email_code_sign_in_needs_the_second_factor_too() {
        let b = Bench::new(|_| {}).await;
        let (_, secret) = proven_with_totp(&b, "code@example.org").await;
        b.advance(31);
        let flow = b
            .ok("OTP.SEND", json!({"email": "code@example.org"}), None)
            .await;
        let r = b
            .call(
                "OTP.VERIFY",
                json!({"flow_id": flow["flow_id"], "code": b.otp_code(2).await}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired));
        let d = r.error.unwrap().details.unwrap();
        let v = b
            .ok("MFA.VERIFY", json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code_at(&b, &secret, 0)}), None)
            .await;
        assert_eq!(v["amr"], json!(["email", "otp", "mfa"]));
        assert_eq!(v["aal"], 2);
    }

    #[tokio::test]
    async fn a_factor_enrolled_before_the_address_was_proven_is_dropped_by_the_first_proof() {
        let b = Bench::new(|_| {}).await;
        // Someone signs up with another person's address and a password, and adds an app.
        let e = enrolled(&b, "victim@example.org").await;
        let _ = (e.secret, e.access);
        // The real owner proves the mailbox: the squatter's password and app are gone.
        b.ok("MAGIC.SEND", json!({"email": "victim@example.org"}), None)
            .await;
        let r = b
            .call(
                "MAGIC.VERIFY",
                json!({"token": b.link_token(1).await}),
                None,
            )
            .await;
        assert!(r.ok, "no MFA from a factor the owner never set up: {r:?}");
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "victim@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
    }

    #[tokio::test]
    async fn repeated_failures_are_delayed_not_locked_out() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "slow@example.org").await;
        let d = mfa_token(&b, "slow@example.org").await;
        let attempt = |code: String| {
            b.call(
                "MFA.VERIFY",
                json!({"mfa_token": d["mfa_token"], "method": "totp", "code": code}),
                None,
            )
        };
        for _ in 0..5 {
            assert_eq!(
                attempt("000000".into()).await.error_code(),
                Some(ErrorCode::InvalidCredentials)
            );
        }
        let r = attempt(code_at(&b, &e.secret, 0)).await;
        assert_eq!(
            r.error_code(),
            Some(ErrorCode::TooManyAttempts),
            "even the right code waits"
        );
        assert_eq!(r.error.unwrap().retry_after_ms, Some(2000));
        b.advance(2);
        assert!(
            attempt(code_at(&b, &e.secret, 0)).await.ok,
            "after the delay, success resets"
        );
    }

    #[tokio::test]
    async fn step_up_with_a_bearer_token_raises_the_session() {
        let b = Bench::new(|_| {}).await;
        let e = enrolled(&b, "bear@example.org").await;
        b.advance(11 * 60);
        let r = b.call("TOTP.DISABLE", json!({}), Some(&e.access)).await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        let v = b
            .ok(
                "MFA.VERIFY",
                json!({"method": "totp", "code": code_at(&b, &e.secret, 0)}),
                Some(&e.access),
            )
            .await;
        assert_eq!(v["aal"], 2);
        assert!(v.get("refresh_token").is_none());
        assert_eq!(v["amr"], json!(["pwd", "otp", "mfa"]));
        b.ok("TOTP.DISABLE", json!({}), v["access_token"].as_str())
            .await;
        // Without a factor, a password login completes at once again.
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "bear@example.org", "password": PW}),
                None,
            )
            .await;
        assert!(r.ok, "{r:?}");
    }

    #[tokio::test]
    async fn a_step_up_supersedes_the_earlier_access_token_for_sensitive_commands() {
        let b = Bench::new(|_| {}).await;
        // A password sign-in a moment ago: within the step-up window, so on its own this
        // level-1 token would pass the gate.
        let e = enrolled(&b, "super@example.org").await;
        let up = b
            .ok(
                "MFA.VERIFY",
                json!({"method": "totp", "code": code_at(&b, &e.secret, 0)}),
                Some(&e.access),
            )
            .await;
        assert_eq!(up["aal"], 2);
        let aal2 = up["access_token"].as_str().unwrap().to_owned();
        assert_ne!(aal2, e.access, "a new access token");
        let r = b
            .call("RECOVERY.REGENERATE", json!({}), Some(&e.access))
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden), "{r:?}");
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "token_superseded"
        );
        // It still identifies the session for everyday commands until it expires.
        let me = b.ok("USER.ME", json!({}), Some(&e.access)).await;
        assert_eq!(me["aal"], 1);
        b.ok("RECOVERY.REGENERATE", json!({}), Some(&aal2)).await;
        // A second step-up supersedes the first level-2 token in turn.
        b.advance(30);
        let again = b
            .ok(
                "MFA.VERIFY",
                json!({"method": "totp", "code": code_at(&b, &e.secret, 0)}),
                Some(&aal2),
            )
            .await;
        let r = b.call("RECOVERY.REGENERATE", json!({}), Some(&aal2)).await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        b.ok(
            "RECOVERY.REGENERATE",
            json!({}),
            again["access_token"].as_str(),
        )
        .await;
    }

    #[tokio::test]
    async fn a_required_policy_gives_users_without_a_factor_an_enrolment_only_session() {
        let b = Bench::new(|c| c.mfa_policy = crate::base::config::MfaPolicy::Required).await;
        let r = b
            .call(
                "AUTH.SIGNUP",
                json!({"email": "new@example.org", "password": PW}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::MfaRequired));
        let d = r.error.unwrap().details.unwrap();
        assert_eq!(d["methods"], json!([]));
        let access = d["enrolment_session"]["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(b.call("USER.ME", json!({}), Some(&access)).await.ok);
        let r = b.call("SESSION.LIST", json!({}), Some(&access)).await;
        assert_eq!(r.error_code(), Some(ErrorCode::Forbidden));
        assert_eq!(
            r.error.unwrap().details.unwrap()["reason"],
            "mfa_enrolment_required"
        );
        let e = b.ok("TOTP.ENROLL", json!({}), Some(&access)).await;
        let secret = totp_rs::Secret::try_from_base32(e["secret"].as_str().unwrap())
            .unwrap()
            .as_ref()
            .to_vec();
        b.ok(
            "TOTP.CONFIRM",
            json!({"enrollment_id": e["enrollment_id"], "code": code_at(&b, &secret, 0)}),
            Some(&access),
        )
        .await;
        b.advance(30);
        let d = mfa_token(&b, "new@example.org").await;
        assert_eq!(d["methods"], json!(["totp", "recovery_code"]));
    }
}
