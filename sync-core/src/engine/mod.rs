//! The sync engine: delta sync of sealed envelopes through any [`Transport`], exact conflict
//! detection with version vectors, conflict strategies chosen per collection, observable states.
//!
//! One [`SyncEngine::sync`] round:
//!
//! 1. **Pull** pages after the stored cursor. Consecutive pages are joined into runs of up to
//!    [`SyncConfig::apply_bytes`]; each run is applied, and the cursor advanced, in one local
//!    transaction: a crash at any point neither loses nor double-applies a change. Every
//!    envelope is opened and checked (authentic, bound to its record, its origin and sequence
//!    consistent, not older than what this device already saw of its origin); one that fails
//!    is rejected and reported, never applied, and the rest of the run goes on. The next run
//!    is fetched, and its envelopes opened on a blocking thread, while one is applied (one run
//!    ahead at most).
//! 2. **Resolve**: a remote version that dominates the local one replaces it; one the local
//!    version dominates is ignored; concurrent versions go to the collection's strategy. An
//!    automatic resolution gets the pointwise maximum of both version vectors (so devices that
//!    resolve the same conflict independently produce the same version, and it never conflicts
//!    again) and is pushed like a local write.
//! 3. **Push** the outbox in batches. Push is idempotent by (device, sequence); an
//!    acknowledgement clears a record's pending flag only if no newer local write replaced it.
//!    A batch is acknowledged locally while the next one is in flight.
//!
//! A server that collected tombstones this device never saw answers
//! [`ErrorKind::ResyncRequired`]; the engine then pulls everything from cursor 0 and removes
//! records the server no longer has (deleted while this device was away), so nothing deleted
//! comes back.

pub mod head;
pub mod row;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{Causality, CollectionId, DeviceId, Hlc, LogId, RecordId, VersionVector};
use crate::registry;
use crate::storage::{Batch, RowState, StoredRecord};
use crate::store::{Opened, Store, WriteBatch, record_from_payload};
use crate::strategy::{Conflict, ConflictStrategy, Resolution, Version, apply_resolution};
use crate::transport::{
    HeldEnvelope, OutgoingEnvelope, PullPage, PullRequest, PushRequest, SpaceRef, Transport,
};
use crate::{Payload, Record};

pub use head::{HEAD_COLLECTION, Withheld};
pub use row::RowSync;

use head::{HeadValue, META_DIGEST, META_HEADS, META_OWN_HEAD, StoredHead};

const META_CURSOR: &str = "hearth.sync.cursor";
const META_SEEN: &str = "hearth.sync.seen";
const META_LAST: &str = "hearth.sync.last";
const META_EPOCH: &str = "hearth.sync.epoch";
const META_CONFLICTS: &str = "hearth.sync.conflicts";
const META_GC_FLOOR: &str = "hearth.sync.gc-floor";
/// Set (to the re-sync's epoch) while a full re-sync is under way, so a crash in the middle
/// resumes it, sweep included.
const META_RESYNC: &str = "hearth.sync.resync";
/// Set (to a re-sync's epoch) by [`SyncEngine::reupload_to_server`]: that re-sync uploads what
/// the server lacks instead of removing it.
const META_REUPLOAD: &str = "hearth.sync.reupload";
/// The server log id ([`LogId`]) the cursor was taken under.
const META_LOG_ID: &str = "hearth.sync.log-id";
/// Written before a push leaves: this device's envelopes from this sequence on may be on the
/// server without this device knowing their server sequences (the answer lost, or the process
/// gone before it was processed). Each acknowledgement moves it to the push in flight; the
/// last one clears it. A push that finds it settles first ([`SyncEngine::settle`]): the server
/// drops only the envelopes a push names, so this device must learn what it cannot name.
const META_UNSETTLED: &str = "hearth.sync.unsettled";
/// Server sequences of this device's own heads the server may hold: the next head names them
/// in `supersedes` (a device's heads share one record).
const META_OWN_HEAD_SERVER: &str = "hearth.sync.own-head-server";
/// Most own-head server sequences remembered.
const MAX_OWN_HEADS: usize = 64;
/// Metadata keys of the engine's per-space sync state (reset when a store moves to a new space).
pub(crate) const SYNC_META_KEYS: &[&str] = &[
    META_CURSOR,
    META_SEEN,
    META_EPOCH,
    META_CONFLICTS,
    META_GC_FLOOR,
    META_RESYNC,
    META_REUPLOAD,
    META_LOG_ID,
    META_DIGEST,
    META_HEADS,
    META_OWN_HEAD,
    META_UNSETTLED,
    META_OWN_HEAD_SERVER,
];

/// Collection of local-only records naming each collection's strategy.
pub const STRATEGY_COLLECTION: &str = "_hearth.strategy";

/// How the engine syncs.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// Envelopes per push, the device's head included (default 1000; the reference server
    /// accepts up to 4000, lower it for a server configured for fewer. The HTTP transport also
    /// splits a push by bytes).
    pub push_batch: usize,
    /// Envelopes asked for per pull page (default 1000; the server caps a page by its own
    /// count and byte limits, 4000 and 4 MiB for the reference server). Pages are joined into
    /// runs of up to `apply_bytes` before they are applied, so the page size sets the number of
    /// requests, not of transactions.
    pub pull_page: usize,
    /// Most envelope bytes applied in one transaction when pulling (default 8 MiB).
    /// Consecutive pull pages are joined up to this before they are applied: every commit
    /// writes each index page it dirtied, and blind record ids land on random index pages, so
    /// the fewer and larger the commits, the fewer index pages written per record (an initial
    /// pull of a million ~1.3 KiB records, with the two random-keyed device indexes of schema 3,
    /// wrote 9.8 GB with one page of ~4 MiB a commit, 6.6 GB with runs of 8 MiB, 5.3 GB with
    /// 16 and 3.8 GB with 48; schema 4 has one such index, and wrote 4.7 GB with runs of 8 MiB;
    /// docs/performance.md).
    /// Two such runs are held at once (one applied, the next fetched and opened): memory grows
    /// with this, not with the number of records.
    pub apply_bytes: usize,
    /// Strategy for collections without one set (default `lww`).
    pub default_strategy: String,
    /// How long a `user-choice` conflict waits for the user (default 24 h).
    pub user_choice_deadline: Duration,
    /// The strategy applied when that deadline passes (default `lww`).
    pub fallback_strategy: String,
    /// Watchdog: a transport call that makes no progress for this long fails the round with a
    /// visible error instead of hanging (default 60 s).
    pub stall_timeout: Duration,
    /// Round-level watchdog: when the oldest local write waiting in the upload queue is still
    /// there after rounds spanning this long (the queue does not drain: pushes fail, or are
    /// acknowledged yet clear nothing), the round fails with a visible "no progress" error
    /// naming the last cause, instead of a silent stall (default 15 min, by the store's clock).
    pub progress_timeout: Duration,
    /// Automatic retry schedule after a temporary failure: the first retry this long after it
    /// (default 1 s) ...
    pub retry_min: Duration,
    /// ... doubling with every consecutive failure up to this (default 5 min), with up to 25 %
    /// jitter added. The planned time is published as [`SyncState::Error::retry_at`] and by
    /// [`SyncEngine::next_retry`].
    pub retry_max: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            push_batch: 1000,
            pull_page: 1000,
            apply_bytes: 8 * 1024 * 1024,
            default_strategy: "lww".into(),
            user_choice_deadline: Duration::from_secs(24 * 3600),
            fallback_strategy: "lww".into(),
            stall_timeout: Duration::from_secs(60),
            progress_timeout: Duration::from_secs(15 * 60),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(5 * 60),
        }
    }
}

/// Progress of a running sync.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Envelopes pushed so far.
    pub pushed: u64,
    /// Envelopes pulled so far.
    pub pulled: u64,
    /// Local writes waiting to be pushed when the round started.
    pub pending: u64,
}

/// What the engine is doing, for a UI to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyncState {
    /// The network is down (as told by [`SyncEngine::set_online`]).
    Offline,
    /// A round is running.
    Syncing {
        /// How far it got.
        progress: Progress,
    },
    /// Synced, but conflicts wait for the user.
    Conflict {
        /// How many records have unresolved siblings.
        count: usize,
    },
    /// Synced, nothing waiting.
    UpToDate {
        /// When the round finished (milliseconds since the epoch).
        at: u64,
    },
    /// The last round failed.
    Error {
        /// When the engine plans the next attempt (milliseconds since the epoch, by the store's
        /// clock): set after a temporary failure, on the backoff schedule of
        /// [`SyncConfig::retry_min`] / [`SyncConfig::retry_max`]; `None` after a permanent one
        /// (a retry cannot fix it).
        retry_at: Option<u64>,
        /// What went wrong (no user data).
        reason: String,
    },
}

/// An envelope the engine refused to apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Where it was in the server's log.
    pub server_seq: u64,
    /// Why (an [`ErrorKind`] name, or `rollback` / `inconsistent`).
    pub reason: String,
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncReport {
    /// Envelopes pushed.
    pub pushed: u64,
    /// Envelopes of an earlier push whose answer never arrived (lost, or the process stopped)
    /// that the server turned out to hold: acknowledged from its answer to a settle request
    /// ([`crate::PushRequest::settle`]) instead of being pushed again.
    #[serde(default)]
    pub settled: u64,
    /// Record envelopes pulled (other devices' heads not counted).
    pub pulled: u64,
    /// Remote versions applied locally.
    pub applied: u64,
    /// Conflicts resolved automatically (including `user-choice` fallbacks after the deadline).
    pub conflicts_resolved: u64,
    /// Records waiting for the user.
    pub conflicts_pending: u64,
    /// Envelopes refused.
    pub rejected: Vec<Rejection>,
    /// Signs, from other devices' sealed heads, that the server withheld writes from this
    /// device (see [`head`]). Empty on an honest server.
    pub withheld: Vec<Withheld>,
    /// True when a withholding finding made the round pull the whole log again (no sweep).
    pub refetched: bool,
    /// How many other devices' heads this round compared its state digest with (each vouched
    /// for the state it had; see [`head`]).
    pub digests_compared: u64,
    /// True when the server asked for, and the engine did, a full re-sync.
    pub resynced: bool,
    /// Records removed by a re-sync because the server no longer has them (deleted elsewhere
    /// while this device was away), including local edits to them.
    pub discarded: u64,
    /// Records queued to be pushed again because the server lost them (only in the re-sync
    /// that [`SyncEngine::reupload_to_server`] or a new log id asks for).
    pub reuploaded: u64,
    /// True when the server's log had a new [`LogId`] (its data declared
    /// restored from a backup): the round walked it again from 0 and put back what it lost.
    pub log_replaced: bool,
    /// Local tombstones forgotten after the server collected them.
    pub tombstones_collected: u64,
    /// Wall time of the round.
    pub duration_ms: u64,
}

/// The persisted outcome of the last round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSync {
    /// When it ended (milliseconds since the epoch).
    pub at: u64,
    /// What it did (partial if it failed).
    pub report: SyncReport,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// A record with unresolved siblings.
#[derive(Clone, Debug)]
pub struct ConflictInfo {
    /// The local version.
    pub local: Record,
    /// The concurrent remote versions.
    pub siblings: Vec<Record>,
    /// When the conflict arose (milliseconds since the epoch).
    pub since: u64,
}

/// How the application resolves a `user-choice` conflict.
#[derive(Clone, Debug, PartialEq)]
pub enum Choice {
    /// Keep the local value.
    Local,
    /// Take the sibling at this index of [`ConflictInfo::siblings`].
    Remote(usize),
    /// A new value (`None` deletes).
    Value(Option<serde_json::Value>),
}

