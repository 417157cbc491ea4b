//! Fleet rollouts over three real local agents (one per "host", each with its own root,
//! socket and proxy), driven through `hoist_fleet::rollout` exactly as `hoist deploy`
//! drives hosts over SSH: leases, content transfer, rolling batches, fleet rollback,
//! singleton placement. The SSH transport itself is covered by `fleet_e2e`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{text, Host};
use hoist_client::Client;
use hoist_core::spec::AppSpec;
use hoist_fleet::rollout::{Event, Fleet, HostState, Report, Target};
use hoist_protocol::fleet::{Lease, LeaseRequest};
use hoist_testkit::hoist_bin;

struct Cluster {
    hosts: Vec<Host>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster {
            hosts: (0..n).map(|_| Host::new()).collect(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn targets(&self) -> Vec<Target> {
        self.hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Target {
                name: format!("h{}", i + 1),
                client: Client::new(&h.socket),
                remote: None,
            })
            .collect()
    }

    /// The fleet app file of `version` on h1..hN (see `common::fleet_project`).
    fn project(&self, version: &str, extra_env: &str, rollout: &str, hosts: &str) -> PathBuf {
        let dir = self.dir.path().join(version);
        common::fleet_project(&dir, version, extra_env, &format!("{rollout}\n\n{hosts}"));
        dir
    }

    /// A fleet deploy of `project`'s app file and a fresh build of it to every host.
    fn deploy(&self, project: &Path) -> (Result<Report, String>, Vec<Event>) {
        run(self.targets(), &spec_of(project), Some(&build(project)))
    }

    fn hosts_toml(&self, env_of: impl Fn(usize) -> &'static str) -> String {
        (0..self.hosts.len())
            .map(|i| {
                format!(
                    "[[hosts]]\nname = \"h{}\"\nroles = [\"web\", \"worker\"]\nenv = {{ {} }}\n",
                    i + 1,
                    env_of(i)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Host env that breaks the release's health on h3 only.
fn fail_health_on_last(i: usize) -> &'static str {
    if i == 2 {
        "TESTAPP_FAIL_HEALTH = \"1\""
    } else {
        ""
    }
}

fn spec_of(project: &Path) -> AppSpec {
    hoist_config::load(&project.join("hoist.toml"), None)
        .unwrap()
        .spec
}

fn build(project: &Path) -> PathBuf {
    let out = project.join("release.hoist");
    let o = std::process::Command::new(hoist_bin())
        .args(["build", "-c"])
        .arg(project.join("hoist.toml"))
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    out
}

/// Runs a fleet deploy (or rollback when `artifact` is None) and collects its events.
fn run(
    targets: Vec<Target>,
    spec: &AppSpec,
    artifact: Option<&Path>,
) -> (Result<Report, String>, Vec<Event>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let fleet = Fleet {
        targets,
        actor: "tester@ci".into(),
        events: tx,
        lease_ttl: Duration::from_secs(30),
        held: Default::default(),
    };
    let report = rt.block_on(async move {
        match artifact {
            Some(a) => fleet.deploy(spec, a).await,
            None => fleet.rollback(spec, None, None).await,
        }
    });
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (report.map_err(|e| e.to_string()), events)
}

fn states(r: &Report) -> Vec<&HostState> {
    r.hosts.iter().map(|h| &h.state).collect()
}

fn uploaded(events: &[Event]) -> Vec<(String, usize, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Uploaded {
                host, blobs, bytes, ..
            } => Some((host.clone(), *blobs, *bytes)),
            _ => None,
        })
        .collect()
}

fn leases(h: &Host) -> Vec<Lease> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(Client::new(&h.socket).get::<Vec<Lease>>("/v1/leases"))
        .unwrap()
}

fn worker_hosts(c: &Cluster) -> Vec<usize> {
    (0..c.hosts.len())
        .filter(|&i| {
            c.hosts[i].status()["apps"][0]["instances"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["service"] == "worker" && x["state"] != "stopped")
        })
        .collect()
}

#[test]
fn rolling_deploy_moves_only_missing_blobs_and_keeps_no_lease() {
    let c = Cluster::new(3);
    let v1 = c.project("v1", "", "batch = 1", &c.hosts_toml(|_| ""));
    let (report, events) = c.deploy(&v1);
    let report = report.unwrap();
    assert_eq!(report.result, "succeeded", "{report:?}");
    assert_eq!(report.exit_code(), 0);
    // Batches of one, in file order.
    let batches: Vec<Vec<String>> = events
        .iter()
        .filter_map(|e| match e {
            Event::Batch { hosts, .. } => Some(hosts.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![vec!["h1"], vec!["h2"], vec!["h3"]]);
    let first = uploaded(&events);
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|(_, _, bytes)| *bytes > 0));
    let r1 = report.release.clone();
    for h in &c.hosts {
        assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
        assert!(leases(h).is_empty(), "the lease must be released");
    }
    // The singleton runs on exactly one host: the first with its role.
    assert_eq!(worker_hosts(&c), vec![0]);
    // The same release again converges at once: every host is left as it is.
    let (again, _) = c.deploy(&v1);
    let again = again.unwrap();
    assert_eq!(again.result, "succeeded", "{again:?}");
    assert!(states(&again)
        .iter()
        .all(|s| matches!(s, HostState::Unchanged { .. })));

    // v2 changes one small file: each host receives one blob, not the big one.
    let v2 = c.project("v2", "", "batch = 1", &c.hosts_toml(|_| ""));
    let (report, events) = c.deploy(&v2);
    let report = report.unwrap();
    assert_eq!(report.result, "succeeded", "{report:?}");
    for (host, blobs, bytes) in uploaded(&events) {
        assert_eq!(blobs, 1, "{host} got {blobs} blobs");
        assert!(bytes < 64 * 1024, "{host} got {bytes} bytes");
    }
    for h in &c.hosts {
        assert_eq!(h.serving().as_deref(), Some(report.release.as_str()));
    }

    // A fleet rollback puts every host back on its previous release, batch by batch.
    let (report, events) = run(c.targets(), &spec_of(&v2), None);
    let report = report.unwrap();
    assert_eq!(report.result, "succeeded", "{report:?}");
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Batch { .. }))
            .count(),
        3
    );
    for h in &c.hosts {
        assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
    }
}

