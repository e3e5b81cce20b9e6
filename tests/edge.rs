//! The edge: TLS and HSTS, certificate reload, the HTTP->HTTPS redirect, IP allowlists and
//! X-Forwarded-For from trusted and untrusted peers, hostile requests on raw sockets, SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn write_cert(dir: &Path, cn: &str) -> String {
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, cn);
    let cert = p.self_signed(&kp).unwrap();
    // write key first, then cert, each atomically
    std::fs::write(dir.join("tls.key.tmp"), kp.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.key.tmp"), dir.join("tls.key")).unwrap();
    std::fs::write(dir.join("tls.crt.tmp"), cert.pem()).unwrap();
    std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).unwrap();
    cert.pem()
}

fn tls_client(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The subject CN the server presents on a new connection, via openssl s_client.
fn served_cn(host: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("openssl s_client -connect {host} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[tokio::test]
async fn tls_hsts_everywhere_and_redirect() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "first");
    let redirect = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let raddr = redirect.local_addr().unwrap();
    drop(redirect); // the config takes an address; a short race with other processes is acceptable here
    let extra = format!(
        "public_url: https://localhost:{{PORT}}\ntls: {{ cert: {0}/tls.crt, key: {0}/tls.key, hsts_max_age: 600, http_redirect_listen: {raddr} }}\n",
        dir.path().display()
    );
    // public_url needs the port, which is only known after binding: start once to learn it is
    // not possible with port 0, so let the default public_url (https://127.0.0.1:PORT) stand.
    let extra = extra.replace("public_url: https://localhost:{PORT}\n", "");
    let s = Server::start_in(dir, &extra);
    assert!(s.url.starts_with("https://127.0.0.1:"));
    let c = tls_client(&ca);
    let url = s.url.replace("127.0.0.1", "localhost");
    for (path, want) in [
        ("/v2/", 401),
        ("/nope", 404),
        ("/token", 200),
        ("/healthz", 200),
        ("/v2/A/tags/list", 400),
    ] {
        let r = c.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), want, "{path}");
        assert_eq!(
            r.headers()["strict-transport-security"],
            "max-age=600; includeSubDomains",
            "{path}"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert!(r.headers().get("server").is_none());
    }
    // HTTP/2 is offered through ALPN
    let h2 = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.as_bytes()).unwrap())
        .build()
        .unwrap();
    let r = h2.get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    // the plain listener redirects to public_url, whatever Host says
    let r = client()
        .get(format!("http://{raddr}/v2/x/tags/list?n=1"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], format!("{}/v2/x/tags/list?n=1", s.url));
    assert!(r.headers().get("strict-transport-security").is_none());

    // the server's cipher order, not the client's: OpenSSL offers AES-256 first, regate picks
    // AES-128-GCM (TLS 1.3 and 1.2); a client offering only ChaCha20 still connects
    for (args, want) in [
        (
            "-tls1_3 -ciphersuites TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256",
            "TLS_AES_128_GCM_SHA256",
        ),
        (
            "-tls1_2 -cipher ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            "-tls1_3 -ciphersuites TLS_CHACHA20_POLY1305_SHA256",
            "TLS_CHACHA20_POLY1305_SHA256",
        ),
    ] {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {} -servername localhost {args} </dev/null 2>/dev/null",
                s.host
            ))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains(&format!("Cipher is {want}")), "{args}: {out}");
    }

    // certificate reload: new handshakes get the new certificate
    assert!(served_cn(&s.host).contains("first"));
    let _ca2 = write_cert(s.dir.path(), "second");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !served_cn(&s.host).contains("second") {
        assert!(Instant::now() < deadline, "certificate not reloaded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn plain_http_has_no_hsts() {
    let s = Server::start("");
    let r = client().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert!(r.headers().get("strict-transport-security").is_none());
    assert_eq!(r.headers()["docker-distribution-api-version"], "registry/2.0");
}

#[tokio::test]
async fn allowlist_and_forwarded_for() {
    // 127.0.0.1 is not allowed: everything is 403 JSON
    let s = Server::start("network: { allow: [10.0.0.0/8] }\n");
    let r = client().get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["errors"][0]["message"].as_str().unwrap().contains("127.0.0.1"));
    // a spoofed X-Forwarded-For from an untrusted peer changes nothing
    let r = client()
        .get(format!("{}/v2/", s.url))
        .header("x-forwarded-for", "10.1.2.3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    drop(s);

    // behind a trusted proxy, the right-most untrusted address counts
    let s = Server::start("network: { allow: [10.0.0.0/8], trusted_proxies: [127.0.0.1/32, 192.168.0.0/16] }\n");
    let c = client();
    let get = |xff: Option<&'static str>, fwd: Option<&'static str>| {
        let mut rb = c.get(format!("{}/healthz", s.url));
        if let Some(x) = xff {
            rb = rb.header("x-forwarded-for", x);
        }
        if let Some(f) = fwd {
            rb = rb.header("forwarded", f);
        }
        rb.send()
    };
    assert_eq!(get(Some("10.1.2.3"), None).await.unwrap().status(), 200);
    assert_eq!(get(Some("10.1.2.3, 192.168.1.1"), None).await.unwrap().status(), 200);
    // the client put 10.x first itself; the proxy appended the real address
    assert_eq!(get(Some("10.9.9.9, 203.0.113.7"), None).await.unwrap().status(), 403);
    assert_eq!(get(Some("::ffff:10.1.2.3"), None).await.unwrap().status(), 200);
    assert_eq!(get(None, Some("for=10.1.2.3;proto=https")).await.unwrap().status(), 200);
    assert_eq!(
        get(None, Some("for=\"[2001:db8::1]:4711\"")).await.unwrap().status(),
        403
    );
    assert_eq!(get(None, None).await.unwrap().status(), 403);
}

fn raw(host: &str, req: &[u8]) -> String {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(req).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

#[test]
fn hostile_requests_refused() {
    let s = Server::start("limits: { header_read_timeout: 1 }\n");
    let h = &s.host;
    // request smuggling: both Content-Length and Transfer-Encoding
    let r = raw(
        h,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // duplicate, conflicting Content-Length
    let r = raw(
        h,
        b"POST /token HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    );
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // absolute-form target
    let r = raw(h, b"GET http://evil.example/v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // dot segments and encoded tricks never reach another repository
    for p in [
        "/v2/a/../b/tags/list",
        "/v2/a/%2e%2e/b/tags/list",
        "/v2/a%2fb/tags/list",
        "/v2//a/tags/list",
    ] {
        let r = raw(h, format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert!(r.starts_with("HTTP/1.1 400"), "{p}: {r}");
        // a code from the distribution spec's table
        assert!(r.contains("NAME_INVALID"), "{p}: {r}");
    }
    // huge headers: 431
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let r = raw(h, big.as_bytes());
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // slowloris: headers never finished -> the connection is closed after header_read_timeout
    let mut sock = TcpStream::connect(h).unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let n = sock.read(&mut buf).unwrap_or(0);
    let got = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "slow client kept for {:?}",
        t.elapsed()
    );
}

#[test]
fn sigterm_exits_cleanly() {
    let mut s = Server::start("");
    let status = s
        .terminate(Duration::from_secs(10))
        .expect("regate did not exit on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(s.logs().contains("shutting down"));
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let hp = common::htpasswd(dir.path(), &[("alice", "pw"), ("bob", "pw")]);
    let s = Server::start_in(
        dir,
        &format!(
            "auth: {{ htpasswd: {} }}\nlimits: {{ failed_auth_per_minute: 3, token_requests_per_second: 5 }}\n",
            hp.display()
        ),
    );
    let c = client();
    let url = format!("{}/token", s.url);
    for _ in 0..3 {
        assert_eq!(
            c.get(&url)
                .basic_auth("alice", Some("wrong"))
                .send()
                .await
                .unwrap()
                .status(),
            401
        );
    }
    // now even the right password is refused for a while, from this address
    let r = c.get(&url).basic_auth("alice", Some("pw")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["details"].as_str().unwrap().contains("retry"));
    // Basic on /v2/ and the tokens API are limited too
    let r = c
        .get(format!("{}/v2/", s.url))
        .basic_auth("bob", Some("pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["errors"][0]["code"],
        "TOOMANYREQUESTS"
    );
    // /token itself: a burst beyond 2x the rate gets 429
    let mut limited = 0;
    for _ in 0..30 {
        if c.get(&url).send().await.unwrap().status() == 429 {
            limited += 1;
        }
    }
    assert!(limited > 0, "no /token request was rate limited");
    assert!(s.logs().contains("auth_failed"));
}

/// A body of `total` bytes sent in 1 MiB chunks, pausing `pause` between chunks.
fn slow_body(total: usize, pause: Duration) -> reqwest::Body {
    let chunk = bytes::Bytes::from(vec![7u8; 1 << 20]);
    let n = total / chunk.len();
    let s = futures_util::stream::unfold(0usize, move |i| {
        let chunk = chunk.clone();
        async move {
            if i == n {
                return None;
            }
            tokio::time::sleep(pause).await;
            Some((Ok::<_, std::io::Error>(chunk), i + 1))
        }
    });
    reqwest::Body::wrap_stream(s)
}

fn digest_of_sevens(total: usize) -> String {
    common::digest(&vec![7u8; total])
}

#[tokio::test]
async fn sigterm_during_an_upload_lets_it_finish() {
    let mut s = Server::start("limits: { shutdown_grace: 30 }\n");
    let (u, p) = s.admin();
    let total = 64 << 20;
    let d = digest_of_sevens(total);
    let url = format!("{}/v2/admin/big/blobs/uploads/?digest={d}", s.url);
    let up = tokio::spawn({
        let (u, p) = (u.clone(), p.clone());
        async move {
            client()
                .post(url)
                .basic_auth(&u, Some(&p))
                .header("content-length", total.to_string())
                .body(slow_body(total, Duration::from_millis(30)))
                .send()
                .await
        }
    });
    // once the upload is under way, ask regate to stop
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_dir(s.data().join(".regate-tmp"))
        .unwrap()
        .any(|e| e.unwrap().metadata().unwrap().len() > 0)
    {
        assert!(Instant::now() < deadline, "upload never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = s.child.id();
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    let r = up.await.unwrap().unwrap();
    assert_eq!(r.status(), 201, "the in-flight upload completes during the drain");
    let status = s.terminate(Duration::from_secs(20)).expect("exits after draining");
    assert!(status.success());
    // the blob is complete on disk
    let hex = d.strip_prefix("sha256:").unwrap();
    let meta = std::fs::metadata(
        s.data()
            .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2])),
    )
    .unwrap();
    assert_eq!(meta.len() as usize, total);
}

#[tokio::test]
async fn stalled_body_is_dropped_but_a_slow_one_is_not() {
    let s = Server::start("limits: { body_idle_timeout: 1 }\n");
    let (u, p) = s.admin();
    // slow but moving: one chunk every 300 ms for ~3 s, longer than the idle timeout in total
    let total = 10 << 20;
    let d = digest_of_sevens(total);
    let r = client()
        .post(format!("{}/v2/admin/slow/blobs/uploads/?digest={d}", s.url))
        .basic_auth(&u, Some(&p))
        .body(slow_body(total, Duration::from_millis(300)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // stalled: the first chunk, then nothing for 3 s
    let s2 = futures_util::stream::unfold(0u8, |i| async move {
        match i {
            0 => Some((Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"abc")), 1)),
            1 => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Some((Ok(bytes::Bytes::from_static(b"def")), 2))
            }
            _ => None,
        }
    });
    let t = Instant::now();
    let r = client()
        .post(format!(
            "{}/v2/admin/slow/blobs/uploads/?digest={}",
            s.url,
            common::digest(b"abcdef")
        ))
        .basic_auth(&u, Some(&p))
        .body(reqwest::Body::wrap_stream(s2))
        .send()
        .await;
    if let Ok(r) = r {
        assert_ne!(r.status(), 201);
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the stalled request was kept {:?}",
        t.elapsed()
    );
    // nothing half-written became visible
    let r = client()
        .head(format!("{}/v2/admin/slow/blobs/{}", s.url, common::digest(b"abcdef")))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn connection_limit_queues_further_connections() {
    let s = Server::start("limits: { max_connections: 2 }\n");
    let a = TcpStream::connect(&s.host).unwrap();
    let b = TcpStream::connect(&s.host).unwrap();
    // the third connection is accepted by the kernel but not served while two are open
    let mut c = TcpStream::connect(&s.host).unwrap();
    c.set_read_timeout(Some(Duration::from_millis(800))).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(c.read(&mut buf).is_err(), "served beyond max_connections");
    drop(a);
    drop(b);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// HTTP/2 rapid reset (CVE-2023-44487): a client opening streams and resetting them at once is
/// cut off, while everyone else is still served.
#[tokio::test]
async fn h2_rapid_reset_is_cut_off() {
    let s = Server::start("");
    let tcp = tokio::net::TcpStream::connect(&s.host).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn_task = tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let mut sent = 0;
    let mut refused = false;
    for _ in 0..5000 {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{}/v2/", s.host))
            .body(())
            .unwrap();
        match client.send_request(req, true) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => {
                refused = true;
                break;
            }
        }
        match client.ready().await {
            Ok(c) => client = c,
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    // the server ends the abusive connection (GOAWAY) rather than serving 5000 reset streams
    let ended = tokio::time::timeout(Duration::from_secs(10), conn_task).await;
    // (the client sees the GOAWAY, or the closed socket under its queued writes)
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "connection not cut off after {sent} reset streams: {ended:?}"
    );
    // control: the same number of ordinary requests on one connection are all served
    let tcp = tokio::net::TcpStream::connect(&s.host).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    for _ in 0..300 {
        let req = http::Request::builder()
            .method("GET")
            .uri(format!("http://{}/healthz", s.host))
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        assert_eq!(resp.await.unwrap().status(), 200);
        client = client.ready().await.unwrap();
    }
    // others are unaffected
    let r = client_http().get(format!("{}/healthz", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn client_http() -> reqwest::Client {
    client()
}
