use std::future::Future;
use std::sync::Arc;

use crate::error::{ErrorKind, Result};
use crate::model::{CollectionId, RecordId};
use crate::storage::{Batch, RowState, ScanPos, Storage, StoredRecord};

fn rid(n: u32) -> RecordId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&n.to_be_bytes());
    b[31] = 0xAA;
    RecordId(b)
}

fn row(c: &CollectionId, n: u32, seq: Option<u64>, deleted: bool) -> StoredRecord {
    StoredRecord {
        id: rid(n),
        collection: *c,
        envelope: format!("envelope-{n}").into_bytes(),
        deleted,
        pending_seq: seq,
        sync: if n.is_multiple_of(3) {
            Vec::new()
        } else {
            vec![n as u8; 40]
        },
    }
}

/// Runs the storage conformance suite.
///
/// `open` must return an empty storage on its first call; on later calls it must reopen the
/// same store (for storages whose capabilities say `persistent`; others are not reopened).
pub async fn storage_suite<F, Fut>(open: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Storage>>>,
{
    let s = open().await.expect("open a fresh storage");
    let name = s.name();
    let notes = CollectionId([1; 32]);
    let tasks = CollectionId([2; 32]);

    // Empty.
    assert!(
        s.get(&rid(1)).await.expect("get").is_none(),
        "{name}: empty get"
    );
    assert!(
        s.scan(&notes, None, 10, true)
            .await
            .expect("scan")
            .is_empty(),
        "{name}: empty scan"
    );
    assert!(
        s.outbox(0, 10).await.expect("outbox").is_empty(),
        "{name}: empty outbox"
    );
    assert_eq!(s.outbox_len().await.expect("len"), 0);
    assert!(s.meta_get("k").await.expect("meta").is_none());

    // One batch: 50 notes (every 10th a tombstone), 5 tasks, metadata.
    let mut batch = Batch::default();
    for n in (0..50u32).rev() {
        batch
            .puts
            .push(row(&notes, n, Some(u64::from(n) + 1), n % 10 == 9));
    }
    for n in 100..105u32 {
        batch.puts.push(row(&tasks, n, None, false));
    }
    batch.meta.push(("k".into(), Some(b"v1".to_vec())));
    s.commit(batch).await.expect("commit");

    let got = s.get(&rid(7)).await.expect("get").expect("row 7 exists");
    assert_eq!(
        got,
        row(&notes, 7, Some(8), false),
        "{name}: get returns what was put"
    );
    assert_eq!(s.meta_get("k").await.expect("meta"), Some(b"v1".to_vec()));

    // get_many keeps the order asked, answers absent ids with None, and handles many ids.
    let mut ask: Vec<RecordId> = vec![rid(3), rid(999), rid(101), rid(3)];
    ask.extend((0..1500u32).map(|n| rid(n % 60)));
    let many = s.get_many(&ask).await.expect("get_many");
    assert_eq!(many.len(), ask.len(), "{name}: get_many answers every id");
    assert_eq!(many[0].as_ref().map(|r| r.id), Some(rid(3)));
    assert!(many[1].is_none(), "{name}: get_many absent id");
    assert_eq!(many[2].as_ref().map(|r| r.collection), Some(tasks));
    assert_eq!(
        many[3].as_ref().map(|r| r.id),
        Some(rid(3)),
        "{name}: repeated ids"
    );
    for (id, got) in ask.iter().zip(&many).skip(4) {
        let n = u32::from_be_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]);
        assert_eq!(got.is_some(), n < 50, "{name}: get_many of id {n}");
    }
    // get_many_for_commit answers the same, whichever connection it reads on.
    assert_eq!(
        s.get_many_for_commit(&ask)
            .await
            .expect("get_many_for_commit"),
        many,
        "{name}: get_many_for_commit against get_many"
    );

    // Scan with limit and paging: every live row once, in the order the batch put them, only
    // this collection, positions increasing.
    let mut seen = Vec::new();
    let mut after: Option<ScanPos> = None;
    loop {
        let page = s.scan(&notes, after, 7, false).await.expect("scan");
        assert!(page.len() <= 7, "{name}: scan honours limit");
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        seen.extend(page);
    }
    let expected: Vec<RecordId> = (0..50u32).rev().filter(|n| n % 10 != 9).map(rid).collect();
    assert_eq!(
        seen.iter().map(|(_, r)| r.id).collect::<Vec<_>>(),
        expected,
        "{name}: paged scan is in the order of the puts and complete"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "{name}: scan positions increase"
    );
    assert!(
        seen.iter()
            .all(|(_, r)| r.collection == notes && !r.deleted)
    );
    let all = s.scan(&notes, None, 1000, true).await.expect("scan");
    assert_eq!(all.len(), 50, "{name}: include_deleted returns tombstones");
    assert_eq!(
        s.scan(&tasks, None, 1000, false).await.expect("scan").len(),
        5
    );

    // scan_all walks every collection in id order, tombstones included.
    let mut everything = Vec::new();
    let mut after: Option<RecordId> = None;
    loop {
        let page = s.scan_all(after.as_ref(), 16).await.expect("scan_all");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.id);
        everything.extend(page.into_iter().map(|r| r.id));
    }
    let mut expected_all: Vec<RecordId> = (0..50u32).chain(100..105).map(rid).collect();
    expected_all.sort();
    assert_eq!(
        everything, expected_all,
        "{name}: scan_all is ordered and complete"
    );

    // Outbox: ordered by sequence, resumable, limited.
    assert_eq!(s.outbox_len().await.expect("len"), 50);
    let ob = s.outbox(0, 10).await.expect("outbox");
    assert_eq!(
        ob.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "{name}: outbox order"
    );
    assert_eq!(ob[0].record.id, rid(0));
    let ob2 = s.outbox(10, 5).await.expect("outbox");
    assert_eq!(
        ob2.first().map(|e| e.seq),
        Some(11),
        "{name}: outbox resumes after a sequence"
    );

    // Rewriting a pending record keeps one outbox entry, the newest.
    let mut b = Batch::default();
    b.puts.push(StoredRecord {
        envelope: b"rewritten".to_vec(),
        ..row(&notes, 0, Some(60), false)
    });
    s.commit(b).await.expect("commit");
    assert_eq!(
        s.outbox_len().await.expect("len"),
        50,
        "{name}: a rewrite replaces its outbox entry"
    );
    assert_eq!(s.outbox(0, 1).await.expect("outbox")[0].seq, 2);

    // Acks: a stale sequence does not clear a newer pending write.
    let mut b = Batch::default();
    b.acks.push((rid(0), 1));
    b.acks.push((rid(1), 2));
    s.commit(b).await.expect("ack");
    assert_eq!(
        s.outbox_len().await.expect("len"),
        49,
        "{name}: only the matching ack clears"
    );
    assert_eq!(
        s.get(&rid(0))
            .await
            .expect("get")
            .and_then(|r| r.pending_seq),
        Some(60)
    );
    assert_eq!(
        s.get(&rid(1))
            .await
            .expect("get")
            .and_then(|r| r.pending_seq),
        None
    );

    // Bookkeeping: set on rows that exist, leaving the envelope and the pending write; the last
    // of several for one id wins; an id that is not stored is left out. `get_states` answers
    // what `get_many` does, without envelopes.
    let before = s.get(&rid(0)).await.expect("get").expect("row 0");
    let mut b = Batch::default();
    b.syncs.push((rid(0), b"first".to_vec()));
    b.syncs.push((rid(1), b"one".to_vec()));
    b.syncs.push((rid(0), b"second".to_vec()));
    b.syncs.push((rid(9999), b"nobody".to_vec()));
    s.commit(b).await.expect("syncs");
    assert_eq!(
        s.get(&rid(0)).await.expect("get"),
        Some(StoredRecord {
            sync: b"second".to_vec(),
            ..before
        }),
        "{name}: bookkeeping replaced, the rest kept, the last one wins"
    );
    assert!(
        s.get(&rid(9999)).await.expect("get").is_none(),
        "{name}: bookkeeping for an absent id creates nothing"
    );
    let ids = [rid(1), rid(9999), rid(0), rid(7), rid(1)];
    let states = s.get_states(&ids).await.expect("get_states");
    assert_eq!(
        states,
        s.get_many(&ids)
            .await
            .expect("get_many")
            .into_iter()
            .map(|r| r.map(RowState::from))
            .collect::<Vec<_>>(),
        "{name}: get_states against get_many"
    );
    assert_eq!(
        states[0].as_ref().map(|r| (r.sync.clone(), r.pending_seq)),
        Some((b"one".to_vec(), None)),
        "{name}: get_states of an acknowledged row"
    );

    // Atomicity: a batch whose guard fails changes nothing at all.
    let mut b = Batch::default();
    b.puts.push(row(&notes, 500, Some(500), false));
    b.removes.push(rid(2));
    b.acks.push((rid(3), 4));
    b.meta.push(("k".into(), Some(b"v2".to_vec())));
    b.guards.push(("k".into(), Some(b"not-v1".to_vec())));
    let err = s.commit(b).await.err().map(|e| e.kind());
    assert_eq!(
        err,
        Some(ErrorKind::Conflict),
        "{name}: failed guard is a Conflict"
    );
    assert!(
        s.get(&rid(500)).await.expect("get").is_none(),
        "{name}: failed batch wrote a record"
    );
    assert!(
        s.get(&rid(2)).await.expect("get").is_some(),
        "{name}: failed batch removed a record"
    );
    assert_eq!(
        s.get(&rid(3))
            .await
            .expect("get")
            .and_then(|r| r.pending_seq),
        Some(4),
        "{name}: failed batch acked"
    );
    assert_eq!(
        s.meta_get("k").await.expect("meta"),
        Some(b"v1".to_vec()),
        "{name}: failed batch changed metadata"
    );

    // A passing guard, removal and metadata delete.
    let mut b = Batch::default();
    b.guards.push(("k".into(), Some(b"v1".to_vec())));
    b.guards.push(("absent".into(), None));
    b.removes.push(rid(2));
    b.meta.push(("k".into(), None));
    b.meta.push(("k2".into(), Some(vec![0, 1, 2, 255])));
    s.commit(b).await.expect("guarded commit");
    assert!(
        s.get(&rid(2)).await.expect("get").is_none(),
        "{name}: remove"
    );
    assert_eq!(
        s.outbox_len().await.expect("len"),
        48,
        "{name}: removing a row drops its outbox entry"
    );
    assert!(
        s.meta_get("k").await.expect("meta").is_none(),
        "{name}: meta delete"
    );

    acks_with_bookkeeping(&*s, name).await;
    twins(&*s, name).await;
    scan_positions(&*s, name).await;

    // Large values survive byte for byte.
    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut b = Batch::default();
    b.puts.push(StoredRecord {
        envelope: big.clone(),
        ..row(&tasks, 200, None, false)
    });
    s.commit(b).await.expect("big");
    assert_eq!(
        s.get(&rid(200)).await.expect("get").map(|r| r.envelope),
        Some(big.clone())
    );

    if !s.capabilities().persistent {
        s.close().await.expect("close");
        return;
    }
    s.close().await.expect("close");
    drop(s);
    let s = open().await.expect("reopen");
    assert_eq!(
        s.get(&rid(7)).await.expect("get"),
        Some(row(&notes, 7, Some(8), false)),
        "{name}: data survives reopen"
    );
    assert_eq!(
        s.get(&rid(200)).await.expect("get").map(|r| r.envelope),
        Some(big),
        "{name}: big value survives reopen"
    );
    assert_eq!(
        s.outbox_len().await.expect("len"),
        48,
        "{name}: outbox survives reopen"
    );
    assert_eq!(
        s.meta_get("k2").await.expect("meta"),
        Some(vec![0, 1, 2, 255])
    );
    assert!(
        s.check().await.is_ok(),
        "{name}: integrity check on a healthy store"
    );
    s.close().await.expect("close");
}

