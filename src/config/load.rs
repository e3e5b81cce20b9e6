//! Reading a config: YAML text, `*_file` secrets, `REGATE_*` environment overrides, then
//! deserialising (every problem at once, with its key and line, through `diagnose`).

use super::{diagnose, Config};
use serde_yaml_ng::Value;
use std::path::Path;

/// Keys that hold secrets and may be given as `<key>_file: /path` instead.
const SECRET_KEYS: &[&str] = &[
    "client_secret",
    "service_token",
    "url",
    "access_key_secret",
    "secret_access_key",
    "access_key_id",
    "token",
    "secret_key",
    "secret_id",
    "secret",
    "password",
    "authorization",
];

/// Environment variables that are not config paths.
const RESERVED_ENV: &[&str] = &["REGATE_CONFIG", "REGATE_LOG", "REGATE_LOG_FORMAT"];

/// Where environment variables come from; tests pass their own list instead of the process's.
pub type Env = Vec<(String, String)>;

pub fn process_env() -> Env {
    std::env::vars().collect()
}

/// Parses the YAML text, applies `*_file` secrets and `REGATE_*` overrides, and deserialises.
/// Errors are one line each, naming the file or key at fault.
#[cfg(test)]
pub fn parse(text: &str, origin: &str, env: &Env) -> Result<Config, Vec<String>> {
    parse_with(text, origin, env, true)
}

/// [`parse`]; without `read_files`, `*_file` secrets are checked for form only (a path), not read
/// (`check-config --schema-only`).
pub fn parse_with(text: &str, origin: &str, env: &Env, read_files: bool) -> Result<Config, Vec<String>> {
    let mut v: Value = if text.trim().is_empty() {
        Value::Mapping(Default::default())
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| vec![format!("{origin}: {e}")])?
    };
    if v.is_null() {
        v = Value::Mapping(Default::default());
    }
    let mut errs = Vec::new();
    // files first, so an environment variable overrides a `*_file` from the config
    resolve_secret_files(&mut v, "", read_files, &mut errs);
    if errs.is_empty() {
        apply_env(&mut v, env, &mut errs);
        resolve_secret_files(&mut v, "", read_files, &mut errs);
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    match serde_yaml_ng::from_value::<Config>(v.clone()) {
        Ok(c) => Ok(c),
        // every problem at once, each with its key path and line
        Err(_) => Err(diagnose::problems(v, text, origin, read_files)),
    }
}

fn apply_env(v: &mut Value, env: &Env, errs: &mut Vec<String>) {
    for (k, val) in env {
        let Some(path) = k.strip_prefix("REGATE_") else {
            continue;
        };
        if RESERVED_ENV.contains(&k.as_str()) || path.is_empty() {
            continue;
        }
        let keys: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
        if keys.iter().any(|s| s.is_empty()) {
            errs.push(format!("environment variable {k}: empty path component"));
            continue;
        }
        // scalars are parsed as YAML so numbers and booleans keep their types
        let parsed: Value = serde_yaml_ng::from_str(val).unwrap_or_else(|_| Value::String(val.clone()));
        let parsed = match parsed {
            Value::Mapping(_) | Value::Sequence(_) | Value::Tagged(_) => parsed,
            Value::Null => Value::String(val.clone()),
            other => {
                // secrets stay strings even when they look like numbers
                if SECRET_KEYS.contains(&keys[keys.len() - 1].as_str()) {
                    Value::String(val.clone())
                } else {
                    other
                }
            }
        };
        let mut cur = &mut *v;
        for (i, key) in keys.iter().enumerate() {
            if !cur.is_mapping() {
                *cur = Value::Mapping(Default::default());
            }
            let Value::Mapping(m) = cur else { break };
            let kv = Value::String(key.clone());
            if i + 1 == keys.len() {
                m.insert(kv, parsed.clone());
                break;
            }
            if !m.contains_key(&kv) || m.get(&kv).is_some_and(|x| x.is_null()) {
                m.insert(kv.clone(), Value::Mapping(Default::default()));
            }
            match m.get_mut(&kv) {
                Some(next) => cur = next,
                None => break,
            }
        }
    }
}

fn resolve_secret_files(v: &mut Value, at: &str, read_files: bool, errs: &mut Vec<String>) {
    match v {
        Value::Mapping(m) => {
            let keys: Vec<Value> = m.keys().cloned().collect();
            for k in keys {
                let Some(ks) = k.as_str().map(str::to_owned) else {
                    continue;
                };
                let here = if at.is_empty() {
                    ks.clone()
                } else {
                    format!("{at}.{ks}")
                };
                if let Some(base) = ks.strip_suffix("_file") {
                    if SECRET_KEYS.contains(&base) {
                        let path = m.get(&k).and_then(|p| p.as_str()).map(str::to_owned);
                        let Some(path) = path else {
                            errs.push(format!("{here}: expected a file path"));
                            continue;
                        };
                        if !read_files {
                            m.remove(&k);
                            m.insert(
                                Value::String(base.to_owned()),
                                Value::String(format!("<contents of {path}>")),
                            );
                            continue;
                        }
                        match std::fs::read_to_string(&path) {
                            Ok(s) => {
                                m.remove(&k);
                                m.insert(
                                    Value::String(base.to_owned()),
                                    Value::String(s.trim_end_matches(['\n', '\r']).to_owned()),
                                );
                            }
                            Err(e) => errs.push(format!("{here}: cannot read {path}: {e}")),
                        }
                        continue;
                    }
                }
                if let Some(child) = m.get_mut(&k) {
                    resolve_secret_files(child, &here, read_files, errs);
                }
            }
        }
        Value::Sequence(s) => {
            for (i, c) in s.iter_mut().enumerate() {
                resolve_secret_files(c, &format!("{at}[{i}]"), read_files, errs);
            }
        }
        _ => {}
    }
}

/// Reads the config from a file (or the defaults when `path` is `None`).
pub fn load(path: Option<&Path>, env: &Env) -> Result<Config, Vec<String>> {
    load_with(path, env, true)
}

/// [`load`]; `read_files` as in [`parse_with`].
pub fn load_with(path: Option<&Path>, env: &Env, read_files: bool) -> Result<Config, Vec<String>> {
    match path {
        None => parse_with("", "built-in defaults", env, read_files),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| vec![format!("cannot read config file {}: {e}", p.display())])?;
            parse_with(&text, &p.display().to_string(), env, read_files)
        }
    }
}
