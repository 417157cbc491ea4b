//! The control plane of the proxy process: the route table as the agent set it, the
//! registry of upstreams (so a member's counts and drain state survive swaps), the Unix
//! socket that speaks `hoist_protocol::proxy` (one JSON line in, one out), and a small
//! blocking client for the CLI and tests.
//!
//! Every change builds a whole new table and publishes it before any member is marked
//! draining; the request path relies on that order. It never touches client sockets.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hoist_protocol::proxy::{self as wire, Reply, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::error::ProxyError;
use crate::stats::Counters;
use crate::table::{RouteEntry, Table, Upstream};
use crate::Shared;

/// The longest control line accepted (a route table with many members is still small).
const MAX_LINE: usize = 4 << 20;

#[derive(Debug, Default)]
struct Routes {
    routes: BTreeMap<String, wire::Route>,
    upstreams: HashMap<SocketAddr, Arc<Upstream>>,
    /// Counters by (route, release), each with the last table that served it; see
    /// [`forget_retired`].
    counters: HashMap<(String, String), KeptCounters>,
    /// Bumped by every publish.
    generation: u64,
    /// Guard state kept across swaps while the route's guard config is unchanged.
    limiters: HashMap<String, Arc<crate::guards::RateLimiter>>,
    auths: HashMap<String, Arc<crate::guards::Auth>>,
}

/// The members of a route's upstream list: the kept `Upstream` of each address (so
/// its connections, ejection state and drain survive a new table), each marked live.
fn kept_members(
    list: &[wire::Upstream],
    upstreams: &mut HashMap<SocketAddr, Arc<Upstream>>,
    live: &mut HashSet<SocketAddr>,
) -> Vec<Arc<Upstream>> {
    list.iter()
        .map(|u| {
            live.insert(u.addr);
            upstreams
                .entry(u.addr)
                .or_insert_with(|| Arc::new(Upstream::new(u.addr, &u.instance)))
                .clone()
        })
        .collect()
}

/// A release's counters and the generation of the last table that served it.
#[derive(Debug)]
struct KeptCounters {
    counters: Arc<Counters>,
    live_at: u64,
}

/// The kept counters of a route's release (they outlive table swaps), marked live in
/// table `generation`.
fn counters_of(
    counters: &mut HashMap<(String, String), KeptCounters>,
    route: &str,
    release: &str,
    generation: u64,
) -> Arc<Counters> {
    let kept = counters
        .entry((route.to_string(), release.to_string()))
        .or_insert_with(|| KeptCounters {
            counters: Arc::new(Counters::new(route, release)),
            live_at: generation,
        });
    kept.live_at = generation;
    kept.counters.clone()
}

/// Forgets the counters of releases the table of `generation` does not serve, past the
/// [`crate::RETIRED_COUNTERS_KEPT`] most recently retired of each route (a reader right
/// after a switch, or a rollback to the previous release, still finds them), and all
/// those of routes that are gone. Each release's counters take about 36 KB: kept for
/// every release ever seen, a host deploying all day grew by megabytes an hour (issue
/// #14). Requests still in flight on a forgotten release finish on their own `Arc`.
fn forget_retired(
    counters: &mut HashMap<(String, String), KeptCounters>,
    specs: &BTreeMap<String, wire::Route>,
    generation: u64,
) {
    let mut retired: Vec<(&String, u64, &String)> = counters
        .iter()
        .filter(|(_, k)| k.live_at != generation)
        .map(|((route, release), k)| (route, k.live_at, release))
        .collect();
    if retired.is_empty() {
        return;
    }
    // Per route, the most recently live first.
    retired.sort_by(|a, b| a.0.cmp(b.0).then(b.1.cmp(&a.1)));
    let mut gone = Vec::new();
    let mut kept_of_route = 0;
    for (i, (route, _, release)) in retired.iter().enumerate() {
        if i == 0 || retired[i - 1].0 != *route {
            kept_of_route = 0;
        }
        if specs.contains_key(*route) && kept_of_route < crate::RETIRED_COUNTERS_KEPT {
            kept_of_route += 1;
        } else {
            gone.push(((*route).clone(), (*release).clone()));
        }
    }
    for key in gone {
        counters.remove(&key);
    }
}

