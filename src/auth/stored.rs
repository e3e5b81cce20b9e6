//! Credentials regate mints and keeps itself: robot accounts for CI (`regate robot add`) and
//! CLI passwords (`/api/v1/tokens`). Both are random secrets shown once and stored only as a
//! SHA-256 hash (they are high-entropy, so no bcrypt is needed), in storage so every replica sees
//! them; both carry the repositories and actions they are limited to and an expiry.
//!
//! The secret is `rg_<id>_<hex>`: the id finds the record without a scan.

use super::policy::Glob;
use crate::storage::{layout, Storage};
use crate::types::scope::{expand, Action, Actions};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

const KIND: &str = "credentials";
pub const ROBOT_PREFIX: &str = "robot$";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Grant {
    pub repository: String,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Robot,
    Cli,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub kind: Kind,
    /// `robot$<name>` for robots; the owner's account for CLI passwords.
    pub account: String,
    pub secret_sha256: String,
    pub grants: Vec<Grant>,
    /// Limits inherited from whoever minted this credential (a CLI password minted with a robot
    /// secret can do no more than the robot).
    #[serde(default)]
    pub inherited: Vec<Vec<Grant>>,
    /// Whether the access rules apply too (CLI passwords) or only the grants (robots).
    pub rules: bool,
    pub created: u64,
    /// 0: never expires.
    pub expires: u64,
    #[serde(default)]
    pub description: String,
    /// Minted by a Gitee account: Gitee-mirrored permissions apply to it.
    #[serde(default)]
    pub gitee: bool,
}

/// What a limited credential may do at most.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// Every layer must allow an action (the first matching grant of each layer decides).
    pub layers: Vec<Vec<(Glob, Actions)>>,
    /// Whether the access rules also decide (intersection), or only the layers.
    pub rules: bool,
}

impl Limit {
    pub fn from_record(r: &Record) -> Self {
        let conv = |g: &[Grant]| -> Vec<(Glob, Actions)> {
            g.iter()
                .map(|g| (Glob::new(&g.repository), expand(&g.actions.iter().copied().collect())))
                .collect()
        };
        let mut layers = vec![conv(&r.grants)];
        layers.extend(r.inherited.iter().map(|l| conv(l)));
        Limit { layers, rules: r.rules }
    }

    /// The actions all layers allow on `repo`.
    pub fn actions(&self, repo: &str, account: &str) -> Actions {
        let mut out: Option<Actions> = None;
        for layer in &self.layers {
            let a = layer
                .iter()
                .find(|(g, _)| g.matches(repo, account))
                .map(|(_, a)| a.clone())
                .unwrap_or_default();
            out = Some(match out {
                None => a,
                Some(o) => o.intersection(&a).copied().collect(),
            });
        }
        out.unwrap_or_default()
    }

    /// The grants of this limit, as the layers a credential minted under it inherits.
    pub fn as_inherited(&self) -> Vec<Vec<Grant>> {
        self.layers
            .iter()
            .map(|l| {
                l.iter()
                    .map(|(g, a)| Grant {
                        repository: g.source().to_owned(),
                        actions: a.iter().copied().collect(),
                    })
                    .collect()
            })
            .collect()
    }
}

/// The longest a CLI password lives.
pub const MAX_CLI_TTL: Duration = Duration::from_secs(365 * 86_400);
pub const MAX_PATTERNS: usize = 100;
pub const MAX_PATTERN_LEN: usize = 256;
pub const MAX_DESCRIPTION: usize = 200;

/// What to mint.
pub struct Mint<'a> {
    pub kind: Kind,
    /// A robot's name (without `robot$`), or the account a CLI password is for.
    pub account: &'a str,
    pub repositories: &'a [String],
    pub actions: Vec<Action>,
    /// `None`: never expires (robots only).
    pub ttl: Option<Duration>,
    pub description: &'a str,
    /// The limit of the credential that asks (a CLI password minted with a robot secret can do
    /// no more than the robot); `None` for a full sign-in.
    pub parent: Option<&'a Limit>,
    /// Minted by a Gitee account: Gitee-mirrored permissions apply to it.
    pub gitee: bool,
}

