//! Secret values per app, in `<root>/secrets/<app>.json` (mode 0600, written atomically).
//! Values leave this module only into an instance's environment; names are all that any
//! listing, log line or API answer ever shows.

use std::collections::BTreeMap;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::paths::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("cannot read secrets of `{app}` from `{path}`")]
    Read {
        app: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write secrets of `{app}` to `{path}`")]
    Write {
        app: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets file `{path}` is not valid")]
    Corrupt { path: PathBuf },
    /// The app, the name or the value breaks the rules the app file follows.
    #[error(transparent)]
    Refused(#[from] hoist_core::names::SecretRefusal),
}

pub struct Secrets {
    dir: PathBuf,
}

impl Secrets {
    pub fn new(dir: &Path) -> Secrets {
        Secrets {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, app: &str) -> PathBuf {
        self.dir.join(format!("{app}.json"))
    }

    /// All values of `app` (for an instance's environment only).
    pub fn values(&self, app: &str) -> Result<BTreeMap<String, String>, SecretsError> {
        let path = self.path(app);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|_| SecretsError::Corrupt { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(source) => Err(SecretsError::Read {
                app: app.to_string(),
                path,
                source,
            }),
        }
    }

    pub fn names(&self, app: &str) -> Result<Vec<String>, SecretsError> {
        Ok(self.values(app)?.into_keys().collect())
    }

    pub fn set(&self, app: &str, name: &str, value: &str) -> Result<(), SecretsError> {
        hoist_core::names::check_secret(app, name, Some(value))?;
        let _lock = self.lock(app)?;
        let mut all = self.values(app)?;
        all.insert(name.to_string(), value.to_string());
        self.save(app, &all)
    }

    /// Removes `name`; true if it existed.
    pub fn unset(&self, app: &str, name: &str) -> Result<bool, SecretsError> {
        let _lock = self.lock(app)?;
        let mut all = self.values(app)?;
        let existed = all.remove(name).is_some();
        if existed {
            self.save(app, &all)?;
        }
        Ok(existed)
    }

    /// Read-modify-write of the file is serialised by an exclusive `flock` on a lock file
    /// beside it (held until the guard drops): two concurrent `set`s each keep the other's
    /// name. A lock file, not the secrets file itself, because the latter is replaced by
    /// rename and a lock on the old inode would not exclude a writer of the new one.
    fn lock(&self, app: &str) -> Result<nix::fcntl::Flock<std::fs::File>, SecretsError> {
        let path = self.dir.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|source| SecretsError::Write {
                app: app.to_string(),
                path: path.clone(),
                source,
            })?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
            SecretsError::Write {
                app: app.to_string(),
                path,
                source: e.into(),
            }
        })
    }

    fn save(&self, app: &str, all: &BTreeMap<String, String>) -> Result<(), SecretsError> {
        let path = self.path(app);
        let bytes = serde_json::to_vec(all).expect("a map of strings serialises");
        write_atomic(&path, &bytes, 0o600).map_err(|source| SecretsError::Write {
            app: app.to_string(),
            path,
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn values_are_kept_0600_and_listed_by_name_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::new(dir.path());
        s.set("notes", "DATABASE_URL", "postgres://x").unwrap();
        s.set("notes", "API_KEY", "k").unwrap();
        assert_eq!(s.names("notes").unwrap(), vec!["API_KEY", "DATABASE_URL"]);
        let mode = std::fs::metadata(dir.path().join("notes.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.unset("notes", "API_KEY").unwrap());
        assert!(!s.unset("notes", "API_KEY").unwrap());
        assert_eq!(
            s.values("notes").unwrap().get("DATABASE_URL").unwrap(),
            "postgres://x"
        );
        assert!(matches!(
            s.set("notes", "1BAD", "v"),
            Err(SecretsError::Refused(_))
        ));
    }

    /// Twenty concurrent `set`s of different names (threads, each its own lock file
    /// descriptor, as concurrent requests are): every name is kept.
    #[test]
    fn concurrent_sets_keep_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Secrets::new(dir.path()));
        let threads: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || s.set("notes", &format!("NAME_{i}"), "v").unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.names("notes").unwrap().len(), 20);
    }
}