/// The proxy's control state, shared by the control connections.
#[derive(Debug)]
pub(crate) struct Control {
    shared: Arc<Shared>,
    routes: Mutex<Routes>,
    state_file: Option<PathBuf>,
    pub(crate) upgrade: Option<crate::upgrade::Handoff>,
    /// The listening sockets (owned by `run` for its lifetime), passed to whoever asks
    /// for `Listeners` on this socket (only this user or root can connect).
    pub(crate) listen_fds: Vec<std::os::fd::RawFd>,
    /// The HTTPS listener (owned by `run` too), passed after the others.
    pub(crate) tls_fd: Option<std::os::fd::RawFd>,
    /// Set when this process should stop (after handing over to a successor).
    pub(crate) stop: watch::Sender<bool>,
    /// False while a successor starts: new control connections are then left to it, so
    /// no change lands on the process that is about to go.
    accepting: watch::Sender<bool>,
}

impl Control {
    pub fn new(
        shared: Arc<Shared>,
        state_file: Option<PathBuf>,
        upgrade: Option<crate::upgrade::Handoff>,
        listen_fds: Vec<std::os::fd::RawFd>,
        tls_fd: Option<std::os::fd::RawFd>,
        initial: Vec<wire::Route>,
    ) -> Result<Control, ProxyError> {
        let control = Control {
            shared,
            routes: Mutex::new(Routes::default()),
            state_file,
            upgrade,
            listen_fds,
            tls_fd,
            stop: watch::Sender::new(false),
            accepting: watch::Sender::new(true),
        };
        {
            let mut routes = control.lock();
            for route in initial {
                validate(&route)?;
                routes.routes.insert(route.id.clone(), route);
            }
            control.publish(&mut routes);
        }
        Ok(control)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn routes(&self) -> Vec<wire::Route> {
        self.lock().routes.values().cloned().collect()
    }

    /// Builds and publishes the table from `routes`, then marks members that no route
    /// uses any more as draining (and the ones that came back as live).
    fn publish(&self, routes: &mut Routes) {
        let Routes {
            routes: specs,
            upstreams,
            counters,
            generation,
            limiters,
            auths,
        } = routes;
        *generation += 1;
        let generation = *generation;
        limiters.retain(|id, l| {
            specs
                .get(id)
                .and_then(|r| r.guards.rate_limit.as_ref())
                .is_some_and(|c| *c == l.config)
        });
        auths.retain(|id, a| {
            specs
                .get(id)
                .and_then(|r| r.guards.basic_auth.as_ref())
                .is_some_and(|c| *c == a.config)
        });
        let mut entries = Vec::with_capacity(specs.len());
        let mut domains = Vec::with_capacity(specs.len());
        let mut live = HashSet::new();
        for route in specs.values() {
            let members = kept_members(&route.upstreams, upstreams, &mut live);
            let own = counters_of(counters, &route.id, &route.release, generation);
            let rate = route.guards.rate_limit.as_ref().map(|c| {
                limiters
                    .entry(route.id.clone())
                    .or_insert_with(|| Arc::new(crate::guards::RateLimiter::new(c)))
                    .clone()
            });
            let auth = route.guards.basic_auth.as_ref().map(|c| {
                auths
                    .entry(route.id.clone())
                    .or_insert_with(|| Arc::new(crate::guards::Auth::new(c)))
                    .clone()
            });
            let guards =
                crate::guards::RouteGuards::compile(&route.guards, rate.clone(), auth.clone());
            let mut entry = RouteEntry::new(route, members, own, guards);
            if let Some(c) = &route.canary {
                // The canary side is a whole entry of its own (same route, guards and
                // prefix; its release's members and counters).
                let members = kept_members(&c.upstreams, upstreams, &mut live);
                let own = counters_of(counters, &route.id, &c.release, generation);
                let guards = crate::guards::RouteGuards::compile(&route.guards, rate, auth);
                let side = RouteEntry::new(route, members, own, guards);
                entry.canary = Some(Box::new(crate::canary::CanarySide::new(
                    c.weight_bp,
                    &c.release,
                    Arc::new(side),
                )));
            }
            entries.push(Arc::new(entry));
            domains.push(route.domains.as_slice());
        }
        forget_retired(counters, specs, generation);
        // Members in the new table are live before it is published (one coming back
        // from a drain must not be refused by requests that already see it), and members
        // that left are marked draining only after (requests that still hold the old
        // table then find the new one when they look again).
        for addr in &live {
            if let Some(up) = upstreams.get(addr) {
                up.draining.store(false, Ordering::SeqCst);
            }
        }
        self.shared
            .tls
            .set_routes(&specs.values().collect::<Vec<_>>());
        self.shared
            .published
            .publish(Table::build(&entries, &domains));
        for (addr, up) in upstreams.iter() {
            if !live.contains(addr) && !up.draining.swap(true, Ordering::SeqCst) {
                up.drain_epoch.fetch_add(1, Ordering::SeqCst);
            }
        }
        // Forget members that drained and left every set; a stale request holding one
        // still sees it as draining and picks again.
        upstreams.retain(|addr, up| live.contains(addr) || !up.is_idle());
    }

    /// Starts the clock of `drain_timeout` for members that leave: their tunnels are
    /// closed then, if they are still draining.
    fn schedule_drain(&self, leaving: Vec<(Arc<Upstream>, u64)>) {
        for (up, timeout_ms) in leaving {
            if !up.draining.load(Ordering::SeqCst) {
                continue;
            }
            tracing::info!(addr = %up.addr, instance = %up.instance, timeout_ms, "upstream draining");
            // Only this drain's timer may close: a member that came back and left again
            // since then has a newer timer of its own.
            let epoch = up.drain_epoch.load(Ordering::SeqCst);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
                if up.draining.load(Ordering::SeqCst)
                    && up.drain_epoch.load(Ordering::SeqCst) == epoch
                    && up.tunnels.load(Ordering::SeqCst) > 0
                {
                    up.close_tunnels.send_modify(|n| *n += 1);
                }
            });
        }
    }

    fn set_route(&self, route: wire::Route) -> Result<(), ProxyError> {
        validate(&route)?;
        let leaving = {
            let mut routes = self.lock();
            // Members leaving get the drain timeout of the set that replaces them.
            let drain_ms = route.drain_timeout_ms;
            let id = route.id.clone();
            let old = routes.routes.insert(id.clone(), route);
            // Saved before it is published: a crash right after publishing must not
            // bring back a table older than what clients were already served by.
            if let Err(e) = self.persist(&routes) {
                match old {
                    Some(old) => routes.routes.insert(id, old),
                    None => routes.routes.remove(&id),
                };
                return Err(e);
            }
            let mut leaving = members_of(&routes, old.as_ref());
            leaving.iter_mut().for_each(|(_, ms)| *ms = drain_ms);
            self.publish(&mut routes);
            // The agent checked these members' health just now: whatever the proxy's own
            // ejection thought of an address (an instance restarted on it), it is tried.
            if let Some(route) = routes.routes.get(&id) {
                for u in members(route) {
                    if let Some(up) = routes.upstreams.get(&u.addr) {
                        up.answered();
                    }
                }
            }
            leaving
        };
        self.schedule_drain(leaving);
        Ok(())
    }

    fn remove_route(&self, id: &str) -> Result<(), ProxyError> {
        let leaving = {
            let mut routes = self.lock();
            let Some(old) = routes.routes.remove(id) else {
                return Err(ProxyError::NoSuchRoute(id.to_string()));
            };
            if let Err(e) = self.persist(&routes) {
                routes.routes.insert(id.to_string(), old);
                return Err(e);
            }
            let leaving = members_of(&routes, Some(&old));
            self.publish(&mut routes);
            leaving
        };
        self.schedule_drain(leaving);
        Ok(())
    }

    fn persist(&self, routes: &Routes) -> Result<(), ProxyError> {
        match &self.state_file {
            Some(path) => {
                crate::state::save(path, &routes.routes.values().cloned().collect::<Vec<_>>())
            }
            None => Ok(()),
        }
    }

    fn stats(&self) -> Vec<wire::RouteStats> {
        let routes = self.lock();
        let mut stats: Vec<_> = routes
            .counters
            .values()
            .map(|k| k.counters.snapshot())
            .collect();
        stats.sort_by(|a, b| (&a.route, &a.release).cmp(&(&b.route, &b.release)));
        stats
    }

    fn draining(&self) -> Vec<wire::DrainingUpstream> {
        let routes = self.lock();
        let mut out: Vec<_> = routes
            .upstreams
            .values()
            .filter(|u| u.draining.load(Ordering::SeqCst))
            .map(|u| wire::DrainingUpstream {
                addr: u.addr,
                instance: u.instance.clone(),
                in_flight: u.in_flight() as u64,
                tunnels: u.tunnels.load(Ordering::SeqCst) as u64,
            })
            .collect();
        out.sort_by_key(|u| u.addr);
        out
    }

    async fn wait_drained(&self, addrs: &[SocketAddr], timeout: Duration) -> Reply {
        let members: Vec<Arc<Upstream>> = {
            let routes = self.lock();
            addrs
                .iter()
                .filter_map(|a| routes.upstreams.get(a).cloned())
                .collect()
        };
        let idle = || members.iter().all(|u| u.is_idle());
        let deadline = tokio::time::Instant::now() + timeout;
        while !idle() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if idle() {
            return Reply::Drained {
                drained: true,
                closed_tunnels: 0,
                in_flight: 0,
            };
        }
        let tunnels: u64 = members
            .iter()
            .map(|u| u.tunnels.load(Ordering::SeqCst) as u64)
            .sum();
        for u in &members {
            u.close_tunnels.send_modify(|n| *n += 1);
        }
        let grace = tokio::time::Instant::now() + Duration::from_secs(3);
        while members.iter().any(|u| u.tunnels.load(Ordering::SeqCst) > 0)
            && tokio::time::Instant::now() < grace
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let in_flight = members.iter().map(|u| u.in_flight() as u64).sum();
        Reply::Drained {
            drained: idle(),
            closed_tunnels: tunnels,
            in_flight,
        }
    }

    async fn answer(&self, request: Request) -> Result<Reply, ProxyError> {
        Ok(match request {
            Request::Tls { request } => self.shared.tls.answer(request)?,
            Request::Ping => Reply::Pong {
                pid: std::process::id(),
                version: wire::VERSION,
            },
            Request::SetRoute { route } => {
                self.set_route(route)?;
                Reply::Done
            }
            Request::RemoveRoute { id } => {
                self.remove_route(&id)?;
                Reply::Done
            }
            Request::Routes => Reply::Routes {
                routes: self.routes(),
            },
            Request::Stats => Reply::Stats {
                routes: self.stats(),
            },
            Request::Draining => Reply::Draining {
                upstreams: self.draining(),
            },
            Request::Connections => Reply::Connections {
                open: self.shared.open_connections.load(Ordering::Relaxed) as u64,
                over_capacity: self.shared.over_capacity.load(Ordering::Relaxed),
                max: self.shared.max_connections() as u64,
            },
            Request::WaitDrained { addrs, timeout_ms } => {
                self.wait_drained(&addrs, Duration::from_millis(timeout_ms))
                    .await
            }
            Request::SetLimits { max_connections } => {
                let configured = usize::try_from(max_connections).unwrap_or(usize::MAX);
                if configured != self.shared.configured_max_connections() {
                    self.shared.set_max_connections(configured);
                    tracing::info!(
                        max_connections = self.shared.max_connections(),
                        "connection cap changed"
                    );
                }
                Reply::Done
            }
            Request::Listeners => Reply::Listeners {
                count: (self.listen_fds.len() + usize::from(self.tls_fd.is_some())) as u32,
                https: self.tls_fd.is_some(),
            },
            Request::Upgrade { exe } => {
                let Some(handoff) = &self.upgrade else {
                    return Err(ProxyError::Upgrade(
                        "this proxy was not started as a process that can upgrade".into(),
                    ));
                };
                self.accepting.send_replace(false);
                // The successor starts with this process's arguments, but with the cap
                // in force now (an agent may have changed it since this one started).
                let handoff = crate::upgrade::Handoff {
                    args: with_max_connections(
                        &handoff.args,
                        self.shared.configured_max_connections(),
                    ),
                    listen_fds: handoff.listen_fds.clone(),
                    tls_fd: handoff.tls_fd,
                    control_fd: handoff.control_fd,
                };
                let spawned = handoff.spawn_successor(exe, &self.routes()).await;
                if spawned.is_err() {
                    self.accepting.send_replace(true);
                }
                Reply::Upgraded { pid: spawned? }
            }
        })
    }
}

