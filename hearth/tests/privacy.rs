//! The privacy pipeline end to end with orion: consent, anonymizer, destination sealing, the
//! audit log; in memory, and on a real SQLite file across restarts.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hearth::consent::{ConsentPolicy, ConsentRequest, Decision, DenyAll, DenyReason};
use hearth::privacy::{
    AuditEvent, ConsentPrompt, DestinationKey, DestinationKeyPair, GrantOptions, GrantSource,
    PromptAnswer, PromptContext, RuleSet, Scope, ShareOutcome, ShareStatus, Sharer, StoreConsent,
    open_share_document,
};
use hearth::store::WallClock;
use hearth::{
    ErrorKind, KdfCost, MemoryStorage, OpenOptions, PullPage, PushRequest, PushResponse, SpaceId,
    Store, Transport, crypto_orion::OrionCipher,
};
use serde_json::{Value, json};

const PASS: &str = "correct horse battery staple";
const DEST: &str = "acme-crashes";
const PURPOSE: &str = "debugging";
const TYPE: &str = "crash-report";

const RULES: &str = r#"
[types.crash-report]
mode = "allow_list"
rules = [
  { path = "app.version", action = "keep" },
  { path = "user.id", action = "pseudonym", required = true },
  { path = "user.age", action = "bucket", width = 10 },
  { path = "at", action = "time", granularity = "day" },
  { path = "message", action = "redact" },
  { path = "events[].ip", action = "redact", patterns = ["ipv4", "ipv6"] },
]
"#;

fn report() -> Value {
    json!({
        "app": {"version": "2.0.1"},
        "user": {"id": "user-ORIGINALID", "age": 41, "email": "jane@example.org"},
        "at": "2026-11-25T08:09:10Z",
        "message": "failed for jane@example.org, call +1 555 012 3456, card 4111 1111 1111 1111",
        "events": [{"ip": "10.1.2.3"}, {"ip": "fe80::1234"}],
        "notes": "ORIGINALNOTE"
    })
}

/// Values of `report()` that must never leave.
const ORIGINALS: [&str; 8] = [
    "ORIGINALID",
    "jane@example.org",
    "555 012 3456",
    "4111 1111 1111 1111",
    "10.1.2.3",
    "fe80::1234",
    "ORIGINALNOTE",
    "08:09:10",
];

/// A transport that records what `share` was given, and can be told to fail.
#[derive(Debug, Default)]
struct RecordingTransport {
    shared: Mutex<Vec<(String, Vec<u8>)>>,
    fail: AtomicBool,
}

impl RecordingTransport {
    fn sent(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.lock().expect("lock").clone()
    }
    fn bytes_sent(&self) -> usize {
        self.sent().iter().map(|(_, b)| b.len()).sum()
    }
}

#[async_trait]
impl Transport for RecordingTransport {
    fn name(&self) -> &'static str {
        "recording"
    }
    async fn push(&self, _: PushRequest) -> hearth::Result<PushResponse> {
        Err(hearth::Error::new(
            ErrorKind::Unavailable,
            "not in this test",
        ))
    }
    async fn pull(&self, _: hearth::PullRequest) -> hearth::Result<PullPage> {
        Err(hearth::Error::new(
            ErrorKind::Unavailable,
            "not in this test",
        ))
    }
    async fn get_key_backup(&self, _: SpaceId) -> hearth::Result<Option<Vec<u8>>> {
        Ok(None)
    }
    async fn put_key_backup(&self, _: SpaceId, _: Vec<u8>) -> hearth::Result<()> {
        Ok(())
    }
    async fn share(&self, destination: &str, sealed: Vec<u8>) -> hearth::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(hearth::Error::new(ErrorKind::Unavailable, "network down"));
        }
        self.shared
            .lock()
            .expect("lock")
            .push((destination.to_owned(), sealed));
        Ok(())
    }
}

/// A prompt that answers from a script and counts the questions.
#[derive(Debug, Default)]
struct ScriptedPrompt {
    answers: Mutex<VecDeque<PromptAnswer>>,
    asked: Mutex<Vec<(ConsentRequest, DenyReason)>>,
}

impl ScriptedPrompt {
    fn will_answer(&self, answer: PromptAnswer) {
        self.answers.lock().expect("lock").push_back(answer);
    }
    fn asked(&self) -> Vec<(ConsentRequest, DenyReason)> {
        self.asked.lock().expect("lock").clone()
    }
}

