//! `hoist review`: a production-readiness scorecard of an app file (and, when its hosts
//! answer, their live state), grouped like a readiness review: availability, deploys,
//! data, security, observability, operations. Each check is a [`Finding`] with an `id`,
//! a status (pass, warn or fail), why, and the fix.
//!
//! The checks read the typed spec and, where a default hides whether the operator chose
//! a value (a health check, a job's timeout), the raw TOML ([`load_for_review`]).
//! Pure: no I/O beyond reading the app file; the live part is handed in as [`Live`].

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use hoist_core::spec::{AppSpec, HealthKind};
use serde::Serialize;

use crate::{ConfigError, LoadedConfig};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One line of the scorecard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `group.check`, e.g. `data.before_deploy`.
    pub id: String,
    pub group: String,
    pub status: Status,
    /// What was found (for a pass too: what makes it pass).
    pub why: String,
    /// What to do; empty for a pass.
    pub fix: String,
}

/// What the hosts said, when they answered.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Hosts asked and hosts that answered.
    pub asked: usize,
    pub answered: usize,
    /// For each backup name: the time (ms) of the newest successful verify (or restore)
    /// on any host that answered.
    pub last_verified_ms: BTreeMap<String, i64>,
    /// Now (ms since the epoch).
    pub now_ms: i64,
    /// A restore must have been verified within this long.
    pub max_verify_age: Duration,
}

/// The app file, validated (refused as by every other command), with its raw TOML.
pub fn load_for_review(
    path: &Path,
    destination: Option<&str>,
) -> Result<(LoadedConfig, toml::Table), ConfigError> {
    let loaded = crate::load(path, destination)?;
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((loaded, text.parse().unwrap_or_default()))
}

/// Exit code of a review: 1 when something fails, else 0 (warnings alone: 0).
pub fn exit_code(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.status == Status::Fail))
}

struct Card(Vec<Finding>);

impl Card {
    fn add(&mut self, id: &str, status: Status, why: impl Into<String>, fix: impl Into<String>) {
        let group = id.split('.').next().unwrap_or(id).to_string();
        let fix = if status == Status::Pass {
            String::new()
        } else {
            fix.into()
        };
        self.0.push(Finding {
            id: id.to_string(),
            group,
            status,
            why: why.into(),
            fix,
        });
    }
}

fn get<'a>(raw: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = raw.get(*first)?;
    for k in rest {
        v = v.as_table()?.get(*k)?;
    }
    Some(v)
}

/// A domain the public can reach: not the catch-all, not a test or local name, not an IP.
pub fn is_public_domain(d: &str) -> bool {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    if d == "*" || d == "localhost" || d.parse::<std::net::IpAddr>().is_ok() {
        return false;
    }
    let private = [
        ".test",
        ".local",
        ".localhost",
        ".internal",
        ".example",
        ".invalid",
    ];
    d.contains('.') && !private.iter().any(|s| d.ends_with(s))
}

