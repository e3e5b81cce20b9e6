//! Docker token-auth JWTs: issued by `/token`, verified on every `/v2/` request, and accepted by
//! any standard registry configured with regate's certificate as its `rootcertbundle`.
//!
//! Header `{alg, typ, kid, x5c}`: `x5c` carries the signing certificate (what distribution 2.8 and
//! 3.x look up first), `kid` is the libtrust fingerprint of the key (what 2.8 accepts on its own)
//! and names the key in `/.well-known/jwks.json`.

use crate::types::scope::{Action, Resource, Scope};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Clock skew tolerated on `exp`/`nbf` when verifying our own tokens.
pub const LEEWAY_SECS: u64 = 30;
/// Tokens are valid from this many seconds before issue, so a registry with a slightly slow
/// clock accepts them.
const NBF_SKEW: u64 = 10;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub access: Vec<AccessEntry>,
    /// regate's own claim: the groups the subject had when the token was issued.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grp: Vec<String>,
    /// regate's own claim: issued to a limited credential (robot, CLI password), so the access
    /// claim is all it may do.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lim: bool,
}

impl Claims {
    /// Whether the token grants `action` on `resource:name` (an entry with a class, such as
    /// `repository(plugin)`, is a different resource and never matches).
    pub fn allows(&self, resource: &Resource, name: &str, action: Action) -> bool {
        self.access.iter().any(|a| {
            a.kind == resource.as_str() && a.name == name && a.actions.iter().any(|x| x == action.as_str() || x == "*")
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    BadSignature,
    Expired,
    NotYetValid,
    WrongIssuerOrAudience,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VerifyError::Malformed => "malformed token",
            VerifyError::BadSignature => "token signature does not verify",
            VerifyError::Expired => "token has expired",
            VerifyError::NotYetValid => "token is not valid yet",
            VerifyError::WrongIssuerOrAudience => "token was issued for another service",
        })
    }
}

struct VerifyKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

pub struct TokenKeys {
    alg: Algorithm,
    encoding: EncodingKey,
    /// ES256 signing through ring (several times faster than the pure-Rust P-256 behind
    /// `encoding`); `None` for RSA keys.
    ring_es256: Option<ring::signature::EcdsaKeyPair>,
    rng: ring::rand::SystemRandom,
    kid: String,
    x5c: String,
    verify: Vec<VerifyKey>,
    jwks: serde_json::Value,
    pub issuer: String,
    pub audience: String,
    pub ttl: u64,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The libtrust key id distribution 2.8 computes: base32 of the first 240 bits of the SHA-256 of
/// the DER SubjectPublicKeyInfo, in 12 groups of 4 joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let h = Sha256::digest(spki_der);
    let bytes = &h[..30];
    let mut out = String::with_capacity(59);
    let (mut buf, mut bits) = (0u64, 0u32);
    let mut n = 0;
    for &b in bytes {
        buf = (buf << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if n > 0 && n % 4 == 0 {
                out.push(':');
            }
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
            n += 1;
        }
    }
    out
}

