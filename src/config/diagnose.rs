//! Every problem of a config at once, each with its key path (`access[2].acount`) and, where the
//! key is in the file, its line.
//!
//! serde stops at the first error. To find the others, the offending key is taken out of the
//! document and it is deserialised again, until it deserialises; the checks of meaning then run
//! on what is left. serde_yaml_ng names the key path of an error only when it reads YAML text,
//! so each round reads the document as text; the line in the original file is found by walking
//! the file's YAML to that path and letting the parser say where it stands.

use super::Config;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_yaml_ng::Value;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Key(String),
    Index(usize),
}

fn show(path: &[Seg]) -> String {
    let mut s = String::new();
    for p in path {
        match p {
            Seg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

/// `access[2].actions[0]` into segments.
fn parse_path(p: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for part in p.split('.') {
        let (name, mut idx) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !name.is_empty() {
            out.push(Seg::Key(name.to_owned()));
        }
        while let Some(rest) = idx.strip_prefix('[') {
            let Some(end) = rest.find(']') else { break };
            if let Ok(i) = rest[..end].parse() {
                out.push(Seg::Index(i));
            }
            idx = &rest[end + 1..];
        }
    }
    out
}

/// serde_yaml_ng's error text is `path: message at line L column C` (no path at the top level).
fn split_error(e: &serde_yaml_ng::Error) -> (Vec<Seg>, String) {
    let mut text = e.to_string();
    if let Some(i) = text.rfind(" at line ") {
        text.truncate(i);
    }
    if let Some((p, msg)) = text.split_once(": ") {
        if !p.is_empty() && !p.contains(char::is_whitespace) {
            return (parse_path(p), msg.to_owned());
        }
    }
    (Vec::new(), text)
}

/// `unknown field `acount`, expected one of ...` names the key inside the path.
fn unknown_field(msg: &str) -> Option<(String, String)> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (name, tail) = rest.split_once('`')?;
    let tail = tail.trim_start_matches(',').trim();
    let msg = if tail.is_empty() {
        "unknown key".to_owned()
    } else {
        format!("unknown key, {tail}")
    };
    Some((name.to_owned(), msg))
}

/// Clearer words for the parse errors of typed values.
fn explain(msg: String) -> String {
    match msg.as_str() {
        "invalid socket address syntax" => {
            format!("{msg}: expected host:port with an IP address, e.g. 0.0.0.0:5000 or 127.0.0.1:5000")
        }
        "invalid IP address syntax" => {
            format!("{msg}: expected an IP address or network, e.g. 10.0.0.0/8 or 192.168.1.10")
        }
        _ => msg,
    }
}

/// Removes the node at `path`; true when there was one.
fn remove(v: &mut Value, path: &[Seg]) -> bool {
    let Some((last, parent)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for seg in parent {
        let next = match (seg, cur) {
            (Seg::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Seg::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Seg::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s.remove(*i);
            true
        }
        _ => false,
    }
}

/// Sequence elements taken out so far, by the original path of their sequence and original index;
/// later errors name indices in the shrunk sequence, which this maps back.
#[derive(Default)]
struct Removed(Vec<(String, usize)>);

impl Removed {
    fn original(&self, path: &[Seg]) -> Vec<Seg> {
        let mut out: Vec<Seg> = Vec::new();
        for seg in path {
            match seg {
                Seg::Index(i) => {
                    let at = show(&out);
                    let mut gone: Vec<usize> = self.0.iter().filter(|(p, _)| *p == at).map(|(_, i)| *i).collect();
                    gone.sort_unstable();
                    let mut orig = *i;
                    for g in gone {
                        if g <= orig {
                            orig += 1;
                        }
                    }
                    out.push(Seg::Index(orig));
                }
                k => out.push(k.clone()),
            }
        }
        out
    }

    fn note(&mut self, original: &[Seg]) {
        if let Some((Seg::Index(i), parent)) = original.split_last() {
            self.0.push((show(parent), *i));
        }
    }
}

/// All problems of a document that did not deserialise: the type errors, then what the checks
/// of meaning find in the rest. `text` is the file as written (for line numbers).
pub(super) fn problems(mut v: Value, text: &str, origin: &str, files: bool) -> Vec<String> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut removed = Removed::default();
    let mut taken: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..100 {
        let yaml = match serde_yaml_ng::to_string(&v) {
            Ok(y) => y,
            Err(e) => {
                out.push((usize::MAX, format!("{origin}: {e}")));
                break;
            }
        };
        let e = match serde_yaml_ng::from_str::<Config>(&yaml) {
            Ok(cfg) => {
                out.extend(
                    cfg.validate(files)
                        .into_iter()
                        .map(|p| (usize::MAX, format!("{origin}: {p}"))),
                );
                break;
            }
            Err(e) => e,
        };
        let (mut path, mut msg) = split_error(&e);
        if let Some((field, m)) = unknown_field(&msg) {
            path.push(Seg::Key(field));
            msg = m;
        } else if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            // a required key taken out for an error of its own: its parent goes too, silently
            let mut child = removed.original(&path);
            child.push(Seg::Key(field.to_owned()));
            if taken.contains(&child) {
                let original = removed.original(&path);
                if !remove(&mut v, &path) {
                    break;
                }
                removed.note(&original);
                taken.push(original);
                continue;
            }
        }
        let original = removed.original(&path);
        let msg = explain(msg);
        let key = show(&original);
        let line = line_of(text, &original);
        out.push((
            line.unwrap_or(usize::MAX),
            match (line, key.is_empty()) {
                (Some(l), false) => format!("{origin}:{l}: {key}: {msg}"),
                (Some(l), true) => format!("{origin}:{l}: {msg}"),
                (None, false) => format!("{origin}: {key}: {msg}"),
                (None, true) => format!("{origin}: {msg}"),
            },
        ));
        if !remove(&mut v, &path) {
            break;
        }
        removed.note(&original);
        taken.push(original);
    }
    // in the order of the file; what has no line (environment, meaning) last
    out.sort_by_key(|(line, _)| *line);
    out.into_iter().map(|(_, p)| p).collect()
}

const PROBE: &str = "regate-config-probe";

/// The line of the key (or element) at `path` in the YAML `text`, if it is written there.
fn line_of(text: &str, path: &[Seg]) -> Option<usize> {
    if path.is_empty() {
        return None;
    }
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let e = Probe(path).deserialize(de).err()?;
    if !e.to_string().contains(PROBE) {
        return None;
    }
    e.location().map(|l| l.line())
}

struct Probe<'a>(&'a [Seg]);

impl<'de> DeserializeSeed<'de> for Probe<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.0.is_empty() {
            d.deserialize_any(Here)
        } else {
            d.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Probe<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        self.deserialize(d)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Seg::Key(k), rest)) => (Some(k.as_str()), rest),
            _ => (None, &[][..]),
        };
        while let Some(key) = map.next_key_seed(Key {
            target: want.filter(|_| rest.is_empty()),
        })? {
            if want == Some(key.as_str()) {
                map.next_value_seed(Probe(rest))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (want, rest) = match self.0.split_first() {
            Some((Seg::Index(i), rest)) => (Some(*i), rest),
            _ => (None, &[][..]),
        };
        let mut i = 0;
        loop {
            let more = if want == Some(i) {
                seq.next_element_seed(Probe(rest))?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            i += 1;
        }
    }
}

/// Reads a mapping key; fails (so the parser tells where) when it is the target.
struct Key<'a> {
    target: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
        if self.target == Some(s) {
            return Err(E::custom(PROBE));
        }
        Ok(s.to_owned())
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<String, E> {
        self.visit_str(&b.to_string())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<String, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
}

/// The target value itself: fails wherever it stands.
struct Here;

impl<'de> Visitor<'de> for Here {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(PROBE)
    }
}

