//! The ways to prove who you are, one folder each: the authenticator app (`totp`), its recovery
//! codes (`recovery`), passkeys (`passkey`) and the address itself (`email`: links and codes).
//! Each owns its records and the commands that manage it.
//!
//! [`Factor`] is the closed set of what an account can hold besides its address. Every list of
//! factors in the server is a `match` on it here: what a user holds ([`enrolled`]), what answers
//! `MFA.VERIFY` ([`Factor::method`], [`methods`]), and what goes when everything set up on an
//! account must go ([`forget`], [`removal`], [`eviction`]: the first proof of an address,
//! account deletion, bootstrap). A new variant makes the compiler name each place to decide.

pub mod email;
pub mod passkey;
pub mod recovery;
pub mod totp;

use crate::base::error::CommandError;
use crate::identity::accounts::UserRecord;
use crate::identity::apikeys;
use crate::identity::evict::{revocation, Planned};
use crate::Ctx;
use portcullis_protocol::commands::mfa::Method;
use portcullis_store::{Batch, StoreError};

/// RFC 8176 `amr` for a sign-in that used more than one factor.
pub const AMR_MFA: &str = "mfa";

/// Declares [`Factor`] and [`Factor::ALL`] from one list, so no variant can be left out of `ALL`
/// (which `forget_all`, `removal_of_all` and `methods` walk).
macro_rules! factors {
    ($($(#[doc = $doc:expr])* $variant:ident,)*) => {
        /// A way to sign in that an account holds besides its address.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Factor {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Factor {
            /// Every factor, in declaration order: the order `MFA_REQUIRED` lists the second
            /// factors in.
            pub const ALL: &'static [Factor] = &[$(Factor::$variant,)*];
        }
    };
}

factors! {
    /// A password (its hash is on the account record).
    Password,
    /// A confirmed authenticator app.
    Totp,
    /// Unused recovery codes (they stand in for the authenticator app).
    RecoveryCodes,
    /// One or more passkeys.
    Passkeys,
}

impl Factor {
    /// The `MFA.VERIFY` method this factor answers with; `None` for a first factor.
    pub fn method(self) -> Option<Method> {
        match self {
            Factor::Password => None,
            Factor::Totp => Some(Method::Totp),
            Factor::RecoveryCodes => Some(Method::RecoveryCode),
            Factor::Passkeys => Some(Method::Passkey),
        }
    }
}

/// Whether `user` holds `factor`. Recovery codes count only while the authenticator app they
/// stand in for is there.
pub async fn enrolled(ctx: &Ctx, user: &UserRecord, factor: Factor) -> Result<bool, CommandError> {
    let id = user.id.as_str();
    Ok(match factor {
        Factor::Password => user.password_hash.is_some(),
        Factor::Totp => totp::has_totp(ctx, id).await?,
        Factor::RecoveryCodes => {
            totp::has_totp(ctx, id).await? && recovery::recovery_codes_left(ctx, id).await? > 0
        }
        Factor::Passkeys => !passkey::list(ctx, id).await?.is_empty(),
    })
}

/// The second-factor methods `user` can complete a sign-in with, in protocol order.
pub async fn methods(ctx: &Ctx, user: &UserRecord) -> Result<Vec<Method>, CommandError> {
    let mut out = Vec::new();
    for &f in Factor::ALL {
        if let Some(m) = f.method() {
            if enrolled(ctx, user, f).await? {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Clears the part of `factor` held on the account record itself; whether there was one. Call
/// it in the edit of the record whose batch carries [`removal`] of the same factor.
pub fn forget(user: &mut UserRecord, factor: Factor) -> bool {
    match factor {
        Factor::Password => user.password_hash.take().is_some(),
        // Held in their own tables: see `removal`.
        Factor::Totp | Factor::RecoveryCodes | Factor::Passkeys => false,
    }
}

/// The writes removing the part of `factor` held in its own tables, each checked against what
/// was read, and whether there was any.
pub async fn removal(
    ctx: &Ctx,
    user_id: &str,
    factor: Factor,
) -> Result<(Batch, bool), CommandError> {
    match factor {
        // Held on the account record: see `forget`.
        Factor::Password => Ok((Batch::new(), false)),
        Factor::Totp => totp::removal(ctx, user_id).await,
        Factor::RecoveryCodes => recovery::recovery_code_removals(ctx, user_id).await,
        Factor::Passkeys => passkey::removals(ctx, user_id).await,
    }
}

/// Clears every factor held on the account record; whether there was any.
pub fn forget_all(user: &mut UserRecord) -> bool {
    let mut any = false;
    for &f in Factor::ALL {
        any |= forget(user, f);
    }
    any
}

/// The writes removing every factor held in its own tables, and whether there was any.
pub async fn removal_of_all(ctx: &Ctx, user_id: &str) -> Result<(Batch, bool), CommandError> {
    let mut batch = Batch::new();
    let mut any = false;
    for &f in Factor::ALL {
        let (b, held) = removal(ctx, user_id, f).await?;
        batch = batch.merge(b);
        any |= held;
    }
    Ok((batch, any))
}

/// Removes `factors` (held in their own tables) from `user_id` in one batch, planned again
/// from fresh reads if a concurrent writer gets in between; which of them were held.
pub async fn remove(
    ctx: &Ctx,
    user_id: &str,
    factors: &[Factor],
) -> Result<Vec<Factor>, CommandError> {
    for _ in 0..crate::identity::evict::ATTEMPTS {
        let mut batch = Batch::new();
        let mut held = Vec::new();
        for &f in factors {
            let (b, h) = removal(ctx, user_id, f).await?;
            batch = batch.merge(b);
            if h {
                held.push(f);
            }
        }
        if ctx.app.store.apply(batch).await?.committed() {
            return Ok(held);
        }
    }
    Err(StoreError::Busy.into())
}

/// Everything set up on an account before its address was proven, to be removed with the
/// proof: sessions (but `keep`), every factor held in its own table, and API keys. The factors
/// held on the record go in the same change's edit ([`forget_all`]).
pub async fn eviction(
    ctx: &Ctx,
    user_id: &str,
    keep: Option<&str>,
    reason: &str,
) -> Result<Planned, CommandError> {
    let mut planned = revocation(ctx, user_id, keep, reason).await?;
    let (factors, had_factors) = removal_of_all(ctx, user_id).await?;
    let (keys, api_keys) = apikeys::revocations(ctx, user_id).await?;
    planned.batch = planned.batch.merge(factors).merge(keys);
    planned.evicted.factors = had_factors;
    planned.evicted.api_keys = api_keys;
    Ok(planned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_second_factor_answers_a_distinct_method_in_protocol_order() {
        let methods: Vec<Method> = Factor::ALL.iter().filter_map(|f| f.method()).collect();
        assert_eq!(methods, Method::ALL);
    }

    #[test]
    fn forgetting_every_factor_clears_the_password() {
        let mut u = UserRecord {
            id: "u".into(),
            email: "a@example.org".into(),
            display_name: None,
            email_verified: false,
            password_hash: Some("$argon2id$…".into()),
            created_at: 0,
            updated_at: 0,
            disabled: false,
            superadmin: false,
            session_epoch: 0,
        };
        assert!(forget_all(&mut u));
        assert_eq!(u.password_hash, None);
        assert!(!forget_all(&mut u));
    }
}
