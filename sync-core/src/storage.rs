//! The `Storage` trait: where a device keeps its sealed records, its outbox and its metadata.
//!
//! Storage sees only opaque bytes: blind ids and sealed envelopes. It never holds a key and never
//! sees a collection name, a record key or a value. The store above it decides what to write; the
//! storage's job is to make each [`Batch`] durable atomically and to read back without loading a
//! whole collection.

use std::fmt;
use std::path::PathBuf;

use async_trait::async_trait;

use crate::cipher::SecretKey;
use crate::error::Result;
use crate::model::{CollectionId, RecordId};

/// The items of a batch with only the last of several for one id kept, in the order of those
/// last ones: what applying them one after the other would leave, and the order in which a
/// storage numbers the new records among them ([`Storage::scan`]). Storages apply
/// [`Batch::puts`] (and [`Batch::syncs`]) through this; a batch without repeated ids comes
/// back as it was.
pub fn last_per_id<T>(items: Vec<T>, id: impl Fn(&T) -> RecordId) -> Vec<T> {
    let mut last = std::collections::HashMap::with_capacity(items.len());
    for (i, r) in items.iter().enumerate() {
        last.insert(id(r), i);
    }
    if last.len() == items.len() {
        return items;
    }
    items
        .into_iter()
        .enumerate()
        .filter(|(i, r)| last.get(&id(r)) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

/// What a storage implementation supports. The conformance suite reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Data survives closing and reopening (false for the in-memory storage).
    pub persistent: bool,
    /// The whole file is encrypted at rest (SQLCipher); the store must pass a page key.
    pub encrypted_at_rest: bool,
}

impl Capabilities {
    /// Capabilities with every flag set as given.
    pub const fn new(persistent: bool, encrypted_at_rest: bool) -> Self {
        Self {
            persistent,
            encrypted_at_rest,
        }
    }
}

/// A record's position in its collection's [`Storage::scan`] order: where a walk over the
/// collection resumes. Meaningful only to the storage that returned it; it says nothing about
/// the record's id, key or contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScanPos(pub u64);

/// A record row as storage keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Blind record id (primary key).
    pub id: RecordId,
    /// Blind collection id.
    pub collection: CollectionId,
    /// The sealed envelope of the current version.
    pub envelope: Vec<u8>,
    /// True when the current version is a tombstone (lets scans skip deletes undecrypted).
    pub deleted: bool,
    /// The device sequence of a local write not yet acknowledged by the server, if any.
    pub pending_seq: Option<u64>,
    /// The sync engine's bookkeeping for this record (server sequences it replaces, a kept
    /// ancestor, unresolved siblings). Opaque to storage; contains no plaintext (siblings and
    /// ancestors are sealed envelopes).
    pub sync: Vec<u8>,
}

impl fmt::Debug for StoredRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredRecord")
            .field("id", &self.id)
            .field("collection", &self.collection)
            .field("envelope_len", &self.envelope.len())
            .field("deleted", &self.deleted)
            .field("pending_seq", &self.pending_seq)
            .field("sync_len", &self.sync.len())
            .finish()
    }
}

/// A stored row without its envelope: what an outbox acknowledgement reads
/// ([`Storage::get_states`]) before it rewrites the row's bookkeeping ([`Batch::syncs`]).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RowState {
    /// True when the current version is a tombstone.
    pub deleted: bool,
    /// The device sequence of a local write not yet acknowledged by the server, if any.
    pub pending_seq: Option<u64>,
    /// The sync engine's bookkeeping ([`StoredRecord::sync`]).
    pub sync: Vec<u8>,
}

impl From<StoredRecord> for RowState {
    fn from(r: StoredRecord) -> Self {
        Self {
            deleted: r.deleted,
            pending_seq: r.pending_seq,
            sync: r.sync,
        }
    }
}

/// One local write waiting to be pushed: the record's current envelope and the device sequence
/// of the write that produced it. A record rewritten before it was pushed has one entry, the newest.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutboxEntry {
    /// Device sequence number of the write.
    pub seq: u64,
    /// The record as stored.
    pub record: StoredRecord,
}

/// An atomic unit of change: all of it becomes durable, or none of it.
#[derive(Clone, Default, Debug)]
pub struct Batch {
    /// Expected metadata values, checked inside the transaction. If any differs, the whole batch
    /// fails with [`ErrorKind::Conflict`](crate::ErrorKind::Conflict) and nothing is written.
    /// The store uses this to detect a second process writing the same store.
    pub guards: Vec<(String, Option<Vec<u8>>)>,
    /// Rows to insert or replace. A record's collection never changes (its blind id is derived
    /// from the collection), so a storage may keep the stored collection when it replaces a row.
    pub puts: Vec<StoredRecord>,
    /// Rows to remove entirely (garbage-collected tombstones).
    pub removes: Vec<RecordId>,
    /// Outbox acknowledgements: clears `pending_seq` of a record if it still equals `seq`.
    pub acks: Vec<(RecordId, u64)>,
    /// Bookkeeping to set on rows that exist ([`StoredRecord::sync`]), leaving their envelope
    /// and everything else as stored; a row that does not exist is left alone. Applied after
    /// `puts` and `removes`: what acknowledging a push changes, without moving the envelopes.
    pub syncs: Vec<(RecordId, Vec<u8>)>,
    /// Metadata to set (`Some`) or delete (`None`).
    pub meta: Vec<(String, Option<Vec<u8>>)>,
}

