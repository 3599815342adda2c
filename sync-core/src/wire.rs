//! The binary wire format of the sync protocol, version 3 (version 1 had no log id in a pull
//! page; version 2 had no settle request in a push and no held envelopes in its answer, and a
//! version-2 server dropped a device's older envelope of a record unnamed: a message of an
//! earlier version is refused as [`ErrorKind::Unsupported`]).
//!
//! Push and pull travel as these messages (no JSON, no base64: sealed envelopes go as raw
//! bytes behind a length). Every message starts with the wire version and a message kind; all
//! integers are big-endian; a message must be consumed exactly (trailing bytes are an error).
//! `docs/protocol.md` specifies the layout byte by byte.
//!
//! ```text
//! header        version u8 (= 3) | kind u8
//! space ref     space [16] | device [16] | fingerprint [32]
//! push request  header(kind 1) | space ref | flags u8 | [settle from u64, if flag bit 0]
//!               | count u32 | count × push entry
//! push entry    record [32] | seq u64 | flags u8 | n u16 | n × superseded server seq u64
//!               | len u32 | envelope [len]
//! push response header(kind 2) | count u32 | count × (seq u64 | server seq u64)
//!               | held u32 | held × (seq u64 | server seq u64 | record [32])
//! pull request  header(kind 3) | space ref | cursor u64 | limit u32 | flags u8
//! pull page     header(kind 4) | next cursor u64 | gc floor u64 | log id [16] | flags u8
//!               | count u32 | count × pulled entry
//! pulled entry  server seq u64 | record [32] | device [16] | seq u64 | flags u8 | len u32
//!               | envelope [len]
//! ```
//!
//! Flags: in entries bit 0 is "tombstone"; in a push request bit 0 is "settle" (a sequence
//! follows); in a pull request bit 0 is "include own"; in a pull page bit 0 is "more". Other
//! bits must be zero.
//!
//! Decoding never panics and never allocates more than the input can hold: a truncated,
//! padded or garbled message is [`ErrorKind::Corrupt`], an unknown version
//! [`ErrorKind::Unsupported`].

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeviceId, LogId, RecordId, SpaceId};
use crate::transport::{
    HeldEnvelope, OutgoingEnvelope, PullPage, PullRequest, PushRequest, PushResponse,
    RemoteEnvelope, SpaceRef,
};

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 3;
/// Media type of wire messages.
pub const CONTENT_TYPE: &str = "application/vnd.hearth.sync.v3";
/// Most superseded sequence numbers one pushed envelope may name.
pub const MAX_SUPERSEDES: usize = 1024;

/// Message kinds (the second byte of every message).
pub mod kind {
    /// A push request.
    pub const PUSH_REQUEST: u8 = 1;
    /// The answer to a push.
    pub const PUSH_RESPONSE: u8 = 2;
    /// A pull request.
    pub const PULL_REQUEST: u8 = 3;
    /// A page of a pull.
    pub const PULL_PAGE: u8 = 4;
}

const FLAG_TOMBSTONE: u8 = 1;
const FLAG_SETTLE: u8 = 1;
/// Bytes of one held envelope in a push response: seq, server seq, record.
const HELD_ENTRY: usize = 8 + 8 + 32;
const FLAG_INCLUDE_OWN: u8 = 1;
const FLAG_MORE: u8 = 1;
/// Smallest push entry: record, seq, flags, n, len.
const PUSH_ENTRY_MIN: usize = 32 + 8 + 1 + 2 + 4;
/// Smallest pulled entry: server seq, record, device, seq, flags, len.
const PULL_ENTRY_MIN: usize = 8 + 32 + 16 + 8 + 1 + 4;

struct Writer(Vec<u8>);

impl Writer {
    fn new(kind: u8, capacity: usize) -> Self {
        let mut v = Vec::with_capacity(capacity + 2);
        v.push(WIRE_VERSION);
        v.push(kind);
        Self(v)
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn len_u32(&mut self, n: usize, what: &'static str) -> Result<()> {
        let n = u32::try_from(n).map_err(|_| Error::new(ErrorKind::TooLarge, what))?;
        self.u32(n);
        Ok(())
    }
    fn space_ref(&mut self, r: &SpaceRef) {
        self.bytes(r.space.as_bytes());
        self.bytes(r.device.as_bytes());
        self.bytes(&r.fingerprint);
    }
}

struct Reader<'a> {
    buf: &'a [u8],
}

fn truncated() -> Error {
    Error::corrupt("wire message is truncated")
}

