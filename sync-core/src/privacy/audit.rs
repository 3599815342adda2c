//! The audit log: every consent decision, grant, revocation and share attempt, in order.
//!
//! Entries are local-only records of the store (collection [`AUDIT_COLLECTION`], key = the
//! sequence number as 20 zero-padded digits), so they are sealed like every record and never
//! enter the sync outbox. The head (the last sequence number) is a record of its own, written in
//! the same atomic batch as each entry, so sequence numbers are dense and strictly increasing:
//! 1, 2, 3, … A crash leaves either the entry and its head, or neither.
//!
//! The user reads the log with [`AuditLog::read`] and exports it as JSON lines with
//! [`AuditLog::write_json_lines`]. Entries hold names (data types, purposes, destinations,
//! grant ids), decisions, sizes and error kinds; never a payload or a key.

use std::fmt;
use std::io::Write;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::consent::DenyReason;
use crate::error::{Error, ErrorKind, Result};
use crate::privacy::consent::{GrantSource, Scope};
use crate::privacy::{PrivacyLock, privacy_lock};
use crate::store::{Store, WallClock, WriteBatch, system_millis};

/// Collection of audit entries (local-only).
pub const AUDIT_COLLECTION: &str = "_hearth.audit";
/// Collection of the audit log's head record (local-only).
pub const AUDIT_HEAD_COLLECTION: &str = "_hearth.audit-head";
const HEAD_KEY: &str = "head";
/// Most entries [`AuditLog::read`] returns in one call.
pub const MAX_READ: usize = 10_000;

/// What happened to a share attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ShareStatus {
    /// Refused before anything was handed to the transport (denied, bad payload, no key).
    NotSent,
    /// Sealed and about to be handed to the transport (written before sending, so no share
    /// leaves unaudited).
    Sending,
    /// The transport accepted it.
    Sent,
    /// The transport failed; the destination may or may not have received it.
    Failed,
}

/// One audited event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// A consent decision.
    Decision {
        /// Data type asked for.
        data_type: String,
        /// Purpose asked for.
        purpose: String,
        /// Destination asked for.
        destination: String,
        /// Whether it was allowed.
        allowed: bool,
        /// The grant that allowed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_id: Option<String>,
        /// Why it was denied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<DenyReason>,
        /// Whether the user was asked through the prompt hook.
        prompted: bool,
    },
    /// The user granted consent.
    Grant {
        /// The new grant's id.
        grant_id: String,
        /// Data type.
        data_type: String,
        /// Purpose.
        purpose: String,
        /// Destination.
        destination: String,
        /// Scope.
        scope: Scope,
        /// Expiry, milliseconds since the Unix epoch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at: Option<u64>,
        /// How it was given.
        source: GrantSource,
    },
    /// The user revoked a grant.
    Revoke {
        /// The revoked grant.
        grant_id: String,
        /// Data type.
        data_type: String,
        /// Purpose.
        purpose: String,
        /// Destination.
        destination: String,
    },
    /// A share attempt and what became of it.
    Share {
        /// Data type.
        data_type: String,
        /// Purpose.
        purpose: String,
        /// Destination.
        destination: String,
        /// The grant it went out under, once consent allowed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant_id: Option<String>,
        /// What happened.
        status: ShareStatus,
        /// Bytes handed to the transport.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sealed_len: Option<usize>,
        /// Why it was not sent, as an error kind (`consent_denied`, `invalid_input`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

/// An audit entry: a sequence number, a time and an event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log: 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch (the pipeline's clock).
    pub at: u64,
    /// What.
    #[serde(flatten)]
    pub event: AuditEvent,
}

impl AuditEntry {
    /// The entry as one JSON object, with `time` (RFC 3339, UTC) added beside `at`.
    pub fn to_json(&self) -> Result<Value> {
        let mut v = serde_json::to_value(self)
            .map_err(|e| Error::internal("audit entry encoding").with_source(e))?;
        if let (Some(obj), Some(time)) = (v.as_object_mut(), rfc3339_millis(self.at)) {
            obj.insert("time".to_owned(), Value::String(time));
        }
        Ok(v)
    }
}

fn rfc3339_millis(ms: u64) -> Option<String> {
    let nanos = i128::from(ms).checked_mul(1_000_000)?;
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?;
    t.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
}

