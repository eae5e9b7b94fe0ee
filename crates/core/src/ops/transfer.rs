//! Moving a deployment between stores, offline (`portcullis admin export` / `admin import`):
//! sled to PostgreSQL and back. The file and its checks are `portcullis_store::transfer`'s;
//! this module adds what belongs to a node: its data directory's key files and the facts that
//! stay with it.
//!
//! What stays behind: the node id (sled keeps it in `Meta`, PostgreSQL nodes in their `node.id`
//! file), the leases of background work held by the source's nodes, and the key files
//! themselves, which the operator copies. The master-key check value
//! travels in the header (the target's `master.key` must match it) and is recorded in the
//! target's `Meta`; the operator-token hash is an ordinary `Meta` row (the target's
//! `operator.token` must match it). Records are moved sealed, as stored: the file holds no
//! secret in clear that the database does not, and is exactly as sensitive as the database.
//!
//! An import is refused unless the target is empty (no row in any table, no event, never
//! pruned), its data directory holds the source's `master.key` and `operator.token`, and the
//! file reads through whole (version, order, counts, chain, digest) before anything is
//! written. On failure the target is left empty: a sled import is written into a staging
//! directory beside the data and renamed into place only once complete; a PostgreSQL import
//! empties the database it found empty, and, should even that fail, says to drop and recreate
//! the database.

use crate::base::crypto::MasterKey;
use crate::infra::node::{
    load_or_create_master_key, master_key_check, operator_token_hash, read_operator_token,
    record_master_key, NodeError, MASTER_KEY_FILE, META_MASTER_KEY_CHECK, META_NODE_ID,
    META_OPERATOR_TOKEN, NEXT_KEY_FILE, OPERATOR_TOKEN_FILE,
};
use portcullis_store::transfer::{self as file, Checked, ExportInfo, Moved, TransferError};
use portcullis_store::{EventLog, PgOptions, PgStore, SledStore, Store, Table};
use std::fs;
use std::path::{Path, PathBuf};

/// The staging directory of a sled import, inside the target data directory.
const STAGING_DIR: &str = "import.partial";

/// Where a deployment's data lives.
#[derive(Debug, Clone)]
pub enum Location {
    /// The embedded store in this data directory.
    Sled(PathBuf),
    /// A PostgreSQL database; `dir` is a node's data directory (its key files).
    Postgres {
        /// The node's data directory.
        dir: PathBuf,
        /// The database.
        options: PgOptions,
    },
}

impl Location {
    /// The data directory holding the key files.
    pub fn dir(&self) -> &Path {
        match self {
            Location::Sled(d) => d,
            Location::Postgres { dir, .. } => dir,
        }
    }
}

impl From<TransferError> for NodeError {
    fn from(e: TransferError) -> Self {
        match e {
            TransferError::Io { path, source } => NodeError::Io { path, source },
            TransferError::Invalid(m) => NodeError::Invalid(m),
            TransferError::Store(e) => NodeError::Store(e),
        }
    }
}

