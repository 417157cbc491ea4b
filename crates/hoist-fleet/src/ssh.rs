//! One host reached through the system's OpenSSH: the one place that builds an `ssh`
//! argv, so every connection gets the same safe options (batch mode, no agent or port
//! forwarding, strict host keys, one multiplexed master per host), and the one place that
//! turns ssh's stderr into errors the user can act on. It never disables host-key
//! checking and never runs anything on a host but the commands its callers pass.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use hoist_client::{Client, ClientError};
use hoist_core::spec::{HostSpec, SshSpec};
use tokio::io::AsyncWriteExt;

/// Where `hoist setup` installs the binary on every host.
pub const REMOTE_BIN: &str = "/usr/local/bin/hoist";

/// The local OpenSSH client, found on `PATH`.
const SSH: &str = "ssh";

/// Whether a host key not yet in known_hosts may be accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeys {
    /// Only known keys (every command but `hoist setup`).
    Strict,
    /// Trust on first use: a new key is recorded; a changed one is still refused.
    AcceptNew,
}

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("the host key of `{host}` has changed: it now offers `{fingerprint}`; nothing was run on it")]
    HostKeyChanged { host: String, fingerprint: String },
    #[error("`{host}` is not a known host: its key is not in known_hosts")]
    UnknownHostKey { host: String },
    #[error("cannot reach `{host}`: {detail}")]
    Unreachable { host: String, detail: String },
    #[error("`{host}` refused the ssh key")]
    AuthFailed { host: String },
    #[error("a command failed on `{host}`{}: {}", status.map(|s| format!(" with status {s}")).unwrap_or_default(), last_line(stderr))]
    Remote {
        host: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("host `{host}` has no `ssh` address")]
    NoAddress { host: String },
    #[error("cannot run `ssh` for `{host}`")]
    Io {
        host: String,
        source: std::io::Error,
    },
}

impl SshError {
    pub fn hint(&self) -> Option<String> {
        match self {
            SshError::HostKeyChanged { host, .. } => Some(format!(
                "if `{host}` was reinstalled, check the new key out of band, remove the old one with `ssh-keygen -R ADDRESS` (add `-f FILE` for the known_hosts your ssh_config names), then run `hoist setup {host}`; otherwise the connection may be intercepted"
            )),
            SshError::UnknownHostKey { host } => Some(format!(
                "run `hoist setup {host}` to accept its key (check its fingerprint first)"
            )),
            SshError::Unreachable { .. } => {
                Some("check the address, the network, and that sshd runs on the host".into())
            }
            SshError::AuthFailed { .. } => Some(
                "check `[ssh] identity` in the app file and the host's authorized_keys".into(),
            ),
            SshError::NoAddress { host } => Some(format!(
                "add `ssh = \"user@address\"` to the `[[hosts]]` entry of `{host}`"
            )),
            SshError::Io { .. } => Some("install the OpenSSH client (`ssh`)".into()),
            SshError::Remote { .. } => None,
        }
    }

    /// The host the error is about.
    pub fn host(&self) -> &str {
        match self {
            SshError::HostKeyChanged { host, .. }
            | SshError::UnknownHostKey { host }
            | SshError::Unreachable { host, .. }
            | SshError::AuthFailed { host }
            | SshError::Remote { host, .. }
            | SshError::NoAddress { host }
            | SshError::Io { host, .. } => host,
        }
    }
}

fn last_line(stderr: &str) -> &str {
    stderr
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("no error output")
}

/// One host: its name in the app file and the ssh argv that reaches it.
#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    /// `user@host` as ssh takes it (the port goes in `-p`).
    pub dest: String,
    /// Every option before the destination.
    options: Vec<OsString>,
}

