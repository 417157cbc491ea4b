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
    let loaded = load(&args.file).ok();
    let app = loaded.as_ref().map(|l| l.spec.app.clone());
    let answers: Vec<(String, Result<Status, String>)> = match fleet_targets(loaded.as_ref())? {
        Some(targets) => common::block_on(each_host(&targets, |c| async move {
            c.get::<Status>("/v1/status").await
        })),
        None => {
            let status: Status = common::block_on(common::client().get("/v1/status"))
                .map_err(common::agent_error)?;
            if args.json {
                output::json(&status)?;
                return Ok(());
            }
            vec![(String::new(), Ok(status))]
        }
    };
    if args.json {
        let docs: Vec<serde_json::Value> = answers
            .iter()
            .map(|(host, r)| match r {
                Ok(s) => serde_json::json!({"host": host, "status": s}),
                Err(e) => serde_json::json!({"host": host, "error": e}),
            })
            .collect();
        output::json(&docs)?;
        return partial(&answers);
    }
    let fleet = answers.len() > 1 || answers.iter().any(|(h, _)| !h.is_empty());
    let mut rows = Vec::new();
    for (host, status) in &answers {
        let status = match status {
            Ok(s) => s,
            Err(e) => {
                output::error(&format!("`{host}`: {e}"));
                continue;
            }
        };
        let prefix = if fleet {
            format!("`{host}`: ")
        } else {
            String::new()
        };
        for a in status
            .apps
            .iter()
            .filter(|a| app.as_ref().is_none_or(|x| x == &a.app))
        {
            output::status(
                "App",
                &format!(
                    "{prefix}`{}` release `{}`{}{}",
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
                let mut row = if fleet {
                    vec![host.clone()]
                } else {
                    Vec::new()
                };
                row.extend([
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
                rows.push(row);
            }
        }
    }
    let mut header = if fleet { vec!["HOST"] } else { Vec::new() };
    header.extend([
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
    ]);
    output::table(&header, &rows)?;
    partial(&answers)
}

/// The hosts of a fleet app file (over SSH), or `None` for this machine's agent.
pub(crate) fn fleet_targets(
    loaded: Option<&hoist_config::LoadedConfig>,
) -> anyhow::Result<Option<Vec<hoist_fleet::rollout::Target>>> {
    match loaded {
        Some(l) if super::fleet::is_fleet(&l.spec) => Ok(Some(super::fleet::targets(
            l,
            hoist_fleet::HostKeys::Strict,
        )?)),
        _ => Ok(None),
    }
}

/// Asks every host at once; each answer (or its error, as one line) with its host name.
pub(crate) async fn each_host<T, F, Fut>(
    targets: &[hoist_fleet::rollout::Target],
    ask: F,
) -> Vec<(String, Result<T, String>)>
where
    F: Fn(hoist_agent::client::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, hoist_agent::client::ClientError>>,
{
    let asks = targets.iter().map(|t| {
        let fut = ask(t.client.clone());
        async move { (t.name.clone(), fut.await.map_err(|e| t.explain(&e))) }
    });
    futures_util::future::join_all(asks).await
}

/// Exit 3 when some hosts did not answer, 1 when none did.
fn partial<T>(answers: &[(String, Result<T, String>)]) -> anyhow::Result<()> {
    let failed = answers.iter().filter(|(_, r)| r.is_err()).count();
    match failed {
        0 => Ok(()),
        n if n == answers.len() => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}

pub fn run_history(args: HistoryArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    let app = loaded.as_ref().map(|l| l.spec.app.clone());
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
        app.clone().unwrap_or_default()
    );
    if let Some(targets) = fleet_targets(loaded.as_ref())? {
        return fleet_history(&targets, &path, args.limit, args.json);
    }
    let records: Vec<HistoryRecord> =
        common::block_on(client.call::<(), _>(Method::GET, &path, None))
            .map_err(common::agent_error)?;
    if args.json {
        output::json(&records)?;
        return Ok(());
    }
    history_table(records.iter().map(|r| (None, r)))
}

/// Every host's history merged by time (newest first, as one host's is), host first.
fn fleet_history(
    targets: &[hoist_fleet::rollout::Target],
    path: &str,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let answers = common::block_on(each_host(targets, |c| async move {
        c.call::<(), Vec<HistoryRecord>>(Method::GET, path, None)
            .await
    }));
    let mut merged: Vec<(&str, &HistoryRecord)> = Vec::new();
    for (host, r) in &answers {
        match r {
            Ok(records) => merged.extend(records.iter().map(|rec| (host.as_str(), rec))),
            Err(e) => output::error(&format!("`{host}`: {e}")),
        }
    }
    merged.sort_by(|a, b| b.1.at_ms.cmp(&a.1.at_ms).then(a.0.cmp(b.0)));
    merged.truncate(limit);
    if json {
        let docs: Vec<serde_json::Value> = merged
            .iter()
            .map(|(host, r)| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["host"] = serde_json::Value::from(*host);
                v
            })
            .collect();
        output::json(&docs)?;
    } else {
        history_table(merged.into_iter().map(|(h, r)| (Some(h), r)))?;
    }
    partial(&answers)
}

fn history_table<'a>(
    records: impl Iterator<Item = (Option<&'a str>, &'a HistoryRecord)>,
) -> anyhow::Result<()> {
    let mut fleet = false;
    let rows: Vec<Vec<String>> = records
        .map(|(host, r)| {
            let mut row = Vec::new();
            if let Some(h) = host {
                fleet = true;
                row.push(h.to_string());
            }
            row.extend([
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
            ]);
            row
        })
        .collect();
    let mut header = if fleet { vec!["HOST"] } else { Vec::new() };
    header.extend([
        "#", "WHEN", "APP", "KIND", "RELEASE", "COMMIT", "WHO", "RESULT", "TOOK", "REASON",
    ]);
    output::table(&header, &rows)?;
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
    let loaded = load(&args.file)?;
    let app = loaded.spec.app.clone();
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
    if let Some(targets) = fleet_targets(Some(&loaded))? {
        return fleet_logs(&targets, &path, args.follow, args.json);
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

/// Every host's lines, each prefixed with its host: merged by time, or (following)
/// printed as they arrive from all hosts at once.
fn fleet_logs(
    targets: &[hoist_fleet::rollout::Target],
    path: &str,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let print = |host: &str, l: &LogLine| -> bool {
        let r = if json {
            let mut v = serde_json::to_value(l).unwrap_or_default();
            v["host"] = serde_json::Value::from(host);
            output::json(&v)
        } else {
            output::data(&format!("{host} {} {} | {}", l.t, l.instance, l.line))
        };
        r.is_ok()
    };
    if follow {
        let answers = common::block_on(futures_util::future::join_all(targets.iter().map(
            |t| async move {
                let r = t
                    .client
                    .stream::<(), LogLine>(Method::GET, path, None, |l| print(&t.name, &l))
                    .await
                    .map_err(|e| t.explain(&e));
                if let Err(e) = &r {
                    output::error(&format!("`{}`: {e}", t.name));
                }
                (t.name.clone(), r)
            },
        )));
        return partial(&answers);
    }
    let answers = common::block_on(each_host(targets, |c| async move {
        let mut lines = Vec::new();
        c.stream::<(), LogLine>(Method::GET, path, None, |l| {
            lines.push(l);
            true
        })
        .await
        .map(|()| lines)
    }));
    let mut merged: Vec<(&str, &LogLine)> = Vec::new();
    for (host, r) in &answers {
        match r {
            Ok(lines) => merged.extend(lines.iter().map(|l| (host.as_str(), l))),
            Err(e) => output::error(&format!("`{host}`: {e}")),
        }
    }
    // Timestamps share one format, so text order is time order.
    merged.sort_by(|a, b| a.1.t.cmp(&b.1.t));
    for (host, l) in merged {
        if !print(host, l) {
            break;
        }
    }
    partial(&answers)
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
