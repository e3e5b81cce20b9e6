//! notation signatures (Notary Project, `notary.x509` scheme) in the JWS envelope: an OCI 1.1
//! referrer with artifactType `application/vnd.cncf.notary.signature` whose one layer
//! (`application/jose+json`) is a flattened JWS JSON serialisation. The leaf certificate in the
//! unprotected `x5c` must chain to one of the rule's roots with the code-signing EKU
//! (`rustls-webpki`, already in the tree for TLS), and sign `protected.payload` with the
//! protected header's `alg`. COSE envelopes are not verified (they do not count).

use crate::types::names::Digest;
use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::Deserialize;
use std::collections::HashMap;

pub const JWS: &str = "application/jose+json";
const PAYLOAD_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets.
const CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];
/// Protected headers this verifier understands (anything else in `crit` is refused).
const KNOWN_CRIT: &[&str] = &[
    "io.cncf.notary.signingScheme",
    "io.cncf.notary.expiry",
    "io.cncf.notary.authenticSigningTime",
];

/// Trusted root certificates of one rule.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    certs: Vec<CertificateDer<'static>>,
}

impl Roots {
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
        Ok(Roots { certs })
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

#[derive(Deserialize)]
struct Envelope {
    payload: String,
    protected: String,
    #[serde(default)]
    header: Unprotected,
    signature: String,
}

#[derive(Deserialize, Default)]
struct Unprotected {
    #[serde(default)]
    x5c: Vec<String>,
}

#[derive(Deserialize)]
struct Protected {
    alg: String,
    #[serde(default)]
    crit: Vec<String>,
    #[serde(default)]
    cty: String,
    #[serde(rename = "io.cncf.notary.signingScheme", default)]
    scheme: String,
    #[serde(rename = "io.cncf.notary.expiry", default)]
    expiry: Option<String>,
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

/// The leaf's subject if the envelope signs exactly `digest` with a certificate chaining to
/// `roots`; otherwise why not.
pub fn check(envelope: &[u8], digest: &Digest, roots: &Roots, now: u64) -> Result<String, &'static str> {
    let env: Envelope = serde_json::from_slice(envelope).map_err(|_| "notation envelope is not a JWS")?;
    let protected: Protected =
        serde_json::from_slice(&b64url(&env.protected)?).map_err(|_| "notation protected header unreadable")?;
    let payload: Payload = serde_json::from_slice(&b64url(&env.payload)?).map_err(|_| "notation payload unreadable")?;
    if protected.cty != PAYLOAD_TYPE {
        return Err("notation payload has another content type");
    }
    if payload.target.digest != digest.to_string() {
        return Err("signature payload names another digest");
    }
    if protected.crit.iter().any(|c| !KNOWN_CRIT.contains(&c.as_str())) {
        return Err("notation signature has unknown critical headers");
    }
    if protected.scheme != "notary.x509" && protected.scheme != "notary.x509.signingAuthority" {
        return Err("notation signing scheme not supported");
    }
    if let Some(e) = &protected.expiry {
        match rfc3339(e) {
            Some(t) if t > now as i64 => {}
            _ => return Err("notation signature expired"),
        }
    }
    let chain: Vec<CertificateDer<'static>> = env
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
    let Some((leaf, intermediates)) = chain.split_first() else {
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
    let sig = b64url(&env.signature)?;
    let (verifier, sig): (&dyn rustls_pki_types::SignatureVerificationAlgorithm, Vec<u8>) = match protected.alg.as_str()
    {
        "PS256" => (alg::RSA_PSS_2048_8192_SHA256_LEGACY_KEY, sig),
        "PS384" => (alg::RSA_PSS_2048_8192_SHA384_LEGACY_KEY, sig),
        "PS512" => (alg::RSA_PSS_2048_8192_SHA512_LEGACY_KEY, sig),
        "ES256" => (alg::ECDSA_P256_SHA256, ecdsa_der(&sig).ok_or("bad ECDSA signature")?),
        "ES384" => (alg::ECDSA_P384_SHA384, ecdsa_der(&sig).ok_or("bad ECDSA signature")?),
        _ => return Err("notation signature algorithm not supported"),
    };
    let signing_input = format!("{}.{}", env.protected, env.payload);
    leaf.verify_signature(verifier, signing_input.as_bytes(), &sig)
        .map_err(|_| "no signature from a trusted key")?;
    Ok("notation certificate".to_owned())
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

    #[test]
    fn garbage_is_refused() {
        let d = Digest::sha256_of(b"x");
        assert!(check(b"{}", &d, &Roots::default(), 0).is_err());
    }
}
