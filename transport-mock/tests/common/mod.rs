//! Devices for sync tests: storages that survive "crashes" (the store is dropped and reopened
//! on the same storage: in memory, or a real SQLite file reopened from disk), skewable clocks,
//! seeded randomness, one relay.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use backend_sqlite::SqliteStorage;
use crypto_orion::OrionCipher;
use sync_core::cipher::{NONCE_LEN, SALT_LEN};
use sync_core::{
    Batch, Capabilities, Cipher, CollectionId, KdfCost, MemoryRelay, MemoryStorage, OpenOptions,
    OutboxEntry, RecordId, RelayConfig, Result, RowState, ScanPos, SecretKey, Storage, Store,
    StoredRecord, SyncConfig, SyncEngine, Transport,
};
use transport_mock::{Faults, MockTransport};

/// The Orion cipher with its random bytes (device ids, root keys, nonces, retry jitter) drawn
/// from a seeded generator instead of the operating system, so a simulation seed replays
/// exactly. One per device, kept across its restarts (like the OS's generator, it does not
/// repeat itself after a crash). Test-only: never use predictable randomness for real keys.
#[derive(Debug)]
pub struct SeededCipher {
    rng: Mutex<fastrand::Rng>,
}

impl SeededCipher {
    pub fn shared(seed: u64) -> Arc<dyn Cipher> {
        Arc::new(Self {
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5eed_c1fe_u64)),
        })
    }
}

impl Cipher for SeededCipher {
    fn name(&self) -> &'static str {
        OrionCipher.name()
    }
    fn aead_seal(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> sync_core::Result<Vec<u8>> {
        OrionCipher.aead_seal(key, nonce, aad, plaintext)
    }
    fn aead_open(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> sync_core::Result<Vec<u8>> {
        OrionCipher.aead_open(key, nonce, aad, ciphertext)
    }
    fn password_kdf(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        cost: KdfCost,
    ) -> sync_core::Result<SecretKey> {
        OrionCipher.password_kdf(passphrase, salt, cost)
    }
    fn keyed_hash(&self, key: &SecretKey, parts: &[&[u8]]) -> sync_core::Result<[u8; 32]> {
        OrionCipher.keyed_hash(key, parts)
    }
    fn fill_random(&self, buf: &mut [u8]) -> sync_core::Result<()> {
        let mut rng = self
            .rng
            .lock()
            .map_err(|_| sync_core::Error::internal("rng lock"))?;
        buf.iter_mut().for_each(|b| *b = rng.u8(..));
        Ok(())
    }
    fn x25519_public(&self, secret: &SecretKey) -> sync_core::Result<[u8; 32]> {
        OrionCipher.x25519_public(secret)
    }
    fn x25519(&self, secret: &SecretKey, public: &[u8; 32]) -> sync_core::Result<SecretKey> {
        OrionCipher.x25519(secret, public)
    }
}

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
    pub storage: Arc<dyn Storage>,
    pub store: Store,
    pub engine: SyncEngine,
    pub transport: Arc<MockTransport>,
    pub skew: Arc<AtomicU64>,
    world: World,
    config: SyncConfig,
    cipher: Arc<dyn Cipher>,
    /// The SQLite file, for a device on disk.
    file: Option<PathBuf>,
}

