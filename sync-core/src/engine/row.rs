//! Per-record sync bookkeeping, kept in [`StoredRecord::sync`](crate::StoredRecord::sync).

use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What the engine remembers about one record besides its current envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowSync {
    /// Server sequences of envelopes of this record that the current version has seen: the
    /// next push names them in `supersedes`, so the server can drop them.
    pub base: Vec<u64>,
    /// True once a version of this record has been on the server.
    pub synced: bool,
    /// The re-sync epoch in which the server last confirmed this record.
    pub epoch: u32,
    /// The sealed envelope of the last synced version, kept while a local edit on top of it is
    /// pending: the common ancestor for a three-way merge.
    #[serde(with = "serde_bytes")]
    pub ancestor: Option<Vec<u8>>,
    /// Sealed envelopes of concurrent remote versions waiting for the user (`user-choice`).
    pub siblings: Vec<Vec<u8>>,
    /// When the oldest unresolved sibling arrived (milliseconds), for the fallback deadline.
    pub conflict_since: Option<u64>,
}

/// Most server sequences remembered per record (older ones are already compacted away by the
/// time a record has been superseded this often).
const MAX_BASE: usize = 64;

impl RowSync {
    /// Decodes bookkeeping; empty bytes are the default.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        Ok(postcard::from_bytes(bytes)?)
    }

    /// Encodes bookkeeping; the default encodes as empty bytes.
    pub fn encode(&self) -> Vec<u8> {
        if *self == Self::default() {
            return Vec::new();
        }
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Adds a server sequence this version has seen.
    pub fn add_base(&mut self, server_seq: u64) {
        if server_seq != 0 && !self.base.contains(&server_seq) {
            self.base.push(server_seq);
            if self.base.len() > MAX_BASE {
                self.base.remove(0);
            }
        }
    }

    /// The bookkeeping after a local write on top of a row with this bookkeeping, whose
    /// envelope was `previous` and which was `pending` or not.
    pub fn after_local_write(mut self, previous: &[u8], pending: bool) -> Self {
        if !pending && self.synced {
            self.ancestor = Some(previous.to_vec());
        }
        self
    }
}