impl Batch {
    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.puts.is_empty()
            && self.removes.is_empty()
            && self.acks.is_empty()
            && self.syncs.is_empty()
            && self.meta.is_empty()
    }

    /// Roughly the bytes of rows the batch's puts write (envelopes and bookkeeping): what a
    /// storage's background WAL checkpointer counts. Acknowledgements, bookkeeping alone and
    /// metadata rewrite a few dozen bytes a row and are left out: counted, they asked for a
    /// checkpoint every few pushes, each with two syncs, for a WAL of a few pages.
    pub fn put_bytes(&self) -> u64 {
        self.puts
            .iter()
            .map(|r| (r.envelope.len() + r.sync.len()) as u64)
            .sum()
    }
}

/// Options a storage is opened with.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct StorageOptions {
    /// File path for persistent storages.
    pub path: Option<PathBuf>,
    /// Create the store if it does not exist. When false a missing store is
    /// [`ErrorKind::NotFound`](crate::ErrorKind::NotFound).
    pub create: bool,
    /// Page key for storages encrypted at rest: a subkey of the root key, never the passphrase.
    pub page_key: Option<SecretKey>,
}

impl StorageOptions {
    /// Options for the store at `path`.
    pub fn at(path: impl Into<PathBuf>) -> Self {
        Self {
            path: Some(path.into()),
            ..Self::default()
        }
    }

    /// Sets whether a missing store is created.
    #[must_use]
    pub fn create(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// Sets the page key.
    #[must_use]
    pub fn page_key(mut self, key: Option<SecretKey>) -> Self {
        self.page_key = key;
        self
    }
}

/// Durable local storage of sealed records, outbox and metadata.
///
/// Object-safe and used as `Arc<dyn Storage>`. Implementations must make [`Storage::commit`]
/// atomic and must never load a whole collection to answer a read.
#[async_trait]
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// The registry name of the implementation.
    fn name(&self) -> &'static str;

    /// What this storage supports.
    fn capabilities(&self) -> Capabilities;

    /// The record with blind id `id`, tombstones included.
    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>>;

    /// The records with the given ids, in the same order (`None` where absent). Implementations
    /// should answer in few round trips; the default asks one id at a time.
    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.get(id).await?);
        }
        Ok(out)
    }

    /// [`Storage::get_many`] for a caller that is about to commit a batch replacing some of these
    /// rows (a local write, or the sync engine applying a pulled page, each under the store's
    /// writer lock). A storage whose commits run on a connection of their own may answer on
    /// that connection, whose page cache holds the pages the commit will then write, where a
    /// reader's would have to read them again; the answer must be the same as `get_many`'s.
    /// The default is `get_many`.
    async fn get_many_for_commit(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        self.get_many(ids).await
    }

    /// The state of the rows with the given ids without their envelopes, in the same order
    /// (`None` where absent). Storages that keep rows whole may read less than
    /// [`Storage::get_many`] here; the default is `get_many`.
    async fn get_states(&self, ids: &[RecordId]) -> Result<Vec<Option<RowState>>> {
        Ok(self
            .get_many(ids)
            .await?
            .into_iter()
            .map(|r| r.map(RowState::from))
            .collect())
    }

    /// Up to `limit` records of `collection` whose positions are after `after` (from the
    /// start without one), in the order of their positions, each with its position.
    /// Tombstones are included only when `include_deleted`.
    ///
    /// A record's [`ScanPos`] is given when it is first stored, greater than that of every
    /// record stored then (within a batch, in the order of its puts, an id put twice counting
    /// at its last put), and kept for as long as the record is stored: a replacement or a
    /// tombstone does not move it. So a walk resumed after a position goes on where it was,
    /// also when the record at that position has been removed since; a record stored during
    /// the walk may or may not be seen by it. Storing a collection's records in the order they
    /// arrive (not by random blind id) keeps its index growing at one end as a large pull
    /// writes it.
    async fn scan(
        &self,
        collection: &CollectionId,
        after: Option<ScanPos>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<(ScanPos, StoredRecord)>>;

    /// Up to `limit` records of every collection with ids strictly after `after`, ordered by id,
    /// tombstones included: for maintenance walks (re-sync sweeps, tombstone collection).
    async fn scan_all(&self, after: Option<&RecordId>, limit: usize) -> Result<Vec<StoredRecord>>;

    /// Up to `limit` pending local writes with sequence numbers above `after_seq`, in order.
    async fn outbox(&self, after_seq: u64, limit: usize) -> Result<Vec<OutboxEntry>>;

    /// Number of pending local writes.
    async fn outbox_len(&self) -> Result<u64>;

    /// A metadata value.
    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Applies `batch` atomically.
    async fn commit(&self, batch: Batch) -> Result<()>;

    /// Checks the integrity of the underlying files. The default reports nothing wrong.
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    /// Re-encrypts every page of a storage encrypted at rest under a new page key, in one
    /// transaction: a crash at any point leaves a file that exactly one of the old and the new
    /// key opens, whole. On success this handle goes on with the new key. If the re-key fails
    /// part-way the handle is closed (its key state is no longer known) and the error says so;
    /// reopen with either key to find which one the file is under.
    ///
    /// Used by root-key rotation, whose page key is derived from the root key. Storages not
    /// encrypted at rest return [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported), the
    /// default.
    async fn rekey(&self, page_key: &SecretKey) -> Result<()> {
        let _ = page_key;
        Err(crate::Error::new(
            crate::ErrorKind::Unsupported,
            format!("storage '{}' has no page key to change", self.name()),
        ))
    }

    /// Flushes and releases the storage. Further calls fail. The default does nothing.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn _object_safe(_: &dyn Storage) {}
