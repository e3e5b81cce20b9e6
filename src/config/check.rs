//! The checks of meaning a config must pass beyond its types: each problem one line naming its
//! key. Files are only looked at (exist, is a directory), never parsed: that is
//! `bootstrap::check`'s job, which knows the parts that read them.

use super::*;

/// The object-storage keys that can be wrong in form: URLs, part sizes, timeouts.
fn check_object_storage(s: &StorageConfig, e: &mut Vec<String>) {
    let url = |key: &str, v: Option<&str>, e: &mut Vec<String>| {
        if let Some(u) = v {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                e.push(format!("storage.{key}: must be an http(s) URL"));
            }
        }
    };
    let tuning = |b: &str, part: Option<u64>, timeout: Option<u64>, retries: Option<usize>, e: &mut Vec<String>| {
        if part.is_some_and(|p| !(5 << 20..=5 << 30).contains(&p)) {
            e.push(format!(
                "storage.{b}.part_size: must be between 5242880 (5 MiB) and 5368709120 (5 GiB) bytes"
            ));
        }
        if timeout == Some(0) {
            e.push(format!("storage.{b}.timeout: must be at least 1 second"));
        }
        if retries.is_some_and(|r| r > 20) {
            e.push(format!("storage.{b}.max_retries: at most 20"));
        }
    };
    if let Some(c) = &s.s3 {
        url("s3.endpoint", c.endpoint.as_deref(), e);
        tuning("s3", c.part_size, c.timeout, c.max_retries, e);
    }
    if let Some(c) = &s.oss {
        url("oss.endpoint", Some(&c.endpoint), e);
        url("oss.presign_endpoint", c.presign_endpoint.as_deref(), e);
        tuning("oss", c.part_size, c.timeout, c.max_retries, e);
    }
    if let Some(c) = &s.cos {
        url("cos.endpoint", Some(&c.endpoint), e);
        tuning("cos", c.part_size, c.timeout, c.max_retries, e);
    }
    // OSS and COS refuse presigned URLs that last longer than 7 days
    if s.redirect_ttl == 0 || s.redirect_ttl > 7 * 86_400 {
        e.push("storage.redirect_ttl: must be between 1 and 604800 seconds (7 days)".into());
    }
}

/// The `storage.lfs` keys that can be wrong in form.
fn check_lfs(s: &StorageConfig, e: &mut Vec<String>) {
    let Some(l) = &s.lfs else { return };
    if !(l.url.starts_with("http://") || l.url.starts_with("https://")) {
        e.push("storage.lfs.url: must be an http(s) URL (e.g. https://gitee.com/owner/repo.git/info/lfs)".into());
    }
    if l.username.is_some() != l.token.is_some() {
        e.push("storage.lfs: username and token go together (HTTP Basic with a personal access token)".into());
    }
    if l.timeout == Some(0) {
        e.push("storage.lfs.timeout: must be at least 1 second".into());
    }
    if l.max_retries.is_some_and(|r| r > 20) {
        e.push("storage.lfs.max_retries: at most 20".into());
    }
    if let Some(m) = &l.metadata {
        let mut inner = Vec::new();
        match m.backend {
            Backend::Lfs => inner.push("storage.backend: must be fs, s3, oss, cos or memory".into()),
            Backend::S3 if m.s3.is_none() => inner.push("storage.s3: required when storage.backend is s3".into()),
            Backend::Oss if m.oss.is_none() => inner.push("storage.oss: required when storage.backend is oss".into()),
            Backend::Cos if m.cos.is_none() => inner.push("storage.cos: required when storage.backend is cos".into()),
            _ => {}
        }
        if m.lfs.is_some() {
            inner.push("storage.lfs: not allowed in the metadata store".into());
        }
        check_object_storage(m, &mut inner);
        e.extend(
            inner
                .into_iter()
                .map(|x| x.replacen("storage.", "storage.lfs.metadata.", 1)),
        );
    }
}

