//! `APIKEY.*`: keys for application backends.

use super::time_of;
use crate::base::caller::{RateClass, Requirement, Scope};
use crate::base::crypto::{random_id, random_token};
use crate::identity::apikeys::{self, ApiKeyRecord, PREFIX};
use crate::{Caller, CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{
    self, ApiKeyCreateParams, ApiKeyInfo, ApiKeyList, ApiKeyRef,
};
use portcullis_protocol::commands::sys::NoParams;
use portcullis_protocol::{ErrorCode, Secret};

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    use Requirement::Admin;
    use Scope::*;
    vec![
        CommandSpec::new(
            admin::APIKEY_CREATE,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_create,
        ),
        CommandSpec::new(
            admin::APIKEY_LIST,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_list,
        )
        .reads_only(),
        CommandSpec::new(
            admin::APIKEY_REVOKE,
            Admin(ApiKeysWrite),
            RateClass::Operator,
            apikey_revoke,
        ),
    ]
}

fn key_info(r: &ApiKeyRecord, key: Option<Secret>) -> ApiKeyInfo {
    ApiKeyInfo {
        id: r.id.clone(),
        name: r.name.clone(),
        scopes: r.scopes.clone(),
        created_at: time_of(r.created_at),
        expires_at: r.expires_at.map(time_of),
        revoked_at: r.revoked_at.map(time_of),
        key,
    }
}

/// `APIKEY.CREATE {name, scopes, expires_in?}` — `apikeys:write`. Returns the key once
/// (`pk_live_…`, 256 bits); the server keeps only its SHA-256.
async fn apikey_create(ctx: Ctx, p: ApiKeyCreateParams) -> Result<ApiKeyInfo, CommandError> {
    let name = p.name.trim().to_owned();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(CommandError::invalid_params(
            "name must be 1 to 64 characters",
        ));
    }
    const MAX_LIFETIME_S: u64 = 10 * 366 * 24 * 3600;
    if p.expires_in.is_some_and(|s| s == 0 || s > MAX_LIFETIME_S) {
        return Err(CommandError::invalid_params(
            "expires_in must be between 1 second and 10 years",
        ));
    }
    if p.scopes.is_empty() || p.scopes.iter().any(|s| Scope::parse(s).is_none()) {
        return Err(CommandError::invalid_params(
            "scopes must be a non-empty list of users:read, users:write, sessions:write, log:read, keys:write, apikeys:write, client:forward",
        ));
    }
    // An API key cannot mint a key with scopes it does not hold itself.
    if let Caller::ApiKey(k) = &ctx.caller {
        if p.scopes.iter().any(|s| !k.scopes.contains(s)) {
            return Err(CommandError::new(
                ErrorCode::Forbidden,
                "a key cannot grant scopes it lacks",
            ));
        }
    }
    let now = ctx.now().unix_timestamp();
    let token = random_token(ctx.app.rng.as_ref(), PREFIX);
    let rec = ApiKeyRecord {
        id: random_id(ctx.app.rng.as_ref())[..16].to_owned(),
        name,
        scopes: p.scopes,
        created_at: now,
        expires_at: p
            .expires_in
            .map(|s| now + i64::try_from(s).unwrap_or(i64::MAX / 2)),
        revoked_at: None,
        created_by: ctx.caller.actor().to_string(),
    };
    apikeys::insert(&ctx.app, &token, &rec).await?;
    ctx.audit.event("apikey.created");
    ctx.audit.note("apikey_id", rec.id.clone());
    ctx.audit.note("scopes", rec.scopes.join(" "));
    Ok(key_info(&rec, Some(Secret::new(token.as_str()))))
}

/// `APIKEY.LIST` — `apikeys:write`.
async fn apikey_list(ctx: Ctx, _p: NoParams) -> Result<ApiKeyList, CommandError> {
    let keys = apikeys::all(&ctx.app)
        .await?
        .iter()
        .map(|(_, r)| key_info(r, None))
        .collect();
    Ok(ApiKeyList { keys })
}

/// `APIKEY.REVOKE {id}` — `apikeys:write`. Effective on the key's next request. `NOT_FOUND`.
async fn apikey_revoke(ctx: Ctx, p: ApiKeyRef) -> Result<ApiKeyInfo, CommandError> {
    let now = ctx.now().unix_timestamp();
    let rec = apikeys::revoke(&ctx.app, &p.id, now)
        .await?
        .ok_or_else(|| CommandError::new(ErrorCode::NotFound, "no such API key"))?;
    ctx.audit.event("apikey.revoked");
    ctx.audit.note("apikey_id", rec.id.clone());
    Ok(key_info(&rec, None))
}