fn invalid(msg: impl Into<String>) -> NodeError {
    NodeError::Invalid(msg.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The `Meta` keys of leases (`ops::lease`): claims of background work by a node of the source,
/// which the target's first node takes afresh instead of waiting for them to lapse.
const LEASE_PREFIX: &[u8] = b"lease:";

/// Whether a `Meta` row stays with its node (the node id, the leases its nodes held) or travels
/// in the header (the master-key check).
fn stays(table: Table, key: &[u8]) -> bool {
    table == Table::Meta
        && (key == META_NODE_ID || key == META_MASTER_KEY_CHECK || key.starts_with(LEASE_PREFIX))
}

/// The master key of `dir`, which must exist (never created here).
fn existing_master_key(dir: &Path, role: &str) -> Result<MasterKey, NodeError> {
    if dir.join(NEXT_KEY_FILE).exists() {
        return Err(invalid(format!(
            "{}: a master-key rotation was interrupted: finish it with `portcullis admin \
             rotate-master-key` first",
            dir.display()
        )));
    }
    if !dir.join(MASTER_KEY_FILE).exists() {
        return Err(invalid(format!(
            "{}: no {MASTER_KEY_FILE}: {role}",
            dir.display()
        )));
    }
    load_or_create_master_key(dir)
}

/// Exports the stopped deployment at `from` into `out` (which must not exist).
pub async fn export(from: &Location, out: &Path) -> Result<Moved, NodeError> {
    let key = existing_master_key(from.dir(), "export with the data directory that holds it")?;
    let check = master_key_check(&key);
    let info = |source| ExportInfo {
        source,
        created: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        master_key_check: &check,
        stays,
    };
    match from {
        Location::Sled(dir) => {
            if !dir.join("db").exists() {
                return Err(invalid(format!(
                    "{} holds no Portcullis database",
                    dir.display()
                )));
            }
            let store = SledStore::open(dir)?;
            let r = file::export(&store, info("sled"), out).await;
            store.close();
            Ok(r?)
        }
        Location::Postgres { options, .. } => {
            let store = PgStore::connect(options).await?;
            let stored = store.get(Table::Meta, META_MASTER_KEY_CHECK).await;
            let r = match stored {
                Ok(Some(s)) if s != check => Err(invalid(format!(
                    "{}: this master key is not the deployment's: export with a node's data \
                     directory",
                    from.dir().join(MASTER_KEY_FILE).display()
                ))),
                Ok(_) => file::export(&store, info("postgres"), out)
                    .await
                    .map_err(NodeError::from),
                Err(e) => Err(e.into()),
            };
            store.close();
            r
        }
    }
}

/// Imports the file at `input` into the empty deployment at `to`, whose data directory already
/// holds the source's `master.key` and `operator.token`.
pub async fn import(input: &Path, to: &Location) -> Result<Moved, NodeError> {
    let dir = to.dir();
    let key = existing_master_key(
        dir,
        "copy master.key and operator.token from the source's data directory first",
    )?;
    // Everything about the file, before the target is touched.
    let checked = file::check_file(input, stays).await?;
    if hex::encode(master_key_check(&key)) != checked.header.master_key_check {
        return Err(invalid(format!(
            "{}: not the master key of the exported deployment: copy master.key from the \
             source's data directory",
            dir.join(MASTER_KEY_FILE).display()
        )));
    }
    if let Some(stored) = checked.meta.get(META_OPERATOR_TOKEN) {
        let held = read_operator_token(dir).map(|t| operator_token_hash(t.expose()).to_vec());
        if held.as_ref() != Some(stored) {
            return Err(invalid(format!(
                "{}: missing or not the exported deployment's operator token: copy it from the \
                 source's data directory",
                dir.join(OPERATOR_TOKEN_FILE).display()
            )));
        }
    }
    match to {
        Location::Sled(dir) => import_sled(input, dir, &key, &checked).await,
        Location::Postgres { options, .. } => import_pg(input, options, &key, &checked).await,
    }
}

/// Writes the file into `store` (found empty) and records the master-key check value.
async fn write_into<S: Store + EventLog>(
    input: &Path,
    store: &S,
    key: &MasterKey,
    checked: &Checked,
) -> Result<Moved, NodeError> {
    let moved = file::import(input, checked, stays, store).await?;
    record_master_key(store, key).await?;
    store.sync().await?;
    Ok(moved)
}

async fn import_sled(
    input: &Path,
    dir: &Path,
    key: &MasterKey,
    checked: &Checked,
) -> Result<Moved, NodeError> {
    let db = dir.join("db");
    if db.exists() {
        let store = SledStore::open(dir)?;
        let found = file::first_content(&store).await;
        store.close();
        drop(store);
        if let Some(what) = found? {
            return Err(invalid(format!(
                "{} is not empty ({what} has data): import only into a new data directory",
                dir.display()
            )));
        }
        // An empty database (a start stopped at once): the import takes its place.
        fs::remove_dir_all(&db).map_err(io_err(&db))?;
    }
    let staging = dir.join(STAGING_DIR);
    if staging.exists() {
        // Left by an import that was interrupted: never used by a server.
        fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    }
    let written = async {
        let store = SledStore::open(&staging)?;
        let r = write_into(input, &store, key, checked).await;
        store.close();
        r
    }
    .await;
    let moved = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let staged = staging.join("db");
    fs::rename(&staged, &db).map_err(io_err(&db))?;
    file::sync_parent(&db)?;
    fs::remove_dir_all(&staging).map_err(io_err(&staging))?;
    Ok(moved)
}

async fn import_pg(
    input: &Path,
    options: &PgOptions,
    key: &MasterKey,
    checked: &Checked,
) -> Result<Moved, NodeError> {
    let store = PgStore::connect(options).await?;
    let result = match file::first_content(&store).await {
        Err(e) => Err(e.into()),
        Ok(Some(what)) => Err(invalid(format!(
            "the target database is not empty ({what} has data): import only into a new, \
             empty database; if an earlier import was interrupted, drop and recreate the \
             database"
        ))),
        Ok(None) => match write_into(input, &store, key, checked).await {
            Ok(m) => Ok(m),
            Err(e) => match store.clear_after_failed_import().await {
                Ok(()) => Err(invalid(format!(
                    "{e}; the target database was emptied again"
                ))),
                Err(clear) => Err(invalid(format!(
                    "{e}; emptying the target database failed too ({clear}): it holds part of \
                     the import: drop and recreate the database before importing again"
                ))),
            },
        },
    };
    store.close();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::node::Node;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    use portcullis_protocol::commands::log::Checkpoint;
    use portcullis_protocol::{Actor, Event};
    use portcullis_store::verify_events;
    use std::collections::BTreeMap;

    fn draft(n: u64) -> Event {
        Event {
            seq: 0,
            time: "2026-12-04T00:00:00.000Z".into(),
            command: Some(format!("C{n}")),
            outcome: "ok".into(),
            actor: Actor::Anonymous,
            subject: None,
            session: None,
            client: None,
            transport: "internal".into(),
            duration_us: n,
            summary: Default::default(),
            prev: String::new(),
            hash: String::new(),
        }
    }

    /// A stopped sled deployment: a node's files, rows in several tables (more than a page in
    /// one), and a pruned log.
    async fn source(dir: &Path) -> Node {
        let node = Node::open(dir).await.unwrap();
        for i in 0..519u32 {
            node.store
                .put(
                    Table::Users,
                    &i.to_be_bytes(),
                    format!("user {i}").into_bytes(),
                )
                .await
                .unwrap();
        }
        node.store
            .put(Table::Passkeys, b"u/cred", vec![0, 1, 2, 255])
            .await
            .unwrap();
        for n in 1..=9 {
            node.log.append(draft(n)).await.unwrap();
        }
        node.log.prune(4).await.unwrap();
        assert!(crate::ops::lease::hold(
            node.store.as_ref(),
            &node.node_id,
            "sweep",
            0,
            i64::MAX / 2
        )
        .await
        .unwrap());
        node.store.sync().await.unwrap();
        node
    }

    async fn dump(
        dir: &Path,
    ) -> (
        BTreeMap<(String, Vec<u8>), Vec<u8>>,
        Vec<(u64, Vec<u8>)>,
        Option<Checkpoint>,
    ) {
        let store = SledStore::open(dir).unwrap();
        let mut rows = BTreeMap::new();
        for t in Table::ALL {
            for (k, v) in store.scan_range(t, None, usize::MAX).await.unwrap() {
                rows.insert((t.name().to_owned(), k), v);
            }
        }
        let events = store.read_records(1, u64::MAX, usize::MAX).await.unwrap();
        let cp = store.checkpoint();
        store.close();
        (rows, events, cp)
    }

    fn copy_keys(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for f in [MASTER_KEY_FILE, OPERATOR_TOKEN_FILE] {
            fs::copy(from.join(f), to.join(f)).unwrap();
        }
    }

    #[tokio::test]
    async fn a_sled_deployment_moves_byte_for_byte_except_its_node_id() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let node = source(&a).await;
        let (node_id, token_hash) = (node.node_id.clone(), node.operator_token_hash);
        node.store.close();
        drop(node);
        let export_file = tmp.path().join("export.ndjson");
        let out = export(&Location::Sled(a.clone()), &export_file)
            .await
            .unwrap();
        assert_eq!((out.first_seq, out.head_seq, out.events), (5, 9, 5));
        assert!(!file::partial_path(&export_file).exists());
        let mode = fs::metadata(&export_file).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        copy_keys(&a, &b);
        let moved = import(&export_file, &Location::Sled(b.clone()))
            .await
            .unwrap();
        assert_eq!(moved, out);
        assert!(!b.join(STAGING_DIR).exists());

        let (mut rows_a, events_a, cp_a) = dump(&a).await;
        let (mut rows_b, events_b, cp_b) = dump(&b).await;
        assert_eq!(events_a, events_b);
        assert_eq!(events_b.first().map(|e| e.0), Some(5));
        assert_eq!(cp_a, cp_b);
        let node_key = ("meta".to_owned(), META_NODE_ID.to_vec());
        let check_key = ("meta".to_owned(), META_MASTER_KEY_CHECK.to_vec());
        assert!(rows_a.remove(&node_key).is_some());
        let leases: Vec<_> = rows_a
            .keys()
            .filter(|(t, k)| t == "meta" && k.starts_with(LEASE_PREFIX))
            .cloned()
            .collect();
        assert_eq!(leases.len(), 1, "the source holds a lease");
        for k in leases {
            rows_a.remove(&k);
        }
        assert!(
            rows_b.remove(&check_key).is_some(),
            "the check value is recorded"
        );
        assert_eq!(rows_a, rows_b);

        // The target starts as its own node of the same deployment, chained to the same head.
        let moved = Node::open(&b).await.unwrap();
        assert_ne!(moved.node_id, node_id);
        assert_eq!(moved.operator_token_hash, token_hash);
        assert!(!moved.operator_token_created);
        let next = moved.log.append(draft(10)).await.unwrap();
        assert_eq!(next.seq, 10);
        let report = verify_events(moved.log.as_ref(), 1, None).await.unwrap();
        assert!(report.valid, "{report:?}");
    }

    #[tokio::test]
    async fn import_refuses_a_non_empty_target_and_a_damaged_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let node = source(&a).await;
        node.store.close();
        drop(node);
        let export_file = tmp.path().join("export.ndjson");
        export(&Location::Sled(a.clone()), &export_file)
            .await
            .unwrap();
        // An existing file is never overwritten.
        assert!(export(&Location::Sled(a.clone()), &export_file)
            .await
            .is_err());

        // No key files in the target yet.
        let e = import(&export_file, &Location::Sled(b.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("copy master.key"), "{e}");
        // Another deployment's key, then the right key with another operator token.
        let other = tmp.path().join("other");
        Node::open(&other).await.unwrap().store.close();
        copy_keys(&other, &b);
        let e = import(&export_file, &Location::Sled(b.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not the master key"), "{e}");
        fs::copy(a.join(MASTER_KEY_FILE), b.join(MASTER_KEY_FILE)).unwrap();
        let e = import(&export_file, &Location::Sled(b.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("operator token"), "{e}");
        assert!(!b.join("db").exists());
        copy_keys(&a, &b);

        let text = fs::read_to_string(&export_file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let damaged = |name: &str, body: String| {
            let p = tmp.path().join(name);
            fs::write(&p, body).unwrap();
            p
        };
        // One value changed (still valid base64 and JSON): the digest catches it.
        let row = lines
            .iter()
            .position(|l| l.contains("\"table\":\"users\""))
            .unwrap();
        let mut flipped: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let v: serde_json::Value = serde_json::from_str(lines[row]).unwrap();
        let mut value = STANDARD.decode(v["value"].as_str().unwrap()).unwrap();
        value[0] ^= 1;
        flipped[row] =
            serde_json::json!({"table": "users", "key": v["key"], "value": STANDARD.encode(value)})
                .to_string();
        let cases = [
            (damaged("flipped", flipped.join("\n") + "\n"), "digest"),
            (
                damaged("truncated", lines[..lines.len() - 1].join("\n") + "\n"),
                "truncated",
            ),
            (
                damaged("v2", text.replacen("\"version\":1", "\"version\":2", 1)),
                "format version 2",
            ),
            (
                damaged("dropped", {
                    let mut l = lines.clone();
                    l.remove(row);
                    l.join("\n") + "\n"
                }),
                "rows",
            ),
        ];
        for (path, why) in &cases {
            let e = import(path, &Location::Sled(b.clone())).await.unwrap_err();
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert!(!b.join("db").exists(), "{why}: nothing written");
        }

        // A target with data.
        let node = Node::open(&b).await.unwrap();
        node.store.close();
        drop(node);
        // (That start made its own operator token: the source's again.)
        copy_keys(&a, &b);
        let e = import(&export_file, &Location::Sled(b.clone()))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
    }
}
