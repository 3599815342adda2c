//! The `Store`: an encrypted record store over any [`Storage`] and [`Cipher`].
//!
//! Every write seals the record before it reaches storage, and goes through the change log that
//! sync reads (the outbox: device sequence number, HLC, version vector), in the same atomic
//! batch as the record itself.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cipher::TAG_LEN;
use crate::cipher::{Cipher, KdfCost, Passphrase};
use crate::engine::head::{DIGEST_LEN, META_DIGEST, xor_into};
use crate::engine::row::RowSync;
use crate::envelope::{ENVELOPE_HEADER_LEN, MAX_VALUE_LEN, Padding, Payload, RecordKeys};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::model::{CollectionId, DeviceId, HlcClock, Record, RecordId, SpaceId, VersionVector};
use crate::registry;
use crate::storage::{Batch, ScanPos, Storage, StorageOptions, StoredRecord};

pub mod sidecar;

/// Metadata key of the key header.
pub const META_KEYRING: &str = "hearth.keyring";
/// Metadata key of a root-key rotation under way (the re-encryption cursor).
pub const META_ROTATION: &str = "hearth.rotation";
/// Metadata key of the device state (device id, HLC, sequence counter).
pub const META_DEVICE: &str = "hearth.device";
/// Longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 256;
/// Longest record key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;
/// Context of the parent key of [`Store::derive_local_key`].
const LOCAL_KEYS_CONTEXT: &[u8] = b"hearth.local-keys";
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

    /// The passphrase these options unlock with.
    pub fn passphrase(&self) -> &Passphrase {
        &self.passphrase
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

/// A page of records in storage order (the order they were first stored in; see
/// [`Storage::scan`]), for walking a whole collection in bounded memory.
#[derive(Debug, Default)]
pub struct Page {
    /// The live records of this page.
    pub records: Vec<Record>,
    /// Where the next page starts; `None` at the end. It stays valid when the record it follows
    /// is deleted.
    pub next: Option<ScanPos>,
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
    /// `state` may differ from what the storage holds: a commit of it failed (other than by
    /// a guard that no longer held, which writes nothing) or was abandoned mid-way (its future
    /// dropped), so whether it landed is unknown. The next holder reads the device state back
    /// from the storage ([`Store::lock_writer`]). A guard that failed leaves it as it was: a
    /// second writer of the same file stays refused until the store is reopened.
    stale: bool,
}

struct Inner {
    /// The application's storage, behind [`CountedStorage`].
    storage: Arc<dyn Storage>,
    /// Commits made to `storage` so far ([`CountedStorage`]).
    commits: Arc<AtomicU64>,
    cipher: Arc<dyn Cipher>,
    keyring: std::sync::RwLock<Keyring>,
    /// The root key, kept to rewrap it (passphrase change, recovery code). Zeroized on drop.
    root: crate::cipher::SecretKey,
    keys: RecordKeys,
    /// The retired record keys while a rotation re-encrypts the records.
    previous: Option<RecordKeys>,
    /// `subkey(root, "hearth.local-keys")`: the parent of [`Store::derive_local_key`]'s keys.
    local_keys: crate::cipher::SecretKey,
    device: DeviceId,
    padding: Padding,
    clock: WallClock,
    /// The key header file of a store encrypted at rest (`<path>.keys`); `None` when the key
    /// header is in the storage's metadata.
    sidecar: Option<PathBuf>,
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
    if collection == crate::engine::head::HEAD_COLLECTION {
        return Err(Error::invalid(format!(
            "the collection '{collection}' is reserved for the sync engine"
        )));
    }
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
    /// nothing; a store made by another storage, or by a cipher of another format, is
    /// [`ErrorKind::Config`] (ciphers of one format, such as `orion` and `sodium`, open each
    /// other's stores).
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
                keyring.check_storage(storage.name())?;
                keyring.check_cipher(cipher.as_ref())?;
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
                let (keyring, root) = Keyring::create(
                    cipher.as_ref(),
                    &options.passphrase,
                    options.kdf_cost,
                    SpaceId(space),
                    storage.name(),
                )?;
                let state = Self::initialise(storage.as_ref(), cipher.as_ref(), &keyring).await?;
                (keyring, root, state)
            }
            None => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "no hearth store here; create one first",
                ));
            }
        };
        Self::finish_open(storage, cipher, options, keyring, root, state, None)
    }

    fn finish_open(
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
        keyring: Keyring,
        root: crate::cipher::SecretKey,
        state: DeviceState,
        sidecar: Option<PathBuf>,
    ) -> Result<Store> {
        let blind = keyring.blind_key(cipher.as_ref(), &root)?;
        let keys = RecordKeys::derive_with_blind_key(
            cipher.as_ref(),
            keyring.space,
            keyring.key_id,
            &root,
            blind.clone(),
        )?;
        let previous = match keyring.retired_root(cipher.as_ref(), &root)? {
            Some((retired, old_root)) => Some(RecordKeys::derive_with_blind_key(
                cipher.as_ref(),
                retired.space,
                retired.key_id,
                &old_root,
                blind,
            )?),
            None => None,
        };
        let local_keys =
            crate::cipher::CipherExt::derive_subkey(cipher.as_ref(), &root, LOCAL_KEYS_CONTEXT)?;
        let encoded = encode_state(&state)?;
        let commits = Arc::new(AtomicU64::new(0));
        let storage: Arc<dyn Storage> = Arc::new(CountedStorage {
            inner: storage,
            commits: commits.clone(),
        });
        Ok(Store {
            inner: Arc::new(Inner {
                device: state.device,
                storage,
                commits,
                cipher,
                keyring: std::sync::RwLock::new(keyring),
                root,
                keys,
                previous,
                local_keys,
                padding: options.padding,
                clock: options.clock,
                sidecar,
                writer: tokio::sync::Mutex::new(Writer {
                    state,
                    encoded,
                    stale: false,
                }),
            }),
        })
    }

    /// Writes a new store's key header and a fresh device identity, atomically, refusing to
    /// overwrite an existing store.
    async fn initialise(
        storage: &dyn Storage,
        cipher: &dyn Cipher,
        keyring: &Keyring,
    ) -> Result<DeviceState> {
        let mut device = [0u8; DeviceId::LEN];
        cipher.fill_random(&mut device)?;
        let device = DeviceId(device);
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
                // An empty store's state digest: kept by every commit from the first.
                (META_DIGEST.to_owned(), Some(vec![0; DIGEST_LEN])),
            ],
            ..Batch::default()
        };
        storage.commit(batch).await.map_err(|e| match e.kind() {
            ErrorKind::Conflict => Error::new(ErrorKind::Config, "a store already exists here"),
            _ => e,
        })?;
        Ok(state)
    }

    /// The key backup of this store's space: its key header (the root key wrapped by the
    /// passphrase's KEK, which a server cannot open). Upload it so new devices can join.
    pub fn key_backup(&self) -> Result<Vec<u8>> {
        self.keyring()?.encode()
    }

    fn keyring(&self) -> Result<Keyring> {
        self.inner
            .keyring
            .read()
            .map(|k| k.clone())
            .map_err(|_| Error::internal("keyring lock poisoned"))
    }

    /// Replaces the key header, guarded by the current one: atomic, and refused if another
    /// process changed it meanwhile. In the storage's metadata (one guarded commit) or in the
    /// key header file of a store encrypted at rest ([`sidecar::replace`]).
    async fn replace_keyring(&self, old: &Keyring, new: Keyring) -> Result<()> {
        let _w = self.lock_writer().await;
        match &self.inner.sidecar {
            Some(path) => sidecar::replace(self.inner.cipher.as_ref(), path, old, &new)?,
            None => {
                self.inner
                    .storage
                    .commit(Batch {
                        guards: vec![(META_KEYRING.to_owned(), Some(old.encode()?))],
                        meta: vec![(META_KEYRING.to_owned(), Some(new.encode()?))],
                        ..Batch::default()
                    })
                    .await?;
            }
        }
        *self
            .inner
            .keyring
            .write()
            .map_err(|_| Error::internal("keyring lock poisoned"))? = new;
        Ok(())
    }

    /// Changes the passphrase: rewraps the root key only (no record is re-encrypted), in one
    /// atomic write: of the storage's metadata, or, for a store encrypted at rest, of its key
    /// header file ([`sidecar::replace`]). `cost` is the Argon2id cost for the new passphrase.
    /// Another process having changed the key header since this store was opened is
    /// [`ErrorKind::Conflict`].
    pub async fn change_passphrase(&self, new: &Passphrase, cost: KdfCost) -> Result<()> {
        let old = self.keyring()?;
        let mut next = old.clone();
        next.wrap(self.inner.cipher.as_ref(), new, cost, &self.inner.root)?;
        self.replace_keyring(&old, next).await
    }

    /// Makes a new recovery code (replacing any earlier one) and returns it: 32 base32
    /// characters in groups of four. Show it to the user once; hearth keeps only the root key
    /// wrapped under it.
    pub async fn create_recovery_code(&self, cost: KdfCost) -> Result<String> {
        let mut raw = zeroize::Zeroizing::new([0u8; 20]);
        self.inner.cipher.fill_random(raw.as_mut())?;
        let code = data_encoding::BASE32_NOPAD.encode(raw.as_ref());
        let grouped: String = code
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-");
        let old = self.keyring()?;
        let mut next = old.clone();
        next.set_recovery(
            self.inner.cipher.as_ref(),
            &crate::keyring::normalise_recovery_code(&grouped),
            cost,
            &self.inner.root,
        )?;
        self.replace_keyring(&old, next).await?;
        Ok(grouped)
    }

    /// Opens the store held by `storage` with its recovery code and sets a new passphrase
    /// (`options`' passphrase and KDF cost). A wrong code is [`ErrorKind::WrongPassphrase`] and
    /// changes nothing.
    pub async fn recover(
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
        recovery_code: &str,
    ) -> Result<Store> {
        let bytes = storage
            .meta_get(META_KEYRING)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no hearth store here"))?;
        let old = Keyring::decode(&bytes)?;
        old.check_cipher(cipher.as_ref())?;
        let code = crate::keyring::normalise_recovery_code(recovery_code);
        let root = old.unlock_with_recovery(cipher.as_ref(), &code)?;
        let mut next = old.clone();
        next.wrap(
            cipher.as_ref(),
            &options.passphrase,
            options.kdf_cost,
            &root,
        )?;
        storage
            .commit(Batch {
                guards: vec![(META_KEYRING.to_owned(), Some(bytes))],
                meta: vec![(META_KEYRING.to_owned(), Some(next.encode()?))],
                ..Batch::default()
            })
            .await?;
        Store::open(
            storage,
            cipher,
            OpenOptions {
                create: false,
                ..options
            },
        )
        .await
    }

    /// Creates a store on `storage` (which must be empty) that joins the space of `backup` (a
    /// [`Store::key_backup`] of another device): same space and root key, a new device id. A
    /// passphrase that does not open the backup is [`ErrorKind::WrongPassphrase`] and writes
    /// nothing.
    pub async fn join(
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
        backup: &[u8],
    ) -> Result<Store> {
        if storage.meta_get(META_KEYRING).await?.is_some() {
            return Err(Error::new(ErrorKind::Config, "a store already exists here"));
        }
        let mut keyring = Keyring::decode(backup)?;
        keyring.check_cipher(cipher.as_ref())?;
        let root = keyring.unlock(cipher.as_ref(), &options.passphrase)?;
        keyring.storage = storage.name().to_owned();
        keyring.cipher = cipher.name().to_owned();
        Self::join_unlocked(storage, cipher, options, keyring, root).await
    }

    /// [`Store::join`] with the key header already unlocked (and naming `storage` and `cipher`).
    pub(crate) async fn join_unlocked(
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
        keyring: Keyring,
        root: crate::cipher::SecretKey,
    ) -> Result<Store> {
        if storage.meta_get(META_KEYRING).await?.is_some() {
            return Err(Error::new(ErrorKind::Config, "a store already exists here"));
        }
        sidecar::refuse_sidecar_store(storage.as_ref()).await?;
        let state = Self::initialise(storage.as_ref(), cipher.as_ref(), &keyring).await?;
        Self::finish_open(storage, cipher, options, keyring, root, state, None)
    }

    /// Rotates the root key: a fresh root key in a fresh sync space, then every record is
    /// re-encrypted under it (see [`Store::finish_rotation`]). Record ids, values and version
    /// vectors stay; the recovery code must be made again; other devices join the new space
    /// with the passphrase. `passphrase` must unlock the store now and becomes the new one's.
    ///
    /// Crash-safe and resumable: the new key header and a rotation cursor are committed
    /// together first; each batch of re-encrypted records advances the cursor in the same
    /// transaction; until the last batch the old key stays (sealed under the new one), so every
    /// record stays readable. After a crash, open the store and call `finish_rotation`.
    ///
    /// A store encrypted at rest (SQLCipher) also moves its database to the new root's page key,
    /// and its key header lives in a file beside it: the header file is replaced first, then the
    /// database is bound to it and re-keyed in one transaction; opening after a crash finds
    /// which page key the file is under and finishes those steps (see `sidecar::rotate`).
    pub async fn rotate_root_key(self, passphrase: &Passphrase, cost: KdfCost) -> Result<Store> {
        let cipher = self.inner.cipher.clone();
        let storage = self.inner.storage.clone();
        let old = self.keyring()?;
        old.unlock(cipher.as_ref(), passphrase)?;
        let (next, new_root) = old.rotated(cipher.as_ref(), &self.inner.root, passphrase, cost)?;
        let options = OpenOptions {
            passphrase: passphrase.clone(),
            create: false,
            kdf_cost: cost,
            padding: self.inner.padding,
            clock: self.inner.clock.clone(),
        };
        if let Some(keys_path) = self.inner.sidecar.clone() {
            // Hold the writer so no write of this handle interleaves with the key change.
            let w = self.lock_writer().await;
            let store =
                sidecar::rotate(storage, cipher, keys_path, options, &old, next, new_root).await;
            drop(w);
            drop(self);
            let store = store?;
            store.finish_rotation().await?;
            return Ok(store);
        }
        drop(new_root);
        {
            let _w = self.lock_writer().await;
            let mut meta = vec![
                (META_KEYRING.to_owned(), Some(next.encode()?)),
                (
                    META_ROTATION.to_owned(),
                    Some(
                        postcard::to_stdvec(&None::<RecordId>)
                            .map_err(|e| Error::internal("rotation cursor").with_source(e))?,
                    ),
                ),
            ];
            for k in crate::engine::SYNC_META_KEYS {
                meta.push(((*k).to_owned(), None));
            }
            storage
                .commit(Batch {
                    guards: vec![(META_KEYRING.to_owned(), Some(old.encode()?))],
                    meta,
                    ..Batch::default()
                })
                .await?;
        }
        drop(self);
        let store = Store::open(storage, cipher, options).await?;
        store.finish_rotation().await?;
        Ok(store)
    }

    /// True while a root-key rotation has records left to re-encrypt.
    pub async fn rotation_pending(&self) -> Result<bool> {
        Ok(self.inner.storage.meta_get(META_ROTATION).await?.is_some())
    }

    /// Re-encrypts the records still sealed under the retired key, in batches, each committed
    /// with the cursor; then forgets the retired key. Returns how many records it re-encrypted.
    /// Does nothing when no rotation is under way. Every re-encrypted record becomes a pending
    /// write of this device, to be uploaded to the new space.
    pub async fn finish_rotation(&self) -> Result<u64> {
        let mut done = 0u64;
        let cipher = self.inner.cipher.as_ref();
        loop {
            let Some(bytes) = self.inner.storage.meta_get(META_ROTATION).await? else {
                return Ok(done);
            };
            let cursor: Option<RecordId> = postcard::from_bytes(&bytes)?;
            let rows = self.inner.storage.scan_all(cursor.as_ref(), 256).await?;
            let mut w = self.writer().await;
            let Some(last) = rows.last().map(|r| r.id) else {
                // Every record is under the new key: forget the old one.
                let current = self.keyring()?;
                let mut next = current.clone();
                next.retired = None;
                match &self.inner.sidecar {
                    // The key header file first: a crash before the cursor goes leaves a store
                    // whose next `finish_rotation` finds nothing to re-seal and ends here again.
                    Some(path) => {
                        sidecar::replace(cipher, path, &current, &next)?;
                        w.commit(Batch {
                            meta: vec![(META_ROTATION.to_owned(), None)],
                            ..Batch::default()
                        })
                        .await?;
                    }
                    None => {
                        w.commit(Batch {
                            guards: vec![(META_KEYRING.to_owned(), Some(current.encode()?))],
                            meta: vec![
                                (META_KEYRING.to_owned(), Some(next.encode()?)),
                                (META_ROTATION.to_owned(), None),
                            ],
                            ..Batch::default()
                        })
                        .await?;
                    }
                }
                drop(w);
                *self
                    .inner
                    .keyring
                    .write()
                    .map_err(|_| Error::internal("keyring lock poisoned"))? = next;
                return Ok(done);
            };
            let mut puts = Vec::new();
            for row in rows {
                let header = crate::envelope::EnvelopeHeader::parse(&row.envelope)?;
                if header.key_id == self.inner.keys.key_id {
                    continue;
                }
                let mut payload = self.open_envelope(&row.id, &row.envelope)?;
                // Local-only records (never synced, never pending) stay local.
                let local_only = row.pending_seq.is_none() && !RowSync::decode(&row.sync)?.synced;
                let (seq, hlc) = w.next_write();
                payload.version.set(self.inner.device, seq);
                payload.hlc = hlc;
                payload.origin = self.inner.device;
                payload.seq = seq;
                let envelope =
                    self.inner
                        .keys
                        .seal(cipher, &row.id, &payload, self.inner.padding)?;
                puts.push(StoredRecord {
                    envelope,
                    pending_seq: (!local_only).then_some(seq),
                    // A fresh space: nothing of this record is on its server yet.
                    sync: Vec::new(),
                    ..row
                });
                done += 1;
            }
            w.commit(Batch {
                puts,
                meta: vec![(
                    META_ROTATION.to_owned(),
                    Some(
                        postcard::to_stdvec(&Some(last))
                            .map_err(|e| Error::internal("rotation cursor").with_source(e))?,
                    ),
                )],
                ..Batch::default()
            })
            .await?;
        }
    }

    /// The storage under this store, as the store uses it: commits made through this handle are
    /// seen by the sync engine (it trusts rows it read for a push only while nothing else has
    /// committed). Write to the storage through this handle, not through one kept from before
    /// the store was opened.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// How many commits have been made to this store's storage (through any handle the store
    /// gave out) since it was opened; read before a read that the caller means to trust later,
    /// and again then, it says whether anything may have changed in between.
    pub(crate) fn commits(&self) -> u64 {
        self.inner.commits.load(Ordering::SeqCst)
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

    /// Derives a key for `context` from this store's root key, for keys that must persist with
    /// the store without ever being stored: `subkey(subkey(root, "hearth.local-keys"), context)`.
    ///
    /// The same on every device of the space (they share the root key) and stable across
    /// restarts; a root-key rotation changes it. The privacy pipeline derives its pseudonym root
    /// here. Contexts are namespaced by the caller (`"hearth.pseudonym-root"`).
    pub fn derive_local_key(&self, context: &[u8]) -> Result<crate::cipher::SecretKey> {
        crate::cipher::CipherExt::derive_subkey(
            self.inner.cipher.as_ref(),
            &self.inner.local_keys,
            context,
        )
    }

    /// Facts about the store, safe to print.
    pub async fn info(&self) -> Result<StoreInfo> {
        let keyring = self.keyring()?;
        let w = self.lock_writer().await;
        Ok(StoreInfo {
            space: self.inner.keys.space,
            device: self.inner.device,
            storage: keyring.storage.clone(),
            cipher: keyring.cipher.clone(),
            key_id: keyring.key_id,
            fingerprint: hex8(&keyring.fingerprint),
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
        let header = crate::envelope::EnvelopeHeader::parse(envelope)?;
        let keys = match &self.inner.previous {
            Some(prev) if header.key_id == prev.key_id => prev,
            _ => &self.inner.keys,
        };
        let payload = keys.open(cipher, id, envelope)?;
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
        let mut w = self.lock_writer().await;
        let mut state = w.state.clone();
        let now = (inner.clock)();
        // Per record written: version, deleted, bookkeeping, local-only.
        let mut staged: HashMap<RecordId, (VersionVector, bool, RowSync, bool)> = HashMap::new();
        // The state digest's change, computed from the versions at hand (no second read).
        let kept_digest = inner.storage.meta_get(META_DIGEST).await?;
        let mut digest = kept_digest.as_deref().map(decode_digest).transpose()?;
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
        let existing = inner.storage.get_many_for_commit(&ids).await?;
        for ((id, collection, key, json), row) in ops.into_iter().zip(existing) {
            let current = match staged.remove(&id) {
                Some(c) => Some(c),
                None => match row {
                    Some(row) => {
                        let mut p = self.open_envelope(&id, &row.envelope)?;
                        let sync = RowSync::decode(&row.sync)?;
                        let local_only = row.pending_seq.is_none() && !sync.synced;
                        let sync = sync.after_local_write(&row.envelope, row.pending_seq.is_some());
                        Some((
                            std::mem::take(&mut p.version),
                            p.value.is_none(),
                            sync,
                            local_only,
                        ))
                    }
                    None => None,
                },
            };
            if json.is_none() && current.as_ref().is_none_or(|(_, deleted, ..)| *deleted) {
                summary.skipped += 1;
                if let Some(c) = current {
                    staged.insert(id, c);
                }
                continue;
            }
            if let (Some(d), Some((version, deleted, sync, local_only))) = (&mut digest, &current)
                && let Some(e) =
                    self.element_of(&id, (version, *deleted), &sync.siblings, *local_only)?
            {
                xor_into(d, &e);
            }
            let (mut version, _, sync, _) = current.unwrap_or_default();
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
                sync: sync.encode(),
            });
            let local_only = batch_local && !sync.synced;
            if let Some(d) = &mut digest
                && let Some(e) =
                    self.element_of(&id, (&version, deleted), &sync.siblings, local_only)?
            {
                xor_into(d, &e);
            }
            staged.insert(id, (version, deleted, sync, local_only));
            summary.written += 1;
        }
        summary.last_seq = state.seq;
        if puts.is_empty() {
            return Ok(summary);
        }
        let encoded = encode_state(&state)?;
        let mut batch = Batch {
            guards: vec![(META_DEVICE.to_owned(), Some(w.encoded.clone()))],
            puts,
            meta: vec![(META_DEVICE.to_owned(), Some(encoded.clone()))],
            ..Batch::default()
        };
        if let (Some(kept), Some(d)) = (kept_digest, digest) {
            batch.guards.push((META_DIGEST.to_owned(), Some(kept)));
            batch.meta.push((META_DIGEST.to_owned(), Some(d.to_vec())));
        }
        // Stale until the commit is known to have landed (see [`Writer::stale`]).
        let was_stale = std::mem::replace(&mut w.stale, true);
        if let Err(e) = inner.storage.commit(batch).await {
            // A guard that no longer holds refuses the batch whole: nothing landed.
            if e.kind() == ErrorKind::Conflict {
                w.stale = was_stale;
            }
            return Err(e);
        }
        w.state = state;
        w.encoded = encoded;
        w.stale = false;
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
            let page = self.scan_page(collection, after, SCAN_PAGE).await?;
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

    /// One page of live records of `collection` in storage order, starting after `after` (the
    /// `next` of the page before).
    pub async fn scan_page(
        &self,
        collection: &str,
        after: Option<ScanPos>,
        limit: usize,
    ) -> Result<Page> {
        validate_names(collection, "-")?;
        let cid = self.collection_id(collection)?;
        let limit = limit.max(1);
        let rows = self.inner.storage.scan(&cid, after, limit, false).await?;
        let next = if rows.len() == limit {
            rows.last().map(|(pos, _)| *pos)
        } else {
            None
        };
        let records = rows
            .iter()
            .map(|(_, row)| self.open_row(row))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { records, next })
    }

    /// Checks the storage's integrity, then that the state digest the sync engine keeps (see
    /// [`crate::engine::head`]) still matches the records: a walk over every record, opening
    /// each. A mismatch is [`ErrorKind::Corrupt`].
    pub async fn check(&self) -> Result<()> {
        self.inner.storage.check().await?;
        let mut w = self.writer().await;
        let Some(kept) = self.inner.storage.meta_get(META_DIGEST).await? else {
            return Ok(());
        };
        let kept = decode_digest(&kept)?;
        if w.walk_digest().await? != kept {
            return Err(Error::corrupt(
                "the kept state digest does not match the records",
            ));
        }
        Ok(())
    }

    /// Flushes and closes the storage.
    pub async fn close(self) -> Result<()> {
        let _w = self.lock_writer().await;
        self.inner.storage.close().await
    }
}

