//! The invariants of a typed [`AppSpec`] that did not come from this crate's parser: the
//! agent's API takes the spec as JSON, and whatever reaches its socket (or the
//! dashboard's `/v1/*`) is checked again here before anything is staged. The rules are
//! the app file's own (the same predicates and caps as `validate.rs`); only the way they
//! are reported differs: a field path instead of file:line:column.

use std::collections::BTreeMap;

use hoist_core::names::{check_env_name, is_app_name, is_user_name, EnvNameProblem};
use hoist_core::spec::{
    alert_rules, AcmeSpec, AlertsSpec, AppSpec, BackupSource, CanarySpec, HealthKind, HealthSpec,
    HttpSpec, TlsSpec,
};

use crate::alerts::{is_receiver_url, LOG_COUNT_MAX};
use crate::canary::{step_ok, MIN_REQUESTS_MAX};
use crate::validate::{
    domain_problem, escapes_project, instances_on, is_cert_name, is_email, is_header_name,
    is_host_path, is_https_url, outside_data_dir, url_path_problem, valid_cidr,
    MAX_INSTANCES_PER_HOST, MAX_REPLICAS, RATE_LIMIT_MAX,
};

/// Every problem of `spec`, each naming the field it is in; empty when the spec is one
/// the app file could have produced as far as these rules go.
pub fn check_spec(spec: &AppSpec) -> Vec<String> {
    let mut out = Vec::new();
    nul_anywhere(&mut out, spec);
    name(&mut out, "app", &spec.app);
    env(&mut out, "env", &spec.env);
    for s in &spec.secrets.required {
        env_name(&mut out, "secrets.required", s, "secret name");
    }
    for (key, list) in [
        ("include", &spec.build.include),
        ("exclude", &spec.build.exclude),
    ] {
        for p in list.iter().filter(|p| escapes_project(p)) {
            out.push(format!(
                "invalid `build.{key}`: `{p}` is outside the project directory"
            ));
        }
    }
    if let Some(c) = &spec.check {
        command(&mut out, "check.command", &c.command);
    }
    for (n, s) in &spec.services {
        let at = format!("services.{n}");
        name(&mut out, "service", n);
        command(&mut out, &format!("{at}.command"), &s.command);
        if s.replicas == 0 || s.replicas > MAX_REPLICAS {
            out.push(format!(
                "invalid `{at}.replicas`: {} is outside 1..={MAX_REPLICAS}",
                s.replicas
            ));
        }
        if s.singleton && s.replicas != 1 {
            out.push(format!(
                "service `{n}` is a singleton but asks for `replicas = {}`",
                s.replicas
            ));
        }
        if let Some(u) = s.user.as_deref().filter(|u| !is_user_name(u)) {
            out.push(format!(
                "invalid `{at}.user`: `{u}` is not a Unix user name"
            ));
        }
        env(&mut out, &format!("{at}.env"), &s.env);
        if let Some(h) = &s.http {
            if let Some(p) = url_path_problem(&h.path_prefix) {
                out.push(format!("invalid `{at}.http.path_prefix`: {p}"));
            }
            health(&mut out, &format!("{at}.http.health"), &h.health);
            http(&mut out, &format!("{at}.http"), h, &spec.secrets.required);
        }
        if let Some(h) = &s.health {
            health(&mut out, &format!("{at}.health"), h);
        }
    }
    for (n, j) in &spec.jobs {
        name(&mut out, "job", n);
        command(&mut out, &format!("jobs.{n}.command"), &j.command);
    }
    for (n, b) in &spec.backups {
        name(&mut out, "backup", n);
        match &b.source {
            BackupSource::Sqlite { path } | BackupSource::Directory { path }
                if outside_data_dir(path) =>
            {
                out.push(format!(
                    "invalid `backups.{n}`: `{path}` is not a path inside the app's data directory"
                ));
            }
            BackupSource::Postgres { secret } => env_name(
                &mut out,
                &format!("backups.{n}.postgres"),
                secret,
                "secret name",
            ),
            _ => {}
        }
    }
    for n in spec.slo.keys() {
        name(&mut out, "slo", n);
    }
    acme(&mut out, &spec.acme);
    alerts(&mut out, &spec.alerts, spec);
    if let Some(c) = &spec.deploy.canary {
        canary(&mut out, c);
    }
    for host in &spec.hosts {
        env(&mut out, &format!("hosts.{}.env", host.name), &host.env);
        let all = instances_on(host, &spec.services);
        if all > MAX_INSTANCES_PER_HOST {
            out.push(format!(
                "host `{}` would run {all} instances; at most {MAX_INSTANCES_PER_HOST} per host",
                host.name
            ));
        }
    }
    out
}

