//! `policy:` (trusted images per repository glob) and `scanner:` (a Harbor Pluggable Scanner API
//! adapter). Plain serde data; `crate::trust` turns it into running parts.

use super::Secret;
use serde::Deserialize;
use std::path::PathBuf;

/// One rule of `policy:`; the first whose `repository` glob fits a repository applies.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRule {
    pub repository: String,
    #[serde(default)]
    pub require_signature: Option<RequireSignature>,
    /// `false`: report only (audit log and `X-Regate-Trust` header), never deny.
    #[serde(default = "super::default_true")]
    pub enforce: bool,
    /// Deny pulls of images with a finding at or above this severity.
    #[serde(default)]
    pub block_severity: Option<Severity>,
    #[serde(default)]
    pub allow_cves: Vec<AllowCve>,
    /// Images without a finished scan (only consulted when `block_severity` is set).
    #[serde(default)]
    pub unscanned: Unscanned,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequireSignature {
    /// PEM public keys (EC P-256/P-384, RSA, Ed25519); a signature from any one counts.
    #[serde(default)]
    pub cosign: Vec<PathBuf>,
    /// PEM X.509 root certificates of notation signatures.
    #[serde(default)]
    pub notation: Vec<PathBuf>,
    /// notation's `trustedIdentities`: `x509.subject: C=US, ST=WA, O=acme`; a notation signature
    /// counts only when its signing certificate's subject holds every attribute of one of them.
    /// Absent: any certificate that chains to `notation` roots.
    #[serde(default)]
    pub notation_identities: Vec<String>,
    /// For an index: every platform manifest must carry a signature of its own (as
    /// `cosign sign --recursive` makes); the index's own signature does not stand for them.
    #[serde(default)]
    pub platforms: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[serde(alias = "Unknown")]
    Unknown,
    #[serde(alias = "Low")]
    Low,
    #[serde(alias = "Medium")]
    Medium,
    #[serde(alias = "High")]
    High,
    #[serde(alias = "Critical")]
    Critical,
}

impl Severity {
    /// The Harbor report's spelling (`Unknown`, `Low`, ...); anything else is `Unknown`.
    pub fn parse(s: &str) -> Severity {
        match s.to_ascii_lowercase().as_str() {
            "low" | "negligible" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => Severity::Unknown,
        }
    }
}

/// A CVE id allowed despite `block_severity`, optionally only until a date (`YYYY-MM-DD`, UTC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum AllowCve {
    Id(String),
    Until {
        id: String,
        #[serde(default)]
        until: Option<String>,
    },
}

