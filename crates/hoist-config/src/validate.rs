//! The app file's meaning: walks the (merged) tree, checks every key, type and value, fills
//! in defaults and cross-checks references, producing an [`AppSpec`] or diagnostics. It
//! reports every problem it can find in one run rather than stopping at the first.
//!
//! Must not read files or print: it gets a tree and returns diagnostics.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hoist_core::schedule::{CronExpr, Schedule};
use hoist_core::spec::{
    defaults, AcmeSpec, AlertsSpec, AppSpec, BackupSource, BackupSpec, BakeSpec, BasicAuthSpec,
    Batch, BuildSpec, CheckSpec, DeploySpec, FilesHost, HealthKind, HealthSpec, HooksSpec,
    HostSpec, HttpGuards, HttpSpec, JobSpec, Keep, LogsSpec, OnFailure, RateLimitSpec, RolloutSpec,
    RunSpec, SecretsSpec, ServiceSpec, SshAddr, SshSpec, StopSignal, TlsSpec,
};

use crate::diag::{did_you_mean, Loc};
use crate::read::{
    check_env_name, check_name, join, list, read_duration, read_size, read_str, read_uint,
    type_error, Cx, Tbl,
};
use crate::tree::{toml_quote, Key, Node, Value};

pub(crate) const TOP_KEYS: &[&str] = &[
    "version", "app", "build", "env", "secrets", "check", "services", "jobs", "hooks", "backups",
    "deploy", "hosts", "ssh", "acme", "alerts", "run", "slo",
];

pub(crate) const BUILD_KEYS: &[&str] = &["command", "include", "exclude"];
pub(crate) const SECRETS_KEYS: &[&str] = &["required"];
pub(crate) const CHECK_KEYS: &[&str] = &["command", "timeout"];
pub(crate) const SERVICE_KEYS: &[&str] = &[
    "command",
    "logs",
    "replicas",
    "singleton",
    "roles",
    "memory_limit",
    "stop_timeout",
    "stop_signal",
    "user",
    "env",
    "http",
    "health",
];
pub(crate) const HTTP_KEYS: &[&str] = &[
    "domains",
    "path_prefix",
    "health",
    "drain_timeout",
    "rate_limit",
    "basic_auth",
    "max_body",
    "trusted_proxies",
    "tls",
    "redirect_https",
    "hsts",
];
pub(crate) const RATE_LIMIT_KEYS: &[&str] = &["requests", "per", "burst", "key"];
pub(crate) const BASIC_AUTH_KEYS: &[&str] = &["secret", "realm"];
pub(crate) const TLS_FILE_KEYS: &[&str] = &["cert", "key"];
pub(crate) const ACME_KEYS: &[&str] = &["email", "directory", "ca_roots"];
pub(crate) const HEALTH_KEYS: &[&str] = &[
    "path",
    "expect_status",
    "tcp",
    "command",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "min_healthy",
];
pub(crate) const JOB_KEYS: &[&str] = &["command", "every", "cron", "timeout", "singleton", "roles"];
pub(crate) const HOOKS_KEYS: &[&str] = &["pre_activate", "smoke", "timeout"];
pub(crate) const RUN_KEYS: &[&str] = &["test", "seed"];
pub(crate) const BACKUP_KEYS: &[&str] = &[
    "sqlite",
    "postgres",
    "directory",
    "every",
    "cron",
    "before_deploy",
    "keep",
    "copy_to",
];
pub(crate) const KEEP_KEYS: &[&str] = &["last", "daily", "weekly", "monthly"];
pub(crate) const DEPLOY_KEYS: &[&str] = &[
    "keep_releases",
    "standby",
    "health_deadline",
    "bake",
    "rollout",
    "canary",
];
pub(crate) const CANARY_KEYS: &[&str] = &[
    "steps",
    "interval",
    "max_error_rate",
    "max_p99",
    "min_requests",
];
pub(crate) const LOGS_KEYS: &[&str] = &["max_size", "keep"];
pub(crate) const BAKE_KEYS: &[&str] = &["duration", "max_5xx_percent", "max_p99"];
pub(crate) const ROLLOUT_KEYS: &[&str] = &["batch", "on_failure"];
pub(crate) const HOST_KEYS: &[&str] = &[
    "name", "ssh", "roles", "env", "mode", "path", "restart", "health", "expect",
];
pub(crate) const SSH_KEYS: &[&str] = &["config", "identity", "port"];

/// Where a key that is unknown in one table does belong, for a hint: keys put in the
/// wrong section are a common slip (`every` under a service, `replicas` at the top).
pub(crate) fn home_of(key: &str) -> Option<&'static str> {
    const HOMES: &[(&[&str], &str)] = &[
        (SERVICE_KEYS, "a `[services.NAME]` table"),
        (JOB_KEYS, "a `[jobs.NAME]` table"),
        (HTTP_KEYS, "a web service's `http` table"),
        (DEPLOY_KEYS, "`[deploy]`"),
        (BACKUP_KEYS, "a `[backups.NAME]` table"),
        (HOST_KEYS, "a `[[hosts]]` table"),
        (HOOKS_KEYS, "`[hooks]`"),
        (ACME_KEYS, "`[acme]`"),
        (TOP_KEYS, "the top level"),
    ];
    HOMES
        .iter()
        .find(|(keys, _)| keys.contains(&key))
        .map(|(_, home)| *home)
}

/// Instances of one service on one host: more is a typo or an attack on the host.
pub const MAX_REPLICAS: u32 = 256;
/// Instances of all services of the app on one host (each is a process, a port and a
/// shim): the whole app file is refused past it.
pub const MAX_INSTANCES_PER_HOST: u64 = 1000;

