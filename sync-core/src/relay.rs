//! `MemoryRelay`: the reference implementation of the sync server's semantics, in memory.
//!
//! The mock transport serves from it and the real server (issue 5) must behave the same:
//!
//! - Per space, an ordered log of envelopes; each gets the next server sequence number, which
//!   is the pull cursor.
//! - The first device to push records the space's key fingerprint; any request carrying another
//!   fingerprint is refused with [`ErrorKind::WrongKey`] before anything is stored.
//! - Push is idempotent by (device, seq): an envelope whose sequence is not above the highest
//!   the device already pushed is not stored again; the answer names the server sequence it is
//!   stored under (0 if a newer version has since replaced it).
//! - Compaction: an envelope names the server sequences of the same record it replaces
//!   (`supersedes`); those are dropped, so a returning device downloads current state, not
//!   history. Concurrent versions (not named) are kept, and so is a device's own older
//!   envelope it does not name: the relay drops only what is named, and a record's earlier
//!   envelope in the same push. A device that may not know the server sequence of an envelope
//!   it pushed (the answer was lost, or it crashed before processing it) asks first: a push
//!   with `settle` answers which of the device's envelopes with a sequence at or above it the
//!   relay holds, before storing anything of that push (at most `push_limit` of them, in
//!   sequence order), so the device can name them.
//! - Tombstones are kept until every active device has pulled past them (the cursor a device
//!   pulls with says what it has applied), where a device silent longer than the horizon
//!   (default 90 days) no longer counts. A device whose cursor is older than a dropped
//!   tombstone gets [`ErrorKind::ResyncRequired`] and must re-sync from cursor 0. A device
//!   walking up from 0 (a first sync or a re-sync) presents, page after page, exactly the
//!   cursor it was last handed; that continuation is served even below the floor until the
//!   walk reaches the end of the log.
//! - A push is refused the same way ([`ErrorKind::ResyncRequired`], nothing stored) when the
//!   device's cursor is below the floor and it is not walking: its edits were made on a state
//!   that misses deletions the server no longer holds, so they could bring deleted records
//!   back. A device's cursor is the highest it pulled with, raised to the floor on every pull
//!   the relay serves it (tombstones at or below the floor are gone, so that claims nothing
//!   about them); a device the relay has never served has cursor 0. A device that re-synced is
//!   therefore never refused, nor is any device while the floor is 0.
//! - A page's `next_cursor` is the last sequence looked at (returned, or skipped as the
//!   device's own) while more remain; on the last page it is the log's last sequence number,
//!   so a device that reached the end is never below the floor.
//! - Every page names the space's log id ([`LogId`]): the same on every page until the
//!   operator declares the server's data restored from a backup ([`MemoryRelay::mark_restored`];
//!   `hearth-server mark-restored` for the real server), which gives every space a new one.
//!   The sequence numbers of a restored log name other envelopes than before, so a device that
//!   sees a new log id walks the log again from 0 and puts back what the server lost.
//!
//! [`Relay`] is this behaviour as a trait: `MemoryRelay` implements it, so do the real server's
//! stores, and `testkit::relay_suite` checks every implementation against the rules above.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{DeviceId, LogId, RecordId, SpaceId};
use crate::store::{WallClock, system_millis};
use crate::transport::{
    HeldEnvelope, PullPage, PullRequest, PushRequest, PushResponse, RemoteEnvelope, SpaceRef,
};

