//! One error type for every answer a handler gives when it cannot do what was asked. It knows
//! which format its client reads: the registry API's `{"errors":[{code,message,detail}]}` with a
//! code from the distribution spec's table, the token endpoint's OAuth 2 error (which docker
//! shows from `details`), the JSON API's, or an HTML page for browsers. Handlers return
//! `Result<Resp, ApiError>`; the response is made here and only here.

use super::{full, set, Resp};
use ::http::{header, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;

/// The registry API's error codes (distribution's spec table), each with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A `Range` the upload cannot accept: 416 with the spec's `BLOB_UPLOAD_INVALID`.
    RangeInvalid,
    /// No such API endpoint: 404 with the spec's `UNSUPPORTED`.
    NotFound,
    ManifestTooLarge,
    TagInvalid,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::RangeInvalid => "BLOB_UPLOAD_INVALID",
            Code::NotFound => "UNSUPPORTED",
            Code::ManifestTooLarge => "SIZE_INVALID",
            Code::TagInvalid => "TAG_INVALID",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "UNKNOWN",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::BlobUnknown
            | Code::BlobUploadUnknown
            | Code::ManifestUnknown
            | Code::NameUnknown
            | Code::NotFound => StatusCode::NOT_FOUND,
            Code::BlobUploadInvalid
            | Code::DigestInvalid
            | Code::ManifestBlobUnknown
            | Code::ManifestInvalid
            | Code::NameInvalid
            | Code::SizeInvalid
            | Code::TagInvalid => StatusCode::BAD_REQUEST,
            Code::ManifestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::Denied => StatusCode::FORBIDDEN,
            Code::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            Code::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Code::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// How an error is written for the client that will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `/v2/`: `{"errors":[{"code","message","detail"}]}`, code from [`Code`].
    Registry(Code),
    /// `/token`: `{"error","error_description","details","errors":[…]}` (RFC 6749 §5.2; docker
    /// shows `details`).
    OAuth(&'static str),
    /// The JSON API: `{"error": message, "errors":[{"code","message"}]}`.
    Json(&'static str),
    /// A browser: a page with a title and one sentence.
    Html(String),
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub format: Format,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Overrides the format's default status (e.g. 404 for an unknown API path).
    pub status: Option<StatusCode>,
    headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    /// A registry API error (`/v2/`).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            format: Format::Registry(code),
            message: message.into(),
            detail: None,
            status: None,
            headers: Vec::new(),
        }
    }

    /// A token endpoint error: `error` is the OAuth 2 error code (`invalid_grant`, …).
    pub fn oauth(status: StatusCode, error: &'static str, details: impl Into<String>) -> Self {
        Self {
            format: Format::OAuth(error),
            status: Some(status),
            ..Self::new(Code::Unauthorized, details)
        }
    }

    /// A JSON API error with its code word (`UNAUTHORIZED`, `BAD_REQUEST`, …).
    pub fn json(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            format: Format::Json(code),
            status: Some(status),
            ..Self::new(Code::Internal, message)
        }
    }

    /// A browser page: a title and one sentence.
    pub fn html(status: StatusCode, title: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            format: Format::Html(title.into()),
            status: Some(status),
            ..Self::new(Code::Internal, text)
        }
    }

    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = Some(d);
        self
    }

    pub fn with_status(mut self, s: StatusCode) -> Self {
        self.status = Some(s);
        self
    }

    /// A header the answer carries (`WWW-Authenticate`, `Retry-After`, `Allow`).
    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The registry code, for registry errors.
    pub fn code(&self) -> Option<Code> {
        match self.format {
            Format::Registry(c) => Some(c),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(match &self.format {
            Format::Registry(c) => c.status(),
            Format::OAuth(_) => StatusCode::UNAUTHORIZED,
            Format::Json(_) | Format::Html(_) => StatusCode::BAD_REQUEST,
        })
    }

    /// The registry format's body (also what a registry error is logged and replayed as).
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Item<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a serde_json::Value>,
        }
        #[derive(Serialize)]
        struct Body<'a> {
            errors: [Item<'a>; 1],
        }
        let code = match &self.format {
            Format::Registry(c) => c.as_str(),
            Format::OAuth(_) => "UNAUTHORIZED",
            Format::Json(c) => c,
            Format::Html(_) => "UNKNOWN",
        };
        let item = Item {
            code,
            message: &self.message,
            detail: self.detail.as_ref(),
        };
        match &self.format {
            Format::Registry(_) => serde_json::to_vec(&Body { errors: [item] }),
            Format::OAuth(e) => serde_json::to_vec(&serde_json::json!({
                "error": e,
                "error_description": self.message,
                "details": self.message,
                "errors": [item],
            })),
            Format::Json(_) => serde_json::to_vec(&serde_json::json!({
                "error": self.message,
                "errors": [item],
            })),
            Format::Html(title) => Ok(super::html::message(title, &self.message).into_bytes()),
        }
        .unwrap_or_default()
    }

    pub fn into_response(self) -> Resp {
        let mut r = Resp::new(full(self.body()));
        *r.status_mut() = self.status();
        if let Format::Html(_) = self.format {
            super::html::page_headers(&mut r);
        } else {
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        for (k, v) in self.headers {
            set(&mut r, k, &v);
        }
        r
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.format {
            Format::Registry(c) => write!(f, "{}: {}", c.as_str(), self.message),
            Format::OAuth(e) => write!(f, "{e}: {}", self.message),
            Format::Json(c) => write!(f, "{c}: {}", self.message),
            Format::Html(t) => write!(f, "{t}: {}", self.message),
        }
    }
}

