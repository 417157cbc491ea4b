//! The release manifest (`hoist-release.json`): its types, its one canonical JSON
//! spelling, the release id derived from it, and the validation every reader applies
//! (path safety, modes, symlinks that stay inside the tree, limits). Pure: no I/O.
//!
//! The JSON types are private wire structs; the public types can only be built through
//! [`Manifest::new`] or [`Manifest::parse`], which validate, so a `Manifest` in hand is
//! always safe to unpack.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{ArtifactError, Refusal};
use crate::hash::Hash;

/// The manifest's name, the first entry of every artifact.
pub const MANIFEST_NAME: &str = "hoist-release.json";

/// The manifest format this crate writes and reads.
pub const FORMAT: u32 = 1;

/// The longest entry path accepted, in bytes (Linux's `PATH_MAX`).
pub const MAX_PATH_BYTES: usize = 4096;

/// Symlinks followed while checking that a symlink stays inside the tree (Linux's own
/// limit is 40).
const MAX_SYMLINK_HOPS: usize = 40;

/// Caps applied to every artifact read, against decompression bombs and oversized input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Most entries (files, directories, symlinks) accepted.
    pub max_entries: usize,
    /// Largest sum of file sizes accepted, in bytes.
    pub max_total_bytes: u64,
}

impl Default for Limits {
    /// 64 MiB of manifest, 200 000 entries, 8 GiB of files: far above a web app, far
    /// below what would fill a host's disk or memory.
    fn default() -> Self {
        Limits {
            max_manifest_bytes: 64 << 20,
            max_entries: 200_000,
            max_total_bytes: 8 << 30,
        }
    }
}

/// A release id: the first 16 hex digits of the SHA-256 of the canonical manifest
/// without its id. Equal trees and build info give equal ids.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReleaseId(String);

impl ReleaseId {
    /// Parses 16 lowercase hex digits.
    pub fn parse(text: &str) -> Option<ReleaseId> {
        (text.len() == 16 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| ReleaseId(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where and from what a release was built. Only facts that are the same on every
/// rebuild of the same tree: no wall clock, user or host (those go in the deploy record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// The git commit of the project, when it is a git work tree.
    pub commit: Option<String>,
    /// Whether the work tree had uncommitted changes.
    pub dirty: bool,
    /// Unix seconds: `SOURCE_DATE_EPOCH` if set, else the commit time, else 0.
    pub commit_time: i64,
    /// The hoist version that built it.
    pub hoist_version: String,
    /// SHA-256 of the resolved app file.
    pub config_hash: String,
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { sha256: Hash, size: u64, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

impl EntryKind {
    /// `file`, `directory` or `symlink`.
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::File { .. } => "file",
            EntryKind::Dir { .. } => "directory",
            EntryKind::Symlink { .. } => "symlink",
        }
    }
}

/// One path of the release tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative, `/`-separated, no `.` or `..`, no trailing slash.
    pub path: String,
    pub kind: EntryKind,
}

/// Counts for `hoist inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Summary {
    pub files: usize,
    pub directories: usize,
    pub symlinks: usize,
    pub total_bytes: u64,
}

/// A validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    app: String,
    release: ReleaseId,
    build: BuildInfo,
    entries: Vec<Entry>,
}

impl Manifest {
    /// Builds a manifest from its parts: sorts the entries, validates them against
    /// `limits` and derives the release id.
    pub fn new(
        app: &str,
        build: BuildInfo,
        mut entries: Vec<Entry>,
        limits: &Limits,
    ) -> Result<Manifest, ArtifactError> {
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        validate(app, &build, &entries, limits)?;
        let release = release_id(&wire(app, None, &build, &entries));
        Ok(Manifest {
            app: app.to_string(),
            release,
            build,
            entries,
        })
    }

