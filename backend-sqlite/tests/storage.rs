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

/// A store written with schema version 1 (a `UNIQUE` full id, `records_by_collection` on the
/// full ids) is rebuilt into the current version (prefix indexes, the state beside the
/// envelopes, the collection index in row order) when opened: every row, pending write and metadata value is kept, and reads, scans and writes
/// behave as on a new store.
#[tokio::test]
async fn a_version_1_store_is_migrated_in_place() {
    migrated_in_place(
        1,
        &[
            "CREATE TABLE records (id BLOB NOT NULL UNIQUE, collection BLOB NOT NULL, deleted INTEGER NOT NULL, pending_seq INTEGER, envelope BLOB NOT NULL, sync BLOB NOT NULL)",
            "CREATE INDEX records_by_collection ON records (collection, id)",
            "CREATE INDEX records_pending ON records (pending_seq) WHERE pending_seq IS NOT NULL",
        ],
    )
    .await;
}

/// A store written with schema version 2 (one `records` table, prefix indexes) is rebuilt
/// the same way.
#[tokio::test]
async fn a_version_2_store_is_migrated_in_place() {
    migrated_in_place(
        2,
        &[
            "CREATE TABLE records (id BLOB NOT NULL, collection BLOB NOT NULL, deleted INTEGER NOT NULL, pending_seq INTEGER, envelope BLOB NOT NULL, sync BLOB NOT NULL)",
            "CREATE INDEX records_by_id ON records (substr(id, 1, 8))",
            "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4), substr(id, 1, 8))",
            "CREATE INDEX records_pending ON records (pending_seq) WHERE pending_seq IS NOT NULL",
        ],
    )
    .await;
}

/// A store written with schema version 3 (the collection index keyed by id prefix) has that
/// index rebuilt in row order, everything else kept.
#[tokio::test]
async fn a_version_3_store_is_migrated_in_place() {
    migrated_in_place(
        3,
        &[
            "CREATE TABLE records (row INTEGER PRIMARY KEY, id BLOB NOT NULL, collection BLOB NOT NULL, deleted INTEGER NOT NULL, envelope BLOB NOT NULL)",
            "CREATE TABLE record_state (row INTEGER PRIMARY KEY, pending_seq INTEGER, sync BLOB NOT NULL)",
            "CREATE INDEX records_by_id ON records (substr(id, 1, 8))",
            "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4), substr(id, 1, 8))",
            "CREATE INDEX record_state_pending ON record_state (pending_seq) WHERE pending_seq IS NOT NULL",
        ],
    )
    .await;
}

/// The store's page size and its writer's `wal_autocheckpoint`, in pages.
async fn pages(s: &SqliteStorage) -> (i64, i64) {
    let get = |pragma: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("PRAGMA {pragma}")))
            .fetch_one(s.pool())
            .await
            .expect("pragma")
    };
    (get("page_size").await, get("wal_autocheckpoint").await)
}

#[tokio::test]
async fn a_new_store_has_pages_of_page_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.db");
    let s = SqliteStorage::open(&path, true).await.expect("create");
    let page = i64::from(backend_sqlite::PAGE_SIZE);
    assert_eq!(pages(&s).await, (page, 128 * 1024 * 1024 / page));
    s.close().await.expect("close");
    let s = SqliteStorage::open(&path, false).await.expect("reopen");
    assert_eq!(pages(&s).await, (page, 128 * 1024 * 1024 / page));
    s.close().await.expect("close");
}