#[test]
fn a_failed_first_batch_stops_the_rollout_and_rollback_puts_switched_hosts_back() {
    let c = Cluster::new(3);
    let v1 = c.project("v1", "", "batch = 1", &c.hosts_toml(|_| ""));
    let (report, _) = c.deploy(&v1);
    let r1 = report.unwrap().release;

    // Broken everywhere: the first batch fails, the others are never touched.
    let bad = c.project(
        "bad",
        "TESTAPP_FAIL_CHECK = \"1\"",
        "batch = 1",
        &c.hosts_toml(|_| ""),
    );
    let (report, _) = c.deploy(&bad);
    let report = report.unwrap();
    assert_eq!(report.result, "failed", "{report:?}");
    assert_eq!(report.exit_code(), 1);
    assert!(matches!(states(&report)[0], HostState::Failed { .. }));
    assert_eq!(
        states(&report)[1..],
        [&HostState::NotStarted, &HostState::NotStarted]
    );
    for h in &c.hosts {
        assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
    }

    // Broken only on the last host (its own env): h1 and h2 switch, h3 fails, and with
    // on_failure = "rollback" h1 and h2 go back.
    let v3 = c.project(
        "v3",
        "",
        "batch = 1\non_failure = \"rollback\"",
        &c.hosts_toml(fail_health_on_last),
    );
    let (report, events) = c.deploy(&v3);
    let report = report.unwrap();
    assert_eq!(report.result, "failed", "{report:?}");
    let s = states(&report);
    assert!(matches!(s[0], HostState::RolledBack { .. }), "{s:?}");
    assert!(matches!(s[1], HostState::RolledBack { .. }), "{s:?}");
    assert!(matches!(s[2], HostState::Failed { .. }), "{s:?}");
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RollingBack { host } if host == "h1")));
    for h in &c.hosts {
        assert_eq!(h.serving().as_deref(), Some(r1.as_str()));
    }

    // Without rollback, the same failure leaves a partial fleet: exit 3.
    let v4 = c.project("v4", "", "batch = 2", &c.hosts_toml(fail_health_on_last));
    let (report, _) = c.deploy(&v4);
    let report = report.unwrap();
    assert_eq!(report.result, "partial", "{report:?}");
    assert_eq!(report.exit_code(), 3);
    assert_eq!(c.hosts[2].serving().as_deref(), Some(r1.as_str()));
    assert_eq!(
        c.hosts[0].serving().as_deref(),
        Some(report.release.as_str())
    );
}

