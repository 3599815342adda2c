//! The `ConflictStrategy` trait and the built-in strategies.
//!
//! Automatic strategies must be deterministic and symmetric: devices resolving the same
//! conflict independently must end identical. `resolve(a, b)` must equal `resolve(b, a)` with
//! the sides swapped.

use std::fmt;

use crate::error::Result;
use crate::model::{Hlc, VersionVector};

/// One side of a conflict, decrypted.
#[derive(Clone, PartialEq)]
pub struct Version {
    /// The value; `None` for a tombstone.
    pub value: Option<serde_json::Value>,
    /// Its version vector.
    pub version: VersionVector,
    /// The HLC of the write.
    pub hlc: Hlc,
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Version")
            .field("deleted", &self.value.is_none())
            .field("version", &self.version)
            .field("hlc", &self.hlc)
            .finish_non_exhaustive()
    }
}

/// Two concurrent versions of one record, and their common ancestor where known.
#[derive(Clone, Debug)]
pub struct Conflict<'a> {
    /// The collection.
    pub collection: &'a str,
    /// The record key.
    pub key: &'a str,
    /// This device's version.
    pub local: &'a Version,
    /// The version that arrived.
    pub remote: &'a Version,
    /// The last version both descend from, when the store still has it.
    pub ancestor: Option<&'a Version>,
}

/// What a strategy decided.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Resolution {
    /// Keep the local value.
    TakeLocal,
    /// Keep the remote value.
    TakeRemote,
    /// A new value (or `None` for a delete) built from both.
    Merged(Option<serde_json::Value>),
    /// Keep both as siblings until the application resolves them.
    DeferToUser,
}

impl Resolution {
    /// The same decision seen from the other side (local and remote swapped).
    pub fn swapped(self) -> Self {
        match self {
            Resolution::TakeLocal => Resolution::TakeRemote,
            Resolution::TakeRemote => Resolution::TakeLocal,
            other => other,
        }
    }
}

/// The version an automatic resolution becomes, exactly as the engine stores and pushes it:
/// the chosen (or merged) value, the pointwise maximum of both version vectors and the later of
/// both HLCs. No dot of the resolving device is added, so every device that resolves the same
/// conflict produces the same version, and it dominates both sides: it never conflicts with
/// either again. `None` for [`Resolution::DeferToUser`] (both versions are kept as siblings).
pub fn apply_resolution(conflict: &Conflict<'_>, resolution: Resolution) -> Option<Version> {
    let value = match resolution {
        Resolution::TakeLocal => conflict.local.value.clone(),
        Resolution::TakeRemote => conflict.remote.value.clone(),
        Resolution::Merged(v) => v,
        Resolution::DeferToUser => return None,
    };
    let mut version = conflict.local.version.clone();
    version.merge(&conflict.remote.version);
    Some(Version {
        value,
        version,
        hlc: conflict.local.hlc.max(conflict.remote.hlc),
    })
}

/// Decides concurrent versions of a record. Registered by name and chosen per collection.
pub trait ConflictStrategy: Send + Sync + fmt::Debug + 'static {
    /// The registry name (`"lww"`, `"merge"`, …).
    fn name(&self) -> &'static str;

    /// Resolves a conflict. Must be deterministic and symmetric.
    fn resolve(&self, conflict: &Conflict<'_>) -> Result<Resolution>;
}

fn _object_safe(_: &dyn ConflictStrategy) {}

/// Last writer wins: the version with the higher HLC wins; the device id inside the HLC breaks
/// ties, so the order is total and every device picks the same winner.
#[derive(Debug, Default, Clone, Copy)]
pub struct LastWriterWins;

impl LastWriterWins {
    /// Registry name.
    pub const NAME: &'static str = "lww";
}

impl ConflictStrategy for LastWriterWins {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, conflict: &Conflict<'_>) -> Result<Resolution> {
        Ok(if conflict.remote.hlc > conflict.local.hlc {
            Resolution::TakeRemote
        } else {
            Resolution::TakeLocal
        })
    }
}

