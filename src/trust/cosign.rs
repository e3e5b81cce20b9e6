//! cosign signatures made with a key, verified against PEM public keys (EC P-256/P-384, RSA,
//! Ed25519) with `ring`, in the two forms cosign stores them:
//! - the tag scheme (`sha256-<hex>.sig`, or a `application/vnd.dev.cosign.artifact.sig.v1+json`
//!   referrer): the simple-signing payload as a layer, the signature in its annotation;
//! - a sigstore bundle referrer (`cosign sign --new-bundle-format`, cosign v3's default): the
//!   layer `application/vnd.dev.sigstore.bundle.v0.3+json` is the bundle's JSON, either a
//!   `dsseEnvelope` whose in-toto statement (predicate `https://sigstore.dev/cosign/sign/v1`, what
//!   `cosign sign` writes) names the manifest digest as its subject, or a `messageSignature` over
//!   the manifest bytes themselves (`cosign sign-blob` of the manifest). The bundle's
//!   verification material (transparency log entries, timestamps) is not consulted: the rule's
//!   keys are the trust.
//!
//! The `sigstore` crate (0.15) would do this too, but it brings crates this tree does not have:
//! 130 with the `cosign` feature, 93 with `verify` alone (the bundle verifier: openidconnect, a
//! second RustCrypto generation with p256 0.14 and ed25519-dalek 3; with TLS also aws-lc-sys or
//! openssl built from C), and its bundle verifier expects a Fulcio/Rekor trust root rather than a
//! bare key; measured with `cargo tree` on 2026-12-03.

use crate::types::names::Digest;
use base64::Engine as _;
use ring::signature::{self as sig, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;
use spki::der::asn1::ObjectIdentifier;
use std::collections::HashMap;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Layer media types of a sigstore bundle (v0.3 in both spellings the bundle spec allows).
pub const BUNDLE_LAYERS: &[&str] = &[
    "application/vnd.dev.sigstore.bundle.v0.3+json",
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
];
const INTOTO: &str = "application/vnd.in-toto+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
const STATEMENTS: &[&str] = &["https://in-toto.io/Statement/v1", "https://in-toto.io/Statement/v0.1"];

const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    P256,
    P384,
    Rsa,
    Ed25519,
}

/// A trusted public key.
#[derive(Debug, Clone)]
pub struct Key {
    kind: Kind,
    raw: Vec<u8>,
    /// Where it came from, for logs and the verdict.
    pub name: String,
}

impl Key {
    pub fn load(path: &std::path::Path) -> Result<Key, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Key::from_pem(&pem, &path.display().to_string())
    }

    pub fn from_pem(pem: &[u8], name: &str) -> Result<Key, String> {
        let der =
            SubjectPublicKeyInfoDer::from_pem_slice(pem).map_err(|e| format!("{name}: not a PEM PUBLIC KEY ({e})"))?;
        let spki = spki::SubjectPublicKeyInfoRef::try_from(der.as_ref())
            .map_err(|e| format!("{name}: bad SubjectPublicKeyInfo ({e})"))?;
        let oid = spki.algorithm.oid;
        let kind = if oid == EC_PUBLIC_KEY {
            let curve: ObjectIdentifier = spki
                .algorithm
                .parameters
                .and_then(|p| p.decode_as().ok())
                .ok_or_else(|| format!("{name}: EC key without a named curve"))?;
            if curve == P256 {
                Kind::P256
            } else if curve == P384 {
                Kind::P384
            } else {
                return Err(format!("{name}: EC curve {curve} is not supported (P-256, P-384)"));
            }
        } else if oid == RSA {
            Kind::Rsa
        } else if oid == ED25519 {
            Kind::Ed25519
        } else {
            return Err(format!("{name}: key algorithm {oid} is not supported"));
        };
        let raw = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| format!("{name}: key bits not byte-aligned"))?
            .to_vec();
        Ok(Key {
            kind,
            raw,
            name: name.to_owned(),
        })
    }

    /// Whether `signature` is this key's over `msg`: ECDSA (ASN.1 DER as cosign writes, or raw
    /// r||s) with SHA-256/384, RSA PKCS#1 v1.5 or PSS with SHA-256, Ed25519 over the message.
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        let algs: &[&'static dyn sig::VerificationAlgorithm] = match self.kind {
            Kind::P256 => &[&sig::ECDSA_P256_SHA256_ASN1, &sig::ECDSA_P256_SHA256_FIXED],
            Kind::P384 => &[&sig::ECDSA_P384_SHA384_ASN1, &sig::ECDSA_P384_SHA384_FIXED],
            Kind::Rsa => &[&sig::RSA_PKCS1_2048_8192_SHA256, &sig::RSA_PSS_2048_8192_SHA256],
            Kind::Ed25519 => &[&sig::ED25519],
        };
        algs.iter()
            .any(|a| UnparsedPublicKey::new(*a, &self.raw).verify(msg, signature).is_ok())
    }
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Whether a simple-signing payload names exactly `digest`.
pub fn payload_names(payload: &[u8], digest: &Digest) -> bool {
    match serde_json::from_slice::<Payload>(payload) {
        Ok(p) => {
            p.critical.kind.eq_ignore_ascii_case("cosign container image signature")
                && p.critical.image.digest == digest.to_string()
        }
        Err(_) => false,
    }
}