#[test]
fn a_live_lease_refuses_another_deploy_and_an_abandoned_one_expires() {
    let c = Cluster::new(2);
    let v1 = c.project("v1", "", "batch = 1", &c.hosts_toml(|_| ""));
    let spec = spec_of(&v1);
    let artifact = build(&v1);
    // Someone else's deploy holds h2's lease (and then vanishes without a heartbeat).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let other = LeaseRequest {
        holder: "ann@laptop".into(),
        token: "0123456789abcdef0123".into(),
        ttl_ms: 1500,
        acme_peers: Vec::new(),
    };
    let _: Lease = rt
        .block_on(Client::new(&c.hosts[1].socket).call(
            hyper::Method::POST,
            "/v1/leases/demo",
            Some(&other),
        ))
        .unwrap();
    let (report, _) = run(c.targets(), &spec, Some(&artifact));
    let err = report.unwrap_err();
    assert!(err.contains("ann@laptop"), "{err}");
    // Nothing changed, and the lease taken on h1 before the refusal was given back.
    assert_eq!(c.hosts[0].serving(), None);
    assert!(leases(&c.hosts[0]).is_empty());
    // A deploy without the lease's token (a local `hoist deploy` on h2) is refused too.
    let req = hoist_protocol::agent::DeployRequest {
        spec: spec.clone(),
        release: "0000000000000000".into(),
        host: "h2".into(),
        actor: "bob@h2".into(),
        lease: None,
    };
    let refused = rt.block_on(
        Client::new(&c.hosts[1].socket).stream::<_, serde_json::Value>(
            hyper::Method::POST,
            "/v1/deploy",
            Some(&req),
            |_| true,
        ),
    );
    let err = refused.unwrap_err().to_string();
    assert!(err.contains("ann@laptop"), "{err}");
    // The abandoned lease expires by itself; the next deploy goes through.
    hoist_testkit::wait_until(Duration::from_secs(10), || {
        leases(&c.hosts[1]).iter().all(|l| !l.live)
    })
    .expect("the abandoned lease expires");
    let (report, _) = run(c.targets(), &spec, Some(&artifact));
    assert_eq!(report.unwrap().result, "succeeded");
}

#[test]
fn an_unreachable_host_is_left_out_and_its_singleton_moves() {
    let mut c = Cluster::new(3);
    let v1 = c.project("v1", "", "batch = \"50%\"", &c.hosts_toml(|_| ""));
    let (report, _) = c.deploy(&v1);
    assert_eq!(report.unwrap().result, "succeeded");
    assert_eq!(worker_hosts(&c), vec![0]);

    // h1's agent is gone: the deploy goes on without it, and the singleton moves to h2.
    c.hosts[0].kill_agent();
    let v2 = c.project("v2", "", "batch = \"50%\"", &c.hosts_toml(|_| ""));
    let (report, events) = c.deploy(&v2);
    let report = report.unwrap();
    assert_eq!(report.result, "partial", "{report:?}");
    assert_eq!(report.exit_code(), 3);
    assert!(matches!(states(&report)[0], HostState::Unreachable { .. }));
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Unreachable { host, .. } if host == "h1")));
    let on_h2 = c.hosts[1].status()["apps"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["service"] == "worker" && x["release"] == report.release.as_str());
    assert!(on_h2, "the singleton moved to h2");
    let on_h3 = c.hosts[2].status()["apps"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["service"] == "worker");
    assert!(!on_h3);

    // h1 is back: the singleton returns to it, stopped on h2 before h1 starts it.
    c.hosts[0].start_agent();
    let v3 = c.project("v3", "", "batch = \"50%\"", &c.hosts_toml(|_| ""));
    let (report, events) = c.deploy(&v3);
    assert_eq!(report.unwrap().result, "succeeded");
    let stopped = events.iter().position(|e| {
        matches!(e, Event::SingletonStopped { host, service, moves_to }
            if host == "h2" && service == "worker" && moves_to == "h1")
    });
    let first_batch = events.iter().position(|e| matches!(e, Event::Batch { .. }));
    assert!(stopped.is_some() && stopped < first_batch, "{events:?}");
    assert_eq!(worker_hosts(&c), vec![0]);
}