#[async_trait]
impl ConsentPrompt for ScriptedPrompt {
    async fn ask(
        &self,
        request: &ConsentRequest,
        context: PromptContext,
    ) -> hearth::Result<PromptAnswer> {
        self.asked
            .lock()
            .expect("lock")
            .push((request.clone(), context.previous));
        Ok(self
            .answers
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or(PromptAnswer::Deny))
    }
}

/// A settable clock (milliseconds).
#[derive(Clone)]
struct Clock(Arc<AtomicU64>);

impl Clock {
    fn new() -> Self {
        Self(Arc::new(AtomicU64::new(1_795_564_800_000)))
    }
    fn wall(&self) -> WallClock {
        let t = self.0.clone();
        Arc::new(move || t.load(Ordering::SeqCst))
    }
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

async fn memory_store() -> Store {
    Store::open(
        Arc::new(MemoryStorage::new()),
        OrionCipher::shared(),
        OpenOptions::new(PASS)
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS),
    )
    .await
    .expect("store")
}

async fn sqlite_store(path: &Path) -> Store {
    Store::builder()
        .path(path)
        .passphrase(PASS)
        .storage("sqlite")
        .cipher("orion")
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS)
        .open()
        .await
        .expect("sqlite store")
}

struct Pipeline {
    store: Store,
    consent: StoreConsent,
    sharer: Sharer,
    transport: Arc<RecordingTransport>,
    receiver: DestinationKeyPair,
    clock: Clock,
}

fn receiver() -> DestinationKeyPair {
    // Fixed so the receiver's key is the same across restarts of the SQLite test.
    DestinationKeyPair::from_secret(&OrionCipher, hearth::SecretKey::from_bytes([0x5a; 32]))
        .expect("key pair")
}

fn pipeline_over(store: Store, prompt: Option<Arc<ScriptedPrompt>>) -> Pipeline {
    let clock = Clock::new();
    let mut consent = StoreConsent::new(&store).with_clock(clock.wall());
    if let Some(p) = prompt {
        consent = consent.with_prompt(p);
    }
    let transport = Arc::new(RecordingTransport::default());
    let receiver = receiver();
    let sharer = Sharer::builder(&store)
        .consent(Arc::new(consent.clone()))
        .rules(RuleSet::from_toml(RULES).expect("rules"))
        .destination(DEST, receiver.public())
        .transport(transport.clone())
        .clock(clock.wall())
        .build()
        .expect("sharer");
    Pipeline {
        store,
        consent,
        sharer,
        transport,
        receiver,
        clock,
    }
}

async fn pipeline() -> Pipeline {
    pipeline_over(memory_store().await, None)
}

fn request() -> ConsentRequest {
    ConsentRequest::new(TYPE, PURPOSE, DEST)
}

impl Pipeline {
    async fn share(&self) -> hearth::Result<ShareOutcome> {
        self.sharer.share(TYPE, PURPOSE, DEST, &report()).await
    }
    async fn events(&self) -> Vec<AuditEvent> {
        self.consent
            .audit()
            .read(0, 10_000)
            .await
            .expect("audit")
            .into_iter()
            .map(|e| e.event)
            .collect()
    }
}

