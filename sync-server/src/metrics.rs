//! Prometheus counters: requests by route and status, how long requests took by route (a
//! histogram), envelopes and bytes moved, errors by class. Labels are route templates and error
//! kinds only: never ids, tokens or payloads.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    durations: Mutex<BTreeMap<String, Durations>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    envelopes_pushed: AtomicU64,
    envelopes_pulled: AtomicU64,
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

/// Upper bounds (seconds) of the request duration histogram's buckets, `+Inf` aside.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One route's request durations: a cumulative histogram as Prometheus keeps it.
#[derive(Debug, Default)]
struct Durations {
    /// Requests that took at most `BUCKETS[i]`, by i.
    le: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    pub(crate) fn request(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((route.to_owned(), status)).or_default() += 1;
        }
        if let Ok(mut m) = self.durations.lock() {
            let d = match m.get_mut(route) {
                Some(d) => d,
                None => m.entry(route.to_owned()).or_default(),
            };
            for (n, bound) in d.le.iter_mut().zip(BUCKETS) {
                if seconds <= bound {
                    *n += 1;
                }
            }
            d.count += 1;
            d.sum += seconds;
        }
    }

    /// Seconds spent answering requests on `route` so far (a route template, such as
    /// `/v1/spaces/{space}/push`), and how many were answered.
    pub fn request_seconds(&self, route: &str) -> (f64, u64) {
        self.durations
            .lock()
            .ok()
            .and_then(|m| m.get(route).map(|d| (d.sum, d.count)))
            .unwrap_or((0.0, 0))
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
        out.push_str(
            "# HELP hearth_request_duration_seconds Time from a request's arrival to its response, by route.\n",
        );
        out.push_str("# TYPE hearth_request_duration_seconds histogram\n");
        if let Ok(m) = self.durations.lock() {
            for (route, d) in m.iter() {
                for (n, bound) in d.le.iter().zip(BUCKETS) {
                    let _ = writeln!(
                        out,
                        "hearth_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "hearth_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    d.count
                );
                let _ = writeln!(
                    out,
                    "hearth_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                    d.sum
                );
                let _ = writeln!(
                    out,
                    "hearth_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    d.count
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

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn request_durations_are_a_cumulative_histogram_per_route() {
        let m = Metrics::default();
        let push = "/v1/spaces/{space}/push";
        m.request(push, 200, 0.002);
        m.request(push, 200, 3.0);
        m.request(push, 413, 20.0);
        m.request("/healthz", 200, 0.0005);
        let text = m.render();
        for line in [
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/push\",le=\"0.001\"} 0",
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/push\",le=\"0.0025\"} 1",
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/push\",le=\"2.5\"} 1",
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/push\",le=\"10\"} 2",
            "hearth_request_duration_seconds_bucket{route=\"/v1/spaces/{space}/push\",le=\"+Inf\"} 3",
            "hearth_request_duration_seconds_count{route=\"/v1/spaces/{space}/push\"} 3",
            "hearth_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
        }
        let (sum, count) = m.request_seconds(push);
        assert_eq!(count, 3);
        assert!((sum - 23.002).abs() < 1e-9, "{sum}");
        assert_eq!(m.request_seconds("/v1/accounts"), (0.0, 0));
    }
}