crate::register_strategy!(LastWriterWins::NAME, || std::sync::Arc::new(LastWriterWins));

/// Priority: the version whose value carries the higher number in `field` wins (a tombstone or
/// a missing field counts as 0); equal priorities fall back to last-writer-wins. For apps where
/// some writes (a supervisor's, a server-side job's) must win.
#[derive(Debug, Clone)]
pub struct Priority {
    field: String,
}

impl Priority {
    /// Registry name.
    pub const NAME: &'static str = "priority";
    /// The default field holding a write's priority.
    pub const DEFAULT_FIELD: &'static str = "_priority";

    /// A priority strategy reading `field`.
    pub fn new(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
        }
    }

    fn priority(&self, v: &Version) -> f64 {
        v.value
            .as_ref()
            .and_then(|v| v.get(&self.field))
            .and_then(serde_json::Value::as_f64)
            .filter(|p| p.is_finite())
            .unwrap_or(0.0)
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::new(Self::DEFAULT_FIELD)
    }
}

impl ConflictStrategy for Priority {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, c: &Conflict<'_>) -> Result<Resolution> {
        let (l, r) = (self.priority(c.local), self.priority(c.remote));
        if l > r {
            Ok(Resolution::TakeLocal)
        } else if r > l {
            Ok(Resolution::TakeRemote)
        } else {
            LastWriterWins.resolve(c)
        }
    }
}

/// Three-way JSON merge, field by field, against the common ancestor where known.
///
/// - A field changed on one side only takes that side's value; unchanged fields stay.
/// - Objects merge recursively; fields added on either side are kept.
/// - Arrays keep every element and the order each side wrote: the elements of the side with the
///   later HLC, in its order, then the other side's new elements in theirs; elements one side
///   removed from the ancestor are removed.
/// - True conflicts (both sides changed a scalar differently, or changed its type) go to the
///   later HLC, so every device picks the same value.
/// - An edit wins over a concurrent delete.
#[derive(Debug, Default, Clone, Copy)]
pub struct Merge;

impl Merge {
    /// Registry name.
    pub const NAME: &'static str = "merge";
}

fn merge_values(
    ancestor: Option<&serde_json::Value>,
    newer: &serde_json::Value,
    older: &serde_json::Value,
) -> serde_json::Value {
    use serde_json::Value;
    if newer == older {
        return newer.clone();
    }
    if let Some(o) = ancestor {
        if newer == o {
            return older.clone();
        }
        if older == o {
            return newer.clone();
        }
    }
    match (newer, older) {
        (Value::Object(n), Value::Object(o2)) => {
            let anc = ancestor.and_then(Value::as_object);
            let mut keys: Vec<&String> = n.keys().chain(o2.keys()).collect();
            keys.sort();
            keys.dedup();
            let mut out = serde_json::Map::new();
            for k in keys {
                let a = anc.and_then(|m| m.get(k));
                match (n.get(k), o2.get(k)) {
                    (Some(x), Some(y)) => {
                        out.insert(k.clone(), merge_values(a, x, y));
                    }
                    (Some(x), None) | (None, Some(x)) => {
                        // Present on one side only: added there, or removed on the other side.
                        // A removal of an unchanged field wins; an edit wins over a removal.
                        if a != Some(x) {
                            out.insert(k.clone(), x.clone());
                        }
                    }
                    (None, None) => {}
                }
            }
            Value::Object(out)
        }
        (Value::Array(n), Value::Array(o2)) => {
            let anc: &[Value] = ancestor
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            let removed = |x: &Value| anc.contains(x) && (!n.contains(x) || !o2.contains(x));
            let mut out: Vec<Value> = Vec::with_capacity(n.len() + o2.len());
            for x in n {
                if !removed(x) {
                    out.push(x.clone());
                }
            }
            // The older side's elements it added (beyond what the newer side already has,
            // counting duplicates), in its order.
            let mut budget: Vec<&Value> = n.iter().collect();
            for y in o2 {
                if let Some(pos) = budget.iter().position(|b| *b == y) {
                    budget.remove(pos);
                } else if !removed(y) {
                    out.push(y.clone());
                }
            }
            Value::Array(out)
        }
        _ => newer.clone(),
    }
}