fn denied(outcome: hearth::Result<ShareOutcome>) -> DenyReason {
    match outcome.expect("share") {
        ShareOutcome::Denied(reason) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_grant_zero_bytes_leave() {
    let p = pipeline().await;
    assert_eq!(denied(p.share().await), DenyReason::NoGrant);
    assert_eq!(p.transport.bytes_sent(), 0);
    let err = p
        .share()
        .await
        .expect("share")
        .require_sent()
        .expect_err("denied");
    assert_eq!(err.kind(), ErrorKind::ConsentDenied);
    assert_eq!(p.transport.bytes_sent(), 0);

    // The built-in DenyAll policy refuses too.
    let store = memory_store().await;
    let transport = Arc::new(RecordingTransport::default());
    let sharer = Sharer::builder(&store)
        .consent(Arc::new(DenyAll))
        .rules(RuleSet::from_toml(RULES).expect("rules"))
        .destination(DEST, receiver().public())
        .transport(transport.clone())
        .build()
        .expect("sharer");
    assert!(
        !sharer
            .share(TYPE, PURPOSE, DEST, &report())
            .await
            .expect("share")
            .is_sent()
    );
    assert_eq!(transport.bytes_sent(), 0);
}

#[tokio::test]
async fn a_grant_lets_out_only_anonymized_data_sealed_to_the_destination() {
    let p = pipeline().await;
    let grant = p
        .consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    let sent = p
        .share()
        .await
        .expect("share")
        .require_sent()
        .expect("sent");
    assert_eq!(sent.grant_id, grant.id);
    let wire = p.transport.sent();
    assert_eq!(wire.len(), 1);
    assert_eq!(wire[0].0, DEST);
    assert_eq!(wire[0].1.len(), sent.sealed_len);

    // The receiver opens it with its secret key, for this destination and purpose only.
    let doc = open_share_document(&OrionCipher, p.receiver.secret(), DEST, PURPOSE, &wire[0].1)
        .expect("the destination opens it");
    assert_eq!(doc.data_type, TYPE);
    assert_eq!(doc.data, sent.data);
    let pseudonym = p
        .sharer
        .anonymizer()
        .pseudonym(PURPOSE, "user-ORIGINALID")
        .expect("pseudonym");
    assert_eq!(
        doc.data,
        json!({
            "app": {"version": "2.0.1"},
            "user": {"id": pseudonym, "age": "40..50"},
            "at": "2026-11-25T00:00:00Z",
            "message": "failed for [email], call [phone], card [card]",
            "events": [{"ip": "[ip]"}, {"ip": "[ip]"}]
        })
    );
    // No original value of a pseudonymized, redacted or dropped field, in what was sent nor on
    // the wire.
    let exported = serde_json::to_string(&doc.data).expect("json");
    for original in ORIGINALS {
        assert!(!exported.contains(original), "{original} was exported");
        assert!(
            !wire[0]
                .1
                .windows(original.len())
                .any(|w| w == original.as_bytes()),
            "{original} is on the wire in clear"
        );
    }
    for (destination, purpose) in [(DEST, "marketing"), ("other-dest", PURPOSE)] {
        let err = open_share_document(
            &OrionCipher,
            p.receiver.secret(),
            destination,
            purpose,
            &wire[0].1,
        )
        .expect_err("bound to destination and purpose");
        assert_eq!(err.kind(), ErrorKind::Tampered);
    }
    let stranger = DestinationKeyPair::generate(&OrionCipher).expect("keys");
    assert_eq!(
        open_share_document(&OrionCipher, stranger.secret(), DEST, PURPOSE, &wire[0].1)
            .map_err(|e| e.kind())
            .err(),
        Some(ErrorKind::Tampered)
    );
    // Debug output shows sizes and ids, not data.
    assert!(!format!("{sent:?} {doc:?}").contains("2.0.1"));
}

#[tokio::test]
async fn revocation_takes_effect_immediately() {
    let p = pipeline().await;
    let grant = p
        .consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    assert!(p.share().await.expect("share").is_sent());
    let before = p.transport.bytes_sent();

    // Revoked through another handle on the same store: no cache keeps the old answer.
    let settings_screen = StoreConsent::new(&p.store);
    assert!(settings_screen.revoke(&grant.id).await.expect("revoke"));
    assert!(
        !settings_screen
            .revoke(&grant.id)
            .await
            .expect("revoke twice")
    );
    assert!(
        !settings_screen
            .revoke("no-such-grant")
            .await
            .expect("revoke unknown")
    );
    assert_eq!(denied(p.share().await), DenyReason::Revoked);
    assert_eq!(p.transport.bytes_sent(), before, "nothing more left");
    let grants = p.consent.grants_for(&request()).await.expect("grants");
    assert_eq!(grants.len(), 1);
    assert!(grants[0].revoked_at.is_some());

    // A new explicit grant allows again; revoke_all ends every grant of the request.
    p.consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant again");
    p.consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("and another");
    assert!(p.share().await.expect("share").is_sent());
    assert_eq!(
        p.consent.revoke_all(&request()).await.expect("revoke all"),
        2
    );
    assert_eq!(denied(p.share().await), DenyReason::Revoked);
}

#[tokio::test]
async fn expired_grants_deny() {
    let p = pipeline().await;
    let grant = p
        .consent
        .grant(
            &request(),
            GrantOptions::ongoing().expires_after(Duration::from_secs(3600)),
        )
        .await
        .expect("grant");
    assert_eq!(grant.expires_at, Some(p.clock.now() + 3_600_000));
    p.clock.advance(Duration::from_secs(3599));
    assert!(p.share().await.expect("share").is_sent());
    p.clock.advance(Duration::from_secs(1));
    assert_eq!(denied(p.share().await), DenyReason::Expired);
    assert_eq!(p.transport.sent().len(), 1);
    // An expiry in the past is refused, not recorded.
    let err = p
        .consent
        .grant(
            &request(),
            GrantOptions::ongoing().expires_at(p.clock.now()),
        )
        .await
        .expect_err("past expiry");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert_eq!(p.consent.grants().await.expect("grants").len(), 1);
}

#[tokio::test]
async fn a_one_time_grant_allows_one_share() {
    let p = pipeline().await;
    let grant = p
        .consent
        .grant(&request(), GrantOptions::once())
        .await
        .expect("grant");
    assert_eq!(grant.scope, Scope::Once);
    assert!(p.share().await.expect("share").is_sent());
    assert_eq!(denied(p.share().await), DenyReason::Expired);
    assert_eq!(p.transport.sent().len(), 1);
}

#[tokio::test]
async fn the_prompt_is_asked_when_no_grant_exists_and_a_yes_is_recorded() {
    let prompt = Arc::new(ScriptedPrompt::default());
    let p = pipeline_over(memory_store().await, Some(prompt.clone()));

    // No: nothing sent, the question audited.
    prompt.will_answer(PromptAnswer::Deny);
    assert_eq!(denied(p.share().await), DenyReason::NoGrant);
    assert_eq!(p.transport.bytes_sent(), 0);
    assert!(p.consent.grants().await.expect("grants").is_empty());

    // Yes for an hour: a recorded grant; asked once, then the grant answers.
    let expires_at = p.clock.now() + 3_600_000;
    prompt.will_answer(PromptAnswer::Allow {
        expires_at: Some(expires_at),
    });
    assert!(p.share().await.expect("share").is_sent());
    assert!(p.share().await.expect("share").is_sent());
    let grants = p.consent.grants().await.expect("grants");
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].source, GrantSource::Prompt);
    assert_eq!(grants[0].expires_at, Some(expires_at));
    assert_eq!(prompt.asked().len(), 2);

    // After expiry the prompt is asked to renew, told why.
    p.clock.advance(Duration::from_secs(3600));
    prompt.will_answer(PromptAnswer::AllowOnce);
    assert!(p.share().await.expect("share").is_sent());
    assert_eq!(
        prompt.asked().last().map(|a| a.1),
        Some(DenyReason::Expired)
    );
    assert_eq!(prompt.asked()[0].0, request());

    // After the user revokes, the prompt is not asked again: re-granting is explicit.
    let active = p.consent.grants().await.expect("grants");
    assert!(
        active.iter().all(|g| !g.is_active(p.clock.now())),
        "the once-grant was used"
    );
    p.consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    p.consent.revoke_all(&request()).await.expect("revoke");
    let asked = prompt.asked().len();
    prompt.will_answer(PromptAnswer::AllowOnce);
    assert_eq!(denied(p.share().await), DenyReason::Revoked);
    assert_eq!(prompt.asked().len(), asked);
    assert_eq!(p.transport.sent().len(), 3);

    let prompted: Vec<bool> = p
        .events()
        .await
        .into_iter()
        .filter_map(|e| match e {
            AuditEvent::Decision { prompted, .. } => Some(prompted),
            _ => None,
        })
        .collect();
    assert_eq!(prompted, [true, true, false, true, false]);
}

