//! Typed record access: the one place records are encoded and decoded, and the one place the
//! compare-and-swap retry lives. Each domain declares a [`Records`] for every record kind it
//! owns (visible to that domain only) and offers functions over it; nothing outside the domain
//! touches those records.
//!
//! Work that spans every domain — re-sealing secrets under a new master key, sweeping expired
//! single-use items — goes through the small [`TableOwner`] trait, so `ops` asks each domain instead
//! of importing its record types.

use crate::base::crypto::Sealer;
use crate::base::random::SecureRandom;
use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use portcullis_store::{
    decode_record, encode_record, Batch, Cas, Consumed, Expect, Record, Store, StoreError, Table,
};
use std::marker::PhantomData;

/// Records examined per table per sweep.
pub const SWEEP_BATCH: usize = 10_000;

/// Rounds of an edit against concurrent writers before it gives up ([`StoreError::Busy`]).
const EDIT_ATTEMPTS: usize = 32;

/// The records of one kind `R`, in one table.
pub struct Records<R> {
    table: Table,
    kind: PhantomData<fn() -> R>,
}

/// A record as read, with the bytes a compare-and-swap or a batch checks against.
#[derive(Debug, Clone)]
pub struct Stored<R> {
    /// The record.
    pub record: R,
    raw: Vec<u8>,
}

impl<R> Stored<R> {
    /// The stored bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

/// What an edit decided: write the edited record back, or leave the stored one; either way,
/// answer `T` once it holds.
#[derive(Debug)]
pub enum Edit<T> {
    /// Write the edited record, then answer.
    Write(T),
    /// Write nothing, answer.
    Keep(T),
    /// Remove the record (nothing left worth keeping), then answer.
    Remove(T),
}

impl<R: Record + Clone> Records<R> {
    /// The records of kind `R` in `table`.
    pub const fn new(table: Table) -> Self {
        Records {
            table,
            kind: PhantomData,
        }
    }

    /// The table.
    pub const fn table(&self) -> Table {
        self.table
    }

    /// Decodes stored bytes of this kind (read by a raw scan).
    pub fn decode(&self, raw: Vec<u8>) -> Result<Stored<R>, StoreError> {
        let record = decode_record(&raw)?;
        Ok(Stored { record, raw })
    }

    /// The record at `key`.
    pub async fn get(&self, store: &dyn Store, key: &[u8]) -> Result<Option<R>, StoreError> {
        Ok(self.read(store, key).await?.map(|s| s.record))
    }

    /// The record at `key` with its stored bytes.
    pub async fn read(
        &self,
        store: &dyn Store,
        key: &[u8],
    ) -> Result<Option<Stored<R>>, StoreError> {
        store
            .get(self.table, key)
            .await?
            .map(|raw| self.decode(raw))
            .transpose()
    }

    /// Writes `record` at `key`, replacing whatever was there.
    pub async fn put(&self, store: &dyn Store, key: &[u8], record: &R) -> Result<(), StoreError> {
        store.put(self.table, key, encode_record(record)).await
    }

    /// Replaces `old` with `new` (`None` removes it) if `old` is still what is stored; whether
    /// it was.
    pub async fn swap(
        &self,
        store: &dyn Store,
        key: &[u8],
        old: Option<&Stored<R>>,
        new: Option<&R>,
    ) -> Result<bool, StoreError> {
        let cas = store
            .compare_and_swap(
                self.table,
                key,
                old.map(Stored::raw),
                new.map(encode_record),
            )
            .await?;
        Ok(cas == Cas::Swapped)
    }

    /// Replaces `old` with `new` if `old` is still what is stored: the new record as stored, or
    /// `None` when someone else changed it first.
    pub async fn advance(
        &self,
        store: &dyn Store,
        key: &[u8],
        old: &Stored<R>,
        new: R,
    ) -> Result<Option<Stored<R>>, StoreError> {
        let raw = encode_record(&new);
        let cas = store
            .compare_and_swap(self.table, key, Some(old.raw()), Some(raw.clone()))
            .await?;
        Ok((cas == Cas::Swapped).then_some(Stored { record: new, raw }))
    }

    /// Consumes the single-use record `old` (removed if still stored; durable when won).
    pub async fn consume(
        &self,
        store: &dyn Store,
        key: &[u8],
        old: &Stored<R>,
    ) -> Result<Consumed, StoreError> {
        store.consume(self.table, key, old.raw()).await
    }

