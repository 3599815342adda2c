//! The key header of a store: how the passphrase unlocks the root key.
//!
//! ```text
//! passphrase ──Argon2id(salt, cost)──► KEK ──unwraps──► root key (random, 256 bit)
//! root key ──BLAKE2b(context)──► record key (per key id), blind-index key, fingerprint key, …
//! ```
//!
//! The header is stored in the storage's metadata, or, for storages encrypted at rest (which
//! cannot be read before the root key gives their page key), in a file next to the database
//! (see [`crate::store::sidecar`]). It holds the salt, the cost, the wrapped root
//! key and a fingerprint of the root key (a keyed hash a server can compare without learning the
//! key). Changing the passphrase rewraps the root key only.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::cipher::{
    CIPHER_FORMAT, Cipher, CipherExt, HASH_LEN, KdfCost, Passphrase, SALT_LEN, SecretKey,
};
use crate::error::{Error, ErrorKind, Result};
use crate::model::SpaceId;
use crate::registry;

/// The key header format this build writes.
pub const KEYRING_FORMAT: u8 = 1;

/// The persisted key header.
#[derive(Clone, Serialize, Deserialize)]
pub struct Keyring {
    /// Format version.
    pub format: u8,
    /// The sync space the store belongs to.
    pub space: SpaceId,
    /// Registry name of the storage that made the store.
    pub storage: String,
    /// Registry name of the cipher that made the store.
    pub cipher: String,
    /// Id of the current root/record key.
    pub key_id: u32,
    /// Argon2id cost.
    pub kdf: KdfCost,
    /// Argon2id salt.
    pub salt: [u8; SALT_LEN],
    /// `nonce || XChaCha20-Poly1305(KEK, root key)`.
    pub wrapped_root: Vec<u8>,
    /// Fingerprint of the root key.
    pub fingerprint: [u8; HASH_LEN],
    /// The root key wrapped a second time, under a KEK derived from a recovery code.
    pub recovery: Option<RecoveryWrap>,
    /// After a rotation: the blind-index key sealed under the root key, so record ids survive
    /// rotations. Absent before the first rotation (the key is then derived from the root).
    pub index_key: Option<Vec<u8>>,
    /// While a rotation re-encrypts the records: the previous key, sealed under the new root.
    pub retired: Option<RetiredKey>,
}

/// The key a rotation replaced, kept (sealed under the new root) until every record has been
/// re-encrypted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RetiredKey {
    /// Its key id.
    pub key_id: u32,
    /// The space its envelopes were sealed for.
    pub space: SpaceId,
    /// `nonce || XChaCha20-Poly1305(new root, old root)`, AAD `"hearth.keyring.retired" || key id`.
    pub wrapped_root: Vec<u8>,
}

/// The root key wrapped under a recovery code's KEK.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryWrap {
    /// Argon2id cost.
    pub kdf: KdfCost,
    /// Argon2id salt.
    pub salt: [u8; SALT_LEN],
    /// `nonce || XChaCha20-Poly1305(KEK, root key)`, AAD `"hearth.keyring.recovery" || format || space || key_id`.
    pub wrapped: Vec<u8>,
}

/// Normalises a recovery code as people type it: case and separators do not matter.
pub fn normalise_recovery_code(code: &str) -> Passphrase {
    let s: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Passphrase::new(s)
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("format", &self.format)
            .field("space", &self.space)
            .field("storage", &self.storage)
            .field("cipher", &self.cipher)
            .field("key_id", &self.key_id)
            .field("kdf", &self.kdf)
            .finish_non_exhaustive()
    }
}

/// The fingerprint of a root key: `BLAKE2b(subkey(root, "hearth.fingerprint"), space)`.
pub fn fingerprint(
    cipher: &dyn Cipher,
    root: &SecretKey,
    space: &SpaceId,
) -> Result<[u8; HASH_LEN]> {
    let k = cipher.derive_subkey(root, b"hearth.fingerprint")?;
    cipher.keyed_hash(&k, &[space.as_bytes()])
}

/// The byte format of the cipher named `name`: asked of the cipher when it is registered, else
/// [`CIPHER_FORMAT`] for the ciphers hearth ships (`orion`, `sodium`) even when they are not
/// compiled in; `None` for a name this build knows nothing about.
pub fn cipher_format(name: &str) -> Option<&'static str> {
    if let Ok(reg) = registry::cipher(name) {
        return Some((reg.make)().format());
    }
    registry::KNOWN_CIPHERS
        .iter()
        .any(|(n, _)| *n == name)
        .then_some(CIPHER_FORMAT)
}

