//! Messages on the proxy's control socket: the agent (or `hoist proxy switch|upgrade`)
//! sends one [`RequestLine`] per line of JSON and reads one [`ResponseLine`] per line.
//!
//! Only wire types live here; the proxy converts them into its own route table, so the
//! wire format never pins the proxy's internals. Every line carries [`VERSION`]: a peer
//! that receives a version it does not know answers with an error naming both.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The version of this protocol; bumped on any incompatible change.
pub const VERSION: u32 = 1;

/// One request line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestLine {
    pub version: u32,
    pub request: Request,
}

impl RequestLine {
    /// A request line of the current [`VERSION`].
    pub fn new(request: Request) -> RequestLine {
        RequestLine {
            version: VERSION,
            request,
        }
    }
}

/// One response line, answering the request line before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseLine {
    pub version: u32,
    pub response: Response,
}

/// What the agent asks of the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// One request per control line: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Request {
    /// Liveness and identity: answered with [`Reply::Pong`].
    Ping,
    /// Adds the route, or replaces its upstream set (and settings) atomically. Members of
    /// the old set that no route uses any more start draining.
    SetRoute { route: Route },
    /// Removes a route; its upstreams that no route uses any more start draining.
    RemoveRoute { id: String },
    /// The route table: answered with [`Reply::Routes`].
    Routes,
    /// Counters per route and release: answered with [`Reply::Stats`].
    Stats,
    /// Upstreams that are draining, with what they still hold.
    Draining,
    /// Open client connections and those refused over the cap: [`Reply::Connections`].
    Connections,
    /// Returns when none of `addrs` has an in-flight request or an open tunnel, or at
    /// `timeout_ms` after closing the tunnels that remain (WebSocket close 1001).
    WaitDrained {
        addrs: Vec<SocketAddr>,
        timeout_ms: u64,
    },
    /// The proxy's listening sockets, passed as file descriptors (SCM_RIGHTS) with the
    /// answer [`Reply::Listeners`]: the agent keeps them open so that a proxy that crashes
    /// is restarted on the same sockets and no connection is refused meanwhile. The HTTPS
    /// listener, if any, comes last.
    Listeners,
    /// Hands the listening sockets to a fresh process of `exe` (default: the running
    /// binary), waits until it serves, then stops accepting, drains and exits.
    Upgrade {
        #[serde(default)]
        exe: Option<PathBuf>,
    },
    /// Certificates and ACME challenges of the HTTPS listener (see [`TlsRequest`]).
    Tls { request: TlsRequest },
    /// Settings of a running proxy that its command line set at start: an agent sends
    /// its own to a proxy it adopts (one that outlived the agent that started it), so a
    /// changed setting applies without a restart; kept across `Upgrade`. Answered with
    /// [`Reply::Done`].
    SetLimits {
        /// The cap on open client connections; 0: the proxy's default (half its
        /// open-files limit).
        max_connections: u64,
    },
}

/// What the agent asks of the proxy's TLS side. Certificates are keyed by domain; a
/// route with [`RouteTls`] is served on the HTTPS listener with the certificate of the
/// domain the client names (SNI).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum TlsRequest {
    /// Installs (or replaces, without touching open connections) the certificate of
    /// each of its domains; persisted with the routes (0600).
    SetCert {
        cert: Cert,
    },
    /// Forgets the certificate of `domain`.
    RemoveCert {
        domain: String,
    },
    /// The certificates held, without keys: answered with [`Reply::Certs`].
    Certs,
    /// Answers `GET /.well-known/acme-challenge/TOKEN` on the HTTP listener with
    /// `key_authorization` (ACME HTTP-01) until removed.
    SetHttpChallenge {
        token: String,
        key_authorization: String,
    },
    RemoveHttpChallenge {
        token: String,
    },
    /// Presents `cert` to clients that offer only the `acme-tls/1` protocol for
    /// `domain` (ACME TLS-ALPN-01) until removed. Kept in memory only.
    SetAlpnChallenge {
        cert: Cert,
    },
    RemoveAlpnChallenge {
        domain: String,
    },
    /// The other hosts serving `app`'s names (`ADDR:PORT` of their plain listeners): an
    /// HTTP-01 request for a token this proxy does not hold is asked of them, and the
    /// first valid answer is relayed, so a CA reaching any host of a name behind DNS
    /// round-robin or a balancer validates every host's order. Empty `peers` forgets
    /// the app's. Persisted with the certificates, so a proxy restarted while the agent
    /// is dead (or a successor after an upgrade) relays as before.
    SetAcmePeers {
        app: String,
        peers: Vec<String>,
    },
    /// The relay's counters: answered with [`Reply::AcmeRelays`].
    AcmeRelays,
}

