//! The nginx-compat/ configurations, loaded by a real nginx (Debian's), with skopeo pushing and
//! pulling through them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port for programs that cannot listen on port 0 (nginx, docker-registry). The listener is
/// held until just before that program starts (so nothing else started meanwhile, regate on
/// port 0 included, can take the port): the one place a tiny race is accepted.
fn reserve_port() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let p = l.local_addr().unwrap().port();
    (l, p)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tls_files(dir: &Path) -> (String, String) {
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let (c, k) = (dir.join("reg.crt"), dir.join("reg.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, kp.serialize_pem()).unwrap();
    (c.display().to_string(), k.display().to_string())
}

/// distribution (Debian's docker-registry), no auth of its own, with its root under `dir`.
fn distribution(dir: &Path) -> (Proc, u16) {
    let (hold, port) = reserve_port();
    let cfg = dir.join("registry.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
            dir.join("root").display()
        ),
    )
    .unwrap();
    drop(hold);
    let p = Proc(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (p, port)
}

/// Renders a config from nginx-compat/ for this machine and starts nginx with it.
fn nginx(name: &str, dir: &Path, port: u16, subst: &[(&str, String)]) -> Proc {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx-compat").join(name);
    let mut conf = std::fs::read_to_string(src).unwrap();
    let (crt, key) = tls_files(dir);
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let mut all: Vec<(&str, String)> = vec![
        ("listen 443 ssl", format!("listen 127.0.0.1:{port} ssl")),
        ("/etc/nginx/tls/reg.crt", crt),
        ("/etc/nginx/tls/reg.key", key),
        ("/var/log/nginx/", format!("{}/", logs.display())),
    ];
    let pid = if name == "edge.conf" {
        "/run/nginx-regate.pid"
    } else {
        "/run/nginx-registry.pid"
    };
    all.push((pid, dir.join("nginx.pid").display().to_string()));
    all.extend(subst.iter().cloned());
    for (a, b) in &all {
        assert!(conf.contains(a), "{name} no longer contains {a:?}");
        conf = conf.replace(a, b);
    }
    let path = dir.join(name);
    std::fs::write(&path, conf).unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    let t = Command::new(nginx)
        .arg("-t")
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .output()
        .unwrap();
    assert!(t.status.success(), "nginx -t: {}", String::from_utf8_lossy(&t.stderr));
    let child = Command::new(nginx)
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .args(["-g", "daemon off;"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(port);
    Proc(child)
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

fn round_trip(host: &str, creds: &str, repo: &str) {
    let img = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .arg(common::mkimage())
        .arg(img.path())
        .arg("v1")
        .args(["1", "2"])
        .output()
        .unwrap();
    let dg = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let src = format!("oci:{}:v1", img.path().display());
    let dst = format!("docker://{host}/{repo}:v1");
    let (ok, out) = skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &src,
        &dst,
    ]);
    assert!(ok, "push through nginx: {out}");
    let (ok, out) = skopeo(&["inspect", "--tls-verify=false", "--creds", creds, &dst]);
    assert!(ok && out.contains(&dg), "{out}");
    let back = tempfile::tempdir().unwrap();
    let (ok, out) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds,
        &dst,
        &format!("oci:{}:v1", back.path().display()),
    ]);
    assert!(ok, "pull through nginx: {out}");
    let (ok, _) = skopeo(&["inspect", "--tls-verify=false", "--no-creds", &dst]);
    assert!(!ok, "anonymous access must fail");
}

#[test]
fn auth_request_in_front_of_an_existing_registry() {
    let work = tempfile::tempdir().unwrap();
    // the existing registry
    let (_dist, dport) = distribution(work.path());
    // regate, announcing nginx's address as its public URL
    let (nhold, nport) = reserve_port();
    let s = Server::start(&format!(
        "public_url: https://127.0.0.1:{nport}\nauth: {{ service: registry.test }}\n"
    ));
    let regate_port = s.local.rsplit(':').next().unwrap().to_owned();
    drop(nhold);
    let _ng = nginx(
        "auth-request.conf",
        work.path(),
        nport,
        &[
            ("server 127.0.0.1:5000", format!("server 127.0.0.1:{dport}")),
            ("server 127.0.0.1:5001", format!("server 127.0.0.1:{regate_port}")),
        ],
    );
    let (u, p) = s.admin();
    round_trip(&format!("127.0.0.1:{nport}"), &format!("{u}:{p}"), "admin/app");
    // the bytes are in the existing registry's root
    assert!(work
        .path()
        .join("root/docker/registry/v2/repositories/admin/app/_manifests")
        .exists());
}

#[test]
fn nginx_as_tls_edge_in_front_of_regate() {
    let work = tempfile::tempdir().unwrap();
    let (nhold, nport) = reserve_port();
    let s = Server::start(&format!(
        "public_url: https://127.0.0.1:{nport}\nnetwork: {{ trusted_proxies: [127.0.0.1/32], allow: [127.0.0.0/8] }}\n"
    ));
    let regate_port = s.local.rsplit(':').next().unwrap().to_owned();
    drop(nhold);
    let _ng = nginx(
        "edge.conf",
        work.path(),
        nport,
        &[("server 127.0.0.1:5000", format!("server 127.0.0.1:{regate_port}"))],
    );
    let (u, p) = s.admin();
    round_trip(&format!("127.0.0.1:{nport}"), &format!("{u}:{p}"), "admin/edge");
    // a client's own Forwarded header stops at nginx: regate reads the address nginx appended
    let code = curl(
        "GET",
        &format!("https://127.0.0.1:{nport}/v2/"),
        &["Forwarded: for=10.9.9.9".to_owned()],
        None,
    );
    assert_eq!(code, 401, "the client's Forwarded header reached regate");
    assert!(s
        .data()
        .join("docker/registry/v2/repositories/admin/edge/_manifests")
        .exists());
}

/// `curl` with the path exactly as given (no normalisation by the client), TLS unchecked;
/// returns the status code.
fn curl(method: &str, url: &str, headers: &[String], body: Option<&Path>) -> u16 {
    let mut c = Command::new("curl");
    c.args([
        "-sk",
        "--path-as-is",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        method,
    ]);
    for h in headers {
        c.arg("-H").arg(h);
    }
    if let Some(b) = body {
        c.arg("--data-binary").arg(format!("@{}", b.display()));
    }
    let out = c.arg(url).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A token from regate's own address for `scopes` (Basic `creds`, or anonymous).
fn token_at(local: &str, creds: Option<&str>, scopes: &[&str]) -> String {
    let mut url = format!("http://{local}/token?service=registry.test");
    for sc in scopes {
        url.push_str(&format!("&scope={sc}"));
    }
    let mut c = Command::new("curl");
    c.args(["-sf", &url]);
    if let Some(u) = creds {
        c.args(["-u", u]);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "token request failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}")
}

/// Items 1 and 2 of the nginx drop-in's security review, end to end through nginx as
/// nginx-compat/auth-request.conf ships it, in front of distribution with no auth of its own: an
/// encoded `/v2` must not turn a registry request into "some other path", and a cross-repository
/// mount needs pull on its source.
#[test]
fn auth_request_decides_on_the_path_the_registry_reads() {
    assert!(common::have("curl"), "curl is needed (scripts/test-all.sh installs it)");
    let work = tempfile::tempdir().unwrap();
    let (_dist, dport) = distribution(work.path());
    let (nhold, nport) = reserve_port();
    let sdir = tempfile::tempdir().unwrap();
    let pw = common::htpasswd(sdir.path(), &[("alice", "alice-pw"), ("boss", "boss-pw")]);
    let s = Server::start_in(
        sdir,
        &format!(
            "public_url: https://127.0.0.1:{nport}\nauth: {{ service: registry.test, htpasswd: {} }}\naccess:\n  - {{ account: boss, repository: \"*\", actions: [pull, push, delete] }}\n  - {{ repository: \"${{account}}/*\", actions: [pull, push] }}\n",
            pw.display()
        ),
    );
    let regate_port = s.local.rsplit(':').next().unwrap().to_owned();
    drop(nhold);
    let _ng = nginx(
        "auth-request.conf",
        work.path(),
        nport,
        &[
            ("server 127.0.0.1:5000", format!("server 127.0.0.1:{dport}")),
            ("server 127.0.0.1:5001", format!("server 127.0.0.1:{regate_port}")),
        ],
    );
    let base = format!("https://127.0.0.1:{nport}");
    let admin = token_at(
        &s.local,
        Some("boss:boss-pw"),
        &["repository:admin/secret:pull,push", "repository:admin/copy:pull,push"],
    );
    let anon = token_at(&s.local, None, &[]);
    let alice = token_at(
        &s.local,
        Some("alice:alice-pw"),
        &["repository:alice/x:pull,push", "repository:admin/secret:pull"],
    );
    // the admin's secret layer, pushed through nginx
    let layer = work.path().join("layer");
    let bytes = b"the secret layer".repeat(100);
    std::fs::write(&layer, &bytes).unwrap();
    let dg = common::digest(&bytes);
    let start = Command::new("curl")
        .args([
            "-sk",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{location}",
            "-X",
            "POST",
            "-H",
        ])
        .arg(bearer(&admin))
        .arg(format!("{base}/v2/admin/secret/blobs/uploads/"))
        .output()
        .unwrap();
    let start = String::from_utf8_lossy(&start.stdout).to_string();
    let (code, location) = start.split_once(' ').unwrap();
    assert_eq!(code, "202", "{start}");
    let sep = if location.contains('?') { '&' } else { '?' };
    let put = if location.starts_with('/') {
        format!("{base}{location}{sep}digest={dg}")
    } else {
        format!("{location}{sep}digest={dg}")
    };
    let octets = "Content-Type: application/octet-stream".to_owned();
    assert_eq!(curl("PUT", &put, &[bearer(&admin), octets], Some(&layer)), 201);
    assert_eq!(
        curl(
            "GET",
            &format!("{base}/v2/admin/secret/blobs/{dg}"),
            &[bearer(&admin)],
            None
        ),
        200
    );

    // the anonymous token (anyone gets one) opens nothing, however the path is spelled
    assert_eq!(curl("GET", &format!("{base}/v2/_catalog"), &[bearer(&anon)], None), 401);
    let manifest = work.path().join("m.json");
    std::fs::write(
        &manifest,
        format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{dg}","size":{}}},"layers":[]}}"#, bytes.len()),
    )
    .unwrap();
    let ct = "Content-Type: application/vnd.oci.image.manifest.v1+json".to_owned();
    for (method, path, body) in [
        ("GET", "/v%32/_catalog".to_owned(), None),
        ("GET", "/%76%32/_catalog".to_owned(), None),
        ("GET", "/v2%2F_catalog".to_owned(), None),
        ("GET", format!("/%76%32/admin/secret/blobs/{dg}"), None),
        ("GET", format!("/v2/admin/secret/blobs/sha256%3A{}", &dg[7..]), None),
        ("GET", format!("/v2/alice/%2e%2e/admin/secret/blobs/{dg}"), None),
        ("GET", format!("/v2//admin/secret/blobs/{dg}"), None),
        (
            "PUT",
            "/v%32/admin/secret/manifests/pwned".to_owned(),
            Some(manifest.as_path()),
        ),
    ] {
        let url = format!("{base}{path}");
        for who in [&anon, &alice] {
            let code = curl(method, &url, &[bearer(who), ct.clone()], body);
            assert!(code == 401 || code == 403, "{method} {path}: {code}");
        }
    }
    // nothing was written by the refused PUT
    assert_eq!(
        curl(
            "GET",
            &format!("{base}/v2/admin/secret/manifests/pwned"),
            &[bearer(&admin)],
            None
        ),
        404
    );
    // spelled plainly, the admin's own requests still work through the decoded path
    assert_eq!(
        curl(
            "GET",
            &format!("{base}/v2/admin/secret/blobs/sha256%3A{}", &dg[7..]),
            &[bearer(&admin)],
            None
        ),
        200
    );

    // item 2: a mount from a repository alice may not pull is refused, in the query or a form body
    let mount = format!("{base}/v2/alice/x/blobs/uploads/?mount={dg}&from=admin/secret");
    assert_eq!(curl("POST", &mount, &[bearer(&alice)], None), 403);
    let form = work.path().join("form");
    std::fs::write(&form, format!("mount={dg}&from=admin/secret")).unwrap();
    let plain_start = format!("{base}/v2/alice/x/blobs/uploads/");
    let form_ct = "Content-Type: application/x-www-form-urlencoded".to_owned();
    assert_eq!(curl("POST", &plain_start, &[bearer(&alice), form_ct], Some(&form)), 403);
    assert_eq!(
        curl("GET", &format!("{base}/v2/alice/x/blobs/{dg}"), &[bearer(&alice)], None),
        404
    );
    // the admin may pull the source, so the same mount works for them
    let mount = format!("{base}/v2/admin/copy/blobs/uploads/?mount={dg}&from=admin/secret");
    assert_eq!(curl("POST", &mount, &[bearer(&admin)], None), 201);
    assert_eq!(
        curl(
            "GET",
            &format!("{base}/v2/admin/copy/blobs/{dg}"),
            &[bearer(&admin)],
            None
        ),
        200
    );

    // /nginx/auth itself: what it cannot classify it refuses, even for the admin
    let auth = format!("http://{}/nginx/auth", s.local);
    let admin_h = bearer(&admin);
    assert_eq!(
        curl("GET", &auth, &[admin_h.clone(), "X-Original-Method: GET".into()], None),
        403
    );
    assert_eq!(
        curl(
            "GET",
            &auth,
            &[admin_h.clone(), "X-Original-URI: /v2/admin/secret/tags/list".into()],
            None
        ),
        403
    );
    assert_eq!(
        curl(
            "GET",
            &auth,
            &[
                admin_h.clone(),
                "X-Original-URI: /v2/admin/secret/tags/list".into(),
                "X-Original-Method: GET".into()
            ],
            None
        ),
        200
    );
    // a non-registry path needs a named account: the anonymous token is no sign-in
    let other = [
        "X-Original-URI: /dashboard".to_owned(),
        "X-Original-Method: GET".to_owned(),
    ];
    assert_eq!(curl("GET", &auth, &[&other[..], &[bearer(&anon)]].concat(), None), 401);
    assert_eq!(curl("GET", &auth, &[&other[..], &[admin_h]].concat(), None), 200);
}
