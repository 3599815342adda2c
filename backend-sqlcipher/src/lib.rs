//! # backend-sqlcipher
//!
//! hearth's [`Storage`] over [SQLCipher](https://www.zetetic.net/sqlcipher/) through
//! [rusqlite](https://docs.rs/rusqlite): the same schema and semantics as `backend-sqlite`, and
//! the whole file (every page, the WAL, the schema, the metadata) encrypted with a page key.
//!
//! ## The page key
//!
//! The key comes from [`StorageOptions::page_key`]: a subkey of the store's root key
//! (`derive_subkey(root, "hearth.sqlcipher-page-key")`), never the passphrase, so SQLCipher's own
//! password KDF is skipped (the passphrase already went through Argon2id) and a passphrase change
//! never re-encrypts the file. It is set as a raw key right after the file is opened,
//! `PRAGMA key = "x'<64 hex digits>'"`, with `PRAGMA cipher_compatibility = 4` so the on-disk
//! format does not drift with SQLCipher's defaults, and 8 KiB pages ([`CIPHER_PAGE_SIZE`]).
//! SQLCipher accepts any key when "connecting" and fails only at the first read, so the key is
//! verified at once with a query: a key that does not decrypt the file is
//! [`ErrorKind::WrongKey`], and nothing has been written to it. A missing page key is
//! [`ErrorKind::InvalidInput`]. The store (`sync_core::Store::builder()`) keeps the
//! key header that unlocks the root key in a sidecar file next to the database, since it must be
//! readable before the page key exists.
//!
//! ## Re-keying
//!
//! [`Storage::rekey`] moves the file to a new page key (root-key rotation derives a new one):
//! `PRAGMA rekey` rewrites every page in one write transaction, a second connection checks that
//! the new key opens the file (SQLCipher reports success even when the rekey rolled back), and
//! a `wal_checkpoint(TRUNCATE)` folds the re-keyed pages into the main file. A crash at any point
//! leaves a file exactly one of the two keys opens, whole (`tests/rekey.rs` kills a process at
//! twelve points of a re-key). If the re-key fails, the handle is closed.
//!
//! ## Threads
//!
//! rusqlite is blocking, so every store owns one dedicated OS thread that owns the connection;
//! the async methods send a job over a channel and await its answer. This keeps blocking SQLite
//! calls (and the `fsync` of every commit) off the async runtime's worker threads, works under
//! any runtime, never moves the connection between threads, and serialises access without a lock
//! held across an await. The alternative, `tokio::task::spawn_blocking` with a
//! `Mutex<Connection>`, would tie the crate to tokio's runtime, hop to a different pool thread on
//! every call and make concurrent calls queue on the mutex from blocking threads. One connection
//! suffices: hearth has one writer per store, and SQLCipher decrypts pages into its cache once.
//!
//! ## File
//!
//! WAL journal, `synchronous = NORMAL`, a 16 MiB page cache, checkpoints off the commit path on
//! a connection and thread of their own after every ~8 MiB of envelopes (the writer's own past
//! 16384 pages of WAL; the `checkpoint` module), every
//! [`Batch`] in one `BEGIN IMMEDIATE` transaction with its guards checked first, multi-row
//! puts as an update of the row the id names, else an insert. Schema (version 4,
//! `PRAGMA user_version`, `PRAGMA application_id` "HRTH"), identical to `backend-sqlite`'s,
//! whose documentation says why only one index is keyed by id, and by a prefix of it (every
//! lookup re-checks the full id on the row; `scan_all` orders by `(prefix, id)`, the order of
//! the full ids), why a collection's scan is in row order (a pull's inserts land at the end of
//! its index; a walk's position survives the removal of the record it stopped at), and why a
//! record's state sits in a table of its own beside its envelope (acknowledging a push
//! rewrites small rows, not the pages of the envelopes; here every page written is also
//! encrypted and authenticated):
//!
//! ```sql
//! CREATE TABLE records (row INTEGER PRIMARY KEY, id BLOB NOT NULL, collection BLOB NOT NULL,
//!                       deleted INTEGER NOT NULL, envelope BLOB NOT NULL);
//! CREATE TABLE record_state (row INTEGER PRIMARY KEY, pending_seq INTEGER, sync BLOB NOT NULL);
//! CREATE INDEX records_by_id ON records (substr(id, 1, 8));
//! CREATE INDEX records_by_collection ON records (substr(collection, 1, 4));
//! CREATE INDEX record_state_pending ON record_state (pending_seq) WHERE pending_seq IS NOT NULL;
//! CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL);
//! ```
//!
//! A version-1 store (a `UNIQUE` full id, `records_by_collection (collection, id)`) or
//! version-2 store (one `records` table holding the state too) is rebuilt in one transaction
//! when it is opened, row ids kept; a version-3 store (`records_by_collection` keyed by id
//! prefix) has that index rebuilt.
//!
//! [`Storage::check`] runs `PRAGMA cipher_integrity_check` (every page's HMAC) and
//! `PRAGMA integrity_check` (the b-trees).
//!
//! SQLCipher writes warnings (such as a page whose HMAC fails, by page number; never key
//! material or data) to standard error by default on Linux; an application can change that
//! process-wide with `PRAGMA cipher_log_level`. This crate does not, since libraries should not
//! change process-wide settings.
//!
//! Registered as `"sqlcipher"`; its registry entry says it needs a page key.
#![deny(missing_docs)]

