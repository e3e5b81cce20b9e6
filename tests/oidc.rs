//! Keyless CI sign-in: a stand-in OIDC issuer on loopback (discovery and JWKS, like GitLab's and
//! GitHub's; a JWKS file like an air-gapped Kubernetes cluster's) signs ID tokens shaped like
//! GitLab CI's, GitHub Actions' and a projected service-account token. They sign in through
//! `/token`, skopeo and docker; every refusal the security model names is tried.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::{client, Server};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// A signing key made by openssl, with its public JWK.
struct SignKey {
    alg: Algorithm,
    kid: String,
    enc: EncodingKey,
    jwk: Value,
}

fn key(dir: &Path, kind: &str, kid: &str) -> SignKey {
    let pem = dir.join(format!("{kid}.pem"));
    let p = pem.to_str().unwrap();
    match kind {
        "rsa" => openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            p,
        ]),
        "ec" => openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            p,
        ]),
        _ => openssl(&["genpkey", "-algorithm", "ed25519", "-out", p]),
    };
    let pem_bytes = std::fs::read(&pem).unwrap();
    let spki = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"]);
    match kind {
        "rsa" => {
            let m = String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"])).unwrap();
            let n = hex::decode(m.trim().trim_start_matches("Modulus=")).unwrap();
            SignKey {
                alg: Algorithm::RS256,
                kid: kid.into(),
                enc: EncodingKey::from_rsa_pem(&pem_bytes).unwrap(),
                jwk: json!({"kty":"RSA","kid":kid,"use":"sig","alg":"RS256","n":b64(&n),"e":"AQAB"}),
            }
        }
        "ec" => {
            let pt = &spki[spki.len() - 65..];
            SignKey {
                alg: Algorithm::ES256,
                kid: kid.into(),
                enc: EncodingKey::from_ec_pem(&pem_bytes).unwrap(),
                jwk: json!({"kty":"EC","crv":"P-256","kid":kid,"x":b64(&pt[1..33]),"y":b64(&pt[33..])}),
            }
        }
        _ => SignKey {
            alg: Algorithm::EdDSA,
            kid: kid.into(),
            enc: EncodingKey::from_ed_pem(&pem_bytes).unwrap(),
            jwk: json!({"kty":"OKP","crv":"Ed25519","kid":kid,"x":b64(&spki[spki.len() - 32..])}),
        },
    }
}

fn sign(k: &SignKey, claims: &Value) -> String {
    let mut h = Header::new(k.alg);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, claims, &k.enc).unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stand-in issuer: `/<name>/.well-known/openid-configuration` and `/<name>/jwks` for each
/// issuer name, with keys that can be changed, a switch to stop answering, and a count of JWKS
/// fetches.
#[derive(Clone)]
struct Issuer {
    base: String,
    keys: Arc<Mutex<Vec<Value>>>,
    down: Arc<AtomicBool>,
    fetches: Arc<AtomicUsize>,
}

