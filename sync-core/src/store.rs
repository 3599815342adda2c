//! The `Store`: an encrypted record store over any [`Storage`] and [`Cipher`].
//!
//! Every write seals the record before it reaches storage, and goes through the change log that
//! sync reads (the outbox: device sequence number, HLC, version vector), in the same atomic
//! batch as the record itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cipher::{Cipher, KdfCost, Passphrase};
use crate::envelope::{MAX_VALUE_LEN, Padding, Payload, RecordKeys};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::model::{CollectionId, DeviceId, HlcClock, Record, RecordId, SpaceId, VersionVector};
use crate::registry;
use crate::storage::{Batch, Storage, StorageOptions, StoredRecord};

pub mod sidecar;

/// Metadata key of the key header.
pub const META_KEYRING: &str = "hearth.keyring";
/// Metadata key of the device state (device id, HLC, sequence counter).
pub const META_DEVICE: &str = "hearth.device";
/// Longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 256;
/// Longest record key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Rows read per storage call when scanning.
const SCAN_PAGE: usize = 512;

/// A source of wall-clock milliseconds. Replaceable for simulations with skewed clocks.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in milliseconds since the Unix epoch.
pub fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct DeviceState {
    device: DeviceId,
    clock: HlcClock,
    seq: u64,
}

/// How a store is opened.
#[derive(Clone)]
pub struct OpenOptions {
    passphrase: Passphrase,
    create: bool,
    kdf_cost: KdfCost,
    padding: Padding,
    clock: WallClock,
}

impl fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenOptions")
            .field("passphrase", &self.passphrase)
            .field("create", &self.create)
            .field("kdf_cost", &self.kdf_cost)
            .field("padding", &self.padding)
            .finish_non_exhaustive()
    }
}

impl OpenOptions {
    /// Options to open an existing store with `passphrase`.
    pub fn new(passphrase: impl Into<Passphrase>) -> Self {
        Self {
            passphrase: passphrase.into(),
            create: false,
            kdf_cost: KdfCost::DEFAULT,
            padding: Padding::default(),
            clock: Arc::new(system_millis),
        }
    }

    /// Create the store when it is empty.
    #[must_use]
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Argon2id cost for a new store (an existing one keeps the cost in its key header).
    #[must_use]
    pub fn kdf_cost(mut self, cost: KdfCost) -> Self {
        self.kdf_cost = cost;
        self
    }

    /// Padding of sealed payloads.
    #[must_use]
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    /// The wall clock the HLC reads (tests and simulations skew it).
    #[must_use]
    pub fn clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }
}

/// One write in a [`WriteBatch`].
#[derive(Clone)]
enum Op {
    Put {
        collection: String,
        key: String,
        json: Vec<u8>,
    },
    Delete {
        collection: String,
        key: String,
    },
}

/// Writes applied together, atomically: all become durable or none does.
#[derive(Clone, Default)]
pub struct WriteBatch {
    ops: Vec<Op>,
    local_only: bool,
}

