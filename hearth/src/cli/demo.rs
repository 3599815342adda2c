//! `hearth demo`: the main job on the embedded defaults, with no set-up. Two devices on SQLite
//! files with orion, a sync server, offline edits on both, a conflict merged field by field, one
//! left to the user, a delete, a consent-gated share refused then allowed, and both devices
//! converging. Exits 0 only if everything converged.

use std::sync::Arc;

use hearth::privacy::{
    DestinationKeyPair, GrantOptions, RuleSet, ShareOutcome, Sharer, StoreConsent,
};
use hearth::{
    Choice, ConsentRequest, Error, ErrorKind, KdfCost, Result, Store, SyncConfig, SyncEngine,
    Transport, WriteBatch,
};
use serde_json::json;

use super::demo_server::DemoServer;

const PASSPHRASE: &str = "correct horse battery staple";

struct Narrator {
    quiet: bool,
    step: usize,
}

impl Narrator {
    fn step(&mut self, text: &str) {
        self.step += 1;
        if !self.quiet {
            outln!("\n{}. {text}", self.step);
        }
    }
    fn say(&self, text: impl AsRef<str>) {
        if !self.quiet {
            outln!("   {}", text.as_ref());
        }
    }
}

struct Device {
    name: &'static str,
    store: Store,
    engine: SyncEngine,
}

