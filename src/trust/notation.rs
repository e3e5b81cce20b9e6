//! notation signatures (Notary Project, `notary.x509` and `notary.x509.signingAuthority`
//! schemes): an OCI 1.1 referrer with artifactType `application/vnd.cncf.notary.signature` whose
//! one layer is the signature envelope, either a flattened JWS JSON serialisation
//! (`application/jose+json`) or a `COSE_Sign1_Tagged` object (`application/cose`, read with the
//! `coset` crate). Both are reduced to the same claims (algorithm, critical headers, content
//! type, scheme, expiry, payload, certificate chain, the bytes signed) and checked alike: the
//! payload's `targetArtifact.digest` must be exactly the manifest digest pulled, and the leaf
//! certificate (unprotected `x5c` / `x5chain`) must chain to one of the rule's roots with the
//! code-signing EKU (`rustls-webpki`, already in the tree for TLS) and sign the envelope with the
//! protected header's `alg`.

use crate::types::names::Digest;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use std::collections::HashMap;

pub const JWS: &str = "application/jose+json";
pub const COSE: &str = "application/cose";
const SIGNING_AUTHORITY: &str = "notary.x509.signingAuthority";
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Protected headers this verifier understands (anything else in `crit` is refused).
const KNOWN_CRIT: &[&str] = &[
    "io.cncf.notary.signingScheme",
    "io.cncf.notary.expiry",
    "io.cncf.notary.authenticSigningTime",
];

/// Trusted root certificates of one rule, and the identities its signers must have.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    certs: Vec<CertificateDer<'static>>,
    /// notation's `trustedIdentities` (subject attributes); empty: any signer under the roots.
    identities: Vec<Vec<(String, String)>>,
}

/// The subject attributes of a certificate that identities name (C, ST, L, O, OU, CN), with
/// their string values; `None` when the certificate cannot be read.
fn subject_of(der: &[u8]) -> Option<Vec<(&'static str, String)>> {
    use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
    use x509_cert::der::{Decode as _, Tag, Tagged as _};
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let mut out = Vec::new();
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            let key = match atv.oid.to_string().as_str() {
                "2.5.4.6" => "C",
                "2.5.4.8" => "ST",
                "2.5.4.7" => "L",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.3" => "CN",
                _ => continue,
            };
            let v = &atv.value;
            let val = match v.tag() {
                Tag::PrintableString => PrintableStringRef::try_from(v).ok().map(|s| s.as_str().to_owned()),
                Tag::Utf8String => Utf8StringRef::try_from(v).ok().map(|s| s.as_str().to_owned()),
                Tag::Ia5String => Ia5StringRef::try_from(v).ok().map(|s| s.as_str().to_owned()),
                Tag::TeletexString => TeletexStringRef::try_from(v).ok().map(|s| s.as_str().to_owned()),
                _ => None,
            };
            if let Some(val) = val {
                out.push((key, val));
            }
        }
    }
    Some(out)
}

impl Roots {
    /// With `identities` (notation's `trustedIdentities`), a signer counts only when its subject
    /// holds every attribute of one of them.
    pub fn with_identities(mut self, identities: &[String]) -> Result<Roots, String> {
        for id in identities {
            self.identities.push(crate::config::trust::parse_identity(id)?);
        }
        Ok(self)
    }

    /// Whether the signing certificate `leaf` is of an identity the rule trusts.
    fn trusts_identity(&self, leaf: &[u8]) -> bool {
        if self.identities.is_empty() {
            return true;
        }
        let Some(subject) = subject_of(leaf) else { return false };
        self.identities.iter().any(|id| {
            id.iter()
                .all(|(k, v)| subject.iter().any(|(sk, sv)| sk == k && sv == v))
        })
    }

