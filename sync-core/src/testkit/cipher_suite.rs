use crate::cipher::{Cipher, CipherExt, KdfCost, NONCE_LEN, SALT_LEN, SecretKey};
use crate::error::ErrorKind;
use crate::testkit::vectors as v;

fn hex32(s: &str) -> [u8; 32] {
    let b = hex::decode(s).expect("vector hex");
    b.try_into().expect("32-byte vector")
}

fn kind<T>(r: crate::Result<T>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind())
}

/// Runs the cipher conformance suite against `cipher`: fixed vectors for every primitive,
/// round trips, and rejection of every kind of tampering.
pub fn cipher_suite(cipher: &dyn Cipher) {
    let name = cipher.name();

    // AEAD vector.
    let key = SecretKey::from_bytes(hex32(v::AEAD_KEY));
    let nonce: [u8; NONCE_LEN] = hex::decode(v::AEAD_NONCE)
        .expect("hex")
        .try_into()
        .expect("nonce");
    let aad = hex::decode(v::AEAD_AAD).expect("hex");
    let sealed = cipher
        .aead_seal(&key, &nonce, &aad, v::AEAD_PLAINTEXT)
        .expect("seal");
    assert_eq!(
        hex::encode(&sealed),
        v::AEAD_SEALED,
        "{name}: XChaCha20-Poly1305 vector"
    );
    let opened = cipher
        .aead_open(&key, &nonce, &aad, &sealed)
        .expect("open vector");
    assert_eq!(opened, v::AEAD_PLAINTEXT, "{name}: open vector");

    // Any flipped bit anywhere in ciphertext or tag is rejected as Tampered.
    for i in 0..sealed.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = sealed.clone();
            t[i] ^= bit;
            assert_eq!(
                kind(cipher.aead_open(&key, &nonce, &aad, &t)),
                Some(ErrorKind::Tampered),
                "{name}: flipped byte {i} must be rejected"
            );
        }
    }
    // AAD mismatch, wrong nonce, wrong key, truncation.
    let mut other_aad = aad.clone();
    other_aad[0] ^= 1;
    assert_eq!(
        kind(cipher.aead_open(&key, &nonce, &other_aad, &sealed)),
        Some(ErrorKind::Tampered),
        "{name}: AAD mismatch"
    );
    assert_eq!(
        kind(cipher.aead_open(&key, &nonce, b"", &sealed)),
        Some(ErrorKind::Tampered),
        "{name}: missing AAD"
    );
    let mut other_nonce = nonce;
    other_nonce[23] ^= 1;
    assert_eq!(
        kind(cipher.aead_open(&key, &other_nonce, &aad, &sealed)),
        Some(ErrorKind::Tampered),
        "{name}: wrong nonce"
    );
    let other_key = SecretKey::from_bytes([7u8; 32]);
    assert_eq!(
        kind(cipher.aead_open(&other_key, &nonce, &aad, &sealed)),
        Some(ErrorKind::Tampered),
        "{name}: wrong key"
    );
    assert!(
        cipher
            .aead_open(&key, &nonce, &aad, &sealed[..sealed.len() - 1])
            .is_err(),
        "{name}: truncated"
    );
    assert!(
        cipher.aead_open(&key, &nonce, &aad, &sealed[..15]).is_err(),
        "{name}: shorter than a tag"
    );
    // Empty plaintext round-trips.
    let empty = cipher
        .aead_seal(&key, &nonce, b"", b"")
        .expect("seal empty");
    assert_eq!(empty.len(), 16);
    assert_eq!(
        cipher
            .aead_open(&key, &nonce, b"", &empty)
            .expect("open empty"),
        b""
    );

    // Random-nonce sealing: fresh nonces, round trip, AAD bound.
    let a = cipher
        .seal_random_nonce(&key, b"ctx", b"same")
        .expect("seal");
    let b = cipher
        .seal_random_nonce(&key, b"ctx", b"same")
        .expect("seal");
    assert_ne!(a, b, "{name}: nonces must be fresh");
    assert_eq!(
        cipher.open_random_nonce(&key, b"ctx", &a).expect("open"),
        b"same"
    );
    assert_eq!(
        kind(cipher.open_random_nonce(&key, b"other", &a)),
        Some(ErrorKind::Tampered)
    );
    assert_eq!(
        kind(cipher.open_random_nonce(&key, b"ctx", &a[..20])),
        Some(ErrorKind::Corrupt)
    );

    // Argon2id vectors (libsodium crypto_pwhash, ALG_ARGON2ID13).
    let salt: [u8; SALT_LEN] = hex::decode(v::KDF_SALT)
        .expect("hex")
        .try_into()
        .expect("salt");
    for (t, m, expected) in v::KDF_VECTORS {
        let cost = KdfCost {
            iterations: *t,
            memory_kib: *m,
        };
        let k = cipher
            .password_kdf(v::KDF_PASSPHRASE, &salt, cost)
            .expect("kdf");
        assert_eq!(
            hex::encode(k.expose()),
            *expected,
            "{name}: Argon2id t={t} m={m}"
        );
    }
    let k1 = cipher
        .password_kdf(b"a", &salt, KdfCost::INSECURE_FOR_TESTS)
        .expect("kdf");
    let k2 = cipher
        .password_kdf(b"b", &salt, KdfCost::INSECURE_FOR_TESTS)
        .expect("kdf");
    assert_ne!(k1, k2, "{name}: different passphrases give different keys");
    assert_eq!(
        kind(cipher.password_kdf(
            b"a",
            &salt,
            KdfCost {
                iterations: 0,
                memory_kib: 1024
            }
        )),
        Some(ErrorKind::InvalidInput),
        "{name}: invalid KDF cost"
    );

    // Keyed BLAKE2b vectors; parts are concatenated.
    let hk = SecretKey::from_bytes(hex32(v::HASH_KEY));
    assert_eq!(
        hex::encode(
            cipher
                .keyed_hash(&hk, &[b"hearth", b" keyed hash"])
                .expect("hash")
        ),
        v::HASH_OF_PARTS,
        "{name}: keyed BLAKE2b"
    );
    assert_eq!(
        hex::encode(
            cipher
                .keyed_hash(&hk, &[b"hearth keyed", b" hash"])
                .expect("hash")
        ),
        v::HASH_OF_PARTS,
        "{name}: parts concatenate"
    );
    assert_eq!(
        hex::encode(cipher.keyed_hash(&hk, &[]).expect("hash")),
        v::HASH_OF_EMPTY,
        "{name}: empty message"
    );
    assert_eq!(
        hex::encode(
            cipher
                .derive_subkey(&hk, b"hearth.blind-index")
                .expect("subkey")
                .expose()
        ),
        v::SUBKEY_BLIND_INDEX,
        "{name}: subkey derivation"
    );

    // Randomness.
    let mut r1 = [0u8; 32];
    let mut r2 = [0u8; 32];
    cipher.fill_random(&mut r1).expect("random");
    cipher.fill_random(&mut r2).expect("random");
    assert_ne!(r1, r2, "{name}: random bytes repeat");
    cipher.fill_random(&mut []).expect("empty random fill");

    // X25519 (RFC 7748 §6.1), both directions, and a low-order point refused.
    let alice = SecretKey::from_bytes(hex32(v::X25519_ALICE_SECRET));
    let bob = SecretKey::from_bytes(hex32(v::X25519_BOB_SECRET));
    assert_eq!(
        hex::encode(cipher.x25519_public(&alice).expect("public")),
        v::X25519_ALICE_PUBLIC,
        "{name}: X25519 public key"
    );
    assert_eq!(
        hex::encode(cipher.x25519_public(&bob).expect("public")),
        v::X25519_BOB_PUBLIC,
        "{name}: X25519 public key"
    );
    let ab = cipher
        .x25519(&alice, &hex32(v::X25519_BOB_PUBLIC))
        .expect("agree");
    let ba = cipher
        .x25519(&bob, &hex32(v::X25519_ALICE_PUBLIC))
        .expect("agree");
    assert_eq!(
        hex::encode(ab.expose()),
        v::X25519_SHARED,
        "{name}: X25519 shared secret"
    );
    assert_eq!(ab, ba);
    assert_eq!(
        kind(cipher.x25519(&alice, &[0u8; 32])),
        Some(ErrorKind::InvalidInput),
        "{name}: low-order point"
    );

    envelope_vector(cipher);
    privacy_vectors(cipher);
    keyring_vector(cipher);
}

