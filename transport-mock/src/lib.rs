//! # transport-mock
//!
//! A [`Transport`] served in-process by [`MemoryRelay`], the reference implementation of the
//! sync server's semantics (cursor, paging, idempotent push, compaction, tombstone horizon,
//! key fingerprint check), with seeded fault injection for deterministic simulations:
//!
//! - **drop**: the request is lost before the server sees it;
//! - **lost response**: the server applied the request but the client hears an error;
//! - **duplicate**: the request reaches the server twice;
//! - **reorder**: an older push, retransmitted, reaches the server after newer ones;
//! - **delay**: the call takes a random time (tokio time, so paused-clock tests stay fast);
//! - **partition**: every call fails until healed.
//!
//! Every fault is a temporary [`ErrorKind::Unavailable`] error, as a real network would give.
//! The same seed gives the same faults in the same order.
//!
//! [`mocks`] has `mockall` mocks of the five traits, for tests about their callers.
#![deny(missing_docs)]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sync_core::{
    Error, ErrorKind, MemoryRelay, PullPage, PullRequest, PushRequest, PushResponse, Result,
    SpaceId, Transport,
};

pub mod mocks;

/// Probabilities (0.0–1.0) of each fault per call, and the largest delay.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// The request is lost.
    pub drop: f64,
    /// The response is lost after the server applied the request.
    pub lose_response: f64,
    /// The request is delivered twice.
    pub duplicate: f64,
    /// An older push is delivered again before this request.
    pub reorder: f64,
    /// Largest random delay per call.
    pub max_delay: Duration,
}

impl Faults {
    /// No faults.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        lose_response: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
        max_delay: Duration::ZERO,
    };

    /// A hostile network: every kind of fault, often.
    pub fn hostile() -> Faults {
        Faults {
            drop: 0.1,
            lose_response: 0.1,
            duplicate: 0.1,
            reorder: 0.1,
            max_delay: Duration::from_millis(5),
        }
    }
}

/// Traffic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Calls made.
    pub calls: u64,
    /// Envelopes pushed (as the server received them, duplicates included).
    pub envelopes_up: u64,
    /// Envelopes pulled.
    pub envelopes_down: u64,
    /// Bytes sent: envelope bytes plus a fixed per-envelope header (ids and numbers).
    pub bytes_up: u64,
    /// Bytes received, likewise.
    pub bytes_down: u64,
    /// Payloads shared to destinations.
    pub shares: u64,
}

/// Per-envelope bytes besides the envelope itself on a binary wire: record id (32), device
/// sequence and server sequence (8 + 8), a flags byte, a length (4), and supersedes lists
/// counted separately.
pub const ENVELOPE_OVERHEAD: u64 = 32 + 8 + 8 + 1 + 4;

struct State {
    rng: fastrand::Rng,
    faults: Faults,
    old_pushes: Vec<PushRequest>,
}

/// The mock transport. Several devices may share one relay, each through its own transport.
pub struct MockTransport {
    relay: MemoryRelay,
    state: Mutex<State>,
    partitioned: AtomicBool,
    calls: AtomicU64,
    envelopes_up: AtomicU64,
    envelopes_down: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    shared: Mutex<Vec<(String, Vec<u8>)>>,
}

