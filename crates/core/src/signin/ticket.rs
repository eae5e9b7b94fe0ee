//! The single-use ticket that carries a sign-in from its first factor to its second: issued
//! with `MFA_REQUIRED` (`mfa_token`), consumed by compare-and-swap by the `MFA.VERIFY` that
//! completes it.

use crate::base::crypto::{random_token, sha256};
use crate::base::error::CommandError;
use crate::Ctx;
use portcullis_protocol::{ErrorCode, Secret};
use portcullis_store::{decode_record, encode_record, Cas, Record, StoreError, Table};
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

fn store_err(e: portcullis_store::RecordError) -> CommandError {
    CommandError::from(StoreError::from(e))
}

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
    ctx.app
        .store
        .put(
            Table::MfaTickets,
            &sha256(token.as_bytes()),
            encode_record(&ticket),
        )
        .await?;
    Ok(Secret::new(token.as_str()))
}

/// A live ticket and its stored bytes.
pub struct LiveTicket {
    /// The ticket.
    pub ticket: MfaTicket,
    raw: Vec<u8>,
    key: [u8; 32],
}

impl LiveTicket {
    /// SHA-256 of the `mfa_token` (the ticket's store key).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }
}

/// Looks up a ticket: `INVALID_CREDENTIALS` if unknown, `EXPIRED`, `ALREADY_USED`.
pub async fn ticket(ctx: &Ctx, token: &Secret) -> Result<LiveTicket, CommandError> {
    let key = sha256(token.expose().as_bytes());
    let raw = ctx
        .app
        .store
        .get(Table::MfaTickets, &key)
        .await?
        .ok_or_else(|| {
            CommandError::new(ErrorCode::InvalidCredentials, "the mfa_token is not valid")
        })?;
    let ticket: MfaTicket = decode_record(&raw).map_err(store_err)?;
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
    Ok(LiveTicket { ticket, raw, key })
}

/// Marks a ticket used (compare-and-swap; the loser of a race gets `ALREADY_USED`).
pub async fn consume_ticket(ctx: &Ctx, live: &LiveTicket) -> Result<(), CommandError> {
    let used = MfaTicket {
        used: true,
        ..live.ticket.clone()
    };
    match ctx
        .app
        .store
        .compare_and_swap(
            Table::MfaTickets,
            &live.key,
            Some(&live.raw),
            Some(encode_record(&used)),
        )
        .await?
    {
        Cas::Swapped => Ok(()),
        Cas::Conflict { .. } => Err(CommandError::new(
            ErrorCode::AlreadyUsed,
            "this sign-in has already been completed",
        )),
    }
}
