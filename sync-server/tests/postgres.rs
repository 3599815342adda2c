//! Two server processes on one PostgreSQL: the real `hearth-server` binary twice, devices
//! syncing through both alternately (and leaving nothing readable in the database or logs);
//! two in-process `Server`s likewise, and concurrent pushes through both never reuse or skip a
//! sequence number.
//! Needs `HEARTH_TEST_POSTGRES_URL` (set by `.ci/run`); fails in CI without it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::{Device, PASS, ServerProcess, fresh_schema, postgres_url};
use serde_json::json;
use sync_core::store::system_millis;
use sync_core::{
    DeviceId, OutgoingEnvelope, PullRequest, PushRequest, RecordId, RelayConfig, SpaceId, SpaceRef,
    SyncConfig, SyncEngine, Transport, WriteBatch,
};
use sync_server::{PostgresStore, RunningServer, Server};
use transport_http::HttpTransport;

async fn two_servers(url: &str) -> (RunningServer, RunningServer) {
    let opts = fresh_schema(url).await;
    let mut servers = Vec::new();
    for _ in 0..2 {
        let store = PostgresStore::connect_with(
            opts.clone(),
            8,
            RelayConfig::default(),
            Arc::new(system_millis),
        )
        .await
        .expect("postgres store");
        servers.push(
            Server::builder()
                .listen("127.0.0.1:0".parse().expect("addr"))
                .store(Arc::new(store))
                .build()
                .await
                .expect("server")
                .spawn(),
        );
    }
    let b = servers.pop().expect("two");
    let a = servers.pop().expect("two");
    (a, b)
}

