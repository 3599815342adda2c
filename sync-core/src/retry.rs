//! Retry as a layer around any [`Transport`]: exponential backoff with jitter, retrying only
//! errors that say they are temporary (a dropped connection, a busy server). Permanent errors
//! (a wrong key, a malformed request) return at once.
//!
//! Retrying is safe because every call is idempotent: push by (device, sequence), pull by
//! cursor, key backup by space.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};

use crate::error::{Error, Result};
use crate::model::SpaceId;
use crate::transport::{PullPage, PullRequest, PushRequest, PushResponse, Transport};

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First delay.
    pub min_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            max_retries: 6,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_retries)
            .with_jitter()
    }
}

/// A transport that retries temporary failures of the transport it wraps.
#[derive(Debug)]
pub struct RetryTransport {
    inner: Arc<dyn Transport>,
    policy: RetryPolicy,
}

impl RetryTransport {
    /// Wraps `inner` with `policy`.
    pub fn new(inner: Arc<dyn Transport>, policy: RetryPolicy) -> Self {
        Self { inner, policy }
    }
}

fn temporary(e: &Error) -> bool {
    e.is_temporary()
}

#[async_trait]
impl Transport for RetryTransport {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        (|| self.inner.push(request.clone()))
            .retry(self.policy.backoff())
            .when(temporary)
            .await
    }

    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        (|| self.inner.pull(request))
            .retry(self.policy.backoff())
            .when(temporary)
            .await
    }

    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        (|| self.inner.get_key_backup(space))
            .retry(self.policy.backoff())
            .when(temporary)
            .await
    }

    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        (|| self.inner.put_key_backup(space, blob.clone()))
            .retry(self.policy.backoff())
            .when(temporary)
            .await
    }

    async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()> {
        (|| self.inner.share(destination, sealed.clone()))
            .retry(self.policy.backoff())
            .when(temporary)
            .await
    }
}
