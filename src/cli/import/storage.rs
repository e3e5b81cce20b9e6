//! `storage:` of a distribution config: its drivers (filesystem, s3, oss, inmemory, …) and their
//! options as regate's `storage:` backends, `delete:` and the upload purger.

use super::{get, go_duration_secs, m, put, s, string, Conv};
use serde_yaml_ng::{Mapping, Value};

/// Returns whether deletes are enabled.
pub(super) fn storage(src: &Value, out: &mut Mapping, c: &mut Conv) -> bool {
    let mut st = m();
    let mut gc = m();
    if let Some(storage) = get(src, &["storage"]).and_then(|v| v.as_mapping()) {
        for (k, v) in storage {
            let k = k.as_str().unwrap_or("");
            let here = format!("storage.{k}");
            match k {
                "filesystem" => {
                    put(&mut st, "backend", string("fs"));
                    let mut fs = m();
                    put(
                        &mut fs,
                        "root",
                        string(s(get(v, &["rootdirectory"])).unwrap_or_else(|| "/var/lib/registry".into())),
                    );
                    put(&mut st, "fs", Value::Mapping(fs));
                    c.carried("storage.filesystem.rootdirectory");
                    c.warn_if(
                        src,
                        "storage.filesystem.maxthreads",
                        "not needed: regate's file I/O is bounded by its own pool",
                    );
                }
                "inmemory" => {
                    put(&mut st, "backend", string("memory"));
                    c.carried(&here);
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
                            c.carried(&format!("storage.s3.{from}"));
                        }
                    }
                    if let Some(f) = get(v, &["forcepathstyle"]).and_then(|b| b.as_bool()) {
                        put(&mut s3, "virtual_host_style", Value::Bool(!f));
                        c.carried("storage.s3.forcepathstyle");
                    }
                    part_size(v, &mut s3, c, "storage.s3");
                    c.warn_if(
                        src,
                        "storage.s3.secure",
                        "carried in the endpoint's scheme (http:// or https://)",
                    );
                    c.warn_if(
                        src,
                        "storage.s3.v4auth",
                        "not needed: regate always signs with AWS Signature V4",
                    );
                    for k in ["encrypt", "keyid", "storageclass", "objectacl", "sessiontoken"] {
                        c.warn_if(
                            src,
                            &format!("storage.s3.{k}"),
                            "not carried over: set it as the bucket's default instead",
                        );
                    }
                    for k in [
                        "multipartcopychunksize",
                        "multipartcopymaxconcurrency",
                        "multipartcopythresholdsize",
                    ] {
                        c.warn_if(
                            src,
                            &format!("storage.s3.{k}"),
                            "not needed: regate never copies objects (blobs are written once, where they stay)",
                        );
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
                            c.carried(&format!("storage.oss.{from}"));
                        }
                    }
                    let internal = get(v, &["internal"]).and_then(|b| b.as_bool()) == Some(true);
                    let scheme = if get(v, &["secure"]).and_then(|b| b.as_bool()) == Some(false) {
                        "http"
                    } else {
                        "https"
                    };
                    if !oss.contains_key(string("endpoint")) {
                        if let Some(r) = s(get(v, &["region"])) {
                            let r = if internal { format!("{r}-internal") } else { r };
                            put(&mut oss, "endpoint", string(format!("{scheme}://{r}.aliyuncs.com")));
                            c.carried("storage.oss.region");
                            c.carried("storage.oss.internal");
                            c.carried("storage.oss.secure");
                        }
                    } else if let Some(e) = s(get(v, &["endpoint"])) {
                        if !e.contains("://") {
                            put(&mut oss, "endpoint", string(format!("{scheme}://{e}")));
                            c.carried("storage.oss.secure");
                        }
                    }
                    part_size(v, &mut oss, c, "storage.oss");
                    c.warn_if(
                        src,
                        "storage.oss.encrypt",
                        "not carried over: set server-side encryption as the bucket's default instead",
                    );
                    put(&mut st, "oss", Value::Mapping(oss));
                }
                "delete" => {
                    let en = get(v, &["enabled"]).and_then(|b| b.as_bool()).unwrap_or(false);
                    put(&mut st, "delete", Value::Bool(en));
                    c.carried(&here);
                }
                "redirect" => {
                    let disabled = get(v, &["disable"]).and_then(|b| b.as_bool()).unwrap_or(false);
                    put(&mut st, "redirect", Value::Bool(!disabled));
                    c.carried(&here);
                }
                "cache" => c.warn(&here, "not needed: regate caches manifests and blob lookups itself"),
                "maintenance" => {
                    let p = &["uploadpurging"];
                    if let Some(u) = get(v, p) {
                        if get(u, &["enabled"]).and_then(|b| b.as_bool()) == Some(false) {
                            put(&mut gc, "upload_purge_interval", Value::Number(0.into()));
                        } else if let Some(i) = s(get(u, &["interval"])).and_then(|t| go_duration_secs(&t)) {
                            put(&mut gc, "upload_purge_interval", Value::Number(i.into()));
                        }
                        if let Some(a) = s(get(u, &["age"])).and_then(|t| go_duration_secs(&t)) {
                            put(&mut gc, "upload_max_age", Value::Number(a.into()));
                        }
                        for k in ["enabled", "interval", "age"] {
                            c.carried(&format!("storage.maintenance.uploadpurging.{k}"));
                        }
                        if get(u, &["dryrun"]).and_then(|b| b.as_bool()) == Some(true) {
                            c.warn(
                                "storage.maintenance.uploadpurging.dryrun",
                                "not carried over: regate purges for real; `regate gc --dry-run` shows what would go",
                            );
                        }
                        c.carried("storage.maintenance.uploadpurging.dryrun");
                    }
                    c.warn_if(
                        src,
                        "storage.maintenance.readonly",
                        "not carried over: regate has no read-only mode (an access policy without push does the same)",
                    );
                }
                "tag" => c.warn(&here, "not needed: regate lists tags itself"),
                other => c.warn(
                    &here,
                    &format!("the {other} storage driver is not supported (fs, s3, oss, cos, lfs, memory)"),
                ),
            }
        }
    }
    let delete = st.get(string("delete")).and_then(Value::as_bool).unwrap_or(false);
    if !st.contains_key(string("delete")) {
        // distribution's default is delete disabled
        put(&mut st, "delete", Value::Bool(false));
    }
    put(out, "storage", Value::Mapping(st));
    if !gc.is_empty() {
        put(out, "gc", Value::Mapping(gc));
    }
    delete
}

/// distribution's `chunksize` (bytes) is regate's `part_size`.
fn part_size(v: &Value, to: &mut Mapping, c: &mut Conv, at: &str) {
    let Some(n) = get(v, &["chunksize"]) else { return };
    let n = match n {
        Value::Number(n) => n.as_u64(),
        Value::String(t) => t.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) => {
            put(to, "part_size", Value::Number(n.into()));
            c.carried(&format!("{at}.chunksize"));
        }
        None => c.warn(&format!("{at}.chunksize"), "not a number of bytes; not carried over"),
    }
}
