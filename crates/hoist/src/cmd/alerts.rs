//! `hoist alerts [--json]` (firing and recent deliveries on every host's agent),
//! `hoist alerts test` (a test notification to the app's receivers) and
//! `hoist alerts export` (the app's built-in rules as a Prometheus rules file).

use std::fmt::Write as _;

use hoist_core::spec::{alert_rules, AppSpec};
use hyper::Method;

use hoist_fleet::hosts::each;

use super::common::{self, HostArgs, Json};
use super::config::{load, ConfigArgs};
use crate::output;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    file: ConfigArgs,
    #[command(flatten)]
    hosts: HostArgs,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Send a test notification to the app's webhook and/or Alertmanager
    Test {
        #[command(flatten)]
        file: ConfigArgs,
        #[command(flatten)]
        hosts: HostArgs,
    },
    /// Print the app's alert rules as a Prometheus rules file (for `promtool check rules`)
    Export {
        #[command(flatten)]
        file: ConfigArgs,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    match args.action {
        Some(Action::Test { file, hosts }) => {
            let loaded = load(&file)?;
            let app = loaded.spec.app.clone();
            let fleet = common::is_fleet(Some(&loaded));
            let targets = common::targets(Some(&loaded), &hosts)?;
            let path = format!("/v1/alerts/test/{app}");
            let answers = common::block_on(each(&targets, |t| {
                let (c, path) = (t.client.clone(), path.clone());
                async move {
                    c.call::<(), serde_json::Value>(Method::POST, &path, None)
                        .await
                }
            }));
            common::report(answers, fleet, Json::Off, |host, _| {
                output::status(
                    "Sent",
                    &format!(
                        "a test notification for `{app}`{}",
                        common::on_host(host, fleet)
                    ),
                );
                Ok(())
            })
        }
        Some(Action::Export { file }) => {
            let loaded = load(&file)?;
            output::data(export(&loaded.spec).trim_end())?;
            Ok(())
        }
        None => {
            // Without an app file here (and none named), this machine's agent.
            let loaded = match &args.file.config {
                None if hoist_config::locate(None).is_err() => None,
                _ => Some(load(&args.file)?),
            };
            let fleet = common::is_fleet(loaded.as_ref());
            let targets = common::targets(loaded.as_ref(), &args.hosts)?;
            let answers = common::block_on(each(&targets, |t| {
                let c = t.client.clone();
                async move { c.get::<serde_json::Value>("/v1/alerts").await }
            }));
            common::report(answers, fleet, Json::Answer.when(args.json), |host, v| {
                let at = common::host_prefix(host, fleet);
                let firing = v["firing"].as_array().cloned().unwrap_or_default();
                if firing.is_empty() {
                    output::data(&format!("{at}no alert is firing"))?;
                }
                for f in &firing {
                    output::data(&format!(
                        "{at}FIRING {:<18} {} (since {})\n       {}",
                        f["labels"]["alertname"].as_str().unwrap_or(""),
                        f["summary"].as_str().unwrap_or(""),
                        f["startsAt"].as_str().unwrap_or(""),
                        f["description"].as_str().unwrap_or("")
                    ))?;
                }
                let recent = v["recent"].as_array().cloned().unwrap_or_default();
                if !recent.is_empty() {
                    output::data(&format!("{at}recent deliveries:"))?;
                }
                for e in recent.iter().take(20) {
                    output::data(&format!(
                        "{at}  {:<13} {}",
                        e["kind"].as_str().unwrap_or(""),
                        e["message"].as_str().unwrap_or("")
                    ))?;
                }
                Ok(())
            })
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
            format!(
                "increase(hoist_job_runs_total{{{sel},result!~\"succeeded|skipped\"}}[1h]) > 0"
            ),
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
                    format!(
                        "time() - hoist_job_last_success_timestamp_seconds{{{sel},job=\"{name}\"}} > {}",
                        s * k + hoist_core::spec::alert_rules::JOB_MISSED_GRACE_SECS as f64
                    ),
                    None,
                    "job {{ $labels.job }} has not succeeded lately",
                    "check `hoist jobs` and `hoist events`",
                );
            }
        }
    }
    if let Some(days) = threshold(spec, "cert_expiring") {
        add(
            "cert_expiring",
            format!(
                "hoist_certificate_expiry_timestamp_seconds{{{sel}}} - time() < {}",
                days * 86400.0
            ),
            None,
            "the certificate of {{ $labels.domain }} expires soon",
            "see `hoist certs`: replace a file certificate, or find why ACME did not renew",
        );
    }
    for (name, slo) in &spec.slo {
        let sel = format!("{sel},service=\"{}\"", slo.service);
        let allowed = 1.0 - slo.objective / 100.0;
        // The bad share over a window: 5xx, plus (with a latency) what took longer.
        let bad = |w: &str| {
            let mut bad =
                format!("sum(rate(hoist_http_requests_total{{{sel},code=~\"5..\"}}[{w}]))");
            if let Some(l) = slo.latency {
                let le = l.as_secs_f64();
                bad = format!(
                    "({bad} + sum(rate(hoist_http_request_duration_seconds_count{{{sel}}}[{w}])) - sum(rate(hoist_http_request_duration_seconds_bucket{{{sel},le=\"{le}\"}}[{w}])))"
                );
            }
            format!("{bad} / sum(rate(hoist_http_requests_total{{{sel}}}[{w}]))")
        };
        for (rule, _, long, short) in hoist_core::spec::slo::BURN_ALERTS {
            let Some(k) = threshold(spec, rule) else {
                continue;
            };
            let w = |d: std::time::Duration| format!("{}m", d.as_secs() / 60);
            add(
                rule,
                format!(
                    "({} / {allowed} > {k}) and ({} / {allowed} > {k})",
                    bad(&w(long)),
                    bad(&w(short))
                ),
                None,
                &format!("SLO {name} of {} burns its error budget fast", slo.service),
                "see `hoist slo` and `hoist logs`; if it began with the last deploy, `hoist rollback`",
            );
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
    if threshold(spec, "cert_renewal_failed").is_some() {
        let _ = writeln!(
            out,
            "# cert_renewal_failed has no series: the agent evaluates it (`hoist certs` shows the last attempt)."
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
