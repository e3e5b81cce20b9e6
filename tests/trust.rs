#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Trusted images (issue 22) end to end: cosign signatures made with the `openssl` CLI (not
//! regate's code) and stored the two ways cosign stores them (the `sha256-<hex>.sig` tag and an
//! OCI 1.1 referrer), pulled with skopeo (and docker where an engine runs); a stand-in Harbor
//! Pluggable Scanner API adapter whose reports gate pulls.

mod common;

use base64::Engine as _;
use common::{client, digest, have, htpasswd, token, Server};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const COSIGN_SIG_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` with a deadline (killing it past 300 s).
fn run(cmd: &mut Command) -> Out {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ho = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let he = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{cmd:?} did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Out {
        ok: status.success(),
        stdout: ho.join().unwrap(),
        stderr: he.join().unwrap(),
    }
}

fn openssl(args: &[&str]) {
    let o = run(Command::new("openssl").args(args));
    assert!(o.ok, "openssl {args:?}: {}", o.stderr);
}

/// A key pair made by the openssl CLI: (private PEM, public PEM).
fn keypair(dir: &Path, name: &str, rsa: bool) -> (PathBuf, PathBuf) {
    let k = dir.join(format!("{name}.key"));
    let p = dir.join(format!("{name}.pub"));
    let ks = k.to_str().unwrap();
    if name.starts_with("ed") {
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", ks]);
    } else if rsa {
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            ks,
        ]);
    } else {
        openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ks]);
    }
    openssl(&["pkey", "-in", ks, "-pubout", "-out", p.to_str().unwrap()]);
    (k, p)
}

/// cosign's simple-signing payload for `digest`.
fn payload(reference: &str, digest: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{reference}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// `openssl dgst -sha256 -sign`: ECDSA (ASN.1 DER, as cosign writes) or RSA PKCS#1 v1.5.
fn openssl_sign(dir: &Path, key: &Path, data: &[u8]) -> String {
    let n = rand_name();
    let input = dir.join(format!("{n}.payload"));
    let out = dir.join(format!("{n}.sig"));
    std::fs::write(&input, data).unwrap();
    if key.file_name().unwrap().to_str().unwrap().starts_with("ed") {
        // Ed25519 signs the payload itself, as cosign's ed25519 signer does
        let (i, o) = (input.to_str().unwrap(), out.to_str().unwrap());
        openssl(&[
            "pkeyutl",
            "-sign",
            "-rawin",
            "-inkey",
            key.to_str().unwrap(),
            "-in",
            i,
            "-out",
            o,
        ]);
        return base64::engine::general_purpose::STANDARD.encode(std::fs::read(out).unwrap());
    }
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        key.to_str().unwrap(),
        "-out",
        out.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(out).unwrap())
}

fn rand_name() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("f{}", N.fetch_add(1, Ordering::SeqCst))
}

#[derive(Clone, Copy)]
enum Store {
    Tag,
    Referrer,
}

struct Reg<'a> {
    s: &'a Server,
    user: &'a str,
    pw: &'a str,
}

impl Reg<'_> {
    async fn blob(&self, repo: &str, b: &[u8]) {
        let r = client()
            .post(format!("{}/v2/{repo}/blobs/uploads/?digest={}", self.s.url, digest(b)))
            .basic_auth(self.user, Some(self.pw))
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        if r.status() == 202 {
            // a registry without monolithic POST (distribution, in upstream mode): POST, PUT
            let loc = r.headers()["location"].to_str().unwrap().to_owned();
            let url = if loc.starts_with('/') {
                format!("{}{loc}", self.s.url)
            } else {
                loc
            };
            let sep = if url.contains('?') { '&' } else { '?' };
            let r = client()
                .put(format!("{url}{sep}digest={}", digest(b)))
                .basic_auth(self.user, Some(self.pw))
                .header("content-type", "application/octet-stream")
                .body(b.to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "blob upload (PUT)");
            return;
        }
        assert_eq!(r.status(), 201, "blob upload");
    }

    async fn manifest(&self, repo: &str, reference: &str, m: &Value) -> (String, usize) {
        let body = serde_json::to_vec(m).unwrap();
        let r = client()
            .put(format!("{}/v2/{repo}/manifests/{reference}", self.s.url))
            .basic_auth(self.user, Some(self.pw))
            .header("content-type", OCI_MANIFEST)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "manifest put: {}", r.text().await.unwrap());
        (digest(&body), body.len())
    }

    /// A small image (config + one layer with `content`) tagged `tag`: (digest, size).
    async fn image(&self, repo: &str, tag: &str, content: &str) -> (String, usize) {
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        self.blob(repo, cfg).await;
        self.blob(repo, content.as_bytes()).await;
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":digest(cfg),"size":cfg.len()},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest(content.as_bytes()),"size":content.len()}]});
        self.manifest(repo, tag, &m).await
    }

    /// Stores a cosign signature the way cosign does: the payload as a layer, the base64
    /// signature in its annotation; under `sha256-<hex>.sig` or as a referrer of `target`.
    async fn cosign(&self, repo: &str, target: (&str, usize), payload: &[u8], sig_b64: &str, how: Store) -> String {
        self.blob(repo, payload).await;
        let layer = json!({"mediaType":SIMPLE_SIGNING,"digest":digest(payload),"size":payload.len(),
            "annotations":{COSIGN_SIG_ANNOTATION: sig_b64}});
        match how {
            Store::Tag => {
                let cfg = format!(
                    r#"{{"architecture":"","config":{{}},"created":"0001-01-01T00:00:00Z","history":[{{"created":"0001-01-01T00:00:00Z"}}],"os":"","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
                    digest(payload)
                );
                self.blob(repo, cfg.as_bytes()).await;
                let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
                    "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":digest(cfg.as_bytes()),"size":cfg.len()},
                    "layers":[layer]});
                let tag = target.0.replace(':', "-") + ".sig";
                self.manifest(repo, &tag, &m).await.0
            }
            Store::Referrer => {
                self.blob(repo, b"{}").await;
                let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
                    "artifactType":"application/vnd.dev.cosign.artifact.sig.v1+json",
                    "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":digest(b"{}"),"size":2},
                    "layers":[layer],
                    "subject":{"mediaType":OCI_MANIFEST,"digest":target.0,"size":target.1}});
                let b = serde_json::to_vec(&m).unwrap();
                self.manifest(repo, &digest(&b), &m).await.0
            }
        }
    }
}

/// GET (or HEAD) a manifest with a bearer token: (status, trust header, body).
async fn get(s: &Server, bearer: &str, repo: &str, reference: &str, head: bool) -> (u16, String, String) {
    let c = client();
    let url = format!("{}/v2/{repo}/manifests/{reference}", s.url);
    let rb = if head { c.head(url) } else { c.get(url) };
    let r = rb
        .bearer_auth(bearer)
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    let st = r.status().as_u16();
    let h = r
        .headers()
        .get("x-regate-trust")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (st, h, r.text().await.unwrap())
}

/// `skopeo copy` out of the registry into a directory, with `user:pw`.
fn skopeo_pull(s: &Server, image: &str, creds: &str, all: bool) -> Out {
    let dest = tempfile::tempdir().unwrap();
    let mut a = vec![
        "--insecure-policy",
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        creds,
    ];
    if all {
        a.push("--all");
    }
    let src = format!("docker://{}/{image}", s.host);
    let dst = format!("dir:{}", dest.path().join("out").display());
    a.extend([src.as_str(), dst.as_str()]);
    run(Command::new("skopeo").args(&a))
}

const USERS: &[(&str, &str)] = &[("dev", "dev-pw"), ("reader", "reader-pw")];

fn access() -> &'static str {
    "access:\n  - { account: dev, repository: \"*\", actions: [pull, push, delete] }\n  - { account: reader, repository: \"*\", actions: [pull] }\n"
}

fn start(dir: tempfile::TempDir, extra: &str) -> Server {
    let hp = htpasswd(dir.path(), USERS);
    Server::start_in(
        dir,
        &format!("auth:\n  htpasswd: {}\n{}{extra}", hp.display(), access()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_signatures_gate_pulls() {
    assert!(have("skopeo") && have("openssl"), "skopeo and openssl are needed");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let (k2, p2) = keypair(&keys, "k2", true);
    let (k3, _) = keypair(&keys, "k3", false);
    let (ked, ped) = keypair(&keys, "ed1", false);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}, {}, {}] }}\n  - repository: \"audit/*\"\n    require_signature: {{ cosign: [{}] }}\n    enforce: false\n",
            p1.display(),
            p2.display(),
            ped.display(),
            p1.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/app";
    let reference = format!("{}/{repo}", s.host);
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/app:pull"]).await;
    let pusher = token(&s, Some(("dev", "dev-pw")), &["repository:prod/app:pull,push"]).await;

    // a: signed with k1 under the .sig tag; b: signed with k2 (the second trusted key) as a referrer
    let a = dev.image(repo, "a", "layer a").await;
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &a.0));
    dev.cosign(repo, (&a.0, a.1), &payload(&reference, &a.0), &sig, Store::Tag)
        .await;
    let b = dev.image(repo, "b", "layer b").await;
    let sig = openssl_sign(&keys, &k2, &payload(&reference, &b.0));
    dev.cosign(repo, (&b.0, b.1), &payload(&reference, &b.0), &sig, Store::Referrer)
        .await;
    // g: signed with the Ed25519 key
    let g = dev.image(repo, "g", "layer g").await;
    let sig = openssl_sign(&keys, &ked, &payload(&reference, &g.0));
    dev.cosign(repo, (&g.0, g.1), &payload(&reference, &g.0), &sig, Store::Tag)
        .await;
    for (tag, d) in [("a", &a.0), ("b", &b.0), ("g", &g.0)] {
        let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
        assert!(o.ok, "signed {tag} must pull: {}", o.stderr);
        for r in [tag, d.as_str()] {
            let (st, h, _) = get(&s, &reader, repo, r, false).await;
            assert_eq!((st, h.as_str()), (200, "verified"), "GET {r}");
        }
    }

    // c: unsigned; d: signed by an untrusted key; e: a's valid signature filed under e;
    // f: k1's signature with a flipped byte
    let c = dev.image(repo, "c", "layer c").await;
    let d = dev.image(repo, "d", "layer d").await;
    let sig = openssl_sign(&keys, &k3, &payload(&reference, &d.0));
    dev.cosign(repo, (&d.0, d.1), &payload(&reference, &d.0), &sig, Store::Referrer)
        .await;
    let e = dev.image(repo, "e", "layer e").await;
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &a.0));
    dev.cosign(repo, (&e.0, e.1), &payload(&reference, &a.0), &sig, Store::Tag)
        .await;
    let f = dev.image(repo, "f", "layer f").await;
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &f.0));
    let mut raw = base64::engine::general_purpose::STANDARD.decode(&sig).unwrap();
    let last = raw.len() - 1;
    raw[last] ^= 1;
    let bad = base64::engine::general_purpose::STANDARD.encode(raw);
    dev.cosign(repo, (&f.0, f.1), &payload(&reference, &f.0), &bad, Store::Tag)
        .await;
    for (tag, dg, extra) in [
        ("c", &c.0, "none found"),
        ("d", &d.0, "1 checked"),
        ("e", &e.0, "names another digest"),
        ("f", &f.0, "1 checked"),
    ] {
        let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
        assert!(!o.ok, "{tag} must not pull");
        assert!(
            o.stderr.contains("no signature from a trusted key") && o.stderr.contains(dg.as_str()),
            "skopeo's error names the reason and digest: {}",
            o.stderr
        );
        let (st, _, body) = get(&s, &reader, repo, tag, false).await;
        assert_eq!(st, 403, "{tag}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        let msg = v["errors"][0]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("prod/app@{dg}")) && msg.contains(extra), "{msg}");
        assert_eq!(get(&s, &reader, repo, dg, true).await.0, 403, "HEAD {tag} by digest");
        // a caller who may push reads it (signers GET what they sign), by token or Basic
        assert_eq!(get(&s, &pusher, repo, dg, false).await.0, 200, "push token reads {tag}");
        let r = client()
            .get(format!("{}/v2/{repo}/manifests/{tag}", s.url))
            .basic_auth("dev", Some("dev-pw"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // the signature artifacts themselves stay readable to a pull-only token
    let sig_tag = a.0.replace(':', "-") + ".sig";
    assert_eq!(get(&s, &reader, repo, &sig_tag, false).await.0, 200);

    // signing c later counts at once (cached denial dropped); deleting the signature revokes it
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &c.0));
    let sd = dev
        .cosign(repo, (&c.0, c.1), &payload(&reference, &c.0), &sig, Store::Tag)
        .await;
    assert_eq!(get(&s, &reader, repo, "c", false).await.0, 200, "c after signing");
    let r = client()
        .delete(format!("{}/v2/{repo}/manifests/{sd}", s.url))
        .basic_auth("dev", Some("dev-pw"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "delete signature: {}", r.status());
    assert_eq!(
        get(&s, &reader, repo, "c", false).await.0,
        403,
        "c after its signature went"
    );

    // no rule: unsigned pulls; report-only rule: pulls, with the header and an audit line
    for r in ["other/x", "audit/x"] {
        dev.image(r, "v1", "layer x").await;
    }
    let t = token(&s, Some(("reader", "reader-pw")), &["repository:other/x:pull"]).await;
    assert_eq!(get(&s, &t, "other/x", "v1", false).await.0, 200);
    let t = token(&s, Some(("reader", "reader-pw")), &["repository:audit/x:pull"]).await;
    let (st, h, _) = get(&s, &t, "audit/x", "v1", false).await;
    assert_eq!((st, h.as_str()), (200, "unsigned"));
    let o = skopeo_pull(&s, "audit/x:v1", "reader:reader-pw", false);
    assert!(o.ok, "{}", o.stderr);
    assert!(
        s.logs()
            .lines()
            .any(|l| l.contains("untrusted") && l.contains("audit/x")),
        "no audit line:\n{}",
        s.logs()
    );
}

/// A two-platform index (mkimage.py) pushed as `repo:tag` by dev with skopeo; its digest.
fn push_index(s: &Server, work: &std::path::Path, repo: &str, tag: &str) -> String {
    let layout = work.join(tag);
    let o = run(Command::new("python3")
        .arg(common::mkimage())
        .arg(&layout)
        .arg(tag)
        .args(["0.01", "--platforms", "linux/amd64,linux/arm64"]));
    assert!(o.ok, "{}", o.stderr);
    let digest = o.stdout.trim().to_owned();
    let o = run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        "dev:dev-pw",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{}/{repo}:{tag}", s.host),
    ]));
    assert!(o.ok, "push {repo}:{tag}: {}", o.stderr);
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_index_covers_its_platform_manifests() {
    assert!(have("skopeo") && have("openssl") && have("python3"));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}] }}\n",
            p1.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let digests: Vec<String> = ["signed", "unsigned"]
        .iter()
        .map(|tag| push_index(&s, work.path(), "prod/multi", tag))
        .collect();
    let idx = &digests[0];
    let r = client()
        .get(format!("{}/v2/prod/multi/manifests/{idx}", s.url))
        .basic_auth("dev", Some("dev-pw"))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    let size = r.bytes().await.unwrap().len();
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let reference = format!("{}/prod/multi", s.host);
    let p = payload(&reference, idx);
    let sig = openssl_sign(&keys, &k1, &p);
    dev.cosign("prod/multi", (idx, size), &p, &sig, Store::Tag).await;
    let o = skopeo_pull(&s, "prod/multi:signed", "reader:reader-pw", true);
    assert!(o.ok, "signed index with --all: {}", o.stderr);
    let o = skopeo_pull(&s, "prod/multi:unsigned", "reader:reader-pw", true);
    assert!(
        !o.ok && o.stderr.contains("no signature from a trusted key"),
        "{}",
        o.stderr
    );
}

fn docker_engine() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        println!("skipping: no Docker engine");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pulls_signed_and_is_denied_unsigned() {
    if !docker_engine() || !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}] }}\n",
            p1.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let dev_cfg = work.path().join("dev");
    let reader_cfg = work.path().join("reader");
    let docker = |cfg: &Path, args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("docker");
        c.env("DOCKER_CONFIG", cfg).args(args);
        if let Some(input) = stdin {
            let mut child = c
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            let o = child.wait_with_output().unwrap();
            Out {
                ok: o.status.success(),
                stdout: String::from_utf8_lossy(&o.stdout).into(),
                stderr: String::from_utf8_lossy(&o.stderr).into(),
            }
        } else {
            run(&mut c)
        }
    };
    for (cfg, u, p) in [(&dev_cfg, "dev", "dev-pw"), (&reader_cfg, "reader", "reader-pw")] {
        std::fs::create_dir_all(cfg).unwrap();
        let o = docker(
            cfg,
            &["login", &s.host, "-u", u, "--password-stdin"],
            Some(&format!("{p}\n")),
        );
        assert!(o.ok, "docker login {u}: {}", o.stderr);
    }
    let mut refs = Vec::new();
    let mut pushed = Vec::new();
    for name in ["signed", "unsigned"] {
        let root = work.path().join(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("hello.txt"), format!("{name} {}\n", s.host)).unwrap();
        let tar = work.path().join(format!("{name}.tar"));
        assert!(run(Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".")).ok);
        let r = format!("{}/prod/d:{name}", s.host);
        let o = docker(&dev_cfg, &["import", tar.to_str().unwrap(), &r], None);
        assert!(o.ok, "{}", o.stderr);
        refs.push(r.clone());
        let o = docker(&dev_cfg, &["push", &r], None);
        assert!(o.ok, "docker push: {}", o.stderr);
        let d = o
            .stdout
            .lines()
            .find_map(|l| l.split("digest: ").nth(1))
            .and_then(|x| x.split_whitespace().next())
            .unwrap()
            .to_owned();
        let _ = docker(&dev_cfg, &["rmi", &r], None);
        pushed.push(d);
    }
    let cleanup = |refs: &[String]| {
        for r in refs {
            let _ = Command::new("docker").args(["rmi", "-f", r]).output();
        }
    };
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let r = client()
        .get(format!("{}/v2/prod/d/manifests/{}", s.url, pushed[0]))
        .basic_auth("dev", Some("dev-pw"))
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    let size = r.bytes().await.unwrap().len();
    let p = payload(&format!("{}/prod/d", s.host), &pushed[0]);
    let sig = openssl_sign(&keys, &k1, &p);
    dev.cosign("prod/d", (&pushed[0], size), &p, &sig, Store::Referrer)
        .await;
    let ok = docker(&reader_cfg, &["pull", &refs[0]], None);
    let denied = docker(&reader_cfg, &["pull", &refs[1]], None);
    cleanup(&refs);
    assert!(ok.ok, "docker pull of the signed image: {}", ok.stderr);
    assert!(!denied.ok, "docker pulled an unsigned image");
    assert!(
        denied.stderr.contains("no signature from a trusted key"),
        "docker shows the reason: {}",
        denied.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// the scanner gate, against a stand-in Harbor Pluggable Scanner API adapter

#[derive(Default)]
struct Adapter {
    /// digest -> findings (id, severity); digests not listed have none
    findings: HashMap<String, Vec<(String, String)>>,
    /// answer 503 to everything
    down: bool,
    /// digests whose report never becomes ready
    hold: Vec<String>,
    /// scan requests seen: (repository, digest, authorization the registry gave, manifest status
    /// the adapter got when it pulled with it)
    requests: Vec<(String, String, String, u16)>,
    polls: HashMap<String, u32>,
    /// the Authorization headers regate sent the adapter
    adapter_auth: Vec<String>,
}

type Shared = Arc<Mutex<Adapter>>;

async fn adapter(state: Shared) -> String {
    use http_body_util::BodyExt as _;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = l.accept().await else { return };
            let st = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let st = st.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let b = body.collect().await.unwrap().to_bytes();
                        let path = parts.uri.path().to_owned();
                        let resp = |code: u16, v: Value| {
                            let mut r =
                                hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(v.to_string())));
                            *r.status_mut() = http::StatusCode::from_u16(code).unwrap();
                            r
                        };
                        let auth = parts
                            .headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        st.lock().unwrap().adapter_auth.push(auth);
                        if st.lock().unwrap().down {
                            return Ok::<_, std::convert::Infallible>(resp(503, json!({"error":"down"})));
                        }
                        if path == "/api/v1/metadata" {
                            return Ok(resp(
                                200,
                                json!({"scanner":{"name":"stand-in","vendor":"test","version":"1"},
                                "capabilities":[{"consumes_mime_types":[OCI_MANIFEST],
                                "produces_mime_types":["application/vnd.security.vulnerability.report; version=1.1"]}]}),
                            ));
                        }
                        if path == "/api/v1/scan" && parts.method == http::Method::POST {
                            let v: Value = serde_json::from_slice(&b).unwrap();
                            let (reg, repo, dg) = (
                                v["registry"]["url"].as_str().unwrap().to_owned(),
                                v["artifact"]["repository"].as_str().unwrap().to_owned(),
                                v["artifact"]["digest"].as_str().unwrap().to_owned(),
                            );
                            let auth = v["registry"]["authorization"].as_str().unwrap_or("").to_owned();
                            // like Trivy: pull the manifest with the credential regate handed over
                            let got = client()
                                .get(format!("{reg}/v2/{repo}/manifests/{dg}"))
                                .header("authorization", &auth)
                                .header("accept", OCI_MANIFEST)
                                .send()
                                .await
                                .map(|r| r.status().as_u16())
                                .unwrap_or(0);
                            st.lock().unwrap().requests.push((repo, dg.clone(), auth, got));
                            return Ok(resp(202, json!({ "id": dg })));
                        }
                        if let Some(id) = path
                            .strip_prefix("/api/v1/scan/")
                            .and_then(|p| p.strip_suffix("/report"))
                        {
                            let id = percent_encoding::percent_decode_str(id)
                                .decode_utf8()
                                .unwrap()
                                .to_string();
                            let mut s = st.lock().unwrap();
                            let n = {
                                let n = s.polls.entry(id.clone()).or_default();
                                *n += 1;
                                *n
                            };
                            if n == 1 || s.hold.contains(&id) {
                                let mut r = resp(302, json!({}));
                                r.headers_mut()
                                    .insert("refresh-after", http::HeaderValue::from_static("1"));
                                return Ok(r);
                            }
                            let vulns: Vec<Value> = s
                                .findings
                                .get(&id)
                                .cloned()
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(i, sev)| json!({"id":i,"package":"openssl","version":"1.0","fix_version":"1.1","severity":sev}))
                                .collect();
                            return Ok(resp(
                                200,
                                json!({"generated_at":"2026-12-03T00:00:00Z","artifact":{"digest":id},
                                "scanner":{"name":"stand-in","vendor":"test","version":"1"},
                                "severity": "High", "vulnerabilities": vulns}),
                            ));
                        }
                        Ok(resp(404, json!({})))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                    .await;
            });
        }
    });
    url
}

/// Polls the scan API until the report for `d` is there.
async fn wait_report(s: &Server, bearer: &str, repo: &str, d: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = client()
            .get(format!("{}/api/v1/scans/{repo}/{d}", s.url))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            return r.json().await.unwrap();
        }
        assert_eq!(r.status(), 404);
        assert!(Instant::now() < deadline, "no scan report for {d}:\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn scan_policy(url: &str, fail_open: bool, unscanned: &str) -> String {
    format!(
        "policy:\n  - repository: \"prod/*\"\n    block_severity: high\n    allow_cves: [CVE-2020-0001, {{ id: CVE-2020-0002, until: 2999-01-01 }}, {{ id: CVE-2020-0003, until: 2020-01-01 }}]\n    unscanned: {unscanned}\nscanner:\n  url: {url}\n  authorization: \"Bearer adapter-secret-123\"\n  fail_open: {fail_open}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_reports_block_pulls_at_the_severity() {
    let state: Shared = Arc::default();
    let url = adapter(state.clone()).await;
    let s = start(tempfile::tempdir().unwrap(), &scan_policy(&url, true, "deny"));
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/scan";
    let cases = [
        (
            "critical",
            vec![("CVE-2026-9999", "Critical"), ("CVE-2020-0001", "High")],
            false,
        ),
        (
            "allowed",
            vec![("CVE-2020-0001", "Critical"), ("CVE-2020-0002", "High")],
            true,
        ),
        ("expired", vec![("CVE-2020-0003", "High")], false),
        ("low", vec![("CVE-2026-0001", "Medium"), ("CVE-2026-0002", "Low")], true),
        ("held", vec![], false),
    ];
    let mut digests = Vec::new();
    for (tag, f, _) in &cases {
        // the adapter learns the findings before regate asks it to scan (on push)
        let content = format!("layer {tag}");
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":digest(cfg),"size":cfg.len()},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest(content.as_bytes()),"size":content.len()}]});
        let d = digest(&serde_json::to_vec(&m).unwrap());
        {
            let mut st = state.lock().unwrap();
            st.findings.insert(
                d.clone(),
                f.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            );
            if *tag == "held" {
                st.hold.push(d.clone());
            }
        }
        let (pd, _) = dev.image(repo, tag, &content).await;
        assert_eq!(pd, d);
        digests.push(d);
    }
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/scan:pull"]).await;
    for ((tag, _, pulls), d) in cases.iter().zip(&digests) {
        if *tag != "held" {
            let rep = wait_report(&s, &reader, repo, d).await;
            assert_eq!(rep["artifact"]["digest"], d.as_str());
        }
        let (st, h, body) = get(&s, &reader, repo, tag, false).await;
        if *pulls {
            assert_eq!((st, h.as_str()), (200, "verified"), "{tag}: {body}");
            let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
            assert!(o.ok, "{tag}: {}", o.stderr);
        } else {
            assert_eq!(st, 403, "{tag}: {body}");
            let msg = serde_json::from_str::<Value>(&body).unwrap()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(msg.contains(&format!("{repo}@{d}")), "{msg}");
            match *tag {
                "critical" => assert!(msg.contains("CVE-2026-9999") && !msg.contains("CVE-2020-0001"), "{msg}"),
                "expired" => assert!(msg.contains("CVE-2020-0003"), "{msg}"),
                _ => assert!(msg.contains("not scanned yet"), "{msg}"),
            }
            let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
            assert!(!o.ok && o.stderr.contains(d.as_str()), "{tag}: {}", o.stderr);
        }
    }
    // the adapter pulled with a pull-only token for that one repository, which the gate let through
    let requests = state.lock().unwrap().requests.clone();
    assert!(requests.len() >= digests.len(), "{requests:?}");
    for (r, d, auth, got) in &requests {
        assert_eq!(r, repo);
        assert_eq!(*got, 200, "the adapter's pull of {d} was refused");
        let tok = auth.strip_prefix("Bearer ").unwrap();
        let claims = tok.split('.').nth(1).unwrap();
        let c: Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(
            c["access"],
            json!([{"type":"repository","name":repo,"actions":["pull"]}])
        );
    }
    // regate sent the adapter its credential on every call, and never logged it
    let sent = state.lock().unwrap().adapter_auth.clone();
    assert!(
        !sent.is_empty() && sent.iter().all(|a| a == "Bearer adapter-secret-123"),
        "{sent:?}"
    );
    assert!(!s.logs().contains("adapter-secret-123"));
    // a reader without pull on the repository cannot read reports
    let other = token(&s, Some(("reader", "reader-pw")), &["repository:other/x:pull"]).await;
    let r = client()
        .get(format!("{}/api/v1/scans/{repo}/{}", s.url, digests[0]))
        .bearer_auth(other)
        .send()
        .await
        .unwrap();
    assert!([401, 403].contains(&r.status().as_u16()), "{}", r.status());
    // the tags page shows each tag's scan
    let cookie = common::web_session(&s, "reader", "reader-pw").await;
    let (code, page) = common::web_page(&s, "/ui/repos/prod/scan", &cookie).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("<th>Scan</th>"), "{page}");
    assert!(page.contains("1 critical, 1 high"), "{page}");
    assert!(page.contains("not scanned"), "{page}");
    assert!(page.contains(&format!("/api/v1/scans/{repo}/{}", digests[0])), "{page}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanner_down_never_blocks_pushes_and_pulls_follow_fail_open() {
    for fail_open in [false, true] {
        let state: Shared = Arc::new(Mutex::new(Adapter {
            down: true,
            ..Default::default()
        }));
        let url = adapter(state.clone()).await;
        let s = start(tempfile::tempdir().unwrap(), &scan_policy(&url, fail_open, "allow"));
        let dev = Reg {
            s: &s,
            user: "dev",
            pw: "dev-pw",
        };
        // the push succeeds with the scanner answering 503
        let (d, _) = dev.image("prod/down", "v1", "layer down").await;
        let r = client()
            .get(format!("{}/v2/prod/down/manifests/v1", s.url))
            .basic_auth("dev", Some("dev-pw"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "the pushed image is stored");
        let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/down:pull"]).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !s.logs().contains("scanner metadata refused") {
            assert!(Instant::now() < deadline, "the start-up probe never ran:\n{}", s.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // the start-up probe and the push's scan mark the scanner down: poll until it is
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (st, _, body) = get(&s, &reader, "prod/down", "v1", false).await;
            if fail_open {
                assert_eq!(st, 200, "fail_open: true pulls unscanned images: {body}");
                break;
            }
            if st == 403 {
                assert!(body.contains("scanner is unavailable") && body.contains(&d), "{body}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never denied while the scanner is down: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// notation (JWS envelope, notary.x509), made with the openssl CLI per the Notary Project spec

/// A root CA and a code-signing leaf under it (RSA 2048): (root cert PEM, leaf key, leaf DER, root DER).
fn notation_chain(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>, Vec<u8>) {
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let s = |f: &str| p(f).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &s("root.key"),
        "-out",
        &s("root.crt"),
        "-days",
        "2",
        "-subj",
        &format!("/CN={name} root"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    // an "ec…" chain has a P-256 leaf (ES256), any other an RSA one (PS256)
    let leaf_alg = if name.starts_with("ec") { "ec" } else { "rsa:2048" };
    let leaf_opt: &[&str] = if name.starts_with("ec") {
        &["-pkeyopt", "ec_paramgen_curve:P-256"]
    } else {
        &[]
    };
    openssl(
        &[
            &["req", "-newkey", leaf_alg][..],
            leaf_opt,
            &[
                "-nodes",
                "-keyout",
                &s("leaf.key"),
                "-out",
                &s("leaf.csr"),
                "-subj",
                &format!("/C=CN/ST=Zhejiang/L=Hangzhou/O={name} org/CN={name} signer"),
            ],
        ]
        .concat(),
    );
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s("leaf.csr"),
        "-CA",
        &s("root.crt"),
        "-CAkey",
        &s("root.key"),
        "-set_serial",
        "2",
        "-days",
        "1",
        "-extfile",
        &s("ext.cnf"),
        "-out",
        &s("leaf.crt"),
    ]);
    for c in ["leaf", "root"] {
        openssl(&[
            "x509",
            "-in",
            &s(&format!("{c}.crt")),
            "-outform",
            "DER",
            "-out",
            &s(&format!("{c}.der")),
        ]);
    }
    (
        p("root.crt"),
        p("leaf.key"),
        std::fs::read(p("leaf.der")).unwrap(),
        std::fs::read(p("root.der")).unwrap(),
    )
}

/// ECDSA ASN.1 DER `SEQUENCE { r, s }` (what openssl writes) to JWS's fixed `r||s`.
fn ecdsa_raw(der: &[u8], half: usize) -> Vec<u8> {
    assert_eq!(der[0], 0x30);
    let mut i = if der[1] & 0x80 != 0 {
        2 + usize::from(der[1] & 0x7f)
    } else {
        2
    };
    let mut out = Vec::new();
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = usize::from(der[i + 1]);
        let mut v = &der[i + 2..i + 2 + len];
        while v.len() > half && v[0] == 0 {
            v = &v[1..];
        }
        out.extend(std::iter::repeat_n(0u8, half - v.len()));
        out.extend_from_slice(v);
        i += 2 + len;
    }
    out
}

/// A notation JWS envelope over `target` (PS256, or ES256 for an `ec…` key), signed by `key`
/// with `chain` as x5c.
fn notation_envelope(dir: &Path, key: &Path, chain: &[&[u8]], target: (&str, usize)) -> Vec<u8> {
    let url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let ec = key.file_name().unwrap().to_str().unwrap().starts_with("ec");
    let protected = json!({"alg": if ec { "ES256" } else { "PS256" },"crit":["io.cncf.notary.signingScheme"],
        "cty":"application/vnd.cncf.notary.payload.v1+json",
        "io.cncf.notary.signingScheme":"notary.x509",
        "io.cncf.notary.signingTime":"2026-12-03T12:00:00Z"});
    let payload = json!({"targetArtifact":{"mediaType":OCI_MANIFEST,"digest":target.0,"size":target.1}});
    let (ph, pl) = (
        url(&serde_json::to_vec(&protected).unwrap()),
        url(&serde_json::to_vec(&payload).unwrap()),
    );
    let n = rand_name();
    let input = dir.join(format!("{n}.in"));
    let out = dir.join(format!("{n}.sig"));
    std::fs::write(&input, format!("{ph}.{pl}")).unwrap();
    let pss: &[&str] = if ec {
        &[]
    } else {
        &["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
    };
    openssl(
        &[
            &["dgst", "-sha256"][..],
            pss,
            &[
                "-sign",
                key.to_str().unwrap(),
                "-out",
                out.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    let raw = std::fs::read(out).unwrap();
    let sig = url(&if ec { ecdsa_raw(&raw, 32) } else { raw });
    let x5c: Vec<String> = chain
        .iter()
        .map(|c| base64::engine::general_purpose::STANDARD.encode(c))
        .collect();
    serde_json::to_vec(&json!({"payload":pl,"protected":ph,
        "header":{"x5c":x5c,"io.cncf.notary.signingAgent":"openssl (test)"},"signature":sig}))
    .unwrap()
}

impl Reg<'_> {
    async fn notation(&self, repo: &str, target: (&str, usize), envelope: &[u8]) {
        self.blob(repo, envelope).await;
        self.blob(repo, b"{}").await;
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "artifactType":"application/vnd.cncf.notary.signature",
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":digest(b"{}"),"size":2},
            "layers":[{"mediaType":"application/jose+json","digest":digest(envelope),"size":envelope.len()}],
            "subject":{"mediaType":OCI_MANIFEST,"digest":target.0,"size":target.1}});
        let b = serde_json::to_vec(&m).unwrap();
        self.manifest(repo, &digest(&b), &m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notation_signatures_chain_to_a_trusted_root() {
    assert!(have("skopeo") && have("openssl"));
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (root, leaf_key, leaf, root_der) = notation_chain(&pki, "trusted");
    let (_, other_key, other_leaf, other_root) = notation_chain(&pki, "other");
    let (ec_root, ec_key, ec_leaf, ec_root_der) = notation_chain(&pki, "ec");
    // what `notation cert generate-test` makes: one self-signed code-signing certificate
    let ss = |f: &str| pki.join(f).to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        &ss("self.key"),
        "-out",
        &ss("self.crt"),
        "-days",
        "2",
        "-subj",
        "/CN=self signer",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=critical,digitalSignature",
        "-addext",
        "extendedKeyUsage=codeSigning",
    ]);
    openssl(&[
        "x509",
        "-in",
        &ss("self.crt"),
        "-outform",
        "DER",
        "-out",
        &ss("self.der"),
    ]);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ notation: [{}, {}, {}] }}\n",
            root.display(),
            ss("self.crt"),
            ec_root.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/n";
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/n:pull"]).await;
    let good = dev.image(repo, "good", "layer good").await;
    let env = notation_envelope(&pki, &leaf_key, &[&leaf, &root_der], (&good.0, good.1));
    dev.notation(repo, (&good.0, good.1), &env).await;
    let o = skopeo_pull(&s, &format!("{repo}:good"), "reader:reader-pw", false);
    assert!(o.ok, "notation-signed image must pull: {}", o.stderr);
    assert_eq!(get(&s, &reader, repo, "good", false).await.1, "verified");
    let selfsigned = dev.image(repo, "self", "layer self").await;
    let self_der = std::fs::read(ss("self.der")).unwrap();
    let env = notation_envelope(
        &pki,
        Path::new(&ss("self.key")),
        &[&self_der],
        (&selfsigned.0, selfsigned.1),
    );
    dev.notation(repo, (&selfsigned.0, selfsigned.1), &env).await;
    let (st, _, body) = get(&s, &reader, repo, "self", false).await;
    assert_eq!(st, 200, "a self-signed signing certificate listed as a root: {body}");
    let ecimg = dev.image(repo, "ec", "layer ec").await;
    let env = notation_envelope(&pki, &ec_key, &[&ec_leaf, &ec_root_der], (&ecimg.0, ecimg.1));
    dev.notation(repo, (&ecimg.0, ecimg.1), &env).await;
    let (st, _, body) = get(&s, &reader, repo, "ec", false).await;
    assert_eq!(st, 200, "an ES256 envelope from a P-256 leaf: {body}");

    // a chain to a root the rule does not name; a valid envelope for another digest; a cosign-style
    // tampered envelope (payload swapped after signing)
    let untrusted = dev.image(repo, "untrusted", "layer untrusted").await;
    let env = notation_envelope(
        &pki,
        &other_key,
        &[&other_leaf, &other_root],
        (&untrusted.0, untrusted.1),
    );
    dev.notation(repo, (&untrusted.0, untrusted.1), &env).await;
    let moved = dev.image(repo, "moved", "layer moved").await;
    let env = notation_envelope(&pki, &leaf_key, &[&leaf, &root_der], (&good.0, good.1));
    dev.notation(repo, (&moved.0, moved.1), &env).await;
    let tampered = dev.image(repo, "tampered", "layer tampered").await;
    let env = notation_envelope(&pki, &leaf_key, &[&leaf, &root_der], (&good.0, good.1));
    let mut v: Value = serde_json::from_slice(&env).unwrap();
    let pl = json!({"targetArtifact":{"mediaType":OCI_MANIFEST,"digest":tampered.0,"size":tampered.1}});
    v["payload"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&pl).unwrap()));
    dev.notation(repo, (&tampered.0, tampered.1), &serde_json::to_vec(&v).unwrap())
        .await;
    for (tag, d, why) in [
        ("untrusted", &untrusted.0, "does not chain to a trusted root"),
        ("moved", &moved.0, "names another digest"),
        ("tampered", &tampered.0, "1 checked: no signature from a trusted key"),
    ] {
        let (st, _, body) = get(&s, &reader, repo, tag, false).await;
        assert_eq!(st, 403, "{tag}: {body}");
        assert!(body.contains(d.as_str()) && body.contains(why), "{tag}: {body}");
        let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
        assert!(
            !o.ok && o.stderr.contains("no signature from a trusted key"),
            "{}",
            o.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aged_reports_are_renewed_when_pulled_and_a_new_finding_blocks() {
    let state: Shared = Arc::default();
    let url = adapter(state.clone()).await;
    let s = start(
        tempfile::tempdir().unwrap(),
        &format!("{}  rescan_after: 1s\n", scan_policy(&url, true, "deny")),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let (d, _) = dev.image("prod/aged", "v1", "layer aged").await;
    state
        .lock()
        .unwrap()
        .findings
        .insert(d.clone(), vec![("CVE-2026-0001".into(), "Low".into())]);
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/aged:pull"]).await;
    wait_report(&s, &reader, "prod/aged", &d).await;
    assert_eq!(get(&s, &reader, "prod/aged", "v1", false).await.0, 200);
    // the scanner's database learns of a critical CVE: pulls renew the aged report and then stop
    state
        .lock()
        .unwrap()
        .findings
        .insert(d.clone(), vec![("CVE-2026-7777".into(), "Critical".into())]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, _, body) = get(&s, &reader, "prod/aged", "v1", false).await;
        if st == 403 {
            assert!(body.contains("CVE-2026-7777"), "{body}");
            break;
        }
        assert_eq!(st, 200, "{body}");
        assert!(Instant::now() < deadline, "the report was never renewed:\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(state.lock().unwrap().requests.len() >= 2);
}

/// The tags that matter are scanned and rescanned on a schedule, with no pull at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_rescanned_on_a_schedule_without_pulls() {
    let state: Shared = Arc::default();
    let url = adapter(state.clone()).await;
    let s = start(
        tempfile::tempdir().unwrap(),
        &format!(
            "{}  scan_on_push: false\n  rescan_after: 1s\n",
            scan_policy(&url, true, "allow")
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let (d, _) = dev.image("prod/sched", "v1", "layer sched").await;
    let scans_of = |st: &Shared| st.lock().unwrap().requests.iter().filter(|r| r.1 == d).count();
    let deadline = Instant::now() + Duration::from_secs(60);
    // first the scan it never had, then a renewal, and nobody pulled
    while scans_of(&state) < 2 {
        assert!(Instant::now() < deadline, "no scheduled scans:\n{}", s.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(s.logs().contains("scheduled rescan"), "{}", s.logs());
}

/// `platforms: true`: an index passes only when every platform manifest carries its own trusted
/// signature (`cosign sign --recursive`); the index's signature alone does not stand for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_platform_signed_when_the_policy_says_so() {
    assert!(have("skopeo") && have("openssl") && have("python3"));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}], platforms: true }}\n",
            p1.display()
        ),
    );
    let work = tempfile::tempdir().unwrap();
    let idx = push_index(&s, work.path(), "prod/plat", "v1");
    let raw = client()
        .get(format!("{}/v2/prod/plat/manifests/{idx}", s.url))
        .basic_auth("dev", Some("dev-pw"))
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let index: Value = serde_json::from_slice(&raw).unwrap();
    let children: Vec<(String, usize)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["digest"].as_str().unwrap().to_owned(),
                m["size"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let reference = format!("{}/prod/plat", s.host);
    // the index signed, its platforms not: refused, naming the platform
    let p = payload(&reference, &idx);
    let sig = openssl_sign(&keys, &k1, &p);
    dev.cosign("prod/plat", (&idx, raw.len()), &p, &sig, Store::Tag).await;
    let o = skopeo_pull(&s, "prod/plat:v1", "reader:reader-pw", true);
    assert!(!o.ok && o.stderr.contains("platform manifest"), "{}", o.stderr);
    // one platform signed: still refused; both: pulled
    for (i, (d, size)) in children.iter().enumerate() {
        let p = payload(&reference, d);
        let sig = openssl_sign(&keys, &k1, &p);
        dev.cosign("prod/plat", (d, *size), &p, &sig, Store::Tag).await;
        let o = skopeo_pull(&s, "prod/plat:v1", "reader:reader-pw", true);
        if i + 1 < children.len() {
            assert!(!o.ok, "pulled with a platform unsigned");
        } else {
            assert!(o.ok, "every platform signed: {}", o.stderr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// notation COSE envelopes and cosign sigstore bundles, written from their specifications
// (tests/trust_support) and signed with the openssl CLI

mod trust_support;
use trust_support::CoseHeaders;

/// openssl's raw signature of `data` with SHA-256: ECDSA (ASN.1 DER), RSA PKCS#1 v1.5, or RSA
/// PSS (salt as long as the hash) when `pss`.
fn openssl_raw(dir: &Path, key: &Path, data: &[u8], pss: bool) -> Vec<u8> {
    let n = rand_name();
    let input = dir.join(format!("{n}.raw-in"));
    let out = dir.join(format!("{n}.raw-sig"));
    std::fs::write(&input, data).unwrap();
    let pss_opts: &[&str] = if pss {
        &["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
    } else {
        &[]
    };
    openssl(
        &[
            &["dgst", "-sha256"][..],
            pss_opts,
            &[
                "-sign",
                key.to_str().unwrap(),
                "-out",
                out.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
        ]
        .concat(),
    );
    std::fs::read(out).unwrap()
}

/// The Notary Project payload for `target`.
fn notary_payload(target: (&str, usize)) -> Vec<u8> {
    serde_json::to_vec(&json!({"targetArtifact":{"mediaType":OCI_MANIFEST,"digest":target.0,"size":target.1}})).unwrap()
}

/// A COSE envelope over `payload`, signed by `key` (PS256, or ES256 for an `ec…` key).
fn cose_envelope(
    dir: &Path,
    key: &Path,
    chain: &[&[u8]],
    payload: &[u8],
    crit: &[&str],
    expiry: Option<u64>,
) -> Vec<u8> {
    let ec = key.file_name().unwrap().to_str().unwrap().starts_with("ec");
    let extra: &[(&str, &str)] = if crit.contains(&"io.example.critical") {
        &[("io.example.critical", "x")]
    } else {
        &[]
    };
    let protected = trust_support::cose_protected(&CoseHeaders {
        alg: if ec { trust_support::ES256 } else { trust_support::PS256 },
        crit,
        signing_time: 1_764_763_200,
        expiry,
        extra,
    });
    let tbs = trust_support::cose_to_be_signed(&protected, payload);
    let der = openssl_raw(dir, key, &tbs, !ec);
    let sig = if ec { ecdsa_raw(&der, 32) } else { der };
    trust_support::cose_envelope(&protected, chain, payload, &sig)
}

impl Reg<'_> {
    /// A referrer of `target` whose one layer is `blob` (of media type `layer`); its digest.
    async fn referrer(&self, repo: &str, target: (&str, usize), artifact: &str, layer: &str, blob: &[u8]) -> String {
        self.blob(repo, blob).await;
        self.blob(repo, b"{}").await;
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,"artifactType":artifact,
            "config":{"mediaType":"application/vnd.oci.empty.v1+json","digest":digest(b"{}"),"size":2},
            "layers":[{"mediaType":layer,"digest":digest(blob),"size":blob.len()}],
            "subject":{"mediaType":OCI_MANIFEST,"digest":target.0,"size":target.1}});
        let b = serde_json::to_vec(&m).unwrap();
        self.manifest(repo, &digest(&b), &m).await.0
    }

    /// The bytes of a manifest, read as dev (who may push, so never gated).
    async fn manifest_bytes(&self, repo: &str, d: &str) -> Vec<u8> {
        let r = client()
            .get(format!("{}/v2/{repo}/manifests/{d}", self.s.url))
            .basic_auth(self.user, Some(self.pw))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let b = r.bytes().await.unwrap().to_vec();
        assert_eq!(digest(&b), d);
        b
    }
}

const NOTARY: &str = "application/vnd.cncf.notary.signature";
const SIGSTORE_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notation_cose_envelopes_chain_to_a_trusted_root() {
    assert!(have("skopeo") && have("openssl"));
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (root, key, leaf, root_der) = notation_chain(&pki, "trusted");
    let (ec_root, ec_key, ec_leaf, ec_root_der) = notation_chain(&pki, "ec");
    let (_, other_key, other_leaf, other_root) = notation_chain(&pki, "other");
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ notation: [{}, {}] }}\n",
            root.display(),
            ec_root.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/cose";
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/cose:pull"]).await;
    let scheme = ["io.cncf.notary.signingScheme"];
    let chain: &[&[u8]] = &[&leaf, &root_der];
    let mut cases: Vec<(&str, String, &str)> = Vec::new();

    // PS256 from an RSA leaf, ES256 from a P-256 leaf
    let good = dev.image(repo, "good", "cose good").await;
    let env = cose_envelope(&pki, &key, chain, &notary_payload((&good.0, good.1)), &scheme, None);
    dev.referrer(repo, (&good.0, good.1), NOTARY, "application/cose", &env)
        .await;
    let ec = dev.image(repo, "ec", "cose ec").await;
    let env = cose_envelope(
        &pki,
        &ec_key,
        &[&ec_leaf, &ec_root_der],
        &notary_payload((&ec.0, ec.1)),
        &["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"],
        Some(4_000_000_000),
    );
    dev.referrer(repo, (&ec.0, ec.1), NOTARY, "application/cose", &env)
        .await;
    let o = skopeo_pull(&s, &format!("{repo}:good"), "reader:reader-pw", false);
    assert!(o.ok, "a COSE-signed image must pull: {}", o.stderr);
    for t in ["good", "ec"] {
        let (st, h, body) = get(&s, &reader, repo, t, false).await;
        assert_eq!((st, h.as_str()), (200, "verified"), "{t}: {body}");
    }

    // a chain to a root the rule does not name
    let img = dev.image(repo, "untrusted", "cose untrusted").await;
    let env = cose_envelope(
        &pki,
        &other_key,
        &[&other_leaf, &other_root],
        &notary_payload((&img.0, img.1)),
        &scheme,
        None,
    );
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", &env)
        .await;
    cases.push(("untrusted", img.0, "does not chain to a trusted root"));
    // good's valid envelope filed under another image
    let img = dev.image(repo, "moved", "cose moved").await;
    let env = cose_envelope(&pki, &key, chain, &notary_payload((&good.0, good.1)), &scheme, None);
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", &env)
        .await;
    cases.push(("moved", img.0, "names another digest"));
    // signed for good, then its payload swapped for this image's descriptor
    let img = dev.image(repo, "tampered", "cose tampered").await;
    let protected = trust_support::cose_protected(&CoseHeaders {
        alg: trust_support::PS256,
        crit: &scheme,
        signing_time: 1_764_763_200,
        expiry: None,
        extra: &[],
    });
    let sig = openssl_raw(
        &pki,
        &key,
        &trust_support::cose_to_be_signed(&protected, &notary_payload((&good.0, good.1))),
        true,
    );
    let env = trust_support::cose_envelope(&protected, chain, &notary_payload((&img.0, img.1)), &sig);
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", &env)
        .await;
    cases.push(("tampered", img.0, "1 checked: no signature from a trusted key"));
    // a critical header this verifier does not know; an expired signature
    let img = dev.image(repo, "crit", "cose crit").await;
    let env = cose_envelope(
        &pki,
        &key,
        chain,
        &notary_payload((&img.0, img.1)),
        &["io.cncf.notary.signingScheme", "io.example.critical"],
        None,
    );
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", &env)
        .await;
    cases.push(("crit", img.0, "unknown critical headers"));
    let img = dev.image(repo, "expired", "cose expired").await;
    let env = cose_envelope(
        &pki,
        &key,
        chain,
        &notary_payload((&img.0, img.1)),
        &["io.cncf.notary.signingScheme", "io.cncf.notary.expiry"],
        Some(1_000_000_000),
    );
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", &env)
        .await;
    cases.push(("expired", img.0, "expired"));
    // not CBOR at all
    let img = dev.image(repo, "garbage", "cose garbage").await;
    dev.referrer(repo, (&img.0, img.1), NOTARY, "application/cose", b"\xd2\x84garbage")
        .await;
    cases.push(("garbage", img.0, "not a COSE_Sign1_Tagged"));
    for (tag, d, why) in &cases {
        let (st, _, body) = get(&s, &reader, repo, tag, false).await;
        assert_eq!(st, 403, "{tag}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        assert!(body.contains(d.as_str()) && body.contains(why), "{tag}: {body}");
    }
    let o = skopeo_pull(&s, &format!("{repo}:tampered"), "reader:reader-pw", false);
    assert!(
        !o.ok && o.stderr.contains("no signature from a trusted key"),
        "{}",
        o.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cosign_bundles_count_when_they_bind_the_digest() {
    assert!(have("skopeo") && have("openssl"));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let (k2, p2) = keypair(&keys, "k2", true);
    let (k3, _) = keypair(&keys, "k3", false);
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}, {}] }}\n",
            p1.display(),
            p2.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/bundle";
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/bundle:pull"]).await;
    let dsse = |key: &Path, target: &str, predicate: &str| {
        let st = trust_support::statement(target, predicate);
        let sig = openssl_raw(&keys, key, &trust_support::dsse_pae(&st), false);
        trust_support::bundle_dsse(&st, &sig)
    };
    // a: what `cosign sign --new-bundle-format` attaches (DSSE, in-toto statement), key 1;
    // b: a message signature over the manifest bytes, the RSA key 2
    let a = dev.image(repo, "a", "bundle a").await;
    dev.referrer(
        repo,
        (&a.0, a.1),
        SIGSTORE_BUNDLE,
        SIGSTORE_BUNDLE,
        &dsse(&k1, &a.0, SIGN_PREDICATE),
    )
    .await;
    let b = dev.image(repo, "b", "bundle b").await;
    let mb = dev.manifest_bytes(repo, &b.0).await;
    let raw = hex::decode(b.0.trim_start_matches("sha256:")).unwrap();
    let bundle = trust_support::bundle_message(&raw, &openssl_raw(&keys, &k2, &mb, false));
    dev.referrer(repo, (&b.0, b.1), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, &bundle)
        .await;
    for t in ["a", "b"] {
        let o = skopeo_pull(&s, &format!("{repo}:{t}"), "reader:reader-pw", false);
        assert!(o.ok, "bundle-signed {t} must pull: {}", o.stderr);
        let (st, h, body) = get(&s, &reader, repo, t, false).await;
        assert_eq!((st, h.as_str()), (200, "verified"), "{t}: {body}");
    }

    let mut cases: Vec<(&str, String, &str)> = Vec::new();
    // an untrusted key; a's statement filed under c; an attestation (not a signature);
    // a's message digest with a signature over c's manifest
    let img = dev.image(repo, "c", "bundle c").await;
    dev.referrer(
        repo,
        (&img.0, img.1),
        SIGSTORE_BUNDLE,
        SIGSTORE_BUNDLE,
        &dsse(&k3, &img.0, SIGN_PREDICATE),
    )
    .await;
    cases.push(("c", img.0, "1 checked: no signature from a trusted key"));
    let img = dev.image(repo, "d", "bundle d").await;
    dev.referrer(
        repo,
        (&img.0, img.1),
        SIGSTORE_BUNDLE,
        SIGSTORE_BUNDLE,
        &dsse(&k1, &a.0, SIGN_PREDICATE),
    )
    .await;
    cases.push(("d", img.0, "names another digest"));
    let img = dev.image(repo, "e", "bundle e").await;
    let slsa = dsse(&k1, &img.0, "https://slsa.dev/provenance/v1");
    dev.referrer(repo, (&img.0, img.1), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, &slsa)
        .await;
    cases.push(("e", img.0, "an attestation, not a cosign signature"));
    let img = dev.image(repo, "f", "bundle f").await;
    let mf = dev.manifest_bytes(repo, &img.0).await;
    let raw = hex::decode(a.0.trim_start_matches("sha256:")).unwrap();
    let bundle = trust_support::bundle_message(&raw, &openssl_raw(&keys, &k1, &mf, false));
    dev.referrer(repo, (&img.0, img.1), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, &bundle)
        .await;
    cases.push(("f", img.0, "names another digest"));
    // a DSSE statement signed by key 1, its payload then pointed at g
    let img = dev.image(repo, "g", "bundle g").await;
    let st = trust_support::statement(&a.0, SIGN_PREDICATE);
    let sig = openssl_raw(&keys, &k1, &trust_support::dsse_pae(&st), false);
    let bundle = trust_support::bundle_dsse(&trust_support::statement(&img.0, SIGN_PREDICATE), &sig);
    dev.referrer(repo, (&img.0, img.1), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, &bundle)
        .await;
    cases.push(("g", img.0, "1 checked: no signature from a trusted key"));
    for (tag, d, why) in &cases {
        let (st, _, body) = get(&s, &reader, repo, tag, false).await;
        assert_eq!(st, 403, "{tag}: {body}");
        assert!(body.contains(d.as_str()) && body.contains(why), "{tag}: {body}");
        assert_eq!(get(&s, &reader, repo, d, true).await.0, 403, "HEAD {tag}");
    }
    let o = skopeo_pull(&s, &format!("{repo}:d"), "reader:reader-pw", false);
    assert!(
        !o.ok && o.stderr.contains("no signature from a trusted key"),
        "{}",
        o.stderr
    );
}

impl Reg<'_> {
    /// The referrers tag schema (`sha256-<hex>`), as clients keep it for a registry without the
    /// referrers API: an index of the referrers of `target`.
    async fn referrers_tag(&self, repo: &str, target: &str, referrers: &[(&str, &str)]) {
        let ms: Vec<Value> = referrers
            .iter()
            .map(|(d, artifact)| json!({"mediaType":OCI_MANIFEST,"digest":d,"size":0,"artifactType":artifact}))
            .collect();
        let mut ms = ms;
        for (m, (d, _)) in ms.iter_mut().zip(referrers) {
            m["size"] = json!(self.manifest_bytes(repo, d).await.len());
        }
        let body = serde_json::to_vec(&json!({"schemaVersion":2,
            "mediaType":"application/vnd.oci.image.index.v1+json","manifests":ms}))
        .unwrap();
        let r = client()
            .put(format!(
                "{}/v2/{repo}/manifests/{}",
                self.s.url,
                target.replace(':', "-")
            ))
            .basic_auth(self.user, Some(self.pw))
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "referrers tag: {}", r.text().await.unwrap());
    }
}

/// regate in `upstream:` mode in front of distribution 2.8, which trusts regate's tokens: regate
/// is started once alone with `config` (to make its token signing certificate), distribution
/// with that certificate, then regate again with `upstream:` added.
fn behind_upstream(dir: tempfile::TempDir, config: &str) -> (Server, trust_support::Distribution) {
    let first = Server::start_in(dir, config);
    let cert = first.data().join("token.crt");
    let dir = first.into_dir();
    let up = trust_support::distribution(&format!(
        "auth:\n  token:\n    realm: http://127.0.0.1:1/token\n    service: registry.test\n    issuer: regate\n    rootcertbundle: {}\n",
        cert.display()
    ));
    let cfg = dir.path().join("regate.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!("upstream: {}\n", up.url));
    std::fs::write(&cfg, text).unwrap();
    (Server::start_with_config(dir, &cfg), up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mode_enforces_the_policy() {
    assert!(have("skopeo") && have("openssl") && have("docker-registry"));
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let (k1, p1) = keypair(&keys, "k1", false);
    let (root, leaf_key, leaf, root_der) = notation_chain(&keys, "trusted");
    let hp = htpasswd(dir.path(), USERS);
    let (s, _upstream) = behind_upstream(
        dir,
        &format!(
            "auth:\n  htpasswd: {}\n  service: registry.test\n{}policy:\n  - repository: \"prod/*\"\n    require_signature: {{ cosign: [{}], notation: [{}] }}\n",
            hp.display(),
            access(),
            p1.display(),
            root.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/app";
    let reference = format!("{}/{repo}", s.host);
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/app:pull"]).await;
    let pusher = token(&s, Some(("dev", "dev-pw")), &["repository:prod/app:pull,push"]).await;

    // pushes pass (images and signatures): a under the .sig tag, b with a COSE envelope and
    // c with a sigstore bundle, both referrers listed under the referrers tag schema (the
    // upstream has no referrers API)
    let a = dev.image(repo, "a", "up a").await;
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &a.0));
    dev.cosign(repo, (&a.0, a.1), &payload(&reference, &a.0), &sig, Store::Tag)
        .await;
    let b = dev.image(repo, "b", "up b").await;
    let env = cose_envelope(
        &keys,
        &leaf_key,
        &[&leaf, &root_der],
        &notary_payload((&b.0, b.1)),
        &["io.cncf.notary.signingScheme"],
        None,
    );
    let rb = dev.referrer(repo, (&b.0, b.1), NOTARY, "application/cose", &env).await;
    dev.referrers_tag(repo, &b.0, &[(&rb, NOTARY)]).await;
    let c = dev.image(repo, "c", "up c").await;
    let st = trust_support::statement(&c.0, SIGN_PREDICATE);
    let bundle = trust_support::bundle_dsse(&st, &openssl_raw(&keys, &k1, &trust_support::dsse_pae(&st), false));
    let rc = dev
        .referrer(repo, (&c.0, c.1), SIGSTORE_BUNDLE, SIGSTORE_BUNDLE, &bundle)
        .await;
    dev.referrers_tag(repo, &c.0, &[(&rc, SIGSTORE_BUNDLE)]).await;
    let u = dev.image(repo, "u", "up u").await;

    for t in ["a", "b", "c"] {
        let o = skopeo_pull(&s, &format!("{repo}:{t}"), "reader:reader-pw", false);
        assert!(o.ok, "signed {t} must pull through the upstream: {}", o.stderr);
        let (st, h, body) = get(&s, &reader, repo, t, false).await;
        assert_eq!((st, h.as_str()), (200, "verified"), "{t}: {body}");
        assert_eq!(get(&s, &reader, repo, t, true).await.0, 200, "HEAD {t}");
    }
    let o = skopeo_pull(&s, &format!("{repo}:u"), "reader:reader-pw", false);
    assert!(
        !o.ok && o.stderr.contains("no signature from a trusted key") && o.stderr.contains(&u.0),
        "unsigned u must not pull: {}",
        o.stderr
    );
    let (st, _, body) = get(&s, &reader, repo, "u", false).await;
    assert_eq!(st, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["errors"][0]["code"], "DENIED");
    let msg = v["errors"][0]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("prod/app@{}", u.0)) && msg.contains("none found"),
        "{msg}"
    );
    assert_eq!(get(&s, &reader, repo, &u.0, true).await.0, 403, "HEAD u by digest");
    // a caller who may push reads it; the signature artifacts stay readable
    assert_eq!(get(&s, &pusher, repo, "u", false).await.0, 200);
    let sig_tag = a.0.replace(':', "-") + ".sig";
    assert_eq!(get(&s, &reader, repo, &sig_tag, false).await.0, 200);
    // and so do the referrers tag schema's indexes (notation and cosign verify read them)
    for t in [&b.0, &c.0] {
        let tag = t.replace(':', "-");
        let r = client()
            .get(format!("{}/v2/{repo}/manifests/{tag}", s.url))
            .bearer_auth(&reader)
            .header("accept", "application/vnd.oci.image.index.v1+json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{tag}: {}", r.text().await.unwrap());
    }
    // signing u through regate counts at once
    let sig = openssl_sign(&keys, &k1, &payload(&reference, &u.0));
    dev.cosign(repo, (&u.0, u.1), &payload(&reference, &u.0), &sig, Store::Tag)
        .await;
    assert_eq!(get(&s, &reader, repo, "u", false).await.0, 200, "u after signing");
    // a repository no rule covers
    dev.image("other/x", "v1", "up other").await;
    let t = token(&s, Some(("reader", "reader-pw")), &["repository:other/x:pull"]).await;
    assert_eq!(get(&s, &t, "other/x", "v1", false).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mode_scans_on_push_and_gates_pulls() {
    assert!(have("skopeo") && have("docker-registry"));
    let state: Shared = Arc::default();
    let url = adapter(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let hp = htpasswd(dir.path(), USERS);
    let (s, _upstream) = behind_upstream(
        dir,
        &format!(
            "auth:\n  htpasswd: {}\n  service: registry.test\n{}{}",
            hp.display(),
            access(),
            scan_policy(&url, true, "deny")
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/scanned";
    let mut digests = Vec::new();
    for (tag, findings) in [
        ("bad", vec![("CVE-2026-7777", "Critical")]),
        ("fine", vec![("CVE-2026-0001", "Low")]),
    ] {
        let content = format!("upstream layer {tag}");
        let cfg = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let m = json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":digest(cfg),"size":cfg.len()},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":digest(content.as_bytes()),"size":content.len()}]});
        let d = digest(&serde_json::to_vec(&m).unwrap());
        state.lock().unwrap().findings.insert(
            d.clone(),
            findings.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
        );
        // the push goes through regate to the upstream; regate asks for the scan
        let (pd, _) = dev.image(repo, tag, &content).await;
        assert_eq!(pd, d);
        digests.push((tag, d));
    }
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/scanned:pull"]).await;
    for (tag, d) in &digests {
        // the report is kept here, for a manifest the upstream holds
        let rep = wait_report(&s, &reader, repo, d).await;
        assert_eq!(rep["artifact"]["digest"], d.as_str());
        let (st, _, body) = get(&s, &reader, repo, tag, false).await;
        if *tag == "bad" {
            assert_eq!(st, 403, "{body}");
            let msg = serde_json::from_str::<Value>(&body).unwrap()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(
                msg.contains(&format!("{repo}@{d}")) && msg.contains("CVE-2026-7777"),
                "{msg}"
            );
            let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
            assert!(!o.ok && o.stderr.contains(d.as_str()), "{}", o.stderr);
        } else {
            assert_eq!(st, 200, "{body}");
            let o = skopeo_pull(&s, &format!("{repo}:{tag}"), "reader:reader-pw", false);
            assert!(o.ok, "{}", o.stderr);
        }
    }
    // the scans were asked for on push (nothing had pulled yet), and the adapter read each
    // manifest through regate from the upstream with its pull-only token
    let requests = state.lock().unwrap().requests.clone();
    for (_, d) in &digests {
        let seen: Vec<_> = requests.iter().filter(|r| &r.1 == d).collect();
        assert!(!seen.is_empty(), "no scan asked for {d}: {requests:?}");
        assert!(seen.iter().all(|r| r.0 == repo && r.3 == 200), "{seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notation_identities_narrow_the_signers() {
    assert!(have("openssl"));
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    std::fs::create_dir_all(&pki).unwrap();
    let (root, leaf_key, leaf, root_der) = notation_chain(&pki, "acme");
    // one root; "mine/*" trusts the signer's organisation, "theirs/*" another one under it
    let s = start(
        dir,
        &format!(
            "policy:\n  - repository: \"mine/*\"\n    require_signature: {{ notation: [{r}], notation_identities: [\"x509.subject: C=CN, ST=Zhejiang, O=acme org\"] }}\n  - repository: \"theirs/*\"\n    require_signature: {{ notation: [{r}], notation_identities: [\"x509.subject: C=CN, ST=Zhejiang, O=other org\", \"x509.subject: C=US, ST=WA, O=acme org\"] }}\n",
            r = root.display()
        ),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    for (repo, trusted) in [("mine/app", true), ("theirs/app", false)] {
        let img = dev.image(repo, "v1", "identity layer").await;
        let env = notation_envelope(&pki, &leaf_key, &[&leaf, &root_der], (&img.0, img.1));
        dev.notation(repo, (&img.0, img.1), &env).await;
        let reader = token(&s, Some(("reader", "reader-pw")), &[&format!("repository:{repo}:pull")]).await;
        let (st, h, body) = get(&s, &reader, repo, "v1", false).await;
        if trusted {
            assert_eq!((st, h.as_str()), (200, "verified"), "{repo}: {body}");
        } else {
            assert_eq!(st, 403, "{repo}: {body}");
            assert!(body.contains("not of a trusted identity"), "{body}");
        }
    }
    // an identity that does not name C, ST and O is refused, as notation refuses it
    let bad = s.data().parent().unwrap().join("bad-identity.yaml");
    std::fs::write(
        &bad,
        format!(
            "storage: {{ backend: memory }}\npolicy:\n  - repository: \"x/*\"\n    require_signature: {{ notation: [{}], notation_identities: [\"x509.subject: CN=acme signer\"] }}\n",
            root.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_regate"))
        .args(["check-config", "--schema-only", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("policy[0].require_signature.notation_identities[0]") && err.contains("C, ST and O"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_on_demand_by_those_who_may_push() {
    let state: Shared = Arc::default();
    let url = adapter(state.clone()).await;
    let s = start(
        tempfile::tempdir().unwrap(),
        &format!("{}  scan_on_push: false\n", scan_policy(&url, true, "allow")),
    );
    let dev = Reg {
        s: &s,
        user: "dev",
        pw: "dev-pw",
    };
    let repo = "prod/demand";
    let (d, _) = dev.image(repo, "v1", "layer on demand").await;
    state
        .lock()
        .unwrap()
        .findings
        .insert(d.clone(), vec![("CVE-2026-4242".into(), "High".into())]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(state.lock().unwrap().requests.is_empty(), "scan_on_push is off");
    let post = |bearer: String, digest: String| {
        let url = format!("{}/api/v1/scans/{repo}/{digest}", s.url);
        async move { client().post(url).bearer_auth(bearer).send().await.unwrap() }
    };
    // a reader may read reports, not ask for scans
    let reader = token(&s, Some(("reader", "reader-pw")), &["repository:prod/demand:pull"]).await;
    let r = post(reader.clone(), d.clone()).await;
    assert!([401, 403].contains(&r.status().as_u16()), "{}", r.status());
    let pusher = token(&s, Some(("dev", "dev-pw")), &["repository:prod/demand:pull,push"]).await;
    let missing = format!("sha256:{}", "0".repeat(64));
    let r = post(pusher.clone(), missing).await;
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN", "{v}");
    let r = post(pusher.clone(), d.clone()).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("/api/v1/scans/{repo}/{d}")
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["requested"], json!([d]));
    // the report arrives and the pull is blocked by it
    let rep = wait_report(&s, &reader, repo, &d).await;
    assert_eq!(rep["vulnerabilities"][0]["id"], "CVE-2026-4242");
    let (st, _, body) = get(&s, &reader, repo, "v1", false).await;
    assert_eq!(st, 403, "{body}");
    assert!(body.contains("CVE-2026-4242"), "{body}");
}
