//! The `/v1/` HTTP API (see `docs/protocol.md`): routes, authentication, error statuses,
//! request logging and metrics.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, MatchedPath, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use sync_core::{DeviceId, Error, ErrorKind, SpaceId, SpaceRef, wire};

use crate::auth;
use crate::metrics::Metrics;
use crate::store::{AccountId, ServerStore, SpaceInfo, SpaceRetired};

/// Largest key backup accepted (a wrapped keyring is a few hundred bytes).
pub const MAX_KEY_BACKUP: usize = 64 * 1024;

pub(crate) struct App {
    pub(crate) store: Arc<dyn ServerStore>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) registration: bool,
    /// Longest a request may take, body upload included.
    pub(crate) request_timeout: std::time::Duration,
    /// Becomes true when a shutdown's drain timeout has passed.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

/// An error on its way out: the status its kind maps to and a small JSON body
/// `{"error": kind, "message": text}` (never user data).
#[derive(Debug)]
pub(crate) struct ApiError(Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

/// The HTTP status of an error kind. Clients map it back (`transport-http`).
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::WrongKey => StatusCode::CONFLICT,
        ErrorKind::ResyncRequired => StatusCode::GONE,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::InvalidInput | ErrorKind::Corrupt | ErrorKind::Unsupported => {
            StatusCode::BAD_REQUEST
        }
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[derive(Serialize, Deserialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    /// `"space_retired"` when the space was retired (the error is then `wrong_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    /// The retired space's successor (hex), when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    successor: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.0.kind();
        let status = status_of(kind);
        // Internal details stay in the server's log; the client learns the kind.
        let message = if status.is_server_error() {
            "the server could not complete the request; try again later"
        } else {
            self.0.message()
        };
        let retired = SpaceRetired::of(&self.0);
        let body = serde_json::to_vec(&ErrorBody {
            error: kind.as_str(),
            message,
            code: retired.map(|_| "space_retired"),
            successor: retired.and_then(|r| r.successor).map(|s| s.to_hex()),
        })
        .unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        r.extensions_mut().insert(Failure {
            kind,
            text: self.0.to_string(),
        });
        r
    }
}

/// What the logging middleware learns about a failed request: the kind, and the error's text
/// (which by the error type's rule holds no user data).
#[derive(Clone, Debug)]
struct Failure {
    kind: ErrorKind,
    text: String,
}

type ApiResult<T = Response> = Result<T, ApiError>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> ApiResult {
    let body = serde_json::to_vec(value)
        .map_err(|e| Error::internal("response encoding").with_source(e))?;
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn binary(body: Vec<u8>, content_type: &'static str) -> Response {
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The authenticated account of a request.
pub(crate) struct Auth(AccountId);

impl FromRequestParts<Arc<App>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unauthorized,
                    "missing, malformed or unknown account token",
                )
            })?;
        Ok(Auth(auth::verify(app.store.as_ref(), token.trim()).await?))
    }
}

/// A request body, with axum's rejections turned into typed errors (413 stays 413).
fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError(Error::new(
                ErrorKind::TooLarge,
                "request body larger than the server accepts",
            ))
        } else {
            ApiError(Error::invalid("unreadable request body"))
        }
    })
}

fn space_from_path(s: &str) -> ApiResult<SpaceId> {
    let mut b = [0u8; 16];
    hex::decode_to_slice(s, &mut b)
        .map_err(|_| Error::invalid("a space id is 32 hex characters"))?;
    Ok(SpaceId(b))
}