/// Scan positions: a replacement or a tombstone keeps a record's position, a new record comes
/// after every stored one, and a walk resumed after a record that was removed in the meantime
/// goes on where it was, neither repeating nor skipping a record. The rows are removed again
/// afterwards.
async fn scan_positions(s: &dyn Storage, name: &str) {
    let coll = CollectionId([0x3C; 32]);
    let ids = |page: &[(ScanPos, StoredRecord)]| {
        page.iter()
            .map(|(_, r)| u32::from_be_bytes([r.id.0[0], r.id.0[1], r.id.0[2], r.id.0[3]]))
            .collect::<Vec<_>>()
    };
    let mut b = Batch::default();
    for n in [310, 305, 320] {
        b.puts.push(row(&coll, n, None, false));
    }
    s.commit(b).await.expect("first puts");
    let mut b = Batch::default();
    b.puts.push(row(&coll, 301, None, false));
    b.puts.push(StoredRecord {
        envelope: b"replaced".to_vec(),
        ..row(&coll, 305, None, false)
    });
    b.puts.push(row(&coll, 310, None, true));
    s.commit(b).await.expect("replacements and a new record");
    let all = s.scan(&coll, None, 10, true).await.expect("scan");
    assert_eq!(
        ids(&all),
        vec![310, 305, 320, 301],
        "{name}: replacements keep their positions, a new record comes last"
    );
    assert_eq!(all[1].1.envelope, b"replaced".to_vec(), "{name}: replaced");
    assert_eq!(
        ids(&s.scan(&coll, None, 10, false).await.expect("scan")),
        vec![305, 320, 301],
        "{name}: the tombstone left out"
    );
    // A walk of two records, then the record it stopped at and the one before are removed
    // and a record added: the walk goes on from where it was.
    let first = s.scan(&coll, None, 2, true).await.expect("scan");
    assert_eq!(ids(&first), vec![310, 305]);
    let cursor = first[1].0;
    let mut b = Batch::default();
    b.removes.extend([rid(305), rid(310)]);
    b.puts.push(row(&coll, 330, None, false));
    s.commit(b).await.expect("removals under a walk");
    let rest = s.scan(&coll, Some(cursor), 10, true).await.expect("scan");
    assert_eq!(
        ids(&rest),
        vec![320, 301, 330],
        "{name}: a walk resumed after a removed record"
    );
    assert_eq!(
        rest.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        {
            let again = s.scan(&coll, None, 10, true).await.expect("scan");
            again.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        },
        "{name}: positions are stable from scan to scan"
    );
    assert!(
        s.scan(&coll, Some(ScanPos(u64::MAX)), 10, true)
            .await
            .expect("scan from the largest position")
            .is_empty(),
        "{name}: nothing after the largest position"
    );
    let mut b = Batch::default();
    b.removes.extend([rid(320), rid(301), rid(330)]);
    s.commit(b).await.expect("remove the positioned rows");
}

