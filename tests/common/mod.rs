//! Shared harness for integration tests: starts the real `regate` binary on 127.0.0.1:0 with a
//! config written into a temporary directory, learns its URL from the line it prints, and kills
//! it when dropped.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_regate"))
}

pub struct Server {
    pub url: String,
    /// host:port, as docker and skopeo name the registry
    pub host: String,
    /// the address regate actually listens on (differs from `host` when public_url is set)
    pub local: String,
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub admin_password: Option<String>,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts regate with `extra` YAML appended to a config that sets `listen` and an fs root
    /// under the temp dir (unless `extra` names its own `storage:`).
    pub fn start(extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Server {
        let mut cfg = String::from("listen: 127.0.0.1:0\n");
        if !extra.contains("storage:") {
            cfg.push_str(&format!(
                "storage:\n  backend: fs\n  fs: {{ root: {}, fsync: false }}\n",
                dir.path().join("data").display()
            ));
        }
        cfg.push_str(extra);
        let cfg_path = dir.path().join("regate.yaml");
        std::fs::write(&cfg_path, cfg).unwrap();
        Self::start_with_config(dir, &cfg_path)
    }

    pub fn start_with_config(dir: tempfile::TempDir, cfg_path: &Path) -> Server {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = Command::new(bin());
        // hermetic: REGATE_* variables of the caller's environment would override the config
        for (k, _) in std::env::vars() {
            if k.starts_with("REGATE_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(cfg_path)
            .current_dir(dir.path())
            .env("REGATE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut admin = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix("echo '") {
                    admin = rest.split('\'').next().map(str::to_owned);
                }
                if let Some(rest) = line.strip_prefix("regate listening on ") {
                    let url = rest.split(' ').next().unwrap().to_owned();
                    let local = rest.rsplit('(').next().unwrap().trim_end_matches(')').to_owned();
                    let _ = tx.send((url, local, admin.clone()));
                }
            }
        });
        let (url, local, admin_password) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(x) => x,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "regate did not start: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let host = url.split("://").nth(1).unwrap().to_owned();
        Server {
            url,
            host,
            local,
            dir,
            child,
            admin_password,
            stderr_path,
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn admin(&self) -> (String, String) {
        let pw = self
            .admin_password
            .clone()
            .or_else(|| {
                std::fs::read_to_string(self.data().join("admin-password"))
                    .ok()
                    .map(|s| s.trim().to_owned())
            })
            .expect("no generated admin password");
        ("admin".to_owned(), pw)
    }

    /// Kills the process (SIGKILL, if it still runs) and hands back its directory, so that a new
    /// server can start on the same storage and config.
    pub fn into_dir(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `Server` implements Drop, so the directory is swapped out rather than moved out
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Kills the process (if it still runs) and starts regate again on the same directory with
    /// the `regate.yaml` that `start`/`start_in` wrote there (same storage, new port).
    pub fn restart(self) -> Server {
        let dir = self.into_dir();
        let cfg = dir.path().join("regate.yaml");
        Server::start_with_config(dir, &cfg)
    }

    /// SIGTERM, then wait up to `wait` for a clean exit; returns the exit status if it exited.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an htpasswd file with bcrypt (cost 4 keeps tests fast) for `users`.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> PathBuf {
    let p = dir.join("htpasswd");
    let mut s = String::new();
    for (u, pw) in users {
        s.push_str(&format!("{u}:{}\n", bcrypt::hash(pw, 4).unwrap()));
    }
    std::fs::write(&p, s).unwrap();
    p
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Gets a token for `scopes` with Basic credentials (None: anonymous).
pub async fn token(s: &Server, creds: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let mut q: Vec<(&str, &str)> = vec![("service", "x")];
    for sc in scopes {
        q.push(("scope", sc));
    }
    let mut rb = client().get(format!("{}/token", s.url)).query(&q);
    if let Some((u, p)) = creds {
        rb = rb.basic_auth(u, Some(p));
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200, "token request failed");
    let v: serde_json::Value = r.json().await.unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Whether a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

pub fn digest(b: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(b))
}

/// `tests/tools/mkimage.py`: writes an OCI image layout (see its header for usage).
pub fn mkimage() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("tools")
        .join("mkimage.py")
}

/// The regate binary as a command, without the caller's REGATE_* variables (they would act as
/// config overrides).
pub fn regate() -> Command {
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("REGATE_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// skopeo pushes a two-layer image (6 MiB and 0.3 MiB) to `admin/app:v1` on `s` with the admin's
/// credentials and pulls it back; asserts both copies hold the same four blobs (config, manifest,
/// layers) and returns them as (sha256 hex, bytes), sorted.
pub fn skopeo_round_trip(s: &Server) -> Vec<(String, Vec<u8>)> {
    assert!(have("skopeo"), "skopeo is needed (scripts/test-all.sh installs it)");
    let (u, pw) = s.admin();
    let creds = format!("{u}:{pw}");
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let out = Command::new("python3")
        .arg(mkimage())
        .arg(&src)
        .arg("v1")
        .args(["6", "0.3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let skopeo = |args: &[&str]| {
        let o = Command::new("skopeo")
            .arg("--insecure-policy")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "skopeo {args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            s.logs()
        );
    };
    let image = format!("docker://{}/admin/app:v1", s.host);
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", src.display()),
        &image,
    ]);
    let back = work.path().join("back");
    skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &image,
        &format!("oci:{}:v1", back.display()),
    ]);
    let blobs = |p: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(p.join("blobs/sha256"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
            })
            .collect();
        v.sort();
        v
    };
    let (a, b) = (blobs(&src), blobs(&back));
    assert_eq!(a.len(), 4, "config, manifest and two layers");
    assert!(a == b, "pulled image differs");
    a
}

/// Signs in on the web page as a local account and returns the session cookie ("name=value").
pub async fn web_session(s: &Server, user: &str, pass: &str) -> String {
    let r = client()
        .post(format!("{}/login", s.url))
        .form(&[("username", user), ("password", pass)])
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_redirection() || r.status().is_success(),
        "sign-in: {}",
        r.status()
    );
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next())
        .filter(|c| !c.ends_with('='))
        .map(str::to_owned)
        .collect();
    assert!(!cookies.is_empty(), "no session cookie");
    cookies.join("; ")
}

/// A page of the web UI with a session cookie: (status, body).
pub async fn web_page(s: &Server, path: &str, cookie: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}
