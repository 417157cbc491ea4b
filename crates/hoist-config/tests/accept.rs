//! App files that must be accepted, and what they resolve to: the design §4 sketch
//! verbatim, every accepted form, overlays on disk, finding the file, and the refusals
//! that happen before validation (missing, too large, not UTF-8). Works only inside its
//! own temp directories.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hoist_config::{find_config, load, parse_str, ConfigError, LoadedConfig};
use hoist_core::spec::{BackupSource, Batch, HealthKind, OnFailure, StopSignal};
use hoist_core::{ByteSize, Schedule};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn must_load(path: &Path, dest: Option<&str>) -> LoadedConfig {
    load(path, dest).unwrap_or_else(|e| panic!("{e}\n{}", hoist_config::render(e.diagnostics())))
}

#[test]
fn design_sketch_is_accepted_exactly_as_written() {
    let design =
        std::fs::read_to_string(hoist_testkit::workspace_root().join("../shared/design.md"));
    let fixture_text = std::fs::read_to_string(fixture("design-sketch.toml")).unwrap();
    if let Ok(design) = design {
        // The fixture is the sketch verbatim; if design.md changes, so must the fixture.
        assert!(
            design.contains(&fixture_text),
            "tests/fixtures/design-sketch.toml is not verbatim from design.md §4"
        );
    }
    let loaded = must_load(&fixture("design-sketch.toml"), None);
    assert!(
        loaded.warnings.is_empty(),
        "{}",
        hoist_config::render(&loaded.warnings)
    );
    let spec = &loaded.spec;
    assert_eq!(spec.app, "notes");
    let web = &spec.services["web"];
    assert_eq!(web.replicas, 2);
    assert_eq!(web.memory_limit, Some(ByteSize(512 * 1024 * 1024)));
    let http = web.http.as_ref().unwrap();
    assert_eq!(http.domains, ["notes.example.com"]);
    assert_eq!(
        http.health.kind,
        HealthKind::Http {
            path: "/health".into(),
            expect_status: None
        }
    );
    assert!(spec.services["worker"].singleton);
    assert_eq!(
        spec.jobs["cleanup"].schedule,
        Schedule::Every(Duration::from_secs(300))
    );
    assert_eq!(spec.jobs["cleanup"].timeout, Duration::from_secs(600));
    assert_eq!(
        spec.backups["db"].source,
        BackupSource::Sqlite {
            path: "data/notes.db".into()
        }
    );
    assert_eq!(spec.deploy.standby, Duration::from_secs(600));
    assert_eq!(spec.hosts.len(), 1);
    assert_eq!(spec.hosts[0].roles, ["web", "worker"]);
    assert_eq!(spec.service_hosts("worker")[0].name, "local");
    assert_eq!(loaded.resolved_hash.len(), 64);
}

#[test]
fn every_section_and_form_is_accepted() {
    let loaded = must_load(&fixture("full.toml"), None);
    assert!(
        loaded.warnings.is_empty(),
        "{}",
        hoist_config::render(&loaded.warnings)
    );
    let spec = loaded.spec;
    let web = &spec.services["web"];
    assert_eq!(web.stop_signal, StopSignal::Int);
    assert_eq!(web.memory_limit, Some(ByteSize(1536 * 1024 * 1024)));
    let http = web.http.as_ref().unwrap();
    assert_eq!(http.domains, ["shop.example.com", "www.shop.example.com"]);
    assert_eq!(
        http.health.kind,
        HealthKind::Http {
            path: "/healthz".into(),
            expect_status: Some(204)
        }
    );
    assert_eq!(http.health.interval, Duration::from_millis(500));
    assert_eq!(
        spec.services["api"].http.as_ref().unwrap().path_prefix,
        "/api"
    );
    assert_eq!(spec.services["api"].roles, ["web"]);
    assert_eq!(
        spec.services["mailer"].health.as_ref().unwrap().kind,
        HealthKind::Exec {
            command: "node dist/ping.js".into()
        }
    );
    assert_eq!(
        spec.services["cache"].health.as_ref().unwrap().kind,
        HealthKind::Tcp
    );
    assert!(
        matches!(&spec.jobs["report"].schedule, Schedule::Cron(c) if c.as_str() == "30 2 * * MON-FRI")
    );
    assert!(!spec.jobs["rotate"].singleton);
    assert_eq!(spec.backups["pg"].keep.daily, 14);
    assert_eq!(spec.backups["pg"].keep.weekly, 4);
    assert_eq!(spec.deploy.rollout.batch, Batch::Percent(25));
    assert_eq!(spec.deploy.rollout.on_failure, OnFailure::Rollback);
    assert_eq!(
        spec.deploy.bake.as_ref().unwrap().duration,
        Duration::from_secs(300)
    );
    assert_eq!(spec.hosts[1].ssh.as_ref().unwrap().host, "web2.internal");
    assert_eq!(
        spec.hosts[2].ssh.as_ref().unwrap().to_string(),
        "deploy@[fd00::5]:22"
    );
    let names = |hosts: Vec<&hoist_core::spec::HostSpec>| {
        hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>()
    };
    assert_eq!(names(spec.service_hosts("api")), ["web1", "web2.internal"]);
    assert_eq!(names(spec.service_hosts("mailer")), ["web2.internal"]);
    assert_eq!(
        names(spec.job_hosts("rotate")),
        ["web1", "web2.internal", "jobs"]
    );
}

