//! A pushed batch is acknowledged from the rows as the push read them from the outbox, without
//! reading them again, only when nothing but the push itself has committed since that read;
//! a write landing while a push is in flight sends the acknowledgements of the batches read
//! before it the long way (the rows read again), and the write is neither lost nor taken for
//! pushed. A record (or head) rewritten while its previous version is in flight is pushed
//! naming that version, so the relay, which drops only what a push names, keeps one envelope
//! of it.

mod common;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use common::{Counting, Device, World};
use serde_json::json;
use sync_core::{
    PullPage, PullRequest, PushRequest, PushResponse, Result, SpaceId, Store, SyncConfig,
    SyncEngine, Transport,
};
use transport_mock::{Faults, MockTransport};

/// The device's mock transport; on the `write_at`-th push (from 1), before passing it on, the
/// device's own store writes `key` again, as an application would while a sync runs.
#[derive(Debug)]
struct WritingDuringPush {
    inner: Arc<MockTransport>,
    store: OnceLock<Store>,
    pushes: AtomicUsize,
    write_at: usize,
    key: &'static str,
}

#[async_trait]
impl Transport for WritingDuringPush {
    fn name(&self) -> &'static str {
        "writing-during-push"
    }
    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        if self.pushes.fetch_add(1, Ordering::SeqCst) + 1 == self.write_at
            && let Some(store) = self.store.get()
        {
            store
                .put("notes", self.key, &json!({"n": "written during the push"}))
                .await?;
        }
        self.inner.push(request).await
    }
    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
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

/// A first device on a counting storage holding 30 records (`n00`..`n29`, unpushed), pushing
/// in batches of five through a transport that writes `key` again on its `write_at`-th push
/// (never, for 0).
async fn device(
    world: &World,
    write_at: usize,
    key: &'static str,
) -> (Arc<Counting>, SyncEngine, Arc<WritingDuringPush>) {
    let storage = Arc::new(Counting::default());
    let store = Store::open(
        storage.clone(),
        common::SeededCipher::shared(1),
        common::options(world, &Arc::new(AtomicU64::new(0))),
    )
    .await
    .expect("create on the counting storage");
    world
        .relay
        .register_device(store.space(), store.device())
        .expect("register");
    for i in 0..30 {
        store
            .put("notes", &format!("n{i:02}"), &json!({"n": i}))
            .await
            .expect("put");
    }
    let transport = Arc::new(WritingDuringPush {
        inner: Arc::new(MockTransport::new(world.relay.clone())),
        store: OnceLock::new(),
        pushes: AtomicUsize::new(0),
        write_at,
        key,
    });
    let _ = transport.store.set(store.clone());
    let config = SyncConfig {
        push_batch: 5,
        ..SyncConfig::default()
    };
    let engine = SyncEngine::new(store, transport.clone() as Arc<dyn Transport>, config);
    (storage, engine, transport)
}

#[tokio::test]
async fn batches_nothing_else_touched_are_acknowledged_without_reading_the_rows_again() {
    let world = World::new();
    let (counted, engine, transport) = device(&world, 0, "n00").await;
    let r = engine.sync().await.expect("sync");
    assert_eq!(r.pushed, 30, "{r:?}");
    // Batches of four records (room for the head): eight pushes, the last ending with the head.
    assert_eq!(transport.pushes.load(Ordering::SeqCst), 8);
    assert_eq!(
        counted.state_reads.load(Ordering::SeqCst),
        0,
        "no batch was read twice"
    );
    assert_eq!(engine.store().info().await.expect("info").pending, 0);
    let r = engine.sync().await.expect("a second round");
    assert_eq!(r.pushed, 0, "everything was acknowledged: {r:?}");
}

#[tokio::test]
async fn a_write_during_a_push_sends_the_acknowledgements_the_long_way_and_is_kept() {
    let world = World::new();
    // `n00` is in the first batch: pushed, and written again while the second batch is in
    // flight, before or after the first batch's acknowledgement.
    let (counted, engine, _) = device(&world, 2, "n00").await;
    let r = engine.sync().await.expect("sync");
    // The write has the newest sequence: the same round pushes it, after the rest.
    assert_eq!(r.pushed, 31, "{r:?}");
    // The second batch was read before the write and is acknowledged after it: read again.
    assert!(
        counted.state_reads.load(Ordering::SeqCst) >= 1,
        "an acknowledgement after the write read the rows again"
    );
    assert_eq!(engine.store().info().await.expect("info").pending, 0);
    let r = engine.sync().await.expect("a second round");
    assert_eq!(r.pushed, 0, "{r:?}");
    one_envelope_per_record(&world, &engine);

    // A new device sees the write.
    let b = Device::join(&world, engine.store(), Faults::NONE, 2).await;
    b.engine.sync().await.expect("b syncs");
    let got = b
        .store
        .get("notes", "n00")
        .await
        .expect("get")
        .expect("n00 is there");
    assert_eq!(got, json!({"n": "written during the push"}));
}

#[tokio::test]
async fn a_record_and_head_rewritten_while_in_flight_are_named_by_the_next_push() {
    let world = World::new();
    // Batches of four: the eighth push carries `n28`, `n29` and the head. `n29` is written
    // again while it is in flight, so the same round pushes once more, before the eighth
    // push's acknowledgement is committed: the ninth push must name the eighth's `n29` and
    // head from the answer in hand (its rows do not know them yet), or the relay keeps both.
    let (_, engine, transport) = device(&world, 8, "n29").await;
    let r = engine.sync().await.expect("sync");
    assert_eq!(r.pushed, 31, "{r:?}");
    assert_eq!(transport.pushes.load(Ordering::SeqCst), 9);
    assert_eq!(engine.store().info().await.expect("info").pending, 0);
    one_envelope_per_record(&world, &engine);
    assert_eq!(
        world
            .relay
            .entries(engine.store().space())
            .expect("entries")
            .len(),
        31,
        "30 records and one head"
    );
    let b = Device::join(&world, engine.store(), Faults::NONE, 2).await;
    b.engine.sync().await.expect("b syncs");
    let got = b.store.get("notes", "n29").await.expect("get");
    assert_eq!(got, Some(json!({"n": "written during the push"})));
}

/// The relay holds at most one envelope of each record (heads included) from `engine`'s
/// device.
fn one_envelope_per_record(world: &World, engine: &SyncEngine) {
    let store = engine.store();
    let mut records = std::collections::HashMap::new();
    for e in world.relay.entries(store.space()).expect("entries") {
        if e.device == store.device() {
            *records.entry(e.record).or_insert(0) += 1;
        }
    }
    assert!(
        records.values().all(|n| *n == 1),
        "one envelope per record: {:?}",
        records.values().filter(|n| **n > 1).count()
    );
}
