//! Keys and spaces: a key rotation retires the old space, so a device still holding the old
//! key is refused (409, `space_retired`) and told to re-join instead of syncing into a space
//! nobody reads; joining picks the current space, not the first listed; the client compares
//! its key fingerprint with the server's before uploading anything; a key backup from a
//! device with another key is refused; version-1 and version-2 databases migrate.

mod common;

use std::sync::Arc;

use common::{Device, PASS, postgres_url, sqlite_server};
use serde_json::json;
use sync_core::keyring::Keyring;
use sync_core::store::system_millis;
use sync_core::{
    DeviceId, ErrorKind, KdfCost, OutgoingEnvelope, Passphrase, PullRequest, PushRequest, RecordId,
    RelayConfig, SpaceId, SpaceRef, SyncConfig, SyncEngine, Transport,
};
use sync_server::{AccountId, ServerStore, SpaceRetired, SqliteStore};
use transport_http::HttpTransport;

fn push_route_requests(server: &sync_server::RunningServer) -> u64 {
    server
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("hearth_requests_total{route=\"/v1/spaces/{space}/push\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn a_rotated_key_retires_the_old_space_and_stale_devices_are_told_to_rejoin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    a.store.put("notes", "k", &json!("v1")).await.expect("put");
    a.engine.sync().await.expect("sync");
    let b = Device::join(&dir.path().join("b.db"), &url, &account.token, PASS)
        .await
        .expect("b joins");
    assert_eq!(b.engine.sync().await.expect("sync").applied, 1);
    let old_space = a.store.space();

    // A rotates its root key: a new space, registered as the old one's successor.
    let Device {
        store,
        engine,
        http,
    } = a;
    drop(engine);
    let rotated = store
        .rotate_root_key(&Passphrase::new(PASS), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("rotate");
    let new_space = rotated.space();
    assert_ne!(new_space, old_space);
    // Naming a space that does not exist is refused, and registers nothing.
    let err = http
        .register_successor(new_space, rotated.key_fingerprint(), SpaceId([0x99; 16]))
        .await
        .expect_err("no such space to replace");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    assert!(
        !http
            .spaces()
            .await
            .expect("spaces")
            .iter()
            .any(|s| s.space == new_space),
        "a refused replacement registers nothing"
    );
    http.register_successor(new_space, rotated.key_fingerprint(), old_space)
        .await
        .expect("register the successor");
    http.put_key_backup(new_space, rotated.key_backup().expect("backup"))
        .await
        .expect("new backup");
    let t: Arc<dyn Transport> = Arc::new(http.clone());
    let a_engine = SyncEngine::new(rotated.clone(), t, SyncConfig::default());
    a_engine.sync().await.expect("a syncs into the new space");

    let listed = http.spaces().await.expect("spaces");
    let old = listed.iter().find(|s| s.space == old_space).expect("old");
    assert!(old.retired);
    assert_eq!(old.successor, Some(new_space));

    // B still holds the old key: its edit is refused before anything is stored, with an
    // error that says to re-join.
    let before = server.store().space_stats(old_space).await.expect("stats");
    b.store
        .put("notes", "k", &json!("stale"))
        .await
        .expect("put");
    let err = b.engine.sync().await.expect_err("stale key");
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    let retired = transport_http::SpaceRetired::of(&err).expect("told why");
    assert_eq!(retired.successor, Some(new_space));
    assert!(err.to_string().contains("re-join"), "{err}");
    assert!(!err.is_temporary());
    assert_eq!(
        server.store().space_stats(old_space).await.expect("stats"),
        before,
        "nothing stored in the retired space"
    );
    // Straight at the server: 409 for pushes, pulls, device registration and key backups of
    // the retired space. The push goes as a raw body, since the typed client checks the
    // space's key (and learns it is retired) before it pushes.
    let raw = common::http(&url, &account.token);
    let from = b.from();
    let body = sync_core::wire::encode_push_request(&PushRequest {
        from,
        envelopes: vec![OutgoingEnvelope {
            record: RecordId([1; 32]),
            seq: 99,
            supersedes: vec![],
            tombstone: false,
            envelope: vec![0; 64],
        }],
        settle: None,
    })
    .expect("encode");
    let refused = reqwest::Client::new()
        .post(format!("{url}/v1/spaces/{}/push", old_space.to_hex()))
        .bearer_auth(&account.token)
        .body(body)
        .send()
        .await
        .expect("send");
    assert_eq!(refused.status(), reqwest::StatusCode::CONFLICT);
    let answer: serde_json::Value =
        serde_json::from_str(&refused.text().await.expect("body")).expect("a JSON error");
    assert_eq!(answer["code"], "space_retired", "{answer}");
    assert_eq!(answer["successor"], new_space.to_hex(), "{answer}");
    let pull = raw.pull(PullRequest {
        from,
        cursor: 0,
        limit: 10,
        include_own: true,
    });
    let e = pull.await.expect_err("pull");
    assert!(transport_http::SpaceRetired::of(&e).is_some(), "{e}");
    let e = raw.register_device(&from).await.expect_err("device");
    assert!(transport_http::SpaceRetired::of(&e).is_some(), "{e}");
    let e = raw
        .put_key_backup(old_space, vec![1, 2, 3])
        .await
        .expect_err("backup");
    assert!(transport_http::SpaceRetired::of(&e).is_some(), "{e}");

    // A new device joining with the passphrase gets the new space (the old one is listed
    // first or not: it is retired), and so does B re-joining.
    let c = Device::join(&dir.path().join("c.db"), &url, &account.token, PASS)
        .await
        .expect("c joins");
    assert_eq!(c.store.space(), new_space);
    c.engine.sync().await.expect("sync");
    assert_eq!(
        c.store.get("notes", "k").await.expect("get"),
        Some(json!("v1"))
    );
    let b2 = Device::join(&dir.path().join("b2.db"), &url, &account.token, PASS)
        .await
        .expect("b re-joins");
    assert_eq!(b2.store.space(), new_space);
    b2.engine.sync().await.expect("sync");
    assert_eq!(b2.snapshot("notes").await, c.snapshot("notes").await);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn the_client_checks_its_key_against_the_space_before_uploading() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    a.store.put("notes", "k", &json!(1)).await.expect("put");
    a.engine.sync().await.expect("sync");
    let pushes = push_route_requests(&server);
    assert!(pushes >= 1, "the metric counts pushes");

    // A device of the same space id holding another key: the transport refuses before
    // sending a single push request.
    let wrong = SpaceRef {
        fingerprint: [0xEE; 32],
        ..a.from()
    };
    let t = common::http(&url, &account.token);
    let err = t
        .push(PushRequest {
            from: wrong,
            envelopes: vec![OutgoingEnvelope {
                record: RecordId([2; 32]),
                seq: 1,
                supersedes: vec![],
                tombstone: false,
                envelope: vec![0; 64],
            }],
            settle: None,
        })
        .await
        .expect_err("wrong key");
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    assert_eq!(push_route_requests(&server), pushes, "no push request sent");
    assert!(t.check_key(&wrong).await.is_err());
    assert!(t.check_key(&a.from()).await.is_ok());
    // The right key passes, once checked, and pushes.
    let right = SpaceRef {
        device: DeviceId([7; 16]),
        ..a.from()
    };
    t.push(PushRequest {
        from: right,
        envelopes: vec![],
        settle: None,
    })
    .await
    .expect("empty push with the right key");
    assert_eq!(push_route_requests(&server), pushes + 1);
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn a_key_backup_from_a_device_with_another_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = sqlite_server(&dir.path().join("server.db")).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    let space = a.store.space();
    let good = a.store.key_backup().expect("backup");
    // Another store's header (another root key), relabelled with this space's id: the
    // fingerprint in it is not the space's.
    let other = Device::first(&dir.path().join("o.db"), &url, &account.token).await;
    let foreign = other.store.key_backup().expect("backup");
    let err = a
        .http
        .put_key_backup(space, foreign.clone())
        .await
        .expect_err("another space's backup");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    let mut ring = Keyring::decode(&foreign).expect("header");
    ring.space = space;
    let err = a
        .http
        .put_key_backup(space, ring.encode().expect("encode"))
        .await
        .expect_err("another key's backup");
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    let err = a
        .http
        .put_key_backup(space, vec![1, 2, 3])
        .await
        .expect_err("not a key header");
    assert!(
        matches!(
            err.kind(),
            ErrorKind::Corrupt | ErrorKind::InvalidInput | ErrorKind::Unsupported
        ),
        "{err}"
    );
    assert_eq!(
        a.http.get_key_backup(space).await.expect("get"),
        Some(good.clone()),
        "the space's backup is unchanged"
    );
    a.http
        .put_key_backup(space, good)
        .await
        .expect("the space's own key");
    server.stop().await.expect("stop");
}

/// The retirement rules, on a store directly.
async fn retirement_rules(store: Arc<dyn ServerStore>) {
    let me = AccountId([1; 16]);
    let them = AccountId([2; 16]);
    for a in [me, them] {
        store.create_account(a, [9; 32]).await.expect("account");
    }
    let (s1, s2, theirs) = (
        SpaceId([0x11; 16]),
        SpaceId([0x22; 16]),
        SpaceId([0x33; 16]),
    );
    store.register_space(me, s1, [1; 32]).await.expect("s1");
    store.register_space(me, s2, [2; 32]).await.expect("s2");
    store
        .register_space(them, theirs, [3; 32])
        .await
        .expect("theirs");
    let kind = |r: sync_core::Result<()>| r.expect_err("refused").kind();
    assert_eq!(
        kind(store.retire_space(me, theirs, None).await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(store.retire_space(me, s1, Some(theirs)).await),
        ErrorKind::Forbidden
    );
    assert_eq!(
        kind(store.retire_space(me, SpaceId([0x44; 16]), None).await),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind(store.retire_space(me, s1, Some(s1)).await),
        ErrorKind::InvalidInput
    );
    store.retire_space(me, s1, Some(s2)).await.expect("retire");
    store
        .retire_space(me, s1, Some(s2))
        .await
        .expect("idempotent");
    assert_eq!(
        kind(store.retire_space(me, s2, Some(s1)).await),
        ErrorKind::InvalidInput,
        "a retired space succeeds nothing"
    );
    let info = store.space(me, s1).await.expect("space").expect("exists");
    assert!(info.retired);
    assert_eq!(info.successor, Some(s2));
    assert!(
        !store
            .space(me, s2)
            .await
            .expect("s2")
            .expect("exists")
            .retired
    );
    let from = SpaceRef {
        space: s1,
        device: DeviceId([5; 16]),
        fingerprint: [1; 32],
    };
    let e = store
        .push(
            me,
            &PushRequest {
                from,
                envelopes: vec![],
                settle: None,
            },
        )
        .await
        .expect_err("push");
    assert_eq!(e.kind(), ErrorKind::WrongKey);
    assert_eq!(
        SpaceRetired::of(&e),
        Some(SpaceRetired {
            successor: Some(s2)
        })
    );
    let e = store
        .pull(
            me,
            &PullRequest {
                from,
                cursor: 0,
                limit: 1,
                include_own: false,
            },
        )
        .await
        .expect_err("pull");
    assert!(SpaceRetired::of(&e).is_some());
    assert!(SpaceRetired::of(&store.register_device(me, &from).await.expect_err("d")).is_some());
    assert!(
        SpaceRetired::of(&store.register_space(me, s1, [1; 32]).await.expect_err("s")).is_some()
    );
    assert!(
        SpaceRetired::of(&store.put_key_backup(me, s1, vec![1]).await.expect_err("b")).is_some()
    );
    assert_eq!(
        kind(store.space(them, s1).await.map(|_| ())),
        ErrorKind::Forbidden
    );
    // A successor and the retirement of what it replaces are one step: refused, nothing of
    // the new space is registered.
    let s3 = SpaceId([0x55; 16]);
    let registered = |r: sync_core::Result<bool>| r.map(|_| ());
    for (old, why, expected) in [
        (theirs, "another account's space", ErrorKind::Forbidden),
        (SpaceId([0x44; 16]), "a missing space", ErrorKind::NotFound),
        (s3, "itself", ErrorKind::InvalidInput),
    ] {
        assert_eq!(
            kind(registered(
                store.register_successor(me, s3, [4; 32], old).await
            )),
            expected,
            "replacing {why}"
        );
        assert_eq!(
            store.space(me, s3).await.expect("space"),
            None,
            "replacing {why} registered nothing"
        );
    }
    assert_eq!(
        kind(registered(
            store.register_successor(me, s1, [1; 32], s2).await
        )),
        ErrorKind::WrongKey,
        "a retired space cannot succeed another"
    );
    assert!(
        !store
            .space(me, s2)
            .await
            .expect("s2")
            .expect("exists")
            .retired,
        "a refused successor retires nothing"
    );
    assert!(
        store
            .register_successor(me, s3, [4; 32], s2)
            .await
            .expect("successor"),
        "the successor is new"
    );
    assert!(
        !store
            .register_successor(me, s3, [4; 32], s2)
            .await
            .expect("again"),
        "idempotent"
    );
    let info = store.space(me, s2).await.expect("s2").expect("exists");
    assert!(info.retired);
    assert_eq!(info.successor, Some(s3));
    store.close().await;
}

#[tokio::test]
async fn retirement_rules_hold_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(
        &dir.path().join("s.db"),
        RelayConfig::default(),
        Arc::new(system_millis),
    )
    .await
    .expect("store");
    retirement_rules(Arc::new(store)).await;
}

#[tokio::test]
async fn retirement_rules_hold_on_postgres() {
    let Some(pg) = postgres_url() else { return };
    let store = common::postgres_store(&pg, RelayConfig::default(), Arc::new(system_millis)).await;
    retirement_rules(store).await;
}

/// A database written by the version-1 server (no retirement columns) is migrated in place:
/// its data stays, and spaces can be retired.
#[tokio::test]
async fn a_version_1_database_is_migrated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.expect("v1 db");
        for stmt in [
            "CREATE TABLE hearth_schema (version BIGINT NOT NULL)",
            "INSERT INTO hearth_schema (version) VALUES (1)",
            "CREATE TABLE accounts (id BLOB PRIMARY KEY NOT NULL, token_hash BLOB NOT NULL, created BIGINT NOT NULL)",
            "CREATE TABLE spaces (id BLOB PRIMARY KEY NOT NULL, account BLOB NOT NULL, fingerprint BLOB, next_seq BIGINT NOT NULL, gc_floor BIGINT NOT NULL, key_backup BLOB)",
            "CREATE TABLE envelopes (space BLOB NOT NULL, server_seq BIGINT NOT NULL, record BLOB NOT NULL, device BLOB NOT NULL, seq BIGINT NOT NULL, tombstone BOOLEAN NOT NULL, size BIGINT NOT NULL, envelope BLOB NOT NULL, PRIMARY KEY (space, server_seq))",
            "CREATE TABLE devices (space BLOB NOT NULL, device BLOB NOT NULL, max_pushed BIGINT NOT NULL, pulled BIGINT NOT NULL, last_seen BIGINT NOT NULL, walking BIGINT, PRIMARY KEY (space, device))",
            "INSERT INTO accounts VALUES (x'01010101010101010101010101010101', x'00', 0)",
            "INSERT INTO spaces VALUES (x'11111111111111111111111111111111', x'01010101010101010101010101010101', NULL, 1, 0, x'AA')",
            "INSERT INTO envelopes VALUES (x'11111111111111111111111111111111', 1, x'02', x'05', 1, 0, 3, x'BBBBBB')",
        ] {
            sqlx::query(stmt).execute(&pool).await.expect("v1 schema");
        }
        pool.close().await;
    }
    let store = SqliteStore::open(&path, RelayConfig::default(), Arc::new(system_millis))
        .await
        .expect("open and migrate");
    let me = AccountId([1; 16]);
    let space = SpaceId([0x11; 16]);
    assert_eq!(
        store.get_key_backup(me, space).await.expect("backup"),
        Some(vec![0xAA])
    );
    assert_eq!(store.space_stats(space).await.expect("stats").envelopes, 1);
    store.retire_space(me, space, None).await.expect("retire");
    assert!(
        store
            .space(me, space)
            .await
            .expect("space")
            .expect("exists")
            .retired
    );
    store.close().await;
    // Opening again finds the current version and changes nothing.
    let store = SqliteStore::open(&path, RelayConfig::default(), Arc::new(system_millis))
        .await
        .expect("reopen");
    let v: i64 = sqlx::query_scalar("SELECT MAX(version) FROM hearth_schema")
        .fetch_one(
            &sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
                .await
                .expect("pool"),
        )
        .await
        .expect("version");
    assert_eq!(v, sync_server::SCHEMA_VERSION);
    store.close().await;
}

