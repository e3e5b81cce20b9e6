//! `regate import-config`: reads a distribution (`registry:2`) `config.yml` and prints the
//! equivalent regate config, with one warning per key that is not carried over (and why).
//!
//! What registry:2 allowed stays allowed: with htpasswd, every user in the file may pull and push
//! every repository (and delete where deletes are enabled), as registry:2 lets them.

mod storage;

use serde_yaml_ng::{Mapping, Value};
use storage::storage;

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur.as_mapping()?.get(Value::String((*p).to_owned()))?;
    }
    Some(cur)
}

fn s(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(x) => Some(x.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn m() -> Mapping {
    Mapping::new()
}

fn put(map: &mut Mapping, k: &str, v: Value) {
    map.insert(Value::String(k.to_owned()), v);
}

fn string(x: impl Into<String>) -> Value {
    Value::String(x.into())
}

/// What was carried over or warned about, by key path; every other key gets a warning at the end.
struct Conv {
    warn: Vec<String>,
    handled: Vec<String>,
}

impl Conv {
    fn carried(&mut self, path: &str) {
        self.handled.push(path.to_owned());
    }
    fn warn(&mut self, path: &str, why: &str) {
        self.handled.push(path.to_owned());
        self.warn.push(format!("{path}: {why}"));
    }
    /// Warns about `path` (why) when the source has it.
    fn warn_if(&mut self, src: &Value, path: &str, why: &str) {
        let parts: Vec<&str> = path.split('.').collect();
        if get(src, &parts).is_some() {
            self.warn(path, why);
        }
    }
    fn covers(&self, path: &str) -> bool {
        self.handled.iter().any(|h| {
            path == h
                || path
                    .strip_prefix(h.as_str())
                    .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
        })
    }
    /// Every key of `v` (at `at`) that nothing carried or warned about.
    fn rest(&mut self, v: &Value, at: &str) {
        match v {
            Value::Mapping(map) => {
                for (k, child) in map {
                    let k = s(Some(k)).unwrap_or_default();
                    let here = if at.is_empty() { k } else { format!("{at}.{k}") };
                    if self.covers(&here) {
                        continue;
                    }
                    if child.is_mapping() || child.is_sequence() {
                        self.rest(child, &here);
                    } else {
                        self.warn(&here, "not carried over (regate has no equivalent)");
                    }
                }
            }
            Value::Sequence(items) => {
                for (i, child) in items.iter().enumerate() {
                    let here = format!("{at}[{i}]");
                    if !self.covers(&here) {
                        self.rest(child, &here);
                    }
                }
            }
            _ => {
                if !at.is_empty() && !self.covers(at) {
                    self.warn(at, "not carried over (regate has no equivalent)");
                }
            }
        }
    }
}

/// Returns (regate YAML, warnings).
pub fn convert(text: &str) -> Result<(String, Vec<String>), String> {
    let src: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not a YAML document: {e}"))?;
    if src.as_mapping().is_none() {
        return Err("not a distribution config (expected a mapping at the top)".into());
    }
    let mut out = m();
    let mut c = Conv {
        warn: Vec::new(),
        handled: vec!["version".into()],
    };
    http(&src, &mut out, &mut c);
    log(&src, &mut out, &mut c);
    let delete = storage(&src, &mut out, &mut c);
    auth(&src, &mut out, &mut c, delete);
    notifications(&src, &mut out, &mut c);
    proxy(&src, &mut out, &mut c);
    c.warn_if(
        &src,
        "redis",
        "not carried over: registry:2 uses it as a blob descriptor cache, which regate does not need \
         (regate's own `redis:` shares rate limits between replicas)",
    );
    c.warn_if(
        &src,
        "health",
        "not carried over: regate answers /healthz and /readyz (storage reachable) itself; checks of other files or services are not run",
    );
    c.warn_if(
        &src,
        "validation",
        "not carried over: regate validates manifests itself and has no URL allow/deny lists",
    );
    c.warn_if(
        &src,
        "compatibility",
        "not carried over: schema1 manifests are not supported",
    );
    c.warn_if(
        &src,
        "middleware",
        "not carried over: use storage.redirect (with oss.presign_endpoint for a CDN)",
    );
    c.warn_if(
        &src,
        "reporting",
        "not carried over: regate exports Prometheus metrics at /metrics",
    );
    c.rest(&src, "");
    let yaml = serde_yaml_ng::to_string(&Value::Mapping(out)).map_err(|e| e.to_string())?;
    Ok((yaml, c.warn))
}

fn http(src: &Value, out: &mut Mapping, c: &mut Conv) {
    if let Some(addr) = s(get(src, &["http", "addr"])) {
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr
        };
        put(out, "listen", string(addr));
        c.carried("http.addr");
    }
    if let Some(host) = s(get(src, &["http", "host"])) {
        put(out, "public_url", string(host.trim_end_matches('/')));
        c.carried("http.host");
    }
    if let (Some(cert), Some(k)) = (
        s(get(src, &["http", "tls", "certificate"])),
        s(get(src, &["http", "tls", "key"])),
    ) {
        let mut t = m();
        put(&mut t, "cert", string(cert));
        put(&mut t, "key", string(k));
        put(out, "tls", Value::Mapping(t));
        c.carried("http.tls.certificate");
        c.carried("http.tls.key");
    }
    c.warn_if(
        src,
        "http.tls.letsencrypt",
        "not supported; provide tls.cert and tls.key (regate reloads them when they change)",
    );
    c.warn_if(
        src,
        "http.tls.clientcas",
        "not carried over: client certificates are not checked",
    );
    for k in ["minimumtls", "ciphersuites"] {
        c.warn_if(
            src,
            &format!("http.tls.{k}"),
            "not carried over: regate offers TLS 1.2 and 1.3 with its own cipher order",
        );
    }
    c.warn_if(
        src,
        "http.headers",
        "not carried over; regate sets HSTS (tls.hsts_max_age), nosniff and the API version header itself",
    );
    c.warn_if(
        src,
        "http.debug",
        "not carried over: regate serves /metrics on its main listener",
    );
    c.warn_if(
        src,
        "http.secret",
        "not needed: regate keeps upload state in storage, shared by replicas",
    );
    c.warn_if(src, "http.net", "not carried over: regate listens on TCP only");
    c.warn_if(src, "http.prefix", "not carried over: regate serves /v2/ at the root");
    c.warn_if(
        src,
        "http.relativeurls",
        "not carried over: Location headers are built from public_url",
    );
    if let Some(t) = s(get(src, &["http", "draintimeout"])).and_then(|t| go_duration_secs(&t)) {
        let mut l = m();
        put(&mut l, "shutdown_grace", Value::Number(t.into()));
        put(out, "limits", Value::Mapping(l));
        c.carried("http.draintimeout");
    }
    c.warn_if(
        src,
        "http.http2",
        "not carried over: regate speaks HTTP/2 (TLS ALPN and h2c) on its own",
    );
    c.warn_if(
        src,
        "http.h2c",
        "not carried over: regate speaks HTTP/2 (TLS ALPN and h2c) on its own",
    );
}

fn log(src: &Value, out: &mut Mapping, c: &mut Conv) {
    match s(get(src, &["log", "formatter"])).as_deref() {
        Some(f @ ("json" | "text")) => {
            let mut l = m();
            put(&mut l, "format", string(f));
            put(out, "log", Value::Mapping(l));
            c.carried("log.formatter");
        }
        Some(other) => c.warn(
            "log.formatter",
            &format!("{other:?} is not supported: regate logs text or json (log.format)"),
        ),
        None => {}
    }
    c.warn_if(
        src,
        "log.level",
        "not carried over: set the environment variable REGATE_LOG (e.g. REGATE_LOG=debug)",
    );
    c.warn_if(
        src,
        "loglevel",
        "not carried over: set the environment variable REGATE_LOG (e.g. REGATE_LOG=debug)",
    );
    c.warn_if(
        src,
        "log.fields",
        "not carried over: regate's log lines carry their own fields",
    );
    c.warn_if(
        src,
        "log.hooks",
        "not carried over: regate sends no mail; ship its JSON log instead",
    );
    c.warn_if(
        src,
        "log.accesslog",
        "not carried over: regate always logs one line per request (REGATE_LOG=warn hides them)",
    );
}

fn auth(src: &Value, out: &mut Mapping, c: &mut Conv, delete: bool) {
    let mut auth = m();
    if let Some(a) = get(src, &["auth"]).and_then(|v| v.as_mapping()) {
        for (k, v) in a {
            let k = k.as_str().unwrap_or("");
            match k {
                "htpasswd" => {
                    if let Some(p) = s(get(v, &["path"])) {
                        put(&mut auth, "htpasswd", string(p));
                        c.carried("auth.htpasswd.path");
                        // registry:2 lets every user of the file do everything: so does this rule
                        let mut actions = vec![string("pull"), string("push")];
                        if delete {
                            actions.push(string("delete"));
                        }
                        let mut rule = m();
                        put(&mut rule, "repository", string("*"));
                        put(&mut rule, "actions", Value::Sequence(actions));
                        put(&mut rule, "catalog", Value::Bool(true));
                        put(out, "access", Value::Sequence(vec![Value::Mapping(rule)]));
                    }
                    c.warn_if(
                        src,
                        "auth.htpasswd.realm",
                        "not needed: regate answers with a Bearer challenge naming its own token endpoint",
                    );
                }
                "token" => {
                    if let Some(x) = s(get(v, &["service"])) {
                        put(&mut auth, "service", string(x));
                    }
                    if let Some(x) = s(get(v, &["issuer"])) {
                        put(&mut auth, "issuer", string(x));
                    }
                    c.warn(
                        "auth.token",
                        "regate is the token server now; its realm is <public_url>/token. The old token server's users \
                         and permissions are not carried over; configure auth.htpasswd or auth.gitee and access rules",
                    );
                }
                "silly" => c.warn("auth.silly", "a test-only scheme, ignored"),
                other => c.warn(
                    &format!("auth.{other}"),
                    "not supported; use auth.htpasswd or auth.gitee",
                ),
            }
        }
    } else {
        c.warn(
            "auth",
            "absent: registry:2 let anyone pull and push; regate always asks for a sign-in (the generated admin, \
             or auth.htpasswd); for anonymous pulls add auth.anonymous_pull: true and a rule for the account \"anonymous\"",
        );
    }
    if !auth.is_empty() {
        put(out, "auth", Value::Mapping(auth));
    }
}

fn notifications(src: &Value, out: &mut Mapping, c: &mut Conv) {
    c.warn_if(
        src,
        "notifications.events.includereferences",
        "not carried over: regate's events never list a manifest's references",
    );
    let Some(eps) = get(src, &["notifications", "endpoints"]).and_then(|v| v.as_sequence()) else {
        return;
    };
    let mut list = Vec::new();
    for (i, ep) in eps.iter().enumerate() {
        let at = format!("notifications.endpoints[{i}]");
        if get(ep, &["disabled"]).and_then(|b| b.as_bool()) == Some(true) {
            c.warn(&at, "disabled, not carried over");
            continue;
        }
        c.carried(&format!("{at}.disabled"));
        let Some(url) = s(get(ep, &["url"])) else { continue };
        c.carried(&format!("{at}.url"));
        c.carried(&format!("{at}.name"));
        let mut n = m();
        put(&mut n, "url", string(url));
        if let Some(h) = get(ep, &["headers"]).and_then(|v| v.as_mapping()) {
            let mut hm = m();
            for (k, v) in h {
                // distribution headers are lists of values
                let val = match v {
                    Value::Sequence(s) => s.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(", "),
                    other => s_of(other),
                };
                hm.insert(k.clone(), string(val));
            }
            put(&mut n, "headers", Value::Mapping(hm));
            c.carried(&format!("{at}.headers"));
        }
        if let Some(t) = s(get(ep, &["timeout"])) {
            if let Some(secs) = go_duration_secs(&t) {
                put(&mut n, "timeout", Value::Number(secs.into()));
                c.carried(&format!("{at}.timeout"));
            }
        }
        if let Some(b) = s(get(ep, &["backoff"])).and_then(|t| go_duration_secs(&t)) {
            put(&mut n, "max_backoff", Value::Number(b.into()));
            c.warn(
                &format!("{at}.backoff"),
                "carried over as max_backoff: regate's retries back off exponentially from 1 s up to it",
            );
        }
        if get(ep, &["threshold"]).is_some() {
            c.warn(
                &format!("{at}.threshold"),
                "not carried over: regate retries every event until it is delivered or older than max_age",
            );
        }
        for k in ["ignoredmediatypes", "ignore"] {
            if get(ep, &[k]).is_some() {
                c.warn(
                    &format!("{at}.{k}"),
                    "not carried over: regate filters by inclusion only; list the events (events), repositories \
                     (repositories) or media types (media_types) to send instead",
                );
            }
        }
        list.push(Value::Mapping(n));
    }
    if !list.is_empty() {
        put(out, "notifications", Value::Sequence(list));
    }
}

/// registry:2's pull-through cache is regate's `mirror:`.
fn proxy(src: &Value, out: &mut Mapping, c: &mut Conv) {
    let Some(p) = get(src, &["proxy"]) else { return };
    let Some(url) = s(get(p, &["remoteurl"])) else {
        c.warn("proxy", "has no remoteurl; not carried over");
        return;
    };
    let mut mirror = m();
    put(&mut mirror, "url", string(url.trim_end_matches('/')));
    c.carried("proxy.remoteurl");
    for k in ["username", "password"] {
        if let Some(x) = s(get(p, &[k])) {
            put(&mut mirror, k, string(x));
            c.carried(&format!("proxy.{k}"));
        }
    }
    c.warn_if(
        src,
        "proxy.ttl",
        "not carried over: regate keeps mirrored blobs and re-checks mirrored tags after mirror.tag_ttl (300 s)",
    );
    put(out, "mirror", Value::Mapping(mirror));
}

fn s_of(v: &Value) -> String {
    s(Some(v)).unwrap_or_default()
}

/// `5s`, `500ms`, `1m`, `24h0m0s` (Go durations) to whole seconds, at least 1.
fn go_duration_secs(t: &str) -> Option<u64> {
    let t = t.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(|m| (m / 1000).max(1));
    }
    crate::config::parse_duration(t).map(|d| d.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_a_typical_config() {
        let src = r#"
version: 0.1
log: { level: info }
storage:
  filesystem: { rootdirectory: /var/lib/registry }
  delete: { enabled: true }
  cache: { blobdescriptor: inmemory }
http:
  addr: :5000
  host: https://reg.example.com
  headers: { X-Content-Type-Options: [nosniff] }
  tls: { certificate: /certs/a.crt, key: /certs/a.key }
auth:
  htpasswd: { realm: basic-realm, path: /auth/htpasswd }
notifications:
  endpoints:
    - name: ci
      url: https://ci.example.com/hook
      headers: { Authorization: [Bearer abc] }
      timeout: 500ms
      threshold: 5
"#;
        let (yaml, warn) = convert(src).unwrap();
        let c = crate::config::parse(&yaml, "converted", &vec![]).unwrap();
        assert_eq!(c.listen.port(), 5000);
        assert_eq!(c.public_url.as_deref(), Some("https://reg.example.com"));
        assert!(c.storage.delete);
        assert_eq!(
            c.storage.fs.as_ref().unwrap().root,
            std::path::PathBuf::from("/var/lib/registry")
        );
        assert_eq!(c.auth.htpasswd.as_deref(), Some(std::path::Path::new("/auth/htpasswd")));
        assert_eq!(c.notifications[0].headers["Authorization"].expose(), "Bearer abc");
        assert_eq!(c.tls.as_ref().unwrap().cert, std::path::PathBuf::from("/certs/a.crt"));
        assert!(warn.iter().any(|w| w.starts_with("http.headers")));
        assert!(warn.iter().any(|w| w.contains("threshold")));
        assert!(warn.iter().any(|w| w.starts_with("storage.cache")));
    }

    #[test]
    fn s3_and_token_auth() {
        let src = "storage: { s3: { bucket: b, region: us-east-1, regionendpoint: 'http://minio:9000', accesskey: A, secretkey: S, forcepathstyle: true } }\nauth: { token: { realm: x, service: reg, issuer: iss, rootcertbundle: /c } }\n";
        let (yaml, warn) = convert(src).unwrap();
        let c = crate::config::parse(&yaml, "converted", &vec![]).unwrap();
        let s3 = c.storage.s3.unwrap();
        assert_eq!(s3.endpoint.as_deref(), Some("http://minio:9000"));
        assert!(!s3.virtual_host_style);
        assert!(!c.storage.delete, "distribution's default: delete disabled");
        assert_eq!(c.auth.service.as_deref(), Some("reg"));
        assert!(warn.iter().any(|w| w.starts_with("auth.token")));
        assert!(convert("- a list").is_err());
    }

    #[test]
    fn proxy_becomes_mirror_and_chunksize_part_size() {
        let src = "proxy: { remoteurl: https://registry-1.docker.io, username: u, password: p, ttl: 168h }\n\
                   storage: { s3: { bucket: b, region: r, chunksize: 10485760, multipartcopychunksize: 33554432 } }\n\
                   log: { formatter: json, level: debug }\n";
        let (yaml, warn) = convert(src).unwrap();
        let c = crate::config::parse(&yaml, "converted", &vec![]).unwrap();
        let mirror = c.mirror.unwrap();
        assert_eq!(mirror.url, "https://registry-1.docker.io");
        assert_eq!(mirror.password.unwrap().expose(), "p");
        assert_eq!(c.storage.s3.unwrap().part_size, Some(10_485_760));
        assert_eq!(c.log.format.as_deref(), Some("json"));
        assert!(
            !warn.iter().any(|w| w.starts_with("proxy:") || w.starts_with("proxy ")),
            "{warn:?}"
        );
        assert!(warn.iter().any(|w| w.starts_with("proxy.ttl")), "{warn:?}");
        assert!(warn.iter().any(|w| w.starts_with("log.level")), "{warn:?}");
        assert!(!warn.iter().any(|w| w.starts_with("storage.s3.chunksize")), "{warn:?}");
    }

    #[test]
    fn every_key_not_carried_is_warned_about_with_the_right_reason() {
        let src = "version: 0.1\n\
                   log: { formatter: logstash, fields: { service: registry } }\n\
                   health: { storagedriver: { enabled: true, interval: 10s } }\n\
                   storage: { filesystem: { rootdirectory: /r }, newfangled: { x: 1 } }\n\
                   http: { addr: ':5000', somethingnew: 1 }\n\
                   notifications:\n  events: { includereferences: true }\n  endpoints:\n    \
                   - { name: a, url: 'https://h', ignoredmediatypes: [application/octet-stream], ignore: { actions: [pull] }, futurekey: 1 }\n";
        let (_, warn) = convert(src).unwrap();
        for key in [
            "log.formatter: \"logstash\"",
            "log.fields",
            "health",
            "storage.newfangled",
            "http.somethingnew",
            "notifications.events.includereferences",
            "notifications.endpoints[0].futurekey",
        ] {
            assert!(warn.iter().any(|w| w.starts_with(key)), "{key}: {warn:#?}");
        }
        for k in ["ignoredmediatypes", "ignore"] {
            let w = warn
                .iter()
                .find(|w| w.starts_with(&format!("notifications.endpoints[0].{k}:")))
                .unwrap();
            assert!(w.contains("inclusion") && !w.contains("backoff"), "{w}");
        }
        assert!(!warn.iter().any(|w| w.starts_with("version")), "{warn:#?}");
        assert!(
            !warn.iter().any(|w| w.starts_with("notifications.endpoints[0].name")),
            "{warn:#?}"
        );
    }

    #[test]
    fn htpasswd_users_keep_push_and_pull_everywhere() {
        use crate::auth::policy::Subject;
        use crate::types::scope::Action;
        let src =
            "auth: { htpasswd: { realm: r, path: /auth/htpasswd } }\nstorage: { filesystem: { rootdirectory: /r } }\n";
        let (yaml, _) = convert(src).unwrap();
        let c = crate::config::parse(&yaml, "converted", &vec![]).unwrap();
        assert!(c.validate(false).is_empty(), "{:?}", c.validate(false));
        let policy = crate::bootstrap::build_policy(&c);
        let alice = Subject {
            account: "alice".into(),
            groups: vec![],
            ip: "127.0.0.1".parse().unwrap(),
            anonymous: false,
            limit: None,
            gitee: None,
            oidc: None,
        };
        // registry:2 let every htpasswd user push to myapp: the imported config does too
        let got = policy.actions(&alice, "myapp");
        assert!(got.contains(&Action::Pull) && got.contains(&Action::Push), "{yaml}");
        assert!(!got.contains(&Action::Delete), "deletes were disabled");
        assert!(policy.catalog(&alice));
        let anon = Subject::anonymous("127.0.0.1".parse().unwrap());
        assert!(policy.actions(&anon, "myapp").is_empty());
    }
}
