//! Both server stores pass the relay conformance suite of sync-core (the same one the
//! reference `MemoryRelay` passes), on a real SQLite file and a real PostgreSQL.

mod common;

use std::sync::Arc;

use sync_core::Relay;
use sync_server::{AccountId, AccountRelay, ServerStore, SqliteStore};

#[tokio::test]
async fn sqlite_store_passes_the_relay_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicU64::new(0);
    sync_core::testkit::relay_suite(|config, clock| {
        let path = dir.path().join(format!(
            "server-{}.db",
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        async move {
            let store: Arc<dyn ServerStore> =
                Arc::new(SqliteStore::open(&path, config, clock).await?);
            Ok(Arc::new(AccountRelay::new(store, AccountId([1; 16]))) as Arc<dyn Relay>)
        }
    })
    .await;
}

#[tokio::test]
async fn postgres_store_passes_the_relay_suite() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    sync_core::testkit::relay_suite(|config, clock| {
        let url = url.clone();
        async move {
            let store = common::postgres_store(&url, config, clock).await;
            Ok(Arc::new(AccountRelay::new(store, AccountId([1; 16]))) as Arc<dyn Relay>)
        }
    })
    .await;
}

/// The SQLite store checkpoints beside its pushes: 48 MiB of envelopes, in pushes of 1 MiB,
/// stay below the writer's own checkpoint (128 MiB of WAL), so only the background
/// checkpointer can have copied them into the database file. Everything pulls back, also
/// after reopening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_checkpoints_beside_its_pushes() {
    use sync_core::{
        DeviceId, OutgoingEnvelope, PullRequest, PushRequest, RecordId, RelayConfig, SpaceId,
        SpaceRef,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("server.db");
    let clock: sync_core::store::WallClock = Arc::new(|| 1_700_000_000_000);
    let open = || SqliteStore::open(&path, RelayConfig::default(), clock.clone());
    let store = open().await.expect("open");
    let account = AccountId([7; 16]);
    store
        .create_account(account, [1; 32])
        .await
        .expect("account");
    let from = SpaceRef {
        space: SpaceId([2; 16]),
        device: DeviceId([3; 16]),
        fingerprint: [4; 32],
    };
    store
        .register_space(account, from.space, from.fingerprint)
        .await
        .expect("space");
    store.register_device(account, &from).await.expect("device");
    let (per_push, pushes) = (1024u64, 48u64);
    for p in 0..pushes {
        let envelopes = (0..per_push)
            .map(|i| {
                let n = p * per_push + i + 1;
                let mut record = [0u8; 32];
                record[..8].copy_from_slice(&n.to_be_bytes());
                OutgoingEnvelope {
                    record: RecordId(record),
                    seq: n,
                    supersedes: Vec::new(),
                    tombstone: false,
                    envelope: vec![(n % 251) as u8; 1024],
                }
            })
            .collect();
        store
            .push(account, &PushRequest::new(from, envelopes))
            .await
            .expect("push");
    }
    // The checkpointer runs beside the pushes; give its last request time to finish.
    let main_len = sync_core::testkit::file_grown_to(&path, 32 << 20).await;
    assert!(
        main_len >= 32 << 20,
        "the database file holds {main_len} bytes after 48 MiB of pushes: nothing was checkpointed"
    );
    store.close().await;
    let store = open().await.expect("reopen");
    let reader = SpaceRef {
        device: DeviceId([5; 16]),
        ..from
    };
    store
        .register_device(account, &reader)
        .await
        .expect("reader");
    let (mut cursor, mut seen) = (0, 0u64);
    loop {
        let page = store
            .pull(
                account,
                &PullRequest {
                    from: reader,
                    cursor,
                    limit: 4000,
                    include_own: false,
                },
            )
            .await
            .expect("pull");
        for e in &page.envelopes {
            seen += 1;
            let n = u64::from_be_bytes(e.record.0[..8].try_into().expect("8 bytes"));
            assert_eq!(e.envelope, vec![(n % 251) as u8; 1024]);
        }
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, per_push * pushes);
    store.close().await;
    // A new server file has the relay's page size (bytes 16-17 of the SQLite header).
    let header = std::fs::read(&path).expect("read the database file");
    let page_size = u32::from(u16::from_be_bytes([header[16], header[17]]));
    assert_eq!(page_size, sync_server::store::SQLITE_PAGE_SIZE);
}

