//! Malformed app files and the exact diagnostics they produce (design §5: exit 2 with
//! file:line:column; reliability F4: at least 25 pinned messages). Each test is one input
//! and one rendered snapshot; `UPDATE_EXPECT=1 cargo test` rewrites the snapshots.

use expect_test::{expect, Expect};

/// Validates `text` as `hoist.toml` and compares every rendered diagnostic.
fn check(text: &str, expected: Expect) {
    match hoist_config::parse_str("hoist.toml", text) {
        Ok(loaded) => panic!(
            "accepted; warnings: {}",
            hoist_config::render(&loaded.warnings)
        ),
        Err(e) => expected.assert_eq(&format!(
            "{}\n--\n{e}",
            hoist_config::render(e.diagnostics())
        )),
    }
}

/// Validates `text` (which must load) and compares its warnings.
fn check_warnings(text: &str, expected: Expect) {
    match hoist_config::parse_str("hoist.toml", text) {
        Ok(loaded) => expected.assert_eq(&hoist_config::render(&loaded.warnings)),
        Err(e) => panic!("refused: {}", hoist_config::render(e.diagnostics())),
    }
}

const WEB: &str = r#"
[services.web]
command = "./app serve"
http = { domains = ["*"], health = "/health" }
"#;

#[test]
fn toml_syntax_error() {
    check(
        "app = \"notes\"\nreplicas = \n",
        expect![[r#"
        error: invalid TOML: string values must be quoted, expected literal string
         --> hoist.toml:2:12
          |
        2 | replicas = 
          |            ^

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn duplicate_key_is_a_syntax_error() {
    check(
        "app = \"notes\"\napp = \"other\"\n",
        expect![[r#"
        error: invalid TOML: duplicate key
         --> hoist.toml:2:1
          |
        2 | app = "other"
          | ^^^

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn unknown_top_level_key() {
    check(
        "app = \"notes\"\nservics = {}\n",
        expect![[r#"
        error: unknown key `servics` at the top level
         --> hoist.toml:2:1
          |
        2 | servics = {}
          | ^^^^^^^
          = hint: did you mean `services`?

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn unknown_service_key_suggests_the_right_one() {
    check(
        "app = \"notes\"\n\n[services.worker]\ncommand = \"./app work\"\nreplica = 2\n",
        expect![[r#"
        error: unknown key `replica` in `services.worker`
         --> hoist.toml:5:1
          |
        5 | replica = 2
          | ^^^^^^^
          = hint: did you mean `replicas`?

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn unknown_key_without_a_close_match_lists_the_keys() {
    check(
        "app = \"notes\"\n[hooks]\nbefore_everything = \"x\"\n",
        expect![[r#"
        error: unknown key `before_everything` in `hooks`
         --> hoist.toml:3:1
          |
        3 | before_everything = "x"
          | ^^^^^^^^^^^^^^^^^
          = hint: expected one of `pre_activate`, `smoke`, `timeout`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn unknown_key_in_inline_table() {
    check("app = \"notes\"\n[services.web]\ncommand = \"x\"\nhttp = { domain = [\"a.com\"], health = \"/health\" }\n", expect![[r#"
        error: unknown key `domain` in `services.web.http`
         --> hoist.toml:4:10
          |
        4 | http = { domain = ["a.com"], health = "/health" }
          |          ^^^^^^
          = hint: did you mean `domains`?

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn missing_app() {
    check(
        "[env]\nA = \"1\"\n",
        expect![[r#"
        error: missing key `app` at the top level
         --> hoist.toml:1:1
          |
        1 | [env]
          | ^
          = hint: name the app: `app = "myapp"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn invalid_app_name() {
    check(
        "app = \"My Notes\"\n",
        expect![[r#"
        error: invalid app name `My Notes`: expected a lowercase letter followed by lowercase letters, digits, `-` or `_` (at most 63)
         --> hoist.toml:1:7
          |
        1 | app = "My Notes"
          |       ^^^^^^^^^^
          = hint: try `my-notes`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn integer_given_as_string() {
    check(
        &format!("app = \"notes\"\n{WEB}replicas = \"2\"\n"),
        expect![[r#"
        error: invalid `services.web.replicas`: expected an integer, found the string `"2"`
         --> hoist.toml:6:12
          |
        6 | replicas = "2"
          |            ^^^
          = hint: remove the quotes: `replicas = 2`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn duration_without_unit() {
    check(
        &format!("app = \"notes\"\n{WEB}stop_timeout = 30\n"),
        expect![[r#"
        error: invalid `services.web.stop_timeout`: expected a duration like `30s` or `5m`, found the integer `30`
         --> hoist.toml:6:16
          |
        6 | stop_timeout = 30
          |                ^^
          = hint: durations need a unit: `stop_timeout = "30s"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn duration_with_unknown_unit() {
    check(
        &format!("app = \"notes\"\n{WEB}stop_timeout = \"30 seconds\"\n"),
        expect![[r#"
        error: invalid `services.web.stop_timeout`: expected a duration like `30s`, `5m` or `1h30m`, found `30 seconds`
         --> hoist.toml:6:16
          |
        6 | stop_timeout = "30 seconds"
          |                ^^^^^^^^^^^^
          = hint: write `stop_timeout = "30s"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn size_without_unit() {
    check(
        &format!("app = \"notes\"\n{WEB}memory_limit = \"512\"\n"),
        expect![[r#"
        error: invalid `services.web.memory_limit`: expected a size like `512MiB` or `1GB`, found `512`
         --> hoist.toml:6:16
          |
        6 | memory_limit = "512"
          |                ^^^^^
          = hint: sizes need a unit: `memory_limit = "512MiB"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn size_with_unknown_unit() {
    check(
        &format!("app = \"notes\"\n{WEB}memory_limit = \"2 gigs\"\n"),
        expect![[r#"
        error: invalid `services.web.memory_limit`: unknown size unit `gigs` in `2 gigs`; expected `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024)
         --> hoist.toml:6:16
          |
        6 | memory_limit = "2 gigs"
          |                ^^^^^^^^

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn bad_cron_field() {
    check(
        "app = \"notes\"\n[jobs.report]\ncommand = \"./app report\"\ncron = \"0 25 * * *\"\n",
        expect![[r#"
        error: invalid `jobs.report.cron`: invalid cron expression `0 25 * * *`: hour field `25` is not valid; expected 0-23, `*`, a range `a-b`, a list `a,b` or a step `*/n`
         --> hoist.toml:4:8
          |
        4 | cron = "0 25 * * *"
          |        ^^^^^^^^^^^^
          = hint: for example `cron = "0 3 * * *"` runs at 03:00 UTC every day

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn cron_with_seconds_field() {
    check(
        "app = \"notes\"\n[jobs.report]\ncommand = \"./app report\"\ncron = \"0 0 3 * * *\"\n",
        expect![[r#"
        error: invalid `jobs.report.cron`: cron expression `0 0 3 * * *` has 6 fields; expected 5 (minute hour day-of-month month day-of-week) or an alias like `@daily`
         --> hoist.toml:4:8
          |
        4 | cron = "0 0 3 * * *"
          |        ^^^^^^^^^^^^^
          = hint: for example `cron = "0 3 * * *"` runs at 03:00 UTC every day

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn job_with_every_and_cron() {
    check(
        "app = \"notes\"\n[jobs.report]\ncommand = \"x\"\nevery = \"1h\"\ncron = \"@daily\"\n",
        expect![[r#"
        error: job `report` has both `every` and `cron`
         --> hoist.toml:5:1
          |
        5 | cron = "@daily"
          | ^^^^
          = hint: keep one of them

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn job_without_schedule() {
    check(
        "app = \"notes\"\n[jobs.report]\ncommand = \"x\"\n",
        expect![[r#"
        error: job `report` has no schedule
         --> hoist.toml:2:7
          |
        2 | [jobs.report]
          |       ^^^^^^
          = hint: add `every = "5m"` or `cron = "0 3 * * *"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn web_service_without_health() {
    check("app = \"notes\"\n[services.web]\ncommand = \"x\"\nhttp = { domains = [\"notes.example.com\"] }\n", expect![[r#"
        error: web service `web` has no health check
         --> hoist.toml:4:1
          |
        4 | http = { domains = ["notes.example.com"] }
          | ^^^^
          = hint: add `health = "/health"` to `http`: a path that answers 2xx once the app is ready

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn health_path_without_slash() {
    check(
        "app = \"notes\"\n[services.web]\ncommand = \"x\"\nhttp = { health = \"health\" }\n",
        expect![[r#"
        error: invalid `services.web.http.health`: expected a URL path like `/health`, found `health`
         --> hoist.toml:4:19
          |
        4 | http = { health = "health" }
          |                   ^^^^^^^^
          = hint: write `health = "/health"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn zero_replicas() {
    check(
        &format!("app = \"notes\"\n{WEB}replicas = 0\n"),
        expect![[r#"
            error: invalid `services.web.replicas`: expected an integer from 1 to 256, found `0`
             --> hoist.toml:6:12
              |
            6 | replicas = 0
              |            ^

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn singleton_with_replicas() {
    check(
        "app = \"notes\"\n[services.worker]\ncommand = \"x\"\nsingleton = true\nreplicas = 3\n",
        expect![[r#"
        error: service `worker` is a singleton but asks for `replicas = 3`
         --> hoist.toml:5:12
          |
        5 | replicas = 3
          |            ^
          = hint: a singleton runs exactly once across the fleet; remove `replicas` or `singleton`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn missing_command() {
    check(
        "app = \"notes\"\n[services.worker]\nsingleton = true\n",
        expect![[r#"
        error: missing key `command` in `services.worker`
         --> hoist.toml:2:11
          |
        2 | [services.worker]
          |           ^^^^^^
          = hint: add `command = "./bin/app worker"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn service_role_no_host_has() {
    check("app = \"notes\"\n[services.worker]\ncommand = \"x\"\n\n[[hosts]]\nname = \"web1\"\nroles = [\"web\"]\n", expect![[r#"
        error: service `worker` runs on role `worker`, which no host has
         --> hoist.toml:2:11
          |
        2 | [services.worker]
          |           ^^^^^^
          = hint: add `"worker"` to the `roles` of a `[[hosts]]` entry

        warning: role `web` is not used by any service or job
         --> hoist.toml:7:10
          |
        7 | roles = ["web"]
          |          ^^^^^
          = hint: roles in use: `worker`

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn job_role_no_host_has() {
    check(
        &format!("app = \"notes\"\n{WEB}\n[jobs.report]\ncommand = \"x\"\nevery = \"1h\"\nroles = [\"wbe\"]\n\n[[hosts]]\nname = \"local\"\nroles = [\"web\"]\n"),
        expect![[r#"
            error: job `report` runs on role `wbe`, which no host has
              --> hoist.toml:10:10
               |
            10 | roles = ["wbe"]
               |          ^^^^^
               = hint: did you mean `web`? or add `"wbe"` to the `roles` of a `[[hosts]]` entry

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn duplicate_host_names() {
    check(
        &format!(
            "app = \"notes\"\n{WEB}\n[[hosts]]\nname = \"web1\"\n\n[[hosts]]\nname = \"web1\"\n"
        ),
        expect![[r#"
        error: duplicate host name `web1`
          --> hoist.toml:11:8
           |
        11 | name = "web1"
           |        ^^^^^^
           = hint: first defined at hoist.toml:8:8

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn host_without_name() {
    check(
        &format!("app = \"notes\"\n{WEB}\n[[hosts]]\nssh = \"deploy@10.0.0.5\"\n"),
        expect![[r#"
        error: missing key `name` in `hosts[0]`
         --> hoist.toml:7:1
          |
        7 | [[hosts]]
          | ^^^^^^^^^
          = hint: every `[[hosts]]` needs a `name`, such as `name = "web1"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn bad_ssh_address() {
    check(
        &format!(
            "app = \"notes\"\n{WEB}\n[[hosts]]\nname = \"web1\"\nssh = \"deploy@10.0.0.5:ssh\"\n"
        ),
        expect![[r#"
        error: invalid `hosts[0].ssh`: ssh address `deploy@10.0.0.5:ssh` has a bad port `ssh`; expected a number from 1 to 65535
         --> hoist.toml:9:7
          |
        9 | ssh = "deploy@10.0.0.5:ssh"
          |       ^^^^^^^^^^^^^^^^^^^^^
          = hint: for example `ssh = "deploy@10.0.0.5:22"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn hosts_as_a_single_table() {
    check(
        &format!("app = \"notes\"\n{WEB}\n[hosts]\nname = \"web1\"\n"),
        expect![[r#"
        error: invalid `hosts`: expected an array of tables, found a table
         --> hoist.toml:7:1
          |
        7 | [hosts]
          | ^^^^^^^
          = hint: write each host as a `[[hosts]]` table

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn secret_name_not_an_env_name() {
    check(
        "app = \"notes\"\n[secrets]\nrequired = [\"database-url\"]\n",
        expect![[r#"
        error: invalid secret name `database-url`: not a valid environment variable name
         --> hoist.toml:3:13
          |
        3 | required = ["database-url"]
          |             ^^^^^^^^^^^^^^
          = hint: use letters, digits and `_`, not starting with a digit, such as `DATABASE_URL`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn env_key_reserved_for_hoist() {
    check(
        "app = \"notes\"\n[env]\nPORT = \"8080\"\nHOIST_APP = \"x\"\n",
        expect![[r#"
        error: environment variable `PORT` is reserved: hoist sets `PORT` and `HOIST_*` for every instance
         --> hoist.toml:3:1
          |
        3 | PORT = "8080"
          | ^^^^
          = hint: choose another name

        error: environment variable `HOIST_APP` is reserved: hoist sets `PORT` and `HOIST_*` for every instance
         --> hoist.toml:4:1
          |
        4 | HOIST_APP = "x"
          | ^^^^^^^^^
          = hint: choose another name

        --
        `hoist.toml` has 2 errors"#]],
    );
}

#[test]
fn env_value_not_a_string() {
    check(
        "app = \"notes\"\n[env]\nWORKERS = 4\n",
        expect![[r#"
        error: invalid `env.WORKERS`: expected a string, found the integer `4`
         --> hoist.toml:3:11
          |
        3 | WORKERS = 4
          |           ^
          = hint: quote it: `WORKERS = "4"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn secret_also_in_env() {
    check("app = \"notes\"\n[env]\nDATABASE_URL = \"postgres://x\"\n[secrets]\nrequired = [\"DATABASE_URL\"]\n", expect![[r#"
        error: `DATABASE_URL` is both a secret and a plain value in `[env]`
         --> hoist.toml:5:13
          |
        5 | required = ["DATABASE_URL"]
          |             ^^^^^^^^^^^^^^
          = hint: remove `DATABASE_URL` from `[env]`: secret values live on the hosts

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn unknown_stop_signal() {
    check(
        &format!("app = \"notes\"\n{WEB}stop_signal = \"SIGTREM\"\n"),
        expect![[r#"
        error: invalid `services.web.stop_signal`: unknown signal `SIGTREM`
         --> hoist.toml:6:15
          |
        6 | stop_signal = "SIGTREM"
          |               ^^^^^^^^^
          = hint: did you mean `SIGTERM`?

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn backup_without_source() {
    check(
        "app = \"notes\"\n[backups.db]\nbefore_deploy = true\n",
        expect![[r#"
        error: backup `db` has no source
         --> hoist.toml:2:10
          |
        2 | [backups.db]
          |          ^^
          = hint: add one of `sqlite = "data/app.db"`, `postgres = "DATABASE_URL"` or `directory = "uploads"`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn backup_path_escapes_data_dir() {
    check(
        "app = \"notes\"\n[backups.db]\nsqlite = \"../../etc/passwd\"\n",
        expect![[r#"
        error: invalid `backups.db.sqlite`: `../../etc/passwd` is not a path inside the app's data directory
         --> hoist.toml:3:10
          |
        3 | sqlite = "../../etc/passwd"
          |          ^^^^^^^^^^^^^^^^^^
          = hint: use a relative path such as `data/app.db`; it is resolved inside `HOIST_DATA_DIR`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn postgres_backup_secret_not_declared() {
    check(
        "app = \"notes\"\n[backups.pg]\npostgres = \"DATABASE_URL\"\ncron = \"@daily\"\n",
        expect![[r#"
        error: backup uses secret `DATABASE_URL`, which is not in `secrets.required`
         --> hoist.toml:3:12
          |
        3 | postgres = "DATABASE_URL"
          |            ^^^^^^^^^^^^^^
          = hint: add `"DATABASE_URL"` to `required` in `[secrets]`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn rollout_policy_typo_and_bad_batch() {
    check(
        "app = \"notes\"\n[deploy.rollout]\nbatch = \"150%\"\non_failure = \"rolback\"\n",
        expect![[r#"
        error: invalid `deploy.rollout.batch`: expected a host count like `2` or a share like `25%`, found `150%`
         --> hoist.toml:3:9
          |
        3 | batch = "150%"
          |         ^^^^^^
          = hint: a share is from `1%` to `100%` of the hosts

        error: invalid `deploy.rollout.on_failure`: unknown policy `rolback`
         --> hoist.toml:4:14
          |
        4 | on_failure = "rolback"
          |              ^^^^^^^^^
          = hint: did you mean `rollback`?

        --
        `hoist.toml` has 2 errors"#]],
    );
}

#[test]
fn unsupported_version() {
    check(
        "version = 2\napp = \"notes\"\n",
        expect![[r#"
        error: unsupported app file version `2`; this hoist reads version 1
         --> hoist.toml:1:11
          |
        1 | version = 2
          |           ^
          = hint: upgrade hoist, or write `version = 1`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn two_services_same_route() {
    check(
        "app = \"notes\"\n[services.a]\ncommand = \"x\"\nhttp = { domains = [\"n.com\"], health = \"/h\" }\n[services.b]\ncommand = \"y\"\nhttp = { domains = [\"n.com\"], health = \"/h\" }\n",
        expect![[r#"
            error: services `a` and `b` both route `n.com` with path prefix `/`
             --> hoist.toml:7:21
              |
            7 | http = { domains = ["n.com"], health = "/h" }
              |                     ^^^^^^^
              = hint: give one of them another domain or `path_prefix`

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn job_named_like_a_service() {
    check(
        &format!("app = \"notes\"\n{WEB}\n[jobs.web]\ncommand = \"x\"\nevery = \"1h\"\n"),
        expect![[r#"
        error: `web` is both a service and a job
         --> hoist.toml:7:7
          |
        7 | [jobs.web]
          |       ^^^
          = hint: give them different names: logs and status name them alone

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn domain_with_scheme() {
    check("app = \"notes\"\n[services.web]\ncommand = \"x\"\nhttp = { domains = [\"https://notes.example.com/\"], health = \"/health\" }\n", expect![[r#"
        error: invalid domain `https://notes.example.com/` in `services.web.http.domains`: expected a host name like `example.com` or `*`
         --> hoist.toml:4:21
          |
        4 | http = { domains = ["https://notes.example.com/"], health = "/health" }
          |                     ^^^^^^^^^^^^^^^^^^^^^^^^^^^^
          = hint: write just the host name: `"notes.example.com"`

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn many_problems_are_reported_in_one_run() {
    check(
        "app = \"notes\"\n[services.web]\nreplica = 2\nstop_timeout = 30\nhttp = { domains = [\"*\"] }\n[jobs.x]\ncommand = \"y\"\n",
        expect![[r#"
            error: missing key `command` in `services.web`
             --> hoist.toml:2:11
              |
            2 | [services.web]
              |           ^^^
              = hint: add `command = "./bin/app serve --port $PORT"`

            error: unknown key `replica` in `services.web`
             --> hoist.toml:3:1
              |
            3 | replica = 2
              | ^^^^^^^
              = hint: did you mean `replicas`?

            error: invalid `services.web.stop_timeout`: expected a duration like `30s` or `5m`, found the integer `30`
             --> hoist.toml:4:16
              |
            4 | stop_timeout = 30
              |                ^^
              = hint: durations need a unit: `stop_timeout = "30s"`

            error: web service `web` has no health check
             --> hoist.toml:5:1
              |
            5 | http = { domains = ["*"] }
              | ^^^^
              = hint: add `health = "/health"` to `http`: a path that answers 2xx once the app is ready

            error: job `x` has no schedule
             --> hoist.toml:6:7
              |
            6 | [jobs.x]
              |       ^
              = hint: add `every = "5m"` or `cron = "0 3 * * *"`

            --
            `hoist.toml` has 5 errors"#]],
    );
}

#[test]
fn unused_host_role_is_a_warning() {
    check_warnings(
        &format!(
            "app = \"notes\"\n{WEB}\n[[hosts]]\nname = \"local\"\nroles = [\"web\", \"wrker\"]\n"
        ),
        expect![[r#"
        warning: role `wrker` is not used by any service or job
         --> hoist.toml:9:17
          |
        9 | roles = ["web", "wrker"]
          |                 ^^^^^^^
          = hint: roles in use: `web`
    "#]],
    );
}

#[test]
fn overlay_errors_point_into_the_overlay() {
    let sources = [
        ("hoist.toml".to_string(), format!("app = \"notes\"\n{WEB}")),
        (
            "hoist.staging.toml".to_string(),
            "[services.web]\nreplicas = -1\n".to_string(),
        ),
    ];
    let e = hoist_config::parse_sources(&sources).unwrap_err();
    expect![[r#"
        error: invalid `services.web.replicas`: expected an integer from 1 to 256, found `-1`
         --> hoist.staging.toml:2:12
          |
        2 | replicas = -1
          |            ^^
    "#]]
    .assert_eq(&hoist_config::render(e.diagnostics()));
}

#[test]
fn float_where_an_integer_is_expected() {
    check(
        &format!("app = \"notes\"\n{WEB}replicas = 2.5\n"),
        expect![[r#"
            error: invalid `services.web.replicas`: expected an integer from 1 to 256, found the float `2.5`
             --> hoist.toml:6:12
              |
            6 | replicas = 2.5
              |            ^^^

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn boolean_given_as_string() {
    check(
        "app = \"notes\"\n[services.worker]\ncommand = \"x\"\nsingleton = \"true\"\n",
        expect![[r#"
        error: invalid `services.worker.singleton`: expected a boolean, found the string `"true"`
         --> hoist.toml:4:13
          |
        4 | singleton = "true"
          |             ^^^^^^
          = hint: remove the quotes: `singleton = true`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn every_below_one_second() {
    check(
        "app = \"notes\"\n[jobs.tick]\ncommand = \"x\"\nevery = \"0s\"\n",
        expect![[r#"
        error: invalid `jobs.tick.every`: must be at least `1s`
         --> hoist.toml:4:9
          |
        4 | every = "0s"
          |         ^^^^

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn service_with_empty_roles() {
    check(
        "app = \"notes\"\n[services.worker]\ncommand = \"x\"\nroles = []\n",
        expect![[r#"
        error: service `worker` has no roles, so no host would run it
         --> hoist.toml:4:9
          |
        4 | roles = []
          |         ^^
          = hint: leave `roles` out to use the role `worker`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn web_service_with_worker_health() {
    check(
        &format!("app = \"notes\"\n{WEB}health = {{ tcp = true }}\n"),
        expect![[r#"
        error: `services.web.health` is for workers; a web service's health check goes in `http`
         --> hoist.toml:6:1
          |
        6 | health = { tcp = true }
          | ^^^^^^
          = hint: move it into `http`: `http = { ..., health = "/health" }`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn worker_health_with_two_kinds() {
    check("app = \"notes\"\n[services.worker]\ncommand = \"x\"\nhealth = { tcp = true, command = \"./ping\" }\n", expect![[r#"
        error: `services.worker.health` has more than one of `path`, `tcp` and `command`
         --> hoist.toml:4:10
          |
        4 | health = { tcp = true, command = "./ping" }
          |          ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
          = hint: use one of `path = "/health"`, `tcp = true` or `command = "..."`

        --
        `hoist.toml` has 1 error"#]]);
}

#[test]
fn secrets_given_as_a_string() {
    check(
        "app = \"notes\"\n[secrets]\nrequired = \"DATABASE_URL\"\n",
        expect![[r#"
        error: invalid `secrets.required`: expected an array of strings, found the string `"DATABASE_URL"`
         --> hoist.toml:3:12
          |
        3 | required = "DATABASE_URL"
          |            ^^^^^^^^^^^^^^
          = hint: write `required = ["DATABASE_URL"]`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn quoted_service_name_with_a_space() {
    check(
        "app = \"notes\"\n[services.\"my web\"]\ncommand = \"x\"\n",
        expect![[r#"
        error: invalid service name `my web`: expected a lowercase letter followed by lowercase letters, digits, `-` or `_` (at most 63)
         --> hoist.toml:2:11
          |
        2 | [services."my web"]
          |           ^^^^^^^^
          = hint: try `my-web`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn service_that_is_not_a_table() {
    check(
        "app = \"notes\"\n[services]\nweb = \"./app serve\"\n",
        expect![[r#"
        error: invalid `services.web`: expected a table, found the string `"./app serve"`
         --> hoist.toml:3:7
          |
        3 | web = "./app serve"
          |       ^^^^^^^^^^^^^

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn key_in_the_wrong_section_names_its_home() {
    check(
        "app = \"notes\"\nreplicas = 2\n[services.worker]\ncommand = \"x\"\nevery = \"5m\"\n",
        expect![[r#"
        error: unknown key `replicas` at the top level
         --> hoist.toml:2:1
          |
        2 | replicas = 2
          | ^^^^^^^^
          = hint: `replicas` belongs in a `[services.NAME]` table

        error: unknown key `every` in `services.worker`
         --> hoist.toml:5:1
          |
        5 | every = "5m"
          | ^^^^^
          = hint: `every` belongs in a `[jobs.NAME]` table

        --
        `hoist.toml` has 2 errors"#]],
    );
}

#[test]
fn smoke_hook_without_a_web_service_is_a_warning() {
    check_warnings("app = \"notes\"\n[services.worker]\ncommand = \"x\"\n[hooks]\nsmoke = \"curl -fsS $HOIST_URL/health\"\n", expect![[r#"
        warning: `hooks.smoke` runs after the switch, but no service has `http`
         --> hoist.toml:5:9
          |
        5 | smoke = "curl -fsS $HOIST_URL/health"
          |         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
          = hint: `HOIST_URL` is set only for an app with a web service
    "#]]);
}

#[test]
fn crlf_line_endings_and_tabs_render_cleanly() {
    check(
        "app = \"notes\"\r\n[services.worker]\r\ncommand = \"x\"\r\n\treplica = 2\r\n",
        expect![[r#"
        error: unknown key `replica` in `services.worker`
         --> hoist.toml:4:2
          |
        4 | 	replica = 2
          | 	^^^^^^^
          = hint: did you mean `replicas`?

        --
        `hoist.toml` has 1 error"#]],
    );
}

// Hostile values that validated once and did harm later (issue 14): each is refused here,
// located, before anything runs.

#[test]
fn health_path_with_crlf_would_inject_headers() {
    check(
        "app = \"notes\"\n[services.web]\ncommand = \"./app\"\nhttp = { domains = [\"*\"], health = \"/health\\r\\nX-Evil: 1\" }\n\n[services.api]\ncommand = \"./app\"\nhttp = { domains = [\"api\"], health = { path = \"/h\\u001b[2J\" } }\n",
        expect![[r#"
            error: invalid `services.web.http.health`: the URL path contains a control character (U+000D)
             --> hoist.toml:4:36
              |
            4 | http = { domains = ["*"], health = "/health\r\nX-Evil: 1" }
              |                                    ^^^^^^^^^^^^^^^^^^^^^^
              = hint: percent-encode it (`%20` for a space), or remove it

            error: invalid `services.api.http.health.path`: the URL path contains a control character (U+001B)
             --> hoist.toml:8:47
              |
            8 | http = { domains = ["api"], health = { path = "/h\u001b[2J" } }
              |                                               ^^^^^^^^^^^^^
              = hint: percent-encode it (`%20` for a space), or remove it

            --
            `hoist.toml` has 2 errors"#]],
    );
}

#[test]
fn nul_in_commands_and_env_values() {
    check(
        "app = \"notes\"\n[env]\nA = \"x\\u0000y\"\n[services.worker]\ncommand = \"./app\\u0000 --evil\"\n",
        expect![[r#"
            error: invalid `env.A`: the string contains a NUL character (`\u0000`)
             --> hoist.toml:3:5
              |
            3 | A = "x\u0000y"
              |     ^^^^^^^^^^
              = hint: remove it: commands, paths and environment values cannot hold NUL

            error: invalid `services.worker.command`: the string contains a NUL character (`\u0000`)
             --> hoist.toml:5:11
              |
            5 | command = "./app\u0000 --evil"
              |           ^^^^^^^^^^^^^^^^^^^^
              = hint: remove it: commands, paths and environment values cannot hold NUL

            --
            `hoist.toml` has 2 errors"#]],
    );
}

#[test]
fn path_and_loader_variables_are_reserved() {
    check(
        "app = \"notes\"\n[env]\nPATH = \"/tmp/evil\"\nLD_PRELOAD = \"/tmp/x.so\"\n[secrets]\nrequired = [\"LD_LIBRARY_PATH\"]\n",
        expect![[r#"
            error: environment variable `PATH` is reserved: it changes how programs are found and loaded (`PATH`, `LD_*` and the like)
             --> hoist.toml:3:1
              |
            3 | PATH = "/tmp/evil"
              | ^^^^
              = hint: choose another name

            error: environment variable `LD_PRELOAD` is reserved: it changes how programs are found and loaded (`PATH`, `LD_*` and the like)
             --> hoist.toml:4:1
              |
            4 | LD_PRELOAD = "/tmp/x.so"
              | ^^^^^^^^^^
              = hint: choose another name

            error: secret name `LD_LIBRARY_PATH` is reserved: it changes how programs are found and loaded (`PATH`, `LD_*` and the like)
             --> hoist.toml:6:13
              |
            6 | required = ["LD_LIBRARY_PATH"]
              |             ^^^^^^^^^^^^^^^^^
              = hint: choose another name

            --
            `hoist.toml` has 3 errors"#]],
    );
}

#[test]
fn user_must_be_a_unix_user_name() {
    check(
        "app = \"notes\"\n[services.worker]\ncommand = \"./app\"\nuser = \"../../root\"\n",
        expect![[r#"
            error: invalid `services.worker.user`: `../../root` is not a Unix user name
             --> hoist.toml:4:8
              |
            4 | user = "../../root"
              |        ^^^^^^^^^^^^
              = hint: a user name is a lowercase letter or `_`, then lowercase letters, digits, `_` or `-` (at most 32)

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn include_outside_the_project() {
    check(
        "app = \"notes\"\n[build]\ninclude = [\"app.py\", \"/etc/shadow\", \"../secrets/**\", \"a/../../b\"]\nexclude = [\"/tmp\"]\n",
        expect![[r#"
            error: invalid `build.include`: `/etc/shadow` is outside the project directory
             --> hoist.toml:3:22
              |
            3 | include = ["app.py", "/etc/shadow", "../secrets/**", "a/../../b"]
              |                      ^^^^^^^^^^^^^
              = hint: patterns are relative to the directory of `hoist.toml` and cannot climb out of it

            error: invalid `build.include`: `../secrets/**` is outside the project directory
             --> hoist.toml:3:37
              |
            3 | include = ["app.py", "/etc/shadow", "../secrets/**", "a/../../b"]
              |                                     ^^^^^^^^^^^^^^^
              = hint: patterns are relative to the directory of `hoist.toml` and cannot climb out of it

            error: invalid `build.include`: `a/../../b` is outside the project directory
             --> hoist.toml:3:54
              |
            3 | include = ["app.py", "/etc/shadow", "../secrets/**", "a/../../b"]
              |                                                      ^^^^^^^^^^^
              = hint: patterns are relative to the directory of `hoist.toml` and cannot climb out of it

            error: invalid `build.exclude`: `/tmp` is outside the project directory
             --> hoist.toml:4:12
              |
            4 | exclude = ["/tmp"]
              |            ^^^^^^
              = hint: patterns are relative to the directory of `hoist.toml` and cannot climb out of it

            --
            `hoist.toml` has 4 errors"#]],
    );
}

#[test]
fn replicas_are_capped() {
    check(
        "app = \"notes\"\n[services.worker]\ncommand = \"./app\"\nreplicas = 257\n",
        expect![[r#"
            error: invalid `services.worker.replicas`: expected an integer from 1 to 256, found `257`
             --> hoist.toml:4:12
              |
            4 | replicas = 257
              |            ^^^

            --
            `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn instances_per_host_are_capped() {
    let mut text = String::from("app = \"notes\"\n");
    for i in 0..5 {
        text.push_str(&format!(
            "[services.w{i}]\ncommand = \"./app\"\nroles = [\"all\"]\nreplicas = 250\n"
        ));
    }
    check(
        &text,
        expect![[r#"
        error: host `local` would run 1250 instances; at most 1000 per host
          --> hoist.toml:21:12
           |
        21 | replicas = 250
           |            ^^^
           = hint: lower `replicas`, or spread the services over more hosts with `roles`

        --
        `hoist.toml` has 1 error"#]],
    );
}

#[test]
fn two_thousand_services_of_a_thousand_replicas_are_refused() {
    let mut text = String::from("app = \"notes\"\n");
    for i in 0..2000 {
        text.push_str(&format!(
            "[services.w{i}]\ncommand = \"./app\"\nreplicas = 1000\n"
        ));
    }
    let err = hoist_config::parse_str("hoist.toml", &text).unwrap_err();
    let rendered = hoist_config::render(err.diagnostics());
    assert!(
        rendered.contains("host `local` would run 2000 instances; at most 1000 per host"),
        "{}",
        &rendered[rendered.len().saturating_sub(2000)..]
    );
    assert!(rendered.contains(
        "invalid `services.w0.replicas`: expected an integer from 1 to 256, found `1000`"
    ));
}

#[test]
fn bidi_overrides_in_the_source_line_are_shown_escaped_and_underlined_whole() {
    check(
        "app = \"gnp\u{202e}exe\"\n",
        expect![[r#"
            error: invalid app name `gnp\u{202e}exe`: expected a lowercase letter followed by lowercase letters, digits, `-` or `_` (at most 63)
             --> hoist.toml:1:7
              |
            1 | app = "gnp\u{202e}exe"
              |       ^^^^^^^^^^^^^^^^
              = hint: try `gnp-exe`

            --
            `hoist.toml` has 1 error"#]],
    );
}
