//! The data model: device ids, hybrid logical clocks, version vectors and records.
//!
//! Wall-clock time is never trusted for ordering. Causality between versions of a record is
//! decided by [`VersionVector`]s (exact for any number of devices); the [`Hlc`] only orders
//! versions that are concurrent, for strategies such as last-writer-wins.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length of the id in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Parses the id from exactly [`Self::LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self> {
                let arr: [u8; $len] = bytes.try_into().map_err(|_| {
                    Error::corrupt(concat!(stringify!($name), " has the wrong length"))
                })?;
                Ok(Self(arr))
            }

            /// Lower-case hex of the id.
            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity($len * 2);
                for b in self.0 {
                    use std::fmt::Write;
                    let _ = write!(s, "{b:02x}");
                }
                s
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl fmt::Display for $name {
            /// The first 8 bytes in hex: enough to tell ids apart in logs.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in &self.0[..8] {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    };
}

opaque_id!(
    /// A device's random identity, made once when its store is created.
    DeviceId,
    16
);
opaque_id!(
    /// A sync space: the set of stores (one per device) that share a root key and sync together.
    SpaceId,
    16
);
opaque_id!(
    /// The blind id of a record: a keyed hash of its collection and key under a key the server
    /// never holds. Storage and server see only this, never the names.
    RecordId,
    32
);
opaque_id!(
    /// The blind id of a collection, used by storage to scan one collection.
    CollectionId,
    32
);
opaque_id!(
    /// The identity of a space's log on its server. The server picks it at random when the
    /// space is registered and picks a new one when its database is declared restored from a
    /// backup: the log's sequence numbers then mean other envelopes, so a device whose cursor
    /// was taken under another log id walks the whole log again and puts back what the server
    /// lost (`docs/protocol.md`). Not secret.
    LogId,
    16
);

impl Default for LogId {
    /// All zeros: a placeholder (servers give every space a random log id).
    fn default() -> Self {
        Self([0; 16])
    }
}

/// A hybrid logical clock timestamp: physical milliseconds, a logical counter, and the device
/// that made it. Totally ordered; the device id breaks ties, so two devices never produce equal
/// timestamps.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Debug)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the clock understood it (may run ahead of wall time).
    pub millis: u64,
    /// Logical counter within one millisecond.
    pub counter: u32,
    /// The device that issued the timestamp.
    pub device: DeviceId,
}

impl Hlc {
    /// The latest physical time a remote timestamp may carry: the last millisecond of year
    /// 9999. The engine rejects envelopes beyond it (an authentic but broken or hostile peer),
    /// so no clock is pushed to the end of its range.
    pub const MAX_MILLIS: u64 = 253_402_300_799_999;
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.millis, self.counter, self.device).cmp(&(other.millis, other.counter, other.device))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The state of a device's hybrid logical clock. Persisted by the store with every write, so
/// timestamps keep increasing across restarts even if the wall clock goes back.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct HlcClock {
    device: DeviceId,
    millis: u64,
    counter: u32,
}

impl HlcClock {
    /// A clock for `device` that has issued nothing yet.
    pub fn new(device: DeviceId) -> Self {
        Self {
            device,
            millis: 0,
            counter: 0,
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Hlc {
        Hlc {
            millis: self.millis,
            counter: self.counter,
            device: self.device,
        }
    }

    /// Issues a timestamp greater than every timestamp issued or observed so far.
    /// `now_millis` is the wall clock; it is used only when it is ahead of the clock.
    pub fn tick(&mut self, now_millis: u64) -> Hlc {
        if now_millis > self.millis {
            self.millis = now_millis;
            self.counter = 0;
        } else {
            self.bump();
        }
        self.last()
    }

    /// Folds in a timestamp seen from another device, so later ticks order after it.
    pub fn observe(&mut self, remote: &Hlc, now_millis: u64) {
        let max = self.millis.max(remote.millis).max(now_millis);
        if max == self.millis && max == remote.millis {
            self.counter = self.counter.max(remote.counter);
        } else if max == remote.millis {
            self.millis = remote.millis;
            self.counter = remote.counter;
        } else if max != self.millis {
            self.millis = max;
            self.counter = 0;
        }
    }

    /// One logical step. Saturates at the end of the range (`u64::MAX` ms, `u32::MAX`) instead
    /// of overflowing: a clock cannot be made to panic or wrap to the past by a peer's
    /// timestamp, whatever it carries. (The engine refuses remote timestamps past
    /// [`Hlc::MAX_MILLIS`], so a clock never gets there.)
    fn bump(&mut self) {
        match self.counter.checked_add(1) {
            Some(c) => self.counter = c,
            None => match self.millis.checked_add(1) {
                Some(m) => {
                    self.millis = m;
                    self.counter = 0;
                }
                None => self.counter = u32::MAX,
            },
        }
    }
}

/// How two versions of a record relate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Causality {
    /// The same version.
    Equal,
    /// `self` happened before `other`: `other` has seen everything `self` has, and more.
    Before,
    /// `self` happened after `other`.
    After,
    /// Neither has seen the other: a conflict.
    Concurrent,
}

/// A version vector: for each device, how many of its writes this version has seen.
#[derive(Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct VersionVector(BTreeMap<DeviceId, u64>);

impl VersionVector {
    /// The empty vector: a version that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `device` (0 if absent).
    pub fn get(&self, device: &DeviceId) -> u64 {
        self.0.get(device).copied().unwrap_or(0)
    }

    /// Sets the counter for `device`. A zero removes the entry.
    pub fn set(&mut self, device: DeviceId, counter: u64) {
        if counter == 0 {
            self.0.remove(&device);
        } else {
            self.0.insert(device, counter);
        }
    }

