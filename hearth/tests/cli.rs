//! The `hearth` binary driven as a user would.

use assert_cmd::Command;
use std::path::Path;

fn hearth(store: &Path, pass: &str) -> Command {
    let mut c = Command::cargo_bin("hearth").expect("binary");
    c.env("HEARTH_STORE", store)
        .env("HEARTH_PASSPHRASE", pass)
        .env("HEARTH_INSECURE_KDF", "1");
    c
}

fn stdout(c: &mut Command) -> String {
    let out = c.output().expect("run");
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[test]
fn init_put_get_list_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("nested/dir/store.db");
    let out = stdout(hearth(&db, "pw").args(["--json", "init"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("init --json is JSON");
    assert_eq!(v["storage"], "sqlite");
    stdout(hearth(&db, "pw").args(["put", "notes", "a", r#"{"title":"hello"}"#]));
    hearth(&db, "pw")
        .args(["put", "notes", "b", "--file", "-"])
        .write_stdin(r#"{"title":"from stdin"}"#)
        .assert()
        .success();
    let got = stdout(hearth(&db, "pw").args(["--json", "get", "notes", "a"]));
    let v: serde_json::Value = serde_json::from_str(got.trim()).expect("json");
    assert_eq!(v["value"]["title"], "hello");
    let list = stdout(hearth(&db, "pw").args(["--json", "list", "notes"]));
    let keys: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json line")["key"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(keys, ["a", "b"]);
    stdout(hearth(&db, "pw").args(["delete", "notes", "a"]));
    hearth(&db, "pw")
        .args(["get", "notes", "a"])
        .assert()
        .code(4);
    let status = stdout(hearth(&db, "pw").args(["--json", "status"]));
    let v: serde_json::Value = serde_json::from_str(status.trim()).expect("json");
    assert_eq!(v["pending"], 2, "two records changed since the last sync");
}

#[test]
fn errors_have_distinct_codes_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "right").arg("init").assert().success();
    hearth(&db, "right")
        .args(["put", "notes", "k", "1"])
        .assert()
        .success();
    let before = std::fs::read(&db).expect("read");

    let out = hearth(&db, "wrong")
        .args(["get", "notes", "k"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passphrase") && !err.contains("wrong"),
        "{err}"
    );
    assert!(
        std::fs::read(&db).expect("read") == before,
        "a wrong passphrase changes nothing"
    );

    hearth(&db, "right")
        .args(["put", "notes", "k", "{not json"])
        .assert()
        .code(5);
    hearth(&dir.path().join("absent.db"), "right")
        .args(["get", "notes", "k"])
        .assert()
        .code(4);
    hearth(&db, "right")
        .args(["strategy", "set", "notes", "no-such"])
        .assert()
        .code(4);
    hearth(&db, "right").arg("init").assert().code(8);
    hearth(&db, "right").arg("frobnicate").assert().code(2);
    let out = hearth(&db, "right")
        .args(["--json", "get", "notes", "missing"])
        .output()
        .expect("run");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stderr).expect("errors are JSON with --json");
    assert_eq!(v["error"], "not_found");
    assert_eq!(
        stdout(hearth(&db, "right").args(["get", "notes", "k"])).trim(),
        "1"
    );
}

#[test]
fn strategy_and_conflict_commands_work_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    hearth(&db, "pw")
        .args(["strategy", "set", "docs", "merge"])
        .assert()
        .success();
    let names = stdout(hearth(&db, "pw").args(["--json", "strategy", "list"]));
    assert!(names.contains("user-choice"));
    assert_eq!(
        stdout(hearth(&db, "pw").args(["conflicts", "list"])).trim(),
        ""
    );
    hearth(&db, "pw")
        .args(["conflicts", "resolve", "docs", "x", "--take", "local"])
        .assert()
        .code(4);
}

#[test]
fn recovery_code_from_init_recovers_a_lost_passphrase() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let out = stdout(hearth(&db, "first").args(["--json", "init"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let code = v["recovery_code"].as_str().expect("code").to_owned();
    hearth(&db, "first")
        .args(["put", "notes", "k", "42"])
        .assert()
        .success();
    hearth(&db, "first")
        .env("HEARTH_NEW_PASSPHRASE", "second")
        .args(["passphrase", "change"])
        .assert()
        .success();
    hearth(&db, "first")
        .args(["get", "notes", "k"])
        .assert()
        .code(3);
    hearth(&db, "x")
        .env("HEARTH_RECOVERY_CODE", "WRONG-CODE")
        .env("HEARTH_NEW_PASSPHRASE", "third")
        .arg("recover")
        .assert()
        .code(3);
    hearth(&db, "x")
        .env("HEARTH_RECOVERY_CODE", &code)
        .env("HEARTH_NEW_PASSPHRASE", "third")
        .arg("recover")
        .assert()
        .success();
    assert_eq!(
        stdout(hearth(&db, "third").args(["get", "notes", "k"])).trim(),
        "42"
    );
}

#[test]
fn export_and_import_round_trip_and_refuse_damage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let backup = dir.path().join("backup.hearth");
    hearth(&db, "pw").arg("init").assert().success();
    hearth(&db, "pw")
        .args(["put", "notes", "k", r#"{"v":1}"#])
        .assert()
        .success();
    hearth(&db, "pw")
        .arg("export")
        .arg(&backup)
        .assert()
        .success();
    hearth(&db, "pw")
        .arg("export")
        .arg(&backup)
        .assert()
        .code(8);

    let restored = dir.path().join("restored.db");
    hearth(&restored, "wrong")
        .arg("import")
        .arg(&backup)
        .assert()
        .code(3);
    assert!(!restored.exists(), "a failed import leaves nothing behind");
    let mut damaged = std::fs::read(&backup).expect("read");
    let n = damaged.len();
    damaged[n / 2] ^= 1;
    let bad = dir.path().join("bad.hearth");
    std::fs::write(&bad, &damaged).expect("write");
    hearth(&restored, "pw")
        .arg("import")
        .arg(&bad)
        .assert()
        .code(9);
    assert!(!restored.exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "no partial files remain");

    hearth(&restored, "pw")
        .arg("import")
        .arg(&backup)
        .assert()
        .success();
    assert_eq!(
        stdout(hearth(&restored, "pw").args(["get", "notes", "k"]))
            .trim()
            .replace(char::is_whitespace, ""),
        r#"{"v":1}"#
    );
}

#[test]
fn consent_grant_list_revoke_and_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    let out = stdout(hearth(&db, "pw").args([
        "--json",
        "consent",
        "grant",
        "usage-stats",
        "improve-model",
        "telemetry",
        "--expires",
        "30d",
    ]));
    let g: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let id = g["id"].as_str().expect("id").to_owned();
    let list = stdout(hearth(&db, "pw").args(["--json", "consent", "list"]));
    assert!(list.contains(&id) && list.contains("active"), "{list}");
    hearth(&db, "pw")
        .args(["consent", "grant", "a", "b", "c", "--expires", "soon"])
        .assert()
        .code(5);
    hearth(&db, "pw")
        .args(["consent", "revoke", &id])
        .assert()
        .success();
    hearth(&db, "pw")
        .args(["consent", "revoke", &id])
        .assert()
        .code(4);
    let list = stdout(hearth(&db, "pw").args(["--json", "consent", "list"]));
    assert!(list.contains("revoked"), "{list}");
    let log = stdout(hearth(&db, "pw").args(["consent", "log"]));
    assert!(
        log.lines().count() >= 2,
        "grant and revocation are audited: {log}"
    );
    for line in log.lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("each audit line is JSON");
    }
}

#[test]
fn rotate_key_keeps_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    hearth(&db, "pw")
        .args(["put", "notes", "k", "7"])
        .assert()
        .success();
    let out = stdout(hearth(&db, "pw").args(["--json", "rotate-key"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    assert_eq!(v["key_id"], 2);
    assert_eq!(
        stdout(hearth(&db, "pw").args(["get", "notes", "k"])).trim(),
        "7"
    );
    hearth(&db, "wrong").arg("rotate-key").assert().code(3);
}

#[test]
fn the_demo_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = hearth(&dir.path().join("unused.db"), "unused")
        .arg("demo")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("converged"), "{text}");
    assert!(
        text.contains("refused"),
        "the share without consent must be refused: {text}"
    );
}

/// A `hearth serve` process on a free loopback port, killed on drop.
struct ServeProcess(std::process::Child, String);
impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(dir: &Path) -> ServeProcess {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let bin = assert_cmd::cargo::cargo_bin("hearth");
    let child = std::process::Command::new(bin)
        .args([
            "-q",
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--db",
        ])
        .arg(dir.join("server.db"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn hearth serve");
    let url = format!("http://127.0.0.1:{port}");
    let mut process = ServeProcess(child, url);
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return process;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = process.0.kill();
    panic!("hearth serve did not start");
}

#[test]
fn two_stores_sync_through_hearth_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    hearth(&a, "pw").arg("init").assert().success();
    hearth(&a, "pw")
        .args(["put", "notes", "n1", r#"{"t":"from a"}"#])
        .assert()
        .success();
    let out = stdout(hearth(&a, "pw").args(["--json", "register", "--server", &server.1]));
    let token = serde_json::from_str::<serde_json::Value>(out.trim()).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    stdout(hearth(&a, "pw").arg("sync"));

    // A wrong passphrase cannot join; a wrong token is refused as not authorised.
    hearth(&b, "wrong")
        .args(["join", "--server", &server.1, "--token", &token])
        .assert()
        .code(3);
    assert!(!b.exists(), "a failed join leaves no store behind");
    hearth(&b, "pw")
        .args(["join", "--server", &server.1, "--token", "bad.token"])
        .assert()
        .code(7);
    hearth(&b, "pw")
        .args(["join", "--server", &server.1, "--token", &token])
        .assert()
        .success();
    let report = stdout(hearth(&b, "pw").args(["--json", "sync"]));
    let r: serde_json::Value = serde_json::from_str(report.trim()).expect("json");
    assert_eq!(r["applied"], 1);
    assert!(stdout(hearth(&b, "pw").args(["--json", "get", "notes", "n1"])).contains("from a"));

    // Concurrent edits under `merge`, a delete; both converge.
    for db in [&a, &b] {
        hearth(db, "pw")
            .args(["strategy", "set", "notes", "merge"])
            .assert()
            .success();
    }
    hearth(&a, "pw")
        .args(["put", "notes", "n1", r#"{"t":"from a","x":1}"#])
        .assert()
        .success();
    hearth(&b, "pw")
        .args(["put", "notes", "n1", r#"{"t":"from a","y":2}"#])
        .assert()
        .success();
    hearth(&b, "pw")
        .args(["put", "notes", "n2", "2"])
        .assert()
        .success();
    for db in [&a, &b, &a] {
        hearth(db, "pw").arg("sync").assert().success();
    }
    let va = stdout(hearth(&a, "pw").args(["--json", "get", "notes", "n1"]));
    let vb = stdout(hearth(&b, "pw").args(["--json", "get", "notes", "n1"]));
    assert_eq!(va, vb);
    assert!(va.contains("\"x\":1") && va.contains("\"y\":2"), "{va}");
    hearth(&a, "pw")
        .args(["delete", "notes", "n2"])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    hearth(&b, "pw").arg("sync").assert().success();
    hearth(&b, "pw")
        .args(["get", "notes", "n2"])
        .assert()
        .code(4);

    // The server unreachable: exit 6, nothing changed locally.
    drop(server);
    hearth(&a, "pw")
        .args(["put", "notes", "n3", "3"])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().code(6);
    let status = stdout(hearth(&a, "pw").args(["--json", "status"]));
    assert!(status.contains("\"pending\":1"), "{status}");
}
