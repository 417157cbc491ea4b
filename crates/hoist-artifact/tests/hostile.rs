//! Hand-built hostile archives, one per refusal (design §6 "bad input", reliability F1):
//! each must be refused with the entry named, leave no staging directory, and write
//! nothing outside it (a canary directory beside staging stays untouched).

mod common;

use std::time::{Duration, Instant};

use common::*;
use hoist_artifact::{unpack, ArtifactError, Limits, Manifest, Refusal};

/// Unpacks `archive` (compressed) in a fresh arena and returns the error; asserts the
/// arena is clean afterwards.
fn refuse_with(archive: &[u8], limits: &Limits) -> ArtifactError {
    let arena = Arena::new();
    let err = unpack(archive, &arena.staging, limits).expect_err("hostile archive was accepted");
    arena.assert_clean();
    err
}

fn refuse(archive: &[u8]) -> ArtifactError {
    refuse_with(archive, &Limits::default())
}

/// Asserts the error is a refusal of `entry` for `reason`.
fn assert_refused(err: &ArtifactError, entry: &str, reason: &Refusal) {
    match err.refusal() {
        Some((e, r)) => {
            assert_eq!((e, r), (entry, reason), "wrong refusal: {err}");
            assert!(
                err.to_string().contains(&format!("`{entry}`")),
                "message must name the entry: {err}"
            );
        }
        None => panic!("expected a refusal of `{entry}` ({reason}), got: {err}"),
    }
}

/// A benign manifest and its archive entries, to put one hostile entry into.
fn benign() -> (Manifest, RawTar) {
    let m = manifest(vec![
        dir_entry("sub"),
        file_entry("sub/a.txt", b"hello", 0o644),
    ]);
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .file("sub/a.txt", 0o644, b"hello");
    (m, t)
}

/// A manifest JSON written by hand, for manifests `Manifest::new` would refuse to build
/// (the id is wrong on purpose: the entry checks run first and must be what refuses).
fn raw_manifest(entries: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1, "app": "notes", "release": "0000000000000000",
        "build": {"commit": null, "dirty": false, "commit_time": 0, "hoist_version": "t", "config_hash": "00"},
        "entries": entries,
    }))
    .unwrap()
}

#[test]
fn a_benign_archive_unpacks() {
    let m = manifest(vec![
        dir_entry("sub"),
        file_entry("sub/a.txt", b"hello", 0o644),
        file_entry("sub/run", b"#!/bin/sh\n", 0o755),
        link_entry("top", "sub/a.txt"),
    ]);
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .file("sub/a.txt", 0o644, b"hello")
        .file("sub/run", 0o755, b"#!/bin/sh\n");
    t.symlink("top", "sub/a.txt").end();
    let arena = Arena::new();
    let got = unpack(&t.zstd()[..], &arena.staging, &Limits::default()).unwrap();
    assert_eq!(got, m);
    hoist_artifact::verify_tree(&m, &arena.staging, false).unwrap();
    assert_eq!(
        std::fs::read_to_string(arena.staging.join("top")).unwrap(),
        "hello"
    );
}

#[test]
fn absolute_path_in_the_archive() {
    let (_, mut t) = benign();
    let arena_target = "/tmp/hoist-hostile-absolute-target";
    t.file(arena_target, 0o644, b"evil").end();
    assert_refused(&refuse(&t.zstd()), arena_target, &Refusal::AbsolutePath);
    assert!(!std::path::Path::new(arena_target).exists());
}

#[test]
fn absolute_path_in_the_manifest() {
    let json = raw_manifest(serde_json::json!([
        {"path": "/etc/cron.d/evil", "type": "file", "mode": "0644", "size": 4, "sha256": hoist_artifact::Hash::of(b"evil").to_hex()}
    ]));
    let mut t = RawTar::default();
    t.manifest_bytes(&json)
        .file("/etc/cron.d/evil", 0o644, b"evil")
        .end();
    assert_refused(
        &refuse(&t.zstd()),
        "/etc/cron.d/evil",
        &Refusal::AbsolutePath,
    );
}

