//! backend-sqlcipher against the storage conformance suite on a real file, and what whole-file
//! encryption must guarantee: a wrong key opens nothing and changes nothing, no plaintext
//! reaches the disk, damage is a typed error.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend_sqlcipher::SqlcipherStorage;
use sync_core::{
    Batch, CollectionId, ErrorKind, RecordId, SecretKey, Storage, StorageOptions, StoredRecord,
};

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; 32])
}

fn files_of(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn rows(n: u32, envelope: impl Fn(u32) -> Vec<u8>) -> Batch {
    let mut batch = Batch::default();
    for i in 0..n {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        batch.puts.push(StoredRecord {
            id: RecordId(id),
            collection: CollectionId([9; 32]),
            envelope: envelope(i),
            deleted: false,
            pending_seq: Some(u64::from(i) + 1),
            sync: Vec::new(),
        });
    }
    batch
}

#[tokio::test]
async fn passes_the_storage_conformance_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("suite.db");
    sync_core::testkit::storage_suite(|| {
        let path = path.clone();
        async move {
            Ok(
                Arc::new(SqlcipherStorage::open(&path, true, &key(0x42)).await?)
                    as Arc<dyn Storage>,
            )
        }
    })
    .await;
    // The file the suite left is encrypted: no SQLite header.
    let bytes = std::fs::read(&path).expect("read");
    let page = backend_sqlcipher::CIPHER_PAGE_SIZE as usize;
    assert!(
        bytes.len() >= page && bytes.len().is_multiple_of(page),
        "whole pages of the pinned size"
    );
    assert_ne!(&bytes[..16], b"SQLite format 3\0");
}

#[tokio::test]
async fn a_wrong_page_key_is_wrong_key_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keyed.db");
    let s = SqlcipherStorage::open(&path, true, &key(1))
        .await
        .expect("create");
    s.commit(rows(100, |i| format!("row {i}").into_bytes()))
        .await
        .expect("commit");
    s.close().await.expect("close");
    let files_before = files_of(&path);
    let before = std::fs::read(&path).expect("read");

    for create in [false, true] {
        let err = SqlcipherStorage::open(&path, create, &key(2)).await.err();
        assert_eq!(
            err.as_ref().map(|e| e.kind()),
            Some(ErrorKind::WrongKey),
            "{err:?}"
        );
    }
    assert!(
        std::fs::read(&path).expect("read") == before,
        "a wrong key must not change the file"
    );
    assert_eq!(files_of(&path), files_before, "nor create journal files");

    let s = SqlcipherStorage::open(&path, false, &key(1))
        .await
        .expect("right key");
    assert_eq!(s.outbox_len().await.expect("len"), 100);
    s.check().await.expect("healthy");
    s.close().await.expect("close");
}

#[tokio::test]
async fn no_plaintext_reaches_the_files() {
    const CANARY: &[u8] = b"CANARY-ENVELOPE-PLAINTEXT-7f3a";
    const META_CANARY: &[u8] = b"CANARY-METADATA-VALUE-91c2";
    let dir = tempfile::tempdir().expect("tempdir");

    // Control: the same rows in a plain SQLite file are found, so the search below can fail.
    let plain = dir.path().join("plain.db");
    {
        let conn = rusqlite::Connection::open(&plain).expect("open plain");
        conn.execute_batch("CREATE TABLE t (v BLOB)")
            .expect("create");
        conn.execute("INSERT INTO t VALUES (?1)", [CANARY])
            .expect("insert");
    }
    assert!(contains(&std::fs::read(&plain).expect("read"), CANARY));

    let path = dir.path().join("canary.db");
    let s = SqlcipherStorage::open(&path, true, &key(7))
        .await
        .expect("create");
    let envelope = |i: u32| {
        let mut e = CANARY.to_vec();
        e.extend_from_slice(format!(" row {i}").as_bytes());
        e
    };
    let mut batch = rows(500, envelope);
    batch
        .meta
        .push(("canary".to_owned(), Some(META_CANARY.to_vec())));
    s.commit(batch).await.expect("commit");
    let check = |stage: &str| {
        let files = files_of(&path);
        assert!(!files.is_empty());
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            for c in [CANARY, META_CANARY, b"SQLite format 3", b"CREATE TABLE"] {
                assert!(
                    !contains(&bytes, c),
                    "{stage}: {} contains {}",
                    f.display(),
                    String::from_utf8_lossy(c)
                );
            }
        }
    };
    // While open the writes sit in the WAL; after closing they are checkpointed into the file.
    assert!(path.with_extension("db-wal").exists(), "WAL mode");
    check("open");
    s.close().await.expect("close");
    check("closed");

    let s = SqlcipherStorage::open(&path, false, &key(7))
        .await
        .expect("reopen");
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(
        s.get(&RecordId(id)).await.expect("get").map(|r| r.envelope),
        Some(envelope(3)),
        "the data is all there, behind the key"
    );
    assert_eq!(
        s.meta_get("canary").await.expect("meta"),
        Some(META_CANARY.to_vec())
    );
    s.close().await.expect("close");
}

