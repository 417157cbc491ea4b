//! Helpers shared by this crate's integration tests: project trees on disk, build
//! options, and a raw tar writer for hand-built hostile archives (it writes whatever
//! it is told, which the `tar` crate's builder refuses to).
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use hoist_artifact::{
    BuildInfo, BuildOptions, Entry, EntryKind, Hash, Limits, Manifest, MANIFEST_NAME,
};

/// Writes `content` at `root/rel`, creating parents, with `mode`.
pub fn write(root: &Path, rel: &str, content: &[u8], mode: u32) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

/// A small project: nested dirs, an executable, a relative symlink, an empty dir.
pub fn sample_tree(root: &Path) {
    write(root, "app.py", b"print('hello')\n", 0o644);
    write(root, "bin/run", b"#!/bin/sh\nexec python3 app.py\n", 0o755);
    write(root, "static/css/site.css", b"body { color: red }\n", 0o644);
    write(root, "static/js/app.js", &vec![b'x'; 100_000], 0o644);
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("static/css/site.css", root.join("site.css")).unwrap();
}

pub fn options(root: &Path) -> BuildOptions {
    BuildOptions {
        root: root.to_path_buf(),
        app: "notes".into(),
        include: vec![],
        exclude: vec![],
        hoist_version: "0.1.0-test".into(),
        config_hash: Hash::of(b"app = \"notes\"").to_hex(),
        source_date_epoch: Some(1_700_000_000),
        limits: Limits::default(),
    }
}

pub fn info() -> BuildInfo {
    BuildInfo {
        commit: None,
        dirty: false,
        commit_time: 1_700_000_000,
        hoist_version: "0.1.0-test".into(),
        config_hash: "00".into(),
    }
}

pub fn file_entry(path: &str, content: &[u8], mode: u32) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::File {
            sha256: Hash::of(content),
            size: content.len() as u64,
            mode,
        },
    }
}

pub fn dir_entry(path: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Dir { mode: 0o755 },
    }
}

pub fn link_entry(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

pub fn manifest(entries: Vec<Entry>) -> Manifest {
    Manifest::new("notes", info(), entries, &Limits::default()).unwrap()
}

/// A raw tar stream, header by header.
#[derive(Default, Clone)]
pub struct RawTar {
    pub bytes: Vec<u8>,
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{:0width$o}", value, width = field.len() - 1);
    if s.len() < field.len() {
        field[..s.len()].copy_from_slice(s.as_bytes());
    } else {
        // GNU base-256 for values octal cannot hold.
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&value.to_be_bytes());
    }
}

impl RawTar {
    /// A ustar header with `name` (≤ 100 bytes), `typeflag`, `mode`, `size`, `link`.
    pub fn header(
        &mut self,
        name: &[u8],
        typeflag: u8,
        mode: u32,
        size: u64,
        link: &[u8],
    ) -> &mut Self {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        octal(&mut h[100..108], mode as u64);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], size);
        octal(&mut h[136..148], 1_700_000_000);
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|&b| b as u64).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.bytes.extend_from_slice(&h);
        self
    }

    /// Data padded to a block.
    pub fn data(&mut self, data: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.bytes.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.header(name.as_bytes(), b'0', mode, data.len() as u64, b"")
            .data(data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.header(format!("{name}/").as_bytes(), b'5', mode, 0, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.header(name.as_bytes(), b'2', 0o777, 0, target.as_bytes())
    }

    /// A GNU long-name record for the next header.
    pub fn long_name(&mut self, name: &[u8]) -> &mut Self {
        let mut data = name.to_vec();
        data.push(0);
        self.header(b"././@LongLink", b'L', 0o644, data.len() as u64, b"")
            .data(&data)
    }

    /// The manifest as the first entry.
    pub fn manifest(&mut self, m: &Manifest) -> &mut Self {
        self.manifest_bytes(&m.to_json())
    }

    pub fn manifest_bytes(&mut self, json: &[u8]) -> &mut Self {
        self.file(MANIFEST_NAME, 0o644, json)
    }

    /// Every entry of `m` with the right content from `contents` (path → bytes).
    pub fn entries_of(&mut self, m: &Manifest, contents: &dyn Fn(&str) -> Vec<u8>) -> &mut Self {
        for e in m.entries() {
            match &e.kind {
                EntryKind::File { mode, .. } => {
                    self.file(&e.path, *mode, &contents(&e.path));
                }
                EntryKind::Dir { mode } => {
                    self.dir(&e.path, *mode);
                }
                EntryKind::Symlink { target } => {
                    self.symlink(&e.path, target);
                }
            }
        }
        self
    }

    pub fn end(&mut self) -> &mut Self {
        self.bytes.extend_from_slice(&[0u8; 1024]);
        self
    }

    pub fn zstd(&self) -> Vec<u8> {
        zstd::encode_all(&self.bytes[..], 3).unwrap()
    }
}

/// A directory holding a canary directory and the (not yet created) staging path, to
/// check that a refused unpack wrote nothing outside staging and left no staging.
pub struct Arena {
    pub dir: tempfile::TempDir,
    pub staging: PathBuf,
    pub canary: PathBuf,
}

impl Arena {
    pub fn new() -> Arena {
        let dir = hoist_testkit::tempdir();
        let canary = dir.path().join("canary");
        fs::create_dir(&canary).unwrap();
        fs::write(canary.join("keep"), b"canary").unwrap();
        let staging = dir.path().join("staging");
        Arena {
            dir,
            staging,
            canary,
        }
    }

    /// Every path under the arena, relative, sorted.
    pub fn listing(&self) -> Vec<String> {
        let mut out: Vec<String> = walkdir::WalkDir::new(self.dir.path())
            .min_depth(1)
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(self.dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            // The test's own owner mark (for the process reaper) is not the arena's.
            .filter(|p| p != hoist_testkit::OWNER_FILE)
            .collect();
        out.sort();
        out
    }

    /// Asserts the arena holds only the canary, untouched: no staging left behind and
    /// nothing written beside it.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.listing(),
            vec!["canary".to_string(), "canary/keep".to_string()]
        );
        assert_eq!(fs::read(self.canary.join("keep")).unwrap(), b"canary");
    }
}