impl Remote {
    /// `base` is the app file's directory, for relative `[ssh] config` and `identity`;
    /// `control_dir` holds the master sockets (created 0700 when missing; keep its path
    /// short: a socket path is limited to about 100 bytes).
    pub fn new(
        host: &HostSpec,
        ssh: &SshSpec,
        base: &Path,
        control_dir: &Path,
        keys: HostKeys,
    ) -> Result<Remote, SshError> {
        let Some(addr) = &host.ssh else {
            return Err(SshError::NoAddress {
                host: host.name.clone(),
            });
        };
        create_private_dir(control_dir).map_err(|source| SshError::Io {
            host: host.name.clone(),
            source,
        })?;
        let mut options: Vec<OsString> = Vec::new();
        if let Some(config) = &ssh.config {
            options.push("-F".into());
            options.push(base.join(config).into_os_string());
        }
        if let Some(identity) = &ssh.identity {
            options.push("-i".into());
            options.push(base.join(identity).into_os_string());
        }
        if let Some(port) = addr.port.or(ssh.port) {
            options.push("-p".into());
            options.push(port.to_string().into());
        }
        let strict = match keys {
            HostKeys::Strict => "yes",
            HostKeys::AcceptNew => "accept-new",
        };
        let mut control_path = OsString::from("ControlPath=");
        control_path.push(control_dir.join("%C"));
        for opt in [
            OsString::from("BatchMode=yes"),
            "ForwardAgent=no".into(),
            "ClearAllForwardings=yes".into(),
            format!("StrictHostKeyChecking={strict}").into(),
            "ControlMaster=auto".into(),
            control_path,
            "ControlPersist=60".into(),
            "ConnectTimeout=10".into(),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=3".into(),
        ] {
            options.push("-o".into());
            options.push(opt);
        }
        // On the command line an IPv6 address goes bare (the port is in `-p`).
        let dest = match &addr.user {
            Some(user) => format!("{user}@{}", addr.host),
            None => addr.host.clone(),
        };
        Ok(Remote {
            name: host.name.clone(),
            dest,
            options,
        })
    }

    /// The full ssh argv (without the program) for a remote command.
    pub fn ssh_args(&self, remote_argv: &[&str]) -> Vec<OsString> {
        let mut args = self.options.clone();
        // `--`: nothing after it is read as an ssh option.
        args.push("--".into());
        args.push(self.dest.clone().into());
        if !remote_argv.is_empty() {
            // The remote side runs this through the user's shell: quote every word.
            let line: Vec<String> = remote_argv.iter().map(|a| shell_quote(a)).collect();
            args.push(line.join(" ").into());
        }
        args
    }

