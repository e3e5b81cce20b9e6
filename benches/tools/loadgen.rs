//! A small closed-loop HTTP/1.1 load generator for benches/compare.py: N keep-alive connections
//! (plain or TLS with a given CA), each sending the same request again as soon as the answer is
//! in, for D seconds. Prints one JSON line: requests, errors, req/s, p50/p99 latency in ms.
//! wrk 4.1 (Debian) cannot do HEAD (it waits for a body that never comes), hence this.
//!
//!   loadgen --url https://127.0.0.1:5000/v2/x/manifests/v1 [--method HEAD] [-H 'K: V']...
//!           [--connections 16] [--threads 2] [--duration 5] [--ca ca.pem]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    url: String,
    method: String,
    headers: Vec<String>,
    connections: usize,
    threads: usize,
    duration: f64,
    ca: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        url: String::new(),
        method: "GET".into(),
        headers: vec![],
        connections: 1,
        threads: 1,
        duration: 5.0,
        ca: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v(),
            "--method" => a.method = v(),
            "-H" | "--header" => a.headers.push(v()),
            "-c" | "--connections" => a.connections = v().parse().unwrap(),
            "-t" | "--threads" => a.threads = v().parse().unwrap(),
            "-d" | "--duration" => a.duration = v().parse().unwrap(),
            "--ca" => a.ca = Some(v()),
            _ => panic!("unknown argument {k}"),
        }
    }
    assert!(!a.url.is_empty(), "--url is required");
    a
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Target {
    tls: Option<tokio_rustls::TlsConnector>,
    addr: String,
    host: String,
    request: Vec<u8>,
    head: bool,
}

async fn connect(t: &Target) -> std::io::Result<Box<dyn Io>> {
    let tcp = TcpStream::connect(&t.addr).await?;
    tcp.set_nodelay(true)?;
    match &t.tls {
        None => Ok(Box::new(tcp)),
        Some(c) => {
            let ip: std::net::IpAddr = t.host.parse().expect("TLS targets are given by IP address");
            Ok(Box::new(c.connect(ServerName::IpAddress(ip.into()), tcp).await?))
        }
    }
}

fn find(h: &[u8], needle: &[u8]) -> Option<usize> {
    h.windows(needle.len()).position(|w| w == needle)
}

/// Reads one response; returns its status. `buf` keeps what was read past it.
async fn response(io: &mut Box<dyn Io>, buf: &mut Vec<u8>, head: bool) -> std::io::Result<u16> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed");
    let end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 16384];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    if text.contains("\r\ntransfer-encoding: chunked") {
        return Err(std::io::Error::other("chunked answers are not supported"));
    }
    let len: usize = if head || status == 204 || status == 304 {
        0
    } else {
        text.split("\r\n")
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    while buf.len() < end + len {
        let mut chunk = [0u8; 16384];
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(eof());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    buf.drain(..end + len);
    Ok(status)
}

#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: u64,
    non2xx: u64,
    /// non-2xx answers by status, and failures by what went wrong
    statuses: std::collections::BTreeMap<u16, u64>,
    failures: std::collections::BTreeMap<String, u64>,
}

async fn worker(t: Arc<Target>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Box<dyn Io>> = None;
    let mut buf = Vec::with_capacity(16384);
    while Instant::now() < deadline {
        if conn.is_none() {
            match connect(&t).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tally.errors += 1;
                    *tally.failures.entry(format!("connect: {e}")).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            buf.clear();
        }
        let io = conn.as_mut().unwrap();
        let t0 = Instant::now();
        let r = async {
            io.write_all(&t.request).await?;
            io.flush().await?;
            response(io, &mut buf, t.head).await
        };
        match tokio::time::timeout(Duration::from_secs(5), r).await {
            Ok(Ok(status)) => {
                tally.lat_us.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
                if !(200..400).contains(&status) {
                    tally.non2xx += 1;
                    *tally.statuses.entry(status).or_default() += 1;
                }
            }
            Ok(Err(e)) => {
                tally.errors += 1;
                *tally.failures.entry(e.to_string()).or_default() += 1;
                conn = None;
            }
            Err(_) => {
                tally.errors += 1;
                *tally.failures.entry("no answer in 5 s".into()).or_default() += 1;
                conn = None;
            }
        }
    }
    tally
}

fn main() {
    let a = args();
    let (tls, rest) = if let Some(r) = a.url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = a.url.strip_prefix("http://") {
        (false, r)
    } else {
        panic!("--url must start with http:// or https://")
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h).to_owned();
    let addr = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let mut req = format!("{} {path} HTTP/1.1\r\nHost: {authority}\r\n", a.method);
    for h in &a.headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let connector = tls.then(|| {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &a.ca {
            for c in CertificateDer::pem_file_iter(ca).expect("--ca file") {
                roots.add(c.expect("PEM certificate")).expect("CA certificate");
            }
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    });
    let target = Arc::new(Target {
        tls: connector,
        addr,
        host,
        request: req.into_bytes(),
        head: a.method.eq_ignore_ascii_case("HEAD"),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.duration);
    let tallies = rt.block_on(async {
        let tasks: Vec<_> = (0..a.connections.max(1))
            .map(|_| tokio::spawn(worker(target.clone(), deadline)))
            .collect();
        let mut out = vec![];
        for t in tasks {
            out.push(t.await.expect("worker"));
        }
        out
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat: Vec<u32> = tallies.iter().flat_map(|t| t.lat_us.iter().copied()).collect();
    lat.sort_unstable();
    let pct = |p: f64| -> Option<f64> {
        if lat.is_empty() {
            return None;
        }
        let i = ((p / 100.0) * lat.len() as f64).ceil() as usize;
        Some(f64::from(lat[i.clamp(1, lat.len()) - 1]) / 1000.0)
    };
    let out = serde_json::json!({
        "requests": lat.len(),
        "errors": tallies.iter().map(|t| t.errors).sum::<u64>(),
        "non2xx": tallies.iter().map(|t| t.non2xx).sum::<u64>(),
        "seconds": elapsed,
        "rps": lat.len() as f64 / elapsed,
        "p50_ms": pct(50.0),
        "p90_ms": pct(90.0),
        "p99_ms": pct(99.0),
        "max_ms": lat.last().map(|v| f64::from(*v) / 1000.0),
        "statuses": tallies.iter().fold(std::collections::BTreeMap::<String, u64>::new(), |mut m, t| {
            for (k, v) in &t.statuses {
                *m.entry(k.to_string()).or_default() += v;
            }
            m
        }),
        "failures": tallies.iter().fold(std::collections::BTreeMap::<String, u64>::new(), |mut m, t| {
            for (k, v) in &t.failures {
                *m.entry(k.clone()).or_default() += v;
            }
            m
        }),
    });
    println!("{out}");
}
