//! Tag list, catalog and referrers, with `n`/`last` pagination.

use super::error::{Code, RegistryError};
use super::manifests::OCI_INDEX;
use super::names::{Algorithm, Digest, RepoName};
use super::{Permissions, Registry};
use crate::http::{self, query_get, Resp};
use crate::storage::layout;
use ::http::{header, HeaderName, StatusCode};
use serde_json::json;

/// The most entries one page may hold, whatever `n` asks for.
pub const MAX_PAGE: usize = 1000;

fn page_size(query: &[(String, String)]) -> Result<Option<usize>, RegistryError> {
    match query_get(query, "n") {
        None | Some("") => Ok(None),
        Some(n) => n.parse::<usize>().map(|n| Some(n.min(MAX_PAGE))).map_err(|_| {
            RegistryError::new(Code::Unsupported, "n must be a non-negative integer")
                .with_status(StatusCode::BAD_REQUEST)
        }),
    }
}

/// Applies `last` and `n` to a sorted list; returns the page and whether more follow.
fn paginate(all: Vec<String>, query: &[(String, String)]) -> Result<(Vec<String>, bool), RegistryError> {
    let n = page_size(query)?;
    let mut items: Vec<String> = match query_get(query, "last") {
        Some(last) if !last.is_empty() => all.into_iter().filter(|t| t.as_str() > last).collect(),
        _ => all,
    };
    let limit = n.unwrap_or(MAX_PAGE);
    let more = items.len() > limit;
    items.truncate(limit);
    Ok((items, more))
}

fn link_next(r: &mut Resp, path: &str, n: usize, last: Option<&String>) {
    if let Some(last) = last {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        http::set(r, header::LINK, &format!("<{path}?{q}>; rel=\"next\""));
    }
}

impl Registry {
    pub(super) async fn tags(&self, name: &RepoName, query: &[(String, String)]) -> Result<Resp, RegistryError> {
        let mut tags: Vec<String> = self.tags_of(name).await?.into_iter().map(|t| t.to_string()).collect();
        if tags.is_empty() && !self.repo_exists(name).await? {
            return Err(RegistryError::new(
                Code::NameUnknown,
                format!("repository {name} is not known"),
            ));
        }
        tags.sort();
        let (page, more) = paginate(tags, query)?;
        let n = page.len();
        let mut r = http::json(StatusCode::OK, &json!({ "name": name.as_str(), "tags": page }));
        if more {
            link_next(&mut r, &format!("/v2/{name}/tags/list"), n, page.last());
        }
        Ok(r)
    }

    /// A repository is a directory holding regate's/distribution's `_`-prefixed data
    /// (`_manifests`, `_layers`, `_uploads`); a mere path prefix of other repositories is not one.
    async fn repo_exists(&self, name: &RepoName) -> Result<bool, RegistryError> {
        Ok(self
            .store
            .list(&layout::repo(name))
            .await?
            .iter()
            .any(|e| e.is_dir && e.name.starts_with('_')))
    }

