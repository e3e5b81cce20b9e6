//! The `/v2/` path classifier: never panics, and whatever it accepts names a repository that
//! the name grammar accepts and that contains no traversal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regate::types::names::RepoName;
use regate::{classify, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(route) = classify(path) {
        if let Some(repo) = route.repo() {
            let name = repo.as_str();
            assert!(RepoName::parse(name).is_some());
            assert!(!name.contains("..") && !name.contains("//") && !name.contains('%'));
            assert!(path.starts_with(name), "the name is a prefix of the path");
        }
        if let Route::Manifest(_, r) = &route {
            assert!(!r.to_string().contains('/'));
        }
    }
});