impl Issuer {
    fn start() -> Issuer {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let me = Issuer {
            base,
            keys: Arc::default(),
            down: Arc::default(),
            fetches: Arc::default(),
        };
        let srv = me.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let mut line = String::new();
                let mut r = BufReader::new(c.try_clone().unwrap());
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (code, body) = if srv.down.load(Ordering::SeqCst) {
                    (503, "{}".to_owned())
                } else if let Some(name) = path.strip_suffix("/.well-known/openid-configuration") {
                    let iss = format!("{}{name}", srv.base);
                    (
                        200,
                        json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")}).to_string(),
                    )
                } else if path.ends_with("/jwks") {
                    srv.fetches.fetch_add(1, Ordering::SeqCst);
                    (200, json!({"keys": *srv.keys.lock().unwrap()}).to_string())
                } else {
                    (404, "{}".to_owned())
                };
                let _ = write!(
                    c,
                    "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        me
    }

    fn iss(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn publish(&self, keys: &[&SignKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }
}

const AUD: &str = "registry.test";

fn gitlab_claims(iss: &str, project: &str, r#ref: &str, protected: bool, exp_in: u64) -> Value {
    let t = now();
    json!({
        "iss": iss, "aud": AUD, "iat": t, "nbf": t, "exp": t + exp_in, "jti": "j1",
        "sub": format!("project_path:{project}:ref_type:branch:ref:{ref}"),
        "project_path": project, "namespace_path": project.split('/').next().unwrap(),
        "ref": r#ref, "ref_type": "branch", "ref_protected": protected.to_string(),
        "pipeline_source": "push", "environment": "production", "user_login": "dev1",
    })
}

fn github_claims(iss: &str, repo: &str) -> Value {
    let t = now();
    json!({
        "iss": iss, "aud": AUD, "iat": t, "nbf": t, "exp": t + 600,
        "sub": format!("repo:{repo}:ref:refs/heads/main"), "repository": repo,
        "repository_owner": repo.split('/').next().unwrap(), "ref": "refs/heads/main",
        "workflow": "build", "job_workflow_ref": format!("{repo}/.github/workflows/build.yml@refs/heads/main"),
        "environment": "prod", "event_name": "push", "actor": "dev1",
    })
}

fn k8s_claims(iss: &str, ns: &str, sa: &str) -> Value {
    let t = now();
    json!({
        "iss": iss, "aud": [AUD], "iat": t, "nbf": t, "exp": t + 600,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "kubernetes.io": {"namespace": ns, "pod": {"name": "kaniko-1", "uid": "u1"},
                          "serviceaccount": {"name": sa, "uid": "u2"}},
    })
}

struct Setup {
    s: Server,
    issuer: Issuer,
    gitlab: SignKey,
    github: SignKey,
    k8s: SignKey,
    _keys: tempfile::TempDir,
}

fn setup() -> Setup {
    let keys = tempfile::tempdir().unwrap();
    let issuer = Issuer::start();
    let gitlab = key(keys.path(), "rsa", "gl-1");
    let github = key(keys.path(), "ec", "gh-1");
    let k8s = key(keys.path(), "ed", "k8s-1");
    issuer.publish(&[&gitlab, &github]);
    let jwks_file = keys.path().join("k8s-jwks.json");
    std::fs::write(&jwks_file, json!({"keys": [k8s.jwk]}).to_string()).unwrap();
    let cfg = format!(
        r#"limits: {{ failed_auth_per_minute: 0 }}
auth:
  service: {AUD}
  oidc:
    - {{ name: gitlab, issuer: "{gl}", audience: {AUD}, account: "gitlab:{{project_path}}", require: {{ ref_protected: "true" }} }}
    - {{ name: github, issuer: "{gh}", audience: {AUD}, account: "github:{{repository}}" }}
    - {{ name: k8s, issuer: "https://kubernetes.default.svc", audience: {AUD}, account: "k8s:{{kubernetes.io.namespace}}/{{kubernetes.io.serviceaccount.name}}", jwks_url: "{jwks}" }}
access:
  - {{ account: admin, repository: "*", actions: [pull, push, delete], catalog: true }}
  - {{ oidc: gitlab, claims: {{ project_path: "team/*", ref: main }}, repository: "team/*", actions: [pull, push] }}
  - {{ oidc: gitlab, repository: "team/*", actions: [pull] }}
  - {{ oidc: github, claims: {{ repository: "org/*" }}, repository: "org/*", actions: [pull, push] }}
  - {{ oidc: k8s, claims: {{ kubernetes.io.namespace: ci }}, repository: "ci/*", actions: [pull, push] }}
"#,
        gl = issuer.iss("gitlab"),
        gh = issuer.iss("github"),
        jwks = jwks_file.display(),
    );
    let s = Server::start(&cfg);
    Setup {
        s,
        issuer,
        gitlab,
        github,
        k8s,
        _keys: keys,
    }
}

/// `/token` with Basic `user:pass` for `scope`: (status, body).
async fn token(s: &Server, user: &str, pass: &str, scope: &str, extra: &str) -> (u16, Value) {
    let r = client()
        .get(format!("{}/token?service={AUD}&scope={scope}{extra}", s.url))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap_or(Value::Null))
}

/// The actions a regate token grants on `repo`.
fn granted(body: &Value, repo: &str) -> Vec<String> {
    let t = body["token"].as_str().unwrap();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut out: Vec<String> = payload["access"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == repo)
        .flat_map(|a| {
            a["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
        })
        .collect();
    out.sort();
    out
}

fn exp_of(body: &Value) -> u64 {
    let t = body["token"].as_str().unwrap();
    let payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    payload["exp"].as_u64().unwrap()
}

#[tokio::test]
async fn ci_tokens_sign_in_with_what_their_claims_allow() {
    let st = setup();
    let s = &st.s;
    let gl = st.issuer.iss("gitlab");
    // GitLab, protected main: push and pull on team/*
    let main = sign(&st.gitlab, &gitlab_claims(&gl, "team/app", "main", true, 600));
    let (c, b) = token(s, "gitlab", &main, "repository:team/app:pull,push", "").await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(granted(&b, "team/app"), ["pull", "push"]);
    // `-u oidc` picks the provider by the token's issuer
    let (c, b) = token(s, "oidc", &main, "repository:team/app:pull,push", "").await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(granted(&b, "team/app"), ["pull", "push"]);
    // another protected branch: the pull-only rule; another group's project: nothing
    let feature = sign(&st.gitlab, &gitlab_claims(&gl, "team/app", "release", true, 600));
    let (c, b) = token(s, "gitlab", &feature, "repository:team/app:pull,push", "").await;
    assert_eq!(c, 200);
    assert_eq!(granted(&b, "team/app"), ["pull"]);
    let (_, b) = token(s, "gitlab", &main, "repository:other/app:pull", "").await;
    assert!(granted(&b, "other/app").is_empty());
    // GitHub Actions (ES256) and a Kubernetes projected token (EdDSA, JWKS from a file)
    let gh = sign(&st.github, &github_claims(&st.issuer.iss("github"), "org/app"));
    let (c, b) = token(s, "github", &gh, "repository:org/app:pull,push", "").await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(granted(&b, "org/app"), ["pull", "push"]);
    let k = sign(&st.k8s, &k8s_claims("https://kubernetes.default.svc", "ci", "builder"));
    let (c, b) = token(s, "k8s", &k, "repository:ci/app:pull,push", "").await;
    assert_eq!(c, 200, "{b}");
    assert_eq!(granted(&b, "ci/app"), ["pull", "push"]);
    let other_ns = sign(&st.k8s, &k8s_claims("https://kubernetes.default.svc", "dev", "builder"));
    let (_, b) = token(s, "k8s", &other_ns, "repository:ci/app:pull", "").await;
    assert!(granted(&b, "ci/app").is_empty());

    // Basic credentials straight on /v2/ are checked against the same rules
    let v2 = |user: &'static str, tok: String, path: &'static str| {
        let url = format!("{}{path}", s.url);
        async move {
            client()
                .get(url)
                .basic_auth(user, Some(tok))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(v2("gitlab", main.clone(), "/v2/").await, 200);
    assert_eq!(
        v2("gitlab", main.clone(), "/v2/team/app/tags/list").await,
        404,
        "allowed, nothing pushed yet"
    );
    assert_eq!(v2("gitlab", main.clone(), "/v2/other/app/tags/list").await, 401);
    assert_eq!(
        v2("github", main.clone(), "/v2/").await,
        401,
        "a GitLab token is no GitHub sign-in"
    );

    // nothing issued outlives the ID token, and no refresh token is handed out
    let short = gitlab_claims(&gl, "team/app", "main", true, 90);
    let id_exp = short["exp"].as_u64().unwrap();
    let (c, b) = token(
        s,
        "gitlab",
        &sign(&st.gitlab, &short),
        "repository:team/app:pull",
        "&offline_token=true",
    )
    .await;
    assert_eq!(c, 200);
    assert!(
        exp_of(&b) <= id_exp,
        "token exp {} after the ID token's {id_exp}",
        exp_of(&b)
    );
    assert!(b["expires_in"].as_u64().unwrap() <= 90);
    assert!(b.get("refresh_token").is_none(), "{b}");

    // the audit log names provider, subject and the claims the rules look at
    let logs = s.logs();
    assert!(logs.contains("oidc_login"), "{logs}");
    assert!(
        logs.contains("project_path:team/app:ref_type:branch:ref:main"),
        "{logs}"
    );
    assert!(logs.contains("project_path=team/app"), "{logs}");
    assert!(!logs.contains(&main), "the ID token itself was logged");

    // an administrator sees the providers and the shape of their rules
    let (u, p) = s.admin();
    let cookie = common::web_session(s, &u, &p).await;
    let (code, page) = common::web_page(s, "/ui/admin", &cookie).await;
    assert_eq!(code, 200, "{page}");
    for want in [
        "gitlab:{project_path}",
        "ref_protected=true",
        "project_path=team/* ref=main",
        "k8s:{kubernetes.io.namespace}",
    ] {
        assert!(page.contains(want), "{want} missing: {page}");
    }
}

#[tokio::test]
async fn every_forgery_is_refused() {
    let st = setup();
    let s = &st.s;
    let gl = st.issuer.iss("gitlab");
    let good = gitlab_claims(&gl, "team/app", "main", true, 600);
    let scope = "repository:team/app:pull";
    let refused = |name: &'static str, user: &'static str, tok: String| async move {
        let (c, b) = token(s, user, &tok, scope, "").await;
        assert_eq!(c, 401, "{name}: {b}");
    };
    // sanity: the good one passes (and warms the key cache)
    assert_eq!(token(s, "gitlab", &sign(&st.gitlab, &good), scope, "").await.0, 200);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    refused(
        "wrong aud",
        "gitlab",
        sign(&st.gitlab, &with("aud", json!("other.example"))),
    )
    .await;
    refused("no aud", "gitlab", {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("aud");
        sign(&st.gitlab, &c)
    })
    .await;
    refused(
        "wrong iss",
        "gitlab",
        sign(&st.gitlab, &with("iss", json!(format!("{gl}/")))),
    )
    .await;
    refused("expired", "gitlab", sign(&st.gitlab, &with("exp", json!(now() - 120)))).await;
    refused(
        "not yet valid",
        "gitlab",
        sign(&st.gitlab, &with("nbf", json!(now() + 600))),
    )
    .await;
    refused(
        "issued in the future",
        "gitlab",
        sign(&st.gitlab, &with("iat", json!(now() + 600))),
    )
    .await;
    refused(
        "require not met",
        "gitlab",
        sign(&st.gitlab, &with("ref_protected", json!("false"))),
    )
    .await;
    refused(
        "string exp",
        "gitlab",
        sign(&st.gitlab, &with("exp", json!((now() + 600).to_string()))),
    )
    .await;
    // another provider's token, and a GitHub token presented as GitLab's
    let gh = sign(&st.github, &github_claims(&st.issuer.iss("github"), "org/app"));
    refused("provider mix-up", "gitlab", gh).await;
    // alg confusion: HS256 keyed with the public key; and alg none
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("gl-1".into());
    let public_pem = st.gitlab.jwk.to_string();
    let hs = jsonwebtoken::encode(&h, &good, &EncodingKey::from_secret(public_pem.as_bytes())).unwrap();
    refused("HS256 with the public key", "gitlab", hs).await;
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"gl-1"}"#),
        b64(good.to_string().as_bytes())
    );
    refused("alg none", "gitlab", none).await;
    // an attacker's own key: under the issuer's kid, and announced by jku/jwk headers
    let keys = tempfile::tempdir().unwrap();
    let mut evil = key(keys.path(), "rsa", "gl-1");
    refused("foreign key with the issuer's kid", "gitlab", sign(&evil, &good)).await;
    let attacker = Issuer::start();
    evil.kid = "evil".into();
    evil.jwk["kid"] = json!("evil");
    attacker.publish(&[&evil]);
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("evil".into());
    h.jku = Some(format!("{}/jwks", attacker.iss("x")));
    refused(
        "jku injection",
        "gitlab",
        jsonwebtoken::encode(&h, &good, &evil.enc).unwrap(),
    )
    .await;
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("evil".into());
    h.jwk = Some(serde_json::from_value(evil.jwk.clone()).unwrap());
    refused(
        "embedded jwk",
        "gitlab",
        jsonwebtoken::encode(&h, &good, &evil.enc).unwrap(),
    )
    .await;
    assert_eq!(
        attacker.fetches.load(Ordering::SeqCst),
        0,
        "the attacker's JWKS was fetched"
    );
    // a tampered payload under a good signature
    let t = sign(&st.gitlab, &good);
    let parts: Vec<&str> = t.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(with("project_path", json!("team/other")).to_string().as_bytes()),
        parts[2]
    );
    refused("tampered payload", "gitlab", forged).await;
    // too large
    refused(
        "oversized",
        "gitlab",
        sign(&st.gitlab, &with("pad", json!("x".repeat(20_000)))),
    )
    .await;
    // a flood of invented kids costs the issuer at most one fetch
    let before = st.issuer.fetches.load(Ordering::SeqCst);
    for i in 0..20 {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(format!("random-{i}"));
        let (c, _) = token(
            s,
            "gitlab",
            &jsonwebtoken::encode(&h, &good, &st.gitlab.enc).unwrap(),
            scope,
            "",
        )
        .await;
        assert_eq!(c, 401);
    }
    let fetched = st.issuer.fetches.load(Ordering::SeqCst) - before;
    assert!(fetched <= 1, "{fetched} JWKS fetches for 20 unknown kids");
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_an_outage_keeps_the_cached_ones() {
    let st = setup();
    let s = &st.s;
    let gl = st.issuer.iss("gitlab");
    let scope = "repository:team/app:pull";
    let claims = gitlab_claims(&gl, "team/app", "main", true, 600);
    assert_eq!(token(s, "gitlab", &sign(&st.gitlab, &claims), scope, "").await.0, 200);
    // the issuer rotates to a new key (kid gl-2): its tokens are accepted after one refetch
    let keys = tempfile::tempdir().unwrap();
    let next = key(keys.path(), "rsa", "gl-2");
    st.issuer.publish(&[&st.gitlab, &next, &st.github]);
    let (c, b) = token(s, "gitlab", &sign(&next, &claims), scope, "").await;
    assert_eq!(c, 200, "rotated key: {b}");
    // the issuer goes down: keys already fetched keep working
    st.issuer.down.store(true, Ordering::SeqCst);
    assert_eq!(token(s, "gitlab", &sign(&next, &claims), scope, "").await.0, 200);
    assert_eq!(token(s, "gitlab", &sign(&st.gitlab, &claims), scope, "").await.0, 200);
    // a provider whose keys were never fetched answers 503 while its issuer is down
    let gh = sign(&st.github, &github_claims(&st.issuer.iss("github"), "org/app"));
    let (c, b) = token(s, "github", &gh, "repository:org/app:pull", "").await;
    assert_eq!(c, 503, "{b}");
    st.issuer.down.store(false, Ordering::SeqCst);
}

/// skopeo and docker, with the ID token as the password.
#[tokio::test]
async fn skopeo_and_docker_push_and_pull_with_an_id_token() {
    let st = setup();
    let s = &st.s;
    let id = sign(
        &st.gitlab,
        &gitlab_claims(&st.issuer.iss("gitlab"), "team/app", "main", true, 900),
    );
    // skopeo
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let out = Command::new("python3")
        .arg(common::mkimage())
        .arg(&src)
        .arg("v1")
        .args(["1"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let creds = format!("gitlab:{id}");
    let skopeo = |args: &[&str]| {
        let o = Command::new("skopeo").args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let dst = format!("docker://{}/team/app:v1", s.host);
    let (ok, err) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", src.display()),
        &dst,
    ]);
    assert!(ok, "skopeo push with an ID token: {err}");
    let back = work.path().join("back");
    let (ok, err) = skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dst,
        &format!("oci:{}:v1", back.display()),
    ]);
    assert!(ok, "skopeo pull with an ID token: {err}");
    // the same job may not push elsewhere
    let (ok, _) = skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:v1", src.display()),
        &format!("docker://{}/other/app:v1", s.host),
    ]);
    assert!(!ok, "pushed outside the rule");

