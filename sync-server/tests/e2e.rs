//! End to end on 127.0.0.1: the real server (in process, random port, SQLite file), devices on
//! real SQLite files with the orion cipher, syncing through the HTTP transport.

mod common;

use std::time::Duration;

use common::{
    Device, PASS, Proxy, eventually, server_and_two_devices, sqlite_server, sqlite_server_at,
};
use serde_json::json;
use sync_core::{ErrorKind, WriteBatch};
use transport_http::HttpTransport;

#[tokio::test]
async fn three_devices_sync_offline_edits_conflicts_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    let mut batch = WriteBatch::new();
    for i in 0..50 {
        batch
            .put("notes", format!("n{i:02}"), &json!({"i": i}))
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    assert_eq!(a.engine.sync().await.expect("sync a").pushed, 50);

    // Two more devices join with only the passphrase and the account token.
    let b = Device::join(&dir.path().join("b.db"), &url, &account.token, PASS)
        .await
        .expect("b joins");
    let c = Device::join(&dir.path().join("c.db"), &url, &account.token, PASS)
        .await
        .expect("c joins");
    assert_eq!(b.store.space(), a.store.space());
    for d in [&b, &c] {
        let r = d.engine.sync().await.expect("initial sync");
        assert_eq!((r.pulled, r.applied), (50, 50));
    }

    // Offline: B edits n01, C edits n01 too (a conflict) and deletes n02, A adds n50.
    b.store
        .put("notes", "n01", &json!({"i": 1, "by": "b"}))
        .await
        .expect("put");
    c.store
        .put("notes", "n01", &json!({"i": 1, "by": "c"}))
        .await
        .expect("put");
    assert!(c.store.delete("notes", "n02").await.expect("delete"));
    a.store
        .put("notes", "n50", &json!({"i": 50}))
        .await
        .expect("put");
    let mut resolved = 0;
    for _ in 0..3 {
        for d in [&a, &b, &c] {
            resolved += d.engine.sync().await.expect("sync").conflicts_resolved;
        }
    }
    assert!(resolved >= 1, "the concurrent edit was resolved");
    let snap = a.snapshot("notes").await;
    assert_eq!(snap.len(), 50, "50 + n50 - n02");
    assert_eq!(snap, b.snapshot("notes").await);
    assert_eq!(snap, c.snapshot("notes").await);
    assert!(
        !snap.iter().any(|(k, _)| k == "n02"),
        "the delete reached everyone"
    );
    let n01 = &snap.iter().find(|(k, _)| k == "n01").expect("n01").1;
    assert!(n01["by"] == "b" || n01["by"] == "c", "{n01}");

    // The server holds one envelope per live record (superseded versions compacted) plus
    // tombstones not yet collected, and each device's newest head.
    let stats = server
        .store()
        .space_stats(a.store.space())
        .await
        .expect("stats");
    assert_eq!(stats.envelopes - stats.tombstones, 50 + 3, "{stats:?}");
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_wrong_passphrase_or_another_key_is_refused_before_uploading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    a.store.put("notes", "k", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");

    let err = Device::join(
        &dir.path().join("b.db"),
        &url,
        &account.token,
        "wrong passphrase",
    )
    .await
    .err()
    .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongPassphrase), "the client refuses");

    // A store with its own root key claiming the same space: the server refuses it too.
    let stranger = Device::first(&dir.path().join("s.db"), &url, &account.token).await;
    let mut forged = stranger.from();
    forged.space = a.store.space();
    let err = stranger
        .http
        .register_device(&forged)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongKey), "409 maps to WrongKey");
    let push = sync_core::PushRequest {
        from: forged,
        envelopes: vec![sync_core::OutgoingEnvelope {
            record: sync_core::RecordId([7; 32]),
            seq: 1,
            supersedes: vec![],
            tombstone: false,
            envelope: vec![1; 64],
        }],
        settle: None,
    };
    let err = sync_core::Transport::push(&stranger.http, push)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongKey));
    let stats = server
        .store()
        .space_stats(a.store.space())
        .await
        .expect("stats");
    assert_eq!(
        stats.envelopes, 2,
        "nothing uploaded (A's record and head only)"
    );
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_server_restart_mid_sync_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("server.db");
    let (server, _, a, b) = server_and_two_devices(dir.path()).await;
    let addr = server.local_addr();
    let mut batch = WriteBatch::new();
    for i in 0..4000 {
        batch
            .put(
                "notes",
                format!("n{i:04}"),
                &json!({"i": i, "pad": "x".repeat(200)}),
            )
            .expect("put");
    }
    a.store.write(batch).await.expect("write");

    // Stop the server once A holds the acknowledgement of a first push batch (1000 of 4000;
    // pushes are pipelined, so the next batch is in flight by then).
    let a_store = a.store.clone();
    let syncing = tokio::spawn(async move {
        let r = a.engine.sync().await;
        (a, r)
    });
    let mut acknowledged = false;
    for _ in 0..4000 {
        if a_store.info().await.expect("info").pending < 4000 {
            acknowledged = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(acknowledged, "a first push was acknowledged");
    server.stop().await.expect("stop");
    let (a, r) = syncing.await.expect("task");
    let err = r.expect_err("the server went away mid-sync");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
    let pending = a.store.info().await.expect("info").pending;
    assert!(
        pending > 0 && pending < 4000,
        "partly pushed: {pending} ({err})"
    );

    // While it is down: a temporary error, nothing else.
    let err = a.engine.sync().await.expect_err("down");
    assert!(err.is_temporary(), "{err}");

    // Same address, same database file.
    let server = sqlite_server_at(addr, &db).await;
    a.engine.sync().await.expect("sync after restart");
    assert_eq!(a.store.info().await.expect("info").pending, 0);
    let r = b.engine.sync().await.expect("b syncs");
    assert_eq!(
        (r.pulled, r.applied),
        (4000, 4000),
        "nothing lost, nothing twice"
    );
    let stats = server
        .store()
        .space_stats(a.store.space())
        .await
        .expect("stats");
    assert_eq!(
        stats.envelopes,
        4000 + 1,
        "stored once each (and A's newest head)"
    );
    assert_eq!(b.snapshot("notes").await, a.snapshot("notes").await);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_client_killed_mid_push_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a_db = dir.path().join("a.db");
    let a = Device::first(&a_db, &url, &account.token).await;
    let space = a.store.space();
    let mut batch = WriteBatch::new();
    for i in 0..300 {
        batch
            .put("notes", format!("n{i:03}"), &json!(i))
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    drop(a);

    // 1. Killed halfway through sending the push: the server gets a truncated body and
    //    stores nothing.
    let proxy = Proxy::start(server.local_addr()).await;
    proxy.stall_requests_after(5000);
    let a = Device::reopen(&a_db, &proxy.url(), &account.token).await;
    let task = tokio::spawn(async move { a.engine.sync().await });
    let forwarded = proxy.forwarded.clone();
    // The pull went through; the push is stuck after its first bytes.
    eventually("a push cut short", || {
        forwarded.load(std::sync::atomic::Ordering::SeqCst) >= 5000
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    let stats = server.store().space_stats(space).await.expect("stats");
    assert_eq!(stats.envelopes, 0, "a half-sent push stores nothing");

    // 2. Killed after the server applied the push but before the answer arrived.
    let proxy = Proxy::start(server.local_addr()).await;
    proxy.lose_push_responses(true);
    let a = Device::reopen(&a_db, &proxy.url(), &account.token).await;
    let task = tokio::spawn(async move { a.engine.sync().await });
    let store = server.store().clone();
    // The first push request (the transport splits a push at 32 KiB in these tests) is
    // applied by the server; its answer never arrives. Then the client is killed.
    for _ in 0..2000 {
        if store.space_stats(space).await.expect("stats").envelopes > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    let applied = store.space_stats(space).await.expect("stats").envelopes;
    assert!(
        applied > 0 && applied < 300,
        "the server applied a push the client never heard about: {applied}"
    );

    // The restarted client learns what the server applied by settling and pushes the rest;
    // the server stores nothing twice.
    let a = Device::reopen(&a_db, &url, &account.token).await;
    assert_eq!(
        a.store.info().await.expect("info").pending,
        300,
        "never acknowledged"
    );
    let r = a.engine.sync().await.expect("sync");
    assert_eq!(
        r.settled, applied as u64,
        "what the server applied is acknowledged from its settle answer"
    );
    assert_eq!(r.pushed + r.settled, 300, "{r:?}");
    assert_eq!(a.store.info().await.expect("info").pending, 0);
    assert_eq!(
        store.space_stats(space).await.expect("stats").envelopes,
        300 + 1, // and A's newest head
    );
    let b = Device::join(&dir.path().join("b.db"), &url, &account.token, PASS)
        .await
        .expect("join");
    let r = b.engine.sync().await.expect("sync");
    assert_eq!(r.applied, 300);
    assert_eq!(b.snapshot("notes").await, a.snapshot("notes").await);
    server.stop().await.expect("stop");
}
