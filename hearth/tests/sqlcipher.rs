//! The encrypted store end to end on a SQLCipher file, with libsodium and with orion: the key
//! header in its sidecar file, the page key derived from the root key, typed errors for every
//! wrong choice, and byte-level interoperability of the two ciphers on real files.
//!
//! The implementation crates are dev-dependencies here, so this runs under the default features.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use backend_sqlcipher::SqlcipherStorage;
use crypto_orion::OrionCipher;
use crypto_sodium::SodiumCipher;
use hearth::store::sidecar;
use hearth::{
    Cipher, ErrorKind, KdfCost, OpenOptions, Passphrase, RecordKeys, Storage, Store, WriteBatch,
};
use serde_json::json;

const PASS: &str = "correct horse battery staple";

fn link() {
    // Name the crates so the linker keeps them and their registrations.
    let _ = (
        SqlcipherStorage::NAME,
        SodiumCipher::NAME,
        OrionCipher::NAME,
    );
    let _ = backend_sqlite::SqliteStorage::NAME;
}

async fn open(path: &Path, storage: &str, cipher: &str, pass: &str) -> hearth::Result<Store> {
    link();
    Store::builder()
        .path(path)
        .passphrase(pass)
        .storage(storage)
        .cipher(cipher)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
}

fn files_of(db: &Path) -> Vec<PathBuf> {
    ["", "-wal", "-shm", ".keys"]
        .iter()
        .map(|s| PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect()
}

fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    v.sort();
    v
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn sqlcipher_with_sodium_creates_writes_reopens_and_reads() {
    for cipher in ["sodium", "orion"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("app.db");
        let store = open(&db, "sqlcipher", cipher, PASS).await.expect("create");
        let info = store.info().await.expect("info");
        assert_eq!(
            (info.storage.as_str(), info.cipher.as_str()),
            ("sqlcipher", cipher)
        );
        assert!(store.storage().capabilities().encrypted_at_rest);
        let device = store.device();
        let mut batch = WriteBatch::new();
        for i in 0..300 {
            batch
                .put(
                    "notes",
                    format!("n{i:03}"),
                    &json!({"i": i, "body": "CANARYBODY"}),
                )
                .expect("put");
        }
        store.write(batch).await.expect("write");
        store.delete("notes", "n007").await.expect("delete");
        store.close().await.expect("close");

        let keys = sidecar::sidecar_path(&db);
        assert!(keys.exists(), "the key header lives next to the database");
        let header = std::fs::read(&db).expect("read");
        assert_ne!(
            &header[..16],
            b"SQLite format 3\0",
            "the whole file is encrypted"
        );

        let store = open(&db, "sqlcipher", cipher, PASS).await.expect("reopen");
        assert_eq!(store.device(), device, "device identity persists");
        assert_eq!(
            store.get("notes", "n042").await.expect("get"),
            Some(json!({"i": 42, "body": "CANARYBODY"}))
        );
        assert_eq!(store.get("notes", "n007").await.expect("get"), None);
        assert_eq!(
            store
                .scan("notes", Some("n1"), 1000)
                .await
                .expect("scan")
                .len(),
            100
        );
        let info = store.info().await.expect("info");
        assert_eq!((info.last_seq, info.pending), (301, 300));
        store.put("notes", "after", &json!(1)).await.expect("put");
        assert_eq!(store.info().await.expect("info").last_seq, 302);
        store.check().await.expect("integrity");
        store.close().await.expect("close");
    }
}

#[tokio::test]
async fn no_plaintext_reaches_any_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("canary.db");
    let pass = "CANARYPASSPHRASE and more";
    let store = open(&db, "sqlcipher", "sodium", pass).await.expect("open");
    let mut batch = WriteBatch::new();
    for i in 0..300 {
        batch
            .put(
                format!("CANARYCOLLECTION-{}", i % 3),
                format!("CANARYKEY-{i}"),
                &json!({"body": format!("CANARYVALUE number {i}")}),
            )
            .expect("put");
    }
    store.write(batch).await.expect("write");
    let canaries: [&[u8]; 5] = [
        b"CANARYCOLLECTION",
        b"CANARYKEY",
        b"CANARYVALUE",
        b"CANARYPASSPHRASE",
        b"hearth.device", // metadata keys are hidden too
    ];
    let check = |stage: &str| {
        let files = files_of(&db);
        assert!(files.len() >= 2, "{stage}: {files:?}");
        for f in files {
            let bytes = std::fs::read(&f).expect("read");
            for c in canaries {
                assert!(
                    !contains(&bytes, c),
                    "{stage}: {} contains {}",
                    f.display(),
                    String::from_utf8_lossy(c)
                );
            }
        }
    };
    check("open");
    store.close().await.expect("close");
    check("closed");
}

