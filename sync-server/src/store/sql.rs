//! The SQL stores. The relay logic is written once, in `sql_store!`, and expanded for SQLite
//! and for PostgreSQL; only connecting, beginning a transaction, the row lock and column types
//! differ.
//!
//! Schema (version 5; `BLOB` is `BYTEA` on PostgreSQL; version 1 lacked `spaces.retired` and
//! `spaces.successor`, which the migration adds; versions 1 and 2 indexed envelopes by
//! `(space, record, device)` as `envelopes_by_record`, and versions 3 and 4 by a prefix of the
//! record id as `envelopes_by_record_prefix`, which the migrations drop; versions 1 to 3 lacked
//! `spaces.log_id`, which the migration adds, one random log id for the existing spaces):
//!
//! ```sql
//! CREATE TABLE accounts  (id BLOB PRIMARY KEY, token_hash BLOB NOT NULL, created BIGINT NOT NULL);
//! CREATE TABLE spaces    (id BLOB PRIMARY KEY, account BLOB NOT NULL, fingerprint BLOB,
//!                         next_seq BIGINT NOT NULL, gc_floor BIGINT NOT NULL, key_backup BLOB,
//!                         retired BIGINT, successor BLOB, log_id BLOB);
//! CREATE TABLE envelopes (space BLOB, server_seq BIGINT, record BLOB NOT NULL, device BLOB NOT NULL,
//!                         seq BIGINT NOT NULL, tombstone BOOLEAN NOT NULL, size BIGINT NOT NULL,
//!                         envelope BLOB NOT NULL, PRIMARY KEY (space, server_seq));
//! CREATE UNIQUE INDEX envelopes_by_device ON envelopes (space, device, seq);
//! CREATE INDEX envelopes_tombstones ON envelopes (space, server_seq) WHERE tombstone;
//! CREATE TABLE devices   (space BLOB, device BLOB, max_pushed BIGINT NOT NULL, pulled BIGINT NOT NULL,
//!                         last_seen BIGINT NOT NULL, walking BIGINT, PRIMARY KEY (space, device));
//! ```
//!
//! Every index grows in order as envelopes arrive (server sequences, and each device's own
//! sequences), so a push writes to the ends of the indexes, not to random pages. Nothing looks
//! an envelope up by its record: a push drops the envelopes it names by server sequence (the
//! primary key), a record's earlier envelope in the same push by device sequence, and a settle
//! request reads a device's envelopes by `envelopes_by_device` (`sync_core::relay` has the
//! rules). Versions 3 and 4 also dropped a device's older envelope of a record it did not
//! name, which took an index of random record ids: every stored envelope wrote a random page
//! of it.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backend_sqlite::WalCheckpointer;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite, Transaction};
use sync_core::relay::RelayStats;
use sync_core::store::WallClock;
use sync_core::{DeviceId, LogId, RecordId};
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, RelayConfig,
    RemoteEnvelope, Result, SpaceId, SpaceRef,
};

use super::{AccountId, ServerStore, SpaceInfo, SpaceRetired, db_seq, seq_from_db, validate_push};

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = 5;

fn schema(blob: &str) -> Vec<String> {
    [
        "CREATE TABLE IF NOT EXISTS hearth_schema (version BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS accounts (id BLOB PRIMARY KEY NOT NULL, token_hash BLOB NOT NULL, created BIGINT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS spaces (id BLOB PRIMARY KEY NOT NULL, account BLOB NOT NULL, fingerprint BLOB, next_seq BIGINT NOT NULL, gc_floor BIGINT NOT NULL, key_backup BLOB, retired BIGINT, successor BLOB, log_id BLOB)",
        "CREATE INDEX IF NOT EXISTS spaces_by_account ON spaces (account)",
        "CREATE TABLE IF NOT EXISTS envelopes (space BLOB NOT NULL, server_seq BIGINT NOT NULL, record BLOB NOT NULL, device BLOB NOT NULL, seq BIGINT NOT NULL, tombstone BOOLEAN NOT NULL, size BIGINT NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY (space, server_seq))",
        "CREATE UNIQUE INDEX IF NOT EXISTS envelopes_by_device ON envelopes (space, device, seq)",
        "CREATE INDEX IF NOT EXISTS envelopes_tombstones ON envelopes (space, server_seq) WHERE tombstone",
        "CREATE TABLE IF NOT EXISTS devices (space BLOB NOT NULL, device BLOB NOT NULL, max_pushed BIGINT NOT NULL, pulled BIGINT NOT NULL, last_seen BIGINT NOT NULL, walking BIGINT, PRIMARY KEY (space, device))",
    ]
    .iter()
    .map(|s| s.replace("BLOB", blob))
    .collect()
}

/// Maps a database error. Connection trouble, busy databases, serialization failures and
/// deadlocks are temporary; the rest is a permanent storage error. The message names the
/// operation; the database's own text (which never holds bound values) is kept as the cause.
pub(crate) fn map_sqlx(e: sqlx::Error, what: &'static str) -> Error {
    let temporary = match &e {
        sqlx::Error::Database(db) => matches!(
            db.code().as_deref(),
            // SQLite busy / locked (extended codes end in these low bytes).
            Some("5" | "6" | "261" | "262" | "517")
                // PostgreSQL serialization failure, deadlock, too many connections, shutdown.
                | Some("40001" | "40P01" | "53300" | "57P01" | "57P02" | "57P03")
        ),
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        _ => false,
    };
    if temporary {
        Error::new(ErrorKind::Unavailable, what)
            .with_source(e)
            .temporary()
    } else {
        Error::new(ErrorKind::Storage, what).with_source(e)
    }
}

fn now_i64(clock: &WallClock) -> i64 {
    i64::try_from(clock()).unwrap_or(i64::MAX)
}

fn arr<const N: usize>(v: &[u8], what: &'static str) -> Result<[u8; N]> {
    v.try_into().map_err(|_| Error::corrupt(what))
}

