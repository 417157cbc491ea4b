//! The route table the request path reads: an immutable snapshot, replaced whole on
//! every change (so a request sees either the old set or the new one, never a mix), and
//! the live per-upstream state (in-flight requests, tunnels, draining) that outlives
//! snapshots. It knows nothing of sockets or of the control protocol's framing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use hoist_protocol::proxy as wire;

use crate::stats::Counters;

/// Milliseconds since the process started: a cheap clock for the refused back-off.
pub(crate) fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One upstream address and what it holds right now. Shared by every snapshot that
/// lists it, so counts survive a swap and draining can be observed.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub instance: String,
    /// Claimed requests, sharded per worker thread (see `stats::SHARDS`).
    in_flight: Box<[PaddedCount]>,
    pub tunnels: AtomicUsize,
    pub draining: AtomicBool,
    /// Bumped each time the member starts draining, so a drain timer knows its episode.
    pub drain_epoch: AtomicU64,
    /// `now_ms()` until which a refused upstream is skipped (0: not skipped).
    pub skip_until: AtomicU64,
    /// Connects that failed in a row: each doubles how long the member is skipped (up
    /// to [`MAX_EJECTION_MS`]); the first answer resets it.
    pub connect_failures: std::sync::atomic::AtomicU32,
    /// Bumped to tell this upstream's tunnels to close (drain timeout reached).
    pub close_tunnels: tokio::sync::watch::Sender<u64>,
}

