//! The relay conformance suite: the rules of [`crate::relay`], checked against any [`Relay`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{ErrorKind, Result};
use crate::model::{DeviceId, RecordId, SpaceId};
use crate::relay::{Relay, RelayConfig};
use crate::store::WallClock;
use crate::transport::{
    OutgoingEnvelope, PullPage, PullRequest, PushRequest, PushResponse, SpaceRef,
};

const DAY: u64 = 24 * 3600 * 1000;

/// A fresh space id for every case, unique across runs, so stores shared between cases (or
/// between test runs on one PostgreSQL) never see each other's data.
fn fresh_space() -> SpaceId {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    b[..8].copy_from_slice(&nanos.to_be_bytes());
    b[8..12].copy_from_slice(&std::process::id().to_be_bytes());
    b[12..].copy_from_slice(&(N.fetch_add(1, Ordering::SeqCst) as u32).to_be_bytes());
    SpaceId(b)
}

fn rec(n: u8) -> RecordId {
    RecordId([n; 32])
}

fn env(
    record: u8,
    seq: u64,
    supersedes: Vec<u64>,
    tombstone: bool,
    len: usize,
) -> OutgoingEnvelope {
    OutgoingEnvelope {
        record: rec(record),
        seq,
        supersedes,
        tombstone,
        envelope: vec![record ^ seq as u8; len],
    }
}

struct Case {
    relay: Arc<dyn Relay>,
    now: Arc<AtomicU64>,
    space: SpaceId,
    name: &'static str,
}

impl Case {
    fn dev(&self, d: u8) -> SpaceRef {
        SpaceRef {
            space: self.space,
            device: DeviceId([d; 16]),
            fingerprint: [0xF0; 32],
        }
    }
    async fn push(&self, d: u8, envelopes: Vec<OutgoingEnvelope>) -> Result<Vec<(u64, u64)>> {
        let r = self
            .relay
            .push(&PushRequest {
                from: self.dev(d),
                envelopes,
                settle: None,
            })
            .await?;
        Ok(r.assigned)
    }
    async fn settle(
        &self,
        d: u8,
        from: u64,
        envelopes: Vec<OutgoingEnvelope>,
    ) -> Result<PushResponse> {
        self.relay
            .push(&PushRequest {
                from: self.dev(d),
                envelopes,
                settle: Some(from),
            })
            .await
    }
    async fn pull(&self, d: u8, cursor: u64, limit: usize, include_own: bool) -> Result<PullPage> {
        self.relay
            .pull(&PullRequest {
                from: self.dev(d),
                cursor,
                limit,
                include_own,
            })
            .await
    }
    /// Every envelope after `cursor`, walking pages; returns (server seqs, final cursor).
    async fn pull_all(&self, d: u8, mut cursor: u64, limit: usize) -> (Vec<u64>, u64) {
        let mut seqs = Vec::new();
        loop {
            let page = self.pull(d, cursor, limit, false).await.expect("pull");
            seqs.extend(page.envelopes.iter().map(|e| e.server_seq));
            cursor = page.next_cursor;
            if !page.more {
                return (seqs, cursor);
            }
        }
    }
    async fn envelopes(&self) -> usize {
        self.relay
            .space_stats(self.space)
            .await
            .expect("stats")
            .envelopes
    }
    async fn tombstones(&self) -> usize {
        self.relay
            .space_stats(self.space)
            .await
            .expect("stats")
            .tombstones
    }
    fn advance(&self, millis: u64) {
        self.now.fetch_add(millis, Ordering::SeqCst);
    }
}

