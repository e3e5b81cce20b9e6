//! The repository pages: `/ui/repos` (what this session may pull; robot accounts for
//! administrators) and `/ui/repos/<name>` (its tags, a page at a time, with sizes, platforms and
//! scan summaries).

use super::local::User;
use super::{urlenc, Web};
use crate::auth::stored::{Kind, Record};
use crate::http::html::{esc, page};
use crate::http::{ApiError, Resp};
use crate::types::scope::Action;
use ::http::StatusCode;
use std::fmt::Write as _;

const TAGS_PER_PAGE: usize = 100;

fn storage_down() -> ApiError {
    ApiError::html(
        StatusCode::SERVICE_UNAVAILABLE,
        "Unavailable",
        "Storage is not reachable right now; retry.",
    )
}

/// Bytes in a unit people read (1024-based, one decimal).
fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

impl Web<'_> {
    /// The repositories this session may pull (with Gitee's permissions looked up first).
    async fn pullable(&self, u: &User) -> Result<(Vec<String>, bool), ApiError> {
        let all = self.registry.repositories().await.map_err(|_| storage_down())?;
        let id = u.identity();
        let policy = self.tokens.policy.get();
        let scopes: Vec<crate::types::scope::Scope> = all
            .iter()
            .map(|n| crate::types::scope::Scope::repository(n.as_str(), &[Action::Pull]))
            .collect();
        let (subject, err) = self.tokens.subject(&id, self.ip, &policy, &scopes).await;
        let admin = policy.catalog(&subject);
        let names = all
            .iter()
            .filter(|n| policy.actions(&subject, n.as_str()).contains(&Action::Pull))
            .map(|n| n.to_string())
            .collect();
        if let Some(e) = err {
            tracing::warn!(error = %e, "repository page: some Gitee permissions could not be checked");
        }
        Ok((names, admin))
    }

    pub(super) async fn repos(&self, u: &User) -> Result<Resp, ApiError> {
        let (names, admin) = self.pullable(u).await?;
        let mut b = String::from("<header><h1>Repositories</h1><a href=\"/\">Your account</a></header>");
        if names.is_empty() {
            b.push_str("<p id=\"no-repos\">There is nothing you may pull yet.</p>");
        } else {
            b.push_str("<ul id=\"repos\">");
            for n in &names {
                let _ = write!(b, "<li><a href=\"/ui/repos/{}\">{}</a></li>", esc(n), esc(n));
            }
            b.push_str("</ul>");
        }
        if admin {
            b.push_str("<h2>Robot accounts</h2>");
            match self.tokens.creds.stored() {
                Some(st) => match st.list().await {
                    Ok(all) => {
                        let now = crate::util::now_secs();
                        let robots: Vec<&Record> = all
                            .iter()
                            .filter(|r| r.kind == Kind::Robot && (r.expires == 0 || r.expires > now))
                            .collect();
                        if robots.is_empty() {
                            b.push_str("<p>No robot accounts (create them with <code>regate robot add</code>).</p>");
                        } else {
                            b.push_str("<table id=\"robots\"><tr><th>Name</th><th>Repositories</th><th>Actions</th><th>Expires</th></tr>");
                            for r in robots {
                                let _ = write!(
                                    b,
                                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                                    esc(&r.account),
                                    esc(&r
                                        .grants
                                        .iter()
                                        .map(|g| g.repository.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")),
                                    esc(&r
                                        .grants
                                        .first()
                                        .map(|g| g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(","))
                                        .unwrap_or_default()),
                                    if r.expires == 0 {
                                        "never".into()
                                    } else {
                                        esc(&crate::util::rfc3339(r.expires))
                                    },
                                );
                            }
                            b.push_str("</table>");
                        }
                    }
                    Err(_) => b.push_str("<p>Credential storage is not reachable right now.</p>"),
                },
                None => b.push_str("<p>Credential storage is not available.</p>"),
            }
        }
        Ok(page(StatusCode::OK, "Repositories", &b))
    }

    pub(super) async fn repo(&self, u: &User, name: &str, last: Option<&str>) -> Result<Resp, ApiError> {
        let not_found = || {
            ApiError::html(
                StatusCode::NOT_FOUND,
                "No such repository",
                "It does not exist, or you may not pull it.",
            )
        };
        let repo = crate::types::names::RepoName::parse(name).ok_or_else(not_found)?;
        let id = u.identity();
        let policy = self.tokens.policy.get();
        let scope = [crate::types::scope::Scope::repository(repo.as_str(), &[Action::Pull])];
        let (subject, _) = self.tokens.subject(&id, self.ip, &policy, &scope).await;
        if !policy.actions(&subject, repo.as_str()).contains(&Action::Pull) {
            return Err(not_found());
        }
        let (tags, more) = self
            .registry
            .tag_page(&repo, last, TAGS_PER_PAGE)
            .await
            .map_err(|_| storage_down())?;
        let host = self.host();
        let mut b = format!(
            "<header><h1>{n}</h1><a href=\"/ui/repos\">All repositories</a></header><pre id=\"pull\">docker pull {h}/{n}:&lt;tag&gt;</pre>",
            n = esc(repo.as_str()),
            h = esc(host)
        );
        if tags.is_empty() {
            b.push_str("<p id=\"no-tags\">No tags.</p>");
        } else {
            let scans = self.trust.filter(|t| t.has_scanner()).is_some();
            b.push_str("<div class=\"wide\"><table id=\"tags\"><tr><th>Tag</th><th class=\"nowrap\">Size</th><th>Platforms</th><th>Pushed</th><th>Digest</th><th>Pull</th>");
            if scans {
                b.push_str("<th>Scan</th>");
            }
            b.push_str("</tr>");
            for t in &tags {
                let scan = match (
                    self.trust,
                    t.digest.as_deref().and_then(crate::types::names::Digest::parse),
                ) {
                    (Some(tr), Some(d)) if scans => tr.scan_summary(&d).await.map(|s| {
                        format!(
                            "<td class=\"scan\"><a href=\"/api/v1/scans/{}/{}\">{}</a></td>",
                            esc(repo.as_str()),
                            esc(&d.to_string()),
                            esc(&s)
                        )
                    }),
                    (_, _) if scans => Some("<td class=\"scan\">-</td>".to_owned()),
                    _ => None,
                };
                let pushed = t
                    .pushed
                    .and_then(|p| p.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| crate::util::rfc3339(d.as_secs()))
                    .unwrap_or_default();
                let _ = write!(
                    b,
                    "<tr><td>{tag}</td><td class=\"nowrap\">{size}</td><td>{plat}</td><td class=\"nowrap\">{pushed}</td><td><code title=\"{dg}\">{short}</code></td><td><code>docker pull {h}/{n}:{tag}</code></td></tr>",
                    tag = esc(&t.tag),
                    size = human(t.size),
                    plat = esc(&t.platforms.join(", ")),
                    pushed = esc(&pushed),
                    dg = esc(t.digest.as_deref().unwrap_or("")),
                    short = esc(t.digest.as_deref().map(|d| &d[..d.len().min(19)]).unwrap_or("")),
                    h = esc(host),
                    n = esc(repo.as_str()),
                );
                if let Some(cell) = scan {
                    // the row's closing tag was written above: put the cell before it
                    b.truncate(b.len() - "</tr>".len());
                    b.push_str(&cell);
                    b.push_str("</tr>");
                }
            }
            b.push_str("</table></div>");
        }
        if let (true, Some(t)) = (more, tags.last()) {
            let _ = write!(
                b,
                "<p><a id=\"next\" href=\"/ui/repos/{}?last={}\">Next {} tags</a></p>",
                esc(repo.as_str()),
                esc(&urlenc(&t.tag)),
                TAGS_PER_PAGE
            );
        }
        Ok(page(StatusCode::OK, repo.as_str(), &b))
    }
}
