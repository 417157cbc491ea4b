//! The content-addressed store on real files: ingest, materialise (shared inodes,
//! read-only trees, atomic placement), garbage collection, and refusals that leave no
//! blob behind.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use hoist_artifact::{build, ArtifactError, Hash, Limits, Manifest, Refusal, Store};

/// Builds the tree at `src` and ingests it into `store`.
fn ingest(src: &Path, store: &Store, out: &Path) -> Manifest {
    let built = build(&options(src), out).unwrap();
    let m = store
        .ingest_artifact(fs::File::open(&built.path).unwrap(), &Limits::default())
        .unwrap();
    assert_eq!(&m, &built.manifest);
    m
}

fn count_files(dir: &Path) -> usize {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter(|e| e.as_ref().unwrap().file_type().is_file())
        .filter(|e| e.as_ref().unwrap().file_name() != hoist_testkit::OWNER_FILE)
        .count()
}

#[test]
fn ingest_then_materialise_gives_a_verified_read_only_tree() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = ingest(&src, &store, &t.path().join("a.tar.zst"));
    assert!(store.missing(&m).is_empty());
    assert_eq!(store.releases().unwrap(), vec![m.release().clone()]);
    assert_eq!(store.manifest(m.release()).unwrap(), m);
    assert_eq!(store.check_blobs().unwrap(), Vec::<Hash>::new());

    let dest = t.path().join("releases").join(m.release().as_str());
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let report = store.materialise(&m, &dest).unwrap();
    assert_eq!(report.linked, 4);
    store.verify_tree(&m, &dest).unwrap();
    let mode = |p: &str| fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("app.py"), 0o444);
    assert_eq!(mode("bin/run"), 0o555);
    assert_eq!(mode("static"), 0o555);
    assert_eq!(
        fs::read_link(dest.join("site.css")).unwrap(),
        Path::new("static/css/site.css")
    );
    // Nothing left beside the tree.
    assert_eq!(fs::read_dir(dest.parent().unwrap()).unwrap().count(), 1);
    assert!(matches!(
        store.materialise(&m, &dest),
        Err(ArtifactError::Exists { .. })
    ));
    hoist_artifact::remove_tree(&dest).unwrap();
    assert!(!dest.exists());
}

#[test]
fn an_unprivileged_app_cannot_write_its_release_tree() {
    // Reliability C9: trees share inodes with the store, so a write would corrupt every
    // release. Tests run as root, where mode bits do not bind: run the writer as nobody.
    let t = hoist_testkit::tempdir();
    fs::set_permissions(
        t.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = ingest(&src, &store, &t.path().join("a.tar.zst"));
    let dest = t.path().join("rel");
    store.materialise(&m, &dest).unwrap();
    // As root, drop to nobody; as anyone else, the mode bits already bind.
    let root = nix::unistd::geteuid().is_root();
    let as_nobody = |script: &str| {
        let mut cmd = Command::new(if root { "setpriv" } else { "sh" });
        if root {
            cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "sh"]);
        }
        cmd.args(["-c", script])
            .current_dir(&dest)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    // nobody can reach and read the tree, so the refusals below are the modes' doing.
    assert!(as_nobody("cat app.py static/js/app.js > /dev/null"));
    for script in [
        "echo x >> app.py",
        "echo x > new-file",
        "rm -f app.py",
        "chmod 666 app.py",
    ] {
        assert!(!as_nobody(script), "`{script}` succeeded as nobody");
    }
    store.verify_tree(&m, &dest).unwrap();
    assert!(store.check_blobs().unwrap().is_empty());
}

