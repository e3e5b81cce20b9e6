//! Prometheus text exposition, written by hand: a few counters and one latency histogram,
//! each behind an uncontended lock or an atomic.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Hist {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    n: u64,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str, u16), u64>>,
    latency: Mutex<BTreeMap<&'static str, Hist>>,
    events: Mutex<BTreeMap<&'static str, u64>>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub tokens_denied: AtomicU64,
    pub auth_failures: AtomicU64,
    pub storage_errors: AtomicU64,
    pub webhooks_sent: AtomicU64,
    pub webhooks_failed: AtomicU64,
    pub webhooks_dropped: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_blobs_deleted: AtomicU64,
    pub gc_bytes_freed: AtomicU64,
}

/// The method as a label: a label's values come from a closed set, whatever clients send.
fn method_label(m: &str) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN.iter().find(|k| **k == m).copied().unwrap_or("other")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    pub fn request(&self, route: &'static str, method: &str, status: u16, secs: f64) {
        *lock(&self.requests)
            .entry((route, method_label(method), status))
            .or_default() += 1;
        let mut l = lock(&self.latency);
        let h = l.entry(route).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.n += 1;
    }

    pub fn event(&self, action: &'static str) {
        *lock(&self.events).entry(action).or_default() += 1;
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP regate_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(o, "# TYPE regate_http_requests_total counter");
        for ((r, m, s), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "regate_http_requests_total{{route=\"{r}\",method=\"{m}\",status=\"{s}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP regate_http_request_duration_seconds Time to the response headers, by route."
        );
        let _ = writeln!(o, "# TYPE regate_http_request_duration_seconds histogram");
        for (r, h) in lock(&self.latency).iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "regate_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "regate_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.n
            );
            let _ = writeln!(o, "regate_http_request_duration_seconds_sum{{route=\"{r}\"}} {}", h.sum);
            let _ = writeln!(o, "regate_http_request_duration_seconds_count{{route=\"{r}\"}} {}", h.n);
        }
        let _ = writeln!(
            o,
            "# HELP regate_registry_events_total Registry events (push, pull, delete) by action."
        );
        let _ = writeln!(o, "# TYPE regate_registry_events_total counter");
        for (a, n) in lock(&self.events).iter() {
            let _ = writeln!(o, "regate_registry_events_total{{action=\"{a}\"}} {n}");
        }
        for (name, help, c) in [
            (
                "regate_http_request_bytes_total",
                "Request body bytes declared by Content-Length.",
                &self.bytes_in,
            ),
            (
                "regate_http_response_bytes_total",
                "Response body bytes declared by Content-Length.",
                &self.bytes_out,
            ),
            (
                "regate_tokens_issued_total",
                "Tokens issued by /token.",
                &self.tokens_issued,
            ),
            (
                "regate_tokens_denied_total",
                "Token requests refused.",
                &self.tokens_denied,
            ),
            (
                "regate_auth_failures_total",
                "Failed or refused authentications on /v2/.",
                &self.auth_failures,
            ),
            (
                "regate_storage_errors_total",
                "Requests that failed on a storage error.",
                &self.storage_errors,
            ),
            (
                "regate_webhooks_sent_total",
                "Webhook deliveries that succeeded.",
                &self.webhooks_sent,
            ),
            (
                "regate_webhooks_failed_total",
                "Webhook delivery attempts that failed.",
                &self.webhooks_failed,
            ),
            (
                "regate_webhooks_dropped_total",
                "Webhook events dropped (queue full or retries exhausted).",
                &self.webhooks_dropped,
            ),
            (
                "regate_gc_runs_total",
                "Garbage collections run by the server.",
                &self.gc_runs,
            ),
            (
                "regate_gc_blobs_deleted_total",
                "Blobs deleted by scheduled garbage collection.",
                &self.gc_blobs_deleted,
            ),
            (
                "regate_gc_bytes_freed_total",
                "Bytes freed by scheduled garbage collection.",
                &self.gc_bytes_freed,
            ),
        ] {
            let _ = writeln!(o, "# HELP {name} {help}");
            let _ = writeln!(o, "# TYPE {name} counter");
            let _ = writeln!(o, "{name} {}", c.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            o,
            "# HELP regate_storage_full 1 while the storage is full, as the last write refused for lack of space or the last /readyz found it."
        );
        let _ = writeln!(o, "# TYPE regate_storage_full gauge");
        let _ = writeln!(o, "regate_storage_full {}", u8::from(crate::storage::last_seen_full()));
        o
    }
}
