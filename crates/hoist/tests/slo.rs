//! Per-minute traffic aggregates and SLOs, with the real agent, proxy and test app: the
//! aggregates count exactly the requests sent (across an agent restart), and SLO
//! burn-rate alerts fire and resolve at a webhook.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{text, Host, Receiver};
use hoist_testkit::{http_get, wait_until};

/// `GET path` on the agent's API socket; the JSON body.
fn api(host: &Host, path: &str) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(&host.socket).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{out}");
    // Chunked or not, the JSON object is the body's first `{` to its last `}`.
    let body = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Requests and 5xx of the service over the last hour, every release added up.
fn minute_totals(host: &Host) -> (u64, u64) {
    let v = api(host, "/v1/minutes?app=demo&service=web&step=60");
    let points = v["points"].as_array().unwrap();
    let sum = |k: &str| points.iter().map(|p| p[k].as_u64().unwrap()).sum::<u64>();
    (sum("requests"), sum("errors_5xx"))
}

fn send(host: &Host, path: &str, n: usize, status: u16) {
    for _ in 0..n {
        assert_eq!(
            http_get(host.proxy, "demo.test", path).unwrap().status,
            status
        );
    }
}

#[test]
fn per_minute_aggregates_count_every_request_and_survive_an_agent_restart() {
    let mut host = Host::new();
    let project = host.project("v1", "", "");
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    send(&host, "/", 30, 200);
    send(&host, "/status/503", 7, 503);
    wait_until(Duration::from_secs(30), || minute_totals(&host) == (37, 7))
        .unwrap_or_else(|e| panic!("{e}: got {:?}", minute_totals(&host)));
    let v = api(&host, "/v1/minutes/keys");
    assert_eq!(v["keys"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["keys"][0][0], "demo");
    let release = v["keys"][0][2].as_str().unwrap().to_string();
    let per_release = api(
        &host,
        &format!("/v1/minutes?app=demo&service=web&release={release}&since=0"),
    );
    let p = &per_release["points"].as_array().unwrap()[0];
    assert!(p["t"].as_i64().unwrap() % 60 == 0, "{p}");
    assert!(p["p99_seconds"].as_f64().unwrap() > 0.0, "{p}");

    // Requests answered while the agent is dead are counted once it is back, once.
    host.kill_agent();
    send(&host, "/", 5, 200);
    host.start_agent();
    wait_until(Duration::from_secs(30), || minute_totals(&host) == (42, 7))
        .unwrap_or_else(|e| panic!("{e}: got {:?}", minute_totals(&host)));
    // A few more passes do not count anything twice.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(minute_totals(&host), (42, 7));
}

/// Notifications with this status for this rule and SLO.
fn count(r: &Receiver, status: &str, rule: &str, slo: &str) -> usize {
    r.alerts(status, rule)
        .iter()
        .filter(|x| x["labels"]["slo"] == slo)
        .count()
}

fn slo_json(host: &Host, project: &std::path::Path) -> serde_json::Value {
    let out = host.hoist(&[
        "slo",
        "--json",
        "-c",
        project.join("hoist.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn find<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["slos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no SLO `{name}` in {v}"))
}

#[test]
fn slo_burn_alerts_fire_and_resolve_and_hoist_slo_counts_the_requests_sent() {
    let receiver = Receiver::start();
    let host = Host::new();
    let extra = format!(
        r#"
[alerts]
webhook = "http://{}/hook"

[alerts.rules.http_5xx_ratio]
enabled = false

[alerts.rules.latency_p99]
enabled = false

[slo.availability]
service = "web"
objective = "99%"

[slo.snappy]
service = "web"
objective = "99%"
latency = "250ms"
window = "7d"
"#,
        receiver.addr
    );
    let project = host.project("v1", "", &extra);
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    send(&host, "/", 10, 200);
    send(&host, "/sleep?ms=300", 4, 200);
    send(&host, "/status/500", 20, 500);
    // 20 bad of 34 is 59%, 59x a 1% budget: both burn alerts of both SLOs fire.
    for (rule, slo) in [
        ("slo_burn_fast", "availability"),
        ("slo_burn_slow", "availability"),
        ("slo_burn_fast", "snappy"),
        ("slo_burn_slow", "snappy"),
    ] {
        wait_until(Duration::from_secs(60), || {
            count(&receiver, "firing", rule, slo) > 0
        })
        .unwrap_or_else(|e| panic!("{e}: {rule} of {slo} never fired: {:?}", receiver.got));
    }
    let v = slo_json(&host, &project);
    let a = find(&v, "availability");
    assert_eq!(
        (
            a["requests"].as_u64(),
            a["errors_5xx"].as_u64(),
            a["bad"].as_u64()
        ),
        (Some(34), Some(20), Some(20)),
        "{a}"
    );
    assert_eq!(a["objective"].as_f64(), Some(99.0));
    assert_eq!(a["window_seconds"].as_u64(), Some(28 * 86400));
    // 20 bad where 0.34 were allowed: the budget is overspent 1 - 20/0.34 times.
    let left = a["budget_left"].as_f64().unwrap();
    assert!((left - (1.0 - 20.0 / 0.34)).abs() < 1e-6, "{a}");
    let burn5 = a["burn"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["window"] == "5m")
        .unwrap();
    assert_eq!(burn5["requests"].as_u64(), Some(34), "{a}");
    assert!(
        (burn5["rate"].as_f64().unwrap() - 20.0 / 34.0 / 0.01).abs() < 1e-6,
        "{a}"
    );
    let s = find(&v, "snappy");
    assert_eq!(
        (
            s["requests"].as_u64(),
            s["slow"].as_u64(),
            s["bad"].as_u64()
        ),
        (Some(34), Some(4), Some(24)),
        "the 300 ms answers are slow: {s}"
    );
    // The human form says the same.
    let out = host.hoist(&["slo", "-c", project.join("hoist.toml").to_str().unwrap()]);
    let human = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        human.contains("availability") && human.contains("34 requests, 20 bad"),
        "{human}"
    );

    // Good traffic dilutes the bad below 6x (24 bad of 434 is 5.5%): everything resolves,
    // each alert notified firing once.
    send(&host, "/", 400, 200);
    for (rule, slo) in [
        ("slo_burn_fast", "availability"),
        ("slo_burn_slow", "availability"),
        ("slo_burn_fast", "snappy"),
        ("slo_burn_slow", "snappy"),
    ] {
        wait_until(Duration::from_secs(60), || {
            count(&receiver, "resolved", rule, slo) > 0
        })
        .unwrap_or_else(|e| panic!("{e}: {rule} of {slo} never resolved: {:?}", receiver.got));
        assert_eq!(count(&receiver, "firing", rule, slo), 1, "{rule} {slo}");
    }
    let v = slo_json(&host, &project);
    assert_eq!(find(&v, "availability")["requests"].as_u64(), Some(434));
}

#[test]
fn alerts_export_writes_slo_burn_rules_promtool_accepts() {
    let host_dir = hoist_testkit::tempdir();
    let project = host_dir.path();
    std::fs::write(
        project.join("hoist.toml"),
        "app = \"demo\"\n\n[services.web]\ncommand = \"x\"\nhttp = { domains = [\"*\"], health = \"/health\" }\n\n[slo.snappy]\nservice = \"web\"\nobjective = \"99.9%\"\nlatency = \"250ms\"\n\n[alerts.rules.slo_burn_slow]\nthreshold = 3\n",
    )
    .unwrap();
    let out = std::process::Command::new(hoist_testkit::hoist_bin())
        .args(["alerts", "export", "-c"])
        .arg(project.join("hoist.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rules = text(&out.stdout);
    assert!(
        rules.contains("hoist_slo_burn_fast") && rules.contains("> 14.4"),
        "{rules}"
    );
    assert!(rules.contains("> 3)"), "the override is used: {rules}");
    assert!(
        rules.contains("le=\"0.25\"") && rules.contains("[5m]") && rules.contains("[360m]"),
        "{rules}"
    );
    let file = project.join("rules.yml");
    std::fs::write(&file, &rules).unwrap();
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool (Debian package prometheus) is installed");
    assert!(
        checked.status.success(),
        "promtool check rules: {}{}\n{rules}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
}

#[test]
fn firing_alerts_survive_an_agent_restart_without_notifying_again() {
    let receiver = Receiver::start();
    let mut host = Host::new();
    let extra = format!(
        "\n[alerts]\nwebhook = \"http://{}/hook\"\n\n[alerts.rules.http_5xx_ratio]\nenabled = false\n\n[slo.availability]\nservice = \"web\"\nobjective = \"99%\"\n",
        receiver.addr
    );
    let project = host.project("v1", "", &extra);
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    send(&host, "/status/500", 20, 500);
    wait_until(Duration::from_secs(60), || {
        count(&receiver, "firing", "slo_burn_fast", "availability") == 1
            && count(&receiver, "firing", "slo_burn_slow", "availability") == 1
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got));
    let started = |status: &str| {
        receiver
            .got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|v| v["alerts"].as_array().cloned().unwrap_or_default())
            .find(|a| a["status"] == status && a["labels"]["alertname"] == "slo_burn_fast")
            .map(|a| a["startsAt"].clone())
    };
    let starts_at = started("firing").unwrap();

    host.kill_agent();
    host.start_agent();
    // Passes of the new agent have run (each records the proxy's counters first, then
    // evaluates and notifies); the second count proves the first pass has finished.
    for n in [21, 22] {
        send(&host, "/status/500", 1, 500);
        wait_until(Duration::from_secs(30), || minute_totals(&host) == (n, n))
            .unwrap_or_else(|e| panic!("{e}: got {:?}", minute_totals(&host)));
    }
    assert_eq!(
        count(&receiver, "firing", "slo_burn_fast", "availability"),
        1,
        "not notified again after the restart: {:?}",
        receiver.got
    );
    assert_eq!(
        count(&receiver, "firing", "slo_burn_slow", "availability"),
        1
    );
    let listed = host.hoist(&["alerts", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert!(
        v["firing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| { a["labels"]["alertname"] == "slo_burn_fast" && a["startsAt"] == starts_at }),
        "still firing since the same moment: {v}"
    );
    // It resolves once the bad share falls (22 of 600 is 3.7%), with its first start.
    send(&host, "/", 578, 200);
    wait_until(Duration::from_secs(60), || started("resolved").is_some())
        .unwrap_or_else(|e| panic!("{e}: {:?}", receiver.got));
    assert_eq!(started("resolved").unwrap(), starts_at);
}
