//! The host's content-addressed release store: blobs named by their SHA-256, manifests
//! by release id, and release trees materialised from them (hardlinks, read-only), so
//! releases share unchanged files on disk and a redeploy needs only the new blobs.
//!
//! ```text
//! <root>/blobs/ab/abcdef…      file content, mode 0444
//! <root>/blobs/ab/abcdef….x    the same content, mode 0555, for executable files
//! <root>/manifests/<id>.json   canonical manifests
//! <root>/tmp/                  in-flight writes; nothing here is ever read
//! ```
//!
//! Invariants: a blob is visible under its name only after its bytes were hashed and
//! synced (write to `tmp/`, fsync, rename); a materialised tree is visible at its final
//! path only once complete. The store has one writer (the agent): `gc` must not run
//! concurrently with an ingest. Materialised trees are read-only by mode; an app running
//! as root could still write them (and so every release sharing the blob), so the agent
//! runs apps as an unprivileged user.
//!
//! A transfer in progress holds its blobs against `gc` with a *pin*: from the answer
//! "these I have, send me those" until its release is recorded (after which the caller's
//! `keep` list protects it), blobs the host had and blobs just received are not
//! collected, whichever app's prune runs `gc` meanwhile (content is shared across apps).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
use tempfile::{NamedTempFile, TempPath};

use crate::error::{ArtifactError, IoContext, Refusal};
use crate::hash::{hash_reader, Hash, HashingWriter};
use crate::manifest::{EntryKind, Limits, Manifest, ReleaseId};
use crate::read::{read_artifact, Sink};
use crate::unpack::{remove_tree, TreeWriter};

/// A content-addressed store rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Transfers in progress: key → the blobs `gc` must keep, and until when (a sender
    /// that vanished lets go when its pin expires). Shared by the store's clones.
    pins: Arc<Mutex<HashMap<String, Pin>>>,
}

#[derive(Debug)]
struct Pin {
    blobs: HashSet<Hash>,
    until: Instant,
}

/// What `materialise` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaterialiseReport {
    /// Files hardlinked from the store (sharing its inodes).
    pub linked: usize,
    /// Files copied because the destination is on another file system.
    pub copied: usize,
}

/// What `gc` removed and kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed_blobs: usize,
    pub removed_bytes: u64,
    pub kept_blobs: usize,
    pub removed_manifests: usize,
}

/// The mode a file has in a materialised (read-only) tree.
pub fn read_only_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 {
        0o555
    } else {
        0o444
    }
}

