//! Where the agent keeps things under its root. One place, so the layout is easy to see:
//!
//! ```text
//! <root>/state.db            SQLite (WAL): journal, history, instances, events
//! <root>/alerts.json         firing alerts and their last notification
//! <root>/minutes.db          SQLite (WAL): per-minute traffic aggregates, 28 days
//! <root>/agent.lock          held (flock) by the one live agent of this root
//! <root>/host                this host's name in the app file (from the last deploy)
//! <root>/store/              content-addressed blobs and manifests
//! <root>/releases/<app>/<r>/ materialised, read-only release trees
//! <root>/data/<app>/         HOIST_DATA_DIR: the app's persistent data
//! <root>/secrets/<app>.json  secret values, mode 0600
//! <root>/logs/<app>/<svc>/   instance logs, written by the shims
//! <root>/run/                shim identity records
//! <root>/proxy/              the proxy's control socket, state and access log
//! <root>/tmp/                uploads and staging, same filesystem as the store
//! ```

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }
    pub fn state_db(&self) -> PathBuf {
        self.root.join("state.db")
    }
    /// The firing alerts and their last notification (`alerts.rs`).
    pub fn alerts_file(&self) -> PathBuf {
        self.root.join("alerts.json")
    }
    /// Per-minute traffic aggregates (`hoist-state::minutes`).
    pub fn minutes_db(&self) -> PathBuf {
        self.root.join("minutes.db")
    }
    /// This host's name in the app file, as the last deploy gave it.
    pub fn host_file(&self) -> PathBuf {
        self.root.join("host")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("agent.lock")
    }
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn releases(&self, app: &str) -> PathBuf {
        self.root.join("releases").join(app)
    }
    pub fn release_dir(&self, app: &str, release: &str) -> PathBuf {
        self.releases(app).join(release)
    }
    pub fn data_dir(&self, app: &str) -> PathBuf {
        self.root.join("data").join(app)
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    pub fn logs(&self, app: &str) -> PathBuf {
        self.root.join("logs").join(app)
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    pub fn proxy_dir(&self) -> PathBuf {
        self.root.join("proxy")
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Creates the layout; private directories are 0700 so that another user of the
    /// host can read neither secrets nor logs.
    pub fn create(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [
            self.root.clone(),
            self.store(),
            self.root.join("releases"),
            self.root.join("data"),
            self.secrets_dir(),
            self.root.join("logs"),
            self.run_dir(),
            self.proxy_dir(),
            self.tmp(),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
        }
        self.make_private()
    }

    /// Whatever the agent finds (a root the operator made 0755, files an older agent
    /// wrote 0644): the root and the directories holding state, secrets, logs and
    /// identity records are 0700, the state database's files 0600. The root alone being
    /// 0700 already keeps every other user out of everything beneath it.
    pub fn make_private(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let private = std::fs::Permissions::from_mode(0o700);
        for dir in [
            self.root.clone(),
            self.secrets_dir(),
            self.root.join("logs"),
            self.run_dir(),
            self.proxy_dir(),
            self.tmp(),
        ] {
            std::fs::set_permissions(&dir, private.clone())?;
        }
        for name in [
            "state.db",
            "state.db-wal",
            "state.db-shm",
            "minutes.db",
            "minutes.db-wal",
            "minutes.db-shm",
        ] {
            match std::fs::set_permissions(
                self.root.join(name),
                std::fs::Permissions::from_mode(0o600),
            ) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Paths {
    /// Lets apps running as their own user (group `gid`) reach what is theirs: the root
    /// becomes 0711 (passable, not listable; state, secrets, logs and records stay 0700
    /// inside it), `releases` 2750 of group `gid` (read-only to apps; the setgid bit gives
    /// new release trees the group), `data` 0750 of group `gid`. Release trees made before
    /// are given the group once.
    pub fn share_with_apps(&self, gid: nix::unistd::Gid) -> std::io::Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(&self.root, std::fs::Permissions::from_mode(0o711))?;
        let releases = self.root.join("releases");
        let regroup = std::fs::metadata(&releases)?.gid() != gid.as_raw();
        for (dir, mode) in [(&releases, 0o2750), (&self.root.join("data"), 0o750)] {
            nix::unistd::chown(dir.as_path(), None, Some(gid)).map_err(std::io::Error::from)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
        }
        if regroup {
            regroup_tree(&releases, gid)?;
        }
        Ok(())
    }

    /// An app's data directory, owned by the user its apps run as (created if missing).
    pub fn give_data_dir(
        &self,
        app: &str,
        owner: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let dir = self.data_dir(app);
        std::fs::create_dir_all(&dir)?;
        if let Some((uid, gid)) = owner {
            let meta = std::fs::metadata(&dir)?;
            if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
                nix::unistd::chown(&dir, Some(uid), Some(gid)).map_err(std::io::Error::from)?;
            }
        }
        Ok(())
    }
}

/// Gives everything under `dir` the group `gid` (directories also the setgid bit), without
/// following symlinks.
fn regroup_tree(dir: &Path, gid: nix::unistd::Gid) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &path,
            None,
            Some(gid),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            let mode = entry.metadata()?.permissions().mode() & 0o7777;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | 0o2050))?;
            regroup_tree(&path, gid)?;
        } else if ft.is_file() {
            let mode = entry.metadata()?.permissions().mode() & 0o7777;
            // Readable (and runnable, if it was) by the group.
            let group = 0o040 | if mode & 0o100 != 0 { 0o010 } else { 0 };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode | group))?;
        }
    }
    Ok(())
}

/// Writes `bytes` to `path` so that a reader sees the old content or the new, never a
/// torn file: temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
