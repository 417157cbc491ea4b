//! The validated app spec: what `hoist.toml` (plus an overlay) means once every default is
//! filled in and every cross-reference checked. It crosses the wire from the CLI to the
//! agent and is what `hoist config --json` prints, so durations serialise as `"30s"` and
//! sizes as `"512MiB"`.
//!
//! This module owns the shape and the pure decisions on it (which hosts run which
//! services). It does not parse TOML or report diagnostics: `hoist-config` does, and only
//! it builds an `AppSpec` from user input.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::schedule::Schedule;
use crate::units::{human_duration, human_duration_opt, ByteSize};

/// Defaults applied when the app file leaves a key out.
pub mod defaults {
    use std::time::Duration;

    pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTHY_THRESHOLD: u32 = 3;
    pub const UNHEALTHY_THRESHOLD: u32 = 3;
    pub const MIN_HEALTHY: Duration = Duration::from_secs(2);
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(60);
    pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);
    pub const JOB_TIMEOUT: Duration = Duration::from_secs(3600);
    pub const KEEP_RELEASES: u32 = 5;
    pub const STANDBY: Duration = Duration::from_secs(600);
    pub const HEALTH_DEADLINE: Duration = Duration::from_secs(60);
    pub const KEEP_DAILY: u32 = 7;
    pub const KEEP_WEEKLY: u32 = 4;
    pub const KEEP_MONTHLY: u32 = 12;
    /// The newest backups kept whatever their day: a manual backup minutes before a
    /// deploy survives that deploy's `before_deploy` backup.
    pub const KEEP_LAST: u32 = 3;
    pub const PATH_PREFIX: &str = "/";
    /// The host an app file without `[[hosts]]` deploys to: this machine.
    pub const LOCAL_HOST: &str = "local";
    /// The app file format version this build reads.
    pub const VERSION: u32 = 1;
    /// The ACME directory `[acme]` uses unless told otherwise: Let's Encrypt production.
    pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
}

/// One app, fully resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppSpec {
    /// The app file format version (`version = 1`; 1 when absent).
    pub version: u32,
    pub app: String,
    pub build: BuildSpec,
    /// Plain environment for every service, job and hook.
    pub env: BTreeMap<String, String>,
    pub secrets: SecretsSpec,
    pub check: Option<CheckSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    pub jobs: BTreeMap<String, JobSpec>,
    pub hooks: HooksSpec,
    pub backups: BTreeMap<String, BackupSpec>,
    pub deploy: DeploySpec,
    /// In file order; never empty (an app file without `[[hosts]]` gets `local`).
    pub hosts: Vec<HostSpec>,
    pub ssh: SshSpec,
    /// `[acme]`: the CA that issues `tls = "acme"` certificates.
    #[serde(default)]
    pub acme: AcmeSpec,
    /// `[alerts]`: where notifications go and how the built-in rules are tuned.
    #[serde(default)]
    pub alerts: AlertsSpec,
    /// `[run]`: what `hoist run` does around the release on this machine. Left out of
    /// the canonical JSON when empty, so app files without it keep their release ids.
    #[serde(default, skip_serializing_if = "RunSpec::is_empty")]
    pub run: RunSpec,
    /// `[slo.NAME]`: service level objectives, with burn-rate alerts. Left out of the
    /// canonical JSON when empty, like `run`, so release ids stay as they were.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub slo: BTreeMap<String, SloSpec>,
}

/// `[run]`: `hoist run`'s commands, run in the unpacked release.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunSpec {
    /// The test command, run with `HOIST_URL` once every service is healthy.
    pub test: Option<String>,
    /// Run once against the fresh data directory, after `pre_activate`, before the
    /// services start.
    pub seed: Option<String>,
}

impl RunSpec {
    pub fn is_empty(&self) -> bool {
        self.test.is_none() && self.seed.is_none()
    }
}

/// `[slo.NAME]`: the share of a service's requests that must be good over `window`. A
/// request is bad when answered 5xx or, with `latency`, slower than it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SloSpec {
    pub service: String,
    /// Percent, in (0, 100): `"99.9%"` is 99.9.
    pub objective: f64,
    /// One of [`slo::LATENCY_BOUNDS_MS`] (the proxy's histogram bounds), so the count of
    /// slower requests is exact.
    #[serde(default, with = "human_duration_opt")]
    pub latency: Option<Duration>,
    #[serde(with = "human_duration")]
    pub window: Duration,
}

/// SLO constants shared by the config and the agent.
pub mod slo {
    use std::time::Duration;

