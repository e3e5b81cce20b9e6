//! Replication: regate -> distribution (Debian's docker-registry with htpasswd), regate ->
//! regate (token auth), and distribution -> regate on a schedule. Whole images (a multi-arch
//! index, a referrer, a 200 MiB layer with memory staying flat), deletes, the remote down during
//! pushes and a restart with events queued: nothing lost, order kept.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, Server};
use serde_json::Value;
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

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// distribution on a port it cannot pick itself (the listener is held until just before).
struct Distribution {
    port: u16,
    cfg: std::path::PathBuf,
    proc: Option<Proc>,
}

impl Distribution {
    fn new(dir: &Path, htpasswd: Option<&Path>) -> Distribution {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let auth = htpasswd
            .map(|p| format!("auth: {{ htpasswd: {{ realm: dr, path: {} }} }}\n", p.display()))
            .unwrap_or_default();
        let cfg = dir.join("registry.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage: {{ filesystem: {{ rootdirectory: {} }}, delete: {{ enabled: true }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n{auth}",
                dir.join("root").display()
            ),
        )
        .unwrap();
        drop(l);
        let mut d = Distribution { port, cfg, proc: None };
        d.start();
        d
    }

    fn start(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&self.cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc(child));
        wait_port(self.port);
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn skopeo(args: &[&str]) -> (bool, String) {
    let o = Command::new("skopeo").args(args).output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// An OCI layout with `tag` (sizes in MiB; `platforms` makes an index); its digest.
fn image(dir: &Path, tag: &str, sizes: &[&str], platforms: Option<&str>) -> String {
    let mut c = Command::new("python3");
    c.arg(common::mkimage()).arg(dir).arg(tag).args(sizes);
    if let Some(p) = platforms {
        c.args(["--platforms", p]);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn push(layout: &Path, tag: &str, dest: &str, creds: &str) {
    let (ok, out) = skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        &format!("oci:{}:{tag}", layout.display()),
        dest,
    ]);
    assert!(ok, "push {dest}: {out}");
}

/// The digest `reference` names on a registry, via skopeo (None when absent).
fn remote_digest(image_ref: &str, creds: Option<&str>) -> Option<String> {
    let mut args = vec!["inspect", "--raw", "--tls-verify=false"];
    match creds {
        Some(c) => args.extend(["--creds", c]),
        None => args.push("--no-creds"),
    }
    args.push(image_ref);
    let o = Command::new("skopeo").args(&args).output().unwrap();
    o.status.success().then(|| common::digest(&o.stdout))
}

fn eventually(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn push_rule_to_distribution_whole_images_deletes_outage_and_restart() {
    let work = tempfile::tempdir().unwrap();
    let ddir = work.path().join("dist");
    std::fs::create_dir_all(&ddir).unwrap();
    let hp = common::htpasswd(&ddir, &[("sync", "sync-pw")]);
    let mut dist = Distribution::new(&ddir, Some(&hp));
    let dcreds = Some("sync:sync-pw");
    let cfg = format!(
        "replication:\n  - {{ name: dr, url: \"http://{}\", username: sync, password: sync-pw, direction: push, repositories: [\"team/*\"], deletes: true, interval: 3600 }}\n",
        dist.host()
    );
    let s = Server::start(&cfg);
    let (u, p) = s.admin();
    let creds = format!("{u}:{p}");

    // a multi-arch index
    let multi = work.path().join("multi");
    let index = image(&multi, "v1", &["0.2"], Some("linux/amd64,linux/arm64"));
    push(&multi, "v1", &format!("docker://{}/team/multi:v1", s.host), &creds);
    // a 200 MiB layer
    let big = work.path().join("big");
    let big_digest = image(&big, "v1", &["200"], None);
    push(&big, "v1", &format!("docker://{}/team/big:v1", s.host), &creds);
    // a repository outside the rule
    push(&multi, "v1", &format!("docker://{}/other/multi:v1", s.host), &creds);

    // a referrer (an SBOM-like artifact) of the index, pushed after it
    let rt = tokio::runtime::Runtime::new().unwrap();
    let referrer = rt.block_on(async {
        let c = client();
        let cfg_blob = b"{}".to_vec();
        let cd = common::digest(&cfg_blob);
        let r = c
            .post(format!("{}/v2/team/multi/blobs/uploads/?digest={cd}", s.url))
            .basic_auth(&u, Some(&p))
            .header("content-type", "application/octet-stream")
            .body(cfg_blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let idx_size = skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &creds,
            &format!("docker://{}/team/multi:v1", s.host),
        ])
        .1
        .len();
        let m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": cd, "size": 2}],
            "subject": {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": index, "size": idx_size},
        });
        let body = serde_json::to_vec(&m).unwrap();
        let md = common::digest(&body);
        let r = c
            .put(format!("{}/v2/team/multi/manifests/{md}", s.url))
            .basic_auth(&u, Some(&p))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        md
    });

    let dh = dist.host();
    eventually("the index on the remote", 120, || {
        remote_digest(&format!("docker://{dh}/team/multi:v1"), dcreds).as_deref() == Some(index.as_str())
    });
    // every platform's manifest came along
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        "sync:sync-pw",
        &format!("docker://{dh}/team/multi:v1"),
    ])
    .1;
    let idx: Value = serde_json::from_str(&raw).unwrap();
    for m in idx["manifests"].as_array().unwrap() {
        let d = m["digest"].as_str().unwrap();
        assert_eq!(
            remote_digest(&format!("docker://{dh}/team/multi@{d}"), dcreds).as_deref(),
            Some(d)
        );
    }
    eventually("the referrer on the remote", 60, || {
        remote_digest(&format!("docker://{dh}/team/multi@{referrer}"), dcreds).as_deref() == Some(referrer.as_str())
    });
    eventually("the 200 MiB image on the remote", 180, || {
        remote_digest(&format!("docker://{dh}/team/big:v1"), dcreds).as_deref() == Some(big_digest.as_str())
    });
    // the blob went by streaming: regate's peak memory stays far below the layer
    let peak = peak_rss_kib(s.child.id());
    assert!(
        peak < 150 * 1024,
        "regate's peak RSS {peak} KiB copying a 200 MiB layer"
    );
    assert!(
        remote_digest(&format!("docker://{dh}/other/multi:v1"), dcreds).is_none(),
        "copied outside the rule"
    );

    // a delete here is a delete there
    rt.block_on(async {
        let r = client()
            .delete(format!("{}/v2/team/big/manifests/{big_digest}", s.url))
            .basic_auth(&u, Some(&p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    });
    eventually("the delete on the remote", 60, || {
        remote_digest(&format!("docker://{dh}/team/big@{big_digest}"), dcreds).is_none()
    });

    // the remote goes down; pushes go on here, the tag moves twice, regate restarts in between
    dist.stop();
    let a = work.path().join("a");
    let _ = image(&a, "v2", &["0.1"], None);
    push(&a, "v2", &format!("docker://{}/team/app:v2", s.host), &creds);
    let b = work.path().join("b");
    let b_digest = image(&b, "v2", &["0.1"], None);
    push(&b, "v2", &format!("docker://{}/team/app:v2", s.host), &creds);
    let c3 = work.path().join("c");
    let c_digest = image(&c3, "v3", &["0.1"], None);
    push(&c3, "v3", &format!("docker://{}/team/app:v3", s.host), &creds);
    let status = common::regate()
        .args(["replicate", "status", "--config"])
        .arg(s.dir.path().join("regate.yaml"))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(status.contains("dr (push"), "{status}");
    assert!(
        !status.contains("sync-pw"),
        "the remote's password was printed: {status}"
    );
    let s = s.restart();
    dist.start();
    eventually("the queued pushes after the outage and the restart", 120, || {
        remote_digest(&format!("docker://{dh}/team/app:v2"), dcreds).as_deref() == Some(b_digest.as_str())
            && remote_digest(&format!("docker://{dh}/team/app:v3"), dcreds).as_deref() == Some(c_digest.as_str())
    });
    let metrics = rt.block_on(async {
        client()
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    assert!(
        metrics.contains("regate_replication_queue_depth{rule=\"dr\"}"),
        "{metrics}"
    );
    let logs = s.logs();
    assert!(logs.contains("replicated"), "no audit event per copy");
    assert!(!logs.contains("sync-pw"), "the remote's password was logged");
    // the administrators' page lists the rule, never its password
    let (u, p) = s.admin();
    let page = rt.block_on(async {
        let cookie = common::web_session(&s, &u, &p).await;
        common::web_page(&s, "/ui/admin", &cookie).await
    });
    assert_eq!(page.0, 200, "{}", page.1);
    assert!(page.1.contains(">dr<") && page.1.contains(&dh), "{}", page.1);
    assert!(!page.1.contains("sync-pw"), "the remote's password is on the page");
}

#[test]
fn push_rule_to_another_regate_with_token_auth_and_rename() {
    let rdir = tempfile::tempdir().unwrap();
    let hp = common::htpasswd(rdir.path(), &[("sync", "sync-pw")]);
    let remote = Server::start_in(
        rdir,
        &format!(
            "auth: {{ htpasswd: {} }}\naccess:\n  - {{ account: sync, repository: \"mirror/*\", actions: [pull, push, delete] }}\n",
            hp.display()
        ),
    );
    let cfg = format!(
        "replication:\n  - {{ name: region2, url: \"{}\", username: sync, password_file: PWFILE, direction: push, rename: {{ from: \"team/\", to: \"mirror/team/\" }} }}\n",
        remote.url
    );
    let dir = tempfile::tempdir().unwrap();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, "sync-pw").unwrap();
    let s = Server::start_in(dir, &cfg.replace("PWFILE", &pwfile.display().to_string()));
    let (u, p) = s.admin();
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("img");
    let d = image(&img, "v1", &["1"], None);
    push(
        &img,
        "v1",
        &format!("docker://{}/team/app:v1", s.host),
        &format!("{u}:{p}"),
    );
    let rh = remote.host.clone();
    eventually("the image in the other region, renamed", 60, || {
        remote_digest(&format!("docker://{rh}/mirror/team/app:v1"), Some("sync:sync-pw")).as_deref() == Some(d.as_str())
    });
}

#[test]
fn pull_rule_copies_from_distribution_and_keeps_it_when_the_remote_is_gone() {
    let work = tempfile::tempdir().unwrap();
    let ddir = work.path().join("dist");
    std::fs::create_dir_all(&ddir).unwrap();
    let mut dist = Distribution::new(&ddir, None);
    let img = work.path().join("img");
    let d = image(&img, "v1", &["1"], Some("linux/amd64,linux/arm64"));
    push(&img, "v1", &format!("docker://{}/lib/app:v1", dist.host()), "x:x");
    let other = work.path().join("other");
    let _ = image(&other, "dev", &["0.1"], None);
    push(&other, "dev", &format!("docker://{}/lib/app:dev", dist.host()), "x:x");
    let s = Server::start(&format!(
        "replication:\n  - {{ name: cloud, url: \"http://{}\", direction: pull, repositories: [\"lib/*\"], tags: [\"v*\"], interval: 1 }}\n",
        dist.host()
    ));
    let (u, p) = s.admin();
    let creds = format!("{u}:{p}");
    let here = format!("docker://{}/lib/app:v1", s.host);
    eventually("the remote's tag copied here", 60, || {
        remote_digest(&here, Some(&creds)).as_deref() == Some(d.as_str())
    });
    assert!(
        remote_digest(&format!("docker://{}/lib/app:dev", s.host), Some(&creds)).is_none(),
        "a tag outside the rule was copied"
    );
    // the remote goes away: the copy stays whole here
    dist.stop();
    let back = work.path().join("back");
    let (ok, out) = skopeo(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &here,
        &format!("oci:{}:v1", back.display()),
    ]);
    assert!(ok, "pull from regate after the remote stopped: {out}");
    // and `regate replicate run` says what failed, in one sentence
    let o = common::regate()
        .args(["replicate", "run", "cloud", "--config"])
        .arg(s.dir.path().join("regate.yaml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("replication cloud failed"), "{err}");
}

/// A remote behind a proxy that refuses large requests (413): blobs go up in chunks.
#[test]
fn push_rule_uploads_in_chunks_when_the_remote_refuses_large_requests() {
    let work = tempfile::tempdir().unwrap();
    let ddir = work.path().join("dist");
    std::fs::create_dir_all(&ddir).unwrap();
    let dist = Distribution::new(&ddir, None);
    // nginx in front of it, taking at most 20 MiB per request
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nport = l.local_addr().unwrap().port();
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let conf = work.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "pid {w}/nginx.pid;\nerror_log {w}/logs/error.log warn;\nevents {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {w}/body;\n  proxy_temp_path {w}/proxy;\n  server {{\n    listen 127.0.0.1:{nport};\n    client_max_body_size 20m;\n    location / {{ proxy_pass http://{d}; proxy_set_header Host $http_host; proxy_request_buffering off; }}\n  }}\n}}\n",
            w = work.path().display(),
            d = dist.host()
        ),
    )
    .unwrap();
    let nginx = if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    };
    drop(l);
    let _ng = Proc(
        Command::new(nginx)
            .arg("-p")
            .arg(work.path())
            .arg("-c")
            .arg(&conf)
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(nport);
    let s = Server::start(&format!(
        "replication:\n  - {{ name: small, url: \"http://127.0.0.1:{nport}\", direction: push }}\n"
    ));
    let (u, p) = s.admin();
    let img = work.path().join("img");
    let d = image(&img, "v1", &["30"], None);
    push(
        &img,
        "v1",
        &format!("docker://{}/team/big:v1", s.host),
        &format!("{u}:{p}"),
    );
    eventually("the 30 MiB layer through a 20 MiB request limit", 120, || {
        remote_digest(&format!("docker://127.0.0.1:{nport}/team/big:v1"), None).as_deref() == Some(d.as_str())
    });
}

/// The reconcile repairs what the event queue never saw: images pushed before the rule existed.
#[test]
fn reconcile_copies_what_the_queue_never_saw() {
    let work = tempfile::tempdir().unwrap();
    let ddir = work.path().join("dist");
    std::fs::create_dir_all(&ddir).unwrap();
    let dist = Distribution::new(&ddir, None);
    let s = Server::start("");
    let (u, p) = s.admin();
    let img = work.path().join("img");
    let d = image(&img, "v1", &["0.5"], None);
    push(
        &img,
        "v1",
        &format!("docker://{}/team/old:v1", s.host),
        &format!("{u}:{p}"),
    );
    // the rule arrives later: no event for that push was ever queued
    let dir = s.into_dir();
    let cfg = dir.path().join("regate.yaml");
    let mut yaml = std::fs::read_to_string(&cfg).unwrap();
    yaml.push_str(&format!(
        "replication:\n  - {{ name: late, url: \"http://{}\", direction: push, interval: 1 }}\n",
        dist.host()
    ));
    std::fs::write(&cfg, yaml).unwrap();
    let _s = Server::start_with_config(dir, &cfg);
    let dh = dist.host();
    eventually("the reconcile to copy the older image", 60, || {
        remote_digest(&format!("docker://{dh}/team/old:v1"), None).as_deref() == Some(d.as_str())
    });
}
