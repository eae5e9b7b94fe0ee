//! The export file that moves a deployment between stores (`portcullis admin export` /
//! `admin import`; the key files and node-local facts are the core's business, in
//! `portcullis_core::ops::transfer`).
//!
//! # The file
//!
//! NDJSON, one object per line, written to `<out>.partial` (mode 0600), synced, and renamed
//! into place only once complete:
//!
//! 1. a header: `{"format": "portcullis-export", "version": 1, "source": "sled" | "postgres",
//!    "created": RFC 3339, "tables": {name: rows, …} (every table), "log": {"first_seq",
//!    "head_seq", "head_hash", "events", "checkpoint": null | {"seq", "hash"}},
//!    "master_key_check": hex}`;
//! 2. every row, table by table in [`Table::ALL`] order and by key within a table:
//!    `{"table": name, "key": base64, "value": base64}`, the stored bytes unchanged;
//! 3. every event the log keeps, by seq: `{"seq": n, "record": base64}`, the stored record (the
//!    version byte and the exact JSON that was hashed);
//! 4. a trailer: `{"end": {"rows": n, "events": n, "sha256": hex}}`, the SHA-256 of every byte
//!    before it.
//!
//! Reading checks everything a write could trip on — the format and version, the counts of
//! every table and of the log, key order, the chain of every event from the checkpoint (or the
//! genesis) to the head, the digest, that nothing follows the trailer — so an importer reads
//! the file once to check it before it writes anything, and once more to write.

use crate::{
    decode_record, verify_events, Batch, ChainVerifier, EventLog, Expect, LogEntry, Store,
    StoreError, Table,
};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_protocol::commands::log::Checkpoint;
use portcullis_protocol::GENESIS_HASH;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The `format` of the header line.
pub const FORMAT: &str = "portcullis-export";
/// The version of the file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Rows or events read from the source (and written to the target) at a time.
const PAGE: usize = 512;
/// The longest line a reader accepts (a row's value is far smaller).
const MAX_LINE: u64 = 64 * 1024 * 1024;

/// A failure to export or import. Messages name files, lines, tables and seqs, never a key or
/// value.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// File system trouble.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file, the source or the target is not as it must be.
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn invalid(msg: impl Into<String>) -> TransferError {
    TransferError::Invalid(msg.into())
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TransferError + '_ {
    move |source| TransferError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The file's first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] when written by this build.
    pub version: u32,
    /// `sled` or `postgres`.
    pub source: String,
    /// When the export began (RFC 3339, UTC).
    pub created: String,
    /// Rows per table, every table named.
    pub tables: BTreeMap<String, u64>,
    /// The event log's range.
    pub log: LogRange,
    /// Hex of the deployment's master-key check value, which the target's key must match.
    pub master_key_check: String,
}

/// The event log as exported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogRange {
    /// Seq of the first event in the file (1 unless the log was pruned).
    pub first_seq: u64,
    /// Seq of the newest event (0 for an empty log).
    pub head_seq: u64,
    /// Hash of the newest event (the genesis hash for an empty log).
    pub head_hash: String,
    /// Events in the file.
    pub events: u64,
    /// The last pruned event, if the log was pruned.
    pub checkpoint: Option<Checkpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RowLine {
    table: String,
    key: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    seq: u64,
    record: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct End {
    rows: u64,
    events: u64,
    sha256: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndLine {
    end: End,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Line {
    Row(RowLine),
    Event(EventLine),
    End(EndLine),
}

/// What an export wrote or an import read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// Table rows.
    pub rows: u64,
    /// Events.
    pub events: u64,
    /// The log's first seq (1 unless it was pruned).
    pub first_seq: u64,
    /// The log's newest seq.
    pub head_seq: u64,
}

/// Which rows stay behind: `(table, key)` → true for a row of one node, or one that travels
/// another way (in the header).
pub type Stays = fn(Table, &[u8]) -> bool;

/// Every row of `table` that moves, page by page.
async fn for_each_row<F>(
    store: &dyn Store,
    table: Table,
    stays: Stays,
    mut f: F,
) -> Result<(), TransferError>
where
    F: FnMut(Vec<u8>, Vec<u8>) -> Result<(), TransferError>,
{
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan_range(table, after.as_deref(), PAGE).await?;
        let full = page.len() == PAGE;
        after = page.last().map(|(k, _)| k.clone());
        for (k, v) in page {
            if !stays(table, &k) {
                f(k, v)?;
            }
        }
        if !full {
            return Ok(());
        }
    }
}

/// A writer that hashes every line it writes.
struct Out {
    file: BufWriter<fs::File>,
    path: PathBuf,
    digest: Sha256,
}

impl Out {
    fn line<T: Serialize>(&mut self, value: &T) -> Result<(), TransferError> {
        let mut bytes = serde_json::to_vec(value).map_err(|e| invalid(e.to_string()))?;
        bytes.push(b'\n');
        self.digest.update(&bytes);
        self.file.write_all(&bytes).map_err(io_err(&self.path))
    }
}

/// Where an export is written until it is complete.
pub fn partial_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    out.with_file_name(name)
}