/// Why a mint was refused; each surface words it for its users.
#[derive(Debug)]
pub enum MintError {
    /// A robot name outside letters, digits, `-`, `_`, `.` (1 to 64).
    Name,
    /// A CLI password must expire, within [`MAX_CLI_TTL`]; no credential with a zero lifetime.
    Ttl,
    /// 1 to [`MAX_PATTERNS`] repository patterns, each 1 to [`MAX_PATTERN_LEN`] bytes.
    Repositories,
    /// No actions.
    Actions,
    /// Longer than [`MAX_DESCRIPTION`] characters.
    Description,
    Storage(std::io::Error),
}

impl std::fmt::Display for MintError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MintError::Name => f.write_str("a robot name may only use letters, digits, '-', '_' and '.' (at most 64)"),
            MintError::Ttl => f.write_str("expires_in must be between 1 second and 365 days"),
            MintError::Repositories => f.write_str("repositories must list 1 to 100 patterns"),
            MintError::Actions => f.write_str("actions must name at least one of pull, push, delete, *"),
            MintError::Description => f.write_str("description must be at most 200 characters"),
            MintError::Storage(e) => write!(f, "credential storage: {e}"),
        }
    }
}

/// Robot names: what `robot$<name>` may hold in a Basic user name and a log line.
pub fn valid_robot_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

impl Mint<'_> {
    /// The request's own checks; returns what the credential inherits and whether the access
    /// rules decide too (CLI passwords) or only the grants (robots).
    fn check(&self) -> Result<(Vec<Vec<Grant>>, bool), MintError> {
        if self.kind == Kind::Robot && !valid_robot_name(self.account) {
            return Err(MintError::Name);
        }
        match (self.kind, self.ttl) {
            (_, Some(t)) if t.is_zero() => return Err(MintError::Ttl),
            (Kind::Cli, None) => return Err(MintError::Ttl),
            (Kind::Cli, Some(t)) if t > MAX_CLI_TTL => return Err(MintError::Ttl),
            _ => {}
        }
        let r = self.repositories;
        if r.is_empty() || r.len() > MAX_PATTERNS || r.iter().any(|p| p.is_empty() || p.len() > MAX_PATTERN_LEN) {
            return Err(MintError::Repositories);
        }
        if self.actions.is_empty() {
            return Err(MintError::Actions);
        }
        if self.description.chars().count() > MAX_DESCRIPTION {
            return Err(MintError::Description);
        }
        Ok(match (self.kind, self.parent) {
            (Kind::Robot, _) => (vec![], false),
            (Kind::Cli, Some(l)) => (l.as_inherited(), l.rules),
            (Kind::Cli, None) => (vec![], true),
        })
    }
}

pub struct StoredCreds {
    store: Arc<Storage>,
    cache: moka::sync::Cache<String, Arc<Record>>,
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Splits `rg_<id>_<secret>`.
fn split_secret(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("rg_")?;
    let (id, secret) = rest.split_once('_')?;
    let ok = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() == 64;
    ok.then_some((id, secret))
}

impl StoredCreds {
    pub fn new(store: Arc<Storage>) -> Self {
        Self {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(10))
                .build(),
        }
    }

    async fn load(&self, id: &str) -> std::io::Result<Option<Arc<Record>>> {
        if let Some(r) = self.cache.get(id) {
            return Ok(Some(r));
        }
        let Some(b) = self
            .store
            .read(&layout::state(KIND, &format!("{id}.json")), 64 * 1024)
            .await?
        else {
            return Ok(None);
        };
        let Ok(r) = serde_json::from_slice::<Record>(&b) else {
            return Ok(None);
        };
        let r = Arc::new(r);
        self.cache.insert(id.to_owned(), r.clone());
        Ok(Some(r))
    }