#[tokio::test]
async fn a_wrong_passphrase_is_typed_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("pass.db");
    let store = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create");
    store.put("notes", "a", &json!("kept")).await.expect("put");
    store.close().await.expect("close");
    let before = snapshot(dir.path());

    let err = open(&db, "sqlcipher", "sodium", "Tr0ub4dor&3").await.err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    assert!(!format!("{err:?}").contains("Tr0ub4dor"));
    assert!(
        snapshot(dir.path()) == before,
        "a failed unlock must not touch any file"
    );

    let store = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("right passphrase");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("kept"))
    );
}

#[tokio::test]
async fn opening_with_an_incompatible_storage_or_cipher_is_a_config_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let encrypted = dir.path().join("encrypted.db");
    let plain = dir.path().join("plain.db");
    open(&encrypted, "sqlcipher", "sodium", PASS)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
    open(&plain, "sqlite", "sodium", PASS)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
    let before = snapshot(dir.path());

    link();
    hearth::registry::register_cipher(hearth::registry::CipherRegistration {
        name: "other-format",
        make: || Arc::new(OtherFormat),
    })
    .expect("register");
    let cases = [
        (
            &encrypted,
            "sqlcipher",
            "other-format",
            "made with cipher 'sodium' (format hearth-1); cipher 'other-format' uses format other-1",
        ),
        (
            &encrypted,
            "sqlite",
            "sodium",
            "made with storage 'sqlcipher'",
        ),
        (&plain, "sqlcipher", "sodium", "plaintext SQLite"),
    ];
    for (path, storage, cipher, says) in cases {
        let err = open(path, storage, cipher, PASS).await.err();
        assert_eq!(
            err.as_ref().map(|e| e.kind()),
            Some(ErrorKind::Config),
            "{storage}+{cipher}: {err:?}"
        );
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(says), "{storage}+{cipher}: {msg}");
    }
    assert!(snapshot(dir.path()) == before, "refusals write nothing");
    // The key header in the storage's metadata names its cipher too.
    let err = open(&plain, "sqlite", "other-format", PASS).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("made with cipher 'sodium'")
    );
    // orion and sodium share the format: either opens a store the other made.
    for path in [&encrypted, &plain] {
        let storage = if path == &encrypted {
            "sqlcipher"
        } else {
            "sqlite"
        };
        open(path, storage, "orion", PASS)
            .await
            .expect("orion opens a sodium store")
            .close()
            .await
            .expect("close");
    }

    // Opening the SQLCipher storage directly (with the right page key) and handing it to
    // Store::open is refused too, rather than given a second key header.
    let ring = sidecar::read(&SodiumCipher, &sidecar::sidecar_path(&encrypted))
        .expect("read")
        .expect("present");
    let root = ring
        .unlock(&SodiumCipher, &Passphrase::new(PASS))
        .expect("unlock");
    let page_key = sidecar::page_key(&SodiumCipher, &root).expect("page key");
    let storage = SqlcipherStorage::open(&encrypted, false, &page_key)
        .await
        .expect("storage");
    let err = Store::open(
        Arc::new(storage),
        SodiumCipher::shared(),
        OpenOptions::new(PASS)
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS),
    )
    .await
    .err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Config),
        "{err:?}"
    );
    let store = open(&encrypted, "sqlcipher", "sodium", PASS)
        .await
        .expect("still opens");
    store.close().await.expect("close");
}

