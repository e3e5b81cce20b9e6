//! Scope parsing: never panics, bounded output, and a parsed scope prints back to something
//! that parses to the same scope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regate::types::scope::{Scope, MAX_SCOPES};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let list = Scope::parse_list(s.split('&'));
    assert!(list.len() <= MAX_SCOPES);
    for sc in &list {
        if !sc.actions.is_empty() {
            let again = Scope::parse(&sc.to_string());
            assert_eq!(again.as_ref(), Some(sc));
        }
    }
});
