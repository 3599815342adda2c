//! A malicious server, simulated by a transport that tampers with what the real server
//! answers: (a) replays an old envelope, (b) hides a device's newest envelope, (c) moves a
//! ciphertext to another record id, (d) serves another account's envelope, (e) relabels the
//! device of an envelope. (a), (c), (d), (e) are detected and reported in
//! `SyncReport.rejected` without touching local state. (b) is detected from the writers'
//! sealed heads and reported in `SyncReport.withheld`: hiding a record's newest version while
//! serving the head that followed it (the state digest differs), and hiding a device's whole
//! newest push, head included, once another device that saw it has pushed its own head (the
//! peer view). A finding makes the round pull the whole log again, so once the tampering stops
//! the device catches up at once, and every device converges. What stays undetectable is in
//! docs/security.md ("What is detected, and what is not").

mod common;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use common::{Device, PASS, server_and_two_devices};
use serde_json::json;
use sync_core::{
    DeviceId, Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, RecordId,
    RemoteEnvelope, Result, SpaceId, SyncConfig, SyncEngine, SyncReport, Transport, Withheld,
};
use transport_http::HttpTransport;

#[derive(Debug, Default)]
struct Plan {
    inject: Vec<RemoteEnvelope>,
    /// Hide every envelope of this record.
    hide_record: Option<RecordId>,
    /// Hide every envelope of this device above this sequence (its heads included).
    hide_after: Option<(DeviceId, u64)>,
    move_to: Option<RecordId>,
    relabel: Option<DeviceId>,
    /// Answer the next pull past cursor 0 with "re-sync required" (`410`), as a server that
    /// claims to have collected history does.
    gone: bool,
    seen: Vec<RemoteEnvelope>,
}

#[derive(Debug)]
struct Evil {
    inner: HttpTransport,
    plan: Mutex<Plan>,
}

#[async_trait]
impl Transport for Evil {
    fn name(&self) -> &'static str {
        "evil"
    }
    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        self.inner.push(request).await
    }
    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        {
            let mut plan = self.plan.lock().expect("plan");
            if plan.gone && request.cursor > 0 {
                plan.gone = false;
                return Err(Error::new(
                    ErrorKind::ResyncRequired,
                    "history collected; pull again from 0",
                ));
            }
        }
        let mut page = self.inner.pull(request).await?;
        let mut plan = self.plan.lock().expect("plan");
        plan.seen.extend(page.envelopes.iter().cloned());
        if let Some(r) = plan.hide_record {
            page.envelopes.retain(|e| e.record != r);
        }
        if let Some((d, seq)) = plan.hide_after {
            page.envelopes.retain(|e| !(e.device == d && e.seq > seq));
        }
        if let Some(r) = plan.move_to.take() {
            for e in &mut page.envelopes {
                e.record = r;
            }
        }
        if let Some(d) = plan.relabel.take() {
            for e in &mut page.envelopes {
                e.device = d;
            }
        }
        for mut e in std::mem::take(&mut plan.inject) {
            e.server_seq = page.next_cursor.max(1);
            page.envelopes.push(e);
        }
        Ok(page)
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

/// A real server, device A syncing with it honestly, and device B's store syncing through the
/// tampering transport (`eb`; `b.engine` is B's honest path).
struct Rig {
    dir: tempfile::TempDir,
    server: sync_server::RunningServer,
    url: String,
    token: String,
    a: Device,
    b: Device,
    evil: Arc<Evil>,
    eb: SyncEngine,
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, token, a, b) = server_and_two_devices(dir.path()).await;
    let url = server.url();
    let evil = Arc::new(Evil {
        inner: common::http(&url, &token),
        plan: Mutex::new(Plan::default()),
    });
    let eb = SyncEngine::new(b.store.clone(), evil.clone(), SyncConfig::default());
    Rig {
        dir,
        server,
        url,
        token,
        a,
        b,
        evil,
        eb,
    }
}

fn reasons(r: &SyncReport) -> Vec<&str> {
    r.rejected.iter().map(|x| x.reason.as_str()).collect()
}

