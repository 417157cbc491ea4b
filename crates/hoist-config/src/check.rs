//! The invariants of a typed [`AppSpec`] that did not come from this crate's parser: the
//! agent's API takes the spec as JSON, and whatever reaches its socket (or the
//! dashboard's `/v1/*`) is checked again here before anything is staged. The rules are
//! the app file's own (the same predicates and caps as `validate.rs`); only the way they
//! are reported differs: a field path instead of file:line:column.

use std::collections::BTreeMap;

use hoist_core::names::{check_env_name, is_app_name, is_user_name, EnvNameProblem};
use hoist_core::spec::{AppSpec, BackupSource, HealthKind, HealthSpec};

use crate::validate::{
    escapes_project, instances_on, outside_data_dir, url_path_problem, MAX_INSTANCES_PER_HOST,
    MAX_REPLICAS,
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
