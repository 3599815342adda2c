//! # backend-sqlite
//!
//! hearth's [`Storage`] over SQLite through [sqlx](https://docs.rs/sqlx): WAL journal,
//! `synchronous = NORMAL` (durable across application crashes; a power loss can lose at most the
//! last transactions, never corrupt the file), and every [`Batch`] in one `BEGIN IMMEDIATE`
//! transaction.
//!
//! Connections: one writer, which every [`Storage::commit`] uses, and up to three readers for
//! everything else. In WAL mode a connection drops its whole page cache when it starts a read
//! and finds that another connection has committed since, so in a pool whose connections take
//! turns at writing no cache stays warm. The writer's cache (32 MiB) survives its own commits
//! and holds the random-keyed index that inserts land in; the readers' caches are emptied by
//! every commit anyway, so they are kept small (2 MiB). The bound on page-cache memory per store
//! is 32 + 3 × 2 MiB, whatever the number of records (docs/performance.md). Reads that come
//! just before a commit that replaces the rows read ([`Storage::get_many_for_commit`]) run on
//! the writer, whose cache holds what they descend, and the commit uses the row ids they found
//! instead of looking its puts up again, while nothing has committed since (`Lookups`). WAL
//! checkpoints run on a connection of their own, off the commit path (see
//! [`WalCheckpointer`]). A new file has pages of [`PAGE_SIZE`].
//!
//! The file holds only what the store gives it: blind ids (keyed hashes), sealed envelopes,
//! a deleted flag, the pending device sequence, and metadata whose secret parts are sealed.
//! No collection name, record key or value is ever written in plaintext.
//!
//! Schema (version 4, `PRAGMA user_version`; the file is marked with `PRAGMA application_id`
//! so a database that is not a hearth store is refused rather than modified):
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
//! A record is two rows with the same `row`: the envelope (about 1.3 KiB for a 1 KiB value)
//! in `records`, and what the sync engine changes without touching the envelope (the pending
//! write, the bookkeeping; a few dozen bytes) in `record_state`. Acknowledging a push changes
//! only `record_state`, so it rewrites a page of ~100 small rows instead of a page of three
//! envelopes: at a million records, acknowledgements wrote ~2.6 GB (WAL and checkpoint) in
//! version 2, where the whole row was one. `row` is an explicit `INTEGER PRIMARY KEY` because
//! `VACUUM` may renumber implicit row ids, and the two tables are joined on it.
//!
//! Blind ids are uniformly random, so every new record lands on a random page of an index over
//! them, and once the index outgrows the page cache each commit of a page of records dirties
//! about one index page per record, written to the WAL and again at the checkpoint. So only
//! one index is keyed by id, and it holds a short prefix: the first 8 bytes of the record id
//! (~12 bytes an entry, against ~42 for the full id of version 1), so it stays several times
//! smaller and more of it stays cached. A prefix is not unique: every lookup re-checks the full
//! id on the row, and a write finds the rows it replaces by prefix and compares full ids;
//! [`Storage::scan_all`] orders by `(prefix, id)`, which is the order of the full ids. A
//! collection's scan ([`Storage::scan`]) is in `row` order: its index holds the collection
//! id's first 4 bytes and, as every SQLite index does, the row, so the records a pull inserts
//! (numbered after the largest row) land at its end, and a walk's position (the row) survives
//! the removal of the record it stopped at. In version 3 that index was keyed by id prefix
//! too, and written at a random page per record like the other.
//!
//! Older files are migrated in one transaction when the store is opened: versions 1 (full-id
//! `UNIQUE` on `id`, `records_by_collection (collection, id)`) and 2 (one `records` table with
//! `pending_seq` and `sync`) are rebuilt, row ids kept
//! (`a_version_1_store_is_migrated_in_place`, `a_version_2_store_is_migrated_in_place`);
//! version 3 has its collection index rebuilt (`a_version_3_store_is_migrated_in_place`).
//!
//! Registered as `"sqlite"`.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

mod checkpoint;
pub use checkpoint::WalCheckpointer;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use sync_core::{
    Batch, Capabilities, CollectionId, Error, ErrorKind, OutboxEntry, RecordId, Result, RowState,
    ScanPos, Storage, StorageOptions, StoredRecord, storage::last_per_id,
};

/// `PRAGMA application_id` of hearth stores: "HRTH".
pub const APPLICATION_ID: i64 = 0x4852_5448;
/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 4;

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

/// Page cache of the writer connection, KiB (`PRAGMA cache_size` takes negative KiB).
const WRITER_CACHE_KIB: u32 = 32 * 1024;
/// Page cache of each reader connection, KiB.
const READER_CACHE_KIB: u32 = 2 * 1024;
/// Reader connections at most.
const READERS: u32 = 3;
/// Rows sqlx's SQLite worker thread may hand to the waiting task before it waits for the task
/// to take them (`SqliteConnectOptions::row_buffer_size`; sqlx's default is 50). Every query
/// here collects its whole result (`fetch_all`, `fetch_optional`: none streams), so a buffer
/// as large as the largest result costs no memory the result does not hold anyway, and spares
/// the ping-pong of a full buffer: with 50, the worker slept once the task fell behind and was
/// woken for each row the task took, two thread switches a row (docs/performance.md).
const ROW_BUFFER: usize = 4096;

/// Committed bytes (as [`Batch::put_bytes`] estimates them) after which the writer asks the
/// checkpointer to copy the WAL back into the database.
const CHECKPOINT_AFTER_BYTES: u64 = 8 * 1024 * 1024;
/// Page size of a new store file. Records of ~1 KiB fill 4 KiB pages (SQLite's default) three
/// at a time, and every commit writes, checksums and later checkpoints its pages one WAL frame
/// each; with 16 KiB pages a million pulled records took ~9 % less time to apply
/// (docs/performance.md). An existing file keeps the page size it was made with (a WAL
/// database cannot change it in place).
pub const PAGE_SIZE: u32 = 16 * 1024;

