//! deploy/: example configs pass check-config, manifests parse and hang together, and the
//! container image builds and runs where a Docker engine is available.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde::Deserialize;
use serde_yaml_ng::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn check_config(path: &Path) {
    let out = common::regate()
        .args(["check-config", "--schema-only", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_configs_are_valid() {
    let mut n = 0;
    for e in std::fs::read_dir(deploy().join("examples")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            check_config(&p);
            n += 1;
        }
    }
    assert!(n >= 4, "expected the scenario examples, found {n}");
}

fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for p in path.split('.') {
        cur = match p.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[p],
        };
    }
    cur
}

#[test]
fn kubernetes_manifests_hang_together() {
    let all = docs(&deploy().join("k8s/regate.yaml"));
    let kind = |k: &str| all.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}"));
    for d in &all {
        assert!(
            d["apiVersion"].as_str().is_some() && d["metadata"]["name"].as_str().is_some(),
            "{d:?}"
        );
    }
    let dep = kind("Deployment");
    assert_eq!(at(dep, "apiVersion"), "apps/v1");
    assert!(at(dep, "spec.replicas").as_u64().unwrap() >= 2);
    let labels = at(dep, "spec.template.metadata.labels");
    assert_eq!(at(dep, "spec.selector.matchLabels"), labels);
    let c = at(dep, "spec.template.spec.containers.0");
    assert_eq!(at(c, "readinessProbe.httpGet.path"), "/readyz");
    assert_eq!(at(c, "livenessProbe.httpGet.path"), "/healthz");
    assert_eq!(
        at(dep, "spec.template.spec.securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    // selectors of the Service and the PodDisruptionBudget find the pods
    assert_eq!(at(kind("Service"), "spec.selector"), labels);
    assert_eq!(at(kind("PodDisruptionBudget"), "spec.selector.matchLabels"), labels);
    assert!(
        at(kind("PodDisruptionBudget"), "spec.minAvailable").as_u64().unwrap()
            < at(dep, "spec.replicas").as_u64().unwrap()
    );
    // the ConfigMap's regate.yaml is a valid config, and every secret file it names is in the Secret
    let cfg = at(kind("ConfigMap"), "data")["regate.yaml"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("regate.yaml"), cfg).unwrap();
    check_config(&dir.path().join("regate.yaml"));
    let secret = at(kind("Secret"), "stringData").as_mapping().unwrap();
    for word in cfg.split_whitespace() {
        if let Some(name) = word.strip_prefix("/etc/regate/secrets/") {
            assert!(
                secret.contains_key(Value::String(name.to_owned())),
                "secret {name} missing"
            );
        }
    }
    // the Ingress routes to the Service's named port
    let svc_port = at(kind("Service"), "spec.ports.0.name");
    assert_eq!(
        at(kind("Ingress"), "spec.rules.0.http.paths.0.backend.service.port.name"),
        svc_port
    );
    assert_eq!(
        at(kind("Ingress"), "spec.rules.0.http.paths.0.backend.service.name"),
        "regate"
    );
}

#[test]
fn systemd_unit_is_hardened_and_compose_parses() {
    let unit = std::fs::read_to_string(deploy().join("regate.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/regate serve --config /etc/regate/regate.yaml",
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "StateDirectory=regate",
    ] {
        assert!(unit.lines().any(|l| l.trim() == line), "{line} missing");
    }
    let compose = &docs(&deploy().join("docker-compose.yml"))[0];
    let regate = at(compose, "services.regate");
    assert_eq!(at(regate, "healthcheck.test.1"), "/regate");
    assert_eq!(at(regate, "healthcheck.test.2"), "healthcheck");
    let mounted = at(regate, "volumes.1").as_str().unwrap();
    let example = mounted.split(':').next().unwrap().trim_start_matches("./");
    check_config(&deploy().join(example));
}

#[test]
fn container_image_builds_and_runs() {
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipping: no Docker engine");
        return;
    }
    let tag = format!("regate-test:{}", std::process::id());
    let out = Command::new("bash")
        .arg(deploy().join("build-image.sh"))
        .arg(common::bin())
        .arg(&tag)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    struct Cleanup(String, Option<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(c) = &self.1 {
                let _ = Command::new("docker").args(["rm", "-f", c]).output();
            }
            let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
        }
    }
    let mut guard = Cleanup(tag.clone(), None);
    let out = Command::new("docker")
        .args(["run", "-d", "-p", "127.0.0.1::5000", &tag])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    guard.1 = Some(id.clone());
    let port = Command::new("docker").args(["port", &id, "5000/tcp"]).output().unwrap();
    let port = String::from_utf8_lossy(&port.stdout)
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .trim()
        .to_owned();
    let user = Command::new("docker")
        .args(["inspect", "-f", "{{.Config.User}}", &id])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&user.stdout).trim(),
        "65532:65532",
        "runs as non-root"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Health.Status}}", &id])
            .output()
            .unwrap();
        let status = String::from_utf8_lossy(&h.stdout).trim().to_owned();
        if status == "healthy" {
            break;
        }
        let logs = Command::new("docker").args(["logs", &id]).output().unwrap();
        assert!(
            Instant::now() < deadline,
            "container not healthy ({status}): {}",
            String::from_utf8_lossy(&logs.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let r = common::client()
            .get(format!("http://127.0.0.1:{port}/v2/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer realm="));
    });
    let logs = Command::new("docker").args(["logs", &id]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("docker login"),
        "first start prints the login line"
    );
}