#[tokio::test]
async fn integrity_check_reports_a_damaged_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("damaged.db");
    {
        let s = SqlcipherStorage::open(&path, true, &key(3))
            .await
            .expect("open");
        s.commit(rows(2000, |_| vec![7; 300]))
            .await
            .expect("commit");
        s.check().await.expect("healthy store passes");
        s.close().await.expect("close");
    }
    // Scribble over a page in the middle of the file.
    let mut bytes = std::fs::read(&path).expect("read");
    let page = backend_sqlcipher::CIPHER_PAGE_SIZE as usize;
    let victim = (bytes.len() / page / 2) * page;
    for b in &mut bytes[victim + 100..victim + 3000] {
        *b = 0x5A;
    }
    std::fs::write(&path, &bytes).expect("write");
    let result = match SqlcipherStorage::open(&path, false, &key(3)).await {
        Ok(s) => {
            let r = s.check().await;
            s.close().await.expect("close");
            r
        }
        Err(e) => Err(e),
    };
    let err = result.err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Corrupt),
        "{err:?}"
    );
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("fail authentication")
    );
}

#[tokio::test]
async fn files_that_are_not_sqlcipher_stores_are_refused_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");

    let text = dir.path().join("notes.txt");
    let content = b"these are my notes, not a database\n".repeat(200);
    std::fs::write(&text, &content).expect("write");
    let err = SqlcipherStorage::open(&text, true, &key(1)).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Corrupt));
    assert!(std::fs::read(&text).expect("read") == content);

    // A plaintext SQLite database (another app's, or a store of the `sqlite` storage).
    let plain = dir.path().join("plain.db");
    {
        let conn = rusqlite::Connection::open(&plain).expect("open plain");
        conn.execute_batch(
            "CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('ada');",
        )
        .expect("create");
    }
    let before = std::fs::read(&plain).expect("read");
    let err = SqlcipherStorage::open(&plain, true, &key(1)).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Corrupt));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("plaintext SQLite")
    );
    assert!(std::fs::read(&plain).expect("read") == before);

    // Whole pages of random bytes cannot be told from a store with another key.
    let noise = dir.path().join("noise.db");
    let mut bytes = vec![0u8; 8192];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (i * 7919 % 251) as u8;
    }
    std::fs::write(&noise, &bytes).expect("write");
    let err = SqlcipherStorage::open(&noise, true, &key(1)).await.err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::WrongKey));
    assert!(std::fs::read(&noise).expect("read") == bytes);
}

#[tokio::test]
async fn missing_files_directories_and_keys_are_typed_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let absent = dir.path().join("absent.db");
    let err = SqlcipherStorage::open(&absent, false, &key(1))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    assert!(!absent.exists());

    let err = SqlcipherStorage::open(dir.path().join("no/such/dir/x.db"), true, &key(1))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Io));

    // /proc is read-only for everyone, root included.
    let err = SqlcipherStorage::open("/proc/hearth-readonly-test.db", true, &key(1))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Io));

    // Through the registry: a page key is required, and the entry says so.
    let reg = sync_core::registry::storage("sqlcipher").expect("registered");
    assert!(reg.needs_page_key);
    let opts = StorageOptions::at(dir.path().join("nokey.db")).create(true);
    let err = (reg.open)(opts).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::InvalidInput));
    assert!(!dir.path().join("nokey.db").exists());
    let opts = StorageOptions::at(dir.path().join("withkey.db"))
        .create(true)
        .page_key(Some(key(5)));
    let s = (reg.open)(opts).await.expect("open through the registry");
    assert_eq!(s.name(), "sqlcipher");
    assert!(s.capabilities().persistent && s.capabilities().encrypted_at_rest);
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_closed_store_refuses_calls_and_concurrent_calls_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("threads.db");
    let s = Arc::new(
        SqlcipherStorage::open(&path, true, &key(9))
            .await
            .expect("open"),
    );
    s.commit(rows(64, |i| vec![i as u8; 10]))
        .await
        .expect("commit");
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            for i in 0..64u32 {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&((i + t) % 64).to_be_bytes());
                let row = s.get(&RecordId(id)).await.expect("get").expect("row");
                assert_eq!(row.envelope, vec![((i + t) % 64) as u8; 10]);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    s.close().await.expect("close");
    s.close().await.expect("closing twice is harmless");
    let err = s.get(&RecordId([0; 32])).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Storage));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("closed")
    );
}

