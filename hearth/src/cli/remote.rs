//! The commands that talk to a sync server: register, join, sync, serve.

use std::sync::Arc;

use hearth::transport_http::HttpTransport;
use hearth::{
    Error, ErrorKind, Result, SpaceId, SpaceRef, Store, SyncConfig, SyncEngine, SyncState,
    Transport, WriteBatch,
};
use serde_json::{Value, json};

/// Where the server address and account token live: a local-only (never synced), encrypted
/// record.
const CONFIG_COLLECTION: &str = "_hearth.config";
const CONFIG_KEY: &str = "server";

/// The server this store syncs with.
pub struct Remote {
    /// Base URL.
    pub url: String,
    /// Account token.
    pub token: String,
}

/// Saves the server address and token in the store (encrypted, local only).
pub async fn save(store: &Store, url: &str, token: &str) -> Result<()> {
    let mut b = WriteBatch::new().local_only();
    b.put(
        CONFIG_COLLECTION,
        CONFIG_KEY,
        &json!({"url": url, "token": token}),
    )?;
    store.write(b).await.map(|_| ())
}

/// The server this store syncs with, if one is configured.
pub async fn load(store: &Store) -> Result<Option<Remote>> {
    match store.get(CONFIG_COLLECTION, CONFIG_KEY).await? {
        Some(v) => {
            let url = v["url"].as_str().unwrap_or_default().to_owned();
            let token = v["token"].as_str().unwrap_or_default().to_owned();
            Ok(Some(Remote { url, token }))
        }
        None => Ok(None),
    }
}

/// Creates an account on `url`, registers this store's space and uploads its key backup.
/// Returns the account token (other devices join with it).
pub async fn register(store: &Store, url: &str) -> Result<String> {
    tracing::info!(server = url, "creating an account");
    let account = HttpTransport::register_account(url).await?;
    let http = HttpTransport::new(url, account.token.clone())?;
    http.check_key(&space_ref(store)).await?;
    http.register_space(store.space(), store.key_fingerprint())
        .await?;
    http.put_key_backup(store.space(), store.key_backup()?)
        .await?;
    save(store, url, &account.token).await?;
    Ok(account.token)
}

/// Fetches the key backup of the account's current space: the one registered and not retired,
/// so a device joining after a key rotation gets the new key, never the retired one.
pub async fn fetch_backup(url: &str, token: &str) -> Result<Vec<u8>> {
    let http = HttpTransport::new(url, token.to_owned())?;
    let space = http
        .current_space()
        .await
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::new(
                ErrorKind::NotFound,
                "this account has no space yet: run `hearth register` on the first device",
            ),
            _ => e,
        })?
        .space;
    http.get_key_backup(space)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::NotFound, "the account's space has no key backup"))
}

/// This store's space, device and key fingerprint, as the server knows a device.
fn space_ref(store: &Store) -> SpaceRef {
    SpaceRef {
        space: store.space(),
        device: store.device(),
        fingerprint: store.key_fingerprint(),
    }
}

/// Registers a joined device with the server, after comparing its key with the server's record
/// of the space (a retired space or another key is [`ErrorKind::WrongKey`]).
pub async fn register_device(store: &Store, url: &str, token: &str) -> Result<()> {
    let http = HttpTransport::new(url, token.to_owned())?;
    let from = space_ref(store);
    http.check_key(&from).await?;
    http.register_device(&from).await
}

/// The local-only record noting a key rotation the server has not been told about yet: the space
/// it replaced.
const SUCCESSOR_KEY: &str = "successor";

/// Notes, before a key rotation, that the server must be told which space the rotation
/// replaces. Kept (encrypted, local only, re-encrypted by the rotation like every record) until
/// [`announce_rotation`] succeeds, so a rotation made offline is announced by the next
/// `hearth sync`.
pub async fn note_rotation(store: &Store) -> Result<()> {
    let mut b = WriteBatch::new().local_only();
    b.put(
        CONFIG_COLLECTION,
        SUCCESSOR_KEY,
        &json!({ "replaces": store.space().as_bytes().to_vec() }),
    )?;
    store.write(b).await.map(|_| ())
}