impl AllowCve {
    pub fn id(&self) -> &str {
        match self {
            AllowCve::Id(s) | AllowCve::Until { id: s, .. } => s,
        }
    }
    pub fn until(&self) -> Option<&str> {
        match self {
            AllowCve::Id(_) => None,
            AllowCve::Until { until, .. } => until.as_deref(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Unscanned {
    #[default]
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScannerConfig {
    pub url: String,
    /// Sent as the `Authorization` header to the adapter.
    #[serde(default)]
    pub authorization: Option<Secret>,
    #[serde(default = "super::default_true")]
    pub scan_on_push: bool,
    /// Scanner unreachable: pulls follow `policy.unscanned` (true) or are denied (false).
    #[serde(default = "super::default_true")]
    pub fail_open: bool,
    /// Seconds (or a duration such as `10m`) to wait for one report before giving up on it.
    #[serde(default = "ScannerConfig::d_timeout", deserialize_with = "super::secs::secs")]
    pub timeout: u64,
    /// A report older than this (seconds or a duration, default `24h`; 0: never) is renewed in
    /// the background the next time the image is pulled, so new CVEs reach images in use.
    #[serde(default = "ScannerConfig::d_rescan", deserialize_with = "super::secs::secs")]
    pub rescan_after: u64,
}

impl ScannerConfig {
    fn d_timeout() -> u64 {
        600
    }
    fn d_rescan() -> u64 {
        86_400
    }
}

/// Days since 1970-01-01 of a `YYYY-MM-DD` date.
pub fn parse_date(s: &str) -> Option<i64> {
    let mut it = s.trim().splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    // days from civil (Howard Hinnant)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Checks `policy:` and `scanner:`; with `files`, that every named key and certificate exists.
/// A notation trusted identity, `x509.subject: C=US, ST=WA, O=acme-rockets.io`, as its
/// attributes (upper-case keys; `\,` stands for a comma in a value). Like notation, it must name
/// at least C, ST and O.
pub fn parse_identity(s: &str) -> Result<Vec<(String, String)>, String> {
    let Some(dn) = s.trim().strip_prefix("x509.subject:") else {
        return Err(format!("{s:?} does not start with x509.subject:"));
    };
    let mut parts = vec![String::new()];
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(last)) = (chars.next(), parts.last_mut()) {
                    last.push(n);
                }
            }
            ',' => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for p in parts {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("{:?} is not KEY=value", p.trim()));
        };
        let (k, v) = (k.trim().to_ascii_uppercase(), v.trim().to_owned());
        if v.is_empty() {
            return Err(format!("{k} has no value"));
        }
        if out.iter().any(|(o, _)| *o == k) {
            return Err(format!("{k} is named twice"));
        }
        out.push((k, v));
    }
    for need in ["C", "ST", "O"] {
        if !out.iter().any(|(k, _)| k == need) {
            return Err(format!(
                "must name at least C, ST and O (as notation asks); {need} is missing"
            ));
        }
    }
    Ok(out)
}

pub fn validate(policy: &[TrustRule], scanner: Option<&ScannerConfig>, files: bool) -> Vec<String> {
    let mut e = Vec::new();
    for (i, r) in policy.iter().enumerate() {
        let at = format!("policy[{i}]");
        if r.repository.trim().is_empty() {
            e.push(format!("{at}.repository: must not be empty"));
        }
        let sig = r.require_signature.as_ref();
        if sig.is_some_and(|s| s.cosign.is_empty() && s.notation.is_empty()) {
            e.push(format!(
                "{at}.require_signature: name at least one cosign key or notation root"
            ));
        }
        if sig.is_none() && r.block_severity.is_none() {
            e.push(format!(
                "{at}: needs require_signature or block_severity (otherwise it does nothing)"
            ));
        }
        if r.block_severity.is_some() && scanner.is_none() {
            e.push(format!("{at}.block_severity: needs a scanner: section"));
        }
        for (j, c) in r.allow_cves.iter().enumerate() {
            if c.id().trim().is_empty() {
                e.push(format!("{at}.allow_cves[{j}]: empty id"));
            }
            if let Some(u) = c.until() {
                if parse_date(u).is_none() {
                    e.push(format!("{at}.allow_cves[{j}].until: {u:?} is not a YYYY-MM-DD date"));
                }
            }
        }
        for (j, id) in sig
            .map(|s| s.notation_identities.iter())
            .into_iter()
            .flatten()
            .enumerate()
        {
            if let Err(m) = parse_identity(id) {
                e.push(format!("{at}.require_signature.notation_identities[{j}]: {m}"));
            }
        }
        if sig.is_some_and(|s| !s.notation_identities.is_empty() && s.notation.is_empty()) {
            e.push(format!(
                "{at}.require_signature.notation_identities: needs notation roots to check them against"
            ));
        }
        if files {
            for p in sig.map(|s| s.cosign.iter().chain(&s.notation)).into_iter().flatten() {
                if !p.is_file() {
                    e.push(format!("{at}.require_signature: {} does not exist", p.display()));
                }
            }
        }
    }
    if let Some(s) = scanner {
        if let Err(m) = super::check_base_url(&s.url) {
            e.push(format!("scanner.url: {m}"));
        }
        if s.timeout == 0 {
            e.push("scanner.timeout: must be at least 1 second".into());
        }
        if let Some(a) = &s.authorization {
            if ::http::HeaderValue::from_str(a.expose()).is_err() {
                e.push("scanner.authorization: not a valid header value".into());
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notation_identities_parse_as_notation_writes_them() {
        assert_eq!(
            parse_identity("x509.subject: C=CN, ST=Zhejiang, o=Acme\\, Ltd, CN=signer").unwrap(),
            vec![
                ("C".to_owned(), "CN".to_owned()),
                ("ST".to_owned(), "Zhejiang".to_owned()),
                ("O".to_owned(), "Acme, Ltd".to_owned()),
                ("CN".to_owned(), "signer".to_owned()),
            ]
        );
        assert!(parse_identity("C=CN, ST=Z, O=A").is_err(), "no x509.subject: prefix");
        assert!(parse_identity("x509.subject: C=CN, ST=Z").is_err(), "no O");
        assert!(parse_identity("x509.subject: C=CN, ST=Z, O=A, O=B").is_err(), "O twice");
        assert!(parse_identity("x509.subject: C=CN, ST=Z, O=").is_err(), "empty value");
        assert!(parse_identity("x509.subject: C=CN, ST=Z, junk").is_err());
    }

    #[test]
    fn rules_parse_with_plain_and_dated_cves() {
        let r: Vec<TrustRule> = serde_yaml_ng::from_str(
            "- repository: prod/*\n  require_signature: { cosign: [/k.pub] }\n  block_severity: high\n  allow_cves: [CVE-1, { id: CVE-2, until: 2027-01-01 }]\n  unscanned: deny\n",
        )
        .unwrap();
        assert_eq!(r[0].allow_cves[0], AllowCve::Id("CVE-1".into()));
        assert_eq!(r[0].allow_cves[1].until(), Some("2027-01-01"));
        assert_eq!(r[0].block_severity, Some(Severity::High));
        assert_eq!(r[0].unscanned, Unscanned::Deny);
        assert!(r[0].enforce);
        let s: ScannerConfig =
            serde_yaml_ng::from_str("url: http://a:1\nauthorization: Bearer x\ntimeout: 2m").unwrap();
        assert_eq!(s.timeout, 120);
        assert!(!format!("{s:?}").contains("Bearer x"));
        assert!(validate(&r, Some(&s), false).is_empty());
        assert_eq!(validate(&r, None, false).len(), 1);
        assert!(serde_yaml_ng::from_str::<Vec<TrustRule>>("- repository: a\n  bogus: 1").is_err());
    }

    #[test]
    fn contract_example_parses_and_the_scanner_secret_comes_from_the_environment() {
        // the `policy:`/`scanner:` block of ../shared/CONTRACT.md, verbatim
        let y = r#"
policy:
  - repository: "prod/*"
    require_signature: { cosign: [/etc/regate/cosign.pub], notation: [/etc/regate/notation-root.crt] }
    enforce: true
    block_severity: critical
    allow_cves: [CVE-2024-0001]
    unscanned: allow
scanner:
  url: http://trivy-adapter:8080
  authorization: "Bearer ..."
  scan_on_push: true
  fail_open: true
"#;
        let c = super::super::parse(y, "t", &vec![]).unwrap();
        assert!(c.validate(false).is_empty(), "{:?}", c.validate(false));
        assert_eq!(c.policy[0].block_severity, Some(Severity::Critical));
        assert!(c.validate(true).iter().any(|e| e.contains("cosign.pub does not exist")));
        let env = vec![("REGATE_SCANNER__AUTHORIZATION".to_owned(), "Bearer from-env".to_owned())];
        let c = super::super::parse(y, "t", &env).unwrap();
        let s = c.scanner.as_ref().unwrap();
        assert_eq!(s.authorization.as_ref().unwrap().expose(), "Bearer from-env");
        assert!(!format!("{c:?}").contains("from-env"));
    }

    #[test]
    fn dates_and_severities() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(parse_date("2000-03-01"), Some(11_017));
        assert_eq!(parse_date("2027-13-01"), None);
        assert!(Severity::Critical > Severity::High && Severity::Low > Severity::Unknown);
        assert_eq!(Severity::parse("CRITICAL"), Severity::Critical);
    }
}