impl Config {
    /// Checks meaning beyond types; with `files`, also that every named file exists and parses.
    fn check_oidc(&self) -> Vec<String> {
        let mut e = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.auth.oidc.iter().enumerate() {
            let at = format!("auth.oidc[{i}]");
            let name_ok = !p.name.is_empty()
                && p.name.len() <= 64
                && p.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !name_ok {
                e.push(format!(
                    "{at}.name: {:?} must be lower-case letters, digits, '-' or '_'",
                    p.name
                ));
            } else if p.name == "oidc" || p.name == "admin" || p.name == "anonymous" {
                e.push(format!("{at}.name: {:?} is reserved", p.name));
            } else if !names.insert(p.name.clone()) {
                e.push(format!("{at}.name: {:?} is used by another provider", p.name));
            }
            if let Err(m) = check_base_url(&p.issuer) {
                e.push(format!("{at}.issuer: {m}"));
            } else if !p.issuer.starts_with("https://") && !is_loopback_url(&p.issuer) {
                e.push(format!("{at}.issuer: must be https:// (http:// only on loopback)"));
            }
            if p.audience.trim().is_empty() {
                e.push(format!(
                    "{at}.audience: must not be empty (a token for another service must not sign in here)"
                ));
            }
            if let Err(m) = check_template(&p.account_template()) {
                e.push(format!("{at}.account: {m}"));
            }
            if let Some(u) = &p.jwks_url {
                if u.starts_with("http://") && !is_loopback_url(u) {
                    e.push(format!(
                        "{at}.jwks_url: must be https:// or a file (http:// only on loopback)"
                    ));
                }
            }
        }
        for (i, r) in self.access.iter().flatten().enumerate() {
            match &r.oidc {
                Some(n) if !self.auth.oidc.iter().any(|p| &p.name == n) => {
                    e.push(format!("access[{i}].oidc: no provider {n:?} in auth.oidc"));
                }
                None if r.claims.is_some() => e.push(format!("access[{i}].claims: needs oidc: PROVIDER")),
                _ => {}
            }
        }
        e
    }

    pub fn validate(&self, files: bool) -> Vec<String> {
        let mut e = Vec::new();
        if let Some(u) = &self.public_url {
            if let Err(m) = check_base_url(u) {
                e.push(format!("public_url: {m}"));
            }
        }
        if self.tls.is_none()
            && !self.listen.ip().is_loopback()
            && self.public_url.as_deref().is_some_and(|u| u.starts_with("https://"))
        {
            // fine: TLS terminated in front of us
        }
        if let Some(u) = &self.upstream {
            if let Err(m) = check_base_url(u) {
                e.push(format!("upstream: {m}"));
            }
        }
        e.extend(self.check_oidc());
        e.extend(replication::ReplicationConfig::check(&self.replication, files));
        e.extend(trust::validate(&self.policy, self.scanner.as_ref(), files));
        if let Some(h) = &self.network.client_address_header {
            if ::http::HeaderName::from_bytes(h.trim().as_bytes()).is_err() {
                e.push(format!(
                    "network.client_address_header: {h:?} is not an HTTP header name"
                ));
            }
        }
        if let Some(r) = &self.redis {
            let u = r.url.expose();
            if !(u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("redis+unix://")) {
                e.push("redis.url: must be a redis:// or rediss:// URL".into());
            }
        }
        if self.upstream_h2c && !self.upstream.as_deref().is_some_and(|u| u.starts_with("http://")) {
            e.push("upstream_h2c: needs an http:// upstream (https:// upstreams negotiate HTTP/2 themselves)".into());
        }
        if let Some(m) = &self.mirror {
            if let Err(msg) = check_base_url(&m.url) {
                e.push(format!("mirror.url: {msg}"));
            }
        }
        for (i, n) in self.notifications.iter().enumerate() {
            if let Err(m) = check_base_url(&n.url) {
                e.push(format!("notifications[{i}].url: {m}"));
            }
            for ev in n.events.iter().flatten() {
                if !["push", "pull", "delete", "mount"].contains(&ev.as_str()) {
                    e.push(format!(
                        "notifications[{i}].events: unknown event {ev:?} (push, pull, delete, mount)"
                    ));
                }
            }
        }
        let s = &self.storage;
        let need = |present: bool, key: &str, e: &mut Vec<String>| {
            if !present {
                e.push(format!("storage.{key}: required when storage.backend is {key}"));
            }
        };
        match s.backend {
            Backend::Fs => {}
            Backend::Memory => {}
            Backend::S3 => need(s.s3.is_some(), "s3", &mut e),
            Backend::Oss => need(s.oss.is_some(), "oss", &mut e),
            Backend::Cos => need(s.cos.is_some(), "cos", &mut e),
            Backend::Lfs => need(s.lfs.is_some(), "lfs", &mut e),
        }
        check_object_storage(s, &mut e);
        check_lfs(s, &mut e);
        if self.auth.token_ttl == 0 || self.auth.token_ttl > 86_400 {
            e.push("auth.token_ttl: must be between 1 and 86400 seconds".into());
        }
        if self.auth.service.as_deref().is_some_and(|s| s.is_empty()) {
            e.push("auth.service: must not be empty".into());
        }
        if self.limits.max_manifest_bytes < 1024 {
            e.push("limits.max_manifest_bytes: must be at least 1024".into());
        }
        if let Some(g) = &self.auth.gitee {
            for (k, v) in [
                ("base_url", &g.base_url),
                ("api_url", &g.api_url),
                ("redirect_url", &g.redirect_url),
            ] {
                if let Some(u) = v {
                    if !(u.starts_with("http://") || u.starts_with("https://")) {
                        e.push(format!("auth.gitee.{k}: must be an http(s) URL"));
                    }
                }
            }
            if g.client_id.trim().is_empty() {
                e.push("auth.gitee.client_id: must not be empty (the Gitee OAuth application's client id)".into());
            }
            if g.client_secret.is_none() {
                e.push("auth.gitee.client_secret: required (Gitee's token endpoint needs it); or client_secret_file / REGATE_AUTH__GITEE__CLIENT_SECRET".into());
            }
            if g.timeout == 0 || g.timeout > 120 {
                e.push("auth.gitee.timeout: must be 1 to 120 seconds".into());
            }
            if g.session_ttl == 0 {
                e.push("auth.gitee.session_ttl: must be at least 1 second".into());
            }
        }
        for (i, r) in self.access.iter().flatten().enumerate() {
            match &r.gitee {
                Some(g) if g != "repo_permission" => {
                    e.push(format!("access[{i}].gitee: only repo_permission is supported"));
                }
                Some(_) => {
                    if self.auth.gitee.is_none() {
                        e.push(format!("access[{i}]: a gitee rule needs auth.gitee to be configured"));
                    }
                    if r.account.is_some() || r.repository.is_some() || !r.actions.is_empty() || r.groups.is_some() {
                        e.push(format!("access[{i}]: a gitee rule takes no other keys"));
                    }
                }
                None => {
                    if r.repository.is_none() && !r.catalog {
                        e.push(format!("access[{i}]: needs repository (or catalog: true)"));
                    }
                }
            }
        }
        for (i, r) in self.retention.iter().enumerate() {
            if r.keep_last.is_none() && r.keep_tags.is_empty() {
                e.push(format!(
                    "retention[{i}]: give keep_last or keep_tags (a rule keeping nothing would delete every tag)"
                ));
            }
        }
        if let Some(l) = &self.log.format {
            if l != "text" && l != "json" {
                e.push("log.format: must be text or json".into());
            }
        }
        if files {
            for (k, p) in [
                ("auth.signing_key", self.signing_key_path()),
                ("auth.signing_cert", self.signing_cert_path()),
            ] {
                if !p.exists() {
                    let parent = p
                        .parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new("."));
                    let generated_here = self.auth.signing_key.is_none() && parent == self.data_dir();
                    if !parent.exists() && !generated_here {
                        e.push(format!(
                            "{k}: {} does not exist and its directory {} does not either",
                            p.display(),
                            parent.display()
                        ));
                    }
                }
            }
            for p in &self.auth.verification_certs {
                if !p.exists() {
                    e.push(format!("auth.verification_certs: {} does not exist", p.display()));
                }
            }
            if let (Backend::Fs, Some(fs)) = (s.backend, &s.fs) {
                if fs.root.exists() && !fs.root.is_dir() {
                    e.push(format!("storage.fs.root: {} is not a directory", fs.root.display()));
                }
            }
        }
        e
    }
}

