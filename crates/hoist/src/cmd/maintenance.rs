//! `hoist maintenance on [--message TEXT] | off`: the proxy answers every request of the
//! app with a 503 page (and `Retry-After`) while its instances keep running. The state is
//! saved by the agent and in the proxy's table, so it survives either one's restart.

use hyper::Method;

use hoist_protocol::agent::{MaintenanceRequest, MaintenanceState};

use super::common;
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
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (on, message, app) = match args.action {
        Action::On { message, app } => (true, message, app),
        Action::Off { app } => (false, None, app),
    };
    let name = match &app.app {
        Some(a) => a.clone(),
        None => load(&app.file)?.spec.app,
    };
    let client = common::client();
    let state: MaintenanceState = common::block_on(client.call(
        Method::POST,
        &format!("/v1/maintenance/{name}"),
        Some(&MaintenanceRequest { on, message }),
    ))
    .map_err(common::agent_error)?;
    if app.json {
        output::json(&state)?;
    } else if state.on {
        output::status(
            "Maintenance",
            &format!("on for `{}`: every request gets the 503 page", state.app),
        );
    } else {
        output::status(
            "Maintenance",
            &format!("off for `{}`: the app serves again", state.app),
        );
    }
    Ok(())
}
