//! The encrypted store end to end on a real SQLite file with orion.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth::{
    Cipher, ErrorKind, KdfCost, OpenOptions, Store, WriteBatch, backend_sqlite::SqliteStorage,
    crypto_orion::OrionCipher,
};
use serde_json::json;

const PASS: &str = "correct horse battery staple";

async fn open(path: &Path, pass: &str) -> hearth::Result<Store> {
    Store::builder()
        .path(path)
        .passphrase(pass)
        .storage("sqlite")
        .cipher("orion")
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
}

fn files_of(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn no_plaintext_reaches_the_sqlite_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("canary.db");
    let canaries: [&[u8]; 4] = [
        b"CANARYCOLLECTION",
        b"CANARYKEY",
        b"CANARYVALUE",
        b"CANARYPASSPHRASE",
    ];
    let pass = "CANARYPASSPHRASE and more";
    let store = open(&db, pass).await.expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..300 {
        batch
            .put(
                format!("CANARYCOLLECTION-{}", i % 3),
                format!("CANARYKEY-{i}"),
                &json!({"body": format!("CANARYVALUE number {i}"), "n": i}),
            )
            .expect("put");
    }
    store.write(batch).await.expect("write");
    store
        .delete("CANARYCOLLECTION-0", "CANARYKEY-0")
        .await
        .expect("delete");

    // While open (the WAL holds the writes) and after closing (checkpointed into the db).
    let check = |stage: &str| {
        let files = files_of(&db);
        assert!(!files.is_empty());
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            for c in canaries {
                assert!(
                    !contains(&bytes, c),
                    "{stage}: {} contains {}",
                    f.display(),
                    String::from_utf8_lossy(c)
                );
            }
        }
    };
    check("open");
    store.close().await.expect("close");
    check("closed");

    // The data is all there, behind the passphrase.
    let store = open(&db, pass).await.expect("reopen");
    let v = store
        .get("CANARYCOLLECTION-1", "CANARYKEY-1")
        .await
        .expect("get");
    assert_eq!(v, Some(json!({"body": "CANARYVALUE number 1", "n": 1})));
    assert_eq!(
        store
            .get("CANARYCOLLECTION-0", "CANARYKEY-0")
            .await
            .expect("get"),
        None
    );
}

#[tokio::test]
async fn wrong_passphrase_is_typed_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("pass.db");
    let store = open(&db, PASS).await.expect("create");
    store.put("notes", "a", &json!("kept")).await.expect("put");
    store.close().await.expect("close");
    let before = std::fs::read(&db).expect("read");

    let err = open(&db, "Tr0ub4dor&3").await.err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    assert!(
        !format!("{err:?}").contains("Tr0ub4dor"),
        "the passphrase must not appear in errors"
    );
    assert!(
        std::fs::read(&db).expect("read") == before,
        "a failed unlock must not change the file"
    );

    let store = open(&db, PASS).await.expect("right passphrase");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("kept"))
    );
}

#[tokio::test]
async fn a_missing_store_without_create_is_not_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Store::builder()
        .path(dir.path().join("absent.db"))
        .passphrase(PASS)
        .create(false)
        .open()
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
}

#[tokio::test]
async fn writes_version_log_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("log.db");
    let store = open(&db, PASS).await.expect("open");
    let device = store.device();
    store
        .put("notes", "a", &json!({"v": 1}))
        .await
        .expect("put");
    store
        .put("notes", "a", &json!({"v": 2}))
        .await
        .expect("put");
    store
        .put("notes", "b", &json!({"v": 1}))
        .await
        .expect("put");
    let a = store
        .get_record("notes", "a")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        a.version.get(&device),
        2,
        "the version names the device's write"
    );
    let b = store
        .get_record("notes", "b")
        .await
        .expect("get")
        .expect("exists");
    assert!(b.hlc > a.hlc, "HLC orders writes");

    // The outbox holds one entry per changed record, the newest write, in sequence order.
    let outbox = store.storage().outbox(0, 10).await.expect("outbox");
    assert_eq!(outbox.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2, 3]);

    assert!(store.delete("notes", "a").await.expect("delete"));
    assert!(
        !store.delete("notes", "a").await.expect("delete twice"),
        "nothing left to delete"
    );
    assert!(!store.delete("notes", "never").await.expect("delete absent"));
    let tomb = store
        .get_record("notes", "a")
        .await
        .expect("get")
        .expect("tombstone kept");
    assert!(tomb.is_deleted());
    assert_eq!(tomb.version.get(&device), 4);
    let info = store.info().await.expect("info");
    assert_eq!((info.last_seq, info.pending), (4, 2));
    store.close().await.expect("close");

    let store = open(&db, PASS).await.expect("reopen");
    assert_eq!(store.device(), device, "device identity persists");
    store.put("notes", "c", &json!(null)).await.expect("put");
    let info = store.info().await.expect("info");
    assert_eq!(info.last_seq, 5, "sequence numbers continue after reopen");
    let c = store
        .get_record("notes", "c")
        .await
        .expect("get")
        .expect("exists");
    assert!(c.hlc > tomb.hlc, "the clock continues after reopen");
    assert_eq!(
        store.get("notes", "c").await.expect("get"),
        Some(json!(null)),
        "JSON null is a value, not a delete"
    );
}

