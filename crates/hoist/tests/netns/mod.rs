//! A test fleet on this one machine: each host is a network namespace joined to the root
//! namespace by a veth pair, with a private mount namespace (tmpfs over /var/lib/hoist,
//! /run/hoist, /etc/hoist and /usr/local/bin) and a real OpenSSH server. The client side
//! gets a fresh key, an ssh_config and a known_hosts of its own, handed to the app file
//! through `[ssh] config`. Needs root and sshd; everything it starts dies on drop.
//!
//! Names and subnets come from slots claimed atomically (a file linked into
//! `/run/hoist-tests`, holding the owner's pid), so test binaries running at once never
//! clash; a slot whose owner died is cleaned up and reused.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hoist_testkit::{wait_until, ChildGuard};

const SSHD: &str = "/usr/sbin/sshd";
const CLAIMS: &str = "/run/hoist-tests";
/// Slots 1..=MAX_SLOT give subnets 10.213.N.0/30.
const MAX_SLOT: u32 = 250;
/// Directories each host gets a private tmpfs over.
const PRIVATE_DIRS: [&str; 5] = [
    "/var/lib/hoist",
    "/run/hoist",
    "/etc/hoist",
    "/usr/local/bin",
    // `hoist setup` installs man pages and the bash completion here.
    "/usr/local/share",
];

pub struct Fleet {
    pub hosts: Vec<NetHost>,
    /// ssh_config, the client key, known_hosts, authorized_keys, and each host's files.
    pub dir: PathBuf,
    _dir: tempfile::TempDir,
}

