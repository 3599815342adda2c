//! Backups on real files: round trip, wrong passphrase, every kind of damage.

use std::path::{Path, PathBuf};
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

fn link() {
    // Name the crates so the linker keeps them and their registrations.
    let _ = (
        backend_sqlcipher::SqlcipherStorage::NAME,
        crypto_sodium::SodiumCipher::NAME,
    );
}

async fn source_with(dir: &Path, storage: &str, cipher: &str) -> Store {
    link();
    let store = Store::builder()
        .path(dir.join(format!("source-{storage}-{cipher}.db")))
        .passphrase(PASS)
        .storage(storage)
        .cipher(cipher)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..600 {
        batch
            .put("notes", format!("n{i:04}"), &json!({"i": i, "by": cipher}))
            .expect("put");
    }
    store.write(batch).await.expect("write");
    store.delete("notes", "n0003").await.expect("delete");
    store
}

async fn import_with(
    bytes: &[u8],
    dest: &Path,
    storage: Option<&str>,
    cipher: Option<&str>,
    pass: &str,
) -> hearth::Result<Store> {
    let mut b = Store::builder().path(dest).passphrase(pass);
    if let Some(s) = storage {
        b = b.storage(s);
    }
    if let Some(c) = cipher {
        b = b.cipher(c);
    }
    let mut input = bytes;
    b.import(&mut input).await.map(|(s, _)| s)
}

async fn same_records(a: &Store, b: &Store) {
    let all_a = a.scan("notes", None, 10_000).await.expect("scan");
    let all_b = b.scan("notes", None, 10_000).await.expect("scan");
    assert_eq!(all_a.len(), 599);
    assert!(all_a == all_b, "the records survive");
    assert_eq!(b.get("notes", "n0003").await.expect("get"), None);
}

#[tokio::test]
async fn a_backup_made_with_one_cipher_imports_with_the_other() {
    for (made, read) in [("orion", "sodium"), ("sodium", "orion")] {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = source_with(dir.path(), "sqlite", made).await;
        let bytes = export(&src).await;

        // Through the builder, naming the other cipher.
        let dest = dir.path().join("builder.db");
        let restored = import_with(&bytes, &dest, None, Some(read), PASS)
            .await
            .unwrap_or_else(|e| panic!("{made} -> {read}: {e}"));
        assert_eq!(restored.cipher().name(), read);
        assert_eq!(restored.space(), src.space());
        same_records(&src, &restored).await;
        restored.close().await.expect("close");

        // Through Store::import, with the other cipher's object.
        let other: Arc<dyn hearth::Cipher> = match read {
            "sodium" => crypto_sodium::SodiumCipher::shared(),
            _ => Arc::new(OrionCipher),
        };
        let storage = Arc::new(
            SqliteStorage::open(&dir.path().join("direct.db"), true)
                .await
                .expect("storage"),
        );
        let mut input = &bytes[..];
        let (restored, summary) = Store::import(
            &mut input,
            storage,
            other,
            OpenOptions::new(PASS).kdf_cost(KdfCost::INSECURE_FOR_TESTS),
        )
        .await
        .unwrap_or_else(|e| panic!("{made} -> {read}: {e}"));
        assert_eq!(summary.rows, 600);
        same_records(&src, &restored).await;
    }
}