/// WAL bytes at which the writer checkpoints by itself, in its commit (SQLite's
/// `wal_autocheckpoint`, set in the file's pages): only reached when the checkpointer falls
/// behind.
const WRITER_AUTOCHECKPOINT_BYTES: i64 = 128 * 1024 * 1024;
/// Bytes of WAL file kept when SQLite restarts the log (`journal_size_limit`): twice the
/// writer's own checkpoint threshold. A long write (a pull's runs, a push's
/// acknowledgements) outruns the checkpointer and takes the WAL past that threshold (to
/// ~150 MiB at a million records); with 64 MiB, each restart truncated it and the next commits
/// grew it again, block by block, the kernel allocating and zeroing every page anew
/// (docs/performance.md). A store that is idle keeps at most this much WAL on disk.
const WAL_KEEP_BYTES: i64 = 2 * WRITER_AUTOCHECKPOINT_BYTES;

/// Storage in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStorage {
    /// Every commit, and the reads just before one ([`Storage::get_many_for_commit`]): one
    /// connection, so its page cache stays valid.
    writer: SqlitePool,
    /// Every read.
    readers: SqlitePool,
    checkpoints: Arc<WalCheckpointer>,
    /// What the writer last read for a commit, so that commit need not look its rows up again.
    lookups: Arc<Lookups>,
    path: PathBuf,
}

/// The rows [`Storage::get_many_for_commit`] found (or found absent), kept for the commit that
/// follows: a pulled run's commit looked every put up again by id (~8,000 index searches and a
/// round trip to the writer's thread a chunk), right after the engine had read the same ids.
///
/// The rows read stay true as long as nothing committed since, which the commit checks inside
/// its transaction, holding SQLite's write lock: no commit of this store ran or was running
/// since the read started ([`LookupState::generation`], [`LookupState::committing`]), the
/// writer's connection is the one that read ([`Lookups::connects`]: the pool replaces a
/// connection that failed), and no other connection (another store on the file, another
/// process) committed since (`PRAGMA data_version`, which on one connection changes exactly
/// when another connection commits). Otherwise, and for ids not read, the commit looks the
/// rows up itself.
#[derive(Debug, Default)]
struct Lookups {
    /// Connections the writer pool has opened.
    connects: Arc<AtomicU64>,
    state: Mutex<LookupState>,
}

#[derive(Debug, Default)]
struct LookupState {
    /// Moves at the start and at the end of every commit of this store.
    generation: u64,
    /// Commits started and not ended.
    committing: u32,
    /// The last read kept, if no commit started since.
    last: Option<ReadForCommit>,
}

/// One [`Storage::get_many_for_commit`]'s answer, with when it was read.
#[derive(Debug)]
struct ReadForCommit {
    /// [`LookupState::generation`] when the read started.
    generation: u64,
    /// [`Lookups::connects`] when the read started.
    connects: u64,
    /// `PRAGMA data_version` on the writer's connection before the read.
    data_version: i64,
    /// Row id of every id read; `None`: not stored.
    rows: HashMap<RecordId, Option<i64>>,
}

/// A commit of this store, from [`Lookups::start_commit`] until dropped (its end, whether it
/// committed, failed or was cancelled).
struct Committing<'a>(&'a Lookups);

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.generation += 1;
        state.committing = state.committing.saturating_sub(1);
    }
}

impl Lookups {
    fn lock(&self) -> std::sync::MutexGuard<'_, LookupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Where a read for a commit starts: (generation, connects), or `None` while a commit runs
    /// (what the read sees may be from before or after it).
    fn read_starts(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        (state.committing == 0).then(|| (state.generation, self.connects.load(Ordering::SeqCst)))
    }

    /// Keeps `read` for the next commit (in place of any read before it, so what is kept is
    /// at most one read), when no commit started while it was being read.
    fn keep(&self, read: ReadForCommit) {
        let mut state = self.lock();
        if state.committing == 0
            && state.generation == read.generation
            && self.connects.load(Ordering::SeqCst) == read.connects
        {
            state.last = Some(read);
        }
    }

    /// Starts a commit: takes the last read, if nothing committed since it started (the
    /// commit after this one cannot use it), and counts the commit as running until the
    /// returned guard drops.
    fn start_commit(&self) -> (Committing<'_>, Option<ReadForCommit>) {
        let mut state = self.lock();
        let generation = state.generation;
        let read = state.last.take().filter(|l| l.generation == generation);
        state.generation += 1;
        state.committing += 1;
        (Committing(self), read)
    }
}

/// Maps a sqlx error to hearth's error, by SQLite result code. The message names the operation;
/// SQLite's own text (which never contains our bound values) is kept as the cause.
pub fn map_sqlx(e: sqlx::Error, what: &'static str) -> Error {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().and_then(|c| c.parse::<i64>().ok()).unwrap_or(1);
            let (kind, msg, temporary) = match code & 0xff {
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
                    ErrorKind::Corrupt,
                    "the file is not a hearth store (not a SQLite database, or encrypted with another key)",
                    false,
                ),
                _ => (ErrorKind::Storage, what, false),
            };
            let err = Error::new(kind, format!("{what}: {msg}")).with_source(e);
            if temporary { err.temporary() } else { err }
        }
        sqlx::Error::Io(_) => Error::new(ErrorKind::Io, what).with_source(e),
        sqlx::Error::PoolTimedOut => Error::new(ErrorKind::Unavailable, what).with_source(e),
        sqlx::Error::PoolClosed => {
            Error::new(ErrorKind::Storage, format!("{what}: the store is closed"))
        }
        _ => Error::new(ErrorKind::Storage, what).with_source(e),
    }
}