/// Writes 300 rows (some deleted, some pending, ids sharing prefixes in pairs) into a store of
/// schema `version` made by `schema`, opens it, and checks everything survived the migration.
async fn migrated_in_place(version: i64, schema: &[&str]) {
    use sync_core::{Batch, CollectionId, RecordId, StoredRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let id = |n: u32| {
        // Spread over the id space like blind ids, with pairs sharing their first 8 bytes.
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&(n / 2).wrapping_mul(2_654_435_761).to_be_bytes());
        b[31] = n as u8;
        RecordId(b)
    };
    let notes = CollectionId([1; 32]);
    let rows: Vec<StoredRecord> = (0..300u32)
        .map(|n| StoredRecord {
            id: id(n),
            collection: notes,
            envelope: format!("envelope {n}").into_bytes(),
            deleted: n % 7 == 0,
            pending_seq: (n % 5 == 0).then_some(u64::from(n) + 1),
            sync: vec![n as u8; 3],
        })
        .collect();
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("connect");
        let set_version = format!("PRAGMA user_version = {version}");
        for stmt in schema.iter().copied().chain([
            "CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
            "PRAGMA application_id = 1213355080",
            &set_version,
            "INSERT INTO meta VALUES ('hearth.device', x'0102')",
        ]) {
            sqlx::query(sqlx::AssertSqlSafe(stmt))
                .execute(&pool)
                .await
                .expect("old schema");
        }
        for (n, r) in rows.iter().enumerate() {
            if version < 3 {
                sqlx::query("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?)")
                    .bind(&r.id.0[..])
                    .bind(&r.collection.0[..])
                    .bind(i64::from(r.deleted))
                    .bind(r.pending_seq.map(|s| s as i64))
                    .bind(&r.envelope[..])
                    .bind(&r.sync[..])
                    .execute(&pool)
                    .await
                    .expect("old row");
            } else {
                sqlx::query("INSERT INTO records VALUES (?, ?, ?, ?, ?)")
                    .bind(n as i64 + 1)
                    .bind(&r.id.0[..])
                    .bind(&r.collection.0[..])
                    .bind(i64::from(r.deleted))
                    .bind(&r.envelope[..])
                    .execute(&pool)
                    .await
                    .expect("old row");
                sqlx::query("INSERT INTO record_state VALUES (?, ?, ?)")
                    .bind(n as i64 + 1)
                    .bind(r.pending_seq.map(|s| s as i64))
                    .bind(&r.sync[..])
                    .execute(&pool)
                    .await
                    .expect("old state");
            }
        }
        pool.close().await;
    }

    let s = SqliteStorage::open(&path, false).await.expect("migrate");
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(s.pool())
        .await
        .expect("version");
    assert_eq!(version, backend_sqlite::SCHEMA_VERSION);
    // The file keeps the page size it was made with, and the writer's own checkpoint threshold
    // is counted in those pages.
    assert_eq!(pages(&s).await, (4096, 128 * 1024 * 1024 / 4096));
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(s.pool())
    .await
    .expect("indexes");
    assert_eq!(
        indexes,
        [
            "record_state_pending",
            "records_by_collection",
            "records_by_id"
        ],
        "the old indexes are gone"
    );
    for r in &rows {
        assert_eq!(s.get(&r.id).await.expect("get").as_ref(), Some(r));
    }
    let mut sorted: Vec<RecordId> = rows.iter().map(|r| r.id).collect();
    sorted.sort();
    let scanned: Vec<RecordId> = s
        .scan_all(None, 1000)
        .await
        .expect("scan")
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(scanned, sorted, "whole-id order");
    let collection_index: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'records_by_collection'",
    )
    .fetch_one(s.pool())
    .await
    .expect("index");
    assert_eq!(
        collection_index,
        "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4))"
    );
    // The collection's scan walks the rows in the order they were written, in pages.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = s.scan(&notes, after, 64, true).await.expect("scan");
        let Some((pos, _)) = page.last() else { break };
        after = Some(*pos);
        walked.extend(page.into_iter().map(|(_, r)| r));
    }
    assert_eq!(walked, rows, "the collection in row order");
    assert_eq!(s.outbox_len().await.expect("outbox"), 60);
    let outbox = s.outbox(0, 1000).await.expect("outbox");
    let mut pending: Vec<(u64, &StoredRecord)> = rows
        .iter()
        .filter_map(|r| r.pending_seq.map(|seq| (seq, r)))
        .collect();
    pending.sort_by_key(|(seq, _)| *seq);
    assert_eq!(
        outbox
            .iter()
            .map(|e| (e.seq, &e.record))
            .collect::<Vec<_>>(),
        pending,
        "the outbox, in order, with its envelopes and bookkeeping"
    );
    assert_eq!(
        s.meta_get("hearth.device").await.expect("meta"),
        Some(vec![1, 2])
    );
    // Writes after the migration: a replacement and a new row.
    let mut b = Batch::default();
    b.puts.push(StoredRecord {
        envelope: b"replaced".to_vec(),
        pending_seq: None,
        ..rows[3].clone()
    });
    b.puts.push(StoredRecord {
        id: RecordId([9; 32]),
        ..rows[4].clone()
    });
    // An acknowledgement with bookkeeping, and a removal.
    b.acks.push((rows[5].id, 6));
    b.syncs.push((rows[5].id, b"acked".to_vec()));
    b.removes.push(rows[6].id);
    s.commit(b).await.expect("write");
    assert_eq!(
        s.get(&rows[3].id).await.expect("get").map(|r| r.envelope),
        Some(b"replaced".to_vec())
    );
    assert_eq!(
        s.get(&RecordId([9; 32]))
            .await
            .expect("get")
            .map(|r| r.envelope),
        Some(rows[4].envelope.clone())
    );
    let acked = s.get(&rows[5].id).await.expect("get").expect("row");
    assert_eq!((acked.pending_seq, &acked.sync[..]), (None, &b"acked"[..]));
    assert_eq!(s.get(&rows[6].id).await.expect("get"), None);
    // rows[5] left the outbox; nothing else written was pending.
    assert_eq!(s.outbox_len().await.expect("outbox"), 59);
    assert_eq!(s.scan_all(None, 1000).await.expect("scan").len(), 300);
    s.check().await.expect("integrity");
    s.close().await.expect("close");
    // Opening again finds the current version and changes nothing.
    let s = SqliteStorage::open(&path, false).await.expect("reopen");
    assert_eq!(s.scan_all(None, 1000).await.expect("scan").len(), 300);
    s.close().await.expect("close");
}

