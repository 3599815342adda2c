//! The key header of a store encrypted at rest, kept in a sidecar file next to its database.
//!
//! A storage whose registry entry says `needs_page_key` (SQLCipher) cannot be read at all before
//! it has its page key, and the page key is derived from the root key that the key header wraps.
//! So for those storages the key header lives beside the database, at `<path>.keys`:
//!
//! 1. [`StoreBuilder::open`](super::StoreBuilder::open) reads `<path>.keys`, checks that the
//!    storage it names is the one asked for and that the cipher asked for reads the format of
//!    the one it names ([`ErrorKind::Config`] otherwise), and
//!    unlocks the root key with the passphrase ([`ErrorKind::WrongPassphrase`] otherwise; nothing
//!    is written). A new store gets a new key header, written atomically before the database
//!    exists.
//! 2. The page key is `derive_subkey(root, "hearth.sqlcipher-page-key")` ([`page_key`]), passed
//!    to the storage in [`StorageOptions::page_key`]. The passphrase never reaches the storage.
//! 3. The database's metadata binds it to its key header ([`META_SIDECAR_BINDING`]: space id
//!    and root-key fingerprint), so a key header file from another store is refused, and
//!    [`Store::open`](super::Store::open) refuses a store whose key header is in a sidecar rather
//!    than creating a second key header inside it.
//!
//! File format (version 1), every field fixed or length-prefixed:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "HRTHKEYS"
//! 8       1     sidecar format = 1
//! 9       4     n = length of the key header, u32 big-endian
//! 13      n     the key header (postcard, format 1: the same bytes as metadata `hearth.keyring`)
//! 13+n    32    checksum: BLAKE2b-256 keyed with 32 zero bytes over bytes 0 .. 13+n
//! ```
//!
//! The checksum is not a secret and authenticates nothing (the wrapped root key is authenticated
//! by its own AEAD tag): it tells a damaged file ([`ErrorKind::Corrupt`]) from a wrong passphrase,
//! which a user would otherwise keep retyping.
//!
//! The file is first written when the store is created: to a temporary file in the same
//! directory, `fsync`ed, then hard-linked into place (which fails if a file is already there, so
//! two processes creating one store at the same moment cannot both win), and the directory is
//! `fsync`ed. Where the file system has no hard links it falls back to a rename after checking
//! that no key header exists.
//!
//! A passphrase change or a new recovery code replaces it ([`replace`]): under an advisory lock on
//! `<path>.keys.lock`, the file is checked to still hold the key header the store opened with
//! ([`ErrorKind::Conflict`] otherwise), the new one is written to a temporary file, `fsync`ed and
//! renamed over it, and the directory is `fsync`ed. Both headers wrap the same root key, so the
//! page key and the database are untouched, and a crash leaves one of the two, each of which
//! unlocks the store with its own passphrase.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::cipher::{Cipher, CipherExt, KEY_LEN, SecretKey};
use crate::error::{Error, ErrorKind, Result};
use crate::keyring::Keyring;
use crate::model::{DeviceId, HlcClock, SpaceId};
use crate::registry::StorageRegistration;
use crate::storage::{Batch, Storage, StorageOptions};

use super::{DeviceState, META_DEVICE, META_KEYRING, OpenOptions, Store, encode_state};

/// Suffix of the key header file: the store at `app.db` has its key header at `app.db.keys`.
pub const SIDECAR_SUFFIX: &str = ".keys";
/// First bytes of a key header file.
pub const SIDECAR_MAGIC: &[u8; 8] = b"HRTHKEYS";
/// The key header file format this build writes.
pub const SIDECAR_FORMAT: u8 = 1;
/// Context of the page key: `derive_subkey(root, PAGE_KEY_CONTEXT)`.
pub const PAGE_KEY_CONTEXT: &[u8] = b"hearth.sqlcipher-page-key";
/// Metadata key, inside the encrypted database, binding it to its key header:
/// `space id (16) || root-key fingerprint (32)`.
pub const META_SIDECAR_BINDING: &str = "hearth.keyring.sidecar";

/// Largest key header file read (a real one is about 200 bytes).
const MAX_SIDECAR_LEN: u64 = 64 * 1024;
const PREFIX_LEN: usize = 8 + 1 + 4;
const CHECKSUM_LEN: usize = 32;

/// Where the key header of the store at `db` lives.
pub fn sidecar_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push(SIDECAR_SUFFIX);
    PathBuf::from(s)
}

