//! A relay restored from an older backup, with the device that wrote what it lost gone for
//! good: the two devices left both put back that device's writes, each before seeing the
//! other's, and they converge without asking the user (equal values are not a choice). And a
//! restore declared (a new log id) in the middle of a device's first walk: the walk starts over
//! on the new log, and every device puts back what the relay lost by itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use async_trait::async_trait;
use common::{Device, World};
use serde_json::json;
use sync_core::{
    Error, ErrorKind, MemoryRelay, PullPage, PullRequest, PushRequest, PushResponse, RelayBackup,
    Result, SpaceId, SyncConfig, SyncEngine, Transport,
};
use transport_mock::{Faults, MockTransport};

/// The device's mock transport, with two interventions: pushes fail while `closed` is set (a
/// device that loses its connection between the pull and the push of a round); and, with
/// `restore`, just before its `at`-th pull (counting from 1) the relay is restored from the
/// backup and declared restored (a new log id), as an operator would while this device is in
/// the middle of a walk.
#[derive(Debug)]
struct Wrapped {
    inner: Arc<MockTransport>,
    closed: AtomicBool,
    restore: Option<RestoreOnPull>,
}

#[derive(Debug)]
struct RestoreOnPull {
    relay: MemoryRelay,
    backup: RelayBackup,
    pulls: AtomicUsize,
    at: usize,
}

impl Wrapped {
    fn new(inner: Arc<MockTransport>, restore: Option<RestoreOnPull>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            closed: AtomicBool::new(false),
            restore,
        })
    }
}

