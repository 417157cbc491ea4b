//! What several commands share: where the agent lives, which hosts a command reaches
//! (`--host`), a runtime for async calls, turning the agent client's errors into
//! messages with hints, and rendering one answer per host.

use std::path::PathBuf;

use hoist_client::{Client, ClientError};
use hoist_config::LoadedConfig;
use hoist_fleet::hosts::Answer;
use hoist_fleet::rollout::Target;
use hoist_fleet::HostKeys;

use crate::exit::{with_exit, with_hint, Exit, Reported, WithExit};
use crate::output;

/// `--host NAME`: the hosts of the app file a command reaches.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HostArgs {
    /// Only these hosts of the app file (repeat it, or a comma list) [default: every host]
    #[arg(long = "host", value_name = "NAME", value_delimiter = ',')]
    pub hosts: Vec<String>,
}

/// Whether the app file describes a fleet reached over SSH (output then names hosts).
pub fn is_fleet(loaded: Option<&LoadedConfig>) -> bool {
    loaded.is_some_and(|l| hoist_fleet::hosts::is_fleet(&l.spec))
}

/// The private directory of this user's ssh master sockets.
pub fn control_dir() -> anyhow::Result<PathBuf> {
    hoist_fleet::ssh::control_dir().map_err(|e| {
        with_hint(
            anyhow::anyhow!("no private directory for ssh's connections: {e}"),
            "set HOIST_SSH_CONTROL_DIR to a directory of yours with mode 0700",
        )
    })
}

/// Every host of the app file: this machine's agent alone without one, or without ssh hosts.
pub fn all_targets(loaded: Option<&LoadedConfig>, keys: HostKeys) -> anyhow::Result<Vec<Target>> {
    let Some(loaded) = loaded else {
        return Ok(vec![Target {
            name: hoist_core::spec::defaults::LOCAL_HOST.into(),
            client: client(),
            remote: None,
        }]);
    };
    let control = if hoist_fleet::hosts::is_fleet(&loaded.spec) {
        control_dir()?
    } else {
        PathBuf::new()
    };
    hoist_fleet::hosts::targets(
        &loaded.spec,
        loaded.project_dir(),
        &client(),
        keys,
        &control,
    )
    .map_err(|e| match e.hint() {
        Some(h) => usage(anyhow::Error::new(e), h),
        None => with_exit(Exit::Usage, anyhow::Error::new(e)),
    })
}

/// The hosts picked with `--host` (every host when none is named), for a command that
/// needs an agent: a files host among them is refused (exit 2), naming it.
pub fn targets(loaded: Option<&LoadedConfig>, hosts: &HostArgs) -> anyhow::Result<Vec<Target>> {
    if let Some(l) = loaded {
        super::files::refuse_agent_command(l, &hosts.hosts)?;
    }
    agent_targets(loaded, hosts)
}

/// The agent hosts picked with `--host` (files hosts are left to `cmd::files`).
pub fn agent_targets(
    loaded: Option<&LoadedConfig>,
    hosts: &HostArgs,
) -> anyhow::Result<Vec<Target>> {
    if !hosts.hosts.is_empty() && loaded.is_none() {
        return Err(with_exit(
            Exit::Usage,
            anyhow::anyhow!("--host needs an app file that names its hosts"),
        ));
    }
    hoist_fleet::hosts::pick(all_targets(loaded, HostKeys::Strict)?, &hosts.hosts)
        .map_err(|e| usage(anyhow::Error::new(e), "`hoist config` lists the hosts"))
}

/// A usage error (exit 2) with a hint.
pub fn usage(error: anyhow::Error, hint: impl Into<String>) -> anyhow::Error {
    WithExit {
        exit: Exit::Usage,
        error,
        hint: Some(hint.into()),
    }
    .into()
}

/// The end of a command that asked several hosts: exit 0 when all answered, 1 when none
/// did, 3 when some did (design §5). One host (an app file without ssh hosts) fails with
/// the agent's own error, hint and exit code.
pub fn finish<T>(answers: Vec<Answer<T>>, fleet: bool) -> anyhow::Result<()> {
    if !fleet && answers.len() == 1 {
        return match answers.into_iter().next().map(|a| a.result) {
            Some(Err(e)) => Err(agent_error(e.source)),
            _ => Ok(()),
        };
    }
    for a in &answers {
        if let Err(e) = &a.result {
            output::error(&format!("`{}`: {e}", a.host));
        }
    }
    match hoist_fleet::hosts::exit_code(&answers) {
        0 => Ok(()),
        1 => Err(Reported(Exit::Failed).into()),
        _ => Err(Reported(Exit::Partial).into()),
    }
}

