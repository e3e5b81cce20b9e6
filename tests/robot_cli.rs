//! `regate robot` as a user meets it: the login line names the registry, an empty list says so.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

fn robot(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = common::regate()
        .arg("robot")
        .args(args)
        .arg("--config")
        .arg(dir.join("regate.yaml"))
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn robot_list_says_when_there_are_none_and_add_names_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("regate.yaml"),
        format!(
            "listen: 0.0.0.0:5000\npublic_url: https://reg.example.com/\nstorage: {{ backend: fs, fs: {{ root: {} }} }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (_, list) = robot(dir.path(), &["list"]);
    assert!(list.starts_with("no robot accounts"), "{list:?}");
    let (_, out) = robot(dir.path(), &["add", "ci", "--repo", "ci/*"]);
    assert!(
        out.contains("| docker login reg.example.com -u 'robot$ci' --password-stdin"),
        "{out}"
    );
    let (_, list) = robot(dir.path(), &["list"]);
    assert!(list.starts_with("robot$ci\t"), "{list:?}");
    // without public_url, the listen address clients reach
    std::fs::write(
        dir.path().join("regate.yaml"),
        format!(
            "listen: 127.0.0.1:5999\nstorage: {{ backend: fs, fs: {{ root: {} }} }}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let (_, out) = robot(dir.path(), &["add", "ci2", "--repo", "ci/*"]);
    assert!(out.contains("| docker login 127.0.0.1:5999 -u 'robot$ci2'"), "{out}");
}
