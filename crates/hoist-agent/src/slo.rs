//! SLOs (`[slo.NAME]`): error budget and burn rates from the per-minute aggregates
//! (`minutes.rs`), and the multi-window burn-rate alerts `slo_burn_fast` (14.4× over both
//! 1 h and 5 min) and `slo_burn_slow` (6× over both 6 h and 30 min), evaluated with the
//! other built-in rules (`alerts.rs`; thresholds overridable in `[alerts.rules]`).
//!
//! A request is bad when answered 5xx or, with `latency`, when its latency bucket lies
//! above it. The aggregates keep the two apart, so a request both 5xx and slow counts
//! twice (bad is capped at the requests): the budget errs on the side of alarm. Windows
//! are whole minutes ending with the current one (partly elapsed), so "5m" spans 4 to 5
//! minutes.

use std::time::Duration;

use hoist_core::spec::{slo::BURN_ALERTS, AppSpec, SloSpec};
use hoist_state::minutes::Totals;
use serde::Serialize;

use crate::Agent;

/// The windows whose burn rates are shown.
const SHOWN: [(&str, u64); 4] = [("5m", 300), ("30m", 1800), ("1h", 3600), ("6h", 21600)];
/// Fewer requests than this in the short window never fire a burn alert.
const MIN_REQUESTS: u64 = 10;

/// One SLO now, for `hoist slo` and the burn alerts.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SloStatus {
    pub app: String,
    pub name: String,
    pub service: String,
    /// Percent.
    pub objective: f64,
    pub latency_seconds: Option<f64>,
    pub window_seconds: u64,
    /// Over the whole window.
    pub requests: u64,
    pub errors_5xx: u64,
    pub slow: u64,
    pub bad: u64,
    /// Share of the window's error budget not yet spent (1 untouched, negative overspent;
    /// 1 without requests).
    pub budget_left: f64,
    pub burn: Vec<Burn>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Burn {
    pub window: String,
    pub seconds: u64,
    pub requests: u64,
    pub bad: u64,
    /// Bad share divided by the allowed share (1 spends the budget exactly in the
    /// window); 0 without requests.
    pub rate: f64,
}

fn bad(t: &Totals) -> u64 {
    (t.errors_5xx + t.slow).min(t.requests)
}

fn rate(t: &Totals, objective: f64) -> f64 {
    if t.requests == 0 {
        return 0.0;
    }
    let allowed = 1.0 - objective / 100.0;
    bad(t) as f64 / t.requests as f64 / allowed
}

impl Agent {
    fn totals(&self, app: &str, s: &SloSpec, over: Duration, now: i64) -> Totals {
        let slow = s.latency.map(|l| l.as_secs_f64() * 1000.0);
        let since = now - over.as_secs() as i64 + 60;
        self.minutes(|m| m.totals(app, &s.service, since, now, slow))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %crate::chain(&e), "cannot read per-minute traffic");
                Totals::default()
            })
    }

    /// The SLOs of `app` now.
    pub(crate) fn slo_statuses(&self, app: &str, spec: &AppSpec) -> Vec<SloStatus> {
        let now = crate::minutes::now_s();
        spec.slo
            .iter()
            .map(|(name, s)| {
                let all = self.totals(app, s, s.window, now);
                let allowed = (1.0 - s.objective / 100.0) * all.requests as f64;
                let budget_left = if all.requests == 0 {
                    1.0
                } else {
                    1.0 - bad(&all) as f64 / allowed
                };
                let burn = SHOWN
                    .iter()
                    .map(|(w, secs)| {
                        let t = self.totals(app, s, Duration::from_secs(*secs), now);
                        Burn {
                            window: w.to_string(),
                            seconds: *secs,
                            requests: t.requests,
                            bad: bad(&t),
                            rate: rate(&t, s.objective),
                        }
                    })
                    .collect();
                SloStatus {
                    app: app.to_string(),
                    name: name.clone(),
                    service: s.service.clone(),
                    objective: s.objective,
                    latency_seconds: s.latency.map(|l| l.as_secs_f64()),
                    window_seconds: s.window.as_secs(),
                    requests: all.requests,
                    errors_5xx: all.errors_5xx,
                    slow: all.slow,
                    bad: bad(&all),
                    budget_left,
                    burn,
                }
            })
            .collect()
    }

    /// The burn-rate alerts of `app`'s SLOs that hold now: (rule, slo, service, long
    /// window's rate, short window's rate, threshold).
    pub(crate) fn slo_burning(
        &self,
        app: &str,
        spec: &AppSpec,
        threshold: impl Fn(&str) -> Option<f64>,
    ) -> Vec<(&'static str, String, String, f64, f64, f64)> {
        let now = crate::minutes::now_s();
        let mut out = Vec::new();
        for (name, s) in &spec.slo {
            for (rule, _, long, short) in BURN_ALERTS {
                let Some(limit) = threshold(rule) else {
                    continue;
                };
                let l = self.totals(app, s, long, now);
                let sh = self.totals(app, s, short, now);
                if sh.requests < MIN_REQUESTS {
                    continue;
                }
                let (lr, sr) = (rate(&l, s.objective), rate(&sh, s.objective));
                tracing::debug!(app, slo = %name, rule, long = lr, short = sr, "burn rates");
                if lr > limit && sr > limit {
                    out.push((rule, name.clone(), s.service.clone(), lr, sr, limit));
                }
            }
        }
        out
    }
}