/// How `--json` shows the answers of the hosts a command reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Json {
    /// No JSON: each host's answer as text.
    Off,
    /// One document: a fleet's host-tagged list, one host's own answer.
    Answer,
    /// The host-tagged list, one host included.
    List,
    /// The host-tagged list, and each host's text as well (on stderr: status lines).
    ListAndText,
}

impl Json {
    /// `self` when `--json` was given, else [`Json::Off`].
    pub fn when(self, json: bool) -> Json {
        if json {
            self
        } else {
            Json::Off
        }
    }
}

/// The end of every per-host command: the answers shown as one JSON document (`json`)
/// or each successful one through `text(host, answer)`, failures named per host, and
/// the exit code from the worst host ([`finish`]).
pub fn report<T: serde::Serialize>(
    answers: Vec<Answer<T>>,
    fleet: bool,
    json: Json,
    mut text: impl FnMut(&str, &T) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match json {
        Json::Answer if !fleet => {
            if let Some(Ok(v)) = answers.first().map(|a| &a.result) {
                output::json(v)?;
            }
        }
        Json::Answer | Json::List | Json::ListAndText => output::json(&json_answers(&answers))?,
        Json::Off => {}
    }
    if matches!(json, Json::Off | Json::ListAndText) {
        for a in &answers {
            if let Ok(v) = &a.result {
                text(&a.host, v)?;
            }
        }
    }
    finish(answers, fleet)
}

/// `h1 ` before a host's line on a fleet, nothing for one host.
pub fn host_prefix(host: &str, fleet: bool) -> String {
    if fleet {
        format!("{host} ")
    } else {
        String::new()
    }
}

/// `` on `h1` `` after a host's line on a fleet, nothing for one host.
pub fn on_host(host: &str, fleet: bool) -> String {
    if fleet {
        format!(" on `{host}`")
    } else {
        String::new()
    }
}

/// A JSON value with its host added (objects), or wrapped as `{"host", "value"}`.
pub fn tagged(host: &str, value: impl serde::Serialize) -> serde_json::Value {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    match v.as_object_mut() {
        Some(o) => {
            o.insert("host".into(), serde_json::Value::from(host));
            v
        }
        None => serde_json::json!({"host": host, "value": v}),
    }
}

/// Host-tagged JSON documents of every answer: its value, or its error.
pub fn json_answers<T: serde::Serialize>(answers: &[Answer<T>]) -> Vec<serde_json::Value> {
    answers
        .iter()
        .map(|a| match &a.result {
            Ok(v) => tagged(&a.host, v),
            Err(e) => serde_json::json!({"host": a.host, "error": e.message}),
        })
        .collect()
}

/// The agent's root when none is given: system-wide for root, per-user otherwise.
pub fn default_root() -> PathBuf {
    if let Some(root) = std::env::var_os("HOIST_ROOT") {
        return PathBuf::from(root);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/hoist");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("hoist")
}

/// The agent's socket: `HOIST_SOCKET`, else the default place for this user.
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("HOIST_SOCKET") {
        return PathBuf::from(s);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/hoist/agent.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("hoist/agent.sock"),
        None => default_root().join("agent.sock"),
    }
}

/// A client for the agent every command talks to.
pub fn client() -> Client {
    Client::new(&default_socket())
}

/// A small runtime for one command's calls to the agent.
pub fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime can always be built")
        .block_on(fut)
}

/// The agent client's error as the user should see it.
pub fn agent_error(err: ClientError) -> anyhow::Error {
    let err = match err {
        // The agent's pid and state are in the message; say which agent.
        ClientError::NoAnswer { ref agent, .. } => {
            let hint = err.hint().unwrap_or_default().to_string();
            return with_hint(anyhow::anyhow!("{err} (on `{agent}`)"), hint);
        }
        other => other,
    };
    match (&err, err.hint().map(str::to_string)) {
        // A request the agent could not understand is a usage error; a refusal (a lock
        // held, a release missing) is a failed operation that changed nothing.
        (ClientError::Api(_, status), hint) if *status == hyper::StatusCode::BAD_REQUEST => {
            match hint {
                Some(h) => usage(anyhow::anyhow!("{err}"), h),
                None => with_exit(Exit::Usage, anyhow::anyhow!("{err}")),
            }
        }
        (_, Some(hint)) => with_hint(anyhow::anyhow!("{err}"), hint),
        (_, None) => anyhow::anyhow!("{err}"),
    }
}

/// `user@host`, for the history.
pub fn actor() -> String {
    let uid = nix::unistd::getuid();
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .or_else(|| {
            nix::unistd::User::from_uid(uid)
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| uid.to_string());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    format!("{user}@{host}")
}

/// A size for people: `512 B`, `3.4 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