impl ConflictStrategy for Merge {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, c: &Conflict<'_>) -> Result<Resolution> {
        let ancestor = c.ancestor.and_then(|a| a.value.as_ref());
        let local_newer = c.local.hlc > c.remote.hlc;
        let (newer, older) = if local_newer {
            (c.local, c.remote)
        } else {
            (c.remote, c.local)
        };
        Ok(match (&newer.value, &older.value) {
            (Some(n), Some(o)) => Resolution::Merged(Some(merge_values(ancestor, n, o))),
            // An edit wins over a concurrent delete.
            (Some(v), None) | (None, Some(v)) => Resolution::Merged(Some(v.clone())),
            (None, None) => Resolution::Merged(None),
        })
    }
}

/// User choice: both versions are kept (the remote one as a sibling) and the record reports a
/// conflict until the application resolves it. The engine applies a fallback strategy after a
/// deadline (24 h by default).
#[derive(Debug, Default, Clone, Copy)]
pub struct UserChoice;

impl UserChoice {
    /// Registry name.
    pub const NAME: &'static str = "user-choice";
}

impl ConflictStrategy for UserChoice {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, _c: &Conflict<'_>) -> Result<Resolution> {
        Ok(Resolution::DeferToUser)
    }
}

crate::register_strategy!(Priority::NAME, || std::sync::Arc::new(Priority::default()));
crate::register_strategy!(Merge::NAME, || std::sync::Arc::new(Merge));
crate::register_strategy!(UserChoice::NAME, || std::sync::Arc::new(UserChoice));

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DeviceId;
    use serde_json::json;

    fn v(value: serde_json::Value, millis: u64, dev: u8) -> Version {
        Version {
            value: Some(value),
            version: VersionVector::new(),
            hlc: Hlc {
                millis,
                counter: 0,
                device: DeviceId([dev; 16]),
            },
        }
    }

    fn merged(r: Resolution) -> serde_json::Value {
        match r {
            Resolution::Merged(Some(v)) => v,
            other => panic!("expected a merged value, got {other:?}"),
        }
    }

    #[test]
    fn merge_takes_each_sides_field_changes() {
        let anc = v(
            json!({"title": "a", "body": "x", "tags": ["t1", "t2"], "n": 1}),
            1,
            1,
        );
        let local = v(
            json!({"title": "A", "body": "x", "tags": ["t1", "t2", "t3"], "n": 1}),
            5,
            1,
        );
        let remote = v(
            json!({"title": "a", "body": "y", "tags": ["t0", "t1"], "n": 2, "new": true}),
            6,
            2,
        );
        let c = Conflict {
            collection: "c",
            key: "k",
            local: &local,
            remote: &remote,
            ancestor: Some(&anc),
        };
        let out = merged(Merge.resolve(&c).expect("merge"));
        assert_eq!(out["title"], "A");
        assert_eq!(out["body"], "y");
        assert_eq!(out["n"], 2);
        assert_eq!(out["new"], true);
        // t2 removed by remote; t3 added by local; t0 added by remote; newer side's order first.
        assert_eq!(out["tags"], json!(["t0", "t1", "t3"]));
        let swapped = Conflict {
            local: &remote,
            remote: &local,
            ..c
        };
        assert_eq!(
            merged(Merge.resolve(&swapped).expect("merge")),
            out,
            "symmetric"
        );
    }

    #[test]
    fn merge_true_conflicts_go_to_the_later_write_and_edits_beat_deletes() {
        let local = v(json!({"a": 1}), 10, 1);
        let remote = v(json!({"a": 2}), 9, 2);
        let c = Conflict {
            collection: "c",
            key: "k",
            local: &local,
            remote: &remote,
            ancestor: None,
        };
        assert_eq!(merged(Merge.resolve(&c).expect("merge")), json!({"a": 1}));
        let deleted = Version {
            value: None,
            ..remote.clone()
        };
        let c = Conflict {
            remote: &deleted,
            ..c
        };
        assert_eq!(merged(Merge.resolve(&c).expect("merge")), json!({"a": 1}));
    }

    #[test]
    fn priority_then_lww() {
        let hi = v(json!({"_priority": 5, "x": 1}), 1, 1);
        let lo = v(json!({"x": 2}), 9, 2);
        let c = Conflict {
            collection: "c",
            key: "k",
            local: &hi,
            remote: &lo,
            ancestor: None,
        };
        assert_eq!(
            Priority::default().resolve(&c).ok(),
            Some(Resolution::TakeLocal)
        );
        let c = Conflict {
            local: &lo,
            remote: &hi,
            ..c
        };
        assert_eq!(
            Priority::default().resolve(&c).ok(),
            Some(Resolution::TakeRemote)
        );
    }
}

