//! The app file's reference, generated: every table the validator opens, with the keys
//! it accepts (the same `*_KEYS` lists `validate` and `alerts` check against, so a key
//! added there appears here at the next build), and for each key its type, default and
//! an example from [`KEYS`]. Defaults are the `hoist_core::spec::defaults` constants
//! the validator fills in. `docs/reference/app-file.md` is this module's output; a test
//! regenerates it and fails when the two differ, and another when a key has no entry.

use std::fmt::Write;
use std::time::Duration;

use hoist_core::spec::defaults as d;
use hoist_core::units::format_duration;

use crate::alerts::{ALERTS_KEYS, LOG_RULE_KEYS, RULE_KEYS};
use crate::validate::*;

/// One table of the app file: its path as a user writes it, and the keys it accepts.
pub struct Table {
    pub path: &'static str,
    pub keys: &'static [&'static str],
    pub about: &'static str,
}

/// Every table the validator opens, in the order of the reference.
pub fn tables() -> Vec<Table> {
    let t = |path, keys, about| Table { path, keys, about };
    vec![
        t("", TOP_KEYS, "The top level of `hoist.toml`."),
        t("build", BUILD_KEYS, "How the release artifact is made (`hoist build`)."),
        t("secrets", SECRETS_KEYS, "Secrets the app needs; values are set with `hoist secrets set`, never in the file."),
        t("check", CHECK_KEYS, "The preflight check, run in the new release before anything starts."),
        t("services.NAME", SERVICE_KEYS, "A long-running process: a web service (with `http`) or a worker."),
        t("services.NAME.http", HTTP_KEYS, "A web service's route on the proxy."),
        t("services.NAME.http.health", HEALTH_KEYS, "A health check (also `services.NAME.health` for a worker). `health = \"/path\"` is the short form of `{ path = \"/path\" }`."),
        t("services.NAME.http.rate_limit", RATE_LIMIT_KEYS, "Requests allowed per key; over it the proxy answers 429 with `Retry-After`."),
        t("services.NAME.http.basic_auth", BASIC_AUTH_KEYS, "HTTP basic authentication in front of the route (the health path is exempt)."),
        t("services.NAME.http.tls", TLS_FILE_KEYS, "Certificate files on the host (the other form is `tls = \"acme\"`). DNS-01 and wildcard certificates are not supported yet."),
        t("services.NAME.logs", LOGS_KEYS, "Log retention on the host: an instance keeps at most `max_size × (keep + 1)` of output."),
        t("jobs.NAME", JOB_KEYS, "A command run on a schedule (`every` or `cron`, one of them)."),
        t("hooks", HOOKS_KEYS, "Commands run by a deploy."),
        t("backups.NAME", BACKUP_KEYS, "A backup of the app's data (one source: `sqlite`, `postgres` or `directory`)."),
        t("backups.NAME.keep", KEEP_KEYS, "How many backups are kept (grandfather-father-son)."),
        t("deploy", DEPLOY_KEYS, "How releases are activated and kept."),
        t("deploy.bake", BAKE_KEYS, "Watch the new release after the switch; a breach switches back."),
        t("deploy.canary", CANARY_KEYS, "Release gradually: each step's share of clients goes to the new release, judged on its own counters."),
        t("deploy.rollout", ROLLOUT_KEYS, "How a fleet is deployed: hosts per batch, and what a failed batch does."),
        t("[hosts]", HOST_KEYS, "`[[hosts]]`: one entry per host. Without any, the app runs on `local` (this machine's agent)."),
        t("ssh", SSH_KEYS, "How hosts with `ssh` are reached (the system's OpenSSH)."),
        t("acme", ACME_KEYS, "The ACME CA that issues `tls = \"acme\"` certificates (HTTP-01, else TLS-ALPN-01; DNS-01 and wildcards are not supported yet)."),
        t("alerts", ALERTS_KEYS, "Where alert notifications go."),
        t("alerts.rules.RULE", RULE_KEYS, "Tuning of a built-in rule (see the list in the README)."),
        t("alerts.logs.NAME", LOG_RULE_KEYS, "An alert on log lines matching a pattern."),
        t("slo.NAME", crate::slo::SLO_KEYS, "A service level objective; `hoist slo` shows its error budget and burn rates, and the `slo_burn_fast`/`slo_burn_slow` rules alert on it."),
        t("run", RUN_KEYS, "What `hoist run` does around the release on this machine."),
    ]
}

