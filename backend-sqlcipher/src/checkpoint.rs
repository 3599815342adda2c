//! WAL checkpoints off the commit path, on a connection and thread of their own.
//!
//! The same design as `backend_sqlite::WalCheckpointer` (whose documentation has the
//! measurements): a checkpoint copies the pages committed to the WAL back into the database
//! file and syncs it, and run by the writer inside the commit that crosses
//! `wal_autocheckpoint` it holds that commit up for as long as it takes (here every page it
//! writes is also encrypted and authenticated). After every [`CHECKPOINT_AFTER_BYTES`] of
//! envelopes committed, the store asks this connection for `PRAGMA wal_checkpoint(PASSIVE)`:
//! WAL mode lets it copy committed frames while the writer appends new ones, and the writer
//! checkpoints by itself only past [`WRITER_AUTOCHECKPOINT_PAGES`], should this one fall
//! behind. A checkpoint copies frames as they are (no re-encryption). Crash safety is SQLite's
//! either way: a checkpoint interrupted anywhere is redone from the WAL at the next open.
//!
//! The connection is keyed like the store's: a re-key stops it first and starts a new one with
//! the new key once the re-key succeeded ([`crate::SqlcipherStorage`]'s `rekey`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use sync_core::{Result, SecretKey};

use crate::worker::Worker;
use crate::{key_and_verify, map_sql, sqlcipher_ready};

/// Envelope bytes committed after which the store asks for a checkpoint.
pub(crate) const CHECKPOINT_AFTER_BYTES: u64 = 8 * 1024 * 1024;

/// WAL pages (of [`crate::CIPHER_PAGE_SIZE`]) at which the writer checkpoints by itself, in its
/// commit: 128 MiB, only reached when the checkpointer falls behind.
pub(crate) const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// Bytes of WAL file kept when SQLite restarts the log (`journal_size_limit`): twice the
/// writer's own checkpoint threshold, as in backend-sqlite, where a limit below the WAL's
/// working size had each restart truncate it and the next commits grow it again
/// (docs/performance.md; measured there, not on this backend).
pub(crate) const WAL_KEEP_BYTES: i64 =
    2 * WRITER_AUTOCHECKPOINT_PAGES as i64 * crate::CIPHER_PAGE_SIZE as i64;

/// The checkpointer of one store.
#[derive(Debug)]
pub(crate) struct Checkpointer {
    worker: Worker,
    /// Envelope bytes committed since the last request.
    since: AtomicU64,
    /// A checkpoint is queued or running; a request meanwhile is the same request.
    busy: Arc<AtomicBool>,
}

impl Checkpointer {
    /// Opens the checkpointer's connection to the store at `path` (which exists, in WAL mode)
    /// with `page_key`, on a thread of its own.
    pub(crate) async fn start(path: &Path, page_key: &SecretKey) -> Result<Self> {
        let key = page_key.clone();
        let open_path: PathBuf = path.to_path_buf();
        let worker = Worker::start(path.to_path_buf(), "hearth-sqlcipher-ckpt", move || {
            open(&open_path, &key)
        })
        .await?;
        Ok(Self {
            worker,
            since: AtomicU64::new(0),
            busy: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Counts `bytes` of envelopes committed and asks for a checkpoint once enough were since
    /// the last request. Never waits.
    pub(crate) fn committed(&self, bytes: u64) {
        let since = self.since.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if since < CHECKPOINT_AFTER_BYTES {
            return;
        }
        self.since.store(0, Ordering::Relaxed);
        if self.busy.swap(true, Ordering::AcqRel) {
            return;
        }
        let busy = self.busy.clone();
        let sent = self.worker.submit(move |conn| {
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            }) {
                Ok((log, done)) => tracing::trace!(wal_pages = log, copied = done, "checkpoint"),
                // The next request tries again; the writer's own checkpoint bounds the WAL.
                Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
            }
            busy.store(false, Ordering::Release);
        });
        if sent.is_err() {
            // Closed: nothing runs, and nothing will.
            self.busy.store(false, Ordering::Release);
        }
    }

    /// Lets a checkpoint under way finish, then closes the connection.
    pub(crate) async fn close(&self) -> Result<()> {
        self.worker.close().await
    }
}

/// The checkpointer's connection: keyed and verified like the store's, nothing else (the
/// store's connection created the schema and set the journal mode, which the file keeps).
fn open(path: &Path, page_key: &SecretKey) -> Result<Connection> {
    sqlcipher_ready();
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| map_sql(e, "open the checkpointer's connection"))?;
    key_and_verify(&conn, page_key)?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| map_sql(e, "open the checkpointer's connection"))?;
    Ok(conn)
}
