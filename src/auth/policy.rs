//! The access policy: ordered rules; the first rule that fits the caller and the repository
//! decides which actions are granted; no fitting rule means no access.

use crate::types::scope::{expand, Action, Actions, Resource, Scope};
use ipnet::IpNet;
use std::net::IpAddr;

/// A repository pattern: `*` matches any run of characters (including `/`), `?` one character,
/// and `${account}` the caller's account name, lower-cased and taken literally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<Tok>, String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Star,
    Quest,
    Account,
}

impl Glob {
    pub fn new(p: &str) -> Self {
        let mut toks = Vec::new();
        let mut rest = p;
        while let Some(c) = rest.chars().next() {
            if let Some(r) = rest.strip_prefix("${account}") {
                toks.push(Tok::Account);
                rest = r;
                continue;
            }
            toks.push(match c {
                '*' => Tok::Star,
                '?' => Tok::Quest,
                c => Tok::Lit(c),
            });
            rest = &rest[c.len_utf8()..];
        }
        Glob(toks, p.to_owned())
    }

    /// The pattern as written.
    pub fn source(&self) -> &str {
        &self.1
    }

    pub fn matches(&self, s: &str, account: &str) -> bool {
        // expand ${account} into literal characters first, so it can never act as a wildcard
        let acct = account.to_lowercase();
        let mut toks = Vec::with_capacity(self.0.len());
        for t in &self.0 {
            match t {
                Tok::Account => toks.extend(acct.chars().map(Tok::Lit)),
                t => toks.push(t.clone()),
            }
        }
        let s: Vec<char> = s.chars().collect();
        glob_match(&toks, &s)
    }
}