impl Upstream {
    pub fn new(addr: SocketAddr, instance: &str) -> Upstream {
        Upstream {
            addr,
            instance: instance.to_string(),
            in_flight: (0..crate::stats::SHARDS)
                .map(|_| PaddedCount::default())
                .collect(),
            tunnels: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            drain_epoch: AtomicU64::new(0),
            skip_until: AtomicU64::new(0),
            connect_failures: std::sync::atomic::AtomicU32::new(0),
            close_tunnels: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Claims the upstream for one request. Fails if it is draining: then the caller
    /// picks again from the current table. The increment comes before the check (both
    /// SeqCst), and the control side sets `draining` before it reads `in_flight`, so
    /// either the request sees the drain or the drain sees the request.
    pub fn claim(self: &Arc<Self>) -> Option<InFlight> {
        let shard = crate::stats::shard();
        self.in_flight[shard].0.fetch_add(1, Ordering::SeqCst);
        if self.draining.load(Ordering::SeqCst) {
            self.in_flight[shard].0.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(InFlight(self.clone(), shard))
    }

    /// Requests claimed on this upstream right now, across all workers.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|c| c.0.load(Ordering::SeqCst))
            .sum()
    }

    pub fn skipped(&self, now: u64) -> bool {
        let until = self.skip_until.load(Ordering::Relaxed);
        until != 0 && now < until
    }

    /// Passive health: a failed connect ejects the member for `base`, doubled for each
    /// failure in a row (an instance that died while nobody updates the set stops
    /// getting requests); after that one request tries it again.
    pub fn connect_failed(&self, base: std::time::Duration) {
        let n = self
            .connect_failures
            .fetch_add(1, Ordering::Relaxed)
            .min(16);
        let ms = (base.as_millis() as u64)
            .saturating_mul(1 << n)
            .min(MAX_EJECTION_MS);
        let until = now_ms() + ms;
        self.skip_until.store(until, Ordering::Relaxed);
        if n == 2 {
            tracing::warn!(addr = %self.addr, instance = %self.instance, "upstream ejected: connects keep failing (it is tried again now and then)");
        }
    }

    /// The member answered: it is admitted again at once.
    pub fn answered(&self) {
        if self.connect_failures.load(Ordering::Relaxed) != 0 {
            if self.connect_failures.swap(0, Ordering::Relaxed) >= 3 {
                tracing::info!(addr = %self.addr, instance = %self.instance, "upstream answers again; readmitted");
            }
            self.skip_until.store(0, Ordering::Relaxed);
        }
    }

    pub fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.tunnels.load(Ordering::SeqCst) == 0
    }
}

/// The longest a member that refuses connections is skipped before it is tried again.
pub(crate) const MAX_EJECTION_MS: u64 = 30_000;

/// A count on its own cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct PaddedCount(AtomicUsize);

/// A claimed request on an upstream (and the shard it was counted in); releases the
/// claim on drop.
#[derive(Debug)]
pub(crate) struct InFlight(pub Arc<Upstream>, usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight[self.1].0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One route in a snapshot.
#[derive(Debug)]
pub(crate) struct RouteEntry {
    pub id: String,
    pub path_prefix: String,
    pub upstreams: Vec<Arc<Upstream>>,
    pub counters: Arc<Counters>,
    pub guards: crate::guards::RouteGuards,
    /// HTTPS settings (redirect, HSTS); see `tls.rs`.
    pub tls: Option<wire::RouteTls>,
    /// The canary release's side of this route, if a canary deploy is in progress.
    pub canary: Option<Box<crate::canary::CanarySide>>,
    next: Box<[PaddedCount]>,
}

impl RouteEntry {
    pub fn new(
        route: &wire::Route,
        upstreams: Vec<Arc<Upstream>>,
        counters: Arc<Counters>,
        guards: crate::guards::RouteGuards,
    ) -> RouteEntry {
        RouteEntry {
            id: route.id.clone(),
            path_prefix: route.path_prefix.clone(),
            upstreams,
            counters,
            guards,
            tls: route.tls.clone(),
            canary: None,
            next: (0..crate::stats::SHARDS)
                .map(|_| PaddedCount::default())
                .collect(),
        }
    }

    /// The next member in round-robin order that is not skipped and not in `tried`
    /// (a bit set over member indexes). The clock (`now`) is read only when a member
    /// was ejected: most requests never need it.
    pub fn pick(&self, tried: u64, now: impl Fn() -> u64) -> Option<(usize, &Arc<Upstream>)> {
        let n = self.upstreams.len();
        if n == 0 {
            return None;
        }
        // A rotation per route and worker: each worker balances on its own, without a
        // shared counter bouncing between cores.
        let start = self.next[crate::stats::shard()]
            .0
            .fetch_add(1, Ordering::Relaxed);
        let mut fallback = None;
        for k in 0..n {
            let i = (start + k) % n;
            if i < 64 && tried & (1 << i) != 0 {
                continue;
            }
            let u = &self.upstreams[i];
            if u.skip_until.load(Ordering::Relaxed) != 0 && u.skipped(now()) {
                // A refused member is still better than none when all are refused.
                fallback.get_or_insert((i, u));
                continue;
            }
            return Some((i, u));
        }
        fallback
    }
}

/// An immutable routing snapshot.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Routes by exact host (lowercase, no port), longest prefix first.
    by_host: HashMap<String, Vec<Arc<RouteEntry>>>,
    /// Routes for `*`, longest prefix first.
    any_host: Vec<Arc<RouteEntry>>,
}

impl Table {
    pub fn build(routes: &[Arc<RouteEntry>], domains: &[&[String]]) -> Table {
        let mut table = Table::default();
        for (route, domains) in routes.iter().zip(domains) {
            for d in domains.iter() {
                if d == "*" {
                    table.any_host.push(route.clone());
                } else {
                    table
                        .by_host
                        .entry(d.to_ascii_lowercase())
                        .or_default()
                        .push(route.clone());
                }
            }
        }
        let order = |v: &mut Vec<Arc<RouteEntry>>| {
            v.sort_by(|a, b| {
                b.path_prefix
                    .len()
                    .cmp(&a.path_prefix.len())
                    .then_with(|| a.id.cmp(&b.id))
            })
        };
        table.by_host.values_mut().for_each(order);
        order(&mut table.any_host);
        table
    }

    /// The route for `host` (already without port) and `path`: an exact host beats `*`,
    /// then the longest matching prefix wins.
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<RouteEntry>> {
        let exact = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_host.get(&host.to_ascii_lowercase())
        } else {
            self.by_host.get(host)
        };
        exact
            .and_then(|routes| find_prefix(routes, path))
            .or_else(|| find_prefix(&self.any_host, path))
    }
}

