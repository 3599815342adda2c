use std::sync::Arc;

use serde_json::{Value, json};

use super::*;
use crate::error::ErrorKind;
use crate::privacy::tests::HashOnlyCipher;

const EXAMPLE: &str = r#"
[types.crash-report]
mode = "allow_list"
rules = [
  { path = "app.version",        action = "keep" },
  { path = "user.id",            action = "pseudonym", required = true },
  { path = "user.age",           action = "bucket", width = 10 },
  { path = "user.income",        action = "bucket", bounds = [0, 20000, 50000, 100000] },
  { path = "created_at",         action = "time", granularity = "day" },
  { path = "events[].at",        action = "time", granularity = "week", unit = "ms" },
  { path = "device.location",    action = "grid", cell = 0.1 },
  { path = "message",            action = "redact" },
  { path = "events[].ip",        action = "redact", patterns = ["ipv4", "ipv6"] },
]

[types.usage]
rules = [
  { path = "email", action = "drop" },
  { path = "tags[]", action = "pseudonym" },
]
"#;

fn anonymizer(rules: RuleSet) -> Anonymizer {
    Anonymizer::new(
        Arc::new(HashOnlyCipher),
        SecretKey::from_bytes([0x42; 32]),
        rules,
    )
    .expect("anonymizer")
}

fn example() -> Anonymizer {
    anonymizer(RuleSet::from_toml(EXAMPLE).expect("the documented example loads"))
}

fn report() -> Value {
    json!({
        "app": {"version": "1.4.2", "build": "abc"},
        "user": {"id": "user-8812", "age": 37, "income": 42000, "email": "jane@example.org"},
        "created_at": "2026-11-25T23:30:00-02:00",
        "events": [
            {"at": 1_795_564_800_123_i64, "ip": "from 192.168.1.20 and 2001:db8::1", "name": "open"},
            {"at": 0, "ip": null}
        ],
        "device": {"location": {"lat": 48.8566, "lon": 2.3522, "accuracy": 5}, "model": "X1"},
        "message": "crashed; mail jane@example.org or call +1 555 012 3456",
        "secret_note": "never leaves"
    })
}

fn invalid(result: Result<RuleSet>) -> String {
    match result {
        Ok(_) => panic!("malformed rules were accepted"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn the_documented_example_anonymizes_as_documented() {
    let a = example();
    let out = a
        .anonymize("crash-report", "debugging", &report())
        .expect("anonymize");
    let pseudonym = a.pseudonym("debugging", "user-8812").expect("pseudonym");
    assert_eq!(
        out,
        json!({
            "app": {"version": "1.4.2"},
            "user": {"id": pseudonym, "age": "30..40", "income": "20000..50000"},
            "created_at": "2026-11-26T00:00:00Z",
            "events": [
                {"at": 1_795_392_000_000_i64, "ip": "from [ip] and [ip]"},
                {"at": -259_200_000, "ip": null}
            ],
            "device": {"location": {"lat": 48.8, "lon": 2.3}},
            "message": "crashed; mail [email] or call [phone]"
        })
    );
}

#[test]
fn json_rules_load_like_toml() {
    let from_json = RuleSet::from_json(
        r#"{"types": {"usage": {"rules": [
            {"path": "email", "action": "drop"},
            {"path": "tags[]", "action": "pseudonym"}
        ]}}}"#,
    )
    .expect("json rules");
    let from_toml = RuleSet::from_toml(EXAMPLE).expect("toml rules");
    assert_eq!(
        from_json.get("usage").expect("usage").rules(),
        from_toml.get("usage").expect("usage").rules()
    );
    let a = anonymizer(from_json);
    let out = a
        .anonymize(
            "usage",
            "stats",
            &json!({"email": "a@b.io", "tags": ["x", 7], "count": 3}),
        )
        .expect("anonymize");
    assert_eq!(
        out,
        json!({
            "tags": [a.pseudonym("stats", "x").expect("p"), a.pseudonym("stats", "7").expect("p")],
            "count": 3
        }),
        "deny-list mode keeps what no rule names"
    );
}

