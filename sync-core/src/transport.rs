//! The `Transport` trait: how a device exchanges sealed envelopes with its sync server.
//!
//! A transport moves only ciphertext and opaque ids. Retries are not its business: a retry layer
//! wraps any transport and retries the errors that say they are temporary.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;
use crate::model::{DeviceId, RecordId, SpaceId};

/// One envelope a device pushes: its blind record id, its device sequence and the sealed bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct OutgoingEnvelope {
    /// Blind record id.
    pub record: RecordId,
    /// The pushing device's sequence number for this write. Push is idempotent by
    /// (device, seq): pushing the same pair twice stores it once.
    pub seq: u64,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

impl fmt::Debug for OutgoingEnvelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingEnvelope")
            .field("record", &self.record)
            .field("seq", &self.seq)
            .field("len", &self.envelope.len())
            .finish()
    }
}

/// A push of envelopes from one device of one space.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushRequest {
    /// The sync space.
    pub space: SpaceId,
    /// The pushing device.
    pub device: DeviceId,
    /// Envelopes in device-sequence order.
    pub envelopes: Vec<OutgoingEnvelope>,
}

/// The server's answer to a push.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PushResponse {
    /// The highest device sequence the server now holds for this device (acknowledged writes).
    pub acked_seq: u64,
}

/// An envelope as the server serves it on pull.
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
            .field("len", &self.envelope.len())
            .finish()
    }
}

/// One page of a pull.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct PullPage {
    /// Envelopes with server sequence above the requested cursor, in order.
    pub envelopes: Vec<RemoteEnvelope>,
    /// The cursor to ask for next.
    pub next_cursor: u64,
    /// True when more envelopes wait beyond this page.
    pub more: bool,
}

/// Moves sealed envelopes between a device and its sync server.
#[async_trait]
pub trait Transport: Send + Sync + fmt::Debug + 'static {
    /// The registry name of the implementation.
    fn name(&self) -> &'static str;

    /// Pushes envelopes; idempotent by (device, seq).
    async fn push(&self, request: PushRequest) -> Result<PushResponse>;

    /// Pulls envelopes of `space` after `cursor`, at most `limit` of them (and at most the
    /// server's page size in bytes).
    async fn pull(&self, space: SpaceId, cursor: u64, limit: usize) -> Result<PullPage>;

    /// The space's wrapped key backup, which the server cannot open.
    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>>;

    /// Stores the space's wrapped key backup.
    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()>;

    /// Sends a payload sealed to a destination's public key (the privacy pipeline's last step).
    async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()>;
}

fn _object_safe(_: &dyn Transport) {}