fn row_to_record(row: &SqliteRow) -> Result<StoredRecord> {
    let id: Vec<u8> = row.try_get("id").map_err(|e| map_sqlx(e, "read id"))?;
    let collection: Vec<u8> = row
        .try_get("collection")
        .map_err(|e| map_sqlx(e, "read collection"))?;
    let deleted: i64 = row
        .try_get("deleted")
        .map_err(|e| map_sqlx(e, "read deleted"))?;
    let pending: Option<i64> = row
        .try_get("pending_seq")
        .map_err(|e| map_sqlx(e, "read pending_seq"))?;
    let envelope: Vec<u8> = row
        .try_get("envelope")
        .map_err(|e| map_sqlx(e, "read envelope"))?;
    let sync: Vec<u8> = row.try_get("sync").map_err(|e| map_sqlx(e, "read sync"))?;
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

/// Rows per chunk of a commit's multi-row statements (at most 5 parameters a row in one
/// statement; SQLite allows 32,766). Without statistics, SQLite plans the statements that
/// update `record_state` from a materialized table as a search per row up to a few hundred
/// rows, but at 1,024 as a scan of `record_state`; the plan test below checks this size.
const PUT_CHUNK: usize = 128;

/// The columns of a [`StoredRecord`], from `records AS r` joined with `record_state AS s`.
const COLUMNS: &str = "r.id AS id, r.collection AS collection, r.deleted AS deleted, \
     s.pending_seq AS pending_seq, r.envelope AS envelope, s.sync AS sync";

/// A record's state row, joined to its `records` row `r` (which the query finds first).
const JOIN_STATE: &str = "CROSS JOIN record_state AS s ON s.row = r.row";

// The multi-row statements of a commit, by number of rows. Each finds its rows through an index
// or by row id and never scans a table: SQLite's planner, without statistics, would rather
// scan `records` once and look the VALUES rows up in an automatic index than look each VALUES
// row up in `records_by_id`, even with `INDEXED BY` (a full scan of that index satisfies it),
// so a join with VALUES is either by row id or a CROSS JOIN with VALUES on the left, which
// fixes the loop order. The tests below check every plan.

/// The row ids of up to `n` rows by id prefix (the caller matches the full ids).
fn row_ids_sql(n: usize) -> String {
    let placeholders = vec!["?"; n].join(", ");
    format!(
        "SELECT row, id FROM records INDEXED BY records_by_id WHERE substr(id, 1, 8) IN ({placeholders})"
    )
}

/// Inserts `n` new records with the row ids given: (row, id, collection, deleted, envelope)
/// each.
fn insert_records_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?, ?, ?)"; n].join(", ");
    format!("INSERT INTO records (row, id, collection, deleted, envelope) VALUES {values}")
}

/// Inserts the state rows of `n` new records: (row, pending_seq, sync) each.
fn insert_states_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    format!("INSERT INTO record_state (row, pending_seq, sync) VALUES {values}")
}

/// Replaces the envelopes of `n` rows by row id: (row, deleted, envelope) each.
fn put_update_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    format!(
        "UPDATE records SET deleted = v.column2, envelope = v.column3 \
         FROM (VALUES {values}) AS v WHERE records.row = v.column1"
    )
}

/// Replaces the state of `n` rows by row id: (row, pending_seq, sync) each.
fn state_update_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    format!(
        "UPDATE record_state SET pending_seq = v.column2, sync = v.column3 \
         FROM (VALUES {values}) AS v WHERE record_state.row = v.column1"
    )
}

/// The rows of the records among `n` (id prefix, id, ...) tuples, found by id, as a
/// materialized table `m (row, column3, ...)` of the tuples' further columns: the prefix of a
/// statement that updates `record_state` `FROM m`. Materialized, so SQLite looks up each
/// tuple's record and then its state by row id, instead of scanning the states.
fn rows_by_id_cte(n: usize, extra: &[&str]) -> String {
    let tuple = format!("(?, ?{})", ", ?".repeat(extra.len()));
    let values = vec![tuple.as_str(); n].join(", ");
    let columns: String = extra
        .iter()
        .enumerate()
        .map(|(i, name)| format!(", v.column{} AS {name}", i + 3))
        .collect();
    format!(
        "WITH m AS MATERIALIZED (SELECT r.row AS row{columns} FROM (VALUES {values}) AS v \
         CROSS JOIN records AS r INDEXED BY records_by_id \
         ON substr(r.id, 1, 8) = v.column1 AND r.id = v.column2) "
    )
}

/// Sets the bookkeeping of the stored rows among `n` (id prefix, id, sync) tuples; ids that
/// are not stored are left out.
fn sync_update_sql(n: usize) -> String {
    format!(
        "{}UPDATE record_state SET sync = m.sync FROM m WHERE record_state.row = m.row",
        rows_by_id_cte(n, &["sync"])
    )
}

/// Acknowledges the stored rows among `n` (id prefix, id, seq, sync) tuples and sets their
/// bookkeeping; the pending write is cleared where its sequence still matches.
fn ack_sync_update_sql(n: usize) -> String {
    format!(
        "{}UPDATE record_state SET pending_seq = CASE WHEN record_state.pending_seq = m.seq \
         THEN NULL ELSE record_state.pending_seq END, sync = m.sync FROM m \
         WHERE record_state.row = m.row",
        rows_by_id_cte(n, &["seq", "sync"])
    )
}

/// Acknowledges the rows among `n` (seq, id, sync) tuples whose pending write is still that
/// sequence, and sets their bookkeeping. Found through the pending sequences, whose index is
/// ordered as the outbox was read, not through the random-keyed ids; the rows left out (no
/// longer pending at that sequence) take [`ack_sync_update_sql`].
fn ack_pending_update_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    format!(
        "WITH m AS MATERIALIZED (SELECT s.row AS row, v.column3 AS sync FROM (VALUES {values}) AS v \
         CROSS JOIN record_state AS s INDEXED BY record_state_pending ON s.pending_seq = v.column1 \
         CROSS JOIN records AS r ON r.row = s.row AND r.id = v.column2) \
         UPDATE record_state SET pending_seq = NULL, sync = m.sync FROM m \
         WHERE record_state.row = m.row"
    )
}

/// Clears the pending write of `n` rows whose pending sequence still matches: (id prefix, id,
/// seq) each.
fn ack_sql(n: usize) -> String {
    let values = vec!["(?, ?, ?)"; n].join(", ");
    format!(
        "UPDATE record_state SET pending_seq = NULL WHERE row IN (SELECT r.row \
         FROM (VALUES {values}) AS v CROSS JOIN records AS r INDEXED BY records_by_id \
         ON substr(r.id, 1, 8) = v.column1 AND r.id = v.column2 \
         CROSS JOIN record_state AS s ON s.row = r.row AND s.pending_seq = v.column3)"
    )
}

