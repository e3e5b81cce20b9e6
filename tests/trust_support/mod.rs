//! Signature formats written from their specifications, independently of regate's code, for
//! tests/trust.rs: a small CBOR encoder (RFC 8949) and the Notary Project COSE envelope
//! (`signature-envelope-cose.md`), and sigstore bundles (protobuf-specs' `Bundle` in protojson,
//! DSSE's pre-authentication encoding). The raw signatures come from the caller (openssl).

use base64::Engine as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's docker-registry (distribution 2.8), as the upstream of upstream mode.
pub struct Distribution {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// docker-registry on a free port (picked by binding and releasing it), `extra` appended to
/// its configuration.
pub fn distribution(extra: &str) -> Distribution {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let root = dir.path().join("root");
    let cfg = format!(
        "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
        root.display()
    );
    std::fs::write(dir.path().join("config.yml"), cfg).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(dir.path().join("config.yml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry is installed by scripts/test-all.sh");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "docker-registry did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Distribution {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    }
}

/// A CBOR data item.
pub enum Cbor {
    Int(i64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    Tag(u64, Box<Cbor>),
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend([m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(n.to_be_bytes());
        }
    }
}

impl Cbor {
    pub fn text(s: &str) -> Cbor {
        Cbor::Text(s.to_owned())
    }

    /// Definite-length encoding, map entries in the order given.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Int(i) if *i >= 0 => head(out, 0, *i as u64),
            Cbor::Int(i) => head(out, 1, (-1 - *i) as u64),
            Cbor::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Cbor::Text(t) => {
                head(out, 3, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Cbor::Array(a) => {
                head(out, 4, a.len() as u64);
                for x in a {
                    x.write(out);
                }
            }
            Cbor::Map(m) => {
                head(out, 5, m.len() as u64);
                for (k, v) in m {
                    k.write(out);
                    v.write(out);
                }
            }
            Cbor::Tag(t, x) => {
                head(out, 6, *t);
                x.write(out);
            }
        }
    }
}

/// COSE algorithm ids (IANA): PS256 and ES256.
pub const PS256: i64 = -37;
pub const ES256: i64 = -7;

/// What a notation COSE envelope says besides its payload.
pub struct CoseHeaders<'a> {
    pub alg: i64,
    pub crit: &'a [&'a str],
    pub signing_time: u64,
    pub expiry: Option<u64>,
    /// Extra protected headers (name, text value).
    pub extra: &'a [(&'a str, &'a str)],
}

/// The protected header map of a Notary Project COSE envelope, encoded:
/// `{1: alg, 2: [crit...], 3: cty, "io.cncf.notary.signingScheme": "notary.x509",
///   "io.cncf.notary.signingTime": 1(t), ? "io.cncf.notary.expiry": 1(t), extra...}`.
pub fn cose_protected(h: &CoseHeaders) -> Vec<u8> {
    let mut m = vec![
        (Cbor::Int(1), Cbor::Int(h.alg)),
        (
            Cbor::Int(2),
            Cbor::Array(h.crit.iter().map(|c| Cbor::text(c)).collect()),
        ),
        (Cbor::Int(3), Cbor::text("application/vnd.cncf.notary.payload.v1+json")),
        (Cbor::text("io.cncf.notary.signingScheme"), Cbor::text("notary.x509")),
        (
            Cbor::text("io.cncf.notary.signingTime"),
            Cbor::Tag(1, Box::new(Cbor::Int(h.signing_time as i64))),
        ),
    ];
    if let Some(e) = h.expiry {
        m.push((
            Cbor::text("io.cncf.notary.expiry"),
            Cbor::Tag(1, Box::new(Cbor::Int(e as i64))),
        ));
    }
    for (k, v) in h.extra {
        m.push((Cbor::text(k), Cbor::text(v)));
    }
    Cbor::Map(m).encode()
}

/// RFC 9052's `Sig_structure` for COSE_Sign1: `["Signature1", protected, h'', payload]`.
pub fn cose_to_be_signed(protected: &[u8], payload: &[u8]) -> Vec<u8> {
    Cbor::Array(vec![
        Cbor::text("Signature1"),
        Cbor::Bytes(protected.to_vec()),
        Cbor::Bytes(vec![]),
        Cbor::Bytes(payload.to_vec()),
    ])
    .encode()
}

/// `COSE_Sign1_Tagged`: `18([protected, {33: [certs...], signingAgent}, payload, signature])`.
pub fn cose_envelope(protected: &[u8], chain: &[&[u8]], payload: &[u8], signature: &[u8]) -> Vec<u8> {
    Cbor::Tag(
        18,
        Box::new(Cbor::Array(vec![
            Cbor::Bytes(protected.to_vec()),
            Cbor::Map(vec![
                (
                    Cbor::Int(33),
                    Cbor::Array(chain.iter().map(|c| Cbor::Bytes(c.to_vec())).collect()),
                ),
                (Cbor::text("io.cncf.notary.signingAgent"), Cbor::text("openssl (test)")),
            ]),
            Cbor::Bytes(payload.to_vec()),
            Cbor::Bytes(signature.to_vec()),
        ])),
    )
    .encode()
}

/// The in-toto statement `cosign sign --new-bundle-format` signs for an image.
pub fn statement(digest: &str, predicate_type: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').unwrap();
    serde_json::to_vec(&serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"digest": {alg: hex}}],
        "predicateType": predicate_type,
        "predicate": {}
    }))
    .unwrap()
}

/// DSSE v1 pre-authentication encoding of an in-toto payload: what its signature is over.
pub fn dsse_pae(payload: &[u8]) -> Vec<u8> {
    let t = "application/vnd.in-toto+json";
    let mut v = format!("DSSEv1 {} {t} {} ", t.len(), payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// A key-signed v0.3 bundle holding a DSSE envelope (no transparency log entry).
pub fn bundle_dsse(payload: &[u8], sig: &[u8]) -> Vec<u8> {
    let b = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "dGVzdA=="}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": b.encode(payload),
            "payloadType": "application/vnd.in-toto+json",
            "signatures": [{"sig": b.encode(sig), "keyid": ""}]
        }
    }))
    .unwrap()
}

/// A key-signed v0.3 bundle holding a message signature over bytes whose SHA-256 is `sha256`.
pub fn bundle_message(sha256: &[u8], sig: &[u8]) -> Vec<u8> {
    let b = base64::engine::general_purpose::STANDARD;
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE,
        "verificationMaterial": {"publicKey": {"hint": "dGVzdA=="}},
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": b.encode(sha256)},
            "signature": b.encode(sig)
        }
    }))
    .unwrap()
}

#[test]
fn cbor_encodes_as_rfc8949_appendix_a() {
    assert_eq!(Cbor::Int(-38).encode(), [0x38, 0x25]);
    assert_eq!(Cbor::Int(1000).encode(), [0x19, 0x03, 0xe8]);
    assert_eq!(Cbor::text("a").encode(), [0x61, 0x61]);
    assert_eq!(
        Cbor::Tag(1, Box::new(Cbor::Int(1_363_896_240))).encode(),
        [0xc1, 0x1a, 0x51, 0x4b, 0x67, 0xb0]
    );
    assert_eq!(
        Cbor::Map(vec![(Cbor::Int(1), Cbor::Int(2))]).encode(),
        [0xa1, 0x01, 0x02]
    );
}
