//! HTTP-01 across several hosts behind one name: two hosts (network namespaces with their
//! own sshd, set up by `hoist setup`, deployed by the real CLI) serve the same domain and
//! each orders its own certificate from a real Pebble, whose DNS points the name at one
//! host only. A proxy asked for a token it does not hold asks the app's other hosts
//! (known from the app file's `[[hosts]]`, handed to every agent with the deploy lease,
//! before any host orders) and relays the answer, so each host's issuance succeeds
//! whichever host the validator reaches, on a fresh fleet too. The hosts are named by
//! ssh config aliases, so the peers' addresses are ssh's own (`ssh -G`). Needs root and
//! sshd.

mod common;
mod netns;
mod pebble;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::text;
use hoist_testkit::{hoist_bin, testapp_bin};
use netns::Fleet;
use pebble::Pebble;

fn must(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out.stderr));
}

/// Lets the hosts reach each other and every address of the root namespace (where
/// Pebble listens): a route through the root side of each veth, and forwarding on those
/// two veths only (the machine's own `ip_forward` is left alone).
fn join_hosts(fleet: &Fleet) {
    for h in &fleet.hosts {
        let via = format!("10.213.{}.1", h.slot);
        must(Command::new("ip").args([
            "netns",
            "exec",
            &h.ns,
            "ip",
            "route",
            "replace",
            "10.213.0.0/16",
            "via",
            &via,
        ]));
        let knob = format!("/proc/sys/net/ipv4/conf/{}/forwarding", h.veth);
        std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("{knob}: {e}"));
    }
}

/// Names every host by an alias of the fleet's ssh config (`Host web-h1` / `HostName
/// 10.213.N.2`) and returns `[[hosts]]` entries that use the aliases: the peers' addresses
/// must come from ssh's own resolution (`ssh -G`), not the alias.
fn aliased_hosts(fleet: &Fleet, roles: &[&str]) -> String {
    let config = fleet.dir.join("ssh_config");
    let old = std::fs::read_to_string(&config).unwrap();
    let mut aliases = String::new();
    let mut hosts = String::new();
    for h in &fleet.hosts {
        aliases.push_str(&format!("Host web-{}\n  HostName {}\n", h.name, h.addr));
        let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
        hosts.push_str(&format!(
            "[[hosts]]\nname = \"{}\"\nssh = \"root@web-{}\"\nroles = [{}]\n\n",
            h.name,
            h.name,
            roles.join(", ")
        ));
    }
    if !old.contains("Host web-") {
        std::fs::write(&config, format!("{aliases}{old}")).unwrap();
    }
    hosts
}

/// An app named `app` answering `domain` over HTTPS with an ACME certificate, on every
/// host of the fleet (named by ssh config aliases), one host per batch.
fn project(fleet: &Fleet, pebble: &Pebble, app: &str, domain: &str) -> PathBuf {
    let dir = fleet.dir.join(app);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("VERSION"), app).unwrap();
    let toml = format!(
        r#"app = "{app}"
{acme}
[build]
include = ["VERSION"]

[services.web]
command = "{bin} serve"
replicas = 1
stop_timeout = "5s"
http = {{ domains = ["{domain}"], tls = "acme", health = {{ path = "/health", interval = "100ms", healthy_threshold = 2, min_healthy = "200ms" }}, drain_timeout = "2s" }}

[deploy]
health_deadline = "20s"

[deploy.rollout]
batch = 1

{ssh}
{hosts}"#,
        acme = pebble.acme_table(),
        bin = testapp_bin().display(),
        ssh = fleet.ssh_toml(),
        hosts = aliased_hosts(fleet, &["web"]),
    );
    std::fs::write(dir.join("hoist.toml"), toml).unwrap();
    dir.join("hoist.toml")
}

fn hoist(file: &Path, args: &[&str]) -> Output {
    Command::new(hoist_bin())
        .args(args)
        .arg("-c")
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Per host, the ACME certificate of `domain` it serves: (host, issuer).
fn certs(file: &Path, domain: &str) -> Vec<(String, String)> {
    let out = hoist(file, &["certs", "--json"]);
    assert!(out.status.success(), "certs: {}", text(&out.stderr));
    let docs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut got: Vec<(String, String)> = docs
        .iter()
        .filter(|d| d["domain"] == domain && d["source"] == "acme" && d["serving"] == true)
        .map(|d| {
            (
                d["host"].as_str().unwrap_or("?").to_string(),
                d["issuer"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort();
    got
}

#[test]
fn http01_succeeds_on_every_host_whichever_host_the_ca_reaches() {
    let fleet = Fleet::start(2);
    join_hosts(&fleet);
    let (h1, h2) = (fleet.hosts[0].addr, fleet.hosts[1].addr);
    // Pebble on h1's root-side address (reachable from both hosts), validating on port
    // 80 and 443 of whatever address its DNS gives: h2 first, a host that has never
    // run the app when h1 (first batch) orders.
    let listen = format!("10.213.{}.1", fleet.hosts[0].slot).parse().unwrap();
    let pebble = Pebble::start_at(&fleet.dir, listen, h2, 80, 443, None, &[]);

    let first = project(&fleet, &pebble, "alpha", "alpha.test");
    let out = hoist(&first, &["setup"]);
    assert!(out.status.success(), "setup: {}", text(&out.stderr));
    // h1 orders first: the CA reaches h2, whose proxy knows h1 from the lease and relays
    // h1's answer; then h2 orders, its own token.
    let out = hoist(&first, &["deploy"]);
    assert!(
        out.status.success(),
        "deploy with the name on h2: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let got = certs(&first, "alpha.test");
    assert_eq!(
        got.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["h1", "h2"],
        "{got:?}"
    );
    assert!(
        got.iter().all(|(_, issuer)| issuer.contains("Pebble")),
        "{got:?}"
    );

    // The name now leads to h1: h2's order is answered by h1's proxy, relaying h2's.
    pebble.resolve_to(h1);
    let second = project(&fleet, &pebble, "beta", "beta.test");
    let out = hoist(&second, &["deploy"]);
    assert!(
        out.status.success(),
        "deploy with the name on h1: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let got = certs(&second, "beta.test");
    assert_eq!(
        got.iter().map(|(h, _)| h.as_str()).collect::<Vec<_>>(),
        ["h1", "h2"],
        "{got:?}"
    );
}