    /// Every repository name in storage (a directory holding `_manifests`), sorted.
    pub async fn repositories(&self) -> Result<Vec<RepoName>, RegistryError> {
        let mut out = Vec::new();
        let mut stack = vec![String::new()];
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                layout::REPOS.to_string()
            } else {
                format!("{}/{rel}", layout::REPOS)
            };
            for e in self.store.list(&dir).await? {
                if !e.is_dir {
                    continue;
                }
                if e.name == "_manifests" {
                    if let Some(n) = RepoName::parse(&rel) {
                        out.push(n);
                    }
                } else if !e.name.starts_with('_') {
                    stack.push(if rel.is_empty() {
                        e.name
                    } else {
                        format!("{rel}/{}", e.name)
                    });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    pub(super) async fn catalog(
        &self,
        query: &[(String, String)],
        perms: &dyn Permissions,
    ) -> Result<Resp, RegistryError> {
        let names: Vec<String> = self
            .repositories()
            .await?
            .into_iter()
            .filter(|n| perms.can_pull(n))
            .map(|n| n.to_string())
            .collect();
        let (page, more) = paginate(names, query)?;
        let n = page.len();
        let mut r = http::json(StatusCode::OK, &json!({ "repositories": page }));
        if more {
            link_next(&mut r, "/v2/_catalog", n, page.last());
        }
        Ok(r)
    }

    pub(super) async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        query: &[(String, String)],
    ) -> Result<Resp, RegistryError> {
        let filter = query_get(query, "artifactType").filter(|s| !s.is_empty());
        // in pages of `n` (at most MAX_PAGE) by digest, after `last`, as tags and the catalog
        let limit = page_size(query)?.unwrap_or(MAX_PAGE);
        let last = query_get(query, "last").filter(|l| !l.is_empty());
        let mut found = Vec::new();
        for a in Algorithm::ALL {
            for e in self.store.list(&layout::referrers_dir(name, subject, a)).await? {
                found.extend(Digest::from_hex(a, &e.name));
            }
        }
        found.sort_by_key(|d| d.to_string());
        found.retain(|d| last.is_none_or(|l| d.to_string().as_str() > l));
        let mut manifests = Vec::new();
        let mut more = false;
        for d in found {
            if manifests.len() == limit {
                // one more match tells whether another page follows
                if self.referrer_matches(name, &d, filter).await? {
                    more = true;
                    break;
                }
                continue;
            }
            // a referrer deleted since (revision gone) is no longer listed
            if self.store.stat(&layout::revision_link(name, &d)).await?.is_none() {
                continue;
            }
            let Some(m) = self.load_manifest(&d).await? else {
                continue;
            };
            if let Some(f) = filter {
                if m.artifact_type.as_deref() != Some(f) {
                    continue;
                }
            }
            let mut desc = json!({
                "mediaType": m.media_type,
                "digest": d.to_string(),
                "size": m.bytes.len(),
            });
            if let Some(a) = &m.artifact_type {
                desc["artifactType"] = json!(a);
            }
            if let Some(a) = &m.annotations {
                desc["annotations"] = json!(a);
            }
            manifests.push(desc);
        }
        let next = manifests
            .last()
            .and_then(|m| m["digest"].as_str())
            .map(str::to_owned)
            .filter(|_| more);
        let mut r = http::json(
            StatusCode::OK,
            &json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests }),
        );
        http::set(&mut r, header::CONTENT_TYPE, OCI_INDEX);
        if filter.is_some() {
            http::set(&mut r, HeaderName::from_static("oci-filters-applied"), "artifactType");
        }
        if let Some(last) = next {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("n", &limit.to_string()).append_pair("last", &last);
            if let Some(f) = filter {
                q.append_pair("artifactType", f);
            }
            let path = format!("/v2/{name}/referrers/{subject}?{}", q.finish());
            http::set(&mut r, header::LINK, &format!("<{path}>; rel=\"next\""));
        }
        Ok(r)
    }

    /// Whether `d` is a live referrer in `name` of the artifact type asked for.
    async fn referrer_matches(&self, name: &RepoName, d: &Digest, filter: Option<&str>) -> Result<bool, RegistryError> {
        if self.store.stat(&layout::revision_link(name, d)).await?.is_none() {
            return Ok(false);
        }
        let Some(m) = self.load_manifest(d).await? else {
            return Ok(false);
        };
        Ok(filter.is_none_or(|f| m.artifact_type.as_deref() == Some(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn pagination() {
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            paginate(all.clone(), &q(&[("n", "2")])).unwrap(),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            paginate(all.clone(), &q(&[("n", "2"), ("last", "b")])).unwrap(),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(paginate(all.clone(), &q(&[("n", "0")])).unwrap(), (vec![], true));
        assert_eq!(paginate(all.clone(), &q(&[])).unwrap().0.len(), 4);
        assert!(paginate(all.clone(), &q(&[("n", "-1")])).is_err());
        assert_eq!(page_size(&q(&[("n", "99999999999")])).unwrap(), Some(MAX_PAGE));
    }
}
