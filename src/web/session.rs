//! Browser sessions: signed cookies (HMAC-SHA256 under a key derived from the token signing key,
//! so every replica accepts every replica's cookies). A cookie holds who signed in and until
//! when; nothing secret is in it, and any change to it breaks the signature.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

pub const SESSION_COOKIE: &str = "regate_session";
pub const LOGIN_COOKIE: &str = "regate_login";

/// A signed-in browser.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Session {
    pub login: String,
    pub id: u64,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix seconds.
    pub exp: u64,
    /// Random; binds the page's CSRF token to this session.
    pub sid: String,
}

/// What `/login` remembers for `/login/callback`: the `state` it sent, the PKCE verifier and
/// where to return.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoginState {
    pub state: String,
    pub verifier: String,
    pub rd: String,
    pub exp: u64,
}

pub struct Signer {
    key: [u8; 32],
}

impl Signer {
    pub fn new(master: &[u8]) -> Self {
        Signer {
            key: crate::gitee::vault::derive_key(master, "regate session cookie v1"),
        }
    }

    fn mac(&self, kind: &str, payload: &str) -> Option<Hmac<Sha256>> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).ok()?;
        m.update(kind.as_bytes());
        m.update(b"\n");
        m.update(payload.as_bytes());
        Some(m)
    }

    /// `base64url(json).base64url(mac)`; `kind` separates cookie types so one cannot stand in
    /// for another.
    pub fn sign<T: Serialize>(&self, kind: &str, v: &T) -> String {
        let payload = B64.encode(serde_json::to_vec(v).unwrap_or_default());
        let tag = self
            .mac(kind, &payload)
            .map(|m| B64.encode(m.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{payload}.{tag}")
    }

    pub fn verify<T: DeserializeOwned>(&self, kind: &str, s: &str) -> Option<T> {
        let (payload, tag) = s.split_once('.')?;
        let tag = B64.decode(tag).ok()?;
        self.mac(kind, payload)?.verify_slice(&tag).ok()?;
        serde_json::from_slice(&B64.decode(payload).ok()?).ok()
    }

    /// A token for forms on pages of this session (double-submit, bound to the session id).
    pub fn csrf(&self, sid: &str) -> String {
        self.mac("csrf", sid)
            .map(|m| B64.encode(m.finalize().into_bytes()))
            .unwrap_or_default()
    }

    pub fn check_csrf(&self, sid: &str, token: &str) -> bool {
        let Ok(t) = B64.decode(token) else { return false };
        self.mac("csrf", sid).is_some_and(|m| m.verify_slice(&t).is_ok())
    }
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A `Set-Cookie` value: always `HttpOnly; SameSite=Lax`, `Secure` when served over HTTPS.
pub fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let mut c = format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax");
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// Where to go after signing in: only a path on this site. Anything that a browser could read
/// as another origin (`//host`, `/\host`, a scheme, control characters) becomes `/`.
pub fn safe_return(rd: Option<&str>) -> String {
    let Some(rd) = rd else { return "/".into() };
    let ok = rd.starts_with('/')
        && !rd.starts_with("//")
        && !rd.starts_with("/\\")
        && !rd.chars().any(|c| c.is_control() || c == '\\')
        && rd.len() <= 1024;
    if ok {
        rd.to_owned()
    } else {
        "/".into()
    }
}

pub fn random_token() -> String {
    let b: [u8; 32] = rand::random();
    B64.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_cookies_resist_tampering() {
        let s = Signer::new(b"k1");
        let sess = Session {
            login: "alice".into(),
            id: 1,
            name: None,
            email: None,
            groups: vec![],
            exp: 99,
            sid: "x".into(),
        };
        let c = s.sign("session", &sess);
        assert_eq!(s.verify::<Session>("session", &c), Some(sess.clone()));
        assert_eq!(s.verify::<Session>("login", &c), None, "kinds are not interchangeable");
        assert_eq!(Signer::new(b"k2").verify::<Session>("session", &c), None);
        let mut forged = sess.clone();
        forged.login = "admin".into();
        let payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let tag = c.split_once('.').unwrap().1;
        assert_eq!(s.verify::<Session>("session", &format!("{payload}.{tag}")), None);
        assert!(s.check_csrf("x", &s.csrf("x")));
        assert!(!s.check_csrf("y", &s.csrf("x")));
    }

    #[test]
    fn only_local_returns() {
        assert_eq!(safe_return(Some("/ui?x=1")), "/ui?x=1");
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/a\nb",
            "/\\/x",
        ] {
            assert_eq!(safe_return(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_return(None), "/");
    }

    #[test]
    fn pkce_matches_rfc7636_example() {
        assert_eq!(
            oauth2::PkceCodeChallenge::from_code_verifier_sha256(&oauth2::PkceCodeVerifier::new(
                "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into()
            ))
            .as_str(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(http::header::COOKIE, "a=1; regate_session=abc.def".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc.def"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
