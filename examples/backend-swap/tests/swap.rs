//! The journal's data survives every switch: the other cipher on the same file, the other
//! storage through a backup, and the app binary driven by configuration names.

use std::path::Path;
use std::process::Command;

use example_backend_swap::{Backend, Journal};
use hearth::KdfCost;

const PASS: &str = "journal passphrase";

async fn open(path: &Path, backend: &Backend) -> Journal {
    Journal::open(path, PASS, backend, KdfCost::INSECURE_FOR_TESTS)
        .await
        .unwrap_or_else(|e| panic!("open with {backend:?}: {e}"))
}

fn entry(day: &str, text: &str) -> (String, String) {
    (day.to_owned(), text.to_owned())
}

#[tokio::test]
async fn the_data_survives_a_cipher_switch_and_a_storage_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = dir.path().join("journal.db");

    // Written with sqlite + orion.
    let j = open(&plain, &Backend::named("sqlite", "orion")).await;
    j.write("2026-12-01", "written with orion")
        .await
        .expect("write");
    j.close().await.expect("close");

    // The same file, switched to sodium by name; it writes too.
    let j = open(&plain, &Backend::named("sqlite", "sodium")).await;
    assert_eq!(j.backend(), ("sqlite", "sodium"));
    assert_eq!(
        j.entries().await.expect("entries"),
        vec![entry("2026-12-01", "written with orion")]
    );
    j.write("2026-12-02", "written with sodium")
        .await
        .expect("write");

    // Migrated to sqlcipher + sodium through a backup.
    let backup = dir.path().join("journal.backup");
    assert_eq!(j.export_to(&backup).await.expect("export"), 2);
    j.close().await.expect("close");
    let encrypted = dir.path().join("journal-encrypted.db");
    let j = Journal::import_from(
        &backup,
        &encrypted,
        PASS,
        &Backend::named("sqlcipher", "sodium"),
    )
    .await
    .expect("import");
    assert_eq!(j.backend(), ("sqlcipher", "sodium"));
    j.close().await.expect("close");
    let head = std::fs::read(&encrypted).expect("read");
    assert_ne!(
        &head[..16],
        b"SQLite format 3\0",
        "the migrated file is encrypted whole"
    );

    // Reopened with no names: the journal's own backends; then with orion by name.
    for backend in [
        Backend::default(),
        Backend {
            storage: None,
            cipher: Some("orion".into()),
        },
    ] {
        let j = open(&encrypted, &backend).await;
        assert_eq!(j.backend().0, "sqlcipher");
        assert_eq!(
            j.entries().await.expect("entries"),
            vec![
                entry("2026-12-01", "written with orion"),
                entry("2026-12-02", "written with sodium")
            ]
        );
        j.close().await.expect("close");
    }
}

fn app(dir: &Path, storage: &str, cipher: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_example-backend-swap"))
        .current_dir(dir)
        .env("JOURNAL_PASSPHRASE", PASS)
        .env("JOURNAL_STORAGE", storage)
        .env("JOURNAL_CIPHER", cipher)
        .args(args)
        .output()
        .expect("run the app");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The binary, configured by name: written with orion, read with sodium, moved to SQLCipher.
#[test]
fn the_app_switches_backends_by_configuration_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    app(
        d,
        "sqlite",
        "orion",
        &["j.db", "write", "2026-12-01", "first day"],
    );
    let out = app(d, "", "sodium", &["j.db", "list"]);
    assert!(
        out.contains("backend: storage=sqlite cipher=sodium"),
        "{out}"
    );
    assert!(out.contains("2026-12-01: first day"), "{out}");
    app(d, "", "", &["j.db", "export", "j.backup"]);
    let out = app(d, "sqlcipher", "sodium", &["enc.db", "import", "j.backup"]);
    assert!(
        out.contains("backend: storage=sqlcipher cipher=sodium"),
        "{out}"
    );
    assert!(out.contains("2026-12-01: first day"), "{out}");
    let out = app(d, "", "", &["enc.db", "list"]);
    assert!(out.contains("storage=sqlcipher"), "{out}");
    assert!(out.contains("2026-12-01: first day"), "{out}");
}
