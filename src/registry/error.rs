//! Registry errors: every failure of the `/v2/` API is an [`ApiError`] in the registry format,
//! its code from the spec's table ([`Code`]). Storage failures become answers here.

pub use crate::http::error::{ApiError, Code};
use ::http::StatusCode;

/// Storage failures: logged with their cause, answered without it.
pub fn storage(e: std::io::Error) -> ApiError {
    if crate::storage::is_full(&e) {
        // answered as a full LFS quota is (507 DENIED), and shown by /readyz and /metrics
        tracing::warn!(error = %e, "storage is full");
        crate::storage::note_full(true);
        return ApiError::new(
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
        return ApiError::new(code, r.message.clone()).with_status(status);
    }
    if crate::storage::is_unavailable(&e) {
        return ApiError::new(Code::Unavailable, "storage is unavailable or timed out; retry later");
    }
    ApiError::new(Code::Internal, "storage error; see the server log")
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        storage(e)
    }
}
