//! A connection's transport as hyper sees it, with two guards hyper has no hook for:
//!
//! - **First-request deadline.** Until the first request has been handed to the service, every
//!   read races a deadline. hyper's own header timeout starts only once HTTP/1 has been detected,
//!   so without this a client that completes the TLS handshake and sends nothing, sends nothing at
//!   all, or stops inside the HTTP/2 preface would hold a connection slot for ever.
//! - **Security headers on hyper's own answers.** hyper answers a request head it cannot parse
//!   (400, 414, 431) by itself, without the service. Those answers get `Strict-Transport-Security`
//!   (over TLS) and `X-Content-Type-Options` like every other. To find them, the HTTP/1 response
//!   stream is framed as it is written (status line, headers, then the body by `Content-Length` or
//!   chunked framing); a response head that starts when every request given to the service has
//!   had its response is hyper's own. Bytes are never changed except by inserting header lines
//!   after such a status line; anything the framer does not understand (HTTP/2, an upgrade, a body
//!   delimited by close) switches it off for the rest of the connection.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// What the service tells the transport about the requests it was given.
#[derive(Default)]
pub struct Requests {
    first: AtomicBool,
    /// One entry per HTTP/1 request given to the service whose response head has not been
    /// written yet: whether it was a HEAD request (its response has no body).
    open: Mutex<VecDeque<bool>>,
}

/// More than hyper's one-at-a-time HTTP/1 can have open; a bound for the unexpected.
const MAX_OPEN: usize = 64;

impl Requests {
    /// Called by the service for every request, before it is handled.
    pub fn started(&self, version: http::Version, head: bool) {
        self.first.store(true, Ordering::Release);
        if version < http::Version::HTTP_2 {
            let mut q = self.open.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() < MAX_OPEN {
                q.push_back(head);
            }
        }
    }

    fn any_started(&self) -> bool {
        self.first.load(Ordering::Acquire)
    }

    /// The next open request's HEAD flag, or `None` when no request is waiting for a response.
    fn take(&self) -> Option<bool> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }
}

/// Where the writer is in the HTTP/1 response stream.
#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Reading a status line (the bytes so far in `Framer::line`).
    Status,
    /// A status line has been read; whose response it is has not been decided.
    Decide {
        code: u16,
    },
    /// Reading header lines of a response.
    Headers {
        code: u16,
        head_request: bool,
    },
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers,
    /// Not understood or no longer framed: bytes pass untouched.
    Off,
}

const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Debug)]
struct Framer {
    phase: Phase,
    line: Vec<u8>,
    length: Option<u64>,
    chunked: bool,
}

impl Framer {
    fn new() -> Self {
        Framer {
            phase: Phase::Status,
            line: Vec::new(),
            length: None,
            chunked: false,
        }
    }

    /// Takes bytes of a line; `Some(line)` (without CRLF) when it is complete.
    fn take_line(&mut self, data: &[u8], i: &mut usize) -> Option<Result<Vec<u8>, ()>> {
        let rest = &data[*i..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(p) => {
                self.line.extend_from_slice(&rest[..p]);
                *i += p + 1;
                let mut l = std::mem::take(&mut self.line);
                if l.last() == Some(&b'\r') {
                    l.pop();
                }
                Some(Ok(l))
            }
            None => {
                self.line.extend_from_slice(rest);
                *i = data.len();
                (self.line.len() > MAX_LINE).then_some(Err(()))
            }
        }
    }

