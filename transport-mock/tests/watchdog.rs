//! The engine against servers that misbehave without failing: pages that do not advance the
//! cursor or move it back, pushes that never succeed, and the retry schedule and network
//! states a UI shows for them. A scripted transport plays the server.

mod common;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Device, World};
use serde_json::json;
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, SpaceId, SyncConfig,
    SyncEngine, SyncState, Transport,
};
use transport_mock::Faults;

/// A server played from a script: pulls answer the queued pages (then an empty last page at
/// the requested cursor); pushes are acknowledged, or fail with a temporary or a permanent
/// error while told to.
#[derive(Debug, Default)]
struct Scripted {
    pages: Mutex<VecDeque<PullPage>>,
    cursors: Mutex<Vec<u64>>,
    push_fails: AtomicBool,
    push_fails_permanently: AtomicBool,
    next_server_seq: Mutex<u64>,
}

impl Scripted {
    fn queue(&self, page: PullPage) {
        self.pages.lock().expect("lock").push_back(page);
    }
    fn cursors(&self) -> Vec<u64> {
        self.cursors.lock().expect("lock").clone()
    }
}

fn page(next_cursor: u64, more: bool) -> PullPage {
    PullPage {
        envelopes: Vec::new(),
        next_cursor,
        more,
        gc_floor: 0,
        log_id: Default::default(),
    }
}

#[async_trait::async_trait]
impl Transport for Scripted {
    fn name(&self) -> &'static str {
        "scripted"
    }
    async fn push(&self, r: PushRequest) -> sync_core::Result<PushResponse> {
        if self.push_fails_permanently.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Forbidden, "not your space"));
        }
        if self.push_fails.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Unavailable, "server busy").temporary());
        }
        let mut next = self.next_server_seq.lock().expect("lock");
        let assigned = r
            .envelopes
            .iter()
            .map(|e| {
                *next += 1;
                (e.seq, *next)
            })
            .collect();
        Ok(PushResponse {
            assigned,
            held: Vec::new(),
        })
    }
    async fn pull(&self, r: PullRequest) -> sync_core::Result<PullPage> {
        self.cursors.lock().expect("lock").push(r.cursor);
        Ok(self
            .pages
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or_else(|| page(r.cursor, false)))
    }
    async fn get_key_backup(&self, _: SpaceId) -> sync_core::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    async fn put_key_backup(&self, _: SpaceId, _: Vec<u8>) -> sync_core::Result<()> {
        Ok(())
    }
    async fn share(&self, _: &str, _: Vec<u8>) -> sync_core::Result<()> {
        Ok(())
    }
}

async fn scripted(config: SyncConfig) -> (World, Device, Arc<Scripted>, SyncEngine) {
    let world = World::new();
    let device = Device::first(&world, Faults::NONE, 1).await;
    let server = Arc::new(Scripted::default());
    let engine = SyncEngine::new(
        device.store.clone(),
        server.clone() as Arc<dyn Transport>,
        config,
    );
    (world, device, server, engine)
}

fn error_reason(state: &SyncState) -> Option<(&str, Option<u64>)> {
    match state {
        SyncState::Error { reason, retry_at } => Some((reason.as_str(), *retry_at)),
        _ => None,
    }
}

#[tokio::test]
async fn a_page_that_does_not_advance_the_cursor_is_refused_and_shown() {
    let (_w, _d, server, engine) = scripted(SyncConfig::default()).await;
    // `more` with an empty page at the same cursor: without the check, the engine asks again
    // forever.
    server.queue(page(0, true));
    server.queue(page(0, true));
    let err = engine
        .sync()
        .await
        .expect_err("a stuck page fails the round");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    assert_eq!(server.cursors(), [0], "asked once, not in a loop");
    let state = engine.state();
    let (reason, retry_at) = error_reason(&state).expect("an error state");
    assert!(reason.contains("does not advance"), "{reason}");
    assert_eq!(retry_at, None, "a protocol violation is not retried");

    // A cursor that moves back is refused and not saved.
    server.pages.lock().expect("lock").clear();
    server.queue(page(10, false));
    engine.sync().await.expect("a page that advances is fine");
    server.queue(page(5, false));
    let err = engine.sync().await.expect_err("a cursor going back fails");
    assert_eq!(err.kind(), ErrorKind::Corrupt);
    engine.sync().await.expect("the next round");
    assert_eq!(server.cursors(), [0, 0, 10, 10], "cursor 5 was never saved");
}

