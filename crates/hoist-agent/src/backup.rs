//! Backups on this host: taking them (on demand, on a schedule, before a deploy's
//! `pre_activate`), pruning by GFS retention, verifying them by a restore into a scratch
//! place, and restoring one: checksum first (a corrupt file is refused before anything
//! stops), then stop the app's instances, restore, check, start them again, and record
//! the restore in the history.
//!
//! Files live in `<root>/backups/<app>/<name>/<UTC time>-<id>.<ext>` (0600, dirs 0700),
//! with an optional copy under `copy_to/<app>/<name>/`. A record is `ok` only once its
//! file is sealed in place; what a dead agent left `running` is closed as failed when the
//! next one starts. The engines are `hoist-backup`; this module only composes them with
//! the agent's state, secrets and instances. A database URL is read from the secrets at
//! the moment of use and never logged, stored or answered: errors carry it redacted.
//!
//! Concurrency: one async mutex per (app, name) so a name's backups never overlap (a
//! scheduled one finding it held is skipped); a restore also holds the app's deploy lock.
//! The engines block, so they run in `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::Agent;
use chrono::{DateTime, Utc};
use hoist_backup::postgres::PgTarget;
use hoist_backup::reader::AsUser;
use hoist_backup::{BackupError, Checked};
use hoist_core::spec::{AppSpec, BackupSource, BackupSpec};
use hoist_protocol::backup::{BackupInfo, RestoreRequest, RestoreResult};
use hoist_state::backups::{BackupDone, BackupRow, NewBackup};
use hoist_supervisor::creds::Credentials;

/// Why a backup, verify or restore did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BackupFail {
    #[error("`{app}` has no current release here")]
    NoApp { app: String },
    #[error("`{app}` has no backup named `{name}`")]
    NoName {
        app: String,
        name: String,
        known: Vec<String>,
    },
    #[error("`{app}` has no backups in its app file")]
    NoBackups { app: String },
    #[error("there is no good backup of `{name}` of `{app}`")]
    NoBackup { app: String, name: String },
    #[error("backup {id} is not a good backup of `{name}` of `{app}`")]
    NotUsable { id: i64, app: String, name: String },
    #[error("the secret `{secret}` of `{app}` is not set")]
    NoSecret { app: String, secret: String },
    #[error("`{path}` is not a relative path inside the app's data dir")]
    BadPath { path: String },
    #[error("copying to `{dest}` is not supported: only a local path is")]
    RemoteCopy { dest: String },
    #[error("backup {id} refused before anything was stopped")]
    Refused {
        id: i64,
        #[source]
        source: BackupError,
    },
    #[error("a deploy or another restore of `{app}` is running")]
    Busy { app: String },
    #[error("restored, but `{app}` did not become healthy again: {detail}")]
    NotHealthy { app: String, detail: String },
    #[error(transparent)]
    Engine(#[from] BackupError),
    #[error(transparent)]
    State(#[from] hoist_state::StateError),
    #[error("cannot prepare `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the backup task stopped unexpectedly")]
    Task,
}

impl BackupFail {
    fn no_known(&self) -> bool {
        matches!(self, BackupFail::NoBackups { .. })
            || matches!(self, BackupFail::NoName { known, .. } if known.is_empty())
    }

    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            BackupFail::NoApp { .. } => Some("deploy it first (`hoist deploy`)".into()),
            BackupFail::NoBackups { .. } | BackupFail::NoName { .. } if self.no_known() => {
                Some("add a `[backups.NAME]` table to the app file and deploy".into())
            }
            BackupFail::NoName { known, .. } => Some(format!(
                "the app's backups are {}",
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            BackupFail::NoBackup { name, .. } => {
                Some(format!("take one with `hoist backup {name}`"))
            }
            BackupFail::NotUsable { .. } | BackupFail::Refused { .. } => {
                Some("`hoist backups` lists the good ones; restore another".into())
            }
            BackupFail::NoSecret { secret, .. } => Some(format!(
                "set it with `hoist secrets set {secret}` (the value is read from stdin)"
            )),
            BackupFail::Busy { .. } => Some("wait for it to finish".into()),
            _ => None,
        }
    }
}

/// What one attempt to take a backup came to.
pub(crate) enum Taken {
    /// Recorded (`ok` or `failed`).
    Recorded(Box<BackupRow>),
    /// Not attempted, with why (a before-deploy backup of a source not created yet, a
    /// scheduled one while another of the same name runs).
    Skipped(String),
}

/// Where a backup reads from.
enum Source {
    Sqlite(PathBuf),
    Directory(PathBuf),
    Postgres(Box<PgTarget>),
}

impl Source {
    fn exists(&self) -> bool {
        match self {
            Source::Sqlite(p) => p.is_file(),
            Source::Directory(p) => p.is_dir(),
            Source::Postgres(_) => true,
        }
    }
}

fn kind_of(spec: &BackupSpec) -> (&'static str, &'static str) {
    match spec.source {
        BackupSource::Sqlite { .. } => ("sqlite", "sqlite"),
        BackupSource::Postgres { .. } => ("postgres", "pgdump"),
        BackupSource::Directory { .. } => ("directory", "tar.zst"),
    }
}

type NameKey = (String, String, String);

/// Per (agent boot, app, name): the lock that keeps a name's backups from overlapping,
/// and the next scheduled time. Process-wide maps keyed by the agent's boot id, so that
/// this module needs no field in `Agent`.
fn locks() -> &'static Mutex<HashMap<NameKey, Arc<tokio::sync::Mutex<()>>>> {
    static LOCKS: OnceLock<Mutex<HashMap<NameKey, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS.get_or_init(Default::default)
}