    /// Parses and validates a manifest, checking that its id matches its content.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<Manifest, ArtifactError> {
        if bytes.len() as u64 > limits.max_manifest_bytes {
            return Err(ArtifactError::Limit {
                what: format!("the manifest's size ({} bytes)", bytes.len()),
                limit: limits.max_manifest_bytes,
            });
        }
        let raw: WireManifest = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError::Manifest(format!("invalid json: {e}")))?;
        if raw.format != FORMAT {
            return Err(ArtifactError::Manifest(format!(
                "format `{}` is not supported (this hoist reads format `{FORMAT}`)",
                raw.format
            )));
        }
        if raw.entries.len() > limits.max_entries {
            return Err(ArtifactError::Limit {
                what: format!("the number of entries ({})", raw.entries.len()),
                limit: limits.max_entries as u64,
            });
        }
        let build = BuildInfo {
            commit: raw.build.commit,
            dirty: raw.build.dirty,
            commit_time: raw.build.commit_time,
            hoist_version: raw.build.hoist_version,
            config_hash: raw.build.config_hash,
        };
        let entries = raw
            .entries
            .into_iter()
            .map(entry_from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        for pair in entries.windows(2) {
            if pair[0].path.as_bytes() >= pair[1].path.as_bytes() {
                let reason = if pair[0].path == pair[1].path {
                    Refusal::Duplicate
                } else {
                    Refusal::Unsorted
                };
                return Err(ArtifactError::entry(&pair[1].path, reason));
            }
        }
        validate(&raw.app, &build, &entries, limits)?;
        let release = release_id(&wire(&raw.app, None, &build, &entries));
        if release.as_str() != raw.release {
            return Err(ArtifactError::Manifest(format!(
                "release id `{}` does not match its content (`{release}`)",
                raw.release
            )));
        }
        Ok(Manifest {
            app: raw.app,
            release,
            build,
            entries,
        })
    }

    /// The canonical JSON: compact, fields in a fixed order, entries sorted. The same
    /// manifest always gives the same bytes.
    pub fn to_json(&self) -> Vec<u8> {
        let w = wire(
            &self.app,
            Some(self.release.as_str()),
            &self.build,
            &self.entries,
        );
        serde_json::to_vec(&w).expect("manifest serialisation cannot fail")
    }

    pub fn app(&self) -> &str {
        &self.app
    }

    pub fn release(&self) -> &ReleaseId {
        &self.release
    }

    pub fn build(&self) -> &BuildInfo {
        &self.build
    }

    /// Entries sorted by path; a directory comes before everything beneath it.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `path`, if any.
    pub fn entry(&self, path: &str) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The distinct file contents, sorted.
    pub fn blobs(&self) -> Vec<Hash> {
        let mut out: Vec<Hash> = self
            .entries
            .iter()
            .filter_map(|e| match e.kind {
                EntryKind::File { sha256, .. } => Some(sha256),
                _ => None,
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// File, directory and symlink counts and the total file size.
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for e in &self.entries {
            match e.kind {
                EntryKind::File { size, .. } => {
                    s.files += 1;
                    s.total_bytes += size;
                }
                EntryKind::Dir { .. } => s.directories += 1,
                EntryKind::Symlink { .. } => s.symlinks += 1,
            }
        }
        s
    }
}

/// Hex digits kept of each file digest in a [`CompactManifest`] (48 bits: two distinct
/// blobs of a store sharing a prefix is a one-in-billions event, and a wrong guess is
/// caught by the release id anyway).
pub const SHORT_HASH_HEX: usize = 12;

/// A manifest as sent over the wire to a host that probably has most of its blobs: each
/// file digest shortened to [`SHORT_HASH_HEX`] hex digits, the rest as is. The receiver
/// resolves the short digests against what it holds, fetches the rest, and accepts the
/// result only if it hashes to the stated release id. This is what makes a redeploy
/// with one changed file cheaper than rsync's file list.
#[derive(Debug, Clone)]
pub struct CompactManifest {
    raw: WireManifest,
}

/// The outcome of [`CompactManifest::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Every digest was resolved and the manifest matches its release id.
    Complete(Manifest),
    /// These short digests (sorted, unique) are unknown here: fetch their blobs.
    Missing(Vec<String>),
}