/// The row ids of the stored rows among `ids` (one statement: at most [`PUT_CHUNK`] ids).
async fn row_ids<'a>(
    tx: &mut Transaction<'static, Sqlite>,
    ids: impl Iterator<Item = &'a RecordId> + Clone,
) -> Result<std::collections::HashMap<RecordId, i64>> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(row_ids_sql(ids.clone().count())));
    for id in ids {
        q = q.bind(id_prefix(id));
    }
    let found = q
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| map_sqlx(e, "find records"))?;
    let mut existing = std::collections::HashMap::with_capacity(found.len());
    // A prefix may match other records too; the caller looks up the ids it has.
    for row in &found {
        let rowid: i64 = row.try_get(0).map_err(|e| map_sqlx(e, "read row id"))?;
        let id: Vec<u8> = row.try_get(1).map_err(|e| map_sqlx(e, "read id"))?;
        existing.insert(RecordId::from_slice(&id)?, rowid);
    }
    Ok(existing)
}

/// `PRAGMA data_version` of the connection `conn` runs on: it changes exactly when another
/// connection has committed to the file since the last time this connection read it.
async fn data_version<'c>(conn: impl sqlx::SqliteExecutor<'c>) -> Result<i64> {
    sqlx::query_scalar("PRAGMA data_version")
        .fetch_one(conn)
        .await
        .map_err(|e| map_sqlx(e, "read data version"))
}

impl SqliteStorage {
    /// Registry name.
    pub const NAME: &'static str = "sqlite";