#[tokio::test]
async fn scan_is_ordered_filtered_and_limited() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("scan.db"), PASS).await.expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..1200 {
        batch
            .put("notes", format!("a{i:04}"), &json!(i))
            .expect("put");
    }
    for i in 0..10 {
        batch
            .put("notes", format!("b{i:02}"), &json!(i))
            .expect("put");
        batch
            .put("other", format!("a{i:04}"), &json!(-1))
            .expect("put");
    }
    store.write(batch).await.expect("write");
    store.delete("notes", "a0001").await.expect("delete");

    let first = store.scan("notes", Some("a"), 3).await.expect("scan");
    let keys: Vec<_> = first.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["a0000", "a0002", "a0003"],
        "sorted by key, tombstones skipped"
    );
    let b = store.scan("notes", Some("b"), 100).await.expect("scan");
    assert_eq!(b.len(), 10);
    assert!(b.windows(2).all(|w| w[0].0 < w[1].0));
    let all = store.scan("notes", None, 5000).await.expect("scan");
    assert_eq!(all.len(), 1209, "scan crosses storage pages");
    assert!(
        store
            .scan("missing", None, 10)
            .await
            .expect("scan")
            .is_empty()
    );

    // Paging through a collection in storage order visits each live record once.
    let mut seen = 0;
    let mut after = None;
    loop {
        let page = store.scan_page("notes", after, 100).await.expect("page");
        seen += page.records.len();
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, 1209);
}

#[tokio::test]
async fn invalid_input_is_rejected_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("bad.db"), PASS).await.expect("open");
    let mut batch = WriteBatch::new();
    batch.put("notes", "ok", &json!(1)).expect("put");
    batch
        .put("", "empty-collection", &json!(1))
        .expect("queued");
    assert_eq!(
        store.write(batch).await.err().map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        store.get("notes", "ok").await.expect("get"),
        None,
        "a rejected batch writes nothing"
    );
    let mut bad = WriteBatch::new();
    assert_eq!(
        bad.put_json("notes", "k", "{not json")
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    let long_key = "k".repeat(5000);
    assert_eq!(
        store
            .put("notes", &long_key, &json!(1))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(store.info().await.expect("info").last_seq, 0);
}

async fn raw_pool(db: &Path) -> sqlx::SqlitePool {
    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(db);
    sqlx::SqlitePool::connect_with(opts)
        .await
        .expect("raw connect")
}

#[tokio::test]
async fn tampered_and_moved_envelopes_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("tamper.db");
    let store = open(&db, PASS).await.expect("open");
    store.put("notes", "a", &json!("alpha")).await.expect("put");
    store.put("notes", "b", &json!("beta")).await.expect("put");
    let id_a = store.record_id("notes", "a").expect("id");
    let id_b = store.record_id("notes", "b").expect("id");
    let env_a = store
        .storage()
        .get(&id_a)
        .await
        .expect("get")
        .expect("row")
        .envelope;
    let env_b = store
        .storage()
        .get(&id_b)
        .await
        .expect("get")
        .expect("row")
        .envelope;
    store.close().await.expect("close");

    let pool = raw_pool(&db).await;
    let set = |id: hearth::RecordId, env: Vec<u8>| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE records SET envelope = ? WHERE id = ?")
                .bind(env)
                .bind(id.0.to_vec())
                .execute(&pool)
                .await
                .expect("update");
        }
    };
    // Moved: b's ciphertext served as a's.
    set(id_a, env_b.clone()).await;
    let store = open(&db, PASS).await.expect("open");
    assert_eq!(
        store.get("notes", "a").await.err().map(|e| e.kind()),
        Some(ErrorKind::Tampered)
    );
    // A write on top of a tampered record refuses rather than guessing a version.
    assert_eq!(
        store
            .put("notes", "a", &json!("x"))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Tampered)
    );
    store.close().await.expect("close");
    // Flipped byte.
    let mut flipped = env_a.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    set(id_a, flipped).await;
    let store = open(&db, PASS).await.expect("open");
    assert_eq!(
        store.get("notes", "a").await.err().map(|e| e.kind()),
        Some(ErrorKind::Tampered)
    );
    store.close().await.expect("close");
    // Truncated, and a future format version.
    set(id_a, env_a[..20].to_vec()).await;
    let store = open(&db, PASS).await.expect("open");
    assert_eq!(
        store.get("notes", "a").await.err().map(|e| e.kind()),
        Some(ErrorKind::Corrupt)
    );
    store.close().await.expect("close");
    let mut future = env_a.clone();
    future[0] = 9;
    set(id_a, future).await;
    let store = open(&db, PASS).await.expect("open");
    assert_eq!(
        store.get("notes", "a").await.err().map(|e| e.kind()),
        Some(ErrorKind::Unsupported)
    );
    // The untouched record still reads.
    assert_eq!(
        store.get("notes", "b").await.expect("get"),
        Some(json!("beta"))
    );
    pool.close().await;
}

