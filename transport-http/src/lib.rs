//! # transport-http
//!
//! hearth's [`Transport`] over HTTP to the zero-knowledge sync server (`sync-server`):
//! [reqwest](https://docs.rs/reqwest) with rustls (no OpenSSL), the binary wire format of
//! [`sync_core::wire`], a bearer token per account, connect and request timeouts, and typed
//! errors: 401 → [`ErrorKind::Unauthorized`], 403 → [`ErrorKind::Forbidden`], 404 →
//! [`ErrorKind::NotFound`], 409 → [`ErrorKind::WrongKey`], 410 →
//! [`ErrorKind::ResyncRequired`], 413 → [`ErrorKind::TooLarge`], 400 → the kind the server
//! names (`invalid_input`, `corrupt`, `unsupported`), 5xx, 429 and network failures → a
//! temporary [`ErrorKind::Unavailable`], which [`RetryTransport`] retries. A space retired
//! after a key rotation is [`ErrorKind::WrongKey`] with a [`SpaceRetired`] source telling the
//! user to re-join. Response bodies are read up to [`HttpOptions::max_response_bytes`]
//! ([`ErrorKind::TooLarge`] beyond), and [`Transport::push`] compares the device's key
//! fingerprint with the server's record of the space before its first upload
//! ([`HttpTransport::check_key`]).
//!
//! ```no_run
//! # async fn run() -> sync_core::Result<()> {
//! use std::sync::Arc;
//! use transport_http::HttpTransport;
//!
//! // Once: an account (keep the token with the app's credentials).
//! let account = HttpTransport::register_account("https://sync.example.org").await?;
//! // Every start: the transport the sync engine uses, retrying temporary failures.
//! let transport = HttpTransport::new("https://sync.example.org", &account.token)?.retrying();
//! # let _ = Arc::new(transport);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
pub use sync_core::SpaceRetired;
use sync_core::retry::{RetryPolicy, RetryTransport};
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, Result, SpaceId, SpaceRef,
    Transport, wire,
};

/// Timeouts and size limits of the HTTP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request, response body included.
    pub request_timeout: Duration,
    /// Largest push body sent in one request: a larger push is split into several requests
    /// (safe, since push is idempotent by device and sequence), so a batch of large records
    /// does not hit the server's body limit. An envelope larger than this still goes alone.
    /// A server whose limit is lower answers `413`: the part is sent again in halves, and
    /// this transport keeps to the smaller size from then on.
    pub max_push_bytes: usize,
    /// Largest response body read: a server that announces or sends more gets a permanent
    /// [`ErrorKind::TooLarge`] and the rest is not read, so a hostile server cannot exhaust
    /// the client's memory. The default fits the largest page an honest server sends (one
    /// envelope of the server's 17 MiB limit, or 4 MiB of smaller ones).
    pub max_response_bytes: usize,
}

/// [`HttpOptions::max_response_bytes`] by default.
pub const DEFAULT_MAX_RESPONSE: usize = 32 * 1024 * 1024;

/// Largest error body read from a failed response (its JSON is a few hundred bytes).
const MAX_ERROR_BODY: usize = 16 * 1024;

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_push_bytes: 8 * 1024 * 1024,
            max_response_bytes: DEFAULT_MAX_RESPONSE,
        }
    }
}

/// A new account, as the server issued it.
#[derive(Clone, Deserialize)]
pub struct Account {
    /// The account id (hex).
    pub account: String,
    /// The bearer token. Shown once; the server keeps only its hash.
    pub token: String,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("account", &self.account)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// A space of the account, as the server lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteSpace {
    /// The space.
    pub space: SpaceId,
    /// Fingerprint of its root key, once registered.
    pub fingerprint: Option<[u8; 32]>,
    /// True when the space was retired (its key rotated away); it takes no more uploads.
    pub retired: bool,
    /// The space that replaced it, when one was named.
    pub successor: Option<SpaceId>,
}

/// The HTTP transport. Cheap to share behind an `Arc`; connections are pooled.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    token: String,
    /// The push body size in use: [`HttpOptions::max_push_bytes`], lowered by each `413`.
    push_budget: Arc<AtomicUsize>,
    max_response_bytes: usize,
    /// (space, fingerprint) pairs whose key this transport has compared with the server's
    /// record of the space: checked once before the first upload.
    verified: Arc<Mutex<HashSet<VerifiedKey>>>,
}

/// A space and the fingerprint of the key a device holds for it.
type VerifiedKey = (SpaceId, [u8; 32]);

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &self.base)
            .field("token", &"<redacted>")
            .finish()
    }
}

fn client(options: HttpOptions) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::new(ErrorKind::Config, "cannot build the HTTP client").with_source(e))
}

