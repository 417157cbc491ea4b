//! Building an artifact from a project tree: running `[build].command`, collecting the
//! included files, and writing a reproducible zstd-compressed tar whose first entry is
//! the manifest. Two builds of the same tree give byte-identical artifacts: entries are
//! sorted, modes normalised to 0644/0755, owners 0, every time the commit time
//! (`SOURCE_DATE_EPOCH` wins). It never records the wall clock, the user or the host.
//!
//! It does not read `hoist.toml` (the caller passes the include/exclude globs and the
//! app file's hash) and prints nothing: the build command's output goes to a callback.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use tempfile::NamedTempFile;

use crate::error::ArtifactError;
use crate::hash::{hash_reader, Hash};
use crate::manifest::{BuildInfo, Entry, EntryKind, Limits, Manifest, MANIFEST_NAME};

/// Excluded from every build, at any depth: version-control data, hoist's own state,
/// interpreter caches and editor litter. `target/` and `node_modules/` are *not*
/// excluded (apps ship binaries and dependencies from them); use `include` to pick.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    ".hoist",
    "__pycache__",
    "*.pyc",
    ".DS_Store",
    "node_modules/.cache",
];

/// The zstd level: level 3 is zstd's default, fast to write and to read.
const ZSTD_LEVEL: i32 = 3;

/// Lines of the build command's output kept for the error.
const LAST_LINES: usize = 20;

/// What goes into an artifact.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The project root (where `hoist.toml` is).
    pub root: PathBuf,
    pub app: String,
    /// Globs relative to `root` (`*` stays within a directory, `**` crosses them; a
    /// directory's name includes all of it). Empty: the whole tree.
    pub include: Vec<String>,
    /// Globs excluded on top of [`DEFAULT_EXCLUDES`]; a glob without `/` matches at any depth.
    pub exclude: Vec<String>,
    pub hoist_version: String,
    /// SHA-256 (hex) of the resolved app file.
    pub config_hash: String,
    /// `SOURCE_DATE_EPOCH`, see [`source_date_epoch_from_env`].
    pub source_date_epoch: Option<i64>,
    pub limits: Limits,
}

/// A written artifact.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub manifest: Manifest,
    pub path: PathBuf,
    /// Compressed size in bytes.
    pub size: u64,
    /// Include globs that matched nothing (`templates/**` in a project without templates):
    /// worth a warning, not a failed build. A literal path that is missing is an error.
    pub unmatched: Vec<String>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot run the build command `{command}`: {source}")]
    CommandSpawn { command: String, source: io::Error },
    #[error("the build command `{command}` failed ({status})")]
    CommandFailed {
        command: String,
        status: String,
        last_lines: Vec<String>,
    },
    #[error("`{}`: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid glob `{pattern}`: {source}")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    #[error("include path `{pattern}` does not exist")]
    NothingMatched { pattern: String },
    #[error("`{}` is not valid UTF-8", path.display())]
    NonUtf8Path { path: PathBuf },
    #[error("`{path}` changed while the artifact was being written")]
    Changed { path: String },
    #[error("SOURCE_DATE_EPOCH `{value}` is not a number of seconds")]
    SourceDateEpoch { value: String },
    #[error(transparent)]
    Manifest(#[from] ArtifactError),
}

impl BuildError {
    /// A line telling the user how to fix it, where they can.
    pub fn hint(&self) -> Option<String> {
        match self {
            BuildError::NothingMatched { .. } => Some(
                "check `[build].include` in the app file, or run the build command first".into(),
            ),
            BuildError::Changed { .. } => {
                Some("stop whatever writes to the project tree and build again".into())
            }
            BuildError::Manifest(ArtifactError::Entry { .. }) => Some(
                "exclude the entry with `[build].exclude`, or fix it in the project tree".into(),
            ),
            BuildError::SourceDateEpoch { .. } => Some("unset it or set it to unix seconds".into()),
            _ => None,
        }
    }

    fn io(path: &Path, source: io::Error) -> Self {
        BuildError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Reads `SOURCE_DATE_EPOCH` from the environment (unset or empty: `None`).
pub fn source_date_epoch_from_env() -> Result<Option<i64>, BuildError> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => v
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| BuildError::SourceDateEpoch { value: v }),
        Err(_) => Ok(None),
    }
}

