//! `/ui/admin`: for administrators (those the policy lets list the catalog): the keyless-CI
//! providers and the shape of their rules, and each replication rule's state. No secret is
//! shown: not the remote's password, not a token.

use super::local::User;
use super::{esc, message, page, Web};
use crate::auth::policy::Rule;
use ::http::StatusCode;
use std::fmt::Write as _;

impl Web<'_> {
    pub(super) async fn admin(&self, u: &User) -> crate::http::Resp {
        let policy = self.tokens.policy.get();
        let (subject, _) = self.tokens.subject(&u.identity(), self.ip, &policy, &[]).await;
        if !policy.catalog(&subject) {
            return message(
                StatusCode::FORBIDDEN,
                "Administrators only",
                "This page is for accounts that may list every repository.",
            );
        }
        let mut b = String::from("<header><h1>Administration</h1><a href=\"/\">Your account</a></header>");
        b.push_str("<h2>Keyless CI (OIDC)</h2>");
        match self.tokens.creds.oidc() {
            None => b.push_str("<p id=\"no-oidc\">No <code>auth.oidc</code> providers are configured.</p>"),
            Some(p) => {
                b.push_str(
                    "<table id=\"oidc\"><tr><th>username</th><th>issuer</th><th>audience</th><th>account</th><th>require</th><th>rules</th></tr>",
                );
                for pr in p.list() {
                    let c = pr.config();
                    let require = c
                        .require
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ");
                    let rules = policy
                        .rules
                        .iter()
                        .filter_map(|r| match r {
                            Rule::Static(r) if r.oidc.as_deref() == Some(c.name.as_str()) => Some(format!(
                                "{}{} → {}",
                                r.claims
                                    .iter()
                                    .map(|(k, g)| format!("{k}={} ", g.source()))
                                    .collect::<String>(),
                                r.repository.as_ref().map(|g| g.source()).unwrap_or("-"),
                                r.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
                            )),
                            _ => None,
                        })
                        .collect::<Vec<_>>();
                    let _ = write!(
                        b,
                        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                        esc(&c.name),
                        esc(&c.issuer),
                        esc(&c.audience),
                        esc(&c.account),
                        esc(&require),
                        rules.iter().map(|r| esc(r)).collect::<Vec<_>>().join("<br>")
                    );
                }
                b.push_str("</table>");
            }
        }
        b.push_str("<h2>Replication</h2>");
        match self.replicator {
            None => b.push_str("<p id=\"no-replication\">No <code>replication</code> rules are configured.</p>"),
            Some(rep) => {
                b.push_str(
                    "<table id=\"replication\"><tr><th>rule</th><th>direction</th><th>remote</th><th>queued</th><th>last success</th><th>lag</th><th>last error</th></tr>",
                );
                for r in rep.rules() {
                    let s = r.status();
                    let _ = write!(
                        b,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td></tr>",
                        esc(&s.name),
                        esc(&s.direction),
                        esc(&crate::notify::redact_url(&s.url)),
                        s.queued,
                        s.last_success.map(crate::util::rfc3339).unwrap_or_else(|| "never".into()),
                        s.lag_seconds.map(|l| format!("{l}s")).unwrap_or_else(|| "-".into()),
                        esc(s.last_error.as_deref().unwrap_or("-")),
                    );
                }
                b.push_str("</table>");
            }
        }
        page(StatusCode::OK, "Administration", &b)
    }
}
