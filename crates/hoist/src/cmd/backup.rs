//! `hoist backup [NAME]`, `hoist backup verify [NAME]`, `hoist backups` and `hoist restore
//! NAME [BACKUP]`: the agent takes, lists, verifies and restores; this file only asks and
//! prints. A restore without `--force` asks on a terminal and refuses in a script (exit
//! 2), since it stops the app and replaces its data.

use std::io::{BufRead, IsTerminal, Write};

use hyper::Method;

use hoist_protocol::backup::{BackupInfo, RestoreRequest, RestoreResult, TakeRequest};

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, Exit, Reported, WithExit};
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(subcommand)]
    pub action: Option<BackupAction>,
    /// On a fleet: the host whose agent does it [default: the first host of the app file]
    #[arg(long, value_name = "HOST", global = true)]
    pub host: Option<String>,
    /// The backup (a `[backups.NAME]` of the app file) [default: all of them]
    pub name: Option<String>,
    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum BackupAction {
    /// Restore the latest backup into a scratch place and check it
    Verify {
        /// The backup [default: all of them]
        name: Option<String>,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct BackupsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// On a fleet: the host whose agent does it [default: the first host of the app file]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// On a fleet: the host whose agent does it [default: the first host of the app file]
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// The backup name (a `[backups.NAME]` of the app file)
    pub name: String,
    /// The backup's id (`hoist backups` lists them) [default: the latest good one]
    pub backup: Option<i64>,
    /// Do not ask: stop the app and restore
    #[arg(long)]
    pub force: bool,
    /// One JSON document on stdout
    #[arg(long)]
    pub json: bool,
}

pub fn run_backup(args: BackupArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if let Some(host) = super::files::one_host(&loaded, args.host.as_deref()) {
        if args.action.is_some() {
            return Err(with_exit(
                Exit::Usage,
                anyhow::anyhow!(
                    "`hoist backup verify` needs hoist's agent, and `{host}` is a files host"
                ),
            ));
        }
        let code = super::files::backup(&loaded, Some(&host), args.name.as_deref(), args.json)?;
        return super::files::finish(code);
    }
    let client = super::fleet::agent_for(&loaded, args.host.as_deref())?;
    let app = loaded.spec.app;
    let (path, name, json, verb) = match args.action {
        Some(BackupAction::Verify { name, json }) => (
            format!("/v1/backups/{app}/verify"),
            name,
            json || args.json,
            "Verified",
        ),
        None => (
            format!("/v1/backups/{app}"),
            args.name,
            args.json,
            "Backed up",
        ),
    };
    let req = TakeRequest {
        name,
        actor: common::actor(),
    };
    let what = req.name.as_deref().map_or_else(
        || format!("every backup of `{app}`"),
        |n| format!("`{n}` of `{app}`"),
    );
    let spinner = output::Progress::spinner(&what, json);
    let rows: Vec<BackupInfo> = common::block_on(client.call(Method::POST, &path, Some(&req)))
        .map_err(common::agent_error)?;
    drop(spinner);
    if json {
        output::json(&rows)?;
    }
    let mut failed = 0;
    for r in &rows {
        if r.status == "ok" {
            if !json {
                let what = match (&r.checked, r.size) {
                    (Some(c), _) => c.clone(),
                    (None, Some(s)) => format!("{} in {}", common::bytes(s), took(r.duration_ms)),
                    (None, None) => String::new(),
                };
                output::status(verb, &format!("`{}` of `{app}` ({}): {what}", r.name, r.id));
            }
        } else {
            failed += 1;
            output::error(&format!(
                "`{}` of `{app}` failed: {}",
                r.name,
                r.error.as_deref().unwrap_or("unknown error")
            ));
        }
    }
    if failed > 0 {
        return Err(Reported(Exit::Failed).into());
    }
    Ok(())
}

pub fn run_backups(args: BackupsArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if let Some(host) = super::files::one_host(&loaded, args.host.as_deref()) {
        let code = super::files::backups(&loaded, Some(&host), args.json)?;
        return super::files::finish(code);
    }
    let client = super::fleet::agent_for(&loaded, args.host.as_deref())?;
    let app = loaded.spec.app;
    let rows: Vec<BackupInfo> = common::block_on(client.get(&format!("/v1/backups?app={app}")))
        .map_err(common::agent_error)?;
    if args.json {
        output::json(&rows)?;
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.name.clone(),
                r.kind.clone(),
                chrono::DateTime::from_timestamp_millis(r.started_at_ms)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                r.trigger.clone(),
                r.status.clone(),
                r.size.map(common::bytes).unwrap_or_default(),
                r.duration_ms.map(|d| took(Some(d))).unwrap_or_default(),
                r.release
                    .as_deref()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
                r.error
                    .clone()
                    .or_else(|| r.checked.clone())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID", "NAME", "KIND", "STARTED", "TRIGGER", "STATUS", "SIZE", "TOOK", "RELEASE", "NOTE",
        ],
        &table,
    )?;
    Ok(())
}

pub fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if let Some(host) = super::files::one_host(&loaded, args.host.as_deref()) {
        if args.backup.is_some() {
            return Err(with_exit(
                Exit::Usage,
                anyhow::anyhow!("`{host}` is a files host: it restores the newest backup (backup ids are the agent's)"),
            ));
        }
        let question = format!(
            "restore `{}` on the files host `{host}` from its newest backup? this replaces the data and restarts the app [y/N] ",
            args.name
        );
        if !args.force && !confirm(&question)? {
            return Err(with_exit(
                Exit::Usage,
                anyhow::anyhow!("restore of `{}` not confirmed; nothing changed", args.name),
            ));
        }
        let code = super::files::restore(&loaded, Some(&host), &args.name, None)?;
        return super::files::finish(code);
    }
    let client = super::fleet::agent_for(&loaded, args.host.as_deref())?;
    let app = loaded.spec.app.clone();
    let which = args.backup.map_or_else(
        || "the latest backup".to_string(),
        |b| format!("backup {b}"),
    );
    if !args.force {
        let question = format!(
            "restore `{}` of `{app}` from {which}? this stops the app's services and replaces their data [y/N] ",
            args.name
        );
        if !confirm(&question)? {
            return Err(WithExit {
                exit: Exit::Usage,
                error: anyhow::anyhow!("restore of `{}` not confirmed; nothing changed", args.name),
                hint: Some("pass `--force` to restore without asking (in a script)".into()),
            }
            .into());
        }
    }
    let req = RestoreRequest {
        name: args.name.clone(),
        backup: args.backup,
        actor: common::actor(),
    };
    let spinner = output::Progress::spinner(
        &format!("restoring `{}` of `{app}` from {which}", args.name),
        args.json,
    );
    let res: RestoreResult = common::block_on(client.call(
        Method::POST,
        &format!("/v1/backups/{app}/restore"),
        Some(&req),
    ))
    .map_err(common::agent_error)?;
    drop(spinner);
    if args.json {
        output::json(&res)?;
    } else {
        output::status(
            "Restored",
            &format!(
                "`{}` of `{app}` from backup {} in {}: {}",
                res.name,
                res.backup,
                took(Some(res.duration_ms)),
                res.checked
            ),
        );
    }
    Ok(())
}

/// Asks on the terminal; false (without asking) when stdin or stderr is not one.
fn confirm(question: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Ok(false);
    }
    let mut err = std::io::stderr().lock();
    err.write_all(question.as_bytes())?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| with_exit(Exit::Failed, e))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes"))
}

fn took(ms: Option<i64>) -> String {
    ms.map(|m| format!("{:.1}s", m as f64 / 1000.0))
        .unwrap_or_default()
}
