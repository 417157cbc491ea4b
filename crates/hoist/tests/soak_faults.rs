//! Faults the soak found (issue #14), each forced here on a real agent: a sequential
//! caller refused as if a deploy were running, an upload whose blobs another app's prune
//! collected, and jobs the agent kept tracking after they were removed.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{text, Host};
use hoist_testkit::wait_until;

const LONG: Duration = Duration::from_secs(60);

/// Sets `key = value` lines into the `[deploy]` table of `project`'s app file, and
/// `extra` at its end.
fn edit(project: &Path, from: &str, to: &str) {
    let f = project.join("hoist.toml");
    let toml = std::fs::read_to_string(&f).unwrap();
    assert!(toml.contains(from), "`{from}` is not in the app file");
    std::fs::write(&f, toml.replacen(from, to, 1)).unwrap();
}

fn deploy_ok(h: &Host, project: &Path) {
    let out = h.deploy(project);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A caller that deploys one release after another, each as soon as the previous one
/// answered, is never told that a deploy is already running: not when its next request
/// comes the instant the answer does (eight back to back, the agent ending each standby
/// window in its own time, as in the soak), and not while the agent itself holds the app
/// for its own work (here the end of a standby window, made to last while the old
/// release's instances take their `stop_timeout` to stop).
#[test]
fn sequential_deploys_are_never_refused_as_already_running() {
    let h = Host::new();
    let p = h.project("s0", "", "");
    edit(&p, "standby = \"10m\"", "standby = \"0s\"");
    for n in 0..8 {
        std::fs::write(p.join("VERSION"), format!("s{n}")).unwrap();
        deploy_ok(&h, &p);
    }
    // Releases whose instances take 6 s to stop, warm for 1 s after they are replaced.
    edit(&p, "standby = \"0s\"", "standby = \"1s\"");
    edit(&p, "stop_timeout = \"5s\"", "stop_timeout = \"6s\"");
    edit(&p, "[env]\n", "[env]\nTESTAPP_IGNORE_SIGTERM = \"1\"\n");
    for v in ["slow-a", "slow-b"] {
        std::fs::write(p.join("VERSION"), v).unwrap();
        deploy_ok(&h, &p);
    }
    // A second after the switch, the agent ends `slow-a`'s window under the app's lock
    // and stops its instances: the deploy that comes meanwhile waits, it is not refused.
    wait_until(LONG, || {
        h.status()["apps"][0]["instances"]
            .as_array()
            .is_some_and(|a| a.iter().any(|i| i["state"] == "stopping"))
    })
    .expect("the end of the standby window stops the old instances");
    std::fs::write(p.join("VERSION"), "after-window").unwrap();
    deploy_ok(&h, &p);
}

/// The app file of a second app, `other`, beside the test app `demo` on the same host
/// (its own domain), shipping `VERSION` and `EXTRA`.
fn other_project(h: &Host, version: &str, extra: &str) -> std::path::PathBuf {
    let p = h.project("other", "", "");
    edit(&p, "app = \"demo\"", "app = \"other\"");
    edit(&p, "domains = [\"*\"]", "domains = [\"other.test\"]");
    edit(
        &p,
        "include = [\"VERSION\"]",
        "include = [\"VERSION\", \"EXTRA\"]",
    );
    std::fs::write(p.join("VERSION"), version).unwrap();
    std::fs::write(p.join("EXTRA"), extra).unwrap();
    p
}

/// An upload is a conversation: "which blobs do you have?" (the offer), the missing ones
/// sent, then the offer again. Content is shared across apps, so between those steps
/// another app's deploy may prune its releases and collect their blobs. Played here
/// step by step against the agent's API, exactly as `hoist deploy` does: `other` offers a
/// release whose `VERSION` only `demo`'s oldest release holds, sends its one new blob,
/// then `demo` deploys twice (pruning that release and collecting the store) before
/// `other` offers again. The host must still have every blob, and `other` deploys.
#[test]
fn another_apps_prune_never_collects_the_blobs_of_an_upload_in_progress() {
    use hoist_artifact::{read_manifest, transfer, Limits};
    use hoist_protocol::fleet::{BlobsStored, Offer};

    let h = Host::new();
    let demo = h.project("demo-v1", "", "keep_releases = 1");
    std::fs::write(demo.join("VERSION"), "content both apps ship").unwrap();
    deploy_ok(&h, &demo);

    let other = other_project(&h, "content both apps ship", "only other has this");
    let artifact = h.dir.join("other.hoist");
    let out = h.hoist(&[
        "build",
        "-c",
        other.join("hoist.toml").to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = read_manifest(&artifact, &Limits::default()).unwrap();
    let compact = h.dir.join("other.compact");
    std::fs::write(&compact, transfer::encode_compact_manifest(&manifest)).unwrap();
    let client = hoist_client::Client::new(&h.socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let offer = || {
        rt.block_on(client.upload::<Offer>("/v1/releases/offer?kind=compact", &compact))
            .unwrap()
    };

    // 1. The host has the shared `VERSION` (from demo's release) and lacks `EXTRA`.
    let first = offer();
    assert!(!first.complete, "{first:?}");
    let extra_short = &hoist_artifact::Hash::of(b"only other has this").to_hex()
        [..hoist_artifact::SHORT_HASH_HEX];
    assert_eq!(first.missing, vec![extra_short.to_string()], "{first:?}");
    // 2. `EXTRA` is sent.
    let pack = h.dir.join("other.pack");
    transfer::pack_for_transfer_short(
        &artifact,
        &first.missing,
        std::fs::File::create(&pack).unwrap(),
        &Limits::default(),
    )
    .unwrap();
    let stored: BlobsStored = rt
        .block_on(client.upload("/v1/releases/blobs?app=other&actor=test", &pack))
        .unwrap();
    assert_eq!(stored.blobs, 1);
    // 3. Meanwhile `demo` moves on twice: its first release (the only one holding the
    // shared content) is pruned and the store collected.
    for v in ["demo-v2", "demo-v3"] {
        std::fs::write(demo.join("VERSION"), v).unwrap();
        deploy_ok(&h, &demo);
    }
    let out = h.hoist(&[
        "releases",
        "--json",
        "-c",
        demo.join("hoist.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let kept: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        kept.as_array().map(Vec::len),
        Some(2),
        "demo's first release was not pruned: {kept}"
    );
    // 4. The offer again: nothing is missing, the release is recorded.
    let again = offer();
    assert!(
        again.complete && again.missing.is_empty(),
        "the host lost blobs of an upload in progress: {again:?}"
    );
    // And `other` deploys from what the host holds.
    deploy_ok(&h, &other);
}

/// The runs of `job` in `demo`, newest first, as `hoist jobs --json` lists them.
fn runs_of(h: &Host, project: &Path, job: &str) -> Vec<serde_json::Value> {
    let out = h.hoist(&[
        "jobs",
        "--json",
        "-c",
        project.join("hoist.toml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    all.into_iter().filter(|r| r["job"] == job).collect()
}

/// Writes `demo`'s app file with `jobs` (TOML tables) before its `[deploy]` table.
fn with_jobs(project: &Path, jobs: &str) {
    edit(project, "[deploy]", &format!("{jobs}\n\n[deploy]"));
}

/// A job the app no longer declares (a deploy removed it, or `hoist down` removed the
/// app) is still the agent's to finish: a run that was going when it went is followed to
/// its end, and its record says how it ended (its timeout still applies); then the agent
/// forgets the job. Before, its slot was never visited again: the run's record stayed
/// `running` for ever and a stuck run was never stopped.
#[test]
fn runs_of_removed_jobs_are_finished_and_recorded_then_forgotten() {
    let h = Host::new();
    // A job that would run for ten minutes, stopped at its 3 s timeout.
    let p = h.project("with-job", "", "");
    with_jobs(
        &p,
        "[jobs.stuck]\ncommand = \"sleep 600\"\nevery = \"1s\"\ntimeout = \"3s\"",
    );
    deploy_ok(&h, &p);
    wait_until(LONG, || {
        runs_of(&h, &p, "stuck")
            .iter()
            .any(|r| r["status"] == "running")
    })
    .expect("a run of `stuck` starts");
    // The next release no longer has the job: the run going now must still end at its
    // timeout and be recorded so.
    let running = runs_of(&h, &p, "stuck")
        .into_iter()
        .find(|r| r["status"] == "running")
        .unwrap();
    let q = h.project("without-job", "", "");
    deploy_ok(&h, &q);
    wait_until(LONG, || {
        runs_of(&h, &q, "stuck")
            .iter()
            .any(|r| r["id"] == running["id"] && r["status"] == "timeout")
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", runs_of(&h, &q, "stuck")));
    assert!(
        runs_of(&h, &q, "stuck")
            .iter()
            .all(|r| r["status"] != "running"),
        "{:#?}",
        runs_of(&h, &q, "stuck")
    );

    // `hoist down` while a two-second run goes: it ends and is recorded `succeeded`.
    let r = h.project("short-job", "", "");
    with_jobs(
        &r,
        "[jobs.short]\ncommand = \"sleep 2\"\nevery = \"1s\"\ntimeout = \"30s\"",
    );
    deploy_ok(&h, &r);
    wait_until(LONG, || {
        runs_of(&h, &r, "short")
            .iter()
            .any(|r| r["status"] == "running")
    })
    .expect("a run of `short` starts");
    let out = h.hoist(&["down", "-c", r.join("hoist.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_until(LONG, || {
        let runs = runs_of(&h, &r, "short");
        !runs.is_empty() && runs.iter().all(|r| r["status"] == "succeeded")
    })
    .unwrap_or_else(|e| panic!("{e}: {:#?}", runs_of(&h, &r, "short")));
    // No run starts again: the agent no longer schedules a job of an app that is down.
    let count = runs_of(&h, &r, "short").len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(runs_of(&h, &r, "short").len(), count);
}

/// A sibling of the jobs' slots: the route of a web service the new release no longer
/// declares. Left in the proxy, it sent its domain to the stopped instances' ports (which
/// the port allocator may give to another app next); it must go at the switch, so the
/// domain falls to what the app still serves (here its `*` route).
#[test]
fn the_route_of_a_removed_web_service_goes_with_it() {
    let h = Host::new();
    let app = hoist_testkit::testapp_bin();
    let p = h.project("two-services", "", "");
    edit(
        &p,
        "[deploy]",
        &format!(
            "[services.admin]\ncommand = \"{} serve\"\nroles = [\"web\"]\nhttp = {{ domains = [\"admin.test\"], health = {{ path = \"/health\", interval = \"100ms\" }}, drain_timeout = \"1s\" }}\n\n[deploy]",
            app.display()
        ),
    );
    deploy_ok(&h, &p);
    let admin = || hoist_testkit::http_get(h.proxy, "admin.test", "/").ok();
    assert_eq!(admin().map(|r| r.status), Some(200));
    let q = h.project("one-service", "", "");
    let out = h.deploy(&q);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let release = common::release_of(&out);
    // The admin domain is now answered by `web` of the new release, not by a dead route.
    let r = admin().expect("the proxy answers");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["release"], release.as_str(), "{}", r.body);
}
