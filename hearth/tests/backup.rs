//! Backups on real files: round trip, wrong passphrase, every kind of damage.

use std::path::Path;
use std::sync::Arc;

use hearth::backend_sqlite::SqliteStorage;
use hearth::crypto_orion::OrionCipher;
use hearth::{ErrorKind, KdfCost, OpenOptions, Store, WriteBatch};
use serde_json::json;

const PASS: &str = "backup passphrase";

async fn source(dir: &Path) -> Store {
    let store = Store::builder()
        .path(dir.join("source.db"))
        .passphrase(PASS)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..700 {
        batch
            .put(
                "notes",
                format!("n{i:04}"),
                &json!({"i": i, "body": "x".repeat(200)}),
            )
            .expect("put");
    }
    store.write(batch).await.expect("write");
    store.delete("notes", "n0003").await.expect("delete");
    store
}

async fn export(store: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    store.export(&mut out).await.expect("export");
    out
}

async fn import(bytes: &[u8], dest: &Path, pass: &str) -> hearth::Result<Store> {
    let storage = Arc::new(SqliteStorage::open(dest, true).await?);
    let mut input = bytes;
    Store::import(
        &mut input,
        storage,
        Arc::new(OrionCipher),
        OpenOptions::new(pass).kdf_cost(KdfCost::INSECURE_FOR_TESTS),
    )
    .await
    .map(|(s, _)| s)
}

#[tokio::test]
async fn a_backup_restores_every_record_as_a_new_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source(dir.path()).await;
    let bytes = export(&src).await;
    assert!(
        !bytes.windows(6).any(|w| w == b"xxxxxx"),
        "no plaintext in the backup"
    );
    let restored = import(&bytes, &dir.path().join("restored.db"), PASS)
        .await
        .expect("import");
    assert_eq!(restored.space(), src.space());
    assert_ne!(
        restored.device(),
        src.device(),
        "a restored store is a new device"
    );
    assert_eq!(
        restored.get("notes", "n0042").await.expect("get"),
        src.get("notes", "n0042").await.expect("get")
    );
    assert_eq!(restored.get("notes", "n0003").await.expect("get"), None);
    assert_eq!(
        restored
            .scan("notes", None, 1000)
            .await
            .expect("scan")
            .len(),
        699
    );
    // Unsynced writes of the source are pending again, as the new device's writes.
    let info = restored.info().await.expect("info");
    assert_eq!(info.pending, 700);
    let rec = restored
        .get_record("notes", "n0001")
        .await
        .expect("get")
        .expect("exists");
    assert!(rec.version.get(&restored.device()) > 0);
}

#[tokio::test]
async fn a_wrong_passphrase_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = export(&source(dir.path()).await).await;
    let dest = dir.path().join("wrong.db");
    let err = import(&bytes, &dest, "not it")
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongPassphrase));
    let storage = SqliteStorage::open(&dest, false).await.expect("open");
    assert!(
        hearth::Storage::scan_all(&storage, None, 10)
            .await
            .expect("scan")
            .is_empty()
    );
    assert!(
        hearth::Storage::meta_get(&storage, "hearth.keyring")
            .await
            .expect("meta")
            .is_none()
    );
}

#[tokio::test]
async fn damage_anywhere_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = export(&source(dir.path()).await).await;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for pos in [
        0,
        9,
        30,
        60,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        let mut b = bytes.clone();
        b[pos] ^= 0x20;
        cases.push((format!("flip at {pos}"), b));
    }
    for cut in [5, 40, bytes.len() / 2, bytes.len() - 17, bytes.len() - 1] {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec()));
    }
    let mut extra = bytes.clone();
    extra.push(0);
    cases.push(("trailing byte".into(), extra));
    let mut future = bytes.clone();
    future[8] = 9;
    cases.push(("future format".into(), future));
    for (i, (what, b)) in cases.iter().enumerate() {
        let err = import(b, &dir.path().join(format!("bad{i}.db")), PASS)
            .await
            .err();
        let kind = err.as_ref().map(|e| e.kind());
        assert!(
            matches!(
                kind,
                Some(
                    ErrorKind::Tampered
                        | ErrorKind::Corrupt
                        | ErrorKind::Unsupported
                        | ErrorKind::WrongPassphrase
                )
            ),
            "{what}: {err:?}"
        );
    }
}

#[tokio::test]
async fn every_header_byte_is_authenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::builder()
        .path(dir.path().join("small.db"))
        .passphrase(PASS)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("open");
    store.put("notes", "k", &json!("v")).await.expect("put");
    let bytes = export(&store).await;
    let header_len =
        8 + 1 + 16 + 4 + u32::from_le_bytes([bytes[25], bytes[26], bytes[27], bytes[28]]) as usize;
    for pos in (0..header_len).step_by(3) {
        let mut b = bytes.clone();
        b[pos] ^= 0x01;
        let err = import(&b, &dir.path().join(format!("h{pos}.db")), PASS).await;
        assert!(err.is_err(), "a flipped header byte at {pos} was accepted");
    }
}
