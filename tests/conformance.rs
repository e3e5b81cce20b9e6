#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The registry suite (`tests/registry_suite/`) on the filesystem backend.

mod common;
mod registry_suite;

/// What the suite needs to know about the fs store of a server started in a temp dir.
mod backend {
    use crate::common::Server;
    use std::path::{Path, PathBuf};

    pub fn storage_yaml(dir: &Path, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { ", " };
        format!(
            "storage: {{ backend: fs, fs: {{ root: {}, fsync: false }}{sep}{extra} }}\n",
            dir.join("data").display()
        )
    }

    /// Every file under `prefix` (relative to the store root), sorted.
    pub fn stored_keys(s: &Server, prefix: &str) -> Vec<String> {
        let root = s.data();
        let mut out = Vec::new();
        let mut stack: Vec<PathBuf> = vec![root.join(prefix)];
        while let Some(p) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&p) else {
                if p.is_file() {
                    out.push(p.strip_prefix(&root).unwrap().display().to_string());
                }
                continue;
            };
            for e in rd {
                let e = e.unwrap();
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    /// Temporary files a write left behind.
    pub fn leftovers(s: &Server) -> Vec<String> {
        std::fs::read_dir(s.data().join(".regate-tmp"))
            .map(|rd| rd.map(|e| e.unwrap().path().display().to_string()).collect())
            .unwrap_or_default()
    }
}