impl fmt::Debug for WriteBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBatch")
            .field("ops", &self.ops.len())
            .finish()
    }
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of `value` (any `Serialize` type, stored as JSON).
    pub fn put(
        &mut self,
        collection: impl Into<String>,
        key: impl Into<String>,
        value: &impl Serialize,
    ) -> Result<&mut Self> {
        let json = serde_json::to_vec(value)
            .map_err(|e| Error::invalid("value is not representable as JSON").with_source(e))?;
        self.ops.push(Op::Put {
            collection: collection.into(),
            key: key.into(),
            json,
        });
        Ok(self)
    }

    /// Adds a put of raw JSON text, checked to be valid JSON.
    pub fn put_json(
        &mut self,
        collection: impl Into<String>,
        key: impl Into<String>,
        json: impl Into<Vec<u8>>,
    ) -> Result<&mut Self> {
        let json = json.into();
        serde_json::from_slice::<serde::de::IgnoredAny>(&json)
            .map_err(|e| Error::invalid("value is not valid JSON").with_source(e))?;
        self.ops.push(Op::Put {
            collection: collection.into(),
            key: key.into(),
            json,
        });
        Ok(self)
    }

    /// Adds a delete (a tombstone).
    pub fn delete(&mut self, collection: impl Into<String>, key: impl Into<String>) -> &mut Self {
        self.ops.push(Op::Delete {
            collection: collection.into(),
            key: key.into(),
        });
        self
    }

    /// Keeps these writes on this device: they are versioned and sealed like any other, but
    /// never enter the outbox, so sync never sends them (consent records, audit logs, caches).
    /// Use collections that only ever receive local-only writes.
    #[must_use]
    pub fn local_only(mut self) -> Self {
        self.local_only = true;
        self
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What a write did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteSummary {
    /// Records written (puts, and deletes of records that existed).
    pub written: usize,
    /// Deletes of records that did not exist (nothing written for them).
    pub skipped: usize,
    /// The device sequence number of the last write.
    pub last_seq: u64,
}

/// A page of records in storage order (by blind id), for walking a whole collection in bounded
/// memory.
#[derive(Debug, Default)]
pub struct Page {
    /// The live records of this page.
    pub records: Vec<Record>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<RecordId>,
}

/// Facts about an open store, safe to print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreInfo {
    /// The sync space.
    pub space: SpaceId,
    /// This device.
    pub device: DeviceId,
    /// Storage that made the store.
    pub storage: String,
    /// Cipher that made the store.
    pub cipher: String,
    /// Current key id.
    pub key_id: u32,
    /// Hex of the root-key fingerprint (first 8 bytes).
    pub fingerprint: String,
    /// Local writes not yet pushed.
    pub pending: u64,
    /// Last device sequence number issued.
    pub last_seq: u64,
}

struct Writer {
    state: DeviceState,
    encoded: Vec<u8>,
}

struct Inner {
    storage: Arc<dyn Storage>,
    cipher: Arc<dyn Cipher>,
    keyring: Keyring,
    keys: RecordKeys,
    device: DeviceId,
    padding: Padding,
    clock: WallClock,
    writer: tokio::sync::Mutex<Writer>,
}

/// An open, unlocked, encrypted record store. Cheap to clone; clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("storage", &self.inner.storage.name())
            .field("cipher", &self.inner.cipher.name())
            .field("space", &self.inner.keys.space)
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

fn validate_names(collection: &str, key: &str) -> Result<()> {
    if collection.is_empty() || collection.len() > MAX_COLLECTION_LEN {
        return Err(Error::invalid(format!(
            "collection names must be 1 to {MAX_COLLECTION_LEN} bytes"
        )));
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(Error::invalid(format!(
            "record keys must be 1 to {MAX_KEY_LEN} bytes"
        )));
    }
    Ok(())
}

fn encode_state(state: &DeviceState) -> Result<Vec<u8>> {
    postcard::to_stdvec(state).map_err(|e| Error::internal("device state encoding").with_source(e))
}

impl Store {
    /// A builder that picks storage and cipher by registry name.
    pub fn builder() -> StoreBuilder {
        StoreBuilder::default()
    }

