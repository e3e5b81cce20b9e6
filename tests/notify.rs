//! Webhooks: the exact envelope a receiver gets, signatures, retries while the receiver is
//! failing, and a restart in between that loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, digest, Server};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(http::HeaderMap, serde_json::Value)>>>,
    status: Arc<AtomicU16>,
    url: String,
}

async fn receiver() -> Receiver {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r = Receiver {
        url: format!("http://{}/hook", l.local_addr().unwrap()),
        ..Default::default()
    };
    r.status.store(200, Ordering::SeqCst);
    let rc = r.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let rc = rc.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rc = rc.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let b = body.collect().await.unwrap().to_bytes();
                        let code = rc.status.load(Ordering::SeqCst);
                        if code == 200 {
                            rc.got
                                .lock()
                                .unwrap()
                                .push((parts.headers, serde_json::from_slice(&b).unwrap()));
                        }
                        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
                        *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    r
}

async fn wait_for(r: &Receiver, n: usize, secs: u64) -> Vec<(http::HeaderMap, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = r.got.lock().unwrap().clone();
        if got.len() >= n {
            return got;
        }
        assert!(Instant::now() < deadline, "got {} of {n} webhook events", got.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn push(s: &Server, repo: &str, tag: &str, layer: &[u8]) -> (String, String) {
    let (u, p) = s.admin();
    let c = client();
    let cfg = b"{}";
    for b in [&cfg[..], layer] {
        let r = c
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={}", s.url, digest(b)))
            .basic_auth(&u, Some(&p))
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let m = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":digest(cfg),"size":2},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest(layer),"size":layer.len()}]});
    let body = serde_json::to_vec(&m).unwrap();
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .header("user-agent", "test-agent/1")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    (digest(&body), digest(layer))
}

#[tokio::test]
async fn media_type_filter() {
    let rx = receiver().await;
    let s = Server::start(&format!(
        "notifications:\n  - url: {}\n    media_types: [application/vnd.oci.image.manifest.v1+json]\n",
        rx.url
    ));
    let (md, _) = push(&s, "admin/app", "v1", b"layer-1").await;
    wait_for(&rx, 1, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the manifest push, no blob pushes: {got:?}");
    assert_eq!(got[0].1["events"][0]["target"]["digest"], md);
}

#[tokio::test]
async fn envelope_filter_and_signature() {
    let rx = receiver().await;
    let s = Server::start(&format!(
        "notifications:\n  - url: {}\n    secret: s3cr3t\n    events: [push, delete]\n    repositories: [\"admin/*\"]\n    headers: {{ Authorization: \"Bearer hooktoken\" }}\n",
        rx.url
    ));
    let (md, _) = push(&s, "admin/app", "v1", b"layer-1").await;
    // pulls are filtered out by `events`, other repositories by `repositories`
    let (u, p) = s.admin();
    client()
        .get(format!("{}/v2/admin/app/manifests/v1", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    push(&s, "other/app", "v1", b"layer-2").await;
    let r = client()
        .delete(format!("{}/v2/admin/app/manifests/v1", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // admin/app: 2 blob pushes + 1 manifest push + 1 delete
    let got = wait_for(&rx, 4, 20).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // nothing else may follow
    let got_all = rx.got.lock().unwrap().clone();
    assert_eq!(got_all.len(), 4, "{got_all:?}");
    let man = got
        .iter()
        .map(|(_, v)| &v["events"][0])
        .find(|e| e["action"] == "push" && e["target"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json")
        .unwrap();
    assert_eq!(man["target"]["repository"], "admin/app");
    assert_eq!(man["target"]["digest"], md);
    assert_eq!(man["target"]["tag"], "v1");
    assert_eq!(man["actor"]["name"], "admin");
    assert_eq!(man["request"]["method"], "PUT");
    assert_eq!(man["request"]["useragent"], "test-agent/1");
    assert!(man["timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(man["id"].as_str().unwrap().len() >= 32);
    assert!(got.iter().any(|(_, v)| v["events"][0]["action"] == "delete"));
    for (h, v) in &got {
        assert_eq!(h["content-type"], "application/vnd.docker.distribution.events.v1+json");
        assert_eq!(h["authorization"], "Bearer hooktoken");
        let body = serde_json::to_vec(v).unwrap();
        // the signature covers the exact body bytes; re-serialising serde_json keeps them equal
        let sig = h["x-regate-signature"].to_str().unwrap();
        assert_eq!(sig, regate::notify::sign("s3cr3t", &body));
    }
    assert!(!s.logs().contains("s3cr3t") && !s.logs().contains("hooktoken"));
}

#[tokio::test]
async fn failing_receiver_gets_everything_after_retries_and_restart() {
    let rx = receiver().await;
    rx.status.store(503, Ordering::SeqCst);
    let s = Server::start(&format!(
        "notifications:\n  - url: {}\n    events: [push]\n    max_backoff: 1\n",
        rx.url
    ));
    let t = Instant::now();
    push(&s, "admin/a", "v1", b"one").await;
    // a dead receiver does not slow pushes
    assert!(t.elapsed() < Duration::from_secs(5));
    // restart while every event is still waiting
    let s = s.restart();
    push(&s, "admin/b", "v1", b"two").await;
    rx.status.store(200, Ordering::SeqCst);
    // 3 events per push (config blob, layer, manifest), none lost across the restart
    let got = wait_for(&rx, 6, 30).await;
    let repos: Vec<String> = got
        .iter()
        .map(|(_, v)| v["events"][0]["target"]["repository"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(repos.iter().filter(|r| *r == "admin/a").count(), 3, "{repos:?}");
    assert_eq!(repos.iter().filter(|r| *r == "admin/b").count(), 3, "{repos:?}");
    // delivered in order: everything of the first push before the second
    let first_b = repos.iter().position(|r| r == "admin/b").unwrap();
    assert!(repos[..first_b].iter().all(|r| r == "admin/a"));
    let m = client()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("regate_webhooks_sent_total 6"), "{m}");
}

#[tokio::test]
async fn sighup_switches_webhook_endpoints() {
    let (a, b) = (receiver().await, receiver().await);
    let s = Server::start(&format!("notifications:\n  - url: {}\n    events: [push]\n", a.url));
    push(&s, "admin/one", "v1", b"first").await;
    wait_for(&a, 3, 20).await;
    let cfg = s.dir.path().join("regate.yaml");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(&a.url, &b.url);
    std::fs::write(&cfg, text).unwrap();
    std::process::Command::new("kill")
        .arg("-HUP")
        .arg(s.child.id().to_string())
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.logs().contains("webhook endpoints reloaded") {
        assert!(Instant::now() < deadline, "no reload: {}", s.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    push(&s, "admin/two", "v1", b"second").await;
    let got = wait_for(&b, 3, 20).await;
    assert!(got
        .iter()
        .all(|(_, v)| v["events"][0]["target"]["repository"] == "admin/two"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.got.lock().unwrap().len(),
        3,
        "the old endpoint got nothing after the reload"
    );
}