    /// The proxy's latency histogram bounds (`hoist-proxy` `stats::BOUNDS_MS`).
    pub const LATENCY_BOUNDS_MS: [f64; 14] = [
        0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
    ];
    /// The default and longest window (the agent keeps 28 days of minutes).
    pub const MAX_WINDOW: Duration = Duration::from_secs(28 * 24 * 3600);
    /// Multi-window burn-rate alerts (Google SRE workbook): (name, burn rate, long
    /// window, short window); both windows must burn faster than the rate.
    pub const BURN_ALERTS: [(&str, f64, Duration, Duration); 2] = [
        (
            "slo_burn_fast",
            14.4,
            Duration::from_secs(3600),
            Duration::from_secs(300),
        ),
        (
            "slo_burn_slow",
            6.0,
            Duration::from_secs(6 * 3600),
            Duration::from_secs(1800),
        ),
    ];
}

/// Where ACME certificates come from (RFC 8555).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcmeSpec {
    /// The account's contact (`mailto:`), if given.
    pub email: Option<String>,
    /// The directory URL (default: Let's Encrypt production).
    pub directory: String,
    /// A PEM file of roots trusted when talking to the directory (a private or test CA).
    pub ca_roots: Option<String>,
}

impl Default for AcmeSpec {
    fn default() -> AcmeSpec {
        AcmeSpec {
            email: None,
            directory: defaults::ACME_DIRECTORY.to_string(),
            ca_roots: None,
        }
    }
}

/// Where a web service's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum TlsSpec {
    /// Issued and renewed by the agent over ACME for every domain of the service.
    Acme,
    /// PEM files on the host: the chain and its private key.
    File { cert: String, key: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BuildSpec {
    /// Runs in the project directory before packaging.
    pub command: Option<String>,
    /// Glob patterns (relative to the project root) of files that go into the release.
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SecretsSpec {
    /// Names only: values live on hosts and never in the app file or the artifact.
    pub required: Vec<String>,
}

/// The preflight check run inside a new release before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub command: String,
    #[serde(with = "human_duration")]
    pub timeout: Duration,
}

/// A long-running process kind. A web service is one with `http`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub command: String,
    /// Instances per host that runs the service (1 for a singleton).
    pub replicas: u32,
    /// Exactly one instance across the whole fleet.
    pub singleton: bool,
    /// Hosts with any of these roles run the service (default: the service's name).
    pub roles: Vec<String>,
    pub memory_limit: Option<ByteSize>,
    #[serde(with = "human_duration")]
    pub stop_timeout: Duration,
    pub stop_signal: StopSignal,
    /// The Unix user the instances run as (default: the agent's user).
    pub user: Option<String>,
    pub env: BTreeMap<String, String>,
    pub http: Option<HttpSpec>,
    /// Health of a worker (a web service's health is `http.health`).
    pub health: Option<HealthSpec>,
    /// How much output each instance keeps on the host. Left out of the canonical JSON
    /// at its default, so app files without it keep their release ids.
    #[serde(default, skip_serializing_if = "LogsSpec::is_default")]
    pub logs: LogsSpec,
}

/// `logs = { max_size, keep }`: an instance's log file is rotated before it would grow
/// past `max_size`, and `keep` rotated files are kept besides the live one, so an
/// instance holds at most `max_size × (keep + 1)` of logs on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsSpec {
    pub max_size: ByteSize,
    pub keep: u32,
}

impl LogsSpec {
    pub const DEFAULT: LogsSpec = LogsSpec {
        max_size: ByteSize(10 * 1024 * 1024),
        keep: 5,
    };

    pub fn is_default(&self) -> bool {
        *self == Self::DEFAULT
    }

    /// The most an instance keeps on disk.
    pub fn bound(&self) -> ByteSize {
        ByteSize(self.max_size.0.saturating_mul(u64::from(self.keep) + 1))
    }
}

impl Default for LogsSpec {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl ServiceSpec {
    pub fn is_web(&self) -> bool {
        self.http.is_some()
    }

