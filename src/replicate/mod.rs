//! Replication to and from other registries (`replication:`).
//!
//! **Push rules** are event-driven: every manifest push, tag and (with `deletes`) delete here is
//! written to the rule's spool on disk before the client is answered, like a webhook; one worker
//! per rule copies the events in order (a delete never overtakes the push it follows), retrying
//! with backoff while the remote is down, and a restart resumes from the spool. A copy moves the
//! whole image: index children first, then blobs the remote lacks (streamed, never held in
//! memory; mounted when the remote already holds them in another repository), the manifest, the
//! referrers whose subject it is and cosign's `sha256-<hex>.sig/.att/.sbom` tags. Every
//! `interval` a reconcile compares each tag with the remote and queues what an outage left
//! behind.
//!
//! **Pull rules** copy the remote's new and changed tags here every `interval`, never deleting
//! anything local: what was copied stays when the remote goes away.

mod pull;
mod push;
pub mod remote;

use crate::auth::policy::Glob;
use crate::config::replication::{Direction, ReplicationConfig};
use crate::registry::{Event, Registry};
use crate::types::names::RepoName;
use remote::{Remote, RemoteError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// One queued change, as spooled on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    /// `push` or `delete`.
    action: String,
    repo: String,
    digest: String,
    #[serde(default)]
    tag: Option<String>,
    /// Unix seconds the change happened here.
    at: u64,
}

/// What `regate replicate status`, the web page and `/metrics` show for a rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub direction: String,
    pub url: String,
    pub queued: usize,
    pub last_success: Option<u64>,
    pub last_error: Option<String>,
    pub last_error_at: Option<u64>,
    /// Seconds between a change here and its copy there, for the last copy.
    pub lag_seconds: Option<u64>,
    pub copied: u64,
    pub failed: u64,
}

pub struct Rule {
    cfg: ReplicationConfig,
    remote: Remote,
    repos: Option<Vec<Glob>>,
    tags: Option<Vec<Glob>>,
    dir: PathBuf,
    queued: AtomicUsize,
    wake: Notify,
    status: Mutex<Status>,
    seq: AtomicU64,
    /// Where the remote holds a blob already (digest -> remote repository), for mounts.
    seen: moka::sync::Cache<String, String>,
}

/// Chunk size of uploads to remotes that refuse a blob in one request.
const CHUNK: usize = 16 << 20;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn matches(globs: &Option<Vec<Glob>>, s: &str) -> bool {
    globs.as_ref().is_none_or(|g| g.iter().any(|g| g.matches(s, "")))
}

/// cosign's tags for the artifacts of `d` (signature, attestation, SBOM).
fn cosign_tags(d: &str) -> Vec<String> {
    let base = d.replacen(':', "-", 1);
    ["sig", "att", "sbom"].iter().map(|s| format!("{base}.{s}")).collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a copy failed: worth retrying, or not.
enum CopyError {
    Retry(String),
    Drop(String),
}

impl From<RemoteError> for CopyError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Failed(m) => CopyError::Retry(m),
            RemoteError::Refused(m) => CopyError::Drop(m),
            RemoteError::NotFound => CopyError::Drop("not found on the remote".into()),
        }
    }
}

impl From<crate::registry::error::ApiError> for CopyError {
    fn from(e: crate::registry::error::ApiError) -> Self {
        CopyError::Retry(format!("local registry: {e}"))
    }
}