    /// Edits the record at `key` atomically: `f` sees the current record and decides
    /// ([`Edit`]); when another writer got there first, `f` runs again on the newer record, so
    /// concurrent edits never undo each other. `None` when there is no record.
    pub async fn edit<T, E: From<StoreError>>(
        &self,
        store: &dyn Store,
        key: &[u8],
        f: impl FnMut(&mut R) -> Result<Edit<T>, E>,
    ) -> Result<Option<T>, E> {
        self.edit_from(store, key, || None, f).await
    }

    /// [`Records::edit`] where a missing record is edited from `R::default()` and inserted.
    pub async fn edit_or_default<T, E: From<StoreError>>(
        &self,
        store: &dyn Store,
        key: &[u8],
        f: impl FnMut(&mut R) -> Result<Edit<T>, E>,
    ) -> Result<T, E>
    where
        R: Default,
    {
        let answer = self.edit_from(store, key, || Some(R::default()), f).await?;
        answer.ok_or_else(|| StoreError::Busy.into())
    }

    /// The one compare-and-swap retry loop: `absent` is what a missing record is edited from
    /// (`None`: nothing to edit).
    async fn edit_from<T, E: From<StoreError>>(
        &self,
        store: &dyn Store,
        key: &[u8],
        absent: impl Fn() -> Option<R>,
        mut f: impl FnMut(&mut R) -> Result<Edit<T>, E>,
    ) -> Result<Option<T>, E> {
        for _ in 0..EDIT_ATTEMPTS {
            let old = self.read(store, key).await?;
            let Some(mut record) = old.as_ref().map(|s| s.record.clone()).or_else(&absent) else {
                return Ok(None);
            };
            match f(&mut record)? {
                Edit::Keep(answer) => return Ok(Some(answer)),
                Edit::Write(answer) => {
                    if self.swap(store, key, old.as_ref(), Some(&record)).await? {
                        return Ok(Some(answer));
                    }
                }
                Edit::Remove(answer) => {
                    if old.is_none() || self.swap(store, key, old.as_ref(), None).await? {
                        return Ok(Some(answer));
                    }
                }
            }
        }
        Err(StoreError::Busy.into())
    }

    /// [`Records::edit`] answering the record as it now stands: `f` says whether to write.
    pub async fn update<E: From<StoreError>>(
        &self,
        store: &dyn Store,
        key: &[u8],
        mut f: impl FnMut(&mut R) -> Result<bool, E>,
    ) -> Result<Option<R>, E> {
        self.edit(store, key, |r| {
            let write = f(r)?;
            let now = r.clone();
            Ok(if write {
                Edit::Write(now)
            } else {
                Edit::Keep(now)
            })
        })
        .await
    }

    /// Up to `limit` records whose key starts with `prefix`, in key order, with their keys.
    pub async fn scan(
        &self,
        store: &dyn Store,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Stored<R>)>, StoreError> {
        store
            .scan_prefix(self.table, prefix, limit)
            .await?
            .into_iter()
            .map(|(k, raw)| Ok((k, self.decode(raw)?)))
            .collect()
    }

    /// A batch that writes `record` at `key` if nothing is there.
    pub fn inserting(&self, key: impl Into<Vec<u8>>, record: &R) -> Batch {
        Batch::new().swap(self.table, key, None, Some(encode_record(record)))
    }

    /// A batch that replaces `old` with `new` (`None` removes it) if `old` is still stored.
    pub fn replacing(&self, key: impl Into<Vec<u8>>, old: &Stored<R>, new: Option<&R>) -> Batch {
        Batch::new().swap(self.table, key, Some(old.raw()), new.map(encode_record))
    }

    /// A batch that writes `record` at `key` whatever is there.
    pub fn writing(&self, key: impl Into<Vec<u8>>, record: &R) -> Batch {
        Batch::new().put(self.table, key, encode_record(record))
    }