mod checkpoint;
mod worker;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};
use sync_core::{
    Batch, Capabilities, CollectionId, Error, ErrorKind, OutboxEntry, RecordId, Result, RowState,
    ScanPos, SecretKey, Storage, StorageOptions, StoredRecord, storage::last_per_id,
};
use zeroize::Zeroizing;

use crate::checkpoint::Checkpointer;
use crate::worker::Worker;

/// `PRAGMA application_id` of hearth stores: "HRTH".
pub const APPLICATION_ID: i64 = 0x4852_5448;
/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;
/// SQLCipher page size of hearth stores, in bytes. Part of the file format: SQLCipher cannot read
/// it from the (encrypted) header, so every open sets it. SQLCipher reserves 80 bytes of every
/// page for its IV and HMAC; with its default 4 KiB pages, three rows of a ~1 KiB record no
/// longer fit a page and the file grew by 45 % over plain SQLite's for the same records; with
/// 8 KiB pages it is the same size (docs/performance.md).
pub const CIPHER_PAGE_SIZE: u32 = 8192;

const RECORDS_TABLE: &str = "CREATE TABLE records (row INTEGER PRIMARY KEY, id BLOB NOT NULL, collection BLOB NOT NULL, deleted INTEGER NOT NULL, envelope BLOB NOT NULL)";
const STATE_TABLE: &str =
    "CREATE TABLE record_state (row INTEGER PRIMARY KEY, pending_seq INTEGER, sync BLOB NOT NULL)";
const RECORDS_INDEXES: &[&str] = &[
    "CREATE INDEX records_by_id ON records (substr(id, 1, 8))",
    "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4))",
    "CREATE INDEX record_state_pending ON record_state (pending_seq) WHERE pending_seq IS NOT NULL",
];
const META_TABLE: &str = "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)";

/// Versions 1 and 2 to 3: their one `records` table (the same columns in both; version 1 also
/// has `UNIQUE (id)`, a table constraint SQLite cannot drop in place) split into `records`
/// and `record_state`, row ids kept, in row id order; dropping the old table drops its indexes,
/// and [`RECORDS_INDEXES`] are then built once, sorted.
const MIGRATE_TO_3: &[&str] = &[
    "CREATE TABLE records_v3 (row INTEGER PRIMARY KEY, id BLOB NOT NULL, collection BLOB NOT NULL, deleted INTEGER NOT NULL, envelope BLOB NOT NULL)",
    "INSERT INTO records_v3 (row, id, collection, deleted, envelope) SELECT rowid, id, collection, deleted, envelope FROM records ORDER BY rowid",
    "CREATE TABLE record_state (row INTEGER PRIMARY KEY, pending_seq INTEGER, sync BLOB NOT NULL)",
    "INSERT INTO record_state (row, pending_seq, sync) SELECT rowid, pending_seq, sync FROM records ORDER BY rowid",
    "DROP TABLE records",
    "ALTER TABLE records_v3 RENAME TO records",
];

/// Version 3 to 4: the collection index keyed by row (implicitly) instead of id prefix.
const MIGRATE_3_TO_4: &[&str] = &[
    "DROP INDEX records_by_collection",
    "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4))",
];

/// Bytes of a record id in the key of `records_by_id`.
const ID_PREFIX: usize = 8;

fn id_prefix(id: &RecordId) -> &[u8] {
    &id.0[..ID_PREFIX]
}

/// Where a scan starts: after `after` in the order `(substr(id, 1, 8), id)`, which is the
/// order of the full ids; from the start without one (the empty blob sorts first).
fn scan_start(after: Option<&RecordId>) -> (&[u8], &[u8]) {
    match after {
        Some(a) => (id_prefix(a), &a.0[..]),
        None => (&[], &[]),
    }
}
/// Ids per `WHERE id IN (…)` of `get_many`.
const GET_CHUNK: usize = 500;

/// The columns of a [`StoredRecord`], from `records AS r` joined with `record_state AS s`.
const COLUMNS: &str = "r.id, r.collection, r.deleted, s.pending_seq, r.envelope, s.sync";

/// A record's state row, joined to its `records` row `r` (which the query finds first).
const JOIN_STATE: &str = "CROSS JOIN record_state AS s ON s.row = r.row";

/// The row id of the record whose id prefix is `?1` and id `?2`, as a scalar subquery.
const ROW_OF: &str =
    "(SELECT row FROM records INDEXED BY records_by_id WHERE substr(id, 1, 8) = ?1 AND id = ?2)";

/// Storage in a SQLCipher file.
#[derive(Debug, Clone)]
pub struct SqlcipherStorage {
    worker: Arc<Worker>,
    /// WAL checkpoints beside the commits (`checkpoint` module); `None` while a re-key runs,
    /// or if its connection could not be opened (the writer then checkpoints by itself).
    checkpoints: Arc<tokio::sync::RwLock<Option<Checkpointer>>>,
    path: PathBuf,
}