/// Syncs one store through one transport. Cheap to share behind an `Arc`; one round at a time.
pub struct SyncEngine {
    store: Store,
    transport: Arc<dyn Transport>,
    config: SyncConfig,
    state: watch::Sender<SyncState>,
    online: AtomicBool,
    round: tokio::sync::Mutex<()>,
    strategies: std::sync::Mutex<HashMap<String, Arc<dyn ConflictStrategy>>>,
    /// Scheduling state: consecutive temporary failures, the planned retry, the state before
    /// going offline, and the round-level watchdog's mark.
    sched: std::sync::Mutex<Schedule>,
}

#[derive(Debug, Default)]
struct Schedule {
    failures: u32,
    retry_at: Option<u64>,
    before_offline: Option<SyncState>,
    /// The oldest pending device sequence seen at the end of a round, and since when.
    drain_mark: Option<(u64, u64)>,
}

impl std::fmt::Debug for SyncEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncEngine")
            .field("store", &self.store)
            .field("transport", &self.transport.name())
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

fn page_err(what: &'static str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("no progress: {what} did not complete within the stall timeout"),
    )
    .temporary()
}

/// A pushed batch waiting for its local acknowledgement.
struct PushedBatch {
    /// The outbox entries pushed (their envelopes moved into the push).
    entries: Vec<crate::storage::OutboxEntry>,
    /// The `(device seq, server seq)` pairs the server assigned them, in order.
    assigned: Vec<(u64, u64)>,
    /// The sequence of the head that ended the push, and its server sequence.
    head: Option<(u64, u64)>,
    /// When the entries were read from the outbox.
    read: ReadMark,
}

/// What [`SyncEngine::make_head`] writes of [`META_UNSETTLED`] with the head's sequence.
#[derive(Clone, Copy)]
enum Unsettled {
    /// Nothing: the note already covers the push.
    Covered,
    /// The push starts at this sequence.
    From(u64),
    /// The push is the head alone: from the head's sequence.
    FromHead,
}

/// The store's commit count ([`Store::commits`]) and the push's own commits so far, taken
/// just before an outbox read: if at the acknowledgement both have grown by the same amount,
/// nothing but the push itself has committed since, so the rows are still as that read saw
/// them (the push's own commits touch only other batches' rows: the outbox is ordered by
/// sequence and a record is in it once).
#[derive(Clone, Copy)]
struct ReadMark {
    commits: u64,
    own: u64,
}

/// How a pull walks the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Walk {
    /// From the stored cursor; every check applies.
    Cursor,
    /// A full re-sync in this epoch: from 0, the server's state taken as it is, swept after.
    Resync(u32),
    /// A full re-sync after the application said the server lost data
    /// ([`SyncEngine::reupload_to_server`]): as `Resync`, except that a record this device
    /// holds newer than what the server serves is queued to be pushed again, and what the
    /// server does not serve at all is uploaded again instead of swept.
    Reupload(u32),
    /// From 0 after a withholding finding: the per-origin rollback rule is off (what was held
    /// back is older than what followed it), the per-record one stays, nothing is swept.
    Refetch,
}

/// Logs withholding findings (never a payload: device ids and a reason) and adds them to the
/// report; `sweep_stopped` when they stopped a re-sync's sweep.
fn report_withheld(report: &mut SyncReport, found: Vec<Withheld>, sweep_stopped: bool) {
    for f in &found {
        tracing::warn!(
            device = %f.device.to_hex(),
            witness = %f.witness.to_hex(),
            reason = %f.reason,
            sweep_stopped,
            "the server appears to withhold writes from this device"
        );
    }
    report.withheld.extend(found);
}

/// True when a re-sync in `epoch` did not confirm this previously synced row: what its sweep
/// removes (and so what `sweep_is_safe` takes out of the digest, by the same rule).
fn unconfirmed_by(row: &StoredRecord, epoch: u32) -> Result<bool> {
    let sync = RowSync::decode(&row.sync)?;
    Ok(sync.synced && sync.epoch != epoch)
}

/// Times a full re-sync may be restarted from cursor 0 within one round (by the server, or by a
/// new log id).
const MAX_RESYNC_RESTARTS: u32 = 3;

/// Counts one more restart of a re-sync walk from 0 (the server no longer recognised the
/// walk, or named a new log id); too many in one round is a temporary error, so a server that
/// keeps doing it cannot hold a device in a walk for ever.
fn restart(restarts: &mut u32) -> Result<()> {
    *restarts += 1;
    if *restarts > MAX_RESYNC_RESTARTS {
        return Err(Error::new(
            ErrorKind::Unavailable,
            "no progress: the server restarted the full re-sync too many times",
        )
        .temporary());
    }
    Ok(())
}

/// A page must not send the engine round in circles: a server that answers `more` without
/// advancing the cursor, moves it back, or serves envelopes past the cursor it names (so the
/// next pull would serve them again) is refused before anything of the page is applied or
/// saved. Envelopes at or below the cursor are not a page error: each goes through the
/// per-envelope checks, where an old one served again is a `rollback` in the report.
fn check_page(cursor: u64, page: &PullPage) -> Result<()> {
    let stuck = page.next_cursor == cursor && page.more;
    let ahead = page
        .envelopes
        .iter()
        .any(|e| e.server_seq > page.next_cursor);
    if page.next_cursor < cursor || stuck || ahead {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "no progress: the server answered a pull after cursor {cursor} with a page that \
                 does not advance it (next cursor {}, {} envelopes, more: {})",
                page.next_cursor,
                page.envelopes.len(),
                page.more
            ),
        ));
    }
    Ok(())
}

/// The payload of `envelope`, its value checked to be JSON without being parsed into a tree:
/// what a pulled version needs until a merge or a strategy looks at its value ([`version_of`]).
fn open_checked(store: &Store, id: &RecordId, envelope: &[u8]) -> Result<Payload> {
    let p = store.open_envelope(id, envelope)?;
    if let Some(json) = &p.value {
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map_err(|e| Error::corrupt("record value is not valid JSON").with_source(e))?;
    }
    Ok(p)
}

/// A pulled run ([`SyncEngine::pull_run`]), the error that ended it early if one did, and its
/// envelopes opened ahead of the apply (`None` where opening failed: the apply opens those
/// again, and rejects them with the reason).
type OpenedRun = (PullPage, Option<Error>, Vec<Option<Payload>>);

/// The version a payload holds, its value parsed.
fn version_of(p: &Payload) -> Result<Version> {
    let value = match &p.value {
        Some(json) => Some(
            serde_json::from_slice(json)
                .map_err(|e| Error::corrupt("record value is not valid JSON").with_source(e))?,
        ),
        None => None,
    };
    Ok(Version {
        value,
        version: p.version.clone(),
        hlc: p.hlc,
    })
}

/// What an answer from the server means for the rows it names: `(record, device seq, server
/// seq, the row's state)`. A row still pending at that sequence is acknowledged (its base
/// becomes the stored envelope); a row rewritten since names the stored envelope in its next
/// push; a retried tombstone the server has since collected is forgotten. Returns the
/// acknowledgements, the new bookkeeping and the rows to remove.
#[allow(clippy::type_complexity)]
fn ack_rows(
    rows: impl Iterator<Item = (RecordId, u64, u64, Option<RowState>)>,
) -> Result<(
    Vec<(RecordId, u64)>,
    Vec<(RecordId, Vec<u8>)>,
    Vec<RecordId>,
)> {
    let (mut acks, mut syncs, mut removes) = (Vec::new(), Vec::new(), Vec::new());
    for (id, seq, server_seq, row) in rows {
        let Some(row) = row else { continue };
        let mut sync = RowSync::decode(&row.sync)?;
        sync.synced = true;
        if row.pending_seq == Some(seq) && server_seq == 0 && row.deleted {
            // A retried push of a tombstone the server already stored and has since
            // collected (every device pulled past it): nothing left to sync, and no later
            // floor would name it, so it is forgotten now.
            removes.push(id);
            continue;
        }
        if row.pending_seq == Some(seq) {
            sync.base = if server_seq == 0 {
                Vec::new()
            } else {
                vec![server_seq]
            };
            sync.ancestor = None;
            acks.push((id, seq));
        } else {
            // Rewritten since: the newer local version replaces the pushed one too.
            sync.add_base(server_seq);
        }
        syncs.push((id, sync.encode()));
    }
    Ok((acks, syncs, removes))
}

/// Commits what [`ack_rows`] made of an answer, with `meta`. An acknowledgement changes no
/// version: rows keep their envelope and siblings and stay synced, so the state digest stays
/// as it is. (A removed tombstone may still have had siblings: then the digest is updated the
/// usual way.)
async fn commit_acks(
    w: &mut crate::store::WriterGuard<'_>,
    acks: Vec<(RecordId, u64)>,
    syncs: Vec<(RecordId, Vec<u8>)>,
    removes: Vec<RecordId>,
    meta: Vec<(String, Option<Vec<u8>>)>,
) -> Result<()> {
    let batch = Batch {
        acks,
        syncs,
        meta,
        ..Batch::default()
    };
    if removes.is_empty() {
        w.commit_keeping_digest(batch).await
    } else {
        w.commit(Batch { removes, ..batch }).await
    }
}

/// [`META_OWN_HEAD_SERVER`]'s value: the newest `MAX_OWN_HEADS` of `seqs`, deduplicated.
fn own_heads(mut seqs: Vec<u64>) -> Result<Vec<u8>> {
    seqs.retain(|s| *s != 0);
    seqs.sort_unstable();
    seqs.dedup();
    if seqs.len() > MAX_OWN_HEADS {
        seqs.drain(..seqs.len() - MAX_OWN_HEADS);
    }
    encode(&seqs)
}

fn decode_or_default<T: for<'de> Deserialize<'de> + Default>(bytes: Option<Vec<u8>>) -> Result<T> {
    match bytes {
        Some(b) => Ok(postcard::from_bytes(&b)?),
        None => Ok(T::default()),
    }
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| Error::internal("sync metadata encoding").with_source(e))
}

/// Deterministic order of two versions with equal vectors but different contents: the later
/// HLC, then the larger value bytes. Returns true when `a` wins.
fn equal_version_tiebreak(a: &Payload, b: &Payload) -> bool {
    (a.hlc, &a.value) > (b.hlc, &b.value)
}

struct PageCtx {
    rows: HashMap<RecordId, StoredRecord>,
    conflicts: Vec<RecordId>,
    epoch: u32,
    /// Blind ids of the collections this page's new rows belong to, computed once each (a
    /// keyed hash per pulled record was ~8 % of the engine's thread in W3's pull). Blind ids
    /// do not change with the keys: the blind-index key survives a rotation.
    collections: Vec<(String, CollectionId)>,
}

impl PageCtx {
    /// Collections remembered per page at most; a page with more computes the rest each time.
    const COLLECTIONS: usize = 32;

    /// The blind id of `name`, from this page's memo when it is there.
    fn collection_id(&mut self, store: &Store, name: &str) -> Result<CollectionId> {
        if let Some((_, id)) = self.collections.iter().find(|(n, _)| n == name) {
            return Ok(*id);
        }
        let id = store.collection_id(name)?;
        if self.collections.len() < Self::COLLECTIONS {
            self.collections.push((name.to_owned(), id));
        }
        Ok(id)
    }
}

impl SyncEngine {
    /// An engine for `store` over `transport`.
    pub fn new(store: Store, transport: Arc<dyn Transport>, config: SyncConfig) -> Self {
        let (state, _) = watch::channel(SyncState::UpToDate { at: 0 });
        Self {
            store,
            transport,
            config,
            state,
            online: AtomicBool::new(true),
            round: tokio::sync::Mutex::new(()),
            strategies: std::sync::Mutex::default(),
            sched: std::sync::Mutex::default(),
        }
    }

