//! Shared test helpers: PostgreSQL from the environment, devices on real SQLite files syncing
//! through the real HTTP transport.
#![allow(dead_code)]

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crypto_orion::OrionCipher;
use sqlx::postgres::PgConnectOptions;
use sync_core::retry::RetryPolicy;
use sync_core::store::WallClock;
use sync_core::{
    KdfCost, OpenOptions, RelayConfig, SpaceRef, Store, SyncConfig, SyncEngine, Transport,
};
use sync_server::{PostgresStore, RunningServer, Server, ServerStore};
use transport_http::{HttpOptions, HttpTransport};

pub const PASS: &str = "correct horse battery staple";

/// The PostgreSQL URL for tests. Unset: a loud skip on a developer machine, a failure in CI.
pub fn postgres_url() -> Option<String> {
    required_env("HEARTH_TEST_POSTGRES_URL")
}

/// A variable `.ci/run` sets for the PostgreSQL tests. Unset or empty: a loud skip on a
/// developer machine, a failure in CI (they must run there).
pub fn required_env(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
                panic!(
                    "{name} is not set but CI is: the PostgreSQL tests must run in CI (.ci/run starts a cluster)"
                );
            }
            eprintln!(
                "\n*** SKIPPING PostgreSQL test: {name} is not set (bash .ci/run sets it) ***\n"
            );
            None
        }
    }
}

static SCHEMA_N: AtomicU64 = AtomicU64::new(0);

/// Connect options for a fresh, empty schema of the test database.
pub async fn fresh_schema(url: &str) -> PgConnectOptions {
    let name = fresh_schema_name(url).await;
    PgConnectOptions::from_str(url)
        .expect("postgres url")
        .options([("search_path", name.as_str())])
}

/// A server database URL (what `hearth-server --database` takes) for a fresh, empty schema of
/// the test database, and the schema's name.
pub async fn fresh_schema_url(url: &str) -> (String, String) {
    let name = fresh_schema_name(url).await;
    let sep = if url.contains('?') { '&' } else { '?' };
    (format!("{url}{sep}options[search_path]={name}"), name)
}

/// Creates a fresh, empty schema in the test database and returns its name.
pub async fn fresh_schema_name(url: &str) -> String {
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        SCHEMA_N.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let opts = PgConnectOptions::from_str(url).expect("postgres url");
    let pool = sqlx::PgPool::connect_with(opts.clone())
        .await
        .expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
        .execute(&pool)
        .await
        .expect("create schema");
    pool.close().await;
    name
}

pub async fn postgres_store(
    url: &str,
    config: RelayConfig,
    clock: WallClock,
) -> Arc<dyn ServerStore> {
    let opts = fresh_schema(url).await;
    Arc::new(
        PostgresStore::connect_with(opts, 8, config, clock)
            .await
            .expect("postgres store"),
    )
}

/// An in-process server on a random port over a SQLite file.
pub async fn sqlite_server(db: &Path) -> RunningServer {
    sqlite_server_at("127.0.0.1:0".parse().expect("addr"), db).await
}

/// An in-process server on `addr` over a SQLite file (a restart keeps the address).
pub async fn sqlite_server_at(addr: std::net::SocketAddr, db: &Path) -> RunningServer {
    Server::builder()
        .listen(addr)
        .database(format!("sqlite:{}", db.display()))
        .build()
        .await
        .expect("server")
        .spawn()
}

/// A server over `dir/server.db`, an account on it, and two devices of one space: A
/// (`dir/a.db`, which made the space) and B (`dir/b.db`, joined with the passphrase).
pub async fn server_and_two_devices(dir: &Path) -> (RunningServer, String, Device, Device) {
    let server = sqlite_server(&dir.join("server.db")).await;
    let url = server.url();
    let token = HttpTransport::register_account(&url)
        .await
        .expect("account")
        .token;
    let a = Device::first(&dir.join("a.db"), &url, &token).await;
    let b = Device::join(&dir.join("b.db"), &url, &token, PASS)
        .await
        .expect("join");
    (server, token, a, b)
}