/// A private key in any of the PEM forms people generate, as PKCS#8 PEM (the form the signing
/// libraries take): PKCS#8 (`BEGIN PRIVATE KEY`: `openssl genpkey`), SEC1 (`BEGIN EC PRIVATE
/// KEY`: `openssl ecparam -genkey`, whose `EC PARAMETERS` block before it is skipped) or PKCS#1
/// (`BEGIN RSA PRIVATE KEY`: `openssl genrsa`). An EC key must be on P-256.
pub fn signing_key_pkcs8(pem: &str) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no PEM private key found (PKCS#8, SEC1 or PKCS#1): {e}"))?;
    let pkcs8 = match &key {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
        PrivateKeyDer::Pkcs1(k) => pkcs8_wrap(&der::RSA_ALGORITHM, k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(k) => {
            let sec1 = k.secret_sec1_der();
            match der::sec1_curve(sec1) {
                Some(c) if c != der::OID_P256 => return Err("only EC P-256 keys are supported".into()),
                _ => {}
            }
            pkcs8_wrap(&der::P256_ALGORITHM, sec1)
        }
        _ => return Err("unsupported private key format".into()),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(pkcs8);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    Ok(out)
}

/// PrivateKeyInfo (RFC 5208): `SEQUENCE { INTEGER 0, algorithm, OCTET STRING key }`.
fn pkcs8_wrap(algorithm: &[u8], key: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.extend(der::tlv(0x04, key));
    der::tlv(0x30, &body)
}

/// The little DER that wrapping a key in PKCS#8 takes.
mod der {
    /// `SEQUENCE { OID rsaEncryption, NULL }`
    pub const RSA_ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// `SEQUENCE { OID id-ecPublicKey, OID prime256v1 }`
    pub const P256_ALGORITHM: [u8; 21] = [
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
        0x03, 0x01, 0x07,
    ];
    /// The content of the prime256v1 OID.
    pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }

    /// Splits one TLV off `input`: (tag, content, rest).
    fn read(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let k = usize::from(first & 0x7f);
            if k == 0 || k > 4 || rest.len() < k {
                return None;
            }
            let (l, r) = rest.split_at(k);
            rest = r;
            l.iter().fold(0usize, |a, b| (a << 8) | usize::from(*b))
        };
        if rest.len() < len {
            return None;
        }
        let (content, rest) = rest.split_at(len);
        Some((tag, content, rest))
    }

    /// The curve OID in a SEC1 `ECPrivateKey`'s `[0] parameters`, when it names one.
    pub fn sec1_curve(sec1: &[u8]) -> Option<&[u8]> {
        let (_, mut body, _) = read(sec1).filter(|(t, _, _)| *t == 0x30)?;
        while !body.is_empty() {
            let (tag, content, rest) = read(body)?;
            if tag == 0xa0 {
                let (t, oid, _) = read(content)?;
                return (t == 0x06).then_some(oid);
            }
            body = rest;
        }
        None
    }
}

/// Writes a new private file (0600) whole or not at all: into a temporary file beside it, synced,
/// then linked into place, which fails if another process made `path` first. A crash leaves at
/// most the temporary file, never an empty or partial key at `path`.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), rand::random::<u32>()));
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let written = (|| {
        let mut f = o.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A new token signing key: EC P-256.
pub fn generate_key() -> Result<rcgen::KeyPair, String> {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("cannot generate a token signing key: {e}"))
}

/// The self-signed certificate registries are given to trust `kp`'s tokens (`rootcertbundle`).
pub fn self_signed(kp: &rcgen::KeyPair, issuer: &str) -> Result<rcgen::Certificate, String> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| format!("cannot build a signing certificate: {e}"))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{issuer} token signer"));
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
    params
        .self_signed(kp)
        .map_err(|e| format!("cannot self-sign the signing certificate: {e}"))
}

