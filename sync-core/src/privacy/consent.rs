//! [`StoreConsent`]: consent grants persisted in the store, default deny, an optional prompt
//! hook, every decision audited.
//!
//! A grant covers exactly one (data type, purpose, destination): there are no wildcards, so a
//! grant never reaches further than what the user was shown. Grants are local-only records
//! (collection [`CONSENT_COLLECTION`], one record per (data type, purpose, destination) holding
//! its grant history), sealed like every record and never synced: consent is given per device.
//!
//! A request is decided at the time of the pipeline's clock:
//!
//! 1. an active grant (not revoked, not expired, not a used one-time grant) allows it, the most
//!    recent one if several;
//! 2. otherwise, when a [`ConsentPrompt`] is installed and the latest grant was not revoked,
//!    the user is asked; a yes becomes a recorded grant (source [`GrantSource::Prompt`]);
//! 3. otherwise it is denied: [`DenyReason::Revoked`] or [`DenyReason::Expired`] after the
//!    latest grant's end (a used one-time grant counts as expired), else [`DenyReason::NoGrant`].
//!
//! Every decision, grant and revocation is appended to the [`AuditLog`], in the same atomic
//! batch as the grant change it records.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cipher::Cipher;
use crate::consent::{ConsentPolicy, ConsentRequest, Decision, DenyReason};
use crate::error::{Error, Result};
use crate::privacy::audit::{AuditEvent, AuditLog};
use crate::privacy::validate_request;
use crate::store::{Store, WallClock, system_millis};

/// Collection of consent grants (local-only).
pub const CONSENT_COLLECTION: &str = "_hearth.consent";

/// Data type of the user's consent to sync their data to their own devices.
pub const SYNC_DATA_TYPE: &str = "hearth.user-data";
/// Purpose of the sync consent.
pub const SYNC_PURPOSE: &str = "sync";
/// Destination of the sync consent: the user's own devices, through the sync server, end-to-end
/// encrypted.
pub const SYNC_DESTINATION: &str = "own-devices";

/// How far a grant reaches in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Scope {
    /// Every matching request until it expires or is revoked.
    #[default]
    Ongoing,
    /// One share: used up by the first request it allows.
    Once,
}

/// How a grant was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum GrantSource {
    /// Through the app's API (a settings screen, onboarding, enabling sync).
    App,
    /// A yes to the prompt hook when data was about to leave.
    Prompt,
}

/// Where a grant stands at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GrantStatus {
    /// It allows matching requests.
    Active,
    /// Its expiry has passed.
    Expired,
    /// A one-time grant that has been used.
    Used,
    /// The user revoked it.
    Revoked,
}

/// A recorded consent: the user allowed data of `data_type` to go to `destination` for
/// `purpose`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Random id (32 hex digits).
    pub id: String,
    /// Data type.
    pub data_type: String,
    /// Purpose.
    pub purpose: String,
    /// Destination.
    pub destination: String,
    /// Scope.
    pub scope: Scope,
    /// When it was given, milliseconds since the Unix epoch.
    pub granted_at: u64,
    /// When it ends (exclusive), milliseconds since the Unix epoch; `None`: until revoked.
    pub expires_at: Option<u64>,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
    /// When a one-time grant was used.
    pub used_at: Option<u64>,
    /// How it was given.
    pub source: GrantSource,
}

impl Grant {
    /// The grant's status at `now` (milliseconds since the Unix epoch).
    pub fn status(&self, now: u64) -> GrantStatus {
        if self.revoked_at.is_some() {
            GrantStatus::Revoked
        } else if self.used_at.is_some() {
            GrantStatus::Used
        } else if self.expires_at.is_some_and(|e| now >= e) {
            GrantStatus::Expired
        } else {
            GrantStatus::Active
        }
    }

    /// True when it allows matching requests at `now`.
    pub fn is_active(&self, now: u64) -> bool {
        self.status(now) == GrantStatus::Active
    }

    /// The request this grant answers.
    pub fn request(&self) -> ConsentRequest {
        ConsentRequest::new(&self.data_type, &self.purpose, &self.destination)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Expiry {
    #[default]
    Never,
    At(u64),
    After(Duration),
}

/// Scope and expiry of a new grant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GrantOptions {
    scope: Scope,
    expiry: Expiry,
}

impl GrantOptions {
    /// Until revoked.
    pub fn ongoing() -> Self {
        Self::default()
    }

    /// For one share.
    pub fn once() -> Self {
        Self {
            scope: Scope::Once,
            ..Self::default()
        }
    }

    /// Ends at `expires_at` (milliseconds since the Unix epoch, exclusive).
    #[must_use]
    pub fn expires_at(mut self, expires_at: u64) -> Self {
        self.expiry = Expiry::At(expires_at);
        self
    }

