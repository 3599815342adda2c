//! A server restored from an older backup of its database, on 127.0.0.1 with devices on real
//! SQLite files: the devices lose nothing and say so, and once told that the server lost data
//! (`SyncEngine::reupload_to_server`) they put back what it lacks, so that a new device gets
//! everything. When the operator declares the restore (`hearth-server mark-restored`, the real
//! binary), every device does that by itself at its next sync.

mod common;

use std::path::Path;

use common::{Device, PASS, server_and_two_devices, sqlite_server_at};
use serde_json::json;
use sync_core::{SyncReport, WriteBatch};
use sync_server::RunningServer;

/// Copies an SQLite database with its WAL files (absent ones removed at the destination).
fn copy_db(from: &Path, to: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let src = format!("{}{suffix}", from.display());
        let dst = format!("{}{suffix}", to.display());
        if Path::new(&src).exists() {
            std::fs::copy(&src, &dst).expect("copy database file");
        } else if Path::new(&dst).exists() {
            std::fs::remove_file(&dst).expect("remove stale database file");
        }
    }
}

fn reasons(r: &SyncReport) -> Vec<&str> {
    r.withheld.iter().map(|w| w.reason.as_str()).collect()
}

/// Two devices synced through a server on `dir/server.db`, 40 records; a backup of the server's
/// database; then 28 writes the backup lacks (A adds 10, edits 5, deletes 3; B adds 10), all
/// synced; then the server stopped and its database restored from the backup. Returns the
/// server's address, the account token, both devices and the state they hold.
async fn restored_after_28_writes(
    dir: &Path,
) -> (
    std::net::SocketAddr,
    String,
    Device,
    Device,
    Vec<(String, serde_json::Value)>,
) {
    let db = dir.join("server.db");
    let backup = dir.join("backup.db");
    let (server, token, a, b) = server_and_two_devices(dir).await;
    let addr = server.local_addr();
    let mut batch = WriteBatch::new();
    for i in 0..40 {
        batch
            .put("notes", format!("n{i:02}"), &json!({"i": i}))
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    a.engine.sync().await.expect("a syncs");
    assert_eq!(b.engine.sync().await.expect("b syncs").applied, 40);

    // The operator's backup of the server's database.
    server.stop().await.expect("stop");
    copy_db(&db, &backup);
    let server = sqlite_server_at(addr, &db).await;

    // After the backup: A adds 10 records, edits 5 and deletes 3; B adds 10; all synced.
    let mut batch = WriteBatch::new();
    for i in 0..10 {
        batch
            .put("notes", format!("m{i:02}"), &json!({"m": i}))
            .expect("put");
    }
    for i in 0..5 {
        batch
            .put(
                "notes",
                format!("n{i:02}"),
                &json!({"i": i, "edited": true}),
            )
            .expect("put");
    }
    for i in 5..8 {
        batch.delete("notes", format!("n{i:02}"));
    }
    a.store.write(batch).await.expect("write");
    a.engine.sync().await.expect("a syncs");
    let mut batch = WriteBatch::new();
    for i in 0..10 {
        batch
            .put("notes", format!("b{i:02}"), &json!({"b": i}))
            .expect("put");
    }
    b.store.write(batch).await.expect("write");
    b.engine.sync().await.expect("b syncs");
    a.engine.sync().await.expect("a syncs");
    let expected = a.snapshot("notes").await;
    assert_eq!(expected.len(), 40 + 10 + 10 - 3);
    assert_eq!(b.snapshot("notes").await, expected);

    // The server's disk is lost; it comes back from the backup, which lacks all of that.
    server.stop().await.expect("stop");
    copy_db(&backup, &db);
    (addr, token, a, b, expected)
}

#[tokio::test]
async fn after_a_server_restore_devices_keep_everything_and_put_back_what_it_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, token, a, b, expected) = restored_after_28_writes(dir.path()).await;
    let server = sqlite_server_at(addr, &dir.path().join("server.db")).await;

    // The devices' cursors are past the end of the restored log: a full re-sync, whose sweep
    // the heads contradict (the server lost each device's newest head). Nothing is removed,
    // nothing is pushed, and the report says why, every round.
    for device in [&a, &b] {
        for _ in 0..2 {
            let r = device.engine.sync().await.expect("sync after the restore");
            assert!(r.resynced, "{r:?}");
            assert!(reasons(&r).contains(&"own-head"), "{r:?}");
            assert_eq!((r.discarded, r.pushed, r.reuploaded), (0, 0, 0), "{r:?}");
            assert_eq!(device.snapshot("notes").await, expected);
        }
    }

    // The operator confirms the loss. A puts back everything the server lacks: its 10 new
    // records, its 5 edits and 3 deletions (the server serves older versions of those), and
    // B's 10 records (which it holds too).
    a.engine.reupload_to_server().await.expect("reupload");
    let r = a.engine.sync().await.expect("a reuploads");
    assert!(r.resynced && r.withheld.is_empty(), "{r:?}");
    assert_eq!((r.reuploaded, r.discarded), (28, 0), "{r:?}");
    assert!(r.pushed >= 28, "{r:?}");
    // B walks the log again too and finds it whole: nothing of its own to put back.
    b.engine.reupload_to_server().await.expect("reupload");
    let r = b.engine.sync().await.expect("b re-syncs");
    assert!(r.resynced && r.withheld.is_empty(), "{r:?}");
    assert_eq!((r.reuploaded, r.discarded), (0, 0), "{r:?}");
    assert_eq!(b.snapshot("notes").await, expected);

    // Back to ordinary rounds.
    back_to_ordinary_rounds([&a, &b], &expected).await;
    a_new_device_gets_everything(dir.path(), &server, &token, &expected).await;
}

