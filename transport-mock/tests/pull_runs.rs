//! Pulled pages are applied in runs: consecutive pages joined up to `SyncConfig::apply_bytes`
//! and committed in one transaction. A run commits once however many pages it joins; a budget
//! smaller than a page commits page by page; a pull that fails in the middle of a run keeps
//! what arrived before it (applied, with the cursor after it), and the round fails with the
//! error.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_trait::async_trait;
use common::{Counting, Device, World};
use serde_json::json;
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, Result, SpaceId,
    SyncConfig, SyncEngine, Transport,
};
use transport_mock::{Faults, MockTransport};

/// The device's mock transport, counting pulls; the `fail_at`-th pull (from 1) fails with a
/// temporary error, once.
#[derive(Debug)]
struct FailingPull {
    inner: Arc<MockTransport>,
    pulls: AtomicUsize,
    fail_at: usize,
}

#[async_trait]
impl Transport for FailingPull {
    fn name(&self) -> &'static str {
        "failing-pull"
    }
    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        self.inner.push(request).await
    }
    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        if self.pulls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(Error::new(ErrorKind::Unavailable, "connection lost").temporary());
        }
        self.inner.pull(request).await
    }
    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        self.inner.get_key_backup(space).await
    }
    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        self.inner.put_key_backup(space, blob).await
    }
    async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()> {
        self.inner.share(destination, sealed).await
    }
}

/// A device holding 30 records, synced: the relay holds 30 envelopes and A's head, in pages
/// of 5 with A's head last.
async fn thirty(world: &World) -> Device {
    let a = Device::first(world, Faults::NONE, 1).await;
    for i in 0..30 {
        a.store
            .put("notes", &format!("n{i:02}"), &json!({"n": i}))
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("a syncs");
    a
}

/// A fresh device joining A's space on a counting storage, syncing with `config` through
/// `transport` (made from a mock transport of its own).
async fn joiner(
    world: &World,
    a: &Device,
    seed: u64,
    config: SyncConfig,
    transport: impl FnOnce(Arc<MockTransport>) -> Arc<dyn Transport>,
) -> (Arc<Counting>, SyncEngine) {
    let storage = Arc::new(Counting::default());
    let store = sync_core::Store::join(
        storage.clone(),
        common::SeededCipher::shared(seed),
        common::options(world, &Arc::new(AtomicU64::new(0))),
        &a.store.key_backup().expect("backup"),
    )
    .await
    .expect("join on the counting storage");
    world
        .relay
        .register_device(store.space(), store.device())
        .expect("register");
    let mock = Arc::new(MockTransport::new(world.relay.clone()));
    let engine = SyncEngine::new(store, transport(mock), config);
    (storage, engine)
}

fn pages_of_five(apply_bytes: usize) -> SyncConfig {
    SyncConfig {
        pull_page: 5,
        push_batch: 5,
        apply_bytes,
        ..SyncConfig::default()
    }
}

async fn live_records(engine: &SyncEngine) -> usize {
    engine
        .store()
        .scan_page("notes", None, 100)
        .await
        .expect("scan")
        .records
        .len()
}

#[tokio::test]
async fn a_run_of_pages_commits_once_and_a_budget_below_a_page_commits_each_page() {
    let world = World::new();
    let a = thirty(&world).await;

    // A budget of 16 MiB joins all seven pages (31 envelopes of a few hundred bytes) into one
    // run.
    let (counted, engine) = joiner(&world, &a, 2, pages_of_five(16 << 20), |t| t).await;
    let r = engine.sync().await.expect("b syncs");
    assert_eq!(r.pulled, 30, "{r:?}");
    assert_eq!(live_records(&engine).await, 30);
    assert_eq!(
        counted.record_commits.load(Ordering::SeqCst),
        1,
        "one commit for the run"
    );

    // A budget of one byte ends every run after its first page: a commit for each of the six
    // pages of records (the seventh holds A's head alone, which is no record).
    let (counted, engine) = joiner(&world, &a, 3, pages_of_five(1), |t| t).await;
    let r = engine.sync().await.expect("c syncs");
    assert_eq!(r.pulled, 30, "{r:?}");
    assert_eq!(live_records(&engine).await, 30);
    assert_eq!(
        counted.record_commits.load(Ordering::SeqCst),
        6,
        "a commit per page"
    );
}

#[tokio::test]
async fn a_pull_failing_inside_a_run_keeps_the_pages_before_it() {
    let world = World::new();
    let a = thirty(&world).await;
    let failing = std::sync::OnceLock::new();
    let (counted, engine) = joiner(&world, &a, 2, pages_of_five(16 << 20), |t| {
        let f = Arc::new(FailingPull {
            inner: t,
            pulls: AtomicUsize::new(0),
            fail_at: 3,
        });
        let _ = failing.set(f.clone());
        f
    })
    .await;
    let err = engine.sync().await.expect_err("the third pull fails");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    // The two pages before the failure were applied in one commit, and the cursor moved past
    // them: the next round asks for the rest only.
    assert_eq!(live_records(&engine).await, 10);
    assert_eq!(counted.record_commits.load(Ordering::SeqCst), 1);
    let r = engine.sync().await.expect("the next round");
    assert_eq!(r.pulled, 20, "only what the failed round lacked: {r:?}");
    assert_eq!(live_records(&engine).await, 30);
    assert_eq!(
        failing.get().map(|f| f.pulls.load(Ordering::SeqCst)),
        Some(3 + 5),
        "two pages, the failure, then the five pages left"
    );
}
