//! The app file: `hoist.toml` (and destination overlays) read into a validated
//! [`hoist_core::spec::AppSpec`], with diagnostics that name file:line:column.
//!
//! Owns finding the file (walking up from the current directory), reading it and its
//! overlay, merging them, validating, and the resolved hash an artifact records. Must not
//! print (the binary renders [`ConfigError`]) or touch anything but the files it reads.
//!
//! The pipeline, one module each: `tree` parses TOML into an owned tree whose every key
//! and value remembers its file and bytes, and merges overlays; `read` reads typed values
//! from it; `validate` knows the sections, defaults and cross-references; `diag` locates
//! and renders problems. `init` is `hoist init`'s detection and starter template.

mod alerts;
mod canary;
mod check;
pub mod diag;
pub mod init;
mod read;
pub mod reference;
pub mod review;
mod slo;
mod tree;
mod validate;

use std::io::Read;
use std::path::{Path, PathBuf};

use hoist_core::spec::AppSpec;
use sha2::{Digest, Sha256};

pub use check::check_spec;
pub use diag::{render, Diagnostic, Severity};

/// The app file's name, looked for in the current directory and its parents.
pub const FILE_NAME: &str = "hoist.toml";

/// An app file is a page of text; anything much larger is a mistake or an attack.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why an app file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no `hoist.toml` in `{}` or any directory above it", start.display())]
    NotFound { start: PathBuf },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{}` is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("`{}` is larger than 1MiB; an app file is a page of TOML", path.display())]
    TooLarge { path: PathBuf },
    #[error("invalid destination `{destination}`: expected letters, digits, `-` or `_`")]
    BadDestination { destination: String },
    #[error("no overlay `{}` for destination `{destination}`", path.display())]
    MissingOverlay { path: PathBuf, destination: String },
    #[error("{}", invalid_summary(diagnostics))]
    Invalid { diagnostics: Vec<Diagnostic> },
}

fn invalid_summary(diagnostics: &[Diagnostic]) -> String {
    let errors: Vec<&Diagnostic> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let mut files: Vec<&str> = errors.iter().map(|d| d.file.as_str()).collect();
    files.dedup();
    let files = files
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(" and ");
    let n = errors.len();
    format!(
        "{files} {} {n} error{}",
        if files.contains(" and ") {
            "have"
        } else {
            "has"
        },
        if n == 1 { "" } else { "s" }
    )
}

impl ConfigError {
    /// What the user can do about it, when there is something obvious.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::NotFound { .. } => {
                Some("run `hoist init` to write one, or pass `-c FILE`".to_string())
            }
            ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Some("run `hoist init` to write one, or pass the right `-c FILE`".to_string())
            }
            ConfigError::MissingOverlay { path, destination } => Some(format!(
                "create `{}` with the keys that differ for `{destination}`, or leave out `-d`",
                path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into_owned()
                )
            )),
            _ => None,
        }
    }

    /// The located problems, for [`ConfigError::Invalid`].
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            ConfigError::Invalid { diagnostics } => diagnostics,
            _ => &[],
        }
    }
}

/// A validated app file.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub spec: AppSpec,
    /// The files read, base first; absolute when read from disk by [`load`].
    pub files: Vec<PathBuf>,
    /// Problems that do not stop the load (a host role nothing uses).
    pub warnings: Vec<Diagnostic>,
    /// SHA-256 (hex) of the spec's canonical JSON: the artifact records it.
    pub resolved_hash: String,
}

impl LoadedConfig {
    /// The directory holding the base app file: the project root that builds run in and
    /// `build.include` patterns are relative to.
    pub fn project_dir(&self) -> &Path {
        match self.files.first().and_then(|f| f.parent()) {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }
}

/// Walks up from `start` to the first directory holding `hoist.toml`.
pub fn find_config(start: &Path) -> Result<PathBuf, ConfigError> {
    start
        .ancestors()
        .map(|dir| dir.join(FILE_NAME))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ConfigError::NotFound {
            start: start.to_path_buf(),
        })
}

/// The app file a command should read: `-c FILE` when given, else [`find_config`] from
/// the current directory.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    match explicit {
        Some(path) => Ok(path.to_path_buf()),
        None => {
            let cwd = std::env::current_dir().map_err(|source| ConfigError::Read {
                path: PathBuf::from("."),
                source,
            })?;
            let found = find_config(&cwd)?;
            // Shown in diagnostics: `hoist.toml` or `../hoist.toml` reads better than an
            // absolute path, and still opens from where the user is.
            let levels = found
                .parent()
                .and_then(|dir| cwd.strip_prefix(dir).ok())
                .map(|rest| rest.components().count());
            Ok(match levels {
                Some(n) => std::iter::repeat_n("..", n)
                    .collect::<PathBuf>()
                    .join(FILE_NAME),
                None => found,
            })
        }
    }
}

/// `hoist.<destination>.toml` next to the base file.
pub fn overlay_path(base: &Path, destination: &str) -> PathBuf {
    base.with_file_name(format!("hoist.{destination}.toml"))
}

/// Reads, merges and validates the app file at `path` and, with a destination, its
/// overlay `hoist.<destination>.toml` next to it.
pub fn load(path: &Path, destination: Option<&str>) -> Result<LoadedConfig, ConfigError> {
    let mut paths = vec![path.to_path_buf()];
    if let Some(dest) = destination {
        let valid = !dest.is_empty()
            && dest
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ConfigError::BadDestination {
                destination: dest.to_string(),
            });
        }
        let overlay = overlay_path(path, dest);
        if !overlay.is_file() && path.is_file() {
            return Err(ConfigError::MissingOverlay {
                path: overlay,
                destination: dest.to_string(),
            });
        }
        paths.push(overlay);
    }
    let mut sources = Vec::new();
    for p in &paths {
        sources.push((p.display().to_string(), read_text(p)?));
    }
    let mut loaded = parse_sources(&sources)?;
    // Absolute, so that `files[0].parent()` is the project directory even for a bare
    // `hoist.toml`; diagnostics keep the names as the user wrote them.
    loaded.files = paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    Ok(loaded)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit so that a file of exactly the limit is accepted.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    String::from_utf8(bytes).map_err(|_| ConfigError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

/// Validates app file text without touching the disk: `sources` are `(name, text)` pairs,
/// the base file first and overlays after it, each merged over the ones before.
pub fn parse_sources(sources: &[(String, String)]) -> Result<LoadedConfig, ConfigError> {
    let files: Vec<diag::SourceFile> = sources
        .iter()
        .map(|(name, text)| diag::SourceFile {
            name: name.clone(),
            text: text.clone(),
        })
        .collect();
    let mut syntax = Vec::new();
    let mut trees = Vec::new();
    for i in 0..files.len() {
        match tree::parse(&files, i) {
            Ok(t) => trees.push(t),
            Err(mut d) => syntax.append(&mut d),
        }
    }
    if !syntax.is_empty() {
        return Err(ConfigError::Invalid {
            diagnostics: syntax,
        });
    }
    let mut trees = trees.into_iter();
    let Some(mut root) = trees.next() else {
        return Err(ConfigError::Invalid {
            diagnostics: Vec::new(),
        });
    };
    for overlay in trees {
        tree::merge(&mut root, overlay);
    }
    let mut cx = read::Cx::new(&files);
    let spec = validate::validate(&mut cx, &root);
    let mut diagnostics = cx.diags;
    let order = |d: &Diagnostic| {
        (
            files.iter().position(|f| f.name == d.file),
            d.line,
            d.column,
        )
    };
    diagnostics.sort_by_key(order);
    match spec {
        Some(spec) if !diagnostics.iter().any(|d| d.severity == Severity::Error) => {
            let resolved_hash = resolved_hash(&spec);
            Ok(LoadedConfig {
                spec,
                files: sources
                    .iter()
                    .map(|(name, _)| PathBuf::from(name))
                    .collect(),
                warnings: diagnostics,
                resolved_hash,
            })
        }
        _ => Err(ConfigError::Invalid { diagnostics }),
    }
}

/// Validates one file's text, named `name` in diagnostics.
pub fn parse_str(name: &str, text: &str) -> Result<LoadedConfig, ConfigError> {
    parse_sources(&[(name.to_string(), text.to_string())])
}

/// SHA-256 (hex) of the spec's JSON. Maps in the spec are ordered and struct fields have
/// a fixed order, so equal specs always hash equally.
pub fn resolved_hash(spec: &AppSpec) -> String {
    // Serialising plain data into a Vec cannot fail; an empty hash input would still be
    // deterministic if it ever did.
    let json = serde_json::to_vec(spec).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}