struct SpaceRow {
    log_id: Option<Vec<u8>>,
    fingerprint: Option<Vec<u8>>,
    next_seq: i64,
    floor: i64,
    retired: Option<i64>,
    successor: Option<Vec<u8>>,
}

impl SpaceRow {
    /// The space's log id (a space without one, which only a failed migration could leave,
    /// is corrupt).
    fn log_id(&self) -> Result<LogId> {
        match &self.log_id {
            Some(id) => Ok(LogId(arr(id, "stored log id has the wrong length")?)),
            None => Err(Error::corrupt("the space has no log id")),
        }
    }

    /// [`SpaceRetired`] when the space was retired.
    fn refuse_retired(&self) -> Result<()> {
        if self.retired.is_none() {
            return Ok(());
        }
        let successor = match &self.successor {
            Some(s) => Some(SpaceId(arr(s, "stored successor has the wrong length")?)),
            None => None,
        };
        Err(SpaceRetired { successor }.error())
    }
}

fn space_info(
    id: Vec<u8>,
    fingerprint: Option<Vec<u8>>,
    retired: Option<i64>,
    successor: Option<Vec<u8>>,
) -> Result<SpaceInfo> {
    Ok(SpaceInfo {
        space: SpaceId(arr(&id, "stored space id has the wrong length")?),
        fingerprint: fingerprint
            .map(|f| arr(&f, "stored fingerprint has the wrong length"))
            .transpose()?,
        retired: retired.is_some(),
        successor: successor
            .map(|s| arr(&s, "stored successor has the wrong length").map(SpaceId))
            .transpose()?,
    })
}

struct NewEntry<'a> {
    server_seq: i64,
    record: &'a [u8],
    seq: i64,
    tombstone: bool,
    envelope: &'a [u8],
}

/// Rows per multi-row insert: 8 parameters each, 3,200 a statement, far below both databases'
/// limits (SQLite 32,766, PostgreSQL 65,535). Every statement is a round trip to sqlx's SQLite
/// worker thread; 400 rather than 100 made the server's pushes ~8 % shorter at a million
/// records (docs/performance.md).
const INSERT_CHUNK: usize = 400;

/// Rows sqlx's SQLite worker thread may hand to the waiting task before it waits for the task
/// to take them (`SqliteConnectOptions::row_buffer_size`; sqlx's default is 50). Every query
/// here collects its whole result (none streams), the largest a pull page of at most
/// `RelayConfig::page_limit` envelopes (4000 by default), so a buffer that holds a page costs
/// no memory the page does not hold anyway, and spares the ping-pong of a full buffer: with
/// 50, the worker slept once the task fell behind and was woken for each row the task took.
/// At 300,000 records the server's time answering pulls fell by ~20 % (docs/performance.md).
const ROW_BUFFER: usize = 4096;

/// SQLite: page cache of the writer connection, KiB.
const WRITER_CACHE_KIB: u32 = 16 * 1024;
/// SQLite: page cache of each reader connection, KiB (SQLite's default).
const READER_CACHE_KIB: u32 = 2 * 1024;
/// SQLite: reader connections at most.
const READERS: u32 = 3;
/// Envelope bytes pushed after which [`SqliteStore`] asks its checkpointer to copy the WAL
/// back into the database file.
const CHECKPOINT_AFTER_BYTES: u64 = 8 * 1024 * 1024;