/// `args` (a proxy's command line) with its `--max-connections` replaced by `max`
/// (left out when 0: the default).
fn with_max_connections(args: &[std::ffi::OsString], max: usize) -> Vec<std::ffi::OsString> {
    const FLAG: &str = "--max-connections";
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut skip_value = false;
    for a in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some(FLAG) => skip_value = true,
            Some(s) if s.starts_with("--max-connections=") => {}
            _ => out.push(a.clone()),
        }
    }
    if max > 0 {
        out.push(FLAG.into());
        out.push(max.to_string().into());
    }
    out
}

/// Members of `old` that no route lists now, with the drain timeout of `old`.
fn members_of(routes: &Routes, old: Option<&wire::Route>) -> Vec<(Arc<Upstream>, u64)> {
    let Some(old) = old else { return Vec::new() };
    let live: HashSet<SocketAddr> = routes
        .routes
        .values()
        .flat_map(|r| members(r).map(|u| u.addr))
        .collect();
    members(old)
        .filter(|u| !live.contains(&u.addr))
        .filter_map(|u| {
            routes
                .upstreams
                .get(&u.addr)
                .map(|up| (up.clone(), old.drain_timeout_ms))
        })
        .collect()
}

/// Every member of a route: its release's and its canary's.
fn members(route: &wire::Route) -> impl Iterator<Item = &wire::Upstream> {
    route
        .upstreams
        .iter()
        .chain(route.canary.iter().flat_map(|c| c.upstreams.iter()))
}

