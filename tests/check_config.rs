//! `regate check-config` on the real binary: every problem at once, one line each, naming the
//! key path and the line; exit 2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

/// Runs check-config on `yaml`; returns (exit code, stderr lines).
fn check(yaml: &str) -> (i32, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("regate.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = common::regate()
        .args(["check-config", "--schema-only", "--config"])
        .arg(&p)
        .output()
        .unwrap();
    let prefix = format!("regate: {}", p.display());
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(|l| {
            l.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("not a problem line: {l}"))
                .to_owned()
        })
        .collect();
    (out.status.code().unwrap(), lines)
}

#[test]
fn listen_without_a_host_names_the_key() {
    let (code, lines) = check("listen: \"nohost\"\n");
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(":1: listen: invalid socket address syntax"),
        "{lines:?}"
    );
}

#[test]
fn a_bad_network_names_its_index() {
    let (code, lines) = check("network:\n  allow:\n    - 10.0.0.0/8\n    - 10.0.0.300/8\n");
    assert_eq!(code, 2);
    assert_eq!(lines, vec![":4: network.allow[1]: invalid IP address syntax: expected an IP address or network, e.g. 10.0.0.0/8 or 192.168.1.10"]);
}

#[test]
fn durations_take_units_like_the_gc_command() {
    let (code, lines) = check("gc: { grace: 1h, interval: 1d, upload_max_age: 7d }\nauth: { token_ttl: 5m }\nlimits: { shutdown_grace: 30 }\n");
    assert_eq!((code, lines), (0, vec![]));
    let (code, lines) = check("gc:\n  grace: soon\n");
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(":2: gc.grace: \"soon\" is not a duration"),
        "{lines:?}"
    );
}

#[test]
fn a_typo_in_an_access_rule_names_the_rule() {
    let (code, lines) = check(
        "access:\n  - { account: admin, repository: \"*\", actions: [\"*\"] }\n  - { repository: \"x/*\", actions: [pull] }\n  - { acount: bob, repository: \"b/*\", actions: [pull] }\n",
    );
    assert_eq!(code, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with(":4: access[2].acount: unknown key, expected one of `account`"),
        "{lines:?}"
    );
}

#[test]
fn every_problem_at_once_in_file_order() {
    let (code, lines) = check(
        "listen: nohost\n\
         network: { allow: [10.0.0.300/8], trusted_proxies: [nope] }\n\
         gc: { grace: soon }\n\
         access:\n  - { acount: bob, repository: \"b/*\", actions: [pull, fly] }\n\
         storage: { backend: s3 }\n\
         bogus: 1\n",
    );
    assert_eq!(code, 2);
    let want = [
        ":1: listen: ",
        ":2: network.allow[0]: ",
        ":2: network.trusted_proxies[0]: ",
        ":3: gc.grace: ",
        ":5: access[0].acount: ",
        ":5: access[0].actions[1]: unknown variant `fly`",
        ":7: bogus: unknown key",
        ": storage.s3: required when storage.backend is s3",
    ];
    assert_eq!(lines.len(), want.len(), "{lines:#?}");
    for (l, w) in lines.iter().zip(want) {
        assert!(l.starts_with(w), "{w}\n{lines:#?}");
    }
}