/// Exclusive access to the store's write path, for the sync engine: allocates device sequence
/// numbers and HLC ticks on a working copy of the device state, and commits a batch together
/// with that state (guarded like every local write). Dropped without commit, nothing changes.
pub(crate) struct WriterGuard<'a> {
    store: &'a Store,
    guard: tokio::sync::MutexGuard<'a, Writer>,
    working: DeviceState,
}

impl WriterGuard<'_> {
    /// The next device sequence number and HLC tick.
    pub(crate) fn next_write(&mut self) -> (u64, crate::model::Hlc) {
        self.working.seq += 1;
        let now = (self.store.inner.clock)();
        (self.working.seq, self.working.clock.tick(now))
    }

    /// Folds a remote timestamp into this device's clock.
    pub(crate) fn observe(&mut self, hlc: &crate::model::Hlc) {
        let now = (self.store.inner.clock)();
        self.working.clock.observe(hlc, now);
    }

    /// Commits `batch`, which the caller knows leaves the state digest as it is (every row it
    /// puts has the envelope, siblings and local-only standing it had, every row it removes
    /// counted for nothing), with the working device state: without reading the rows again.
    pub(crate) async fn commit_keeping_digest(&mut self, batch: Batch) -> Result<()> {
        self.commit_inner(batch, Digest::Keep).await
    }

    /// Commits `batch` with the working device state, taking the rows it replaces from `old`
    /// (every row the batch touches that exists, as stored now) instead of reading them again.
    ///
    /// `opened` holds versions the caller has already decrypted (of old rows or new ones), so
    /// the digest upkeep does not decrypt them a second time.
    pub(crate) async fn commit_replacing(
        &mut self,
        batch: Batch,
        old: &HashMap<RecordId, StoredRecord>,
        opened: &Opened,
    ) -> Result<()> {
        self.commit_inner(batch, Digest::Replacing(old, opened))
            .await
    }

    /// Commits `batch` with the working device state.
    pub(crate) async fn commit(&mut self, batch: Batch) -> Result<()> {
        self.commit_inner(batch, Digest::Read).await
    }

    async fn commit_inner(&mut self, mut batch: Batch, digest: Digest<'_>) -> Result<()> {
        let encoded = encode_state(&self.working)?;
        batch
            .guards
            .push((META_DEVICE.to_owned(), Some(self.guard.encoded.clone())));
        batch
            .meta
            .push((META_DEVICE.to_owned(), Some(encoded.clone())));
        match digest {
            Digest::Keep => {}
            Digest::Read => self.store.digest_update(&mut batch, None, None).await?,
            Digest::Replacing(old, opened) => {
                self.store
                    .digest_update(&mut batch, Some(old), Some(opened))
                    .await?
            }
        }
        // Stale until the commit is known to have landed (see [`Writer::stale`]).
        let was_stale = std::mem::replace(&mut self.guard.stale, true);
        if let Err(e) = self.store.inner.storage.commit(batch).await {
            // A guard that no longer holds refuses the batch whole: nothing landed.
            if e.kind() == ErrorKind::Conflict {
                self.guard.stale = was_stale;
            }
            return Err(e);
        }
        self.guard.state = self.working.clone();
        self.guard.encoded = encoded;
        self.guard.stale = false;
        Ok(())
    }

    /// The store's state digest ([`crate::engine::head`]). Kept by every commit once it
    /// exists; the first call (on a store made before digests, or after a rotation cleared it)
    /// computes it with one walk over the records and stores it.
    pub(crate) async fn state_digest(&mut self) -> Result<[u8; DIGEST_LEN]> {
        let storage = &self.store.inner.storage;
        if let Some(bytes) = storage.meta_get(META_DIGEST).await? {
            return decode_digest(&bytes);
        }
        let digest = self.walk_digest().await?;
        self.commit(Batch {
            guards: vec![(META_DIGEST.to_owned(), None)],
            meta: vec![(META_DIGEST.to_owned(), Some(digest.to_vec()))],
            ..Batch::default()
        })
        .await?;
        Ok(digest)
    }
}

