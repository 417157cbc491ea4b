//! `[slo.NAME]`: accepted as written (window 28d by default); objectives outside (0, 100),
//! unknown services, bad durations and latencies that are no histogram bound refused with
//! file:line.

mod common;

const BASE: &str = r#"app = "notes"

[services.web]
command = "./app serve"
http = { domains = ["*"], health = "/health" }

[services.worker]
command = "./app work"
"#;

fn refused(extra: &str) -> String {
    common::refused(&format!("{BASE}{extra}"))
}

#[test]
fn slos_are_read() {
    let text = format!(
        "{BASE}\n[slo.availability]\nservice = \"web\"\nobjective = \"99.9%\"\n\n[slo.fast]\nservice = \"web\"\nobjective = 99\nlatency = \"250ms\"\nwindow = \"7d\"\n"
    );
    let spec = hoist_config::parse_str("hoist.toml", &text).unwrap().spec;
    let a = &spec.slo["availability"];
    assert_eq!(
        (a.service.as_str(), a.objective, a.latency),
        ("web", 99.9, None)
    );
    assert_eq!(a.window, std::time::Duration::from_secs(28 * 86400));
    let f = &spec.slo["fast"];
    assert_eq!(f.objective, 99.0);
    assert_eq!(f.latency, Some(std::time::Duration::from_millis(250)));
    assert_eq!(f.window, std::time::Duration::from_secs(7 * 86400));
}

#[test]
fn objectives_outside_0_and_100_are_refused_with_their_line() {
    for bad in ["\"100%\"", "0", "\"-5%\"", "\"150\""] {
        let out = refused(&format!(
            "\n[slo.a]\nservice = \"web\"\nobjective = {bad}\n"
        ));
        assert!(out.contains("invalid `slo.a.objective`"), "{bad}: {out}");
        assert!(out.contains("hoist.toml:12:"), "{bad}: {out}");
    }
    let out = refused("\n[slo.a]\nservice = \"web\"\nobjective = \"most\"\n");
    assert!(out.contains("slo.a.objective"), "{out}");
    let out = refused("\n[slo.a]\nservice = \"web\"\n");
    assert!(out.contains("missing key `objective`"), "{out}");
}

#[test]
fn unknown_services_and_bad_durations_are_refused() {
    let out = refused("\n[slo.a]\nservice = \"api\"\nobjective = \"99%\"\n");
    assert!(out.contains("names no service: `api`"), "{out}");
    assert!(out.contains("hoist.toml:11:"), "{out}");
    let out = refused("\n[slo.a]\nservice = \"worker\"\nobjective = \"99%\"\n");
    assert!(out.contains("has no `http`"), "{out}");
    let out =
        refused("\n[slo.a]\nservice = \"web\"\nobjective = \"99%\"\nwindow = \"fortnight\"\n");
    assert!(out.contains("slo.a.window"), "{out}");
    assert!(out.contains("hoist.toml:13:"), "{out}");
    let out = refused("\n[slo.a]\nservice = \"web\"\nobjective = \"99%\"\nwindow = \"30d\"\n");
    assert!(out.contains("longer than 28d"), "{out}");
    let out = refused("\n[slo.a]\nservice = \"web\"\nobjective = \"99%\"\nlatency = \"300ms\"\n");
    assert!(
        out.contains("not one of the proxy's latency bounds"),
        "{out}"
    );
    assert!(out.contains("250ms, 500ms"), "the bounds are listed: {out}");
    let out = refused("\n[slo.a]\nservice = \"web\"\nobjective = \"99%\"\nlatency = \"soon\"\n");
    assert!(out.contains("slo.a.latency"), "{out}");
    let out = refused("\n[slo.a]\nservice = \"web\"\nobjective = \"99%\"\nbudget = 3\n");
    assert!(out.contains("budget"), "unknown keys are refused: {out}");
}
