//! The single-use ticket that carries a sign-in from its first factor to its second: issued
//! with `MFA_REQUIRED` (`mfa_token`), consumed by compare-and-swap by the `MFA.VERIFY` that
//! completes it.

use crate::base::crypto::{random_token, sha256};
use crate::base::error::CommandError;
use crate::infra::records::{sweep_expired, Records, Stored, TableOwner, SWEEP_BATCH};
use crate::Ctx;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{Record, Table};
use portcullis_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

/// Prefix of `mfa_token`s.
pub const MFA_TOKEN_PREFIX: &str = "pmt_";
/// Lifetime of an `mfa_token`, seconds.
pub const MFA_TICKET_S: i64 = 5 * 60;

/// A sign-in whose first factor verified and whose second is awaited.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MfaTicket {
    /// The account.
    pub user_id: String,
    /// `amr` of the first factor.
    pub first_amr: Vec<String>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Consumed by a successful `MFA.VERIFY`.
    pub used: bool,
}

impl Record for MfaTicket {
    const VERSION: u8 = 1;
}

/// Tickets by SHA-256 of the `mfa_token`.
const TICKETS: Records<MfaTicket> = Records::new(Table::MfaTickets);

/// Opens a ticket for the second factor of a sign-in and returns its `mfa_token`.
pub async fn issue_ticket(
    ctx: &Ctx,
    user_id: &str,
    first_amr: &[String],
) -> Result<Secret, CommandError> {
    let token = random_token(ctx.app.rng.as_ref(), MFA_TOKEN_PREFIX);
    let ticket = MfaTicket {
        user_id: user_id.to_owned(),
        first_amr: first_amr.to_vec(),
        expires_at: ctx.now().unix_timestamp() + MFA_TICKET_S,
        used: false,
    };
    TICKETS
        .put(ctx.app.store.as_ref(), &sha256(token.as_bytes()), &ticket)
        .await?;
    Ok(Secret::new(token.as_str()))
}

/// A live ticket and its stored bytes.
pub struct LiveTicket {
    stored: Stored<MfaTicket>,
    key: [u8; 32],
}

impl LiveTicket {
    /// The ticket.
    pub fn ticket(&self) -> &MfaTicket {
        &self.stored.record
    }

    /// SHA-256 of the `mfa_token` (the ticket's store key).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }
}

/// Looks up a ticket: `INVALID_CREDENTIALS` if unknown, `EXPIRED`, `ALREADY_USED`.
pub async fn ticket(ctx: &Ctx, token: &Secret) -> Result<LiveTicket, CommandError> {
    let key = sha256(token.expose().as_bytes());
    let stored = TICKETS
        .read(ctx.app.store.as_ref(), &key)
        .await?
        .ok_or_else(|| {
            CommandError::new(ErrorCode::InvalidCredentials, "the mfa_token is not valid")
        })?;
    let ticket = &stored.record;
    if ticket.used {
        return Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this sign-in has already been completed",
        ));
    }
    if ctx.now().unix_timestamp() >= ticket.expires_at {
        return Err(CommandError::new(
            ErrorCode::Expired,
            "the sign-in took too long; start again",
        ));
    }
    Ok(LiveTicket { stored, key })
}

/// Marks a ticket used (compare-and-swap; the loser of a race gets `ALREADY_USED`).
pub async fn consume_ticket(ctx: &Ctx, live: &LiveTicket) -> Result<(), CommandError> {
    let used = MfaTicket {
        used: true,
        ..live.stored.record.clone()
    };
    if TICKETS
        .swap(
            ctx.app.store.as_ref(),
            &live.key,
            Some(&live.stored),
            Some(&used),
        )
        .await?
    {
        Ok(())
    } else {
        Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this sign-in has already been completed",
        ))
    }
}

/// Tickets expire after five minutes; swept a day later.
pub struct Tables;

#[async_trait::async_trait]
impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::MfaTickets]
    }

    async fn sweep(&self, store: &dyn Store, before: i64) -> Result<u64, StoreError> {
        sweep_expired(store, &TICKETS, before, SWEEP_BATCH, |t| t.expires_at).await
    }
}