impl WriterGuard<'_> {
    /// The state digest computed from every record (under the write lock, so nothing changes
    /// during the walk).
    async fn walk_digest(&mut self) -> Result<[u8; DIGEST_LEN]> {
        let storage = &self.store.inner.storage;
        let mut digest = [0u8; DIGEST_LEN];
        let mut after: Option<RecordId> = None;
        loop {
            let rows = storage.scan_all(after.as_ref(), 512).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for row in &rows {
                if let Some(e) = self.store.digest_element(row)? {
                    xor_into(&mut digest, &e);
                }
            }
        }
        Ok(digest)
    }
}

/// The store's storage, counting commits ([`Store::commits`]): the sync engine acknowledges a
/// pushed batch from the rows as it read them for the push, instead of reading them again,
/// when no commit has been made since that read other than its own. Every call is passed on
/// unchanged; a commit is counted once it has returned, failed or not (a failed commit changed
/// nothing, and counting it only sends the engine the long way round).
struct CountedStorage {
    inner: Arc<dyn Storage>,
    commits: Arc<AtomicU64>,
}

impl fmt::Debug for CountedStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl Storage for CountedStorage {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> crate::storage::Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>> {
        self.inner.get(id).await
    }

    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        self.inner.get_many(ids).await
    }

    async fn get_many_for_commit(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        self.inner.get_many_for_commit(ids).await
    }

    async fn get_states(&self, ids: &[RecordId]) -> Result<Vec<Option<crate::storage::RowState>>> {
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

    async fn outbox(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<crate::storage::OutboxEntry>> {
        self.inner.outbox(after_seq, limit).await
    }

    async fn outbox_len(&self) -> Result<u64> {
        self.inner.outbox_len().await
    }

    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.meta_get(key).await
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        let result = self.inner.commit(batch).await;
        self.commits.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn rekey(&self, page_key: &crate::cipher::SecretKey) -> Result<()> {
        // A re-key rewrites every page: counted like a commit.
        let result = self.inner.rekey(page_key).await;
        self.commits.fetch_add(1, Ordering::SeqCst);
        result
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// How a commit keeps the state digest.
enum Digest<'a> {
    /// The batch changes nothing the digest counts.
    Keep,
    /// Read the rows the batch replaces.
    Read,
    /// The rows the batch replaces, known already, and versions already opened.
    Replacing(&'a HashMap<RecordId, StoredRecord>, &'a Opened),
}

/// Versions a caller has already decrypted, by record and envelope: the digest upkeep takes a
/// row's current version from here when the row's envelope is the one opened.
///
/// An envelope is known by its [`EnvelopeIdentity`], not by a copy of its bytes (a page's worth
/// of copies was as much memory again as the page, and hashing whole envelopes instead cost
/// the pull's critical thread ~18 % of its time).
#[derive(Default)]
pub(crate) struct Opened(HashMap<RecordId, Vec<(EnvelopeIdentity, VersionVector, bool)>>);

/// What tells two envelopes of one record apart here: the length, the header (format, key id
/// and the random nonce) and the authentication tag. Two different envelopes that agree on
/// all of it cannot both be authentic unless someone holding the space's key made them so on
/// purpose (for a given key and nonce the tag authenticates the ciphertext); such a device can
/// write anything anyway, and a server, which holds no key, cannot make one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct EnvelopeIdentity {
    len: usize,
    header: [u8; ENVELOPE_HEADER_LEN],
    tag: [u8; TAG_LEN],
}

impl EnvelopeIdentity {
    fn of(envelope: &[u8]) -> Self {
        let mut header = [0; ENVELOPE_HEADER_LEN];
        let mut tag = [0; TAG_LEN];
        let n = envelope.len();
        // Envelopes shorter than a header and a tag do not open; what is copied of them
        // still tells them apart by length.
        let h = n.min(ENVELOPE_HEADER_LEN);
        header[..h].copy_from_slice(&envelope[..h]);
        let t = n.min(TAG_LEN);
        tag[TAG_LEN - t..].copy_from_slice(&envelope[n - t..]);
        Self {
            len: n,
            header,
            tag,
        }
    }
}

impl Opened {
    /// Remembers that `envelope` of record `id` holds `version`, deleted or not.
    pub(crate) fn insert(
        &mut self,
        id: RecordId,
        envelope: &[u8],
        version: &VersionVector,
        deleted: bool,
    ) {
        let identity = EnvelopeIdentity::of(envelope);
        let versions = self.0.entry(id).or_default();
        if !versions.iter().any(|(e, _, _)| *e == identity) {
            versions.push((identity, version.clone(), deleted));
        }
    }

    fn get(&self, id: &RecordId, envelope: &[u8]) -> Option<(&VersionVector, bool)> {
        let identity = EnvelopeIdentity::of(envelope);
        self.0
            .get(id)?
            .iter()
            .find(|(e, _, _)| *e == identity)
            .map(|(_, v, d)| (v, *d))
    }
}

fn decode_digest(bytes: &[u8]) -> Result<[u8; DIGEST_LEN]> {
    bytes
        .try_into()
        .map_err(|_| Error::corrupt("the stored state digest has the wrong length"))
}

/// True when two rows of one record count the same in the state digest without opening them:
/// the same envelope, the same siblings, both local-only or neither.
fn same_digest_inputs(a: &StoredRecord, b: &StoredRecord) -> Result<bool> {
    if a.envelope != b.envelope {
        return Ok(false);
    }
    if a.sync == b.sync && a.pending_seq.is_some() == b.pending_seq.is_some() {
        return Ok(true);
    }
    let (sa, sb) = (RowSync::decode(&a.sync)?, RowSync::decode(&b.sync)?);
    let local_only = |r: &StoredRecord, s: &RowSync| r.pending_seq.is_none() && !s.synced;
    Ok(local_only(a, &sa) == local_only(b, &sb) && sa.siblings == sb.siblings)
}

impl Store {
    /// This record's part of the state digest ([`crate::engine::head`]): a keyed hash of its
    /// blind id and of the version vectors and deletion flags of its versions (the current one
    /// and unresolved siblings) that no other of them dominates; `None` when it counts for
    /// nothing (a local-only record, or only tombstones). Devices that applied the same writes
    /// compute the same element, whichever version each keeps as current.
    pub(crate) fn digest_element(&self, row: &StoredRecord) -> Result<Option<[u8; DIGEST_LEN]>> {
        let sync = RowSync::decode(&row.sync)?;
        let local_only = row.pending_seq.is_none() && !sync.synced;
        if local_only {
            return Ok(None);
        }
        let p = self.open_envelope(&row.id, &row.envelope)?;
        self.element_of(
            &row.id,
            (&p.version, p.value.is_none()),
            &sync.siblings,
            local_only,
        )
    }

    /// [`Store::digest_element`] of a row whose current version (`version`, deleted or not)
    /// is already open.
    fn element_of_row(
        &self,
        row: &StoredRecord,
        current: (&VersionVector, bool),
    ) -> Result<Option<[u8; DIGEST_LEN]>> {
        let sync = RowSync::decode(&row.sync)?;
        let local_only = row.pending_seq.is_none() && !sync.synced;
        self.element_of(&row.id, current, &sync.siblings, local_only)
    }

    /// [`Store::digest_element`] of a record whose current version (`version`, deleted or
    /// not) is already open; its siblings are opened here.
    fn element_of(
        &self,
        id: &RecordId,
        current: (&VersionVector, bool),
        siblings: &[Vec<u8>],
        local_only: bool,
    ) -> Result<Option<[u8; DIGEST_LEN]>> {
        if local_only {
            return Ok(None);
        }
        let mut versions: Vec<(VersionVector, bool)> = Vec::with_capacity(1 + siblings.len());
        versions.push((current.0.clone(), current.1));
        for envelope in siblings {
            let p = self.open_envelope(id, envelope)?;
            versions.push((p.version.clone(), p.value.is_none()));
        }
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(versions.len());
        for (i, (v, deleted)) in versions.iter().enumerate() {
            let covered = versions.iter().enumerate().any(|(j, (o, o_deleted))| {
                if o == v {
                    // The same version twice counts once.
                    j < i && o_deleted == deleted
                } else {
                    o.dominates(v)
                }
            });
            if covered {
                continue;
            }
            let mut part = postcard::to_stdvec(v)
                .map_err(|e| Error::internal("version encoding").with_source(e))?;
            part.push(u8::from(*deleted));
            parts.push(part);
        }
        if parts.iter().all(|p| p.last() == Some(&1)) {
            return Ok(None);
        }
        parts.sort_unstable();
        let mut input = Vec::new();
        for part in &parts {
            input.extend_from_slice(&(part.len() as u32).to_be_bytes());
            input.extend_from_slice(part);
        }
        let h = self.inner.cipher.keyed_hash(
            &self.inner.keys.blind_key,
            &[b"hearth.digest\0", id.as_bytes(), &input],
        )?;
        Ok(Some(h))
    }

    /// Adds to `batch` the state digest's change, when the store keeps one: each record the
    /// batch replaces or removes leaves the digest, each it writes enters it. Guarded, so a
    /// commit from another process in between fails the batch rather than skewing the digest.
    async fn digest_update(
        &self,
        batch: &mut Batch,
        known: Option<&HashMap<RecordId, StoredRecord>>,
        opened: Option<&Opened>,
    ) -> Result<()> {
        if batch.puts.is_empty() && batch.removes.is_empty() {
            return Ok(());
        }
        let storage = &self.inner.storage;
        let Some(current) = storage.meta_get(META_DIGEST).await? else {
            return Ok(());
        };
        let mut digest = decode_digest(&current)?;
        // What each record ends as: puts apply in order, then removes.
        let mut finals: BTreeMap<RecordId, Option<&StoredRecord>> = BTreeMap::new();
        for row in &batch.puts {
            finals.insert(row.id, Some(row));
        }
        for id in &batch.removes {
            finals.insert(*id, None);
        }
        let old = match known {
            Some(known) => finals.keys().map(|id| known.get(id).cloned()).collect(),
            None => {
                let ids: Vec<RecordId> = finals.keys().copied().collect();
                storage.get_many(&ids).await?
            }
        };
        for (new, old) in finals.values().zip(old) {
            if let (Some(new), Some(old)) = (new, &old)
                && same_digest_inputs(new, old)?
            {
                continue;
            }
            for row in old.iter().chain(new.iter().copied()) {
                let element = match opened.and_then(|o| o.get(&row.id, &row.envelope)) {
                    Some(current) => self.element_of_row(row, current)?,
                    None => self.digest_element(row)?,
                };
                if let Some(e) = element {
                    xor_into(&mut digest, &e);
                }
            }
        }
        batch.guards.push((META_DIGEST.to_owned(), Some(current)));
        batch
            .meta
            .push((META_DIGEST.to_owned(), Some(digest.to_vec())));
        Ok(())
    }
}

impl Store {
    /// Locks the write path; reads the device state back from the storage when the last
    /// holder left it unconfirmed ([`Writer::stale`]).
    async fn lock_writer(&self) -> tokio::sync::MutexGuard<'_, Writer> {
        let mut guard = self.inner.writer.lock().await;
        if guard.stale {
            match self.inner.storage.meta_get(META_DEVICE).await {
                Ok(Some(encoded)) => match postcard::from_bytes::<DeviceState>(&encoded) {
                    Ok(state) => {
                        guard.state = state;
                        guard.encoded = encoded;
                        guard.stale = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "device state unreadable"),
                },
                // Left stale: the next commit's guard fails, and the next holder tries again.
                Ok(None) => tracing::warn!("device state missing"),
                Err(e) => tracing::warn!(error = %e, "reading the device state back failed"),
            }
        }
        guard
    }

    /// Takes the write path exclusively (see [`WriterGuard`]).
    pub(crate) async fn writer(&self) -> WriterGuard<'_> {
        let guard = self.lock_writer().await;
        let working = guard.state.clone();
        WriterGuard {
            store: self,
            guard,
            working,
        }
    }

    /// The root key (for deriving backup keys).
    pub(crate) fn root_key(&self) -> &crate::cipher::SecretKey {
        &self.inner.root
    }

    /// The record keys of this store.
    pub(crate) fn keys(&self) -> &RecordKeys {
        &self.inner.keys
    }

    /// The padding policy.
    pub(crate) fn padding(&self) -> Padding {
        self.inner.padding
    }

    /// The wall clock, in milliseconds.
    pub(crate) fn now_millis(&self) -> u64 {
        (self.inner.clock)()
    }

    /// The fingerprint of the root key: a keyed hash the server compares without learning the
    /// key.
    pub fn key_fingerprint(&self) -> [u8; 32] {
        self.inner
            .keyring
            .read()
            .map(|k| k.fingerprint)
            .unwrap_or([0; 32])
    }
}

