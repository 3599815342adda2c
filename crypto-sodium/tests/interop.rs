//! Byte-level interoperability of crypto-sodium and crypto-orion, both ways: what one writes,
//! the other reads, and every deterministic primitive gives the same bytes.
//!
//! The test kit's fixed vectors pin each backend to independently computed bytes; these tests
//! add many random inputs and the composite formats (envelopes, key headers) sealed by one
//! backend and opened by the other.

use crypto_orion::OrionCipher;
use crypto_sodium::SodiumCipher;
use sync_core::cipher::{CipherExt, NONCE_LEN, SALT_LEN};
use sync_core::envelope::{Padding, Payload, RecordKeys};
use sync_core::keyring::Keyring;
use sync_core::{
    Cipher, DeviceId, ErrorKind, Hlc, HlcClock, KdfCost, Passphrase, SpaceId, VersionVector,
};

fn pairs() -> [(&'static dyn Cipher, &'static dyn Cipher); 2] {
    [(&SodiumCipher, &OrionCipher), (&OrionCipher, &SodiumCipher)]
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    SodiumCipher.fill_random(&mut b).expect("random");
    b
}

fn random_len(max: usize) -> usize {
    let b = random_bytes(4);
    u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize % (max + 1)
}

#[test]
fn aead_outputs_are_identical_and_open_across_backends() {
    for round in 0..200 {
        let key = SodiumCipher.random_key().expect("key");
        let mut nonce = [0u8; NONCE_LEN];
        SodiumCipher.fill_random(&mut nonce).expect("nonce");
        // Lengths around block boundaries and beyond (ChaCha20 blocks are 64 bytes).
        let len = if round < 130 { round } else { random_len(5000) };
        let plain = random_bytes(len);
        let aad = random_bytes(random_len(100));
        let s = SodiumCipher
            .aead_seal(&key, &nonce, &aad, &plain)
            .expect("sodium seal");
        let o = OrionCipher
            .aead_seal(&key, &nonce, &aad, &plain)
            .expect("orion seal");
        assert_eq!(
            s, o,
            "same key, nonce, aad, plaintext: same bytes (len {len})"
        );
        for (a, b) in pairs() {
            let sealed = a.aead_seal(&key, &nonce, &aad, &plain).expect("seal");
            assert_eq!(
                b.aead_open(&key, &nonce, &aad, &sealed).expect("open"),
                plain
            );
            let mut t = sealed.clone();
            let i = random_len(t.len() - 1);
            t[i] ^= 0x04;
            assert_eq!(
                b.aead_open(&key, &nonce, &aad, &t).err().map(|e| e.kind()),
                Some(ErrorKind::Tampered),
                "{} must refuse what {} sealed once altered",
                b.name(),
                a.name()
            );
        }
    }
}

#[test]
fn argon2id_outputs_are_identical() {
    let costs = [
        KdfCost::INSECURE_FOR_TESTS,
        KdfCost {
            iterations: 2,
            memory_kib: 8,
        },
        KdfCost {
            iterations: 3,
            memory_kib: 4096,
        },
        KdfCost {
            iterations: 4,
            memory_kib: 1000, // not a power of two
        },
    ];
    let passphrases: [&[u8]; 4] = [
        b"",
        b"correct horse battery staple",
        "pässwörd – ünïcode ✓".as_bytes(),
        &[0x5a; 1000],
    ];
    for cost in costs {
        for p in passphrases {
            let mut salt = [0u8; SALT_LEN];
            SodiumCipher.fill_random(&mut salt).expect("salt");
            let s = SodiumCipher.password_kdf(p, &salt, cost).expect("sodium");
            let o = OrionCipher.password_kdf(p, &salt, cost).expect("orion");
            assert_eq!(s, o, "Argon2id {cost:?}, passphrase of {} bytes", p.len());
        }
    }
}

#[test]
fn keyed_hashes_subkeys_and_x25519_are_identical() {
    for _ in 0..200 {
        let key = SodiumCipher.random_key().expect("key");
        let parts: Vec<Vec<u8>> = (0..random_len(5))
            .map(|_| random_bytes(random_len(300)))
            .collect();
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        assert_eq!(
            SodiumCipher.keyed_hash(&key, &refs).expect("sodium"),
            OrionCipher.keyed_hash(&key, &refs).expect("orion")
        );
        let ctx = random_bytes(random_len(64));
        assert_eq!(
            SodiumCipher.derive_subkey(&key, &ctx).expect("sodium"),
            OrionCipher.derive_subkey(&key, &ctx).expect("orion")
        );

        let a = SodiumCipher.random_key().expect("key");
        let b = SodiumCipher.random_key().expect("key");
        let a_pub = SodiumCipher.x25519_public(&a).expect("sodium public");
        assert_eq!(a_pub, OrionCipher.x25519_public(&a).expect("orion public"));
        let b_pub = OrionCipher.x25519_public(&b).expect("orion public");
        let ab = SodiumCipher.x25519(&a, &b_pub).expect("sodium agree");
        let ba = OrionCipher.x25519(&b, &a_pub).expect("orion agree");
        assert_eq!(ab, ba, "X25519 agreement across backends");
    }
}

