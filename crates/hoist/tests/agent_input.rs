//! The agent checks what arrives on its API as the CLI checks the app file: a spec posted
//! straight to the socket (or through the dashboard's `/v1/*`) with values the app file
//! refuses is answered 400 with the reasons, and nothing is staged.

mod common;

use std::path::Path;

use common::{agent_request, release_of, text, Host};

/// What a refused request must leave as it was: the stored specs, the operations, the
/// history, the current release and the leases.
fn staged(root: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open(root.join("state.db")).unwrap();
    let mut out = Vec::new();
    for q in [
        "SELECT app || ' ' || release || ' ' || spec FROM releases ORDER BY app, release",
        "SELECT CAST(count(*) AS TEXT) FROM operations",
        "SELECT CAST(count(*) AS TEXT) FROM history",
        "SELECT app || ' ' || release FROM current ORDER BY app",
        "SELECT name FROM leases ORDER BY name",
    ] {
        let mut st = db.prepare(q).unwrap();
        let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

#[test]
fn hostile_specs_and_names_sent_to_the_api_are_refused_and_nothing_is_staged() {
    let host = Host::new();
    let p = host.project("v1", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let release = release_of(&out);
    let cfg = host.hoist(&[
        "config",
        "--json",
        "-c",
        p.join("hoist.toml").to_str().unwrap(),
    ]);
    assert!(cfg.status.success(), "{}", text(&cfg.stderr));
    let good: serde_json::Value = serde_json::from_slice(&cfg.stdout).unwrap();
    let before = staged(&host.root);

    type Edit = fn(&mut serde_json::Value);
    let hostile: [(&str, Edit, &str); 13] = [
        (
            "CR/LF in the health path",
            |s| {
                s["services"]["web"]["http"]["health"]["kind"]["path"] =
                    "/health\r\nX-Evil: 1".into()
            },
            "the URL path contains a control character (U+000D)",
        ),
        (
            "NUL in the command",
            |s| s["services"]["web"]["command"] = "./web\u{0}--evil".into(),
            "`services.web.command`: the string contains a NUL",
        ),
        (
            "a user that is a path",
            |s| s["services"]["web"]["user"] = "../../root".into(),
            "`../../root` is not a Unix user name",
        ),
        (
            "10,000 replicas",
            |s| s["services"]["web"]["replicas"] = 10_000.into(),
            "10000 is outside 1..=256",
        ),
        (
            "an include outside the project",
            |s| s["build"]["include"] = serde_json::json!(["/etc/shadow"]),
            "`/etc/shadow` is outside the project directory",
        ),
        (
            "a service name that climbs out",
            |s| {
                let web = s["services"]["web"].clone();
                s["services"]["../../etc"] = web;
            },
            "invalid service name `../../etc`",
        ),
        (
            "an app name that climbs out",
            |s| s["app"] = "../demo".into(),
            "invalid app name `../demo`",
        ),
        // Issue 14: what the app file refuses in TLS, domains, guards, alerts and canary
        // steps went through the API.
        (
            "a TLS key that is a relative path",
            |s| {
                s["services"]["web"]["http"]["domains"] = serde_json::json!(["demo.test"]);
                s["services"]["web"]["http"]["tls"] = serde_json::json!({"source": "file", "cert": "/etc/ssl/c.pem", "key": "../key.pem"});
            },
            "`services.web.http.tls.key`: `../key.pem` is not an absolute path",
        ),
        (
            "a domain that is a URL",
            |s| s["services"]["web"]["http"]["domains"] = serde_json::json!(["http://evil.test/x"]),
            "invalid domain `http://evil.test/x`",
        ),
        (
            "a trusted proxy that is no CIDR block",
            |s| {
                s["services"]["web"]["http"]["guards"]["trusted_proxies"] =
                    serde_json::json!(["10.0.0.0/99"])
            },
            "`10.0.0.0/99` is not an address or CIDR block",
        ),
        (
            "an alert webhook that is a file",
            |s| s["alerts"]["webhook"] = "file:///etc/passwd".into(),
            "`alerts.webhook`: `file:///etc/passwd` is not an http:// or https:// URL",
        ),
        (
            "a log alert on a service that does not exist",
            |s| {
                s["alerts"]["logs"]["oops"] = serde_json::json!(
                    {"service": "ghost", "pattern": "(", "count": 1, "within": "5m"}
                )
            },
            "`alerts.logs.oops.service` names no service: `ghost`",
        ),
        (
            "a canary step of 150%",
            |s| {
                s["deploy"]["canary"] = serde_json::json!({
                    "steps_bp": [15000], "interval": "1m", "max_error_bp": 100,
                    "max_p99": null, "min_requests": 10
                })
            },
            "invalid `deploy.canary.steps`",
        ),
    ];
    for (what, edit, reason) in hostile {
        let mut spec = good.clone();
        edit(&mut spec);
        let deploy = serde_json::json!({
            "spec": spec, "release": release, "host": "local", "actor": "test",
        });
        let (status, body) = agent_request(&host.socket, "POST", "/v1/deploy", &deploy.to_string());
        assert_eq!(status, 400, "{what}: deploy answered {status}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
        let plan = serde_json::json!({"spec": spec, "manifest": "", "host": "local"});
        let (status, body) = agent_request(&host.socket, "POST", "/v1/plan", &plan.to_string());
        assert_eq!(status, 400, "{what}: plan answered {status}: {body}");
        assert!(body.contains(reason), "{what}: {body}");
    }

    // Names in paths and bodies are held to the same rules.
    for (method, path, body) in [
        ("GET", "/v1/secrets/..", ""),
        ("DELETE", "/v1/secrets/../PATH", ""),
        ("PUT", "/v1/secrets/demo/..", r#"{"value":"x"}"#),
        (
            "POST",
            "/v1/leases/..",
            r#"{"holder":"h","token":"t","ttl_ms":60000}"#,
        ),
        ("POST", "/v1/maintenance/..", r#"{"on":true}"#),
        ("POST", "/v1/jobs/demo/..%2F..%2Fx/run", ""),
        (
            "POST",
            "/v1/rollback",
            r#"{"app":"../demo","host":"local","actor":"t","release":null}"#,
        ),
    ] {
        let (status, answer) = agent_request(&host.socket, method, path, body);
        assert_eq!(status, 400, "{method} {path} answered {status}: {answer}");
        assert!(answer.contains("invalid"), "{method} {path}: {answer}");
    }

    assert_eq!(
        staged(&host.root),
        before,
        "a refused request staged something"
    );
    assert_eq!(host.serving().as_deref(), Some(release.as_str()));
    // The good spec still goes through the same door.
    let deploy = serde_json::json!({
        "spec": good, "release": release, "host": "local", "actor": "test",
    });
    let (status, body) = agent_request(&host.socket, "POST", "/v1/deploy", &deploy.to_string());
    assert_eq!(status, 200, "{body}");
}