/// Limits and timing of a relay.
#[derive(Clone, Copy, Debug)]
pub struct RelayConfig {
    /// Most envelopes in one pull page.
    pub page_limit: usize,
    /// Most envelope bytes in one pull page (a page always holds at least one envelope).
    pub page_bytes: usize,
    /// Most envelopes in one push.
    pub push_limit: usize,
    /// Largest envelope accepted.
    pub max_envelope: usize,
    /// A device silent longer than this no longer holds back tombstone collection.
    pub horizon_millis: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            page_limit: 4000,
            page_bytes: 4 * 1024 * 1024,
            push_limit: 4000,
            max_envelope: 17 * 1024 * 1024,
            horizon_millis: 90 * 24 * 3600 * 1000,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    record: RecordId,
    device: DeviceId,
    seq: u64,
    tombstone: bool,
    envelope: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
struct Space {
    fingerprint: Option<[u8; 32]>,
    next_seq: u64,
    log: BTreeMap<u64, Entry>,
    tombstones: BTreeSet<u64>,
    /// Where each device's envelopes are, by (device, device sequence): in order, so a settle
    /// request reads a range.
    stored: BTreeMap<(DeviceId, u64), u64>,
    max_pushed: HashMap<DeviceId, u64>,
    cursors: HashMap<DeviceId, (u64, u64)>,
    /// Devices walking up from cursor 0 (a first sync or a full re-sync), with the cursor each
    /// was last handed: the walk continues with exactly that cursor, even below the floor.
    walking: HashMap<DeviceId, u64>,
    floor: u64,
    key_backup: Option<Vec<u8>>,
    /// The log's identity ([`LogId`]): replaced by [`MemoryRelay::mark_restored`].
    log_id: LogId,
}

/// What [`MemoryRelay::backup`] copied.
#[derive(Clone)]
pub struct RelayBackup(HashMap<SpaceId, Space>);

impl std::fmt::Debug for RelayBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBackup")
            .field("spaces", &self.0.len())
            .finish()
    }
}

/// One stored entry as the server sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryView {
    /// Server sequence.
    pub server_seq: u64,
    /// Blind record id.
    pub record: RecordId,
    /// Pushing device.
    pub device: DeviceId,
    /// Tombstone flag.
    pub tombstone: bool,
    /// Envelope size in bytes (padded).
    pub len: usize,
}

/// Counters a test or benchmark can read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Envelopes currently stored, all spaces.
    pub envelopes: usize,
    /// Envelope bytes currently stored.
    pub bytes: usize,
    /// Tombstones currently stored.
    pub tombstones: usize,
}

/// The relay semantics of the module docs, as an object-safe trait: implemented by
/// [`MemoryRelay`] and by every store of the real sync server, and checked by the relay
/// conformance suite (`testkit::relay_suite`).
#[async_trait]
pub trait Relay: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for messages.
    fn name(&self) -> &'static str;

    /// Stores a push: fingerprint check, idempotent by (device, seq), compaction.
    async fn push(&self, request: &PushRequest) -> Result<PushResponse>;

    /// One page after the request's cursor, with the cursor bookkeeping of the module docs.
    async fn pull(&self, request: &PullRequest) -> Result<PullPage>;

    /// The space's key backup.
    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>>;

    /// Stores the space's key backup.
    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()>;

    /// What the relay holds for one space.
    async fn space_stats(&self, space: SpaceId) -> Result<RelayStats>;
}

fn _relay_object_safe(_: &dyn Relay) {}

/// Why a sync server refused a request: the space was retired after a key rotation (another
/// device registered its successor), so the device asking holds a stale key and must re-join
/// the account with the current passphrase. The source of the [`ErrorKind::WrongKey`] error
/// the server's store and the HTTP transport return then; find it with [`SpaceRetired::of`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceRetired {
    /// The space that replaced it, when one was named.
    pub successor: Option<SpaceId>,
}

impl std::fmt::Display for SpaceRetired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the space was retired after a key rotation")
    }
}

impl std::error::Error for SpaceRetired {}

impl SpaceRetired {
    /// The error a retired space answers with.
    pub fn error(self) -> Error {
        Error::new(
            ErrorKind::WrongKey,
            "the sync server retired this space after a key rotation on another device: this \
             device holds the old key; re-join the account with the current passphrase",
        )
        .with_source(self)
    }

    /// The [`SpaceRetired`] behind an error, if that is why it failed.
    pub fn of(e: &Error) -> Option<SpaceRetired> {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(r) = c.downcast_ref::<SpaceRetired>() {
                return Some(*r);
            }
            cause = c.source();
        }
        None
    }
}

/// The error of a push from a device whose cursor is below the tombstone floor.
pub fn stale_push() -> Error {
    Error::new(
        ErrorKind::ResyncRequired,
        "this device was away longer than the server keeps deletions: it must re-sync before it pushes",
    )
}