    /// The health check that gates this service: `http.health` for web, else `health`.
    pub fn effective_health(&self) -> Option<&HealthSpec> {
        self.http
            .as_ref()
            .map(|h| &h.health)
            .or(self.health.as_ref())
    }
}

/// How the proxy routes to a web service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpSpec {
    /// Host names this service answers; `"*"` matches any Host header.
    pub domains: Vec<String>,
    pub path_prefix: String,
    pub health: HealthSpec,
    /// How long old instances may finish in-flight requests after a switch.
    #[serde(with = "human_duration")]
    pub drain_timeout: Duration,
    /// What the proxy checks before a request reaches an instance.
    #[serde(default)]
    pub guards: HttpGuards,
    /// Served over HTTPS with this certificate.
    #[serde(default)]
    pub tls: Option<TlsSpec>,
    /// Plain-HTTP requests get a 308 to HTTPS (default: true when `tls` is set).
    #[serde(default)]
    pub redirect_https: bool,
    /// `Strict-Transport-Security: max-age` (off unless set).
    #[serde(default, with = "human_duration_opt")]
    pub hsts: Option<Duration>,
}

/// The `http` table's guards (`rate_limit`, `basic_auth`, `max_body`, `trusted_proxies`),
/// enforced by the proxy per route.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpGuards {
    pub rate_limit: Option<RateLimitSpec>,
    pub basic_auth: Option<BasicAuthSpec>,
    pub max_body: Option<ByteSize>,
    /// Addresses or CIDR blocks whose X-Forwarded-* headers are believed.
    pub trusted_proxies: Vec<String>,
}

/// `rate_limit = { requests = 100, per = "1s", burst = 50, key = ["CF-Connecting-IP"] }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitSpec {
    pub requests: u32,
    #[serde(with = "human_duration")]
    pub per: Duration,
    pub burst: u32,
    /// Headers tried in order for the client's key; the peer's address otherwise.
    pub key: Vec<String>,
}

/// `basic_auth = { secret = "HTPASSWD", realm = "staff" }`: the secret holds one
/// `user:bcrypt-hash` per line (as `htpasswd -B` writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuthSpec {
    pub secret: String,
    pub realm: String,
}

/// A health check with hysteresis: an instance changes state only after
/// `healthy_threshold` / `unhealthy_threshold` consecutive results, and joins traffic only
/// after being healthy for `min_healthy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub kind: HealthKind,
    #[serde(with = "human_duration")]
    pub interval: Duration,
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    #[serde(with = "human_duration")]
    pub min_healthy: Duration,
}

impl HealthSpec {
    /// A check of `kind` with every timing at its default.
    pub fn with_defaults(kind: HealthKind) -> HealthSpec {
        HealthSpec {
            kind,
            interval: defaults::HEALTH_INTERVAL,
            timeout: defaults::HEALTH_TIMEOUT,
            healthy_threshold: defaults::HEALTHY_THRESHOLD,
            unhealthy_threshold: defaults::UNHEALTHY_THRESHOLD,
            min_healthy: defaults::MIN_HEALTHY,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum HealthKind {
    /// GET `path` on the instance's `PORT`; healthy on `expect_status`, or any 2xx when
    /// `None`.
    Http {
        path: String,
        expect_status: Option<u16>,
    },
    /// A TCP connect to the instance's `PORT`.
    Tcp,
    /// A command run in the release directory; healthy on exit 0.
    Exec { command: String },
}

/// The signal that asks an instance to stop, before `stop_timeout` and SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum StopSignal {
    #[default]
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGINT")]
    Int,
    #[serde(rename = "SIGQUIT")]
    Quit,
    #[serde(rename = "SIGHUP")]
    Hup,
    #[serde(rename = "SIGUSR1")]
    Usr1,
    #[serde(rename = "SIGUSR2")]
    Usr2,
    #[serde(rename = "SIGKILL")]
    Kill,
}

impl StopSignal {
    pub const ALL: [StopSignal; 7] = [
        StopSignal::Term,
        StopSignal::Int,
        StopSignal::Quit,
        StopSignal::Hup,
        StopSignal::Usr1,
        StopSignal::Usr2,
        StopSignal::Kill,
    ];

    /// `"SIGTERM"`, as `kill -l` spells it with the prefix.
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Term => "SIGTERM",
            StopSignal::Int => "SIGINT",
            StopSignal::Quit => "SIGQUIT",
            StopSignal::Hup => "SIGHUP",
            StopSignal::Usr1 => "SIGUSR1",
            StopSignal::Usr2 => "SIGUSR2",
            StopSignal::Kill => "SIGKILL",
        }
    }

    /// The Linux signal number.
    pub fn number(self) -> i32 {
        match self {
            StopSignal::Term => 15,
            StopSignal::Int => 2,
            StopSignal::Quit => 3,
            StopSignal::Hup => 1,
            StopSignal::Usr1 => 10,
            StopSignal::Usr2 => 12,
            StopSignal::Kill => 9,
        }
    }

