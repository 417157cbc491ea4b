//! `/metrics` in the Prometheus text format (`hoist agent --metrics ADDR`).
//!
//! Rendered per scrape from what the agent already holds: its instances (up, restarts,
//! memory), the state (job runs, backups, deploys), the root's free disk, and the proxy's
//! counters read over its control socket. The proxy counts in its own process, so its
//! series continue across agent restarts; while the agent is down nothing is served
//! (Prometheus records the target down, and `up == 0` is the alert for that).
//!
//! Only the current releases' series are shown: the proxy keeps the counters of a
//! retired release, and they are dropped here, so their series end.
//!
//! The endpoint requires `Authorization: Bearer TOKEN`, the token read from
//! `<root>/metrics.token` (0600, made at the first start): Prometheus reads the same
//! file with `authorization: { credentials_file: ... }`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::http::Body;
use crate::Agent;

/// The token file under the root.
pub fn token_file(root: &std::path::Path) -> std::path::PathBuf {
    root.join("metrics.token")
}

/// Reads the token, making it (32 random bytes, hex) when the file does not exist yet.
pub(crate) fn ensure_token(root: &std::path::Path) -> std::io::Result<String> {
    let path = token_file(root);
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
    crate::paths::write_atomic(&path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(token)
}

/// Serves `/metrics` on `listener` until the task is aborted.
pub(crate) async fn serve(agent: Arc<Agent>, listener: tokio::net::TcpListener, token: String) {
    let token: Arc<str> = Arc::from(format!("Bearer {token}"));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let agent = agent.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let agent = agent.clone();
                let token = token.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&agent, &token, req).await) }
            });
            // A scraper that stalls is dropped (the timer drives the header timeout).
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc);
            let _ = conn.await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

async fn answer(agent: &Arc<Agent>, token: &str, req: Request<Incoming>) -> Response<Body> {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !same(given, token.as_bytes()) {
        let mut resp = text(
            StatusCode::UNAUTHORIZED,
            "a bearer token is required: the content of <root>/metrics.token\n".into(),
        );
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    if req.uri().path() != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    text(StatusCode::OK, agent.render_metrics().await)
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One metric family: its samples are written together, after its HELP and TYPE.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    lines: String,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            lines: String::new(),
        }
    }

    /// Adds `name{labels} value` (`suffix` for histogram parts such as `_bucket`).
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.lines, "{}{suffix}", self.name);
        if !labels.is_empty() {
            self.lines.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.lines.push(',');
                }
                let _ = write!(self.lines, "{k}=\"{}\"", escape(v));
            }
            self.lines.push('}');
        }
        let _ = writeln!(self.lines, " {value}");
    }

    fn write(&self, out: &mut String) {
        if self.lines.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        out.push_str(&self.lines);
    }
}

/// A label value in the exposition format: backslash, quote and newline escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus reads it.
fn float(v: f64) -> String {
    if v.is_infinite() {
        "+Inf".into()
    } else {
        format!("{v}")
    }
}

impl Agent {
    /// The whole exposition, rendered now.
    pub(crate) async fn render_metrics(&self) -> String {
        self.refresh_stats();
        let now = tokio::time::Instant::now().into_std();
        let mut up = Family::new(
            "hoist_instance_up",
            "gauge",
            "1 when the instance runs and passes its health check (web) or has run for a second.",
        );
        let mut restarts = Family::new(
            "hoist_instance_restarts_total",
            "counter",
            "Restarts of the instance by the agent.",
        );
        let mut memory = Family::new(
            "hoist_instance_memory_bytes",
            "gauge",
            "Resident memory of the instance's process tree.",
        );
        let mut limit = Family::new(
            "hoist_instance_memory_limit_bytes",
            "gauge",
            "The instance's memory_limit (restarted when it goes above).",
        );
        // The releases whose series are shown: those with instances now.
        let mut live: BTreeSet<(String, String)> = BTreeSet::new();
        {
            let rt = self.rt();
            for (id, l) in &rt.instances {
                let labels = [
                    ("app", l.row.app.as_str()),
                    ("service", l.row.service.as_str()),
                    ("release", l.row.release.as_str()),
                    ("instance", id.as_str()),
                ];
                up.sample("", &labels, u8::from(l.admitted(now)));
                restarts.sample("", &labels, l.row.restarts);
                if let Some(stats) = &l.stats {
                    memory.sample("", &labels, stats.rss_bytes);
                }
                if let Some(bytes) = l.memory_limit {
                    limit.sample("", &labels, bytes);
                }
                live.insert((l.row.app.clone(), l.row.release.clone()));
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        self.render_proxy(&live, &mut out).await;
        up.write(&mut out);
        restarts.write(&mut out);
        memory.write(&mut out);
        limit.write(&mut out);
        self.render_state(&mut out);
        let mut disk = Family::new(
            "hoist_host_disk_free_bytes",
            "gauge",
            "Bytes available to the agent on the file system of its root.",
        );
        let mut size = Family::new(
            "hoist_host_disk_size_bytes",
            "gauge",
            "Size of the file system of the agent's root.",
        );
        let root = self.config.root.display().to_string();
        if let Ok(fs) = nix::sys::statvfs::statvfs(&self.config.root) {
            let free = fs.blocks_available().saturating_mul(fs.fragment_size());
            disk.sample("", &[("path", root.as_str())], free);
            size.sample(
                "",
                &[("path", root.as_str())],
                fs.blocks().saturating_mul(fs.fragment_size()),
            );
        }
        disk.write(&mut out);
        size.write(&mut out);
        let mut certs = Family::new(
            "hoist_certificate_expiry_timestamp_seconds",
            "gauge",
            "When the certificate of each HTTPS domain expires (Unix time).",
        );
        for c in self.cert_statuses() {
            let expiry = c
                .not_after
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if let Some(t) = expiry {
                certs.sample(
                    "",
                    &[
                        ("app", c.app.as_str()),
                        ("service", c.service.as_str()),
                        ("domain", c.domain.as_str()),
                    ],
                    t.timestamp(),
                );
            }
        }
        certs.write(&mut out);
        out
    }

    fn render_state(&self, out: &mut String) {
        let counts = match self.db(|s| s.metric_counts()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %crate::chain(&e), "cannot read the counts for /metrics");
                return;
            }
        };
        let mut runs = Family::new(
            "hoist_job_runs_total",
            "counter",
            "Finished job runs by result (runs pruned from the state are no longer counted).",
        );
        for (app, job, result, n) in &counts.job_runs {
            runs.sample("", &[("app", app), ("job", job), ("result", result)], n);
        }
        runs.write(out);
        let mut last = Family::new(
            "hoist_job_last_success_timestamp_seconds",
            "gauge",
            "When the job last finished successfully (Unix time).",
        );
        for (app, job, at) in &counts.job_last_success {
            last.sample(
                "",
                &[("app", app), ("job", job)],
                float(*at as f64 / 1000.0),
            );
        }
        last.write(out);
        let mut backup = Family::new(
            "hoist_backup_last_success_timestamp_seconds",
            "gauge",
            "When the backup last completed (Unix time).",
        );
        for (app, name, at) in &counts.backup_last_success {
            backup.sample(
                "",
                &[("app", app), ("backup", name)],
                float(*at as f64 / 1000.0),
            );
        }
        backup.write(out);
        let mut deploys = Family::new(
            "hoist_deploys_total",
            "counter",
            "Finished deploys by result.",
        );
        for (app, result, n) in &counts.deploys {
            deploys.sample("", &[("app", app), ("result", result)], n);
        }
        deploys.write(out);
    }

