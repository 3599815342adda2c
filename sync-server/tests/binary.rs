//! The built `hearth-server` binary as a separate process: devices sync through it, it stops
//! gracefully on SIGTERM, and no canary string written by the devices (collection, key or
//! value), no token and no passphrase appears in its database files or in its logs, even at
//! trace level.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

use common::{Device, PASS};
use serde_json::json;
use sync_core::WriteBatch;
use transport_http::HttpTransport;

const CANARY: &str = "CANARYqz7Xv";

#[tokio::test]
async fn the_server_binary_syncs_devices_and_never_sees_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server_dir = dir.path().join("server");
    std::fs::create_dir(&server_dir).expect("mkdir");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth-server"))
        .args(["--listen", "127.0.0.1:0", "--database"])
        .arg(format!("sqlite:{}", server_dir.join("server.db").display()))
        .env("HEARTH_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawn hearth-server");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("first line");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let url = format!("http://{addr}");

    let account = HttpTransport::register_account(&url)
        .await
        .expect("account");
    let a = Device::first(&dir.path().join("a.db"), &url, &account.token).await;
    let mut batch = WriteBatch::new();
    for i in 0..40 {
        batch
            .put(
                format!("{CANARY}-collection"),
                format!("{CANARY}-key-{i}"),
                &json!({"secret": format!("{CANARY}-value-{i}"), "n": i}),
            )
            .expect("put");
    }
    a.store.write(batch).await.expect("write");
    a.store
        .delete(&format!("{CANARY}-collection"), &format!("{CANARY}-key-0"))
        .await
        .expect("delete");
    a.engine.sync().await.expect("sync a");
    let b = Device::join(&dir.path().join("b.db"), &url, &account.token, PASS)
        .await
        .expect("join");
    let r = b.engine.sync().await.expect("sync b");
    assert_eq!(r.applied, 40);
    assert_eq!(
        b.store
            .get(&format!("{CANARY}-collection"), &format!("{CANARY}-key-7"))
            .await
            .expect("get"),
        Some(json!({"secret": format!("{CANARY}-value-7"), "n": 7}))
    );

    // SIGTERM: a graceful stop with exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "hearth-server exited with {exit}");

    let mut logs = String::new();
    std::fs::File::open(&log_path)
        .expect("log")
        .read_to_string(&mut logs)
        .expect("read log");
    assert!(
        logs.contains("/v1/spaces/{space}/push"),
        "the log is real: {logs}"
    );
    let mut files = 0;
    for entry in std::fs::read_dir(&server_dir).expect("server dir") {
        let path = entry.expect("entry").path();
        let bytes = std::fs::read(&path).expect("read db file");
        files += 1;
        for needle in [CANARY.as_bytes(), account.token.as_bytes(), PASS.as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret",
                path.display()
            );
        }
    }
    assert!(files >= 1);
    let (_, secret) = account.token.split_once('.').expect("token");
    for needle in [CANARY, account.token.as_str(), secret, PASS] {
        assert!(!logs.contains(needle), "the server log holds a secret");
    }
}