    /// `columns` of the rows with the given ids, in the same order (`None` where absent), read
    /// on `pool` by `read` into (id, value): one statement per 500 ids, by id prefix.
    async fn by_ids<T: Clone>(
        pool: &SqlitePool,
        ids: &[RecordId],
        columns: &str,
        read: impl Fn(&SqliteRow) -> Result<(RecordId, T)>,
    ) -> Result<Vec<Option<T>>> {
        // SQLite allows 32,766 bound parameters; stay well below in one statement.
        const CHUNK: usize = 500;
        let mut found = std::collections::HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {columns} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
                 WHERE substr(r.id, 1, 8) IN ({placeholders})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id_prefix(id));
            }
            let rows = q
                .fetch_all(pool)
                .await
                .map_err(|e| map_sqlx(e, "read records"))?;
            // A prefix may match other records too; only the ids asked for count.
            for row in &rows {
                let (id, value) = read(row)?;
                found.insert(id, value);
            }
        }
        Ok(ids.iter().map(|id| found.get(id).cloned()).collect())
    }

    /// Opens the store file at `path`, creating it when `create` is true.
    ///
    /// Errors: a missing file without `create` is [`ErrorKind::NotFound`]; a missing or
    /// unwritable directory is [`ErrorKind::Io`]; a file that is not a hearth store is
    /// [`ErrorKind::Corrupt`] and is left untouched; a newer schema is [`ErrorKind::Unsupported`].
    pub async fn open(path: impl AsRef<Path>, create: bool) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let exists = path.exists();
        if !exists && !create {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no store at {}", path.display()),
            ));
        }
        if !exists {
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
        } else {
            // Refuse anything that is not a hearth store before anything writes to it: first
            // the file header, then a read-only look at the schema (setting WAL mode on another
            // app's database would already change its header).
            check_sqlite_header(&path)?;
            probe_read_only(&path, create).await?;
        }
        let opts = |cache_kib: u32| {
            SqliteConnectOptions::new()
                .filename(&path)
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(false)
                // Blind ids are uniformly random, so every insert lands on a random index page:
                // the writer's page cache and checkpoints after ~8 MiB of rows (by the
                // checkpointer; by the writer itself only at 128 MiB of WAL; the WAL file is
                // truncated back to at most `WAL_KEEP_BYTES`) let a page dirtied by many
                // batches be written back once instead of once per checkpoint. See
                // docs/performance.md.
                // A new file gets pages of `PAGE_SIZE`; an existing one keeps its own.
                .page_size(PAGE_SIZE)
                .pragma("cache_size", format!("-{cache_kib}"))
                .pragma("journal_size_limit", WAL_KEEP_BYTES.to_string())
                .row_buffer_size(ROW_BUFFER)
        };
        // The writer is opened first: it creates the file and switches it to WAL. Its one
        // connection is kept for the store's life (sqlx would replace it after 30 minutes, or
        // 10 idle, emptying its page cache); the pool opens another only after an error.
        let lookups = Arc::new(Lookups::default());
        let connects = Arc::clone(&lookups.connects);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .after_connect(move |conn, _| {
                connects.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    // The writer's own checkpoint threshold in the file's pages (a file made
                    // before `PAGE_SIZE` was raised keeps its 4 KiB pages).
                    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                        .fetch_one(&mut *conn)
                        .await?;
                    let pages = WRITER_AUTOCHECKPOINT_BYTES / page.max(512);
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "PRAGMA wal_autocheckpoint = {pages}"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts(WRITER_CACHE_KIB))
            .await
            .map_err(|e| map_sqlx(e, "open store"))?;
        let readers = match SqlitePoolOptions::new()
            .max_connections(READERS)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts(READER_CACHE_KIB))
            .await
        {
            Ok(readers) => readers,
            Err(e) => {
                writer.close().await;
                return Err(map_sqlx(e, "open store"));
            }
        };
        // Connects on its first checkpoint, after the schema exists.
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(opts(READER_CACHE_KIB));
        let storage = Self {
            writer,
            readers,
            checkpoints: Arc::new(WalCheckpointer::start(checkpointer, CHECKPOINT_AFTER_BYTES)),
            lookups,
            path,
        };
        if let Err(e) = storage.prepare(create).await {
            storage.close_pools().await;
            return Err(e);
        }
        Ok(storage)
    }

    async fn close_pools(&self) {
        self.checkpoints.stop().await;
        self.readers.close().await;
        self.writer.close().await;
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer's connection pool (one connection), for tools and benchmarks that need raw
    /// access. Writing through it bypasses the store: only for files no store has open.
    pub fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    async fn prepare(&self, create: bool) -> Result<()> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "open store"))?;
        match schema_state(&mut tx).await? {
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
                    sqlx::query(stmt)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "migrate the store's schema"))?;
                }
                // PRAGMAs cannot take bound parameters; the version is our constant.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "PRAGMA user_version = {SCHEMA_VERSION}"
                )))
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "migrate the store's schema"))?;
                return tx
                    .commit()
                    .await
                    .map_err(|e| map_sqlx(e, "migrate the store's schema"));
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
            sqlx::query(stmt)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "create schema"))?;
        }
        // PRAGMAs cannot take bound parameters; both values are our constants.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA application_id = {APPLICATION_ID}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "create schema"))?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "PRAGMA user_version = {SCHEMA_VERSION}"
        )))
        .execute(&mut *tx)
        .await
        .map_err(|e| map_sqlx(e, "create schema"))?;
        tx.commit().await.map_err(|e| map_sqlx(e, "create schema"))
    }

    /// Writes `batch` in `tx`. `known`: the row id (`None`: not stored) of ids read since the
    /// last commit ([`Lookups`]), which the puts need not look up again.
    async fn apply(
        tx: &mut Transaction<'static, Sqlite>,
        batch: Batch,
        known: Option<HashMap<RecordId, Option<i64>>>,
    ) -> Result<()> {
        for (key, expected) in &batch.guards {
            let actual: Option<Vec<u8>> =
                sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
                    .bind(key.as_str())
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "check guard"))?;
            if actual.as_ref() != expected.as_ref() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the store was changed by another writer; reopen it",
                ));
            }
        }
        // Puts: each chunk of up to 128 rows is one SELECT of the rows it replaces (by id
        // prefix, matched on the full id here), two multi-row UPDATEs of those by row id (the
        // envelope, the state) and two multi-row INSERTs of the rest: at most five statements
        // per 128 rows, since sqlx runs SQLite on a worker thread and every statement is a
        // round trip to it. Within a batch a later put of the same id replaces the earlier
        // one. The collection is left out of the update: a blind id is derived from its
        // collection, so it never changes, and an update that names an indexed column rewrites
        // that index's entry. New rows are numbered here, after the largest row id, so the
        // two rows of a record are inserted with the same one.
        // The batch is ours: its envelopes and bookkeeping are moved into the statements, not
        // copied (sqlx copies a borrowed blob into its arguments; on a pulled page that was a
        // ~1 KiB copy a record on the engine's thread).
        let mut puts = last_per_id(batch.puts, |r| r.id);
        let mut next_row: Option<i64> = None;
        for chunk in puts.chunks_mut(PUT_CHUNK) {
            // Looked up again only if some put of the chunk was not read for this commit.
            let read = known.as_ref().and_then(|k| {
                chunk
                    .iter()
                    .map(|r| k.get(&r.id).map(|row| row.map(|row| (r.id, row))))
                    .collect::<Option<Vec<_>>>()
            });
            let existing: HashMap<RecordId, i64> = match read {
                Some(rows) => rows.into_iter().flatten().collect(),
                None => row_ids(tx, chunk.iter().map(|r| &r.id)).await?,
            };
            let (mut updates, mut inserts): (Vec<&mut StoredRecord>, Vec<&mut StoredRecord>) =
                chunk.iter_mut().partition(|r| existing.contains_key(&r.id));
            if !updates.is_empty() {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(put_update_sql(updates.len())));
                for r in &mut updates {
                    q = q
                        .bind(existing.get(&r.id).copied())
                        .bind(i64::from(r.deleted))
                        .bind(std::mem::take(&mut r.envelope));
                }
                q.execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "write records"))?;
                let mut q = sqlx::query(sqlx::AssertSqlSafe(state_update_sql(updates.len())));
                for r in &mut updates {
                    q = q
                        .bind(existing.get(&r.id).copied())
                        .bind(r.pending_seq.map(seq_to_sql).transpose()?)
                        .bind(std::mem::take(&mut r.sync));
                }
                q.execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "write records"))?;
            }
            if !inserts.is_empty() {
                let first = match next_row {
                    Some(row) => row,
                    None => {
                        let last: i64 =
                            sqlx::query_scalar("SELECT coalesce(max(row), 0) FROM records")
                                .fetch_one(&mut **tx)
                                .await
                                .map_err(|e| map_sqlx(e, "write records"))?;
                        last.checked_add(1)
                            .ok_or_else(|| Error::corrupt("row ids exhausted"))?
                    }
                };
                let rows = (first..).take(inserts.len());
                let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_records_sql(inserts.len())));
                for (row, r) in rows.clone().zip(&mut inserts) {
                    q = q
                        .bind(row)
                        .bind(&r.id.0[..])
                        .bind(&r.collection.0[..])
                        .bind(i64::from(r.deleted))
                        .bind(std::mem::take(&mut r.envelope));
                }
                q.execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "write records"))?;
                let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_states_sql(inserts.len())));
                for (row, r) in rows.zip(&mut inserts) {
                    q = q
                        .bind(row)
                        .bind(r.pending_seq.map(seq_to_sql).transpose()?)
                        .bind(std::mem::take(&mut r.sync));
                }
                q.execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "write records"))?;
                next_row = Some(first + inserts.len() as i64);
            }
        }
        for id in &batch.removes {
            let row: Option<i64> = sqlx::query_scalar(
                "DELETE FROM records INDEXED BY records_by_id WHERE substr(id, 1, 8) = ? AND id = ? RETURNING row",
            )
            .bind(id_prefix(id))
            .bind(&id.0[..])
            .fetch_optional(&mut **tx)
            .await
            .map_err(|e| map_sqlx(e, "remove record"))?;
            if let Some(row) = row {
                sqlx::query("DELETE FROM record_state WHERE row = ?")
                    .bind(row)
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "remove record"))?;
            }
        }
        // An acknowledgement comes with the row's new bookkeeping (the sync engine sends both):
        // those rows are found once and updated by one statement per chunk, each row written
        // once. The rest (an id acknowledged twice, bookkeeping or acknowledgement alone) go
        // the separate ways below; the two sets share no id, so their order does not matter.
        let mut acked = std::collections::HashMap::with_capacity(batch.acks.len());
        for (id, seq) in &batch.acks {
            // `None`: acknowledged more than once, left to the separate ways.
            acked
                .entry(*id)
                .and_modify(|s: &mut Option<u64>| *s = None)
                .or_insert(Some(*seq));
        }
        let (both, syncs): (Vec<_>, Vec<_>) = last_per_id(batch.syncs, |(id, _)| *id)
            .into_iter()
            .partition(|(id, _)| matches!(acked.get(id), Some(Some(_))));
        let joined: std::collections::HashSet<RecordId> = both.iter().map(|(id, _)| *id).collect();
        let acks: Vec<(RecordId, u64)> = batch
            .acks
            .into_iter()
            .filter(|(id, _)| !joined.contains(id))
            .collect();
        // One statement per chunk finds the rows and updates them: nothing comes back
        // (sqlx hands every returned row from its worker thread to this task one at a time,
        // which cost more than the lookups). The rows are found by their pending sequence;
        // only a chunk in which some row is no longer pending at its sequence goes again by
        // id (which updates the rows already done to what they are).
        for chunk in both.chunks(PUT_CHUNK) {
            let chunk = chunk
                .iter()
                .map(|(id, sync)| match acked.get(id) {
                    Some(Some(seq)) => Ok((id, seq_to_sql(*seq)?, &sync[..])),
                    _ => Err(Error::internal(
                        "an acknowledgement joined to bookkeeping went missing",
                    )),
                })
                .collect::<Result<Vec<_>>>()?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(ack_pending_update_sql(chunk.len())));
            for (id, seq, sync) in &chunk {
                q = q.bind(*seq).bind(&id.0[..]).bind(*sync);
            }
            let done = q
                .execute(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "acknowledge writes"))?
                .rows_affected();
            if done == chunk.len() as u64 {
                continue;
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(ack_sync_update_sql(chunk.len())));
            for (id, seq, sync) in &chunk {
                q = q.bind(id_prefix(id)).bind(&id.0[..]).bind(*seq).bind(*sync);
            }
            q.execute(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "acknowledge writes"))?;
        }
        // Acknowledgements: one UPDATE per chunk. Several acknowledgements of one id differ in
        // their sequence, and at most one matches the row's.
        for chunk in acks.chunks(PUT_CHUNK) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(ack_sql(chunk.len())));
            for (id, seq) in chunk {
                q = q
                    .bind(id_prefix(id))
                    .bind(&id.0[..])
                    .bind(seq_to_sql(*seq)?);
            }
            q.execute(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "acknowledge write"))?;
        }
        // Bookkeeping: one statement per chunk, as above; ids not stored are left out.
        for chunk in syncs.chunks(PUT_CHUNK) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sync_update_sql(chunk.len())));
            for (id, sync) in chunk {
                q = q.bind(id_prefix(id)).bind(&id.0[..]).bind(&sync[..]);
            }
            q.execute(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "write sync state"))?;
        }
        for (key, value) in &batch.meta {
            match value {
                Some(v) => sqlx::query(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key.as_str())
                .bind(&v[..])
                .execute(&mut **tx)
                .await,
                None => sqlx::query("DELETE FROM meta WHERE key = ?")
                    .bind(key.as_str())
                    .execute(&mut **tx)
                    .await,
            }
            .map_err(|e| map_sqlx(e, "write metadata"))?;
        }
        Ok(())
    }
}

