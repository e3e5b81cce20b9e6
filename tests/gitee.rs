//! Gitee single sign-on end to end, against the Gitee stand-in (tests/common/gitee.rs): the
//! browser flow (state, PKCE, single-use codes, no open redirect, session cookie, the account
//! page and its CLI passwords), `docker login` with a Gitee personal access token or account
//! password, permissions mirrored from Gitee repositories and organisations, caching, and Gitee
//! being down or slow. skopeo and docker (where an engine runs) push with Gitee credentials;
//! headless Chromium drives the real browser flow where it is installed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/gitee.rs"]
mod standin;

use common::Server;
use serde_json::Value;
use standin::{repo, user, Gitee};
use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

const ALICE_PAT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
const BOB_PAT: &str = "f9e8d7c6b5a4938271605f4e3d2c1b0a";

fn world() -> Gitee {
    let g = Gitee::start(
        vec![
            user(101, "alice", "alice-password", ALICE_PAT),
            user(102, "bob", "bob-password", BOB_PAT),
        ],
        vec![
            repo("team", "app", false, &[("alice", "write"), ("bob", "read")]),
            repo("team", "ops", false, &[("bob", "admin")]),
            repo("oss", "lib", true, &[]),
            repo("team", "fresh", false, &[("alice", "read")]),
        ],
    );
    {
        let mut st = g.state.lock().unwrap();
        st.orgs.insert("platform".into(), vec!["alice".into()]);
        st.enterprises.insert("acme".into(), vec!["bob".into()]);
    }
    g
}

/// regate with Gitee sign-in and the rules a Gitee team would write.
fn server(g: &Gitee, gitee_extra: &str) -> Server {
    let s = Server::start(&format!(
        "auth:\n{}access:\n  - {{ account: alice, repository: \"admin-only/*\", actions: [pull], catalog: true }}\n  - {{ groups: [gitee-org:platform], repository: \"shared/*\", actions: [pull] }}\n  - {{ groups: [gitee-enterprise:acme], repository: \"acme/*\", actions: [pull] }}\n  - {{ gitee: repo_permission }}\n  - {{ repository: \"${{account}}/*\", actions: [pull, push] }}\n",
        g.config(gitee_extra)
    ));
    g.set_redirect_uri(&format!("{}/login/callback", s.url));
    s
}

/// A browser-like client: no redirects followed, a User-Agent as browsers send.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Mozilla/5.0 (regate tests)")
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// `name=value` pairs from a response's Set-Cookie headers, with the attributes.
fn set_cookies(r: &reqwest::Response) -> HashMap<String, (String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=')?;
            Some((k.trim().to_owned(), (val.to_owned(), attrs.to_owned())))
        })
        .collect()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

struct Started {
    login_cookie: String,
    authorize: String,
}

async fn start_login(s: &Server, rd: Option<&str>) -> Started {
    let mut rb = client().get(format!("{}/login", s.url));
    if let Some(rd) = rd {
        rb = rb.query(&[("rd", rd)]);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 302);
    let c = set_cookies(&r);
    let (lc, attrs) = c.get("regate_login").expect("login cookie").clone();
    assert!(attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax"), "{attrs}");
    Started {
        login_cookie: lc,
        authorize: location(&r),
    }
}

/// What the user does on Gitee's page: sign in and authorise; returns the callback URL.
async fn approve(authorize: &str, login: &str, password: &str) -> String {
    let url = reqwest::Url::parse(authorize).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    // the form Gitee shows
    let r = client().get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 200, "authorize page: {}", r.text().await.unwrap());
    let mut form: Vec<(String, String)> = q.into_iter().collect();
    form.push(("login".into(), login.into()));
    form.push(("password".into(), password.into()));
    let r = client()
        .post(format!("{}/oauth/authorize", url.origin().ascii_serialization()))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    location(&r)
}

