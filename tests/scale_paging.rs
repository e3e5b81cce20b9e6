//! Catalog and tag pages over storage written in distribution's on-disk layout at a size where a
//! page must not cost the whole tree (issue #23): 2,000 repositories and repositories with 3,000
//! and 10,500 tags, walked page by page through Link headers with `n` and `last`. How much a
//! catalog page reads is bounded by the unit test of the walk (src/registry/listing.rs), which
//! counts it; how many names a tag page holds, by the unit tests of `Storage::list_after`
//! (src/storage/mod.rs and fs.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, token, Server};
use serde_json::Value;
use std::path::Path;

const DIGEST: &str = "sha256:5c3b1d3a1b2ae5d3f1c0f0e9a9a2c3b7b1d6a8e2f4c6b8d0e2f4a6c8e0b2d4f6";

fn link(root: &Path, rel: &str) {
    let p = root.join("docker/registry/v2/repositories").join(rel).join("link");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, DIGEST).unwrap();
}

fn next(r: &reqwest::Response) -> Option<String> {
    let l = r.headers().get("link")?.to_str().unwrap().to_owned();
    assert!(l.ends_with(">; rel=\"next\""), "Link {l}");
    Some(l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_owned())
}

async fn walk(s: &Server, bearer: &str, first: &str, key: &str, n: usize) -> (Vec<String>, usize) {
    let (mut path, mut all, mut pages) = (Some(first.to_owned()), Vec::new(), 0);
    while let Some(p) = path {
        let r = client()
            .get(format!("{}{p}", s.url))
            .bearer_auth(bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
        path = next(&r);
        if let Some(l) = &path {
            // the next page asks for the same size after the last name of this one
            assert!(l.contains(&format!("n={n}&last=")), "{l}");
        }
        let v: Value = r.json().await.unwrap();
        let page: Vec<String> = serde_json::from_value(v[key].clone()).unwrap();
        assert!(page.len() <= n, "page {pages} has {} entries", page.len());
        if path.is_some() {
            assert_eq!(page.len(), n, "a page before the last is full");
        }
        all.extend(page);
        pages += 1;
    }
    (all, pages)
}

#[tokio::test]
async fn catalog_and_tag_pages_over_a_distribution_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    // 20 organisations of 100 repositories, names chosen so that byte order is not the order of
    // a depth-first walk ("org1-x" sorts between "org1" and "org1/...")
    let mut names: Vec<String> = (0..2000).map(|i| format!("org{}/app{:04}", i % 20, i)).collect();
    names.extend(["org1-x/app".to_owned(), "org1".to_owned(), "org1.y/z".to_owned()]);
    for n in &names {
        link(&root, &format!("{n}/_manifests/tags/latest/current"));
    }
    let tags: Vec<String> = (0..3000).map(|i| format!("build-{i:05}")).collect();
    for t in &tags {
        link(&root, &format!("ci/builds/_manifests/tags/{t}/current"));
    }
    // 10,500 tags numbered without padding, so their lexical order is not the numeric one
    let mut many: Vec<String> = (0..10_500).map(|i| format!("r{i}")).collect();
    for t in &many {
        link(&root, &format!("ci/many/_manifests/tags/{t}/current"));
    }
    many.sort();
    names.push("ci/builds".to_owned());
    names.push("ci/many".to_owned());
    names.sort();
    let s = Server::start_in(dir, "");
    let admin = s.admin();
    let cat = token(&s, Some((&admin.0, &admin.1)), &["registry:catalog:*"]).await;

    for n in [100, 1000] {
        let (all, pages) = walk(&s, &cat, &format!("/v2/_catalog?n={n}"), "repositories", n).await;
        assert_eq!(all, names, "catalog in pages of {n}");
        assert_eq!(pages, names.len().div_ceil(n));
    }
    // `last` that names no repository, and a page that ends exactly at the end
    let r = client()
        .get(format!("{}/v2/_catalog?n=3&last=org1-", s.url))
        .bearer_auth(&cat)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/_catalog?n=3&last=org1%2Fapp0001>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["org1-x/app", "org1.y/z", "org1/app0001"])
    );
    let last_two = &names[names.len() - 2];
    let r = client()
        .get(format!("{}/v2/_catalog?n=1&last={last_two}", s.url))
        .bearer_auth(&cat)
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("link").is_none());
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["repositories"], serde_json::json!([names.last().unwrap()]));

    let pull = token(&s, Some((&admin.0, &admin.1)), &["repository:ci/builds:pull"]).await;
    let (all, pages) = walk(&s, &pull, "/v2/ci/builds/tags/list?n=100", "tags", 100).await;
    assert_eq!(all, tags);
    assert_eq!(pages, 30);
    let r = client()
        .get(format!("{}/v2/ci/builds/tags/list?n=2&last=build-01499", s.url))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["link"],
        "</v2/ci/builds/tags/list?n=2&last=build-01501>; rel=\"next\""
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["build-01500", "build-01501"]));

    // with no `n`, or a larger one, one answer holds all 10,500 tags (up to 100,000); a smaller
    // `n` links to the rest
    let pull = token(&s, Some((&admin.0, &admin.1)), &["repository:ci/many:pull"]).await;
    for first in [
        "/v2/ci/many/tags/list",
        "/v2/ci/many/tags/list?n=20000",
        "/v2/ci/many/tags/list?n=99999999999",
    ] {
        let r = client()
            .get(format!("{}{first}", s.url))
            .bearer_auth(&pull)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(next(&r).is_none(), "{first}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["tags"], serde_json::json!(many), "{first}");
    }
    let r = client()
        .get(format!("{}/v2/ci/many/tags/list?n=10000", s.url))
        .bearer_auth(&pull)
        .send()
        .await
        .unwrap();
    let l = next(&r).unwrap();
    assert_eq!(l, format!("/v2/ci/many/tags/list?n=10000&last={}", many[9999]));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(many[..10_000]));
    let (rest, pages) = walk(&s, &pull, &l, "tags", 10_000).await;
    assert_eq!((rest.as_slice(), pages), (&many[10_000..], 1));
    // pages of 1,000 from a `last` that is not a tag, in lexical order
    let (all, pages) = walk(&s, &pull, "/v2/ci/many/tags/list?n=1000&last=r5", "tags", 1000).await;
    let after: Vec<String> = many.iter().filter(|t| t.as_str() > "r5").cloned().collect();
    assert_eq!(pages, after.len().div_ceil(1000));
    assert_eq!(all, after);
}