    /// Ends `duration` after it is granted.
    #[must_use]
    pub fn expires_after(mut self, duration: Duration) -> Self {
        self.expiry = Expiry::After(duration);
        self
    }

    fn resolve(self, now: u64) -> Result<Option<u64>> {
        let at = match self.expiry {
            Expiry::Never => return Ok(None),
            Expiry::At(at) => at,
            Expiry::After(d) => {
                let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
                now.saturating_add(ms)
            }
        };
        if at <= now {
            return Err(Error::invalid("a grant's expiry must be in the future"));
        }
        Ok(Some(at))
    }
}

/// What the user answered when asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PromptAnswer {
    /// No. Nothing is sent; the answer is audited, not remembered (the app may ask again).
    Deny,
    /// Yes, this once: recorded as a one-time grant, used by this request.
    AllowOnce,
    /// Yes, until `expires_at` (milliseconds since the Unix epoch) or, with `None`, until
    /// revoked: recorded as an ongoing grant.
    Allow {
        /// End of the grant.
        expires_at: Option<u64>,
    },
}

/// What the prompt is told besides the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PromptContext {
    /// Why the request would be denied without an answer: [`DenyReason::NoGrant`] for a first
    /// request, [`DenyReason::Expired`] for a renewal.
    pub previous: DenyReason,
    /// The pipeline's time, milliseconds since the Unix epoch.
    pub now: u64,
}

/// Asks the user, when data is about to leave and no grant covers it. The app implements it (a
/// dialog; the CLI a terminal prompt). It is never asked after the user revoked the matching
/// grant (re-granting is an explicit act through [`StoreConsent::grant`]), nor for the sync
/// consent.
#[async_trait]
pub trait ConsentPrompt: Send + Sync + fmt::Debug + 'static {
    /// Asks whether `request` may proceed.
    async fn ask(&self, request: &ConsentRequest, context: PromptContext) -> Result<PromptAnswer>;
}

fn _object_safe(_: &dyn ConsentPrompt) {}

#[derive(Default, Serialize, Deserialize)]
struct StoredGrants {
    grants: Vec<Grant>,
}

/// The record key of a (data type, purpose, destination): a JSON array, unambiguous for any
/// names. Record keys are stored blind.
fn triple_key(request: &ConsentRequest) -> Result<String> {
    serde_json::to_string(&[&request.data_type, &request.purpose, &request.destination])
        .map_err(|e| Error::internal("consent key encoding").with_source(e))
}

fn new_grant_id(cipher: &dyn Cipher) -> Result<String> {
    let mut id = [0u8; 16];
    cipher.fill_random(&mut id)?;
    Ok(hex::encode(id))
}

fn denial_reason(grants: &[Grant], now: u64) -> DenyReason {
    match grants.last().map(|g| g.status(now)) {
        Some(GrantStatus::Revoked) => DenyReason::Revoked,
        Some(GrantStatus::Expired | GrantStatus::Used) => DenyReason::Expired,
        Some(GrantStatus::Active) | None => DenyReason::NoGrant,
    }
}

/// The persisted [`ConsentPolicy`]: grants in the store, default deny, every decision audited.
/// Cheap to clone; clones (and every `StoreConsent` of the same store) share one lock.
#[derive(Clone)]
pub struct StoreConsent {
    store: Store,
    audit: AuditLog,
    clock: WallClock,
    prompt: Option<Arc<dyn ConsentPrompt>>,
}

impl fmt::Debug for StoreConsent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConsent")
            .field("store", &self.store)
            .field("prompt", &self.prompt)
            .finish_non_exhaustive()
    }
}

impl StoreConsent {
    /// The consent policy of `store`, on the system clock, without a prompt.
    pub fn new(store: &Store) -> Self {
        Self {
            store: store.clone(),
            audit: AuditLog::new(store),
            clock: Arc::new(system_millis),
            prompt: None,
        }
    }

    /// Reads time from `clock` (milliseconds since the Unix epoch), for grants, expiry and
    /// audit entries.
    #[must_use]
    pub fn with_clock(mut self, clock: WallClock) -> Self {
        self.audit = self.audit.with_clock(clock.clone());
        self.clock = clock;
        self
    }

    /// Asks `prompt` when no grant covers a request.
    #[must_use]
    pub fn with_prompt(mut self, prompt: Arc<dyn ConsentPrompt>) -> Self {
        self.prompt = Some(prompt);
        self
    }