    /// `ssh … HOST 'argv…'`, stdin closed unless the caller opens it, killed on drop.
    pub fn ssh_command(&self, remote_argv: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(SSH);
        cmd.args(self.ssh_args(remote_argv))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// `ssh -N -L 127.0.0.1:LOCAL:TARGET HOST` for `hoist dashboard`: the one forward
    /// hoist ever opens, scoped to the dashboard's port, on a connection of its own (not
    /// the shared master, so it ends with this process). Killed on drop.
    pub fn forward_command(&self, local: u16, target: &str) -> tokio::process::Command {
        let mut args: Vec<OsString> = Vec::new();
        let mut it = self.options.iter();
        while let Some(opt) = it.next() {
            if opt == "-o" {
                let Some(value) = it.next() else { break };
                let v = value.to_string_lossy();
                let shared = [
                    "ClearAllForwardings=",
                    "ControlMaster=",
                    "ControlPath=",
                    "ControlPersist=",
                ];
                if shared.iter().any(|p| v.starts_with(p)) {
                    continue;
                }
                args.push(opt.clone());
                args.push(value.clone());
            } else {
                args.push(opt.clone());
            }
        }
        for opt in [
            "ControlMaster=no",
            "ControlPath=none",
            "ExitOnForwardFailure=yes",
        ] {
            args.push("-o".into());
            args.push(opt.into());
        }
        args.push("-N".into());
        args.push("-L".into());
        args.push(format!("127.0.0.1:{local}:{target}").into());
        args.push("--".into());
        args.push(self.dest.clone().into());
        let mut cmd = tokio::process::Command::new(SSH);
        cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }

    /// An agent client whose every request runs `ssh … HOST hoist agent connect`.
    pub fn client(&self) -> Client {
        Client::over_command(SSH, self.ssh_args(&[REMOTE_BIN, "agent", "connect"]))
    }

    /// Connects (starting the multiplexed master, which then persists for a minute) and
    /// checks the host answers; the error says why it does not.
    pub async fn open(&self) -> Result<(), SshError> {
        self.run(&["true"], None).await.map(|_| ())
    }

    /// The address ssh connects to for this host (`ssh -G`'s `hostname`: an alias of the
    /// ssh config resolved as ssh resolves it; a DNS name is left a name). `None` when
    /// ssh cannot say (it is then the host part of `ssh`, as written).
    pub async fn resolved_host(&self) -> Option<String> {
        let mut args = self.options.clone();
        args.extend(["-G".into(), "--".into(), self.dest.clone().into()]);
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::process::Command::new(SSH)
                .args(args)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .ok()?
        .ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("hostname "))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    /// Closes this host's master connection, if one runs (best effort).
    pub async fn close(&self) {
        let mut args = self.options.clone();
        args.extend([
            "-O".into(),
            "exit".into(),
            "--".into(),
            self.dest.clone().into(),
        ]);
        let _ = tokio::process::Command::new(SSH)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status()
            .await;
    }

    /// Runs a command on the host; `stdin` is fed to it (and streamed, so a large input
    /// does not wait for the answer). A non-zero exit is an error carrying its stderr.
    pub async fn run(
        &self,
        remote_argv: &[&str],
        stdin: Option<Vec<u8>>,
    ) -> Result<Output, SshError> {
        let mut cmd = self.ssh_command(remote_argv);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        tracing::debug!(host = %self.name, argv = ?remote_argv, "ssh");
        let io = |source| SshError::Io {
            host: self.name.clone(),
            source,
        };
        let mut child = cmd.spawn().map_err(io)?;
        let feeder = match (stdin, child.stdin.take()) {
            (Some(bytes), Some(mut pipe)) => Some(tokio::spawn(async move {
                // A broken pipe means the remote side ended early; its status says why.
                let _ = pipe.write_all(&bytes).await;
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };
        let output = child.wait_with_output().await.map_err(io)?;
        if let Some(feeder) = feeder {
            let _ = feeder.await;
        }
        if output.status.success() {
            return Ok(output);
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // 255 is ssh's own failure; anything else is the remote command's status.
        Err(match output.status.code() {
            Some(255) | None => match self.classify(&stderr) {
                SshError::Remote { host, stderr, .. } => SshError::Remote {
                    host,
                    status: output.status.code(),
                    stderr,
                },
                other => other,
            },
            Some(status) => SshError::Remote {
                host: self.name.clone(),
                status: Some(status),
                stderr,
            },
        })
    }

    /// What ssh's stderr says went wrong (for a [`ClientError::Command`] too).
    pub fn classify(&self, stderr: &str) -> SshError {
        classify(&self.name, stderr)
    }

    /// An agent client's error as an ssh error when the bridge failed, else `None`.
    pub fn client_error(&self, err: &ClientError) -> Option<SshError> {
        match err {
            ClientError::Command { status, stderr, .. } => Some(match self.classify(stderr) {
                SshError::Remote { host, stderr, .. } => SshError::Remote {
                    host,
                    status: *status,
                    stderr,
                },
                other => other,
            }),
            _ => None,
        }
    }
}

/// Reads OpenSSH's messages (they are stable across versions and locales: ssh does not
/// translate them).
pub fn classify(host: &str, stderr: &str) -> SshError {
    let host = host.to_string();
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("has changed and you have requested strict checking")
    {
        let fingerprint = stderr
            .split_whitespace()
            .find(|w| w.starts_with("SHA256:") || w.starts_with("MD5:"))
            .map(|w| w.trim_end_matches('.').to_string())
            .unwrap_or_else(|| "unknown".into());
        return SshError::HostKeyChanged { host, fingerprint };
    }
    if stderr.contains("Host key verification failed") || stderr.contains("host key is known for") {
        return SshError::UnknownHostKey { host };
    }
    if stderr.contains("Permission denied (") || stderr.contains("Too many authentication failures")
    {
        return SshError::AuthFailed { host };
    }
    const UNREACHABLE: [&str; 11] = [
        "Connection timed out",
        "Operation timed out",
        "No route to host",
        "Connection refused",
        "Could not resolve hostname",
        "Network is unreachable",
        "Connection closed by",
        "Connection reset",
        "Timeout, server",
        "kex_exchange_identification",
        "Broken pipe",
    ];
    if let Some(line) = stderr
        .lines()
        .find(|l| UNREACHABLE.iter().any(|p| l.contains(p)))
    {
        return SshError::Unreachable {
            host,
            detail: line.trim().to_string(),
        };
    }
    SshError::Remote {
        host,
        status: None,
        stderr: stderr.to_string(),
    }
}

/// `word` quoted for a POSIX shell (left bare when it is plainly safe).
pub fn shell_quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=:,@%+".contains(&b));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private(dir)
}

/// Refuses a directory another user could use to plant or watch a socket: it must be a
/// real directory (not a symlink), owned by this user, with no access for anyone else.
pub fn check_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    let refuse = |why: String| {
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("the ssh control directory `{}` {why}", dir.display()),
        ))
    };
    if !meta.file_type().is_dir() {
        return refuse("is not a directory".into());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return refuse(format!("belongs to uid {}, not {me}", meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return refuse(format!("has mode {:o}, not 700", meta.mode() & 0o777));
    }
    Ok(())
}

/// The directory of ssh's master sockets: private to this user (0700, owned by them,
/// checked every time) under a name nobody can guess, and shared by the user's commands,
/// so that a master persists between them (`ControlPersist`): `hoist plan` then `hoist
/// deploy` pay the handshakes once. `HOIST_SSH_CONTROL_DIR` names one (made when missing);
/// else its path is remembered in `$XDG_RUNTIME_DIR/hoist/ssh-control` (or
/// `~/.cache/hoist/ssh-control`), and a new one is made in the temp dir whenever that
/// names none, or one that fails the checks. `None` for the pointer: a directory for
/// this command alone.
pub fn control_dir() -> std::io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HOIST_SSH_CONTROL_DIR") {
        let dir = PathBuf::from(dir);
        create_private_dir(&dir)?;
        return Ok(dir);
    }
    let pointer = std::env::var_os("XDG_RUNTIME_DIR")
        .map(|d| PathBuf::from(d).join("hoist"))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hoist")))
        .map(|d| d.join("ssh-control"));
    control_dir_in(pointer.as_deref(), &std::env::temp_dir())
}

/// [`control_dir`] with its pointer file and temp dir given.
pub fn control_dir_in(pointer: Option<&Path>, tmp: &Path) -> std::io::Result<PathBuf> {
    if let Some(p) = pointer {
        if let Ok(text) = std::fs::read_to_string(p) {
            let dir = PathBuf::from(text.trim_end());
            if dir.is_absolute() && check_private(&dir).is_ok() {
                return Ok(dir);
            }
        }
    }
    // 0700 with a random name, made atomically (mkdtemp): nothing can be there before it.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("hoist-ssh-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(tmp)?
        .keep();
    check_private(&dir)?;
    if let Some(p) = pointer {
        if let Some(parent) = p.parent() {
            create_private_dir(parent)?;
        }
        let tmp = p.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, dir.as_os_str().as_encoded_bytes())?;
        std::fs::rename(&tmp, p)?;
    }
    Ok(dir)
}