#[test]
fn parent_traversal() {
    let (_, mut t) = benign();
    t.file("../canary/evil", 0o644, b"evil").end();
    assert_refused(
        &refuse(&t.zstd()),
        "../canary/evil",
        &Refusal::ParentComponent,
    );
}

#[test]
fn parent_traversal_in_the_manifest() {
    let json = raw_manifest(serde_json::json!([
        {"path": "sub/../../canary/evil", "type": "file", "mode": "0644", "size": 4, "sha256": hoist_artifact::Hash::of(b"evil").to_hex()}
    ]));
    let mut t = RawTar::default();
    t.manifest_bytes(&json).end();
    assert_refused(
        &refuse(&t.zstd()),
        "sub/../../canary/evil",
        &Refusal::ParentComponent,
    );
}

#[test]
fn dot_component_and_bad_names() {
    for name in ["./a", "sub/./a", "sub//a", "a\nb"] {
        let (_, mut t) = benign();
        t.file(name, 0o644, b"x").end();
        let err = refuse(&t.zstd());
        assert!(
            matches!(err.refusal(), Some((n, Refusal::BadPath(_))) if n == name),
            "{name:?}: {err}"
        );
    }
    // Not UTF-8.
    let (_, mut t) = benign();
    t.header(b"bad\xff", b'0', 0o644, 0, b"").end();
    assert!(matches!(
        refuse(&t.zstd()).refusal(),
        Some((_, Refusal::BadPath(_)))
    ));
}

#[test]
fn gnu_long_name_over_path_max() {
    let (_, mut t) = benign();
    let long = "a/".repeat(2100) + "x";
    t.long_name(long.as_bytes())
        .file("placeholder", 0o644, b"x")
        .end();
    let err = refuse(&t.zstd());
    assert!(
        matches!(err.refusal(), Some((_, Refusal::BadPath(_)))),
        "{err}"
    );
}

#[test]
fn gnu_long_name_within_limits_is_read() {
    let long = format!("{}/f", "d".repeat(200));
    let m = manifest(vec![
        dir_entry(&"d".repeat(200)),
        file_entry(&long, b"x", 0o644),
    ]);
    let mut t = RawTar::default();
    t.manifest(&m)
        .long_name("d".repeat(200).as_bytes())
        .header(b"dshort/", b'5', 0o755, 0, b"");
    t.long_name(long.as_bytes())
        .file("short", 0o644, b"x")
        .end();
    let arena = Arena::new();
    unpack(&t.zstd()[..], &arena.staging, &Limits::default()).unwrap();
    assert_eq!(std::fs::read(arena.staging.join(&long)).unwrap(), b"x");
}

#[test]
fn symlink_with_absolute_target() {
    let m = raw_manifest(serde_json::json!([{"path": "etc", "type": "symlink", "target": "/etc"}]));
    let mut t = RawTar::default();
    t.manifest_bytes(&m).symlink("etc", "/etc").end();
    assert_refused(
        &refuse(&t.zstd()),
        "etc",
        &Refusal::SymlinkEscapes {
            target: "/etc".into(),
        },
    );
}

#[test]
fn symlink_with_relative_target_out_of_the_tree() {
    let m = raw_manifest(serde_json::json!([
        {"path": "sub", "type": "dir", "mode": "0755"},
        {"path": "sub/out", "type": "symlink", "target": "../../canary"}
    ]));
    let mut t = RawTar::default();
    t.manifest_bytes(&m)
        .dir("sub", 0o755)
        .symlink("sub/out", "../../canary")
        .end();
    assert_refused(
        &refuse(&t.zstd()),
        "sub/out",
        &Refusal::SymlinkEscapes {
            target: "../../canary".into(),
        },
    );
}

