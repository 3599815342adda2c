//! # hearth
//!
//! Offline-first apps that keep their data encrypted on the device. This is the facade: its
//! cargo features choose the implementations (`sqlite` and `orion` by default; `sqlcipher` for a
//! whole-file encrypted SQLCipher database, `sodium` for libsodium), it links them so the
//! registry can find them by name, and it re-exports the API of `sync-core`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> hearth::Result<()> {
//! # let dir = tempfile::tempdir().map_err(|e| hearth::Error::new(hearth::ErrorKind::Io, "tempdir").with_source(e))?;
//! use hearth::{KdfCost, Store};
//! use serde_json::json;
//!
//! let store = Store::builder()
//!     .path(dir.path().join("app.db"))
//!     .passphrase("correct horse battery staple")
//!     .storage("sqlite")
//!     .cipher("orion")
//! #   .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
//!     .open()
//!     .await?;
//! store.put("notes", "2026-11-25", &json!({"title": "groceries", "body": "oat milk"})).await?;
//! assert_eq!(store.get("notes", "2026-11-25").await?.unwrap()["title"], "groceries");
//! store.delete("notes", "2026-11-25").await?;
//! assert!(store.get("notes", "2026-11-25").await?.is_none());
//! store.close().await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub use sync_core::*;

#[cfg(feature = "sqlcipher")]
pub use backend_sqlcipher;
#[cfg(feature = "sqlite")]
pub use backend_sqlite;
#[cfg(feature = "orion")]
pub use crypto_orion;
#[cfg(feature = "sodium")]
pub use crypto_sodium;
#[cfg(feature = "server")]
pub use sync_server;
#[cfg(feature = "http")]
pub use transport_http;
#[cfg(feature = "mock")]
pub use transport_mock;

/// Registers every implementation this build enables, explicitly.
///
/// Link-time registration (`inventory`) covers normal builds; call this on targets where it does
/// not run (static libraries on iOS, some WebAssembly hosts). Implementations already present
/// are skipped, so calling it more than once is harmless.
pub fn register_enabled() -> Result<()> {
    #[cfg(feature = "sqlite")]
    if !registry::storage_names().contains(&backend_sqlite::REGISTRATION.name) {
        registry::register_storage(backend_sqlite::REGISTRATION)?;
    }
    #[cfg(feature = "sqlcipher")]
    if !registry::storage_names().contains(&backend_sqlcipher::REGISTRATION.name) {
        registry::register_storage(backend_sqlcipher::REGISTRATION)?;
    }
    #[cfg(feature = "orion")]
    if !registry::cipher_names().contains(&crypto_orion::REGISTRATION.name) {
        registry::register_cipher(crypto_orion::REGISTRATION)?;
    }
    #[cfg(feature = "sodium")]
    if !registry::cipher_names().contains(&crypto_sodium::REGISTRATION.name) {
        registry::register_cipher(crypto_sodium::REGISTRATION)?;
    }
    Ok(())
}

#[cfg(feature = "bench")]
pub mod bench;

/// The README's code blocks, compiled as doctests so the quick start stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
