//! The sync engine over the mock transport: delta sync, conflicts per strategy, deletes and
//! tombstone collection, idempotent retries, bad envelopes, re-sync past the horizon.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{DAY, Device, World};
use serde_json::json;
use sync_core::{
    Choice, ErrorKind, OutgoingEnvelope, PushRequest, SpaceRef, SyncConfig, SyncState, Transport,
    WriteBatch,
};
use transport_mock::{Faults, MockTransport};

async fn pair() -> (World, Device, Device) {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    let b = Device::join(&world, &a.store, Faults::NONE, 2).await;
    (world, a, b)
}

#[tokio::test]
async fn only_changes_travel_and_both_devices_converge() {
    let (_w, a, b) = pair().await;
    assert_eq!(a.store.space(), b.store.space());
    assert_ne!(a.store.device(), b.store.device());
    let mut batch = WriteBatch::new();
    for i in 0..120 {
        batch
            .put("notes", format!("n{i:03}"), &json!({"i": i}))
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    let r = a.engine.sync().await.expect("sync a");
    assert_eq!(r.pushed, 120);
    let r = b.engine.sync().await.expect("sync b");
    assert_eq!((r.pulled, r.applied), (120, 120));
    assert_eq!(
        b.store.get("notes", "n007").await.expect("get"),
        Some(json!({"i": 7}))
    );
    assert_eq!(
        a.store.info().await.expect("info").pending,
        0,
        "acked writes leave the outbox"
    );

    // Nothing new: a second round sends and applies nothing.
    let up = a.transport.traffic().envelopes_up;
    let r = a.engine.sync().await.expect("sync a");
    assert_eq!((r.pushed, r.applied), (0, 0));
    assert_eq!(
        a.transport.traffic().envelopes_up,
        up,
        "a sync with nothing new sends no record"
    );
    assert_eq!(
        a.transport.traffic().envelopes_down,
        0,
        "a device is not sent back its own envelopes"
    );

    // One edit travels as one envelope, and the server keeps only the newest version.
    b.store
        .put("notes", "n007", &json!({"i": 7, "edited": true}))
        .await
        .expect("put");
    let r = b.engine.sync().await.expect("sync b");
    assert_eq!(r.pushed, 1);
    let r = a.engine.sync().await.expect("sync a");
    assert_eq!(r.applied, 1);
    assert_eq!(
        a.store.get("notes", "n007").await.expect("get"),
        Some(json!({"i": 7, "edited": true}))
    );
    assert_eq!(
        a.transport.relay().stats().expect("stats").envelopes,
        120 + 2, // and each device's newest head
        "superseded versions are compacted"
    );
    assert_eq!(a.snapshot().await, b.snapshot().await);
    assert!(matches!(a.engine.state(), SyncState::UpToDate { .. }));
    let last = a
        .engine
        .last_sync()
        .await
        .expect("last")
        .expect("persisted");
    assert_eq!(last.error, None);
}

#[tokio::test]
async fn concurrent_edits_resolve_the_same_way_on_both_devices() {
    let (w, a, b) = pair().await;
    a.store
        .put("notes", "k", &json!("base"))
        .await
        .expect("put");
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    // Offline edits; B's clock runs two days behind, so HLC (not wall time) must order them.
    b.skew
        .store(u64::MAX - 2 * DAY + 1, std::sync::atomic::Ordering::SeqCst);
    a.store
        .put("notes", "k", &json!("from a"))
        .await
        .expect("put");
    w.advance(1000);
    b.store
        .put("notes", "k", &json!("from b"))
        .await
        .expect("put");
    a.engine.sync().await.expect("sync");
    let r = b.engine.sync().await.expect("sync");
    assert_eq!(r.conflicts_resolved, 1);
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    let va = a
        .store
        .get_record("notes", "k")
        .await
        .expect("get")
        .expect("exists");
    let vb = b
        .store
        .get_record("notes", "k")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(va.value, vb.value);
    assert_eq!(va.version, vb.version, "both resolved to the same version");
    // Both sides stop: another round changes nothing.
    let r = a.engine.sync().await.expect("sync");
    assert_eq!((r.conflicts_resolved, r.pushed), (0, 0));
}

#[tokio::test]
async fn merge_strategy_merges_fields_from_both_sides() {
    let (_w, a, b) = pair().await;
    for d in [&a, &b] {
        d.engine
            .set_strategy("docs", "merge")
            .await
            .expect("strategy");
    }
    a.store
        .put(
            "docs",
            "d",
            &json!({"title": "t", "body": "b", "tags": ["x"]}),
        )
        .await
        .expect("put");
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    a.store
        .put(
            "docs",
            "d",
            &json!({"title": "T", "body": "b", "tags": ["x", "a"]}),
        )
        .await
        .expect("put");
    b.store
        .put(
            "docs",
            "d",
            &json!({"title": "t", "body": "B", "tags": ["x", "b"]}),
        )
        .await
        .expect("put");
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    let va = a
        .store
        .get("docs", "d")
        .await
        .expect("get")
        .expect("exists");
    let vb = b
        .store
        .get("docs", "d")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(va, vb);
    assert_eq!(va["title"], "T");
    assert_eq!(va["body"], "B");
    let tags = va["tags"].as_array().expect("array");
    assert_eq!(
        tags.len(),
        3,
        "every element either side wrote is kept: {tags:?}"
    );
    assert!(
        a.engine
            .set_strategy("docs", "no-such-strategy")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn user_choice_keeps_siblings_until_resolved_or_the_deadline() {
    let (w, a, b) = pair().await;
    for d in [&a, &b] {
        d.engine
            .set_strategy("tasks", "user-choice")
            .await
            .expect("strategy");
    }
    for key in ["t1", "t2"] {
        a.store
            .put("tasks", key, &json!("base"))
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    for key in ["t1", "t2"] {
        a.store.put("tasks", key, &json!("a")).await.expect("put");
        b.store.put("tasks", key, &json!("b")).await.expect("put");
    }
    // The same value written on both sides is concurrent too, but there is nothing to choose.
    for d in [&a, &b] {
        d.store
            .put("tasks", "same", &json!("equal"))
            .await
            .expect("put");
    }
    a.engine.sync().await.expect("sync");
    let r = b.engine.sync().await.expect("sync");
    assert_eq!(r.conflicts_pending, 2);
    assert_eq!(r.conflicts_resolved, 1, "{r:?}");
    assert_eq!(b.engine.state(), SyncState::Conflict { count: 2 });
    let conflicts = b.engine.conflicts().await.expect("list");
    assert_eq!(conflicts.len(), 2);
    assert_eq!(conflicts[0].local.value, Some(json!("b")));
    assert_eq!(conflicts[0].siblings[0].value, Some(json!("a")));

    // The app resolves t1 by taking the remote value; t2 is left to the deadline.
    b.engine
        .resolve("tasks", "t1", Choice::Remote(0))
        .await
        .expect("resolve");
    b.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    assert_eq!(
        a.store.get("tasks", "t1").await.expect("get"),
        Some(json!("a"))
    );
    assert_eq!(
        b.store.get("tasks", "t1").await.expect("get"),
        Some(json!("a"))
    );
    assert_eq!(b.engine.conflicts().await.expect("list").len(), 1);

    w.advance(25 * 3600 * 1000);
    for _ in 0..2 {
        a.engine.sync().await.expect("sync");
        b.engine.sync().await.expect("sync");
    }
    assert!(
        b.engine.conflicts().await.expect("list").is_empty(),
        "the fallback applied after 24 h"
    );
    assert!(a.engine.conflicts().await.expect("list").is_empty());
    assert_eq!(a.snapshot().await, b.snapshot().await);
}

#[tokio::test]
async fn deletes_propagate_and_tombstones_are_collected() {
    let (_w, a, b) = pair().await;
    a.store.put("notes", "gone", &json!(1)).await.expect("put");
    a.store.put("notes", "kept", &json!(2)).await.expect("put");
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    assert!(b.store.delete("notes", "gone").await.expect("delete"));
    b.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    assert_eq!(a.store.get("notes", "gone").await.expect("get"), None);
    assert_eq!(
        a.transport.relay().stats().expect("stats").tombstones,
        1,
        "kept until every device pulled past it"
    );
    // Once every device has pulled past the tombstone the server drops it; each device learns
    // the server's collection floor on its next pull and forgets its own tombstone.
    let mut collected = 0;
    for _ in 0..3 {
        collected += a.engine.sync().await.expect("sync").tombstones_collected;
        collected += b.engine.sync().await.expect("sync").tombstones_collected;
    }
    assert_eq!(a.transport.relay().stats().expect("stats").tombstones, 0);
    assert_eq!(collected, 2, "each device forgot its tombstone once");
    for d in [&a, &b] {
        let size = d.engine.metadata_size().await.expect("size");
        assert_eq!(
            (size.records, size.tombstones),
            (1, 0),
            "only the live record remains"
        );
    }
    assert_eq!(a.snapshot().await, b.snapshot().await);
}

#[tokio::test]
async fn lost_responses_and_duplicates_store_nothing_twice() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    let b = Device::join(&world, &a.store, Faults::NONE, 2).await;
    let mut batch = WriteBatch::new();
    for i in 0..10 {
        batch.put("notes", format!("k{i}"), &json!(i)).expect("put");
    }
    a.store.write(batch).await.expect("write");
    // The server applies the push but the device never hears; it also arrives twice.
    a.transport.set_faults(Faults {
        lose_response: 1.0,
        duplicate: 1.0,
        ..Faults::NONE
    });
    let err = a.engine.sync().await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Unavailable));
    assert!(matches!(a.engine.state(), SyncState::Error { .. }));
    assert_eq!(
        a.store.info().await.expect("info").pending,
        10,
        "not acknowledged, still pending"
    );
    a.transport.set_faults(Faults::NONE);
    let r = a.engine.sync().await.expect("retry");
    assert_eq!(r.pushed, 10);
    assert_eq!(
        a.transport.relay().stats().expect("stats").envelopes,
        10 + 1, // and A's head
        "the retry stored nothing twice"
    );
    let r = b.engine.sync().await.expect("sync");
    assert_eq!(r.applied, 10);
}

#[tokio::test]
async fn a_crash_after_the_server_applied_a_push_loses_and_duplicates_nothing() {
    let world = World::new();
    let mut a = Device::first(&world, Faults::NONE, 1).await;
    let b = Device::join(&world, &a.store, Faults::NONE, 2).await;
    a.store.put("notes", "x", &json!("one")).await.expect("put");
    a.transport.set_faults(Faults {
        lose_response: 1.0,
        ..Faults::NONE
    });
    assert!(a.engine.sync().await.is_err());
    a.restart().await;
    a.transport.set_faults(Faults::NONE);
    a.store
        .put("notes", "y", &json!("two"))
        .await
        .expect("put after restart");
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    assert_eq!(b.snapshot().await.len(), 2);
    // Two records and A's newest head (its older one, pushed before the crash, replaced).
    assert_eq!(a.transport.relay().stats().expect("stats").envelopes, 3);
}

#[tokio::test]
async fn bad_envelopes_are_rejected_and_reported_and_the_rest_applies() {
    let (_w, a, b) = pair().await;
    a.store.put("notes", "good", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");
    // A forged push into the space with a valid fingerprint but garbage or moved ciphertext.
    let good_row = a
        .store
        .storage()
        .get(&a.store.record_id("notes", "good").expect("id"))
        .await
        .expect("get")
        .expect("row");
    let forged = |seq: u64, record: sync_core::RecordId, envelope: Vec<u8>| OutgoingEnvelope {
        record,
        seq,
        supersedes: vec![],
        tombstone: false,
        envelope,
    };
    let mut truncated = good_row.envelope.clone();
    truncated.truncate(20);
    let mut future = good_row.envelope.clone();
    future[0] = 7;
    let other = a.store.record_id("notes", "other").expect("id");
    let other2 = a.store.record_id("notes", "other2").expect("id");
    let other3 = a.store.record_id("notes", "other3").expect("id");
    let request = PushRequest {
        from: SpaceRef {
            space: a.store.space(),
            device: sync_core::DeviceId([9; 16]),
            fingerprint: a.store.key_fingerprint(),
        },
        envelopes: vec![
            forged(1, other, good_row.envelope.clone()),
            forged(2, other2, truncated),
            forged(3, other3, future),
        ],
        settle: None,
    };
    a.transport.relay().push(&request).expect("forged push");
    a.store.put("notes", "after", &json!(2)).await.expect("put");
    a.engine.sync().await.expect("sync");
    let r = b.engine.sync().await.expect("sync survives bad envelopes");
    let reasons: Vec<&str> = r.rejected.iter().map(|x| x.reason.as_str()).collect();
    assert_eq!(reasons, ["tampered", "corrupt", "unsupported"]);
    assert_eq!(
        b.store.get("notes", "good").await.expect("get"),
        Some(json!(1))
    );
    assert_eq!(
        b.store.get("notes", "after").await.expect("get"),
        Some(json!(2))
    );
    assert_eq!(b.store.get("notes", "other").await.expect("get"), None);
}

#[tokio::test]
async fn a_device_with_another_key_is_refused_before_uploading() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    a.store.put("notes", "k", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");
    let stranger = Device::first(&world, Faults::NONE, 3).await;
    let request = PushRequest {
        from: SpaceRef {
            space: a.store.space(),
            device: stranger.store.device(),
            fingerprint: stranger.store.key_fingerprint(),
        },
        envelopes: vec![],
        settle: None,
    };
    let err = a.transport.push(request).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongKey));
    // A's record and head, nothing of the stranger's.
    assert_eq!(a.transport.relay().stats().expect("stats").envelopes, 2);
}

