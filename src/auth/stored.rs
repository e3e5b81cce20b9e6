//! Credentials regate mints and keeps itself: robot accounts for CI (`regate robot add`) and
//! CLI passwords (`/api/v1/tokens`). Both are random secrets shown once and stored only as a
//! SHA-256 hash (they are high-entropy, so no bcrypt is needed), in storage so every replica sees
//! them; both carry the repositories and actions they are limited to and an expiry.
//!
//! The secret is `rg_<id>_<hex>`: the id finds the record without a scan.

use super::policy::Glob;
use super::scope::{expand, Action, Actions};
use crate::storage::{layout, Storage};
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

    /// Mints a credential; returns the record and the secret (shown once).
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        kind: Kind,
        account: &str,
        grants: Vec<Grant>,
        inherited: Vec<Vec<Grant>>,
        rules: bool,
        gitee: bool,
        expires: u64,
        description: &str,
        now: u64,
    ) -> std::io::Result<(Record, String)> {
        let id = hex::encode(rand::random::<[u8; 8]>());
        let secret = format!("rg_{id}_{}", hex::encode(rand::random::<[u8; 32]>()));
        let rec = Record {
            id: id.clone(),
            kind,
            account: account.to_owned(),
            secret_sha256: sha(&secret),
            grants,
            inherited,
            rules,
            created: now,
            expires,
            description: description.to_owned(),
            gitee,
        };
        let body = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
        self.store
            .put(&layout::state(KIND, &format!("{id}.json")), Bytes::from(body))
            .await?;
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
        let g = vec![Grant {
            repository: "ci/*".into(),
            actions: vec![Action::Pull, Action::Push],
        }];
        let (rec, secret) = st
            .create(Kind::Robot, "robot$ci", g, vec![], false, false, 1000, "", 10)
            .await
            .unwrap();
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
