//! Slow clients and shutdown: a request that trickles its body is cut off with a temporary
//! error while others are served, and a shutdown does not wait past its drain timeout for a
//! request that never finishes.

use std::time::Duration;

use sync_server::{RunningServer, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use transport_http::HttpTransport;

async fn server(dir: &std::path::Path, request: Duration, drain: Duration) -> RunningServer {
    Server::builder()
        .listen("127.0.0.1:0".parse().expect("addr"))
        .database(format!("sqlite:{}", dir.join("server.db").display()))
        .request_timeout(request)
        .drain_timeout(drain)
        .build()
        .await
        .expect("server")
        .spawn()
}

/// Opens a connection and sends a push whose body stops after 10 of its 1,000 bytes.
async fn stalled_push(server: &RunningServer, token: &str) -> TcpStream {
    let mut conn = TcpStream::connect(server.local_addr())
        .await
        .expect("connect");
    let head = format!(
        "POST /v1/spaces/{}/push HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 1000\r\n\r\n",
        "ab".repeat(16)
    );
    conn.write_all(head.as_bytes()).await.expect("write head");
    conn.write_all(&[0u8; 10]).await.expect("write some body");
    conn.flush().await.expect("flush");
    conn
}

async fn read_to_end(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn a_request_that_trickles_its_body_gets_a_temporary_error_and_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(
        dir.path(),
        Duration::from_millis(500),
        Duration::from_secs(5),
    )
    .await;
    let account = HttpTransport::register_account(&server.url())
        .await
        .expect("account");
    let mut slow = stalled_push(&server, &account.token).await;

    // Others are served meanwhile.
    let health = reqwest::get(format!("{}/healthz", server.url()))
        .await
        .expect("healthz");
    assert!(health.status().is_success());

    let answer = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut slow))
        .await
        .expect("the server answers the stalled request instead of waiting for it");
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "a temporary error the client retries: {answer}"
    );
    assert!(answer.contains("unavailable"), "{answer}");
    assert!(server.metrics().render().contains("unavailable"));
    server.stop().await.expect("stop");
}

#[tokio::test]
async fn shutdown_drops_a_request_still_running_at_the_drain_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = server(
        dir.path(),
        Duration::from_secs(600),
        Duration::from_millis(300),
    )
    .await;
    let account = HttpTransport::register_account(&server.url())
        .await
        .expect("account");
    let mut slow = stalled_push(&server, &account.token).await;
    // Let the server start on the request (it is waiting for the rest of the body).
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Without the drain timeout this waits for the request timeout (10 minutes).
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the shutdown ends at the drain timeout")
        .expect("stop");
    let answer = tokio::time::timeout(Duration::from_secs(30), read_to_end(&mut slow))
        .await
        .expect("the connection is closed");
    assert!(
        answer.starts_with("HTTP/1.1 503"),
        "the unfinished push is refused with a temporary error: {answer}"
    );
}
