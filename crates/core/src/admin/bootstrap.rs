//! `ADMIN.BOOTSTRAP`: the first superadmin.

use super::issue_link;
use crate::base::caller::{RateClass, Requirement};
use crate::base::crypto::random_id;
use crate::identity::accounts::{
    find_by_email, normalize_email, superadmin_claim, superadmin_claimed, UserRecord,
};
use crate::{CommandError, CommandSpec, Ctx};
use portcullis_protocol::commands::admin::{self, BootstrapParams, Bootstrapped};
use portcullis_protocol::ErrorCode;
use portcullis_store::Applied;

/// Registry entries.
pub fn specs() -> Vec<CommandSpec> {
    use Requirement::Operator;

    vec![CommandSpec::new(
        admin::BOOTSTRAP,
        Operator,
        RateClass::Operator,
        bootstrap,
    )]
}

/// Creates the first superadmin (passwordless) and a one-time sign-in link for it. Refuses
/// (`CONFLICT`) once a superadmin exists. The claim (an insert-if-absent of the marker) lands in
/// one atomic batch with the account it names, so a racing sign-up or a crash never leaves a
/// marker naming no account.
///
/// An existing account whose address was never proven may belong to whoever signed up with the
/// address first: everything set up on it (password, sessions, factors, passkeys, API keys) is
/// evicted in the same batch, and it cannot administer until the link proves the mailbox.
async fn bootstrap_admin(ctx: &Ctx, email: &str) -> Result<Bootstrapped, CommandError> {
    let email = normalize_email(email)?;
    let store = ctx.app.store.as_ref();
    let now = ctx.now().unix_timestamp();
    let taken = || CommandError::new(ErrorCode::Conflict, "an administrator already exists");
    let mut claimed = None;
    for _ in 0..BOOTSTRAP_ATTEMPTS {
        if superadmin_claimed(store).await? {
            return Err(taken());
        }
        match find_by_email(store, &email).await? {
            Some(existing) => {
                let id = existing.id;
                let claim_id = id.clone();
                let mut cleared = false;
                let done = crate::identity::evict::change_user(
                    ctx,
                    &id,
                    |u| {
                        u.superadmin = true;
                        cleared = !u.email_verified && crate::factors::forget_all(u);
                        u.updated_at = now;
                        Ok(true)
                    },
                    |_, u| {
                        let claim_id = claim_id.clone();
                        async move {
                            // Re-read on every attempt: a concurrent bootstrap answers CONFLICT.
                            if superadmin_claimed(store).await? {
                                return Err(taken());
                            }
                            let mut planned = if u.email_verified {
                                crate::identity::evict::Planned::default()
                            } else {
                                crate::factors::eviction(ctx, &u.id, None, "admin_bootstrap")
                                    .await?
                            };
                            planned.batch = std::mem::take(&mut planned.batch)
                                .merge(superadmin_claim(&claim_id));
                            Ok(planned)
                        }
                    },
                )
                .await?;
                if let Some((u, planned)) = done {
                    let e = planned.evicted;
                    ctx.audit
                        .note("unverified_account_evicted", cleared || e.anything());
                    ctx.audit.note("unverified_password_cleared", cleared);
                    ctx.audit.note("unverified_sessions_revoked", e.sessions);
                    ctx.audit.note("unverified_api_keys_revoked", e.api_keys);
                    claimed = Some(u.id);
                    break;
                }
                // The account vanished meanwhile: try again as a new one.
            }
            None => {
                let u = UserRecord {
                    id: random_id(ctx.app.rng.as_ref()),
                    email: email.display.clone(),
                    display_name: None,
                    email_verified: false,
                    password_hash: None,
                    created_at: now,
                    updated_at: now,
                    disabled: false,
                    superadmin: true,
                    session_epoch: 0,
                };
                let batch =
                    superadmin_claim(&u.id).merge(crate::identity::accounts::creation(&u, &email));
                match store.apply(batch).await? {
                    Applied::Committed => {
                        ctx.audit.note("user.created", true);
                        claimed = Some(u.id);
                        break;
                    }
                    Applied::Refused { check: 0, .. } => return Err(taken()),
                    // Someone signed up with the address meanwhile: promote that account.
                    Applied::Refused { .. } => continue,
                }
            }
        }
    }
    let id = claimed.ok_or_else(|| CommandError::from(portcullis_store::StoreError::Busy))?;
    ctx.audit.subject(&id);
    ctx.audit.event("admin.bootstrapped");
    let (flow, link) = issue_link(ctx, &email, false).await?;
    Ok(Bootstrapped {
        user_id: id,
        link,
        expires_in: u64::try_from(flow).unwrap_or(0),
    })
}

/// Rounds of [`bootstrap_admin`] against concurrent sign-ups before it gives up.
const BOOTSTRAP_ATTEMPTS: usize = 8;

/// `ADMIN.BOOTSTRAP {email}` — operator. See [`bootstrap_admin`].
async fn bootstrap(ctx: Ctx, p: BootstrapParams) -> Result<Bootstrapped, CommandError> {
    bootstrap_admin(&ctx, &p.email).await
}