impl Store {
    /// Opens the store at `root`, creating its directories if needed.
    pub fn open(root: &Path) -> Result<Store, ArtifactError> {
        for sub in ["blobs", "manifests", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).at(&p)?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            pins: Arc::default(),
        })
    }

    /// Holds `blobs` against [`Store::gc`] under `key` (one transfer: adding to a key
    /// extends its set and its time) until [`Store::unpin`] or until `ttl` has passed.
    pub fn pin(&self, key: &str, blobs: impl IntoIterator<Item = Hash>, ttl: Duration) {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let pin = pins.entry(key.to_string()).or_insert_with(|| Pin {
            blobs: HashSet::new(),
            until: Instant::now(),
        });
        pin.blobs.extend(blobs);
        pin.until = Instant::now() + ttl;
    }

    /// Lets go of the blobs pinned under `key`.
    pub fn unpin(&self, key: &str) {
        self.pins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The blobs pinned now (expired pins are dropped).
    pub fn pinned(&self) -> HashSet<Hash> {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        pins.retain(|_, p| p.until > now);
        pins.values()
            .flat_map(|p| p.blobs.iter().copied())
            .collect()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob `hash` lives (whether or not it is there).
    pub fn blob_path(&self, hash: &Hash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    fn exec_blob_path(&self, hash: &Hash) -> PathBuf {
        let mut p = self.blob_path(hash).into_os_string();
        p.push(".x");
        PathBuf::from(p)
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Whether the blob `hash` is in the store.
    pub fn has(&self, hash: &Hash) -> bool {
        self.blob_path(hash).is_file()
    }

    /// The blobs of `manifest` the store lacks, sorted: what a transfer must send.
    pub fn missing(&self, manifest: &Manifest) -> Vec<Hash> {
        manifest
            .blobs()
            .into_iter()
            .filter(|h| !self.has(h))
            .collect()
    }

    /// Stores one blob read from `reader`, refusing it unless it hashes to `expected`.
    /// Nothing becomes visible unless it does.
    pub fn put_blob(&self, reader: impl Read, expected: &Hash) -> Result<u64, ArtifactError> {
        let tmp = NamedTempFile::new_in(self.tmp()).at(self.tmp())?;
        let mut w = HashingWriter::new(io::BufWriter::new(tmp));
        io::copy(&mut reader.take(u64::MAX), &mut w).at(self.blob_path(expected))?;
        let (buf, found, size) = w.finish();
        if found != *expected {
            return Err(ArtifactError::BlobMismatch {
                expected: *expected,
                found,
            });
        }
        let tmp = buf
            .into_inner()
            .map_err(|e| ArtifactError::io(self.tmp(), e.into_error()))?;
        tmp.as_file().sync_all().at(tmp.path())?;
        self.commit_blob(tmp.into_temp_path(), expected)?;
        self.sync_blob_dir(expected)?;
        Ok(size)
    }

    fn commit_blob(&self, tmp: TempPath, hash: &Hash) -> Result<(), ArtifactError> {
        let dest = self.blob_path(hash);
        let dir = dest.parent().expect("blob path has a parent");
        fs::create_dir_all(dir).at(dir)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o444)).at(&*tmp)?;
        tmp.persist(&dest)
            .map_err(|e| ArtifactError::io(&dest, e.error))
    }

    fn sync_blob_dir(&self, hash: &Hash) -> Result<(), ArtifactError> {
        let dest = self.blob_path(hash);
        let dir = dest.parent().expect("blob path has a parent");
        File::open(dir).and_then(|d| d.sync_all()).at(dir)
    }

    /// Opens a stored blob for reading.
    pub fn open_blob(&self, hash: &Hash) -> Result<File, ArtifactError> {
        let path = self.blob_path(hash);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ArtifactError::MissingBlob { hash: *hash },
            _ => ArtifactError::io(&path, e),
        })
    }

    /// Records a manifest (atomically: temp file, fsync, rename, fsync of the directory).
    pub fn put_manifest(&self, manifest: &Manifest) -> Result<(), ArtifactError> {
        let dest = self.manifest_path(manifest.release());
        let mut tmp = NamedTempFile::new_in(self.tmp()).at(self.tmp())?;
        tmp.write_all(&manifest.to_json()).at(tmp.path())?;
        tmp.as_file().sync_all().at(tmp.path())?;
        tmp.persist(&dest)
            .map_err(|e| ArtifactError::io(&dest, e.error))?;
        let dir = self.root.join("manifests");
        File::open(&dir).and_then(|d| d.sync_all()).at(&dir)
    }

    fn manifest_path(&self, release: &ReleaseId) -> PathBuf {
        self.root.join("manifests").join(format!("{release}.json"))
    }

    /// The stored manifest of `release`.
    pub fn manifest(&self, release: &ReleaseId) -> Result<Manifest, ArtifactError> {
        let path = self.manifest_path(release);
        let bytes = fs::read(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ArtifactError::MissingRelease {
                release: release.to_string(),
            },
            _ => ArtifactError::io(&path, e),
        })?;
        // Our own file, but read back with the same checks: it is the input to unpacking.
        let limits = Limits {
            max_manifest_bytes: u64::MAX,
            max_entries: usize::MAX,
            max_total_bytes: u64::MAX,
        };
        Manifest::parse(&bytes, &limits)
    }

    /// The releases whose manifests are stored, sorted.
    pub fn releases(&self) -> Result<Vec<ReleaseId>, ArtifactError> {
        let dir = self.root.join("manifests");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).at(&dir)? {
            let entry = entry.at(&dir)?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(ReleaseId::parse)
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Verifies a compressed artifact and puts its blobs and manifest into the store, in
    /// one pass. Blobs already present are checked but not rewritten.
    pub fn ingest_artifact(
        &self,
        reader: impl Read,
        limits: &Limits,
    ) -> Result<Manifest, ArtifactError> {
        let mut sink = IngestSink {
            store: self,
            current: None,
            pending: Vec::new(),
            seen: HashSet::new(),
        };
        let manifest = read_artifact(reader, limits, &mut sink)?;
        // One syncfs for all new blobs, then the renames that make them visible.
        let tmp = File::open(self.tmp()).at(self.tmp())?;
        nix::unistd::syncfs(tmp.as_fd()).at(self.tmp())?;
        let pending = std::mem::take(&mut sink.pending);
        let mut dirs = HashSet::new();
        for (path, hash) in pending {
            self.commit_blob(path, &hash)?;
            dirs.insert(hash.to_hex()[..2].to_string());
        }
        for d in dirs {
            let dir = self.root.join("blobs").join(d);
            File::open(&dir).and_then(|f| f.sync_all()).at(&dir)?;
        }
        self.put_manifest(&manifest)?;
        Ok(manifest)
    }

    /// Materialises `manifest`'s tree at `dest` (which must not exist): directories and
    /// files read-only, files hardlinked from the store where the file system allows,
    /// copied otherwise. Built beside `dest` and renamed into place, so a crash never
    /// leaves a half-built tree at `dest`.
    pub fn materialise(
        &self,
        manifest: &Manifest,
        dest: &Path,
    ) -> Result<MaterialiseReport, ArtifactError> {
        if let Some(hash) = self.missing(manifest).first() {
            return Err(ArtifactError::MissingBlob { hash: *hash });
        }
        if fs::symlink_metadata(dest).is_ok() {
            return Err(ArtifactError::Exists {
                path: dest.to_path_buf(),
            });
        }
        let name = dest
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("release");
        let parent = dest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let staging = parent.join(format!(".{name}.hoist-tmp"));
        // A leftover from a crash mid-materialise: never used, rebuilt from scratch.
        remove_tree(&staging)?;
        fs::create_dir(&staging).at(&staging)?;
        let result = self.fill(manifest, &staging).and_then(|report| {
            renameat2(
                AT_FDCWD,
                &staging,
                AT_FDCWD,
                dest,
                RenameFlags::RENAME_NOREPLACE,
            )
            .map_err(|e| match e {
                nix::errno::Errno::EEXIST | nix::errno::Errno::ENOTEMPTY => ArtifactError::Exists {
                    path: dest.to_path_buf(),
                },
                e => ArtifactError::io(dest, e.into()),
            })?;
            File::open(parent).and_then(|d| d.sync_all()).at(parent)?;
            Ok(report)
        });
        if result.is_err() {
            let _ = remove_tree(&staging);
        }
        result
    }

    fn fill(
        &self,
        manifest: &Manifest,
        staging: &Path,
    ) -> Result<MaterialiseReport, ArtifactError> {
        let mut tree = TreeWriter::new(staging, 0o222)?;
        let mut report = MaterialiseReport::default();
        for e in manifest.entries() {
            match &e.kind {
                EntryKind::Dir { mode } => tree.mkdir(&e.path, *mode)?,
                EntryKind::Symlink { target } => tree.symlink(&e.path, target)?,
                EntryKind::File { sha256, mode, .. } => {
                    let source = if mode & 0o111 != 0 {
                        self.exec_blob(sha256)?
                    } else {
                        self.blob_path(sha256)
                    };
                    if tree.link_from(&source, &e.path)? {
                        report.linked += 1;
                    } else {
                        let mut file = tree.create(&e.path)?;
                        let mut src = File::open(&source).at(&source)?;
                        io::copy(&mut src, &mut file).at(staging.join(&e.path))?;
                        tree.set_file_mode(&file, &e.path, *mode)?;
                        report.copied += 1;
                    }
                }
            }
        }
        tree.finish()?;
        Ok(report)
    }

    /// The executable variant of a blob (hardlinks share a mode, so 0555 content needs
    /// its own inode), made on first use.
    fn exec_blob(&self, hash: &Hash) -> Result<PathBuf, ArtifactError> {
        let dest = self.exec_blob_path(hash);
        if dest.is_file() {
            return Ok(dest);
        }
        let mut tmp = NamedTempFile::new_in(self.tmp()).at(self.tmp())?;
        let mut src = self.open_blob(hash)?;
        io::copy(&mut src, tmp.as_file_mut()).at(tmp.path())?;
        tmp.as_file().sync_all().at(tmp.path())?;
        let tmp = tmp.into_temp_path();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o555)).at(&*tmp)?;
        tmp.persist(&dest)
            .map_err(|e| ArtifactError::io(&dest, e.error))?;
        Ok(dest)
    }

    /// Checks a materialised tree against its manifest: every entry present with the
    /// right type, read-only mode, size and content, and nothing else.
    pub fn verify_tree(&self, manifest: &Manifest, dir: &Path) -> Result<(), ArtifactError> {
        verify_tree(manifest, dir, true)
    }

    /// Removes manifests not in `keep` and blobs that no kept manifest references and no
    /// pin holds, and clears `tmp/`. Must not run while an ingest or transfer is writing.
    pub fn gc(&self, keep: &[ReleaseId]) -> Result<GcReport, ArtifactError> {
        let mut report = GcReport::default();
        let mut live = self.pinned();
        for id in keep {
            live.extend(self.manifest(id)?.blobs());
        }
        for id in self.releases()? {
            if !keep.contains(&id) {
                let p = self.manifest_path(&id);
                fs::remove_file(&p).at(&p)?;
                report.removed_manifests += 1;
            }
        }
        let blobs = self.root.join("blobs");
        for shard in fs::read_dir(&blobs).at(&blobs)? {
            let shard = shard.at(&blobs)?.path();
            for entry in fs::read_dir(&shard).at(&shard)? {
                let entry = entry.at(&shard)?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let hash = Hash::parse(name.strip_suffix(".x").unwrap_or(&name));
                if hash.is_some_and(|h| live.contains(&h)) {
                    if !name.ends_with(".x") {
                        report.kept_blobs += 1;
                    }
                    continue;
                }
                let path = entry.path();
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&path).at(&path)?;
                if !name.ends_with(".x") {
                    report.removed_blobs += 1;
                }
                report.removed_bytes += size;
            }
        }
        for entry in fs::read_dir(self.tmp()).at(self.tmp())? {
            let path = entry.at(self.tmp())?.path();
            remove_tree(&path)?;
        }
        tracing::info!(
            removed = report.removed_blobs,
            bytes = report.removed_bytes,
            kept = report.kept_blobs,
            "store gc"
        );
        Ok(report)
    }

    /// Re-hashes every blob and returns those whose content does not match their name.
    pub fn check_blobs(&self) -> Result<Vec<Hash>, ArtifactError> {
        let mut bad = Vec::new();
        let blobs = self.root.join("blobs");
        for shard in fs::read_dir(&blobs).at(&blobs)? {
            let shard = shard.at(&blobs)?.path();
            for entry in fs::read_dir(&shard).at(&shard)? {
                let path = entry.at(&shard)?.path();
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let Some(hash) = Hash::parse(name.strip_suffix(".x").unwrap_or(&name)) else {
                    continue;
                };
                let (found, _) = hash_reader(File::open(&path).at(&path)?).at(&path)?;
                if found != hash {
                    bad.push(hash);
                }
            }
        }
        Ok(bad)
    }
}

