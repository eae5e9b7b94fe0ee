//! Master-key rotation (offline): every secret sealed at rest is opened with the old key and
//! sealed again with a new one.
//!
//! Crash-safe order: the new key is written to `master.key.next` first; records are re-sealed
//! (each opens with the old key, or is skipped when it already opens with the new one, so a
//! rerun after a crash finishes the job); the database is flushed; only then does
//! `master.key.next` replace `master.key`, the old key staying beside it as
//! `master.key.previous` until the operator has checked the server starts. A server refuses to
//! start while `master.key.next` exists.
//!
//! Keys derived from the master key change too: email codes in flight stop verifying (ask for a
//! new one), and decoy passkey ids change. The recovery-code key is not derived but stored
//! sealed, and re-sealed here, so recovery codes keep working.

use crate::base::crypto::MasterKey;
use crate::base::crypto::Sealer;
use crate::base::random::{OsRandom, SecureRandom};
use crate::factors::recovery::{META_RECOVERY_KEY, RECOVERY_KEY_AAD};
use crate::factors::totp::{aad_confirmed, aad_enrolment, PendingEnrolment, TotpRecord};
use crate::identity::sessions::{successor_aad, RefreshRecord, RefreshState};
use crate::identity::tokens::{aad, KeyRecord};
use crate::infra::mail::{queue_aad, QueuedMail};
use crate::infra::node::{
    load_or_create_master_key, NodeError, MASTER_KEY_FILE, NEXT_KEY_FILE, PREVIOUS_KEY_FILE,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_store::{decode_record, encode_record, SledStore, Store, StoreError, Table};
use serde::{de::DeserializeOwned, Serialize};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use zeroize::Zeroizing;

/// How many sealed values were re-sealed, per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// Signing keys.
    pub signing_keys: u64,
    /// TOTP secrets (confirmed and pending).
    pub totp_secrets: u64,
    /// Refresh successor pairs kept for the grace window.
    pub refresh_successors: u64,
    /// Messages waiting in the mail queue.
    pub queued_mails: u64,
}

/// Re-seals `sealed` (base64url) under the new key in place; false when it already was.
fn reseal(
    old: &Sealer,
    new: &Sealer,
    rng: &dyn SecureRandom,
    aad: &[u8],
    sealed: &mut String,
) -> Result<bool, NodeError> {
    let raw = URL_SAFE_NO_PAD
        .decode(sealed.as_str())
        .map_err(|_| NodeError::Invalid("a sealed value is not base64url".into()))?;
    match old.open(aad, &raw) {
        Ok(plain) => {
            *sealed = URL_SAFE_NO_PAD.encode(new.seal(rng, aad, &plain));
            Ok(true)
        }
        // Already under the new key: a rerun after an interrupted rotation.
        Err(_) if new.open(aad, &raw).is_ok() => Ok(false),
        Err(_) => Err(NodeError::Invalid(
            "a sealed value opens with neither the old nor the new master key".into(),
        )),
    }
}

async fn each<R: Serialize + DeserializeOwned + portcullis_store::Record>(
    store: &SledStore,
    table: Table,
    mut f: impl FnMut(&[u8], &mut R) -> Result<bool, NodeError>,
) -> Result<u64, NodeError> {
    let mut n = 0;
    for (k, v) in store.scan_prefix(table, b"", usize::MAX).await? {
        let mut rec: R = decode_record(&v).map_err(StoreError::from)?;
        if f(&k, &mut rec)? {
            store.put(table, &k, encode_record(&rec)).await?;
            n += 1;
        }
    }
    Ok(n)
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), NodeError> {
    let io = |source| NodeError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(contents).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Rotates the master key of a stopped server's data directory.
pub async fn rotate_master_key(dir: &Path) -> Result<RekeyReport, NodeError> {
    let rng = OsRandom;
    let next_path = dir.join(NEXT_KEY_FILE);
    let current = dir.join(MASTER_KEY_FILE);
    if !current.exists() && next_path.exists() && dir.join(PREVIOUS_KEY_FILE).exists() {
        // Interrupted between the two renames: everything is re-sealed already.
        fs::rename(&next_path, &current).map_err(|source| NodeError::Io {
            path: next_path.clone(),
            source,
        })?;
        return Ok(RekeyReport::default());
    }
    let old_key = load_or_create_master_key(dir)?;
    let new_key = if next_path.exists() {
        // Finishing an interrupted rotation.
        let text =
            Zeroizing::new(
                fs::read_to_string(&next_path).map_err(|source| NodeError::Io {
                    path: next_path.clone(),
                    source,
                })?,
            );
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(text.trim())
                .map_err(|_| NodeError::Invalid("master.key.next is not base64url".into()))?,
        );
        MasterKey::from_bytes(
            bytes
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::Invalid("master.key.next is not 32 bytes".into()))?,
        )
    } else {
        let mut b = [0u8; 32];
        rng.fill(&mut b);
        let k = MasterKey::from_bytes(b);
        let text = Zeroizing::new(format!("{}\n", URL_SAFE_NO_PAD.encode(k.expose())));
        write_private(&next_path, text.as_bytes())?;
        k
    };
    let (old, new) = (Sealer::new(&old_key), Sealer::new(&new_key));
    let store = SledStore::open(dir)?;
    let signing_keys = each::<KeyRecord>(&store, Table::SigningKeys, |_, r| {
        reseal(&old, &new, &rng, &aad(&r.kid), &mut r.sealed_private_key)
    })
    .await?;
    let mut totp_secrets = each::<TotpRecord>(&store, Table::Totp, |k, r| {
        let user_id = String::from_utf8_lossy(k).into_owned();
        reseal(
            &old,
            &new,
            &rng,
            &aad_confirmed(&user_id),
            &mut r.sealed_secret,
        )
    })
    .await?;
    totp_secrets += each::<PendingEnrolment>(&store, Table::TotpEnrollments, |k, r| {
        let id = String::from_utf8_lossy(k).into_owned();
        reseal(&old, &new, &rng, &aad_enrolment(&id), &mut r.sealed_secret)
    })
    .await?;
    let refresh_successors = each::<RefreshRecord>(&store, Table::RefreshTokens, |k, r| {
        let RefreshState::Rotated { successor, .. } = &mut r.state else {
            return Ok(false);
        };
        let hash: [u8; 32] = k
            .try_into()
            .map_err(|_| NodeError::Invalid("refresh key".into()))?;
        reseal(&old, &new, &rng, &successor_aad(&hash), successor)
    })
    .await?;
    let queued_mails = each::<QueuedMail>(&store, Table::MailQueue, |k, r| {
        reseal(&old, &new, &rng, &queue_aad(k), &mut r.sealed)
    })
    .await?;
    // The recovery-code key: sealed, not derived, so the stored codes stay valid.
    if let Some(raw) = store.get(Table::Meta, META_RECOVERY_KEY).await? {
        let mut sealed = String::from_utf8(raw)
            .map_err(|_| NodeError::Invalid("the recovery-code key is corrupt".into()))?;
        if reseal(&old, &new, &rng, RECOVERY_KEY_AAD, &mut sealed)? {
            store
                .put(Table::Meta, META_RECOVERY_KEY, sealed.into_bytes())
                .await?;
        }
    }
    let report = RekeyReport {
        signing_keys,
        totp_secrets,
        refresh_successors,
        queued_mails,
    };
    store.sync().await?;
    store.close();
    drop(store);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| NodeError::Io { path, source }
    };
    fs::rename(&current, dir.join(PREVIOUS_KEY_FILE)).map_err(io(&current))?;
    fs::rename(&next_path, &current).map_err(io(&next_path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(report)
}
