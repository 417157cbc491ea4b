//! `hoist deploy` and `hoist rollback`: build (or take) the artifact, upload it to the
//! agent, ask for the activation and render its progress stream. A local deploy with no
//! agent answering starts one in the background (the quickstart).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use hyper::Method;

use hoist_agent::client::Client;
use hoist_protocol::agent::{
    Changes, DeployRequest, Hello, Outcome, Plan, PlanRequest, Progress, RollbackRequest, Uploaded,
};

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, with_hint, Exit, Reported};
use crate::output;

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
}

pub fn run_deploy(args: DeployArgs) -> anyhow::Result<()> {
    if args.plan {
        return run_plan(args);
    }
    let loaded = load(&args.file)?;
    if super::fleet::is_fleet(&loaded.spec) {
        let artifact = artifact_of(&args)?;
        return super::fleet::deploy(&loaded, &artifact, common::actor(), args.json);
    }
    let host = local_host(&loaded.spec)?;
    let artifact = artifact_of(&args)?;
    common::block_on(async {
        let client = ensure_agent().await?;
        output::status("Uploading", &format!("`{}`", artifact.display()));
        let up: Uploaded = client
            .upload("/v1/releases", &artifact)
            .await
            .map_err(common::agent_error)?;
        if up.app != loaded.spec.app {
            return Err(with_exit(
                Exit::Usage,
                anyhow::anyhow!(
                    "the artifact is of app `{}`, the app file of `{}`",
                    up.app,
                    loaded.spec.app
                ),
            ));
        }
        let req = DeployRequest {
            spec: loaded.spec.clone(),
            release: up.release.clone(),
            host,
            actor: common::actor(),
            lease: None,
        };
        output::status(
            "Deploying",
            &format!("`{}` release `{}`", up.app, up.release),
        );
        let outcome = stream(&client, "/v1/deploy", &req, args.json).await?;
        finish(outcome, args.json)
    })
}

pub fn run_rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if super::fleet::is_fleet(&loaded.spec) {
        return super::fleet::rollback(&loaded, args.release.clone(), common::actor(), args.json);
    }
    let host = local_host(&loaded.spec)?;
    let client = common::client();
    let req = RollbackRequest {
        app: loaded.spec.app.clone(),
        release: args.release.clone(),
        host,
        actor: common::actor(),
        lease: None,
    };
    common::block_on(async {
        output::status("Rolling back", &format!("`{}`", req.app));
        let outcome = stream(&client, "/v1/rollback", &req, args.json).await?;
        finish(outcome, args.json)
    })
}

