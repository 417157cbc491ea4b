//! `hoist config [-c FILE] [-d DEST] [--json]`: prints the resolved, validated app file.
//! Also the one way every command loads the app file ([`ConfigArgs`] + [`load`]), so that
//! diagnostics, warnings and exit code 2 look the same everywhere. Validation itself lives
//! in `hoist-config`; this file only renders.

use std::path::PathBuf;

use hoist_config::{ConfigError, LoadedConfig};
use hoist_core::spec::{AppSpec, BackupSource, HealthKind, HealthSpec};
use hoist_core::{format_duration, Schedule};

use crate::exit::{Exit, Reported, WithExit};
use crate::output;

/// `-c FILE` and `-d DEST`, shared by every command that reads the app file.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The app file [default: `hoist.toml` in this directory or the nearest parent]
    #[arg(short = 'c', long = "config", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// A destination whose overlay `hoist.<DEST>.toml` is merged over the app file
    #[arg(short = 'd', long = "destination", value_name = "DEST", global = true)]
    pub destination: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Print the resolved configuration as one JSON document
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if args.json {
        output::json(&loaded.spec)?;
    } else {
        for line in summary(&loaded) {
            output::data(&line)?;
        }
    }
    Ok(())
}

/// Loads and validates the app file: prints its warnings; on failure prints the
/// diagnostics and returns an error that exits 2 (design §5).
pub fn load(args: &ConfigArgs) -> anyhow::Result<LoadedConfig> {
    let result = hoist_config::locate(args.config.as_deref())
        .and_then(|path| hoist_config::load(&path, args.destination.as_deref()));
    match result {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                output::diagnostic(&hoist_config::render(&loaded.warnings));
            }
            Ok(loaded)
        }
        Err(err @ ConfigError::Invalid { .. }) => {
            // A blank line between the last diagnostic and the summary, as cargo does.
            output::diagnostic(&format!("{}\n", hoist_config::render(err.diagnostics())));
            output::error(&err.to_string());
            Err(Reported(Exit::Usage).into())
        }
        Err(err) => {
            let hint = err.hint();
            Err(WithExit {
                exit: Exit::Usage,
                error: err.into(),
                hint,
            }
            .into())
        }
    }
}

fn health_text(h: &HealthSpec) -> String {
    let what = match &h.kind {
        HealthKind::Http {
            path,
            expect_status: Some(s),
        } => format!("GET {path} → {s}"),
        HealthKind::Http {
            path,
            expect_status: None,
        } => format!("GET {path}"),
        HealthKind::Tcp => "tcp connect".to_string(),
        HealthKind::Exec { command } => format!("`{command}`"),
    };
    format!("{what} every {}", format_duration(h.interval))
}

fn schedule_text(s: &Schedule) -> String {
    match s {
        Schedule::Every(d) => format!("every {}", format_duration(*d)),
        Schedule::Cron(c) => format!("cron `{c}` (UTC)"),
    }
}