impl std::fmt::Debug for MockTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockTransport")
            .field("partitioned", &self.partitioned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn fault(what: &'static str) -> Error {
    Error::new(ErrorKind::Unavailable, what).temporary()
}

impl MockTransport {
    /// Registry-style name.
    pub const NAME: &'static str = "mock";

    /// A transport to `relay` with no faults.
    pub fn new(relay: MemoryRelay) -> Self {
        Self::with_faults(relay, Faults::NONE, 0)
    }

    /// A transport to `relay` injecting `faults`, drawn from `seed`.
    pub fn with_faults(relay: MemoryRelay, faults: Faults, seed: u64) -> Self {
        Self {
            relay,
            state: Mutex::new(State {
                rng: fastrand::Rng::with_seed(seed),
                faults,
                old_pushes: Vec::new(),
            }),
            partitioned: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            envelopes_up: AtomicU64::new(0),
            envelopes_down: AtomicU64::new(0),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            shared: Mutex::new(Vec::new()),
        }
    }

    /// The relay behind this transport.
    pub fn relay(&self) -> &MemoryRelay {
        &self.relay
    }

    /// Cuts (true) or heals (false) the network.
    pub fn partition(&self, cut: bool) {
        self.partitioned.store(cut, Ordering::SeqCst);
    }

    /// Replaces the fault probabilities (e.g. `Faults::NONE` to heal before a final check).
    pub fn set_faults(&self, faults: Faults) {
        if let Ok(mut s) = self.state.lock() {
            s.faults = faults;
        }
    }

    /// Traffic so far.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            calls: self.calls.load(Ordering::Relaxed),
            envelopes_up: self.envelopes_up.load(Ordering::Relaxed),
            envelopes_down: self.envelopes_down.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            shares: self.shared.lock().map(|s| s.len() as u64).unwrap_or(0),
        }
    }

    /// Payloads sent with [`Transport::share`], in order.
    pub fn shared(&self) -> Vec<(String, Vec<u8>)> {
        self.shared.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Rolls the dice for one call: (drop, lose response, duplicate, replay-an-old-push, delay).
    fn roll(&self) -> Result<(bool, bool, bool, Option<PushRequest>, Duration)> {
        let mut s = self
            .state
            .lock()
            .map_err(|_| Error::internal("mock transport lock poisoned"))?;
        let f = s.faults;
        let drop = s.rng.f64() < f.drop;
        let lose = s.rng.f64() < f.lose_response;
        let dup = s.rng.f64() < f.duplicate;
        let replay = if s.rng.f64() < f.reorder && !s.old_pushes.is_empty() {
            let n = s.old_pushes.len();
            let i = s.rng.usize(..n);
            Some(s.old_pushes[i].clone())
        } else {
            None
        };
        let delay = if f.max_delay.is_zero() {
            Duration::ZERO
        } else {
            f.max_delay.mul_f64(s.rng.f64())
        };
        Ok((drop, lose, dup, replay, delay))
    }

    fn remember(&self, request: &PushRequest) {
        if let Ok(mut s) = self.state.lock() {
            s.old_pushes.push(request.clone());
            if s.old_pushes.len() > 16 {
                s.old_pushes.remove(0);
            }
        }
    }

    async fn enter(&self) -> Result<(bool, bool, bool, Option<PushRequest>)> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if self.partitioned.load(Ordering::SeqCst) {
            return Err(fault("network partitioned"));
        }
        let (drop, lose, dup, replay, delay) = self.roll()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if drop {
            return Err(fault("request lost"));
        }
        Ok((lose, dup, false, replay))
    }

    fn count_up(&self, request: &PushRequest) {
        let n = request.envelopes.len() as u64;
        let bytes: u64 = request
            .envelopes
            .iter()
            .map(|e| e.envelope.len() as u64 + ENVELOPE_OVERHEAD + 8 * e.supersedes.len() as u64)
            .sum();
        self.envelopes_up.fetch_add(n, Ordering::Relaxed);
        self.bytes_up.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[async_trait]
impl Transport for MockTransport {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    async fn push(&self, request: PushRequest) -> Result<PushResponse> {
        let (lose, dup, _, replay) = self.enter().await?;
        if let Some(old) = replay {
            // A stale retransmission arrives first; the server must not be fooled by it.
            let _ = self.relay.push(&old);
        }
        self.count_up(&request);
        let response = self.relay.push(&request)?;
        if dup {
            self.count_up(&request);
            let again = self.relay.push(&request)?;
            if again != response {
                return Err(Error::internal(
                    "relay answered a duplicated push differently",
                ));
            }
        }
        self.remember(&request);
        if lose {
            return Err(fault("response lost after the server applied the push"));
        }
        Ok(response)
    }

    async fn pull(&self, request: PullRequest) -> Result<PullPage> {
        let (lose, _, _, _) = self.enter().await?;
        let page = self.relay.pull(&request)?;
        let bytes: u64 = page
            .envelopes
            .iter()
            .map(|e| e.envelope.len() as u64 + ENVELOPE_OVERHEAD)
            .sum();
        self.envelopes_down
            .fetch_add(page.envelopes.len() as u64, Ordering::Relaxed);
        self.bytes_down.fetch_add(bytes, Ordering::Relaxed);
        if lose {
            return Err(fault("response lost"));
        }
        Ok(page)
    }

    async fn get_key_backup(&self, space: SpaceId) -> Result<Option<Vec<u8>>> {
        self.enter().await?;
        self.relay.get_key_backup(space)
    }

    async fn put_key_backup(&self, space: SpaceId, blob: Vec<u8>) -> Result<()> {
        self.enter().await?;
        self.relay.put_key_backup(space, blob)
    }

    async fn share(&self, destination: &str, sealed: Vec<u8>) -> Result<()> {
        self.enter().await?;
        self.shared
            .lock()
            .map_err(|_| Error::internal("mock transport lock poisoned"))?
            .push((destination.to_owned(), sealed));
        Ok(())
    }
}