/// Runs the relay conformance suite.
///
/// `make(config, clock)` returns a relay with those limits that reads time from `clock`. It is
/// called once per case; each case uses its own fresh space, so a factory may hand back
/// relays sharing one database.
pub async fn relay_suite<F, Fut>(make: F)
where
    F: Fn(RelayConfig, WallClock) -> Fut,
    Fut: Future<Output = Result<Arc<dyn Relay>>>,
{
    let case = |config: RelayConfig| {
        let now = Arc::new(AtomicU64::new(1_767_225_600_000));
        let n = now.clone();
        let clock: WallClock = Arc::new(move || n.load(Ordering::SeqCst));
        let relay = make(config, clock);
        async move {
            let relay = relay.await.expect("make a relay");
            let name = relay.name();
            Case {
                relay,
                now,
                space: fresh_space(),
                name,
            }
        }
    };
    fingerprint(case(RelayConfig::default()).await).await;
    idempotent_push(case(RelayConfig::default()).await).await;
    push_limits(
        case(RelayConfig {
            push_limit: 3,
            max_envelope: 100,
            ..RelayConfig::default()
        })
        .await,
    )
    .await;
    compaction(case(RelayConfig::default()).await).await;
    paging(
        case(RelayConfig {
            page_limit: 4,
            page_bytes: 100,
            ..RelayConfig::default()
        })
        .await,
    )
    .await;
    include_own(case(RelayConfig::default()).await).await;
    tombstones(case(RelayConfig::default()).await).await;
    horizon_and_walk(
        case(RelayConfig {
            horizon_millis: 10 * DAY,
            ..RelayConfig::default()
        })
        .await,
    )
    .await;
    future_cursor(case(RelayConfig::default()).await).await;
    key_backup(case(RelayConfig::default()).await).await;
    own_older_named(
        case(RelayConfig {
            push_limit: 3,
            ..RelayConfig::default()
        })
        .await,
    )
    .await;
}

/// The relay drops only what a push names (and a record's earlier envelope in the same push):
/// a device's own older envelope it does not name stays. A settle request answers which of
/// the device's envelopes from a sequence on the relay holds, before storing that push, in
/// order and at most `push_limit` of them; other devices' envelopes are not in it.
async fn own_older_named(c: Case) {
    let name = c.name;
    let first = c
        .push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("push");
    let other = c
        .push(2, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("push");
    c.push(1, vec![env(1, 2, vec![], true, 10)])
        .await
        .expect("push");
    assert_eq!(
        c.envelopes().await,
        3,
        "{name}: an older entry the device did not name stays"
    );
    let settled = c.settle(1, 1, vec![]).await.expect("settle");
    assert_eq!(
        settled
            .held
            .iter()
            .map(|h| (h.seq, h.record))
            .collect::<Vec<_>>(),
        vec![(1, rec(1)), (2, rec(1))],
        "{name}: the device's own envelopes, in order"
    );
    assert_eq!(settled.held[0].server_seq, first[0].1, "{name}");
    assert!(settled.assigned.is_empty(), "{name}");
    let settled = c.settle(1, 2, vec![]).await.expect("settle");
    assert_eq!(settled.held.len(), 1, "{name}: from the sequence asked");
    // A settle with envelopes answers what was held before them.
    let settled = c
        .settle(
            1,
            3,
            vec![env(1, 3, vec![first[0].1, other[0].1], false, 10)],
        )
        .await
        .expect("settle and push");
    assert!(
        settled.held.is_empty(),
        "{name}: nothing held from 3 before this push"
    );
    assert_eq!(
        c.envelopes().await,
        2,
        "{name}: the named entries are gone (the unnamed tombstone stays)"
    );
    let retry = c
        .push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("retry");
    assert_eq!(retry, vec![(1, 0)], "{name}: the replaced entry answers 0");
    c.push(
        1,
        vec![
            env(3, 4, vec![], false, 10),
            env(4, 5, vec![], false, 10),
            env(3, 6, vec![], false, 10),
        ],
    )
    .await
    .expect("push");
    assert_eq!(
        c.envelopes().await,
        4,
        "{name}: within one push the later replaces the earlier"
    );
    let held = c.settle(1, 0, vec![]).await.expect("settle").held;
    assert_eq!(
        held.iter().map(|h| h.seq).collect::<Vec<_>>(),
        vec![2, 3, 5],
        "{name}: at most push_limit (3) entries, from the lowest"
    );
    let held = c.settle(1, 4, vec![]).await.expect("settle").held;
    assert_eq!(
        held.iter().map(|h| (h.seq, h.record)).collect::<Vec<_>>(),
        vec![(5, rec(4)), (6, rec(3))],
        "{name}: the replaced earlier entry of the push is not held"
    );
    c.push(2, vec![env(9, 2, vec![], false, 10)])
        .await
        .expect("push");
    let held = c.settle(2, 0, vec![]).await.expect("settle").held;
    assert_eq!(
        held.iter().map(|h| (h.seq, h.record)).collect::<Vec<_>>(),
        vec![(2, rec(9))],
        "{name}: each device is answered about its own envelopes"
    );
}

async fn fingerprint(c: Case) {
    let name = c.name;
    // A pull on a space nobody pushed to claims nothing.
    let mut other = c.dev(9);
    other.fingerprint = [0x0F; 32];
    c.relay
        .pull(&PullRequest {
            from: other,
            cursor: 0,
            limit: 10,
            include_own: false,
        })
        .await
        .expect("a pull claims no fingerprint");
    c.push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("first push claims the space");
    let refused = c
        .relay
        .push(&PushRequest {
            from: other,
            envelopes: vec![env(2, 1, vec![], false, 10)],
            settle: None,
        })
        .await
        .map_err(|e| e.kind());
    assert_eq!(
        refused,
        Err(ErrorKind::WrongKey),
        "{name}: another key is refused"
    );
    let refused = c
        .relay
        .pull(&PullRequest {
            from: other,
            cursor: 0,
            limit: 10,
            include_own: false,
        })
        .await
        .map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::WrongKey), "{name}: pulls too");
    assert_eq!(
        c.envelopes().await,
        1,
        "{name}: nothing stored by a refused push"
    );
}