    /// A batch check that `old` is still what is stored at `key`.
    pub fn unchanged(&self, key: impl Into<Vec<u8>>, old: &Stored<R>) -> Batch {
        Batch::new().check(self.table, key, Expect::Value(old.raw.clone()))
    }
}

/// The removal of `key` from `table` (an index entry or a marker naming its owner) if it still
/// names `owner`, checked in the batch; nothing if it names someone else or is gone.
pub async fn release_claim(
    store: &dyn Store,
    table: Table,
    key: impl Into<Vec<u8>>,
    owner: &str,
) -> Result<Batch, StoreError> {
    let key = key.into();
    let names_owner = store.get(table, &key).await?.as_deref() == Some(owner.as_bytes());
    Ok(if names_owner {
        Batch::new().swap(table, key, Some(owner.as_bytes()), None)
    } else {
        Batch::new()
    })
}

/// Why a value could not be re-sealed.
#[derive(Debug, thiserror::Error)]
pub enum ResealError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed value is malformed or opens with neither key.
    #[error("{0}")]
    Invalid(String),
}

/// Re-seals values sealed under the old master key with the new one (`ops::rekey`).
pub struct Resealer<'a> {
    old: &'a Sealer,
    new: &'a Sealer,
    rng: &'a dyn SecureRandom,
}

impl<'a> Resealer<'a> {
    /// From the old key's sealer to the new one's.
    pub fn new(old: &'a Sealer, new: &'a Sealer, rng: &'a dyn SecureRandom) -> Self {
        Resealer { old, new, rng }
    }

    /// Re-seals `sealed` (base64url) under the new key in place; false when it already was (a
    /// rerun after an interrupted rotation).
    pub fn reseal(&self, aad: &[u8], sealed: &mut String) -> Result<bool, ResealError> {
        let raw = URL_SAFE_NO_PAD
            .decode(sealed.as_str())
            .map_err(|_| ResealError::Invalid("a sealed value is not base64url".into()))?;
        match self.old.open(aad, &raw) {
            Ok(plain) => {
                *sealed = URL_SAFE_NO_PAD.encode(self.new.seal(self.rng, aad, &plain));
                Ok(true)
            }
            Err(_) if self.new.open(aad, &raw).is_ok() => Ok(false),
            Err(_) => Err(ResealError::Invalid(
                "a sealed value opens with neither the old nor the new master key".into(),
            )),
        }
    }

    /// Re-seals the sealed fields of every record of `records`: `f` re-seals one record (with
    /// [`Resealer::reseal`]) and says whether it changed; changed records are written back.
    /// How many changed.
    pub async fn each<R: Record + Clone>(
        &self,
        store: &dyn Store,
        records: &Records<R>,
        mut f: impl FnMut(&Self, &[u8], &mut R) -> Result<bool, ResealError>,
    ) -> Result<u64, ResealError> {
        let mut n = 0;
        for (k, stored) in records.scan(store, b"", usize::MAX).await? {
            let mut r = stored.record;
            if f(self, &k, &mut r)? {
                records.put(store, &k, &r).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A domain's part in work that spans every domain. Each domain that owns tables has one
/// owner; `ops::owners` lists them all, and a test checks that every table has exactly one.
#[async_trait]
pub trait TableOwner: Send + Sync {
    /// The tables whose records this domain owns.
    fn tables(&self) -> &'static [Table];

    /// Re-seals every sealed field of this domain's records under the new master key: per kind
    /// (as the rotation reports it), how many values. Default: nothing sealed.
    async fn reseal(
        &self,
        _store: &dyn Store,
        _resealer: &Resealer<'_>,
    ) -> Result<Vec<(&'static str, u64)>, ResealError> {
        Ok(Vec::new())
    }

    /// Removes single-use items that expired before `before` (Unix seconds): how many.
    /// Default: nothing expires.
    async fn sweep(&self, _store: &dyn Store, _before: i64) -> Result<u64, StoreError> {
        Ok(0)
    }
}

/// Removes, from up to `limit` records of `records`, those `expires` says expired before
/// `before`, each only if unchanged since read; how many. Undecodable records are left alone.
pub async fn sweep_expired<R: Record + Clone>(
    store: &dyn Store,
    records: &Records<R>,
    before: i64,
    limit: usize,
    expires: impl Fn(&R) -> i64,
) -> Result<u64, StoreError> {
    let mut removed = 0;
    for (k, raw) in store.scan_prefix(records.table(), b"", limit).await? {
        let Ok(stored) = records.decode(raw) else {
            continue;
        };
        if expires(&stored.record) < before && records.swap(store, &k, Some(&stored), None).await? {
            removed += 1;
        }
    }
    Ok(removed)
}