enum SchemaState {
    /// A hearth store of this schema version (at most [`SCHEMA_VERSION`]).
    Ours(i64),
    Empty,
}

/// Classifies a database: a hearth store (of a schema we can read), an empty database, or
/// something else (an error).
async fn schema_state(conn: &mut sqlx::SqliteConnection) -> Result<SchemaState> {
    let app_id: i64 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "read application id"))?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "read schema version"))?;
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| map_sqlx(e, "read schema"))?;
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
            "the file is a SQLite database but not a hearth store; refusing to modify it",
        ));
    }
    Ok(SchemaState::Empty)
}

async fn probe_read_only(path: &Path, create: bool) -> Result<()> {
    use sqlx::Connection;
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(5));
    let mut conn = sqlx::SqliteConnection::connect_with(&opts)
        .await
        .map_err(|e| map_sqlx(e, "open store"))?;
    let state = schema_state(&mut conn).await;
    let _ = conn.close().await;
    match state? {
        SchemaState::Empty if !create => Err(Error::new(
            ErrorKind::NotFound,
            "the file is an empty database, not a hearth store",
        )),
        _ => Ok(()),
    }
}

/// Reads the first 16 bytes: a SQLite file starts with "SQLite format 3\0"; an empty file is
/// one SQLite will initialise. Anything else is refused untouched. (A SQLCipher file has no
/// plaintext header and is refused here too: open it with the `sqlcipher` storage.)
fn check_sqlite_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            _ => ErrorKind::Io,
        };
        Error::new(kind, format!("cannot open {}", path.display())).with_source(e)
    })?;
    let mut header = [0u8; 16];
    let mut read = 0;
    while read < header.len() {
        match f.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => {
                return Err(
                    Error::new(ErrorKind::Io, format!("cannot read {}", path.display()))
                        .with_source(e),
                );
            }
        }
    }
    if read == 0 || &header[..read.min(16)] == b"SQLite format 3\0" {
        return Ok(());
    }
    Err(Error::corrupt(format!(
        "{} is not a hearth store (not a SQLite database); refusing to modify it",
        path.display()
    )))
}

