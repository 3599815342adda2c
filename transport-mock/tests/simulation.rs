//! Deterministic simulation: 2 to 8 devices make random puts, deletes and conflicting edits
//! through a hostile network (dropped, lost, duplicated and replayed messages, delays,
//! partitions), crash and restart, run clocks skewed by days, and in every seed one device
//! stays offline for at least 30 days (writing, with a concurrent edit of the same record
//! elsewhere). After the network heals and everyone syncs, every replica must be identical and
//! no write may be lost except where a strategy decided it:
//!
//! - a key only one device wrote ends as that device left it;
//! - in the `lww` collection, every key ends as the write (put or delete) with the highest HLC
//!   left it (decidable: an HLC orders after everything its device had seen);
//! - `lww` and `priority` keys only ever hold a value somebody wrote.
//!
//! Sync metadata must not grow with the number of writes: after convergence every device holds
//! at most one row per key ever written (tombstones included), no tombstone the whole space
//! has acknowledged, at most one version-vector entry and one superseded server sequence per
//! device per record, and one seen-map entry per device; the relay holds at most one envelope
//! per device and record (heads included: a device's heads share one record). No device suspects the honest relay of
//! withholding anything (its sealed-head checks stay silent). The maxima over all seeds are
//! printed at the end.
//!
//! A seed replays exactly: the faults, the clocks and (through a seeded cipher) the device ids,
//! keys and nonces all come from it; `a_seed_replays_exactly` checks it. Replay one with
//! `HEARTH_SIM_SEED=1234`. Every 25th seed keeps its devices in real SQLite files, reopened from
//! disk after each crash; the others keep them in memory. Pulled pages are applied one by one
//! in a third of the seeds, in runs of about two pages in another third and in runs of the
//! whole pull in the rest (`SyncConfig::apply_bytes`), so a fault can cut a run short
//! anywhere. CI runs 200 seeds; the long run is
//! `HEARTH_SIM_SEEDS=10000 cargo test --release -p transport-mock --test simulation -- --nocapture`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use common::{DAY, Device, World};
use serde_json::{Value, json};
use sync_core::{Hlc, RelayConfig, SyncConfig};
use transport_mock::Faults;

const COLLECTIONS: [&str; 3] = ["notes", "docs", "tasks"];
const KEYS: u8 = 12;

type Key = (String, String);

#[derive(Default)]
struct Ledger {
    /// Every value ever written per key.
    written: BTreeMap<Key, BTreeSet<String>>,
    /// Devices that wrote or deleted each key.
    writers: BTreeMap<Key, BTreeSet<usize>>,
    /// The last value each device wrote per key (None for a delete).
    last: BTreeMap<(usize, String, String), Option<Value>>,
    /// Every write per key with its HLC (None for a delete).
    writes: BTreeMap<Key, Vec<(Hlc, Option<Value>)>>,
    deletes: u64,
    puts: u64,
}

/// Metadata of one seed (the largest over its devices).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Meta {
    devices: u64,
    writes: u64,
    records: u64,
    tombstones: u64,
    sync_bytes: u64,
    max_version_entries: u64,
    max_base: u64,
    seen_entries: u64,
    relay_envelopes: u64,
    relay_tombstones: u64,
}

impl Meta {
    fn max(self, o: Meta) -> Meta {
        Meta {
            devices: self.devices.max(o.devices),
            writes: self.writes.max(o.writes),
            records: self.records.max(o.records),
            tombstones: self.tombstones.max(o.tombstones),
            sync_bytes: self.sync_bytes.max(o.sync_bytes),
            max_version_entries: self.max_version_entries.max(o.max_version_entries),
            max_base: self.max_base.max(o.max_base),
            seen_entries: self.seen_entries.max(o.seen_entries),
            relay_envelopes: self.relay_envelopes.max(o.relay_envelopes),
            relay_tombstones: self.relay_tombstones.max(o.relay_tombstones),
        }
    }
}

