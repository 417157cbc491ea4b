//! `hoist status`, `hoist history`, `hoist releases`, `hoist logs`, `hoist events`: what
//! the agents know, every host of the app file asked at once (`--host` picks some) and
//! the answers merged, each line naming its host on a fleet; tables for people or JSON
//! for scripts (host-tagged objects on a fleet).

use hoist_fleet::hosts::{each, merge, Answer};
use hoist_fleet::rollout::Target;
use hoist_protocol::agent::{HistoryRecord, LogLine, ReleaseInfo, Status};
use hyper::Method;

use super::common::{self, HostArgs};
use super::config::{load, ConfigArgs};
use super::files;
use crate::exit::{Exit, Reported};
use crate::output;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
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
    #[command(flatten)]
    pub hosts: HostArgs,
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

pub fn run_status(mut args: StatusArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    if let Some((files, agents)) = files::split(loaded.as_ref(), &args.hosts.hosts) {
        let l = loaded.as_ref().expect("split needs an app file");
        let code = files::status(l, &files, args.json)?;
        if agents.is_empty() {
            return files::finish(code);
        }
        args.hosts.hosts = agents;
        return files::combine(code, run_status_agents(args));
    }
    run_status_agents(args)
}

fn run_status_agents(args: StatusArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    let app = loaded.as_ref().map(|l| l.spec.app.clone());
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let answers: Vec<Answer<Status>> = common::block_on(each(&targets, |t| {
        let c = t.client.clone();
        async move { c.get::<Status>("/v1/status").await }
    }));
    if !fleet {
        if let Some(Answer { result: Ok(s), .. }) = answers.first() {
            if args.json {
                output::json(s)?;
                return Ok(());
            }
        }
    }
    if args.json {
        let docs: Vec<serde_json::Value> = answers
            .iter()
            .map(|a| match &a.result {
                Ok(s) => serde_json::json!({"host": a.host, "status": s}),
                Err(e) => serde_json::json!({"host": a.host, "error": e.message}),
            })
            .collect();
        output::json(&docs)?;
        return common::finish(answers, fleet);
    }
    let mut rows = Vec::new();
    for a in &answers {
        let (host, Ok(status)) = (&a.host, &a.result) else {
            continue;
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
                    if i.dropped_lines > 0 {
                        format!("{} ({} log lines dropped)", i.state, i.dropped_lines)
                    } else {
                        i.state.clone()
                    },
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
    common::finish(answers, fleet)
}

pub fn run_history(mut args: HistoryArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    if let Some((files, agents)) = files::split(loaded.as_ref(), &args.hosts.hosts) {
        let l = loaded.as_ref().expect("split needs an app file");
        let code = files::history(l, &files, args.verify, args.limit, args.json)?;
        if agents.is_empty() {
            return files::finish(code);
        }
        args.hosts.hosts = agents;
        return files::combine(code, run_history_agents(args));
    }
    run_history_agents(args)
}

fn run_history_agents(args: HistoryArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    let app = loaded.as_ref().map(|l| l.spec.app.clone());
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    if args.verify {
        // Each host's chain is its own: every host checks its own.
        let answers: Vec<Answer<serde_json::Value>> = common::block_on(each(&targets, |t| {
            let c = t.client.clone();
            async move { c.get("/v1/history?verify=1").await }
        }));
        let mut broken = false;
        for a in &answers {
            let Ok(report) = &a.result else { continue };
            if args.json {
                if fleet {
                    output::json(&common::tagged(&a.host, report))?;
                } else {
                    output::json(report)?;
                }
            }
            let problems = report["problems"].as_array().cloned().unwrap_or_default();
            if problems.is_empty() {
                output::status(
                    "Verified",
                    &format!(
                        "{} history records, chain intact{}",
                        report["records"],
                        common::on_host(&a.host, fleet)
                    ),
                );
            }
            for p in problems {
                broken = true;
                let host = if fleet {
                    format!("`{}`: ", a.host)
                } else {
                    String::new()
                };
                output::error(&format!("{host}{}", p.as_str().unwrap_or("?")));
            }
        }
        common::finish(answers, fleet)?;
        if broken {
            return Err(Reported(Exit::Failed).into());
        }
        return Ok(());
    }
    let path = format!(
        "/v1/history?limit={}&app={}",
        args.limit,
        app.clone().unwrap_or_default()
    );
    let answers = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move {
            c.call::<(), Vec<HistoryRecord>>(Method::GET, &path, None)
                .await
        }
    }));
    // Every host's history merged by time, oldest first as one host's is; the newest
    // `limit` records are kept.
    let mut merged = merge(&answers, |r| (r.at_ms, r.seq));
    merged.drain(..merged.len().saturating_sub(args.limit));
    if args.json && !fleet {
        let records: Vec<&HistoryRecord> = merged.iter().map(|(_, r)| *r).collect();
        output::json(&records)?;
    } else if args.json {
        let docs: Vec<serde_json::Value> =
            merged.iter().map(|(h, r)| common::tagged(h, r)).collect();
        output::json(&docs)?;
    } else {
        history_table(merged.into_iter().map(|(h, r)| (fleet.then_some(h), r)))?;
    }
    common::finish(answers, fleet)
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

