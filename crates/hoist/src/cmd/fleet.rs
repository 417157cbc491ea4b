//! `hoist lock`: the app's deploy lease on every host; and the one agent a one-host
//! command (backups, restores) talks to. Deploys, rollbacks and plans are in `deploy.rs`.

use hyper::Method;

use hoist_client::Client;
use hoist_config::LoadedConfig;
use hoist_protocol::fleet::Lease;

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{Exit, Reported};
use crate::output;

/// The agent a one-host command (backups, restores) talks to: this machine's, or for a
/// fleet the named host's over SSH (the first host of the file when none is named).
pub fn agent_for(loaded: &LoadedConfig, host: Option<&str>) -> anyhow::Result<Client> {
    if !common::is_fleet(Some(loaded)) {
        return Ok(common::client());
    }
    let name = match host {
        Some(h) => h.to_string(),
        None => match loaded.spec.hosts.first() {
            Some(h) => h.name.clone(),
            None => anyhow::bail!("the app file has no host"),
        },
    };
    if loaded.spec.host(&name).is_some_and(|h| h.files.is_some()) {
        return Err(common::usage(
            anyhow::anyhow!("`{name}` is a files host (`mode = \"files\"`): no agent runs there"),
            "pick an agent host with --host",
        ));
    }
    match common::all_targets(Some(loaded), hoist_fleet::HostKeys::Strict)?
        .into_iter()
        .find(|t| t.name == name)
    {
        Some(t) => Ok(t.client),
        None => Err(common::usage(
            anyhow::anyhow!("the app file has no host `{name}`"),
            "`hoist config` lists the hosts",
        )),
    }
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: common::HostArgs,
    #[command(subcommand)]
    pub action: LockAction,
}

#[derive(Debug, clap::Subcommand)]
pub enum LockAction {
    /// Show the app's deploy lease on every host
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Drop the app's deploy lease on every host, whoever holds it
    Release {
        #[arg(long)]
        json: bool,
    },
}

/// `hoist lock status|release`: the app's deploy lease, host by host.
pub fn run_lock(args: LockArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let targets = common::targets(Some(&loaded), &args.hosts)?;
    let app = loaded.spec.app.clone();
    let (release, json) = match args.action {
        LockAction::Status { json } => (false, json),
        LockAction::Release { json } => (true, json),
    };
    let answers = common::block_on(futures_util::future::join_all(targets.iter().map(|t| {
        let app = app.clone();
        async move {
            let r: Result<Option<Lease>, String> = if release {
                match t
                    .client
                    .call::<(), Lease>(Method::DELETE, &format!("/v1/leases/{app}"), None)
                    .await
                {
                    Ok(l) => Ok(Some(l)),
                    Err(hoist_client::ClientError::Api(_, s))
                        if s == hyper::StatusCode::NOT_FOUND =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e.to_string()),
                }
            } else {
                t.client
                    .get::<Vec<Lease>>("/v1/leases")
                    .await
                    .map(|all| all.into_iter().find(|l| l.app == app))
                    .map_err(|e| e.to_string())
            };
            (t.name.clone(), r)
        }
    })));
    let now = chrono::Utc::now().timestamp_millis();
    let mut failed = 0;
    let mut rows = Vec::new();
    let mut docs = Vec::new();
    for (host, r) in answers {
        match r {
            Ok(lease) => {
                docs.push(serde_json::json!({"host": host, "lease": lease}));
                let row = match &lease {
                    None => vec![host, "free".into(), String::new(), String::new()],
                    Some(l) => vec![
                        host,
                        match (release, l.live) {
                            (true, _) => "released".into(),
                            (false, true) => "held".into(),
                            (false, false) => "expired".into(),
                        },
                        l.holder.clone(),
                        format!(
                            "since {}s, expires in {}s",
                            (now - l.started_at_ms) / 1000,
                            ((l.expires_at_ms - now) / 1000).max(0)
                        ),
                    ],
                };
                rows.push(row);
            }
            Err(e) => {
                failed += 1;
                docs.push(serde_json::json!({"host": host, "error": e}));
                rows.push(vec![host, "UNREACHABLE".into(), String::new(), e]);
            }
        }
    }
    if json {
        output::json(&docs)?;
    } else {
        output::table(&["HOST", "LEASE", "HOLDER", "WHEN"], &rows)?;
    }
    match failed {
        0 => Ok(()),
        n if n == rows.len() => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}