impl<'a> Reader<'a> {
    fn open(buf: &'a [u8], expected: u8) -> Result<Self> {
        let (&version, rest) = buf
            .split_first()
            .ok_or_else(|| Error::corrupt("wire message is empty"))?;
        if version != WIRE_VERSION {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "wire version {version} is not supported (this build speaks {WIRE_VERSION})"
                ),
            ));
        }
        let (&kind, rest) = rest.split_first().ok_or_else(truncated)?;
        if kind != expected {
            return Err(Error::corrupt(format!(
                "wire message of kind {kind} where kind {expected} was expected"
            )));
        }
        Ok(Self { buf: rest })
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(truncated());
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn flags(&mut self, allowed: u8) -> Result<u8> {
        let f = self.u8()?;
        if f & !allowed != 0 {
            return Err(Error::corrupt("unknown flag bits in wire message"));
        }
        Ok(f)
    }
    fn space_ref(&mut self) -> Result<SpaceRef> {
        Ok(SpaceRef {
            space: SpaceId(self.array()?),
            device: DeviceId(self.array()?),
            fingerprint: self.array()?,
        })
    }
    /// A count of entries of at least `min` bytes each: never more than the rest can hold.
    fn count(&mut self, min: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / min {
            return Err(truncated());
        }
        Ok(n)
    }
    fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::corrupt("wire message has trailing bytes"))
        }
    }
}

/// Encodes a push request.
pub fn encode_push_request(r: &PushRequest) -> Result<Vec<u8>> {
    let size: usize = r
        .envelopes
        .iter()
        .map(|e| PUSH_ENTRY_MIN + 8 * e.supersedes.len() + e.envelope.len())
        .sum();
    let mut w = Writer::new(kind::PUSH_REQUEST, 64 + 13 + size);
    w.space_ref(&r.from);
    match r.settle {
        Some(from) => {
            w.u8(FLAG_SETTLE);
            w.u64(from);
        }
        None => w.u8(0),
    }
    w.len_u32(r.envelopes.len(), "too many envelopes in one push")?;
    for e in &r.envelopes {
        w.bytes(e.record.as_bytes());
        w.u64(e.seq);
        w.u8(if e.tombstone { FLAG_TOMBSTONE } else { 0 });
        if e.supersedes.len() > MAX_SUPERSEDES {
            return Err(Error::invalid("an envelope supersedes at most 1024 others"));
        }
        w.u16(e.supersedes.len() as u16);
        for s in &e.supersedes {
            w.u64(*s);
        }
        w.len_u32(e.envelope.len(), "envelope too large")?;
        w.bytes(&e.envelope);
    }
    Ok(w.0)
}

/// Decodes a push request.
pub fn decode_push_request(buf: &[u8]) -> Result<PushRequest> {
    let mut r = Reader::open(buf, kind::PUSH_REQUEST)?;
    let from = r.space_ref()?;
    let settle = if r.flags(FLAG_SETTLE)? & FLAG_SETTLE != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let n = r.count(PUSH_ENTRY_MIN)?;
    let mut envelopes = Vec::with_capacity(n);
    for _ in 0..n {
        let record = RecordId(r.array()?);
        let seq = r.u64()?;
        let tombstone = r.flags(FLAG_TOMBSTONE)? & FLAG_TOMBSTONE != 0;
        let k = r.u16()? as usize;
        if k > MAX_SUPERSEDES {
            return Err(Error::corrupt("too many superseded sequences"));
        }
        let mut supersedes = Vec::with_capacity(k.min(r.buf.len() / 8));
        for _ in 0..k {
            supersedes.push(r.u64()?);
        }
        let len = r.u32()? as usize;
        let envelope = r.take(len)?.to_vec();
        envelopes.push(OutgoingEnvelope {
            record,
            seq,
            supersedes,
            tombstone,
            envelope,
        });
    }
    r.finish()?;
    Ok(PushRequest {
        from,
        envelopes,
        settle,
    })
}

/// Encodes a push response.
pub fn encode_push_response(r: &PushResponse) -> Result<Vec<u8>> {
    let mut w = Writer::new(
        kind::PUSH_RESPONSE,
        8 + 16 * r.assigned.len() + HELD_ENTRY * r.held.len(),
    );
    w.len_u32(r.assigned.len(), "too many acknowledgements")?;
    for (seq, server_seq) in &r.assigned {
        w.u64(*seq);
        w.u64(*server_seq);
    }
    w.len_u32(r.held.len(), "too many held envelopes")?;
    for h in &r.held {
        w.u64(h.seq);
        w.u64(h.server_seq);
        w.bytes(h.record.as_bytes());
    }
    Ok(w.0)
}

