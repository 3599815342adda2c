//! Backups: one versioned, authenticated, encrypted file holding a whole store, written and
//! read as a stream (memory bounded by one chunk, whatever the store's size).
//!
//! ```text
//! "HEARTHBK" (8) | format = 1 (1) | backup id (16) | key header length (u32 LE) | key header
//! chunk*:  ciphertext length (u32 LE) | nonce (24) | ciphertext || tag
//! ```
//!
//! The key header is the store's own (root key wrapped by the passphrase's KEK), so the
//! passphrase opens the backup. Each chunk is sealed with `subkey(root, "hearth.backup" ||
//! backup id)` and AAD `"hearth.backup" || format || backup id || header MAC || chunk index
//! (u64 BE) || last (1 byte)`, where the header MAC is the keyed BLAKE2b (backup key) of every
//! byte before the first chunk, so the clear header is authenticated too: a chunk that is altered, moved, dropped or replayed fails, and a file cut after any
//! chunk but the last is refused because no chunk says it is the last. Chunk plaintext is a
//! postcard list of rows (blind ids, sealed envelopes, flags) and, in the last chunk, the row
//! count. Record contents stay sealed under the space's record keys inside.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::cipher::{Cipher, CipherExt, NONCE_LEN, SecretKey, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::model::{CollectionId, RecordId};
use crate::storage::{Batch, Storage, StoredRecord};
use crate::store::{OpenOptions, Store, WriteBatch};

const MAGIC: &[u8; 8] = b"HEARTHBK";
/// The backup format this build writes.
pub const BACKUP_FORMAT: u8 = 1;
const ROWS_PER_CHUNK: usize = 256;
/// Largest chunk accepted on import (rows are at most ~17 MiB each; chunks hold up to 256).
const MAX_CHUNK: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Row {
    id: RecordId,
    collection: CollectionId,
    #[serde(with = "serde_bytes")]
    envelope: Vec<u8>,
    deleted: bool,
    pending: bool,
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    rows: Vec<Row>,
    /// Set in the last chunk: how many rows the backup holds.
    total: Option<u64>,
}

/// What an export or import did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// Rows (records and tombstones).
    pub rows: u64,
    /// Bytes of the backup file.
    pub bytes: u64,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::corrupt("the backup is truncated"),
        _ => Error::new(ErrorKind::Io, what).with_source(e),
    }
}

fn chunk_aad(backup_id: &[u8; 16], header_mac: &[u8; 32], index: u64, last: bool) -> Vec<u8> {
    let mut aad = b"hearth.backup".to_vec();
    aad.push(BACKUP_FORMAT);
    aad.extend_from_slice(backup_id);
    aad.extend_from_slice(header_mac);
    aad.extend_from_slice(&index.to_be_bytes());
    aad.push(u8::from(last));
    aad
}

fn backup_key(cipher: &dyn Cipher, root: &SecretKey, backup_id: &[u8; 16]) -> Result<SecretKey> {
    let mut ctx = b"hearth.backup".to_vec();
    ctx.extend_from_slice(backup_id);
    cipher.derive_subkey(root, &ctx)
}

impl Store {
    /// Writes a backup of the whole store to `out`, streaming.
    pub async fn export(&self, out: &mut (impl AsyncWrite + Unpin)) -> Result<BackupSummary> {
        let cipher = self.cipher().as_ref();
        let mut backup_id = [0u8; 16];
        cipher.fill_random(&mut backup_id)?;
        let key = backup_key(cipher, self.root_key(), &backup_id)?;
        let header = self.key_backup()?;
        let mut written = 0u64;
        let mut head = Vec::with_capacity(8 + 1 + 16 + 4 + header.len());
        head.extend_from_slice(MAGIC);
        head.push(BACKUP_FORMAT);
        head.extend_from_slice(&backup_id);
        head.extend_from_slice(&(header.len() as u32).to_le_bytes());
        head.extend_from_slice(&header);
        let header_mac = cipher.keyed_hash(&key, &[&head])?;
        out.write_all(&head).await.map_err(io("write backup"))?;
        written += head.len() as u64;

        let mut index = 0u64;
        let mut total = 0u64;
        let mut after: Option<RecordId> = None;
        let mut page = self.storage().scan_all(None, ROWS_PER_CHUNK).await?;
        loop {
            let next = match page.last() {
                Some(last) if page.len() == ROWS_PER_CHUNK => {
                    after = Some(last.id);
                    self.storage()
                        .scan_all(after.as_ref(), ROWS_PER_CHUNK)
                        .await?
                }
                _ => Vec::new(),
            };
            let last = next.is_empty();
            total += page.len() as u64;
            let chunk = Chunk {
                rows: page
                    .into_iter()
                    .map(|r| Row {
                        id: r.id,
                        collection: r.collection,
                        envelope: r.envelope,
                        deleted: r.deleted,
                        pending: r.pending_seq.is_some(),
                    })
                    .collect(),
                total: last.then_some(total),
            };
            let plain = postcard::to_stdvec(&chunk)
                .map_err(|e| Error::internal("backup encoding").with_source(e))?;
            let sealed = cipher.seal_random_nonce(
                &key,
                &chunk_aad(&backup_id, &header_mac, index, last),
                &plain,
            )?;
            let len = u32::try_from(sealed.len() - NONCE_LEN)
                .map_err(|_| Error::internal("backup chunk too large"))?;
            out.write_all(&len.to_le_bytes())
                .await
                .map_err(io("write backup"))?;
            out.write_all(&sealed).await.map_err(io("write backup"))?;
            written += 4 + sealed.len() as u64;
            index += 1;
            if last {
                break;
            }
            page = next;
        }
        out.flush().await.map_err(io("write backup"))?;
        let _ = after;
        Ok(BackupSummary {
            rows: total,
            bytes: written,
        })
    }