    /// Accepts `"TERM"`, `"SIGTERM"`, `"sigterm"`.
    pub fn parse(text: &str) -> Option<StopSignal> {
        let upper = text.trim().to_ascii_uppercase();
        let full = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        StopSignal::ALL.into_iter().find(|s| s.name() == full)
    }
}

impl fmt::Display for StopSignal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A periodic command that never overlaps with its previous run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub command: String,
    pub schedule: Schedule,
    /// A run still going after this is killed.
    #[serde(with = "human_duration")]
    pub timeout: Duration,
    /// Once per fleet (the default) rather than once per host.
    pub singleton: bool,
    /// Hosts with any of these roles may run the job; empty means every host.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HooksSpec {
    /// Runs after the pre-deploy backup and before the switch (migrations).
    pub pre_activate: Option<String>,
    /// Runs after the switch with `HOIST_URL` set; failure rolls back.
    pub smoke: Option<String>,
    #[serde(with = "human_duration")]
    pub timeout: Duration,
}

impl Default for HooksSpec {
    fn default() -> Self {
        HooksSpec {
            pre_activate: None,
            smoke: None,
            timeout: defaults::HOOK_TIMEOUT,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSpec {
    pub source: BackupSource,
    /// When to take a scheduled backup (none: only before deploys and on demand).
    pub schedule: Option<Schedule>,
    /// Take one at the start of every deploy, before `pre_activate` (migrations) runs.
    pub before_deploy: bool,
    pub keep: Keep,
    /// A destination to copy each backup to (a path or `host:path`).
    pub copy_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupSource {
    /// An SQLite file, relative to the app's persistent data directory.
    Sqlite { path: String },
    /// A PostgreSQL database whose URL is the named secret.
    Postgres { secret: String },
    /// A directory, relative to the app's persistent data directory.
    Directory { path: String },
}

/// How many backups to keep per period (grandfather-father-son).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Keep {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    /// The newest `last` backups, always.
    #[serde(default = "default_keep_last")]
    pub last: u32,
}

fn default_keep_last() -> u32 {
    defaults::KEEP_LAST
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            daily: defaults::KEEP_DAILY,
            weekly: defaults::KEEP_WEEKLY,
            monthly: defaults::KEEP_MONTHLY,
            last: defaults::KEEP_LAST,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploySpec {
    pub keep_releases: u32,
    /// How long the previous release stays warm for an instant rollback.
    #[serde(with = "human_duration")]
    pub standby: Duration,
    /// How long a new release may take to become healthy before the deploy fails.
    #[serde(with = "human_duration")]
    pub health_deadline: Duration,
    pub bake: Option<BakeSpec>,
    pub rollout: RolloutSpec,
    /// Send a growing share of clients to the new release before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            keep_releases: defaults::KEEP_RELEASES,
            standby: defaults::STANDBY,
            health_deadline: defaults::HEALTH_DEADLINE,
            bake: None,
            rollout: RolloutSpec::default(),
            canary: None,
        }
    }
}

/// `[deploy.canary]`: once the new release is healthy, the proxy sends it each step's
/// share of clients for `interval`, judged on the new release's own counters; after the
/// last step comes the full switch (and the bake window, if any).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanarySpec {
    /// Shares of clients in basis points (1/100 of a percent): strictly increasing, each
    /// in (0, 10000). Integers keep the spec `Eq` and the proxy's arithmetic exact.
    pub steps_bp: Vec<u32>,
    /// How long each step runs before it is judged.
    #[serde(with = "human_duration")]
    pub interval: Duration,
    /// The share of 5xx answers (basis points) above which a step fails.
    pub max_error_bp: u32,
    /// A p99 latency (to the response head, at the proxy) above which a step fails.
    #[serde(default, with = "human_duration_opt")]
    pub max_p99: Option<Duration>,
    /// Answers a step needs before it is judged; a step waits (up to
    /// [`CanarySpec::MAX_EXTENSIONS`] more intervals) for them.
    pub min_requests: u64,
}

impl CanarySpec {
    /// How many extra intervals a step waits for `min_requests` before it fails.
    pub const MAX_EXTENSIONS: u32 = 3;
    /// The default `min_requests`.
    pub const DEFAULT_MIN_REQUESTS: u64 = 20;
    /// The default `max_error_rate`: 1 %.
    pub const DEFAULT_MAX_ERROR_BP: u32 = 100;
}

/// Basis points as a percentage for people: `500` → `5%`, `50` → `0.5%`.
pub fn percent_of_bp(bp: u32) -> String {
    if bp % 100 == 0 {
        format!("{}%", bp / 100)
    } else {
        let s = format!("{:.2}", bp as f64 / 100.0);
        format!("{}%", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// After the switch, watch the new release for `duration`; failing health rolls back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeSpec {
    #[serde(with = "human_duration")]
    pub duration: Duration,
    /// The share of 5xx answers (in percent of the new release's answers) that fails it.
    pub max_5xx_percent: u32,
    /// A p99 latency (to the response head, at the proxy) that fails it.
    #[serde(default, with = "human_duration_opt")]
    pub max_p99: Option<Duration>,
}

impl BakeSpec {
    /// A bake of `duration` with the default limits: more than 1 % 5xx fails, no p99 limit.
    pub fn with_defaults(duration: Duration) -> BakeSpec {
        BakeSpec {
            duration,
            max_5xx_percent: 1,
            max_p99: None,
        }
    }
}

/// How a fleet deploy proceeds across hosts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RolloutSpec {
    pub batch: Batch,
    pub on_failure: OnFailure,
}

/// Hosts per batch: a count, or a percentage of the fleet (at least one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batch {
    Count(u32),
    Percent(u8),
}

impl Default for Batch {
    fn default() -> Self {
        Batch::Count(1)
    }
}

impl Batch {
    /// Hosts per batch for a fleet of `hosts` (never 0 for a non-empty fleet).
    pub fn size(self, hosts: usize) -> usize {
        let n = match self {
            Batch::Count(n) => n as usize,
            Batch::Percent(p) => (hosts * usize::from(p)).div_ceil(100),
        };
        n.clamp(1, hosts.max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Halt at the failed batch; hosts already switched keep the new release.
    #[default]
    Stop,
    /// Halt and put every already-switched host back on its previous release.
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSpec {
    pub name: String,
    /// How to reach the host; `None` is this machine (the agent on `HOIST_SOCKET`).
    pub ssh: Option<SshAddr>,
    pub roles: Vec<String>,
    /// Environment for everything on this host, over the app's `env`.
    pub env: BTreeMap<String, String>,
    /// `mode = "files"`: a host without an agent (shared hosting), driven over ssh with
    /// POSIX shell tools only. `None` is an agent host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<FilesHost>,
    /// Where the other hosts reach this one (its proxy), when that is not the host part
    /// of `ssh`: the CLI fills it from `ssh -G` (an alias of the ssh config resolved as
    /// ssh resolves it) before a deploy hands the spec to the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A files host (`mode = "files"`): releases unpacked beside `path`, which is a symlink
/// switched atomically; the web server already there (Passenger, …) serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesHost {
    /// The directory the web server serves the app from (becomes a symlink).
    pub path: String,
    /// Run in the new release after the switch (default `touch tmp/restart.txt`).
    pub restart: String,
    /// A URL the CLI checks after the restart.
    pub health: Option<String>,
    /// Text the health answer must contain.
    pub expect: Option<String>,
}

impl FilesHost {
    pub const DEFAULT_RESTART: &'static str = "touch tmp/restart.txt";
}

impl HostSpec {
    pub fn has_any_role(&self, roles: &[String]) -> bool {
        roles.iter().any(|r| self.roles.contains(r))
    }
}

/// `user@host:port` as OpenSSH takes it; every part but the host is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshAddr {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// Why an ssh address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshAddrError {
    #[error("ssh address `{input}` has no host; expected `host`, `user@host` or `user@host:port`")]
    NoHost { input: String },
    #[error("ssh address `{input}` has an empty user before `@`")]
    EmptyUser { input: String },
    #[error("ssh address `{input}` has a bad port `{port}`; expected a number from 1 to 65535")]
    BadPort { input: String, port: String },
    #[error("ssh address `{input}` contains whitespace or a character that is not allowed")]
    BadChar { input: String },
}

impl SshAddr {
    /// Parses `host`, `user@host`, `host:2222`, `user@[::1]:2222`.
    pub fn parse(input: &str) -> Result<SshAddr, SshAddrError> {
        // A leading `-` would be read by ssh as an option.
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) || input.starts_with('-') {
            return Err(SshAddrError::BadChar {
                input: input.to_string(),
            });
        }
        let (user, rest) = match input.rsplit_once('@') {
            Some(("", _)) => {
                return Err(SshAddrError::EmptyUser {
                    input: input.to_string(),
                })
            }
            Some((u, r)) => (Some(u.to_string()), r),
            None => (None, input),
        };
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let Some((h, after)) = bracketed.split_once(']') else {
                return Err(SshAddrError::NoHost {
                    input: input.to_string(),
                });
            };
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => {
                    return Err(SshAddrError::BadChar {
                        input: input.to_string(),
                    })
                }
            };
            (h, port)
        } else if rest.matches(':').count() == 1 {
            let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
            (h, Some(p))
        } else {
            // A bare IPv6 address: no port.
            (rest, None)
        };
        if host.is_empty() {
            return Err(SshAddrError::NoHost {
                input: input.to_string(),
            });
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    return Err(SshAddrError::BadPort {
                        input: input.to_string(),
                        port: p.to_string(),
                    })
                }
            },
            None => None,
        };
        Ok(SshAddr {
            user,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for SshAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Fleet-wide OpenSSH options (a host's own address may override the port).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SshSpec {
    /// An ssh_config file to use (`ssh -F`).
    pub config: Option<String>,
    /// A private key (`ssh -i`).
    pub identity: Option<String>,
    pub port: Option<u16>,
}

/// `[alerts]`: receivers, overrides of the built-in rules, and log-pattern rules.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AlertsSpec {
    /// A URL receiving Alertmanager-format webhook JSON.
    pub webhook: Option<String>,
    /// The name of an app secret holding the webhook URL (chat webhooks carry tokens).
    pub webhook_secret: Option<String>,
    /// An Alertmanager base URL; alerts are posted to its `/api/v2/alerts`.
    pub alertmanager: Option<String>,
    /// A PEM file (absolute path on the host) of roots trusted for https receivers, beside
    /// the system's.
    #[serde(default)]
    pub ca_roots: Option<String>,
    /// `[alerts.rules.NAME]`, NAME one of [`alert_rules::NAMES`].
    pub rules: BTreeMap<String, RuleOverride>,
    /// `[alerts.logs.NAME]`.
    pub logs: BTreeMap<String, LogRule>,
}

/// A built-in rule's threshold changed, or the rule turned off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleOverride {
    pub enabled: bool,
    pub threshold: Option<f64>,
}

