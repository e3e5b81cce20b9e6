//! The browser side: `/login` → Gitee → `/login/callback` (state bound to a signed cookie, PKCE),
//! a signed session cookie, `/logout`, and one plain page at `/` that shows who you are, your CLI
//! passwords (create, revoke) and the exact `docker login` line. Server-rendered, no script.

use super::session::{self, LoginState, Session, LOGIN_COOKIE, SESSION_COOKIE};
use super::{Gitee, GiteeError};
use crate::auth::credentials::{Identity, Source};
use crate::auth::scope::Action;
use crate::auth::stored::{Grant, Kind, Record};
use crate::http::{self, query_get, query_pairs, BodyReader, Resp};
use ::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;
use std::fmt::Write as _;
use std::time::Duration;

const LOGIN_TTL: u64 = 600;

pub struct Web<'a> {
    pub gitee: Option<&'a Gitee>,
    pub tokens: &'a crate::auth::endpoint::TokenService,
    pub registry: &'a crate::registry::Registry,
    pub public_url: &'a str,
    pub ip: std::net::IpAddr,
}

const TAGS_PER_PAGE: usize = 100;

/// The browser's session, if its cookie is present, authentic and unexpired.
pub fn session_of(g: &Gitee, headers: &HeaderMap) -> Option<Session> {
    let c = session::cookie(headers, SESSION_COOKIE)?;
    let s: Session = g.signer.verify("session", c)?;
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

/// Bytes in a unit people read (1024-based, one decimal).
fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn page(code: StatusCode, title: &str, body: &str) -> Resp {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t} · regate</title><style>body{{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}}\
code,pre{{background:#f3f3f3;padding:.1rem .3rem;border-radius:3px}}pre{{padding:.6rem;overflow-x:auto}}table{{border-collapse:collapse;width:100%}}\
td,th{{border-bottom:1px solid #ddd;padding:.3rem;text-align:left;vertical-align:top}}.secret{{font-size:1.1rem;background:#fff8d6}}\
header{{display:flex;justify-content:space-between;align-items:baseline}}</style></head><body>{b}</body></html>",
        t = esc(title),
        b = body
    );
    let mut r = Resp::new(http::full(html));
    *r.status_mut() = code;
    http::set(&mut r, header::CONTENT_TYPE, "text/html; charset=utf-8");
    http::set(&mut r, header::CACHE_CONTROL, "no-store");
    http::set(
        &mut r,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    http::set(&mut r, header::REFERRER_POLICY, "no-referrer");
    r
}

fn message(code: StatusCode, title: &str, text: &str) -> Resp {
    page(
        code,
        title,
        &format!(
            "<h1>{}</h1><p>{}</p><p><a href=\"/login\">Sign in again</a></p>",
            esc(title),
            esc(text)
        ),
    )
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
            "/" | "/login" | "/login/callback" | "/logout" | "/ui/tokens" | "/ui/tokens/revoke" | "/ui/repos"
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
        let Some(g) = self.gitee else {
            if path == "/" {
                return (
                    page(
                        StatusCode::OK,
                        "regate",
                        "<h1>regate</h1><p>A private container registry. Sign in with <code>docker login</code>.</p>",
                    ),
                    None,
                );
            }
            return (
                message(
                    StatusCode::NOT_FOUND,
                    "Gitee sign-in is not configured",
                    "This regate has no auth.gitee section; sign in with docker login and a regate account.",
                ),
                None,
            );
        };
        let q = query_pairs(query);
        match (method, path) {
            (&Method::GET, "/login") => (self.login(g, query_get(&q, "rd")), None),
            (&Method::GET, "/login/callback") => self.callback(g, &q, headers).await,
            (&Method::GET | &Method::POST, "/logout") => {
                let mut r = page(
                    StatusCode::OK,
                    "Signed out",
                    "<h1>Signed out</h1><p>Your browser session has ended. CLI passwords keep working until they expire or you revoke them.</p><p><a href=\"/login\">Sign in</a></p>",
                );
                add_cookie(&mut r, &session::set_cookie(SESSION_COOKIE, "", "/", 0, self.secure()));
                (r, session_of(g, headers).map(|s| s.login))
            }
            (&Method::GET, "/") => match session_of(g, headers) {
                Some(s) => (self.home(g, &s, None).await, Some(s.login)),
                None => (
                    page(
                        StatusCode::OK,
                        "regate",
                        "<h1>regate</h1><p>A private container registry for this team.</p><p><a href=\"/login\">Sign in with Gitee</a></p>",
                    ),
                    None,
                ),
            },
            (&Method::GET, p) if p == "/ui/repos" || p.starts_with("/ui/repos/") => {
                let Some(sess) = session_of(g, headers) else {
                    return (redirect(&format!("/login?rd={}", urlenc(p))), None);
                };
                let r = if p == "/ui/repos" {
                    self.repos(&sess).await
                } else {
                    self.repo(&sess, p.trim_start_matches("/ui/repos/"), query_get(&q, "last")).await
                };
                (r, Some(sess.login))
            }
            (&Method::POST, "/ui/tokens" | "/ui/tokens/revoke") => {
                let Some(s) = session_of(g, headers) else {
                    return (redirect("/login"), None);
                };
                let form = match BodyReader::new(body, Duration::from_secs(30)).read_all(16 * 1024).await {
                    Ok(b) => query_pairs(std::str::from_utf8(&b).ok()),
                    Err(_) => {
                        return (
                            message(StatusCode::BAD_REQUEST, "Bad request", "The form could not be read."),
                            Some(s.login),
                        )
                    }
                };
                if !query_get(&form, "csrf").is_some_and(|t| g.signer.check_csrf(&s.sid, t)) {
                    return (
                        message(
                            StatusCode::FORBIDDEN,
                            "Refused",
                            "This form did not come from your regate page; reload the page and try again.",
                        ),
                        Some(s.login),
                    );
                }
                let r = if path == "/ui/tokens" {
                    self.mint(g, &s, &form).await
                } else {
                    self.revoke(&s, &form).await
                };
                (r, Some(s.login))
            }
            _ => {
                let mut r = message(StatusCode::METHOD_NOT_ALLOWED, "Not allowed", "This page does not take that method.");
                http::set(&mut r, header::ALLOW, if path.starts_with("/ui/") { "POST" } else { "GET" });
                (r, None)
            }
        }
    }

    fn login(&self, g: &Gitee, rd: Option<&str>) -> Resp {
        let st = LoginState {
            state: session::random_token(),
            verifier: session::random_token(),
            rd: session::safe_return(rd),
            exp: crate::util::now_secs() + LOGIN_TTL,
        };
        let mut r = redirect(&g.authorize_url(&st.state, &session::pkce_challenge(&st.verifier)));
        let c = g.signer.sign("login", &st);
        add_cookie(
            &mut r,
            &session::set_cookie(LOGIN_COOKIE, &c, "/login", LOGIN_TTL, self.secure()),
        );
        r
    }

    async fn callback(&self, g: &Gitee, q: &[(String, String)], headers: &HeaderMap) -> (Resp, Option<String>) {
        let st: Option<LoginState> = session::cookie(headers, LOGIN_COOKIE).and_then(|c| g.signer.verify("login", c));
        let Some(st) = st.filter(|s| s.exp > crate::util::now_secs()) else {
            return (
                message(
                    StatusCode::BAD_REQUEST,
                    "Sign-in expired",
                    "This sign-in was not started from this browser or took too long. Start again.",
                ),
                None,
            );
        };
        let state_ok = query_get(q, "state").is_some_and(|s| {
            use subtle::ConstantTimeEq;
            bool::from(s.as_bytes().ct_eq(st.state.as_bytes()))
        });
        if !state_ok {
            tracing::warn!(target: "regate::audit", event = "login_state_mismatch", "sign-in refused: state does not match");
            return (
                message(
                    StatusCode::BAD_REQUEST,
                    "Sign-in refused",
                    "The answer from Gitee does not belong to the sign-in this browser started.",
                ),
                None,
            );
        }
        let clear = |r: &mut Resp| add_cookie(r, &session::set_cookie(LOGIN_COOKIE, "", "/login", 0, self.secure()));
        if let Some(e) = query_get(q, "error") {
            let mut r = message(
                StatusCode::FORBIDDEN,
                "Sign-in cancelled",
                &format!("Gitee answered: {e}."),
            );
            clear(&mut r);
            return (r, None);
        }
        let Some(code) = query_get(q, "code") else {
            let mut r = message(StatusCode::BAD_REQUEST, "Sign-in refused", "Gitee sent no code.");
            clear(&mut r);
            return (r, None);
        };
        let tokens = match g.exchange_code(code, &st.verifier).await {
            Ok(t) => t,
            Err(e) => {
                let (status, text) = match &e {
                    GiteeError::Denied(m) => (
                        StatusCode::FORBIDDEN,
                        format!("Gitee did not accept this sign-in ({m}). Codes work once; start again."),
                    ),
                    GiteeError::Unreachable(m) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("Gitee is unreachable ({m}). Try again shortly."),
                    ),
                };
                tracing::warn!(target: "regate::audit", event = "login_failed", error = %e, "sign-in failed");
                let mut r = message(status, "Sign-in failed", &text);
                clear(&mut r);
                return (r, None);
            }
        };
        let login = match g.complete_login(&tokens).await {
            Ok(l) => l,
            Err(e) => {
                let mut r = message(StatusCode::SERVICE_UNAVAILABLE, "Sign-in failed", &e.to_string());
                clear(&mut r);
                return (r, None);
            }
        };
        if self.tokens.creds.is_local(&login.user.login) {
            let mut r = message(
                StatusCode::FORBIDDEN,
                "Account name taken",
                &format!(
                    "The Gitee account {} has the same name as a local regate account, so it cannot sign in here. Ask an administrator.",
                    login.user.login
                ),
            );
            clear(&mut r);
            return (r, Some(login.user.login));
        }
        let s = Session {
            login: login.user.login.clone(),
            id: login.user.id,
            name: login.user.name.clone(),
            email: login.user.email.clone(),
            groups: login.groups.clone(),
            exp: crate::util::now_secs() + g.opts.session_ttl,
            sid: session::random_token(),
        };
        tracing::info!(target: "regate::audit", event = "login", account = %s.login, gitee_id = s.id, "signed in with Gitee");
        let mut r = redirect(&st.rd);
        clear(&mut r);
        add_cookie(
            &mut r,
            &session::set_cookie(
                SESSION_COOKIE,
                &g.signer.sign("session", &s),
                "/",
                g.opts.session_ttl,
                self.secure(),
            ),
        );
        (r, Some(s.login))
    }

    async fn home(&self, g: &Gitee, s: &Session, fresh: Option<(&Record, &str)>) -> Resp {
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
        b.push_str("<p><a href=\"/ui/repos\" id=\"repos-link\">Repositories you can pull</a></p>");
        let _ = write!(
            b,
            "<h2>docker login</h2><pre id=\"docker-login\">docker login {} -u {}</pre>\
<p>As the password use a CLI password from below, or a Gitee personal access token.</p>",
            esc(self.host()),
            esc(&s.login)
        );
        if let Some((rec, secret)) = fresh {
            let _ = write!(
                b,
                "<h2>New CLI password</h2><p>Copy it now; it is not shown again.</p><pre class=\"secret\" id=\"new-password\">{}</pre>\
<pre>echo '{}' | docker login {} -u {} --password-stdin</pre><p>Expires {}.</p>",
                esc(secret),
                esc(secret),
                esc(self.host()),
                esc(&s.login),
                esc(&crate::util::rfc3339(rec.expires))
            );
        }
        let csrf = g.signer.csrf(&s.sid);
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
                        b.push_str("<table id=\"passwords\"><tr><th>ID</th><th>Description</th><th>Repositories</th><th>Actions</th><th>Expires</th><th></th></tr>");
                        for r in mine {
                            let _ = write!(
                                b,
                                "<tr><td><code>{id}</code></td><td>{d}</td><td>{repos}</td><td>{acts}</td><td>{exp}</td>\
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
                        b.push_str("</table>");
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

    /// The repositories this session may pull (with Gitee's permissions looked up first).
    async fn pullable(&self, s: &Session) -> Result<(Vec<String>, bool), Resp> {
        let all = match self.registry.repositories().await {
            Ok(a) => a,
            Err(_) => {
                return Err(message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "Storage is not reachable right now; retry.",
                ))
            }
        };
        let id = identity_of(s);
        let policy = self.tokens.policy.get();
        let scopes: Vec<crate::auth::scope::Scope> = all
            .iter()
            .map(|n| crate::auth::scope::Scope::repository(n.as_str(), &[Action::Pull]))
            .collect();
        let (subject, err) = self.tokens.subject(&id, self.ip, &policy, &scopes).await;
        let admin = policy.catalog(&subject);
        let names = all
            .iter()
            .filter(|n| policy.actions(&subject, n.as_str()).contains(&Action::Pull))
            .map(|n| n.to_string())
            .collect();
        if let Some(e) = err {
            tracing::warn!(error = %e, "repository page: some Gitee permissions could not be checked");
        }
        Ok((names, admin))
    }

    async fn repos(&self, s: &Session) -> Resp {
        let (names, admin) = match self.pullable(s).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let mut b = String::from("<header><h1>Repositories</h1><a href=\"/\">Your account</a></header>");
        if names.is_empty() {
            b.push_str("<p id=\"no-repos\">There is nothing you may pull yet.</p>");
        } else {
            b.push_str("<ul id=\"repos\">");
            for n in &names {
                let _ = write!(b, "<li><a href=\"/ui/repos/{}\">{}</a></li>", esc(n), esc(n));
            }
            b.push_str("</ul>");
        }
        if admin {
            b.push_str("<h2>Robot accounts</h2>");
            match self.tokens.creds.stored() {
                Some(st) => match st.list().await {
                    Ok(all) => {
                        let now = crate::util::now_secs();
                        let robots: Vec<&Record> = all
                            .iter()
                            .filter(|r| r.kind == Kind::Robot && (r.expires == 0 || r.expires > now))
                            .collect();
                        if robots.is_empty() {
                            b.push_str("<p>No robot accounts (create them with <code>regate robot add</code>).</p>");
                        } else {
                            b.push_str("<table id=\"robots\"><tr><th>Name</th><th>Repositories</th><th>Actions</th><th>Expires</th></tr>");
                            for r in robots {
                                let _ = write!(
                                    b,
                                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                                    esc(&r.account),
                                    esc(&r
                                        .grants
                                        .iter()
                                        .map(|g| g.repository.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")),
                                    esc(&r
                                        .grants
                                        .first()
                                        .map(|g| g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","))
                                        .unwrap_or_default()),
                                    if r.expires == 0 {
                                        "never".into()
                                    } else {
                                        esc(&crate::util::rfc3339(r.expires))
                                    },
                                );
                            }
                            b.push_str("</table>");
                        }
                    }
                    Err(_) => b.push_str("<p>Credential storage is not reachable right now.</p>"),
                },
                None => b.push_str("<p>Credential storage is not available.</p>"),
            }
        }
        page(StatusCode::OK, "Repositories", &b)
    }

    async fn repo(&self, s: &Session, name: &str, last: Option<&str>) -> Resp {
        let not_found = || {
            message(
                StatusCode::NOT_FOUND,
                "No such repository",
                "It does not exist, or you may not pull it.",
            )
        };
        let Some(repo) = crate::registry::names::RepoName::parse(name) else {
            return not_found();
        };
        let id = identity_of(s);
        let policy = self.tokens.policy.get();
        let scope = [crate::auth::scope::Scope::repository(repo.as_str(), &[Action::Pull])];
        let (subject, _) = self.tokens.subject(&id, self.ip, &policy, &scope).await;
        if !policy.actions(&subject, repo.as_str()).contains(&Action::Pull) {
            return not_found();
        }
        let (tags, more) = match self.registry.tag_page(&repo, last, TAGS_PER_PAGE).await {
            Ok(x) => x,
            Err(_) => {
                return message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "Storage is not reachable right now; retry.",
                )
            }
        };
        let host = self.host();
        let mut b = format!(
            "<header><h1>{n}</h1><a href=\"/ui/repos\">All repositories</a></header><pre id=\"pull\">docker pull {h}/{n}:&lt;tag&gt;</pre>",
            n = esc(repo.as_str()),
            h = esc(host)
        );
        if tags.is_empty() {
            b.push_str("<p id=\"no-tags\">No tags.</p>");
        } else {
            b.push_str("<table id=\"tags\"><tr><th>Tag</th><th>Size</th><th>Platforms</th><th>Pushed</th><th>Digest</th><th>Pull</th></tr>");
            for t in &tags {
                let pushed = t
                    .pushed
                    .and_then(|p| p.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| crate::util::rfc3339(d.as_secs()))
                    .unwrap_or_default();
                let _ = write!(
                    b,
                    "<tr><td>{tag}</td><td>{size}</td><td>{plat}</td><td>{pushed}</td><td><code title=\"{dg}\">{short}</code></td><td><code>docker pull {h}/{n}:{tag}</code></td></tr>",
                    tag = esc(&t.tag),
                    size = human(t.size),
                    plat = esc(&t.platforms.join(", ")),
                    pushed = esc(&pushed),
                    dg = esc(t.digest.as_deref().unwrap_or("")),
                    short = esc(t.digest.as_deref().map(|d| &d[..d.len().min(19)]).unwrap_or("")),
                    h = esc(host),
                    n = esc(repo.as_str()),
                );
            }
            b.push_str("</table>");
        }
        if let (true, Some(t)) = (more, tags.last()) {
            let _ = write!(
                b,
                "<p><a id=\"next\" href=\"/ui/repos/{}?last={}\">Next {} tags</a></p>",
                esc(repo.as_str()),
                esc(&urlenc(&t.tag)),
                TAGS_PER_PAGE
            );
        }
        page(StatusCode::OK, repo.as_str(), &b)
    }

    async fn mint(&self, g: &Gitee, s: &Session, form: &[(String, String)]) -> Resp {
        let Some(st) = self.tokens.creds.stored() else {
            return message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Credential storage is not available.",
            );
        };
        let days: u64 = query_get(form, "days")
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or(30);
        if !(1..=365).contains(&days) {
            return message(StatusCode::BAD_REQUEST, "Not created", "Choose between 1 and 365 days.");
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
        if repos.is_empty() || repos.len() > 100 || repos.iter().any(|r| r.len() > 256) {
            return message(
                StatusCode::BAD_REQUEST,
                "Not created",
                "List 1 to 100 repository patterns.",
            );
        }
        let grants = repos
            .into_iter()
            .map(|repository| Grant {
                repository,
                actions: actions.clone(),
            })
            .collect();
        let desc: String = query_get(form, "description").unwrap_or("").chars().take(200).collect();
        let now = crate::util::now_secs();
        match st
            .create(
                Kind::Cli,
                &s.login,
                grants,
                vec![],
                true,
                true,
                now + days * 86_400,
                &desc,
                now,
            )
            .await
        {
            Ok((rec, secret)) => {
                tracing::info!(target: "regate::audit", event = "cli_password", action = "POST", account = %s.login, id = %rec.id, "created in the browser");
                self.home(g, s, Some((&rec, &secret))).await
            }
            Err(e) => {
                tracing::error!(error = %e, "credential storage");
                message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "Credential storage is not reachable; retry.",
                )
            }
        }
    }

    async fn revoke(&self, s: &Session, form: &[(String, String)]) -> Resp {
        let (Some(st), Some(id)) = (self.tokens.creds.stored(), query_get(form, "id")) else {
            return message(StatusCode::BAD_REQUEST, "Not revoked", "No such CLI password.");
        };
        match st.get(id).await {
            Ok(Some(r)) if r.kind == Kind::Cli && r.account == s.login => match st.revoke(id).await {
                Ok(()) => {
                    tracing::info!(target: "regate::audit", event = "cli_password", action = "DELETE", account = %s.login, %id, "revoked in the browser");
                    redirect("/")
                }
                Err(_) => message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Unavailable",
                    "Credential storage is not reachable; retry.",
                ),
            },
            Ok(_) => message(StatusCode::NOT_FOUND, "Not revoked", "No such CLI password."),
            Err(_) => message(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "Credential storage is not reachable; retry.",
            ),
        }
    }
}