struct IngestSink<'a> {
    store: &'a Store,
    current: Option<(io::BufWriter<NamedTempFile>, Hash)>,
    pending: Vec<(TempPath, Hash)>,
    /// Blobs already pending, so a content repeated in one artifact is written once.
    seen: HashSet<Hash>,
}

impl Sink for IngestSink<'_> {
    fn dir(&mut self, _: &str, _: u32) -> Result<(), ArtifactError> {
        Ok(())
    }

    fn symlink(&mut self, _: &str, _: &str) -> Result<(), ArtifactError> {
        Ok(())
    }

    fn file_start(&mut self, _: &str, _: u32, sha256: &Hash) -> Result<bool, ArtifactError> {
        if self.seen.contains(sha256) || self.store.has(sha256) {
            return Ok(false);
        }
        let tmp = NamedTempFile::new_in(self.store.tmp()).at(self.store.tmp())?;
        self.current = Some((io::BufWriter::with_capacity(64 << 10, tmp), *sha256));
        Ok(true)
    }

    fn file_data(&mut self, data: &[u8]) -> Result<(), ArtifactError> {
        let (w, _) = self.current.as_mut().expect("file_data after file_start");
        w.write_all(data).at(w.get_ref().path())
    }

    fn file_commit(&mut self) -> Result<(), ArtifactError> {
        let (w, hash) = self.current.take().expect("file_commit after file_start");
        let tmp = w
            .into_inner()
            .map_err(|e| ArtifactError::io(self.store.tmp(), e.into_error()))?;
        self.seen.insert(hash);
        self.pending.push((tmp.into_temp_path(), hash));
        Ok(())
    }
}