    /// The store this engine syncs.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Watches the engine's state.
    pub fn subscribe(&self) -> watch::Receiver<SyncState> {
        self.state.subscribe()
    }

    /// The current state.
    pub fn state(&self) -> SyncState {
        self.state.borrow().clone()
    }

    /// Network up or down, as the platform reports it. While down, [`SyncEngine::sync`] fails
    /// fast with a temporary [`ErrorKind::Unavailable`] and the state is [`SyncState::Offline`].
    /// Back up, the state leaves `Offline` at once: the state before going offline comes back
    /// (`UpToDate`, `Conflict`), except that a failure (or a round cut off by the outage)
    /// becomes an `Error` whose retry is due now, and the backoff starts over.
    pub fn set_online(&self, online: bool) {
        let was = self.online.swap(online, Ordering::SeqCst);
        let Ok(mut sched) = self.sched.lock() else {
            return;
        };
        if !online {
            if was {
                sched.before_offline = Some(self.state());
            }
            self.state.send_replace(SyncState::Offline);
            return;
        }
        if self.state() != SyncState::Offline {
            // Already online, or a round that ran into the outage has reported since.
            sched.before_offline = None;
            return;
        }
        let now = self.store.now_millis();
        sched.failures = 0;
        let next = match sched.before_offline.take() {
            Some(s @ (SyncState::UpToDate { .. } | SyncState::Conflict { .. })) => {
                sched.retry_at = None;
                s
            }
            Some(SyncState::Error { reason, .. }) => {
                sched.retry_at = Some(now);
                SyncState::Error {
                    retry_at: Some(now),
                    reason,
                }
            }
            _ => {
                sched.retry_at = Some(now);
                SyncState::Error {
                    retry_at: Some(now),
                    reason: "back online; the last sync did not complete".into(),
                }
            }
        };
        self.state.send_replace(next);
    }

    /// When the engine plans the next round (milliseconds since the epoch, by the store's
    /// clock): after a temporary failure, on the backoff schedule; `None` when no retry is due
    /// (the last round succeeded, or failed permanently). A scheduler sleeps until then and
    /// calls [`SyncEngine::sync`].
    pub fn next_retry(&self) -> Option<u64> {
        self.sched.lock().ok().and_then(|s| s.retry_at)
    }

    /// The backoff delay after `failures` consecutive temporary failures (1-based), jittered
    /// by up to 25 % from the store's random source.
    fn backoff(&self, failures: u32) -> u64 {
        let min = self.config.retry_min.as_millis() as u64;
        let max = self.config.retry_max.as_millis() as u64;
        let base = min
            .saturating_mul(1u64 << failures.saturating_sub(1).min(32))
            .min(max);
        let mut r = [0u8; 8];
        let jitter = match self.store.cipher().fill_random(&mut r) {
            Ok(()) => u64::from_le_bytes(r) % (base / 4 + 1),
            Err(_) => 0,
        };
        base.saturating_add(jitter)
    }

    fn from(&self) -> SpaceRef {
        SpaceRef {
            space: self.store.space(),
            device: self.store.device(),
            fingerprint: self.store.key_fingerprint(),
        }
    }

    /// Chooses the conflict strategy of `collection` by registry name. Stored on this device
    /// only (encrypted, never synced). An unknown name is an error listing the known ones.
    pub async fn set_strategy(&self, collection: &str, name: &str) -> Result<()> {
        registry::strategy(name)?;
        let mut b = WriteBatch::new().local_only();
        b.put(STRATEGY_COLLECTION, collection, &name)?;
        self.store.write(b).await?;
        if let Ok(mut cache) = self.strategies.lock() {
            cache.remove(collection);
        }
        Ok(())
    }

    /// The strategy that resolves conflicts in `collection`.
    pub async fn strategy_for(&self, collection: &str) -> Result<Arc<dyn ConflictStrategy>> {
        if let Some(s) = self
            .strategies
            .lock()
            .ok()
            .and_then(|c| c.get(collection).cloned())
        {
            return Ok(s);
        }
        let name = match self.store.get(STRATEGY_COLLECTION, collection).await? {
            Some(serde_json::Value::String(n)) => n,
            _ => self.config.default_strategy.clone(),
        };
        let strategy = (registry::strategy(&name)?.make)();
        if let Ok(mut cache) = self.strategies.lock() {
            cache.insert(collection.to_owned(), strategy.clone());
        }
        Ok(strategy)
    }

    /// Tells this device that its server lost data (it was restored from an older backup of
    /// its database, say), so that the next round walks the server's whole log again and puts
    /// back what the server no longer has, from what this device holds.
    ///
    /// After such a loss the engine keeps every record but cannot tell the loss from a server
    /// that withholds writes: a forced re-sync then reports [`SyncReport::withheld`] and pushes
    /// nothing, round after round (see `docs/security.md`). Call this once the operator has
    /// confirmed the loss; every device that synced with that server should call it. The next
    /// round re-syncs from 0 and, instead of removing the records the server no longer serves,
    /// writes each again as a new version of this device (same value, or the same deletion),
    /// as it does with a record it holds newer than the version the server serves; both are
    /// counted in [`SyncReport::reuploaded`] and pushed in that round. The new versions
    /// dominate every version the devices hold, so they spread without conflicts, except
    /// where two devices upload the same record again: their versions are then concurrent,
    /// with equal values, and resolve like any other conflict (`user-choice` does not ask
    /// about equal values). The cost: a record deleted elsewhere, and collected by the server
    /// while this device was away, comes back; nothing the server lost is lost.
    ///
    /// A server whose operator declared the restore (`hearth-server mark-restored`) serves a
    /// new [`LogId`], and every device does this by itself at its next round
    /// ([`SyncReport::log_replaced`]); this call is for a restore that was not declared.
    pub async fn reupload_to_server(&self) -> Result<()> {
        let _round = self.round.lock().await;
        let epoch = self.start_reupload(None).await?;
        tracing::info!(
            epoch,
            "the next round re-syncs and uploads what the server lost"
        );
        Ok(())
    }

    /// Sets up a re-sync from 0 that puts back what the server lost (see
    /// [`Self::reupload_to_server`]), recording `log_id` as the log the new cursor belongs to.
    /// Returns the re-sync's epoch.
    async fn start_reupload(&self, log_id: Option<LogId>) -> Result<u32> {
        let epoch = self.meta_u64(META_EPOCH).await? + 1;
        let epoch_bytes = encode(&epoch)?;
        let mut meta = vec![
            (META_RESYNC.to_owned(), Some(epoch_bytes.clone())),
            (META_REUPLOAD.to_owned(), Some(epoch_bytes.clone())),
            (META_EPOCH.to_owned(), Some(epoch_bytes)),
            (META_CURSOR.to_owned(), Some(encode(&0u64)?)),
            (META_SEEN.to_owned(), None),
            (META_HEADS.to_owned(), None),
        ];
        if let Some(id) = log_id {
            meta.push((META_LOG_ID.to_owned(), Some(encode(&id)?)));
        }
        self.store
            .storage()
            .commit(Batch {
                meta,
                ..Batch::default()
            })
            .await?;
        u32::try_from(epoch).map_err(|_| Error::corrupt("re-sync epoch out of range"))
    }

    /// Compares the log id a page names with the one this device's cursor was taken under.
    /// The first page a device sees records it. A different one means the server's log was
    /// replaced (its data declared restored from a backup): the cursor, the sequences seen and
    /// the heads describe a log that no longer exists, so a re-sync that puts back what the
    /// server lost is set up, and its epoch returned. The page must then not be applied: it
    /// answers a cursor of the old log.
    async fn log_replaced(&self, page: &PullPage, report: &mut SyncReport) -> Result<Option<u32>> {
        let stored: Option<LogId> = match self.store.storage().meta_get(META_LOG_ID).await? {
            Some(b) => Some(postcard::from_bytes(&b)?),
            None => None,
        };
        match stored {
            Some(id) if id == page.log_id => Ok(None),
            None => {
                self.store
                    .storage()
                    .commit(Batch {
                        meta: vec![(META_LOG_ID.to_owned(), Some(encode(&page.log_id)?))],
                        ..Batch::default()
                    })
                    .await?;
                Ok(None)
            }
            Some(old) => {
                let epoch = self.start_reupload(Some(page.log_id)).await?;
                report.log_replaced = true;
                tracing::warn!(
                    old = %old,
                    new = %page.log_id,
                    epoch,
                    "the server's log was replaced (restored from a backup): walking it again and putting back what it lost"
                );
                Ok(Some(epoch))
            }
        }
    }

    /// The outcome of the last round, if any.
    pub async fn last_sync(&self) -> Result<Option<LastSync>> {
        match self.store.storage().meta_get(META_LAST).await? {
            // A report written by an older version (fields were added since) reads as none:
            // it is informational, and the next round replaces it.
            Some(b) => Ok(postcard::from_bytes(&b).ok()),
            None => Ok(None),
        }
    }

    /// Runs one sync round: pull and apply, resolve, push. Reports what it did; a failure
    /// leaves everything applied so far committed and is reported in the state, with the
    /// planned retry for a temporary one ([`SyncEngine::next_retry`]).
    pub async fn sync(&self) -> Result<SyncReport> {
        let _round = self.round.lock().await;
        if !self.online.load(Ordering::SeqCst) {
            self.state.send_replace(SyncState::Offline);
            return Err(Error::new(ErrorKind::Unavailable, "offline").temporary());
        }
        if self.store.rotation_pending().await? {
            return Err(Error::new(
                ErrorKind::Conflict,
                "a key rotation is under way; finish it (hearth rotate-key) before syncing",
            ));
        }
        let started = Instant::now();
        let pending = self.store.storage().outbox_len().await?;
        let mut report = SyncReport::default();
        self.state.send_replace(SyncState::Syncing {
            progress: Progress {
                pending,
                ..Progress::default()
            },
        });
        let result = self.round(&mut report, pending).await;
        let result = self.watchdog(result).await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        let now = self.store.now_millis();
        let last = LastSync {
            at: now,
            report: report.clone(),
            error: result.as_ref().err().map(ToString::to_string),
        };
        let persisted = self
            .store
            .storage()
            .commit(Batch {
                meta: vec![(META_LAST.to_owned(), Some(encode(&last)?))],
                ..Batch::default()
            })
            .await;
        match result {
            Ok(()) => {
                persisted?;
                let conflicts = self.conflict_ids().await?.len();
                report.conflicts_pending = conflicts as u64;
                if let Ok(mut sched) = self.sched.lock() {
                    sched.failures = 0;
                    sched.retry_at = None;
                }
                self.state.send_replace(if conflicts > 0 {
                    SyncState::Conflict { count: conflicts }
                } else {
                    SyncState::UpToDate { at: now }
                });
                Ok(report)
            }
            Err(e) => {
                let retry_at = match self.sched.lock() {
                    Ok(mut sched) => {
                        sched.retry_at = if e.is_temporary() {
                            sched.failures = sched.failures.saturating_add(1);
                            Some(now.saturating_add(self.backoff(sched.failures)))
                        } else {
                            None
                        };
                        sched.retry_at
                    }
                    Err(_) => None,
                };
                self.state.send_replace(SyncState::Error {
                    retry_at,
                    reason: e.to_string(),
                });
                Err(e)
            }
        }
    }

