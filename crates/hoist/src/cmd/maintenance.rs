//! `hoist maintenance on [--message TEXT] | off`: the proxy answers every request of the
//! app with a 503 page (and `Retry-After`) while its instances keep running. The state is
//! saved by the agent and in the proxy's table, so it survives either one's restart. Every
//! host of the app file is asked (`--host` picks some).

use hyper::Method;

use hoist_fleet::hosts::each;
use hoist_protocol::agent::{MaintenanceRequest, MaintenanceState};

use super::common::{self, HostArgs, Json};
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Serve the maintenance page instead of the app
    On {
        /// The text of the page
        #[arg(long)]
        message: Option<String>,
        #[command(flatten)]
        app: AppArg,
    },
    /// Serve the app again
    Off {
        #[command(flatten)]
        app: AppArg,
    },
}

#[derive(Debug, clap::Args)]
struct AppArg {
    /// The app [default: the app of the app file]
    #[arg(long)]
    app: Option<String>,
    /// One JSON document on stdout
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    file: ConfigArgs,
    #[command(flatten)]
    hosts: HostArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (on, message, app) = match args.action {
        Action::On { message, app } => (true, message, app),
        Action::Off { app } => (false, None, app),
    };
    // With `--app` and no app file here, this machine's agent.
    let loaded = match (&app.app, &app.file.config) {
        (Some(_), None) if hoist_config::locate(None).is_err() => None,
        _ => Some(load(&app.file)?),
    };
    let name = match (&app.app, &loaded) {
        (Some(a), _) => a.clone(),
        (None, Some(l)) => l.spec.app.clone(),
        (None, None) => unreachable!("an app file is loaded when no app is named"),
    };
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &app.hosts)?;
    let path = format!("/v1/maintenance/{name}");
    let body = MaintenanceRequest { on, message };
    let answers = common::block_on(each(&targets, |t| {
        let (c, path, body) = (t.client.clone(), path.clone(), &body);
        async move {
            c.call::<_, MaintenanceState>(Method::POST, &path, Some(body))
                .await
        }
    }));
    common::report(
        answers,
        fleet,
        Json::Answer.when(app.json),
        |host, state| {
            let at = common::on_host(host, fleet);
            if state.on {
                output::status(
                    "Maintenance",
                    &format!(
                        "on for `{}`{at}: every request gets the 503 page",
                        state.app
                    ),
                );
            } else {
                output::status(
                    "Maintenance",
                    &format!("off for `{}`{at}: the app serves again", state.app),
                );
            }
            Ok(())
        },
    )
}
