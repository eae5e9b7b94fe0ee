//! `AUTH.SIGNUP`, `AUTH.LOGIN`, `AUTH.REFRESH`, `AUTH.LOGOUT`.

use crate::base::caller::{RateClass, Requirement};
use crate::base::crypto::{random_id, sha256};
use crate::identity::accounts::{
    check_display_name, create_user, find_by_email, normalize_email, update_user, UserRecord,
};
use crate::identity::passwords::AMR_PASSWORD;
use crate::identity::passwords::{check_policy, PolicyContext};
use crate::identity::sessions::{refresh, revoke, start_session};
use crate::signin::login::finish_first_factor;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::auth::{
    self, LoggedOut, LoginParams, RefreshParams, SessionTokens, SignupParams,
};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::ErrorCode;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(
            auth::SIGNUP,
            Requirement::Anyone,
            RateClass::Credential,
            signup,
        ),
        CommandSpec::new(
            auth::LOGIN,
            Requirement::Anyone,
            RateClass::Credential,
            login,
        ),
        CommandSpec::new(
            auth::REFRESH,
            Requirement::Anyone,
            RateClass::Credential,
            refresh_cmd,
        ),
        CommandSpec::new(auth::LOGOUT, Requirement::User, RateClass::Account, logout)
            .enrolment_allowed(),
    ]
}

/// `AUTH.SIGNUP` — anyone. Creates the account (`CONFLICT` if the address is taken) and signs
/// it in. With a password: `amr ["pwd"]`, AAL1. Without: a passwordless account, whose first
/// session has `aal 0` and no `amr` (nothing was proven; the address is unverified) until it
/// signs in by link, code or passkey.
async fn signup(ctx: Ctx, p: SignupParams) -> Result<SessionTokens, CommandError> {
    let email = normalize_email(&p.email)?;
    let display_name = check_display_name(p.display_name)?;
    // Hash before looking at the store: the answer takes as long whether or not the address is
    // taken, and no lock is held while hashing.
    let password_hash = match &p.password {
        Some(pw) => {
            let context = PolicyContext {
                product_name: &ctx.app.config.product_name,
                email: Some(&email.display),
                display_name: display_name.as_deref(),
            };
            check_policy(pw, &context)?;
            Some(ctx.app.passwords.hash(pw).await?)
        }
        None => None,
    };
    let now = ctx.now().unix_timestamp();
    let user = UserRecord {
        id: random_id(ctx.app.rng.as_ref()),
        email: email.display.clone(),
        display_name,
        email_verified: false,
        password_hash,
        created_at: now,
        updated_at: now,
        disabled: false,
        superadmin: false,
        session_epoch: 0,
    };
    ctx.audit
        .note("email_sha256", hex::encode(sha256(email.key.as_bytes())));
    create_user(ctx.app.store.as_ref(), &user, &email).await?;
    ctx.audit.note("user.created", true);
    match user.password_hash {
        Some(_) => finish_first_factor(&ctx, &user, vec![AMR_PASSWORD.to_owned()]).await,
        None => start_session(&ctx, &user, 0, Vec::new()).await,
    }
}

/// `AUTH.LOGIN` — anyone. Wrong password, unknown address, passwordless or disabled account:
/// all `INVALID_CREDENTIALS` after the same argon2 work. The event records a hash of the
/// attempted address, never the password.
async fn login(ctx: Ctx, p: LoginParams) -> Result<SessionTokens, CommandError> {
    let invalid = || CommandError::new(ErrorCode::InvalidCredentials, "email or password is wrong");
    let email = normalize_email(&p.email).ok();
    // Failure delays are kept per address, whether or not it has an account (an unparseable
    // address cannot be an account, so it has none).
    let delay_key = email.as_ref().map(|e| format!("login:{}", e.key));
    let now = ctx.now().unix_timestamp();
    // Reserve the attempt before any work: however many requests race, no more passwords are
    // checked than the free failures allow (see `Limits::reserve_attempt`).
    let attempt = match &delay_key {
        Some(k) => Some(ctx.app.limits.reserve_attempt(k, now).await?),
        None => None,
    };
    let user = match &email {
        Some(e) => {
            ctx.audit
                .note("email_sha256", hex::encode(sha256(e.key.as_bytes())));
            find_by_email(ctx.app.store.as_ref(), e).await?
        }
        None => None,
    };
    let usable = user.as_ref().filter(|u| !u.disabled);
    let stored = usable.and_then(|u| u.password_hash.clone());
    let verified = ctx
        .app
        .passwords
        .verify(&p.password, stored.as_deref())
        .await?;
    let (Some(user), true) = (usable.cloned(), verified.ok) else {
        if let Some(u) = &user {
            ctx.audit.subject(&u.id);
        }
        ctx.audit.event("login.failed");
        if let Some(a) = attempt {
            let failures = a.failed(ctx.now().unix_timestamp()).await;
            ctx.audit.note("consecutive_failures", u64::from(failures));
        }
        return Err(invalid());
    };
    if let Some(a) = attempt {
        a.succeeded(ctx.now().unix_timestamp()).await;
    }
    let store = ctx.app.store.as_ref();
    // The hash this sign-in stands on: the one verified, or its upgrade.
    let mut standing = stored.clone();
    if verified.needs_rehash {
        let upgraded = Some(ctx.app.passwords.hash(&p.password).await?);
        // Only if nobody changed the password meanwhile.
        let after = update_user(store, &user.id, |u| {
            let same = u.password_hash == stored;
            if same {
                u.password_hash = upgraded.clone();
                u.updated_at = now;
            }
            same
        })
        .await?;
        if after.is_some_and(|u| u.password_hash == upgraded) {
            standing = upgraded;
            if let Some(old) = &stored {
                ctx.app.passwords.observe_replaced(old);
            }
            ctx.audit.note("password.rehashed", true);
        }
    }
    let result = finish_first_factor(&ctx, &user, vec![AMR_PASSWORD.to_owned()]).await;
    // The password was checked against the record as read before hashing. If it changed since
    // (a password change, or the owner's first proof of the address clearing a password set by
    // whoever signed up), this sign-in must not survive: the session made from it is revoked.
    let still = crate::identity::accounts::get_user(store, &user.id)
        .await?
        .is_some_and(|u| !u.disabled && u.password_hash.is_some() && u.password_hash == standing);
    if !still {
        if let Ok(t) = &result {
            revoke(&ctx, &t.session_id, "password_changed_during_sign_in").await?;
        }
        ctx.audit.event("login.failed");
        ctx.audit.note("reason", "password_changed_during_sign_in");
        return Err(invalid());
    }
    result
}

