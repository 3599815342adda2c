//! Sealing to a destination's public key, and opening on the receiving side.
//!
//! Built from [`Cipher`] primitives only, so every backend produces the same bytes (format 1):
//!
//! ```text
//! eph_secret      = 32 random bytes (a fresh X25519 key per message)
//! eph_public      = X25519(eph_secret, 9)
//! shared          = X25519(eph_secret, dest_public)          (all-zero output is refused)
//! key             = BLAKE2b-256(key = "hearth.share.v1/x25519-xchacha20",
//!                               shared || eph_public || dest_public)
//! nonce           = 24 random bytes
//! aad             = "hearth.share" || format (1) || u32 BE len(destination) || destination
//!                                  || u32 BE len(purpose) || purpose
//! sealed          = format (1) || eph_public (32) || nonce (24)
//!                   || XChaCha20-Poly1305(key, nonce, aad, plaintext) (ciphertext || tag)
//! ```
//!
//! The receiver, holding `dest_secret`, computes `shared = X25519(dest_secret, eph_public)`
//! and the same key. The AAD binds the destination and the purpose: a payload consented for one
//! purpose or destination does not open as another. The plaintext the pipeline seals is a
//! [`ShareDocument`] as JSON.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::cipher::{Cipher, CipherExt, NONCE_LEN, SecretKey, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::privacy::validate_name;

/// The sealed-share format this build writes.
pub const SHARE_FORMAT: u8 = 1;
/// The fixed BLAKE2b key of the share key derivation (32 ASCII bytes).
pub const SHARE_KDF_KEY: &[u8; 32] = b"hearth.share.v1/x25519-xchacha20";
/// Bytes before the ciphertext: format, ephemeral public key, nonce.
pub const SHARE_HEADER_LEN: usize = 1 + 32 + NONCE_LEN;

/// A destination's X25519 public key. Public: its `Debug` shows it in hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DestinationKey([u8; 32]);

impl DestinationKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self> {
        let bytes = hex::decode(text.trim()).map_err(|e| {
            Error::invalid("a destination key must be 64 hex digits").with_source(e)
        })?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| Error::invalid("a destination key must be 32 bytes (64 hex digits)"))?;
        Ok(Self(arr))
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for DestinationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DestinationKey({})", self.to_hex())
    }
}

/// A destination's key pair, for the receiving side (and tests). The secret is zeroized on
/// drop and redacted in `Debug`.
#[derive(Clone, Debug)]
pub struct DestinationKeyPair {
    secret: SecretKey,
    public: DestinationKey,
}

impl DestinationKeyPair {
    /// A fresh random key pair.
    pub fn generate(cipher: &dyn Cipher) -> Result<Self> {
        Self::from_secret(cipher, cipher.random_key()?)
    }

    /// The key pair of `secret`.
    pub fn from_secret(cipher: &dyn Cipher, secret: SecretKey) -> Result<Self> {
        let public = DestinationKey(cipher.x25519_public(&secret)?);
        Ok(Self { secret, public })
    }

    /// The public key, to configure on devices.
    pub fn public(&self) -> DestinationKey {
        self.public
    }

    /// The secret key. Keep it on the receiving side.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }
}

/// The public keys of the destinations data may go to, by name.
#[derive(Clone, Debug, Default)]
pub struct Destinations {
    keys: HashMap<String, DestinationKey>,
}

impl Destinations {
    /// No destinations.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) the key of `name`.
    pub fn insert(&mut self, name: impl Into<String>, key: DestinationKey) -> Result<&mut Self> {
        let name = name.into();
        validate_name("destination", &name)?;
        self.keys.insert(name, key);
        Ok(self)
    }

    /// The key of `name`.
    pub fn get(&self, name: &str) -> Option<&DestinationKey> {
        self.keys.get(name)
    }

    /// Number of destinations.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the pipeline seals: the data type and the anonymized data. Its `Debug` hides the data.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ShareDocument {
    /// The data type, so one destination can receive several.
    pub data_type: String,
    /// The anonymized payload.
    pub data: Value,
}

impl fmt::Debug for ShareDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShareDocument")
            .field("data_type", &self.data_type)
            .finish_non_exhaustive()
    }
}

