//! `hoist run`: the release tested as it will run. Builds the artifact (or takes the
//! newest one with `--skip-build`), unpacks that exact artifact into a scratch directory,
//! deploys it to a private agent there (fresh root and data directory, proxy on a free
//! port; `[run] seed` after `pre_activate`, before the services start), runs the test
//! command in the unpacked release with `HOIST_URL` set, keeps the logs and the test's
//! output in a results folder, and always stops everything and removes the scratch
//! directory, on failure and on SIGINT/SIGTERM too. Exits with the test's status.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hoist_core::spec::{defaults::LOCAL_HOST, AppSpec, HostSpec};
use hoist_fleet::rollout::{Event, Fleet, HostState, Target};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, Exit, PassOn};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Take the newest artifact already built in `.hoist/` instead of building one
    #[arg(long)]
    pub skip_build: bool,
    /// The test command, run as given [default: `[run] test` of the app file, through `sh -c`]
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How the test was ended, when it did not end by itself.
#[derive(Debug, Clone, Copy)]
enum Ended {
    Status(i32),
    Signal(Signal),
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let spec = loaded.spec.clone();
    let test: Vec<String> = if !args.command.is_empty() {
        args.command.clone()
    } else if let Some(t) = &spec.run.test {
        vec!["/bin/sh".into(), "-c".into(), t.clone()]
    } else {
        return Err(common::usage(
            anyhow::anyhow!("no test command to run"),
            "add `[run] test = \"COMMAND\"` to the app file, or pass it: `hoist run -- COMMAND`",
        ));
    };
    // The private agent gets each required secret from this environment: no value is in
    // the app file or the artifact, and `hoist run` never writes one to its results.
    let missing: Vec<&str> = spec
        .secrets
        .required
        .iter()
        .filter(|n| std::env::var_os(n).is_none())
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(common::usage(
            anyhow::anyhow!(
                "the app requires secrets this environment does not set: {}",
                missing.join(", ")
            ),
            "export them for the run (`NAME=value hoist run`); the private agent gets their values",
        ));
    }
    let project = loaded.files[0]
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let artifact = if args.skip_build {
        newest_artifact(&project.join(".hoist"), &spec.app)?
    } else {
        super::build::build_release(&args.file, None)?.0
    };
    let manifest = hoist_artifact::read_manifest(&artifact, &hoist_artifact::Limits::default())
        .with_context(|| format!("cannot read `{}`", artifact.display()))?;
    if manifest.app() != spec.app {
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!(
                "`{}` is of app `{}`, the app file of `{}`",
                artifact.display(),
                manifest.app(),
                spec.app
            ),
        ));
    }
    let release = manifest.release().as_str().to_string();
    output::status(
        "Testing",
        &format!(
            "`{}` release `{release}` from `{}`",
            spec.app,
            artifact.display()
        ),
    );
    output::data(&format!("release {release}"))?;

    let results = project.join(".hoist").join("runs").join(format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &release
    ));
    std::fs::create_dir_all(&results)
        .with_context(|| format!("cannot create `{}`", results.display()))?;
    let results = results.canonicalize()?;
    let scratch = Scratch::new()?;
    let ended = common::block_on(session(&spec, &artifact, &scratch, &results, &test));
    output::data(&format!("results {}", results.display()))?;
    drop(scratch);
    match ended? {
        Ended::Status(0) => {
            output::status("Passed", &format!("release `{release}`"));
            Ok(())
        }
        Ended::Status(code) => {
            output::error(&format!(
                "the tests failed (exit {code}); their output is in `{}`",
                results.join("test.log").display()
            ));
            // The test's own status, as a wrapper script would pass it on.
            Err(PassOn(u8::try_from(code).unwrap_or(1)).into())
        }
        Ended::Signal(sig) => {
            output::warn(&format!(
                "interrupted ({sig}): everything started was stopped and the scratch directory removed"
            ));
            Err(PassOn(128 + sig as u8).into())
        }
    }
}

