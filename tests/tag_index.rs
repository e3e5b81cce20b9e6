//! The tags kept in memory on local disk (issue #23) never answer a stale list: a tag pushed or
//! deleted by this process, by a second regate process on the same root, or while pushes and
//! listings run at once, is in (or out of) every list asked for after the push (or delete)
//! was answered. Between changes the test waits until the tags directory is settled (older
//! than `storage::fs::RACY`), so that the listing kept in memory is the one being checked.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, digest, Server};
use futures_util::StreamExt as _;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const REPO: &str = "admin/many";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Longer than `storage::fs::RACY`: a listing read after this is kept.
const SETTLE: Duration = Duration::from_millis(2300);

struct Peer {
    url: String,
    user: String,
    pass: String,
}

impl Peer {
    fn of(s: &Server, creds: &(String, String)) -> Peer {
        Peer {
            url: s.url.clone(),
            user: creds.0.clone(),
            pass: creds.1.clone(),
        }
    }

    async fn put_blob(&self, data: &[u8]) -> String {
        let d = digest(data);
        let r = client()
            .post(format!("{}/v2/{REPO}/blobs/uploads/?digest={d}", self.url))
            .basic_auth(&self.user, Some(&self.pass))
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        d
    }

    async fn tag(&self, tag: &str, manifest: &[u8]) {
        let r = client()
            .put(format!("{}/v2/{REPO}/manifests/{tag}", self.url))
            .basic_auth(&self.user, Some(&self.pass))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "push {tag}");
    }

    async fn untag(&self, tag: &str) {
        let r = client()
            .delete(format!("{}/v2/{REPO}/manifests/{tag}", self.url))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "delete {tag}");
    }

    /// Every tag, following `Link`.
    async fn tags(&self) -> Vec<String> {
        let mut path = Some(format!("/v2/{REPO}/tags/list"));
        let mut all = Vec::new();
        while let Some(p) = path {
            let r = client()
                .get(format!("{}{p}", self.url))
                .basic_auth(&self.user, Some(&self.pass))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            path = r.headers().get("link").map(|l| {
                let l = l.to_str().unwrap();
                l[l.find('<').unwrap() + 1..l.find('>').unwrap()].to_owned()
            });
            let v: Value = r.json().await.unwrap();
            all.extend(serde_json::from_value::<Vec<String>>(v["tags"].clone()).unwrap());
        }
        all
    }

    /// A page of `n` after `last`.
    async fn page(&self, n: usize, last: &str) -> Vec<String> {
        let r = client()
            .get(format!("{}/v2/{REPO}/tags/list?n={n}&last={last}", self.url))
            .basic_auth(&self.user, Some(&self.pass))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        serde_json::from_value(v["tags"].clone()).unwrap()
    }
}

/// A small image in `REPO`; returns its manifest.
async fn image(p: &Peer) -> Vec<u8> {
    let config = p.put_blob(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}").await;
    let layer = p.put_blob(b"one layer").await;
    serde_json::to_vec(&json!({"schemaVersion":2,"mediaType":OCI_MANIFEST,
        "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":config,"size":38},
        "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":layer,"size":9}]}))
    .unwrap()
}

/// A second regate process serving the same fs root as `a`.
fn second(a: &Server) -> Server {
    let extra = format!(
        "storage:\n  backend: fs\n  fs: {{ root: {}, fsync: false }}\n",
        a.data().display()
    );
    Server::start_in(tempfile::tempdir().unwrap(), &extra)
}

/// `n` tags written straight into the root, as distribution (or an earlier run) left them.
fn tags_on_disk(root: &Path, manifest: &[u8], n: usize) -> Vec<String> {
    let d = digest(manifest);
    let tags: Vec<String> = (0..n).map(|i| format!("old-{i:05}")).collect();
    for t in &tags {
        let p = root.join(format!(
            "docker/registry/v2/repositories/{REPO}/_manifests/tags/{t}/current"
        ));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("link"), &d).unwrap();
    }
    tags
}