/// The error of a pull whose cursor is past the end of the space's log: the server does not
/// hold the history the device's cursor refers to (it was restored from an older backup of its
/// database, or the cursor is another server's). The device must walk the log again from 0;
/// what it holds that the server lost goes back up only when the application says so
/// (`SyncEngine::reupload_to_server`).
pub fn cursor_ahead() -> Error {
    Error::new(
        ErrorKind::ResyncRequired,
        "the cursor is ahead of the server's log (the server lost history, or this is another server): re-sync from 0",
    )
}

/// The in-memory relay.
#[derive(Clone)]
pub struct MemoryRelay {
    spaces: Arc<Mutex<HashMap<SpaceId, Space>>>,
    config: RelayConfig,
    clock: WallClock,
}

impl std::fmt::Debug for MemoryRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRelay")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryRelay {
    fn default() -> Self {
        Self::new(RelayConfig::default())
    }
}

impl MemoryRelay {
    /// A relay with `config` and the system clock.
    pub fn new(config: RelayConfig) -> Self {
        Self {
            spaces: Arc::default(),
            config,
            clock: Arc::new(system_millis),
        }
    }

    /// Replaces the clock (simulations move time forward by days).
    #[must_use]
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// The relay's limits.
    pub fn config(&self) -> RelayConfig {
        self.config
    }

    /// A copy of everything the relay holds now, for [`Self::restore`]: what a backup of a
    /// server's database is, for tests of a server that loses data.
    pub fn backup(&self) -> Result<RelayBackup> {
        Ok(RelayBackup(self.lock()?.clone()))
    }

    /// Replaces everything the relay holds with `backup`: a server restored from an older
    /// backup of its database (what it stored since is gone).
    pub fn restore(&self, backup: &RelayBackup) -> Result<()> {
        *self.lock()? = backup.0.clone();
        Ok(())
    }