#[async_trait]
impl Transport for Wrapped {
    fn name(&self) -> &'static str {
        "wrapped"
    }
    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "connection lost").temporary());
        }
        self.inner.push(request).await
    }
    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        if let Some(r) = &self.restore
            && r.pulls.fetch_add(1, Ordering::SeqCst) + 1 == r.at
        {
            r.relay.restore(&r.backup)?;
            r.relay.mark_restored()?;
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

#[tokio::test]
async fn devices_put_back_what_a_restored_relay_lost_and_converge_without_asking() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    let b = Device::join(&world, &a.store, Faults::NONE, 2).await;
    let c = Device::join(&world, &a.store, Faults::NONE, 3).await;
    let gate = Wrapped::new(c.transport.clone(), None);
    let c_engine = SyncEngine::new(c.store.clone(), gate.clone(), SyncConfig::default());
    for engine in [&a.engine, &b.engine, &c_engine] {
        engine
            .set_strategy("tasks", "user-choice")
            .await
            .expect("strategy");
    }
    for i in 0..3 {
        a.store
            .put("tasks", &format!("t{i}"), &json!({"t": i}))
            .await
            .expect("put");
        a.store
            .put("notes", &format!("n{i}"), &json!({"n": i}))
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    c_engine.sync().await.expect("sync");
    let backup = world.relay.backup().expect("backup");

    // After the backup B edits, adds and deletes, and A and C get all of it.
    b.store
        .put("tasks", "t0", &json!({"t": 0, "by": "b"}))
        .await
        .expect("put");
    b.store
        .put("tasks", "t3", &json!({"t": 3}))
        .await
        .expect("put");
    b.store
        .put("notes", "n3", &json!({"n": 3}))
        .await
        .expect("put");
    assert!(b.store.delete("notes", "n1").await.expect("delete"));
    b.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    c_engine.sync().await.expect("sync");
    let expected = a.snapshot().await;
    assert_eq!(expected.len(), 3 + 3 + 2 - 1);

    // The relay loses it all, and B is never heard from again.
    world.relay.restore(&backup).expect("restore");
    drop(b);
    for engine in [&a.engine, &c_engine] {
        engine.reupload_to_server().await.expect("reupload");
    }
    // C walks the restored log and queues B's four writes as its own, then loses its
    // connection before pushing them.
    gate.closed.store(true, Ordering::SeqCst);
    let err = c_engine.sync().await.expect_err("push cut off");
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert_eq!(c.store.info().await.expect("info").pending, 4);
    // A, not having seen C's, puts back the same four.
    let r = a.engine.sync().await.expect("a reuploads");
    assert_eq!((r.reuploaded, r.discarded), (4, 0), "{r:?}");
    // C's connection comes back: its four meet A's, concurrent and equal, and are settled
    // without the user, in `tasks` (user-choice) as in `notes` (lww).
    gate.closed.store(false, Ordering::SeqCst);
    let r = c_engine.sync().await.expect("c syncs");
    assert_eq!(r.conflicts_resolved, 4, "{r:?}");
    assert_eq!(r.conflicts_pending, 0, "{r:?}");
    for _ in 0..2 {
        for engine in [&a.engine, &c_engine] {
            let r = engine.sync().await.expect("sync");
            assert_eq!(r.conflicts_pending, 0, "{r:?}");
            assert!(r.withheld.is_empty() && !r.resynced, "{r:?}");
        }
    }
    assert_eq!(a.snapshot().await, expected);
    assert_eq!(c.snapshot().await, expected);

    // What the relay holds now is the whole state again: a new device gets all of it.
    let d = Device::join(&world, &a.store, Faults::NONE, 4).await;
    d.engine.sync().await.expect("sync");
    assert_eq!(d.snapshot().await, expected);
}

#[tokio::test]
async fn a_restore_declared_mid_walk_restarts_the_walk_and_every_device_puts_back_its_share() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    for i in 0..10 {
        a.store
            .put("notes", &format!("n{i:02}"), &json!({"n": i}))
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("sync");
    let backup = world.relay.backup().expect("backup");
    // After the backup: 20 more records and 2 edits, synced.
    for i in 10..30 {
        a.store
            .put("notes", &format!("n{i:02}"), &json!({"n": i}))
            .await
            .expect("put");
    }
    for i in 0..2 {
        a.store
            .put(
                "notes",
                &format!("n{i:02}"),
                &json!({"n": i, "edited": true}),
            )
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("sync");
    let expected = a.snapshot().await;
    assert_eq!(expected.len(), 30);

    // B's first walk, in pages of 5: the relay is restored and the restore declared just
    // before its third pull, when B holds what the first two pages of the old log brought.
    let b = Device::join(&world, &a.store, Faults::NONE, 2).await;
    let restoring = Wrapped::new(
        b.transport.clone(),
        Some(RestoreOnPull {
            relay: world.relay.clone(),
            backup,
            pulls: AtomicUsize::new(0),
            at: 3,
        }),
    );
    let config = SyncConfig {
        pull_page: 5,
        push_batch: 5,
        ..SyncConfig::default()
    };
    let b_engine = SyncEngine::new(b.store.clone(), restoring.clone(), config);
    let r = b_engine.sync().await.expect("b's first sync");
    assert!(r.log_replaced && r.resynced, "{r:?}");
    assert!(r.withheld.is_empty() && r.discarded == 0, "{r:?}");
    // The two pages of the old log B applied reached past the backup's records (the edits
    // replaced two of them, so the new records came sooner): B puts back those it got, and
    // holds the backup's ten besides, nothing more.
    let from_b = r.reuploaded;
    assert!(
        from_b > 0,
        "the restore came too late to test a walk cut short: {r:?}"
    );
    assert_eq!(b.snapshot().await.len() as u64, 10 + from_b);

    // A notices the new log on its own and puts back the rest of its 20 records and 2 edits
    // (what B put back reaches it as newer versions of the same values).
    let r = a.engine.sync().await.expect("a syncs");
    assert!(r.log_replaced && r.resynced, "{r:?}");
    assert_eq!((r.reuploaded, r.discarded), (22 - from_b, 0), "{r:?}");
    for _ in 0..2 {
        for engine in [&a.engine, &b_engine] {
            let r = engine.sync().await.expect("sync");
            assert!(
                !r.log_replaced && !r.resynced && r.withheld.is_empty() && r.reuploaded == 0,
                "{r:?}"
            );
            assert_eq!(r.conflicts_pending, 0, "{r:?}");
        }
    }
    assert_eq!(a.snapshot().await, expected);
    assert_eq!(b.snapshot().await, expected);
    let c = Device::join(&world, &a.store, Faults::NONE, 3).await;
    c.engine.sync().await.expect("sync");
    assert_eq!(c.snapshot().await, expected);
}

/// A record written after the backup, edited on Z after X last pulled it: when the relay is
/// restored, X holds the older value and Y the newer one, and the relay has neither. Each puts
/// back what it holds; the two versions are concurrent, and `lww` must keep the newer write,
/// whichever device puts back last (a version put back keeps the time of the write it carries).
#[tokio::test]
async fn a_stale_copy_put_back_after_a_restore_does_not_beat_the_newer_write() {
    let world = World::new();
    let z = Device::first(&world, Faults::NONE, 1).await;
    let x = Device::join(&world, &z.store, Faults::NONE, 2).await;
    let y = Device::join(&world, &z.store, Faults::NONE, 3).await;
    for d in [&z, &x, &y] {
        d.engine.sync().await.expect("sync");
    }
    let backup = world.relay.backup().expect("backup");
    z.store
        .put("notes", "k", &json!({"v": 1}))
        .await
        .expect("put");
    z.engine.sync().await.expect("sync");
    x.engine.sync().await.expect("x gets v1");
    world.advance(1000);
    z.store
        .put("notes", "k", &json!({"v": 2}))
        .await
        .expect("put");
    z.engine.sync().await.expect("sync");
    y.engine.sync().await.expect("y gets v2");
    assert_eq!(
        x.store.get("notes", "k").await.expect("get"),
        Some(json!({"v": 1}))
    );

    // The relay loses both, the restore is declared, and Z is gone. X puts back its older
    // value first; Y then finds it on the relay, concurrent with the newer value it holds.
    world.relay.restore(&backup).expect("restore");
    world.relay.mark_restored().expect("mark");
    drop(z);
    world.advance(1000);
    let r = x.engine.sync().await.expect("x");
    assert!(r.log_replaced && r.reuploaded == 1, "{r:?}");
    world.advance(1000);
    let r = y.engine.sync().await.expect("y");
    assert!(r.log_replaced, "{r:?}");
    for _ in 0..3 {
        for d in [&y, &x] {
            let r = d.engine.sync().await.expect("sync");
            assert_eq!(r.conflicts_pending, 0, "{r:?}");
        }
    }
    for d in [&x, &y] {
        assert_eq!(
            d.store.get("notes", "k").await.expect("get"),
            Some(json!({"v": 2})),
            "the newer write must win"
        );
    }
}