impl TokenKeys {
    /// Loads the signing key and certificate, generating an EC P-256 key and a self-signed
    /// certificate for it when the files do not exist yet.
    pub fn load_or_generate(
        key_path: &Path,
        cert_path: &Path,
        extra_certs: &[std::path::PathBuf],
        issuer: &str,
        audience: &str,
        ttl: u64,
    ) -> Result<Self, String> {
        // an empty key file is what an interrupted first start of an older regate left behind
        // (it created the file, then wrote it): no key was ever issued from it
        if std::fs::metadata(key_path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            tracing::warn!(path = %key_path.display(), "the token signing key file is empty; generating a new key");
            std::fs::remove_file(key_path)
                .map_err(|e| format!("cannot replace the empty token signing key {}: {e}", key_path.display()))?;
        }
        let key_pem = match std::fs::read_to_string(key_path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let pem = generate_key()?.serialize_pem();
                write_private(key_path, pem.as_bytes())
                    .map_err(|e| format!("cannot write the token signing key {}: {e}", key_path.display()))?;
                tracing::info!(path = %key_path.display(), "generated token signing key");
                pem
            }
            Err(e) => return Err(format!("cannot read auth.signing_key {}: {e}", key_path.display())),
        };
        let key_pem =
            signing_key_pkcs8(&key_pem).map_err(|e| format!("auth.signing_key {}: {e}", key_path.display()))?;
        let kp = rcgen::KeyPair::from_pem(&key_pem).map_err(|e| {
            format!(
                "auth.signing_key {} is not an EC P-256 or RSA private key: {e}",
                key_path.display()
            )
        })?;
        let alg = if kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256) {
            Algorithm::ES256
        } else if kp.is_compatible(&rcgen::PKCS_RSA_SHA256) {
            Algorithm::RS256
        } else {
            return Err(format!(
                "auth.signing_key {}: only EC P-256 and RSA keys are supported",
                key_path.display()
            ));
        };
        let spki = kp.public_key_der();
        let cert_der = match std::fs::read(cert_path) {
            Ok(pem) => {
                use rustls_pki_types::pem::PemObject;
                let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).map_err(|e| {
                    format!(
                        "auth.signing_cert {} is not a PEM certificate: {e}",
                        cert_path.display()
                    )
                })?;
                // the certificate embeds its SubjectPublicKeyInfo verbatim
                if !der.windows(spki.len()).any(|w| w == spki.as_slice()) {
                    return Err(format!(
                        "auth.signing_cert {} does not belong to auth.signing_key {}",
                        cert_path.display(),
                        key_path.display()
                    ));
                }
                der.to_vec()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let cert = self_signed(&kp, issuer)?;
                write_private(cert_path, cert.pem().as_bytes())
                    .map_err(|e| format!("cannot write auth.signing_cert {}: {e}", cert_path.display()))?;
                tracing::info!(path = %cert_path.display(), "generated token signing certificate");
                cert.der().to_vec()
            }
            Err(e) => return Err(format!("cannot read auth.signing_cert {}: {e}", cert_path.display())),
        };
        let encoding = match alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(key_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(key_pem.as_bytes()),
        }
        .map_err(|e| format!("auth.signing_key {}: {e}", key_path.display()))?;
        let rng = ring::rand::SystemRandom::new();
        let ring_es256 = match alg {
            Algorithm::ES256 => Some(
                ring::signature::EcdsaKeyPair::from_pkcs8(
                    &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    &kp.serialize_der(),
                    &rng,
                )
                .map_err(|e| format!("auth.signing_key {}: {e}", key_path.display()))?,
            ),
            _ => None,
        };
        let kid = libtrust_kid(&spki);
        let mut verify = vec![VerifyKey {
            kid: kid.clone(),
            alg,
            key: decoding_key(alg, &kp.public_key_pem())?,
        }];
        let mut jwks = vec![jwk_for(&encoding, alg, &kid)?];
        for p in extra_certs {
            let (vk, j) = verify_key_from_cert(p)?;
            verify.push(vk);
            jwks.push(j);
        }
        Ok(TokenKeys {
            alg,
            encoding,
            ring_es256,
            rng,
            kid,
            x5c: base64::engine::general_purpose::STANDARD.encode(&cert_der),
            verify,
            jwks: serde_json::json!({ "keys": jwks }),
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            ttl,
        })
    }

    #[cfg(test)]
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    #[cfg(test)]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    /// Signs a token for `sub` carrying `access`, valid for the configured TTL from `now`.
    pub fn issue(
        &self,
        sub: &str,
        groups: &[String],
        limited: bool,
        access: &[Scope],
        now: u64,
    ) -> Result<String, String> {
        self.issue_until(sub, groups, limited, access, now, u64::MAX)
    }

    /// [`Self::issue`], expiring no later than `not_after` (the end of the credential it was
    /// issued on, such as a CI job's ID token).
    pub fn issue_until(
        &self,
        sub: &str,
        groups: &[String],
        limited: bool,
        access: &[Scope],
        now: u64,
        not_after: u64,
    ) -> Result<String, String> {
        let mut h = Header::new(self.alg);
        h.typ = Some("JWT".into());
        h.kid = Some(self.kid.clone());
        h.x5c = Some(vec![self.x5c.clone()]);
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: sub.to_owned(),
            aud: self.audience.clone(),
            exp: (now + self.ttl).min(not_after),
            nbf: now.saturating_sub(NBF_SKEW),
            iat: now,
            jti: hex::encode(rand::random::<[u8; 16]>()),
            access: access
                .iter()
                .map(|s| AccessEntry {
                    kind: match &s.class {
                        Some(c) => format!("{}({c})", s.resource),
                        None => s.resource.as_str().to_owned(),
                    },
                    name: s.name.clone(),
                    actions: s.actions.iter().map(|a| a.as_str().to_owned()).collect(),
                })
                .collect(),
            grp: groups.to_vec(),
            lim: limited,
        };
        match &self.ring_es256 {
            Some(k) => {
                use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
                let head = serde_json::to_vec(&h).map_err(|e| format!("signing a token failed: {e}"))?;
                let body = serde_json::to_vec(&claims).map_err(|e| format!("signing a token failed: {e}"))?;
                let mut jwt = String::with_capacity(head.len() * 4 / 3 + body.len() * 4 / 3 + 100);
                B64.encode_string(head, &mut jwt);
                jwt.push('.');
                B64.encode_string(body, &mut jwt);
                // JWS ES256: the raw r||s signature over "header.claims"
                let sig = k
                    .sign(&self.rng, jwt.as_bytes())
                    .map_err(|_| "signing a token failed".to_owned())?;
                jwt.push('.');
                B64.encode_string(sig.as_ref(), &mut jwt);
                Ok(jwt)
            }
            None => {
                jsonwebtoken::encode(&h, &claims, &self.encoding).map_err(|e| format!("signing a token failed: {e}"))
            }
        }
    }

    /// Verifies signature (with the pinned algorithm of a known key), issuer, audience and
    /// validity at `now`.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let key = match &header.kid {
            Some(kid) => self.verify.iter().find(|k| &k.kid == kid),
            None => self.verify.first(),
        }
        .ok_or(VerifyError::BadSignature)?;
        if header.alg != key.alg {
            return Err(VerifyError::BadSignature);
        }
        let mut v = Validation::new(key.alg);
        v.validate_exp = false;
        v.validate_nbf = false;
        v.set_required_spec_claims(&["exp", "iss", "aud", "nbf"]);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidIssuer | K::InvalidAudience => VerifyError::WrongIssuerOrAudience,
                K::InvalidSignature | K::InvalidAlgorithm | K::InvalidKeyFormat => VerifyError::BadSignature,
                _ => VerifyError::Malformed,
            }
        })?;
        let c = data.claims;
        if now >= c.exp + LEEWAY_SECS {
            return Err(VerifyError::Expired);
        }
        if c.nbf > now + LEEWAY_SECS {
            return Err(VerifyError::NotYetValid);
        }
        Ok(c)
    }
}

