//! API keys for application backends: `pk_live_` + 256 random bits, stored only as SHA-256,
//! with narrow scopes named after command families.

use crate::base::caller::ApiKeyCaller;
use crate::base::crypto::sha256;
use crate::base::error::CommandError;
use crate::infra::records::{Records, TableOwner};
use crate::{App, Ctx};
use portcullis_store::{Batch, Record, StoreError, Table};
use serde::{Deserialize, Serialize};

/// Prefix of API keys.
pub const PREFIX: &str = "pk_live_";

/// One key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (shown in lists and events).
    pub id: String,
    /// Name given at creation.
    pub name: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None`: no expiry.
    pub expires_at: Option<i64>,
    /// Unix seconds when revoked.
    pub revoked_at: Option<i64>,
    /// Who created it (actor string).
    pub created_by: String,
}

impl Record for ApiKeyRecord {
    const VERSION: u8 = 1;
}

/// Keys by SHA-256 of the key.
const KEYS: Records<ApiKeyRecord> = Records::new(Table::ApiKeys);

/// Store key of an API key: its SHA-256.
pub fn key_of(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// Verifies a presented API key. `Err(reason)` for an unknown, revoked or expired key.
pub async fn authenticate(app: &App, token: &str) -> Result<ApiKeyCaller, &'static str> {
    let rec = match KEYS.get(app.store.as_ref(), &key_of(token)).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return Err("unknown_api_key"),
        Err(StoreError::Record(_)) => return Err("unreadable_api_key"),
        Err(_) => return Err("storage"),
    };
    if rec.revoked_at.is_some() {
        return Err("revoked_api_key");
    }
    if rec
        .expires_at
        .is_some_and(|e| app.clock.now().unix_timestamp() >= e)
    {
        return Err("expired_api_key");
    }
    Ok(ApiKeyCaller {
        id: rec.id,
        scopes: rec.scopes,
    })
}

/// Every key (for listing and revocation; there are few).
pub async fn all(app: &App) -> Result<Vec<([u8; 32], ApiKeyRecord)>, CommandError> {
    let mut out = Vec::new();
    for (k, stored) in KEYS.scan(app.store.as_ref(), b"", usize::MAX).await? {
        let rec = stored.record;
        let key: [u8; 32] = k
            .as_slice()
            .try_into()
            .map_err(|_| CommandError::internal())?;
        out.push((key, rec));
    }
    out.sort_by_key(|(_, r)| r.created_at);
    Ok(out)
}

/// Stores a new key under its token's hash.
pub async fn insert(app: &App, token: &str, rec: &ApiKeyRecord) -> Result<(), CommandError> {
    KEYS.put(app.store.as_ref(), &key_of(token), rec).await?;
    Ok(())
}

/// Revokes the key with public id `id` (from `now`; a revoked key stays revoked): the key as it
/// now stands, or `None` when there is no such key.
pub async fn revoke(app: &App, id: &str, now: i64) -> Result<Option<ApiKeyRecord>, CommandError> {
    let Some((key, _)) = all(app).await?.into_iter().find(|(_, r)| r.id == id) else {
        return Ok(None);
    };
    KEYS.update(app.store.as_ref(), &key, |r| {
        let live = r.revoked_at.is_none();
        if live {
            r.revoked_at = Some(now);
        }
        Ok::<_, CommandError>(live)
    })
    .await
}

/// The writes revoking every live API key created by `user_id`, or by a key such a key created.
pub async fn revocations(ctx: &Ctx, user_id: &str) -> Result<(Batch, u64), CommandError> {
    let now = ctx.now().unix_timestamp();
    let keys = KEYS.scan(ctx.app.store.as_ref(), b"", usize::MAX).await?;
    let mut creators = vec![format!("user:{user_id}")];
    let mut revoke: Vec<usize> = Vec::new();
    // Keys made by keys the account made: follow the chain until nothing new is found.
    loop {
        let before = revoke.len();
        for (i, (_, k)) in keys.iter().enumerate() {
            let k = &k.record;
            if !revoke.contains(&i) && creators.contains(&k.created_by) {
                revoke.push(i);
                creators.push(format!("apikey:{}", k.id));
            }
        }
        if revoke.len() == before {
            break;
        }
    }
    let mut batch = Batch::new();
    let mut n = 0;
    for i in revoke {
        let Some((hash, stored)) = keys.get(i) else {
            continue;
        };
        if stored.record.revoked_at.is_some() {
            continue;
        }
        let revoked = ApiKeyRecord {
            revoked_at: Some(now),
            ..stored.record.clone()
        };
        batch = batch.merge(KEYS.replacing(hash.as_slice(), stored, Some(&revoked)));
        n += 1;
    }
    Ok((batch, n))
}

/// API keys: stored as hashes, nothing sealed; revoked keys are kept for the record.
pub struct Tables;

impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::ApiKeys]
    }
}
