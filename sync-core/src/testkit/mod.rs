//! Conformance suites and shared test vectors (feature `testkit`).
//!
//! Every [`Cipher`](crate::Cipher) implementation runs [`cipher_suite`]; every
//! [`Storage`](crate::Storage) implementation runs [`storage_suite`]; every registered
//! [`ConflictStrategy`](crate::ConflictStrategy) is checked by [`strategy_laws`]
//! ([`registered_strategy_laws`] walks the registry); every
//! [`Relay`](crate::relay::Relay) (the in-memory reference and the sync server's stores) runs
//! [`relay_suite`]. The suites panic with a
//! message naming the property that failed, like any test assertion.

mod cipher_suite;
mod relay_suite;
mod storage_suite;
mod strategy_laws;
pub mod vectors;

pub use cipher_suite::cipher_suite;
pub use relay_suite::relay_suite;
pub use storage_suite::storage_suite;
pub use strategy_laws::{registered_strategy_laws, strategy_laws};

/// Waits until the file at `path` holds at least `bytes`, polling every 50 ms for up to 10 s,
/// and returns its length then (shorter if it never got there). For the tests of background
/// WAL checkpointers, which copy commits into the database file beside the writer: the file
/// grows only once a checkpoint ran.
pub async fn file_grown_to(path: &std::path::Path, bytes: u64) -> u64 {
    let len = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    for _ in 0..200 {
        if len() >= bytes {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    len()
}