/// Checks a tree on disk against `manifest`. With `read_only`, file modes must be the
/// materialised ones ([`read_only_mode`]); otherwise the manifest's.
pub fn verify_tree(manifest: &Manifest, dir: &Path, read_only: bool) -> Result<(), ArtifactError> {
    let on_disk = |entry: &str, what: String| ArtifactError::entry(entry, Refusal::OnDisk(what));
    for e in manifest.entries() {
        let path = dir.join(&e.path);
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(ArtifactError::entry(&e.path, Refusal::Missing))
            }
            Err(err) => return Err(ArtifactError::io(path, err)),
        };
        let ft = meta.file_type();
        match &e.kind {
            EntryKind::File { sha256, size, mode } => {
                if !ft.is_file() {
                    return Err(on_disk(&e.path, "not a regular file".into()));
                }
                let want = if read_only {
                    read_only_mode(*mode)
                } else {
                    *mode
                };
                if meta.mode() & 0o7777 != want {
                    return Err(on_disk(
                        &e.path,
                        format!("mode {:04o}, expected {want:04o}", meta.mode() & 0o7777),
                    ));
                }
                if meta.len() != *size {
                    return Err(ArtifactError::entry(
                        &e.path,
                        Refusal::SizeMismatch {
                            expected: *size,
                            found: meta.len(),
                        },
                    ));
                }
                let (found, _) = hash_reader(File::open(&path).at(&path)?).at(&path)?;
                if found != *sha256 {
                    return Err(ArtifactError::entry(
                        &e.path,
                        Refusal::HashMismatch {
                            expected: *sha256,
                            found,
                        },
                    ));
                }
            }
            EntryKind::Dir { .. } => {
                if !ft.is_dir() {
                    return Err(on_disk(&e.path, "not a directory".into()));
                }
            }
            EntryKind::Symlink { target } => {
                let found = fs::read_link(&path).at(&path)?;
                if !ft.is_symlink() || found.as_os_str() != target.as_str() {
                    return Err(on_disk(&e.path, format!("not a symlink to `{target}`")));
                }
            }
        }
    }
    for entry in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let entry = entry
            .map_err(|e| ArtifactError::io(e.path().unwrap_or(dir).to_path_buf(), e.into()))?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("walkdir stays under its root");
        let rel = rel.to_string_lossy();
        if manifest.entry(&rel).is_none() {
            return Err(ArtifactError::entry(rel, Refusal::NotInManifest));
        }
    }
    Ok(())
}
