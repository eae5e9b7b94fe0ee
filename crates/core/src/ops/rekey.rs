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

use crate::base::crypto::{MasterKey, Sealer};
use crate::base::random::{OsRandom, SecureRandom};
use crate::infra::node::record_master_key;
use crate::infra::node::{
    load_or_create_master_key, NodeError, MASTER_KEY_FILE, NEXT_KEY_FILE, PREVIOUS_KEY_FILE,
};
use crate::infra::records::Resealer;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_store::{PgOptions, PgStore, SledStore, Store};
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// How many sealed values were re-sealed, per kind, in the order the owners reported them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RekeyReport {
    /// `(kind, count)`, e.g. `("signing keys", 2)`.
    pub resealed: Vec<(&'static str, u64)>,
}

impl RekeyReport {
    /// How many values of `kind` were re-sealed.
    pub fn count(&self, kind: &str) -> u64 {
        self.resealed
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    /// `2 signing keys, 14 TOTP secrets, …`.
    pub fn summary(&self) -> String {
        self.resealed
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
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

/// Rotates the master key of a stopped server's data directory, or, with `database`, of a
/// PostgreSQL deployment (every node stopped; copy the new `master.key` to each before it starts).
pub async fn rotate_master_key(
    dir: &Path,
    database: Option<&PgOptions>,
) -> Result<RekeyReport, NodeError> {
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
    let resealer = Resealer::new(&old, &new, &rng);
    let store: Arc<dyn Store> = match database {
        None => Arc::new(SledStore::open(dir)?),
        Some(options) => Arc::new(PgStore::connect(options).await?),
    };
    let mut report = RekeyReport::default();
    for owner in super::owners() {
        report
            .resealed
            .extend(owner.reseal(store.as_ref(), &resealer).await?);
    }
    if database.is_some() {
        // Every node of the deployment must now hold the new key.
        record_master_key(store.as_ref(), &new_key).await?;
    }
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
