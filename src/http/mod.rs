//! HTTP plumbing shared by every handler: body types, small response builders, reading bodies
//! through limits and idle timeouts.

pub mod error;
pub mod html;
pub mod original;

pub use error::{ApiError, Code};

use ::http::{header, HeaderValue, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::io;
use std::time::Duration;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;
pub type Resp = Response<Body>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn stream(s: crate::types::ByteStream) -> Body {
    use futures_util::StreamExt;
    StreamBody::new(s.map(|r| r.map(Frame::data))).boxed_unsync()
}

pub fn status(code: StatusCode) -> Resp {
    let mut r = Response::new(empty());
    *r.status_mut() = code;
    r
}

/// A JSON answer. Serialisation of our own types cannot fail; if it somehow did, the client gets
/// an empty object rather than a panic.
pub fn json<T: serde::Serialize>(code: StatusCode, v: &T) -> Resp {
    let body = serde_json::to_vec(v).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Sets a header from a string we built; values that cannot be header values are skipped.
pub fn set(r: &mut Resp, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Io(io::Error),
    Idle,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("request body too large"),
            BodyError::Io(e) => write!(f, "reading request body: {e}"),
            BodyError::Idle => f.write_str("request body stalled"),
        }
    }
}

/// The request body as a stream of chunks, each waited for at most `idle`.
pub struct BodyReader {
    body: Incoming,
    idle: Duration,
    pub read: u64,
}

impl BodyReader {
    pub fn new(body: Incoming, idle: Duration) -> Self {
        Self { body, idle, read: 0 }
    }

    /// The next data chunk, or `None` at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, BodyError> {
        loop {
            let next = tokio::time::timeout(self.idle, self.body.frame())
                .await
                .map_err(|_| BodyError::Idle)?;
            match next {
                None => return Ok(None),
                Some(Err(e)) => return Err(BodyError::Io(io::Error::other(e))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if data.is_empty() {
                            continue;
                        }
                        self.read += data.len() as u64;
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// Reads the whole body, failing once it exceeds `limit` bytes.
    pub async fn read_all(mut self, limit: u64) -> Result<Bytes, BodyError> {
        let mut buf = bytes::BytesMut::new();
        while let Some(c) = self.chunk().await? {
            if buf.len() as u64 + c.len() as u64 > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&c);
        }
        Ok(buf.freeze())
    }
}

/// Query parameters in order, percent-decoded.
pub fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    q.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}
