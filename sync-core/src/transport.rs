//! The `Transport` trait and the protocol types it carries.
//!
//! A transport moves only ciphertext and opaque ids between a device and its sync server. The
//! server keeps, per space, an ordered log of envelopes; each gets a server sequence number that
//! is also the pull cursor. Retries are not a transport's business: [`crate::retry`] wraps any
//! transport and retries the errors that say they are temporary.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{DeviceId, LogId, RecordId, SpaceId};

/// What a device proves about the space it syncs: the space id and the fingerprint of the root
/// key it holds. The server records the fingerprint of the first device and refuses any other,
/// so a device with a wrong key (a wrong passphrase on a new device, a stale key after rotation)
/// uploads nothing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SpaceRef {
    /// The space.
    pub space: SpaceId,
    /// The device speaking.
    pub device: DeviceId,
    /// Fingerprint of the root key the device holds.
    pub fingerprint: [u8; 32],
}

/// One envelope a device pushes.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingEnvelope {
    /// Blind record id.
    pub record: RecordId,
    /// The pushing device's sequence number for this write. Push is idempotent by
    /// (device, seq): pushing the same pair twice stores it once.
    pub seq: u64,
    /// Server sequence numbers of envelopes of the same record that this version has seen and
    /// therefore replaces; the server drops them (compaction). Envelopes not named here (a
    /// concurrent version this device has not seen) are kept.
    pub supersedes: Vec<u64>,
    /// True for a delete. Visible to the server so it can drop tombstones once every device has
    /// seen them.
    pub tombstone: bool,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for OutgoingEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingEnvelope")
            .field("record", &self.record)
            .field("seq", &self.seq)
            .field("supersedes", &self.supersedes)
            .field("tombstone", &self.tombstone)
            .field("len", &self.envelope.len())
            .finish()
    }
}

/// A push of envelopes from one device of one space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRequest {
    /// Who is pushing, to which space, holding which key.
    pub from: SpaceRef,
    /// Envelopes in increasing device-sequence order.
    pub envelopes: Vec<OutgoingEnvelope>,
    /// Asks, besides, which of this device's envelopes with a sequence at or above this one the
    /// server holds ([`PushResponse::held`]): a device that may have pushed envelopes whose
    /// answer it never processed (a lost response, a crash) learns their server sequences, so
    /// that it can name them in `supersedes` when it replaces them. The server drops only
    /// envelopes a push names (and a record's earlier envelope in the same push).
    pub settle: Option<u64>,
}

impl PushRequest {
    /// A push of `envelopes` that asks nothing else.
    pub fn new(from: SpaceRef, envelopes: Vec<OutgoingEnvelope>) -> Self {
        Self {
            from,
            envelopes,
            settle: None,
        }
    }
}

/// One of a device's own envelopes the server holds, as [`PushResponse::held`] names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldEnvelope {
    /// The device's sequence number.
    pub seq: u64,
    /// The server sequence it is stored under.
    pub server_seq: u64,
    /// Its blind record id.
    pub record: RecordId,
}

/// The server's answer to a push.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PushResponse {
    /// For every pushed envelope, in request order: its device sequence and the server sequence
    /// it is stored under (also for envelopes the server already had: a retried push learns the
    /// same numbers).
    pub assigned: Vec<(u64, u64)>,
    /// When the push asked ([`PushRequest::settle`]): the pushing device's envelopes the server
    /// held before this push with a sequence at or above the one asked for, in increasing
    /// sequence order, at most the server's push limit of them (when that many came back, ask
    /// again from after the last).
    pub held: Vec<HeldEnvelope>,
}

/// An envelope as the server serves it.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteEnvelope {
    /// The server's sequence number: the pull cursor after this envelope.
    pub server_seq: u64,
    /// Blind record id.
    pub record: RecordId,
    /// The device that pushed it.
    pub device: DeviceId,
    /// That device's sequence number.
    pub seq: u64,
    /// True for a delete.
    pub tombstone: bool,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for RemoteEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteEnvelope")
            .field("server_seq", &self.server_seq)
            .field("record", &self.record)
            .field("device", &self.device)
            .field("seq", &self.seq)
            .field("tombstone", &self.tombstone)
            .field("len", &self.envelope.len())
            .finish()
    }
}

