//! Safe unpacking of an artifact into a new staging directory: one reader, one pass
//! (see `read`), and every file-system call made relative to a descriptor of the
//! staging directory with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so that no
//! entry can reach outside it even if a check upstream were wrong. On any error the
//! staging directory is removed: no partial release is left behind.
//!
//! It does not decide where releases live or when they become current (the agent does).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, mkdirat, Mode};
use nix::unistd::symlinkat;

use crate::error::{ArtifactError, IoContext};
use crate::hash::Hash;
use crate::manifest::{Limits, Manifest};
use crate::read::{read_artifact, read_tar, Sink};

/// Resolution rules for every path opened beneath the staging directory.
fn beneath() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH
        | ResolveFlag::RESOLVE_NO_SYMLINKS
        | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens `rel` (a checked, relative path) beneath `root` as a directory.
pub(crate) fn open_dir_beneath(
    root: &OwnedFd,
    rel: &str,
    shown: &Path,
) -> Result<OwnedFd, ArtifactError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath());
    openat2(root.as_fd(), if rel.is_empty() { "." } else { rel }, how).at(shown)
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

/// Writes checked entries beneath a directory descriptor.
pub(crate) struct TreeWriter {
    root: OwnedFd,
    root_path: PathBuf,
    dirs: Vec<(String, u32)>,
    /// Write bits to strip from every mode (0o222 for read-only trees).
    strip: u32,
}

impl TreeWriter {
    pub(crate) fn new(root_path: &Path, strip: u32) -> Result<TreeWriter, ArtifactError> {
        let root = nix::fcntl::open(
            root_path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at(root_path)?;
        Ok(TreeWriter {
            root,
            root_path: root_path.to_path_buf(),
            dirs: Vec::new(),
            strip,
        })
    }

    fn shown(&self, path: &str) -> PathBuf {
        self.root_path.join(path)
    }

    pub(crate) fn mkdir(&mut self, path: &str, mode: u32) -> Result<(), ArtifactError> {
        let (parent, name) = split(path);
        let dir = open_dir_beneath(&self.root, parent, &self.shown(parent))?;
        // Created owner-only; the final mode is set in `finish`, after the children.
        mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o700)).at(self.shown(path))?;
        self.dirs.push((path.to_string(), mode));
        Ok(())
    }

    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<(), ArtifactError> {
        let (parent, name) = split(path);
        let dir = open_dir_beneath(&self.root, parent, &self.shown(parent))?;
        symlinkat(target, dir.as_fd(), name).at(self.shown(path))
    }

    /// Creates a new file (never opening an existing one) and returns it.
    pub(crate) fn create(&mut self, path: &str) -> Result<File, ArtifactError> {
        let how = OpenHow::new()
            .flags(
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
            )
            .mode(Mode::from_bits_truncate(0o600))
            .resolve(beneath());
        Ok(File::from(
            openat2(self.root.as_fd(), path, how).at(self.shown(path))?,
        ))
    }

    /// Hardlinks `source` (an absolute path outside the tree, e.g. a blob) at `path`.
    pub(crate) fn link_from(&mut self, source: &Path, path: &str) -> Result<bool, ArtifactError> {
        let (parent, name) = split(path);
        let dir = open_dir_beneath(&self.root, parent, &self.shown(parent))?;
        match nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            source,
            dir.as_fd(),
            name,
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(()) => Ok(true),
            // Across file systems, or where the store's links are exhausted: copy instead.
            Err(
                nix::errno::Errno::EXDEV | nix::errno::Errno::EMLINK | nix::errno::Errno::EPERM,
            ) => Ok(false),
            Err(e) => Err(ArtifactError::io(self.shown(path), e.into())),
        }
    }

    pub(crate) fn set_file_mode(
        &self,
        file: &File,
        path: &str,
        mode: u32,
    ) -> Result<(), ArtifactError> {
        fchmod(file.as_fd(), Mode::from_bits_truncate(mode & !self.strip)).at(self.shown(path))
    }

    /// Syncs and sets directory modes, deepest first (a read-only parent would refuse
    /// its children otherwise).
    pub(crate) fn finish(mut self) -> Result<(), ArtifactError> {
        self.dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, mode) in &self.dirs {
            // fchmod on a descriptor opened beneath the root: no path is re-resolved,
            // and no /proc emulation of AT_SYMLINK_NOFOLLOW is needed.
            let dir = open_dir_beneath(&self.root, path, &self.shown(path))?;
            fchmod(dir.as_fd(), Mode::from_bits_truncate(mode & !self.strip))
                .at(self.shown(path))?;
        }
        // One syncfs instead of an fsync per file: the tree is only used after the
        // caller renames it into place, which must not happen before its bytes are down.
        nix::unistd::syncfs(self.root.as_fd()).at(&self.root_path)?;
        fchmod(
            self.root.as_fd(),
            Mode::from_bits_truncate(0o755 & !self.strip),
        )
        .at(&self.root_path)
    }
}