#[tokio::test]
async fn the_audit_log_records_every_decision_in_order() {
    let p = pipeline().await;
    assert_eq!(p.consent.audit().last_seq().await.expect("seq"), 0);
    denied(p.share().await);
    let g = p
        .consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    p.share().await.expect("share");
    p.consent.revoke(&g.id).await.expect("revoke");
    denied(p.share().await);

    let entries = p.consent.audit().read(0, 100).await.expect("read");
    assert_eq!(
        entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=entries.len() as u64).collect::<Vec<_>>(),
        "dense, ordered sequence"
    );
    let summary: Vec<String> = entries
        .iter()
        .map(|e| match &e.event {
            AuditEvent::Decision {
                allowed, reason, ..
            } => format!("decision:{allowed}:{reason:?}"),
            AuditEvent::Grant { .. } => "grant".into(),
            AuditEvent::Revoke { .. } => "revoke".into(),
            AuditEvent::Share { status, .. } => format!("share:{status:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        [
            "decision:false:Some(NoGrant)",
            "share:NotSent",
            "grant",
            "decision:true:None",
            "share:Sending",
            "share:Sent",
            "revoke",
            "decision:false:Some(Revoked)",
            "share:NotSent",
        ]
    );
    match &entries[5].event {
        AuditEvent::Share {
            grant_id,
            sealed_len,
            status: ShareStatus::Sent,
            ..
        } => {
            assert_eq!(grant_id.as_deref(), Some(g.id.as_str()));
            assert_eq!(*sealed_len, Some(p.transport.bytes_sent()));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Paging.
    let page = p.consent.audit().read(3, 2).await.expect("page");
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert!(p.consent.audit().read(9, 10).await.expect("end").is_empty());

    // Export: JSON lines, in order, with readable times, and no payload values.
    let export = p.consent.audit().export_json_lines().await.expect("export");
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 9);
    assert_eq!(lines[0]["event"], "decision");
    assert_eq!(lines[0]["reason"], "no_grant");
    assert_eq!(lines[0]["time"], "2026-11-25T00:00:00Z");
    assert_eq!(lines[5]["status"], "sent");
    assert_eq!(lines[8]["error"], "consent_denied");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], json!(i + 1));
    }
    for original in ORIGINALS {
        assert!(!export.contains(original));
    }

    // All of it stays on the device: nothing entered the sync outbox.
    assert_eq!(p.store.info().await.expect("info").pending, 0);
}

