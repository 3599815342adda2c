//! backend-sqlite against the storage conformance suite, and its handling of files that are not
//! hearth stores.

use std::sync::Arc;

use backend_sqlite::SqliteStorage;
use sync_core::{ErrorKind, Storage};

#[tokio::test]
async fn passes_the_storage_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("suite.db");
    sync_core::testkit::storage_suite(|| {
        let path = path.clone();
        async move { Ok(Arc::new(SqliteStorage::open(&path, true).await?) as Arc<dyn Storage>) }
    })
    .await;
}

#[tokio::test]
async fn a_missing_file_without_create_is_not_found_and_is_not_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.db");
    let err = SqliteStorage::open(&path, false)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    assert!(!path.exists());
}

#[tokio::test]
async fn a_missing_directory_is_an_io_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("no/such/dir/store.db");
    let err = SqliteStorage::open(&path, true).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Io));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("does not exist")
    );
}

#[tokio::test]
async fn a_read_only_location_is_an_io_error() {
    // /proc is read-only for everyone, root included, so this holds in CI as root.
    let err = SqliteStorage::open("/proc/hearth-readonly-test.db", true)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Io));
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).expect("write");
    let err = SqliteStorage::open(&path, true)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Corrupt));
    assert!(
        std::fs::read(&path).expect("read") == content,
        "file must be unchanged"
    );
}

#[tokio::test]
async fn a_sqlite_database_of_another_app_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("connect");
        sqlx::query("CREATE TABLE contacts (name TEXT)")
            .execute(&pool)
            .await
            .expect("create");
        sqlx::query("INSERT INTO contacts VALUES ('ada')")
            .execute(&pool)
            .await
            .expect("insert");
        pool.close().await;
    }
    let before = std::fs::read(&path).expect("read");
    let err = SqliteStorage::open(&path, true).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Corrupt));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("not a hearth store")
    );
    assert!(
        std::fs::read(&path).expect("read") == before,
        "file must be unchanged"
    );
}

#[tokio::test]
async fn integrity_check_reports_a_damaged_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("damaged.db");
    {
        let s = SqliteStorage::open(&path, true).await.expect("open");
        let mut batch = sync_core::Batch::default();
        for n in 0..2000u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&n.to_be_bytes());
            batch.puts.push(sync_core::StoredRecord {
                id: sync_core::RecordId(id),
                collection: sync_core::CollectionId([9; 32]),
                envelope: vec![7; 300],
                deleted: false,
                pending_seq: Some(u64::from(n) + 1),
                sync: Vec::new(),
            });
        }
        s.commit(batch).await.expect("commit");
        s.check().await.expect("healthy store passes");
        s.close().await.expect("close");
    }
    // Scribble over an index page in the middle of the file.
    let mut bytes = std::fs::read(&path).expect("read");
    let page = 4096;
    let victim = (bytes.len() / page / 2) * page;
    for b in &mut bytes[victim + 100..victim + 3000] {
        *b = 0x5A;
    }
    std::fs::write(&path, &bytes).expect("write");
    let result = match SqliteStorage::open(&path, false).await {
        Ok(s) => s.check().await,
        Err(e) => Err(e),
    };
    assert_eq!(result.err().map(|e| e.kind()), Some(ErrorKind::Corrupt));
}

#[tokio::test]
async fn sqlite_reports_its_heap_and_its_page_caches_share_of_it() {
    use sync_core::{Batch, CollectionId, RecordId, StoredRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SqliteStorage::open(dir.path().join("heap.db"), true)
        .await
        .expect("open");
    backend_sqlite::sqlite_memory_highwater(true);
    backend_sqlite::sqlite_page_cache_highwater(true);
    // 4 MiB of rows in one transaction: its pages pass through the writer's page cache.
    let puts = (0u32..1024)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            StoredRecord {
                id: RecordId(id),
                collection: CollectionId([7; 32]),
                envelope: vec![0x5a; 4096],
                deleted: false,
                pending_seq: None,
                sync: Vec::new(),
            }
        })
        .collect();
    storage
        .commit(Batch {
            puts,
            ..Batch::default()
        })
        .await
        .expect("commit");
    let caches = backend_sqlite::sqlite_page_cache_highwater(false);
    let heap = backend_sqlite::sqlite_memory_highwater(false);
    assert!(caches >= 1024 * 1024, "page caches held {caches} bytes");
    assert!(
        caches <= heap,
        "caches {caches} > all of SQLite's heap {heap}"
    );
    assert!(backend_sqlite::sqlite_memory_used() > 0);
}
