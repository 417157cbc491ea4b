//! `hoist setup` of one host, idempotent: the same hoist binary (replaced atomically when
//! it differs), the directories, a host config written only when absent, an optional
//! unprivileged user, and the agent installed and started (a systemd unit when systemd
//! runs, else a detached keeper), then checked through ssh. Each step reports whether it
//! changed anything; a second run changes nothing. It only runs fixed scripts through
//! [`Remote`]; it never edits what a step finds already in place (the host config).

use std::path::PathBuf;
use std::time::Duration;

use hoist_protocol::agent::Hello;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::ssh::{shell_quote, Remote, SshError, REMOTE_BIN};

/// The small per-instance shim, installed beside `hoist`: the agent uses it (far less
/// memory per instance than a shim of the whole `hoist`) when its version is its own.
pub const REMOTE_SHIM: &str = "/usr/local/bin/hoist-shim";

/// The host config written when a host has none: the proxy takes ports 80 and 443.
pub const DEFAULT_AGENT_TOML: &str =
    "# Written by `hoist setup`; edit freely: setup never overwrites it.\n\
# Keys: root, socket, proxy, https, dashboard (as `hoist agent` flags).\n\
proxy = \"0.0.0.0:80\"\n\
https = \"0.0.0.0:443\"\n";

const AGENT_TOML: &str = "/etc/hoist/agent.toml";
/// The user apps run as (the agent's default when it runs as root).
const APPS_USER: &str = "hoist-apps";
const UNIT: &str = "/etc/systemd/system/hoist-agent.service";
/// How long a started agent gets to answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct SetupOptions {
    /// The binary to install: normally the running one.
    pub local_bin: PathBuf,
    /// An unprivileged system user to create when missing.
    pub user: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionState {
    Changed,
    Unchanged,
}

/// One step of the setup and what it did.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    /// `binary`, `directories`, `config`, `apps-user`, `user`, `agent`.
    pub name: &'static str,
    pub state: ActionState,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SetupReport {
    pub host: String,
    pub actions: Vec<Action>,
    /// `hoist --version` on the host after setup.
    pub version: String,
    /// `systemd` or `keeper`.
    pub supervisor: &'static str,
    /// The agent's own answer to `GET /v1/hello`.
    pub agent_pid: u32,
    pub proxy: Option<String>,
}