#[tokio::test]
async fn a_device_back_after_the_horizon_resyncs_and_resurrects_nothing() {
    let (w, a, b) = pair().await;
    for k in ["deleted", "edited-then-deleted", "kept"] {
        a.store.put("notes", k, &json!(k)).await.expect("put");
    }
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    // B goes away; it edits a record offline that A deletes meanwhile.
    b.store
        .put("notes", "edited-then-deleted", &json!("b's offline edit"))
        .await
        .expect("put");
    b.store
        .put("notes", "new-offline", &json!("b"))
        .await
        .expect("put");
    a.store.delete("notes", "deleted").await.expect("delete");
    a.store
        .delete("notes", "edited-then-deleted")
        .await
        .expect("delete");
    a.engine.sync().await.expect("sync");
    w.advance(100 * DAY);
    a.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    assert_eq!(
        a.transport.relay().stats().expect("stats").tombstones,
        0,
        "collected past the horizon"
    );

    let r = b.engine.sync().await.expect("resync");
    assert!(r.resynced);
    assert!(r.discarded >= 2, "{r:?}");
    a.engine.sync().await.expect("sync");
    assert_eq!(b.store.get("notes", "deleted").await.expect("get"), None);
    assert_eq!(
        b.store
            .get("notes", "edited-then-deleted")
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        a.store.get("notes", "new-offline").await.expect("get"),
        Some(json!("b"))
    );
    assert_eq!(a.snapshot().await, b.snapshot().await);
}

