//! A small offline-first notes app on hearth's library API: typed notes stored encrypted in a
//! SQLite file, edited on a laptop and a phone that are offline at the same time, merged field
//! by field when they sync.
//!
//! `cargo run -p example-notes`

use std::sync::Arc;

use hearth::transport_mock::MockTransport;
use hearth::{KdfCost, MemoryRelay, Store, SyncConfig, SyncEngine, WriteBatch};
use serde::{Deserialize, Serialize};

/// A note as the app sees it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Note {
    title: String,
    body: String,
    tags: Vec<String>,
    pinned: bool,
}

/// The app's data layer: a thin typed wrapper over the store.
struct Notes {
    store: Store,
    sync: SyncEngine,
}

impl Notes {
    async fn open(
        path: &std::path::Path,
        passphrase: &str,
        relay: &MemoryRelay,
        join: Option<&Store>,
    ) -> hearth::Result<Notes> {
        let store = match join {
            None => {
                Store::builder()
                    .path(path)
                    .passphrase(passphrase)
                    .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
                    .open()
                    .await?
            }
            Some(other) => {
                let storage = (hearth::registry::storage("sqlite")?.open)(
                    hearth::StorageOptions::at(path).create(true),
                )
                .await?;
                let options =
                    hearth::OpenOptions::new(passphrase).kdf_cost(KdfCost::INSECURE_FOR_TESTS);
                Store::join(
                    storage,
                    (hearth::registry::cipher("orion")?.make)(),
                    options,
                    &other.key_backup()?,
                )
                .await?
            }
        };
        let sync = SyncEngine::new(
            store.clone(),
            Arc::new(MockTransport::new(relay.clone())),
            SyncConfig::default(),
        );
        // Notes merge field by field; concurrent title edits go to the later one.
        sync.set_strategy("notes", "merge").await?;
        Ok(Notes { store, sync })
    }

    async fn save(&self, id: &str, note: &Note) -> hearth::Result<()> {
        self.store.put("notes", id, note).await.map(|_| ())
    }

    async fn get(&self, id: &str) -> hearth::Result<Option<Note>> {
        match self.store.get("notes", id).await? {
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| hearth::Error::corrupt("not a note").with_source(e)),
            None => Ok(None),
        }
    }

    async fn list(&self, prefix: &str) -> hearth::Result<Vec<(String, Note)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan("notes", Some(prefix), 100).await? {
            if let Ok(n) = serde_json::from_value(v) {
                out.push((k, n));
            }
        }
        Ok(out)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> hearth::Result<()> {
    run().await
}

async fn run() -> hearth::Result<()> {
    let dir = tempfile::tempdir()
        .map_err(|e| hearth::Error::new(hearth::ErrorKind::Io, "tempdir").with_source(e))?;
    let relay = MemoryRelay::default();
    let laptop = Notes::open(
        &dir.path().join("laptop.db"),
        "notes passphrase",
        &relay,
        None,
    )
    .await?;
    let phone = Notes::open(
        &dir.path().join("phone.db"),
        "notes passphrase",
        &relay,
        Some(&laptop.store),
    )
    .await?;

    let mut batch = WriteBatch::new();
    for (id, title) in [
        ("2026-11-25-groceries", "Groceries"),
        ("2026-11-25-trip", "Trip"),
    ] {
        batch.put(
            "notes",
            id,
            &Note {
                title: title.into(),
                body: String::new(),
                tags: vec![],
                pinned: false,
            },
        )?;
    }
    laptop.store.write(batch).await?;
    laptop.sync.sync().await?;
    phone.sync.sync().await?;

    // Both offline: the laptop pins the note and fills the body, the phone adds tags.
    let mut n = laptop
        .get("2026-11-25-groceries")
        .await?
        .unwrap_or_default();
    n.body = "oat milk, lentils".into();
    n.pinned = true;
    laptop.save("2026-11-25-groceries", &n).await?;
    let mut m = phone.get("2026-11-25-groceries").await?.unwrap_or_default();
    m.tags = vec!["shopping".into(), "weekly".into()];
    phone.save("2026-11-25-groceries", &m).await?;

    for _ in 0..2 {
        laptop.sync.sync().await?;
        phone.sync.sync().await?;
    }
    let on_laptop = laptop.list("2026-11-25").await?;
    let on_phone = phone.list("2026-11-25").await?;
    for (id, note) in &on_laptop {
        println!("{id}: {note:?}");
    }
    if on_laptop != on_phone {
        return Err(hearth::Error::internal("the devices did not converge"));
    }
    println!("laptop and phone agree; both edits survived the merge");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn both_offline_edits_survive_and_the_devices_converge() {
        super::run().await.expect("the notes example converges");
    }
}
