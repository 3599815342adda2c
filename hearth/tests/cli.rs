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

fn json_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
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
    // An unknown registry name is a configuration error whose hint names what exists.
    let out = hearth(&db, "right")
        .args(["strategy", "set", "notes", "no-such"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(8));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("user-choice") && err.contains("merge") && !err.contains("bug"),
        "{err}"
    );
    let absent = dir.path().join("never.db");
    let out = hearth(&absent, "right")
        .args(["init", "--storage", "no-such"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sqlite"));
    hearth(&absent, "right")
        .args(["init", "--cipher", "rot13"])
        .assert()
        .code(8);
    assert!(!absent.exists(), "a refused init creates nothing");
    hearth(&db, "right").arg("init").assert().code(8);
    // No server configured: a configuration error, not a consent one.
    let out = hearth(&db, "right").arg("sync").output().expect("run");
    assert_eq!(out.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hearth register --server"));
    hearth(&db, "right").arg("frobnicate").assert().code(2);
    let out = hearth(&db, "right")
        .args(["--json", "frobnicate"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value =
        serde_json::from_slice(&out.stderr).expect("usage errors are JSON with --json");
    assert_eq!(v["error"], "usage");
    assert!(
        v["message"].as_str().unwrap_or("").contains("frobnicate"),
        "{v}"
    );
    let out = hearth(&db, "right")
        .args(["--json", "get", "notes", "missing"])
        .output()
        .expect("run");
    let v: serde_json::Value =
        serde_json::from_slice(&out.stderr).expect("errors are JSON with --json");
    assert_eq!(v["error"], "not_found");
    assert!(
        v["hint"].as_str().unwrap_or("").contains("hearth list"),
        "{v}"
    );
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
    let out = hearth(&db, "pw")
        .args(["conflicts", "resolve", "docs", "x", "--take", "local"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no conflict waits on docs/x") && err.contains("hearth conflicts list"),
        "{err}"
    );
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
    let out = stdout(
        hearth(&db, "first")
            .env("HEARTH_NEW_PASSPHRASE", "second")
            .args(["--json", "passphrase", "change"]),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("passphrase change --json");
    assert_eq!(v["passphrase_changed"], true);
    hearth(&db, "first")
        .args(["get", "notes", "k"])
        .assert()
        .code(3);
    let out = hearth(&db, "x")
        .env("HEARTH_RECOVERY_CODE", "WRONG-CODE")
        .env("HEARTH_NEW_PASSPHRASE", "third")
        .args(["--json", "recover"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).expect("error is JSON");
    assert_eq!(v["error"], "wrong_passphrase");
    let out = stdout(
        hearth(&db, "x")
            .env("HEARTH_RECOVERY_CODE", &code)
            .env("HEARTH_NEW_PASSPHRASE", "third")
            .args(["--json", "recover"]),
    );
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("recover --json");
    assert_eq!(v["recovered"], true);
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
    for storage in ["sqlite", "sqlcipher"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("store.db");
        hearth(&db, "pw")
            .args(["init", "--storage", storage])
            .assert()
            .success();
        hearth(&db, "pw")
            .args(["put", "notes", "k", "7"])
            .assert()
            .success();
        let out = stdout(hearth(&db, "pw").args(["--json", "rotate-key"]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
        assert_eq!(v["key_id"], 2, "{storage}");
        assert_eq!(
            stdout(hearth(&db, "pw").args(["get", "notes", "k"])).trim(),
            "7",
            "{storage}"
        );
        hearth(&db, "wrong").arg("rotate-key").assert().code(3);
    }
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

/// A loopback port free a moment ago (for a server that must come back on the same port).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn serve(dir: &Path) -> ServeProcess {
    serve_on(dir, free_port(), "server.db")
}

fn serve_on(dir: &Path, port: u16, db: &str) -> ServeProcess {
    let bin = assert_cmd::cargo::cargo_bin("hearth");
    let child = std::process::Command::new(bin)
        .args([
            "-q",
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--db",
        ])
        .arg(dir.join(db))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn hearth serve");
    let url = format!("http://127.0.0.1:{port}");
    let mut process = ServeProcess(child, url);
    for _ in 0..600 {
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
    let st = json_of(&stdout(hearth(&a, "pw").args(["--json", "status"])));
    assert_eq!(st["state"], "not_configured");
    assert!(st["last_sync"].is_null());
    let out = stdout(hearth(&a, "pw").args(["--json", "register", "--server", &server.1]));
    let token = serde_json::from_str::<serde_json::Value>(out.trim()).expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    stdout(hearth(&a, "pw").arg("sync"));
    let st = json_of(&stdout(hearth(&a, "pw").args(["--json", "status"])));
    assert_eq!(st["state"], "up_to_date", "{st}");
    assert_eq!(st["server"], server.1.as_str());
    assert_eq!(st["sync_consent"], true);
    assert_eq!(st["pending"], 0);
    let at = st["last_sync"]["at_rfc3339"].as_str().expect("rfc3339");
    assert!(
        at.len() == 20 && at.ends_with('Z') && at.contains('T'),
        "{at}"
    );
    assert_eq!(st["last_sync"]["report"]["pushed"], 1);
    let text = stdout(hearth(&a, "pw").arg("status"));
    assert!(
        text.contains("up to date") && text.contains(" ago)") && text.contains(at),
        "{text}"
    );

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
    // `--reupload` walks the whole log again; this server lost nothing, so nothing goes up
    // and nothing is found missing.
    let report = stdout(hearth(&b, "pw").args(["--json", "sync", "--reupload"]));
    let r: serde_json::Value = serde_json::from_str(report.trim()).expect("json");
    assert_eq!(
        (&r["resynced"], &r["reuploaded"], &r["discarded"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{r}"
    );
    assert_eq!(r["withheld"], serde_json::json!([]), "{r}");

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

#[test]
fn init_prints_the_recovery_code_once_in_plain_and_quiet_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, quiet) in [("plain.db", false), ("quiet.db", true)] {
        let db = dir.path().join(name);
        let mut c = hearth(&db, "first");
        if quiet {
            c.arg("-q");
        }
        let out = stdout(c.arg("init"));
        let code = out
            .lines()
            .find_map(|l| l.strip_prefix("recovery code: "))
            .unwrap_or_else(|| panic!("no recovery code in: {out}"))
            .to_owned();
        assert!(out.contains("store it safely"), "{out}");
        assert_eq!(quiet, !out.contains("created"), "{out}");
        // The printed code is the real one.
        hearth(&db, "x")
            .env("HEARTH_RECOVERY_CODE", &code)
            .env("HEARTH_NEW_PASSPHRASE", "second")
            .arg("recover")
            .assert()
            .success();
        hearth(&db, "second").arg("status").assert().success();
    }
}

#[test]
fn init_on_sqlcipher_leaves_a_usable_store_with_or_without_a_recovery_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("cipher.db");
    let out =
        stdout(hearth(&db, "pw").args(["init", "--storage", "sqlcipher", "--cipher", "sodium"]));
    assert!(
        out.contains("recovery code: ") || out.contains("recovery codes are not available"),
        "{out}"
    );
    assert!(db.exists());
    // A complete store: a second init refuses it as existing, not as half-made.
    let again = hearth(&db, "pw")
        .args(["init", "--storage", "sqlcipher", "--cipher", "sodium"])
        .output()
        .expect("run");
    assert_eq!(again.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
}

/// Registers `a` (after `init`) with the server and joins `b` to its account.
fn pair(server: &ServeProcess, a: &Path, b: &Path) -> String {
    hearth(a, "pw").arg("init").assert().success();
    let token = json_of(&stdout(
        hearth(a, "pw").args(["--json", "register", "--server", &server.1]),
    ))["token"]
        .as_str()
        .expect("token")
        .to_owned();
    hearth(b, "pw")
        .args(["join", "--server", &server.1, "--token", &token])
        .assert()
        .success();
    token
}

fn pending(db: &Path) -> u64 {
    json_of(&stdout(hearth(db, "pw").args(["--json", "status"])))["pending"]
        .as_u64()
        .expect("pending")
}

#[test]
fn a_user_choice_conflict_is_listed_resolved_and_converges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    pair(&server, &a, &b);
    for db in [&a, &b] {
        hearth(db, "pw")
            .args(["strategy", "set", "tasks", "user-choice"])
            .assert()
            .success();
    }
    hearth(&a, "pw")
        .args(["put", "tasks", "dentist", r#"{"when":"mon"}"#])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    hearth(&b, "pw").arg("sync").assert().success();
    // Both edit offline.
    hearth(&a, "pw")
        .args(["put", "tasks", "dentist", r#"{"when":"tue"}"#])
        .assert()
        .success();
    hearth(&b, "pw")
        .args(["put", "tasks", "dentist", r#"{"when":"wed"}"#])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    let report = json_of(&stdout(hearth(&b, "pw").args(["--json", "sync"])));
    assert_eq!(report["conflicts_pending"], 1, "{report}");

    let list = stdout(hearth(&b, "pw").args(["--json", "conflicts", "list"]));
    let c = json_of(list.lines().next().expect("one conflict"));
    assert_eq!(c["collection"], "tasks");
    assert_eq!(c["key"], "dentist");
    assert_eq!(c["local"]["when"], "wed");
    assert_eq!(c["remote"][0]["when"], "tue");
    let st = json_of(&stdout(hearth(&b, "pw").args(["--json", "status"])));
    assert_eq!(st["conflicts"], 1);
    assert_eq!(st["state"], "conflicts");

    let out = json_of(&stdout(hearth(&b, "pw").args([
        "--json",
        "conflicts",
        "resolve",
        "tasks",
        "dentist",
        "--take",
        "remote",
    ])));
    assert_eq!(out["resolved"], true);
    for db in [&b, &a, &b] {
        hearth(db, "pw").arg("sync").assert().success();
    }
    for db in [&a, &b] {
        let v = json_of(&stdout(
            hearth(db, "pw").args(["--json", "get", "tasks", "dentist"]),
        ));
        assert_eq!(v["value"]["when"], "tue", "{}", db.display());
        assert_eq!(
            stdout(hearth(db, "pw").args(["conflicts", "list"])).trim(),
            ""
        );
        assert_eq!(pending(db), 0);
    }
}

#[test]
fn revoking_the_sync_consent_stops_sync_and_sends_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    pair(&server, &a, &b);
    // `register` recorded the consent; the grant is listed and audited.
    let grants = stdout(hearth(&a, "pw").args(["--json", "consent", "list"]));
    assert!(
        grants.contains("hearth.user-data") && grants.contains("active"),
        "{grants}"
    );
    hearth(&a, "pw")
        .args([
            "consent",
            "revoke",
            "hearth.user-data",
            "sync",
            "own-devices",
        ])
        .assert()
        .success();
    hearth(&a, "pw")
        .args(["put", "notes", "secret", r#"{"t":"stays here"}"#])
        .assert()
        .success();
    let before = pending(&a);
    assert!(before >= 1);
    let out = hearth(&a, "pw").arg("sync").output().expect("run");
    assert_eq!(out.status.code(), Some(10));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hearth consent grant hearth.user-data sync own-devices"),
        "{err}"
    );
    assert_eq!(pending(&a), before, "nothing was pushed");
    let st = json_of(&stdout(hearth(&a, "pw").args(["--json", "status"])));
    assert_eq!(st["state"], "consent_revoked");
    let log = stdout(hearth(&a, "pw").args(["consent", "log"]));
    let denial = log
        .lines()
        .map(json_of)
        .find(|e| e["event"] == "decision" && e["allowed"] == false)
        .unwrap_or_else(|| panic!("the refused sync is audited: {log}"));
    assert_eq!(denial["reason"], "revoked");
    assert_eq!(denial["purpose"], "sync");
    // The other device sees nothing of it.
    hearth(&b, "pw").arg("sync").assert().success();
    hearth(&b, "pw")
        .args(["get", "notes", "secret"])
        .assert()
        .code(4);

    // Granting again resumes sync.
    hearth(&a, "pw")
        .args([
            "consent",
            "grant",
            "hearth.user-data",
            "sync",
            "own-devices",
        ])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    assert_eq!(pending(&a), 0);
    hearth(&b, "pw").arg("sync").assert().success();
    hearth(&b, "pw")
        .args(["get", "notes", "secret"])
        .assert()
        .success();
}

#[test]
fn consent_check_denies_without_a_grant_and_never_prompts_off_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    let ask = [
        "consent",
        "check",
        "usage-stats",
        "improve-model",
        "telemetry",
    ];
    // stdin is not a terminal here: even a "y" waiting on it is not read as an answer.
    let out = hearth(&db, "pw")
        .args(ask)
        .write_stdin("y\n")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(10));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no grant"));
    let log = stdout(hearth(&db, "pw").args(["consent", "log"]));
    let denial = json_of(log.lines().last().expect("the decision is audited"));
    assert_eq!(denial["allowed"], false);
    assert_eq!(denial["prompted"], false, "nobody was asked: {denial}");
    hearth(&db, "pw")
        .args([
            "consent",
            "grant",
            "usage-stats",
            "improve-model",
            "telemetry",
        ])
        .assert()
        .success();
    let v = json_of(&stdout(hearth(&db, "pw").arg("--json").args(ask)));
    assert_eq!(v["allowed"], true);
    hearth(&db, "pw")
        .args([
            "consent",
            "revoke",
            "usage-stats",
            "improve-model",
            "telemetry",
        ])
        .assert()
        .success();
    let out = hearth(&db, "pw")
        .arg("--json")
        .args(ask)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(10));
    let e: serde_json::Value = serde_json::from_slice(&out.stderr).expect("JSON error");
    assert_eq!(e["error"], "consent_denied");
    assert!(e["message"].as_str().unwrap_or("").contains("revoked"));
}

#[test]
fn a_token_the_server_does_not_know_is_exit_7_with_what_to_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let server = serve_on(dir.path(), port, "first.db");
    let a = dir.path().join("a.db");
    hearth(&a, "pw").arg("init").assert().success();
    hearth(&a, "pw")
        .args(["register", "--server", &server.1])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    // The server comes back with another database: it has never seen this account.
    drop(server);
    let _server = serve_on(dir.path(), port, "second.db");
    hearth(&a, "pw")
        .args(["put", "notes", "k", "1"])
        .assert()
        .success();
    let out = hearth(&a, "pw").arg("sync").output().expect("run");
    assert_eq!(out.status.code(), Some(7));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hearth register --server") && err.contains("do not expire"),
        "{err}"
    );
    assert!(!err.contains("bug"), "{err}");
    assert_eq!(pending(&a), 1, "nothing was taken as sent");
}

#[test]
fn serve_logs_requests_on_stderr_without_secrets_and_quiet_silences_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bin = assert_cmd::cargo::cargo_bin("hearth");
    for quiet in [false, true] {
        let port = free_port();
        let log_path = dir.path().join(format!("serve-{quiet}.log"));
        let log = std::fs::File::create(&log_path).expect("log file");
        let mut cmd = std::process::Command::new(&bin);
        if quiet {
            cmd.arg("-q");
        }
        let child = cmd
            .args(["serve", "--addr", &format!("127.0.0.1:{port}"), "--db"])
            .arg(dir.path().join(format!("server-{quiet}.db")))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn");
        let server = ServeProcess(child, format!("http://127.0.0.1:{port}"));
        let mut up = false;
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(up, "hearth serve did not start");
        let a = dir.path().join(format!("a-{quiet}.db"));
        hearth(&a, "a passphrase").arg("init").assert().success();
        let token = json_of(&stdout(
            hearth(&a, "a passphrase").args(["--json", "-v", "register", "--server", &server.1]),
        ))["token"]
            .as_str()
            .expect("token")
            .to_owned();
        let out = hearth(&a, "a passphrase")
            .args(["-vvv", "sync"])
            .output()
            .expect("run");
        assert!(out.status.success());
        let client_log = String::from_utf8_lossy(&out.stderr);
        assert!(
            client_log.contains("sync round done") && client_log.contains("DEBUG"),
            "-vvv shows the client's diagnostics: {client_log}"
        );
        drop(server);
        let server_log = std::fs::read_to_string(&log_path).expect("read log");
        for log in [&*client_log, &*server_log] {
            assert!(!log.contains(&token), "a token was logged: {log}");
            let secret = token.split('.').next_back().unwrap_or(&token);
            assert!(!log.contains(secret), "a token's secret was logged: {log}");
            assert!(
                !log.contains("a passphrase"),
                "the passphrase was logged: {log}"
            );
        }
        if quiet {
            assert_eq!(server_log, "", "-q: no diagnostics");
        } else {
            assert!(
                server_log.contains("route=/v1/accounts") && server_log.contains("INFO"),
                "the server logs its requests by default: {server_log}"
            );
        }
    }
}

#[test]
fn a_reader_that_stops_early_ends_the_command_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    // Larger than a pipe's buffer, so the write must meet the closed pipe.
    let big = serde_json::to_string(&"x".repeat(300_000)).expect("json");
    hearth(&db, "pw")
        .args(["put", "notes", "big", "--file", "-"])
        .write_stdin(big)
        .assert()
        .success();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("hearth"))
        .env("HEARTH_STORE", &db)
        .env("HEARTH_PASSPHRASE", "pw")
        .args(["get", "notes", "big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn every_command_answers_in_json_under_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let backup = dir.path().join("b.hearth");
    let restored = dir.path().join("restored.db");
    let backup_arg = backup.to_string_lossy().into_owned();
    let consent = ["usage-stats", "improve-model", "telemetry"];
    let commands: Vec<Vec<&str>> = vec![
        vec!["init"],
        vec!["put", "notes", "k", r#"{"v":1}"#],
        vec!["put", "notes", "gone", "1"],
        vec!["get", "notes", "k"],
        vec!["list", "notes"],
        vec!["delete", "notes", "gone"],
        vec!["status"],
        vec!["check"],
        vec!["strategy", "set", "notes", "merge"],
        vec!["strategy", "list"],
        [&["consent", "grant"][..], &consent[..]].concat(),
        [&["consent", "check"][..], &consent[..]].concat(),
        vec!["consent", "list"],
        [&["consent", "revoke"][..], &consent[..]].concat(),
        vec!["consent", "log"],
        vec!["export", &backup_arg],
        vec!["passphrase", "change"],
    ];
    let mut pass = "pw";
    for args in &commands {
        let out = hearth(&db, pass)
            .env("HEARTH_NEW_PASSPHRASE", "pw2")
            .arg("--json")
            .args(args)
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).expect("utf-8");
        assert!(!text.trim().is_empty(), "{args:?} printed nothing");
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {line}"));
        }
        if args[0] == "passphrase" {
            pass = "pw2";
        }
    }
    let out = stdout(hearth(&restored, "pw").args(["--json", "import", &backup_arg]));
    assert_eq!(json_of(&out)["rows"].as_u64().map(|n| n > 0), Some(true));
    let out = stdout(hearth(&db, pass).args(["--json", "rotate-key"]));
    assert_eq!(json_of(&out)["key_id"], 2);
}

/// Runs `hearth ARGS` on a pseudo-terminal (util-linux `script`), typing `answer`.
fn on_a_terminal(db: &Path, args: &str, answer: &str) -> std::process::Output {
    use std::io::Write;
    let bin = assert_cmd::cargo::cargo_bin("hearth");
    let mut child = std::process::Command::new("script")
        .args(["-qec", &format!("'{}' {args}", bin.display()), "/dev/null"])
        .env("HEARTH_STORE", db)
        .env("HEARTH_PASSPHRASE", "pw")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs the command on a pseudo-terminal");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(answer.as_bytes())
        .expect("type the answer");
    child.wait_with_output().expect("wait")
}

#[test]
fn on_a_terminal_consent_check_asks_and_records_the_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    hearth(&db, "pw").arg("init").assert().success();
    let check = "consent check usage-stats improve-model telemetry";

    let out = on_a_terminal(&db, check, "n\n");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("hearth wants to send usage-stats for improve-model to telemetry"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(10), "{text}");

    let out = on_a_terminal(&db, check, "once\n");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let log = stdout(hearth(&db, "pw").args(["consent", "log"]));
    let grant = log
        .lines()
        .map(json_of)
        .find(|e| e["event"] == "grant")
        .unwrap_or_else(|| panic!("the yes is recorded as a grant: {log}"));
    assert_eq!(grant["source"], "prompt");
    assert_eq!(grant["scope"], "once");
    // Used up: off a terminal the next check is denied without asking.
    hearth(&db, "pw").args(check.split(' ')).assert().code(10);
    // --json never asks, even on a terminal.
    let out = on_a_terminal(&db, &format!("--json {check}"), "y\n");
    assert_eq!(out.status.code(), Some(10));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("hearth wants"));
}

fn status_of(db: &Path) -> serde_json::Value {
    json_of(&stdout(hearth(db, "pw").args(["--json", "status"])))
}

fn join(server: &str, token: &str, db: &Path) {
    hearth(db, "pw")
        .args(["join", "--server", server, "--token", token])
        .assert()
        .success();
}

/// A stale device is refused with exit 3 and told to re-join; nothing it had is lost from the
/// old store (it still opens and reads).
fn assert_stale(db: &Path) {
    hearth(db, "pw")
        .args(["put", "notes", "stale", "1"])
        .assert()
        .success();
    let out = hearth(db, "pw").arg("sync").output().expect("run");
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hearth join"), "{err}");
    assert!(err.contains("rotated"), "{err}");
}

#[test]
fn rotate_key_retires_the_old_space_stale_devices_must_rejoin_new_ones_get_the_new_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let token = pair(&server, &a, &b);
    hearth(&a, "pw")
        .args(["put", "notes", "k", "\"before\""])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    hearth(&b, "pw").arg("sync").assert().success();
    let old_space = status_of(&a)["space"].clone();

    let rotated = json_of(&stdout(hearth(&a, "pw").args(["--json", "rotate-key"])));
    assert_eq!(rotated["server"]["told"], true, "{rotated}");
    assert_eq!(rotated["server"]["retired_space"], old_space);
    assert_ne!(rotated["space"], old_space);
    hearth(&a, "pw")
        .args(["put", "notes", "k", "\"after\""])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();

    // B holds the old key.
    assert_stale(&b);

    // A new device joins the current space (not the retired one) and gets the data.
    let c = dir.path().join("c.db");
    join(&server.1, &token, &c);
    assert_eq!(status_of(&c)["space"], rotated["space"]);
    hearth(&c, "pw").arg("sync").assert().success();
    assert_eq!(
        stdout(hearth(&c, "pw").args(["get", "notes", "k"])).trim(),
        "\"after\""
    );
}

#[test]
fn a_rotation_made_offline_is_announced_by_the_next_sync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = serve(dir.path());
    let port: u16 = server
        .1
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let a = dir.path().join("a.db");
    let b = dir.path().join("b.db");
    let token = pair(&server, &a, &b);
    hearth(&a, "pw")
        .args(["put", "notes", "k", "\"offline\""])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();
    drop(server);

    // The server is down: the rotation happens locally and says the server will be told.
    let out = stdout(hearth(&a, "pw").arg("rotate-key"));
    assert!(out.contains("next `hearth sync`"), "{out}");
    let new_space = status_of(&a)["space"].clone();

    // Until then B still syncs into the old space (the server knows nothing yet).
    let server = serve_on(dir.path(), port, "server.db");
    hearth(&b, "pw").arg("sync").assert().success();

    // A's next sync tells the server, then uploads into the new space.
    hearth(&a, "pw").arg("sync").assert().success();
    assert_stale(&b);
    let c = dir.path().join("c.db");
    join(&server.1, &token, &c);
    assert_eq!(status_of(&c)["space"], new_space);
    hearth(&c, "pw").arg("sync").assert().success();
    assert_eq!(
        stdout(hearth(&c, "pw").args(["get", "notes", "k"])).trim(),
        "\"offline\""
    );
    // Told once: a second sync has nothing more to announce and succeeds.
    hearth(&a, "pw").arg("sync").assert().success();
}

#[test]
fn a_sqlcipher_store_recovers_with_its_code_and_joins_an_account_on_sqlcipher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = dir.path().join("a.db");
    let made = json_of(&stdout(hearth(&a, "pw").args([
        "--json",
        "init",
        "--storage",
        "sqlcipher",
        "--cipher",
        "sodium",
    ])));
    let code = made["recovery_code"]
        .as_str()
        .expect("SQLCipher stores make recovery codes")
        .to_owned();
    hearth(&a, "pw")
        .args(["put", "notes", "k", "\"kept\""])
        .assert()
        .success();

    // The passphrase is lost: the code sets a new one, whatever the store's backends.
    hearth(&a, "forgotten")
        .arg("recover")
        .env(
            "HEARTH_RECOVERY_CODE",
            "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH",
        )
        .env("HEARTH_NEW_PASSPHRASE", "new")
        .assert()
        .code(3);
    hearth(&a, "forgotten")
        .arg("recover")
        .env("HEARTH_RECOVERY_CODE", &code)
        .env("HEARTH_NEW_PASSPHRASE", "pw2")
        .assert()
        .success();
    hearth(&a, "pw")
        .args(["get", "notes", "k"])
        .assert()
        .code(3);
    assert_eq!(
        stdout(hearth(&a, "pw2").args(["get", "notes", "k"])).trim(),
        "\"kept\""
    );

    // A second device joins the account on SQLCipher too, and a third on the default.
    let server = serve(dir.path());
    let token = json_of(&stdout(
        hearth(&a, "pw2").args(["--json", "register", "--server", &server.1]),
    ))["token"]
        .as_str()
        .expect("token")
        .to_owned();
    hearth(&a, "pw2").arg("sync").assert().success();
    let b = dir.path().join("b.db");
    hearth(&b, "wrong")
        .args(["join", "--server", &server.1, "--token", &token])
        .args(["--storage", "sqlcipher"])
        .assert()
        .code(3);
    assert!(!b.exists(), "a failed join leaves no store behind");
    hearth(&b, "pw2")
        .args(["join", "--server", &server.1, "--token", &token])
        .args(["--storage", "sqlcipher"])
        .assert()
        .success();
    let c = dir.path().join("c.db");
    hearth(&c, "pw2")
        .args(["join", "--server", &server.1, "--token", &token])
        .assert()
        .success();
    for (db, storage) in [(&b, "sqlcipher"), (&c, "sqlite")] {
        let status = json_of(&stdout(hearth(db, "pw2").args(["--json", "status"])));
        assert_eq!(status["storage"], storage, "{status}");
        assert_eq!(status["space"], made["space"]);
        hearth(db, "pw2").arg("sync").assert().success();
        assert_eq!(
            stdout(hearth(db, "pw2").args(["get", "notes", "k"])).trim(),
            "\"kept\""
        );
    }
    let keys = |p: &Path| {
        p.with_file_name(format!(
            "{}.keys",
            p.file_name().expect("name").to_string_lossy()
        ))
    };
    assert!(
        keys(&b).exists(),
        "the SQLCipher store's key header is in place"
    );
    assert!(!keys(&c).exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_sqlcipher_sodium_store_is_used_without_naming_its_backends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("s.db");
    hearth(&db, "pw")
        .args(["init", "--storage", "sqlcipher", "--cipher", "sodium"])
        .assert()
        .success();
    hearth(&db, "pw")
        .args(["put", "notes", "a", "{\"n\":1}"])
        .assert()
        .success();
    assert_eq!(
        json_of(&stdout(
            hearth(&db, "pw").args(["--json", "get", "notes", "a"])
        ))["value"],
        serde_json::json!({"n": 1})
    );
    let status = json_of(&stdout(hearth(&db, "pw").args(["--json", "status"])));
    assert_eq!(status["storage"], "sqlcipher", "{status}");
    assert_eq!(status["cipher"], "sodium", "{status}");
    assert_eq!(status["pending"], 1);
    hearth(&db, "pw").arg("check").assert().success();
    hearth(&db, "wrong")
        .args(["get", "notes", "a"])
        .assert()
        .code(3);
    // Encrypted at rest: not even SQLite's file header is readable.
    let raw = std::fs::read(&db).expect("read");
    assert!(raw.len() > 16);
    assert!(!raw.starts_with(b"SQLite format 3\0"));
}

#[test]
fn serve_mark_restored_gives_the_log_a_new_id_and_devices_walk_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let server = serve_on(dir.path(), port, "server.db");
    let a = dir.path().join("a.db");
    hearth(&a, "pw").arg("init").assert().success();
    hearth(&a, "pw")
        .args(["put", "notes", "n1", r#"{"t":"kept"}"#])
        .assert()
        .success();
    hearth(&a, "pw")
        .args(["register", "--server", &server.1])
        .assert()
        .success();
    hearth(&a, "pw").arg("sync").assert().success();

    // The operator declares the database restored (here it lost nothing), with the server down.
    drop(server);
    let marked = json_of(&stdout(
        hearth(&a, "pw")
            .args(["--json", "serve", "--db"])
            .arg(dir.path().join("server.db"))
            .arg("--mark-restored"),
    ));
    assert_eq!(marked["spaces_marked"], 1, "{marked}");
    let _server = serve_on(dir.path(), port, "server.db");

    // The next sync sees the new log id and walks the log again: nothing lost, nothing to put
    // back; the one after is ordinary.
    let r = json_of(&stdout(hearth(&a, "pw").args(["--json", "sync"])));
    assert_eq!(
        (
            &r["log_replaced"],
            &r["resynced"],
            &r["reuploaded"],
            &r["discarded"]
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{r}"
    );
    let text = stdout(hearth(&a, "pw").arg("sync"));
    assert!(!text.contains("restored"), "{text}");
    assert!(stdout(hearth(&a, "pw").args(["--json", "get", "notes", "n1"])).contains("kept"));
}
