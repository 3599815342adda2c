//! # transport-http
//!
//! hearth's [`Transport`] over HTTP to the zero-knowledge sync server (`sync-server`):
//! [reqwest](https://docs.rs/reqwest) with rustls (no OpenSSL), the binary wire format of
//! [`sync_core::wire`], a bearer token per account, connect and request timeouts, and typed
//! errors: 401 → [`ErrorKind::Unauthorized`], 403 → [`ErrorKind::Forbidden`], 404 →
//! [`ErrorKind::NotFound`], 409 → [`ErrorKind::WrongKey`], 410 →
//! [`ErrorKind::ResyncRequired`], 413 → [`ErrorKind::TooLarge`], 400 → the kind the server
//! names (`invalid_input`, `corrupt`, `unsupported`), 5xx and network failures → a temporary
//! [`ErrorKind::Unavailable`], which [`RetryTransport`] retries.
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

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::Deserialize;
use sync_core::retry::{RetryPolicy, RetryTransport};
use sync_core::{
    Error, ErrorKind, PullPage, PullRequest, PushRequest, PushResponse, Result, SpaceId, SpaceRef,
    Transport, wire,
};

/// Timeouts of the HTTP client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpOptions {
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole request, response body included.
    pub request_timeout: Duration,
    /// Largest push body sent in one request: a larger push is split into several requests
    /// (safe, since push is idempotent by device and sequence), so a batch of large records
    /// does not hit the server's body limit. An envelope larger than this still goes alone.
    pub max_push_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_push_bytes: 8 * 1024 * 1024,
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
}

/// The HTTP transport. Cheap to share behind an `Arc`; connections are pooled.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: String,
    token: String,
    max_push_bytes: usize,
}

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
}

/// Turns a non-success response into a typed error: the kind the server names, else the one
/// its status implies. Server errors and 429 are temporary.
async fn failure(response: reqwest::Response) -> Error {
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
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
            max_push_bytes: options.max_push_bytes.max(1),
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
        let body = r.bytes().await.map_err(network)?;
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
        Ok(r.bytes().await.map_err(network)?.to_vec())
    }

    /// The account's spaces (a joining device learns its space id here).
    pub async fn spaces(&self) -> Result<Vec<RemoteSpace>> {
        #[derive(Deserialize)]
        struct S {
            space: String,
            fingerprint: Option<String>,
        }
        #[derive(Deserialize)]
        struct L {
            spaces: Vec<S>,
        }
        let r = self
            .send(self.client.get(self.url("/v1/account/spaces")))
            .await?;
        let body = r.bytes().await.map_err(network)?;
        let list: L = serde_json::from_slice(&body)
            .map_err(|e| Error::corrupt("malformed space list").with_source(e))?;
        list.spaces
            .into_iter()
            .map(|s| {
                let mut id = [0u8; 16];
                hex::decode_to_slice(&s.space, &mut id)
                    .map_err(|_| Error::corrupt("malformed space id in the space list"))?;
                let fingerprint = match s.fingerprint {
                    Some(f) => {
                        let mut b = [0u8; 32];
                        hex::decode_to_slice(&f, &mut b)
                            .map_err(|_| Error::corrupt("malformed fingerprint"))?;
                        Some(b)
                    }
                    None => None,
                };
                Ok(RemoteSpace {
                    space: SpaceId(id),
                    fingerprint,
                })
            })
            .collect()
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
        let mut assigned = Vec::with_capacity(request.envelopes.len());
        let url = self.space_url(&request.from.space, "/push");
        let mut rest = &request.envelopes[..];
        while !rest.is_empty() || assigned.is_empty() {
            // As many envelopes as fit in max_push_bytes (at least one).
            let mut size = 2 + 64 + 4;
            let mut n = 0;
            for e in rest {
                let more = 47 + 8 * e.supersedes.len() + e.envelope.len();
                if n > 0 && size + more > self.max_push_bytes {
                    break;
                }
                size += more;
                n += 1;
            }
            let part = PushRequest {
                from: request.from,
                envelopes: rest[..n].to_vec(),
            };
            rest = &rest[n..];
            let b = self
                .wire_call(url.clone(), wire::encode_push_request(&part)?)
                .await?;
            let response = wire::decode_push_response(&b)?;
            if response.assigned.len() != part.envelopes.len() {
                return Err(Error::corrupt(
                    "the server acknowledged a different number of envelopes than were pushed",
                ));
            }
            assigned.extend(response.assigned);
            if part.envelopes.is_empty() {
                break;
            }
        }
        Ok(PushResponse { assigned })
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
            Ok(r) => Ok(Some(r.bytes().await.map_err(network)?.to_vec())),
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