#[cfg(all(test, feature = "testkit"))]
mod laws {
    #[test]
    fn every_registered_strategy_keeps_the_laws() {
        let checked = crate::testkit::registered_strategy_laws(256);
        for builtin in ["lww", "priority", "merge", "user-choice"] {
            assert!(
                checked.contains(&builtin),
                "{builtin} not checked: {checked:?}"
            );
        }
    }

    /// "Keep mine" looks reasonable on one device and diverges across two.
    #[derive(Debug)]
    struct KeepMine;
    impl super::ConflictStrategy for KeepMine {
        fn name(&self) -> &'static str {
            "keep-mine"
        }
        fn resolve(&self, _: &super::Conflict<'_>) -> crate::Result<super::Resolution> {
            Ok(super::Resolution::TakeLocal)
        }
    }

    #[test]
    #[should_panic(expected = "not symmetric")]
    fn the_laws_catch_an_asymmetric_strategy() {
        crate::testkit::strategy_laws(&KeepMine, 16);
    }

    /// A priority strategy that favours the local side when both carry a priority: wrong only
    /// when the generator produces the `_priority` field, so this proves it does.
    #[derive(Debug)]
    struct LocalOnPriority;
    impl super::ConflictStrategy for LocalOnPriority {
        fn name(&self) -> &'static str {
            "local-on-priority"
        }
        fn resolve(&self, c: &super::Conflict<'_>) -> crate::Result<super::Resolution> {
            let has = |v: &super::Version| {
                v.value
                    .as_ref()
                    .is_some_and(|v| v.get(super::Priority::DEFAULT_FIELD).is_some())
            };
            if has(c.local) && has(c.remote) {
                Ok(super::Resolution::TakeLocal)
            } else {
                super::LastWriterWins.resolve(c)
            }
        }
    }

    #[test]
    #[should_panic(expected = "not symmetric")]
    fn the_generator_exercises_the_priority_field() {
        crate::testkit::strategy_laws(&LocalOnPriority, 256);
    }

    /// Merges to a value that depends on which side is local: symmetric in the decision kind
    /// but not in the value, so the devices' resolved versions differ.
    #[derive(Debug)]
    struct MergeToLocal;
    impl super::ConflictStrategy for MergeToLocal {
        fn name(&self) -> &'static str {
            "merge-to-local"
        }
        fn resolve(&self, c: &super::Conflict<'_>) -> crate::Result<super::Resolution> {
            Ok(super::Resolution::Merged(c.local.value.clone()))
        }
    }

    #[test]
    #[should_panic(expected = "strategy 'merge-to-local' breaks a law")]
    fn the_laws_catch_a_merge_that_depends_on_the_side() {
        crate::testkit::strategy_laws(&MergeToLocal, 64);
    }
}
