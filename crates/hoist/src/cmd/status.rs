//! `hoist status`, `hoist history`, `hoist releases`, `hoist logs`: what the agent
//! knows, as tables for people or JSON for scripts.

use hoist_protocol::agent::{HistoryRecord, LogLine, ReleaseInfo, Status};
use hyper::Method;

use super::common;
use super::config::{load, ConfigArgs};
use crate::exit::{Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// Check the hash chain: report any record altered or removed
    #[arg(long)]
    pub verify: bool,
    /// How many records
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    /// The service whose logs to show
    pub service: String,
    /// Keep printing new lines as they are written
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only lines since this long ago (`10m`, `1h`)
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines containing this text
    #[arg(long)]
    pub grep: Option<String>,
    /// Only the last N lines
    #[arg(short = 'n', long, default_value_t = 100)]
    pub tail: usize,
    #[arg(long)]
    pub json: bool,
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let app = load(&args.file).ok().map(|l| l.spec.app);
    let status: Status =
        common::block_on(common::client().get("/v1/status")).map_err(common::agent_error)?;
    if args.json {
        output::json(&status)?;
        return Ok(());
    }
    let mut rows = Vec::new();
    for a in status
        .apps
        .iter()
        .filter(|a| app.as_ref().is_none_or(|x| x == &a.app))
    {
        output::status(
            "App",
            &format!(
                "`{}` release `{}`{}{}",
                a.app,
                a.release.as_deref().unwrap_or("-"),
                a.standby
                    .as_deref()
                    .map(|s| format!(", standby `{s}`"))
                    .unwrap_or_default(),
                a.url
                    .as_deref()
                    .map(|u| format!(", at {u}"))
                    .unwrap_or_default()
            ),
        );
        for i in &a.instances {
            rows.push(vec![
                a.app.clone(),
                i.service.clone(),
                i.instance.clone(),
                i.release.chars().take(12).collect(),
                i.state.clone(),
                i.pid.map_or("-".into(), |p| p.to_string()),
                i.port.map_or("-".into(), |p| p.to_string()),
                i.uptime_s.map_or("-".into(), |u| format!("{u}s")),
                i.restarts.to_string(),
                i.rss_bytes
                    .map_or("-".into(), |r| format!("{:.1}MiB", r as f64 / 1048576.0)),
                i.last_exit.clone().unwrap_or_default(),
            ]);
        }
    }
    output::table(
        &[
            "APP",
            "SERVICE",
            "INSTANCE",
            "RELEASE",
            "STATE",
            "PID",
            "PORT",
            "UPTIME",
            "RESTARTS",
            "RSS",
            "LAST EXIT",
        ],
        &rows,
    )?;
    Ok(())
}

pub fn run_history(args: HistoryArgs) -> anyhow::Result<()> {
    let app = load(&args.file).ok().map(|l| l.spec.app);
    let client = common::client();
    if args.verify {
        let report: serde_json::Value =
            common::block_on(client.get("/v1/history?verify=1")).map_err(common::agent_error)?;
        if args.json {
            output::json(&report)?;
        }
        let problems = report["problems"].as_array().cloned().unwrap_or_default();
        if problems.is_empty() {
            output::status(
                "Verified",
                &format!("{} history records, chain intact", report["records"]),
            );
            return Ok(());
        }
        for p in problems {
            output::error(p.as_str().unwrap_or("?"));
        }
        return Err(Reported(Exit::Failed).into());
    }
    let path = format!(
        "/v1/history?limit={}&app={}",
        args.limit,
        app.unwrap_or_default()
    );
    let records: Vec<HistoryRecord> =
        common::block_on(client.call::<(), _>(Method::GET, &path, None))
            .map_err(common::agent_error)?;
    if args.json {
        output::json(&records)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                time(r.at_ms),
                r.app.clone(),
                r.kind.clone(),
                r.release.clone().unwrap_or_default(),
                r.commit
                    .clone()
                    .map(|c| c.chars().take(10).collect())
                    .unwrap_or_default(),
                r.actor.clone(),
                r.result.clone(),
                format!("{:.2}s", r.duration_ms as f64 / 1000.0),
                r.reason.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(
        &[
            "#", "WHEN", "APP", "KIND", "RELEASE", "COMMIT", "WHO", "RESULT", "TOOK", "REASON",
        ],
        &rows,
    )?;
    Ok(())
}

pub fn run_releases(args: StatusArgs) -> anyhow::Result<()> {
    let app = load(&args.file)?.spec.app;
    let list: Vec<ReleaseInfo> =
        common::block_on(common::client().get(&format!("/v1/releases/{app}")))
            .map_err(common::agent_error)?;
    if args.json {
        output::json(&list)?;
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|r| {
            vec![
                r.release.clone(),
                r.role.clone(),
                time(r.created_at_ms),
                r.commit.clone().unwrap_or_default(),
            ]
        })
        .collect();
    output::table(&["RELEASE", "ROLE", "RECEIVED", "COMMIT"], &rows)?;
    Ok(())
}

pub fn run_logs(args: LogsArgs) -> anyhow::Result<()> {
    let app = load(&args.file)?.spec.app;
    let mut path = format!("/v1/logs/{app}/{}?tail={}", args.service, args.tail);
    if let Some(since) = &args.since {
        let d = hoist_core::parse_duration(since)
            .map_err(|e| crate::exit::with_exit(Exit::Usage, anyhow::anyhow!("--since: {e}")))?;
        path.push_str(&format!(
            "&since={}",
            chrono::Utc::now().timestamp_millis() - d.as_millis() as i64
        ));
    }
    if let Some(g) = &args.grep {
        path.push_str(&format!("&grep={}", encode(g)));
    }
    if args.follow {
        path.push_str("&follow=1");
    }
    let mut broken = false;
    common::block_on(
        common::client().stream::<(), LogLine>(Method::GET, &path, None, |l| {
            let r = if args.json {
                output::json(&l)
            } else {
                output::data(&format!("{} {} | {}", l.t, l.instance, l.line))
            };
            broken = r.is_err();
            !broken
        }),
    )
    .map_err(common::agent_error)?;
    Ok(())
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing events as they happen
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
}

/// `hoist events`: what happened on the host (instances exiting, health changes, crash
/// loops, memory limits, deploys), oldest first.
pub fn run_events(args: EventsArgs) -> anyhow::Result<()> {
    let path = format!(
        "/v1/events?after=0{}",
        if args.follow { "&follow=1" } else { "" }
    );
    common::block_on(common::client().stream::<(), serde_json::Value>(
        Method::GET,
        &path,
        None,
        |e| {
            let r = if args.json {
                output::json(&e)
            } else {
                output::data(&format!(
                    "{} {:<26} {:<10} {} {}",
                    time(e["at_ms"].as_i64().unwrap_or(0)),
                    e["kind"].as_str().unwrap_or(""),
                    e["app"].as_str().unwrap_or("-"),
                    e["subject"]
                        .as_str()
                        .map(|s| format!("`{s}`"))
                        .unwrap_or_default(),
                    e["message"].as_str().unwrap_or("")
                ))
            };
            r.is_ok()
        },
    ))
    .map_err(common::agent_error)?;
    Ok(())
}