#[test]
fn overlay_on_disk_merges_over_the_base() {
    let dir = hoist_testkit::tempdir();
    let base = dir.path().join("hoist.toml");
    std::fs::copy(fixture("design-sketch.toml"), &base).unwrap();
    std::fs::write(
        dir.path().join("hoist.staging.toml"),
        "[services.web]\nreplicas = 1\nhttp = { domains = [\"staging.notes.example.com\"] }\n\n[env]\nRUST_LOG = \"debug\"\n\n[[hosts]]\nname = \"staging1\"\nssh = \"deploy@10.1.0.5\"\n",
    )
    .unwrap();
    let plain = must_load(&base, None);
    let staged = must_load(&base, Some("staging"));
    assert_eq!(
        staged.files,
        [base.clone(), dir.path().join("hoist.staging.toml")]
    );
    let web = &staged.spec.services["web"];
    assert_eq!(web.replicas, 1);
    let http = web.http.as_ref().unwrap();
    // Tables merge key by key: the overlay's `http` keeps the base's health check.
    assert_eq!(http.domains, ["staging.notes.example.com"]);
    assert_eq!(
        http.health.kind,
        HealthKind::Http {
            path: "/health".into(),
            expect_status: None
        }
    );
    assert_eq!(web.memory_limit, Some(ByteSize(512 * 1024 * 1024)));
    assert_eq!(staged.spec.env["RUST_LOG"], "debug");
    // `[[hosts]]` replaces the list; a host without roles runs every role.
    assert_eq!(staged.spec.hosts.len(), 1);
    assert_eq!(staged.spec.hosts[0].name, "staging1");
    assert_eq!(staged.spec.hosts[0].roles, ["web", "worker"]);
    assert_ne!(plain.resolved_hash, staged.resolved_hash);
    assert_eq!(plain.resolved_hash, must_load(&base, None).resolved_hash);
}

#[test]
fn missing_overlay_and_bad_destination_are_refused() {
    let dir = hoist_testkit::tempdir();
    let base = dir.path().join("hoist.toml");
    std::fs::copy(fixture("design-sketch.toml"), &base).unwrap();
    let e = load(&base, Some("prod")).unwrap_err();
    assert!(matches!(e, ConfigError::MissingOverlay { .. }), "{e}");
    assert_eq!(
        e.hint().unwrap(),
        "create `hoist.prod.toml` with the keys that differ for `prod`, or leave out `-d`"
    );
    let e = load(&base, Some("../etc")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid destination `../etc`: expected letters, digits, `-` or `_`"
    );
}

#[test]
fn find_config_walks_up() {
    let dir = hoist_testkit::tempdir();
    let nested = dir.path().join("a/b/c");
    std::fs::create_dir_all(&nested).unwrap();
    match find_config(&nested) {
        Err(ConfigError::NotFound { start }) => assert_eq!(start, nested),
        // Some directory above the temp dir has one; it must not be ours.
        Ok(found) => assert!(!found.starts_with(dir.path())),
        Err(e) => panic!("{e}"),
    }
    std::fs::write(dir.path().join("a/hoist.toml"), "app = \"x\"\n").unwrap();
    assert_eq!(
        find_config(&nested).unwrap(),
        dir.path().join("a/hoist.toml")
    );
    std::fs::write(dir.path().join("a/b/c/hoist.toml"), "app = \"y\"\n").unwrap();
    assert_eq!(find_config(&nested).unwrap(), nested.join("hoist.toml"));
}

#[test]
fn unreadable_inputs_are_refused_before_parsing() {
    let dir = hoist_testkit::tempdir();
    let missing = dir.path().join("hoist.toml");
    let e = load(&missing, None).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e}");
    assert!(e.hint().unwrap().contains("hoist init"));

    let big = dir.path().join("big.toml");
    let mut text = String::from("app = \"x\"\n");
    while text.len() as u64 <= hoist_config::MAX_FILE_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    std::fs::write(&big, text).unwrap();
    assert!(matches!(
        load(&big, None),
        Err(ConfigError::TooLarge { .. })
    ));

    let binary = dir.path().join("bin.toml");
    std::fs::write(&binary, b"app = \"\xff\xfe\"\n").unwrap();
    assert!(matches!(
        load(&binary, None),
        Err(ConfigError::NotUtf8 { .. })
    ));
}

