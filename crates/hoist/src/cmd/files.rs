//! The files hosts' road (`mode = "files"`, `hoist_fleet::files`): the commands that work
//! on a host without an agent — setup, deploy, rollback, status, history, releases, plan,
//! backup, backups, restore, secrets — render here; the others are refused (exit 2)
//! naming the host. An app file may mix agent hosts and files hosts: each command runs
//! its files hosts here and its agent hosts on the usual road.

use hoist_config::LoadedConfig;
use hoist_fleet::files::{FilesError, FilesTarget, Outcome};
use hoist_fleet::HostKeys;

use super::common;
use crate::exit::{with_exit, Exit, Reported};
use crate::output;

/// Whether the app file has files hosts.
pub fn any(loaded: Option<&LoadedConfig>) -> bool {
    loaded.is_some_and(|l| l.spec.hosts.iter().any(|h| h.files.is_some()))
}

/// Whether the app file has agent hosts too (ssh hosts without `mode = "files"`, or `local`).
pub fn has_agent_hosts(loaded: &LoadedConfig) -> bool {
    loaded.spec.hosts.iter().any(|h| h.files.is_none())
}

/// The hosts `names` selects (every host when empty), split into files hosts and agent
/// hosts; `None` when no files host is selected (the usual road alone).
pub fn split(
    loaded: Option<&LoadedConfig>,
    names: &[String],
) -> Option<(Vec<String>, Vec<String>)> {
    let loaded = loaded?;
    let picked = |h: &&hoist_core::spec::HostSpec| names.is_empty() || names.contains(&h.name);
    let files: Vec<String> = loaded
        .spec
        .hosts
        .iter()
        .filter(picked)
        .filter(|h| h.files.is_some())
        .map(|h| h.name.clone())
        .collect();
    if files.is_empty() {
        return None;
    }
    let agents = loaded
        .spec
        .hosts
        .iter()
        .filter(picked)
        .filter(|h| h.files.is_none())
        .map(|h| h.name.clone())
        .collect();
    Some((files, agents))
}

/// The files host a one-host command (`backup`, `backups`, `restore`) goes to: `--host`
/// when it names one, else the app file's first host when it is one.
pub fn one_host(loaded: &LoadedConfig, host: Option<&str>) -> Option<String> {
    let h = match host {
        Some(name) => loaded.spec.hosts.iter().find(|h| h.name == name)?,
        None => loaded.spec.hosts.first()?,
    };
    h.files.as_ref().map(|_| h.name.clone())
}

/// The files hosts among `names` (every one when `names` is empty).
pub fn targets(
    loaded: &LoadedConfig,
    names: &[String],
    keys: HostKeys,
) -> anyhow::Result<Vec<FilesTarget>> {
    let control = common::control_dir()?;
    let all = hoist_fleet::files::targets(&loaded.spec, loaded.project_dir(), &control, keys)
        .map_err(|e| with_exit(Exit::Usage, anyhow::Error::new(e)))?;
    Ok(all
        .into_iter()
        .filter(|t| names.is_empty() || names.contains(&t.name))
        .collect())
}

