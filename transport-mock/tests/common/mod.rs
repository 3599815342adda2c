//! Devices for sync tests: in-memory storages that survive "crashes" (the store is dropped and
//! reopened on the same storage), skewable clocks, one relay.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crypto_orion::OrionCipher;
use sync_core::{
    KdfCost, MemoryRelay, MemoryStorage, OpenOptions, RelayConfig, Store, SyncConfig, SyncEngine,
    Transport,
};
use transport_mock::{Faults, MockTransport};

pub const PASS: &str = "correct horse battery staple";
pub const DAY: u64 = 24 * 3600 * 1000;
pub const T0: u64 = 1_767_225_600_000; // 2026-01-01

/// Shared simulated time: the relay's clock and each device's (with its own skew).
#[derive(Clone, Debug)]
pub struct World {
    pub now: Arc<AtomicU64>,
    pub relay: MemoryRelay,
}

impl World {
    pub fn new() -> Self {
        Self::with_config(RelayConfig::default())
    }

    pub fn with_config(config: RelayConfig) -> Self {
        let now = Arc::new(AtomicU64::new(T0));
        let n = now.clone();
        let relay = MemoryRelay::new(config).with_clock(Arc::new(move || n.load(Ordering::SeqCst)));
        Self { now, relay }
    }

    pub fn advance(&self, millis: u64) {
        self.now.fetch_add(millis, Ordering::SeqCst);
    }
}

pub struct Device {
    pub storage: Arc<MemoryStorage>,
    pub store: Store,
    pub engine: SyncEngine,
    pub transport: Arc<MockTransport>,
    pub skew: Arc<AtomicU64>,
    world: World,
    config: SyncConfig,
}

fn options(world: &World, skew: &Arc<AtomicU64>) -> OpenOptions {
    let now = world.now.clone();
    let skew = skew.clone();
    OpenOptions::new(PASS)
        .create(true)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .clock(Arc::new(move || {
            now.load(Ordering::SeqCst)
                .wrapping_add(skew.load(Ordering::SeqCst))
        }))
}

impl Device {
    /// The first device of a new space.
    pub async fn first(world: &World, faults: Faults, seed: u64) -> Device {
        Self::make(world, faults, seed, None, SyncConfig::default()).await
    }

    /// Another device joining `other`'s space with the passphrase.
    pub async fn join(world: &World, other: &Store, faults: Faults, seed: u64) -> Device {
        let backup = other.key_backup().expect("backup");
        Self::make(world, faults, seed, Some(backup), SyncConfig::default()).await
    }

    pub async fn make(
        world: &World,
        faults: Faults,
        seed: u64,
        backup: Option<Vec<u8>>,
        config: SyncConfig,
    ) -> Device {
        let storage = Arc::new(MemoryStorage::new());
        let skew = Arc::new(AtomicU64::new(0));
        let opts = options(world, &skew);
        let store = match backup {
            Some(b) => Store::join(storage.clone(), OrionCipher::shared(), opts, &b)
                .await
                .expect("join"),
            None => Store::open(storage.clone(), OrionCipher::shared(), opts)
                .await
                .expect("create"),
        };
        let transport = Arc::new(MockTransport::with_faults(
            world.relay.clone(),
            faults,
            seed,
        ));
        let engine = SyncEngine::new(
            store.clone(),
            transport.clone() as Arc<dyn Transport>,
            config.clone(),
        );
        Device {
            storage,
            store,
            engine,
            transport,
            skew,
            world: world.clone(),
            config,
        }
    }

    /// Simulates a crash and restart: everything in memory is lost except the storage.
    pub async fn restart(&mut self) {
        let store = Store::open(
            self.storage.clone(),
            OrionCipher::shared(),
            options(&self.world, &self.skew),
        )
        .await
        .expect("reopen");
        self.engine = SyncEngine::new(
            store.clone(),
            self.transport.clone() as Arc<dyn Transport>,
            self.config.clone(),
        );
        self.store = store;
    }

    /// Every live record (outside hearth's own local collections) as (collection, key, value).
    pub async fn snapshot(&self) -> Vec<(String, String, serde_json::Value)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .storage
                .as_ref()
                .scan_all_for_tests(after.as_ref(), 256)
                .await;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for r in rows {
                let rec = self.store.open_row(&r).expect("open row");
                if rec.collection.starts_with('_') {
                    continue;
                }
                if let Some(v) = rec.value {
                    out.push((rec.collection, rec.key, v));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }
}

/// `Storage::scan_all` through the trait, for snapshots.
pub trait ScanAll {
    fn scan_all_for_tests(
        &self,
        after: Option<&sync_core::RecordId>,
        limit: usize,
    ) -> impl std::future::Future<Output = Vec<sync_core::StoredRecord>>;
}

impl ScanAll for MemoryStorage {
    async fn scan_all_for_tests(
        &self,
        after: Option<&sync_core::RecordId>,
        limit: usize,
    ) -> Vec<sync_core::StoredRecord> {
        sync_core::Storage::scan_all(self, after, limit)
            .await
            .expect("scan_all")
    }
}