/// Maps a rusqlite error to hearth's error, by SQLite result code. The message names the
/// operation; SQLite's own text (which never contains our bound values) is kept as the cause.
pub fn map_sql(e: rusqlite::Error, what: &'static str) -> Error {
    match &e {
        rusqlite::Error::SqliteFailure(err, _) => {
            let (kind, msg, temporary) = match err.extended_code & 0xff {
                5 | 6 => (ErrorKind::Unavailable, "the database is busy", true),
                8 => (ErrorKind::Io, "the database is read-only", false),
                10 => (ErrorKind::Io, "disk I/O error", false),
                11 => (ErrorKind::Corrupt, "the database file is corrupt", false),
                13 => (
                    ErrorKind::StorageFull,
                    "the disk is full; nothing was written",
                    false,
                ),
                14 => (ErrorKind::Io, "the database file cannot be opened", false),
                23 => (ErrorKind::Io, "access to the database was denied", false),
                26 => (
                    ErrorKind::WrongKey,
                    "the page key does not decrypt this file (or it is not a SQLCipher database)",
                    false,
                ),
                _ => (ErrorKind::Storage, what, false),
            };
            let err = Error::new(kind, format!("{what}: {msg}")).with_source(e);
            if temporary { err.temporary() } else { err }
        }
        _ => Error::new(ErrorKind::Storage, what).with_source(e),
    }
}

fn row_to_record(row: &Row<'_>) -> Result<StoredRecord> {
    let id: Vec<u8> = row.get(0).map_err(|e| map_sql(e, "read id"))?;
    let collection: Vec<u8> = row.get(1).map_err(|e| map_sql(e, "read collection"))?;
    let deleted: i64 = row.get(2).map_err(|e| map_sql(e, "read deleted"))?;
    let pending: Option<i64> = row.get(3).map_err(|e| map_sql(e, "read pending_seq"))?;
    let envelope: Vec<u8> = row.get(4).map_err(|e| map_sql(e, "read envelope"))?;
    let sync: Vec<u8> = row.get(5).map_err(|e| map_sql(e, "read sync"))?;
    Ok(StoredRecord {
        id: RecordId::from_slice(&id)?,
        collection: CollectionId::from_slice(&collection)?,
        envelope,
        deleted: deleted != 0,
        pending_seq: pending.map(seq_from_sql).transpose()?,
        sync,
    })
}

fn seq_to_sql(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| Error::invalid("sequence number out of range"))
}

fn seq_from_sql(seq: i64) -> Result<u64> {
    u64::try_from(seq).map_err(|_| Error::corrupt("negative sequence number in store"))
}

enum SchemaState {
    /// A hearth store of this schema version (at most [`SCHEMA_VERSION`]).
    Ours(i64),
    Empty,
}

/// Classifies a decrypted database: a hearth store (of a schema we can read), an empty
/// database, or something else (an error).
fn schema_state(conn: &Connection) -> Result<SchemaState> {
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| map_sql(e, "read application id"))?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| map_sql(e, "read schema version"))?;
    let objects: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| map_sql(e, "read schema"))?;
    if app_id == APPLICATION_ID {
        if version > SCHEMA_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "store schema {version} is newer than this build supports ({SCHEMA_VERSION}); upgrade hearth"
                ),
            ));
        }
        if version < 1 {
            return Err(Error::corrupt(format!(
                "the store has schema version {version}, which no hearth build wrote"
            )));
        }
        return Ok(SchemaState::Ours(version));
    }
    if app_id != 0 || objects != 0 {
        return Err(Error::corrupt(
            "the file is a database but not a hearth store; refusing to modify it",
        ));
    }
    Ok(SchemaState::Empty)
}

/// What the first bytes of an existing file say, before SQLCipher touches it.
enum FileKind {
    /// Zero bytes: SQLite initialises it.
    Empty,
    /// Something that may be a SQLCipher database (it has no plaintext header to check).
    MaybeSqlcipher,
}

/// Refuses files that cannot be SQLCipher databases, without modifying them: a plaintext SQLite
/// database (made by the `sqlite` storage or another application) and files whose size is not
/// a whole number of pages (a SQLCipher file has no readable header; anything else that is not
/// one fails the key check as [`ErrorKind::WrongKey`]).
fn inspect_file(path: &Path) -> Result<FileKind> {
    use std::io::Read;
    let io_err = |what: &str, e: std::io::Error| {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("cannot {what} {}", path.display())).with_source(e)
    };
    let mut f = std::fs::File::open(path).map_err(|e| io_err("open", e))?;
    let len = f.metadata().map_err(|e| io_err("inspect", e))?.len();
    if len == 0 {
        return Ok(FileKind::Empty);
    }
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match f.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => return Err(io_err("read", e)),
        }
    }
    if &header[..read] == b"SQLite format 3\0" {
        return Err(Error::corrupt(format!(
            "{} is a plaintext SQLite database, not an encrypted hearth store; refusing to modify it",
            path.display()
        )));
    }
    if len < 512 || len % 512 != 0 {
        return Err(Error::corrupt(format!(
            "{} is not a SQLCipher database; refusing to modify it",
            path.display()
        )));
    }
    Ok(FileKind::MaybeSqlcipher)
}

