//! `hoist secrets set|unset|list`: an app's secret values on the agents of every host of
//! the app file (`--host` picks some). A value is read once from standard input, never
//! from the command line, where other users could see it in the process list, and written
//! to every host; `list` prints names only.

use std::io::Read;

use anyhow::Context;
use hyper::Method;

use hoist_config::LoadedConfig;
use hoist_core::names::SecretRefusal;
use hoist_fleet::hosts::each;
use hoist_fleet::rollout::Target;
use hoist_protocol::agent::{SecretNames, SecretValue};

use super::common::{self, HostArgs, Json};
use super::config::{load, ConfigArgs};
use crate::exit::{with_exit, Exit};
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Set a secret; the value is read from standard input
    Set {
        /// The variable name the app sees (e.g. DATABASE_URL)
        name: String,
        #[command(flatten)]
        app: AppArg,
        /// One JSON document on stdout: each host's answer (never the value)
        #[arg(long)]
        json: bool,
    },
    /// Remove a secret
    Unset {
        name: String,
        #[command(flatten)]
        app: AppArg,
        /// One JSON document on stdout: each host's answer
        #[arg(long)]
        json: bool,
    },
    /// List the names of an app's secrets
    List {
        #[command(flatten)]
        app: AppArg,
        /// One JSON document on stdout
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct AppArg {
    /// The app [default: the app of the app file]
    #[arg(long)]
    app: Option<String>,
    #[command(flatten)]
    file: ConfigArgs,
    #[command(flatten)]
    hosts: HostArgs,
}

impl AppArg {
    /// The app, and the app file whose hosts are reached (none: this machine's agent,
    /// when `--app` is given and there is no app file).
    fn resolve(&self) -> anyhow::Result<(String, Option<LoadedConfig>)> {
        if let Some(a) = &self.app {
            // Checked like the app file's `app`: `--app ""` would name `secrets/.json`.
            if !hoist_core::names::is_app_name(a) {
                return Err(refused(SecretRefusal::App(a.clone())));
            }
        }
        let loaded = match (&self.app, &self.file.config) {
            (Some(_), None) if hoist_config::locate(None).is_err() => None,
            _ => Some(load(&self.file)?),
        };
        let app = match (&self.app, &loaded) {
            (Some(a), _) => a.clone(),
            (None, Some(l)) => l.spec.app.clone(),
            (None, None) => unreachable!("an app file is loaded when no app is named"),
        };
        Ok((app, loaded))
    }
}

/// The files hosts selected, when every selected host is one; a selection of both kinds
/// is refused (the two are written differently: pick each kind with `--host`).
fn files_only(
    loaded: Option<&LoadedConfig>,
    hosts: &HostArgs,
) -> anyhow::Result<Option<Vec<String>>> {
    match super::files::split(loaded, &hosts.hosts) {
        None => Ok(None),
        Some((files, agents)) if agents.is_empty() => Ok(Some(files)),
        Some(_) => Err(common::usage(
            anyhow::anyhow!("the selected hosts mix files hosts and agent hosts"),
            "set secrets on each kind with --host",
        )),
    }
}

/// Secret `name` of `app` written (`body`) or removed (none) on every agent host:
/// `--json` lists the hosts' answers, and a status line names each host that took it.
fn write_each(
    targets: &[Target],
    fleet: bool,
    app: &str,
    name: &str,
    body: Option<&SecretValue>,
    json: bool,
) -> anyhow::Result<()> {
    let (method, done) = match body {
        Some(_) => (Method::PUT, "Set"),
        None => (Method::DELETE, "Removed"),
    };
    let path = format!("/v1/secrets/{app}/{name}");
    let answers = common::block_on(each(targets, |t| {
        let (c, method, path) = (t.client.clone(), method.clone(), &path);
        async move { c.call::<_, serde_json::Value>(method, path, body).await }
    }));
    common::report(answers, fleet, Json::ListAndText.when(json), |host, _| {
        output::status(
            done,
            &format!("secret `{name}` of `{app}`{}", common::on_host(host, fleet)),
        );
        Ok(())
    })
}

/// The secret's value from standard input, checked (the agent checks the same; checking
/// here says so before anything is sent).
fn read_value(app: &str, name: &str) -> anyhow::Result<String> {
    let mut value = String::new();
    std::io::stdin()
        .read_to_string(&mut value)
        .context("cannot read the value from standard input")?;
    // A trailing newline comes from `echo` or a terminal, not from the secret.
    let value = value.strip_suffix('\n').unwrap_or(&value);
    let value = value.strip_suffix('\r').unwrap_or(value).to_string();
    hoist_core::names::check_secret(app, name, Some(&value)).map_err(refused)?;
    Ok(value)
}

fn refused(e: SecretRefusal) -> anyhow::Error {
    with_exit(Exit::Usage, e)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Set { name, app, json } => {
            let (app_name, loaded) = app.resolve()?;
            if let Some(hosts) = files_only(loaded.as_ref(), &app.hosts)? {
                let value = read_value(&app_name, &name)?;
                let l = loaded.as_ref().expect("files hosts come from an app file");
                let code = super::files::secret(l, &hosts, &name, Some(Some(value)), json)?;
                return super::files::finish(code);
            }
            let fleet = common::is_fleet(loaded.as_ref());
            let targets = common::targets(loaded.as_ref(), &app.hosts)?;
            // Read once, written to every host.
            let value = read_value(&app_name, &name)?;
            let body = SecretValue { value };
            write_each(&targets, fleet, &app_name, &name, Some(&body), json)
        }
        Command::Unset { name, app, json } => {
            let (app_name, loaded) = app.resolve()?;
            if let Some(hosts) = files_only(loaded.as_ref(), &app.hosts)? {
                let l = loaded.as_ref().expect("files hosts come from an app file");
                let code = super::files::secret(l, &hosts, &name, Some(None), json)?;
                return super::files::finish(code);
            }
            let fleet = common::is_fleet(loaded.as_ref());
            let targets = common::targets(loaded.as_ref(), &app.hosts)?;
            write_each(&targets, fleet, &app_name, &name, None, json)
        }
        Command::List { app, json } => {
            let (app_name, loaded) = app.resolve()?;
            if let Some(hosts) = files_only(loaded.as_ref(), &app.hosts)? {
                let l = loaded.as_ref().expect("files hosts come from an app file");
                let code = super::files::secret(l, &hosts, "", None, json)?;
                return super::files::finish(code);
            }
            let fleet = common::is_fleet(loaded.as_ref());
            let targets = common::targets(loaded.as_ref(), &app.hosts)?;
            let path = format!("/v1/secrets/{app_name}");
            let answers = common::block_on(each(&targets, |t| {
                let (c, path) = (t.client.clone(), path.clone());
                async move { c.get::<SecretNames>(&path).await }
            }));
            common::report(answers, fleet, Json::Answer.when(json), |host, names| {
                for n in &names.names {
                    if fleet {
                        output::data(&format!("{host} {n}"))?;
                    } else {
                        output::data(n)?;
                    }
                }
                Ok(())
            })
        }
    }
}
