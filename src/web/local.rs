//! Local accounts' browser sessions: the sign-in form and its `POST /login`, and the session
//! cookie, a token signed by the token key whose only access entry names the session (the policy
//! never grants that type, so it is no registry credential; every replica verifies it).

use super::session::{self, Session};
use super::{add_cookie, esc, identity_of, message, page, redirect, session_of, urlenc, Web};
use crate::auth::credentials::{Identity, Source};
use crate::http::{query_get, query_pairs, BodyReader, Resp};
use ::http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use std::fmt::Write as _;
use std::time::Duration;

/// The cookie of a local account's browser session.
pub(super) const LOCAL_COOKIE: &str = "regate_local";
/// Who the browser is: a Gitee session, or a local account's.
pub(super) struct User {
    pub(super) s: Session,
    pub(super) local: bool,
}

impl User {
    pub(super) fn identity(&self) -> Identity {
        if self.local {
            Identity {
                account: self.s.login.clone(),
                groups: self.s.groups.clone(),
                source: Source::Htpasswd,
                fingerprint: self.s.login.clone(),
                limit: None,
                gitee: false,
                oidc: None,
            }
        } else {
            identity_of(&self.s)
        }
    }
}

/// A local account's browser session from the request's cookie: authentic, unexpired, and its
/// account still local.
fn local_session(tokens: &crate::auth::endpoint::TokenService, headers: &HeaderMap) -> Option<Session> {
    let c = session::cookie(headers, LOCAL_COOKIE)?;
    let claims = tokens.keys.verify(c, crate::util::now_secs()).ok()?;
    let [entry] = claims.access.as_slice() else { return None };
    if entry.kind != crate::types::scope::Resource::WebSession.as_str() || !tokens.creds.is_local(&claims.sub) {
        return None;
    }
    Some(Session {
        login: claims.sub,
        id: 0,
        name: None,
        email: None,
        groups: claims.grp,
        exp: claims.exp,
        sid: entry.name.clone(),
    })
}

/// The identity of a local account's browser session, for the other routes that accept a
/// browser session (`/api/v1/tokens`, `/nginx/auth`); the gateway does not call it yet.
pub fn local_identity(tokens: &crate::auth::endpoint::TokenService, headers: &HeaderMap) -> Option<Identity> {
    let s = local_session(tokens, headers)?;
    Some(User { s, local: true }.identity())
}

impl Web<'_> {
    /// The signed-in browser: a Gitee session, or a local account's session whose account
    /// still exists.
    pub(super) fn user_of(&self, headers: &HeaderMap) -> Option<User> {
        if let Some(s) = self.gitee.and_then(|_| session_of(self.signer, headers)) {
            return Some(User { s, local: false });
        }
        Some(User {
            s: local_session(self.tokens, headers)?,
            local: true,
        })
    }

    /// The cookie of a local session for `login` (`sid` binds its forms); it lasts the token
    /// lifetime and is renewed by every page it opens.
    pub(super) fn local_cookie(&self, login: &str, groups: &[String], sid: &str) -> Option<String> {
        let scope = crate::types::scope::Scope {
            resource: crate::types::scope::Resource::WebSession,
            class: None,
            name: sid.to_owned(),
            actions: Default::default(),
        };
        let t = self
            .tokens
            .keys
            .issue(login, groups, false, &[scope], crate::util::now_secs())
            .ok()?;
        Some(session::set_cookie(
            LOCAL_COOKIE,
            &t,
            "/",
            self.tokens.keys.ttl,
            self.secure(),
        ))
    }

    /// The value forms of this session carry.
    pub(super) fn csrf(&self, u: &User) -> String {
        match (u.local, self.gitee) {
            (false, Some(_)) => self.signer.csrf(&u.s.sid),
            _ => u.s.sid.clone(),
        }
    }

    pub(super) fn csrf_ok(&self, u: &User, token: Option<&str>) -> bool {
        let Some(t) = token else { return false };
        match (u.local, self.gitee) {
            (false, Some(_)) => self.signer.check_csrf(&u.s.sid, t),
            _ => {
                use subtle::ConstantTimeEq;
                bool::from(t.as_bytes().ct_eq(u.s.sid.as_bytes()))
            }
        }
    }

    /// The sign-in page: username and password for local accounts, and Gitee as one button.
    pub(super) fn signin_page(&self, code: StatusCode, rd: Option<&str>, error: Option<&str>) -> Resp {
        let mut b = String::from("<h1>regate</h1><p>A private container registry for this team.</p>");
        if let Some(e) = error {
            let _ = write!(b, "<p class=\"error\" id=\"signin-error\">{}</p>", esc(e));
        }
        if self.gitee.is_some() {
            let _ = write!(
                b,
                "<p><a href=\"/login{}\">Sign in with Gitee</a></p><h2>Or with a regate account</h2>",
                rd.map(|r| format!("?rd={}", urlenc(r))).unwrap_or_default()
            );
        }
        let _ = write!(
            b,
            "<form class=\"signin\" method=\"post\" action=\"/login\" id=\"signin\">\
<input type=\"hidden\" name=\"rd\" value=\"{}\">\
<label>Username <input name=\"username\" id=\"username\" autocomplete=\"username\" required></label>\
<label>Password <input name=\"password\" id=\"password\" type=\"password\" autocomplete=\"current-password\" required></label>\
<p><button id=\"signin-button\">Sign in</button></p></form>",
            esc(&session::safe_return(rd))
        );
        page(code, "Sign in", &b)
    }

    /// `POST /login`: a local account's username and password.
    pub(super) async fn signin(&self, body: Incoming) -> (Resp, Option<String>) {
        let form = match BodyReader::new(body, Duration::from_secs(30)).read_all(16 * 1024).await {
            Ok(b) => query_pairs(std::str::from_utf8(&b).ok()),
            Err(_) => {
                return (
                    message(StatusCode::BAD_REQUEST, "Bad request", "The form could not be read."),
                    None,
                )
            }
        };
        let rd = query_get(&form, "rd");
        let user = query_get(&form, "username").unwrap_or("").trim().to_owned();
        let pass = query_get(&form, "password").unwrap_or("");
        let refused = |code: StatusCode, text: &str| (self.signin_page(code, rd, Some(text)), None);
        let id = match self.tokens.creds.authenticate_from(&user, pass, self.ip).await {
            Ok(id) => id,
            Err(crate::auth::credentials::AuthError::BadCredentials) => {
                return refused(StatusCode::UNAUTHORIZED, "Incorrect username or password.")
            }
            Err(crate::auth::credentials::AuthError::Limited(_)) => {
                return refused(
                    StatusCode::TOO_MANY_REQUESTS,
                    "Too many failed sign-ins; try again later.",
                )
            }
            Err(_) => {
                return refused(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Accounts cannot be checked right now; try again shortly.",
                )
            }
        };
        if !matches!(id.source, Source::Htpasswd | Source::Admin) {
            let text = if id.source == Source::Gitee {
                "Gitee accounts sign in with the Gitee button."
            } else {
                "Robot secrets and CLI passwords are for docker login, not for this page."
            };
            return refused(StatusCode::FORBIDDEN, text);
        }
        let Some(cookie) = self.local_cookie(&id.account, &id.groups, &session::random_token()) else {
            return refused(StatusCode::INTERNAL_SERVER_ERROR, "The session could not be created.");
        };
        tracing::info!(target: "regate::audit", event = "login", account = %id.account, ip = %self.ip, "signed in with a regate account");
        let mut r = redirect(&session::safe_return(rd));
        add_cookie(&mut r, &cookie);
        (r, Some(id.account))
    }
}
