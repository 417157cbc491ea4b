//! `hoist deploy`, `hoist rollback` and `hoist plan`: one road for one host and many. The
//! app file's hosts (this machine's agent for `local`, the others over SSH) are driven by
//! `hoist-fleet`'s rollout: reach, lease, upload by content, batches, the report. This
//! file builds (or takes) the artifact and renders: a fleet as one line per host and a
//! summary table, a single host as its steps and one closing line. A local deploy with no
//! agent answering starts one in the background (the quickstart).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use hoist_config::LoadedConfig;
use hoist_fleet::hosts::each;
use hoist_fleet::rollout::{Event, Fleet, FleetError, HostState, Report};
use hoist_protocol::agent::{Changes, Outcome, Plan, PlanRequest, Progress};

use super::common;
use super::config::{load, ConfigArgs};
use super::files;
use crate::exit::{with_exit, Exit, Reported};
use crate::output;

/// How long a deploy lease lives without a heartbeat; `HOIST_LEASE_TTL_MS` shortens it
/// (tests of a killed deploy).
const LEASE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Deploy this prebuilt artifact instead of building one
    #[arg(long, value_name = "FILE")]
    pub artifact: Option<PathBuf>,
    /// One JSON object per line on stdout: every step, then the outcome
    #[arg(long)]
    pub json: bool,
    /// Show what the deploy would change, and change nothing
    #[arg(long)]
    pub plan: bool,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// The release to go back to [default: the previous one]
    pub release: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Across a migration: restore the backup taken before it, in the same operation
    #[arg(long, conflicts_with = "keep_data")]
    pub with_backup: bool,
    /// Across a migration: roll the code back only, on the migrated data (recorded)
    #[arg(long)]
    pub keep_data: bool,
}

pub fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
    if args.plan {
        return run_plan(args);
    }
    let loaded = load(&args.file)?;
    let artifact = artifact_of(&args)?;
    same_app(&artifact, &loaded.spec.app)?;
    let spec = loaded.spec.clone();
    let files = if files::any(Some(&loaded)) {
        hoist_artifact::verify(&artifact, &hoist_artifact::Limits::default())
            .with_context(|| format!("artifact refused: `{}`", artifact.display()))?;
        Some(files::deploy(&loaded, &artifact, args.json)?)
    } else {
        None
    };
    let agents = || {
        drive(&loaded, args.json, true, |fleet| async move {
            fleet.deploy(&spec, &artifact).await
        })
    };
    match files {
        None => agents(),
        Some(code) if !files::has_agent_hosts(&loaded) => files::finish(code),
        Some(code) => files::combine(code, agents()),
    }
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let spec = loaded.spec.clone();
    let release = args.release.clone();
    let files = if files::any(Some(&loaded)) {
        Some(files::rollback(&loaded, release.as_deref(), args.json)?)
    } else {
        None
    };
    let data = if args.with_backup {
        Some(hoist_protocol::agent::RollbackData::WithBackup)
    } else if args.keep_data {
        Some(hoist_protocol::agent::RollbackData::KeepData)
    } else {
        None
    };
    let agents = || {
        drive(&loaded, args.json, false, |fleet| async move {
            fleet.rollback(&spec, release, data).await
        })
    };
    match files {
        None => agents(),
        Some(code) if !files::has_agent_hosts(&loaded) => files::finish(code),
        Some(code) => files::combine(code, agents()),
    }
}

/// `hoist plan` (and `hoist deploy --plan`): the artifact's manifest and the app file
/// are compared with what each host holds and runs; nothing is uploaded or changed.
pub fn run_plan(args: DeployArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let fleet = common::is_fleet(Some(&loaded));
    if !fleet {
        local_host(&loaded.spec)?;
    }
    if files::any(Some(&loaded)) {
        let artifact = artifact_of(&args)?;
        let code = files::plan(&loaded, &artifact, args.json)?;
        if !files::has_agent_hosts(&loaded) {
            return files::finish(code);
        }
        let args = DeployArgs {
            artifact: Some(artifact),
            ..args
        };
        return files::combine(code, plan_agents(args, loaded));
    }
    plan_agents(args, loaded)
}