#[test]
fn symlink_escaping_through_another_symlink() {
    let m = raw_manifest(serde_json::json!([
        {"path": "d", "type": "dir", "mode": "0755"},
        {"path": "d/up", "type": "symlink", "target": ".."},
        {"path": "x", "type": "symlink", "target": "d/up/.."}
    ]));
    let mut t = RawTar::default();
    t.manifest_bytes(&m).end();
    assert_refused(
        &refuse(&t.zstd()),
        "x",
        &Refusal::SymlinkEscapes {
            target: "d/up/..".into(),
        },
    );
}

#[test]
fn symlink_in_the_archive_not_in_the_manifest() {
    let (_, mut t) = benign();
    t.symlink("out", "../canary")
        .file("out/evil", 0o644, b"evil")
        .end();
    assert_refused(&refuse(&t.zstd()), "out", &Refusal::NotInManifest);
}

#[test]
fn write_through_a_symlink_listed_in_the_manifest() {
    // `link -> sub` is fine on its own; a file beneath it would be written through it.
    let m = manifest(vec![dir_entry("sub"), link_entry("link", "sub")]);
    let mut t = RawTar::default();
    t.manifest(&m)
        .symlink("link", "sub")
        .dir("sub", 0o755)
        .file("link/evil", 0o644, b"evil")
        .end();
    assert_refused(&refuse(&t.zstd()), "link/evil", &Refusal::NotInManifest);

    let json = raw_manifest(serde_json::json!([
        {"path": "link", "type": "symlink", "target": "sub"},
        {"path": "link/evil", "type": "file", "mode": "0644", "size": 4, "sha256": hoist_artifact::Hash::of(b"evil").to_hex()},
        {"path": "sub", "type": "dir", "mode": "0755"}
    ]));
    let mut t = RawTar::default();
    t.manifest_bytes(&json).end();
    assert_refused(
        &refuse(&t.zstd()),
        "link/evil",
        &Refusal::ParentNotDirectory,
    );
}

#[test]
fn hardlink() {
    let (_, mut t) = benign();
    t.header(b"hard", b'1', 0o644, 0, b"/etc/passwd").end();
    assert_refused(&refuse(&t.zstd()), "hard", &Refusal::Hardlink);
    let (_, mut t) = benign();
    t.header(b"hard-in", b'1', 0o644, 0, b"sub/a.txt").end();
    assert_refused(&refuse(&t.zstd()), "hard-in", &Refusal::Hardlink);
}

#[test]
fn char_and_block_devices() {
    for (flag, name) in [(b'3', "null"), (b'4', "sda")] {
        let (_, mut t) = benign();
        t.header(name.as_bytes(), flag, 0o644, 0, b"").end();
        assert_refused(&refuse(&t.zstd()), name, &Refusal::Device);
    }
}

#[test]
fn fifo() {
    let (_, mut t) = benign();
    t.header(b"pipe", b'6', 0o644, 0, b"").end();
    assert_refused(&refuse(&t.zstd()), "pipe", &Refusal::Fifo);
}

#[test]
fn pax_header_including_a_size_desync() {
    // CVE-2025-62518 shape: a pax `size` that disagrees with the ustar header.
    let (_, mut t) = benign();
    let pax = b"11 size=99\n";
    t.header(b"PaxHeaders/x", b'x', 0o644, pax.len() as u64, b"")
        .data(pax)
        .file("x", 0o644, b"")
        .end();
    assert_refused(&refuse(&t.zstd()), "PaxHeaders/x", &Refusal::PaxHeader);
}

#[test]
fn unknown_entry_type() {
    let (_, mut t) = benign();
    t.header(b"sparse", b'S', 0o644, 0, b"").end();
    assert_refused(&refuse(&t.zstd()), "sparse", &Refusal::UnsupportedType('S'));
}