/// The re-sync's sweep is checked against the heads the walk brought (a server that leaves
/// records out cannot make a device delete them, `sync-server/tests/malicious.rs`); an honest
/// walk after a real deletion passes the check and the sweep still removes what was collected.
#[tokio::test]
async fn a_checked_resync_sweep_still_removes_collected_deletions() {
    let (w, a, b) = pair().await;
    for k in ["deleted", "kept"] {
        a.store.put("notes", k, &json!(k)).await.expect("put");
    }
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    a.store.delete("notes", "deleted").await.expect("delete");
    a.engine.sync().await.expect("sync");
    w.advance(100 * DAY);
    a.engine.sync().await.expect("sync");
    a.engine.sync().await.expect("sync");
    assert_eq!(a.transport.relay().stats().expect("stats").tombstones, 0);

    // B has nothing to push, so A's head (which names every write B holds) is comparable.
    let r = b.engine.sync().await.expect("resync");
    assert!(r.resynced, "{r:?}");
    assert!(r.withheld.is_empty(), "{:?}", r.withheld);
    assert!(r.digests_compared >= 1, "the sweep was checked: {r:?}");
    assert_eq!(r.discarded, 1, "{r:?}");
    assert_eq!(b.store.get("notes", "deleted").await.expect("get"), None);
    assert_eq!(a.snapshot().await, b.snapshot().await);
    b.store
        .check()
        .await
        .expect("kept digest matches the records");
}