    /// The audit log this policy writes to.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The policy's current time, milliseconds since the Unix epoch.
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    async fn load(&self, key: &str) -> Result<StoredGrants> {
        match self.store.get(CONSENT_COLLECTION, key).await? {
            None => Ok(StoredGrants::default()),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| Error::corrupt("a consent record is malformed").with_source(e)),
        }
    }

    fn record(key: String, grants: &StoredGrants) -> Result<(&'static str, String, Value)> {
        let value = serde_json::to_value(grants)
            .map_err(|e| Error::internal("consent record encoding").with_source(e))?;
        Ok((CONSENT_COLLECTION, key, value))
    }

    /// Records the user's consent to `request` and returns the new grant. Audited.
    pub async fn grant(&self, request: &ConsentRequest, options: GrantOptions) -> Result<Grant> {
        validate_request(request)?;
        let lock = self.audit.lock().clone();
        let _guard = lock.lock().await;
        let now = self.now();
        let expires_at = options.resolve(now)?;
        self.add_grant_locked(
            request,
            options.scope,
            expires_at,
            GrantSource::App,
            now,
            None,
        )
        .await
    }

    /// Adds a grant (and the optional decision it allows) in one batch. Caller holds the lock.
    async fn add_grant_locked(
        &self,
        request: &ConsentRequest,
        scope: Scope,
        expires_at: Option<u64>,
        source: GrantSource,
        now: u64,
        decision: Option<bool>,
    ) -> Result<Grant> {
        let key = triple_key(request)?;
        let mut stored = self.load(&key).await?;
        let mut grant = Grant {
            id: new_grant_id(self.store.cipher().as_ref())?,
            data_type: request.data_type.clone(),
            purpose: request.purpose.clone(),
            destination: request.destination.clone(),
            scope,
            granted_at: now,
            expires_at,
            revoked_at: None,
            used_at: None,
            source,
        };
        let mut events = vec![AuditEvent::Grant {
            grant_id: grant.id.clone(),
            data_type: grant.data_type.clone(),
            purpose: grant.purpose.clone(),
            destination: grant.destination.clone(),
            scope,
            expires_at,
            source,
        }];
        if let Some(prompted) = decision {
            if scope == Scope::Once {
                grant.used_at = Some(now);
            }
            events.push(AuditEvent::Decision {
                data_type: grant.data_type.clone(),
                purpose: grant.purpose.clone(),
                destination: grant.destination.clone(),
                allowed: true,
                grant_id: Some(grant.id.clone()),
                reason: None,
                prompted,
            });
        }
        stored.grants.push(grant.clone());
        self.audit
            .append_locked(events, vec![Self::record(key, &stored)?])
            .await?;
        Ok(grant)
    }

    /// Revokes the grant `grant_id`, effective immediately. Returns false when no active grant
    /// has that id. Audited.
    pub async fn revoke(&self, grant_id: &str) -> Result<bool> {
        let lock = self.audit.lock().clone();
        let _guard = lock.lock().await;
        let now = self.now();
        for grant in self.grants().await? {
            if grant.id == grant_id {
                return Ok(self
                    .revoke_locked(&grant.request(), Some(grant_id), now)
                    .await?
                    > 0);
            }
        }
        Ok(false)
    }

    /// Revokes every active grant for `request`, effective immediately. Returns how many.
    /// Audited.
    pub async fn revoke_all(&self, request: &ConsentRequest) -> Result<usize> {
        validate_request(request)?;
        let lock = self.audit.lock().clone();
        let _guard = lock.lock().await;
        let now = self.now();
        self.revoke_locked(request, None, now).await
    }

    async fn revoke_locked(
        &self,
        request: &ConsentRequest,
        only: Option<&str>,
        now: u64,
    ) -> Result<usize> {
        let key = triple_key(request)?;
        let mut stored = self.load(&key).await?;
        let mut events = Vec::new();
        for g in &mut stored.grants {
            if g.is_active(now) && only.is_none_or(|id| id == g.id) {
                g.revoked_at = Some(now);
                events.push(AuditEvent::Revoke {
                    grant_id: g.id.clone(),
                    data_type: g.data_type.clone(),
                    purpose: g.purpose.clone(),
                    destination: g.destination.clone(),
                });
            }
        }
        let n = events.len();
        if n > 0 {
            self.audit
                .append_locked(events, vec![Self::record(key, &stored)?])
                .await?;
        }
        Ok(n)
    }

    /// Every grant ever recorded, active or not, grouped by (data type, purpose, destination)
    /// and in the order given within each group.
    pub async fn grants(&self) -> Result<Vec<Grant>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.store.scan_page(CONSENT_COLLECTION, after, 256).await?;
            for record in page.records {
                if let Some(v) = record.value {
                    let stored: StoredGrants = serde_json::from_value(v).map_err(|e| {
                        Error::corrupt("a consent record is malformed").with_source(e)
                    })?;
                    out.extend(stored.grants);
                }
            }
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// The grants for `request`, oldest first.
    pub async fn grants_for(&self, request: &ConsentRequest) -> Result<Vec<Grant>> {
        validate_request(request)?;
        Ok(self.load(&triple_key(request)?).await?.grants)
    }

    /// The request that stands for syncing the user's data to their own devices.
    pub fn sync_request() -> ConsentRequest {
        ConsentRequest::new(SYNC_DATA_TYPE, SYNC_PURPOSE, SYNC_DESTINATION)
    }

    /// Records the user's consent to sync their data to their own devices (given when they
    /// enable sync). Audited like any grant.
    pub async fn grant_sync(&self, options: GrantOptions) -> Result<Grant> {
        self.grant(&Self::sync_request(), options).await
    }

    /// Withdraws the sync consent. Returns how many grants were revoked.
    pub async fn revoke_sync(&self) -> Result<usize> {
        self.revoke_all(&Self::sync_request()).await
    }

    /// Whether sync may run now: a decision like any other (audited), never prompting. The
    /// sync engine does not call it: whoever starts a sync round asks first (the `hearth sync`
    /// command does, and refuses with [`ErrorKind::ConsentDenied`](crate::ErrorKind) when
    /// denied); an app that drives [`SyncEngine`](crate::SyncEngine) itself must do the same.
    pub async fn sync_allowed(&self) -> Result<bool> {
        Ok(self
            .decide_with(&Self::sync_request(), false)
            .await?
            .is_allowed())
    }

    /// Decides `request`, asking the prompt hook only when `may_prompt`.
    pub async fn decide_with(
        &self,
        request: &ConsentRequest,
        may_prompt: bool,
    ) -> Result<Decision> {
        validate_request(request)?;
        let lock = self.audit.lock().clone();
        let guard = lock.lock().await;
        let now = self.now();
        let key = triple_key(request)?;
        let mut stored = self.load(&key).await?;
        let active = stored
            .grants
            .iter()
            .enumerate()
            .filter(|(_, g)| g.is_active(now))
            .max_by_key(|(i, g)| (g.granted_at, *i))
            .map(|(i, _)| i);
        if let Some(i) = active {
            let grant = &mut stored.grants[i];
            let grant_id = grant.id.clone();
            let mut extra = Vec::new();
            if grant.scope == Scope::Once {
                grant.used_at = Some(now);
                extra.push(Self::record(key, &stored)?);
            }
            self.audit
                .append_locked(
                    vec![decision_event(request, Some(&grant_id), None, false)],
                    extra,
                )
                .await?;
            return Ok(Decision::Allow { grant_id });
        }
        let reason = denial_reason(&stored.grants, now);
        let prompt = match &self.prompt {
            Some(p) if may_prompt && reason != DenyReason::Revoked => p.clone(),
            _ => {
                self.audit
                    .append_locked(
                        vec![decision_event(request, None, Some(reason), false)],
                        Vec::new(),
                    )
                    .await?;
                return Ok(Decision::Deny(reason));
            }
        };
        // Never hold the lock while a person thinks.
        drop(guard);
        let answer = prompt
            .ask(
                request,
                PromptContext {
                    previous: reason,
                    now,
                },
            )
            .await;
        let _guard = lock.lock().await;
        let now = self.now();
        let (scope, expires_at) = match answer {
            Ok(PromptAnswer::AllowOnce) => (Scope::Once, None),
            Ok(PromptAnswer::Allow { expires_at }) => {
                if expires_at.is_some_and(|e| e <= now) {
                    self.audit
                        .append_locked(
                            vec![decision_event(request, None, Some(reason), true)],
                            Vec::new(),
                        )
                        .await?;
                    return Err(Error::invalid(
                        "the prompt answered with an expiry in the past",
                    ));
                }
                (Scope::Ongoing, expires_at)
            }
            Ok(PromptAnswer::Deny) | Err(_) => {
                self.audit
                    .append_locked(
                        vec![decision_event(request, None, Some(reason), true)],
                        Vec::new(),
                    )
                    .await?;
                return match answer {
                    Err(e) => Err(e),
                    Ok(_) => Ok(Decision::Deny(reason)),
                };
            }
        };
        let grant = self
            .add_grant_locked(
                request,
                scope,
                expires_at,
                GrantSource::Prompt,
                now,
                Some(true),
            )
            .await?;
        Ok(Decision::Allow { grant_id: grant.id })
    }
}

fn decision_event(
    request: &ConsentRequest,
    grant_id: Option<&str>,
    reason: Option<DenyReason>,
    prompted: bool,
) -> AuditEvent {
    AuditEvent::Decision {
        data_type: request.data_type.clone(),
        purpose: request.purpose.clone(),
        destination: request.destination.clone(),
        allowed: reason.is_none(),
        grant_id: grant_id.map(str::to_owned),
        reason,
        prompted,
    }
}

#[async_trait]
impl ConsentPolicy for StoreConsent {
    /// Decides `request`, asking the prompt hook (if any) when no grant covers it.
    async fn decide(&self, request: &ConsentRequest) -> Result<Decision> {
        self.decide_with(request, true).await
    }
}