/// Acknowledgements and bookkeeping for the same rows in one batch (what the sync engine
/// commits after a push): each acknowledgement clears the pending write only where its
/// sequence matches, and the bookkeeping is set either way; an id acknowledged twice, one
/// acknowledged without bookkeeping, bookkeeping without an acknowledgement and an absent id
/// (acknowledged at another row's pending sequence) behave as they do alone. The rows are
/// removed again afterwards.
async fn acks_with_bookkeeping(s: &dyn Storage, name: &str) {
    let c = CollectionId([0xA7; 32]);
    let mut b = Batch::default();
    for n in 300..305u32 {
        b.puts.push(row(&c, n, Some(u64::from(n)), false));
    }
    s.commit(b).await.expect("rows to acknowledge");
    let mut b = Batch::default();
    // Matches: cleared, bookkeeping set.
    b.acks.push((rid(300), 300));
    b.syncs.push((rid(300), b"s300".to_vec()));
    // Stale: still pending, bookkeeping set.
    b.acks.push((rid(301), 1));
    b.syncs.push((rid(301), b"s301".to_vec()));
    // Acknowledged twice, one matching.
    b.acks.push((rid(302), 7));
    b.acks.push((rid(302), 302));
    b.syncs.push((rid(302), b"s302".to_vec()));
    // Acknowledged alone; bookkeeping alone; absent, acknowledged at the sequence another
    // row (304) is pending at, which must stay pending and keep its own bookkeeping.
    b.acks.push((rid(303), 303));
    b.syncs.push((rid(304), b"s304".to_vec()));
    b.acks.push((rid(9997), 304));
    b.syncs.push((rid(9997), b"nobody".to_vec()));
    s.commit(b).await.expect("acks with bookkeeping");
    let ids: Vec<RecordId> = (300..305).map(rid).chain([rid(9997)]).collect();
    let got: Vec<Option<(Option<u64>, Vec<u8>)>> = s
        .get_many(&ids)
        .await
        .expect("get_many")
        .into_iter()
        .map(|r| r.map(|r| (r.pending_seq, r.sync)))
        .collect();
    let unchanged = row(&c, 303, None, false).sync;
    assert_eq!(
        got,
        vec![
            Some((None, b"s300".to_vec())),
            Some((Some(301), b"s301".to_vec())),
            Some((None, b"s302".to_vec())),
            Some((None, unchanged)),
            Some((Some(304), b"s304".to_vec())),
            None,
        ],
        "{name}: acknowledgements with bookkeeping"
    );
    let mut b = Batch::default();
    b.removes.extend((300..305).map(rid));
    s.commit(b).await.expect("remove them again");
}