/// orion under a byte format of its own: a cipher that cannot read hearth-1 stores.
#[derive(Debug)]
struct OtherFormat;
impl Cipher for OtherFormat {
    fn name(&self) -> &'static str {
        "other-format"
    }
    fn format(&self) -> &'static str {
        "other-1"
    }
    fn aead_seal(
        &self,
        k: &hearth::SecretKey,
        n: &[u8; 24],
        a: &[u8],
        p: &[u8],
    ) -> hearth::Result<Vec<u8>> {
        OrionCipher.aead_seal(k, n, a, p)
    }
    fn aead_open(
        &self,
        k: &hearth::SecretKey,
        n: &[u8; 24],
        a: &[u8],
        c: &[u8],
    ) -> hearth::Result<Vec<u8>> {
        OrionCipher.aead_open(k, n, a, c)
    }
    fn password_kdf(
        &self,
        p: &[u8],
        s: &[u8; 16],
        c: KdfCost,
    ) -> hearth::Result<hearth::SecretKey> {
        OrionCipher.password_kdf(p, s, c)
    }
    fn keyed_hash(&self, k: &hearth::SecretKey, parts: &[&[u8]]) -> hearth::Result<[u8; 32]> {
        OrionCipher.keyed_hash(k, parts)
    }
    fn fill_random(&self, b: &mut [u8]) -> hearth::Result<()> {
        OrionCipher.fill_random(b)
    }
    fn x25519_public(&self, s: &hearth::SecretKey) -> hearth::Result<[u8; 32]> {
        OrionCipher.x25519_public(s)
    }
    fn x25519(&self, s: &hearth::SecretKey, p: &[u8; 32]) -> hearth::Result<hearth::SecretKey> {
        OrionCipher.x25519(s, p)
    }
}

/// Switching the cipher of a store: written through `Store::builder()` with one, reopened with
/// the other, written again, and read back with the first, on SQLite and on SQLCipher.
#[tokio::test]
async fn a_store_switches_between_orion_and_sodium_through_the_builder() {
    for storage in ["sqlite", "sqlcipher"] {
        for (first, second) in [("orion", "sodium"), ("sodium", "orion")] {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = dir.path().join("switch.db");
            let s = open(&db, storage, first, PASS).await.expect("create");
            s.put("notes", "a", &json!({"by": first}))
                .await
                .expect("put");
            let device = s.device();
            s.close().await.expect("close");

            let s = open(&db, storage, second, PASS)
                .await
                .unwrap_or_else(|e| panic!("{storage}: {first} -> {second}: {e}"));
            assert_eq!(s.cipher().name(), second);
            assert_eq!(s.device(), device);
            assert_eq!(
                s.get("notes", "a").await.expect("get"),
                Some(json!({"by": first}))
            );
            s.put("notes", "b", &json!({"by": second}))
                .await
                .expect("put");
            s.check().await.expect("integrity");
            s.close().await.expect("close");

            let s = open(&db, storage, first, PASS).await.expect("back");
            assert_eq!(
                s.get("notes", "b").await.expect("get"),
                Some(json!({"by": second}))
            );
            assert_eq!(s.info().await.expect("info").last_seq, 2);
            s.close().await.expect("close");
        }
    }
}

/// With no names given, an existing store opens with the storage and cipher its key header
/// records, not the compiled-in defaults (`sqlite` and `orion` here).
#[tokio::test]
async fn an_existing_store_opens_with_the_names_it_records() {
    for storage in ["sqlcipher", "sqlite"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("recorded.db");
        let s = open(&db, storage, "sodium", PASS).await.expect("create");
        s.put("notes", "a", &json!(1)).await.expect("put");
        s.close().await.expect("close");

        let s = Store::builder()
            .path(&db)
            .passphrase(PASS)
            .create(false)
            .open()
            .await
            .unwrap_or_else(|e| panic!("{storage}: {e}"));
        assert_eq!(s.storage().name(), storage);
        assert_eq!(s.cipher().name(), "sodium");
        assert_eq!(s.get("notes", "a").await.expect("get"), Some(json!(1)));
        s.close().await.expect("close");
        // A wrong passphrase is still the passphrase's fault, not a name's.
        let err = Store::builder()
            .path(&db)
            .passphrase("wrong")
            .open()
            .await
            .err()
            .map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::WrongPassphrase));
    }
    // A new store still gets the defaults.
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Store::builder()
        .path(dir.path().join("new.db"))
        .passphrase(PASS)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("create");
    assert_eq!((s.storage().name(), s.cipher().name()), ("sqlite", "orion"));
}