#[tokio::test]
async fn offline_state_and_a_stalled_transport_become_visible_errors() {
    let (_w, a, _b) = pair().await;
    a.engine.set_online(false);
    assert_eq!(a.engine.state(), SyncState::Offline);
    assert_eq!(
        a.engine.sync().await.err().map(|e| e.kind()),
        Some(ErrorKind::Unavailable)
    );
    a.engine.set_online(true);

    /// A transport whose pull never answers.
    #[derive(Debug)]
    struct Stuck(Arc<MockTransport>);
    #[async_trait::async_trait]
    impl Transport for Stuck {
        fn name(&self) -> &'static str {
            "stuck"
        }
        async fn push(&self, r: PushRequest) -> sync_core::Result<sync_core::PushResponse> {
            self.0.push(r).await
        }
        async fn pull(&self, _: sync_core::PullRequest) -> sync_core::Result<sync_core::PullPage> {
            std::future::pending().await
        }
        async fn get_key_backup(
            &self,
            s: sync_core::SpaceId,
        ) -> sync_core::Result<Option<Vec<u8>>> {
            self.0.get_key_backup(s).await
        }
        async fn put_key_backup(&self, s: sync_core::SpaceId, b: Vec<u8>) -> sync_core::Result<()> {
            self.0.put_key_backup(s, b).await
        }
        async fn share(&self, d: &str, b: Vec<u8>) -> sync_core::Result<()> {
            self.0.share(d, b).await
        }
    }
    let engine = sync_core::SyncEngine::new(
        a.store.clone(),
        Arc::new(Stuck(a.transport.clone())),
        SyncConfig {
            stall_timeout: Duration::from_millis(100),
            ..SyncConfig::default()
        },
    );
    let mut states = engine.subscribe();
    let err = engine.sync().await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Unavailable));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("no progress")
    );
    let state = states.borrow_and_update().clone();
    assert!(
        matches!(state, SyncState::Error { ref reason, .. } if reason.contains("no progress")),
        "{state:?}"
    );
}

