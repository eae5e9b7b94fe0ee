//! API keys for application backends: `pk_live_` + 256 random bits, stored only as SHA-256,
//! with narrow scopes named after command families.

use crate::base::caller::ApiKeyCaller;
use crate::base::crypto::sha256;
use crate::base::error::CommandError;
use crate::App;
use portcullis_store::{decode_record, Record, StoreError, Table};
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

/// Store key of an API key: its SHA-256.
pub fn key_of(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// Verifies a presented API key. `Err(reason)` for an unknown, revoked or expired key.
pub async fn authenticate(app: &App, token: &str) -> Result<ApiKeyCaller, &'static str> {
    let raw = app
        .store
        .get(Table::ApiKeys, &key_of(token))
        .await
        .map_err(|_| "storage")?
        .ok_or("unknown_api_key")?;
    let rec: ApiKeyRecord = decode_record(&raw).map_err(|_| "unreadable_api_key")?;
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
    for (k, v) in app
        .store
        .scan_prefix(Table::ApiKeys, b"", usize::MAX)
        .await?
    {
        let rec: ApiKeyRecord =
            decode_record(&v).map_err(|e| CommandError::from(StoreError::from(e)))?;
        let key: [u8; 32] = k
            .as_slice()
            .try_into()
            .map_err(|_| CommandError::internal())?;
        out.push((key, rec));
    }
    out.sort_by_key(|(_, r)| r.created_at);
    Ok(out)
}
