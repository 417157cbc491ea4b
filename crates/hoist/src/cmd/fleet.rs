//! The fleet side of `hoist deploy`, `hoist rollback` and `hoist lock`: when the app file
//! names hosts with an `ssh` address, each host's agent is reached through OpenSSH and
//! `hoist-fleet` drives the rollout; this file only builds the targets and renders.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;

use hoist_client::Client;
use hoist_config::LoadedConfig;
use hoist_core::spec::AppSpec;
use hoist_fleet::rollout::{Event, Fleet, HostState, Report, Target};
use hoist_fleet::{HostKeys, Remote};
use hoist_protocol::agent::Progress;
use hoist_protocol::fleet::Lease;

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, with_hint, Exit, Reported};
use crate::output;

/// How long a deploy lease lives without a heartbeat; `HOIST_LEASE_TTL_MS` shortens it
/// (tests of a killed deploy).
const LEASE_TTL: Duration = Duration::from_secs(60);

/// Whether the app file describes a fleet reached over SSH.
pub fn is_fleet(spec: &AppSpec) -> bool {
    spec.hosts.iter().any(|h| h.ssh.is_some())
}

/// One target per host of the app file: over ssh, or this machine's agent for a host
/// named `local` without an address.
pub fn targets(loaded: &LoadedConfig, keys: HostKeys) -> anyhow::Result<Vec<Target>> {
    let spec = &loaded.spec;
    let base = loaded
        .files
        .first()
        .and_then(|f| f.parent())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let control = hoist_fleet::ssh::default_control_dir();
    let local = hoist_core::spec::defaults::LOCAL_HOST;
    spec.hosts
        .iter()
        .map(|h| {
            if h.ssh.is_none() && h.name == local {
                return Ok(Target {
                    name: h.name.clone(),
                    client: common::client(),
                    remote: None,
                });
            }
            let remote = Remote::new(h, &spec.ssh, &base, &control, keys).map_err(|e| {
                let hint = e.hint();
                let err = with_exit(Exit::Usage, anyhow::Error::new(e));
                match hint {
                    Some(h) => with_hint(err, h),
                    None => err,
                }
            })?;
            Ok(Target {
                name: h.name.clone(),
                client: remote.client(),
                remote: Some(Arc::new(remote)),
            })
        })
        .collect()
}

/// The agent a one-host command (backups, restores) talks to: this machine's, or for a
/// fleet the named host's over SSH (the first host of the file when none is named).
pub fn agent_for(loaded: &LoadedConfig, host: Option<&str>) -> anyhow::Result<Client> {
    if !is_fleet(&loaded.spec) {
        return Ok(common::client());
    }
    let name = match host {
        Some(h) => h.to_string(),
        None => match loaded.spec.hosts.first() {
            Some(h) => h.name.clone(),
            None => anyhow::bail!("the app file has no host"),
        },
    };
    match targets(loaded, HostKeys::Strict)?
        .into_iter()
        .find(|t| t.name == name)
    {
        Some(t) => Ok(t.client),
        None => Err(with_hint(
            with_exit(
                Exit::Usage,
                anyhow::anyhow!("the app file has no host `{name}`"),
            ),
            "`hoist config` lists the hosts",
        )),
    }
}