macro_rules! sql_store {
    ($store:ident, $db:ty, $for_update:literal) => {
        impl $store {
            /// Locks the space's row for this transaction, binding it to `account` first if
            /// `bind` and it is new. `None` when it does not exist (and `bind` is false).
            async fn lock_space(
                tx: &mut Transaction<'static, $db>,
                account: AccountId,
                space: SpaceId,
                bind: bool,
            ) -> Result<Option<SpaceRow>> {
                if bind {
                    sqlx::query(
                        "INSERT INTO spaces (id, account, fingerprint, next_seq, gc_floor, key_backup, log_id) VALUES ($1, $2, NULL, 0, 0, NULL, $3) ON CONFLICT (id) DO NOTHING",
                    )
                    .bind(&space.0[..])
                    .bind(&account.0[..])
                    .bind(&crate::auth::random::<16>()?[..])
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "bind space"))?;
                }
                let row = sqlx::query(concat!(
                    "SELECT account, fingerprint, next_seq, gc_floor, retired, successor, log_id FROM spaces WHERE id = $1",
                    $for_update
                ))
                .bind(&space.0[..])
                .fetch_optional(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "lock space"))?;
                let Some(row) = row else { return Ok(None) };
                let owner: Vec<u8> = row.try_get(0).map_err(|e| map_sqlx(e, "read space"))?;
                if owner[..] != account.0[..] {
                    return Err(Error::new(
                        ErrorKind::Forbidden,
                        "this space belongs to another account",
                    ));
                }
                Ok(Some(SpaceRow {
                    fingerprint: row.try_get(1).map_err(|e| map_sqlx(e, "read space"))?,
                    next_seq: row.try_get(2).map_err(|e| map_sqlx(e, "read space"))?,
                    floor: row.try_get(3).map_err(|e| map_sqlx(e, "read space"))?,
                    retired: row.try_get(4).map_err(|e| map_sqlx(e, "read space"))?,
                    successor: row.try_get(5).map_err(|e| map_sqlx(e, "read space"))?,
                    log_id: row.try_get(6).map_err(|e| map_sqlx(e, "read space"))?,
                }))
            }

            async fn lock_bound(
                tx: &mut Transaction<'static, $db>,
                account: AccountId,
                space: SpaceId,
            ) -> Result<SpaceRow> {
                Self::lock_space(tx, account, space, true)
                    .await?
                    .ok_or_else(|| Error::internal("a space bound in this transaction vanished"))
            }

            async fn check_key(
                tx: &mut Transaction<'static, $db>,
                space: SpaceId,
                row: &SpaceRow,
                fingerprint: &[u8; 32],
                claim: bool,
            ) -> Result<()> {
                match &row.fingerprint {
                    Some(f) if f[..] != fingerprint[..] => Err(Error::new(
                        ErrorKind::WrongKey,
                        "this device holds a different key than the space: check the passphrase",
                    )),
                    Some(_) => Ok(()),
                    None if claim => {
                        sqlx::query("UPDATE spaces SET fingerprint = $2 WHERE id = $1")
                            .bind(&space.0[..])
                            .bind(&fingerprint[..])
                            .execute(&mut **tx)
                            .await
                            .map_err(|e| map_sqlx(e, "claim space"))?;
                        Ok(())
                    }
                    None => Ok(()),
                }
            }

            /// Binds `space` to `account` and claims its fingerprint (see
            /// [`ServerStore::register_space`]); true when the space was new.
            async fn register_in(
                tx: &mut Transaction<'static, $db>,
                account: AccountId,
                space: SpaceId,
                fingerprint: &[u8; 32],
            ) -> Result<bool> {
                let row = Self::lock_bound(tx, account, space).await?;
                row.refuse_retired()?;
                let new = row.fingerprint.is_none();
                Self::check_key(tx, space, &row, fingerprint, true).await?;
                Ok(new)
            }

            /// Marks `space` retired at `now`, naming `successor`.
            async fn mark_retired(
                tx: &mut Transaction<'static, $db>,
                space: SpaceId,
                now: i64,
                successor: Option<SpaceId>,
            ) -> Result<()> {
                sqlx::query("UPDATE spaces SET retired = $2, successor = $3 WHERE id = $1")
                    .bind(&space.0[..])
                    .bind(now)
                    .bind(successor.as_ref().map(|s| &s.0[..]))
                    .execute(&mut **tx)
                    .await
                    .map_err(|e| map_sqlx(e, "retire space"))?;
                Ok(())
            }

            /// Drops tombstones every active device has pulled past; returns the new floor.
            async fn collect(
                tx: &mut Transaction<'static, $db>,
                space: SpaceId,
                now: i64,
                horizon: u64,
                floor: i64,
            ) -> Result<i64> {
                let threshold = now.saturating_sub(i64::try_from(horizon).unwrap_or(i64::MAX));
                let active_min: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(pulled) FROM devices WHERE space = $1 AND last_seen >= $2",
                )
                .bind(&space.0[..])
                .bind(threshold)
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "read cursors"))?;
                let limit = active_min.unwrap_or(i64::MAX);
                let top: Option<i64> = sqlx::query_scalar(
                    "SELECT MAX(server_seq) FROM envelopes WHERE space = $1 AND tombstone AND server_seq <= $2",
                )
                .bind(&space.0[..])
                .bind(limit)
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "find tombstones"))?;
                let Some(top) = top else { return Ok(floor) };
                sqlx::query(
                    "DELETE FROM envelopes WHERE space = $1 AND tombstone AND server_seq <= $2",
                )
                .bind(&space.0[..])
                .bind(top)
                .execute(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "collect tombstones"))?;
                if top > floor {
                    sqlx::query("UPDATE spaces SET gc_floor = $2 WHERE id = $1")
                        .bind(&space.0[..])
                        .bind(top)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| map_sqlx(e, "raise floor"))?;
                    return Ok(top);
                }
                Ok(floor)
            }

            async fn insert_entries(
                tx: &mut Transaction<'static, $db>,
                space: SpaceId,
                device: DeviceId,
                entries: &mut Vec<NewEntry<'_>>,
            ) -> Result<()> {
                for chunk in entries.chunks(INSERT_CHUNK) {
                    let mut qb = QueryBuilder::<$db>::new(
                        "INSERT INTO envelopes (space, server_seq, record, device, seq, tombstone, size, envelope) ",
                    );
                    qb.push_values(chunk, |mut b, e| {
                        b.push_bind(&space.0[..])
                            .push_bind(e.server_seq)
                            .push_bind(e.record)
                            .push_bind(&device.0[..])
                            .push_bind(e.seq)
                            .push_bind(e.tombstone)
                            .push_bind(e.envelope.len() as i64)
                            .push_bind(e.envelope);
                    });
                    qb.build()
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| map_sqlx(e, "store envelopes"))?;
                }
                entries.clear();
                Ok(())
            }

            async fn push_tx(
                &self,
                account: AccountId,
                request: &PushRequest,
            ) -> Result<PushResponse> {
                validate_push(request, &self.config)?;
                let from = &request.from;
                // Checked before the transaction: nothing out of range reaches the database.
                for e in &request.envelopes {
                    db_seq(e.seq)?;
                }
                let now = now_i64(&self.clock);
                let mut tx = self.begin().await?;
                let row = Self::lock_bound(&mut tx, account, from.space).await?;
                row.refuse_retired()?;
                Self::check_key(&mut tx, from.space, &row, &from.fingerprint, true).await?;
                let device = sqlx::query(
                    "SELECT max_pushed, pulled, walking FROM devices WHERE space = $1 AND device = $2",
                )
                .bind(&from.space.0[..])
                .bind(&from.device.0[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "read device"))?;
                let (mut max, pulled, walking) = match device {
                    Some(r) => {
                        let get = |e| map_sqlx(e, "read device");
                        (
                            r.try_get::<i64, _>(0).map_err(get)?,
                            r.try_get::<i64, _>(1).map_err(get)?,
                            r.try_get::<Option<i64>, _>(2).map_err(get)?,
                        )
                    }
                    None => (0, 0, None),
                };
                // A device behind the floor must re-sync before it pushes (relay module docs).
                if pulled < row.floor && walking.is_none() {
                    return Err(sync_core::relay::stale_push());
                }
                // What the device asked to settle: its envelopes from that sequence on, as they
                // were before this push (module docs of `sync_core::relay`).
                let mut held = Vec::new();
                if let Some(settle) = request.settle {
                    let settle = db_seq(settle)?;
                    let rows = sqlx::query(
                        "SELECT seq, server_seq, record FROM envelopes WHERE space = $1 AND device = $2 AND seq >= $3 ORDER BY seq LIMIT $4",
                    )
                    .bind(&from.space.0[..])
                    .bind(&from.device.0[..])
                    .bind(settle)
                    .bind(i64::try_from(self.config.push_limit).unwrap_or(i64::MAX))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "read held envelopes"))?;
                    for r in rows {
                        let get = |e| map_sqlx(e, "read held envelopes");
                        held.push(sync_core::HeldEnvelope {
                            seq: seq_from_db(r.try_get::<i64, _>(0).map_err(get)?)?,
                            server_seq: seq_from_db(r.try_get::<i64, _>(1).map_err(get)?)?,
                            record: RecordId(arr(
                                &r.try_get::<Vec<u8>, _>(2).map_err(get)?,
                                "stored record id has the wrong length",
                            )?),
                        });
                    }
                }
                // Records of this push already inserted (before a delete by `supersedes`), with
                // the device sequence they were inserted under.
                let mut flushed: std::collections::HashMap<&[u8], i64> =
                    std::collections::HashMap::new();
                let mut next = row.next_seq;
                let mut assigned = Vec::with_capacity(request.envelopes.len());
                let mut pending: Vec<NewEntry<'_>> = Vec::new();
                // The records in `pending`, so a record pushed twice is found without walking
                // the whole list for every envelope.
                let mut in_pending: std::collections::HashSet<&[u8]> =
                    std::collections::HashSet::new();
                for e in &request.envelopes {
                    let seq = db_seq(e.seq)?;
                    if seq <= max {
                        let stored: Option<i64> = sqlx::query_scalar(
                            "SELECT server_seq FROM envelopes WHERE space = $1 AND device = $2 AND seq = $3",
                        )
                        .bind(&from.space.0[..])
                        .bind(&from.device.0[..])
                        .bind(seq)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "find stored envelope"))?;
                        assigned.push((e.seq, seq_from_db(stored.unwrap_or(0))?));
                        continue;
                    }
                    if !e.supersedes.is_empty() {
                        // Earlier entries of this push must be visible to the delete.
                        flushed.extend(pending.iter().map(|p| (p.record, p.seq)));
                        in_pending.clear();
                        Self::insert_entries(&mut tx, from.space, from.device, &mut pending)
                            .await?;
                        let mut qb = QueryBuilder::<$db>::new("DELETE FROM envelopes WHERE space = ");
                        qb.push_bind(&from.space.0[..])
                            .push(" AND record = ")
                            .push_bind(&e.record.0[..])
                            .push(" AND server_seq IN (");
                        let mut list = qb.separated(", ");
                        for s in &e.supersedes {
                            list.push_bind(i64::try_from(*s).unwrap_or(-1));
                        }
                        list.push_unseparated(")");
                        qb.build()
                            .execute(&mut *tx)
                            .await
                            .map_err(|e| map_sqlx(e, "drop superseded envelopes"))?;
                    }
                    // The same record twice in one push: the later replaces the earlier.
                    if !in_pending.insert(&e.record.0[..]) {
                        pending.retain(|p| p.record != &e.record.0[..]);
                    }
                    if let Some(earlier) = flushed.remove(&e.record.0[..]) {
                        sqlx::query(
                            "DELETE FROM envelopes WHERE space = $1 AND device = $2 AND seq = $3",
                        )
                        .bind(&from.space.0[..])
                        .bind(&from.device.0[..])
                        .bind(earlier)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "drop replaced envelope"))?;
                    }
                    next += 1;
                    pending.push(NewEntry {
                        server_seq: next,
                        record: &e.record.0[..],
                        seq,
                        tombstone: e.tombstone,
                        envelope: &e.envelope,
                    });
                    max = seq;
                    assigned.push((e.seq, seq_from_db(next)?));
                }
                Self::insert_entries(&mut tx, from.space, from.device, &mut pending).await?;
                if next != row.next_seq {
                    sqlx::query("UPDATE spaces SET next_seq = $2 WHERE id = $1")
                        .bind(&from.space.0[..])
                        .bind(next)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "advance sequence"))?;
                }
                sqlx::query(
                    "INSERT INTO devices (space, device, max_pushed, pulled, last_seen, walking) VALUES ($1, $2, $3, 0, $4, NULL) ON CONFLICT (space, device) DO UPDATE SET max_pushed = excluded.max_pushed, last_seen = excluded.last_seen",
                )
                .bind(&from.space.0[..])
                .bind(&from.device.0[..])
                .bind(max)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "record device"))?;
                Self::collect(&mut tx, from.space, now, self.config.horizon_millis, row.floor)
                    .await?;
                tx.commit().await.map_err(|e| map_sqlx(e, "commit push"))?;
                Ok(PushResponse { assigned, held })
            }

            async fn pull_tx(&self, account: AccountId, request: &PullRequest) -> Result<PullPage> {
                let from = &request.from;
                let cursor =
                    db_seq(request.cursor).map_err(|_| sync_core::relay::cursor_ahead())?;
                let now = now_i64(&self.clock);
                let mut tx = self.begin().await?;
                let row = Self::lock_bound(&mut tx, account, from.space).await?;
                row.refuse_retired()?;
                Self::check_key(&mut tx, from.space, &row, &from.fingerprint, false).await?;
                if cursor > row.next_seq {
                    return Err(sync_core::relay::cursor_ahead());
                }
                let walking: Option<Option<i64>> = sqlx::query_scalar(
                    "SELECT walking FROM devices WHERE space = $1 AND device = $2",
                )
                .bind(&from.space.0[..])
                .bind(&from.device.0[..])
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "read device"))?;
                let continuing = walking.flatten() == Some(cursor);
                if cursor > 0 && cursor < row.floor && !continuing {
                    return Err(Error::new(
                        ErrorKind::ResyncRequired,
                        "this device was away longer than the server keeps deletions; a full re-sync is needed",
                    ));
                }
                sqlx::query(
                    "INSERT INTO devices (space, device, max_pushed, pulled, last_seen, walking) VALUES ($1, $2, 0, $3, $4, NULL) ON CONFLICT (space, device) DO UPDATE SET pulled = CASE WHEN excluded.pulled > devices.pulled THEN excluded.pulled ELSE devices.pulled END, last_seen = excluded.last_seen",
                )
                .bind(&from.space.0[..])
                .bind(&from.device.0[..])
                .bind(cursor)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "record cursor"))?;
                let floor =
                    Self::collect(&mut tx, from.space, now, self.config.horizon_millis, row.floor)
                        .await?;
                // Served: the device is not behind the floor (relay module docs).
                if floor > 0 {
                    sqlx::query(
                        "UPDATE devices SET pulled = $3 WHERE space = $1 AND device = $2 AND pulled < $3",
                    )
                    .bind(&from.space.0[..])
                    .bind(&from.device.0[..])
                    .bind(floor)
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "raise cursor to the floor"))?;
                }
                let limit = request.limit.clamp(1, self.config.page_limit.max(1));
                // Sizes first, to cut the page by count and bytes before reading any envelope.
                let sizes = sqlx::query(
                    "SELECT server_seq, size FROM envelopes WHERE space = $1 AND server_seq > $2 AND (device <> $3 OR $4) ORDER BY server_seq LIMIT $5",
                )
                .bind(&from.space.0[..])
                .bind(cursor)
                .bind(&from.device.0[..])
                .bind(request.include_own)
                .bind(limit as i64 + 1)
                .fetch_all(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "scan envelopes"))?;
                let mut taken = 0usize;
                let mut bytes = 0i64;
                let mut last = cursor;
                let mut stop: Option<i64> = None;
                for r in &sizes {
                    let s: i64 = r.try_get(0).map_err(|e| map_sqlx(e, "read envelope"))?;
                    let size: i64 = r.try_get(1).map_err(|e| map_sqlx(e, "read envelope"))?;
                    if taken == limit
                        || (taken > 0 && bytes + size > self.config.page_bytes as i64)
                    {
                        stop = Some(s);
                        break;
                    }
                    taken += 1;
                    bytes += size;
                    last = s;
                }
                let mut envelopes = Vec::with_capacity(taken);
                if taken > 0 {
                    let rows = sqlx::query(
                        "SELECT server_seq, record, device, seq, tombstone, envelope FROM envelopes WHERE space = $1 AND server_seq > $2 AND server_seq <= $3 AND (device <> $4 OR $5) ORDER BY server_seq",
                    )
                    .bind(&from.space.0[..])
                    .bind(cursor)
                    .bind(last)
                    .bind(&from.device.0[..])
                    .bind(request.include_own)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "read envelopes"))?;
                    for r in rows {
                        let get = |e| map_sqlx(e, "read envelope");
                        let record: Vec<u8> = r.try_get(1).map_err(get)?;
                        let device: Vec<u8> = r.try_get(2).map_err(get)?;
                        envelopes.push(RemoteEnvelope {
                            server_seq: seq_from_db(r.try_get(0).map_err(get)?)?,
                            record: RecordId(arr(&record, "stored record id has the wrong length")?),
                            device: DeviceId(arr(&device, "stored device id has the wrong length")?),
                            seq: seq_from_db(r.try_get(3).map_err(get)?)?,
                            tombstone: r.try_get(4).map_err(get)?,
                            envelope: r.try_get(5).map_err(get)?,
                        });
                    }
                }
                let more = stop.is_some();
                let next_cursor = match stop {
                    // Everything below the first envelope that did not fit was served or
                    // skipped as the device's own.
                    Some(s) => {
                        let m: Option<i64> = sqlx::query_scalar(
                            "SELECT MAX(server_seq) FROM envelopes WHERE space = $1 AND server_seq > $2 AND server_seq < $3",
                        )
                        .bind(&from.space.0[..])
                        .bind(cursor)
                        .bind(s)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "find cursor"))?;
                        m.unwrap_or(cursor).max(last)
                    }
                    None => row.next_seq,
                };
                let walk = (more && (cursor == 0 || continuing)).then_some(next_cursor);
                if walk.is_some() || walking.flatten().is_some() {
                    sqlx::query("UPDATE devices SET walking = $3 WHERE space = $1 AND device = $2")
                        .bind(&from.space.0[..])
                        .bind(&from.device.0[..])
                        .bind(walk)
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| map_sqlx(e, "record walk"))?;
                }
                tx.commit().await.map_err(|e| map_sqlx(e, "commit pull"))?;
                Ok(PullPage {
                    envelopes,
                    next_cursor: seq_from_db(next_cursor)?,
                    more,
                    gc_floor: seq_from_db(floor)?,
                    log_id: row.log_id()?,
                })
            }
        }

        #[async_trait]
        impl ServerStore for $store {
            fn name(&self) -> &'static str {
                Self::NAME
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "ping database"))?;
                Ok(())
            }

            async fn create_account(&self, account: AccountId, token_hash: [u8; 32]) -> Result<()> {
                sqlx::query("INSERT INTO accounts (id, token_hash, created) VALUES ($1, $2, $3)")
                    .bind(&account.0[..])
                    .bind(&token_hash[..])
                    .bind(now_i64(&self.clock))
                    .execute(self.write_pool())
                    .await
                    .map_err(|e| map_sqlx(e, "create account"))?;
                Ok(())
            }

            async fn token_hash(&self, account: AccountId) -> Result<Option<[u8; 32]>> {
                let h: Option<Vec<u8>> =
                    sqlx::query_scalar("SELECT token_hash FROM accounts WHERE id = $1")
                        .bind(&account.0[..])
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(|e| map_sqlx(e, "read account"))?;
                h.map(|h| arr(&h, "stored token hash has the wrong length")).transpose()
            }

            async fn register_space(
                &self,
                account: AccountId,
                space: SpaceId,
                fingerprint: [u8; 32],
            ) -> Result<bool> {
                let mut tx = self.begin().await?;
                let new = Self::register_in(&mut tx, account, space, &fingerprint).await?;
                tx.commit().await.map_err(|e| map_sqlx(e, "commit space"))?;
                Ok(new)
            }

            async fn register_successor(
                &self,
                account: AccountId,
                space: SpaceId,
                fingerprint: [u8; 32],
                old: SpaceId,
            ) -> Result<bool> {
                if old == space {
                    return Err(Error::invalid("a space cannot succeed itself"));
                }
                let now = now_i64(&self.clock);
                let mut tx = self.begin().await?;
                // The old space first (the order `retire_space` locks them in): refused, it
                // leaves nothing registered.
                let old_row = Self::lock_space(&mut tx, account, old, false)
                    .await?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such space to replace"))?;
                let new = Self::register_in(&mut tx, account, space, &fingerprint).await?;
                if old_row.retired.is_none() {
                    Self::mark_retired(&mut tx, old, now, Some(space)).await?;
                }
                tx.commit().await.map_err(|e| map_sqlx(e, "commit space"))?;
                Ok(new)
            }

            async fn spaces(&self, account: AccountId) -> Result<Vec<SpaceInfo>> {
                let rows = sqlx::query(
                    "SELECT id, fingerprint, retired, successor FROM spaces WHERE account = $1 ORDER BY id",
                )
                .bind(&account.0[..])
                .fetch_all(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "list spaces"))?;
                rows.iter()
                    .map(|r| {
                        let get = |e| map_sqlx(e, "read space");
                        space_info(
                            r.try_get(0).map_err(get)?,
                            r.try_get(1).map_err(get)?,
                            r.try_get(2).map_err(get)?,
                            r.try_get(3).map_err(get)?,
                        )
                    })
                    .collect()
            }

            async fn space(&self, account: AccountId, space: SpaceId) -> Result<Option<SpaceInfo>> {
                let row = sqlx::query(
                    "SELECT id, fingerprint, retired, successor, account FROM spaces WHERE id = $1",
                )
                .bind(&space.0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "read space"))?;
                let Some(r) = row else { return Ok(None) };
                let get = |e| map_sqlx(e, "read space");
                let owner: Vec<u8> = r.try_get(4).map_err(get)?;
                if owner[..] != account.0[..] {
                    return Err(Error::new(
                        ErrorKind::Forbidden,
                        "this space belongs to another account",
                    ));
                }
                space_info(
                    r.try_get(0).map_err(get)?,
                    r.try_get(1).map_err(get)?,
                    r.try_get(2).map_err(get)?,
                    r.try_get(3).map_err(get)?,
                )
                .map(Some)
            }

            async fn retire_space(
                &self,
                account: AccountId,
                space: SpaceId,
                successor: Option<SpaceId>,
            ) -> Result<()> {
                if successor == Some(space) {
                    return Err(Error::invalid("a space cannot succeed itself"));
                }
                let now = now_i64(&self.clock);
                let mut tx = self.begin().await?;
                let row = Self::lock_space(&mut tx, account, space, false)
                    .await?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such space"))?;
                if let Some(next) = successor {
                    let next_row = Self::lock_space(&mut tx, account, next, false)
                        .await?
                        .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such successor space"))?;
                    if next_row.retired.is_some() {
                        return Err(Error::invalid("the successor space is retired itself"));
                    }
                }
                if row.retired.is_some() {
                    // Already retired: idempotent, and the first successor stays.
                    return Ok(());
                }
                Self::mark_retired(&mut tx, space, now, successor).await?;
                tx.commit().await.map_err(|e| map_sqlx(e, "commit retirement"))?;
                Ok(())
            }

            async fn register_device(&self, account: AccountId, from: &SpaceRef) -> Result<()> {
                let now = now_i64(&self.clock);
                let mut tx = self.begin().await?;
                let row = Self::lock_bound(&mut tx, account, from.space).await?;
                row.refuse_retired()?;
                Self::check_key(&mut tx, from.space, &row, &from.fingerprint, true).await?;
                sqlx::query(
                    "INSERT INTO devices (space, device, max_pushed, pulled, last_seen, walking) VALUES ($1, $2, 0, 0, $3, NULL) ON CONFLICT (space, device) DO UPDATE SET last_seen = excluded.last_seen",
                )
                .bind(&from.space.0[..])
                .bind(&from.device.0[..])
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "record device"))?;
                tx.commit().await.map_err(|e| map_sqlx(e, "commit device"))?;
                Ok(())
            }

            async fn push(&self, account: AccountId, request: &PushRequest) -> Result<PushResponse> {
                let response = self.push_tx(account, request).await?;
                self.committed(request.envelopes.iter().map(|e| e.envelope.len() as u64).sum());
                Ok(response)
            }

            async fn pull(&self, account: AccountId, request: &PullRequest) -> Result<PullPage> {
                self.pull_tx(account, request).await
            }

            async fn get_key_backup(
                &self,
                account: AccountId,
                space: SpaceId,
            ) -> Result<Option<Vec<u8>>> {
                let row = sqlx::query("SELECT account, key_backup FROM spaces WHERE id = $1")
                    .bind(&space.0[..])
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "read key backup"))?;
                let Some(row) = row else { return Ok(None) };
                let owner: Vec<u8> = row.try_get(0).map_err(|e| map_sqlx(e, "read space"))?;
                if owner[..] != account.0[..] {
                    return Err(Error::new(
                        ErrorKind::Forbidden,
                        "this space belongs to another account",
                    ));
                }
                row.try_get(1).map_err(|e| map_sqlx(e, "read key backup"))
            }

            async fn put_key_backup(
                &self,
                account: AccountId,
                space: SpaceId,
                blob: Vec<u8>,
            ) -> Result<()> {
                let mut tx = self.begin().await?;
                Self::lock_bound(&mut tx, account, space).await?.refuse_retired()?;
                sqlx::query("UPDATE spaces SET key_backup = $2 WHERE id = $1")
                    .bind(&space.0[..])
                    .bind(&blob[..])
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map_sqlx(e, "store key backup"))?;
                tx.commit().await.map_err(|e| map_sqlx(e, "commit key backup"))?;
                Ok(())
            }

            async fn mark_restored(&self) -> Result<u64> {
                // One new id for all: a device compares it only with the one it held.
                let done = sqlx::query("UPDATE spaces SET log_id = $1")
                    .bind(&crate::auth::random::<16>()?[..])
                    .execute(&self.pool)
                    .await
                    .map_err(|e| map_sqlx(e, "mark the database restored"))?;
                Ok(done.rows_affected())
            }

            async fn space_stats(&self, space: SpaceId) -> Result<RelayStats> {
                let row = sqlx::query(
                    "SELECT COUNT(*), CAST(COALESCE(SUM(size), 0) AS BIGINT), CAST(COALESCE(SUM(CASE WHEN tombstone THEN 1 ELSE 0 END), 0) AS BIGINT) FROM envelopes WHERE space = $1",
                )
                .bind(&space.0[..])
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map_sqlx(e, "count envelopes"))?;
                let get = |i: usize| -> Result<usize> {
                    let v: i64 = row.try_get(i).map_err(|e| map_sqlx(e, "count envelopes"))?;
                    Ok(usize::try_from(v).unwrap_or(0))
                };
                Ok(RelayStats {
                    envelopes: get(0)?,
                    bytes: get(1)?,
                    tombstones: get(2)?,
                })
            }

            async fn close(&self) {
                self.close_pools().await;
            }
        }
    };
}

