//! The agent's per-minute traffic aggregates (`hoist-state::minutes`, `<root>/minutes.db`):
//! fed on every alert pass (2 s) from the proxy's counters the pass already reads, pruned
//! to [`RETENTION_MINUTES`] once a minute, and read by SLOs and `GET /v1/minutes`.
//!
//! Query API (for charts): `GET /v1/minutes?app=A&service=S[&release=R][&since=UNIX_S][&step=MIN]`
//! answers `{"points": [{"t", "requests", "errors_5xx", "p99_seconds"}, …]}`, one point per
//! step with traffic (release left out: every release added up; `since` defaults to an
//! hour ago, `step` to 1 minute); `GET /v1/minutes/keys[?since=UNIX_S]` lists the
//! `[app, service, release]` that had traffic since then. In Rust:
//! [`hoist_state::minutes::Minutes::series`] and `totals`.

use std::sync::Arc;

use hoist_protocol::proxy::RouteStats;
use hoist_state::minutes::{FirstSight, Snapshot, RETENTION_MINUTES};

use crate::Agent;

/// Unix seconds now.
pub(crate) fn now_s() -> i64 {
    hoist_state::now_ms().div_euclid(1000)
}

impl Agent {
    /// Folds the proxy's counters (from this alert pass) into the current minute, and
    /// prunes old minutes about once a minute. Failures are logged, never fatal.
    pub(crate) fn record_minutes(self: &Arc<Self>, routes: &[RouteStats]) {
        let Some(bounds) = routes.first().map(|r| r.latency.bounds_ms.clone()) else {
            // No route at all: nothing to add, and baselines are kept for when the
            // proxy answers again.
            return;
        };
        let snaps: Vec<Snapshot> = routes
            .iter()
            .filter_map(|r| {
                let (app, service) = r.route.split_once('/')?;
                Some(Snapshot {
                    app: app.to_string(),
                    service: service.to_string(),
                    release: r.release.clone(),
                    requests: r.status.iter().sum(),
                    errors_5xx: r.status[4],
                    buckets: r.latency.counts.clone(),
                })
            })
            .collect();
        // The first pass over a proxy this agent found already serving takes the
        // baselines it lacks without counting (see `FirstSight::Baseline`).
        let first = if self
            .minutes_adopting
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            FirstSight::Baseline
        } else {
            FirstSight::Counts
        };
        let minute = now_s().div_euclid(60);
        let prune = {
            let mut last = self
                .minutes_pruned
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = *last != minute;
            *last = minute;
            due
        };
        crate::off_workers(|| {
            let mut m = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = m.record_with(&bounds, &snaps, minute, first) {
                tracing::warn!(error = %crate::chain(&e), "cannot record per-minute traffic");
            }
            if prune {
                if let Err(e) = m.prune(minute - RETENTION_MINUTES) {
                    tracing::warn!(error = %crate::chain(&e), "cannot prune per-minute traffic");
                }
            }
        });
    }

    /// Runs `f` on the aggregate store, off the async workers.
    pub(crate) fn minutes<R>(&self, f: impl FnOnce(&hoist_state::minutes::Minutes) -> R) -> R {
        crate::off_workers(|| {
            let m = self.minutes.lock().unwrap_or_else(|p| p.into_inner());
            f(&m)
        })
    }
}