/// The page key of a store encrypted at rest: `derive_subkey(root, "hearth.sqlcipher-page-key")`.
pub fn page_key(cipher: &dyn Cipher, root: &SecretKey) -> Result<SecretKey> {
    cipher.derive_subkey(root, PAGE_KEY_CONTEXT)
}

fn checksum(cipher: &dyn Cipher, bytes: &[u8]) -> Result<[u8; CHECKSUM_LEN]> {
    cipher.keyed_hash(&SecretKey::from_bytes([0u8; KEY_LEN]), &[bytes])
}

/// Encodes a key header file.
pub fn encode(cipher: &dyn Cipher, keyring: &Keyring) -> Result<Vec<u8>> {
    let header = keyring.encode()?;
    let n = u32::try_from(header.len()).map_err(|_| Error::internal("key header too large"))?;
    let mut out = Vec::with_capacity(PREFIX_LEN + header.len() + CHECKSUM_LEN);
    out.extend_from_slice(SIDECAR_MAGIC);
    out.push(SIDECAR_FORMAT);
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&header);
    let sum = checksum(cipher, &out)?;
    out.extend_from_slice(&sum);
    Ok(out)
}

/// Decodes a key header file: [`ErrorKind::Corrupt`] for anything damaged or not a key header
/// file, [`ErrorKind::Unsupported`] for a newer format.
pub fn decode(cipher: &dyn Cipher, bytes: &[u8]) -> Result<Keyring> {
    if bytes.len() < PREFIX_LEN + CHECKSUM_LEN || &bytes[..8] != SIDECAR_MAGIC {
        return Err(Error::corrupt(
            "the key header file is not one hearth wrote",
        ));
    }
    if bytes[8] != SIDECAR_FORMAT {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "key header file format {} is newer than this build supports",
                bytes[8]
            ),
        ));
    }
    let n = u32::from_be_bytes([bytes[9], bytes[10], bytes[11], bytes[12]]) as usize;
    let body_end = PREFIX_LEN
        .checked_add(n)
        .filter(|end| end.checked_add(CHECKSUM_LEN) == Some(bytes.len()))
        .ok_or_else(|| Error::corrupt("the key header file is truncated or has trailing bytes"))?;
    if checksum(cipher, &bytes[..body_end])? != bytes[body_end..] {
        return Err(Error::corrupt(
            "the key header file is damaged (its checksum does not match)",
        ));
    }
    Keyring::decode(&bytes[PREFIX_LEN..body_end])
}

pub(crate) fn io_error(what: String, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::StorageFull => ErrorKind::StorageFull,
        _ => ErrorKind::Io,
    };
    Error::new(kind, what).with_source(e)
}

/// Reads the key header file at `path`; `None` when there is none.
pub fn read(cipher: &dyn Cipher, path: &Path) -> Result<Option<Keyring>> {
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(format!("cannot read {}", path.display()), e)),
    };
    if len > MAX_SIDECAR_LEN {
        return Err(Error::corrupt(format!(
            "{} is too large to be a key header file",
            path.display()
        )));
    }
    let bytes =
        fs::read(path).map_err(|e| io_error(format!("cannot read {}", path.display()), e))?;
    decode(cipher, &bytes).map(Some)
}

/// Writes a new key header file at `path`, atomically and durably. An existing file is never
/// replaced: that is [`ErrorKind::Conflict`].
pub fn write_new(cipher: &dyn Cipher, path: &Path, keyring: &Keyring) -> Result<()> {
    let bytes = encode(cipher, keyring)?;
    let dir = parent_dir(path);
    if !dir.is_dir() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("directory {} does not exist", dir.display()),
        ));
    }
    let tmp = temp_name(cipher, &dir, path)?;
    let result = write_tmp_then_link(&tmp, path, &bytes);
    // The temporary name is gone after a successful rename; otherwise remove it.
    let _ = fs::remove_file(&tmp);
    result?;
    sync_dir(&dir)
}

/// Where the lock that serialises changes of the key header file at `keys` lives.
pub fn lock_path(keys: &Path) -> PathBuf {
    let mut s = keys.as_os_str().to_owned();
    s.push(".lock");
    PathBuf::from(s)
}

