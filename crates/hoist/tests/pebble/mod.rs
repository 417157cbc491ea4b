//! A real Pebble ACME server and its DNS (pebble-challtestsrv) for the tests, both
//! killed on drop. Pebble's own HTTPS uses a certificate of a test CA (`ca_roots`).
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use hoist_testkit::certs::TestCa;
use hoist_testkit::{free_port, wait_until, ChildGuard};

fn write_leaf(dir: &Path, name: &str, leaf: &hoist_testkit::certs::Leaf) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    (cert, key)
}

/// What a server started by [`start_owning`] gives back: its guard, its addresses, the
/// sockets it must own (`("tcp"|"udp", port)`), and a check that it answers as itself.
pub type Spawned<P> = (
    ChildGuard,
    P,
    Vec<(&'static str, u16)>,
    Box<dyn Fn() -> bool>,
);

/// Starts a server by `spawn` until one is ready (it owns its ports and answers as
/// itself), at most 5 times: one that exits, whose port another process holds, or that
/// is not ready in 20 s is killed and started again on new ports.
pub fn start_owning<P>(
    name: &str,
    dir: &Path,
    mut spawn: impl FnMut() -> Spawned<P>,
) -> (ChildGuard, P) {
    let mut why: Vec<String> = Vec::new();
    for attempt in 1..=5 {
        let (mut guard, ports, sockets, ready) = spawn();
        let pid = guard.pid();
        let mut failed = None;
        let ok = wait_until(Duration::from_secs(20), || {
            if let Ok(Some(status)) = guard.child.try_wait() {
                failed = Some(format!("exited: {status}"));
                return true;
            }
            let owners: Vec<Owner> = sockets
                .iter()
                .map(|(p, port)| owner(pid, p, *port))
                .collect();
            if let Some(i) = owners.iter().position(|o| *o == Owner::Other) {
                failed = Some(format!(
                    "found its {} port {} taken",
                    sockets[i].0, sockets[i].1
                ));
                return true;
            }
            owners.iter().all(|o| *o == Owner::Itself) && ready()
        })
        .is_ok();
        if ok && failed.is_none() {
            return (guard, ports);
        }
        why.push(format!(
            "attempt {attempt}: {}",
            failed.unwrap_or_else(|| "did not answer".into())
        ));
    }
    panic!(
        "{name} never started on free ports ({}; logs in {})",
        why.join(", "),
        dir.display()
    );
}

/// Who holds a local port (listening, for TCP).
#[derive(Debug, PartialEq)]
pub enum Owner {
    Itself,
    Other,
    Nobody,
}

/// Who holds local `port` (`proto` "tcp": listening; "udp": bound) in the network
/// namespace of process `pid`: that process (one of its descriptors is the socket),
/// another one, or nobody.
pub fn owner(pid: u32, proto: &str, port: u16) -> Owner {
    let mut inodes = std::collections::HashSet::new();
    for table in [proto.to_string(), format!("{proto}6")] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let local_port = f[1]
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            // 0A: TCP_LISTEN.
            if local_port == Some(port) && (proto != "tcp" || f[3] == "0A") {
                inodes.insert(format!("socket:[{}]", f[9]));
            }
        }
    }
    if inodes.is_empty() {
        return Owner::Nobody;
    }
    let mine = std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| inodes.contains(&l.to_string_lossy().into_owned()))
        })
    });
    if mine {
        Owner::Itself
    } else {
        Owner::Other
    }
}

/// curl's output for `args` when it succeeds (HTTP status under 400).
fn curl_output(args: &[String]) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "5"])
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn curl_ok(args: &[String]) -> bool {
    curl_output(args).is_some()
}

/// A Pebble ACME server (and the DNS server that points every name at 127.0.0.1), both
/// killed on drop.
pub struct Pebble {
    _dns: ChildGuard,
    _pebble: ChildGuard,
    directory: String,
    ca_roots: PathBuf,
    management: SocketAddr,
    dns_management: SocketAddr,
}

impl Pebble {
    /// `http_port`/`tls_port`: where Pebble's validator connects (the proxy's listeners).
    pub fn start(dir: &Path, http_port: u16, tls_port: u16, validity_secs: Option<u64>) -> Pebble {
        Pebble::start_with(dir, http_port, tls_port, validity_secs, &[])
    }

    pub fn start_with(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
        env: &[(&str, &str)],
    ) -> Pebble {
        let at = Ipv4Addr::LOCALHOST;
        Pebble::start_at(dir, at, at, http_port, tls_port, validity_secs, env)
    }