/// Runs `command` with `sh -c` in `cwd`, passing each line of its output (stdout and
/// stderr interleaved, as the user would see them) to `on_line`. On failure the error
/// carries the exit status and the last lines.
pub fn run_build_command(
    command: &str,
    cwd: &Path,
    mut on_line: impl FnMut(&str),
) -> Result<(), BuildError> {
    let spawn_err = |source| BuildError::CommandSpawn {
        command: command.to_string(),
        source,
    };
    // One pipe for both streams keeps their lines in the order they were written.
    let (read_end, write_end) = nix::unistd::pipe().map_err(|e| spawn_err(e.into()))?;
    let write_err = write_end.try_clone().map_err(spawn_err)?;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(write_end)
        .stderr(write_err);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Our copies of the write end must close, or the read below never sees EOF.
    drop(cmd);
    let mut last: VecDeque<String> = VecDeque::with_capacity(LAST_LINES);
    let mut reader = BufReader::new(File::from(read_end));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = line.trim_end_matches(['\n', '\r']);
                on_line(line);
                if last.len() == LAST_LINES {
                    last.pop_front();
                }
                last.push_back(line.to_string());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(spawn_err(e)),
        }
    }
    let status = child.wait().map_err(spawn_err)?;
    if status.success() {
        return Ok(());
    }
    let status = match (
        status.code(),
        std::os::unix::process::ExitStatusExt::signal(&status),
    ) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    };
    Err(BuildError::CommandFailed {
        command: command.to_string(),
        status,
        last_lines: last.into(),
    })
}

/// A file to copy into the artifact, with what it looked like when hashed.
struct Source {
    abs: PathBuf,
    size: u64,
    mtime: (i64, i64),
    ino: u64,
}

fn glob(pattern: &str) -> Result<Glob, BuildError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|source| BuildError::Glob {
            pattern: pattern.to_string(),
            source,
        })
}

fn exclude_set(patterns: &[String]) -> Result<GlobSet, BuildError> {
    let mut b = GlobSetBuilder::new();
    for p in DEFAULT_EXCLUDES
        .iter()
        .map(|s| s.to_string())
        .chain(patterns.iter().cloned())
    {
        let p = p.trim_end_matches('/');
        // Like .gitignore: a pattern without a slash matches at any depth.
        let anchored = p.trim_start_matches('/');
        if p.contains('/') && !p.starts_with("**/") {
            b.add(glob(anchored)?);
            b.add(glob(&format!("**/{anchored}"))?);
        } else {
            b.add(glob(&format!("**/{anchored}"))?);
            b.add(glob(anchored)?);
        }
    }
    b.build().map_err(|source| BuildError::Glob {
        pattern: patterns.join(", "),
        source,
    })
}

