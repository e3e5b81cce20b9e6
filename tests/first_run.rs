//! The first run of the real binary: the generated admin password is saved only by a start that
//! actually serves, every later start says where it is (never what it is), and memory storage
//! writes nothing into the working directory.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

/// A running `regate serve` and every line it printed on stdout up to "regate listening on".
struct Started {
    child: Child,
    stdout: Vec<String>,
    url: String,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path, cfg: &str) -> Started {
    let cfg_path = dir.join("regate.yaml");
    std::fs::write(&cfg_path, cfg).unwrap();
    let mut child = common::regate()
        .arg("serve")
        .arg("--config")
        .arg(&cfg_path)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let done = line.starts_with("regate listening on ");
            lines.push(line);
            if done {
                let _ = tx.send(lines.clone());
            }
        }
    });
    let stdout = rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "regate did not start: {}",
            std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
        )
    });
    let url = stdout
        .last()
        .unwrap()
        .strip_prefix("regate listening on ")
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    Started { child, stdout, url }
}

fn password_in(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        l.trim()
            .strip_prefix("echo '")
            .and_then(|r| r.split('\'').next())
            .map(str::to_owned)
    })
}

async fn admin_token_status(url: &str, pw: &str) -> u16 {
    common::client()
        .get(format!("{url}/token?service=x&scope=repository:a/b:push"))
        .basic_auth("admin", Some(pw))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[test]
fn a_failed_first_start_saves_no_password_and_later_starts_say_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // the port is taken: this first start must fail without saving a password
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let storage = format!(
        "storage: {{ backend: fs, fs: {{ root: {}, fsync: false }} }}\n",
        data.display()
    );
    std::fs::write(
        dir.path().join("regate.yaml"),
        format!("listen: 127.0.0.1:{port}\n{storage}"),
    )
    .unwrap();
    let out = common::regate()
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("regate.yaml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    assert!(
        !data.join("admin-password").exists(),
        "a start that failed left an admin-password no later start announces"
    );
    drop(busy);

    // the first start that serves prints the password once and saves it
    let cfg = format!("listen: 127.0.0.1:0\n{storage}");
    let first = start(dir.path(), &cfg);
    let pw = password_in(&first.stdout).expect("the first start prints the docker login line");
    let saved = std::fs::read_to_string(data.join("admin-password")).unwrap();
    assert_eq!(saved.trim(), pw);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(admin_token_status(&first.url, &pw)), 200);
    drop(first);

    // every later start names the file, never the password
    let again = start(dir.path(), &cfg);
    assert_eq!(password_in(&again.stdout), None);
    let all = again.stdout.join("\n");
    assert!(
        all.contains(&format!(
            "sign in as admin with the password in {}",
            data.join("admin-password").display()
        )),
        "{all}"
    );
    assert!(!all.contains(&pw), "the password is printed only on the first start");
    drop(again);
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(!logs.contains(&pw), "the password reached the log");
}

#[test]
fn memory_storage_writes_nothing_into_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(dir.path(), "listen: 127.0.0.1:0\nstorage: { backend: memory }\n");
    let pw = password_in(&s.stdout).expect("the login line");
    let all = s.stdout.join("\n");
    assert!(all.contains("kept in this process only"), "{all}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(admin_token_status(&s.url, &pw)), 200);
    // tokens are signed with the in-memory key and verify against the published JWKS
    let jwks: serde_json::Value = rt.block_on(async {
        common::client()
            .get(format!("{}/.well-known/jwks.json", s.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 1);
    drop(s);
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "regate.yaml" && n != "stderr.log")
        .collect();
    assert!(left.is_empty(), "memory storage wrote {left:?}");
}

#[test]
fn healthcheck_probes_the_address_and_tls_of_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let kp = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls.key"), kp.serialize_pem()).unwrap();
    let tls = format!(
        "tls: {{ cert: {}, key: {} }}\nstorage: {{ backend: memory }}\n",
        dir.path().join("tls.crt").display(),
        dir.path().join("tls.key").display()
    );
    let s = start(dir.path(), &format!("listen: 127.0.0.1:0\n{tls}"));
    let port = s.url.rsplit(':').next().unwrap().to_owned();
    // the same config with the port the server got: what `serve` and `healthcheck` both read
    let cfg = dir.path().join("probe.yaml");
    std::fs::write(&cfg, format!("listen: 0.0.0.0:{port}\n{tls}")).unwrap();
    let out = common::regate()
        .arg("healthcheck")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = common::regate()
        .arg("healthcheck")
        .env("REGATE_CONFIG", &cfg)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    drop(s);
    // nothing listens there now
    let out = common::regate()
        .arg("healthcheck")
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("https://127.0.0.1:{port}/healthz is not answering")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
