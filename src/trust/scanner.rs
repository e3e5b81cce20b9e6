//! A client of Harbor's Pluggable Scanner API v1.1 (what Harbor's Trivy adapter speaks): scans
//! requested on push or on demand run in the background; finished reports are kept in the
//! metadata store beside the registry (`regate/scans/<algo>-<hex>.json`).

use crate::config::trust::{ScannerConfig, Severity};
use crate::config::Secret;
use crate::storage::{layout, Storage};
use crate::types::names::{Digest, RepoName};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCAN_REQUEST: &str = "application/vnd.scanner.adapter.scan.request+json; version=1.0";
const REPORT: &str = "application/vnd.security.vulnerability.report; version=1.1";
/// Largest report kept (Trivy's reports of big images are a few MiB).
const MAX_REPORT: u64 = 32 << 20;
/// Scans running at once at most; more requests wait for the next pull or push.
const MAX_INFLIGHT: usize = 64;
const ATTEMPTS: u32 = 3;
const RETRY_DOWN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
pub struct Vulnerability {
    pub id: String,
    #[serde(default)]
    pub severity: String,
}

#[derive(Debug, Deserialize)]
struct ReportBody {
    #[serde(default)]
    vulnerabilities: Vec<Vulnerability>,
}

pub struct Scanner {
    http: reqwest::Client,
    url: String,
    auth: Option<Secret>,
    pub fail_open: bool,
    pub scan_on_push: bool,
    timeout: Duration,
    store: Arc<Storage>,
    registry_url: String,
    inflight: Mutex<HashSet<Digest>>,
    down: AtomicBool,
    /// When a scan was last asked for while the adapter was down: then at most one every
    /// `RETRY_DOWN` (pulls of unscanned images would otherwise each start one).
    failed_at: Mutex<Option<Instant>>,
    reports: moka::sync::Cache<Digest, Arc<Report>>,
    /// A report older than this is renewed in the background when the image is pulled.
    rescan_after: Option<Duration>,
}

/// A finished report's findings and when it was made.
pub struct Report {
    pub findings: Vec<Vulnerability>,
    at: std::time::SystemTime,
}

fn key(d: &Digest) -> String {
    layout::state("scans", &format!("{}-{}.json", d.algorithm().as_str(), d.hex()))
}

