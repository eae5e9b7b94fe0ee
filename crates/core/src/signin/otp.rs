//! `OTP.SEND`, `OTP.VERIFY`: six-digit sign-in codes by mail.
//!
//! A code is six uniform digits from the CSPRNG, bound to its flow id, stored only as
//! HMAC-SHA-256(`flow_id:code`) under a key derived from the master key, compared in constant
//! time. Every attempt is *reserved* (the flow's attempt counter is raised by compare-and-swap)
//! before its code is compared, so however many requests race, at most `otp_max_attempts`
//! guesses are ever evaluated against one code; after that even the right code is refused.
//! Across codes, each address allows `rate_limits.otp_failures_per_address_per_hour` wrong codes
//! in a rolling hour (reserved the same way, before the comparison, in [`crate::infra::limits`]).

use crate::base::caller::{RateClass, Requirement};
use crate::base::crypto::{hmac_sha256, sha256};
use crate::base::random::SecureRandom;
use crate::factors::email::{
    account_for, advance, check_flow_id, count_send, is_superseded, load, new_flow, save_new, swap,
    unusable, FlowKind, FlowRecord, FlowState,
};
use crate::factors::email::{common_vars, locale, AMR_EMAIL};
use crate::identity::accounts::normalize_email;
use crate::infra::mail::{Outgoing, Template};
use crate::signin::login::finish_first_factor;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::commands::otp::{self, CodeSent, SendParams, VerifyParams};
use portcullis_protocol::ErrorCode;
use serde_json::json;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(otp::SEND, Requirement::Anyone, RateClass::Send, send),
        CommandSpec::new(
            otp::VERIFY,
            Requirement::Anyone,
            RateClass::Credential,
            verify,
        ),
    ]
}

/// Six digits, uniform: rejection sampling keeps 4,294,000,000 of the 2^32 values, a multiple
/// of 10^6.
fn six_digits(rng: &dyn SecureRandom) -> Zeroizing<String> {
    loop {
        let mut b = [0u8; 4];
        rng.fill(&mut b);
        let x = u32::from_le_bytes(b);
        if x < 4_294_000_000 {
            return Zeroizing::new(format!("{:06}", x % 1_000_000));
        }
    }
}

fn code_mac(ctx: &Ctx, flow_id: &str, code: &str) -> String {
    hex::encode(hmac_sha256(
        &ctx.app.code_key,
        format!("{flow_id}:{code}").as_bytes(),
    ))
}

/// `OTP.SEND` — anyone. Mails a code. Answers `{flow_id, expires_in, resend_after}` whether or
/// not the address has an account. A new code voids the older one; send limits apply.
async fn send(ctx: Ctx, p: SendParams) -> Result<CodeSent, CommandError> {
    let email = normalize_email(&p.email)?;
    let locale = locale(&ctx, p.locale)?;
    ctx.audit
        .note("email_sha256", hex::encode(sha256(email.key.as_bytes())));
    count_send(&ctx, &email).await?;
    let cfg = &ctx.app.config;
    let mut flow = new_flow(&ctx, FlowKind::Otp, &email, p.create_user, cfg.otp_ttl_s).await?;
    ctx.audit.note("flow_id", flow.id.clone());
    let code = six_digits(ctx.app.rng.as_ref());
    flow.code_mac = Some(if flow.phantom {
        // Nothing is mailed and nothing can match, yet the flow behaves like any other.
        hex::encode(ctx.random_bytes::<32>())
    } else {
        code_mac(&ctx, &flow.id, &code)
    });
    save_new(&ctx, &flow).await?;
    if !flow.phantom {
        let vars = common_vars(&ctx, &flow).set("code", code.as_str());
        let body = ctx.app.templates.render(Template::Otp, &locale, &vars);
        ctx.app
            .mailer
            .enqueue(Outgoing {
                to: flow.email.clone(),
                kind: Template::Otp,
                flow_id: flow.id.clone(),
                body,
            })
            .await;
    }
    ctx.audit.event("otp.sent");
    ctx.audit.note("mailed", !flow.phantom);
    Ok(CodeSent {
        expires_in: u64::try_from(flow.expires_at - flow.created_at).unwrap_or(0),
        resend_after: u64::try_from(cfg.send_cooldown_s).unwrap_or(0),
        flow_id: flow.id,
    })
}

