//! Micro-benchmarks (criterion): seal/open per cipher backend (orion and libsodium), the record
//! envelope's seal/open per backend, wire-format encode/decode of a push request and a pull page
//! (100 envelopes of ~1.2 KiB), version-vector compare, the merge strategy.
//!
//! `cargo bench -p hearth --bench micro` (both cipher backends are dev-dependencies, so both
//! always run).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hearth::{
    Cipher, Conflict, ConflictStrategy, DeviceId, Hlc, Merge, OutgoingEnvelope, Padding, Payload,
    PullPage, PushRequest, RecordId, RecordKeys, RemoteEnvelope, SecretKey, SpaceId, SpaceRef,
    Version, VersionVector, wire,
};
use serde_json::json;

fn ciphers() -> Vec<Box<dyn Cipher>> {
    vec![
        Box::new(crypto_orion::OrionCipher),
        Box::new(crypto_sodium::SodiumCipher),
    ]
}

fn aead(c: &mut Criterion) {
    let key = SecretKey::from_bytes([7; 32]);
    let nonce = [9u8; 24];
    let plaintext = vec![0x5a; 1024];
    for cipher in ciphers() {
        let sealed = cipher
            .aead_seal(&key, &nonce, b"aad", &plaintext)
            .expect("seal");
        c.bench_function(&format!("{} seal 1 KiB", cipher.name()), |b| {
            b.iter(|| cipher.aead_seal(&key, &nonce, b"aad", black_box(&plaintext)))
        });
        c.bench_function(&format!("{} open 1 KiB", cipher.name()), |b| {
            b.iter(|| cipher.aead_open(&key, &nonce, b"aad", black_box(&sealed)))
        });
        c.bench_function(&format!("{} keyed BLAKE2b 64 B", cipher.name()), |b| {
            b.iter(|| cipher.keyed_hash(&key, &[black_box(&plaintext[..64])]))
        });
    }
}

fn envelope(c: &mut Criterion) {
    for cipher in ciphers() {
        let cipher = cipher.as_ref();
        let keys = RecordKeys::derive(cipher, SpaceId([1; 16]), 1, &SecretKey::from_bytes([3; 32]))
            .expect("keys");
        let id = keys.record_id(cipher, "notes", "n1").expect("id");
        let dev = DeviceId([2; 16]);
        let payload = Payload {
            collection: "notes".into(),
            key: "n1".into(),
            value: Some(vec![b'x'; 1000]),
            version: (0..4u8).map(|d| (DeviceId([d; 16]), 5)).collect(),
            hlc: Hlc {
                millis: 1,
                counter: 0,
                device: dev,
            },
            origin: dev,
            seq: 5,
        };
        let sealed = keys
            .seal(cipher, &id, &payload, Padding::Padme)
            .expect("seal");
        c.bench_function(&format!("envelope seal ~1 KiB ({})", cipher.name()), |b| {
            b.iter(|| keys.seal(cipher, &id, black_box(&payload), Padding::Padme))
        });
        c.bench_function(&format!("envelope open ~1 KiB ({})", cipher.name()), |b| {
            b.iter(|| keys.open(cipher, &id, black_box(&sealed)))
        });
    }
}

fn wire_format(c: &mut Criterion) {
    let from = SpaceRef {
        space: SpaceId([1; 16]),
        device: DeviceId([2; 16]),
        fingerprint: [3; 32],
    };
    let push = PushRequest {
        from,
        envelopes: (0..100u64)
            .map(|i| OutgoingEnvelope {
                record: RecordId([i as u8; 32]),
                seq: i + 1,
                supersedes: vec![i],
                tombstone: false,
                envelope: vec![0xa5; 1261],
            })
            .collect(),
        settle: None,
    };
    let page = PullPage {
        envelopes: (0..100u64)
            .map(|i| RemoteEnvelope {
                server_seq: i + 1,
                record: RecordId([i as u8; 32]),
                device: DeviceId([4; 16]),
                seq: i + 1,
                tombstone: false,
                envelope: vec![0x5a; 1261],
            })
            .collect(),
        next_cursor: 100,
        more: true,
        gc_floor: 0,
        log_id: Default::default(),
    };
    let push_bytes = wire::encode_push_request(&push).expect("encode");
    let page_bytes = wire::encode_pull_page(&page).expect("encode");
    c.bench_function("wire encode push request, 100 envelopes of 1261 B", |b| {
        b.iter(|| wire::encode_push_request(black_box(&push)))
    });
    c.bench_function("wire decode push request, 100 envelopes of 1261 B", |b| {
        b.iter(|| wire::decode_push_request(black_box(&push_bytes)))
    });
    c.bench_function("wire encode pull page, 100 envelopes of 1261 B", |b| {
        b.iter(|| wire::encode_pull_page(black_box(&page)))
    });
    c.bench_function("wire decode pull page, 100 envelopes of 1261 B", |b| {
        b.iter(|| wire::decode_pull_page(black_box(&page_bytes)))
    });
}

fn version_vectors(c: &mut Criterion) {
    let a: VersionVector = (0..8u8)
        .map(|d| (DeviceId([d; 16]), u64::from(d) + 10))
        .collect();
    let mut b = a.clone();
    b.set(DeviceId([3; 16]), 99);
    b.set(DeviceId([5; 16]), 1);
    c.bench_function("version vector compare, 8 devices", |bench| {
        bench.iter(|| black_box(&a).compare(black_box(&b)))
    });
    c.bench_function("version vector merge, 8 devices", |bench| {
        bench.iter(|| {
            let mut m = black_box(&a).clone();
            m.merge(black_box(&b));
            m
        })
    });
}

fn merge(c: &mut Criterion) {
    let doc = |title: &str, tags: &[&str], n: i64| {
        json!({"title": title, "body": "lorem ipsum ".repeat(70), "tags": tags, "count": n,
               "meta": {"lat": 1.5, "lon": 2.5, "ok": true}})
    };
    let v = |value, millis, d| Version {
        value: Some(value),
        version: VersionVector::new(),
        hlc: Hlc {
            millis,
            counter: 0,
            device: DeviceId([d; 16]),
        },
    };
    let anc = v(doc("t", &["a", "b"], 1), 1, 9);
    let local = v(doc("T", &["a", "b", "c"], 1), 5, 1);
    let remote = v(doc("t", &["b", "d"], 2), 6, 2);
    let conflict = Conflict {
        collection: "c",
        key: "k",
        local: &local,
        remote: &remote,
        ancestor: Some(&anc),
    };
    c.bench_function("merge strategy, ~1 KiB documents, three-way", |b| {
        b.iter(|| Merge.resolve(black_box(&conflict)))
    });
}

criterion_group!(benches, aead, envelope, wire_format, version_vectors, merge);
criterion_main!(benches);