fn glob_match(p: &[Tok], s: &[char]) -> bool {
    // iterative wildcard matching with single backtrack point
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        match p.get(pi) {
            Some(Tok::Lit(c)) if *c == s[si] => {
                pi += 1;
                si += 1;
            }
            Some(Tok::Quest) => {
                pi += 1;
                si += 1;
            }
            Some(Tok::Star) => {
                star = Some(pi);
                mark = si;
                pi += 1;
            }
            _ => match star {
                Some(sp) => {
                    pi = sp + 1;
                    mark += 1;
                    si = mark;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|t| *t == Tok::Star)
}

#[derive(Debug, Clone)]
pub enum Rule {
    Static(StaticRule),
    /// `{ gitee: repo_permission }`: the Gitee repository's permission decides.
    GiteeRepoPermission,
}

#[derive(Debug, Clone)]
pub struct StaticRule {
    /// Accounts this rule is for; `None` means any signed-in account (never anonymous).
    pub accounts: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub repository: Option<Glob>,
    pub networks: Option<Vec<IpNet>>,
    pub actions: Actions,
    pub catalog: bool,
    /// `oidc: NAME`: only CI jobs signed in through that OIDC provider.
    pub oidc: Option<String>,
    /// `claims: { NAME: GLOB }`: claims of their ID token that must match, each whole.
    pub claims: Vec<(String, Glob)>,
}

/// Who is asking.
#[derive(Debug, Clone)]
pub struct Subject {
    pub account: String,
    pub groups: Vec<String>,
    pub ip: IpAddr,
    pub anonymous: bool,
    /// Robot accounts and CLI passwords can do no more than their limit.
    pub limit: Option<std::sync::Arc<super::stored::Limit>>,
    /// For Gitee users: the permissions Gitee reported for the repositories in question, looked
    /// up before the policy runs (the policy itself never waits on the network).
    pub gitee: Option<std::sync::Arc<std::collections::HashMap<String, Actions>>>,
    /// A CI job's verified OIDC sign-in (provider and claims).
    pub oidc: Option<std::sync::Arc<super::oidc::OidcLogin>>,
}

impl Subject {
    pub fn anonymous(ip: IpAddr) -> Self {
        Subject {
            account: "anonymous".into(),
            groups: Vec::new(),
            ip,
            anonymous: true,
            limit: None,
            gitee: None,
            oidc: None,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub anonymous_pull: bool,
}

impl StaticRule {
    fn fits_subject(&self, s: &Subject) -> bool {
        let account_ok = match &self.accounts {
            None => !s.anonymous,
            Some(list) => list.iter().any(|a| a == &s.account || (a == "*" && !s.anonymous)),
        };
        let groups_ok = match &self.groups {
            None => true,
            Some(g) => g.iter().any(|g| s.groups.contains(g)),
        };
        let net_ok = match &self.networks {
            None => true,
            Some(n) => n.iter().any(|n| n.contains(&s.ip)),
        };
        // claims are matched whole (a glob per claim), only for the named provider's sign-ins
        let oidc_ok = match (&self.oidc, &s.oidc) {
            (None, _) => self.claims.is_empty(),
            (Some(p), Some(l)) => {
                &l.provider == p
                    && self
                        .claims
                        .iter()
                        .all(|(k, g)| l.claims.get(k).is_some_and(|v| g.matches(v, "")))
            }
            (Some(_), None) => false,
        };
        account_ok && groups_ok && net_ok && oidc_ok
    }
}

impl Policy {
    /// The actions `s` may perform on repository `repo`.
    pub fn actions(&self, s: &Subject, repo: &str) -> Actions {
        match &s.limit {
            None => self.rule_actions(s, repo),
            Some(l) => {
                let lim = l.actions(repo, &s.account);
                if l.rules {
                    self.rule_actions(s, repo).intersection(&lim).copied().collect()
                } else {
                    lim
                }
            }
        }
    }

    fn rule_actions(&self, s: &Subject, repo: &str) -> Actions {
        for r in &self.rules {
            let r = match r {
                Rule::Static(r) => r,
                Rule::GiteeRepoPermission => {
                    // fits when Gitee grants something on this repository; a repository the
                    // user has no permission on falls through to the next rule
                    match s.gitee.as_ref().and_then(|m| m.get(repo)) {
                        Some(a) if !a.is_empty() && !s.anonymous => return a.clone(),
                        _ => continue,
                    }
                }
            };
            if !r.fits_subject(s) {
                continue;
            }
            if let Some(g) = &r.repository {
                if !g.matches(repo, &s.account) {
                    continue;
                }
            } else {
                continue;
            }
            let mut a = expand(&r.actions);
            if s.anonymous {
                if !self.anonymous_pull {
                    return Actions::new();
                }
                a.retain(|x| *x == Action::Pull);
            }
            return a;
        }
        Actions::new()
    }

    /// Whether some rule mirrors Gitee permissions (callers then look them up first).
    pub fn uses_gitee(&self) -> bool {
        self.rules.iter().any(|r| matches!(r, Rule::GiteeRepoPermission))
    }

    /// The groups rules name, e.g. `gitee-org:team`.
    pub fn groups(&self) -> Vec<String> {
        let mut g: Vec<String> = self
            .rules
            .iter()
            .filter_map(|r| match r {
                Rule::Static(r) => r.groups.clone(),
                Rule::GiteeRepoPermission => None,
            })
            .flatten()
            .collect();
        g.sort();
        g.dedup();
        g
    }

    /// Whether `s` may list the catalog (`registry:catalog:*`).
    pub fn catalog(&self, s: &Subject) -> bool {
        if s.anonymous || s.limit.is_some() {
            return false;
        }
        self.rules
            .iter()
            .any(|r| matches!(r, Rule::Static(r) if r.catalog && r.fits_subject(s)))
    }

    /// What of `requested` the policy grants: the intersection, never an error.
    pub fn grant(&self, s: &Subject, requested: &[Scope]) -> Vec<Scope> {
        let mut out = Vec::new();
        for sc in requested {
            let granted: Actions = match (&sc.resource, sc.class.as_deref()) {
                (Resource::Repository, None) => {
                    if crate::types::names::RepoName::parse(&sc.name).is_none() {
                        continue;
                    }
                    let allowed = self.actions(s, &sc.name);
                    expand(&sc.actions).intersection(&allowed).copied().collect()
                }
                (Resource::Registry, None) if sc.name == "catalog" && sc.actions.contains(&Action::All) => {
                    if self.catalog(s) {
                        [Action::All].into_iter().collect()
                    } else {
                        Actions::new()
                    }
                }
                _ => Actions::new(),
            };
            if !granted.is_empty() {
                out.push(Scope {
                    resource: sc.resource.clone(),
                    class: sc.class.clone(),
                    name: sc.name.clone(),
                    actions: granted,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subj(a: &str) -> Subject {
        Subject {
            account: a.into(),
            groups: vec!["team".into()],
            ip: "10.1.2.3".parse().unwrap(),
            anonymous: false,
            limit: None,
            gitee: None,
            oidc: None,
        }
    }

    fn rule(accounts: Option<&[&str]>, repo: &str, actions: &[Action]) -> Rule {
        Rule::Static(StaticRule {
            accounts: accounts.map(|a| a.iter().map(|s| s.to_string()).collect()),
            groups: None,
            repository: Some(Glob::new(repo)),
            networks: None,
            actions: actions.iter().copied().collect(),
            catalog: false,
            oidc: None,
            claims: vec![],
        })
    }

    fn ci(provider: &str, claims: &[(&str, &str)]) -> Subject {
        let l = super::super::oidc::OidcLogin {
            provider: provider.into(),
            subject: "s".into(),
            account: format!("{provider}:team/app"),
            claims: claims.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            expires: u64::MAX,
            matched: String::new(),
        };
        Subject {
            oidc: Some(std::sync::Arc::new(l)),
            ..subj(&format!("{provider}:team/app"))
        }
    }

    #[test]
    fn oidc_rules_match_the_provider_and_whole_claims() {
        let push = Rule::Static(StaticRule {
            oidc: Some("gitlab".into()),
            claims: vec![
                ("project_path".into(), Glob::new("team/*")),
                ("ref".into(), Glob::new("main")),
            ],
            ..match rule(None, "team/*", &[Action::Pull, Action::Push]) {
                Rule::Static(r) => r,
                _ => unreachable!(),
            }
        });
        let pull = Rule::Static(StaticRule {
            oidc: Some("gitlab".into()),
            ..match rule(None, "team/*", &[Action::Pull]) {
                Rule::Static(r) => r,
                _ => unreachable!(),
            }
        });
        let p = Policy {
            rules: vec![push, pull],
            anonymous_pull: false,
        };
        let both: Actions = [Action::Pull, Action::Push].into_iter().collect();
        let main = ci("gitlab", &[("project_path", "team/app"), ("ref", "main")]);
        assert_eq!(p.actions(&main, "team/app"), both);
        // a claim matches whole: "main" is no glob for "maintenance"
        let other_ref = ci("gitlab", &[("project_path", "team/app"), ("ref", "maintenance")]);
        assert_eq!(p.actions(&other_ref, "team/app"), [Action::Pull].into_iter().collect());
        let missing = ci("gitlab", &[("project_path", "team/app")]);
        assert_eq!(p.actions(&missing, "team/app"), [Action::Pull].into_iter().collect());
        // another provider's job, or a user who is not a CI job, gets nothing from these rules
        assert!(p
            .actions(
                &ci("github", &[("project_path", "team/app"), ("ref", "main")]),
                "team/app"
            )
            .is_empty());
        assert!(p.actions(&subj("gitlab:team/app"), "team/app").is_empty());
    }

    #[test]
    fn globs() {
        let g = Glob::new("${account}/*");
        assert!(g.matches("alice/app", "Alice"));
        assert!(g.matches("alice/a/b", "alice"));
        assert!(!g.matches("bob/app", "alice"));
        // an account full of glob characters matches only itself
        assert!(!g.matches("xyz/app", "*"));
        assert!(!g.matches("xyz/app", "???"));
        assert!(Glob::new("*").matches("anything/at/all", "x"));
        assert!(Glob::new("lib/?ed").matches("lib/red", "x"));
        assert!(!Glob::new("lib/?ed").matches("lib/bred", "x"));
        assert!(Glob::new("a*b*c").matches("axxbyyc", ""));
        assert!(!Glob::new("a*b*c").matches("axxbyy", ""));
    }

    #[test]
    fn gitee_rule_grants_what_gitee_reported_and_falls_through_otherwise() {
        let p = Policy {
            rules: vec![
                Rule::GiteeRepoPermission,
                rule(None, "${account}/*", &[Action::Pull, Action::Push]),
            ],
            anonymous_pull: false,
        };
        assert!(p.uses_gitee());
        let mut s = subj("alice");
        let mut m = std::collections::HashMap::new();
        m.insert("team/app".to_owned(), [Action::Pull].into_iter().collect::<Actions>());
        m.insert("team/none".to_owned(), Actions::new());
        s.gitee = Some(std::sync::Arc::new(m));
        assert_eq!(p.actions(&s, "team/app"), [Action::Pull].into_iter().collect());
        assert!(p.actions(&s, "team/none").is_empty());
        // not looked up (or Gitee said none): later rules still apply
        assert!(p.actions(&s, "alice/x").contains(&Action::Push));
        // no Gitee answers at all: the rule fits no one
        assert!(p.actions(&subj("bob"), "team/app").is_empty());
    }

    #[test]
    fn first_match_decides_default_deny() {
        let p = Policy {
            rules: vec![
                rule(Some(&["admin"]), "*", &[Action::All]),
                rule(None, "secret/*", &[]),
                rule(None, "${account}/*", &[Action::Pull, Action::Push]),
                rule(None, "public/*", &[Action::Pull]),
                rule(Some(&["anonymous"]), "public/*", &[Action::Pull, Action::Push]),
            ],
            anonymous_pull: true,
        };
        assert_eq!(p.actions(&subj("admin"), "secret/x").len(), 3);
        assert!(p.actions(&subj("alice"), "secret/x").is_empty());
        assert_eq!(p.actions(&subj("alice"), "alice/x").len(), 2);
        assert_eq!(
            p.actions(&subj("alice"), "public/x"),
            [Action::Pull].into_iter().collect()
        );
        assert!(p.actions(&subj("alice"), "bob/x").is_empty());
        let anon = Subject::anonymous("127.0.0.1".parse().unwrap());
        // anonymous never gets more than pull, and only with anonymous_pull
        assert_eq!(p.actions(&anon, "public/x"), [Action::Pull].into_iter().collect());
        let p2 = Policy {
            anonymous_pull: false,
            ..p.clone()
        };
        assert!(p2.actions(&anon, "public/x").is_empty());
    }

    #[test]
    fn grant_is_intersection() {
        let p = Policy {
            rules: vec![rule(None, "${account}/*", &[Action::Pull, Action::Push])],
            anonymous_pull: false,
        };
        let req = Scope::parse_list(["repository:alice/x:pull,push,delete repository:bob/x:pull registry:catalog:*"]);
        let g = p.grant(&subj("alice"), &req);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].to_string(), "repository:alice/x:pull,push");
    }

    #[test]
    fn networks_and_groups() {
        let p = Policy {
            rules: vec![Rule::Static(StaticRule {
                accounts: None,
                groups: Some(vec!["team".into()]),
                repository: Some(Glob::new("*")),
                networks: Some(vec!["10.0.0.0/8".parse().unwrap()]),
                actions: [Action::Pull].into_iter().collect(),
                catalog: true,
                oidc: None,
                claims: vec![],
            })],
            anonymous_pull: false,
        };
        assert_eq!(p.actions(&subj("a"), "x").len(), 1);
        assert!(p.catalog(&subj("a")));
        let mut outside = subj("a");
        outside.ip = "192.0.2.1".parse().unwrap();
        assert!(p.actions(&outside, "x").is_empty());
        let mut nogroup = subj("a");
        nogroup.groups.clear();
        assert!(p.actions(&nogroup, "x").is_empty());
    }
}