    /// The round-level watchdog: the oldest write waiting in the upload queue must leave it.
    /// If the same one is still there after rounds spanning [`SyncConfig::progress_timeout`],
    /// the round fails with "no progress", naming the last round's own error if it had one.
    async fn watchdog(&self, result: Result<()>) -> Result<()> {
        let oldest = self
            .store
            .storage()
            .outbox(0, 1)
            .await?
            .first()
            .map(|e| e.seq);
        let now = self.store.now_millis();
        let Ok(mut sched) = self.sched.lock() else {
            return result;
        };
        let Some(oldest) = oldest else {
            sched.drain_mark = None;
            return result;
        };
        let since = match sched.drain_mark {
            Some((seq, since)) if seq == oldest => since,
            _ => {
                sched.drain_mark = Some((oldest, now));
                return result;
            }
        };
        let waited = now.saturating_sub(since);
        if waited < self.config.progress_timeout.as_millis() as u64 {
            return result;
        }
        let cause = match &result {
            Ok(()) => "pushes were acknowledged but the queue did not drain".to_owned(),
            Err(e) => format!("last error: {e}"),
        };
        let temporary = result.as_ref().err().is_none_or(Error::is_temporary);
        let e = Error::new(
            ErrorKind::Unavailable,
            format!(
                "no progress: the oldest local write has waited {} s to upload ({cause})",
                waited / 1000
            ),
        );
        Err(if temporary { e.temporary() } else { e })
    }

    /// Marks the state as failed with a retry planned by the caller (a scheduler with its own
    /// policy), overriding the engine's own plan in [`SyncEngine::next_retry`].
    pub fn report_retry(&self, retry_at: u64, reason: impl Into<String>) {
        if let Ok(mut sched) = self.sched.lock() {
            sched.retry_at = Some(retry_at);
        }
        self.state.send_replace(SyncState::Error {
            retry_at: Some(retry_at),
            reason: reason.into(),
        });
    }

    fn progress(&self, report: &SyncReport, pending: u64) {
        self.state.send_replace(SyncState::Syncing {
            progress: Progress {
                pushed: report.pushed,
                pulled: report.pulled,
                pending,
            },
        });
    }

    async fn round(&self, report: &mut SyncReport, pending: u64) -> Result<()> {
        let resync_underway = self.store.storage().meta_get(META_RESYNC).await?.is_some();
        let pulled = if resync_underway {
            self.resync(report, pending).await
        } else {
            self.pull_all(report, pending, Walk::Cursor)
                .await
                .map(|()| true)
        };
        let swept = match pulled {
            Err(e) if e.kind() == ErrorKind::ResyncRequired => self.resync(report, pending).await?,
            other => other?,
        };
        if !swept {
            // A re-sync the heads contradict: local writes wait (pushed now, one on a record
            // the sweep would have removed would bring it back) until a walk checks out.
            return Ok(());
        }
        if !report.withheld.is_empty() && !report.resynced {
            // Writes were withheld from this device and its cursor has moved past where they
            // are: pull the whole log once more, refusing only what goes backwards for its
            // record (the per-origin rule would refuse the late ones). No sweep: a record the
            // server leaves out is kept. Against a server that still withholds the check
            // finds the same; against one that stopped, or a network path that healed, the
            // device catches up.
            report.refetched = true;
            let found = std::mem::take(&mut report.withheld);
            let swept = match self.pull_all(report, pending, Walk::Refetch).await {
                Err(e) if e.kind() == ErrorKind::ResyncRequired => {
                    self.resync(report, pending).await?
                }
                other => other.map(|()| true)?,
            };
            for f in std::mem::replace(&mut report.withheld, found) {
                if !report.withheld.contains(&f) {
                    report.withheld.push(f);
                }
            }
            if !swept {
                return Ok(());
            }
        }
        self.expire_conflicts(report).await?;
        self.push_all(report, pending).await
    }

    async fn meta_u64(&self, key: &str) -> Result<u64> {
        decode_or_default(self.store.storage().meta_get(key).await?)
    }

    /// Pulls and applies pages up to the end of the log: from the stored cursor
    /// ([`Walk::Cursor`]), or from 0 ([`Walk::Refetch`]).
    async fn pull_all(&self, report: &mut SyncReport, pending: u64, walk: Walk) -> Result<()> {
        let mut cursor = match walk {
            Walk::Refetch => 0,
            _ => self.meta_u64(META_CURSOR).await?,
        };
        let (mut page, mut failed, mut ahead) = self.pull_opened(cursor).await?;
        loop {
            if self.log_replaced(&page, report).await?.is_some() {
                // A new log: the re-sync set up above walks it (the round's caller runs it).
                return Err(Error::new(
                    ErrorKind::ResyncRequired,
                    "the server's log was replaced; re-syncing from 0",
                ));
            }
            check_page(cursor, &page)?;
            let more = page.more;
            let floor = page.gc_floor;
            let next_cursor = page.next_cursor;
            let skipped_only = page.envelopes.is_empty() && next_cursor > cursor;
            let apply = async {
                if skipped_only {
                    // Only this device's own envelopes were passed over: just move the cursor.
                    self.store
                        .storage()
                        .commit(Batch {
                            meta: vec![(META_CURSOR.to_owned(), Some(encode(&next_cursor)?))],
                            ..Batch::default()
                        })
                        .await?;
                }
                if !page.envelopes.is_empty() {
                    self.apply_page(page, ahead, report, walk).await?;
                    self.progress(report, pending);
                }
                Ok::<_, Error>(())
            };
            if let Some(e) = failed.take() {
                // The run ended early on an error: what arrived before it is applied (the
                // next round starts after it), then the round fails with it.
                apply.await?;
                return Err(e);
            }
            if !more {
                apply.await?;
                self.collect_tombstones(floor, report).await?;
                return self.check_heads(report).await;
            }
            // Pipelined: the next run is fetched while this one is applied (at most one run
            // ahead, so memory stays bounded by two runs), so the server's work and this
            // device's overlap. The next request names this run's end as its cursor before
            // this run is committed; should the commit fail, the round fails, and the next
            // round starts again from the stored cursor (a server that collected tombstones
            // in between answers ResyncRequired, and the re-sync handles it). The stall
            // watchdog times each request.
            let fetch = std::pin::pin!(self.pull_opened(next_cursor));
            let apply = std::pin::pin!(apply);
            (page, failed, ahead) = match futures::future::select(apply, fetch).await {
                futures::future::Either::Left((applied, fetch)) => {
                    applied?;
                    fetch.await?
                }
                futures::future::Either::Right((fetched, apply)) => {
                    apply.await?;
                    fetched?
                }
            };
            cursor = next_cursor;
        }
    }

    /// [`Self::pull_run`], with the run's envelopes then opened (decrypted, authenticated,
    /// decoded) on a blocking thread: while one run is applied and committed, the next is
    /// fetched and opened beside it instead of after it. Opening is the same whenever it is
    /// done (a store's keys do not change while it is open), and an envelope that fails here is
    /// opened again by the apply, which rejects it with the reason.
    async fn pull_opened(&self, cursor: u64) -> Result<OpenedRun> {
        let (page, failed) = self.pull_run(cursor).await?;
        let store = self.store.clone();
        let (page, ahead) = tokio::task::spawn_blocking(move || {
            let ahead = page
                .envelopes
                .iter()
                .map(|e| open_checked(&store, &e.record, &e.envelope).ok())
                .collect();
            (page, ahead)
        })
        .await
        .map_err(|e| Error::internal("opening pulled envelopes failed").with_source(e))?;
        Ok((page, failed, ahead))
    }

    /// Pulls from `cursor` the pages to apply in one transaction, joined into one: pages
    /// follow while the server has more, their envelopes stay under
    /// [`SyncConfig::apply_bytes`] and they name the log the first one names (a page of
    /// another log is left for the next call, whose first page it then is, and where the
    /// caller sees the log replaced). The first page is returned unchecked, for the caller to
    /// check the log and then the page (nothing is joined to a first page that fails that
    /// check); each later one is checked against the cursor it answers before it is joined. An error after the first page ends the run: it comes back
    /// beside the pages that arrived, so those are applied before the round fails.
    async fn pull_run(&self, cursor: u64) -> Result<(PullPage, Option<Error>)> {
        let pull = |cursor: u64| async move {
            tokio::time::timeout(
                self.config.stall_timeout,
                self.transport.pull(PullRequest {
                    from: self.from(),
                    cursor,
                    limit: self.config.pull_page,
                    include_own: false,
                }),
            )
            .await
            .map_err(|_| page_err("a pull"))?
        };
        let mut run = pull(cursor).await?;
        let mut bytes: usize = run.envelopes.iter().map(|e| e.envelope.len()).sum();
        // Nothing is asked after a first page the caller will refuse.
        let joinable = check_page(cursor, &run).is_ok();
        while joinable && run.more && bytes < self.config.apply_bytes {
            let next = match pull(run.next_cursor).await {
                Ok(next) if next.log_id != run.log_id => break,
                Ok(next) => match check_page(run.next_cursor, &next) {
                    Ok(()) => next,
                    Err(e) => return Ok((run, Some(e))),
                },
                Err(e) => return Ok((run, Some(e))),
            };
            bytes += next
                .envelopes
                .iter()
                .map(|e| e.envelope.len())
                .sum::<usize>();
            run.envelopes.extend(next.envelopes);
            run.next_cursor = next.next_cursor;
            run.more = next.more;
            run.gc_floor = run.gc_floor.max(next.gc_floor);
        }
        Ok((run, None))
    }

    async fn conflict_ids(&self) -> Result<Vec<RecordId>> {
        decode_or_default(self.store.storage().meta_get(META_CONFLICTS).await?)
    }

    /// `payload` sealed for record `id` with the store's current key and padding.
    fn seal(&self, id: &RecordId, payload: &Payload) -> Result<Vec<u8>> {
        self.store.keys().seal(
            self.store.cipher().as_ref(),
            id,
            payload,
            self.store.padding(),
        )
    }

    fn open_version(&self, id: &RecordId, envelope: &[u8]) -> Result<(Payload, Version)> {
        let p = self.store.open_envelope(id, envelope)?;
        let v = version_of(&p)?;
        Ok((p, v))
    }

