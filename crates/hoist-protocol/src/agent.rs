//! The agent's API: HTTP/1.1 with JSON bodies over the agent's Unix socket (or through
//! `ssh HOST hoist agent connect`). Streams are one JSON object per line.
//!
//! Paths (all under `/v1`): `GET /hello`, `GET /status`, `POST /deploy` (stream),
//! `POST /rollback` (stream), `GET /history`, `GET /releases`, `GET /logs` (stream with
//! `follow`), `GET /events` (stream), `PUT|DELETE /secrets/{app}/{name}`,
//! `GET /secrets/{app}`, `POST /services/{app}/{service}/{start|stop|restart}`,
//! `GET /jobs`, `POST /jobs/{app}/{job}/run`.

use serde::{Deserialize, Serialize};

/// Bumped when a message changes incompatibly; the CLI refuses to talk to an agent of
/// another API version and says which side to upgrade.
pub const API_VERSION: u32 = 1;

/// `GET /v1/hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub api: u32,
    pub version: String,
    /// Changes every time the agent starts: a lock held under another boot is stale.
    pub boot: String,
    pub pid: u32,
    pub root: String,
    /// The proxy's HTTP listener, where deployed web services answer.
    pub proxy: Option<String>,
}

/// An error answer: `{"error": "...", "hint": "..."}` with a 4xx/5xx status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `POST /v1/maintenance/{app}`: turns the app's maintenance page on or off. The proxy
/// keeps it in its saved table, so it survives the agent's death.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    pub on: bool,
    #[serde(default)]
    pub message: Option<String>,
}

/// The answer: the app's maintenance state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceState {
    pub app: String,
    pub on: bool,
    pub message: Option<String>,
}

/// `PUT /v1/secrets/{app}/{name}`: the value travels in the body, never in a URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretValue {
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// `GET /v1/secrets/{app}`: names only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretNames {
    pub app: String,
    pub names: Vec<String>,
}

/// The state of one instance, as `hoist status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub instance: String,
    pub service: String,
    pub release: String,
    /// `starting`, `healthy`, `unhealthy`, `running` (no health check), `crash-loop`,
    /// `backoff`, `stopping`, `stopped`.
    pub state: String,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub uptime_s: Option<u64>,
    pub restarts: u32,
    pub rss_bytes: Option<u64>,
    pub cpu_s: Option<f64>,
    pub last_exit: Option<String>,
    /// Log lines its shim could not write (disk full) since it started.
    #[serde(default)]
    pub dropped_lines: u64,
}

/// One app on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: String,
    pub release: Option<String>,
    pub standby: Option<String>,
    pub url: Option<String>,
    pub instances: Vec<InstanceStatus>,
}

/// `GET /v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub host: String,
    pub agent: Hello,
    pub apps: Vec<AppStatus>,
}

/// `POST /v1/services/{app}/{service}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceAction {
    Start,
    Stop,
    Restart,
}

/// One line of a progress stream (deploy, rollback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Progress {
    /// A journaled step began, ended or failed.
    Step {
        step: String,
        phase: String,
        at_ms: i64,
        message: Option<String>,
    },
    /// A line of output from a hook, check or failing instance.
    Output { source: String, line: String },
    /// The last line of the stream.
    Done(Outcome),
}

/// How a deploy or rollback ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub app: String,
    /// `succeeded` or `failed`.
    pub result: String,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub reason: Option<String>,
    pub url: Option<String>,
    pub duration_ms: i64,
}

/// `GET /v1/logs` query and one line of the answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub t: String,
    pub instance: String,
    pub stream: String,
    pub line: String,
}

/// `POST /v1/releases` (body: the artifact): what the agent stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Uploaded {
    pub app: String,
    pub release: String,
    pub files: usize,
    pub bytes: u64,
}

/// `POST /v1/deploy`: make `release` (already uploaded) current for `spec.app`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub spec: hoist_core::spec::AppSpec,
    pub release: String,
    /// The host name this agent is in the app file (`local` for a local agent).
    pub host: String,
    /// Who asked: `user@machine`, recorded in the history.
    pub actor: String,
    /// The token of the fleet lease this deploy runs under (see `fleet::LeaseRequest`);
    /// a deploy without it is refused while another holder's lease is live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

/// `POST /v1/rollback`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRequest {
    pub app: String,
    /// The release to go back to; the standby release when absent.
    pub release: Option<String>,
    pub host: String,
    pub actor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
    /// What happens to the app's data when the rollback crosses a migration (a deploy
    /// that ran `pre_activate`); absent: such a rollback is refused (409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<RollbackData>,
}

/// The data side of a rollback across a migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RollbackData {
    /// Restore the backups taken before the first migration crossed, in the same operation.
    WithBackup,
    /// Roll the code back only; the data stays as migrated (recorded in the history).
    KeepData,
    /// The data was restored by another host of the fleet (`host`, `note` says what): roll
    /// the code back here.
    RestoredOn { host: String, note: String },
}