/// A raw SQLCipher connection to `path` under `key(7)`, in hearth's file format.
fn keyed_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(&format!(
        "PRAGMA key = \"x'{}'\"; PRAGMA cipher_compatibility = 4; PRAGMA cipher_page_size = {};",
        "07".repeat(32),
        backend_sqlcipher::CIPHER_PAGE_SIZE
    ))
    .expect("key");
    conn
}

/// A version-1 store (a `UNIQUE` full id, `records_by_collection (collection, id)`; made here by
/// rebuilding a new store's tables the old way under the same key) is rebuilt into the current
/// version when opened: every row and pending write kept, the old indexes gone.
#[tokio::test]
async fn a_version_1_store_is_migrated_in_place() {
    migrated_in_place(
        1,
        &one_table(
            "CREATE TABLE records_old (id BLOB NOT NULL UNIQUE, collection BLOB NOT NULL, deleted INTEGER NOT NULL, pending_seq INTEGER, envelope BLOB NOT NULL, sync BLOB NOT NULL);
             CREATE INDEX records_by_collection ON records_old (collection, id);
             CREATE INDEX records_pending ON records_old (pending_seq) WHERE pending_seq IS NOT NULL;",
        ),
    )
    .await;
}

/// A version-2 store (one `records` table with the state in it, prefix indexes) is rebuilt the
/// same way.
#[tokio::test]
async fn a_version_2_store_is_migrated_in_place() {
    migrated_in_place(
        2,
        &one_table(
            "CREATE TABLE records_old (id BLOB NOT NULL, collection BLOB NOT NULL, deleted INTEGER NOT NULL, pending_seq INTEGER, envelope BLOB NOT NULL, sync BLOB NOT NULL);
             CREATE INDEX records_by_id ON records_old (substr(id, 1, 8));
             CREATE INDEX records_by_collection ON records_old (substr(collection, 1, 4), substr(id, 1, 8));
             CREATE INDEX records_pending ON records_old (pending_seq) WHERE pending_seq IS NOT NULL;",
        ),
    )
    .await;
}

/// A version-3 store (`records_by_collection` keyed by id prefix) has that index rebuilt in
/// row order, everything else kept.
#[tokio::test]
async fn a_version_3_store_is_migrated_in_place() {
    migrated_in_place(
        3,
        "DROP INDEX records_by_collection;
         CREATE INDEX records_by_collection ON records (substr(collection, 1, 4), substr(id, 1, 8));",
    )
    .await;
}

/// The statements that turn a current store into a one-table store (versions 1 and 2): `schema`
/// creates `records_old` and its indexes.
fn one_table(schema: &str) -> String {
    format!(
        "DROP INDEX records_by_id;
         DROP INDEX records_by_collection;
         {schema}
         INSERT INTO records_old (rowid, id, collection, deleted, pending_seq, envelope, sync)
           SELECT r.row, r.id, r.collection, r.deleted, s.pending_seq, r.envelope, s.sync
           FROM records AS r JOIN record_state AS s ON s.row = r.row;
         DROP TABLE records;
         DROP TABLE record_state;
         ALTER TABLE records_old RENAME TO records;"
    )
}