fn validate(route: &wire::Route) -> Result<(), ProxyError> {
    let bad = |message: &str| {
        Err(ProxyError::InvalidRoute {
            id: route.id.clone(),
            message: message.to_string(),
        })
    };
    if route.id.is_empty() {
        return bad("the id is empty");
    }
    if route.domains.is_empty()
        || route
            .domains
            .iter()
            .any(|d| d.is_empty() || d.contains(['/', ' ']))
    {
        return bad("domains must be host names or `*`");
    }
    if !route.path_prefix.starts_with('/') {
        return bad("the path prefix must start with `/`");
    }
    if let Some(c) = route
        .guards
        .trusted_proxies
        .iter()
        .find(|c| crate::guards::Cidr::parse(c).is_none())
    {
        return Err(ProxyError::InvalidRoute {
            id: route.id.clone(),
            message: format!("`{c}` is not an address or CIDR block"),
        });
    }
    if let Some(r) = &route.guards.rate_limit {
        if r.requests == 0 || r.per_ms == 0 {
            return bad("a rate limit needs requests and a period above zero");
        }
    }
    if let Some(c) = &route.canary {
        if c.release.is_empty() || c.release == route.release {
            return bad("a canary needs a release other than the route's");
        }
        if c.weight_bp > 10_000 {
            return bad("a canary's weight is at most 10000 basis points");
        }
    }
    let mut seen = HashSet::new();
    if members(route).any(|u| !seen.insert(u.addr)) {
        return bad("an upstream address is listed twice");
    }
    Ok(())
}

