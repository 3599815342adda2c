//! Two devices count steps offline, then sync: the collection `steps` uses the `max-count`
//! plugin, chosen by name from configuration (here `HEARTH_STEPS_STRATEGY`, default
//! `max-count`).
//!
//! `cargo run -p example-custom-strategy`

use std::sync::Arc;

use example_custom_strategy::MaxCount;
use hearth::transport_mock::MockTransport;
use hearth::{KdfCost, MemoryRelay, MemoryStorage, OpenOptions, Store, SyncConfig, SyncEngine};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() -> hearth::Result<()> {
    // Linking the plugin crate registers it; the line below only names it for the reader.
    let _ = MaxCount::NAME;
    let strategy = std::env::var("HEARTH_STEPS_STRATEGY").unwrap_or_else(|_| "max-count".into());
    let relay = MemoryRelay::default();
    let cipher = hearth::crypto_orion::OrionCipher::shared();
    let opts = || {
        OpenOptions::new("walking passphrase")
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
    };

    let phone = Store::open(Arc::new(MemoryStorage::new()), cipher.clone(), opts()).await?;
    let watch = Store::join(
        Arc::new(MemoryStorage::new()),
        cipher,
        opts(),
        &phone.key_backup()?,
    )
    .await?;
    let engines: Vec<SyncEngine> = [&phone, &watch]
        .into_iter()
        .map(|s| {
            SyncEngine::new(
                s.clone(),
                Arc::new(MockTransport::new(relay.clone())),
                SyncConfig::default(),
            )
        })
        .collect();
    for e in &engines {
        e.set_strategy("steps", &strategy).await?;
    }

    phone
        .put(
            "steps",
            "2026-11-25",
            &json!({"count": 1200, "source": "phone"}),
        )
        .await?;
    engines[0].sync().await?;
    engines[1].sync().await?;
    // Offline on both: the phone counts to 4000, the watch to 5200.
    phone
        .put(
            "steps",
            "2026-11-25",
            &json!({"count": 4000, "source": "phone"}),
        )
        .await?;
    watch
        .put(
            "steps",
            "2026-11-25",
            &json!({"count": 5200, "source": "watch"}),
        )
        .await?;
    for _ in 0..2 {
        for e in &engines {
            e.sync().await?;
        }
    }
    let p = phone.get("steps", "2026-11-25").await?;
    let w = watch.get("steps", "2026-11-25").await?;
    println!("strategy {strategy}: phone sees {p:?}, watch sees {w:?}");
    if p != w {
        return Err(hearth::Error::internal("the devices did not converge"));
    }
    Ok(())
}