/// Page size of a new server database. The relay appends ~1 KiB envelopes and reads them back
/// in ranges, so larger pages mean fewer page splits, WAL frames and checksums a push:
/// `relay_layers` measured pushes ~25 % faster than with SQLite's 4 KiB (docs/performance.md).
/// Devices keep 4 KiB: their reads are random point lookups, which larger pages slowed.
pub const SQLITE_PAGE_SIZE: u32 = 16 * 1024;
/// WAL bytes at which the writer checkpoints by itself, in its commit: only reached when the
/// checkpointer falls behind.
const WRITER_AUTOCHECKPOINT_BYTES: u32 = 128 * 1024 * 1024;
/// Bytes of WAL file kept when SQLite restarts the log (`journal_size_limit`): twice the
/// writer's own checkpoint threshold. Sustained pushes outrun the checkpointer and take the WAL
/// past that threshold; with 64 MiB, each restart truncated it and the next commits grew it
/// again, the kernel allocating and zeroing every page anew (docs/performance.md).
const WAL_KEEP_BYTES: u64 = 2 * WRITER_AUTOCHECKPOINT_BYTES as u64;

/// The server's data in one SQLite file (WAL, `synchronous = FULL`: an acknowledged push
/// survives a power loss). Writers are serialized by `BEGIN IMMEDIATE`.
#[derive(Clone)]
pub struct SqliteStore {
    /// Reader connections: plain reads only.
    pool: SqlitePool,
    /// The one connection every transaction runs on.
    writer: SqlitePool,
    /// WAL checkpoints, on a connection of their own after every [`CHECKPOINT_AFTER_BYTES`]
    /// of pushed envelopes, instead of inside the push that crosses `wal_autocheckpoint`.
    checkpoints: Arc<WalCheckpointer>,
    config: RelayConfig,
    clock: WallClock,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Registry-style name.
    pub const NAME: &'static str = "sqlite";

