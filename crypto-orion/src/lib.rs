//! # crypto-orion
//!
//! hearth's [`Cipher`] over [orion](https://docs.rs/orion), a pure-Rust cryptography library:
//! XChaCha20-Poly1305 with associated data (orion's `hazardous` module, since the high-level
//! `orion::aead::seal` takes no AAD), Argon2id v1.3 with one lane, keyed BLAKE2b-256, and the
//! operating system's CSPRNG. Byte-identical to `crypto-sodium`; the test kit's vectors pin it.
//!
//! Registered as `"orion"`.
#![deny(missing_docs)]

use std::sync::Arc;

use orion::hazardous::aead::xchacha20poly1305 as xchacha;
use orion::hazardous::ecc::x25519;
use orion::hazardous::kdf::argon2::{Argon2, CostParams, ID, Sequential};
use orion::hazardous::mac::blake2b;
use orion::hazardous::mac::poly1305::POLY1305_OUTSIZE;
use sync_core::cipher::{HASH_LEN, KEY_LEN, NONCE_LEN, SALT_LEN};
use sync_core::{Cipher, Error, KdfCost, Result, SecretKey};
use zeroize::Zeroizing;

/// The orion cipher. Stateless; cheap to clone.
#[derive(Debug, Default, Clone, Copy)]
pub struct OrionCipher;

impl OrionCipher {
    /// Registry name.
    pub const NAME: &'static str = "orion";

    /// A new cipher.
    pub fn new() -> Self {
        Self
    }

    /// The cipher as a shared trait object.
    pub fn shared() -> Arc<dyn Cipher> {
        Arc::new(Self)
    }
}

fn aead_key(key: &SecretKey) -> Result<xchacha::SecretKey> {
    xchacha::SecretKey::try_from(&key.expose()[..]).map_err(|_| Error::internal("orion key length"))
}

fn aead_nonce(nonce: &[u8; NONCE_LEN]) -> Result<xchacha::Nonce> {
    xchacha::Nonce::try_from(&nonce[..]).map_err(|_| Error::internal("orion nonce length"))
}

impl Cipher for OrionCipher {
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
        let mut out = vec![0u8; plaintext.len() + POLY1305_OUTSIZE];
        xchacha::XChaCha20Poly1305::seal(
            &aead_key(key)?,
            &aead_nonce(nonce)?,
            plaintext,
            Some(aad),
            &mut out,
        )
        .map_err(|_| Error::invalid("plaintext too large to seal"))?;
        Ok(out)
    }

    fn aead_open(
        &self,
        key: &SecretKey,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>> {
        if ciphertext.len() < POLY1305_OUTSIZE {
            return Err(Error::corrupt("ciphertext is shorter than its tag"));
        }
        let mut out = vec![0u8; ciphertext.len() - POLY1305_OUTSIZE];
        xchacha::XChaCha20Poly1305::open(
            &aead_key(key)?,
            &aead_nonce(nonce)?,
            ciphertext,
            Some(aad),
            &mut out,
        )
        .map_err(|_| Error::tampered())?;
        Ok(out)
    }

    fn password_kdf(
        &self,
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        cost: KdfCost,
    ) -> Result<SecretKey> {
        cost.validate()?;
        let params = CostParams::new(cost.iterations, cost.memory_kib, 1)
            .map_err(|_| Error::invalid("Argon2id cost rejected by orion"))?;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        Argon2::<ID, Sequential>::derive_key(passphrase, salt, &params, None, None, out.as_mut())
            .map_err(|_| Error::invalid("passphrase too long for Argon2id"))?;
        Ok(SecretKey::from_bytes(*out))
    }

    fn keyed_hash(&self, key: &SecretKey, parts: &[&[u8]]) -> Result<[u8; HASH_LEN]> {
        let k = blake2b::SecretKey::try_from(&key.expose()[..])
            .map_err(|_| Error::internal("orion BLAKE2b key length"))?;
        let mut state =
            blake2b::Blake2b::new(&k, HASH_LEN).map_err(|_| Error::internal("BLAKE2b init"))?;
        for p in parts {
            state
                .update(p)
                .map_err(|_| Error::internal("BLAKE2b update"))?;
        }
        let tag = state
            .finalize()
            .map_err(|_| Error::internal("BLAKE2b finalize"))?;
        let mut out = [0u8; HASH_LEN];
        let bytes: &[u8] = tag.unprotected_as_ref();
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        // orion refuses empty buffers; nothing to fill is not an error for us.
        if buf.is_empty() {
            return Ok(());
        }
        orion::util::secure_rand_bytes(buf).map_err(|_| {
            Error::new(
                sync_core::ErrorKind::Unavailable,
                "the operating system's random source failed",
            )
        })
    }

    fn x25519_public(&self, secret: &SecretKey) -> Result<[u8; 32]> {
        let sk = x25519::PrivateKey::from(*secret.expose());
        let pk = x25519::PublicKey::try_from(&sk)
            .map_err(|_| Error::invalid("X25519 secret key rejected"))?;
        let mut out = [0u8; 32];
        let bytes: &[u8] = pk.as_ref();
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn x25519(&self, secret: &SecretKey, public: &[u8; 32]) -> Result<SecretKey> {
        let sk = x25519::PrivateKey::from(*secret.expose());
        let pk = x25519::PublicKey::from(*public);
        let shared = x25519::key_agreement(&sk, &pk)
            .map_err(|_| Error::invalid("X25519 public key is of low order"))?;
        let bytes: &[u8] = shared.unprotected_as_ref();
        SecretKey::from_slice(bytes)
    }
}

/// This cipher's registry entry, for explicit registration where link-time registration does
/// not run.
pub const REGISTRATION: sync_core::registry::CipherRegistration =
    sync_core::registry::CipherRegistration {
        name: OrionCipher::NAME,
        make: OrionCipher::shared,
    };

sync_core::register_cipher!(OrionCipher::NAME, OrionCipher::shared);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_cipher_conformance_suite() {
        sync_core::testkit::cipher_suite(&OrionCipher);
    }

    #[test]
    fn registers_as_orion() {
        assert!(sync_core::registry::cipher_names().contains(&"orion"));
    }
}