    pub fn load(paths: &[std::path::PathBuf]) -> Result<Roots, String> {
        let mut certs = Vec::new();
        for p in paths {
            let found: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", p.display()))?;
            if found.is_empty() {
                return Err(format!("{}: no PEM certificate", p.display()));
            }
            for c in &found {
                webpki::anchor_from_trusted_cert(c)
                    .map_err(|e| format!("{}: not usable as a trust anchor ({e})", p.display()))?;
            }
            certs.extend(found);
        }
        Ok(Roots {
            certs,
            identities: Vec::new(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "targetArtifact")]
    target: Target,
}

#[derive(Deserialize)]
struct Target {
    digest: String,
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

fn b64url(s: &str) -> Result<Vec<u8>, &'static str> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "envelope field is not base64url")
}

/// ECDSA `r||s` (JWS) to the ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }` webpki verifies.
fn ecdsa_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.is_empty() || raw.len() % 2 != 0 || raw.len() > 132 {
        return None;
    }
    let int = |x: &[u8]| {
        let mut x = x;
        while x.len() > 1 && x[0] == 0 {
            x = &x[1..];
        }
        let mut v = vec![0x02];
        let pad = x[0] & 0x80 != 0;
        v.push((x.len() + usize::from(pad)) as u8);
        if pad {
            v.push(0);
        }
        v.extend_from_slice(x);
        v
    };
    let (r, s) = raw.split_at(raw.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30];
    if body.len() >= 0x80 {
        out.push(0x81);
    }
    out.push(body.len() as u8);
    out.extend(body);
    Some(out)
}

/// RFC 3339 `YYYY-MM-DDTHH:MM:SS...` to seconds since the epoch (UTC offsets honoured).
fn rfc3339(s: &str) -> Option<i64> {
    let days = crate::config::trust::parse_date(s.get(..10)?)?;
    let t = s.get(11..19)?;
    let mut hms = t.split(':').map(|p| p.parse::<i64>().ok());
    let secs = hms.next()?? * 3600 + hms.next()?? * 60 + hms.next()??;
    let rest = s
        .get(19..)?
        .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest {
        "Z" | "z" | "" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let hm = o.get(1..)?;
            let (h, m) = hm.split_once(':')?;
            sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60)
        }
    };
    Some(days * 86_400 + secs - offset)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
}

/// What an envelope claims, read but not yet trusted: the same facts for JWS and COSE.
struct Claimed {
    alg: Alg,
    /// Critical header names (a COSE integer label is written `#<n>`: never a known one).
    crit: Vec<String>,
    cty: String,
    scheme: String,
    /// Seconds since the epoch; `Err` when present but unreadable.
    expiry: Option<Result<i64, ()>>,
    /// Whether the signing time the scheme asks for is there.
    signing_time: bool,
    payload: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    /// The bytes the signature is over.
    signed: Vec<u8>,
    /// As the envelope holds it (ECDSA: `r||s`).
    signature: Vec<u8>,
}

#[derive(Deserialize)]
struct JwsEnvelope {
    payload: String,
    protected: String,
    #[serde(default)]
    header: JwsUnprotected,
    signature: String,
}

#[derive(Deserialize, Default)]
struct JwsUnprotected {
    #[serde(default)]
    x5c: Vec<String>,
}

#[derive(Deserialize)]
struct JwsProtected {
    alg: String,
    #[serde(default)]
    crit: Vec<String>,
    #[serde(default)]
    cty: String,
    #[serde(rename = "io.cncf.notary.signingScheme", default)]
    scheme: String,
    #[serde(rename = "io.cncf.notary.expiry", default)]
    expiry: Option<String>,
    #[serde(rename = "io.cncf.notary.signingTime", default)]
    signing_time: Option<serde_json::Value>,
    #[serde(rename = "io.cncf.notary.authenticSigningTime", default)]
    authentic_signing_time: Option<serde_json::Value>,
}

