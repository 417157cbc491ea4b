//! A backup file's life on disk: written under a temporary name, then sealed (fsync,
//! sha256 and size, mode 0600, renamed into place, directory fsynced) so that a file
//! with its final name is always complete; checked again against its record before any
//! restore. It does not decide where files live (the caller does).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{BackupError, Result};

/// The facts recorded for a sealed backup file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// Where a file is written before it is sealed: beside its final place (same
/// filesystem, so the rename is atomic), hidden, and named after the final file.
pub fn partial_path(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "backup".into());
    final_path.with_file_name(format!(".{name}.partial"))
}

/// Makes `partial` durable, hashes it and renames it to `final_path`.
pub fn seal(partial: &Path, final_path: &Path) -> Result<Sealed> {
    use std::os::unix::fs::PermissionsExt;
    let f = std::fs::File::open(partial).map_err(BackupError::io(partial))?;
    f.sync_all().map_err(BackupError::io(partial))?;
    std::fs::set_permissions(partial, std::fs::Permissions::from_mode(0o600))
        .map_err(BackupError::io(partial))?;
    let (sha256, size) = hash_file(partial)?;
    std::fs::rename(partial, final_path).map_err(BackupError::io(final_path))?;
    sync_dir(final_path)?;
    Ok(Sealed {
        path: final_path.to_path_buf(),
        sha256,
        size,
    })
}

/// Who owns what a restore replaces: the target's owner and mode when it exists, else
/// its directory's owner (the app's data directory) with the mode left as made.
#[derive(Debug, Clone, Copy)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub mode: Option<u32>,
}

impl Owner {
    pub fn of_target(target: &Path) -> Option<Owner> {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(target) {
            return Some(Owner {
                uid: m.uid(),
                gid: m.gid(),
                mode: Some(m.mode() & 0o7777),
            });
        }
        let m = std::fs::metadata(target.parent()?).ok()?;
        Some(Owner {
            uid: m.uid(),
            gid: m.gid(),
            mode: None,
        })
    }

    /// Gives `path` (not following a symlink) this owner, and the mode for the top
    /// entry when `top`. The app runs as its own user: a restored database it cannot
    /// write would take it down. EPERM (an agent that is not root restoring its own
    /// files) keeps the agent's ownership, as before.
    pub fn apply(&self, path: &Path, top: bool) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        match std::os::unix::fs::lchown(path, Some(self.uid), Some(self.gid)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(1) => {}
            Err(e) => return Err(BackupError::io(path)(e)),
        }
        if let (true, Some(mode)) = (top, self.mode) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(BackupError::io(path))?;
        }
        Ok(())
    }

    /// `apply` to a whole unpacked tree (the top entry gets the mode too).
    pub fn apply_tree(&self, root: &Path) -> Result<()> {
        self.apply(root, true)?;
        let Ok(entries) = std::fs::read_dir(root) else {
            return Ok(());
        };
        for e in entries {
            let e = e.map_err(BackupError::io(root))?;
            let path = e.path();
            let dir = e.file_type().map_err(BackupError::io(&path))?.is_dir();
            if dir {
                let Owner { uid, gid, .. } = *self;
                Owner {
                    uid,
                    gid,
                    mode: None,
                }
                .apply_tree(&path)?;
            } else {
                self.apply(&path, false)?;
            }
        }
        Ok(())
    }
}

/// sha256 (hex) and size of a file, in one read.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(BackupError::io(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(BackupError::io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(h.finalize()), size))
}

/// Refuses a file whose size or sha256 differs from what was recorded when it was
/// sealed: a flipped byte is found here, before anything is stopped.
pub fn verify(path: &Path, sha256: &str, size: u64) -> Result<()> {
    let found_size = std::fs::metadata(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => BackupError::Missing {
                path: path.to_path_buf(),
            },
            _ => BackupError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?
        .len();
    if found_size != size {
        return Err(BackupError::Checksum {
            path: path.to_path_buf(),
            detail: format!("size is {found_size} bytes, recorded {size}"),
        });
    }
    let (found, _) = hash_file(path)?;
    if found != sha256 {
        return Err(BackupError::Checksum {
            path: path.to_path_buf(),
            detail: format!("sha256 is `{found}`, recorded `{sha256}`"),
        });
    }
    Ok(())
}

/// Copies a sealed file to a second place (a mounted volume), sealing it there too.
pub fn copy_sealed(from: &Path, to: &Path) -> Result<Sealed> {
    let partial = partial_path(to);
    {
        let mut src = std::fs::File::open(from).map_err(BackupError::io(from))?;
        let mut dst = create_private(&partial)?;
        std::io::copy(&mut src, &mut dst).map_err(BackupError::io(&partial))?;
        dst.flush().map_err(BackupError::io(&partial))?;
    }
    seal(&partial, to)
}

/// Creates (truncating) a file only its owner can read.
pub fn create_private(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(BackupError::io(path))
}

/// fsyncs the directory holding `path`, so a rename in it survives a power cut.
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BackupError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_file_verifies_and_a_flipped_byte_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("b.bin");
        let part = partial_path(&fin);
        std::fs::write(&part, b"hello backup").unwrap();
        let s = seal(&part, &fin).unwrap();
        assert!(!part.exists());
        assert_eq!(s.size, 12);
        verify(&fin, &s.sha256, s.size).unwrap();
        let mut bytes = std::fs::read(&fin).unwrap();
        bytes[3] ^= 1;
        std::fs::write(&fin, &bytes).unwrap();
        let err = verify(&fin, &s.sha256, s.size).unwrap_err();
        assert!(matches!(err, BackupError::Checksum { .. }), "{err}");
        std::fs::write(&fin, b"short").unwrap();
        assert!(matches!(
            verify(&fin, &s.sha256, s.size),
            Err(BackupError::Checksum { .. })
        ));
        std::fs::remove_file(&fin).unwrap();
        assert!(matches!(
            verify(&fin, &s.sha256, s.size),
            Err(BackupError::Missing { .. })
        ));
    }

    #[test]
    fn sealed_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("b.bin");
        std::fs::write(partial_path(&fin), b"x").unwrap();
        let s = seal(&partial_path(&fin), &fin).unwrap();
        let copy = copy_sealed(&s.path, &dir.path().join("copy.bin")).unwrap();
        assert_eq!(copy.sha256, s.sha256);
        for p in [&s.path, &copy.path] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
