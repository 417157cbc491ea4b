//! `mode = "files"` hosts in the app file: accepted with their defaults, refused with a
//! message where a key would do nothing or harm.

fn errors(text: &str) -> String {
    match hoist_config::parse_str("hoist.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => hoist_config::render(e.diagnostics()),
    }
}

#[test]
fn a_files_host_is_read_with_its_defaults() {
    let loaded = hoist_config::parse_str(
        "hoist.toml",
        "app = \"api\"\n[[hosts]]\nname = \"shared\"\nssh = \"me@example.org\"\nmode = \"files\"\n\
         path = \"/home/me/api\"\nhealth = \"http://example.org/health\"\nexpect = \"ok\"\n\
         [[hosts]]\nname = \"vm\"\nssh = \"root@10.0.0.2\"\n",
    )
    .unwrap();
    let f = loaded.spec.hosts[0].files.as_ref().unwrap();
    assert_eq!(f.path, "/home/me/api");
    assert_eq!(f.restart, "touch tmp/restart.txt");
    assert_eq!(f.health.as_deref(), Some("http://example.org/health"));
    assert_eq!(f.expect.as_deref(), Some("ok"));
    assert!(
        loaded.spec.hosts[1].files.is_none(),
        "an agent host by default"
    );
}

#[test]
fn files_keys_are_refused_where_they_would_do_nothing_or_harm() {
    let base = "app = \"api\"\n[[hosts]]\nname = \"shared\"\nssh = \"me@example.org\"\n";
    let e = errors(&format!("{base}path = \"/srv/api\"\n"));
    assert!(
        e.contains("`hosts[0].path` is only for a files host"),
        "{e}"
    );
    let e = errors(&format!("{base}mode = \"ftp\"\n"));
    assert!(e.contains("unknown host mode `ftp`"), "{e}");
    let e = errors(&format!("{base}mode = \"files\"\n"));
    assert!(e.contains("missing key `path`"), "{e}");
    let e = errors(&format!("{base}mode = \"files\"\npath = \"/srv/../etc\"\n"));
    assert!(e.contains("invalid `hosts[0].path`"), "{e}");
    let e = errors(&format!(
        "{base}mode = \"files\"\npath = \"/srv/api\"\nhealth = \"ftp://x/\"\n"
    ));
    assert!(e.contains("must be an http:// URL"), "{e}");
    let e = errors(&format!(
        "{base}mode = \"files\"\npath = \"/srv/api\"\nrestart = \"a\\nb\"\n"
    ));
    assert!(e.contains("must be one line"), "{e}");
    let e = errors(
        "app = \"api\"\n[[hosts]]\nname = \"local\"\nmode = \"files\"\npath = \"/srv/api\"\n",
    );
    assert!(e.contains("a files host needs an `ssh` address"), "{e}");
}
