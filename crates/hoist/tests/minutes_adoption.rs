//! The per-minute traffic store and a proxy that was serving before the agent watched it:
//! an agent upgraded from a version without the store (no baselines) that adopts a
//! running proxy takes that proxy's counters as its baseline, instead of putting all of
//! its earlier traffic into the current minute (a false spike for SLO burn rates).

mod common;

use std::time::Duration;

use common::{agent_request, text, Host};
use hoist_testkit::{http_get, wait_until};

/// Requests in every minute the agent has for demo/web.
fn counted(host: &Host) -> u64 {
    minutes_raw(host)["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["requests"].as_u64().unwrap())
        .sum()
}

/// `GET /v1/minutes` on the agent's socket.
fn minutes_raw(host: &Host) -> serde_json::Value {
    let (status, body) = agent_request(
        &host.socket,
        "GET",
        "/v1/minutes?app=demo&service=web&since=0",
        "",
    );
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The baselines the store holds (it takes one on every pass over the proxy's counters).
fn baselines(host: &Host) -> i64 {
    let Ok(db) = rusqlite::Connection::open(host.root.join("minutes.db")) else {
        return 0;
    };
    db.query_row("SELECT count(*) FROM baseline", [], |r| r.get(0))
        .unwrap_or(0)
}

fn requests(host: &Host, n: u64) {
    for _ in 0..n {
        let r = http_get(host.proxy, "demo.test", "/").unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

#[test]
fn an_agent_that_adopts_a_serving_proxy_does_not_count_its_earlier_traffic() {
    let mut host = Host::new();
    let p = host.project("v1", "", "");
    let out = host.deploy(&p);
    assert!(out.status.success(), "{}", text(&out.stderr));
    const EARLIER: u64 = 40;
    requests(&host, EARLIER);

    // The agent goes; the proxy keeps serving. The new agent has no per-minute store
    // (a version from before it, or a lost file): no baselines.
    host.kill_agent();
    for f in ["minutes.db", "minutes.db-wal", "minutes.db-shm"] {
        let _ = std::fs::remove_file(host.root.join(f));
    }
    host.start_agent();
    // Its first pass over the proxy's counters has taken a baseline.
    wait_until(Duration::from_secs(30), || baselines(&host) > 0)
        .expect("a pass over the proxy's counters");
    const LATER: u64 = 7;
    requests(&host, LATER);
    wait_until(Duration::from_secs(30), || counted(&host) >= LATER)
        .unwrap_or_else(|e| panic!("the later requests were never counted: {e}"));
    // The earlier requests, had they been counted, landed in the pass that took the
    // baseline, before the later ones.
    assert_eq!(
        counted(&host),
        LATER,
        "the minutes after the restart hold the adopted proxy's {EARLIER} earlier requests"
    );
}