/// The newest `<app>-<release>.tar.zst` in `dir` (what the last build wrote).
fn newest_artifact(dir: &Path, app: &str) -> anyhow::Result<PathBuf> {
    let prefix = format!("{app}-");
    let newest = std::fs::read_dir(dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && name.ends_with(".tar.zst") && !name.contains(".building.")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max();
    match newest {
        Some((_, p)) => Ok(p),
        None => Err(common::usage(
            anyhow::anyhow!("no artifact of `{app}` in `{}` to reuse", dir.display()),
            "run `hoist build` (or `hoist run` without `--skip-build`) first",
        )),
    }
}

/// The scratch directory: the private agent's root, its socket and the unpacked
/// release. Dropping it ends every process that names it and removes it.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> anyhow::Result<Scratch> {
        let base = std::env::temp_dir().join("hoist-run-XXXXXX");
        let dir = nix::unistd::mkdtemp(&base).with_context(|| {
            format!(
                "cannot create a scratch directory in `{}`",
                std::env::temp_dir().display()
            )
        })?;
        Ok(Scratch { dir })
    }
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        end_processes_under(&self.dir);
        if let Err(e) = hoist_artifact::remove_tree(&self.dir) {
            output::warn(&format!(
                "cannot remove the scratch directory `{}`: {e}",
                self.dir.display()
            ));
        }
    }
}

/// Every process whose command line names `dir`, or whose `HOIST_RUN_DIR` lies under it
/// (the private agent, its proxy, shims and apps live in sessions of their own): SIGTERM,
/// then SIGKILL for what is left after 5 s.
fn end_processes_under(dir: &Path) {
    let under = |s: &str| Path::new(s).starts_with(dir) || s.contains(&*dir.to_string_lossy());
    let find = || -> Vec<i32> {
        let me = std::process::id() as i32;
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != me)
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                cmdline
                    .split(|b| *b == 0)
                    .filter_map(|a| std::str::from_utf8(a).ok())
                    .any(under)
                    || environ
                        .split(|b| *b == 0)
                        .filter_map(|kv| {
                            std::str::from_utf8(kv).ok()?.strip_prefix("HOIST_RUN_DIR=")
                        })
                        .any(under)
            })
            .collect()
    };
    let mut signal = Signal::SIGTERM;
    let started = Instant::now();
    loop {
        let pids = find();
        if pids.is_empty() {
            return;
        }
        if started.elapsed() > Duration::from_secs(5) {
            signal = Signal::SIGKILL;
        }
        if started.elapsed() > Duration::from_secs(20) {
            output::warn(&format!(
                "processes under `{}` would not end: {pids:?}",
                dir.display()
            ));
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), signal);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The spec as `hoist run` deploys it: every role on the one private host, plain HTTP,
/// one web service answering any host name, and the seed run after `pre_activate`.
fn run_spec(spec: &AppSpec) -> AppSpec {
    let mut s = spec.clone();
    let mut roles: BTreeSet<String> = BTreeSet::new();
    for h in &s.hosts {
        roles.extend(h.roles.iter().cloned());
    }
    for svc in s.services.values() {
        roles.extend(svc.roles.iter().cloned());
    }
    for job in s.jobs.values() {
        roles.extend(job.roles.iter().cloned());
    }
    s.hosts = vec![HostSpec {
        name: LOCAL_HOST.to_string(),
        ssh: None,
        roles: roles.into_iter().collect(),
        env: spec
            .hosts
            .first()
            .map(|h| h.env.clone())
            .unwrap_or_default(),
        files: None,
        address: None,
    }];
    let web = s.services.values().filter(|svc| svc.http.is_some()).count();
    for svc in s.services.values_mut() {
        if let Some(http) = &mut svc.http {
            // No certificate authority reaches a private proxy on a loopback port.
            http.tls = None;
            http.redirect_https = false;
            http.hsts = None;
            if web == 1 {
                http.domains = vec!["*".into()];
            }
        }
    }
    if let Some(seed) = &spec.run.seed {
        s.hooks.pre_activate = Some(match &spec.hooks.pre_activate {
            Some(pre) => format!("( {pre} ) && ( {seed} )"),
            None => seed.clone(),
        });
    }
    s
}