    /// Applies one pulled page and advances the cursor, in one transaction, as `mode` says.
    /// `ahead` holds the page's envelopes opened already, in order, if they were (see
    /// [`Self::pull_opened`]); the rest are opened here.
    async fn apply_page(
        &self,
        page: PullPage,
        ahead: Vec<Option<Payload>>,
        report: &mut SyncReport,
        mode: Walk,
    ) -> Result<()> {
        let mut w = self.store.writer().await;
        let ids: Vec<RecordId> = page.envelopes.iter().map(|e| e.record).collect();
        let existing = self.store.storage().get_many_for_commit(&ids).await?;
        // The rows as stored, for the state digest's update at the commit.
        let stored: HashMap<RecordId, StoredRecord> = ids
            .iter()
            .zip(existing)
            .filter_map(|(id, r)| r.map(|r| (*id, r)))
            .collect();
        let mut ctx = PageCtx {
            rows: stored.clone(),
            conflicts: self.conflict_ids().await?,
            epoch: match mode {
                Walk::Resync(e) | Walk::Reupload(e) => e,
                Walk::Cursor | Walk::Refetch => self.meta_u64(META_EPOCH).await? as u32,
            },
            collections: Vec::new(),
        };
        let mut seen: BTreeMap<DeviceId, u64> =
            decode_or_default(self.store.storage().meta_get(META_SEEN).await?)?;
        let mut heads: Option<BTreeMap<DeviceId, StoredHead>> = None;
        let mut touched: Vec<RecordId> = Vec::new();
        // Versions decrypted here, so the digest upkeep at the commit need not decrypt again.
        let mut opened = Opened::default();
        let now = self.store.now_millis();
        // Heads are the protocol's, not records: not counted as pulled.
        let mut heads_pulled = 0u64;
        let mut own_heads_served: Vec<u64> = Vec::new();

        let served = page.envelopes.len() as u64;
        let mut ahead = ahead.into_iter();
        // Taken by value: a new row takes its envelope over instead of copying it.
        for mut e in page.envelopes {
            let reject = |report: &mut SyncReport, reason: &str| {
                report.rejected.push(Rejection {
                    server_seq: e.server_seq,
                    reason: reason.to_owned(),
                });
            };
            let opened_ahead = ahead.next().flatten();
            let payload = match opened_ahead
                .map_or_else(|| open_checked(&self.store, &e.record, &e.envelope), Ok)
            {
                Ok(x) => x,
                Err(err) => {
                    tracing::warn!(server_seq = e.server_seq, kind = %err.kind(), "rejected a remote envelope");
                    reject(report, err.kind().as_str());
                    continue;
                }
            };
            if payload.origin != e.device || payload.version.get(&payload.origin) > payload.seq {
                reject(report, "inconsistent");
                continue;
            }
            let last_seen = seen.get(&payload.origin).copied().unwrap_or(0);
            if payload.seq <= last_seen && mode == Walk::Cursor {
                // The server served a write of this origin older than one already seen: a
                // replay or a rollback. Never applied.
                reject(report, "rollback");
                continue;
            }
            if payload.hlc.millis > Hlc::MAX_MILLIS {
                // Authentic but absurd (past year 9999): folding it into this device's clock
                // would exhaust it. Never applied.
                reject(report, "clock");
                continue;
            }
            let local_row = ctx.rows.get(&e.record).cloned();
            let local_opened = match &local_row {
                Some(row) => {
                    let (p, v) = self.open_version(&e.record, &row.envelope)?;
                    opened.insert(e.record, &row.envelope, &v.version, p.value.is_none());
                    Some((p, v))
                }
                None => None,
            };
            if let (Some((local_payload, local)), false) = (
                &local_opened,
                matches!(mode, Walk::Resync(_) | Walk::Reupload(_)),
            ) {
                // A newer write of an origin must have seen that origin's earlier writes of the
                // record: a vector lower than what this device already holds from it (its own
                // entry lower, or the whole vector before the origin's version held here) is a
                // forged or rolled-back history. Never applied.
                let origin = payload.origin;
                if payload.version.get(&origin) < local.version.get(&origin)
                    || (local_payload.origin == origin
                        && payload.version.compare(&local.version) == Causality::Before)
                {
                    tracing::warn!(
                        server_seq = e.server_seq,
                        "rejected a remote envelope whose version vector goes backwards"
                    );
                    reject(report, "backwards");
                    continue;
                }
            }
            if payload.collection == HEAD_COLLECTION {
                // Another device's head: kept for the check at the end of the pull, never a row.
                let value = (payload.key == payload.origin.to_hex())
                    .then(|| {
                        payload
                            .value
                            .as_deref()
                            .and_then(|v| serde_json::from_slice::<HeadValue>(v).ok())
                    })
                    .flatten();
                let Some(value) = value else {
                    reject(report, "inconsistent");
                    continue;
                };
                heads_pulled += 1;
                seen.insert(payload.origin, payload.seq.max(last_seen));
                if payload.origin == self.store.device() {
                    // This device's own head, served by a walk: the next head names it.
                    own_heads_served.push(e.server_seq);
                } else {
                    let heads = match &mut heads {
                        Some(h) => h,
                        None => heads.insert(decode_or_default(
                            self.store.storage().meta_get(META_HEADS).await?,
                        )?),
                    };
                    if heads
                        .get(&payload.origin)
                        .is_none_or(|h| h.seq < payload.seq)
                    {
                        heads.insert(
                            payload.origin,
                            StoredHead {
                                seq: payload.seq,
                                value,
                            },
                        );
                    }
                }
                continue;
            }
            seen.insert(payload.origin, payload.seq.max(last_seen));
            w.observe(&payload.hlc);
            opened.insert(
                e.record,
                &e.envelope,
                &payload.version,
                payload.value.is_none(),
            );

            let (Some(local_row), Some((local_payload, local))) = (local_row, local_opened) else {
                let collection = ctx.collection_id(&self.store, &payload.collection)?;
                ctx.rows.insert(
                    e.record,
                    StoredRecord {
                        id: e.record,
                        collection,
                        envelope: std::mem::take(&mut e.envelope),
                        deleted: payload.value.is_none(),
                        pending_seq: None,
                        sync: RowSync {
                            base: vec![e.server_seq],
                            synced: true,
                            epoch: ctx.epoch,
                            ..RowSync::default()
                        }
                        .encode(),
                    },
                );
                touched.push(e.record);
                report.applied += 1;
                continue;
            };
            let mut sync = RowSync::decode(&local_row.sync)?;
            sync.epoch = ctx.epoch;
            sync.synced = true;
            let causality = payload.version.compare(&local.version);
            let remote_wins = match causality {
                Causality::After => true,
                Causality::Equal => {
                    local_payload.value != payload.value
                        && equal_version_tiebreak(&payload, &local_payload)
                }
                Causality::Before => false,
                Causality::Concurrent => {
                    let remote = version_of(&payload)?;
                    self.resolve_concurrent(
                        &mut w,
                        &mut ctx,
                        local_row,
                        sync,
                        (&local_payload, &local),
                        (&remote, &e.envelope),
                        e.server_seq,
                        now,
                        report,
                    )
                    .await?;
                    touched.push(e.record);
                    continue;
                }
            };
            let row = if remote_wins {
                // Siblings the remote has seen are resolved by it.
                let siblings: Vec<Vec<u8>> = sync
                    .siblings
                    .iter()
                    .filter(|s| {
                        self.open_version(&e.record, s)
                            .map(|(_, v)| !payload.version.dominates(&v.version))
                            .unwrap_or(false)
                    })
                    .cloned()
                    .collect();
                let conflict_since = if siblings.is_empty() {
                    None
                } else {
                    sync.conflict_since
                };
                if siblings.is_empty() {
                    ctx.conflicts.retain(|c| *c != e.record);
                }
                report.applied += 1;
                StoredRecord {
                    envelope: std::mem::take(&mut e.envelope),
                    deleted: payload.value.is_none(),
                    pending_seq: None,
                    sync: RowSync {
                        base: vec![e.server_seq],
                        synced: true,
                        epoch: ctx.epoch,
                        ancestor: None,
                        siblings,
                        conflict_since,
                    }
                    .encode(),
                    ..local_row
                }
            } else {
                sync.add_base(e.server_seq);
                let row = StoredRecord {
                    sync: sync.encode(),
                    ..local_row
                };
                if matches!(mode, Walk::Reupload(_))
                    && causality == Causality::Before
                    && row.pending_seq.is_none()
                {
                    // The server serves only an older version of what this device holds (and
                    // acknowledged, or pulled, before): it lost the newer one. Up again.
                    report.reuploaded += 1;
                    self.requeued(&mut w, row)?
                } else {
                    row
                }
            };
            ctx.rows.insert(e.record, row);
            touched.push(e.record);
        }

        report.pulled += served - heads_pulled;
        touched.sort_unstable();
        touched.dedup();
        let puts = touched
            .iter()
            .filter_map(|id| ctx.rows.remove(id))
            .collect();
        let mut meta = vec![
            (META_CURSOR.to_owned(), Some(encode(&page.next_cursor)?)),
            (META_SEEN.to_owned(), Some(encode(&seen)?)),
            (META_CONFLICTS.to_owned(), Some(encode(&ctx.conflicts)?)),
        ];
        if let Some(heads) = heads {
            meta.push((META_HEADS.to_owned(), Some(encode(&heads)?)));
        }
        if !own_heads_served.is_empty() {
            let mut older: Vec<u64> =
                decode_or_default(self.store.storage().meta_get(META_OWN_HEAD_SERVER).await?)?;
            older.extend(own_heads_served);
            meta.push((META_OWN_HEAD_SERVER.to_owned(), Some(own_heads(older)?)));
        }
        w.commit_replacing(
            Batch {
                puts,
                meta,
                ..Batch::default()
            },
            &stored,
            &opened,
        )
        .await
    }

    /// Checks, at the end of the log, what other devices' heads say against what this device
    /// was served (see [`head`]); what does not hold goes to `report.withheld`.
    async fn check_heads(&self, report: &mut SyncReport) -> Result<()> {
        let storage = self.store.storage();
        let heads: BTreeMap<DeviceId, StoredHead> =
            decode_or_default(storage.meta_get(META_HEADS).await?)?;
        if heads.is_empty() {
            return Ok(());
        }
        let seen: BTreeMap<DeviceId, u64> = decode_or_default(storage.meta_get(META_SEEN).await?)?;
        let own_head = self.meta_u64(META_OWN_HEAD).await?;
        let (mut found, comparable) = head::check(self.store.device(), &seen, own_head, &heads);
        if !comparable.is_empty() {
            // Under the write lock: nothing unpushed (else this device knows more than any
            // head can), and no local write between that check and the digest.
            let mut w = self.store.writer().await;
            if storage.outbox_len().await? == 0 {
                let mine = w.state_digest().await?;
                report.digests_compared += comparable.len() as u64;
                found.extend(head::digest_findings(comparable, &mine));
            }
        }
        report_withheld(report, found, false);
        Ok(())
    }