fn decoding_key(alg: Algorithm, pub_pem: &str) -> Result<DecodingKey, String> {
    match alg {
        Algorithm::ES256 => DecodingKey::from_ec_pem(pub_pem.as_bytes()),
        _ => DecodingKey::from_rsa_pem(pub_pem.as_bytes()),
    }
    .map_err(|e| format!("cannot use the public key: {e}"))
}

fn jwk_for(enc: &EncodingKey, alg: Algorithm, kid: &str) -> Result<serde_json::Value, String> {
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(enc, alg).map_err(|e| format!("cannot build JWK: {e}"))?;
    let mut v = serde_json::to_value(&jwk).map_err(|e| e.to_string())?;
    v["kid"] = serde_json::json!(kid);
    v["use"] = serde_json::json!("sig");
    v["alg"] = serde_json::json!(format!("{alg:?}"));
    Ok(v)
}

/// An older signing certificate kept for verification during key rotation.
fn verify_key_from_cert(p: &Path) -> Result<(VerifyKey, serde_json::Value), String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_file(p)
        .map_err(|e| format!("auth.verification_certs: {} is not a PEM certificate: {e}", p.display()))?;
    // find the SubjectPublicKeyInfo: for P-256 it is a fixed 91-byte structure with a known prefix
    const P256_SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
        0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let pos = der
        .windows(P256_SPKI_PREFIX.len())
        .position(|w| w == P256_SPKI_PREFIX)
        .ok_or_else(|| format!("auth.verification_certs: {} does not hold an EC P-256 key", p.display()))?;
    let spki = der
        .get(pos..pos + 91)
        .ok_or_else(|| format!("auth.verification_certs: {} is truncated", p.display()))?;
    // the uncompressed point 04 || x || y follows the 26-byte prefix
    let (x, y) = (&spki[27..59], &spki[59..91]);
    let kid = libtrust_kid(spki);
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(spki)
    );
    let key = decoding_key(Algorithm::ES256, &pem)?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": b64.encode(x), "y": b64.encode(y),
        "kid": kid, "use": "sig", "alg": "ES256",
    });
    Ok((
        VerifyKey {
            kid,
            alg: Algorithm::ES256,
            key,
        },
        jwk,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_key_file_left_by_a_crash_is_replaced_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("token.key"), dir.path().join("token.crt"));
        std::fs::write(&key, b"").unwrap();
        let k = TokenKeys::load_or_generate(&key, &cert, &[], "regate", "reg.test", 300).unwrap();
        assert!(std::fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        // the same key is read back on the next start
        let again = TokenKeys::load_or_generate(&key, &cert, &[], "regate", "reg.test", 300).unwrap();
        assert_eq!(k.jwks(), again.jwks());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // a key another process wrote first is never overwritten
        assert_eq!(
            write_private(&key, b"other").unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
    }

    fn keys(dir: &Path) -> TokenKeys {
        TokenKeys::load_or_generate(&dir.join("k.pem"), &dir.join("c.pem"), &[], "regate", "reg.test", 300).unwrap()
    }

    fn claims_of(tok: &str) -> serde_json::Value {
        let p = tok.split('.').nth(1).unwrap();
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, sig: &[u8]) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.{}",
            b.encode(serde_json::to_vec(&header).unwrap()),
            b.encode(serde_json::to_vec(&claims).unwrap()),
            b.encode(sig)
        )
    }

    #[test]
    fn issue_and_verify_with_fixed_clock() {
        let d = tempfile::tempdir().unwrap();
        let k = keys(d.path());
        let now = 1_800_000_000;
        let t = k
            .issue(
                "alice",
                &[],
                false,
                &[Scope::repository("alice/app", &[Action::Pull])],
                now,
            )
            .unwrap();
        let c = k.verify(&t, now + 10).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.allows(&Resource::Repository, "alice/app", Action::Pull));
        assert!(!c.allows(&Resource::Repository, "alice/app", Action::Push));
        assert_eq!(k.verify(&t, now + 300 + LEEWAY_SECS), Err(VerifyError::Expired));
        assert_eq!(k.verify(&t, now - 100), Err(VerifyError::NotYetValid));
        // header carries x5c and the libtrust kid; aud is a plain string
        let h = jsonwebtoken::decode_header(&t).unwrap();
        assert_eq!(h.alg, Algorithm::ES256);
        assert_eq!(h.x5c.as_ref().map(|v| v.len()), Some(1));
        assert_eq!(h.kid.as_deref(), Some(k.kid()));
        assert_eq!(k.kid().len(), 59);
        assert!(claims_of(&t)["aud"].is_string());
        assert!(claims_of(&t)["exp"].is_u64());
        // ES256 signatures are raw r||s, 64 bytes
        let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t.rsplit('.').next().unwrap())
            .unwrap();
        assert_eq!(sig.len(), 64);
        // the key is reloaded, not regenerated, on the next start
        let k2 = keys(d.path());
        assert_eq!(k2.kid(), k.kid());
        assert!(k2.verify(&t, now).is_ok());
    }

    /// Keys as `openssl` writes them load, tokens signed with them verify against the public key
    /// that openssl derives from the same file, and the certificate generated holds that key.
    #[test]
    fn signing_keys_from_openssl_in_every_form() {
        let openssl = |args: &[&str]| {
            let o = std::process::Command::new("openssl").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8(o.stdout).unwrap()
        };
        let d = tempfile::tempdir().unwrap();
        let path = |n: &str| d.path().join(n).display().to_string();
        let cases: [(&str, &[&str], &str, Algorithm); 4] = [
            (
                "sec1.pem",
                &["ecparam", "-name", "prime256v1", "-genkey", "-out", "OUT"],
                "BEGIN EC PRIVATE KEY",
                Algorithm::ES256,
            ),
            // OpenSSL 3's genrsa writes PKCS#8 unless asked for the traditional form
            (
                "pkcs1.pem",
                &["genrsa", "-traditional", "-out", "OUT", "2048"],
                "BEGIN RSA PRIVATE KEY",
                Algorithm::RS256,
            ),
            (
                "pkcs8-ec.pem",
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    "OUT",
                ],
                "BEGIN PRIVATE KEY",
                Algorithm::ES256,
            ),
            (
                "pkcs8-rsa.pem",
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    "OUT",
                ],
                "BEGIN PRIVATE KEY",
                Algorithm::RS256,
            ),
        ];
        for (name, gen, marker, alg) in cases {
            let key = path(name);
            let args: Vec<&str> = gen.iter().map(|a| if *a == "OUT" { key.as_str() } else { a }).collect();
            openssl(&args);
            let pem = std::fs::read_to_string(&key).unwrap();
            assert!(pem.contains(marker), "{name}: {pem}");
            let cert = path(&format!("{name}.crt"));
            let k = TokenKeys::load_or_generate(key.as_ref(), cert.as_ref(), &[], "regate", "reg.test", 300)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(k.algorithm(), alg, "{name}");
            let now = 1_800_000_000;
            let t = k
                .issue("alice", &[], false, &[Scope::repository("a/b", &[Action::Pull])], now)
                .unwrap();
            assert_eq!(k.verify(&t, now).unwrap().sub, "alice");
            // independently: openssl's public key of the file verifies the token, and the
            // generated certificate carries the same key
            let public = openssl(&["pkey", "-in", &key, "-pubout"]);
            assert_eq!(openssl(&["x509", "-in", &cert, "-pubkey", "-noout"]), public, "{name}");
            let dk = decoding_key(alg, &public).unwrap();
            let mut v = Validation::new(alg);
            v.validate_exp = false;
            v.set_audience(&["reg.test"]);
            let c = jsonwebtoken::decode::<Claims>(&t, &dk, &v).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.claims.sub, "alice");
        }
        // an EC key on another curve is refused with a reason
        let other = path("p384.pem");
        openssl(&["ecparam", "-name", "secp384r1", "-genkey", "-noout", "-out", &other]);
        let e = TokenKeys::load_or_generate(other.as_ref(), path("p384.crt").as_ref(), &[], "r", "a", 300).unwrap_err();
        assert!(e.contains("P-256"), "{e}");
    }

    #[test]
    fn forged_tokens_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = keys(d.path());
        let now = 1_800_000_000;
        let good = k
            .issue("alice", &[], false, &[Scope::repository("a", &[Action::Pull])], now)
            .unwrap();
        let mut c = claims_of(&good);

        // alg none
        let t = forge(serde_json::json!({"alg":"none","typ":"JWT"}), c.clone(), b"");
        assert!(k.verify(&t, now).is_err());
        // HS256 keyed with the public key
        let pubpem = std::fs::read(d.path().join("c.pem")).unwrap();
        let hs = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &EncodingKey::from_secret(&pubpem)).unwrap();
        assert!(k.verify(&hs, now).is_err());
        // a token from another key, even with our kid and its own x5c
        let other_dir = tempfile::tempdir().unwrap();
        let other = keys(other_dir.path());
        let mut foreign = other.issue("alice", &[], false, &[], now).unwrap();
        assert!(k.verify(&foreign, now).is_err());
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(k.kid().to_owned());
        foreign = jsonwebtoken::encode(&h, &c, &other.encoding).unwrap();
        assert_eq!(k.verify(&foreign, now), Err(VerifyError::BadSignature));
        // edited payload, original signature
        c["sub"] = serde_json::json!("admin");
        let parts: Vec<&str> = good.split('.').collect();
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let edited = format!(
            "{}.{}.{}",
            parts[0],
            b.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert!(k.verify(&edited, now).is_err());
        // string exp, wrong aud, wrong iss (all properly signed)
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(k.kid().to_owned());
        for (field, val) in [
            ("exp", serde_json::json!(format!("{}", now + 100))),
            ("aud", serde_json::json!("other.service")),
            ("aud", serde_json::json!(["reg.test"])),
            ("iss", serde_json::json!("someone-else")),
        ] {
            let mut cc = claims_of(&good);
            cc[field] = val;
            let t = jsonwebtoken::encode(&h, &cc, &k.encoding).unwrap();
            assert!(k.verify(&t, now).is_err(), "{field}");
        }
    }

    #[test]
    fn libtrust_kid_format() {
        let kid = libtrust_kid(b"anything");
        assert_eq!(kid.split(':').count(), 12);
        assert!(kid.split(':').all(|g| g.len() == 4));
    }
}