    /// Restores a backup into `storage`, which must be empty, as a new device of the same space
    /// (a restored device never reuses the sequence numbers of the one that made the backup).
    /// Local writes that were not yet synced when the backup was made are written again by the
    /// new device, so they sync. `cipher` need only be of the format of the cipher that made the
    /// backup (a backup made with `sodium` imports with `orion` and the reverse).
    ///
    /// A wrong passphrase is [`ErrorKind::WrongPassphrase`] (nothing written), an altered or cut
    /// file [`ErrorKind::Tampered`] or [`ErrorKind::Corrupt`], a newer format
    /// [`ErrorKind::Unsupported`]. On those later errors `storage` may hold part of the rows:
    /// [`StoreBuilder::import`](crate::StoreBuilder::import) imports into a temporary path and
    /// moves it into place only on success, so it leaves nothing half-written; prefer it.
    pub async fn import(
        input: &mut (impl AsyncRead + Unpin),
        storage: Arc<dyn Storage>,
        cipher: Arc<dyn Cipher>,
        options: OpenOptions,
    ) -> Result<(Store, BackupSummary)> {
        let head = read_head(input).await?;
        head.keyring.check_cipher(cipher.as_ref())?;
        // Unlock first: a wrong passphrase writes nothing.
        let root = head
            .keyring
            .unlock(cipher.as_ref(), &options_passphrase(&options))?;
        let keys = head.keys(cipher.as_ref(), &root)?;
        let mut keyring = head.keyring.clone();
        keyring.storage = storage.name().to_owned();
        keyring.cipher = cipher.name().to_owned();
        let store = Store::join_unlocked(storage, cipher, options, keyring, root).await?;
        let summary = restore(input, &store, &head, &keys).await?;
        Ok((store, summary))
    }
}

/// The clear head of a backup: everything before the first chunk.
pub(crate) struct Head {
    backup_id: [u8; 16],
    /// Every byte of the head, as read (MACed into each chunk's AAD).
    bytes: Vec<u8>,
    /// The key header of the store that made the backup.
    pub(crate) keyring: Keyring,
}

/// The backup key and the head's MAC.
pub(crate) struct BackupKeys {
    key: SecretKey,
    header_mac: [u8; 32],
}

impl Head {
    /// The backup's chunk key and header MAC, from the root key the key header unwraps.
    pub(crate) fn keys(&self, cipher: &dyn Cipher, root: &SecretKey) -> Result<BackupKeys> {
        let key = backup_key(cipher, root, &self.backup_id)?;
        let header_mac = cipher.keyed_hash(&key, &[&self.bytes])?;
        Ok(BackupKeys { key, header_mac })
    }
}