/// Where names and roles were written, for cross-reference diagnostics.
#[derive(Default)]
struct Refs {
    /// (owner kind, owner name, role, where the role was written).
    role_uses: Vec<(&'static str, String, String, Loc)>,
    /// (secret name, where it was referenced) for `postgres = "SECRET"` backups.
    secret_uses: Vec<(String, Loc, &'static str)>,
    /// (service, domain, path prefix, where the domain was written).
    routes: Vec<(String, String, String, Loc)>,
    /// Job names with where they were written, to catch a job named like a service.
    job_names: Vec<(String, Loc)>,
    /// Service names with where their `replicas` (or name) were written.
    service_locs: Vec<(String, Loc)>,
}

/// Builds the spec from the merged tree; every problem is pushed to `cx`.
pub(crate) fn validate(cx: &mut Cx<'_>, root: &Node) -> Option<AppSpec> {
    let top_at = Loc {
        file: root.loc.file,
        span: 0..0,
    };
    let top = Tbl::open(cx, root, "", &top_at, TOP_KEYS)?;
    let mut refs = Refs::default();

    let version = match top.get("version") {
        Some(n) => match read_uint(cx, n, "version", 1, u64::MAX) {
            Some(v) if v == u64::from(defaults::VERSION) => defaults::VERSION,
            Some(v) => {
                cx.error(
                    &n.loc,
                    format!(
                        "unsupported app file version `{v}`; this hoist reads version {}",
                        defaults::VERSION
                    ),
                    Some("upgrade hoist, or write `version = 1`".to_string()),
                );
                defaults::VERSION
            }
            None => defaults::VERSION,
        },
        None => defaults::VERSION,
    };

    let app = match top.get("app") {
        Some(n) => read_str(cx, n, "app")
            .filter(|name| check_name(cx, name, &n.loc, "app"))
            .unwrap_or_default(),
        None => {
            top.missing(
                cx,
                "app",
                Some("name the app: `app = \"myapp\"`".to_string()),
            );
            String::new()
        }
    };

    let build = top
        .get("build")
        .map_or_else(BuildSpec::default, |n| build(cx, n, top.key_loc("build")));
    let env = top.env(cx, "env");
    let secrets = top.get("secrets").map_or_else(SecretsSpec::default, |n| {
        secrets(cx, n, top.key_loc("secrets"), &env)
    });
    let check = top.get("check").and_then(|n| check(cx, n));

    let mut services = BTreeMap::new();
    for (key, node) in named_tables(cx, &top, "services") {
        if !check_name(cx, &key.name, &key.loc, "service") {
            continue;
        }
        if let Some(s) = service(cx, key, node, &mut refs) {
            services.insert(key.name.clone(), s);
        }
    }

    let mut jobs = BTreeMap::new();
    for (key, node) in named_tables(cx, &top, "jobs") {
        if !check_name(cx, &key.name, &key.loc, "job") {
            continue;
        }
        refs.job_names.push((key.name.clone(), key.loc.clone()));
        if let Some(j) = job(cx, key, node, &mut refs) {
            jobs.insert(key.name.clone(), j);
        }
    }

    let hooks = top
        .get("hooks")
        .map_or_else(HooksSpec::default, |n| hooks(cx, n, top.key_loc("hooks")));

    let run = top
        .get("run")
        .map_or_else(RunSpec::default, |n| run(cx, n, top.key_loc("run")));

    let mut backups = BTreeMap::new();
    for (key, node) in named_tables(cx, &top, "backups") {
        if !check_name(cx, &key.name, &key.loc, "backup") {
            continue;
        }
        if let Some(b) = backup(cx, key, node, &mut refs) {
            backups.insert(key.name.clone(), b);
        }
    }

    let deploy = top.get("deploy").map_or_else(DeploySpec::default, |n| {
        deploy(cx, n, top.key_loc("deploy"))
    });
    let ssh = top
        .get("ssh")
        .map_or_else(SshSpec::default, |n| ssh(cx, n, top.key_loc("ssh")));
    let acme = top
        .get("acme")
        .map_or_else(AcmeSpec::default, |n| acme(cx, n, top.key_loc("acme")));

    let alerts = top.get("alerts").map_or_else(AlertsSpec::default, |n| {
        crate::alerts::alerts(cx, n, top.key_loc("alerts"), &services)
    });
    let slo = top
        .get("slo")
        .map_or_else(BTreeMap::new, |n| crate::slo::slos(cx, n, &services));

    let used_roles: BTreeSet<String> = refs
        .role_uses
        .iter()
        .map(|(_, _, role, _)| role.clone())
        .collect();
    let errors_before_hosts = cx.error_count();
    let hosts = match top.get("hosts") {
        Some(n) => hosts(cx, n, &used_roles),
        None => vec![HostSpec {
            name: defaults::LOCAL_HOST.to_string(),
            ssh: None,
            roles: used_roles.iter().cloned().collect(),
            env: BTreeMap::new(),
            files: None,
            address: None,
        }],
    };

    // With a broken host list, "no host has role x" would only repeat the same problem.
    let hosts_complete = cx.error_count() == errors_before_hosts;
    cross_check(
        cx,
        &refs,
        &services,
        &secrets,
        hosts_complete.then_some(hosts.as_slice()),
    );
    if hosts_complete {
        instances_per_host(cx, &refs, &services, &hosts);
    }
    // Only when nothing else is wrong: a web service dropped for an error is not "none".
    if hooks.smoke.is_some() && cx.error_count() == 0 && !services.values().any(|s| s.is_web()) {
        let smoke = top
            .get("hooks")
            .and_then(|h| h.as_table())
            .and_then(|t| t.iter().find(|(k, _)| k.name == "smoke").map(|(_, v)| v));
        if let Some(n) = smoke {
            cx.warn(
                &n.loc,
                "`hooks.smoke` runs after the switch, but no service has `http`",
                Some("`HOIST_URL` is set only for an app with a web service".into()),
            );
        }
    }

    Some(AppSpec {
        version,
        app,
        build,
        env,
        secrets,
        check,
        services,
        jobs,
        hooks,
        backups,
        deploy,
        hosts,
        ssh,
        acme,
        alerts,
        run,
        slo,
    })
}

/// The entries of a table of named tables (`[jobs.x]`, `[backups.y]`).
fn named_tables<'a>(cx: &mut Cx<'_>, top: &Tbl<'a>, key: &str) -> Vec<(&'a Key, &'a Node)> {
    let Some(n) = top.get(key) else {
        return Vec::new();
    };
    match n.as_table() {
        Some(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
        None => {
            type_error(
                cx,
                n,
                key,
                &format!("a table of named entries like `[{key}.name]`"),
                None,
            );
            Vec::new()
        }
    }
}

fn build(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> BuildSpec {
    let Some(t) = Tbl::open(cx, node, "build", at.unwrap_or(&node.loc), BUILD_KEYS) else {
        return BuildSpec::default();
    };
    let strings =
        |v: Option<Vec<(String, Loc)>>| v.unwrap_or_default().into_iter().map(|(s, _)| s).collect();
    let command = t.str(cx, "command");
    let mut project_relative = |key: &str| -> Vec<(String, Loc)> {
        let list = t.str_list(cx, key).unwrap_or_default();
        list.into_iter()
            .filter(|(p, loc)| {
                let escapes = escapes_project(p);
                if escapes {
                    cx.error(
                        loc,
                        format!(
                            "invalid `build.{key}`: `{p}` is outside the project directory"
                        ),
                        Some("patterns are relative to the directory of `hoist.toml` and cannot climb out of it".into()),
                    );
                }
                !escapes
            })
            .collect()
    };
    let include = strings(Some(project_relative("include")));
    let exclude = strings(Some(project_relative("exclude")));
    BuildSpec {
        command,
        include,
        exclude,
    }
}

fn secrets(
    cx: &mut Cx<'_>,
    node: &Node,
    at: Option<&Loc>,
    env: &BTreeMap<String, String>,
) -> SecretsSpec {
    let Some(t) = Tbl::open(cx, node, "secrets", at.unwrap_or(&node.loc), SECRETS_KEYS) else {
        return SecretsSpec::default();
    };
    let mut required: Vec<String> = Vec::new();
    for (name, loc) in t.str_list(cx, "required").unwrap_or_default() {
        if !check_env_name(cx, &name, &loc, "secret name") {
            continue;
        }
        if required.contains(&name) {
            cx.error(
                &loc,
                format!("duplicate secret `{name}` in `secrets.required`"),
                Some("remove one".into()),
            );
            continue;
        }
        if env.contains_key(&name) {
            cx.error(
                &loc,
                format!("`{name}` is both a secret and a plain value in `[env]`"),
                Some(format!(
                    "remove `{name}` from `[env]`: secret values live on the hosts"
                )),
            );
        }
        required.push(name);
    }
    SecretsSpec { required }
}

fn check(cx: &mut Cx<'_>, node: &Node) -> Option<CheckSpec> {
    if let Value::Str(command) = &node.value {
        return Some(CheckSpec {
            command: command.clone(),
            timeout: defaults::CHECK_TIMEOUT,
        });
    }
    if node.as_table().is_none() {
        type_error(
            cx,
            node,
            "check",
            "a command string or a table with `command`",
            None,
        );
        return None;
    }
    let t = Tbl::open(cx, node, "check", &node.loc, CHECK_KEYS)?;
    let command = t.command(cx, "command", "./bin/app check");
    let timeout = t
        .positive_duration(cx, "timeout")
        .unwrap_or(defaults::CHECK_TIMEOUT);
    Some(CheckSpec {
        command: command?,
        timeout,
    })
}

fn roles(cx: &mut Cx<'_>, t: &Tbl<'_>, default: &[String]) -> (Vec<String>, Vec<(String, Loc)>) {
    match t.str_list(cx, "roles") {
        Some(list) => {
            let mut roles = Vec::new();
            let mut written = Vec::new();
            for (role, loc) in list {
                if role.trim().is_empty() {
                    cx.error(
                        &loc,
                        format!("invalid `{}`: empty role name", t.path("roles")),
                        None,
                    );
                    continue;
                }
                if !roles.contains(&role) {
                    roles.push(role.clone());
                    written.push((role, loc));
                }
            }
            (roles, written)
        }
        None => (default.to_vec(), Vec::new()),
    }
}

fn service(cx: &mut Cx<'_>, key: &Key, node: &Node, refs: &mut Refs) -> Option<ServiceSpec> {
    let name = &key.name;
    let t = Tbl::open(cx, node, &join("services", name), &key.loc, SERVICE_KEYS)?;
    let example = if t.get("http").is_some() {
        "./bin/app serve --port $PORT"
    } else {
        "./bin/app worker"
    };
    let command = t.command(cx, "command", example);
    let singleton = t.bool(cx, "singleton").unwrap_or(false);
    let replicas = t
        .uint(cx, "replicas", 1, u64::from(MAX_REPLICAS))
        .map(|n| n as u32);
    refs.service_locs.push((
        name.clone(),
        t.get("replicas").map_or(&key.loc, |n| &n.loc).clone(),
    ));
    if let (true, Some(r)) = (singleton, replicas) {
        if r > 1 {
            let at = t.get("replicas").map_or(&key.loc, |n| &n.loc);
            cx.error(
                at,
                format!("service `{name}` is a singleton but asks for `replicas = {r}`"),
                Some("a singleton runs exactly once across the fleet; remove `replicas` or `singleton`".into()),
            );
        }
    }
    let (roles, written) = roles(cx, &t, std::slice::from_ref(name));
    match t.get("roles") {
        None => refs
            .role_uses
            .push(("service", name.clone(), name.clone(), key.loc.clone())),
        Some(n) if roles.is_empty() && matches!(&n.value, Value::Array(a) if a.is_empty()) => {
            cx.error(
                &n.loc,
                format!("service `{name}` has no roles, so no host would run it"),
                Some(format!("leave `roles` out to use the role `{name}`")),
            );
        }
        Some(_) => {}
    }
    for (role, loc) in written {
        refs.role_uses.push(("service", name.clone(), role, loc));
    }
    let memory_limit = t
        .get("memory_limit")
        .and_then(|n| read_size(cx, n, &t.path("memory_limit"), "memory_limit"));
    let stop_timeout = t
        .duration(cx, "stop_timeout")
        .unwrap_or(defaults::STOP_TIMEOUT);
    let stop_signal = match t.get("stop_signal") {
        Some(n) => read_str(cx, n, &t.path("stop_signal"))
            .and_then(|s| {
                let parsed = StopSignal::parse(&s);
                if parsed.is_none() {
                    let names: Vec<&str> = StopSignal::ALL.iter().map(|s| s.name()).collect();
                    let hint = did_you_mean(&s.to_ascii_uppercase(), names.iter().copied())
                        .map(|n| format!("did you mean `{n}`?"))
                        .unwrap_or_else(|| format!("expected one of {}", list(&names)));
                    cx.error(
                        &n.loc,
                        format!("invalid `{}`: unknown signal `{s}`", t.path("stop_signal")),
                        Some(hint),
                    );
                }
                parsed
            })
            .unwrap_or_default(),
        None => StopSignal::default(),
    };
    let user = t.get("user").and_then(|n| {
        let user = read_str(cx, n, &t.path("user"))?;
        if hoist_core::names::is_user_name(&user) {
            return Some(user);
        }
        cx.error(
            &n.loc,
            format!(
                "invalid `{}`: `{user}` is not a Unix user name",
                t.path("user")
            ),
            Some(format!(
                "a user name is a lowercase letter or `_`, then lowercase letters, digits, `_` or `-` (at most {})",
                hoist_core::names::MAX_USER_LEN
            )),
        );
        None
    });
    let env = t.env(cx, "env");
    let http = t
        .get("http")
        .and_then(|n| http(cx, name, n, &t.path("http"), t.key_loc("http"), refs));
    let health = t.get("health").and_then(|n| {
        if http.is_some() || t.get("http").is_some() {
            let at = t.key_loc("health").unwrap_or(&n.loc);
            cx.error(
                at,
                format!(
                    "`{}` is for workers; a web service's health check goes in `http`",
                    t.path("health")
                ),
                Some("move it into `http`: `http = { ..., health = \"/health\" }`".into()),
            );
            return None;
        }
        health(cx, n, &t.path("health"))
    });
    let logs = t
        .get("logs")
        .and_then(|n| logs(cx, n, &t.path("logs"), t.key_loc("logs")));
    Some(ServiceSpec {
        command: command?,
        replicas: if singleton { 1 } else { replicas.unwrap_or(1) },
        singleton,
        roles,
        memory_limit,
        stop_timeout,
        stop_signal,
        user,
        env,
        http,
        health,
        logs: logs.unwrap_or_default(),
    })
}

/// A service's `logs = { max_size, keep }`: bounded, so one chatty service cannot fill
/// the host (the disk alert and `hoist doctor` watch the rest).
fn logs(cx: &mut Cx<'_>, node: &Node, path: &str, at: Option<&Loc>) -> Option<LogsSpec> {
    const MIN: u64 = 64 * 1024;
    const MAX: u64 = 1024 * 1024 * 1024;
    let t = Tbl::open(cx, node, path, at.unwrap_or(&node.loc), LOGS_KEYS)?;
    let mut out = LogsSpec::DEFAULT;
    if let Some(n) = t.get("max_size") {
        let size = read_size(cx, n, &t.path("max_size"), "max_size")?;
        if !(MIN..=MAX).contains(&size.0) {
            cx.error(
                &n.loc,
                format!("invalid `{}`: {size} is out of range", t.path("max_size")),
                Some("between 64KiB and 1GiB".into()),
            );
            return None;
        }
        out.max_size = size;
    }
    if t.get("keep").is_some() {
        out.keep = t.uint(cx, "keep", 0, 100)? as u32;
    }
    Some(out)
}

fn http(
    cx: &mut Cx<'_>,
    service: &str,
    node: &Node,
    path: &str,
    at: Option<&Loc>,
    refs: &mut Refs,
) -> Option<HttpSpec> {
    let t = Tbl::open(cx, node, path, at.unwrap_or(&node.loc), HTTP_KEYS)?;
    let domains: Vec<(String, Loc)> = match t.str_list(cx, "domains") {
        Some(list) if list.is_empty() => {
            let at = t.get("domains").map_or(&t.at, |n| &n.loc);
            cx.error(
                at,
                format!("invalid `{}`: no domains", t.path("domains")),
                Some("use `[\"*\"]` to match any host".into()),
            );
            Vec::new()
        }
        Some(list) => list
            .into_iter()
            .filter_map(|(mut d, loc)| {
                check_domain(cx, &mut d, &loc, &t.path("domains")).then_some((d, loc))
            })
            .collect(),
        None => vec![("*".to_string(), t.at.clone())],
    };
    let path_prefix = match t.get("path_prefix") {
        Some(n) => read_str(cx, n, &t.path("path_prefix")).and_then(|p| {
            if p.starts_with('/') {
                Some(p)
            } else {
                cx.error(
                    &n.loc,
                    format!(
                        "invalid `{}`: `{p}` does not start with `/`",
                        t.path("path_prefix")
                    ),
                    Some(format!("write `path_prefix = \"/{p}\"`")),
                );
                None
            }
        }),
        None => None,
    }
    .unwrap_or_else(|| defaults::PATH_PREFIX.to_string());
    for (domain, loc) in &domains {
        refs.routes.push((
            service.to_string(),
            domain.clone(),
            path_prefix.clone(),
            loc.clone(),
        ));
    }
    let domains: Vec<String> = domains.into_iter().map(|(d, _)| d).collect();
    let health = match t.get("health") {
        Some(n) => health(cx, n, &t.path("health")),
        None => {
            cx.error(
                &t.at,
                format!("web service `{service}` has no health check"),
                Some("add `health = \"/health\"` to `http`: a path that answers 2xx once the app is ready".into()),
            );
            None
        }
    };
    let drain_timeout = t
        .duration(cx, "drain_timeout")
        .unwrap_or(defaults::DRAIN_TIMEOUT);
    let guards = http_guards(cx, &t, refs);
    let tls = t.get("tls").and_then(|n| tls(cx, n, &t.path("tls")));
    if tls.is_some() {
        // A certificate names hosts: `*` (or a wildcard) cannot be issued or matched.
        let domains_at = t.get("domains").map_or(&t.at, |n| &n.loc);
        for d in &domains {
            if !is_cert_name(d) {
                cx.error(
                    domains_at,
                    format!(
                        "`{}` needs host names in `{}`, found `{d}`",
                        t.path("tls"),
                        t.path("domains")
                    ),
                    Some("list the names the certificate covers, e.g. `domains = [\"example.com\"]` (wildcards are not supported)".into()),
                );
            }
        }
    }
    let needs_tls = |cx: &mut Cx<'_>, key: &str| {
        if tls.is_none() {
            if let Some(n) = t.get(key) {
                cx.error(
                    &n.loc,
                    format!("`{}` needs `{}`", t.path(key), t.path("tls")),
                    Some("add `tls = \"acme\"` or `tls = { cert = \"/path/cert.pem\", key = \"/path/key.pem\" }`".into()),
                );
            }
        }
    };
    needs_tls(cx, "redirect_https");
    needs_tls(cx, "hsts");
    let redirect_https = t.bool(cx, "redirect_https").unwrap_or(tls.is_some()) && tls.is_some();
    let hsts = t.positive_duration(cx, "hsts").filter(|_| tls.is_some());
    Some(HttpSpec {
        domains,
        path_prefix,
        health: health?,
        drain_timeout,
        guards,
        tls,
        redirect_https,
        hsts,
    })
}

/// The most `requests` and `burst` a rate limit may name (checked here and by `check`).
pub(crate) const RATE_LIMIT_MAX: u64 = 1_000_000;

/// The proxy's guards of one `http` table.
fn http_guards(cx: &mut Cx<'_>, t: &Tbl<'_>, refs: &mut Refs) -> HttpGuards {
    let rate_limit = t.get("rate_limit").and_then(|n| {
        let r = Tbl::open(
            cx,
            n,
            &t.path("rate_limit"),
            t.key_loc("rate_limit").unwrap_or(&n.loc),
            RATE_LIMIT_KEYS,
        )?;
        let example = "for example `rate_limit = { requests = 100, per = \"1s\", burst = 50 }`";
        let requests = match r.uint(cx, "requests", 1, RATE_LIMIT_MAX) {
            Some(n) => n as u32,
            None => {
                if r.get("requests").is_none() {
                    r.missing(cx, "requests", Some(example.into()));
                }
                return None;
            }
        };
        let per = r
            .positive_duration(cx, "per")
            .unwrap_or(Duration::from_secs(1));
        let burst = r
            .uint(cx, "burst", 1, RATE_LIMIT_MAX)
            .map_or(requests, |n| n as u32);
        let key = r
            .str_list(cx, "key")
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(h, loc)| {
                let ok = is_header_name(&h);
                if !ok {
                    cx.error(
                        &loc,
                        format!("invalid header name `{h}` in `{}`", r.path("key")),
                        Some("for example `key = [\"CF-Connecting-IP\"]`".into()),
                    );
                }
                ok.then_some(h)
            })
            .collect();
        Some(RateLimitSpec {
            requests,
            per,
            burst,
            key,
        })
    });
    let basic_auth = t.get("basic_auth").and_then(|n| {
        let b = Tbl::open(
            cx,
            n,
            &t.path("basic_auth"),
            t.key_loc("basic_auth").unwrap_or(&n.loc),
            BASIC_AUTH_KEYS,
        )?;
        let Some(secret) = b.str(cx, "secret") else {
            if b.get("secret").is_none() {
                b.missing(
                    cx,
                    "secret",
                    Some("name the secret that holds `user:bcrypt-hash` lines: `basic_auth = { secret = \"HTPASSWD\" }`".into()),
                );
            }
            return None;
        };
        if let Some(n) = b.get("secret") {
            refs.secret_uses.push((secret.clone(), n.loc.clone(), "`basic_auth`"));
        }
        let realm = b.str(cx, "realm").unwrap_or_else(|| "restricted".into());
        Some(BasicAuthSpec { secret, realm })
    });
    let max_body = t
        .get("max_body")
        .and_then(|n| read_size(cx, n, &t.path("max_body"), "max_body"));
    let trusted_proxies = t
        .str_list(cx, "trusted_proxies")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(c, loc)| {
            let ok = valid_cidr(&c);
            if !ok {
                cx.error(
                    &loc,
                    format!(
                        "invalid `{}`: `{c}` is not an address or CIDR block",
                        t.path("trusted_proxies")
                    ),
                    Some("for example `trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]`".into()),
                );
            }
            ok.then_some(c)
        })
        .collect();
    HttpGuards {
        rate_limit,
        basic_auth,
        max_body,
        trusted_proxies,
    }
}