    /// The proxy's families, for the releases in `live`. Without a proxy (or when it does
    /// not answer) they are left out rather than shown as zeros.
    async fn render_proxy(&self, live: &BTreeSet<(String, String)>, out: &mut String) {
        let Some(proxy) = &self.proxy else { return };
        let routes = match proxy.request(hoist_protocol::proxy::Request::Stats).await {
            Ok(hoist_protocol::proxy::Reply::Stats { routes }) => routes,
            Ok(other) => {
                tracing::warn!(?other, "the proxy answered a stats request oddly");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the proxy's counters for /metrics");
                return;
            }
        };
        let mut requests = Family::new(
            "hoist_http_requests_total",
            "counter",
            "Responses the proxy sent, by method and status code (its own 502/504 included).",
        );
        let mut duration = Family::new(
            "hoist_http_request_duration_seconds",
            "histogram",
            "Time from forwarding the request to the upstream's response head.",
        );
        let mut in_flight = Family::new(
            "hoist_http_requests_in_flight",
            "gauge",
            "Responses being streamed to clients now.",
        );
        // Label sets are sorted, so a family's series keep their order between scrapes.
        let mut sorted: BTreeMap<(String, String, String), &hoist_protocol::proxy::RouteStats> =
            BTreeMap::new();
        for r in &routes {
            let (app, service) = r.route.split_once('/').unwrap_or((r.route.as_str(), ""));
            if !live.contains(&(app.to_string(), r.release.clone())) {
                continue;
            }
            sorted.insert((app.to_string(), service.to_string(), r.release.clone()), r);
        }
        for ((app, service, release), r) in &sorted {
            let base = [
                ("app", app.as_str()),
                ("service", service.as_str()),
                ("release", release.as_str()),
            ];
            for c in &r.requests {
                let code = c.code.to_string();
                requests.sample(
                    "",
                    &[
                        base[0],
                        base[1],
                        base[2],
                        ("method", c.method.as_str()),
                        ("code", code.as_str()),
                    ],
                    c.count,
                );
            }
            let h = &r.latency;
            let mut cumulative = 0u64;
            for (i, n) in h.counts.iter().enumerate() {
                cumulative += n;
                let le = match h.bounds_ms.get(i) {
                    Some(ms) => float(ms / 1000.0),
                    None => "+Inf".to_string(),
                };
                duration.sample(
                    "_bucket",
                    &[base[0], base[1], base[2], ("le", le.as_str())],
                    cumulative,
                );
            }
            duration.sample("_sum", &base, float(h.sum_ms / 1000.0));
            duration.sample("_count", &base, cumulative);
            in_flight.sample("", &base, r.in_flight);
        }
        requests.write(out);
        duration.write(out);
        in_flight.write(out);
    }
}

/// Binds the metrics listener (before anything is served, so a taken port fails the start).
pub(crate) async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_families_grouped() {
        let mut f = Family::new("hoist_x_total", "counter", "X.");
        f.sample("", &[("app", "a\"b\\c\nd")], 3);
        f.sample("", &[], 4);
        let mut out = String::new();
        f.write(&mut out);
        assert_eq!(
            out,
            "# HELP hoist_x_total X.\n# TYPE hoist_x_total counter\nhoist_x_total{app=\"a\\\"b\\\\c\\nd\"} 3\nhoist_x_total 4\n"
        );
        let mut empty = String::new();
        Family::new("hoist_y", "gauge", "Y.").write(&mut empty);
        assert!(empty.is_empty(), "a family without samples is left out");
    }

    #[test]
    fn token_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_token(dir.path()).unwrap();
        let b = ensure_token(dir.path()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        let mode = std::fs::metadata(token_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"ab", b"abc"));
    }
}
