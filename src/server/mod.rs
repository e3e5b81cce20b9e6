//! Accepting connections: a bounded number at once, TLS handshakes with a deadline, HTTP/1.1
//! and HTTP/2 on the same port, graceful shutdown that drains in-flight requests.

mod guard;
pub mod tls;

use crate::http::Resp;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What the handler knows about the connection a request came on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub tls: bool,
}

/// What answers the requests: the gateway implements it; the server knows nothing else of it.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: hyper::Request<Incoming>, conn: ConnInfo) -> impl Future<Output = Resp> + Send;
}

pub struct ServeOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The `Strict-Transport-Security` value, added (on TLS) to the answers hyper writes itself.
    pub hsts: Option<String>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub shutdown_grace: Duration,
}

fn builder(header_timeout: Duration) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(128)
        .max_header_list_size(64 * 1024)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_frame_size(1 << 20)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and gives
/// in-flight requests `shutdown_grace` to finish.
pub async fn run<H: Handler>(
    listener: TcpListener,
    app: Arc<H>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let limit = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Arc::new(builder(opts.header_read_timeout));
    // header lines for the answers hyper writes by itself (see guard.rs)
    let extra: Arc<[u8]> = {
        let mut v = b"x-content-type-options: nosniff\r\n".to_vec();
        if let (Some(hsts), true) = (&opts.hsts, acceptor.is_some()) {
            v.extend_from_slice(b"strict-transport-security: ");
            v.extend_from_slice(hsts.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.into()
    };
    let first_request = opts.header_read_timeout;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        let hs_timeout = opts.handshake_timeout;
        let extra = extra.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let info = ConnInfo {
                peer,
                tls: acceptor.is_some(),
            };
            let requests = Arc::new(guard::Requests::default());
            let seen = requests.clone();
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                seen.started(req.version(), req.method() == ::http::Method::HEAD);
                let app = app.clone();
                async move { Ok::<_, Infallible>(app.handle(req, info).await) }
            });
            match acceptor {
                Some(acc) => {
                    let tls = match tokio::time::timeout(hs_timeout, acc.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %peer, "tls handshake timed out");
                            return;
                        }
                    };
                    let io = guard::Guarded::new(tls, requests, first_request, extra);
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let io = guard::Guarded::new(stream, requests, first_request, extra);
                    let conn = builder.serve_connection(TokioIo::new(io), svc);
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(opts.shutdown_grace) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

/// A plain-HTTP listener whose only job is to send clients to the HTTPS URL.
pub async fn run_redirect(listener: TcpListener, public_url: String, shutdown: impl Future<Output = ()>) {
    let builder = Arc::new(builder(Duration::from_secs(10)));
    let base = Arc::new(public_url);
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => return,
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
        };
        let base = base.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: hyper::Request<Incoming>| {
                let base = base.clone();
                async move {
                    // the target comes from public_url, never from the Host header
                    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    let pq = if pq.starts_with('/') { pq } else { "/" };
                    let mut r = crate::http::status(::http::StatusCode::PERMANENT_REDIRECT);
                    crate::http::set(&mut r, ::http::header::LOCATION, &format!("{base}{pq}"));
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
        });
    }
}