    /// Mints a credential: the one way robot secrets and CLI passwords come to be, whoever asks
    /// (the API, the web page, the command line). Checks the request, derives what the new
    /// credential inherits, stores the record; returns it and the secret (shown once).
    pub async fn mint(&self, m: Mint<'_>, now: u64) -> Result<(Record, String), MintError> {
        let (inherited, rules) = m.check()?;
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = format!("rg_{id}_{}", hex::encode(rand::random::<[u8; 32]>()));
        let account = match m.kind {
            Kind::Robot => format!("{ROBOT_PREFIX}{}", m.account),
            Kind::Cli => m.account.to_owned(),
        };
        let rec = Record {
            id: id.clone(),
            kind: m.kind,
            account,
            secret_sha256: sha(&secret),
            grants: m
                .repositories
                .iter()
                .map(|r| Grant {
                    repository: r.clone(),
                    actions: m.actions.clone(),
                })
                .collect(),
            inherited,
            rules,
            created: now,
            expires: m.ttl.map_or(0, |t| now + t.as_secs()),
            description: m.description.to_owned(),
            gitee: m.gitee,
        };
        let body = serde_json::to_vec_pretty(&rec).map_err(|e| MintError::Storage(std::io::Error::other(e)))?;
        self.store
            .put(&layout::state(KIND, &format!("{id}.json")), Bytes::from(body))
            .await
            .map_err(MintError::Storage)?;
        Ok((rec, secret))
    }

    pub async fn list(&self) -> std::io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for e in self.store.list(&layout::state_dir(KIND)).await? {
            let Some(id) = e.name.strip_suffix(".json") else {
                continue;
            };
            if let Some(r) = self.load(id).await? {
                out.push((*r).clone());
            }
        }
        out.sort_by(|a, b| a.account.cmp(&b.account).then(a.created.cmp(&b.created)));
        Ok(out)
    }

    pub async fn get(&self, id: &str) -> std::io::Result<Option<Record>> {
        if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        Ok(self.load(id).await?.map(|r| (*r).clone()))
    }

    pub async fn revoke(&self, id: &str) -> std::io::Result<()> {
        self.cache.invalidate(id);
        self.store.delete(&layout::state(KIND, &format!("{id}.json"))).await
    }

    /// Checks `user`/`secret`; `Ok(None)` when they do not match a live credential.
    pub async fn verify(&self, user: &str, secret: &str, now: u64) -> std::io::Result<Option<Arc<Record>>> {
        let Some((id, _)) = split_secret(secret) else {
            return Ok(None);
        };
        let Some(rec) = self.load(id).await? else {
            return Ok(None);
        };
        let ok: bool = sha(secret).as_bytes().ct_eq(rec.secret_sha256.as_bytes()).into();
        if !ok || rec.account != user || (rec.expires != 0 && now >= rec.expires) {
            return Ok(None);
        }
        Ok(Some(rec))
    }

    /// The record behind an identity established earlier, if it still stands.
    pub async fn current(&self, id: &str, now: u64) -> std::io::Result<Option<Arc<Record>>> {
        self.cache.invalidate(id);
        Ok(self.load(id).await?.filter(|r| r.expires == 0 || now < r.expires))
    }
}

