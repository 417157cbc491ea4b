//! `hoist alerts [--json]` (firing and recent deliveries on this host's agent),
//! `hoist alerts test` (a test notification to the app's receivers) and
//! `hoist alerts export` (the app's built-in rules as a Prometheus rules file).

use std::fmt::Write as _;

use hoist_core::spec::{alert_rules, AppSpec};
use hyper::Method;

use super::common;
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    file: ConfigArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Send a test notification to the app's webhook and/or Alertmanager
    Test {
        #[command(flatten)]
        file: ConfigArgs,
    },
    /// Print the app's alert rules as a Prometheus rules file (for `promtool check rules`)
    Export {
        #[command(flatten)]
        file: ConfigArgs,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Test { file }) => {
            let loaded = load(&file)?;
            let app = loaded.spec.app.clone();
            let client = common::client();
            let path = format!("/v1/alerts/test/{app}");
            common::block_on(client.call::<(), serde_json::Value>(Method::POST, &path, None))
                .map_err(common::agent_error)?;
            output::status("Sent", &format!("a test notification for `{app}`"));
            Ok(())
        }
        Some(Action::Export { file }) => {
            let loaded = load(&file)?;
            output::data(export(&loaded.spec).trim_end())?;
            Ok(())
        }
        None => {
            let client = common::client();
            let v: serde_json::Value =
                common::block_on(client.get("/v1/alerts")).map_err(common::agent_error)?;
            if args.json {
                return Ok(output::json(&v)?);
            }
            let firing = v["firing"].as_array().cloned().unwrap_or_default();
            if firing.is_empty() {
                output::data("no alert is firing")?;
            }
            for a in &firing {
                output::data(&format!(
                    "FIRING {:<18} {} (since {})\n       {}",
                    a["labels"]["alertname"].as_str().unwrap_or(""),
                    a["summary"].as_str().unwrap_or(""),
                    a["startsAt"].as_str().unwrap_or(""),
                    a["description"].as_str().unwrap_or("")
                ))?;
            }
            let recent = v["recent"].as_array().cloned().unwrap_or_default();
            if !recent.is_empty() {
                output::data("recent deliveries:")?;
            }
            for e in recent.iter().take(20) {
                output::data(&format!(
                    "  {:<13} {}",
                    e["kind"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                ))?;
            }
            Ok(())
        }
    }
}

/// A YAML single-quoted string.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn threshold(spec: &AppSpec, rule: &str) -> Option<f64> {
    match spec.alerts.rules.get(rule) {
        Some(o) if !o.enabled => None,
        Some(o) => o.threshold.or_else(|| alert_rules::default_threshold(rule)),
        None => alert_rules::default_threshold(rule),
    }
}

fn every(s: &hoist_core::schedule::Schedule) -> Option<f64> {
    match s {
        hoist_core::schedule::Schedule::Every(d) => Some(d.as_secs_f64()),
        hoist_core::schedule::Schedule::Cron(_) => None,
    }
}

