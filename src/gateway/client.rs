//! Stage 1: the client's address (behind trusted proxies: from one forwarding header, walked
//! from the right) and the allowlist.

use super::App;
use ::http::{header, HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct NetLists {
    pub allow: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// The one header that carries the client address (`network.client_address_header`);
    /// `None`: `Forwarded` or `X-Forwarded-For`, whichever the proxy sent.
    pub client_header: Option<HeaderName>,
}

impl NetLists {
    pub fn from_config(c: &crate::config::NetworkConfig) -> Self {
        NetLists {
            allow: c.allow.clone(),
            trusted_proxies: c.trusted_proxies.clone(),
            client_header: c
                .client_address_header
                .as_deref()
                .and_then(|h| HeaderName::from_bytes(h.trim().as_bytes()).ok()),
        }
    }
}

/// The address a request is treated as coming from when its forwarding header names no
/// address that can be read: it is in no allowlist (unless everything is allowed).
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// The client behind trusted proxies. Only a trusted peer's forwarding header is read, and only
/// one header: the configured one, else `Forwarded` (RFC 7239) or `X-Forwarded-For`, whichever is
/// present; when both are present and name different clients, neither can be believed (one of
/// them was written by the client) and the client is [`UNKNOWN_CLIENT`]. The list is walked from
/// the right (the entry the nearest proxy added) to the first address that is not a trusted
/// proxy; an entry that cannot be read ends the walk there, as [`UNKNOWN_CLIENT`].
pub fn forwarded_client(net: &NetLists, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
    let peer = normalize(peer);
    let trusted = |ip: &IpAddr| net.trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let walk = |chain: Vec<Option<IpAddr>>| {
        let mut client = peer;
        for entry in chain.into_iter().rev() {
            let Some(ip) = entry else { return UNKNOWN_CLIENT };
            client = normalize(ip);
            if !trusted(&client) {
                break;
            }
        }
        client
    };
    let forwarded = HeaderName::from_static("forwarded");
    let xff = HeaderName::from_static("x-forwarded-for");
    match &net.client_header {
        Some(h) => match address_chain(headers, h) {
            Some(c) => walk(c),
            None => peer,
        },
        None => match (address_chain(headers, &forwarded), address_chain(headers, &xff)) {
            (None, None) => peer,
            (Some(c), None) | (None, Some(c)) => walk(c),
            (Some(f), Some(x)) => {
                let (a, b) = (walk(f), walk(x));
                if a == b {
                    a
                } else {
                    UNKNOWN_CLIENT
                }
            }
        },
    }
}

/// The addresses a forwarding header lists, left to right (`None` for an entry that is not an
/// address); `None` when the header is absent.
fn address_chain(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<Option<IpAddr>>> {
    let mut values = headers.get_all(name).iter().peekable();
    values.peek()?;
    let rfc7239 = name == header::FORWARDED;
    let mut chain = Vec::new();
    for v in values {
        let Ok(s) = v.to_str() else {
            chain.push(None);
            continue;
        };
        for elem in s.split(',') {
            if rfc7239 {
                let for_value = elem.split(';').find_map(|pair| {
                    let (k, val) = pair.trim().split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| val.trim().trim_matches('"'))
                });
                chain.push(for_value.and_then(parse_addr));
            } else {
                chain.push(parse_addr(elem.trim()));
            }
        }
    }
    Some(chain)
}

fn normalize(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl App {
    /// The real client address: the TCP peer, or, when the peer is a trusted proxy, what the
    /// proxies' forwarding header says (see [`forwarded_client`]).
    pub fn client_ip(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        forwarded_client(&self.net.get(), headers, peer)
    }

    pub(super) fn allowed_ip(&self, ip: IpAddr) -> bool {
        let net = self.net.get();
        net.allow.is_empty() || net.allow.iter().any(|n| n.contains(&ip))
    }
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    // "[v6]:port", "v4:port", "[v6]"
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn client_address_from_one_header_walked_from_the_right() {
        let net = NetLists {
            allow: vec![],
            trusted_proxies: vec!["127.0.0.1/32".parse().unwrap(), "10.9.0.0/16".parse().unwrap()],
            client_header: None,
        };
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let c = |h: &[(&str, &str)]| forwarded_client(&net, &headers(h), proxy);
        // an untrusted peer's headers are never read
        assert_eq!(
            forwarded_client(&net, &headers(&[("x-forwarded-for", "10.0.0.1")]), ip("192.0.2.7")),
            ip("192.0.2.7")
        );
        assert_eq!(c(&[]), proxy);
        assert_eq!(c(&[("x-forwarded-for", "10.0.0.1")]), ip("10.0.0.1"));
        // the client's own entries sit left of the proxies' and are never reached
        assert_eq!(
            c(&[("x-forwarded-for", "127.0.0.9, 10.0.0.1, 10.9.1.1")]),
            ip("10.0.0.1")
        );
        assert_eq!(
            c(&[("x-forwarded-for", "127.0.0.9"), ("x-forwarded-for", "10.0.0.1")]),
            ip("10.0.0.1")
        );
        assert_eq!(c(&[("forwarded", "for=10.0.0.1;proto=https")]), ip("10.0.0.1"));
        assert_eq!(c(&[("forwarded", r#"for="[2001:db8::1]:4711""#)]), ip("2001:db8::1"));
        // two headers naming different clients: one of them is the client's own
        assert_eq!(
            c(&[("forwarded", "for=10.0.0.1"), ("x-forwarded-for", "127.0.0.9")]),
            UNKNOWN_CLIENT
        );
        assert_eq!(
            c(&[("forwarded", "for=127.0.0.9"), ("x-forwarded-for", "10.0.0.1")]),
            UNKNOWN_CLIENT
        );
        assert_eq!(
            c(&[("forwarded", "for=10.0.0.1"), ("x-forwarded-for", "10.0.0.1")]),
            ip("10.0.0.1")
        );
        // an entry that is not an address ends the walk: the client is unknown, not the entry left of it
        assert_eq!(c(&[("x-forwarded-for", "127.0.0.9, unknown")]), UNKNOWN_CLIENT);
        assert_eq!(c(&[("x-forwarded-for", "127.0.0.9, ")]), UNKNOWN_CLIENT);
        assert_eq!(c(&[("forwarded", "for=127.0.0.9, for=_hidden")]), UNKNOWN_CLIENT);
        assert_eq!(c(&[("forwarded", "for=127.0.0.9, proto=https")]), UNKNOWN_CLIENT);
        // a named header is the only one read
        let named = NetLists {
            client_header: Some(HeaderName::from_static("x-real-ip")),
            ..net.clone()
        };
        let h = headers(&[("x-real-ip", "10.0.0.3"), ("x-forwarded-for", "127.0.0.9")]);
        assert_eq!(forwarded_client(&named, &h, proxy), ip("10.0.0.3"));
        assert_eq!(
            forwarded_client(&named, &headers(&[("x-forwarded-for", "10.0.0.1")]), proxy),
            proxy
        );
    }

    #[test]
    fn addrs() {
        assert_eq!(parse_addr("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_addr("10.0.0.1:443"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(parse_addr("[2001:db8::1]:80"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_addr("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(parse_addr("unknown"), None);
    }
}
