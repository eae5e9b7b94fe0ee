//! `PASSKEY.LOGIN.BEGIN/FINISH`: signing in with a passkey, by address or usernameless, and the
//! ceremony a passkey second factor (`MFA.VERIFY`) begins with.

use crate::base::caller::{RateClass, Requirement};
use crate::factors::passkey::{
    self as passkeys, after_assertion, begin, ceremony, credential_id_text, parse_assertion,
    refused, request_options, take, user_of_handle, CeremonyKind,
};
use crate::identity::accounts::{find_by_email, get_user, normalize_email};
use crate::identity::sessions::start_session;
use crate::signin::ticket::ticket;
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::auth::SessionTokens;
use portcullis_protocol::commands::passkey::{self, Ceremony, FinishParams, LoginBeginParams};
use portcullis_protocol::ErrorCode;
use serde_json::Value;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![
        CommandSpec::new(
            passkey::LOGIN_BEGIN,
            Requirement::Anyone,
            RateClass::Credential,
            login_begin,
        ),
        CommandSpec::new(
            passkey::LOGIN_FINISH,
            Requirement::Anyone,
            RateClass::Credential,
            login_finish,
        ),
    ]
}

/// `PASSKEY.LOGIN.BEGIN` — anyone. With `email`: request options listing that account's
/// passkeys (an address without passkeys gets options of the same shape that can never succeed:
/// no enumeration). With `mfa_token`: the passkey as the second factor of that sign-in (finish
/// with `MFA.VERIFY`). With neither: a usernameless request for a discoverable credential.
async fn login_begin(ctx: Ctx, p: LoginBeginParams) -> Result<Ceremony, CommandError> {
    let wa = &ctx.app.webauthn;
    if let Some(token) = &p.mfa_token {
        let live = ticket(&ctx, token).await?;
        let user_id = live.ticket().user_id.clone();
        let creds: Vec<_> = passkeys::list(&ctx, &user_id)
            .await?
            .into_iter()
            .map(|r| r.passkey)
            .collect();
        if creds.is_empty() {
            return Err(CommandError::invalid_params("this account has no passkey"));
        }
        let (rcr, state) = wa
            .start_passkey_authentication(&creds)
            .map_err(|e| refused(&ctx, e))?;
        let options =
            request_options(serde_json::to_value(rcr).map_err(|_| CommandError::internal())?);
        let kind = CeremonyKind::Login {
            user_id,
            mfa_ticket: Some(hex::encode(live.key())),
            state,
        };
        ctx.audit.event("passkey.challenge_created");
        return Ok(ceremony(begin(&ctx, kind).await?, options));
    }
    let Some(email) = p.email else {
        let (rcr, state) = wa
            .start_discoverable_authentication()
            .map_err(|e| refused(&ctx, e))?;
        let options =
            request_options(serde_json::to_value(rcr).map_err(|_| CommandError::internal())?);
        ctx.audit.event("passkey.challenge_created");
        return Ok(ceremony(
            begin(&ctx, CeremonyKind::Discoverable { state }).await?,
            options,
        ));
    };
    let email = normalize_email(&email)?;
    let user = find_by_email(ctx.app.store.as_ref(), &email)
        .await?
        .filter(|u| !u.disabled);
    let creds: Vec<_> = match &user {
        Some(u) => passkeys::list(&ctx, &u.id)
            .await?
            .into_iter()
            .map(|r| r.passkey)
            .collect(),
        // The same store read as for an account, so the decoy does not answer sooner.
        None => {
            passkeys::list(&ctx, "decoy").await?;
            Vec::new()
        }
    };
    ctx.audit.event("passkey.challenge_created");
    match (user, creds.is_empty()) {
        (Some(u), false) => {
            let (rcr, state) = wa
                .start_passkey_authentication(&creds)
                .map_err(|e| refused(&ctx, e))?;
            let options =
                request_options(serde_json::to_value(rcr).map_err(|_| CommandError::internal())?);
            let kind = CeremonyKind::Login {
                user_id: u.id,
                mfa_ticket: None,
                state,
            };
            Ok(ceremony(begin(&ctx, kind).await?, options))
        }
        _ => {
            // Same shape as a real answer: a fresh challenge and plausible credential ids.
            let (rcr, _) = wa
                .start_discoverable_authentication()
                .map_err(|e| refused(&ctx, e))?;
            let mut options =
                request_options(serde_json::to_value(rcr).map_err(|_| CommandError::internal())?);
            if let Some(Value::Object(pk)) = options.get_mut("publicKey") {
                pk.insert(
                    "allowCredentials".into(),
                    passkeys::decoy_allow_credentials(&ctx, &email.key),
                );
                // A real allow-listed request carries no extensions.
                pk.remove("extensions");
            }
            Ok(ceremony(begin(&ctx, CeremonyKind::Decoy).await?, options))
        }
    }
}

/// `PASSKEY.LOGIN.FINISH` — anyone. Verifies the assertion (origin, rp id, challenge, user
/// verification, signature, counter: a regression means a cloned authenticator and is refused)
/// and starts a session: `amr` `["hwk"|"swk", "user", "mfa"]`, AAL2. Single use, 5 minutes.
async fn login_finish(ctx: Ctx, p: FinishParams) -> Result<SessionTokens, CommandError> {
    let credential = parse_assertion(p.credential)?;
    let invalid = || {
        CommandError::new(
            ErrorCode::InvalidCredentials,
            "the passkey could not be verified",
        )
    };
    let (user_id, amr) = match take(&ctx, &p.ceremony_id).await? {
        CeremonyKind::Login {
            user_id,
            mfa_ticket: None,
            state,
        } => {
            ctx.audit.subject(&user_id);
            let amr = passkeys::verify_login(&ctx, &user_id, &state, &credential).await?;
            (user_id, amr)
        }
        CeremonyKind::Discoverable { state } => {
            let (handle, cred_id) = ctx
                .app
                .webauthn
                .identify_discoverable_authentication(&credential)
                .map_err(|e| refused(&ctx, e))?;
            let user_id = user_of_handle(&handle);
            ctx.audit.subject(&user_id);
            let rec = passkeys::get(&ctx, &user_id, &credential_id_text(cred_id))
                .await?
                .ok_or_else(invalid)?;
            let res = ctx
                .app
                .webauthn
                .finish_discoverable_authentication_v2(&credential, state, &rec.passkey)
                .map_err(|e| refused(&ctx, e))?;
            let amr = after_assertion(&ctx, &user_id, rec, &res).await?;
            (user_id, amr)
        }
        CeremonyKind::Login { .. } => {
            return Err(CommandError::invalid_params(
                "this ceremony is a second factor: finish it with MFA.VERIFY",
            ))
        }
        CeremonyKind::Register { .. } | CeremonyKind::Decoy => {
            ctx.audit.event("passkey.refused");
            return Err(invalid());
        }
    };
    let user = get_user(ctx.app.store.as_ref(), &user_id)
        .await?
        .filter(|u| !u.disabled)
        .ok_or_else(invalid)?;
    let aal = if amr.iter().any(|a| a == "mfa") { 2 } else { 1 };
    ctx.audit.event("passkey.verified");
    // A user-verified passkey is itself multi-factor: the sign-in completes at AAL2.
    start_session(&ctx, &user, aal, amr).await
}
