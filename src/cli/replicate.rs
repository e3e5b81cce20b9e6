//! `regate replicate status` and `regate replicate run NAME`.

use crate::bootstrap::Failure;
use crate::config;
use crate::registry::Registry;
use clap::Subcommand;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum ReplicateCmd {
    /// Each rule's queue depth, last success, last error and lag (what the server last recorded).
    Status {
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// One full pass of rule NAME now: a push rule copies every tag the remote lacks or has
    /// otherwise; a pull rule copies the remote's new and changed tags.
    Run {
        /// The rule's name in `replication:`.
        name: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

fn ago(t: Option<u64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let d = crate::util::now_secs().saturating_sub(t);
            format!("{} ({d}s ago)", crate::util::rfc3339(t))
        }
    }
}

pub fn run(cmd: ReplicateCmd, env: config::Env) -> Result<(), Failure> {
    let path = match &cmd {
        ReplicateCmd::Status { config } | ReplicateCmd::Run { config, .. } => config.clone(),
    };
    let cfg = crate::bootstrap::load_valid(path, &env)?;
    if cfg.replication.is_empty() {
        return Err(Failure::Config(vec!["the config has no replication: rules".into()]));
    }
    let spool = cfg.data_dir().join(".regate-replicate");
    let rep = crate::replicate::Replicator::new(&cfg.replication, &spool).map_err(|m| Failure::Config(vec![m]))?;
    match cmd {
        ReplicateCmd::Status { .. } => {
            for r in rep.rules() {
                let s = r.status();
                println!("{} ({} {})", s.name, s.direction, s.url);
                println!("  queued:       {}", s.queued);
                println!("  last success: {}", ago(s.last_success));
                match (&s.last_error, s.last_error_at) {
                    (Some(e), at) => println!("  last error:   {} at {}", e, ago(at)),
                    _ => println!("  last error:   none"),
                }
                match s.lag_seconds {
                    Some(l) => println!("  lag:          {l}s"),
                    None => println!("  lag:          -"),
                }
                println!("  copied:       {}  failed: {}", s.copied, s.failed);
            }
            Ok(())
        }
        ReplicateCmd::Run { name, .. } => {
            let Some(rule) = rep.rules().iter().find(|r| r.name() == name).cloned() else {
                let known: Vec<&str> = rep.rules().iter().map(|r| r.name()).collect();
                return Err(Failure::Config(vec![format!(
                    "no replication rule {name:?} (rules: {})",
                    known.join(", ")
                )]));
            };
            let rt = crate::bootstrap::runtime()?;
            rt.block_on(async move {
                let store = Arc::new(crate::bootstrap::open_storage(&cfg)?);
                let public = cfg.public_url.clone().unwrap_or_default();
                let reg = Registry::new(store, crate::bootstrap::registry_options(&cfg, &public));
                match rule.full_pass(&reg).await {
                    Ok(n) => {
                        println!("replication {name}: {n} tag(s) copied");
                        Ok(())
                    }
                    Err(e) => Err(Failure::Other(format!("replication {name} failed: {e}"))),
                }
            })
        }
    }
}