/// A certificate chain and its private key, PEM. The key never appears in a reply.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cert {
    pub domains: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    /// `acme` or `file`: what `hoist certs` reports.
    #[serde(default)]
    pub source: String,
}

impl std::fmt::Debug for Cert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cert")
            .field("domains", &self.domains)
            .field("source", &self.source)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A certificate the proxy holds, as listed (no key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertInfo {
    pub domain: String,
    pub source: String,
    /// The leaf certificate, PEM (public).
    pub cert_pem: String,
}

/// TLS settings of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTls {
    /// Plain-HTTP requests get 308 to `https://` (ACME challenge paths excepted).
    pub redirect_https: bool,
    /// `Strict-Transport-Security: max-age=…` on HTTPS responses when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_secs: Option<u64>,
}

/// A route: requests whose Host matches one of `domains` (`*` matches any) and whose
/// path starts with `path_prefix` go to one of `upstreams`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Stable identity, e.g. `notes/web`.
    pub id: String,
    pub app: String,
    pub service: String,
    pub domains: Vec<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    /// The release the upstreams run; counters are kept per route and release.
    pub release: String,
    pub upstreams: Vec<Upstream>,
    /// How long members that leave the set may keep in-flight requests and WebSocket
    /// connections before the proxy closes them.
    #[serde(default = "default_drain_ms")]
    pub drain_timeout_ms: u64,
    /// What the proxy checks before a request of this route reaches an instance.
    #[serde(default, skip_serializing_if = "Guards::is_empty")]
    pub guards: Guards,
    /// Served over HTTPS too (certificates by domain, see [`TlsRequest::SetCert`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RouteTls>,
    /// A second release that gets a share of clients (a canary deploy); `release` and
    /// `upstreams` above keep the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// The canary side of a route: a client goes to it when its sticky bucket (from the
/// proxy's `hoist_canary` cookie, else a hash of its rate-limit key or address) is below
/// `weight_bp`, so raising the weight only moves clients towards the canary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub release: String,
    pub upstreams: Vec<Upstream>,
    /// The share of clients, in basis points (0 to 10000).
    pub weight_bp: u32,
}

/// Per-route guards, each answered by the proxy itself with a clear status and counted
/// in [`GuardCounts`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Guards {
    /// 503 with `Retry-After` for every request (health checks go to the instances
    /// directly, so they keep running and being checked).
    pub maintenance: Option<Maintenance>,
    /// Token bucket per client key: 429 with `Retry-After` when empty.
    pub rate_limit: Option<RateLimit>,
    /// 401 unless the request carries the credentials of one of these users.
    pub basic_auth: Option<BasicAuth>,
    /// 413 for a body larger than this, before the upstream sees a byte.
    pub max_body_bytes: Option<u64>,
    /// Peers (CIDRs) whose X-Forwarded-For/Proto/Host are believed and appended to;
    /// from anyone else they are replaced.
    pub trusted_proxies: Vec<String>,
}

impl Guards {
    pub fn is_empty(&self) -> bool {
        self == &Guards::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Maintenance {
    pub message: String,
    pub retry_after_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Tokens added per `per_ms`.
    pub requests: u32,
    pub per_ms: u64,
    /// Bucket size: requests a quiet client may send at once.
    pub burst: u32,
    /// Request headers whose first present value is the client's key (e.g.
    /// `CF-Connecting-IP`); the peer's address when none is present.
    #[serde(default)]
    pub key: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    pub realm: String,
    /// `(user, bcrypt hash)`: hashes only, never passwords.
    pub users: Vec<(String, String)>,
    /// Path prefixes answered without credentials (the service's health check).
    #[serde(default)]
    pub exempt: Vec<String>,
}

fn default_prefix() -> String {
    "/".to_string()
}

fn default_drain_ms() -> u64 {
    30_000
}

/// One instance of a service, reachable at `addr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub instance: String,
}

/// Success or a message saying what went wrong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error { message: String },
}

