//! Sealed device heads and the state digest: how a device notices a server withholding writes.
//!
//! The last push of every sync round (the one after which the device has nothing left to push)
//! ends with the pushing device's **head**: an envelope like any record's (collection
//! [`HEAD_COLLECTION`], key the device id in hex), sealed under the space's record key so the
//! server can neither read nor forge it, with the next device sequence number. It says, at the
//! moment it was made:
//!
//! - `seen`: the highest sequence number the device had applied from each other device;
//! - `heads`: the sequence number of the newest head it had from each other device;
//! - `digest`: a digest of its whole state: the XOR of one keyed hash per record over the
//!   record's blind id and the version vectors (and deletion flags) of its undominated
//!   versions. Records whose versions are all tombstones, and local-only records, count for
//!   nothing, so devices that collected tombstones at different times still agree.
//!
//! The server keeps a device's newest head only (a device's newer envelope of a record
//! replaces its older one). A device that has pulled to the end of the log checks the newest
//! head of every other device (`check` below):
//!
//! - **peer view**: a head that names device Y's head h proves that head h was in the log
//!   before it, and a device's newest head is never compacted (only replaced by a newer one of
//!   the same device). So this device, at the end of the log, must hold a head of Y at or above
//!   h; if not, the server withheld Y's writes from it.
//! - **state digest**: when this device has seen exactly what the head's writer had seen (the
//!   same sequence from every device, the writer's head itself included; of this device a head
//!   at or above its last acknowledged one; nothing unpushed), both have applied the same
//!   writes, and version vectors and
//!   automatic resolutions are deterministic, so their digests must be equal. A difference
//!   means the server served this device a state that is missing (or holds stale versions of)
//!   some record: a withheld newest version, a hidden delete, a hidden record.
//!
//! A finding goes to `SyncReport::withheld` and is logged, and the round then pulls the whole
//! log once more (`SyncReport::refetched`): the device's cursor has moved past what was hidden,
//! and the per-origin rollback rule would refuse those older sequences, so this walk checks
//! only that nothing goes backwards for its record, and sweeps nothing. A full re-sync was
//! tried first and rejected: its sweep deletes local records the server leaves out, so a
//! withholding server could have made a device delete its own data. Against a server that
//! still withholds, the walk finds the same; once it stops, the device catches up at once.
//!
//! What this cannot see, and docs/security.md states: a server that withholds a device's
//! whole newest push (its head included) from every device that would tell, keeps them
//! apart for good (a fork), or serves a device nothing new at all.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::DeviceId;

/// The reserved collection of device heads. Applications cannot write to it.
pub const HEAD_COLLECTION: &str = "_hearth.head";

/// Metadata: the running state digest (absent until first needed; then kept by every commit).
pub(crate) const META_DIGEST: &str = "hearth.sync.digest";
/// Metadata: the newest head received from each other device.
pub(crate) const META_HEADS: &str = "hearth.sync.heads";
/// Metadata: this device's newest head the server acknowledged.
pub(crate) const META_OWN_HEAD: &str = "hearth.sync.own-head";

/// Length of a state digest.
pub(crate) const DIGEST_LEN: usize = 32;

/// What a head says: its JSON value, sealed like any record's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadValue {
    /// The highest sequence applied from each other device when the head was made.
    pub seen: Vec<(DeviceId, u64)>,
    /// The sequence of the newest head held from each other device when the head was made.
    pub heads: Vec<(DeviceId, u64)>,
    /// The writer's state digest when the head was made (everything it had written was in the
    /// push that carried this head).
    pub digest: Option<[u8; DIGEST_LEN]>,
}

/// A head as a receiving device keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredHead {
    /// The head's own sequence number (its writer's).
    pub seq: u64,
    /// What it says.
    pub value: HeadValue,
}

/// A sign, from a sealed head, that the server withheld writes from this device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withheld {
    /// The device whose writes are missing here (for `state-digest`, the head's writer, whose
    /// view of the space this device's state does not match).
    pub device: DeviceId,
    /// The device whose sealed head showed it.
    pub witness: DeviceId,
    /// `peer-view` (the witness has seen more of `device` than this device could get),
    /// `state-digest` (same view, different state; in a re-sync, different from the state the
    /// sweep would leave) or `own-head` (a re-sync walk lacked this device's own newest head,
    /// which is never collected; `device` and `witness` are this device).
    pub reason: String,
}