async fn idempotent_push(c: Case) {
    let name = c.name;
    let batch = || {
        vec![
            env(1, 1, vec![], false, 10),
            env(2, 2, vec![], false, 10),
            env(3, 5, vec![], false, 10),
        ]
    };
    let first = c.push(1, batch()).await.expect("push");
    assert_eq!(
        first.iter().map(|a| a.0).collect::<Vec<_>>(),
        [1, 2, 5],
        "{name}: acknowledged in request order"
    );
    assert!(
        first.windows(2).all(|w| w[0].1 < w[1].1) && first[0].1 > 0,
        "{name}: server sequences strictly increase: {first:?}"
    );
    let again = c.push(1, batch()).await.expect("retried push");
    assert_eq!(again, first, "{name}: a retry learns the same numbers");
    assert_eq!(c.envelopes().await, 3, "{name}: and stores nothing twice");

    // Duplicated concurrently: stored once, same answers.
    let (x, y) = futures::future::join(
        c.push(1, vec![env(4, 6, vec![], false, 10)]),
        c.push(1, vec![env(4, 6, vec![], false, 10)]),
    )
    .await;
    let (x, y) = (x.expect("dup push"), y.expect("dup push"));
    assert_eq!(x, y, "{name}: duplicates answer alike");
    assert_eq!(c.envelopes().await, 4, "{name}: a duplicate is stored once");

    // A retry overlapping new envelopes: old ones keep their numbers, new ones get new ones.
    let mixed = c
        .push(
            1,
            vec![env(3, 5, vec![], false, 10), env(5, 7, vec![], false, 10)],
        )
        .await
        .expect("push");
    assert_eq!(mixed[0], first[2], "{name}");
    assert!(mixed[1].1 > x[0].1, "{name}: new envelope after the others");
    // Another device's sequence numbers are its own.
    let other = c
        .push(2, vec![env(6, 1, vec![], false, 10)])
        .await
        .expect("push");
    assert!(other[0].1 > mixed[1].1, "{name}");
    assert_eq!(c.envelopes().await, 6, "{name}");
    let (seqs, _) = c.pull_all(3, 0, 100).await;
    assert_eq!(seqs.len(), 6, "{name}: every envelope served once");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}: in order");
}

async fn push_limits(c: Case) {
    let name = c.name;
    let kind = |r: Result<Vec<(u64, u64)>>| r.map_err(|e| e.kind());
    assert_eq!(
        kind(
            c.push(
                1,
                vec![env(1, 2, vec![], false, 1), env(2, 2, vec![], false, 1)]
            )
            .await
        ),
        Err(ErrorKind::InvalidInput),
        "{name}: sequences must increase"
    );
    assert_eq!(
        kind(
            c.push(1, (1..=4).map(|s| env(1, s, vec![], false, 1)).collect())
                .await
        ),
        Err(ErrorKind::TooLarge),
        "{name}: push limit"
    );
    assert_eq!(
        kind(
            c.push(
                1,
                vec![env(1, 1, vec![], false, 10), env(2, 2, vec![], false, 101)]
            )
            .await
        ),
        Err(ErrorKind::TooLarge),
        "{name}: envelope limit"
    );
    assert_eq!(
        kind(
            c.push(1, vec![env(1, 1, (1..=1025).collect(), false, 1)])
                .await
        ),
        Err(ErrorKind::InvalidInput),
        "{name}: supersedes limit"
    );
    assert_eq!(c.envelopes().await, 0, "{name}: nothing partial stored");
    assert_eq!(
        kind(c.push(1, vec![env(1, 1, vec![], false, 100)]).await).map(|a| a.len()),
        Ok(1),
        "{name}: exactly at the limit is fine"
    );
}

