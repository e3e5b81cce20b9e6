//! `regate import-config`: reads a distribution (`registry:2`) `config.yml` and prints the
//! equivalent regate config, with one warning per key that cannot be carried over.

use serde_yaml_ng::{Mapping, Value};

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

/// Returns (regate YAML, warnings).
pub fn convert(text: &str) -> Result<(String, Vec<String>), String> {
    let src: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("not a YAML document: {e}"))?;
    let Some(top) = src.as_mapping() else {
        return Err("not a distribution config (expected a mapping at the top)".into());
    };
    let mut out = m();
    let mut warn = Vec::new();
    for (k, _) in top {
        let k = k.as_str().unwrap_or("");
        if ![
            "version",
            "log",
            "storage",
            "auth",
            "http",
            "notifications",
            "health",
            "proxy",
            "validation",
            "compatibility",
            "redis",
            "middleware",
            "reporting",
            "loglevel",
        ]
        .contains(&k)
        {
            warn.push(format!("{k}: unknown distribution key, ignored"));
        }
    }
    // http
    if let Some(addr) = s(get(&src, &["http", "addr"])) {
        let addr = if addr.starts_with(':') {
            format!("0.0.0.0{addr}")
        } else {
            addr
        };
        put(&mut out, "listen", string(addr));
    }
    if let Some(host) = s(get(&src, &["http", "host"])) {
        put(&mut out, "public_url", string(host.trim_end_matches('/')));
    }
    if let (Some(c), Some(k)) = (
        s(get(&src, &["http", "tls", "certificate"])),
        s(get(&src, &["http", "tls", "key"])),
    ) {
        let mut t = m();
        put(&mut t, "cert", string(c));
        put(&mut t, "key", string(k));
        put(&mut out, "tls", Value::Mapping(t));
    }
    if get(&src, &["http", "tls", "letsencrypt"]).is_some() {
        warn.push(
            "http.tls.letsencrypt: not supported; provide tls.cert and tls.key (regate reloads them when they change)"
                .into(),
        );
    }
    if get(&src, &["http", "headers"]).is_some() {
        warn.push("http.headers: not carried over; regate sets HSTS (tls.hsts_max_age), nosniff and the API version header itself".into());
    }
    for k in [
        "secret",
        "relativeurls",
        "draintimeout",
        "debug",
        "http2",
        "net",
        "prefix",
    ] {
        if get(&src, &["http", k]).is_some() {
            warn.push(format!("http.{k}: no regate equivalent, ignored"));
        }
    }
    // storage
    let mut st = m();
    if let Some(storage) = get(&src, &["storage"]).and_then(|v| v.as_mapping()) {
        for (k, v) in storage {
            match k.as_str().unwrap_or("") {
                "filesystem" => {
                    put(&mut st, "backend", string("fs"));
                    let mut fs = m();
                    put(
                        &mut fs,
                        "root",
                        string(s(get(v, &["rootdirectory"])).unwrap_or_else(|| "/var/lib/registry".into())),
                    );
                    put(&mut st, "fs", Value::Mapping(fs));
                }
                "s3" => {
                    put(&mut st, "backend", string("s3"));
                    let mut s3 = m();
                    for (from, to) in [
                        ("bucket", "bucket"),
                        ("region", "region"),
                        ("regionendpoint", "endpoint"),
                        ("accesskey", "access_key_id"),
                        ("secretkey", "secret_access_key"),
                        ("rootdirectory", "root"),
                    ] {
                        if let Some(x) = s(get(v, &[from])) {
                            put(&mut s3, to, string(x));
                        }
                    }
                    if let Some(f) = get(v, &["forcepathstyle"]).and_then(|b| b.as_bool()) {
                        put(&mut s3, "virtual_host_style", Value::Bool(!f));
                    }
                    for k in [
                        "encrypt",
                        "keyid",
                        "secure",
                        "v4auth",
                        "chunksize",
                        "multipartcopychunksize",
                        "storageclass",
                        "objectacl",
                    ] {
                        if get(v, &[k]).is_some() {
                            warn.push(format!("storage.s3.{k}: not carried over"));
                        }
                    }
                    put(&mut st, "s3", Value::Mapping(s3));
                }
                "oss" => {
                    put(&mut st, "backend", string("oss"));
                    let mut oss = m();
                    for (from, to) in [
                        ("bucket", "bucket"),
                        ("endpoint", "endpoint"),
                        ("accesskeyid", "access_key_id"),
                        ("accesskeysecret", "access_key_secret"),
                        ("rootdirectory", "root"),
                    ] {
                        if let Some(x) = s(get(v, &[from])) {
                            put(&mut oss, to, string(x));
                        }
                    }
                    if !oss.contains_key(string("endpoint")) {
                        if let Some(r) = s(get(v, &["region"])) {
                            put(&mut oss, "endpoint", string(format!("https://{r}.aliyuncs.com")));
                        }
                    }
                    put(&mut st, "oss", Value::Mapping(oss));
                }
                "delete" => {
                    let en = get(v, &["enabled"]).and_then(|b| b.as_bool()).unwrap_or(false);
                    put(&mut st, "delete", Value::Bool(en));
                }
                "redirect" => {
                    let disabled = get(v, &["disable"]).and_then(|b| b.as_bool()).unwrap_or(false);
                    put(&mut st, "redirect", Value::Bool(!disabled));
                }
                "cache" | "maintenance" => warn.push(format!(
                    "storage.{}: not needed (regate caches manifests itself; uploads are purged by regate gc)",
                    k.as_str().unwrap_or("")
                )),
                other => warn.push(format!("storage.{other}: no regate equivalent, ignored")),
            }
        }
    }
    if !st.contains_key(string("delete")) {
        // distribution's default is delete disabled
        put(&mut st, "delete", Value::Bool(false));
    }
    put(&mut out, "storage", Value::Mapping(st));
    // auth
    let mut auth = m();
    if let Some(a) = get(&src, &["auth"]).and_then(|v| v.as_mapping()) {
        for (k, v) in a {
            match k.as_str().unwrap_or("") {
                "htpasswd" => {
                    if let Some(p) = s(get(v, &["path"])) {
                        put(&mut auth, "htpasswd", string(p));
                    }
                }
                "token" => {
                    if let Some(x) = s(get(v, &["service"])) {
                        put(&mut auth, "service", string(x));
                    }
                    if let Some(x) = s(get(v, &["issuer"])) {
                        put(&mut auth, "issuer", string(x));
                    }
                    warn.push("auth.token: regate is the token server now; its realm is <public_url>/token. The old token server's users are not carried over; configure auth.htpasswd or auth.gitee".into());
                }
                "silly" => warn.push("auth.silly: a test-only scheme, ignored".into()),
                other => warn.push(format!("auth.{other}: no regate equivalent, ignored")),
            }
        }
    }
    if !auth.is_empty() {
        put(&mut out, "auth", Value::Mapping(auth));
    }
    // notifications
    if let Some(eps) = get(&src, &["notifications", "endpoints"]).and_then(|v| v.as_sequence()) {
        let mut list = Vec::new();
        for (i, ep) in eps.iter().enumerate() {
            if get(ep, &["disabled"]).and_then(|b| b.as_bool()) == Some(true) {
                warn.push(format!("notifications.endpoints[{i}]: disabled, not carried over"));
                continue;
            }
            let Some(url) = s(get(ep, &["url"])) else { continue };
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
            }
            if let Some(t) = s(get(ep, &["timeout"])) {
                if let Some(secs) = go_duration_secs(&t) {
                    put(&mut n, "timeout", Value::Number(secs.into()));
                }
            }
            for k in ["threshold", "backoff", "ignoredmediatypes", "ignore"] {
                if get(ep, &[k]).is_some() {
                    warn.push(format!(
                        "notifications.endpoints[{i}].{k}: not carried over (regate retries with exponential backoff)"
                    ));
                }
            }
            list.push(Value::Mapping(n));
        }
        if !list.is_empty() {
            put(&mut out, "notifications", Value::Sequence(list));
        }
    }
    if get(&src, &["proxy"]).is_some() {
        warn.push("proxy: pull-through cache (mirror) is not carried over".into());
    }
    if get(&src, &["redis"]).is_some() {
        warn.push("redis: not needed".into());
    }
    let yaml = serde_yaml_ng::to_string(&Value::Mapping(out)).map_err(|e| e.to_string())?;
    Ok((yaml, warn))
}

fn s_of(v: &Value) -> String {
    s(Some(v)).unwrap_or_default()
}

/// `5s`, `500ms`, `1m` (Go durations) to whole seconds, at least 1.
fn go_duration_secs(t: &str) -> Option<u64> {
    let t = t.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(|m| (m / 1000).max(1));
    }
    crate::cli::parse_duration(t).map(|d| d.as_secs().max(1))
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
}