/// Fills a new store, turns it back into an older one with `downgrade`, marks it `version`,
/// opens it, and checks everything survived the migration.
async fn migrated_in_place(version: i64, downgrade: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let s = SqlcipherStorage::open(&path, true, &key(7))
        .await
        .expect("create");
    s.commit(rows(200, |i| format!("envelope {i}").into_bytes()))
        .await
        .expect("fill");
    s.close().await.expect("close");
    drop(s);
    {
        let conn = keyed_connection(&path);
        conn.execute_batch(&format!(
            "BEGIN;
             {downgrade}
             PRAGMA user_version = {version};
             COMMIT;"
        ))
        .expect("downgrade");
    }

    let s = SqlcipherStorage::open(&path, false, &key(7))
        .await
        .expect("open and migrate");
    for i in 0..200u32 {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let r = s.get(&RecordId(id)).await.expect("get").expect("kept");
        assert_eq!(r.envelope, format!("envelope {i}").into_bytes());
    }
    let scanned = s.scan_all(None, 1000).await.expect("scan");
    assert_eq!(scanned.len(), 200);
    assert!(
        scanned.windows(2).all(|w| w[0].id < w[1].id),
        "whole-id order"
    );
    // The collection's scan walks the rows in the order they were written, in pages.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = s
            .scan(&CollectionId([9; 32]), after, 64, true)
            .await
            .expect("scan");
        let Some((pos, _)) = page.last() else { break };
        after = Some(*pos);
        walked.extend(page.into_iter().map(|(_, r)| r.envelope));
    }
    assert_eq!(
        walked,
        (0..200u32)
            .map(|i| format!("envelope {i}").into_bytes())
            .collect::<Vec<_>>(),
        "the collection in row order"
    );
    assert_eq!(s.outbox_len().await.expect("outbox"), 200);
    let outbox = s.outbox(0, 1000).await.expect("outbox");
    assert_eq!(
        outbox.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<u64>>()
    );
    // An acknowledgement with bookkeeping after the migration.
    let first = outbox[0].record.id;
    let mut ack = Batch::default();
    ack.acks.push((first, 1));
    ack.syncs.push((first, b"acked".to_vec()));
    s.commit(ack).await.expect("acknowledge");
    let acked = s.get(&first).await.expect("get").expect("kept");
    assert_eq!((acked.pending_seq, &acked.sync[..]), (None, &b"acked"[..]));
    assert_eq!(s.outbox_len().await.expect("outbox"), 199);
    s.commit(rows(201, |_| b"again".to_vec()))
        .await
        .expect("write after the migration");
    assert_eq!(s.scan_all(None, 1000).await.expect("scan").len(), 201);
    s.check().await.expect("integrity");
    s.close().await.expect("close");
    drop(s);
    let conn = keyed_connection(&path);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("version");
    assert_eq!(version, backend_sqlcipher::SCHEMA_VERSION);
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .expect("prepare");
    let names: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("indexes")
        .collect::<rusqlite::Result<_>>()
        .expect("indexes");
    assert_eq!(
        names,
        [
            "record_state_pending",
            "records_by_collection",
            "records_by_id"
        ]
    );
    let collection_index: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'records_by_collection'",
            [],
            |r| r.get(0),
        )
        .expect("index");
    assert_eq!(
        collection_index,
        "CREATE INDEX records_by_collection ON records (substr(collection, 1, 4))"
    );
}

/// Commits copy themselves back into the database file without the writer checkpointing, on
/// the page key in use: 40 MiB of records, in batches of 1 MiB, stay below the writer's own
/// checkpoint (128 MiB of WAL), so only the background checkpointer can have moved them into
/// the main file; after a re-key, the next 40 MiB move too (its new connection holds the new
/// key). Everything reads back after reopening, and the file passes its integrity check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpointer_copies_commits_into_the_database_file_across_a_rekey() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ckpt.db");
    let s = SqlcipherStorage::open(&path, true, &key(1))
        .await
        .expect("create");
    // Ids in order, so the indexes grow at their ends and the WAL holds about what was
    // written (random ids dirty index pages all over, and the WAL would pass the writer's own
    // threshold).
    let id = |n: u32| {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(&n.to_be_bytes());
        RecordId(b)
    };
    let (per_batch, batches) = (1024u32, 40u32);
    let fill = |from: u32| {
        let s = &s;
        async move {
            for b in 0..batches {
                let mut batch = Batch::default();
                for i in 0..per_batch {
                    let n = from + b * per_batch + i;
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
        }
    };
    fill(0).await;
    let first = sync_core::testkit::file_grown_to(&path, 24 << 20).await;
    assert!(
        first >= 24 << 20,
        "the database file holds {first} bytes after 40 MiB of commits: nothing was checkpointed"
    );
    s.rekey(&key(2)).await.expect("rekey");
    // The re-key folded the WAL into the file; from here only the new checkpointer copies.
    let rekeyed = std::fs::metadata(&path).expect("file").len();
    fill(batches * per_batch).await;
    let second = sync_core::testkit::file_grown_to(&path, rekeyed + (24 << 20)).await;
    assert!(
        second >= rekeyed + (24 << 20),
        "the database file grew from {rekeyed} to {second} bytes after 40 MiB of commits on the new key"
    );
    s.close().await.expect("close");
    let s = SqlcipherStorage::open(&path, false, &key(2))
        .await
        .expect("reopen with the new key");
    let all = s.scan_all(None, 200_000).await.expect("scan");
    assert_eq!(all.len(), (2 * batches * per_batch) as usize);
    for n in (0..2 * batches * per_batch).step_by(997) {
        let r = s.get(&id(n)).await.expect("get").expect("present");
        assert_eq!(r.envelope, vec![(n % 251) as u8; 1024]);
    }
    s.check().await.expect("integrity");
    s.close().await.expect("close");
}
