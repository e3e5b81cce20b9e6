//! The command line: `serve`, `check-config`, `gc`, `scrub`, `healthcheck`, `robot`,
//! `replicate`, `import-config`. Every failure ends in one human sentence and exit code 2 (bad
//! configuration or arguments) or 1 (anything else); never a panic. Turning a config into running
//! parts is [`crate::bootstrap`]'s job; this module parses arguments and prints.

mod import;
mod replicate;
mod robot;

use crate::bootstrap::{self, config_path, init_logging, load_valid, open_storage, runtime, Failure};
use crate::config::{self, Config};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "regate",
    version,
    about = "A single-binary, Gitee-signed-in Docker/OCI registry and token gateway"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway (and the embedded registry unless `upstream` is set).
    Serve {
        /// Config file; defaults to $REGATE_CONFIG, then ./regate.yaml if present, else built-in defaults.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Log format: text or json (overrides log.format).
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Validate a config file and every file it names; exit 0 when valid, 2 when not.
    CheckConfig {
        /// Check keys, types and values only, not whether named files exist.
        #[arg(long)]
        schema_only: bool,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Garbage-collect blobs no manifest references (and, with --delete-untagged, untagged manifests).
    Gc {
        /// Report what would be freed without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Also delete manifests that no tag, index or living subject references.
        #[arg(long)]
        delete_untagged: bool,
        /// Only delete what is older than this (e.g. 1h, 30m, 0s).
        #[arg(long, default_value = "1h")]
        grace: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Probe a running regate (for container health checks): exit 0 when /healthz answers 200.
    /// By default the address comes from the same config `serve` reads (listen, tls).
    Healthcheck {
        /// URL of the health endpoint; default from the config's listen address and tls.
        #[arg(long)]
        url: Option<String>,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Convert a distribution (registry:2) config.yml into a regate config, printed to stdout.
    ImportConfig {
        /// The distribution config.yml.
        file: PathBuf,
    },
    /// Re-hash every stored blob and report any whose bytes no longer match their digest
    /// (exit 1 when one does).
    Scrub {
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Manage robot accounts (CI credentials limited to some repositories).
    Robot {
        #[command(subcommand)]
        cmd: RobotCmd,
    },
    /// Replication to and from other registries (`replication:` rules).
    Replicate {
        #[command(subcommand)]
        cmd: replicate::ReplicateCmd,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum RobotCmd {
    /// Create robot$NAME and print its secret once.
    Add {
        /// The robot's name; it signs in as robot$NAME.
        name: String,
        /// Repository pattern the robot may use (repeatable; `*` and `?` globs).
        #[arg(long = "repo", required = true)]
        repos: Vec<String>,
        /// Comma-separated actions: pull, push, delete, *.
        #[arg(long, default_value = "pull")]
        actions: String,
        /// Lifetime, e.g. 30d, 12h; 0 for none.
        #[arg(long, default_value = "90d")]
        expires: String,
        /// Free text shown by `robot list`.
        #[arg(long, default_value = "")]
        description: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// List robot accounts.
    List {
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Revoke robot$NAME (every secret it has).
    Remove {
        /// The robot's name (without robot$).
        name: String,
        /// Config file (as for `serve`): defaults to $REGATE_CONFIG, then ./regate.yaml.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    let env = config::process_env();
    let result = match cli.cmd {
        Cmd::CheckConfig { schema_only, config } => check_config(config.as_deref(), schema_only, &env),
        Cmd::Serve { config, log_format } => bootstrap::serve(config, log_format, env),
        Cmd::Robot { cmd } => robot::run(cmd, env),
        Cmd::Replicate { cmd } => replicate::run(cmd, env),
        Cmd::ImportConfig { file } => import_config(&file),
        Cmd::Healthcheck { url, config } => healthcheck(url, config, &env),
        Cmd::Scrub { config } => scrub(config, env),
        Cmd::Gc {
            dry_run,
            delete_untagged,
            grace,
            config,
        } => gc(config, dry_run, delete_untagged, &grace, env),
    };
    match result {
        Ok(()) => 0,
        Err(Failure::Config(lines)) => {
            for l in lines {
                eprintln!("regate: {l}");
            }
            2
        }
        Err(Failure::Other(m)) => {
            eprintln!("regate: {m}");
            1
        }
    }
}

fn check_config(path: Option<&Path>, schema_only: bool, env: &config::Env) -> Result<(), Failure> {
    let path = config_path(path.map(Path::to_path_buf), env)
        .ok_or_else(|| Failure::Config(vec!["check-config needs --config FILE".into()]))?;
    let cfg = config::load_with(Some(&path), env, !schema_only).map_err(Failure::Config)?;
    let problems = bootstrap::check(&cfg, !schema_only);
    if !problems.is_empty() {
        return Err(Failure::Config(
            problems
                .into_iter()
                .map(|p| format!("{}: {p}", path.display()))
                .collect(),
        ));
    }
    println!("{}: ok", path.display());
    Ok(())
}

/// `30s`, `15m`, `1h`, `2d`, sums like `1h30m`, or plain seconds (as in the config).
pub fn parse_duration(s: &str) -> Option<Duration> {
    config::parse_duration(s)
}

fn gc(
    path: Option<PathBuf>,
    dry_run: bool,
    delete_untagged: bool,
    grace: &str,
    env: config::Env,
) -> Result<(), Failure> {
    let grace = parse_duration(grace)
        .ok_or_else(|| Failure::Config(vec![format!("--grace {grace:?} is not a duration like 1h, 30m or 0s")]))?;
    let cfg = load_valid(path, &env)?;
    init_logging(Some("text"), None)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = open_storage(&cfg)?;
        let report = crate::gc::run(
            &store,
            crate::gc::Options {
                dry_run,
                delete_untagged,
                grace,
                upload_max_age: Duration::from_secs(cfg.gc.upload_max_age),
                retention: cfg.retention.clone(),
            },
        )
        .await
        .map_err(|e| Failure::Other(format!("garbage collection failed: {e}")))?;
        print!("{report}");
        Ok(())
    })
}

fn scrub(path: Option<PathBuf>, env: config::Env) -> Result<(), Failure> {
    let cfg = load_valid(path, &env)?;
    let rt = runtime()?;
    rt.block_on(async {
        let store = open_storage(&cfg)?;
        let (bad, n) = crate::gc::scrub(&store)
            .await
            .map_err(|e| Failure::Other(format!("scrub failed: {e}")))?;
        for c in &bad {
            match &c.actual {
                Some(a) => println!("corrupt blob {} (content hashes to {a})", c.digest),
                None => println!("unreadable blob {}", c.digest),
            }
        }
        println!("scrub: {n} blobs checked, {} corrupt", bad.len());
        if bad.is_empty() {
            Ok(())
        } else {
            Err(Failure::Other(format!("{} blobs do not match their digest", bad.len())))
        }
    })
}

/// The health URL of the server the config describes: its listen port on loopback when it
/// listens on every interface, https when it has tls.
fn health_url(cfg: &Config) -> Result<String, Failure> {
    let addr = cfg.listen;
    if addr.port() == 0 {
        return Err(Failure::Config(vec![
            "healthcheck: listen has port 0 (picked at start); give --url".into(),
        ]));
    }
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v) if v.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(v) if v.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    Ok(format!(
        "{scheme}://{}/healthz",
        std::net::SocketAddr::new(ip, addr.port())
    ))
}

fn healthcheck(url: Option<String>, path: Option<PathBuf>, env: &config::Env) -> Result<(), Failure> {
    let url = match url {
        Some(u) => u,
        None => {
            // only listen and tls are needed: files the config names are not read
            let cfg = config::load_with(config_path(path, env).as_deref(), env, false).map_err(Failure::Config)?;
            health_url(&cfg)?
        }
    };
    let url = url.as_str();
    let rt = runtime()?;
    rt.block_on(async {
        // a liveness probe of our own process: the certificate may be one the probe cannot verify
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .danger_accept_invalid_certs(true)
            .build()
            .map_err(|e| Failure::Other(e.to_string()))?;
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(Failure::Other(format!("{url} answered {}", r.status()))),
            Err(e) => Err(Failure::Other(format!("{url} is not answering: {}", e.without_url()))),
        }
    })
}

fn import_config(file: &Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Config(vec![format!("cannot read {}: {e}", file.display())]))?;
    let (yaml, warnings) =
        import::convert(&text).map_err(|e| Failure::Config(vec![format!("{}: {e}", file.display())]))?;
    println!("# converted from {} by regate import-config", file.display());
    print!("{yaml}");
    for w in warnings {
        eprintln!("regate: warning: {w}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("1y"), None);
    }
}