/// Opens, keys, verifies and (when asked) initialises the database. Runs on the store's thread.
fn open_connection(path: &Path, create: bool, page_key: &SecretKey) -> Result<Connection> {
    let exists = path.exists();
    if !exists && !create {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no store at {}", path.display()),
        ));
    }
    let file = if exists {
        inspect_file(path)?
    } else {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("directory {} does not exist", dir.display()),
            ));
        }
        FileKind::Empty
    };
    if matches!(file, FileKind::Empty) && !create {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the file is empty, not a hearth store",
        ));
    }
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    sqlcipher_ready();
    let conn = Connection::open_with_flags(path, flags).map_err(|e| map_sql(e, "open store"))?;

    key_and_verify(&conn, page_key)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| map_sql(e, "open store"))?;
    conn.set_prepared_statement_cache_capacity(64);

    // Refuse a database that is not ours before any pragma below writes to it.
    if let SchemaState::Empty = schema_state(&conn)?
        && !create
    {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the file is an empty database, not a hearth store",
        ));
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| map_sql(e, "set journal mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::new(
            ErrorKind::Storage,
            "the file system does not support SQLite's WAL journal",
        ));
    }
    // See backend-sqlite and docs/performance.md for the cache and checkpoint sizes.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = OFF; PRAGMA cache_size = -16384;",
    )
    .map_err(|e| map_sql(e, "configure store"))?;
    conn.pragma_update(None, "journal_size_limit", checkpoint::WAL_KEEP_BYTES)
        .map_err(|e| map_sql(e, "configure store"))?;
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        checkpoint::WRITER_AUTOCHECKPOINT_PAGES,
    )
    .map_err(|e| map_sql(e, "configure store"))?;

    let mut conn = conn;
    prepare_schema(&mut conn, create)?;
    Ok(conn)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `PRAGMA <name> = "x'<hex of key>'";`, wiped when dropped. PRAGMA takes no bound parameters;
/// the text is hex of our own key, built here.
fn key_pragma(name: &str, key: &SecretKey) -> Zeroizing<String> {
    let mut pragma = Zeroizing::new(String::with_capacity(96));
    pragma.push_str("PRAGMA ");
    pragma.push_str(name);
    pragma.push_str(" = \"x'");
    for b in key.expose() {
        pragma.push(char::from(HEX[usize::from(b >> 4)]));
        pragma.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    pragma.push_str("'\";");
    pragma
}

/// Finishes SQLite's one-time initialisation, SQLCipher's included, before this crate opens a
/// connection.
///
/// SQLite marks itself initialised before it runs SQLCipher's part of the initialisation
/// (`SQLITE_EXTRA_INIT`), so a second thread opening its first connection in that window finds
/// SQLite ready and SQLCipher not: its `PRAGMA key` then fails ("An error occurred with PRAGMA
/// key or rekey"). Seen as a rare failure of tests that open stores on several threads at
/// process start. The first caller here opens an in-memory connection, which runs the whole
/// initialisation; the others wait for it. (A connection opened at the same moment by other
/// code in the process, sqlx's for instance, can still race; [`key_and_verify`] retries the
/// key for that.)
fn sqlcipher_ready() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        // Failing here is failing later, with a clearer error: nothing to report now.
        let _ = Connection::open_in_memory();
    });
}

/// Keys a fresh connection, sets the file format, and checks that the key decrypts the file.
///
/// The key is set again, up to 5 times 10 ms apart, when SQLCipher refuses it outright (not
/// for a wrong key, which is found by the read below): SQLCipher's initialisation may still
/// be running on another thread ([`sqlcipher_ready`]).
fn key_and_verify(conn: &Connection, page_key: &SecretKey) -> Result<()> {
    // The key first, before anything reads the file.
    let pragma = key_pragma("key", page_key);
    let mut attempts = 0;
    while let Err(e) = conn.execute_batch(&pragma) {
        attempts += 1;
        if attempts >= 5 {
            return Err(map_sql(e, "set the page key"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // The format: SQLCipher 4's defaults, except 8 KiB pages (see CIPHER_PAGE_SIZE). Neither is
    // stored in the file (its header is encrypted), so both are set on every open.
    conn.execute_batch(&format!(
        "PRAGMA cipher_compatibility = 4; PRAGMA cipher_page_size = {CIPHER_PAGE_SIZE};"
    ))
    .map_err(|e| map_sql(e, "set the SQLCipher format"))?;
    // SQLCipher "connects" with any key; the first read tells whether it decrypts the file.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(|e| match map_sql(e, "verify the page key") {
        e if e.kind() == ErrorKind::WrongKey => Error::new(
            ErrorKind::WrongKey,
            "the page key does not open this store (wrong key, or not a hearth SQLCipher store)",
        ),
        e => e,
    })?;
    Ok(())
}

/// Re-encrypts every page under `new_key` (`PRAGMA rekey`) and checks the result. Runs on the
/// store's thread, between jobs, so no transaction of this connection is open.
///
/// SQLCipher's rekey rewrites every page in one write transaction. In WAL mode the new pages
/// go to the WAL and become visible at its commit frame: a crash before it leaves the old key's
/// file (uncommitted frames are ignored by recovery), a crash after it leaves the new key's
/// (page 1 is read from the WAL, so the old key no longer decrypts it), and a checkpoint copies
/// frames without re-encoding them. `rekey_survives_being_killed_at_any_point` kills a process
/// mid-rekey and checks exactly one key opens the file, whole.
///
/// SQLCipher reports success even when the transaction failed and rolled back (a full disk),
/// so a second connection checks that the new key opens the file. If it does not, this
/// connection's key state is unknown: the caller must close it.
fn rekey_connection(conn: &mut Connection, path: &Path, new_key: &SecretKey) -> Result<()> {
    conn.execute_batch(&key_pragma("rekey", new_key))
        .map_err(|e| map_sql(e, "re-key the store"))?;
    let check = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| map_sql(e, "open store"))
    .and_then(|c| key_and_verify(&c, new_key).map(|()| c));
    match check {
        Ok(c) => {
            let _ = c.close();
        }
        Err(e) => {
            return Err(Error::new(
                e.kind(),
                "re-keying the store did not complete (the file is still under its old key)",
            )
            .with_source(e));
        }
    }
    // Fold the re-keyed pages into the main file now, so no page under the old key stays in
    // it longer than needed, and shrink the WAL (which held a copy of every page).
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| map_sql(e, "checkpoint after re-keying"))?;
    Ok(())
}