struct UnpackSink {
    tree: TreeWriter,
    current: Option<(File, String, u32)>,
}

impl Sink for UnpackSink {
    fn dir(&mut self, path: &str, mode: u32) -> Result<(), ArtifactError> {
        self.tree.mkdir(path, mode)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<(), ArtifactError> {
        self.tree.symlink(path, target)
    }

    fn file_start(&mut self, path: &str, mode: u32, _: &Hash) -> Result<bool, ArtifactError> {
        let file = self.tree.create(path)?;
        self.current = Some((file, path.to_string(), mode));
        Ok(true)
    }

    fn file_data(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        let (file, path, _) = self.current.as_mut().expect("file_data after file_start");
        file.write_all(data)
            .map_err(|e| ArtifactError::io(self.tree.shown(path), e))
    }

    fn file_commit(&mut self) -> Result<(), ArtifactError> {
        let (file, path, mode) = self.current.take().expect("file_commit after file_start");
        self.tree.set_file_mode(&file, &path, mode)
    }
}

/// Creates `staging` (which must not exist; its parent must) and unpacks the compressed
/// artifact read from `reader` into it, verifying every entry on the way. On error,
/// `staging` is removed and nothing else was touched.
pub fn unpack(
    reader: impl Read,
    staging: &Path,
    limits: &Limits,
) -> Result<Manifest, ArtifactError> {
    unpack_with(staging, |sink| read_artifact(reader, limits, sink))
}

/// [`unpack`] for an uncompressed tar stream. For the fuzzer.
#[doc(hidden)]
pub fn unpack_tar(
    reader: impl Read,
    staging: &Path,
    limits: &Limits,
) -> Result<Manifest, ArtifactError> {
    unpack_with(staging, |sink| read_tar(reader, limits, sink))
}

fn unpack_with(
    staging: &Path,
    read: impl FnOnce(&mut dyn Sink) -> Result<Manifest, ArtifactError>,
) -> Result<Manifest, ArtifactError> {
    match std::fs::create_dir(staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(ArtifactError::Exists {
                path: staging.to_path_buf(),
            })
        }
        Err(e) => return Err(ArtifactError::io(staging, e)),
    }
    let result = (|| {
        let mut sink = UnpackSink {
            tree: TreeWriter::new(staging, 0)?,
            current: None,
        };
        let manifest = read(&mut sink)?;
        sink.current = None;
        sink.tree.finish()?;
        Ok(manifest)
    })();
    if let Err(err) = &result {
        tracing::warn!(staging = %staging.display(), error = %err, "unpack refused; removing the staging directory");
        if let Err(e) = remove_tree(staging) {
            tracing::error!(staging = %staging.display(), error = %e, "cannot remove the staging directory");
        }
    }
    result
}

/// Removes a tree this crate wrote, read-only directories included.
pub fn remove_tree(path: &Path) -> Result<(), ArtifactError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ArtifactError::io(path, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path).at(path);
    }
    // Directories may be read-only (materialised trees): make them writable first. Never
    // follows symlinks, so nothing outside the tree changes mode.
    for entry in walkdir::WalkDir::new(path).follow_links(false) {
        let entry = entry.map_err(|e| {
            let p = e.path().unwrap_or(path).to_path_buf();
            ArtifactError::io(p, e.into())
        })?;
        if entry.file_type().is_dir() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700))
                .at(entry.path())?;
        }
    }
    std::fs::remove_dir_all(path).at(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Defence in depth: even if a symlink were somehow in the tree (the manifest rules
    /// forbid writing beneath one), no write may follow it out of the staging directory.
    #[test]
    fn writes_never_follow_a_symlink_out_of_the_tree() {
        let base = tempfile::tempdir().unwrap();
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let staging = base.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        std::os::unix::fs::symlink(&outside, staging.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside", staging.join("rel")).unwrap();
        std::os::unix::fs::symlink(".", staging.join("here")).unwrap();
        let mut tree = TreeWriter::new(&staging, 0).unwrap();
        for path in [
            "abs/evil",
            "rel/evil",
            "here/evil",
            "abs",
            "../outside/evil",
        ] {
            assert!(tree.create(path).is_err(), "created `{path}`");
        }
        assert!(tree.mkdir("abs/sub", 0o755).is_err());
        assert!(tree.symlink("rel/link", "x").is_err());
        assert!(tree.link_from(&staging.join("here"), "rel/hard").is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
