//! A stand-in for Gitee (gitee.com cannot be reached from tests) that follows Gitee's documented
//! OAuth2 and API v5 behaviour: `/oauth/authorize` (a sign-in form, then a redirect with a
//! single-use code), `/oauth/token` (authorization_code with optional PKCE, password and
//! refresh_token grants; client credentials as parameters; `{"error","error_description"}`
//! errors), and under `/api/v5`: `/user`, `/user/orgs`, `/user/memberships/orgs/{org}`,
//! `/enterprises/{ent}/members/{user}`, `/repos/{owner}/{repo}` and
//! `/repos/{owner}/{repo}/collaborators/{user}/permission`, with `access_token` as a query
//! parameter, scope checks (`projects` for private repositories, `groups`, `enterprises`),
//! token expiry, and a User-Agent required on every request.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use sha2::Digest as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const CLIENT_ID: &str = "regate-client-id";
pub const CLIENT_SECRET: &str = "regate-client-secret";

#[derive(Clone, Debug)]
pub struct User {
    pub id: u64,
    pub login: String,
    pub name: String,
    pub email: Option<String>,
    pub password: String,
    /// personal access tokens (they carry every scope and do not expire)
    pub pats: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Repo {
    pub owner: String,
    pub name: String,
    pub public: bool,
    /// login -> admin | write | read
    pub collaborators: HashMap<String, String>,
}

#[derive(Clone, Debug)]
struct Code {
    login: String,
    redirect_uri: String,
    scope: String,
    challenge: Option<String>,
    issued: Instant,
}

#[derive(Clone, Debug)]
struct Token {
    login: String,
    scope: String,
    expires: Option<Instant>,
}

#[derive(Default)]
pub struct State {
    pub users: Vec<User>,
    pub repos: Vec<Repo>,
    /// org path -> member logins
    pub orgs: HashMap<String, Vec<String>>,
    /// enterprise path -> member logins
    pub enterprises: HashMap<String, Vec<String>>,
    pub redirect_uri: String,
    /// lifetime of access tokens issued by /oauth/token
    pub expires_in: u64,
    codes: HashMap<String, Code>,
    tokens: HashMap<String, Token>,
    refresh: HashMap<String, (String, String)>,
    /// every request as "METHOD path" (without the query), in order
    pub log: Vec<String>,
    /// answer every request with 503
    pub down: bool,
    /// wait this long before answering
    pub delay: Duration,
}

pub struct Gitee {
    pub url: String,
    pub state: Arc<Mutex<State>>,
}

fn rnd() -> String {
    hex::encode(rand::random::<[u8; 20]>())
}

fn json(code: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

fn html(body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .header("content-type", "text/html; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn oauth_error(code: StatusCode, err: &str, desc: &str) -> Response<Full<Bytes>> {
    json(code, serde_json::json!({"error": err, "error_description": desc}))
}

fn api_error(code: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    json(code, serde_json::json!({"message": msg}))
}

fn pairs(s: &str) -> HashMap<String, String> {
    form_urlencoded::parse(s.as_bytes()).into_owned().collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;")
}

impl Gitee {
    /// Starts the stand-in on 127.0.0.1:0 on its own thread and runtime (usable from sync and
    /// async tests alike); it serves until the test process ends.
    pub fn start(users: Vec<User>, repos: Vec<Repo>) -> Gitee {
        let state = Arc::new(Mutex::new(State {
            users,
            repos,
            expires_in: 86_400,
            ..Default::default()
        }));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = std_listener.local_addr().unwrap();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, std::convert::Infallible>(handle(st, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                            .await;
                    });
                }
            });
        });
        Gitee {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn api_url(&self) -> String {
        format!("{}/api/v5", self.url)
    }

    /// The `auth.gitee` section for a regate config.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "  gitee:\n    base_url: {}\n    api_url: {}\n    client_id: {CLIENT_ID}\n    client_secret: {CLIENT_SECRET}\n{extra}",
            self.url,
            self.api_url()
        )
    }

    pub fn set_redirect_uri(&self, u: &str) {
        self.state.lock().unwrap().redirect_uri = u.to_owned();
    }

    pub fn calls(&self, what: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.contains(what))
            .count()
    }

    pub fn total_calls(&self) -> usize {
        self.state.lock().unwrap().log.len()
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }

    pub fn set_delay(&self, d: Duration) {
        self.state.lock().unwrap().delay = d;
    }

    pub fn set_expires_in(&self, s: u64) {
        self.state.lock().unwrap().expires_in = s;
    }

    pub fn set_permission(&self, owner: &str, name: &str, login: &str, perm: Option<&str>) {
        let mut st = self.state.lock().unwrap();
        let r = st
            .repos
            .iter_mut()
            .find(|r| r.owner == owner && r.name == name)
            .unwrap();
        match perm {
            Some(p) => r.collaborators.insert(login.to_owned(), p.to_owned()),
            None => r.collaborators.remove(login),
        };
    }
}

pub fn user(id: u64, login: &str, password: &str, pat: &str) -> User {
    User {
        id,
        login: login.to_owned(),
        name: format!("{login} name"),
        email: Some(format!("{login}@example.com")),
        password: password.to_owned(),
        pats: vec![pat.to_owned()],
    }
}

