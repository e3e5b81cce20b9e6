#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Integration tests with real clients against the real binary: skopeo round trips (multi-layer,
//! multi-arch, a 256 MiB layer, concurrent pushes), docker login/push/pull with identity tokens,
//! distribution 2.8 (`docker-registry`) reading and writing the same storage root, distribution
//! accepting regate's JWTs, and SIGKILL in the middle of 1 GiB uploads.

mod common;

use common::{htpasswd, Server};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// running commands

struct Out {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Out {
    fn ok(self, what: &str) -> Out {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    fn failed(self, what: &str) -> Out {
        assert!(
            !self.status.success(),
            "{what} succeeded but should have failed:\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `cmd` to completion (killing it and failing after `timeout`), feeding it `stdin`.
fn run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Out {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(s) = stdin {
        let mut w = child.stdin.take().unwrap();
        w.write_all(s.as_bytes()).unwrap();
    }
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
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    Out {
        status,
        stdout: ho.join().unwrap(),
        stderr: he.join().unwrap(),
    }
}

const CMD_TIMEOUT: Duration = Duration::from_secs(300);

fn skopeo_cmd(args: &[&str]) -> Command {
    let mut c = Command::new("skopeo");
    c.arg("--insecure-policy").args(args);
    c
}

fn skopeo(args: &[&str]) -> Out {
    run(&mut skopeo_cmd(args), None, CMD_TIMEOUT)
}

/// `creds` as skopeo takes them, `user:password`.
fn creds_of(s: &Server) -> String {
    let (u, p) = s.admin();
    format!("{u}:{p}")
}

/// `skopeo copy` into a registry (plain HTTP), keeping digests.
fn push(src: &str, dest: &str, creds: Option<&str>, all: bool) -> Out {
    let mut a = vec!["copy", "--preserve-digests", "--dest-tls-verify=false"];
    if all {
        a.push("--all");
    }
    if let Some(c) = creds {
        a.extend(["--dest-creds", c]);
    }
    a.extend([src, dest]);
    skopeo(&a)
}

/// `skopeo copy` out of a registry (plain HTTP), keeping digests.
fn pull(src: &str, dest: &str, creds: Option<&str>, all: bool) -> Out {
    let mut a = vec!["copy", "--preserve-digests", "--src-tls-verify=false"];
    if all {
        a.push("--all");
    }
    if let Some(c) = creds {
        a.extend(["--src-creds", c]);
    }
    a.extend([src, dest]);
    skopeo(&a)
}

/// `skopeo inspect [extra...] IMAGE` against a plain-HTTP registry.
fn inspect(image: &str, creds: Option<&str>, extra: &[&str]) -> Out {
    let mut a = vec!["inspect", "--tls-verify=false"];
    if let Some(c) = creds {
        a.extend(["--creds", c]);
    }
    a.extend(extra);
    a.push(image);
    skopeo(&a)
}

fn list_tags(repo: &str, creds: Option<&str>) -> Vec<String> {
    let mut a = vec!["list-tags", "--tls-verify=false"];
    if let Some(c) = creds {
        a.extend(["--creds", c]);
    }
    a.push(repo);
    let v = skopeo(&a).ok("skopeo list-tags").json();
    let mut t: Vec<String> = v["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    t.sort();
    t
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

// ---------------------------------------------------------------------------------------------
// OCI image layouts

/// Runs mkimage.py; returns the digest of what `tag` names.
fn mkimage(out: &Path, tag: &str, args: &[&str]) -> String {
    let o = run(
        Command::new("python3")
            .arg(common::mkimage())
            .arg(out)
            .arg(tag)
            .args(args),
        None,
        CMD_TIMEOUT,
    )
    .ok("mkimage.py");
    let d = o.stdout.trim().to_owned();
    assert!(d.starts_with("sha256:") && d.len() == 71, "mkimage printed {d:?}");
    d
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(blob_path(layout, digest)).unwrap_or_else(|e| panic!("blob {digest} in {}: {e}", layout.display()))
}

fn json_blob(layout: &Path, digest: &str) -> Value {
    serde_json::from_slice(&read_blob(layout, digest)).unwrap()
}

/// The digest `index.json` names with ref name `tag`.
fn tagged(layout: &Path, tag: &str) -> String {
    let idx: Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .and_then(|m| m["digest"].as_str())
        .unwrap_or_else(|| panic!("no {tag} in {idx}"))
        .to_owned()
}

/// Every digest reachable from `digest` (itself, child manifests, configs, layers).
fn closure(layout: &Path, digest: &str, out: &mut BTreeSet<String>) {
    out.insert(digest.to_owned());
    let v = json_blob(layout, digest);
    if let Some(ms) = v["manifests"].as_array() {
        for m in ms {
            closure(layout, m["digest"].as_str().unwrap(), out);
        }
    } else {
        out.insert(v["config"]["digest"].as_str().unwrap().to_owned());
        for l in v["layers"].as_array().unwrap() {
            out.insert(l["digest"].as_str().unwrap().to_owned());
        }
    }
}

fn closure_of(layout: &Path, digest: &str) -> BTreeSet<String> {
    let mut s = BTreeSet::new();
    closure(layout, digest, &mut s);
    s
}

fn file_digest(p: &Path) -> String {
    use sha2::Digest as _;
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// `back` (a copy out of a registry, tagged `tag`) holds exactly the image `digest` of `src`,
/// every blob of it present with the right content.
fn assert_same_image(src: &Path, digest: &str, back: &Path, tag: &str) {
    assert_eq!(tagged(back, tag), digest, "copied-back image has another digest");
    let want = closure_of(src, digest);
    let got = closure_of(back, digest);
    assert_eq!(got, want, "copied-back image references other blobs");
    for d in &got {
        assert_eq!(&file_digest(&blob_path(back, d)), d, "blob {d} read back corrupted");
    }
}

/// The layer digests of the single-platform manifest `digest`.
fn layers_of(layout: &Path, digest: &str) -> Vec<String> {
    json_blob(layout, digest)["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect()
}

fn str_vec(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect()
}

/// A registry's view of `image` matches the layout: raw manifest bytes, config bytes, layers.
fn assert_registry_has(image: &str, creds: Option<&str>, src: &Path, digest: &str) {
    let raw = inspect(image, creds, &["--raw"]).ok("skopeo inspect --raw");
    assert_eq!(
        raw.stdout.as_bytes(),
        read_blob(src, digest).as_slice(),
        "{image}: manifest bytes differ from what was pushed"
    );
    let m = json_blob(src, digest);
    if m["manifests"].is_array() {
        return;
    }
    let cfg = inspect(image, creds, &["--config", "--raw"]).ok("skopeo inspect --config --raw");
    let cfg_digest = m["config"]["digest"].as_str().unwrap();
    assert_eq!(
        cfg.stdout.as_bytes(),
        read_blob(src, cfg_digest).as_slice(),
        "{image}: config differs"
    );
    let v = inspect(image, creds, &[]).ok("skopeo inspect").json();
    assert_eq!(v["Digest"], digest, "{image}: skopeo inspect digest");
    assert_eq!(str_vec(&v["Layers"]), layers_of(src, digest), "{image}: layers");
}

fn assert_manifest_unknown(image: &str, creds: Option<&str>) {
    let o = inspect(image, creds, &["--raw"]).failed("skopeo inspect of a deleted image");
    assert!(
        o.stderr.to_lowercase().contains("manifest unknown"),
        "{image}: expected 'manifest unknown', got: {}",
        o.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// distribution (`docker-registry serve`)

struct Distribution {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Status line and headers of `GET path` over plain HTTP/1.1, or None when nothing answers.
fn raw_get(port: u16, path: &str) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n").as_bytes())
        .ok()?;
    let mut b = Vec::new();
    let _ = s.read_to_end(&mut b);
    let t = String::from_utf8_lossy(&b).into_owned();
    t.starts_with("HTTP/").then_some(t)
}

impl Distribution {
    /// Starts distribution on `root` with `extra` YAML (e.g. an `auth:` section) and waits until
    /// it answers `/v2/`.
    fn start(work: &Path, root: &Path, extra: &str) -> Distribution {
        for _ in 0..5 {
            // docker-registry cannot listen on port 0 and tell us the port, so pick a free one:
            // bind 127.0.0.1:0, note the port and release it. Another process may grab it in
            // between; this is the one accepted race (a start that fails is retried).
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let cfg = work.join(format!("distribution-{port}.yml"));
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                    root.display()
                ),
            )
            .unwrap();
            let log = work.join(format!("distribution-{port}.log"));
            let f = std::fs::File::create(&log).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdin(Stdio::null())
                .stdout(f.try_clone().unwrap())
                .stderr(f)
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if child.try_wait().unwrap().is_some() {
                    eprintln!(
                        "docker-registry on port {port} exited: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if let Some(r) = raw_get(port, "/v2/") {
                    if r.to_lowercase().contains("docker-distribution-api-version") {
                        return Distribution { child, port, log };
                    }
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not start: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("docker-registry could not start on a free port in 5 attempts");
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// 1. skopeo round trips

#[test]
fn skopeo_multi_layer_round_trip_tags_and_delete() {
    let s = Server::start("");
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = mkimage(&src, "v1", &["3", "1", "0.2", "0"]);
    let oci = format!("oci:{}:v1", src.display());
    let repo = format!("docker://{}/admin/app", s.host);

    push(&oci, &format!("{repo}:v1"), c, false).ok("skopeo copy to regate");
    // a second tag for the same image: the blobs are already there
    push(&oci, &format!("{repo}:v2"), c, false).ok("skopeo copy of a second tag");

    assert_registry_has(&format!("{repo}:v1"), c, &src, &digest);
    assert_registry_has(&format!("{repo}@{digest}"), c, &src, &digest);
    let v = inspect(&format!("{repo}:v1"), c, &[]).ok("inspect").json();
    assert_eq!(
        str_vec(&v["RepoTags"]).into_iter().collect::<BTreeSet<_>>(),
        ["v1", "v2"].map(String::from).into()
    );
    assert_eq!(list_tags(&repo, c), vec!["v1", "v2"]);

    let back = work.path().join("back");
    pull(&format!("{repo}:v1"), &format!("oci:{}:v1", back.display()), c, false).ok("skopeo copy from regate");
    assert_same_image(&src, &digest, &back, "v1");

    // without credentials nothing is readable
    inspect(&format!("{repo}:v1"), None, &["--raw"]).failed("anonymous inspect");

    skopeo(&["delete", "--tls-verify=false", "--creds", &creds, &format!("{repo}:v1")]).ok("skopeo delete");
    assert_manifest_unknown(&format!("{repo}:v1"), c);
    assert_manifest_unknown(&format!("{repo}@{digest}"), c);
    // deleting a manifest removes every tag that named it, as distribution does
    assert_manifest_unknown(&format!("{repo}:v2"), c);
}

#[test]
fn skopeo_multi_arch_index_copy_all() {
    let s = Server::start("");
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let index = mkimage(
        &src,
        "multi",
        &["2", "0.5", "--gzip", "--platforms", "linux/amd64,linux/arm64/v8"],
    );
    let repo = format!("docker://{}/admin/multi", s.host);
    push(&format!("oci:{}:multi", src.display()), &format!("{repo}:v1"), c, true).ok("skopeo copy --all");

    // the index itself, byte for byte
    assert_registry_has(&format!("{repo}:v1"), c, &src, &index);
    let idx = json_blob(&src, &index);
    let children = idx["manifests"].as_array().unwrap();
    assert_eq!(children.len(), 2);
    for m in children {
        let d = m["digest"].as_str().unwrap();
        assert_registry_has(&format!("{repo}@{d}"), c, &src, d);
        // platform selection through the index picks this child
        let arch = m["platform"]["architecture"].as_str().unwrap();
        let mut extra = vec!["--override-os", "linux", "--override-arch", arch];
        if let Some(v) = m["platform"]["variant"].as_str() {
            extra.extend(["--override-variant", v]);
        }
        let v = inspect(&format!("{repo}:v1"), c, &extra)
            .ok("inspect with platform")
            .json();
        assert_eq!(v["Architecture"], arch);
        assert_eq!(
            str_vec(&v["Layers"]),
            layers_of(&src, d),
            "{arch}: layers via the index"
        );
    }

    let back = work.path().join("back");
    pull(&format!("{repo}:v1"), &format!("oci:{}:v1", back.display()), c, true).ok("skopeo copy --all back");
    assert_same_image(&src, &index, &back, "v1");
}

#[test]
fn skopeo_256mib_layer_round_trip() {
    let s = Server::start("");
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = mkimage(&src, "big", &["256"]);
    let layers = layers_of(&src, &digest);
    assert_eq!(layers.len(), 1);
    let image = format!("docker://{}/admin/big:v1", s.host);
    push(&format!("oci:{}:big", src.display()), &image, c, false).ok("skopeo copy of 256 MiB");
    assert_registry_has(&image, c, &src, &digest);
    let back = work.path().join("back");
    pull(&image, &format!("oci:{}:v1", back.display()), c, false).ok("skopeo copy of 256 MiB back");
    assert_same_image(&src, &digest, &back, "v1");
    let len = std::fs::metadata(blob_path(&back, &layers[0])).unwrap().len();
    assert!(len > 256 << 20, "layer is only {len} bytes");
}

// ---------------------------------------------------------------------------------------------
// 6. concurrent pushes

/// Adds to `layout` image `tag`: the base image `base` plus one layer of `extra_layout`'s image.
fn derive_image(layout: &Path, base: &str, extra_layout: &Path, extra: &str, tag: &str) -> String {
    let put = |b: &[u8]| -> String {
        let d = common::digest(b);
        std::fs::write(blob_path(layout, &d), b).unwrap();
        d
    };
    let em = json_blob(extra_layout, extra);
    let layer = em["layers"][0].clone();
    let ld = layer["digest"].as_str().unwrap();
    std::fs::copy(blob_path(extra_layout, ld), blob_path(layout, ld)).unwrap();
    let ecfg = json_blob(extra_layout, em["config"]["digest"].as_str().unwrap());

    let mut m = json_blob(layout, base);
    let mut cfg = json_blob(layout, m["config"]["digest"].as_str().unwrap());
    cfg["rootfs"]["diff_ids"]
        .as_array_mut()
        .unwrap()
        .push(ecfg["rootfs"]["diff_ids"][0].clone());
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    m["config"]["digest"] = Value::from(put(&cfg_bytes));
    m["config"]["size"] = Value::from(cfg_bytes.len());
    m["layers"].as_array_mut().unwrap().push(layer);
    let mb = serde_json::to_vec(&m).unwrap();
    let md = put(&mb);

    let ip = layout.join("index.json");
    let mut idx: Value = serde_json::from_slice(&std::fs::read(&ip).unwrap()).unwrap();
    idx["manifests"].as_array_mut().unwrap().push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": mb.len(),
        "annotations": {"org.opencontainers.image.ref.name": tag},
    }));
    std::fs::write(&ip, serde_json::to_vec(&idx).unwrap()).unwrap();
    md
}

#[test]
fn concurrent_skopeo_pushes_sharing_layers() {
    let s = Server::start("");
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let base = mkimage(&src, "base", &["6", "3", "1"]);
    // four images: the three base layers shared, plus one layer of their own
    let mut images = Vec::new();
    for k in 0..4 {
        let x = work.path().join(format!("x{k}"));
        let xd = mkimage(&x, "x", &[&format!("0.{}", k + 1)]);
        let tag = format!("c{k}");
        let d = derive_image(&src, &base, &x, &xd, &tag);
        images.push((tag, d));
    }
    // each to its own repository, and the first one twice more into one repository
    let mut jobs: Vec<(String, String, String)> = images
        .iter()
        .map(|(t, d)| (t.clone(), d.clone(), format!("docker://{}/admin/r-{t}:v1", s.host)))
        .collect();
    for t in ["a", "b"] {
        let (tag, d) = images[0].clone();
        jobs.push((tag, d, format!("docker://{}/admin/shared:{t}", s.host)));
    }
    let children: Vec<_> = jobs
        .iter()
        .map(|(tag, _, dest)| {
            let mut cmd = skopeo_cmd(&[
                "copy",
                "--preserve-digests",
                "--dest-tls-verify=false",
                "--dest-creds",
                &creds,
                &format!("oci:{}:{tag}", src.display()),
                dest,
            ]);
            std::thread::spawn(move || run(&mut cmd, None, CMD_TIMEOUT))
        })
        .collect();
    for (h, (_, _, dest)) in children.into_iter().zip(&jobs) {
        h.join().unwrap().ok(&format!("concurrent skopeo copy to {dest}"));
    }
    for (i, (_, d, dest)) in jobs.iter().enumerate() {
        assert_registry_has(dest, c, &src, d);
        let back = work.path().join(format!("back{i}"));
        pull(dest, &format!("oci:{}:v1", back.display()), c, false).ok("skopeo copy back");
        assert_same_image(&src, d, &back, "v1");
    }
    assert_eq!(
        list_tags(&format!("docker://{}/admin/shared", s.host), c),
        vec!["a", "b"]
    );
}

// ---------------------------------------------------------------------------------------------
// 3. distribution interop on one storage root

#[test]
fn distribution_writes_regate_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    std::fs::create_dir_all(&root).unwrap();
    let src = work.path().join("src");
    let digest = mkimage(&src, "v1", &["2", "0.3"]);
    let msrc = work.path().join("msrc");
    let index = mkimage(
        &msrc,
        "m",
        &["1", "--gzip", "--platforms", "linux/amd64,linux/arm64/v8"],
    );

    let dist = Distribution::start(work.path(), &root, "");
    let dh = dist.host();
    push(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{dh}/lib/app:v1"),
        None,
        false,
    )
    .ok("skopeo copy to distribution");
    push(
        &format!("oci:{}:m", msrc.display()),
        &format!("docker://{dh}/lib/multi:v1"),
        None,
        true,
    )
    .ok("skopeo copy --all to distribution");
    assert_registry_has(&format!("docker://{dh}/lib/app:v1"), None, &src, &digest);
    dist.stop();

    // regate on the root distribution wrote (the harness's fs root is <dir>/data)
    let s = Server::start_in(dir, "");
    assert_eq!(s.data(), root);
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    let repo = format!("docker://{}/lib/app", s.host);
    assert_registry_has(&format!("{repo}:v1"), c, &src, &digest);
    assert_eq!(list_tags(&repo, c), vec!["v1"]);
    let back = work.path().join("back");
    pull(&format!("{repo}:v1"), &format!("oci:{}:v1", back.display()), c, false).ok("copy from regate");
    assert_same_image(&src, &digest, &back, "v1");

    let mrepo = format!("docker://{}/lib/multi", s.host);
    assert_registry_has(&format!("{mrepo}:v1"), c, &msrc, &index);
    let mback = work.path().join("mback");
    pull(&format!("{mrepo}:v1"), &format!("oci:{}:v1", mback.display()), c, true).ok("copy --all from regate");
    assert_same_image(&msrc, &index, &mback, "v1");

    // and regate writes into distribution's repository
    push(&format!("oci:{}:v1", src.display()), &format!("{repo}:v2"), c, false).ok("skopeo copy to regate");
    assert_eq!(list_tags(&repo, c), vec!["v1", "v2"]);
}

#[test]
fn regate_writes_distribution_reads_and_writes() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let digest = mkimage(&src, "v1", &["2", "0.7", "0.01", "--gzip"]);
    let msrc = work.path().join("msrc");
    let index = mkimage(&msrc, "m", &["1", "--platforms", "linux/amd64,linux/arm64/v8"]);

    let mut s = Server::start("");
    let creds = creds_of(&s);
    let c = Some(creds.as_str());
    push(
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/admin/app:v1", s.host),
        c,
        false,
    )
    .ok("skopeo copy to regate");
    push(
        &format!("oci:{}:m", msrc.display()),
        &format!("docker://{}/admin/multi:v1", s.host),
        c,
        true,
    )
    .ok("skopeo copy --all to regate");
    assert!(
        s.terminate(Duration::from_secs(20)).is_some(),
        "regate did not stop on SIGTERM"
    );

    let dist = Distribution::start(work.path(), &s.data(), "");
    let dh = dist.host();
    let repo = format!("docker://{dh}/admin/app");
    assert_registry_has(&format!("{repo}:v1"), None, &src, &digest);
    assert_registry_has(&format!("{repo}@{digest}"), None, &src, &digest);
    assert_eq!(list_tags(&repo, None), vec!["v1"]);
    let back = work.path().join("back");
    let r = pull(
        &format!("{repo}:v1"),
        &format!("oci:{}:v1", back.display()),
        None,
        false,
    );
    if !r.status.success() {
        panic!(
            "copy from distribution failed: {}\ndistribution log:\n{}",
            r.stderr,
            dist.logs()
        );
    }
    assert_same_image(&src, &digest, &back, "v1");

    let mrepo = format!("docker://{dh}/admin/multi");
    assert_registry_has(&format!("{mrepo}:v1"), None, &msrc, &index);
    let mback = work.path().join("mback");
    pull(
        &format!("{mrepo}:v1"),
        &format!("oci:{}:v1", mback.display()),
        None,
        true,
    )
    .ok("copy --all from distribution");
    assert_same_image(&msrc, &index, &mback, "v1");

    // distribution adds a tag in regate's root; regate sees it after a restart
    push(&format!("oci:{}:v1", src.display()), &format!("{repo}:v2"), None, false).ok("copy to distribution");
    dist.stop();
    let s = s.restart();
    let repo = format!("docker://{}/admin/app", s.host);
    assert_eq!(list_tags(&repo, c), vec!["v1", "v2"]);
    assert_registry_has(&format!("{repo}:v2"), c, &src, &digest);
}

// ---------------------------------------------------------------------------------------------
// 4. distribution verifies regate's tokens

#[test]
fn distribution_accepts_regate_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let hp = htpasswd(dir.path(), &[("alice", "alicepw"), ("bob", "bobpw")]);
    let policy = format!(
        "auth:\n  htpasswd: {}\n  service: registry.test\naccess:\n  - {{ account: alice, repository: \"alice/*\", actions: [pull, push] }}\n  - {{ account: bob, repository: \"bob/*\", actions: [pull, push] }}\n",
        hp.display()
    );
    let s = Server::start_in(dir, &policy);
    let cert = s.data().join("token.crt");
    assert!(cert.exists(), "regate did not write {}", cert.display());

    let work = tempfile::tempdir().unwrap();
    let droot = work.path().join("droot");
    let auth = format!(
        "auth:\n  token:\n    realm: {}/token\n    service: registry.test\n    issuer: regate\n    rootcertbundle: {}\n",
        s.url,
        cert.display()
    );
    let dist = Distribution::start(work.path(), &droot, &auth);
    let dh = dist.host();
    let src = work.path().join("src");
    let digest = mkimage(&src, "v1", &["1", "0.1"]);
    let oci = format!("oci:{}:v1", src.display());
    let alice = Some("alice:alicepw");

    // alice gets a token from regate's realm and distribution accepts it
    let r = push(&oci, &format!("docker://{dh}/alice/app:v1"), alice, false);
    if !r.status.success() {
        panic!(
            "push to distribution with a regate token failed: {}\ndistribution log:\n{}\nregate log:\n{}",
            r.stderr,
            dist.logs(),
            s.logs()
        );
    }
    assert_registry_has(&format!("docker://{dh}/alice/app:v1"), alice, &src, &digest);
    let back = work.path().join("back");
    pull(
        &format!("docker://{dh}/alice/app:v1"),
        &format!("oci:{}:v1", back.display()),
        alice,
        false,
    )
    .ok("pull from distribution");
    assert_same_image(&src, &digest, &back, "v1");

    // bob may use his own repository, not alice's; a wrong password gets no token at all
    push(&oci, &format!("docker://{dh}/bob/app:v1"), Some("bob:bobpw"), false).ok("bob pushes bob/app");
    push(&oci, &format!("docker://{dh}/alice/app:bob"), Some("bob:bobpw"), false).failed("bob pushes alice/app");
    inspect(&format!("docker://{dh}/alice/app:v1"), Some("bob:bobpw"), &["--raw"]).failed("bob reads alice/app");
    push(
        &oci,
        &format!("docker://{dh}/alice/app:wrong"),
        Some("alice:nope"),
        false,
    )
    .failed("push with a wrong password");
    push(&oci, &format!("docker://{dh}/alice/app:anon"), None, false).failed("anonymous push");
    let tags = list_tags(&format!("docker://{dh}/alice/app"), alice);
    assert_eq!(tags, vec!["v1"], "a refused push left a tag behind");

    // distribution checks the signature: a token of another regate (another key) is refused
    let other_dir = tempfile::tempdir().unwrap();
    let other_hp = htpasswd(other_dir.path(), &[("alice", "alicepw")]);
    let other_policy = policy.replace(&hp.display().to_string(), &other_hp.display().to_string());
    let other = Server::start_in(other_dir, &other_policy);
    block_on(async {
        let manifest_url = format!("http://{dh}/v2/alice/app/manifests/v1");
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let scope = ["repository:alice/app:pull"];
        let good = common::token(&s, Some(("alice", "alicepw")), &scope).await;
        let r = common::client()
            .get(&manifest_url)
            .header("accept", accept)
            .bearer_auth(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        let foreign = common::token(&other, Some(("alice", "alicepw")), &scope).await;
        let r = common::client()
            .get(&manifest_url)
            .header("accept", accept)
            .bearer_auth(&foreign)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "distribution accepted a token signed by another key");
    });
}

// ---------------------------------------------------------------------------------------------
// 2. docker login / push / pull

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

/// docker with a private config directory (never the user's).
fn docker(config: &Path, args: &[&str], stdin: Option<&str>) -> Out {
    run(
        Command::new("docker").env("DOCKER_CONFIG", config).args(args),
        stdin,
        CMD_TIMEOUT,
    )
}

/// Removes the images a test created, whatever happens.
struct DockerImages(Vec<String>);

impl Drop for DockerImages {
    fn drop(&mut self) {
        for r in self.0.iter().rev() {
            let _ = Command::new("docker")
                .args(["rmi", "-f", r])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `docker import` of a one-file tar; returns the image id.
fn docker_import(config: &Path, work: &Path, name: &str, content: &str, reference: &str) -> String {
    let root = work.join(format!("{name}-root"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), content).unwrap();
    let tar = work.join(format!("{name}.tar"));
    run(
        Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."),
        None,
        CMD_TIMEOUT,
    )
    .ok("tar");
    let o = docker(config, &["import", tar.to_str().unwrap(), reference], None).ok("docker import");
    let id = o.stdout.trim().to_owned();
    assert!(id.starts_with("sha256:"), "docker import printed {id:?}");
    id
}

/// The manifest digest `docker push` reports.
fn pushed_digest(o: &Out) -> String {
    o.stdout
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output: {}", o.stdout))
        .to_owned()
}

fn docker_inspect(config: &Path, reference: &str, format: &str) -> String {
    docker(config, &["image", "inspect", "--format", format, reference], None)
        .ok("docker image inspect")
        .stdout
        .trim()
        .to_owned()
}

fn config_json(config: &Path) -> Value {
    std::fs::read(config.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

#[test]
fn docker_login_push_pull_identity_token() {
    if !docker_engine() {
        return;
    }
    let s = Server::start("");
    let (user, pw) = s.admin();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("docker-config");
    std::fs::create_dir_all(&cfg).unwrap();
    let host = s.host.clone();
    let mut images = DockerImages(Vec::new());

    // a wrong password: login fails and nothing is stored
    let bad_cfg = work.path().join("bad-config");
    std::fs::create_dir_all(&bad_cfg).unwrap();
    let o = docker(
        &bad_cfg,
        &["login", &host, "-u", &user, "--password-stdin"],
        Some("not-the-password\n"),
    )
    .failed("docker login with a wrong password");
    assert!(
        o.stderr.to_lowercase().contains("unauthorized") || o.stderr.to_lowercase().contains("incorrect"),
        "{}",
        o.stderr
    );
    assert!(
        config_json(&bad_cfg)["auths"][&host].is_null(),
        "a failed login stored credentials"
    );

    docker(
        &cfg,
        &["login", &host, "-u", &user, "--password-stdin"],
        Some(&format!("{pw}\n")),
    )
    .ok("docker login");
    // docker stored regate's refresh token as identity token, and not the password
    let cj = config_json(&cfg);
    let entry = &cj["auths"][&host];
    let idtoken = entry["identitytoken"].as_str().unwrap_or_default().to_owned();
    assert!(!idtoken.is_empty(), "no identitytoken stored: {cj}");
    let stored = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(!stored.contains(&pw), "the password was stored in config.json");
    use base64::Engine as _;
    if let Some(a) = entry["auth"].as_str() {
        let dec = base64::engine::general_purpose::STANDARD.decode(a).unwrap();
        assert_eq!(
            String::from_utf8(dec).unwrap(),
            format!("{user}:"),
            "the password was stored"
        );
    }

    let tag = format!("{host}/admin/x:v1");
    let content = format!("hello from {host} {}\n", common::sha256_hex(idtoken.as_bytes()));
    let id = docker_import(&cfg, work.path(), "one", &content, &tag);
    images.0.push(id.clone());
    images.0.push(tag.clone());
    let o = docker(&cfg, &["push", &tag], None).ok("docker push");
    let digest = pushed_digest(&o);

    // regate serves that manifest under that digest, and its config is the image
    block_on(async {
        let r = common::client()
            .get(format!("{}/v2/admin/x/manifests/v1", s.url))
            .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
            .basic_auth(&user, Some(&pw))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
        let body = r.bytes().await.unwrap();
        assert_eq!(common::digest(&body), digest);
        let m: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(m["config"]["digest"], id.as_str());
    });

    docker(&cfg, &["rmi", &tag], None).ok("docker rmi");
    docker(&cfg, &["image", "inspect", &tag], None).failed("inspect after rmi");
    docker(&cfg, &["pull", &tag], None).ok("docker pull");
    assert_eq!(docker_inspect(&cfg, &tag, "{{.Id}}"), id);
    let rd = docker_inspect(&cfg, &tag, "{{json .RepoDigests}}");
    assert!(rd.contains(&format!("{host}/admin/x@{digest}")), "RepoDigests {rd}");

    // the pushes used the identity token (the refresh grant is a POST to /token)
    assert!(
        s.logs()
            .lines()
            .any(|l| l.contains("method=POST path=/token status=200")),
        "no refresh-token grant in the logs:\n{}",
        s.logs()
    );

    // only the identity token: with it corrupted the push fails, with it restored it works
    let tag2 = format!("{host}/admin/x:v2");
    let id2 = docker_import(&cfg, work.path(), "two", &format!("{content}second\n"), &tag2);
    images.0.push(id2.clone());
    images.0.push(tag2.clone());
    let mut broken = cj.clone();
    broken["auths"][&host]["identitytoken"] = Value::from("rgr_invalid");
    std::fs::write(cfg.join("config.json"), serde_json::to_vec(&broken).unwrap()).unwrap();
    docker(&cfg, &["push", &tag2], None).failed("docker push with a revoked identity token");
    std::fs::write(cfg.join("config.json"), &stored).unwrap();
    let o = docker(&cfg, &["push", &tag2], None).ok("docker push with the identity token");
    let digest2 = pushed_digest(&o);
    docker(&cfg, &["rmi", &tag2], None).ok("docker rmi");
    docker(&cfg, &["pull", &format!("{host}/admin/x@{digest2}")], None).ok("docker pull by digest");
    images.0.push(format!("{host}/admin/x@{digest2}"));
    assert_eq!(
        docker_inspect(&cfg, &format!("{host}/admin/x@{digest2}"), "{{.Id}}"),
        id2
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SIGKILL during 1 GiB uploads

const MIB: u64 = 1 << 20;
const GIB_MIB: u64 = 1024;

/// The test blob, generated on the fly: MiB `i` is a fixed random block with `i` in its first
/// eight bytes.
#[derive(Clone)]
struct Blob {
    block: Arc<Vec<u8>>,
}

impl Blob {
    fn new() -> Blob {
        let block: Vec<u8> = (0..MIB).map(|_| rand::random::<u8>()).collect();
        Blob { block: Arc::new(block) }
    }

    fn chunk(&self, i: u64) -> bytes::Bytes {
        let mut v = self.block.as_ref().clone();
        v[..8].copy_from_slice(&i.to_le_bytes());
        bytes::Bytes::from(v)
    }

    fn digest(&self, mibs: u64) -> String {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        for i in 0..mibs {
            h.update(self.chunk(i));
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// MiBs `from..to` as a streaming body; `sent` counts the bytes handed to the client.
    fn body(&self, from: u64, to: u64, sent: Arc<AtomicU64>) -> reqwest::Body {
        use futures_util::StreamExt as _;
        let me = self.clone();
        let s = futures_util::stream::iter(from..to).map(move |i| {
            sent.fetch_add(MIB, Ordering::SeqCst);
            Ok::<_, std::io::Error>(me.chunk(i))
        });
        reqwest::Body::wrap_stream(s)
    }
}

fn big_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap()
}

/// Waits until `sent` reaches `bytes` (the upload is well under way), failing after a deadline.
async fn wait_sent(sent: &AtomicU64, bytes: u64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while sent.load(Ordering::SeqCst) < bytes {
        assert!(
            Instant::now() < deadline,
            "the upload stalled at {} bytes",
            sent.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn blob_dir_on_disk(s: &Server, digest: &str) -> PathBuf {
    let hex = digest.strip_prefix("sha256:").unwrap();
    s.data()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
}

/// Not visible through the API, nothing in storage.
async fn assert_blob_absent(s: &Server, repo: &str, digest: &str) {
    let (u, p) = s.admin();
    let r = big_client()
        .head(format!("{}/v2/{repo}/blobs/{digest}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "a blob whose upload was killed is visible");
    let dir = blob_dir_on_disk(s, digest);
    assert!(!dir.exists(), "{} exists after a killed upload", dir.display());
    let link = s
        .data()
        .join("docker/registry/v2/repositories")
        .join(repo)
        .join("_layers/sha256")
        .join(digest.strip_prefix("sha256:").unwrap());
    assert!(!link.exists(), "{} exists after a killed upload", link.display());
}

/// Visible, the right size, and reads back with the right digest.
async fn assert_blob_complete(s: &Server, repo: &str, digest: &str, size: u64) {
    use sha2::Digest as _;
    let (u, p) = s.admin();
    let c = big_client();
    let r = c
        .head(format!("{}/v2/{repo}/blobs/{digest}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    let mut r = c
        .get(format!("{}/v2/{repo}/blobs/{digest}", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut h = sha2::Sha256::new();
    let mut n = 0u64;
    while let Some(b) = r.chunk().await.unwrap() {
        n += b.len() as u64;
        h.update(&b);
    }
    assert_eq!(n, size);
    assert_eq!(format!("sha256:{}", hex::encode(h.finalize())), digest);
    let on_disk = blob_dir_on_disk(s, digest).join("data");
    assert_eq!(std::fs::metadata(&on_disk).unwrap().len(), size);
}

fn absolute(s: &Server, location: &str) -> String {
    // the Location of an earlier process names its port; keep only the path and query
    let path = match location.find("://") {
        Some(i) => &location[i + 3 + location[i + 3..].find('/').unwrap()..],
        None => location,
    };
    format!("{}{path}", s.url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_monolithic_1gib_upload() {
    let blob = Blob::new();
    let digest = blob.digest(GIB_MIB);
    let mut s = Server::start("");
    let (u, p) = s.admin();
    let repo = "admin/big";

    let sent = Arc::new(AtomicU64::new(0));
    let req = big_client()
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .header("content-length", (GIB_MIB * MIB).to_string())
        .body(blob.body(0, GIB_MIB, sent.clone()))
        .send();
    let upload = tokio::spawn(req);
    wait_sent(&sent, 400 * MIB).await;
    s.child.kill().unwrap(); // SIGKILL
    s.child.wait().unwrap();
    let res = upload.await.unwrap();
    assert!(
        !matches!(&res, Ok(r) if r.status().is_success()),
        "the killed upload reported success: {res:?}"
    );
    assert!(
        sent.load(Ordering::SeqCst) < GIB_MIB * MIB,
        "the whole body was sent before the kill"
    );

    let s = s.restart();
    assert_blob_absent(&s, repo, &digest).await;

    let (u, p) = s.admin();
    let r = big_client()
        .post(format!("{}/v2/{repo}/blobs/uploads/?digest={digest}", s.url))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .header("content-length", (GIB_MIB * MIB).to_string())
        .body(blob.body(0, GIB_MIB, Arc::new(AtomicU64::new(0))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_blob_complete(&s, repo, &digest, GIB_MIB * MIB).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_chunked_1gib_upload_then_resume() {
    let blob = Blob::new();
    let digest = blob.digest(GIB_MIB);
    let first = 384; // MiB in the first, completed PATCH
    let mut s = Server::start("");
    let (u, p) = s.admin();
    let repo = "admin/chunked";
    let c = big_client();

    let r = c
        .post(format!("{}/v2/{repo}/blobs/uploads/", s.url))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let r = c
        .patch(absolute(&s, &loc))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .body(blob.body(0, first, Arc::new(AtomicU64::new(0))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["range"], format!("0-{}", first * MIB - 1).as_str());
    let loc = r.headers()["location"].to_str().unwrap().to_owned();

    // the rest in a second PATCH, killed after some hundreds of MiB
    let sent = Arc::new(AtomicU64::new(0));
    let req = c
        .patch(absolute(&s, &loc))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .body(blob.body(first, GIB_MIB, sent.clone()))
        .send();
    let upload = tokio::spawn(req);
    wait_sent(&sent, 300 * MIB).await;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let res = upload.await.unwrap();
    assert!(
        !matches!(&res, Ok(r) if r.status().is_success()),
        "the killed PATCH reported success: {res:?}"
    );

    // another process on the same storage continues the upload from the completed part
    let s = s.restart();
    assert_blob_absent(&s, repo, &digest).await;
    let (u, p) = s.admin();
    let r = c.get(absolute(&s, &loc)).basic_auth(&u, Some(&p)).send().await.unwrap();
    assert_eq!(r.status(), 204, "upload status after the restart");
    assert_eq!(
        r.headers()["range"],
        format!("0-{}", first * MIB - 1).as_str(),
        "the upload should hold exactly the completed part"
    );
    let r = c
        .patch(absolute(&s, &loc))
        .basic_auth(&u, Some(&p))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{}-{}", first * MIB, GIB_MIB * MIB - 1))
        .header("content-length", ((GIB_MIB - first) * MIB).to_string())
        .body(blob.body(first, GIB_MIB, Arc::new(AtomicU64::new(0))))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    assert_eq!(r.headers()["range"], format!("0-{}", GIB_MIB * MIB - 1).as_str());
    let loc = r.headers()["location"].to_str().unwrap().to_owned();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{}{sep}digest={digest}", absolute(&s, &loc)))
        .basic_auth(&u, Some(&p))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], digest.as_str());
    assert_blob_complete(&s, repo, &digest, GIB_MIB * MIB).await;
}