pub fn looks_like_secret(s: &str) -> bool {
    split_secret(s).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mint_verify_expire_revoke() {
        let st = StoredCreds::new(Arc::new(Storage::Memory(Default::default())));
        let repos = vec!["ci/*".to_owned()];
        let m = Mint {
            kind: Kind::Robot,
            account: "ci",
            repositories: &repos,
            actions: vec![Action::Pull, Action::Push],
            ttl: Some(Duration::from_secs(990)),
            description: "",
            parent: None,
            gitee: false,
        };
        let (rec, secret) = st.mint(m, 10).await.unwrap();
        assert_eq!(
            (rec.account.as_str(), rec.expires, rec.rules),
            ("robot$ci", 1000, false)
        );
        assert!(looks_like_secret(&secret));
        assert!(st.verify("robot$ci", &secret, 20).await.unwrap().is_some());
        assert!(st.verify("robot$other", &secret, 20).await.unwrap().is_none());
        // the same id with one character of the secret changed
        let mut wrong = secret.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == '0' { '1' } else { '0' });
        assert!(st.verify("robot$ci", &wrong, 20).await.unwrap().is_none());
        assert!(st.verify("robot$ci", &secret, 1000).await.unwrap().is_none(), "expired");
        let lim = Limit::from_record(&rec);
        assert_eq!(lim.actions("ci/app", "robot$ci").len(), 2);
        assert!(lim.actions("other/app", "robot$ci").is_empty());
        st.revoke(&rec.id).await.unwrap();
        assert!(st.verify("robot$ci", &secret, 20).await.unwrap().is_none());
    }

    async fn refused_by(st: &StoredCreds, m: Mint<'_>) -> Option<String> {
        st.mint(m, 10).await.err().map(|e| e.to_string())
    }

    #[tokio::test]
    async fn mint_checks_what_it_is_asked() {
        let st = StoredCreds::new(Arc::new(Storage::Memory(Default::default())));
        let any = vec!["*".to_owned()];
        let base = || Mint {
            kind: Kind::Cli,
            account: "alice",
            repositories: &any,
            actions: vec![Action::Pull],
            ttl: Some(Duration::from_secs(60)),
            description: "",
            parent: None,
            gitee: false,
        };
        assert!(
            refused_by(&st, Mint { ttl: None, ..base() }).await.is_some(),
            "a CLI password must expire"
        );
        assert!(refused_by(
            &st,
            Mint {
                ttl: Some(Duration::ZERO),
                ..base()
            }
        )
        .await
        .is_some());
        assert!(refused_by(
            &st,
            Mint {
                ttl: Some(MAX_CLI_TTL + Duration::from_secs(1)),
                ..base()
            }
        )
        .await
        .is_some());
        assert!(refused_by(
            &st,
            Mint {
                repositories: &[],
                ..base()
            }
        )
        .await
        .is_some());
        let long = vec!["a".repeat(MAX_PATTERN_LEN + 1)];
        assert!(refused_by(
            &st,
            Mint {
                repositories: &long,
                ..base()
            }
        )
        .await
        .is_some());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("r{i}")).collect();
        assert!(refused_by(
            &st,
            Mint {
                repositories: &many,
                ..base()
            }
        )
        .await
        .is_some());
        assert!(refused_by(
            &st,
            Mint {
                actions: vec![],
                ..base()
            }
        )
        .await
        .is_some());
        let d = "x".repeat(MAX_DESCRIPTION + 1);
        assert!(refused_by(
            &st,
            Mint {
                description: &d,
                ..base()
            }
        )
        .await
        .is_some());
        assert!(refused_by(
            &st,
            Mint {
                kind: Kind::Robot,
                account: "a b",
                ttl: None,
                ..base()
            }
        )
        .await
        .is_some());
        assert!(st.list().await.unwrap().is_empty(), "nothing refused was stored");
        // a robot may live for ever; a CLI password minted by a limited one inherits its limit
        let (robot, _) = st
            .mint(
                Mint {
                    kind: Kind::Robot,
                    account: "ci",
                    ttl: None,
                    ..base()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(robot.expires, 0);
        let lim = Limit::from_record(&robot);
        let (cli, _) = st
            .mint(
                Mint {
                    parent: Some(&lim),
                    ..base()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!((cli.inherited.len(), cli.rules), (1, false));
        let (full, _) = st.mint(base(), 10).await.unwrap();
        assert_eq!((full.inherited.len(), full.rules, full.expires), (0, true, 70));
    }

    #[test]
    fn inherited_layers_intersect() {
        let rec = Record {
            id: "0".repeat(16),
            kind: Kind::Cli,
            account: "robot$ci".into(),
            secret_sha256: String::new(),
            grants: vec![Grant {
                repository: "*".into(),
                actions: vec![Action::All],
            }],
            inherited: vec![vec![Grant {
                repository: "ci/*".into(),
                actions: vec![Action::Pull],
            }]],
            rules: false,
            created: 0,
            expires: 0,
            description: String::new(),
            gitee: false,
        };
        let lim = Limit::from_record(&rec);
        assert_eq!(lim.actions("ci/x", "a"), [Action::Pull].into_iter().collect());
        assert!(lim.actions("other/x", "a").is_empty());
    }
}