/// Fails the n-th pull, passing everything else through.
#[derive(Debug)]
struct FailNthPull {
    inner: Arc<MockTransport>,
    n: u64,
    calls: std::sync::atomic::AtomicU64,
}

#[async_trait::async_trait]
impl Transport for FailNthPull {
    fn name(&self) -> &'static str {
        "fail-nth-pull"
    }
    async fn push(&self, r: PushRequest) -> sync_core::Result<sync_core::PushResponse> {
        self.inner.push(r).await
    }
    async fn pull(&self, r: sync_core::PullRequest) -> sync_core::Result<sync_core::PullPage> {
        if self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == self.n {
            return Err(
                sync_core::Error::new(ErrorKind::Unavailable, "connection dropped").temporary(),
            );
        }
        self.inner.pull(r).await
    }
    async fn get_key_backup(&self, s: sync_core::SpaceId) -> sync_core::Result<Option<Vec<u8>>> {
        self.inner.get_key_backup(s).await
    }
    async fn put_key_backup(&self, s: sync_core::SpaceId, b: Vec<u8>) -> sync_core::Result<()> {
        self.inner.put_key_backup(s, b).await
    }
    async fn share(&self, d: &str, b: Vec<u8>) -> sync_core::Result<()> {
        self.inner.share(d, b).await
    }
}

