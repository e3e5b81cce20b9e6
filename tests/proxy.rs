//! Upstream mode in front of a real distribution registry (plain and with regate as its token
//! server), what reaches an upstream (a recording one), upstream failures, and /nginx/auth.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, htpasswd, token, Server};
use http_body_util::BodyExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Distribution {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's docker-registry on a free port. It cannot take port 0, so a port is picked by
/// binding and releasing it: the one place a tiny race is accepted.
fn distribution(extra: &str) -> Distribution {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = format!(
        "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
        dir.path().join("root").display()
    );
    std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry is installed by scripts/test-all.sh");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Distribution { child, url, _dir: dir }
}

fn skopeo(args: &[&str]) -> (bool, String) {
    let out = Command::new("skopeo").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn image(dir: &std::path::Path) -> String {
    let out = Command::new("python3")
        .arg(common::mkimage())
        .arg(dir)
        .arg("v1")
        .args(["1", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn upstream_mode_in_front_of_distribution() {
    let d = distribution("");
    let s = Server::start(&format!("upstream: {}\n", d.url));
    let (u, p) = s.admin();
    let img = tempfile::tempdir().unwrap();
    let dg = image(img.path());
    let creds = format!("{u}:{p}");
    let dst = format!("docker://{}/admin/app:v1", s.host);
    let src = format!("oci:{}:v1", img.path().display());
    let (ok, out) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dst,
    ]);
    assert!(ok, "{out}");
    // it landed in distribution, which serves it directly
    let (ok, out) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/admin/app:v1", d.url.trim_start_matches("http://")),
    ]);
    assert!(ok && out.contains(&dg), "{out}");
    // and regate serves it back through the proxy; without credentials it is refused
    let (ok, out) = skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &dst]);
    assert!(ok && out.contains(&dg), "{out}");
    let back = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dst,
        &format!("oci:{}:v1", back.path().display()),
    ]);
    assert!(ok, "{out}");
    let (ok, _) = skopeo(&["inspect", "--tls-verify=false", "--no-creds", &dst]);
    assert!(!ok);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ready = rt.block_on(async { client().get(format!("{}/readyz", s.url)).send().await.unwrap().status() });
    assert_eq!(ready, 200);
}

#[test]
fn upstream_trusting_regate_tokens() {
    // distribution with auth: token, regate as its token server, and regate in front of it
    let dir = tempfile::tempdir().unwrap();
    let hp = htpasswd(dir.path(), &[("alice", "pw"), ("bob", "pw")]);
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // start regate once to generate its signing certificate, learn nothing else from it
    let cfg_auth = format!("auth: {{ htpasswd: {}, service: registry.test }}\n", hp.display());
    let first = Server::start_in(dir, &cfg_auth);
    let cert = first.data().join("token.crt");
    let dir = first.into_dir();
    let d = distribution(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:1/token\n    service: registry.test\n    issuer: regate\n    rootcertbundle: {}\n",
        cert.display()
    ));
    let cfg = dir.path().join("regate.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("upstream: {}\n", d.url));
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start_with_config(dir, &cfg);
    let img = tempfile::tempdir().unwrap();
    let dg = image(img.path());
    let src = format!("oci:{}:v1", img.path().display());
    let (ok, out) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "alice:pw",
        &src,
        &format!("docker://{}/alice/app:v1", s.host),
    ]);
    assert!(ok, "{out}");
    let (ok, out) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:pw",
        &format!("docker://{}/alice/app:v1", s.host),
    ]);
    assert!(ok && out.contains(&dg), "{out}");
    // bob may not push into alice's repository: regate refuses before the upstream sees it
    let (ok, _) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        "bob:pw",
        &src,
        &format!("docker://{}/alice/app:v2", s.host),
    ]);
    assert!(!ok);
}

#[derive(Clone, Default)]
struct Recorder {
    got: Arc<Mutex<Vec<http::HeaderMap>>>,
}

async fn recording_upstream() -> (String, Recorder) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let rec = Recorder::default();
    let r2 = rec.clone();
    let base = url.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let rec = r2.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let rec = rec.clone();
                    let base = base.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let _ = body.collect().await;
                        rec.got.lock().unwrap().push(parts.headers);
                        let mut resp =
                            hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
                        *resp.status_mut() = http::StatusCode::ACCEPTED;
                        resp.headers_mut().insert(
                            "location",
                            format!("{base}/v2/admin/x/blobs/uploads/0b3e6b36-9f4e-4b64-8d3a-6a0c3c7f1a11?_state=abc")
                                .parse()
                                .unwrap(),
                        );
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (url, rec)
}

