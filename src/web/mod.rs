//! The browser side: `/login` → Gitee → `/login/callback` (state bound to a signed cookie, PKCE),
//! a signed session cookie, `/logout`, and one plain page at `/` that shows who you are, your CLI
//! passwords (create, revoke) and the exact `docker login` line; `/ui/repos` lists what you may
//! pull and each repository's tags. Local accounts (htpasswd, the generated admin) sign in with
//! their username and password on the same pages, with or without Gitee: their session cookie is
//! a token signed by regate's token key whose only access entry names the session (no registry
//! access), so it needs no key of its own and every replica accepts it. Server-rendered; the only
//! script is the copy button's, allowed by its hash.

use crate::auth::credentials::{Identity, Source};
use crate::auth::stored::{Kind, Mint, MintError, Record, MAX_DESCRIPTION};
use crate::gitee::Gitee;
use crate::http::html::{esc, page};
use crate::http::{self, query_get, query_pairs, ApiError, BodyReader, Resp};
use crate::types::scope::Action;
use ::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use session::{Session, Signer, SESSION_COOKIE};
use std::fmt::Write as _;
use std::time::Duration;

mod admin;
mod local;
mod repos;
pub mod session;
mod signin;

pub use local::local_identity;
use local::{User, LOCAL_COOKIE};

const LOGIN_TTL: u64 = 600;

/// A block of text to copy (a secret, a command) with its copy button.
fn copyable(id: &str, class: &str, text: &str) -> String {
    format!(
        "<div class=\"copy\"><pre class=\"{class}\" id=\"{id}\">{}</pre><button type=\"button\" data-copy=\"{id}\" hidden>Copy</button></div>",
        esc(text)
    )
}

pub struct Web<'a> {
    pub gitee: Option<&'a Gitee>,
    /// Signs the session and sign-in cookies.
    pub signer: &'a Signer,
    pub tokens: &'a crate::auth::endpoint::TokenService,
    pub registry: &'a crate::registry::Registry,
    pub public_url: &'a str,
    pub ip: std::net::IpAddr,
    /// Replication rules, for the administrators' page.
    pub replicator: Option<&'a crate::replicate::Replicator>,
    /// Trusted images: scan summaries on the tags page.
    pub trust: Option<&'a crate::trust::Trust>,
}

/// The browser's session, if its cookie is present, authentic and unexpired.
pub fn session_of(signer: &Signer, headers: &HeaderMap) -> Option<Session> {
    let c = session::cookie(headers, SESSION_COOKIE)?;
    let s: Session = signer.verify("session", c)?;
    (s.exp > crate::util::now_secs()).then_some(s)
}

pub fn identity_of(s: &Session) -> Identity {
    Identity {
        account: s.login.clone(),
        groups: s.groups.clone(),
        source: Source::Gitee,
        fingerprint: s.id.to_string(),
        limit: None,
        gitee: true,
        oidc: None,
    }
}

fn urlenc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn credentials_down() -> ApiError {
    ApiError::html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "Credential storage is not reachable; retry.",
    )
}

fn message(code: StatusCode, title: &str, text: &str) -> Resp {
    ApiError::html(code, title, text).into_response()
}

fn redirect(to: &str) -> Resp {
    let mut r = http::status(StatusCode::FOUND);
    http::set(&mut r, header::LOCATION, to);
    http::set(&mut r, header::CACHE_CONTROL, "no-store");
    r
}

