//! # sync-server
//!
//! hearth's zero-knowledge sync server: it keeps, per sync space, an ordered log of sealed
//! envelopes it cannot open, and serves them to the space's devices over HTTP (`/v1/`, binary
//! wire format, bearer tokens per account). Storage is SQLite by default ([`SqliteStore`], one
//! file) or PostgreSQL ([`PostgresStore`]) for many stateless server processes sharing one
//! database. Both run the relay conformance suite of `sync-core`, so they behave exactly like
//! the reference [`sync_core::MemoryRelay`].
//!
//! ```no_run
//! # async fn run() -> sync_core::Result<()> {
//! let server = sync_server::Server::builder()
//!     .listen("127.0.0.1:0".parse().expect("address"))
//!     .database("sqlite:/var/lib/hearth/server.db")
//!     .build()
//!     .await?;
//! println!("listening on {}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! The protocol (endpoints, wire format, statuses) is specified in `docs/protocol.md`.
#![deny(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sync_core::store::{WallClock, system_millis};
use sync_core::{Error, ErrorKind, RelayConfig, Result};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

mod auth;
mod http;
pub mod metrics;
pub mod store;

pub use http::{MAX_KEY_BACKUP, status_of};
pub use metrics::Metrics;
pub use store::{
    AccountId, AccountRelay, PostgresStore, SCHEMA_VERSION, ServerStore, SpaceInfo, SpaceRetired,
    SqliteStore, mark_restored, open_store,
};

/// Everything a server needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// `sqlite:PATH` (or a bare path) or `postgres://…`.
    pub database: String,
    /// Page, push and envelope limits, and the tombstone horizon.
    pub relay: RelayConfig,
    /// Largest request body in bytes (larger is 413).
    pub max_body: usize,
    /// Whether anyone may create an account (`POST /v1/accounts`).
    pub registration: bool,
    /// Longest a request may take, body upload included; past it the server answers 503 (a
    /// temporary error the client retries) and rolls back whatever the request had begun. Stops a
    /// client that trickles its body from holding a connection and a transaction.
    pub request_timeout: Duration,
    /// On shutdown, how long requests in flight may run before their connections are dropped
    /// (their transactions roll back; clients retry idempotently).
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let relay = RelayConfig::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: "sqlite:hearth-server.db".into(),
            relay,
            max_body: relay.max_envelope + 1024 * 1024,
            registration: true,
            request_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Builds a [`Server`].
pub struct ServerBuilder {
    config: ServerConfig,
    store: Option<Arc<dyn ServerStore>>,
    clock: WallClock,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("listen", &self.config.listen)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Starts from `config`.
    pub fn from_config(config: ServerConfig) -> Self {
        Self {
            config,
            store: None,
            clock: Arc::new(system_millis),
        }
    }

    /// Address to listen on.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Database URL: `sqlite:PATH` or `postgres://…`.
    #[must_use]
    pub fn database(mut self, url: impl Into<String>) -> Self {
        self.config.database = url.into();
        self
    }

    /// An already opened store (takes precedence over [`ServerBuilder::database`]).
    #[must_use]
    pub fn store(mut self, store: Arc<dyn ServerStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Relay limits and horizon.
    #[must_use]
    pub fn relay(mut self, relay: RelayConfig) -> Self {
        self.config.relay = relay;
        self
    }

    /// Largest request body.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.config.max_body = bytes;
        self
    }

    /// Whether anyone may create an account.
    #[must_use]
    pub fn registration(mut self, open: bool) -> Self {
        self.config.registration = open;
        self
    }

    /// Longest a request may take ([`ServerConfig::request_timeout`]).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// How long a shutdown waits for requests in flight ([`ServerConfig::drain_timeout`]).
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// The clock the store reads (tests move it forward by days).
    #[must_use]
    pub fn clock(mut self, clock: WallClock) -> Self {
        self.clock = clock;
        self
    }