    /// Opens (creating if missing) the database at `path` and brings its schema up to date.
    pub async fn open(path: &Path, config: RelayConfig, clock: WallClock) -> Result<Self> {
        let opts = |cache_kib: u32| {
            SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                // A new file gets pages of `SQLITE_PAGE_SIZE`; an existing one keeps its own.
                .page_size(SQLITE_PAGE_SIZE)
                .busy_timeout(Duration::from_secs(10))
                // The writer's page cache holds the indexes' hot pages. Checkpoints run on a
                // connection of their own (`checkpoints`); the writer checkpoints by itself only
                // past 128 MiB of WAL (truncated back to at most `WAL_KEEP_BYTES`), should that
                // one fall behind. Durability is unchanged: every commit still syncs the WAL. See
                // docs/performance.md (`hearth bench`, W3).
                .pragma("cache_size", format!("-{cache_kib}"))
                .row_buffer_size(ROW_BUFFER)
                .pragma("journal_size_limit", WAL_KEEP_BYTES.to_string())
        };
        // Every transaction (pushes, pulls, which record the device's cursor, registrations)
        // runs on the one writer connection; SQLite has one writer at a time anyway, and
        // queueing for the connection replaces sleeping in the busy handler. In WAL mode a
        // connection empties its page cache whenever it finds another connection has committed
        // since its last read, so with connections taking turns no cache stayed warm; the
        // writer's survives its own commits. The readers (plain reads: tokens, spaces, stats)
        // are emptied by every commit, so they keep SQLite's small default.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // The threshold in pages follows the file's own page size: a file made before
            // `SQLITE_PAGE_SIZE` was raised keeps its 4 KiB pages.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    let page: i64 = sqlx::query_scalar("PRAGMA page_size")
                        .fetch_one(&mut *conn)
                        .await?;
                    let pages = i64::from(WRITER_AUTOCHECKPOINT_BYTES) / page.max(512);
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "PRAGMA wal_autocheckpoint = {pages}"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            })
            .connect_with(opts(WRITER_CACHE_KIB))
            .await
            .map_err(|e| map_sqlx(e, "open the server database"))?;
        let pool = match SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(opts(READER_CACHE_KIB))
            .await
        {
            Ok(pool) => pool,
            Err(e) => {
                writer.close().await;
                return Err(map_sqlx(e, "open the server database"));
            }
        };
        let mut tx = writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "begin migration"))?;
        for stmt in schema("BLOB") {
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "create schema"))?;
        }
        check_version_sqlite(&mut tx).await?;
        tx.commit()
            .await
            .map_err(|e| map_sqlx(e, "commit migration"))?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .connect_lazy_with(opts(READER_CACHE_KIB));
        Ok(Self {
            pool,
            writer,
            checkpoints: Arc::new(WalCheckpointer::start(checkpointer, CHECKPOINT_AFTER_BYTES)),
            config,
            clock,
        })
    }

    fn write_pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// Counts the envelope bytes of a push committed, for the checkpointer.
    fn committed(&self, bytes: u64) {
        self.checkpoints.committed(bytes);
    }

    async fn close_pools(&self) {
        self.checkpoints.stop().await;
        self.pool.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| map_sqlx(e, "begin transaction"))
    }
}