/// Why a candidate signature did not count, or the key that made it.
pub fn check(payload: &[u8], signature_b64: &str, digest: &Digest, keys: &[Key]) -> Result<String, &'static str> {
    if !payload_names(payload, digest) {
        return Err("signature payload names another digest");
    }
    let Ok(signature) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return Err("signature is not base64");
    };
    keys.iter()
        .find(|k| k.verify(payload, &signature))
        .map(|k| k.name.clone())
        .ok_or("no signature from a trusted key")
}

// The sigstore bundle, as protobuf-specs' `dev.sigstore.bundle.v1.Bundle` in its JSON form
// (protojson: camelCase names, bytes as base64).

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    #[serde(default)]
    media_type: String,
    message_signature: Option<MessageSignature>,
    dsse_envelope: Option<Dsse>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MessageSignature {
    message_digest: Option<HashOutput>,
    signature: String,
}

#[derive(Deserialize)]
struct HashOutput {
    algorithm: String,
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Dsse {
    payload: String,
    payload_type: String,
    #[serde(default)]
    signatures: Vec<DsseSignature>,
}

#[derive(Deserialize)]
struct DsseSignature {
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    #[serde(default)]
    subject: Vec<Subject>,
    #[serde(default)]
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: HashMap<String, String>,
}

/// protojson writes bytes as standard base64 with padding and reads the URL-safe alphabet too.
fn b64(s: &str) -> Result<Vec<u8>, &'static str> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let s = s.trim().trim_end_matches('=');
    STANDARD_NO_PAD
        .decode(s)
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        .map_err(|_| "sigstore bundle field is not base64")
}

/// DSSE's pre-authentication encoding: what a DSSE signature is over.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

/// Whether a statement's subject names exactly `digest`.
fn names(subjects: &[Subject], digest: &Digest) -> bool {
    subjects.iter().any(|s| {
        s.digest
            .get(digest.algorithm().as_str())
            .is_some_and(|h| h.eq_ignore_ascii_case(digest.hex()))
    })
}