/// Tells the server about a key rotation noted by [`note_rotation`]: registers this store's
/// (new) space as the successor of the space it replaced, which the server retires (devices
/// still on the old key are refused and told to re-join), uploads the new key backup (new
/// devices join with it), then forgets the note. Returns the retired space; `None` when there
/// was nothing to tell (no note, or the rotation has not replaced the space yet).
pub async fn announce_rotation(store: &Store) -> Result<Option<SpaceId>> {
    let Some(note) = store.get(CONFIG_COLLECTION, SUCCESSOR_KEY).await? else {
        return Ok(None);
    };
    let replaces = serde_json::from_value::<Vec<u8>>(note["replaces"].clone())
        .map_err(|e| Error::corrupt("malformed key rotation note").with_source(e))
        .and_then(|bytes| SpaceId::from_slice(&bytes))?;
    if replaces == store.space() {
        // Noted, but the rotation never committed its new key: nothing to announce yet.
        return Ok(None);
    }
    let remote = require(store).await?;
    let http = HttpTransport::new(&remote.url, remote.token)?;
    tracing::info!(old = %replaces, new = %store.space(), "registering the rotated key's space");
    http.register_successor(store.space(), store.key_fingerprint(), replaces)
        .await?;
    http.put_key_backup(store.space(), store.key_backup()?)
        .await?;
    let mut b = WriteBatch::new().local_only();
    b.delete(CONFIG_COLLECTION, SUCCESSOR_KEY);
    store.write(b).await?;
    Ok(Some(replaces))
}

/// The server this store syncs with, or a configuration error saying how to set one up.
pub async fn require(store: &Store) -> Result<Remote> {
    load(store).await?.ok_or_else(|| {
        Error::new(
            ErrorKind::Config,
            "no sync server for this store: run `hearth register --server URL` or create the store with `hearth join`",
        )
    })
}

/// A sync engine for the store's configured server.
pub async fn engine(store: &Store) -> Result<SyncEngine> {
    let remote = require(store).await?;
    tracing::debug!(server = %remote.url, "syncing with");
    let http = HttpTransport::new(&remote.url, remote.token)?;
    // An interactive command retries briefly; a long-running app would use the default policy.
    let policy = hearth::retry::RetryPolicy {
        min_delay: std::time::Duration::from_millis(200),
        max_delay: std::time::Duration::from_secs(2),
        max_retries: 3,
    };
    let transport: Arc<dyn Transport> = Arc::new(http.retrying_with(policy));
    Ok(SyncEngine::new(
        store.clone(),
        transport,
        SyncConfig::default(),
    ))
}

/// Runs one sync round with a progress line on a terminal (after asking for a re-upload to a
/// server that lost data, with `reupload`); returns the report as JSON.
pub async fn sync(store: &Store, show_progress: bool, reupload: bool) -> Result<Value> {
    let engine = engine(store).await?;
    if reupload {
        engine.reupload_to_server().await?;
    }
    let bar = show_progress.then(|| {
        let pb = indicatif::ProgressBar::new_spinner();
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        pb
    });
    let mut states = engine.subscribe();
    let watcher = bar.clone().map(|pb| {
        tokio::spawn(async move {
            while states.changed().await.is_ok() {
                if let SyncState::Syncing { progress } = states.borrow_and_update().clone() {
                    pb.set_message(format!(
                        "pushed {} of {} pending, pulled {}",
                        progress.pushed, progress.pending, progress.pulled
                    ));
                }
            }
        })
    });
    tracing::info!("sync round starting");
    let result = engine.sync().await;
    if let Some(w) = watcher {
        w.abort();
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    }
    let r = result?;
    tracing::info!(
        pushed = r.pushed,
        pulled = r.pulled,
        applied = r.applied,
        conflicts_pending = r.conflicts_pending,
        ms = r.duration_ms,
        "sync round done"
    );
    Ok(json!({
        "pushed": r.pushed, "pulled": r.pulled, "applied": r.applied,
        "conflicts_resolved": r.conflicts_resolved, "conflicts_pending": r.conflicts_pending,
        "rejected": r.rejected.len(), "resynced": r.resynced, "duration_ms": r.duration_ms,
        "discarded": r.discarded, "reuploaded": r.reuploaded, "log_replaced": r.log_replaced,
        "withheld": r.withheld.iter().map(|w| json!({
            "device": w.device.to_hex(), "witness": w.witness.to_hex(), "reason": w.reason,
        })).collect::<Vec<_>>(),
    }))
}

/// Runs the sync server until Ctrl-C.
pub async fn serve(
    server: hearth::sync_server::ServerBuilder,
    quiet: bool,
    as_json: bool,
) -> Result<()> {
    let server = server.build().await?;
    let database = server.store().name();
    if as_json {
        outln!(
            "{}",
            json!({"listening": format!("http://{}", server.local_addr())})
        );
    } else if !quiet {
        outln!(
            "hearth sync server listening on http://{} (store: {database}); Ctrl-C stops it",
            server.local_addr()
        );
    }
    server
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
}