struct Outcome {
    meta: Meta,
    /// Everything the seed did and ended with, to compare replays.
    trace: String,
}

fn value(rng: &mut fastrand::Rng, device: usize, step: usize) -> Value {
    json!({
        "by": device,
        "step": step,
        "n": rng.u32(..1000),
        "_priority": rng.u8(..3),
        "tags": (0..rng.usize(..3)).map(|i| format!("t{}", rng.u8(..5) as usize + i)).collect::<Vec<_>>(),
    })
}

async fn put(
    devices: &[Device],
    ledger: &mut Ledger,
    log: &mut Vec<String>,
    (d, collection, key): (usize, &str, &str),
    v: Value,
    step: usize,
) -> Result<(), String> {
    let store = &devices[d].store;
    store
        .put(collection, key, &v)
        .await
        .map_err(|e| format!("put: {e}"))?;
    let hlc = store
        .get_record(collection, key)
        .await
        .map_err(|e| format!("get: {e}"))?
        .ok_or("a put left no record")?
        .hlc;
    let id = (collection.to_owned(), key.to_owned());
    ledger
        .written
        .entry(id.clone())
        .or_default()
        .insert(v.to_string());
    ledger.writers.entry(id.clone()).or_default().insert(d);
    ledger
        .writes
        .entry(id)
        .or_default()
        .push((hlc, Some(v.clone())));
    ledger
        .last
        .insert((d, collection.to_owned(), key.to_owned()), Some(v));
    ledger.puts += 1;
    log.push(format!("{step}: d{d} put {collection}/{key}"));
    Ok(())
}