fn check_space(path: SpaceId, from: &SpaceRef) -> ApiResult<()> {
    if from.space != path {
        return Err(Error::invalid("the message names another space than the URL").into());
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Registered {
    account: String,
    token: String,
}

async fn register(State(app): State<Arc<App>>) -> ApiResult {
    if !app.registration {
        return Err(Error::new(
            ErrorKind::Forbidden,
            "this server does not accept new accounts",
        )
        .into());
    }
    let issued = auth::issue()?;
    app.store
        .create_account(issued.account, issued.hash)
        .await?;
    // No id, not even a prefix: the log says that an account was made, not which.
    tracing::info!("account registered");
    json(
        StatusCode::CREATED,
        &Registered {
            account: issued.account.to_hex(),
            token: issued.token,
        },
    )
}

#[derive(Serialize, Deserialize)]
struct SpaceJson {
    space: String,
    fingerprint: Option<String>,
    retired: bool,
    successor: Option<String>,
}

impl From<&SpaceInfo> for SpaceJson {
    fn from(s: &SpaceInfo) -> Self {
        Self {
            space: s.space.to_hex(),
            fingerprint: s.fingerprint.map(hex::encode),
            retired: s.retired,
            successor: s.successor.map(|s| s.to_hex()),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct SpacesJson {
    spaces: Vec<SpaceJson>,
}

async fn list_spaces(State(app): State<Arc<App>>, Auth(account): Auth) -> ApiResult {
    let spaces = app.store.spaces(account).await?;
    json(
        StatusCode::OK,
        &SpacesJson {
            spaces: spaces.iter().map(SpaceJson::from).collect(),
        },
    )
}

#[derive(Deserialize)]
struct FingerprintJson {
    fingerprint: String,
    /// On `PUT /v1/spaces/{space}`: the space this one replaces (a key rotation), which is
    /// retired with this one as its successor.
    #[serde(default)]
    replaces: Option<String>,
}

fn fingerprint_json(b: &[u8]) -> ApiResult<FingerprintJson> {
    Ok(serde_json::from_slice(b)
        .map_err(|_| Error::invalid("expected {\"fingerprint\": \"<64 hex characters>\"}"))?)
}

fn fingerprint_of(f: &FingerprintJson) -> ApiResult<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(&f.fingerprint, &mut out)
        .map_err(|_| Error::invalid("a fingerprint is 64 hex characters"))?;
    Ok(out)
}

fn fingerprint_from(b: &[u8]) -> ApiResult<[u8; 32]> {
    fingerprint_of(&fingerprint_json(b)?)
}

async fn get_space(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    match app.store.space(account, space).await? {
        Some(info) => json(StatusCode::OK, &SpaceJson::from(&info)),
        None => Err(Error::new(ErrorKind::NotFound, "no such space").into()),
    }
}

#[derive(Deserialize)]
struct RetireJson {
    #[serde(default)]
    successor: Option<String>,
}

async fn retire_space(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let b = body(b)?;
    let successor = if b.is_empty() {
        None
    } else {
        let r: RetireJson = serde_json::from_slice(&b)
            .map_err(|_| Error::invalid("expected {\"successor\": \"<32 hex characters>\"}"))?;
        r.successor.as_deref().map(space_from_path).transpose()?
    };
    app.store.retire_space(account, space, successor).await?;
    tracing::info!("space retired");
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn register_space(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let request = fingerprint_json(&body(b)?)?;
    let fingerprint = fingerprint_of(&request)?;
    let replaces = request
        .replaces
        .as_deref()
        .map(space_from_path)
        .transpose()?;
    let new = match replaces {
        None => {
            app.store
                .register_space(account, space, fingerprint)
                .await?
        }
        Some(old) => {
            // One transaction: the old space stops taking uploads (devices still on the old
            // key must re-join), or, refused, nothing is registered.
            let new = app
                .store
                .register_successor(account, space, fingerprint, old)
                .await?;
            tracing::info!("space registered as a successor; the old one is retired");
            new
        }
    };
    json(
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &SpaceJson {
            space: space.to_hex(),
            fingerprint: Some(hex::encode(fingerprint)),
            retired: false,
            successor: None,
        },
    )
}

async fn register_device(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path((space, device)): Path<(String, String)>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let mut d = [0u8; 16];
    hex::decode_to_slice(&device, &mut d)
        .map_err(|_| Error::invalid("a device id is 32 hex characters"))?;
    let fingerprint = fingerprint_from(&body(b)?)?;
    let from = SpaceRef {
        space,
        device: DeviceId(d),
        fingerprint,
    };
    app.store.register_device(account, &from).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn push(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let b = body(b)?;
    let request = wire::decode_push_request(&b)?;
    check_space(space, &request.from)?;
    let response = app.store.push(account, &request).await?;
    app.metrics.pushed(request.envelopes.len(), b.len());
    Ok(binary(
        wire::encode_push_response(&response)?,
        wire::CONTENT_TYPE,
    ))
}

async fn pull(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let request = wire::decode_pull_request(&body(b)?)?;
    check_space(space, &request.from)?;
    let page = app.store.pull(account, &request).await?;
    let out = wire::encode_pull_page(&page)?;
    app.metrics.pulled(page.envelopes.len(), out.len());
    Ok(binary(out, wire::CONTENT_TYPE))
}

async fn get_backup(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    match app.store.get_key_backup(account, space).await? {
        Some(blob) => Ok(binary(blob, "application/octet-stream")),
        None => Err(Error::new(ErrorKind::NotFound, "this space has no key backup").into()),
    }
}

async fn put_backup(
    State(app): State<Arc<App>>,
    Auth(account): Auth,
    Path(space): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let space = space_from_path(&space)?;
    let b = body(b)?;
    if b.len() > MAX_KEY_BACKUP {
        return Err(Error::new(ErrorKind::TooLarge, "key backup too large").into());
    }
    if b.is_empty() {
        return Err(Error::invalid("empty key backup").into());
    }
    // Ownership and retirement first (another account's space is 403 whatever the body).
    let info = app.store.space(account, space).await?;
    if let Some(info) = info
        && info.retired
    {
        return Err(SpaceRetired {
            successor: info.successor,
        }
        .error()
        .into());
    }
    // The backup is the device's key header: its space and root-key fingerprint are in the
    // clear (the root key is wrapped). A device holding another key than the space's must not
    // replace the backup new devices join with.
    let ring = sync_core::keyring::Keyring::decode(&b)?;
    if ring.space != space {
        return Err(Error::invalid("the key backup belongs to another space than the URL").into());
    }
    match info.and_then(|i| i.fingerprint) {
        Some(f) if f != ring.fingerprint => {
            return Err(Error::new(
                ErrorKind::WrongKey,
                "this key backup holds a different key than the space: check the passphrase",
            )
            .into());
        }
        Some(_) => {}
        // A space not registered yet is claimed with the backup's fingerprint.
        None => {
            app.store
                .register_space(account, space, ring.fingerprint)
                .await?;
        }
    }
    app.store.put_key_backup(account, space, b.to_vec()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn healthz(State(app): State<Arc<App>>) -> ApiResult {
    app.store.ping().await?;
    Ok((StatusCode::OK, "ok\n").into_response())
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let mut r = (StatusCode::OK, app.metrics.render()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Logs one line per request (method, route template, status, duration, error kind) and
/// counts it. Never the URI's ids, headers, tokens or bodies.
async fn track(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // Dropping the handler's future (on timeout or at the end of a shutdown's drain) rolls back
    // any transaction it had begun.
    let mut stopping = app.stopping.clone();
    let response = tokio::select! {
        run = tokio::time::timeout(app.request_timeout, next.run(request)) => match run {
            Ok(response) => response,
            Err(_) => ApiError(Error::new(
                ErrorKind::Unavailable,
                "the request took longer than the server allows; retry",
            ))
            .into_response(),
        },
        _ = stopping.wait_for(|stop| *stop) => ApiError(Error::new(
            ErrorKind::Unavailable,
            "the server is shutting down; retry",
        ))
        .into_response(),
    };
    let status = response.status();
    let seconds = started.elapsed().as_secs_f64();
    let ms = seconds * 1000.0;
    app.metrics.request(&route, status.as_u16(), seconds);
    match response.extensions().get::<Failure>() {
        Some(f) => {
            app.metrics.error(f.kind.as_str());
            if status.is_server_error() {
                tracing::warn!(%method, %route, status = status.as_u16(), ms, kind = %f.kind, error = %f.text, "request failed");
            } else {
                tracing::info!(%method, %route, status = status.as_u16(), ms, kind = %f.kind, "request refused");
            }
        }
        None => tracing::info!(%method, %route, status = status.as_u16(), ms, "request"),
    }
    response
}

pub(crate) fn router(app: Arc<App>, max_body: usize) -> Router {
    Router::new()
        .route("/v1/accounts", post(register))
        .route("/v1/account/spaces", get(list_spaces))
        .route("/v1/spaces/{space}", put(register_space).get(get_space))
        .route("/v1/spaces/{space}/retire", post(retire_space))
        .route("/v1/spaces/{space}/devices/{device}", put(register_device))
        .route("/v1/spaces/{space}/push", post(push))
        .route("/v1/spaces/{space}/pull", post(pull))
        .route(
            "/v1/spaces/{space}/key-backup",
            get(get_backup).put(put_backup),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(app.clone(), track))
        .layer(DefaultBodyLimit::max(max_body))
        .fallback(|| async {
            ApiError(Error::new(ErrorKind::NotFound, "no such endpoint")).into_response()
        })
        // A known endpoint with another method: 405, with the same JSON error as the rest.
        .method_not_allowed_fallback(|| async {
            let mut r =
                ApiError(Error::invalid("this endpoint does not take that method")).into_response();
            *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            r
        })
        .with_state(app)
}