async fn compaction(c: Case) {
    let name = c.name;
    let a = c
        .push(
            1,
            vec![env(1, 1, vec![], false, 10), env(2, 2, vec![], false, 10)],
        )
        .await
        .expect("push");
    let (s1, s2) = (a[0].1, a[1].1);
    // B replaces record 1, naming s1; it also (wrongly) names s2, which is another record's.
    let b = c
        .push(2, vec![env(1, 1, vec![s1, s2, 999], false, 10)])
        .await
        .expect("push");
    assert_eq!(
        c.envelopes().await,
        2,
        "{name}: only the same record's superseded entry is dropped"
    );
    let (seqs, _) = c.pull_all(3, 0, 100).await;
    assert_eq!(seqs, vec![s2, b[0].1], "{name}");
    // A concurrent version that did not see B's is kept beside it.
    let conc = c
        .push(3, vec![env(1, 1, vec![s1], false, 10)])
        .await
        .expect("push");
    assert_eq!(
        c.envelopes().await,
        3,
        "{name}: concurrent versions are kept"
    );
    // A retried push of the replaced envelope learns 0: it is gone, and is not stored again.
    let retry = c
        .push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("retry");
    assert_eq!(retry, vec![(1, 0)], "{name}: replaced envelopes answer 0");
    assert_eq!(c.envelopes().await, 3, "{name}");
    // A version that saw both replaces both.
    c.push(1, vec![env(1, 3, vec![b[0].1, conc[0].1], false, 10)])
        .await
        .expect("push");
    assert_eq!(
        c.envelopes().await,
        2,
        "{name}: merge replaced both siblings"
    );
}

async fn paging(c: Case) {
    let name = c.name;
    // 40-byte envelopes, 100 bytes a page: two a page; at most 4 envelopes a page.
    c.push(
        1,
        (1..=9)
            .map(|s| env(s as u8, s, vec![], false, 40))
            .collect(),
    )
    .await
    .expect("push");
    let p = c.pull(2, 0, 1000, false).await.expect("pull");
    assert_eq!(p.envelopes.len(), 2, "{name}: byte limit");
    assert!(p.more, "{name}");
    assert_eq!(p.next_cursor, p.envelopes[1].server_seq, "{name}");
    let (seqs, end) = c.pull_all(2, 0, 1000).await;
    assert_eq!(seqs.len(), 9, "{name}: every envelope once across pages");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{name}");
    let (again, end2) = c.pull_all(2, end, 1000).await;
    assert!(
        again.is_empty() && end2 == end,
        "{name}: nothing new after the end"
    );
    // Count limits: the request's, capped by the relay's, and at least one.
    let p = c.pull(2, 0, 1, false).await.expect("pull");
    assert_eq!((p.envelopes.len(), p.more), (1, true), "{name}");
    let p = c.pull(2, 0, 0, false).await.expect("pull");
    assert_eq!(
        p.envelopes.len(),
        1,
        "{name}: a limit of 0 still makes progress"
    );
    // Small envelopes: the relay's page limit of 4 caps a request for 1000.
    c.push(
        3,
        (1..=6)
            .map(|s| env(50 + s as u8, s, vec![], false, 5))
            .collect(),
    )
    .await
    .expect("push");
    let p = c.pull(2, end, 1000, false).await.expect("pull");
    assert_eq!((p.envelopes.len(), p.more), (4, true), "{name}: page limit");
    // One log, one log id: every page of the space names the same one (it changes only when
    // the server's data is declared restored from a backup).
    let first = c.pull(2, 0, 1000, false).await.expect("pull");
    assert_eq!(first.log_id, p.log_id, "{name}: the log id is stable");
    // An envelope larger than the page's byte budget comes alone.
    c.push(4, vec![env(90, 1, vec![], false, 250)])
        .await
        .expect("push");
    let (seqs, _) = c.pull_all(2, p.next_cursor, 1000).await;
    assert_eq!(seqs.len(), 3, "{name}: the big envelope is served too");
}

