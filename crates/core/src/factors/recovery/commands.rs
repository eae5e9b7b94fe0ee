//! `RECOVERY.REGENERATE`: a fresh set of recovery codes for the signed-in user.

use super::new_recovery_codes;
use crate::base::caller::{RateClass, Requirement};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::mfa;
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::commands::totp::RecoveryCodes;
use portcullis_protocol::ErrorCode;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    vec![CommandSpec::new(
        mfa::REGENERATE,
        Requirement::UserStepUp,
        RateClass::Account,
        regenerate,
    )]
}

/// `RECOVERY.REGENERATE` — user after step-up, with an authenticator app enrolled. Replaces
/// every recovery code with a fresh set of ten (shown once).
async fn regenerate(ctx: Ctx, _p: NoParams) -> Result<RecoveryCodes, CommandError> {
    let me = ctx.user()?.clone();
    if !crate::factors::totp::has_totp(&ctx, &me.user_id).await? {
        return Err(CommandError::new(
            ErrorCode::NotFound,
            "enrol an authenticator app first",
        ));
    }
    let recovery_codes = new_recovery_codes(&ctx, &me.user_id).await?;
    ctx.audit.event("recovery.regenerated");
    Ok(RecoveryCodes { recovery_codes })
}