/// Fires when `count` lines of `service` matching `pattern` are logged within `within`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRule {
    pub service: String,
    pub pattern: String,
    pub count: u32,
    #[serde(with = "human_duration")]
    pub within: Duration,
}

/// The built-in alert rules and their default thresholds.
pub mod alert_rules {
    /// Seconds a job's last success may be late by beyond `job_missed` × its `every`:
    /// the scheduler's own jitter (a ~1 s pass, a run's end recorded at the next one, a
    /// tick skipped while the run before ends) puts a 1 s job's successes 2-3 s apart
    /// with nothing wrong. Negligible for schedules of minutes or hours.
    pub const JOB_MISSED_GRACE_SECS: u64 = 10;

    /// (name, default threshold, what the threshold means).
    pub const RULES: &[(&str, f64, &str)] = &[
        ("instance_down", 60.0, "seconds an instance may stay down"),
        (
            "crash_loop",
            0.0,
            "unused (fires while the supervisor reports a crash loop)",
        ),
        (
            "http_5xx_ratio",
            0.05,
            "share of 5xx responses over 5 minutes",
        ),
        ("latency_p99", 1.0, "seconds, p99 over 5 minutes"),
        ("memory_near_limit", 0.9, "share of memory_limit in use"),
        (
            "disk_free_low",
            0.1,
            "share of the root's file system still free",
        ),
        (
            "backup_stale",
            2.0,
            "backup age in multiples of its schedule",
        ),
        (
            "job_failed",
            0.0,
            "unused (fires when a job's last run failed)",
        ),
        (
            "job_missed",
            2.0,
            "time since the last success in multiples of the schedule (plus 10 s)",
        ),
        (
            "slo_burn_fast",
            14.4,
            "error-budget burn rate over both 1h and 5m, per `[slo.NAME]`",
        ),
        (
            "slo_burn_slow",
            6.0,
            "error-budget burn rate over both 6h and 30m, per `[slo.NAME]`",
        ),
        (
            "cert_expiring",
            14.0,
            "days before an HTTPS domain's certificate expires (unset: its lifetime's last third, at most 14 days)",
        ),
        (
            "cert_renewal_failed",
            0.0,
            "unused (fires while the last ACME renewal attempt failed)",
        ),
    ];
    /// The rule names, in order.
    pub const NAMES: [&str; 13] = [
        "instance_down",
        "crash_loop",
        "http_5xx_ratio",
        "latency_p99",
        "memory_near_limit",
        "disk_free_low",
        "backup_stale",
        "job_failed",
        "job_missed",
        "slo_burn_fast",
        "slo_burn_slow",
        "cert_expiring",
        "cert_renewal_failed",
    ];