/// A deploy between the rollback target and the current release that ran `pre_activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    /// The release whose deploy ran the hook.
    pub release: String,
    /// The hook's command.
    pub hook: String,
    /// The deploy operation, and when it ended.
    pub operation: i64,
    pub at_ms: i64,
    /// The `before_deploy` backups taken on this host just before the hook ran.
    pub backups: Vec<MigrationBackup>,
    /// `pre_activate` (a deploy migrated the data), or `restore` (a rollback restored
    /// data from before a migration: going forward past it runs new code on old data).
    #[serde(default = "pre_activate")]
    pub kind: String,
}

fn pre_activate() -> String {
    "pre_activate".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationBackup {
    pub name: String,
    pub id: i64,
}

/// `POST /v1/rollback/check` (body: a `RollbackRequest`): where the rollback would go and
/// the migrations it crosses, oldest first. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackCheck {
    pub app: String,
    pub current: String,
    pub target: String,
    pub migrations: Vec<Migration>,
}

impl Migration {
    /// One line naming the release, the hook and the backup, for refusals.
    pub fn describe(&self) -> String {
        if self.kind == "restore" {
            return format!(
                "the rollback to release `{}` restored data from before a migration ({}); the releases after it expect migrated data",
                self.release, self.hook
            );
        }
        let backups = if self.backups.is_empty() {
            "no backup was taken before it".to_string()
        } else {
            self.backups
                .iter()
                .map(|b| format!("backup `{}` {} was taken before it", b.name, b.id))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "release `{}` ran its pre_activate hook `{}`; {backups}",
            self.release, self.hook
        )
    }
}

/// One release kept on the host, for `hoist releases`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseInfo {
    pub app: String,
    pub release: String,
    pub created_at_ms: i64,
    pub commit: Option<String>,
    /// `current`, `standby` or `kept`.
    pub role: String,
}

/// One record of the audit history (`GET /v1/history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    pub seq: i64,
    pub at_ms: i64,
    pub app: String,
    /// `deploy`, `rollback`, `restart`, `restore`.
    pub kind: String,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub commit: Option<String>,
    pub actor: String,
    pub result: String,
    pub duration_ms: i64,
    pub reason: Option<String>,
}

/// `POST /v1/plan`: what deploying `manifest` (the artifact's `hoist-release.json`) with
/// `spec` would change on this host. Nothing is changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRequest {
    pub spec: hoist_core::spec::AppSpec,
    pub manifest: String,
    pub host: String,
    /// The CLI's clock (ms since the epoch) when it sent the request: the agent compares
    /// its own with it. Absent from older CLIs.
    #[serde(default)]
    pub client_time_ms: Option<i64>,
}

/// Names added, removed and changed between the current release and the new one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A domain of a web service with `tls`, as `hoist certs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertStatus {
    pub domain: String,
    pub app: String,
    pub service: String,
    /// `acme`, or `file \`PATH\``.
    pub source: String,
    pub issuer: Option<String>,
    /// RFC 3339: with `not_after`, the lifetime (doctor warns in its last third).
    #[serde(default)]
    pub not_before: Option<String>,
    /// RFC 3339.
    pub not_after: Option<String>,
    /// Whether the proxy was handed a certificate for the domain by this agent.
    pub serving: bool,
    /// An ACME issuance or renewal of it is running (or waiting for the one before).
    #[serde(default)]
    pub renewing: bool,
    /// The last issuance or renewal (ACME).
    pub last: Option<CertAttempt>,
    /// What needs attention, if anything.
    pub problem: Option<String>,
}

/// One issuance or renewal attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertAttempt {
    pub at: String,
    pub ok: bool,
    pub message: String,
}

/// One preflight check of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The answer to a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub app: String,
    pub current: Option<String>,
    pub release: String,
    pub services: Changes,
    pub jobs: Changes,
    pub env: Changes,
    pub secrets: Changes,
    pub files: Changes,
    /// Bytes of file content this host does not have yet.
    pub upload_bytes: u64,
    pub checks: Vec<PlanCheck>,
}

/// One finding of `hoist doctor` (`GET /v1/doctor` answers a host's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Stable, e.g. `disk.space`; its runbook page is `docs/runbook/<id>.md`.
    pub id: String,
    /// `pass`, `warn` or `fail`.
    pub status: String,
    pub why: String,
    /// What to do; empty for a pass.
    pub fix: String,
    /// What was measured or seen (log lines, pids, figures).
    #[serde(default)]
    pub evidence: Vec<String>,
    /// The runbook page for this finding.
    pub runbook: String,
}

impl Finding {
    pub fn new(id: &str, status: &str, why: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            id: id.to_string(),
            status: status.to_string(),
            why: why.into(),
            fix: if status == "pass" {
                String::new()
            } else {
                fix.into()
            },
            evidence: Vec::new(),
            runbook: format!("docs/runbook/{id}.md"),
        }
    }

    pub fn with_evidence(mut self, evidence: Vec<String>) -> Finding {
        self.evidence = evidence;
        self
    }
}

/// `GET /v1/doctor`: what the host found about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    pub host: String,
    pub version: String,
    /// The host's clock when it answered (ms since the epoch).
    pub now_ms: i64,
    pub findings: Vec<Finding>,
}

/// `GET /v1/dashboard` and `POST /v1/dashboard/rotate`: where the agent's dashboard
/// listens (absent when it serves none) and the token its login URL carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DashboardInfo {
    pub addr: Option<String>,
    pub token: String,
}