/// A NUL cannot cross exec or the environment, and the app file refuses it in every
/// string; the spec is walked as JSON so no string (or map key) is missed.
fn nul_anywhere(out: &mut Vec<String>, spec: &AppSpec) {
    fn walk(out: &mut Vec<String>, at: &str, v: &serde_json::Value) {
        use serde_json::Value;
        match v {
            Value::String(s) if s.contains('\0') => out.push(format!(
                "invalid `{at}`: the string contains a NUL character (`\\u0000`)"
            )),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(out, &format!("{at}[{i}]"), item);
                }
            }
            Value::Object(map) => {
                for (k, item) in map {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    if k.contains('\0') {
                        out.push(format!(
                            "invalid key in `{at}`: it contains a NUL character"
                        ));
                    }
                    walk(out, &here, item);
                }
            }
            _ => {}
        }
    }
    match serde_json::to_value(spec) {
        Ok(v) => walk(out, "", &v),
        Err(e) => out.push(format!("the spec cannot be read back: {e}")),
    }
}

fn name(out: &mut Vec<String>, what: &str, n: &str) {
    if !is_app_name(n) {
        out.push(format!(
            "invalid {what} name `{}`: expected a lowercase letter followed by lowercase letters, digits, `-` or `_` (at most {})",
            n.escape_debug(),
            hoist_core::names::MAX_NAME_LEN
        ));
    }
}

fn env(out: &mut Vec<String>, at: &str, vars: &BTreeMap<String, String>) {
    for k in vars.keys() {
        env_name(out, at, k, "environment variable");
    }
}

fn env_name(out: &mut Vec<String>, at: &str, n: &str, what: &str) {
    match check_env_name(n) {
        Ok(()) => {}
        Err(EnvNameProblem::Reserved(why)) => {
            out.push(format!("`{at}`: {what} `{n}` is reserved: {why}"))
        }
        Err(EnvNameProblem::Invalid) => out.push(format!(
            "`{at}`: invalid {what} `{}`: not a valid environment variable name",
            n.escape_debug()
        )),
    }
}

fn command(out: &mut Vec<String>, at: &str, c: &str) {
    if c.trim().is_empty() {
        out.push(format!("invalid `{at}`: the command is empty"));
    }
}