/// Serves the control socket until `stop` turns true.
pub(crate) async fn serve(
    control: Arc<Control>,
    listener: tokio::net::UnixListener,
    mut stop: watch::Receiver<bool>,
) {
    let mut accepting = control.accepting.subscribe();
    loop {
        let open = *accepting.borrow_and_update();
        tokio::select! {
            _ = crate::until_true(&mut stop) => return,
            _ = accepting.changed() => continue,
            accepted = listener.accept(), if open => match accepted {
                Ok((stream, _)) => {
                    // The socket is 0600, but its mode could be changed: each peer's uid
                    // is checked too (this user or root only), as on the agent's socket.
                    let me = nix::unistd::getuid().as_raw();
                    match stream.peer_cred().map(|c| c.uid()) {
                        Ok(uid) if uid == me || uid == 0 => {}
                        other => {
                            tracing::warn!(peer_uid = ?other.ok(), "refused a control connection from another user");
                            continue;
                        }
                    }
                    let control = control.clone();
                    tokio::spawn(async move {
                        if let Err(error) = connection(control, stream).await {
                            tracing::debug!(%error, "control connection ended");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn connection(control: Arc<Control>, stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut rd).take(MAX_LINE as u64).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let mut upgraded = false;
        let mut pass_fds = false;
        let response = match serde_json::from_str::<wire::RequestLine>(&line) {
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
            Ok(req) if req.version != wire::VERSION => Response::Error {
                message: format!(
                    "protocol version `{}` is not supported (this proxy speaks `{}`)",
                    req.version,
                    wire::VERSION
                ),
            },
            Ok(req) => match control.answer(req.request).await {
                Ok(reply) => {
                    upgraded = matches!(reply, Reply::Upgraded { .. });
                    pass_fds = matches!(reply, Reply::Listeners { .. });
                    Response::Ok(reply)
                }
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
        };
        let mut out = serde_json::to_vec(&wire::ResponseLine {
            version: wire::VERSION,
            response,
        })
        .map_err(std::io::Error::other)?;
        out.push(b'\n');
        if pass_fds {
            // The answer travels with the listening sockets attached (SCM_RIGHTS).
            let mut fds = control.listen_fds.clone();
            fds.extend(control.tls_fd);
            wr.as_ref().writable().await?;
            let stream: &tokio::net::UnixStream = wr.as_ref();
            send_with_fds(stream, &out, &fds)?;
        } else {
            wr.write_all(&out).await?;
        }
        if upgraded {
            // The successor serves now: this process stops accepting and drains.
            control.stop.send_replace(true);
        }
    }
}

use tokio::io::AsyncReadExt as _;

/// Writes `data` with `fds` attached in one `sendmsg` (the line is small, so a socket that
/// was just reported writable takes it whole).
fn send_with_fds(
    stream: &tokio::net::UnixStream,
    data: &[u8],
    fds: &[std::os::fd::RawFd],
) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let iov = [std::io::IoSlice::new(data)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let n = sendmsg::<()>(stream.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(std::io::Error::from)?;
    if n != data.len() {
        return Err(std::io::Error::other("short write of a control answer"));
    }
    Ok(())
}

/// A blocking client of the control socket.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ProxyError> {
        let control = |error| ProxyError::Control {
            path: path.to_path_buf(),
            error,
        };
        let writer = UnixStream::connect(path).map_err(control)?;
        let reader = BufReader::new(writer.try_clone().map_err(control)?);
        Ok(Client {
            path: path.to_path_buf(),
            reader,
            writer,
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, request: Request) -> Result<Reply, ProxyError> {
        let protocol = |message: String| ProxyError::Protocol {
            path: self.path.clone(),
            message,
        };
        let mut line = serde_json::to_vec(&wire::RequestLine::new(request))
            .map_err(|e| protocol(e.to_string()))?;
        line.push(b'\n');
        let io = |error| ProxyError::Control {
            path: self.path.clone(),
            error,
        };
        self.writer.write_all(&line).map_err(io)?;
        let mut answer = String::new();
        let n = self
            .reader
            .read_line(&mut answer)
            .map_err(|error| ProxyError::Control {
                path: self.path.clone(),
                error,
            })?;
        if n == 0 {
            return Err(protocol("the connection closed before an answer".into()));
        }
        let answer: wire::ResponseLine =
            serde_json::from_str(&answer).map_err(|e| protocol(e.to_string()))?;
        match answer.response {
            Response::Ok(reply) => Ok(reply),
            Response::Error { message } => Err(ProxyError::Refused(message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successors_command_line_has_the_cap_in_force() {
        let args = |v: &[&str]| v.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        let started = args(&[
            "proxy",
            "--listen",
            "x",
            "--max-connections",
            "5",
            "--state",
            "s",
        ]);
        assert_eq!(
            with_max_connections(&started, 2),
            args(&[
                "proxy",
                "--listen",
                "x",
                "--state",
                "s",
                "--max-connections",
                "2"
            ])
        );
        assert_eq!(
            with_max_connections(&started, 0),
            args(&["proxy", "--listen", "x", "--state", "s"])
        );
        assert_eq!(
            with_max_connections(&args(&["proxy", "--max-connections=9"]), 3),
            args(&["proxy", "--max-connections", "3"])
        );
    }
}