impl Device {
    async fn sync(&self, n: &Narrator) -> Result<()> {
        // Whoever starts a round checks the sync consent first (audited), as `hearth sync` does.
        if !hearth::StoreConsent::new(&self.store)
            .sync_allowed()
            .await?
        {
            return Err(Error::new(
                ErrorKind::ConsentDenied,
                "the demo's sync consent is missing",
            ));
        }
        let r = self.engine.sync().await?;
        n.say(format!(
            "{} synced: pushed {}, pulled {}, applied {}, conflicts resolved {}, waiting for the user {}",
            self.name, r.pushed, r.pulled, r.applied, r.conflicts_resolved, r.conflicts_pending
        ));
        Ok(())
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::new(ErrorKind::Io, what).with_source(e)
}

async fn create_store(path: std::path::PathBuf, join: Option<&[u8]>) -> Result<Store> {
    let storage =
        (hearth::registry::storage("sqlite")?.open)(hearth::StorageOptions::at(&path).create(true))
            .await?;
    let cipher = (hearth::registry::cipher("orion")?.make)();
    // The demo runs in a throwaway directory; a real store keeps the default Argon2id cost.
    let options = hearth::OpenOptions::new(PASSPHRASE)
        .create(true)
        .kdf_cost(KdfCost::INSECURE_FOR_TESTS);
    match join {
        None => Store::open(storage, cipher, options).await,
        Some(backup) => Store::join(storage, cipher, options, backup).await,
    }
}

async fn device(name: &'static str, store: Store, transport: Arc<dyn Transport>) -> Result<Device> {
    // Enabling sync is the user's consent to it, recorded and audited like any other.
    hearth::StoreConsent::new(&store)
        .grant_sync(hearth::GrantOptions::ongoing())
        .await?;
    let engine = SyncEngine::new(store.clone(), transport, SyncConfig::default());
    engine.set_strategy("notes", "merge").await?;
    engine.set_strategy("tasks", "user-choice").await?;
    Ok(Device {
        name,
        store,
        engine,
    })
}

/// Runs the demo.
pub async fn run(quiet: bool) -> Result<()> {
    let mut n = Narrator { quiet, step: 0 };
    let dir = tempfile::tempdir().map_err(io("cannot create a temporary directory"))?;

    n.step("Start a sync server on loopback (it stores only ciphertext and opaque ids)");
    let server = DemoServer::start(dir.path()).await?;
    n.say(format!("listening on {}", server.describe()));

    n.step("Create the laptop's store (SQLite file, orion) and register it with the server");
    let laptop_store = create_store(dir.path().join("laptop.db"), None).await?;
    server.register(&laptop_store).await?;
    let laptop = device("laptop", laptop_store, server.transport().await?).await?;
    let info = laptop.store.info().await?;
    n.say(format!(
        "device {}  space {}  key fingerprint {}",
        info.device, info.space, info.fingerprint
    ));
    n.say("enabling sync is recorded as the user's consent (hearth.user-data, sync, own-devices)");

    n.step(
        "The phone joins with only the passphrase and the account token (it fetches the wrapped key backup)",
    );
    let backup = server.key_backup().await?;
    let phone_store = create_store(dir.path().join("phone.db"), Some(&backup)).await?;
    server.register_device(&phone_store).await?;
    let phone = device("phone", phone_store, server.transport().await?).await?;
    n.say(format!(
        "phone device {}, same space {}",
        phone.store.device(),
        phone.store.space()
    ));

    n.step("The laptop writes notes and tasks; both devices sync");
    let mut b = WriteBatch::new();
    b.put(
        "notes",
        "groceries",
        &json!({"title": "Groceries", "body": "", "tags": ["home"]}),
    )?;
    b.put(
        "notes",
        "trip",
        &json!({"title": "Trip to the coast", "body": "pack boots"}),
    )?;
    b.put("tasks", "dentist", &json!({"when": "Tuesday 9:00"}))?;
    laptop.store.write(b).await?;
    laptop.sync(&n).await?;
    phone.sync(&n).await?;

    n.step("Both go offline and edit the same records");
    laptop
        .store
        .put(
            "notes",
            "groceries",
            &json!({"title": "Groceries (this week)", "body": "", "tags": ["home"]}),
        )
        .await?;
    phone
        .store
        .put(
            "notes",
            "groceries",
            &json!({"title": "Groceries", "body": "oat milk, lentils", "tags": ["home", "shop"]}),
        )
        .await?;
    laptop
        .store
        .put("tasks", "dentist", &json!({"when": "Wednesday 9:00"}))
        .await?;
    phone
        .store
        .put("tasks", "dentist", &json!({"when": "Thursday 14:00"}))
        .await?;
    laptop.store.delete("notes", "trip").await?;
    n.say("laptop: retitles 'groceries', moves the dentist to Wednesday, deletes 'trip'");
    n.say("phone:  fills the body and a tag of 'groceries', moves the dentist to Thursday");

    n.step("They come back online and sync");
    laptop.sync(&n).await?;
    phone.sync(&n).await?;
    laptop.sync(&n).await?;
    let g = phone.store.get("notes", "groceries").await?;
    n.say(format!(
        "notes use `merge`: 'groceries' is now {}",
        g.clone().unwrap_or_default()
    ));
    n.say(format!(
        "'trip' was deleted on the laptop; on the phone it is {}",
        if phone.store.get("notes", "trip").await?.is_none() {
            "gone"
        } else {
            "STILL THERE"
        }
    ));

    n.step("Tasks use `user-choice`: the conflict waits for the user");
    let conflicts = laptop.engine.conflicts().await?;
    for c in &conflicts {
        n.say(format!(
            "{}/{}: local {} vs remote {}",
            c.local.collection,
            c.local.key,
            json!(c.local.value),
            json!(
                c.siblings
                    .iter()
                    .map(|s| s.value.clone())
                    .collect::<Vec<_>>()
            )
        ));
    }
    if conflicts.is_empty() {
        return Err(Error::internal("the demo expected a user-choice conflict"));
    }
    laptop
        .engine
        .resolve("tasks", "dentist", Choice::Remote(0))
        .await?;
    n.say("the user picks the phone's Thursday slot on the laptop");
    laptop.sync(&n).await?;
    phone.sync(&n).await?;

    n.step("A consent-gated share: usage statistics to a telemetry service");
    let telemetry = DestinationKeyPair::generate(laptop.store.cipher().as_ref())?;
    let rules = RuleSet::from_toml(
        r#"
        [types.usage-stats]
        mode = "allow_list"
        rules = [
          { path = "user", action = "pseudonym", required = true },
          { path = "notes_count", action = "bucket", width = 10 },
          { path = "feedback", action = "redact" },
        ]
        "#,
    )?;
    let consent = StoreConsent::new(&laptop.store);
    let sharer = Sharer::builder(&laptop.store)
        .consent(Arc::new(consent.clone()))
        .rules(rules)
        .destination("telemetry", telemetry.public())
        // The telemetry service is another party; here a local stand-in receives the sealed bytes.
        .transport(Arc::new(hearth::transport_mock::MockTransport::new(
            hearth::MemoryRelay::default(),
        )))
        .build()?;
    let stats = json!({"user": "ada@example.org", "notes_count": 23, "feedback": "call me at +1 555 012 3456", "device_name": "Ada's laptop"});
    match sharer
        .share("usage-stats", "improve-product", "telemetry", &stats)
        .await?
    {
        ShareOutcome::Denied(reason) => n.say(format!(
            "without consent: refused ({reason:?}); nothing left the device"
        )),
        _ => return Err(Error::internal("a share went out without consent")),
    }
    consent
        .grant(
            &ConsentRequest::new("usage-stats", "improve-product", "telemetry"),
            GrantOptions::ongoing(),
        )
        .await?;
    n.say("the user grants usage-stats for improve-product to telemetry");
    let sent = sharer
        .share("usage-stats", "improve-product", "telemetry", &stats)
        .await?
        .require_sent()?;
    n.say(format!(
        "sent {} sealed bytes; what the service can read: {}",
        sent.sealed_len, sent.data
    ));
    // The original values, as written and as digits; not a short fragment such as "555",
    // which a random keyed pseudonym contains now and then.
    let shown = sent.data.to_string();
    if ["ada@example.org", "555 012 3456", "5550123456"]
        .iter()
        .any(|original| shown.contains(original))
    {
        return Err(Error::internal("the anonymizer let personal data through"));
    }
    let audit = consent.audit().read(0, 100).await?;
    n.say(format!(
        "the audit log on the laptop holds {} entries (decisions, grant, shares)",
        audit.len()
    ));

    n.step("What the server could see");
    for line in server.what_it_sees(laptop.store.space()).await? {
        n.say(line);
    }

    n.step("Do both devices hold the same data?");
    let mut same = true;
    for (c, k) in [
        ("notes", "groceries"),
        ("notes", "trip"),
        ("tasks", "dentist"),
    ] {
        let a = laptop.store.get(c, k).await?;
        let b = phone.store.get(c, k).await?;
        n.say(format!("{c}/{k}: laptop {} | phone {}", json!(a), json!(b)));
        same &= a == b;
    }
    let laptop_info = laptop.store.info().await?;
    let phone_info = phone.store.info().await?;
    same &= laptop_info.pending == 0 && phone_info.pending == 0;
    laptop.store.close().await?;
    phone.store.close().await?;
    server.stop().await?;
    if !same {
        return Err(Error::new(
            ErrorKind::Conflict,
            "the devices did not converge",
        ));
    }
    n.say("yes: converged, nothing pending, nothing deleted came back");
    Ok(())
}