impl Scanner {
    pub fn new(c: &ScannerConfig, store: Arc<Storage>, registry_url: &str) -> Result<Scanner, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("scanner client: {e}"))?;
        Ok(Scanner {
            http,
            url: c.url.trim_end_matches('/').to_owned(),
            auth: c.authorization.clone(),
            fail_open: c.fail_open,
            scan_on_push: c.scan_on_push,
            timeout: Duration::from_secs(c.timeout.max(1)),
            store,
            registry_url: registry_url.trim_end_matches('/').to_owned(),
            inflight: Mutex::new(HashSet::new()),
            down: AtomicBool::new(false),
            failed_at: Mutex::new(None),
            rescan_after: (c.rescan_after > 0).then(|| Duration::from_secs(c.rescan_after)),
            reports: moka::sync::Cache::builder()
                .max_capacity(20_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        })
    }

    /// The last call to the adapter failed to connect or answered 5xx.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, format!("{}{path}", self.url));
        match &self.auth {
            Some(a) => r.header(reqwest::header::AUTHORIZATION, a.expose()),
            None => r,
        }
    }

    /// Asks the adapter who it is (logged at start-up; marks it up or down).
    pub async fn probe(&self) {
        match self.req(reqwest::Method::GET, "/api/v1/metadata").send().await {
            Ok(r) if r.status().is_success() => {
                self.down.store(false, Ordering::Relaxed);
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                tracing::info!(
                    name = v["scanner"]["name"].as_str().unwrap_or("-"),
                    version = v["scanner"]["version"].as_str().unwrap_or("-"),
                    "scanner adapter"
                );
            }
            Ok(r) => {
                self.down.store(r.status().is_server_error(), Ordering::Relaxed);
                tracing::warn!(status = r.status().as_u16(), "scanner metadata refused");
            }
            Err(e) => {
                self.down.store(true, Ordering::Relaxed);
                tracing::warn!(error = %e.without_url(), "scanner unreachable");
            }
        }
    }

    /// The finished report, if there is one, and whether it is due for a rescan.
    pub async fn findings(&self, d: &Digest) -> Option<(Arc<Report>, bool)> {
        let r = match self.reports.get(d) {
            Some(r) => r,
            None => {
                let at = match self.store.stat(&key(d)).await {
                    Ok(Some(m)) => m.modified.unwrap_or_else(std::time::SystemTime::now),
                    _ => return None,
                };
                let bytes = self.report_bytes(d).await?;
                let body: ReportBody = serde_json::from_slice(&bytes).ok()?;
                let r = Arc::new(Report {
                    findings: body.vulnerabilities,
                    at,
                });
                self.reports.insert(d.clone(), r.clone());
                r
            }
        };
        let due = self
            .rescan_after
            .is_some_and(|every| r.at.elapsed().is_ok_and(|age| age >= every));
        Some((r, due))
    }

    /// How often reports are renewed (`scanner.rescan_after`), if at all.
    pub fn rescan_every(&self) -> Option<Duration> {
        self.rescan_after
    }

    pub async fn report_bytes(&self, d: &Digest) -> Option<Bytes> {
        match self.store.read(&key(d), MAX_REPORT).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, digest = %d, "cannot read scan report");
                None
            }
        }
    }

    /// Starts a scan in the background unless one for this digest is running; `token` is the
    /// adapter's pull-only credential for this repository.
    pub fn request(self: &Arc<Self>, repo: &RepoName, d: &Digest, media_type: &str, token: String) {
        if self.is_down() {
            let Ok(mut at) = self.failed_at.lock() else { return };
            if at.is_some_and(|t| t.elapsed() < RETRY_DOWN) {
                return;
            }
            *at = Some(Instant::now());
        }
        {
            let Ok(mut set) = self.inflight.lock() else { return };
            if set.len() >= MAX_INFLIGHT || !set.insert(d.clone()) {
                return;
            }
        }
        let me = self.clone();
        let (repo, d, mt) = (repo.clone(), d.clone(), media_type.to_owned());
        tokio::spawn(async move {
            let started = Instant::now();
            match me.scan(&repo, &d, &mt, &token).await {
                Ok(n) => tracing::info!(target: "regate::audit", event = "scanned", repo = %repo, digest = %d,
                    findings = n, ms = started.elapsed().as_millis() as u64, "scanner"),
                Err(e) => tracing::warn!(repo = %repo, digest = %d, error = %e, "scan failed"),
            }
            if let Ok(mut set) = me.inflight.lock() {
                set.remove(&d);
            }
        });
    }

    async fn scan(&self, repo: &RepoName, d: &Digest, media_type: &str, token: &str) -> Result<usize, String> {
        let body = serde_json::json!({
            "registry": { "url": self.registry_url, "authorization": format!("Bearer {token}") },
            "artifact": { "repository": repo.as_str(), "digest": d.to_string(), "mime_type": media_type },
        });
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        let mut id = None;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
            let r = self
                .req(reqwest::Method::POST, "/api/v1/scan")
                .header(reqwest::header::CONTENT_TYPE, SCAN_REQUEST)
                .header(
                    reqwest::header::ACCEPT,
                    "application/vnd.scanner.adapter.scan.response+json; version=1.0",
                )
                .body(body.clone())
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    self.down.store(false, Ordering::Relaxed);
                    let v: serde_json::Value = r.json().await.map_err(|e| e.without_url().to_string())?;
                    id = v["id"].as_str().map(str::to_owned);
                    break;
                }
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    self.down.store(r.status().is_server_error(), Ordering::Relaxed);
                    last = format!("scan request answered {}", r.status());
                }
                Ok(r) => return Err(format!("scan request refused: {}", r.status())),
                Err(e) => {
                    self.down.store(true, Ordering::Relaxed);
                    last = format!("scanner unreachable: {}", e.without_url());
                }
            }
        }
        let id = id.ok_or(last)?;
        let id: String = percent_encoding::utf8_percent_encode(&id, percent_encoding::NON_ALPHANUMERIC).collect();
        let deadline = Instant::now() + self.timeout;
        let mut failures = 0;
        loop {
            if Instant::now() > deadline {
                return Err("no report before scanner.timeout".into());
            }
            let r = self
                .req(reqwest::Method::GET, &format!("/api/v1/scan/{id}/report"))
                .header(reqwest::header::ACCEPT, REPORT)
                .send()
                .await;
            let wait = match r {
                Ok(r) if r.status() == reqwest::StatusCode::OK => {
                    let bytes = read_limited(r).await?;
                    let parsed: ReportBody =
                        serde_json::from_slice(&bytes).map_err(|e| format!("report is not valid JSON: {e}"))?;
                    self.store.put(&key(d), bytes).await.map_err(|e| e.to_string())?;
                    let n = parsed.vulnerabilities.len();
                    self.reports.insert(
                        d.clone(),
                        Arc::new(Report {
                            findings: parsed.vulnerabilities,
                            at: std::time::SystemTime::now(),
                        }),
                    );
                    return Ok(n);
                }
                Ok(r) if r.status() == reqwest::StatusCode::FOUND => r
                    .headers()
                    .get("refresh-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(2)
                    .clamp(1, 30),
                Ok(r) if r.status().is_server_error() && failures < ATTEMPTS => {
                    failures += 1;
                    2
                }
                Ok(r) => return Err(format!("report request answered {}", r.status())),
                Err(e) if failures < ATTEMPTS => {
                    failures += 1;
                    tracing::debug!(error = %e.without_url(), "report poll failed");
                    2
                }
                Err(e) => {
                    self.down.store(true, Ordering::Relaxed);
                    return Err(format!("scanner unreachable: {}", e.without_url()));
                }
            };
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
    }

    /// Worst-first findings at or above `block` that the allow-list does not cover.
    pub fn blocking<'a>(
        findings: &'a [Vulnerability],
        block: Severity,
        allowed: &dyn Fn(&str) -> bool,
    ) -> Vec<&'a Vulnerability> {
        let mut v: Vec<&Vulnerability> = findings
            .iter()
            .filter(|f| Severity::parse(&f.severity) >= block && !allowed(&f.id))
            .collect();
        v.sort_by_key(|f| std::cmp::Reverse(Severity::parse(&f.severity)));
        v
    }
}

async fn read_limited(mut r: reqwest::Response) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    while let Some(c) = r.chunk().await.map_err(|e| e.without_url().to_string())? {
        if (buf.len() + c.len()) as u64 > MAX_REPORT {
            return Err("report larger than 32 MiB".into());
        }
        buf.extend_from_slice(&c);
    }
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_respects_severity_and_allow_list() {
        let f: Vec<Vulnerability> = serde_json::from_str(
            r#"[{"id":"CVE-1","severity":"High"},{"id":"CVE-2","severity":"Critical"},{"id":"CVE-3","severity":"Low"}]"#,
        )
        .unwrap();
        let none = |_: &str| false;
        let ids = |v: Vec<&Vulnerability>| v.iter().map(|f| f.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(Scanner::blocking(&f, Severity::High, &none)), ["CVE-2", "CVE-1"]);
        assert_eq!(
            ids(Scanner::blocking(&f, Severity::Critical, &|i| i == "CVE-2")),
            Vec::<String>::new()
        );
        assert_eq!(Scanner::blocking(&f, Severity::Low, &none).len(), 3);
    }
}
