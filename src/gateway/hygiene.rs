//! Stage 2: requests no well-behaved client sends are refused; hop-by-hop and identity headers
//! a client may not set are dropped.

use super::App;
use crate::http::{ApiError, Code};
use ::http::{header, HeaderName, Request, StatusCode};
use hyper::body::Incoming;

/// Headers that carry identity between a proxy and its backend; a client must never set them.
fn is_identity_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    n == "x-forwarded-user"
        || n == "x-forwarded-email"
        || n == "x-forwarded-groups"
        || n == "x-forwarded-preferred-username"
        || n == "x-forwarded-access-token"
        || n == "x-remote-user"
        || n == "x-remote-group"
        || n == "remote-user"
        || n.starts_with("x-auth-request-")
}

impl App {
    /// Refuses requests no well-behaved client sends and strips headers clients may not set.
    pub(super) fn hygiene(&self, req: &mut Request<Incoming>) -> Result<(), ApiError> {
        // a request no client of the spec sends: refused in the registry's format with the
        // spec's code for an operation it does not support
        let bad = |m: &str| Err(ApiError::new(Code::Unsupported, m).with_status(StatusCode::BAD_REQUEST));
        if req.version() < ::http::Version::HTTP_2 && req.uri().scheme().is_some() {
            return bad("absolute-form request targets are not accepted");
        }
        let h = req.headers();
        if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
            return bad("Content-Length and Transfer-Encoding together are not accepted");
        }
        if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
            return bad("duplicate Content-Length");
        }
        let path = req.uri().path();
        if !path.starts_with('/') || path.contains("//") || path.split('/').any(|s| s == ".." || s == ".") {
            // under /v2/ the name part is what is malformed: the spec's NAME_INVALID
            if path.starts_with("/v2/") {
                return Err(ApiError::new(
                    Code::NameInvalid,
                    "invalid repository name: empty, '.' or '..' path segments",
                ));
            }
            return bad("malformed path");
        }
        // hop-by-hop headers named in Connection, and identity headers, go no further
        let mut drop: Vec<HeaderName> = Vec::new();
        for v in req.headers().get_all(header::CONNECTION) {
            if let Ok(s) = v.to_str() {
                for n in s.split(',') {
                    if let Ok(name) = HeaderName::from_bytes(n.trim().as_bytes()) {
                        drop.push(name);
                    }
                }
            }
        }
        drop.extend(req.headers().keys().filter(|k| is_identity_header(k.as_str())).cloned());
        for n in drop {
            req.headers_mut().remove(n);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_headers() {
        for h in [
            "X-Forwarded-User",
            "x_forwarded_user",
            "X-Auth-Request-Email",
            "x_auth_request_user",
            "X-Remote-User",
        ] {
            assert!(is_identity_header(h), "{h}");
        }
        assert!(!is_identity_header("X-Forwarded-For"));
        assert!(!is_identity_header("Authorization"));
    }
}