/// The refusal of a command a files host cannot do, when `names` (or, with none, the app
/// file) selects one.
pub fn refuse_agent_command(loaded: &LoadedConfig, names: &[String]) -> anyhow::Result<()> {
    let files: Vec<&str> = loaded
        .spec
        .hosts
        .iter()
        .filter(|h| h.files.is_some() && (names.is_empty() || names.contains(&h.name)))
        .map(|h| h.name.as_str())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    // The subcommand: the first word that is neither an option nor an option's value.
    let mut command = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if matches!(a.as_str(), "-c" | "--config" | "-d" | "--destination") {
            args.next();
        } else if !a.starts_with('-') {
            command = a;
            break;
        }
    }
    let command = if command == "logs" && std::env::args().any(|a| a == "-f" || a == "--follow") {
        "logs -f".to_string()
    } else {
        command
    };
    let who = match files.as_slice() {
        [one] => format!("`{one}` is"),
        many => format!(
            "{} are",
            many.iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Err(common::usage(
        anyhow::anyhow!(
            "`hoist {command}` needs hoist's agent, and {who} a files host (`mode = \"files\"`): no agent runs there"
        ),
        "a files host does setup, deploy, rollback, status, history, releases, plan, backup, backups, restore and secrets; pick agent hosts with --host",
    ))
}

fn show_error(e: &FilesError) {
    output::error(&e.to_string());
    if let FilesError::Ssh(s) = e {
        if let Some(h) = s.hint() {
            output::hint(&h);
        }
    }
}

/// Exit code of several hosts' results: 0 all ok, 1 none, 3 some.
fn code(ok: usize, total: usize) -> i32 {
    if ok == total {
        0
    } else if ok == 0 {
        1
    } else {
        3
    }
}

/// Turns an exit code into the command's end.
pub fn finish(code: i32) -> anyhow::Result<()> {
    match code {
        0 => Ok(()),
        1 => Err(Reported(Exit::Failed).into()),
        2 => Err(Reported(Exit::Usage).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}

/// Combines the files road's code with the agent road's result (a fleet of both kinds).
pub fn combine(files: i32, agents: anyhow::Result<()>) -> anyhow::Result<()> {
    let agents_code = match &agents {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<Reported>() {
            Some(Reported(x)) => *x as i32,
            None => 1,
        },
    };
    match (files, agents_code) {
        (0, _) => agents,
        (_, 0) if files == 1 => finish(3),
        (1, 1) => {
            if let Err(e) = agents {
                if e.downcast_ref::<Reported>().is_none() {
                    output::error(&format!("{e:#}"));
                }
            }
            finish(1)
        }
        _ => {
            if let Err(e) = agents {
                if e.downcast_ref::<Reported>().is_none() {
                    output::error(&format!("{e:#}"));
                }
            }
            finish(3)
        }
    }
}

fn render_outcome(o: &Outcome, verb: &str, json: bool) -> anyhow::Result<()> {
    if json {
        output::json(o)?;
        return Ok(());
    }
    let release = o.release.as_deref().unwrap_or("-");
    match o.result.as_str() {
        "succeeded" => output::status(
            verb,
            &format!(
                "`{}` release `{release}` on `{}` (files host) in {:.1}s{}",
                o.app,
                o.host,
                o.duration_ms as f64 / 1000.0,
                o.previous
                    .as_deref()
                    .map(|p| format!(", previous `{p}`"))
                    .unwrap_or_default()
            ),
        ),
        "unchanged" => output::status(
            "Unchanged",
            &format!("`{}` already serves `{release}` on `{}`", o.app, o.host),
        ),
        _ => output::error(&format!(
            "`{}` release `{release}` failed on `{}`: {}; {} serves",
            o.app,
            o.host,
            o.reason.as_deref().unwrap_or("unknown"),
            o.previous
                .as_deref()
                .map_or("nothing".to_string(), |p| format!("`{p}`"))
        )),
    }
    Ok(())
}

/// Deploys to every files host, one after another; the exit code of the lot. A failed
/// host stops the rollout: the next hosts keep their release.
pub fn deploy(
    loaded: &LoadedConfig,
    artifact: &std::path::Path,
    json: bool,
) -> anyhow::Result<i32> {
    each_host(loaded, json, Op::Deploy(artifact))
}

/// Rolls every files host back, one after another (a failed one does not stop the rest).
pub fn rollback(loaded: &LoadedConfig, release: Option<&str>, json: bool) -> anyhow::Result<i32> {
    each_host(loaded, json, Op::Rollback(release))
}

/// What [`each_host`] does on each files host.
#[derive(Clone, Copy)]
enum Op<'a> {
    Deploy(&'a std::path::Path),
    Rollback(Option<&'a str>),
}

/// Runs `op` host by host with its steps shown; Ctrl-C hands the held lock back and
/// stops with exit 3.
fn each_host(loaded: &LoadedConfig, json: bool, op: Op<'_>) -> anyhow::Result<i32> {
    let hosts = targets(loaded, &[], HostKeys::Strict)?;
    let actor = common::actor();
    let mut ok = 0;
    for t in &hosts {
        let name = t.name.clone();
        let on = move |s: &str| {
            if !json {
                output::status("Step", &format!("`{name}`: {s}"));
            }
        };
        let r = common::block_on(async {
            let run = async {
                match op {
                    Op::Deploy(artifact) => t.deploy(&loaded.spec, artifact, &actor, &on).await,
                    Op::Rollback(release) => t.rollback(&loaded.spec, release, &actor, &on).await,
                }
            };
            tokio::select! {
                r = run => Some(r),
                _ = tokio::signal::ctrl_c() => {
                    t.release_held().await;
                    None
                }
            }
        });
        let Some(r) = r else {
            let state = match op {
                Op::Deploy(_) => "wholly the old release or the new one (a next deploy of the same release finishes it)",
                Op::Rollback(_) => "wholly one release",
            };
            output::warn(&format!(
                "interrupted: the lock on `{}` is released; its served path is {state}",
                t.name
            ));
            return Ok(3);
        };
        let verb = match op {
            Op::Deploy(_) => "Deployed",
            Op::Rollback(_) => "Rolled back",
        };
        let stop = matches!(op, Op::Deploy(_));
        match r {
            Ok(o) => {
                render_outcome(&o, verb, json)?;
                if o.result != "failed" {
                    ok += 1;
                } else if stop {
                    break;
                }
            }
            Err(e) => {
                show_error(&e);
                if stop {
                    break;
                }
            }
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn status(loaded: &LoadedConfig, names: &[String], json: bool) -> anyhow::Result<i32> {
    let hosts = targets(loaded, names, HostKeys::Strict)?;
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.status()) {
            Ok(s) => {
                ok += 1;
                if json {
                    output::json(&serde_json::json!({"host": t.name, "files": s}))?;
                    continue;
                }
                output::status(
                    "App",
                    &format!(
                        "`{}`: `{}` release `{}` (files host, {} → {}){}",
                        t.name,
                        loaded.spec.app,
                        s.release.as_deref().unwrap_or("-"),
                        s.path,
                        match s.served.as_str() {
                            "link" => "symlink",
                            "dir" => "a plain directory, not deployed by hoist yet",
                            "none" => "absent",
                            _ => "neither directory nor symlink",
                        },
                        s.lock
                            .as_deref()
                            .map(|l| format!(", deploy lock held by {l}"))
                            .unwrap_or_default()
                    ),
                );
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn history(
    loaded: &LoadedConfig,
    names: &[String],
    verify: bool,
    limit: usize,
    json: bool,
) -> anyhow::Result<i32> {
    let hosts = targets(loaded, names, HostKeys::Strict)?;
    let mut ok = 0;
    let mut broken = false;
    for t in &hosts {
        if verify {
            match common::block_on(t.verify_history()) {
                Ok((n, problems)) => {
                    ok += 1;
                    if json {
                        output::json(
                            &serde_json::json!({"host": t.name, "records": n, "problems": problems}),
                        )?;
                    }
                    if problems.is_empty() {
                        output::status(
                            "Verified",
                            &format!("{n} history records, chain intact on `{}`", t.name),
                        );
                    }
                    for p in problems {
                        broken = true;
                        output::error(&format!("`{}`: {p}", t.name));
                    }
                }
                Err(e) => show_error(&e),
            }
            continue;
        }
        match common::block_on(t.history()) {
            Ok(mut records) => {
                ok += 1;
                records.drain(..records.len().saturating_sub(limit));
                if json {
                    let docs: Vec<serde_json::Value> =
                        records.iter().map(|r| common::tagged(&t.name, r)).collect();
                    output::json(&docs)?;
                    continue;
                }
                let rows: Vec<Vec<String>> = records
                    .iter()
                    .map(|r| {
                        vec![
                            t.name.clone(),
                            r.seq.to_string(),
                            r.kind.clone(),
                            r.release.clone().unwrap_or_default(),
                            r.previous.clone().unwrap_or_default(),
                            r.actor.clone(),
                            r.result.clone(),
                            format!("{:.2}s", r.duration_ms as f64 / 1000.0),
                            r.reason.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "HOST", "#", "KIND", "RELEASE", "PREVIOUS", "WHO", "RESULT", "TOOK",
                        "REASON",
                    ],
                    &rows,
                )?;
            }
            Err(e) => show_error(&e),
        }
    }
    if broken {
        return Ok(1);
    }
    Ok(code(ok, hosts.len()))
}

pub fn releases(loaded: &LoadedConfig, names: &[String], json: bool) -> anyhow::Result<i32> {
    let hosts = targets(loaded, names, HostKeys::Strict)?;
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.releases(&loaded.spec.app)) {
            Ok(list) => {
                ok += 1;
                if json {
                    let docs: Vec<serde_json::Value> =
                        list.iter().map(|r| common::tagged(&t.name, r)).collect();
                    output::json(&docs)?;
                    continue;
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| vec![t.name.clone(), r.release.clone(), r.role.clone()])
                    .collect();
                output::table(&["HOST", "RELEASE", "ROLE"], &rows)?;
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn plan(loaded: &LoadedConfig, artifact: &std::path::Path, json: bool) -> anyhow::Result<i32> {
    let manifest = hoist_artifact::read_manifest(artifact, &hoist_artifact::Limits::default())
        .map_err(|e| anyhow::anyhow!("cannot read `{}`: {e}", artifact.display()))?;
    let hosts = targets(loaded, &[], HostKeys::Strict)?;
    let mut ok = 0;
    let mut failed_checks = false;
    for t in &hosts {
        match common::block_on(t.plan(&manifest)) {
            Ok(p) => {
                ok += 1;
                failed_checks |= p.checks.iter().any(|c| !c.ok);
                if json {
                    output::json(&p)?;
                    continue;
                }
                output::data(&format!("── host `{}` (files host)", t.name))?;
                output::data(&format!(
                    "plan for `{}`: {} → {}",
                    loaded.spec.app,
                    p.current.as_deref().unwrap_or("(nothing deployed)"),
                    p.release
                ))?;
                output::data(&format!(
                    "to upload: {} files, {} bytes",
                    p.files_to_send, p.bytes_to_send
                ))?;
                output::data("checks on the host:")?;
                for c in &p.checks {
                    output::data(&format!(
                        "  {} {:<8} {}",
                        if c.ok { "ok  " } else { "FAIL" },
                        c.name,
                        c.detail
                    ))?;
                }
            }
            Err(e) => show_error(&e),
        }
    }
    let c = code(ok, hosts.len());
    Ok(if c == 0 && failed_checks { 1 } else { c })
}

pub fn setup(loaded: &LoadedConfig, names: &[String], json: bool) -> anyhow::Result<i32> {
    let hosts = targets(loaded, names, HostKeys::AcceptNew)?;
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.setup()) {
            Ok(steps) => {
                ok += 1;
                if json {
                    output::json(&serde_json::json!({"host": t.name, "ok": true, "steps": steps}))?;
                    continue;
                }
                for (k, v) in &steps {
                    match k.as_str() {
                        "changed" => output::status("Created", &format!("`{}`: {v}", t.name)),
                        "unchanged" => output::status("Unchanged", &format!("`{}`: {v}", t.name)),
                        "served" => output::status(
                            "Served",
                            &format!(
                                "`{}`: {} is {}",
                                t.name,
                                t.host.path,
                                match v.as_str() {
                                    "link" => "hoist's symlink",
                                    "dir" => "a plain directory (the first deploy moves it aside)",
                                    "none" => "absent (the first deploy creates it)",
                                    _ =>
                                        "neither a directory nor a symlink: deploys will refuse it",
                                }
                            ),
                        ),
                        _ => {}
                    }
                }
                let tools: Vec<&str> = steps
                    .iter()
                    .filter(|(k, _)| k == "tool")
                    .map(|(_, v)| v.as_str())
                    .collect();
                output::status(
                    "Ready",
                    &format!(
                        "`{}` is a files host (no agent); it has {}",
                        t.name,
                        tools.join(", ")
                    ),
                );
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn backup(
    loaded: &LoadedConfig,
    host: Option<&str>,
    name: Option<&str>,
    json: bool,
) -> anyhow::Result<i32> {
    let names: Vec<String> = host.map(|h| vec![h.to_string()]).unwrap_or_default();
    let hosts = targets(loaded, &names, HostKeys::Strict)?;
    let actor = common::actor();
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.backup(&loaded.spec, name, &actor)) {
            Ok(done) => {
                ok += 1;
                if json {
                    output::json(&serde_json::json!({"host": t.name, "backups": done}))?;
                    continue;
                }
                for (n, what) in done {
                    output::status("Backed up", &format!("`{n}` on `{}`: {what}", t.name));
                }
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn backups(loaded: &LoadedConfig, host: Option<&str>, json: bool) -> anyhow::Result<i32> {
    let names: Vec<String> = host.map(|h| vec![h.to_string()]).unwrap_or_default();
    let hosts = targets(loaded, &names, HostKeys::Strict)?;
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.backups()) {
            Ok(list) => {
                ok += 1;
                if json {
                    let docs: Vec<serde_json::Value> = list
                        .iter()
                        .map(|(n, f, s)| serde_json::json!({"host": t.name, "name": n, "file": f, "size": s}))
                        .collect();
                    output::json(&docs)?;
                    continue;
                }
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|(n, f, s)| vec![t.name.clone(), n.clone(), f.clone(), common::bytes(*s)])
                    .collect();
                output::table(&["HOST", "NAME", "FILE", "SIZE"], &rows)?;
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

pub fn restore(
    loaded: &LoadedConfig,
    host: Option<&str>,
    name: &str,
    file: Option<&str>,
) -> anyhow::Result<i32> {
    let names: Vec<String> = host.map(|h| vec![h.to_string()]).unwrap_or_default();
    let hosts = targets(loaded, &names, HostKeys::Strict)?;
    let actor = common::actor();
    let mut ok = 0;
    for t in &hosts {
        match common::block_on(t.restore(&loaded.spec, name, file, &actor)) {
            Ok(path) => {
                ok += 1;
                output::status("Restored", &format!("`{name}` on `{}` into {path}", t.name));
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}

/// `hoist secrets` on files hosts: `Some(Some(v))` sets `name`, `Some(None)` unsets it,
/// `None` lists the names. Values live in the host's `secrets.json` (0600), which each
/// release links as `hoist-secrets.json`; never printed.
pub fn secret(
    loaded: &LoadedConfig,
    names: &[String],
    name: &str,
    change: Option<Option<String>>,
    json: bool,
) -> anyhow::Result<i32> {
    let hosts = targets(loaded, names, HostKeys::Strict)?;
    let mut ok = 0;
    for t in &hosts {
        let r = common::block_on(async {
            let mut secrets = t.read_secrets().await?;
            if let Some(change) = &change {
                match change {
                    Some(v) => {
                        secrets.insert(name.to_string(), serde_json::Value::from(v.as_str()));
                    }
                    None => {
                        secrets.remove(name);
                    }
                }
                t.write_secrets(&secrets).await?;
            }
            Ok::<_, FilesError>(secrets.keys().cloned().collect::<Vec<String>>())
        });
        match r {
            Ok(keys) => {
                ok += 1;
                if json {
                    output::json(&serde_json::json!({"host": t.name, "names": keys}))?;
                } else if change.is_none() {
                    for k in keys {
                        output::data(&format!("{}\t{k}", t.name))?;
                    }
                } else {
                    let verb = if matches!(change, Some(Some(_))) {
                        "Set"
                    } else {
                        "Unset"
                    };
                    output::status(verb, &format!("`{name}` on `{}` (files host)", t.name));
                }
            }
            Err(e) => show_error(&e),
        }
    }
    Ok(code(ok, hosts.len()))
}
