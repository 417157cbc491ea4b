//! `hoist review`'s checks, table-driven: one app file that passes every check, and for
//! each check a change to it that makes that check (and only it, or it among few) not
//! pass. The files are real app files loaded from disk as `hoist review` loads them.

use std::collections::BTreeMap;
use std::time::Duration;

use hoist_config::review::{exit_code, load_for_review, review, Finding, Live, Status};

const GOOD: &str = r#"app = "shop"

[env]
LOG_LEVEL = "info"

[secrets]
required = ["DATABASE_URL"]

[services.web]
command = "./web"
replicas = 2
memory_limit = "256MiB"
stop_timeout = "30s"
user = "shop"
logs = { max_size = "50MiB", keep = 10 }
http = { domains = ["shop.example.com"], health = { path = "/health", healthy_threshold = 2, unhealthy_threshold = 3 }, drain_timeout = "10s", tls = "acme", hsts = "365d", rate_limit = { requests = 100, per = "1s", burst = 50 } }

[services.worker]
command = "./worker"
singleton = true
memory_limit = "128MiB"
user = "shop"
logs = { max_size = "20MiB", keep = 3 }
roles = ["web"]

[jobs.cleanup]
command = "./cleanup"
every = "1h"
timeout = "5m"

[hooks]
pre_activate = "./migrate"

[backups.db]
postgres = "DATABASE_URL"
before_deploy = true

[deploy]
keep_releases = 5
bake = { duration = "2m" }

[alerts]
webhook = "https://hooks.example.com/ops"

[acme]
email = "ops@example.com"

[slo.availability]
service = "web"
objective = "99.9%"

[[hosts]]
name = "a"
ssh = "deploy@10.0.0.1"
roles = ["web"]

[[hosts]]
name = "b"
ssh = "deploy@10.0.0.2"
roles = ["web"]
"#;

fn live(verified_days_ago: Option<u64>) -> Live {
    let now_ms = 1_800_000_000_000;
    let mut last = BTreeMap::new();
    if let Some(d) = verified_days_ago {
        last.insert("db".to_string(), now_ms - (d * 86_400_000) as i64);
    }
    Live {
        asked: 2,
        answered: 2,
        last_verified_ms: last,
        now_ms,
        max_verify_age: Duration::from_secs(30 * 86_400),
    }
}

fn grade(text: &str, live: &Live) -> Vec<Finding> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hoist.toml");
    std::fs::write(&path, text).unwrap();
    let (loaded, raw) = load_for_review(&path, None)
        .unwrap_or_else(|e| panic!("{e}: {:?}\n{text}", e.diagnostics()));
    review(&loaded.spec, &raw, Some(live))
}

fn status(findings: &[Finding], id: &str) -> Status {
    findings
        .iter()
        .find(|f| f.id == id)
        .unwrap_or_else(|| panic!("no check `{id}`"))
        .status
}

fn mutate(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "the good file contains `{from}`");
    GOOD.replacen(from, to, 1)
}

#[test]
fn the_good_file_passes_every_check() {
    let f = grade(GOOD, &live(Some(3)));
    let not: Vec<&Finding> = f.iter().filter(|f| f.status != Status::Pass).collect();
    assert!(not.is_empty(), "{not:#?}");
    assert_eq!(exit_code(&f), 0);
    assert_eq!(f.len(), 20, "{f:#?}");
    for x in &f {
        assert!(x.fix.is_empty() && !x.why.is_empty(), "{x:?}");
    }
}