fn jws(envelope: &[u8]) -> Result<Claimed, &'static str> {
    let env: JwsEnvelope = serde_json::from_slice(envelope).map_err(|_| "notation envelope is not a JWS")?;
    let p: JwsProtected =
        serde_json::from_slice(&b64url(&env.protected)?).map_err(|_| "notation protected header unreadable")?;
    let alg = match p.alg.as_str() {
        "PS256" => Alg::Ps256,
        "PS384" => Alg::Ps384,
        "PS512" => Alg::Ps512,
        "ES256" => Alg::Es256,
        "ES384" => Alg::Es384,
        _ => return Err("notation signature algorithm not supported"),
    };
    let chain = env
        .header
        .x5c
        .iter()
        .map(|c| {
            base64::engine::general_purpose::STANDARD
                .decode(c)
                .map(CertificateDer::from)
        })
        .collect::<Result<_, _>>()
        .map_err(|_| "notation x5c is not base64")?;
    let signing_time = if p.scheme == SIGNING_AUTHORITY {
        p.authentic_signing_time.is_some()
    } else {
        p.signing_time.is_some()
    };
    Ok(Claimed {
        alg,
        crit: p.crit,
        cty: p.cty,
        scheme: p.scheme,
        expiry: p.expiry.map(|e| rfc3339(&e).ok_or(())),
        signing_time,
        payload: b64url(&env.payload)?,
        chain,
        signed: format!("{}.{}", env.protected, env.payload).into_bytes(),
        signature: b64url(&env.signature)?,
    })
}

/// An RFC 8949 epoch-based date/time (tag 1, or the bare number older signers wrote).
fn cbor_time(v: &coset::cbor::value::Value) -> Option<i64> {
    match v {
        coset::cbor::value::Value::Tag(1, inner) => cbor_time(inner),
        coset::cbor::value::Value::Integer(i) => i64::try_from(*i).ok(),
        coset::cbor::value::Value::Float(f) if f.is_finite() => Some(f.floor() as i64),
        _ => None,
    }
}

/// `x5chain` (label 33): an array of DER certificates, or one as a bare byte string.
fn x5chain(v: &coset::cbor::value::Value) -> Result<Vec<CertificateDer<'static>>, &'static str> {
    match v {
        coset::cbor::value::Value::Bytes(b) => Ok(vec![CertificateDer::from(b.clone())]),
        coset::cbor::value::Value::Array(a) => a
            .iter()
            .map(|c| match c {
                coset::cbor::value::Value::Bytes(b) => Ok(CertificateDer::from(b.clone())),
                _ => Err("notation x5chain holds something other than certificates"),
            })
            .collect(),
        _ => Err("notation x5chain unreadable"),
    }
}