pub struct NetHost {
    /// `h1`, `h2`, … (the name in the app file).
    pub name: String,
    /// The network namespace, `hoist-t<slot>`.
    pub ns: String,
    /// The host's address (the root namespace's side is .1 of the same /30).
    pub addr: Ipv4Addr,
    pub slot: u32,
    /// The root namespace's end of the veth pair.
    pub veth: String,
    /// This host's sshd config, host key, pid file and log.
    pub dir: PathBuf,
    sshd: Option<ChildGuard>,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

fn must(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Removes what a slot's owner left behind: every process in its netns, the netns and
/// the veth (deleting either end removes the pair).
fn clean_slot(slot: u32) {
    let ns = format!("hoist-t{slot}");
    kill_netns_pids(&ns);
    ip(&["netns", "del", &ns]);
    ip(&["link", "del", &format!("ht{slot}")]);
}

fn kill_netns_pids(ns: &str) {
    // Twice: a supervisor may start a child between the listing and the kill.
    for _ in 0..3 {
        let out = ip(&["netns", "pids", ns]);
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = wait_until(Duration::from_secs(5), || {
            String::from_utf8_lossy(&ip(&["netns", "pids", ns]).stdout)
                .trim()
                .is_empty()
        });
    }
}

/// Claims a free slot: the claim file is created exclusively; a claim whose owner is
/// dead is cleaned up and taken over.
fn claim_slot() -> u32 {
    std::fs::create_dir_all(CLAIMS).unwrap();
    for slot in 1..=MAX_SLOT {
        let path = Path::new(CLAIMS).join(slot.to_string());
        if let Ok(owner) = std::fs::read_to_string(&path) {
            match owner.trim().parse::<i32>() {
                Ok(pid) if pid_alive(pid) => continue,
                _ => {
                    // Dead owner: only the first to remove the file cleans and claims.
                    let stale = path.with_extension(format!("stale{}", std::process::id()));
                    if std::fs::rename(&path, &stale).is_err() {
                        continue;
                    }
                    clean_slot(slot);
                    let _ = std::fs::remove_file(&stale);
                }
            }
        }
        // The claim appears with its owner already in it (a hard link fails when the
        // name exists), so nobody ever reads a half-written claim as a dead owner's.
        let tmp = Path::new(CLAIMS).join(format!(
            ".{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&tmp, format!("{}\n", std::process::id())).unwrap();
        let claimed = std::fs::hard_link(&tmp, &path).is_ok();
        let _ = std::fs::remove_file(&tmp);
        if claimed {
            // A netns with no claim (a crash between the two): remove it first.
            clean_slot(slot);
            return slot;
        }
    }
    panic!("no free test network slot under {CLAIMS}");
}

impl Fleet {
    /// `n` hosts, each running a real sshd that accepts the fleet's key for root.
    pub fn start(n: usize) -> Fleet {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the fleet tests need root (network and mount namespaces)"
        );
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (scripts/test.sh does it)"
        );
        for d in PRIVATE_DIRS.iter().chain(&["/run/sshd"]) {
            std::fs::create_dir_all(d).unwrap();
        }
        let tmp = hoist_testkit::tempdir();
        let dir = tmp.path().to_path_buf();
        must(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "hoist-test", "-f"])
                .arg(dir.join("id_ed25519")),
        );
        std::fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys")).unwrap();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host *\n  User root\n  IdentityFile {d}/id_ed25519\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile {d}/global_known_hosts\n  \
                 ForwardAgent yes\n",
                d = dir.display()
            ),
        )
        .unwrap();
        // The CLI keeps its ssh masters between commands (ControlPersist) in a private
        // directory; this fleet's go in one of its own, closed when the fleet ends, so a
        // later fleet reusing these addresses never meets a master of this one.
        // SAFETY (set_var): set before this test starts any thread that reads the
        // environment; each test runs in a process of its own under nextest.
        std::env::set_var("HOIST_SSH_CONTROL_DIR", dir.join("ctl"));
        let mut fleet = Fleet {
            hosts: Vec::new(),
            dir,
            _dir: tmp,
        };
        for i in 0..n {
            let host = fleet.start_host(i + 1);
            fleet.hosts.push(host);
        }
        fleet
    }

    fn start_host(&self, index: usize) -> NetHost {
        let slot = claim_slot();
        let ns = format!("hoist-t{slot}");
        let veth = format!("ht{slot}");
        let peer = format!("ht{slot}h");
        let root_addr = format!("10.213.{slot}.1/30");
        let addr = Ipv4Addr::new(10, 213, slot as u8, 2);
        let dir = self.dir.join(format!("h{index}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut host = NetHost {
            name: format!("h{index}"),
            ns: ns.clone(),
            addr,
            slot,
            veth: veth.clone(),
            dir: dir.clone(),
            sshd: None,
        };
        for args in [
            vec!["netns", "add", &ns],
            vec!["link", "add", &veth, "type", "veth", "peer", "name", &peer],
            vec!["link", "set", &peer, "netns", &ns],
            vec!["addr", "add", &root_addr, "dev", &veth],
            vec!["link", "set", &veth, "up"],
        ] {
            must(Command::new("ip").args(&args));
        }
        let host_addr = format!("{addr}/30");
        for args in [
            vec!["addr", "add", &host_addr, "dev", &peer],
            vec!["link", "set", &peer, "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            must(
                Command::new("ip")
                    .args(["netns", "exec", &ns, "ip"])
                    .args(&args),
            );
        }
        must(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(dir.join("host_key")),
        );
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 PermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 AuthorizedKeysFile {auth}\nStrictModes no\nUsePAM no\nLogLevel VERBOSE\n\
                 AllowAgentForwarding yes\nPrintMotd no\n",
                d = dir.display(),
                auth = self.dir.join("authorized_keys").display()
            ),
        )
        .unwrap();
        // /etc of its own (an overlay), so that users `hoist setup` creates on a host are
        // not created on the machine the tests run on.
        let mut mounts = vec![format!(
            "mkdir -p {d}/etc-upper {d}/etc-work; \
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/etc-upper,workdir={d}/etc-work /etc; \
             mkdir -p /etc/hoist",
            d = dir.display()
        )];
        mounts.extend(
            PRIVATE_DIRS
                .iter()
                .map(|d| format!("mount -t tmpfs -o mode=0755 tmpfs {d}")),
        );
        let log = std::fs::File::create(dir.join("sshd.log")).unwrap();
        let script = format!(
            "set -e; {}; exec {SSHD} -D -e -f {}",
            mounts.join("; "),
            dir.join("sshd_config").display()
        );
        let guard = ChildGuard::spawn(
            Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &ns,
                    "unshare",
                    "-m",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                ])
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .unwrap();
        host.sshd = Some(guard);
        let target = SocketAddr::from((addr, 22));
        wait_until(Duration::from_secs(20), || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
        })
        .unwrap_or_else(|e| {
            panic!(
                "sshd of {} does not listen: {e}\n{}",
                host.name,
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            )
        });
        host
    }

    /// The `[ssh]` section of an app file for this fleet.
    pub fn ssh_toml(&self) -> String {
        format!(
            "[ssh]\nconfig = \"{}\"\n",
            self.dir.join("ssh_config").display()
        )
    }

    /// `[[hosts]]` entries for every host, each with `roles`.
    pub fn hosts_toml(&self, roles: &[&str]) -> String {
        let roles: Vec<String> = roles.iter().map(|r| format!("\"{r}\"")).collect();
        self.hosts
            .iter()
            .map(|h| {
                format!(
                    "[[hosts]]\nname = \"{}\"\nssh = \"root@{}\"\nroles = [{}]\n",
                    h.name,
                    h.addr,
                    roles.join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The pid of host `i`'s sshd listener (whose namespaces are the host's).
    pub fn sshd_pid(&self, i: usize) -> i32 {
        let pid_file = self.hosts[i].dir.join("sshd.pid");
        let mut pid = 0;
        wait_until(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        })
        .expect("sshd writes its pid file");
        pid
    }

    /// A shell command inside host `i` (its network and mount namespaces).
    pub fn exec(&self, i: usize, cmd: &str) -> Output {
        run(Command::new("nsenter").args([
            "-t",
            &self.sshd_pid(i).to_string(),
            "-n",
            "-m",
            "sh",
            "-c",
            cmd,
        ]))
    }

    pub fn link_down(&self, i: usize) {
        must(Command::new("ip").args(["link", "set", &self.hosts[i].veth, "down"]));
    }

    pub fn link_up(&self, i: usize) {
        must(Command::new("ip").args(["link", "set", &self.hosts[i].veth, "up"]));
    }

    /// A new host key for host `i`: sshd reloads (SIGHUP re-executes it in place) and every
    /// open session, the clients' multiplexed masters included, is cut.
    pub fn regenerate_host_key(&self, i: usize) {
        let h = &self.hosts[i];
        let key = h.dir.join("host_key");
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(key.with_extension("pub"));
        must(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let listener = self.sshd_pid(i);
        for pid in self.netns_pids(i) {
            if pid != listener && comm(pid).starts_with("sshd") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(listener),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        // Reloaded when the new key is what it offers.
        let want = self.host_key_fingerprint(i);
        let addr = h.addr.to_string();
        wait_until(Duration::from_secs(20), || {
            let out = run(Command::new("ssh-keyscan").args(["-t", "ed25519", "-T", "2", &addr]));
            let keyscan = String::from_utf8_lossy(&out.stdout).into_owned();
            let path = self.dir.join("keyscan");
            std::fs::write(&path, keyscan).unwrap();
            let fp = run(Command::new("ssh-keygen").arg("-lf").arg(&path));
            String::from_utf8_lossy(&fp.stdout).contains(&want)
        })
        .expect("sshd serves the new host key");
    }

    /// `SHA256:…` of host `i`'s current key.
    pub fn host_key_fingerprint(&self, i: usize) -> String {
        let out = must(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(self.hosts[i].dir.join("host_key.pub")),
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    pub fn netns_pids(&self, i: usize) -> Vec<i32> {
        String::from_utf8_lossy(&ip(&["netns", "pids", &self.hosts[i].ns]).stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    pub fn sshd_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.hosts[i].dir.join("sshd.log")).unwrap_or_default()
    }

    /// `GET path` on host `i`'s address from the root namespace: status and body.
    pub fn http_get(&self, i: usize, port: u16, path: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::from((self.hosts[i].addr, port));
        hoist_testkit::http_get(addr, "demo.test", path)
            .ok()
            .map(|r| (r.status, r.body))
    }

    /// Runs the real CLI with the fleet's app file.
    pub fn hoist(&self, args: &[&str]) -> Output {
        run(Command::new(hoist_testkit::hoist_bin()).args(args))
    }
}

/// A process's command name (`/proc/PID/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

impl Drop for Fleet {
    fn drop(&mut self) {
        hoist_fleet::ssh::close_masters(&self.dir.join("ctl"));
        for h in &mut self.hosts {
            kill_netns_pids(&h.ns);
            drop(h.sshd.take());
            clean_slot(h.slot);
            let _ = std::fs::remove_file(Path::new(CLAIMS).join(h.slot.to_string()));
        }
    }
}