/// The server's data in PostgreSQL, shared by any number of server processes. Per-space
/// ordering comes from `SELECT … FOR UPDATE` on the space's row (see the module docs of
/// [`crate::store`]).
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    config: RelayConfig,
    clock: WallClock,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    /// PostgreSQL checkpoints by itself, off the commit path.
    fn committed(&self, _bytes: u64) {}

    async fn close_pools(&self) {
        self.pool.close().await;
    }

    /// Registry-style name.
    pub const NAME: &'static str = "postgres";

    /// Connects to `url` (`postgres://…`) and brings the schema up to date.
    pub async fn connect(url: &str, config: RelayConfig, clock: WallClock) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| Error::new(ErrorKind::Config, "invalid PostgreSQL URL").with_source(e))?;
        Self::connect_with(opts, 10, config, clock).await
    }

    /// Connects with explicit options (e.g. a `search_path`) and pool size.
    pub async fn connect_with(
        options: PgConnectOptions,
        max_connections: u32,
        config: RelayConfig,
        clock: WallClock,
    ) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(|e| map_sqlx(e, "connect to PostgreSQL"))?;
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| map_sqlx(e, "begin migration"))?;
        // Several servers may start at once: one migrates, the others wait and find it done.
        sqlx::query("SELECT pg_advisory_xact_lock(4852544801)")
            .execute(&mut *tx)
            .await
            .map_err(|e| map_sqlx(e, "lock migration"))?;
        for stmt in schema("BYTEA") {
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&mut *tx)
                .await
                .map_err(|e| map_sqlx(e, "create schema"))?;
        }
        check_version_pg(&mut tx).await?;
        tx.commit()
            .await
            .map_err(|e| map_sqlx(e, "commit migration"))?;
        Ok(Self {
            pool,
            config,
            clock,
        })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(|e| map_sqlx(e, "begin transaction"))
    }
}