#[test]
fn hostile_text_never_panics() {
    // Deeply nested arrays, huge integers, control characters, odd keys.
    let inputs = [
        format!("app = {}1{}\n", "[".repeat(2000), "]".repeat(2000)),
        // Near the size limit: deep enough to overflow a naive recursive walk.
        format!("app = {}1{}\n", "[".repeat(200_000), "]".repeat(200_000)),
        format!("x = {}\n", "{ a = ".repeat(100_000) + &"}".repeat(100_000)),
        "app = \"x\"\n[services.web]\ncommand = \"x\"\nreplicas = 99999999999999999999\n"
            .to_string(),
        "app = \"x\"\n\"\u{1}\" = 1\n".to_string(),
        "app = \"x\"\n[services.\"\"]\ncommand = \"x\"\n".to_string(),
        "app = \"x\"\n[[hosts]]\n[[hosts]]\nname = 5\n".to_string(),
        "\u{feff}app = \"x\"\n".to_string(),
        "app = \"x\"\nenv = []\njobs = 3\nservices = \"web\"\n".to_string(),
    ];
    for input in &inputs {
        if let Err(e) = parse_str("hoist.toml", input) {
            let _ = hoist_config::render(e.diagnostics());
        }
    }
}

#[test]
fn example_app_file_validates() {
    let path = hoist_testkit::workspace_root().join("examples/notes/hoist.toml");
    let loaded = must_load(&path, None);
    assert!(
        loaded.warnings.is_empty(),
        "{}",
        hoist_config::render(&loaded.warnings)
    );
    assert!(loaded.spec.services["web"].is_web());
}

#[test]
fn files_are_absolute_and_give_the_project_dir() {
    // Tests run in the crate's directory, so this relative path resolves.
    let loaded = must_load(Path::new("tests/fixtures/design-sketch.toml"), None);
    assert!(loaded.files[0].is_absolute());
    assert_eq!(
        loaded.project_dir(),
        fixture("design-sketch.toml").parent().unwrap()
    );
    let from_text = parse_str("hoist.toml", "app = \"x\"\n").unwrap();
    assert_eq!(from_text.project_dir(), Path::new("."));
}

/// `[run]` (issue 17): `test` and `seed` are read; empty commands and unknown keys are
/// refused; an app file without `[run]` keeps its resolved hash (the section is left out
/// of the canonical JSON when empty, so existing release ids do not change).
#[test]
fn run_section_is_read_and_checked() {
    let base = "app = \"demo\"\n[services.web]\ncommand = \"x\"\n";
    let with = parse_str(
        "hoist.toml",
        &format!("{base}[run]\ntest = \"pytest\"\nseed = \"python3 seed.py\"\n"),
    )
    .unwrap();
    assert_eq!(with.spec.run.test.as_deref(), Some("pytest"));
    assert_eq!(with.spec.run.seed.as_deref(), Some("python3 seed.py"));

    let without = parse_str("hoist.toml", base).unwrap();
    assert!(without.spec.run.is_empty());
    let json = serde_json::to_string(&without.spec).unwrap();
    assert!(!json.contains("\"run\""), "{json}");
    assert_ne!(with.resolved_hash, without.resolved_hash);

    for (text, expect) in [
        ("[run]\ntest = \"  \"\n", "the command is empty"),
        (
            "[run]\ntests = \"pytest\"\n",
            "unknown key `tests` in `run`",
        ),
        ("[run]\nseed = 3\n", "expected a string"),
    ] {
        let err = parse_str("hoist.toml", &format!("{base}{text}")).unwrap_err();
        let msgs: Vec<String> = err
            .diagnostics()
            .iter()
            .map(|d| d.message.clone())
            .collect();
        assert!(msgs.iter().any(|m| m.contains(expect)), "{text}: {msgs:?}");
    }
}

#[test]
fn a_services_log_retention_is_read_bounded_and_keeps_old_release_ids() {
    let base = "app = \"demo\"\n[services.web]\ncommand = \"x\"\n";
    let with = parse_str(
        "hoist.toml",
        &format!("{base}logs = {{ max_size = \"1MiB\", keep = 2 }}\n"),
    )
    .unwrap();
    let logs = with.spec.services["web"].logs;
    assert_eq!((logs.max_size, logs.keep), (ByteSize(1024 * 1024), 2));
    assert_eq!(logs.bound(), ByteSize(3 * 1024 * 1024));

    // At its default the key is left out of the canonical JSON: release ids stay.
    let without = parse_str("hoist.toml", base).unwrap();
    assert!(without.spec.services["web"].logs.is_default());
    let json = serde_json::to_string(&without.spec.services["web"]).unwrap();
    assert!(!json.contains("\"logs\""), "{json}");
    assert_ne!(with.resolved_hash, without.resolved_hash);

    for (text, expect) in [
        ("logs = { max_size = \"1KiB\" }\n", "out of range"),
        ("logs = { max_size = \"2GiB\" }\n", "out of range"),
        ("logs = { keep = 101 }\n", "keep"),
        ("logs = { days = 3 }\n", "unknown key `days`"),
    ] {
        let err = parse_str("hoist.toml", &format!("{base}{text}")).unwrap_err();
        let d = err.diagnostics();
        assert!(
            d.iter().any(|d| d.message.contains(expect) && d.line == 4),
            "{text}: {d:?}"
        );
    }
}
