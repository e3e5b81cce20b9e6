//! The request nginx describes to `/nginx/auth`, read as the next hop will read it.
//!
//! nginx forwards `X-Original-URI: $request_uri`, the target exactly as the client sent it,
//! while it picks the `location` on the decoded, normalised URI and passes the raw target on to
//! the registry, which decodes `%xx` itself. Deciding on the raw text would let `/v%32/...` or
//! `/%76%32/...` pass as "not a registry path". So the path is decoded once, as nginx and
//! distribution both do, and anything whose meaning could differ between hops is refused:
//! an encoded `/` (nginx decodes it, some registries keep it), `.`/`..` segments and empty
//! segments (nginx resolves or merges them, distribution redirects), a `%` left after decoding
//! (double encoding), a backslash, control characters and non-ASCII bytes.

/// Why an original URI is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Missing,
    NotAbsolutePath,
    BadEscape,
    EncodedSlash,
    DoubleEncoded,
    DotSegment,
    EmptySegment,
    BadByte,
}

impl Refused {
    pub fn message(self) -> &'static str {
        match self {
            Refused::Missing => "X-Original-URI is missing",
            Refused::NotAbsolutePath => "X-Original-URI is not an absolute path",
            Refused::BadEscape => "X-Original-URI has an invalid percent-escape",
            Refused::EncodedSlash => "X-Original-URI has an encoded '/' whose meaning differs between servers",
            Refused::DoubleEncoded => "X-Original-URI is percent-encoded twice",
            Refused::DotSegment => "X-Original-URI has '.' or '..' segments",
            Refused::EmptySegment => "X-Original-URI has an empty path segment",
            Refused::BadByte => "X-Original-URI has characters no registry path contains",
        }
    }
}

/// The decoded path and the raw query of an original request target.
#[derive(Debug, PartialEq, Eq)]
pub struct Original<'a> {
    pub path: String,
    pub query: Option<&'a str>,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Reads `X-Original-URI` (origin-form: `/path?query`) the way the registry behind nginx will.
pub fn parse(uri: Option<&str>) -> Result<Original<'_>, Refused> {
    let uri = uri.ok_or(Refused::Missing)?;
    let (raw, query) = match uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (uri, None),
    };
    // a fragment never reaches a server; one in the target is a client trying something
    if !raw.starts_with('/') || raw.contains('#') {
        return Err(Refused::NotAbsolutePath);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(Refused::BadEscape);
            };
            let d = h << 4 | l;
            match d {
                b'/' => return Err(Refused::EncodedSlash),
                b'%' => return Err(Refused::DoubleEncoded),
                _ => out.push(d),
            }
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|&b| !(0x21..0x7f).contains(&b) || b == b'\\') {
        return Err(Refused::BadByte);
    }
    // only ASCII from here on
    let path = String::from_utf8(out).map_err(|_| Refused::BadByte)?;
    let segs: Vec<&str> = path[1..].split('/').collect();
    for (n, s) in segs.iter().enumerate() {
        if *s == "." || *s == ".." {
            return Err(Refused::DotSegment);
        }
        // a trailing slash ("/v2/") is the one empty segment a registry path has
        if s.is_empty() && n + 1 != segs.len() {
            return Err(Refused::EmptySegment);
        }
    }
    Ok(Original { path, query })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(u: &str) -> Result<String, Refused> {
        parse(Some(u)).map(|o| o.path)
    }

    #[test]
    fn decodes_what_the_registry_decodes() {
        assert_eq!(path("/v2/").unwrap(), "/v2/");
        assert_eq!(path("/v%32/_catalog").unwrap(), "/v2/_catalog");
        assert_eq!(
            path("/%76%32/admin/secret/blobs/x").unwrap(),
            "/v2/admin/secret/blobs/x"
        );
        assert_eq!(path("/%56%32/x").unwrap(), "/V2/x");
        assert_eq!(path("/v2/a/blobs/sha256%3Aab").unwrap(), "/v2/a/blobs/sha256:ab");
        let o = parse(Some("/v2/a/blobs/uploads/?mount=sha256:1&from=b%2Fc")).unwrap();
        assert_eq!(o.query, Some("mount=sha256:1&from=b%2Fc"));
    }

    #[test]
    fn refuses_the_ambiguous() {
        assert_eq!(path("/v2%2F_catalog"), Err(Refused::EncodedSlash));
        assert_eq!(path("/v2%2f_catalog"), Err(Refused::EncodedSlash));
        assert_eq!(path("/v2/a/%2e%2e/b/tags/list"), Err(Refused::DotSegment));
        assert_eq!(path("/x/../v2/_catalog"), Err(Refused::DotSegment));
        assert_eq!(path("/v2/./_catalog"), Err(Refused::DotSegment));
        assert_eq!(path("/v2/a/%2E/b"), Err(Refused::DotSegment));
        assert_eq!(path("//v2/_catalog"), Err(Refused::EmptySegment));
        assert_eq!(path("/v2//_catalog"), Err(Refused::EmptySegment));
        assert_eq!(path("/%2576%2532/_catalog"), Err(Refused::DoubleEncoded));
        assert_eq!(path("/v2/%zz"), Err(Refused::BadEscape));
        assert_eq!(path("/v2/%4"), Err(Refused::BadEscape));
        assert_eq!(path("/v2\\_catalog"), Err(Refused::BadByte));
        assert_eq!(path("/v2/%5C_catalog"), Err(Refused::BadByte));
        assert_eq!(path("/v2/%00"), Err(Refused::BadByte));
        assert_eq!(path("/v2/a%20b"), Err(Refused::BadByte));
        assert_eq!(path("/v2/%C3%A9"), Err(Refused::BadByte));
        assert_eq!(path("v2/_catalog"), Err(Refused::NotAbsolutePath));
        assert_eq!(path("http://x/v2/_catalog"), Err(Refused::NotAbsolutePath));
        assert_eq!(path("/v2/_catalog#x"), Err(Refused::NotAbsolutePath));
        assert_eq!(parse(None), Err(Refused::Missing));
    }
}
