//! Root-key rotation: re-encrypts everything, survives a crash at any point, loses nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use hearth::crypto_orion::OrionCipher;
use hearth::storage::{Batch, Capabilities, OutboxEntry, StoredRecord};
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
        a: Option<&RecordId>,
        l: usize,
        d: bool,
    ) -> hearth::Result<Vec<StoredRecord>> {
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
            assert_eq!(
                hearth::envelope::EnvelopeHeader::parse(&r.envelope)
                    .expect("header")
                    .key_id,
                2
            );
        }
    }
    assert_eq!(
        store.info().await.expect("info").pending,
        600,
        "records (and the tombstone) re-upload; settings stay local"
    );
}

#[tokio::test]
async fn rotation_reencrypts_every_record() {
    let storage = Arc::new(MemoryStorage::new());
    let store = filled(storage.clone()).await;
    let old_space = store.space();
    let wrong = store
        .clone()
        .rotate_root_key(&"nope".into(), KdfCost::INSECURE_FOR_TESTS)
        .await;
    assert_eq!(
        wrong.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    let rotated = store
        .rotate_root_key(&PASS.into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("rotate");
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