fn lease_ttl() -> Duration {
    std::env::var("HOIST_LEASE_TTL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(LEASE_TTL)
}

/// Runs `work` on a fleet whose events are rendered as they come.
fn drive<F, Fut>(loaded: &LoadedConfig, actor: String, json: bool, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Fleet) -> Fut,
    Fut: std::future::Future<Output = Result<Report, hoist_fleet::rollout::FleetError>>,
{
    let targets = targets(loaded, HostKeys::Strict)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet = Fleet {
        targets,
        actor,
        events: tx,
        lease_ttl: lease_ttl(),
    };
    let started = std::time::Instant::now();
    let report = common::block_on(async {
        let render = async {
            while let Some(e) = rx.recv().await {
                render(&e, json, started);
            }
        };
        let (report, ()) = tokio::join!(work(fleet), render);
        report
    });
    let report = report.map_err(|e| with_exit(Exit::Failed, anyhow::Error::new(e)))?;
    summary(&report, json)?;
    match report.exit_code() {
        0 => Ok(()),
        1 => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}

pub fn deploy(
    loaded: &LoadedConfig,
    artifact: &Path,
    actor: String,
    json: bool,
) -> anyhow::Result<()> {
    let spec = loaded.spec.clone();
    let artifact = artifact.to_path_buf();
    drive(loaded, actor, json, |fleet| async move {
        fleet.deploy(&spec, &artifact).await
    })
}

pub fn rollback(
    loaded: &LoadedConfig,
    release: Option<String>,
    actor: String,
    json: bool,
) -> anyhow::Result<()> {
    let spec = loaded.spec.clone();
    drive(loaded, actor, json, |fleet| async move {
        fleet.rollback(&spec, release).await
    })
}

fn render(e: &Event, json: bool, started: std::time::Instant) {
    if json {
        // Each event carries when it happened, for scripts that time the phases.
        let mut v = serde_json::to_value(e).unwrap_or_default();
        v["elapsed_ms"] = serde_json::Value::from(started.elapsed().as_millis() as u64);
        let _ = output::json(&v);
        return;
    }
    match e {
        Event::Reachable { .. } => {}
        Event::Unreachable { host, error } => {
            output::warn(&format!("`{host}` is unreachable and is left out: {error}"))
        }
        Event::Leased { hosts, .. } => {
            output::status("Locked", &format!("the deploy lease on {hosts} host(s)"))
        }
        Event::Uploaded {
            host,
            blobs,
            bytes,
            ms,
            ..
        } => output::status(
            "Uploaded",
            &format!(
                "`{host}`: {blobs} blob(s), {} in {:.2}s",
                common::bytes(*bytes),
                *ms as f64 / 1000.0
            ),
        ),
        Event::Batch { index, hosts } => {
            output::status("Batch", &format!("{index}: {}", hosts.join(", ")))
        }
        Event::Progress { host, progress } => match progress {
            Progress::Step {
                step,
                phase,
                message,
                ..
            } => match phase.as_str() {
                "begin" => output::status(host, step),
                "failed" => output::error(&format!(
                    "`{host}`: {step} failed: {}",
                    message.as_deref().unwrap_or_default()
                )),
                _ => {}
            },
            Progress::Output { source, line } => {
                output::diagnostic(&format!("  {host} {source} | {line}"))
            }
            Progress::Done(_) => {}
        },
        Event::Finished { .. } => {}
        Event::RollingBack { host } => output::status("Rolling back", &format!("`{host}`")),
        Event::SingletonStopped {
            host,
            service,
            moves_to,
        } => output::status(
            "Moved",
            &format!("singleton `{service}` stopped on `{host}`; `{moves_to}` runs it now"),
        ),
    }
}

fn describe(state: &HostState) -> (String, String) {
    match state {
        HostState::Deployed { release } => ("deployed".into(), release.clone()),
        HostState::Unchanged { release } => ("unchanged (already current)".into(), release.clone()),
        HostState::Failed { reason } => ("failed (old release serves)".into(), reason.clone()),
        HostState::RolledBack { release } => {
            ("rolled back".into(), release.clone().unwrap_or_default())
        }
        HostState::RollbackFailed { reason } => (
            "ROLLBACK FAILED (new release serves)".into(),
            reason.clone(),
        ),
        HostState::Unreachable { error } => ("unreachable (untouched)".into(), error.clone()),
        HostState::Lost { error } => (
            "LOST mid-deploy (old or new; check `hoist status`)".into(),
            error.clone(),
        ),
        HostState::NotStarted => ("not started (old release serves)".into(), String::new()),
    }
}

fn summary(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(&serde_json::json!({"event": "done", "report": report}))?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = report
        .hosts
        .iter()
        .map(|h| {
            let (what, detail) = describe(&h.state);
            vec![
                h.host.clone(),
                what,
                format!("{:.2}s", h.ms as f64 / 1000.0),
                detail,
            ]
        })
        .collect();
    output::table(&["HOST", "OUTCOME", "TIME", "DETAIL"], &rows)?;
    let line = format!(
        "`{}` release `{}` on {} host(s) in {:.2}s",
        report.app,
        report.release,
        report.hosts.len(),
        report.duration_ms as f64 / 1000.0
    );
    match report.result.as_str() {
        "succeeded" => output::status("Finished", &line),
        "failed" => output::error(&format!(
            "{line}: failed; every host serves its old release"
        )),
        _ => output::error(&format!(
            "{line}: PARTIAL — the hosts above that are not `deployed` need attention"
        )),
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
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
    let targets = if is_fleet(&loaded.spec) {
        targets(&loaded, HostKeys::Strict)?
    } else {
        vec![Target {
            name: hoist_core::spec::defaults::LOCAL_HOST.into(),
            client: common::client(),
            remote: None,
        }]
    };
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