pub(crate) fn record_from_payload(mut p: Payload) -> Result<Record> {
    let value = match &p.value {
        Some(json) => Some(
            serde_json::from_slice(json)
                .map_err(|e| Error::corrupt("record value is not valid JSON").with_source(e))?,
        ),
        None => None,
    };
    // The names go to the application; the JSON bytes are wiped with the payload.
    Ok(Record {
        collection: std::mem::take(&mut p.collection),
        key: std::mem::take(&mut p.key),
        value,
        version: std::mem::take(&mut p.version),
        hlc: p.hlc,
    })
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// The files a store at `db` may have, by suffix: the database, SQLite's journal files, the key
/// header file.
const STORE_FILE_SUFFIXES: [&str; 4] = ["", "-wal", "-shm", sidecar::SIDECAR_SUFFIX];

fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A fresh name next to `path` for a store being imported: `.<name>.import-<random>`.
fn import_temp_path(cipher: &dyn Cipher, path: &std::path::Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("the store path has no file name"))?;
    let mut tag = [0u8; 8];
    cipher.fill_random(&mut tag)?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".import-{}", hex8(&tag)));
    Ok(sidecar::parent_dir(path).join(tmp))
}

fn remove_store_files(db: &std::path::Path) {
    for suffix in STORE_FILE_SUFFIXES {
        let _ = std::fs::remove_file(with_suffix(db, suffix));
    }
}

