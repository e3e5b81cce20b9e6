//! Typed names from the OCI distribution spec: repository names, tags, digests, references and
//! upload ids. Every value that reaches a handler or a storage key went through one of these
//! parsers, so nothing downstream ever sees `..`, `%2f`, an empty segment or an uppercase name.

use std::fmt;

/// Longest repository name accepted (distribution's limit, counting a `host:port/` prefix).
pub const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

impl RepoName {
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
    pub fn parse(s: &str) -> Option<Self> {
        if s.is_empty() || s.len() > MAX_NAME_LEN {
            return None;
        }
        if s.split('/').all(valid_component) {
            Some(Self(s.to_owned()))
        } else {
            None
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or "-+"
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !alnum(b[i]) {
            return false;
        }
    }
    true
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What each byte may be in a tag (`[A-Za-z0-9_][A-Za-z0-9_.-]*`): 2 anywhere, 1 after the
/// first byte only, 0 nowhere. One load per byte: a listing checks every name it reads.
const TAG_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || b == b'_' {
            t[c] = 2;
        } else if b == b'.' || b == b'-' {
            t[c] = 1;
        }
        c += 1;
    }
    t
};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    /// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
    pub fn parse(s: &str) -> Option<Self> {
        Self::valid(s).then(|| Self(s.to_owned()))
    }

    /// Whether `s` is a tag, without making one (a listing checks every name it reads). A valid
    /// tag never needs escaping in JSON.
    pub fn valid(s: &str) -> bool {
        let b = s.as_bytes();
        let Some((&first, rest)) = b.split_first() else {
            return false;
        };
        b.len() <= MAX_TAG_LEN
            && TAG_BYTE[usize::from(first)] == 2
            && rest.iter().all(|&c| TAG_BYTE[usize::from(c)] != 0)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    /// Every algorithm regate stores content under, canonical (sha256) first.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Sha512];

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(Algorithm::Sha256),
            "sha512" => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

/// `algorithm:encoded`, lower-case hex of the right length for a registered algorithm.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algo: Algorithm,
    hex: String,
}

impl Digest {
    pub fn parse(s: &str) -> Option<Self> {
        let (a, hex) = s.split_once(':')?;
        let algo = Algorithm::parse(a)?;
        let ok = hex.len() == algo.hex_len() && hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
        ok.then(|| Self {
            algo,
            hex: hex.to_owned(),
        })
    }
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self::from_sha256(sha2::Sha256::digest(bytes).into())
    }
    pub fn from_sha256(raw: [u8; 32]) -> Self {
        Self {
            algo: Algorithm::Sha256,
            hex: hex::encode(raw),
        }
    }
    /// The digest of `bytes` under algorithm `a`.
    pub fn of(a: Algorithm, bytes: &[u8]) -> Self {
        let mut h = Hasher::new(a);
        h.update(bytes);
        h.finish()
    }
    /// `algorithm:<hex>` for a name found in storage (a directory named by the hex part).
    pub fn from_hex(a: Algorithm, hex: &str) -> Option<Self> {
        Self::parse(&format!("{}:{hex}", a.as_str()))
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algo
    }
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo.as_str(), self.hex)
    }
}

/// A running hash under one of the [`Algorithm`]s, for content streamed in pieces.
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(a: Algorithm) -> Self {
        use sha2::Digest as _;
        match a {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    pub fn finish(self) -> Digest {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => Digest::from_sha256(h.finalize().into()),
            Hasher::Sha512(h) => Digest {
                algo: Algorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A manifest reference: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Option<Self> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

/// An upload session id as regate mints them (a UUID); anything else is rejected before storage.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn new() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }
    pub fn parse(s: &str) -> Option<Self> {
        uuid::Uuid::parse_str(s)
            .ok()
            .filter(|u| u.hyphenated().to_string() == s)
            .map(|_| Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for UploadId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names() {
        for ok in ["a", "library/ubuntu", "a.b/c_d/e__f/g-h/i---j", "0/1/2", "x9.y8"] {
            assert!(RepoName::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a/",
            "/a",
            "a//b",
            "a/../b",
            "a/./b",
            "..",
            "a_",
            "a___b",
            "a.-b",
            "-a",
            "a%2fb",
            "a b",
            "a:b",
            &"a".repeat(256),
        ] {
            assert!(RepoName::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tags() {
        assert!(Tag::parse("latest").is_some());
        assert!(Tag::parse("_x.Y-1").is_some());
        assert!(Tag::parse(&"a".repeat(128)).is_some());
        assert!(Tag::parse(&"a".repeat(129)).is_none());
        assert!(Tag::parse(".x").is_none());
        assert!(Tag::parse("-x").is_none());
        assert!(Tag::parse("a/b").is_none());
        assert!(Tag::parse("").is_none());
        // every byte, first and later, against the grammar written out
        let first = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        let later = |c: u8| first(c) || c == b'.' || c == b'-';
        for c in 0..=255u8 {
            let one = [c];
            let two = [b'a', c];
            for (bytes, want) in [(&one[..], first(c)), (&two[..], later(c))] {
                if let Ok(s) = std::str::from_utf8(bytes) {
                    assert_eq!(Tag::valid(s), want, "{bytes:?}");
                }
            }
        }
        assert!(!Tag::valid("aé"));
    }

    #[test]
    fn digests() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Digest::parse(&d).map(|d| d.to_string()), Some(d));
        assert!(Digest::parse(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(Digest::parse(&format!("sha256:{}", "a".repeat(63))).is_none());
        assert!(Digest::parse(&format!("md5:{}", "a".repeat(32))).is_none());
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_some());
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(Reference::parse("sha256:zz").is_none());
        // sha512 of "abc" (FIPS 180-2, appendix C.1)
        assert_eq!(
            Digest::of(Algorithm::Sha512, b"abc").to_string(),
            "sha512:ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
        assert_eq!(Digest::of(Algorithm::Sha256, b""), Digest::sha256_of(b""));
        assert!(Digest::from_hex(Algorithm::Sha512, &"0".repeat(128)).is_some());
        assert!(Digest::from_hex(Algorithm::Sha512, &"0".repeat(64)).is_none());
        assert!(matches!(Reference::parse("v1"), Some(Reference::Tag(_))));
    }

    #[test]
    fn upload_ids() {
        let id = UploadId::new();
        assert_eq!(UploadId::parse(id.as_str()), Some(id));
        assert!(UploadId::parse("../x").is_none());
        assert!(UploadId::parse("ABCDEF00-0000-0000-0000-000000000000").is_none());
    }
}