/// `AUTH.REFRESH` — anyone holding a refresh token. Rotates it; see [`refresh`].
async fn refresh_cmd(ctx: Ctx, p: RefreshParams) -> Result<SessionTokens, CommandError> {
    refresh(&ctx, &p.refresh_token).await
}

/// `AUTH.LOGOUT` — user. Revokes the calling session; its access and refresh tokens stop
/// working at once.
async fn logout(ctx: Ctx, _p: NoParams) -> Result<LoggedOut, CommandError> {
    let sid = ctx.user()?.session_id.clone();
    revoke(&ctx, &sid, "logout").await?;
    ctx.audit.event("session.revoked");
    Ok(LoggedOut {
        session_id: sid,
        revoked: true,
    })
}

#[cfg(test)]
mod tests {
    use crate::testkit::Bench;
    use portcullis_protocol::ErrorCode;
    use serde_json::json;
    use std::sync::Arc;

    /// Defect 2: 60 wrong passwords for one address at once. Each attempt is reserved before its
    /// hash, so only the free failures (5) are ever checked; the rest are `RATE_LIMITED`
    /// without any argon2 work. The bound allows the hashing threads' worth of slack.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn parallel_wrong_logins_are_checked_at_most_the_free_failures() {
        let b = Arc::new(Bench::new(|_| {}).await);
        b.ok(
            "AUTH.SIGNUP",
            json!({"email": "target@example.org", "password": "correct horse battery staple"}),
            None,
        )
        .await;
        let work_before = b.app.passwords.work_done();
        let tasks: Vec<_> = (0..60)
            .map(|i| {
                let b = Arc::clone(&b);
                tokio::spawn(async move {
                    b.call(
                        "AUTH.LOGIN",
                        json!({"email": "target@example.org", "password": format!("wrong guess {i}")}),
                        None,
                    )
                    .await
                    .error_code()
                })
            })
            .collect();
        let (mut checked, mut limited) = (0u64, 0u64);
        for t in tasks {
            match t.await.unwrap() {
                Some(ErrorCode::InvalidCredentials) => checked += 1,
                Some(ErrorCode::RateLimited) => limited += 1,
                other => panic!("unexpected outcome {other:?}"),
            }
        }
        let hashed = b.app.passwords.work_done() - work_before;
        let bound = crate::infra::limits::FREE_FAILURES as u64
            + u64::try_from(b.app.config.hash_permits()).unwrap();
        assert!(
            checked <= bound,
            "{checked} passwords checked (bound {bound})"
        );
        assert_eq!(checked, hashed, "every check, and only a check, hashes");
        assert_eq!(checked + limited, 60);
        assert_eq!(checked, crate::infra::limits::FREE_FAILURES as u64);
        // The owner, too, waits out the delay the guesses started.
        let r = b
            .call(
                "AUTH.LOGIN",
                json!({"email": "target@example.org", "password": "correct horse battery staple"}),
                None,
            )
            .await;
        assert_eq!(r.error_code(), Some(ErrorCode::RateLimited));
        b.advance(3);
        b.ok(
            "AUTH.LOGIN",
            json!({"email": "target@example.org", "password": "correct horse battery staple"}),
            None,
        )
        .await;
    }

    /// ASVS 6.2.8 and 6.2.9: a password is checked exactly as received (case, inner and
    /// trailing spaces, non-ASCII all count; nothing is trimmed or truncated), and a long
    /// passphrase of 64 characters and more is accepted whole.
    #[tokio::test]
    async fn passwords_are_checked_exactly_as_received_and_long_ones_are_accepted() {
        let b = Bench::new(|_| {}).await;
        let long = "Über Berge, durch Täler: zwölf Wörter bilden hier eine sehr lange Losung! ";
        assert!(long.chars().count() >= 64);
        b.ok(
            "AUTH.SIGNUP",
            json!({"email": "exact@example.org", "password": long}),
            None,
        )
        .await;
        let login = |pw: String| {
            let b = &b;
            async move {
                b.call(
                    "AUTH.LOGIN",
                    json!({"email": "exact@example.org", "password": pw}),
                    None,
                )
                .await
            }
        };
        assert!(login(long.to_owned()).await.ok);
        for near in [
            long.trim_end().to_owned(),
            long.to_lowercase(),
            long.replace("  ", " ").replace(", ", ","),
            long.chars().take(64).collect::<String>(),
            long.replace('Ü', "U"),
        ] {
            assert_ne!(near, long);
            assert_eq!(
                login(near.clone()).await.error_code(),
                Some(ErrorCode::InvalidCredentials),
                "{near:?} signed in"
            );
            // Stay clear of the failure delay: this test is about what matches, not how often.
            b.advance(16 * 60);
        }
    }
}