fn find_prefix<'a>(routes: &'a [Arc<RouteEntry>], path: &str) -> Option<&'a Arc<RouteEntry>> {
    routes.iter().find(|r| prefix_matches(&r.path_prefix, path))
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`; `/` matches everything.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    let Some(rest) = path.strip_prefix(prefix) else {
        return false;
    };
    prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')
}

/// The current snapshot plus a version number, so that each worker thread re-reads the
/// lock only when the table changed (one atomic load per request otherwise).
#[derive(Debug, Default)]
pub(crate) struct Published {
    version: AtomicU64,
    table: RwLock<Arc<Table>>,
}

impl Published {
    pub fn publish(&self, table: Table) {
        let mut slot = self.table.write().unwrap_or_else(|e| e.into_inner());
        *slot = Arc::new(table);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    pub fn load(&self) -> (u64, Arc<Table>) {
        let slot = self.table.read().unwrap_or_else(|e| e.into_inner());
        // The version is read under the lock, so it is never newer than the table.
        (self.version.load(Ordering::SeqCst), slot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, domains: &[&str], prefix: &str) -> (Arc<RouteEntry>, Vec<String>) {
        let wire = wire::Route {
            id: id.into(),
            app: "a".into(),
            service: "web".into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            path_prefix: prefix.into(),
            release: "r".into(),
            upstreams: vec![],
            drain_timeout_ms: 1000,
            guards: Default::default(),
            tls: None,
            canary: None,
        };
        let entry = RouteEntry::new(
            &wire,
            vec![],
            Arc::new(Counters::new(id, "r")),
            Default::default(),
        );
        (Arc::new(entry), wire.domains)
    }

    #[test]
    fn exact_host_beats_any_and_longest_prefix_wins() {
        let rs = [
            route("any", &["*"], "/"),
            route("any-api", &["*"], "/api"),
            route("notes", &["notes.example.com"], "/"),
            route("notes-api", &["notes.example.com"], "/api/"),
        ];
        let entries: Vec<_> = rs.iter().map(|r| r.0.clone()).collect();
        let domains: Vec<&[String]> = rs.iter().map(|r| r.1.as_slice()).collect();
        let t = Table::build(&entries, &domains);
        let id = |h: &str, p: &str| t.lookup(h, p).map(|r| r.id.clone()).unwrap_or_default();
        for (host, path, want) in [
            ("notes.example.com", "/", "notes"),
            ("NOTES.example.com", "/api/x", "notes-api"),
            ("notes.example.com", "/api", "notes"),
            ("other", "/api", "any-api"),
            ("other", "/api/v1", "any-api"),
            ("other", "/apix", "any"),
            ("other", "/api?x=1", "any-api"),
        ] {
            assert_eq!(id(host, path), want, "{host}{path}");
        }
    }

    #[test]
    fn failed_connects_eject_longer_each_time_and_an_answer_readmits() {
        let u = Upstream::new("127.0.0.1:1".parse().unwrap(), "x");
        let base = std::time::Duration::from_millis(1000);
        let mut last = 0;
        for _ in 0..8 {
            u.connect_failed(base);
            let until = u.skip_until.load(Ordering::Relaxed) - now_ms();
            assert!(
                until >= last.min(MAX_EJECTION_MS - 10),
                "{until} after {last}"
            );
            assert!(until <= MAX_EJECTION_MS);
            last = until;
        }
        assert!(last > 20_000, "{last}");
        assert!(u.skipped(now_ms()));
        u.answered();
        assert!(!u.skipped(now_ms()));
        u.connect_failed(base);
        assert!(u.skip_until.load(Ordering::Relaxed) - now_ms() <= 1000);
    }

    #[test]
    fn pick_rotates_and_skips_refused_and_tried() {
        let ups: Vec<_> = (0..3)
            .map(|i| {
                Arc::new(Upstream::new(
                    format!("127.0.0.1:{}", 1000 + i).parse().unwrap(),
                    "x",
                ))
            })
            .collect();
        let (r, _) = route("r", &["*"], "/");
        let r = RouteEntry::new(
            &wire::Route {
                id: r.id.clone(),
                app: "a".into(),
                service: "s".into(),
                domains: vec!["*".into()],
                path_prefix: "/".into(),
                release: "r".into(),
                upstreams: vec![],
                drain_timeout_ms: 1,
                guards: Default::default(),
                tls: None,
                canary: None,
            },
            ups.clone(),
            r.counters.clone(),
            Default::default(),
        );
        let picks: Vec<usize> = (0..6).map(|_| r.pick(0, now_ms).unwrap().0).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        ups[1]
            .skip_until
            .store(now_ms() + 60_000, Ordering::Relaxed);
        let picks: Vec<usize> = (0..4).map(|_| r.pick(0, now_ms).unwrap().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(
            r.pick(0b101, now_ms).unwrap().0,
            1,
            "a refused member beats none"
        );
        assert!(r.pick(0b111, now_ms).is_none());
    }
}