    /// The default threshold of `name`.
    pub fn default_threshold(name: &str) -> Option<f64> {
        RULES.iter().find(|r| r.0 == name).map(|r| r.1)
    }
}

impl AppSpec {
    /// The addresses (`address`, else the host part of `ssh`) of the hosts other than `own` that run a
    /// service with an ACME certificate: where an HTTP-01 token another host of the same
    /// names holds is asked for. Sorted, without duplicates.
    pub fn acme_peer_hosts(&self, own: &str) -> Vec<String> {
        let mut peers = Vec::new();
        for (name, svc) in &self.services {
            if !svc
                .http
                .as_ref()
                .is_some_and(|h| h.tls == Some(TlsSpec::Acme))
            {
                continue;
            }
            for host in self.service_hosts(name) {
                match &host.ssh {
                    Some(ssh) if host.name != own && host.files.is_none() => {
                        peers.push(host.address.clone().unwrap_or_else(|| ssh.host.clone()))
                    }
                    _ => {}
                }
            }
        }
        peers.sort();
        peers.dedup();
        peers
    }

    /// The hosts that run `service`, in file order: every host with one of its roles, or
    /// only the first of them for a singleton (so placement is stable across deploys).
    pub fn service_hosts(&self, service: &str) -> Vec<&HostSpec> {
        let Some(spec) = self.services.get(service) else {
            return Vec::new();
        };
        let hosts = self.hosts.iter().filter(|h| h.has_any_role(&spec.roles));
        if spec.singleton {
            hosts.take(1).collect()
        } else {
            hosts.collect()
        }
    }

