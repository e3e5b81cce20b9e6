//! What the web pages show about a repository: its tags, a page at a time, each with digest,
//! size, platforms and push time. Only the tags on the page are read, so a repository with
//! 10,000 tags costs one directory listing plus a page's worth of small reads.

use super::error::ApiError;
use super::Registry;
use crate::storage::layout;
use crate::types::names::{Digest, RepoName, Tag};
use serde::Deserialize;
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct TagInfo {
    pub tag: String,
    pub digest: Option<String>,
    pub media_type: String,
    /// Bytes of config + layers (for an index: of every child image found).
    pub size: u64,
    /// `os/arch[/variant]` of the image or of each image of an index.
    pub platforms: Vec<String>,
    pub pushed: Option<SystemTime>,
}

#[derive(Deserialize)]
struct Desc {
    #[serde(default)]
    digest: String,
    #[serde(default)]
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

impl Platform {
    fn label(&self) -> String {
        match &self.variant {
            Some(v) if !v.is_empty() => format!("{}/{}/{v}", self.os, self.architecture),
            _ => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Deserialize)]
struct Shape {
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

impl Registry {
    /// Tag names of `name`, sorted.
    pub async fn tag_names(&self, name: &RepoName) -> Result<Vec<String>, ApiError> {
        let mut t: Vec<String> = self.tags_of(name).await?.into_iter().map(|t| t.to_string()).collect();
        t.sort();
        Ok(t)
    }

    /// Up to `limit` tags after `after` (sorted by name), with details; and whether more follow.
    pub async fn tag_page(
        &self,
        name: &RepoName,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<TagInfo>, bool), ApiError> {
        let all = self.tag_names(name).await?;
        let start = match after {
            Some(a) => all.partition_point(|t| t.as_str() <= a),
            None => 0,
        };
        let page: Vec<&String> = all.iter().skip(start).take(limit).collect();
        let more = start + page.len() < all.len();
        let infos = futures_util::future::join_all(page.into_iter().map(|t| self.tag_info(name, t))).await;
        Ok((infos, more))
    }

    async fn tag_info(&self, name: &RepoName, tag: &str) -> TagInfo {
        let mut info = TagInfo {
            tag: tag.to_owned(),
            digest: None,
            media_type: String::new(),
            size: 0,
            platforms: Vec::new(),
            pushed: None,
        };
        let Some(t) = Tag::parse(tag) else { return info };
        let key = layout::tag_current(name, &t);
        info.pushed = self.store.stat(&key).await.ok().flatten().and_then(|m| m.modified);
        let Ok(Some(d)) = self.read_link(&key).await else {
            return info;
        };
        info.digest = Some(d.to_string());
        let Ok(Some(m)) = self.load_manifest(&d).await else {
            return info;
        };
        info.media_type = m.media_type.clone();
        let Ok(shape) = serde_json::from_slice::<Shape>(&m.bytes) else {
            return info;
        };
        if shape.manifests.is_empty() {
            let (size, platform) = self.image_facts(&shape).await;
            info.size = size;
            info.platforms.extend(platform);
        } else {
            for child in &shape.manifests {
                if let Some(p) = &child.platform {
                    if p.os != "unknown" {
                        info.platforms.push(p.label());
                    }
                }
                if let Some(cd) = Digest::parse(&child.digest) {
                    if let Ok(Some(cm)) = self.load_manifest(&cd).await {
                        if let Ok(cs) = serde_json::from_slice::<Shape>(&cm.bytes) {
                            info.size += self.image_facts(&cs).await.0;
                        }
                    }
                }
            }
        }
        info
    }

    /// Size of an image (config + layers) and its platform, read from its config blob.
    async fn image_facts(&self, s: &Shape) -> (u64, Option<String>) {
        let size = s
            .config
            .iter()
            .chain(s.layers.iter())
            .map(|d| d.size.max(0) as u64)
            .sum();
        let mut platform = None;
        if let Some(cd) = s.config.as_ref().and_then(|c| Digest::parse(&c.digest)) {
            if let Ok(Some(bytes)) = self.store.read(&layout::blob_data(&cd), 1 << 20).await {
                if let Ok(p) = serde_json::from_slice::<Platform>(&bytes) {
                    if !p.architecture.is_empty() {
                        platform = Some(p.label());
                    }
                }
            }
        }
        (size, platform)
    }
}