macro_rules! check_version {
    ($name:ident, $db:ty, $blob:literal) => {
        async fn $name(tx: &mut Transaction<'static, $db>) -> Result<()> {
            let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM hearth_schema")
                .fetch_one(&mut **tx)
                .await
                .map_err(|e| map_sqlx(e, "read schema version"))?;
            match v {
                None => {
                    sqlx::query("INSERT INTO hearth_schema (version) VALUES ($1)")
                        .bind(SCHEMA_VERSION)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| map_sqlx(e, "write schema version"))?;
                    Ok(())
                }
                Some(v) if v > SCHEMA_VERSION => Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the database has schema {v}, written by a newer server (this one knows {SCHEMA_VERSION})"
                    ),
                )),
                Some(v) if v < SCHEMA_VERSION => {
                    let mut steps: Vec<&str> = Vec::new();
                    if v < 2 {
                        // Version 2: spaces can be retired (after a key rotation).
                        steps.extend([
                            "ALTER TABLE spaces ADD COLUMN retired BIGINT",
                            concat!("ALTER TABLE spaces ADD COLUMN successor ", $blob),
                        ]);
                    }
                    if v < 3 {
                        // Version 3 dropped the envelopes' index by (space, record, device).
                        steps.push("DROP INDEX IF EXISTS envelopes_by_record");
                    }
                    if v < 4 {
                        // Version 4: every space has a log id (`sync_core::LogId`).
                        steps.push(concat!("ALTER TABLE spaces ADD COLUMN log_id ", $blob));
                    }
                    // Version 5: the server drops only envelopes a push names, so nothing looks
                    // envelopes up by record any more (module docs).
                    steps.extend([
                        "DROP INDEX IF EXISTS envelopes_by_record_prefix",
                        "UPDATE hearth_schema SET version = 5",
                    ]);
                    for stmt in steps {
                        sqlx::query(stmt)
                            .execute(&mut **tx)
                            .await
                            .map_err(|e| map_sqlx(e, "migrate the schema"))?;
                    }
                    sqlx::query("UPDATE spaces SET log_id = $1 WHERE log_id IS NULL")
                        .bind(&crate::auth::random::<16>()?[..])
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| map_sqlx(e, "migrate the schema"))?;
                    Ok(())
                }
                Some(_) => Ok(()),
            }
        }
    };
}

