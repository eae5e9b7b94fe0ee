//! `KEYS.*`: the token signing keys.

use super::time_of;
use crate::base::caller::{RateClass, Requirement, Scope};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{self, SigningKeyInfo, SigningKeys};
use portcullis_protocol::commands::sys::NoParams;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    use Requirement::Admin;
    use Scope::*;
    vec![
        CommandSpec::new(
            admin::KEYS_ROTATE,
            Admin(KeysWrite),
            RateClass::Operator,
            keys_rotate,
        ),
        CommandSpec::new(
            admin::KEYS_LIST,
            Admin(KeysWrite),
            RateClass::Operator,
            keys_list,
        )
        .reads_only(),
    ]
}

async fn key_list(ctx: &Ctx) -> Result<SigningKeys, CommandError> {
    let now = ctx.now().unix_timestamp();
    let keys = ctx
        .app
        .tokens
        .list(ctx.app.store.as_ref())
        .await?
        .into_iter()
        .map(|(kid, created, active, until)| SigningKeyInfo {
            kid,
            created_at: time_of(created),
            state: match (active, until) {
                (true, _) => "active",
                (false, Some(u)) if now <= u => "verifying",
                _ => "retired",
            }
            .to_owned(),
            verify_until: until.map(time_of),
        })
        .collect();
    Ok(SigningKeys { keys })
}

/// `KEYS.ROTATE` — `keys:write`. A new Ed25519 signing key becomes active; the old one keeps
/// verifying until the last token it signed has expired, then retires (and leaves the JWKS).
async fn keys_rotate(ctx: Ctx, _p: NoParams) -> Result<SigningKeys, CommandError> {
    let app = &ctx.app;
    let kid = app
        .tokens
        .rotate(
            app.store.as_ref(),
            &app.sealer,
            app.rng.as_ref(),
            ctx.now().unix_timestamp(),
        )
        .await?;
    ctx.audit.event("keys.rotated");
    ctx.audit.note("kid", kid);
    key_list(&ctx).await
}

/// `KEYS.LIST` — `keys:write`. Ids, creation times and states.
async fn keys_list(ctx: Ctx, _p: NoParams) -> Result<SigningKeys, CommandError> {
    key_list(&ctx).await
}
