//! `Storage::rekey`: every page moves to the new page key in one transaction, and a process
//! killed at any point of it leaves a file that exactly one of the two keys opens, whole.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use backend_sqlcipher::SqlcipherStorage;
use sync_core::{Batch, CollectionId, ErrorKind, RecordId, SecretKey, Storage, StoredRecord};

const ROWS: u32 = 8_000;
const CHUNK: u32 = 1_000;

fn key(byte: u8) -> SecretKey {
    SecretKey::from_bytes([byte; 32])
}

fn record_id(i: u32) -> RecordId {
    let mut id = [0u8; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    RecordId(id)
}

/// A 2 KiB envelope that depends on `i` (so a swapped or stale page shows).
fn envelope(i: u32) -> Vec<u8> {
    (0..2048u32)
        .map(|j| (i.wrapping_mul(31).wrapping_add(j.wrapping_mul(7)) % 251) as u8)
        .collect()
}

async fn fill(storage: &SqlcipherStorage) {
    for start in (0..ROWS).step_by(CHUNK as usize) {
        let mut batch = Batch::default();
        for i in start..start + CHUNK {
            batch.puts.push(StoredRecord {
                id: record_id(i),
                collection: CollectionId([9; 32]),
                envelope: envelope(i),
                deleted: false,
                pending_seq: None,
                sync: Vec::new(),
            });
        }
        storage.commit(batch).await.expect("commit");
    }
}

/// Every row is there with its own bytes, and both integrity checks pass.
async fn assert_whole(storage: &SqlcipherStorage) {
    storage.check().await.expect("cipher and b-tree integrity");
    let mut after = None;
    let mut seen = 0u32;
    loop {
        let rows = storage.scan_all(after.as_ref(), 1000).await.expect("scan");
        let Some(last) = rows.last() else { break };
        after = Some(last.id);
        for row in rows {
            let i = u32::from_be_bytes([row.id.0[0], row.id.0[1], row.id.0[2], row.id.0[3]]);
            assert_eq!(row.id, record_id(i));
            assert_eq!(row.envelope, envelope(i), "row {i}");
            seen += 1;
        }
    }
    assert_eq!(seen, ROWS, "every row survives");
}

fn wal_files(db: &Path) -> Vec<PathBuf> {
    ["-wal", "-shm"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .collect()
}

#[tokio::test]
async fn rekey_moves_every_page_to_the_new_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rekey.db");
    let storage = SqlcipherStorage::open(&path, true, &key(1))
        .await
        .expect("create");
    fill(&storage).await;
    storage.rekey(&key(2)).await.expect("rekey");
    // The same handle goes on reading and writing under the new key.
    assert_whole(&storage).await;
    storage
        .commit(Batch {
            meta: vec![("after".to_owned(), Some(b"rekey".to_vec()))],
            ..Batch::default()
        })
        .await
        .expect("write after rekey");
    storage.close().await.expect("close");
    for f in wal_files(&path) {
        assert!(
            !f.exists() || std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0) < 1 << 20,
            "the WAL was folded back: {}",
            f.display()
        );
    }

    let old = SqlcipherStorage::open(&path, false, &key(1)).await;
    assert_eq!(old.err().map(|e| e.kind()), Some(ErrorKind::WrongKey));
    let new = SqlcipherStorage::open(&path, false, &key(2))
        .await
        .expect("the new key opens it");
    assert_whole(&new).await;
    assert_eq!(
        new.meta_get("after").await.expect("meta"),
        Some(b"rekey".to_vec())
    );
    // And again, back and forth: a rotation after a rotation.
    new.rekey(&key(3)).await.expect("second rekey");
    new.close().await.expect("close");
    let third = SqlcipherStorage::open(&path, false, &key(3))
        .await
        .expect("third key");
    assert_whole(&third).await;
}

/// Child half of `rekey_survives_being_killed_at_any_point`: re-keys the file named in the
/// environment from one key byte to another, then exits. Does nothing when not run as a child.
#[tokio::test]
#[ignore = "run as a child process by rekey_survives_being_killed_at_any_point"]
async fn child_rekeys() {
    let Ok(path) = std::env::var("HEARTH_REKEY_PATH") else {
        return;
    };
    let byte = |name: &str| -> u8 {
        std::env::var(name)
            .expect("key byte")
            .parse()
            .expect("a number")
    };
    let storage = SqlcipherStorage::open(&path, false, &key(byte("HEARTH_REKEY_FROM")))
        .await
        .expect("open");
    storage
        .rekey(&key(byte("HEARTH_REKEY_TO")))
        .await
        .expect("rekey");
    storage.close().await.expect("close");
}

fn spawn_rekey(path: &Path, from: u8, to: u8) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child_rekeys", "--ignored", "--nocapture"])
        .env("HEARTH_REKEY_PATH", path)
        .env("HEARTH_REKEY_FROM", from.to_string())
        .env("HEARTH_REKEY_TO", to.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child")
}

#[tokio::test]
async fn rekey_survives_being_killed_at_any_point() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("killed.db");
    let storage = SqlcipherStorage::open(&path, true, &key(1))
        .await
        .expect("create");
    fill(&storage).await;
    storage.close().await.expect("close");

    // How long a whole re-key takes in a child here (process start included), to spread the
    // kill points over it.
    let started = Instant::now();
    let status = spawn_rekey(&path, 1, 2).wait().expect("child");
    assert!(status.success(), "an uninterrupted re-key succeeds");
    let whole = started.elapsed();
    let mut current = 2u8;

    let points = 12u32;
    let (mut under_old, mut under_new) = (0, 0);
    for k in 0..points {
        let next = if current == 2 { 3 } else { 2 };
        let delay = whole.mul_f64(1.2 * f64::from(k) / f64::from(points));
        let mut child = spawn_rekey(&path, current, next);
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL; it may have finished already.
        child.wait().expect("reap the child");

        let with_old = SqlcipherStorage::open(&path, false, &key(current)).await;
        let with_new = SqlcipherStorage::open(&path, false, &key(next)).await;
        let opened = match (with_old, with_new) {
            (Ok(s), Err(e)) => {
                assert_eq!(e.kind(), ErrorKind::WrongKey, "kill point {k}: {e}");
                under_old += 1;
                s
            }
            (Err(e), Ok(s)) => {
                assert_eq!(e.kind(), ErrorKind::WrongKey, "kill point {k}: {e}");
                under_new += 1;
                current = next;
                s
            }
            (Ok(_), Ok(_)) => panic!("kill point {k}: both keys open the file"),
            (Err(a), Err(b)) => panic!("kill point {k}: neither key opens the file: {a}; {b}"),
        };
        assert_whole(&opened).await;
        opened.close().await.expect("close");
    }
    println!(
        "rekey killed at {points} points over {whole:?}: {under_old} left under the old key, {under_new} under the new"
    );
}

#[tokio::test]
async fn storages_without_a_page_key_refuse_rekey() {
    let memory = sync_core::MemoryStorage::new();
    assert_eq!(
        memory.rekey(&key(1)).await.err().map(|e| e.kind()),
        Some(ErrorKind::Unsupported)
    );
}