#[test]
fn releases_share_unchanged_files_on_disk() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let v1 = ingest(&src, &store, &t.path().join("v1.tar.zst"));
    write(&src, "app.py", b"print('v2')\n", 0o644);
    let v2 = ingest(&src, &store, &t.path().join("v2.tar.zst"));
    assert_ne!(v1.release(), v2.release());
    let (d1, d2) = (t.path().join("r1"), t.path().join("r2"));
    store.materialise(&v1, &d1).unwrap();
    store.materialise(&v2, &d2).unwrap();
    let ino = |d: &Path, p: &str| fs::metadata(d.join(p)).unwrap().ino();
    for shared in ["static/js/app.js", "bin/run", "static/css/site.css"] {
        assert_eq!(
            ino(&d1, shared),
            ino(&d2, shared),
            "`{shared}` is not shared"
        );
    }
    assert_ne!(ino(&d1, "app.py"), ino(&d2, "app.py"));
    assert!(fs::metadata(d1.join("static/js/app.js")).unwrap().nlink() >= 3);
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let v1 = ingest(&src, &store, &t.path().join("v1.tar.zst"));
    write(&src, "app.py", b"print('v2')\n", 0o644);
    let v2 = ingest(&src, &store, &t.path().join("v2.tar.zst"));
    let d2 = t.path().join("r2");
    store.materialise(&v2, &d2).unwrap();
    // 4 distinct blobs in v1 + 1 new in v2, plus the executable variant of bin/run.
    let blobs = store.root().join("blobs");
    assert_eq!(count_files(&blobs), 6);

    let report = store.gc(std::slice::from_ref(v2.release())).unwrap();
    assert_eq!(
        (
            report.removed_blobs,
            report.kept_blobs,
            report.removed_manifests
        ),
        (1, 4, 1)
    );
    assert_eq!(report.removed_bytes, b"print('hello')\n".len() as u64);
    assert!(!store.has(&Hash::of(b"print('hello')\n")));
    assert!(store.missing(&v2).is_empty());
    assert_eq!(store.missing(&v1), vec![Hash::of(b"print('hello')\n")]);
    assert_eq!(store.releases().unwrap(), vec![v2.release().clone()]);
    store.verify_tree(&v2, &d2).unwrap();
    assert!(matches!(
        store.manifest(v1.release()),
        Err(ArtifactError::MissingRelease { .. })
    ));

    let report = store.gc(&[]).unwrap();
    assert_eq!(report.kept_blobs, 0);
    assert_eq!(count_files(&blobs), 0);
    // The materialised tree keeps its own links to the content.
    store.verify_tree(&v2, &d2).unwrap();
}

/// A transfer's pin holds its blobs through `gc` (a blob no kept release references yet,
/// and one only a collected release referenced) until it is let go or expires.
#[test]
fn gc_keeps_pinned_blobs_until_unpinned_or_expired() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let v1 = ingest(&src, &store, &t.path().join("v1.tar.zst"));
    let blobs = v1.blobs();
    let received = Hash::of(b"sent for a release not recorded yet");
    store
        .put_blob(&b"sent for a release not recorded yet"[..], &received)
        .unwrap();
    store.pin("offer:a/r1", blobs.iter().copied(), Duration::from_secs(60));
    store.pin("stream:a", [received], Duration::from_secs(60));
    let report = store.gc(&[]).unwrap();
    assert_eq!(
        (report.removed_blobs, report.kept_blobs),
        (0, blobs.len() + 1)
    );
    assert!(store.missing(&v1).is_empty());
    assert!(store.has(&received));

    store.unpin("offer:a/r1");
    store.gc(&[]).unwrap();
    assert_eq!(store.missing(&v1).len(), blobs.len());
    assert!(store.has(&received), "another transfer's pin is its own");

    // A sender that never came back: its pin expires.
    store.pin("stream:a", [received], Duration::ZERO);
    store.gc(&[]).unwrap();
    assert!(!store.has(&received));
}

#[test]
fn a_refused_ingest_leaves_no_blob_and_no_manifest() {
    let t = hoist_testkit::tempdir();
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = manifest(vec![
        file_entry("a", b"first file", 0o644),
        file_entry("b", b"second", 0o644),
    ]);
    let mut raw = RawTar::default();
    raw.manifest(&m)
        .file("a", 0o644, b"first file")
        .file("b", 0o644, b"SECOND")
        .end();
    let err = store
        .ingest_artifact(&raw.zstd()[..], &Limits::default())
        .unwrap_err();
    assert!(
        matches!(err.refusal(), Some(("b", Refusal::HashMismatch { .. }))),
        "{err}"
    );
    assert_eq!(
        count_files(store.root()),
        0,
        "no blob, manifest or temp file may remain"
    );
}

#[test]
fn put_blob_checks_the_hash_before_the_blob_is_visible() {
    let t = hoist_testkit::tempdir();
    let store = Store::open(t.path()).unwrap();
    let want = Hash::of(b"expected");
    let err = store.put_blob(&b"something else"[..], &want).unwrap_err();
    assert!(matches!(err, ArtifactError::BlobMismatch { expected, .. } if expected == want));
    assert!(!store.has(&want));
    assert_eq!(count_files(t.path()), 0);
    assert_eq!(store.put_blob(&b"expected"[..], &want).unwrap(), 8);
    assert!(store.has(&want));
    assert_eq!(
        fs::metadata(store.blob_path(&want)).unwrap().mode() & 0o777,
        0o444
    );
}

#[test]
fn a_half_materialised_tree_is_never_used_and_is_rebuilt() {
    // What a crash mid-materialise leaves: the staging sibling, never the destination.
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = ingest(&src, &store, &t.path().join("a.tar.zst"));
    let dest = t.path().join("rel");
    let leftover = t.path().join(".rel.hoist-tmp");
    fs::create_dir_all(leftover.join("static")).unwrap();
    fs::write(leftover.join("app.py"), b"half").unwrap();
    store.materialise(&m, &dest).unwrap();
    store.verify_tree(&m, &dest).unwrap();
    assert!(!leftover.exists());
}

