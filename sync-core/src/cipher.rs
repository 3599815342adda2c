//! The `Cipher` trait: the cryptographic primitives hearth is built from.
//!
//! Implementations (`crypto-orion`, `crypto-sodium`) must be byte-identical: an envelope sealed
//! by one opens with the other. The test kit's cipher suite holds fixed vectors that pin every
//! primitive, so a mismatch fails a test rather than a user's data.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{Error, Result};

/// Length of every symmetric key hearth uses.
pub const KEY_LEN: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of an Argon2id salt.
pub const SALT_LEN: usize = 16;
/// Length of a keyed hash output (BLAKE2b-256).
pub const HASH_LEN: usize = 32;
/// The byte format every cipher described by [`Cipher`] implements: XChaCha20-Poly1305,
/// Argon2id v1.3 (one lane), keyed BLAKE2b-256, X25519. Ciphers of one format read each other's
/// data, so a store made with one opens with any other (see [`Cipher::format`]).
pub const CIPHER_FORMAT: &str = "hearth-1";

/// A 256-bit secret key. Zeroized on drop; its `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop, PartialEq, Eq)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::corrupt("a key must be 32 bytes"))?;
        Ok(Self(arr))
    }

    /// The raw key bytes. Handle with care: never log or persist them unwrapped.
    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A user's passphrase (or recovery code). Zeroized on drop; its `Debug` prints nothing of it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(passphrase: impl Into<String>) -> Self {
        Self(passphrase.into())
    }

    /// The passphrase bytes.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<&str> for Passphrase {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Passphrase {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Argon2id cost parameters. Stored in the key header so a store opens with the costs it was
/// made with, whatever the defaults are later. Parallelism is always 1 (libsodium's only lane).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct KdfCost {
    /// Passes over memory (`t`, libsodium's opslimit).
    pub iterations: u32,
    /// Memory in KiB (`m`; libsodium's memlimit is this × 1024 bytes).
    pub memory_kib: u32,
}

impl KdfCost {
    /// The default: t = 3, m = 64 MiB, p = 1.
    pub const DEFAULT: KdfCost = KdfCost {
        iterations: 3,
        memory_kib: 64 * 1024,
    };

    /// A cheap cost for tests only (t = 1, m = 1 MiB). Never use it for real passphrases.
    pub const INSECURE_FOR_TESTS: KdfCost = KdfCost {
        iterations: 1,
        memory_kib: 1024,
    };

    /// The largest memory cost a key header may ask for (4 GiB). A header asking for more is
    /// refused as corrupt rather than exhausting the device.
    pub const MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;

    /// Checks that the cost is one both cipher backends accept and that is safe to run.
    pub fn validate(&self) -> Result<()> {
        if self.iterations < 1 || self.iterations > 64 {
            return Err(Error::invalid(
                "Argon2id iterations must be between 1 and 64",
            ));
        }
        if self.memory_kib < 8 || self.memory_kib > Self::MAX_MEMORY_KIB {
            return Err(Error::invalid(
                "Argon2id memory must be between 8 KiB and 4 GiB",
            ));
        }
        Ok(())
    }
}

impl Default for KdfCost {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Cryptographic primitives, fixed by hearth's formats:
///
/// - AEAD: XChaCha20-Poly1305 (IETF construction, libsodium's `crypto_aead_xchacha20poly1305_ietf`),
///   output `ciphertext || tag`.
/// - Password KDF: Argon2id v1.3, 16-byte salt, one lane, 32-byte output.
/// - Keyed hash: BLAKE2b with a 32-byte key and 32-byte output, over the concatenation of
///   `parts`. Subkeys, blind indexes and fingerprints are all keyed hashes (see [`CipherExt`]).
/// - Randomness from the operating system.
/// - X25519 (RFC 7748) for sealing to a destination's public key.
///
/// The trait is object-safe and used as `Arc<dyn Cipher>`.
pub trait Cipher: Send + Sync + fmt::Debug + 'static {
    /// The registry name of the implementation (`"orion"`, `"sodium"`).
    fn name(&self) -> &'static str;

