//! `hoist start|stop|restart SERVICE` and `hoist jobs [run NAME]`: acting on what runs.

use hyper::Method;

use super::common;
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// The service
    pub service: String,
}

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(subcommand)]
    pub action: Option<JobsAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// Run a job now (refused while its previous run is still going)
    Run {
        /// The job
        name: String,
    },
}

pub fn run_service(action: &str, args: ServiceArgs) -> anyhow::Result<()> {
    let app = load(&args.file)?.spec.app;
    let path = format!("/v1/services/{app}/{}/{action}", args.service);
    common::block_on(common::client().call::<(), serde_json::Value>(Method::POST, &path, None))
        .map_err(common::agent_error)?;
    let done = match action {
        "start" => "Started",
        "stop" => "Stopped",
        _ => "Restarted",
    };
    output::status(done, &format!("`{}` of `{app}`", args.service));
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
}

/// `hoist down`: the app's instances stop and its routes go; its releases stay kept, so
/// the next `hoist deploy` brings it back.
pub fn run_down(args: DownArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    if super::fleet::is_fleet(&loaded.spec) {
        return Err(crate::exit::with_exit(
            crate::exit::Exit::Usage,
            anyhow::anyhow!(
                "`hoist down` acts on the local agent only; this app file names remote hosts"
            ),
        ));
    }
    let app = loaded.spec.app;
    let actor: String =
        percent_encoding::utf8_percent_encode(&common::actor(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let path = format!("/v1/apps/{app}/down?actor={actor}");
    let v: serde_json::Value =
        common::block_on(common::client().call::<(), _>(Method::POST, &path, None))
            .map_err(common::agent_error)?;
    output::status(
        "Down",
        &format!("`{app}`: {}", v["summary"].as_str().unwrap_or("stopped")),
    );
    Ok(())
}

pub fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let app = load(&args.file)?.spec.app;
    let client = common::client();
    if let Some(JobsAction::Run { name }) = args.action {
        let v: serde_json::Value = common::block_on(client.call::<(), _>(
            Method::POST,
            &format!("/v1/jobs/{app}/{name}/run"),
            None,
        ))
        .map_err(common::agent_error)?;
        if args.json {
            output::json(&v)?;
        } else {
            output::status(
                "Started",
                &format!("job `{name}` of `{app}` (run {})", v["run"]),
            );
        }
        return Ok(());
    }
    let runs: Vec<serde_json::Value> = common::block_on(client.get(&format!("/v1/jobs?app={app}")))
        .map_err(common::agent_error)?;
    if args.json {
        output::json(&runs)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            let started = r["started_at_ms"].as_i64().unwrap_or(0);
            let took = r["finished_at_ms"]
                .as_i64()
                .map(|f| format!("{:.1}s", (f - started) as f64 / 1000.0));
            vec![
                r["id"].to_string(),
                r["job"].as_str().unwrap_or("").to_string(),
                chrono::DateTime::from_timestamp_millis(started)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                r["trigger"].as_str().unwrap_or("").to_string(),
                r["status"].as_str().unwrap_or("").to_string(),
                r["exit_code"]
                    .as_i64()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                took.unwrap_or_default(),
                r["release"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
            ]
        })
        .collect();
    output::table(
        &[
            "RUN", "JOB", "STARTED", "TRIGGER", "STATUS", "EXIT", "TOOK", "RELEASE",
        ],
        &rows,
    )?;
    Ok(())
}
