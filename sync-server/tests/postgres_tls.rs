//! The server's PostgreSQL connections over TLS: with `sslmode=verify-full` and the cluster's
//! CA the store connects, works, and its sessions are encrypted; with another CA it refuses to
//! connect. Needs `HEARTH_TEST_POSTGRES_URL` and `HEARTH_TEST_POSTGRES_CA` (and
//! `HEARTH_TEST_POSTGRES_OTHER_CA`), set by `.ci/run`, which starts the cluster with TLS on and a
//! throwaway CA; fails in CI without them.

mod common;

use std::sync::Arc;

use common::{fresh_schema_url, postgres_url, required_env};
use sqlx::Connection;
use sync_core::RelayConfig;
use sync_core::store::system_millis;
use sync_server::{AccountId, open_store};

fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

#[tokio::test]
async fn the_server_store_connects_over_verified_tls_and_refuses_an_unknown_ca() {
    let Some(pg) = postgres_url() else { return };
    let Some(ca) = required_env("HEARTH_TEST_POSTGRES_CA") else {
        return;
    };
    let Some(other) = required_env("HEARTH_TEST_POSTGRES_OTHER_CA") else {
        return;
    };
    let (url, _schema) = fresh_schema_url(&pg).await;

    let verified = with_params(&url, &format!("sslmode=verify-full&sslrootcert={ca}"));
    let store = open_store(&verified, RelayConfig::default(), Arc::new(system_millis))
        .await
        .expect("the store connects with the cluster's CA");
    store.ping().await.expect("ping over TLS");
    store
        .create_account(AccountId([7; 16]), [9; 32])
        .await
        .expect("an account over TLS");
    store.close().await;

    // The session really is encrypted (not a silent fallback to plaintext).
    let mut conn = sqlx::PgConnection::connect(&verified)
        .await
        .expect("connect");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pg_stat_ssl");
    assert!(ssl, "the connection uses TLS");
    conn.close().await.expect("close");

    // A server certificate the configured CA did not sign: no connection, a typed error.
    let wrong = with_params(&url, &format!("sslmode=verify-full&sslrootcert={other}"));
    let Err(err) = open_store(&wrong, RelayConfig::default(), Arc::new(system_millis)).await else {
        panic!("a server certificate from an unknown CA was accepted");
    };
    assert!(
        err.to_string().contains("PostgreSQL"),
        "the error names what failed: {err}"
    );
}
