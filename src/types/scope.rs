//! Docker token scopes (distribution's docs/spec/auth/scope.md):
//! `resourcetype[(class)]:resourcename:action[,action...]`. Resource names may contain `:`
//! (`host:port/name`), so the type is split off the left and the actions off the right.

use std::collections::BTreeSet;
use std::fmt;

pub const MAX_SCOPES: usize = 32;
pub const MAX_SCOPE_LEN: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Pull,
    Push,
    Delete,
    #[serde(rename = "*")]
    All,
}

impl Action {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            "*" => Some(Action::All),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
            Action::All => "*",
        }
    }
}

pub type Actions = BTreeSet<Action>;

/// Expands `*` into the concrete repository actions.
pub fn expand(a: &Actions) -> Actions {
    if a.contains(&Action::All) {
        [Action::Pull, Action::Push, Action::Delete].into_iter().collect()
    } else {
        a.clone()
    }
}

/// A scope's resource type: the two distribution defines, and any other kept by its name (a
/// token request may ask for types regate grants nothing on; they are echoed, never granted).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Repository,
    Registry,
    /// A browser session of a local account: the only access entry of its cookie, which grants
    /// nothing on the registry (a client cannot ask for it: scope types are lowercase words).
    WebSession,
    Other(String),
}

impl Resource {
    pub fn parse(s: &str) -> Self {
        match s {
            "repository" => Resource::Repository,
            "registry" => Resource::Registry,
            "regate-web-session" => Resource::WebSession,
            other => Resource::Other(other.to_owned()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Resource::Repository => "repository",
            Resource::Registry => "registry",
            Resource::WebSession => "regate-web-session",
            Resource::Other(s) => s,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub resource: Resource,
    pub class: Option<String>,
    pub name: String,
    pub actions: Actions,
}

impl Scope {
    pub fn repository(name: &str, actions: &[Action]) -> Self {
        Scope {
            resource: Resource::Repository,
            class: None,
            name: name.to_owned(),
            actions: actions.iter().copied().collect(),
        }
    }

    pub fn catalog() -> Self {
        Scope {
            resource: Resource::Registry,
            class: None,
            name: "catalog".into(),
            actions: [Action::All].into_iter().collect(),
        }
    }

    /// Parses one scope; `None` for malformed ones (which are then ignored, like unknown actions).
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() > MAX_SCOPE_LEN {
            return None;
        }
        let (ty, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        let (kind, class) = match ty.split_once('(') {
            Some((k, c)) => (k, Some(c.strip_suffix(')')?)),
            None => (ty, None),
        };
        let word = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !word(kind) || class.is_some_and(|c| !word(c)) || name.is_empty() {
            return None;
        }
        let actions: Actions = actions.split(',').filter_map(Action::parse).collect();
        Some(Scope {
            resource: Resource::parse(kind),
            class: class.map(str::to_owned),
            name: name.to_owned(),
            actions,
        })
    }

    /// Parses a space-separated list (one `scope` parameter may carry several).
    pub fn parse_list<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
        let mut out: Vec<Scope> = Vec::new();
        for s in items.into_iter().flat_map(|i| i.split(' ')).filter(|s| !s.is_empty()) {
            if out.len() >= MAX_SCOPES {
                break;
            }
            if let Some(sc) = Scope::parse(s) {
                match out
                    .iter_mut()
                    .find(|o| o.resource == sc.resource && o.name == sc.name && o.class == sc.class)
                {
                    Some(o) => o.actions.extend(sc.actions),
                    None => out.push(sc),
                }
            }
        }
        out
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource.as_str())?;
        if let Some(c) = &self.class {
            write!(f, "({c})")?;
        }
        write!(f, ":{}:", self.name)?;
        let acts: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
        f.write_str(&acts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_scopes() {
        let s = Scope::parse("repository:library/ubuntu:pull,push").unwrap();
        assert_eq!(s.resource, Resource::Repository);
        assert_eq!(s.name, "library/ubuntu");
        assert_eq!(s.actions, [Action::Pull, Action::Push].into_iter().collect());
        let s = Scope::parse("repository:localhost:5000/x/y:pull").unwrap();
        assert_eq!(s.name, "localhost:5000/x/y");
        let s = Scope::parse("repository(plugin):vieux/sshfs:pull").unwrap();
        assert_eq!(s.class.as_deref(), Some("plugin"));
        let s = Scope::parse("registry:catalog:*").unwrap();
        assert_eq!(s, Scope::catalog());
        let s = Scope::parse("repository:a:pull,frobnicate").unwrap();
        assert_eq!(s.actions.len(), 1);
        assert!(Scope::parse("repository:a").is_none());
        assert!(Scope::parse("Repository:a:pull").is_none());
        assert!(Scope::parse("repository::pull").is_none());
        assert!(Scope::parse(&format!("repository:{}:pull", "a".repeat(600))).is_none());
        assert_eq!(s.to_string(), "repository:a:pull");
    }

    #[test]
    fn lists_merge_and_cap() {
        let l = Scope::parse_list(["repository:a:pull repository:b:pull", "repository:a:push"]);
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].to_string(), "repository:a:pull,push");
        let many: Vec<String> = (0..100).map(|i| format!("repository:r{i}:pull")).collect();
        assert_eq!(Scope::parse_list(many.iter().map(|s| s.as_str())).len(), MAX_SCOPES);
    }
}