/// An env name that holds a credential by its name.
fn credential_name(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "API_KEY",
        "APIKEY",
        "PRIVATE_KEY",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// A value that carries a credential by its form (a URL with a password).
fn credential_value(v: &str) -> bool {
    v.split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|auth| auth.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'))
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Grades `spec` (with its raw TOML) and, when given, what the hosts said.
pub fn review(spec: &AppSpec, raw: &toml::Table, live: Option<&Live>) -> Vec<Finding> {
    let mut c = Card(Vec::new());
    let web: Vec<(&String, &hoist_core::spec::ServiceSpec)> = spec
        .services
        .iter()
        .filter(|(_, s)| s.http.is_some())
        .collect();

    // --- availability
    let hosts = spec.hosts.len();
    if hosts >= 2 {
        c.add(
            "availability.hosts",
            Status::Pass,
            format!("{hosts} hosts"),
            "",
        );
    } else {
        c.add(
            "availability.hosts",
            Status::Warn,
            format!("{hosts} host: it is a single point of failure"),
            "add a second `[[hosts]]` with the same roles",
        );
    }
    let thin: Vec<String> = web
        .iter()
        .filter(|(n, s)| s.replicas < 2 && spec.service_hosts(n).len() < 2)
        .map(|(n, _)| n.to_string())
        .collect();
    if web.is_empty() || thin.is_empty() {
        c.add(
            "availability.replicas",
            Status::Pass,
            "every web service has at least 2 instances",
            "",
        );
    } else {
        c.add(
            "availability.replicas",
            Status::Warn,
            format!("{} run one instance: a crash is an outage", list(&thin)),
            "set `replicas = 2` (or more) on each web service",
        );
    }
    let stuck: Vec<String> = spec
        .services
        .iter()
        .filter(|(_, s)| {
            s.singleton
                && spec
                    .hosts
                    .iter()
                    .filter(|h| h.has_any_role(&s.roles))
                    .count()
                    < 2
        })
        .map(|(n, _)| n.to_string())
        .chain(
            spec.jobs
                .iter()
                .filter(|(_, j)| {
                    j.singleton
                        && spec
                            .hosts
                            .iter()
                            .filter(|h| j.roles.is_empty() || h.has_any_role(&j.roles))
                            .count()
                            < 2
                })
                .map(|(n, _)| format!("jobs.{n}")),
        )
        .collect();
    if stuck.is_empty() {
        c.add(
            "availability.singletons",
            Status::Pass,
            "every singleton has another host to move to",
            "",
        );
    } else {
        c.add(
            "availability.singletons",
            Status::Warn,
            format!(
                "{} can run on one host only: nowhere to move if it dies",
                list(&stuck)
            ),
            "give a second host the singleton's role",
        );
    }

    // --- deploys
    let mut unchecked = Vec::new();
    let mut defaulted = Vec::new();
    for (name, s) in &web {
        let h = get(raw, &["services", name, "http", "health"]);
        let kind_none = s.http.as_ref().is_some_and(
            |h| matches!(&h.health.kind, HealthKind::Http { path, .. } if path.is_empty()),
        );
        match h {
            None => unchecked.push(name.to_string()),
            _ if kind_none => unchecked.push(name.to_string()),
            Some(toml::Value::Table(t))
                if t.contains_key("healthy_threshold") || t.contains_key("unhealthy_threshold") => {
            }
            Some(_) => defaulted.push(name.to_string()),
        }
    }
    if !unchecked.is_empty() {
        c.add(
            "deploys.health",
            Status::Fail,
            format!("{} have no health check", list(&unchecked)),
            "add `http.health = { path = \"/health\", healthy_threshold = 2, unhealthy_threshold = 3 }`",
        );
    } else if !defaulted.is_empty() {
        c.add(
            "deploys.health",
            Status::Warn,
            format!("{} check health with the default thresholds", list(&defaulted)),
            "write `health = { path = \"...\", healthy_threshold = N, unhealthy_threshold = N }` so the thresholds are chosen",
        );
    } else {
        c.add(
            "deploys.health",
            Status::Pass,
            "every web service has a health check with thresholds",
            "",
        );
    }
    let misfit: Vec<String> = web
        .iter()
        .filter(|(_, s)| {
            s.http
                .as_ref()
                .is_some_and(|h| s.stop_timeout < h.drain_timeout)
        })
        .map(|(n, _)| n.to_string())
        .collect();
    if misfit.is_empty() {
        c.add(
            "deploys.timeouts",
            Status::Pass,
            "each web service's stop_timeout covers its drain_timeout",
            "",
        );
    } else {
        c.add(
            "deploys.timeouts",
            Status::Warn,
            format!(
                "{}: stop_timeout is shorter than drain_timeout, so a request a deploy lets finish is killed on a restart",
                list(&misfit)
            ),
            "set `stop_timeout` to at least `http.drain_timeout`",
        );
    }
    let canary = spec.deploy.canary.is_some();
    if spec.deploy.bake.is_some() || canary {
        let what = if canary {
            "[deploy.canary]"
        } else {
            "[deploy] bake"
        };
        c.add(
            "deploys.bake",
            Status::Pass,
            format!("{what} watches a new release"),
            "",
        );
    } else {
        c.add(
            "deploys.bake",
            Status::Warn,
            "no bake or canary: a release that fails under real traffic stays until someone rolls back",
            "add `[deploy] bake = { duration = \"2m\" }` or a `[deploy.canary]`",
        );
    }

    // --- data
    let backup_secrets: Vec<String> = spec
        .backups
        .values()
        .filter_map(|b| match &b.source {
            hoist_core::spec::BackupSource::Postgres { secret } => Some(secret.clone()),
            _ => None,
        })
        .collect();
    let sqlite_paths: Vec<String> = spec
        .backups
        .values()
        .filter_map(|b| match &b.source {
            hoist_core::spec::BackupSource::Sqlite { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
    let mut undeclared = Vec::new();
    for name in &spec.secrets.required {
        let u = name.to_ascii_uppercase();
        if (u.contains("DATABASE") || u.ends_with("_DB") || u.starts_with("DB_"))
            && !backup_secrets.contains(name)
        {
            undeclared.push(format!("secret {name}"));
        }
    }
    let envs = spec
        .env
        .iter()
        .chain(spec.services.values().flat_map(|s| s.env.iter()));
    for (k, v) in envs {
        let lower = v.to_ascii_lowercase();
        let is_db = [".db", ".sqlite", ".sqlite3"]
            .iter()
            .any(|e| lower.ends_with(e));
        if is_db && !sqlite_paths.iter().any(|p| v.ends_with(p.as_str())) {
            undeclared.push(format!("env {k}"));
        }
        if (lower.starts_with("postgres://") || lower.starts_with("postgresql://"))
            && !backup_secrets.contains(k)
        {
            undeclared.push(format!("env {k}"));
        }
    }
    if !undeclared.is_empty() {
        c.add(
            "data.backups",
            Status::Fail,
            format!("databases without a backup: {}", list(&undeclared)),
            "declare each in `[backups.NAME]` (`sqlite = PATH` or `postgres = SECRET`)",
        );
    } else if spec.backups.is_empty() {
        c.add(
            "data.backups",
            if spec.hooks.pre_activate.is_some() {
                Status::Fail
            } else {
                Status::Warn
            },
            "no `[backups]` declared",
            "declare the app's database in `[backups.NAME]`",
        );
    } else {
        c.add(
            "data.backups",
            Status::Pass,
            format!(
                "backups declared: {}",
                list(&spec.backups.keys().cloned().collect::<Vec<_>>())
            ),
            "",
        );
    }
    match &spec.hooks.pre_activate {
        None => c.add("data.before_deploy", Status::Pass, "no pre_activate hook (no migration)", ""),
        Some(_) if spec.backups.values().any(|b| b.before_deploy) => c.add(
            "data.before_deploy",
            Status::Pass,
            "a backup is taken before each pre_activate",
            "",
        ),
        Some(hook) => c.add(
            "data.before_deploy",
            Status::Fail,
            format!("pre_activate `{hook}` runs with no backup taken before it: a bad migration cannot be undone"),
            "set `before_deploy = true` on the database's `[backups.NAME]`",
        ),
    }
    match live {
        _ if spec.backups.is_empty() => c.add(
            "data.restore_verified",
            Status::Warn,
            "no backups to verify",
            "declare backups, then `hoist backup verify`",
        ),
        None => c.add(
            "data.restore_verified",
            Status::Warn,
            "no host asked: cannot tell when a restore was last verified",
            "run `hoist review` where the hosts answer",
        ),
        Some(l) if l.answered == 0 => c.add(
            "data.restore_verified",
            Status::Warn,
            format!(
                "none of {} hosts answered: cannot tell when a restore was last verified",
                l.asked
            ),
            "check the hosts (`hoist doctor`)",
        ),
        Some(l) => {
            let max_ms = l.max_verify_age.as_millis() as i64;
            let days = l.max_verify_age.as_secs() / 86_400;
            let stale: Vec<String> = spec
                .backups
                .keys()
                .filter(|n| {
                    l.last_verified_ms
                        .get(*n)
                        .is_none_or(|at| l.now_ms - at > max_ms)
                })
                .cloned()
                .collect();
            if stale.is_empty() {
                c.add(
                    "data.restore_verified",
                    Status::Pass,
                    format!("every backup had a restore verified within {days} days"),
                    "",
                );
            } else {
                c.add(
                    "data.restore_verified",
                    Status::Fail,
                    format!(
                        "{} had no restore verified within {days} days",
                        list(&stale)
                    ),
                    "run `hoist backup verify` (and schedule it)",
                );
            }
        }
    }

    // --- security
    let public: Vec<(&String, &hoist_core::spec::HttpSpec)> = web
        .iter()
        .filter_map(|(n, s)| s.http.as_ref().map(|h| (*n, h)))
        .filter(|(_, h)| h.domains.iter().any(|d| is_public_domain(d)))
        .collect();
    let plain: Vec<String> = public
        .iter()
        .filter(|(_, h)| h.tls.is_none())
        .map(|(n, _)| n.to_string())
        .collect();
    if public.is_empty() {
        c.add("security.tls", Status::Pass, "no public domain", "");
    } else if plain.is_empty() {
        c.add(
            "security.tls",
            Status::Pass,
            "every public domain has TLS",
            "",
        );
    } else {
        c.add(
            "security.tls",
            Status::Fail,
            format!("{} serve public domains over plain HTTP", list(&plain)),
            "set `http.tls = \"acme\"` (or cert and key files)",
        );
    }
    let no_hsts: Vec<String> = web
        .iter()
        .filter(|(_, s)| {
            s.http
                .as_ref()
                .is_some_and(|h| h.tls.is_some() && h.hsts.is_none())
        })
        .map(|(n, _)| n.to_string())
        .collect();
    if !plain.is_empty() {
        c.add(
            "security.hsts",
            Status::Warn,
            format!("{} have no TLS, so no HSTS", list(&plain)),
            "set `tls`, then `hsts = \"365d\"`",
        );
    } else if no_hsts.is_empty() {
        c.add(
            "security.hsts",
            Status::Pass,
            "every TLS service sends HSTS (or none has TLS)",
            "",
        );
    } else {
        c.add(
            "security.hsts",
            Status::Warn,
            format!("{} have TLS without HSTS", list(&no_hsts)),
            "set `http.hsts = \"365d\"`",
        );
    }
    let mut leaked = Vec::new();
    let scopes = spec
        .env
        .iter()
        .map(|(k, v)| ("env".to_string(), k, v))
        .chain(spec.services.iter().flat_map(|(n, s)| {
            s.env
                .iter()
                .map(move |(k, v)| (format!("services.{n}.env"), k, v))
        }))
        .chain(spec.hosts.iter().flat_map(|h| {
            h.env
                .iter()
                .map(move |(k, v)| (format!("hosts.{}.env", h.name), k, v))
        }));
    for (scope, k, v) in scopes {
        if (credential_name(k) && !v.is_empty()) || credential_value(v) {
            leaked.push(format!("{scope}.{k}"));
        }
    }
    if leaked.is_empty() {
        c.add(
            "security.secrets",
            Status::Pass,
            "no credential-looking value in the file",
            "",
        );
    } else {
        c.add(
            "security.secrets",
            Status::Fail,
            format!("credentials written in the app file: {}", list(&leaked)),
            "move each to `[secrets] required` and `hoist secrets set NAME`",
        );
    }
    let root: Vec<String> = spec
        .services
        .iter()
        .filter(|(_, s)| s.user.as_deref() == Some("root"))
        .map(|(n, _)| n.to_string())
        .collect();
    let unset: Vec<String> = spec
        .services
        .iter()
        .filter(|(_, s)| s.user.is_none())
        .map(|(n, _)| n.to_string())
        .collect();
    if !root.is_empty() {
        c.add(
            "security.user",
            Status::Fail,
            format!("{} run as root", list(&root)),
            "set `user` to an unprivileged account",
        );
    } else if !unset.is_empty() {
        c.add(
            "security.user",
            Status::Warn,
            format!(
                "{} run as the host's shared apps user (`hoist-apps`, made by `hoist setup`; root where it is missing or `apps_user = \"root\"`): apps on one host share it",
                list(&unset)
            ),
            "set `user = \"APP_USER\"` on each service (`hoist setup --user` creates one)",
        );
    } else {
        c.add(
            "security.user",
            Status::Pass,
            "every service runs as a named user",
            "",
        );
    }
    let unlimited: Vec<String> = public
        .iter()
        .filter(|(_, h)| h.guards.rate_limit.is_none())
        .map(|(n, _)| n.to_string())
        .collect();
    if unlimited.is_empty() {
        c.add(
            "security.rate_limit",
            Status::Pass,
            "every public route has a rate limit (or there is none)",
            "",
        );
    } else {
        c.add(
            "security.rate_limit",
            Status::Warn,
            format!(
                "{} take public traffic without a rate limit",
                list(&unlimited)
            ),
            "add `http.rate_limit = { requests = 100, per = \"1s\", burst = 50 }`",
        );
    }

    // --- observability
    if spec.alerts.webhook.is_some() || spec.alerts.alertmanager.is_some() {
        c.add(
            "observability.alerts",
            Status::Pass,
            "alerts are routed to a receiver",
            "",
        );
    } else {
        c.add(
            "observability.alerts",
            Status::Fail,
            "alerts are evaluated but sent nowhere",
            "set `[alerts] webhook = \"https://...\"` or `alertmanager = \"http://...\"`",
        );
    }
    if spec.slo.is_empty() {
        c.add(
            "observability.slo",
            Status::Warn,
            "not declared: no `[slo.NAME]`",
            "add `[slo.NAME]` with `service` and `objective = \"99.9%\"`",
        );
    } else {
        c.add(
            "observability.slo",
            Status::Pass,
            format!(
                "SLOs declared: {}",
                list(&spec.slo.keys().cloned().collect::<Vec<_>>())
            ),
            "",
        );
    }

    let undeclared: Vec<String> = spec
        .services
        .keys()
        .filter(|n| get(raw, &["services", n, "logs"]).is_none())
        .cloned()
        .collect();
    if undeclared.is_empty() {
        let each: Vec<String> = spec
            .services
            .iter()
            .map(|(n, s)| format!("{n}: {} per instance", s.logs.bound()))
            .collect();
        c.add(
            "observability.log_retention",
            Status::Pass,
            format!("log retention chosen for every service ({})", list(&each)),
            "",
        );
    } else {
        let d = hoist_core::spec::LogsSpec::DEFAULT;
        c.add(
            "observability.log_retention",
            Status::Warn,
            format!(
                "log retention left at the default ({} per instance: {} x {} files) for {}",
                d.bound(),
                d.max_size,
                d.keep + 1,
                list(&undeclared)
            ),
            "choose it with `logs = { max_size = \"50MiB\", keep = 10 }` on each service, and ship logs off the host for longer",
        );
    }

    // --- operations
    let no_limit: Vec<String> = spec
        .services
        .iter()
        .filter(|(_, s)| s.memory_limit.is_none())
        .map(|(n, _)| n.to_string())
        .collect();
    if no_limit.is_empty() {
        c.add(
            "operations.limits",
            Status::Pass,
            "every service has a memory_limit",
            "",
        );
    } else {
        c.add(
            "operations.limits",
            Status::Warn,
            format!(
                "{} have no memory_limit: one leak takes the host",
                list(&no_limit)
            ),
            "set `memory_limit = \"512MiB\"` (or what it needs) on each",
        );
    }
    let untimed: Vec<String> = spec
        .jobs
        .keys()
        .filter(|n| get(raw, &["jobs", n, "timeout"]).is_none())
        .cloned()
        .collect();
    if untimed.is_empty() {
        c.add(
            "operations.job_timeouts",
            Status::Pass,
            "every job has a timeout",
            "",
        );
    } else {
        c.add(
            "operations.job_timeouts",
            Status::Warn,
            format!("{} run with the default timeout", list(&untimed)),
            "set `timeout` on each job to what a run may take",
        );
    }
    let keep = spec.deploy.keep_releases;
    if keep >= 2 {
        c.add(
            "operations.keep_releases",
            Status::Pass,
            format!("{keep} releases kept to roll back to"),
            "",
        );
    } else {
        c.add(
            "operations.keep_releases",
            Status::Fail,
            format!("keep_releases = {keep}: nothing to roll back to"),
            "set `[deploy] keep_releases = 5`",
        );
    }
    c.0
}