#[async_trait]
impl Storage for SqliteStorage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(true, false)
    }

    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
             WHERE substr(r.id, 1, 8) = ? AND r.id = ?"
        )))
        .bind(id_prefix(id))
        .bind(&id.0[..])
        .fetch_optional(&self.readers)
        .await
        .map_err(|e| map_sqlx(e, "read record"))?;
        row.as_ref().map(row_to_record).transpose()
    }

    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        Self::by_ids(&self.readers, ids, COLUMNS, |row| {
            let r = row_to_record(row)?;
            Ok((r.id, r))
        })
        .await
    }

    /// On the writer: its page cache holds the index pages the lookups descend, and the pages
    /// the commit that follows writes (a reader's cache is emptied by every commit, so it
    /// would read them all from the file again).
    async fn get_many_for_commit(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        let start = self.lookups.read_starts();
        let data_version = match start {
            Some(_) => Some(data_version(&self.writer).await?),
            None => None,
        };
        let found = Self::by_ids(
            &self.writer,
            ids,
            &format!("{COLUMNS}, r.row AS row"),
            |row| {
                let r = row_to_record(row)?;
                let rowid: i64 = row.try_get("row").map_err(|e| map_sqlx(e, "read row id"))?;
                Ok((r.id, (rowid, r)))
            },
        )
        .await?;
        if let (Some((generation, connects)), Some(data_version)) = (start, data_version) {
            let rows = ids
                .iter()
                .zip(&found)
                .map(|(id, f)| (*id, f.as_ref().map(|(row, _)| *row)))
                .collect();
            self.lookups.keep(ReadForCommit {
                generation,
                connects,
                data_version,
                rows,
            });
        }
        Ok(found.into_iter().map(|f| f.map(|(_, r)| r)).collect())
    }

    async fn get_states(&self, ids: &[RecordId]) -> Result<Vec<Option<RowState>>> {
        Self::by_ids(
            &self.readers,
            ids,
            "r.id, r.deleted, s.pending_seq, s.sync",
            |row| {
                let get = |e| map_sqlx(e, "read record state");
                let id: Vec<u8> = row.try_get(0).map_err(get)?;
                let deleted: i64 = row.try_get(1).map_err(get)?;
                let pending: Option<i64> = row.try_get(2).map_err(get)?;
                let state = RowState {
                    deleted: deleted != 0,
                    pending_seq: pending.map(seq_from_sql).transpose()?,
                    sync: row.try_get(3).map_err(get)?,
                };
                Ok((RecordId::from_slice(&id)?, state))
            },
        )
        .await
    }

    async fn scan(
        &self,
        collection: &CollectionId,
        after: Option<ScanPos>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<(ScanPos, StoredRecord)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // Positions are rows (from 1); a position past every row has nothing after it.
        let Ok(after) = i64::try_from(after.map_or(0, |p| p.0)) else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT r.row AS row, {COLUMNS} FROM records AS r INDEXED BY records_by_collection \
             {JOIN_STATE} WHERE substr(r.collection, 1, 4) = ? AND r.collection = ? \
             AND r.row > ? {} ORDER BY r.row LIMIT ?",
            if include_deleted {
                ""
            } else {
                "AND r.deleted = 0"
            }
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&collection.0[..4])
            .bind(&collection.0[..])
            .bind(after)
            .bind(limit)
            .fetch_all(&self.readers)
            .await
            .map_err(|e| map_sqlx(e, "scan records"))?;
        rows.iter()
            .map(|row| {
                let pos: i64 = row.try_get("row").map_err(|e| map_sqlx(e, "read row"))?;
                let pos = u64::try_from(pos).map_err(|_| Error::corrupt("a negative row id"))?;
                Ok((ScanPos(pos), row_to_record(row)?))
            })
            .collect()
    }

    async fn scan_all(&self, after: Option<&RecordId>, limit: usize) -> Result<Vec<StoredRecord>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (prefix, after) = scan_start(after);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
             WHERE substr(r.id, 1, 8) >= ? AND (substr(r.id, 1, 8) > ? OR r.id > ?) \
             ORDER BY substr(r.id, 1, 8), r.id LIMIT ?"
        )))
        .bind(prefix)
        .bind(prefix)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| map_sqlx(e, "scan records"))?;
        rows.iter().map(row_to_record).collect()
    }

    async fn outbox(&self, after_seq: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM record_state AS s INDEXED BY record_state_pending \
             CROSS JOIN records AS r ON r.row = s.row \
             WHERE s.pending_seq > ? ORDER BY s.pending_seq LIMIT ?"
        )))
        .bind(seq_to_sql(after_seq)?)
        .bind(limit)
        .fetch_all(&self.readers)
        .await
        .map_err(|e| map_sqlx(e, "read outbox"))?;
        rows.iter()
            .map(|row| {
                let record = row_to_record(row)?;
                let seq = record
                    .pending_seq
                    .ok_or_else(|| Error::internal("outbox row without sequence"))?;
                Ok(OutboxEntry { seq, record })
            })
            .collect()
    }

    async fn outbox_len(&self) -> Result<u64> {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM record_state WHERE pending_seq IS NOT NULL")
                .fetch_one(&self.readers)
                .await
                .map_err(|e| map_sqlx(e, "count outbox"))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.readers)
            .await
            .map_err(|e| map_sqlx(e, "read metadata"))
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        if batch.is_empty() && batch.guards.is_empty() {
            return Ok(());
        }
        let (_committing, read) = self.lookups.start_commit();
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "begin transaction"))?;
        let bytes = batch.put_bytes();
        // The rows read for this commit hold if the writer's connection is the one that read
        // them and no other connection has committed since (this one holds the write lock now).
        let known = match read {
            Some(read) if read.connects == self.lookups.connects.load(Ordering::SeqCst) => {
                (data_version(&mut *tx).await? == read.data_version).then_some(read.rows)
            }
            _ => None,
        };
        match Self::apply(&mut tx, batch, known).await {
            Ok(()) => {
                tx.commit().await.map_err(|e| map_sqlx(e, "commit"))?;
                self.checkpoints.committed(bytes);
                Ok(())
            }
            Err(e) => {
                // Dropping the transaction rolls back too; an explicit rollback reports failures.
                if let Err(rb) = tx.rollback().await {
                    tracing::warn!(error = %rb, "rollback after a failed batch failed");
                }
                Err(e)
            }
        }
    }

    async fn check(&self) -> Result<()> {
        let rows: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_all(&self.readers)
            .await
            .map_err(|e| map_sqlx(e, "integrity check"))?;
        if rows.len() == 1 && rows[0] == "ok" {
            Ok(())
        } else {
            Err(Error::corrupt(format!(
                "integrity check found {} problem(s)",
                rows.len()
            )))
        }
    }

    async fn close(&self) -> Result<()> {
        self.close_pools().await;
        Ok(())
    }
}