#[tokio::test]
async fn a_missing_damaged_or_foreign_key_header_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("one.db");
    let two = dir.path().join("two.db");
    for db in [&one, &two] {
        let s = open(db, "sqlcipher", "sodium", PASS).await.expect("create");
        s.put("notes", "a", &json!(db.display().to_string()))
            .await
            .expect("put");
        s.close().await.expect("close");
    }
    let keys_one = sidecar::sidecar_path(&one);
    let keys_two = sidecar::sidecar_path(&two);
    let original = std::fs::read(&keys_one).expect("read");

    // Another store's key header, same passphrase: its page key does not open this file.
    std::fs::copy(&keys_two, &keys_one).expect("copy");
    let before = std::fs::read(&one).expect("read");
    let err = open(&one, "sqlcipher", "sodium", PASS).await.err();
    assert_eq!(
        err.as_ref().map(|e| e.kind()),
        Some(ErrorKind::WrongKey),
        "{err:?}"
    );
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("does not belong")
    );
    assert!(std::fs::read(&one).expect("read") == before);

    // A damaged key header is Corrupt, not a wrong passphrase.
    let mut damaged = original.clone();
    damaged[40] ^= 0x01;
    std::fs::write(&keys_one, &damaged).expect("write");
    let err = open(&one, "sqlcipher", "sodium", PASS)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Corrupt));

    // No key header: never replaced by a new one, whatever `create` says.
    std::fs::remove_file(&keys_one).expect("remove");
    let err = open(&one, "sqlcipher", "sodium", PASS).await.err();
    assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert!(
        err.map(|e| e.to_string())
            .unwrap_or_default()
            .contains("no key header file")
    );
    assert!(!keys_one.exists(), "no new key header was written");
    assert!(std::fs::read(&one).expect("read") == before);

    // Restored, it opens again.
    std::fs::write(&keys_one, &original).expect("restore");
    let s = open(&one, "sqlcipher", "sodium", PASS)
        .await
        .expect("reopen");
    assert_eq!(
        s.get("notes", "a").await.expect("get"),
        Some(json!(one.display().to_string()))
    );
    s.close().await.expect("close");

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys_two)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key header file is private");
    }
}

#[tokio::test]
async fn creation_interrupted_after_the_key_header_resumes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("resume.db");
    let s = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create");
    let space = s.space();
    s.close().await.expect("close");
    // As if the process died after writing the key header and before the database.
    for f in files_of(&db) {
        if !f.display().to_string().ends_with(".keys") {
            std::fs::remove_file(f).expect("remove");
        }
    }
    let err = Store::builder()
        .path(&db)
        .passphrase(PASS)
        .storage("sqlcipher")
        .cipher("sodium")
        .create(false)
        .open()
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    assert!(!db.exists());
    // A wrong passphrase does not get to create the database either.
    let err = open(&db, "sqlcipher", "sodium", "wrong")
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::WrongPassphrase));
    assert!(!db.exists());
    let s = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("resume");
    assert_eq!(
        s.space(),
        space,
        "the key header written first is the one used"
    );
    s.put("notes", "a", &json!(1)).await.expect("put");
    s.close().await.expect("close");
}

