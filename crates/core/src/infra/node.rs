//! The data directory: the database, the master key and the operator token.

use crate::base::crypto::MasterKey;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_protocol::Secret;
use portcullis_store::{SledStore, Store, StoreError, StoreOptions, Table};
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// File name of the master key inside the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// The file holding the new master key while a rotation is under way (`ops::rekey`); a server
/// refuses to start while it exists.
pub const NEXT_KEY_FILE: &str = "master.key.next";
/// The previous master key, kept after a rotation.
pub const PREVIOUS_KEY_FILE: &str = "master.key.previous";
/// File name of the operator token inside the data directory.
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";
/// Prefix of operator tokens.
pub const OPERATOR_TOKEN_PREFIX: &str = "pco_";

/// `Meta` key of a sled data directory's node id: a fact of one node, never moved to another
/// store (`ops::transfer`).
pub const META_NODE_ID: &[u8] = b"node_id";
/// `Meta` key of the operator token's SHA-256.
pub const META_OPERATOR_TOKEN: &[u8] = b"operator_token_sha256";

/// A failure to prepare the data directory.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file has the wrong content.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::infra::records::ResealError> for NodeError {
    fn from(e: crate::infra::records::ResealError) -> Self {
        match e {
            crate::infra::records::ResealError::Store(e) => NodeError::Store(e),
            crate::infra::records::ResealError::Invalid(m) => NodeError::Invalid(m),
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What was found or created in the data directory.
pub struct Node {
    /// The open database.
    pub store: std::sync::Arc<dyn Store>,
    /// The event log (in the same database).
    pub log: std::sync::Arc<dyn portcullis_store::EventLog>,
    /// Stable id of this data directory.
    pub node_id: String,
    /// Encrypts secrets at rest.
    pub master_key: MasterKey,
    /// SHA-256 of the operator token.
    pub operator_token_hash: [u8; 32],
    /// Set when this start created the operator token file.
    pub operator_token_created: bool,
}

/// Creates a file readable only by its owner and writes `contents` to it. Fails if it exists.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), NodeError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn random<const N: usize>() -> Zeroizing<[u8; N]> {
    let mut b = Zeroizing::new([0u8; N]);
    rand::rngs::OsRng.fill_bytes(b.as_mut());
    b
}

/// Loads the master key, creating it (mode 0600) on first start.
pub fn load_or_create_master_key(dir: &Path) -> Result<MasterKey, NodeError> {
    let path = dir.join(MASTER_KEY_FILE);
    if !path.exists() {
        let key = random::<32>();
        let text = Zeroizing::new(format!("{}\n", URL_SAFE_NO_PAD.encode(key.as_ref())));
        write_private(&path, text.as_bytes())?;
        return Ok(MasterKey::from_zeroizing(key));
    }
    let mode = fs::metadata(&path)
        .map_err(io_err(&path))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "master key file is readable by others; chmod 600 it");
    }
    let text = Zeroizing::new(fs::read_to_string(&path).map_err(io_err(&path))?);
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| NodeError::Invalid(format!("{}: not base64url", path.display())))?,
    );
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| NodeError::Invalid(format!("{}: not 32 bytes", path.display())))?;
    Ok(MasterKey::from_zeroizing(Zeroizing::new(key)))
}

/// Creates the data directory (0700) if needed, and refuses one whose master-key rotation was
/// interrupted (`rerun_flags`: what the rerun needs besides `--data-dir`).
fn prepare_dir(dir: &Path, rerun_flags: &str) -> Result<(), NodeError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    if dir.join(NEXT_KEY_FILE).exists() {
        return Err(NodeError::Invalid(format!(
            "a master-key rotation was interrupted: run `portcullis admin rotate-master-key --data-dir {}{rerun_flags}` again to finish it",
            dir.display()
        )));
    }
    Ok(())
}

/// A new operator token: the prefix and 256 random bits.
fn new_operator_token() -> Zeroizing<String> {
    Zeroizing::new(format!(
        "{OPERATOR_TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(random::<32>().as_ref())
    ))
}