fn keyring_vector(cipher: &dyn Cipher) {
    use crate::cipher::Passphrase;
    use crate::keyring::Keyring;
    let name = cipher.name();
    let ring = Keyring::decode(&hex::decode(v::KEYRING).expect("hex")).expect("decode vector");
    assert_eq!(
        ring.encode().expect("encode"),
        hex::decode(v::KEYRING).expect("hex"),
        "{name}: key header re-encodes to the same bytes"
    );
    let root = ring
        .unlock(cipher, &Passphrase::new(v::KEYRING_PASSPHRASE))
        .expect("the shared key header vector must unlock");
    assert_eq!(
        hex::encode(root.expose()),
        v::KEYRING_ROOT,
        "{name}: key header vector root key"
    );
    assert_eq!(
        kind(ring.unlock(cipher, &Passphrase::new("hearth keyring vectoR"))),
        Some(ErrorKind::WrongPassphrase),
        "{name}: key header vector with a wrong passphrase"
    );
    assert_eq!(
        hex::encode(
            cipher
                .derive_subkey(&root, b"hearth.sqlcipher-page-key")
                .expect("subkey")
                .expose()
        ),
        v::PAGE_KEY,
        "{name}: SQLCipher page key derivation"
    );
    assert_eq!(
        hex::encode(
            crate::store::sidecar::page_key(cipher, &root)
                .expect("page key")
                .expose()
        ),
        v::PAGE_KEY,
        "{name}: the store derives the page key as the vector says"
    );

    // The same key header as a sidecar file: decodes, re-encodes byte for byte, and any damaged
    // byte is Corrupt (never WrongPassphrase).
    use crate::store::sidecar;
    let file = hex::decode(v::SIDECAR).expect("hex");
    let decoded = sidecar::decode(cipher, &file).expect("decode sidecar vector");
    assert_eq!(
        decoded.encode().expect("encode"),
        ring.encode().expect("encode")
    );
    assert_eq!(
        sidecar::encode(cipher, &decoded).expect("encode sidecar"),
        file,
        "{name}: sidecar encoding"
    );
    for i in 0..file.len() {
        let mut t = file.clone();
        t[i] ^= 0x10;
        let k = kind(sidecar::decode(cipher, &t));
        assert!(
            matches!(k, Some(ErrorKind::Corrupt | ErrorKind::Unsupported)),
            "{name}: sidecar byte {i} damaged gave {k:?}"
        );
    }
    assert_eq!(
        kind(sidecar::decode(cipher, &file[..file.len() - 1])),
        Some(ErrorKind::Corrupt),
        "{name}: truncated sidecar"
    );
}

