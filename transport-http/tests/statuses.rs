//! The client's half of the protocol's statuses, against a stub server on 127.0.0.1 (axum):
//! every status maps to its typed error, temporary exactly when a retry may help; a retired
//! space says so; and a hostile server cannot make the client read more than its response
//! limit, whether it announces the size or streams without one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sync_core::{DeviceId, ErrorKind, PullRequest, SpaceId, SpaceRef, Transport};
use transport_http::{HttpOptions, HttpTransport, SpaceRetired};

const LIMIT: usize = 64 * 1024;

fn error_body(kind: &str) -> String {
    format!(r#"{{"error": "{kind}", "message": "stub says {kind}"}}"#)
}

/// `/<scenario>/<arg>/v1/...`: what the stub answers depends on the path prefix.
async fn answer(uri: Uri) -> Response {
    let mut parts = uri.path().trim_start_matches('/').split('/');
    let scenario = parts.next().unwrap_or_default().to_owned();
    let arg = parts.next().unwrap_or_default().to_owned();
    let json = |status: StatusCode, body: String| {
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    match scenario.as_str() {
        // A status with the JSON error body the server sends; `arg` is "<status>-<kind>".
        "status" => {
            let (code, kind) = arg.split_once('-').unwrap_or((arg.as_str(), ""));
            let status = StatusCode::from_u16(code.parse().unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if kind.is_empty() {
                (status, "not json at all").into_response()
            } else {
                json(status, error_body(kind))
            }
        }
        "retired" => json(
            StatusCode::CONFLICT,
            format!(
                r#"{{"error": "wrong_key", "message": "retired", "code": "space_retired", "successor": "{}"}}"#,
                "ab".repeat(16)
            ),
        ),
        // A body larger than the client's limit, with its length announced.
        "announced" => (StatusCode::OK, vec![0u8; LIMIT + 1]).into_response(),
        // An endless-looking stream without a length: 64 chunks of 4 KiB.
        "stream" => {
            let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(vec![0u8; 4096]));
            (
                StatusCode::OK,
                Body::from_stream(futures::stream::iter(chunks)),
            )
                .into_response()
        }
        // A huge error body: the client reads at most a little of it.
        "huge-error" => (StatusCode::BAD_REQUEST, vec![b'x'; 4 * LIMIT]).into_response(),
        "garbage" => (StatusCode::OK, vec![0xFFu8; 100]).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn stub() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = Router::new().fallback(answer);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

fn transport(addr: SocketAddr, prefix: &str) -> HttpTransport {
    HttpTransport::with_options(
        &format!("http://{addr}/{prefix}"),
        "token",
        HttpOptions {
            max_response_bytes: LIMIT,
            ..HttpOptions::default()
        },
    )
    .expect("transport")
}

fn pull() -> PullRequest {
    PullRequest {
        from: SpaceRef {
            space: SpaceId([1; 16]),
            device: DeviceId([2; 16]),
            fingerprint: [3; 32],
        },
        cursor: 0,
        limit: 10,
        include_own: false,
    }
}

#[tokio::test]
async fn every_status_maps_to_its_typed_error() {
    let addr = stub().await;
    let cases: &[(&str, ErrorKind, bool)] = &[
        ("401-unauthorized", ErrorKind::Unauthorized, false),
        ("401", ErrorKind::Unauthorized, false),
        ("403-forbidden", ErrorKind::Forbidden, false),
        ("403", ErrorKind::Forbidden, false),
        ("404-not_found", ErrorKind::NotFound, false),
        ("404", ErrorKind::NotFound, false),
        ("409-wrong_key", ErrorKind::WrongKey, false),
        ("409", ErrorKind::WrongKey, false),
        ("410-resync_required", ErrorKind::ResyncRequired, false),
        ("410", ErrorKind::ResyncRequired, false),
        ("413-too_large", ErrorKind::TooLarge, false),
        ("413", ErrorKind::TooLarge, false),
        ("400-invalid_input", ErrorKind::InvalidInput, false),
        ("400-corrupt", ErrorKind::Corrupt, false),
        ("400-unsupported", ErrorKind::Unsupported, false),
        ("400-no_such_kind", ErrorKind::InvalidInput, false),
        ("400", ErrorKind::InvalidInput, false),
        ("418", ErrorKind::InvalidInput, false),
        ("429", ErrorKind::Unavailable, true),
        ("500-internal", ErrorKind::Unavailable, true),
        ("500", ErrorKind::Unavailable, true),
        ("502", ErrorKind::Unavailable, true),
        ("503-unavailable", ErrorKind::Unavailable, true),
    ];
    for (arg, kind, temporary) in cases {
        let t = transport(addr, &format!("status/{arg}"));
        let err = t.pull(pull()).await.expect_err(arg);
        assert_eq!(err.kind(), *kind, "{arg}: {err}");
        assert_eq!(err.is_temporary(), *temporary, "{arg}: {err}");
        assert!(SpaceRetired::of(&err).is_none(), "{arg}");
    }
    // A missing key backup is not an error.
    let t = transport(addr, "status/404-not_found");
    assert_eq!(
        t.get_key_backup(SpaceId([1; 16])).await.expect("none"),
        None
    );
    // A garbled success body is a typed decoding error.
    let err = transport(addr, "garbage")
        .pull(pull())
        .await
        .expect_err("garbage");
    assert!(
        matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::Unsupported),
        "{err}"
    );
}

#[tokio::test]
async fn a_retired_space_is_a_wrong_key_that_says_so() {
    let addr = stub().await;
    let err = transport(addr, "retired/x")
        .pull(pull())
        .await
        .expect_err("retired");
    assert_eq!(err.kind(), ErrorKind::WrongKey);
    assert!(!err.is_temporary());
    assert_eq!(
        SpaceRetired::of(&err),
        Some(SpaceRetired {
            successor: Some(SpaceId([0xAB; 16]))
        })
    );
    assert!(err.to_string().contains("re-join"), "{err}");
}

#[tokio::test]
async fn a_hostile_server_cannot_make_the_client_read_more_than_its_limit() {
    let addr = stub().await;
    for prefix in ["announced/x", "stream/x"] {
        let t = transport(addr, prefix);
        let err = t.pull(pull()).await.expect_err(prefix);
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{prefix}: {err}");
        assert!(!err.is_temporary(), "{prefix}");
        let err = t.get_key_backup(SpaceId([1; 16])).await.expect_err(prefix);
        assert_eq!(err.kind(), ErrorKind::TooLarge, "{prefix}: {err}");
    }
    // A huge error body is cut short: the status still gives the kind.
    let err = transport(addr, "huge-error/x")
        .pull(pull())
        .await
        .expect_err("huge error");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    // Within the limit, the same stream is read whole (the limit is what refuses above).
    let big = HttpTransport::with_options(
        &format!("http://{addr}/stream/x"),
        "token",
        HttpOptions::default(),
    )
    .expect("transport");
    let err = big.pull(pull()).await.expect_err("not a pull page");
    assert_ne!(err.kind(), ErrorKind::TooLarge, "{err}");
}

#[tokio::test]
async fn no_server_is_a_temporary_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = transport(addr, "x")
        .pull(pull())
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
}

/// A server that accepts the connection and never answers: the request timeout ends the
/// call with a temporary `Unavailable` (the retry layer tries again), not a hang.
#[tokio::test]
async fn a_server_that_never_answers_is_a_temporary_unavailable_after_the_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        // Read nothing, write nothing: hold every connection open.
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let t = HttpTransport::with_options(
        &format!("http://{addr}"),
        "token",
        HttpOptions {
            request_timeout: Duration::from_millis(300),
            ..HttpOptions::default()
        },
    )
    .expect("transport");
    // The outer bound only keeps a broken client from hanging the suite.
    let err = tokio::time::timeout(Duration::from_secs(120), t.pull(pull()))
        .await
        .expect("the client's own timeout ends the call")
        .expect_err("timed out");
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary(), "{err}");
    held.abort();
}
