//! `verify` and `read_manifest` on real artifact files: a good artifact passes; a
//! tampered byte, a truncated file, an extra entry, a missing entry and a wrong size are
//! each refused with the entry named.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use hoist_artifact::{build, read_manifest, verify, ArtifactError, Limits, Manifest, Refusal};

struct Built {
    _dir: tempfile::TempDir,
    path: PathBuf,
    manifest: Manifest,
}

fn built() -> Built {
    let dir = hoist_testkit::tempdir();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    sample_tree(&src);
    let out = build(&options(&src), &dir.path().join("a.tar.zst")).unwrap();
    Built {
        path: out.path,
        manifest: out.manifest,
        _dir: dir,
    }
}

fn tar_bytes(path: &Path) -> Vec<u8> {
    zstd::decode_all(&fs::read(path).unwrap()[..]).unwrap()
}

fn write_zstd(path: &Path, tar: &[u8]) {
    fs::write(path, zstd::encode_all(tar, 3).unwrap()).unwrap();
}

fn refusal_of(err: &ArtifactError) -> (&str, &Refusal) {
    err.refusal()
        .unwrap_or_else(|| panic!("expected an entry refusal, got {err}"))
}

#[test]
fn a_good_artifact_verifies_and_inspects() {
    let b = built();
    assert_eq!(verify(&b.path, &Limits::default()).unwrap(), b.manifest);
    assert_eq!(
        read_manifest(&b.path, &Limits::default()).unwrap(),
        b.manifest
    );
    let s = b.manifest.summary();
    assert_eq!((s.files, s.directories, s.symlinks), (4, 5, 1));
    assert_eq!(s.total_bytes, 15 + 30 + 20 + 100_000);
}

#[test]
fn a_tampered_byte_names_the_file() {
    let b = built();
    let mut tar = tar_bytes(&b.path);
    let at = tar.windows(10).position(|w| w == b"body { col").unwrap();
    tar[at] = b'B';
    write_zstd(&b.path, &tar);
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            refusal_of(&err),
            ("static/css/site.css", Refusal::HashMismatch { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("`static/css/site.css`"));
}

#[test]
fn a_truncated_file_is_refused() {
    let b = built();
    let bytes = fs::read(&b.path).unwrap();
    fs::write(&b.path, &bytes[..bytes.len() - 100]).unwrap();
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ArtifactError::Corrupt { .. }
                | ArtifactError::Entry {
                    reason: Refusal::Truncated,
                    ..
                }
        ),
        "{err}"
    );
    fs::write(&b.path, &bytes[..bytes.len() / 3]).unwrap();
    assert!(verify(&b.path, &Limits::default()).is_err());
}

#[test]
fn an_extra_entry_is_refused() {
    let b = built();
    let mut tar = tar_bytes(&b.path);
    // Drop the end-of-archive blocks, append an entry, end again.
    while tar.ends_with(&[0u8; 512]) {
        tar.truncate(tar.len() - 512);
    }
    let mut extra = RawTar::default();
    extra.file("zz-extra", 0o644, b"smuggled").end();
    tar.extend_from_slice(&extra.bytes);
    write_zstd(&b.path, &tar);
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert_eq!(refusal_of(&err), ("zz-extra", &Refusal::NotInManifest));
}

#[test]
fn a_missing_entry_and_a_wrong_size_are_refused() {
    let b = built();
    let content = |p: &str| fs::read(b._dir.path().join("src").join(p)).unwrap();
    // Everything but the last file.
    let mut t = RawTar::default();
    t.manifest(&b.manifest);
    let mut last = String::new();
    for e in b.manifest.entries() {
        match &e.kind {
            hoist_artifact::EntryKind::File { mode, .. } if e.path == "static/js/app.js" => {
                last = e.path.clone();
                let _ = mode;
            }
            hoist_artifact::EntryKind::File { mode, .. } => {
                t.file(&e.path, *mode, &content(&e.path));
            }
            hoist_artifact::EntryKind::Dir { mode } => {
                t.dir(&e.path, *mode);
            }
            hoist_artifact::EntryKind::Symlink { target } => {
                t.symlink(&e.path, target);
            }
        }
    }
    t.end();
    write_zstd(&b.path, &t.bytes);
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert_eq!(refusal_of(&err), (last.as_str(), &Refusal::Missing));

    let mut t = RawTar::default();
    t.manifest(&b.manifest).entries_of(&b.manifest, &|p| {
        let mut c = content(p);
        if p == "app.py" {
            c.push(b'\n');
        }
        c
    });
    t.end();
    write_zstd(&b.path, &t.bytes);
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert_eq!(
        refusal_of(&err),
        (
            "app.py",
            &Refusal::SizeMismatch {
                expected: 15,
                found: 16
            }
        )
    );
}

#[test]
fn a_tampered_manifest_is_refused() {
    let b = built();
    let tar = tar_bytes(&b.path);
    let text = String::from_utf8_lossy(&tar).into_owned();
    assert!(text.contains("\"hoist_version\":\"0.1.0-test\""));
    let tampered: Vec<u8> = String::from_utf8_lossy(&tar)
        .replace("0.1.0-test", "0.1.0-TEST")
        .into_bytes();
    assert_eq!(tampered.len(), tar.len());
    write_zstd(&b.path, &tampered);
    let err = verify(&b.path, &Limits::default()).unwrap_err();
    assert!(
        err.to_string().contains("does not match its content"),
        "{err}"
    );
}

#[test]
fn not_an_artifact() {
    let dir = hoist_testkit::tempdir();
    let p = dir.path().join("x");
    fs::write(&p, b"hello, not zstd").unwrap();
    assert!(matches!(
        verify(&p, &Limits::default()),
        Err(ArtifactError::Corrupt { .. })
    ));
    let missing = dir.path().join("nope");
    assert!(
        matches!(verify(&missing, &Limits::default()), Err(ArtifactError::Io { path, .. }) if path == missing)
    );
}