impl Manifest {
    /// The compact form: canonical JSON with shortened file digests.
    pub fn to_compact_json(&self) -> Vec<u8> {
        let mut w = wire(
            &self.app,
            Some(self.release.as_str()),
            &self.build,
            &self.entries,
        );
        for e in &mut w.entries {
            if let Some(sha) = &mut e.sha256 {
                sha.truncate(SHORT_HASH_HEX);
            }
        }
        serde_json::to_vec(&w).expect("manifest serialisation cannot fail")
    }
}

impl CompactManifest {
    /// Parses the compact JSON, with the same size and entry limits as a manifest.
    pub fn parse(bytes: &[u8], limits: &Limits) -> Result<CompactManifest, ArtifactError> {
        if bytes.len() as u64 > limits.max_manifest_bytes {
            return Err(ArtifactError::Limit {
                what: format!("the manifest's size ({} bytes)", bytes.len()),
                limit: limits.max_manifest_bytes,
            });
        }
        let raw: WireManifest = serde_json::from_slice(bytes)
            .map_err(|e| ArtifactError::Manifest(format!("invalid json: {e}")))?;
        if raw.entries.len() > limits.max_entries {
            return Err(ArtifactError::Limit {
                what: format!("the number of entries ({})", raw.entries.len()),
                limit: limits.max_entries as u64,
            });
        }
        for e in &raw.entries {
            if let Some(sha) = &e.sha256 {
                if sha.len() != SHORT_HASH_HEX
                    || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                {
                    return Err(ArtifactError::entry(
                        &e.path,
                        Refusal::BadHeader("short sha256 is not 12 lowercase hex digits"),
                    ));
                }
            }
        }
        Ok(CompactManifest { raw })
    }

    /// The release id the sender states.
    pub fn release(&self) -> &str {
        &self.raw.release
    }

    /// The app the sender states.
    pub fn app(&self) -> &str {
        &self.raw.app
    }

    /// Resolves each short digest with `lookup(short, size)` (a full digest this host
    /// holds with that prefix and size). When all resolve, the full manifest is parsed
    /// and validated as usual, its id included: a wrong guess is an error, on which the
    /// caller should ask for the full manifest.
    pub fn resolve(
        &self,
        mut lookup: impl FnMut(&str, u64) -> Option<Hash>,
    ) -> Result<Resolved, ArtifactError> {
        let mut full = WireManifest {
            format: self.raw.format,
            app: self.raw.app.clone(),
            release: self.raw.release.clone(),
            build: self.raw.build.clone(),
            entries: Vec::with_capacity(self.raw.entries.len()),
        };
        let mut missing = Vec::new();
        for e in &self.raw.entries {
            let mut e = e.clone();
            if let Some(short) = &e.sha256 {
                match lookup(short, e.size.unwrap_or(0)) {
                    Some(h) if h.to_hex().starts_with(short.as_str()) => {
                        e.sha256 = Some(h.to_hex())
                    }
                    _ => missing.push(short.clone()),
                }
            }
            full.entries.push(e);
        }
        if !missing.is_empty() {
            missing.sort();
            missing.dedup();
            return Ok(Resolved::Missing(missing));
        }
        let json = serde_json::to_vec(&full).expect("manifest serialisation cannot fail");
        let limits = Limits {
            max_manifest_bytes: u64::MAX,
            max_entries: usize::MAX,
            max_total_bytes: u64::MAX,
        };
        Manifest::parse(&json, &limits).map(Resolved::Complete)
    }
}

