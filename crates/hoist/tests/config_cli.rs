//! `hoist config` and `hoist init` through the real binary: exit codes (design §5: 2 for
//! an invalid app file), the exact diagnostics on stderr, `--json`, `-d` overlays, walking
//! up to find `hoist.toml`, and a starter file for each project kind that validates.
//! Every test works in its own temp directory.

use std::path::Path;
use std::process::{Command, Output};

use expect_test::expect;

const SKETCH: &str = include_str!("../../hoist-config/tests/fixtures/design-sketch.toml");

fn hoist(dir: &Path, args: &[&str]) -> Output {
    Command::new(hoist_testkit::hoist_bin())
        .args(args)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .env_remove("HOIST_SOCKET")
        .output()
        .expect("run hoist")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(out));
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON document")
}

#[test]
fn invalid_file_exits_2_with_located_diagnostics() {
    let dir = hoist_testkit::tempdir();
    std::fs::write(
        dir.path().join("hoist.toml"),
        "app = \"notes\"\n\n[services.web]\ncommand = \"./app\"\nreplica = 2\nstop_timeout = 30\nhttp = { domains = [\"*\"] }\n",
    )
    .unwrap();
    let out = hoist(dir.path(), &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    expect![[r#"
        error: unknown key `replica` in `services.web`
         --> hoist.toml:5:1
          |
        5 | replica = 2
          | ^^^^^^^
          = hint: did you mean `replicas`?

        error: invalid `services.web.stop_timeout`: expected a duration like `30s` or `5m`, found the integer `30`
         --> hoist.toml:6:16
          |
        6 | stop_timeout = 30
          |                ^^
          = hint: durations need a unit: `stop_timeout = "30s"`

        error: web service `web` has no health check
         --> hoist.toml:7:1
          |
        7 | http = { domains = ["*"] }
          | ^^^^
          = hint: add `health = "/health"` to `http`: a path that answers 2xx once the app is ready

        error: `hoist.toml` has 3 errors
    "#]]
    .assert_eq(&stderr(&out));
}

#[test]
fn json_prints_the_resolved_sketch() {
    let dir = hoist_testkit::tempdir();
    std::fs::write(dir.path().join("hoist.toml"), SKETCH).unwrap();
    let spec = json(&hoist(dir.path(), &["config", "--json"]));
    assert_eq!(spec["app"], "notes");
    assert_eq!(spec["services"]["web"]["replicas"], 2);
    assert_eq!(spec["services"]["web"]["memory_limit"], "512MiB");
    assert_eq!(
        spec["services"]["web"]["http"]["health"]["kind"]["path"],
        "/health"
    );
    assert_eq!(spec["services"]["worker"]["singleton"], true);
    assert_eq!(spec["jobs"]["cleanup"]["schedule"]["every"], "5m");
    assert_eq!(spec["hosts"][0]["name"], "local");
    // The resolved spec round-trips into the typed model the agent receives.
    let typed: hoist_core::AppSpec = serde_json::from_value(spec).unwrap();
    assert_eq!(typed.deploy.keep_releases, 5);
}

#[test]
fn human_listing_names_services_and_hosts() {
    let dir = hoist_testkit::tempdir();
    std::fs::write(dir.path().join("hoist.toml"), SKETCH).unwrap();
    let out = hoist(dir.path(), &["config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("app        notes\n"), "{text}");
    assert!(text.contains("  web: `./target/release/notes serve --port $PORT`\n    2 replicas, roles web, memory 512MiB"), "{text}");
    assert!(
        text.contains("  local: this machine, roles web,worker"),
        "{text}"
    );
}

#[test]
fn destination_overlay_and_explicit_file() {
    let dir = hoist_testkit::tempdir();
    let deploy_dir = dir.path().join("deploy");
    std::fs::create_dir(&deploy_dir).unwrap();
    std::fs::write(deploy_dir.join("hoist.toml"), SKETCH).unwrap();
    std::fs::write(
        deploy_dir.join("hoist.staging.toml"),
        "[services.web]\nreplicas = 1\n\n[deploy]\nstandby = \"1m\"\n",
    )
    .unwrap();
    let spec = json(&hoist(
        dir.path(),
        &[
            "config",
            "-c",
            "deploy/hoist.toml",
            "-d",
            "staging",
            "--json",
        ],
    ));
    assert_eq!(spec["services"]["web"]["replicas"], 1);
    assert_eq!(spec["services"]["web"]["memory_limit"], "512MiB");
    assert_eq!(spec["deploy"]["standby"], "1m");

    // An overlay's mistakes are reported against the overlay file.
    std::fs::write(
        deploy_dir.join("hoist.staging.toml"),
        "[services.web]\nreplicas = \"one\"\n",
    )
    .unwrap();
    let out = hoist(
        dir.path(),
        &[
            "config",
            "--config",
            "deploy/hoist.toml",
            "--destination",
            "staging",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(" --> deploy/hoist.staging.toml:2:12\n"),
        "{}",
        stderr(&out)
    );

    let out = hoist(
        dir.path(),
        &["config", "-c", "deploy/hoist.toml", "-d", "prod"],
    );
    assert_eq!(out.status.code(), Some(2));
    expect![[r#"
        error: no overlay `deploy/hoist.prod.toml` for destination `prod`
        hint: create `hoist.prod.toml` with the keys that differ for `prod`, or leave out `-d`
    "#]]
    .assert_eq(&stderr(&out));
}

#[test]
fn missing_file_exits_2_with_a_hint() {
    let dir = hoist_testkit::tempdir();
    let out = hoist(dir.path(), &["config", "-c", "nope.toml"]);
    assert_eq!(out.status.code(), Some(2));
    expect![[r#"
        error: cannot read `nope.toml`: No such file or directory (os error 2)
        hint: run `hoist init` to write one, or pass the right `-c FILE`
    "#]]
    .assert_eq(&stderr(&out));
}

#[test]
fn finds_hoist_toml_in_a_parent_directory() {
    let dir = hoist_testkit::tempdir();
    std::fs::write(dir.path().join("hoist.toml"), SKETCH).unwrap();
    let nested = dir.path().join("src/deep");
    std::fs::create_dir_all(&nested).unwrap();
    let spec = json(&hoist(&nested, &["config", "--json"]));
    assert_eq!(spec["app"], "notes");
    // Diagnostics name the file as reachable from where the user is.
    std::fs::write(dir.path().join("hoist.toml"), "app = 1\n").unwrap();
    let out = hoist(&nested, &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(" --> ../../hoist.toml:1:7\n"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn example_app_file_validates() {
    let path = hoist_testkit::workspace_root().join("examples/notes/hoist.toml");
    let spec = json(&hoist(
        &hoist_testkit::workspace_root(),
        &["config", "-c", path.to_str().unwrap(), "--json"],
    ));
    assert_eq!(spec["app"], "notes");
}

/// Runs `hoist init` in a fresh project made of `files`, then validates the result with
/// `hoist config --json` and returns the resolved spec and init's stderr.
fn init_project(name: &str, files: &[(&str, &str)]) -> (serde_json::Value, String) {
    let root = hoist_testkit::tempdir();
    let dir = root.path().join(name);
    std::fs::create_dir(&dir).unwrap();
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = hoist(&dir, &["init"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let written = std::fs::read_to_string(dir.join("hoist.toml")).unwrap();
    assert!(written.starts_with("# hoist.toml"), "{written}");
    (json(&hoist(&dir, &["config", "--json"])), stderr(&out))
}

#[test]
fn init_rust_binary_crate() {
    let (spec, said) = init_project(
        "notes-rs",
        &[
            ("Cargo.toml", "[package]\nname = \"notes_server\"\nversion = \"0.1.0\"\n\n[dependencies]\naxum = \"0.8\"\n"),
            ("src/main.rs", "fn main() {}\n"),
        ],
    );
    assert!(
        said.contains("Detected a Rust web server crate (`notes_server`)"),
        "{said}"
    );
    assert_eq!(spec["app"], "notes-server");
    assert_eq!(spec["build"]["command"], "cargo build --release");
    assert_eq!(spec["build"]["include"][0], "target/release/notes_server");
    assert_eq!(
        spec["services"]["web"]["command"],
        "./target/release/notes_server"
    );
    assert_eq!(
        spec["services"]["web"]["http"]["health"]["kind"]["path"],
        "/health"
    );
}

#[test]
fn init_rust_worker_with_declared_bin() {
    let (spec, _) = init_project(
        "crunch",
        &[("Cargo.toml", "[package]\nname = \"crunch\"\nversion = \"0.1.0\"\n\n[[bin]]\nname = \"crunchd\"\npath = \"src/d.rs\"\n")],
    );
    assert_eq!(
        spec["services"]["worker"]["command"],
        "./target/release/crunchd"
    );
    assert!(spec["services"]["worker"]["http"].is_null());
}

#[test]
fn init_python_gunicorn() {
    let (spec, said) = init_project(
        "shop",
        &[
            ("requirements.txt", "flask==3.0\ngunicorn>=21\n"),
            ("wsgi.py", "app = None\n"),
        ],
    );
    assert!(said.contains("gunicorn (`wsgi:app`"), "{said}");
    assert_eq!(
        spec["services"]["web"]["command"],
        "python3 -m gunicorn -b 127.0.0.1:$PORT wsgi:app"
    );
    assert_eq!(spec["env"]["PYTHONPATH"], "vendor");
}

#[test]
fn init_python_plain_pyproject() {
    let (spec, said) = init_project(
        "blog",
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"My Blog\"\ndependencies = []\n",
            ),
            ("app.py", "print('hi')\n"),
        ],
    );
    assert!(
        said.contains("a Python app (`app.py`, from `pyproject.toml`)"),
        "{said}"
    );
    assert_eq!(spec["app"], "my-blog");
    assert_eq!(spec["services"]["web"]["command"], "python3 app.py");
}

#[test]
fn init_node_app() {
    let (spec, _) = init_project(
        "site",
        &[(
            "package.json",
            r#"{"name":"@acme/site","main":"server.js","scripts":{"build":"tsc"}}"#,
        )],
    );
    assert_eq!(spec["app"], "site");
    // No dependencies: nothing to install, so no `npm ci` (it needs a lock file).
    assert_eq!(spec["build"]["command"], "npm run build");
    assert_eq!(spec["services"]["web"]["command"], "node server.js");
    let (spec, _) = init_project(
        "api",
        &[(
            "package.json",
            r#"{"name":"api","scripts":{"start":"node ."}}"#,
        )],
    );
    assert_eq!(spec["services"]["web"]["command"], "npm start");
    let (spec, _) = init_project(
        "locked",
        &[
            (
                "package.json",
                r#"{"name":"locked","dependencies":{"express":"^4"},"scripts":{"build":"tsc"}}"#,
            ),
            ("package-lock.json", "{}"),
        ],
    );
    assert_eq!(spec["build"]["command"], "npm ci && npm run build");
    let (spec, _) = init_project(
        "unlocked",
        &[(
            "package.json",
            r#"{"name":"unlocked","dependencies":{"express":"^4"}}"#,
        )],
    );
    assert_eq!(spec["build"]["command"], "npm install");
}

#[test]
fn init_python_includes_only_the_directories_that_exist() {
    let files = [
        (
            "requirements.txt",
            "flask
gunicorn
",
        ),
        (
            "app.py",
            "app = None
",
        ),
    ];
    let (spec, _) = init_project("plain", &files);
    assert_eq!(
        spec["build"]["include"],
        serde_json::json!(["**/*.py", "requirements.txt", "vendor/**"])
    );
    let mut with_dirs = files.to_vec();
    with_dirs.push(("templates/index.html", "<p>hi</p>"));
    with_dirs.push(("static/site.css", "p {}"));
    let (spec, _) = init_project("full", &with_dirs);
    assert_eq!(
        spec["build"]["include"],
        serde_json::json!([
            "**/*.py",
            "requirements.txt",
            "vendor/**",
            "templates/**",
            "static/**"
        ])
    );
}

#[test]
fn init_generic_and_refusing_to_overwrite() {
    let root = hoist_testkit::tempdir();
    let dir = root.path().join("Thing");
    std::fs::create_dir(&dir).unwrap();
    assert_eq!(hoist(&dir, &["init"]).status.code(), Some(0));
    let spec = json(&hoist(&dir, &["config", "--json"]));
    assert_eq!(spec["app"], "thing");

    std::fs::write(dir.join("hoist.toml"), "app = \"mine\"\n").unwrap();
    let out = hoist(&dir, &["init"]);
    assert_eq!(out.status.code(), Some(2));
    expect![[r#"
        error: `hoist.toml` already exists
        hint: pass `--force` to replace it, or check it with `hoist config`
    "#]]
    .assert_eq(&stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("hoist.toml")).unwrap(),
        "app = \"mine\"\n"
    );

    assert_eq!(hoist(&dir, &["init", "--force"]).status.code(), Some(0));
    assert_eq!(json(&hoist(&dir, &["config", "--json"]))["app"], "thing");
}

#[test]
fn warnings_go_to_stderr_and_do_not_fail() {
    let dir = hoist_testkit::tempdir();
    let text = SKETCH.replace(
        "roles = [\"web\", \"worker\"]",
        "roles = [\"web\", \"worker\", \"db\"]",
    );
    std::fs::write(dir.path().join("hoist.toml"), text).unwrap();
    let out = hoist(dir.path(), &["config", "--json"]);
    assert_eq!(json(&out)["hosts"][0]["roles"][2], "db");
    let said = stderr(&out);
    assert!(
        said.starts_with("warning: role `db` is not used by any service or job\n"),
        "{said}"
    );
}