    /// Opens (or, with [`OpenOptions::create`], creates) the store held by `storage`, unlocking
    /// it with the passphrase. A wrong passphrase is [`ErrorKind::WrongPassphrase`] and writes
    /// nothing; a store made by another storage or cipher is [`ErrorKind::Config`].
    ///
    /// The key header is read from the storage's metadata. A store encrypted at rest keeps it
    /// in a file next to its database instead ([`sidecar`]): open those with [`Store::builder`];
    /// here they are [`ErrorKind::Config`].
    pub async fn open(
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
    ) -> Result<Store> {
        let keyring_bytes = storage.meta_get(META_KEYRING).await?;
        if keyring_bytes.is_none() {
            sidecar::refuse_sidecar_store(storage.as_ref()).await?;
        }
        let (keyring, root, state) = match keyring_bytes {
            Some(bytes) => {
                let keyring = Keyring::decode(&bytes)?;
                if keyring.storage != storage.name() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "this store was made with storage '{}'; open it with that storage, not '{}'",
                            keyring.storage,
                            storage.name()
                        ),
                    ));
                }
                if keyring.cipher != cipher.name() {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "this store was made with cipher '{}'; open it with that cipher, not '{}'",
                            keyring.cipher,
                            cipher.name()
                        ),
                    ));
                }
                let root = keyring.unlock(cipher.as_ref(), &options.passphrase)?;
                let state_bytes = storage
                    .meta_get(META_DEVICE)
                    .await?
                    .ok_or_else(|| Error::corrupt("store has a key header but no device state"))?;
                let state: DeviceState = postcard::from_bytes(&state_bytes)?;
                (keyring, root, state)
            }
            None if options.create => {
                let mut space = [0u8; SpaceId::LEN];
                cipher.fill_random(&mut space)?;
                let mut device = [0u8; DeviceId::LEN];
                cipher.fill_random(&mut device)?;
                let device = DeviceId(device);
                let (keyring, root) = Keyring::create(
                    cipher.as_ref(),
                    &options.passphrase,
                    options.kdf_cost,
                    SpaceId(space),
                    storage.name(),
                )?;
                let state = DeviceState {
                    device,
                    clock: HlcClock::new(device),
                    seq: 0,
                };
                let batch = Batch {
                    guards: vec![(META_KEYRING.to_owned(), None)],
                    meta: vec![
                        (META_KEYRING.to_owned(), Some(keyring.encode()?)),
                        (META_DEVICE.to_owned(), Some(encode_state(&state)?)),
                    ],
                    ..Batch::default()
                };
                storage.commit(batch).await?;
                (keyring, root, state)
            }
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "no hearth store here; create one first",
                ));
            }
        };
        let keys = RecordKeys::derive(cipher.as_ref(), keyring.space, keyring.key_id, &root)?;
        drop(root);
        let encoded = encode_state(&state)?;
        Ok(Store {
            inner: Arc::new(Inner {
                device: state.device,
                storage,
                cipher,
                keyring,
                keys,
                padding: options.padding,
                clock: options.clock,
                writer: tokio::sync::Mutex::new(Writer { state, encoded }),
            }),
        })
    }

    /// The storage under this store.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The cipher of this store.
    pub fn cipher(&self) -> &Arc<dyn Cipher> {
        &self.inner.cipher
    }

    /// This device's id.
    pub fn device(&self) -> DeviceId {
        self.inner.device
    }

    /// The sync space.
    pub fn space(&self) -> SpaceId {
        self.inner.keys.space
    }

    /// Facts about the store, safe to print.
    pub async fn info(&self) -> Result<StoreInfo> {
        let w = self.inner.writer.lock().await;
        Ok(StoreInfo {
            space: self.inner.keys.space,
            device: self.inner.device,
            storage: self.inner.keyring.storage.clone(),
            cipher: self.inner.keyring.cipher.clone(),
            key_id: self.inner.keyring.key_id,
            fingerprint: hex8(&self.inner.keyring.fingerprint),
            pending: self.inner.storage.outbox_len().await?,
            last_seq: w.state.seq,
        })
    }

    /// The blind id of a record.
    pub fn record_id(&self, collection: &str, key: &str) -> Result<RecordId> {
        self.inner
            .keys
            .record_id(self.inner.cipher.as_ref(), collection, key)
    }

    /// The blind id of a collection.
    pub fn collection_id(&self, collection: &str) -> Result<CollectionId> {
        self.inner
            .keys
            .collection_id(self.inner.cipher.as_ref(), collection)
    }

    /// Puts `value` (stored as JSON) at `collection`/`key`.
    pub async fn put(
        &self,
        collection: &str,
        key: &str,
        value: &impl Serialize,
    ) -> Result<WriteSummary> {
        let mut b = WriteBatch::new();
        b.put(collection, key, value)?;
        self.write(b).await
    }

    /// Deletes `collection`/`key`, leaving a versioned tombstone. Returns false when there was
    /// nothing to delete.
    pub async fn delete(&self, collection: &str, key: &str) -> Result<bool> {
        let mut b = WriteBatch::new();
        b.delete(collection, key);
        Ok(self.write(b).await?.written == 1)
    }

    /// The live value at `collection`/`key`.
    pub async fn get(&self, collection: &str, key: &str) -> Result<Option<serde_json::Value>> {
        Ok(self
            .get_record(collection, key)
            .await?
            .and_then(|r| r.value))
    }

    /// The current version at `collection`/`key`, tombstones included.
    pub async fn get_record(&self, collection: &str, key: &str) -> Result<Option<Record>> {
        validate_names(collection, key)?;
        let id = self.record_id(collection, key)?;
        match self.inner.storage.get(&id).await? {
            Some(row) => Ok(Some(self.open_row(&row)?)),
            None => Ok(None),
        }
    }

    /// Opens a stored row into a record, checking it is the record its blind id says.
    pub fn open_row(&self, row: &StoredRecord) -> Result<Record> {
        let payload = self.open_envelope(&row.id, &row.envelope)?;
        record_from_payload(payload)
    }

    /// Opens an envelope sealed for `id` by any device of this space.
    pub fn open_envelope(&self, id: &RecordId, envelope: &[u8]) -> Result<Payload> {
        let cipher = self.inner.cipher.as_ref();
        let payload = self.inner.keys.open(cipher, id, envelope)?;
        // The blind id is bound by the AAD; check the names inside agree with it too.
        if self
            .inner
            .keys
            .record_id(cipher, &payload.collection, &payload.key)?
            != *id
        {
            return Err(Error::tampered());
        }
        Ok(payload)
    }

    /// Applies `batch` atomically: every write is sealed, versioned and logged for sync in one
    /// storage transaction.
    pub async fn write(&self, batch: WriteBatch) -> Result<WriteSummary> {
        let inner = &*self.inner;
        let cipher = inner.cipher.as_ref();
        let mut w = inner.writer.lock().await;
        let mut state = w.state.clone();
        let now = (inner.clock)();
        let mut staged: HashMap<RecordId, (VersionVector, bool)> = HashMap::new();
        let mut puts = Vec::with_capacity(batch.ops.len());
        let mut summary = WriteSummary::default();

        // Resolve names and blind ids first, then read every current version in one call.
        let batch_local = batch.local_only;
        let mut ops = Vec::with_capacity(batch.ops.len());
        for op in batch.ops {
            let (collection, key, json) = match op {
                Op::Put {
                    collection,
                    key,
                    json,
                } => (collection, key, Some(json)),
                Op::Delete { collection, key } => (collection, key, None),
            };
            validate_names(&collection, &key)?;
            if json.as_ref().is_some_and(|j| j.len() > MAX_VALUE_LEN) {
                return Err(Error::invalid(format!(
                    "record values are limited to {MAX_VALUE_LEN} bytes of JSON"
                )));
            }
            let id = inner.keys.record_id(cipher, &collection, &key)?;
            ops.push((id, collection, key, json));
        }
        let ids: Vec<RecordId> = ops.iter().map(|(id, ..)| *id).collect();
        let existing = inner.storage.get_many(&ids).await?;
        for ((id, collection, key, json), row) in ops.into_iter().zip(existing) {
            let current = match staged.get(&id) {
                Some((v, deleted)) => Some((v.clone(), *deleted)),
                None => match row {
                    Some(row) => {
                        let p = self.open_envelope(&id, &row.envelope)?;
                        Some((p.version, p.value.is_none()))
                    }
                    None => None,
                },
            };
            if json.is_none() && current.as_ref().is_none_or(|(_, deleted)| *deleted) {
                summary.skipped += 1;
                continue;
            }
            let mut version = current.map(|(v, _)| v).unwrap_or_default();
            state.seq += 1;
            version.set(state.device, state.seq);
            let hlc = state.clock.tick(now);
            let deleted = json.is_none();
            let payload = Payload {
                collection,
                key,
                value: json,
                version: version.clone(),
                hlc,
                origin: state.device,
                seq: state.seq,
            };
            let envelope = inner.keys.seal(cipher, &id, &payload, inner.padding)?;
            let collection_id = inner.keys.collection_id(cipher, &payload.collection)?;
            puts.push(StoredRecord {
                id,
                collection: collection_id,
                envelope,
                deleted,
                pending_seq: (!batch_local).then_some(state.seq),
            });
            staged.insert(id, (version, deleted));
            summary.written += 1;
        }
        summary.last_seq = state.seq;
        if puts.is_empty() {
            return Ok(summary);
        }
        let encoded = encode_state(&state)?;
        inner
            .storage
            .commit(Batch {
                guards: vec![(META_DEVICE.to_owned(), Some(w.encoded.clone()))],
                puts,
                meta: vec![(META_DEVICE.to_owned(), Some(encoded.clone()))],
                ..Batch::default()
            })
            .await?;
        w.state = state;
        w.encoded = encoded;
        Ok(summary)
    }

    /// Up to `limit` live records of `collection` whose keys start with `prefix`, in key order.
    ///
    /// Keys are stored blind, so storage cannot order or filter them: the scan walks the
    /// collection page by page, decrypting, and keeps only the `limit` smallest matching keys.
    /// Memory is bounded by `limit` plus one page; time is linear in the collection's size.
    pub async fn scan(
        &self,
        collection: &str,
        prefix: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, serde_json::Value)>> {
        let mut best: BTreeMap<String, serde_json::Value> = BTreeMap::new();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut after = None;
        loop {
            let page = self
                .scan_page(collection, after.as_ref(), SCAN_PAGE)
                .await?;
            for r in page.records {
                if prefix.is_some_and(|p| !r.key.starts_with(p)) {
                    continue;
                }
                if best.len() == limit {
                    match best.last_key_value() {
                        Some((last, _)) if r.key < *last => {
                            best.pop_last();
                        }
                        _ => continue,
                    }
                }
                if let Some(v) = r.value {
                    best.insert(r.key, v);
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(best.into_iter().collect())
    }

    /// One page of live records of `collection` in storage order, starting after `after`.
    pub async fn scan_page(
        &self,
        collection: &str,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Page> {
        validate_names(collection, "-")?;
        let cid = self.collection_id(collection)?;
        let limit = limit.max(1);
        let rows = self.inner.storage.scan(&cid, after, limit, false).await?;
        let next = if rows.len() == limit {
            rows.last().map(|r| r.id)
        } else {
            None
        };
        let records = rows
            .iter()
            .map(|row| self.open_row(row))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { records, next })
    }

    /// Checks the storage's integrity.
    pub async fn check(&self) -> Result<()> {
        self.inner.storage.check().await
    }

    /// Flushes and closes the storage.
    pub async fn close(self) -> Result<()> {
        let _w = self.inner.writer.lock().await;
        self.inner.storage.close().await
    }
}

fn record_from_payload(p: Payload) -> Result<Record> {
    let value = match p.value {
        Some(json) => Some(
            serde_json::from_slice(&json)
                .map_err(|e| Error::corrupt("record value is not valid JSON").with_source(e))?,
        ),
        None => None,
    };
    Ok(Record {
        collection: p.collection,
        key: p.key,
        value,
        version: p.version,
        hlc: p.hlc,
    })
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Builds a [`Store`] from registry names. Defaults: the first compiled-in storage of
/// `sqlite`, `sqlcipher`, `memory`, and the first cipher of `orion`, `sodium`.
#[derive(Debug, Default)]
pub struct StoreBuilder {
    path: Option<PathBuf>,
    passphrase: Option<Passphrase>,
    storage: Option<String>,
    cipher: Option<String>,
    create: Option<bool>,
    kdf_cost: Option<KdfCost>,
    padding: Option<Padding>,
}

impl StoreBuilder {
    /// Path of the store file (persistent storages).
    #[must_use]
    pub fn path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The passphrase that unlocks (or will unlock) the store.
    #[must_use]
    pub fn passphrase(mut self, passphrase: impl Into<Passphrase>) -> Self {
        self.passphrase = Some(passphrase.into());
        self
    }

    /// Storage by registry name.
    #[must_use]
    pub fn storage(mut self, name: impl Into<String>) -> Self {
        self.storage = Some(name.into());
        self
    }

    /// Cipher by registry name.
    #[must_use]
    pub fn cipher(mut self, name: impl Into<String>) -> Self {
        self.cipher = Some(name.into());
        self
    }

    /// Whether to create a missing store (default: true).
    #[must_use]
    pub fn create(mut self, create: bool) -> Self {
        self.create = Some(create);
        self
    }

    /// Argon2id cost for a new store (default [`KdfCost::DEFAULT`]).
    #[must_use]
    pub fn kdf_cost(mut self, cost: KdfCost) -> Self {
        self.kdf_cost = Some(cost);
        self
    }

    /// Padding of sealed payloads (default PADMÉ).
    #[must_use]
    pub fn padding(mut self, padding: Padding) -> Self {
        self.padding = Some(padding);
        self
    }

    fn pick(
        explicit: Option<String>,
        preferred: &[&str],
        available: Vec<&'static str>,
    ) -> Option<String> {
        explicit.or_else(|| {
            preferred
                .iter()
                .find(|p| available.contains(p))
                .map(|s| (*s).to_owned())
        })
    }

    /// Resolves the names, opens the storage and unlocks the store. For a storage whose
    /// registry entry needs a page key, the key header is read from (or, for a new store,
    /// written to) `<path>.keys` and the page key derived from the root key; see [`sidecar`].
    pub async fn open(self) -> Result<Store> {
        let passphrase = self
            .passphrase
            .ok_or_else(|| Error::invalid("a passphrase is required"))?;
        let storage_name = Self::pick(
            self.storage,
            &["sqlite", "sqlcipher", "memory"],
            registry::storage_names(),
        )
        .ok_or_else(|| Error::new(ErrorKind::NotCompiledIn, "no storage is compiled in"))?;
        let cipher_name = Self::pick(self.cipher, &["orion", "sodium"], registry::cipher_names())
            .ok_or_else(|| {
            Error::new(
                ErrorKind::NotCompiledIn,
                "no cipher is compiled in: enable the cargo feature `orion` or `sodium` of hearth",
            )
        })?;
        let storage_reg = registry::storage(&storage_name)?;
        let cipher = (registry::cipher(&cipher_name)?.make)();
        let create = self.create.unwrap_or(true);
        // Storages encrypted at rest keep their key header in a file next to the database.
        if storage_reg.needs_page_key || sidecar::present(self.path.as_deref()) {
            let mut opts = OpenOptions::new(passphrase).create(create);
            if let Some(c) = self.kdf_cost {
                opts.kdf_cost = c;
            }
            if let Some(p) = self.padding {
                opts.padding = p;
            }
            return sidecar::open(storage_reg, cipher, self.path, opts).await;
        }
        let mut storage_opts = StorageOptions::default().create(create);
        storage_opts.path = self.path;
        let storage = (storage_reg.open)(storage_opts).await?;
        let mut opts = OpenOptions {
            passphrase,
            create,
            ..OpenOptions::new(String::new())
        };
        if let Some(c) = self.kdf_cost {
            opts.kdf_cost = c;
        }
        if let Some(p) = self.padding {
            opts.padding = p;
        }
        Store::open(storage, cipher, opts).await
    }
}