#[test]
fn duplicate_path() {
    let (_, mut t) = benign();
    t.file("sub/a.txt", 0o644, b"hello").end();
    assert_refused(&refuse(&t.zstd()), "sub/a.txt", &Refusal::Duplicate);
}

#[test]
fn duplicate_path_in_the_manifest() {
    let e = serde_json::json!({"path": "a", "type": "dir", "mode": "0755"});
    let mut t = RawTar::default();
    t.manifest_bytes(&raw_manifest(serde_json::json!([e.clone(), e])))
        .end();
    assert_refused(&refuse(&t.zstd()), "a", &Refusal::Duplicate);
}

#[test]
fn entry_not_in_the_manifest() {
    let (_, mut t) = benign();
    t.file("extra", 0o644, b"extra").end();
    assert_refused(&refuse(&t.zstd()), "extra", &Refusal::NotInManifest);
}

#[test]
fn manifest_entry_missing_from_the_archive() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m).dir("sub", 0o755).end();
    assert_refused(&refuse(&t.zstd()), "sub/a.txt", &Refusal::Missing);
}

#[test]
fn size_mismatch() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .file("sub/a.txt", 0o644, b"hello!")
        .end();
    assert_refused(
        &refuse(&t.zstd()),
        "sub/a.txt",
        &Refusal::SizeMismatch {
            expected: 5,
            found: 6,
        },
    );
}

#[test]
fn hash_mismatch() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .file("sub/a.txt", 0o644, b"HELLO")
        .end();
    let err = refuse(&t.zstd());
    assert!(
        matches!(
            err.refusal(),
            Some(("sub/a.txt", Refusal::HashMismatch { .. }))
        ),
        "{err}"
    );
}

#[test]
fn kind_mismatch() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .dir("sub/a.txt", 0o755)
        .end();
    assert_refused(
        &refuse(&t.zstd()),
        "sub/a.txt",
        &Refusal::KindMismatch {
            expected: "file",
            found: "directory",
        },
    );
}

#[test]
fn setuid_setgid_sticky_and_world_writable_modes() {
    for mode in [0o4755, 0o2755, 0o1755, 0o777] {
        let (m, _) = benign();
        let mut t = RawTar::default();
        t.manifest(&m)
            .dir("sub", 0o755)
            .file("sub/a.txt", mode, b"hello")
            .end();
        assert_refused(&refuse(&t.zstd()), "sub/a.txt", &Refusal::BadMode(mode));
    }
    let json = raw_manifest(
        serde_json::json!([{"path": "suid", "type": "file", "mode": "4755", "size": 0,
        "sha256": hoist_artifact::Hash::of(b"").to_hex()}]),
    );
    let mut t = RawTar::default();
    t.manifest_bytes(&json).end();
    assert_refused(&refuse(&t.zstd()), "suid", &Refusal::BadMode(0o4755));
}

#[test]
fn manifest_not_first() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.dir("sub", 0o755).manifest(&m).end();
    assert!(
        matches!(refuse(&t.zstd()), ArtifactError::ManifestNotFirst { found } if found == "sub")
    );
}