async fn session(
    spec: &AppSpec,
    artifact: &Path,
    scratch: &Scratch,
    results: &Path,
    test: &[String],
) -> anyhow::Result<Ended> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let test_group = Arc::new(AtomicI32::new(0));
    let mut agent: Option<std::process::Child> = None;
    let work = work(
        spec,
        artifact,
        scratch,
        results,
        test,
        &test_group,
        &mut agent,
    );
    let ended = tokio::select! {
        r = work => r,
        _ = sigint.recv() => Ok(Ended::Signal(Signal::SIGINT)),
        _ = sigterm.recv() => Ok(Ended::Signal(Signal::SIGTERM)),
    };
    // The test's whole process group first (it was started in one of its own), then the
    // app (down: instances stopped, routes removed), then the agent; anything left under
    // the scratch directory is ended when it is dropped.
    let group = test_group.load(Ordering::SeqCst);
    if group > 0 {
        let _ = killpg(Pid::from_raw(group), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while killpg(Pid::from_raw(group), None).is_ok() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
    collect_logs(scratch, results, &spec.app);
    if let Some(mut child) = agent {
        let client = hoist_client::Client::new(&scratch.socket());
        let _ = tokio::time::timeout(
            Duration::from_secs(30),
            client.call::<(), serde_json::Value>(
                hyper::Method::POST,
                &format!("/v1/apps/{}/down?actor=hoist-run", spec.app),
                None,
            ),
        )
        .await;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    ended
}

/// Copies the private agent's log and the app's instance logs into the results folder.
fn collect_logs(scratch: &Scratch, results: &Path, app: &str) {
    let _ = std::fs::copy(scratch.dir.join("agent.log"), results.join("agent.log"));
    let logs = scratch.root().join("logs").join(app);
    for entry in walkdir_files(&logs) {
        let Ok(rel) = entry.strip_prefix(&logs) else {
            continue;
        };
        let to = results.join("logs").join(rel);
        if let Some(parent) = to.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::copy(&entry, &to);
    }
}

fn walkdir_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => out.push(e.path()),
                _ => {}
            }
        }
    }
    out
}

