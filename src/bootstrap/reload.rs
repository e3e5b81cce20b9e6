//! SIGHUP: re-reads the config file. What can change live (access rules, anonymous pull,
//! network lists, webhook endpoints) is swapped in; what cannot is named in a log line saying it
//! needs a restart. A broken file is refused with a log line and the running config stays. Files
//! the config names (htpasswd, TLS) are reloaded on their own when they change.

use super::Failure;
use crate::config::{self, Config};
use crate::gateway::App;
use std::path::PathBuf;
use std::sync::Arc;

/// A part of the running server a config section feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Access rules and anonymous pull: swapped live.
    Policy,
    /// Allowed networks, trusted proxies, the client address header: swapped live.
    Network,
    /// Webhook endpoints: the new ones are started, the old ones stopped.
    Notifications,
    Listen,
    Storage,
    Tls,
    /// Everything under `auth` other than the access rules.
    Auth,
    Upstream,
    /// `policy:` and `scanner:` (trusted images).
    Trust,
    LimitsAndGc,
    Replication,
    Mirror,
    Redis,
    Log,
}

impl Part {
    pub fn live(self) -> bool {
        matches!(self, Part::Policy | Part::Network | Part::Notifications)
    }

    pub fn name(self) -> &'static str {
        match self {
            Part::Policy => "access rules",
            Part::Network => "network",
            Part::Notifications => "notifications",
            Part::Listen => "listen/public_url",
            Part::Storage => "storage",
            Part::Tls => "tls",
            Part::Auth => "auth (other than access rules)",
            Part::Upstream => "upstream",
            Part::Trust => "policy/scanner",
            Part::LimitsAndGc => "limits/gc",
            Part::Replication => "replication",
            Part::Mirror => "mirror",
            Part::Redis => "redis",
            Part::Log => "log",
        }
    }
}

/// The parts whose config differs between `old` and `new`, compared as typed values.
pub fn changed(old: &Config, new: &Config) -> Vec<Part> {
    let mut out = Vec::new();
    let mut note = |differs: bool, p: Part| {
        if differs {
            out.push(p);
        }
    };
    note(
        old.access != new.access || old.auth.anonymous_pull != new.auth.anonymous_pull,
        Part::Policy,
    );
    note(old.network != new.network, Part::Network);
    note(old.notifications != new.notifications, Part::Notifications);
    note(
        (old.listen, &old.public_url) != (new.listen, &new.public_url),
        Part::Listen,
    );
    note(
        old.storage != new.storage || old.data_dir != new.data_dir,
        Part::Storage,
    );
    note(old.log != new.log, Part::Log);
    note(old.tls != new.tls, Part::Tls);
    note(auth_fixed(&old.auth) != auth_fixed(&new.auth), Part::Auth);
    note(
        (&old.upstream, old.upstream_h2c) != (&new.upstream, new.upstream_h2c),
        Part::Upstream,
    );
    note((&old.policy, &old.scanner) != (&new.policy, &new.scanner), Part::Trust);
    note(
        (&old.limits, &old.gc, &old.retention) != (&new.limits, &new.gc, &new.retention),
        Part::LimitsAndGc,
    );
    note(old.replication != new.replication, Part::Replication);
    note(old.mirror != new.mirror, Part::Mirror);
    note(old.redis != new.redis, Part::Redis);
    out
}

/// Everything under `auth` but the access rules: compared as a whole by value.
fn auth_fixed(a: &crate::config::AuthConfig) -> crate::config::AuthConfig {
    crate::config::AuthConfig {
        anonymous_pull: false,
        ..a.clone()
    }
}

#[cfg(unix)]
pub fn watch(app: Arc<App>, path: Option<PathBuf>, env: config::Env, cfg: Config, spool: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; config reload disabled");
        return;
    };
    tokio::spawn(async move {
        let mut current = cfg;
        while hup.recv().await.is_some() {
            let origin = path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            let new = match super::load_valid(path.clone(), &env) {
                Ok(c) => c,
                Err(Failure::Config(errs)) => {
                    tracing::error!(config = %origin, problems = %errs.join("; "), "config reload refused; keeping the running config");
                    continue;
                }
                Err(Failure::Other(e)) => {
                    tracing::error!(config = %origin, problems = %e, "config reload refused; keeping the running config");
                    continue;
                }
            };
            // the policy and network lists are rebuilt on every reload (cheap, and what a
            // file an htpasswd or Gitee rule names may have changed is read again)
            app.tokens.policy.set(super::build_policy(&new));
            app.net.set(crate::gateway::NetLists::from_config(&new.network));
            let parts = changed(&current, &new);
            if parts.contains(&Part::Notifications) {
                swap_notifier(&app, &new, &spool);
            }
            let restart: Vec<&str> = parts.iter().filter(|p| !p.live()).map(|p| p.name()).collect();
            if restart.is_empty() {
                tracing::info!(config = %origin, "config reloaded");
            } else {
                tracing::warn!(config = %origin, needs_restart = %restart.join(", "), "config reloaded; some changes take effect only after a restart");
            }
            current = new;
        }
    });
}

#[cfg(unix)]
fn swap_notifier(app: &App, new: &Config, spool: &std::path::Path) {
    let next = if new.notifications.is_empty() {
        Ok(None)
    } else {
        crate::notify::Notifier::start(&new.notifications, spool, &app.public_url, app.metrics.clone()).map(Some)
    };
    match next {
        Ok(n) => {
            if let Some(old) = app.notifier.get().as_ref() {
                old.stop();
            }
            app.notifier.set(n);
            tracing::info!(endpoints = new.notifications.len(), "webhook endpoints reloaded");
        }
        Err(e) => tracing::error!(error = %e, "cannot start the new webhook endpoints; keeping the old ones"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(yaml: &str) -> Config {
        crate::config::parse(yaml, "t", &vec![]).unwrap()
    }

    #[test]
    fn live_parts_and_restart_parts_are_told_apart() {
        let base = cfg("listen: 127.0.0.1:5000\n");
        assert!(changed(&base, &base.clone()).is_empty());
        let rules = cfg("listen: 127.0.0.1:5000\naccess:\n  - { account: bob, repository: \"*\", actions: [pull] }\n");
        assert_eq!(changed(&base, &rules), vec![Part::Policy]);
        assert!(changed(&base, &rules).iter().all(|p| p.live()));
        let moved = cfg("listen: 127.0.0.1:5001\n");
        assert_eq!(changed(&base, &moved), vec![Part::Listen]);
        assert!(!Part::Listen.live());
        let gc = cfg("listen: 127.0.0.1:5000\ngc: { grace: 2h }\n");
        assert_eq!(changed(&base, &gc), vec![Part::LimitsAndGc]);
    }
}