    /// Declares the relay's data restored from a backup, as an operator does after
    /// [`Self::restore`]: every space gets a new [`LogId`], so each device walks the log again
    /// at its next pull and puts back what the relay lost. Deterministic (each log id goes up by
    /// one), for simulations.
    pub fn mark_restored(&self) -> Result<()> {
        for space in self.lock()?.values_mut() {
            let next = u128::from_be_bytes(space.log_id.0).wrapping_add(1);
            space.log_id = LogId(next.to_be_bytes());
        }
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, HashMap<SpaceId, Space>>> {
        self.spaces
            .lock()
            .map_err(|_| Error::internal("relay lock poisoned"))
    }

    fn check_key(space: &mut Space, from: &SpaceRef, claim: bool) -> Result<()> {
        match space.fingerprint {
            Some(f) if f != from.fingerprint => Err(Error::new(
                ErrorKind::WrongKey,
                "this device holds a different key than the space: check the passphrase",
            )),
            Some(_) => Ok(()),
            None => {
                if claim {
                    space.fingerprint = Some(from.fingerprint);
                }
                Ok(())
            }
        }
    }

    /// Records that `device` joined `space` (the real server's device registration at join):
    /// from now on tombstones are kept until it has pulled past them, or until it has been
    /// silent longer than the horizon, exactly like a device that has pulled before. Without
    /// it, a device that joined and then wrote offline would be unknown to collection until
    /// its first contact, and a tombstone collected meanwhile could no longer win against its
    /// concurrent write. Registering a known device again only refreshes its last-seen time.
    pub fn register_device(&self, space: SpaceId, device: DeviceId) -> Result<()> {
        let now = (self.clock)();
        let mut spaces = self.lock()?;
        let space = spaces.entry(space).or_default();
        Self::touch(space, device, None, now);
        Ok(())
    }

    /// Stores a push. See the module docs for the rules.
    pub fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        if request.envelopes.len() > self.config.push_limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("a push holds at most {} envelopes", self.config.push_limit),
            ));
        }
        let mut last = 0;
        for e in &request.envelopes {
            if e.seq <= last {
                return Err(Error::invalid("pushed sequences must increase"));
            }
            last = e.seq;
            if e.envelope.len() > self.config.max_envelope {
                return Err(Error::new(ErrorKind::TooLarge, "envelope too large"));
            }
            if e.supersedes.len() > 1024 {
                return Err(Error::invalid("an envelope supersedes at most 1024 others"));
            }
        }
        let now = (self.clock)();
        let mut spaces = self.lock()?;
        let space = spaces.entry(request.from.space).or_default();
        Self::check_key(space, &request.from, true)?;
        let device = request.from.device;
        let cursor = space.cursors.get(&device).map_or(0, |c| c.0);
        if cursor < space.floor && !space.walking.contains_key(&device) {
            return Err(stale_push());
        }
        let held = match request.settle {
            Some(from) => space
                .stored
                .range((device, from)..=(device, u64::MAX))
                .filter_map(|(&(_, seq), &server_seq)| {
                    let entry = space.log.get(&server_seq)?;
                    Some(HeldEnvelope {
                        seq,
                        server_seq,
                        record: entry.record,
                    })
                })
                .take(self.config.push_limit)
                .collect(),
            None => Vec::new(),
        };
        let mut assigned = Vec::with_capacity(request.envelopes.len());
        // Records this push stored, so a record pushed twice keeps only the later.
        let mut in_push: HashMap<RecordId, u64> = HashMap::new();
        for e in &request.envelopes {
            let max = space.max_pushed.get(&device).copied().unwrap_or(0);
            if e.seq <= max {
                let s = space.stored.get(&(device, e.seq)).copied().unwrap_or(0);
                assigned.push((e.seq, s));
                continue;
            }
            // Only what is named goes: a device's own older envelope it does not name stays
            // (the device settles first when it may not know one; see the module docs).
            let earlier = in_push.get(&e.record).copied();
            for s in e.supersedes.iter().chain(earlier.as_ref()) {
                if space.log.get(s).is_some_and(|old| old.record == e.record)
                    && let Some(old) = space.log.remove(s)
                {
                    space.tombstones.remove(s);
                    space.stored.remove(&(old.device, old.seq));
                }
            }
            space.next_seq += 1;
            let server_seq = space.next_seq;
            space.log.insert(
                server_seq,
                Entry {
                    record: e.record,
                    device,
                    seq: e.seq,
                    tombstone: e.tombstone,
                    envelope: e.envelope.clone(),
                },
            );
            if e.tombstone {
                space.tombstones.insert(server_seq);
            }
            space.stored.insert((device, e.seq), server_seq);
            in_push.insert(e.record, server_seq);
            space.max_pushed.insert(device, e.seq);
            assigned.push((e.seq, server_seq));
        }
        Self::touch(space, device, None, now);
        Self::collect(space, now, self.config.horizon_millis);
        Ok(PushResponse { assigned, held })
    }

    fn touch(space: &mut Space, device: DeviceId, cursor: Option<u64>, now: u64) {
        let e = space.cursors.entry(device).or_insert((0, now));
        if let Some(c) = cursor {
            e.0 = e.0.max(c);
        }
        e.1 = now;
    }

    /// Drops tombstones every active device has pulled past.
    fn collect(space: &mut Space, now: u64, horizon: u64) {
        let active_min = space
            .cursors
            .values()
            .filter(|(_, seen)| now.saturating_sub(*seen) <= horizon)
            .map(|(c, _)| *c)
            .min()
            .unwrap_or(u64::MAX);
        while let Some(&s) = space.tombstones.first() {
            if s > active_min {
                break;
            }
            space.tombstones.pop_first();
            if let Some(old) = space.log.remove(&s) {
                space.stored.remove(&(old.device, old.seq));
            }
            space.floor = space.floor.max(s);
        }
    }

    /// One page after `cursor`.
    pub fn pull(&self, request: &PullRequest) -> Result<PullPage> {
        let (from, cursor) = (&request.from, request.cursor);
        let now = (self.clock)();
        let mut spaces = self.lock()?;
        let space = spaces.entry(from.space).or_default();
        Self::check_key(space, from, false)?;
        if cursor > space.next_seq {
            return Err(cursor_ahead());
        }
        let continuing = space.walking.get(&from.device) == Some(&cursor);
        if cursor > 0 && cursor < space.floor && !continuing {
            return Err(Error::new(
                ErrorKind::ResyncRequired,
                "this device was away longer than the server keeps deletions; a full re-sync is needed",
            ));
        }
        Self::touch(space, from.device, Some(cursor), now);
        Self::collect(space, now, self.config.horizon_millis);
        // Served: the device is not behind the floor (see the module docs).
        let floor = space.floor;
        if let Some(c) = space.cursors.get_mut(&from.device) {
            c.0 = c.0.max(floor);
        }
        let limit = request.limit.clamp(1, self.config.page_limit);
        let mut envelopes = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        let mut scanned = cursor;
        for (s, e) in space.log.range(cursor + 1..) {
            if !request.include_own && e.device == from.device {
                scanned = *s;
                continue;
            }
            if envelopes.len() == limit
                || (!envelopes.is_empty() && bytes + e.envelope.len() > self.config.page_bytes)
            {
                more = true;
                break;
            }
            bytes += e.envelope.len();
            scanned = *s;
            envelopes.push(RemoteEnvelope {
                server_seq: *s,
                record: e.record,
                device: e.device,
                seq: e.seq,
                tombstone: e.tombstone,
                envelope: e.envelope.clone(),
            });
        }
        // At the end of the log the device has accounted for everything up to the last
        // sequence number handed out: entries after `scanned` were dropped (compacted or
        // collected). Answering `scanned` there would leave a device that walked the whole log
        // below the floor, told to re-sync again on its next pull, forever.
        let next_cursor = if more { scanned } else { space.next_seq };
        if more && (cursor == 0 || continuing) {
            space.walking.insert(from.device, next_cursor);
        } else {
            space.walking.remove(&from.device);
        }
        Ok(PullPage {
            envelopes,
            next_cursor,
            more,
            gc_floor: space.floor,
            log_id: space.log_id,
        })
    }

    /// The space's key backup.
    pub fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()?.get(&space).and_then(|s| s.key_backup.clone()))
    }

    /// Stores the space's key backup.
    pub fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        self.lock()?.entry(space).or_default().key_backup = Some(blob);
        Ok(())
    }

    /// What the relay holds for `space`, as the server sees it: sequence, blind record id,
    /// device, tombstone flag and envelope size per entry (for demos and tests).
    pub fn entries(&self, space: SpaceId) -> Result<Vec<EntryView>> {
        let spaces = self.lock()?;
        Ok(spaces
            .get(&space)
            .map(|s| {
                s.log
                    .iter()
                    .map(|(seq, e)| EntryView {
                        server_seq: *seq,
                        record: e.record,
                        device: e.device,
                        tombstone: e.tombstone,
                        len: e.envelope.len(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// What the relay holds now.
    pub fn stats(&self) -> Result<RelayStats> {
        let spaces = self.lock()?;
        let mut st = RelayStats::default();
        for s in spaces.values() {
            st.envelopes += s.log.len();
            st.bytes += s.log.values().map(|e| e.envelope.len()).sum::<usize>();
            st.tombstones += s.tombstones.len();
        }
        Ok(st)
    }
}

#[async_trait]
impl Relay for MemoryRelay {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn push(&self, request: &PushRequest) -> Result<PushResponse> {
        MemoryRelay::push(self, request)
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullPage> {
        MemoryRelay::pull(self, request)
    }

    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        MemoryRelay::get_key_backup(self, space)
    }

    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        MemoryRelay::put_key_backup(self, space, blob)
    }

    async fn space_stats(&self, space: SpaceId) -> Result<RelayStats> {
        let spaces = self.lock()?;
        let mut st = RelayStats::default();
        if let Some(s) = spaces.get(&space) {
            st.envelopes = s.log.len();
            st.bytes = s.log.values().map(|e| e.envelope.len()).sum::<usize>();
            st.tombstones = s.tombstones.len();
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_relay_passes_the_relay_conformance_suite() {
        crate::testkit::relay_suite(|config, clock| async move {
            Ok(Arc::new(MemoryRelay::new(config).with_clock(clock)) as Arc<dyn Relay>)
        })
        .await;
    }
}