/// The key that made a sigstore bundle over exactly `digest`, or why it does not count.
/// `manifest` gives the bytes of the manifest `digest` names (a `messageSignature` is over them).
pub fn check_bundle(bundle: &[u8], digest: &Digest, manifest: &[u8], keys: &[Key]) -> Result<String, &'static str> {
    let b: Bundle = serde_json::from_slice(bundle).map_err(|_| "sigstore bundle unreadable")?;
    if !b.media_type.starts_with("application/vnd.dev.sigstore.bundle") {
        return Err("sigstore bundle has another media type");
    }
    match (b.message_signature, b.dsse_envelope) {
        (Some(m), None) => {
            let Some(md) = m.message_digest else {
                return Err("sigstore bundle message signature names no digest");
            };
            let algorithm = match md.algorithm.as_str() {
                "SHA2_256" => "sha256",
                "SHA2_384" => "sha384",
                "SHA2_512" => "sha512",
                _ => return Err("sigstore bundle digest algorithm not supported"),
            };
            if algorithm != digest.algorithm().as_str() || hex::encode(b64(&md.digest)?) != digest.hex() {
                return Err("signature payload names another digest");
            }
            let sig = b64(&m.signature)?;
            keys.iter()
                .find(|k| k.verify(manifest, &sig))
                .map(|k| k.name.clone())
                .ok_or("no signature from a trusted key")
        }
        (None, Some(e)) => {
            if e.payload_type != INTOTO {
                return Err("sigstore bundle envelope is not an in-toto statement");
            }
            let payload = b64(&e.payload)?;
            let st: Statement = serde_json::from_slice(&payload).map_err(|_| "in-toto statement unreadable")?;
            if !STATEMENTS.contains(&st.kind.as_str()) {
                return Err("in-toto statement of an unknown type");
            }
            if st.predicate_type != SIGN_PREDICATE {
                return Err("sigstore bundle is an attestation, not a cosign signature");
            }
            if !names(&st.subject, digest) {
                return Err("signature payload names another digest");
            }
            let signed = pae(&e.payload_type, &payload);
            for s in e.signatures.iter().take(8) {
                let sig = b64(&s.sig)?;
                if let Some(k) = keys.iter().find(|k| k.verify(&signed, &sig)) {
                    return Ok(k.name.clone());
                }
            }
            Err("no signature from a trusted key")
        }
        _ => Err("sigstore bundle holds neither one message signature nor one envelope"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // openssl ecparam -genkey -name prime256v1 | openssl ec -pubout
    const P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEv3f1bwRz5fk2U7/aAK/1j8KnUpzL
Y8ouNAyBhyiaF3NP9v2IaDuvFsOa102xWLzvMdK41rxscNMvwxE3XHzxdA==
-----END PUBLIC KEY-----
";

    #[test]
    fn keys_parse_and_foreign_ones_do_not() {
        let k = Key::from_pem(P256_PUB.as_bytes(), "k").unwrap();
        assert_eq!(k.kind, Kind::P256);
        assert_eq!(k.raw.len(), 65);
        assert!(!k.verify(b"x", b"garbage"));
        assert!(Key::from_pem(b"nonsense", "n").is_err());
    }

    #[test]
    fn bundles_must_bind_the_digest_and_be_signatures() {
        use base64::engine::general_purpose::STANDARD;
        let d = Digest::sha256_of(b"m");
        let k = Key::from_pem(P256_PUB.as_bytes(), "k").unwrap();
        let dsse = |predicate: &str, subject: &Digest| {
            let st = format!(
                r#"{{"_type":"https://in-toto.io/Statement/v1","subject":[{{"digest":{{"sha256":"{}"}}}}],"predicateType":"{predicate}","predicate":{{}}}}"#,
                subject.hex()
            );
            format!(
                r#"{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","verificationMaterial":{{"publicKey":{{"hint":"x"}}}},"dsseEnvelope":{{"payload":"{}","payloadType":"application/vnd.in-toto+json","signatures":[{{"sig":"AAAA","keyid":""}}]}}}}"#,
                STANDARD.encode(st)
            )
        };
        let check = |b: String| check_bundle(b.as_bytes(), &d, b"m", std::slice::from_ref(&k));
        assert_eq!(check(dsse(SIGN_PREDICATE, &d)), Err("no signature from a trusted key"));
        assert_eq!(
            check(dsse(SIGN_PREDICATE, &Digest::sha256_of(b"other"))),
            Err("signature payload names another digest")
        );
        assert_eq!(
            check(dsse("https://slsa.dev/provenance/v1", &d)),
            Err("sigstore bundle is an attestation, not a cosign signature")
        );
        let msg = |digest: &[u8]| {
            format!(
                r#"{{"mediaType":"application/vnd.dev.sigstore.bundle.v0.3+json","messageSignature":{{"messageDigest":{{"algorithm":"SHA2_256","digest":"{}"}},"signature":"AAAA"}}}}"#,
                STANDARD.encode(digest)
            )
        };
        let raw = hex::decode(d.hex()).unwrap();
        assert_eq!(check(msg(&raw)), Err("no signature from a trusted key"));
        assert_eq!(check(msg(&[0; 32])), Err("signature payload names another digest"));
        assert!(check("{}".into()).is_err());
        assert_eq!(pae("t", b"ab"), b"DSSEv1 1 t 2 ab");
    }

    #[test]
    fn payload_must_name_the_digest() {
        let d = Digest::sha256_of(b"m");
        let p = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/x"}},"image":{{"docker-manifest-digest":"{d}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        assert!(payload_names(p.as_bytes(), &d));
        assert!(!payload_names(p.as_bytes(), &Digest::sha256_of(b"other")));
        assert!(!payload_names(b"{}", &d));
        let k = Key::from_pem(P256_PUB.as_bytes(), "k").unwrap();
        assert_eq!(
            check(p.as_bytes(), "AAAA", &d, &[k]),
            Err("no signature from a trusted key")
        );
    }
}
