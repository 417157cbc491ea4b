//! `[deploy.canary]`: the steps (percentages of clients, strictly increasing, each in
//! (0, 100)), how long each runs, and the limits a step is judged on.

use hoist_core::spec::CanarySpec;

use crate::diag::Loc;
use crate::read::{type_error, Cx, Tbl};
use crate::tree::{Node, Value};

/// A percentage as basis points: `5` → 500, `0.5` → 50. More than two decimals, or a
/// value that is not a number, is refused.
fn bp_of(text: &str) -> Option<u32> {
    let v: f64 = text.trim().parse().ok()?;
    let bp = v * 100.0;
    if !bp.is_finite() || bp < 0.0 || (bp - bp.round()).abs() > 1e-6 || bp > 1e9 {
        return None;
    }
    Some(bp.round() as u32)
}

/// A step's share of clients (basis points): above 0% and below 100%.
pub(crate) fn step_ok(bp: u32) -> bool {
    bp > 0 && bp < 10_000
}

/// The most answers a step may wait for.
pub(crate) const MIN_REQUESTS_MAX: u64 = 1_000_000_000;

pub(crate) fn canary(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    at: &Loc,
    known: &[&str],
) -> Option<CanarySpec> {
    let t = Tbl::open(cx, node, path, at, known)?;
    let steps = match t.get("steps") {
        None => {
            t.missing(
                cx,
                "steps",
                Some("for example `steps = [5, 25, 50]`".into()),
            );
            None
        }
        Some(n) => steps(cx, n, &t.path("steps")),
    };
    let interval = match t.get("interval") {
        None => {
            t.missing(
                cx,
                "interval",
                Some("for example `interval = \"1m\"`".into()),
            );
            None
        }
        Some(_) => t.positive_duration(cx, "interval"),
    };
    let max_error_bp = match t.get("max_error_rate") {
        None => Some(CanarySpec::DEFAULT_MAX_ERROR_BP),
        Some(n) => {
            let p = t.path("max_error_rate");
            match &n.value {
                Value::Str(s) => {
                    match s.trim().strip_suffix('%').and_then(bp_of) {
                        Some(bp) if bp <= 10_000 => Some(bp),
                        _ => {
                            cx.error(
                            &n.loc,
                            format!("invalid `{p}`: expected a share from `0%` to `100%`, found `{s}`"),
                            Some("for example `max_error_rate = \"1%\"`".into()),
                        );
                            None
                        }
                    }
                }
                _ => {
                    type_error(
                        cx,
                        n,
                        &p,
                        "a percentage like `\"1%\"`",
                        Some("for example `max_error_rate = \"1%\"`".into()),
                    );
                    None
                }
            }
        }
    };
    let max_p99 = t.positive_duration(cx, "max_p99");
    let min_requests = t
        .uint(cx, "min_requests", 1, MIN_REQUESTS_MAX)
        .unwrap_or(CanarySpec::DEFAULT_MIN_REQUESTS);
    Some(CanarySpec {
        steps_bp: steps?,
        interval: interval?,
        max_error_bp: max_error_bp?,
        max_p99,
        min_requests,
    })
}

fn steps(cx: &mut Cx<'_>, n: &Node, path: &str) -> Option<Vec<u32>> {
    const HINT: &str =
        "for example `steps = [5, 25, 50]` (percent of clients; 100% is the switch that follows)";
    let Value::Array(items) = &n.value else {
        type_error(cx, n, path, "a list of percentages", Some(HINT.into()));
        return None;
    };
    if items.is_empty() {
        cx.error(
            &n.loc,
            format!("invalid `{path}`: at least one step is needed"),
            Some(HINT.into()),
        );
        return None;
    }
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        let text = match &item.value {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.clone(),
            _ => {
                type_error(cx, item, path, "a percentage (a number)", Some(HINT.into()));
                ok = false;
                continue;
            }
        };
        match bp_of(&text) {
            Some(bp) if step_ok(bp) => {
                if let Some(&last) = out.last() {
                    if bp <= last {
                        cx.error(
                            &item.loc,
                            format!(
                                "invalid `{path}`: steps must be strictly increasing, `{text}` comes after `{}`",
                                hoist_core::spec::percent_of_bp(last).trim_end_matches('%')
                            ),
                            Some(HINT.into()),
                        );
                        ok = false;
                    }
                }
                out.push(bp);
            }
            _ => {
                cx.error(
                    &item.loc,
                    format!(
                        "invalid `{path}`: a step is a percentage above 0 and below 100 (at most two decimals), found `{text}`"
                    ),
                    Some(HINT.into()),
                );
                ok = false;
            }
        }
    }
    ok.then_some(out)
}