#[tokio::test]
async fn a_second_writer_on_the_same_file_is_detected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("two.db");
    let one = open(&db, PASS).await.expect("open one");
    let two = open(&db, PASS).await.expect("open two");
    one.put("notes", "a", &json!(1))
        .await
        .expect("first writer");
    let err = two
        .put("notes", "b", &json!(2))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(
        err,
        Some(ErrorKind::Conflict),
        "stale device state must not reuse a sequence number"
    );
    assert_eq!(one.get("notes", "b").await.expect("get"), None);
    one.put("notes", "c", &json!(3))
        .await
        .expect("first writer continues");
    // Refused until reopened, not once: a refused commit wrote nothing, so the second handle's
    // state is not taken for stale and read back from the file.
    assert_eq!(
        two.put("notes", "d", &json!(4))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Conflict)
    );
}

/// A cipher that claims a byte format other than hearth's (it is orion inside), to open a store
/// with a cipher that cannot read it.
#[derive(Debug)]
struct Renamed;
impl Cipher for Renamed {
    fn name(&self) -> &'static str {
        "orion-renamed"
    }
    fn format(&self) -> &'static str {
        "not-hearth-1"
    }
    fn aead_seal(
        &self,
        k: &hearth::SecretKey,
        n: &[u8; 24],
        a: &[u8],
        p: &[u8],
    ) -> hearth::Result<Vec<u8>> {
        OrionCipher.aead_seal(k, n, a, p)
    }
    fn aead_open(
        &self,
        k: &hearth::SecretKey,
        n: &[u8; 24],
        a: &[u8],
        c: &[u8],
    ) -> hearth::Result<Vec<u8>> {
        OrionCipher.aead_open(k, n, a, c)
    }
    fn password_kdf(
        &self,
        p: &[u8],
        s: &[u8; 16],
        c: KdfCost,
    ) -> hearth::Result<hearth::SecretKey> {
        OrionCipher.password_kdf(p, s, c)
    }
    fn keyed_hash(&self, k: &hearth::SecretKey, parts: &[&[u8]]) -> hearth::Result<[u8; 32]> {
        OrionCipher.keyed_hash(k, parts)
    }
    fn fill_random(&self, b: &mut [u8]) -> hearth::Result<()> {
        OrionCipher.fill_random(b)
    }
    fn x25519_public(&self, s: &hearth::SecretKey) -> hearth::Result<[u8; 32]> {
        OrionCipher.x25519_public(s)
    }
    fn x25519(&self, s: &hearth::SecretKey, p: &[u8; 32]) -> hearth::Result<hearth::SecretKey> {
        OrionCipher.x25519(s, p)
    }
}

