//! The server the demo syncs through: the real sync server on a free loopback port, with an
//! embedded SQLite database, reached over HTTP.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hearth::sync_server::{RunningServer, Server};
use hearth::transport_http::HttpTransport;
use hearth::{Error, ErrorKind, Result, SpaceRef, Store, Transport};

/// `(server_seq, record, device, tombstone, size)` as the server's database holds it.
type EntryRow = (i64, Vec<u8>, Vec<u8>, bool, i64);

/// A sync server for the demo, and transports to it.
pub struct DemoServer {
    server: RunningServer,
    db: PathBuf,
    token: std::sync::Mutex<Option<String>>,
}

impl DemoServer {
    /// Starts the server on 127.0.0.1 with a fresh database in `dir`.
    pub async fn start(dir: &Path) -> Result<Self> {
        let db = dir.join("server.db");
        let server = Server::builder()
            .listen(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .database(format!("sqlite:{}", db.display()))
            .build()
            .await?
            .spawn();
        Ok(Self {
            server,
            db,
            token: std::sync::Mutex::new(None),
        })
    }

    /// Where it listens.
    pub fn describe(&self) -> String {
        format!("{} (database {})", self.server.url(), self.db.display())
    }

    fn token(&self) -> Result<String> {
        self.token
            .lock()
            .ok()
            .and_then(|t| t.clone())
            .ok_or_else(|| Error::internal("the demo account is not registered yet"))
    }

    fn http(&self) -> Result<HttpTransport> {
        HttpTransport::new(&self.server.url(), self.token()?)
    }

    /// Creates the account, registers the first device's space and uploads its wrapped key.
    pub async fn register(&self, store: &Store) -> Result<()> {
        let account = HttpTransport::register_account(&self.server.url()).await?;
        if let Ok(mut t) = self.token.lock() {
            *t = Some(account.token);
        }
        let http = self.http()?;
        http.register_space(store.space(), store.key_fingerprint())
            .await?;
        http.put_key_backup(store.space(), store.key_backup()?)
            .await
    }

    /// A transport for one device (HTTP with retries).
    pub async fn transport(&self) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(self.http()?.retrying()))
    }

    /// The account's wrapped key backup, as a joining device fetches it with only the token.
    pub async fn key_backup(&self) -> Result<Vec<u8>> {
        let http = self.http()?;
        let space = http
            .spaces()
            .await?
            .first()
            .map(|s| s.space)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no space"))?;
        http.get_key_backup(space)
            .await?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no key backup"))
    }

    /// Registers a joined device.
    pub async fn register_device(&self, store: &Store) -> Result<()> {
        self.http()?
            .register_device(&SpaceRef {
                space: store.space(),
                device: store.device(),
                fingerprint: store.key_fingerprint(),
            })
            .await
    }

    /// What the server's database holds for the space, read straight from its file.
    pub async fn what_it_sees(&self, space: hearth::SpaceId) -> Result<Vec<String>> {
        let stats = self.server.store().space_stats(space).await?;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&self.db)
            .read_only(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.map_err(|e| {
            Error::new(ErrorKind::Storage, "read the server database").with_source(e)
        })?;
        let rows: Vec<EntryRow> = sqlx::query_as(
            "SELECT server_seq, record, device, tombstone, size FROM envelopes WHERE space = ? ORDER BY server_seq",
        )
        .bind(&space.0[..])
        .fetch_all(&pool)
        .await
        .map_err(|e| Error::new(ErrorKind::Storage, "read the server database").with_source(e))?;
        pool.close().await;
        let hex8 = |b: &[u8]| {
            b.iter()
                .take(8)
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        };
        let mut lines: Vec<String> = rows
            .iter()
            .map(|(seq, record, device, tombstone, size)| {
                format!(
                    "#{seq:<3} record {}…  device {}  {}{size} bytes of ciphertext",
                    hex8(record),
                    hex8(device),
                    if *tombstone { "tombstone, " } else { "" },
                )
            })
            .collect();
        lines.push(format!(
            "{} envelopes, {} bytes of ciphertext, {} tombstones: per entry a blind id, a device id, a sequence and a padded size, nothing else",
            stats.envelopes, stats.bytes, stats.tombstones
        ));
        Ok(lines)
    }

    /// Stops the server gracefully.
    pub async fn stop(self) -> Result<()> {
        self.server.stop().await
    }
}