    /// Advances over `data`, stopping early at a decision point; returns the bytes consumed.
    fn advance(&mut self, data: &[u8]) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.phase.clone() {
                Phase::Off => return data.len(),
                Phase::Decide { .. } => return i,
                Phase::Body(n) => {
                    let k = n.min((data.len() - i) as u64);
                    i += k as usize;
                    self.phase = if n == k { Phase::Status } else { Phase::Body(n - k) };
                }
                Phase::ChunkData(n) => {
                    let k = n.min((data.len() - i) as u64);
                    i += k as usize;
                    self.phase = if n == k {
                        Phase::ChunkEnd(2)
                    } else {
                        Phase::ChunkData(n - k)
                    };
                }
                Phase::ChunkEnd(n) => {
                    i += 1;
                    self.phase = if n == 1 {
                        Phase::ChunkSize
                    } else {
                        Phase::ChunkEnd(n - 1)
                    };
                }
                Phase::Status => match self.take_line(data, &mut i) {
                    None => {}
                    Some(Err(())) => self.phase = Phase::Off,
                    Some(Ok(l)) => self.phase = status_code(&l).map_or(Phase::Off, |code| Phase::Decide { code }),
                },
                Phase::Headers { code, head_request } => match self.take_line(data, &mut i) {
                    None => {}
                    Some(Err(())) => self.phase = Phase::Off,
                    Some(Ok(l)) if l.is_empty() => self.phase = self.body(code, head_request),
                    Some(Ok(l)) => self.header(&l),
                },
                Phase::ChunkSize => match self.take_line(data, &mut i) {
                    None => {}
                    Some(Err(())) => self.phase = Phase::Off,
                    Some(Ok(l)) => {
                        let hex = String::from_utf8_lossy(&l);
                        let size = hex.split(';').next().unwrap_or("").trim().to_owned();
                        self.phase = match u64::from_str_radix(&size, 16) {
                            Ok(0) => Phase::Trailers,
                            Ok(n) => Phase::ChunkData(n),
                            Err(_) => Phase::Off,
                        };
                    }
                },
                Phase::Trailers => match self.take_line(data, &mut i) {
                    None => {}
                    Some(Err(())) => self.phase = Phase::Off,
                    Some(Ok(l)) if l.is_empty() => self.phase = Phase::Status,
                    Some(Ok(_)) => {}
                },
            }
        }
        i
    }

    fn header(&mut self, line: &[u8]) {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            self.phase = Phase::Off;
            return;
        };
        let name = String::from_utf8_lossy(&line[..colon]).trim().to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..]).trim().to_ascii_lowercase();
        match name.as_str() {
            "content-length" => match value.parse() {
                Ok(n) => self.length = Some(n),
                Err(_) => self.phase = Phase::Off,
            },
            "transfer-encoding" => self.chunked = value.split(',').any(|t| t.trim() == "chunked"),
            _ => {}
        }
    }

    fn body(&mut self, code: u16, head_request: bool) -> Phase {
        let (length, chunked) = (self.length.take(), std::mem::take(&mut self.chunked));
        match code {
            101 => Phase::Off,
            100..=199 | 204 | 304 => Phase::Status,
            _ if head_request => Phase::Status,
            _ if chunked => Phase::ChunkSize,
            _ => match length {
                Some(0) => Phase::Status,
                Some(n) => Phase::Body(n),
                // delimited by closing the connection: nothing follows it
                None => Phase::Off,
            },
        }
    }

    /// Decides whose response the head just started is; `true` when it is hyper's own.
    fn decide(&mut self, requests: &Requests) -> bool {
        let Phase::Decide { code } = self.phase else {
            return false;
        };
        if (100..200).contains(&code) {
            self.phase = Phase::Headers {
                code,
                head_request: false,
            };
            return false;
        }
        match requests.take() {
            Some(head_request) => {
                self.phase = Phase::Headers { code, head_request };
                false
            }
            None => {
                self.phase = Phase::Headers {
                    code,
                    head_request: false,
                };
                true
            }
        }
    }
}

fn status_code(line: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(line).ok()?;
    let rest = s.strip_prefix("HTTP/1.1 ").or_else(|| s.strip_prefix("HTTP/1.0 "))?;
    let code = rest.get(..3)?.parse().ok()?;
    (100..1000).contains(&code).then_some(code)
}

/// The transport handed to hyper.
pub struct Guarded<T> {
    inner: T,
    requests: Arc<Requests>,
    deadline: Option<Pin<Box<Sleep>>>,
    framer: Framer,
    /// Header lines to put after hyper's own status line, and how much of them is written.
    extra: Arc<[u8]>,
    inject: Option<(Arc<[u8]>, usize)>,
}