/// A key's default: taken from the validator's constants where it has one.
pub enum Default {
    /// The key must be given.
    Required,
    /// Absent means "not set" (the behaviour is described).
    None(&'static str),
    Text(&'static str),
    Dur(Duration),
    Int(u32),
}

impl Default {
    fn render(&self) -> String {
        match self {
            Default::Required => "required".into(),
            Default::None(what) => what.to_string(),
            Default::Text(t) => t.to_string(),
            Default::Dur(v) => format!("`\"{}\"`", format_duration(*v)),
            Default::Int(n) => format!("`{n}`"),
        }
    }
}

/// One key: where, its type, default, an example (TOML) and what it does.
pub struct Key {
    pub table: &'static str,
    pub key: &'static str,
    pub ty: &'static str,
    pub default: Default,
    pub example: &'static str,
    pub about: &'static str,
}

const fn k(
    table: &'static str,
    key: &'static str,
    ty: &'static str,
    default: Default,
    example: &'static str,
    about: &'static str,
) -> Key {
    Key {
        table,
        key,
        ty,
        default,
        example,
        about,
    }
}

use Default::{None as Unset, Required as Req};

const DUR: &str = "duration";
const STR: &str = "string";
const CMD: &str = "command (string)";
const BOOL: &str = "boolean";
const INT: &str = "integer";
const LIST: &str = "array of strings";

/// Every documented key. A key the validator accepts without an entry here fails
/// `every_accepted_key_is_documented`; an entry for a key it refuses fails too.
pub const KEYS: &[Key] = &[
    k("", "version", INT, Default::Int(d::VERSION), "version = 1", "The app file format version."),
    k("", "app", STR, Req, "app = \"notes\"", "The app's name: a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 63)."),
    k("", "build", "table", Unset("nothing run; every file under the project"), "[build]", "See `[build]`."),
    k("", "env", "table of strings", Unset("empty"), "env = { LOG_LEVEL = \"info\" }", "Environment for every service, job and hook. `PORT`, `PATH`, `HOIST_*` and loader variables are reserved."),
    k("", "secrets", "table", Unset("none"), "[secrets]", "See `[secrets]`."),
    k("", "check", "table or command", Unset("no check"), "check = \"python3 check.py\"", "See `[check]`; a string is the command alone."),
    k("", "services", "table of tables", Unset("none"), "[services.web]", "See `[services.NAME]`."),
    k("", "jobs", "table of tables", Unset("none"), "[jobs.cleanup]", "See `[jobs.NAME]`."),
    k("", "hooks", "table", Unset("none"), "[hooks]", "See `[hooks]`."),
    k("", "backups", "table of tables", Unset("none"), "[backups.db]", "See `[backups.NAME]`."),
    k("", "deploy", "table", Unset("defaults below"), "[deploy]", "See `[deploy]`."),
    k("", "hosts", "array of tables", Text("one host, `local`, with every role"), "[[hosts]]", "See `[[hosts]]`."),
    k("", "ssh", "table", Unset("OpenSSH's own settings"), "[ssh]", "See `[ssh]`."),
    k("", "acme", "table", Unset("Let's Encrypt"), "[acme]", "See `[acme]`."),
    k("", "alerts", "table", Unset("built-in rules, no receiver"), "[alerts]", "See `[alerts]`."),
    k("", "slo", "table of tables", Unset("none"), "[slo.availability]", "See `[slo.NAME]`."),
    k("", "run", "table", Unset("none"), "[run]", "See `[run]`."),
    k("build", "command", CMD, Unset("nothing run"), "command = \"pip install --target vendor -r requirements.txt\"", "Runs in the project directory before packaging (`sh -c`). Vendoring Python requirements: see the guide."),
    k("build", "include", LIST, Text("every file"), "include = [\"app.py\", \"vendor/**\"]", "Glob patterns of the files that go into the release."),
    k("build", "exclude", LIST, Unset("nothing"), "exclude = [\"**/__pycache__/**\"]", "Glob patterns left out of the release."),
    k("secrets", "required", LIST, Unset("none"), "required = [\"DATABASE_URL\"]", "Names every host must hold before a deploy starts anything; each is given to the app as an environment variable."),
    k("check", "command", CMD, Req, "command = \"python3 check.py\"", "Runs in the new release before anything starts; a failure stops the deploy."),
    k("check", "timeout", DUR, Default::Dur(d::CHECK_TIMEOUT), "timeout = \"30s\"", "How long the check may run."),
    k("services.NAME", "command", CMD, Req, "command = \"python3 app.py\"", "The process to run; a web service listens on `127.0.0.1:$PORT`."),
    k("services.NAME", "replicas", INT, Default::Int(1), "replicas = 2", "Instances per host that runs the service."),
    k("services.NAME", "singleton", BOOL, Text("`false`"), "singleton = true", "Exactly one instance in the whole fleet (moved when its host is gone)."),
    k("services.NAME", "roles", LIST, Text("the service's name"), "roles = [\"web\"]", "Hosts with any of these roles run it."),
    k("services.NAME", "memory_limit", "size", Unset("no limit"), "memory_limit = \"256MiB\"", "An instance over it is restarted."),
    k("services.NAME", "stop_timeout", DUR, Default::Dur(d::STOP_TIMEOUT), "stop_timeout = \"15s\"", "Time between the stop signal and SIGKILL."),
    k("services.NAME", "stop_signal", STR, Text("`\"TERM\"`"), "stop_signal = \"INT\"", "The signal that asks the app to stop."),
    k("services.NAME", "logs", "table", Text("`{ max_size = \"10MiB\", keep = 5 }`"), "logs = { max_size = \"50MiB\", keep = 10 }", "How much output each instance keeps on the host; see the logs table."),
    k("services.NAME", "user", STR, Unset("the agent's user"), "user = \"notes\"", "A Unix user to run as (the agent must be root)."),
    k("services.NAME", "env", "table of strings", Unset("empty"), "env = { WORKERS = \"4\" }", "Environment over the app's `env`."),
    k("services.NAME", "http", "table", Unset("a worker (no route)"), "http = { domains = [\"notes.example.com\"], health = \"/health\" }", "Makes it a web service: see `[services.NAME.http]`."),
    k("services.NAME", "health", "table", Unset("a running process is healthy"), "health = { command = \"./ready\" }", "A worker's health check: see the health table."),
    k("services.NAME.http", "domains", LIST, Req, "domains = [\"notes.example.com\"]", "Host names routed to the service; `\"*\"` is any."),
    k("services.NAME.http", "path_prefix", STR, Text("`\"/\"`"), "path_prefix = \"/api\"", "Only requests under this path."),
    k("services.NAME.http", "health", "path or table", Req, "health = \"/health\"", "The health check every instance must pass before it gets traffic."),
    k("services.NAME.http", "drain_timeout", DUR, Default::Dur(d::DRAIN_TIMEOUT), "drain_timeout = \"10s\"", "How long old instances finish their requests after a switch."),
    k("services.NAME.http", "rate_limit", "table", Unset("no limit"), "rate_limit = { requests = 100, per = \"1s\" }", "See the rate_limit table."),
    k("services.NAME.http", "basic_auth", "table", Unset("none"), "basic_auth = { secret = \"HTPASSWD\" }", "See the basic_auth table."),
    k("services.NAME.http", "max_body", "size", Unset("no limit"), "max_body = \"10MiB\"", "Larger request bodies get 413 before the app sees a byte."),
    k("services.NAME.http", "trusted_proxies", LIST, Unset("none"), "trusted_proxies = [\"10.0.0.0/8\"]", "Only these peers' `X-Forwarded-*` headers are believed (CIDRs)."),
    k("services.NAME.http", "tls", "`\"acme\"` or table", Unset("plain HTTP only"), "tls = \"acme\"", "HTTPS for the service's domains: `\"acme\"` (issued and renewed by the agent) or `{ cert, key }` files. DNS-01 and wildcard certificates are not supported yet."),
    k("services.NAME.http", "redirect_https", BOOL, Text("`true` when `tls` is set"), "redirect_https = false", "Plain HTTP gets a 308 to HTTPS (ACME challenges excepted)."),
    k("services.NAME.http", "hsts", DUR, Unset("no header"), "hsts = \"365d\"", "`Strict-Transport-Security` max-age."),
    k("services.NAME.http.health", "path", STR, Unset("one of path, tcp, command"), "path = \"/health\"", "An HTTP GET of this path must answer 2xx (or `expect_status`)."),
    k("services.NAME.http.health", "expect_status", INT, Text("any 2xx"), "expect_status = 204", "The status the check expects."),
    k("services.NAME.http.health", "tcp", BOOL, Text("`false`"), "tcp = true", "A TCP connect to the instance's port is the check."),
    k("services.NAME.http.health", "command", CMD, Unset("none"), "command = \"./healthcheck\"", "A command that must exit 0."),
    k("services.NAME.http.health", "interval", DUR, Default::Dur(d::HEALTH_INTERVAL), "interval = \"2s\"", "Time between checks."),
    k("services.NAME.http.health", "timeout", DUR, Default::Dur(d::HEALTH_TIMEOUT), "timeout = \"1s\"", "A check slower than this fails."),
    k("services.NAME.http.health", "healthy_threshold", INT, Default::Int(d::HEALTHY_THRESHOLD), "healthy_threshold = 2", "Passes in a row to be healthy."),
    k("services.NAME.http.health", "unhealthy_threshold", INT, Default::Int(d::UNHEALTHY_THRESHOLD), "unhealthy_threshold = 5", "Failures in a row to be unhealthy."),
    k("services.NAME.http.health", "min_healthy", DUR, Default::Dur(d::MIN_HEALTHY), "min_healthy = \"5s\"", "How long a new instance stays healthy before the switch."),
    k("services.NAME.http.rate_limit", "requests", INT, Req, "requests = 100", "Requests allowed per `per`."),
    k("services.NAME.http.rate_limit", "per", DUR, Text("`\"1s\"`"), "per = \"1s\"", "The window."),
    k("services.NAME.http.rate_limit", "burst", INT, Text("`requests`"), "burst = 50", "Requests allowed at once above the rate."),
    k("services.NAME.http.rate_limit", "key", LIST, Text("the peer's address"), "key = [\"CF-Connecting-IP\"]", "Headers that identify a client (the first present); only trust a header a proxy in front of you sets."),
    k("services.NAME.http.basic_auth", "secret", STR, Req, "secret = \"HTPASSWD\"", "A secret holding `user:bcrypt-hash` lines (`htpasswd -nB user`); list it in `[secrets] required`."),
    k("services.NAME.http.basic_auth", "realm", STR, Text("`\"restricted\"`"), "realm = \"staff\"", "The realm the browser shows."),
    k("services.NAME.http.tls", "cert", STR, Req, "cert = \"/etc/ssl/notes.pem\"", "The certificate chain (PEM) on the host."),
    k("services.NAME.http.tls", "key", STR, Req, "key = \"/etc/ssl/notes.key\"", "Its private key (PEM) on the host."),
    k("services.NAME.logs", "max_size", "size", Text("`\"10MiB\"`"), "max_size = \"50MiB\"", "An instance's log file is rotated before it would grow past this (64KiB to 1GiB)."),
    k("services.NAME.logs", "keep", INT, Default::Int(hoist_core::spec::LogsSpec::DEFAULT.keep), "keep = 10", "Rotated files kept besides the live one (0 to 100); older lines are deleted."),
    k("jobs.NAME", "command", CMD, Req, "command = \"python3 cleanup.py\"", "What the job runs, in the current release."),
    k("jobs.NAME", "every", DUR, Unset("one of every, cron"), "every = \"1h\"", "Run at this interval."),
    k("jobs.NAME", "cron", STR, Unset("one of every, cron"), "cron = \"0 3 * * *\"", "Run on this cron schedule (UTC)."),
    k("jobs.NAME", "timeout", DUR, Default::Dur(d::JOB_TIMEOUT), "timeout = \"5m\"", "A run longer than this is killed and failed."),
    k("jobs.NAME", "singleton", BOOL, Text("`true`"), "singleton = false", "Run on one host of the fleet, not on each."),
    k("jobs.NAME", "roles", LIST, Text("every host"), "roles = [\"worker\"]", "Hosts with any of these roles may run it."),
    k("hooks", "pre_activate", CMD, Unset("none"), "pre_activate = \"python3 migrate.py\"", "After the pre-deploy backup, before the new release starts (migrations)."),
    k("hooks", "smoke", CMD, Unset("none"), "smoke = \"python3 smoke.py\"", "After the switch with `HOIST_URL` set; a failure switches back."),
    k("hooks", "timeout", DUR, Default::Dur(d::HOOK_TIMEOUT), "timeout = \"2m\"", "How long each hook may run."),
    k("backups.NAME", "sqlite", STR, Unset("one source"), "sqlite = \"notes.db\"", "A SQLite database, relative to `$HOIST_DATA_DIR`."),
    k("backups.NAME", "postgres", STR, Unset("one source"), "postgres = \"DATABASE_URL\"", "The secret holding a PostgreSQL URL (`pg_dump -Fc`)."),
    k("backups.NAME", "directory", STR, Unset("one source"), "directory = \"uploads\"", "A directory, relative to `$HOIST_DATA_DIR` (tar.zst)."),
    k("backups.NAME", "every", DUR, Unset("no schedule"), "every = \"6h\"", "Take one at this interval."),
    k("backups.NAME", "cron", STR, Unset("no schedule"), "cron = \"30 2 * * *\"", "Take one on this cron schedule."),
    k("backups.NAME", "before_deploy", BOOL, Text("`false`"), "before_deploy = true", "Take one before every deploy's `pre_activate`."),
    k("backups.NAME", "keep", "table", Text("see the keep table"), "keep = { daily = 7 }", "See the keep table."),
    k("backups.NAME", "copy_to", STR, Unset("none"), "copy_to = \"/mnt/backups\"", "A directory on the host each backup is also copied to."),
    k("backups.NAME.keep", "last", INT, Default::Int(d::KEEP_LAST), "last = 5", "The newest N."),
    k("backups.NAME.keep", "daily", INT, Default::Int(d::KEEP_DAILY), "daily = 14", "One per day for N days."),
    k("backups.NAME.keep", "weekly", INT, Default::Int(d::KEEP_WEEKLY), "weekly = 8", "One per week for N weeks."),
    k("backups.NAME.keep", "monthly", INT, Default::Int(d::KEEP_MONTHLY), "monthly = 24", "One per month for N months."),
    k("deploy", "keep_releases", INT, Default::Int(d::KEEP_RELEASES), "keep_releases = 10", "Releases kept on each host for rollback."),
    k("deploy", "standby", DUR, Default::Dur(d::STANDBY), "standby = \"30m\"", "How long the old release's web instances stay warm (an instant rollback)."),
    k("deploy", "health_deadline", DUR, Default::Dur(d::HEALTH_DEADLINE), "health_deadline = \"2m\"", "New instances must be healthy within this."),
    k("deploy", "bake", "table", Unset("no bake"), "bake = { duration = \"5m\" }", "See the bake table."),
    k("deploy", "rollout", "table", Text("one host at a time, stop on failure"), "rollout = { batch = \"25%\" }", "See the rollout table."),
    k("deploy", "canary", "table", Unset("no canary: one switch"), "canary = { steps = [5, 25, 50], interval = \"2m\" }", "See the canary table."),
    k("deploy.bake", "duration", DUR, Req, "duration = \"5m\"", "How long the new release is watched."),
    k("deploy.bake", "max_5xx_percent", INT, Unset("not checked"), "max_5xx_percent = 1", "A larger share of 5xx answers switches back."),
    k("deploy.bake", "max_p99", DUR, Unset("not checked"), "max_p99 = \"800ms\"", "A slower p99 switches back."),
    k("deploy.rollout", "batch", "integer or percentage", Default::Int(1), "batch = \"25%\"", "Hosts deployed at once."),
    k("deploy.rollout", "on_failure", STR, Text("`\"stop\"`"), "on_failure = \"rollback\"", "`stop` leaves switched hosts on the new release; `rollback` switches them back."),
    k("deploy.canary", "steps", "list of percentages", Req, "steps = [5, 25, 50]", "Shares of clients sent to the new release, strictly increasing, each above 0 and below 100; 100% is the switch that follows."),
    k("deploy.canary", "interval", DUR, Req, "interval = \"2m\"", "How long each step runs before it is judged."),
    k("deploy.canary", "max_error_rate", "percentage", Text("`\"1%\"`"), "max_error_rate = \"1%\"", "A larger share of 5xx answers from the new release fails the step (the new release is retired, exit 1)."),
    k("deploy.canary", "max_p99", DUR, Unset("not checked"), "max_p99 = \"500ms\"", "A slower p99 of the new release fails the step."),
    k("deploy.canary", "min_requests", INT, Default::Int(hoist_core::spec::CanarySpec::DEFAULT_MIN_REQUESTS as u32), "min_requests = 50", "Answers a step needs before it is judged; short of them it waits up to three more intervals, then fails."),
    k("[hosts]", "name", STR, Req, "name = \"web1\"", "The host's name in output and `--host`."),
    k("[hosts]", "ssh", STR, Unset("this machine (`local`)"), "ssh = \"deploy@10.0.0.5\"", "`user@host:port` as OpenSSH takes it."),
    k("[hosts]", "roles", LIST, Text("none"), "roles = [\"web\", \"worker\"]", "What runs there."),
    k("[hosts]", "env", "table of strings", Unset("empty"), "env = { REGION = \"eu\" }", "Environment for everything on this host."),
    k("[hosts]", "mode", STR, Text("`\"agent\"`"), "mode = \"files\"", "`files`: shared hosting with no agent; hoist runs short POSIX commands over ssh (see the guide)."),
    k("[hosts]", "path", STR, Unset("required with `mode = \"files\"`"), "path = \"/home/me/api\"", "Files host: the directory the web server serves the app from; hoist makes it a symlink to the current release."),
    k("[hosts]", "restart", CMD, Text("`\"touch tmp/restart.txt\"`"), "restart = \"touch tmp/restart.txt\"", "Files host: run in the new release after the switch (Passenger reloads on it)."),
    k("[hosts]", "health", STR, Unset("no check"), "health = \"http://api.example.com/health\"", "Files host: an http URL the CLI checks after the restart; a failure switches back."),
    k("[hosts]", "expect", STR, Unset("any 2xx"), "expect = \"ok\"", "Files host: text the health answer must contain."),
    k("ssh", "config", STR, Unset("`~/.ssh/config`"), "config = \"ssh_config\"", "An OpenSSH config file (relative to the app file)."),
    k("ssh", "identity", STR, Unset("ssh's default keys"), "identity = \"~/.ssh/deploy\"", "The private key to use."),
    k("ssh", "port", INT, Unset("ssh's own (22)"), "port = 2222", "The port, when the address has none."),
    k("acme", "email", STR, Unset("no contact"), "email = \"ops@example.com\"", "The account's contact."),
    k("acme", "directory", STR, Text(d::ACME_DIRECTORY), "directory = \"https://acme-staging-v02.api.letsencrypt.org/directory\"", "The ACME directory URL."),
    k("acme", "ca_roots", STR, Unset("the system's roots"), "ca_roots = \"/etc/hoist/private-ca.pem\"", "Roots trusted when talking to the directory (a private or test CA)."),
    k("alerts", "webhook", STR, Unset("none"), "webhook = \"http://chat.example/hook\"", "An `http://` or `https://` URL that gets Alertmanager-webhook JSON."),
    k("alerts", "webhook_secret", STR, Unset("none"), "webhook_secret = \"ALERT_WEBHOOK\"", "A secret holding the webhook URL (instead of `webhook`)."),
    k("alerts", "ca_roots", "path", Unset("the system's roots only"), "ca_roots = \"/etc/hoist/alerts-ca.pem\"", "An absolute path to a PEM file of extra roots trusted for `https://` receivers."),
    k("alerts", "alertmanager", STR, Unset("none"), "alertmanager = \"http://127.0.0.1:9093\"", "Alerts are posted to its `/api/v2/alerts`."),
    k("alerts", "rules", "table of tables", Unset("built-in defaults"), "[alerts.rules.http_5xx_ratio]", "Overrides of the built-in rules."),
    k("alerts", "logs", "table of tables", Unset("none"), "[alerts.logs.sandboxes]", "Log-pattern rules."),
    k("alerts.rules.RULE", "enabled", BOOL, Text("`true`"), "enabled = false", "Turn the rule off."),
    k("alerts.rules.RULE", "threshold", "number", Text("the rule's own"), "threshold = 0.02", "The rule's threshold."),
    k("alerts.logs.NAME", "service", STR, Req, "service = \"web\"", "Whose log lines are matched."),
    k("alerts.logs.NAME", "pattern", STR, Req, "pattern = \"no sandboxes available\"", "A regex."),
    k("alerts.logs.NAME", "count", INT, Req, "count = 3", "Matching lines that fire the alert..."),
    k("alerts.logs.NAME", "within", DUR, Req, "within = \"5m\"", "...within this window."),
    k("slo.NAME", "service", STR, Req, "service = \"web\"", "A web service of this app."),
    k("slo.NAME", "objective", "percentage", Req, "objective = \"99.9%\"", "The share of good requests over the window, strictly between 0% and 100%."),
    k("slo.NAME", "latency", DUR, Unset("only 5xx answers are bad"), "latency = \"250ms\"", "A request slower than this is bad too; one of the proxy's bucket bounds (0.5ms, 1ms, 2.5ms, 5ms, 10ms, 25ms, 50ms, 100ms, 250ms, 500ms, 1s, 2.5s, 5s, 10s)."),
    k("slo.NAME", "window", DUR, Default::Dur(hoist_core::spec::slo::MAX_WINDOW), "window = \"7d\"", "The window the objective is judged over, from 1h to 28d."),
    k("run", "test", CMD, Unset("`hoist run -- COMMAND` gives it"), "test = \"python3 -m pytest tests\"", "`hoist run`'s test command (`sh -c`, in the unpacked release, with `HOIST_URL`); its status is `hoist run`'s."),
    k("run", "seed", CMD, Unset("none"), "seed = \"python3 seed.py\"", "Run once against the fresh data directory, after `pre_activate`, before the services start."),
];

use Default::Text;

/// `table.key` of every accepted key that has no entry in [`KEYS`].
pub fn undocumented() -> Vec<String> {
    let mut out = Vec::new();
    for t in tables() {
        for key in t.keys {
            if !KEYS.iter().any(|k| k.table == t.path && k.key == *key) {
                out.push(dotted(t.path, key));
            }
        }
    }
    out
}

/// Entries of [`KEYS`] for keys the validator does not accept.
pub fn stale() -> Vec<String> {
    let tables = tables();
    KEYS.iter()
        .filter(|k| {
            !tables
                .iter()
                .any(|t| t.path == k.table && t.keys.contains(&k.key))
        })
        .map(|k| dotted(k.table, k.key))
        .collect()
}

fn dotted(table: &str, key: &str) -> String {
    if table.is_empty() {
        key.to_string()
    } else {
        format!("{table}.{key}")
    }
}

fn heading(path: &str) -> String {
    match path {
        "" => "Top level".to_string(),
        "[hosts]" => "`[[hosts]]`".to_string(),
        p => format!("`[{p}]`"),
    }
}

/// `docs/reference/app-file.md`.
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("# App file reference (`hoist.toml`)\n\n");
    s.push_str(
        "<!-- Generated by `scripts/gen-docs.sh` (`hoist docs gen`) from the validator's key \
         lists and `hoist-config/src/reference.rs`; do not edit. -->\n\n",
    );
    s.push_str(
        "Every table and key `hoist` accepts. `NAME` is a name you choose (a service, job, \
         backup, rule). Durations are strings like `\"30s\"`, `\"5m\"`, `\"1h30m\"`, `\"7d\"`; \
         sizes like `\"512MiB\"` or `\"1GB\"`. A destination overlay `hoist.DEST.toml` (`-d DEST`) \
         takes the same keys and is merged over the file. `hoist config` prints the result.\n\n",
    );
    for t in tables() {
        let _ = writeln!(s, "## {}\n\n{}\n", heading(t.path), t.about);
        s.push_str("| key | type | default | example | meaning |\n|---|---|---|---|---|\n");
        for key in t.keys {
            let row = KEYS.iter().find(|k| k.table == t.path && k.key == *key);
            match row {
                Some(k) => {
                    let _ = writeln!(
                        s,
                        "| `{}` | {} | {} | `{}` | {} |",
                        k.key,
                        k.ty,
                        k.default.render(),
                        k.example.replace('|', "\\|"),
                        k.about.replace('|', "\\|")
                    );
                }
                None => {
                    let _ = writeln!(s, "| `{key}` | | | | (undocumented) |");
                }
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_accepted_key_is_documented() {
        let missing = undocumented();
        assert!(
            missing.is_empty(),
            "keys the app file accepts with no entry in reference::KEYS: {missing:?}"
        );
    }

    #[test]
    fn every_documented_key_is_accepted() {
        let stale = stale();
        assert!(
            stale.is_empty(),
            "documented keys the app file refuses: {stale:?}"
        );
    }

    /// A key whose value is a table has its own section listing that table's keys, so a
    /// new nested table (a `deploy.canary`) cannot be documented as one line.
    #[test]
    fn every_table_valued_key_has_its_section() {
        let tables = tables();
        for k in KEYS {
            let nested = k.ty.contains("table") && !k.ty.contains("table of strings");
            if !nested {
                continue;
            }
            let path = dotted(k.table, k.key);
            // A worker's `health` takes the same keys as a web service's.
            if path == "services.NAME.health" {
                assert!(tables.iter().any(|t| t.path == "services.NAME.http.health"));
                continue;
            }
            let found = tables.iter().any(|t| {
                t.path == path
                    || t.path.starts_with(&format!("{path}."))
                    || (k.table.is_empty() && t.path == format!("[{}]", k.key))
                    || (k.table.is_empty() && t.path.starts_with(&format!("{}.", k.key)))
            });
            assert!(
                found,
                "`{path}` is a table but reference::tables() has no section for it"
            );
        }
    }

    /// Each table's examples, put together under their table, make an app file the
    /// validator reads without an unknown-key error: the examples are real keys.
    #[test]
    fn examples_use_the_documented_key() {
        for k in KEYS {
            let lhs = k.example.split('=').next().unwrap_or("").trim();
            let header = k.example.starts_with('[') && k.example.contains(k.key);
            let ok = lhs == k.key || header;
            assert!(
                ok,
                "example of `{}` sets another key: {}",
                dotted(k.table, k.key),
                k.example
            );
        }
    }
}
