//! [`Sharer`]: the one way data leaves the device for a purpose other than sync.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use zeroize::Zeroizing;

use crate::cipher::Cipher;
use crate::consent::{ConsentPolicy, ConsentRequest, Decision, DenyReason};
use crate::error::{Error, ErrorKind, Result};
use crate::privacy::anonymize::{Anonymizer, RuleSet};
use crate::privacy::audit::{AuditEvent, AuditLog, ShareStatus};
use crate::privacy::consent::StoreConsent;
use crate::privacy::destination::{
    DestinationKey, Destinations, ShareDocument, seal_for_destination,
};
use crate::privacy::validate_request;
use crate::store::{Store, WallClock};
use crate::transport::Transport;

/// What a share sent.
#[derive(Clone, PartialEq)]
pub struct Sent {
    /// The grant it went out under.
    pub grant_id: String,
    /// The anonymized data, exactly as sealed (inside a [`ShareDocument`]).
    pub data: Value,
    /// Bytes handed to the transport.
    pub sealed_len: usize,
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sent")
            .field("grant_id", &self.grant_id)
            .field("sealed_len", &self.sealed_len)
            .finish_non_exhaustive()
    }
}

/// The result of a share that raised no error.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ShareOutcome {
    /// Anonymized, sealed and handed to the transport.
    Sent(Sent),
    /// Consent denied it; nothing left the device.
    Denied(DenyReason),
}

impl ShareOutcome {
    /// What was sent, or an [`ErrorKind::ConsentDenied`] error naming the reason.
    pub fn require_sent(self) -> Result<Sent> {
        match self {
            ShareOutcome::Sent(sent) => Ok(sent),
            ShareOutcome::Denied(reason) => Err(Error::new(
                ErrorKind::ConsentDenied,
                match reason {
                    DenyReason::Expired => "consent denied: the grant has expired",
                    DenyReason::Revoked => "consent denied: the grant was revoked",
                    _ => "consent denied: no grant covers this data, purpose and destination",
                },
            )),
        }
    }

    /// True when sent.
    pub fn is_sent(&self) -> bool {
        matches!(self, ShareOutcome::Sent(_))
    }
}

/// Builds a [`Sharer`].
pub struct SharerBuilder {
    store: Store,
    consent: Option<Arc<dyn ConsentPolicy>>,
    rules: RuleSet,
    destinations: Destinations,
    transport: Option<Arc<dyn Transport>>,
    clock: Option<WallClock>,
    error: Option<Error>,
}

