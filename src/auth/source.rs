//! An identity source outside regate: it signs users in with credentials of its own, tells
//! their groups as they are now, and their permission on repositories it mirrors. Auth defines
//! the interface; a source (Gitee, [`crate::gitee`]) implements it, so nothing in auth knows
//! which service answers.

use super::credentials::Identity;
use crate::types::scope::Actions;
use futures_util::future::BoxFuture;
use std::collections::HashMap;

/// The source could not answer (down, slow, rate-limited): its own words, for logs and for
/// the one sentence a client is shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub trait IdentitySource: Send + Sync {
    /// Signs `user` in with `secret` (a password or a token of the source's); `Ok(None)` when the
    /// source refuses them.
    fn verify<'a>(&'a self, user: &'a str, secret: &'a str) -> BoxFuture<'a, Result<Option<Identity>, Unavailable>>;

    /// The groups `account` is in now (a CLI password outlives the sign-in it came from).
    fn current_groups<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Vec<String>, Unavailable>>;

    /// What `account` may do on each of `repos`, as the source's own permissions say; the
    /// repositories it could not ask about are missing, with the reason.
    fn permissions<'a>(
        &'a self,
        account: &'a str,
        repos: &'a [String],
    ) -> BoxFuture<'a, (HashMap<String, Actions>, Option<Unavailable>)>;
}
