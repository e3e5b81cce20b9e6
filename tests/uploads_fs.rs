#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Chunked uploads on the filesystem backend: every chunk is appended to one file under a lock,
//! hashed once, and the finished file is renamed into place (written once, never copied).

mod common;

use common::{digest, Server};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed ^ (i >> 12) as u8))
        .collect()
}

struct Up<'a> {
    s: &'a Server,
    c: reqwest::Client,
    user: String,
    pass: String,
}

impl<'a> Up<'a> {
    fn new(s: &'a Server) -> Self {
        let (user, pass) = s.admin();
        Up {
            s,
            c: reqwest::Client::new(),
            user,
            pass,
        }
    }

    fn url(&self, loc: &str) -> String {
        if loc.starts_with("http") {
            loc.to_owned()
        } else {
            format!("{}{loc}", self.s.url)
        }
    }

    fn req(&self, m: reqwest::Method, loc: &str) -> reqwest::RequestBuilder {
        self.c
            .request(m, self.url(loc))
            .basic_auth(&self.user, Some(&self.pass))
    }

    async fn start(&self, repo: &str) -> String {
        let r = self
            .req(reqwest::Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        r.headers()["location"].to_str().unwrap().to_owned()
    }

    async fn patch(&self, loc: &str, start: usize, body: Vec<u8>) -> reqwest::Response {
        let end = start + body.len() - 1;
        self.req(reqwest::Method::PATCH, loc)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{end}"))
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn finish(&self, loc: &str, d: &str) -> reqwest::Response {
        let sep = if loc.contains('?') { '&' } else { '?' };
        self.req(reqwest::Method::PUT, &format!("{loc}{sep}digest={d}"))
            .send()
            .await
            .unwrap()
    }

    async fn blob(&self, repo: &str, d: &str) -> reqwest::Response {
        self.req(reqwest::Method::GET, &format!("/v2/{repo}/blobs/{d}"))
            .send()
            .await
            .unwrap()
    }
}

fn upload_dir(s: &Server, repo: &str, loc: &str) -> PathBuf {
    let id = loc.rsplit('/').next().unwrap().split('?').next().unwrap();
    s.data()
        .join(format!("docker/registry/v2/repositories/{repo}/_uploads/{id}"))
}

fn blob_file(s: &Server, d: &str) -> PathBuf {
    let hex = d.strip_prefix("sha256:").unwrap();
    s.data()
        .join(format!("docker/registry/v2/blobs/sha256/{}/{hex}/data", &hex[..2]))
}

fn location(r: &reqwest::Response) -> String {
    r.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn chunks_are_appended_to_one_file_that_becomes_the_blob() {
    let s = Server::start("");
    let up = Up::new(&s);
    let repo = "admin/append";
    let data = pattern(3 * 1024 * 1024 + 777, 1);
    let d = digest(&data);
    let mut loc = up.start(repo).await;
    let dir = upload_dir(&s, repo, &loc);
    let mut at = 0;
    for piece in data.chunks(1024 * 1024 + 3) {
        let r = up.patch(&loc, at, piece.to_vec()).await;
        assert_eq!(r.status(), 202, "{:?}", r.text().await);
        at += piece.len();
        assert_eq!(r.headers()["range"], format!("0-{}", at - 1).as_str());
        loc = location(&r);
        // the upload is one file holding exactly the chunks so far
        assert_eq!(std::fs::metadata(dir.join("data")).unwrap().len(), at as u64);
        assert!(
            !std::fs::read_dir(&dir)
                .unwrap()
                .any(|e| e.unwrap().file_name().to_string_lossy().starts_with("part-")),
            "a chunk was stored as its own object"
        );
    }
    let inode = std::fs::metadata(dir.join("data")).unwrap().ino();

    let r = up.finish(&loc, &d).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert_eq!(r.headers()["docker-content-digest"], d.as_str());
    // renamed into place, not copied
    assert_eq!(std::fs::metadata(blob_file(&s, &d)).unwrap().ino(), inode);
    assert!(!dir.exists(), "the upload directory outlived the upload");
    let got = up.blob(repo, &d).await;
    assert_eq!(got.status(), 200);
    assert!(got.bytes().await.unwrap() == data, "stored blob differs");
    let tmp: Vec<_> = std::fs::read_dir(s.data().join(".regate-tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_chunks_racing_for_one_offset_never_interleave() {
    let s = Server::start("");
    let up = Up::new(&s);
    let repo = "admin/race";
    let loc = up.start(repo).await;
    let a = pattern(8 * 1024 * 1024, 2);
    let b = pattern(8 * 1024 * 1024, 3);
    for round in 0..3 {
        let loc = if round == 0 { loc.clone() } else { up.start(repo).await };
        let (ra, rb) = tokio::join!(up.patch(&loc, 0, a.clone()), up.patch(&loc, 0, b.clone()));
        let (sa, sb) = (ra.status().as_u16(), rb.status().as_u16());
        assert!(
            (sa, sb) == (202, 416) || (sa, sb) == (416, 202),
            "round {round}: one chunk must win and the other be told where the upload is: {sa} {sb}"
        );
        let (winner, loser) = if sa == 202 { (&a, rb) } else { (&b, ra) };
        assert_eq!(loser.headers()["range"], format!("0-{}", a.len() - 1).as_str());
        let d = digest(winner);
        let r = up.finish(&loc, &d).await;
        assert_eq!(r.status(), 201, "{:?}", r.text().await);
        assert!(up.blob(repo, &d).await.bytes().await.unwrap() == *winner);
    }
}

/// A recorded sha256 from another boot of the machine is not trusted (the page cache may not have
/// reached the disk before the power went): the file is hashed again, so damaged bytes are refused
/// and intact ones published.
#[tokio::test]
async fn progress_from_another_boot_means_hashing_the_file_again() {
    let s = Server::start("");
    let up = Up::new(&s);
    let repo = "admin/reboot";
    let data = pattern(2 * 1024 * 1024 + 5, 4);
    let d = digest(&data);

    let mut locs = Vec::new();
    for _ in 0..2 {
        let loc = up.start(repo).await;
        let r = up.patch(&loc, 0, data[..1_000_000].to_vec()).await;
        assert_eq!(r.status(), 202);
        let r = up.patch(&location(&r), 1_000_000, data[1_000_000..].to_vec()).await;
        assert_eq!(r.status(), 202);
        let loc = location(&r);
        let progress = upload_dir(&s, repo, &loc).join("regate-progress");
        let text = std::fs::read_to_string(&progress).unwrap();
        let mut fields = text.splitn(3, ' ');
        let (len, _boot, state) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        assert_eq!(len, data.len().to_string());
        assert!(state.starts_with("sha256 "), "{text}");
        std::fs::write(&progress, format!("{len} another-boot {state}")).unwrap();
        locs.push(loc);
    }

    // one upload's bytes were damaged "by the power loss": refused, nothing published
    let damaged = upload_dir(&s, repo, &locs[0]).join("data");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[1_500_000] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let r = up.finish(&locs[0], &d).await;
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "DIGEST_INVALID");
    assert_eq!(up.blob(repo, &d).await.status(), 404);
    assert!(!blob_file(&s, &d).exists());

    // the intact one is hashed again and published
    let r = up.finish(&locs[1], &d).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert!(up.blob(repo, &d).await.bytes().await.unwrap() == data);
}

/// Bytes past the recorded progress (a chunk a crash cut short) never count: the status leaves
/// them out and the next chunk overwrites them.
#[tokio::test]
async fn bytes_of_an_interrupted_chunk_are_cut_off() {
    let s = Server::start("");
    let up = Up::new(&s);
    let repo = "admin/torn";
    let data = pattern(600_000, 5);
    let d = digest(&data);
    let loc = up.start(repo).await;
    let r = up.patch(&loc, 0, data[..200_000].to_vec()).await;
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    // what a killed process leaves: half a chunk of garbage at the end of the file
    let file = upload_dir(&s, repo, &loc).join("data");
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut f, &[0xAA; 12_345]).unwrap();
    drop(f);

    let r = up.req(reqwest::Method::GET, &loc).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["range"], "0-199999");
    let r = up.patch(&loc, 200_000, data[200_000..].to_vec()).await;
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    let r = up.finish(&location(&r), &d).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert!(up.blob(repo, &d).await.bytes().await.unwrap() == data);

    // and a finish right after such a crash cuts them off too
    let loc = up.start(repo).await;
    let small = pattern(1000, 6);
    let r = up.patch(&loc, 0, small.clone()).await;
    assert_eq!(r.status(), 202);
    let loc = location(&r);
    let file = upload_dir(&s, repo, &loc).join("data");
    let mut f = std::fs::OpenOptions::new().append(true).open(&file).unwrap();
    std::io::Write::write_all(&mut f, b"half a chunk").unwrap();
    drop(f);
    let ds = digest(&small);
    let r = up.finish(&loc, &ds).await;
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    assert!(up.blob(repo, &ds).await.bytes().await.unwrap() == small);
    assert_eq!(std::fs::metadata(blob_file(&s, &ds)).unwrap().len(), 1000);
}