/// Syncs the directory holding `path`, so that a rename into it is durable.
pub fn sync_parent(path: &Path) -> Result<(), TransferError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err(parent))
}

/// What to write in the header beside what the store tells.
#[derive(Debug, Clone)]
pub struct ExportInfo<'a> {
    /// `sled` or `postgres`.
    pub source: &'a str,
    /// RFC 3339, UTC.
    pub created: String,
    /// The master-key check value.
    pub master_key_check: &'a [u8],
    /// Rows that stay behind.
    pub stays: Stays,
}

/// Exports every table and the event log of a stopped deployment into `out`, which must not
/// exist. A log whose chain is broken is not exported (nothing is written).
pub async fn export<S: Store + EventLog>(
    store: &S,
    info: ExportInfo<'_>,
    out: &Path,
) -> Result<Moved, TransferError> {
    if out.exists() {
        return Err(invalid(format!(
            "{} exists: choose another file or remove it",
            out.display()
        )));
    }
    // First pass: counts, for the header.
    let mut tables = BTreeMap::new();
    for t in Table::ALL {
        let mut n = 0u64;
        for_each_row(store, t, info.stays, |_, _| {
            n += 1;
            Ok(())
        })
        .await?;
        tables.insert(t.name().to_owned(), n);
    }
    store.refresh().await?;
    let checkpoint = store.checkpoint();
    let (first_seq, head_seq) = (store.first_seq(), store.head_seq());
    let head_hash = if head_seq == 0 {
        GENESIS_HASH.to_owned()
    } else {
        match store.read(head_seq, head_seq, 1).await?.pop() {
            Some(LogEntry { event: Ok(e), .. }) => e.hash,
            _ => {
                return Err(invalid(format!(
                    "the newest event (seq {head_seq}) is unreadable: run `portcullis log verify`"
                )))
            }
        }
    };
    let events = if head_seq == 0 {
        0
    } else {
        head_seq + 1 - first_seq
    };
    let header = Header {
        format: FORMAT.to_owned(),
        version: FORMAT_VERSION,
        source: info.source.to_owned(),
        created: info.created.clone(),
        tables: tables.clone(),
        log: LogRange {
            first_seq,
            head_seq,
            head_hash,
            events,
            checkpoint: checkpoint.clone(),
        },
        master_key_check: hex::encode(info.master_key_check),
    };

    let partial = partial_path(out);
    // A leftover of an export that did not finish.
    let _ = fs::remove_file(&partial);
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(io_err(&partial))?;
    let mut w = Out {
        file: BufWriter::new(file),
        path: partial.clone(),
        digest: Sha256::new(),
    };
    let written = async {
        w.line(&header)?;
        let mut rows = 0u64;
        for t in Table::ALL {
            let mut n = 0u64;
            for_each_row(store, t, info.stays, |key, value| {
                n += 1;
                w.line(&RowLine {
                    table: t.name().to_owned(),
                    key: STANDARD.encode(key),
                    value: STANDARD.encode(value),
                })
            })
            .await?;
            if tables.get(t.name()) != Some(&n) {
                return Err(invalid(format!(
                    "table {} changed during the export: stop every node first",
                    t.name()
                )));
            }
            rows += n;
        }
        let mut verifier = match &checkpoint {
            Some(c) => ChainVerifier::new(first_seq, Some(c.hash.clone())),
            None => ChainVerifier::from_genesis(),
        };
        let mut next = first_seq;
        while head_seq > 0 && next <= head_seq {
            let page = store.read_records(next, head_seq, PAGE).await?;
            if page.is_empty() {
                break;
            }
            for (seq, record) in page {
                let entry = LogEntry {
                    seq,
                    event: decode_record(&record),
                };
                if !verifier.feed(&entry) {
                    let r = verifier.report(head_seq);
                    return Err(invalid(format!(
                        "the event log's chain is broken at seq {} ({}): run `portcullis log \
                         verify`; nothing was exported",
                        r.first_broken_seq.unwrap_or(seq),
                        r.reason.unwrap_or_default()
                    )));
                }
                w.line(&EventLine {
                    seq,
                    record: STANDARD.encode(&record),
                })?;
                next = seq + 1;
            }
        }
        if head_seq > 0 && next != head_seq + 1 {
            return Err(invalid(format!(
                "the event log has no event at seq {next}: run `portcullis log verify`"
            )));
        }
        store.refresh().await?;
        if store.head_seq() != head_seq {
            return Err(invalid(
                "events were appended during the export: stop every node first",
            ));
        }
        // The trailer is not part of its own digest.
        let end = EndLine {
            end: End {
                rows,
                events,
                sha256: hex::encode(w.digest.clone().finalize()),
            },
        };
        let mut bytes = serde_json::to_vec(&end).map_err(|e| invalid(e.to_string()))?;
        bytes.push(b'\n');
        w.file.write_all(&bytes).map_err(io_err(&partial))?;
        let file = w
            .file
            .into_inner()
            .map_err(|e| invalid(format!("{}: {}", partial.display(), e.error())))?;
        file.sync_all().map_err(io_err(&partial))?;
        Ok(Moved {
            rows,
            events,
            first_seq,
            head_seq,
        })
    }
    .await;
    match written {
        Ok(moved) => {
            fs::rename(&partial, out).map_err(io_err(out))?;
            sync_parent(out)?;
            Ok(moved)
        }
        Err(e) => {
            let _ = fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Reads the file line by line, hashing every line before the trailer.
struct In {
    reader: BufReader<fs::File>,
    path: PathBuf,
    digest: Sha256,
    line_no: u64,
    buf: Vec<u8>,
}

impl In {
    fn open(path: &Path) -> Result<In, TransferError> {
        let file = fs::File::open(path).map_err(io_err(path))?;
        Ok(In {
            reader: BufReader::new(file),
            path: path.to_owned(),
            digest: Sha256::new(),
            line_no: 0,
            buf: Vec::new(),
        })
    }

    fn bad(&self, what: impl std::fmt::Display) -> TransferError {
        invalid(format!(
            "{} line {}: {what}; nothing was imported from it",
            self.path.display(),
            self.line_no
        ))
    }

    /// The next line (without its newline), or `None` at the end of the file.
    fn next(&mut self) -> Result<Option<&[u8]>, TransferError> {
        self.buf.clear();
        let n = self
            .reader
            .by_ref()
            .take(MAX_LINE)
            .read_until(b'\n', &mut self.buf)
            .map_err(io_err(&self.path))?;
        if n == 0 {
            return Ok(None);
        }
        self.line_no += 1;
        if self.buf.last() != Some(&b'\n') {
            return Err(self.bad("the line is cut short (the file is truncated or corrupted)"));
        }
        Ok(Some(&self.buf[..self.buf.len() - 1]))
    }

    fn hash_current(&mut self) {
        self.digest.update(&self.buf);
    }
}

/// A file read through and found whole.
#[derive(Debug, Clone)]
pub struct Checked {
    /// Its header.
    pub header: Header,
    /// Its `Meta` rows (a few keys), for the importer's checks of its key files.
    pub meta: BTreeMap<Vec<u8>, Vec<u8>>,
    sha256: String,
}

impl Checked {
    /// What the file holds.
    pub fn moved(&self) -> Moved {
        Moved {
            rows: self.header.tables.values().sum(),
            events: self.header.log.events,
            first_seq: self.header.log.first_seq,
            head_seq: self.header.log.head_seq,
        }
    }
}

/// Reads the whole file at `path`, checking everything an import could trip on (see the
/// module's documentation), and writes nothing.
pub async fn check_file(path: &Path, stays: Stays) -> Result<Checked, TransferError> {
    read_file::<crate::SledStore>(path, stays, None).await
}

/// Counts the rows of table `i` against the header.
fn count_ok(header: &Header, i: usize, have: u64, input: &In) -> Result<(), TransferError> {
    let name = Table::ALL.get(i).map_or("?", |t| t.name());
    let want = header.tables.get(name).copied().unwrap_or(0);
    if want != have {
        return Err(input.bad(format!(
            "table {name} has {have} rows, the header says {want}"
        )));
    }
    Ok(())
}

/// Reads the whole file; with `sink`, hands every row and event to it in order.
async fn read_file<S: Store + EventLog>(
    path: &Path,
    stays: Stays,
    mut sink: Option<&mut Writer<'_, S>>,
) -> Result<Checked, TransferError> {
    let mut input = In::open(path)?;
    let header_bytes = match input.next()? {
        Some(b) => b.to_vec(),
        None => return Err(input.bad("the file is empty")),
    };
    // Name the format and version before anything else, so a newer file says so.
    let loose: serde_json::Value =
        serde_json::from_slice(&header_bytes).map_err(|_| input.bad("not a JSON header"))?;
    if loose.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(input.bad("not a Portcullis export"));
    }
    match loose.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(input.bad(format!(
                "format version {v}: this build reads version {FORMAT_VERSION}"
            )))
        }
        None => return Err(input.bad("no format version")),
    }
    let header: Header =
        serde_json::from_value(loose).map_err(|e| input.bad(format!("header: {e}")))?;
    input.hash_current();
    if header.tables.len() != Table::ALL.len()
        || Table::ALL
            .iter()
            .any(|t| !header.tables.contains_key(t.name()))
    {
        return Err(input.bad("the header's tables are not this build's"));
    }
    let log = header.log.clone();
    let expected_events = if log.head_seq == 0 {
        0
    } else {
        (log.head_seq + 1).saturating_sub(log.first_seq)
    };
    if log.events != expected_events
        || log.first_seq != log.checkpoint.as_ref().map_or(1, |c| c.seq + 1)
    {
        return Err(input.bad("the header's log range does not add up"));
    }

    let mut table_at = 0usize;
    let mut in_table = 0u64;
    let mut last_key: Option<Vec<u8>> = None;
    let mut rows = 0u64;
    let mut meta = BTreeMap::new();
    let mut verifier = match &log.checkpoint {
        Some(c) => ChainVerifier::new(log.first_seq, Some(c.hash.clone())),
        None => ChainVerifier::from_genesis(),
    };
    let mut next_seq = log.first_seq;
    let mut head_hash = GENESIS_HASH.to_owned();
    let end = loop {
        let Some(bytes) = input.next()? else {
            return Err(input.bad("the file ends without its trailer (truncated)"));
        };
        let line: Line = serde_json::from_slice(bytes).map_err(|_| input.bad("unreadable"))?;
        match line {
            Line::Row(r) => {
                if table_at >= Table::ALL.len() {
                    return Err(input.bad("a row after the events"));
                }
                while Table::ALL[table_at].name() != r.table {
                    count_ok(&header, table_at, in_table, &input)?;
                    table_at += 1;
                    in_table = 0;
                    last_key = None;
                    if table_at >= Table::ALL.len() {
                        return Err(input.bad(format!("unknown or misplaced table {}", r.table)));
                    }
                }
                let key = STANDARD
                    .decode(&r.key)
                    .map_err(|_| input.bad("a key is not base64"))?;
                let value = STANDARD
                    .decode(&r.value)
                    .map_err(|_| input.bad("a value is not base64"))?;
                if last_key.as_ref().is_some_and(|k| *k >= key) {
                    return Err(input.bad("keys out of order"));
                }
                let table = Table::ALL[table_at];
                if stays(table, &key) {
                    return Err(input.bad("a row that stays with its node"));
                }
                if table == Table::Meta {
                    meta.insert(key.clone(), value.clone());
                }
                input.hash_current();
                if let Some(s) = sink.as_deref_mut() {
                    s.row(table, key.clone(), value).await?;
                }
                last_key = Some(key);
                in_table += 1;
                rows += 1;
            }
            Line::Event(e) => {
                // The rows are over: every remaining table must be as the header says.
                while table_at < Table::ALL.len() {
                    count_ok(&header, table_at, in_table, &input)?;
                    table_at += 1;
                    in_table = 0;
                }
                let record = STANDARD
                    .decode(&e.record)
                    .map_err(|_| input.bad("a record is not base64"))?;
                let entry = LogEntry {
                    seq: e.seq,
                    event: decode_record(&record),
                };
                if e.seq > log.head_seq || !verifier.feed(&entry) {
                    return Err(input.bad(format!("the event chain breaks at seq {}", e.seq)));
                }
                if let Ok(ev) = &entry.event {
                    head_hash.clone_from(&ev.hash);
                }
                input.hash_current();
                if let Some(s) = sink.as_deref_mut() {
                    s.event(record).await?;
                }
                next_seq = e.seq + 1;
            }
            Line::End(end) => break end.end,
        }
    };
    while table_at < Table::ALL.len() {
        count_ok(&header, table_at, in_table, &input)?;
        table_at += 1;
        in_table = 0;
    }
    let events = next_seq - log.first_seq;
    if events != log.events || end.events != events || end.rows != rows {
        return Err(input.bad("the trailer's or header's counts do not match the file"));
    }
    if log.head_seq > 0 && head_hash != log.head_hash {
        return Err(input.bad("the newest event is not the header's head"));
    }
    let sha256 = hex::encode(input.digest.clone().finalize());
    if sha256 != end.sha256 {
        return Err(input.bad("the digest does not match: the file is corrupted"));
    }
    if input.next()?.is_some() {
        return Err(input.bad("lines after the trailer"));
    }
    if let Some(s) = sink {
        s.flush().await?;
    }
    Ok(Checked {
        header,
        meta,
        sha256,
    })
}

