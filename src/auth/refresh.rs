//! Refresh tokens (docker's "identity token"): opaque, stored hashed in storage so every replica
//! sees them, never rotated (docker keeps the first one), revocable, and re-checked against the
//! credential source on every use.

use super::credentials::{Identity, Source};
use crate::storage::{layout, Storage};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;
use std::time::Duration;

const KIND: &str = "refresh-tokens";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub account: String,
    pub groups: Vec<String>,
    pub source: Source,
    pub fingerprint: String,
    #[serde(default)]
    pub gitee: bool,
    pub created: u64,
    /// 0: never expires.
    pub expires: u64,
}

impl Record {
    pub fn identity(&self) -> Identity {
        Identity {
            account: self.account.clone(),
            groups: self.groups.clone(),
            source: self.source,
            fingerprint: self.fingerprint.clone(),
            limit: None,
            gitee: self.gitee,
            oidc: None,
        }
    }
}

pub struct RefreshStore {
    store: Arc<Storage>,
    ttl: u64,
    cache: moka::sync::Cache<String, Arc<Record>>,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

impl RefreshStore {
    pub fn new(store: Arc<Storage>, ttl: u64) -> Self {
        Self {
            store,
            ttl,
            cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(30))
                .build(),
        }
    }

    /// Mints a refresh token for `id`; the token itself is returned once and stored only hashed.
    pub async fn mint(&self, id: &Identity, now: u64) -> std::io::Result<String> {
        let token = format!(
            "rgr_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        );
        let h = hash(&token);
        let rec = Record {
            id: h[..16].to_owned(),
            account: id.account.clone(),
            groups: id.groups.clone(),
            source: id.source,
            fingerprint: id.fingerprint.clone(),
            gitee: id.gitee,
            created: now,
            expires: if self.ttl == 0 { 0 } else { now + self.ttl },
        };
        let body = serde_json::to_vec(&rec).map_err(std::io::Error::other)?;
        self.store.put(&layout::state(KIND, &h), Bytes::from(body)).await?;
        Ok(token)
    }

    /// The record behind a token, if it exists and has not expired.
    pub async fn lookup(&self, token: &str, now: u64) -> std::io::Result<Option<Arc<Record>>> {
        if !token.starts_with("rgr_") || token.len() > 128 {
            return Ok(None);
        }
        let h = hash(token);
        let rec = match self.cache.get(&h) {
            Some(r) => r,
            None => {
                let Some(b) = self.store.read(&layout::state(KIND, &h), 64 * 1024).await? else {
                    return Ok(None);
                };
                let Ok(r) = serde_json::from_slice::<Record>(&b) else {
                    return Ok(None);
                };
                let r = Arc::new(r);
                self.cache.insert(h, r.clone());
                r
            }
        };
        if rec.expires != 0 && now >= rec.expires {
            return Ok(None);
        }
        Ok(Some(rec))
    }
}