fn base(url: &str) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::new(ErrorKind::Config, "invalid server URL").with_source(e))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::new(
            ErrorKind::Config,
            "the server URL must be http:// or https://",
        ));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A network failure: always temporary. The cause is kept (reqwest's text names the URL, never
/// a header or body).
fn network(e: reqwest::Error) -> Error {
    let what = if e.is_timeout() {
        "the sync server did not answer in time"
    } else if e.is_connect() {
        "cannot connect to the sync server"
    } else {
        "the connection to the sync server failed"
    };
    Error::new(ErrorKind::Unavailable, what)
        .with_source(e.without_url())
        .temporary()
}

#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    message: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    successor: Option<String>,
}

/// Reads a response body of at most `limit` bytes: a larger announced length is refused
/// before reading, a longer stream as soon as it passes the limit.
async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let too_large = || {
        Error::new(
            ErrorKind::TooLarge,
            format!("the sync server sent a response larger than {limit} bytes"),
        )
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(network)? {
        if out.len() + chunk.len() > limit {
            return Err(too_large());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn space_id(s: &str, what: &'static str) -> Result<SpaceId> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(s, &mut id).map_err(|_| Error::corrupt(what))?;
    Ok(SpaceId(id))
}

#[derive(Deserialize)]
struct SpaceJson {
    space: String,
    fingerprint: Option<String>,
    #[serde(default)]
    retired: bool,
    #[serde(default)]
    successor: Option<String>,
}

impl SpaceJson {
    fn parse(self) -> Result<RemoteSpace> {
        let fingerprint = match self.fingerprint {
            Some(f) => {
                let mut b = [0u8; 32];
                hex::decode_to_slice(&f, &mut b)
                    .map_err(|_| Error::corrupt("malformed fingerprint"))?;
                Some(b)
            }
            None => None,
        };
        Ok(RemoteSpace {
            space: space_id(&self.space, "malformed space id in the space list")?,
            fingerprint,
            retired: self.retired,
            successor: self
                .successor
                .as_deref()
                .map(|s| space_id(s, "malformed successor space id"))
                .transpose()?,
        })
    }
}

/// Turns a non-success response into a typed error: the kind the server names, else the one
/// its status implies. Server errors and 429 are temporary.
async fn failure(response: reqwest::Response) -> Error {
    let status = response.status();
    let body = read_limited(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
    if let Some(b) = &parsed
        && status == StatusCode::CONFLICT
        && b.code.as_deref() == Some("space_retired")
    {
        let successor = b
            .successor
            .as_deref()
            .and_then(|s| space_id(s, "malformed successor").ok());
        return SpaceRetired { successor }.error();
    }
    let by_status = match status {
        StatusCode::UNAUTHORIZED => ErrorKind::Unauthorized,
        StatusCode::FORBIDDEN => ErrorKind::Forbidden,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::CONFLICT => ErrorKind::WrongKey,
        StatusCode::GONE => ErrorKind::ResyncRequired,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorKind::TooLarge,
        s if s.is_client_error() => ErrorKind::InvalidInput,
        _ => ErrorKind::Unavailable,
    };
    let temporary = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
    let (kind, message) = match parsed {
        Some(b) if !temporary => (
            ErrorKind::parse(&b.error).unwrap_or(by_status),
            format!("sync server: {}", b.message),
        ),
        _ => (
            if temporary {
                ErrorKind::Unavailable
            } else {
                by_status
            },
            format!("sync server answered {status}"),
        ),
    };
    let e = Error::new(kind, message);
    if temporary { e.temporary() } else { e }
}

impl HttpTransport {
    /// Registry-style name.
    pub const NAME: &'static str = "http";

    /// A transport to the server at `base_url` (`http://` or `https://`) with an account's
    /// bearer `token`, default timeouts, no retries (see [`HttpTransport::retrying`]).
    pub fn new(base_url: &str, token: impl Into<String>) -> Result<Self> {
        Self::with_options(base_url, token, HttpOptions::default())
    }

    /// Like [`HttpTransport::new`] with explicit timeouts.
    pub fn with_options(
        base_url: &str,
        token: impl Into<String>,
        options: HttpOptions,
    ) -> Result<Self> {
        Ok(Self {
            client: client(options)?,
            base: base(base_url)?,
            token: token.into(),
            push_budget: Arc::new(AtomicUsize::new(options.max_push_bytes.max(1))),
            max_response_bytes: options.max_response_bytes.max(1),
            verified: Arc::default(),
        })
    }

    /// This transport wrapped in [`RetryTransport`] with the default policy: temporary
    /// failures are retried with exponential backoff and jitter; permanent ones return at once.
    pub fn retrying(self) -> RetryTransport {
        self.retrying_with(RetryPolicy::default())
    }

    /// This transport wrapped in [`RetryTransport`] with `policy`.
    pub fn retrying_with(self, policy: RetryPolicy) -> RetryTransport {
        RetryTransport::new(Arc::new(self), policy)
    }

    /// Creates an account on the server at `base_url` and returns its token.
    pub async fn register_account(base_url: &str) -> Result<Account> {
        let base = base(base_url)?;
        let r = client(HttpOptions::default())?
            .post(format!("{base}/v1/accounts"))
            .send()
            .await
            .map_err(network)?;
        if !r.status().is_success() {
            return Err(failure(r).await);
        }
        let body = read_limited(r, MAX_ERROR_BODY).await?;
        serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt("malformed account registration answer").with_source(e))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn space_url(&self, space: &SpaceId, tail: &str) -> String {
        self.url(&format!("/v1/spaces/{}{tail}", space.to_hex()))
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(network)?;
        if r.status().is_success() {
            Ok(r)
        } else {
            Err(failure(r).await)
        }
    }

    async fn wire_call(&self, url: String, body: Vec<u8>) -> Result<Vec<u8>> {
        let r = self
            .send(
                self.client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, wire::CONTENT_TYPE)
                    .body(body),
            )
            .await?;
        read_limited(r, self.max_response_bytes).await
    }

    /// The account's spaces, retired ones included (see [`HttpTransport::current_space`]).
    pub async fn spaces(&self) -> Result<Vec<RemoteSpace>> {
        #[derive(Deserialize)]
        struct L {
            spaces: Vec<SpaceJson>,
        }
        let r = self
            .send(self.client.get(self.url("/v1/account/spaces")))
            .await?;
        let body = read_limited(r, self.max_response_bytes).await?;
        let list: L = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt("malformed space list").with_source(e))?;
        list.spaces.into_iter().map(SpaceJson::parse).collect()
    }

    /// One space of the account; `None` when the server has no such space.
    pub async fn space(&self, space: SpaceId) -> Result<Option<RemoteSpace>> {
        let r = match self.send(self.client.get(self.space_url(&space, ""))).await {
            Ok(r) => r,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let body = read_limited(r, MAX_ERROR_BODY).await?;
        let s: SpaceJson = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt("malformed space").with_source(e))?;
        s.parse().map(Some)
    }

    /// The space a joining device should join: the account's one space that is registered
    /// (has a key fingerprint) and not retired. After a key rotation the old space is retired
    /// and its successor is current, so a new device never joins the stale one (which
    /// `spaces().first()` could). [`ErrorKind::NotFound`] when there is none;
    /// [`ErrorKind::Config`] when several are current (the caller must name one).
    pub async fn current_space(&self) -> Result<RemoteSpace> {
        let current: Vec<RemoteSpace> = self
            .spaces()
            .await?
            .into_iter()
            .filter(|s| !s.retired && s.fingerprint.is_some())
            .collect();
        match current[..] {
            [one] => Ok(one),
            [] => Err(Error::new(
                ErrorKind::NotFound,
                "this account has no active space: register the first device",
            )),
            _ => Err(Error::new(
                ErrorKind::Config,
                "this account has several active spaces: name the one to join",
            )),
        }
    }

    /// Compares the key a device holds with the server's record of its space, without
    /// uploading anything: [`ErrorKind::WrongKey`] when the space records another key's
    /// fingerprint, or (with [`SpaceRetired`] as its source) when the space was retired. A
    /// space the server does not know yet (the first device has not registered it) passes.
    /// [`Transport::push`] runs this once per space and key before the first upload.
    pub async fn check_key(&self, from: &SpaceRef) -> Result<()> {
        let Some(remote) = self.space(from.space).await? else {
            return Ok(());
        };
        if remote.retired {
            return Err(SpaceRetired {
                successor: remote.successor,
            }
            .error());
        }
        match remote.fingerprint {
            Some(f) if f != from.fingerprint => Err(Error::new(
                ErrorKind::WrongKey,
                "this device holds a different key than the space on the server: check the passphrase",
            )),
            _ => Ok(()),
        }
    }

    fn is_verified(&self, from: &SpaceRef) -> bool {
        self.verified
            .lock()
            .map(|v| v.contains(&(from.space, from.fingerprint)))
            .unwrap_or(false)
    }

    fn mark_verified(&self, from: &SpaceRef) {
        if let Ok(mut v) = self.verified.lock() {
            v.insert((from.space, from.fingerprint));
        }
    }

    /// Registers `space` (a key rotation's new space) with its fingerprint as the successor
    /// of `replaces`, which the server retires: devices still on the old key are refused from
    /// then on and told to re-join.
    pub async fn register_successor(
        &self,
        space: SpaceId,
        fingerprint: [u8; 32],
        replaces: SpaceId,
    ) -> Result<()> {
        let body = serde_json::json!({
            "fingerprint": hex::encode(fingerprint),
            "replaces": replaces.to_hex(),
        })
        .to_string();
        self.send(
            self.client
                .put(self.space_url(&space, ""))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// Retires a space of the account (naming its successor, if any). Idempotent.
    pub async fn retire_space(&self, space: SpaceId, successor: Option<SpaceId>) -> Result<()> {
        let body = serde_json::json!({ "successor": successor.map(|s| s.to_hex()) }).to_string();
        self.send(
            self.client
                .post(self.space_url(&space, "/retire"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// Registers a space for this account with its key fingerprint (the first device does
    /// this). Another account's space is [`ErrorKind::Forbidden`]; a space registered with
    /// another fingerprint is [`ErrorKind::WrongKey`].
    pub async fn register_space(&self, space: SpaceId, fingerprint: [u8; 32]) -> Result<()> {
        let body = serde_json::json!({ "fingerprint": hex::encode(fingerprint) }).to_string();
        self.send(
            self.client
                .put(self.space_url(&space, ""))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// Registers a device of a space. The server compares the device's key fingerprint with
    /// the space's and answers [`ErrorKind::WrongKey`] before the device uploads anything.
    pub async fn register_device(&self, from: &SpaceRef) -> Result<()> {
        let body = serde_json::json!({ "fingerprint": hex::encode(from.fingerprint) }).to_string();
        self.send(
            self.client
                .put(self.space_url(&from.space, &format!("/devices/{}", from.device.to_hex())))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
        )
        .await?;
        Ok(())
    }

    /// Checks the server is up (`/healthz`).
    pub async fn health(&self) -> Result<()> {
        let r = self
            .client
            .get(self.url("/healthz"))
            .send()
            .await
            .map_err(network)?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(failure(r).await)
        }
    }
}

#[async_trait]
impl Transport for HttpTransport {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        // The client's own check, before the first upload of this space and key: a device
        // with the wrong key (or a retired space) sends no envelope even to a lax server.
        if !self.is_verified(&request.from) {
            self.check_key(&request.from).await?;
            self.mark_verified(&request.from);
        }
        let mut assigned = Vec::with_capacity(request.envelopes.len());
        let mut held = Vec::new();
        // A settle request goes with the first part: the server answers it before storing.
        let mut settle = request.settle;
        let url = self.space_url(&request.from.space, "/push");
        let mut rest = &request.envelopes[..];
        while !rest.is_empty() || assigned.is_empty() {
            // As many envelopes as fit in the push budget (at least one).
            let budget = self.push_budget.load(Ordering::Relaxed);
            let mut size = 2 + 64 + 1 + 8 + 4;
            let mut n = 0;
            for e in rest {
                let more = 47 + 8 * e.supersedes.len() + e.envelope.len();
                if n > 0 && size + more > budget {
                    break;
                }
                size += more;
                n += 1;
            }
            let mut part = PushRequest {
                from: request.from,
                envelopes: rest[..n].to_vec(),
                settle: settle.take(),
            };
            let b = match self
                .wire_call(url.clone(), wire::encode_push_request(&part)?)
                .await
            {
                Ok(b) => b,
                // The server's body limit is below the budget: nothing of the part was
                // stored, so it goes again in halves (each refusal halves it, down to one
                // envelope, which is refused for good).
                Err(e) if e.kind() == ErrorKind::TooLarge && n > 1 => {
                    let smaller = (size / 2).max(1);
                    self.push_budget.fetch_min(smaller, Ordering::Relaxed);
                    tracing::info!(
                        refused = size,
                        budget = smaller,
                        "the server refused a push body as too large; sending smaller parts"
                    );
                    settle = part.settle.take();
                    continue;
                }
                Err(e) => return Err(e),
            };
            rest = &rest[n..];
            let response = wire::decode_push_response(&b)?;
            if response.assigned.len() != part.envelopes.len() {
                return Err(Error::corrupt(
                    "the server acknowledged a different number of envelopes than were pushed",
                ));
            }
            assigned.extend(response.assigned);
            held.extend(response.held);
            if part.envelopes.is_empty() {
                break;
            }
        }
        Ok(PushResponse { assigned, held })
    }

    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        let body = wire::encode_pull_request(&request);
        let b = self
            .wire_call(self.space_url(&request.from.space, "/pull"), body)
            .await?;
        wire::decode_pull_page(&b)
    }

    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        match self
            .send(self.client.get(self.space_url(&space, "/key-backup")))
            .await
        {
            Ok(r) => Ok(Some(read_limited(r, self.max_response_bytes).await?)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        self.send(
            self.client
                .put(self.space_url(&space, "/key-backup"))
                .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                .body(blob),
        )
        .await?;
        Ok(())
    }

    async fn share(&self, _destination: &str, _sealed: Vec<u8>) -> Result<()> {
        Err(Error::new(
            ErrorKind::Unsupported,
            "the sync server does not relay shares to third-party destinations",
        ))
    }
}
