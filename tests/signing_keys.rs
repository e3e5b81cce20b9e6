//! Token signing keys as `openssl` writes them (SEC1 from `ecparam -genkey`, PKCS#1 from
//! `genrsa -traditional`) pass `check-config`, and the server signs working tokens with them
//! and publishes their certificate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{client, token, Server};
use std::process::Command;

fn openssl(args: &[&str]) -> String {
    let o = Command::new("openssl").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[tokio::test]
async fn openssl_sec1_and_pkcs1_keys_sign_tokens() {
    for (name, gen, marker) in [
        (
            "sec1",
            &["ecparam", "-name", "prime256v1", "-genkey", "-out", "OUT"][..],
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "pkcs1",
            &["genrsa", "-traditional", "-out", "OUT", "2048"][..],
            "BEGIN RSA PRIVATE KEY",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join(format!("{name}.key")).display().to_string();
        let cert = dir.path().join(format!("{name}.crt")).display().to_string();
        let args: Vec<&str> = gen.iter().map(|a| if *a == "OUT" { key.as_str() } else { a }).collect();
        openssl(&args);
        assert!(std::fs::read_to_string(&key).unwrap().contains(marker));
        let extra = format!("auth: {{ signing_key: {key}, signing_cert: {cert} }}\n");
        let cfg = dir.path().join("check.yaml");
        std::fs::write(
            &cfg,
            format!(
                "listen: 127.0.0.1:0\nstorage: {{ backend: fs, fs: {{ root: {} }} }}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let out = common::regate()
            .args(["check-config", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: check-config: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let s = Server::start_in(dir, &extra);
        let (u, p) = s.admin();
        let t = token(&s, Some((&u, &p)), &["repository:admin/x:pull"]).await;
        let r = client()
            .get(format!("{}/v2/", s.url))
            .bearer_auth(&t)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: the token is not accepted");
        // the certificate generated beside the key holds openssl's public key of that file
        assert_eq!(
            openssl(&["x509", "-in", &cert, "-pubkey", "-noout"]),
            openssl(&["pkey", "-in", &key, "-pubout"]),
            "{name}"
        );
    }
}
