//! The `ConflictStrategy` trait and the built-in strategies.
//!
//! Automatic strategies must be deterministic and symmetric: devices resolving the same
//! conflict independently must end identical. `resolve(a, b)` must equal `resolve(b, a)` with
//! the sides swapped.

use std::fmt;

use crate::error::Result;
use crate::model::{Hlc, VersionVector};

/// One side of a conflict, decrypted.
#[derive(Clone, PartialEq)]
pub struct Version {
    /// The value; `None` for a tombstone.
    pub value: Option<serde_json::Value>,
    /// Its version vector.
    pub version: VersionVector,
    /// The HLC of the write.
    pub hlc: Hlc,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version")
            .field("deleted", &self.value.is_none())
            .field("version", &self.version)
            .field("hlc", &self.hlc)
            .finish_non_exhaustive()
    }
}

/// Two concurrent versions of one record, and their common ancestor where known.
#[derive(Clone, Debug)]
pub struct Conflict<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The record key.
    pub key: &'a str,
    /// This device's version.
    pub local: &'a Version,
    /// The version that arrived.
    pub remote: &'a Version,
    /// The last version both descend from, when the store still has it.
    pub ancestor: Option<&'a Version>,
}

/// What a strategy decided.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Resolution {
    /// Keep the local value.
    TakeLocal,
    /// Keep the remote value.
    TakeRemote,
    /// A new value (or `None` for a delete) built from both.
    Merged(Option<serde_json::Value>),
    /// Keep both as siblings until the application resolves them.
    DeferToUser,
}

impl Resolution {
    /// The same decision seen from the other side (local and remote swapped).
    pub fn swapped(self) -> Self {
        match self {
            Resolution::TakeLocal => Resolution::TakeRemote,
            Resolution::TakeRemote => Resolution::TakeLocal,
            other => other,
        }
    }
}

/// Decides concurrent versions of a record. Registered by name and chosen per collection.
pub trait ConflictStrategy: Send + Sync + fmt::Debug + 'static {
    /// The registry name (`"lww"`, `"merge"`, …).
    fn name(&self) -> &'static str;

    /// Resolves a conflict. Must be deterministic and symmetric.
    fn resolve(&self, conflict: &Conflict<'_>) -> Result<Resolution>;
}

fn _object_safe(_: &dyn ConflictStrategy) {}

/// Last writer wins: the version with the higher HLC wins; the device id inside the HLC breaks
/// ties, so the order is total and every device picks the same winner.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastWriterWins;

impl LastWriterWins {
    /// Registry name.
    pub const NAME: &'static str = "lww";
}

impl ConflictStrategy for LastWriterWins {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, conflict: &Conflict<'_>) -> Result<Resolution> {
        Ok(if conflict.remote.hlc > conflict.local.hlc {
            Resolution::TakeRemote
        } else {
            Resolution::TakeLocal
        })
    }
}

crate::register_strategy!(LastWriterWins::NAME, || std::sync::Arc::new(LastWriterWins));
