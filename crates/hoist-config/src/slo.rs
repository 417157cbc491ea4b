//! `[slo.NAME]`: a service, an objective in (0, 100) percent, an optional latency (one of
//! the proxy's histogram bounds, so slow requests are counted exactly) and a window (at
//! most the 28 days of minutes the agent keeps).

use std::collections::BTreeMap;
use std::time::Duration;

use hoist_core::spec::{slo, ServiceSpec, SloSpec};

use crate::read::{check_name, join, type_error, Cx, Tbl};
use crate::tree::{Node, Value};

pub(crate) const SLO_KEYS: &[&str] = &["service", "objective", "latency", "window"];

pub(crate) fn slos(
    cx: &mut Cx<'_>,
    node: &Node,
    services: &BTreeMap<String, ServiceSpec>,
) -> BTreeMap<String, SloSpec> {
    let mut out = BTreeMap::new();
    let Some(entries) = node.as_table() else {
        type_error(
            cx,
            node,
            "slo",
            "a table of named entries like `[slo.name]`",
            None,
        );
        return out;
    };
    for (key, n) in entries {
        if !check_name(cx, &key.name, &key.loc, "SLO") {
            continue;
        }
        let path = join("slo", &key.name);
        let Some(t) = Tbl::open(cx, n, &path, &key.loc, SLO_KEYS) else {
            continue;
        };
        let service = t.str(cx, "service");
        let mut ok = true;
        match (&service, t.get("service")) {
            (Some(s), Some(n)) => {
                if !services.contains_key(s) {
                    cx.error(
                        &n.loc,
                        format!("`{}` names no service: `{s}`", t.path("service")),
                        None,
                    );
                    ok = false;
                } else if !services[s].is_web() {
                    cx.error(
                        &n.loc,
                        format!(
                            "`{}`: `{s}` has no `http`, so it has no requests to judge",
                            t.path("service")
                        ),
                        None,
                    );
                    ok = false;
                }
            }
            (None, None) => {
                t.missing(cx, "service", None);
                ok = false;
            }
            _ => ok = false,
        }
        let objective = match t.get("objective") {
            None => {
                t.missing(
                    cx,
                    "objective",
                    Some("a percentage, e.g. `objective = \"99.9%\"`".into()),
                );
                None
            }
            Some(n) => objective(cx, n, &t.path("objective")),
        };
        let latency = match t.get("latency") {
            None => None,
            Some(n) => {
                let d = t.duration(cx, "latency");
                match d {
                    Some(d)
                        if slo::LATENCY_BOUNDS_MS
                            .iter()
                            .any(|b| (b / 1000.0 - d.as_secs_f64()).abs() < 1e-9) =>
                    {
                        Some(d)
                    }
                    Some(_) => {
                        let bounds: Vec<String> = slo::LATENCY_BOUNDS_MS
                            .iter()
                            .map(|b| {
                                if *b < 1000.0 {
                                    format!("{b}ms")
                                } else {
                                    format!("{}s", b / 1000.0)
                                }
                            })
                            .collect();
                        cx.error(
                            &n.loc,
                            format!(
                                "invalid `{}`: not one of the proxy's latency bounds",
                                t.path("latency")
                            ),
                            Some(format!(
                                "requests are timed into buckets; use one of {}",
                                bounds.join(", ")
                            )),
                        );
                        ok = false;
                        None
                    }
                    None => {
                        ok = false;
                        None
                    }
                }
            }
        };
        let window = match t.get("window") {
            None => Some(slo::MAX_WINDOW),
            Some(n) => match t.positive_duration(cx, "window") {
                Some(w) if w > slo::MAX_WINDOW => {
                    cx.error(
                        &n.loc,
                        format!(
                            "invalid `{}`: longer than 28d, the history the agent keeps",
                            t.path("window")
                        ),
                        None,
                    );
                    None
                }
                Some(w) if w < Duration::from_secs(3600) => {
                    cx.error(
                        &n.loc,
                        format!(
                            "invalid `{}`: shorter than 1h, the fast burn alert's window",
                            t.path("window")
                        ),
                        None,
                    );
                    None
                }
                w => w,
            },
        };
        if let (true, Some(service), Some(objective), Some(window)) =
            (ok, service, objective, window)
        {
            out.insert(
                key.name.clone(),
                SloSpec {
                    service,
                    objective,
                    latency,
                    window,
                },
            );
        }
    }
    out
}

/// `"99.9%"`, `"99.9"` or `99.9`: a percentage strictly between 0 and 100.
fn objective(cx: &mut Cx<'_>, n: &Node, path: &str) -> Option<f64> {
    let v = match &n.value {
        Value::Str(s) => s.trim().trim_end_matches('%').trim().parse::<f64>().ok(),
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => f.parse().ok(),
        _ => None,
    };
    match v {
        Some(v) if v > 0.0 && v < 100.0 && v.is_finite() => Some(v),
        Some(_) => {
            cx.error(
                &n.loc,
                format!("invalid `{path}`: must be between 0% and 100%, both excluded"),
                Some("e.g. `objective = \"99.9%\"`: 99.9% of requests are good".into()),
            );
            None
        }
        None => {
            type_error(cx, n, path, "a percentage such as \"99.9%\"", None);
            None
        }
    }
}
