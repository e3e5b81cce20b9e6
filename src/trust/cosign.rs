//! cosign signatures made with a key: the simple-signing payload, the signature in a layer
//! annotation, verified against PEM public keys (EC P-256/P-384, RSA, Ed25519) with `ring`.
//!
//! The `sigstore` crate (0.15) would do this too, but it brings 130 crates this tree does not
//! have (a second RustCrypto generation, aws-lc-sys built from C, oci-client, openidconnect) for
//! the one key-based check below; measured with `cargo tree` on 2026-12-03.

use crate::types::names::Digest;
use base64::Engine as _;
use ring::signature::{self as sig, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;
use spki::der::asn1::ObjectIdentifier;

pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

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
