//! Reading an app's data as the app's user. A root agent never opens an app's files with
//! its own rights to back them up: it runs `EXE backup-reader KIND SOURCE SCRATCH` as the
//! app's user (groups, gid, uid, `no_new_privs`, as the shim drops an app), with its
//! stdout on the backup's partial file, which the agent created (0600, its own) and seals.
//! So a reader sees exactly what the app may read (a root-only file an app slipped into its
//! data dir, a hard link to one, fails the backup instead of landing in an archive the
//! app can restore). The agent never follows a path the app controls with its own
//! rights: the bytes come through the descriptor.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hoist_supervisor::creds::Credentials;

use crate::file::{self, Sealed};
use crate::{directory, sqlite, BackupError, Result};

/// The reader's first argument (after the executable).
pub const ARG: &str = "backup-reader";

/// How to read as another user.
#[derive(Debug, Clone)]
pub struct AsUser {
    /// The `hoist` executable (it carries the reader).
    pub exe: PathBuf,
    /// The user to read as; the spawn fails (rather than read as root) if the drop does.
    pub creds: Credentials,
    /// A directory of the user's own (0700) where SQLite writes its copy before it is
    /// streamed out; the caller makes it and removes it.
    pub scratch: PathBuf,
}

/// What kind of source a reader copies.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Sqlite,
    Directory,
}

impl Kind {
    fn arg(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Directory => "directory",
        }
    }
}

/// [`sqlite::backup`], read as `who`.
pub fn sqlite_backup(who: &AsUser, source: &Path, dest: &Path) -> Result<Sealed> {
    read_as(who, Kind::Sqlite, source, dest)
}

/// [`directory::backup`], read as `who`.
pub fn directory_backup(who: &AsUser, source: &Path, dest: &Path) -> Result<Sealed> {
    read_as(who, Kind::Directory, source, dest)
}

fn read_as(who: &AsUser, kind: Kind, source: &Path, dest: &Path) -> Result<Sealed> {
    let partial = file::partial_path(dest);
    let out = file::create_private(&partial)?;
    let mut cmd = Command::new(&who.exe);
    cmd.arg(ARG)
        .arg(kind.arg())
        .arg(source)
        .arg(&who.scratch)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::piped());
    who.creds.drop_to(&mut cmd);
    let tool = format!("{} {ARG}", who.exe.display());
    let spawned = cmd.spawn().map_err(|source| BackupError::Spawn {
        tool: tool.clone(),
        source,
    });
    let result = spawned.and_then(|mut child| {
        // The reader writes one line on failure; more is not read (bounded).
        let mut err = Vec::new();
        if let Some(e) = child.stderr.take() {
            let _ = e.take(8 * 1024).read_to_end(&mut err);
        }
        let status = child.wait().map_err(|source| BackupError::Spawn {
            tool: tool.clone(),
            source,
        })?;
        if status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&err);
        let detail = said.lines().last().unwrap_or("").trim().to_string();
        Err(BackupError::Reader {
            path: source.to_path_buf(),
            uid: who.creds.uid.as_raw(),
            detail: if detail.is_empty() {
                status.to_string()
            } else {
                detail
            },
        })
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    file::seal(&partial, dest)
}

/// The reader's side, called first thing by the `hoist` binary: if `argv` is
/// `[exe, backup-reader, KIND, SOURCE, SCRATCH]`, copies SOURCE to stdout and exits (1 with
/// a line on stderr on failure); anything else returns `None`.
pub fn main(argv: &[OsString]) -> Option<std::convert::Infallible> {
    let [_, arg, kind, source, scratch] = argv else {
        return None;
    };
    if arg != ARG {
        return None;
    }
    let (source, scratch) = (Path::new(source), Path::new(scratch));
    // SAFETY: fd 1 is the partial file the agent opened for this process; it is owned
    // here alone, and the process exits right after.
    let mut out = unsafe { std::fs::File::from_raw_fd(1) };
    let stdout = PathBuf::from("<stdout>");
    let done = match kind.to_str() {
        Some("sqlite") => {
            let copy = scratch.join("copy.db");
            let r = sqlite::copy(source, &copy).and_then(|()| {
                let mut f = std::fs::File::open(&copy).map_err(BackupError::io(&copy))?;
                std::io::copy(&mut f, &mut out).map_err(BackupError::io(&stdout))?;
                Ok(())
            });
            let _ = std::fs::remove_file(&copy);
            sqlite::remove_sidecars(&copy);
            r
        }
        Some("directory") => directory::archive(source, &mut out, &stdout),
        _ => Err(BackupError::Entry {
            entry: kind.to_string_lossy().into_owned(),
            reason: "not a kind of backup source".into(),
        }),
    };
    match done {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            let mut line = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                line.push_str(": ");
                line.push_str(&c.to_string());
                cause = c.source();
            }
            // The agent reads this one line (stderr is its pipe; nothing else writes it).
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{line}");
            std::process::exit(1)
        }
    }
}