fn envelope_vector(cipher: &dyn Cipher) {
    use crate::envelope::RecordKeys;
    use crate::model::SpaceId;
    let root = SecretKey::from_bytes(hex32(v::ENVELOPE_ROOT_KEY));
    let keys = RecordKeys::derive(cipher, SpaceId([0x11; 16]), 1, &root).expect("keys");
    let id = keys.record_id(cipher, "notes", "n1").expect("id");
    let env = hex::decode(v::ENVELOPE).expect("hex");
    let p = keys
        .open(cipher, &id, &env)
        .expect("the shared envelope vector must open");
    assert_eq!(p.collection, "notes");
    assert_eq!(p.key, "n1");
    assert_eq!(p.value.as_deref(), Some(&br#"{"title":"vector"}"#[..]));
    let other = keys.record_id(cipher, "notes", "n2").expect("id");
    assert_eq!(
        kind(keys.open(cipher, &other, &env)),
        Some(ErrorKind::Tampered),
        "envelope moved to another record"
    );
}

/// The privacy pipeline's formats: sealing to a destination and keyed pseudonyms.
fn privacy_vectors(cipher: &dyn Cipher) {
    use crate::privacy::destination::{DestinationKey, open_from_device, seal_with};
    let name = cipher.name();
    let eph = SecretKey::from_bytes(hex32(v::X25519_ALICE_SECRET));
    let dest_secret = SecretKey::from_bytes(hex32(v::X25519_BOB_SECRET));
    let dest = DestinationKey::from_bytes(hex32(v::X25519_BOB_PUBLIC));
    let nonce: [u8; NONCE_LEN] = core::array::from_fn(|i| i as u8);
    let sealed = seal_with(
        cipher,
        &eph,
        &nonce,
        &dest,
        v::SHARE_DESTINATION,
        v::SHARE_PURPOSE,
        v::SHARE_PLAINTEXT,
    )
    .expect("seal to destination");
    assert_eq!(
        hex::encode(&sealed),
        v::SHARE_SEALED,
        "{name}: sealed-share vector"
    );
    let opened = open_from_device(
        cipher,
        &dest_secret,
        v::SHARE_DESTINATION,
        v::SHARE_PURPOSE,
        &sealed,
    )
    .expect("open sealed share");
    assert_eq!(&opened[..], v::SHARE_PLAINTEXT, "{name}: open sealed share");
    assert_eq!(
        kind(open_from_device(
            cipher,
            &dest_secret,
            v::SHARE_DESTINATION,
            "another-purpose",
            &sealed
        )),
        Some(ErrorKind::Tampered),
        "{name}: a share opened for another purpose"
    );

    let root = SecretKey::from_bytes(hex32(v::HASH_KEY));
    for (purpose, expected) in [
        ("usage-stats", v::PSEUDONYM_USAGE_STATS),
        ("debugging", v::PSEUDONYM_DEBUGGING),
    ] {
        let key = cipher
            .derive_subkey(&root, format!("hearth.pseudonym/{purpose}").as_bytes())
            .expect("purpose key");
        assert_eq!(
            crate::privacy::anonymize::pseudonym_with(cipher, &key, "+15550123456")
                .expect("pseudonym"),
            expected,
            "{name}: pseudonym vector for {purpose}"
        );
    }
}
