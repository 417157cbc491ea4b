//! The generated documentation (issue 18 item 4) is current: `docs/reference/*.md` and
//! `docs/man/*.1` are exactly what this hoist generates from its app-file key lists, its
//! host-config types and its clap tree, and a drifted copy is caught. Completions print,
//! and `hoist docs install` (what `hoist setup` runs on a host) installs man pages and the
//! bash completion idempotently.

use std::process::Command;

use hoist_testkit::{hoist_bin, tempdir, workspace_root};

fn hoist(args: &[&str]) -> std::process::Output {
    Command::new(hoist_bin()).args(args).output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn committed_docs_are_what_the_code_generates() {
    let docs = workspace_root().join("docs");
    let o = hoist(&["docs", "check", docs.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "docs/ drifted from the code; run scripts/gen-docs.sh and commit:\n{}",
        text(&o)
    );
}

#[test]
fn a_drifted_or_leftover_file_is_named() {
    let d = tempdir();
    let dir = d.path().join("docs");
    let o = hoist(&["docs", "gen", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let o = hoist(&["docs", "check", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    let app = dir.join("reference/app-file.md");
    let body = std::fs::read_to_string(&app).unwrap();
    std::fs::write(&app, body.replace("| `replicas` |", "| `replica_count` |")).unwrap();
    std::fs::write(dir.join("man/hoist-gone.1"), "old page").unwrap();
    let o = hoist(&["docs", "check", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("reference/app-file.md"), "{out}");
    assert!(out.contains("man/hoist-gone.1"), "{out}");
}

#[test]
fn the_reference_lists_every_command_and_key() {
    let cli = std::fs::read_to_string(workspace_root().join("docs/reference/cli.md")).unwrap();
    // Every visible top-level command of `hoist --help` has a section.
    let help = text(&hoist(&["--help"]));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 20, "{help}");
    for c in commands {
        assert!(
            cli.contains(&format!("## `hoist {c}`")),
            "no section for `hoist {c}`"
        );
        assert!(
            workspace_root()
                .join(format!("docs/man/hoist-{c}.1"))
                .exists(),
            "no man page for `hoist {c}`"
        );
    }
    let app = std::fs::read_to_string(workspace_root().join("docs/reference/app-file.md")).unwrap();
    assert!(
        !app.contains("(undocumented)"),
        "undocumented keys in app-file.md"
    );
    assert!(app.contains("DNS-01 and wildcard certificates are not supported yet"));
    for key in [
        "| `seed` |",
        "| `test` |",
        "| `rate_limit` |",
        "| `keep_releases` |",
    ] {
        assert!(app.contains(key), "{key}");
    }
}

#[test]
fn completions_print_and_install_idempotently() {
    for shell in ["bash", "zsh", "fish"] {
        let o = hoist(&["completions", shell]);
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("deploy") && out.contains("rollback"),
            "{shell}: {out}"
        );
    }
    let o = hoist(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));

    let d = tempdir();
    let prefix = d.path().to_str().unwrap();
    let o = hoist(&["docs", "install", "--prefix", prefix]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" 0 unchanged"), "{}", text(&o));
    let bash = d
        .path()
        .join("usr/local/share/bash-completion/completions/hoist");
    assert_eq!(
        std::fs::read(&bash).unwrap(),
        hoist(&["completions", "bash"]).stdout
    );
    assert!(d
        .path()
        .join("usr/local/share/man/man1/hoist-deploy.1")
        .exists());
    let o = hoist(&["docs", "install", "--prefix", prefix]);
    assert!(text(&o).contains(": 0 changed"), "{}", text(&o));
}

/// Every `hoist …` command line in the guide and the README exists with the flags it is
/// shown with: `--help` appended, clap parses everything before it (an unknown command or
/// flag is an error, exit 2) and prints the help.
#[test]
fn every_command_in_the_guide_exists() {
    let mut checked = 0;
    for doc in ["docs/guide.md", "README.md"] {
        let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap();
        let mut in_sh = false;
        for line in text.lines() {
            if line.starts_with("```") {
                in_sh = line == "```sh";
                continue;
            }
            let line = line.trim();
            if !in_sh || !line.starts_with("hoist ") {
                continue;
            }
            // The command alone: no comment, redirection, pipe or alternatives.
            let cmd = line.split(" #").next().unwrap();
            let cmd = cmd.split(['<', '>', '|']).next().unwrap();
            let words = split_quoted(cmd);
            let args: Vec<&str> = words
                .iter()
                .skip(1)
                .map(String::as_str)
                .filter(|a| !a.starts_with('[') && !a.ends_with(']'))
                .collect();
            let o = hoist(&[args.as_slice(), &["--help"]].concat());
            assert!(
                o.status.success(),
                "{doc}: `{line}` is not a hoist command line:\n{}",
                text_of(&o)
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} command lines found");
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

/// Words as the shell splits them, for double quotes.
fn split_quoted(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut any) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}
