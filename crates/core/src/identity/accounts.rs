//! Accounts: the user record, email normalisation, and the email index.

use crate::base::error::CommandError;
use crate::infra::records::{Records, Stored, TableOwner};
use crate::Ctx;
use portcullis_protocol::ErrorCode;
use portcullis_store::{Applied, Batch, Record, Store, Table};
use serde::{Deserialize, Serialize};

/// Where the bootstrapped superadmin is recorded in `Meta` (its id).
const META_SUPERADMIN: &[u8] = b"superadmin";

/// Longest accepted address, in bytes (RFC 5321 path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME: usize = 128;

/// One account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRecord {
    /// User id (random, 128 bits, hex).
    pub id: String,
    /// Normalised address (local part as given, domain lower-cased).
    pub email: String,
    /// Shown name.
    pub display_name: Option<String>,
    /// Proven by a link or a code.
    pub email_verified: bool,
    /// argon2id PHC string; `None` for a passwordless account.
    pub password_hash: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// A disabled account cannot sign in and its sessions are refused.
    #[serde(default)]
    pub disabled: bool,
    /// May run every administrative command.
    #[serde(default)]
    pub superadmin: bool,
    /// Bumped by every session start, in the same batch. A change planned from the list of the
    /// account's sessions (the first proof's eviction, a disable, a password change) checks the
    /// record, so a session started after the list was read refuses the change, which is then
    /// planned again with that session in it.
    #[serde(default)]
    pub session_epoch: u64,
}

impl Record for UserRecord {
    const VERSION: u8 = 1;
}

/// An address as stored and as indexed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// Trimmed, domain lower-cased: what the user sees.
    pub display: String,
    /// Entirely lower-cased: the index key, so `Alice@x.org` and `alice@x.org` are one account.
    pub key: String,
}

/// Normalises and validates an address: trimmed, domain lower-cased, one `@`, a dotted domain of
/// letters, digits and hyphens, a local part of printable ASCII without spaces, at most 254
/// bytes.
pub fn normalize_email(raw: &str) -> Result<Email, CommandError> {
    let bad = || CommandError::invalid_params("email is not a valid address");
    let s = raw.trim();
    if s.is_empty() || s.len() > MAX_EMAIL_LEN {
        return Err(bad());
    }
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'@' | b'"'
                        | b'('
                        | b')'
                        | b','
                        | b':'
                        | b';'
                        | b'<'
                        | b'>'
                        | b'['
                        | b'\\'
                        | b']'
                )
        })
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let domain = domain.to_ascii_lowercase();
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !local_ok || !domain_ok {
        return Err(bad());
    }
    let display = format!("{local}@{domain}");
    Ok(Email {
        key: display.to_ascii_lowercase(),
        display,
    })
}

/// Validates a display name: at most 128 characters, no control characters; `""` means none.
pub fn check_display_name(name: Option<String>) -> Result<Option<String>, CommandError> {
    match name {
        None => Ok(None),
        Some(n) => {
            let n = n.trim().to_owned();
            if n.chars().count() > MAX_DISPLAY_NAME || n.chars().any(char::is_control) {
                return Err(CommandError::invalid_params(format!(
                    "display_name must be at most {MAX_DISPLAY_NAME} characters without control characters"
                )));
            }
            Ok((!n.is_empty()).then_some(n))
        }
    }
}

/// Accounts by user id (the identity domain's: `evict` plans changes of them).
pub(in crate::identity) const USERS: Records<UserRecord> = Records::new(Table::Users);

/// Loads a user.
pub async fn get_user(store: &dyn Store, id: &str) -> Result<Option<UserRecord>, CommandError> {
    Ok(USERS.get(store, id.as_bytes()).await?)
}

/// Finds a user by address.
pub async fn find_by_email(
    store: &dyn Store,
    email: &Email,
) -> Result<Option<UserRecord>, CommandError> {
    let Some(id) = store.get(Table::Emails, email.key.as_bytes()).await? else {
        return Ok(None);
    };
    let user = get_user(store, &String::from_utf8_lossy(&id)).await?;
    // The index entry counts only if the account still has this address: an entry left behind
    // by an address change or a deletion never leads to the account.
    Ok(user.filter(|u| u.email.eq_ignore_ascii_case(&email.key)))
}

/// Writes a user record.
pub async fn put_user(store: &dyn Store, user: &UserRecord) -> Result<(), CommandError> {
    USERS.put(store, user.id.as_bytes(), user).await?;
    Ok(())
}

/// Changes a user record atomically: `f` edits the current record and says whether to write
/// it; when another writer got there first, `f` runs again on the newer record. Returns the
/// record as it now stands (`None`: no such user). Use it for every change to an existing user,
/// so concurrent changes (a password change, a first email proof) never undo each other.
pub async fn update_user(
    store: &dyn Store,
    id: &str,
    mut f: impl FnMut(&mut UserRecord) -> bool,
) -> Result<Option<UserRecord>, CommandError> {
    USERS
        .update(store, id.as_bytes(), |u| Ok::<_, CommandError>(f(u)))
        .await
}

/// The writes that create `user` under `email`: the address is claimed in the index by an
/// insert-if-absent (check 0) together with the record (check 1), in one batch.
pub fn creation(user: &UserRecord, email: &Email) -> Batch {
    Batch::new()
        .swap(
            Table::Emails,
            email.key.as_bytes(),
            None,
            Some(user.id.clone().into_bytes()),
        )
        .merge(USERS.inserting(user.id.as_bytes(), user))
}

