//! Bad input over real HTTP: every case gets a clear status and a typed client error, the
//! server keeps serving others, and nothing partial is stored.

mod common;

use common::{Device, PASS};
use reqwest::StatusCode;
use serde_json::json;
use sync_core::{
    DeviceId, ErrorKind, OutgoingEnvelope, PullRequest, PushRequest, RecordId, SpaceId, SpaceRef,
    Transport, WriteBatch, wire,
};
use sync_server::{RunningServer, Server};
use transport_http::{HttpOptions, HttpTransport};

async fn server(dir: &std::path::Path) -> RunningServer {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .database(format!("sqlite:{}", dir.join("server.db").display()))
        .max_body(64 * 1024)
        .build()
        .await
        .expect("server")
        .spawn()
}

async fn status_and_kind(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let text = r.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or(json!({}));
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

fn push_of(from: SpaceRef, n: usize, len: usize) -> PushRequest {
    PushRequest {
        from,
        envelopes: (0..n)
            .map(|i| OutgoingEnvelope {
                record: RecordId([i as u8; 32]),
                seq: i as u64 + 1,
                supersedes: vec![],
                tombstone: false,
                envelope: vec![0xAB; len],
            })
            .collect(),
        settle: None,
    }
}

#[tokio::test]
async fn bad_requests_get_clear_statuses_and_typed_errors_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path()).await;
    let url = server.url();
    let raw = reqwest::Client::new();
    let alice = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let mallory = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &alice.token).await;
    let space = a.store.space();
    let mut batch = WriteBatch::new();
    for i in 0..20 {
        batch.put("notes", format!("n{i}"), &json!(i)).expect("put");
    }
    a.store.write(batch).await.expect("write");
    a.engine.sync().await.expect("sync");
    let before = server.store().space_stats(space).await.expect("stats");
    assert_eq!(before.envelopes, 20 + 1, "20 records and A's head");
    let push_url = format!("{url}/v1/spaces/{}/push", space.to_hex());
    let pull_url = format!("{url}/v1/spaces/{}/pull", space.to_hex());
    // The refused bodies come from a device that never pushed, so one stored by mistake
    // would show in the count at the end (A's own sequences would be taken as replays).
    let fresh = SpaceRef {
        device: DeviceId([0xD0; 16]),
        ..a.from()
    };
    let good_push = wire::encode_push_request(&push_of(fresh, 1, 10)).expect("encode");

    // Missing, malformed and wrong tokens: 401 / Unauthorized.
    for auth in [None, Some("Bearer nonsense"), Some("Basic abc")] {
        let mut req = raw.post(&push_url).body(good_push.clone());
        if let Some(h) = auth {
            req = req.header("authorization", h);
        }
        let (s, k) = status_and_kind(req.send().await.expect("send")).await;
        assert_eq!((s, k.as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    }
    let (id, _) = alice.token.split_once('.').expect("token");
    let forged = format!("{id}.{}", "00".repeat(32));
    let err = common::http(&url, &forged)
        .spaces()
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(
        err,
        Some(ErrorKind::Unauthorized),
        "right account, wrong secret"
    );

    // Another account's space: 403 / Forbidden, for every operation.
    let m = common::http(&url, &mallory.token);
    let mut from = a.from();
    from.device = DeviceId([0xEE; 16]);
    assert_eq!(
        m.push(push_of(from, 1, 10)).await.err().map(|e| e.kind()),
        Some(ErrorKind::Forbidden)
    );
    let pull = PullRequest {
        from,
        cursor: 0,
        limit: 10,
        include_own: true,
    };
    assert_eq!(
        m.pull(pull).await.err().map(|e| e.kind()),
        Some(ErrorKind::Forbidden)
    );
    assert_eq!(
        m.get_key_backup(space).await.err().map(|e| e.kind()),
        Some(ErrorKind::Forbidden)
    );
    assert_eq!(
        m.put_key_backup(space, vec![1, 2, 3])
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Forbidden)
    );
    assert_eq!(
        m.register_space(space, a.store.key_fingerprint())
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::Forbidden)
    );
    assert!(
        m.spaces().await.expect("list").is_empty(),
        "mallory sees no space"
    );

    let bearer = format!("Bearer {}", alice.token);
    let send = |url: String, body: Vec<u8>| {
        raw.post(url)
            .header("authorization", bearer.clone())
            .body(body)
            .send()
    };
    // Garbage, truncated, trailing bytes, unknown version, another space in the body.
    let mut truncated = wire::encode_push_request(&push_of(fresh, 3, 100)).expect("encode");
    truncated.truncate(truncated.len() - 7);
    let mut future = good_push.clone();
    future[0] = 9;
    // A client of wire version 1 (before pull pages carried the log id).
    let mut v1 = good_push.clone();
    v1[0] = 1;
    let mut trailing = good_push.clone();
    trailing.push(0);
    let mut elsewhere = fresh;
    elsewhere.space = sync_core::SpaceId([0x55; 16]);
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "garbage",
            b"hello, server".to_vec(),
            StatusCode::BAD_REQUEST,
            "unsupported",
        ),
        ("empty", Vec::new(), StatusCode::BAD_REQUEST, "corrupt"),
        ("truncated", truncated, StatusCode::BAD_REQUEST, "corrupt"),
        ("trailing", trailing, StatusCode::BAD_REQUEST, "corrupt"),
        (
            "future version",
            future,
            StatusCode::BAD_REQUEST,
            "unsupported",
        ),
        ("wire version 1", v1, StatusCode::BAD_REQUEST, "unsupported"),
        (
            "another space in the body",
            wire::encode_push_request(&push_of(elsewhere, 1, 10)).expect("encode"),
            StatusCode::BAD_REQUEST,
            "invalid_input",
        ),
        (
            "a pull where a push belongs",
            wire::encode_pull_request(&PullRequest {
                from: fresh,
                cursor: 0,
                limit: 1,
                include_own: false,
            }),
            StatusCode::BAD_REQUEST,
            "corrupt",
        ),
        (
            "oversized body",
            wire::encode_push_request(&push_of(fresh, 10, 10_000)).expect("encode"),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
    ];
    for (what, body, status, kind) in cases {
        let (s, k) = status_and_kind(send(push_url.clone(), body).await.expect("send")).await;
        assert_eq!((s, k.as_str()), (status, kind), "{what}");
    }
    // Well-formed pushes the server itself must refuse: the typed client checks the space's
    // key before it pushes (and Mallory's check already fails), so these go as raw bodies.
    let mut wrong_key = fresh;
    wrong_key.fingerprint = [0x77; 32];
    let mallory_bearer = format!("Bearer {}", mallory.token);
    for (what, bearer, body, status, kind) in [
        (
            "another account's space",
            &mallory_bearer,
            good_push.clone(),
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "another key than the space's",
            &bearer,
            wire::encode_push_request(&push_of(wrong_key, 1, 10)).expect("encode"),
            StatusCode::CONFLICT,
            "wrong_key",
        ),
    ] {
        let r = raw
            .post(&push_url)
            .header("authorization", bearer.as_str())
            .body(body)
            .send()
            .await
            .expect("send");
        let (s, k) = status_and_kind(r).await;
        assert_eq!((s, k.as_str()), (status, kind), "{what}");
    }
    // The same through the typed client: one envelope over the body limit.
    let t = common::http(&url, &alice.token);
    assert_eq!(
        t.push(push_of(a.from(), 1, 70_000))
            .await
            .err()
            .map(|e| e.kind()),
        Some(ErrorKind::TooLarge)
    );
    // Many envelopes that together exceed the server's body limit are split by the transport
    // (32 KiB per request in these tests); the engine's push of large records succeeds.
    let mut big = WriteBatch::new();
    for i in 0..12 {
        big.put("big", format!("b{i}"), &json!("y".repeat(12_000)))
            .expect("put");
    }
    a.store.write(big).await.expect("write");
    assert_eq!(a.engine.sync().await.expect("split push").pushed, 12);
    // A cursor from the future: 410 / ResyncRequired (the server does not hold that history).
    let future_pull = PullRequest {
        from: a.from(),
        cursor: 1_000_000,
        limit: 10,
        include_own: false,
    };
    let (s, k) = status_and_kind(
        send(pull_url.clone(), wire::encode_pull_request(&future_pull))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((s, k.as_str()), (StatusCode::GONE, "resync_required"));
    assert_eq!(
        t.pull(future_pull).await.err().map(|e| e.kind()),
        Some(ErrorKind::ResyncRequired)
    );
    // Malformed ids in URLs, unknown endpoints.
    let (s, _) = status_and_kind(
        send(format!("{url}/v1/spaces/not-hex/push"), good_push.clone())
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, k) = status_and_kind(
        raw.get(format!("{url}/v1/nothing-here"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!((s, k.as_str()), (StatusCode::NOT_FOUND, "not_found"));
    // A known endpoint with another method: 405, a JSON error too.
    let r = raw
        .get(&push_url)
        .header("authorization", bearer.clone())
        .send()
        .await
        .expect("send");
    let json_body = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v == "application/json");
    let (s, k) = status_and_kind(r).await;
    assert_eq!(
        (s, k.as_str(), json_body),
        (StatusCode::METHOD_NOT_ALLOWED, "invalid_input", true)
    );

    // A replayed push of A's sequences 1 and 2 (even with other bytes): answered with the
    // numbers they are stored under, stored nothing.
    let replay = push_of(a.from(), 2, 10);
    let first = t.push(replay.clone()).await.expect("push");
    let again = t.push(replay).await.expect("replay");
    assert_eq!(first, again);
    assert!(
        first.assigned.iter().all(|(_, s)| *s > 0 && *s <= 20),
        "{first:?}"
    );

    // Nothing partial was stored by any refused or replayed request (only the 12 records).
    let after = server.store().space_stats(space).await.expect("stats");
    assert_eq!(after.envelopes, before.envelopes + 12, "{after:?}");

    // And the server still serves everyone: a second device of alice syncs normally.
    let b = Device::join(&dir.path().join("b.db"), &url, &alice.token, PASS)
        .await
        .expect("join");
    let r = b.engine.sync().await.expect("sync");
    assert_eq!((r.applied, r.rejected.len()), (32, 0));
    assert_eq!(b.snapshot("notes").await, a.snapshot("notes").await);
    let metrics = raw
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("hearth_errors_total{class=\"forbidden\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("hearth_errors_total{class=\"unauthorized\"}"));
    assert!(metrics.contains("hearth_envelopes_pulled_total"));
    // How long requests took, by route: refused ones count too.
    assert!(
        metrics.contains(
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/pull\",le=\"+Inf\"}"
        ),
        "{metrics}"
    );
    let health = raw
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK);
    server.stop().await.expect("stop");
}

/// A client whose push size is above the server's body limit (8 MiB against 64 KiB here)
/// learns the limit from the `413`: a push of large envelopes goes again in smaller parts,
/// each stored once, and the next push starts at the smaller size.
#[tokio::test]
async fn a_push_above_the_servers_body_limit_goes_again_in_smaller_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(dir.path()).await;
    let url = server.url();
    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let t = HttpTransport::with_options(&url, &account.token, HttpOptions::default())
        .expect("transport");
    let from = SpaceRef {
        space: SpaceId([0x21; 16]),
        device: DeviceId([0x22; 16]),
        fingerprint: [0x23; 32],
    };
    t.register_space(from.space, from.fingerprint)
        .await
        .expect("space");
    let refused = || async {
        let metrics = reqwest::get(format!("{url}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        metrics
            .lines()
            .find(|l| l.starts_with("hearth_errors_total{class=\"too_large\"}"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // 12 envelopes of 12,000 B: 144 KB in one body, over the 64 KiB limit.
    let first = t.push(push_of(from, 12, 12_000)).await.expect("push");
    assert_eq!(first.assigned.len(), 12);
    assert!(first.assigned.iter().all(|(_, s)| *s > 0), "{first:?}");
    let after_first = refused().await;
    assert!(after_first >= 1, "the first part was refused");
    let stats = server.store().space_stats(from.space).await.expect("stats");
    assert_eq!(stats.envelopes, 12, "each envelope stored once");
    // The next push (a replay here, answered the same) starts at the learned size.
    let again = t.push(push_of(from, 12, 12_000)).await.expect("again");
    assert_eq!(again, first);
    assert_eq!(refused().await, after_first, "no more refusals");
    // One envelope over the limit is refused for good.
    let mut one = push_of(from, 1, 70_000);
    one.envelopes[0].seq = 13;
    assert_eq!(
        t.push(one).await.err().map(|e| e.kind()),
        Some(ErrorKind::TooLarge)
    );
    server.stop().await.expect("stop");
}