#[test]
fn rules_declared_in_code_match_the_file_form() {
    let rules = RuleSet::builder()
        .data_type(
            "usage",
            Mode::DenyList,
            vec![
                Rule::new("email", Action::Drop),
                Rule::new("tags[]", Action::Pseudonym),
            ],
        )
        .build()
        .expect("rules");
    let file = RuleSet::from_toml(EXAMPLE).expect("toml");
    assert_eq!(
        rules.get("usage").expect("usage").rules(),
        file.get("usage").expect("usage").rules()
    );
    assert_eq!(rules.data_types().collect::<Vec<_>>(), ["usage"]);
}

#[test]
fn malformed_rules_are_clear_errors_at_load_time() {
    let one = |rule: &str| RuleSet::from_toml(&format!("[types.t]\nrules = [ {rule} ]\n"));
    let cases = [
        (
            r#"{ path = "a", action = "hash" }"#,
            "unknown action 'hash'",
        ),
        (r#"{ path = "a", action = "drop", widht = 3 }"#, "not valid"),
        (
            r#"{ path = "a", action = "drop", width = 3 }"#,
            "`width` does not apply",
        ),
        (r#"{ path = "", action = "drop" }"#, "path is empty"),
        (r#"{ path = "a..b", action = "drop" }"#, "no field name"),
        (r#"{ path = ".a", action = "drop" }"#, "no field name"),
        (r#"{ path = "a[", action = "drop" }"#, "'['"),
        (r#"{ path = "a[]b", action = "drop" }"#, "'['"),
        (r#"{ path = "[]", action = "drop" }"#, "no field name"),
        (r#"{ path = "a", action = "bucket" }"#, "exactly one of"),
        (
            r#"{ path = "a", action = "bucket", width = 1, bounds = [1] }"#,
            "exactly one of",
        ),
        (
            r#"{ path = "a", action = "bucket", width = 0 }"#,
            "positive",
        ),
        (
            r#"{ path = "a", action = "bucket", width = -2 }"#,
            "positive",
        ),
        (
            r#"{ path = "a", action = "bucket", bounds = [] }"#,
            "not be empty",
        ),
        (
            r#"{ path = "a", action = "bucket", bounds = [3, 1] }"#,
            "ascending",
        ),
        (r#"{ path = "a", action = "time" }"#, "needs `granularity`"),
        (
            r#"{ path = "a", action = "time", granularity = "month" }"#,
            "\"day\" or \"week\"",
        ),
        (
            r#"{ path = "a", action = "time", granularity = "day", unit = "h" }"#,
            "`unit`",
        ),
        (r#"{ path = "a", action = "grid" }"#, "needs `cell`"),
        (r#"{ path = "a", action = "grid", cell = 0 }"#, "`cell`"),
        (
            r#"{ path = "a", action = "redact", patterns = ["ssn"] }"#,
            "unknown pattern 'ssn'",
        ),
        (r#"{ action = "drop" }"#, "not valid"),
    ];
    for (rule, expected) in cases {
        let msg = invalid(one(rule));
        assert!(msg.contains(expected), "{rule}: {msg}");
    }
    let two = |a: &str, b: &str| {
        RuleSet::from_toml(&format!(
            "[types.t]\nrules = [ {{ path = \"{a}\", action = \"drop\" }}, {{ path = \"{b}\", action = \"keep\" }} ]\n"
        ))
    };
    for (a, b, expected) in [
        ("a.b", "a.b", "same path"),
        ("a", "a.b", "inside the field of another rule ('a')"),
        ("a.b", "a", "name fields inside this one"),
        ("a[]", "a.b", "to be an array"),
        ("a.b", "a[]", "to be an object"),
        ("a[]", "a[].b", "inside the field of another rule"),
    ] {
        let msg = invalid(two(a, b));
        assert!(msg.contains(expected), "{a} / {b}: {msg}");
        assert!(msg.contains("rule 2 of data type 't'"), "{msg}");
    }
    assert!(invalid(RuleSet::from_toml("[types.t]\nmode = \"maybe\"\n")).contains("`mode`"));
    assert!(invalid(RuleSet::from_toml("[types.t\n")).contains("not valid"));
    assert!(invalid(RuleSet::from_toml("[kinds.t]\n")).contains("not valid"));
    assert!(invalid(RuleSet::from_json("{\"types\": 3}")).contains("not valid"));
    let deep = vec!["x"; 40].join(".");
    assert!(
        invalid(one(&format!("{{ path = \"{deep}\", action = \"drop\" }}"))).contains("deeper")
    );
    assert!(
        invalid(
            RuleSet::builder()
                .data_type("t", Mode::DenyList, vec![])
                .data_type("t", Mode::AllowList, vec![])
                .build()
        )
        .contains("twice")
    );
    assert!(
        invalid(
            RuleSet::builder()
                .data_type("", Mode::DenyList, vec![])
                .build()
        )
        .contains("data type")
    );
    assert!(
        invalid(
            RuleSet::builder()
                .data_type(
                    "t",
                    Mode::DenyList,
                    vec![Rule::new("a", Action::Bucket(Buckets::Width(f64::NAN)))]
                )
                .build()
        )
        .contains("positive")
    );
}

#[test]
fn pseudonyms_are_keyed_per_purpose_and_stable() {
    let a = example();
    let p1 = a.pseudonym("debugging", "user-8812").expect("p");
    assert_eq!(p1.len(), 32);
    assert!(p1.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        p1,
        a.pseudonym("debugging", "user-8812").expect("p"),
        "stable"
    );
    assert_ne!(
        p1,
        a.pseudonym("analytics", "user-8812").expect("p"),
        "per purpose"
    );
    assert_ne!(
        p1,
        a.pseudonym("debugging", "user-8813").expect("p"),
        "per value"
    );
    // Another root key (another store) gives other pseudonyms.
    let other = Anonymizer::new(
        Arc::new(HashOnlyCipher),
        SecretKey::from_bytes([0x43; 32]),
        RuleSet::default(),
    )
    .expect("anonymizer");
    assert_ne!(p1, other.pseudonym("debugging", "user-8812").expect("p"));
    // Not an unkeyed hash of the value.
    let unkeyed = blake2::Blake2b::<blake2::digest::consts::U32>::digest(b"user-8812");
    assert_ne!(p1, hex::encode(&unkeyed[..16]));
    // Inside payloads: the same within a purpose, different across purposes.
    let d = a
        .anonymize("crash-report", "debugging", &report())
        .expect("a");
    let d2 = a
        .anonymize("crash-report", "debugging", &report())
        .expect("a");
    let s = a
        .anonymize("crash-report", "statistics", &report())
        .expect("a");
    assert_eq!(d["user"]["id"], d2["user"]["id"]);
    assert_ne!(d["user"]["id"], s["user"]["id"]);
    // Numbers are pseudonymized as their JSON text.
    let n = a
        .anonymize("usage", "stats", &json!({"tags": [12345]}))
        .expect("a");
    assert_eq!(
        n["tags"][0],
        json!(a.pseudonym("stats", "12345").expect("p"))
    );
}

use blake2::Digest as _;

#[test]
fn no_original_value_survives_a_pseudonym_or_redaction() {
    let a = example();
    let out = a
        .anonymize("crash-report", "debugging", &report())
        .expect("a");
    let text = serde_json::to_string(&out).expect("json");
    for original in [
        "user-8812",
        "jane@example.org",
        "555",
        "192.168.1.20",
        "2001:db8::1",
        "never leaves",
        "abc",
        "X1",
        "37",
        "42000",
        "48.8566",
        "23:30",
    ] {
        assert!(!text.contains(original), "{original} leaked: {text}");
    }
}

#[test]
fn numbers_fall_into_buckets() {
    let w = |width: f64, x: f64| bucket(&Buckets::Width(width), x);
    assert_eq!(w(10.0, 37.0), "30..40");
    assert_eq!(w(10.0, 30.0), "30..40");
    assert_eq!(w(10.0, -1.0), "-10..0");
    assert_eq!(w(0.1, 0.35), "0.3..0.4");
    assert_eq!(w(1000.0, 0.0), "0..1000");
    let b = |x: f64| bucket(&Buckets::Bounds(vec![0.0, 18.0, 65.0]), x);
    assert_eq!(b(-1.0), "<0");
    assert_eq!(b(0.0), "0..18");
    assert_eq!(b(18.0), "18..65");
    assert_eq!(b(64.9), "18..65");
    assert_eq!(b(65.0), ">=65");
}

#[test]
fn times_truncate_to_day_and_week() {
    // 2026-11-25 (1_795_564_800) is a Wednesday; its ISO week starts Monday 2026-11-23
    // (1_795_392_000).
    assert_eq!(
        truncate_secs(1_795_564_800 + 3_600, Granularity::Day),
        1_795_564_800
    );
    assert_eq!(
        truncate_secs(1_795_564_800 + 3_600, Granularity::Week),
        1_795_392_000
    );
    assert_eq!(
        truncate_secs(1_795_392_000, Granularity::Week),
        1_795_392_000,
        "a Monday"
    );
    assert_eq!(
        truncate_secs(1_795_392_000 - 1, Granularity::Week),
        1_795_392_000 - 7 * 86_400
    );
    assert_eq!(truncate_secs(-1, Granularity::Day), -86_400);
    assert_eq!(
        truncate_secs(0, Granularity::Week),
        -3 * 86_400,
        "1969-12-29, a Monday"
    );
    let rules = RuleSet::builder()
        .data_type(
            "t",
            Mode::DenyList,
            vec![
                Rule::new(
                    "s",
                    Action::Time {
                        granularity: Granularity::Week,
                        unit: EpochUnit::Seconds,
                    },
                ),
                Rule::new(
                    "ms",
                    Action::Time {
                        granularity: Granularity::Day,
                        unit: EpochUnit::Millis,
                    },
                ),
            ],
        )
        .build()
        .expect("rules");
    let a = anonymizer(rules);
    let out = a
        .anonymize(
            "t",
            "p",
            &json!({"s": "2026-11-25T10:11:12.345+05:30", "ms": 1_795_651_199_999_i64}),
        )
        .expect("a");
    assert_eq!(
        out,
        json!({"s": "2026-11-23T00:00:00Z", "ms": 1_795_564_800_000_i64})
    );
    for bad in [
        json!({"s": "yesterday"}),
        json!({"s": 1.5}),
        json!({"s": true}),
        json!({"s": "2026-11-25"}),
    ] {
        let e = a.anonymize("t", "p", &bad).expect_err("mismatch");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        assert!(e.to_string().contains("'s'"), "{e}");
    }
}

#[test]
fn coordinates_snap_to_a_grid() {
    let rules = RuleSet::builder()
        .data_type(
            "t",
            Mode::DenyList,
            vec![
                Rule::new("loc", Action::Grid { cell: 0.5 }),
                Rule::new("lat", Action::Grid { cell: 1.0 }),
            ],
        )
        .build()
        .expect("rules");
    let a = anonymizer(rules);
    let out = a
        .anonymize(
            "t",
            "p",
            &json!({"loc": {"latitude": -33.87, "longitude": 151.21, "alt": 3}, "lat": 12.9}),
        )
        .expect("a");
    assert_eq!(
        out,
        json!({"loc": {"latitude": -34.0, "longitude": 151.0}, "lat": 12.0})
    );
    for bad in [
        json!({"loc": {"lat": 91, "lon": 0}}),
        json!({"loc": {"lat": "x", "lon": 0}}),
        json!({"loc": {"x": 1}}),
        json!({"loc": "48.85,2.35"}),
    ] {
        assert_eq!(
            a.anonymize("t", "p", &bad).map_err(|e| e.kind()).err(),
            Some(ErrorKind::InvalidInput),
            "{bad}"
        );
    }
}

#[test]
fn payloads_that_do_not_match_are_refused_without_echoing_values() {
    let a = example();
    let mismatch = |payload: Value, path: &str| {
        let e = a
            .anonymize("crash-report", "debugging", &payload)
            .expect_err("mismatch must be refused");
        assert_eq!(e.kind(), ErrorKind::InvalidInput);
        let msg = e.to_string();
        assert!(msg.contains(path), "{msg}");
        assert!(!msg.contains("LEAKME"), "an error echoed a value: {msg}");
    };
    mismatch(json!({"app": {}}), "'user.id' is required");
    mismatch(json!({"user": null}), "'user.id' is required");
    mismatch(json!({"user": {"age": 3}}), "'user.id' is required");
    mismatch(
        json!({"user": {"id": {"LEAKME": 1}}}),
        "'user.id' must be a string or a number",
    );
    mismatch(json!({"user": {"id": true}}), "'user.id'");
    mismatch(json!({"user": "LEAKME"}), "'user' must be an object");
    mismatch(
        json!({"user": {"id": "u", "age": "LEAKME"}}),
        "'user.age' must be a number",
    );
    mismatch(
        json!({"user": {"id": "u"}, "events": {"LEAKME": 1}}),
        "'events' must be an array",
    );
    mismatch(
        json!({"user": {"id": "u"}, "events": ["LEAKME"]}),
        "'events[]' must be an object",
    );
    mismatch(
        json!({"user": {"id": "u"}, "message": ["LEAKME"]}),
        "'message' must be a string",
    );
    let root = a
        .anonymize("crash-report", "debugging", &json!(["LEAKME"]))
        .expect_err("root must be an object");
    assert!(root.to_string().contains("(root)"));
    let none = a
        .anonymize("unknown-type", "debugging", &json!({}))
        .expect_err("no rules, no sharing");
    assert_eq!(none.kind(), ErrorKind::InvalidInput);
    // Missing optional fields and nulls are fine.
    let out = a
        .anonymize(
            "crash-report",
            "debugging",
            &json!({"user": {"id": 1, "age": null}, "events": null}),
        )
        .expect("a");
    assert_eq!(
        out,
        json!({"user": {"id": a.pseudonym("debugging", "1").expect("p"), "age": null}, "events": null})
    );
}

#[test]
fn allow_list_mode_keeps_only_named_fields() {
    let rules = RuleSet::builder()
        .data_type(
            "t",
            Mode::AllowList,
            vec![
                Rule::new("a.keep", Action::Keep),
                Rule::new("list[].x", Action::Keep),
                Rule::new("a.gone", Action::Drop),
            ],
        )
        .build()
        .expect("rules");
    let a = anonymizer(rules);
    let out = a
        .anonymize(
            "t",
            "p",
            &json!({"a": {"keep": {"deep": 1}, "gone": 2, "other": 3}, "list": [{"x": 1, "y": 2}, {"y": 3}], "top": 4}),
        )
        .expect("a");
    assert_eq!(
        out,
        json!({"a": {"keep": {"deep": 1}}, "list": [{"x": 1}, {}]})
    );
    assert_eq!(a.anonymize("t", "p", &json!({})).expect("a"), json!({}));
}

#[test]
fn debug_shows_no_key() {
    let a = example();
    let dbg = format!("{a:?}");
    assert!(dbg.contains("crash-report"));
    assert!(!dbg.contains("42, 42"), "{dbg}");
}
