//! A journal app whose storage and cipher are swapped without losing its data.
//!
//! The same code builds with different backends in two ways:
//!
//! - **by cargo feature**: `cargo run -p example-backend-swap` links `sqlite` + `orion` (pure
//!   Rust); `--no-default-features --features sqlite,sodium` links libsodium instead, and
//!   `--features sqlcipher,sodium` SQLCipher and libsodium. A journal written by the orion build
//!   opens in the sodium build unchanged: the two ciphers write the same bytes, and a store
//!   opened without names uses the storage its key header records and a linked cipher of the
//!   recorded cipher's format.
//! - **by configuration name**: [`Backend`] names the storage and cipher (from `JOURNAL_STORAGE`
//!   and `JOURNAL_CIPHER` in the binary). Naming the other cipher on an existing journal just
//!   works; moving to another storage (`sqlite` → `sqlcipher`) goes through a backup:
//!   [`Journal::export_to`] then [`Journal::import_from`].
#![deny(missing_docs)]

use std::path::Path;

use hearth::{Error, ErrorKind, KdfCost, Result, Store, StoreBuilder};

const ENTRIES: &str = "entries";

/// Which storage and cipher to use, by registry name; `None` leaves the choice to hearth (the
/// journal's own for an existing one, the build's default for a new one).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// Storage name (`sqlite`, `sqlcipher`).
    pub storage: Option<String>,
    /// Cipher name (`orion`, `sodium`).
    pub cipher: Option<String>,
}

impl Backend {
    /// Names both.
    pub fn named(storage: &str, cipher: &str) -> Backend {
        Backend {
            storage: Some(storage.to_owned()),
            cipher: Some(cipher.to_owned()),
        }
    }

    /// From the environment: `JOURNAL_STORAGE` and `JOURNAL_CIPHER`, each optional.
    pub fn from_env() -> Backend {
        let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
        Backend {
            storage: var("JOURNAL_STORAGE"),
            cipher: var("JOURNAL_CIPHER"),
        }
    }

    fn builder(&self, path: &Path, passphrase: &str, cost: KdfCost) -> Result<StoreBuilder> {
        // Link-time registration covers normal builds; this covers the rest, and is harmless.
        hearth::register_enabled()?;
        let mut b = Store::builder()
            .path(path)
            .passphrase(passphrase)
            .kdf_cost(cost);
        if let Some(s) = &self.storage {
            b = b.storage(s.as_str());
        }
        if let Some(c) = &self.cipher {
            b = b.cipher(c.as_str());
        }
        Ok(b)
    }
}

/// The journal: dated entries, stored encrypted.
#[derive(Debug)]
pub struct Journal {
    store: Store,
}

impl Journal {
    /// Opens the journal at `path`, creating it if missing.
    pub async fn open(
        path: &Path,
        passphrase: &str,
        backend: &Backend,
        cost: KdfCost,
    ) -> Result<Journal> {
        let store = backend.builder(path, passphrase, cost)?.open().await?;
        Ok(Journal { store })
    }

    /// Imports a backup made by [`Journal::export_to`] into a new journal at `path`, with
    /// `backend`'s storage and cipher. Nothing is left at `path` if it fails.
    pub async fn import_from(
        backup: &Path,
        path: &Path,
        passphrase: &str,
        backend: &Backend,
    ) -> Result<Journal> {
        let file = tokio::fs::File::open(backup).await.map_err(|e| {
            Error::new(ErrorKind::NotFound, "cannot open the backup").with_source(e)
        })?;
        let mut input = tokio::io::BufReader::new(file);
        let builder = backend.builder(path, passphrase, KdfCost::DEFAULT)?;
        let (store, _) = builder.import(&mut input).await?;
        Ok(Journal { store })
    }

    /// Writes an encrypted backup of the journal to `file` (which must not exist).
    pub async fn export_to(&self, file: &Path) -> Result<u64> {
        let out = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "cannot create the backup").with_source(e))?;
        let mut out = tokio::io::BufWriter::new(out);
        let summary = self.store.export(&mut out).await?;
        tokio::io::AsyncWriteExt::flush(&mut out)
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "cannot write the backup").with_source(e))?;
        out.into_inner()
            .sync_all()
            .await
            .map_err(|e| Error::new(ErrorKind::Io, "cannot write the backup").with_source(e))?;
        Ok(summary.rows)
    }

    /// Writes the entry of `day`.
    pub async fn write(&self, day: &str, text: &str) -> Result<()> {
        self.store
            .put(ENTRIES, day, &serde_json::json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// Every entry, by day.
    pub async fn entries(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .store
            .scan(ENTRIES, None, usize::MAX)
            .await?
            .into_iter()
            .map(|(day, v)| {
                let text = v["text"].as_str().unwrap_or_default().to_owned();
                (day, text)
            })
            .collect())
    }

    /// The storage and cipher this journal is open with.
    pub fn backend(&self) -> (&'static str, &'static str) {
        (self.store.storage().name(), self.store.cipher().name())
    }

    /// Closes the journal.
    pub async fn close(self) -> Result<()> {
        self.store.close().await
    }
}