pub fn options(world: &World, skew: &Arc<AtomicU64>) -> OpenOptions {
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

async fn open_storage(file: Option<&PathBuf>) -> Arc<dyn Storage> {
    match file {
        Some(path) => Arc::new(SqliteStorage::open(path, true).await.expect("sqlite")),
        None => Arc::new(MemoryStorage::new()),
    }
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

    /// A device in memory; its randomness and faults are drawn from `seed`.
    pub async fn make(
        world: &World,
        faults: Faults,
        seed: u64,
        backup: Option<Vec<u8>>,
        config: SyncConfig,
    ) -> Device {
        Self::make_in(world, faults, seed, backup, config, None).await
    }

    /// A device whose storage is `file` (a real SQLite file, reopened from disk on restart),
    /// or memory.
    pub async fn make_in(
        world: &World,
        faults: Faults,
        seed: u64,
        backup: Option<Vec<u8>>,
        config: SyncConfig,
        file: Option<PathBuf>,
    ) -> Device {
        let storage = open_storage(file.as_ref()).await;
        let cipher = SeededCipher::shared(seed);
        let skew = Arc::new(AtomicU64::new(0));
        let opts = options(world, &skew);
        let store = match backup {
            Some(b) => Store::join(storage.clone(), cipher.clone(), opts, &b)
                .await
                .expect("join"),
            None => Store::open(storage.clone(), cipher.clone(), opts)
                .await
                .expect("create"),
        };
        // Joining registers the device with the server (as `hearth join` does over HTTP), so
        // tombstone collection waits for it from the start.
        world
            .relay
            .register_device(store.space(), store.device())
            .expect("register device");
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
            cipher,
            file,
        }
    }

    /// Simulates a crash and restart: everything in memory is lost except the storage (a
    /// device on disk reopens its SQLite file; the old handles are dropped unused).
    pub async fn restart(&mut self) {
        let storage = match &self.file {
            Some(_) => open_storage(self.file.as_ref()).await,
            None => self.storage.clone(),
        };
        let store = Store::open(
            storage.clone(),
            self.cipher.clone(),
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
        self.storage = storage;
    }

    /// Every live record (outside hearth's own local collections) as (collection, key, value).
    pub async fn snapshot(&self) -> Vec<(String, String, serde_json::Value)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let rows = self
                .storage
                .scan_all(after.as_ref(), 256)
                .await
                .expect("scan_all");
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

/// A record commit (counted from 1), the `Notify` it wakes, and the flag it waits for.
pub type Gate = (
    usize,
    Arc<tokio::sync::Notify>,
    Arc<std::sync::atomic::AtomicBool>,
);

/// Memory storage that counts the commits that store records and the reads of row states,
/// and can fail one of those commits, or make each of them wait for the runtime once.
#[derive(Debug, Default)]
pub struct Counting {
    inner: MemoryStorage,
    pub record_commits: AtomicUsize,
    pub state_reads: AtomicUsize,
    /// The record commit (counted from 1 across this storage's life) that fails; 0 for none.
    pub fail_record_commit: AtomicUsize,
    /// Whether that commit is applied before it fails (its answer lost, as when the process
    /// cannot tell whether a commit landed).
    pub fail_after_applying: std::sync::atomic::AtomicBool,
    /// Record commits yield to the runtime before they apply, as a real database's do.
    pub slow_commits: std::sync::atomic::AtomicBool,
    /// A record commit (counted from 1) that, before it applies, wakes the first `Notify` and
    /// then yields to the runtime until the flag is set.
    pub gate: Mutex<Option<Gate>>,
}

#[async_trait]
impl Storage for Counting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>> {
        self.inner.get(id).await
    }
    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        self.inner.get_many(ids).await
    }
    async fn get_states(&self, ids: &[RecordId]) -> Result<Vec<Option<RowState>>> {
        self.state_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_states(ids).await
    }
    async fn scan(
        &self,
        collection: &CollectionId,
        after: Option<ScanPos>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<(ScanPos, StoredRecord)>> {
        self.inner
            .scan(collection, after, limit, include_deleted)
            .await
    }
    async fn scan_all(&self, after: Option<&RecordId>, limit: usize) -> Result<Vec<StoredRecord>> {
        self.inner.scan_all(after, limit).await
    }
    async fn outbox(&self, after_seq: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        self.inner.outbox(after_seq, limit).await
    }
    async fn outbox_len(&self) -> Result<u64> {
        self.inner.outbox_len().await
    }
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.meta_get(key).await
    }
    async fn commit(&self, batch: Batch) -> Result<()> {
        use std::sync::atomic::Ordering::SeqCst;
        if batch.puts.is_empty() {
            return self.inner.commit(batch).await;
        }
        if self.slow_commits.load(SeqCst) {
            tokio::task::yield_now().await;
        }
        let n = self.record_commits.load(SeqCst) + 1;
        let gate = {
            let mut gate = self.gate.lock().unwrap_or_else(|e| e.into_inner());
            match gate.as_ref() {
                Some((at, ..)) if *at == n => gate.take(),
                _ => None,
            }
        };
        if let Some((_, wake, open)) = gate {
            wake.notify_one();
            while !open.load(SeqCst) {
                tokio::task::yield_now().await;
            }
        }
        if n == self.fail_record_commit.load(SeqCst) {
            self.fail_record_commit.store(0, SeqCst);
            if self.fail_after_applying.load(SeqCst) {
                self.inner.commit(batch).await?;
                self.record_commits.fetch_add(1, SeqCst);
            }
            return Err(sync_core::Error::new(sync_core::ErrorKind::Io, "disk error").temporary());
        }
        self.inner.commit(batch).await?;
        self.record_commits.fetch_add(1, SeqCst);
        Ok(())
    }
}