#[tokio::test]
async fn tag_lists_follow_pushes_and_deletes_of_this_process_and_of_another_on_the_same_root() {
    let a = Server::start("");
    let creds = a.admin();
    let pa = Peer::of(&a, &creds);
    let m = image(&pa).await;
    pa.tag("latest", &m).await;
    let mut want: BTreeSet<String> = tags_on_disk(&a.data(), &m, 3000).into_iter().collect();
    want.insert("latest".into());
    let b = second(&a);
    let pb = Peer::of(&b, &creds);

    let check = |want: &BTreeSet<String>, got: Vec<String>, what: &str| {
        let want: Vec<String> = want.iter().cloned().collect();
        assert_eq!(got.len(), want.len(), "{what}");
        assert!(got == want, "{what}: the list differs");
    };
    for (who, peer, other) in [("this", &pa, &pb), ("another", &pb, &pa)] {
        // settled and read twice: the listing is kept in both processes
        tokio::time::sleep(SETTLE).await;
        for p in [&pa, &pb] {
            check(&want, p.tags().await, "settled");
            check(&want, p.tags().await, "settled, again");
        }
        // a push, then at once a list through both processes
        let t = format!("new-by-{who}");
        peer.tag(&t, &m).await;
        want.insert(t.clone());
        check(&want, peer.tags().await, &format!("{t} through the pushing process"));
        check(&want, other.tags().await, &format!("{t} through the other process"));
        assert_eq!(other.page(1, "new-by-").await.len(), 1);

        // a delete of a tag that was there when the listing was kept
        tokio::time::sleep(SETTLE).await;
        for p in [&pa, &pb] {
            check(&want, p.tags().await, "settled before the delete");
        }
        let gone = format!("old-{:05}", if who == "this" { 7 } else { 2999 });
        peer.untag(&gone).await;
        want.remove(&gone);
        check(
            &want,
            peer.tags().await,
            &format!("{gone} deleted, through the deleting process"),
        );
        check(
            &want,
            other.tags().await,
            &format!("{gone} deleted, through the other process"),
        );
        let before = if who == "this" { "old-00006" } else { "old-02998" };
        let page = other.page(1, before).await;
        assert_ne!(page, vec![gone.clone()], "a page still names {gone}");
    }
}

#[tokio::test]
async fn tag_lists_under_concurrent_pushes_from_two_processes_hold_every_finished_push() {
    let a = Server::start("");
    let creds = a.admin();
    let pa = Arc::new(Peer::of(&a, &creds));
    let m = image(&pa).await;
    let old = tags_on_disk(&a.data(), &m, 2000);
    let b = second(&a);
    let pb = Arc::new(Peer::of(&b, &creds));
    tokio::time::sleep(SETTLE).await;
    assert_eq!(pa.tags().await, old);
    assert_eq!(pb.tags().await, old);

    // 120 pushes, 8 at a time, alternating between the processes, while both list: every list
    // holds every tag whose push was answered before the list was asked for
    let done: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let pushing = {
        let (pa, pb, done, m) = (pa.clone(), pb.clone(), done.clone(), m.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(0..120)
                .for_each_concurrent(8, |i| {
                    let (p, done, m) = (
                        if i % 2 == 0 { pa.clone() } else { pb.clone() },
                        done.clone(),
                        m.clone(),
                    );
                    async move {
                        let t = format!("c-{i:03}");
                        p.tag(&t, &m).await;
                        done.lock().unwrap().insert(t);
                    }
                })
                .await
        })
    };
    let mut lists = 0;
    while !pushing.is_finished() {
        for p in [&pa, &pb] {
            let before: BTreeSet<String> = done.lock().unwrap().clone();
            let got: BTreeSet<String> = p.tags().await.into_iter().collect();
            let missing: Vec<&String> = before.difference(&got).collect();
            assert!(missing.is_empty(), "pushed but not listed: {missing:?}");
            assert!(old.iter().all(|t| got.contains(t)));
            lists += 1;
        }
    }
    pushing.await.unwrap();
    assert!(lists > 2, "{lists} lists ran during the pushes");
    let mut want: Vec<String> = old.clone();
    want.extend((0..120).map(|i| format!("c-{i:03}")));
    want.sort();
    for p in [&pa, &pb] {
        assert_eq!(p.tags().await, want);
    }
    // and once settled, from memory
    tokio::time::sleep(SETTLE).await;
    for p in [&pa, &pb] {
        assert_eq!(p.tags().await, want);
        assert_eq!(p.tags().await, want);
    }
}
