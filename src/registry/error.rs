//! Registry errors: every failure of the `/v2/` API, each with its OCI code and HTTP status
//! decided in one place.

use ::http::StatusCode;
use serde::Serialize;

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

/// An error answer of the registry API: `{"errors":[{"code","message","detail"}]}`.
#[derive(Debug, Clone)]
pub struct RegistryError {
    pub code: Code,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    /// Overrides the code's default status (e.g. 404 for an unknown API path).
    pub status: Option<StatusCode>,
}

impl RegistryError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            status: None,
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
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| self.code.status())
    }
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
        serde_json::to_vec(&Body {
            errors: [Item {
                code: self.code.as_str(),
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        })
        .unwrap_or_default()
    }

    /// Storage failures: logged with their cause, answered without it.
    pub fn storage(e: std::io::Error) -> Self {
        if crate::storage::is_full(&e) {
            // answered as a full LFS quota is (507 DENIED), and shown by /readyz and /metrics
            tracing::warn!(error = %e, "storage is full");
            crate::storage::note_full(true);
            return Self::new(
                Code::Denied,
                "the registry's storage is full; nothing of this request was kept: retry once its operator has freed space",
            )
            .with_status(StatusCode::INSUFFICIENT_STORAGE);
        }
        tracing::error!(error = %e, "storage error");
        if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<crate::storage::Refused>()) {
            let code = match r.status {
                413 => Code::SizeInvalid,
                429 => Code::TooManyRequests,
                507 => Code::Denied,
                _ => Code::Unavailable,
            };
            let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return Self::new(code, r.message.clone()).with_status(status);
        }
        if crate::storage::is_unavailable(&e) {
            return Self::new(Code::Unavailable, "storage is unavailable or timed out; retry later");
        }
        Self::new(Code::Internal, "storage error; see the server log")
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl From<std::io::Error> for RegistryError {
    fn from(e: std::io::Error) -> Self {
        Self::storage(e)
    }
}

pub type Result<T, E = RegistryError> = std::result::Result<T, E>;
