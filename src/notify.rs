//! Webhook notifications in distribution's event envelope
//! (`application/vnd.docker.distribution.events.v1+json`), so existing receivers work.
//!
//! Publishing writes each event, per endpoint, as a file under the spool directory before the
//! request is answered (so neither a restart nor a crash loses an accepted event);
//! one worker per endpoint delivers its files in order with exponential backoff and jitter, and
//! drops what is older than `max_age`. A slow or dead receiver only grows its own spool, up to
//! `queue_size`.

use crate::config::NotificationConfig;
use crate::metrics::Metrics;
use crate::registry::Event;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";

/// Who caused an event, from the request.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub actor: String,
    pub addr: String,
    pub method: String,
    pub user_agent: String,
    pub host: String,
}

struct Endpoint {
    /// Set when a config reload replaced this endpoint's notifier: its worker stops.
    stopped: std::sync::atomic::AtomicBool,
    cfg: NotificationConfig,
    dir: PathBuf,
    queued: AtomicUsize,
    wake: Notify,
    globs: Option<Vec<crate::auth::policy::Glob>>,
}

impl Endpoint {
    fn wants(&self, ev: &Event) -> bool {
        let action_ok = self
            .cfg
            .events
            .as_ref()
            .is_none_or(|e| e.iter().any(|a| a == ev.action));
        let repo_ok = self
            .globs
            .as_ref()
            .is_none_or(|g| g.iter().any(|g| g.matches(ev.repo.as_str(), "")));
        let media_ok = self
            .cfg
            .media_types
            .as_ref()
            .is_none_or(|m| m.iter().any(|t| t == &ev.media_type));
        action_ok && repo_ok && media_ok
    }
}

pub struct Notifier {
    endpoints: Vec<Arc<Endpoint>>,
    metrics: Arc<Metrics>,
    public_url: String,
    seq: std::sync::atomic::AtomicU64,
}

fn now_millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// The envelope for one event.
pub fn envelope(ev: &Event, ctx: &Context, public_url: &str) -> serde_json::Value {
    let mut target = json!({
        "mediaType": ev.media_type,
        "size": ev.size,
        "length": ev.size,
        "digest": ev.digest.to_string(),
        "repository": ev.repo.as_str(),
        "url": format!("{public_url}/v2/{}/manifests/{}", ev.repo, ev.digest),
    });
    if let Some(t) = &ev.tag {
        target["tag"] = json!(t);
    }
    if ev.media_type == "application/octet-stream" {
        target["url"] = json!(format!("{public_url}/v2/{}/blobs/{}", ev.repo, ev.digest));
    }
    json!({ "events": [{
        "id": uuid::Uuid::new_v4().to_string(),
        "timestamp": crate::util::rfc3339(crate::util::now_secs()),
        "action": ev.action,
        "target": target,
        "request": {
            "id": uuid::Uuid::new_v4().to_string(),
            "addr": ctx.addr,
            "host": ctx.host,
            "method": ctx.method,
            "useragent": ctx.user_agent,
        },
        "actor": { "name": ctx.actor },
        "source": { "addr": ctx.host, "instanceID": instance_id() },
    }]})
}

fn instance_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// Hex HMAC-SHA256 of the body, sent as `X-Regate-Signature`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    m.update(body);
    hex::encode(m.finalize().into_bytes())
}

