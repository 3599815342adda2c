//! An in-memory [`Storage`] for tests and simulations. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{CollectionId, RecordId};
use crate::storage::{
    Batch, Capabilities, OutboxEntry, ScanPos, Storage, StorageOptions, StoredRecord, last_per_id,
};

/// Storage held in memory: the same semantics as the persistent ones, without a disk.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<RecordId, StoredRecord>,
    /// Each stored record's scan position.
    positions: HashMap<RecordId, u64>,
    /// Scan order: (collection, position) → record.
    by_collection: BTreeMap<(CollectionId, u64), RecordId>,
    /// The position the next new record gets.
    next_pos: u64,
    outbox: BTreeMap<u64, RecordId>,
    meta: HashMap<String, Vec<u8>>,
    closed: bool,
}

impl MemoryStorage {
    /// Registry name.
    pub const NAME: &'static str = "memory";

    /// An empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        let g = self
            .inner
            .lock()
            .map_err(|_| Error::internal("memory storage lock poisoned"))?;
        if g.closed {
            return Err(Error::new(ErrorKind::Storage, "storage is closed"));
        }
        Ok(g)
    }
}

impl Inner {
    fn remove_row(&mut self, id: &RecordId) {
        if let Some(old) = self.records.remove(id) {
            if let Some(pos) = self.positions.remove(id) {
                self.by_collection.remove(&(old.collection, pos));
            }
            if let Some(seq) = old.pending_seq {
                self.outbox.remove(&seq);
            }
        }
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::new(false, false)
    }

    async fn get(&self, id: &RecordId) -> Result<Option<StoredRecord>> {
        Ok(self.lock()?.records.get(id).cloned())
    }

    async fn get_many(&self, ids: &[RecordId]) -> Result<Vec<Option<StoredRecord>>> {
        let g = self.lock()?;
        Ok(ids.iter().map(|id| g.records.get(id).cloned()).collect())
    }

    async fn scan(
        &self,
        collection: &CollectionId,
        after: Option<ScanPos>,
        limit: usize,
        include_deleted: bool,
    ) -> Result<Vec<(ScanPos, StoredRecord)>> {
        let g = self.lock()?;
        let start = match after {
            Some(ScanPos(u64::MAX)) => return Ok(Vec::new()),
            Some(ScanPos(p)) => p + 1,
            None => 0,
        };
        let out = g
            .by_collection
            .range((*collection, start)..)
            .take_while(|((c, _), _)| c == collection)
            .filter_map(|((_, pos), id)| g.records.get(id).map(|r| (ScanPos(*pos), r)))
            .filter(|(_, r)| include_deleted || !r.deleted)
            .take(limit)
            .map(|(pos, r)| (pos, r.clone()))
            .collect();
        Ok(out)
    }

    async fn scan_all(&self, after: Option<&RecordId>, limit: usize) -> Result<Vec<StoredRecord>> {
        let g = self.lock()?;
        let mut ids: Vec<&RecordId> = g
            .records
            .keys()
            .filter(|id| after.is_none_or(|a| *id > a))
            .collect();
        ids.sort_unstable();
        Ok(ids
            .into_iter()
            .take(limit)
            .filter_map(|id| g.records.get(id).cloned())
            .collect())
    }

    async fn outbox(&self, after_seq: u64, limit: usize) -> Result<Vec<OutboxEntry>> {
        let g = self.lock()?;
        let out = g
            .outbox
            .range(after_seq.saturating_add(1)..)
            .take(limit)
            .filter_map(|(seq, id)| {
                g.records.get(id).map(|r| OutboxEntry {
                    seq: *seq,
                    record: r.clone(),
                })
            })
            .collect();
        Ok(out)
    }

    async fn outbox_len(&self) -> Result<u64> {
        Ok(self.lock()?.outbox.len() as u64)
    }

    async fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.meta.get(key).cloned())
    }

    async fn commit(&self, batch: Batch) -> Result<()> {
        let mut g = self.lock()?;
        // Guards are the only way a batch can fail; after they pass, every step below is
        // infallible, so the batch applies whole.
        for (k, expected) in &batch.guards {
            if g.meta.get(k) != expected.as_ref() {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the store was changed by another writer; reopen it",
                ));
            }
        }
        for rec in last_per_id(batch.puts, |r| r.id) {
            let pos = match g.positions.get(&rec.id) {
                Some(&pos) => pos,
                None => {
                    let pos = g.next_pos;
                    g.next_pos += 1;
                    pos
                }
            };
            g.remove_row(&rec.id);
            g.positions.insert(rec.id, pos);
            g.by_collection.insert((rec.collection, pos), rec.id);
            if let Some(seq) = rec.pending_seq {
                g.outbox.insert(seq, rec.id);
            }
            g.records.insert(rec.id, rec);
        }
        for id in &batch.removes {
            g.remove_row(id);
        }
        for (id, seq) in &batch.acks {
            if let Some(r) = g.records.get_mut(id)
                && r.pending_seq == Some(*seq)
            {
                r.pending_seq = None;
                g.outbox.remove(seq);
            }
        }
        for (id, sync) in batch.syncs {
            if let Some(r) = g.records.get_mut(&id) {
                r.sync = sync;
            }
        }
        for (k, v) in batch.meta {
            match v {
                Some(v) => g.meta.insert(k, v),
                None => g.meta.remove(&k),
            };
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.lock()?.closed = true;
        Ok(())
    }
}

crate::register_storage!(MemoryStorage::NAME, |_opts: StorageOptions| {
    Box::pin(async { Ok(Arc::new(MemoryStorage::new()) as Arc<dyn Storage>) })
});

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_storage_conformance_suite() {
        crate::testkit::storage_suite(|| async {
            Ok(Arc::new(MemoryStorage::new()) as Arc<dyn Storage>)
        })
        .await;
    }
}
