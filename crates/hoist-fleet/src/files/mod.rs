//! Files hosts (`mode = "files"` in `[[hosts]]`): shared hosting where hoist may only run
//! short commands over ssh — no agent, no daemon, no root. Everything is done with POSIX
//! `sh`, `tar`, `mkdir`, `ln`, `mv` (scripts in [`script`]) through the same multiplexed
//! ssh master as agent hosts ([`Remote`]); the decisions are made here, in the CLI.
//!
//! Layout beside the served path `DIR/NAME` (a symlink once hoist owns it):
//! `DIR/NAME.hoist/` holds `blobs/HASH-MODE` (read-only files, one per content and mode),
//! `releases/ID/` (trees of hardlinks to the blobs), `history.jsonl` (hash-chained like
//! the agent's), `lock` (a symlink naming its token, expiry and holder), `secrets.json`
//! (0600), `data/` (the app's persistent files) and `backups/NAME/`. The served path is a
//! relative symlink to `NAME.hoist/releases/ID`, switched by renaming a new link over it.

pub mod script;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use hoist_artifact::{EntryKind, Limits, Manifest};
use hoist_core::spec::{AppSpec, BackupSource, FilesHost, HostSpec, SshSpec};
use hoist_protocol::agent::{HistoryRecord, ReleaseInfo};

use crate::ssh::{HostKeys, Remote, SshError};

/// Exit status of a script refused by the lock.
const LOCKED: i32 = 75;
/// How long a deploy lock lives after its last renewal (every step renews it);
/// `HOIST_LEASE_TTL_MS` shortens it, as for agent hosts' leases.
const LOCK_TTL: Duration = Duration::from_secs(120);
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One files host of the app file.
#[derive(Debug, Clone)]
pub struct FilesTarget {
    pub name: String,
    pub remote: Remote,
    pub host: FilesHost,
    /// The token of the lock held right now, for a caller interrupted mid-deploy to give
    /// back with [`FilesTarget::release_held`] (the deploy's future is dropped then).
    held: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("host `{host}`: the deploy lock is held: {holder}")]
    Locked { host: String, holder: String },
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error("host `{host}`: {message}")]
    Host { host: String, message: String },
    #[error("{0}")]
    Local(String),
}

/// The files hosts of the app file (none when it has none).
pub fn targets(
    spec: &AppSpec,
    base: &Path,
    control: &Path,
    keys: HostKeys,
) -> Result<Vec<FilesTarget>, SshError> {
    spec.hosts
        .iter()
        .filter_map(|h| h.files.clone().map(|f| (h, f)))
        .map(|(h, host)| new_target(h, host, &spec.ssh, base, control, keys))
        .collect()
}

fn new_target(
    h: &HostSpec,
    host: FilesHost,
    ssh: &SshSpec,
    base: &Path,
    control: &Path,
    keys: HostKeys,
) -> Result<FilesTarget, SshError> {
    Ok(FilesTarget {
        name: h.name.clone(),
        remote: Remote::new(h, ssh, base, control, keys)?,
        host,
        held: Default::default(),
    })
}

/// How a deploy or rollback on a files host ended.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub host: String,
    pub app: String,
    /// `succeeded`, `unchanged` or `failed` (the old release serves).
    pub result: String,
    pub release: Option<String>,
    pub previous: Option<String>,
    pub reason: Option<String>,
    pub blobs_sent: usize,
    pub bytes_sent: u64,
    /// A plain directory that stood at the served path, moved there (never deleted).
    pub moved_aside: Option<String>,
    pub pruned: Vec<String>,
    pub duration_ms: u64,
}

/// What `hoist status` shows for a files host.
#[derive(Debug, Clone, Serialize)]
pub struct FilesStatus {
    pub host: String,
    pub path: String,
    /// `link` (hoist's), `dir` (not yet deployed by hoist), `none`, `other`.
    pub served: String,
    pub release: Option<String>,
    pub releases: Vec<String>,
    /// The lock's holder and seconds left, when one lives.
    pub lock: Option<String>,
}

/// What the host holds, read in one ssh call.
#[derive(Debug, Default)]
struct Inventory {
    kind: String,
    target: Option<String>,
    lock: Option<String>,
    now: i64,
    releases: Vec<String>,
    blobs: BTreeSet<String>,
    asides: Vec<String>,
}

impl Inventory {
    /// The release the served link points at (its last component).
    fn current(&self) -> Option<String> {
        self.target.as_deref().map(|t| {
            t.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or(t)
                .to_string()
        })
    }

    fn live_lock(&self) -> Option<String> {
        let info = self.lock.as_deref()?;
        let mut parts = info.splitn(4, ':');
        let (_, _, exp, holder) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let left = exp.parse::<i64>().ok()? - self.now;
        (left > 0).then(|| format!("{holder} ({left}s left)"))
    }
}

/// Progress lines for the CLI to show.
pub type OnStep<'a> = &'a (dyn Fn(&str) + Sync);