pub fn run_releases(mut args: StatusArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file).ok();
    if let Some((files, agents)) = files::split(loaded.as_ref(), &args.hosts.hosts) {
        let l = loaded.as_ref().expect("split needs an app file");
        let code = files::releases(l, &files, args.json)?;
        if agents.is_empty() {
            return files::finish(code);
        }
        args.hosts.hosts = agents;
        return files::combine(code, run_releases_agents(args));
    }
    run_releases_agents(args)
}

fn run_releases_agents(args: StatusArgs) -> anyhow::Result<()> {
    let loaded = load(&args.file)?;
    let app = loaded.spec.app.clone();
    let fleet = common::is_fleet(Some(&loaded));
    let targets = common::targets(Some(&loaded), &args.hosts)?;
    let path = format!("/v1/releases/{app}");
    let answers: Vec<Answer<Vec<ReleaseInfo>>> = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move { c.get(&path).await }
    }));
    let listed: Vec<(&str, &ReleaseInfo)> = answers
        .iter()
        .filter_map(|a| a.result.as_ref().ok().map(|l| (a.host.as_str(), l)))
        .flat_map(|(h, l)| l.iter().map(move |r| (h, r)))
        .collect();
    if args.json {
        if fleet {
            let docs: Vec<serde_json::Value> =
                listed.iter().map(|(h, r)| common::tagged(h, r)).collect();
            output::json(&docs)?;
        } else {
            let list: Vec<&ReleaseInfo> = listed.iter().map(|(_, r)| *r).collect();
            output::json(&list)?;
        }
        return common::finish(answers, fleet);
    }
    let rows: Vec<Vec<String>> = listed
        .iter()
        .map(|(h, r)| {
            let mut row = if fleet {
                vec![h.to_string()]
            } else {
                Vec::new()
            };
            row.extend([
                r.release.clone(),
                r.role.clone(),
                time(r.created_at_ms),
                r.commit.clone().unwrap_or_default(),
            ]);
            row
        })
        .collect();
    let mut header = if fleet { vec!["HOST"] } else { Vec::new() };
    header.extend(["RELEASE", "ROLE", "RECEIVED", "COMMIT"]);
    output::table(&header, &rows)?;
    common::finish(answers, fleet)
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
    let fleet = common::is_fleet(Some(&loaded));
    let targets = common::targets(Some(&loaded), &args.hosts)?;
    fleet_logs(&targets, &path, args.follow, args.json, fleet)
}

