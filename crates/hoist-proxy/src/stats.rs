//! Counters per route and release: responses by status class, bytes, in-flight and a
//! latency histogram with fixed buckets. Plain atomics, so that the request path never
//! takes a lock; the control socket reads them into `hoist_protocol::proxy::RouteStats`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hoist_protocol::proxy as wire;

/// Upper bounds of the latency buckets, in milliseconds; one more bucket holds the rest.
pub(crate) const BOUNDS_MS: [f64; 14] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];

/// Counter shards: each worker thread writes its own (cache-line aligned), so the
/// request path never bounces a line between cores; readers add them up.
pub(crate) const SHARDS: usize = 16;

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes this thread write to shard `index % SHARDS` (called once per worker thread).
pub(crate) fn set_shard(index: usize) {
    SHARD.with(|s| s.set(index % SHARDS));
}

/// This thread's shard.
pub(crate) fn shard() -> usize {
    SHARD.with(|s| s.get())
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    status: [AtomicU64; 5],
    upstream_errors: AtomicU64,
    bytes_out: AtomicU64,
    in_flight: AtomicI64,
    buckets: [AtomicU64; BOUNDS_MS.len() + 1],
    sum_us: AtomicU64,
    /// Answered by a guard: maintenance, rate limited, unauthorized, too large.
    guards: [AtomicU64; 4],
}

/// Which guard answered a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard {
    Maintenance = 0,
    RateLimited = 1,
    Unauthorized = 2,
    TooLarge = 3,
}

/// Methods counted by name in `hoist_http_requests_total`; any other is `OTHER`.
pub(crate) const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER",
];
/// Status codes 100..=599 each have a counter per method (unsharded: 32 KiB per route
/// and release; a response adds to one of them, so contention stays low).
const CODES: usize = 500;

/// Whether responses are counted per method and exact status code (`hoist proxy
/// --no-code-counters` turns it off, to measure what those counters cost; status classes,
/// latency and in-flight, which bakes and alerts judge, are always counted).
static COUNT_CODES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the per-method × code counters on or off for this process.
pub fn count_codes(on: bool) {
    COUNT_CODES.store(on, Relaxed);
}

/// The index of `method` in [`METHODS`]: computed once per request, before the request
/// is moved into the upstream exchange.
pub(crate) fn method_index(method: &hyper::Method) -> u8 {
    let i = METHODS[..7]
        .iter()
        .position(|m| *m == method.as_str())
        .unwrap_or(7);
    i as u8
}

/// The counters of one route and release.
#[derive(Debug)]
pub(crate) struct Counters {
    pub route: String,
    pub release: String,
    shards: Box<[Shard]>,
    /// Responses by method and exact status code: `[method * CODES + code - 100]`.
    codes: Box<[AtomicU64]>,
}

impl Counters {
    pub fn new(route: &str, release: &str) -> Counters {
        Counters {
            route: route.to_string(),
            release: release.to_string(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            codes: (0..METHODS.len() * CODES)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    fn mine(&self) -> &Shard {
        &self.shards[shard()]
    }

    pub fn start(&self) {
        self.mine().in_flight.fetch_add(1, Relaxed);
    }

    pub fn finish(&self, bytes: u64) {
        let shard = self.mine();
        shard.in_flight.fetch_sub(1, Relaxed);
        if bytes > 0 {
            shard.bytes_out.fetch_add(bytes, Relaxed);
        }
    }

    /// Records a response head: the request's method (see [`method_index`]), its status
    /// and how long the upstream took to send it.
    pub fn response(&self, method: u8, status: u16, latency: Duration) {
        if COUNT_CODES.load(Relaxed) {
            let code = usize::from(status.clamp(100, 599) - 100);
            let m = usize::from(method).min(METHODS.len() - 1);
            self.codes[m * CODES + code].fetch_add(1, Relaxed);
        }
        let shard = self.mine();
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        shard.status[class].fetch_add(1, Relaxed);
        let ms = latency.as_secs_f64() * 1000.0;
        let bucket = BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(BOUNDS_MS.len());
        shard.buckets[bucket].fetch_add(1, Relaxed);
        shard.sum_us.fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub fn guarded(&self, guard: Guard) {
        self.mine().guards[guard as usize].fetch_add(1, Relaxed);
    }

    pub fn upstream_error(&self) {
        self.mine().upstream_errors.fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> wire::RouteStats {
        let sum = |f: &dyn Fn(&Shard) -> u64| self.shards.iter().map(f).sum::<u64>();
        let in_flight: i64 = self.shards.iter().map(|s| s.in_flight.load(Relaxed)).sum();
        wire::RouteStats {
            route: self.route.clone(),
            release: self.release.clone(),
            status: std::array::from_fn(|i| sum(&|s| s.status[i].load(Relaxed))),
            upstream_errors: sum(&|s| s.upstream_errors.load(Relaxed)),
            bytes_out: sum(&|s| s.bytes_out.load(Relaxed)),
            in_flight: in_flight.max(0) as u64,
            latency: wire::Histogram {
                bounds_ms: BOUNDS_MS.to_vec(),
                counts: (0..=BOUNDS_MS.len())
                    .map(|i| sum(&|s| s.buckets[i].load(Relaxed)))
                    .collect(),
                sum_ms: sum(&|s| s.sum_us.load(Relaxed)) as f64 / 1000.0,
            },
            guards: wire::GuardCounts {
                maintenance: sum(&|s| s.guards[0].load(Relaxed)),
                rate_limited: sum(&|s| s.guards[1].load(Relaxed)),
                unauthorized: sum(&|s| s.guards[2].load(Relaxed)),
                too_large: sum(&|s| s.guards[3].load(Relaxed)),
            },
            requests: self
                .codes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| {
                    let count = n.load(Relaxed);
                    (count > 0).then(|| wire::CodeCount {
                        method: METHODS[i / CODES].to_string(),
                        code: (i % CODES + 100) as u16,
                        count,
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_land_in_their_class_and_bucket() {
        let c = Counters::new("a/web", "r1");
        c.response(0, 200, Duration::from_micros(300));
        // Another thread writes another shard; the snapshot adds them up.
        std::thread::scope(|s| {
            s.spawn(|| {
                set_shard(3);
                c.response(
                    method_index(&hyper::Method::POST),
                    503,
                    Duration::from_millis(30),
                );
            });
        });
        c.response(
            method_index(&hyper::Method::TRACE),
            204,
            Duration::from_secs(20),
        );
        let s = c.snapshot();
        let by = |m: &str, code: u16| {
            s.requests
                .iter()
                .find(|r| r.method == m && r.code == code)
                .map(|r| r.count)
        };
        assert_eq!(by("GET", 200), Some(1));
        assert_eq!(by("POST", 503), Some(1));
        assert_eq!(by("OTHER", 204), Some(1), "TRACE is counted as OTHER");
        assert_eq!(s.requests.len(), 3);
        assert_eq!(s.status, [0, 2, 0, 0, 1]);
        assert_eq!(s.latency.counts[0], 1, "0.3 ms is in the first bucket");
        assert_eq!(s.latency.counts[6], 1, "30 ms is in the ≤50 ms bucket");
        assert_eq!(
            *s.latency.counts.last().unwrap(),
            1,
            "20 s is above every bound"
        );
        assert_eq!(s.latency.counts.iter().sum::<u64>(), 3);
    }
}