impl FilesTarget {
    /// `(D, B)`: the served path's directory and name.
    fn parts(&self) -> (String, String) {
        let p = self.host.path.trim_end_matches('/');
        match p.rsplit_once('/') {
            Some(("", b)) => ("/".into(), b.into()),
            Some((d, b)) => (d.into(), b.into()),
            None => (".".into(), p.into()),
        }
    }

    /// Runs `body` with `vars` (and `D`, `B`, the prelude) as `sh -c`; stdin fed if given.
    async fn sh(
        &self,
        vars: &[(&str, &str)],
        body: &str,
        stdin: Option<Vec<u8>>,
    ) -> Result<String, SshError> {
        let (d, b) = self.parts();
        let mut all: Vec<(&str, &str)> = vec![("D", &d), ("B", &b)];
        all.extend_from_slice(vars);
        let text = format!("{}{}{}", script::vars(&all), script::PRELUDE, body);
        let out = self.remote.run(&["sh", "-c", &text], stdin).await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `sh -s` with the whole script on stdin (for long generated scripts).
    async fn sh_stdin(&self, vars: &[(&str, &str)], body: &str) -> Result<String, SshError> {
        let (d, b) = self.parts();
        let mut all: Vec<(&str, &str)> = vec![("D", &d), ("B", &b)];
        all.extend_from_slice(vars);
        let text = format!("{}{}{}", script::vars(&all), script::PRELUDE, body);
        let out = self
            .remote
            .run(&["sh", "-s"], Some(text.into_bytes()))
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn inventory(&self) -> Result<Inventory, SshError> {
        let out = self.sh(&[], script::INVENTORY, None).await?;
        let mut inv = Inventory::default();
        for line in out.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            match k {
                "kind" => inv.kind = v.to_string(),
                "target" => inv.target = Some(v.to_string()),
                "lock" if !v.is_empty() => inv.lock = Some(v.to_string()),
                "now" => inv.now = v.parse().unwrap_or(0),
                "release" => inv.releases.push(v.to_string()),
                "blob" => {
                    inv.blobs.insert(v.to_string());
                }
                "aside" => inv.asides.push(v.to_string()),
                _ => {}
            }
        }
        Ok(inv)
    }

    fn host_error(&self, message: impl Into<String>) -> FilesError {
        FilesError::Host {
            host: self.name.clone(),
            message: message.into(),
        }
    }

    /// Takes the deploy lock; a live one is refused, naming its holder.
    async fn lock(&self, actor: &str) -> Result<Lock, FilesError> {
        let token = random_token();
        let holder: String = actor
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.@".contains(*c))
            .collect();
        let ttl = lock_ttl().as_secs().max(1).to_string();
        let lock = Lock { token, holder, ttl };
        match self.sh(&lock.vars(), script::LOCK, None).await {
            Ok(_) => {
                self.set_held(Some(lock.token.clone()));
                Ok(lock)
            }
            Err(SshError::Remote {
                status: Some(LOCKED),
                stderr,
                ..
            }) => Err(FilesError::Locked {
                host: self.name.clone(),
                holder: stderr.trim().to_string(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    async fn unlock(&self, lock: &Lock) {
        if let Err(e) = self.sh(&lock.vars(), script::UNLOCK, None).await {
            tracing::warn!(host = %self.name, error = %e, "cannot release the files host's lock");
        }
        self.set_held(None);
    }

    fn set_held(&self, token: Option<String>) {
        *self.held.lock().unwrap_or_else(|p| p.into_inner()) = token;
    }

    /// Gives back the lock an interrupted operation holds (its pending link with it), so
    /// the next deploy is not refused until it expires; a switch still running on the
    /// host then finds the lock gone and does not rename.
    pub async fn release_held(&self) {
        let token = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(token) = token {
            let lock = Lock {
                token,
                holder: String::new(),
                ttl: "1".into(),
            };
            self.unlock(&lock).await;
        }
    }

    /// `hoist setup` of a files host: the state directory, and what the host has.
    pub async fn setup(&self) -> Result<Vec<(String, String)>, FilesError> {
        let out = self.sh(&[], script::SETUP, None).await?;
        let mut steps = Vec::new();
        let mut missing = Vec::new();
        for line in out.lines() {
            if let Some((k, v)) = line.split_once('=') {
                if k == "missing" {
                    missing.push(v.to_string());
                }
                steps.push((k.to_string(), v.to_string()));
            }
        }
        if !missing.is_empty() {
            return Err(self.host_error(format!(
                "the host lacks {} (a files host needs POSIX sh, tar, mkdir, ln, mv, readlink, find and an atomic rename: `mv -T` or python3)",
                missing.join(", ")
            )));
        }
        Ok(steps)
    }

    /// Deploys `artifact` (already built and verified) to this host.
    pub async fn deploy(
        &self,
        spec: &AppSpec,
        artifact: &Path,
        actor: &str,
        on: OnStep<'_>,
    ) -> Result<Outcome, FilesError> {
        let started = Instant::now();
        let manifest = hoist_artifact::read_manifest(artifact, &Limits::default())
            .map_err(|e| FilesError::Local(format!("artifact refused: {e}")))?;
        let release = manifest.release().as_str().to_string();
        let lock = self.lock(actor).await?;
        on("locked");
        let r = self
            .deploy_locked(spec, artifact, &manifest, &release, actor, &lock, on)
            .await;
        // A failure to unlock leaves the lock to expire by itself.
        self.unlock(&lock).await;
        let mut o = r?;
        o.duration_ms = started.elapsed().as_millis() as u64;
        Ok(o)
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy_locked(
        &self,
        spec: &AppSpec,
        artifact: &Path,
        manifest: &Manifest,
        release: &str,
        actor: &str,
        lock: &Lock,
        on: OnStep<'_>,
    ) -> Result<Outcome, FilesError> {
        let started = Instant::now();
        let inv = self.inventory().await?;
        let mut outcome = Outcome {
            host: self.name.clone(),
            app: spec.app.clone(),
            result: "succeeded".into(),
            release: Some(release.to_string()),
            previous: inv.current(),
            reason: None,
            blobs_sent: 0,
            bytes_sent: 0,
            moved_aside: None,
            pruned: Vec::new(),
            duration_ms: 0,
        };
        // The release the history last recorded as serving: a link already on `release`
        // without that record is a deploy cut after its switch, finished now (restart,
        // health, record) instead of being called unchanged.
        let recorded = self
            .history()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.result == "succeeded" && matches!(r.kind.as_str(), "deploy" | "rollback"))
            .and_then(|r| r.release);
        let (_, b) = self.parts();
        let switched_already = inv.kind == "link" && inv.current().as_deref() == Some(release);
        if switched_already && recorded.as_deref() == Some(release) {
            outcome.result = "unchanged".into();
            return Ok(outcome);
        }
        // Upload: the blobs (content and mode) the host lacks, as one tar.
        if !inv.releases.iter().any(|r| r == release) {
            let wanted = blob_names(manifest);
            let missing: Vec<(String, String)> = wanted
                .into_iter()
                .filter(|(name, _)| !inv.blobs.contains(name))
                .collect();
            if !missing.is_empty() {
                let (tar, bytes) = pack_blobs(artifact, &missing).await?;
                outcome.blobs_sent = missing.len();
                outcome.bytes_sent = bytes;
                self.sh(&lock.vars(), script::RECEIVE, Some(tar)).await?;
            }
            on(&format!(
                "uploaded {} files ({} bytes)",
                outcome.blobs_sent, outcome.bytes_sent
            ));
            self.sh_stdin(&lock.vars(), &materialise(manifest, release))
                .await?;
            on("unpacked");
        }
        // Backups before the switch.
        for (name, note) in self
            .take_backups(spec, lock, release, true)
            .await
            .map_err(|e| self.host_error(format!("the backup before the deploy failed: {e}")))?
        {
            on(&format!("backup `{name}`: {note}"));
        }
        // Switch.
        let target = format!("{b}.hoist/releases/{release}");
        let previous_target = if switched_already {
            on("the link already points at this release (an interrupted deploy): finishing it");
            recorded
                .as_deref()
                .filter(|r| inv.releases.iter().any(|x| x == r))
                .map(|r| format!("{b}.hoist/releases/{r}"))
        } else {
            // A failpoint for the tests of a cut: the host waits between making the new
            // link and renaming it over the served path.
            let pause = std::env::var("HOIST_FAILPOINT")
                .ok()
                .filter(|f| f == "files-switch")
                .map(|_| "10".to_string())
                .unwrap_or_default();
            let mut vars = lock.vars();
            vars.push(("T", &target));
            vars.push(("PAUSE", &pause));
            let out = self.sh(&vars, script::SWITCH, None).await?;
            outcome.moved_aside = kv(&out, "moved_aside");
            if let Some(a) = &outcome.moved_aside {
                on(&format!("moved the plain directory aside to {a}"));
            }
            on("switched");
            kv(&out, "previous").filter(|p| !p.is_empty())
        };
        outcome.previous = previous_target.as_deref().map(last_component);
        // Restart in the new release, then the health check.
        let failure = match self.restart(&target).await {
            Err(e) => Some(format!("the restart command failed: {e}")),
            Ok(()) => {
                on("restarted");
                self.health(spec).await.err()
            }
        };
        if let Some(reason) = failure {
            on(&format!("failed: {reason}; switching back"));
            let back = match &previous_target {
                Some(p) => {
                    let mut vars = lock.vars();
                    vars.push(("T", p));
                    vars.push(("PAUSE", ""));
                    let r = self.sh(&vars, script::SWITCH, None).await.map(|_| ());
                    match r {
                        Ok(()) => self.restart(p).await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                None => self
                    .sh(&lock.vars(), script::UNLINK, None)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
            };
            let reason = match back {
                Ok(()) => reason,
                Err(e) => format!("{reason}; switching back failed too: {e}"),
            };
            outcome.result = "failed".into();
            outcome.reason = Some(reason);
        }
        let kind = "deploy";
        self.record(lock, spec, kind, &outcome, actor, manifest, started)
            .await?;
        if outcome.result == "succeeded" {
            outcome.pruned = self
                .prune(
                    lock,
                    spec.deploy.keep_releases,
                    release,
                    outcome.previous.as_deref(),
                )
                .await?;
        }
        Ok(outcome)
    }

    /// Runs the restart command in `target` (relative to the served path's directory).
    async fn restart(&self, target: &str) -> Result<(), SshError> {
        let vars = [("R", target), ("CMD", self.host.restart.as_str())];
        self.sh(&vars, script::RESTART, None).await.map(|_| ())
    }

    /// The health URL until it answers 2xx (with `expect` in its body), within the
    /// deploy's `health_deadline`.
    async fn health(&self, spec: &AppSpec) -> Result<(), String> {
        let Some(url) = &self.host.health else {
            return Ok(());
        };
        let deadline = Instant::now() + spec.deploy.health_deadline;
        let mut last;
        loop {
            last = match http_get(url).await {
                Ok((status, body)) if (200..300).contains(&status) => match &self.host.expect {
                    Some(e) if !body.contains(e.as_str()) => {
                        format!("{url} answered {status} without `{e}`")
                    }
                    _ => return Ok(()),
                },
                Ok((status, _)) => format!("{url} answered {status}"),
                Err(e) => format!("{url}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy within {}s: {last}",
                    spec.deploy.health_deadline.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    async fn prune(
        &self,
        lock: &Lock,
        keep: u32,
        current: &str,
        previous: Option<&str>,
    ) -> Result<Vec<String>, SshError> {
        let keep = keep.max(1).to_string();
        let mut vars = lock.vars();
        vars.push(("KEEP", &keep));
        vars.push(("CUR", current));
        vars.push(("PREV", previous.unwrap_or("")));
        let out = self.sh(&vars, script::PRUNE, None).await?;
        Ok(out
            .lines()
            .filter_map(|l| l.strip_prefix("pruned="))
            .map(str::to_string)
            .collect())
    }

    /// Appends the operation to the host's hash-chained history.
    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        lock: &Lock,
        spec: &AppSpec,
        kind: &str,
        o: &Outcome,
        actor: &str,
        manifest: &Manifest,
        started: Instant,
    ) -> Result<(), FilesError> {
        let rec = HistoryRecord {
            seq: 0,
            at_ms: now_ms(),
            app: spec.app.clone(),
            kind: kind.into(),
            release: o.release.clone(),
            previous: o.previous.clone(),
            commit: manifest.build().commit.clone(),
            actor: actor.into(),
            result: o.result.clone(),
            duration_ms: started.elapsed().as_millis() as i64,
            reason: o.reason.clone(),
        };
        self.append(lock, rec).await
    }

    async fn append(&self, lock: &Lock, mut rec: HistoryRecord) -> Result<(), FilesError> {
        let last = self.sh(&lock.vars(), script::LAST, None).await?;
        let (seq, prev) = match last.trim() {
            "" => (1, GENESIS.to_string()),
            line => {
                let l: ChainLine = serde_json::from_str(line).map_err(|e| {
                    self.host_error(format!("the history's last line is unreadable: {e}"))
                })?;
                (l.seq + 1, l.hash)
            }
        };
        rec.seq = seq;
        let text = serde_json::to_string(&rec).map_err(|e| FilesError::Local(e.to_string()))?;
        let line = ChainLine {
            seq,
            hash: chain_hash(&prev, &text),
            prev,
            record: text,
        };
        let line = serde_json::to_string(&line).map_err(|e| FilesError::Local(e.to_string()))?;
        let mut vars = lock.vars();
        vars.push(("LINE", &line));
        self.sh(&vars, script::APPEND, None).await?;
        Ok(())
    }

    /// Switches back to `release` (the previous one when `None`), restarts and checks.
    pub async fn rollback(
        &self,
        spec: &AppSpec,
        release: Option<&str>,
        actor: &str,
        on: OnStep<'_>,
    ) -> Result<Outcome, FilesError> {
        let started = Instant::now();
        let lock = self.lock(actor).await?;
        let r = self.rollback_locked(spec, release, actor, &lock, on).await;
        self.unlock(&lock).await;
        let mut o = r?;
        o.duration_ms = started.elapsed().as_millis() as u64;
        Ok(o)
    }

    async fn rollback_locked(
        &self,
        spec: &AppSpec,
        release: Option<&str>,
        actor: &str,
        lock: &Lock,
        on: OnStep<'_>,
    ) -> Result<Outcome, FilesError> {
        let started = Instant::now();
        let inv = self.inventory().await?;
        let current = inv.current();
        let wanted = match release {
            Some(r) => r.to_string(),
            None => {
                // The release served before the current one, as the history says.
                let history = self.history().await?;
                history
                    .iter()
                    .rev()
                    .find(|r| r.result == "succeeded" && r.release == current)
                    .and_then(|r| r.previous.clone())
                    .ok_or_else(|| self.host_error("no previous release to go back to"))?
            }
        };
        let (_, b) = self.parts();
        let target = if inv.releases.contains(&wanted) {
            format!("{b}.hoist/releases/{wanted}")
        } else if inv.asides.contains(&wanted) {
            format!("{b}.hoist/{wanted}")
        } else {
            return Err(self.host_error(format!(
                "release `{wanted}` is not on the host (`hoist releases` lists them)"
            )));
        };
        let mut outcome = Outcome {
            host: self.name.clone(),
            app: spec.app.clone(),
            result: "succeeded".into(),
            release: Some(wanted.clone()),
            previous: current.clone(),
            reason: None,
            blobs_sent: 0,
            bytes_sent: 0,
            moved_aside: None,
            pruned: Vec::new(),
            duration_ms: 0,
        };
        if current.as_deref() == Some(wanted.as_str()) {
            outcome.result = "unchanged".into();
            return Ok(outcome);
        }
        let mut vars = lock.vars();
        vars.push(("T", &target));
        vars.push(("PAUSE", ""));
        let out = self.sh(&vars, script::SWITCH, None).await?;
        let previous_target = kv(&out, "previous").filter(|p| !p.is_empty());
        on("switched");
        let failure = match self.restart(&target).await {
            Err(e) => Some(format!("the restart command failed: {e}")),
            Ok(()) => self.health(spec).await.err(),
        };
        if let Some(reason) = failure {
            if let Some(p) = &previous_target {
                let mut vars = lock.vars();
                vars.push(("T", p));
                vars.push(("PAUSE", ""));
                self.sh(&vars, script::SWITCH, None).await?;
                let _ = self.restart(p).await;
            }
            outcome.result = "failed".into();
            outcome.reason = Some(reason);
        }
        let rec = HistoryRecord {
            seq: 0,
            at_ms: now_ms(),
            app: spec.app.clone(),
            kind: "rollback".into(),
            release: outcome.release.clone(),
            previous: outcome.previous.clone(),
            commit: None,
            actor: actor.into(),
            result: outcome.result.clone(),
            duration_ms: started.elapsed().as_millis() as i64,
            reason: outcome.reason.clone(),
        };
        self.append(lock, rec).await?;
        Ok(outcome)
    }

    /// The history, oldest first.
    pub async fn history(&self) -> Result<Vec<HistoryRecord>, FilesError> {
        let text = self.sh(&[], script::HISTORY, None).await?;
        let mut out = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let l: ChainLine = serde_json::from_str(line)
                .map_err(|e| self.host_error(format!("unreadable history line: {e}")))?;
            let rec: HistoryRecord = serde_json::from_str(&l.record)
                .map_err(|e| self.host_error(format!("unreadable history record: {e}")))?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Walks the chain: (records, problems).
    pub async fn verify_history(&self) -> Result<(usize, Vec<String>), FilesError> {
        let text = self.sh(&[], script::HISTORY, None).await?;
        Ok(verify_chain(&text))
    }

    pub async fn status(&self) -> Result<FilesStatus, FilesError> {
        let inv = self.inventory().await?;
        Ok(FilesStatus {
            host: self.name.clone(),
            path: self.host.path.clone(),
            served: inv.kind.clone(),
            release: (inv.kind == "link").then(|| inv.current()).flatten(),
            lock: inv.live_lock(),
            releases: inv.releases,
        })
    }

    /// The releases kept on the host, newest first.
    pub async fn releases(&self, app: &str) -> Result<Vec<ReleaseInfo>, FilesError> {
        let inv = self.inventory().await?;
        let history = self.history().await.unwrap_or_default();
        let current = inv.current();
        let previous = history
            .iter()
            .rev()
            .find(|r| r.result == "succeeded" && r.release == current)
            .and_then(|r| r.previous.clone());
        Ok(inv
            .releases
            .iter()
            .map(|r| {
                let made = history
                    .iter()
                    .find(|h| h.release.as_deref() == Some(r.as_str()));
                ReleaseInfo {
                    app: app.to_string(),
                    release: r.clone(),
                    created_at_ms: made.map_or(0, |h| h.at_ms),
                    commit: made.and_then(|h| h.commit.clone()),
                    role: if Some(r) == current.as_ref() {
                        "current".into()
                    } else if Some(r) == previous.as_ref() {
                        "standby".into()
                    } else {
                        "kept".into()
                    },
                }
            })
            .collect())
    }

    /// `hoist plan`: what a deploy of `manifest` would send and change; changes nothing.
    pub async fn plan(&self, manifest: &Manifest) -> Result<FilesPlan, FilesError> {
        let inv = self.inventory().await?;
        let sizes = blob_sizes(manifest);
        let missing: Vec<&String> = if inv
            .releases
            .iter()
            .any(|r| r == manifest.release().as_str())
        {
            Vec::new()
        } else {
            sizes.keys().filter(|b| !inv.blobs.contains(*b)).collect()
        };
        let mut checks = Vec::new();
        checks.push(PlanLine {
            name: "path".into(),
            ok: inv.kind != "other",
            detail: match inv.kind.as_str() {
                "link" => format!("{} is hoist's symlink", self.host.path),
                "dir" => format!(
                    "{} is a plain directory: the first deploy moves it aside",
                    self.host.path
                ),
                "none" => format!("{} does not exist yet", self.host.path),
                _ => format!("{} is neither a directory nor a symlink", self.host.path),
            },
        });
        checks.push(PlanLine {
            name: "lock".into(),
            ok: inv.live_lock().is_none(),
            detail: inv
                .live_lock()
                .map_or_else(|| "free".into(), |h| format!("held by {h}")),
        });
        Ok(FilesPlan {
            host: self.name.clone(),
            current: (inv.kind == "link").then(|| inv.current()).flatten(),
            release: manifest.release().as_str().to_string(),
            files_to_send: missing.len(),
            bytes_to_send: missing.iter().map(|m| sizes[*m]).sum(),
            checks,
        })
    }

    /// Takes every backup (or only `name`) now; returns (name, what happened).
    pub async fn backup(
        &self,
        spec: &AppSpec,
        name: Option<&str>,
        actor: &str,
    ) -> Result<Vec<(String, String)>, FilesError> {
        let lock = self.lock(actor).await?;
        let label = "manual";
        let mut spec = spec.clone();
        if let Some(n) = name {
            if !spec.backups.contains_key(n) {
                self.unlock(&lock).await;
                return Err(FilesError::Local(format!(
                    "the app file has no backup `{n}`"
                )));
            }
            spec.backups.retain(|k, _| k == n);
        }
        let r = self.take_backups(&spec, &lock, label, false).await;
        self.unlock(&lock).await;
        r
    }

    /// Each backup of the app (only `before_deploy` ones when `before_deploy`).
    async fn take_backups(
        &self,
        spec: &AppSpec,
        lock: &Lock,
        label: &str,
        before_deploy: bool,
    ) -> Result<Vec<(String, String)>, FilesError> {
        let mut done = Vec::new();
        let stamp = utc_stamp();
        for (name, b) in spec
            .backups
            .iter()
            .filter(|(_, b)| !before_deploy || b.before_deploy)
        {
            let (body, src, ext) = match &b.source {
                BackupSource::Sqlite { path } => (script::BACKUP_SQLITE, path, "sqlite"),
                BackupSource::Directory { path } => (script::BACKUP_DIR, path, "tar"),
                BackupSource::Postgres { .. } => {
                    done.push((
                        name.clone(),
                        "skipped: a files host backs up SQLite files and directories only".into(),
                    ));
                    continue;
                }
            };
            let (_, base) = self.parts();
            let dest = format!("{base}.hoist/backups/{name}/{stamp}-{label}.{ext}");
            let mut vars = lock.vars();
            vars.push(("SRC", src));
            vars.push(("DEST", &dest));
            let out = self.sh(&vars, body, None).await?;
            if let Some(a) = kv(&out, "absent") {
                done.push((name.clone(), format!("skipped: {a} does not exist yet")));
                continue;
            }
            let keep = b.keep.last.max(1) + b.keep.daily + b.keep.weekly + b.keep.monthly;
            let keep = keep.to_string();
            let vars = [("NAME", name.as_str()), ("KEEP", keep.as_str())];
            self.sh(&vars, script::PRUNE_BACKUPS, None).await?;
            done.push((
                name.clone(),
                format!(
                    "{} ({} bytes)",
                    kv(&out, "file").unwrap_or_default(),
                    kv(&out, "size").unwrap_or_default()
                ),
            ));
        }
        Ok(done)
    }

    /// Every backup file on the host: (name, file, size), newest first per name.
    pub async fn backups(&self) -> Result<Vec<(String, String, u64)>, FilesError> {
        let out = self.sh(&[], script::LIST_BACKUPS, None).await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let (path, size) = l.rsplit_once(' ')?;
                let (name, file) = path.split_once('/')?;
                Some((
                    name.to_string(),
                    file.to_string(),
                    size.parse().unwrap_or(0),
                ))
            })
            .collect())
    }

    /// Restores backup `name` (its newest file, or `file`) over its source, then runs the
    /// restart command in the current release.
    pub async fn restore(
        &self,
        spec: &AppSpec,
        name: &str,
        file: Option<&str>,
        actor: &str,
    ) -> Result<String, FilesError> {
        let b = spec
            .backups
            .get(name)
            .ok_or_else(|| FilesError::Local(format!("the app file has no backup `{name}`")))?;
        let file = match file {
            Some(f) => f.to_string(),
            None => self
                .backups()
                .await?
                .into_iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, f, _)| f)
                .ok_or_else(|| self.host_error(format!("no backup of `{name}` on the host")))?,
        };
        let (body, src) = match &b.source {
            BackupSource::Sqlite { path } => (script::RESTORE_SQLITE, path),
            BackupSource::Directory { path } => (script::RESTORE_DIR, path),
            BackupSource::Postgres { .. } => {
                return Err(FilesError::Local(
                    "a files host backs up SQLite files and directories only".into(),
                ))
            }
        };
        let lock = self.lock(actor).await?;
        let rel = format!("{name}/{file}");
        let r = async {
            let mut vars = lock.vars();
            vars.push(("SRC", src));
            vars.push(("FILE", &rel));
            let out = self.sh(&vars, body, None).await?;
            let inv = self.inventory().await?;
            if let Some(t) = inv.target.as_deref() {
                self.restart(t).await?;
            }
            let rec = HistoryRecord {
                seq: 0,
                at_ms: now_ms(),
                app: spec.app.clone(),
                kind: "restore".into(),
                release: inv.current(),
                previous: None,
                commit: None,
                actor: actor.into(),
                result: "succeeded".into(),
                duration_ms: 0,
                reason: Some(format!("{name} from {file}")),
            };
            self.append(&lock, rec).await?;
            Ok::<_, FilesError>(kv(&out, "restored").unwrap_or_default())
        }
        .await;
        self.unlock(&lock).await;
        r
    }

    /// The secrets file's names and values (empty when there is none).
    pub async fn read_secrets(
        &self,
    ) -> Result<serde_json::Map<String, serde_json::Value>, FilesError> {
        let text = self.sh(&[], script::READ_SECRETS, None).await?;
        if text.trim().is_empty() {
            return Ok(serde_json::Map::new());
        }
        serde_json::from_str(&text)
            .map_err(|e| self.host_error(format!("the secrets file is unreadable: {e}")))
    }

    /// Writes the secrets file (0600, atomically).
    pub async fn write_secrets(
        &self,
        secrets: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), FilesError> {
        let text =
            serde_json::to_vec_pretty(secrets).map_err(|e| FilesError::Local(e.to_string()))?;
        self.sh(&[], script::WRITE_SECRETS, Some(text)).await?;
        Ok(())
    }
}

/// `hoist plan` of a files host.
#[derive(Debug, Clone, Serialize)]
pub struct FilesPlan {
    pub host: String,
    pub current: Option<String>,
    pub release: String,
    pub files_to_send: usize,
    pub bytes_to_send: u64,
    pub checks: Vec<PlanLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// One line of `history.jsonl`: the record's JSON text and its place in the chain
/// (`hash = sha256(prev + "\n" + record)`, as the agent's history).
#[derive(Debug, serde::Deserialize, Serialize)]
struct ChainLine {
    seq: i64,
    prev: String,
    hash: String,
    record: String,
}

fn chain_hash(prev: &str, record: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev.as_bytes());
    h.update(b"\n");
    h.update(record.as_bytes());
    hex::encode(h.finalize())
}

/// Walks a history file's chain: (records, problems).
pub fn verify_chain(text: &str) -> (usize, Vec<String>) {
    let mut problems = Vec::new();
    let mut expected_prev = GENESIS.to_string();
    let mut expected_seq = 1;
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        n += 1;
        let Ok(l) = serde_json::from_str::<ChainLine>(line) else {
            problems.push(format!("line {n} is not readable"));
            continue;
        };
        if l.seq != expected_seq {
            problems.push(format!("records {expected_seq}..{} are missing", l.seq - 1));
        }
        if l.prev != expected_prev {
            problems.push(format!(
                "record {} does not follow the record before it",
                l.seq
            ));
        }
        if chain_hash(&l.prev, &l.record) != l.hash {
            problems.push(format!("record {} was altered", l.seq));
        }
        match serde_json::from_str::<HistoryRecord>(&l.record) {
            Ok(r) if r.seq != l.seq => {
                problems.push(format!("record {} claims to be {}", l.seq, r.seq))
            }
            Ok(_) => {}
            Err(_) => problems.push(format!("record {} is not readable", l.seq)),
        }
        expected_prev = l.hash;
        expected_seq = l.seq + 1;
    }
    (n, problems)
}

/// A lock held on a files host.
struct Lock {
    token: String,
    holder: String,
    ttl: String,
}

impl Lock {
    fn vars(&self) -> Vec<(&str, &str)> {
        vec![
            ("TOKEN", self.token.as_str()),
            ("HOLDER", self.holder.as_str()),
            ("TTL", self.ttl.as_str()),
        ]
    }
}

fn lock_ttl() -> Duration {
    std::env::var("HOIST_LEASE_TTL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(LOCK_TTL, Duration::from_millis)
}

/// `HASH-MODE` of a file entry: one blob per content and mode, read-only.
fn blob_name(sha: &hoist_artifact::Hash, mode: u32) -> String {
    format!("{}-{:o}", sha.to_hex(), mode & 0o555)
}

/// The blobs a release needs, each with the path of one entry holding it.
fn blob_names(manifest: &Manifest) -> Vec<(String, String)> {
    let mut seen: HashMap<String, String> = HashMap::new();
    for e in manifest.entries() {
        if let EntryKind::File { sha256, mode, .. } = &e.kind {
            seen.entry(blob_name(sha256, *mode))
                .or_insert_with(|| e.path.clone());
        }
    }
    let mut v: Vec<(String, String)> = seen.into_iter().collect();
    v.sort();
    v
}

fn blob_sizes(manifest: &Manifest) -> HashMap<String, u64> {
    manifest
        .entries()
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::File { sha256, mode, size } => Some((blob_name(sha256, *mode), *size)),
            _ => None,
        })
        .collect()
}

/// A tar (uncompressed: the host's `tar` may know no compression) of the `missing`
/// blobs, read from the artifact unpacked (and so verified) into a temporary directory.
async fn pack_blobs(
    artifact: &Path,
    missing: &[(String, String)],
) -> Result<(Vec<u8>, u64), FilesError> {
    let artifact = artifact.to_path_buf();
    let missing = missing.to_vec();
    tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, u64), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let tree = dir.path().join("tree");
        let file = std::fs::File::open(&artifact).map_err(|e| e.to_string())?;
        hoist_artifact::unpack(std::io::BufReader::new(file), &tree, &Limits::default())
            .map_err(|e| e.to_string())?;
        let mut builder = tar::Builder::new(Vec::new());
        let mut bytes = 0;
        for (name, path) in &missing {
            let data = std::fs::read(tree.join(path)).map_err(|e| e.to_string())?;
            let mut header = tar::Header::new_ustar();
            header.set_size(data.len() as u64);
            header.set_mode(0o600);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            bytes += data.len() as u64;
            builder
                .append_data(&mut header, name, data.as_slice())
                .map_err(|e| e.to_string())?;
        }
        let out = builder.into_inner().map_err(|e| e.to_string())?;
        // The unpacked tree is read-only: make it removable.
        let _ = hoist_artifact::remove_tree(&tree);
        Ok((out, bytes))
    })
    .await
    .map_err(|e| FilesError::Local(e.to_string()))?
    .map_err(|e| FilesError::Local(format!("cannot pack the files to send: {e}")))
}

/// The script that builds `releases/ID` from the blobs: directories, hardlinks (a copy
/// where the file system has none), symlinks, `tmp/` for the restart file, and the
/// links to the secrets file and the data directory; renamed into place when whole.
fn materialise(manifest: &Manifest, release: &str) -> String {
    use crate::ssh::shell_quote as q;
    let mut s = String::new();
    s.push_str("renew\n");
    s.push_str(&format!("ID={}\n", q(release)));
    s.push_str(
        "mkdir -p \"$S/releases\"\ncd \"$S/releases\"\n\
         if [ -d \"$ID\" ]; then echo exists; exit 0; fi\n\
         rm -rf \".new-$ID\"\nmkdir \".new-$ID\"\ncd \".new-$ID\"\n",
    );
    for e in manifest.entries() {
        match &e.kind {
            EntryKind::Dir { .. } => s.push_str(&format!("mkdir -p {}\n", q(&e.path))),
            EntryKind::File { sha256, mode, .. } => {
                // A hardlink's source is resolved from the working directory (the
                // release's root), whatever the depth of the new name.
                let blob = q(&format!("../../blobs/{}", blob_name(sha256, *mode)));
                let path = q(&e.path);
                s.push_str(&format!(
                    "ln {blob} {path} 2>/dev/null || cp -p {blob} {path}\n"
                ));
            }
            EntryKind::Symlink { target } => {
                s.push_str(&format!("ln -s {} {}\n", q(target), q(&e.path)))
            }
        }
    }
    s.push_str(
        "mkdir -p tmp\n\
         [ -e hoist-secrets.json ] || ln -s ../../secrets.json hoist-secrets.json\n\
         [ -e hoist-data ] || ln -s ../../data hoist-data\n\
         mkdir -p ../../data\n\
         cd ..\nmv \".new-$ID\" \"$ID\"\n",
    );
    s
}

/// `key=value` from a script's output.
fn kv(out: &str, key: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

fn last_component(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(p)
        .to_string()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn utc_stamp() -> String {
    let secs = now_ms() / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's algorithm).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn random_token() -> String {
    let mut bytes = [0u8; 12];
    if getrandom::fill(&mut bytes).is_err() {
        return format!("{:x}{:x}", std::process::id(), now_ms());
    }
    hex::encode(bytes)
}

/// `GET url` (http:// only): status and body, within 10 s.
pub async fn http_get(url: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are checked".to_string())?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| e.to_string())?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: hoist\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| "not an HTTP answer".to_string())?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "no answer within 10s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_finds_an_altered_record() {
        let mut text = String::new();
        let mut prev = GENESIS.to_string();
        for seq in 1..=3 {
            let rec = HistoryRecord {
                seq,
                at_ms: seq,
                app: "a".into(),
                kind: "deploy".into(),
                release: Some(format!("r{seq}")),
                previous: None,
                commit: None,
                actor: "me".into(),
                result: "succeeded".into(),
                duration_ms: 1,
                reason: None,
            };
            let record = serde_json::to_string(&rec).unwrap();
            let hash = chain_hash(&prev, &record);
            let line = ChainLine {
                seq,
                prev: prev.clone(),
                hash: hash.clone(),
                record,
            };
            text.push_str(&serde_json::to_string(&line).unwrap());
            text.push('\n');
            prev = hash;
        }
        assert_eq!(verify_chain(&text), (3, vec![]));
        let altered = text.replacen("\\\"r2\\\"", "\\\"r9\\\"", 1);
        assert_ne!(altered, text);
        let (_, problems) = verify_chain(&altered);
        assert_eq!(problems, vec!["record 2 was altered".to_string()]);
    }

    #[test]
    fn utc_stamps_are_civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
    }
}