/// Ends every master whose socket is in `control_dir` and removes the directory, so a
/// command leaves no ssh process or socket behind (a master would otherwise linger for
/// `ControlPersist`). Nothing to do when the command reached no host.
pub fn close_masters(control_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(control_dir) else {
        return;
    };
    for socket in entries.flatten().map(|e| e.path()) {
        // The destination is ignored when the control socket is named.
        let _ = std::process::Command::new(SSH)
            .arg("-o")
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-O", "exit", "--", "hoist-master"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = std::fs::remove_dir_all(control_dir);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hoist_core::spec::SshAddr;

    fn host(addr: &str) -> HostSpec {
        HostSpec {
            files: None,
            name: "web1".into(),
            ssh: Some(SshAddr::parse(addr).unwrap()),
            roles: vec![],
            env: Default::default(),
            address: None,
        }
    }

    fn argv(remote: &Remote) -> Vec<String> {
        remote
            .ssh_args(&["echo", "it's"])
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_dashboard_forward_is_the_one_port_on_its_own_connection() {
        let dir = tempfile::tempdir().unwrap();
        let r = Remote::new(
            &host("deploy@10.0.0.5"),
            &SshSpec::default(),
            Path::new("/app"),
            &dir.path().join("ctl"),
            HostKeys::Strict,
        )
        .unwrap();
        let cmd = r.forward_command(4000, "127.0.0.1:8421");
        let a: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = a.join(" ");
        for want in [
            "-o BatchMode=yes",
            "-o ForwardAgent=no",
            "-o StrictHostKeyChecking=yes",
            "-o ControlMaster=no",
            "-o ControlPath=none",
            "-o ExitOnForwardFailure=yes",
            "-N -L 127.0.0.1:4000:127.0.0.1:8421 -- deploy@10.0.0.5",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        for never in [
            "ClearAllForwardings",
            "ControlMaster=auto",
            "ControlPersist",
            "-R",
            "-D",
        ] {
            assert!(!joined.contains(never), "{never} in {joined}");
        }
        assert_eq!(a.iter().filter(|x| *x == "-L").count(), 1);
    }

    #[test]
    fn every_argv_is_batch_strict_and_unforwarded() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = SshSpec {
            config: Some("ssh/config".into()),
            identity: Some("/keys/id".into()),
            port: Some(2200),
        };
        let r = Remote::new(
            &host("deploy@10.0.0.5"),
            &ssh,
            Path::new("/app"),
            &dir.path().join("ctl"),
            HostKeys::Strict,
        )
        .unwrap();
        let a = argv(&r);
        let joined = a.join(" ");
        for want in [
            "-F /app/ssh/config",
            "-i /keys/id",
            "-p 2200",
            "-o BatchMode=yes",
            "-o ForwardAgent=no",
            "-o ClearAllForwardings=yes",
            "-o StrictHostKeyChecking=yes",
            "-o ControlMaster=auto",
            "-o ControlPersist=60",
            "-o ConnectTimeout=10",
            "-o ServerAliveInterval=5",
            "-o ServerAliveCountMax=3",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        assert!(joined.contains(&format!("ControlPath={}/ctl/%C", dir.path().display())));
        assert!(!joined.contains("/dev/null") && !joined.contains("=no -o Strict"));
        assert!(!joined.contains("StrictHostKeyChecking=no"));
        assert_eq!(
            &a[a.len() - 3..],
            ["--", "deploy@10.0.0.5", r"echo 'it'\''s'"]
        );
        assert_eq!(r.client().describe(), "ssh deploy@10.0.0.5");
    }

    #[test]
    fn the_hosts_port_wins_and_accept_new_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = SshSpec {
            port: Some(2200),
            ..Default::default()
        };
        let r = Remote::new(
            &host("h:2222"),
            &ssh,
            Path::new("/"),
            &dir.path().join("ctl"),
            HostKeys::AcceptNew,
        )
        .unwrap();
        let joined = argv(&r).join(" ");
        assert!(
            joined.contains("-p 2222") && !joined.contains("2200"),
            "{joined}"
        );
        assert!(joined.contains("StrictHostKeyChecking=accept-new"));
    }

    /// The address a peer is reached at is the one ssh connects to: an alias of the ssh
    /// config (`[ssh] config`, relative to the app file) resolves to its `HostName`,
    /// through the real `ssh -G`; an address or name that no block renames stays as is.
    #[tokio::test]
    async fn an_ssh_config_alias_resolves_to_its_hostname() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ssh_config"),
            "Host web1\n  HostName 10.0.0.5\n  User deploy\nHost *\n  IdentitiesOnly yes\n",
        )
        .unwrap();
        let ssh = SshSpec {
            config: Some("ssh_config".into()),
            ..Default::default()
        };
        let resolved = |addr: &'static str| {
            let r = Remote::new(
                &host(addr),
                &ssh,
                dir.path(),
                &dir.path().join("ctl"),
                HostKeys::Strict,
            )
            .unwrap();
            async move { r.resolved_host().await }
        };
        assert_eq!(resolved("web1").await.as_deref(), Some("10.0.0.5"));
        assert_eq!(
            resolved("root@web1:2222").await.as_deref(),
            Some("10.0.0.5")
        );
        assert_eq!(resolved("10.0.0.7").await.as_deref(), Some("10.0.0.7"));
        assert_eq!(
            resolved("db.example.com").await.as_deref(),
            Some("db.example.com")
        );
    }

    #[test]
    fn ssh_messages_are_classified() {
        let changed = "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n\
            @    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n\
            The fingerprint for the ED25519 key sent by the remote host is\n\
            SHA256:abcDEF123.\n\
            Host key for 10.0.0.5 has changed and you have requested strict checking.\n\
            Host key verification failed.";
        match classify("web1", changed) {
            SshError::HostKeyChanged { host, fingerprint } => {
                assert_eq!(host, "web1");
                assert_eq!(fingerprint, "SHA256:abcDEF123");
            }
            other => panic!("{other:?}"),
        }
        let unknown = "No ED25519 host key is known for 10.0.0.5 and you have requested strict checking.\nHost key verification failed.";
        assert!(matches!(
            classify("h", unknown),
            SshError::UnknownHostKey { .. }
        ));
        assert!(matches!(
            classify("h", "root@10.0.0.5: Permission denied (publickey)."),
            SshError::AuthFailed { .. }
        ));
        assert!(matches!(
            classify(
                "h",
                "ssh: connect to host 10.0.0.5 port 22: Connection timed out"
            ),
            SshError::Unreachable { .. }
        ));
        assert!(matches!(
            classify("h", "cat: /x: No such file or directory"),
            SshError::Remote { .. }
        ));
    }

    #[test]
    fn the_control_dir_is_private_unguessable_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let pointer = home.path().join("state/ssh-control");
        let first = control_dir_in(Some(&pointer), tmp.path()).unwrap();
        let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let name = first.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("hoist-ssh-") && name.len() > "hoist-ssh-".len() + 4);
        // The next command finds the same one, so its masters are reused.
        assert_eq!(control_dir_in(Some(&pointer), tmp.path()).unwrap(), first);
        // Opened up to others: never used again; a new private one replaces it.
        std::fs::set_permissions(&first, std::fs::Permissions::from_mode(0o755)).unwrap();
        let second = control_dir_in(Some(&pointer), tmp.path()).unwrap();
        assert_ne!(second, first);
        // A symlink planted in its place, or a directory of another user: refused too.
        std::fs::remove_dir(&second).unwrap();
        std::os::unix::fs::symlink(tmp.path(), &second).unwrap();
        assert!(check_private(&second).is_err());
        assert_ne!(control_dir_in(Some(&pointer), tmp.path()).unwrap(), second);
        if nix::unistd::geteuid().is_root() {
            let theirs = tmp.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = check_private(&theirs).unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
            std::fs::write(&pointer, theirs.as_os_str().as_encoded_bytes()).unwrap();
            assert_ne!(control_dir_in(Some(&pointer), tmp.path()).unwrap(), theirs);
        }
    }

    #[test]
    fn quoting_survives_a_shell() {
        for word in ["plain", "", "a b", "it's", "$(id)", "a\nb", "*"] {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", shell_quote(word)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), word);
        }
    }
}