/// Include globs; each pattern also includes everything beneath what it names. Returns
/// the set and, per glob, the index of the user pattern it came from.
fn include_set(patterns: &[String]) -> Result<(GlobSet, Vec<usize>), BuildError> {
    let mut b = GlobSetBuilder::new();
    let mut owner = Vec::new();
    for (i, p) in patterns.iter().enumerate() {
        let p = p.trim_start_matches("./").trim_end_matches('/');
        b.add(glob(p)?);
        b.add(glob(&format!("{p}/**"))?);
        owner.extend([i, i]);
    }
    let set = b.build().map_err(|source| BuildError::Glob {
        pattern: patterns.join(", "),
        source,
    })?;
    Ok((set, owner))
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Commit, dirty flag and commit time of the work tree at `root`, if it is one. The
/// artifact being written is not counted as a change.
fn git_info(root: &Path, out: &Path) -> (Option<String>, bool, Option<i64>) {
    let Some(commit) =
        git(root, &["rev-parse", "--verify", "-q", "HEAD"]).filter(|c| !c.is_empty())
    else {
        return (None, false, None);
    };
    let mut args = vec![
        "status".to_string(),
        "--porcelain".into(),
        "--".into(),
        ".".into(),
    ];
    if let Ok(rel) = out.strip_prefix(root) {
        args.push(format!(":(exclude){}", rel.display()));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dirty = git(root, &args).is_none_or(|s| !s.is_empty());
    let time = git(root, &["log", "-1", "--format=%ct", "HEAD"]).and_then(|t| t.parse().ok());
    (Some(commit), dirty, time)
}

fn rel_str(root: &Path, path: &Path) -> Result<String, BuildError> {
    let rel = path
        .strip_prefix(root)
        .expect("walkdir stays under its root");
    rel.to_str()
        .map(str::to_string)
        .ok_or_else(|| BuildError::NonUtf8Path {
            path: path.to_path_buf(),
        })
}

/// Whether an include pattern is a glob (may rightly match nothing) or names one path.
fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', '{'])
}

/// The manifest's entries, where each file's bytes come from, and the include globs
/// that matched nothing.
type Collected = (Vec<Entry>, BTreeMap<String, Source>, Vec<String>);

/// Walks the tree and hashes the included files.
fn collect(opts: &BuildOptions, out: &Path) -> Result<Collected, BuildError> {
    let root = &opts.root;
    let excludes = exclude_set(&opts.exclude)?;
    let (includes, owner) = include_set(&opts.include)?;
    let mut matched = vec![false; opts.include.len()];
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    let mut dirs: BTreeSet<String> = BTreeSet::new();
    let mut sources = BTreeMap::new();
    let mut files: Vec<(String, u32, Source)> = Vec::new();
    let walker = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    let walker = walker.into_iter().filter_entry(|e| {
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        // Never pack the artifact into itself, nor its temp file beside it.
        let is_out = e.path() == out
            || (e.path().parent() == out.parent()
                && e.file_name().to_string_lossy().starts_with(".hoist-build-"));
        !is_out && !excludes.is_match(rel)
    });
    for item in walker {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            BuildError::Io {
                path,
                source: e.into(),
            }
        })?;
        let rel = rel_str(root, item.path())?;
        let ft = item.file_type();
        if !opts.include.is_empty() {
            let hits = includes.matches(&rel);
            if hits.is_empty() {
                continue;
            }
            for h in hits {
                matched[owner[h]] = true;
            }
        }
        let meta = item
            .metadata()
            .map_err(|e| BuildError::io(item.path(), e.into()))?;
        let kind = if ft.is_dir() {
            dirs.insert(rel.clone());
            continue;
        } else if ft.is_symlink() {
            let target = fs::read_link(item.path()).map_err(|e| BuildError::io(item.path(), e))?;
            let target = target.to_str().ok_or_else(|| BuildError::NonUtf8Path {
                path: target.clone(),
            })?;
            EntryKind::Symlink {
                target: target.to_string(),
            }
        } else if ft.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            let source = Source {
                abs: item.path().to_path_buf(),
                size: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ino: meta.ino(),
            };
            files.push((rel, mode, source));
            continue;
        } else {
            tracing::warn!(path = %rel, "skipping a special file (socket, fifo or device)");
            continue;
        };
        entries.insert(rel.clone(), Entry { path: rel, kind });
    }
    let hashes = hash_files(&files)?;
    for ((rel, mode, src), sha256) in files.into_iter().zip(hashes) {
        let kind = EntryKind::File {
            sha256,
            size: src.size,
            mode,
        };
        entries.insert(
            rel.clone(),
            Entry {
                path: rel.clone(),
                kind,
            },
        );
        sources.insert(rel, src);
    }
    let mut unmatched = Vec::new();
    for (pattern, _) in opts.include.iter().zip(&matched).filter(|(_, m)| !**m) {
        if is_glob(pattern) {
            unmatched.push(pattern.clone());
        } else {
            return Err(BuildError::NothingMatched {
                pattern: pattern.clone(),
            });
        }
    }
    // Directories: the ones included, and every parent of an included entry.
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for path in entries.keys().chain(dirs.iter()) {
        let mut p = path.as_str();
        while let Some(i) = p.rfind('/') {
            p = &p[..i];
            wanted.insert(p.to_string());
        }
    }
    wanted.extend(dirs);
    for d in wanted {
        entries.insert(
            d.clone(),
            Entry {
                path: d,
                kind: EntryKind::Dir { mode: 0o755 },
            },
        );
    }
    Ok((entries.into_values().collect(), sources, unmatched))
}

