//! Per-route guards the proxy answers itself, before a request reaches an instance:
//! maintenance (503), rate limiting (429), basic auth (401) and a body size limit (413),
//! plus the route's trusted proxies. Their state (token buckets, verified credentials)
//! lives in the control plane keyed by route, so it survives table swaps; each guard's
//! config is compiled once per change, never per request.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hoist_protocol::proxy as wire;
use hyper::header::HeaderValue;

/// Paths no guard but the body limit applies to: ACME HTTP-01 challenges must reach
/// whoever answers them whatever the route's state.
pub(crate) const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// Most client keys a rate limiter remembers: past it, full (idle) buckets are
/// forgotten first, and if that is not enough, all of them (memory stays bounded).
const MAX_KEYS: usize = 100_000;
/// Most credentials remembered as verified (or refused) per route.
const MAX_CREDENTIALS: usize = 1024;

/// The compiled guards of one route.
#[derive(Debug, Default)]
pub(crate) struct RouteGuards {
    pub maintenance: Option<(Bytes, HeaderValue)>,
    pub rate: Option<std::sync::Arc<RateLimiter>>,
    pub auth: Option<std::sync::Arc<Auth>>,
    pub max_body: Option<u64>,
    pub trusted: Vec<Cidr>,
}

impl RouteGuards {
    /// Compiles `g`, reusing `rate`/`auth` state kept from the previous table when
    /// their config did not change.
    pub fn compile(
        g: &wire::Guards,
        rate: Option<std::sync::Arc<RateLimiter>>,
        auth: Option<std::sync::Arc<Auth>>,
    ) -> RouteGuards {
        RouteGuards {
            maintenance: g.maintenance.as_ref().map(|m| {
                let body = format!(
                    "<!doctype html><title>Down for maintenance</title><h1>Down for maintenance</h1><p>{}</p>\n",
                    escape_html(&m.message)
                );
                (
                    Bytes::from(body),
                    HeaderValue::from(m.retry_after_s.max(1)),
                )
            }),
            rate,
            auth,
            max_body: g.max_body_bytes,
            trusted: g.trusted_proxies.iter().filter_map(|c| Cidr::parse(c)).collect(),
        }
    }

    /// Whether any guard is set (most routes have none: the request path skips them).
    pub fn active(&self) -> bool {
        self.maintenance.is_some()
            || self.rate.is_some()
            || self.auth.is_some()
            || self.max_body.is_some()
            || !self.trusted.is_empty()
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An address block, `10.0.0.0/8` or `2001:db8::/32` (a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a.parse::<IpAddr>().ok()?, Some(b.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Cidr { net: addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// A token bucket: `rate` tokens a second, at most `burst` kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refilled(&self, now: Instant, rate: f64, burst: f64) -> f64 {
        (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(burst)
    }

    /// Takes a token; when there is none, how long until there is one.
    pub fn take(&mut self, now: Instant, rate: f64, burst: f64) -> Result<(), Duration> {
        self.tokens = self.refilled(now, rate, burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / rate))
        }
    }
}

/// A token bucket per client key.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    pub config: wire::RateLimit,
    /// Tokens per second.
    rate: f64,
    burst: f64,
    header_names: Vec<hyper::header::HeaderName>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn new(config: &wire::RateLimit) -> RateLimiter {
        let per = Duration::from_millis(config.per_ms.max(1)).as_secs_f64();
        RateLimiter {
            rate: f64::from(config.requests.max(1)) / per,
            burst: f64::from(config.burst.max(1)),
            header_names: config
                .key
                .iter()
                .filter_map(|h| hyper::header::HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            config: config.clone(),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a request: the first configured header present (its first
    /// comma-separated value), else the peer's address.
    pub fn key(&self, headers: &hyper::HeaderMap, peer: IpAddr) -> String {
        for name in &self.header_names {
            if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
                let v = v.split(',').next().unwrap_or("").trim();
                if !v.is_empty() && v.len() <= 128 {
                    return v.to_string();
                }
            }
        }
        peer.to_string()
    }

    /// Takes a token for `key`; when there is none, how long until there is one.
    pub fn take(&self, key: String, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(&key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate, burst) < burst);
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        buckets
            .entry(key)
            .or_insert(Bucket::full(self.burst, now))
            .take(now, self.rate, self.burst)
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// Basic auth against bcrypt hashes, with the verdict on each credential remembered
/// (so a request does not pay a hash each time).
#[derive(Debug)]
pub(crate) struct Auth {
    pub config: wire::BasicAuth,
    pub challenge: HeaderValue,
    users: HashMap<String, String>,
    verified: Mutex<(HashSet<String>, HashSet<String>)>,
}

impl Auth {
    pub fn new(config: &wire::BasicAuth) -> Auth {
        let realm = config.realm.replace(['"', '\\'], "");
        Auth {
            challenge: HeaderValue::from_str(&format!(
                "Basic realm=\"{realm}\", charset=\"UTF-8\""
            ))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"restricted\"")),
            users: config.users.iter().cloned().collect(),
            config: config.clone(),
            verified: Mutex::new((HashSet::new(), HashSet::new())),
        }
    }

    /// Whether the `Authorization` value names a user with the right password.
    pub async fn check(self: &std::sync::Arc<Self>, authorization: Option<&HeaderValue>) -> bool {
        let Some(value) = authorization.and_then(|v| v.to_str().ok()) else {
            return false;
        };
        {
            let cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
            if cache.0.contains(value) {
                return true;
            }
            if cache.1.contains(value) {
                return false;
            }
        }
        let Some(encoded) = value
            .strip_prefix("Basic ")
            .or_else(|| value.strip_prefix("basic "))
        else {
            return false;
        };
        use base64::Engine as _;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        let Some((user, password)) = text.split_once(':') else {
            return false;
        };
        let Some(hash) = self.users.get(user).cloned() else {
            return false;
        };
        let password = password.to_string();
        // bcrypt takes milliseconds on purpose: off the worker thread.
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let mut cache = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        let set = if ok { &mut cache.0 } else { &mut cache.1 };
        if set.len() >= MAX_CREDENTIALS {
            set.clear();
        }
        set.insert(value.to_string());
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_match_their_block_only() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("2001:db8::/32")
            .unwrap()
            .contains("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn buckets_refill_at_the_rate_and_the_key_table_stays_bounded() {
        let r = RateLimiter::new(&wire::RateLimit {
            requests: 10,
            per_ms: 1000,
            burst: 3,
            key: vec![],
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(r.take("a".into(), t0).is_ok());
        }
        let wait = r.take("a".into(), t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        assert!(r.take("b".into(), t0).is_ok(), "keys are apart");
        assert!(r.take("a".into(), t0 + Duration::from_millis(100)).is_ok());
        for i in 0..(MAX_KEYS + 10) {
            let _ = r.take(format!("k{i}"), t0);
        }
        assert!(r.keys() <= MAX_KEYS);
    }
}
