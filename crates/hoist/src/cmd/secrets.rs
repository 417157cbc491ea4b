//! `hoist secrets set|unset|list`: an app's secret values on the agent. A value is read
//! from standard input, never from the command line, where other users could see it in
//! the process list; `list` prints names only.

use std::io::Read;

use anyhow::Context;
use hyper::Method;

use hoist_core::names::SecretRefusal;
use hoist_protocol::agent::{SecretNames, SecretValue};

use super::common;
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
    },
    /// Remove a secret
    Unset {
        name: String,
        #[command(flatten)]
        app: AppArg,
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
}

impl AppArg {
    fn name(&self) -> anyhow::Result<String> {
        match &self.app {
            Some(a) => {
                // Checked like the app file's `app`: `--app ""` would name `secrets/.json`.
                if !hoist_core::names::is_app_name(a) {
                    return Err(refused(SecretRefusal::App(a.clone())));
                }
                Ok(a.clone())
            }
            None => Ok(load(&self.file)?.spec.app),
        }
    }
}

fn refused(e: SecretRefusal) -> anyhow::Error {
    with_exit(Exit::Usage, e)
}

pub fn run(command: Command) -> anyhow::Result<()> {
    let client = common::client();
    match command {
        Command::Set { name, app } => {
            let app = app.name()?;
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("cannot read the value from standard input")?;
            // A trailing newline comes from `echo` or a terminal, not from the secret.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value).to_string();
            // The agent checks the same; checking here says so before anything is sent.
            hoist_core::names::check_secret(&app, &name, Some(&value)).map_err(refused)?;
            let path = format!("/v1/secrets/{app}/{name}");
            common::block_on(client.call::<_, serde_json::Value>(
                Method::PUT,
                &path,
                Some(&SecretValue { value }),
            ))
            .map_err(common::agent_error)?;
            output::status("Set", &format!("secret `{name}` of `{app}`"));
        }
        Command::Unset { name, app } => {
            let app = app.name()?;
            let path = format!("/v1/secrets/{app}/{name}");
            common::block_on(client.call::<(), serde_json::Value>(Method::DELETE, &path, None))
                .map_err(common::agent_error)?;
            output::status("Removed", &format!("secret `{name}` of `{app}`"));
        }
        Command::List { app, json } => {
            let app = app.name()?;
            let names: SecretNames = common::block_on(client.get(&format!("/v1/secrets/{app}")))
                .map_err(common::agent_error)?;
            if json {
                output::json(&names)?;
            } else {
                for name in &names.names {
                    output::data(name)?;
                }
            }
        }
    }
    Ok(())
}