#[tokio::test]
async fn an_upload_queue_that_never_drains_becomes_a_visible_no_progress_error() {
    let (world, device, server, engine) = scripted(SyncConfig {
        progress_timeout: Duration::from_secs(600),
        ..SyncConfig::default()
    })
    .await;
    device
        .store
        .put("notes", "a", &json!(1))
        .await
        .expect("put");
    server.push_fails.store(true, Ordering::SeqCst);
    let first = engine.sync().await.expect_err("push fails");
    assert!(first.to_string().contains("server busy"), "{first}");
    assert!(!first.to_string().contains("no progress"), "{first}");
    world.advance(5 * 60 * 1000);
    let second = engine.sync().await.expect_err("push fails");
    assert!(!second.to_string().contains("no progress"), "{second}");
    world.advance(6 * 60 * 1000);
    let third = engine.sync().await.expect_err("push fails");
    assert!(third.is_temporary());
    let state = engine.state();
    let (reason, retry_at) = error_reason(&state).expect("an error state");
    assert!(
        reason.contains("no progress")
            && reason.contains("660 s")
            && reason.contains("server busy"),
        "{reason}"
    );
    assert!(retry_at.is_some());

    server.push_fails.store(false, Ordering::SeqCst);
    engine.sync().await.expect("the queue drains");
    assert!(matches!(engine.state(), SyncState::UpToDate { .. }));
    assert_eq!(device.store.info().await.expect("info").pending, 0);
}

#[tokio::test]
async fn a_temporary_failure_plans_a_retry_on_the_backoff_schedule() {
    let (world, device, server, engine) = scripted(SyncConfig {
        retry_min: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
        ..SyncConfig::default()
    })
    .await;
    device
        .store
        .put("notes", "a", &json!(1))
        .await
        .expect("put");
    server.push_fails.store(true, Ordering::SeqCst);
    for base in [1000u64, 2000, 4000, 4000] {
        let now = world.now.load(Ordering::SeqCst);
        assert!(engine.sync().await.is_err());
        let retry = engine.next_retry().expect("a retry is planned");
        assert!(
            retry >= now + base && retry <= now + base + base / 4,
            "base {base}: retry in {} ms",
            retry - now
        );
        let state = engine.state();
        assert_eq!(error_reason(&state).and_then(|(_, r)| r), Some(retry));
    }
    // A permanent failure plans nothing: retrying cannot fix it.
    server.push_fails_permanently.store(true, Ordering::SeqCst);
    assert!(engine.sync().await.is_err());
    assert_eq!(engine.next_retry(), None);
    assert_eq!(error_reason(&engine.state()).map(|(_, r)| r), Some(None));
    // Success clears the plan and the backoff starts over.
    server.push_fails_permanently.store(false, Ordering::SeqCst);
    server.push_fails.store(false, Ordering::SeqCst);
    engine.sync().await.expect("sync");
    assert_eq!(engine.next_retry(), None);
    server.push_fails.store(true, Ordering::SeqCst);
    device
        .store
        .put("notes", "b", &json!(2))
        .await
        .expect("put");
    let now = world.now.load(Ordering::SeqCst);
    assert!(engine.sync().await.is_err());
    assert!(engine.next_retry().is_some_and(|r| r <= now + 1250));
    // A caller's own schedule overrides the engine's.
    engine.report_retry(now + 42, "caller");
    assert_eq!(engine.next_retry(), Some(now + 42));
}

#[tokio::test]
async fn coming_back_online_leaves_the_offline_state_at_once() {
    let (world, device, server, engine) = scripted(SyncConfig::default()).await;
    engine.sync().await.expect("sync");
    let synced = engine.state();
    assert!(matches!(synced, SyncState::UpToDate { .. }), "{synced:?}");
    let mut states = engine.subscribe();
    engine.set_online(false);
    assert_eq!(*states.borrow_and_update(), SyncState::Offline);
    engine.set_online(true);
    assert!(states.has_changed().expect("open"));
    assert_eq!(*states.borrow_and_update(), synced, "back to what it was");

    // Offline after a failure: back online, the retry is due now.
    device
        .store
        .put("notes", "a", &json!(1))
        .await
        .expect("put");
    server.push_fails.store(true, Ordering::SeqCst);
    assert!(engine.sync().await.is_err());
    engine.set_online(false);
    assert!(engine.sync().await.is_err(), "offline fails fast");
    assert_eq!(engine.state(), SyncState::Offline);
    world.advance(1000);
    engine.set_online(true);
    let now = world.now.load(Ordering::SeqCst);
    let state = engine.state();
    let (reason, retry_at) = error_reason(&state).expect("an error state");
    assert!(reason.contains("server busy"), "{reason}");
    assert_eq!(retry_at, Some(now));
    assert_eq!(engine.next_retry(), Some(now));
}
