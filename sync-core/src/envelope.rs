//! Sealed envelopes: the one encrypted form of a record version.
//!
//! A record version is sealed once, at write time; the same bytes are stored locally, pushed,
//! kept by the server and pulled by other devices ("encrypt once"). Layout, format 1:
//!
//! ```text
//! offset  size  field
//! 0       1     format version (1)
//! 1       4     key id, big-endian (which record key sealed it; rotation keeps several)
//! 5       24    XChaCha20-Poly1305 nonce (random)
//! 29      n+16  ciphertext || Poly1305 tag
//! ```
//!
//! The associated data binds the envelope to its place, so a ciphertext cannot be moved to
//! another record, space or format: `"hearth.env" || format || space id || record id || key id`.
//!
//! The plaintext is `u32 LE length || postcard(Payload) || zero padding`. The padding rounds the
//! plaintext up to a PADMÉ length (at most 12 % overhead) so sizes leak little.

use serde::{Deserialize, Serialize};

use crate::cipher::{Cipher, CipherExt, NONCE_LEN, SecretKey, TAG_LEN};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{CollectionId, DeviceId, Hlc, RecordId, SpaceId, VersionVector};

/// The envelope format this build writes.
pub const ENVELOPE_FORMAT: u8 = 1;
/// Bytes before the ciphertext: format, key id, nonce.
pub const ENVELOPE_HEADER_LEN: usize = 1 + 4 + NONCE_LEN;
/// Smallest possible envelope: header, a 4-byte length, the tag.
pub const ENVELOPE_MIN_LEN: usize = ENVELOPE_HEADER_LEN + 4 + TAG_LEN;
/// Largest record value accepted (16 MiB of JSON). Larger values belong in blob storage.
pub const MAX_VALUE_LEN: usize = 16 * 1024 * 1024;

/// How plaintexts are padded before sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Padding {
    /// PADMÉ: round up so that only O(log log n) bits of the length leak; ≤ 12 % overhead.
    #[default]
    Padme,
    /// No padding: exact sizes are visible to whoever sees the ciphertext.
    None,
}

impl Padding {
    /// The padded length for a plaintext of `len` bytes.
    pub fn padded_len(self, len: usize) -> usize {
        match self {
            Padding::None => len,
            Padding::Padme => padme(len),
        }
    }
}

/// PADMÉ (Nikitin et al., "Reducing Metadata Leakage from Encrypted Files and Communication
/// with PURBs", 2019): keeps the top ⌊log2 E⌋ + 1 bits of the length, rounds up the rest.
fn padme(len: usize) -> usize {
    if len < 2 {
        return len;
    }
    let e = usize::BITS - 1 - len.leading_zeros(); // ⌊log2 len⌋
    let s = u32::BITS - e.leading_zeros(); // ⌊log2 e⌋ + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (len + mask) & !mask
}

/// The plaintext inside an envelope.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    /// Collection name.
    pub collection: String,
    /// Record key.
    pub key: String,
    /// JSON text of the value; `None` for a tombstone. (Encoded as one byte string: the same
    /// bytes postcard writes for a sequence of `u8`, read with one copy instead of byte by byte.)
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    /// Version vector of this version.
    pub version: VersionVector,
    /// HLC of the write.
    pub hlc: Hlc,
    /// The device that wrote this version.
    pub origin: DeviceId,
    /// The writing device's sequence number for this write.
    pub seq: u64,
}

/// The plaintext is wiped when a payload is dropped (the record key, the collection name and
/// the value; the version bookkeeping is not secret). Values handed to the application after
/// decoding are the application's to keep.
impl Drop for Payload {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.collection.zeroize();
        self.key.zeroize();
        if let Some(v) = &mut self.value {
            v.zeroize();
        }
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payload")
            .field("deleted", &self.value.is_none())
            .field("version", &self.version)
            .field("hlc", &self.hlc)
            .field("origin", &self.origin)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// The keys of one space that seal and address records.
#[derive(Clone, Debug)]
pub struct RecordKeys {
    /// The space the keys belong to.
    pub space: SpaceId,
    /// Id of the record key (bumped by root-key rotation).
    pub key_id: u32,
    /// Seals record payloads.
    pub record_key: SecretKey,
    /// Keys the blind index of collection and record names.
    pub blind_key: SecretKey,
}

impl RecordKeys {
    /// Derives the record keys of `space` from its root key.
    pub fn derive(
        cipher: &dyn Cipher,
        space: SpaceId,
        key_id: u32,
        root: &SecretKey,
    ) -> Result<Self> {
        let blind = cipher.derive_subkey(root, b"hearth.blind-index")?;
        Self::derive_with_blind_key(cipher, space, key_id, root, blind)
    }

