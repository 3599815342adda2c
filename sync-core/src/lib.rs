//! # sync-core
//!
//! The core of hearth: the traits every implementation plugs into ([`Storage`], [`Cipher`],
//! [`Transport`], [`ConflictStrategy`], [`ConsentPolicy`]), the data model (device ids, hybrid
//! logical clocks, version vectors, records, sealed envelopes), the key hierarchy, the
//! [`registry`] that finds implementations by name, the encrypted [`Store`], an in-memory
//! storage for tests, and (feature `testkit`) the conformance suites every implementation runs.
//!
//! `sync-core` depends on no implementation. Applications usually use the `hearth` facade,
//! whose cargo features choose the implementations.
//!
//! ```
//! use std::sync::Arc;
//! use sync_core::{Cipher, KdfCost, MemoryStorage, OpenOptions, Store};
//!
//! // `cipher` comes from an implementation crate, e.g. `crypto_orion::OrionCipher::shared()`.
//! async fn demo(cipher: Arc<dyn Cipher>) -> sync_core::Result<()> {
//! let store = Store::open(
//!     Arc::new(MemoryStorage::new()),
//!     cipher,
//!     OpenOptions::new("correct horse").create(true).kdf_cost(KdfCost::INSECURE_FOR_TESTS),
//! ).await?;
//! store.put("notes", "n1", &serde_json::json!({"title": "hello"})).await?;
//! assert!(store.get("notes", "n1").await?.is_some());
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod backup;
pub mod cipher;
pub mod consent;
pub mod engine;
pub mod envelope;
pub mod error;
pub mod keyring;
pub mod memory;
pub mod model;
pub mod privacy;
pub mod registry;
pub mod relay;
pub mod retry;
pub mod storage;
pub mod store;
pub mod strategy;
pub mod transport;
pub mod wire;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cipher::{Cipher, CipherExt, KdfCost, Passphrase, SecretKey};
pub use consent::{ConsentPolicy, ConsentRequest, Decision, DenyAll, DenyReason};
pub use engine::{
    Choice, ConflictInfo, LastSync, Progress, SyncConfig, SyncEngine, SyncReport, SyncState,
    Withheld,
};
pub use envelope::{Padding, Payload, RecordKeys};
pub use error::{Error, ErrorKind, Result, Status};
pub use memory::MemoryStorage;
pub use model::{
    Causality, CollectionId, DeviceId, Hlc, HlcClock, LogId, Record, RecordId, SpaceId,
    VersionVector,
};
pub use privacy::{
    Anonymizer, AuditLog, ConsentPrompt, DestinationKey, DestinationKeyPair, GrantOptions, RuleSet,
    ShareOutcome, Sharer, StoreConsent,
};
pub use relay::{MemoryRelay, Relay, RelayBackup, RelayConfig, RelayStats, SpaceRetired};
pub use storage::{
    Batch, Capabilities, OutboxEntry, RowState, ScanPos, Storage, StorageOptions, StoredRecord,
};
pub use store::{OpenOptions, Page, Store, StoreBuilder, StoreInfo, WriteBatch, WriteSummary};
pub use strategy::{
    Conflict, ConflictStrategy, LastWriterWins, Merge, Priority, Resolution, UserChoice, Version,
};
pub use transport::{
    Detached, HeldEnvelope, OutgoingEnvelope, PullPage, PullRequest, PushRequest, PushResponse,
    RemoteEnvelope, SpaceRef, Transport,
};

#[doc(hidden)]
pub mod __private {
    pub use inventory;
}
