//! # crypto-sodium
//!
//! hearth's [`Cipher`] over [libsodium](https://doc.libsodium.org), bound through
//! [`libsodium-sys-stable`](https://docs.rs/libsodium-sys-stable), which bundles libsodium's
//! stable release and builds it from source offline (`sodiumoxide` is deprecated and is not
//! used). The primitives are byte-identical to `crypto-orion`, so a store, a key header or an
//! envelope written by one opens with the other; the test kit's fixed vectors and this crate's
//! interoperability tests pin that.
//!
//! | hearth primitive | libsodium function |
//! | --- | --- |
//! | AEAD | `crypto_aead_xchacha20poly1305_ietf_encrypt` / `_decrypt`, combined mode (`ciphertext ‖ tag`) |
//! | password KDF | `crypto_pwhash` with `crypto_pwhash_ALG_ARGON2ID13`, opslimit = iterations, memlimit = memory KiB × 1024, 16-byte salt, 32-byte output |
//! | keyed hash | `crypto_generichash_init/update/final` (BLAKE2b), 32-byte key, 32-byte output, over the concatenation of the parts |
//! | randomness | `randombytes_buf` |
//! | X25519 | `crypto_scalarmult_base`, `crypto_scalarmult` (a low-order point is `InvalidInput`) |
//!
//! All calls into C live in one small module whose every `unsafe` block states its invariant;
//! `sodium_init()` runs once per process, and its failure is a typed error, never a panic.
//!
//! `libsodium-sys-stable` declares `links = "sodium"`; `crypto-orion` is pure Rust, so the two
//! crates link side by side in one binary.
//!
//! Registered as `"sodium"`.
#![deny(missing_docs)]

mod sys;

use std::sync::Arc;

use sync_core::cipher::{HASH_LEN, KEY_LEN, NONCE_LEN, SALT_LEN};
use sync_core::{Cipher, Error, KdfCost, Result, SecretKey};
use zeroize::Zeroizing;

/// The libsodium cipher. Stateless (libsodium's global state is initialised once per process);
/// cheap to copy.
#[derive(Debug, Default, Clone, Copy)]
pub struct SodiumCipher;

impl SodiumCipher {
    /// Registry name.
    pub const NAME: &'static str = "sodium";

    /// A new cipher. libsodium is initialised on first use.
    pub fn new() -> Self {
        Self
    }

    /// Initialises libsodium now rather than on first use, so that a platform without a usable
    /// random source fails here with a typed error.
    pub fn try_init() -> Result<Self> {
        sys::init()?;
        Ok(Self)
    }

    /// The cipher as a shared trait object.
    pub fn shared() -> Arc<dyn Cipher> {
        Arc::new(Self)
    }
}

impl Cipher for SodiumCipher {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn aead_seal(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        sys::aead_seal(key.expose(), nonce, aad, plaintext)
    }

    fn aead_open(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>> {
        sys::aead_open(key.expose(), nonce, aad, ciphertext)
    }

    fn password_kdf(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        cost: KdfCost,
    ) -> Result<SecretKey> {
        cost.validate()?;
        let memlimit = usize::try_from(cost.memory_kib)
            .ok()
            .and_then(|kib| kib.checked_mul(1024))
            .ok_or_else(|| Error::invalid("Argon2id memory cost does not fit this platform"))?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        sys::argon2id(
            &mut out,
            passphrase,
            salt,
            u64::from(cost.iterations),
            memlimit,
        )?;
        Ok(SecretKey::from_bytes(*out))
    }

    fn keyed_hash(&self, key: &SecretKey, parts: &[&[u8]]) -> Result<[u8; HASH_LEN]> {
        sys::keyed_blake2b(key.expose(), parts)
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        sys::random(buf)
    }

    fn x25519_public(&self, secret: &SecretKey) -> Result<[u8; 32]> {
        let mut out = [0u8; 32];
        sys::x25519_base(&mut out, secret.expose())?;
        Ok(out)
    }

    fn x25519(&self, secret: &SecretKey, public: &[u8; 32]) -> Result<SecretKey> {
        let mut out = Zeroizing::new([0u8; 32]);
        sys::x25519(&mut out, secret.expose(), public)?;
        Ok(SecretKey::from_bytes(*out))
    }
}

/// This cipher's registry entry, for explicit registration where link-time registration does
/// not run.
pub const REGISTRATION: sync_core::registry::CipherRegistration =
    sync_core::registry::CipherRegistration {
        name: SodiumCipher::NAME,
        make: SodiumCipher::shared,
    };

sync_core::register_cipher!(SodiumCipher::NAME, SodiumCipher::shared);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_cipher_conformance_suite() {
        sync_core::testkit::cipher_suite(&SodiumCipher);
    }

    #[test]
    fn registers_as_sodium() {
        assert!(sync_core::registry::cipher_names().contains(&"sodium"));
        assert_eq!(
            sync_core::registry::cipher("sodium")
                .map(|r| (r.make)().name())
                .ok(),
            Some("sodium")
        );
    }

    #[test]
    fn initialises_once_and_reports_success() {
        assert!(SodiumCipher::try_init().is_ok());
        assert!(SodiumCipher::try_init().is_ok());
    }

    #[test]
    fn the_smallest_allowed_kdf_cost_runs_and_a_smaller_one_is_a_typed_error() {
        // 8 KiB is both hearth's floor and libsodium's: what the validator lets through runs.
        let k = SodiumCipher.password_kdf(
            b"p",
            &[0u8; SALT_LEN],
            KdfCost {
                iterations: 1,
                memory_kib: 8,
            },
        );
        assert!(k.is_ok());
        let err = SodiumCipher.password_kdf(
            b"p",
            &[0u8; SALT_LEN],
            KdfCost {
                iterations: 1,
                memory_kib: 7,
            },
        );
        assert_eq!(
            err.err().map(|e| e.kind()),
            Some(sync_core::ErrorKind::InvalidInput)
        );
    }
}