/// Reads and checks the clear head of a backup.
pub(crate) async fn read_head(input: &mut (impl AsyncRead + Unpin)) -> Result<Head> {
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .await
        .map_err(io("read backup"))?;
    if &magic != MAGIC {
        return Err(Error::corrupt("not a hearth backup"));
    }
    let mut format = [0u8; 1];
    input
        .read_exact(&mut format)
        .await
        .map_err(io("read backup"))?;
    if format[0] != BACKUP_FORMAT {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "backup format {} is not supported by this build (supports {BACKUP_FORMAT})",
                format[0]
            ),
        ));
    }
    let mut backup_id = [0u8; 16];
    input
        .read_exact(&mut backup_id)
        .await
        .map_err(io("read backup"))?;
    let mut len = [0u8; 4];
    input
        .read_exact(&mut len)
        .await
        .map_err(io("read backup"))?;
    let header_len = u32::from_le_bytes(len) as usize;
    if header_len > 64 * 1024 {
        return Err(Error::corrupt("backup key header is implausibly large"));
    }
    let mut header = vec![0u8; header_len];
    input
        .read_exact(&mut header)
        .await
        .map_err(io("read backup"))?;
    let keyring = Keyring::decode(&header)?;
    let mut bytes = Vec::with_capacity(8 + 1 + 16 + 4 + header_len);
    bytes.extend_from_slice(MAGIC);
    bytes.push(BACKUP_FORMAT);
    bytes.extend_from_slice(&backup_id);
    bytes.extend_from_slice(&len);
    bytes.extend_from_slice(&header);
    Ok(Head {
        backup_id,
        bytes,
        keyring,
    })
}

/// Reads the chunks of a backup whose head was read into `store` (new and empty).
pub(crate) async fn restore(
    input: &mut (impl AsyncRead + Unpin),
    store: &Store,
    head: &Head,
    keys: &BackupKeys,
) -> Result<BackupSummary> {
    let cipher = store.cipher().as_ref();
    let storage = store.storage();
    let mut bytes = head.bytes.len() as u64;
    let mut index = 0u64;
    let mut rows = 0u64;
    let mut pending: Vec<RecordId> = Vec::new();
    loop {
        let mut len = [0u8; 4];
        input
            .read_exact(&mut len)
            .await
            .map_err(io("read backup"))?;
        let ct_len = u32::from_le_bytes(len) as usize;
        if !(TAG_LEN..=MAX_CHUNK).contains(&ct_len) {
            return Err(Error::corrupt("backup chunk length is out of range"));
        }
        let mut sealed = vec![0u8; NONCE_LEN + ct_len];
        input
            .read_exact(&mut sealed)
            .await
            .map_err(io("read backup"))?;
        bytes += 4 + sealed.len() as u64;
        // The last flag is inside the AAD: try "not last", then "last".
        let aad = |last| chunk_aad(&head.backup_id, &keys.header_mac, index, last);
        let (plain, last) = match cipher.open_random_nonce(&keys.key, &aad(false), &sealed) {
            Ok(p) => (p, false),
            Err(_) => (
                cipher.open_random_nonce(&keys.key, &aad(true), &sealed)?,
                true,
            ),
        };
        let chunk: Chunk = postcard::from_bytes(&plain)?;
        if chunk.total.is_some() != last {
            return Err(Error::corrupt("backup chunk marks disagree"));
        }
        rows += chunk.rows.len() as u64;
        let puts: Vec<StoredRecord> = chunk
            .rows
            .into_iter()
            .map(|r| {
                if r.pending {
                    pending.push(r.id);
                }
                StoredRecord {
                    id: r.id,
                    collection: r.collection,
                    envelope: r.envelope,
                    deleted: r.deleted,
                    pending_seq: None,
                    sync: Vec::new(),
                }
            })
            .collect();
        storage
            .commit(Batch {
                puts,
                // Rows written below the store: its state digest is computed afresh when next
                // needed (engine::head).
                meta: vec![(crate::engine::head::META_DIGEST.to_owned(), None)],
                ..Batch::default()
            })
            .await?;
        index += 1;
        if last {
            if chunk.total != Some(rows) {
                return Err(Error::corrupt(
                    "the backup's row count does not match its rows",
                ));
            }
            let mut trailing = [0u8; 1];
            if input.read(&mut trailing).await.map_err(io("read backup"))? != 0 {
                return Err(Error::corrupt("data follows the end of the backup"));
            }
            break;
        }
    }
    // Unsynced writes of the old device become this device's writes, so they sync.
    for ids in pending.chunks(256) {
        let rows = storage.get_many(ids).await?;
        let mut batch = WriteBatch::new();
        for row in rows.into_iter().flatten() {
            let rec = store.open_row(&row)?;
            match rec.value {
                Some(v) => {
                    batch.put(rec.collection, rec.key, &v)?;
                }
                None => {
                    // Re-deleting needs a live row: write the tombstone as a fresh delete.
                    batch.put(
                        rec.collection.clone(),
                        rec.key.clone(),
                        &serde_json::Value::Null,
                    )?;
                    batch.delete(rec.collection, rec.key);
                }
            }
        }
        store.write(batch).await?;
    }
    Ok(BackupSummary { rows, bytes })
}

fn options_passphrase(options: &OpenOptions) -> crate::cipher::Passphrase {
    options.passphrase().clone()
}