#[tokio::test]
async fn a_malicious_server_is_detected_or_harmless() {
    let Rig {
        dir,
        server,
        url,
        token,
        a,
        b,
        evil,
        eb,
    } = rig().await;
    let plan = |f: &dyn Fn(&mut Plan)| f(&mut evil.plan.lock().expect("plan"));

    a.store.put("notes", "k", &json!("v1")).await.expect("put");
    a.store
        .put("notes", "other", &json!("o1"))
        .await
        .expect("put");
    a.engine.sync().await.expect("sync");
    let r = eb.sync().await.expect("sync b");
    assert_eq!((r.applied, r.rejected.len()), (2, 0));
    let old_k = evil.plan.lock().expect("plan").seen[0].clone();
    a.store.put("notes", "k", &json!("v2")).await.expect("put");
    a.engine.sync().await.expect("sync");
    assert_eq!(eb.sync().await.expect("sync").applied, 1);
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2"))
    );

    // (a) Replay of A's first version of k, served as new: a rollback, rejected.
    plan(&|p| p.inject.push(old_k.clone()));
    let r = eb.sync().await.expect("sync");
    assert_eq!(reasons(&r), ["rollback"]);
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2"))
    );

    // (c) A's next version of k moved to the record id of "other": fails authentication.
    a.store.put("notes", "k", &json!("v3")).await.expect("put");
    a.engine.sync().await.expect("sync");
    let other_id = b.store.record_id("notes", "other").expect("id");
    plan(&|p| p.move_to = Some(other_id));
    let r = eb.sync().await.expect("sync");
    assert_eq!(
        reasons(&r),
        ["tampered", "tampered"],
        "k's version and A's head"
    );
    assert_eq!(
        b.store.get("notes", "other").await.expect("get"),
        Some(json!("o1"))
    );
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2"))
    );

    // (e) An envelope relabelled as another device's: inconsistent, rejected.
    a.store.put("notes", "k", &json!("v4")).await.expect("put");
    a.engine.sync().await.expect("sync");
    plan(&|p| p.relabel = Some(DeviceId([0xDD; 16])));
    let r = eb.sync().await.expect("sync");
    assert_eq!(
        reasons(&r),
        ["inconsistent", "inconsistent"],
        "k's version and A's head"
    );
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2"))
    );

    // (d) Another account's envelope (its own space and key) served into B's space.
    let mallory = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let m = Device::first(&dir.path().join("m.db"), &url, &mallory.token).await;
    m.store
        .put("notes", "k", &json!("mallory"))
        .await
        .expect("put");
    m.engine.sync().await.expect("sync");
    let foreign = m
        .http
        .pull(PullRequest {
            from: m.from(),
            cursor: 0,
            limit: 10,
            include_own: true,
        })
        .await
        .expect("pull")
        .envelopes;
    let mut foreign_k = foreign[0].clone();
    foreign_k.record = b.store.record_id("notes", "k").expect("id");
    plan(&|p| p.inject.push(foreign_k.clone()));
    let r = eb.sync().await.expect("sync");
    assert_eq!(reasons(&r), ["tampered"]);
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2"))
    );

    // Nothing so far looked like withholding: every tampered envelope was rejected as such.
    // (b1) A's newest version of k hidden, the head that followed it served: B has seen all A
    // has seen, yet its state differs from the one A's head vouches for. The round pulls the
    // whole log again (refetch), through the same server, which hides k again.
    a.store.put("notes", "k", &json!("v5")).await.expect("put");
    a.engine.sync().await.expect("sync");
    let k_id = b.store.record_id("notes", "k").expect("id");
    plan(&|p| p.hide_record = Some(k_id));
    let r = eb.sync().await.expect("sync");
    assert_eq!(r.applied, 0, "nothing of A's withheld write is applied");
    assert!(r.rejected.is_empty(), "{:?}", reasons(&r));
    let digest_finding = Withheld {
        device: a.store.device(),
        witness: a.store.device(),
        reason: "state-digest".into(),
    };
    assert_eq!(r.withheld, std::slice::from_ref(&digest_finding));
    assert!(r.refetched && !r.resynced, "{r:?}");
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v2")),
        "nothing deleted or rolled back either"
    );
    // Persisted for the application to show, like every report.
    let last = eb.last_sync().await.expect("last").expect("a report");
    assert_eq!(last.report.withheld, r.withheld);
    plan(&|p| p.hide_record = None);

    // The withheld envelope is not lost: the honest server still holds it, and a device that
    // joins now receives A's newest version; A's head vouches for its state.
    let c = Device::join(&dir.path().join("c.db"), &url, &token, PASS)
        .await
        .expect("join");
    let r = c.engine.sync().await.expect("sync c");
    assert!(r.withheld.is_empty(), "{:?}", r.withheld);
    assert_eq!(r.digests_compared, 1, "C compared its state with A's head");
    assert_eq!(
        c.store.get("notes", "k").await.expect("get"),
        Some(json!("v5"))
    );
    // Served honestly, B (whose cursor is past the hidden version) finds the same once more,
    // pulls the whole log again and catches up; the round after is quiet.
    let honest = b.engine.sync().await.expect("sync");
    assert!(honest.rejected.is_empty(), "{:?}", reasons(&honest));
    assert_eq!(honest.withheld, [digest_finding]);
    assert!(honest.refetched);
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v5"))
    );
    let quiet = b.engine.sync().await.expect("sync");
    assert!(
        quiet.withheld.is_empty() && !quiet.refetched && quiet.digests_compared == 1,
        "{quiet:?}"
    );

    // (b2) A's whole newest push, head included, hidden from B: on its own indistinguishable
    // from A not having synced. C saw it and then pushed a write of its own, whose head names
    // A's newest head: B, holding an older head of A, learns that something was withheld.
    let hidden_above = c
        .http
        .pull(PullRequest {
            from: c.from(),
            cursor: 0,
            limit: 100,
            include_own: true,
        })
        .await
        .expect("pull")
        .envelopes
        .iter()
        .filter(|e| e.device == a.store.device())
        .map(|e| e.seq)
        .max()
        .expect("A's envelopes");
    plan(&|p| p.hide_after = Some((a.store.device(), hidden_above)));
    a.store.put("notes", "k", &json!("v6")).await.expect("put");
    a.engine.sync().await.expect("sync");
    let r = eb.sync().await.expect("sync");
    assert!(
        r.applied == 0 && r.withheld.is_empty(),
        "A's hidden push alone is invisible: {r:?}"
    );
    c.engine.sync().await.expect("sync c");
    c.store
        .put("notes", "c", &json!("from c"))
        .await
        .expect("put");
    c.engine.sync().await.expect("sync c");
    let r = eb.sync().await.expect("sync");
    assert_eq!(r.applied, 1, "C's write arrives");
    let peer_finding = Withheld {
        device: a.store.device(),
        witness: c.store.device(),
        reason: "peer-view".into(),
    };
    assert_eq!(r.withheld, std::slice::from_ref(&peer_finding));
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v5"))
    );
    plan(&|p| p.hide_after = None);

    // Tampering stops: B's next round still sees the peer view, pulls the whole log again and
    // catches up; then every device converges and nobody suspects anything.
    let r = b.engine.sync().await.expect("sync");
    assert_eq!(r.withheld, [peer_finding]);
    assert!(r.refetched);
    assert_eq!(
        b.store.get("notes", "k").await.expect("get"),
        Some(json!("v6"))
    );
    for d in [&a, &b, &c] {
        let r = d.engine.sync().await.expect("sync");
        assert!(r.withheld.is_empty() && !r.refetched, "{r:?}");
    }
    assert_eq!(b.snapshot("notes").await, a.snapshot("notes").await);
    assert_eq!(c.snapshot("notes").await, a.snapshot("notes").await);
    server.stop().await.expect("stop");
}