#[tokio::test]
async fn concurrent_decisions_keep_the_audit_log_dense() {
    let p = pipeline().await;
    let other = StoreConsent::new(&p.store);
    p.consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = if i % 2 == 0 {
            p.consent.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move { c.decide(&request()).await }));
    }
    for t in tasks {
        assert!(t.await.expect("join").expect("decide").is_allowed());
    }
    let entries = p.consent.audit().read(0, 100).await.expect("read");
    assert_eq!(
        entries.len(),
        25,
        "one grant and 24 decisions, none overwritten"
    );
    assert_eq!(p.consent.audit().last_seq().await.expect("seq"), 25);
}

#[tokio::test]
async fn sync_to_own_devices_is_a_recorded_consent() {
    let prompt = Arc::new(ScriptedPrompt::default());
    let p = pipeline_over(memory_store().await, Some(prompt.clone()));
    prompt.will_answer(PromptAnswer::Allow { expires_at: None });
    assert!(
        !p.consent.sync_allowed().await.expect("decide"),
        "off by default"
    );
    assert!(prompt.asked().is_empty(), "sync never prompts");
    let g = p
        .consent
        .grant_sync(GrantOptions::ongoing())
        .await
        .expect("enable sync");
    assert_eq!(g.request(), StoreConsent::sync_request());
    assert!(p.consent.sync_allowed().await.expect("decide"));
    assert_eq!(p.consent.revoke_sync().await.expect("disable"), 1);
    assert!(!p.consent.sync_allowed().await.expect("decide"));
    assert_eq!(
        p.consent
            .decide(&StoreConsent::sync_request())
            .await
            .expect("decide"),
        Decision::Deny(DenyReason::Revoked)
    );
    let decisions = p
        .events()
        .await
        .into_iter()
        .filter(|e| matches!(e, AuditEvent::Decision { data_type, .. } if data_type == "hearth.user-data"))
        .count();
    assert_eq!(decisions, 4);
}