impl Notifier {
    /// Starts one delivery worker per endpoint; events spooled by a previous run go first.
    pub fn start(
        cfgs: &[NotificationConfig],
        spool: &Path,
        public_url: &str,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Self>> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("regate/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(std::io::Error::other)?;
        let mut endpoints = Vec::new();
        for (i, c) in cfgs.iter().enumerate() {
            let d = crate::types::names::Digest::sha256_of(c.url.as_bytes());
            let dir = spool.join(format!("{i}-{}", &d.hex()[..12]));
            std::fs::create_dir_all(&dir)?;
            let queued = std::fs::read_dir(&dir)?
                .filter(|e| e.as_ref().is_ok_and(|e| is_event_file(&e.path())))
                .count();
            endpoints.push(Arc::new(Endpoint {
                stopped: std::sync::atomic::AtomicBool::new(false),
                cfg: c.clone(),
                dir,
                queued: AtomicUsize::new(queued),
                wake: Notify::new(),
                globs: c
                    .repositories
                    .as_ref()
                    .map(|r| r.iter().map(|g| crate::auth::policy::Glob::new(g)).collect()),
            }));
        }
        for ep in &endpoints {
            tokio::spawn(deliver_loop(ep.clone(), client.clone(), metrics.clone()));
        }
        Ok(Arc::new(Notifier {
            endpoints,
            metrics,
            public_url: public_url.to_owned(),
            seq: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Stops the delivery workers (a reload started new ones); spooled events stay on disk for
    /// the new workers.
    pub fn stop(&self) {
        for ep in &self.endpoints {
            ep.stopped.store(true, Ordering::SeqCst);
            ep.wake.notify_one();
        }
    }

    /// Spools the event for every endpoint that wants it. The event is on disk when this
    /// returns (so a crash right after the client's 201 loses nothing); delivery happens in the
    /// background and never slows the request further.
    pub async fn publish(&self, ev: Event, ctx: Context) {
        let wanting: Vec<&Arc<Endpoint>> = self.endpoints.iter().filter(|e| e.wants(&ev)).collect();
        if wanting.is_empty() {
            return;
        }
        let Ok(body) = serde_json::to_vec(&envelope(&ev, &ctx, &self.public_url)) else {
            return;
        };
        for ep in wanting {
            if ep.queued.load(Ordering::Relaxed) >= ep.cfg.queue_size {
                Metrics::add(&self.metrics.webhooks_dropped, 1);
                tracing::warn!(endpoint = %redact(&ep.cfg.url), "webhook queue full; event dropped");
                continue;
            }
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            let name = format!("{:016}-{seq:08}.json", now_millis());
            let tmp = ep.dir.join(format!(".{name}.tmp"));
            let res = async {
                tokio::fs::write(&tmp, &body).await?;
                tokio::fs::rename(&tmp, ep.dir.join(&name)).await
            }
            .await;
            match res {
                Ok(()) => {
                    ep.queued.fetch_add(1, Ordering::Relaxed);
                    ep.wake.notify_one();
                }
                Err(e) => {
                    Metrics::add(&self.metrics.webhooks_dropped, 1);
                    tracing::error!(error = %e, "cannot spool webhook event");
                }
            }
        }
    }
}

fn is_event_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".json") && !n.starts_with('.'))
}

/// The URL without userinfo or query, for logs and pages.
pub fn redact_url(url: &str) -> String {
    redact(url)
}

fn redact(url: &str) -> String {
    let no_query = url.split('?').next().unwrap_or(url);
    match no_query.split_once("://") {
        Some((scheme, rest)) => {
            let host_path = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            format!("{scheme}://{host_path}")
        }
        None => no_query.to_owned(),
    }
}

async fn oldest(dir: &Path) -> Option<PathBuf> {
    let mut rd = tokio::fs::read_dir(dir).await.ok()?;
    let mut best: Option<PathBuf> = None;
    while let Ok(Some(e)) = rd.next_entry().await {
        let p = e.path();
        if is_event_file(&p) && best.as_ref().is_none_or(|b| p < *b) {
            best = Some(p);
        }
    }
    best
}

fn age_of(p: &Path) -> Duration {
    let ms: u128 = p
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('-').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    Duration::from_millis(now_millis().saturating_sub(ms).min(u128::from(u64::MAX)) as u64)
}

async fn deliver_loop(ep: Arc<Endpoint>, client: reqwest::Client, metrics: Arc<Metrics>) {
    let max_backoff = Duration::from_secs(ep.cfg.max_backoff.max(1));
    let mut backoff = Duration::from_secs(1);
    let mut failures: u32 = 0;
    loop {
        if ep.stopped.load(Ordering::SeqCst) {
            return;
        }
        let Some(file) = oldest(&ep.dir).await else {
            // nothing queued: wait for the spooler (or look again now and then)
            let _ = tokio::time::timeout(Duration::from_secs(5), ep.wake.notified()).await;
            continue;
        };
        let done = |ep: &Endpoint| ep.queued.fetch_sub(1, Ordering::Relaxed).max(1);
        if age_of(&file) > Duration::from_secs(ep.cfg.max_age) {
            let _ = tokio::fs::remove_file(&file).await;
            done(&ep);
            Metrics::add(&metrics.webhooks_dropped, 1);
            tracing::warn!(endpoint = %redact(&ep.cfg.url), "webhook event too old; dropped");
            continue;
        }
        let body = match tokio::fs::read(&file).await {
            Ok(b) => Bytes::from(b),
            Err(_) => {
                let _ = tokio::fs::remove_file(&file).await;
                done(&ep);
                continue;
            }
        };
        let mut rb = client
            .post(&ep.cfg.url)
            .timeout(Duration::from_secs(ep.cfg.timeout.max(1)))
            .header("content-type", MEDIA_TYPE);
        for (k, v) in &ep.cfg.headers {
            rb = rb.header(k.as_str(), v.expose());
        }
        if let Some(s) = &ep.cfg.secret {
            rb = rb.header("x-regate-signature", sign(s.expose(), &body));
        }
        let ok = match rb.body(body).send().await {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(endpoint = %redact(&ep.cfg.url), status = r.status().as_u16(), "webhook refused");
                false
            }
            Err(e) => {
                tracing::warn!(endpoint = %redact(&ep.cfg.url), error = %e.without_url(), "webhook delivery failed");
                false
            }
        };
        if ok {
            let _ = tokio::fs::remove_file(&file).await;
            done(&ep);
            Metrics::add(&metrics.webhooks_sent, 1);
            if failures >= 5 {
                tracing::info!(endpoint = %redact(&ep.cfg.url), "webhook endpoint reachable again");
            }
            failures = 0;
            backoff = Duration::from_secs(1);
        } else {
            Metrics::add(&metrics.webhooks_failed, 1);
            failures += 1;
            if failures == 5 {
                tracing::error!(endpoint = %redact(&ep.cfg.url), "webhook endpoint failing; events are kept and retried");
            }
            let jitter = Duration::from_millis(u64::from(rand::random::<u16>() % 250));
            tokio::time::sleep(backoff + jitter).await;
            backoff = (backoff * 2).min(max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_and_redaction() {
        // RFC 4231 test case 2
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(redact("https://u:p@hook.example/x?token=1"), "https://hook.example/x");
    }
}