/// Moves a closed store from `tmp` to `path`: SQLite's journal files first (if any survived the
/// close), then the database, then its key header file. The database is linked into place, which
/// fails if something appeared at `path` meanwhile; a crash between the last two steps leaves the
/// database at `path` and its key header at `<tmp>.keys`, which the next open claims (after
/// checking that the passphrase unlocks it and the database's binding names it) and moves into
/// place; a new key header is never written for such a database.
fn move_into_place(tmp: &std::path::Path, path: &std::path::Path, sidecar: bool) -> Result<()> {
    let io = |what: &str, p: &std::path::Path, e| {
        sidecar::io_error(format!("cannot {what} {}", p.display()), e)
    };
    if path.exists() {
        return Err(Error::new(
            ErrorKind::Config,
            format!("{} appeared during the import", path.display()),
        ));
    }
    for suffix in ["-wal", "-shm"] {
        let from = with_suffix(tmp, suffix);
        if from.exists() {
            let to = with_suffix(path, suffix);
            std::fs::rename(&from, &to).map_err(|e| io("move the store to", &to, e))?;
        }
    }
    match std::fs::hard_link(tmp, path) {
        Ok(()) => {
            let _ = std::fs::remove_file(tmp);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Error::new(
                ErrorKind::Config,
                format!("{} appeared during the import", path.display()),
            ));
        }
        Err(_) => std::fs::rename(tmp, path).map_err(|e| io("move the store to", path, e))?,
    }
    if sidecar {
        let from = sidecar::sidecar_path(tmp);
        let to = sidecar::sidecar_path(path);
        if let Err(e) = std::fs::rename(&from, &to) {
            // Put the database back beside its key header, so the caller removes both.
            let _ = std::fs::rename(path, tmp);
            return Err(io("move the key header to", &to, e));
        }
    }
    sidecar::sync_dir(&sidecar::parent_dir(path))
}

