//! A conflict strategy as a plugin: `max-count`, for counters that only grow (page views,
//! steps walked, items scanned in the field). Concurrent versions keep the larger `count`;
//! everything else in the object is merged by the built-in `merge` strategy.
//!
//! The whole plugin is this file: implement [`ConflictStrategy`], register it by name with
//! [`hearth::register_strategy!`], and select it per collection from configuration with
//! `SyncEngine::set_strategy(collection, "max-count")`. `sync-core` is not touched. The test
//! kit's `registered_strategy_laws` checks every registered strategy, this one included:
//! deterministic, symmetric, and settling (two devices resolving the same conflict end with the
//! same version, which never conflicts again), so every device converges.
#![deny(missing_docs)]

use std::sync::Arc;

use hearth::{Conflict, ConflictStrategy, Merge, Resolution, Result};

/// Keeps the larger `count` of two concurrent versions; merges the other fields.
#[derive(Debug, Default, Clone, Copy)]
pub struct MaxCount;

impl MaxCount {
    /// The registry name.
    pub const NAME: &'static str = "max-count";
}

fn count(v: &Option<serde_json::Value>) -> Option<i64> {
    v.as_ref()?.get("count")?.as_i64()
}

impl ConflictStrategy for MaxCount {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn resolve(&self, c: &Conflict<'_>) -> Result<Resolution> {
        let merged = Merge.resolve(c)?;
        let (Some(l), Some(r)) = (count(&c.local.value), count(&c.remote.value)) else {
            return Ok(merged);
        };
        Ok(match merged {
            Resolution::Merged(Some(serde_json::Value::Object(mut m))) => {
                m.insert("count".into(), l.max(r).into());
                Resolution::Merged(Some(serde_json::Value::Object(m)))
            }
            other => other,
        })
    }
}

hearth::register_strategy!(MaxCount::NAME, || Arc::new(MaxCount));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_laws_every_strategy_must_keep() {
        // Walks the registry: the plugin is checked because it is linked and registered, the
        // same way the engine finds it.
        let checked = sync_core::testkit::registered_strategy_laws(256);
        assert!(checked.contains(&MaxCount::NAME), "{checked:?}");
    }

    #[test]
    fn is_found_by_name() {
        assert!(hearth::registry::strategy_names().contains(&MaxCount::NAME));
    }
}