async fn run(seed: u64) -> Result<Outcome, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let world = World::with_config(RelayConfig {
        page_limit: 7,
        page_bytes: 4096,
        ..RelayConfig::default()
    });
    let n = rng.usize(2..=8);
    let config = SyncConfig {
        push_batch: 5,
        pull_page: 7,
        // Pages are at most 4096 bytes: one page a run, about two, or all of them.
        apply_bytes: [1, 6000, 8 << 20][(seed % 3) as usize],
        ..SyncConfig::default()
    };
    let on_disk = seed.is_multiple_of(25);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Every fault, often; delays kept short (they are real time, and in this sequential
    // simulation they change no order, only the wall time of the run).
    let faults = Faults {
        max_delay: std::time::Duration::from_micros(200),
        ..Faults::hostile()
    };
    let mut devices: Vec<Device> = Vec::new();
    let mut log = Vec::new();
    for i in 0..n {
        let backup = devices
            .first()
            .map(|d| d.store.key_backup().expect("backup"));
        let file = on_disk.then(|| dir.path().join(format!("device-{i}.db")));
        let d = Device::make_in(
            &world,
            faults,
            seed * 100 + i as u64,
            backup,
            config.clone(),
            file,
        )
        .await;
        // Clocks skewed by up to three days either way (wrapping add of a "negative" offset).
        let skew = rng.i64(-3 * DAY as i64..=3 * DAY as i64);
        d.skew.store(skew as u64, Ordering::SeqCst);
        d.engine
            .set_strategy("docs", "merge")
            .await
            .map_err(|e| e.to_string())?;
        d.engine
            .set_strategy("tasks", "priority")
            .await
            .map_err(|e| e.to_string())?;
        log.push(format!(
            "device {i}: {} skew {skew} on disk {on_disk}",
            d.store.device().to_hex()
        ));
        devices.push(d);
    }
    // Every seed: the last device goes offline for at least 30 days, writes while away, and
    // another device edits the same record meanwhile.
    let offline = n - 1;
    let steps = rng.usize(60..140);
    let offline_window = (steps / 4, steps / 2);
    let mut went_offline_at = 0;
    let mut ledger = Ledger::default();
    let mut resynced = false;

    for step in 0..steps {
        if step == offline_window.0 {
            devices[offline].transport.partition(true);
            went_offline_at = world.now.load(Ordering::SeqCst);
            let v = value(&mut rng, offline, step);
            put(
                &devices,
                &mut ledger,
                &mut log,
                (offline, "notes", "k0"),
                v,
                step,
            )
            .await?;
            let v = value(&mut rng, 0, step);
            put(&devices, &mut ledger, &mut log, (0, "notes", "k0"), v, step).await?;
            log.push(format!("{step}: d{offline} offline"));
        }
        if step > offline_window.0 && step < offline_window.1 {
            world.advance(30 * DAY / (offline_window.1 - offline_window.0) as u64);
        }
        if step == offline_window.1 {
            let away = world.now.load(Ordering::SeqCst) - went_offline_at;
            if away < 30 * DAY {
                world.advance(30 * DAY - away);
            }
            devices[offline].transport.partition(false);
            log.push(format!("{step}: d{offline} back online"));
        }
        let d = rng.usize(..n);
        let collection = COLLECTIONS[rng.usize(..COLLECTIONS.len())];
        let key = format!("k{}", rng.u8(..KEYS));
        let id = (collection.to_owned(), key.clone());
        match rng.u8(..100) {
            0..=44 => {
                let v = value(&mut rng, d, step);
                put(
                    &devices,
                    &mut ledger,
                    &mut log,
                    (d, collection, &key),
                    v,
                    step,
                )
                .await?;
            }
            45..=54 => {
                let existed = devices[d]
                    .store
                    .delete(collection, &key)
                    .await
                    .map_err(|e| format!("delete: {e}"))?;
                if existed {
                    let hlc = devices[d]
                        .store
                        .get_record(collection, &key)
                        .await
                        .map_err(|e| format!("get: {e}"))?
                        .ok_or("a delete left no tombstone")?
                        .hlc;
                    ledger
                        .writes
                        .entry(id.clone())
                        .or_default()
                        .push((hlc, None));
                    ledger.writers.entry(id).or_default().insert(d);
                    ledger
                        .last
                        .insert((d, collection.to_owned(), key.clone()), None);
                    ledger.deletes += 1;
                }
                log.push(format!(
                    "{step}: d{d} delete {collection}/{key} ({existed})"
                ));
            }
            55..=84 => {
                let r = devices[d].engine.sync().await;
                match &r {
                    Ok(r) if !r.withheld.is_empty() => {
                        return Err(format!(
                            "step {step}: device {d} suspects an honest relay of withholding: {:?}\nlog:\n{}",
                            r.withheld,
                            log.join("\n")
                        ));
                    }
                    Ok(r) => resynced |= r.resynced || r.discarded > 0,
                    Err(e) if e.is_temporary() => {}
                    Err(e) => {
                        return Err(format!(
                            "step {step}: device {d} sync failed permanently: {e}"
                        ));
                    }
                }
                log.push(format!(
                    "{step}: d{d} sync {}",
                    if r.is_ok() { "ok" } else { "failed" }
                ));
            }
            85..=91 => {
                devices[d].restart().await;
                log.push(format!("{step}: d{d} crash+restart"));
            }
            92..=96 => {
                let by = rng.u64(..2 * DAY);
                world.advance(by);
                log.push(format!("{step}: +{by} ms"));
            }
            _ => {
                let cut = rng.bool();
                if d != offline {
                    devices[d].transport.partition(cut);
                    log.push(format!("{step}: d{d} partition {cut}"));
                }
            }
        }
    }

    // Heal and converge.
    for d in &devices {
        d.transport.set_faults(Faults::NONE);
        d.transport.partition(false);
    }
    let mut compared = 0;
    for round in 0..4 {
        for (i, d) in devices.iter().enumerate() {
            let r = d
                .engine
                .sync()
                .await
                .map_err(|e| format!("final round {round}: device {i} failed: {e}"))?;
            resynced |= r.resynced || r.discarded > 0;
            compared += r.digests_compared;
            if !r.withheld.is_empty() || r.refetched {
                return Err(format!(
                    "final round {round}: device {i} suspects an honest relay of withholding: {:?}\nlog:\n{}",
                    r.withheld,
                    log.join("\n")
                ));
            }
            log.push(format!(
                "final {round}: d{i} pushed {} pulled {} applied {} resolved {} resynced {} discarded {} rejected {:?}",
                r.pushed, r.pulled, r.applied, r.conflicts_resolved, r.resynced, r.discarded, r.rejected
            ));
        }
    }
    let fail = |what: String, log: &[String]| Err(format!("{what}\nlog:\n{}", log.join("\n")));
    if compared == 0 {
        return fail(
            "no device compared its state with another's head in the final rounds".into(),
            &log,
        );
    }

    let reference = devices[0].snapshot().await;
    for (i, d) in devices.iter().enumerate().skip(1) {
        let snap = d.snapshot().await;
        if snap != reference {
            return fail(
                format!("device {i} diverged from device 0:\n  0: {reference:?}\n  {i}: {snap:?}"),
                &log,
            );
        }
    }
    for (i, d) in devices.iter().enumerate() {
        if d.store.info().await.map_err(|e| e.to_string())?.pending != 0 {
            return fail("writes still pending after the final rounds".into(), &log);
        }
        // The state digest kept commit by commit equals one computed from the records.
        if let Err(e) = d.store.check().await {
            return fail(format!("device {i}: {e}"), &log);
        }
    }
    let finals: BTreeMap<Key, Value> = reference
        .iter()
        .map(|(c, k, v)| ((c.clone(), k.clone()), v.clone()))
        .collect();
    // No invented values: lww and priority pick one of the written values.
    for ((c, k), v) in &finals {
        if c != "docs"
            && !ledger
                .written
                .get(&(c.clone(), k.clone()))
                .is_some_and(|s| s.contains(&v.to_string()))
        {
            return fail(format!("{c}/{k} holds a value nobody wrote: {v}"), &log);
        }
    }
    // No lost write: a key only one device ever touched ends as that device left it.
    for ((c, k), writers) in &ledger.writers {
        if writers.len() == 1 {
            let d = *writers.iter().next().unwrap_or(&0);
            let expected = ledger
                .last
                .get(&(d, c.clone(), k.clone()))
                .cloned()
                .flatten();
            if finals.get(&(c.clone(), k.clone())) != expected.as_ref() {
                return fail(
                    format!(
                        "{c}/{k}: device {d}'s last write was lost (expected {expected:?}, got {:?})",
                        finals.get(&(c.clone(), k.clone()))
                    ),
                    &log,
                );
            }
        }
    }
    // No lost write under lww, whatever the number of writers: the write with the highest HLC
    // decides. (Unless a re-sync discarded records deleted on the server, which this run's
    // 30 days, under the 90-day horizon, should never cause.)
    if resynced {
        return fail(
            "a device had to re-sync fully within the horizon".into(),
            &log,
        );
    }
    for ((c, k), writes) in &ledger.writes {
        if c != "notes" {
            continue;
        }
        let Some((hlc, expected)) = writes.iter().max_by_key(|(h, _)| *h) else {
            continue;
        };
        if finals.get(&(c.clone(), k.clone())) != expected.as_ref() {
            return fail(
                format!(
                    "{c}/{k}: the last write ({hlc:?}) was lost: expected {expected:?}, got {:?}",
                    finals.get(&(c.clone(), k.clone()))
                ),
                &log,
            );
        }
    }

    // Metadata bounded by keys and devices, not by writes.
    let keys_written = ledger.writes.len() as u64;
    let local_only = 2; // the two strategy choices
    let relay = world.relay.stats().map_err(|e| e.to_string())?;
    let mut meta = Meta {
        devices: n as u64,
        writes: ledger.puts + ledger.deletes,
        relay_envelopes: relay.envelopes as u64,
        relay_tombstones: relay.tombstones as u64,
        ..Meta::default()
    };
    for (i, d) in devices.iter().enumerate() {
        let m = d.engine.metadata_size().await.map_err(|e| e.to_string())?;
        let bounds = [
            ("rows", m.records, keys_written + local_only),
            ("tombstones", m.tombstones, 0),
            (
                "version entries per record",
                m.max_version_entries,
                n as u64,
            ),
            ("superseded sequences per record", m.max_base, n as u64),
            ("seen-map entries", m.seen_entries, n as u64 - 1),
            ("siblings", m.siblings, 0),
        ];
        for (what, got, bound) in bounds {
            if got > bound {
                return fail(
                    format!("device {i}: {what} {got} exceed the bound {bound}: {m:?}"),
                    &log,
                );
            }
        }
        meta = meta.max(Meta {
            records: m.records,
            tombstones: m.tombstones,
            sync_bytes: m.sync_bytes,
            max_version_entries: m.max_version_entries,
            max_base: m.max_base,
            seen_entries: m.seen_entries,
            ..meta
        });
    }
    // At most one envelope per device and record (a device's heads share one record): the
    // relay drops only what a push names, so this holds only if every device named every
    // envelope of its own it replaced, lost answers and crashes included.
    let mut per_device_record: BTreeMap<(sync_core::DeviceId, sync_core::RecordId), u64> =
        BTreeMap::new();
    for e in world
        .relay
        .entries(devices[0].store.space())
        .map_err(|e| e.to_string())?
    {
        *per_device_record.entry((e.device, e.record)).or_default() += 1;
    }
    if let Some(((device, _), count)) = per_device_record.iter().find(|(_, c)| **c > 1) {
        return fail(
            format!("the relay holds {count} envelopes of one record from device {device:?}"),
            &log,
        );
    }
    // Every key's concurrent versions, and each device's newest head.
    if meta.relay_envelopes > (keys_written + 1) * n as u64 {
        return fail(
            format!(
                "the relay holds {} envelopes for {keys_written} keys and {n} devices",
                meta.relay_envelopes
            ),
            &log,
        );
    }
    log.push(format!("final: {reference:?}"));
    Ok(Outcome {
        meta,
        trace: log.join("\n"),
    })
}