    /// Like [`RecordKeys::derive`], with a blind-index key kept from before a rotation.
    pub fn derive_with_blind_key(
        cipher: &dyn Cipher,
        space: SpaceId,
        key_id: u32,
        root: &SecretKey,
        blind_key: SecretKey,
    ) -> Result<Self> {
        let mut ctx = b"hearth.record-key/".to_vec();
        ctx.extend_from_slice(&key_id.to_be_bytes());
        Ok(Self {
            space,
            key_id,
            record_key: cipher.derive_subkey(root, &ctx)?,
            blind_key,
        })
    }

    /// The blind id of a record: `BLAKE2b(blind key, "r\0" || len(collection) || collection || key)`.
    pub fn record_id(&self, cipher: &dyn Cipher, collection: &str, key: &str) -> Result<RecordId> {
        let len = u32::try_from(collection.len())
            .map_err(|_| Error::invalid("collection name too long"))?
            .to_be_bytes();
        let h = cipher.keyed_hash(
            &self.blind_key,
            &[b"r\0", &len, collection.as_bytes(), key.as_bytes()],
        )?;
        Ok(RecordId(h))
    }

    /// The blind id of a collection: `BLAKE2b(blind key, "c\0" || collection)`.
    pub fn collection_id(&self, cipher: &dyn Cipher, collection: &str) -> Result<CollectionId> {
        let h = cipher.keyed_hash(&self.blind_key, &[b"c\0", collection.as_bytes()])?;
        Ok(CollectionId(h))
    }

    fn aad(&self, record: &RecordId, key_id: u32) -> Vec<u8> {
        let mut aad = Vec::with_capacity(10 + 1 + 16 + 32 + 4);
        aad.extend_from_slice(b"hearth.env");
        aad.push(ENVELOPE_FORMAT);
        aad.extend_from_slice(self.space.as_bytes());
        aad.extend_from_slice(record.as_bytes());
        aad.extend_from_slice(&key_id.to_be_bytes());
        aad
    }