check_version!(check_version_sqlite, Sqlite, "BLOB");
check_version!(check_version_pg, Postgres, "BYTEA");

sql_store!(SqliteStore, Sqlite, "");
sql_store!(PostgresStore, Postgres, " FOR UPDATE");

/// The database of a server, by URL: `sqlite:PATH` (or a bare path) or `postgres://…`.
pub async fn open_store(
    url: &str,
    config: RelayConfig,
    clock: WallClock,
) -> Result<Arc<dyn ServerStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PostgresStore::connect(url, config, clock).await?))
    } else {
        let path = url.strip_prefix("sqlite:").unwrap_or(url);
        let path = path.strip_prefix("//").unwrap_or(path);
        Ok(Arc::new(
            SqliteStore::open(Path::new(path), config, clock).await?,
        ))
    }
}

/// Declares the database at `url` restored from a backup ([`ServerStore::mark_restored`]):
/// opens it (migrating it if needed), gives every space a new log id, closes it. Returns how
/// many spaces. What `hearth-server mark-restored` and `hearth serve --mark-restored` run.
pub async fn mark_restored(url: &str) -> Result<u64> {
    let clock: WallClock = Arc::new(sync_core::store::system_millis);
    let store = open_store(url, RelayConfig::default(), clock).await?;
    let marked = store.mark_restored().await;
    store.close().await;
    marked
}
