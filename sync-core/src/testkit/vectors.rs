//! Fixed test vectors shared by every cipher backend.
//!
//! The AEAD vector is the XChaCha20-Poly1305 vector of draft-irtf-cfrg-xchacha-03, §A.3.1.
//! The Argon2id and BLAKE2b vectors were computed independently with libsodium (through PyNaCl)
//! and Python's `hashlib`, not with either of hearth's backends.

/// XChaCha20-Poly1305: key `80..9f`.
pub const AEAD_KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
/// XChaCha20-Poly1305: nonce `40..57`.
pub const AEAD_NONCE: &str = "404142434445464748494a4b4c4d4e4f5051525354555657";
/// XChaCha20-Poly1305: associated data.
pub const AEAD_AAD: &str = "50515253c0c1c2c3c4c5c6c7";
/// XChaCha20-Poly1305: plaintext.
pub const AEAD_PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
/// XChaCha20-Poly1305: `ciphertext || tag`.
pub const AEAD_SEALED: &str = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52ec0875924c1c7987947deafd8780acf49";

/// Argon2id: passphrase.
pub const KDF_PASSPHRASE: &[u8] = b"correct horse battery staple";
/// Argon2id: salt `00..0f`.
pub const KDF_SALT: &str = "000102030405060708090a0b0c0d0e0f";
/// Argon2id (t, m KiB, 32-byte output): expected keys, from libsodium `crypto_pwhash` with
/// `ALG_ARGON2ID13`.
pub const KDF_VECTORS: &[(u32, u32, &str)] = &[
    (
        3,
        1024,
        "590d7ddd37a1ed86417a3614be47c9f782828a38902390018d39bb6556fee029",
    ),
    (
        1,
        1024,
        "f0d1525842159cef972608e2f8bc1cb2c8230f81eea76f124789f6beb42403b2",
    ),
];

/// Keyed BLAKE2b-256: key `00..1f`.
pub const HASH_KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
/// Keyed BLAKE2b-256 of `"hearth" || " keyed hash"` (given as two parts).
pub const HASH_OF_PARTS: &str = "3790d56f960d06962a2e705810873e72dcc89474bbafe73fec8453358667e982";
/// Keyed BLAKE2b-256 of the empty message.
pub const HASH_OF_EMPTY: &str = "4e51e7a913fc80137da52880fecca175bf81e117d5c68126dc2774033517ea0d";
/// `derive_subkey(HASH_KEY, "hearth.blind-index")`.
pub const SUBKEY_BLIND_INDEX: &str =
    "19f8382817859d4d5721b3df21e268d91a96a53c903c79b8e61d11263a79af8a";

/// A sealed record envelope (format 1) made by hearth, for root key [`HASH_KEY`], space
/// `0x11` × 16, key id 1, collection `"notes"`, key `"n1"`, value `{"title":"vector"}`.
/// Every backend must open it to the same payload.
pub const ENVELOPE_ROOT_KEY: &str = HASH_KEY;
/// See [`ENVELOPE_ROOT_KEY`].
/// Verified independently: libsodium (PyNaCl) opens it with keys derived by `hashlib.blake2b`.
pub const ENVELOPE: &str = "01000000017caee439046f7d93ef516d7ed8f2a0a56b0479145b412e3059ee43fcd5c5fe014875ad67cc3f0c9d45c5348d11066c5b1451e1d50d3ab07cd1691a6de0e5945c4ab7a5e03e87ab05dd0bfa63c9c4701ac754efe1adf6d8bb92ff0db441017b5496b2bfa410f775602f45e599b68f2c5b7f8390adf13be3d52edb528b0e4c8782538ecc286eca9237";

/// X25519 (RFC 7748 §6.1): Alice's secret key.
pub const X25519_ALICE_SECRET: &str =
    "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a";
/// X25519: Alice's public key.
pub const X25519_ALICE_PUBLIC: &str =
    "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
/// X25519: Bob's secret key.
pub const X25519_BOB_SECRET: &str =
    "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb";
/// X25519: Bob's public key.
pub const X25519_BOB_PUBLIC: &str =
    "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
/// X25519: the shared secret.
pub const X25519_SHARED: &str = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";