/// Replaces the key header file at `path`, which must hold `old`, with `new`: atomically (a
/// temporary file in the same directory, `fsync`ed, renamed over the old one, then the directory
/// `fsync`ed), so a crash at any point leaves either the old file or the new one, and each
/// unlocks the store with its passphrase (both wrap the same root key).
///
/// Changes are serialised by an advisory lock on `<path>.lock` (released by the operating
/// system if the process dies). A file that no longer holds `old` (another process changed the
/// passphrase meanwhile) or a lock held by another process is [`ErrorKind::Conflict`], and
/// nothing is written.
pub fn replace(cipher: &dyn Cipher, path: &Path, old: &Keyring, new: &Keyring) -> Result<()> {
    let bytes = encode(cipher, new)?;
    let dir = parent_dir(path);
    let lock_file = lock_path(path);
    let mut lock_opts = fs::OpenOptions::new();
    lock_opts
        .read(true)
        .write(true)
        .create(true)
        .truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        lock_opts.mode(0o600);
    }
    let lock = lock_opts
        .open(&lock_file)
        .map_err(|e| io_error(format!("cannot open {}", lock_file.display()), e))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(Error::new(
                ErrorKind::Conflict,
                "another process is changing this store's key header; try again",
            ));
        }
        Err(fs::TryLockError::Error(e)) => {
            return Err(io_error(format!("cannot lock {}", lock_file.display()), e));
        }
    }
    let current = read(cipher, path)?.ok_or_else(|| {
        Error::new(
            ErrorKind::NotFound,
            format!("the key header file {} is gone", path.display()),
        )
    })?;
    if current.encode()? != old.encode()? {
        return Err(Error::new(
            ErrorKind::Conflict,
            "the key header file was changed by another process (a passphrase change or recovery code?); open the store again",
        ));
    }
    let tmp = temp_name(cipher, &dir, path)?;
    let result = write_tmp(&tmp, &bytes).and_then(|()| {
        fs::rename(&tmp, path)
            .map_err(|e| io_error(format!("cannot replace {}", path.display()), e))
    });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(&dir)?;
    drop(lock);
    Ok(())
}

pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn temp_name(cipher: &dyn Cipher, dir: &Path, path: &Path) -> Result<PathBuf> {
    let mut tag = [0u8; 8];
    cipher.fill_random(&mut tag)?;
    let name = path
        .file_name()
        .ok_or_else(|| Error::invalid("the store path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    Ok(dir.join(tmp_name))
}

/// Writes `bytes` to a new file at `tmp` (mode 0600 on Unix) and `fsync`s it.
fn write_tmp(tmp: &Path, bytes: &[u8]) -> Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The key header holds only wrapped keys, but it is nobody else's business.
        opts.mode(0o600);
    }
    let mut f = opts
        .open(tmp)
        .map_err(|e| io_error(format!("cannot create {}", tmp.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(format!("cannot write {}", tmp.display()), e))
}

fn write_tmp_then_link(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    write_tmp(tmp, bytes)?;
    let exists = || {
        Error::new(
            ErrorKind::Conflict,
            format!(
                "{} appeared while this store was being created (another process?); open it again",
                path.display()
            ),
        )
    };
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
        Err(_) => {
            // No hard links here (some FAT and network file systems): rename instead.
            if path.exists() {
                return Err(exists());
            }
            fs::rename(tmp, path)
                .map_err(|e| io_error(format!("cannot create {}", path.display()), e))
        }
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io_error(format!("cannot sync directory {}", dir.display()), e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn binding(keyring: &Keyring) -> Vec<u8> {
    binding_of(&keyring.space, &keyring.fingerprint)
}

fn binding_of(space: &SpaceId, fingerprint: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(SpaceId::LEN + fingerprint.len());
    b.extend_from_slice(space.as_bytes());
    b.extend_from_slice(fingerprint);
    b
}

/// True when a key header file exists next to `db`.
pub(super) fn present(db: Option<&Path>) -> bool {
    db.is_some_and(|p| sidecar_path(p).exists())
}

/// Refuses to treat a store whose key header lives in a sidecar file as one without a key
/// header (which [`Store::open`] would otherwise create inside it).
pub(super) async fn refuse_sidecar_store(storage: &dyn Storage) -> Result<()> {
    if storage.meta_get(META_SIDECAR_BINDING).await?.is_some() {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "this store keeps its key header in a file next to it (`<path>{SIDECAR_SUFFIX}`); open it with Store::builder()"
            ),
        ));
    }
    Ok(())
}

fn plaintext_sqlite(path: &Path) -> bool {
    use std::io::Read;
    let mut header = [0u8; 16];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .is_ok()
        && &header == b"SQLite format 3\0"
}

/// Opens (or creates) the store at `path` whose key header lives in a sidecar file.
pub(super) async fn open(
    reg: StorageRegistration,
    cipher: Arc<dyn Cipher>,
    path: Option<PathBuf>,
    options: OpenOptions,
) -> Result<Store> {
    let path = path.ok_or_else(|| {
        Error::invalid(format!(
            "storage '{}' keeps its data in a file: set a path",
            reg.name
        ))
    })?;
    let keys_path = sidecar_path(&path);
    let mut existing = read(cipher.as_ref(), &keys_path)?;
    if existing.is_none()
        && fs::metadata(&path).is_ok_and(|m| m.len() > 0)
        && !plaintext_sqlite(&path)
    {
        existing =
            claim_import_key_header(reg, cipher.as_ref(), &path, &options.passphrase).await?;
    }
    let mut created = false;
    let (keyring, root) = match existing {
        Some(ring) => {
            ring.check_storage(reg.name)?;
            ring.check_cipher(cipher.as_ref())?;
            let root = ring.unlock(cipher.as_ref(), &options.passphrase)?;
            (ring, root)
        }
        None => {
            if fs::metadata(&path).is_ok_and(|m| m.len() > 0) {
                if plaintext_sqlite(&path) {
                    return Err(Error::new(
                        ErrorKind::Config,
                        format!(
                            "{} is a plaintext SQLite file (a store made with storage 'sqlite'?), not a '{}' store",
                            path.display(),
                            reg.name
                        ),
                    ));
                }
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the store at {} has no key header file {}; it cannot be opened without it (restore it from a backup)",
                        path.display(),
                        keys_path.display()
                    ),
                ));
            }
            if !options.create {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    "no hearth store here; create one first",
                ));
            }
            let mut space = [0u8; SpaceId::LEN];
            cipher.fill_random(&mut space)?;
            let (ring, root) = Keyring::create(
                cipher.as_ref(),
                &options.passphrase,
                options.kdf_cost,
                SpaceId(space),
                reg.name,
            )?;
            write_new(cipher.as_ref(), &keys_path, &ring)?;
            created = true;
            (ring, root)
        }
    };
    open_unlocked(
        reg, cipher, &path, keys_path, options, keyring, root, created,
    )
    .await
}

