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
    let main_len = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    // The checkpointer runs beside the pushes; give its last request time to finish.
    for _ in 0..200 {
        if main_len() >= 32 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        main_len() >= 32 << 20,
        "the database file holds {} bytes after 48 MiB of pushes: nothing was checkpointed",
        main_len()
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
}