/// A server that forces a full re-sync (`410`) and leaves records out of the walk would, if the
/// device believed it, make the device delete them in the sweep that ends the re-sync. The
/// sweep is checked against the heads first: a record hidden while a head vouching for it is
/// served (`state-digest`), or this device's own newest head left out (`own-head`), stops the
/// sweep; nothing is deleted, nothing is pushed, and the next round walks again. Once the
/// server is honest the walk checks out and the re-sync completes.
#[tokio::test]
async fn a_forced_resync_cannot_make_a_device_delete_what_the_server_hides() {
    let Rig {
        dir: _dir,
        server,
        url: _,
        token: _,
        a,
        b,
        evil,
        eb,
    } = rig().await;
    let plan = |f: &dyn Fn(&mut Plan)| f(&mut evil.plan.lock().expect("plan"));

    for (k, v) in [("k1", "a"), ("k2", "b")] {
        a.store.put("notes", k, &json!(v)).await.expect("put");
    }
    a.engine.sync().await.expect("sync");
    assert_eq!(eb.sync().await.expect("sync b").applied, 2);
    b.store
        .put("notes", "mine", &json!("b's"))
        .await
        .expect("put");
    eb.sync().await.expect("sync b");
    // A sees B's write and head, then pushes a head of its own that names them.
    a.engine.sync().await.expect("sync");
    a.store.put("notes", "k3", &json!("c")).await.expect("put");
    a.engine.sync().await.expect("sync");
    let r = eb.sync().await.expect("sync b");
    assert_eq!(r.applied, 1);
    assert_eq!(r.digests_compared, 1, "B's view is A's: {r:?}");
    let snapshot = |d: &Device| {
        let store = d.store.clone();
        async move {
            store
                .scan("notes", None, 100)
                .await
                .expect("scan")
                .into_iter()
                .collect::<std::collections::BTreeMap<_, _>>()
        }
    };
    let all = snapshot(&b).await;
    assert_eq!(all.len(), 4);

    // (1) "History collected", and k2 left out of the walk while A's head, whose digest
    // counts k2, is served.
    let k2 = b.store.record_id("notes", "k2").expect("id");
    plan(&|p| {
        p.gone = true;
        p.hide_record = Some(k2);
    });
    let r = eb.sync().await.expect("sync b");
    assert!(r.resynced, "{r:?}");
    assert_eq!(r.discarded, 0, "nothing deleted: {r:?}");
    assert_eq!(
        r.withheld,
        [Withheld {
            device: a.store.device(),
            witness: a.store.device(),
            reason: "state-digest".into(),
        }]
    );
    assert_eq!(
        b.store.get("notes", "k2").await.expect("get"),
        Some(json!("b")),
        "the hidden record is kept"
    );

    // (2) The re-sync is still underway; this time every envelope of B's is left out, its own
    // newest head included. B has an offline write meanwhile: it is not pushed while the walk
    // does not check out.
    plan(&|p| {
        p.hide_record = None;
        p.hide_after = Some((b.store.device(), 0));
    });
    b.store
        .put("notes", "offline", &json!("waits"))
        .await
        .expect("put");
    let r = eb.sync().await.expect("sync b");
    assert!(r.resynced, "{r:?}");
    assert_eq!((r.discarded, r.pushed), (0, 0), "{r:?}");
    assert_eq!(
        r.withheld,
        [Withheld {
            device: b.store.device(),
            witness: b.store.device(),
            reason: "own-head".into(),
        }]
    );
    assert_eq!(
        b.store.get("notes", "mine").await.expect("get"),
        Some(json!("b's")),
        "B's own record is kept"
    );
    assert_eq!(b.store.storage().outbox_len().await.expect("outbox"), 1);

    // (3) Served honestly, the walk checks out: the re-sync completes, removing nothing, and
    // the offline write goes out. The round after is an ordinary one.
    plan(&|p| p.hide_after = None);
    let r = eb.sync().await.expect("sync b");
    assert!(r.resynced && r.withheld.is_empty(), "{r:?}");
    assert_eq!((r.discarded, r.pushed), (0, 1), "{r:?}");
    let mut expected = all.clone();
    expected.insert("offline".to_owned(), json!("waits"));
    assert_eq!(snapshot(&b).await, expected);
    a.engine.sync().await.expect("sync");
    let r = eb.sync().await.expect("sync b");
    assert!(!r.resynced && r.withheld.is_empty(), "{r:?}");
    assert_eq!(snapshot(&a).await, expected);
    server.stop().await.expect("stop");
}