impl From<ApiError> for Resp {
    fn from(e: ApiError) -> Resp {
        e.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(e: ApiError) -> serde_json::Value {
        serde_json::from_slice(&e.body()).unwrap()
    }

    #[test]
    fn each_format_reads_as_its_clients_expect() {
        let r = body(ApiError::new(Code::NameInvalid, "bad name"));
        assert_eq!(r["errors"][0]["code"], "NAME_INVALID");
        assert!(r.get("error").is_none());
        let e = ApiError::oauth(StatusCode::UNAUTHORIZED, "invalid_grant", "wrong password");
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        let o = body(e);
        assert_eq!(
            (o["error"].as_str(), o["details"].as_str()),
            (Some("invalid_grant"), Some("wrong password"))
        );
        assert_eq!(o["errors"][0]["code"], "UNAUTHORIZED");
        let j = body(ApiError::json(StatusCode::NOT_FOUND, "NOT_FOUND", "no such token"));
        assert_eq!(
            (j["error"].as_str(), j["errors"][0]["code"].as_str()),
            (Some("no such token"), Some("NOT_FOUND"))
        );
        let h = ApiError::html(StatusCode::FORBIDDEN, "Denied", "<script>").with_header(header::RETRY_AFTER, "3");
        let r = h.into_response();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
        assert!(r.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }

    #[test]
    fn registry_codes_are_the_spec_table() {
        const SPEC: [&str; 15] = [
            "BLOB_UNKNOWN",
            "BLOB_UPLOAD_INVALID",
            "BLOB_UPLOAD_UNKNOWN",
            "DIGEST_INVALID",
            "MANIFEST_BLOB_UNKNOWN",
            "MANIFEST_INVALID",
            "MANIFEST_UNKNOWN",
            "NAME_INVALID",
            "NAME_UNKNOWN",
            "SIZE_INVALID",
            "UNAUTHORIZED",
            "DENIED",
            "UNSUPPORTED",
            "TOOMANYREQUESTS",
            // distribution's own, outside the OCI table but in its registry: TAG_INVALID,
            // UNAVAILABLE, UNKNOWN
            "TAG_INVALID",
        ];
        use Code::*;
        for c in [
            BlobUnknown,
            BlobUploadInvalid,
            BlobUploadUnknown,
            DigestInvalid,
            ManifestBlobUnknown,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            TooManyRequests,
            RangeInvalid,
            NotFound,
            ManifestTooLarge,
            TagInvalid,
        ] {
            assert!(SPEC.contains(&c.as_str()), "{:?} answers {}", c, c.as_str());
        }
        for c in [Unavailable, Internal] {
            assert!(["UNAVAILABLE", "UNKNOWN"].contains(&c.as_str()));
        }
    }
}
