//! Root-key rotation: re-encrypts everything, survives a crash at any point, loses nothing; on
//! SQLCipher stores also re-keys the file (module `sqlcipher`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use hearth::crypto_orion::OrionCipher;
use hearth::storage::{Batch, Capabilities, OutboxEntry, ScanPos, StoredRecord};
use hearth::{
    CollectionId, Error, ErrorKind, KdfCost, MemoryStorage, OpenOptions, RecordId, Storage, Store,
    WriteBatch,
};
use serde_json::json;

const PASS: &str = "rotation passphrase";

/// A storage that "crashes" (fails every commit) after a number of commits.
#[derive(Debug)]
struct CrashAfter {
    inner: Arc<MemoryStorage>,
    commits_left: AtomicI64,
}

#[async_trait]
impl Storage for CrashAfter {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, id: &RecordId) -> hearth::Result<Option<StoredRecord>> {
        self.inner.get(id).await
    }
    async fn get_many(&self, ids: &[RecordId]) -> hearth::Result<Vec<Option<StoredRecord>>> {
        self.inner.get_many(ids).await
    }
    async fn scan(
        &self,
        c: &CollectionId,
        a: Option<ScanPos>,
        l: usize,
        d: bool,
    ) -> hearth::Result<Vec<(ScanPos, StoredRecord)>> {
        self.inner.scan(c, a, l, d).await
    }
    async fn scan_all(&self, a: Option<&RecordId>, l: usize) -> hearth::Result<Vec<StoredRecord>> {
        self.inner.scan_all(a, l).await
    }
    async fn outbox(&self, a: u64, l: usize) -> hearth::Result<Vec<OutboxEntry>> {
        self.inner.outbox(a, l).await
    }
    async fn outbox_len(&self) -> hearth::Result<u64> {
        self.inner.outbox_len().await
    }
    async fn meta_get(&self, k: &str) -> hearth::Result<Option<Vec<u8>>> {
        self.inner.meta_get(k).await
    }
    async fn commit(&self, b: Batch) -> hearth::Result<()> {
        if self.commits_left.fetch_sub(1, Ordering::SeqCst) <= 0 {
            return Err(Error::new(ErrorKind::Io, "simulated crash"));
        }
        self.inner.commit(b).await
    }
}

fn opts() -> OpenOptions {
    OpenOptions::new(PASS)
        .create(true)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
}

async fn filled(storage: Arc<dyn Storage>) -> Store {
    let store = Store::open(storage, Arc::new(OrionCipher), opts())
        .await
        .expect("open");
    let mut b = WriteBatch::new();
    for i in 0..600 {
        b.put("notes", format!("n{i:03}"), &json!({"i": i}))
            .expect("put");
    }
    store.write(b).await.expect("write");
    store.delete("notes", "n000").await.expect("delete");
    let mut local = WriteBatch::new().local_only();
    local
        .put("_settings", "theme", &json!("dark"))
        .expect("put");
    store.write(local).await.expect("local");
    store
}

async fn check(store: &Store, old_space: hearth::SpaceId) {
    assert!(!store.rotation_pending().await.expect("pending?"));
    assert_ne!(
        store.space(),
        old_space,
        "a rotated store lives in a new space"
    );
    assert_eq!(store.info().await.expect("info").key_id, 2);
    assert_eq!(store.get("notes", "n000").await.expect("get"), None);
    for i in [1, 299, 599] {
        assert_eq!(
            store.get("notes", &format!("n{i:03}")).await.expect("get"),
            Some(json!({"i": i}))
        );
    }
    assert_eq!(
        store.scan("notes", None, 1000).await.expect("scan").len(),
        599
    );
    assert_eq!(
        store.get("_settings", "theme").await.expect("get"),
        Some(json!("dark"))
    );
    // Every row is under the new key, and local-only rows stay out of the outbox.
    every_row_under_key(store, 2).await;
    assert_eq!(
        store.info().await.expect("info").pending,
        600,
        "records (and the tombstone) re-upload; settings stay local"
    );
}

/// Walks every row of the store's storage (tombstones and local-only rows included) and checks
/// its envelope names key `key_id`.
async fn every_row_under_key(store: &Store, key_id: u32) {
    let mut after = None;
    loop {
        let rows = store
            .storage()
            .scan_all(after.as_ref(), 256)
            .await
            .expect("scan");
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        for r in rows {
            let header = hearth::envelope::EnvelopeHeader::parse(&r.envelope).expect("header");
            assert_eq!(header.key_id, key_id, "every row is under key {key_id}");
        }
    }
}