#[tokio::test]
async fn opening_with_an_incompatible_cipher_or_unknown_names_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("mismatch.db");
    open(&db, PASS)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
    let storage = Arc::new(SqliteStorage::open(&db, false).await.expect("storage"));
    let err = Store::open(storage.clone(), Arc::new(Renamed), OpenOptions::new(PASS))
        .await
        .err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("made with cipher 'orion'") && msg.contains("cannot read it"),
        "{msg}"
    );
    // Under the default format, another name is fine: the bytes are what count.
    #[derive(Debug)]
    struct SameFormat;
    impl Cipher for SameFormat {
        fn name(&self) -> &'static str {
            "orion-alias"
        }
        fn aead_seal(
            &self,
            k: &hearth::SecretKey,
            n: &[u8; 24],
            a: &[u8],
            p: &[u8],
        ) -> hearth::Result<Vec<u8>> {
            Renamed.aead_seal(k, n, a, p)
        }
        fn aead_open(
            &self,
            k: &hearth::SecretKey,
            n: &[u8; 24],
            a: &[u8],
            c: &[u8],
        ) -> hearth::Result<Vec<u8>> {
            Renamed.aead_open(k, n, a, c)
        }
        fn password_kdf(
            &self,
            p: &[u8],
            s: &[u8; 16],
            c: KdfCost,
        ) -> hearth::Result<hearth::SecretKey> {
            Renamed.password_kdf(p, s, c)
        }
        fn keyed_hash(&self, k: &hearth::SecretKey, parts: &[&[u8]]) -> hearth::Result<[u8; 32]> {
            Renamed.keyed_hash(k, parts)
        }
        fn fill_random(&self, b: &mut [u8]) -> hearth::Result<()> {
            Renamed.fill_random(b)
        }
        fn x25519_public(&self, s: &hearth::SecretKey) -> hearth::Result<[u8; 32]> {
            Renamed.x25519_public(s)
        }
        fn x25519(&self, s: &hearth::SecretKey, p: &[u8; 32]) -> hearth::Result<hearth::SecretKey> {
            Renamed.x25519(s, p)
        }
    }
    let store = Store::open(storage, Arc::new(SameFormat), OpenOptions::new(PASS))
        .await
        .expect("a cipher of the same format opens the store");
    assert_eq!(
        store.info().await.expect("info").cipher,
        "orion",
        "the key header still names the cipher that made the store"
    );
    store.close().await.expect("close");

    let err = Store::builder()
        .path(&db)
        .passphrase(PASS)
        .storage("floppy")
        .open()
        .await
        .err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("sqlite")
    );
}

#[tokio::test]
async fn explicit_registration_is_idempotent() {
    hearth::register_enabled().expect("register");
    hearth::register_enabled().expect("again");
    assert!(hearth::registry::storage_names().contains(&"sqlite"));
    assert!(hearth::registry::cipher_names().contains(&"orion"));
    hearth::registry::validate().expect("no duplicate names");
}

#[tokio::test]
async fn local_only_writes_never_enter_the_outbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir.path().join("local.db"), PASS)
        .await
        .expect("open");
    store.put("notes", "synced", &json!(1)).await.expect("put");
    let mut local = WriteBatch::new().local_only();
    local
        .put("_audit", "e1", &json!({"decision": "deny"}))
        .expect("put");
    store.write(local).await.expect("write");
    assert_eq!(store.info().await.expect("info").pending, 1);
    assert_eq!(
        store.get("_audit", "e1").await.expect("get"),
        Some(json!({"decision": "deny"}))
    );
    let outbox = store.storage().outbox(0, 10).await.expect("outbox");
    assert_eq!(outbox.len(), 1);
    assert_eq!(
        outbox[0].record.id,
        store.record_id("notes", "synced").expect("id")
    );
}

#[tokio::test]
async fn passphrase_change_and_recovery_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("keys.db");
    let store = open(&db, PASS).await.expect("create");
    store
        .put("notes", "a", &json!("secret"))
        .await
        .expect("put");
    let code = store
        .create_recovery_code(KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("code");
    assert_eq!(code.len(), 32 + 7, "32 characters in eight groups: {code}");
    store
        .change_passphrase(&"new passphrase".into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("change");
    store.close().await.expect("close");

    assert_eq!(
        open(&db, PASS).await.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    let store = open(&db, "new passphrase")
        .await
        .expect("new passphrase opens");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("secret"))
    );
    store.close().await.expect("close");

    // The passphrase is lost: the recovery code (typed sloppily) sets a new one.
    let storage = Arc::new(SqliteStorage::open(&db, false).await.expect("storage"));
    let wrong = Store::recover(
        storage.clone(),
        Arc::new(OrionCipher),
        OpenOptions::new("x"),
        "AAAA-BBBB",
    )
    .await;
    assert_eq!(
        wrong.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    let sloppy = code.to_lowercase().replace('-', " ");
    let opts = OpenOptions::new("third passphrase").kdf_cost(KdfCost::INSECURE_FOR_TESTS);
    let store = Store::recover(storage, Arc::new(OrionCipher), opts, &sloppy)
        .await
        .expect("recover");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("secret"))
    );
    store.close().await.expect("close");
    assert!(open(&db, "third passphrase").await.is_ok());
}
