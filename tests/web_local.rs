//! The browser pages for local accounts (htpasswd users, the generated admin), without Gitee:
//! sign in with username and password, see the repositories and tags you may pull, create and
//! revoke CLI passwords; and the same pages in headless Chromium at 1280 px and at phone width.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use std::process::Command;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Pushes a one-layer image with Basic credentials.
async fn push_image(s: &Server, creds: (&str, &str), repo: &str, tag: &str) {
    let c = client();
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#.to_vec();
    let layer = format!("layer of {repo}:{tag}").into_bytes();
    for b in [config.clone(), layer.clone()] {
        let r = c
            .post(format!(
                "{}/v2/{repo}/blobs/uploads/?digest={}",
                s.url,
                common::digest(&b)
            ))
            .basic_auth(creds.0, Some(creds.1))
            .body(b.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": common::digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": common::digest(&layer), "size": layer.len()}],
    });
    let r = c
        .put(format!("{}/v2/{repo}/manifests/{tag}", s.url))
        .basic_auth(creds.0, Some(creds.1))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
}

fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .filter(|v| !v.is_empty())
}

async fn sign_in(s: &Server, user: &str, pass: &str) -> reqwest::Response {
    client()
        .post(format!("{}/login", s.url))
        .form(&[("username", user), ("password", pass), ("rd", "/ui/repos")])
        .send()
        .await
        .unwrap()
}

async fn get(s: &Server, cookie: &str, path: &str) -> (u16, String) {
    let r = client()
        .get(format!("{}{path}", s.url))
        .header("cookie", format!("regate_local={cookie}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn field<'a>(html: &'a str, name: &str) -> &'a str {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name}: {html}"));
    let rest = &html[at + name.len() + 15..];
    &rest[..rest.find('"').unwrap()]
}