/// The payload of a successful response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Pong {
        pid: u32,
        version: u32,
    },
    Done,
    Routes {
        routes: Vec<Route>,
    },
    Stats {
        routes: Vec<RouteStats>,
    },
    Draining {
        upstreams: Vec<DrainingUpstream>,
    },
    Drained {
        drained: bool,
        closed_tunnels: u64,
        in_flight: u64,
    },
    Upgraded {
        pid: u32,
    },
    Connections {
        open: u64,
        /// Connections answered 503 and closed because `max` were open.
        over_capacity: u64,
        max: u64,
    },
    /// `count` listening sockets ride along with this line; with `https`, the last of
    /// them is the HTTPS listener.
    Listeners {
        count: u32,
        #[serde(default)]
        https: bool,
    },
    Certs {
        certs: Vec<CertInfo>,
    },
    /// HTTP-01 requests for tokens this proxy does not hold, since it started.
    AcmeRelays {
        /// Asked of the peers and answered with a peer's key authorization.
        relayed: u64,
        /// Asked of the peers, and none held the token.
        missed: u64,
        /// Not asked: the token is not an ACME token (base64url, 22 to 128 characters).
        malformed: u64,
        /// Answered 429: over the relay's rate or concurrency.
        limited: u64,
    },
}

/// Counters of one route and release since the proxy started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteStats {
    pub route: String,
    pub release: String,
    /// Responses by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub status: [u64; 5],
    /// Requests that got no upstream response (refused, reset, timed out).
    pub upstream_errors: u64,
    pub bytes_out: u64,
    pub in_flight: u64,
    pub latency: Histogram,
    /// Requests the route's guards answered themselves.
    #[serde(default)]
    pub guards: GuardCounts,
    /// Responses by method and exact status code (only those seen).
    #[serde(default)]
    pub requests: Vec<CodeCount>,
}

/// Requests answered by a guard, by guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardCounts {
    pub maintenance: u64,
    pub rate_limited: u64,
    pub unauthorized: u64,
    pub too_large: u64,
}

/// How many responses had this method and status code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeCount {
    pub method: String,
    pub code: u16,
    pub count: u64,
}

/// Latency to the response head: `counts[i]` requests took at most `bounds_ms[i]`, and
/// the last count is everything above the last bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub bounds_ms: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_ms: f64,
}

/// An upstream that left every set and is finishing what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainingUpstream {
    pub addr: SocketAddr,
    pub instance: String,
    pub in_flight: u64,
    pub tunnels: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_round_trip_and_read_as_documented() {
        let line = RequestLine::new(Request::SetRoute {
            route: Route {
                id: "notes/web".into(),
                app: "notes".into(),
                service: "web".into(),
                domains: vec!["*".into()],
                path_prefix: "/".into(),
                release: "r1".into(),
                upstreams: vec![Upstream {
                    addr: "127.0.0.1:9000".parse().unwrap(),
                    instance: "web-1".into(),
                }],
                drain_timeout_ms: 5000,
                guards: Default::default(),
                tls: None,
                canary: None,
            },
        });
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""type":"set_route""#), "{text}");
        assert_eq!(serde_json::from_str::<RequestLine>(&text).unwrap(), line);
        let ping: RequestLine =
            serde_json::from_str(r#"{"version":1,"request":{"type":"ping"}}"#).unwrap();
        assert_eq!(ping.request, Request::Ping);
    }

    #[test]
    fn a_certificate_key_never_shows_in_debug_output() {
        let cert = Cert {
            domains: vec!["a.test".into()],
            cert_pem: "CERT".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----secret".into(),
            source: "file".into(),
        };
        let request = Request::Tls {
            request: TlsRequest::SetCert { cert },
        };
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("secret") && shown.contains("a.test"),
            "{shown}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        // (serde ignores extra keys beside the tag of a unit variant; struct variants and
        // the envelope refuse them.)
        let err = serde_json::from_str::<RequestLine>(
            r#"{"version":1,"request":{"type":"remove_route","id":"a","x":1}}"#,
        );
        assert!(err.is_err());
    }
}
