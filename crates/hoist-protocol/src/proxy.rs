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
    /// Returns when none of `addrs` has an in-flight request or an open tunnel, or at
    /// `timeout_ms` after closing the tunnels that remain (WebSocket close 1001).
    WaitDrained {
        addrs: Vec<SocketAddr>,
        timeout_ms: u64,
    },
    /// The proxy's listening sockets, passed as file descriptors (SCM_RIGHTS) with the
    /// answer [`Reply::Listeners`]: the agent keeps them open so that a proxy that crashes
    /// is restarted on the same sockets and no connection is refused meanwhile.
    Listeners,
    /// Hands the listening sockets to a fresh process of `exe` (default: the running
    /// binary), waits until it serves, then stops accepting, drains and exits.
    Upgrade {
        #[serde(default)]
        exe: Option<PathBuf>,
    },
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
    /// `count` listening sockets ride along with this line.
    Listeners {
        count: u32,
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
    /// Responses by method and exact status code (only those seen).
    #[serde(default)]
    pub requests: Vec<CodeCount>,
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
    fn unknown_fields_are_refused() {
        // (serde ignores extra keys beside the tag of a unit variant; struct variants and
        // the envelope refuse them.)
        let err = serde_json::from_str::<RequestLine>(
            r#"{"version":1,"request":{"type":"remove_route","id":"a","x":1}}"#,
        );
        assert!(err.is_err());
    }
}