fn is_six_digits(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// `OTP.VERIFY` — anyone holding the flow id and the code. Right code: the flow is consumed (one
/// compare-and-swap, durable before the answer) and a session starts (`amr ["email"]`, AAL1).
/// Wrong code: `INVALID_CREDENTIALS` with `details.attempts_left`; after `otp_max_attempts`
/// attempts: `TOO_MANY_ATTEMPTS`, whatever the code. Used: `ALREADY_USED`; expired or replaced
/// by a newer code: `EXPIRED`. An unknown flow id answers like a wrong code.
async fn verify(ctx: Ctx, p: VerifyParams) -> Result<SessionTokens, CommandError> {
    if !is_six_digits(p.code.expose()) {
        return Err(CommandError::invalid_params("code must be six digits"));
    }
    check_flow_id(&p.flow_id)?;
    let invalid = |left: u32| {
        CommandError::new(ErrorCode::InvalidCredentials, "the code is not valid")
            .with_details(json!({"attempts_left": left}))
    };
    let max = ctx.app.config.otp_max_attempts;
    ctx.audit.note("flow_id", p.flow_id.clone());
    // The address's hourly cap on wrong codes, reserved once (kept across retries below).
    let mut address_attempt = None;
    for _ in 0..32 {
        let Some(loaded) = load(&ctx, &p.flow_id)
            .await?
            .filter(|l| l.record.kind == FlowKind::Otp)
        else {
            ctx.audit.event("otp.failed");
            ctx.audit.note("reason", "unknown_flow");
            return Err(invalid(0));
        };
        let superseded = is_superseded(&ctx, &loaded.record).await?;
        if let Some((err, reason)) = unusable(&ctx, &loaded.record, superseded) {
            ctx.audit.event("otp.failed");
            ctx.audit.note("reason", reason);
            return Err(err);
        }
        if loaded.record.attempts >= max {
            ctx.audit.event("otp.locked");
            return Err(CommandError::new(
                ErrorCode::TooManyAttempts,
                "too many wrong codes; ask for a new one",
            ));
        }
        if address_attempt.is_none() {
            let now = ctx.now().unix_timestamp();
            match ctx
                .app
                .limits
                .reserve_code_attempt(&loaded.record.email_key, now)
                .await
            {
                Ok(a) => address_attempt = Some(a),
                Err(e) => {
                    ctx.audit.event("otp.failed");
                    ctx.audit.note("reason", "address_capped");
                    return Err(e);
                }
            }
        }
        // Reserve this attempt before looking at the code.
        let reserved = FlowRecord {
            attempts: loaded.record.attempts + 1,
            ..loaded.record.clone()
        };
        let Some(mut current) = advance(&ctx, &loaded, reserved).await? else {
            continue;
        };
        let reserved = &current.record;
        let attempt = reserved.attempts;
        let expected = reserved.code_mac.clone().unwrap_or_default();
        let presented = code_mac(&ctx, &reserved.id, p.code.expose());
        if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
            if let Some(a) = address_attempt.take() {
                a.failed(ctx.now().unix_timestamp()).await;
            }
            ctx.audit.event("otp.failed");
            ctx.audit.note("attempt", u64::from(attempt));
            ctx.audit.note("max_attempts", u64::from(max));
            if attempt >= max {
                ctx.audit.event("otp.locked");
            }
            return Err(invalid(max - attempt));
        }
        if let Some(a) = address_attempt.take() {
            a.succeeded(ctx.now().unix_timestamp()).await;
        }
        // The code is right. Consume the flow; concurrent attempts may still bump its counter
        // meanwhile, so retry against the newest record while it is pending.
        let consumed = loop {
            let consumed = FlowRecord {
                state: FlowState::Consumed {
                    at: ctx.now().unix_timestamp(),
                },
                ..current.record.clone()
            };
            if swap(&ctx, &current, &consumed).await? {
                break consumed;
            }
            match load(&ctx, &p.flow_id).await? {
                Some(l) if l.record.state == FlowState::Pending => current = l,
                _ => {
                    // Another request with the same right code won.
                    ctx.audit.event("otp.failed");
                    ctx.audit.note("reason", "already_used");
                    return Err(CommandError::new(
                        ErrorCode::AlreadyUsed,
                        "this code has already been used",
                    ));
                }
            }
        };
        let user = account_for(&ctx, &consumed).await?;
        ctx.audit.event("otp.verified");
        return finish_first_factor(&ctx, &user, vec![AMR_EMAIL.to_owned()]).await;
    }
    Err(CommandError::new(ErrorCode::Unavailable, "too busy; retry"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::base::random::OsRandom;

    #[test]
    fn codes_are_six_digits_and_spread_over_the_range() {
        let mut seen = std::collections::HashSet::new();
        let mut first_digit = [0u32; 10];
        for _ in 0..5000 {
            let c = six_digits(&OsRandom);
            assert!(is_six_digits(&c), "{}", c.as_str());
            first_digit[usize::from(c.as_bytes()[0] - b'0')] += 1;
            seen.insert(c.to_string());
        }
        assert!(seen.len() > 4900, "codes repeat too often: {}", seen.len());
        // Each leading digit expects 500 of 5000; a uniform source stays well within 350..650.
        assert!(
            first_digit.iter().all(|&n| (350..650).contains(&n)),
            "{first_digit:?}"
        );
        assert!(!is_six_digits("12345"));
        assert!(!is_six_digits("12345a"));
        assert!(!is_six_digits("１２３４５６"));
    }
}

#[cfg(test)]
mod clock_tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::json;

    #[tokio::test]
    async fn a_code_expires_after_ten_minutes_even_when_right() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        let flow = b
            .ok("OTP.SEND", json!({"email": "a@example.org"}), None)
            .await;
        let code = b.otp_code(1).await;
        b.advance(10 * 60);
        let r = b
            .call(
                "OTP.VERIFY",
                json!({"flow_id": flow["flow_id"], "code": code}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::Expired));
        b.advance(-1);
        let r = b
            .ok(
                "OTP.VERIFY",
                json!({"flow_id": flow["flow_id"], "code": code}),
                None,
            )
            .await;
        assert_eq!(r["token_type"], "Bearer");
    }

    /// Defect 12: five tries per code, but across codes an address allows only
    /// `otp_failures_per_address_per_hour` (default 10) wrong codes an hour; after them even
    /// a new code's right value is refused until the oldest failure is an hour old.
    #[tokio::test]
    async fn wrong_codes_are_capped_per_address_across_codes() {
        let b = Bench::new(|_| {}).await;
        b.ok("AUTH.SIGNUP", json!({"email": "a@example.org"}), None)
            .await;
        for n in 1..=2 {
            let flow = b
                .ok("OTP.SEND", json!({"email": "a@example.org"}), None)
                .await;
            let right = b.otp_code(n).await;
            let wrong = if right == "000000" {
                "111111"
            } else {
                "000000"
            };
            for _ in 0..5 {
                let r = b
                    .call(
                        "OTP.VERIFY",
                        json!({"flow_id": flow["flow_id"], "code": wrong}),
                        None,
                    )
                    .await;
                assert_eq!(r.error_code(), Some(ErrorCode::InvalidCredentials));
            }
            b.advance(31);
        }
        let flow = b
            .ok("OTP.SEND", json!({"email": "a@example.org"}), None)
            .await;
        let right = b.otp_code(3).await;
        let r = b
            .call(
                "OTP.VERIFY",
                json!({"flow_id": flow["flow_id"], "code": right}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::TooManyAttempts));
        let wait = r.error.unwrap().retry_after_ms.unwrap();
        assert!((3_500_000..=3_600_000).contains(&wait), "{wait}");
        // An hour after the first failures the address may try again (with a fresh code).
        b.advance(3600);
        let flow = b
            .ok("OTP.SEND", json!({"email": "a@example.org"}), None)
            .await;
        let right = b.otp_code(4).await;
        b.ok(
            "OTP.VERIFY",
            json!({"flow_id": flow["flow_id"], "code": right}),
            None,
        )
        .await;
    }
}