/// `scheme://host[:port]` with nothing after it but an optional trailing `/`.
pub fn check_base_url(u: &str) -> Result<(), String> {
    let rest = u
        .strip_prefix("https://")
        .or_else(|| u.strip_prefix("http://"))
        .ok_or_else(|| format!("{u:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() || host.contains('@') || host.contains(' ') {
        return Err(format!("{u:?} has no valid host"));
    }
    Ok(())
}

/// Whether an http(s) URL's host is a loopback address or `localhost`.
fn is_loopback_url(u: &str) -> bool {
    let rest = u.split_once("://").map(|(_, r)| r).unwrap_or(u);
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks an account template: balanced placeholders, and a `:` so the account can never be
/// taken for a local or Gitee user (neither can contain one).
pub fn check_template(t: &str) -> Result<(), String> {
    let mut rest = t;
    let mut literal = String::new();
    while let Some(i) = rest.find('{') {
        literal.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let Some(j) = after.find('}') else {
            return Err(format!("{t:?} has a '{{' without '}}'"));
        };
        if after[..j].is_empty() || after[..j].contains('{') {
            return Err(format!("{t:?} has an empty or nested placeholder"));
        }
        rest = &after[j + 1..];
    }
    literal.push_str(rest);
    if literal.contains('}') {
        return Err(format!("{t:?} has a '}}' without '{{'"));
    }
    if !literal.contains(':') {
        return Err(format!(
            "{t:?} must contain a ':' outside its placeholders (e.g. \"gitlab:{{project_path}}\"), so a CI account can never be taken for a local or Gitee user"
        ));
    }
    Ok(())
}
