//! The `ConsentPolicy` trait: nothing leaves the device for any purpose other than the user's
//! own sync without a recorded, purpose-bound grant. Default deny.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What is asked: may data of `data_type` go to `destination` for `purpose`?
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConsentRequest {
    /// The kind of data (`"usage-stats"`, `"error-report"`).
    pub data_type: String,
    /// Why it would leave (`"improve-model"`, `"debugging"`).
    pub purpose: String,
    /// Where it would go (a destination name the app configured).
    pub destination: String,
}

impl ConsentRequest {
    /// A request for data of `data_type` to go to `destination` for `purpose`.
    pub fn new(
        data_type: impl Into<String>,
        purpose: impl Into<String>,
        destination: impl Into<String>,
    ) -> Self {
        Self {
            data_type: data_type.into(),
            purpose: purpose.into(),
            destination: destination.into(),
        }
    }
}

/// Why a request was denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DenyReason {
    /// No grant covers the request.
    NoGrant,
    /// A grant existed but has expired.
    Expired,
    /// A grant existed but the user revoked it.
    Revoked,
}

/// The policy's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed under the grant with this id.
    Allow {
        /// The grant that allows it.
        grant_id: String,
    },
    /// Denied.
    Deny(DenyReason),
}

impl Decision {
    /// True when allowed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }
}

/// Decides whether data may leave the device. Implementations record every decision.
///
/// The persisted implementation is [`StoreConsent`](crate::privacy::StoreConsent).
#[async_trait]
pub trait ConsentPolicy: Send + Sync + fmt::Debug + 'static {
    /// Decides `request`. Anything not explicitly granted is denied.
    async fn decide(&self, request: &ConsentRequest) -> Result<Decision>;
}

fn _object_safe(_: &dyn ConsentPolicy) {}

/// The policy that denies everything: the default until the app installs a persisted one.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyAll;

#[async_trait]
impl ConsentPolicy for DenyAll {
    async fn decide(&self, _request: &ConsentRequest) -> Result<Decision> {
        Ok(Decision::Deny(DenyReason::NoGrant))
    }
}