#[tokio::test]
async fn an_interrupted_initial_sync_resumes_from_its_last_applied_page() {
    let (_w, a, b) = pair().await;
    let mut batch = WriteBatch::new();
    for i in 0..100 {
        batch
            .put("notes", format!("n{i:03}"), &json!(i))
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    a.engine.sync().await.expect("sync");
    let flaky = Arc::new(FailNthPull {
        inner: b.transport.clone(),
        n: 4,
        calls: std::sync::atomic::AtomicU64::new(0),
    });
    let config = SyncConfig {
        pull_page: 10,
        ..SyncConfig::default()
    };
    let engine = sync_core::SyncEngine::new(b.store.clone(), flaky, config);
    assert!(engine.sync().await.is_err(), "the fourth page is lost");
    assert_eq!(
        b.snapshot().await.len(),
        30,
        "three pages were applied and kept"
    );
    let r = engine.sync().await.expect("resume");
    assert_eq!(
        r.pulled, 70,
        "the resumed sync downloads only what is missing"
    );
    assert_eq!(
        b.transport.traffic().envelopes_down,
        100 + 1, // and A's head
        "nothing was downloaded twice"
    );
    assert_eq!(a.snapshot().await, b.snapshot().await);
}

#[tokio::test]
async fn a_delete_after_a_lost_ack_leaves_nothing_to_come_back() {
    // Found by the 10,000-seed simulation (seed 6353): the put's ack is lost, so the device
    // never learns the put's server sequence and the later tombstone cannot name it. Once the
    // tombstone was collected, a device syncing from scratch got the put back.
    let (w, a, b) = pair().await;
    a.engine.sync().await.expect("sync");
    b.engine.sync().await.expect("sync");
    a.store
        .put("notes", "x", &json!("doomed"))
        .await
        .expect("put");
    /// Delivers pushes to the server but loses every acknowledgement.
    #[derive(Debug)]
    struct LoseAcks(Arc<MockTransport>);
    #[async_trait::async_trait]
    impl Transport for LoseAcks {
        fn name(&self) -> &'static str {
            "lose-acks"
        }
        async fn push(&self, r: PushRequest) -> sync_core::Result<sync_core::PushResponse> {
            self.0.push(r).await?;
            Err(sync_core::Error::new(ErrorKind::Unavailable, "ack lost").temporary())
        }
        async fn pull(&self, r: sync_core::PullRequest) -> sync_core::Result<sync_core::PullPage> {
            self.0.pull(r).await
        }
        async fn get_key_backup(
            &self,
            s: sync_core::SpaceId,
        ) -> sync_core::Result<Option<Vec<u8>>> {
            self.0.get_key_backup(s).await
        }
        async fn put_key_backup(&self, s: sync_core::SpaceId, b: Vec<u8>) -> sync_core::Result<()> {
            self.0.put_key_backup(s, b).await
        }
        async fn share(&self, d: &str, b: Vec<u8>) -> sync_core::Result<()> {
            self.0.share(d, b).await
        }
    }
    let lossy = sync_core::SyncEngine::new(
        a.store.clone(),
        Arc::new(LoseAcks(a.transport.clone())),
        SyncConfig::default(),
    );
    assert!(lossy.sync().await.is_err(), "the ack is lost");
    assert_eq!(
        a.transport.relay().stats().expect("stats").envelopes,
        2,
        "but the server stored the put (and A's head)"
    );
    assert!(a.store.delete("notes", "x").await.expect("delete"));
    for _ in 0..3 {
        a.engine.sync().await.expect("sync");
        b.engine.sync().await.expect("sync");
    }
    assert_eq!(
        a.transport.relay().stats().expect("stats").tombstones,
        0,
        "collected"
    );
    let c = Device::join(&w, &a.store, Faults::NONE, 3).await;
    c.engine.sync().await.expect("fresh device syncs");
    assert_eq!(
        c.store.get("notes", "x").await.expect("get"),
        None,
        "the deleted record came back"
    );
    // Nothing of the record is left; only A's newest head.
    assert_eq!(a.transport.relay().stats().expect("stats").envelopes, 1);
}

