//! The privacy pipeline: nothing leaves the device for any purpose other than the user's own
//! sync without a recorded, purpose-bound grant, an anonymizer pass, and encryption to the
//! destination's public key.
//!
//! ```text
//! Sharer::share(data_type, purpose, destination, payload)
//!   ├─ consent:    ConsentPolicy::decide (StoreConsent: persisted grants, default deny,
//!   │              optional prompt hook); every decision goes to the AuditLog
//!   ├─ anonymize:  Anonymizer with the RuleSet of that data type (drop, keyed pseudonym,
//!   │              generalize numbers / times / coordinates, redact PII in free text)
//!   ├─ seal:       seal_for_destination (ephemeral X25519 + BLAKE2b + XChaCha20-Poly1305)
//!   └─ send:       Transport::share(destination, sealed)
//! ```
//!
//! Nothing is sent, and the caller learns why ([`ShareOutcome::Denied`] or a typed error), when
//! consent is missing, expired or revoked, when the payload does not match the rules, or when the
//! destination has no key. Grants and the audit log are local-only records of the store: sealed
//! like every record, never entering the sync outbox. See `docs/privacy.md`.
//!
//! ```
//! use std::sync::Arc;
//! use serde_json::json;
//! use sync_core::privacy::{
//!     DestinationKeyPair, GrantOptions, RuleSet, Sharer, ShareOutcome, StoreConsent,
//! };
//! use sync_core::{ConsentRequest, Store, Transport};
//!
//! async fn demo(store: Store, transport: Arc<dyn Transport>) -> sync_core::Result<()> {
//!     let rules = RuleSet::from_toml(r#"
//!         [types.crash-report]
//!         mode = "allow_list"
//!         rules = [
//!           { path = "app.version", action = "keep" },
//!           { path = "user.id", action = "pseudonym" },
//!           { path = "message", action = "redact" },
//!         ]
//!     "#)?;
//!     // The destination's key pair lives on the receiving side; the app ships its public key.
//!     let receiver = DestinationKeyPair::generate(store.cipher().as_ref())?;
//!     let consent = StoreConsent::new(&store);
//!     let sharer = Sharer::builder(&store)
//!         .consent(Arc::new(consent.clone()))
//!         .rules(rules)
//!         .destination("acme-crashes", receiver.public())
//!         .transport(transport)
//!         .build()?;
//!     let report = json!({"app": {"version": "1.2"}, "user": {"id": "u-42"}, "message": "mail me at a@b.example"});
//!     // Default deny: nothing leaves.
//!     let outcome = sharer.share("crash-report", "debugging", "acme-crashes", &report).await?;
//!     assert!(matches!(outcome, ShareOutcome::Denied(_)));
//!     // The user agrees (in the app's settings); now it is sent, anonymized and sealed.
//!     let request = ConsentRequest {
//!         data_type: "crash-report".into(),
//!         purpose: "debugging".into(),
//!         destination: "acme-crashes".into(),
//!     };
//!     consent.grant(&request, GrantOptions::ongoing()).await?;
//!     let sent = sharer.share("crash-report", "debugging", "acme-crashes", &report).await?.require_sent()?;
//!     assert_eq!(sent.data["message"], "mail me at [email]");
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};

use crate::error::{Error, Result};
use crate::model::{DeviceId, SpaceId};
use crate::store::Store;

pub mod anonymize;
pub mod audit;
pub mod consent;
pub mod destination;
mod redact;
pub mod share;

pub use anonymize::{Action, Anonymizer, Buckets, EpochUnit, Granularity, Mode, Rule, RuleSet};
pub use audit::{AuditEntry, AuditEvent, AuditLog, ShareStatus};
pub use consent::{
    ConsentPrompt, Grant, GrantOptions, GrantSource, GrantStatus, PromptAnswer, PromptContext,
    Scope, StoreConsent,
};
pub use destination::{
    DestinationKey, DestinationKeyPair, Destinations, ShareDocument, open_from_device,
    open_share_document, seal_for_destination,
};
pub use redact::PiiKind;
pub use share::{Sent, ShareOutcome, Sharer, SharerBuilder};

/// Longest data type, purpose or destination name, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Checks a data type, purpose or destination name: 1 to [`MAX_NAME_LEN`] bytes, no control
/// characters. The error names what was wrong, not the value.
pub(crate) fn validate_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "a {what} must be 1 to {MAX_NAME_LEN} bytes without control characters"
        )));
    }
    Ok(())
}

/// Checks the three names of a consent request.
pub(crate) fn validate_request(request: &crate::consent::ConsentRequest) -> Result<()> {
    validate_name("data type", &request.data_type)?;
    validate_name("purpose", &request.purpose)?;
    validate_name("destination", &request.destination)
}

type PrivacyLock = Arc<tokio::sync::Mutex<()>>;

type LockMap = HashMap<(SpaceId, DeviceId), Weak<tokio::sync::Mutex<()>>>;

static LOCKS: LazyLock<Mutex<LockMap>> = LazyLock::new(|| Mutex::new(HashMap::new()));

/// The one lock that serializes the privacy pipeline's read-modify-writes (grants, the audit
/// log's sequence) for a store, shared by every `StoreConsent` and `AuditLog` of it in this
/// process, however many are made. (Another process writing the same file is refused by the
/// store's device-state guard, not by this lock.)
pub(crate) fn privacy_lock(store: &Store) -> PrivacyLock {
    let key = (store.space(), store.device());
    let mut map = LOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(lock) = map.get(&key).and_then(Weak::upgrade) {
        return lock;
    }
    map.retain(|_, weak| weak.strong_count() > 0);
    let lock = Arc::new(tokio::sync::Mutex::new(()));
    map.insert(key, Arc::downgrade(&lock));
    lock
}

#[cfg(test)]
mod tests;
