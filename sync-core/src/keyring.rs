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

use crate::cipher::{Cipher, CipherExt, HASH_LEN, KdfCost, Passphrase, SALT_LEN, SecretKey};
use crate::error::{Error, ErrorKind, Result};
use crate::model::SpaceId;

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

impl Keyring {
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
