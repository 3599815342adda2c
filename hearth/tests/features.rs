//! The facade's features link what they name. Run with the features on:
//! `cargo test -p hearth --features sqlcipher,sodium --test features` (as `.ci/run` does).
#![cfg(all(
    feature = "sqlite",
    feature = "sqlcipher",
    feature = "orion",
    feature = "sodium"
))]

use hearth::{KdfCost, Store, registry};
use serde_json::json;

#[tokio::test]
async fn every_enabled_implementation_is_registered_and_usable_by_name() {
    hearth::register_enabled().expect("register");
    hearth::register_enabled().expect("again: already present entries are skipped");
    registry::validate().expect("no duplicate names");
    for s in ["sqlite", "sqlcipher"] {
        assert!(registry::storage_names().contains(&s), "{s}");
    }
    for c in ["orion", "sodium"] {
        assert!(registry::cipher_names().contains(&c), "{c}");
    }
    assert!(
        registry::storage("sqlcipher")
            .expect("sqlcipher")
            .needs_page_key
    );
    assert!(!registry::storage("sqlite").expect("sqlite").needs_page_key);
    // The re-exported crates are the registered ones.
    assert_eq!(hearth::crypto_sodium::REGISTRATION.name, "sodium");
    assert_eq!(hearth::backend_sqlcipher::REGISTRATION.name, "sqlcipher");

    let dir = tempfile::tempdir().expect("tempdir");
    for (storage, cipher) in [
        ("sqlite", "orion"),
        ("sqlite", "sodium"),
        ("sqlcipher", "orion"),
        ("sqlcipher", "sodium"),
    ] {
        let path = dir.path().join(format!("{storage}-{cipher}.db"));
        let store = Store::builder()
            .path(&path)
            .passphrase("features")
            .storage(storage)
            .cipher(cipher)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
            .open()
            .await
            .expect("open");
        store.put("c", "k", &json!(storage)).await.expect("put");
        store.close().await.expect("close");
        let store = Store::builder()
            .path(&path)
            .passphrase("features")
            .storage(storage)
            .cipher(cipher)
            .open()
            .await
            .expect("reopen");
        assert_eq!(
            store.get("c", "k").await.expect("get"),
            Some(json!(storage))
        );
        store.close().await.expect("close");
    }
}