#[tokio::test]
async fn identity_headers_never_reach_the_upstream_and_location_is_rewritten() {
    let (url, rec) = recording_upstream().await;
    let s = Server::start(&format!("upstream: {url}\n"));
    let (u, p) = s.admin();
    let r = client()
        .post(format!("{}/v2/admin/x/blobs/uploads/", s.url))
        .basic_auth(&u, Some(&p))
        .header("X-Forwarded-User", "root")
        .header("X-Auth-Request-User", "root")
        .header("X-Remote-User", "root")
        .header("X-Forwarded-For", "6.6.6.6")
        .header("Connection", "keep-alive, X-Secret-Hop")
        .header("X-Secret-Hop", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["location"],
        format!(
            "{}/v2/admin/x/blobs/uploads/0b3e6b36-9f4e-4b64-8d3a-6a0c3c7f1a11?_state=abc",
            s.url
        )
        .as_str()
    );
    let got = rec.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let h = &got[0];
    for bad in [
        "x-forwarded-user",
        "x-auth-request-user",
        "x-remote-user",
        "x-secret-hop",
    ] {
        assert!(h.get(bad).is_none(), "{bad} reached the upstream");
    }
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], s.host.as_str());
    // the Basic password is not passed on; a regate token for the authorised scope is
    let auth = h["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer ") && !auth.contains(&p));
}