/// Decodes a push response.
pub fn decode_push_response(buf: &[u8]) -> Result<PushResponse> {
    let mut r = Reader::open(buf, kind::PUSH_RESPONSE)?;
    let n = r.count(16)?;
    let mut assigned = Vec::with_capacity(n);
    for _ in 0..n {
        assigned.push((r.u64()?, r.u64()?));
    }
    let n = r.count(HELD_ENTRY)?;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(HeldEnvelope {
            seq: r.u64()?,
            server_seq: r.u64()?,
            record: RecordId(r.array()?),
        });
    }
    r.finish()?;
    Ok(PushResponse { assigned, held })
}

/// Encodes a pull request. A limit above `u32::MAX` is sent as `u32::MAX` (the server caps it
/// far lower anyway).
pub fn encode_pull_request(r: &PullRequest) -> Vec<u8> {
    let mut w = Writer::new(kind::PULL_REQUEST, 64 + 13);
    w.space_ref(&r.from);
    w.u64(r.cursor);
    w.u32(u32::try_from(r.limit).unwrap_or(u32::MAX));
    w.u8(if r.include_own { FLAG_INCLUDE_OWN } else { 0 });
    w.0
}

/// Decodes a pull request.
pub fn decode_pull_request(buf: &[u8]) -> Result<PullRequest> {
    let mut r = Reader::open(buf, kind::PULL_REQUEST)?;
    let from = r.space_ref()?;
    let cursor = r.u64()?;
    let limit = r.u32()? as usize;
    let include_own = r.flags(FLAG_INCLUDE_OWN)? & FLAG_INCLUDE_OWN != 0;
    r.finish()?;
    Ok(PullRequest {
        from,
        cursor,
        limit,
        include_own,
    })
}

/// Encodes a pull page.
pub fn encode_pull_page(p: &PullPage) -> Result<Vec<u8>> {
    let size: usize = p
        .envelopes
        .iter()
        .map(|e| PULL_ENTRY_MIN + e.envelope.len())
        .sum();
    let mut w = Writer::new(kind::PULL_PAGE, 37 + size);
    w.u64(p.next_cursor);
    w.u64(p.gc_floor);
    w.bytes(p.log_id.as_bytes());
    w.u8(if p.more { FLAG_MORE } else { 0 });
    w.len_u32(p.envelopes.len(), "too many envelopes in one page")?;
    for e in &p.envelopes {
        w.u64(e.server_seq);
        w.bytes(e.record.as_bytes());
        w.bytes(e.device.as_bytes());
        w.u64(e.seq);
        w.u8(if e.tombstone { FLAG_TOMBSTONE } else { 0 });
        w.len_u32(e.envelope.len(), "envelope too large")?;
        w.bytes(&e.envelope);
    }
    Ok(w.0)
}

/// Decodes a pull page.
pub fn decode_pull_page(buf: &[u8]) -> Result<PullPage> {
    let mut r = Reader::open(buf, kind::PULL_PAGE)?;
    let next_cursor = r.u64()?;
    let gc_floor = r.u64()?;
    let log_id = LogId(r.array()?);
    let more = r.flags(FLAG_MORE)? & FLAG_MORE != 0;
    let n = r.count(PULL_ENTRY_MIN)?;
    let mut envelopes = Vec::with_capacity(n);
    for _ in 0..n {
        let server_seq = r.u64()?;
        let record = RecordId(r.array()?);
        let device = DeviceId(r.array()?);
        let seq = r.u64()?;
        let tombstone = r.flags(FLAG_TOMBSTONE)? & FLAG_TOMBSTONE != 0;
        let len = r.u32()? as usize;
        let envelope = r.take(len)?.to_vec();
        envelopes.push(RemoteEnvelope {
            server_seq,
            record,
            device,
            seq,
            tombstone,
            envelope,
        });
    }
    r.finish()?;
    Ok(PullPage {
        envelopes,
        next_cursor,
        more,
        gc_floor,
        log_id,
    })
}

/// Bytes a pulled entry takes on the wire besides its envelope.
pub const PULLED_ENTRY_OVERHEAD: usize = PULL_ENTRY_MIN;

#[cfg(test)]
mod tests {
    use super::*;

    fn space_ref() -> SpaceRef {
        SpaceRef {
            space: SpaceId([1; 16]),
            device: DeviceId([2; 16]),
            fingerprint: [3; 32],
        }
    }

    fn push() -> PushRequest {
        PushRequest {
            from: space_ref(),
            envelopes: vec![
                OutgoingEnvelope {
                    record: RecordId([4; 32]),
                    seq: 7,
                    supersedes: vec![1, 2],
                    tombstone: false,
                    envelope: vec![9; 40],
                },
                OutgoingEnvelope {
                    record: RecordId([5; 32]),
                    seq: 8,
                    supersedes: vec![],
                    tombstone: true,
                    envelope: vec![],
                },
            ],
            settle: None,
        }
    }