impl<T> Guarded<T> {
    /// `first_request`: how long the connection may take to deliver its first request.
    /// `extra`: the header lines (each ending in CRLF) hyper's own answers get.
    pub fn new(inner: T, requests: Arc<Requests>, first_request: Duration, extra: Arc<[u8]>) -> Self {
        Guarded {
            inner,
            requests,
            deadline: Some(Box::pin(tokio::time::sleep(first_request))),
            framer: Framer::new(),
            extra,
            inject: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> Guarded<T> {
    /// Writes pending injected header lines and settles a pending decision; `Ready` when the
    /// next bytes of the caller may be written.
    fn settle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some((bytes, at)) = &mut self.inject {
                while *at < bytes.len() {
                    let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    *at += n;
                }
                self.inject = None;
            }
            if !matches!(self.framer.phase, Phase::Decide { .. }) {
                return Poll::Ready(Ok(()));
            }
            if self.framer.decide(&self.requests) && !self.extra.is_empty() {
                self.inject = Some((self.extra.clone(), 0));
            }
        }
    }

    /// How many of `len` bytes can be written before the next decision point.
    fn writable(&self, bufs: &[&[u8]]) -> usize {
        if self.framer.phase == Phase::Off {
            return usize::MAX;
        }
        let mut f = self.framer.clone();
        let mut total = 0;
        for b in bufs {
            let n = f.advance(b);
            total += n;
            if n < b.len() {
                break;
            }
        }
        total
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Guarded<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(d) = &mut this.deadline {
            if this.requests.any_started() {
                this.deadline = None;
            } else if d.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the first-request deadline",
                )));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Guarded<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.settle(cx))?;
        let limit = this.writable(&[buf]).min(buf.len()).max(1).min(buf.len());
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..limit]))?;
        this.framer.advance(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.settle(cx))?;
        let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
        let total: usize = slices.iter().map(|b| b.len()).sum();
        let limit = this.writable(&slices).min(total);
        let n = if limit >= total {
            ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?
        } else {
            // up to the decision point only; the caller writes the rest next time
            let mut cut = Vec::with_capacity(slices.len());
            let mut left = limit.max(1);
            for s in &slices {
                if left == 0 {
                    break;
                }
                let k = s.len().min(left);
                cut.push(IoSlice::new(&s[..k]));
                left -= k;
            }
            ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &cut))?
        };
        let mut left = n;
        for s in &slices {
            if left == 0 {
                break;
            }
            let k = s.len().min(left);
            this.framer.advance(&s[..k]);
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.settle(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.settle(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    const EXTRA: &[u8] = b"x-content-type-options: nosniff\r\n";

    /// Writes `parts` through a guard in pieces of `step` bytes and returns what came out.
    async fn through(parts: &[&[u8]], opened: &[bool], step: usize, vectored: bool) -> Vec<u8> {
        let requests = Arc::new(Requests::default());
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut g = Guarded::new(client, requests.clone(), Duration::from_secs(5), Arc::from(EXTRA));
        let mut opened = opened.iter();
        for p in parts {
            // a part that starts a response of the service: the service was called first
            if p.starts_with(b"HTTP/1.1 2") || p.starts_with(b"HTTP/1.1 3") {
                if let Some(h) = opened.next() {
                    requests.started(http::Version::HTTP_11, *h);
                }
            }
            for chunk in p.chunks(step) {
                if vectored {
                    let (a, b) = chunk.split_at(chunk.len() / 2);
                    let mut done = 0;
                    while done < chunk.len() {
                        let bufs = if done < a.len() {
                            vec![IoSlice::new(&a[done..]), IoSlice::new(b)]
                        } else {
                            vec![IoSlice::new(&b[done - a.len()..])]
                        };
                        done += g.write_vectored(&bufs).await.unwrap();
                    }
                } else {
                    g.write_all(chunk).await.unwrap();
                }
            }
        }
        g.shutdown().await.unwrap();
        drop(g);
        let mut out = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut server, &mut out)
            .await
            .unwrap();
        out
    }

    fn fixed() -> Vec<u8> {
        let body = b"HTTP/1.1 400 Bad Request\r\n\r\n0123456789a";
        [
            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
            body,
        ]
        .concat()
    }
    fn chunked() -> Vec<u8> {
        let chunk = b"HTTP/1.1 431 Too Large\r\nab";
        [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".as_slice(),
            format!("{:x}\r\n", chunk.len()).as_bytes(),
            chunk,
            b"\r\n0\r\n\r\n",
        ]
        .concat()
    }
    const HEAD_RESP: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 999\r\n\r\n";
    const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n";
    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";

    #[tokio::test]
    async fn only_hypers_own_answers_get_the_headers_whatever_the_write_sizes() {
        let (f, c) = (fixed(), chunked());
        let parts: [&[u8]; 5] = [&f, &c, HEAD_RESP, CONTINUE, CREATED];
        let mut expected: Vec<u8> = parts.concat();
        expected.extend_from_slice(b"HTTP/1.1 431 Request Header Fields Too Large\r\n");
        expected.extend_from_slice(EXTRA);
        expected.extend_from_slice(b"content-length: 0\r\ndate: x\r\n\r\n");
        let all: Vec<&[u8]> = parts.iter().copied().chain([HYPER_431]).collect();
        for step in [1, 2, 3, 7, 16, 64, 4096] {
            for vectored in [false, true] {
                let out = through(&all, &[false, false, true, false], step, vectored).await;
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&expected),
                    "step {step} vectored {vectored}"
                );
            }
        }
    }

    #[tokio::test]
    async fn a_first_answer_of_hyper_gets_them_and_http2_is_left_alone() {
        let out = through(&[HYPER_431], &[], 4096, false).await;
        assert!(out.windows(EXTRA.len()).any(|w| w == EXTRA));
        let h2 = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00HTTP/1.1 400 Bad Request\r\n\r\n";
        assert_eq!(through(&[h2], &[], 4096, false).await, h2);
    }

    #[tokio::test]
    async fn a_silent_connection_is_cut_at_the_deadline() {
        let (client, _server) = tokio::io::duplex(64);
        let mut g = Guarded::new(
            client,
            Arc::new(Requests::default()),
            Duration::from_millis(50),
            Arc::from(EXTRA),
        );
        let mut b = [0u8; 8];
        let e = tokio::io::AsyncReadExt::read(&mut g, &mut b).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