/// Writes rows and events into the target in batches.
struct Writer<'a, S> {
    store: &'a S,
    checkpoint: Option<Checkpoint>,
    started: bool,
    rows: Vec<(Table, Vec<u8>, Vec<u8>)>,
    events: Vec<Vec<u8>>,
}

impl<S: Store + EventLog> Writer<'_, S> {
    async fn row(
        &mut self,
        table: Table,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), TransferError> {
        self.rows.push((table, key, value));
        if self.rows.len() >= PAGE {
            self.flush_rows().await?;
        }
        Ok(())
    }

    async fn event(&mut self, record: Vec<u8>) -> Result<(), TransferError> {
        self.events.push(record);
        if self.events.len() >= PAGE {
            self.flush_events().await?;
        }
        Ok(())
    }

    async fn flush_rows(&mut self) -> Result<(), TransferError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let mut batch = Batch::new();
        for (table, key, value) in self.rows.drain(..) {
            batch = batch
                .check(table, key.clone(), Expect::Absent)
                .put(table, key, value);
        }
        if !self.store.apply(batch).await?.committed() {
            return Err(invalid(
                "a row already exists in the target: was something else writing to it?",
            ));
        }
        Ok(())
    }

    async fn flush_events(&mut self) -> Result<(), TransferError> {
        if self.started && self.events.is_empty() {
            return Ok(());
        }
        let start = if self.started {
            None
        } else {
            self.checkpoint.as_ref()
        };
        self.store.import_records(start, &self.events).await?;
        self.started = true;
        self.events.clear();
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), TransferError> {
        self.flush_rows().await?;
        self.flush_events().await
    }
}