/// The lock of one backup name. Entries nobody holds a handle to go first (a handle is
/// only cloned here, under the map's lock, or from another handle), so the map does not
/// grow with every name and agent boot ever seen.
fn name_lock(key: NameKey) -> Arc<tokio::sync::Mutex<()>> {
    let mut map = locks().lock().unwrap_or_else(|p| p.into_inner());
    map.retain(|_, m| Arc::strong_count(m) > 1);
    map.entry(key).or_default().clone()
}

fn schedule() -> &'static Mutex<HashMap<NameKey, DateTime<Utc>>> {
    static NEXT: OnceLock<Mutex<HashMap<NameKey, DateTime<Utc>>>> = OnceLock::new();
    NEXT.get_or_init(Default::default)
}

fn recovered() -> &'static Mutex<HashSet<String>> {
    static DONE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    DONE.get_or_init(Default::default)
}

/// A relative path without `..`: the only kind a backup source may name.
fn inside(base: &Path, rel: &str) -> Result<PathBuf, BackupFail> {
    let p = Path::new(rel);
    let ok = !rel.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(BackupFail::BadPath {
            path: rel.to_string(),
        });
    }
    Ok(base.join(p))
}

fn mkdir_private(dir: &Path) -> Result<(), BackupFail> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| BackupFail::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn info(r: BackupRow) -> BackupInfo {
    BackupInfo {
        id: r.id,
        app: r.app,
        name: r.name,
        kind: r.kind,
        file: r.file,
        copy: r.copy,
        sha256: r.sha256,
        size: r.size.map(|s| s.max(0) as u64),
        started_at_ms: r.started_at_ms,
        duration_ms: r.duration_ms,
        release: r.release,
        trigger: r.trigger,
        status: r.status,
        error: r.error,
        checked: r.checked,
        verified: r.verified,
    }
}

impl Agent {
    fn backups_root(&self) -> PathBuf {
        self.paths.root.join("backups")
    }

    fn name_lock(&self, app: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        name_lock((self.boot.clone(), app.to_string(), name.to_string()))
    }