async fn callback(s: &Server, url: &str, login_cookie: Option<&str>) -> reqwest::Response {
    assert!(url.starts_with(&format!("{}/login/callback", s.url)), "{url}");
    let mut rb = client().get(url);
    if let Some(c) = login_cookie {
        rb = rb.header("cookie", format!("regate_login={c}"));
    }
    rb.send().await.unwrap()
}

/// The whole browser sign-in; returns the session cookie value.
async fn sign_in(s: &Server, who: &str, password: &str) -> String {
    let st = start_login(s, None).await;
    let cb = approve(&st.authorize, who, password).await;
    let r = callback(s, &cb, Some(&st.login_cookie)).await;
    assert_eq!(r.status(), 302, "{}", r.text().await.unwrap());
    set_cookies(&r).get("regate_session").expect("session cookie").0.clone()
}

async fn page(s: &Server, session: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .header("cookie", format!("regate_session={session}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let i = s.find(a).unwrap_or_else(|| panic!("{a:?} not in {s}")) + a.len();
    let j = s[i..].find(b).unwrap() + i;
    &s[i..j]
}

/// What `/token` grants `user:pass` for `scopes` (status, granted `access` entries).
async fn grant(s: &Server, user: &str, pass: &str, scopes: &[&str]) -> (u16, Value) {
    let mut q: Vec<(&str, &str)> = vec![("service", "x")];
    for sc in scopes {
        q.push(("scope", sc));
    }
    let r = client()
        .get(format!("{}/token", s.url))
        .query(&q)
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    let code = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    if code != 200 {
        return (code, v);
    }
    (code, claims(v["token"].as_str().unwrap())["access"].clone())
}

fn claims(jwt: &str) -> Value {
    use base64::Engine as _;
    let p = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

fn actions_for(access: &Value, name: &str) -> Vec<String> {
    let mut v: Vec<String> = access
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["name"] == name)
        .flat_map(|a| {
            a["actions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_str().unwrap().to_owned())
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_sign_in_page_and_cli_passwords() {
    let g = world();
    let s = server(&g, "");
    // /login sends the browser to Gitee's authorize endpoint with state and PKCE, asking for the
    // scopes the rules need
    let st = start_login(&s, Some("//evil.example/steal")).await;
    let u = reqwest::Url::parse(&st.authorize).unwrap();
    assert_eq!(u.path(), "/oauth/authorize");
    let q: HashMap<String, String> = u.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], standin::CLIENT_ID);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["redirect_uri"], format!("{}/login/callback", s.url));
    assert_eq!(q["code_challenge_method"], "S256");
    assert!(q["state"].len() >= 32 && q["code_challenge"].len() >= 43);
    let scopes: Vec<&str> = q["scope"].split(' ').collect();
    for need in ["user_info", "projects", "groups", "enterprises"] {
        assert!(scopes.contains(&need), "scope {:?} lacks {need}", q["scope"]);
    }

    let cb = approve(&st.authorize, "alice", "alice-password").await;
    // a callback whose state was tampered with is refused, and so is one without the cookie
    let tampered = cb.replace(&format!("state={}", q["state"]), "state=forged");
    assert_ne!(tampered, cb);
    let r = callback(&s, &tampered, Some(&st.login_cookie)).await;
    assert_eq!(r.status(), 400);
    assert!(!set_cookies(&r).contains_key("regate_session"));
    let r = callback(&s, &cb, None).await;
    assert_eq!(r.status(), 400);
    assert!(!set_cookies(&r).contains_key("regate_session"));
    // a forged login cookie (state swapped in) does not verify either
    let forged = format!("{}x", st.login_cookie);
    assert_eq!(callback(&s, &cb, Some(&forged)).await.status(), 400);

    // the real callback: signed in, sent to "/" (never to the other site named in rd)
    let r = callback(&s, &cb, Some(&st.login_cookie)).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/");
    let c = set_cookies(&r);
    let (session, attrs) = c.get("regate_session").expect("session cookie").clone();
    assert!(
        attrs.contains("HttpOnly") && attrs.contains("SameSite=Lax") && attrs.contains("Path=/"),
        "{attrs}"
    );
    assert!(
        !attrs.contains("Secure"),
        "plain-HTTP regate must not mark cookies Secure"
    );
    assert!(!session.contains(ALICE_PAT));
    // the code is single-use: replaying the callback is refused by Gitee, and regate says so
    let r = callback(&s, &cb, Some(&st.login_cookie)).await;
    assert_eq!(r.status(), 403);
    assert!(!set_cookies(&r).contains_key("regate_session"));

    // a relative return path survives the round trip
    let st2 = start_login(&s, Some("/?from=test")).await;
    let cb2 = approve(&st2.authorize, "alice", "alice-password").await;
    let r = callback(&s, &cb2, Some(&st2.login_cookie)).await;
    assert_eq!(location(&r), "/?from=test");

    // the page: who, the docker login line, no passwords yet
    let (code, html) = page(&s, &session, "/").await;
    assert_eq!(code, 200);
    assert!(html.contains("<strong id=\"login\">alice</strong>"), "{html}");
    assert!(html.contains(&format!("docker login {} -u alice", s.host)), "{html}");
    assert!(html.contains("no-passwords"));
    // a tampered session cookie is no session
    let (_, anon) = page(&s, &format!("{session}A"), "/").await;
    assert!(anon.contains("Sign in with Gitee") && !anon.contains("id=\"login\""));

    // create a CLI password with the page's form (its CSRF token), then use it
    let csrf = between(&html, "name=\"csrf\" value=\"", "\"").to_owned();
    let r = client()
        .post(format!("{}/ui/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("description", "laptop"),
            ("repositories", "*"),
            ("actions", "pull,push"),
            ("days", "7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    let pw = between(&html, "id=\"new-password\">", "</pre>").to_owned();
    assert!(pw.starts_with("rg_"), "{pw}");
    // without the CSRF token the same form is refused
    let r = client()
        .post(format!("{}/ui/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .form(&[("description", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // the CLI password carries alice's Gitee permissions: write on team/app, nothing on
    // team/ops, pull on the public oss/lib, pull on shared/* through her org, push on her own
    let (code, access) = grant(
        &s,
        "alice",
        &pw,
        &[
            "repository:team/app:pull,push",
            "repository:team/ops:pull",
            "repository:oss/lib:pull,push",
            "repository:shared/base:pull",
            "repository:alice/tool:pull,push",
            "repository:acme/x:pull",
        ],
    )
    .await;
    assert_eq!(code, 200, "{access}");
    assert_eq!(actions_for(&access, "team/app"), ["pull", "push"]);
    assert!(actions_for(&access, "team/ops").is_empty());
    assert_eq!(
        actions_for(&access, "oss/lib"),
        ["pull"],
        "{access} {:?}",
        g.state.lock().unwrap().log
    );
    assert_eq!(actions_for(&access, "shared/base"), ["pull"]);
    assert_eq!(actions_for(&access, "alice/tool"), ["pull", "push"]);
    assert!(
        actions_for(&access, "acme/x").is_empty(),
        "alice is not in the acme enterprise"
    );

    // it is listed on the page and through the API with the session; the API refuses a
    // cookie-authenticated form post (cross-site forms cannot send JSON)
    let (_, html) = page(&s, &session, "/").await;
    assert!(
        html.contains("laptop") && !html.contains(&pw),
        "the page must not show the secret again"
    );
    let r = client()
        .get(format!("{}/api/v1/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let list: Value = r.json().await.unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .form(&[("repositories", "*")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .json(&serde_json::json!({"repositories": ["team/app"], "actions": ["pull"], "expires_in": 600}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let minted: Value = r.json().await.unwrap();
    let pull_only = minted["token"].as_str().unwrap();
    let (_, access) = grant(&s, "alice", pull_only, &["repository:team/app:pull,push"]).await;
    assert_eq!(actions_for(&access, "team/app"), ["pull"]);

    // nginx auth_request with the session cookie
    let na = |uri: &str, method: &str| {
        client()
            .get(format!("{}/nginx/auth", s.url))
            .header("cookie", format!("regate_session={session}"))
            .header("x-original-uri", uri)
            .header("x-original-method", method)
            .send()
    };
    let r = na("/v2/team/app/manifests/latest", "PUT").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-request-user"], "alice");
    assert_eq!(r.headers()["x-auth-request-email"], "alice@example.com");
    assert_eq!(na("/v2/team/ops/manifests/latest", "GET").await.unwrap().status(), 403);
    // a session cookie is not a credential for /v2/ itself
    let r = client()
        .get(format!("{}/v2/team/app/tags/list", s.url))
        .header("cookie", format!("regate_session={session}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // revoke from the page; sign out clears the cookie
    let (_, html) = page(&s, &session, "/").await;
    let id = list[0]["id"].as_str().unwrap();
    let r = client()
        .post(format!("{}/ui/tokens/revoke", s.url))
        .header("cookie", format!("regate_session={session}"))
        .form(&[("csrf", csrf.as_str()), ("id", id)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "{html}");
    assert_eq!(grant(&s, "alice", &pw, &["repository:team/app:pull"]).await.0, 401);
    let r = client()
        .post(format!("{}/logout", s.url))
        .header("cookie", format!("regate_session={session}"))
        .send()
        .await
        .unwrap();
    let c = set_cookies(&r);
    assert_eq!(c["regate_session"].0, "");
    assert!(c["regate_session"].1.contains("Max-Age=0"));
    // nothing secret in the logs
    let logs = s.logs();
    for secret in [pw.as_str(), pull_only, session.as_str(), standin::CLIENT_SECRET] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_with_personal_access_token_mirrors_permissions() {
    let g = world();
    let s = server(&g, "");
    // docker login: GET /token with Basic, no scope, offline_token -> refresh token
    let r = client()
        .get(format!("{}/token", s.url))
        .query(&[("service", "x"), ("offline_token", "true"), ("client_id", "docker")])
        .basic_auth("alice", Some(ALICE_PAT))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let rt = v["refresh_token"].as_str().unwrap().to_owned();
    // later pulls and pushes with the identity token get what Gitee says
    let r = client()
        .post(format!("{}/token", s.url))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt),
            ("service", "x"),
            ("client_id", "docker"),
            ("scope", "repository:team/app:pull,push"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        actions_for(&claims(v["access_token"].as_str().unwrap())["access"], "team/app"),
        ["pull", "push"]
    );

    // bob: read on team/app, admin on team/ops (delete too), enterprise member
    let (code, access) = grant(
        &s,
        "bob",
        BOB_PAT,
        &[
            "repository:team/app:pull,push",
            "repository:team/ops:pull,push,delete",
            "repository:acme/x:pull",
        ],
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(actions_for(&access, "team/app"), ["pull"]);
    assert_eq!(actions_for(&access, "team/ops"), ["delete", "pull", "push"]);
    assert_eq!(actions_for(&access, "acme/x"), ["pull"]);

    // permissions follow Gitee (after the cache's lifetime: here a fresh repository)
    g.set_permission("team", "fresh", "bob", Some("write"));
    let (_, access) = grant(&s, "bob", BOB_PAT, &["repository:team/fresh:pull,push"]).await;
    assert_eq!(actions_for(&access, "team/fresh"), ["pull", "push"]);

    // someone else's token under my name, a wrong token, and the account password (password
    // grant is off) are all refused with docker's error shape
    for (u, p) in [
        ("bob", ALICE_PAT),
        ("alice", "ffffffffffffffffffffffffffffffff"),
        ("alice", "alice-password"),
    ] {
        let (code, v) = grant(&s, u, p, &[]).await;
        assert_eq!(code, 401, "{u}:{p}");
        assert!(v["details"].as_str().unwrap().contains("incorrect"), "{v}");
    }

    // a burst of 20 logins with one token costs at most a couple of Gitee calls
    let before = g.calls("GET /api/v5/user");
    let perm_before = g.calls("/collaborators/");
    let c = client();
    let mut jobs = Vec::new();
    for _ in 0..20 {
        let c = c.clone();
        let url = format!("{}/token", s.url);
        jobs.push(tokio::spawn(async move {
            c.get(url)
                .query(&[("service", "x"), ("scope", "repository:oss/lib:pull")])
                .basic_auth("Bob", Some(BOB_PAT))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for j in jobs {
        assert_eq!(j.await.unwrap(), 200);
    }
    let user_calls = g.calls("GET /api/v5/user") - before;
    let perm_calls = g.calls("/collaborators/") - perm_before;
    assert!(user_calls <= 2, "{user_calls} /user calls for 20 logins");
    assert!(perm_calls <= 2, "{perm_calls} permission calls for 20 logins");

    // the CI flow: a runner with a PAT mints a short-lived, scoped CLI password
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .basic_auth("bob", Some(BOB_PAT))
        .json(&serde_json::json!({"repositories": ["team/ops"], "actions": ["pull", "push"], "expires_in": 900}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let ci = v["token"].as_str().unwrap();
    let (_, access) = grant(
        &s,
        "bob",
        ci,
        &["repository:team/ops:pull,push,delete", "repository:team/app:pull"],
    )
    .await;
    assert_eq!(actions_for(&access, "team/ops"), ["pull", "push"]);
    assert!(
        actions_for(&access, "team/app").is_empty(),
        "outside the CLI password's repositories"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_grant_when_enabled() {
    let g = world();
    let s = server(&g, "    password_grant: true\n");
    let (code, access) = grant(&s, "alice", "alice-password", &["repository:team/app:pull,push"]).await;
    assert_eq!(code, 200, "{access}");
    assert_eq!(actions_for(&access, "team/app"), ["pull", "push"]);
    assert!(g.calls("POST /oauth/token password") >= 1);
    // the e-mail address works as the login too, and names the same account
    let r = client()
        .get(format!("{}/token", s.url))
        .query(&[("service", "x")])
        .basic_auth("alice@example.com", Some("alice-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(claims(v["token"].as_str().unwrap())["sub"], "alice");
    assert_eq!(grant(&s, "alice", "wrong-password", &[]).await.0, 401);
    assert_eq!(grant(&s, "bob", "alice-password", &[]).await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitee_down_or_slow_is_bounded_and_said() {
    let g = world();
    let s = server(&g, "    timeout: 1\n");
    // a CLI password minted while Gitee was up
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .basic_auth("alice", Some(ALICE_PAT))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let pw = v["token"].as_str().unwrap().to_owned();

    g.set_down(true);
    // rules that need no Gitee answer keep working
    let (code, access) = grant(&s, "alice", &pw, &["repository:alice/tool:pull,push"]).await;
    assert_eq!(code, 200, "{access}");
    assert_eq!(actions_for(&access, "alice/tool"), ["pull", "push"]);
    // a Gitee-mirrored permission cannot be checked: a clear 503, not a silent denial
    let (code, v) = grant(&s, "alice", &pw, &["repository:team/app:pull"]).await;
    assert_eq!(code, 503, "{v}");
    assert!(v["details"].as_str().unwrap().contains("Gitee is unreachable"), "{v}");
    // a new login with a token Gitee cannot check
    let (code, v) = grant(&s, "bob", BOB_PAT, &[]).await;
    assert_eq!(code, 503, "{v}");

    // slow: answers within the configured timeout, not Gitee's delay
    g.set_down(false);
    g.set_delay(Duration::from_secs(8));
    let t = Instant::now();
    let (code, _) = grant(&s, "alice", &pw, &["repository:team/fresh:pull"]).await;
    assert_eq!(code, 503);
    assert!(t.elapsed() < Duration::from_secs(4), "took {:?}", t.elapsed());
    g.set_delay(Duration::ZERO);
    let (code, access) = grant(&s, "alice", &pw, &["repository:team/fresh:pull"]).await;
    assert_eq!(code, 200);
    assert_eq!(actions_for(&access, "team/fresh"), ["pull"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_gitee_tokens_are_refreshed_server_side() {
    let g = world();
    g.set_expires_in(3);
    let s = server(&g, "");
    let session = sign_in(&s, "alice", "alice-password").await;
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .header("cookie", format!("regate_session={session}"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let pw = v["token"].as_str().unwrap().to_owned();
    assert_eq!(g.calls("refresh_token"), 0);
    // Gitee's token expires; regate refreshes it with the refresh token it kept
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let (code, access) = grant(&s, "alice", &pw, &["repository:team/app:pull"]).await;
    assert_eq!(code, 200);
    assert_eq!(actions_for(&access, "team/app"), ["pull"]);
    assert_eq!(
        g.calls("POST /oauth/token refresh_token"),
        1,
        "{:?}",
        g.state.lock().unwrap().log
    );
    // the refreshed token was stored: a later lookup needs no new refresh
    let (_, access) = grant(&s, "alice", &pw, &["repository:team/fresh:pull"]).await;
    assert_eq!(actions_for(&access, "team/fresh"), ["pull"]);
    assert_eq!(g.calls("refresh_token"), 1);
    // and the stored token is not readable in the data directory
    let mut found = false;
    for e in walk(&s.data()) {
        let b = std::fs::read(&e).unwrap();
        let text = String::from_utf8_lossy(&b);
        assert!(!text.contains(ALICE_PAT));
        if e.to_string_lossy().contains("gitee-tokens") {
            found = true;
        }
    }
    assert!(found, "no sealed token record in storage");
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_account_of_the_same_name_wins() {
    let g = world();
    let dir = tempfile::tempdir().unwrap();
    let ht = common::htpasswd(dir.path(), &[("alice", "local-pw")]);
    let s = Server::start_in(
        dir,
        &format!(
            "auth:\n  htpasswd: {}\n{}access:\n  - {{ gitee: repo_permission }}\n  - {{ repository: \"${{account}}/*\", actions: [pull, push] }}\n",
            ht.display(),
            g.config("")
        ),
    );
    g.set_redirect_uri(&format!("{}/login/callback", s.url));
    assert_eq!(grant(&s, "alice", "local-pw", &[]).await.0, 200);
    // alice's Gitee token does not sign in as the local alice
    assert_eq!(grant(&s, "alice", ALICE_PAT, &[]).await.0, 401);
    // nor does the browser flow
    let st = start_login(&s, None).await;
    let cb = approve(&st.authorize, "alice", "alice-password").await;
    let r = callback(&s, &cb, Some(&st.login_cookie)).await;
    assert_eq!(r.status(), 403);
    assert!(!set_cookies(&r).contains_key("regate_session"));
    // bob (Gitee only) is fine
    assert_eq!(grant(&s, "bob", BOB_PAT, &[]).await.0, 200);
}

fn run(cmd: &mut Command, stdin: Option<&str>) -> (bool, String) {
    use std::io::Write as _;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(i) = stdin {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_and_docker_push_with_gitee_credentials() {
    let g = world();
    let s = server(&g, "");
    let work = tempfile::tempdir().unwrap();
    // a CLI password minted with the PAT
    let r = client()
        .post(format!("{}/api/v1/tokens", s.url))
        .basic_auth("alice", Some(ALICE_PAT))
        .json(&serde_json::json!({"repositories": ["team/*"]}))
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let cli = v["token"].as_str().unwrap().to_owned();
    if common::have("skopeo") {
        let layout = work.path().join("img");
        let (ok, out) = run(
            Command::new("python3")
                .arg(common::mkimage())
                .arg(&layout)
                .arg("v1")
                .arg("0.2")
                .arg("0.1"),
            None,
        );
        assert!(ok, "{out}");
        let src = format!("oci:{}:v1", layout.display());
        for (creds, dest, expect) in [
            (format!("alice:{ALICE_PAT}"), "team/app:pat", true),
            (format!("alice:{cli}"), "team/app:cli", true),
            // bob may only read team/app on Gitee
            (format!("bob:{BOB_PAT}"), "team/app:bob", false),
        ] {
            let (ok, out) = run(
                Command::new("skopeo").args([
                    "--insecure-policy",
                    "copy",
                    "--dest-tls-verify=false",
                    "--dest-creds",
                    &creds,
                    &src,
                    &format!("docker://{}/{dest}", s.host),
                ]),
                None,
            );
            assert_eq!(ok, expect, "{dest}: {out}");
        }
        // bob can read what alice pushed
        let (ok, out) = run(
            Command::new("skopeo").args([
                "--insecure-policy",
                "inspect",
                "--tls-verify=false",
                "--creds",
                &format!("bob:{BOB_PAT}"),
                &format!("docker://{}/team/app:pat", s.host),
            ]),
            None,
        );
        assert!(ok, "{out}");
    } else {
        println!("skipping the skopeo part: skopeo is not installed");
    }

    let engine = Command::new("docker")
        .arg("info")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !engine {
        println!("skipping the docker part: no Docker engine");
        return;
    }
    let cfg = work.path().join("docker");
    std::fs::create_dir_all(&cfg).unwrap();
    let docker =
        |args: &[&str], stdin: Option<&str>| run(Command::new("docker").env("DOCKER_CONFIG", &cfg).args(args), stdin);
    let (ok, out) = docker(
        &["login", &s.host, "-u", "alice", "--password-stdin"],
        Some(&format!("{ALICE_PAT}\n")),
    );
    assert!(ok, "docker login with a Gitee token: {out}");
    let conf = std::fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(!conf.contains(ALICE_PAT), "docker stored the Gitee token");
    let root = work.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), format!("gitee {}\n", s.url)).unwrap();
    let tar = work.path().join("r.tar");
    assert!(
        run(
            Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg("."),
            None
        )
        .0
    );
    let tag = format!("{}/team/app:docker", s.host);
    let (ok, out) = docker(&["import", tar.to_str().unwrap(), &tag], None);
    assert!(ok, "{out}");
    let (ok, out) = docker(&["push", &tag], None);
    let _ = docker(&["rmi", "-f", &tag], None);
    assert!(ok, "docker push with Gitee credentials: {out}");
    let (ok, out) = docker(&["pull", &tag], None);
    let _ = docker(&["rmi", "-f", &tag], None);
    assert!(ok, "docker pull: {out}");
}

/// The real browser flow in headless Chromium (Debian's chromium + chromedriver, selenium from
/// PyPI): sign in on the stand-in's page, land on regate's page, create a CLI password; a
/// screenshot of the signed-in page is kept in target/test-artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_sign_in() {
    let have_driver = common::have("chromedriver") && (common::have("chromium") || common::have("chromium-browser"));
    let have_selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !(have_driver && have_selenium) {
        println!("skipping: chromium, chromedriver or selenium is not installed");
        return;
    }
    let g = world();
    let s = server(&g, "");
    push_image(&s, ("alice", ALICE_PAT), "team/app", "v1", "amd64").await;
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("gitee-signed-in.png");
    let _ = std::fs::remove_file(&shot);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
        .join("gitee_login.py");
    let url = s.url.clone();
    let shot2 = shot.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(
            Command::new("python3")
                .arg(script)
                .arg(&url)
                .arg("alice")
                .arg("alice-password")
                .arg(&shot2),
            None,
        )
    })
    .await
    .unwrap();
    assert!(ok, "browser flow failed: {out}");
    let pw = out
        .lines()
        .find_map(|l| l.strip_prefix("CLI_PASSWORD="))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "no screenshot");
    let (code, access) = grant(&s, "alice", pw, &["repository:team/app:pull,push"]).await;
    assert_eq!(code, 200);
    assert_eq!(actions_for(&access, "team/app"), ["pull", "push"]);
}

/// Pushes a one-layer image (config naming `arch`) with Basic credentials; returns its digest.
async fn push_image(s: &Server, creds: (&str, &str), repo: &str, tag: &str, arch: &str) -> String {
    let c = client();
    let config = format!(r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#);
    let layer = format!("layer of {repo}:{tag}:{arch}").into_bytes();
    for b in [config.as_bytes().to_vec(), layer.clone()] {
        let r = c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                s.url,
                common::digest(&b)
            ))
            .basic_auth(creds.0, Some(creds.1))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": common::digest(config.as_bytes()), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": common::digest(&layer), "size": layer.len()}],
    })
    .to_string();
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", s.url))
        .basic_auth(creds.0, Some(creds.1))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(m.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    common::digest(m.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_pages_list_what_you_may_pull_with_tags() {
    let g = world();
    let s = server(&g, "");
    let alice = ("alice", ALICE_PAT);
    let amd = push_image(&s, alice, "team/app", "v1", "amd64").await;
    let arm = push_image(&s, alice, "team/app", "v1-arm64", "arm64").await;
    push_image(&s, alice, "alice/tool", "latest", "amd64").await;
    // a multi-platform index over the two images
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": amd, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": arm, "size": 1, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    })
    .to_string();
    let r = client()
        .put(format!("{}/v2/team/app/manifests/multi", s.url))
        .basic_auth("alice", Some(ALICE_PAT))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // 10,000 more tags of the same image, written the way the registry lays them out
    let repo_dir = s
        .data()
        .join("docker/registry/v2/repositories/team/app/_manifests/tags");
    for i in 0..10_000 {
        let d = repo_dir.join(format!("build-{i:05}"));
        std::fs::create_dir_all(d.join("current")).unwrap();
        std::fs::write(d.join("current/link"), &amd).unwrap();
    }

    let bob = sign_in(&s, "bob", "bob-password").await;
    let (code, html) = page(&s, &bob, "/ui/repos").await;
    assert_eq!(code, 200);
    assert!(html.contains("href=\"/ui/repos/team/app\""), "{html}");
    assert!(!html.contains("alice/tool"), "bob may not pull alice/tool: {html}");
    assert!(!html.contains("id=\"robots\""), "bob is no admin");
    // another user's private repository is not even described
    assert_eq!(page(&s, &bob, "/ui/repos/alice/tool").await.0, 404);

    let t = Instant::now();
    let (code, html) = page(&s, &bob, "/ui/repos/team/app").await;
    println!("first page of 10,003 tags in {:?}", t.elapsed());
    assert_eq!(code, 200);
    assert_eq!(html.matches("<tr><td>").count(), 100, "one page of 100 tags");
    assert!(html.contains(&format!("docker pull {}/team/app:build-00000", s.host)));
    assert!(html.contains("linux/amd64"));
    let next = between(&html, "id=\"next\" href=\"", "\"").to_owned();
    assert_eq!(next, "/ui/repos/team/app?last=build%2D00099");
    let (_, html2) = page(&s, &bob, &next).await;
    assert!(html2.contains("<tr><td>build-00100</td>") && !html2.contains("<tr><td>build-00099</td>"));
    // the last page: the index with both platforms, the arm64 image, no next link
    let (_, last) = page(&s, &bob, "/ui/repos/team/app?last=build-09999").await;
    assert_eq!(last.matches("<tr><td>").count(), 3, "{last}");
    assert!(last.contains("linux/amd64, linux/arm64/v8"), "{last}");
    assert!(last.contains("linux/arm64"));
    assert!(!last.contains("id=\"next\""));
    // alice may list the catalog: she is an administrator and sees the robot accounts
    let out = common::regate()
        .args(["robot", "add", "ci", "--repo", "team/*", "--config"])
        .arg(s.dir.path().join("regate.yaml"))
        .current_dir(s.dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let al = sign_in(&s, "alice", "alice-password").await;
    let (_, html) = page(&s, &al, "/ui/repos").await;
    assert!(html.contains("id=\"robots\"") && html.contains("robot$ci"), "{html}");
    assert!(html.contains("alice/tool") && html.contains("team/app"));
    // without a session the pages send you to sign in, and come back
    let r = client()
        .get(format!("{}/ui/repos/team/app", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), "/login?rd=%2Fui%2Frepos%2Fteam%2Fapp");
}
