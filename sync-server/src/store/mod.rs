//! Server storage: accounts, spaces and their envelope logs, behind one trait.
//!
//! Two implementations share one body of SQL (generated for each database by a macro, so the
//! relay logic exists once): [`SqliteStore`] (default; one embedded file) and
//! [`PostgresStore`] (many stateless server processes sharing one database). Both reproduce
//! the semantics of [`sync_core::relay`] exactly and run the relay conformance suite.
//!
//! Every push, and every pull's bookkeeping, is one transaction that first locks the space's
//! row (`SELECT … FOR UPDATE` on PostgreSQL; `BEGIN IMMEDIATE` on SQLite, which serializes all
//! writers). The lock is held until commit, so per space:
//!
//! - server sequence numbers come from the space row's counter, read and advanced under the
//!   lock: strictly increasing, never reused (a rolled-back push does not advance the stored
//!   counter);
//! - pushes to one space commit in the order of the numbers they took, so the set of committed
//!   entries is always a prefix of the numbers handed out (minus compacted entries). A pull,
//!   which takes the same lock before it reads, therefore never sees sequence N + 1 without N:
//!   no entry can commit later with a lower number than one a pull has already served.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sync_core::relay::RelayStats;
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, Relay, RelayConfig, Result,
    SpaceId, SpaceRef,
};

mod sql;

pub use sql::{
    PostgresStore, SCHEMA_VERSION, SQLITE_PAGE_SIZE, SqliteStore, mark_restored, open_store,
};
pub use sync_core::SpaceRetired;

/// An account: the owner of spaces, authenticated by a bearer token.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 16]);

impl AccountId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex characters.
    pub fn from_hex(s: &str) -> Result<Self> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| Error::invalid("malformed account id"))?;
        Ok(Self(b))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", &self.to_hex()[..8])
    }
}

/// A space as its owner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpaceInfo {
    /// The space.
    pub space: SpaceId,
    /// Fingerprint of its root key, once a device claimed it.
    pub fingerprint: Option<[u8; 32]>,
    /// True once the space was retired (its key rotated away): it refuses pushes, pulls,
    /// device registrations and key backups with [`SpaceRetired`].
    pub retired: bool,
    /// The space that replaced it (a rotation's new space), if one was named.
    pub successor: Option<SpaceId>,
}