async fn include_own(c: Case) {
    let name = c.name;
    let a1 = c
        .push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("push");
    let b1 = c
        .push(2, vec![env(2, 1, vec![], false, 10)])
        .await
        .expect("push");
    let a2 = c
        .push(1, vec![env(3, 2, vec![], false, 10)])
        .await
        .expect("push");
    let p = c.pull(1, 0, 100, false).await.expect("pull");
    assert_eq!(
        p.envelopes.iter().map(|e| e.server_seq).collect::<Vec<_>>(),
        vec![b1[0].1],
        "{name}: own envelopes are skipped"
    );
    assert_eq!(
        p.next_cursor, a2[0].1,
        "{name}: the cursor moves past skipped own envelopes"
    );
    assert!(!p.more, "{name}");
    let p = c.pull(1, 0, 100, true).await.expect("pull");
    assert_eq!(
        p.envelopes.iter().map(|e| e.server_seq).collect::<Vec<_>>(),
        vec![a1[0].1, b1[0].1, a2[0].1],
        "{name}: include_own returns them"
    );
    assert_eq!(p.envelopes[0].device, DeviceId([1; 16]), "{name}");
    assert_eq!(p.envelopes[0].seq, 1, "{name}");
    // Only own envelopes after the cursor: an empty page whose cursor still moves.
    let p = c.pull(1, b1[0].1, 100, false).await.expect("pull");
    assert!(p.envelopes.is_empty(), "{name}");
    assert_eq!(p.next_cursor, a2[0].1, "{name}");
    // Own envelopes between a full page and the next foreign one move the cursor too.
    c.push(2, vec![env(4, 2, vec![], false, 10)])
        .await
        .expect("push");
    let p = c.pull(1, 0, 1, false).await.expect("pull");
    assert_eq!(p.envelopes[0].server_seq, b1[0].1, "{name}");
    assert!(p.more, "{name}");
    assert_eq!(
        p.next_cursor, a2[0].1,
        "{name}: own envelope after the page is passed over"
    );
}

async fn tombstones(c: Case) {
    let name = c.name;
    let a = c
        .push(
            1,
            vec![env(1, 1, vec![], false, 10), env(2, 2, vec![], false, 10)],
        )
        .await
        .expect("push");
    let (_, b_cursor) = c.pull_all(2, 0, 100).await;
    let t = c
        .push(1, vec![env(1, 3, vec![a[0].1], true, 10)])
        .await
        .expect("push tombstone");
    let ts = t[0].1;
    assert_eq!(c.tombstones().await, 1, "{name}");
    // B has not pulled past it: kept.
    let p = c.pull(1, ts, 100, false).await.expect("pull");
    assert_eq!(p.gc_floor, 0, "{name}: nothing collected yet");
    assert_eq!(c.tombstones().await, 1, "{name}: B has not seen it");
    let p = c.pull(2, b_cursor, 100, false).await.expect("pull");
    assert!(
        p.envelopes[0].tombstone,
        "{name}: tombstones are served as such"
    );
    let end = p.next_cursor;
    // B's next pull says it applied past the tombstone: every device has, so it goes.
    let p = c.pull(2, end, 100, false).await.expect("pull");
    assert_eq!(c.tombstones().await, 0, "{name}: collected");
    assert_eq!(p.gc_floor, ts, "{name}: the floor says so");
    assert_eq!(c.envelopes().await, 1, "{name}: the live record stays");
    // A retried push of the collected tombstone is not stored again.
    let retry = c
        .push(1, vec![env(1, 3, vec![a[0].1], true, 10)])
        .await
        .expect("retry");
    assert_eq!(retry, vec![(3, 0)], "{name}");
    assert_eq!(c.tombstones().await, 0, "{name}");
    // A brand-new device walks from 0 whatever the floor, and the walk ends caught up: its
    // last cursor is not below the floor, even though the log's last entries were collected.
    let (seqs, end3) = c.pull_all(3, 0, 1).await;
    assert_eq!(seqs, vec![a[1].1], "{name}");
    assert!(
        end3 >= ts,
        "{name}: the end of the log is at or above the floor"
    );
    c.pull(3, end3, 10, false)
        .await
        .expect("a device that walked to the end is not told to re-sync");
}