    /// Opens the store (migrating its schema) and binds the listener.
    pub async fn build(self) -> Result<Server> {
        let store = match self.store {
            Some(s) => s,
            None => open_store(&self.config.database, self.config.relay, self.clock).await?,
        };
        let listener = TcpListener::bind(self.config.listen).await.map_err(|e| {
            Error::new(ErrorKind::Io, "cannot listen on the configured address").with_source(e)
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::new(ErrorKind::Io, "listener has no address").with_source(e))?;
        Ok(Server {
            listener,
            addr,
            store,
            metrics: Arc::new(Metrics::default()),
            max_body: self.config.max_body,
            registration: self.config.registration,
            request_timeout: self.config.request_timeout,
            drain_timeout: self.config.drain_timeout,
        })
    }
}

/// A bound, ready server.
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    store: Arc<dyn ServerStore>,
    metrics: Arc<Metrics>,
    max_body: usize,
    registration: bool,
    request_timeout: Duration,
    drain_timeout: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.addr)
            .field("store", &self.store.name())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A builder with [`ServerConfig::default`].
    pub fn builder() -> ServerBuilder {
        ServerBuilder::from_config(ServerConfig::default())
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The store the server uses.
    pub fn store(&self) -> &Arc<dyn ServerStore> {
        &self.store
    }

    /// The server's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Serves until `shutdown` completes, then stops accepting, lets requests in flight finish
    /// for up to the drain timeout (then drops their connections: their transactions roll
    /// back), and closes the database.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        // Set at the drain timeout: every request still running answers 503 at once.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let app = Arc::new(http::App {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            registration: self.registration,
            request_timeout: self.request_timeout,
            stopping: stop_rx,
        });
        tracing::info!(addr = %self.addr, store = self.store.name(), "sync server listening");
        let router = http::router(app, self.max_body);
        let draining = Arc::new(tokio::sync::Notify::new());
        let graceful = {
            let draining = draining.clone();
            async move { draining.notified().await }
        };
        let serving = axum::serve(self.listener, router).with_graceful_shutdown(graceful);
        let mut serving = std::pin::pin!(serving.into_future());
        let served = tokio::select! {
            served = &mut serving => served,
            () = shutdown => {
                // `notify_one` keeps the permit if the server is not waiting on it yet.
                draining.notify_one();
                match tokio::time::timeout(self.drain_timeout, &mut serving).await {
                    Ok(served) => served,
                    Err(_) => {
                        tracing::warn!(
                            drain_timeout_s = self.drain_timeout.as_secs_f64(),
                            "requests still running at the drain timeout; stopping them"
                        );
                        // Their handlers are dropped (transactions roll back) and answer 503;
                        // the connections then close. A client that does not read its answer
                        // gets a few more seconds.
                        let _ = stop_tx.send(true);
                        tokio::time::timeout(Duration::from_secs(5), &mut serving)
                            .await
                            .unwrap_or(Ok(()))
                    }
                }
            }
        };
        self.store.close().await;
        tracing::info!("sync server stopped");
        served.map_err(|e| Error::new(ErrorKind::Io, "the server failed").with_source(e))
    }

    /// Runs the server on a task; the handle stops it.
    pub fn spawn(self) -> RunningServer {
        let (tx, rx) = oneshot::channel::<()>();
        let addr = self.addr;
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let task = tokio::spawn(self.run(async {
            let _ = rx.await;
        }));
        RunningServer {
            addr,
            store,
            metrics,
            stop: Some(tx),
            task,
        }
    }
}

/// A server running on a task.
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    store: Arc<dyn ServerStore>,
    metrics: Arc<Metrics>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its store.
    pub fn store(&self) -> &Arc<dyn ServerStore> {
        &self.store
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Stops it gracefully and waits until it has.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .map_err(|e| Error::internal("the server task panicked").with_source(e))?
    }
}

/// Opens the configured store, binds, and serves until `shutdown` completes. What the
/// `hearth-server` binary (and later the `hearth` command) runs.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let server = ServerBuilder::from_config(config).build().await?;
    server.run(shutdown).await
}
