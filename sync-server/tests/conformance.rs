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