impl SetupReport {
    /// Whether any step changed the host.
    pub fn changed(&self) -> bool {
        self.actions.iter().any(|a| a.state == ActionState::Changed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("cannot read the hoist binary `{path}`")]
    ReadBinary {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{host}` runs on `{remote}`, but this hoist binary is built for `{local}`")]
    Arch {
        host: String,
        local: String,
        remote: String,
    },
    #[error("`{shim}` is `{found}`, not the shim of `{hoist}` (`{expected}`)")]
    ShimVersion {
        shim: PathBuf,
        hoist: PathBuf,
        found: String,
        expected: String,
    },
    #[error("user name `{user}` is not a valid system user name")]
    BadUser { user: String },
    #[error("`{host}`: {step} failed: {detail}")]
    Step {
        host: String,
        step: &'static str,
        detail: String,
    },
    #[error("the agent on `{host}` does not answer through ssh: {detail}")]
    NoAnswer { host: String, detail: String },
}

impl SetupError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SetupError::Ssh(e) => e.hint(),
            SetupError::ReadBinary { path, .. } | SetupError::ShimVersion { shim: path, .. }
                if path.file_name() == Some(std::ffi::OsStr::new("hoist-shim")) =>
            {
                Some(
                    "setup installs `hoist-shim` beside `hoist` (same version); both are built by `cargo build -p hoist`"
                        .into(),
                )
            }
            SetupError::Arch { .. } => {
                Some("run `hoist setup` with a hoist built for the host's architecture".into())
            }
            SetupError::NoAnswer { .. } => Some(
                "see `/var/lib/hoist/agent.log` on the host (or `journalctl -u hoist-agent`)"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// Sets up one host; `progress` sees each step as it completes. The remote should have
/// been built with [`crate::HostKeys::AcceptNew`]: setup is where a new host is trusted.
pub async fn setup_host(
    remote: &Remote,
    opts: &SetupOptions,
    mut progress: impl FnMut(&Action),
) -> Result<SetupReport, SetupError> {
    if let Some(user) = &opts.user {
        if !valid_user(user) {
            return Err(SetupError::BadUser { user: user.clone() });
        }
    }
    let host = remote.name.clone();
    let step_err = |step: &'static str, e: SshError| match e {
        SshError::Remote { stderr, status, .. } => SetupError::Step {
            host: host.clone(),
            step,
            detail: format!(
                "{} (status {})",
                stderr.trim().lines().last().unwrap_or("no output"),
                status.map_or_else(|| "unknown".into(), |s| s.to_string())
            ),
        },
        other => SetupError::Ssh(other),
    };
    remote.open().await?;
    let mut actions = Vec::new();
    let mut record = |a: Action, actions: &mut Vec<Action>| {
        progress(&a);
        actions.push(a);
    };

    // What is there already.
    let probe = remote
        .run(
            &[
                "sh",
                "-c",
                &format!(
                    "uname -m; (sha256sum {REMOTE_BIN} 2>/dev/null || echo none) | cut -d' ' -f1; \
                     ({REMOTE_BIN} --version 2>/dev/null || echo none) | head -n 1; \
                     if [ -d /run/systemd/system ]; then echo systemd; else echo keeper; fi; \
                     (sha256sum {REMOTE_SHIM} 2>/dev/null || echo none) | cut -d' ' -f1"
                ),
            ],
            None,
        )
        .await
        .map_err(|e| step_err("probe", e))?;
    let probe = String::from_utf8_lossy(&probe.stdout).into_owned();
    let mut lines = probe.lines().map(str::trim);
    let (arch, remote_sha, old_version, supervisor, remote_shim_sha) = (
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
        lines.next().unwrap_or_default().to_string(),
        if lines.next() == Some("systemd") {
            "systemd"
        } else {
            "keeper"
        },
        lines.next().unwrap_or_default().to_string(),
    );
    if arch != std::env::consts::ARCH {
        return Err(SetupError::Arch {
            host: host.clone(),
            local: std::env::consts::ARCH.into(),
            remote: arch,
        });
    }

    // The binaries: the same bytes as the local ones, swapped in by rename. The shim
    // first, so that an agent started on the new `hoist` finds a shim of its version.
    let local_shim = opts.local_bin.with_file_name("hoist-shim");
    check_shim_version(&opts.local_bin, &local_shim).await?;
    let read = |path: PathBuf| async move {
        tokio::fs::read(&path)
            .await
            .map_err(|source| SetupError::ReadBinary { path, source })
    };
    let shim = read(local_shim).await?;
    let local = read(opts.local_bin.clone()).await?;
    let shim_sha = hex::encode(Sha256::digest(&shim));
    let local_sha = hex::encode(Sha256::digest(&local));
    let shim_changed = shim_sha != remote_shim_sha;
    let binary_changed = local_sha != remote_sha;
    for (changed, bytes, sha, path) in [
        (shim_changed, shim, &shim_sha, REMOTE_SHIM),
        (binary_changed, local, &local_sha, REMOTE_BIN),
    ] {
        if !changed {
            continue;
        }
        let script = format!(
            "set -e; umask 022; mkdir -p /usr/local/bin; \
             t=$(mktemp /usr/local/bin/.hoist.XXXXXX); trap 'rm -f \"$t\"' EXIT; \
             cat > \"$t\"; chmod 0755 \"$t\"; sync \"$t\"; \
             [ \"$(sha256sum < \"$t\" | cut -d' ' -f1)\" = {sha} ] || {{ echo 'the upload arrived damaged' >&2; exit 1; }}; \
             mv -f \"$t\" {path}; trap - EXIT; sync /usr/local/bin"
        );
        remote
            .run(&["sh", "-c", &script], Some(bytes))
            .await
            .map_err(|e| step_err("installing the binary", e))?;
    }
    let version = remote
        .run(&[REMOTE_BIN, "--version"], None)
        .await
        .map_err(|e| step_err("checking the binary", e))?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    record(
        Action {
            name: "binary",
            state: state(binary_changed || shim_changed),
            detail: if binary_changed {
                format!(
                    "{REMOTE_BIN}: `{old_version}` -> `{version}` (sha256 {}), and `{REMOTE_SHIM}`",
                    &local_sha[..12]
                )
            } else {
                format!(
                    "`{REMOTE_BIN}`: `{version}` (sha256 `{}`), and `{REMOTE_SHIM}`{}",
                    &local_sha[..12],
                    if shim_changed { " (installed)" } else { "" }
                )
            },
        },
        &mut actions,
    );

    // Directories: state private to root, socket and config readable.
    let dirs = remote
        .run(
            &[
                "sh",
                "-c",
                "set -e; c=unchanged; for d in /var/lib/hoist:700:711 /run/hoist:755:755 /etc/hoist:755:755; do \
                 p=${d%%:*}; m=${d#*:}; m2=${m#*:}; m=${m%:*}; \
                 if [ ! -d \"$p\" ]; then mkdir -p -m \"$m\" \"$p\"; c=changed; \
                 else a=$(stat -c %a \"$p\"); if [ \"$a\" != \"$m\" ] && [ \"$a\" != \"$m2\" ]; then chmod \"$m\" \"$p\"; c=changed; fi; fi; \
                 done; echo $c",
            ],
            None,
        )
        .await
        .map_err(|e| step_err("creating directories", e))?;
    record(
        Action {
            name: "directories",
            state: parse_state(&dirs.stdout),
            // 0711 once the agent runs apps as their own user: passable, not listable.
            detail: "`/var/lib/hoist` (0700, or the agent's 0711), `/run/hoist`, `/etc/hoist`"
                .into(),
        },
        &mut actions,
    );

    // The host config: written once; what an operator put there stays.
    let config = remote
        .run(
            &[
                "sh",
                "-c",
                &format!(
                    "set -e; if [ -e {AGENT_TOML} ]; then cat > /dev/null; echo unchanged; else \
                     cat > {AGENT_TOML}.tmp; sync {AGENT_TOML}.tmp; mv {AGENT_TOML}.tmp {AGENT_TOML}; echo changed; fi"
                ),
            ],
            Some(DEFAULT_AGENT_TOML.as_bytes().to_vec()),
        )
        .await
        .map_err(|e| step_err("writing the host config", e))?;
    record(
        Action {
            name: "config",
            state: parse_state(&config.stdout),
            detail: format!("`{AGENT_TOML}`"),
        },
        &mut actions,
    );

    // Man pages and the bash completion, from the binary just installed (so they match it).
    let docs = remote
        .run(&[REMOTE_BIN, "docs", "install"], None)
        .await
        .map_err(|e| step_err("installing man pages and completions", e))?;
    record(
        Action {
            name: "docs",
            state: parse_state(&docs.stdout),
            detail: "man pages in `/usr/local/share/man/man1`, bash completion in \
                     `/usr/local/share/bash-completion/completions/hoist`"
                .into(),
        },
        &mut actions,
    );

    // The apps' own user: a root agent runs instances, jobs and hooks as it, never as
    // itself or the proxy (the host config's `apps_user` names another, or `root`).
    let out = remote
        .run(
            &[
                "sh",
                "-c",
                &format!(
                    "if id -u {APPS_USER} >/dev/null 2>&1; then echo unchanged; else \
                     useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {APPS_USER} && echo changed; fi"
                ),
            ],
            None,
        )
        .await
        .map_err(|e| step_err("creating the apps' user", e))?;
    record(
        Action {
            name: "apps-user",
            state: parse_state(&out.stdout),
            detail: format!("system user `{APPS_USER}`, which apps run as"),
        },
        &mut actions,
    );

    if let Some(user) = &opts.user {
        let q = shell_quote(user);
        let out = remote
            .run(
                &[
                    "sh",
                    "-c",
                    &format!(
                        "if id -u {q} >/dev/null 2>&1; then echo unchanged; else \
                         useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {q} && echo changed; fi"
                    ),
                ],
                None,
            )
            .await
            .map_err(|e| step_err("creating the user", e))?;
        record(
            Action {
                name: "user",
                state: parse_state(&out.stdout),
                detail: format!("system user `{user}`"),
            },
            &mut actions,
        );
    }

    // The agent: started when absent, restarted when its binary changed (instances
    // survive a restart: the new agent re-adopts them).
    // A new shim too: the agent picks its shim when it starts.
    let restart = if binary_changed || shim_changed {
        "1"
    } else {
        "0"
    };
    let script = if supervisor == "systemd" {
        format!(
            "set -e; c=unchanged; \
             if ! cmp -s {UNIT} - ; then cat > {UNIT}.tmp <<'EOF'\n{}EOF\n mv {UNIT}.tmp {UNIT}; systemctl daemon-reload; c=changed; fi; \
             if ! systemctl is-enabled --quiet hoist-agent; then systemctl enable --quiet hoist-agent; c=changed; fi; \
             if ! systemctl is-active --quiet hoist-agent; then systemctl start hoist-agent; c=changed; \
             elif [ {restart} = 1 ]; then systemctl restart hoist-agent; c=changed; fi; echo $c",
            systemd_unit()
        )
    } else {
        // The keeper is found by its pid file and checked by its command line, so a
        // recycled pid is not mistaken for it.
        format!(
            "set -e; f=/run/hoist/keeper.pid; \
             running() {{ [ -f $f ] && p=$(cat $f) && [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q 'agent keep'; }}; \
             if running; then \
               if [ {restart} = 0 ]; then echo unchanged; exit 0; fi; \
               kill -TERM $p; i=0; while running; do i=$((i+1)); [ $i -lt 300 ] || {{ echo 'the old agent did not stop' >&2; exit 1; }}; sleep 0.1; done; \
             fi; \
             setsid -f {REMOTE_BIN} agent keep < /dev/null >> /var/lib/hoist/agent.log 2>&1; echo changed"
        )
    };
    let input = if supervisor == "systemd" {
        Some(systemd_unit().into_bytes())
    } else {
        None
    };
    let out = remote
        .run(&["sh", "-c", &script], input)
        .await
        .map_err(|e| step_err("starting the agent", e))?;
    record(
        Action {
            name: "agent",
            state: parse_state(&out.stdout),
            detail: match supervisor {
                "systemd" => format!("systemd unit `{UNIT}`"),
                _ => "kept by `hoist agent keep`, log in `/var/lib/hoist/agent.log`".into(),
            },
        },
        &mut actions,
    );

    let hello = wait_for_agent(remote).await?;
    Ok(SetupReport {
        host,
        actions,
        version,
        supervisor,
        agent_pid: hello.pid,
        proxy: hello.proxy,
    })
}

/// The local `hoist-shim` must be the shim of the `hoist` being installed: the agent only
/// uses a shim that says its own version, and would silently fall back to the big one.
async fn check_shim_version(
    hoist: &std::path::Path,
    shim: &std::path::Path,
) -> Result<(), SetupError> {
    let version = |path: &std::path::Path| {
        let path = path.to_path_buf();
        async move {
            tokio::process::Command::new(&path)
                .arg("--version")
                .env_clear()
                .stdin(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .map_err(|source| SetupError::ReadBinary { path, source })
        }
    };
    let hoist_version = version(hoist).await?;
    let found = version(shim).await?;
    // `hoist X.Y.Z` -> `hoist-shim X.Y.Z`.
    let expected = format!(
        "hoist-shim {}",
        hoist_version.split_whitespace().nth(1).unwrap_or_default()
    );
    if found != expected {
        return Err(SetupError::ShimVersion {
            shim: shim.to_path_buf(),
            hoist: hoist.to_path_buf(),
            found,
            expected,
        });
    }
    Ok(())
}

/// Polls `GET /v1/hello` through ssh until the agent answers or the deadline passes.
async fn wait_for_agent(remote: &Remote) -> Result<Hello, SetupError> {
    let client = remote.client();
    let deadline = tokio::time::Instant::now() + ANSWER_DEADLINE;
    loop {
        match client.get::<Hello>("/v1/hello").await {
            Ok(hello) => return Ok(hello),
            Err(e) => {
                // A transport failure (a changed key, an unreachable host) will not heal.
                if let Some(ssh) = remote.client_error(&e) {
                    if !matches!(ssh, SshError::Remote { .. }) {
                        return Err(ssh.into());
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(SetupError::NoAnswer {
                        host: remote.name.clone(),
                        detail: e.to_string(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The unit: the agent restarted when it dies; `KillMode=process` so that stopping or
/// restarting the agent leaves the proxy and the instances serving.
fn systemd_unit() -> String {
    format!(
        "[Unit]\nDescription=hoist agent\nAfter=network-online.target\nWants=network-online.target\n\n\
         [Service]\nExecStart={REMOTE_BIN} agent\nRestart=always\nRestartSec=1\nKillMode=process\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

fn state(changed: bool) -> ActionState {
    if changed {
        ActionState::Changed
    } else {
        ActionState::Unchanged
    }
}

/// A step script's last line: `changed` or `unchanged`.
fn parse_state(stdout: &[u8]) -> ActionState {
    let text = String::from_utf8_lossy(stdout);
    state(text.lines().last().map(str::trim) == Some("changed"))
}

/// The names `useradd` accepts for a system user, without surprises in a shell.
fn valid_user(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'_'))
        && name.len() <= 32
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'))
}

/// The running binary, which setup installs on hosts.
pub fn current_binary() -> std::io::Result<PathBuf> {
    std::env::current_exe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names() {
        assert!(valid_user("hoist"));
        assert!(valid_user("_app-1"));
        assert!(!valid_user("Root"));
        assert!(!valid_user("a b"));
        assert!(!valid_user("-x"));
        assert!(!valid_user(""));
    }

    #[test]
    fn states() {
        assert_eq!(parse_state(b"changed\n"), ActionState::Changed);
        assert_eq!(parse_state(b"unchanged\n"), ActionState::Unchanged);
    }

    #[test]
    fn the_unit_keeps_instances_on_restart() {
        assert!(systemd_unit().contains("KillMode=process"));
        assert!(systemd_unit().contains(&format!("ExecStart={REMOTE_BIN} agent\n")));
    }
}
