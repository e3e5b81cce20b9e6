//! Prometheus exposition on the `prometheus-client` crate: typed metric families in one
//! registry (plus collectors registered later, such as replication's), encoded per scrape in
//! the format the scraper asks for: OpenMetrics when its `Accept` names
//! `application/openmetrics-text` (as Prometheus does), the Prometheus text format 0.0.4
//! otherwise (the two differ in how counters are named: OpenMetrics names the family without
//! `_total`, which the 0.0.4 parsers do not join to the `_total` samples).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;

const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
];

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    action: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    events: Family<EventLabels, Counter>,
    storage_full: Gauge,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub tokens_issued: Counter,
    pub tokens_denied: Counter,
    pub auth_failures: Counter,
    pub storage_errors: Counter,
    pub webhooks_sent: Counter,
    pub webhooks_failed: Counter,
    pub webhooks_dropped: Counter,
    pub gc_runs: Counter,
    pub gc_blobs_deleted: Counter,
    pub gc_bytes_freed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            events: Family::default(),
            storage_full: Gauge::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            tokens_issued: Counter::default(),
            tokens_denied: Counter::default(),
            auth_failures: Counter::default(),
            storage_errors: Counter::default(),
            webhooks_sent: Counter::default(),
            webhooks_failed: Counter::default(),
            webhooks_dropped: Counter::default(),
            gc_runs: Counter::default(),
            gc_blobs_deleted: Counter::default(),
            gc_bytes_freed: Counter::default(),
        };
        {
            let mut r = lock(&m.registry);
            // counters are registered without `_total`: the encoders add it to the samples
            r.register(
                "regate_http_requests",
                "HTTP requests by route, method and status",
                m.requests.clone(),
            );
            r.register(
                "regate_http_request_duration_seconds",
                "Time to the response headers, by route",
                m.latency.clone(),
            );
            r.register(
                "regate_registry_events",
                "Registry events (push, pull, delete) by action",
                m.events.clone(),
            );
            for (name, help, c) in [
                (
                    "regate_http_request_bytes",
                    "Request body bytes declared by Content-Length",
                    &m.bytes_in,
                ),
                (
                    "regate_http_response_bytes",
                    "Response body bytes declared by Content-Length",
                    &m.bytes_out,
                ),
                ("regate_tokens_issued", "Tokens issued by /token", &m.tokens_issued),
                ("regate_tokens_denied", "Token requests refused", &m.tokens_denied),
                (
                    "regate_auth_failures",
                    "Failed or refused authentications on /v2/",
                    &m.auth_failures,
                ),
                (
                    "regate_storage_errors",
                    "Requests that failed on a storage error",
                    &m.storage_errors,
                ),
                (
                    "regate_webhooks_sent",
                    "Webhook deliveries that succeeded",
                    &m.webhooks_sent,
                ),
                (
                    "regate_webhooks_failed",
                    "Webhook delivery attempts that failed",
                    &m.webhooks_failed,
                ),
                (
                    "regate_webhooks_dropped",
                    "Webhook events dropped (queue full or retries exhausted)",
                    &m.webhooks_dropped,
                ),
                ("regate_gc_runs", "Garbage collections run by the server", &m.gc_runs),
                (
                    "regate_gc_blobs_deleted",
                    "Blobs deleted by scheduled garbage collection",
                    &m.gc_blobs_deleted,
                ),
                (
                    "regate_gc_bytes_freed",
                    "Bytes freed by scheduled garbage collection",
                    &m.gc_bytes_freed,
                ),
            ] {
                r.register(name, help, c.clone());
            }
            r.register(
                "regate_storage_full",
                "1 while the storage is full, as the last write refused for lack of space or the last /readyz found it",
                m.storage_full.clone(),
            );
        }
        m
    }
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
        self.requests
            .get_or_create(&RequestLabels {
                route,
                method: method_label(method),
                status,
            })
            .inc();
        self.latency.get_or_create(&RouteLabels { route }).observe(secs);
    }

    pub fn event(&self, action: &'static str) {
        self.events.get_or_create(&EventLabels { action }).inc();
    }

    pub fn add(c: &Counter, n: u64) {
        c.inc_by(n);
    }

    /// Adds metrics computed at each scrape (their names must not clash with the others').
    pub fn register_collector(&self, c: Box<dyn Collector>) {
        lock(&self.registry).register_collector(c);
    }

    /// The exposition for a scraper that sent `accept`, and its content type.
    pub fn render(&self, accept: Option<&str>) -> (String, &'static str) {
        self.storage_full.set(i64::from(crate::storage::last_seen_full()));
        let openmetrics = accept.is_some_and(|a| a.contains("application/openmetrics-text"));
        let r = lock(&self.registry);
        let mut o = String::new();
        // writing into a String cannot fail; an encoder error would only leave the text short
        let _ = if openmetrics {
            prometheus_client::encoding::text::encode(&mut o, &r)
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut o, &r)
        };
        let ct = if openmetrics {
            OPENMETRICS
        } else {
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE
        };
        (o, ct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_their_names_in_both_formats() {
        let m = Metrics::default();
        m.request("upload", "POST", 201, 0.002);
        m.request("base", "X-CUSTOM", 401, 2.0);
        m.event("push");
        Metrics::add(&m.webhooks_sent, 6);
        let (text, ct) = m.render(None);
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        for line in [
            "# TYPE regate_http_requests_total counter",
            "regate_http_requests_total{route=\"upload\",method=\"POST\",status=\"201\"} 1",
            "regate_http_requests_total{route=\"base\",method=\"other\",status=\"401\"} 1",
            "# TYPE regate_http_request_duration_seconds histogram",
            "regate_http_request_duration_seconds_bucket{route=\"upload\",le=\"0.0025\"} 1",
            "regate_http_request_duration_seconds_bucket{route=\"base\",le=\"+Inf\"} 1",
            "regate_http_request_duration_seconds_count{route=\"base\"} 1",
            "regate_registry_events_total{action=\"push\"} 1",
            "regate_webhooks_sent_total 6",
            "regate_gc_blobs_deleted_total 0",
            "# TYPE regate_storage_full gauge",
            "regate_storage_full 0",
            "# HELP regate_tokens_denied_total Token requests refused.",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
        let (om, ct) = m.render(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"));
        assert_eq!(ct, OPENMETRICS);
        assert!(om.contains("# TYPE regate_http_requests counter\n"), "{om}");
        assert!(om.contains("\nregate_webhooks_sent_total 6\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