/// The heads a digest comparison applies to, and the peer-view findings: everything of the
/// check that needs no digest. `own_head` is this device's newest acknowledged head (0 if none);
/// `seen` its per-device high-water marks.
pub(crate) fn check(
    me: DeviceId,
    seen: &BTreeMap<DeviceId, u64>,
    own_head: u64,
    heads: &BTreeMap<DeviceId, StoredHead>,
) -> (Vec<Withheld>, Vec<(DeviceId, [u8; DIGEST_LEN])>) {
    let mine = |d: &DeviceId| seen.get(d).copied().unwrap_or(0);
    let my_head = |d: &DeviceId| heads.get(d).map_or(0, |h| h.seq);
    let mut found = Vec::new();
    let mut comparable = Vec::new();
    for (writer, head) in heads {
        if *writer == me {
            continue;
        }
        for (other, h) in &head.value.heads {
            if *other != me && *other != *writer && my_head(other) < *h {
                found.push(Withheld {
                    device: *other,
                    witness: *writer,
                    reason: "peer-view".to_owned(),
                });
            }
        }
        let Some(digest) = head.value.digest else {
            continue;
        };
        let theirs: BTreeMap<DeviceId, u64> = head.value.seen.iter().copied().collect();
        // Of this device the writer may have seen more than its newest acknowledged head: a
        // head stored whose acknowledgement was lost, after which the writes it carried were
        // superseded by versions that had seen them (so nothing was left to push). Everything
        // this device holds of its own is then in the writer's view as well.
        let same_view = mine(writer) == head.seq
            && theirs.get(&me).copied().unwrap_or(0) >= own_head
            && seen
                .keys()
                .chain(theirs.keys())
                .filter(|d| **d != me && *d != writer)
                .all(|d| mine(d) == theirs.get(d).copied().unwrap_or(0));
        if same_view {
            comparable.push((*writer, digest));
        }
    }
    (found, comparable)
}

/// `state-digest` findings: the comparable heads whose digest is not `digest`.
pub(crate) fn digest_findings(
    comparable: Vec<(DeviceId, [u8; DIGEST_LEN])>,
    digest: &[u8; DIGEST_LEN],
) -> impl Iterator<Item = Withheld> + '_ {
    comparable
        .into_iter()
        .filter(move |(_, d)| d != digest)
        .map(|(writer, _)| Withheld {
            device: writer,
            witness: writer,
            reason: "state-digest".to_owned(),
        })
}

/// XORs `b` into `a`.
pub(crate) fn xor_into(a: &mut [u8; DIGEST_LEN], b: &[u8; DIGEST_LEN]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> DeviceId {
        DeviceId([n; 16])
    }

    fn head(seq: u64, seen: &[(u8, u64)], digest: Option<u8>) -> StoredHead {
        StoredHead {
            seq,
            value: HeadValue {
                seen: seen.iter().map(|(n, s)| (d(*n), *s)).collect(),
                heads: Vec::new(),
                digest: digest.map(|b| [b; DIGEST_LEN]),
            },
        }
    }

    fn seen(pairs: &[(u8, u64)]) -> BTreeMap<DeviceId, u64> {
        pairs.iter().map(|(n, s)| (d(*n), *s)).collect()
    }

    #[test]
    fn a_peer_that_holds_a_newer_head_of_a_device_shows_it_withheld() {
        // Device 2's head names device 3's head 9 (and this device's head 4); this device (1)
        // holds device 3's head 5.
        let mut witness = head(20, &[], None);
        witness.value.heads = vec![(d(3), 9), (d(1), 4)];
        let mut heads = BTreeMap::from([(d(2), witness), (d(3), head(5, &[], None))]);
        let (found, _) = check(d(1), &seen(&[(2, 20), (3, 7)]), 0, &heads);
        assert_eq!(
            found,
            [Withheld {
                device: d(3),
                witness: d(2),
                reason: "peer-view".into()
            }]
        );
        // Holding the same head or a newer one is fine; what the peer says of this device is
        // not checked against itself.
        heads.insert(d(3), head(9, &[], None));
        assert!(
            check(d(1), &seen(&[(2, 20), (3, 9)]), 0, &heads)
                .0
                .is_empty()
        );
        heads.insert(d(3), head(12, &[], None));
        assert!(
            check(d(1), &seen(&[(2, 20), (3, 12)]), 0, &heads)
                .0
                .is_empty()
        );
    }

    #[test]
    fn digests_compare_only_when_the_views_are_the_same() {
        let h = head(20, &[(3, 9), (1, 4)], Some(7));
        let heads = BTreeMap::from([(d(2), h)]);
        let same = check(d(1), &seen(&[(2, 20), (3, 9)]), 4, &heads).1;
        assert_eq!(same, [(d(2), [7; DIGEST_LEN])]);
        // Something newer of the writer, of a third device, or of this device itself (its own
        // newer head): different views, no comparison.
        for (s, own) in [
            (seen(&[(2, 21), (3, 9)]), 4),
            (seen(&[(2, 20), (3, 10)]), 4),
            (seen(&[(2, 20), (3, 9), (4, 1)]), 4),
            (seen(&[(2, 20), (3, 9)]), 5),
        ] {
            assert!(check(d(1), &s, own, &heads).1.is_empty(), "{s:?} {own}");
        }
        // The writer saw a head of this device newer than its newest acknowledged one (the
        // acknowledgement was lost): still the same view.
        assert_eq!(check(d(1), &seen(&[(2, 20), (3, 9)]), 3, &heads).1.len(), 1);
        // A head without a digest is never compared.
        let heads = BTreeMap::from([(d(2), head(20, &[(3, 9), (1, 4)], None))]);
        assert!(
            check(d(1), &seen(&[(2, 20), (3, 9)]), 4, &heads)
                .1
                .is_empty()
        );
    }
}
