//! Per-minute traffic aggregates and SLOs, with the real agent, proxy and test app: the
//! aggregates count exactly the requests sent (across an agent restart), and SLO
//! burn-rate alerts fire and resolve at a webhook.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{text, Host};
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