    /// The byte format the implementation produces and reads. Every implementation of the
    /// primitives above is [`CIPHER_FORMAT`] (the default); a store made by a cipher of one
    /// format opens with any cipher of the same format, and a cipher of another format is
    /// refused ([`ErrorKind::Config`](crate::ErrorKind::Config)). Override only for a cipher
    /// that is not byte-identical to these primitives.
    fn format(&self) -> &'static str {
        CIPHER_FORMAT
    }

    /// Seals `plaintext` under `key` and `nonce`, authenticating `aad` too.
    /// Returns `ciphertext || tag` (`plaintext.len() + 16` bytes).
    fn aead_seal(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>>;

    /// Opens `ciphertext || tag`. Any change to the key, nonce, aad or ciphertext is
    /// [`ErrorKind::Tampered`](crate::ErrorKind::Tampered), with no detail.
    fn aead_open(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>>;

    /// Argon2id of `passphrase` with `salt` and `cost`, 32 bytes out.
    fn password_kdf(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        cost: KdfCost,
    ) -> Result<SecretKey>;

    /// Keyed BLAKE2b-256 of the concatenation of `parts`.
    fn keyed_hash(&self, key: &SecretKey, parts: &[&[u8]]) -> Result<[u8; HASH_LEN]>;

    /// Fills `buf` with bytes from the operating system's CSPRNG.
    fn fill_random(&self, buf: &mut [u8]) -> Result<()>;

    /// The X25519 public key of `secret` (RFC 7748; the scalar is clamped).
    fn x25519_public(&self, secret: &SecretKey) -> Result<[u8; 32]>;

    /// X25519 key agreement of `secret` with `public`. A public key of low order (one that
    /// makes the shared secret all zeros) is [`ErrorKind::InvalidInput`](crate::ErrorKind::InvalidInput).
    fn x25519(&self, secret: &SecretKey, public: &[u8; 32]) -> Result<SecretKey>;
}

/// Conveniences built on [`Cipher`]'s primitives. Implemented for every cipher; not overridable,
/// so every backend derives keys and ids the same way.
pub trait CipherExt: Cipher {
    /// Derives a subkey of `root` for `context`: `BLAKE2b-256(key = root, "hearth.subkey.v1\0" || context)`.
    fn derive_subkey(&self, root: &SecretKey, context: &[u8]) -> Result<SecretKey> {
        let out = Zeroizing::new(self.keyed_hash(root, &[b"hearth.subkey.v1\0", context])?);
        Ok(SecretKey::from_bytes(*out))
    }

    /// A fresh random key.
    fn random_key(&self) -> Result<SecretKey> {
        let mut k = Zeroizing::new([0u8; KEY_LEN]);
        self.fill_random(k.as_mut())?;
        Ok(SecretKey::from_bytes(*k))
    }

    /// Seals with a fresh random nonce; returns `nonce || ciphertext || tag`.
    fn seal_random_nonce(&self, key: &SecretKey, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.fill_random(&mut nonce)?;
        let ct = self.aead_seal(key, &nonce, aad, plaintext)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens `nonce || ciphertext || tag` as made by [`CipherExt::seal_random_nonce`].
    fn open_random_nonce(&self, key: &SecretKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::corrupt("sealed data is truncated"));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce: &[u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| Error::internal("nonce split"))?;
        self.aead_open(key, nonce, aad, ct)
    }
}

impl<T: Cipher + ?Sized> CipherExt for T {}

fn _object_safe(_: &dyn Cipher) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let k = SecretKey::from_bytes([0x41; 32]);
        let p = Passphrase::new("hunter2-canary");
        assert_eq!(format!("{k:?}"), "SecretKey(<redacted>)");
        assert!(!format!("{p:?}").contains("canary"));
    }

    #[test]
    fn kdf_cost_bounds() {
        assert!(KdfCost::DEFAULT.validate().is_ok());
        assert!(KdfCost::INSECURE_FOR_TESTS.validate().is_ok());
        assert!(
            KdfCost {
                iterations: 0,
                memory_kib: 1024
            }
            .validate()
            .is_err()
        );
        assert!(
            KdfCost {
                iterations: 3,
                memory_kib: u32::MAX
            }
            .validate()
            .is_err()
        );
    }
}
