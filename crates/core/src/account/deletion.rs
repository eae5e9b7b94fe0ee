//! Deleting an account, by its owner (`USER.DELETE`) or an administrator (`ADMIN.USER.DELETE`).

use crate::base::error::CommandError;
use crate::identity::accounts::{UserRecord, META_SUPERADMIN};
use crate::Ctx;
use portcullis_store::Table;

/// Removes an account: revokes every session, removes its factors, passkeys, address and
/// record. The event log keeps what happened. Returns how many sessions were revoked.
pub async fn delete_account(ctx: &Ctx, u: &UserRecord) -> Result<u64, CommandError> {
    let store = ctx.app.store.as_ref();
    let key = u.email.to_ascii_lowercase().into_bytes();
    for _ in 0..crate::identity::evict::ATTEMPTS {
        let Some(raw) = store.get(Table::Users, u.id.as_bytes()).await? else {
            return Ok(0);
        };
        // Everything goes in one batch: the record, its address, its sessions, its factors and
        // (for the bootstrapped administrator) the marker, which frees the bootstrap for a new
        // one. A crash leaves the whole account or nothing, never a password-only remnant.
        let planned = crate::factors::eviction(ctx, &u.id, None, "account_deleted").await?;
        let batch = planned
            .batch
            .swap(Table::Users, u.id.as_bytes(), Some(&raw), None)
            .merge(
                crate::identity::evict::release_claim(ctx, Table::Emails, key.clone(), &u.id)
                    .await?,
            )
            .merge(
                crate::identity::evict::release_claim(ctx, Table::Meta, META_SUPERADMIN, &u.id)
                    .await?,
            );
        if store.apply(batch).await?.committed() {
            for sid in &planned.revoked_sessions {
                ctx.app.session_cache.mark_revoked(sid, &u.id);
            }
            return Ok(planned.evicted.sessions);
        }
    }
    Err(portcullis_store::StoreError::Busy.into())
}
