//! Building artifacts from real trees on disk: reproducibility, what goes in, build
//! info from a real git repository, the build command, and the outer format as other
//! tools see it (GNU tar with zstd).

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use hoist_artifact::{build, run_build_command, BuildError, EntryKind, Refusal, MANIFEST_NAME};

fn paths(m: &hoist_artifact::Manifest) -> Vec<&str> {
    m.entries().iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn two_builds_of_the_same_tree_are_byte_identical() {
    let src = hoist_testkit::tempdir();
    let out = hoist_testkit::tempdir();
    sample_tree(src.path());
    let a = build(&options(src.path()), &out.path().join("a.tar.zst")).unwrap();
    let b = build(&options(src.path()), &out.path().join("b.tar.zst")).unwrap();
    assert_eq!(a.manifest.release(), b.manifest.release());
    assert_eq!(fs::read(&a.path).unwrap(), fs::read(&b.path).unwrap());
    assert_eq!(a.size, fs::metadata(&a.path).unwrap().len());

    // Times and owners on disk do not matter.
    for rel in ["app.py", "bin/run", "static/css/site.css"] {
        let p = src.path().join(rel);
        let f = fs::File::options().append(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(12345))
            .unwrap();
        // Another owner needs root; as anyone else the times alone are changed.
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&p, Some(4242), Some(4242)).unwrap();
        }
    }
    let c = build(&options(src.path()), &out.path().join("c.tar.zst")).unwrap();
    assert_eq!(fs::read(&a.path).unwrap(), fs::read(&c.path).unwrap());
}

#[test]
fn content_and_mode_changes_change_the_id() {
    let src = hoist_testkit::tempdir();
    let out = hoist_testkit::tempdir();
    sample_tree(src.path());
    let base = build(&options(src.path()), &out.path().join("a"))
        .unwrap()
        .manifest;
    write(src.path(), "app.py", b"print('bye')\n", 0o644);
    let content = build(&options(src.path()), &out.path().join("b"))
        .unwrap()
        .manifest;
    assert_ne!(base.release(), content.release());
    fs::set_permissions(src.path().join("app.py"), fs::Permissions::from_mode(0o755)).unwrap();
    let mode = build(&options(src.path()), &out.path().join("c"))
        .unwrap()
        .manifest;
    assert_ne!(content.release(), mode.release());
    assert!(matches!(
        mode.entry("app.py").unwrap().kind,
        EntryKind::File { mode: 0o755, .. }
    ));
}

#[test]
fn modes_are_normalised() {
    let src = hoist_testkit::tempdir();
    write(src.path(), "private", b"x", 0o600);
    write(src.path(), "tool", b"x", 0o700);
    let m = build(&options(src.path()), &src.path().join("out.tar.zst"))
        .unwrap()
        .manifest;
    assert!(matches!(
        m.entry("private").unwrap().kind,
        EntryKind::File { mode: 0o644, .. }
    ));
    assert!(matches!(
        m.entry("tool").unwrap().kind,
        EntryKind::File { mode: 0o755, .. }
    ));
}

#[test]
fn source_date_epoch_is_the_recorded_time_and_every_mtime() {
    let src = hoist_testkit::tempdir();
    sample_tree(src.path());
    let mut opts = options(src.path());
    opts.source_date_epoch = Some(1_234_567_890);
    let a = build(&opts, &src.path().join("a.tar.zst")).unwrap();
    assert_eq!(a.manifest.build().commit_time, 1_234_567_890);
    let listing = Command::new("tar")
        .arg("--zstd")
        .arg("--full-time")
        .arg("-tvf")
        .arg(&a.path)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let text = String::from_utf8(listing.stdout).unwrap();
    // 1234567890 = 2009-02-13 23:31:30 UTC.
    assert!(text.lines().all(|l| l.contains("2009-02-13")), "{text}");
    opts.source_date_epoch = Some(1_234_567_891);
    let b = build(&opts, &src.path().join("b.tar.zst")).unwrap();
    assert_ne!(a.manifest.release(), b.manifest.release());
}

