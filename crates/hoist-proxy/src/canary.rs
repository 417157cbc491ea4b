//! Canary routing: a route may carry a second release (the canary) with a weight. Each
//! client has a sticky 32-bit seed — from the `hoist_canary` cookie the proxy sets, else
//! a hash of its rate-limit key or address (clients that keep no cookies) — and goes to
//! the canary when `mix(seed, release) % 10000 < weight_bp`. A client never leaves the
//! canary while its weight grows, and each canary release picks its own clients.
//!
//! Routes without a canary pay one `Option` check per request here, nothing else.

use std::net::IpAddr;
use std::sync::Arc;

use hyper::header::{HeaderMap, HeaderValue, COOKIE};

use crate::table::RouteEntry;

/// The cookie that keeps a client on its side.
pub(crate) const COOKIE_NAME: &str = "hoist_canary";

/// The canary side of a route entry: its own upstreams and counters (a whole
/// [`RouteEntry`], so the request path serves and counts it as any route).
#[derive(Debug)]
pub(crate) struct CanarySide {
    pub weight_bp: u32,
    /// Mixed into each client's seed: another canary release picks other clients.
    salt: u32,
    pub entry: Arc<RouteEntry>,
}

impl CanarySide {
    pub fn new(weight_bp: u32, release: &str, entry: Arc<RouteEntry>) -> CanarySide {
        CanarySide {
            weight_bp: weight_bp.min(10_000),
            salt: fnv1a(release.as_bytes()),
            entry,
        }
    }

    /// Whether a client with `seed` goes to the canary.
    pub fn takes(&self, seed: u32) -> bool {
        !self.entry.upstreams.is_empty() && bucket(seed, self.salt) < self.weight_bp
    }
}

/// A request's stickiness, worked out once (at its first lookup of a route with a
/// canary) and kept across retries.
#[derive(Debug, Default)]
pub(crate) struct Sticky {
    seed: Option<u32>,
    /// The client sent no valid cookie: the response sets one.
    set_cookie: bool,
    /// The request came over the HTTPS listener: the cookie is `Secure`, so a browser
    /// never sends it back over plain HTTP.
    secure: bool,
}

impl Sticky {
    /// The stickiness of `req` (`None` once the request was handed on: plain HTTP).
    pub fn for_request(extensions: &hyper::http::Extensions) -> Sticky {
        Sticky {
            secure: extensions.get::<crate::tls::Https>().is_some(),
            ..Sticky::default()
        }
    }

    /// The entry that serves this request: `route` itself, or its canary side.
    pub fn side<'a>(
        &mut self,
        route: &'a Arc<RouteEntry>,
        headers: Option<&HeaderMap>,
        peer: IpAddr,
    ) -> &'a Arc<RouteEntry> {
        let Some(canary) = route.canary.as_deref() else {
            return route;
        };
        let seed = *self
            .seed
            .get_or_insert_with(|| match headers.and_then(cookie_seed) {
                Some(seed) => seed,
                None => {
                    self.set_cookie = true;
                    let key = match (&route.guards.rate, headers) {
                        (Some(rate), Some(h)) => rate.key(h, peer),
                        _ => peer.to_string(),
                    };
                    fnv1a(key.as_bytes())
                }
            });
        if canary.takes(seed) {
            &canary.entry
        } else {
            route
        }
    }

    /// The `Set-Cookie` value for the response, when one is due.
    pub fn cookie(&self) -> Option<HeaderValue> {
        let seed = self.seed.filter(|_| self.set_cookie)?;
        HeaderValue::from_str(&format!(
            "{COOKIE_NAME}={seed:08x}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax{}",
            if self.secure { "; Secure" } else { "" }
        ))
        .ok()
    }
}

/// The seed in a `hoist_canary=XXXXXXXX` cookie (eight hex digits), if the client sent one.
fn cookie_seed(headers: &HeaderMap) -> Option<u32> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE_NAME)?.strip_prefix('='))
        .find_map(|v| {
            (v.len() == 8)
                .then(|| u32::from_str_radix(v, 16).ok())
                .flatten()
        })
}

/// FNV-1a: stable across processes and versions (a restarted proxy keeps clients where
/// they were), unlike std's randomly keyed hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// A client's bucket in 0..10000 for a canary salt (murmur3's finaliser spreads seeds
/// that differ in a few bits).
fn bucket(seed: u32, salt: u32) -> u32 {
    let mut h = seed ^ salt;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h % 10_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_spread_and_each_release_picks_its_own_clients() {
        let n = 20_000u32;
        let seeds: Vec<u32> = (0..n).map(|s| fnv1a(&s.to_le_bytes())).collect();
        let picked = |release: &[u8], w: u32| -> Vec<bool> {
            let salt = fnv1a(release);
            seeds.iter().map(|s| bucket(*s, salt) < w).collect()
        };
        let share = |v: &[bool]| v.iter().filter(|b| **b).count() as f64 / n as f64;
        let five = picked(b"r-new", 500);
        assert!((0.04..0.06).contains(&share(&five)), "{}", share(&five));
        let half = picked(b"r-new", 5000);
        assert!((0.47..0.53).contains(&share(&half)), "{}", share(&half));
        // Another release's 5 % are mostly other clients (about 5 % of 5 % overlap).
        let other = picked(b"r-other", 500);
        let both = five.iter().zip(&other).filter(|(a, b)| **a && **b).count();
        assert!(both < (n / 100) as usize, "{both} clients in both canaries");
    }

    #[test]
    fn the_cookie_is_read_among_others_and_garbage_is_ignored() {
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("a=1; hoist_canary=0000002a; b=2"),
        );
        assert_eq!(cookie_seed(&h), Some(42));
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            HeaderValue::from_static("hoist_canary=zz; hoist_canaryx=00000001"),
        );
        assert_eq!(cookie_seed(&h), None);
        h.append(COOKIE, HeaderValue::from_static("hoist_canary=ffffffff"));
        assert_eq!(cookie_seed(&h), Some(u32::MAX));
    }
}