fn cose(envelope: &[u8]) -> Result<Claimed, &'static str> {
    use coset::iana::{Algorithm as A, HeaderParameter};
    use coset::{Label, RegisteredLabel, RegisteredLabelWithPrivate as R, TaggedCborSerializable as _};
    let msg =
        coset::CoseSign1::from_tagged_slice(envelope).map_err(|_| "notation envelope is not a COSE_Sign1_Tagged")?;
    let h = &msg.protected.header;
    let alg = match &h.alg {
        Some(R::Assigned(A::PS256)) => Alg::Ps256,
        Some(R::Assigned(A::PS384)) => Alg::Ps384,
        Some(R::Assigned(A::PS512)) => Alg::Ps512,
        Some(R::Assigned(A::ES256)) => Alg::Es256,
        Some(R::Assigned(A::ES384)) => Alg::Es384,
        _ => return Err("notation signature algorithm not supported"),
    };
    let crit = h
        .crit
        .iter()
        .map(|c| match c {
            R::Text(t) => t.clone(),
            R::Assigned(p) => format!("#{}", *p as i64),
            R::PrivateUse(n) => format!("#{n}"),
        })
        .collect();
    let cty = match &h.content_type {
        Some(RegisteredLabel::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let text = |name: &str| h.rest.iter().find(|(l, _)| matches!(l, Label::Text(t) if t == name));
    let scheme = match text("io.cncf.notary.signingScheme") {
        Some((_, coset::cbor::value::Value::Text(s))) => s.clone(),
        _ => String::new(),
    };
    let expiry = text("io.cncf.notary.expiry").map(|(_, v)| cbor_time(v).ok_or(()));
    let time_label = if scheme == SIGNING_AUTHORITY {
        "io.cncf.notary.authenticSigningTime"
    } else {
        "io.cncf.notary.signingTime"
    };
    let signing_time = text(time_label).is_some_and(|(_, v)| cbor_time(v).is_some());
    // the chain is unprotected as a rule, but may be protected
    let x5 = Label::Int(HeaderParameter::X5Chain as i64);
    let chain = match h.rest.iter().chain(msg.unprotected.rest.iter()).find(|(l, _)| *l == x5) {
        Some((_, v)) => x5chain(v)?,
        None => vec![],
    };
    let payload = msg
        .payload
        .clone()
        .ok_or("notation COSE envelope has a detached payload")?;
    Ok(Claimed {
        alg,
        crit,
        cty,
        scheme,
        expiry,
        signing_time,
        payload,
        chain,
        signed: msg.tbs_data(b""),
        signature: msg.signature.clone(),
    })
}

/// The signer if the envelope (`media_type` [`JWS`] or [`COSE`]) signs exactly `digest` with a
/// certificate chaining to `roots`; otherwise why not.
pub fn check(
    envelope: &[u8],
    media_type: &str,
    digest: &Digest,
    roots: &Roots,
    now: u64,
) -> Result<String, &'static str> {
    let c = match media_type {
        JWS => jws(envelope)?,
        COSE => cose(envelope)?,
        _ => return Err("notation envelope type not supported"),
    };
    let payload: Payload = serde_json::from_slice(&c.payload).map_err(|_| "notation payload unreadable")?;
    if c.cty != PAYLOAD_TYPE {
        return Err("notation payload has another content type");
    }
    if payload.target.digest != digest.to_string() {
        return Err("signature payload names another digest");
    }
    if c.crit.iter().any(|h| !KNOWN_CRIT.contains(&h.as_str())) {
        return Err("notation signature has unknown critical headers");
    }
    let critical = |h: &str| c.crit.iter().any(|x| x == h);
    if c.scheme != "notary.x509" && c.scheme != SIGNING_AUTHORITY {
        return Err("notation signing scheme not supported");
    }
    if !critical("io.cncf.notary.signingScheme")
        || (c.scheme == SIGNING_AUTHORITY && !critical("io.cncf.notary.authenticSigningTime"))
        || (c.expiry.is_some() && !critical("io.cncf.notary.expiry"))
    {
        return Err("notation signature lacks a required critical header");
    }
    if !c.signing_time {
        return Err("notation signature has no signing time");
    }
    match c.expiry {
        Some(Ok(t)) if t > now as i64 => {}
        Some(_) => return Err("notation signature expired"),
        None => {}
    }
    let Some((leaf, intermediates)) = c.chain.split_first() else {
        return Err("notation signature without a certificate chain");
    };
    let leaf = webpki::EndEntityCert::try_from(leaf).map_err(|_| "notation signing certificate unreadable")?;
    let anchors: Vec<_> = roots
        .certs
        .iter()
        .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
        .collect();
    use webpki::ring as alg;
    let all: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
        alg::ECDSA_P256_SHA256,
        alg::ECDSA_P256_SHA384,
        alg::ECDSA_P384_SHA256,
        alg::ECDSA_P384_SHA384,
        alg::ED25519,
        alg::RSA_PKCS1_2048_8192_SHA256,
        alg::RSA_PKCS1_2048_8192_SHA384,
        alg::RSA_PKCS1_2048_8192_SHA512,
        alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
        alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
        alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    ];
    leaf.verify_for_usage(
        all,
        &anchors,
        intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
        webpki::KeyUsage::required(CODE_SIGNING),
        None,
        None,
    )
    .map_err(|_| "notation certificate does not chain to a trusted root")?;
    let (verifier, sig): (&dyn rustls_pki_types::SignatureVerificationAlgorithm, Vec<u8>) = match c.alg {
        Alg::Ps256 => (alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, c.signature),
        Alg::Ps384 => (alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY, c.signature),
        Alg::Ps512 => (alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY, c.signature),
        Alg::Es256 => (
            alg::ECDSA_P256_SHA256,
            ecdsa_der(&c.signature).ok_or("bad ECDSA signature")?,
        ),
        Alg::Es384 => (
            alg::ECDSA_P384_SHA384,
            ecdsa_der(&c.signature).ok_or("bad ECDSA signature")?,
        ),
    };
    leaf.verify_signature(verifier, &c.signed, &sig)
        .map_err(|_| "no signature from a trusted key")?;
    if !c.chain.first().is_some_and(|l| roots.trusts_identity(l.as_ref())) {
        return Err("notation signing certificate is not of a trusted identity");
    }
    Ok(match media_type {
        COSE => "notation certificate (COSE)".to_owned(),
        _ => "notation certificate".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_raw_to_der() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80;
        raw[63] = 1;
        let der = ecdsa_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 0x26, 0x02, 0x21]);
        assert_eq!(der[4], 0);
        assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x01]);
        assert!(ecdsa_der(&[1, 2, 3]).is_none());
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(rfc3339("1970-01-02T01:00:00.123+01:00"), Some(86_400));
        assert_eq!(rfc3339("nonsense"), None);
    }

    /// The Notary Project's COSE conformance vector (notation-core-go,
    /// `signature/cose/testdata/conformance.json`, `expectedOutput`): a `COSE_Sign1_Tagged`
    /// PS384 envelope over "hello COSE" with an expiry, an extended critical header and no chain.
    const CONFORMANCE: &str = "D284590115A80138250283781C696F2E636E63662E6E6F746172792E7369676E696E67536368656D6575696F2E636E63662E6E6F746172792E6578706972796E7369676E6564437269744B65793103782B6170706C69636174696F6E2F766E642E636E63662E6E6F746172792E7061796C6F61642E76312B6A736F6E6A7369676E65644B6579316C7369676E656456616C7565316E7369676E6564437269744B657931707369676E65644372697456616C75653175696F2E636E63662E6E6F746172792E6578706972791A63071444781A696F2E636E63662E6E6F746172792E7369676E696E6754696D651A6305C2C4781C696F2E636E63662E6E6F746172792E7369676E696E67536368656D656B6E6F746172792E78353039A1781B696F2E636E63662E6E6F746172792E7369676E696E674167656E74781D4E6F746174696F6E436F6E666F726D616E6365546573742F312E302E304A68656C6C6F20434F534559018031B6CB0CD9C974B39D603465811C2AA3D96A5DFF89F80B33CB4E321DC6E68A29B4BA65C00F0F9F22EE4376ABFAEC2CBA6FD21C6881ECAAB25775E3FB9226A88CF41660B2D6FD14184540D07DED3744E19FF9DBDD081E15C8F77BB6CA3072EF57141594FAD4EA57D206C6B8DD3A6E0A0A7ED764FF08DBCC439BD722E1B3D282921A579A3D860CCEEA37D633184F9316CB6B4FA4EA550DA5AD9E5BF3C2D768A787DA76E594290CB10B5B1EAD8B7E75967DE28E9FF429FE9DB814380608A15674F9741563902A620F312213D9DCE5C264017CBCB3BB4F8CEBEE0D5EF32B364F68C11CBA5630FAC8E3165D06FDEBACA095267223C552FE605B4529F25B65F8FA47B010B9096CEC275307E82B1062F660A73E07D0B85B978B4A59B5CDE51FC9A031B488A3DEB38FC312A64EF2EC1250238AE16CFEFC00D9AA1CEB938FE6DE51F265EEBE975C29F4CFF8AB0AFB40C45E8C985D17347BF20F455851C1A46AB655F51A159CF8910A424C5A8BBDD239E49E43A73C7B5174DE29E835063E5E64B459558DE5";

    #[test]
    fn the_spec_conformance_envelope_reads_as_published() {
        let env = hex::decode(CONFORMANCE).unwrap();
        let c = cose(&env).unwrap();
        assert_eq!(c.alg, Alg::Ps384);
        assert_eq!(
            c.crit,
            [
                "io.cncf.notary.signingScheme",
                "io.cncf.notary.expiry",
                "signedCritKey1"
            ]
        );
        assert_eq!(c.cty, PAYLOAD_TYPE);
        assert_eq!(c.scheme, "notary.x509");
        assert_eq!(c.expiry, Some(Ok(1_661_408_324)));
        assert!(c.signing_time);
        assert_eq!(c.payload, b"hello COSE");
        assert!(c.chain.is_empty());
        assert_eq!(c.signature.len(), 384);
        // Sig_structure = ["Signature1", <<protected>>, h'', <<payload>>], the protected bytes as sent
        let protected = &env[5..5 + 0x115];
        let mut tbs = vec![0x84, 0x6a];
        tbs.extend_from_slice(b"Signature1");
        tbs.extend_from_slice(&[0x59, 0x01, 0x15]);
        tbs.extend_from_slice(protected);
        tbs.push(0x40);
        tbs.push(0x4a);
        tbs.extend_from_slice(b"hello COSE");
        assert_eq!(c.signed, tbs);
        // an untagged COSE_Sign1 is not a notation envelope
        assert!(cose(&env[1..]).is_err());
        let d = Digest::sha256_of(b"x");
        assert_eq!(
            check(&env, COSE, &d, &Roots::default(), 0),
            Err("notation payload unreadable")
        );
    }

    /// A Notary Project COSE envelope made by another implementation
    /// (`tests/trust_support/pycose_fixture.py`): pycose 1.1 signing ES256 with a P-256 leaf
    /// and root made by Python's `cryptography` (valid 2026-2036), signing time 1780000000,
    /// over the descriptor of sha256("pycose fixture").
    const PYCOSE_ENVELOPE: &str = concat!(
        "d284589da501260281781c696f2e636e63662e6e6f746172792e7369676e696e67536368656d6503782b6170706c6963",
        "6174696f6e2f766e642e636e63662e6e6f746172792e7061796c6f61642e76312b6a736f6e781c696f2e636e63662e6e",
        "6f746172792e7369676e696e67536368656d656b6e6f746172792e78353039781a696f2e636e63662e6e6f746172792e",
        "7369676e696e6754696d65c11a6a18a500a2182182590155308201513081f8a003020102020102300a06082a8648ce3d",
        "04030230163114301206035504030c0b7079636f736520726f6f74301e170d3236303130313030303030305a170d3336",
        "303130313030303030305a30183116301406035504030c0d7079636f7365207369676e65723059301306072a8648ce3d",
        "020106082a8648ce3d030107034200042a4de84b5bcdf714eaaa476d4f20986247fbfbdeb803cdb26dd03408bd7ec2fe",
        "7c300faa56f17fae6e15bc5e2a654c531af1ebbeeb5bb831d096766d1ce88c93a3353033300c0603551d130101ff0402",
        "3000300e0603551d0f0101ff04040302078030130603551d25040c300a06082b06010505070303300a06082a8648ce3d",
        "040302034800304502203493de3f1cf412c774a8a758f2811ceb567af3d7a2f79b0d08511ff69eddf5b702210085621e",
        "add6b4fa678e8ba62a19f3de10679d5a7eb688131ad4e53b9c68cc7fe55901413082013d3081e4a00302010202010130",
        "0a06082a8648ce3d04030230163114301206035504030c0b7079636f736520726f6f74301e170d323630313031303030",
        "3030305a170d3336303130313030303030305a30163114301206035504030c0b7079636f736520726f6f743059301306",
        "072a8648ce3d020106082a8648ce3d030107034200040bdf530fef781ae4af3bd17aab2c04a49d6f7b46474551b090d4",
        "c8d0b65f60c48f23ca97884429bdc66f485e4388adc893cde8f03b6cabe9af4e9536580c5581a3233021300f0603551d",
        "130101ff040530030101ff300e0603551d0f0101ff040403020106300a06082a8648ce3d040302034800304502204e8d",
        "78403428cf2a9911596eef6586d46004bd13a564532bd34aa17d0d81926a022100af99b46cde9194dc974ca98443a6fd",
        "349643b951940d92dd02489598c04a0136781b696f2e636e63662e6e6f746172792e7369676e696e674167656e746670",
        "79636f736558b07b227461726765744172746966616374223a207b226d6564696154797065223a20226170706c696361",
        "74696f6e2f766e642e6f63692e696d6167652e6d616e69666573742e76312b6a736f6e222c2022646967657374223a20",
        "227368613235363a65666332643834396164353837326136336239613563356339643065363438343334646331643162",
        "313530373264363335333964303366353433643438633037222c202273697a65223a2031347d7d584092e1eb2d77019f",
        "d6bb4d0e72728044eb34d3ec9a4bbb866834e60085096f3b1b9b3fc5034a7004103ccadecc1692c96dcfc39c0d70d5f4",
        "403cf8ad24c4d85ab4",
    );
    const PYCOSE_ROOT: &str = "-----BEGIN CERTIFICATE-----