/// A header name `rate_limit.key` may name.
pub(crate) fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `10.0.0.0/8`, `2001:db8::/32` or a bare address.
pub(crate) fn valid_cidr(s: &str) -> bool {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let Ok(ip) = addr.parse::<std::net::IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.is_none_or(|b| b.parse::<u8>().is_ok_and(|b| b <= max))
}

/// A name of `domains` a certificate can carry (with `tls`): no `*`, a plain DNS name.
pub(crate) fn is_cert_name(d: &str) -> bool {
    !(d == "*" || d.contains('*') || !is_dns_name(d))
}

/// A plain DNS name a certificate can carry.
fn is_dns_name(d: &str) -> bool {
    let d = d.strip_suffix('.').unwrap_or(d);
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// `tls = "acme"` or `tls = { cert = "PATH", key = "PATH" }` (absolute paths on the host).
fn tls(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<TlsSpec> {
    let example = "write `tls = \"acme\"` or `tls = { cert = \"/etc/ssl/example.pem\", key = \"/etc/ssl/example.key\" }`";
    match &node.value {
        Value::Str(s) if s == "acme" => Some(TlsSpec::Acme),
        Value::Str(s) => {
            cx.error(
                &node.loc,
                format!("invalid `{path}`: `{s}` is neither `acme` nor a table of files"),
                Some(example.into()),
            );
            None
        }
        Value::Table(_) => {
            let t = Tbl::open(cx, node, path, &node.loc, TLS_FILE_KEYS)?;
            let mut file = |key: &str| -> Option<String> {
                let Some(n) = t.get(key) else {
                    t.missing(cx, key, Some(example.into()));
                    return None;
                };
                let p = read_str(cx, n, &t.path(key))?;
                if !is_host_path(&p) {
                    cx.error(
                        &n.loc,
                        format!("invalid `{}`: `{p}` is not an absolute path", t.path(key)),
                        Some(
                            "the file is read on the host by the agent: give its absolute path"
                                .into(),
                        ),
                    );
                    return None;
                }
                Some(p)
            };
            let cert = file("cert");
            let key = file("key");
            Some(TlsSpec::File {
                cert: cert?,
                key: key?,
            })
        }
        _ => {
            type_error(
                cx,
                node,
                path,
                "`\"acme\"` or a table",
                Some(example.into()),
            );
            None
        }
    }
}

fn acme(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> AcmeSpec {
    let Some(t) = Tbl::open(cx, node, "acme", at.unwrap_or(&node.loc), ACME_KEYS) else {
        return AcmeSpec::default();
    };
    let email = t.str(cx, "email").filter(|e| {
        let ok = is_email(e);
        if !ok {
            if let Some(n) = t.get("email") {
                cx.error(
                    &n.loc,
                    format!("invalid `acme.email`: `{e}` is not an email address"),
                    Some("write just the address: `email = \"ops@example.com\"`".into()),
                );
            }
        }
        ok
    });
    let directory = t
        .str(cx, "directory")
        .filter(|d| {
            let ok = is_https_url(d);
            if !ok {
                if let Some(n) = t.get("directory") {
                    cx.error(
                        &n.loc,
                        format!("invalid `acme.directory`: `{d}` is not an https:// URL"),
                        Some(format!("the default is `{}`", defaults::ACME_DIRECTORY)),
                    );
                }
            }
            ok
        })
        .unwrap_or_else(|| defaults::ACME_DIRECTORY.to_string());
    let ca_roots = t.str(cx, "ca_roots").filter(|p| {
        let ok = is_host_path(p);
        if !ok {
            if let Some(n) = t.get("ca_roots") {
                cx.error(
                    &n.loc,
                    format!("invalid `acme.ca_roots`: `{p}` is not an absolute path"),
                    Some("the PEM file is read on the host by the agent".into()),
                );
            }
        }
        ok
    });
    AcmeSpec {
        email,
        directory,
        ca_roots,
    }
}

/// A file the agent reads on the host (a certificate, a key, CA roots): an absolute path.
pub(crate) fn is_host_path(p: &str) -> bool {
    p.starts_with('/')
}

/// An ACME account's contact address (no `mailto:`: hoist adds it).
pub(crate) fn is_email(e: &str) -> bool {
    e.contains('@') && !e.contains(char::is_whitespace) && !e.starts_with("mailto:")
}

/// An ACME directory: an https:// URL.
pub(crate) fn is_https_url(d: &str) -> bool {
    d.starts_with("https://") && d.len() > "https://".len()
}

/// Not a host name (nor `*`) at all: a URL, a path, whitespace, nothing.
pub(crate) fn domain_problem(domain: &str) -> bool {
    domain.contains("://")
        || domain.contains('/')
        || domain.contains(char::is_whitespace)
        || domain.is_empty()
}

/// A host name the proxy matches against the Host header (lowercased), or `*`.
fn check_domain(cx: &mut Cx<'_>, domain: &mut String, loc: &Loc, path: &str) -> bool {
    if domain_problem(domain) {
        let fixed = domain
            .split("://")
            .last()
            .unwrap_or(domain)
            .split('/')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        cx.error(
            loc,
            format!("invalid domain `{domain}` in `{path}`: expected a host name like `example.com` or `*`"),
            (!fixed.is_empty()).then(|| format!("write just the host name: `{}`", toml_quote(&fixed))),
        );
        return false;
    }
    domain.make_ascii_lowercase();
    true
}

fn health(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<HealthSpec> {
    if let Value::Str(p) = &node.value {
        if p.starts_with('/') && !url_path_ok(cx, &node.loc, path, p) {
            return None;
        }
        if !p.starts_with('/') {
            cx.error(
                &node.loc,
                format!("invalid `{path}`: expected a URL path like `/health`, found `{p}`"),
                Some(format!(
                    "write `health = \"/{}\"`",
                    p.trim_start_matches("http://").trim_start_matches('/')
                )),
            );
            return None;
        }
        return Some(HealthSpec::with_defaults(HealthKind::Http {
            path: p.clone(),
            expect_status: None,
        }));
    }
    if node.as_table().is_none() {
        type_error(cx, node, path, "a path like `/health` or a table", None);
        return None;
    }
    let t = Tbl::open(cx, node, path, &node.loc, HEALTH_KEYS)?;
    let tcp = t.bool(cx, "tcp").unwrap_or(false);
    let command = t.str(cx, "command");
    let http_path = t.str(cx, "path");
    let chosen = [t.get("path").is_some(), tcp, t.get("command").is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if chosen != 1 {
        let message = if chosen == 0 {
            format!("`{path}` does not say what to check")
        } else {
            format!("`{path}` has more than one of `path`, `tcp` and `command`")
        };
        cx.error(
            &node.loc,
            message,
            Some("use one of `path = \"/health\"`, `tcp = true` or `command = \"...\"`".into()),
        );
        return None;
    }
    let kind = if let Some(p) = http_path {
        if !p.starts_with('/') {
            let at = t.get("path").map_or(&node.loc, |n| &n.loc);
            cx.error(
                at,
                format!(
                    "invalid `{}`: expected a URL path like `/health`, found `{p}`",
                    t.path("path")
                ),
                None,
            );
            return None;
        }
        let at = t.get("path").map_or(&node.loc, |n| &n.loc);
        if !url_path_ok(cx, at, &t.path("path"), &p) {
            return None;
        }
        let expect_status = t.uint(cx, "expect_status", 100, 599).map(|s| s as u16);
        HealthKind::Http {
            path: p,
            expect_status,
        }
    } else if tcp {
        HealthKind::Tcp
    } else {
        HealthKind::Exec { command: command? }
    };
    if !matches!(kind, HealthKind::Http { .. }) {
        if let Some(n) = t.get("expect_status") {
            cx.error(
                &n.loc,
                format!(
                    "`{}` applies only to `path` checks",
                    t.path("expect_status")
                ),
                None,
            );
        }
    }
    Some(HealthSpec {
        kind,
        interval: t
            .positive_duration(cx, "interval")
            .unwrap_or(defaults::HEALTH_INTERVAL),
        timeout: t
            .positive_duration(cx, "timeout")
            .unwrap_or(defaults::HEALTH_TIMEOUT),
        healthy_threshold: t
            .uint(cx, "healthy_threshold", 1, 100)
            .map_or(defaults::HEALTHY_THRESHOLD, |n| n as u32),
        unhealthy_threshold: t
            .uint(cx, "unhealthy_threshold", 1, 100)
            .map_or(defaults::UNHEALTHY_THRESHOLD, |n| n as u32),
        min_healthy: t
            .duration(cx, "min_healthy")
            .unwrap_or(defaults::MIN_HEALTHY),
    })
}

/// A health path goes into the probe's request line as written: a CR or LF there would
/// inject headers (or a second request) into what the app receives.
fn url_path_ok(cx: &mut Cx<'_>, at: &Loc, path: &str, p: &str) -> bool {
    let Some(problem) = url_path_problem(p) else {
        return true;
    };
    cx.error(
        at,
        format!("invalid `{path}`: {problem}"),
        Some("percent-encode it (`%20` for a space), or remove it".into()),
    );
    false
}

/// Why `p` cannot go into a request line as written, if it cannot.
pub(crate) fn url_path_problem(p: &str) -> Option<String> {
    let bad = p.chars().find(|c| c.is_control() || c.is_whitespace())?;
    Some(format!(
        "the URL path contains {} (U+{:04X})",
        if bad.is_control() {
            "a control character"
        } else {
            "a space"
        },
        bad as u32
    ))
}

/// A `build.include`/`exclude` pattern that climbs out of the project directory.
pub(crate) fn escapes_project(p: &str) -> bool {
    p.starts_with('/') || p.split('/').any(|c| c == "..")
}

/// A backup path that is not inside the app's data directory.
pub(crate) fn outside_data_dir(p: &str) -> bool {
    p.starts_with('/') || p.split('/').any(|c| c == "..") || p.trim().is_empty()
}

/// Instances of `services` that `host` runs (every host of a service's roles runs its
/// replicas, as the deploy places them).
pub(crate) fn instances_on(host: &HostSpec, services: &BTreeMap<String, ServiceSpec>) -> u64 {
    services
        .values()
        .filter(|s| host.has_any_role(&s.roles))
        .map(|s| u64::from(s.replicas))
        .sum()
}

/// `every` or `cron`: exactly one when `required`, at most one otherwise.
fn schedule(cx: &mut Cx<'_>, t: &Tbl<'_>, what: &str, required: bool) -> Option<Option<Schedule>> {
    match (t.get("every"), t.get("cron")) {
        (Some(_), Some(c)) => {
            let at = t.key_loc("cron").unwrap_or(&c.loc);
            cx.error(
                at,
                format!("{what} has both `every` and `cron`"),
                Some("keep one of them".into()),
            );
            None
        }
        (Some(e), None) => {
            let d = read_duration(cx, e, &t.path("every"), "every")?;
            if d < Duration::from_secs(1) {
                cx.error(
                    &e.loc,
                    format!("invalid `{}`: must be at least `1s`", t.path("every")),
                    None,
                );
                return None;
            }
            Some(Some(Schedule::Every(d)))
        }
        (None, Some(c)) => {
            let text = read_str(cx, c, &t.path("cron"))?;
            match CronExpr::parse(&text) {
                Ok(expr) => Some(Some(Schedule::Cron(expr))),
                Err(e) => {
                    cx.error(
                        &c.loc,
                        format!("invalid `{}`: {e}", t.path("cron")),
                        Some(
                            "for example `cron = \"0 3 * * *\"` runs at 03:00 UTC every day".into(),
                        ),
                    );
                    None
                }
            }
        }
        (None, None) if required => {
            cx.error(
                &t.at,
                format!("{what} has no schedule"),
                Some("add `every = \"5m\"` or `cron = \"0 3 * * *\"`".into()),
            );
            None
        }
        (None, None) => Some(None),
    }
}

fn job(cx: &mut Cx<'_>, key: &Key, node: &Node, refs: &mut Refs) -> Option<JobSpec> {
    let name = &key.name;
    let t = Tbl::open(cx, node, &join("jobs", name), &key.loc, JOB_KEYS)?;
    let command = t.command(cx, "command", "./bin/app cleanup");
    let schedule = schedule(cx, &t, &format!("job `{name}`"), true).flatten();
    let timeout = t
        .positive_duration(cx, "timeout")
        .unwrap_or(defaults::JOB_TIMEOUT);
    let singleton = t.bool(cx, "singleton").unwrap_or(true);
    let (roles, written) = roles(cx, &t, &[]);
    for (role, loc) in written {
        refs.role_uses.push(("job", name.clone(), role, loc));
    }
    Some(JobSpec {
        command: command?,
        schedule: schedule?,
        timeout,
        singleton,
        roles,
    })
}

fn hooks(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> HooksSpec {
    let Some(t) = Tbl::open(cx, node, "hooks", at.unwrap_or(&node.loc), HOOKS_KEYS) else {
        return HooksSpec::default();
    };
    HooksSpec {
        pre_activate: t.str(cx, "pre_activate"),
        smoke: t.str(cx, "smoke"),
        timeout: t
            .positive_duration(cx, "timeout")
            .unwrap_or(defaults::HOOK_TIMEOUT),
    }
}

/// `[run]`: `hoist run`'s test and seed commands (each optional; an empty one refused).
fn run(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> RunSpec {
    let Some(t) = Tbl::open(cx, node, "run", at.unwrap_or(&node.loc), RUN_KEYS) else {
        return RunSpec::default();
    };
    let command = |cx: &mut Cx<'_>, key: &str| {
        t.get(key)?;
        t.command(cx, key, "")
    };
    RunSpec {
        test: command(cx, "test"),
        seed: command(cx, "seed"),
    }
}

/// A path inside the app's data directory: relative and never climbing out of it.
fn data_path(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    let p = read_str(cx, node, path)?;
    if outside_data_dir(&p) {
        cx.error(
            &node.loc,
            format!("invalid `{path}`: `{p}` is not a path inside the app's data directory"),
            Some(
                "use a relative path such as `data/app.db`; it is resolved inside `HOIST_DATA_DIR`"
                    .into(),
            ),
        );
        return None;
    }
    Some(p)
}

fn backup(cx: &mut Cx<'_>, key: &Key, node: &Node, refs: &mut Refs) -> Option<BackupSpec> {
    let name = &key.name;
    let t = Tbl::open(cx, node, &join("backups", name), &key.loc, BACKUP_KEYS)?;
    let given: Vec<&str> = ["sqlite", "postgres", "directory"]
        .into_iter()
        .filter(|k| t.get(k).is_some())
        .collect();
    let source = match given.as_slice() {
        [] => {
            cx.error(
                &key.loc,
                format!("backup `{name}` has no source"),
                Some("add one of `sqlite = \"data/app.db\"`, `postgres = \"DATABASE_URL\"` or `directory = \"uploads\"`".into()),
            );
            None
        }
        [one] => {
            let n = t.get(one)?;
            let path = t.path(one);
            match *one {
                "sqlite" => data_path(cx, n, &path).map(|path| BackupSource::Sqlite { path }),
                "directory" => data_path(cx, n, &path).map(|path| BackupSource::Directory { path }),
                _ => read_str(cx, n, &path).map(|secret| {
                    refs.secret_uses
                        .push((secret.clone(), n.loc.clone(), "backup"));
                    BackupSource::Postgres { secret }
                }),
            }
        }
        [_, second, ..] => {
            let at = t.key_loc(second).unwrap_or(&key.loc);
            cx.error(
                at,
                format!(
                    "backup `{name}` has more than one source ({})",
                    list(&given)
                ),
                Some("declare one backup per source".into()),
            );
            None
        }
    };
    let schedule = schedule(cx, &t, &format!("backup `{name}`"), false).flatten();
    let before_deploy = t.bool(cx, "before_deploy").unwrap_or(false);
    let keep = match t.get("keep") {
        Some(n) => match Tbl::open(
            cx,
            n,
            &t.path("keep"),
            t.key_loc("keep").unwrap_or(&n.loc),
            KEEP_KEYS,
        ) {
            Some(k) => Keep {
                daily: k
                    .uint(cx, "daily", 0, 10_000)
                    .map_or(defaults::KEEP_DAILY, |n| n as u32),
                weekly: k
                    .uint(cx, "weekly", 0, 10_000)
                    .map_or(defaults::KEEP_WEEKLY, |n| n as u32),
                monthly: k
                    .uint(cx, "monthly", 0, 10_000)
                    .map_or(defaults::KEEP_MONTHLY, |n| n as u32),
                last: k
                    .uint(cx, "last", 0, 10_000)
                    .map_or(defaults::KEEP_LAST, |n| n as u32),
            },
            None => Keep::default(),
        },
        None => Keep::default(),
    };
    let copy_to = t.str(cx, "copy_to");
    Some(BackupSpec {
        source: source?,
        schedule,
        before_deploy,
        keep,
        copy_to,
    })
}

fn deploy(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> DeploySpec {
    let Some(t) = Tbl::open(cx, node, "deploy", at.unwrap_or(&node.loc), DEPLOY_KEYS) else {
        return DeploySpec::default();
    };
    let bake = t.get("bake").and_then(|n| match &n.value {
        Value::Str(_) | Value::Int(_) => {
            read_duration(cx, n, &t.path("bake"), "bake").map(BakeSpec::with_defaults)
        }
        _ => {
            let b = Tbl::open(
                cx,
                n,
                &t.path("bake"),
                t.key_loc("bake").unwrap_or(&n.loc),
                BAKE_KEYS,
            )?;
            let max_5xx_percent = b
                .uint(cx, "max_5xx_percent", 0, 100)
                .map_or(1, |n| n as u32);
            let max_p99 = b.positive_duration(cx, "max_p99");
            match b.positive_duration(cx, "duration") {
                Some(duration) => Some(BakeSpec {
                    duration,
                    max_5xx_percent,
                    max_p99,
                }),
                None if b.get("duration").is_none() => {
                    b.missing(
                        cx,
                        "duration",
                        Some("for example `bake = { duration = \"5m\" }`".into()),
                    );
                    None
                }
                None => None,
            }
        }
    });
    let rollout = match t.get("rollout") {
        Some(n) => rollout(
            cx,
            n,
            &t.path("rollout"),
            t.key_loc("rollout").unwrap_or(&n.loc),
        ),
        None => RolloutSpec::default(),
    };
    let canary = t.get("canary").and_then(|n| {
        crate::canary::canary(
            cx,
            n,
            &t.path("canary"),
            t.key_loc("canary").unwrap_or(&n.loc),
            CANARY_KEYS,
        )
    });
    DeploySpec {
        keep_releases: t
            .uint(cx, "keep_releases", 1, 1000)
            .map_or(defaults::KEEP_RELEASES, |n| n as u32),
        standby: t.duration(cx, "standby").unwrap_or(defaults::STANDBY),
        health_deadline: t
            .positive_duration(cx, "health_deadline")
            .unwrap_or(defaults::HEALTH_DEADLINE),
        bake,
        rollout,
        canary,
    }
}

fn rollout(cx: &mut Cx<'_>, node: &Node, path: &str, at: &Loc) -> RolloutSpec {
    let Some(t) = Tbl::open(cx, node, path, at, ROLLOUT_KEYS) else {
        return RolloutSpec::default();
    };
    let batch = match t.get("batch") {
        Some(n) => match &n.value {
            Value::Int(_) => read_uint(cx, n, &t.path("batch"), 1, 10_000).map(|c| Batch::Count(c as u32)),
            Value::Str(s) => match s.trim().strip_suffix('%').map(|p| p.trim().parse::<u8>()) {
                Some(Ok(p)) if (1..=100).contains(&p) => Some(Batch::Percent(p)),
                _ => {
                    cx.error(
                        &n.loc,
                        format!("invalid `{}`: expected a host count like `2` or a share like `25%`, found `{s}`", t.path("batch")),
                        Some("a share is from `1%` to `100%` of the hosts".into()),
                    );
                    None
                }
            },
            _ => {
                type_error(cx, n, &t.path("batch"), "a host count like `2` or a share like `25%`", None);
                None
            }
        },
        None => None,
    }
    .unwrap_or_default();
    let on_failure = match t.get("on_failure") {
        Some(n) => read_str(cx, n, &t.path("on_failure")).and_then(|s| match s.as_str() {
            "stop" => Some(OnFailure::Stop),
            "rollback" => Some(OnFailure::Rollback),
            other => {
                let hint = did_you_mean(other, ["stop", "rollback"]).map_or_else(
                    || "expected `stop` or `rollback`".to_string(),
                    |s| format!("did you mean `{s}`?"),
                );
                cx.error(
                    &n.loc,
                    format!(
                        "invalid `{}`: unknown policy `{other}`",
                        t.path("on_failure")
                    ),
                    Some(hint),
                );
                None
            }
        }),
        None => None,
    }
    .unwrap_or_default();
    RolloutSpec { batch, on_failure }
}

fn ssh(cx: &mut Cx<'_>, node: &Node, at: Option<&Loc>) -> SshSpec {
    let Some(t) = Tbl::open(cx, node, "ssh", at.unwrap_or(&node.loc), SSH_KEYS) else {
        return SshSpec::default();
    };
    SshSpec {
        config: t.str(cx, "config"),
        identity: t.str(cx, "identity"),
        port: t.uint(cx, "port", 1, 65535).map(|p| p as u16),
    }
}

fn hosts(cx: &mut Cx<'_>, node: &Node, used_roles: &BTreeSet<String>) -> Vec<HostSpec> {
    let Value::Array(items) = &node.value else {
        type_error(
            cx,
            node,
            "hosts",
            "an array of tables",
            Some("write each host as a `[[hosts]]` table".into()),
        );
        return Vec::new();
    };
    let mut out: Vec<HostSpec> = Vec::new();
    let mut seen: Vec<(String, Loc)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("hosts[{i}]");
        let Some(t) = Tbl::open(cx, item, &path, &item.loc, HOST_KEYS) else {
            continue;
        };
        let name = match t.get("name") {
            Some(n) => read_str(cx, n, &t.path("name")).and_then(|name| {
                let ok = !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !ok {
                    cx.error(
                        &n.loc,
                        format!(
                            "invalid host name `{name}`: expected letters, digits, `-`, `_` or `.`"
                        ),
                        None,
                    );
                    return None;
                }
                if let Some((_, first)) = seen.iter().find(|(s, _)| *s == name) {
                    let first = cx.loc_text(first);
                    cx.error(
                        &n.loc,
                        format!("duplicate host name `{name}`"),
                        Some(format!("first defined at {first}")),
                    );
                    return None;
                }
                seen.push((name.clone(), n.loc.clone()));
                Some(name)
            }),
            None => {
                t.missing(
                    cx,
                    "name",
                    Some("every `[[hosts]]` needs a `name`, such as `name = \"web1\"`".into()),
                );
                None
            }
        };
        let ssh = match t.get("ssh") {
            Some(n) => read_str(cx, n, &t.path("ssh")).and_then(|s| match SshAddr::parse(&s) {
                Ok(a) => Some(a),
                Err(e) => {
                    cx.error(
                        &n.loc,
                        format!("invalid `{}`: {e}", t.path("ssh")),
                        Some("for example `ssh = \"deploy@10.0.0.5:22\"`".into()),
                    );
                    None
                }
            }),
            // A remote host without `ssh` is reached by its name, as `ssh NAME` would.
            None => name
                .as_deref()
                .filter(|n| *n != defaults::LOCAL_HOST)
                .and_then(|n| SshAddr::parse(n).ok()),
        };
        let roles = match t.str_list(cx, "roles") {
            Some(list) => {
                let mut roles: Vec<String> = Vec::new();
                for (role, loc) in list {
                    if !used_roles.contains(&role) {
                        let hint = match did_you_mean(&role, used_roles.iter().map(String::as_str))
                        {
                            Some(s) => format!("did you mean `{s}`?"),
                            None if used_roles.is_empty() => {
                                "no service or job declares roles".to_string()
                            }
                            None => format!("roles in use: {}", list_owned(used_roles)),
                        };
                        cx.warn(
                            &loc,
                            format!("role `{role}` is not used by any service or job"),
                            Some(hint),
                        );
                    }
                    if !roles.contains(&role) {
                        roles.push(role);
                    }
                }
                roles
            }
            // A host that names no roles runs everything.
            None => used_roles.iter().cloned().collect(),
        };
        let env = t.env(cx, "env");
        let files = files_host(cx, &t, ssh.is_some());
        if let Some(name) = name {
            out.push(HostSpec {
                name,
                ssh,
                roles,
                env,
                files,
                address: None,
            });
        }
    }
    if items.is_empty() {
        cx.error(
            &node.loc,
            "`hosts` is empty",
            Some("add a `[[hosts]]` table, or remove `hosts` to deploy to `local`".into()),
        );
    }
    out
}

/// `mode = "files"` and its keys (`path`, `restart`, `health`, `expect`); those keys on
/// an agent host are refused, as they would do nothing there.
fn files_host(cx: &mut Cx<'_>, t: &Tbl<'_>, has_ssh: bool) -> Option<FilesHost> {
    let mode = t.str(cx, "mode");
    let files = match mode.as_deref() {
        None | Some("agent") => false,
        Some("files") => true,
        Some(other) => {
            if let Some(n) = t.get("mode") {
                cx.error(
                    &n.loc,
                    format!("unknown host mode `{other}`"),
                    Some("`mode` is `agent` (the default) or `files`".into()),
                );
            }
            return None;
        }
    };
    let path = t.str(cx, "path");
    let restart = t.str(cx, "restart");
    let health = t.str(cx, "health");
    let expect = t.str(cx, "expect");
    if !files {
        for key in ["path", "restart", "health", "expect"] {
            if let Some(n) = t.get(key) {
                cx.error(
                    &n.loc,
                    format!("`{}` is only for a files host", t.path(key)),
                    Some("add `mode = \"files\"` to this `[[hosts]]`, or remove the key".into()),
                );
            }
        }
        return None;
    }
    if !has_ssh {
        if let Some(n) = t.get("mode") {
            cx.error(
                &n.loc,
                "a files host needs an `ssh` address",
                Some("add `ssh = \"user@host\"`".into()),
            );
        }
    }
    for (key, value) in [
        ("restart", &restart),
        ("health", &health),
        ("expect", &expect),
    ] {
        if value
            .as_ref()
            .is_some_and(|v| v.contains(['\0', '\n', '\r']))
        {
            if let Some(n) = t.get(key) {
                cx.error(&n.loc, format!("`{}` must be one line", t.path(key)), None);
            }
        }
    }
    if let (Some(h), Some(n)) = (&health, t.get("health")) {
        if !h.starts_with("http://") {
            cx.error(
                &n.loc,
                format!(
                    "`{}` must be an http:// URL (https is not checked yet)",
                    t.path("health")
                ),
                None,
            );
        }
    }
    let Some(path) = path else {
        t.missing(
            cx,
            "path",
            Some(
                "a files host needs the served directory, such as `path = \"/home/me/app\"`".into(),
            ),
        );
        return None;
    };
    let bad = path.is_empty()
        || path.ends_with('/')
        || path.contains(['\0', '\n', '\r'])
        || path.split('/').any(|c| c == ".." || c == ".");
    if bad {
        if let Some(n) = t.get("path") {
            cx.error(
                &n.loc,
                format!("invalid `{}` `{path}`", t.path("path")),
                Some("a directory without `.`, `..` or a trailing `/`".into()),
            );
        }
        return None;
    }
    Some(FilesHost {
        path,
        restart: restart.unwrap_or_else(|| FilesHost::DEFAULT_RESTART.to_string()),
        health,
        expect,
    })
}

fn list_owned(items: &BTreeSet<String>) -> String {
    items
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refuses an app that would put more than [`MAX_INSTANCES_PER_HOST`] instances on a host
/// (placement as the deploy computes it: every host of a service's roles runs its replicas).
fn instances_per_host(
    cx: &mut Cx<'_>,
    refs: &Refs,
    services: &BTreeMap<String, ServiceSpec>,
    hosts: &[HostSpec],
) {
    for host in hosts {
        let mut total: u64 = 0;
        for (name, s) in services {
            if !host.has_any_role(&s.roles) {
                continue;
            }
            total += u64::from(s.replicas);
            if total > MAX_INSTANCES_PER_HOST {
                let at = refs
                    .service_locs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, loc)| loc.clone());
                let Some(at) = at else { return };
                let all = instances_on(host, services);
                cx.error(
                    &at,
                    format!(
                        "host `{}` would run {all} instances; at most {MAX_INSTANCES_PER_HOST} per host",
                        host.name
                    ),
                    Some("lower `replicas`, or spread the services over more hosts with `roles`".into()),
                );
                break;
            }
        }
    }
}

fn cross_check(
    cx: &mut Cx<'_>,
    refs: &Refs,
    services: &BTreeMap<String, ServiceSpec>,
    secrets: &SecretsSpec,
    hosts: Option<&[HostSpec]>,
) {
    let host_roles: BTreeSet<&str> = hosts
        .unwrap_or(&[])
        .iter()
        .flat_map(|h| h.roles.iter().map(String::as_str))
        .collect();
    for (kind, owner, role, loc) in refs.role_uses.iter().filter(|_| hosts.is_some()) {
        if !host_roles.contains(role.as_str()) {
            let hint = match did_you_mean(role, host_roles.iter().copied()) {
                Some(s) => format!(
                    "did you mean `{s}`? or add `{}` to the `roles` of a `[[hosts]]` entry",
                    toml_quote(role)
                ),
                None => format!(
                    "add `{}` to the `roles` of a `[[hosts]]` entry",
                    toml_quote(role)
                ),
            };
            cx.error(
                loc,
                format!("{kind} `{owner}` runs on role `{role}`, which no host has"),
                Some(hint),
            );
        }
    }
    for (secret, loc, what) in &refs.secret_uses {
        if !secrets.required.contains(secret) {
            cx.error(
                loc,
                format!("{what} uses secret `{secret}`, which is not in `secrets.required`"),
                Some(format!(
                    "add `{}` to `required` in `[secrets]`",
                    toml_quote(secret)
                )),
            );
        }
    }
    for (job, loc) in &refs.job_names {
        if services.contains_key(job) {
            cx.error(
                loc,
                format!("`{job}` is both a service and a job"),
                Some("give them different names: logs and status name them alone".into()),
            );
        }
    }
    for (i, (service, domain, prefix, loc)) in refs.routes.iter().enumerate() {
        if let Some((other, ..)) = refs.routes[..i]
            .iter()
            .find(|(s, d, p, _)| s != service && d == domain && p == prefix)
        {
            cx.error(
                loc,
                format!("services `{other}` and `{service}` both route `{domain}` with path prefix `{prefix}`"),
                Some("give one of them another domain or `path_prefix`".into()),
            );
        }
    }
}