impl Keyring {
    /// Checks that `storage` is the storage that made this store. Storages do not share a
    /// format (a SQLCipher file is not a SQLite file), so another name is
    /// [`ErrorKind::Config`].
    pub fn check_storage(&self, storage: &str) -> Result<()> {
        if self.storage != storage {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "this store was made with storage '{}'; open it with that storage, not '{storage}' (or export it and import the backup into a '{storage}' store)",
                    self.storage
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `cipher` reads what the cipher that made this store wrote: the same cipher,
    /// or one of the same [`Cipher::format`] (`orion` and `sodium` are byte-identical, so a
    /// store made by one opens with the other). Anything else is [`ErrorKind::Config`].
    pub fn check_cipher(&self, cipher: &dyn Cipher) -> Result<()> {
        if self.cipher == cipher.name() {
            return Ok(());
        }
        match cipher_format(&self.cipher) {
            Some(f) if f == cipher.format() => Ok(()),
            Some(f) => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "this store was made with cipher '{}' (format {f}); cipher '{}' uses format {} and cannot read it",
                    self.cipher,
                    cipher.name(),
                    cipher.format()
                ),
            )),
            None => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "this store was made with cipher '{}', which this build does not know; open it with that cipher, not '{}'",
                    self.cipher,
                    cipher.name()
                ),
            )),
        }
    }

    /// Makes a new key header with a fresh random root key for `space`.
    pub fn create(
        cipher: &dyn Cipher,
        passphrase: &Passphrase,
        cost: KdfCost,
        space: SpaceId,
        storage: &str,
    ) -> Result<(Keyring, SecretKey)> {
        let root = cipher.random_key()?;
        let mut ring = Keyring {
            format: KEYRING_FORMAT,
            space,
            storage: storage.to_owned(),
            cipher: cipher.name().to_owned(),
            key_id: 1,
            kdf: cost,
            salt: [0; SALT_LEN],
            wrapped_root: Vec::new(),
            fingerprint: fingerprint(cipher, &root, &space)?,
            recovery: None,
            index_key: None,
            retired: None,
        };
        ring.wrap(cipher, passphrase, cost, &root)?;
        Ok((ring, root))
    }

    fn aad(&self) -> Vec<u8> {
        let mut aad = b"hearth.keyring".to_vec();
        aad.push(self.format);
        aad.extend_from_slice(self.space.as_bytes());
        aad.extend_from_slice(&self.key_id.to_be_bytes());
        aad
    }

    /// (Re)wraps `root` under a KEK derived from `passphrase` with a fresh salt.
    pub fn wrap(
        &mut self,
        cipher: &dyn Cipher,
        passphrase: &Passphrase,
        cost: KdfCost,
        root: &SecretKey,
    ) -> Result<()> {
        cost.validate()?;
        let mut salt = [0u8; SALT_LEN];
        cipher.fill_random(&mut salt)?;
        let kek = cipher.password_kdf(passphrase.expose(), &salt, cost)?;
        self.salt = salt;
        self.kdf = cost;
        self.wrapped_root = cipher.seal_random_nonce(&kek, &self.aad(), root.expose())?;
        Ok(())
    }

    fn recovery_aad(&self) -> Vec<u8> {
        let mut aad = b"hearth.keyring.recovery".to_vec();
        aad.push(self.format);
        aad.extend_from_slice(self.space.as_bytes());
        aad.extend_from_slice(&self.key_id.to_be_bytes());
        aad
    }

    /// Wraps `root` under a KEK derived from the recovery `code` (replacing any earlier one).
    pub fn set_recovery(
        &mut self,
        cipher: &dyn Cipher,
        code: &Passphrase,
        cost: KdfCost,
        root: &SecretKey,
    ) -> Result<()> {
        cost.validate()?;
        let mut salt = [0u8; SALT_LEN];
        cipher.fill_random(&mut salt)?;
        let kek = cipher.password_kdf(code.expose(), &salt, cost)?;
        let wrapped = cipher.seal_random_nonce(&kek, &self.recovery_aad(), root.expose())?;
        self.recovery = Some(RecoveryWrap {
            kdf: cost,
            salt,
            wrapped,
        });
        Ok(())
    }

    /// Unwraps the root key with the recovery code. No recovery code set is
    /// [`ErrorKind::NotFound`]; a code that does not open it is [`ErrorKind::WrongPassphrase`].
    pub fn unlock_with_recovery(
        &self,
        cipher: &dyn Cipher,
        code: &Passphrase,
    ) -> Result<SecretKey> {
        let r = self
            .recovery
            .as_ref()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "this store has no recovery code"))?;
        r.kdf
            .validate()
            .map_err(|_| Error::corrupt("key header has out-of-range KDF cost"))?;
        let kek = cipher.password_kdf(code.expose(), &r.salt, r.kdf)?;
        let root = Zeroizing::new(
            cipher
                .open_random_nonce(&kek, &self.recovery_aad(), &r.wrapped)
                .map_err(|e| match e.kind() {
                    ErrorKind::Tampered => Error::new(
                        ErrorKind::WrongPassphrase,
                        "the recovery code does not unlock this store",
                    ),
                    _ => e,
                })?,
        );
        let root = SecretKey::from_slice(&root)?;
        if fingerprint(cipher, &root, &self.space)? != self.fingerprint {
            return Err(Error::corrupt(
                "key header fingerprint does not match its key",
            ));
        }
        Ok(root)
    }

    /// Unwraps the root key. A passphrase that does not open it is
    /// [`ErrorKind::WrongPassphrase`].
    pub fn unlock(&self, cipher: &dyn Cipher, passphrase: &Passphrase) -> Result<SecretKey> {
        self.kdf
            .validate()
            .map_err(|_| Error::corrupt("key header has out-of-range KDF cost"))?;
        let kek = cipher.password_kdf(passphrase.expose(), &self.salt, self.kdf)?;
        let root = Zeroizing::new(
            cipher
                .open_random_nonce(&kek, &self.aad(), &self.wrapped_root)
                .map_err(|e| match e.kind() {
                    ErrorKind::Tampered => Error::new(
                        ErrorKind::WrongPassphrase,
                        "the passphrase does not unlock this store",
                    ),
                    _ => e,
                })?,
        );
        let root = SecretKey::from_slice(&root)?;
        if fingerprint(cipher, &root, &self.space)? != self.fingerprint {
            return Err(Error::corrupt(
                "key header fingerprint does not match its key",
            ));
        }
        Ok(root)
    }

    /// The blind-index key: unsealed from the header after a rotation, else derived from `root`.
    pub fn blind_key(&self, cipher: &dyn Cipher, root: &SecretKey) -> Result<SecretKey> {
        match &self.index_key {
            Some(sealed) => {
                let k = Zeroizing::new(cipher.open_random_nonce(
                    root,
                    b"hearth.keyring.index",
                    sealed,
                )?);
                SecretKey::from_slice(&k)
            }
            None => cipher.derive_subkey(root, b"hearth.blind-index"),
        }
    }

    /// The retired root key, while a rotation is under way.
    pub fn retired_root(
        &self,
        cipher: &dyn Cipher,
        root: &SecretKey,
    ) -> Result<Option<(RetiredKey, SecretKey)>> {
        let Some(r) = &self.retired else {
            return Ok(None);
        };
        let mut aad = b"hearth.keyring.retired".to_vec();
        aad.extend_from_slice(&r.key_id.to_be_bytes());
        let k = Zeroizing::new(cipher.open_random_nonce(root, &aad, &r.wrapped_root)?);
        Ok(Some((r.clone(), SecretKey::from_slice(&k)?)))
    }

    /// The header after rotating to a fresh root key in a fresh space: the old root is kept
    /// sealed under the new one until the records are re-encrypted; the blind-index key is
    /// carried over so record ids stay the same; the recovery code is dropped (it wrapped the
    /// old root). Returns the new header and root.
    pub fn rotated(
        &self,
        cipher: &dyn Cipher,
        old_root: &SecretKey,
        passphrase: &Passphrase,
        cost: KdfCost,
    ) -> Result<(Keyring, SecretKey)> {
        if self.retired.is_some() {
            return Err(Error::new(
                ErrorKind::Conflict,
                "a key rotation is already under way; finish it first",
            ));
        }
        let new_root = cipher.random_key()?;
        let mut space = [0u8; SpaceId::LEN];
        cipher.fill_random(&mut space)?;
        let space = SpaceId(space);
        let key_id = self
            .key_id
            .checked_add(1)
            .ok_or_else(|| Error::internal("key id overflow"))?;
        let blind = self.blind_key(cipher, old_root)?;
        let mut retired_aad = b"hearth.keyring.retired".to_vec();
        retired_aad.extend_from_slice(&self.key_id.to_be_bytes());
        let mut next = Keyring {
            format: KEYRING_FORMAT,
            space,
            storage: self.storage.clone(),
            cipher: self.cipher.clone(),
            key_id,
            kdf: cost,
            salt: [0; SALT_LEN],
            wrapped_root: Vec::new(),
            fingerprint: fingerprint(cipher, &new_root, &space)?,
            recovery: None,
            index_key: Some(cipher.seal_random_nonce(
                &new_root,
                b"hearth.keyring.index",
                blind.expose(),
            )?),
            retired: Some(RetiredKey {
                key_id: self.key_id,
                space: self.space,
                wrapped_root: cipher.seal_random_nonce(
                    &new_root,
                    &retired_aad,
                    old_root.expose(),
                )?,
            }),
        };
        next.wrap(cipher, passphrase, cost, &new_root)?;
        Ok((next, new_root))
    }

    /// Encodes the header.
    pub fn encode(&self) -> Result<Vec<u8>> {
        postcard::to_stdvec(self).map_err(|e| Error::internal("keyring encoding").with_source(e))
    }

    /// Decodes a header, refusing unknown formats.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            Some(&KEYRING_FORMAT) => {}
            Some(v) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!("key header format {v} is newer than this build supports"),
                ));
            }
            None => return Err(Error::corrupt("key header is empty")),
        }
        let ring: Keyring = postcard::from_bytes(bytes)?;
        Ok(ring)
    }
}
