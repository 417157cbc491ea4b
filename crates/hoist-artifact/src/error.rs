//! The errors of reading, verifying, unpacking and storing artifacts. Every variant
//! names what it is about (the entry, the file, the blob) so the CLI can print it as is.
//! Build errors live in `build` (they concern the project tree, not an artifact).

use std::io;
use std::path::PathBuf;

use crate::hash::Hash;

/// Why an entry of an artifact (or of a manifest) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("absolute path")]
    AbsolutePath,
    #[error("`..` component in path")]
    ParentComponent,
    #[error("invalid path: {0}")]
    BadPath(&'static str),
    #[error("hardlinks are not allowed")]
    Hardlink,
    #[error("device files are not allowed")]
    Device,
    #[error("fifos are not allowed")]
    Fifo,
    #[error("pax extended headers are not allowed")]
    PaxHeader,
    #[error("unsupported tar entry type `{0}`")]
    UnsupportedType(char),
    #[error("malformed tar header: {0}")]
    BadHeader(&'static str),
    #[error("symlink target `{target}` leaves the release tree")]
    SymlinkEscapes { target: String },
    #[error("symlink target `{target}` is invalid: {why}")]
    BadSymlinkTarget { target: String, why: &'static str },
    #[error("its parent is not a directory listed before it in the manifest")]
    ParentNotDirectory,
    #[error("duplicate path")]
    Duplicate,
    #[error("entries are not sorted by path")]
    Unsorted,
    #[error("not listed in the manifest")]
    NotInManifest,
    #[error("listed in the manifest but missing from the archive")]
    Missing,
    #[error("is a {found} in the archive but a {expected} in the manifest")]
    KindMismatch {
        expected: &'static str,
        found: &'static str,
    },
    #[error("mode {found:04o} differs from the manifest's {expected:04o}")]
    ModeMismatch { expected: u32, found: u32 },
    #[error("size {found} differs from the manifest's {expected}")]
    SizeMismatch { expected: u64, found: u64 },
    #[error("sha-256 `{found}` differs from the manifest's `{expected}`")]
    HashMismatch { expected: Hash, found: Hash },
    #[error("symlink target `{found}` differs from the manifest's `{expected}`")]
    TargetMismatch { expected: String, found: String },
    #[error(
        "mode {0:04o} is not allowed (setuid, setgid, sticky and world-writable bits are refused)"
    )]
    BadMode(u32),
    #[error("the archive ends inside this entry")]
    Truncated,
    #[error("the file on disk differs: {0}")]
    OnDisk(String),
}

/// What went wrong with an artifact, a release tree or the store.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// One entry was refused; the artifact as a whole is rejected.
    #[error("entry `{entry}`: {reason}")]
    Entry { entry: String, reason: Refusal },

    /// The manifest is missing, malformed or over a limit.
    #[error("manifest: {0}")]
    Manifest(String),

    /// The first entry is not `hoist-release.json`.
    #[error("the first entry is `{found}`, not the manifest `hoist-release.json`")]
    ManifestNotFirst { found: String },

    /// A limit was exceeded (decompression bomb or oversized artifact).
    #[error("{what} exceeds the limit of {limit}")]
    Limit { what: String, limit: u64 },

    /// The compressed stream or the tar stream is broken (truncated zstd, bad frame).
    #[error("the archive is truncated or corrupt{}: {source}", after.as_ref().map(|e| format!(" after entry `{e}`")).unwrap_or_default())]
    Corrupt {
        after: Option<String>,
        source: io::Error,
    },

    /// Something other than zero padding follows the end of the tar archive.
    #[error("unexpected data after the end of the archive")]
    TrailingData,

    /// A file-system operation on a named path failed.
    #[error("`{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    /// The destination of an unpack or materialise already exists.
    #[error("`{}` already exists", path.display())]
    Exists { path: PathBuf },

    /// A blob the operation needs is not in the store.
    #[error("blob `{hash}` is not in the store")]
    MissingBlob { hash: Hash },

    /// A release's manifest is not in the store.
    #[error("release `{release}` is not in the store")]
    MissingRelease { release: String },

    /// A blob received or stored does not hash to its name.
    #[error("blob `{expected}` has content hashing to `{found}`")]
    BlobMismatch { expected: Hash, found: Hash },

    /// A blob stream is malformed.
    #[error("blob stream: {0}")]
    Stream(String),
}

impl ArtifactError {
    /// Whether the file system ran out of space (ENOSPC or EDQUOT) under this error.
    pub fn is_disk_full(&self) -> bool {
        match self {
            ArtifactError::Io { source, .. } | ArtifactError::Corrupt { source, .. } => {
                matches!(source.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
            }
            _ => false,
        }
    }

    pub(crate) fn entry(entry: impl Into<String>, reason: Refusal) -> Self {
        ArtifactError::Entry {
            entry: entry.into(),
            reason,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        ArtifactError::Io {
            path: path.into(),
            source,
        }
    }

    /// The refusal, when the error is about one entry.
    pub fn refusal(&self) -> Option<(&str, &Refusal)> {
        match self {
            ArtifactError::Entry { entry, reason } => Some((entry, reason)),
            _ => None,
        }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ArtifactError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ArtifactError> {
        self.map_err(|e| ArtifactError::io(path, e))
    }
}

impl<T> IoContext<T> for nix::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, ArtifactError> {
        self.map_err(|e| ArtifactError::io(path, io::Error::from(e)))
    }
}