/// `hoist plan` (and `hoist deploy --plan`): the artifact's manifest and the app file
/// are compared with what the host runs; nothing is uploaded or changed.
pub fn run_plan(args: DeployArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let fleet = super::fleet::is_fleet(&loaded.spec);
    let targets = if fleet {
        super::fleet::targets(&loaded, hoist_fleet::HostKeys::Strict)?
    } else {
        vec![hoist_fleet::rollout::Target {
            name: local_host(&loaded.spec)?,
            client: common::client(),
            remote: None,
        }]
    };
    let artifact = artifact_of(&args)?;
    let manifest = hoist_artifact::read_manifest(&artifact, &hoist_artifact::Limits::default())
        .with_context(|| format!("cannot read `{}`", artifact.display()))?;
    let manifest = String::from_utf8_lossy(&manifest.to_json()).into_owned();
    // Every host is asked at once; each plans against what it holds and runs.
    let plans = common::block_on(futures_util::future::join_all(targets.iter().map(|t| {
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
        async move {
            let r = t
                .client
                .call::<_, Plan>(Method::POST, "/v1/plan", Some(&req))
                .await;
            (t, r)
        }
    })));
    let mut failed = false;
    let mut docs = Vec::new();
    for (t, r) in plans {
        let plan = match r {
            Ok(p) => p,
            Err(e) if !fleet => return Err(common::agent_error(e)),
            Err(e) => {
                failed = true;
                let e = t.explain(&e);
                output::error(&format!("`{}`: {e}", t.name));
                docs.push(serde_json::json!({"host": t.name, "error": e}));
                continue;
            }
        };
        failed |= plan.checks.iter().any(|c| !c.ok);
        if args.json && fleet {
            docs.push(serde_json::json!({"host": t.name, "plan": plan}));
        } else if args.json {
            output::json(&plan)?;
        } else {
            if fleet {
                output::data(&format!("── host `{}`", t.name))?;
            }
            render_plan(&plan)?;
        }
    }
    if args.json && fleet {
        output::json(&docs)?;
    }
    if failed {
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

/// The host this machine's agent plays in the app file.
fn local_host(spec: &hoist_core::spec::AppSpec) -> anyhow::Result<String> {
    let local = hoist_core::spec::defaults::LOCAL_HOST;
    if spec.host(local).is_some() {
        return Ok(local.to_string());
    }
    Err(with_hint(
        with_exit(Exit::Usage, anyhow::anyhow!("the app file has no host `{local}` to deploy to on this machine")),
        format!("add `[[hosts]] name = \"{local}\"` with the roles to run here; deploys over SSH come with `hoist setup`"),
    ))
}

async fn stream<B: serde::Serialize>(
    client: &Client,
    path: &str,
    body: &B,
    json: bool,
) -> anyhow::Result<Outcome> {
    let mut outcome = None;
    let mut failure_lines = Vec::new();
    let mut began = false;
    let streamed = client
        .stream::<_, Progress>(Method::POST, path, Some(body), |p| {
            began = true;
            if json {
                let _ = output::json(&p);
            }
            match p {
                Progress::Step {
                    step,
                    phase,
                    message,
                    ..
                } if !json => match phase.as_str() {
                    "begin" => output::status("Step", &step),
                    "failed" => {
                        output::error(&format!("{step} failed: {}", message.unwrap_or_default()))
                    }
                    _ => {}
                },
                Progress::Output { source, line } if !json => {
                    if source == "failure" {
                        failure_lines.push(line);
                    } else {
                        output::diagnostic(&format!("  {source} | {line}"));
                    }
                }
                Progress::Done(o) => outcome = Some(o),
                _ => {}
            }
            true
        })
        .await;
    // Once the operation has begun, a lost agent leaves its outcome unknown here: the
    // agent's recovery closes it with what is true. Never claim "unchanged".
    let lost = |why: String| {
        with_exit(
            Exit::Partial,
            anyhow::anyhow!(
                "{why}; the outcome is unknown here: the agent's recovery records it (see `hoist history` and `hoist status`)"
            ),
        )
    };
    match streamed {
        Err(e) if began => {
            return Err(lost(format!(
                "the agent stopped answering during the operation ({e})"
            )))
        }
        Err(e) => return Err(common::agent_error(e)),
        Ok(_) => {}
    }
    if !failure_lines.is_empty() {
        output::diagnostic("last lines of its output:");
        for l in failure_lines {
            output::diagnostic(&format!("  | {l}"));
        }
    }
    outcome.ok_or_else(|| lost("the agent ended the operation's stream without an outcome".into()))
}

fn finish(outcome: Outcome, json: bool) -> anyhow::Result<()> {
    if outcome.result == "succeeded" {
        if !json {
            output::status(
                "Finished",
                &format!(
                    "`{}` release `{}` is live in {:.2}s",
                    outcome.app,
                    outcome.release.as_deref().unwrap_or("?"),
                    outcome.duration_ms as f64 / 1000.0
                ),
            );
            if let Some(url) = &outcome.url {
                output::data(url)?;
            }
        }
        return Ok(());
    }
    if !json {
        output::error(&format!(
            "{}; `{}` still serves",
            outcome.reason.as_deref().unwrap_or("failed"),
            outcome.previous.as_deref().unwrap_or("no release")
        ));
    }
    Err(Reported(Exit::Failed).into())
}

/// The agent to deploy to: the one answering on the socket, or (when `HOIST_SOCKET` is
/// not set) a new local agent started in the background with a proxy on 127.0.0.1:8080
/// (or a free port when 8080 is taken).
async fn ensure_agent() -> anyhow::Result<Client> {
    let client = common::client();
    if client.get::<Hello>("/v1/hello").await.is_ok() || std::env::var_os("HOIST_SOCKET").is_some()
    {
        return Ok(client);
    }
    let root = common::default_root();
    let socket = common::default_socket();
    let proxy = match std::net::TcpListener::bind("127.0.0.1:8080") {
        Ok(l) => l.local_addr()?,
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?,
    };
    std::fs::create_dir_all(&root)
        .with_context(|| format!("cannot create `{}`", root.display()))?;
    let log = root.join("agent.log");
    output::status(
        "Starting",
        &format!(
            "a local agent (root `{}`, proxy on {proxy}, log `{}`)",
            root.display(),
            log.display()
        ),
    );
    let exe = std::env::current_exe().context("cannot find the hoist executable")?;
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("agent")
        .arg("--root")
        .arg(&root)
        .arg("--socket")
        .arg(&socket)
        .arg("--proxy")
        .arg(proxy.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(logf.try_clone()?)
        .stderr(logf);
    {
        use std::os::unix::process::CommandExt;
        // Its own session: the agent outlives this command and its terminal.
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()
                    .map(|_| ())
                    .map_err(std::io::Error::from)
            });
        }
    }
    cmd.spawn().context("cannot start the agent")?;
    for _ in 0..200 {
        if client.get::<Hello>("/v1/hello").await.is_ok() {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(with_hint(
        anyhow::anyhow!("the local agent did not start"),
        format!("see `{}`", log.display()),
    ))
}