/// Finishes an import that stopped between moving the database into place and moving its key
/// header file (`StoreBuilder::import` moves the database from `.<name>.import-<hex>` to
/// `<name>`, then `.<name>.import-<hex>.keys` to `<name>.keys`). A key header file left under
/// such a temporary name is claimed only if the passphrase unlocks it and the database's own
/// binding names it (so a stray file from another import is never attached to this store); it
/// is then linked into place and its temporary name removed. `None` when there is no such file.
async fn claim_import_key_header(
    reg: StorageRegistration,
    cipher: &dyn Cipher,
    path: &Path,
    passphrase: &crate::cipher::Passphrase,
) -> Result<Option<Keyring>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    let prefix = format!(".{name}.import-");
    let dir = parent_dir(path);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => return Err(io_error(format!("cannot list {}", dir.display()), e)),
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(&prefix))
                .and_then(|rest| rest.strip_suffix(SIDECAR_SUFFIX))
                .is_some_and(|tag| tag.len() == 16 && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .collect();
    candidates.sort();
    let keys_path = sidecar_path(path);
    let mut locked = None;
    for candidate in candidates {
        let Ok(Some(ring)) = read(cipher, &candidate) else {
            continue;
        };
        if ring.check_storage(reg.name).is_err() || ring.check_cipher(cipher).is_err() {
            continue;
        }
        let root = match ring.unlock(cipher, passphrase) {
            Ok(root) => root,
            Err(e) if e.kind() == ErrorKind::WrongPassphrase => {
                locked = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let storage = match (reg.open)(
            StorageOptions::at(path)
                .create(false)
                .page_key(Some(page_key(cipher, &root)?)),
        )
        .await
        {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WrongKey => continue,
            Err(e) => return Err(e),
        };
        let bound = storage.meta_get(META_SIDECAR_BINDING).await;
        storage.close().await?;
        if bound? != Some(binding(&ring)) {
            continue;
        }
        match fs::hard_link(&candidate, &keys_path) {
            Ok(()) => {
                let _ = fs::remove_file(&candidate);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "{} appeared while an interrupted import was being finished; open the store again",
                        keys_path.display()
                    ),
                ));
            }
            Err(_) => fs::rename(&candidate, &keys_path)
                .map_err(|e| io_error(format!("cannot create {}", keys_path.display()), e))?,
        }
        sync_dir(&dir)?;
        tracing::info!(
            path = %path.display(),
            "finished an interrupted import: moved its key header file into place"
        );
        return Ok(Some(ring));
    }
    // A key header the passphrase did not unlock may be this store's: say so rather than that
    // there is none.
    match locked {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Creates a store at `path` (where nothing exists yet) with a key header already unlocked:
/// writes `<path>.keys`, then the database. For imports: the key header is a backup's, naming
/// this storage and cipher.
pub(crate) async fn create_from(
    reg: StorageRegistration,
    cipher: Arc<dyn Cipher>,
    path: &Path,
    options: OpenOptions,
    keyring: Keyring,
    root: SecretKey,
) -> Result<Store> {
    let keys_path = sidecar_path(path);
    if fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Err(Error::new(
            ErrorKind::Config,
            format!("a store already exists at {}", path.display()),
        ));
    }
    write_new(cipher.as_ref(), &keys_path, &keyring)?;
    open_unlocked(
        reg,
        cipher,
        path,
        keys_path,
        options.create(true),
        keyring,
        root,
        true,
    )
    .await
}

