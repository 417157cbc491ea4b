//! `hoist start|stop|restart SERVICE` and `hoist jobs [run NAME]`: acting on what runs, on
//! every host of the app file that runs it (`--host` picks some).

use hyper::Method;

use hoist_config::LoadedConfig;
use hoist_fleet::hosts::{each, merge, Answer};
use hoist_fleet::rollout::Target;

use super::common::{self, HostArgs, Json};
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// The service
    pub service: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    #[command(subcommand)]
    pub action: Option<JobsAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum JobsAction {
    /// Run a job now (refused while its previous run is still going); a singleton job
    /// runs on its one host, any other on every host that may run it
    Run {
        /// The job
        name: String,
    },
}

/// The picked targets among `placed` (the hosts the app file places something on); a
/// usage error naming where it runs when none is left.
fn placed_targets(
    loaded: &LoadedConfig,
    hosts: &HostArgs,
    what: &str,
    placed: &[String],
) -> anyhow::Result<Vec<Target>> {
    let targets: Vec<Target> = common::targets(Some(loaded), hosts)?
        .into_iter()
        .filter(|t| placed.contains(&t.name))
        .collect();
    if targets.is_empty() {
        return Err(common::usage(
            anyhow::anyhow!("{what} runs on none of the hosts picked"),
            format!("it runs on {}", placed.join(", ")),
        ));
    }
    Ok(targets)
}

pub fn run_service(action: &str, args: ServiceArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let app = loaded.spec.app.clone();
    let service = args.service.clone();
    // On a files host no service runs under hoist: say that before anything else.
    super::files::refuse_agent_command(&loaded, &args.hosts.hosts)?;
    if !loaded.spec.services.contains_key(&service) {
        let known: Vec<&str> = loaded.spec.services.keys().map(String::as_str).collect();
        return Err(common::usage(
            anyhow::anyhow!("`{app}` has no service `{service}`"),
            format!("its services: {}", known.join(", ")),
        ));
    }
    let fleet = common::is_fleet(Some(&loaded));
    let placed: Vec<String> = loaded
        .spec
        .service_hosts(&service)
        .iter()
        .map(|h| h.name.clone())
        .collect();
    let targets = placed_targets(&loaded, &args.hosts, &format!("`{service}`"), &placed)?;
    let path = format!("/v1/services/{app}/{service}/{action}");
    let ask = |t: &Target| {
        let (c, path) = (t.client.clone(), path.clone());
        async move {
            c.call::<(), serde_json::Value>(Method::POST, &path, None)
                .await
        }
    };
    let answers: Vec<Answer<serde_json::Value>> = if action == "restart" {
        // Host after host, as instances go one after another on each: the service keeps
        // serving from the hosts not being restarted.
        common::block_on(async {
            let mut answers = Vec::new();
            for t in &targets {
                answers.extend(each(std::slice::from_ref(t), ask).await);
            }
            answers
        })
    } else {
        common::block_on(each(&targets, ask))
    };
    let done = match action {
        "start" => "Started",
        "stop" => "Stopped",
        _ => "Restarted",
    };
    common::report(answers, fleet, Json::List.when(args.json), |host, _| {
        output::status(
            done,
            &format!("`{service}` of `{app}`{}", common::on_host(host, fleet)),
        );
        Ok(())
    })
}

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    #[arg(long)]
    pub json: bool,
}

/// `hoist down`: the app's instances stop and its routes go, on every host picked; its
/// releases stay kept, so the next `hoist deploy` brings it back.
pub fn run_down(args: DownArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let app = loaded.spec.app.clone();
    let fleet = common::is_fleet(Some(&loaded));
    let targets = common::targets(Some(&loaded), &args.hosts)?;
    let actor: String =
        percent_encoding::utf8_percent_encode(&common::actor(), percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    let path = format!("/v1/apps/{app}/down?actor={actor}");
    let answers: Vec<Answer<serde_json::Value>> = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move {
            c.call::<(), serde_json::Value>(Method::POST, &path, None)
                .await
        }
    }));
    common::report(answers, fleet, Json::List.when(args.json), |host, v| {
        output::status(
            "Down",
            &format!(
                "`{app}`{}: {}",
                common::on_host(host, fleet),
                v["summary"].as_str().unwrap_or("stopped")
            ),
        );
        Ok(())
    })
}

pub fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let app = loaded.spec.app.clone();
    let fleet = common::is_fleet(Some(&loaded));
    if let Some(JobsAction::Run { name }) = args.action {
        let Some(job) = loaded.spec.jobs.get(&name) else {
            let known: Vec<&str> = loaded.spec.jobs.keys().map(String::as_str).collect();
            return Err(common::usage(
                anyhow::anyhow!("`{app}` has no job `{name}`"),
                format!("its jobs: {}", known.join(", ")),
            ));
        };
        // A singleton runs where it is placed (the first host that may run it), once.
        let placed: Vec<String> = loaded
            .spec
            .job_hosts(&name)
            .iter()
            .map(|h| h.name.clone())
            .collect();
        let targets = placed_targets(
            &loaded,
            &args.hosts,
            &format!(
                "job `{name}`{}",
                if job.singleton { " (a singleton)" } else { "" }
            ),
            &placed,
        )?;
        let path = format!("/v1/jobs/{app}/{name}/run");
        let answers: Vec<Answer<serde_json::Value>> = common::block_on(each(&targets, |t| {
            let (c, path) = (t.client.clone(), path.clone());
            async move { c.call::<(), _>(Method::POST, &path, None).await }
        }));
        return common::report(answers, fleet, Json::Answer.when(args.json), |host, v| {
            output::status(
                "Started",
                &format!(
                    "job `{name}` of `{app}` (run {}){}",
                    v["run"],
                    common::on_host(host, fleet)
                ),
            );
            Ok(())
        });
    }
    let targets = common::targets(Some(&loaded), &args.hosts)?;
    let path = format!("/v1/jobs?app={app}");
    let answers: Vec<Answer<Vec<serde_json::Value>>> = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move { c.get(&path).await }
    }));
    // Newest first, as one host lists them.
    let runs = merge(&answers, |r| {
        std::cmp::Reverse(r["started_at_ms"].as_i64().unwrap_or(0))
    });
    if args.json {
        let docs: Vec<serde_json::Value> = runs
            .iter()
            .map(|(h, r)| {
                if fleet {
                    common::tagged(h, r)
                } else {
                    (*r).clone()
                }
            })
            .collect();
        output::json(&docs)?;
        return common::finish(answers, fleet);
    }
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|(host, r)| {
            let started = r["started_at_ms"].as_i64().unwrap_or(0);
            let took = r["finished_at_ms"]
                .as_i64()
                .map(|f| format!("{:.1}s", (f - started) as f64 / 1000.0));
            let mut row = if fleet {
                vec![host.to_string()]
            } else {
                Vec::new()
            };
            row.extend([
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
            ]);
            row
        })
        .collect();
    let mut header = if fleet { vec!["HOST"] } else { Vec::new() };
    header.extend([
        "RUN", "JOB", "STARTED", "TRIGGER", "STATUS", "EXIT", "TOOK", "RELEASE",
    ]);
    output::table(&header, &rows)?;
    common::finish(answers, fleet)
}