fn engine(d: &Device, url: &str, token: &str) -> SyncEngine {
    let t: Arc<dyn Transport> =
        Arc::new(common::http(url, token).retrying_with(common::quick_retry()));
    SyncEngine::new(d.store.clone(), t, SyncConfig::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_sync_through_two_servers_on_one_postgres_alternately() {
    let Some(pg) = postgres_url() else { return };
    let (s1, s2) = two_servers(&pg).await;
    let (u1, u2) = (s1.url(), s2.url());
    let dir = tempfile::tempdir().expect("tempdir");
    let account = HttpTransport::register_account(&u1).await.expect("account");
    let a = Device::first(&dir.path().join("a.db"), &u1, &account.token).await;
    // B joins through the other server: the account, space and key backup are shared.
    let b = Device::join(&dir.path().join("b.db"), &u2, &account.token, PASS)
        .await
        .expect("join through server 2");
    for round in 0..6u32 {
        let (ua, ub) = if round % 2 == 0 {
            (&u1, &u2)
        } else {
            (&u2, &u1)
        };
        a.store
            .put("notes", &format!("a{round}"), &json!(round))
            .await
            .expect("put");
        b.store
            .put("notes", &format!("b{round}"), &json!(round))
            .await
            .expect("put");
        b.store
            .put("notes", "shared", &json!(format!("b{round}")))
            .await
            .expect("put");
        engine(&a, ua, &account.token).sync().await.expect("sync a");
        engine(&b, ub, &account.token).sync().await.expect("sync b");
        engine(&a, ub, &account.token).sync().await.expect("sync a");
    }
    let sa = a.snapshot("notes").await;
    assert_eq!(sa.len(), 13);
    assert_eq!(sa, b.snapshot("notes").await);
    let st = s1
        .store()
        .space_stats(a.store.space())
        .await
        .expect("stats");
    assert_eq!(
        st.envelopes,
        13 + 2, // and each device's newest head
        "superseded versions compacted across servers"
    );
    s1.stop().await.expect("stop");
    s2.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pushes_through_two_servers_never_reuse_or_skip_a_sequence() {
    let Some(pg) = postgres_url() else { return };
    let (s1, s2) = two_servers(&pg).await;
    let urls = [s1.url(), s2.url()];
    let account = HttpTransport::register_account(&urls[0])
        .await
        .expect("account");
    let space = SpaceId([0x42; 16]);
    let from = move |d: u8| SpaceRef {
        space,
        device: DeviceId([d; 16]),
        fingerprint: [9; 32],
    };
    let transports: Vec<HttpTransport> = urls
        .iter()
        .map(|u| common::http(u, &account.token))
        .collect();
    const DEVICES: u8 = 8;
    const BATCHES: u64 = 8;
    const PER: u64 = 10;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));

    // The puller walks the log through both servers while the pushes run.
    let puller = {
        let transports = transports.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut cursor = 0;
            let mut seen: Vec<(u64, DeviceId, u64)> = Vec::new();
            for i in 0.. {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst) == DEVICES as usize;
                let page = transports[i % 2]
                    .pull(PullRequest {
                        from: from(200),
                        cursor,
                        limit: 7,
                        include_own: false,
                    })
                    .await
                    .expect("pull");
                seen.extend(
                    page.envelopes
                        .iter()
                        .map(|e| (e.server_seq, e.device, e.seq)),
                );
                cursor = page.next_cursor;
                if finished && !page.more {
                    break;
                }
            }
            seen
        })
    };
    let mut pushers = Vec::new();
    for d in 1..=DEVICES {
        let transports = transports.clone();
        let done = done.clone();
        pushers.push(tokio::spawn(async move {
            let mut assigned = Vec::new();
            for b in 0..BATCHES {
                let envelopes = (0..PER)
                    .map(|i| {
                        let seq = b * PER + i + 1;
                        // A record per envelope: a device's newer envelope of one record
                        // would replace its older one, and this test counts every envelope.
                        let mut record = [d; 32];
                        record[24..].copy_from_slice(&seq.to_be_bytes());
                        OutgoingEnvelope {
                            record: RecordId(record),
                            seq,
                            supersedes: vec![],
                            tombstone: false,
                            envelope: vec![d; 32 + seq as usize],
                        }
                    })
                    .collect();
                let r = transports[(d as usize + b as usize) % 2]
                    .push(PushRequest {
                        from: from(d),
                        envelopes,
                        settle: None,
                    })
                    .await
                    .expect("push");
                assigned.extend(r.assigned);
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            (d, assigned)
        }));
    }
    let mut all: BTreeMap<u64, (u8, u64)> = BTreeMap::new();
    for p in pushers {
        let (d, assigned) = p.await.expect("pusher");
        assert!(
            assigned.windows(2).all(|w| w[0].1 < w[1].1),
            "a device's envelopes get increasing numbers"
        );
        for (seq, server_seq) in assigned {
            assert!(
                all.insert(server_seq, (d, seq)).is_none(),
                "server sequence {server_seq} handed out twice"
            );
        }
    }
    let total = DEVICES as usize * (BATCHES * PER) as usize;
    assert_eq!(all.len(), total);
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=total as u64).collect::<Vec<_>>(),
        "numbers are dense: none reused, none lost"
    );
    let seen = puller.await.expect("puller");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "the puller never saw a lower number after a higher one"
    );
    let seen_set: BTreeSet<u64> = seen.iter().map(|e| e.0).collect();
    assert_eq!(
        seen_set.len(),
        total,
        "the puller saw every envelope exactly once"
    );
    for (server_seq, device, seq) in seen {
        assert_eq!(all.get(&server_seq), Some(&(device.0[0], seq)));
    }
    s1.stop().await.expect("stop");
    s2.stop().await.expect("stop");
}

const CANARY: &str = "CANARYpg4Wm";

