//! Pseudonyms resist a dictionary: every phone number of one block of 1,000,000, in the formats
//! people write them, hashed without a key (SHA-256, BLAKE2b-256, BLAKE2b-512), matches none of
//! the anonymizer's pseudonyms of numbers in that block. As a control that the search works, the
//! same search with the keyed function and the right key finds each of them.
//!
//! The hashes are orion's, called directly (orion is optimized in debug builds by the
//! workspace's profile, so the full block runs in seconds under `cargo test`).

use std::sync::Arc;
use std::time::Instant;

use hearth::privacy::anonymize::{PSEUDONYM_PURPOSE_PREFIX, PSEUDONYM_ROOT_CONTEXT};
use hearth::privacy::{Action, Anonymizer, Mode, Rule, RuleSet};
use hearth::{CipherExt, KdfCost, MemoryStorage, OpenOptions, Store, crypto_orion::OrionCipher};
use orion::hazardous::hash::blake2::blake2b::Hasher;
use orion::hazardous::hash::sha2::sha256::Sha256;
use orion::hazardous::mac::blake2b as blake2b_mac;
use serde_json::json;

const PURPOSE: &str = "usage-stats";
/// The block: +1 555 0XX XXXX, the last six digits enumerated.
const BLOCK: u32 = 1_000_000;

/// One way of writing a number of the block: a template and where its six digits go.
struct Format {
    name: &'static str,
    template: &'static [u8],
    /// Positions of the six enumerated digits in the template.
    slots: [usize; 6],
}

const FORMATS: [Format; 4] = [
    Format {
        name: "E.164",
        template: b"+15550______",
        slots: [6, 7, 8, 9, 10, 11],
    },
    Format {
        name: "national (555) 0XX-XXXX",
        template: b"(555) 0__-____",
        slots: [7, 8, 10, 11, 12, 13],
    },
    Format {
        name: "555-0XX-XXXX",
        template: b"555-0__-____",
        slots: [5, 6, 8, 9, 10, 11],
    },
    Format {
        name: "digits only",
        template: b"5550______",
        slots: [4, 5, 6, 7, 8, 9],
    },
];