#[test]
fn truncated_zstd() {
    let (_, mut t) = benign();
    t.end();
    let z = t.zstd();
    for cut in [z.len() / 2, z.len() - 1, 10] {
        let err = refuse(&z[..cut]);
        assert!(
            matches!(err, ArtifactError::Corrupt { .. })
                || matches!(err.refusal(), Some((_, Refusal::Truncated))),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn truncated_tar_without_end_marker() {
    let (_, t) = benign();
    assert!(matches!(refuse(&t.zstd()), ArtifactError::Corrupt { .. }));
}

#[test]
fn bytes_after_the_end_of_the_tar() {
    let (_, mut t) = benign();
    t.end();
    t.bytes
        .extend_from_slice(b"smuggled data after the end marker");
    assert!(matches!(refuse(&t.zstd()), ArtifactError::TrailingData));
}

#[test]
fn bytes_after_the_zstd_frame() {
    let (_, mut t) = benign();
    t.end();
    let mut z = t.zstd();
    z.extend_from_slice(b"garbage after the frame");
    let err = refuse(&z);
    assert!(
        matches!(
            err,
            ArtifactError::Corrupt { .. } | ArtifactError::TrailingData
        ),
        "{err}"
    );
}

#[test]
fn zstd_window_over_128_mib() {
    let (_, mut t) = benign();
    t.end();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(28).unwrap();
    std::io::Write::write_all(&mut enc, &t.bytes).unwrap();
    let z = enc.finish().unwrap();
    assert!(matches!(refuse(&z), ArtifactError::Corrupt { .. }));
}

#[test]
fn entry_count_bomb() {
    // 1000 entries against a limit of 100: refused from the manifest, before any write.
    let entries: Vec<_> = (0..1000).map(|i| dir_entry(&format!("d{i:04}"))).collect();
    let m = Manifest::new("notes", info(), entries, &Limits::default()).unwrap();
    let mut t = RawTar::default();
    t.manifest(&m).entries_of(&m, &|_| vec![]).end();
    let limits = Limits {
        max_entries: 100,
        ..Limits::default()
    };
    assert!(matches!(
        refuse_with(&t.zstd(), &limits),
        ArtifactError::Limit { .. }
    ));
}

#[test]
fn total_size_bomb_declared_in_the_manifest() {
    // 1000:1 — 64 MiB of zeros compresses to a few KiB; the limit is 1 MiB.
    let zeros = vec![0u8; 64 << 20];
    let m = manifest(vec![file_entry("zeros", &zeros, 0o644)]);
    let mut t = RawTar::default();
    t.manifest(&m).file("zeros", 0o644, &zeros).end();
    let z = t.zstd();
    assert!(
        z.len() * 1000 < t.bytes.len(),
        "not a 1000:1 bomb: {} -> {}",
        t.bytes.len(),
        z.len()
    );
    drop(t);
    let limits = Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    };
    let started = Instant::now();
    assert!(matches!(
        refuse_with(&z, &limits),
        ArtifactError::Limit { .. }
    ));
    // Not a timing assertion on the machine's speed: refusing must not mean inflating.
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn header_size_larger_than_the_manifest_says() {
    // The manifest says 5 bytes; the header claims 1 TiB (a bomb behind a small manifest).
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m)
        .dir("sub", 0o755)
        .header(b"sub/a.txt", b'0', 0o644, 1 << 40, b"")
        .end();
    assert_refused(
        &refuse(&t.zstd()),
        "sub/a.txt",
        &Refusal::SizeMismatch {
            expected: 5,
            found: 1 << 40,
        },
    );
}

#[test]
fn oversized_manifest() {
    let (m, _) = benign();
    let mut t = RawTar::default();
    t.manifest(&m).end();
    let limits = Limits {
        max_manifest_bytes: 16,
        ..Limits::default()
    };
    assert!(matches!(
        refuse_with(&t.zstd(), &limits),
        ArtifactError::Limit { .. }
    ));
}

#[test]
fn bad_header_checksum() {
    let (_, mut t) = benign();
    t.end();
    t.bytes[1024 + 148] = b'7';
    let err = refuse(&t.zstd());
    assert!(
        matches!(err.refusal(), Some((_, Refusal::BadHeader(_)))),
        "{err}"
    );
}

#[test]
fn staging_that_already_exists_is_not_touched() {
    let arena = Arena::new();
    std::fs::create_dir(&arena.staging).unwrap();
    std::fs::write(arena.staging.join("mine"), b"x").unwrap();
    let (_, mut t) = benign();
    t.end();
    let err = unpack(&t.zstd()[..], &arena.staging, &Limits::default()).unwrap_err();
    assert!(matches!(err, ArtifactError::Exists { .. }));
    assert!(arena.staging.join("mine").exists());
}