#[test]
fn each_check_fails_on_a_file_that_breaks_it() {
    let host_b = "\n[[hosts]]\nname = \"b\"\nssh = \"deploy@10.0.0.2\"\nroles = [\"web\"]\n";
    let web_http = r#"http = { domains = ["shop.example.com"], health = { path = "/health", healthy_threshold = 2, unhealthy_threshold = 3 }, drain_timeout = "10s", tls = "acme", hsts = "365d", rate_limit = { requests = 100, per = "1s", burst = 50 } }"#;
    // (check, the file that breaks it, the status expected)
    let cases: Vec<(&str, String, Status)> = vec![
        ("availability.hosts", mutate(host_b, ""), Status::Warn),
        (
            "availability.replicas",
            mutate(host_b, "").replacen("replicas = 2", "replicas = 1", 1),
            Status::Warn,
        ),
        ("availability.singletons", mutate(host_b, ""), Status::Warn),
        (
            "deploys.health",
            mutate(web_http, &web_http.replace(r#"health = { path = "/health", healthy_threshold = 2, unhealthy_threshold = 3 }"#, r#"health = "/health""#)),
            Status::Warn,
        ),
        (
            "deploys.timeouts",
            mutate("stop_timeout = \"30s\"", "stop_timeout = \"2s\""),
            Status::Warn,
        ),
        (
            "deploys.bake",
            mutate("bake = { duration = \"2m\" }\n", ""),
            Status::Warn,
        ),
        (
            "data.backups",
            mutate("[backups.db]\npostgres = \"DATABASE_URL\"\nbefore_deploy = true\n", ""),
            Status::Fail,
        ),
        (
            "data.before_deploy",
            mutate("before_deploy = true\n", ""),
            Status::Fail,
        ),
        (
            "security.tls",
            mutate(", tls = \"acme\", hsts = \"365d\"", ""),
            Status::Fail,
        ),
        ("security.hsts", mutate(", hsts = \"365d\"", ""), Status::Warn),
        (
            "security.secrets",
            mutate("LOG_LEVEL = \"info\"", "STRIPE_API_KEY = \"sk_live_123\""),
            Status::Fail,
        ),
        (
            "security.user",
            mutate("user = \"shop\"\nlogs", "user = \"root\"\nlogs"),
            Status::Fail,
        ),
        (
            "security.rate_limit",
            mutate(", rate_limit = { requests = 100, per = \"1s\", burst = 50 }", ""),
            Status::Warn,
        ),
        (
            "observability.alerts",
            mutate("webhook = \"https://hooks.example.com/ops\"\n", ""),
            Status::Fail,
        ),
        (
            "observability.slo",
            mutate("[slo.availability]\nservice = \"web\"\nobjective = \"99.9%\"\n", ""),
            Status::Warn,
        ),
        (
            "observability.log_retention",
            mutate("logs = { max_size = \"20MiB\", keep = 3 }\n", ""),
            Status::Warn,
        ),
        (
            "operations.limits",
            mutate("memory_limit = \"128MiB\"\n", ""),
            Status::Warn,
        ),
        (
            "operations.job_timeouts",
            mutate("timeout = \"5m\"\n", ""),
            Status::Warn,
        ),
        (
            "operations.keep_releases",
            mutate("keep_releases = 5", "keep_releases = 1"),
            Status::Fail,
        ),
    ];
    let mut seen: Vec<&str> = cases.iter().map(|c| c.0).collect();
    for (id, text, want) in &cases {
        let f = grade(text, &live(Some(3)));
        assert_eq!(status(&f, id), *want, "{id}: {f:#?}");
        let x = f.iter().find(|x| x.id == *id).unwrap();
        assert!(!x.fix.is_empty() && !x.why.is_empty(), "{x:?}");
        assert_eq!(
            exit_code(&f),
            i32::from(f.iter().any(|x| x.status == Status::Fail))
        );
    }
    // The live check: a restore verified too long ago, or never, fails.
    let f = grade(GOOD, &live(Some(45)));
    assert_eq!(status(&f, "data.restore_verified"), Status::Fail);
    assert_eq!(exit_code(&f), 1);
    let f = grade(GOOD, &live(None));
    assert_eq!(status(&f, "data.restore_verified"), Status::Fail);
    // No host answering is a warning, not a pass.
    let mut silent = live(Some(3));
    silent.answered = 0;
    let f = grade(GOOD, &silent);
    assert_eq!(status(&f, "data.restore_verified"), Status::Warn);
    assert_eq!(exit_code(&f), 0);
    seen.push("data.restore_verified");
    // Every check the good file runs has a breaking case.
    let all = grade(GOOD, &live(Some(3)));
    for x in &all {
        assert!(
            seen.contains(&x.id.as_str()),
            "no failing case for `{}`",
            x.id
        );
    }
}

#[test]
fn a_database_in_env_without_a_backup_and_a_password_in_a_url_are_found() {
    let text = mutate(
        "LOG_LEVEL = \"info\"",
        "CACHE_DB = \"/var/lib/shop/cache.sqlite3\"\nREPORTS = \"postgres://app:hunter2@db/reports\"",
    );
    let f = grade(&text, &live(Some(3)));
    let backups = f.iter().find(|x| x.id == "data.backups").unwrap();
    assert_eq!(backups.status, Status::Fail, "{backups:?}");
    assert!(
        backups.why.contains("CACHE_DB") && backups.why.contains("REPORTS"),
        "{backups:?}"
    );
    let secrets = f.iter().find(|x| x.id == "security.secrets").unwrap();
    assert_eq!(secrets.status, Status::Fail);
    assert!(
        secrets.why.contains("REPORTS") && !secrets.why.contains("hunter2"),
        "{secrets:?}"
    );
}