    /// Once per agent start: attempts a dead agent left `running` become `failed`, and
    /// their partial files go.
    fn recover_backups(&self) {
        if !recovered()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.boot.clone())
        {
            return;
        }
        match self.db(|s| s.close_lost_backups()) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(count = n, "closed backups interrupted by a stopped agent"),
            Err(e) => tracing::error!(error = %e, "cannot close interrupted backups"),
        }
        let root = self.backups_root();
        let dirs = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|app| {
                std::fs::read_dir(app.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            });
        // Readers' scratch directories a dead agent left beside the apps' data dirs.
        for d in std::fs::read_dir(self.paths.root.join("data"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if d.file_name().to_string_lossy().starts_with(".backup-") {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
        for dir in dirs {
            for f in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if f.file_name().to_string_lossy().ends_with(".partial") {
                    let _ = std::fs::remove_file(f.path());
                }
            }
        }
    }

    fn current_spec(&self, app: &str) -> Result<(String, Arc<AppSpec>), BackupFail> {
        self.rt()
            .specs
            .get(app)
            .cloned()
            .ok_or_else(|| BackupFail::NoApp {
                app: app.to_string(),
            })
    }

    fn backup_spec<'a>(&self, spec: &'a AppSpec, name: &str) -> Result<&'a BackupSpec, BackupFail> {
        spec.backups.get(name).ok_or_else(|| BackupFail::NoName {
            app: spec.app.clone(),
            name: name.to_string(),
            known: spec.backups.keys().cloned().collect(),
        })
    }

    fn source(&self, app: &str, spec: &BackupSpec) -> Result<Source, BackupFail> {
        let data = self.paths.data_dir(app);
        Ok(match &spec.source {
            BackupSource::Sqlite { path } => Source::Sqlite(inside(&data, path)?),
            BackupSource::Directory { path } => Source::Directory(inside(&data, path)?),
            BackupSource::Postgres { secret } => {
                let values = self.secrets.values(app).map_err(|e| BackupFail::Io {
                    path: self.paths.secrets_dir(),
                    source: std::io::Error::other(e.to_string()),
                })?;
                let url = values.get(secret).ok_or_else(|| BackupFail::NoSecret {
                    app: app.to_string(),
                    secret: secret.clone(),
                })?;
                Source::Postgres(Box::new(PgTarget::parse(url)?.as_user(self.backup_user())))
            }
        })
    }

    /// Who reads an app's data for a backup and runs its database tools: the apps' user
    /// (`None`: the agent's own, when apps run as it).
    fn backup_user(&self) -> Option<Credentials> {
        let u = self.apps_user.as_ref()?;
        hoist_supervisor::creds::Credentials::of(&u.name)
    }

    /// A reader of the app's files as the apps' user, with a scratch directory of that
    /// user's own beside the apps' data dirs (SQLite writes its copy there before it is
    /// streamed to the agent). `None`: the agent reads them itself (apps run as it).
    fn backup_reader(&self, id: i64) -> Result<Option<AsUser>, BackupFail> {
        let Some(creds) = self.backup_user() else {
            return Ok(None);
        };
        let scratch = self.paths.root.join("data").join(format!(".backup-{id}"));
        let made = (|| {
            use std::os::unix::fs::DirBuilderExt;
            let _ = std::fs::remove_dir_all(&scratch);
            std::fs::DirBuilder::new().mode(0o700).create(&scratch)?;
            std::os::unix::fs::chown(&scratch, Some(creds.uid.as_raw()), Some(creds.gid.as_raw()))
        })();
        made.map_err(|source| BackupFail::Io {
            path: scratch.clone(),
            source,
        })?;
        Ok(Some(AsUser {
            exe: self.exe.clone(),
            creds,
            scratch,
        }))
    }

    /// Takes one backup of `[backups.NAME]` of `spec`'s app now and prunes by retention
    /// after a success. `trigger`: `manual`, `schedule` or `before_deploy`.
    pub(crate) async fn take_backup(
        self: &Arc<Self>,
        spec: &AppSpec,
        name: &str,
        trigger: &str,
    ) -> Result<Taken, BackupFail> {
        self.recover_backups();
        let app = spec.app.clone();
        let bs = self.backup_spec(spec, name)?;
        let lock = self.name_lock(&app, name);
        let _guard = if trigger == "schedule" {
            match lock.try_lock_owned() {
                Ok(g) => g,
                Err(_) => {
                    return Ok(Taken::Skipped(format!(
                        "backup `{name}` is already running"
                    )))
                }
            }
        } else {
            lock.lock_owned().await
        };
        let source = self.source(&app, bs)?;
        // A deploy or a schedule may come before the app created its data; an operator
        // asking for a backup gets a failure that says so.
        if trigger != "manual" && !source.exists() {
            let shown = match &bs.source {
                BackupSource::Sqlite { path } | BackupSource::Directory { path } => path.clone(),
                BackupSource::Postgres { secret } => secret.clone(),
            };
            return Ok(Taken::Skipped(format!(
                "backup `{name}` skipped: `{shown}` does not exist yet"
            )));
        }
        let copy_root = match &bs.copy_to {
            Some(dest) if dest.split('/').next().is_some_and(|h| h.contains(':')) => {
                return Err(BackupFail::RemoteCopy { dest: dest.clone() })
            }
            Some(dest) => Some(PathBuf::from(dest).join(&app).join(name)),
            None => None,
        };
        let (kind, ext) = kind_of(bs);
        let release = self
            .db(|s| s.current(&app))
            .ok()
            .flatten()
            .map(|c| c.release);
        let id = self.db(|s| {
            s.begin_backup(&NewBackup {
                app: &app,
                name,
                kind,
                release: release.as_deref(),
                trigger,
                verified: None,
            })
        })?;
        let dir = self.backups_root().join(&app).join(name);
        let file = dir.join(format!(
            "{}-{id}.{ext}",
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        let result = async {
            mkdir_private(&self.backups_root())?;
            mkdir_private(&dir)?;
            if let Some(c) = &copy_root {
                mkdir_private(c)?;
            }
            // A test hook: an agent killed here leaves a `running` row and no file.
            crate::failpoint("backup", "running");
            let target = file.clone();
            let reader = match source {
                Source::Postgres(_) => None,
                _ => self.backup_reader(id)?,
            };
            let scratch = reader.as_ref().map(|r| r.scratch.clone());
            let sealed = tokio::task::spawn_blocking(move || match (source, reader) {
                (Source::Sqlite(p), Some(r)) => {
                    hoist_backup::reader::sqlite_backup(&r, &p, &target)
                }
                (Source::Directory(p), Some(r)) => {
                    hoist_backup::reader::directory_backup(&r, &p, &target)
                }
                (Source::Sqlite(p), None) => hoist_backup::sqlite::backup(&p, &target),
                (Source::Directory(p), None) => hoist_backup::directory::backup(&p, &target),
                (Source::Postgres(t), _) => hoist_backup::postgres::backup(&t, &target),
            })
            .await
            .map_err(|_| BackupFail::Task);
            if let Some(s) = scratch {
                let _ = std::fs::remove_dir_all(s);
            }
            let sealed = sealed??;
            let copy = match &copy_root {
                Some(c) => {
                    let from = sealed.path.clone();
                    let to = c.join(file.file_name().unwrap_or_default());
                    let copied = tokio::task::spawn_blocking(move || {
                        hoist_backup::file::copy_sealed(&from, &to)
                    })
                    .await
                    .map_err(|_| BackupFail::Task)?;
                    match copied {
                        Ok(c) => Some(c.path),
                        Err(e) => {
                            let _ = std::fs::remove_file(&sealed.path);
                            return Err(e.into());
                        }
                    }
                }
                None => None,
            };
            Ok::<_, BackupFail>((sealed, copy))
        }
        .await;
        match result {
            Ok((sealed, copy)) => {
                let file_s = sealed.path.display().to_string();
                let copy_s = copy.map(|c| c.display().to_string());
                self.db(|s| {
                    s.finish_backup(
                        id,
                        &BackupDone {
                            file: Some(&file_s),
                            copy: copy_s.as_deref(),
                            sha256: Some(&sealed.sha256),
                            size: Some(sealed.size as i64),
                            checked: None,
                        },
                    )
                })?;
                tracing::info!(app = %app, backup = name, id, bytes = sealed.size, trigger, "backup taken");
                self.event(
                    Some(&app),
                    "backup.ok",
                    Some(name),
                    &format!("backup {id} ({} bytes)", sealed.size),
                );
                self.prune_backups(&app, name, bs).await;
            }
            Err(e) => {
                let msg = crate::chain(&e);
                let _ = std::fs::remove_file(hoist_backup::file::partial_path(&file));
                self.db(|s| s.fail_backup(id, &msg))?;
                tracing::warn!(app = %app, backup = name, id, error = %msg, "backup failed");
                self.event(Some(&app), "backup.failed", Some(name), &msg);
            }
        }
        let row = self.db(|s| s.backup(id))?.ok_or(BackupFail::NoBackup {
            app: app.clone(),
            name: name.to_string(),
        })?;
        Ok(Taken::Recorded(Box::new(row)))
    }

    /// Deletes the good backups of a name that GFS retention does not keep (files and
    /// records; copies too).
    async fn prune_backups(&self, app: &str, name: &str, bs: &BackupSpec) {
        let rows = match self.db(|s| s.good_backups(app, name)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(app, backup = name, error = %e, "cannot list backups to prune");
                return;
            }
        };
        let dated: Vec<(i64, DateTime<Utc>)> = rows
            .iter()
            .filter_map(|r| DateTime::from_timestamp_millis(r.started_at_ms).map(|t| (r.id, t)))
            .collect();
        let mut keep = hoist_backup::retention::keep(&dated, bs.keep);
        // The newest backup taken before a deploy is what a bad migration is undone
        // with: a later scheduled backup the same day must not prune it.
        if let Some(last) = rows
            .iter()
            .filter(|r| r.trigger == "before_deploy")
            .max_by_key(|r| r.started_at_ms)
        {
            keep.insert(last.id);
        }
        for r in rows.iter().filter(|r| !keep.contains(&r.id)) {
            for f in [&r.file, &r.copy].into_iter().flatten() {
                if let Err(e) = std::fs::remove_file(f) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(app, backup = name, file = %f, error = %e, "cannot remove a pruned backup");
                        continue;
                    }
                }
            }
            let forgot = self.db(|s| s.delete_backup(r.id));
            self.noted(Some(app), "forget a pruned backup", forgot);
            tracing::info!(app, backup = name, id = r.id, "backup pruned by retention");
        }
    }

    /// The deploy's `backup` step: every `before_deploy` backup of the app. A source
    /// that does not exist yet is skipped with a note; any failure fails the step.
    pub(crate) async fn backups_before_deploy(
        self: &Arc<Self>,
        spec: &AppSpec,
    ) -> Result<(Vec<String>, Vec<(String, i64)>), String> {
        let mut notes = Vec::new();
        let mut taken = Vec::new();
        let names: Vec<&String> = spec
            .backups
            .iter()
            .filter(|(_, b)| b.before_deploy)
            .map(|(n, _)| n)
            .collect();
        for name in names {
            match self.take_backup(spec, name, "before_deploy").await {
                Ok(Taken::Skipped(note)) => notes.push(note),
                Ok(Taken::Recorded(row)) if row.status == "ok" => {
                    taken.push((name.clone(), row.id));
                    notes.push(format!(
                        "backup `{name}` taken: {} ({} bytes)",
                        row.id,
                        row.size.unwrap_or(0)
                    ))
                }
                Ok(Taken::Recorded(row)) => {
                    return Err(format!(
                        "backup `{name}` failed: {}",
                        row.error.unwrap_or_default()
                    ))
                }
                Err(e) => return Err(format!("backup `{name}` failed: {}", crate::chain(&e))),
            }
        }
        Ok((notes, taken))
    }

    /// One pass of the backup scheduler (from the 1 s housekeeping loop): starts the
    /// scheduled backups that are due, each in its own task.
    pub(crate) async fn schedule_backups(self: &Arc<Self>) {
        self.recover_backups();
        let now = Utc::now();
        let specs: Vec<Arc<AppSpec>> = self.rt().specs.values().map(|(_, s)| s.clone()).collect();
        for spec in specs {
            for (name, bs) in &spec.backups {
                let Some(sched) = &bs.schedule else { continue };
                let key = (self.boot.clone(), spec.app.clone(), name.clone());
                let due = {
                    let mut next = schedule().lock().unwrap_or_else(|p| p.into_inner());
                    let at = *next
                        .entry(key)
                        .or_insert_with(|| sched.next_after(now).unwrap_or(now));
                    if at > now {
                        false
                    } else {
                        if let Some(n) = sched.next_after(now) {
                            next.insert((self.boot.clone(), spec.app.clone(), name.clone()), n);
                        }
                        true
                    }
                };
                if due {
                    let agent = self.clone();
                    let spec = spec.clone();
                    let name = name.clone();
                    tokio::spawn(async move {
                        if let Err(e) = agent.take_backup(&spec, &name, "schedule").await {
                            tracing::warn!(app = %spec.app, backup = %name, error = %crate::chain(&e), "scheduled backup not taken");
                        }
                    });
                }
            }
        }
    }

    /// The latest good backup of a name, or the one asked for if it is good.
    fn pick_backup(&self, app: &str, name: &str, id: Option<i64>) -> Result<BackupRow, BackupFail> {
        let good = self.db(|s| s.good_backups(app, name))?;
        match id {
            Some(id) => good
                .into_iter()
                .find(|r| r.id == id)
                .ok_or(BackupFail::NotUsable {
                    id,
                    app: app.to_string(),
                    name: name.to_string(),
                }),
            None => good.into_iter().last().ok_or(BackupFail::NoBackup {
                app: app.to_string(),
                name: name.to_string(),
            }),
        }
    }

    /// Checks a backup file against its record (blocking, so off the runtime).
    async fn check_file(row: &BackupRow) -> Result<PathBuf, BackupFail> {
        let path = PathBuf::from(row.file.clone().unwrap_or_default());
        let sha = row.sha256.clone().unwrap_or_default();
        let size = row.size.unwrap_or(-1).max(0) as u64;
        let p = path.clone();
        tokio::task::spawn_blocking(move || hoist_backup::file::verify(&p, &sha, size))
            .await
            .map_err(|_| BackupFail::Task)?
            .map_err(|source| BackupFail::Refused { id: row.id, source })?;
        Ok(path)
    }

    /// Restores the latest good backup of `name` into a scratch place and checks it;
    /// the result is recorded as a `verify` attempt.
    pub(crate) async fn verify_backup(
        self: &Arc<Self>,
        spec: &AppSpec,
        name: &str,
    ) -> Result<BackupRow, BackupFail> {
        self.recover_backups();
        let app = spec.app.clone();
        let bs = self.backup_spec(spec, name)?;
        let backup = self.pick_backup(&app, name, None)?;
        let (kind, _) = kind_of(bs);
        let id = self.db(|s| {
            s.begin_backup(&NewBackup {
                app: &app,
                name,
                kind,
                release: backup.release.as_deref(),
                trigger: "verify",
                verified: Some(backup.id),
            })
        })?;
        if let Some(f) = &backup.file {
            self.db(|s| s.set_backup_file(id, f))?;
        }
        let scratch = self.paths.tmp().join(format!("verify-{id}"));
        let result = async {
            let file = Self::check_file(&backup).await?;
            mkdir_private(&scratch)?;
            let target = match &bs.source {
                BackupSource::Postgres { .. } => match self.source(&app, bs)? {
                    Source::Postgres(t) => Some(t),
                    _ => None,
                },
                _ => None,
            };
            let dir = scratch.clone();
            let scratch_db = format!("hoist_verify_{id}");
            let checked: Checked = tokio::task::spawn_blocking(move || match (kind, target) {
                ("sqlite", _) => hoist_backup::sqlite::verify(&file, &dir),
                ("directory", _) => hoist_backup::directory::verify(&file, &dir),
                (_, Some(t)) => hoist_backup::postgres::verify(&t, &file, &scratch_db),
                (_, None) => Err(BackupError::Missing { path: file }),
            })
            .await
            .map_err(|_| BackupFail::Task)??;
            Ok::<_, BackupFail>(checked)
        }
        .await;
        let _ = std::fs::remove_dir_all(&scratch);
        match result {
            Ok(checked) => {
                let summary = format!("backup {}: {}", backup.id, checked.summary);
                self.db(|s| {
                    s.finish_backup(
                        id,
                        &BackupDone {
                            checked: Some(&summary),
                            ..Default::default()
                        },
                    )
                })?;
                self.event(Some(&app), "backup.verified", Some(name), &summary);
            }
            Err(e) => {
                let msg = crate::chain(&e);
                self.db(|s| s.fail_backup(id, &msg))?;
                self.event(Some(&app), "backup.verify_failed", Some(name), &msg);
            }
        }
        self.db(|s| s.backup(id))?.ok_or(BackupFail::NoBackup {
            app,
            name: name.to_string(),
        })
    }

    /// Restores `[backups.NAME]` of `app` from a backup: the file is checked against its
    /// checksum before anything stops; then every instance of the app on this host
    /// stops, the data is restored and checked, and the current release's instances
    /// start again. Recorded in the history as a `restore`.
    pub(crate) async fn restore_backup(
        self: &Arc<Self>,
        app: &str,
        req: &RestoreRequest,
    ) -> Result<RestoreResult, BackupFail> {
        self.recover_backups();
        let started = Instant::now();
        let (release, spec) = self.current_spec(app)?;
        let name = req.name.as_str();
        let bs = self.backup_spec(&spec, name)?;
        let backup = self.pick_backup(app, name, req.backup)?;
        // Everything that can be refused is refused here, before any instance stops.
        let file = Self::check_file(&backup).await?;
        let source = self.source(app, bs)?;
        let Ok(_deploy_guard) = self.app_lock(app).try_lock_owned() else {
            return Err(BackupFail::Busy {
                app: app.to_string(),
            });
        };
        let _name_guard = self.name_lock(app, name).lock_owned().await;
        let op =
            self.db(|s| s.begin_operation(app, "restore", Some(&release), None, &req.actor))?;
        let journal = |step: &str, phase: &str, detail: Option<&str>| {
            if let Err(e) = self.db(|s| s.journal(op.id, step, phase, detail)) {
                tracing::error!(error = %e, step, "cannot journal a restore step");
            }
        };
        journal("stop", "begin", None);
        let ids = self.instances_of(app, |_| true);
        let services: Vec<String> = {
            let rt = self.rt();
            let mut s: Vec<String> = ids
                .iter()
                .filter_map(|id| rt.instances.get(id).map(|l| l.row.service.clone()))
                .collect();
            s.sort();
            s.dedup();
            s
        };
        self.stop_instances(&ids).await;
        self.sync_routes(app).await;
        journal("stop", "end", None);
        journal("restore", "begin", None);
        let restored = tokio::task::spawn_blocking(move || match source {
            Source::Sqlite(p) => hoist_backup::sqlite::restore(&file, &p),
            Source::Directory(p) => hoist_backup::directory::restore(&file, &p),
            Source::Postgres(t) => hoist_backup::postgres::restore(&t, &file),
        })
        .await
        .map_err(|_| BackupFail::Task)
        .and_then(|r| r.map_err(BackupFail::from));
        match &restored {
            Ok(c) => journal("restore", "end", Some(&c.summary)),
            Err(e) => journal("restore", "failed", Some(&crate::chain(e))),
        }
        // Whether or not the restore worked, the app runs again: a failed restore left
        // the data as it was.
        journal("start", "begin", None);
        let started_again = self.start_current(&spec, &release).await;
        match &started_again {
            Ok(()) => journal("start", "end", None),
            Err(e) => journal("start", "failed", Some(e)),
        }
        let result = match (restored, started_again) {
            (Ok(checked), Ok(())) => Ok(checked),
            (Err(e), _) => Err(e),
            (Ok(_), Err(detail)) => Err(BackupFail::NotHealthy {
                app: app.to_string(),
                detail,
            }),
        };
        let reason = match &result {
            Ok(c) => format!("`{name}` from backup {}: {}", backup.id, c.summary),
            Err(e) => crate::chain(e),
        };
        let res = if result.is_ok() {
            "succeeded"
        } else {
            "failed"
        };
        if let Err(e) = self.db(|s| s.finish_operation(op.id, res, Some(&reason), None)) {
            tracing::error!(error = %e, "cannot record the end of a restore");
        }
        self.event(Some(app), &format!("restore.{res}"), Some(name), &reason);
        let checked = result?;
        Ok(RestoreResult {
            app: app.to_string(),
            name: name.to_string(),
            backup: backup.id,
            services,
            checked: checked.summary,
            tables: checked.tables,
            duration_ms: started.elapsed().as_millis() as i64,
        })
    }

    /// Starts the current release's instances on this host again and waits until they
    /// are admitted. The standby release (stopped for the restore) is not kept warm.
    pub(crate) async fn start_current(
        self: &Arc<Self>,
        spec: &AppSpec,
        release: &str,
    ) -> Result<(), String> {
        let host = self.host_name();
        let ids = self.add_instances_filtered(spec, release, &host, &[])?;
        for id in &ids {
            let a = self.clone();
            let id = id.clone();
            tokio::spawn(async move { a.start_instance(&id).await });
        }
        let cur = self.db(|s| s.current(&spec.app));
        if let Some(Some(mut cur)) = self.noted(Some(&spec.app), "read the current release", cur) {
            if cur.standby.take().is_some() {
                cur.standby_until_ms = None;
                let set = self.db(|s| s.set_current(&cur));
                self.noted(Some(&spec.app), "end the standby window", set);
            }
        }
        let deadline = Instant::now() + spec.deploy.health_deadline;
        loop {
            let waiting: Vec<String> = {
                let rt = self.rt();
                let now = Instant::now();
                ids.iter()
                    .filter(|id| !rt.instances.get(*id).is_some_and(|l| l.admitted(now)))
                    .cloned()
                    .collect()
            };
            if waiting.is_empty() {
                self.sync_routes(&spec.app).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                self.sync_routes(&spec.app).await;
                return Err(format!("`{}` not healthy", waiting.join("`, `")));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }
}

/// Backups a rollback across a migration restores, checked against their checksums
/// before anything stops (`Agent::prepare_rollback_restore`).
pub(crate) struct PreparedRestore {
    app: String,
    items: Vec<(String, i64, PathBuf, Source)>,
}

impl PreparedRestore {
    /// `name` from backup `id`, for each, in order.
    pub(crate) fn describe(&self) -> String {
        self.items
            .iter()
            .map(|(n, id, _, _)| format!("`{n}` from backup {id}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Agent {
    /// Checks each `(name, backup id)` a rollback would restore: the name is in `spec`
    /// (the target release's) or the current one's, the backup is good and its file
    /// matches its checksum. Nothing is stopped or changed.
    pub(crate) async fn prepare_rollback_restore(
        &self,
        spec: &AppSpec,
        backups: &[(String, i64)],
    ) -> Result<PreparedRestore, String> {
        let app = spec.app.clone();
        let current = self.current_spec(&app).ok().map(|(_, s)| s);
        let mut items = Vec::new();
        for (name, id) in backups {
            let bs = match (spec.backups.get(name), &current) {
                (Some(b), _) => b.clone(),
                (None, Some(c)) => self
                    .backup_spec(c, name)
                    .map_err(|e| e.to_string())?
                    .clone(),
                (None, None) => return Err(format!("`{app}` has no backup named `{name}`")),
            };
            let row = self
                .pick_backup(&app, name, Some(*id))
                .map_err(|e| crate::chain(&e))?;
            let file = Self::check_file(&row).await.map_err(|e| crate::chain(&e))?;
            let source = self.source(&app, &bs).map_err(|e| crate::chain(&e))?;
            items.push((name.clone(), *id, file, source));
        }
        Ok(PreparedRestore { app, items })
    }

    /// Restores what `prepare_rollback_restore` checked (the app's instances are stopped
    /// by the caller), each checked by its engine; a summary line per backup.
    /// `restored` is told each line as soon as its backup is in place (the caller journals
    /// it, so recovery knows the data was restored even if the agent dies right after).
    pub(crate) async fn run_rollback_restore(
        &self,
        prepared: PreparedRestore,
        restored: impl Fn(&str),
    ) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        for (name, id, file, source) in prepared.items {
            let _name_guard = self.name_lock(&prepared.app, &name).lock_owned().await;
            let checked = tokio::task::spawn_blocking(move || match source {
                Source::Sqlite(p) => hoist_backup::sqlite::restore(&file, &p),
                Source::Directory(p) => hoist_backup::directory::restore(&file, &p),
                Source::Postgres(t) => hoist_backup::postgres::restore(&t, &file),
            })
            .await
            .map_err(|_| "the restore task stopped unexpectedly".to_string())?
            .map_err(|e| format!("restoring `{name}` from backup {id}: {}", crate::chain(&e)))?;
            let line = format!("`{name}` from backup {id}: {}", checked.summary);
            restored(&line);
            lines.push(line);
            self.event(
                Some(&prepared.app),
                "restore.succeeded",
                Some(&name),
                &format!("backup {id} restored by a rollback: {}", checked.summary),
            );
        }
        Ok(lines)
    }
}

/// The names a request asks for: one (checked) or every backup of the app.
fn names(spec: &AppSpec, name: Option<&str>) -> Result<Vec<String>, BackupFail> {
    match name {
        Some(n) if spec.backups.contains_key(n) => Ok(vec![n.to_string()]),
        Some(n) => Err(BackupFail::NoName {
            app: spec.app.clone(),
            name: n.to_string(),
            known: spec.backups.keys().cloned().collect(),
        }),
        None if spec.backups.is_empty() => Err(BackupFail::NoBackups {
            app: spec.app.clone(),
        }),
        None => Ok(spec.backups.keys().cloned().collect()),
    }
}

/// The operations the API offers, callable without HTTP (`routes.rs` maps requests and
/// answers onto them).
impl Agent {
    /// Every backup record (of `app`, or of all apps), newest first.
    pub(crate) fn list_backups(&self, app: Option<&str>) -> Result<Vec<BackupInfo>, BackupFail> {
        self.recover_backups();
        Ok(self
            .db(|s| s.backups(app, 1000))?
            .into_iter()
            .map(info)
            .collect())
    }

    /// Takes (or, with `verify`, verifies) the named backup of `app`, or all of them; a
    /// scheduled run still going makes a take skip that name.
    pub(crate) async fn take_or_verify(
        self: &Arc<Self>,
        app: &str,
        name: Option<&str>,
        verify: bool,
    ) -> Result<Vec<BackupInfo>, BackupFail> {
        let (_, spec) = self.current_spec(app)?;
        let mut out = Vec::new();
        for name in names(&spec, name)? {
            let done = if verify {
                Some(self.verify_backup(&spec, &name).await?)
            } else {
                match self.take_backup(&spec, &name, "manual").await? {
                    Taken::Recorded(row) => Some(*row),
                    Taken::Skipped(_) => None,
                }
            };
            out.extend(done.map(info));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_name_locks_are_kept_only_while_held() {
        let key = |i: usize| ("boot-t".to_string(), format!("app{i}"), "db".to_string());
        for i in 0..100 {
            let m = name_lock(key(i));
            let _held = m.try_lock().unwrap();
        }
        let held = name_lock(key(0));
        let _guard = held.try_lock().unwrap();
        assert!(
            name_lock(key(0)).try_lock().is_err(),
            "a held name's lock is the one handed out again"
        );
        let kept = locks()
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.0 == "boot-t")
            .count();
        assert_eq!(kept, 1, "only the held name is kept");
    }

    #[test]
    fn a_request_names_one_known_backup_or_all() {
        let spec = |backups: &str| {
            let text = format!("app = \"demo\"\n[services.web]\ncommand = \"x\"\n{backups}");
            hoist_config::parse_str("hoist.toml", &text).unwrap().spec
        };
        let none = spec("");
        assert!(matches!(
            names(&none, None),
            Err(BackupFail::NoBackups { .. })
        ));
        let two = spec("[backups.db]\nsqlite = \"a.db\"\n[backups.files]\nsqlite = \"b.db\"\n");
        assert_eq!(names(&two, None).unwrap(), ["db", "files"]);
        assert_eq!(names(&two, Some("db")).unwrap(), ["db"]);
        match names(&two, Some("nope")) {
            Err(e @ BackupFail::NoName { .. }) => {
                assert_eq!(e.hint().unwrap(), "the app's backups are `db`, `files`")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sources_stay_inside_the_data_dir() {
        let base = Path::new("/r/data/app");
        assert_eq!(inside(base, "db/x.db").unwrap(), base.join("db/x.db"));
        for bad in ["", "/etc/passwd", "../other/x.db", "a/../../x"] {
            assert!(inside(base, bad).is_err(), "{bad}");
        }
    }
}