/// Pulls `from` to the end of the log, then once more from there, which records its cursor
/// at the end (a pull tells the server what the device has applied up to its cursor).
async fn pull_to_end(store: &dyn ServerStore, account: AccountId, from: sync_core::SpaceRef) {
    let mut cursor = 0;
    loop {
        let page = store
            .pull(
                account,
                &sync_core::PullRequest {
                    from,
                    cursor,
                    limit: 100,
                    include_own: false,
                },
            )
            .await
            .expect("pull");
        let done = !page.more && page.next_cursor == cursor;
        cursor = page.next_cursor;
        if done {
            return;
        }
    }
}

/// A device that registered and never pulled holds back the collection of tombstones (within
/// the horizon), on both stores: the relay suite cannot see this, since registering a device
/// is the server's own step, not the relay trait's.
async fn a_registered_device_that_never_pulled_holds_tombstones(store: Arc<dyn ServerStore>) {
    use sync_core::{DeviceId, OutgoingEnvelope, PushRequest, RecordId, SpaceId, SpaceRef};
    let account = AccountId([8; 16]);
    store
        .create_account(account, [1; 32])
        .await
        .expect("account");
    let device = |d: u8| SpaceRef {
        space: SpaceId([9; 16]),
        device: DeviceId([d; 16]),
        fingerprint: [4; 32],
    };
    let (a, b, silent) = (device(1), device(2), device(3));
    store
        .register_space(account, a.space, a.fingerprint)
        .await
        .expect("space");
    for d in [a, b, silent] {
        store.register_device(account, &d).await.expect("device");
    }
    let envelope = |seq, supersedes, tombstone| OutgoingEnvelope {
        record: RecordId([5; 32]),
        seq,
        supersedes,
        tombstone,
        envelope: vec![7; 48],
    };
    let written = store
        .push(
            account,
            &PushRequest::new(a, vec![envelope(1, Vec::new(), false)]),
        )
        .await
        .expect("write");
    let stored = written.assigned[0].1;
    store
        .push(
            account,
            &PushRequest::new(a, vec![envelope(2, vec![stored], true)]),
        )
        .await
        .expect("delete");
    let tombstones = || async { store.space_stats(a.space).await.expect("stats").tombstones };
    assert_eq!(tombstones().await, 1);
    pull_to_end(store.as_ref(), account, a).await;
    pull_to_end(store.as_ref(), account, b).await;
    assert_eq!(
        tombstones().await,
        1,
        "kept: the silent device has not seen the delete"
    );
    pull_to_end(store.as_ref(), account, silent).await;
    assert_eq!(tombstones().await, 0, "collected once every device saw it");
    store.close().await;
}

#[tokio::test]
async fn sqlite_store_keeps_tombstones_for_a_device_that_never_pulled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock: sync_core::store::WallClock = Arc::new(|| 1_700_000_000_000);
    let store = SqliteStore::open(
        &dir.path().join("server.db"),
        sync_core::RelayConfig::default(),
        clock,
    )
    .await
    .expect("open");
    a_registered_device_that_never_pulled_holds_tombstones(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_store_keeps_tombstones_for_a_device_that_never_pulled() {
    let Some(url) = common::postgres_url() else {
        return;
    };
    let clock: sync_core::store::WallClock = Arc::new(|| 1_700_000_000_000);
    let store = common::postgres_store(&url, sync_core::RelayConfig::default(), clock).await;
    a_registered_device_that_never_pulled_holds_tombstones(store).await;
}