/// Domains, TLS and the proxy's guards of one `http` table.
fn http(out: &mut Vec<String>, at: &str, h: &HttpSpec, required: &[String]) {
    if h.domains.is_empty() {
        out.push(format!("invalid `{at}.domains`: no domains"));
    }
    for d in h.domains.iter().filter(|d| domain_problem(d)) {
        out.push(format!(
            "invalid domain `{}` in `{at}.domains`: expected a host name like `example.com` or `*`",
            d.escape_debug()
        ));
    }
    match &h.tls {
        Some(tls) => {
            for d in h.domains.iter().filter(|d| !is_cert_name(d)) {
                out.push(format!(
                    "`{at}.tls` needs host names in `{at}.domains`, found `{}`",
                    d.escape_debug()
                ));
            }
            if let TlsSpec::File { cert, key } = tls {
                for (k, p) in [("cert", cert), ("key", key)] {
                    if !is_host_path(p) {
                        out.push(format!(
                            "invalid `{at}.tls.{k}`: `{}` is not an absolute path",
                            p.escape_debug()
                        ));
                    }
                }
            }
        }
        None if h.redirect_https || h.hsts.is_some() => {
            out.push(format!(
                "`{at}.redirect_https` and `{at}.hsts` need `{at}.tls`"
            ));
        }
        None => {}
    }
    let g = &h.guards;
    if let Some(r) = &g.rate_limit {
        let range = 1..=RATE_LIMIT_MAX;
        if !range.contains(&u64::from(r.requests))
            || !range.contains(&u64::from(r.burst))
            || r.per.is_zero()
        {
            out.push(format!(
                "invalid `{at}.rate_limit`: `requests` and `burst` are 1..={RATE_LIMIT_MAX} and `per` above zero"
            ));
        }
        for k in r.key.iter().filter(|k| !is_header_name(k)) {
            out.push(format!(
                "invalid header name `{}` in `{at}.rate_limit.key`",
                k.escape_debug()
            ));
        }
    }
    if let Some(b) = g
        .basic_auth
        .as_ref()
        .filter(|b| !required.contains(&b.secret))
    {
        out.push(format!(
            "`{at}.basic_auth` uses secret `{}`, which is not in `secrets.required`",
            b.secret.escape_debug()
        ));
    }
    for c in g.trusted_proxies.iter().filter(|c| !valid_cidr(c)) {
        out.push(format!(
            "invalid `{at}.trusted_proxies`: `{}` is not an address or CIDR block",
            c.escape_debug()
        ));
    }
}

fn acme(out: &mut Vec<String>, a: &AcmeSpec) {
    if let Some(e) = a.email.as_deref().filter(|e| !is_email(e)) {
        out.push(format!(
            "invalid `acme.email`: `{}` is not an email address",
            e.escape_debug()
        ));
    }
    if !is_https_url(&a.directory) {
        out.push(format!(
            "invalid `acme.directory`: `{}` is not an https:// URL",
            a.directory.escape_debug()
        ));
    }
    if let Some(p) = a.ca_roots.as_deref().filter(|p| !is_host_path(p)) {
        out.push(format!(
            "invalid `acme.ca_roots`: `{}` is not an absolute path",
            p.escape_debug()
        ));
    }
}

fn alerts(out: &mut Vec<String>, a: &AlertsSpec, spec: &AppSpec) {
    for (key, url) in [("webhook", &a.webhook), ("alertmanager", &a.alertmanager)] {
        if let Some(url) = url.as_deref().filter(|u| !is_receiver_url(u)) {
            out.push(format!(
                "invalid `alerts.{key}`: `{}` is not an http:// or https:// URL",
                url.escape_debug()
            ));
        }
    }
    if a.webhook.is_some() && a.webhook_secret.is_some() {
        out.push("`alerts.webhook` and `alerts.webhook_secret` are both set".into());
    }
    if let Some(p) = a.ca_roots.as_deref().filter(|p| !is_host_path(p)) {
        out.push(format!(
            "invalid `alerts.ca_roots`: `{}` is not an absolute path",
            p.escape_debug()
        ));
    }
    for (rule, o) in &a.rules {
        if !alert_rules::NAMES.contains(&rule.as_str()) {
            out.push(format!("unknown alert rule `{}`", rule.escape_debug()));
        }
        if o.threshold.is_some_and(|t| t < 0.0 || t.is_nan()) {
            out.push(format!(
                "invalid `alerts.rules.{rule}.threshold`: must not be negative"
            ));
        }
    }
    for (n, r) in &a.logs {
        let at = format!("alerts.logs.{n}");
        name(out, "log rule", n);
        if !spec.services.contains_key(&r.service) {
            out.push(format!(
                "`{at}.service` names no service: `{}`",
                r.service.escape_debug()
            ));
        }
        if let Err(e) = regex_lite::Regex::new(&r.pattern) {
            out.push(format!("invalid regex in `{at}.pattern`: {e}"));
        }
        if r.count == 0 || u64::from(r.count) > LOG_COUNT_MAX {
            out.push(format!(
                "invalid `{at}.count`: {} is outside 1..={LOG_COUNT_MAX}",
                r.count
            ));
        }
        if r.within.is_zero() {
            out.push(format!("invalid `{at}.within`: must be above zero"));
        }
    }
}