    /// The hosts that may run `job`, with the same rule (no roles: every host).
    pub fn job_hosts(&self, job: &str) -> Vec<&HostSpec> {
        let Some(spec) = self.jobs.get(job) else {
            return Vec::new();
        };
        let hosts = self
            .hosts
            .iter()
            .filter(|h| spec.roles.is_empty() || h.has_any_role(&spec.roles));
        if spec.singleton {
            hosts.take(1).collect()
        } else {
            hosts.collect()
        }
    }

    /// Service name → instances to run on `host`.
    pub fn services_on(&self, host: &str) -> BTreeMap<&str, u32> {
        self.services
            .iter()
            .filter(|(name, _)| self.service_hosts(name).iter().any(|h| h.name == host))
            .map(|(name, spec)| (name.as_str(), spec.replicas))
            .collect()
    }

    /// Jobs that run on `host`.
    pub fn jobs_on(&self, host: &str) -> Vec<&str> {
        self.jobs
            .keys()
            .filter(|name| self.job_hosts(name).iter().any(|h| h.name == host))
            .map(String::as_str)
            .collect()
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(roles: &[&str], singleton: bool) -> ServiceSpec {
        ServiceSpec {
            command: "run".into(),
            replicas: if singleton { 1 } else { 2 },
            singleton,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            memory_limit: None,
            stop_timeout: defaults::STOP_TIMEOUT,
            stop_signal: StopSignal::Term,
            user: None,
            env: BTreeMap::new(),
            http: None,
            health: None,
            logs: LogsSpec::DEFAULT,
        }
    }

    fn host(name: &str, roles: &[&str]) -> HostSpec {
        HostSpec {
            name: name.into(),
            ssh: None,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            env: BTreeMap::new(),
            files: None,
            address: None,
        }
    }

    fn app() -> AppSpec {
        AppSpec {
            version: 1,
            app: "notes".into(),
            build: BuildSpec::default(),
            env: BTreeMap::new(),
            secrets: SecretsSpec::default(),
            check: None,
            services: [
                ("web".to_string(), service(&["web"], false)),
                ("worker".to_string(), service(&["worker"], true)),
            ]
            .into(),
            jobs: [(
                "cleanup".to_string(),
                JobSpec {
                    command: "c".into(),
                    schedule: Schedule::Every(Duration::from_secs(300)),
                    timeout: defaults::JOB_TIMEOUT,
                    singleton: true,
                    roles: vec![],
                },
            )]
            .into(),
            hooks: HooksSpec::default(),
            backups: BTreeMap::new(),
            deploy: DeploySpec::default(),
            hosts: vec![
                host("a", &["web"]),
                host("b", &["web", "worker"]),
                host("c", &["worker"]),
            ],
            ssh: SshSpec::default(),
            acme: AcmeSpec::default(),
            alerts: AlertsSpec::default(),
            run: RunSpec::default(),
            slo: BTreeMap::new(),
        }
    }

    #[test]
    fn placement_follows_roles_and_singletons() {
        let spec = app();
        let names =
            |hosts: Vec<&HostSpec>| hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(spec.service_hosts("web")), ["a", "b"]);
        assert_eq!(names(spec.service_hosts("worker")), ["b"]);
        assert_eq!(names(spec.job_hosts("cleanup")), ["a"]);
        assert!(spec.service_hosts("nope").is_empty());
        assert_eq!(
            spec.services_on("b"),
            BTreeMap::from([("web", 2), ("worker", 1)])
        );
        assert_eq!(spec.services_on("c"), BTreeMap::new());
        assert_eq!(spec.jobs_on("a"), ["cleanup"]);
        assert!(spec.jobs_on("b").is_empty());
    }