fn plan_agents(args: DeployArgs, loaded: LoadedConfig) -> anyhow::Result<()> {
    let fleet = common::is_fleet(Some(&loaded));
    let targets = common::agent_targets(Some(&loaded), &common::HostArgs::default())?;
    let artifact = artifact_of(&args)?;
    let manifest = hoist_artifact::read_manifest(&artifact, &hoist_artifact::Limits::default())
        .with_context(|| format!("cannot read `{}`", artifact.display()))?;
    let manifest = String::from_utf8_lossy(&manifest.to_json()).into_owned();
    // Every host is asked at once; each plans against what it holds and runs.
    let answers = common::block_on(each(&targets, |t| {
        let req = PlanRequest {
            spec: loaded.spec.clone(),
            manifest: manifest.clone(),
            host: t.name.clone(),
            client_time_ms: Some(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64),
            ),
        };
        let client = t.client.clone();
        async move {
            client
                .call::<_, Plan>(Method::POST, "/v1/plan", Some(&req))
                .await
        }
    }));
    let failed_checks = answers.iter().any(|a| {
        a.result
            .as_ref()
            .is_ok_and(|p| p.checks.iter().any(|c| !c.ok))
    });
    if args.json && fleet {
        let docs: Vec<serde_json::Value> = answers
            .iter()
            .map(|a| match &a.result {
                Ok(plan) => serde_json::json!({"host": a.host, "plan": plan}),
                Err(e) => serde_json::json!({"host": a.host, "error": e.message}),
            })
            .collect();
        output::json(&docs)?;
    } else {
        for a in &answers {
            let Ok(plan) = &a.result else { continue };
            if args.json {
                output::json(plan)?;
                continue;
            }
            if fleet {
                output::data(&format!("── host `{}`", a.host))?;
            }
            render_plan(plan)?;
        }
    }
    common::finish(answers, fleet)?;
    if failed_checks {
        return Err(Reported(Exit::Failed).into());
    }
    Ok(())
}

fn render_plan(plan: &Plan) -> anyhow::Result<()> {
    output::data(&format!(
        "plan for `{}`: {} → {}",
        plan.app,
        plan.current.as_deref().unwrap_or("(nothing deployed)"),
        plan.release
    ))?;
    let section = |name: &str, c: &Changes| -> anyhow::Result<()> {
        if c.is_empty() {
            return Ok(());
        }
        output::data(&format!("{name}:"))?;
        for (sign, list) in [("+", &c.added), ("-", &c.removed), ("~", &c.changed)] {
            for item in list.iter().take(50) {
                output::data(&format!("  {sign} {item}"))?;
            }
            if list.len() > 50 {
                output::data(&format!("  {sign} … and {} more", list.len() - 50))?;
            }
        }
        Ok(())
    };
    section("services", &plan.services)?;
    section("jobs", &plan.jobs)?;
    section("environment", &plan.env)?;
    section("secret names", &plan.secrets)?;
    section("files", &plan.files)?;
    output::data(&format!("to upload: {} bytes", plan.upload_bytes))?;
    output::data("checks on the host:")?;
    for c in &plan.checks {
        output::data(&format!(
            "  {} {:<8} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.name,
            c.detail
        ))?;
    }
    Ok(())
}

/// The prebuilt artifact given with `--artifact`, or one built now.
fn artifact_of(args: &DeployArgs) -> anyhow::Result<PathBuf> {
    match &args.artifact {
        Some(a) => Ok(a.clone()),
        None => Ok(super::build::build_release(&args.file, None)?.0),
    }
}

/// Refuses an artifact of another app before anything is uploaded: the agent would
/// otherwise store its blobs and release for nothing.
fn same_app(artifact: &std::path::Path, app: &str) -> anyhow::Result<()> {
    // An artifact whose manifest cannot be read is the agent's to refuse, with its full
    // verification and reason; only a readable one can name another app.
    let Ok(manifest) = hoist_artifact::read_manifest(artifact, &hoist_artifact::Limits::default())
    else {
        return Ok(());
    };
    if manifest.app() != app {
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!(
                "the artifact is of app `{}`, the app file of `{app}`",
                manifest.app()
            ),
        ));
    }
    Ok(())
}

/// The host this machine's agent plays in the app file.
fn local_host(spec: &hoist_core::spec::AppSpec) -> anyhow::Result<String> {
    let local = hoist_core::spec::defaults::LOCAL_HOST;
    if spec.host(local).is_some() {
        return Ok(local.to_string());
    }
    Err(common::usage(
        anyhow::anyhow!("the app file has no host `{local}` to deploy to on this machine"),
        format!("add `[[hosts]] name = \"{local}\"` with the roles to run here; deploys over SSH come with `hoist setup`"),
    ))
}

