//! `regate robot add|list|remove`: robot accounts for CI, minted through the one credential mint.

use super::{parse_duration, RobotCmd};
use crate::auth::stored::{Kind, Mint, MintError, StoredCreds, ROBOT_PREFIX};
use crate::bootstrap::{load_valid, open_storage, registry_host, runtime, Failure};
use crate::config;
use crate::types::scope::Action;
use std::sync::Arc;

pub fn run(cmd: RobotCmd, env: config::Env) -> Result<(), Failure> {
    let cfg_path = match &cmd {
        RobotCmd::Add { config, .. } | RobotCmd::List { config } | RobotCmd::Remove { config, .. } => config.clone(),
    };
    let cfg = load_valid(cfg_path, &env)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let st = StoredCreds::new(Arc::new(open_storage(&cfg)?));
        let io = |e: std::io::Error| Failure::Other(format!("storage: {e}"));
        match cmd {
            RobotCmd::Add {
                name,
                repos,
                actions,
                expires,
                description,
                ..
            } => {
                let mut acts = Vec::new();
                for a in actions.split(',').map(str::trim).filter(|a| !a.is_empty()) {
                    acts.push(Action::parse(a).ok_or_else(|| {
                        Failure::Config(vec![format!("--actions: unknown action {a:?} (pull, push, delete, *)")])
                    })?);
                }
                let ttl = parse_duration(&expires).ok_or_else(|| {
                    Failure::Config(vec![format!("--expires {expires:?} is not a duration like 30d")])
                })?;
                let mint = Mint {
                    kind: Kind::Robot,
                    account: &name,
                    repositories: &repos,
                    actions: acts,
                    ttl: (!ttl.is_zero()).then_some(ttl),
                    description: &description,
                    parent: None,
                    gitee: false,
                };
                let (rec, secret) = match st.mint(mint, crate::util::now_secs()).await {
                    Ok(x) => x,
                    Err(MintError::Storage(e)) => return Err(io(e)),
                    Err(MintError::Name) => {
                        return Err(Failure::Config(vec![format!(
                            "robot name {name:?} may only use letters, digits, '-', '_' and '.'"
                        )]))
                    }
                    Err(e) => return Err(Failure::Config(vec![e.to_string()])),
                };
                let (account, exp) = (rec.account.clone(), rec.expires);
                println!("created {account} (id {})", rec.id);
                if exp != 0 {
                    println!("expires {}", crate::util::rfc3339(exp));
                }
                println!("secret (shown once): {secret}");
                println!(
                    "  echo '{secret}' | docker login {} -u '{account}' --password-stdin",
                    registry_host(&cfg)
                );
            }
            RobotCmd::List { .. } => {
                let robots: Vec<_> = st
                    .list()
                    .await
                    .map_err(io)?
                    .into_iter()
                    .filter(|r| r.kind == Kind::Robot)
                    .collect();
                if robots.is_empty() {
                    println!("no robot accounts (create one with: regate robot add NAME --repo PATTERN)");
                }
                for r in robots {
                    let grants: Vec<String> = r
                        .grants
                        .iter()
                        .map(|g| {
                            format!(
                                "{}:{}",
                                g.repository,
                                g.actions.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
                            )
                        })
                        .collect();
                    let exp = if r.expires == 0 {
                        "never".to_owned()
                    } else {
                        crate::util::rfc3339(r.expires)
                    };
                    println!("{}\t{}\texpires {}\t{}", r.account, r.id, exp, grants.join(" "));
                }
            }
            RobotCmd::Remove { name, .. } => {
                let account = format!("{ROBOT_PREFIX}{name}");
                let mut n = 0;
                for r in st
                    .list()
                    .await
                    .map_err(io)?
                    .into_iter()
                    .filter(|r| r.account == account)
                {
                    st.revoke(&r.id).await.map_err(io)?;
                    n += 1;
                }
                if n == 0 {
                    return Err(Failure::Other(format!("no robot named {name}")));
                }
                println!("removed {account} ({n} secret(s))");
            }
        }
        Ok(())
    })
}