async fn index_names(path: &std::path::Path) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
        .await
        .expect("pool");
    let names = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'envelopes' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .expect("indexes");
    pool.close().await;
    names
}

const ME: AccountId = AccountId([1; 16]);
const V2_SPACE: SpaceId = SpaceId([0x11; 16]);
const V2_FROM: SpaceRef = SpaceRef {
    space: V2_SPACE,
    device: DeviceId([5; 16]),
    fingerprint: [7; 32],
};
const V2_RECORD: RecordId = RecordId([0x22; 32]);

/// A record whose id shares its first 8 bytes with [`V2_RECORD`]'s.
fn v2_twin() -> RecordId {
    let mut twin = [0x22; 32];
    twin[31] = 0x23;
    RecordId(twin)
}

fn v2_envelope(record: RecordId, seq: u64, byte: u8) -> OutgoingEnvelope {
    OutgoingEnvelope {
        record,
        seq,
        supersedes: Vec::new(),
        tombstone: false,
        envelope: vec![byte; 40],
    }
}

/// Writes the data of the version-2 migration tests through a current store.
async fn v2_fill(store: &dyn ServerStore) {
    store.create_account(ME, [9; 32]).await.expect("account");
    store
        .register_space(ME, V2_SPACE, V2_FROM.fingerprint)
        .await
        .expect("space");
    store
        .push(
            ME,
            &PushRequest {
                from: V2_FROM,
                envelopes: vec![
                    v2_envelope(V2_RECORD, 1, 0xA1),
                    v2_envelope(v2_twin(), 2, 0xB1),
                ],
                settle: None,
            },
        )
        .await
        .expect("push");
}

