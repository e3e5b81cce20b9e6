//! `/api/v1/tokens`: CLI passwords. POST mints one for the caller (limited to the repositories
//! and actions asked for, and never more than the caller may do), GET lists the caller's, DELETE
//! `/api/v1/tokens/{id}` revokes one. The caller signs in with Basic credentials (a password,
//! a robot secret, or another CLI password).

use crate::auth::credentials::{parse_basic, AuthError, Credentials, Identity};
use crate::auth::stored::{Kind, Mint, MintError, Record};
use crate::http::{self, ApiError, BodyReader, Resp};
use crate::types::scope::Action;
use ::http::{header, HeaderMap, Method, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

const DEFAULT_TTL: u64 = 30 * 86_400;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MintRequest {
    #[serde(default)]
    repositories: Option<Vec<String>>,
    #[serde(default)]
    actions: Option<Vec<Action>>,
    /// Seconds.
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    description: Option<String>,
}

fn err(code: StatusCode, msg: &str) -> ApiError {
    let word = match code {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::NOT_FOUND => "NOT_FOUND",
        StatusCode::METHOD_NOT_ALLOWED => "UNSUPPORTED",
        StatusCode::TOO_MANY_REQUESTS => "TOOMANYREQUESTS",
        StatusCode::SERVICE_UNAVAILABLE => "UNAVAILABLE",
        _ => "BAD_REQUEST",
    };
    let e = ApiError::json(code, word, msg);
    if code == StatusCode::UNAUTHORIZED {
        return e.with_header(header::WWW_AUTHENTICATE, "Basic realm=\"regate\"");
    }
    e
}

/// Whether a browser says the request comes from another site (`Sec-Fetch-Site`), or names an
/// `Origin` other than the host it was sent to.
fn cross_site(h: &HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = h.get(header::ORIGIN) else {
        return false;
    };
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    origin_host != Some(host) || host.is_empty()
}

fn view(r: &Record, token: Option<&str>) -> serde_json::Value {
    let mut v = json!({
        "id": r.id,
        "username": r.account,
        "expires_at": if r.expires == 0 { serde_json::Value::Null } else { json!(crate::util::rfc3339(r.expires)) },
        "created_at": crate::util::rfc3339(r.created),
        "repositories": r.grants.iter().map(|g| g.repository.clone()).collect::<Vec<_>>(),
        "actions": r.grants.first().map(|g| g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>()).unwrap_or_default(),
        "description": r.description,
    });
    if let Some(t) = token {
        v["token"] = json!(t);
    }
    v
}

/// `session`: the browser's signed-in Gitee identity, when the request carried a valid session
/// cookie (used only when there is no `Authorization` header). The answer, and the account it was
/// for (for the access log) once one is known.
pub async fn tokens(
    creds: &Credentials,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: Incoming,
    ip: std::net::IpAddr,
    session: Option<Identity>,
) -> (Resp, Option<String>) {
    let me = match caller(creds, method, headers, ip, session).await {
        Ok(me) => me,
        Err((e, who)) => return (e.into_response(), who),
    };
    let who = Some(me.account.clone());
    let r = serve(creds, method, path, body, me).await;
    (r.unwrap_or_else(ApiError::into_response), who)
}

/// Who is asking: Basic credentials, or else the browser session (whose writes must be
/// same-site JSON). A refusal names the account it was for, when there was one.
async fn caller(
    creds: &Credentials,
    method: &Method,
    headers: &HeaderMap,
    ip: std::net::IpAddr,
    session: Option<Identity>,
) -> Result<Identity, (ApiError, Option<String>)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_basic);
    let (user, pass) = match (basic, session) {
        (Some(b), _) => b,
        (None, Some(me)) => {
            // a cookie rides along on cross-site requests too: a write must be a JSON request,
            // which no HTML form can send without the page's own script
            let json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/json"));
            if method != Method::GET && cross_site(headers) {
                let e = err(
                    StatusCode::FORBIDDEN,
                    "cross-site requests may not change CLI passwords",
                );
                return Err((e, Some(me.account)));
            }
            if method == Method::POST && !json {
                let e = err(StatusCode::FORBIDDEN, "send the request as application/json");
                return Err((e, Some(me.account)));
            }
            return Ok(me);
        }
        (None, None) => {
            let e = err(
                StatusCode::UNAUTHORIZED,
                "sign in with Basic credentials or a browser session from /login",
            );
            return Err((e, None));
        }
    };
    creds.authenticate_from(&user, &pass, ip).await.map_err(|e| {
        let e = match e {
            AuthError::BadCredentials => err(StatusCode::UNAUTHORIZED, "incorrect username or password"),
            AuthError::Limited(d) => crate::auth::endpoint::limited(d),
            AuthError::Unavailable(_) => err(StatusCode::SERVICE_UNAVAILABLE, "credential check unavailable; retry"),
        };
        (e, Some(user))
    })
}