/// Hashes the files on a few threads (hashing is most of a build's CPU besides zstd, and
/// zstd cannot start before the manifest, which needs every hash). Results keep the
/// input order; a file whose size changed since the walk is refused.
fn hash_files(files: &[(String, u32, Source)]) -> Result<Vec<Hash>, BuildError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Hash>> = vec![None; files.len()];
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while let Some((rel, _, src)) = files.get(next.fetch_add(1, Ordering::Relaxed))
                    {
                        let hashed = File::open(&src.abs)
                            .and_then(hash_reader)
                            .map_err(|e| BuildError::io(&src.abs, e))
                            .and_then(|(hash, size)| {
                                if size == src.size {
                                    Ok(hash)
                                } else {
                                    Err(BuildError::Changed { path: rel.clone() })
                                }
                            });
                        let failed = hashed.is_err();
                        done.push((rel, hashed));
                        if failed {
                            break;
                        }
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Vec<_>>()
    });
    let index: HashMap<&str, usize> = files
        .iter()
        .enumerate()
        .map(|(i, (rel, _, _))| (rel.as_str(), i))
        .collect();
    for (rel, hashed) in results.into_iter().flatten() {
        out[index[rel.as_str()]] = Some(hashed?);
    }
    Ok(out
        .into_iter()
        .map(|h| h.expect("every file hashed or an error returned"))
        .collect())
}

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// Builds the artifact at `out` (atomically: a temp file beside it, synced, renamed).
pub fn build(opts: &BuildOptions, out: &Path) -> Result<BuildOutput, BuildError> {
    let root = opts
        .root
        .canonicalize()
        .map_err(|e| BuildError::io(&opts.root, e))?;
    let out_dir = match out.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p.canonicalize().map_err(|e| BuildError::io(p, e))?,
        None => std::env::current_dir().map_err(|e| BuildError::io(Path::new("."), e))?,
    };
    let out_name = out
        .file_name()
        .ok_or_else(|| BuildError::io(out, io::ErrorKind::InvalidInput.into()))?;
    let out = out_dir.join(out_name);
    let opts = BuildOptions {
        root: root.clone(),
        ..opts.clone()
    };

    let (commit, dirty, commit_time) = git_info(&root, &out);
    let info = BuildInfo {
        commit,
        dirty,
        commit_time: opts.source_date_epoch.or(commit_time).unwrap_or(0),
        hoist_version: opts.hoist_version.clone(),
        config_hash: opts.config_hash.clone(),
    };
    let (entries, sources, unmatched) = collect(&opts, &out)?;
    let manifest = Manifest::new(&opts.app, info, entries, &opts.limits)?;
    let mtime = manifest.build().commit_time.max(0) as u64;

    let tmp = tempfile::Builder::new()
        .prefix(".hoist-build-")
        .tempfile_in(&out_dir)
        .map_err(|e| BuildError::io(&out_dir, e))?;
    let tmp_path = tmp.path().to_path_buf();
    let io_err = |e| BuildError::io(&tmp_path, e);
    let mut enc =
        zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(1 << 20, tmp), ZSTD_LEVEL)
            .map_err(io_err)?;
    enc.include_checksum(true).map_err(io_err)?;
    let mut tar = tar::Builder::new(enc);
    let json = manifest.to_json();
    let mut h = header(tar::EntryType::Regular, 0o644, json.len() as u64, mtime);
    tar.append_data(&mut h, MANIFEST_NAME, &json[..])
        .map_err(io_err)?;
    for e in manifest.entries() {
        match &e.kind {
            EntryKind::Dir { mode } => {
                let mut h = header(tar::EntryType::Directory, *mode, 0, mtime);
                tar.append_data(&mut h, &e.path, io::empty())
                    .map_err(io_err)?;
            }
            EntryKind::Symlink { target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, mtime);
                tar.append_link(&mut h, &e.path, target).map_err(io_err)?;
            }
            EntryKind::File { size, mode, .. } => {
                let src = &sources[&e.path];
                let file = File::open(&src.abs).map_err(|err| BuildError::io(&src.abs, err))?;
                let meta = file
                    .metadata()
                    .map_err(|err| BuildError::io(&src.abs, err))?;
                // Hashed in the walk, copied now: refuse a file that changed in between.
                if meta.len() != src.size
                    || (meta.mtime(), meta.mtime_nsec()) != src.mtime
                    || meta.ino() != src.ino
                {
                    return Err(BuildError::Changed {
                        path: e.path.clone(),
                    });
                }
                let mut h = header(tar::EntryType::Regular, *mode, *size, mtime);
                let mut limited = file.take(*size);
                if let Err(err) = tar.append_data(&mut h, &e.path, &mut limited) {
                    // A short read means the file shrank; anything else is our write.
                    let now = fs::metadata(&src.abs).map(|m| m.len()).ok();
                    return Err(if now != Some(src.size) {
                        BuildError::Changed {
                            path: e.path.clone(),
                        }
                    } else {
                        BuildError::io(&tmp_path, err)
                    });
                }
            }
        }
    }
    let enc = tar.into_inner().map_err(io_err)?;
    let mut buf = enc.finish().map_err(io_err)?;
    buf.flush().map_err(io_err)?;
    let tmp = buf.into_inner().map_err(|e| io_err(e.into_error()))?;
    tmp.as_file().sync_all().map_err(io_err)?;
    let size = tmp.as_file().metadata().map_err(io_err)?.len();
    persist(tmp, &out)?;
    tracing::info!(app = %manifest.app(), release = %manifest.release(), path = %out.display(), size, "artifact written");
    Ok(BuildOutput {
        manifest,
        path: out,
        size,
        unmatched,
    })
}

fn persist(tmp: NamedTempFile, out: &Path) -> Result<(), BuildError> {
    // Readable by others like any build output; the temp file is 0600.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
        .map_err(|e| BuildError::io(tmp.path(), e))?;
    tmp.persist(out).map_err(|e| BuildError::io(out, e.error))?;
    if let Some(dir) = out.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| BuildError::io(dir, e))?;
    }
    Ok(())
}