async fn horizon_and_walk(c: Case) {
    let name = c.name;
    // Five live records and two deletes by A; B sees the records, then goes silent.
    let a = c
        .push(
            1,
            (1..=5)
                .map(|s| env(s as u8, s, vec![], false, 10))
                .collect(),
        )
        .await
        .expect("push");
    let (_, b_cursor) = c.pull_all(2, 0, 100).await;
    c.advance(DAY);
    c.push(
        1,
        vec![
            env(1, 6, vec![a[0].1], true, 10),
            env(2, 7, vec![a[1].1], true, 10),
        ],
    )
    .await
    .expect("push");
    let (_, a_end) = c.pull_all(1, 0, 100).await;
    c.pull(1, a_end, 100, false).await.expect("pull");
    assert_eq!(c.tombstones().await, 2, "{name}: B holds them back");
    // Past the horizon B no longer counts.
    c.advance(11 * DAY);
    let p = c.pull(1, a_end, 100, false).await.expect("pull");
    assert_eq!(
        c.tombstones().await,
        0,
        "{name}: collected past the horizon"
    );
    let floor = p.gc_floor;
    assert!(floor > b_cursor, "{name}");
    // B comes back with its old cursor: it must re-sync.
    let back = c.pull(2, b_cursor, 100, false).await.map_err(|e| e.kind());
    assert_eq!(back.err(), Some(ErrorKind::ResyncRequired), "{name}");
    // Nor may it push what it wrote while away (it could bring a deleted record back): refused
    // the same way, nothing stored.
    let before = c.envelopes().await;
    let stale = c
        .push(2, vec![env(9, 1, vec![], false, 10)])
        .await
        .map_err(|e| e.kind());
    assert_eq!(
        stale.err(),
        Some(ErrorKind::ResyncRequired),
        "{name}: stale push"
    );
    assert_eq!(c.envelopes().await, before, "{name}: nothing stored");
    // A device never seen before has cursor 0: below the floor, it must pull first too.
    let new = c
        .push(7, vec![env(9, 1, vec![], false, 10)])
        .await
        .map_err(|e| e.kind());
    assert_eq!(
        new.err(),
        Some(ErrorKind::ResyncRequired),
        "{name}: unseen device"
    );
    // A device that is caught up pushes as usual.
    c.push(1, vec![env(8, 8, vec![], false, 10)])
        .await
        .expect("a caught-up device pushes");
    // The re-sync walks from 0 a page at a time; each page's cursor continues the walk even
    // though it is below the floor.
    let p = c.pull(2, 0, 1, true).await.expect("walk from 0");
    assert!(p.more && p.next_cursor < floor, "{name}: {p:?}");
    let p2 = c
        .pull(2, p.next_cursor, 1, true)
        .await
        .expect("walk continues");
    assert!(p2.next_cursor > p.next_cursor, "{name}");
    // A cursor below the floor that is not the one handed out is refused.
    let wrong = c
        .pull(2, p.next_cursor, 1, true)
        .await
        .map_err(|e| e.kind());
    assert_eq!(
        wrong.err(),
        Some(ErrorKind::ResyncRequired),
        "{name}: only the exact continuation is served"
    );
    // Walking from 0 to the end: exactly the three live records.
    let mut cursor = 0;
    let mut live = Vec::new();
    loop {
        let p = c.pull(2, cursor, 1, true).await.expect("walk");
        live.extend(p.envelopes.iter().map(|e| e.record));
        cursor = p.next_cursor;
        if !p.more {
            break;
        }
    }
    assert_eq!(live, vec![rec(3), rec(4), rec(5), rec(8)], "{name}");
    let p = c.pull(2, cursor, 10, false).await.expect("caught up");
    assert!(p.envelopes.is_empty(), "{name}");
    // Re-synced, B pushes again.
    c.push(2, vec![env(9, 1, vec![], false, 10)])
        .await
        .expect("a re-synced device pushes");
}

async fn future_cursor(c: Case) {
    let name = c.name;
    let a = c
        .push(1, vec![env(1, 1, vec![], false, 10)])
        .await
        .expect("push");
    let ok = c
        .pull(2, a[0].1, 10, false)
        .await
        .expect("cursor at the end");
    assert!(ok.envelopes.is_empty(), "{name}");
    let err = c.pull(2, a[0].1 + 1, 10, false).await.map_err(|e| e.kind());
    assert_eq!(
        err.err(),
        Some(ErrorKind::ResyncRequired),
        "{name}: a cursor from the future asks for a re-sync (the server lost that history)"
    );
    let err = c.pull(2, u64::MAX, 10, false).await.map_err(|e| e.kind());
    assert!(err.is_err(), "{name}");
}

async fn key_backup(c: Case) {
    let name = c.name;
    assert_eq!(
        c.relay.get_key_backup(c.space).await.expect("get"),
        None,
        "{name}"
    );
    c.relay
        .put_key_backup(c.space, vec![1, 2, 3])
        .await
        .expect("put");
    c.relay
        .put_key_backup(c.space, vec![4, 5])
        .await
        .expect("put again");
    assert_eq!(
        c.relay.get_key_backup(c.space).await.expect("get"),
        Some(vec![4, 5]),
        "{name}: the newest backup"
    );
}
