//! `hoist agent --metrics ADDR`: the token is required, the exposition passes
//! `promtool check metrics`, and a real Prometheus scrapes it and answers queries on
//! hoist's series.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::{free_port, http_get, parse_response, wait_until, ChildGuard, Response};

/// A host whose agent also serves `/metrics` on a free port (the flag is appended by a
/// shell wrapper, so the shared harness needs no new knob).
fn host_with_metrics() -> (Host, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut host = Host::new_with(|_| {});
    host.kill_agent();
    host.agent_wrapper = vec![
        "sh".into(),
        "-c".into(),
        format!("exec \"$0\" \"$@\" --metrics {metrics}"),
    ];
    host.start_agent();
    wait_until(Duration::from_secs(20), || {
        TcpStream::connect(metrics).is_ok()
    })
    .expect("the metrics listener is up");
    (host, metrics)
}

fn get_with(addr: SocketAddr, path: &str, auth: Option<&str>) -> Response {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw).expect("an HTTP response")
}

fn token(host: &Host) -> String {
    std::fs::read_to_string(host.root.join("metrics.token"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn metrics_need_the_token_and_pass_promtool() {
    let (host, metrics) = host_with_metrics();
    let project = host.project("v1", "", "");
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let release = common::release_of(&out);
    for _ in 0..5 {
        assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 200);
    }
    assert_eq!(
        http_get(host.proxy, "demo.test", "/nothing-here")
            .unwrap()
            .status,
        404
    );

    assert_eq!(get_with(metrics, "/metrics", None).status, 401);
    assert_eq!(
        get_with(metrics, "/metrics", Some("Bearer not-the-token")).status,
        401
    );
    let bearer = format!("Bearer {}", token(&host));
    // Memory is measured every second: scrape until it is there.
    let mut body = String::new();
    let _ = wait_until(Duration::from_secs(20), || {
        let resp = get_with(metrics, "/metrics", Some(&bearer));
        assert_eq!(resp.status, 200, "{}", resp.body);
        body = resp.body;
        body.contains("hoist_instance_memory_bytes{")
    });
    let line = format!(
        "hoist_http_requests_total{{app=\"demo\",service=\"web\",release=\"{release}\",method=\"GET\",code=\"200\"}} "
    );
    let served: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .unwrap_or_else(|| panic!("no `{line}` in\n{body}"))
        .parse()
        .unwrap();
    assert!(served >= 5, "{body}");
    assert!(
        body.contains("code=\"404\""),
        "the 404 is counted by code: {body}"
    );
    for family in [
        "hoist_http_request_duration_seconds_bucket{",
        "hoist_http_request_duration_seconds_count{",
        "hoist_http_requests_in_flight{",
        "hoist_instance_up{",
        "hoist_instance_restarts_total{",
        "hoist_instance_memory_bytes{",
        "hoist_host_disk_free_bytes{",
        "hoist_deploys_total{app=\"demo\",result=\"succeeded\"} 1",
    ] {
        assert!(body.contains(family), "no {family} in\n{body}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) is installed");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
        "promtool check metrics: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
}

#[test]
fn a_real_prometheus_scrapes_hoist() {
    let (host, metrics) = host_with_metrics();
    let project = host.project("v1", "", "");
    let out = host.deploy(&project);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for _ in 0..3 {
        assert_eq!(http_get(host.proxy, "demo.test", "/").unwrap().status, 200);
    }
    let prom = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = host.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: hoist\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['{metrics}']\n",
            host.root.join("metrics.token").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(host.dir.join("prometheus.log")).unwrap();
    let _prometheus = ChildGuard::spawn(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                host.dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(log),
    )
    .expect("prometheus (Debian package `prometheus`) is installed");
    let query = |q: &str| -> Option<serde_json::Value> {
        let resp = http_get(prom, "localhost", &format!("/api/v1/query?query={q}")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&resp.body).ok()?;
        let result = v["data"]["result"].as_array()?;
        (!result.is_empty()).then(|| v["data"]["result"].clone())
    };
    let mut found = None;
    wait_until(Duration::from_secs(90), || {
        found = query("hoist_http_requests_total%7Bapp%3D%22demo%22%2Ccode%3D%22200%22%7D");
        found.is_some()
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: Prometheus never returned hoist_http_requests_total; its log:\n{}",
            std::fs::read_to_string(host.dir.join("prometheus.log")).unwrap_or_default()
        )
    });
    let series = found.unwrap();
    assert_eq!(series[0]["metric"]["service"], "web", "{series}");
    let up = query("up%7Bjob%3D%22hoist%22%7D").expect("the target is known");
    assert_eq!(up[0]["value"][1], "1", "the scrape succeeds: {up}");
    wait_until(Duration::from_secs(30), || {
        query("sum(hoist_instance_up%7Bapp%3D%22demo%22%7D)")
            .is_some_and(|r| r[0]["value"][1] == "2")
    })
    .expect("both instances are up in Prometheus");
}