MIIBPTCB5KADAgECAgEBMAoGCCqGSM49BAMCMBYxFDASBgNVBAMMC3B5Y29zZSBy
b290MB4XDTI2MDEwMTAwMDAwMFoXDTM2MDEwMTAwMDAwMFowFjEUMBIGA1UEAwwL
cHljb3NlIHJvb3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQL31MP73ga5K87
0XqrLASknW97RkdFUbCQ1MjQtl9gxI8jypeIRCm9xm9IXkOIrciTzejwO2yr6a9O
lTZYDFWBoyMwITAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjAKBggq
hkjOPQQDAgNIADBFAiBOjXhANCjPKpkRWW7vZYbUYAS9E6VkUyvTSqF9DYGSagIh
AK+ZtGzekZTcl0yphEOm/TSWQ7lRlA2S3QJIlZjASgE2
-----END CERTIFICATE-----
";

    #[test]
    fn an_envelope_signed_by_pycose_verifies() {
        let env = hex::decode(PYCOSE_ENVELOPE).unwrap();
        let roots = Roots {
            certs: CertificateDer::pem_slice_iter(PYCOSE_ROOT.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            identities: Vec::new(),
        };
        let d = Digest::sha256_of(b"pycose fixture");
        assert_eq!(
            d.to_string(),
            "sha256:efc2d849ad5872a63b9a5c5c9d0e648434dc1d1b15072d63539d03f543d48c07"
        );
        let now = 1_780_000_000;
        assert_eq!(
            check(&env, COSE, &d, &roots, now),
            Ok("notation certificate (COSE)".to_owned())
        );
        assert_eq!(
            check(&env, COSE, &Digest::sha256_of(b"other"), &roots, now),
            Err("signature payload names another digest")
        );
        assert_eq!(
            check(&env, COSE, &d, &Roots::default(), now),
            Err("notation certificate does not chain to a trusted root")
        );
        // after the chain expired
        assert!(check(&env, COSE, &d, &roots, 2_200_000_000).is_err());
        let mut bad = env.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            check(&bad, COSE, &d, &roots, now),
            Err("no signature from a trusted key")
        );
    }

    #[test]
    fn garbage_is_refused() {
        let d = Digest::sha256_of(b"x");
        assert!(check(b"{}", JWS, &d, &Roots::default(), 0).is_err());
        assert!(check(b"{}", COSE, &d, &Roots::default(), 0).is_err());
        assert!(check(&[0xd2, 0x84], COSE, &d, &Roots::default(), 0).is_err());
    }
}