async fn serve(
    creds: &Credentials,
    method: &Method,
    path: &str,
    body: Incoming,
    me: Identity,
) -> Result<Resp, ApiError> {
    let st = creds
        .stored()
        .ok_or_else(|| err(StatusCode::SERVICE_UNAVAILABLE, "credential storage unavailable"))?;
    let now = crate::util::now_secs();
    let storage_err = |e: std::io::Error| {
        tracing::error!(error = %e, "credential storage");
        err(StatusCode::SERVICE_UNAVAILABLE, "credential storage unavailable; retry")
    };
    let id = path
        .strip_prefix("/api/v1/tokens")
        .unwrap_or("")
        .trim_start_matches('/');
    match (method, id.is_empty()) {
        (&Method::POST, true) => {
            let raw = BodyReader::new(body, Duration::from_secs(30))
                .read_all(16 * 1024)
                .await
                .map_err(|_| err(StatusCode::BAD_REQUEST, "request body too large or unreadable"))?;
            let req: MintRequest = if raw.iter().all(|b| b.is_ascii_whitespace()) {
                MintRequest::default()
            } else {
                serde_json::from_slice(&raw).map_err(|e| err(StatusCode::BAD_REQUEST, &format!("invalid JSON: {e}")))?
            };
            let repos = req.repositories.unwrap_or_else(|| vec!["*".into()]);
            let mint = Mint {
                kind: Kind::Cli,
                account: &me.account,
                repositories: &repos,
                actions: req.actions.unwrap_or_else(|| vec![Action::Pull, Action::Push]),
                ttl: Some(Duration::from_secs(req.expires_in.unwrap_or(DEFAULT_TTL))),
                description: req.description.as_deref().unwrap_or(""),
                parent: me.limit.as_deref(),
                gitee: me.gitee,
            };
            let (rec, secret) = st.mint(mint, now).await.map_err(|e| match e {
                MintError::Storage(e) => storage_err(e),
                e => err(StatusCode::BAD_REQUEST, &e.to_string()),
            })?;
            Ok(http::json(StatusCode::CREATED, &view(&rec, Some(&secret))))
        }
        (&Method::GET, true) => {
            let all = st.list().await.map_err(storage_err)?;
            let mine: Vec<_> = all
                .iter()
                .filter(|r| r.kind == Kind::Cli && r.account == me.account && (r.expires == 0 || r.expires > now))
                .map(|r| view(r, None))
                .collect();
            Ok(http::json(StatusCode::OK, &mine))
        }
        (&Method::DELETE, false) => match st.get(id).await.map_err(storage_err)? {
            Some(r) if r.kind == Kind::Cli && r.account == me.account => {
                st.revoke(id).await.map_err(storage_err)?;
                Ok(http::status(StatusCode::NO_CONTENT))
            }
            _ => Err(err(StatusCode::NOT_FOUND, "no such token")),
        },
        _ => Err(err(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST or GET on /api/v1/tokens, DELETE on /api/v1/tokens/{id}",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cross_site_requests_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(!cross_site(&h(&[])));
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&h(&[
            ("origin", "https://reg.example.com"),
            ("host", "reg.example.com")
        ])));
        assert!(cross_site(&h(&[
            ("origin", "https://evil.example"),
            ("host", "reg.example.com")
        ])));
        assert!(cross_site(&h(&[("origin", "null"), ("host", "reg.example.com")])));
    }
}