/// Writes the operator token file (0600), replacing a stale one from an older database.
fn write_operator_token(dir: &Path, token: &str) -> Result<(), NodeError> {
    let path = dir.join(OPERATOR_TOKEN_FILE);
    let _ = fs::remove_file(&path);
    write_private(&path, format!("{token}\n").as_bytes())
}

/// SHA-256 of a presented operator token.
pub fn operator_token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Reads the operator token from a data directory, for local CLI use.
pub fn read_operator_token(dir: &Path) -> Option<Secret> {
    fs::read_to_string(dir.join(OPERATOR_TOKEN_FILE))
        .ok()
        .map(|s| Secret::new(s.trim()))
}

impl Node {
    /// Opens the data directory, creating what is missing: the directory (0700), the master key,
    /// the database, the node id and the operator token.
    pub async fn open(dir: &Path) -> Result<Node, NodeError> {
        Self::open_with(dir, StoreOptions::default()).await
    }

    /// Like [`Node::open`], with the store opened with `options` (page cache, fsync).
    pub async fn open_with(dir: &Path, options: StoreOptions) -> Result<Node, NodeError> {
        prepare_dir(dir, "")?;
        let master_key = load_or_create_master_key(dir)?;
        let store = std::sync::Arc::new(SledStore::open_with(dir, options)?);

        let node_id = match store.get(Table::Meta, META_NODE_ID).await? {
            Some(v) => String::from_utf8(v)
                .map_err(|_| NodeError::Invalid("node id is not UTF-8".into()))?,
            None => {
                let id = hex::encode(random::<8>().as_ref());
                store
                    .put(Table::Meta, META_NODE_ID, id.clone().into_bytes())
                    .await?;
                id
            }
        };

        let (operator_token_hash, operator_token_created) =
            match store.get(Table::Meta, META_OPERATOR_TOKEN).await? {
                Some(v) => (
                    v.as_slice()
                        .try_into()
                        .map_err(|_| NodeError::Invalid("operator token hash is corrupt".into()))?,
                    false,
                ),
                None => {
                    let token = new_operator_token();
                    write_operator_token(dir, &token)?;
                    let hash = operator_token_hash(&token);
                    store
                        .put(Table::Meta, META_OPERATOR_TOKEN, hash.to_vec())
                        .await?;
                    (hash, true)
                }
            };
        store.sync().await?;
        Ok(Node {
            log: store.clone(),
            store,
            node_id,
            master_key,
            operator_token_hash,
            operator_token_created,
        })
    }
}

/// This node's id in a shared database: a file in its own data directory (the database is
/// shared by every node, so it cannot hold one node's id).
const NODE_ID_FILE: &str = "node.id";
/// A hash of a value derived from the master key: every node of a deployment must hold the same
/// key, and one with another refuses to start.
pub const META_MASTER_KEY_CHECK: &[u8] = b"master_key_check";

/// The check value of `key` kept under [`META_MASTER_KEY_CHECK`]: a hash of a key derived from
/// it, which tells whether two nodes hold the same key without revealing it.
pub fn master_key_check(key: &MasterKey) -> Vec<u8> {
    let derived = crate::base::crypto::derive_key(key, "master-key-check");
    Sha256::digest(derived.as_ref()).to_vec()
}

/// Records `key` as the deployment's master key in a shared database (after a rotation).
pub async fn record_master_key(store: &dyn Store, key: &MasterKey) -> Result<(), NodeError> {
    store
        .put(Table::Meta, META_MASTER_KEY_CHECK, master_key_check(key))
        .await?;
    Ok(())
}