/// Two real `hearth-server` processes (the built binary) on one PostgreSQL schema: the
/// deployment the server is made for. Three devices sync through them alternately, with
/// offline edits, a conflict and deletes, and converge; then no canary string written by the
/// devices, no token and no passphrase appears in any table (as bytes or as hex) or in either
/// process's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_sync_through_two_server_processes_on_one_postgres() {
    let Some(pg) = postgres_url() else { return };
    let (db_url, schema) = common::fresh_schema_url(&pg).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let p1 = ServerProcess::start(&db_url, "127.0.0.1:0", &dir.path().join("s1.log"));
    let p2 = ServerProcess::start(&db_url, "127.0.0.1:0", &dir.path().join("s2.log"));
    let urls = [p1.url(), p2.url()];
    let account = HttpTransport::register_account(&urls[0])
        .await
        .expect("account");
    let token = account.token.as_str();
    let collection = format!("{CANARY}-notes");
    let a = Device::first(&dir.path().join("a.db"), &urls[0], token).await;
    let mut batch = WriteBatch::new();
    for i in 0..30 {
        batch
            .put(
                &collection,
                format!("{CANARY}-k{i:02}"),
                &json!({"v": format!("{CANARY}-value-{i}")}),
            )
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    engine(&a, &urls[1], token).sync().await.expect("sync a");
    let b = Device::join(&dir.path().join("b.db"), &urls[1], token, PASS)
        .await
        .expect("b joins through process 2");
    let c = Device::join(&dir.path().join("c.db"), &urls[0], token, PASS)
        .await
        .expect("c joins through process 1");
    let devices = [&a, &b, &c];
    for (i, d) in devices.iter().enumerate() {
        engine(d, &urls[i % 2], token).sync().await.expect("sync");
    }
    for round in 0..4usize {
        // Offline edits on every device: its own keys, one key all of them write (a conflict
        // each round), and a delete.
        for (i, d) in devices.iter().enumerate() {
            d.store
                .put(
                    &collection,
                    &format!("{CANARY}-d{i}-r{round}"),
                    &json!(format!("{CANARY}-{i}-{round}")),
                )
                .await
                .expect("put");
            d.store
                .put(
                    &collection,
                    &format!("{CANARY}-shared"),
                    &json!(format!("{CANARY}-by-{i}-{round}")),
                )
                .await
                .expect("put");
        }
        let victim = format!("{CANARY}-k{:02}", round * 3 + 1);
        assert!(
            devices[round % 3]
                .store
                .delete(&collection, &victim)
                .await
                .expect("delete")
        );
        // Each device alternates between the two processes.
        for (i, d) in devices.iter().enumerate() {
            engine(d, &urls[(i + round) % 2], token)
                .sync()
                .await
                .expect("sync");
        }
    }
    for _ in 0..2 {
        for (i, d) in devices.iter().enumerate() {
            engine(d, &urls[(i + 1) % 2], token)
                .sync()
                .await
                .expect("sync");
        }
    }
    let snap = a.snapshot(&collection).await;
    // 30 - 4 deleted + 3 devices × 4 rounds + the shared key.
    assert_eq!(snap.len(), 30 - 4 + 12 + 1);
    assert_eq!(snap, b.snapshot(&collection).await);
    assert_eq!(snap, c.snapshot(&collection).await);
    for round in 0..4usize {
        let victim = format!("{CANARY}-k{:02}", round * 3 + 1);
        assert!(!snap.iter().any(|(k, _)| *k == victim), "{victim} deleted");
    }

    p1.terminate();
    p2.terminate();
    // Nothing the devices wrote is readable in the database, in any table.
    let pool = sqlx::PgPool::connect(&pg).await.expect("connect");
    let hex_canary = hex::encode(CANARY);
    let (_, secret) = account.token.split_once('.').expect("token");
    let mut rows = 0;
    for table in ["accounts", "spaces", "envelopes", "devices"] {
        let dump: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {schema}.{table} t"
        )))
        .fetch_all(&pool)
        .await
        .expect("dump table");
        rows += dump.len();
        for row in dump {
            for needle in [CANARY, hex_canary.as_str(), token, secret, PASS] {
                assert!(!row.contains(needle), "{table} holds a secret");
            }
        }
    }
    let blobs: Vec<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT envelope FROM {schema}.envelopes UNION ALL SELECT key_backup FROM {schema}.spaces WHERE key_backup IS NOT NULL"
    )))
    .fetch_all(&pool)
    .await
    .expect("blobs");
    assert!(blobs.len() > 30, "the envelopes are there: {}", blobs.len());
    for b in &blobs {
        assert!(!common::contains(b, CANARY.as_bytes()));
    }
    assert!(rows > 30);
    pool.close().await;
    for p in [dir.path().join("s1.log"), dir.path().join("s2.log")] {
        let logs = std::fs::read_to_string(&p).expect("log");
        assert!(logs.contains("/v1/spaces/{space}/push"), "the log is real");
        for needle in [CANARY, token, secret, PASS] {
            assert!(!logs.contains(needle), "a server log holds a secret");
        }
    }
}
