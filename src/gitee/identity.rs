//! Gitee as auth's identity source: its password or token grant signs users in, its orgs and
//! enterprises are their groups, its repository permissions are mirrored by `gitee:` rules.

use super::{Gitee, GiteeError, Login};
use crate::auth::credentials::{Identity, Source};
use crate::auth::source::{IdentitySource, Unavailable};
use crate::types::scope::Actions;
use futures_util::future::BoxFuture;
use std::collections::HashMap;

/// The identity a Gitee sign-in stands for.
pub fn identity(l: &Login) -> Identity {
    Identity {
        account: l.user.login.clone(),
        groups: l.groups.clone(),
        source: Source::Gitee,
        fingerprint: l.user.id.to_string(),
        limit: None,
        gitee: true,
        oidc: None,
    }
}

fn unavailable(e: GiteeError) -> Unavailable {
    Unavailable(e.to_string())
}

impl IdentitySource for Gitee {
    fn verify<'a>(&'a self, user: &'a str, secret: &'a str) -> BoxFuture<'a, Result<Option<Identity>, Unavailable>> {
        Box::pin(async move {
            Gitee::verify(self, user, secret)
                .await
                .map(|l| l.map(|l| identity(&l)))
                .map_err(unavailable)
        })
    }

    fn current_groups<'a>(&'a self, account: &'a str) -> BoxFuture<'a, Result<Vec<String>, Unavailable>> {
        Box::pin(async move { Gitee::current_groups(self, account).await.map_err(unavailable) })
    }

    fn permissions<'a>(
        &'a self,
        account: &'a str,
        repos: &'a [String],
    ) -> BoxFuture<'a, (HashMap<String, Actions>, Option<Unavailable>)> {
        Box::pin(async move {
            let (perms, err) = self.resolve(account, repos).await;
            (perms, err.map(unavailable))
        })
    }
}