/// Checks one entry path: relative, `/`-separated, no empty, `.` or `..` components,
/// no control characters, at most [`MAX_PATH_BYTES`] bytes and 255 bytes per component,
/// and not the manifest's own name.
pub fn check_path(path: &str) -> Result<(), Refusal> {
    if path.is_empty() {
        return Err(Refusal::BadPath("empty path"));
    }
    if path.starts_with('/') {
        return Err(Refusal::AbsolutePath);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(Refusal::BadPath("longer than 4096 bytes"));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(Refusal::BadPath(
            "control character (NUL, newline, ...) in path",
        ));
    }
    if path == MANIFEST_NAME {
        return Err(Refusal::BadPath("reserved for the manifest"));
    }
    for comp in path.split('/') {
        match comp {
            "" => return Err(Refusal::BadPath("empty component or trailing slash")),
            "." => return Err(Refusal::BadPath("`.` component")),
            ".." => return Err(Refusal::ParentComponent),
            c if c.len() > 255 => return Err(Refusal::BadPath("component longer than 255 bytes")),
            _ => {}
        }
    }
    Ok(())
}

/// Modes allowed for files and directories: permission bits only, never world-writable.
pub fn check_mode(mode: u32) -> Result<(), Refusal> {
    if mode & !0o777 != 0 || mode & 0o002 != 0 {
        return Err(Refusal::BadMode(mode));
    }
    Ok(())
}

fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|i| &path[..i])
}

fn validate(
    app: &str,
    build: &BuildInfo,
    entries: &[Entry],
    limits: &Limits,
) -> Result<(), ArtifactError> {
    if app.is_empty()
        || app.len() > 64
        || !app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ArtifactError::Manifest(format!(
            "app name `{app}` must be 1-64 letters, digits, `-` or `_`"
        )));
    }
    if build
        .commit
        .as_deref()
        .is_some_and(|c| c.len() > 64 || !c.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ArtifactError::Manifest(
            "build commit must be a hex object id".into(),
        ));
    }
    if build.hoist_version.len() > 64 || build.config_hash.len() > 128 {
        return Err(ArtifactError::Manifest("build info field too long".into()));
    }
    if entries.len() > limits.max_entries {
        return Err(ArtifactError::Limit {
            what: format!("the number of entries ({})", entries.len()),
            limit: limits.max_entries as u64,
        });
    }
    let mut total: u64 = 0;
    let mut index: HashMap<&str, &EntryKind> = HashMap::with_capacity(entries.len());
    for e in entries {
        check_path(&e.path).map_err(|r| ArtifactError::entry(&e.path, r))?;
        // Every parent must be a directory listed before: nothing is ever written
        // through a symlink, and the tree can be created in manifest order.
        if let Some(p) = parent(&e.path) {
            if !matches!(index.get(p), Some(EntryKind::Dir { .. })) {
                return Err(ArtifactError::entry(&e.path, Refusal::ParentNotDirectory));
            }
        }
        match &e.kind {
            EntryKind::File { size, mode, .. } => {
                check_mode(*mode).map_err(|r| ArtifactError::entry(&e.path, r))?;
                total = total.saturating_add(*size);
                if total > limits.max_total_bytes {
                    return Err(ArtifactError::Limit {
                        what: format!("the total size of files (at least {total} bytes)"),
                        limit: limits.max_total_bytes,
                    });
                }
            }
            EntryKind::Dir { mode } => {
                check_mode(*mode).map_err(|r| ArtifactError::entry(&e.path, r))?
            }
            EntryKind::Symlink { target } => {
                check_target(target).map_err(|r| ArtifactError::entry(&e.path, r))?
            }
        }
        if index.insert(&e.path, &e.kind).is_some() {
            return Err(ArtifactError::entry(&e.path, Refusal::Duplicate));
        }
    }
    for e in entries {
        if let EntryKind::Symlink { target } = &e.kind {
            resolve_inside(&index, &e.path, target)
                .map_err(|r| ArtifactError::entry(&e.path, r))?;
        }
    }
    Ok(())
}

