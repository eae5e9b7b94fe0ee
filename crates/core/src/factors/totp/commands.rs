//! `TOTP.ENROLL`, `TOTP.CONFIRM`, `TOTP.DISABLE`: an authenticator app as second factor.

use crate::base::caller::{RateClass, Requirement};
use crate::base::crypto::random_id;
use crate::factors::recovery::recovery_code_writes;
use crate::factors::totp::{
    aad_enrolment, confirmation, has_totp, seal, totp, unseal, PendingEnrolment, ENROLMENT_S,
    PENDING,
};
use crate::factors::Factor;
use crate::identity::accounts::get_user;
use crate::{CommandError, CommandSpec, Ctx};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::commands::totp::{
    self, ConfirmParams, Disabled, Enrollment, RecoveryCodes,
};
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{Applied, StoreError};

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(
            totp::ENROLL,
            Requirement::UserStepUp,
            RateClass::Account,
            enroll,
        )
        .enrolment_allowed(),
        CommandSpec::new(
            totp::CONFIRM,
            Requirement::UserStepUp,
            RateClass::Credential,
            confirm,
        )
        .enrolment_allowed(),
        CommandSpec::new(
            totp::DISABLE,
            Requirement::UserStepUp,
            RateClass::Account,
            disable,
        ),
    ]
}

/// `TOTP.ENROLL` — user (AAL1 or more; allowed in an enrolment-only session). A new 160-bit
/// secret, its `otpauth://` URI and QR code, pending for 10 minutes until `TOTP.CONFIRM`.
/// `CONFLICT` when a TOTP factor is already active.
async fn enroll(ctx: Ctx, _p: NoParams) -> Result<Enrollment, CommandError> {
    let me = ctx.user()?.clone();
    if has_totp(&ctx, &me.user_id).await? {
        return Err(CommandError::new(
            ErrorCode::Conflict,
            "an authenticator app is already enrolled; disable it first",
        ));
    }
    let user = get_user(ctx.app.store.as_ref(), &me.user_id)
        .await?
        .ok_or_else(|| CommandError::unauthenticated("the account no longer exists"))?;
    let secret = zeroize::Zeroizing::new(ctx.random_bytes::<20>());
    let generator = totp(secret.as_ref(), &ctx.app.config.product_name, &user.email)?;
    let uri = generator.to_url().map_err(|_| CommandError::internal())?;
    let png = generator
        .to_qr_png()
        .map_err(|_| CommandError::internal())?;
    let id = random_id(ctx.app.rng.as_ref());
    let pending = PendingEnrolment {
        user_id: me.user_id.clone(),
        sealed_secret: seal(&ctx, &aad_enrolment(&id), secret.as_ref()),
        expires_at: ctx.now().unix_timestamp() + ENROLMENT_S,
    };
    PENDING
        .put(ctx.app.store.as_ref(), id.as_bytes(), &pending)
        .await?;
    ctx.audit.event("totp.enrolled");
    Ok(Enrollment {
        enrollment_id: id,
        secret: Secret::new(generator.secret().to_base32()),
        otpauth_uri: Secret::new(uri),
        qr_png: Secret::new(STANDARD.encode(png)),
        expires_in: u64::try_from(ENROLMENT_S).unwrap_or(0),
    })
}