/// Commits copy themselves back into the database file without the writer checkpointing: 48
/// MiB of records, in batches of 1 MiB, stay below the writer's own checkpoint (128 MiB of WAL),
/// so only the background checkpointer can have moved them into the main file. Everything
/// reads back, also after reopening, and the file passes its integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_commits_into_the_database_file() {
    use sync_core::{Batch, CollectionId, RecordId, StoredRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ckpt.db");
    let s = SqliteStorage::open(&path, true).await.expect("create");
    let id = |n: u32| {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
        b[4..8].copy_from_slice(&n.to_be_bytes());
        RecordId(b)
    };
    let per_batch = 1024u32;
    let batches = 48u32;
    for b in 0..batches {
        let mut batch = Batch::default();
        for i in 0..per_batch {
            let n = b * per_batch + i;
            batch.puts.push(StoredRecord {
                id: id(n),
                collection: CollectionId([3; 32]),
                envelope: vec![(n % 251) as u8; 1024],
                deleted: false,
                pending_seq: None,
                sync: Vec::new(),
            });
        }
        s.commit(batch).await.expect("commit");
    }
    // The checkpointer runs beside the commits; give its last request time to finish.
    let main_len = sync_core::testkit::file_grown_to(&path, 32 << 20).await;
    assert!(
        main_len >= 32 << 20,
        "the database file holds {main_len} bytes after 48 MiB of commits: nothing was checkpointed"
    );
    for n in (0..batches * per_batch).step_by(997) {
        let r = s.get(&id(n)).await.expect("get").expect("present");
        assert_eq!(r.envelope, vec![(n % 251) as u8; 1024]);
    }
    s.close().await.expect("close");
    let s = SqliteStorage::open(&path, false).await.expect("reopen");
    assert_eq!(
        s.scan_all(None, 100_000).await.expect("scan").len(),
        (batches * per_batch) as usize
    );
    s.check().await.expect("integrity");
    s.close().await.expect("close");
}