fn entry_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// The encrypted, local, append-only audit log of a store's privacy pipeline. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    store: Store,
    clock: WallClock,
    lock: PrivacyLock,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// The audit log of `store`, timed by the system clock.
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
            clock: std::sync::Arc::new(system_millis),
            lock: privacy_lock(store),
        }
    }

    /// Times entries with `clock` (milliseconds since the Unix epoch) instead.
    #[must_use]
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn lock(&self) -> &PrivacyLock {
        &self.lock
    }

    pub(crate) fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Appends `event`.
    pub async fn append(&self, event: AuditEvent) -> Result<AuditEntry> {
        let _guard = self.lock.lock().await;
        let mut entries = self.append_locked(vec![event], Vec::new()).await?;
        entries
            .pop()
            .ok_or_else(|| Error::internal("audit append wrote nothing"))
    }

    /// Appends `events` and writes `extra` local-only records in the same atomic batch. The
    /// caller holds [`Self::lock`].
    pub(crate) async fn append_locked(
        &self,
        events: Vec<AuditEvent>,
        extra: Vec<(&'static str, String, Value)>,
    ) -> Result<Vec<AuditEntry>> {
        let mut seq = self.last_seq().await?;
        let at = self.now();
        let mut batch = WriteBatch::new().local_only();
        for (collection, key, value) in &extra {
            batch.put(*collection, key.as_str(), value)?;
        }
        let mut entries = Vec::with_capacity(events.len());
        for event in events {
            seq = seq
                .checked_add(1)
                .ok_or_else(|| Error::internal("audit sequence overflow"))?;
            let entry = AuditEntry { seq, at, event };
            batch.put(AUDIT_COLLECTION, entry_key(seq), &entry)?;
            entries.push(entry);
        }
        batch.put(AUDIT_HEAD_COLLECTION, HEAD_KEY, &Head { seq })?;
        self.store.write(batch).await?;
        Ok(entries)
    }

    /// The sequence number of the last entry (0 when the log is empty).
    pub async fn last_seq(&self) -> Result<u64> {
        match self.store.get(AUDIT_HEAD_COLLECTION, HEAD_KEY).await? {
            None => Ok(0),
            Some(v) => serde_json::from_value::<Head>(v)
                .map(|h| h.seq)
                .map_err(|e| Error::corrupt("audit log head is malformed").with_source(e)),
        }
    }

    /// Up to `limit` (at most [`MAX_READ`]) entries after sequence number `after`, in order.
    /// Start with `after = 0`; continue with the last `seq` returned.
    pub async fn read(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>> {
        let last = self.last_seq().await?;
        let limit = limit.min(MAX_READ) as u64;
        let end = last.min(after.saturating_add(limit));
        let mut out = Vec::new();
        let mut seq = after;
        while seq < end {
            seq += 1;
            let value = self
                .store
                .get(AUDIT_COLLECTION, &entry_key(seq))
                .await?
                .ok_or_else(|| Error::corrupt("the audit log has a gap"))?;
            let entry: AuditEntry = serde_json::from_value(value)
                .map_err(|e| Error::corrupt("an audit entry is malformed").with_source(e))?;
            if entry.seq != seq {
                return Err(Error::corrupt("an audit entry is out of place"));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Writes the whole log to `out` as JSON lines (one [`AuditEntry::to_json`] object per
    /// line, in order). Returns the number of entries written.
    pub async fn write_json_lines(&self, mut out: impl Write) -> Result<u64> {
        let mut after = 0;
        let mut written = 0;
        loop {
            let page = self.read(after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for entry in &page {
                let line = serde_json::to_string(&entry.to_json()?)
                    .map_err(|e| Error::internal("audit entry encoding").with_source(e))?;
                writeln!(out, "{line}").map_err(|e| {
                    Error::new(ErrorKind::Io, "cannot write the audit export").with_source(e)
                })?;
                written += 1;
            }
        }
        out.flush().map_err(|e| {
            Error::new(ErrorKind::Io, "cannot write the audit export").with_source(e)
        })?;
        Ok(written)
    }

    /// The whole log as JSON lines, in memory.
    pub async fn export_json_lines(&self) -> Result<String> {
        let mut buf = Vec::new();
        self.write_json_lines(&mut buf).await?;
        String::from_utf8(buf)
            .map_err(|e| Error::internal("audit export is not UTF-8").with_source(e))
    }
}
