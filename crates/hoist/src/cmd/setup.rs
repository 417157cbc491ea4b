//! `hoist setup [HOST...]`: prepares hosts of the app file over ssh, all in parallel,
//! through `hoist_fleet::setup_host`; renders each host's steps and a summary. The only
//! command that accepts a host key not seen before (a changed one is still refused).

use hoist_fleet::{setup_host, ActionState, HostKeys, Remote, SetupOptions, SetupReport};

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, with_hint, Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// The hosts to set up, by name [default: every host with an `ssh` address]
    pub hosts: Vec<String>,
    /// Also create this unprivileged system user when missing
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// One JSON document on stdout: each host's steps, or its error
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct HostResult {
    host: String,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<SetupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hint: Option<String>,
}

pub fn run(args: SetupArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let spec = &loaded.spec;
    for name in &args.hosts {
        match spec.hosts.iter().find(|h| &h.name == name) {
            None => {
                return Err(with_exit(
                    Exit::Usage,
                    anyhow::anyhow!("no host `{name}` in the app file"),
                ))
            }
            Some(h) if h.ssh.is_none() => {
                return Err(with_exit(
                    Exit::Usage,
                    anyhow::anyhow!("host `{name}` has no `ssh` address: it is this machine"),
                ))
            }
            Some(_) => {}
        }
    }
    // Files hosts get their state directory and a check of their tools, no agent.
    let files_code = if spec
        .hosts
        .iter()
        .any(|h| h.files.is_some() && (args.hosts.is_empty() || args.hosts.contains(&h.name)))
    {
        let names = if args.hosts.is_empty() {
            Vec::new()
        } else {
            args.hosts.clone()
        };
        let code = super::files::setup(&loaded, &names, args.json)?;
        let agents = spec.hosts.iter().any(|h| {
            h.files.is_none()
                && h.ssh.is_some()
                && (args.hosts.is_empty() || args.hosts.contains(&h.name))
        });
        if !agents {
            return super::files::finish(code);
        }
        Some(code)
    } else {
        None
    };
    let hosts: Vec<_> = spec
        .hosts
        .iter()
        .filter(|h| h.files.is_none())
        .filter(|h| h.ssh.is_some() && (args.hosts.is_empty() || args.hosts.contains(&h.name)))
        .collect();
    if hosts.is_empty() {
        return Err(with_hint(
            with_exit(
                Exit::Usage,
                anyhow::anyhow!("no host in the app file has an `ssh` address"),
            ),
            "add `ssh = \"user@address\"` to the `[[hosts]]` you want to set up",
        ));
    }
    let control_dir = super::common::control_dir()?;
    let mut remotes = Vec::new();
    for h in &hosts {
        let remote = Remote::new(
            h,
            &spec.ssh,
            loaded.project_dir(),
            &control_dir,
            HostKeys::AcceptNew,
        )
        .map_err(|e| with_exit(Exit::Usage, e))?;
        remotes.push(remote);
    }
    let opts = SetupOptions {
        local_bin: std::env::current_exe()
            .map_err(|e| anyhow::anyhow!("cannot find the running hoist binary: {e}"))?,
        user: args.user.clone(),
    };
    let json = args.json;
    let results = common::block_on(async move {
        let mut set = tokio::task::JoinSet::new();
        // binary, directories, config, docs, apps' user, the optional user, agent: one bar per host.
        let steps = if opts.user.is_some() { 7 } else { 6 };
        let mut bars = Vec::new();
        for (i, remote) in remotes.into_iter().enumerate() {
            let opts = opts.clone();
            let bar = output::Progress::bar(
                steps,
                output::Unit::Steps,
                &format!("setup of `{}`", remote.name),
                json,
            );
            let step = bar.stepper();
            bars.push(bar);
            set.spawn(async move {
                let name = remote.name.clone();
                let result = setup_host(&remote, &opts, |a| {
                    step(&format!("setup of `{name}`: {}", a.name));
                    if !json {
                        let verb = match a.state {
                            ActionState::Changed => "Changed",
                            ActionState::Unchanged => "Unchanged",
                        };
                        output::status(verb, &format!("`{name}` {}: {}", a.name, a.detail));
                    }
                })
                .await;
                // The masters would linger for a minute; setup is done with them.
                remote.close().await;
                (i, name, result)
            });
        }
        let mut results = Vec::new();
        while let Some(joined) = set.join_next().await {
            if let Ok(r) = joined {
                results.push(r);
            }
        }
        drop(bars);
        results.sort_by_key(|(i, _, _)| *i);
        results
    });

    let mut rendered = Vec::new();
    let (mut ok, mut failed) = (0usize, 0usize);
    for (_, host, result) in results {
        match result {
            Ok(report) => {
                ok += 1;
                if !json {
                    let changed = report.changed();
                    output::status(
                        "Ready",
                        &format!(
                            "`{host}`: {}; agent pid {} answering through ssh, `{}`{}",
                            if changed {
                                "changed"
                            } else {
                                "nothing to change"
                            },
                            report.agent_pid,
                            report.version,
                            report
                                .proxy
                                .as_deref()
                                .map(|p| format!(", proxy on `{p}`"))
                                .unwrap_or_default(),
                        ),
                    );
                }
                rendered.push(HostResult {
                    host,
                    ok: true,
                    report: Some(report),
                    error: None,
                    hint: None,
                });
            }
            Err(e) => {
                failed += 1;
                if !json {
                    output::error(&format!("`{host}`: {e}"));
                    if let Some(h) = e.hint() {
                        output::hint(&h);
                    }
                }
                rendered.push(HostResult {
                    host,
                    ok: false,
                    report: None,
                    error: Some(e.to_string()),
                    hint: e.hint(),
                });
            }
        }
    }
    if json {
        output::json(&serde_json::json!({ "hosts": rendered }))?;
    } else {
        let unchanged = rendered
            .iter()
            .filter(|r| r.report.as_ref().is_some_and(|r| !r.changed()))
            .count();
        output::status(
            "Summary",
            &format!(
                "{ok} of {} hosts ready ({unchanged} unchanged), {failed} failed",
                ok + failed
            ),
        );
    }
    let agents = match (ok, failed) {
        (_, 0) => Ok(()),
        (0, _) => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    };
    match files_code {
        Some(code) => super::files::combine(code, agents),
        None => agents,
    }
}