    /// Seals `payload` for `record`, padded as `padding` says.
    pub fn seal(
        &self,
        cipher: &dyn Cipher,
        record: &RecordId,
        payload: &Payload,
        padding: Padding,
    ) -> Result<Vec<u8>> {
        let body = postcard::to_stdvec(payload)
            .map_err(|e| Error::internal("payload encoding failed").with_source(e))?;
        let body_len =
            u32::try_from(body.len()).map_err(|_| Error::invalid("record value too large"))?;
        let padded = padding.padded_len(4 + body.len());
        let mut plain = zeroize::Zeroizing::new(Vec::with_capacity(padded));
        plain.extend_from_slice(&body_len.to_le_bytes());
        plain.extend_from_slice(&body);
        plain.resize(padded, 0);
        zeroize::Zeroize::zeroize(&mut { body });

        let mut nonce = [0u8; NONCE_LEN];
        cipher.fill_random(&mut nonce)?;
        let ct = cipher.aead_seal(
            &self.record_key,
            &nonce,
            &self.aad(record, self.key_id),
            &plain,
        )?;
        let mut out = Vec::with_capacity(ENVELOPE_HEADER_LEN + ct.len());
        out.push(ENVELOPE_FORMAT);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens an envelope sealed for `record`. Fails with [`ErrorKind::Corrupt`] for a truncated
    /// envelope, [`ErrorKind::Unsupported`] for an unknown format, [`ErrorKind::WrongKey`] for a
    /// key id this key set does not hold, and [`ErrorKind::Tampered`] when authentication fails.
    pub fn open(&self, cipher: &dyn Cipher, record: &RecordId, envelope: &[u8]) -> Result<Payload> {
        let header = EnvelopeHeader::parse(envelope)?;
        if header.key_id != self.key_id {
            return Err(Error::new(
                ErrorKind::WrongKey,
                "envelope was sealed under another key id",
            ));
        }
        let plain = zeroize::Zeroizing::new(cipher.aead_open(
            &self.record_key,
            &header.nonce,
            &self.aad(record, header.key_id),
            &envelope[ENVELOPE_HEADER_LEN..],
        )?);
        let (len, rest) = plain
            .split_first_chunk::<4>()
            .ok_or_else(|| Error::corrupt("envelope plaintext is truncated"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let body = rest
            .get(..len)
            .ok_or_else(|| Error::corrupt("envelope plaintext length is out of range"))?;
        if rest[len..].iter().any(|b| *b != 0) {
            return Err(Error::corrupt("envelope padding is not zero"));
        }
        let payload: Payload = postcard::from_bytes(body)?;
        Ok(payload)
    }
}

/// The clear header of an envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnvelopeHeader {
    /// Format version.
    pub format: u8,
    /// Key id.
    pub key_id: u32,
    /// Nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl EnvelopeHeader {
    /// Parses and checks the header of `envelope`.
    pub fn parse(envelope: &[u8]) -> Result<Self> {
        let format = *envelope
            .first()
            .ok_or_else(|| Error::corrupt("envelope is empty"))?;
        if format != ENVELOPE_FORMAT {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "envelope format {format} is not supported by this build (supports {ENVELOPE_FORMAT})"
                ),
            ));
        }
        if envelope.len() < ENVELOPE_MIN_LEN {
            return Err(Error::corrupt("envelope is truncated"));
        }
        let key_id = u32::from_be_bytes([envelope[1], envelope[2], envelope[3], envelope[4]]);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&envelope[5..ENVELOPE_HEADER_LEN]);
        Ok(Self {
            format,
            key_id,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Payload::value` is read as one byte string; the bytes must be exactly those of the
    /// byte-by-byte sequence earlier builds wrote, so envelopes sealed by them still open.
    #[test]
    fn the_value_encodes_as_a_plain_byte_sequence() {
        #[derive(Serialize)]
        struct Before<'a> {
            collection: &'a str,
            key: &'a str,
            value: Option<Vec<u8>>,
            version: &'a VersionVector,
            hlc: Hlc,
            origin: DeviceId,
            seq: u64,
        }
        let device = DeviceId([7; 16]);
        let mut version = VersionVector::default();
        version.set(device, 3);
        for value in [
            None,
            Some(Vec::new()),
            Some((0..=255u8).cycle().take(700).collect()),
        ] {
            let p = Payload {
                collection: "notes".into(),
                key: "k".into(),
                value: value.clone(),
                version: version.clone(),
                hlc: Hlc {
                    millis: 5,
                    counter: 1,
                    device,
                },
                origin: device,
                seq: 3,
            };
            let before = Before {
                collection: "notes",
                key: "k",
                value,
                version: &version,
                hlc: Hlc {
                    millis: 5,
                    counter: 1,
                    device,
                },
                origin: device,
                seq: 3,
            };
            let new = postcard::to_stdvec(&p).expect("encode");
            assert_eq!(new, postcard::to_stdvec(&before).expect("encode"));
            let back: Payload = postcard::from_bytes(&new).expect("decode");
            assert!(back == p);
        }
    }

    #[test]
    fn padme_overhead_is_bounded_and_monotonic() {
        let mut prev = 0;
        for len in 0..200_000usize {
            let p = padme(len);
            assert!(p >= len);
            assert!(p >= prev, "padme must be monotonic");
            if len >= 64 {
                assert!(
                    (p - len) as f64 <= len as f64 * 0.12,
                    "len {len} padded {p}"
                );
            }
            prev = p;
        }
        assert_eq!(padme(1000), 1024);
    }
}