/// Rotates `store` with `pass`, after checking that a wrong passphrase is refused.
async fn rotate_after_a_wrong_passphrase(store: Store, pass: &str) -> Store {
    let wrong = store
        .clone()
        .rotate_root_key(&"nope".into(), KdfCost::INSECURE_FOR_TESTS)
        .await;
    assert_eq!(
        wrong.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    store
        .rotate_root_key(&pass.into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("rotate")
}

#[tokio::test]
async fn rotation_reencrypts_every_record() {
    let storage = Arc::new(MemoryStorage::new());
    let store = filled(storage.clone()).await;
    let old_space = store.space();
    let rotated = rotate_after_a_wrong_passphrase(store, PASS).await;
    check(&rotated, old_space).await;
}

#[tokio::test]
async fn a_crash_at_any_point_of_a_rotation_loses_nothing() {
    for crash_after in 0..8 {
        let inner = Arc::new(MemoryStorage::new());
        let old_space = filled(inner.clone()).await.space();
        let crashing = Arc::new(CrashAfter {
            inner: inner.clone(),
            commits_left: AtomicI64::new(crash_after),
        });
        let store = Store::open(crashing, Arc::new(OrionCipher), opts())
            .await
            .expect("open");
        let result = store
            .rotate_root_key(&PASS.into(), KdfCost::INSECURE_FOR_TESTS)
            .await;
        // "Restart": reopen on the same data, finish whatever was left.
        let store = Store::open(inner.clone(), Arc::new(OrionCipher), opts())
            .await
            .expect("reopen");
        if result.is_err() && store.space() == old_space {
            // The crash came before the new key header was committed: nothing changed.
            assert!(
                !store.rotation_pending().await.expect("pending?"),
                "crash point {crash_after}"
            );
            assert_eq!(
                store.get("notes", "n001").await.expect("get"),
                Some(json!({"i": 1}))
            );
            continue;
        }
        store.finish_rotation().await.expect("resume");
        check(&store, old_space).await;
    }
}

/// Root-key rotation on a SQLCipher store: the records are re-sealed under the new root, the
/// database file moves to the new root's page key, the key header file follows, and a process
/// killed at any point of it loses nothing: opening again finds where it stopped and finishes.
mod sqlcipher {
    use std::path::Path;
    use std::process::Command;
    use std::time::Instant;

    use backend_sqlcipher::SqlcipherStorage;
    use crypto_sodium::SodiumCipher;
    use hearth::store::sidecar;
    use hearth::{ErrorKind, KdfCost, Passphrase, SecretKey, SpaceId, Storage, Store, WriteBatch};
    use serde_json::json;

    const PASS: &str = "rotation on sqlcipher";
    const RECORDS: u32 = 3_000;

    async fn open(path: &Path) -> hearth::Result<Store> {
        // Name the crates so the linker keeps them and their registrations.
        let _ = (SqlcipherStorage::NAME, SodiumCipher::NAME);
        Store::builder()
            .path(path)
            .passphrase(PASS)
            .storage("sqlcipher")
            .cipher("sodium")
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
            .open()
            .await
    }

    /// A store with `RECORDS` notes, one of them deleted, and a local-only setting.
    async fn filled(path: &Path) -> SpaceId {
        let store = open(path).await.expect("create");
        let mut b = WriteBatch::new();
        for i in 0..RECORDS {
            b.put(
                "notes",
                format!("n{i:04}"),
                &json!({"i": i, "body": "x".repeat(200)}),
            )
            .expect("put");
        }
        store.write(b).await.expect("write");
        store.delete("notes", "n0000").await.expect("delete");
        let mut local = WriteBatch::new().local_only();
        local
            .put("_settings", "theme", &json!("dark"))
            .expect("put");
        store.write(local).await.expect("local");
        let space = store.space();
        store.close().await.expect("close");
        space
    }

    /// The page key the key header file at `db` unlocks now, and the retired one if a rotation is
    /// under way.
    fn page_keys(db: &Path) -> (u32, SecretKey, Option<SecretKey>) {
        let ring = sidecar::read(&SodiumCipher, &sidecar::sidecar_path(db))
            .expect("read")
            .expect("present");
        let root = ring
            .unlock(&SodiumCipher, &Passphrase::new(PASS))
            .expect("unlock");
        let retired = ring
            .retired_root(&SodiumCipher, &root)
            .expect("retired")
            .map(|(_, old)| sidecar::page_key(&SodiumCipher, &old).expect("page key"));
        (
            ring.key_id,
            sidecar::page_key(&SodiumCipher, &root).expect("page key"),
            retired,
        )
    }

    async fn opens_with(db: &Path, key: &SecretKey) -> bool {
        match SqlcipherStorage::open(db, false, key).await {
            Ok(s) => {
                s.close().await.expect("close");
                true
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::WrongKey, "{e}");
                false
            }
        }
    }

    /// Everything is there, under key 2, in a new space, the file under key 2's page key only.
    async fn check_rotated(db: &Path, old_space: SpaceId, old_page_key: &SecretKey) {
        let store = open(db).await.expect("open");
        assert!(!store.rotation_pending().await.expect("pending?"));
        assert_ne!(
            store.space(),
            old_space,
            "a rotated store lives in a new space"
        );
        assert_eq!(store.info().await.expect("info").key_id, 2);
        assert_eq!(store.get("notes", "n0000").await.expect("get"), None);
        for i in [1, 1234, RECORDS - 1] {
            let v = store
                .get("notes", &format!("n{i:04}"))
                .await
                .expect("get")
                .expect("present");
            assert_eq!(v["i"], json!(i));
        }
        assert_eq!(
            store.scan("notes", None, 10_000).await.expect("scan").len(),
            RECORDS as usize - 1
        );
        assert_eq!(
            store.get("_settings", "theme").await.expect("get"),
            Some(json!("dark"))
        );
        super::every_row_under_key(&store, 2).await;
        assert_eq!(
            store.info().await.expect("info").pending,
            u64::from(RECORDS),
            "records and the tombstone re-upload; the setting stays local"
        );
        store.storage().check().await.expect("integrity");
        store.close().await.expect("close");

        let (key_id, new_page_key, retired) = page_keys(db);
        assert_eq!(key_id, 2);
        assert!(retired.is_none(), "the key header file forgot the old root");
        assert!(opens_with(db, &new_page_key).await);
        assert!(
            !opens_with(db, old_page_key).await,
            "the old root's page key no longer opens the file"
        );
    }

    #[tokio::test]
    async fn rotation_reencrypts_the_records_and_rekeys_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("rotate.db");
        let old_space = filled(&db).await;
        let (_, old_page_key, _) = page_keys(&db);

        let store = open(&db).await.expect("open");
        let rotated = super::rotate_after_a_wrong_passphrase(store, PASS).await;
        // The handle the rotation returns goes on working.
        let mut local = WriteBatch::new().local_only();
        local
            .put("_settings", "after", &json!("rotation"))
            .expect("put");
        rotated
            .write(local)
            .await
            .expect("write after the rotation");
        assert_eq!(
            rotated.get("_settings", "after").await.expect("get"),
            Some(json!("rotation"))
        );
        rotated.close().await.expect("close");
        check_rotated(&db, old_space, &old_page_key).await;
    }

    /// The first step of a rotation done by hand: the key header file holds the rotated header,
    /// the database is untouched. Opening finishes the database's steps; `finish_rotation` the rest.
    #[tokio::test]
    async fn a_rotation_stopped_after_the_key_header_file_resumes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("step1.db");
        let old_space = filled(&db).await;
        let (_, old_page_key, _) = page_keys(&db);
        let keys = sidecar::sidecar_path(&db);
        let ring = sidecar::read(&SodiumCipher, &keys)
            .expect("read")
            .expect("present");
        let root = ring
            .unlock(&SodiumCipher, &Passphrase::new(PASS))
            .expect("unlock");
        let (next, _) = ring
            .rotated(
                &SodiumCipher,
                &root,
                &Passphrase::new(PASS),
                KdfCost::INSECURE_FOR_TESTS,
            )
            .expect("rotated");
        sidecar::replace(&SodiumCipher, &keys, &ring, &next).expect("replace");
        assert!(
            opens_with(&db, &old_page_key).await,
            "the database is untouched"
        );

        let store = open(&db).await.expect("open resumes");
        assert!(store.rotation_pending().await.expect("pending?"));
        // The open re-keyed the file already.
        let (_, new_page_key, _) = page_keys(&db);
        assert!(!opens_with(&db, &old_page_key).await);
        assert!(opens_with(&db, &new_page_key).await);
        let done = store.finish_rotation().await.expect("finish");
        assert_eq!(done, u64::from(RECORDS) + 1, "every row re-sealed once");
        store.close().await.expect("close");
        check_rotated(&db, old_space, &old_page_key).await;
    }

    /// Child half of `a_rotation_killed_at_any_point_loses_nothing`: rotates the store named in the
    /// environment. Does nothing when not run as a child.
    #[tokio::test]
    #[ignore = "run as a child process by a_rotation_killed_at_any_point_loses_nothing"]
    async fn child_rotates() {
        let Ok(path) = std::env::var("HEARTH_ROTATE_PATH") else {
            return;
        };
        let store = open(Path::new(&path)).await.expect("open");
        let store = if store.rotation_pending().await.expect("pending?") {
            store.finish_rotation().await.expect("finish");
            store
        } else {
            store
                .rotate_root_key(&PASS.into(), KdfCost::INSECURE_FOR_TESTS)
                .await
                .expect("rotate")
        };
        store.close().await.expect("close");
    }

    fn spawn_rotation(db: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "sqlcipher::child_rotates",
                "--ignored",
                "--nocapture",
            ])
            .env("HEARTH_ROTATE_PATH", db)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the child")
    }

    /// Where a killed rotation stopped, read off the files without opening the store.
    async fn state_of(db: &Path, old_page_key: &SecretKey) -> &'static str {
        let (key_id, current, retired) = page_keys(db);
        match (key_id, retired.is_some()) {
            (1, _) => "not started",
            (_, true) if opens_with(db, old_page_key).await => {
                "key header replaced, file not re-keyed"
            }
            (_, true) => "file re-keyed, records being re-sealed",
            _ if opens_with(db, &current).await => "old root forgotten",
            _ => "unknown",
        }
    }

    #[tokio::test]
    async fn a_rotation_killed_at_any_point_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        // One uninterrupted rotation in a child, to spread the kill points over its length.
        let probe = dir.path().join("probe.db");
        filled(&probe).await;
        let started = Instant::now();
        assert!(spawn_rotation(&probe).wait().expect("child").success());
        let whole = started.elapsed();

        let points = 10u32;
        let mut seen = std::collections::BTreeMap::<&'static str, u32>::new();
        for k in 0..points {
            let db = dir.path().join(format!("killed-{k}.db"));
            let old_space = filled(&db).await;
            let (_, old_page_key, _) = page_keys(&db);
            let mut child = spawn_rotation(&db);
            std::thread::sleep(whole.mul_f64(1.1 * f64::from(k + 1) / f64::from(points)));
            let _ = child.kill(); // SIGKILL; it may have finished already.
            child.wait().expect("reap the child");
            *seen.entry(state_of(&db, &old_page_key).await).or_default() += 1;

            // "Restart": open with the passphrase, finish what was left (or rotate, if the kill
            // came before anything was written), and everything is there.
            let store = open(&db)
                .await
                .unwrap_or_else(|e| panic!("kill point {k}: {e}"));
            if store.info().await.expect("info").key_id == 1 {
                assert!(!store.rotation_pending().await.expect("pending?"));
                store
                    .rotate_root_key(&PASS.into(), KdfCost::INSECURE_FOR_TESTS)
                    .await
                    .expect("rotate")
                    .close()
                    .await
                    .expect("close");
            } else {
                store.finish_rotation().await.expect("resume");
                store.close().await.expect("close");
            }
            check_rotated(&db, old_space, &old_page_key).await;
        }
        println!("rotation killed at {points} points over {whole:?}: {seen:?}");
    }

    /// A second handle on the store (another process, say) still holds the old page key when the
    /// file is re-keyed under it: its reads and writes fail with a typed error and write nothing;
    /// the store stays whole under the new key.
    #[tokio::test]
    async fn a_second_handle_on_the_old_page_key_fails_cleanly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("two.db");
        let old_space = filled(&db).await;
        let (_, old_page_key, _) = page_keys(&db);
        let stale = open(&db).await.expect("second handle");
        assert_eq!(
            stale
                .get("notes", "n0001")
                .await
                .expect("get")
                .map(|v| v["i"].clone()),
            Some(json!(1))
        );

        let store = open(&db).await.expect("open");
        store
            .rotate_root_key(&PASS.into(), KdfCost::INSECURE_FOR_TESTS)
            .await
            .expect("rotate")
            .close()
            .await
            .expect("close");

        let write = stale.put("notes", "stale", &json!("lost?")).await;
        assert_eq!(
            write.as_ref().err().map(|e| e.kind()),
            Some(ErrorKind::WrongKey),
            "the stale handle's write is refused: {write:?}"
        );
        let _ = stale.close().await;
        check_rotated(&db, old_space, &old_page_key).await;
        let store = open(&db).await.expect("open");
        assert_eq!(store.get("notes", "stale").await.expect("get"), None);
        store.close().await.expect("close");
    }
}
