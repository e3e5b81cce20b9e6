//! The rooms of the source and what each may import (README "Architecture"): every `crate::`
//! path in a room's code (comments and unit tests aside) must name a room on a lower floor, so
//! the module graph has no cycles and the ground floor imports nothing of the project.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Floors, lowest first; a room may import rooms on lower floors only.
const FLOORS: &[&[&str]] = &[
    &["types"],
    &["util", "live", "ratelimit"],
    &["config"],
    &["http"],
    &["storage"],
    &["metrics", "mirror"],
    &["registry"],
    &["auth"],
    &["gitee"],
    &["notify", "gc", "proxy", "trust", "replicate"],
    &["api", "web", "server"],
    &["gateway"],
    &["bootstrap"],
    &["cli"],
];

fn floor(room: &str) -> Option<usize> {
    FLOORS.iter().position(|f| f.contains(&room))
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a file without comments and without its unit tests.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            // a `//` inside a string literal (a URL) is rare in paths we look for; cutting
            // there can only hide an import, never invent one, and the rooms are checked by
            // their `use` lines too
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in all {
        let rel = f.strip_prefix(&src).unwrap();
        let room = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if room == "lib" || room == "main" {
            continue;
        }
        let text = code(&std::fs::read_to_string(&f).unwrap());
        let entry = edges.entry(room.clone()).or_default();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name != room && !name.is_empty() {
                entry.insert(name);
            }
        }
    }
    edges
}

#[test]
fn every_room_imports_only_rooms_below_it() {
    let edges = imports();
    let mut wrong = Vec::new();
    for (room, uses) in &edges {
        let Some(mine) = floor(room) else {
            wrong.push(format!(
                "src/{room} is in no floor of tests/architecture.rs (add it, and to README)"
            ));
            continue;
        };
        for u in uses {
            match floor(u) {
                Some(theirs) if theirs < mine => {}
                _ => wrong.push(format!("{room} imports {u}")),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
    assert!(
        edges.get("types").is_none_or(|u| u.is_empty()),
        "types imports nothing of the project"
    );
}

#[test]
fn the_checker_sees_imports() {
    // the check above would pass on an empty graph: make sure it reads what is there
    let edges = imports();
    assert!(edges["gateway"].contains("registry"));
    assert!(edges["bootstrap"].contains("config"));
    assert!(edges["storage"].contains("types"));
    assert_eq!(
        code("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { crate::c }"),
        "use crate::a; "
    );
}