    // docker
    let docker_ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|st| st.success());
    if !docker_ok {
        println!("skipping the docker part: no Docker engine");
        return;
    }
    let cfg = work.path().join("docker-config");
    std::fs::create_dir_all(&cfg).unwrap();
    let docker = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new("docker")
            .env("DOCKER_CONFIG", &cfg)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(i) = stdin {
            c.stdin.as_mut().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(c.stdin.take());
        let o = c.wait_with_output().unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    };
    let (ok, out) = docker(
        &["login", &s.host, "-u", "gitlab", "--password-stdin"],
        Some(&format!("{id}\n")),
    );
    assert!(ok, "docker login with an ID token: {out}");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), format!("built by CI {}\n", now())).unwrap();
    let tar = work.path().join("img.tar");
    assert!(Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap()
        .success());
    let tag = format!("{}/team/app:ci", s.host);
    let (ok, out) = docker(&["import", tar.to_str().unwrap(), &tag], None);
    assert!(ok, "{out}");
    let (ok, out) = docker(&["push", &tag], None);
    let _ = docker(&["rmi", "-f", &tag], None);
    assert!(ok, "docker push with an ID token: {out}");
    let (ok, out) = docker(&["pull", &tag], None);
    let _ = docker(&["rmi", "-f", &tag], None);
    assert!(ok, "docker pull with an ID token: {out}");
    let mut cj = String::new();
    std::fs::File::open(cfg.join("config.json"))
        .unwrap()
        .read_to_string(&mut cj)
        .unwrap();
    assert!(!cj.contains("identitytoken"), "a refresh token was handed out: {cj}");
    let _ = docker(&["logout", &s.host], None);
}
