//! Authentic envelopes (sealed with the space's key, as a broken or hostile member device could)
//! that carry a history the engine must not believe: a version vector that goes backwards for
//! its origin, a timestamp at the end of the clock's range. Rejected and reported like any bad
//! envelope; the rest of the page applies.

mod common;

use common::{Device, PASS, T0, World};
use crypto_orion::OrionCipher;
use serde_json::{Value, json};
use sync_core::keyring::Keyring;
use sync_core::{
    DeviceId, Hlc, OutgoingEnvelope, Padding, Passphrase, Payload, PushRequest, RecordKeys,
    SpaceRef, Store, VersionVector,
};
use transport_mock::Faults;

const FORGER: DeviceId = DeviceId([7; 16]);

/// Seals payloads of device `FORGER` with the space's real keys.
struct Forger {
    keys: RecordKeys,
    store: Store,
    world: World,
}

impl Forger {
    fn new(world: &World, store: &Store) -> Self {
        let ring = Keyring::decode(&store.key_backup().expect("backup")).expect("keyring");
        let root = ring
            .unlock(&OrionCipher, &Passphrase::from(PASS))
            .expect("unlock");
        let blind = ring.blind_key(&OrionCipher, &root).expect("blind key");
        let keys =
            RecordKeys::derive_with_blind_key(&OrionCipher, ring.space, ring.key_id, &root, blind)
                .expect("keys");
        Self {
            keys,
            store: store.clone(),
            world: world.clone(),
        }
    }

    /// Pushes one write of `notes/k` as `FORGER` at `seq` with `version` and `millis`.
    fn push(&self, seq: u64, version: &[(DeviceId, u64)], millis: u64, value: Value) {
        let record = self.store.record_id("notes", "k").expect("id");
        let payload = Payload {
            collection: "notes".into(),
            key: "k".into(),
            value: Some(serde_json::to_vec(&value).expect("json")),
            version: version.iter().copied().collect::<VersionVector>(),
            hlc: Hlc {
                millis,
                counter: 0,
                device: FORGER,
            },
            origin: FORGER,
            seq,
        };
        let envelope = self
            .keys
            .seal(&OrionCipher, &record, &payload, Padding::default())
            .expect("seal");
        let request = PushRequest {
            from: SpaceRef {
                space: self.store.space(),
                device: FORGER,
                fingerprint: self.store.key_fingerprint(),
            },
            envelopes: vec![OutgoingEnvelope {
                record,
                seq,
                supersedes: vec![],
                tombstone: false,
                envelope,
            }],
            settle: None,
        };
        self.world.relay.push(&request).expect("forged push");
    }
}

#[tokio::test]
async fn a_version_vector_that_goes_backwards_is_rejected_and_the_rest_applies() {
    let world = World::new();
    let a = Device::first(&world, Faults::NONE, 1).await;
    let forger = Forger::new(&world, &a.store);
    let other = DeviceId([8; 16]);
    forger.push(3, &[(FORGER, 3), (other, 1)], T0, json!("first"));
    let r = a.engine.sync().await.expect("sync");
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_eq!(
        a.store.get("notes", "k").await.expect("get"),
        Some(json!("first"))
    );

    // The relay keeps only a device's newest envelope of a record, so each is pulled in turn.
    let mut reasons = Vec::new();
    for (seq, version, millis, value) in [
        // A newer sequence whose vector forgot the origin's own earlier write of the record.
        (5, vec![(FORGER, 2), (other, 1)], T0 + 1, "own entry lower"),
        // A newer sequence whose vector is strictly before the origin's version held here.
        (6, vec![(FORGER, 3)], T0 + 2, "vector before"),
        // A timestamp at the end of the clock's range.
        (7, vec![(FORGER, 7), (other, 1)], u64::MAX, "end of time"),
        // An honest next write still applies.
        (8, vec![(FORGER, 8), (other, 1)], T0 + 3, "next"),
    ] {
        forger.push(seq, &version, millis, json!(value));
        let r = a
            .engine
            .sync()
            .await
            .expect("the round survives bad envelopes");
        reasons.extend(r.rejected.into_iter().map(|x| x.reason));
    }
    assert_eq!(reasons, ["backwards", "backwards", "clock"]);
    assert_eq!(
        a.store.get("notes", "k").await.expect("get"),
        Some(json!("next"))
    );
    // The device's own clock was not dragged to the end of time.
    a.store.put("notes", "mine", &json!(1)).await.expect("put");
    let mine = a
        .store
        .get_record("notes", "mine")
        .await
        .expect("get")
        .expect("record");
    assert!(mine.hlc.millis < Hlc::MAX_MILLIS, "{:?}", mine.hlc);
}
