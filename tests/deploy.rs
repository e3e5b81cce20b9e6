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

// ---- the artifacts started as a user would start them (where a Docker engine answers) ----

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker").args(args).output().unwrap()
}

/// Runs docker; its trimmed stdout, or a panic naming `what` with docker's stderr.
fn docker_ok(what: &str, args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "{what}: docker {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Everything the test created in the engine, removed at the end (volumes included: the image
/// declares VOLUME, so every container would otherwise leave an anonymous one behind).
struct Engine {
    image: String,
    containers: std::sync::Mutex<Vec<String>>,
    volumes: std::sync::Mutex<Vec<String>>,
    anonymous: std::sync::Mutex<Vec<String>>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for c in self.containers.lock().unwrap().iter() {
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        for v in self.volumes.lock().unwrap().iter() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

/// A started container: its id and the host port of each published container port.
struct Started {
    id: String,
    ports: std::collections::BTreeMap<u16, u16>,
}

impl Engine {
    /// `docker run -d` with `args` (before the image) and `cmd` (after it); publishes each of
    /// `ports` on an ephemeral 127.0.0.1 port and waits until the image's HEALTHCHECK says healthy.
    fn run(&self, what: &str, args: &[String], ports: &[u16], cmd: &[String]) -> Started {
        let mut a: Vec<String> = vec!["run".into(), "-d".into(), "--health-interval=1s".into()];
        for p in ports {
            a.push("-p".into());
            a.push(format!("127.0.0.1::{p}"));
        }
        a.extend(args.iter().cloned());
        a.push(self.image.clone());
        a.extend(cmd.iter().cloned());
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let id = docker_ok(what, &a);
        self.containers.lock().unwrap().push(id.clone());
        // the volumes docker made for it (the image's VOLUME): they must go with the container
        let mounts = docker_ok(
            what,
            &["inspect", "-f", "{{range .Mounts}}{{.Type}}={{.Name}} {{end}}", &id],
        );
        self.anonymous.lock().unwrap().extend(
            mounts
                .split_whitespace()
                .filter_map(|m| m.strip_prefix("volume="))
                .filter(|n| !self.volumes.lock().unwrap().iter().any(|v| v == n))
                .map(str::to_owned),
        );
        let mut map = std::collections::BTreeMap::new();
        for p in ports {
            let line = docker_ok(what, &["port", &id, &format!("{p}/tcp")]);
            let host: u16 = line
                .lines()
                .next()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            map.insert(*p, host);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = docker_ok(
                what,
                &["inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}", &id],
            );
            if status == "running healthy" {
                break;
            }
            assert!(
                Instant::now() < deadline && !status.starts_with("exited"),
                "{what}: container {status}: {}",
                logs(&id)
            );
            // polls the engine's own health state (there is no event to wait on in this API)
            std::thread::sleep(Duration::from_millis(250));
        }
        Started { id, ports: map }
    }
}

fn logs(id: &str) -> String {
    let out = docker(&["logs", id]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn insecure_client() -> reqwest::Client {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET `url`: (status, WWW-Authenticate or Location header).
fn get(url: &str, basic: Option<(&str, &str)>, bearer: Option<&str>) -> (u16, String, String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut rb = insecure_client().get(url);
        if let Some((u, p)) = basic {
            rb = rb.basic_auth(u, Some(p));
        }
        if let Some(t) = bearer {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let h = |n: &str| {
            r.headers()
                .get(n)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (status, auth, loc) = (r.status().as_u16(), h("www-authenticate"), h("location"));
        let body = r.text().await.unwrap_or_default();
        (status, if auth.is_empty() { loc } else { auth }, body)
    })
}

const ADMIN_PW: &str = "deploy-test-admin-pw";

/// Writes, under `etc` (mounted as /etc/regate), every file the config `text` names there, as a
/// user following the comments would: keys and certificates, an htpasswd with the admin, other
/// secrets; owned by the image's uid 65532 with mode 0600, as the docs say.
fn provide_files(etc: &Path, text: &str) {
    let token = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "regate");
    let token_crt = p.self_signed(&token).unwrap();
    let tls = rcgen::KeyPair::generate().unwrap();
    let tls_crt = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&tls)
        .unwrap();
    for word in text.split(|c: char| c.is_whitespace() || ",{}[]\"'".contains(c)) {
        let Some(rel) = word.strip_prefix("/etc/regate/") else {
            continue;
        };
        let content = match rel.rsplit('/').next().unwrap() {
            "token.key" => token.serialize_pem(),
            "token.crt" => token_crt.pem(),
            "tls.key" => tls.serialize_pem(),
            "tls.crt" => tls_crt.pem(),
            "htpasswd" => format!("admin:{}\n", bcrypt::hash(ADMIN_PW, 4).unwrap()),
            _ => "deploy-test-secret\n".to_owned(),
        };
        own(etc, &etc.join(rel), &content);
    }
}

/// Writes `path` (and its directories under `root`) for uid 65532: files 0600, directories 0755.
fn own(root: &Path, path: &Path, content: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut p = path.to_path_buf();
    loop {
        let _ = std::os::unix::fs::chown(&p, Some(65532), Some(65532));
        if p.is_dir() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        if p == root || !p.pop() {
            break;
        }
    }
}

/// The config's listen port, http redirect port and public_url.
fn ports_of(text: &str) -> (u16, Option<u16>, Option<String>) {
    let v: Value = serde_yaml_ng::from_str(text).unwrap();
    let port = |s: &Value| s.as_str().unwrap().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    (
        port(&v["listen"]),
        v.get("tls").and_then(|t| t.get("http_redirect_listen")).map(port),
        v.get("public_url").and_then(|u| u.as_str()).map(str::to_owned),
    )
}

fn scheme(text: &str) -> &'static str {
    let v: Value = serde_yaml_ng::from_str(text).unwrap();
    if v.get("tls").is_some() {
        "https"
    } else {
        "http"
    }
}

/// A stripped copy of the test binary (the debug build is large) in `dir`.
fn small_binary(dir: &Path) -> PathBuf {
    let out = dir.join("regate");
    let stripped = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(common::bin())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(common::bin(), &out).unwrap();
    }
    out
}

#[test]
fn deploy_artifacts_start_as_shipped() {
    if !docker(&["info"]).status.success() {
        println!(
            "skipping: no Docker engine answers `docker info`; the image, compose and k8s artifacts were not started"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let tag = format!("regate-test:{}", std::process::id());
    let out = Command::new("bash")
        .arg(deploy().join("build-image.sh"))
        .arg(small_binary(work.path()))
        .arg(&tag)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let engine = Engine {
        image: tag.clone(),
        containers: Default::default(),
        volumes: Default::default(),
        anonymous: Default::default(),
    };
    // the image: non-root, data dir /var/lib/regate, a health check that reads the config
    let cfg = docker_ok(
        "image",
        &[
            "image",
            "inspect",
            "-f",
            "{{.Config.User}}|{{.Config.WorkingDir}}|{{json .Config.Healthcheck.Test}}",
            &tag,
        ],
    );
    assert_eq!(cfg, "65532:65532|/var/lib/regate|[\"CMD\",\"/regate\",\"healthcheck\"]");

    image_with_each_example(&engine, work.path());
    compose_as_docker_runs(&engine, work.path());
    kubernetes_replicas(&engine, work.path());
    let anonymous = engine.anonymous.lock().unwrap().clone();
    assert!(!anonymous.is_empty(), "the image declares VOLUME /var/lib/regate");
    drop(engine);
    for v in anonymous {
        assert!(
            !docker(&["volume", "inspect", &v]).status.success(),
            "anonymous volume {v} left behind"
        );
    }
}

/// The image with each example config mounted in place of its default one.
fn image_with_each_example(engine: &Engine, work: &Path) {
    let mut n = 0;
    for e in std::fs::read_dir(deploy().join("examples")).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "yaml") {
            continue;
        }
        n += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let etc = work.join(format!("etc-{name}"));
        own(&etc, &etc.join("regate.yaml"), &text);
        provide_files(&etc, &text);
        let (port, redirect, public_url) = ports_of(&text);
        let mut ports = vec![port];
        ports.extend(redirect);
        let c = engine.run(
            &name,
            &["-v".into(), format!("{}:/etc/regate:ro", etc.display())],
            &ports,
            &[],
        );
        let base = format!("{}://127.0.0.1:{}", scheme(&text), c.ports[&port]);
        assert_eq!(get(&format!("{base}/healthz"), None, None).0, 200, "{name}");
        let (status, challenge, _) = get(&format!("{base}/v2/"), None, None);
        assert_eq!(status, 401, "{name}");
        let realm_base = public_url.unwrap_or_else(|| "http://127.0.0.1:5000".into());
        assert!(
            challenge.starts_with(&format!("Bearer realm=\"{realm_base}/token\"")),
            "{name}: {challenge}"
        );
        let log = logs(&c.id);
        assert!(
            !log.contains("Permission denied") && !log.contains("Read-only"),
            "{name}: {log}"
        );
        if name == "container.yaml" {
            // the default config: a generated admin and the hint to set REGATE_PUBLIC_URL
            assert!(log.contains("docker login 127.0.0.1:5000 -u admin"), "{log}");
            assert!(log.contains("REGATE_PUBLIC_URL"), "{log}");
            let c = engine.run(
                "REGATE_PUBLIC_URL",
                &["-e".into(), "REGATE_PUBLIC_URL=http://127.0.0.1:5030".into()],
                &[5000],
                &[],
            );
            let (_, challenge, _) = get(&format!("http://127.0.0.1:{}/v2/", c.ports[&5000]), None, None);
            assert!(
                challenge.starts_with("Bearer realm=\"http://127.0.0.1:5030/token\""),
                "{challenge}"
            );
            assert!(logs(&c.id).contains("docker login 127.0.0.1:5030 -u admin"));
        }
        if let Some(r) = redirect {
            let (status, location, _) = get(&format!("http://127.0.0.1:{}/v2/", c.ports[&r]), None, None);
            assert_eq!(status, 308, "{name}");
            assert!(location.ends_with("/v2/"), "{location}");
        }
    }
    assert!(n >= 5, "expected the scenario examples, found {n}");
}

/// deploy/docker-compose.yml's regate service, started with the `docker run` it amounts to (no
/// `docker compose` here): its volumes (files laid out next to it as its comments say, the named
/// volume created), its environment, its ports on ephemeral host ports.
fn compose_as_docker_runs(engine: &Engine, work: &Path) {
    let compose = &docs(&deploy().join("docker-compose.yml"))[0];
    let svc = at(compose, "services.regate");
    let project = work.join("compose");
    std::fs::create_dir_all(project.join("examples")).unwrap();
    let mut args: Vec<String> = Vec::new();
    let mut config_text = String::new();
    for v in svc["volumes"].as_sequence().unwrap() {
        let spec = v.as_str().unwrap();
        let mut parts = spec.split(':');
        let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
        let mode = parts.next().map(|m| format!(":{m}")).unwrap_or_default();
        if let Some(rel) = src.strip_prefix("./") {
            let host = project.join(rel);
            if rel.starts_with("examples/") {
                config_text = std::fs::read_to_string(deploy().join(rel)).unwrap();
                own(&project, &host, &config_text);
            }
            args.push("-v".into());
            args.push(format!("{}:{dst}{mode}", host.display()));
        } else {
            let vol = format!("{src}-test-{}", std::process::id());
            docker_ok("compose volume", &["volume", "create", &vol]);
            engine.volumes.lock().unwrap().push(vol.clone());
            args.push("-v".into());
            args.push(format!("{vol}:{dst}{mode}"));
        }
    }
    // the files the config names, where the compose file mounts them from
    let staged = work.join("compose-etc");
    provide_files(&staged, &config_text);
    for (rel, host) in [
        ("tls/tls.crt", "tls/tls.crt"),
        ("tls/tls.key", "tls/tls.key"),
        ("htpasswd", "htpasswd"),
    ] {
        let src = staged.join(rel);
        assert!(src.exists(), "the config names no /etc/regate/{rel}");
        own(&project, &project.join(host), &std::fs::read_to_string(src).unwrap());
    }
    for (k, v) in svc["environment"].as_mapping().unwrap() {
        args.push("-e".into());
        args.push(format!("{}={}", k.as_str().unwrap(), v.as_str().unwrap()));
    }
    let ports: Vec<u16> = svc["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().rsplit(':').next().unwrap().parse().unwrap())
        .collect();
    // its healthcheck is the image's own
    let test: Vec<String> = svc["healthcheck"]["test"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(test, ["CMD", "/regate", "healthcheck"]);
    let c = engine.run("docker-compose.yml", &args, &ports, &[]);
    let https = format!("https://127.0.0.1:{}", c.ports[&5443]);
    assert_eq!(get(&format!("{https}/healthz"), None, None).0, 200);
    let (status, _, body) = get(
        &format!("{https}/token?service=reg.intranet.example.com&scope=repository:admin/app:push"),
        Some(("admin", ADMIN_PW)),
        None,
    );
    assert_eq!(status, 200, "the htpasswd admin signs in: {body}");
    let (status, location, _) = get(&format!("http://127.0.0.1:{}/v2/", c.ports[&5080]), None, None);
    assert_eq!(
        (status, location.as_str()),
        (308, "https://reg.intranet.example.com/v2/")
    );
}

/// The Kubernetes Deployment's container as the kubelet would run it: its args and env, its
/// security context (read-only root filesystem, uid, no capabilities), the ConfigMap and the
/// Secret (placeholders filled in as its comments say) mounted where it mounts them, the
/// emptyDir as a fresh writable directory. Two replicas: one admin credential, one signing key.
fn kubernetes_replicas(engine: &Engine, work: &Path) {
    let all = docs(&deploy().join("k8s/regate.yaml"));
    let kind = |k: &str| all.iter().find(|d| d["kind"] == k).unwrap();
    let dep = kind("Deployment");
    let pod = at(dep, "spec.template.spec");
    let c = at(pod, "containers.0");
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    let gid = pod["securityContext"]["runAsGroup"].as_u64().unwrap();
    let fs_group = pod["securityContext"]["fsGroup"].as_u64().unwrap();
    let mut args: Vec<String> = vec![
        "--read-only".into(),
        format!("--user={uid}:{gid}"),
        format!("--group-add={fs_group}"),
        "--security-opt=no-new-privileges".into(),
        "--cap-drop=ALL".into(),
    ];
    for e in c["env"].as_sequence().unwrap() {
        args.push("-e".into());
        args.push(format!(
            "{}={}",
            e["name"].as_str().unwrap(),
            e["value"].as_str().unwrap()
        ));
    }
    // the Secret's files, placeholders replaced with real values
    let secret_dir = work.join("k8s-secret");
    let cfg_text = at(kind("ConfigMap"), "data")["regate.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let staged = work.join("k8s-staged");
    provide_files(&staged, &cfg_text);
    for (k, _) in at(kind("Secret"), "stringData").as_mapping().unwrap() {
        let k = k.as_str().unwrap();
        let src = staged.join("secrets").join(k);
        let content = std::fs::read_to_string(&src).unwrap_or_else(|_| "deploy-test-secret\n".into());
        own(&secret_dir, &secret_dir.join(k), &content);
    }
    let cm = work.join("k8s-configmap");
    own(&cm, &cm.join("regate.yaml"), &cfg_text);
    let volumes = pod["volumes"].as_sequence().unwrap();
    for m in c["volumeMounts"].as_sequence().unwrap() {
        let name = m["name"].as_str().unwrap();
        let path = m["mountPath"].as_str().unwrap();
        let vol = volumes.iter().find(|v| v["name"] == name).unwrap();
        let ro = if m["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        if vol.get("configMap").is_some() {
            let sub = m["subPath"].as_str().unwrap();
            args.push("-v".into());
            args.push(format!("{}:{path}{ro}", cm.join(sub).display()));
        } else if vol.get("secret").is_some() {
            args.push("-v".into());
            args.push(format!("{}:{path}{ro}", secret_dir.display()));
        } else if vol.get("emptyDir").is_some() {
            args.push(format!("--tmpfs={path}:rw,uid={uid},gid={fs_group},mode=0770"));
        } else {
            panic!("volume {name}: not a configMap, secret or emptyDir");
        }
    }
    let cmd: Vec<String> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let port = c["ports"][0]["containerPort"].as_u64().unwrap() as u16;
    let a = engine.run("k8s replica 1", &args, &[port], &cmd);
    let b = engine.run("k8s replica 2", &args, &[port], &cmd);
    for r in [&a, &b] {
        let log = logs(&r.id);
        assert!(!log.contains("generated the admin password"), "{log}");
        assert!(!log.contains("Read-only"), "{log}");
    }
    let url = |s: &Started| format!("http://127.0.0.1:{}", s.ports[&port]);
    let (status, challenge, _) = get(&format!("{}/v2/", url(&a)), None, None);
    assert_eq!(status, 401);
    assert!(
        challenge.starts_with("Bearer realm=\"https://reg.example.com/token\""),
        "{challenge}"
    );
    // the admin from the Secret signs in at one replica; the other accepts the token
    let (status, _, body) = get(
        &format!("{}/token?service=reg.example.com", url(&a)),
        Some(("admin", ADMIN_PW)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let token: serde_json::Value = serde_json::from_str(&body).unwrap();
    let (status, _, body) = get(&format!("{}/v2/", url(&b)), None, token["token"].as_str());
    assert_eq!(status, 200, "{body}");
}

/// `.dockerignore` keeps build output, local data and key material out of the build context of
/// `docker build -f deploy/Dockerfile .`: a context laid out like a used checkout is sent to the
/// engine and what arrives is listed.
#[test]
fn dockerignore_keeps_secrets_and_build_output_out_of_the_context() {
    if !docker(&["info"]).status.success() {
        println!("skipping: no Docker engine answers `docker info`");
        return;
    }
    let ctx = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(root.join(".dockerignore"), ctx.path().join(".dockerignore")).unwrap();
    for f in [
        "Cargo.toml",
        "src/main.rs",
        "deploy/examples/container.yaml",
        "target/release/regate",
        "target/debug/big",
        "regate-data/admin-password",
        "regate-data/token.key",
        "lfs-storage/x",
        ".git/config",
        "deploy/tls/tls.key",
        "deploy/htpasswd",
        "server.pem",
    ] {
        let p = ctx.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, f).unwrap();
    }
    let df = tempfile::tempdir().unwrap();
    std::fs::write(df.path().join("Dockerfile"), "FROM scratch\nCOPY . /ctx/\n").unwrap();
    let tag = format!("regate-ctx-test:{}", std::process::id());
    let ctx_s = ctx.path().display().to_string();
    let df_s = df.path().join("Dockerfile").display().to_string();
    docker_ok("context", &["build", "-q", "-t", &tag, "-f", &df_s, &ctx_s]);
    let id = docker(&["create", &tag, "x"]);
    let id = String::from_utf8_lossy(&id.stdout).trim().to_owned();
    let tar = Command::new("docker").args(["export", &id]).output().unwrap();
    let _ = docker(&["rm", "-f", "-v", &id]);
    let _ = docker(&["rmi", "-f", &tag]);
    let list = Command::new("tar")
        .arg("-t")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut list = list;
    list.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    let names = String::from_utf8(list.wait_with_output().unwrap().stdout).unwrap();
    for kept in [
        "ctx/Cargo.toml",
        "ctx/src/main.rs",
        "ctx/deploy/examples/container.yaml",
    ] {
        assert!(names.lines().any(|l| l == kept), "{kept} missing: {names}");
    }
    for gone in [
        "target",
        "regate-data",
        "lfs-storage",
        ".git",
        "tls.key",
        "htpasswd",
        "server.pem",
    ] {
        assert!(!names.contains(gone), "{gone} reached the build context: {names}");
    }
}