fn prepare_schema(conn: &mut Connection, create: bool) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| map_sql(e, "open store"))?;
    match schema_state(&tx)? {
        SchemaState::Ours(v) if v == SCHEMA_VERSION => return Ok(()),
        SchemaState::Ours(v) => {
            tracing::info!(
                from = v,
                to = SCHEMA_VERSION,
                "migrating the store's schema"
            );
            let steps: Vec<&str> = if v < 3 {
                MIGRATE_TO_3
                    .iter()
                    .chain(RECORDS_INDEXES)
                    .copied()
                    .collect()
            } else {
                MIGRATE_3_TO_4.to_vec()
            };
            for stmt in steps {
                tx.execute(stmt, [])
                    .map_err(|e| map_sql(e, "migrate the store's schema"))?;
            }
            // PRAGMAs cannot take bound parameters; the version is our constant.
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))
                .map_err(|e| map_sql(e, "migrate the store's schema"))?;
            return tx
                .commit()
                .map_err(|e| map_sql(e, "migrate the store's schema"));
        }
        SchemaState::Empty if create => {}
        SchemaState::Empty => {
            return Err(Error::new(
                ErrorKind::NotFound,
                "the file is an empty database, not a hearth store",
            ));
        }
    }
    let schema = [RECORDS_TABLE, STATE_TABLE]
        .into_iter()
        .chain(RECORDS_INDEXES.iter().copied())
        .chain([META_TABLE]);
    for stmt in schema {
        tx.execute(stmt, [])
            .map_err(|e| map_sql(e, "create schema"))?;
    }
    // PRAGMAs cannot take bound parameters; both values are our constants.
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
    ))
    .map_err(|e| map_sql(e, "create schema"))?;
    tx.commit().map_err(|e| map_sql(e, "create schema"))
}