/// `TOTP.CONFIRM` — user (allowed in an enrolment-only session). Activates the enrolment with a
/// current code and returns ten recovery codes (shown once). `NOT_FOUND` for an unknown or
/// someone else's enrolment, `EXPIRED` after 10 minutes, `INVALID_CREDENTIALS` for a wrong code.
async fn confirm(ctx: Ctx, p: ConfirmParams) -> Result<RecoveryCodes, CommandError> {
    let me = ctx.user()?.clone();
    let store = ctx.app.store.as_ref();
    let not_found = || CommandError::new(ErrorCode::NotFound, "no such enrolment");
    let stored = PENDING
        .read(store, p.enrollment_id.as_bytes())
        .await?
        .ok_or_else(not_found)?;
    let pending = &stored.record;
    if pending.user_id != me.user_id {
        return Err(not_found());
    }
    let now = ctx.now().unix_timestamp();
    if now >= pending.expires_at {
        return Err(CommandError::new(
            ErrorCode::Expired,
            "the enrolment expired; start again",
        ));
    }
    let secret = unseal(
        &ctx,
        &aad_enrolment(&p.enrollment_id),
        &pending.sealed_secret,
    )?;
    let step = totp(&secret, "p", "u")?.check(p.code.expose(), u64::try_from(now).unwrap_or(0));
    let Some(step) = step else {
        ctx.audit.event("totp.failed");
        return Err(CommandError::new(
            ErrorCode::InvalidCredentials,
            "the code is not valid",
        ));
    };
    // One batch: the enrolment is consumed (exactly one of concurrent confirmations of it
    // wins), the factor is created only where there is none (exactly one of concurrent
    // confirmations of different enrolments wins), the recovery codes are replaced, and the
    // calling session must still be live (an eviction racing this cannot leave a squatter's
    // factor behind).
    let mut recovery_codes = None;
    for _ in 0..CONFIRM_ATTEMPTS {
        let (codes_batch, codes) = recovery_code_writes(&ctx, &me.user_id).await?;
        let batch = PENDING
            .replacing(p.enrollment_id.as_bytes(), &stored, None)
            .merge(confirmation(&ctx, &me.user_id, &secret, step))
            .merge(crate::identity::evict::caller_adds_factor(&ctx).await?)
            .merge(codes_batch);
        match store.apply(batch).await? {
            Applied::Committed => {
                recovery_codes = Some(codes);
                break;
            }
            Applied::Refused { check: 0, .. } => {
                return Err(CommandError::new(
                    ErrorCode::AlreadyUsed,
                    "the enrolment has already been confirmed",
                ))
            }
            Applied::Refused { check: 1, .. } => {
                return Err(CommandError::new(
                    ErrorCode::Conflict,
                    "an authenticator app is already enrolled",
                ))
            }
            // The session record moved (a refresh) or the codes changed: plan again.
            Applied::Refused { .. } => continue,
        }
    }
    let recovery_codes = recovery_codes.ok_or_else(|| CommandError::from(StoreError::Busy))?;
    ctx.audit.event("totp.confirmed");
    ctx.audit.event("recovery.regenerated");
    Ok(RecoveryCodes { recovery_codes })
}

/// Rounds of `TOTP.CONFIRM` against concurrent writers before it gives up.
const CONFIRM_ATTEMPTS: usize = 8;

/// `TOTP.DISABLE` — user after step-up. Removes the factor and its recovery codes, logs
/// `factor.removed` and tells the user by mail. `NOT_FOUND` when there is none.
async fn disable(ctx: Ctx, _p: NoParams) -> Result<Disabled, CommandError> {
    let me = ctx.user()?.clone();
    if !crate::factors::remove(&ctx, &me.user_id, &[Factor::Totp, Factor::RecoveryCodes])
        .await?
        .contains(&Factor::Totp)
    {
        return Err(CommandError::new(
            ErrorCode::NotFound,
            "no authenticator app is enrolled",
        ));
    }
    ctx.audit.event("factor.removed");
    ctx.audit.note("factor", "totp");
    crate::identity::accounts::notify(
        &ctx,
        &me.user_id,
        "An authenticator app was removed",
        "Sign-ins no longer ask for its codes, and its recovery codes no longer work.",
    )
    .await?;
    Ok(Disabled { disabled: true })
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use portcullis_store::Table;
    use serde_json::{json, Value};

    /// Two pending enrolments confirmed at once: exactly one becomes the factor, the other is
    /// refused, and one set of ten recovery codes exists. Before the confirmation was one
    /// batch, both read "no factor yet" and both succeeded, the second overwriting the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_confirmations_of_two_enrolments_have_one_winner() {
        let (b, faults) = Bench::faulty().await;
        let s = b
            .ok(
                "AUTH.SIGNUP",
                json!({"email": "two@example.org", "password": "a long enough passphrase"}),
                None,
            )
            .await;
        let access = s["access_token"].as_str().unwrap();
        let mut confirms = Vec::new();
        for _ in 0..2 {
            confirms.push(b.pending_totp(access).await.0);
        }
        // Both confirmations read the factor table before either writes it.
        faults.meet_on_read(Table::Totp, 2);
        let (r1, r2) = tokio::join!(
            b.call("TOTP.CONFIRM", confirms[0].clone(), Some(access)),
            b.call("TOTP.CONFIRM", confirms[1].clone(), Some(access)),
        );
        let winners = [&r1, &r2].iter().filter(|r| r.ok).count();
        assert_eq!(winners, 1, "{r1:?}\n{r2:?}");
        let loser = if r1.ok { &r2 } else { &r1 };
        assert_eq!(loser.error_code(), Some(ErrorCode::Conflict), "{loser:?}");
        let prefix = format!("{}/", s["user_id"].as_str().unwrap());
        let codes = b
            .app
            .store
            .scan_prefix(Table::RecoveryCodes, prefix.as_bytes(), 100)
            .await
            .unwrap();
        assert_eq!(codes.len(), 10);
        let winner: &Value = if r1.ok { &r1.data } else { &r2.data };
        assert_eq!(winner["recovery_codes"].as_array().unwrap().len(), 10);
    }
}
