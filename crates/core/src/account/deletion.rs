//! Deleting an account, by its owner (`USER.DELETE`) or an administrator (`ADMIN.USER.DELETE`).

use crate::base::error::CommandError;
use crate::identity::accounts::{self, UserRecord};
use crate::Ctx;

/// Removes an account: revokes every session, removes its factors, passkeys, address and
/// record. The event log keeps what happened. Returns how many sessions were revoked.
pub async fn delete_account(ctx: &Ctx, u: &UserRecord) -> Result<u64, CommandError> {
    let store = ctx.app.store.as_ref();
    for _ in 0..crate::identity::evict::ATTEMPTS {
        let Some(record) = accounts::removal(ctx, u).await? else {
            return Ok(0);
        };
        // Everything goes in one batch: the record, its address, its sessions, its factors and
        // (for the bootstrapped administrator) the marker, which frees the bootstrap for a new
        // one. A crash leaves the whole account or nothing, never a password-only remnant.
        let planned = crate::factors::eviction(ctx, &u.id, None, "account_deleted").await?;
        let batch = planned.batch.merge(record);
        if store.apply(batch).await?.committed() {
            for sid in &planned.revoked_sessions {
                ctx.app.session_cache.mark_revoked(sid, &u.id);
            }
            return Ok(planned.evicted.sessions);
        }
    }
    Err(portcullis_store::StoreError::Busy.into())
}
