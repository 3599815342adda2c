use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::Value;

use crate::model::{Causality, DeviceId, Hlc, VersionVector};
use crate::strategy::{Conflict, ConflictStrategy, Resolution, Version};

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

fn version(device: u8) -> impl Strategy<Value = Version> {
    (
        prop::option::weighted(0.9, json_value()),
        0u64..50,
        0u32..3,
        1u64..5,
    )
        .prop_map(move |(value, millis, counter, own)| Version {
            value,
            // Concurrent by construction: each side has seen its own write only.
            version: [(DeviceId([device; 16]), own), (DeviceId([9; 16]), 1)]
                .into_iter()
                .collect::<VersionVector>(),
            hlc: Hlc {
                millis,
                counter,
                device: DeviceId([device; 16]),
            },
        })
}

fn same(a: &Resolution, b: &Resolution) -> bool {
    a == b
}

/// Checks the laws every automatic strategy must keep, on `cases` random conflicts:
///
/// - **deterministic**: the same conflict resolves the same way every time;
/// - **symmetric**: resolving with local and remote swapped gives the same decision with the
///   sides swapped (so two devices resolving the same conflict end identical);
/// - **settles**: the resolved version (the pointwise maximum of both vectors) dominates both
///   sides, so it never conflicts with either again.
///
/// `user-choice` (which defers to the user) passes trivially; its convergence comes from the
/// fallback strategy, which must pass these laws itself.
pub fn strategy_laws(strategy: &dyn ConflictStrategy, cases: u32) {
    let name = strategy.name();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &(version(1), version(2), prop::option::of(json_value())),
        |(a, b, anc)| {
            let ancestor = anc.map(|value| Version {
                value: Some(value),
                version: [(DeviceId([9; 16]), 1)].into_iter().collect(),
                hlc: Hlc {
                    millis: 0,
                    counter: 0,
                    device: DeviceId([9; 16]),
                },
            });
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
            prop_assert!(same(&first, &again), "{} is not deterministic", name);
            let swapped = strategy
                .resolve(&ba)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert!(
                same(&first.clone().swapped(), &swapped),
                "{} is not symmetric: {:?} vs {:?}",
                name,
                first,
                swapped
            );
            let mut settled = a.version.clone();
            settled.merge(&b.version);
            prop_assert_eq!(settled.compare(&a.version), Causality::After);
            prop_assert_eq!(settled.compare(&b.version), Causality::After);
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("strategy '{name}' breaks a law: {e}");
    }
}