impl fmt::Debug for SharerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharerBuilder")
            .field("store", &self.store)
            .field("consent", &self.consent)
            .field("destinations", &self.destinations)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl SharerBuilder {
    /// The consent policy (default: a [`StoreConsent`] of the store, without a prompt).
    #[must_use]
    pub fn consent(mut self, consent: Arc<dyn ConsentPolicy>) -> Self {
        self.consent = Some(consent);
        self
    }

    /// The anonymization rules. A data type without rules cannot be shared.
    #[must_use]
    pub fn rules(mut self, rules: RuleSet) -> Self {
        self.rules = rules;
        self
    }

    /// Adds a destination's public key.
    #[must_use]
    pub fn destination(mut self, name: impl Into<String>, key: DestinationKey) -> Self {
        if let Err(e) = self.destinations.insert(name, key) {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Sets every destination's public key at once.
    #[must_use]
    pub fn destinations(mut self, destinations: Destinations) -> Self {
        self.destinations = destinations;
        self
    }

    /// The transport whose [`Transport::share`] sends.
    #[must_use]
    pub fn transport(mut self, transport: Arc<dyn Transport>) -> Self {
        self.transport = Some(transport);
        self
    }

    /// The clock of audit entries (and of the default consent policy).
    #[must_use]
    pub fn clock(mut self, clock: WallClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the configuration and builds the sharer.
    pub fn build(self) -> Result<Sharer> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let transport = self.transport.ok_or_else(|| {
            Error::new(ErrorKind::Config, "a sharer needs a transport to send with")
        })?;
        let mut audit = AuditLog::new(&self.store);
        if let Some(clock) = &self.clock {
            audit = audit.with_clock(clock.clone());
        }
        let consent = match self.consent {
            Some(c) => c,
            None => {
                let mut c = StoreConsent::new(&self.store);
                if let Some(clock) = self.clock {
                    c = c.with_clock(clock);
                }
                Arc::new(c)
            }
        };
        Ok(Sharer {
            anonymizer: Anonymizer::for_store(&self.store, self.rules)?,
            cipher: self.store.cipher().clone(),
            consent,
            audit,
            destinations: self.destinations,
            transport,
        })
    }
}

/// Sends data off the device for a purpose: consent check → anonymizer → sealing to the
/// destination's key → [`Transport::share`]. Every attempt is audited. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Sharer {
    consent: Arc<dyn ConsentPolicy>,
    audit: AuditLog,
    anonymizer: Anonymizer,
    cipher: Arc<dyn Cipher>,
    destinations: Destinations,
    transport: Arc<dyn Transport>,
}

impl Sharer {
    /// A builder over `store` (which holds the audit log, the default consent grants and the
    /// pseudonym key).
    pub fn builder(store: &Store) -> SharerBuilder {
        SharerBuilder {
            store: store.clone(),
            consent: None,
            rules: RuleSet::default(),
            destinations: Destinations::new(),
            transport: None,
            clock: None,
            error: None,
        }
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The anonymizer.
    pub fn anonymizer(&self) -> &Anonymizer {
        &self.anonymizer
    }

    async fn record(
        &self,
        request: &ConsentRequest,
        grant_id: Option<&str>,
        status: ShareStatus,
        sealed_len: Option<usize>,
        error: Option<ErrorKind>,
    ) -> Result<()> {
        self.audit
            .append(AuditEvent::Share {
                data_type: request.data_type.clone(),
                purpose: request.purpose.clone(),
                destination: request.destination.clone(),
                grant_id: grant_id.map(str::to_owned),
                status,
                sealed_len,
                error: error.map(|k| k.as_str().to_owned()),
            })
            .await
            .map(drop)
    }

    /// Shares `payload` of `data_type` with `destination` for `purpose`.
    ///
    /// - Invalid names, a destination without a key, or a data type without rules: an error
    ///   ([`ErrorKind::InvalidInput`], [`ErrorKind::NotFound`]) before consent is asked.
    /// - Consent denied (no grant, expired, revoked): `Ok(ShareOutcome::Denied(reason))`.
    /// - A payload that does not match its rules: [`ErrorKind::InvalidInput`].
    /// - The transport's error, if it fails.
    ///
    /// In every case but `Sent`, nothing was handed to the transport. Each attempt and its
    /// outcome is appended to the audit log, and the log entry for a send is written before the
    /// transport is called: if it cannot be written, nothing is sent.
    pub async fn share(
        &self,
        data_type: &str,
        purpose: &str,
        destination: &str,
        payload: &Value,
    ) -> Result<ShareOutcome> {
        let request = ConsentRequest::new(data_type, purpose, destination);
        validate_request(&request)?;
        let Some(key) = self.destinations.get(destination).copied() else {
            self.record(
                &request,
                None,
                ShareStatus::NotSent,
                None,
                Some(ErrorKind::NotFound),
            )
            .await?;
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "no public key is configured for destination '{destination}'; nothing was sent"
                ),
            ));
        };
        if self.anonymizer.rules().get(data_type).is_none() {
            self.record(
                &request,
                None,
                ShareStatus::NotSent,
                None,
                Some(ErrorKind::InvalidInput),
            )
            .await?;
            return Err(Error::invalid(format!(
                "there are no anonymization rules for data type '{data_type}'; nothing was sent"
            )));
        }
        let grant_id = match self.consent.decide(&request).await? {
            Decision::Allow { grant_id } => grant_id,
            Decision::Deny(reason) => {
                self.record(
                    &request,
                    None,
                    ShareStatus::NotSent,
                    None,
                    Some(ErrorKind::ConsentDenied),
                )
                .await?;
                return Ok(ShareOutcome::Denied(reason));
            }
        };
        let sealed = match self.prepare(&request, &key, payload) {
            Ok(ok) => ok,
            Err(e) => {
                self.record(
                    &request,
                    Some(&grant_id),
                    ShareStatus::NotSent,
                    None,
                    Some(e.kind()),
                )
                .await?;
                return Err(e);
            }
        };
        let (data, sealed) = sealed;
        let sealed_len = sealed.len();
        self.record(
            &request,
            Some(&grant_id),
            ShareStatus::Sending,
            Some(sealed_len),
            None,
        )
        .await?;
        if let Err(e) = self.transport.share(destination, sealed).await {
            self.record(
                &request,
                Some(&grant_id),
                ShareStatus::Failed,
                Some(sealed_len),
                Some(e.kind()),
            )
            .await?;
            return Err(e);
        }
        self.record(
            &request,
            Some(&grant_id),
            ShareStatus::Sent,
            Some(sealed_len),
            None,
        )
        .await?;
        Ok(ShareOutcome::Sent(Sent {
            grant_id,
            data,
            sealed_len,
        }))
    }

    /// Anonymizes and seals.
    fn prepare(
        &self,
        request: &ConsentRequest,
        key: &DestinationKey,
        payload: &Value,
    ) -> Result<(Value, Vec<u8>)> {
        let data = self
            .anonymizer
            .anonymize(&request.data_type, &request.purpose, payload)?;
        let document = ShareDocument {
            data_type: request.data_type.clone(),
            data,
        };
        let plain = Zeroizing::new(
            serde_json::to_vec(&document)
                .map_err(|e| Error::internal("share document encoding").with_source(e))?,
        );
        let sealed = seal_for_destination(
            self.cipher.as_ref(),
            key,
            &request.destination,
            &request.purpose,
            &plain,
        )?;
        Ok((document.data, sealed))
    }
}