/// Builds a [`Store`] from registry names. An existing store opens with the names its key header
/// records; a new one defaults to the first compiled-in storage of `sqlite`, `sqlcipher`,
/// `memory`, and the first cipher of `orion`, `sodium`.
#[derive(Clone, Debug, Default)]
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

    /// The first of `sqlite`, `sqlcipher`, `memory` that is compiled in.
    fn default_storage() -> Result<String> {
        Self::pick(
            None,
            &["sqlite", "sqlcipher", "memory"],
            registry::storage_names(),
        )
        .ok_or_else(|| Error::new(ErrorKind::NotCompiledIn, "no storage is compiled in"))
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

    /// Unlocks an existing store with its recovery code (case and separators do not matter),
    /// sets the builder's passphrase (and KDF cost) as its new passphrase, and opens it. Works for
    /// stores whose key header is in the storage's metadata ([`Store::recover`]) and for stores
    /// encrypted at rest, whose key header file is replaced atomically ([`sidecar::replace`]).
    /// A wrong code is [`ErrorKind::WrongPassphrase`] and changes nothing.
    pub async fn recover(self, recovery_code: &str) -> Result<Store> {
        let passphrase = self
            .passphrase
            .clone()
            .ok_or_else(|| Error::invalid("a new passphrase is required"))?;
        let cost = self.kdf_cost.unwrap_or(KdfCost::DEFAULT);
        let code = crate::keyring::normalise_recovery_code(recovery_code);
        let keys_path = self.path.as_deref().map(sidecar::sidecar_path);
        if let Some(keys_path) = keys_path.filter(|p| p.exists()) {
            let probe = Self::choose_cipher(self.cipher.as_deref(), None)?;
            let ring = sidecar::read(probe.as_ref(), &keys_path)?
                .ok_or_else(|| Error::new(ErrorKind::NotFound, "no hearth store here"))?;
            let cipher = Self::choose_cipher(self.cipher.as_deref(), Some(&ring.cipher))?;
            ring.check_cipher(cipher.as_ref())?;
            let root = ring.unlock_with_recovery(cipher.as_ref(), &code)?;
            let mut next = ring.clone();
            next.wrap(cipher.as_ref(), &passphrase, cost, &root)?;
            drop(root);
            sidecar::replace(cipher.as_ref(), &keys_path, &ring, &next)?;
            return self.create(false).open().await;
        }
        let storage_name = match &self.storage {
            Some(name) => name.clone(),
            None => Self::default_storage()?,
        };
        let mut storage_opts = StorageOptions::default().create(false);
        storage_opts.path = self.path.clone();
        let storage = (registry::storage(&storage_name)?.open)(storage_opts).await?;
        let recorded = match storage.meta_get(META_KEYRING).await? {
            Some(bytes) => Some(Keyring::decode(&bytes)?.cipher),
            None => None,
        };
        let cipher = Self::choose_cipher(self.cipher.as_deref(), recorded.as_deref())?;
        let mut opts = OpenOptions::new(passphrase).kdf_cost(cost);
        if let Some(p) = self.padding {
            opts.padding = p;
        }
        Store::recover(storage, cipher, opts, recovery_code).await
    }

    /// Creates a new store at the builder's path that joins the space of `backup` (another
    /// device's [`Store::key_backup`], unlocked with the builder's passphrase): same space and
    /// root key, a new device id. With the builder's storage (default as for a new store) and
    /// cipher (default: the one that made the backup, or a compiled-in cipher of its format).
    /// Unlike [`Store::join`] this also makes stores encrypted at rest (SQLCipher), whose key
    /// header goes to `<path>.keys`. A passphrase that does not open the backup is
    /// [`ErrorKind::WrongPassphrase`] and creates nothing; a store already at the path is
    /// [`ErrorKind::Config`]. On a later error the caller removes the path's files.
    pub async fn join(self, backup: &[u8]) -> Result<Store> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| Error::invalid("joining needs the path of the new store"))?;
        let passphrase = self
            .passphrase
            .clone()
            .ok_or_else(|| Error::invalid("a passphrase is required"))?;
        if path.exists() || sidecar::sidecar_path(&path).exists() {
            return Err(Error::new(
                ErrorKind::Config,
                format!("a store already exists at {}", path.display()),
            ));
        }
        let mut keyring = Keyring::decode(backup)?;
        let cipher = Self::choose_cipher(self.cipher.as_deref(), Some(&keyring.cipher))?;
        keyring.check_cipher(cipher.as_ref())?;
        // A wrong passphrase stops here, before any file exists.
        let root = keyring.unlock(cipher.as_ref(), &passphrase)?;
        let storage_name = match &self.storage {
            Some(name) => name.clone(),
            None => Self::default_storage()?,
        };
        let reg = registry::storage(&storage_name)?;
        keyring.storage = reg.name.to_owned();
        keyring.cipher = cipher.name().to_owned();
        let mut opts = OpenOptions::new(passphrase).create(true);
        if let Some(c) = self.kdf_cost {
            opts.kdf_cost = c;
        }
        if let Some(p) = self.padding {
            opts.padding = p;
        }
        if reg.needs_page_key {
            sidecar::create_from(reg, cipher, &path, opts, keyring, root).await
        } else {
            let storage = (reg.open)(StorageOptions::at(&path).create(true)).await?;
            Store::join_unlocked(storage, cipher, opts, keyring, root).await
        }
    }

    /// Imports a backup ([`Store::export`]) into a new store at the builder's path, with the
    /// builder's storage (default as for a new store) and cipher (default: the one that made the
    /// backup, or a compiled-in cipher of its format), unlocking it with the builder's passphrase.
    /// So a backup made on `sqlite` + `orion` imports into `sqlcipher` + `sodium`.
    ///
    /// Nothing is left half-written: the passphrase is checked before anything is created, the
    /// rows are written to a temporary store next to the path, and that is moved into place only
    /// when the whole backup has been read and authenticated; on any error (a wrong passphrase,
    /// a truncated file, a flipped byte, a full disk) the path does not exist afterwards and the
    /// temporary files are removed. A store already at the path is [`ErrorKind::Config`].
    pub async fn import(
        self,
        input: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Result<(Store, crate::backup::BackupSummary)> {
        let path = self
            .path
            .clone()
            .ok_or_else(|| Error::invalid("an import needs the path of the new store"))?;
        let passphrase = self
            .passphrase
            .clone()
            .ok_or_else(|| Error::invalid("a passphrase is required"))?;
        let keys_path = sidecar::sidecar_path(&path);
        if path.exists() || keys_path.exists() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "a store already exists at {}; import into a new path",
                    path.display()
                ),
            ));
        }
        let head = crate::backup::read_head(input).await?;
        let cipher = Self::choose_cipher(self.cipher.as_deref(), Some(&head.keyring.cipher))?;
        head.keyring.check_cipher(cipher.as_ref())?;
        // A wrong passphrase stops here, before any file exists.
        let root = head.keyring.unlock(cipher.as_ref(), &passphrase)?;
        let keys = head.keys(cipher.as_ref(), &root)?;
        let storage_name = match &self.storage {
            Some(name) => name.clone(),
            None => Self::default_storage()?,
        };
        let reg = registry::storage(&storage_name)?;
        let mut keyring = head.keyring.clone();
        keyring.storage = reg.name.to_owned();
        keyring.cipher = cipher.name().to_owned();
        let mut opts = OpenOptions::new(passphrase.clone()).create(true);
        if let Some(p) = self.padding {
            opts.padding = p;
        }
        let tmp = import_temp_path(cipher.as_ref(), &path)?;
        let result = async {
            let store = if reg.needs_page_key {
                sidecar::create_from(reg, cipher.clone(), &tmp, opts, keyring, root).await?
            } else {
                let storage = (reg.open)(StorageOptions::at(&tmp).create(true)).await?;
                Store::join_unlocked(storage, cipher.clone(), opts, keyring, root).await?
            };
            let restored = crate::backup::restore(input, &store, &head, &keys).await;
            let closed = store.close().await;
            let summary = restored?;
            closed?;
            move_into_place(&tmp, &path, reg.needs_page_key)?;
            Ok::<_, Error>(summary)
        }
        .await;
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                remove_store_files(&tmp);
                return Err(e);
            }
        };
        let store = StoreBuilder {
            path: Some(path),
            passphrase: Some(passphrase),
            storage: Some(reg.name.to_owned()),
            cipher: Some(cipher.name().to_owned()),
            create: Some(false),
            kdf_cost: None,
            padding: self.padding,
        }
        .open()
        .await?;
        Ok((store, summary))
    }

    /// The cipher to open a store with: the one named, else the one the store records (or, when
    /// that one is not compiled in, a compiled-in cipher of the same format), else the default.
    fn choose_cipher(explicit: Option<&str>, recorded: Option<&str>) -> Result<Arc<dyn Cipher>> {
        if let Some(name) = explicit {
            return Ok((registry::cipher(name)?.make)());
        }
        if let Some(recorded) = recorded {
            if let Ok(reg) = registry::cipher(recorded) {
                return Ok((reg.make)());
            }
            let format = crate::keyring::cipher_format(recorded);
            let mut names = registry::cipher_names();
            // The preferred ciphers first, then the rest in name order.
            names.sort_by_key(|n| ["orion", "sodium"].iter().position(|p| p == n).unwrap_or(2));
            for name in names {
                let cipher = (registry::cipher(name)?.make)();
                if format == Some(cipher.format()) {
                    return Ok(cipher);
                }
            }
            // Not compiled in and nothing compatible: the registry's error names the feature.
            return Ok((registry::cipher(recorded)?.make)());
        }
        let name = Self::pick(None, &["orion", "sodium"], registry::cipher_names()).ok_or_else(|| {
            Error::new(
                ErrorKind::NotCompiledIn,
                "no cipher is compiled in: enable the cargo feature `orion` or `sodium` of hearth",
            )
        })?;
        Ok((registry::cipher(&name)?.make)())
    }

    /// Resolves the names, opens the storage and unlocks the store. For a storage whose
    /// registry entry needs a page key, the key header is read from (or, for a new store,
    /// written to) `<path>.keys` and the page key derived from the root key; see [`sidecar`].
    ///
    /// Names not given are taken from an existing store's key header (`<path>.keys`, or the
    /// storage's metadata), so a store opens with the storage and cipher that made it without
    /// naming them; for a new store they default to the first compiled-in of `sqlite`,
    /// `sqlcipher`, `memory` and of `orion`, `sodium`. A cipher named explicitly need only be
    /// of the same format as the one that made the store.
    pub async fn open(self) -> Result<Store> {
        let passphrase = self
            .passphrase
            .ok_or_else(|| Error::invalid("a passphrase is required"))?;
        let create = self.create.unwrap_or(true);
        // An existing store encrypted at rest names its storage and cipher in `<path>.keys`.
        // Any cipher of the format reads that file (its checksum is a keyed BLAKE2b).
        let recorded = match self.path.as_deref() {
            Some(p) if sidecar::present(Some(p)) => {
                let probe = Self::choose_cipher(self.cipher.as_deref(), None)?;
                sidecar::read(probe.as_ref(), &sidecar::sidecar_path(p))?
            }
            _ => None,
        };
        let storage_name = match (self.storage, &recorded) {
            (Some(name), _) => name,
            (None, Some(ring)) => ring.storage.clone(),
            (None, None) => Self::default_storage()?,
        };
        let storage_reg = registry::storage(&storage_name)?;
        let mut opts = OpenOptions::new(passphrase).create(create);
        if let Some(c) = self.kdf_cost {
            opts.kdf_cost = c;
        }
        if let Some(p) = self.padding {
            opts.padding = p;
        }
        // Storages encrypted at rest keep their key header in a file next to the database.
        if storage_reg.needs_page_key || recorded.is_some() {
            let cipher = Self::choose_cipher(
                self.cipher.as_deref(),
                recorded.as_ref().map(|r| r.cipher.as_str()),
            )?;
            return sidecar::open(storage_reg, cipher, self.path, opts).await;
        }
        let mut storage_opts = StorageOptions::default().create(create);
        storage_opts.path = self.path;
        let storage = (storage_reg.open)(storage_opts).await?;
        let recorded_cipher = match &self.cipher {
            Some(_) => None,
            None => match storage.meta_get(META_KEYRING).await? {
                Some(bytes) => Some(Keyring::decode(&bytes)?.cipher),
                None => None,
            },
        };
        let cipher = Self::choose_cipher(self.cipher.as_deref(), recorded_cipher.as_deref())?;
        Store::open(storage, cipher, opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::{ENVELOPE_HEADER_LEN, EnvelopeIdentity, Opened};
    use crate::cipher::TAG_LEN;
    use crate::model::{DeviceId, RecordId, VersionVector};

    #[test]
    fn opened_versions_are_found_by_header_tag_and_length() {
        let envelope: Vec<u8> = (0..200u8).collect();
        let mut v = VersionVector::default();
        v.set(DeviceId([1; 16]), 7);
        let mut opened = Opened::default();
        let id = RecordId([3; 32]);
        opened.insert(id, &envelope, &v, false);
        assert_eq!(opened.get(&id, &envelope), Some((&v, false)));
        assert_eq!(
            opened.get(&RecordId([4; 32]), &envelope),
            None,
            "another record"
        );
        // Another nonce, another tag or another length is another envelope.
        for changed in [1, ENVELOPE_HEADER_LEN - 1, envelope.len() - 1] {
            let mut other = envelope.clone();
            other[changed] ^= 1;
            assert_eq!(opened.get(&id, &other), None, "byte {changed} changed");
        }
        assert_eq!(opened.get(&id, &envelope[..199]), None, "shorter");
        // Envelopes too short to open still get an identity, without panicking.
        for n in [0, 1, TAG_LEN - 1, ENVELOPE_HEADER_LEN + 1] {
            let short = vec![9u8; n];
            assert!(EnvelopeIdentity::of(&short) == EnvelopeIdentity::of(&short));
            assert_eq!(opened.get(&id, &short), None);
        }
    }
}
