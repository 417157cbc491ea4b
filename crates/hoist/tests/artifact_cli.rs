//! `hoist build`, `verify` and `inspect` through the real binary: the release id on
//! stdout, byte-identical rebuilds, and a tampered artifact refused with exit 1 naming
//! the entry.

use std::path::Path;
use std::process::{Command, Output};

use hoist_testkit::{hoist_bin, tempdir};

fn hoist(dir: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .current_dir(dir)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn project(dir: &Path) {
    std::fs::create_dir_all(dir.join("static")).unwrap();
    std::fs::write(dir.join("app.py"), "print('hello')\n").unwrap();
    std::fs::write(dir.join("static/site.css"), "body { color: black }\n").unwrap();
    std::fs::write(
        dir.join("hoist.toml"),
        "app = \"site\"\n\n[build]\ninclude = [\"app.py\", \"static/**\"]\n\n[services.web]\ncommand = \"python3 app.py\"\n\
         http = { domains = [\"*\"], health = \"/health\" }\n",
    )
    .unwrap();
}

#[test]
fn builds_are_reproducible_and_verify_names_a_tampered_entry() {
    let dir = tempdir();
    project(dir.path());
    let a = hoist(dir.path(), &["build", "-o", "a.tar.zst"]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    let id = text(&a.stdout).trim().to_string();
    assert_eq!(id.len(), 16, "the release id on stdout: {id}");
    let b = hoist(dir.path(), &["build", "-o", "b.tar.zst"]);
    assert_eq!(text(&b.stdout).trim(), id);
    assert_eq!(
        std::fs::read(dir.path().join("a.tar.zst")).unwrap(),
        std::fs::read(dir.path().join("b.tar.zst")).unwrap()
    );

    let ok = hoist(dir.path(), &["verify", "a.tar.zst", "--json"]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["release"], id.as_str());
    assert_eq!(v["files"], 2);

    let inspect = hoist(dir.path(), &["inspect", "a.tar.zst", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["app"], "site");
    assert_eq!(v["summary"]["files"], 2);

    // A rebuild after one file changed: a new id; then an artifact whose file bytes were
    // swapped for the other build's (same sizes, valid zstd) is refused, naming it.
    std::fs::write(dir.path().join("app.py"), "print('HELLO')\n").unwrap();
    let c = hoist(dir.path(), &["build", "-o", "c.tar.zst"]);
    assert_ne!(text(&c.stdout).trim(), id);
    let tampered = splice_manifest(&dir.path().join("a.tar.zst"), &dir.path().join("c.tar.zst"));
    std::fs::write(dir.path().join("bad.tar.zst"), tampered).unwrap();
    let bad = hoist(dir.path(), &["verify", "bad.tar.zst"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad.stderr));
    assert!(
        text(&bad.stderr).contains("app.py"),
        "{}",
        text(&bad.stderr)
    );

    // Truncated: exit 1 too.
    let bytes = std::fs::read(dir.path().join("a.tar.zst")).unwrap();
    std::fs::write(dir.path().join("short.tar.zst"), &bytes[..bytes.len() / 2]).unwrap();
    let short = hoist(dir.path(), &["verify", "short.tar.zst"]);
    assert_eq!(short.status.code(), Some(1), "{}", text(&short.stderr));
}

/// The tar of `b` with the manifest entry of `a`: every file of `b` then disagrees with
/// a manifest that is itself well formed.
fn splice_manifest(a: &Path, b: &Path) -> Vec<u8> {
    let ta = zstd::decode_all(std::fs::File::open(a).unwrap()).unwrap();
    let tb = zstd::decode_all(std::fs::File::open(b).unwrap()).unwrap();
    // The manifest is the first entry: header (512) + its padded body.
    let size = |t: &[u8]| {
        let field = std::str::from_utf8(&t[124..136])
            .unwrap()
            .trim_matches(|c: char| c == '\0' || c == ' ');
        usize::from_str_radix(field, 8).unwrap()
    };
    let first = |t: &[u8]| 512 + size(t).div_ceil(512) * 512;
    let mut out = ta[..first(&ta)].to_vec();
    out.extend_from_slice(&tb[first(&tb)..]);
    zstd::encode_all(&out[..], 3).unwrap()
}

#[test]
fn an_include_glob_that_matches_nothing_warns_and_a_missing_path_fails() {
    let dir = tempdir();
    project(dir.path());
    let toml = std::fs::read_to_string(dir.path().join("hoist.toml")).unwrap();
    let with = |include: &str| {
        std::fs::write(
            dir.path().join("hoist.toml"),
            toml.replace("\"static/**\"]", &format!("\"static/**\", {include}]")),
        )
        .unwrap();
        hoist(dir.path(), &["build", "-o", "a.tar.zst"])
    };
    let out = with("\"templates/**\"");
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: include pattern `templates/**` matches nothing"),
        "{err}"
    );
    let out = with("\"schema.sql\"");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("error: include path `schema.sql` does not exist"),
        "{err}"
    );
}