/// Quick retries, so tests that stop the server do not wait long.
pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retries: 2,
    }
}

pub fn http(url: &str, token: &str) -> HttpTransport {
    HttpTransport::with_options(
        url,
        token,
        HttpOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(20),
            max_push_bytes: 32 * 1024,
            ..HttpOptions::default()
        },
    )
    .expect("transport")
}

pub fn options() -> OpenOptions {
    OpenOptions::new(PASS)
        .create(true)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
}

/// A device: a store on a real SQLite file, syncing through HTTP (with quick retries).
pub struct Device {
    pub store: Store,
    pub engine: SyncEngine,
    pub http: HttpTransport,
}

impl Device {
    pub fn from(&self) -> SpaceRef {
        SpaceRef {
            space: self.store.space(),
            device: self.store.device(),
            fingerprint: self.store.key_fingerprint(),
        }
    }

    fn engine(store: &Store, http: &HttpTransport) -> SyncEngine {
        let t: Arc<dyn Transport> = Arc::new(http.clone().retrying_with(quick_retry()));
        SyncEngine::new(store.clone(), t, SyncConfig::default())
    }

    /// The first device of an account: creates its store, registers the space and uploads the
    /// key backup.
    pub async fn first(db: &Path, url: &str, token: &str) -> Device {
        let storage = backend_sqlite::SqliteStorage::open(db, true)
            .await
            .expect("sqlite storage");
        let store = Store::open(Arc::new(storage), OrionCipher::shared(), options())
            .await
            .expect("create store");
        let http = http(url, token);
        http.register_space(store.space(), store.key_fingerprint())
            .await
            .expect("register space");
        http.put_key_backup(store.space(), store.key_backup().expect("backup"))
            .await
            .expect("upload key backup");
        let engine = Self::engine(&store, &http);
        Device {
            store,
            engine,
            http,
        }
    }

    /// A new device joining with only the passphrase and the account token.
    pub async fn join(
        db: &Path,
        url: &str,
        token: &str,
        passphrase: &str,
    ) -> sync_core::Result<Device> {
        let http = http(url, token);
        // The account's current space: after a key rotation, the successor, never the
        // retired one.
        let current = http.current_space().await?;
        let space = current.space;
        let backup = http
            .get_key_backup(space)
            .await?
            .expect("the space has a key backup");
        let storage = backend_sqlite::SqliteStorage::open(db, true).await?;
        let store = Store::join(
            Arc::new(storage),
            OrionCipher::shared(),
            OpenOptions::new(passphrase).kdf_cost(KdfCost::INSECURE_FOR_TESTS),
            &backup,
        )
        .await?;
        let from = SpaceRef {
            space: store.space(),
            device: store.device(),
            fingerprint: store.key_fingerprint(),
        };
        // The key the backup unwrapped must be the one the server records for the space.
        http.check_key(&from).await?;
        http.register_device(&from).await?;
        let engine = Self::engine(&store, &http);
        Ok(Device {
            store,
            engine,
            http,
        })
    }

    /// Reopens the store on the same file (after a crash or kill).
    pub async fn reopen(db: &Path, url: &str, token: &str) -> Device {
        let storage = backend_sqlite::SqliteStorage::open(db, false)
            .await
            .expect("sqlite storage");
        let store = Store::open(Arc::new(storage), OrionCipher::shared(), options())
            .await
            .expect("reopen store");
        let http = http(url, token);
        let engine = Self::engine(&store, &http);
        Device {
            store,
            engine,
            http,
        }
    }

    /// Every live record (collection, key, value), sorted.
    pub async fn snapshot(&self, collection: &str) -> Vec<(String, serde_json::Value)> {
        self.store
            .scan(collection, None, 1_000_000)
            .await
            .expect("scan")
    }
}

