//! The server the demo syncs through.

use std::path::Path;
use std::sync::Arc;

use hearth::transport_mock::MockTransport;
use hearth::{MemoryRelay, Result, Store, Transport};

/// A sync server for the demo, and transports to it.
pub struct DemoServer {
    relay: MemoryRelay,
}

impl DemoServer {
    /// Starts the server.
    pub async fn start(_dir: &Path) -> Result<Self> {
        Ok(Self {
            relay: MemoryRelay::default(),
        })
    }

    /// Where it listens.
    pub fn describe(&self) -> String {
        "an in-process relay".into()
    }

    /// A transport for one device.
    pub async fn transport_for(&self, _device: &str) -> Result<Arc<dyn Transport>> {
        Ok(Arc::new(MockTransport::new(self.relay.clone())))
    }

    /// Registers the first device's space and uploads its wrapped key backup.
    pub async fn register(&self, store: &Store) -> Result<()> {
        self.relay
            .put_key_backup(store.space(), store.key_backup()?)
    }

    /// The space's wrapped key backup, as a joining device fetches it.
    pub async fn key_backup(&self, store: &Store) -> Result<Vec<u8>> {
        self.relay
            .get_key_backup(store.space())?
            .ok_or_else(|| hearth::Error::new(hearth::ErrorKind::NotFound, "no key backup"))
    }

    /// Lines describing what the server holds.
    pub async fn what_it_sees(&self, space: hearth::SpaceId) -> Result<Vec<String>> {
        let stats = self.relay.stats()?;
        let mut lines: Vec<String> = self
            .relay
            .entries(space)?
            .iter()
            .map(|e| {
                format!(
                    "#{:<3} record {}…  device {}  {}{} bytes of ciphertext",
                    e.server_seq,
                    e.record,
                    e.device,
                    if e.tombstone { "tombstone, " } else { "" },
                    e.len
                )
            })
            .collect();
        lines.push(format!(
            "{} envelopes, {} bytes of ciphertext, {} tombstones; per entry only a blind id, a device id, a sequence and a padded size",
            stats.envelopes, stats.bytes, stats.tombstones
        ));
        Ok(lines)
    }

    /// Stops the server.
    pub async fn stop(self) -> Result<()> {
        Ok(())
    }
}