/// A payload sealed to a destination (privacy pipeline, share format 1): ephemeral secret
/// [`X25519_ALICE_SECRET`], destination key pair Bob's ([`X25519_BOB_SECRET`]), nonce `00..17`,
/// destination [`SHARE_DESTINATION`], purpose [`SHARE_PURPOSE`], plaintext [`SHARE_PLAINTEXT`].
/// Computed independently with libsodium (PyNaCl: `crypto_scalarmult`,
/// `crypto_aead_xchacha20poly1305_ietf_encrypt`) and Python's `hashlib.blake2b`.
pub const SHARE_SEALED: &str = "018520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a000102030405060708090a0b0c0d0e0f1011121314151617fc3011e4daad9be4e7d357066174c7f50010aba980feed6fc29c39226165a60c4098974f25e5dfe096a7230107e35341e819ff2c54370a8254c377b91554ebcde96a0be8751d";
/// See [`SHARE_SEALED`].
pub const SHARE_DESTINATION: &str = "example-analytics";
/// See [`SHARE_SEALED`].
pub const SHARE_PURPOSE: &str = "usage-stats";
/// See [`SHARE_SEALED`].
pub const SHARE_PLAINTEXT: &[u8] = br#"{"data_type":"app-usage","data":{"screen":"settings"}}"#;

/// The pseudonym of `"+15550123456"` for purpose `"usage-stats"` under pseudonym root
/// [`HASH_KEY`]: `BLAKE2b-256(subkey(root, "hearth.pseudonym/usage-stats"), text)[..16]`
/// (Python's `hashlib.blake2b`).
pub const PSEUDONYM_USAGE_STATS: &str = "1c754b5283bda2e66340f10e0f9c5d37";
/// The same value's pseudonym for purpose `"debugging"`.
pub const PSEUDONYM_DEBUGGING: &str = "dc5ac44ab2e3ba18f997032c9c8d8972";
/// A key header (format 1, postcard) made independently with libsodium (PyNaCl) and Python's
/// `hashlib`, not with hearth: space `0x22` × 16, storage `"sqlcipher"`, cipher `"sodium"`,
/// key id 1, Argon2id t = 1, m = 1024 KiB, salt `20..2f`, nonce `60..77`, root key
/// [`KEYRING_ROOT`]. Every backend must unlock it with [`KEYRING_PASSPHRASE`].
pub const KEYRING: &str = "01222222222222222222222222222222220973716c63697068657206736f6469756d01018008202122232425262728292a2b2c2d2e2f48606162636465666768696a6b6c6d6e6f70717273747576772c8e814a7b6f6352eeedd61b5c39aef7afb50b1a38f49d2e3b666d5768187f6f3873be8e50bc529db1c63b4631bb4981e161065f4d8abdf19bc51a166c3aeda8a1aa694de483489afc9e03105eaa9676000000";
/// The passphrase of [`KEYRING`].
pub const KEYRING_PASSPHRASE: &str = "hearth keyring vector";
/// The root key wrapped in [`KEYRING`]: `40..5f`.
pub const KEYRING_ROOT: &str = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
/// `derive_subkey(KEYRING_ROOT, "hearth.sqlcipher-page-key")`: the SQLCipher page key of a store
/// with that root key (computed with `hashlib.blake2b`).
pub const PAGE_KEY: &str = "afff48d8e835155b52f9b88d8ce6ed5f84f9bd2ca343a987aaec4e544c8337b2";
/// [`KEYRING`] as a key header file (`<path>.keys`, sidecar format 1: magic, format, length,
/// key header, BLAKE2b-256 checksum keyed with 32 zero bytes), computed with Python's `hashlib`.
pub const SIDECAR: &str = "485254484b45595301000000a201222222222222222222222222222222220973716c63697068657206736f6469756d01018008202122232425262728292a2b2c2d2e2f48606162636465666768696a6b6c6d6e6f70717273747576772c8e814a7b6f6352eeedd61b5c39aef7afb50b1a38f49d2e3b666d5768187f6f3873be8e50bc529db1c63b4631bb4981e161065f4d8abdf19bc51a166c3aeda8a1aa694de483489afc9e03105eaa9676000000f96cb387cbcd4b18ea1fff153a7aa10b0fd247ed3c5916c0cd615b72a0fc52d3";