#[cfg(test)]
mod tests {
    fn check(text: &str) -> Vec<String> {
        match crate::config::parse(text, "f.yaml", &vec![]) {
            Ok(c) => c.validate(false).into_iter().map(|p| format!("f.yaml: {p}")).collect(),
            Err(e) => e,
        }
    }

    #[test]
    fn every_problem_with_its_key_and_line() {
        let text = "\
listen: nohost
network:
  allow: [10.0.0.0/8, 10.0.0.300/8, 192.168.0.0/16, nonsense]
gc: { grace: soon, interval: 1h }
access:
  - { account: admin, repository: \"*\", actions: [\"*\"] }
  - { repository: \"x/*\", actions: [pull] }
  - account: bob
    acount: bobby
    repository: \"b/*\"
    actions: [pull, fly]
storage: { backend: s3 }
bogus: 1
";
        let e = check(text);
        let want = [
            "f.yaml:1: listen: invalid socket address syntax",
            "f.yaml:3: network.allow[1]: invalid IP address syntax",
            "f.yaml:3: network.allow[3]: invalid IP address syntax",
            "f.yaml:4: gc.grace: \"soon\" is not a duration",
            "f.yaml:9: access[2].acount: unknown key",
            "f.yaml:11: access[2].actions",
            "f.yaml:13: bogus: unknown key",
            "f.yaml: storage.s3: required when storage.backend is s3",
        ];
        for w in want {
            assert!(e.iter().any(|l| l.starts_with(w)), "{w}\n{e:#?}");
        }
        assert_eq!(e.len(), want.len(), "{e:#?}");
    }

    #[test]
    fn durations_take_units_and_plain_seconds() {
        let c = crate::config::parse(
            "gc: { grace: 1h, interval: 90 }\nauth: { token_ttl: 5m }\nstorage: { redirect_ttl: 1h30m }\n",
            "t",
            &vec![],
        )
        .unwrap();
        assert_eq!(c.gc.grace, 3600);
        assert_eq!(c.gc.interval, 90);
        assert_eq!(c.auth.token_ttl, 300);
        assert_eq!(c.storage.redirect_ttl, 5400);
        let env = vec![("REGATE_GC__GRACE".to_owned(), "2h".to_owned())];
        assert_eq!(crate::config::parse("", "t", &env).unwrap().gc.grace, 7200);
    }

    #[test]
    fn problems_from_the_environment_name_the_key_without_a_line() {
        let env = vec![("REGATE_LISTEN".to_owned(), "nohost".to_owned())];
        let e = crate::config::parse("gc: { grace: 1h }\n", "f.yaml", &env).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("f.yaml: listen: invalid socket address syntax"),
            "{e:?}"
        );
    }
}