impl Node {
    /// Opens this node's data directory for a database shared with other nodes (PostgreSQL):
    /// the master key and operator token stay in the directory as with sled, and the database
    /// holds what every node must agree on. The first node on an empty database creates the
    /// key, the token and their check values; a node whose key or token differs from the
    /// deployment's refuses to start, saying to copy the first node's files.
    pub async fn open_shared<S>(dir: &Path, shared: std::sync::Arc<S>) -> Result<Node, NodeError>
    where
        S: Store + portcullis_store::EventLog,
    {
        prepare_dir(dir, " --database-url …")?;
        let store: &dyn Store = shared.as_ref();
        let key_path = dir.join(MASTER_KEY_FILE);
        let token_path = dir.join(OPERATOR_TOKEN_FILE);
        let check = store.get(Table::Meta, META_MASTER_KEY_CHECK).await?;
        if check.is_some() && !key_path.exists() {
            return Err(NodeError::Invalid(format!(
                "the database belongs to a deployment whose master key this node lacks: copy \
                 master.key and operator.token from the first node into {}",
                dir.display()
            )));
        }
        let master_key = load_or_create_master_key(dir)?;
        let mine = master_key_check(&master_key);
        let agreed = match store
            .compare_and_swap(Table::Meta, META_MASTER_KEY_CHECK, None, Some(mine.clone()))
            .await?
        {
            portcullis_store::Cas::Swapped => true,
            portcullis_store::Cas::Conflict { current } => current.as_deref() == Some(&mine[..]),
        };
        if !agreed {
            return Err(NodeError::Invalid(format!(
                "{}: this master key is not the deployment's: copy master.key from the first node",
                key_path.display()
            )));
        }
        let node_id = match fs::read_to_string(dir.join(NODE_ID_FILE)) {
            Ok(id) => id.trim().to_owned(),
            Err(_) => {
                let id = hex::encode(random::<8>().as_ref());
                write_private(&dir.join(NODE_ID_FILE), format!("{id}\n").as_bytes())?;
                id
            }
        };
        let (operator_token_hash, operator_token_created) = match store
            .get(Table::Meta, META_OPERATOR_TOKEN)
            .await?
        {
            Some(stored) => {
                let held = read_operator_token(dir).map(|t| operator_token_hash(t.expose()));
                if held.map(|h| h.to_vec()) != Some(stored.clone()) {
                    return Err(NodeError::Invalid(format!(
                        "{}: missing or not the deployment's operator token: copy it from \
                             the first node",
                        token_path.display()
                    )));
                }
                let hash = stored
                    .as_slice()
                    .try_into()
                    .map_err(|_| NodeError::Invalid("operator token hash is corrupt".into()))?;
                (hash, false)
            }
            None => {
                let token = new_operator_token();
                let hash = operator_token_hash(&token);
                let won = store
                    .compare_and_swap(Table::Meta, META_OPERATOR_TOKEN, None, Some(hash.to_vec()))
                    .await?
                    == portcullis_store::Cas::Swapped;
                if !won {
                    return Err(NodeError::Invalid(format!(
                        "another node created the deployment's operator token meanwhile: \
                             copy {} from it",
                        token_path.display()
                    )));
                }
                write_operator_token(dir, &token)?;
                (hash, true)
            }
        };
        Ok(Node {
            store: shared.clone(),
            log: shared,
            node_id,
            master_key,
            operator_token_hash,
            operator_token_created,
        })
    }
}

/// Node-wide facts (node id, operator-token hash, key material of other domains under their own
/// `Meta` keys) and the store's scratch table (`Challenges`, used by the bench's anchor).
pub struct Tables;

impl crate::infra::records::TableOwner for Tables {
    fn tables(&self) -> &'static [Table] {
        &[Table::Meta, Table::Challenges]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_start_creates_private_files_and_later_starts_reuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("data");
        let (id, key, hash) = {
            let n = Node::open(&d).await.unwrap();
            assert!(n.operator_token_created);
            (
                n.node_id.clone(),
                *n.master_key.expose(),
                n.operator_token_hash,
            )
        };
        for f in [MASTER_KEY_FILE, OPERATOR_TOKEN_FILE] {
            let mode = fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        let token = read_operator_token(&d).unwrap();
        assert!(token.expose().starts_with(OPERATOR_TOKEN_PREFIX));
        assert_eq!(operator_token_hash(token.expose()), hash);
        let n = Node::open(&d).await.unwrap();
        assert!(!n.operator_token_created);
        assert_eq!(
            (
                n.node_id.clone(),
                *n.master_key.expose(),
                n.operator_token_hash
            ),
            (id, key, hash)
        );
        assert_eq!(format!("{:?}", n.master_key), "MasterKey(<redacted>)");
    }
}
