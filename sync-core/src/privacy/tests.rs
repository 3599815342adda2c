//! Test helpers for the privacy module's unit tests, and tests of the module's glue.
//!
//! The pipeline end to end (consent, audit, sealing, sharing over a real store and cipher) is
//! tested in `hearth/tests/privacy.rs`; `sync-core` links no cipher implementation.

use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{KeyInit, Mac};

use crate::cipher::{Cipher, HASH_LEN, KdfCost, NONCE_LEN, SALT_LEN, SecretKey};
use crate::error::{Error, ErrorKind, Result};

/// A cipher with only a keyed hash (RustCrypto's BLAKE2b), for anonymizer tests.
#[derive(Debug)]
pub(crate) struct HashOnlyCipher;

impl Cipher for HashOnlyCipher {
    fn name(&self) -> &'static str {
        "hash-only-test"
    }
    fn aead_seal(&self, _: &SecretKey, _: &[u8; NONCE_LEN], _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
    fn aead_open(&self, _: &SecretKey, _: &[u8; NONCE_LEN], _: &[u8], _: &[u8]) -> Result<Vec<u8>> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
    fn password_kdf(&self, _: &[u8], _: &[u8; SALT_LEN], _: KdfCost) -> Result<SecretKey> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
    fn keyed_hash(&self, key: &SecretKey, parts: &[&[u8]]) -> Result<[u8; HASH_LEN]> {
        let mut mac = Blake2bMac::<U32>::new_from_slice(key.expose())
            .map_err(|_| Error::internal("BLAKE2b key"))?;
        for p in parts {
            mac.update(p);
        }
        Ok(mac.finalize().into_bytes().into())
    }
    fn fill_random(&self, _: &mut [u8]) -> Result<()> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
    fn x25519_public(&self, _: &SecretKey) -> Result<[u8; 32]> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
    fn x25519(&self, _: &SecretKey, _: &[u8; 32]) -> Result<SecretKey> {
        Err(Error::internal("not in the hash-only test cipher"))
    }
}

#[test]
fn the_test_cipher_is_keyed_blake2b() {
    let key = SecretKey::from_bytes(core::array::from_fn(|i| i as u8));
    let h = HashOnlyCipher
        .keyed_hash(&key, &[b"hearth", b" keyed hash"])
        .expect("hash");
    assert_eq!(hex::encode(h), crate::testkit::vectors::HASH_OF_PARTS);
}

#[test]
fn names_are_checked_without_echoing_them() {
    use super::validate_name;
    assert!(validate_name("purpose", "debugging").is_ok());
    assert!(validate_name("purpose", &"x".repeat(256)).is_ok());
    for bad in ["", "line\nbreak", "nul\0"] {
        let e = validate_name("purpose", bad).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
    }
    let long = "SECRETNAME".repeat(30);
    let e = validate_name("purpose", &long).expect_err("too long");
    assert!(!e.to_string().contains("SECRETNAME"));
}

#[test]
fn destination_keys_parse_from_hex() {
    use super::DestinationKey;
    let hex = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
    let k = DestinationKey::from_hex(hex).expect("parse");
    assert_eq!(k.to_hex(), hex);
    for bad in ["", "zz", &hex[..62], &format!("{hex}00")] {
        assert_eq!(
            DestinationKey::from_hex(bad).map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidInput)
        );
    }
}

#[test]
fn sealed_shares_with_a_bad_header_are_typed_errors() {
    use super::open_from_device;
    let secret = SecretKey::from_bytes([7; 32]);
    let kind = |bytes: &[u8]| {
        open_from_device(&HashOnlyCipher, &secret, "dest", "purpose", bytes)
            .map(|_| ())
            .map_err(|e| e.kind())
            .err()
    };
    assert_eq!(kind(&[]), Some(ErrorKind::Corrupt));
    assert_eq!(kind(&[9; 100]), Some(ErrorKind::Unsupported));
    assert_eq!(kind(&[1; 40]), Some(ErrorKind::Corrupt));
}