#[tokio::test]
async fn a_store_from_before_settling_learns_its_last_head_once() {
    // A store synced by a build before wire version 3 kept no server sequences of its heads,
    // and the relay now drops only what a push names: without settling once, its next head
    // would leave the previous one on the relay for good.
    let (w, a, _b) = pair().await;
    a.store.put("notes", "x", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");
    let heads_of_a = || {
        w.relay
            .entries(a.store.space())
            .expect("entries")
            .iter()
            .filter(|e| e.device == a.store.device())
            .count()
    };
    assert_eq!(heads_of_a(), 2, "the record and A's head");
    a.store
        .storage()
        .commit(sync_core::Batch {
            meta: vec![("hearth.sync.own-head-server".to_owned(), None)],
            ..sync_core::Batch::default()
        })
        .await
        .expect("forget, as an older build never kept it");
    a.store.put("notes", "y", &json!(2)).await.expect("put");
    let calls = a.transport.traffic().calls;
    let r = a.engine.sync().await.expect("sync");
    assert_eq!(r.pushed, 1, "{r:?}");
    assert_eq!(heads_of_a(), 3, "two records and one head of A");
    // A pull, two settle requests (the second finds nothing more), a push.
    assert_eq!(a.transport.traffic().calls - calls, 4);
    // Settled once: the next rounds do not ask again (a pull and a push).
    a.store.put("notes", "z", &json!(3)).await.expect("put");
    let calls = a.transport.traffic().calls;
    a.engine.sync().await.expect("sync");
    assert_eq!(a.transport.traffic().calls - calls, 2);
    assert_eq!(heads_of_a(), 4, "three records and one head of A");
    assert!(
        a.store
            .storage()
            .meta_get("hearth.sync.own-head-server")
            .await
            .expect("meta")
            .is_some()
    );
}

#[tokio::test]
async fn heads_are_reserved_and_the_kept_state_digest_is_checked() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    let err = a
        .store
        .put(sync_core::engine::HEAD_COLLECTION, "x", &json!(1))
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::InvalidInput), "heads are the engine's");

    // A new store starts with the empty digest; every commit keeps it.
    a.store.put("notes", "x", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");
    assert!(
        a.store
            .storage()
            .meta_get("hearth.sync.digest")
            .await
            .expect("meta")
            .is_some()
    );
    a.store.put("notes", "y", &json!(2)).await.expect("put");
    a.store.delete("notes", "x").await.expect("delete");
    // One batch writing a record twice and deleting and rewriting another.
    let mut batch = WriteBatch::new();
    batch.put("notes", "z", &json!(1)).expect("put");
    batch.put("notes", "z", &json!(2)).expect("put");
    batch.delete("notes", "y");
    batch.put("notes", "y", &json!(3)).expect("put");
    a.store.write(batch).await.expect("write");
    a.store.check().await.expect("kept through local writes");
    a.engine.sync().await.expect("sync");
    a.store.check().await.expect("kept through a sync");

    // A kept digest that no longer matches the records is found.
    a.store
        .storage()
        .commit(sync_core::Batch {
            meta: vec![("hearth.sync.digest".to_owned(), Some(vec![0; 32]))],
            ..sync_core::Batch::default()
        })
        .await
        .expect("commit");
    let err = a.store.check().await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Corrupt));
}