async fn token_status(s: &Server, user: &str, pass: &str, scope: &str) -> (u16, serde_json::Value) {
    let r = client()
        .get(format!("{}/token?service=x&scope={scope}", s.url))
        .basic_auth(user, Some(pass))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_accounts_sign_in_see_their_repositories_and_manage_cli_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let h = common::htpasswd(dir.path(), &[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let s = Server::start_in(dir, &format!("auth: {{ htpasswd: {} }}\n", h.display()));
    push_image(&s, ("alice", "alice-pw"), "alice/app", "v1").await;
    push_image(&s, ("bob", "bob-pw"), "bob/tool", "v1").await;

    // the sign-in page is a form, not "Gitee sign-in is not configured"
    let r = client().get(format!("{}/login", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(
        html.contains("id=\"signin\"") && html.contains("name=\"password\""),
        "{html}"
    );
    assert!(!html.contains("Sign in with Gitee"), "no Gitee here");

    // a wrong password is refused on the page
    let r = sign_in(&s, "alice", "nope").await;
    assert_eq!(r.status(), 401);
    assert!(cookie_of(&r, "regate_local").is_none());
    assert!(r.text().await.unwrap().contains("Incorrect username or password"));

    let r = sign_in(&s, "alice", "alice-pw").await;
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], "/ui/repos");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Lax"), "{set}");
    let cookie = cookie_of(&r, "regate_local").unwrap();

    // repositories she may pull, and their tags
    let (code, html) = get(&s, &cookie, "/ui/repos").await;
    assert_eq!(code, 200);
    assert!(html.contains("href=\"/ui/repos/alice/app\""), "{html}");
    assert!(!html.contains("bob/tool"), "{html}");
    let (code, html) = get(&s, &cookie, "/ui/repos/alice/app").await;
    assert_eq!(code, 200);
    assert!(html.contains("id=\"tags\"") && html.contains(">v1<"), "{html}");
    assert_eq!(get(&s, &cookie, "/ui/repos/bob/tool").await.0, 404);

    // the account page: docker login line, create a CLI password
    let (code, html) = get(&s, &cookie, "/").await;
    assert_eq!(code, 200);
    assert!(html.contains("<strong id=\"login\">alice</strong>"), "{html}");
    assert!(html.contains(&format!("docker login {} -u alice", s.host)), "{html}");
    let csrf = field(&html, "csrf").to_owned();
    let r = client()
        .post(format!("{}/ui/tokens", s.url))
        .header("cookie", format!("regate_local={cookie}"))
        .form(&[
            ("csrf", csrf.as_str()),
            ("description", "laptop"),
            ("repositories", "alice/*"),
            ("actions", "pull,push"),
            ("days", "7"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    let at = html.find("id=\"new-password\">").unwrap() + "id=\"new-password\">".len();
    let pw = html[at..html[at..].find('<').unwrap() + at].trim().to_owned();
    assert!(html.contains("data-copy=\"new-password\""), "a copy button: {html}");
    let (code, body) = token_status(&s, "alice", &pw, "repository:alice/app:pull,push").await;
    assert_eq!(code, 200, "{body}");
    // a form without the session's token is refused
    let r = client()
        .post(format!("{}/ui/tokens", s.url))
        .header("cookie", format!("regate_local={cookie}"))
        .form(&[("csrf", "forged"), ("description", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // revoke it
    let (_, html) = get(&s, &cookie, "/").await;
    let id = field(&html, "id").to_owned();
    let csrf = field(&html, "csrf").to_owned();
    let r = client()
        .post(format!("{}/ui/tokens/revoke", s.url))
        .header("cookie", format!("regate_local={cookie}"))
        .form(&[("csrf", csrf.as_str()), ("id", id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while token_status(&s, "alice", &pw, "repository:alice/app:pull").await.0 == 200 {
        assert!(std::time::Instant::now() < deadline, "revoked CLI password still works");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // the session cookie is no registry credential, and a registry token is no session
    let r = client()
        .get(format!("{}/v2/alice/app/tags/list", s.url))
        .bearer_auth(&cookie)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 401 | 403), "{}", r.status());
    let (_, t) = token_status(&s, "alice", "alice-pw", "repository:alice/app:pull").await;
    let (code, html) = get(&s, t["token"].as_str().unwrap(), "/").await;
    assert_eq!(code, 200);
    assert!(
        html.contains("id=\"signin\""),
        "a registry token opened a session: {html}"
    );

    // the generated admin of a server without htpasswd signs in the same way
    let a = Server::start("");
    let (user, pass) = a.admin();
    let r = sign_in(&a, &user, &pass).await;
    assert_eq!(r.status(), 302);
    let cookie = cookie_of(&r, "regate_local").unwrap();
    let (code, html) = get(&a, &cookie, "/").await;
    assert_eq!(code, 200);
    assert!(html.contains("<strong id=\"login\">admin</strong>"), "{html}");

    // signing out ends the session
    let r = client()
        .post(format!("{}/logout", a.url))
        .header("cookie", format!("regate_local={cookie}"))
        .send()
        .await
        .unwrap();
    let cleared = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .any(|v| v.to_str().unwrap().starts_with("regate_local=;"));
    assert!(cleared);
}

/// The same pages in headless Chromium at 1280 px and at a phone's width: nothing cut off or
/// scrolled sideways, the size and date columns on one line, a working copy button; screenshots
/// in target/test-artifacts/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_pages_lay_out_at_desktop_and_phone_width() {
    let have_driver = common::have("chromedriver") && (common::have("chromium") || common::have("chromium-browser"));
    let have_selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(have_driver && have_selenium) {
        println!("skipping: chromium, chromedriver or selenium is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let h = common::htpasswd(dir.path(), &[("alice", "alice-pw")]);
    let s = Server::start_in(dir, &format!("auth: {{ htpasswd: {} }}\n", h.display()));
    push_image(&s, ("alice", "alice-pw"), "alice/app", "v1.2.3-with-a-long-tag").await;
    let artifacts = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("browser")
        .join("local_pages.py");
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(&url)
            .arg("alice")
            .arg("alice-pw")
            .arg(&artifacts)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "browser check failed: {text}");
    assert!(text.contains("checked 1280"), "{text}");
    assert!(text.contains("checked 390"), "{text}");
}