/// Ids that agree in all but their last byte, and collections that agree in all but their last
/// byte: a storage that indexes prefixes of the ids (backend-sqlite does) must still tell them
/// apart in every operation, and order them by the whole id.
async fn twins(s: &dyn Storage, name: &str) {
    let twin = |last: u8| {
        let mut b = [0x5C; 32];
        b[31] = last;
        RecordId(b)
    };
    let (c1, c2) = {
        let mut a = [0x7E; 32];
        let mut b = [0x7E; 32];
        a[31] = 1;
        b[31] = 2;
        (CollectionId(a), CollectionId(b))
    };
    let put = |id: RecordId, c: &CollectionId, tag: &str, seq: Option<u64>| StoredRecord {
        id,
        collection: *c,
        envelope: tag.as_bytes().to_vec(),
        deleted: false,
        pending_seq: seq,
        sync: Vec::new(),
    };
    // One batch: four twins over the two twin collections, and a second put of one of them
    // (the later put wins, as if applied one after the other).
    let mut b = Batch::default();
    b.puts.push(put(twin(3), &c1, "t3", None));
    b.puts.push(put(twin(1), &c1, "t1-first", Some(900)));
    b.puts.push(put(twin(2), &c2, "t2", None));
    b.puts.push(put(twin(4), &c1, "t4", Some(901)));
    b.puts.push(put(twin(1), &c1, "t1", Some(902)));
    s.commit(b).await.expect("twins");
    for (last, tag) in [(1, "t1"), (2, "t2"), (3, "t3"), (4, "t4")] {
        assert_eq!(
            s.get(&twin(last)).await.expect("get").map(|r| r.envelope),
            Some(tag.as_bytes().to_vec()),
            "{name}: twin {last}"
        );
    }
    assert!(
        s.get(&twin(5)).await.expect("get").is_none(),
        "{name}: an absent twin"
    );
    let many = s
        .get_many(&[twin(4), twin(5), twin(1)])
        .await
        .expect("get_many");
    assert_eq!(
        many.iter()
            .map(|r| r.as_ref().map(|r| r.envelope.clone()))
            .collect::<Vec<_>>(),
        vec![Some(b"t4".to_vec()), None, Some(b"t1".to_vec())],
        "{name}: get_many of twins"
    );
    // Scans: only the collection asked for, in the order of the batch's puts (an id put twice
    // at its last put), paged one at a time.
    let mut got = Vec::new();
    let mut after = None;
    loop {
        let page = s.scan(&c1, after, 1, true).await.expect("scan");
        let Some((pos, last)) = page.last() else {
            break;
        };
        after = Some(*pos);
        got.push(last.id.0[31]);
    }
    assert_eq!(got, vec![3, 4, 1], "{name}: twin scan");
    assert_eq!(
        s.scan(&c2, None, 10, true)
            .await
            .expect("scan")
            .iter()
            .map(|(_, r)| r.id.0[31])
            .collect::<Vec<_>>(),
        vec![2],
        "{name}: the twin collection"
    );
    let all = s
        .scan_all(Some(&twin(1)), 3)
        .await
        .expect("scan_all")
        .iter()
        .map(|r| r.id.0[31])
        .collect::<Vec<_>>();
    assert_eq!(all, vec![2, 3, 4], "{name}: scan_all after a twin");
    // A replacement, an acknowledgement and a removal touch their own twin only.
    let mut b = Batch::default();
    b.puts.push(put(twin(3), &c1, "t3-new", None));
    b.acks.push((twin(4), 901));
    b.acks.push((twin(1), 900));
    b.syncs.push((twin(4), b"s4".to_vec()));
    b.removes.push(twin(2));
    s.commit(b).await.expect("twins again");
    assert_eq!(
        s.get_states(&[twin(1), twin(4), twin(2)])
            .await
            .expect("get_states")
            .into_iter()
            .map(|r| r.map(|r| (r.sync, r.pending_seq)))
            .collect::<Vec<_>>(),
        vec![
            Some((Vec::new(), Some(902))),
            Some((b"s4".to_vec(), None)),
            None
        ],
        "{name}: bookkeeping and states of twins"
    );
    let state = s
        .get_many(&[twin(1), twin(2), twin(3), twin(4)])
        .await
        .expect("get_many");
    assert_eq!(
        state
            .iter()
            .map(|r| r.as_ref().map(|r| (r.envelope.clone(), r.pending_seq)))
            .collect::<Vec<_>>(),
        vec![
            Some((b"t1".to_vec(), Some(902))),
            None,
            Some((b"t3-new".to_vec(), None)),
            Some((b"t4".to_vec(), None)),
        ],
        "{name}: twins after an update, acks and a removal"
    );
    // Leave the store as the rest of the suite expects it.
    let mut b = Batch::default();
    b.removes.extend([twin(1), twin(3), twin(4)]);
    s.commit(b).await.expect("remove twins");
}
