//! The background loops a running server keeps: scheduled garbage collection, the purge of
//! abandoned uploads when collection is not scheduled, the trust engine's scan workers and
//! scheduled rescans. Each is started once, here.

use crate::config::Config;
use crate::gateway::App;
use crate::metrics::Metrics;
use crate::types::scope::{Action, Scope};
use std::sync::Arc;
use std::time::Duration;

pub fn start(cfg: &Config, app: &Arc<App>) {
    if cfg.gc.upload_purge_interval > 0 && cfg.gc.interval == 0 {
        // full collections are not scheduled: abandoned uploads are still purged
        purge_uploads(app, cfg);
    }
    if cfg.gc.interval > 0 {
        collect(app, cfg);
    }
    if let Some(t) = &app.trust {
        t.start();
        if let Some(every) = t.rescan_every() {
            rescans(app, every);
        }
    }
}

fn purge_uploads(app: &App, cfg: &Config) {
    let store = app.registry.store().clone();
    let every = Duration::from_secs(cfg.gc.upload_purge_interval);
    let max_age = Duration::from_secs(cfg.gc.upload_max_age);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match crate::gc::purge_uploads(&store, max_age).await {
                Ok(p) if !p.is_empty() => tracing::info!(uploads = p.len(), "purged abandoned uploads"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "purging abandoned uploads failed"),
            }
        }
    });
}

fn collect(app: &App, cfg: &Config) {
    let store = app.registry.store().clone();
    let every = Duration::from_secs(cfg.gc.interval);
    let opts = crate::gc::Options {
        dry_run: false,
        delete_untagged: cfg.gc.delete_untagged,
        grace: Duration::from_secs(cfg.gc.grace),
        upload_max_age: Duration::from_secs(cfg.gc.upload_max_age),
        retention: cfg.retention.clone(),
    };
    let metrics = app.metrics.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            match crate::gc::run(&store, opts.clone()).await {
                Ok(r) => {
                    Metrics::add(&metrics.gc_runs, 1);
                    Metrics::add(&metrics.gc_blobs_deleted, r.blobs.len() as u64);
                    if !r.lfs {
                        // LFS cannot delete: nothing is freed there
                        Metrics::add(&metrics.gc_bytes_freed, r.blobs.iter().map(|(_, n)| n).sum());
                    }
                    tracing::info!(
                        tags = r.tags.len(),
                        blobs = r.blobs.len(),
                        bytes = r.blobs.iter().map(|(_, n)| n).sum::<u64>(),
                        manifests = r.manifests.len(),
                        uploads = r.uploads.len(),
                        "scheduled garbage collection"
                    )
                }
                Err(e) => tracing::error!(error = %e, "scheduled garbage collection failed"),
            }
        }
    });
}

/// The tags that matter are rescanned on a schedule, not only when pulled; the scanner reads
/// each image with a pull-only token for that one repository.
fn rescans(app: &Arc<App>, every: Duration) {
    let app = app.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(t) = &app.trust else { return };
            let mint = |n: &crate::types::RepoName| {
                let scope = Scope::repository(n.as_str(), &[Action::Pull]);
                app.tokens
                    .keys
                    .issue("regate-scanner", &[], true, &[scope], crate::util::now_secs())
                    .ok()
            };
            let n = t.rescan_pass(&app.registry, &mint).await;
            if n > 0 {
                tracing::info!(scans = n, "scheduled rescan");
            }
        }
    });
}