fn seeds() -> Vec<u64> {
    match (
        std::env::var("HEARTH_SIM_SEED"),
        std::env::var("HEARTH_SIM_SEEDS"),
    ) {
        (Ok(one), _) => vec![one.parse().expect("HEARTH_SIM_SEED is a number")],
        (_, Ok(count)) => (0..count.parse().expect("HEARTH_SIM_SEEDS is a number")).collect(),
        _ => (0..200).collect(),
    }
}

#[tokio::test]
async fn replicas_converge_under_faults() {
    let seeds = seeds();
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    let mut max = Meta::default();
    for (i, seed) in seeds.iter().enumerate() {
        if i > 0 && i % 1000 == 0 {
            eprintln!(
                "{i} seeds, {} failed, {:.1} s; max so far: {max:?}",
                failures.len(),
                started.elapsed().as_secs_f64()
            );
        }
        match run(*seed).await {
            Ok(outcome) => max = max.max(outcome.meta),
            Err(e) => {
                eprintln!("SEED {seed} FAILED (replay with HEARTH_SIM_SEED={seed}): {e}");
                failures.push(*seed);
                if failures.len() >= 3 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "{} seeds, {} failed, {:.1} s; max over seeds: {max:?}",
        seeds.len(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "failing seeds (replay with HEARTH_SIM_SEED=N): {failures:?}"
    );
}

#[tokio::test]
async fn a_seed_replays_exactly() {
    // One seed in memory, one on disk.
    for seed in [7, 25] {
        let first = run(seed).await.expect("run");
        let again = run(seed).await.expect("replay");
        assert!(
            first.trace == again.trace,
            "seed {seed} did not replay:\n{}\n----\n{}",
            first.trace,
            again.trace
        );
        assert_eq!(first.meta, again.meta);
    }
}
