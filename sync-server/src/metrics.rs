//! Prometheus counters: requests by route and status, envelopes and bytes moved, errors by
//! class. Labels are route templates and error kinds only: never ids, tokens or payloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    envelopes_pushed: AtomicU64,
    envelopes_pulled: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

impl Metrics {
    pub(crate) fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), status)).or_default() += 1;
        }
    }

    pub(crate) fn error(&self, class: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(class).or_default() += 1;
        }
    }

    pub(crate) fn pushed(&self, envelopes: usize, bytes: usize) {
        self.envelopes_pushed
            .fetch_add(envelopes as u64, Ordering::Relaxed);
        self.request_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn pulled(&self, envelopes: usize, bytes: usize) {
        self.envelopes_pulled
            .fetch_add(envelopes as u64, Ordering::Relaxed);
        self.response_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Envelopes received in pushes so far (duplicates included).
    pub fn envelopes_pushed(&self) -> u64 {
        self.envelopes_pushed.load(Ordering::Relaxed)
    }

    /// Requests answered so far, all routes and statuses.
    pub fn requests(&self) -> u64 {
        self.requests.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// The counters in Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP hearth_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE hearth_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "hearth_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP hearth_errors_total Failed requests by error class.\n");
        out.push_str("# TYPE hearth_errors_total counter\n");
        if let Ok(m) = self.errors.lock() {
            for (class, n) in m.iter() {
                let _ = writeln!(out, "hearth_errors_total{{class=\"{class}\"}} {n}");
            }
        }
        let counters = [
            (
                "hearth_envelopes_pushed_total",
                "Envelopes received in pushes.",
                &self.envelopes_pushed,
            ),
            (
                "hearth_envelopes_pulled_total",
                "Envelopes served in pulls.",
                &self.envelopes_pulled,
            ),
            (
                "hearth_push_bytes_total",
                "Bytes of push request bodies.",
                &self.request_bytes,
            ),
            (
                "hearth_pull_bytes_total",
                "Bytes of pull response bodies.",
                &self.response_bytes,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        out
    }
}
