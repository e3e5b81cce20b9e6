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
    let (dhold, dport) = reserve_port();
    let dcfg = work.path().join("registry.yml");
    std::fs::write(
        &dcfg,
        format!(
            "version: 0.1\nlog: {{ level: warn }}\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{dport} }}\n",
            work.path().join("root").display()
        ),
    )
    .unwrap();
    drop(dhold);
    let _dist = Proc(
        Command::new("docker-registry")
            .arg("serve")
            .arg(&dcfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(dport);
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
    assert!(s
        .data()
        .join("docker/registry/v2/repositories/admin/edge/_manifests")
        .exists());
}
