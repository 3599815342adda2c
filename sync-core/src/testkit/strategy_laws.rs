use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::model::{Causality, DeviceId, Hlc, VersionVector};
use crate::strategy::{Conflict, ConflictStrategy, Priority, Version, apply_resolution};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-5i64..5).prop_map(Value::from),
        "[a-d]{0,3}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-e_]{1,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A record value: any JSON, or (half the time) an object carrying the `priority` strategy's
/// `_priority` field, mostly small integers so equal priorities (the tie-break path) occur too.
fn record_value() -> impl Strategy<Value = Value> {
    let priority = prop_oneof![
        6 => (0i64..3).prop_map(Value::from),
        1 => Just(Value::from(1.5)),
        1 => Just(Value::from("high")),
    ];
    prop_oneof![
        json_value(),
        (
            prop::collection::btree_map("[a-e]{1,2}", json_value(), 0..3),
            priority
        )
            .prop_map(|(m, p)| {
                let mut m: serde_json::Map<String, Value> = m.into_iter().collect();
                m.insert(Priority::DEFAULT_FIELD.to_owned(), p);
                Value::Object(m)
            }),
    ]
}

const LOCAL: u8 = 1;
const REMOTE: u8 = 2;
const OTHERS: [u8; 3] = [10, 11, 12];

fn device(d: u8) -> DeviceId {
    DeviceId([d; 16])
}

/// A conflict as devices meet it: a common history (the ancestor's vector, over some of the
/// devices), then each side's own writes, and on the local side possibly writes of a third
/// device the remote side has not seen. Concurrent by construction.
fn conflict() -> impl Strategy<Value = (Version, Version, Option<Version>)> {
    let base = prop::collection::btree_map(
        prop::sample::select(vec![LOCAL, REMOTE, OTHERS[0], OTHERS[1], OTHERS[2]]),
        1u64..4,
        0..4,
    );
    let side = || {
        (
            prop::option::weighted(0.9, record_value()),
            0u64..50,
            0u32..3,
            1u64..4,
        )
    };
    (
        base,
        side(),
        side(),
        prop::option::of((prop::sample::select(OTHERS.to_vec()), 1u64..3)),
        prop::option::of(json_value()),
    )
        .prop_map(|(base, l, r, third, anc)| {
            let base: VersionVector = base.into_iter().map(|(d, c)| (device(d), c)).collect();
            let make = |(value, millis, counter, own): (Option<Value>, u64, u32, u64),
                        d: u8,
                        extra: Option<(u8, u64)>| {
                let mut version = base.clone();
                version.set(device(d), base.get(&device(d)) + own);
                if let Some((o, n)) = extra {
                    version.set(device(o), base.get(&device(o)) + n);
                }
                Version {
                    value,
                    version,
                    hlc: Hlc {
                        millis,
                        counter,
                        device: device(d),
                    },
                }
            };
            let local = make(l, LOCAL, third);
            let remote = make(r, REMOTE, None);
            let ancestor = anc.map(|value| Version {
                value: Some(value),
                version: base.clone(),
                hlc: Hlc {
                    millis: 0,
                    counter: 0,
                    device: device(OTHERS[0]),
                },
            });
            (local, remote, ancestor)
        })
}

/// Checks the laws every automatic strategy must keep, on `cases` random conflicts (values
/// include the `priority` strategy's `_priority` field; vectors include histories of several
/// devices):
///
/// - **deterministic**: the same conflict resolves the same way every time;
/// - **symmetric**: resolving with local and remote swapped gives the same decision with the
///   sides swapped (so two devices resolving the same conflict end identical);
/// - **settles**: the resolution is applied as the engine applies it
///   ([`apply_resolution`]); the two devices that each resolve the conflict from their side end
///   with the same version (value, vector and HLC), whose vector dominates both sides and whose
///   HLC is at least both sides'. Meeting either side again is then not a conflict (the
///   resolved version is causally after it: a no-op where it is held, a replacement where the
///   old side is), and meeting the other device's resolution is a no-op (equal).
///
/// `user-choice` (which defers to the user) keeps only the first two; its convergence comes
/// from the fallback strategy, which must pass these laws itself.
pub fn strategy_laws(strategy: &dyn ConflictStrategy, cases: u32) {
    let name = strategy.name();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&conflict(), |(a, b, ancestor)| {
        prop_assert_eq!(a.version.compare(&b.version), Causality::Concurrent);
        let ab = Conflict {
            collection: "c",
            key: "k",
            local: &a,
            remote: &b,
            ancestor: ancestor.as_ref(),
        };
        let ba = Conflict {
            local: &b,
            remote: &a,
            ..ab.clone()
        };
        let first = strategy
            .resolve(&ab)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = strategy
            .resolve(&ab)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(first == again, "{} is not deterministic", name);
        let swapped = strategy
            .resolve(&ba)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(
            first.clone().swapped() == swapped,
            "{} is not symmetric: {:?} vs {:?}",
            name,
            first,
            swapped
        );
        let on_a = apply_resolution(&ab, first);
        let on_b = apply_resolution(&ba, swapped);
        let (Some(on_a), Some(on_b)) = (on_a, on_b) else {
            prop_assert!(
                on_a_is_none_iff_b(&ab, &ba, strategy)?,
                "{} defers on one side only",
                name
            );
            return Ok(());
        };
        prop_assert!(
            on_a == on_b && on_a.value == on_b.value,
            "{} does not settle: the devices resolve to different versions: {:?} vs {:?}",
            name,
            on_a,
            on_b
        );
        for side in [&a, &b] {
            prop_assert_eq!(
                on_a.version.compare(&side.version),
                Causality::After,
                "{}: the resolved version does not dominate a side, so it would conflict again",
                name
            );
            prop_assert!(
                on_a.hlc >= side.hlc,
                "{}: the resolved version orders before a side",
                name
            );
        }
        prop_assert_eq!(on_a.version.compare(&on_b.version), Causality::Equal);
        Ok(())
    });
    if let Err(e) = result {
        panic!("strategy '{name}' breaks a law: {e}");
    }
}

fn on_a_is_none_iff_b(
    ab: &Conflict<'_>,
    ba: &Conflict<'_>,
    strategy: &dyn ConflictStrategy,
) -> Result<bool, TestCaseError> {
    let fail = |e: crate::Error| TestCaseError::fail(e.to_string());
    let a = apply_resolution(ab, strategy.resolve(ab).map_err(fail)?);
    let b = apply_resolution(ba, strategy.resolve(ba).map_err(fail)?);
    Ok(a.is_none() && b.is_none())
}

/// Checks [`strategy_laws`] for every strategy in the registry (built-in, linked plugins such
/// as an application's own, and those registered at run time), and returns the names checked.
/// A plugin crate calls this from its tests so its strategy is covered with the rest.
pub fn registered_strategy_laws(cases: u32) -> Vec<&'static str> {
    let mut checked = BTreeMap::new();
    for reg in crate::registry::strategies() {
        strategy_laws((reg.make)().as_ref(), cases);
        checked.insert(reg.name, ());
    }
    checked.into_keys().collect()
}
