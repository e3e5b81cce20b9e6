//! Replicas sharing Redis: failed sign-ins and `/token` requests are counted across replicas, so
//! N replicas allow what one would; Redis going away mid-run falls back to each replica's own
//! counts instead of blocking sign-ins.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, htpasswd, Server};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis() -> Option<Redis> {
    if !common::have("redis-server") {
        println!("skipping: redis-server is not installed");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Redis { child, port, _dir: dir });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("redis-server did not start");
}

async fn token_status(s: &Server, user: &str, pass: &str) -> u16 {
    client()
        .get(format!("{}/token?service=x", s.url))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_counted_across_replicas() {
    let Some(mut r) = redis() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ht = htpasswd(dir.path(), &[("alice", "right")]);
    let cfg = format!(
        "auth: {{ htpasswd: {} }}\nlimits: {{ failed_auth_per_minute: 4 }}\nredis: {{ url: \"redis://127.0.0.1:{}/0\" }}\n",
        ht.display(),
        r.port
    );
    let a = Server::start(&cfg);
    let b = Server::start(&cfg);
    // two failures on each replica use up alice's shared allowance of four
    for s in [&a, &b, &a, &b] {
        assert_eq!(token_status(s, "alice", "wrong").await, 401);
    }
    // a fifth attempt is refused on either replica, even with the right password
    assert_eq!(token_status(&a, "alice", "right").await, 429);
    assert_eq!(token_status(&b, "alice", "wrong").await, 429);
    // the counts are in Redis under the configured prefix
    let keys = Command::new("redis-cli")
        .args(["-p", &r.port.to_string(), "--scan", "--pattern", "regate:fail:*"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    if common::have("redis-cli") {
        assert!(keys.contains("regate:fail:user:alice:"), "{keys}");
    }

    // without Redis each replica counts alone (what sharing prevents): a third replica that
    // shares nothing still lets alice in
    let dir2 = tempfile::tempdir().unwrap();
    let ht2 = htpasswd(dir2.path(), &[("alice", "right")]);
    let c = Server::start(&format!(
        "auth: {{ htpasswd: {} }}\nlimits: {{ failed_auth_per_minute: 4 }}\n",
        ht2.display()
    ));
    assert_eq!(token_status(&c, "alice", "right").await, 200);

    // Redis goes away: sign-ins are not blocked, the replica's own counts decide
    let _ = r.child.kill();
    let _ = r.child.wait();
    let t = Instant::now();
    assert_eq!(token_status(&a, "bob", "nope").await, 401);
    assert!(t.elapsed() < Duration::from_secs(3), "took {:?}", t.elapsed());
    assert!(a.logs().contains("redis unavailable"), "{}", a.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_rate_limit_is_shared() {
    let Some(r) = redis() else { return };
    let cfg = format!(
        "limits: {{ token_requests_per_second: 3 }}\nredis: {{ url: \"redis://127.0.0.1:{}/0\", key_prefix: \"t1:\" }}\n",
        r.port
    );
    let a = Server::start(&cfg);
    let b = Server::start(&cfg);
    // a burst of 6 (twice the rate) per 2-second window, whichever replica is asked; start
    // right after a window begins so the loop stays inside one
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let into = Duration::from_secs(now.as_secs() % 2) + Duration::from_nanos(u64::from(now.subsec_nanos()));
    tokio::time::sleep(Duration::from_secs(2) - into + Duration::from_millis(20)).await;
    let mut codes = Vec::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = client().get(format!("{}/token?service=x", s.url)).send().await.unwrap();
        codes.push(r.status().as_u16());
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    let limited = codes.iter().filter(|c| **c == 429).count();
    // (alone, each replica would have let its five through)
    assert_eq!((ok, limited), (6, 4), "{codes:?}");
}

#[test]
fn unreachable_redis_is_one_clear_line_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.path().join("regate.yaml"),
        format!(
            "listen: 127.0.0.1:0\nstorage: {{ backend: memory }}\nredis: {{ url: \"redis://127.0.0.1:{port}/0\" }}\n"
        ),
    )
    .unwrap();
    let out = common::regate()
        .args(["serve", "--config"])
        .arg(dir.path().join("regate.yaml"))
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("redis.url: cannot connect"), "{err}");
    assert!(!err.contains("panicked"));
}