/// The human listing: one block per section, aligned, values as the file would write them.
fn summary(loaded: &LoadedConfig) -> Vec<String> {
    let spec: &AppSpec = &loaded.spec;
    let files: Vec<String> = loaded
        .files
        .iter()
        .map(|f| f.display().to_string())
        .collect();
    let mut out = vec![
        format!("app        {}", spec.app),
        format!("files      {}", files.join(" + ")),
        format!("hash       {}", loaded.resolved_hash),
    ];
    if let Some(cmd) = &spec.build.command {
        out.push(format!("build      `{cmd}`"));
    }
    if !spec.build.include.is_empty() {
        out.push(format!("include    {}", spec.build.include.join(", ")));
    }
    if let Some(check) = &spec.check {
        out.push(format!(
            "check      `{}` (timeout {})",
            check.command,
            format_duration(check.timeout)
        ));
    }
    if !spec.env.is_empty() {
        out.push(format!(
            "env        {}",
            spec.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    if !spec.secrets.required.is_empty() {
        out.push(format!("secrets    {}", spec.secrets.required.join(", ")));
    }
    out.push(String::new());
    out.push("services".to_string());
    for (name, s) in &spec.services {
        let count = match (s.singleton, s.replicas) {
            (true, _) => "singleton".to_string(),
            (false, 1) => "1 replica".to_string(),
            (false, n) => format!("{n} replicas"),
        };
        out.push(format!("  {name}: `{}`", s.command));
        let mut facts = vec![count, format!("roles {}", s.roles.join(","))];
        if let Some(m) = s.memory_limit {
            facts.push(format!("memory {m}"));
        }
        facts.push(format!(
            "stop {} then {} later SIGKILL",
            s.stop_signal,
            format_duration(s.stop_timeout)
        ));
        out.push(format!("    {}", facts.join(", ")));
        if let Some(http) = &s.http {
            out.push(format!(
                "    http {} {}, health {}, drain {}",
                http.domains.join(","),
                http.path_prefix,
                health_text(&http.health),
                format_duration(http.drain_timeout)
            ));
        } else if let Some(h) = &s.health {
            out.push(format!("    health {}", health_text(h)));
        }
        let hosts: Vec<&str> = spec
            .service_hosts(name)
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        out.push(format!("    on {}", hosts.join(", ")));
    }
    if !spec.jobs.is_empty() {
        out.push("jobs".to_string());
        for (name, j) in &spec.jobs {
            out.push(format!("  {name}: `{}`", j.command));
            let scope = if j.singleton {
                "once per fleet"
            } else {
                "on every host"
            };
            out.push(format!(
                "    {}, timeout {}, {scope}",
                schedule_text(&j.schedule),
                format_duration(j.timeout)
            ));
        }
    }
    if spec.hooks.pre_activate.is_some() || spec.hooks.smoke.is_some() {
        out.push("hooks".to_string());
        if let Some(h) = &spec.hooks.pre_activate {
            out.push(format!("  pre_activate: `{h}`"));
        }
        if let Some(h) = &spec.hooks.smoke {
            out.push(format!("  smoke: `{h}`"));
        }
    }
    if !spec.backups.is_empty() {
        out.push("backups".to_string());
        for (name, b) in &spec.backups {
            let source = match &b.source {
                BackupSource::Sqlite { path } => format!("sqlite {path}"),
                BackupSource::Postgres { secret } => format!("postgres ${secret}"),
                BackupSource::Directory { path } => format!("directory {path}"),
            };
            let mut facts = vec![source];
            if let Some(s) = &b.schedule {
                facts.push(schedule_text(s));
            }
            if b.before_deploy {
                facts.push("before deploys".to_string());
            }
            facts.push(format!(
                "keep {}d/{}w/{}m",
                b.keep.daily, b.keep.weekly, b.keep.monthly
            ));
            out.push(format!("  {name}: {}", facts.join(", ")));
        }
    }
    let d = &spec.deploy;
    out.push("deploy".to_string());
    out.push(format!(
        "  keep {} releases, standby {}, health deadline {}",
        d.keep_releases,
        format_duration(d.standby),
        format_duration(d.health_deadline)
    ));
    out.push("hosts".to_string());
    for h in &spec.hosts {
        let via = h
            .ssh
            .as_ref()
            .map_or_else(|| "this machine".to_string(), |a| format!("ssh {a}"));
        match &h.files {
            Some(f) => out.push(format!(
                "  {}: {via}, files host (no agent) serving {}, restart `{}`{}",
                h.name,
                f.path,
                f.restart,
                f.health
                    .as_deref()
                    .map(|u| format!(", health {u}"))
                    .unwrap_or_default()
            )),
            None => out.push(format!("  {}: {via}, roles {}", h.name, h.roles.join(","))),
        }
    }
    out
}