#[tokio::test]
async fn a_backup_imports_into_another_storage_and_cipher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source_with(dir.path(), "sqlite", "orion").await;
    let bytes = export(&src).await;
    let dest = dir.path().join("encrypted.db");
    let restored = import_with(&bytes, &dest, Some("sqlcipher"), Some("sodium"), PASS)
        .await
        .expect("sqlite+orion backup into sqlcipher+sodium");
    let info = restored.info().await.expect("info");
    assert_eq!(
        (info.storage.as_str(), info.cipher.as_str()),
        ("sqlcipher", "sodium")
    );
    same_records(&src, &restored).await;
    restored.close().await.expect("close");
    let head = std::fs::read(&dest).expect("read");
    assert_ne!(
        &head[..16],
        b"SQLite format 3\0",
        "the whole file is encrypted"
    );
    assert!(hearth::store::sidecar::sidecar_path(&dest).exists());

    // It reopens without naming anything, and goes back the other way too.
    let reopened = Store::builder()
        .path(&dest)
        .passphrase(PASS)
        .create(false)
        .open()
        .await
        .expect("reopen");
    assert_eq!(reopened.storage().name(), "sqlcipher");
    reopened.check().await.expect("integrity");
    let back = export(&reopened).await;
    let plain = dir.path().join("plain-again.db");
    let restored = import_with(&back, &plain, Some("sqlite"), None, PASS)
        .await
        .expect("sqlcipher+sodium backup into sqlite");
    assert_eq!(
        restored.cipher().name(),
        "sodium",
        "the backup's cipher by default"
    );
    same_records(&src, &restored).await;

    // A store already at the path is refused and left alone.
    let err = import_with(&bytes, &dest, Some("sqlcipher"), None, PASS)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Config));
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A failed import leaves no store at the path and no temporary file: the rows of the chunks
/// before the damage were written, but only to a temporary store that is removed.
#[tokio::test]
async fn a_failed_import_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source_with(dir.path(), "sqlite", "sodium").await;
    let bytes = export(&src).await;
    src.close().await.expect("close");
    let before = names_in(dir.path());
    let mut cases: Vec<(String, Vec<u8>, &str)> =
        vec![("wrong passphrase".into(), bytes.clone(), "nope")];
    for cut in [20, bytes.len() / 2, bytes.len() - 17, bytes.len() - 1] {
        cases.push((format!("cut at {cut}"), bytes[..cut].to_vec(), PASS));
    }
    // The last chunk's bytes: earlier chunks were already restored when the damage is found.
    for pos in [100, bytes.len() * 2 / 3, bytes.len() - 2] {
        let mut b = bytes.clone();
        b[pos] ^= 0x04;
        cases.push((format!("flip at {pos}"), b, PASS));
    }
    for storage in ["sqlite", "sqlcipher"] {
        for (what, b, pass) in &cases {
            let dest = dir.path().join("target.db");
            let err = import_with(b, &dest, Some(storage), None, pass).await.err();
            assert!(err.is_some(), "{storage}: {what}: accepted");
            assert!(
                !dest.exists(),
                "{storage}: {what}: a store was left at the path"
            );
            assert_eq!(
                names_in(dir.path()),
                before,
                "{storage}: {what}: files were left behind ({err:?})"
            );
        }
    }
    // The intact backup still imports at the same path.
    let dest = dir.path().join("target.db");
    let ok = import_with(&bytes, &dest, Some("sqlcipher"), None, PASS)
        .await
        .expect("import");
    assert_eq!(
        ok.scan("notes", None, 10_000).await.expect("scan").len(),
        599
    );
}

/// An import into a SQLCipher store that stopped between moving the database into place and
/// moving its key header file: the next open finds the key header under its temporary name,
/// checks it belongs to this database, and finishes the move. A stray key header of another
/// store under a similar name is left alone.
#[tokio::test]
async fn an_import_stopped_before_its_key_header_moved_finishes_on_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = source_with(dir.path(), "sqlite", "orion").await;
    let bytes = export(&src).await;
    let tmp = dir.path().join(".target.db.import-0011223344556677");
    let dest = dir.path().join("target.db");
    import_with(&bytes, &tmp, Some("sqlcipher"), None, PASS)
        .await
        .expect("import")
        .close()
        .await
        .expect("close");
    // Another store's key header under a temporary name that sorts first.
    let decoy = dir.path().join(".target.db.import-0000000000000000");
    Store::builder()
        .path(&decoy)
        .passphrase(PASS)
        .storage("sqlcipher")
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("decoy")
        .close()
        .await
        .expect("close");
    std::fs::remove_file(&decoy).expect("remove the decoy's database");
    // The crash: the database moved, its key header did not.
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", tmp.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", dest.display())).expect("move");
        }
    }
    let orphan = PathBuf::from(format!("{}.keys", tmp.display()));
    let decoy_keys = PathBuf::from(format!("{}.keys", decoy.display()));
    assert!(orphan.exists() && decoy_keys.exists());

    let open = |pass: &'static str| {
        Store::builder()
            .path(&dest)
            .passphrase(pass)
            .storage("sqlcipher")
            .create(false)
            .open()
    };
    assert_eq!(
        open("wrong").await.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase),
        "a wrong passphrase is told as such, and claims nothing"
    );
    assert!(orphan.exists());
    let restored = open(PASS).await.expect("the open finishes the import");
    same_records(&src, &restored).await;
    restored.close().await.expect("close");
    assert!(!orphan.exists(), "the key header moved into place");
    assert!(PathBuf::from(format!("{}.keys", dest.display())).exists());
    assert!(
        decoy_keys.exists(),
        "another store's key header is not claimed"
    );
    assert!(open(PASS).await.is_ok(), "and it opens as usual afterwards");
}