/// A store written through one cipher is read, file and all, by the other: key header from the
/// sidecar unlocked, page key derived, database opened, envelopes opened.
#[tokio::test]
async fn a_store_written_with_one_cipher_is_read_byte_for_byte_by_the_other() {
    let pairs: [(&str, &dyn Cipher); 2] = [("sodium", &OrionCipher), ("orion", &SodiumCipher)];
    for (writer, reader) in pairs {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("interop.db");
        let store = open(&db, "sqlcipher", writer, PASS).await.expect("create");
        store
            .put("notes", "hello", &json!({"from": writer}))
            .await
            .expect("put");
        let id = store.record_id("notes", "hello").expect("id");
        store.close().await.expect("close");

        let ring = sidecar::read(reader, &sidecar::sidecar_path(&db))
            .expect("read")
            .expect("present");
        assert_eq!(ring.cipher, writer);
        let root = ring.unlock(reader, &Passphrase::new(PASS)).expect("unlock");
        let page_key = sidecar::page_key(reader, &root).expect("page key");
        let storage = SqlcipherStorage::open(&db, false, &page_key)
            .await
            .expect("the other cipher's page key opens the file");
        let keys = RecordKeys::derive(reader, ring.space, ring.key_id, &root).expect("keys");
        assert_eq!(keys.record_id(reader, "notes", "hello").expect("id"), id);
        let row = storage.get(&id).await.expect("get").expect("row");
        let payload = keys
            .open(reader, &id, &row.envelope)
            .expect("open envelope");
        assert_eq!(
            payload.value.as_deref(),
            Some(format!(r#"{{"from":"{writer}"}}"#).as_bytes())
        );
        storage.close().await.expect("close");
    }
}

#[tokio::test]
async fn a_key_header_file_is_never_replaced_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("once.db");
    open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create")
        .close()
        .await
        .expect("close");
    let keys = sidecar::sidecar_path(&db);
    let before = snapshot(dir.path());
    let ring = sidecar::read(&SodiumCipher, &keys)
        .expect("read")
        .expect("present");
    let (other, _root) = hearth::keyring::Keyring::create(
        &SodiumCipher,
        &Passphrase::new("another"),
        KdfCost::INSECURE_FOR_TESTS,
        ring.space,
        "sqlcipher",
    )
    .expect("create");
    let err = sidecar::write_new(&SodiumCipher, &keys, &other).err();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Conflict));
    assert!(
        snapshot(dir.path()) == before,
        "nothing replaced, no temporary file left"
    );

    // A fresh one is written whole: it reads back as what was written.
    let fresh = dir.path().join("fresh.db.keys");
    sidecar::write_new(&SodiumCipher, &fresh, &other).expect("write");
    let back = sidecar::read(&OrionCipher, &fresh)
        .expect("read")
        .expect("present");
    assert_eq!(
        back.encode().expect("encode"),
        other.encode().expect("encode")
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains(".tmp-")), "{names:?}");
}

fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

#[tokio::test]
async fn passphrase_change_and_recovery_code_replace_the_key_header_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("life.db");
    let keys = sidecar::sidecar_path(&db);
    let store = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create");
    store
        .put("notes", "a", &json!("secret"))
        .await
        .expect("put");
    let code = store
        .create_recovery_code(KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("a recovery code on a SQLCipher store");
    store
        .change_passphrase(&"new passphrase".into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("a passphrase change on a SQLCipher store");
    // The same store keeps working, and changes again from its new header.
    store
        .change_passphrase(&"newer passphrase".into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("second change");
    store.close().await.expect("close");
    assert!(temp_files(dir.path()).is_empty(), "no temporary file left");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&keys).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the replaced key header stays private");
    }

    for old in [PASS, "new passphrase"] {
        assert_eq!(
            open(&db, "sqlcipher", "sodium", old)
                .await
                .err()
                .map(|e| e.kind()),
            Some(ErrorKind::WrongPassphrase),
            "{old}"
        );
    }
    let store = open(&db, "sqlcipher", "orion", "newer passphrase")
        .await
        .expect("the new passphrase opens it, with either cipher");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("secret"))
    );
    store.close().await.expect("close");

    // The passphrase is lost: the recovery code (typed sloppily) sets a new one.
    let before = std::fs::read(&keys).expect("read");
    let wrong = Store::builder()
        .path(&db)
        .passphrase("x")
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .recover("AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH")
        .await;
    assert_eq!(
        wrong.err().map(|e| e.kind()),
        Some(ErrorKind::WrongPassphrase)
    );
    assert!(
        std::fs::read(&keys).expect("read") == before,
        "a wrong code changes nothing"
    );
    let sloppy = code.to_lowercase().replace('-', " ");
    let store = Store::builder()
        .path(&db)
        .passphrase("third passphrase")
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .recover(&sloppy)
        .await
        .expect("recover");
    assert_eq!(store.storage().name(), "sqlcipher");
    assert_eq!(
        store.get("notes", "a").await.expect("get"),
        Some(json!("secret"))
    );
    store.close().await.expect("close");
    assert!(
        open(&db, "sqlcipher", "sodium", "third passphrase")
            .await
            .is_ok()
    );
    assert!(temp_files(dir.path()).is_empty(), "no temporary file left");
}