/// Whether the push request starting in `head` carries envelopes: its body is longer than a
/// settle request's alone (79 bytes), by its `content-length` (no length: assumed so).
fn carries_envelopes(head: &[u8]) -> bool {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.find("content-length:")
        .and_then(|i| {
            head[i + 15..]
                .split("\r\n")
                .next()?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .is_none_or(|len| len > 100)
}

/// A TCP proxy between a client and the server that can lose responses (the server applied
/// the request, the client never hears) or stall requests after some bytes (a client killed
/// halfway through sending).
pub struct Proxy {
    pub addr: std::net::SocketAddr,
    hold: Arc<std::sync::atomic::AtomicBool>,
    stall_after: Arc<std::sync::atomic::AtomicUsize>,
    /// Request bytes forwarded to the server, all connections.
    pub forwarded: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: std::net::SocketAddr) -> Proxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall_after = Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX));
        let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (h, s, fw) = (hold.clone(), stall_after.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (h, s, fw) = (h.clone(), s.clone(), fw.clone());
                let push_seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let seen_up = push_seen.clone();
                tokio::spawn(async move {
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut sent = 0usize;
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if buf[..n].windows(6).any(|w| w == b"/push ")
                                && carries_envelopes(&buf[..n])
                            {
                                seen_up.store(true, Ordering::SeqCst);
                            }
                            let limit = s.load(Ordering::SeqCst);
                            let n = n.min(limit.saturating_sub(sent));
                            if n > 0 && sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            sent += n;
                            fw.fetch_add(n, Ordering::SeqCst);
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match sr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if h.load(Ordering::SeqCst) && push_seen.load(Ordering::SeqCst) {
                                continue; // the answer to a push is lost
                            }
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Either side closing ends the connection both ways.
                    tokio::select! {
                        () = up => {},
                        () = down => {},
                    }
                });
            }
        });
        Proxy {
            addr,
            hold,
            stall_after,
            forwarded,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Swallow the answers to pushes that carry envelopes (the server applies them, the client
    /// never hears); a settle request alone still gets its answer.
    pub fn lose_push_responses(&self, on: bool) {
        self.hold.store(on, Ordering::SeqCst);
    }

    /// Forward at most `bytes` of each new connection's request bytes, then nothing.
    pub fn stall_requests_after(&self, bytes: usize) {
        self.stall_after.store(bytes, Ordering::SeqCst);
    }
}

/// Polls `f` until it is true (at most 20 s).
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The built `hearth-server` binary running as a child process. Dropping it kills it.
pub struct ServerProcess {
    child: std::process::Child,
    _stdout: std::io::BufReader<std::process::ChildStdout>,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
    /// Its log file (standard error, appended across restarts).
    pub log: std::path::PathBuf,
}

impl ServerProcess {
    /// Starts `hearth-server` on `listen` (`127.0.0.1:0` for a free port) with `database` (passed
    /// in `HEARTH_DATABASE`, as a deployment would), logging at trace level to `log`.
    pub fn start(database: &str, listen: &str, log: &Path) -> ServerProcess {
        use std::io::BufRead;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hearth-server"))
            .args(["--listen", listen])
            .env("HEARTH_DATABASE", database)
            .env("HEARTH_LOG", "trace")
            .stdout(std::process::Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn hearth-server");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| {
                let logs = std::fs::read_to_string(log).unwrap_or_default();
                panic!("unexpected first line {line:?}; log: {logs}")
            })
            .parse()
            .expect("address");
        ServerProcess {
            child,
            _stdout: stdout,
            addr,
            log: log.to_owned(),
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The operating system's id of the process.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no graceful stop, no flush, no chance to finish anything in flight.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM and wait: asserts a graceful stop with exit status 0.
    pub fn terminate(mut self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "hearth-server exited with {exit}");
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).expect("read log")
    }

    /// One counter line of its `/metrics`, summed over statuses: requests to `route` that
    /// answered `status`.
    pub async fn requests(&self, route: &str, status: u16) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let want = format!("hearth_requests_total{{route=\"{route}\",status=\"{status}\"}} ");
        text.lines()
            .filter_map(|l| l.strip_prefix(&want))
            .filter_map(|n| n.trim().parse::<u64>().ok())
            .sum()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