fn check_target(target: &str) -> Result<(), Refusal> {
    let bad = |why| {
        Err(Refusal::BadSymlinkTarget {
            target: target.to_string(),
            why,
        })
    };
    if target.is_empty() {
        return bad("empty");
    }
    if target.starts_with('/') {
        return Err(Refusal::SymlinkEscapes {
            target: target.to_string(),
        });
    }
    if target.len() > MAX_PATH_BYTES {
        return bad("longer than 4096 bytes");
    }
    if target.chars().any(|c| c.is_control()) {
        return bad("control character");
    }
    Ok(())
}

/// Resolves `target` (of the symlink at `link`) against the tree the manifest describes,
/// following symlinks of the tree, and refuses it if any step leaves the tree. A lexical
/// check alone is not enough: `d/up -> ..` is fine, but `x -> d/up/..` escapes.
fn resolve_inside(
    index: &HashMap<&str, &EntryKind>,
    link: &str,
    target: &str,
) -> Result<(), Refusal> {
    let escapes = || Refusal::SymlinkEscapes {
        target: target.to_string(),
    };
    let mut stack: Vec<String> = parent(link)
        .map(|p| p.split('/').map(String::from).collect())
        .unwrap_or_default();
    // Components still to walk, in reverse so that pop() yields the next one.
    let mut todo: Vec<String> = target.split('/').rev().map(String::from).collect();
    let mut hops = 0;
    while let Some(comp) = todo.pop() {
        match comp.as_str() {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return Err(escapes());
                }
            }
            name => {
                stack.push(name.to_string());
                let here = stack.join("/");
                if let Some(EntryKind::Symlink { target: next }) = index.get(here.as_str()) {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(Refusal::BadSymlinkTarget {
                            target: target.to_string(),
                            why: "symlink loop",
                        });
                    }
                    if next.starts_with('/') {
                        return Err(escapes());
                    }
                    stack.pop();
                    todo.extend(next.split('/').rev().map(String::from));
                }
            }
        }
    }
    Ok(())
}