/// The rest of [`open`] once the key header is unlocked: opens the database with the page key
/// (or, while a root-key rotation is under way, with the retired root's page key), checks its
/// binding to the key header, finishes the rotation's database steps if a crash interrupted
/// them, and reads (or, for a new database, writes) the device state.
#[allow(clippy::too_many_arguments)]
async fn open_unlocked(
    reg: StorageRegistration,
    cipher: Arc<dyn Cipher>,
    path: &Path,
    keys_path: PathBuf,
    options: OpenOptions,
    keyring: Keyring,
    root: SecretKey,
    created: bool,
) -> Result<Store> {
    let key = page_key(cipher.as_ref(), &root)?;
    let open = |key: SecretKey| {
        (reg.open)(
            StorageOptions::at(path)
                .create(options.create)
                .page_key(Some(key)),
        )
    };
    let opened = match open(key).await {
        Ok(s) => Ok((s, true)),
        // A rotation whose re-key had not committed: the file is still under the old page key.
        Err(e) if e.kind() == ErrorKind::WrongKey && keyring.retired.is_some() => {
            match keyring.retired_root(cipher.as_ref(), &root)? {
                Some((_, old_root)) => open(page_key(cipher.as_ref(), &old_root)?)
                    .await
                    .map(|s| (s, false)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let (storage, under_current_key) = match opened {
        Ok(found) => found,
        Err(e) => {
            // A key header made by this call protects nothing yet: do not leave it behind.
            if created && !path.exists() {
                let _ = fs::remove_file(&keys_path);
            }
            return Err(match e.kind() {
                ErrorKind::WrongKey => Error::new(
                    ErrorKind::WrongKey,
                    format!(
                        "the key header file {} does not belong to the store at {}",
                        keys_path.display(),
                        path.display()
                    ),
                ),
                _ => e,
            });
        }
    };
    load(
        storage,
        cipher,
        keys_path,
        options,
        keyring,
        root,
        under_current_key,
    )
    .await
}

/// Rotates the root key of a store encrypted at rest, up to the point where only re-sealing
/// the records is left ([`Store::finish_rotation`]). `storage` is open under the old page key;
/// `next` is the rotated key header (the old root sealed inside it as `retired`).
///
/// The steps, each atomic, and what a crash after each leaves:
///
/// 1. `<path>.keys` is replaced by `next` ([`replace`], guarded by `old`). After a crash the
///    store opens with `next`: the new page key fails, the retired one opens the database, whose
///    binding still names the old key header, so the open does steps 2 and 3.
/// 2. One commit in the database (still under the old page key): the binding to `next`, the
///    rotation cursor, and the sync state of the old space cleared. After a crash the open sees
///    the new binding under the old page key and does step 3.
/// 3. The database is re-keyed to the new page key ([`Storage::rekey`]: one transaction).
/// 4. Records are re-sealed in batches under the cursor, then `<path>.keys` drops the retired
///    root, then the cursor is removed ([`Store::finish_rotation`]).
pub(super) async fn rotate(
    storage: Arc<dyn Storage>,
    cipher: Arc<dyn Cipher>,
    keys_path: PathBuf,
    options: OpenOptions,
    old: &Keyring,
    next: Keyring,
    root: SecretKey,
) -> Result<Store> {
    replace(cipher.as_ref(), &keys_path, old, &next)?;
    load(storage, cipher, keys_path, options, next, root, false).await
}

/// Checks the database's binding to `keyring` and reads its device state. `under_current_key`
/// says whether the database opened with the page key of `keyring`'s root (else with its
/// retired root's, during a rotation); the rotation's database steps left undone are done here.
async fn load(
    storage: Arc<dyn Storage>,
    cipher: Arc<dyn Cipher>,
    keys_path: PathBuf,
    options: OpenOptions,
    keyring: Keyring,
    root: SecretKey,
    under_current_key: bool,
) -> Result<Store> {
    // The database's own record of which key header it belongs to, and the device state.
    let bound = binding(&keyring);
    if storage.meta_get(META_KEYRING).await?.is_some() {
        return Err(Error::new(
            ErrorKind::Config,
            "this store keeps its key header in its own metadata, not in a file next to it",
        ));
    }
    let retired_bound = match keyring.retired_root(cipher.as_ref(), &root)? {
        Some((retired, old_root)) => Some(binding_of(
            &retired.space,
            &crate::keyring::fingerprint(cipher.as_ref(), &old_root, &retired.space)?,
        )),
        None => None,
    };
    let found = storage.meta_get(META_SIDECAR_BINDING).await?;
    let device = storage.meta_get(META_DEVICE).await?;
    let state = match (found, device) {
        // Rotation step 2 (see [`rotate`]): bind the database to the new key header and start
        // the re-sealing cursor, in one commit.
        (Some(b), Some(bytes)) if Some(&b) == retired_bound.as_ref() => {
            let mut meta = vec![
                (META_SIDECAR_BINDING.to_owned(), Some(bound)),
                (
                    super::META_ROTATION.to_owned(),
                    Some(
                        postcard::to_stdvec(&None::<crate::model::RecordId>)
                            .map_err(|e| Error::internal("rotation cursor").with_source(e))?,
                    ),
                ),
            ];
            for k in crate::engine::SYNC_META_KEYS {
                meta.push(((*k).to_owned(), None));
            }
            storage
                .commit(Batch {
                    guards: vec![(META_SIDECAR_BINDING.to_owned(), Some(b))],
                    meta,
                    ..Batch::default()
                })
                .await?;
            postcard::from_bytes::<DeviceState>(&bytes)?
        }
        (Some(b), _) if b != bound => {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the key header file {} belongs to another store",
                    keys_path.display()
                ),
            ));
        }
        (Some(_), Some(bytes)) => postcard::from_bytes::<DeviceState>(&bytes)?,
        (Some(_), None) => {
            return Err(Error::corrupt("store has a key header but no device state"));
        }
        (None, Some(_)) => {
            return Err(Error::corrupt(
                "store has device state but is bound to no key header",
            ));
        }
        // A new store, or one whose creation stopped after its key header was written.
        (None, None) if options.create && under_current_key => {
            let mut device = [0u8; DeviceId::LEN];
            cipher.fill_random(&mut device)?;
            let device = DeviceId(device);
            let state = DeviceState {
                device,
                clock: HlcClock::new(device),
                seq: 0,
            };
            storage
                .commit(Batch {
                    guards: vec![
                        (META_SIDECAR_BINDING.to_owned(), None),
                        (META_DEVICE.to_owned(), None),
                    ],
                    meta: vec![
                        (META_SIDECAR_BINDING.to_owned(), Some(bound)),
                        (META_DEVICE.to_owned(), Some(encode_state(&state)?)),
                        // An empty store's state digest: kept by every commit from the first.
                        (
                            crate::engine::head::META_DIGEST.to_owned(),
                            Some(vec![0; crate::engine::head::DIGEST_LEN]),
                        ),
                    ],
                    ..Batch::default()
                })
                .await?;
            state
        }
        (None, None) => {
            return Err(Error::new(
                ErrorKind::NotFound,
                "no hearth store here; create one first",
            ));
        }
    };
    // Rotation step 3: the database moves to the new page key. A failure closes this handle
    // (the storage's contract); opening again resumes here.
    if !under_current_key {
        storage
            .rekey(&page_key(cipher.as_ref(), &root)?)
            .await
            .map_err(|e| {
                Error::new(
                    e.kind(),
                    "re-keying the store's database for the rotated root key failed; open it again to resume",
                )
                .with_source(e)
            })?;
    }

    Store::finish_open(
        storage,
        cipher,
        options,
        keyring,
        root,
        state,
        Some(keys_path),
    )
}