fn add_cookie(r: &mut Resp, c: &str) {
    if let Ok(v) = HeaderValue::from_str(c) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

impl Web<'_> {
    fn secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    fn host(&self) -> &str {
        self.public_url.split("://").nth(1).unwrap_or(self.public_url)
    }

    pub fn handles(path: &str) -> bool {
        matches!(
            path,
            "/" | "/login"
                | "/login/callback"
                | "/logout"
                | "/ui/tokens"
                | "/ui/tokens/revoke"
                | "/ui/repos"
                | "/ui/admin"
        ) || path.starts_with("/ui/repos/")
    }

    pub async fn handle(
        &self,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Incoming,
    ) -> (Resp, Option<String>) {
        let q = query_pairs(query);
        let user = self.user_of(headers);
        let who = user.as_ref().map(|u| u.s.login.clone());
        let (mut r, who) = match (method, path) {
            (&Method::GET, "/login") => match (self.gitee, query_get(&q, "local")) {
                (Some(g), None) => (self.login(g, query_get(&q, "rd")), None),
                _ => (self.signin_page(StatusCode::OK, query_get(&q, "rd"), None), None),
            },
            (&Method::POST, "/login") => self.signin(body).await,
            (&Method::GET, "/login/callback") => match self.gitee {
                Some(g) => match self.callback(g, &q, headers).await {
                    Ok((r, login)) => (r, Some(login)),
                    Err(e) => (e.into_response(), None),
                },
                None => (
                    message(
                        StatusCode::NOT_FOUND,
                        "Gitee sign-in is not configured",
                        "This regate has no auth.gitee section: sign in with your regate account.",
                    ),
                    None,
                ),
            },
            (&Method::GET | &Method::POST, "/logout") => {
                let mut r = page(
                    StatusCode::OK,
                    "Signed out",
                    "<h1>Signed out</h1><p>Your browser session has ended. CLI passwords keep working until they expire or you revoke them.</p><p><a href=\"/login\">Sign in</a></p>",
                );
                add_cookie(&mut r, &session::set_cookie(SESSION_COOKIE, "", "/", 0, self.secure()));
                add_cookie(&mut r, &session::set_cookie(LOCAL_COOKIE, "", "/", 0, self.secure()));
                return (r, who);
            }
            (&Method::GET, "/") => match &user {
                Some(u) => (self.home(u, None).await, who),
                None => (self.signin_page(StatusCode::OK, None, None), None),
            },
            (&Method::GET, p) if p == "/ui/repos" || p.starts_with("/ui/repos/") => {
                let Some(u) = &user else {
                    // with Gitee, /login is Gitee's sign-in (its page links the local one)
                    return (redirect(&format!("/login?rd={}", urlenc(p))), None);
                };
                let r = if p == "/ui/repos" {
                    self.repos(u).await
                } else {
                    self.repo(u, p.trim_start_matches("/ui/repos/"), query_get(&q, "last"))
                        .await
                };
                (r.unwrap_or_else(ApiError::into_response), who)
            }
            (&Method::GET, "/ui/admin") => match &user {
                Some(u) => (self.admin(u).await, who),
                None => return (redirect("/login?rd=%2Fui%2Fadmin"), None),
            },
            (&Method::POST, "/ui/tokens" | "/ui/tokens/revoke") => {
                let Some(u) = &user else {
                    return (redirect("/login"), None);
                };
                let form = match BodyReader::new(body, Duration::from_secs(30)).read_all(16 * 1024).await {
                    Ok(b) => query_pairs(std::str::from_utf8(&b).ok()),
                    Err(_) => {
                        return (
                            message(StatusCode::BAD_REQUEST, "Bad request", "The form could not be read."),
                            who,
                        )
                    }
                };
                if !self.csrf_ok(u, query_get(&form, "csrf")) {
                    return (
                        message(
                            StatusCode::FORBIDDEN,
                            "Refused",
                            "This form did not come from your regate page; reload the page and try again.",
                        ),
                        who,
                    );
                }
                let r = if path == "/ui/tokens" {
                    self.mint(u, &form).await
                } else {
                    self.revoke(&u.s, &form).await
                };
                (r.unwrap_or_else(ApiError::into_response), who)
            }
            _ => {
                let mut r = message(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "Not allowed",
                    "This page does not take that method.",
                );
                http::set(
                    &mut r,
                    header::ALLOW,
                    if path.starts_with("/ui/") || path == "/login" {
                        "GET, POST"
                    } else {
                        "GET"
                    },
                );
                (r, None)
            }
        };
        // a local session lasts the token lifetime from its last page
        if let Some(u) = user.filter(|u| u.local && r.status().is_success()) {
            if let Some(c) = self.local_cookie(&u.s.login, &u.s.groups, &u.s.sid) {
                add_cookie(&mut r, &c);
            }
        }
        (r, who)
    }

    async fn home(&self, u: &User, fresh: Option<(&Record, &str)>) -> Resp {
        let s = &u.s;
        let mut b = String::new();
        let _ = write!(
            b,
            "<header><h1>regate</h1><form method=\"post\" action=\"/logout\"><button>Sign out</button></form></header>\
<p>Signed in as <strong id=\"login\">{}</strong>{}{}.</p>",
            esc(&s.login),
            s.name.as_deref().map(|n| format!(" ({})", esc(n))).unwrap_or_default(),
            s.email.as_deref().map(|e| format!(", {}", esc(e))).unwrap_or_default(),
        );
        if !s.groups.is_empty() {
            let _ = write!(b, "<p>Groups: {}</p>", esc(&s.groups.join(", ")));
        }
        b.push_str("<p><a href=\"/ui/repos\" id=\"repos-link\">Repositories you can pull</a> · <a href=\"/ui/admin\" id=\"admin-link\">Administration</a></p>");
        let _ = write!(
            b,
            "<h2>docker login</h2>{}<p>As the password use {}.</p>",
            copyable(
                "docker-login",
                "",
                &format!("docker login {} -u {}", self.host(), s.login)
            ),
            if u.local {
                "your regate password, or a CLI password from below"
            } else {
                "a CLI password from below, or a Gitee personal access token"
            }
        );
        if let Some((rec, secret)) = fresh {
            let _ = write!(
                b,
                "<h2>New CLI password</h2><p>Copy it now; it is not shown again.</p>{}{}<p>Expires {}.</p>",
                copyable("new-password", "secret", secret),
                copyable(
                    "new-login",
                    "",
                    &format!(
                        "echo '{secret}' | docker login {} -u {} --password-stdin",
                        self.host(),
                        s.login
                    )
                ),
                esc(&crate::util::rfc3339(rec.expires))
            );
        }
        let csrf = self.csrf(u);
        b.push_str("<h2>CLI passwords</h2>");
        let now = crate::util::now_secs();
        match self.tokens.creds.stored() {
            None => b.push_str("<p>Credential storage is not available.</p>"),
            Some(st) => match st.list().await {
                Err(_) => b.push_str("<p>Credential storage is not reachable right now.</p>"),
                Ok(all) => {
                    let mine: Vec<&Record> = all
                        .iter()
                        .filter(|r| r.kind == Kind::Cli && r.account == s.login && (r.expires == 0 || r.expires > now))
                        .collect();
                    if mine.is_empty() {
                        b.push_str("<p id=\"no-passwords\">You have no CLI passwords yet.</p>");
                    } else {
                        b.push_str("<div class=\"wide\"><table id=\"passwords\"><tr><th>ID</th><th>Description</th><th>Repositories</th><th>Actions</th><th>Expires</th><th></th></tr>");
                        for r in mine {
                            let _ = write!(
                                b,
                                "<tr><td><code>{id}</code></td><td>{d}</td><td>{repos}</td><td>{acts}</td><td class=\"nowrap\">{exp}</td>\
<td><form method=\"post\" action=\"/ui/tokens/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<input type=\"hidden\" name=\"id\" value=\"{id}\"><button>Revoke</button></form></td></tr>",
                                id = esc(&r.id),
                                d = esc(&r.description),
                                repos = esc(&r.grants.iter().map(|g| g.repository.as_str()).collect::<Vec<_>>().join(", ")),
                                acts = esc(
                                    &r.grants
                                        .first()
                                        .map(|g| g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","))
                                        .unwrap_or_default()
                                ),
                                exp = if r.expires == 0 { "never".into() } else { esc(&crate::util::rfc3339(r.expires)) },
                                csrf = esc(&csrf),
                            );
                        }
                        b.push_str("</table></div>");
                    }
                }
            },
        }
        let _ = write!(
            b,
            "<h3>Create a CLI password</h3><form method=\"post\" action=\"/ui/tokens\" id=\"create\">\
<input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<p><label>Description <input name=\"description\" maxlength=\"200\" placeholder=\"laptop\"></label></p>\
<p><label>Repositories <input name=\"repositories\" value=\"*\"></label> (comma-separated patterns; * = everything you may use)</p>\
<p><label>Access <select name=\"actions\"><option value=\"pull,push\">pull and push</option><option value=\"pull\">pull only</option></select></label>\
<label>Valid for <input name=\"days\" type=\"number\" min=\"1\" max=\"365\" value=\"30\"> days</label></p>\
<p><button id=\"create-button\">Create CLI password</button></p></form>",
            esc(&csrf)
        );
        page(StatusCode::OK, "regate", &b)
    }

    async fn mint(&self, u: &User, form: &[(String, String)]) -> Result<Resp, ApiError> {
        let s = &u.s;
        let st = self.tokens.creds.stored().ok_or_else(|| {
            ApiError::html(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Credential storage is not available.",
            )
        })?;
        let days: u64 = query_get(form, "days")
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or(30);
        if !(1..=365).contains(&days) {
            return Err(ApiError::html(
                StatusCode::BAD_REQUEST,
                "Not created",
                "Choose between 1 and 365 days.",
            ));
        }
        let actions: Vec<Action> = match query_get(form, "actions").unwrap_or("pull,push") {
            "pull" => vec![Action::Pull],
            _ => vec![Action::Pull, Action::Push],
        };
        let repos: Vec<String> = query_get(form, "repositories")
            .unwrap_or("*")
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        let desc: String = query_get(form, "description")
            .unwrap_or("")
            .chars()
            .take(MAX_DESCRIPTION)
            .collect();
        let now = crate::util::now_secs();
        let mint = Mint {
            kind: Kind::Cli,
            account: &s.login,
            repositories: &repos,
            actions,
            ttl: Some(Duration::from_secs(days * 86_400)),
            description: &desc,
            parent: None,
            gitee: true,
        };
        let (rec, secret) = st.mint(mint, now).await.map_err(|e| match e {
            MintError::Storage(e) => {
                tracing::error!(error = %e, "credential storage");
                credentials_down()
            }
            MintError::Repositories => ApiError::html(
                StatusCode::BAD_REQUEST,
                "Not created",
                "List 1 to 100 repository patterns.",
            ),
            e => ApiError::html(StatusCode::BAD_REQUEST, "Not created", e.to_string()),
        })?;
        tracing::info!(target: "regate::audit", event = "cli_password", action = "POST", account = %s.login, id = %rec.id, "created in the browser");
        Ok(self.home(u, Some((&rec, &secret))).await)
    }

    async fn revoke(&self, s: &Session, form: &[(String, String)]) -> Result<Resp, ApiError> {
        let no_such = || ApiError::html(StatusCode::NOT_FOUND, "Not revoked", "No such CLI password.");
        let (Some(st), Some(id)) = (self.tokens.creds.stored(), query_get(form, "id")) else {
            return Err(no_such().with_status(StatusCode::BAD_REQUEST));
        };
        match st.get(id).await.map_err(|_| credentials_down())? {
            Some(r) if r.kind == Kind::Cli && r.account == s.login => {
                st.revoke(id).await.map_err(|_| credentials_down())?;
                tracing::info!(target: "regate::audit", event = "cli_password", action = "DELETE", account = %s.login, %id, "revoked in the browser");
                Ok(redirect("/"))
            }
            _ => Err(no_such()),
        }
    }
}