fn canary(out: &mut Vec<String>, c: &CanarySpec) {
    let at = "deploy.canary";
    if c.steps_bp.is_empty() {
        out.push(format!("invalid `{at}.steps`: at least one step is needed"));
    }
    if !c.steps_bp.iter().all(|bp| step_ok(*bp)) || !c.steps_bp.windows(2).all(|w| w[0] < w[1]) {
        out.push(format!(
            "invalid `{at}.steps`: each a percentage above 0 and below 100, strictly increasing"
        ));
    }
    if c.interval.is_zero() {
        out.push(format!("invalid `{at}.interval`: must be above zero"));
    }
    if c.max_error_bp > 10_000 {
        out.push(format!(
            "invalid `{at}.max_error_rate`: expected a share from `0%` to `100%`"
        ));
    }
    if c.max_p99.is_some_and(|d| d.is_zero()) {
        out.push(format!("invalid `{at}.max_p99`: must be above zero"));
    }
    if c.min_requests == 0 || c.min_requests > MIN_REQUESTS_MAX {
        out.push(format!(
            "invalid `{at}.min_requests`: {} is outside 1..={MIN_REQUESTS_MAX}",
            c.min_requests
        ));
    }
}

fn health(out: &mut Vec<String>, at: &str, h: &HealthSpec) {
    match &h.kind {
        HealthKind::Http { path, .. } => {
            if !path.starts_with('/') {
                out.push(format!(
                    "invalid `{at}`: expected a URL path like `/health`, found `{}`",
                    path.escape_debug()
                ));
            } else if let Some(p) = url_path_problem(path) {
                out.push(format!("invalid `{at}`: {p}"));
            }
        }
        HealthKind::Exec { command: c } => command(out, &format!("{at}.command"), c),
        HealthKind::Tcp => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> AppSpec {
        crate::parse_str(
            "hoist.toml",
            r#"app = "shop"
[services.web]
command = "./web --port $PORT"
http = { domains = ["*"], health = "/health" }
[jobs.clean]
command = "./clean"
every = "1h"
[backups.db]
sqlite = "data/app.db"
"#,
        )
        .unwrap()
        .spec
    }

    #[test]
    fn a_spec_from_the_app_file_passes() {
        assert_eq!(check_spec(&spec()), Vec::<String>::new());
    }

    /// What the app file refuses in TLS, domains, guards, `[acme]`, `[alerts]` and
    /// `[deploy.canary]` is refused in a typed spec too.
    #[test]
    fn tls_domains_guards_alerts_and_canary_are_checked_as_in_the_app_file() {
        use hoist_core::spec::{BasicAuthSpec, LogRule, RateLimitSpec, RuleOverride, TlsSpec};
        use std::time::Duration;
        let mut s = spec();
        let http = s.services.get_mut("web").unwrap().http.as_mut().unwrap();
        http.domains = vec!["https://evil.test/x".into(), "*".into()];
        http.tls = Some(TlsSpec::File {
            cert: "../../etc/ssl.pem".into(),
            key: "key.pem".into(),
        });
        http.guards.trusted_proxies = vec!["10.0.0.0/99".into()];
        http.guards.rate_limit = Some(RateLimitSpec {
            requests: 0,
            per: Duration::ZERO,
            burst: 1,
            key: vec!["X-Evil\r\n".into()],
        });
        http.guards.basic_auth = Some(BasicAuthSpec {
            secret: "HTPASSWD".into(),
            realm: "r".into(),
        });
        s.acme.directory = "http://ca.test/dir".into();
        s.acme.ca_roots = Some("roots.pem".into());
        s.alerts.webhook = Some("file:///etc/passwd".into());
        s.alerts.webhook_secret = Some("HOOK".into());
        s.alerts.ca_roots = Some("roots.pem".into());
        s.alerts.rules.insert(
            "nope".into(),
            RuleOverride {
                enabled: true,
                threshold: Some(-1.0),
            },
        );
        s.alerts.logs.insert(
            "oops".into(),
            LogRule {
                service: "ghost".into(),
                pattern: "(".into(),
                count: 0,
                within: Duration::ZERO,
            },
        );
        s.deploy.canary = Some(CanarySpec {
            steps_bp: vec![5000, 500, 10_000],
            interval: Duration::ZERO,
            max_error_bp: 20_000,
            max_p99: Some(Duration::ZERO),
            min_requests: 0,
        });
        let all = check_spec(&s).join("\n");
        for want in [
            "invalid domain `https://evil.test/x`",
            "`services.web.http.tls` needs host names in `services.web.http.domains`, found `*`",
            "`services.web.http.tls.cert`: `../../etc/ssl.pem` is not an absolute path",
            "`services.web.http.tls.key`: `key.pem` is not an absolute path",
            "`10.0.0.0/99` is not an address or CIDR block",
            "invalid `services.web.http.rate_limit`",
            "invalid header name `X-Evil\\r\\n`",
            "uses secret `HTPASSWD`, which is not in `secrets.required`",
            "`acme.directory`: `http://ca.test/dir` is not an https:// URL",
            "`acme.ca_roots`: `roots.pem` is not an absolute path",
            "`alerts.webhook`: `file:///etc/passwd` is not an http:// or https:// URL",
            "`alerts.webhook` and `alerts.webhook_secret` are both set",
            "`alerts.ca_roots`: `roots.pem` is not an absolute path",
            "unknown alert rule `nope`",
            "`alerts.rules.nope.threshold`: must not be negative",
            "`alerts.logs.oops.service` names no service: `ghost`",
            "invalid regex in `alerts.logs.oops.pattern`",
            "`alerts.logs.oops.count`: 0 is outside",
            "`alerts.logs.oops.within`: must be above zero",
            "invalid `deploy.canary.steps`",
            "`deploy.canary.interval`: must be above zero",
            "`deploy.canary.max_error_rate`",
            "`deploy.canary.max_p99`: must be above zero",
            "`deploy.canary.min_requests`: 0 is outside",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        // Without TLS, a redirect to HTTPS is refused as in the app file.
        let mut s = spec();
        s.services
            .get_mut("web")
            .unwrap()
            .http
            .as_mut()
            .unwrap()
            .redirect_https = true;
        let all = check_spec(&s).join("\n");
        assert!(all.contains("need `services.web.http.tls`"), "{all}");
    }

    #[test]
    fn hostile_values_are_named() {
        let mut s = spec();
        let web = s.services.get_mut("web").unwrap();
        web.http.as_mut().unwrap().health.kind = HealthKind::Http {
            path: "/health\r\nX-Evil: 1".into(),
            expect_status: None,
        };
        web.command = "./web\0--evil".into();
        web.user = Some("../../root".into());
        web.replicas = 10_000;
        s.build.include = vec!["/etc/shadow".into(), "../../x".into()];
        s.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
        s.jobs.insert("../etc".into(), s.jobs["clean"].clone());
        s.backups.get_mut("db").unwrap().source = BackupSource::Sqlite {
            path: "../../etc/passwd".into(),
        };
        let all = check_spec(&s).join("\n");
        for want in [
            "`services.web.http.health`: the URL path contains a control character (U+000D)",
            "`services.web.command`: the string contains a NUL",
            "`services.web.user`: `../../root` is not a Unix user name",
            "`services.web.replicas`: 10000 is outside 1..=256",
            "would run 10000 instances",
            "`/etc/shadow` is outside the project directory",
            "`../../x` is outside the project directory",
            "`LD_PRELOAD` is reserved",
            "invalid job name `../etc`",
            "`../../etc/passwd` is not a path inside",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }
}
