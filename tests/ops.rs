//! Day-two operations: metrics parsed by a real Prometheus text parser, health and readiness,
//! garbage collection with and without --delete-untagged, check-config.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, digest, Server};
use serde_json::json;

async fn push_blob(s: &Server, repo: &str, data: &[u8]) -> String {
    let (u, p) = s.admin();
    let d = digest(data);
    let r = client()
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={d}", s.url))
        .basic_auth(&u, Some(&p))
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    d
}

async fn push_manifest(s: &Server, repo: &str, reference: &str, config: &str, layers: &[&str]) -> String {
    let (u, p) = s.admin();
    let m = json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config,"size":2},
        "layers": layers.iter().map(|l| json!({"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":l,"size":5})).collect::<Vec<_>>()});
    let body = serde_json::to_vec(&m).unwrap();
    let r = client()
        .put(format!("{}/v2/{repo}/manifests/{reference}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    digest(&body)
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let s = Server::start("");
    let c = client();
    assert_eq!(c.get(format!("{}/healthz", s.url)).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{}/readyz", s.url)).send().await.unwrap().status(), 200);
    push_blob(&s, "admin/x", b"hello").await;
    c.get(format!("{}/v2/", s.url)).send().await.unwrap();
    c.get(format!("{}/token", s.url))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    let r = c.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let path = s.dir.path().join("metrics.txt");
    std::fs::write(&path, &text).unwrap();
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
fams = {f.name: f for f in text_string_to_metric_families(open(sys.argv[1]).read())}
def val(name, **labels):
    return sum(s.value for s in fams[name].samples if s.name.endswith('_total') and all(s.labels.get(k) == v for k, v in labels.items()))
assert val('regate_http_requests', route='upload', method='POST', status='201') == 1, fams['regate_http_requests'].samples
assert val('regate_http_requests', route='base', status='401') == 1
assert val('regate_registry_events', action='push') == 1
assert val('regate_tokens_denied') == 1
assert fams['regate_http_request_duration_seconds'].type == 'histogram'
print('ok')
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        text
    );
}

#[tokio::test]
async fn readiness_fails_when_storage_is_gone() {
    let s = Server::start("");
    std::fs::remove_dir_all(s.data()).unwrap();
    let r = client().get(format!("{}/readyz", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        client()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

fn gc(s: &Server, args: &[&str]) -> String {
    let out = common::regate()
        .arg("gc")
        .args(args)
        .arg("--config")
        .arg(s.dir.path().join("regate.yaml"))
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn blob_exists(s: &Server, d: &str) -> bool {
    let hex = d.strip_prefix("sha256:").unwrap();
    s.data()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
        .exists()
}

#[tokio::test]
async fn gc_frees_only_unreferenced_and_respects_grace() {
    let s = Server::start("");
    let cfg = push_blob(&s, "admin/app", b"{}").await;
    let kept = push_blob(&s, "admin/app", b"layer").await;
    let orphan = push_blob(&s, "admin/app", b"orphan").await;
    let m1 = push_manifest(&s, "admin/app", "v1", &cfg, &[&kept]).await;
    // an untagged manifest (pushed by digest) referencing its own layer
    let only_untagged = push_blob(&s, "admin/app", b"untag").await;
    let m2 = push_manifest(&s, "admin/app", "latest", &cfg, &[&only_untagged]).await;
    let (u, p) = s.admin();
    let r = client()
        .delete(format!("{}/v2/admin/app/manifests/latest", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    // inside the grace period nothing goes
    let out = gc(&s, &["--dry-run"]);
    assert!(out.contains("0 blobs"), "{out}");
    // dry run with no grace names the orphan, deletes nothing
    let out = gc(&s, &["--dry-run", "--grace", "0s"]);
    assert!(out.contains(&orphan) && !out.contains(&kept), "{out}");
    assert!(blob_exists(&s, &orphan));
    // real run
    let out = gc(&s, &["--grace", "0s"]);
    assert!(out.contains(&format!("deleted blob {orphan}")), "{out}");
    assert!(!blob_exists(&s, &orphan));
    assert!(blob_exists(&s, &kept) && blob_exists(&s, &cfg) && blob_exists(&s, &only_untagged));
    // untagged manifests and what only they referenced go with --delete-untagged
    let out = gc(&s, &["--grace", "0s", "--delete-untagged"]);
    assert!(out.contains(&format!("deleted manifest admin/app@{m2}")), "{out}");
    assert!(!out.contains(&m1), "{out}");
    assert!(!blob_exists(&s, &only_untagged));
    assert!(blob_exists(&s, &kept));
    // the tagged image still pulls
    let r = client()
        .get(format!("{}/v2/admin/app/manifests/v1", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{}/v2/admin/app/blobs/{kept}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"layer");
}

#[test]
fn check_config_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        format!(
            "listen: 127.0.0.1:0\nstorage: {{ backend: fs, fs: {{ root: {} }} }}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| common::regate().args(args).output().unwrap();
    let out = run(&["check-config", "--config", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "tls: { cert: /nonexistent/c.pem, key: /nonexistent/k.pem }\nauth: { htpasswd: /nonexistent/h, token_ttl: 0 }\n").unwrap();
    let out = run(&["check-config", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.cert") && err.contains("auth.htpasswd") && err.contains("auth.token_ttl"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    // --schema-only skips the files but still checks values
    let out = run(&["check-config", "--schema-only", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("token_ttl") && !err.contains("tls.cert"), "{err}");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, "listen: 127.0.0.1:0\nstorag: {}\n").unwrap();
    let out = run(&["check-config", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("storag"));
    // serve with a broken config: exit 2, one sentence, no panic
    let out = run(&["serve", "--config", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        run(&["gc", "--grace", "soon", "--config", good.to_str().unwrap()])
            .status
            .code(),
        Some(2)
    );
}

#[tokio::test]
async fn json_logs_and_a_separate_audit_file() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.log");
    let s = Server::start_in(
        dir,
        &format!("log: {{ format: json, audit_file: {} }}\n", audit.display()),
    );
    let (u, p) = s.admin();
    let t = common::token(&s, Some((&u, &p)), &["repository:admin/x:pull,push"]).await;
    assert!(!t.is_empty());
    push_blob(&s, "admin/x", b"audited").await;
    client()
        .get(format!("{}/token", s.url))
        .basic_auth("mallory", Some("guess"))
        .send()
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&audit).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.iter().filter(|l| l["event"] == "push").count() >= 1
            && lines.iter().any(|l| l["event"] == "auth_failed")
        {
            break lines;
        }
        assert!(std::time::Instant::now() < deadline, "audit file incomplete: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        lines.iter().all(|l| l["target"] == "regate::audit"),
        "only audit events in the audit file"
    );
    let issued = lines.iter().find(|l| l["event"] == "token_issued").unwrap();
    assert_eq!(issued["account"], "admin");
    assert_eq!(issued["granted"], "repository:admin/x:pull,push");
    assert!(lines
        .iter()
        .any(|l| l["event"] == "push" && l["repo"] == "admin/x" && l["account"] == "admin"));
    assert!(lines
        .iter()
        .any(|l| l["event"] == "auth_failed" && l["account"] == "mallory" && l["ip"] == "127.0.0.1"));
    // stderr is JSON lines too, with the access log
    let logs = s.logs();
    let access: Vec<serde_json::Value> = logs.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(
        access
            .iter()
            .any(|l| l["target"] == "regate::access" && l["route"] == "upload" && l["status"] == 201),
        "{logs}"
    );
    assert!(!logs.contains(&p) && !std::fs::read_to_string(&audit).unwrap().contains("guess"));
}

#[tokio::test]
async fn retention_keeps_newest_and_named_tags() {
    let s = Server::start(
        "retention:\n  - { repository: \"admin/*\", keep_last: 2, keep_tags: [\"stable\", \"release-*\"] }\n",
    );
    let cfg = push_blob(&s, "admin/app", b"{}").await;
    let mut digests = Vec::new();
    for (i, tag) in ["release-1", "stable", "old1", "old2", "new1", "new2"]
        .iter()
        .enumerate()
    {
        let layer = push_blob(&s, "admin/app", format!("layer-{i}").as_bytes()).await;
        digests.push((
            tag.to_string(),
            push_manifest(&s, "admin/app", tag, &cfg, &[&layer]).await,
            layer,
        ));
        // tag age is the tag link's modification time; make the order unambiguous
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = gc(&s, &["--dry-run", "--grace", "0s"]);
    assert!(out.contains("would delete tag admin/app:old1 (retention)"), "{out}");
    assert!(out.contains("would delete tag admin/app:old2 (retention)"), "{out}");
    for kept in ["release-1", "stable", "new1", "new2"] {
        assert!(!out.contains(&format!("admin/app:{kept} ")), "{kept}: {out}");
    }
    let out = gc(&s, &["--grace", "0s"]);
    assert!(out.contains("deleted tag admin/app:old1"), "{out}");
    let (u, p) = s.admin();
    let tags: serde_json::Value = client()
        .get(format!("{}/v2/admin/app/tags/list", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tags["tags"], json!(["new1", "new2", "release-1", "stable"]));
    // the manifests only the deleted tags referenced, and their layers, are gone too
    let old1 = digests.iter().find(|d| d.0 == "old1").unwrap();
    assert!(out.contains(&format!("deleted manifest admin/app@{}", old1.1)), "{out}");
    assert!(!blob_exists(&s, &old1.2));
    let new2 = digests.iter().find(|d| d.0 == "new2").unwrap();
    assert!(blob_exists(&s, &new2.2));
}

#[tokio::test]
async fn scrub_finds_rotten_blobs() {
    let s = Server::start("");
    let good = push_blob(&s, "admin/x", b"good bytes").await;
    let rotten = push_blob(&s, "admin/x", b"will rot").await;
    let run = || {
        common::regate()
            .args(["scrub", "--config"])
            .arg(s.dir.path().join("regate.yaml"))
            .current_dir(s.dir.path())
            .output()
            .unwrap()
    };
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 blobs checked, 0 corrupt"));
    let hex = rotten.strip_prefix("sha256:").unwrap();
    std::fs::write(
        s.data()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])),
        b"bit rot",
    )
    .unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "corrupt blob {rotten} (content hashes to {})",
            digest(b"bit rot")
        )),
        "{text}"
    );
    assert!(!text.contains(&good));
}

#[tokio::test]
async fn scheduled_gc_and_abandoned_uploads() {
    let s = Server::start("gc: { interval: 1, grace: 0, upload_max_age: 0 }\n");
    let orphan = push_blob(&s, "admin/x", b"nobody references me").await;
    let (u, p) = s.admin();
    let r = client()
        .post(format!("{}/v2/admin/x/blobs/uploads/", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let upload_gone = client()
            .get(&loc)
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap()
            .status()
            == 404;
        // the run's log line comes once it has finished, a moment after the blob is gone
        if !blob_exists(&s, &orphan) && upload_gone && s.logs().contains("scheduled garbage collection") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "scheduled gc did not run");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let m = client()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deleted: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("regate_gc_blobs_deleted_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(deleted >= 1, "{m}");
}

#[tokio::test]
async fn sighup_reloads_rules_and_refuses_a_broken_config() {
    let dir = tempfile::tempdir().unwrap();
    let hp = common::htpasswd(dir.path(), &[("alice", "pw")]);
    let base = format!("auth: {{ htpasswd: {} }}\n", hp.display());
    let s = Server::start_in(
        dir,
        &format!("{base}access:\n  - {{ repository: \"alice/*\", actions: [pull] }}\n"),
    );
    let cfg_path = s.dir.path().join("regate.yaml");
    let original = std::fs::read_to_string(&cfg_path).unwrap();
    let granted = |t: &str| -> serde_json::Value {
        let p = t.split('.').nth(1).unwrap();
        use base64::Engine as _;
        let v: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap();
        v["access"].clone()
    };
    let scope = ["repository:alice/app:pull,push"];
    let t = common::token(&s, Some(("alice", "pw")), &scope).await;
    assert_eq!(granted(&t)[0]["actions"], json!(["pull"]));
    let hup = || {
        std::process::Command::new("kill")
            .arg("-HUP")
            .arg(s.child.id().to_string())
            .status()
            .unwrap();
    };
    let wait_log = |needle: &str, count: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.logs().matches(needle).count() < count {
            assert!(
                std::time::Instant::now() < deadline,
                "no {needle:?} in the log: {}",
                s.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // new rules and a network allowlist, live
    std::fs::write(
        &cfg_path,
        original.replace("actions: [pull] }", "actions: [pull, push] }"),
    )
    .unwrap();
    hup();
    wait_log("config reloaded", 1);
    let t = common::token(&s, Some(("alice", "pw")), &scope).await;
    assert_eq!(granted(&t)[0]["actions"], json!(["pull", "push"]));
    // a broken file is refused and the running config stays
    std::fs::write(&cfg_path, "listen: [this is not an address\n").unwrap();
    hup();
    wait_log("config reload refused", 1);
    let t = common::token(&s, Some(("alice", "pw")), &scope).await;
    assert_eq!(granted(&t)[0]["actions"], json!(["pull", "push"]));
    // an allowlist that excludes us takes effect without a restart
    std::fs::write(&cfg_path, format!("{original}network: {{ allow: [10.0.0.0/8] }}\n")).unwrap();
    hup();
    wait_log("config reloaded", 2);
    assert_eq!(
        client()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
}

fn age_blob(s: &Server, d: &str, hours: u32) {
    let hex = d.strip_prefix("sha256:").unwrap();
    let p = s
        .data()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]));
    let st = std::process::Command::new("touch")
        .arg("-d")
        .arg(format!("{hours} hours ago"))
        .arg(&p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[tokio::test]
async fn gc_while_pushing_loses_nothing() {
    let s = Server::start("");
    let (u, p) = s.admin();
    let cfg = push_blob(&s, "admin/app", b"{}").await;
    // an old blob nobody references any more, and one that a new push will reference again
    let garbage = push_blob(&s, "admin/app", b"old garbage").await;
    let reused = push_blob(&s, "admin/app", b"old but reused").await;
    for d in [&garbage, &reused, &cfg] {
        age_blob(&s, d, 3);
    }
    // a client checks the old blobs exist (as docker does before skipping an upload): that
    // refreshes them, so GC's grace period protects them from here on
    for d in [&reused, &cfg] {
        let r = client()
            .head(format!("{}/v2/admin/app/blobs/{d}", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let out = gc(&s, &["--grace", "1h"]);
    assert!(out.contains(&format!("deleted blob {garbage}")), "{out}");
    assert!(
        blob_exists(&s, &reused) && blob_exists(&s, &cfg),
        "a blob just checked by a client was collected: {out}"
    );
    let gc_loop = {
        let cfgp = s.dir.path().join("regate.yaml");
        let dir = s.dir.path().to_owned();
        std::thread::spawn(move || {
            let mut runs = 0;
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_secs(4) {
                let out = common::regate()
                    .args(["gc", "--grace", "1h", "--config"])
                    .arg(&cfgp)
                    .current_dir(&dir)
                    .output()
                    .unwrap();
                assert!(out.status.success());
                runs += 1;
            }
            runs
        })
    };
    // meanwhile: many pushes, some reusing the old blob after checking it exists (as docker does)
    let mut tasks = Vec::new();
    for i in 0..40 {
        let (url, u, p, cfg, reused) = (s.url.clone(), u.clone(), p.clone(), cfg.clone(), reused.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            // like docker: check a blob exists before deciding not to upload it, upload it if not
            let ensure = |d: String, data: &'static [u8]| {
                let (c, url, u, p) = (c.clone(), url.clone(), u.clone(), p.clone());
                async move {
                    let r = c
                        .head(format!("{url}/v2/admin/app/blobs/{d}"))
                        .basic_auth(&u, Some(&p))
                        .send()
                        .await
                        .unwrap();
                    if r.status() == 404 {
                        let r = c
                            .post(format!("{url}/v2/admin/app/blobs/uploads/?digest={d}"))
                            .basic_auth(&u, Some(&p))
                            .body(data)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 201);
                    } else {
                        assert_eq!(r.status(), 200);
                    }
                    d
                }
            };
            ensure(cfg.clone(), b"{}").await;
            let layer = if i % 2 == 0 {
                ensure(reused, b"old but reused").await
            } else {
                let data = format!("fresh layer {i}");
                let d = digest(data.as_bytes());
                let r = c
                    .post(format!("{url}/v2/admin/app/blobs/uploads/?digest={d}"))
                    .basic_auth(&u, Some(&p))
                    .body(data)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                d
            };
            let m = json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
                "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cfg,"size":2},
                "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":layer,"size":1}]});
            let r = c
                .put(format!("{url}/v2/admin/app/manifests/t{i}"))
                .basic_auth(&u, Some(&p))
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(serde_json::to_vec(&m).unwrap())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "push {i} failed: {}", r.text().await.unwrap());
            layer
        }));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut layers = Vec::new();
    for t in tasks {
        layers.push(t.await.unwrap());
    }
    let runs = gc_loop.join().unwrap();
    assert!(runs >= 2, "gc ran {runs} times");
    // everything pushed pulls back; the old garbage is gone; the reused old blob is not
    for (i, layer) in layers.iter().enumerate() {
        let r = client()
            .get(format!("{}/v2/admin/app/manifests/t{i}", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let r = client()
            .get(format!("{}/v2/admin/app/blobs/{layer}", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "layer of t{i} lost");
    }
    assert!(!blob_exists(&s, &garbage), "old unreferenced blob was not collected");
    assert!(
        blob_exists(&s, &reused) && blob_exists(&s, &cfg),
        "referenced blobs survive"
    );
}

/// An upload's progress record (its length and running hash) is written without waiting for the
/// disk: one that a power loss cut short (empty, or half a record) is no shortcut, the file is
/// hashed again, and the upload still finishes correctly.
#[tokio::test]
async fn a_truncated_progress_record_means_hashing_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_in(dir, "storage:\n  backend: fs\n  fs: { root: ./data, fsync: true }\n");
    let (u, p) = s.admin();
    let c = client();
    for (i, bad) in ["", "half"].iter().enumerate() {
        let data: Vec<u8> = (0..300_000u32).map(|x| (x as u8) ^ (i as u8)).collect();
        let d = digest(&data);
        let r = c
            .post(format!("{}/v2/ops/chunks/blobs/uploads/", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let id = loc.rsplit('/').next().unwrap().split('?').next().unwrap().to_owned();
        let r = c
            .patch(&loc)
            .basic_auth(&u, Some(&p))
            .header("content-range", format!("0-{}", data.len() - 1))
            .body(data.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let loc = r.headers()["location"].to_str().unwrap().to_owned();
        let record = s.data().join(format!(
            "docker/registry/v2/repositories/ops/chunks/_uploads/{id}/regate-progress"
        ));
        let text = std::fs::read_to_string(&record).unwrap();
        assert!(text.starts_with(&format!("{} ", data.len())), "{text}");
        let bad = if bad.is_empty() {
            String::new()
        } else {
            text[..text.len() / 2].to_owned()
        };
        std::fs::write(&record, bad).unwrap();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let r = c
            .put(format!("{loc}{sep}digest={d}"))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let got = c
            .get(format!("{}/v2/ops/chunks/blobs/{d}", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), data.as_slice());
    }
}
