//! `[alerts]`: accepted as written; unknown rule names and invalid regexes refused with
//! file:line.

mod common;

use common::WEB_APP as BASE;

fn refused(extra: &str) -> String {
    common::refused(&format!("{BASE}{extra}"))
}

#[test]
fn alerts_are_read() {
    let text = format!(
        "{BASE}\n[alerts]\nwebhook = \"http://127.0.0.1:9/hook\"\nalertmanager = \"http://127.0.0.1:9093\"\n\n[alerts.rules.http_5xx_ratio]\nthreshold = 0.2\n\n[alerts.rules.disk_free_low]\nenabled = false\n\n[alerts.logs.sandboxes]\nservice = \"web\"\npattern = \"no sandboxes? available\"\ncount = 3\nwithin = \"1m\"\n"
    );
    let loaded = hoist_config::parse_str("hoist.toml", &text).unwrap();
    let a = &loaded.spec.alerts;
    assert_eq!(a.webhook.as_deref(), Some("http://127.0.0.1:9/hook"));
    assert_eq!(a.alertmanager.as_deref(), Some("http://127.0.0.1:9093"));
    assert_eq!(a.rules["http_5xx_ratio"].threshold, Some(0.2));
    assert!(!a.rules["disk_free_low"].enabled);
    let log = &a.logs["sandboxes"];
    assert_eq!((log.service.as_str(), log.count), ("web", 3));
    assert_eq!(log.within, std::time::Duration::from_secs(60));
}

#[test]
fn an_unknown_rule_name_is_refused_with_its_line() {
    let out = refused("\n[alerts.rules.http_5xx_ration]\nthreshold = 0.1\n");
    assert!(
        out.contains("unknown alert rule `http_5xx_ration`"),
        "{out}"
    );
    assert!(out.contains("hoist.toml:7:"), "{out}");
    assert!(out.contains("did you mean `http_5xx_ratio`?"), "{out}");
}

#[test]
fn an_invalid_regex_is_refused_with_its_line() {
    let out = refused("\n[alerts.logs.x]\nservice = \"web\"\npattern = \"no (sandboxes\"\n");
    assert!(
        out.contains("invalid regex in `alerts.logs.x.pattern`"),
        "{out}"
    );
    assert!(out.contains("hoist.toml:9:"), "{out}");
}

#[test]
fn a_log_rule_on_an_unknown_service_and_a_bad_webhook_are_refused() {
    let out = refused("\n[alerts]\nwebhook = \"ftp://x\"\n\n[alerts.logs.x]\nservice = \"api\"\npattern = \"boom\"\n");
    assert!(out.contains("invalid `alerts.webhook`"), "{out}");
    assert!(out.contains("names no service: `api`"), "{out}");
}

#[test]
fn ca_roots_is_read_and_must_be_absolute() {
    let text = format!(
        "{BASE}\n[alerts]\nwebhook = \"https://hooks.example/x\"\nca_roots = \"/etc/hoist/receivers.pem\"\n"
    );
    let spec = hoist_config::parse_str("hoist.toml", &text).unwrap().spec;
    assert_eq!(
        spec.alerts.ca_roots.as_deref(),
        Some("/etc/hoist/receivers.pem")
    );
    let out = refused("\n[alerts]\nca_roots = \"ca.pem\"\n");
    assert!(out.contains("invalid `alerts.ca_roots`"), "{out}");
    assert!(out.contains("hoist.toml:8:"), "{out}");
}