fn apply(tx: &Transaction<'_>, batch: &Batch) -> Result<()> {
    for (key, expected) in &batch.guards {
        let actual: Option<Vec<u8>> = tx
            .prepare_cached("SELECT value FROM meta WHERE key = ?1")
            .and_then(|mut s| s.query_row([key.as_str()], |r| r.get(0)).optional())
            .map_err(|e| map_sql(e, "check guard"))?;
        if actual.as_ref() != expected.as_ref() {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the store was changed by another writer; reopen it",
            ));
        }
    }
    // Puts, one after the other (statements are prepared once and run in-process, so a row a
    // statement costs little here): the row with that id, found by its prefix and the full id,
    // has its envelope and its state updated, else both rows are inserted under one row id. A
    // later put of the same id in the batch replaces the earlier one, and only it is written, so
    // a new record's row follows its last put (the order `Storage::scan` promises). The
    // collection is not
    // updated: a blind id is derived from its collection, so it never changes, and naming an
    // indexed column would rewrite its index entry.
    if !batch.puts.is_empty() {
        let mut find = tx
            .prepare_cached(&format!("SELECT {ROW_OF}"))
            .map_err(|e| map_sql(e, "write records"))?;
        let mut update = tx
            .prepare_cached("UPDATE records SET deleted = ?2, envelope = ?3 WHERE row = ?1")
            .map_err(|e| map_sql(e, "write records"))?;
        let mut update_state = tx
            .prepare_cached("UPDATE record_state SET pending_seq = ?2, sync = ?3 WHERE row = ?1")
            .map_err(|e| map_sql(e, "write records"))?;
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO records (id, collection, deleted, envelope) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| map_sql(e, "write records"))?;
        let mut insert_state = tx
            .prepare_cached("INSERT INTO record_state (row, pending_seq, sync) VALUES (?1, ?2, ?3)")
            .map_err(|e| map_sql(e, "write records"))?;
        for r in last_per_id(batch.puts.iter().collect(), |r| r.id) {
            let pending = r.pending_seq.map(seq_to_sql).transpose()?;
            let existing: Option<i64> = find
                .query_row(rusqlite::params![id_prefix(&r.id), &r.id.0[..]], |row| {
                    row.get(0)
                })
                .map_err(|e| map_sql(e, "write records"))?;
            let row = match existing {
                Some(row) => {
                    update
                        .execute(rusqlite::params![
                            row,
                            i64::from(r.deleted),
                            &r.envelope[..]
                        ])
                        .map_err(|e| map_sql(e, "write records"))?;
                    update_state
                        .execute(rusqlite::params![row, pending, &r.sync[..]])
                        .map_err(|e| map_sql(e, "write records"))?;
                    continue;
                }
                None => {
                    insert
                        .execute(rusqlite::params![
                            &r.id.0[..],
                            &r.collection.0[..],
                            i64::from(r.deleted),
                            &r.envelope[..],
                        ])
                        .map_err(|e| map_sql(e, "write records"))?;
                    tx.last_insert_rowid()
                }
            };
            insert_state
                .execute(rusqlite::params![row, pending, &r.sync[..]])
                .map_err(|e| map_sql(e, "write records"))?;
        }
    }
    if !batch.removes.is_empty() {
        let mut s = tx
            .prepare_cached(&format!("DELETE FROM record_state WHERE row = {ROW_OF}"))
            .map_err(|e| map_sql(e, "remove record"))?;
        let mut r = tx
            .prepare_cached(
                "DELETE FROM records INDEXED BY records_by_id WHERE substr(id, 1, 8) = ?1 AND id = ?2",
            )
            .map_err(|e| map_sql(e, "remove record"))?;
        for id in &batch.removes {
            s.execute(rusqlite::params![id_prefix(id), &id.0[..]])
                .map_err(|e| map_sql(e, "remove record"))?;
            r.execute(rusqlite::params![id_prefix(id), &id.0[..]])
                .map_err(|e| map_sql(e, "remove record"))?;
        }
    }
    // An acknowledgement comes with the row's new bookkeeping (the sync engine sends both):
    // one statement for the two, the row found and written once. An id acknowledged more than
    // once, and the last bookkeeping of an id are told apart first; every other acknowledgement
    // and bookkeeping goes its own way, acknowledgements before bookkeeping as the batch says.
    let mut acked: HashMap<&RecordId, Option<u64>> = HashMap::with_capacity(batch.acks.len());
    for (id, seq) in &batch.acks {
        // `None`: acknowledged more than once.
        acked
            .entry(id)
            .and_modify(|s| *s = None)
            .or_insert(Some(*seq));
    }
    let last_sync: HashMap<&RecordId, usize> = batch
        .syncs
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (id, i))
        .collect();
    let joined =
        |id: &RecordId| matches!(acked.get(id), Some(Some(_))) && last_sync.contains_key(id);
    if !batch.acks.is_empty() {
        let mut s = tx
            .prepare_cached(&format!(
                "UPDATE record_state SET pending_seq = NULL WHERE row = {ROW_OF} AND pending_seq = ?3"
            ))
            .map_err(|e| map_sql(e, "acknowledge write"))?;
        for (id, seq) in batch.acks.iter().filter(|(id, _)| !joined(id)) {
            s.execute(rusqlite::params![
                id_prefix(id),
                &id.0[..],
                seq_to_sql(*seq)?
            ])
            .map_err(|e| map_sql(e, "acknowledge write"))?;
        }
    }
    if !batch.syncs.is_empty() {
        let mut s = tx
            .prepare_cached(&format!(
                "UPDATE record_state SET sync = ?3 WHERE row = {ROW_OF}"
            ))
            .map_err(|e| map_sql(e, "write sync state"))?;
        let mut both = tx
            .prepare_cached(&format!(
                "UPDATE record_state SET sync = ?4, pending_seq = \
                 CASE WHEN pending_seq = ?3 THEN NULL ELSE pending_seq END WHERE row = {ROW_OF}"
            ))
            .map_err(|e| map_sql(e, "acknowledge writes"))?;
        for (i, (id, sync)) in batch.syncs.iter().enumerate() {
            match acked.get(id) {
                Some(Some(seq)) if last_sync.get(id) == Some(&i) => both
                    .execute(rusqlite::params![
                        id_prefix(id),
                        &id.0[..],
                        seq_to_sql(*seq)?,
                        &sync[..]
                    ])
                    .map_err(|e| map_sql(e, "acknowledge writes"))?,
                _ => s
                    .execute(rusqlite::params![id_prefix(id), &id.0[..], &sync[..]])
                    .map_err(|e| map_sql(e, "write sync state"))?,
            };
        }
    }
    for (key, value) in &batch.meta {
        match value {
            Some(v) => tx
                .prepare_cached(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(rusqlite::params![key.as_str(), &v[..]])),
            None => tx
                .prepare_cached("DELETE FROM meta WHERE key = ?1")
                .and_then(|mut s| s.execute([key.as_str()])),
        }
        .map_err(|e| map_sql(e, "write metadata"))?;
    }
    Ok(())
}

fn commit_batch(conn: &mut Connection, batch: &Batch) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| map_sql(e, "begin transaction"))?;
    match apply(&tx, batch) {
        Ok(()) => tx.commit().map_err(|e| map_sql(e, "commit")),
        Err(e) => {
            // Dropping the transaction rolls back too; an explicit rollback reports failures.
            if let Err(rb) = tx.rollback() {
                tracing::warn!(error = %rb, "rollback after a failed batch failed");
            }
            Err(e)
        }
    }
}

fn query_records(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    what: &'static str,
) -> Result<Vec<StoredRecord>> {
    query_rows(conn, sql, params, what, row_to_record)
}

/// Runs `sql` (prepared once per connection) and maps every row it returns with `f`.
fn query_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    what: &'static str,
    f: impl Fn(&Row<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql).map_err(|e| map_sql(e, what))?;
    let mut rows = stmt.query(params).map_err(|e| map_sql(e, what))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| map_sql(e, what))? {
        out.push(f(row)?);
    }
    Ok(out)
}