fn lease_ttl() -> Duration {
    std::env::var("HOIST_LEASE_TTL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or(LEASE_TTL)
}

/// Runs a rollout (`work`) over the app file's hosts, rendering its events as they come
/// and its report at the end. On one local host the agent is checked first (and, for a
/// deploy, started when none answers), so its absence is told with the usual hint.
fn drive<F, Fut>(loaded: &LoadedConfig, json: bool, may_start: bool, work: F) -> anyhow::Result<()>
where
    F: FnOnce(Fleet) -> Fut,
    Fut: std::future::Future<Output = Result<Report, FleetError>>,
{
    let fleet = common::is_fleet(Some(loaded));
    if !fleet {
        local_host(&loaded.spec)?;
        // Started only where no socket was named: HOIST_SOCKET means "that agent".
        let may_start = may_start && std::env::var_os("HOIST_SOCKET").is_none();
        common::block_on(ensure_local(may_start))?;
    }
    let targets = common::agent_targets(Some(loaded), &common::HostArgs::default())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let held = std::sync::Arc::new(std::sync::Mutex::new(None));
    let rollout = Fleet {
        targets: targets.clone(),
        actor: common::actor(),
        events: tx,
        lease_ttl: lease_ttl(),
        held: held.clone(),
    };
    let started = std::time::Instant::now();
    let mut view = View {
        fleet,
        json,
        started,
        outcome: None,
        failure_lines: Vec::new(),
        upload: None,
    };
    let report = common::block_on(async {
        let render = async {
            while let Some(e) = rx.recv().await {
                view.event(&e);
            }
        };
        tokio::select! {
            (report, ()) = async { tokio::join!(work(rollout), render) } => Some(report),
            // Ctrl-C: the lease goes back at once, so the next deploy is not refused
            // until it expires. What a host's agent has begun, it finishes or undoes.
            _ = tokio::signal::ctrl_c() => {
                let taken = held.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some((app, token)) = taken {
                    hoist_fleet::rollout::release_lease(&targets, &app, &token).await;
                }
                None
            }
        }
    });
    let Some(report) = report else {
        output::warn(
            "interrupted: the deploy lease is released; an activation already begun on a host is finished or undone by its agent (see `hoist status`)",
        );
        return Err(Reported(Exit::Partial).into());
    };
    let report = report.map_err(|e| {
        let exit = match e {
            FleetError::WrongApp { .. } => Exit::Usage,
            FleetError::CrossesMigration { .. } => {
                return crate::exit::WithExit {
                    exit: Exit::Usage,
                    error: anyhow::Error::new(e),
                    hint: Some(
                        "`--with-backup` restores that backup as part of the rollback; \
                         `--keep-data` rolls back the code only, on the migrated data"
                            .into(),
                    ),
                }
                .into();
            }
            _ => Exit::Failed,
        };
        with_exit(exit, anyhow::Error::new(e))
    })?;
    view.summary(&report)?;
    match report.exit_code() {
        0 => Ok(()),
        1 => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}

/// This machine's agent, answering (or started, when `may_start`).
async fn ensure_local(may_start: bool) -> anyhow::Result<()> {
    let socket = common::default_socket();
    let started = hoist_fleet::local::ensure(&socket, may_start, || {
        let root = common::default_root();
        std::fs::create_dir_all(&root)?;
        Ok(hoist_fleet::local::LocalAgent {
            exe: std::env::current_exe()?,
            log: root.join("agent.log"),
            root,
            socket: socket.clone(),
            proxy: hoist_fleet::local::default_proxy()?,
        })
    })
    .await;
    match started {
        Ok((_, Some(agent))) => {
            output::status(
                "Started",
                &format!(
                    "a local agent (root `{}`, proxy on {}, log `{}`)",
                    agent.root.display(),
                    agent.proxy,
                    agent.log.display()
                ),
            );
            Ok(())
        }
        Ok((_, None)) => Ok(()),
        Err(hoist_fleet::local::LocalError::Client(e)) => Err(common::agent_error(e)),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// What the rollout's events look like on the terminal (or as JSON lines).
struct View {
    fleet: bool,
    json: bool,
    started: std::time::Instant,
    /// One host's outcome, for its closing line (its URL, what still serves).
    outcome: Option<Outcome>,
    /// A failed instance's last lines, shown after the failure.
    failure_lines: Vec<String>,
    /// The upload's bar while blobs travel (a terminal only).
    upload: Option<output::Progress>,
}

impl View {
    fn event(&mut self, e: &Event) {
        if let Event::Sending { sent, total, .. } = e {
            // One host: its upload as a bar (hidden with --json or off a terminal).
            if !self.fleet {
                let json = self.json;
                self.upload
                    .get_or_insert_with(|| {
                        output::Progress::bar(*total, output::Unit::Bytes, "upload", json)
                    })
                    .set(*sent);
            }
            return;
        }
        if let Event::Uploaded { .. } = e {
            self.upload = None;
        }
        if let Event::Progress {
            progress: Progress::Done(o),
            ..
        } = e
        {
            self.outcome = Some(o.clone());
        }
        if self.json {
            if !self.fleet {
                // One host: its own progress lines, as the agent sends them.
                if let Event::Progress { progress, .. } = e {
                    let _ = output::json(progress);
                }
                return;
            }
            // Each event carries when it happened, for scripts that time the phases.
            let mut v = serde_json::to_value(e).unwrap_or_default();
            v["elapsed_ms"] = serde_json::Value::from(self.started.elapsed().as_millis() as u64);
            let _ = output::json(&v);
            return;
        }
        if self.fleet {
            render_fleet(e);
            return;
        }
        match e {
            Event::Progress { progress, .. } => render_progress(progress, &mut self.failure_lines),
            Event::Unreachable { error, .. } => output::error(error),
            Event::Uploaded {
                bytes, blobs, ms, ..
            } if *blobs > 0 => output::status(
                "Uploaded",
                &format!(
                    "{blobs} blob(s), {} in {:.2}s",
                    common::bytes(*bytes),
                    *ms as f64 / 1000.0
                ),
            ),
            _ => {}
        }
    }

    fn summary(&mut self, report: &Report) -> anyhow::Result<()> {
        if self.fleet {
            return summary(report, self.json);
        }
        if self.json {
            output::json(&serde_json::json!({"event": "done", "report": report}))?;
            return Ok(());
        }
        if !self.failure_lines.is_empty() {
            output::diagnostic("last lines of its output:");
            for l in &self.failure_lines {
                output::diagnostic(&format!("  | {l}"));
            }
        }
        let Some(host) = report.hosts.first() else {
            return Ok(());
        };
        match (&host.state, &self.outcome) {
            (HostState::Unchanged { release }, _) => output::status(
                "Unchanged",
                &format!(
                    "`{}` release `{release}` is already current; nothing was touched",
                    report.app
                ),
            ),
            (HostState::Deployed { .. } | HostState::RolledBack { .. }, Some(o)) => {
                output::status(
                    "Finished",
                    &format!(
                        "`{}` release `{}` is live in {:.2}s",
                        o.app,
                        o.release.as_deref().unwrap_or("?"),
                        o.duration_ms as f64 / 1000.0
                    ),
                );
                if let Some(url) = &o.url {
                    output::data(url)?;
                }
            }
            (HostState::Failed { reason }, Some(o)) => output::error(&format!(
                "{}; `{}` still serves",
                o.reason.as_deref().unwrap_or(reason),
                o.previous.as_deref().unwrap_or("no release")
            )),
            (state, _) => {
                let (what, detail) = describe(state);
                output::error(&format!("{what}: {detail}"));
            }
        }
        Ok(())
    }
}

fn render_fleet(e: &Event) {
    match e {
        Event::Reachable { .. } | Event::Sending { .. } => {}
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

/// One host's progress as a person reads it (`hoist deploy` and `hoist run` print the
/// same): steps as they begin, failures, hook output; a failed instance's last lines are
/// kept in `failure`, to be shown after the outcome.
pub(crate) fn render_progress(progress: &Progress, failure: &mut Vec<String>) {
    match progress {
        Progress::Step {
            step,
            phase,
            message,
            ..
        } => match phase.as_str() {
            "begin" => output::status("Step", step),
            "failed" => output::error(&format!(
                "{step} failed: {}",
                message.as_deref().unwrap_or_default()
            )),
            _ => {}
        },
        Progress::Output { source, line } if source == "failure" => failure.push(line.clone()),
        Progress::Output { source, line } => output::diagnostic(&format!("  {source} | {line}")),
        Progress::Done(_) => {}
    }
}