/// What holds data in a store, if anything: the first table with a row, or `events`.
pub async fn first_content<S: Store + EventLog>(
    store: &S,
) -> Result<Option<&'static str>, TransferError> {
    for t in Table::ALL {
        if !store.scan_range(t, None, 1).await?.is_empty() {
            return Ok(Some(t.name()));
        }
    }
    store.refresh().await?;
    if store.head_seq() > 0 || store.checkpoint().is_some() {
        return Ok(Some("events"));
    }
    Ok(None)
}

/// Writes the file at `path`, found whole by [`check_file`], into `store` (found empty by
/// [`first_content`]): every row, then the log verbatim; then checks that the file did not
/// change meanwhile and that the log verifies to the same head. On failure the store holds part
/// of the file: the caller empties it.
pub async fn import<S: Store + EventLog>(
    path: &Path,
    checked: &Checked,
    stays: Stays,
    store: &S,
) -> Result<Moved, TransferError> {
    let mut w = Writer {
        store,
        checkpoint: checked.header.log.checkpoint.clone(),
        started: false,
        rows: Vec::new(),
        events: Vec::new(),
    };
    let again = read_file(path, stays, Some(&mut w)).await?;
    if again.sha256 != checked.sha256 {
        return Err(invalid(format!(
            "{} changed during the import",
            path.display()
        )));
    }
    store.sync().await?;
    let report = verify_events(store, 1, None).await?;
    let log = &checked.header.log;
    if !report.valid || report.head_seq != log.head_seq || report.first_seq != log.first_seq {
        return Err(invalid(format!(
            "the imported event log does not verify (head {}, first broken seq {:?})",
            report.head_seq, report.first_broken_seq
        )));
    }
    Ok(checked.moved())
}