/// A new device gets everything from the server alone, deletions included.
async fn a_new_device_gets_everything(
    dir: &Path,
    server: &RunningServer,
    token: &str,
    expected: &Vec<(String, serde_json::Value)>,
) {
    let c = Device::join(&dir.join("c.db"), &server.url(), token, PASS)
        .await
        .expect("join");
    c.engine.sync().await.expect("c syncs");
    assert_eq!(&c.snapshot("notes").await, expected);
    for i in 5..8 {
        assert_eq!(
            c.store
                .get("notes", &format!("n{i:02}"))
                .await
                .expect("get"),
            None
        );
    }
}

/// Ordinary rounds on both devices: no re-sync, no findings, nothing put back, no conflicts,
/// the state unchanged, and the heads vouch for it again (digests compared); every store's
/// digest agrees with its records.
async fn back_to_ordinary_rounds(
    devices: [&Device; 2],
    expected: &Vec<(String, serde_json::Value)>,
) {
    let mut compared = 0;
    for _ in 0..2 {
        for device in devices {
            let r = device.engine.sync().await.expect("ordinary round");
            assert!(
                !r.resynced && !r.log_replaced && r.withheld.is_empty() && r.reuploaded == 0,
                "{r:?}"
            );
            assert_eq!(r.conflicts_pending, 0, "{r:?}");
            compared += r.digests_compared;
            assert_eq!(&device.snapshot("notes").await, expected);
        }
    }
    assert!(
        compared > 0,
        "no head vouched for the state after the recovery"
    );
    for device in devices {
        device
            .store
            .check()
            .await
            .expect("kept digest and records agree");
    }
}

/// `hearth-server --database sqlite:DB mark-restored`, the real binary; it must succeed and
/// report the one space of these tests.
fn mark_restored(db: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hearth-server"))
        .arg("--database")
        .arg(format!("sqlite:{}", db.display()))
        .arg("mark-restored")
        .output()
        .expect("run hearth-server mark-restored");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 spaces have a new log id"), "{stdout}");
}

#[tokio::test]
async fn a_declared_restore_makes_every_device_put_back_what_the_server_lost_by_itself() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, token, a, b, expected) = restored_after_28_writes(dir.path()).await;
    let db = dir.path().join("server.db");
    // The operator declares the restore with the real binary, before serving again.
    mark_restored(&db);
    let server = sqlite_server_at(addr, &db).await;

    // B syncs first: the new log id makes it walk the log again; it holds A's 18 writes and its
    // own 10, all of which the server lacks (or serves older versions of), and puts them back,
    // in the same round: no `own-head` finding, no round without pushing.
    let r = b.engine.sync().await.expect("b syncs after the restore");
    assert!(r.log_replaced && r.resynced, "{r:?}");
    assert!(r.withheld.is_empty(), "{r:?}");
    assert_eq!((r.reuploaded, r.discarded), (28, 0), "{r:?}");
    assert!(r.pushed >= 28, "{r:?}");
    assert_eq!(b.snapshot("notes").await, expected);
    // A finds what B put back: the same values, as versions that dominate its own (or equal
    // ones, settled without asking), nothing of its own left to put back.
    let r = a.engine.sync().await.expect("a syncs after the restore");
    assert!(r.log_replaced && r.resynced, "{r:?}");
    assert!(r.withheld.is_empty(), "{r:?}");
    assert_eq!(
        (r.reuploaded, r.discarded, r.conflicts_pending),
        (0, 0, 0),
        "{r:?}"
    );
    assert_eq!(a.snapshot("notes").await, expected);

    back_to_ordinary_rounds([&a, &b], &expected).await;
    a_new_device_gets_everything(dir.path(), &server, &token, &expected).await;

    // Declaring it again is harmless: one more walk each, and nothing put back but deletions
    // the server has meanwhile collected (a walk cannot tell a tombstone collected from one
    // lost; a deletion put back deletes nothing more), the state unchanged.
    server.stop().await.expect("stop");
    mark_restored(&db);
    let server = sqlite_server_at(addr, &db).await;
    for device in [&a, &b] {
        let r = device.engine.sync().await.expect("sync");
        assert!(r.log_replaced, "{r:?}");
        assert!(r.reuploaded <= 3 && r.discarded == 0, "{r:?}");
        assert_eq!(device.snapshot("notes").await, expected);
    }
    back_to_ordinary_rounds([&a, &b], &expected).await;
    drop(server);
}