fn aad(destination: &str, purpose: &str) -> Result<Vec<u8>> {
    validate_name("destination", destination)?;
    validate_name("purpose", purpose)?;
    let len = |s: &str| {
        u32::try_from(s.len())
            .map(u32::to_be_bytes)
            .map_err(|_| Error::invalid("name too long"))
    };
    let mut aad = Vec::with_capacity(12 + 1 + 8 + destination.len() + purpose.len());
    aad.extend_from_slice(b"hearth.share");
    aad.push(SHARE_FORMAT);
    aad.extend_from_slice(&len(destination)?);
    aad.extend_from_slice(destination.as_bytes());
    aad.extend_from_slice(&len(purpose)?);
    aad.extend_from_slice(purpose.as_bytes());
    Ok(aad)
}

fn share_key(
    cipher: &dyn Cipher,
    shared: &SecretKey,
    eph_public: &[u8; 32],
    dest_public: &[u8; 32],
) -> Result<SecretKey> {
    let kdf_key = SecretKey::from_bytes(*SHARE_KDF_KEY);
    let k =
        Zeroizing::new(cipher.keyed_hash(&kdf_key, &[shared.expose(), eph_public, dest_public])?);
    Ok(SecretKey::from_bytes(*k))
}

/// Seals `plaintext` to `key` for `destination` and `purpose` (format above).
pub fn seal_for_destination(
    cipher: &dyn Cipher,
    key: &DestinationKey,
    destination: &str,
    purpose: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let eph_secret = cipher.random_key()?;
    let mut nonce = [0u8; NONCE_LEN];
    cipher.fill_random(&mut nonce)?;
    seal_with(
        cipher,
        &eph_secret,
        &nonce,
        key,
        destination,
        purpose,
        plaintext,
    )
}

/// [`seal_for_destination`] with a given ephemeral secret and nonce: for test vectors only.
pub(crate) fn seal_with(
    cipher: &dyn Cipher,
    eph_secret: &SecretKey,
    nonce: &[u8; NONCE_LEN],
    key: &DestinationKey,
    destination: &str,
    purpose: &str,
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let aad = aad(destination, purpose)?;
    let eph_public = cipher.x25519_public(eph_secret)?;
    let shared = cipher.x25519(eph_secret, key.as_bytes()).map_err(|e| {
        if e.kind() == ErrorKind::InvalidInput {
            Error::invalid("the destination's public key is not a usable X25519 key")
        } else {
            e
        }
    })?;
    let k = share_key(cipher, &shared, &eph_public, key.as_bytes())?;
    let ct = cipher.aead_seal(&k, nonce, &aad, plaintext)?;
    let mut out = Vec::with_capacity(SHARE_HEADER_LEN + ct.len());
    out.push(SHARE_FORMAT);
    out.extend_from_slice(&eph_public);
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a payload sealed to the destination whose secret key is `secret`, for `destination`
/// and `purpose` (the receiving side). A truncated input is [`ErrorKind::Corrupt`], an unknown
/// format [`ErrorKind::Unsupported`], and anything that fails to authenticate (another key,
/// destination or purpose, a flipped bit, a degenerate ephemeral key) [`ErrorKind::Tampered`].
pub fn open_from_device(
    cipher: &dyn Cipher,
    secret: &SecretKey,
    destination: &str,
    purpose: &str,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>> {
    let aad = aad(destination, purpose)?;
    match sealed.first() {
        None => return Err(Error::corrupt("sealed share is empty")),
        Some(&SHARE_FORMAT) => {}
        Some(v) => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("sealed share format {v} is not supported (supports {SHARE_FORMAT})"),
            ));
        }
    }
    if sealed.len() < SHARE_HEADER_LEN + TAG_LEN {
        return Err(Error::corrupt("sealed share is truncated"));
    }
    let mut eph_public = [0u8; 32];
    eph_public.copy_from_slice(&sealed[1..33]);
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(&sealed[33..SHARE_HEADER_LEN]);
    let dest_public = cipher.x25519_public(secret)?;
    let shared = cipher
        .x25519(secret, &eph_public)
        .map_err(|_| Error::tampered())?;
    let k = share_key(cipher, &shared, &eph_public, &dest_public)?;
    let plain = cipher.aead_open(&k, &nonce, &aad, &sealed[SHARE_HEADER_LEN..])?;
    Ok(Zeroizing::new(plain))
}

/// Opens a sealed [`ShareDocument`] (what [`Sharer`](crate::privacy::Sharer) sends).
pub fn open_share_document(
    cipher: &dyn Cipher,
    secret: &SecretKey,
    destination: &str,
    purpose: &str,
    sealed: &[u8],
) -> Result<ShareDocument> {
    let plain = open_from_device(cipher, secret, destination, purpose, sealed)?;
    serde_json::from_slice(&plain)
        .map_err(|e| Error::corrupt("the shared document is not valid JSON").with_source(e))
}