/// The rules the agent evaluates, over the series of `/metrics`. Log-pattern rules have
/// no series and stay with the agent (listed as comments).
pub fn export(spec: &AppSpec) -> String {
    let app = &spec.app;
    let sel = format!("app=\"{app}\"");
    let mut rules: Vec<(String, String, Option<u64>, String, String)> = Vec::new();
    let mut add = |name: &str, expr: String, for_s: Option<u64>, summary: &str, what: &str| {
        rules.push((name.into(), expr, for_s, summary.into(), what.into()));
    };
    if threshold(spec, "crash_loop").is_some() {
        add(
            "crash_loop",
            format!("increase(hoist_instance_restarts_total{{{sel}}}[1m]) >= 5"),
            None,
            "instance {{ $labels.instance }} of {{ $labels.service }} is crash-looping",
            "read `hoist logs {{ $labels.service }}`, then fix and deploy, or `hoist rollback`",
        );
    }
    if let Some(t) = threshold(spec, "instance_down") {
        add(
            "instance_down",
            format!("hoist_instance_up{{{sel}}} == 0"),
            Some(t as u64),
            "instance {{ $labels.instance }} of {{ $labels.service }} is down",
            "check `hoist status` and `hoist logs {{ $labels.service }}`",
        );
    }
    if let Some(t) = threshold(spec, "http_5xx_ratio") {
        add(
            "http_5xx_ratio",
            format!("sum by (app, service) (rate(hoist_http_requests_total{{{sel},code=~\"5..\"}}[1m])) / sum by (app, service) (rate(hoist_http_requests_total{{{sel}}}[1m])) > {t}"),
            None,
            "{{ $labels.service }} answers {{ $value | humanizePercentage }} 5xx",
            "read `hoist logs {{ $labels.service }}`; if it began with the last deploy, `hoist rollback`",
        );
    }
    if let Some(t) = threshold(spec, "latency_p99") {
        add(
            "latency_p99",
            format!("histogram_quantile(0.99, sum by (app, service, le) (rate(hoist_http_request_duration_seconds_bucket{{{sel}}}[1m]))) > {t}"),
            None,
            "{{ $labels.service }}: p99 latency {{ $value }}s",
            "look for slow queries or an overloaded host; add replicas if it is load",
        );
    }
    if let Some(t) = threshold(spec, "memory_near_limit") {
        add(
            "memory_near_limit",
            format!("hoist_instance_memory_bytes{{{sel}}} / on (app, service, release, instance) hoist_instance_memory_limit_bytes{{{sel}}} >= {t}"),
            None,
            "instance {{ $labels.instance }} is near its memory_limit",
            "it is restarted at the limit: look for a leak, or raise `memory_limit`",
        );
    }
    if let Some(t) = threshold(spec, "disk_free_low") {
        add(
            "disk_free_low",
            format!("hoist_host_disk_free_bytes / hoist_host_disk_size_bytes < {t}"),
            None,
            "little disk is free under hoist's root",
            "remove old releases, logs or backups, or grow the disk",
        );
    }
    if let Some(k) = threshold(spec, "backup_stale") {
        for (name, b) in &spec.backups {
            if let Some(s) = b.schedule.as_ref().and_then(every) {
                add(
                    "backup_stale",
                    format!("time() - hoist_backup_last_success_timestamp_seconds{{{sel},backup=\"{name}\"}} > {}", s * k),
                    None,
                    "backup {{ $labels.backup }} is old",
                    "see `hoist backups` for failed attempts, and run `hoist backup {{ $labels.backup }}`",
                );
            }
        }
    }
    if threshold(spec, "job_failed").is_some() {
        add(
            "job_failed",
            format!("increase(hoist_job_runs_total{{{sel},result!=\"succeeded\"}}[1h]) > 0"),
            None,
            "job {{ $labels.job }} failed",
            "see `hoist jobs`; `hoist jobs run {{ $labels.job }}` tries it again",
        );
    }
    if let Some(k) = threshold(spec, "job_missed") {
        for (name, j) in &spec.jobs {
            if let Some(s) = every(&j.schedule) {
                add(
                    "job_missed",
                    format!("time() - hoist_job_last_success_timestamp_seconds{{{sel},job=\"{name}\"}} > {}", s * k),
                    None,
                    "job {{ $labels.job }} has not succeeded lately",
                    "check `hoist jobs` and `hoist events`",
                );
            }
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Alert rules of `{app}`, as hoist's agent evaluates them (hoist alerts export)."
    );
    for (name, r) in &spec.alerts.logs {
        let _ = writeln!(
            out,
            "# log rule `{name}` ({} matching {:?} {}x in {}s) has no series: the agent evaluates it.",
            r.service,
            r.pattern,
            r.count,
            r.within.as_secs()
        );
    }
    let _ = writeln!(
        out,
        "groups:\n  - name: {}\n    rules:",
        q(&format!("hoist-{app}"))
    );
    if rules.is_empty() {
        out.truncate(out.rfind("    rules:").unwrap_or(out.len()));
        let _ = writeln!(out, "    rules: []");
    }
    for (name, expr, for_s, summary, what) in rules {
        let _ = writeln!(out, "      - alert: {}", q(&format!("hoist_{name}")));
        let _ = writeln!(out, "        expr: {}", q(&expr));
        if let Some(s) = for_s {
            let _ = writeln!(out, "        for: {s}s");
        }
        let _ = writeln!(out, "        labels:\n          rule: {}", q(&name));
        let _ = writeln!(
            out,
            "        annotations:\n          summary: {}\n          description: {}",
            q(&summary),
            q(&what)
        );
    }
    out
}