/// Creates a user and claims its address in one atomic batch: of concurrent sign-ups with one
/// address exactly one succeeds, the others get `CONFLICT`; a crash leaves both or neither.
pub async fn create_user(
    store: &dyn Store,
    user: &UserRecord,
    email: &Email,
) -> Result<(), CommandError> {
    match store.apply(creation(user, email)).await? {
        Applied::Committed => Ok(()),
        Applied::Refused { .. } => Err(CommandError::new(
            ErrorCode::Conflict,
            "an account with this email already exists",
        )),
    }
}

/// The swap of the user record `current` to the same record with its session
/// epoch bumped (see [`UserRecord::session_epoch`]): in the batch of every session start and
/// every added factor.
pub fn bump_session_epoch(current: Stored<UserRecord>) -> Batch {
    let mut user = current.record.clone();
    user.session_epoch = user.session_epoch.wrapping_add(1);
    USERS.replacing(user.id.as_bytes(), &current, Some(&user))
}

/// Reads a user record with its raw bytes (for the batch's check).
pub async fn read_user(
    ctx: &Ctx,
    user_id: &str,
) -> Result<Option<Stored<UserRecord>>, CommandError> {
    Ok(USERS
        .read(ctx.app.store.as_ref(), user_id.as_bytes())
        .await?)
}

/// Whether the bootstrapped superadmin exists (its marker is set).
pub async fn superadmin_claimed(store: &dyn Store) -> Result<bool, CommandError> {
    Ok(store.get(Table::Meta, META_SUPERADMIN).await?.is_some())
}

/// The claim of the bootstrap marker for `user_id`, if no one holds it (a batch check).
pub fn superadmin_claim(user_id: &str) -> Batch {
    Batch::new().swap(
        Table::Meta,
        META_SUPERADMIN,
        None,
        Some(user_id.as_bytes().to_vec()),
    )
}

/// Up to `limit` accounts whose lower-cased address starts with `prefix` and comes after
/// `after`, in address order: `(address key, user id)`.
pub async fn by_address(
    store: &dyn Store,
    prefix: &str,
) -> Result<Vec<(String, String)>, CommandError> {
    Ok(store
        .scan_prefix(Table::Emails, prefix.as_bytes(), usize::MAX)
        .await?
        .into_iter()
        .map(|(k, id)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&id).into_owned(),
            )
        })
        .collect())
}

/// Whether an address is attached to an account (its index entry exists).
pub async fn address_taken(store: &dyn Store, email_key: &str) -> Result<bool, CommandError> {
    Ok(store
        .get(Table::Emails, email_key.as_bytes())
        .await?
        .is_some())
}

/// The writes moving `before`'s account to the address `new_key`: the new address claimed by
/// insert-if-absent (check), the old one released if it still names the account.
pub async fn address_move(
    ctx: &Ctx,
    before: &UserRecord,
    new_key: &str,
) -> Result<Batch, CommandError> {
    let old_key = before.email.to_ascii_lowercase();
    Ok(Batch::new()
        .swap(
            Table::Emails,
            new_key.as_bytes(),
            None,
            Some(before.id.clone().into_bytes()),
        )
        .merge(
            crate::infra::records::release_claim(
                ctx.app.store.as_ref(),
                Table::Emails,
                old_key,
                &before.id,
            )
            .await?,
        ))
}

/// The writes removing an account record with its address and (for the bootstrapped
/// administrator) the bootstrap marker, which frees the bootstrap for a new one; `None` when
/// there is no such account.
pub async fn removal(ctx: &Ctx, user: &UserRecord) -> Result<Option<Batch>, CommandError> {
    let store = ctx.app.store.as_ref();
    let Some(current) = USERS.read(store, user.id.as_bytes()).await? else {
        return Ok(None);
    };
    let address = user.email.to_ascii_lowercase();
    let release = |table, key: Vec<u8>| {
        crate::infra::records::release_claim(ctx.app.store.as_ref(), table, key, &user.id)
    };
    Ok(Some(
        USERS
            .replacing(user.id.as_bytes(), &current, None)
            .merge(release(Table::Emails, address.into_bytes()).await?)
            .merge(release(Table::Meta, META_SUPERADMIN.to_vec()).await?),
    ))
}

/// Mails the account owner a security notice (queued; never blocks).
pub async fn notify(
    ctx: &Ctx,
    user_id: &str,
    headline: &str,
    details: &str,
) -> Result<(), CommandError> {
    let Some(user) = get_user(ctx.app.store.as_ref(), user_id).await? else {
        return Ok(());
    };
    crate::infra::notice::notify_address(ctx, &user.email, headline, details).await;
    Ok(())
}

/// Accounts and the address index: nothing sealed, nothing expires.
pub struct Tables;

impl TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Users, Table::Emails]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_lowercased_and_validated() {
        let e = normalize_email("  Alice.Smith+tag@Example.ORG ").unwrap();
        assert_eq!(e.display, "Alice.Smith+tag@example.org");
        assert_eq!(e.key, "alice.smith+tag@example.org");
        for bad in [
            "",
            "plain",
            "@x.org",
            "a@",
            "a@b",
            "a b@x.org",
            "a@x..org",
            "a@-x.org",
            "a@x_y.org",
            ".a@x.org",
            "a..b@x.org",
            "a@x.org\nb",
            "a\u{0}@x.org",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad:?}");
        }
        let long = format!("{}@x.org", "a".repeat(65));
        assert!(normalize_email(&long).is_err());
    }

    #[test]
    fn display_names_are_bounded() {
        assert_eq!(
            check_display_name(Some("  Ada ".into()))
                .unwrap()
                .as_deref(),
            Some("Ada")
        );
        assert_eq!(check_display_name(Some("".into())).unwrap(), None);
        assert!(check_display_name(Some("x".repeat(129))).is_err());
        assert!(check_display_name(Some("a\u{7}".into())).is_err());
    }
}