/// Every host's lines, each prefixed with its host: merged by time, or (following)
/// printed as they arrive from all hosts at once.
fn fleet_logs(
    targets: &[Target],
    path: &str,
    follow: bool,
    json: bool,
    fleet: bool,
) -> anyhow::Result<()> {
    let print = |host: &str, l: &LogLine| -> bool {
        let r = if json && !fleet {
            output::json(l)
        } else if !fleet {
            output::data(&format!("{} {} | {}", l.t, l.instance, l.line))
        } else if json {
            let mut v = serde_json::to_value(l).unwrap_or_default();
            v["host"] = serde_json::Value::from(host);
            output::json(&v)
        } else {
            output::data(&format!("{host} {} {} | {}", l.t, l.instance, l.line))
        };
        r.is_ok()
    };
    if follow {
        // Printed as they arrive from all hosts at once.
        let answers = common::block_on(each(targets, |t| {
            let (c, name) = (t.client.clone(), t.name.clone());
            async move {
                c.stream::<(), LogLine>(Method::GET, path, None, |l| print(&name, &l))
                    .await
            }
        }));
        return common::finish(answers, fleet);
    }
    let answers = common::block_on(each(targets, |t| {
        let c = t.client.clone();
        async move {
            let mut lines = Vec::new();
            c.stream::<(), LogLine>(Method::GET, path, None, |l| {
                lines.push(l);
                true
            })
            .await
            .map(|()| lines)
        }
    }));
    // Timestamps share one format, so text order is time order.
    for (host, l) in merge(&answers, |l| l.t.clone()) {
        if !print(host, l) {
            break;
        }
    }
    common::finish(answers, fleet)
}

/// A query value: everything but unreserved characters percent-encoded.
fn encode(s: &str) -> String {
    const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, QUERY).to_string()
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| ms.to_string())
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub file: ConfigArgs,
    #[command(flatten)]
    pub hosts: HostArgs,
    /// Keep printing events as they happen
    #[arg(short = 'f', long)]
    pub follow: bool,
    #[arg(long)]
    pub json: bool,
}

/// `hoist events`: what happened on the hosts (instances exiting, health changes, crash
/// loops, memory limits, deploys), oldest first, merged by time across hosts; following,
/// as they happen on any host.
pub fn run_events(args: EventsArgs) -> anyhow::Result<()> {
    // Without an app file, this machine's agent and every app on it.
    let loaded = match args.file.config {
        Some(_) => Some(load(&args.file)?),
        None => load(&args.file).ok(),
    };
    let fleet = common::is_fleet(loaded.as_ref());
    let targets = common::targets(loaded.as_ref(), &args.hosts)?;
    let path = format!(
        "/v1/events?after=0{}",
        if args.follow { "&follow=1" } else { "" }
    );
    let print = |host: &str, e: &serde_json::Value| -> bool {
        let r = if args.json {
            if fleet {
                output::json(&common::tagged(host, e))
            } else {
                output::json(e)
            }
        } else {
            output::data(&format!(
                "{}{} {:<26} {:<10} {} {}",
                if fleet {
                    format!("{host} ")
                } else {
                    String::new()
                },
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
    };
    if args.follow {
        let answers = common::block_on(each(&targets, |t| {
            let (c, name, path) = (t.client.clone(), t.name.clone(), path.clone());
            async move {
                c.stream::<(), serde_json::Value>(Method::GET, &path, None, |e| print(&name, &e))
                    .await
            }
        }));
        return common::finish(answers, fleet);
    }
    let answers = common::block_on(each(&targets, |t| {
        let (c, path) = (t.client.clone(), path.clone());
        async move {
            let mut events = Vec::new();
            c.stream::<(), serde_json::Value>(Method::GET, &path, None, |e| {
                events.push(e);
                true
            })
            .await
            .map(|()| events)
        }
    }));
    for (host, e) in merge(&answers, |e| e["at_ms"].as_i64().unwrap_or(0)) {
        if !print(host, e) {
            break;
        }
    }
    common::finish(answers, fleet)
}
