//! WAL checkpoints off the commit path, for any sqlx SQLite database in WAL mode (this crate's
//! store, and the sync server's SQLite store).

use sqlx::sqlite::SqlitePool;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::mpsc;

/// Runs SQLite's WAL checkpoints on a connection of its own, beside the commits.
///
/// A checkpoint copies the pages committed to the WAL back into the database file and syncs
/// it. Run by the writer inside a commit (SQLite's default, `wal_autocheckpoint`), it holds
/// up every commit that crosses the threshold for as long as it takes, and during an initial
/// sync it was half of the device writer's time (docs/performance.md). Here a task runs
/// `PRAGMA wal_checkpoint(PASSIVE)` when the writer has committed enough bytes
/// ([`WalCheckpointer::committed`]): WAL mode lets one checkpointer copy committed frames
/// while the writer appends new ones, and the writer restarts the WAL from its start once
/// everything in it has been copied. The writer should keep a `wal_autocheckpoint` of its own,
/// larger, as a bound on the WAL should the checkpointer fall behind. Crash safety is
/// SQLite's either way: a checkpoint interrupted anywhere is redone from the WAL at the next
/// open.
#[derive(Debug)]
pub struct WalCheckpointer {
    /// Bytes committed after which a checkpoint is asked for.
    every: u64,
    /// Estimated bytes committed since the last request.
    since: AtomicU64,
    /// Requests (one waits at most: a request while one waits is the same request), and the
    /// task, until [`WalCheckpointer::stop`] takes them.
    task: Mutex<Option<(mpsc::Sender<()>, tokio::task::JoinHandle<()>)>>,
}

impl WalCheckpointer {
    /// Starts the checkpointer on `pool` (give it one connection of its own, connected lazily
    /// if the schema is created after this call), asking for a checkpoint after every `every`
    /// bytes reported to [`Self::committed`]. It stops when [`Self::stop`] is called or this
    /// value is dropped (then without waiting for a checkpoint under way). Call from within a
    /// tokio runtime.
    pub fn start(pool: SqlitePool, every: u64) -> Self {
        let (tx, mut rx) = mpsc::channel::<()>(1);
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                    .fetch_one(&pool)
                    .await
                {
                    Ok((_, log, done)) => {
                        tracing::trace!(wal_pages = log, copied = done, "checkpoint");
                    }
                    // The next request tries again; the writer's own checkpoint bounds the WAL.
                    Err(e) => tracing::warn!(error = %e, "background checkpoint failed"),
                }
            }
            pool.close().await;
        });
        Self {
            every,
            since: AtomicU64::new(0),
            task: Mutex::new(Some((tx, task))),
        }
    }

    /// Counts `bytes` committed (an estimate: what fills the WAL) and asks for a checkpoint
    /// once enough have been since the last request. Never waits.
    pub fn committed(&self, bytes: u64) {
        let since = self.since.fetch_add(bytes, Ordering::Relaxed) + bytes;
        if since < self.every {
            return;
        }
        self.since.store(0, Ordering::Relaxed);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((tx, _)) = task.as_ref() {
            // Full: a request is waiting already, and covers this one.
            let _ = tx.try_send(());
        }
    }

    /// Stops the checkpointer: a checkpoint under way finishes, then its connection closes.
    /// Later calls do nothing.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((tx, task)) = task {
            drop(tx);
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "the checkpointer ended abnormally");
            }
        }
    }
}