/// Where the server keeps its data.
///
/// Every method that touches a space takes the account that asks: a space is bound to the
/// account that first used it, and any other account gets [`ErrorKind::Forbidden`].
#[async_trait]
pub trait ServerStore: Send + Sync + fmt::Debug + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn name(&self) -> &'static str;

    /// Checks the database answers.
    async fn ping(&self) -> Result<()>;

    /// Creates an account whose token hashes to `token_hash`.
    async fn create_account(&self, account: AccountId, token_hash: [u8; 32]) -> Result<()>;

    /// The token hash of an account, if it exists.
    async fn token_hash(&self, account: AccountId) -> Result<Option<[u8; 32]>>;

    /// Binds `space` to `account` (if unbound) and records its key fingerprint (if unset).
    /// Another account's space is [`ErrorKind::Forbidden`], another fingerprint
    /// [`ErrorKind::WrongKey`]. Returns true when the space was new.
    async fn register_space(
        &self,
        account: AccountId,
        space: SpaceId,
        fingerprint: [u8; 32],
    ) -> Result<bool>;

    /// [`ServerStore::register_space`] of `space` as the successor of `old` (after a key
    /// rotation), retiring `old` in the same transaction: a refused replacement (`old` missing,
    /// another account's, `space` itself, or `space` refused) registers nothing. `old` already
    /// retired keeps its first successor.
    async fn register_successor(
        &self,
        account: AccountId,
        space: SpaceId,
        fingerprint: [u8; 32],
        old: SpaceId,
    ) -> Result<bool>;

    /// The spaces of an account.
    async fn spaces(&self, account: AccountId) -> Result<Vec<SpaceInfo>>;

    /// One space of an account; `None` when it does not exist. Another account's space is
    /// [`ErrorKind::Forbidden`].
    async fn space(&self, account: AccountId, space: SpaceId) -> Result<Option<SpaceInfo>>;

    /// Retires a space of the account (after a key rotation moved its data to `successor`):
    /// from then on it refuses pushes, pulls, device registrations and key backups with
    /// [`SpaceRetired`], so a device still holding the old key learns to re-join instead of
    /// syncing into a space nobody reads. The successor must be another, active space of the
    /// same account. Idempotent; a missing space is [`ErrorKind::NotFound`].
    async fn retire_space(
        &self,
        account: AccountId,
        space: SpaceId,
        successor: Option<SpaceId>,
    ) -> Result<()>;

    /// Registers a device of a space: checks its fingerprint (claiming the space's if unset)
    /// and records the device as active.
    async fn register_device(&self, account: AccountId, from: &SpaceRef) -> Result<()>;

    /// [`Relay::push`] on behalf of `account`.
    async fn push(&self, account: AccountId, request: &PushRequest) -> Result<PushResponse>;

    /// [`Relay::pull`] on behalf of `account`.
    async fn pull(&self, account: AccountId, request: &PullRequest) -> Result<PullPage>;

    /// The space's key backup; `None` when the space or its backup does not exist.
    async fn get_key_backup(&self, account: AccountId, space: SpaceId) -> Result<Option<Vec<u8>>>;

    /// Stores the space's key backup.
    async fn put_key_backup(&self, account: AccountId, space: SpaceId, blob: Vec<u8>)
    -> Result<()>;

    /// What is stored for one space.
    async fn space_stats(&self, space: SpaceId) -> Result<RelayStats>;

    /// Declares the database restored from a backup: gives every space a new log id
    /// ([`LogId`](sync_core::LogId)), so each device walks its space's log again at its next
    /// pull and puts back what the restore lost. Run once after a restore, before devices
    /// sync (`hearth-server mark-restored`). Returns how many spaces got a new log id.
    async fn mark_restored(&self) -> Result<u64>;

    /// Closes connections (after the last request).
    async fn close(&self);
}

fn _object_safe(_: &dyn ServerStore) {}

/// A [`ServerStore`] seen as a [`Relay`] by one account: what the conformance suite runs.
#[derive(Debug, Clone)]
pub struct AccountRelay {
    store: Arc<dyn ServerStore>,
    account: AccountId,
}

impl AccountRelay {
    /// `store` acting for `account`.
    pub fn new(store: Arc<dyn ServerStore>, account: AccountId) -> Self {
        Self { store, account }
    }
}

#[async_trait]
impl Relay for AccountRelay {
    fn name(&self) -> &'static str {
        self.store.name()
    }

    async fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        self.store.push(self.account, request).await
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullPage> {
        self.store.pull(self.account, request).await
    }

    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        self.store.get_key_backup(self.account, space).await
    }

    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        self.store.put_key_backup(self.account, space, blob).await
    }

    async fn space_stats(&self, space: SpaceId) -> Result<RelayStats> {
        self.store.space_stats(space).await
    }
}

/// The checks of a push that need no database, in [`sync_core::MemoryRelay`]'s order.
pub(crate) fn validate_push(request: &PushRequest, config: &RelayConfig) -> Result<()> {
    if request.envelopes.len() > config.push_limit {
        return Err(Error::new(
            ErrorKind::TooLarge,
            format!("a push holds at most {} envelopes", config.push_limit),
        ));
    }
    let mut last = 0;
    for e in &request.envelopes {
        if e.seq <= last {
            return Err(Error::invalid("pushed sequences must increase"));
        }
        last = e.seq;
        if e.envelope.len() > config.max_envelope {
            return Err(Error::new(ErrorKind::TooLarge, "envelope too large"));
        }
        if e.supersedes.len() > sync_core::wire::MAX_SUPERSEDES {
            return Err(Error::invalid("an envelope supersedes at most 1024 others"));
        }
    }
    Ok(())
}

/// A sequence number as the databases store it (signed 64-bit).
pub(crate) fn db_seq(v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid("sequence number out of range"))
}

/// A stored sequence number back.
pub(crate) fn seq_from_db(v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::corrupt("negative sequence number in the database"))
}