/// Bytes of heap SQLite holds in this process now (page caches, prepared statements, schemas):
/// every SQLite database of the process counts, whichever crate opened it, since they all link
/// the one `libsqlite3-sys`.
#[allow(unsafe_code)] // One FFI call with no arguments; see SAFETY.
pub fn sqlite_memory_used() -> u64 {
    // SAFETY: `sqlite3_memory_used` takes no arguments and only reads SQLite's global counters,
    // which are initialised statically; it is safe to call from any thread at any time.
    let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
    u64::try_from(used).unwrap_or(0)
}

/// The most heap SQLite has held in this process at once since the last reset (see
/// [`sqlite_memory_used`]); `reset` starts a new high-water mark at the current use.
#[allow(unsafe_code)] // One FFI call taking a flag; see SAFETY.
pub fn sqlite_memory_highwater(reset: bool) -> u64 {
    // SAFETY: as above; the argument is a plain flag.
    let peak = unsafe { libsqlite3_sys::sqlite3_memory_highwater(i32::from(reset)) };
    u64::try_from(peak).unwrap_or(0)
}

/// The most heap SQLite's page caches have held in this process at once since the last reset
/// (a part of [`sqlite_memory_highwater`]: the rest is prepared statements, schemas and
/// scratch); `reset` starts a new high-water mark at the current use.
#[allow(unsafe_code)] // One FFI call with two out-pointers to locals; see SAFETY.
pub fn sqlite_page_cache_highwater(reset: bool) -> u64 {
    let mut current: i64 = 0;
    let mut peak: i64 = 0;
    // SAFETY: `sqlite3_status64` reads one of SQLite's global counters into the two pointers,
    // which point to live, writable, aligned `i64` locals; it is thread-safe (it takes SQLite's
    // status mutex). On an unknown operation it returns an error and writes nothing.
    let rc = unsafe {
        libsqlite3_sys::sqlite3_status64(
            libsqlite3_sys::SQLITE_STATUS_PAGECACHE_OVERFLOW,
            &mut current,
            &mut peak,
            i32::from(reset),
        )
    };
    if rc != libsqlite3_sys::SQLITE_OK {
        return 0;
    }
    u64::try_from(peak).unwrap_or(0)
}

fn open_registered(
    opts: StorageOptions,
) -> futures::future::BoxFuture<'static, Result<Arc<dyn Storage>>> {
    Box::pin(async move {
        let path = opts
            .path
            .ok_or_else(|| Error::invalid("the sqlite storage needs a file path"))?;
        let s = SqliteStorage::open(path, opts.create).await?;
        Ok(Arc::new(s) as Arc<dyn Storage>)
    })
}

/// This storage's registry entry, for explicit registration where link-time registration does
/// not run.
pub const REGISTRATION: sync_core::registry::StorageRegistration =
    sync_core::registry::StorageRegistration {
        name: SqliteStorage::NAME,
        open: open_registered,
        needs_page_key: false,
    };

sync_core::register_storage!(SqliteStorage::NAME, open_registered);

#[cfg(test)]
mod plans {
    use sqlx::Row;
    use sqlx::sqlite::SqlitePoolOptions;

    use super::{
        COLUMNS, JOIN_STATE, PUT_CHUNK, RECORDS_INDEXES, RECORDS_TABLE, STATE_TABLE,
        ack_pending_update_sql, ack_sql, ack_sync_update_sql, put_update_sql, row_ids_sql,
        state_update_sql, sync_update_sql,
    };

    /// SQLite's plan for `sql`, one line per step.
    async fn plan(pool: &sqlx::SqlitePool, sql: &str) -> Vec<String> {
        let explain = format!("EXPLAIN QUERY PLAN {sql}");
        sqlx::query(sqlx::AssertSqlSafe(explain))
            .fetch_all(pool)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.try_get::<String, _>(3).expect("detail"))
            .collect()
    }

    /// Every multi-row statement of a commit, and every read, finds its rows by index or row
    /// id: none scans a table or an index whole (at a million records, one such statement per
    /// 128 rows took seconds each).
    #[tokio::test]
    async fn statements_never_scan_the_records() {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("memory database");
        for s in [RECORDS_TABLE, STATE_TABLE]
            .into_iter()
            .chain(RECORDS_INDEXES.iter().copied())
        {
            sqlx::query(s).execute(&pool).await.expect("schema");
        }
        let reads = [
            format!(
                "SELECT {COLUMNS} FROM records AS r INDEXED BY records_by_id {JOIN_STATE} \
                 WHERE substr(r.id, 1, 8) IN (?, ?)"
            ),
            format!(
                "SELECT {COLUMNS} FROM record_state AS s INDEXED BY record_state_pending \
                 CROSS JOIN records AS r ON r.row = s.row \
                 WHERE s.pending_seq > ? ORDER BY s.pending_seq LIMIT ?"
            ),
        ];
        // Each at a few rows and at its chunk size: without statistics, the planner's choice
        // depends on the number of VALUES rows (at 1,024, the statements that update
        // `record_state` from a materialized table scan `record_state` instead).
        for sql in [3, PUT_CHUNK]
            .into_iter()
            .flat_map(|n| {
                [
                    row_ids_sql(n),
                    put_update_sql(n),
                    state_update_sql(n),
                    sync_update_sql(n),
                    ack_sync_update_sql(n),
                    ack_pending_update_sql(n),
                    ack_sql(n),
                ]
            })
            .chain(reads)
        {
            let steps = plan(&pool, &sql).await;
            let searches = |t: &str| steps.iter().any(|s| s.starts_with(&format!("SEARCH {t}")));
            let scans = steps.iter().any(|s| {
                ["records", "r ", "record_state", "s "]
                    .iter()
                    .any(|t| s.starts_with(&format!("SCAN {t}")))
            });
            assert!(
                (searches("records")
                    || searches("r ")
                    || searches("record_state")
                    || searches("s "))
                    && !scans,
                "{sql}\n{steps:#?}"
            );
        }
    }
}