fn write(format: &Format, n: u32, buf: &mut [u8; 16]) -> usize {
    let len = format.template.len();
    buf[..len].copy_from_slice(format.template);
    let mut rest = n;
    for &slot in format.slots.iter().rev() {
        buf[slot] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    len
}

fn text(format: &Format, n: u32) -> String {
    let mut buf = [0u8; 16];
    let len = write(format, n, &mut buf);
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

/// Runs `hash` over every number of the block in every format; returns the (format, number)
/// pairs whose first 16 bytes equal one of `targets`.
fn search(targets: &[[u8; 16]], mut hash: impl FnMut(&[u8], &mut [u8; 16])) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    let mut buf = [0u8; 16];
    let mut out = [0u8; 16];
    for (f, format) in FORMATS.iter().enumerate() {
        for n in 0..BLOCK {
            let len = write(format, n, &mut buf);
            hash(&buf[..len], &mut out);
            if targets.contains(&out) {
                found.push((f, n));
            }
        }
    }
    found
}

#[tokio::test(flavor = "current_thread")]
async fn a_dictionary_of_a_whole_phone_block_does_not_reverse_pseudonyms() {
    let store = Store::open(
        Arc::new(MemoryStorage::new()),
        OrionCipher::shared(),
        OpenOptions::new("pw")
            .create(true)
            .kdf_cost(KdfCost::INSECURE_FOR_TESTS),
    )
    .await
    .expect("store");
    let rules = RuleSet::builder()
        .data_type(
            "call-log",
            Mode::AllowList,
            vec![Rule::new("calls[]", Action::Pseudonym)],
        )
        .build()
        .expect("rules");
    let anonymizer = Anonymizer::for_store(&store, rules).expect("anonymizer");

    // Numbers of the block, each written in one of the formats.
    let victims: [(usize, u32); 4] = [(0, 123_456), (1, 987_654), (2, 424_242), (3, 7)];
    let calls: Vec<String> = victims.iter().map(|&(f, n)| text(&FORMATS[f], n)).collect();
    assert_eq!(calls[0], "+15550123456");
    assert_eq!(calls[1], "(555) 098-7654");
    assert_eq!(calls[2], "555-042-4242");
    assert_eq!(calls[3], "5550000007");
    let out = anonymizer
        .anonymize("call-log", PURPOSE, &json!({ "calls": calls }))
        .expect("anonymize");
    let targets: Vec<[u8; 16]> = out["calls"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| {
            let bytes = hex::decode(p.as_str().expect("string")).expect("hex");
            bytes.try_into().expect("16 bytes")
        })
        .collect();
    assert_eq!(targets.len(), victims.len());

    // The attacker: unkeyed hashes of every number in every format.
    let started = Instant::now();
    let sha256 = search(&targets, |m, out| {
        let d = Sha256::digest(m).expect("SHA-256");
        out.copy_from_slice(&d.as_ref()[..16]);
    });
    let blake2b_256 = search(&targets, |m, out| {
        let d = Hasher::Blake2b256.digest(m).expect("BLAKE2b-256");
        out.copy_from_slice(&d.as_ref()[..16]);
    });
    let blake2b_512 = search(&targets, |m, out| {
        let d = Hasher::Blake2b512.digest(m).expect("BLAKE2b-512");
        out.copy_from_slice(&d.as_ref()[..16]);
    });
    let unkeyed = started.elapsed();
    assert!(
        sha256.is_empty(),
        "SHA-256 reversed {:?}",
        describe(&sha256)
    );
    assert!(
        blake2b_256.is_empty(),
        "BLAKE2b-256 reversed {:?}",
        describe(&blake2b_256)
    );
    assert!(
        blake2b_512.is_empty(),
        "BLAKE2b-512 reversed {:?}",
        describe(&blake2b_512)
    );

    // The control: the same search with the keyed function and the right key (derived the
    // documented way: subkey(store local key "hearth.pseudonym-root", "hearth.pseudonym/" ||
    // purpose)) finds every one of them, in the format it was written in.
    let root = store
        .derive_local_key(PSEUDONYM_ROOT_CONTEXT)
        .expect("root");
    let mut context = PSEUDONYM_PURPOSE_PREFIX.to_vec();
    context.extend_from_slice(PURPOSE.as_bytes());
    let key = OrionCipher
        .derive_subkey(&root, &context)
        .expect("purpose key");
    let mac_key = blake2b_mac::SecretKey::try_from(&key.expose()[..]).expect("key");
    let started = Instant::now();
    let mut keyed = search(&targets, |m, out| {
        let mut h = blake2b_mac::Blake2b::new(&mac_key, 32).expect("keyed BLAKE2b");
        h.update(m).expect("update");
        out.copy_from_slice(&h.finalize().expect("finalize").unprotected_as_ref()[..16]);
    });
    let keyed_time = started.elapsed();
    keyed.sort_unstable();
    let mut expected = victims.to_vec();
    expected.sort_unstable();
    assert_eq!(
        describe(&keyed),
        describe(&expected),
        "with the key, the dictionary finds exactly the pseudonymized numbers"
    );
    eprintln!(
        "dictionary of {} candidates ({} formats): unkeyed SHA-256 + BLAKE2b-256 + BLAKE2b-512 in {:.2?}, keyed BLAKE2b in {:.2?}",
        BLOCK as usize * FORMATS.len(),
        FORMATS.len(),
        unkeyed,
        keyed_time
    );
}

/// `found` as readable (format, number) pairs for failure messages.
fn describe(found: &[(usize, u32)]) -> Vec<String> {
    found
        .iter()
        .map(|&(f, n)| format!("{}: {}", FORMATS[f].name, text(&FORMATS[f], n)))
        .collect()
}