#[test]
fn source_date_epoch_from_the_environment() {
    // The only test touching this variable.
    std::env::set_var("SOURCE_DATE_EPOCH", "1700000001");
    assert_eq!(
        hoist_artifact::source_date_epoch_from_env().unwrap(),
        Some(1_700_000_001)
    );
    std::env::set_var("SOURCE_DATE_EPOCH", "yesterday");
    assert!(matches!(
        hoist_artifact::source_date_epoch_from_env(),
        Err(BuildError::SourceDateEpoch { .. })
    ));
    std::env::remove_var("SOURCE_DATE_EPOCH");
    assert_eq!(hoist_artifact::source_date_epoch_from_env().unwrap(), None);
}

#[test]
fn the_first_entry_is_the_manifest_and_gnu_tar_reads_the_rest() {
    let src = hoist_testkit::tempdir();
    let out = hoist_testkit::tempdir();
    sample_tree(src.path());
    let a = build(&options(src.path()), &out.path().join("a.tar.zst")).unwrap();
    let listing = Command::new("tar")
        .arg("--zstd")
        .arg("-tf")
        .arg(&a.path)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let names: Vec<String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    assert_eq!(names[0], MANIFEST_NAME);
    assert_eq!(
        names[1..].iter().map(String::as_str).collect::<Vec<_>>(),
        paths(&a.manifest)
    );
    // GNU tar extracts it to the same bytes.
    let x = hoist_testkit::tempdir();
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&a.path)
        .arg("-C")
        .arg(x.path())
        .status()
        .unwrap();
    assert!(st.success());
    fs::remove_file(x.path().join(MANIFEST_NAME)).unwrap();
    hoist_artifact::verify_tree(&a.manifest, x.path(), false).unwrap();
}

#[test]
fn default_and_user_exclusions() {
    let src = hoist_testkit::tempdir();
    sample_tree(src.path());
    write(src.path(), ".git/HEAD", b"ref: x", 0o644);
    write(src.path(), "pkg/__pycache__/m.cpython-311.pyc", b"x", 0o644);
    write(src.path(), "pkg/mod.pyc", b"x", 0o644);
    write(src.path(), "pkg/mod.py", b"x", 0o644);
    write(src.path(), "node_modules/.cache/big", b"x", 0o644);
    write(src.path(), "node_modules/left-pad/index.js", b"x", 0o644);
    write(src.path(), "logs/today.log", b"x", 0o644);
    let mut opts = options(src.path());
    opts.exclude = vec!["logs".into(), "*.css".into()];
    let m = build(&opts, &src.path().join("out.tar.zst"))
        .unwrap()
        .manifest;
    let p = paths(&m);
    for gone in [
        ".git",
        "pkg/__pycache__",
        "pkg/mod.pyc",
        "node_modules/.cache",
        "logs",
        "static/css/site.css",
        "site.css",
        "out.tar.zst",
    ] {
        assert!(!p.contains(&gone), "`{gone}` should be excluded: {p:?}");
    }
    for kept in [
        "pkg/mod.py",
        "node_modules/left-pad/index.js",
        "empty",
        "static/js/app.js",
        "bin/run",
    ] {
        assert!(p.contains(&kept), "`{kept}` should be included: {p:?}");
    }
}

#[test]
fn include_globs_pick_files_and_their_parents() {
    let src = hoist_testkit::tempdir();
    sample_tree(src.path());
    write(src.path(), "target/release/notes", b"\x7fELF", 0o755);
    write(src.path(), "target/debug/notes", b"\x7fELF", 0o755);
    let mut opts = options(src.path());
    opts.include = vec![
        "target/release/notes".into(),
        "static".into(),
        "*.py".into(),
    ];
    let m = build(&opts, &src.path().join("out.tar.zst"))
        .unwrap()
        .manifest;
    assert_eq!(
        paths(&m),
        [
            "app.py",
            "static",
            "static/css",
            "static/css/site.css",
            "static/js",
            "static/js/app.js",
            "target",
            "target/release",
            "target/release/notes"
        ]
    );
    // A glob that matches nothing is reported, not fatal (a starter file lists
    // `templates/**` for projects that may have none); a missing literal path is an error.
    opts.include.push("migrations/**".into());
    let out = build(&opts, &src.path().join("out.tar.zst")).unwrap();
    assert_eq!(out.unmatched, vec!["migrations/**".to_string()]);
    opts.include.push("schema.sql".into());
    let err = build(&opts, &src.path().join("out.tar.zst")).unwrap_err();
    assert!(
        matches!(&err, BuildError::NothingMatched { pattern } if pattern == "schema.sql"),
        "{err}"
    );
    assert!(err.hint().is_some());
}