async fn work(
    spec: &AppSpec,
    artifact: &Path,
    scratch: &Scratch,
    results: &Path,
    test: &[String],
    test_group: &AtomicI32,
    agent_slot: &mut Option<std::process::Child>,
) -> anyhow::Result<Ended> {
    // That exact artifact, unpacked (and verified entry by entry): the tests run in it.
    let tree = scratch.dir.join("release");
    let file = std::fs::File::open(artifact)
        .with_context(|| format!("cannot open `{}`", artifact.display()))?;
    hoist_artifact::unpack(file, &tree, &hoist_artifact::Limits::default())
        .with_context(|| format!("cannot unpack `{}`", artifact.display()))?;

    // A private agent: its own root (so a fresh data directory), socket and proxy port;
    // an empty host config so that /etc/hoist/agent.toml is not read.
    let root = scratch.root();
    std::fs::create_dir_all(&root)?;
    let config = scratch.dir.join("agent.toml");
    std::fs::write(&config, "")?;
    let proxy = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let log = std::fs::File::create(scratch.dir.join("agent.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("agent")
        .arg("--root")
        .arg(&root)
        .arg("--socket")
        .arg(scratch.socket())
        .arg("--proxy")
        .arg(proxy.to_string())
        .arg("--config")
        .arg(&config)
        .env_remove("HOIST_SOCKET")
        .env_remove("HOIST_ROOT")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // Its own session: the terminal's Ctrl-C reaches `hoist run`, which stops it.
        cmd.process_group(0);
    }
    let child = cmd.spawn().context("cannot start the private agent")?;
    *agent_slot = Some(child);
    let client = hoist_client::Client::new(&scratch.socket());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if hoist_fleet::local::answers(&client).await.unwrap_or(false) {
            break;
        }
        let exited = agent_slot
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
        if exited || Instant::now() > deadline {
            anyhow::bail!(
                "the private agent did not start (see `{}`)",
                results.join("agent.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    output::status(
        "Started",
        &format!(
            "a private agent in `{}` (proxy on {proxy})",
            scratch.dir.display()
        ),
    );
    for name in &spec.secrets.required {
        let value = std::env::var(name).with_context(|| {
            format!("the secret `{name}` is not valid UTF-8 in this environment")
        })?;
        client
            .call::<_, serde_json::Value>(
                hyper::Method::PUT,
                &format!("/v1/secrets/{}/{name}", spec.app),
                Some(&hoist_protocol::agent::SecretValue { value }),
            )
            .await
            .map_err(|e| {
                anyhow::anyhow!("cannot give the private agent the secret `{name}`: {e}")
            })?;
    }

    // The deploy road every host takes: upload, preflight, pre_activate (+ seed), start,
    // health, switch, smoke.
    let placed = run_spec(spec);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet = Fleet {
        targets: vec![Target {
            name: LOCAL_HOST.to_string(),
            client: client.clone(),
            remote: None,
        }],
        actor: common::actor(),
        events: tx,
        lease_ttl: Duration::from_secs(60),
        held: Arc::new(Mutex::new(None)),
    };
    let mut failure = Vec::new();
    let render = async {
        while let Some(e) = rx.recv().await {
            if let Event::Progress { progress, .. } = &e {
                super::deploy::render_progress(progress, &mut failure);
            }
        }
    };
    // The rollout owns the events' sender: it must be dropped when done, or the
    // renderer waits forever.
    let deploy = async move { fleet.deploy(&placed, artifact).await };
    let (report, ()) = tokio::join!(deploy, render);
    let report = report.map_err(anyhow::Error::new)?;
    let deployed = report.hosts.first().is_some_and(|h| {
        matches!(
            h.state,
            HostState::Deployed { .. } | HostState::Unchanged { .. }
        )
    });
    if !deployed {
        for l in &failure {
            output::diagnostic(&format!("  | {l}"));
        }
        let why = report
            .hosts
            .first()
            .map(|h| match &h.state {
                HostState::Failed { reason } | HostState::RollbackFailed { reason } => {
                    reason.clone()
                }
                HostState::Lost { error } | HostState::Unreachable { error } => error.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        return Err(with_exit(
            Exit::Failed,
            anyhow::anyhow!("the release did not start on the private agent: {why}"),
        ));
    }
    // Requests go to the proxy's address: a web service's domain need not resolve here.
    let prefix = spec
        .services
        .values()
        .find_map(|s| s.http.as_ref().map(|h| h.path_prefix.clone()))
        .unwrap_or_default();
    let hoist_url = format!("http://{proxy}{}", prefix.trim_end_matches('/'));
    output::status("Serving", &hoist_url);

    // The test, in the unpacked release, in a process group of its own (ended whole).
    let log_path = results.join("test.log");
    let log = Arc::new(Mutex::new(std::fs::File::create(&log_path)?));
    let mut cmd = tokio::process::Command::new(&test[0]);
    cmd.args(&test[1..])
        .current_dir(&tree)
        .env("HOIST_URL", &hoist_url)
        .env("HOIST_RELEASE", report.release.as_str())
        .env("HOIST_RESULTS", results)
        .env("HOIST_DATA_DIR", root.join("data").join(&spec.app))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    output::status("Running", &test.join(" "));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run `{}`", test[0]))?;
    if let Some(pid) = child.id() {
        test_group.store(pid as i32, Ordering::SeqCst);
    }
    let out = pump(child.stdout.take(), log.clone(), false);
    let err = pump(child.stderr.take(), log.clone(), true);
    let (status, (), ()) = tokio::join!(child.wait(), out, err);
    let status = status?;
    use std::os::unix::process::ExitStatusExt;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => Ended::Status(code),
        (None, Some(sig)) => Ended::Status(128 + sig),
        _ => Ended::Status(1),
    })
}

/// Copies a test stream, line by line, to the log file and to the terminal.
async fn pump(
    stream: Option<impl tokio::io::AsyncRead + Unpin>,
    log: Arc<Mutex<std::fs::File>>,
    stderr: bool,
) {
    let Some(stream) = stream else { return };
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut f) = log.lock() {
            let _ = writeln!(f, "{line}");
        }
        if stderr {
            output::diagnostic(&line);
        } else {
            let _ = output::data(&line);
        }
    }
}