#[tokio::test]
async fn bad_input_is_a_typed_error_and_sends_nothing() {
    let p = pipeline().await;
    p.consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    let kind = |r: hearth::Result<ShareOutcome>| r.map(|_| ()).map_err(|e| e.kind()).err();

    // A destination without a key; a data type without rules; bad names.
    assert_eq!(
        kind(p.sharer.share(TYPE, PURPOSE, "nowhere", &report()).await),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(p.sharer.share("location", PURPOSE, DEST, &report()).await),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(p.sharer.share(TYPE, "", DEST, &report()).await),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(
        kind(p.sharer.share(TYPE, "a\nb", DEST, &report()).await),
        Some(ErrorKind::InvalidInput)
    );
    // A payload that does not match the rules, with consent given: refused, named by path.
    let mut missing = report();
    missing["user"]
        .as_object_mut()
        .expect("object")
        .remove("id");
    let err = p
        .sharer
        .share(TYPE, PURPOSE, DEST, &missing)
        .await
        .expect_err("required field missing");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("user.id"), "{err}");
    let mut wrong = report();
    wrong["user"]["age"] = json!("ORIGINALAGE");
    let err = p
        .sharer
        .share(TYPE, PURPOSE, DEST, &wrong)
        .await
        .expect_err("wrong type");
    assert!(!err.to_string().contains("ORIGINALAGE"));
    assert_eq!(p.transport.bytes_sent(), 0);

    // The transport failing is the transport's error, audited as failed.
    p.transport.fail.store(true, Ordering::SeqCst);
    assert_eq!(kind(p.share().await), Some(ErrorKind::Unavailable));
    assert!(matches!(
        p.events().await.last(),
        Some(AuditEvent::Share {
            status: ShareStatus::Failed,
            ..
        })
    ));

    // A degenerate destination key is refused before anything is sent.
    let store = memory_store().await;
    let consent = StoreConsent::new(&store);
    consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    let transport = Arc::new(RecordingTransport::default());
    let sharer = Sharer::builder(&store)
        .consent(Arc::new(consent))
        .rules(RuleSet::from_toml(RULES).expect("rules"))
        .destination(DEST, DestinationKey::from_bytes([0; 32]))
        .transport(transport.clone())
        .build()
        .expect("sharer");
    assert_eq!(
        kind(sharer.share(TYPE, PURPOSE, DEST, &report()).await),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(transport.bytes_sent(), 0);

    // Configuration mistakes.
    let no_transport = Sharer::builder(&store)
        .build()
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(no_transport.err(), Some(ErrorKind::Config));
    let bad_name = Sharer::builder(&store)
        .destination("", DestinationKey::from_bytes([9; 32]))
        .transport(transport.clone())
        .build()
        .map(|_| ())
        .map_err(|e| e.kind());
    assert_eq!(bad_name.err(), Some(ErrorKind::InvalidInput));
}

fn files_contain(db: &Path, needle: &[u8]) -> bool {
    ["", "-wal", "-shm"].iter().any(|s| {
        std::fs::read(format!("{}{s}", db.display()))
            .map(|b| b.windows(needle.len()).any(|w| w == needle))
            .unwrap_or(false)
    })
}

#[tokio::test]
async fn grants_audit_and_pseudonyms_survive_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("privacy.db");

    let p = pipeline_over(sqlite_store(&db).await, None);
    let grant = p
        .consent
        .grant(&request(), GrantOptions::ongoing())
        .await
        .expect("grant");
    let first = p
        .share()
        .await
        .expect("share")
        .require_sent()
        .expect("sent");
    let audit_before = p.consent.audit().read(0, 100).await.expect("audit");
    assert_eq!(audit_before.len(), 4);
    // Grants and the audit log are sealed on disk like any record.
    for needle in [
        TYPE.as_bytes(),
        DEST.as_bytes(),
        PURPOSE.as_bytes(),
        grant.id.as_bytes(),
    ] {
        assert!(
            !files_contain(&db, needle),
            "{} in clear on disk",
            String::from_utf8_lossy(needle)
        );
    }
    p.store.clone().close().await.expect("close");
    drop(p);

    let p = pipeline_over(sqlite_store(&db).await, None);
    let grants = p.consent.grants().await.expect("grants");
    assert_eq!(grants, vec![grant.clone()], "the grant survives");
    assert_eq!(
        p.consent.audit().read(0, 100).await.expect("audit"),
        audit_before,
        "the audit log survives"
    );
    let again = p
        .share()
        .await
        .expect("share")
        .require_sent()
        .expect("sent");
    assert_eq!(
        again.data["user"]["id"], first.data["user"]["id"],
        "pseudonyms are stable across restarts"
    );
    assert_eq!(
        p.consent.audit().last_seq().await.expect("seq"),
        7,
        "the sequence continues"
    );
    assert!(p.consent.revoke(&grant.id).await.expect("revoke"));
    assert_eq!(denied(p.share().await), DenyReason::Revoked);
    assert_eq!(p.transport.sent().len(), 1);
    assert_eq!(
        p.store.info().await.expect("info").pending,
        0,
        "nothing to sync"
    );
    p.store.clone().close().await.expect("close");
    drop(p);

    let p = pipeline_over(sqlite_store(&db).await, None);
    assert_eq!(
        denied(p.share().await),
        DenyReason::Revoked,
        "revocation survives"
    );
    assert_eq!(p.transport.bytes_sent(), 0);
    let export = p.consent.audit().export_json_lines().await.expect("export");
    assert_eq!(export.lines().count(), 12);
}