/// After migration: the data stay; a device learns its envelopes' server sequences by settling
/// (read through `envelopes_by_device`), and its newer envelope of a record naming the older
/// one replaces it, while the record sharing its id's prefix is kept.
async fn v2_check(store: &dyn ServerStore) {
    assert_eq!(
        store.space_stats(V2_SPACE).await.expect("stats").envelopes,
        2
    );
    let settled = store
        .push(
            ME,
            &PushRequest {
                from: V2_FROM,
                envelopes: Vec::new(),
                settle: Some(1),
            },
        )
        .await
        .expect("settle after migration");
    let held: Vec<(u64, RecordId)> = settled.held.iter().map(|h| (h.seq, h.record)).collect();
    assert_eq!(held, vec![(1, V2_RECORD), (2, v2_twin())]);
    let mut newer = v2_envelope(V2_RECORD, 3, 0xA2);
    newer.supersedes = vec![settled.held[0].server_seq];
    store
        .push(
            ME,
            &PushRequest {
                from: V2_FROM,
                envelopes: vec![newer],
                settle: None,
            },
        )
        .await
        .expect("push after migration");
    let page = store
        .pull(
            ME,
            &PullRequest {
                from: V2_FROM,
                cursor: 0,
                limit: 10,
                include_own: true,
            },
        )
        .await
        .expect("pull");
    let held: Vec<(RecordId, u8)> = page
        .envelopes
        .iter()
        .map(|e| (e.record, e.envelope[0]))
        .collect();
    assert_eq!(held, vec![(v2_twin(), 0xB1), (V2_RECORD, 0xA2)]);
    // The migration gave the space a log id (version 4), and it holds from page to page.
    assert_ne!(page.log_id, sync_core::LogId::default());
    let again = store
        .pull(
            ME,
            &PullRequest {
                from: V2_FROM,
                cursor: 0,
                limit: 1,
                include_own: true,
            },
        )
        .await
        .expect("pull");
    assert_eq!(again.log_id, page.log_id);
}

