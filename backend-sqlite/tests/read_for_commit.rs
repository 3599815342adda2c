//! A commit reuses the rows `get_many_for_commit` read just before it (instead of looking its
//! puts up again) only while they still hold: these tests write between the read and the
//! commit and check that the commit still replaces the stored row instead of adding a second
//! one with the same id.

use backend_sqlite::SqliteStorage;
use sqlx::sqlite::SqlitePoolOptions;
use sync_core::{Batch, CollectionId, RecordId, Storage, StoredRecord};

fn id(n: u8) -> RecordId {
    RecordId([n; 32])
}

fn put(n: u8, envelope: &str) -> StoredRecord {
    StoredRecord {
        id: id(n),
        collection: CollectionId([7; 32]),
        envelope: envelope.as_bytes().to_vec(),
        deleted: false,
        pending_seq: None,
        sync: Vec::new(),
    }
}

/// A new store in a temporary directory (kept while the first value lives), and its path.
async fn new_store() -> (tempfile::TempDir, std::path::PathBuf, SqliteStorage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let s = SqliteStorage::open(&path, true).await.expect("open");
    (dir, path, s)
}

async fn commit_puts(s: &SqliteStorage, puts: Vec<StoredRecord>) {
    s.commit(Batch {
        puts,
        ..Batch::default()
    })
    .await
    .expect("commit");
}

/// Rows in the file's two tables, read on a connection of its own.
async fn rows(path: &std::path::Path) -> (i64, i64) {
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    let count = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM {table}"
            )))
            .fetch_one(&pool)
            .await
            .expect("count")
        }
    };
    let counts = (count("records").await, count("record_state").await);
    pool.close().await;
    counts
}

async fn envelope(s: &SqliteStorage, n: u8) -> Vec<u8> {
    s.get(&id(n)).await.expect("get").expect("stored").envelope
}

#[tokio::test]
async fn a_row_another_connection_wrote_after_the_read_is_replaced_not_doubled() {
    let (_dir, path, a) = new_store().await;
    let b = SqliteStorage::open(&path, false).await.expect("open b");
    // a reads the id as absent; b (another store on the file) then writes it.
    assert_eq!(
        a.get_many_for_commit(&[id(1)]).await.expect("read"),
        vec![None]
    );
    commit_puts(&b, vec![put(1, "from b")]).await;
    commit_puts(&a, vec![put(1, "from a")]).await;
    assert_eq!(envelope(&a, 1).await, b"from a");
    assert_eq!(rows(&path).await, (1, 1));
    a.check().await.expect("integrity");
    a.close().await.expect("close a");
    b.close().await.expect("close b");
}

#[tokio::test]
async fn a_row_read_as_stored_is_replaced_by_the_commit_that_follows() {
    let (_dir, path, s) = new_store().await;
    // Read absent, then inserted; read stored, then replaced; twice, so the second read and
    // commit follow a commit that used a read.
    for round in ["first", "second", "third"] {
        s.get_many_for_commit(&[id(1), id(2)]).await.expect("read");
        commit_puts(&s, vec![put(1, round), put(2, round)]).await;
    }
    assert_eq!(envelope(&s, 1).await, b"third");
    assert_eq!(envelope(&s, 2).await, b"third");
    assert_eq!(rows(&path).await, (2, 2));
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_read_is_not_used_by_a_second_commit() {
    let (_dir, path, s) = new_store().await;
    // The read finds the id absent; the first commit inserts it, the second must find it.
    s.get_many_for_commit(&[id(1)]).await.expect("read");
    commit_puts(&s, vec![put(1, "one")]).await;
    commit_puts(&s, vec![put(1, "two")]).await;
    assert_eq!(envelope(&s, 1).await, b"two");
    assert_eq!(rows(&path).await, (1, 1));
    s.close().await.expect("close");
}

#[tokio::test]
async fn puts_the_read_did_not_cover_are_looked_up() {
    let (_dir, path, s) = new_store().await;
    commit_puts(&s, vec![put(2, "stored")]).await;
    // Only id 1 is read; id 2 is stored and must be replaced, not inserted again.
    s.get_many_for_commit(&[id(1)]).await.expect("read");
    commit_puts(&s, vec![put(1, "new"), put(2, "replaced")]).await;
    assert_eq!(envelope(&s, 1).await, b"new");
    assert_eq!(envelope(&s, 2).await, b"replaced");
    assert_eq!(rows(&path).await, (2, 2));
    s.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_ran_while_the_read_went_on_voids_the_read() {
    let (_dir, path, s) = new_store().await;
    // Many reads and commits of the same ids at once, from tasks that share the store: whatever
    // the interleaving, each id ends as one row.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..8u8 {
        let s = s.clone();
        tasks.spawn(async move {
            for round in 0..20u8 {
                let ids: Vec<RecordId> = (0..4).map(|k| id((t + round + k) % 6)).collect();
                s.get_many_for_commit(&ids).await.expect("read");
                let puts = ids
                    .iter()
                    .map(|i| put(i.0[0], &format!("{t}-{round}")))
                    .collect();
                commit_puts(&s, puts).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(rows(&path).await, (6, 6));
    s.check().await.expect("integrity");
    s.close().await.expect("close");
}