/// A pull: the envelopes of a space after a cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PullRequest {
    /// Who is pulling, from which space, holding which key.
    pub from: SpaceRef,
    /// The server sequence after which to start; pulling with it tells the server the device
    /// has applied everything up to it.
    pub cursor: u64,
    /// Most envelopes wanted (the server may return fewer, by its own count and byte limits).
    pub limit: usize,
    /// Also return the pulling device's own envelopes. Normal pulls skip them (the device wrote
    /// them); a full re-sync needs them to confirm what the server holds.
    pub include_own: bool,
}

/// One page of a pull.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PullPage {
    /// Envelopes with server sequence above the requested cursor, in order.
    pub envelopes: Vec<RemoteEnvelope>,
    /// The cursor to ask for next: while `more`, the last server sequence the server looked
    /// at (returned or skipped as the device's own); on the last page, the last sequence number
    /// the space has handed out (everything up to it was served, skipped or dropped).
    pub next_cursor: u64,
    /// True when more envelopes wait beyond this page.
    pub more: bool,
    /// Tombstones at or below this server sequence have been collected by the server: a device
    /// may forget its own (synced) tombstones of records last synced at or below it.
    pub gc_floor: u64,
    /// The identity of the space's log: cursors and sequence numbers mean something only under
    /// the log id they were taken under. A new one means the server's log was replaced (its
    /// database restored from a backup); the engine then walks the log again from 0 and puts
    /// back what the server lost.
    pub log_id: LogId,
}

/// Moves sealed envelopes between a device and its sync server.
///
/// Errors the engine relies on: [`ErrorKind::WrongKey`](crate::ErrorKind::WrongKey) when the
/// space holds another key's fingerprint; [`ErrorKind::ResyncRequired`](crate::ErrorKind::ResyncRequired)
/// when the cursor is older than history the server has already dropped (a device silent past
/// the tombstone horizon); temporary errors for anything a retry may fix.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The registry name of the implementation.
    fn name(&self) -> &'static str;

    /// Pushes envelopes; idempotent by (device, seq).
    async fn push(&self, request: PushRequest) -> Result<PushResponse>;

    /// Pulls envelopes of the space after the request's cursor (at most its limit, and at most
    /// the server's page size in bytes).
    async fn pull(&self, request: PullRequest) -> Result<PullPage>;

    /// The space's wrapped key backup, which the server cannot open.
    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>>;

    /// Stores the space's wrapped key backup.
    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()>;

    /// Sends a payload sealed to a destination's public key (the privacy pipeline's last step).
    async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()>;
}

fn _object_safe(_: &dyn Transport) {}

/// The transport of a store that has no server yet: every call fails with a permanent
/// [`ErrorKind::Unavailable`](crate::ErrorKind::Unavailable) saying so. Lets local tools use
/// the engine's conflict and strategy functions before sync is set up.
#[derive(Debug, Default, Clone, Copy)]
pub struct Detached;

fn detached() -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Unavailable,
        "no sync server is configured for this store",
    )
    .permanent()
}

#[async_trait]
impl Transport for Detached {
    fn name(&self) -> &'static str {
        "detached"
    }
    async fn push(&self, _: PushRequest) -> Result<PushResponse> {
        Err(detached())
    }
    async fn pull(&self, _: PullRequest) -> Result<PullPage> {
        Err(detached())
    }
    async fn get_key_backup(&self, _: SpaceId) -> Result<Option<Vec<u8>>> {
        Err(detached())
    }
    async fn put_key_backup(&self, _: SpaceId, _: Vec<u8>) -> Result<()> {
        Err(detached())
    }
    async fn share(&self, _: &str, _: Vec<u8>) -> Result<()> {
        Err(detached())
    }
}