#[tokio::test]
async fn upstream_down_is_a_clean_502() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Server::start(&format!("upstream: http://127.0.0.1:{port}\n"));
    let (u, p) = s.admin();
    let t = Instant::now();
    let r = client()
        .get(format!("{}/v2/admin/x/tags/list", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(t.elapsed() < Duration::from_secs(10));
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAVAILABLE");
    // not ready while the upstream is down; alive all the same
    assert_eq!(
        client().get(format!("{}/readyz", s.url)).send().await.unwrap().status(),
        503
    );
    assert_eq!(
        client()
            .get(format!("{}/healthz", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // unauthenticated requests are still challenged, never forwarded
    let r = client()
        .get(format!("{}/v2/admin/x/tags/list", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn nginx_auth_request_target() {
    let dir = tempfile::tempdir().unwrap();
    let hp = htpasswd(dir.path(), &[("alice", "pw"), ("bob", "pw")]);
    let s = Server::start_in(
        dir,
        &format!("auth: {{ htpasswd: {}, service: registry.test }}\n", hp.display()),
    );
    let c = client();
    let ask = |uri: &str, method: &str| {
        c.get(format!("{}/nginx/auth", s.url))
            .header("X-Original-URI", uri)
            .header("X-Original-Method", method)
    };
    // no credentials: 401 with the challenge for the derived scope
    let r = ask("/v2/alice/app/manifests/v1", "PUT").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("scope=\"repository:alice/app:pull,push\""));
    // Basic, allowed
    let r = ask("/v2/alice/app/manifests/v1", "PUT")
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-request-user"], "alice");
    // Basic, signed in but not allowed
    let r = ask("/v2/alice/app/manifests/v1", "GET")
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // wrong password
    let r = ask("/v2/", "GET").basic_auth("bob", Some("nope")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // Bearer token scoped for pull only
    let t = token(&s, Some(("alice", "pw")), &["repository:alice/app:pull"]).await;
    assert_eq!(
        ask("/v2/alice/app/blobs/sha256:".to_string().as_str(), "GET")
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    let d = format!("/v2/alice/app/blobs/sha256:{}", "a".repeat(64));
    assert_eq!(ask(&d, "GET").bearer_auth(&t).send().await.unwrap().status(), 200);
    assert_eq!(
        ask("/v2/alice/app/blobs/uploads/", "POST")
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // traversal tricks in the original URI are never allowed
    assert_eq!(
        ask("/v2/alice/app/../../bob/app/manifests/v1", "GET")
            .basic_auth("alice", Some("pw"))
            .send()
            .await
            .unwrap()
            .status(),
        403
    );
    // explicit per-location parameters, and a non-registry location needing only sign-in
    let r = c
        .get(format!("{}/nginx/auth?repository=alice/app&actions=push", s.url))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(format!("{}/nginx/auth?repository=bob/app&actions=push", s.url))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        ask("/dashboard", "GET")
            .basic_auth("bob", Some("pw"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .get(format!("{}/nginx/auth?allowed_groups=gitee-org:ops", s.url))
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // identity headers a client sends are ignored
    let r = ask("/v2/", "GET")
        .header("X-Auth-Request-User", "admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn mirror_pulls_through_and_serves_from_cache() {
    // the remote: distribution with Basic auth (htpasswd), holding an image
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("htpasswd")
        .args(["-Bbn", "mirror", "mpw"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "htpasswd (apache2-utils) is installed by scripts/test-all.sh"
    );
    std::fs::write(dir.path().join("htpasswd"), &out.stdout).unwrap();
    let d = distribution(&format!(
        "auth:\n  htpasswd: {{ realm: r, path: {} }}\n",
        dir.path().join("htpasswd").display()
    ));
    let remote = d.url.trim_start_matches("http://").to_owned();
    let img = tempfile::tempdir().unwrap();
    let dg = image(img.path());
    let src = format!("oci:{}:v1", img.path().display());
    let (ok, out) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "mirror:mpw",
        &src,
        &format!("docker://{remote}/library/app:v1"),
    ]);
    assert!(ok, "{out}");
    // regate mirroring it
    let s = Server::start(&format!(
        "mirror: {{ url: {}, username: mirror, password: mpw }}\n",
        d.url
    ));
    let (u, p) = s.admin();
    let creds = format!("{u}:{p}");
    let via = format!("docker://{}/library/app:v1", s.host);
    let (ok, out) = skopeo(&["inspect", "--tls-verify=false", "--creds", &creds, &via]);
    assert!(ok && out.contains(&dg), "{out}");
    let back = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &via,
        &format!("oci:{}:v1", back.path().display()),
    ]);
    assert!(ok, "{out}");
    // every blob of the copy hashes to its name
    for e in std::fs::read_dir(back.path().join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        assert_eq!(
            common::sha256_hex(&std::fs::read(e.path()).unwrap()),
            e.file_name().to_string_lossy()
        );
    }
    // the remote goes away: the cached image is still served
    drop(d);
    let back2 = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &via,
        &format!("oci:{}:v1", back2.path().display()),
    ]);
    assert!(ok, "served from cache: {out}");
    assert!(s
        .data()
        .join("docker/registry/v2/repositories/library/app/_manifests")
        .exists());
    // something never fetched is a clean error, not a hang
    let (ok, out) = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{}/library/other:v1", s.host),
    ]);
    assert!(!ok && !out.contains("500"), "{out}");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn upstream_streams_a_gib_both_ways_with_flat_memory() {
    let d = distribution("");
    let s = Server::start(&format!("upstream: {}\n", d.url));
    let (u, p) = s.admin();
    // 1 GiB of a repeating 1 MiB pattern, generated on the fly; its digest computed the same way
    let chunk = bytes::Bytes::from((0..(1u32 << 20)).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let n = 1024usize;
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for _ in 0..n {
            h.update(&chunk);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    };
    // distribution 2.8 has no single-request upload: POST, one streamed PATCH, PUT
    let r = client()
        .post(format!("{}/v2/admin/big/blobs/uploads/", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(loc.starts_with(&s.url), "Location rewritten to regate: {loc}");
    let c2 = chunk.clone();
    let body = futures_util::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(c2.clone())));
    let r = client()
        .patch(&loc)
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client()
        .put(format!("{loc}{sep}digest={digest}"))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    // pull it back through regate, hashing as it streams
    let r = client()
        .get(format!("{}/v2/admin/big/blobs/{digest}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut h = {
        use sha2::Digest as _;
        sha2::Sha256::new()
    };
    let mut total = 0u64;
    use futures_util::StreamExt;
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        total += c.len() as u64;
        sha2::Digest::update(&mut h, &c);
    }
    assert_eq!(total, (n as u64) << 20);
    assert_eq!(format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))), digest);
    let peak = vm_hwm_kib(s.child.id());
    assert!(
        peak < 128 * 1024,
        "regate's peak RSS was {peak} KiB while streaming 1 GiB each way"
    );
}

/// An upstream that speaks only HTTP/2 over plain TCP (h2c with prior knowledge) and records the
/// protocol version of what reaches it.
#[tokio::test]
async fn upstream_over_h2c() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<(http::Version, usize)>>> = Arc::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            let seen = s2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let v = req.version();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        seen.lock().unwrap().push((v, body.len()));
                        let mut resp = hyper::Response::new(http_body_util::Full::new(body));
                        *resp.status_mut() = http::StatusCode::CREATED;
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let s = Server::start(&format!("upstream: {url}\nupstream_h2c: true\n"));
    let (u, p) = s.admin();
    let payload = vec![7u8; 3 << 20];
    for _ in 0..3 {
        let r = client()
            .put(format!(
                "{}/v2/admin/x/blobs/uploads/0b3e6b36-9f4e-4b64-8d3a-6a0c3c7f1a11?digest=sha256:{}",
                s.url,
                "0".repeat(64)
            ))
            .basic_auth(&u, Some(&p))
            .body(payload.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.bytes().await.unwrap().len(),
            payload.len(),
            "the body streamed back whole"
        );
    }
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|(v, n)| *v == http::Version::HTTP_2 && *n == payload.len()),
        "{got:?}"
    );
    // without upstream_h2c the same upstream cannot be reached over HTTP/1.1: a clean 502
    let s1 = Server::start(&format!("upstream: {url}\n"));
    let (u, p) = s1.admin();
    let r = client()
        .get(format!("{}/v2/admin/x/tags/list", s1.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
}