    /// Pebble listening on `listen` (its directory is `https://LISTEN:PORT/dir`), its
    /// DNS answering every name with `resolve_to` until [`Pebble::resolve_to`] says
    /// otherwise.
    pub fn start_at(
        dir: &Path,
        listen: Ipv4Addr,
        resolve_to: Ipv4Addr,
        http_port: u16,
        tls_port: u16,
        validity_secs: Option<u64>,
        env: &[(&str, &str)],
    ) -> Pebble {
        let dir = dir.join(format!("pebble-{}", free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = TestCa::new("pebble web CA");
        let listen_ip = listen.to_string();
        let leaf = ca.issue(&["localhost", "127.0.0.1", &listen_ip]);
        let (cert, key) = write_leaf(&dir, "pebble", &leaf);
        let ca_roots = dir.join("roots.pem");
        std::fs::write(&ca_roots, &ca.cert_pem).unwrap();
        let resolve_to = resolve_to.to_string();
        // Ports are picked free, but another process may take one before the server
        // binds it: a server that exits or never holds its ports is started again on
        // new ones, and it is trusted only once it owns them and answers as itself.
        let (dns_guard, (dns, dns_management)) = start_owning("pebble-challtestsrv", &dir, || {
            let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let dns_management = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let guard = ChildGuard::spawn(
                Command::new("pebble-challtestsrv")
                    .args([
                        "-defaultIPv4",
                        &resolve_to,
                        "-defaultIPv6",
                        "",
                        "-http01",
                        "",
                        "-https01",
                        "",
                        "-tlsalpn01",
                        "",
                    ])
                    .arg("-dns01")
                    .arg(dns.to_string())
                    .arg("-management")
                    .arg(dns_management.to_string())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(dir.join("challtestsrv.log")).unwrap()),
            )
            .expect("pebble-challtestsrv (apt-get install pebble)");
            let ready = {
                let resolve_to = resolve_to.clone();
                move || {
                    curl_ok(&[
                        "-d".into(),
                        format!("{{\"ip\":\"{resolve_to}\"}}"),
                        format!("http://{dns_management}/set-default-ipv4"),
                    ])
                }
            };
            let sockets = vec![("udp", dns.port()), ("tcp", dns_management.port())];
            (
                guard,
                (dns, dns_management),
                sockets,
                Box::new(ready) as Box<dyn Fn() -> bool>,
            )
        });
        let (pebble, (listen, management)) = start_owning("pebble", &dir, || {
            let listen = SocketAddr::from((listen, free_port()));
            let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut config = serde_json::json!({
                "pebble": {
                    "listenAddress": listen.to_string(),
                    "managementListenAddress": management.to_string(),
                    "certificate": cert,
                    "privateKey": key,
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": false
                }
            });
            if let Some(v) = validity_secs {
                config["pebble"]["certificateValidityPeriod"] = v.into();
            }
            let config_file = dir.join("pebble.json");
            std::fs::write(&config_file, config.to_string()).unwrap();
            let guard = ChildGuard::spawn(
                Command::new("pebble")
                    .arg("-config")
                    .arg(&config_file)
                    .arg("-dnsserver")
                    .arg(dns.to_string())
                    // No artificial validation delays; nonces are rejected at Pebble's
                    // default rate (PEBBLE_WFE_NONCEREJECT unset), which the client survives.
                    .env("PEBBLE_VA_NOSLEEP", "1")
                    .envs(env.iter().copied())
                    .stdout(std::fs::File::create(dir.join("pebble.log")).unwrap())
                    .stderr(std::fs::File::create(dir.join("pebble.err")).unwrap()),
            )
            .expect("pebble");
            let ready = {
                let roots = ca_roots.clone();
                move || {
                    // Pebble's own directory, over HTTPS with the certificate made for it.
                    curl_output(&[
                        "--cacert".into(),
                        roots.display().to_string(),
                        format!("https://{listen}/dir"),
                    ])
                    .is_some_and(|dir| dir.contains("newNonce"))
                }
            };
            let sockets = vec![("tcp", listen.port()), ("tcp", management.port())];
            (
                guard,
                (listen, management),
                sockets,
                Box::new(ready) as Box<dyn Fn() -> bool>,
            )
        });
        Pebble {
            _dns: dns_guard,
            _pebble: pebble,
            directory: format!("https://{listen}/dir"),
            dns_management,
            ca_roots,
            management,
        }
    }

    /// From now on, Pebble's DNS answers every name with `ip` (its validator connects there).
    pub fn resolve_to(&self, ip: Ipv4Addr) {
        wait_until(Duration::from_secs(20), || {
            Command::new("curl")
                .args(["-sSf", "--max-time", "5", "-d"])
                .arg(format!("{{\"ip\":\"{ip}\"}}"))
                .arg(format!("http://{}/set-default-ipv4", self.dns_management))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("pebble-challtestsrv takes a new default address");
    }

    /// Points `domain` at `ip` in the DNS Pebble's validator asks, or (`None`) back at
    /// the default, 127.0.0.1.
    pub fn resolve(&self, domain: &str, ip: Option<&str>) {
        let (path, body) = match ip {
            Some(ip) => (
                "/add-a",
                serde_json::json!({"host": format!("{domain}."), "addresses": [ip]}),
            ),
            None => (
                "/clear-a",
                serde_json::json!({"host": format!("{domain}.")}),
            ),
        };
        let status = Command::new("curl")
            .args(["-sSf", "--max-time", "20", "-d"])
            .arg(body.to_string())
            .arg(format!("http://{}{path}", self.dns_management))
            .status()
            .unwrap();
        assert!(status.success(), "challtestsrv {path}");
    }

    /// The `[acme]` table for this Pebble.
    pub fn acme_table(&self) -> String {
        format!(
            "[acme]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\nca_roots = \"{}\"\n",
            self.directory,
            self.ca_roots.display()
        )
    }

    /// The root that signs the certificates Pebble issues (new every run).
    pub fn issuing_root(&self, dir: &Path) -> PathBuf {
        let out = dir.join(format!("pebble-root-{}.pem", self.management.port()));
        let status = Command::new("curl")
            .args(["-sSf", "--max-time", "20", "--cacert"])
            .arg(&self.ca_roots)
            .arg("-o")
            .arg(&out)
            .arg(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management.port()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        out
    }
}