/// Version 2's index and no log ids (version 4).
const DOWNGRADE_TO_V2: &[&str] = &[
    "ALTER TABLE spaces DROP COLUMN log_id",
    "CREATE INDEX envelopes_by_record ON envelopes (space, record, device)",
    "UPDATE hearth_schema SET version = 2",
];

/// Versions 3 and 4's index of record-id prefixes.
const DOWNGRADE_TO_V4: &[&str] = &[
    "CREATE INDEX envelopes_by_record_prefix ON envelopes (substr(record, 1, 8))",
    "UPDATE hearth_schema SET version = 4",
];

/// The indexes no version-5 database has.
const RETIRED_INDEXES: [&str; 2] = ["envelopes_by_record", "envelopes_by_record_prefix"];

/// Databases written by the version-2 server (envelopes indexed by `(space, record, device)`)
/// and the version-4 server (by record-id prefix) are migrated in place to version 5: the old
/// indexes are gone, and the data and settling still hold ([`v2_check`]).
#[tokio::test]
async fn version_2_and_4_databases_are_migrated() {
    for (downgrade, old_index) in [
        (DOWNGRADE_TO_V2, "envelopes_by_record"),
        (DOWNGRADE_TO_V4, "envelopes_by_record_prefix"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        {
            let store = SqliteStore::open(&path, RelayConfig::default(), Arc::new(system_millis))
                .await
                .expect("store");
            v2_fill(&store).await;
            store.close().await;
            let pool = sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
                .await
                .expect("pool");
            for stmt in downgrade {
                sqlx::query(*stmt).execute(&pool).await.expect("old schema");
            }
            pool.close().await;
        }
        assert!(index_names(&path).await.contains(&old_index.to_owned()));

        let store = SqliteStore::open(&path, RelayConfig::default(), Arc::new(system_millis))
            .await
            .expect("open and migrate");
        let indexes = index_names(&path).await;
        for retired in RETIRED_INDEXES {
            assert!(!indexes.contains(&retired.to_owned()), "{indexes:?}");
        }
        v2_check(&store).await;
        store.close().await;
        let v: i64 = sqlx::query_scalar("SELECT MAX(version) FROM hearth_schema")
            .fetch_one(
                &sqlx::SqlitePool::connect(&format!("sqlite:{}", path.display()))
                    .await
                    .expect("pool"),
            )
            .await
            .expect("version");
        assert_eq!(v, 5);
    }
}

/// The same migrations on PostgreSQL.
#[tokio::test]
async fn version_2_and_4_databases_are_migrated_on_postgres() {
    let Some(pg) = postgres_url() else { return };
    for (downgrade, old_index) in [
        (DOWNGRADE_TO_V2, "envelopes_by_record"),
        (DOWNGRADE_TO_V4, "envelopes_by_record_prefix"),
    ] {
        let opts = common::fresh_schema(&pg).await;
        let open = || {
            sync_server::PostgresStore::connect_with(
                opts.clone(),
                2,
                RelayConfig::default(),
                Arc::new(system_millis),
            )
        };
        let store = open().await.expect("store");
        v2_fill(&store).await;
        store.close().await;
        let pool = sqlx::PgPool::connect_with(opts.clone())
            .await
            .expect("pool");
        for stmt in downgrade {
            sqlx::query(*stmt).execute(&pool).await.expect("old schema");
        }
        let indexes = || async {
            sqlx::query_scalar::<_, String>(
                "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = 'envelopes' ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .expect("indexes")
        };
        assert!(indexes().await.contains(&old_index.to_owned()));

        let store = open().await.expect("open and migrate");
        let names = indexes().await;
        for retired in RETIRED_INDEXES {
            assert!(!names.contains(&retired.to_owned()), "{names:?}");
        }
        v2_check(&store).await;
        store.close().await;
        let v: i64 = sqlx::query_scalar("SELECT MAX(version) FROM hearth_schema")
            .fetch_one(&pool)
            .await
            .expect("version");
        assert_eq!(v, 5);
        pool.close().await;
    }
}
