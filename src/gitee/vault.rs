//! Gitee tokens kept server-side so regate can ask Gitee about a user's repositories later (a
//! CLI password used at 3 a.m. still needs the user's permissions). One record per user in
//! storage, so every replica sees it, sealed with ChaCha20-Poly1305 under a key derived from the
//! token signing key (which replicas already share): a copy of the bucket alone reveals no token.

use crate::storage::{layout, Storage};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::sync::Arc;

const KIND: &str = "gitee-tokens";

/// Derives a purpose-bound 32-byte key from the server's master secret.
pub fn derive_key(master: &[u8], purpose: &str) -> [u8; 32] {
    match <Hmac<Sha256> as Mac>::new_from_slice(master) {
        Ok(mut m) => {
            m.update(purpose.as_bytes());
            m.finalize().into_bytes().into()
        }
        // HMAC takes keys of any length; kept total anyway
        Err(_) => Sha256::digest([master, purpose.as_bytes()].concat()).into(),
    }
}

/// How the token was obtained; decides whether it can be refreshed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Browser sign-in (authorization code).
    Oauth,
    /// `docker login` with the account password (password grant).
    Password,
    /// A personal access token used as the `docker login` password.
    PersonalAccessToken,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredToken {
    pub user_id: u64,
    pub login: String,
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Unix seconds; 0 = does not expire (personal access tokens).
    pub expires_at: u64,
    pub origin: Origin,
    pub updated: u64,
    /// Seconds the token was issued for (0: unknown or not expiring).
    #[serde(default)]
    pub lifetime: u64,
}

impl StoredToken {
    /// Whether it should be refreshed before use: expired, or within a safety margin of
    /// expiring (a minute, or a quarter of a short lifetime).
    pub fn stale(&self, now: u64) -> bool {
        if self.expires_at == 0 {
            return false;
        }
        let margin = if self.lifetime == 0 {
            60
        } else {
            (self.lifetime / 4).min(60)
        };
        now + margin >= self.expires_at
    }
}

pub struct Vault {
    store: Arc<Storage>,
    key: LessSafeKey,
}

impl Vault {
    pub fn new(store: Arc<Storage>, master: &[u8]) -> Result<Self, String> {
        let k = derive_key(master, "regate gitee token vault v1");
        let key = UnboundKey::new(&CHACHA20_POLY1305, &k).map_err(|_| "cannot set up token encryption".to_owned())?;
        Ok(Vault {
            store,
            key: LessSafeKey::new(key),
        })
    }

    fn path(login: &str) -> String {
        // logins are [A-Za-z0-9_.-]; anything else is hex-encoded so it cannot form a path
        let safe = login
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            && !login.starts_with('.');
        let name = if safe {
            login.to_ascii_lowercase()
        } else {
            format!("x-{}", hex::encode(login.to_ascii_lowercase()))
        };
        layout::state(KIND, &format!("{name}.sealed"))
    }

    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut buf = plain.to_vec();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        if self
            .key
            .seal_in_place_append_tag(nonce, Aad::empty(), &mut buf)
            .is_err()
        {
            return Vec::new();
        }
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&buf);
        out
    }

    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (n, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(n).ok()?;
        let mut buf = ct.to_vec();
        let plain = self.key.open_in_place(nonce, Aad::empty(), &mut buf).ok()?;
        Some(plain.to_vec())
    }

    pub async fn put(&self, t: &StoredToken) -> std::io::Result<()> {
        let plain = serde_json::to_vec(t).map_err(std::io::Error::other)?;
        let sealed = self.seal(&plain);
        if sealed.is_empty() {
            return Err(std::io::Error::other("sealing the Gitee token failed"));
        }
        self.store.put(&Self::path(&t.login), Bytes::from(sealed)).await
    }

    /// The user's stored token; a record that does not open (another key, tampering) is ignored.
    pub async fn get(&self, login: &str) -> std::io::Result<Option<StoredToken>> {
        let Some(raw) = self.store.read(&Self::path(login), 64 * 1024).await? else {
            return Ok(None);
        };
        Ok(self.open(&raw).and_then(|p| serde_json::from_slice(&p).ok()))
    }

    pub async fn delete(&self, login: &str) -> std::io::Result<()> {
        self.store.delete(&Self::path(login)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sealed_at_rest_and_bound_to_the_key() {
        let store = Arc::new(Storage::Memory(Default::default()));
        let v = Vault::new(store.clone(), b"master one").unwrap();
        let t = StoredToken {
            user_id: 7,
            login: "Alice".into(),
            access_token: "gitee-secret-token".into(),
            refresh_token: Some("r".into()),
            expires_at: 10,
            origin: Origin::Oauth,
            updated: 1,
            lifetime: 0,
        };
        v.put(&t).await.unwrap();
        let raw = store.read(&Vault::path("alice"), 1 << 20).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("gitee-secret-token"));
        assert_eq!(
            v.get("ALICE").await.unwrap().unwrap().access_token,
            "gitee-secret-token"
        );
        // another master key cannot open it, and a flipped byte is refused
        let other = Vault::new(store.clone(), b"master two").unwrap();
        assert!(other.get("alice").await.unwrap().is_none());
        let mut bad = raw.to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(v.open(&bad).is_none());
        assert!(Vault::path("../x").contains("x-"));
    }
}