#[test]
fn materialise_refuses_when_blobs_are_missing() {
    let t = hoist_testkit::tempdir();
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = manifest(vec![file_entry("a", b"never stored", 0o644)]);
    let dest = t.path().join("rel");
    let err = store.materialise(&m, &dest).unwrap_err();
    assert!(
        matches!(err, ArtifactError::MissingBlob { hash } if hash == Hash::of(b"never stored"))
    );
    assert!(!dest.exists());
}

#[test]
fn verify_tree_names_a_changed_or_extra_file() {
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    sample_tree(&src);
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = ingest(&src, &store, &t.path().join("a.tar.zst"));
    let x = t.path().join("x");
    hoist_artifact::unpack(
        fs::File::open(t.path().join("a.tar.zst")).unwrap(),
        &x,
        &Limits::default(),
    )
    .unwrap();
    hoist_artifact::verify_tree(&m, &x, false).unwrap();
    fs::write(x.join("static/js/app.js"), vec![b'y'; 100_000]).unwrap();
    let err = hoist_artifact::verify_tree(&m, &x, false).unwrap_err();
    assert!(
        matches!(
            err.refusal(),
            Some(("static/js/app.js", Refusal::HashMismatch { .. }))
        ),
        "{err}"
    );
    fs::write(x.join("static/js/app.js"), vec![b'x'; 100_000]).unwrap();
    fs::write(x.join("static/extra"), b"").unwrap();
    let err = hoist_artifact::verify_tree(&m, &x, false).unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(("static/extra", &Refusal::NotInManifest))
    );
}

/// Not a test on its own: the child process of `kill_9_mid_materialise_*`, which runs
/// this test binary again with `--ignored --exact` and the paths in its environment.
#[test]
#[ignore = "child process of kill_9_mid_materialise_never_leaves_a_used_half_tree"]
fn materialise_child() {
    let (Some(store), Some(release), Some(dest)) = (
        std::env::var_os("HOIST_TEST_STORE"),
        std::env::var("HOIST_TEST_RELEASE").ok(),
        std::env::var_os("HOIST_TEST_DEST"),
    ) else {
        return;
    };
    let store = Store::open(Path::new(&store)).unwrap();
    let id = hoist_artifact::ReleaseId::parse(&release).unwrap();
    store
        .materialise(&store.manifest(&id).unwrap(), Path::new(&dest))
        .unwrap();
}

#[test]
#[allow(clippy::print_stdout)] // prints its figure (how many kills landed mid-way)
fn kill_9_mid_materialise_never_leaves_a_used_half_tree() {
    // Reliability C10: SIGKILL while a tree is being materialised; the destination is
    // then absent (and materialised afresh) or complete, never half-built.
    let t = hoist_testkit::tempdir();
    let src = t.path().join("src");
    for i in 0..1500 {
        write(
            &src,
            &format!("d{:02}/f{i:04}", i % 30),
            format!("file {i}").as_bytes(),
            0o644,
        );
    }
    let store = Store::open(&t.path().join("store")).unwrap();
    let m = ingest(&src, &store, &t.path().join("a.tar.zst"));
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid_way = 0;
    for round in 0..10 {
        let dest = t.path().join(format!("rel{round}"));
        let staging = t.path().join(format!(".rel{round}.hoist-tmp"));
        let mut cmd = Command::new(&exe);
        cmd.args(["--ignored", "--exact", "materialise_child", "--nocapture"])
            .env("HOIST_TEST_STORE", store.root())
            .env("HOIST_TEST_RELEASE", m.release().as_str())
            .env("HOIST_TEST_DEST", &dest)
            .stdout(std::process::Stdio::null());
        let mut child = hoist_testkit::ChildGuard::spawn(&mut cmd).unwrap();
        // Kill as soon as the staging tree has some files in it (or the child is done).
        let mut done = false;
        hoist_testkit::wait_until(Duration::from_secs(60), || {
            done = matches!(child.child.try_wait(), Ok(Some(_)));
            done || fs::read_dir(staging.join("d00")).is_ok_and(|d| d.count() > 5)
        })
        .unwrap();
        child.signal_group(nix::sys::signal::Signal::SIGKILL);
        let _ = child.child.wait();
        if dest.exists() {
            store.verify_tree(&m, &dest).unwrap();
        } else {
            killed_mid_way += 1;
            store.materialise(&m, &dest).unwrap();
            store.verify_tree(&m, &dest).unwrap();
            assert!(!staging.exists());
        }
    }
    // Figures, not thresholds: how many rounds the kill landed mid-way.
    println!("kill -9 mid-materialise: {killed_mid_way}/10 rounds killed mid-way, all recovered");
}
