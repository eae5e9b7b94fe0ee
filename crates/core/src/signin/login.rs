//! The sign-in state machine. Every first factor (password, magic link, email code, passkey)
//! hands its verified user to [`finish_first_factor`]; the transitions are written out here and
//! nowhere else:
//!
//! ```text
//! Started ──first factor──▶ FirstFactorVerified ─┬─ no second factor ──────────▶ Complete (AAL1)
//!                                                ├─ second factor enrolled ────▶ MfaRequired
//!                                                └─ policy requires, none yet ─▶ EnrolmentOnly
//! MfaRequired ──MFA.VERIFY──▶ Complete (AAL2)
//! ```
//!
//! `MfaRequired` is stored as a single-use ticket (5 minutes) bound to the user and to the
//! first factor's `amr`; the client gets it as `error.details.mfa_token` of an `MFA_REQUIRED`
//! answer, so a client that ignores MFA can never mistake it for a session.

use crate::base::config::MfaPolicy;
use crate::base::error::CommandError;
use crate::factors::methods;
use crate::identity::accounts::UserRecord;
use crate::identity::sessions::{start_enrolment_session, start_session};
use crate::signin::ticket::{issue_ticket, MFA_TICKET_S};
use crate::Ctx;
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::ErrorCode;
use serde_json::json;

/// Where a sign-in stands once its first factor verified.
pub enum LoginState {
    /// No second factor is needed: the session.
    Complete(SessionTokens),
    /// A second factor is needed.
    MfaRequired {
        /// Continues the sign-in.
        mfa_token: portcullis_protocol::Secret,
        /// What it may be completed with.
        methods: Vec<portcullis_protocol::commands::mfa::Method>,
    },
    /// Policy requires a second factor and the user has none: a session that may only enrol.
    EnrolmentOnly(SessionTokens),
}

/// Decides the next state after a verified first factor (`amr`).
pub async fn next_state(
    ctx: &Ctx,
    user: &UserRecord,
    amr: Vec<String>,
) -> Result<LoginState, CommandError> {
    let available = methods(ctx, user).await?;
    if !available.is_empty() {
        let mfa_token = issue_ticket(ctx, &user.id, &amr).await?;
        return Ok(LoginState::MfaRequired {
            mfa_token,
            methods: available,
        });
    }
    match ctx.app.config.mfa_policy {
        MfaPolicy::Optional => Ok(LoginState::Complete(
            start_session(ctx, user, 1, amr).await?,
        )),
        MfaPolicy::Required => Ok(LoginState::EnrolmentOnly(
            start_enrolment_session(ctx, user, amr).await?,
        )),
    }
}

/// Runs [`next_state`] and turns it into a command's answer: the session, or `MFA_REQUIRED`
/// with `details {mfa_token, methods, expires_in}` (plus `enrolment_session` under a
/// `required` policy for a user without a second factor, with `methods: []`).
pub async fn finish_first_factor(
    ctx: &Ctx,
    user: &UserRecord,
    amr: Vec<String>,
) -> Result<SessionTokens, CommandError> {
    ctx.audit.subject(&user.id);
    match next_state(ctx, user, amr).await? {
        LoginState::Complete(tokens) => Ok(tokens),
        LoginState::MfaRequired { mfa_token, methods } => {
            ctx.audit.event("mfa.required");
            Err(CommandError::new(
                ErrorCode::MfaRequired,
                "a second factor is required: call MFA.VERIFY",
            )
            .with_details(json!({
                "mfa_token": mfa_token.expose(),
                "methods": methods,
                "expires_in": MFA_TICKET_S,
            })))
        }
        LoginState::EnrolmentOnly(tokens) => {
            ctx.audit.event("mfa.required");
            ctx.audit.note("enrolment_only", true);
            Err(CommandError::new(
                ErrorCode::MfaRequired,
                "a second factor is required: enrol one with the enrolment session, then sign in again",
            )
            .with_details(json!({
                "mfa_token": null,
                "methods": [],
                "expires_in": tokens.expires_in,
                "enrolment_session": tokens,
            })))
        }
    }
}