fn integrity(conn: &Connection) -> Result<()> {
    let collect = |sql: &str, what: &'static str| -> Result<Vec<String>> {
        let mut stmt = conn.prepare(sql).map_err(|e| map_sql(e, what))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| map_sql(e, what))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| map_sql(e, what))
    };
    // Every page's HMAC: any row is a page that fails authentication.
    let bad_pages = collect("PRAGMA cipher_integrity_check", "cipher integrity check")?;
    if !bad_pages.is_empty() {
        return Err(Error::corrupt(format!(
            "cipher integrity check found {} page(s) that fail authentication",
            bad_pages.len()
        )));
    }
    let rows = collect("PRAGMA integrity_check", "integrity check")?;
    if rows.len() == 1 && rows[0] == "ok" {
        Ok(())
    } else {
        Err(Error::corrupt(format!(
            "integrity check found {} problem(s)",
            rows.len()
        )))
    }
}

impl SqlcipherStorage {
    /// `columns` of the rows with the given ids, in the same order (`None` where absent), read
    /// by `read` into (id, value) on the worker: one statement per chunk of ids, by id prefix.
    async fn by_ids<T, F>(
        &self,
        ids: &[RecordId],
        columns: &'static str,
        read: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: Clone + Send + 'static,
        F: Fn(&rusqlite::Row<'_>) -> Result<(RecordId, T)> + Send + 'static,
    {
        let ids = ids.to_vec();
        self.worker
            .call(move |conn| {
                let mut found = HashMap::with_capacity(ids.len());
                for chunk in ids.chunks(GET_CHUNK) {
                    let placeholders = vec!["?"; chunk.len()].join(", ");
                    let sql = format!(
                        "SELECT {columns} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
                         WHERE substr(r.id, 1, 8) IN ({placeholders})"
                    );
                    let mut stmt = conn
                        .prepare_cached(&sql)
                        .map_err(|e| map_sql(e, "read records"))?;
                    let mut rows = stmt
                        .query(rusqlite::params_from_iter(chunk.iter().map(id_prefix)))
                        .map_err(|e| map_sql(e, "read records"))?;
                    // A prefix may match other records too; only the ids asked for count.
                    while let Some(row) = rows.next().map_err(|e| map_sql(e, "read records"))? {
                        let (id, value) = read(row)?;
                        found.insert(id, value);
                    }
                }
                Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
            })
            .await
    }

    /// Registry name.
    pub const NAME: &'static str = "sqlcipher";

    /// Opens the encrypted store file at `path` with `page_key`, creating it when `create` is
    /// true.
    ///
    /// Errors: a page key that does not decrypt the file is [`ErrorKind::WrongKey`] and leaves
    /// it untouched; a missing file without `create` is [`ErrorKind::NotFound`]; a missing or
    /// unwritable directory is [`ErrorKind::Io`]; a plaintext SQLite database or a file that
    /// cannot be a SQLCipher database is [`ErrorKind::Corrupt`] and is left untouched; a newer
    /// schema is [`ErrorKind::Unsupported`].
    pub async fn open(path: impl AsRef<Path>, create: bool, page_key: &SecretKey) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let key = page_key.clone();
        let open_path = path.clone();
        let worker = Worker::start(path.clone(), "hearth-sqlcipher", move || {
            open_connection(&open_path, create, &key)
        })
        .await?;
        Ok(Self {
            worker: Arc::new(worker),
            checkpoints: Arc::new(tokio::sync::RwLock::new(
                start_checkpointer(&path, page_key).await,
            )),
            path,
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
impl Storage for SqlcipherStorage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, true)
    }

    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>> {
        let id = *id;
        self.worker
            .call(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
                     WHERE substr(r.id, 1, 8) = ?1 AND r.id = ?2"
                );
                Ok(query_records(
                    conn,
                    &sql,
                    rusqlite::params![id_prefix(&id), &id.0[..]],
                    "read record",
                )?
                .into_iter()
                .next())
            })
            .await
    }

    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        self.by_ids(ids, COLUMNS, |row| {
            let r = row_to_record(row)?;
            Ok((r.id, r))
        })
        .await
    }

    async fn get_states(&self, ids: &[RecordId]) -> Result<Vec<Option<RowState>>> {
        self.by_ids(ids, "r.id, r.deleted, s.pending_seq, s.sync", |row| {
            let get = |e| map_sql(e, "read record state");
            let id: Vec<u8> = row.get(0).map_err(get)?;
            let deleted: i64 = row.get(1).map_err(get)?;
            let pending: Option<i64> = row.get(2).map_err(get)?;
            let state = RowState {
                deleted: deleted != 0,
                pending_seq: pending.map(seq_from_sql).transpose()?,
                sync: row.get(3).map_err(get)?,
            };
            Ok((RecordId::from_slice(&id)?, state))
        })
        .await
    }

    async fn scan(
        &self,
        collection: &CollectionId,
        after: Option<ScanPos>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<(ScanPos, StoredRecord)>> {
        let collection = *collection;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Positions are rows (from 1); a position past every row has nothing after it.
        let Ok(after) = i64::try_from(after.map_or(0, |p| p.0)) else {
            return Ok(Vec::new());
        };
        self.worker
            .call(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS}, r.row FROM records AS r INDEXED BY records_by_collection \
                     {JOIN_STATE} WHERE substr(r.collection, 1, 4) = ?1 AND r.collection = ?2 \
                     AND r.row > ?3 {} ORDER BY r.row LIMIT ?4",
                    if include_deleted {
                        ""
                    } else {
                        "AND r.deleted = 0"
                    }
                );
                query_rows(
                    conn,
                    &sql,
                    rusqlite::params![&collection.0[..4], &collection.0[..], after, limit],
                    "scan records",
                    |row| {
                        let pos: i64 = row.get(6).map_err(|e| map_sql(e, "read row"))?;
                        let pos =
                            u64::try_from(pos).map_err(|_| Error::corrupt("a negative row id"))?;
                        Ok((ScanPos(pos), row_to_record(row)?))
                    },
                )
            })
            .await
    }

    async fn scan_all(&self, after: Option<&RecordId>, limit: usize) -> Result<Vec<StoredRecord>> {
        let after = after.copied();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.worker
            .call(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
                     WHERE substr(r.id, 1, 8) >= ?1 AND (substr(r.id, 1, 8) > ?1 OR r.id > ?2) \
                     ORDER BY substr(r.id, 1, 8), r.id LIMIT ?3"
                );
                let (prefix, after) = scan_start(after.as_ref());
                query_records(
                    conn,
                    &sql,
                    rusqlite::params![prefix, after, limit],
                    "scan records",
                )
            })
            .await
    }

    async fn outbox(&self, after_seq: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let after = seq_to_sql(after_seq)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .worker
            .call(move |conn| {
                let sql = format!(
                    "SELECT {COLUMNS} FROM record_state AS s INDEXED BY record_state_pending \
                     CROSS JOIN records AS r ON r.row = s.row \
                     WHERE s.pending_seq > ?1 ORDER BY s.pending_seq LIMIT ?2"
                );
                query_records(conn, &sql, rusqlite::params![after, limit], "read outbox")
            })
            .await?;
        rows.into_iter()
            .map(|record| {
                let seq = record
                    .pending_seq
                    .ok_or_else(|| Error::internal("outbox row without sequence"))?;
                Ok(OutboxEntry { seq, record })
            })
            .collect()
    }

    async fn outbox_len(&self) -> Result<u64> {
        self.worker
            .call(|conn| {
                let n: i64 = conn
                    .prepare_cached(
                        "SELECT count(*) FROM record_state WHERE pending_seq IS NOT NULL",
                    )
                    .and_then(|mut s| s.query_row([], |r| r.get(0)))
                    .map_err(|e| map_sql(e, "count outbox"))?;
                Ok(u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = key.to_owned();
        self.worker
            .call(move |conn| {
                conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
                    .and_then(|mut s| s.query_row([key.as_str()], |r| r.get(0)).optional())
                    .map_err(|e| map_sql(e, "read metadata"))
            })
            .await
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() && batch.guards.is_empty() {
            return Ok(());
        }
        let bytes = batch.put_bytes();
        self.worker
            .call(move |conn| commit_batch(conn, &batch))
            .await?;
        if let Some(c) = self.checkpoints.read().await.as_ref() {
            c.committed(bytes);
        }
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.worker.call(|conn| integrity(conn)).await
    }

    async fn rekey(&self, page_key: &SecretKey) -> Result<()> {
        // The checkpointer holds the old key: it stops first (a checkpoint under way
        // finishes), and a new one starts with the new key after the re-key.
        let mut checkpoints = self.checkpoints.write().await;
        if let Some(c) = checkpoints.take() {
            let _ = c.close().await;
        }
        let key = page_key.clone();
        let path = self.path.clone();
        let result = self
            .worker
            .call(move |conn| rekey_connection(conn, &path, &key))
            .await;
        match &result {
            Ok(()) => *checkpoints = start_checkpointer(&self.path, page_key).await,
            // The connection may hold the new key for writes and the old one for reads: no
            // further job may run on it. (Closing an already closed store is harmless.)
            Err(_) => {
                let _ = self.worker.close().await;
            }
        }
        result
    }

    async fn close(&self) -> Result<()> {
        // The checkpointer's connection first, so the store's, closing last, folds the WAL
        // into the file.
        if let Some(c) = self.checkpoints.write().await.take() {
            let _ = c.close().await;
        }
        self.worker.close().await
    }
}

/// The store's checkpointer, or `None` (logged) when its connection cannot be opened: the
/// writer then checkpoints by itself, as SQLite does by default.
async fn start_checkpointer(path: &Path, page_key: &SecretKey) -> Option<Checkpointer> {
    match Checkpointer::start(path, page_key).await {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(error = %e, "no background checkpointer; the writer checkpoints by itself");
            None
        }
    }
}

fn open_registered(
    opts: StorageOptions,
) -> futures::future::BoxFuture<'static, Result<Arc<dyn Storage>>> {
    Box::pin(async move {
        let path = opts
            .path
            .ok_or_else(|| Error::invalid("the sqlcipher storage needs a file path"))?;
        let key = opts.page_key.ok_or_else(|| {
            Error::invalid("the sqlcipher storage needs a page key (a subkey of the root key)")
        })?;
        let s = SqlcipherStorage::open(path, opts.create, &key).await?;
        Ok(Arc::new(s) as Arc<dyn Storage>)
    })
}

/// This storage's registry entry, for explicit registration where link-time registration does
/// not run.
pub const REGISTRATION: sync_core::registry::StorageRegistration =
    sync_core::registry::StorageRegistration {
        name: SqlcipherStorage::NAME,
        open: open_registered,
        needs_page_key: true,
    };

sync_core::register_storage!(
    SqlcipherStorage::NAME,
    open_registered,
    needs_page_key = true
);