/// A crash during a passphrase change leaves the old key header file (and perhaps the new one
/// under its temporary name) or the new one in place: each opens the same database.
#[tokio::test]
async fn either_key_header_a_crashed_change_can_leave_unlocks_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("crash.db");
    let keys = sidecar::sidecar_path(&db);
    let s = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create");
    s.put("notes", "a", &json!(1)).await.expect("put");
    s.close().await.expect("close");
    // What the change writes before its rename: the root key rewrapped for the new passphrase.
    let ring = sidecar::read(&SodiumCipher, &keys)
        .expect("read")
        .expect("present");
    let root = ring
        .unlock(&SodiumCipher, &Passphrase::new(PASS))
        .expect("unlock");
    let mut next = ring.clone();
    next.wrap(
        &SodiumCipher,
        &Passphrase::new("after"),
        KdfCost::INSECURE_FOR_TESTS,
        &root,
    )
    .expect("wrap");
    let tmp = dir.path().join(".crash.db.keys.tmp-0011223344556677");
    std::fs::write(&tmp, sidecar::encode(&SodiumCipher, &next).expect("encode")).expect("write");

    // Killed before the rename: the old file is in place and opens with the old passphrase.
    let s = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("the old header opens it");
    assert_eq!(s.get("notes", "a").await.expect("get"), Some(json!(1)));
    s.close().await.expect("close");
    // Killed after the rename: the new file opens the same database with the new passphrase.
    std::fs::rename(&tmp, &keys).expect("rename");
    let s = open(&db, "sqlcipher", "sodium", "after")
        .await
        .expect("the new header opens it");
    assert_eq!(s.get("notes", "a").await.expect("get"), Some(json!(1)));
    s.close().await.expect("close");
}

#[tokio::test]
async fn a_concurrent_key_header_change_is_detected_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("two.db");
    let keys = sidecar::sidecar_path(&db);
    let one = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("create");
    let two = open(&db, "sqlcipher", "sodium", PASS)
        .await
        .expect("second handle");

    // Another process holds the lock: refused, nothing written.
    let before = std::fs::read(&keys).expect("read");
    let lock = std::fs::File::create(sidecar::lock_path(&keys)).expect("lock file");
    lock.try_lock().expect("lock");
    let err = one
        .change_passphrase(&"blocked".into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Conflict));
    assert!(std::fs::read(&keys).expect("read") == before);
    drop(lock);

    // One handle changes the passphrase; the other, holding the old header, is refused.
    one.change_passphrase(&"one".into(), KdfCost::INSECURE_FOR_TESTS)
        .await
        .expect("change");
    let after = std::fs::read(&keys).expect("read");
    for err in [
        two.change_passphrase(&"two".into(), KdfCost::INSECURE_FOR_TESTS)
            .await
            .err(),
        two.create_recovery_code(KdfCost::INSECURE_FOR_TESTS)
            .await
            .err(),
    ] {
        assert_eq!(
            err.as_ref().map(|e| e.kind()),
            Some(ErrorKind::Conflict),
            "{err:?}"
        );
    }
    assert!(
        std::fs::read(&keys).expect("read") == after,
        "the first change stands"
    );
    assert!(temp_files(dir.path()).is_empty());
    one.close().await.expect("close");
    two.close().await.expect("close");
    assert!(open(&db, "sqlcipher", "sodium", "one").await.is_ok());
}