    /// Records one more write by `device`, returning the new counter.
    pub fn increment(&mut self, device: DeviceId) -> u64 {
        let c = self.0.entry(device).or_insert(0);
        *c += 1;
        *c
    }

    /// Pointwise maximum: the least version that has seen both.
    pub fn merge(&mut self, other: &VersionVector) {
        for (d, c) in &other.0 {
            let e = self.0.entry(*d).or_insert(0);
            *e = (*e).max(*c);
        }
    }

    /// Compares two versions exactly.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut less = false;
        let mut greater = false;
        let devices = self.0.keys().chain(other.0.keys());
        for d in devices {
            let a = self.get(d);
            let b = other.get(d);
            match a.cmp(&b) {
                Ordering::Less => less = true,
                Ordering::Greater => greater = true,
                Ordering::Equal => {}
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }

    /// True when `self` has seen everything `other` has (equal or after).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::Equal | Causality::After)
    }

    /// The devices and counters, ordered by device id.
    pub fn iter(&self) -> impl Iterator<Item = (&DeviceId, &u64)> {
        self.0.iter()
    }

    /// Number of devices with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty vector.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(d, c)| (d.to_string(), c)))
            .finish()
    }
}

impl FromIterator<(DeviceId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (DeviceId, u64)>>(iter: T) -> Self {
        let mut v = VersionVector::new();
        for (d, c) in iter {
            v.set(d, c);
        }
        v
    }
}

/// One version of a record, as the application sees it after decryption.
#[derive(Clone, PartialEq)]
pub struct Record {
    /// The collection the record belongs to.
    pub collection: String,
    /// The record's key within its collection.
    pub key: String,
    /// The value; `None` for a tombstone (a deleted record).
    pub value: Option<serde_json::Value>,
    /// The version vector of this version.
    pub version: VersionVector,
    /// The hybrid logical clock timestamp of the write that made this version.
    pub hlc: Hlc,
}

impl Record {
    /// True when the record is a tombstone.
    pub fn is_deleted(&self) -> bool {
        self.value.is_none()
    }
}

impl fmt::Debug for Record {
    /// Redacted: record contents are user data and never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("collection", &"<redacted>")
            .field("key", &"<redacted>")
            .field("deleted", &self.is_deleted())
            .field("version", &self.version)
            .field("hlc", &self.hlc)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dev(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    #[test]
    fn a_peer_timestamp_at_the_end_of_the_range_saturates_the_clock_without_overflow() {
        let mut clock = HlcClock::new(dev(1));
        let end = Hlc {
            millis: u64::MAX,
            counter: u32::MAX - 1,
            device: dev(2),
        };
        clock.observe(&end, 5);
        let a = clock.tick(5);
        assert_eq!((a.millis, a.counter), (u64::MAX, u32::MAX));
        let b = clock.tick(u64::MAX);
        assert_eq!((b.millis, b.counter), (u64::MAX, u32::MAX), "saturates");
        assert!(b >= a && a > end);
        // One step short of the end still carries into the next millisecond.
        let mut clock = HlcClock::new(dev(1));
        clock.observe(
            &Hlc {
                millis: u64::MAX - 1,
                counter: u32::MAX,
                device: dev(2),
            },
            5,
        );
        let c = clock.tick(5);
        assert_eq!((c.millis, c.counter), (u64::MAX, 0));
    }

    #[test]
    fn compare_detects_every_relation() {
        let a: VersionVector = [(dev(1), 2), (dev(2), 1)].into_iter().collect();
        let b: VersionVector = [(dev(1), 2), (dev(2), 2)].into_iter().collect();
        let c: VersionVector = [(dev(1), 3), (dev(2), 1)].into_iter().collect();
        assert_eq!(a.compare(&a), Causality::Equal);
        assert_eq!(a.compare(&b), Causality::Before);
        assert_eq!(b.compare(&a), Causality::After);
        assert_eq!(b.compare(&c), Causality::Concurrent);
        assert_eq!(VersionVector::new().compare(&a), Causality::Before);
    }

    #[test]
    fn merge_then_increment_dominates_both_parents() {
        let b: VersionVector = [(dev(1), 2), (dev(2), 2)].into_iter().collect();
        let c: VersionVector = [(dev(1), 3), (dev(2), 1)].into_iter().collect();
        let mut m = b.clone();
        m.merge(&c);
        m.increment(dev(3));
        assert_eq!(m.compare(&b), Causality::After);
        assert_eq!(m.compare(&c), Causality::After);
    }

    #[test]
    fn hlc_is_monotonic_when_the_wall_clock_goes_back() {
        let mut clock = HlcClock::new(dev(1));
        let a = clock.tick(1_000);
        let b = clock.tick(500);
        let c = clock.tick(500);
        assert!(a < b && b < c);
        let remote = Hlc {
            millis: 10_000,
            counter: 7,
            device: dev(2),
        };
        clock.observe(&remote, 600);
        let d = clock.tick(600);
        assert!(d > remote);
    }

    proptest! {
        #[test]
        fn compare_is_antisymmetric(a in proptest::collection::btree_map(0u8..4, 1u64..5, 0..4),
                                    b in proptest::collection::btree_map(0u8..4, 1u64..5, 0..4)) {
            let a: VersionVector = a.into_iter().map(|(d, c)| (dev(d), c)).collect();
            let b: VersionVector = b.into_iter().map(|(d, c)| (dev(d), c)).collect();
            let expected = match a.compare(&b) {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), expected);
            let mut m = a.clone();
            m.merge(&b);
            prop_assert!(m.dominates(&a) && m.dominates(&b));
        }
    }
}