impl Rule {
    pub fn new(cfg: &ReplicationConfig, spool: &Path) -> Result<Self, String> {
        let at = format!("replication {}", cfg.name);
        let remote = Remote::new(
            &cfg.url,
            cfg.username.clone(),
            cfg.password.as_ref().map(|p| p.expose().to_owned()),
            cfg.tls_ca.as_deref(),
        )
        .map_err(|e| format!("{at}: {e}"))?;
        let dir = spool.join(&cfg.name);
        std::fs::create_dir_all(dir.join("queue")).map_err(|e| format!("{at}: {}: {e}", dir.display()))?;
        let queued = std::fs::read_dir(dir.join("queue"))
            .map(|rd| rd.filter(|e| e.as_ref().is_ok_and(|e| is_job(&e.path()))).count())
            .unwrap_or(0);
        let mut status: Status = std::fs::read(dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        status.name = cfg.name.clone();
        status.direction = match cfg.direction {
            Direction::Push => "push".into(),
            Direction::Pull => "pull".into(),
        };
        status.url = cfg.url.clone();
        status.queued = queued;
        let globs = |g: &Option<Vec<String>>| g.as_ref().map(|v| v.iter().map(|p| Glob::new(p)).collect());
        Ok(Rule {
            repos: globs(&cfg.repositories),
            tags: globs(&cfg.tags),
            cfg: cfg.clone(),
            remote,
            dir,
            queued: AtomicUsize::new(queued),
            wake: Notify::new(),
            status: Mutex::new(status),
            seq: AtomicU64::new(0),
            seen: moka::sync::Cache::builder().max_capacity(100_000).build(),
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The repository name on the other side (`rename` applied; `back` for pull rules).
    fn renamed(&self, repo: &str, back: bool) -> Option<String> {
        let Some(r) = &self.cfg.rename else {
            return Some(repo.to_owned());
        };
        let (from, to) = if back { (&r.to, &r.from) } else { (&r.from, &r.to) };
        let out = match repo.strip_prefix(from.as_str()) {
            Some(rest) => format!("{to}{rest}"),
            None => repo.to_owned(),
        };
        RepoName::parse(&out).map(|n| n.as_str().to_owned())
    }

    pub fn status(&self) -> Status {
        let mut s = lock(&self.status).clone();
        s.queued = self.queued.load(Ordering::Relaxed);
        s
    }

    fn record(&self, ok: Result<u64, String>) {
        let mut s = lock(&self.status);
        match ok {
            Ok(at) => {
                s.last_success = Some(now());
                s.lag_seconds = Some(now().saturating_sub(at));
                s.copied += 1;
            }
            Err(e) => {
                s.last_error = Some(e);
                s.last_error_at = Some(now());
                s.failed += 1;
            }
        }
        s.queued = self.queued.load(Ordering::Relaxed);
        let snapshot = s.clone();
        drop(s);
        if let Ok(b) = serde_json::to_vec_pretty(&snapshot) {
            let tmp = self.dir.join(".status.json.tmp");
            if std::fs::write(&tmp, b).is_ok() {
                let _ = std::fs::rename(&tmp, self.dir.join("status.json"));
            }
        }
    }

    fn wants(&self, ev: &Event) -> bool {
        if self.cfg.direction != Direction::Push || !matches(&self.repos, ev.repo.as_str()) {
            return false;
        }
        match (ev.action, &ev.tag) {
            // a blob alone is copied with the manifest that names it
            ("push", _) if ev.media_type == "application/octet-stream" => false,
            ("push", Some(t)) => matches(&self.tags, t) || is_cosign_tag(t),
            // pushed by digest: referrers and index children; the worker decides
            ("push", None) => true,
            ("delete", Some(t)) => self.cfg.deletes && matches(&self.tags, t),
            ("delete", None) => self.cfg.deletes,
            _ => false,
        }
    }

    async fn spool(&self, job: &Job) {
        if self.queued.load(Ordering::Relaxed) >= self.cfg.queue_size {
            tracing::warn!(rule = %self.cfg.name, "replication queue full; the next reconcile repairs what is dropped");
            return;
        }
        let Ok(body) = serde_json::to_vec(job) else { return };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = format!("{millis:016}-{seq:08}.json");
        let q = self.dir.join("queue");
        let tmp = q.join(format!(".{name}.tmp"));
        let res = async {
            tokio::fs::write(&tmp, &body).await?;
            tokio::fs::rename(&tmp, q.join(&name)).await
        }
        .await;
        match res {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::Relaxed);
                self.wake.notify_one();
            }
            Err(e) => tracing::error!(rule = %self.cfg.name, error = %e, "cannot spool a replication event"),
        }
    }
}

fn is_cosign_tag(t: &str) -> bool {
    t.starts_with("sha256-") && (t.ends_with(".sig") || t.ends_with(".att") || t.ends_with(".sbom"))
}

fn is_job(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
}

/// The schedule: reconcile for push rules, the pull pass for pull rules.
async fn scheduler(rule: Arc<Rule>, reg: Arc<Registry>) {
    let every = Duration::from_secs(rule.cfg.interval.max(1));
    loop {
        let r = match rule.cfg.direction {
            Direction::Push => rule.reconcile(&reg).await,
            Direction::Pull => rule.pull_pass(&reg).await,
        };
        if let Err(e) = r {
            tracing::warn!(rule = %rule.cfg.name, error = %e, "replication pass failed; next in {every:?}");
            rule.record(Err(e));
        }
        tokio::time::sleep(every).await;
    }
}

pub struct Replicator {
    rules: Vec<Arc<Rule>>,
}

impl Replicator {
    /// The rules of `cfgs`, with their spools under `spool` (not started).
    pub fn new(cfgs: &[ReplicationConfig], spool: &Path) -> Result<Self, String> {
        let rules = cfgs
            .iter()
            .map(|c| Rule::new(c, spool).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Replicator { rules })
    }

    /// Starts the workers and schedules on `reg` (events spooled by an earlier run go first).
    pub fn start(self, reg: Arc<Registry>) -> Arc<Self> {
        for r in &self.rules {
            if r.cfg.direction == Direction::Push {
                tokio::spawn(push::push_worker(r.clone(), reg.clone()));
            }
            tokio::spawn(scheduler(r.clone(), reg.clone()));
        }
        Arc::new(self)
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Spools a registry event for every push rule that wants it; on disk when this returns.
    pub async fn publish(&self, ev: &Event) {
        for r in self.rules.iter().filter(|r| r.wants(ev)) {
            r.spool(&Job {
                action: ev.action.to_owned(),
                repo: ev.repo.as_str().to_owned(),
                digest: ev.digest.to_string(),
                tag: ev.tag.clone(),
                at: now(),
            })
            .await;
        }
    }
}

impl std::fmt::Debug for Replicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").field("rules", &self.rules.len()).finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

/// The rules' state at each scrape of `/metrics` (rule names come from the config).
impl prometheus_client::collector::Collector for Replicator {
    fn encode(&self, mut enc: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;
        let rules: Vec<(RuleLabel, Status)> = self
            .rules
            .iter()
            .map(|r| {
                (
                    RuleLabel {
                        rule: r.cfg.name.clone(),
                    },
                    r.status(),
                )
            })
            .collect();
        type Field = fn(&Status) -> u64;
        let gauges: [(&str, &str, Field); 3] = [
            (
                "regate_replication_queue_depth",
                "Changes waiting to be copied, by rule.",
                |s| s.queued as u64,
            ),
            (
                "regate_replication_last_success_timestamp_seconds",
                "Time of the last successful copy, by rule.",
                |s| s.last_success.unwrap_or(0),
            ),
            (
                "regate_replication_lag_seconds",
                "Seconds between a change and its copy, for the last copy, by rule.",
                |s| s.lag_seconds.unwrap_or(0),
            ),
        ];
        for (name, help, f) in gauges {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (l, s) in &rules {
                ConstGauge::new(f(s)).encode(m.encode_family(l)?)?;
            }
        }
        // counters are named without `_total`: the encoders add it to the samples
        let counters: [(&str, &str, Field); 2] = [
            ("regate_replication_copies", "Copies done, by rule.", |s| s.copied),
            (
                "regate_replication_failures",
                "Copy attempts that failed, by rule.",
                |s| s.failed,
            ),
        ];
        for (name, help, f) in counters {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (l, s) in &rules {
                ConstCounter::new(f(s)).encode(m.encode_family(l)?)?;
            }
        }
        Ok(())
    }
}