pub fn repo(owner: &str, name: &str, public: bool, collaborators: &[(&str, &str)]) -> Repo {
    Repo {
        owner: owner.to_owned(),
        name: name.to_owned(),
        public,
        collaborators: collaborators
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    }
}

fn issue(st: &mut State, login: &str, scope: &str) -> serde_json::Value {
    let access = rnd();
    let refresh = rnd();
    st.tokens.insert(
        access.clone(),
        Token {
            login: login.to_owned(),
            scope: scope.to_owned(),
            expires: Some(Instant::now() + Duration::from_secs(st.expires_in)),
        },
    );
    st.refresh.insert(refresh.clone(), (login.to_owned(), scope.to_owned()));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    serde_json::json!({
        "access_token": access,
        "token_type": "bearer",
        "expires_in": st.expires_in,
        "refresh_token": refresh,
        "scope": scope,
        "created_at": now,
    })
}

async fn handle(st: Arc<Mutex<State>>, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let mut q = pairs(parts.uri.query().unwrap_or(""));
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.starts_with("application/x-www-form-urlencoded") {
        q.extend(pairs(std::str::from_utf8(&body).unwrap_or("")));
    }
    let delay = {
        let mut s = st.lock().unwrap();
        let grant = q.get("grant_type").map(|g| format!(" {g}")).unwrap_or_default();
        s.log.push(format!("{} {path}{grant}", parts.method));
        if s.down {
            return api_error(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable");
        }
        s.delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if parts.headers.get("user-agent").is_none() {
        return api_error(StatusCode::FORBIDDEN, "403 Forbidden: a User-Agent is required");
    }
    let mut s = st.lock().unwrap();
    let method = parts.method.as_str();
    match (method, path.as_str()) {
        ("GET", "/oauth/authorize") => {
            if q.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "unknown client_id");
            }
            if q.get("response_type").map(String::as_str) != Some("code") {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_response_type",
                    "response_type must be code",
                );
            }
            if q.get("redirect_uri") != Some(&s.redirect_uri) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_redirect_uri",
                    "redirect_uri does not match the application",
                );
            }
            let hidden: String = [
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "code_challenge",
                "code_challenge_method",
            ]
            .iter()
            .filter_map(|k| {
                q.get(*k)
                    .map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
            })
            .collect();
            html(format!(
                "<!doctype html><title>Gitee sign in</title><form method=\"post\" action=\"/oauth/authorize\">{hidden}\
<input id=\"user_login\" name=\"login\"><input id=\"user_password\" type=\"password\" name=\"password\">\
<button id=\"authorize\">Authorize</button></form>"
            ))
        }
        ("POST", "/oauth/authorize") => {
            let login = q.get("login").cloned().unwrap_or_default();
            let ok = s.users.iter().any(|u| {
                (u.login == login || u.email.as_deref() == Some(&login)) && Some(&u.password) == q.get("password")
            });
            if !ok {
                return html("<p id=\"error\">wrong login or password</p>".into());
            }
            let login = s
                .users
                .iter()
                .find(|u| u.login == login || u.email.as_deref() == Some(&login))
                .unwrap()
                .login
                .clone();
            let code = rnd();
            let redirect_uri = q.get("redirect_uri").cloned().unwrap_or_default();
            s.codes.insert(
                code.clone(),
                Code {
                    login,
                    redirect_uri: redirect_uri.clone(),
                    scope: q.get("scope").cloned().unwrap_or_else(|| "user_info".into()),
                    challenge: q.get("code_challenge").cloned(),
                    issued: Instant::now(),
                },
            );
            let loc = format!(
                "{redirect_uri}?{}",
                form_urlencoded::Serializer::new(String::new())
                    .append_pair("code", &code)
                    .append_pair("state", q.get("state").map(String::as_str).unwrap_or(""))
                    .finish()
            );
            Response::builder()
                .status(StatusCode::FOUND)
                .header("location", loc)
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        ("POST", "/oauth/token") => {
            if q.get("client_id").map(String::as_str) != Some(CLIENT_ID)
                || q.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
            {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "client authentication failed",
                );
            }
            match q.get("grant_type").map(String::as_str) {
                Some("authorization_code") => {
                    let Some(code) = q.get("code").and_then(|c| s.codes.remove(c)) else {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "the authorization code is invalid or was used",
                        );
                    };
                    if code.issued.elapsed() > Duration::from_secs(600) {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "the authorization code expired",
                        );
                    }
                    if q.get("redirect_uri") != Some(&code.redirect_uri) {
                        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_grant", "redirect_uri mismatch");
                    }
                    if let Some(ch) = &code.challenge {
                        let v = q.get("code_verifier").cloned().unwrap_or_default();
                        let calc =
                            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(v.as_bytes()));
                        if &calc != ch {
                            return oauth_error(
                                StatusCode::UNAUTHORIZED,
                                "invalid_grant",
                                "code_verifier does not match",
                            );
                        }
                    }
                    let v = issue(&mut s, &code.login, &code.scope);
                    json(StatusCode::OK, v)
                }
                Some("password") => {
                    let u = q.get("username").cloned().unwrap_or_default();
                    let found = s
                        .users
                        .iter()
                        .find(|x| {
                            (x.login == u || x.email.as_deref() == Some(&u)) && Some(&x.password) == q.get("password")
                        })
                        .map(|x| x.login.clone());
                    match found {
                        Some(login) => {
                            let scope = q.get("scope").cloned().unwrap_or_else(|| "user_info".into());
                            let v = issue(&mut s, &login, &scope);
                            json(StatusCode::OK, v)
                        }
                        None => oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "the username or password is incorrect",
                        ),
                    }
                }
                Some("refresh_token") => {
                    let Some((login, scope)) = q.get("refresh_token").and_then(|r| s.refresh.get(r)).cloned() else {
                        return oauth_error(
                            StatusCode::UNAUTHORIZED,
                            "invalid_grant",
                            "the refresh token is invalid",
                        );
                    };
                    let v = issue(&mut s, &login, &scope);
                    json(StatusCode::OK, v)
                }
                _ => oauth_error(
                    StatusCode::BAD_REQUEST,
                    "unsupported_grant_type",
                    "unsupported grant_type",
                ),
            }
        }
        (_, p) if p.starts_with("/api/v5/") => {
            let tok = q.get("access_token").cloned().unwrap_or_default();
            let who = if let Some(u) = s.users.iter().find(|u| u.pats.contains(&tok)) {
                Some((u.clone(), "user_info projects groups enterprises".to_owned()))
            } else {
                match s.tokens.get(&tok) {
                    Some(t) if t.expires.is_none_or(|e| e > Instant::now()) => {
                        let scope = t.scope.clone();
                        s.users.iter().find(|u| u.login == t.login).map(|u| (u.clone(), scope))
                    }
                    _ => None,
                }
            };
            let Some((me, scope)) = who else {
                return api_error(
                    StatusCode::UNAUTHORIZED,
                    "401 Unauthorized: Access token does not exist",
                );
            };
            let has = |x: &str| scope.split([' ', ',']).any(|s| s == x);
            let seg: Vec<&str> = p.trim_start_matches("/api/v5/").split('/').collect();
            match seg.as_slice() {
                ["user"] => json(
                    StatusCode::OK,
                    serde_json::json!({"id": me.id, "login": me.login, "name": me.name, "email": me.email,
                        "avatar_url": "", "html_url": format!("https://gitee.example/{}", me.login), "type": "User"}),
                ),
                ["user", "orgs"] => {
                    if !has("groups") {
                        return api_error(StatusCode::FORBIDDEN, "403 Forbidden: insufficient scope");
                    }
                    let list: Vec<_> = s
                        .orgs
                        .iter()
                        .filter(|(_, m)| m.contains(&me.login))
                        .map(|(o, _)| serde_json::json!({"login": o, "name": o}))
                        .collect();
                    json(StatusCode::OK, serde_json::json!(list))
                }
                ["user", "memberships", "orgs", org] => {
                    if !has("groups") {
                        return api_error(StatusCode::FORBIDDEN, "403 Forbidden: insufficient scope");
                    }
                    match s.orgs.get(*org) {
                        Some(m) if m.contains(&me.login) => json(
                            StatusCode::OK,
                            serde_json::json!({"active": true, "role": "member", "organization": {"login": org}}),
                        ),
                        _ => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
                    }
                }
                ["enterprises", ent, "members", u] => {
                    if !has("enterprises") {
                        return api_error(StatusCode::FORBIDDEN, "403 Forbidden: insufficient scope");
                    }
                    match s.enterprises.get(*ent) {
                        Some(m) if m.iter().any(|x| x == u) => json(
                            StatusCode::OK,
                            serde_json::json!({"role": "member", "user": {"login": u}}),
                        ),
                        _ => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
                    }
                }
                ["repos", owner, name, rest @ ..] => {
                    let Some(r) = s.repos.iter().find(|r| r.owner == *owner && r.name == *name).cloned() else {
                        return api_error(StatusCode::NOT_FOUND, "404 Not Found Project");
                    };
                    let member = r.owner == me.login || r.collaborators.contains_key(&me.login);
                    // private repositories are invisible without the projects scope or membership
                    if !(r.public || (member && has("projects"))) {
                        return api_error(StatusCode::NOT_FOUND, "404 Not Found Project");
                    }
                    match rest {
                        [] => json(
                            StatusCode::OK,
                            serde_json::json!({"id": 1, "full_name": format!("{owner}/{name}"), "path": name, "name": name,
                                "public": r.public, "private": !r.public, "internal": false, "owner": {"login": owner}}),
                        ),
                        ["collaborators", u, "permission"] => {
                            let perm = if *u == r.owner {
                                Some("admin".to_owned())
                            } else {
                                r.collaborators.get(*u).cloned()
                            };
                            match perm {
                                Some(p) => json(StatusCode::OK, serde_json::json!({"login": u, "permission": p})),
                                None => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
                            }
                        }
                        _ => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
                    }
                }
                _ => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
            }
        }
        _ => api_error(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}