    /// This device's head for a push whose last envelope has sequence `after`, if nothing is
    /// left to push after it (checked under the write lock, with the digest): sealed, with the
    /// next sequence number, spent and committed before it leaves. Only the last push of a
    /// round gets one: the server takes any sequence at or below a device's highest pushed as
    /// a retry, so a head must come after every write it could precede.
    /// `unsettled` says what it records in [`META_UNSETTLED`] in the same commit; `in_flight`
    /// is the server sequence of this device's head in the push answered last, whose
    /// acknowledgement may not be committed yet.
    async fn make_head(
        &self,
        after: u64,
        unsettled: Unsettled,
        in_flight: Option<u64>,
    ) -> Result<Option<OutgoingEnvelope>> {
        let mut w = self.store.writer().await;
        let storage = self.store.storage();
        if !storage.outbox(after, 1).await?.is_empty() {
            return Ok(None);
        }
        // This device's older heads, named so the server drops them (it drops nothing unnamed).
        let mut older: Vec<u64> = decode_or_default(storage.meta_get(META_OWN_HEAD_SERVER).await?)?;
        if let Some(s) = in_flight
            && !older.contains(&s)
        {
            older.push(s);
        }
        let digest = Some(w.state_digest().await?);
        let seen: BTreeMap<DeviceId, u64> = decode_or_default(storage.meta_get(META_SEEN).await?)?;
        let me = self.store.device();
        let heads: BTreeMap<DeviceId, StoredHead> =
            decode_or_default(storage.meta_get(META_HEADS).await?)?;
        let value = HeadValue {
            seen: seen.into_iter().filter(|(d, _)| *d != me).collect(),
            heads: heads.iter().map(|(d, h)| (*d, h.seq)).collect(),
            digest,
        };
        let (seq, hlc) = w.next_write();
        let mut version = VersionVector::new();
        version.set(me, seq);
        let key = me.to_hex();
        let record = self.store.record_id(HEAD_COLLECTION, &key)?;
        let payload = Payload {
            collection: HEAD_COLLECTION.to_owned(),
            key,
            value: Some(
                serde_json::to_vec(&value)
                    .map_err(|e| Error::internal("head encoding").with_source(e))?,
            ),
            version,
            hlc,
            origin: me,
            seq,
        };
        let envelope = self.seal(&record, &payload)?;
        let note = match unsettled {
            Unsettled::Covered => None,
            Unsettled::From(from) => Some(from),
            Unsettled::FromHead => Some(seq),
        };
        let meta = match note {
            Some(from) => vec![(META_UNSETTLED.to_owned(), Some(encode(&from)?))],
            None => Vec::new(),
        };
        // The sequence number is spent before the head leaves: a crash after the push must
        // not hand it to a write, which the server would then take for a retry and drop.
        w.commit(Batch {
            meta,
            ..Batch::default()
        })
        .await?;
        Ok(Some(OutgoingEnvelope {
            record,
            seq,
            supersedes: older,
            tombstone: false,
            envelope,
        }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn resolve_concurrent(
        &self,
        w: &mut crate::store::WriterGuard<'_>,
        ctx: &mut PageCtx,
        local_row: StoredRecord,
        mut sync: RowSync,
        (local_payload, local): (&Payload, &Version),
        (remote, remote_envelope): (&Version, &[u8]),
        server_seq: u64,
        now: u64,
        report: &mut SyncReport,
    ) -> Result<()> {
        let id = local_row.id;
        let strategy = self.strategy_for(&local_payload.collection).await?;
        let ancestor = match &sync.ancestor {
            Some(env) => self
                .open_version(&id, env)
                .ok()
                .map(|(_, v)| v)
                .filter(|a| {
                    local.version.dominates(&a.version) && remote.version.dominates(&a.version)
                }),
            None => None,
        };
        let conflict = Conflict {
            collection: &local_payload.collection,
            key: &local_payload.key,
            local,
            remote,
            ancestor: ancestor.as_ref(),
        };
        let resolution = match strategy.resolve(&conflict)? {
            // Nothing to choose between: both sides hold the same value (or both deleted it).
            // Taken as it is, by every device alike, so it stays symmetric.
            Resolution::DeferToUser if local.value == remote.value => Resolution::TakeLocal,
            other => other,
        };
        sync.add_base(server_seq);
        let value = match resolution {
            Resolution::DeferToUser => {
                // Keep the remote version, sealed as it came, unless an equal one is kept.
                let known = sync.siblings.iter().any(|s| {
                    self.open_version(&id, s)
                        .map(|(_, v)| v.version == remote.version)
                        .unwrap_or(false)
                });
                if !known {
                    sync.siblings.push(remote_envelope.to_vec());
                }
                sync.conflict_since.get_or_insert(now);
                if !ctx.conflicts.contains(&id) {
                    ctx.conflicts.push(id);
                }
                ctx.rows.insert(
                    id,
                    StoredRecord {
                        sync: sync.encode(),
                        ..local_row
                    },
                );
                return Ok(());
            }
            automatic => apply_resolution(&conflict, automatic),
        };
        let Some(resolved) = value else {
            return Err(Error::internal(
                "an automatic resolution produced no version",
            ));
        };
        let row = self.resolved_row(
            w,
            &local_row,
            sync,
            local_payload,
            resolved.value,
            resolved.version,
            resolved.hlc,
            false,
        )?;
        ctx.rows.insert(id, row);
        report.conflicts_resolved += 1;
        Ok(())
    }

    /// A new pending version of `local_row` with `value`, `version` and `hlc`.
    #[allow(clippy::too_many_arguments)]
    fn resolved_row(
        &self,
        w: &mut crate::store::WriterGuard<'_>,
        local_row: &StoredRecord,
        mut sync: RowSync,
        local_payload: &Payload,
        value: Option<serde_json::Value>,
        mut version: VersionVector,
        hlc: crate::model::Hlc,
        own_dot: bool,
    ) -> Result<StoredRecord> {
        let (seq, tick) = w.next_write();
        // An automatic resolution must be the same version on every device that makes it: no
        // dot of its own, and the later of the two HLCs. A user's decision is a new write.
        let hlc = if own_dot {
            version.set(self.store.device(), seq);
            tick
        } else {
            hlc
        };
        let json = match &value {
            Some(v) => Some(
                serde_json::to_vec(v)
                    .map_err(|e| Error::internal("resolution encoding").with_source(e))?,
            ),
            None => None,
        };
        let payload = Payload {
            collection: local_payload.collection.clone(),
            key: local_payload.key.clone(),
            value: json,
            version,
            hlc,
            origin: self.store.device(),
            seq,
        };
        let envelope = self.seal(&local_row.id, &payload)?;
        sync.ancestor = None;
        Ok(StoredRecord {
            id: local_row.id,
            collection: local_row.collection,
            envelope,
            deleted: value.is_none(),
            pending_seq: Some(seq),
            sync: sync.encode(),
        })
    }

    async fn push_all(&self, report: &mut SyncReport, pending: u64) -> Result<()> {
        report.settled += self.settle().await?;
        let from = self.from();
        // Room for the head that may end a push.
        let batch = self.config.push_batch.saturating_sub(1).max(1);
        // This push's own commits (acknowledgements, the head's sequence, the note), for
        // [`ReadMark`].
        let own = AtomicU64::new(0);
        let mark = || ReadMark {
            commits: self.store.commits(),
            own: own.load(Ordering::SeqCst),
        };
        let mut read = mark();
        let mut entries = self.store.storage().outbox(0, batch).await?;
        // The batch pushed last, waiting to be acknowledged locally.
        let mut unacked: Option<PushedBatch> = None;
        // Whether [`META_UNSETTLED`] covers every push from here on: written before the first
        // push leaves, moved up by each acknowledgement to the push then in flight.
        let mut noted = false;
        loop {
            let Some(last) = entries.last() else {
                if let Some(done) = unacked.take() {
                    self.acknowledge(&done, &own, None).await?;
                    report.pushed += done.entries.len() as u64;
                    self.progress(report, pending);
                }
                return Ok(());
            };
            let after = last.seq;
            let first = entries[0].seq;
            // A record rewritten while its previous version was in flight is in this batch
            // too, and its bookkeeping cannot name that version yet (its acknowledgement is
            // committed while this push is in flight): name it from the answer in hand.
            let in_flight: HashMap<RecordId, u64> = match &unacked {
                Some(done) => done
                    .entries
                    .iter()
                    .zip(&done.assigned)
                    .filter(|(_, (_, server_seq))| *server_seq != 0)
                    .map(|(e, (_, server_seq))| (e.record.id, *server_seq))
                    .collect(),
                None => HashMap::new(),
            };
            let mut envelopes = Vec::with_capacity(entries.len());
            for e in &mut entries {
                let sync = RowSync::decode(&e.record.sync)?;
                let mut supersedes = sync.base;
                if let Some(previous) = in_flight.get(&e.record.id)
                    && !supersedes.contains(previous)
                {
                    supersedes.push(*previous);
                }
                envelopes.push(OutgoingEnvelope {
                    record: e.record.id,
                    seq: e.seq,
                    supersedes,
                    tombstone: e.record.deleted,
                    // Moved, not copied: the acknowledgement needs only ids and sequences.
                    envelope: std::mem::take(&mut e.record.envelope),
                });
            }
            // The last push of the round ends with this device's head (see [`head`]). Before
            // the first push leaves, the note says it may be stored unacknowledged.
            let unsettled = if noted {
                Unsettled::Covered
            } else {
                Unsettled::From(first)
            };
            let head_in_flight = unacked
                .as_ref()
                .and_then(|done| done.head)
                .map(|(_, server_seq)| server_seq)
                .filter(|s| *s != 0);
            let head = self.make_head(after, unsettled, head_in_flight).await?;
            if head.is_some() {
                // make_head committed the head's sequence (and the note).
                own.fetch_add(1, Ordering::SeqCst);
            } else if !noted {
                self.store
                    .storage()
                    .commit(Batch {
                        meta: vec![(META_UNSETTLED.to_owned(), Some(encode(&first)?))],
                        ..Batch::default()
                    })
                    .await?;
                own.fetch_add(1, Ordering::SeqCst);
            }
            noted = true;
            let head_seq = head.as_ref().map(|h| h.seq);
            envelopes.extend(head);
            // Pipelined: while this batch is in flight, the previous one is acknowledged and
            // the next one read (disjoint rows: the outbox is ordered by sequence and a record
            // is in it once). At most three batches are held: the one acknowledged, the one
            // pushed, the one read. Pushes stay one at a time and in order.
            let previous = unacked.take();
            let counts = &mut *report;
            let own = &own;
            let local = async move {
                if let Some(done) = previous {
                    // The note moves up to this push, now in flight.
                    self.acknowledge(&done, own, Some(first)).await?;
                    counts.pushed += done.entries.len() as u64;
                    self.progress(counts, pending);
                }
                let read = mark();
                Ok::<_, Error>((read, self.store.storage().outbox(after, batch).await?))
            };
            let push = std::pin::pin!(tokio::time::timeout(
                self.config.stall_timeout,
                self.transport.push(PushRequest::new(from, envelopes)),
            ));
            let local = std::pin::pin!(local);
            let (pushed, next) = match futures::future::select(push, local).await {
                futures::future::Either::Left((pushed, local)) => (pushed, local.await),
                futures::future::Either::Right((next, push)) => (push.await, next),
            };
            let mut response = pushed.map_err(|_| page_err("a push"))??;
            let (next_read, next) = next?;
            let expected = entries.len() + usize::from(head_seq.is_some());
            let mismatch = || {
                Error::new(
                    ErrorKind::Corrupt,
                    "the server acknowledged a different number of envelopes than were pushed",
                )
            };
            if response.assigned.len() != expected {
                return Err(mismatch());
            }
            let head = match head_seq {
                Some(seq) => match response.assigned.pop() {
                    Some((s, server_seq)) if s == seq => Some((seq, server_seq)),
                    _ => return Err(mismatch()),
                },
                None => None,
            };
            unacked = Some(PushedBatch {
                entries: std::mem::replace(&mut entries, next),
                assigned: response.assigned,
                head,
                read: std::mem::replace(&mut read, next_read),
            });
        }
    }

    /// Pushes this device's head on its own (when nothing is waiting to be pushed; otherwise
    /// the last push of the round carries it).
    async fn push_head(&self) -> Result<()> {
        self.settle().await?;
        let Some(head) = self.make_head(0, Unsettled::FromHead, None).await? else {
            return Ok(());
        };
        let seq = head.seq;
        let response = tokio::time::timeout(
            self.config.stall_timeout,
            self.transport
                .push(PushRequest::new(self.from(), vec![head])),
        )
        .await
        .map_err(|_| page_err("a push"))??;
        if response.assigned.len() != 1 || response.assigned[0].0 != seq {
            return Err(Error::new(
                ErrorKind::Corrupt,
                "the server acknowledged a different number of envelopes than were pushed",
            ));
        }
        let done = PushedBatch {
            entries: Vec::new(),
            assigned: Vec::new(),
            head: Some(response.assigned[0]),
            read: ReadMark { commits: 0, own: 0 },
        };
        self.acknowledge(&done, &AtomicU64::new(0), None).await
    }

    /// Learns what the server holds of pushes whose answers this device never processed, when
    /// [`META_UNSETTLED`] says there may be some, and takes it as those answers: a row still
    /// pending at a held sequence is acknowledged, a row rewritten since names the held
    /// envelope in its next push, a held head of this device is named by the next head. The
    /// server drops only what a push names, so without this an envelope stored while its
    /// answer was lost would outlive the record's later versions (and a later tombstone's
    /// collection, bringing the record back to a new device). Asked page by page (an empty
    /// push with `settle`), in sequence order; the note is cleared once the server has
    /// answered everything. Returns how many rows it acknowledged.
    ///
    /// A store written by a build before wire version 3 has pushed heads without keeping their
    /// server sequences: it settles once from its newest acknowledged head, so that its next
    /// head names that one (every settle leaves [`META_OWN_HEAD_SERVER`] written).
    async fn settle(&self) -> Result<u64> {
        let storage = self.store.storage();
        let note = storage
            .meta_get(META_UNSETTLED)
            .await?
            .map(|b| postcard::from_bytes::<u64>(&b))
            .transpose()?;
        let mut from = match note {
            Some(from) => from,
            None => {
                let own_head = self.meta_u64(META_OWN_HEAD).await?;
                if own_head == 0 || storage.meta_get(META_OWN_HEAD_SERVER).await?.is_some() {
                    return Ok(0);
                }
                own_head
            }
        };
        let mut settled = 0;
        let me = self.store.device();
        let head_record = self.store.record_id(HEAD_COLLECTION, &me.to_hex())?;
        loop {
            let request = PushRequest {
                settle: Some(from),
                ..PushRequest::new(self.from(), Vec::new())
            };
            let response =
                tokio::time::timeout(self.config.stall_timeout, self.transport.push(request))
                    .await
                    .map_err(|_| page_err("a push"))??;
            let held = response.held;
            let mut expect = from;
            for h in &held {
                if h.seq < expect || h.server_seq == 0 {
                    return Err(Error::new(
                        ErrorKind::Corrupt,
                        "the server answered a settle request out of order",
                    ));
                }
                expect = h.seq.saturating_add(1);
            }
            let mut w = self.store.writer().await;
            let (heads, records): (Vec<&HeldEnvelope>, Vec<&HeldEnvelope>) =
                held.iter().partition(|h| h.record == head_record);
            let ids: Vec<RecordId> = records.iter().map(|h| h.record).collect();
            let states = if ids.is_empty() {
                Vec::new()
            } else {
                storage.get_states(&ids).await?
            };
            let (acks, syncs, removes) = ack_rows(
                records
                    .iter()
                    .zip(states)
                    .map(|(h, row)| (h.record, h.seq, h.server_seq, row)),
            )?;
            settled += acks.len() as u64;
            let done = held.is_empty();
            let mut meta = Vec::new();
            if let Some(newest) = heads.iter().map(|h| h.seq).max() {
                let own_head = self.meta_u64(META_OWN_HEAD).await?.max(newest);
                meta.push((META_OWN_HEAD.to_owned(), Some(encode(&own_head)?)));
            }
            if !heads.is_empty() || done {
                let mut older: Vec<u64> =
                    decode_or_default(storage.meta_get(META_OWN_HEAD_SERVER).await?)?;
                older.extend(heads.iter().map(|h| h.server_seq));
                meta.push((META_OWN_HEAD_SERVER.to_owned(), Some(own_heads(older)?)));
            }
            if done {
                meta.push((META_UNSETTLED.to_owned(), None));
            }
            commit_acks(&mut w, acks, syncs, removes, meta).await?;
            if done {
                return Ok(settled);
            }
            from = expect;
        }
    }

    /// Records locally what the server stored of a pushed batch. `own` counts the push's own
    /// commits ([`ReadMark`]); this one is added to it. `next` is the first sequence of the push
    /// in flight, if one is: [`META_UNSETTLED`] moves up to it, or is cleared.
    async fn acknowledge(
        &self,
        done: &PushedBatch,
        own: &AtomicU64,
        next: Option<u64>,
    ) -> Result<()> {
        let (entries, assigned, head) = (&done.entries, &done.assigned, done.head);
        let mut w = self.store.writer().await;
        // Under the write lock, so nothing commits between this check and the commit below.
        let unchanged = self.store.commits().wrapping_sub(done.read.commits)
            == own.load(Ordering::SeqCst).wrapping_sub(done.read.own);
        // The rows' state without their envelopes: an acknowledgement changes no version, so
        // the envelopes are neither read nor written again. Rows nothing has committed to
        // since the outbox read are as that read returned them; otherwise they are read again.
        let rows: Vec<Option<RowState>> = if unchanged {
            entries
                .iter()
                .map(|e| {
                    Some(RowState {
                        deleted: e.record.deleted,
                        pending_seq: e.record.pending_seq,
                        sync: e.record.sync.clone(),
                    })
                })
                .collect()
        } else {
            let ids: Vec<RecordId> = entries.iter().map(|e| e.record.id).collect();
            self.store.storage().get_states(&ids).await?
        };
        for (entry, (seq, _)) in entries.iter().zip(assigned) {
            if *seq != entry.seq {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    "the server acknowledged sequences out of order",
                ));
            }
        }
        let (acks, syncs, removes) = ack_rows(
            entries
                .iter()
                .zip(assigned)
                .zip(rows)
                .map(|((e, (seq, server_seq)), row)| (e.record.id, *seq, *server_seq, row)),
        )?;
        let mut meta = vec![(
            META_UNSETTLED.to_owned(),
            next.map(|n| encode(&n)).transpose()?,
        )];
        if let Some((head, server_seq)) = head {
            let own_head = self.meta_u64(META_OWN_HEAD).await?.max(head);
            meta.push((META_OWN_HEAD.to_owned(), Some(encode(&own_head)?)));
            if server_seq != 0 {
                // It named every older one, so the server holds this one alone.
                meta.push((
                    META_OWN_HEAD_SERVER.to_owned(),
                    Some(own_heads(vec![server_seq])?),
                ));
            }
        }
        let committed = commit_acks(&mut w, acks, syncs, removes, meta).await;
        own.fetch_add(1, Ordering::SeqCst);
        committed
    }

    /// Full re-sync after the server collected history this device missed: pull everything
    /// from cursor 0, then remove what the server no longer has. Resumable: a crash in the
    /// middle continues from the last applied page and still sweeps. False when the walk did
    /// not match the heads it brought ([`Self::sweep_is_safe`]): nothing was removed, and the
    /// next round walks again.
    async fn resync(&self, report: &mut SyncReport, pending: u64) -> Result<bool> {
        report.resynced = true;
        let mut epoch = match self.store.storage().meta_get(META_RESYNC).await? {
            Some(b) => postcard::from_bytes::<u64>(&b)? as u32,
            None => {
                let epoch = self.meta_u64(META_EPOCH).await? as u32 + 1;
                self.store
                    .storage()
                    .commit(Batch {
                        meta: vec![
                            (META_RESYNC.to_owned(), Some(encode(&u64::from(epoch))?)),
                            (META_EPOCH.to_owned(), Some(encode(&u64::from(epoch))?)),
                            (META_CURSOR.to_owned(), Some(encode(&0u64)?)),
                            (META_SEEN.to_owned(), None),
                            (META_HEADS.to_owned(), None),
                        ],
                        ..Batch::default()
                    })
                    .await?;
                epoch
            }
        };
        let mut reupload = match self.store.storage().meta_get(META_REUPLOAD).await? {
            Some(b) => postcard::from_bytes::<u64>(&b)? == u64::from(epoch),
            None => false,
        };
        let mut walk = if reupload {
            Walk::Reupload(epoch)
        } else {
            Walk::Resync(epoch)
        };
        let from = self.from();
        let mut cursor = self.meta_u64(META_CURSOR).await?;
        let mut floor = 0;
        let mut restarts = 0;
        loop {
            let page = tokio::time::timeout(
                self.config.stall_timeout,
                self.transport.pull(PullRequest {
                    from,
                    cursor,
                    limit: self.config.pull_page,
                    include_own: true,
                }),
            )
            .await
            .map_err(|_| page_err("a pull"))?;
            let page = match page {
                // The server no longer recognises this walk (it restarted, or collected more
                // in between): start it over from 0. Records already confirmed stay confirmed.
                Err(e) if e.kind() == ErrorKind::ResyncRequired && cursor != 0 => {
                    restart(&mut restarts)?;
                    cursor = 0;
                    continue;
                }
                other => other?,
            };
            if let Some(new) = self.log_replaced(&page, report).await? {
                // The log was replaced under this walk: start over on the new one, putting
                // back what the server lost (a re-sync of a log that lost data must not sweep).
                (epoch, reupload, walk) = (new, true, Walk::Reupload(new));
                (cursor, floor) = (0, 0);
                restart(&mut restarts)?;
                continue;
            }
            check_page(cursor, &page)?;
            floor = floor.max(page.gc_floor);
            let more = page.more;
            if !page.envelopes.is_empty() {
                cursor = page.next_cursor;
                self.apply_page(page, Vec::new(), report, walk).await?;
                self.progress(report, pending);
            }
            if !more {
                break;
            }
        }
        if reupload {
            // The application said the server lost data: what it did not serve at all goes up
            // again rather than being swept (a record deleted elsewhere and collected while
            // this device was away comes back: the price of not losing what the server lost).
            self.reupload_unconfirmed(epoch, report).await?;
            // The server lost this device's newest heads too: its own-head rule now starts
            // from the newest one the walk served, or a later legitimate re-sync would find
            // it missing for ever.
            let seen: BTreeMap<DeviceId, u64> =
                decode_or_default(self.store.storage().meta_get(META_SEEN).await?)?;
            let served = seen.get(&self.store.device()).copied().unwrap_or(0);
            self.store
                .storage()
                .commit(Batch {
                    meta: vec![
                        (META_RESYNC.to_owned(), None),
                        (META_REUPLOAD.to_owned(), None),
                        (META_OWN_HEAD.to_owned(), Some(encode(&served)?)),
                    ],
                    ..Batch::default()
                })
                .await?;
            // No head check this round: the heads the server kept describe the state it lost
            // until what goes up now has landed; the next rounds check as usual.
            self.collect_tombstones(floor, report).await?;
            if self.store.storage().outbox_len().await? == 0 {
                // Nothing to push, so no push would carry a head: send one alone, so that the
                // server holds a head that vouches for this device's state again.
                self.push_head().await?;
            }
            return Ok(true);
        }
        if !self.sweep_is_safe(epoch, report).await? {
            // The walk is not what the heads say the space holds: keep every record, push
            // nothing this round, and walk again from the start next round (the re-sync stays
            // underway, and that walk is judged on what it brings alone).
            self.store
                .storage()
                .commit(Batch {
                    meta: vec![
                        (META_CURSOR.to_owned(), Some(encode(&0u64)?)),
                        (META_SEEN.to_owned(), None),
                        (META_HEADS.to_owned(), None),
                    ],
                    ..Batch::default()
                })
                .await?;
            return Ok(false);
        }
        // Sweep: a record the server confirmed before but not in this epoch was deleted while
        // this device was away. Remove it, local edits included: nothing deleted comes back.
        let mut after: Option<RecordId> = None;
        loop {
            let rows = self.store.storage().scan_all(after.as_ref(), 512).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            let mut removes = Vec::new();
            for r in &rows {
                if unconfirmed_by(r, epoch)? {
                    removes.push(r.id);
                }
            }
            if !removes.is_empty() {
                report.discarded += removes.len() as u64;
                let mut w = self.store.writer().await;
                w.commit(Batch {
                    removes,
                    ..Batch::default()
                })
                .await?;
            }
        }
        self.store
            .storage()
            .commit(Batch {
                meta: vec![(META_RESYNC.to_owned(), None)],
                ..Batch::default()
            })
            .await?;
        self.collect_tombstones(floor, report).await?;
        self.check_heads(report).await?;
        Ok(true)
    }

    /// Queues again, as new writes of this device, every record the re-sync walk of `epoch` did
    /// not confirm (the server no longer has it) and that is not already waiting to be pushed.
    async fn reupload_unconfirmed(&self, epoch: u32, report: &mut SyncReport) -> Result<()> {
        let mut after: Option<RecordId> = None;
        loop {
            let rows = self.store.storage().scan_all(after.as_ref(), 512).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            let mut w = self.store.writer().await;
            let mut puts = Vec::new();
            for r in rows {
                if r.pending_seq.is_none() && unconfirmed_by(&r, epoch)? {
                    puts.push(self.requeued(&mut w, r)?);
                }
            }
            if !puts.is_empty() {
                report.reuploaded += puts.len() as u64;
                w.commit(Batch {
                    puts,
                    ..Batch::default()
                })
                .await?;
            }
        }
        Ok(())
    }

    /// `row` sealed again as a new write of this device (same value or tombstone, this
    /// device's entry of the version vector moved to a fresh sequence), waiting to be pushed:
    /// how something the server lost goes back up. A fresh sequence, not the envelope as it
    /// was, because the server takes any sequence at or below the highest it holds from this
    /// device for a retry. The version dominates every version this row has seen, so devices
    /// that hold one of those take it without a conflict. It keeps the time (HLC) of the write
    /// it carries: another device may put back a newer write of the same record, concurrent
    /// with this one, and last-writer-wins must then pick the newer write, not whichever
    /// device happened to put back last
    /// (`transport-mock/tests/restore.rs::a_stale_copy_put_back_…`).
    fn requeued(
        &self,
        w: &mut crate::store::WriterGuard<'_>,
        row: StoredRecord,
    ) -> Result<StoredRecord> {
        let me = self.store.device();
        let mut payload = self.store.open_envelope(&row.id, &row.envelope)?;
        let (seq, _) = w.next_write();
        payload.version.set(me, seq);
        payload.origin = me;
        payload.seq = seq;
        let envelope = self.seal(&row.id, &payload)?;
        let mut sync = RowSync::decode(&row.sync)?.after_local_write(&row.envelope, false);
        sync.synced = true;
        Ok(StoredRecord {
            envelope,
            pending_seq: Some(seq),
            sync: sync.encode(),
            ..row
        })
    }

    /// Before a re-sync's sweep deletes every record the walk did not confirm, checks the walk
    /// against the sealed heads it brought, so that a server cannot make this device delete its
    /// records by leaving them out of a forced re-sync: this device's newest acknowledged head
    /// must have been served (a device's newest head is never collected), no head may show
    /// writes this walk lacks (`peer-view`), and where a head's view is this device's own, its
    /// state digest must equal the digest this store will have once the sweep is done. With no
    /// comparable head (or local writes still to push) the sweep goes ahead unverified, as the
    /// protocol cannot tell a collected deletion from a withheld record then. Findings go to
    /// `report.withheld`; false means the sweep must not run.
    async fn sweep_is_safe(&self, epoch: u32, report: &mut SyncReport) -> Result<bool> {
        let storage = self.store.storage();
        let me = self.store.device();
        let seen: BTreeMap<DeviceId, u64> = decode_or_default(storage.meta_get(META_SEEN).await?)?;
        let own_head = self.meta_u64(META_OWN_HEAD).await?;
        let mut found = Vec::new();
        if own_head > seen.get(&me).copied().unwrap_or(0) {
            found.push(Withheld {
                device: me,
                witness: me,
                reason: "own-head".to_owned(),
            });
        }
        let heads: BTreeMap<DeviceId, StoredHead> =
            decode_or_default(storage.meta_get(META_HEADS).await?)?;
        let (peer_view, comparable) = head::check(me, &seen, own_head, &heads);
        found.extend(peer_view);
        if found.is_empty() && !comparable.is_empty() {
            // Under the write lock, as in `check_heads`.
            let mut w = self.store.writer().await;
            if storage.outbox_len().await? == 0 {
                let mut swept = w.state_digest().await?;
                let mut after: Option<RecordId> = None;
                loop {
                    let rows = storage.scan_all(after.as_ref(), 512).await?;
                    let Some(last) = rows.last() else { break };
                    after = Some(last.id);
                    for r in &rows {
                        if unconfirmed_by(r, epoch)?
                            && let Some(e) = self.store.digest_element(r)?
                        {
                            head::xor_into(&mut swept, &e);
                        }
                    }
                }
                report.digests_compared += comparable.len() as u64;
                found.extend(head::digest_findings(comparable, &swept));
            }
        }
        if found.is_empty() {
            return Ok(true);
        }
        report_withheld(report, found, true);
        Ok(false)
    }

    /// Forgets local tombstones the server has collected (synced, not pending, last synced at
    /// or below the server's floor), so local metadata does not grow without bound.
    async fn collect_tombstones(&self, floor: u64, report: &mut SyncReport) -> Result<()> {
        let done = self.meta_u64(META_GC_FLOOR).await?;
        if floor <= done {
            return Ok(());
        }
        let mut after: Option<RecordId> = None;
        loop {
            let rows = self.store.storage().scan_all(after.as_ref(), 512).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            let mut removes = Vec::new();
            for r in rows.iter().filter(|r| r.deleted && r.pending_seq.is_none()) {
                let sync = RowSync::decode(&r.sync)?;
                if sync.synced
                    && sync.siblings.is_empty()
                    && sync.base.iter().max().is_some_and(|m| *m <= floor)
                {
                    removes.push(r.id);
                }
            }
            if !removes.is_empty() {
                report.tombstones_collected += removes.len() as u64;
                let mut w = self.store.writer().await;
                w.commit(Batch {
                    removes,
                    ..Batch::default()
                })
                .await?;
            }
        }
        let mut w = self.store.writer().await;
        w.commit(Batch {
            meta: vec![(META_GC_FLOOR.to_owned(), Some(encode(&floor)?))],
            ..Batch::default()
        })
        .await
    }

    /// Records with unresolved siblings.
    pub async fn conflicts(&self) -> Result<Vec<ConflictInfo>> {
        let ids = self.conflict_ids().await?;
        let rows = self.store.storage().get_many(&ids).await?;
        let mut out = Vec::new();
        for row in rows.into_iter().flatten() {
            let sync = RowSync::decode(&row.sync)?;
            if sync.siblings.is_empty() {
                continue;
            }
            let local = self.store.open_row(&row)?;
            let siblings = sync
                .siblings
                .iter()
                .map(|s| record_from_payload(self.store.open_envelope(&row.id, s)?))
                .collect::<Result<Vec<_>>>()?;
            out.push(ConflictInfo {
                local,
                siblings,
                since: sync.conflict_since.unwrap_or(0),
            });
        }
        Ok(out)
    }

    /// Resolves a `user-choice` conflict: the chosen value becomes a new local version that has
    /// seen every sibling, so it replaces them everywhere.
    pub async fn resolve(&self, collection: &str, key: &str, choice: Choice) -> Result<()> {
        let id = self.store.record_id(collection, key)?;
        let mut w = self.store.writer().await;
        let row = self
            .store
            .storage()
            .get(&id)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no such record"))?;
        let mut sync = RowSync::decode(&row.sync)?;
        if sync.siblings.is_empty() {
            return Err(Error::new(
                ErrorKind::NotFound,
                "this record has no conflict to resolve",
            ));
        }
        let (local_payload, local) = self.open_version(&id, &row.envelope)?;
        let siblings: Vec<Version> = sync
            .siblings
            .iter()
            .map(|s| self.open_version(&id, s).map(|(_, v)| v))
            .collect::<Result<_>>()?;
        let value = match choice {
            Choice::Local => local.value.clone(),
            Choice::Remote(i) => siblings
                .get(i)
                .ok_or_else(|| Error::invalid("no sibling at that index"))?
                .value
                .clone(),
            Choice::Value(v) => v,
        };
        let mut version = local.version.clone();
        let mut hlc = local.hlc;
        for s in &siblings {
            version.merge(&s.version);
            hlc = hlc.max(s.hlc);
        }
        sync.siblings.clear();
        sync.conflict_since = None;
        let new_row = self.resolved_row(
            &mut w,
            &row,
            sync,
            &local_payload,
            value,
            version,
            hlc,
            true,
        )?;
        let mut conflicts = self.conflict_ids().await?;
        conflicts.retain(|c| *c != id);
        w.commit(Batch {
            puts: vec![new_row],
            meta: vec![(META_CONFLICTS.to_owned(), Some(encode(&conflicts)?))],
            ..Batch::default()
        })
        .await
    }

    /// Applies the fallback strategy to `user-choice` conflicts older than the deadline.
    async fn expire_conflicts(&self, report: &mut SyncReport) -> Result<()> {
        let ids = self.conflict_ids().await?;
        if ids.is_empty() {
            return Ok(());
        }
        let now = self.store.now_millis();
        let deadline = self.config.user_choice_deadline.as_millis() as u64;
        let fallback = (registry::strategy(&self.config.fallback_strategy)?.make)();
        let mut w = self.store.writer().await;
        let rows = self.store.storage().get_many(&ids).await?;
        let mut remaining = Vec::new();
        let mut puts = Vec::new();
        for (id, row) in ids.iter().zip(rows) {
            let Some(row) = row else { continue };
            let mut sync = RowSync::decode(&row.sync)?;
            if sync.siblings.is_empty() {
                continue;
            }
            if sync
                .conflict_since
                .is_none_or(|t| now.saturating_sub(t) < deadline)
            {
                remaining.push(*id);
                continue;
            }
            let (local_payload, mut current) = self.open_version(id, &row.envelope)?;
            for s in std::mem::take(&mut sync.siblings) {
                let (_, sib) = self.open_version(id, &s)?;
                let c = Conflict {
                    collection: &local_payload.collection,
                    key: &local_payload.key,
                    local: &current,
                    remote: &sib,
                    ancestor: None,
                };
                // A fallback that defers again keeps the local value.
                let next = apply_resolution(&c, fallback.resolve(&c)?)
                    .or_else(|| apply_resolution(&c, Resolution::TakeLocal));
                if let Some(next) = next {
                    current = next;
                }
            }
            sync.conflict_since = None;
            let row = self.resolved_row(
                &mut w,
                &row,
                sync,
                &local_payload,
                current.value,
                current.version,
                current.hlc,
                false,
            )?;
            puts.push(row);
            report.conflicts_resolved += 1;
        }
        w.commit(Batch {
            puts,
            meta: vec![(META_CONFLICTS.to_owned(), Some(encode(&remaining)?))],
            ..Batch::default()
        })
        .await
    }

    /// Size of the sync metadata this store keeps: bytes of per-record bookkeeping and the
    /// number of version-vector entries, over every record, the largest of each per record,
    /// and the entries of the per-origin seen map (for reports and tests).
    pub async fn metadata_size(&self) -> Result<MetadataSize> {
        let mut size = MetadataSize::default();
        let seen: BTreeMap<DeviceId, u64> =
            decode_or_default(self.store.storage().meta_get(META_SEEN).await?)?;
        size.seen_entries = seen.len() as u64;
        let mut after: Option<RecordId> = None;
        loop {
            let rows = self.store.storage().scan_all(after.as_ref(), 512).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.id);
            for r in &rows {
                size.records += 1;
                if r.deleted {
                    size.tombstones += 1;
                }
                size.sync_bytes += r.sync.len() as u64;
                let p = self.store.open_envelope(&r.id, &r.envelope)?;
                size.version_entries += p.version.len() as u64;
                size.max_version_entries = size.max_version_entries.max(p.version.len() as u64);
                let sync = RowSync::decode(&r.sync)?;
                size.max_base = size.max_base.max(sync.base.len() as u64);
                size.siblings += sync.siblings.len() as u64;
            }
        }
        Ok(size)
    }
}

/// How much sync metadata a store holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetadataSize {
    /// Rows, tombstones included.
    pub records: u64,
    /// Tombstone rows.
    pub tombstones: u64,
    /// Bytes of per-record sync bookkeeping.
    pub sync_bytes: u64,
    /// Version-vector entries over all records.
    pub version_entries: u64,
    /// Most version-vector entries of one record (bounded by the devices that wrote it).
    pub max_version_entries: u64,
    /// Most superseded server sequences one record remembers (bounded by the devices whose
    /// envelopes of it the server still holds).
    pub max_base: u64,
    /// Sibling versions kept for `user-choice` conflicts.
    pub siblings: u64,
    /// Entries of the per-origin map of the last device sequence seen (one per device).
    pub seen_entries: u64,
}
