//! The token flow end to end over HTTP: challenges, /token GET and POST, refresh tokens, the
//! access policy, forged and expired tokens, and what reaches the logs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::Engine as _;
use common::{client, htpasswd, token, Server};
use serde_json::Value;

fn claims(tok: &str) -> Value {
    let p = tok.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn www_auth(r: &reqwest::Response) -> String {
    r.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn policy_server(dir: tempfile::TempDir, extra: &str) -> Server {
    let hp = htpasswd(
        dir.path(),
        &[("alice", "alice:pw"), ("bob", "bobpw"), ("admin2", "adm")],
    );
    let cfg = format!(
        r#"auth:
  htpasswd: {}
  service: registry.test
{extra}access:
  - {{ account: admin2, repository: "*", actions: ["*"], catalog: true }}
  - {{ account: anonymous, repository: "public/*", actions: [pull, push] }}
  - {{ repository: "${{account}}/*", actions: [pull, push] }}
  - {{ repository: "public/*", actions: [pull] }}
"#,
        hp.display()
    );
    Server::start_in(dir, &cfg)
}

#[tokio::test]
async fn challenge_and_docker_style_token_flow() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    // /v2/ always challenges an anonymous caller
    let r = c.get(format!("{}/v2/", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        www_auth(&r),
        format!("Bearer realm=\"{}/token\",service=\"registry.test\"", s.url)
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // a repository request names the exact scope
    let r = c
        .get(format!("{}/v2/alice/app/manifests/v1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        www_auth(&r).ends_with(",scope=\"repository:alice/app:pull\""),
        "{}",
        www_auth(&r)
    );
    let r = c
        .post(format!(
            "{}/v2/alice/app/blobs/uploads/?mount=sha256:{}&from=bob/lib",
            s.url,
            "a".repeat(64)
        ))
        .send()
        .await
        .unwrap();
    assert!(
        www_auth(&r).contains("scope=\"repository:alice/app:pull,push repository:bob/lib:pull\""),
        "{}",
        www_auth(&r)
    );

    // docker login: GET with Basic, no scope, offline_token -> refresh token; password has a ':'
    let r = c
        .get(format!(
            "{}/token?account=alice&client_id=docker&offline_token=true&service=registry.test",
            s.url
        ))
        .basic_auth("alice", Some("alice:pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["token"], v["access_token"]);
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    let t = v["token"].as_str().unwrap();
    assert_eq!(
        c.get(format!("{}/v2/", s.url))
            .bearer_auth(t)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // granted access is the intersection of asked and allowed; asking for more is not an error
    let t = token(
        &s,
        Some(("alice", "alice:pw")),
        &[
            "repository:alice/app:pull,push,delete",
            "repository:bob/x:pull",
            "registry:catalog:*",
        ],
    )
    .await;
    let cl = claims(&t);
    assert_eq!(cl["sub"], "alice");
    assert_eq!(cl["aud"], "registry.test");
    assert_eq!(cl["iss"], "regate");
    assert_eq!(
        cl["access"],
        serde_json::json!([{"type":"repository","name":"alice/app","actions":["pull","push"]}])
    );

    // the refresh grant (docker's identity token) works and is not rotated
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", rt.as_str()),
        ("client_id", "docker"),
        ("service", "registry.test"),
        ("scope", "repository:alice/app:pull,push"),
    ];
    let r = c.post(format!("{}/token", s.url)).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v.get("refresh_token").is_none());
    let at = v["access_token"].as_str().unwrap();
    assert_eq!(claims(at)["access"][0]["actions"], serde_json::json!(["pull", "push"]));
    // and the access token opens exactly that repository
    let r = c
        .get(format!("{}/v2/alice/app/tags/list", s.url))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "authorised, repository simply empty");
    let r = c
        .get(format!("{}/v2/bob/app/tags/list", s.url))
        .bearer_auth(at)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(www_auth(&r).contains("error=\"insufficient_scope\""));

    // changing alice's password in the htpasswd file revokes the refresh token
    let h = bcrypt::hash("newpw", 4).unwrap();
    let hp = s.dir.path().join("htpasswd");
    let text = std::fs::read_to_string(&hp).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("alice:") {
                format!("alice:{h}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(1100)); // mtime granularity of the reload check
    std::fs::write(&hp, text).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let r = c.post(format!("{}/token", s.url)).form(&form).send().await.unwrap();
        if r.status() == 401 {
            let v: Value = r.json().await.unwrap();
            assert!(v["details"].as_str().unwrap().contains("docker login"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "refresh token still accepted after password change"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn bad_credentials_are_json_never_html() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    for (u, p) in [("alice", "wrong"), ("nobody", "x"), ("alice", "alice")] {
        let r = c
            .get(format!("{}/token?service=registry.test", s.url))
            .basic_auth(u, Some(p))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"));
        let v: Value = r.json().await.unwrap();
        assert!(v["details"]
            .as_str()
            .unwrap()
            .contains("incorrect username or password"));
    }
    // POST password grant (containerd) with bad and good credentials
    let r = c
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "nope"),
            ("client_id", "containerd-client"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = c
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "bobpw"),
            ("client_id", "containerd-client"),
            ("access_type", "offline"),
            ("scope", "repository:bob/app:pull"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["refresh_token"].as_str().unwrap().starts_with("rgr_"));
    assert_eq!(v["scope"], "repository:bob/app:pull");
    // unsupported grant type and wrong content type are 400 JSON
    let r = c
        .post(format!("{}/token", s.url))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "unsupported_grant_type");
    let r = c.post(format!("{}/token", s.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 400);
    // a revoked/unknown refresh token
    let r = c
        .post(format!("{}/token", s.url))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", "rgr_notatoken")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn anonymous_access_follows_rules_and_switch() {
    let s = policy_server(tempfile::tempdir().unwrap(), "  anonymous_pull: true\n");
    let t = token(
        &s,
        None,
        &["repository:public/app:pull,push", "repository:alice/app:pull"],
    )
    .await;
    let cl = claims(&t);
    assert_eq!(cl["sub"], "");
    // anonymous gets pull where a rule names it, never push
    assert_eq!(
        cl["access"],
        serde_json::json!([{"type":"repository","name":"public/app","actions":["pull"]}])
    );
    drop(s);
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let t = token(&s, None, &["repository:public/app:pull"]).await;
    assert_eq!(claims(&t)["access"], serde_json::json!([]));
}

#[tokio::test]
async fn forged_and_foreign_tokens_refused_on_v2() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let other = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    let good = token(&s, Some(("alice", "alice:pw")), &["repository:alice/app:pull"]).await;
    let url = format!("{}/v2/alice/app/tags/list", s.url);
    assert_eq!(c.get(&url).bearer_auth(&good).send().await.unwrap().status(), 404);
    // another regate's token for the same user and service
    let foreign = token(&other, Some(("alice", "alice:pw")), &["repository:alice/app:pull"]).await;
    let r = c.get(&url).bearer_auth(&foreign).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(www_auth(&r).contains("error=\"invalid_token\""));
    // alg none with our claims
    let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = good.split('.').collect();
    let none = format!("{}.{}.", b.encode(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    assert_eq!(c.get(&url).bearer_auth(&none).send().await.unwrap().status(), 401);
    // payload edited to another repository, signature kept
    let mut cl = claims(&good);
    cl["access"][0]["name"] = serde_json::json!("bob/app");
    let edited = format!(
        "{}.{}.{}",
        parts[0],
        b.encode(serde_json::to_vec(&cl).unwrap()),
        parts[2]
    );
    let r = c
        .get(format!("{}/v2/bob/app/tags/list", s.url))
        .bearer_auth(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // garbage
    assert_eq!(c.get(&url).bearer_auth("x.y.z").send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn catalog_needs_a_rule_and_lists_only_pullable() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    // push one manifest into alice/app and bob/app using Basic auth straight on /v2/
    for (u, p) in [("alice", "alice:pw"), ("bob", "bobpw")] {
        let cfg = b"{}";
        let cd = common::digest(cfg);
        let r = c
            .post(format!("{}/v2/{u}/app/blobs/uploads/?digest={cd}", s.url))
            .basic_auth(u, Some(p))
            .body(cfg.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let m = serde_json::json!({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":cd,"size":2},"layers":[]});
        let r = c
            .put(format!("{}/v2/{u}/app/manifests/v1", s.url))
            .basic_auth(u, Some(p))
            .header("content-type", "application/vnd.oci.image.manifest.v1+json")
            .body(serde_json::to_vec(&m).unwrap())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // Basic on /v2/ is checked against the policy too
    let r = c
        .get(format!("{}/v2/bob/app/tags/list", s.url))
        .basic_auth("alice", Some("alice:pw"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // alice has no catalog rule
    let t = token(&s, Some(("alice", "alice:pw")), &["registry:catalog:*"]).await;
    assert_eq!(claims(&t)["access"], serde_json::json!([]));
    assert_eq!(
        c.get(format!("{}/v2/_catalog", s.url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let t = token(&s, Some(("admin2", "adm")), &["registry:catalog:*"]).await;
    let r = c
        .get(format!("{}/v2/_catalog", s.url))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!(["alice/app", "bob/app"]));
}

#[tokio::test]
async fn jwks_names_the_signing_key() {
    let s = Server::start("");
    let r = client()
        .get(format!("{}/.well-known/jwks.json", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let (u, p) = s.admin();
    let t = token(&s, Some((&u, &p)), &[]).await;
    let hdr: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hdr["alg"], "ES256");
    assert_eq!(v["keys"][0]["kid"], hdr["kid"]);
    assert_eq!(v["keys"][0]["kty"], "EC");
    assert_eq!(v["keys"][0]["crv"], "P-256");
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    let r = c
        .get(format!(
            "{}/token?offline_token=true&service=registry.test&scope=repository:alice/app:pull",
            s.url
        ))
        .basic_auth("alice", Some("alice:pw"))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let tok = v["token"].as_str().unwrap().to_owned();
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    c.get(format!("{}/v2/alice/app/tags/list", s.url))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    c.get(format!("{}/token", s.url))
        .basic_auth("bob", Some("wrong-secret-pw"))
        .send()
        .await
        .unwrap();
    c.post(format!("{}/token", s.url))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
        .send()
        .await
        .unwrap();
    let logs = s.logs();
    assert!(logs.contains("token_issued"), "audit event missing: {logs}");
    assert!(logs.contains("token_denied"));
    for secret in ["alice:pw", "wrong-secret-pw", tok.as_str(), rt.as_str(), "bobpw"] {
        assert!(!logs.contains(secret), "secret {secret} leaked into logs");
    }
}

fn run_cli(s: &Server, args: &[&str]) -> (bool, String, String) {
    let out = common::regate()
        .args(args)
        .arg("--config")
        .arg(s.dir.path().join("regate.yaml"))
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn secret_of(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("secret (shown once): "))
        .unwrap()
        .trim()
        .to_owned()
}

#[tokio::test]
async fn robot_accounts_are_limited_expire_and_revoke() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let (ok, out, err) = run_cli(&s, &["robot", "add", "ci", "--repo", "ci/*", "--actions", "pull,push"]);
    assert!(ok, "{err}");
    let secret = secret_of(&out);
    assert!(out.contains("docker login"));
    let t = token(
        &s,
        Some(("robot$ci", &secret)),
        &["repository:ci/app:pull,push,delete", "repository:alice/app:pull"],
    )
    .await;
    let cl = claims(&t);
    assert_eq!(cl["sub"], "robot$ci");
    assert_eq!(
        cl["access"],
        serde_json::json!([{"type":"repository","name":"ci/app","actions":["pull","push"]}])
    );
    // the wrong name with the right secret fails
    let r = client()
        .get(format!("{}/token", s.url))
        .basic_auth("robot$other", Some(&secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (_, list, _) = run_cli(&s, &["robot", "list"]);
    assert!(list.contains("robot$ci") && list.contains("ci/*:pull,push"), "{list}");
    assert!(!list.contains(&secret));
    // a robot's docker login (refresh token) dies with the robot
    let r = client()
        .get(format!("{}/token?offline_token=true", s.url))
        .basic_auth("robot$ci", Some(&secret))
        .send()
        .await
        .unwrap();
    let rt = r.json::<Value>().await.unwrap()["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, _, err) = run_cli(&s, &["robot", "remove", "ci"]);
    assert!(ok, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let a = client()
            .get(format!("{}/token", s.url))
            .basic_auth("robot$ci", Some(&secret))
            .send()
            .await
            .unwrap()
            .status();
        let b = client()
            .post(format!("{}/token", s.url))
            .form(&[("grant_type", "refresh_token"), ("refresh_token", rt.as_str())])
            .send()
            .await
            .unwrap()
            .status();
        if a == 401 && b == 401 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "removed robot still works");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // expiry
    let (ok, out, _) = run_cli(&s, &["robot", "add", "short", "--repo", "*", "--expires", "1s"]);
    assert!(ok);
    let secret = secret_of(&out);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while client()
        .get(format!("{}/token", s.url))
        .basic_auth("robot$short", Some(&secret))
        .send()
        .await
        .unwrap()
        .status()
        != 401
    {
        assert!(std::time::Instant::now() < deadline, "expired robot still works");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // bad input: one sentence, exit 2
    let (ok, _, err) = run_cli(&s, &["robot", "add", "bad name", "--repo", "*"]);
    assert!(!ok && err.contains("robot name"), "{err}");
}

#[tokio::test]
async fn cli_passwords_mint_list_use_revoke() {
    let s = policy_server(tempfile::tempdir().unwrap(), "");
    let c = client();
    let api = format!("{}/api/v1/tokens", s.url);
    assert_eq!(c.post(&api).send().await.unwrap().status(), 401);
    assert_eq!(
        c.post(&api)
            .basic_auth("alice", Some("nope"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let r = c
        .post(&api)
        .basic_auth("alice", Some("alice:pw"))
        .json(&serde_json::json!({"repositories": ["alice/app"], "actions": ["pull"], "expires_in": 3600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let (id, pw) = (
        v["id"].as_str().unwrap().to_owned(),
        v["token"].as_str().unwrap().to_owned(),
    );
    assert_eq!(v["username"], "alice");
    assert!(v["expires_at"].as_str().unwrap().ends_with('Z'));
    // with the CLI password alice gets only what it names, though the rules allow push
    let t = token(
        &s,
        Some(("alice", &pw)),
        &["repository:alice/app:pull,push", "repository:alice/other:pull"],
    )
    .await;
    assert_eq!(
        claims(&t)["access"],
        serde_json::json!([{"type":"repository","name":"alice/app","actions":["pull"]}])
    );
    // and never more than alice may do, whatever it asks for
    let r = c
        .post(&api)
        .basic_auth("alice", Some("alice:pw"))
        .json(&serde_json::json!({"repositories": ["*"], "actions": ["*"]}))
        .send()
        .await
        .unwrap();
    let wide = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let t = token(
        &s,
        Some(("alice", &wide)),
        &["repository:bob/app:pull", "repository:alice/x:pull,push,delete"],
    )
    .await;
    assert_eq!(
        claims(&t)["access"],
        serde_json::json!([{"type":"repository","name":"alice/x","actions":["pull","push"]}])
    );
    // bob cannot use alice's password, nor see or revoke it
    assert_eq!(
        c.get(format!("{}/token", s.url))
            .basic_auth("bob", Some(&pw))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let list: Value = c
        .get(&api)
        .basic_auth("bob", Some("bobpw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(
        c.delete(format!("{api}/{id}"))
            .basic_auth("bob", Some("bobpw"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let list: Value = c
        .get(&api)
        .basic_auth("alice", Some("alice:pw"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(list[0].get("token").is_none(), "secrets are shown only once");
    // bad requests
    let r = c
        .post(&api)
        .basic_auth("alice", Some("alice:pw"))
        .body("{\"expires_in\": 0}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&api)
        .basic_auth("alice", Some("alice:pw"))
        .body("{\"bogus\": 1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // revoke
    assert_eq!(
        c.delete(format!("{api}/{id}"))
            .basic_auth("alice", Some("alice:pw"))
            .send()
            .await
            .unwrap()
            .status(),
        204
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while c
        .get(format!("{}/token", s.url))
        .basic_auth("alice", Some(&pw))
        .send()
        .await
        .unwrap()
        .status()
        != 401
    {
        assert!(std::time::Instant::now() < deadline, "revoked CLI password still works");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    // a robot minting a CLI password stays within the robot's limits
    let (ok, out, _) = run_cli(&s, &["robot", "add", "ci", "--repo", "ci/*", "--actions", "pull"]);
    assert!(ok);
    let rs = secret_of(&out);
    let r = c
        .post(&api)
        .basic_auth("robot$ci", Some(&rs))
        .json(&serde_json::json!({"repositories": ["*"], "actions": ["pull", "push"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let child = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let t = token(
        &s,
        Some(("robot$ci", &child)),
        &["repository:ci/a:pull,push", "repository:x/y:pull"],
    )
    .await;
    assert_eq!(
        claims(&t)["access"],
        serde_json::json!([{"type":"repository","name":"ci/a","actions":["pull"]}])
    );
}

#[tokio::test]
async fn key_rotation_keeps_old_tokens_valid_until_expiry() {
    // a fixed service name: the port (and so the default service) changes across restarts
    let s = Server::start("auth:\n  service: registry.test\n");
    let (u, p) = s.admin();
    let old = token(&s, Some((&u, &p)), &["repository:admin/x:pull"]).await;
    let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();
    let dir = s.into_dir();
    // rotate: keep the old certificate for verification, let regate generate a new key
    let data = dir.path().join("data");
    std::fs::rename(data.join("token.crt"), dir.path().join("old.crt")).unwrap();
    std::fs::remove_file(data.join("token.key")).unwrap();
    let cfg = dir.path().join("regate.yaml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "  verification_certs: [{}]\n",
        dir.path().join("old.crt").display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let s = Server::start_with_config(dir, &cfg);
    let c = client();
    let r = c
        .get(format!("{}/v2/admin/x/tags/list", s.url))
        .bearer_auth(&old)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "old token still authorises");
    let new = token(&s, Some((&u, &p)), &["repository:admin/x:pull"]).await;
    let new_kid = jsonwebtoken::decode_header(&new).unwrap().kid.unwrap();
    assert_ne!(old_kid, new_kid);
    let jwks: Value = c
        .get(format!("{}/.well-known/jwks.json", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, vec![new_kid.as_str(), old_kid.as_str()]);
}