    #[test]
    fn batch_sizes() {
        assert_eq!(Batch::Count(1).size(10), 1);
        assert_eq!(Batch::Count(20).size(10), 10);
        assert_eq!(Batch::Percent(25).size(10), 3);
        assert_eq!(Batch::Percent(1).size(3), 1);
        assert_eq!(Batch::Percent(100).size(4), 4);
        assert_eq!(Batch::Count(0).size(4), 1);
    }

    #[test]
    fn signals() {
        assert_eq!(StopSignal::parse("TERM"), Some(StopSignal::Term));
        assert_eq!(StopSignal::parse("sigquit"), Some(StopSignal::Quit));
        assert_eq!(StopSignal::parse("SIGUSR2"), Some(StopSignal::Usr2));
        assert_eq!(StopSignal::parse("SIGWINCH"), None);
        assert_eq!(
            serde_json::to_string(&StopSignal::Int).unwrap(),
            r#""SIGINT""#
        );
    }

    #[test]
    fn ssh_addresses() {
        let ok = |s: &str| SshAddr::parse(s).unwrap();
        assert_eq!(
            ok("web1"),
            SshAddr {
                user: None,
                host: "web1".into(),
                port: None
            }
        );
        assert_eq!(
            ok("deploy@10.0.0.5:2222"),
            SshAddr {
                user: Some("deploy".into()),
                host: "10.0.0.5".into(),
                port: Some(2222)
            }
        );
        assert_eq!(ok("root@[::1]:22").host, "::1");
        assert_eq!(ok("fe80::1").port, None);
        for text in ["deploy@10.0.0.5:2222", "root@[::1]:22", "web1"] {
            assert_eq!(ok(text).to_string(), text);
        }
        let errors: Vec<String> = [
            "@host",
            "user@",
            "host:0",
            "host:ssh",
            "-oProxyCommand=x",
            "a b",
        ]
        .iter()
        .map(|s| SshAddr::parse(s).unwrap_err().to_string())
        .collect();
        expect_test::expect![[r#"
            [
                "ssh address `@host` has an empty user before `@`",
                "ssh address `user@` has no host; expected `host`, `user@host` or `user@host:port`",
                "ssh address `host:0` has a bad port `0`; expected a number from 1 to 65535",
                "ssh address `host:ssh` has a bad port `ssh`; expected a number from 1 to 65535",
                "ssh address `-oProxyCommand=x` contains whitespace or a character that is not allowed",
                "ssh address `a b` contains whitespace or a character that is not allowed",
            ]
        "#]]
        .assert_debug_eq(&errors);
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut spec = app();
        spec.services.get_mut("web").unwrap().memory_limit = Some(ByteSize(512 * 1024 * 1024));
        spec.services.get_mut("web").unwrap().http = Some(HttpSpec {
            guards: HttpGuards::default(),
            domains: vec!["*".into()],
            path_prefix: "/".into(),
            health: HealthSpec::with_defaults(HealthKind::Http {
                path: "/health".into(),
                expect_status: None,
            }),
            drain_timeout: defaults::DRAIN_TIMEOUT,
            tls: Some(TlsSpec::File {
                cert: "/etc/c.pem".into(),
                key: "/etc/k.pem".into(),
            }),
            redirect_https: true,
            hsts: Some(Duration::from_secs(86400 * 365)),
        });
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["services"]["web"]["memory_limit"], "512MiB");
        assert_eq!(json["services"]["web"]["stop_timeout"], "30s");
        assert_eq!(
            json["services"]["web"]["http"]["health"]["kind"]["type"],
            "http"
        );
        assert_eq!(json["jobs"]["cleanup"]["schedule"]["every"], "5m");
        let back: AppSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
    }
}