    #[test]
    fn messages_round_trip_and_are_exactly_the_documented_size() {
        let p = push();
        let bytes = encode_push_request(&p).expect("encode");
        assert_eq!(bytes.len(), 2 + 64 + 1 + 4 + (47 + 16 + 40) + 47);
        assert_eq!(&bytes[..2], &[3, kind::PUSH_REQUEST]);
        assert_eq!(decode_push_request(&bytes).expect("decode"), p);
        let settle = PushRequest {
            envelopes: Vec::new(),
            settle: Some(u64::MAX - 3),
            ..p
        };
        let bytes = encode_push_request(&settle).expect("encode");
        assert_eq!(bytes.len(), 2 + 64 + 1 + 8 + 4);
        assert_eq!(decode_push_request(&bytes).expect("decode"), settle);

        let r = PushResponse {
            assigned: vec![(7, 100), (8, 0)],
            held: vec![HeldEnvelope {
                seq: 5,
                server_seq: 90,
                record: RecordId([8; 32]),
            }],
        };
        let bytes = encode_push_response(&r).expect("encode");
        assert_eq!(bytes.len(), 2 + 4 + 32 + 4 + 48);
        assert_eq!(decode_push_response(&bytes).expect("decode"), r);

        let q = PullRequest {
            from: space_ref(),
            cursor: u64::MAX - 1,
            limit: 500,
            include_own: true,
        };
        let bytes = encode_pull_request(&q);
        assert_eq!(bytes.len(), 2 + 64 + 8 + 4 + 1);
        assert_eq!(decode_pull_request(&bytes).expect("decode"), q);

        let page = PullPage {
            envelopes: vec![RemoteEnvelope {
                server_seq: 3,
                record: RecordId([6; 32]),
                device: DeviceId([7; 16]),
                seq: 11,
                tombstone: true,
                envelope: vec![1, 2, 3],
            }],
            next_cursor: 3,
            more: true,
            gc_floor: 2,
            log_id: LogId([9; 16]),
        };
        let bytes = encode_pull_page(&page).expect("encode");
        assert_eq!(bytes.len(), 2 + 37 + PULLED_ENTRY_OVERHEAD + 3);
        assert_eq!(decode_pull_page(&bytes).expect("decode"), page);
    }

    #[test]
    fn every_truncation_and_extension_is_refused_without_panicking() {
        let bytes = encode_push_request(&push()).expect("encode");
        for cut in 0..bytes.len() {
            let e = decode_push_request(&bytes[..cut]).expect_err("truncated");
            assert_eq!(e.kind(), ErrorKind::Corrupt, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_push_request(&longer).map_err(|e| e.kind()),
            Err(ErrorKind::Corrupt)
        );
        let mut future = bytes.clone();
        future[0] = 4;
        assert_eq!(
            decode_push_request(&future).map_err(|e| e.kind()),
            Err(ErrorKind::Unsupported)
        );
        // Versions 1 (before pull pages carried a log id) and 2 (before settling, when the
        // server dropped a device's older envelopes unnamed) are refused the same way.
        for version in [1, 2] {
            let mut old = bytes.clone();
            old[0] = version;
            assert_eq!(
                decode_push_request(&old).map_err(|e| e.kind()),
                Err(ErrorKind::Unsupported)
            );
        }
        let mut wrong_kind = bytes.clone();
        wrong_kind[1] = kind::PULL_REQUEST;
        assert!(decode_push_request(&wrong_kind).is_err());
        let mut flags = bytes.clone();
        flags[2 + 64 + 1 + 4 + 32 + 8] = 0x80;
        assert_eq!(
            decode_push_request(&flags).map_err(|e| e.kind()),
            Err(ErrorKind::Corrupt)
        );
        let mut request_flags = bytes;
        request_flags[2 + 64] = 0x02;
        assert_eq!(
            decode_push_request(&request_flags).map_err(|e| e.kind()),
            Err(ErrorKind::Corrupt)
        );
    }

    #[test]
    fn a_huge_count_does_not_allocate() {
        let mut bytes = vec![WIRE_VERSION, kind::PULL_PAGE];
        bytes.extend_from_slice(&[0; 33]);
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            decode_pull_page(&bytes).map_err(|e| e.kind()),
            Err(ErrorKind::Corrupt)
        );
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = decode_push_request(&bytes);
            let _ = decode_push_response(&bytes);
            let _ = decode_pull_request(&bytes);
            let _ = decode_pull_page(&bytes);
        }
    }
}