// ---- the wire format -------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireManifest {
    format: u32,
    app: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    release: String,
    build: WireBuild,
    entries: Vec<WireEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireBuild {
    commit: Option<String>,
    dirty: bool,
    commit_time: i64,
    hoist_version: String,
    config_hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    path: String,
    #[serde(rename = "type")]
    kind: WireKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    target: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum WireKind {
    File,
    Dir,
    Symlink,
}

fn wire(app: &str, release: Option<&str>, build: &BuildInfo, entries: &[Entry]) -> WireManifest {
    WireManifest {
        format: FORMAT,
        app: app.to_string(),
        release: release.unwrap_or_default().to_string(),
        build: WireBuild {
            commit: build.commit.clone(),
            dirty: build.dirty,
            commit_time: build.commit_time,
            hoist_version: build.hoist_version.clone(),
            config_hash: build.config_hash.clone(),
        },
        entries: entries
            .iter()
            .map(|e| {
                let mut w = WireEntry {
                    path: e.path.clone(),
                    kind: WireKind::File,
                    mode: None,
                    size: None,
                    sha256: None,
                    target: None,
                };
                match &e.kind {
                    EntryKind::File { sha256, size, mode } => {
                        w.mode = Some(format!("{mode:04o}"));
                        w.size = Some(*size);
                        w.sha256 = Some(sha256.to_hex());
                    }
                    EntryKind::Dir { mode } => {
                        w.kind = WireKind::Dir;
                        w.mode = Some(format!("{mode:04o}"));
                    }
                    EntryKind::Symlink { target } => {
                        w.kind = WireKind::Symlink;
                        w.target = Some(target.clone());
                    }
                }
                w
            })
            .collect(),
    }
}

fn release_id(body: &WireManifest) -> ReleaseId {
    let bytes = serde_json::to_vec(body).expect("manifest serialisation cannot fail");
    ReleaseId(Hash::of(&bytes).to_hex()[..16].to_string())
}

fn entry_from_wire(w: WireEntry) -> Result<Entry, ArtifactError> {
    let bad = |why: &'static str| ArtifactError::entry(&w.path, Refusal::BadHeader(why));
    let mode = match &w.mode {
        Some(m) if m.len() == 4 && m.bytes().all(|b| (b'0'..=b'7').contains(&b)) => {
            Some(u32::from_str_radix(m, 8).map_err(|_| bad("mode is not 4 octal digits"))?)
        }
        Some(_) => return Err(bad("mode is not 4 octal digits")),
        None => None,
    };
    let kind = match w.kind {
        WireKind::File => {
            let (Some(mode), Some(size), Some(sha), None) = (mode, w.size, &w.sha256, &w.target)
            else {
                return Err(bad("a file needs exactly `mode`, `size` and `sha256`"));
            };
            let sha256 =
                Hash::parse(sha).ok_or_else(|| bad("`sha256` is not 64 lowercase hex digits"))?;
            EntryKind::File { sha256, size, mode }
        }
        WireKind::Dir => {
            let (Some(mode), None, None, None) = (mode, w.size, &w.sha256, &w.target) else {
                return Err(bad("a directory needs exactly `mode`"));
            };
            EntryKind::Dir { mode }
        }
        WireKind::Symlink => {
            let (None, None, None, Some(target)) = (mode, w.size, &w.sha256, &w.target) else {
                return Err(bad("a symlink needs exactly `target`"));
            };
            EntryKind::Symlink {
                target: target.clone(),
            }
        }
    };
    Ok(Entry { path: w.path, kind })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> BuildInfo {
        BuildInfo {
            commit: Some("abc123".into()),
            dirty: false,
            commit_time: 1_700_000_000,
            hoist_version: "0.1.0".into(),
            config_hash: "00".into(),
        }
    }

    fn file(path: &str, content: &[u8], mode: u32) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::File {
                sha256: Hash::of(content),
                size: content.len() as u64,
                mode,
            },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Dir { mode: 0o755 },
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            path: path.into(),
            kind: EntryKind::Symlink {
                target: target.into(),
            },
        }
    }

    fn refusal(entries: Vec<Entry>) -> Refusal {
        match Manifest::new("app", info(), entries, &Limits::default()) {
            Err(ArtifactError::Entry { reason, .. }) => reason,
            other => panic!("expected an entry refusal, got {other:?}"),
        }
    }

    #[test]
    fn json_round_trips_and_id_is_stable() {
        let m = Manifest::new(
            "app",
            info(),
            vec![file("b", b"x", 0o644), dir("a"), link("a/l", "../b")],
            &Limits::default(),
        )
        .unwrap();
        let json = m.to_json();
        let back = Manifest::parse(&json, &Limits::default()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.to_json(), json);
        assert_eq!(m.entries()[0].path, "a", "entries are sorted");
        let other = Manifest::new(
            "app",
            info(),
            vec![file("b", b"y", 0o644), dir("a")],
            &Limits::default(),
        )
        .unwrap();
        assert_ne!(other.release(), m.release());
    }

    #[test]
    fn tampered_manifest_is_refused_for_its_id() {
        let m = Manifest::new(
            "app",
            info(),
            vec![file("b", b"x", 0o644)],
            &Limits::default(),
        )
        .unwrap();
        let json = String::from_utf8(m.to_json())
            .unwrap()
            .replace("\"size\":1", "\"size\":2");
        let err = Manifest::parse(json.as_bytes(), &Limits::default()).unwrap_err();
        assert!(
            err.to_string().contains("does not match its content"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let m = Manifest::new(
            "app",
            info(),
            vec![file("b", b"x", 0o644)],
            &Limits::default(),
        )
        .unwrap();
        let json = String::from_utf8(m.to_json())
            .unwrap()
            .replacen("{", "{\"extra\":1,", 1);
        assert!(Manifest::parse(json.as_bytes(), &Limits::default()).is_err());
    }

    #[test]
    fn unsafe_paths_are_refused() {
        assert_eq!(
            refusal(vec![file("/etc/x", b"", 0o644)]),
            Refusal::AbsolutePath
        );
        assert_eq!(
            refusal(vec![file("../x", b"", 0o644)]),
            Refusal::ParentComponent
        );
        assert!(matches!(
            refusal(vec![file("./x", b"", 0o644)]),
            Refusal::BadPath(_)
        ));
        assert!(matches!(
            refusal(vec![file("a\nb", b"", 0o644)]),
            Refusal::BadPath(_)
        ));
        assert!(matches!(
            refusal(vec![file("a\0b", b"", 0o644)]),
            Refusal::BadPath(_)
        ));
        assert!(matches!(
            refusal(vec![file(&"a".repeat(300), b"", 0o644)]),
            Refusal::BadPath(_)
        ));
        assert!(matches!(
            refusal(vec![file(MANIFEST_NAME, b"", 0o644)]),
            Refusal::BadPath(_)
        ));
        assert_eq!(
            refusal(vec![file("nodir/x", b"", 0o644)]),
            Refusal::ParentNotDirectory
        );
        assert_eq!(
            refusal(vec![link("l", "."), file("l/x", b"", 0o644)]),
            Refusal::ParentNotDirectory
        );
    }

    #[test]
    fn unsafe_modes_are_refused() {
        for mode in [0o4755, 0o2755, 0o1755, 0o777, 0o666] {
            assert_eq!(refusal(vec![file("x", b"", mode)]), Refusal::BadMode(mode));
        }
    }

    #[test]
    fn symlinks_must_stay_inside_the_tree() {
        let esc = |t: &str| Refusal::SymlinkEscapes { target: t.into() };
        assert_eq!(refusal(vec![link("l", "/etc/passwd")]), esc("/etc/passwd"));
        assert_eq!(refusal(vec![link("l", "../x")]), esc("../x"));
        assert_eq!(
            refusal(vec![dir("d"), link("d/l", "../../x")]),
            esc("../../x")
        );
        // Escaping through another symlink of the tree.
        assert_eq!(
            refusal(vec![dir("d"), link("d/up", ".."), link("x", "d/up/..")]),
            esc("d/up/..")
        );
        assert!(matches!(
            refusal(vec![link("a", "b"), link("b", "a/x")]),
            Refusal::BadSymlinkTarget { .. }
        ));
        // Inside: fine, dangling or not.
        Manifest::new(
            "app",
            info(),
            vec![
                dir("d"),
                link("d/up", ".."),
                link("x", "d/up/d"),
                link("y", "nowhere"),
            ],
            &Limits::default(),
        )
        .unwrap();
    }

    #[test]
    fn limits_are_enforced_at_parse_time() {
        let m = Manifest::new(
            "app",
            info(),
            vec![file("a", &[0; 10], 0o644), file("b", &[0; 10], 0o644)],
            &Limits::default(),
        )
        .unwrap();
        let json = m.to_json();
        let small = |f: fn(&mut Limits)| {
            let mut l = Limits::default();
            f(&mut l);
            l
        };
        assert!(matches!(
            Manifest::parse(&json, &small(|l| l.max_entries = 1)),
            Err(ArtifactError::Limit { .. })
        ));
        assert!(matches!(
            Manifest::parse(&json, &small(|l| l.max_total_bytes = 15)),
            Err(ArtifactError::Limit { .. })
        ));
        assert!(matches!(
            Manifest::parse(&json, &small(|l| l.max_manifest_bytes = 10)),
            Err(ArtifactError::Limit { .. })
        ));
    }
}
