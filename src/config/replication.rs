//! `replication:`: copying images to and from other registries.

use super::Secret;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Every push, tag and delete here is copied to the remote.
    Push,
    /// The remote's new and changed tags are copied here on a schedule.
    Pull,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    pub name: String,
    /// The remote registry's base URL (`https://reg-dr.example.com`).
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    /// Or `password_file`, or `REGATE_REPLICATION__<i>__PASSWORD`.
    #[serde(default)]
    pub password: Option<Secret>,
    pub direction: Direction,
    /// Repository globs; default all.
    #[serde(default)]
    pub repositories: Option<Vec<String>>,
    /// Tag globs; default all.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Push rules: also copy tag and manifest deletes.
    #[serde(default)]
    pub deletes: bool,
    /// Seconds: the pull schedule, and the full reconcile of push rules.
    #[serde(default = "ReplicationConfig::d_interval", deserialize_with = "super::secs::secs")]
    pub interval: u64,
    /// Prefix rewrite of repository names on the way (`team/` -> `mirror/team/`).
    #[serde(default)]
    pub rename: Option<Rename>,
    /// PEM CA certificates the remote's TLS certificate is checked against (besides the system's).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// Most events waiting for this rule; further ones are dropped (the reconcile repairs them).
    #[serde(default = "ReplicationConfig::d_queue")]
    pub queue_size: usize,
}

impl ReplicationConfig {
    fn d_interval() -> u64 {
        600
    }
    fn d_queue() -> usize {
        100_000
    }

    /// Problems with the rules, each naming its key.
    pub fn check(rules: &[ReplicationConfig], files: bool) -> Vec<String> {
        let mut e = Vec::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            let at = format!("replication[{i}]");
            if r.name.is_empty()
                || !r
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                e.push(format!(
                    "{at}.name: {:?} must be letters, digits, '-', '_' or '.'",
                    r.name
                ));
            } else if !names.insert(r.name.clone()) {
                e.push(format!("{at}.name: {:?} is used by another rule", r.name));
            }
            if let Err(m) = super::check_base_url(&r.url) {
                e.push(format!("{at}.url: {m}"));
            }
            if r.password.is_some() && r.username.is_none() {
                e.push(format!("{at}.username: needed with a password"));
            }
            if r.deletes && r.direction == Direction::Pull {
                e.push(format!(
                    "{at}.deletes: only push rules copy deletes (pull never deletes here)"
                ));
            }
            if r.interval == 0 {
                e.push(format!("{at}.interval: must be at least 1 second"));
            }
            if let Some(rn) = &r.rename {
                if rn.from.is_empty() {
                    e.push(format!("{at}.rename.from: must not be empty"));
                }
            }
            if let (Some(ca), true) = (&r.tls_ca, files) {
                if let Err(err) = std::fs::read(ca) {
                    e.push(format!("{at}.tls_ca: cannot read {}: {err}", ca.display()));
                }
            }
        }
        e
    }
}