#[test]
fn a_symlink_out_of_the_project_is_refused_by_name() {
    let src = hoist_testkit::tempdir();
    sample_tree(src.path());
    std::os::unix::fs::symlink("/etc/passwd", src.path().join("passwd")).unwrap();
    let err = build(&options(src.path()), &src.path().join("out.tar.zst")).unwrap_err();
    match &err {
        BuildError::Manifest(e) => {
            assert!(
                matches!(
                    e.refusal(),
                    Some(("passwd", Refusal::SymlinkEscapes { .. }))
                ),
                "{e}"
            )
        }
        other => panic!("unexpected {other}"),
    }
    assert!(!src.path().join("out.tar.zst").exists());
    // No temp file left beside the output either.
    assert!(fs::read_dir(src.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".hoist-build")));
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .env("GIT_AUTHOR_DATE", "@1600000000 +0000")
        .env("GIT_COMMITTER_DATE", "@1600000000 +0000")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn build_info_comes_from_git() {
    let src = hoist_testkit::tempdir();
    sample_tree(src.path());
    git(src.path(), &["init", "-q"]);
    git(src.path(), &["add", "-A"]);
    git(src.path(), &["commit", "-q", "-m", "init"]);
    let head = git(src.path(), &["rev-parse", "HEAD"]);
    let mut opts = options(src.path());
    opts.source_date_epoch = None;
    // The artifact is written inside the work tree: it must neither be packed nor make
    // the tree dirty, or the second build would differ from the first.
    let a = build(&opts, &src.path().join("notes.tar.zst")).unwrap();
    let info = a.manifest.build();
    assert_eq!(info.commit.as_deref(), Some(head.as_str()));
    assert!(!info.dirty);
    assert_eq!(info.commit_time, 1_600_000_000);
    let again = build(&opts, &src.path().join("notes.tar.zst")).unwrap();
    assert_eq!(again.manifest.release(), a.manifest.release());

    write(src.path(), "app.py", b"changed", 0o644);
    let dirty = build(&opts, &src.path().join("notes.tar.zst")).unwrap();
    assert!(dirty.manifest.build().dirty);
    opts.source_date_epoch = Some(5);
    assert_eq!(
        build(&opts, &src.path().join("notes.tar.zst"))
            .unwrap()
            .manifest
            .build()
            .commit_time,
        5
    );
}

#[test]
fn build_command_output_is_streamed_in_order() {
    let dir = hoist_testkit::tempdir();
    let mut lines = Vec::new();
    run_build_command(
        "echo one; echo two >&2; echo three > made.txt; cat made.txt",
        dir.path(),
        |l| lines.push(l.to_string()),
    )
    .unwrap();
    assert_eq!(lines, ["one", "two", "three"]);
}

#[test]
fn a_failing_build_command_reports_status_and_last_lines() {
    let dir = hoist_testkit::tempdir();
    let mut seen = 0;
    let err = run_build_command(
        "for i in $(seq 1 30); do echo line $i; done; echo oops >&2; exit 3",
        dir.path(),
        |_| seen += 1,
    )
    .unwrap_err();
    assert_eq!(seen, 31);
    match err {
        BuildError::CommandFailed {
            status, last_lines, ..
        } => {
            assert_eq!(status, "exit status 3");
            assert_eq!(last_lines.len(), 20);
            assert_eq!(last_lines.first().map(String::as_str), Some("line 12"));
            assert_eq!(last_lines.last().map(String::as_str), Some("oops"));
        }
        other => panic!("unexpected {other}"),
    }
    let err = run_build_command("kill -9 $$", dir.path(), |_| {}).unwrap_err();
    assert!(
        matches!(err, BuildError::CommandFailed { ref status, .. } if status == "killed by signal 9"),
        "{err}"
    );
}