fn payload(device: DeviceId, n: u64, value: Option<Vec<u8>>) -> Payload {
    let mut version = VersionVector::default();
    version.set(device, n);
    let mut clock = HlcClock::new(device);
    let hlc: Hlc = clock.tick(1_764_000_000_000 + n);
    Payload {
        collection: "notes".to_owned(),
        key: format!("note-{n}"),
        value,
        version,
        hlc,
        origin: device,
        seq: n,
    }
}

#[test]
fn envelopes_sealed_by_one_backend_open_with_the_other() {
    let root = SodiumCipher.random_key().expect("root");
    let space = SpaceId([0x5e; 16]);
    let device = DeviceId([0x0d; 16]);
    let ks = RecordKeys::derive(&SodiumCipher, space, 7, &root).expect("keys");
    let ko = RecordKeys::derive(&OrionCipher, space, 7, &root).expect("keys");
    assert_eq!(ks.record_key, ko.record_key);
    assert_eq!(ks.blind_key, ko.blind_key);
    for n in 0..50u64 {
        let value = (n % 7 != 6).then(|| random_bytes(random_len(3000)));
        let p = payload(device, n, value);
        for padding in [Padding::Padme, Padding::None] {
            for ((a, ka), (b, kb)) in [
                (
                    (&SodiumCipher as &dyn Cipher, &ks),
                    (&OrionCipher as &dyn Cipher, &ko),
                ),
                (
                    (&OrionCipher as &dyn Cipher, &ko),
                    (&SodiumCipher as &dyn Cipher, &ks),
                ),
            ] {
                let id = ka.record_id(a, &p.collection, &p.key).expect("id");
                assert_eq!(id, kb.record_id(b, &p.collection, &p.key).expect("id"));
                assert_eq!(
                    ka.collection_id(a, "notes").expect("cid"),
                    kb.collection_id(b, "notes").expect("cid")
                );
                let env = ka.seal(a, &id, &p, padding).expect("seal");
                let opened = kb.open(b, &id, &env).expect("open across backends");
                assert!(
                    opened == p,
                    "{} opened what {} sealed unchanged",
                    b.name(),
                    a.name()
                );
                let other = kb.record_id(b, "notes", "elsewhere").expect("id");
                assert_eq!(
                    kb.open(b, &other, &env).err().map(|e| e.kind()),
                    Some(ErrorKind::Tampered)
                );
            }
        }
    }
}

#[test]
fn key_headers_made_by_one_backend_unlock_with_the_other() {
    let pass = Passphrase::new("interop passphrase ✓");
    for (a, b) in pairs() {
        let (ring, root) = Keyring::create(
            a,
            &pass,
            KdfCost::INSECURE_FOR_TESTS,
            SpaceId([0x33; 16]),
            "sqlcipher",
        )
        .expect("create");
        let bytes = ring.encode().expect("encode");
        let decoded = Keyring::decode(&bytes).expect("decode");
        let unlocked = decoded.unlock(b, &pass).expect("unlock across backends");
        assert!(
            unlocked == root,
            "{} unwraps the root {} wrapped",
            b.name(),
            a.name()
        );
        assert_eq!(
            decoded
                .unlock(b, &Passphrase::new("interop passphrase ?"))
                .err()
                .map(|e| e.kind()),
            Some(ErrorKind::WrongPassphrase)
        );
        // Rewrapped (a passphrase change) by the other backend, it still unlocks with the first.
        let mut rewrapped = decoded.clone();
        let new_pass = Passphrase::new("second passphrase");
        rewrapped
            .wrap(b, &new_pass, KdfCost::INSECURE_FOR_TESTS, &unlocked)
            .expect("rewrap");
        assert!(rewrapped.unlock(a, &new_pass).expect("unlock") == root);
        // The page key of a SQLCipher store is the same whichever backend derives it.
        assert_eq!(
            a.derive_subkey(&root, b"hearth.sqlcipher-page-key")
                .expect("a"),
            b.derive_subkey(&root, b"hearth.sqlcipher-page-key")
                .expect("b")
        );
    }
}
